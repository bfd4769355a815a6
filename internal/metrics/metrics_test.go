package metrics

import (
	"errors"
	"fmt"
	"maps"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/poolmanagerd/pool-managerd/drivers/gpu"
	"github.com/poolmanagerd/pool-managerd/reconcile"
	"github.com/poolmanagerd/pool-managerd/reconcile/restart"
)

// node is a snapshot with two pools and two GPUs, one of them lost.
var node = Snapshot{
	Pools: []PoolSnapshot{
		{Pool: "chat", Phase: string(reconcile.Ready), Ready: true, Circuit: int(restart.Closed.Metric())},
		{Pool: "embed", Phase: string(reconcile.Unready), Backoff: 2500 * time.Millisecond, Circuit: int(restart.HalfOpen.Metric())},
	},
	GPUs: []gpu.Device{
		{Index: 0, UUID: "GPU-aaaa", MemoryTotal: 24 << 30, MemoryUsed: 20 << 30, MemoryFree: 4 << 30},
		{Index: 1, UUID: "GPU-bbbb", Lost: true},
	},
	HostTotal:     64 << 30,
	HostAvailable: 48 << 30,
}

func newMetrics(t *testing.T, s Snapshot) (*Metrics, *prometheus.Registry) {
	t.Helper()
	reg := prometheus.NewPedanticRegistry()
	m, err := New(reg, func() Snapshot { return s })
	if err != nil {
		t.Fatal(err)
	}
	return m, reg
}

// events feeds m one of each event.
func events(m *Metrics) {
	m.PreloadSucceeded("chat", "llamacpp", 42*time.Second)
	m.PreloadFailed("embed", "vllm", restart.ClassHealthTimeout)
	m.PreloadFailed("embed", "vllm", restart.ClassHealthTimeout)
	m.Restarted("embed", restart.ClassHealthTimeout)
	m.DriverEvent(gpu.Event{Kind: gpu.EventXid, Index: 0, UUID: "GPU-aaaa", Xid: 79})
	m.DriverEvent(gpu.Event{Kind: gpu.EventLost, Index: 1, UUID: "GPU-bbbb"})
	m.ReconcileDone(30 * time.Millisecond)
	m.ConfigLoaded(time.Unix(1700000000, 0), nil)
	m.FetchReceived(1 << 20)
	m.FetchFinished(time.Minute, "")
}

func TestLint(t *testing.T) {
	m, reg := newMetrics(t, node)
	events(m)
	problems, err := testutil.CollectAndLint(m)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		t.Errorf("%s: %s", p.Metric, p.Text)
	}
	problems, err = testutil.GatherAndLint(reg)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		t.Errorf("registry: %s: %s", p.Metric, p.Text)
	}
}

func TestNew(t *testing.T) {
	snap := func() Snapshot { return Snapshot{} }
	reg := prometheus.NewRegistry()
	if _, err := New(reg, snap); err != nil {
		t.Fatal(err)
	}
	if _, err := New(reg, snap); err == nil {
		t.Error("second New on the same registry: no error")
	}
	if _, err := New(prometheus.NewRegistry(), nil); err == nil {
		t.Error("New with a nil snapshot: no error")
	}
	if _, err := New(nil, snap); err == nil {
		t.Error("New with a nil registerer: no error")
	}
}

func TestNilMetrics(t *testing.T) {
	var m *Metrics
	events(m)
	m.Known(map[string]string{"chat": "llamacpp"}, []int{0})
	m.ForgetPool("chat")
}

const (
	poolHeader = `
# HELP pool_managerd_pool_ready Whether the pool's engine is Ready and serving (1) or not (0).
# TYPE pool_managerd_pool_ready gauge
`
	phaseHeader = `
# HELP pool_managerd_pool_phase The pool's lifecycle phase: 1 for the phase it is in, 0 for the others.
# TYPE pool_managerd_pool_phase gauge
`
	backoffHeader = `
# HELP pool_managerd_backoff_seconds Restart backoff delay in seconds before the pool's next start; 0 when no restart is waiting.
# TYPE pool_managerd_backoff_seconds gauge
`
	circuitHeader = `
# HELP pool_managerd_circuit_state State of the pool's circuit breaker: 0 closed, 1 open, 2 half-open.
# TYPE pool_managerd_circuit_state gauge
`
	gpuHeader = `
# HELP pool_managerd_gpu_memory_total_bytes Total memory of the GPU in bytes, as the driver reports it.
# TYPE pool_managerd_gpu_memory_total_bytes gauge
`
	hostHeader = `
# HELP pool_managerd_host_memory_total_bytes Total memory of the host in bytes (MemTotal of /proc/meminfo).
# TYPE pool_managerd_host_memory_total_bytes gauge
`
)

