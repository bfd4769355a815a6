package executor

import (
	"context"
	"errors"
	"fmt"
	"maps"

	"github.com/poolmanagerd/pool-managerd/internal/state"
	"github.com/poolmanagerd/pool-managerd/reconcile"
	"github.com/poolmanagerd/pool-managerd/reconcile/restart"
	"github.com/poolmanagerd/pool-managerd/schema"
)

// What the daemon does besides applying plans: react to a driver error,
// carry out an operator's stop or reset, and show its state. These share
// the Executor's state with the Applies running at the same time.

// ErrNoRecord is wrapped by ResetPools' error for a pool the state does not know.
var ErrNoRecord = errors.New("no record of this pool")

// State returns a copy of the state as the Executor holds it (read from
// the state file at the first use). It does not wait for a save in progress.
func (x *Executor) State() (*state.State, error) {
	s := x.snap.Load()
	if s == nil {
		if err := x.load(); err != nil {
			return nil, err
		}
		s = x.snap.Load()
	}
	out := &state.State{Version: s.Version, Engines: maps.Clone(s.Engines), Pools: maps.Clone(s.Pools)}
	if s.AppliedRevision != nil {
		rev := *s.AppliedRevision
		out.AppliedRevision = &rev
	}
	return out, nil
}

// RecordRevision records the revision of the config the daemon applied (nil:
// not from Git), so that status can print it without the daemon and a
// restarted daemon can start from it. Nothing is written when it is unchanged.
func (x *Executor) RecordRevision(rev *state.Revision) error {
	if st, err := x.State(); err == nil && equalRevision(st.AppliedRevision, rev) {
		return nil
	}
	return x.mutate(func(st *state.State) {
		if rev == nil {
			st.AppliedRevision = nil
			return
		}
		r := *rev
		st.AppliedRevision = &r
	})
}

func equalRevision(a, b *state.Revision) bool {
	if a == nil || b == nil {
		return a == b
	}
	return *a == *b
}

// RecordFault records a driver error on one of a pool's GPUs (a critical
// Xid, a lost GPU) as a failure of the pool, for its backoff (driver errors
// double it) and breaker. From then on the lifecycle has the pool Unready:
// a failure recorded against a running engine means it is not to be
// trusted. Its engine is then stopped (StopEngine), and the next plan
// restarts it once the backoff allows (or blocks it while the GPU is lost).
func (x *Executor) RecordFault(pool *schema.Pool, f restart.Failure) Outcome {
	if err := x.load(); err != nil {
		return Outcome{Pool: pool.ID, Phase: reconcile.Unready, Failure: &restart.Failure{Class: "state_read_failed", Message: err.Error()}}
	}
	x.mu.Lock()
	rec := x.st.Engines[pool.ID]
	x.mu.Unlock()
	if f.Hint == "" {
		f.Hint = restart.Hint(f.Class)
	}
	t := x.tracker(pool)
	if !rec.ReadyAt.IsZero() {
		t.Ready(rec.ReadyAt)
	}
	phase := x.recordFailure(pool, t, f)
	x.report(pool.ID, phase, &f, "%s", f.Message)
	return Outcome{Pool: pool.ID, Phase: phase, Failure: &f, NotBefore: t.NextRetry()}
}

// StopEngine drains and stops a pool's engine after a driver error (see
// RecordFault) and forgets it; its restart record is kept.
func (x *Executor) StopEngine(ctx context.Context, id string) error {
	return x.stopPool(ctx, id, "engine stopped after the driver error")
}

// StopPool stops a pool's engine as an operator asked (drain, SIGTERM,
// grace, SIGKILL) and forgets it; its restart record is kept. A pool
// without an engine is no error.
func (x *Executor) StopPool(ctx context.Context, id string) error {
	return x.stopPool(ctx, id, "stopped by an operator")
}

func (x *Executor) stopPool(ctx context.Context, id, why string) error {
	if err := x.load(); err != nil {
		return err
	}
	x.mu.Lock()
	rec, ok := x.st.Engines[id]
	x.mu.Unlock()
	if !ok {
		return nil
	}
	if err := x.stop(ctx, reconcile.Change{Action: reconcile.Replace, Pool: id, PID: rec.PID}); err != nil {
		return err
	}
	x.report(id, reconcile.Stopped, nil, "%s", why)
	return nil
}

// StopUnrecorded stops an engine of the pool found by its marker, not in
// the state file (a crash between its spawn and its record), as StopPool
// does a recorded one.
func (x *Executor) StopUnrecorded(ctx context.Context, id string, pid int) error {
	if err := x.load(); err != nil {
		return err
	}
	return x.stop(ctx, reconcile.Change{Action: reconcile.Replace, Pool: id, PID: pid})
}

// ResetPools closes the named pools' circuit breakers and clears their
// backoff, as `pool-managerd reset` does. A pool without a restart record
// is an error wrapping ErrNoRecord, and then nothing is changed.
func (x *Executor) ResetPools(ids []string, policies map[string]schema.RestartPolicy) error {
	if err := x.load(); err != nil {
		return err
	}
	x.mu.Lock()
	for _, id := range ids {
		if _, ok := x.st.Pools[id]; !ok {
			x.mu.Unlock()
			return fmt.Errorf("reset pool %s: %w", id, ErrNoRecord)
		}
	}
	x.mu.Unlock()
	return x.mutate(func(st *state.State) {
		for _, id := range ids {
			policy, ok := policies[id]
			if !ok {
				policy = restartPolicyOf(st.Engines[id].Spec)
			}
			t := restart.FromRecord(policy, st.Pools[id], x.Rand)
			t.Reset(x.now())
			st.Pools[id] = t.Record()
		}
	})
}
