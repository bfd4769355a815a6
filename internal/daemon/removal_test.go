package daemon_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/poolmanagerd/pool-managerd/internal/api"
	"github.com/poolmanagerd/pool-managerd/internal/daemon"
	"github.com/poolmanagerd/pool-managerd/internal/executor"
	"github.com/poolmanagerd/pool-managerd/reconcile"
)

func settleAfter(d time.Duration) func(*daemon.Options) {
	return func(o *daemon.Options) { o.RemovalSettle = d }
}

// truncate empties a config file in place, as an editor or scp that writes
// in place leaves it for a moment.
func (n *node) truncate(rel string) {
	n.t.Helper()
	if err := os.Truncate(filepath.Join(n.config, rel), 0); err != nil {
		n.t.Fatal(err)
	}
}

// A file emptied and written again within the settle window leaves the
// pool's engine alone: same pid, no stop.
func TestRemovalTruncatedFileWrittenAgain(t *testing.T) {
	t.Parallel()
	n := newNode(t, 1)
	a, b := pool{id: "a"}, pool{id: "b"}
	n.writeSplit(a, b)
	r := n.start(settleAfter(time.Minute))
	pids := r.waitReady("a", "b")

	n.truncate("pools/b.cue")
	pending := r.waitPool("b", "pending removal", func(p api.Pool) bool { return !p.RemovalAt.IsZero() })
	if !pending.Ready || pending.PID != pids["b"] || pending.Phase != reconcile.Ready {
		t.Errorf("pool b pending removal: %v, want still Ready with pid %d", poolString(pending), pids["b"])
	}
	r.waitMetric("pool_managerd_pools_pending_removal", nil, 1)

	n.env.WriteFile("pools/b.cue", n.spec(n.name, b).CUE())
	back := r.waitPool("b", "back in the config", func(p api.Pool) bool { return p.RemovalAt.IsZero() })
	r.settle()
	if back = r.pool("b"); !back.Ready || back.PID != pids["b"] {
		t.Errorf("pool b after its file was written again: %v, want Ready with pid %d", poolString(back), pids["b"])
	}
	if c := r.stepCount("b", executor.StepStopped); c != 0 {
		t.Errorf("pool b's engine was stopped %d times, want never", c)
	}
	if c := r.stepCount("b", executor.StepIntent); c != 1 {
		t.Errorf("pool b was started %d times, want once", c)
	}
	if !strings.Contains(r.log.String(), "pool is back in the config before its removal settled") {
		t.Errorf("the log does not say pool b came back:\n%s", r.log.String())
	}
	wantMetric(t, r.reg, "pool_managerd_pools_pending_removal", nil, 0)
}

// A pool really removed keeps serving through the settle window, and is
// stopped once, after it.
func TestRemovalStopsAfterTheSettleWindow(t *testing.T) {
	t.Parallel()
	n := newNode(t, 1)
	a, b := pool{id: "a"}, pool{id: "b"}
	n.writeSplit(a, b)
	const settle = 2 * time.Second
	r := n.start(settleAfter(settle))
	pids := r.waitReady("a", "b")

	n.removeFile("pools/b.cue")
	pending := r.waitPool("b", "pending removal", func(p api.Pool) bool { return !p.RemovalAt.IsZero() })
	if !pending.Ready || pending.PID != pids["b"] {
		t.Errorf("pool b pending removal: %v, want still Ready with pid %d", poolString(pending), pids["b"])
	}
	r.waitFor("pool b's engine to be stopped", func() bool { return !alive(pids["b"]) })
	if now := time.Now(); now.Before(pending.RemovalAt) {
		t.Errorf("pool b's engine was stopped before its removal was due (%v < %v)", now, pending.RemovalAt)
	}
	r.waitFor("pool b to be forgotten", func() bool {
		_, ok := n.loadState().Engines["b"]
		return !ok
	})
	// The stop's op reports its step just after it saves the state.
	r.waitFor("pool b's stop to end", func() bool { return r.stepCount("b", executor.StepStopped) > 0 })
	r.settle()
	if c := r.stepCount("b", executor.StepStopped); c != 1 {
		t.Errorf("pool b's engine was stopped %d times, want once", c)
	}
	if p := r.pool("a"); !p.Ready || p.PID != pids["a"] {
		t.Errorf("pool a: %v, want untouched (pid %d)", poolString(p), pids["a"])
	}
}