func TestSnapshot(t *testing.T) {
	tests := []struct {
		name     string
		snapshot Snapshot
		metrics  []string
		want     string
	}{{
		name:     "empty",
		snapshot: Snapshot{},
		metrics: []string{
			"pool_managerd_pool_ready", "pool_managerd_pool_phase",
			"pool_managerd_gpu_memory_total_bytes", "pool_managerd_host_memory_total_bytes",
		},
		want: "",
	}, {
		name:     "pools",
		snapshot: node,
		metrics: []string{
			"pool_managerd_pool_ready", "pool_managerd_backoff_seconds", "pool_managerd_circuit_state",
		},
		want: poolHeader + `
pool_managerd_pool_ready{pool="chat"} 1
pool_managerd_pool_ready{pool="embed"} 0
` + backoffHeader + `
pool_managerd_backoff_seconds{pool="chat"} 0
pool_managerd_backoff_seconds{pool="embed"} 2.5
` + circuitHeader + `
pool_managerd_circuit_state{pool="chat"} 0
pool_managerd_circuit_state{pool="embed"} 2
`,
	}, {
		name:     "phases",
		snapshot: node,
		metrics:  []string{"pool_managerd_pool_phase"},
		want: phaseHeader + `
pool_managerd_pool_phase{phase="Draining",pool="chat"} 0
pool_managerd_pool_phase{phase="Failed",pool="chat"} 0
pool_managerd_pool_phase{phase="Fetching",pool="chat"} 0
pool_managerd_pool_phase{phase="Pending",pool="chat"} 0
pool_managerd_pool_phase{phase="Preloading",pool="chat"} 0
pool_managerd_pool_phase{phase="Ready",pool="chat"} 1
pool_managerd_pool_phase{phase="Stopped",pool="chat"} 0
pool_managerd_pool_phase{phase="Unready",pool="chat"} 0
pool_managerd_pool_phase{phase="Draining",pool="embed"} 0
pool_managerd_pool_phase{phase="Failed",pool="embed"} 0
pool_managerd_pool_phase{phase="Fetching",pool="embed"} 0
pool_managerd_pool_phase{phase="Pending",pool="embed"} 0
pool_managerd_pool_phase{phase="Preloading",pool="embed"} 0
pool_managerd_pool_phase{phase="Ready",pool="embed"} 0
pool_managerd_pool_phase{phase="Stopped",pool="embed"} 0
pool_managerd_pool_phase{phase="Unready",pool="embed"} 1
`,
	}, {
		name: "unknown phase",
		snapshot: Snapshot{Pools: []PoolSnapshot{
			{Pool: "chat", Phase: "Exploded", Circuit: int(restart.Open.Metric())},
		}},
		metrics: []string{"pool_managerd_pool_phase", "pool_managerd_circuit_state"},
		want: phaseHeader + `
pool_managerd_pool_phase{phase="Draining",pool="chat"} 0
pool_managerd_pool_phase{phase="Failed",pool="chat"} 0
pool_managerd_pool_phase{phase="Fetching",pool="chat"} 0
pool_managerd_pool_phase{phase="Pending",pool="chat"} 0
pool_managerd_pool_phase{phase="Preloading",pool="chat"} 0
pool_managerd_pool_phase{phase="Ready",pool="chat"} 0
pool_managerd_pool_phase{phase="Stopped",pool="chat"} 0
pool_managerd_pool_phase{phase="Unready",pool="chat"} 0
` + circuitHeader + `
pool_managerd_circuit_state{pool="chat"} 1
`,
	}, {
		name:     "memory",
		snapshot: node,
		metrics: []string{
			"pool_managerd_gpu_memory_total_bytes", "pool_managerd_gpu_memory_used_bytes",
			"pool_managerd_gpu_memory_free_bytes",
			"pool_managerd_host_memory_total_bytes", "pool_managerd_host_memory_available_bytes",
		},
		want: gpuHeader + `
pool_managerd_gpu_memory_total_bytes{gpu="0",uuid="GPU-aaaa"} 2.5769803776e+10
# HELP pool_managerd_gpu_memory_used_bytes Memory of the GPU in use, in bytes, by any process.
# TYPE pool_managerd_gpu_memory_used_bytes gauge
pool_managerd_gpu_memory_used_bytes{gpu="0",uuid="GPU-aaaa"} 2.147483648e+10
# HELP pool_managerd_gpu_memory_free_bytes Free memory of the GPU in bytes.
# TYPE pool_managerd_gpu_memory_free_bytes gauge
pool_managerd_gpu_memory_free_bytes{gpu="0",uuid="GPU-aaaa"} 4.294967296e+09
` + hostHeader + `
pool_managerd_host_memory_total_bytes 6.8719476736e+10
# HELP pool_managerd_host_memory_available_bytes Memory of the host available for new processes without swapping, in bytes (MemAvailable of /proc/meminfo).
# TYPE pool_managerd_host_memory_available_bytes gauge
pool_managerd_host_memory_available_bytes 5.1539607552e+10
`,
	}, {
		name:     "config from a plain directory outside Git",
		snapshot: Snapshot{},
		metrics: []string{"pool_managerd_config_revision_info", "pool_managerd_config_held_back", "pool_managerd_pools_pending_removal",
			"pool_managerd_git_fetch_ok", "pool_managerd_git_fetch_failures", "pool_managerd_git_last_success_timestamp_seconds"},
		want: heldBackHeader + `
pool_managerd_config_held_back 0
` + pendingHeader + `
pool_managerd_pools_pending_removal 0
`,
	}, {
		name: "config from Git, held back, a fetch failing",
		snapshot: Snapshot{Config: ConfigSnapshot{Revision: "0123abcd", Source: "https://git.example.com/pools.git", HeldBack: true, PendingRemovals: 2,
			Git: &GitSnapshot{Failures: 3, LastSuccess: time.Unix(1700000000, 0)}}},
		metrics: []string{"pool_managerd_config_revision_info", "pool_managerd_config_held_back", "pool_managerd_pools_pending_removal",
			"pool_managerd_git_fetch_ok", "pool_managerd_git_fetch_failures", "pool_managerd_git_last_success_timestamp_seconds"},
		want: revisionHeader + `
pool_managerd_config_revision_info{revision="0123abcd",source="https://git.example.com/pools.git"} 1
` + heldBackHeader + `
pool_managerd_config_held_back 1
` + pendingHeader + `
pool_managerd_pools_pending_removal 2
# HELP pool_managerd_git_fetch_ok Whether serve --git's last fetch worked (1) or failed (0); the last applied revision stays in force while it fails.
# TYPE pool_managerd_git_fetch_ok gauge
pool_managerd_git_fetch_ok 0
# HELP pool_managerd_git_fetch_failures Fetches of serve --git that failed in a row (retries back off); 0 after one works.
# TYPE pool_managerd_git_fetch_failures gauge
pool_managerd_git_fetch_failures 3
# HELP pool_managerd_git_last_success_timestamp_seconds Unix time in seconds of the last fetch of serve --git that worked; absent until one has.
# TYPE pool_managerd_git_last_success_timestamp_seconds gauge
pool_managerd_git_last_success_timestamp_seconds 1.7e+09
`,
	}, {
		name:     "a dirty work tree",
		snapshot: Snapshot{Config: ConfigSnapshot{Revision: "0123abcd", Source: "/etc/pool-managerd/config", Dirty: true}},
		metrics:  []string{"pool_managerd_config_revision_info"},
		want: revisionHeader + `
pool_managerd_config_revision_info{revision="0123abcd+dirty",source="/etc/pool-managerd/config"} 1
`,
	}, {
		name: "pool RAM need, where known",
		snapshot: Snapshot{Pools: []PoolSnapshot{
			{Pool: "chat", Phase: string(reconcile.Ready), Ready: true, RAMNeed: 20 << 30},
			{Pool: "embed", Phase: string(reconcile.Unready)},
		}},
		metrics: []string{"pool_managerd_pool_ram_need_bytes"},
		want: `# HELP pool_managerd_pool_ram_need_bytes The pool's host RAM need in bytes, checked against host_memory_available_bytes before its engine starts: its declared ram, or its engine's default estimate. Absent while unknown.
# TYPE pool_managerd_pool_ram_need_bytes gauge
pool_managerd_pool_ram_need_bytes{pool="chat"} 2.147483648e+10
`,
	}, {
		name:     "host memory unknown",
		snapshot: Snapshot{HostAvailable: 1 << 30},
		metrics:  []string{"pool_managerd_host_memory_total_bytes", "pool_managerd_host_memory_available_bytes"},
		want:     "",
	}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m, _ := newMetrics(t, tt.snapshot)
			if err := testutil.CollectAndCompare(m, strings.NewReader(tt.want), tt.metrics...); err != nil {
				t.Error(err)
			}
		})
	}
}

