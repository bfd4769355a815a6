//go:build linux

package daemon_test

import (
	"context"
	"slices"
	"syscall"
	"testing"
	"time"

	"github.com/poolmanagerd/pool-managerd/internal/daemon"
)

// TestRunShutdownLeavesEnginesRunning: Ping answers while Run runs; once
// Run's context ends Run returns nil, leaving the engines running and
// recorded; Ping, Stop and Reset then fail at once (they do not wait for
// the caller's context); StopEngines after Run stops every engine and
// forgets it. The daemon tells systemd READY=1 once, after its first
// reconcile.
func TestRunShutdownLeavesEnginesRunning(t *testing.T) {
	t.Parallel()
	n := newNode(t, 2)
	n.writeConfig(pool{id: "a"}, pool{id: "b", devices: []int{1}})
	r := n.start()
	pids := r.waitReady("a", "b")

	if err := r.d.Ping(r.ctx()); err != nil {
		t.Fatalf("Ping while running: %v", err)
	}
	if !r.d.Ready() {
		t.Error("Ready() false after the pools became Ready")
	}
	r.shutdown()

	for id, pid := range pids {
		if !alive(pid) {
			t.Errorf("pool %s: engine pid %d is gone after Run returned; engines must keep running", id, pid)
		}
	}
	// What TestMain's leak check looks for finds them.
	if got, want := ourEngines(n.state), []int{min(pids["a"], pids["b"]), max(pids["a"], pids["b"])}; !slices.Equal(got, want) {
		t.Errorf("ourEngines(%s) = %v, want %v", n.state, got, want)
	}
	st := n.loadState()
	for id, pid := range pids {
		if st.Engines[id].PID != pid {
			t.Errorf("pool %s: the state records pid %d, want %d", id, st.Engines[id].PID, pid)
		}
	}
	// A context that never ends: the calls must fail because Run returned.
	ctx := context.Background()
	if err := r.d.Ping(ctx); !isShuttingDown(err) {
		t.Errorf("Ping after Run returned: %v, want the shutting-down error", err)
	}
	if err := r.d.Stop(ctx, []string{"a"}, false); !isShuttingDown(err) {
		t.Errorf("Stop after Run returned: %v, want the shutting-down error", err)
	}
	if err := r.d.Reset(ctx, []string{"a"}); !isShuttingDown(err) {
		t.Errorf("Reset after Run returned: %v, want the shutting-down error", err)
	}
	if got := notifiedReady(r.notified()); got != 1 {
		t.Errorf("READY=1 notified %d times, want once (notices: %q)", got, r.notified())
	}

	if err := r.d.StopEngines(ctx); err != nil {
		t.Fatalf("StopEngines: %v", err)
	}
	for id, pid := range pids {
		if alive(pid) {
			t.Errorf("pool %s: engine pid %d still alive after StopEngines", id, pid)
		}
	}
	if st := n.loadState(); len(st.Engines) != 0 {
		t.Errorf("the state still records engines after StopEngines: %v", st.Engines)
	}
	if left := ourEngines(n.state); len(left) != 0 {
		t.Errorf("engines still running after StopEngines: %v", describe(left))
	}
}

func notifiedReady(notices []string) int {
	n := 0
	for _, s := range notices {
		if s == "READY=1" {
			n++
		}
	}
	return n
}

// TestNewRequiresOptions: New refuses options without what it needs.
func TestNewRequiresOptions(t *testing.T) {
	t.Parallel()
	n := newNode(t, 1)
	for _, tc := range []struct {
		name string
		edit func(*daemon.Options)
	}{
		{"no config dir", func(o *daemon.Options) { o.ConfigDir = "" }},
		{"no state dir", func(o *daemon.Options) { o.StateDir = "" }},
		{"no node", func(o *daemon.Options) { o.Node = "" }},
		{"no GPUs", func(o *daemon.Options) { o.GPUs = nil }},
		{"no engines", func(o *daemon.Options) { o.Engines = nil }},
	} {
		opts := n.options()
		tc.edit(&opts)
		if _, err := daemon.New(opts); err == nil {
			t.Errorf("%s: New succeeded", tc.name)
		}
	}
}

// TestShutdownDuringPassKeepsEngines: Run's context ends while a pass
// observes the node (here: while it waits on the health check of an engine
// that is SIGSTOPped, which answers nothing for its 2 s timeout). The health
// checks cut short by the cancellation must not read as failing engines:
// Run returns with every engine still running and no failure recorded.
// (Before the fix, the plan restarted every Ready engine and the ops,
// whose stops run under context.WithoutCancel, killed them after
// recording a health_failed failure each.)
func TestShutdownDuringPassKeepsEngines(t *testing.T) {
	t.Parallel()
	n := newNode(t, 2)
	n.writeConfig(pool{id: "a"}, pool{id: "b", devices: []int{1}})
	r := n.start()
	pids := r.waitReady("a", "b")
	r.settle()

	if err := syscall.Kill(pids["a"], syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = syscall.Kill(pids["a"], syscall.SIGCONT) })
	r.d.Reload()
	// Once a ping goes unanswered the loop is in a pass (the reload's, or
	// one before it), whose observation waits up to 2 s on a's health
	// check: end Run then. (A failure guard, not a timing assertion: only a
	// stall of the test of more than those 2 s could let the check time out
	// first and a be restarted, rightly, as unresponsive.)
	r.waitFor("the loop to be busy observing", func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
		defer cancel()
		return r.d.Ping(ctx) != nil
	})
	r.shutdown()
	if err := syscall.Kill(pids["a"], syscall.SIGCONT); err != nil {
		t.Errorf("SIGCONT a: %v", err)
	}
	st := n.loadState()
	for id, pid := range pids {
		if !alive(pid) || st.Engines[id].PID != pid {
			t.Errorf("pool %s: engine pid %d (alive %v, recorded pid %d) was stopped by a daemon that was shutting down",
				id, pid, alive(pid), st.Engines[id].PID)
		}
		if rec := st.Pools[id]; rec.LastError != nil {
			t.Errorf("pool %s: a failure was recorded during the shutdown: %s: %s", id, rec.LastError.Class, rec.LastError.Message)
		}
	}
}
