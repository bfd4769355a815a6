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
	// HostTotal and HostAvailable are the host's memory in bytes (see
	// [HostMemory]); a HostTotal of 0 means unknown, and the host series are
	// then left out.
	HostTotal, HostAvailable uint64
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
	hostTotal, hostAvailable               *prometheus.Desc
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
	}
}

func (c *snapshotCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{
		c.poolReady, c.poolPhase, c.backoff, c.circuit,
		c.gpuTotal, c.gpuUsed, c.gpuFree,
		c.hostTotal, c.hostAvailable,
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
}

func bool01(b bool) float64 {
	if b {
		return 1
	}
	return 0
}