// TestSnapshotAtScrape checks that each scrape reads the snapshot anew.
func TestSnapshotAtScrape(t *testing.T) {
	phase := reconcile.Preloading
	m, err := New(prometheus.NewRegistry(), func() Snapshot {
		return Snapshot{Pools: []PoolSnapshot{{Pool: "chat", Phase: string(phase), Ready: phase == reconcile.Ready}}}
	})
	if err != nil {
		t.Fatal(err)
	}
	for _, phase = range []reconcile.Phase{reconcile.Preloading, reconcile.Ready} {
		want := poolHeader + `pool_managerd_pool_ready{pool="chat"} ` + map[bool]string{false: "0", true: "1"}[phase == reconcile.Ready] + "\n"
		if err := testutil.CollectAndCompare(m, strings.NewReader(want), "pool_managerd_pool_ready"); err != nil {
			t.Errorf("%s: %v", phase, err)
		}
	}
}

const eventsWant = `
# HELP pool_managerd_preload_total Engine preloads (spawn until Ready or failure) that ended, by pool, engine, outcome (success or failure) and reason (the error class of a failure, empty on success).
# TYPE pool_managerd_preload_total counter
pool_managerd_preload_total{engine="llamacpp",outcome="success",pool="chat",reason=""} 1
pool_managerd_preload_total{engine="vllm",outcome="failure",pool="embed",reason="health_timeout"} 2
# HELP pool_managerd_preload_duration_seconds Time in seconds from an engine's spawn to its pool being Ready, for successful preloads.
# TYPE pool_managerd_preload_duration_seconds histogram
pool_managerd_preload_duration_seconds_bucket{pool="chat",le="0.1"} 0
pool_managerd_preload_duration_seconds_bucket{pool="chat",le="0.25"} 0
pool_managerd_preload_duration_seconds_bucket{pool="chat",le="0.5"} 0
pool_managerd_preload_duration_seconds_bucket{pool="chat",le="1"} 0
pool_managerd_preload_duration_seconds_bucket{pool="chat",le="2.5"} 0
pool_managerd_preload_duration_seconds_bucket{pool="chat",le="5"} 0
pool_managerd_preload_duration_seconds_bucket{pool="chat",le="10"} 0
pool_managerd_preload_duration_seconds_bucket{pool="chat",le="20"} 0
pool_managerd_preload_duration_seconds_bucket{pool="chat",le="30"} 0
pool_managerd_preload_duration_seconds_bucket{pool="chat",le="60"} 1
pool_managerd_preload_duration_seconds_bucket{pool="chat",le="120"} 1
pool_managerd_preload_duration_seconds_bucket{pool="chat",le="300"} 1
pool_managerd_preload_duration_seconds_bucket{pool="chat",le="600"} 1
pool_managerd_preload_duration_seconds_bucket{pool="chat",le="900"} 1
pool_managerd_preload_duration_seconds_bucket{pool="chat",le="1200"} 1
pool_managerd_preload_duration_seconds_bucket{pool="chat",le="1800"} 1
pool_managerd_preload_duration_seconds_bucket{pool="chat",le="+Inf"} 1
pool_managerd_preload_duration_seconds_sum{pool="chat"} 42
pool_managerd_preload_duration_seconds_count{pool="chat"} 1
# HELP pool_managerd_restarts_total Engine restarts after a failure, by pool and reason (the error class of the failure).
# TYPE pool_managerd_restarts_total counter
pool_managerd_restarts_total{pool="embed",reason="health_timeout"} 1
# HELP pool_managerd_driver_events_total Critical GPU driver events, by GPU index and Xid error code ("lost" for a GPU that fell off the bus or needs a reset).
# TYPE pool_managerd_driver_events_total counter
pool_managerd_driver_events_total{gpu="0",xid="79"} 1
pool_managerd_driver_events_total{gpu="1",xid="lost"} 1
# HELP pool_managerd_driver_errors_total Critical GPU driver events (Xid errors and lost GPUs), by GPU index: driver_events_total summed over xid, exported at 0 for every GPU from the start.
# TYPE pool_managerd_driver_errors_total counter
pool_managerd_driver_errors_total{gpu="0"} 1
pool_managerd_driver_errors_total{gpu="1"} 1
# HELP pool_managerd_reconcile_duration_seconds Time in seconds one reconcile pass (observe, plan, apply) took.
# TYPE pool_managerd_reconcile_duration_seconds histogram
pool_managerd_reconcile_duration_seconds_bucket{le="0.001"} 0
pool_managerd_reconcile_duration_seconds_bucket{le="0.0025"} 0
pool_managerd_reconcile_duration_seconds_bucket{le="0.005"} 0
pool_managerd_reconcile_duration_seconds_bucket{le="0.01"} 0
pool_managerd_reconcile_duration_seconds_bucket{le="0.025"} 0
pool_managerd_reconcile_duration_seconds_bucket{le="0.05"} 1
pool_managerd_reconcile_duration_seconds_bucket{le="0.1"} 1
pool_managerd_reconcile_duration_seconds_bucket{le="0.25"} 1
pool_managerd_reconcile_duration_seconds_bucket{le="0.5"} 1
pool_managerd_reconcile_duration_seconds_bucket{le="1"} 1
pool_managerd_reconcile_duration_seconds_bucket{le="2.5"} 1
pool_managerd_reconcile_duration_seconds_bucket{le="5"} 1
pool_managerd_reconcile_duration_seconds_bucket{le="10"} 1
pool_managerd_reconcile_duration_seconds_bucket{le="30"} 1
pool_managerd_reconcile_duration_seconds_bucket{le="60"} 1
pool_managerd_reconcile_duration_seconds_bucket{le="120"} 1
pool_managerd_reconcile_duration_seconds_bucket{le="300"} 1
pool_managerd_reconcile_duration_seconds_bucket{le="+Inf"} 1
pool_managerd_reconcile_duration_seconds_sum 0.03
pool_managerd_reconcile_duration_seconds_count 1
`

