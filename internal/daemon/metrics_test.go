//go:build linux

package daemon_test

import (
	"testing"

	"github.com/poolmanagerd/pool-managerd/internal/api"
	"github.com/poolmanagerd/pool-managerd/reconcile/restart"
)

// failLoad makes every preload fail (llama-server exits 1 while loading).
var failLoad = map[string]string{"FAKE_ENGINE_FAIL_LOAD": "1"}

// TestMetricsAfterEvents reads the metrics from the registry given in
// Options.Registry once three pools have settled:
//   - ok: one successful preload; Ready, phase Ready, no backoff, breaker closed;
//   - flaky: every preload fails and the breaker opens at the second
//     failure: two failed preloads (reason exited), one restart, breaker
//     open, phase Failed;
//   - waiting: its one preload failed and its next try is ten minutes away:
//     one failed preload, no restart, phase Unready, backoff_seconds > 0;
//   - every counter series a pool or GPU can have (but driver_events_total,
//     whose xid label is open-ended) is there at 0 before its first event.
func TestMetricsAfterEvents(t *testing.T) {
	t.Parallel()
	n := newNode(t, 1)
	n.writeConfig(
		pool{id: "ok"},
		pool{id: "flaky", env: failLoad, restart: fastRestart + `, breaker: {failures: 2}`},
		pool{id: "waiting", env: failLoad, restart: `initialBackoff: "10m", maxBackoff: "10m", jitter: 0`},
	)
	r := n.start()
	r.waitReady("ok")
	r.waitPool("flaky", "breaker open", func(p api.Pool) bool { return p.Breaker == api.BreakerOpen })
	w := r.waitPool("waiting", "failed, waiting for its backoff", func(p api.Pool) bool { return p.LastError != nil && !p.NextRetry.IsZero() })
	if w.Restarts != 0 {
		t.Errorf("%v, want no restart yet", poolString(w))
	}
	r.waitMetric("pool_managerd_preload_total", l("pool", "ok", "engine", "llamacpp", "outcome", "success", "reason", ""), 1)
	r.waitMetric("pool_managerd_pool_phase", l("pool", "flaky", "phase", "Failed"), 1)
	r.waitMetric("pool_managerd_pool_phase", l("pool", "waiting", "phase", "Unready"), 1)
	r.settle()

	const engine = "llamacpp"
	g := r.reg
	// ok
	wantMetric(t, g, "pool_managerd_preload_total", l("pool", "ok", "engine", engine, "outcome", "success", "reason", ""), 1)
	wantMetric(t, g, "pool_managerd_preload_duration_seconds", l("pool", "ok"), 1)
	wantMetric(t, g, "pool_managerd_pool_ready", l("pool", "ok"), 1)
	wantMetric(t, g, "pool_managerd_pool_phase", l("pool", "ok", "phase", "Ready"), 1)
	wantMetric(t, g, "pool_managerd_pool_phase", l("pool", "ok", "phase", "Preloading"), 0)
	wantMetric(t, g, "pool_managerd_backoff_seconds", l("pool", "ok"), 0)
	wantMetric(t, g, "pool_managerd_circuit_state", l("pool", "ok"), 0)
	// flaky
	wantMetric(t, g, "pool_managerd_preload_total", l("pool", "flaky", "engine", engine, "outcome", "failure", "reason", restart.ClassExited), 2)
	wantMetric(t, g, "pool_managerd_restarts_total", l("pool", "flaky", "reason", restart.ClassExited), 1)
	wantMetric(t, g, "pool_managerd_circuit_state", l("pool", "flaky"), 1)
	wantMetric(t, g, "pool_managerd_pool_ready", l("pool", "flaky"), 0)
	// Every counter series a pool can have is there from the start, at 0
	// until its first event, so that increase() sees that event.
	wantMetric(t, g, "pool_managerd_preload_total", l("pool", "flaky", "engine", engine, "outcome", "success", "reason", ""), 0)
	// waiting
	wantMetric(t, g, "pool_managerd_preload_total", l("pool", "waiting", "engine", engine, "outcome", "failure", "reason", restart.ClassExited), 1)
	wantMetric(t, g, "pool_managerd_pool_ready", l("pool", "waiting"), 0)
	if v, ok := metric(t, g, "pool_managerd_backoff_seconds", l("pool", "waiting")); !ok || v <= 0 || v > 600 {
		t.Errorf("backoff_seconds{pool=waiting} = %v (found %v), want in (0, 600]", v, ok)
	}
	for _, pool := range []string{"ok", "waiting"} {
		for _, class := range restart.Classes {
			wantMetric(t, g, "pool_managerd_restarts_total", l("pool", pool, "reason", class), 0)
		}
		wantMetric(t, g, "pool_managerd_engine_kills_total", l("pool", pool), 0)
	}
	for _, class := range restart.Classes {
		wantMetric(t, g, "pool_managerd_preload_total", l("pool", "ok", "engine", engine, "outcome", "failure", "reason", class), 0)
	}
	wantMetric(t, g, "pool_managerd_driver_errors_total", l("gpu", "0"), 0)
	// the daemon
	wantMetric(t, g, "pool_managerd_config_valid", nil, 1)
	if v, ok := metric(t, g, "pool_managerd_reconcile_duration_seconds", nil); !ok || v < 1 {
		t.Errorf("reconcile_duration_seconds count %v (found %v), want at least one pass", v, ok)
	}
	if v, ok := metric(t, g, "pool_managerd_gpu_memory_used_bytes", l("gpu", "0")); !ok || v < 1<<30 {
		t.Errorf("gpu_memory_used_bytes{gpu=0} = %v (found %v), want at least pool ok's 1 GiB", v, ok)
	}
}
