//go:build linux

package e2e

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/poolmanagerd/pool-managerd/drivers/engine/proc"
	"github.com/poolmanagerd/pool-managerd/testkit/testenv"
)

// testEnv is the shared test environment, set up by TestMain: the binaries
// under test (pool-managerd, and fake-engine with its links named vllm and
// text-generation-launcher: it chooses its mode by the name it runs under)
// and the folder that holds every test's workspace.
var testEnv *testenv.Env

// markerEnv is the variable every engine pool-managerd starts carries
// (engine.MarkerEnv), spelled out here so that a change of it shows.
const markerEnv = "POOL_MANAGERD_ENGINE"

func TestMain(m *testing.M) {
	os.Exit(runMain(m))
}

func runMain(m *testing.M) int {
	e, err := testenv.New(context.Background(), "e2e")
	if err != nil {
		fmt.Fprintln(os.Stderr, "e2e:", err)
		return 1
	}
	testEnv = e

	// pool-managerd starts engines detached (their own session) so that they
	// outlive it: when an apply exits, its engines lose their parent. The
	// kernel gives an orphan to the nearest ancestor that is a child
	// subreaper, else to PID 1 (which, in a container, may never reap it).
	// Making this test process a subreaper keeps every engine the tests start
	// in our process tree: the reaper below collects their exit status (so
	// no zombie piles up, and a test can tell how an engine died), and
	// nothing the tests start can escape to PID 1.
	if err := unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0); err != nil {
		fmt.Fprintln(os.Stderr, "e2e: prctl(PR_SET_CHILD_SUBREAPER):", err)
		return 1
	}
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		reap.loop(stop)
	}()

	// The tests wait on engines and daemons far more than they compute.
	if err := testenv.WaitBoundParallel(); err != nil {
		fmt.Fprintln(os.Stderr, "e2e:", err)
		return 1
	}
	code := m.Run()

	// No test leaves a process running: every test stops its engines in its
	// cleanup; this catches whatever escaped. Only our own engines count
	// (those of the workspaces under env's folder): other pool-managerd runs
	// on the same machine are not ours to judge or kill.
	if err := testEnv.Close(); err != nil {
		fmt.Fprintln(os.Stderr, "e2e: FAIL:", err)
		code = 1
	}
	close(stop)
	<-done
	return code
}

func describeProcess(pid int) string {
	vars, _ := proc.Environ(pid)
	argv, _ := proc.Cmdline(pid)
	return fmt.Sprintf("pid %d marker %q: %s", pid, vars[markerEnv], strings.Join(argv, " "))
}

// reaper collects the exit status of the orphans re-parented to this
// process (engines whose apply has exited). The children the tests start
// with os/exec are left alone: their exec.Cmd waits for them.
type reaper struct {
	mu sync.Mutex
	// cmds are the pids of children started with startCmd, not yet waited for.
	cmds map[int]bool
	// reaped holds the exit status of every orphan reaped, by pid.
	reaped map[int]unix.WaitStatus
}

var reap = &reaper{cmds: map[int]bool{}, reaped: map[int]unix.WaitStatus{}}

func (r *reaper) loop(stop <-chan struct{}) {
	sigs := make(chan os.Signal, 64)
	signal.Notify(sigs, syscall.SIGCHLD)
	defer signal.Stop(sigs)
	// SIGCHLD starts a scan whenever a child ends; the tick only catches a
	// zombie a scan missed (one whose SIGCHLD came just before the kernel
	// showed it as a zombie). Every scan reads /proc/PID/stat of every
	// process on the machine.
	tick := time.NewTicker(500 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case <-stop:
			r.reapZombies()
			return
		case <-sigs:
		case <-tick.C:
		}
		r.reapZombies()
	}
}

// reapZombies waits for every child of ours that is a zombie and was not
// started with startCmd. Waiting by pid (never wait4(-1)) leaves the exec.Cmd
// children to their Wait.
func (r *reaper) reapZombies() {
	r.mu.Lock()
	defer r.mu.Unlock()
	pids, err := proc.Pids()
	if err != nil {
		return
	}
	me := os.Getpid()
	for _, pid := range pids {
		if r.cmds[pid] {
			continue
		}
		info, err := proc.Stat(pid)
		if err != nil || info.PPID != me || info.State != 'Z' {
			continue
		}
		var ws unix.WaitStatus
		if got, err := unix.Wait4(pid, &ws, unix.WNOHANG, nil); err == nil && got == pid {
			r.reaped[pid] = ws
		}
	}
}

// startCmd starts cmd, registered so that the reaper leaves it to cmd.Wait.
func (r *reaper) startCmd(cmd *exec.Cmd) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if err := cmd.Start(); err != nil {
		return err
	}
	r.cmds[cmd.Process.Pid] = true
	return nil
}

// waited forgets a child started with startCmd once its Wait returned.
func (r *reaper) waited(cmd *exec.Cmd) {
	r.mu.Lock()
	defer r.mu.Unlock()
	delete(r.cmds, cmd.Process.Pid)
}

// status returns the exit status of a reaped orphan, waiting up to timeout.
func (r *reaper) status(pid int, timeout time.Duration) (unix.WaitStatus, bool) {
	deadline := time.Now().Add(timeout)
	for {
		r.mu.Lock()
		ws, ok := r.reaped[pid]
		r.mu.Unlock()
		if ok || time.Now().After(deadline) {
			return ws, ok
		}
		time.Sleep(10 * time.Millisecond)
	}
}
