package metrics

import (
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/poolmanagerd/pool-managerd/drivers/gpu"
	"github.com/poolmanagerd/pool-managerd/reconcile"
)

// Snapshot is the state the snapshot metrics are read from at a scrape.
type Snapshot struct {
	// Pools are the pools of the config in force, one entry each.
	Pools []PoolSnapshot
	// GPUs are the node's GPUs, as gpu.Node.Devices returns them (memory in
	// bytes). A lost GPU has no memory series: its figures are unknown, not zero.
	GPUs []gpu.Device
	// HostTotal and HostAvailable are the host's memory in bytes, as the
	// node observes it (/proc/meminfo, see host.Memory, or a simulated
	// node's --ram); a HostTotal of 0 means unknown, and the host series are
	// then left out.
	HostTotal, HostAvailable uint64
	// ModelCache is the model cache; nil when there is none (or its size
	// could not be read), and model_cache_bytes is then left out.
	ModelCache *ModelCacheSnapshot
	// Config is the state of the config source.
	Config ConfigSnapshot
}

// ModelCacheSnapshot is the node's model cache.
type ModelCacheSnapshot struct {
	// Bytes is what the cache holds: its models and partial downloads.
	Bytes int64
}

// ConfigSnapshot is the state of the config and where it comes from.
type ConfigSnapshot struct {
	// Revision is the commit of the config in force, Source where it came
	// from (the --git URL or the config directory); Revision is empty for a
	// plain directory outside Git, and config_revision_info is then left out.
	Revision, Source string
	Dirty            bool
	// HeldBack: the last config that loaded is not applied (it leaves the
	// node no pools while engines run).
	HeldBack bool
	// PendingRemovals counts the pools that left the config and wait for
	// their removal to settle.
	PendingRemovals int
	// Git is the built-in Git source's state; nil for a plain directory
	// (the git_* series are then left out).
	Git *GitSnapshot
}

// GitSnapshot is the state of serve --git's fetches.
type GitSnapshot struct {
	// OK: the last fetch worked.
	OK bool
	// Failures counts the fetches that failed in a row.
	Failures int
	// LastSuccess is when a fetch last worked; zero if none has.
	LastSuccess time.Time
}

// PoolSnapshot is one pool's state.
type PoolSnapshot struct {
	Pool string
	// Phase is one of reconcile.Phases(), as the lifecycle decided it. Any
	// other value sets every pool_phase series of the pool to 0.
	Phase string
	Ready bool
	// Backoff is the delay before the pool's next start; 0 when no restart
	// is waiting.
	Backoff time.Duration
	// Circuit is the circuit breaker's state as restart.BreakerState.Metric
	// numbers it: 0 closed, 1 open, 2 half-open.
	Circuit int
	// RAMNeed is the pool's host RAM need in bytes (its ram, or its engine's
	// estimate); 0 when unknown, and its series is then left out.
	RAMNeed uint64
}

// Phases are the values of pool_phase's phase label: the lifecycle's
// phases (reconcile.Phases), in lifecycle order.
func Phases() []string {
	phases := reconcile.Phases()
	out := make([]string, len(phases))
	for i, p := range phases {
		out[i] = string(p)
	}
	return out
}

// snapshotCollector turns a Snapshot into constant metrics at each scrape.
type snapshotCollector struct {
	snapshot func() Snapshot

	poolReady, poolPhase, backoff, circuit *prometheus.Desc
	gpuTotal, gpuUsed, gpuFree             *prometheus.Desc
	hostTotal, hostAvailable, poolRAMNeed  *prometheus.Desc
	modelCache                             *prometheus.Desc
	revision, heldBack, pendingRemovals    *prometheus.Desc
	gitUp, gitFailures, gitLastSuccess     *prometheus.Desc
}