var eventMetrics = []string{
	"pool_managerd_preload_total", "pool_managerd_preload_duration_seconds",
	"pool_managerd_restarts_total", "pool_managerd_driver_events_total",
	"pool_managerd_driver_errors_total", "pool_managerd_reconcile_duration_seconds",
}

func TestEvents(t *testing.T) {
	m, reg := newMetrics(t, node)
	events(m)
	if err := testutil.CollectAndCompare(m, strings.NewReader(eventsWant), eventMetrics...); err != nil {
		t.Error(err)
	}
	// The registry serves the same.
	if err := testutil.GatherAndCompare(reg, strings.NewReader(eventsWant), eventMetrics...); err != nil {
		t.Error(err)
	}
}

const configHeader = `
# HELP pool_managerd_config_valid Whether the last attempt to load the config succeeded (1) or failed (0); after a failure the last good config stays in force.
# TYPE pool_managerd_config_valid gauge
pool_managerd_config_valid %s
# HELP pool_managerd_config_last_load_timestamp_seconds Unix time in seconds of the last successful config load (the config in force).
# TYPE pool_managerd_config_last_load_timestamp_seconds gauge
pool_managerd_config_last_load_timestamp_seconds %s
`

func TestConfigLoaded(t *testing.T) {
	type load struct {
		at  time.Time
		err error // heldBack: loaded, not applied (ConfigHeldBack)
	}
	heldBack := errors.New("held back")
	bad := errors.New("pools/chat.cue: model: incomplete value")
	tests := []struct {
		name             string
		loads            []load
		valid, timestamp string
	}{
		{"never loaded", nil, "0", "0"},
		{"good", []load{{time.Unix(1700000000, 500e6), nil}}, "1", "1.7000000005e+09"},
		{"bad first", []load{{time.Unix(1700000000, 0), bad}}, "0", "0"},
		{"good then bad keeps the good time", []load{
			{time.Unix(1700000000, 0), nil},
			{time.Unix(1700000100, 0), bad},
		}, "0", "1.7e+09"},
		{"bad then good", []load{
			{time.Unix(1700000000, 0), bad},
			{time.Unix(1700000100, 0), nil},
		}, "1", "1.7000001e+09"},
		{"bad then held back: valid, the time of the config in force", []load{
			{time.Unix(1700000000, 0), nil},
			{time.Unix(1700000100, 0), bad},
			{time.Unix(1700000200, 0), heldBack},
		}, "1", "1.7e+09"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m, _ := newMetrics(t, Snapshot{})
			for _, l := range tt.loads {
				if l.err == heldBack {
					m.ConfigHeldBack()
					continue
				}
				m.ConfigLoaded(l.at, l.err)
			}
			want := fmt.Sprintf(configHeader, tt.valid, tt.timestamp)
			if err := testutil.CollectAndCompare(m, strings.NewReader(want),
				"pool_managerd_config_valid", "pool_managerd_config_last_load_timestamp_seconds"); err != nil {
				t.Error(err)
			}
		})
	}
}

