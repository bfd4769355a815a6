package watch_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/poolmanagerd/pool-managerd/internal/watch"
)

// A daemon runs the Watcher next to its loop and reloads the whole config
// on every Change.
func Example() {
	dir, err := os.MkdirTemp("", "config")
	if err != nil {
		panic(err)
	}
	defer os.RemoveAll(dir)

	w, err := watch.New(dir, watch.Options{Debounce: 50 * time.Millisecond})
	if err != nil {
		fmt.Println(err)
		return
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- w.Run(ctx) }()

	// An editor saving pools.cue: a swap file, then the file itself.
	_ = os.WriteFile(filepath.Join(dir, ".pools.cue.swp"), []byte("junk"), 0o644)
	_ = os.WriteFile(filepath.Join(dir, "pools.cue"), []byte("pools: {}\n"), 0o644)

	ch := <-w.Changes()
	if ch.Overflow {
		fmt.Println("events lost: reload everything")
	}
	fmt.Println("reload, changed:", ch.Paths)

	cancel()
	if err := <-done; err != nil {
		fmt.Println(err)
	}
	// Output:
	// reload, changed: [pools.cue]
}