// A config that leaves the node no pools while its engines run is held
// back, whichever way it came about; a config with pools is applied again.
func TestEmptyConfigHeldBack(t *testing.T) {
	t.Parallel()
	n := newNode(t, 1)
	a, b := pool{id: "a"}, pool{id: "b"}
	n.writeSplit(a, b)
	r := n.start(settleAfter(50 * time.Millisecond))
	pids := r.waitReady("a", "b")

	// A restore in two steps: the tree goes, nodes.cue comes back first.
	for _, f := range []string{"pools/a.cue", "pools/b.cue", "nodes.cue"} {
		n.removeFile(f)
	}
	r.waitFor("the config to be invalid (no node)", func() bool { return !r.d.Config().Valid })
	decl := n.env.Decl()
	decl.Name = n.name
	n.writeFile("nodes.cue", decl.CUE())
	r.waitFor("the empty config to be held back", func() bool { return r.d.Config().HeldBack != nil })
	c := r.d.Config()
	for _, want := range []string{"no pools", "2 engines run", "a, b", "stop --all", "--allow-empty"} {
		if !strings.Contains(c.HeldBack.Reason, want) {
			t.Errorf("heldBack reason %q does not say %q", c.HeldBack.Reason, want)
		}
	}
	if !c.Valid || len(c.Pools) != 2 {
		t.Errorf("config %+v, want valid with the pools in force, a and b", c)
	}
	r.waitMetric("pool_managerd_config_held_back", nil, 1)
	if !strings.Contains(r.log.String(), "config held back") {
		t.Errorf("the log does not say the config is held back")
	}
	r.settle()
	for id, pid := range pids {
		if p := r.pool(id); !p.Ready || p.PID != pid {
			t.Errorf("with the empty config held back: %v, want Ready with pid %d", poolString(p), pid)
		}
	}

	n.writeFile("pools/a.cue", n.spec(n.name, a).CUE())
	n.writeFile("pools/b.cue", n.spec(n.name, b).CUE())
	r.waitFor("the config to be applied", func() bool {
		c := r.d.Config()
		return c.HeldBack == nil && len(c.Pools) == 2 && c.Valid
	})
	r.waitMetric("pool_managerd_config_held_back", nil, 0)
	r.settle()
	for id, pid := range pids {
		if p := r.pool(id); !p.Ready || p.PID != pid {
			t.Errorf("after the restore: %v, want Ready with pid %d", poolString(p), pid)
		}
		if c := r.stepCount(id, executor.StepStopped); c != 0 {
			t.Errorf("pool %s's engine was stopped %d times, want never", id, c)
		}
	}
}

// With --allow-empty a config with no pools is applied: the pools are
// stopped once their removal settles.
func TestEmptyConfigAllowed(t *testing.T) {
	t.Parallel()
	n := newNode(t, 1)
	a := pool{id: "a"}
	n.writeSplit(a)
	r := n.start(settleAfter(200*time.Millisecond), func(o *daemon.Options) { o.AllowEmpty = true })
	pids := r.waitReady("a")
	n.removeFile("pools/a.cue")
	r.waitFor("pool a's engine to be stopped", func() bool { return !alive(pids["a"]) })
	if c := r.d.Config(); c.HeldBack != nil || len(c.Pools) != 0 {
		t.Errorf("config %+v, want the empty config applied", c)
	}
}