func TestForgetPool(t *testing.T) {
	m, _ := newMetrics(t, Snapshot{})
	events(m)
	m.Restarted("chat", restart.ClassExited)

	m.ForgetPool("embed")
	want := `
# HELP pool_managerd_preload_total Engine preloads (spawn until Ready or failure) that ended, by pool, engine, outcome (success or failure) and reason (the error class of a failure, empty on success).
# TYPE pool_managerd_preload_total counter
pool_managerd_preload_total{engine="llamacpp",outcome="success",pool="chat",reason=""} 1
# HELP pool_managerd_restarts_total Engine restarts after a failure, by pool and reason (the error class of the failure).
# TYPE pool_managerd_restarts_total counter
pool_managerd_restarts_total{pool="chat",reason="exited"} 1
`
	names := []string{"pool_managerd_preload_total", "pool_managerd_restarts_total"}
	if err := testutil.CollectAndCompare(m, strings.NewReader(want), names...); err != nil {
		t.Error(err)
	}

	m.ForgetPool("chat")
	names = append(names, "pool_managerd_preload_duration_seconds")
	if n := testutil.CollectAndCount(m, names...); n != 0 {
		t.Errorf("after forgetting every pool, %d pool series are left", n)
	}
	// Series that are not a pool's stay.
	if n := testutil.CollectAndCount(m, "pool_managerd_driver_events_total", "pool_managerd_driver_errors_total", "pool_managerd_reconcile_duration_seconds"); n != 5 {
		t.Errorf("driver and reconcile series: got %d, want 5", n)
	}
	// A forgotten pool counts from zero when it comes back.
	m.Restarted("chat", restart.ClassExited)
	if got := testutil.ToFloat64(m.restarts.WithLabelValues("chat", restart.ClassExited)); got != 1 {
		t.Errorf("restarts of a returning pool: got %v, want 1", got)
	}
}

