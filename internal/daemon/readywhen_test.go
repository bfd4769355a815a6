package daemon_test

import (
	"slices"
	"strings"
	"testing"

	"github.com/poolmanagerd/pool-managerd/drivers/gpu/sim"
	"github.com/poolmanagerd/pool-managerd/internal/api"
	"github.com/poolmanagerd/pool-managerd/internal/daemon"
	"github.com/poolmanagerd/pool-managerd/internal/executor"
	"github.com/poolmanagerd/pool-managerd/internal/observe"
	"github.com/poolmanagerd/pool-managerd/reconcile"
	"github.com/poolmanagerd/pool-managerd/reconcile/restart"
)

// TestReadyWhenPools: with ReadyPools the daemon is not ready, and sends no
// READY=1, while a pool preloads; a pool given up (its breaker open) does
// not hold it back; once the last pool is
// Ready it becomes ready, once.
func TestReadyWhenPools(t *testing.T) {
	t.Parallel()
	n := newNode(t, 2)
	ok := pool{id: "ok"}
	slow := pool{id: "slow", devices: []int{1}, env: longLoad}
	broken := pool{id: "broken", devices: []int{1}, env: failLoad, restart: fastRestart + `, breaker: {failures: 1}`}
	n.writeConfig(ok, slow, broken)
	r := n.start(func(o *daemon.Options) { o.ReadyWhen = daemon.ReadyPools })

	r.waitReady("ok")
	r.waitPreloading("slow")
	r.waitPool("broken", "breaker open", func(p api.Pool) bool { return p.Phase == reconcile.Failed })
	r.waitFor("a STATUS that waits for slow alone", func() bool {
		return slices.ContainsFunc(r.notified(), func(s string) bool { return strings.HasSuffix(s, "; starting, waiting for slow") })
	})
	if r.d.Ready() {
		t.Error("Ready() true while pool slow preloads")
	}
	if got := notifiedReady(r.notified()); got != 0 {
		t.Errorf("READY=1 notified %d times while pool slow preloads (notices: %q)", got, r.notified())
	}

	// slow loads quickly with its new spec: the daemon becomes ready.
	slow.env = nil
	n.writeConfig(ok, slow, broken)
	r.waitReady("slow")
	r.waitFor("Ready()", r.d.Ready)
	r.waitFor("READY=1", func() bool { return notifiedReady(r.notified()) == 1 })
	r.settle()
	if got := notifiedReady(r.notified()); got != 1 {
		t.Errorf("READY=1 notified %d times, want once (notices: %q)", got, r.notified())
	}
}

// TestReadyWhenStarted: by default the daemon is ready after the first
// reconcile, while a pool still preloads.
func TestReadyWhenStarted(t *testing.T) {
	t.Parallel()
	n := newNode(t, 1)
	n.writeConfig(pool{id: "slow", env: longLoad})
	r := n.start()
	r.waitPreloading("slow")
	r.waitFor("Ready()", r.d.Ready)
	r.waitFor("READY=1", func() bool { return notifiedReady(r.notified()) == 1 })
}

func TestParseReadyWhen(t *testing.T) {
	for _, tc := range []struct {
		in      string
		want    daemon.ReadyWhen
		wantErr bool
	}{
		{"started", daemon.ReadyStarted, false},
		{"pools", daemon.ReadyPools, false},
		{"", "", true},
		{"Pools", "", true},
		{"all", "", true},
	} {
		got, err := daemon.ParseReadyWhen(tc.in)
		if got != tc.want || (err != nil) != tc.wantErr {
			t.Errorf("ParseReadyWhen(%q) = %q, %v; want %q, error %v", tc.in, got, err, tc.want, tc.wantErr)
		}
	}
}

// TestReadyWhenPoolsBlockedForRAM: a pool the plan blocks for host RAM
// (insufficient_ram, a reason) is given up for --ready-when pools: the
// daemon becomes ready with it Unready, and its engine is never spawned.
func TestReadyWhenPoolsBlockedForRAM(t *testing.T) {
	t.Parallel()
	n := newNode(t, 1)
	if err := sim.SetHostRAM(n.sim, 8<<30); err != nil {
		t.Fatal(err)
	}
	ok := pool{id: "ok", ram: "2Gi"}
	big := pool{id: "big", ram: "20Gi"}
	n.writeConfig(ok, big)
	r := n.start(func(o *daemon.Options) {
		o.ReadyWhen = daemon.ReadyPools
		o.Host = observe.SimHost(n.sim)
	})

	r.waitReady("ok")
	p := r.waitPool("big", "blocked for host RAM", func(p api.Pool) bool {
		return p.LastError != nil && p.LastError.Class == restart.ClassInsufficientRAM
	})
	// What is available depends on whether ok's engine runs yet: not checked.
	if msg := p.LastError.Message; p.Phase == reconcile.Ready || !strings.Contains(msg, "needs 20.0 GiB (the pool's ram)") || !strings.HasSuffix(msg, " available of 8.0 GiB") {
		t.Errorf("pool big: phase %s, last error %+v", p.Phase, p.LastError)
	}
	r.waitFor("Ready()", r.d.Ready)
	r.waitFor("READY=1", func() bool { return notifiedReady(r.notified()) == 1 })
	if got := r.stepCount("big", executor.StepSpawned); got != 0 {
		t.Errorf("pool big's engine was spawned %d times", got)
	}
	// The metrics show the simulated host, and each pool's need.
	wantMetric(t, r.reg, "pool_managerd_host_memory_total_bytes", nil, 8<<30)
	wantMetric(t, r.reg, "pool_managerd_pool_ram_need_bytes", map[string]string{"pool": "big"}, 20<<30)
	wantMetric(t, r.reg, "pool_managerd_pool_ram_need_bytes", map[string]string{"pool": "ok"}, 2<<30)
}