// After a daemon restart the guard compares with the engines in the state
// file, and a pool that left the config while no daemon ran gets its
// settle window too.
func TestRemovalAcrossDaemonRestart(t *testing.T) {
	t.Parallel()
	n := newNode(t, 1)
	a, b := pool{id: "a"}, pool{id: "b"}
	n.writeSplit(a, b)
	r := n.start(settleAfter(time.Minute))
	pids := r.waitReady("a", "b")
	r.shutdown()

	n.removeFile("pools/a.cue")
	n.removeFile("pools/b.cue")
	r = n.start(settleAfter(time.Minute))
	r.waitFor("the empty config to be held back", func() bool { return r.d.Config().HeldBack != nil })
	r.settle()
	for id, pid := range pids {
		if !alive(pid) {
			t.Errorf("pool %s's engine pid %d was stopped by a daemon that never applied a config", id, pid)
		}
	}
	r.shutdown()

	n.writeFile("pools/a.cue", n.spec(n.name, a).CUE())
	r = n.start(settleAfter(300 * time.Millisecond))
	pending := r.waitPool("b", "pending removal", func(p api.Pool) bool { return !p.RemovalAt.IsZero() })
	if !pending.Ready || pending.PID != pids["b"] {
		t.Errorf("pool b pending removal after the restart: %v, want Ready with pid %d", poolString(pending), pids["b"])
	}
	r.waitFor("pool b's engine to be stopped", func() bool { return !alive(pids["b"]) })
	if p := r.waitReady("a"); p["a"] != pids["a"] {
		t.Errorf("pool a's engine is pid %d, want the adopted %d", p["a"], pids["a"])
	}
}

// A pool renamed on the same GPU: the new name waits for the memory the
// old one holds until its removal settles, without counting a failure.
func TestRenameWaitsForTheRemoval(t *testing.T) {
	t.Parallel()
	n := newNode(t, 1)
	big := map[string]string{"FAKE_ENGINE_VRAM": "10Gi"}
	old := pool{id: "old", vram: "10Gi", env: big}
	n.writeSplit(old)
	r := n.start(settleAfter(2 * time.Second))
	pids := r.waitReady("old")

	n.removeFile("pools/old.cue")
	n.writeFile("pools/new.cue", n.spec(n.name, pool{id: "new", vram: "10Gi", env: big}).CUE())
	waiting := r.waitPool("new", "waiting for the GPU", func(p api.Pool) bool {
		return p.Phase == reconcile.Pending && strings.Contains(p.Reason, "removal settles")
	})
	if waiting.LastError != nil || waiting.Restarts != 0 {
		t.Errorf("pool new while it waits: %v, want no failure", poolString(waiting))
	}
	r.waitReady("new")
	if alive(pids["old"]) {
		t.Errorf("pool old's engine pid %d still runs", pids["old"])
	}
	if h := n.loadState().Pools["new"]; len(h.Failures) != 0 || h.LastError != nil {
		t.Errorf("pool new's history %+v, want no failure: waiting for a removal is not one", h)
	}
}

// An operator who empties the node on purpose stops its engines: the
// held-back config is applied as soon as they are stopped, not at the
// next resync (the harness's is an hour away).
func TestHeldBackConfigAppliedAfterStopAll(t *testing.T) {
	t.Parallel()
	n := newNode(t, 1)
	a := pool{id: "a"}
	n.writeSplit(a)
	r := n.start(settleAfter(time.Minute))
	pids := r.waitReady("a")
	n.removeFile("pools/a.cue")
	r.waitFor("the empty config to be held back", func() bool { return r.d.Config().HeldBack != nil })
	if err := r.d.Stop(r.ctx(), nil, true); err != nil {
		t.Fatalf("stop --all: %v", err)
	}
	r.waitFor("the empty config to be applied", func() bool {
		c := r.d.Config()
		return c.HeldBack == nil && c.Valid && len(c.Pools) == 0
	})
	if alive(pids["a"]) {
		t.Errorf("pool a's engine pid %d still runs after stop --all", pids["a"])
	}
	if strings.Contains(r.log.String(), "pool left the config") {
		t.Errorf("a removal settle window was started for a pool with no engine:\n%s", r.log.String())
	}
}
