//go:build linux

package daemon_test

import (
	"errors"
	"testing"

	"github.com/poolmanagerd/pool-managerd/internal/api"
	"github.com/poolmanagerd/pool-managerd/internal/executor"
	"github.com/poolmanagerd/pool-managerd/reconcile"
)

func stoppedPool(p api.Pool) bool {
	return p.Phase == reconcile.Stopped && !p.Ready && p.PID == 0
}

// wantStopped checks that the pools are Stopped with no engine, in the
// view and in the state.
func (r *running) wantStopped(when string, ids ...string) {
	r.t.Helper()
	st := r.n.loadState()
	for _, id := range ids {
		if p := r.pool(id); !stoppedPool(p) {
			r.t.Errorf("%s: %v, want Stopped with no engine", when, poolString(p))
		}
		if rec, ok := st.Engines[id]; ok {
			r.t.Errorf("%s: the state still records an engine of pool %s: pid %d", when, id, rec.PID)
		}
	}
}

// TestOperatorStopHoldsUntilReset: an operator's Stop stops the pool's
// engine and holds it Stopped: a reload (SIGHUP) does not start it again,
// and other pools are untouched. Reset lifts the hold and the pool starts
// again (a stop is no failure: no restart counted). Stop of all stops every
// pool; a change of one pool's config lifts that pool's hold only.
func TestOperatorStopHoldsUntilReset(t *testing.T) {
	t.Parallel()
	n := newNode(t, 2)
	a, b := pool{id: "a"}, pool{id: "b", devices: []int{1}}
	n.writeConfig(a, b)
	r := n.start()
	pids := r.waitReady("a", "b")

	if err := r.d.Stop(r.ctx(), []string{"a"}, false); err != nil {
		t.Fatalf("Stop a: %v", err)
	}
	// Stop returns once the engine is stopped.
	if alive(pids["a"]) {
		t.Errorf("pool a's engine pid %d is alive after Stop returned", pids["a"])
	}
	// At once: the view must not show the stopped engine from an
	// observation made before the stop.
	r.wantStopped("after Stop", "a")
	r.settle()
	r.wantStopped("after a reload", "a")
	if p := r.pool("b"); !p.Ready || p.PID != pids["b"] {
		t.Errorf("pool b after a's stop: %v, want Ready in pid %d", poolString(p), pids["b"])
	}
	if got := r.stepCount("a", executor.StepSpawned); got != 1 {
		t.Errorf("pool a spawned %d engines while held, want only its first", got)
	}

	if err := r.d.Reset(r.ctx(), []string{"a"}); err != nil {
		t.Fatalf("Reset a: %v", err)
	}
	p := r.waitReadyWhere("a", "Ready again", func(p api.Pool) bool { return p.PID != pids["a"] })
	if p.Restarts != 0 || p.LastError != nil {
		t.Errorf("pool a after stop and reset: %v, want no restart and no error", poolString(p))
	}
	pids["a"] = p.PID

	if err := r.d.Stop(r.ctx(), nil, true); err != nil {
		t.Fatalf("Stop all: %v", err)
	}
	for id, pid := range pids {
		if alive(pid) {
			t.Errorf("pool %s: engine pid %d alive after Stop of all returned", id, pid)
		}
	}
	r.wantStopped("after Stop of all", "a", "b")
	if left := ourEngines(n.state); len(left) != 0 {
		t.Errorf("engines running after Stop of all: %v", describe(left))
	}
	r.settle()
	r.wantStopped("after Stop of all and a reload", "a", "b")

	b.env = map[string]string{"FAKE_ENGINE_VRAM": "1Gi"}
	n.writeConfig(a, b)
	r.waitReady("b")
	r.settle()
	r.wantStopped("after b's config changed", "a")
}

// TestOperatorUnknownPool: Stop and Reset of a pool the daemon does not
// know fail with an error wrapping api.ErrUnknownPool (the API answers 404),
// and change nothing, also when a known pool is named with it.
func TestOperatorUnknownPool(t *testing.T) {
	t.Parallel()
	n := newNode(t, 1)
	n.writeConfig(pool{id: "a"})
	r := n.start()
	pid := r.waitReady("a")["a"]
	for _, tc := range []struct {
		name string
		call func() error
	}{
		{"stop", func() error { return r.d.Stop(r.ctx(), []string{"nope"}, false) }},
		{"stop with a known pool", func() error { return r.d.Stop(r.ctx(), []string{"a", "nope"}, false) }},
		{"reset", func() error { return r.d.Reset(r.ctx(), []string{"nope"}) }},
		{"reset with a known pool", func() error { return r.d.Reset(r.ctx(), []string{"a", "nope"}) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if err := tc.call(); !errors.Is(err, api.ErrUnknownPool) {
				t.Errorf("error %v, want one wrapping api.ErrUnknownPool", err)
			}
		})
	}
	r.settle()
	if p := r.pool("a"); !p.Ready || p.PID != pid {
		t.Errorf("pool a after the refused actions: %v, want Ready in pid %d", poolString(p), pid)
	}
}
