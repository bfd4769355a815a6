//go:build linux

package daemon_test

import (
	"context"
	"fmt"
	"os"
	"strings"
	"testing"

	"github.com/poolmanagerd/pool-managerd/drivers/engine"
	"github.com/poolmanagerd/pool-managerd/drivers/engine/proc"
	"github.com/poolmanagerd/pool-managerd/internal/gitsource"
	"github.com/poolmanagerd/pool-managerd/testkit/testenv"
)

// testEnv is the shared test environment, set up by TestMain: the stand-in
// engine (cmd/fake-engine), which runs every pool of these tests as a
// llama.cpp pool, and the folder that holds every test's node.
var testEnv *testenv.Env

func TestMain(m *testing.M) {
	os.Exit(runMain(m))
}

func runMain(m *testing.M) int {
	// As cmd/pool-managerd does: the Git source reads file URLs in-process.
	gitsource.InstallFileTransport()
	e, err := testenv.New(context.Background(), "daemon-test")
	if err != nil {
		fmt.Fprintln(os.Stderr, "daemon test:", err)
		return 1
	}
	testEnv = e

	// The tests wait on engines and daemons far more than they compute.
	if err := testenv.WaitBoundParallel(); err != nil {
		fmt.Fprintln(os.Stderr, "daemon test:", err)
		return 1
	}
	code := m.Run()

	// No test leaves an engine running: each node's cleanup stops its
	// engines and fails the test if one survives. This catches whatever
	// escaped even so (engines of this process only).
	if err := testEnv.Close(); err != nil {
		fmt.Fprintln(os.Stderr, "daemon test: FAIL:", err)
		code = 1
	}
	return code
}

// ourEngines returns the pids of the live engines (and their workers) whose
// state directory is stateDir.
func ourEngines(stateDir string) []int {
	found, err := testenv.Engines(stateDir)
	if err != nil {
		return nil
	}
	out := make([]int, len(found))
	for i, e := range found {
		out[i] = e.PID
	}
	return out
}

// alive reports whether pid is a live process (not a zombie).
func alive(pid int) bool {
	info, err := proc.Stat(pid)
	return err == nil && info.State != 'Z' && info.State != 'X'
}

func describe(pids []int) []string {
	var out []string
	for _, pid := range pids {
		vars, _ := proc.Environ(pid)
		argv, _ := proc.Cmdline(pid)
		out = append(out, fmt.Sprintf("pid %d marker %q: %s", pid, vars[engine.MarkerEnv], strings.Join(argv, " ")))
	}
	return out
}
