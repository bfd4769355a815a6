//go:build linux

package supervisor

import (
	"errors"
	"fmt"
	"syscall"
	"time"
)

// ErrNoStatus is Exit.Err for a process this daemon did not start (adopted):
// only the parent learns an exit status, so all that is known is that it is
// gone.
var ErrNoStatus = errors.New("exit status unknown: the process was not started by this daemon")

// The reasons Exit.Reason gives, named as the lifecycle's error classes.
const (
	ReasonExited    = "exited"     // a non-zero exit status, or an unknown one
	ReasonSignaled  = "signaled"   // killed by a signal
	ReasonOOMKilled = "oom_killed" // killed by a SIGKILL that Stop did not send
)

// Exit is how an engine process ended.
type Exit struct {
	// Code is the exit status; -1 when the process was killed by a signal or
	// the status is unknown (see Err).
	Code int
	// Signal names the signal that killed the process as Go does ("killed",
	// "terminated", "segmentation fault"); empty when it exited.
	Signal string
	// Signo is that signal's number; 0 when it exited.
	Signo syscall.Signal
	// Err says why the status is unknown: ErrNoStatus for an adopted
	// process, or the error of the wait.
	Err error
	// At is when the exit was noticed.
	At time.Time
	// Stopped is true when the process ended after Stop signalled it: the
	// exit was asked for and is not a failure, whatever its status.
	Stopped bool
	// Killed is true when Stop had to send SIGKILL (to the process or to
	// what was left of its session) because SIGTERM was not honoured within
	// the grace period.
	Killed bool
	// DrainErr is the drain's error (it failed, or timed out), in Stop's
	// result only; the engine was stopped all the same.
	DrainErr error
}

// Clean reports whether the process exited with status 0.
func (e Exit) Clean() bool {
	return e.Err == nil && e.Signo == 0 && e.Code == 0
}

// Signaled reports whether a signal killed the process.
func (e Exit) Signaled() bool { return e.Signo != 0 }

// Reason classifies an exit that was not asked for: "" for a clean exit,
// ReasonOOMKilled for a SIGKILL that Stop did not send (most often the
// kernel's OOM killer: the kernel log says so; someone's `kill -9` looks the
// same), ReasonSignaled for any other signal, ReasonExited for a non-zero or
// unknown status. Check Stopped first: an exit that Stop asked for is not a
// failure.
func (e Exit) Reason() string {
	switch {
	case e.Clean():
		return ""
	case e.Signo == syscall.SIGKILL && !e.Killed:
		return ReasonOOMKilled
	case e.Signo != 0:
		return ReasonSignaled
	}
	return ReasonExited
}

// String describes the exit as Go's os.ProcessState does ("exit status 1",
// "signal: killed"), with what Stop did.
func (e Exit) String() string {
	var s string
	switch {
	case e.Signo != 0:
		s = "signal: " + e.Signal
	case errors.Is(e.Err, ErrNoStatus):
		s = "exited (status unknown: adopted process)"
	case e.Err != nil:
		s = "exit status unknown: " + e.Err.Error()
	default:
		s = fmt.Sprintf("exit status %d", e.Code)
	}
	switch {
	case e.Killed:
		s += " (stopped: SIGKILL after the grace period)"
	case e.Stopped:
		s += " (stopped)"
	}
	return s
}

// exitOf reads a wait status.
func exitOf(ws syscall.WaitStatus, at time.Time) Exit {
	e := Exit{Code: ws.ExitStatus(), At: at}
	if ws.Signaled() {
		e.Code = -1
		e.Signo = ws.Signal()
		e.Signal = e.Signo.String()
	}
	return e
}
