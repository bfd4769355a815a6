//go:build linux

package supervisor

import (
	"errors"
	"fmt"
	"os"
	"slices"
	"time"

	"golang.org/x/sys/unix"

	"github.com/poolmanagerd/pool-managerd/drivers/engine/proc"
)

// Errors of Adopt.
var (
	// ErrNotRunning: no live process has that pid (a zombie is dead).
	ErrNotRunning = errors.New("not running")
	// ErrMismatch: a process has that pid, but it is not the engine
	// recorded: another start time (the pid was reused), another command
	// line, or not the leader of its own session.
	ErrMismatch = errors.New("not the recorded engine")
)

// procPollInterval is how often an adopted process is looked for in /proc
// when its exit cannot be waited for with a pidfd.
const procPollInterval = 500 * time.Millisecond

// usePidfd turns the pidfd watch off in tests of the /proc fallback.
var usePidfd = true

// Adopt takes over an engine that is running but was not started by this
// process (a previous daemon started it): pid and startTicks as recorded, and
// wantCmdline, its whole command line (Spec.Argv), which must match
// /proc/PID/cmdline exactly. The process must be alive (a zombie is dead) and
// the leader of its own session, as Start leaves it.
//
// Its exit is noticed without polling through a pidfd (pidfd_open, Linux
// 5.3; non-blocking, 5.10), which becomes readable when the process exits,
// zombie or not, and which Go's runtime poller waits on, so no thread is
// held. Where pidfd_open is not available (older kernels, a seccomp filter
// that refuses it), /proc is polled every 500 ms instead. Either way the exit
// status is unknown (Exit.Err is ErrNoStatus): only a parent learns it.
func Adopt(pid int, startTicks uint64, wantCmdline []string) (*Handle, error) {
	fail := func(err error, format string, args ...any) (*Handle, error) {
		return nil, fmt.Errorf("adopt process %d: %w: %s", pid, err, fmt.Sprintf(format, args...))
	}
	if pid <= 0 {
		return fail(ErrNotRunning, "bad pid")
	}
	if len(wantCmdline) == 0 {
		return nil, fmt.Errorf("adopt process %d: no command line to check", pid)
	}
	// Open the pidfd before the checks: if they pass, the pidfd refers to the
	// checked process (had the pid been reused in between, the start time
	// would differ).
	var pidfd *os.File
	if usePidfd {
		fd, err := unix.PidfdOpen(pid, unix.PIDFD_NONBLOCK)
		switch {
		case errors.Is(err, unix.ESRCH):
			return fail(ErrNotRunning, "no such process")
		case err == nil:
			pidfd = os.NewFile(uintptr(fd), fmt.Sprintf("pidfd:%d", pid))
		}
		// Any other error (ENOSYS, EPERM, EINVAL): fall back to /proc.
	}
	closePidfd := func() {
		if pidfd != nil {
			pidfd.Close()
		}
	}
	info, err := proc.Stat(pid)
	if err != nil {
		closePidfd()
		if errors.Is(err, proc.ErrNotFound) {
			return fail(ErrNotRunning, "no such process")
		}
		return nil, fmt.Errorf("adopt process %d: %w", pid, err)
	}
	switch {
	case info.StartTicks != startTicks:
		closePidfd()
		return fail(ErrMismatch, "started at tick %d, not %d: the pid was reused", info.StartTicks, startTicks)
	case info.State == 'Z' || info.State == 'X':
		closePidfd()
		return fail(ErrNotRunning, "zombie")
	case info.Session != pid:
		closePidfd()
		return fail(ErrMismatch, "not the leader of its own session (session %d)", info.Session)
	}
	cmdline, err := proc.Cmdline(pid)
	if err != nil {
		closePidfd()
		if errors.Is(err, proc.ErrNotFound) {
			return fail(ErrNotRunning, "exited")
		}
		return nil, fmt.Errorf("adopt process %d: %w", pid, err)
	}
	if !slices.Equal(cmdline, wantCmdline) {
		closePidfd()
		return fail(ErrMismatch, "command line %q, want %q", cmdline, wantCmdline)
	}
	h := newHandle(pid, startTicks)
	go h.watchAdopted(pidfd)
	return h, nil
}

// watchAdopted waits for an adopted process to exit.
func (h *Handle) watchAdopted(pidfd *os.File) {
	if pidfd != nil && waitPidfd(pidfd) {
		h.finish(Exit{Code: -1, Err: ErrNoStatus, At: time.Now()})
		return
	}
	// No pidfd, or the runtime cannot poll it: look in /proc.
	t := time.NewTicker(procPollInterval)
	defer t.Stop()
	for proc.Alive(h.pid, h.startTicks) {
		<-t.C
	}
	h.finish(Exit{Code: -1, Err: ErrNoStatus, At: time.Now()})
}

// waitPidfd blocks in Go's runtime poller until the pidfd is readable: the
// process has exited. It closes the pidfd, and reports false when it could
// not wait that way.
func waitPidfd(pidfd *os.File) bool {
	defer pidfd.Close()
	rc, err := pidfd.SyscallConn()
	if err != nil {
		return false
	}
	var pollErr error
	err = rc.Read(func(fd uintptr) bool {
		fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
		n, err := unix.Poll(fds, 0)
		switch {
		case errors.Is(err, unix.EINTR):
			return false
		case err != nil:
			pollErr = err
			return true
		}
		return n > 0
	})
	return err == nil && pollErr == nil
}
