//go:build linux

package supervisor

import (
	"context"
	"fmt"
	"syscall"
	"time"

	"github.com/poolmanagerd/pool-managerd/drivers/engine/proc"
)

// StopSpec says how to stop an engine.
type StopSpec struct {
	// Drain, when set, is called first and should return once the engine has
	// no request in flight (poll /slots until idle). Its context ends after
	// DrainTimeout, or when the engine exits; Stop goes on then even if Drain
	// has not returned.
	Drain func(ctx context.Context) error
	// DrainTimeout bounds Drain; 0 means only ctx does.
	DrainTimeout time.Duration
	// Grace is how long SIGTERM has to work before SIGKILL.
	Grace time.Duration
}

// sessionPollInterval is how often Stop looks through /proc for the
// session's other processes (not our children: they cannot be waited for)
// while they finish.
const sessionPollInterval = 50 * time.Millisecond

// killWait bounds the wait for a process to go after SIGKILL when ctx has
// already ended. A process stuck in the kernel (a GPU driver call) can take a
// while to die.
const killWait = 10 * time.Second

// Stop stops the engine and everything in its session: Drain (bounded by
// DrainTimeout), then SIGTERM to the engine's process group, then, when the
// engine or any other process of its session is still there after Grace (or
// when ctx ends first), SIGKILL to every process of the session; then it
// waits for the engine to exit and for its session to be empty. A process of
// the session in another process group (TGI's shards) is not sent SIGTERM:
// its parent stops it; it is killed when it outlives the grace period.
//
// It returns the engine's exit with Stopped set, Killed when SIGKILL was
// needed and DrainErr when the drain failed. An engine that has already
// exited gives its exit at once (Stopped false: it ended by itself) once
// what is left of its session is gone. The error is not nil only when the
// engine or its session is still there after SIGKILL (ctx ended, or
// killWait passed when ctx had already ended).
func (h *Handle) Stop(ctx context.Context, s StopSpec) (Exit, error) {
	h.stopMu.Lock()
	defer h.stopMu.Unlock()

	var drainErr error
	if s.Drain != nil && !h.exited() {
		drainErr = h.drain(ctx, s)
	}

	deadline := time.Now().Add(s.Grace)
	if !h.exited() || h.sessionLeft() {
		h.termSent.Store(true)
		h.signalGroup(syscall.SIGTERM)
	}
	grace := time.NewTimer(s.Grace)
	defer grace.Stop()
	select {
	case <-h.done:
	case <-grace.C:
	case <-ctx.Done():
	}

	// The engine may be gone while its workers are not: give them what is
	// left of the grace period.
	for h.exited() && h.sessionLeft() && time.Now().Before(deadline) && ctx.Err() == nil {
		time.Sleep(sessionPollInterval)
	}

	waitCtx := ctx
	if !h.exited() || h.sessionLeft() {
		h.killSent.Store(true)
		if ctx.Err() != nil {
			var cancel context.CancelFunc
			waitCtx, cancel = context.WithTimeout(context.WithoutCancel(ctx), killWait)
			defer cancel()
		}
		if err := h.killAll(waitCtx); err != nil {
			return h.result(drainErr), err
		}
	}
	select {
	case <-h.done:
	case <-waitCtx.Done():
		return h.result(drainErr), fmt.Errorf("stop engine %d: still running after SIGKILL: %w", h.pid, waitCtx.Err())
	}
	return h.result(drainErr), nil
}

// result is the exit Stop returns.
func (h *Handle) result(drainErr error) Exit {
	e, _ := h.Exited()
	e.Killed = e.Killed || h.killSent.Load()
	e.DrainErr = drainErr
	return e
}

// drain runs s.Drain until it returns, its time is up or the engine exits.
func (h *Handle) drain(ctx context.Context, s StopSpec) error {
	if s.DrainTimeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, s.DrainTimeout)
		defer cancel()
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	res := make(chan error, 1)
	go func() { res <- s.Drain(ctx) }()
	select {
	case err := <-res:
		if err != nil {
			return fmt.Errorf("drain: %w", err)
		}
		return nil
	case <-ctx.Done():
		return fmt.Errorf("drain: %w", ctx.Err())
	case <-h.done:
		return nil // nothing left to drain; its Exit tells how it ended
	}
}

// signalGroup signals the engine's process group (its pgid is its pid: a
// session leader's group). ESRCH (nothing left in the group) is not an error.
func (h *Handle) signalGroup(sig syscall.Signal) {
	_ = syscall.Kill(-h.pid, sig)
}

// sessionLeft reports whether a live process of the engine's session is
// there (after the engine itself has exited: its session id stays taken
// while any process of the session lives, so it cannot be another's).
func (h *Handle) sessionLeft() bool {
	pids, err := h.Session()
	return err == nil && len(pids) > 0
}

// killAll sends SIGKILL to the engine and to every process of its session
// until the engine has exited and the session is empty. It returns an error
// when ctx ends first.
func (h *Handle) killAll(ctx context.Context) error {
	for {
		pids, _ := h.Session()
		if !h.exited() {
			h.killLeader()
		}
		if len(pids) == 0 {
			return nil // the engine itself is waited for by the caller
		}
		h.signalGroup(syscall.SIGKILL)
		for _, pid := range pids {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("stop engine %d: session processes %v still there after SIGKILL: %w", h.pid, pids, ctx.Err())
		case <-time.After(sessionPollInterval):
		}
	}
}

// killLeader sends SIGKILL to the engine itself: through os.Process (a
// pidfd) for our child, after checking its identity for an adopted one.
func (h *Handle) killLeader() {
	if h.process != nil {
		_ = h.process.Signal(syscall.SIGKILL)
		return
	}
	if proc.Alive(h.pid, h.startTicks) {
		_ = syscall.Kill(h.pid, syscall.SIGKILL)
	}
}
