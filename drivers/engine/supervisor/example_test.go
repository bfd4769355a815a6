//go:build linux

package supervisor_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/poolmanagerd/pool-managerd/drivers/engine/supervisor"
)

func ExampleStart() {
	dir, err := os.MkdirTemp("", "supervisor-example")
	if err != nil {
		fmt.Println(err)
		return
	}
	defer os.RemoveAll(dir)
	log := filepath.Join(dir, "pools", "chat.log")

	// An engine that writes a line and waits to be stopped.
	h, err := supervisor.Start(context.Background(), supervisor.Spec{
		Path:        "/bin/sh",
		Args:        []string{"-c", `trap 'exit 0' TERM; echo loaded; while :; do sleep 0.05 & wait; done`},
		Env:         []string{"PATH=/usr/bin:/bin"},
		LogPath:     log,
		LogMaxBytes: 64 << 20,
		LogKeep:     3,
	})
	if err != nil {
		fmt.Println(err)
		return
	}
	for data, _ := os.ReadFile(log); !strings.Contains(string(data), "\nloaded\n"); data, _ = os.ReadFile(log) {
		time.Sleep(10 * time.Millisecond)
	}
	exit, err := h.Stop(context.Background(), supervisor.StopSpec{
		Drain:        func(ctx context.Context) error { return nil }, // poll /slots until idle
		DrainTimeout: time.Minute,
		Grace:        10 * time.Second,
	})
	fmt.Println(exit, err, exit.Clean(), exit.Killed)
	// Output:
	// exit status 0 (stopped) <nil> true false
}