const revisionHeader = `
# HELP pool_managerd_config_revision_info The revision of the config in force: always 1, with the commit as the revision label (+dirty when the config directory's work tree has uncommitted changes) and where it came from as source. Absent for a plain directory outside Git.
# TYPE pool_managerd_config_revision_info gauge`

const heldBackHeader = `
# HELP pool_managerd_config_held_back Whether the last config that loaded is held back (1): it leaves the node no pools while engines run, and serve --allow-empty is not set; the engines keep running.
# TYPE pool_managerd_config_held_back gauge`

const pendingHeader = `
# HELP pool_managerd_pools_pending_removal Pools that left the config and keep running until their removal settles (serve --removal-settle).
# TYPE pool_managerd_pools_pending_removal gauge`

// series returns the value of each series of the metric name that m
// collects, keyed by its labels as name="value" pairs joined by commas, in
// label name order.
func series(t *testing.T, m *Metrics, name string) map[string]float64 {
	t.Helper()
	reg := prometheus.NewPedanticRegistry()
	if err := reg.Register(m); err != nil {
		t.Fatal(err)
	}
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]float64{}
	for _, f := range families {
		if f.GetName() != name {
			continue
		}
		for _, s := range f.GetMetric() {
			var labels []string
			for _, l := range s.GetLabel() {
				labels = append(labels, l.GetName()+"="+strconv.Quote(l.GetValue()))
			}
			out[strings.Join(labels, ",")] = s.GetCounter().GetValue()
		}
	}
	return out
}

