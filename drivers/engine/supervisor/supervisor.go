//go:build linux

// Package supervisor runs one engine process: it starts it detached in its
// own session with its output on a per-pool log file, tells when it exits,
// takes over (adopts) an engine a previous daemon started, and stops it:
// drain, SIGTERM, grace period, SIGKILL to everything left in its session.
//
//	Start ──▶ running ──────────────────────────────▶ exited (Wait delivers Exit)
//	Adopt ──▶   │                                        ▲
//	            └─ Stop: Drain ─▶ SIGTERM to the group ─┬─┘ within Grace
//	                  (≤ DrainTimeout)                  └─▶ SIGKILL to the session ─▶ exited
//
// An engine is started so that it outlives the daemon: its own session
// (setsid), so a signal to the daemon's group or terminal does not reach it;
// stdout and stderr opened on the log file (O_APPEND) and handed to the
// engine, never a pipe through the daemon, so it does not die of SIGPIPE when
// the daemon goes away; stdin is /dev/null; no other descriptor of ours is
// inherited (Go opens every file close-on-exec; Start marks the descriptors
// the daemon itself inherited so too). It stays the daemon's direct
// child, so the daemon learns its exit status while it lives. A later daemon
// adopts it: a process we did not start gives no exit status, only the fact
// that it is gone.
//
// A process is identified by its pid and start time (drivers/engine/proc), never
// by its pid alone.
package supervisor

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/poolmanagerd/pool-managerd/drivers/engine/proc"
)

// Spec is how to start an engine.
type Spec struct {
	// Path is the program: a path, or a name looked up in PATH. It is also
	// argv[0], as given.
	Path string
	// Args are the arguments after the program name.
	Args []string
	// Env is the whole environment of the engine (KEY=VALUE); nothing of the
	// daemon's own environment is added. nil is an empty environment.
	Env []string
	// Dir is the working directory; empty means the daemon's.
	Dir string
	// LogPath is the per-pool log file the engine's stdout and stderr are
	// appended to; its directory is created. Empty discards the output.
	LogPath string
	// LogMaxBytes rotates the log at start when it is larger (see
	// RotateLog); 0 never rotates.
	LogMaxBytes int64
	// LogKeep is how many rotated logs (LogPath.1 ... LogPath.N) are kept.
	LogKeep int
}

// Argv is the command line the engine is started with, and the one its
// /proc/PID/cmdline reads: Path, then Args. Adopt compares it.
func (s Spec) Argv() []string {
	return append([]string{s.Path}, s.Args...)
}

// Handle is one engine process, started or adopted. Its methods are safe
// for concurrent use.
type Handle struct {
	pid        int
	startTicks uint64
	// process is the child we started; nil when adopted.
	process *os.Process

	done chan struct{}
	exit Exit // written once, before done is closed

	termSent, killSent atomic.Bool
	stopMu             sync.Mutex // one Stop at a time
}

func newHandle(pid int, startTicks uint64) *Handle {
	return &Handle{pid: pid, startTicks: startTicks, done: make(chan struct{})}
}

// ErrStart is wrapped by every error of Start but a cancelled context: the
// process could not be started (a missing or non-executable binary, a bad
// working directory, a log file that cannot be opened).
var ErrStart = errors.New("engine did not start")

// Start starts an engine (see the package doc for how). ctx only cancels the
// start: the engine outlives it, and the daemon. Stop the engine with Stop.
func Start(ctx context.Context, spec Spec) (*Handle, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if spec.Path == "" {
		return nil, fmt.Errorf("start engine: %w: no program", ErrStart)
	}
	path := spec.Path
	if !strings.Contains(path, "/") {
		p, err := exec.LookPath(path)
		if err != nil {
			return nil, fmt.Errorf("start engine %q: %w: not found in PATH", spec.Path, ErrStart)
		}
		path = p
	}
	devnull, err := os.Open(os.DevNull)
	if err != nil {
		return nil, fmt.Errorf("start engine: %w: %w", ErrStart, err)
	}
	defer devnull.Close()
	logf, err := openLog(spec)
	if err != nil {
		return nil, fmt.Errorf("start engine %q: %w: %w", spec.Path, ErrStart, err)
	}
	defer logf.Close() // the engine has its own copy
	argv := spec.Argv()
	now := func() string { return time.Now().UTC().Format(time.RFC3339Nano) }
	fmt.Fprintf(logf, "%s%s: start %s\n", StartHeader, now(), quote(argv))

	closeOnExec()
	env := spec.Env
	if env == nil {
		env = []string{} // nil would be the daemon's environment
	}
	p, err := os.StartProcess(path, argv, &os.ProcAttr{
		Dir:   spec.Dir,
		Env:   env,
		Files: []*os.File{devnull, logf, logf},
		Sys:   &syscall.SysProcAttr{Setsid: true},
	})
	if err != nil {
		var pe *os.PathError
		if errors.As(err, &pe) {
			err = pe.Err // "fork/exec PATH: ..." says the path twice
		}
		fmt.Fprintf(logf, "%s%s: start failed: %v\n", StartHeader, now(), err)
		return nil, fmt.Errorf("start engine %q: %w: %w", spec.Path, ErrStart, err)
	}
	// The child is not reaped before we wait for it, so its stat is there
	// even if it has exited already.
	info, err := proc.Stat(p.Pid)
	if err != nil {
		_ = p.Kill()
		_, _ = p.Wait()
		return nil, fmt.Errorf("start engine %q: %w: read its start time: %w", spec.Path, ErrStart, err)
	}
	h := newHandle(p.Pid, info.StartTicks)
	h.process = p
	go h.waitChild()
	return h, nil
}

