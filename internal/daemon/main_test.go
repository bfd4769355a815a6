//go:build linux

package daemon_test

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/poolmanagerd/pool-managerd/drivers/engine"
	"github.com/poolmanagerd/pool-managerd/drivers/engine/proc"
)

// fakeBin is the stand-in engine (cmd/fake-engine), built by TestMain; every
// pool of these tests is a llama.cpp pool run by it.
var fakeBin string

func TestMain(m *testing.M) {
	os.Exit(runMain(m))
}

func runMain(m *testing.M) int {
	root, err := os.MkdirTemp("", "pool-managerd-daemon-test-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "daemon test:", err)
		return 1
	}
	defer os.RemoveAll(root)
	if err := buildFakeEngine(root); err != nil {
		fmt.Fprintln(os.Stderr, "daemon test:", err)
		return 1
	}

	code := m.Run()

	// No test leaves an engine running: each test's cleanup stops its
	// engines (and fails the test if one survives). This catches whatever
	// escaped even so. Only our fake-engine counts: other pool-managerd runs
	// on this machine are not ours to judge.
	if left := ourEngines(""); len(left) > 0 {
		fmt.Fprintf(os.Stderr, "daemon test: FAIL: %d engine process(es) still running after the tests (killed now):\n\t%s\n",
			len(left), strings.Join(describe(left), "\n\t"))
		kill(left)
		code = 1
	}
	return code
}

// buildFakeEngine builds cmd/fake-engine into dir.
func buildFakeEngine(dir string) error {
	cmd := exec.Command("go", "build", "-o", filepath.Join(dir, "fake-engine"), "./cmd/fake-engine")
	cmd.Dir = filepath.Join("..", "..")
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("go build ./cmd/fake-engine: %v\n%s", err, out)
	}
	bin, err := filepath.EvalSymlinks(filepath.Join(dir, "fake-engine"))
	if err != nil {
		return err
	}
	fakeBin = bin
	return nil
}

// ourEngines returns the live (not zombie) processes that run our
// fake-engine and carry a state directory in their environment: stateDir's
// when it is not empty, any otherwise.
func ourEngines(stateDir string) []int {
	found, err := proc.FindByEnv(engine.StateDirEnv)
	if err != nil {
		return nil
	}
	var out []int
	for pid, dir := range found {
		if stateDir != "" && dir != stateDir {
			continue
		}
		if exe, err := os.Readlink(fmt.Sprintf("/proc/%d/exe", pid)); err != nil || exe != fakeBin {
			continue
		}
		if !alive(pid) {
			continue
		}
		out = append(out, pid)
	}
	slices.Sort(out)
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
		env, _ := proc.Environ(pid)
		argv, _ := proc.Cmdline(pid)
		out = append(out, fmt.Sprintf("pid %d marker %q: %s", pid, env[engine.MarkerEnv], strings.Join(argv, " ")))
	}
	return out
}

// kill kills pids and waits (up to a guard) for them to be gone.
func kill(pids []int) {
	for _, pid := range pids {
		_ = syscall.Kill(pid, syscall.SIGKILL)
	}
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		if !slices.ContainsFunc(pids, alive) {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
}