func newSnapshotCollector(snapshot func() Snapshot) *snapshotCollector {
	name := func(n string) string { return prometheus.BuildFQName(Namespace, "", n) }
	gpuLabels := []string{"gpu", "uuid"}
	return &snapshotCollector{
		snapshot: snapshot,
		poolReady: prometheus.NewDesc(name("pool_ready"),
			"Whether the pool's engine is Ready and serving (1) or not (0).",
			[]string{"pool"}, nil),
		poolPhase: prometheus.NewDesc(name("pool_phase"),
			"The pool's lifecycle phase: 1 for the phase it is in, 0 for the others.",
			[]string{"pool", "phase"}, nil),
		backoff: prometheus.NewDesc(name("backoff_seconds"),
			"Restart backoff delay in seconds before the pool's next start; 0 when no restart is waiting.",
			[]string{"pool"}, nil),
		circuit: prometheus.NewDesc(name("circuit_state"),
			"State of the pool's circuit breaker: 0 closed, 1 open, 2 half-open.",
			[]string{"pool"}, nil),
		gpuTotal: prometheus.NewDesc(name("gpu_memory_total_bytes"),
			"Total memory of the GPU in bytes, as the driver reports it.",
			gpuLabels, nil),
		gpuUsed: prometheus.NewDesc(name("gpu_memory_used_bytes"),
			"Memory of the GPU in use, in bytes, by any process.",
			gpuLabels, nil),
		gpuFree: prometheus.NewDesc(name("gpu_memory_free_bytes"),
			"Free memory of the GPU in bytes.",
			gpuLabels, nil),
		hostTotal: prometheus.NewDesc(name("host_memory_total_bytes"),
			"Total memory of the host in bytes (MemTotal of /proc/meminfo).",
			nil, nil),
		hostAvailable: prometheus.NewDesc(name("host_memory_available_bytes"),
			"Memory of the host available for new processes without swapping, in bytes (MemAvailable of /proc/meminfo).",
			nil, nil),
		poolRAMNeed: prometheus.NewDesc(name("pool_ram_need_bytes"),
			"The pool's host RAM need in bytes, checked against host_memory_available_bytes before its engine starts: its declared ram, or its engine's default estimate. Absent while unknown.",
			[]string{"pool"}, nil),
		modelCache: prometheus.NewDesc(name("model_cache_bytes"),
			"Bytes the model cache (serve --model-cache) holds: fetched models and partial downloads.",
			nil, nil),
		revision: prometheus.NewDesc(name("config_revision_info"),
			"The revision of the config in force: always 1, with the commit as the revision label (+dirty when the config directory's work tree has uncommitted changes) and where it came from as source. Absent for a plain directory outside Git.",
			[]string{"revision", "source"}, nil),
		heldBack: prometheus.NewDesc(name("config_held_back"),
			"Whether the last config that loaded is held back (1): it leaves the node no pools while engines run, and serve --allow-empty is not set; the engines keep running.",
			nil, nil),
		pendingRemovals: prometheus.NewDesc(name("pools_pending_removal"),
			"Pools that left the config and keep running until their removal settles (serve --removal-settle).",
			nil, nil),
		gitUp: prometheus.NewDesc(name("git_fetch_ok"),
			"Whether serve --git's last fetch worked (1) or failed (0); the last applied revision stays in force while it fails.",
			nil, nil),
		gitFailures: prometheus.NewDesc(name("git_fetch_failures"),
			"Fetches of serve --git that failed in a row (retries back off); 0 after one works.",
			nil, nil),
		gitLastSuccess: prometheus.NewDesc(name("git_last_success_timestamp_seconds"),
			"Unix time in seconds of the last fetch of serve --git that worked; absent until one has.",
			nil, nil),
	}
}

func (c *snapshotCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{
		c.poolReady, c.poolPhase, c.backoff, c.circuit,
		c.gpuTotal, c.gpuUsed, c.gpuFree,
		c.hostTotal, c.hostAvailable, c.poolRAMNeed, c.modelCache,
		c.revision, c.heldBack, c.pendingRemovals,
		c.gitUp, c.gitFailures, c.gitLastSuccess,
	} {
		ch <- d
	}
}

func (c *snapshotCollector) Collect(ch chan<- prometheus.Metric) {
	s := c.snapshot()
	gauge := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
	}
	for _, p := range s.Pools {
		gauge(c.poolReady, bool01(p.Ready), p.Pool)
		for _, phase := range Phases() {
			gauge(c.poolPhase, bool01(p.Phase == phase), p.Pool, phase)
		}
		gauge(c.backoff, p.Backoff.Seconds(), p.Pool)
		gauge(c.circuit, float64(p.Circuit), p.Pool)
		if p.RAMNeed > 0 {
			gauge(c.poolRAMNeed, float64(p.RAMNeed), p.Pool)
		}
	}
	for _, d := range s.GPUs {
		if d.Lost {
			continue
		}
		index := strconv.Itoa(d.Index)
		gauge(c.gpuTotal, float64(d.MemoryTotal), index, d.UUID)
		gauge(c.gpuUsed, float64(d.MemoryUsed), index, d.UUID)
		gauge(c.gpuFree, float64(d.MemoryFree), index, d.UUID)
	}
	if s.HostTotal > 0 {
		gauge(c.hostTotal, float64(s.HostTotal))
		gauge(c.hostAvailable, float64(s.HostAvailable))
	}
	if s.ModelCache != nil {
		gauge(c.modelCache, float64(s.ModelCache.Bytes))
	}
	cfg := s.Config
	if cfg.Revision != "" {
		rev := cfg.Revision
		if cfg.Dirty {
			rev += "+dirty"
		}
		gauge(c.revision, 1, rev, cfg.Source)
	}
	gauge(c.heldBack, bool01(cfg.HeldBack))
	gauge(c.pendingRemovals, float64(cfg.PendingRemovals))
	if g := cfg.Git; g != nil {
		gauge(c.gitUp, bool01(g.OK))
		gauge(c.gitFailures, float64(g.Failures))
		if !g.LastSuccess.IsZero() {
			gauge(c.gitLastSuccess, float64(g.LastSuccess.UnixNano())/1e9)
		}
	}
}

func bool01(b bool) float64 {
	if b {
		return 1
	}
	return 0
}
