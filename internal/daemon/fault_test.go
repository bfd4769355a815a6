//go:build linux

package daemon_test

import (
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/poolmanagerd/pool-managerd/drivers/gpu/sim"
	"github.com/poolmanagerd/pool-managerd/internal/api"
	"github.com/poolmanagerd/pool-managerd/reconcile/restart"
)

// TestDriverEventFaultsOnlyPoolsOnThatGPU: a critical Xid on GPU 0 faults
// the pools on GPU 0 (x1, x2; and xy, which spans GPUs 0 and 1): each is
// stopped and started again after the driver-error backoff, with the last
// error class driver_reset and one restart; pool y on GPU 1 is untouched.
// driver_events_total counts the event under its GPU and Xid, and
// restarts_total the restarts under driver_reset. An application Xid (13),
// injected before it on the same GPU, is ignored: not counted, no pool
// touched.
func TestDriverEventFaultsOnlyPoolsOnThatGPU(t *testing.T) {
	t.Parallel()
	n := newNode(t, 2)
	n.writeConfig(pool{id: "x1"}, pool{id: "x2"}, pool{id: "xy", devices: []int{0, 1}}, pool{id: "y", devices: []int{1}})
	r := n.start()
	pids := r.waitReady("x1", "x2", "xy", "y")
	faulted := []string{"x1", "x2", "xy"}

	// Both lines are read in order by one event stream: once the critical
	// one is counted, the application one was seen (and dropped) before it.
	if err := sim.InjectXid(n.sim, 0, 13); err != nil {
		t.Fatal(err)
	}
	if err := sim.InjectXid(n.sim, 0, 48); err != nil {
		t.Fatal(err)
	}
	r.waitMetric("pool_managerd_driver_events_total", l("gpu", "0", "xid", "48"), 1)
	if c, err := testutil.GatherAndCount(r.reg, "pool_managerd_driver_events_total"); err != nil || c != 1 {
		t.Errorf("driver_events_total has %d series (%v), want only the Xid 48 one", c, err)
	}

	for _, id := range faulted {
		p := r.waitReadyWhere(id, "Ready again after the driver event", func(p api.Pool) bool { return p.PID != pids[id] })
		if p.Restarts != 1 || p.LastError == nil || p.LastError.Class != restart.ClassDriverReset {
			t.Errorf("%v, want 1 restart after a %s error", poolString(p), restart.ClassDriverReset)
		} else if !strings.Contains(p.LastError.Message, "Xid 48") {
			t.Errorf("pool %s: last error %q does not name the Xid", id, p.LastError.Message)
		}
		if alive(pids[id]) {
			t.Errorf("pool %s: the engine on the faulted GPU, pid %d, is still alive", id, pids[id])
		}
		wantMetric(t, r.reg, "pool_managerd_restarts_total", l("pool", id, "reason", restart.ClassDriverReset), 1)
	}
	r.settle()
	if p := r.pool("y"); !p.Ready || p.PID != pids["y"] || p.Restarts != 0 || p.LastError != nil {
		t.Errorf("pool y on the other GPU: %v, want untouched: Ready in pid %d, no restart, no error", poolString(p), pids["y"])
	}
	wantAllZero(t, r.reg, "pool_managerd_restarts_total", l("pool", "y"), "no event touched pool y")
}