// closeOnExec marks every descriptor of ours from 3 on close-on-exec. Go
// opens its own files so, but a descriptor the daemon inherited without the
// flag (from the shell or service manager that started it) would otherwise
// pass on to every engine, which would hold it for as long as it runs: a
// pipe someone reads to its end would never end.
func closeOnExec() {
	entries, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		return
	}
	for _, e := range entries {
		fd, err := strconv.Atoi(e.Name())
		if err != nil || fd < 3 {
			continue
		}
		flags, err := unix.FcntlInt(uintptr(fd), unix.F_GETFD, 0)
		if err == nil && flags&unix.FD_CLOEXEC == 0 {
			_, _ = unix.FcntlInt(uintptr(fd), unix.F_SETFD, flags|unix.FD_CLOEXEC)
		}
	}
}

// quote writes argv for a person, quoting what needs it.
func quote(argv []string) string {
	out := make([]string, len(argv))
	for i, a := range argv {
		if a == "" || strings.ContainsAny(a, " \t\n\"'\\$`") {
			a = strconv.Quote(a)
		}
		out[i] = a
	}
	return strings.Join(out, " ")
}

// waitChild waits for the child we started (os.Process.Wait: no polling).
// It first waits for the exit in the runtime's poller on a pidfd, so that a
// daemon running a hundred engines does not hold a hundred OS threads
// blocked in waitid; Wait then reaps at once and reads the exit status.
func (h *Handle) waitChild() {
	if fd, err := unix.PidfdOpen(h.pid, unix.PIDFD_NONBLOCK); err == nil {
		waitPidfd(os.NewFile(uintptr(fd), "pidfd"))
	}
	st, err := h.process.Wait()
	at := time.Now()
	var e Exit
	switch {
	case err != nil:
		e = Exit{Code: -1, Err: err, At: at}
	default:
		ws, ok := st.Sys().(syscall.WaitStatus)
		if !ok {
			e = Exit{Code: st.ExitCode(), At: at}
		} else {
			e = exitOf(ws, at)
		}
	}
	h.finish(e)
}

// finish records the exit and wakes every waiter.
func (h *Handle) finish(e Exit) {
	e.Stopped = h.termSent.Load()
	e.Killed = h.killSent.Load()
	h.exit = e
	close(h.done)
}

// PID is the engine's pid (the leader of its session).
func (h *Handle) PID() int { return h.pid }

// StartTicks is the engine's start time (proc.Info.StartTicks): with the pid,
// its identity. Record both in the state file to adopt it later.
func (h *Handle) StartTicks() uint64 { return h.startTicks }

// Adopted reports whether the process was adopted rather than started here.
func (h *Handle) Adopted() bool { return h.process == nil }

// Wait returns a channel that receives the engine's exit once it has exited,
// and is then closed. Each call returns a new channel (and holds a goroutine
// until the exit), so call it once per watcher.
func (h *Handle) Wait() <-chan Exit {
	ch := make(chan Exit, 1)
	select {
	case <-h.done:
		ch <- h.exit
		close(ch)
	default:
		go func() {
			<-h.done
			ch <- h.exit
			close(ch)
		}()
	}
	return ch
}

// Done is closed when the engine has exited.
func (h *Handle) Done() <-chan struct{} { return h.done }

// Exited returns the exit, and whether the engine has exited.
func (h *Handle) Exited() (Exit, bool) {
	select {
	case <-h.done:
		return h.exit, true
	default:
		return Exit{}, false
	}
}

// Session returns the live processes of the engine's session, sorted: the
// engine and every process it started that did not leave the session (vLLM
// workers, TGI shards: they hold the GPU memory). Zombies are left out. It
// may hold processes after the engine itself has exited.
func (h *Handle) Session() ([]int, error) {
	pids, err := proc.Session(h.pid)
	if err != nil {
		return nil, err
	}
	live := pids[:0]
	for _, pid := range pids {
		info, err := proc.Stat(pid)
		if err != nil || info.State == 'Z' || info.State == 'X' || info.Session != h.pid {
			continue
		}
		live = append(live, pid)
	}
	return live, nil
}

func (h *Handle) exited() bool {
	select {
	case <-h.done:
		return true
	default:
		return false
	}
}
