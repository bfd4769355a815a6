//go:build linux

package daemon_test

import (
	"sync"
	"testing"
	"time"

	"github.com/poolmanagerd/pool-managerd/internal/api"
	"github.com/poolmanagerd/pool-managerd/internal/daemon"
	"github.com/poolmanagerd/pool-managerd/internal/executor"
	"github.com/poolmanagerd/pool-managerd/reconcile"
)

// longLoad is a model load that never ends within a test: the engine is
// killed (SIGTERM kills a llama-server that is still loading) when the
// test is done with it.
var longLoad = map[string]string{"FAKE_ENGINE_LOAD_DELAY": "10m"}

func preloading(p api.Pool) bool {
	return p.Phase == reconcile.Preloading && p.Preload != nil && p.Preload.State == api.PreloadLoading
}

// waitPreloading waits until pool id is Preloading in an engine that the
// state records, and returns that engine's pid (read from the state file;
// TestViewShowsPreloadingEngine checks the view's).
func (r *running) waitPreloading(id string) int {
	r.t.Helper()
	pid := 0
	r.waitPool(id, "Preloading in a recorded engine", func(p api.Pool) bool {
		pid = r.n.loadState().Engines[id].PID
		return preloading(p) && pid != 0
	})
	return pid
}

// TestLongPreloadHoldsUpNoOtherPool: each pool's work is an op of its own.
// While pool a loads its model (for ten minutes), the daemon is Ready,
// pool b becomes Ready, and pool c, added to the config meanwhile, becomes
// Ready too; a keeps loading in the same engine throughout.
func TestLongPreloadHoldsUpNoOtherPool(t *testing.T) {
	t.Parallel()
	n := newNode(t, 2)
	a := pool{id: "a", env: longLoad}
	b := pool{id: "b", devices: []int{1}}
	n.writeConfig(a, b)
	r := n.start()
	loading := r.waitPreloading("a")
	r.waitReady("b")
	if !r.d.Ready() {
		t.Error("Ready() false while a pool preloads: /readyz must not wait for preloads")
	}
	if p := r.pool("a"); !preloading(p) || r.enginePID("a") != loading {
		t.Fatalf("pool a once b is Ready: %v (recorded pid %d), want still Preloading in pid %d", poolString(p), r.enginePID("a"), loading)
	}

	n.writeConfig(a, b, pool{id: "c", devices: []int{1}})
	r.waitReady("c")
	if p := r.pool("a"); !preloading(p) || r.enginePID("a") != loading {
		t.Fatalf("pool a once c is Ready: %v (recorded pid %d), want still Preloading in pid %d", poolString(p), r.enginePID("a"), loading)
	}
	if got := r.stepCount("a", executor.StepSpawned); got != 1 {
		t.Errorf("pool a spawned %d engines, want 1", got)
	}
	// Run returns while a's preload is in flight (its op sees the context
	// end and leaves the engine loading).
	r.shutdown()
	if !alive(loading) {
		t.Errorf("pool a's loading engine pid %d did not survive the shutdown", loading)
	}
}

// TestConfigChangeReplacesPreload: a pool whose config changes while it
// preloads has its op cancelled and replaced: the loading engine is
// stopped, a new one started from the new config becomes Ready, and the
// cancelled preload counts as no failure (no restart, no last error, no
// failed preload in the metrics).
func TestConfigChangeReplacesPreload(t *testing.T) {
	t.Parallel()
	n := newNode(t, 1)
	n.writeConfig(pool{id: "a", env: longLoad})
	r := n.start()
	old := r.waitPreloading("a")

	n.writeConfig(pool{id: "a"})
	p := r.waitReadyWhere("a", "Ready in a new engine", func(p api.Pool) bool { return p.PID != old })
	if p.Restarts != 0 || p.LastError != nil || p.Breaker != api.BreakerClosed {
		t.Errorf("after the replacement: %v, want no restart, no error, breaker closed", poolString(p))
	}
	if alive(old) {
		t.Errorf("the cancelled preload's engine pid %d is still alive", old)
	}
	if got := r.stepCount("a", executor.StepSpawned); got != 2 {
		t.Errorf("pool a spawned %d engines, want 2", got)
	}
	// The Ready event that counts the preload comes just after ReadyAt is recorded.
	r.waitMetric("pool_managerd_preload_total", l("pool", "a", "outcome", "success"), 1)
	wantAllZero(t, r.reg, "pool_managerd_preload_total", l("pool", "a", "outcome", "failure"), "the cancelled preload was counted as a failure")
	wantAllZero(t, r.reg, "pool_managerd_restarts_total", l("pool", "a"), "a replacement is no restart")
	if rec := n.loadState().Pools["a"]; rec.LastError != nil || len(rec.Failures) != 0 {
		t.Errorf("the state records a failure of pool a: %+v", rec)
	}
}

// TestViewShowsPreloadingEngine: while a pool's first engine preloads (and
// nothing else happens), the view shows that engine: its pid, port and
// endpoint. (Before the fix the view kept the last pass's observation,
// made before the spawn, for the whole preload: no pid, no endpoint.)
func TestViewShowsPreloadingEngine(t *testing.T) {
	t.Parallel()
	n := newNode(t, 1)
	n.writeConfig(pool{id: "a", env: longLoad})
	r := n.start()
	pid := r.waitPreloading("a")
	p := r.waitPool("a", "Preloading in its recorded engine", func(p api.Pool) bool { return p.PID == pid })
	if !preloading(p) || p.Port == 0 || p.Endpoint == "" || p.LastError != nil {
		t.Errorf("%v (port %d, endpoint %q): want Preloading with its port and endpoint, and no error", poolString(p), p.Port, p.Endpoint)
	}
}

// TestViewReadyOnlyOnceVerified: a pool whose engine passed its health
// check but whose placement (GPU memory on exactly its masked GPUs) is not
// verified yet is not Ready: not in the view, not in pool_ready. The window
// is held open by blocking the executor at its step "healthy" while a pass
// observes the node. (Before the fix the view made every healthy engine
// Ready, and a pass in that window showed ready true and pool_ready 1 for
// an engine whose placement check could still fail.)
func TestViewReadyOnlyOnceVerified(t *testing.T) {
	t.Parallel()
	n := newNode(t, 1)
	n.writeConfig(pool{id: "a"})
	healthy := make(chan struct{})
	release := make(chan struct{})
	var once sync.Once
	r := n.start(func(o *daemon.Options) {
		step := o.Step
		o.Step = func(pool, s string) {
			step(pool, s)
			if s == executor.StepHealthy {
				once.Do(func() { close(healthy) })
				<-release
			}
		}
	})
	defer close(release)
	select {
	case <-healthy:
	case <-time.After(waitTimeout):
		t.Fatal("pool a's engine never passed its health check")
	}
	r.settle() // a pass observes the healthy, unverified engine
	if p := r.pool("a"); p.Ready || p.Phase == reconcile.Ready {
		t.Errorf("%v before its placement was verified, want not Ready (Preloading)", poolString(p))
	}
	if v, _ := metric(t, r.reg, "pool_managerd_pool_ready", l("pool", "a")); v != 0 {
		t.Errorf("pool_ready{pool=a} = %v before the placement was verified, want 0", v)
	}
}