func TestKnown(t *testing.T) {
	m, _ := newMetrics(t, Snapshot{})
	m.Known(map[string]string{"chat": "llamacpp", "embed": "vllm"}, []int{0, 1})

	restarts := series(t, m, "pool_managerd_restarts_total")
	preloads := series(t, m, "pool_managerd_preload_total")
	for _, pool := range []string{"chat", "embed"} {
		engine := map[string]string{"chat": "llamacpp", "embed": "vllm"}[pool]
		for _, class := range restart.Classes {
			key := fmt.Sprintf("pool=%q,reason=%q", pool, class)
			if v, ok := restarts[key]; !ok || v != 0 {
				t.Errorf("restarts_total{%s}: got %v (present %v), want 0", key, v, ok)
			}
			key = fmt.Sprintf("engine=%q,outcome=\"failure\",pool=%q,reason=%q", engine, pool, class)
			if v, ok := preloads[key]; !ok || v != 0 {
				t.Errorf("preload_total{%s}: got %v (present %v), want 0", key, v, ok)
			}
		}
		key := fmt.Sprintf("engine=%q,outcome=\"success\",pool=%q,reason=\"\"", engine, pool)
		if v, ok := preloads[key]; !ok || v != 0 {
			t.Errorf("preload_total{%s}: got %v (present %v), want 0", key, v, ok)
		}
	}
	if want := 2 * len(restart.Classes); len(restarts) != want {
		t.Errorf("restarts_total: %d series, want %d", len(restarts), want)
	}
	if want := 2 * (len(restart.Classes) + 1); len(preloads) != want {
		t.Errorf("preload_total: %d series, want %d", len(preloads), want)
	}
	if got, want := series(t, m, "pool_managerd_engine_kills_total"), map[string]float64{`pool="chat"`: 0, `pool="embed"`: 0}; !maps.Equal(got, want) {
		t.Errorf("engine_kills_total: got %v, want %v", got, want)
	}
	if got, want := series(t, m, "pool_managerd_driver_errors_total"), map[string]float64{`gpu="0"`: 0, `gpu="1"`: 0}; !maps.Equal(got, want) {
		t.Errorf("driver_errors_total: got %v, want %v", got, want)
	}
	if n := len(series(t, m, "pool_managerd_driver_events_total")); n != 0 {
		t.Errorf("driver_events_total: %d series before any event, want none (its xid label is open-ended)", n)
	}

	// Events count from the 0 the series started at, and a later Known
	// keeps what they counted.
	m.Restarted("chat", restart.ClassExited)
	m.DriverEvent(gpu.Event{Kind: gpu.EventXid, Index: 1, Xid: 79})
	m.Known(map[string]string{"chat": "llamacpp", "embed": "vllm"}, []int{0, 1})
	if got := series(t, m, "pool_managerd_restarts_total")[`pool="chat",reason="exited"`]; got != 1 {
		t.Errorf("restarts_total{chat, exited} after one restart: got %v, want 1", got)
	}
	if got, want := series(t, m, "pool_managerd_driver_errors_total"), map[string]float64{`gpu="0"`: 0, `gpu="1"`: 1}; !maps.Equal(got, want) {
		t.Errorf("driver_errors_total after one Xid: got %v, want %v", got, want)
	}

	// A pool whose engine changed has the new engine's preload series only.
	m.Known(map[string]string{"chat": "llamacpp", "embed": "tgi"}, nil)
	for key := range series(t, m, "pool_managerd_preload_total") {
		if strings.Contains(key, `engine="vllm"`) {
			t.Errorf("preload_total{%s} left after embed moved to tgi", key)
		}
	}
	if n := len(series(t, m, "pool_managerd_preload_total")); n != 2*(len(restart.Classes)+1) {
		t.Errorf("preload_total after the engine change: %d series, want %d", n, 2*(len(restart.Classes)+1))
	}

	// A pool that leaves the config loses every series, and comes back at 0.
	m.ForgetPool("chat")
	for _, name := range []string{"pool_managerd_restarts_total", "pool_managerd_preload_total", "pool_managerd_engine_kills_total"} {
		for key := range series(t, m, name) {
			if strings.Contains(key, `pool="chat"`) {
				t.Errorf("%s{%s} left after the pool was forgotten", name, key)
			}
		}
	}
	m.Known(map[string]string{"chat": "llamacpp"}, nil)
	if v, ok := series(t, m, "pool_managerd_restarts_total")[`pool="chat",reason="exited"`]; !ok || v != 0 {
		t.Errorf("restarts_total{chat, exited} of a returning pool: got %v (present %v), want 0", v, ok)
	}
}

