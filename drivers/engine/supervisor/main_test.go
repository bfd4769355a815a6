//go:build linux

package supervisor

import (
	"fmt"
	"os"
	"os/signal"
	"strconv"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/poolmanagerd/pool-managerd/drivers/engine/proc"
)

// helperEnv makes the test binary a stand-in process instead of running the
// tests (see TestMain).
const helperEnv = "SUPERVISOR_TEST_HELPER"

// TestMain runs the tests as a child subreaper (PR_SET_CHILD_SUBREAPER).
//
// The stand-in engines start children in their session; when an engine
// exits first (or is killed), its children are re-parented. Without a
// subreaper they would go to init, out of the test's sight, and a container's
// init may never reap them. As a subreaper the test process becomes their
// parent instead: cleanups can reap the zombies (unix.Wait4), and the check
// after the tests can see that no process was left behind, because every
// orphan of ours is then our child. The adopted `sleep` of the Adopt tests is
// re-parented to us the same way when the shell that started it exits.
//
// Run as a helper (helperEnv set), the binary is a stand-in process instead.
func TestMain(m *testing.M) {
	if mode := os.Getenv(helperEnv); mode != "" {
		os.Exit(helper(mode))
	}
	if err := unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0); err != nil {
		fmt.Fprintf(os.Stderr, "PR_SET_CHILD_SUBREAPER: %v\n", err)
		os.Exit(2)
	}
	code := m.Run()
	reapZombies()
	if left := ourChildren(); len(left) > 0 {
		fmt.Fprintf(os.Stderr, "FAIL: processes left behind: %v\n", left)
		for _, pid := range left {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
		time.Sleep(100 * time.Millisecond)
		reapZombies()
		code = 1
	}
	os.Exit(code)
}

// helper is the test binary as a stand-in process.
func helper(mode string) int {
	switch mode {
	case "own-group":
		// A process of the engine's session in a process group of its own,
		// as TGI's shards are, that ignores SIGTERM.
		signal.Ignore(syscall.SIGTERM)
		if err := syscall.Setpgid(0, 0); err != nil {
			fmt.Println("setpgid:", err)
			return 1
		}
		fmt.Println("helper-ready")
		time.Sleep(5 * time.Minute)
		return 0
	}
	fmt.Fprintln(os.Stderr, "unknown helper mode", mode)
	return 2
}

// reapZombies reaps every exited child. Only call it when no Handle of a
// started process is still waiting (it would take its exit status).
func reapZombies() {
	for {
		var ws unix.WaitStatus
		pid, err := unix.Wait4(-1, &ws, unix.WNOHANG, nil)
		if pid <= 0 || err != nil {
			return
		}
	}
}

// ourChildren lists our live (non-zombie) children.
func ourChildren() []int {
	pids, err := proc.Pids()
	if err != nil {
		return nil
	}
	self := os.Getpid()
	var out []int
	for _, pid := range pids {
		info, err := proc.Stat(pid)
		if err == nil && info.PPID == self && info.State != 'Z' && info.State != 'X' {
			out = append(out, pid)
		}
	}
	return out
}

// alive reports whether pid is a live process (not a zombie).
func alive(pid int) bool {
	info, err := proc.Stat(pid)
	return err == nil && info.State != 'Z' && info.State != 'X'
}

// readPid reads a pid written to a file by a stand-in.
func readPid(t *testing.T, path string) int {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	pid, err := strconv.Atoi(string(trimNL(data)))
	if err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	return pid
}

func trimNL(b []byte) []byte {
	for len(b) > 0 && (b[len(b)-1] == '\n' || b[len(b)-1] == '\r') {
		b = b[:len(b)-1]
	}
	return b
}