func TestBuildInfo(t *testing.T) {
	tests := []struct {
		name, version, goVersion, revision, want string
	}{
		{"stamped", "v1.2.0", "go1.24.1", "0123abcd", `pool_managerd_build_info{goversion="go1.24.1",revision="0123abcd",version="v1.2.0"} 1`},
		{"no revision recorded", "devel", "go1.24.1", "", `pool_managerd_build_info{goversion="go1.24.1",revision="",version="devel"} 1`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			reg := prometheus.NewPedanticRegistry()
			if err := reg.Register(NewBuildInfo(tt.version, tt.goVersion, tt.revision)); err != nil {
				t.Fatal(err)
			}
			want := `
# HELP pool_managerd_build_info The build of pool-managerd that runs: always 1, with its version, the Go version it was built with and the commit it was built from (empty when unknown) as labels.
# TYPE pool_managerd_build_info gauge
` + tt.want + "\n"
			if err := testutil.GatherAndCompare(reg, strings.NewReader(want), "pool_managerd_build_info"); err != nil {
				t.Error(err)
			}
			problems, err := testutil.GatherAndLint(reg)
			if err != nil {
				t.Fatal(err)
			}
			for _, p := range problems {
				t.Errorf("%s: %s", p.Metric, p.Text)
			}
		})
	}
}

// The fetch metrics: every failure class at 0 from the start, bytes
// counted, each download's end observed by outcome, and the cache's size
// from the snapshot (absent without a cache).
func TestFetchMetrics(t *testing.T) {
	m, _ := newMetrics(t, Snapshot{ModelCache: &ModelCacheSnapshot{Bytes: 4096}})
	for _, class := range restart.FetchClasses {
		if got := testutil.ToFloat64(m.fetchFailures.WithLabelValues(class)); got != 0 {
			t.Errorf("model_fetch_failures_total{class=%q} = %v before any fetch, want 0", class, got)
		}
	}
	if n := testutil.CollectAndCount(m, "pool_managerd_model_fetch_failures_total"); n != len(restart.FetchClasses) {
		t.Errorf("%d model_fetch_failures_total series, want one per class (%d)", n, len(restart.FetchClasses))
	}
	m.FetchReceived(1000)
	m.FetchReceived(24)
	m.FetchFinished(3*time.Second, "")
	m.FetchFinished(time.Second, restart.ClassModelDigestMismatch)
	if got := testutil.ToFloat64(m.fetchBytes); got != 1024 {
		t.Errorf("model_fetch_bytes_total = %v, want 1024", got)
	}
	if got := testutil.ToFloat64(m.fetchFailures.WithLabelValues(restart.ClassModelDigestMismatch)); got != 1 {
		t.Errorf("model_fetch_failures_total{class=model_digest_mismatch} = %v, want 1", got)
	}
	want := `
# HELP pool_managerd_model_cache_bytes Bytes the model cache (serve --model-cache) holds: fetched models and partial downloads.
# TYPE pool_managerd_model_cache_bytes gauge
pool_managerd_model_cache_bytes 4096
`
	if err := testutil.CollectAndCompare(m, strings.NewReader(want), "pool_managerd_model_cache_bytes"); err != nil {
		t.Error(err)
	}
	if n := testutil.CollectAndCount(m, "pool_managerd_model_fetch_duration_seconds"); n != 2 {
		t.Errorf("%d model_fetch_duration_seconds series, want success and failure", n)
	}
	none, _ := newMetrics(t, Snapshot{})
	if n := testutil.CollectAndCount(none, "pool_managerd_model_cache_bytes"); n != 0 {
		t.Errorf("model_cache_bytes exported without a cache")
	}
}
