// Package metrics exposes pool-managerd's Prometheus metrics, all named
// pool_managerd_*.
//
// Two kinds live here. Event metrics (counters, histograms and the config
// gauges) are updated by the daemon through methods of [Metrics] as things
// happen: a preload ends, an engine is restarted, the driver reports an Xid,
// a reconcile pass ends, the config is loaded. Snapshot metrics (pool phase,
// readiness, backoff, circuit breaker, GPU and host memory) are not stored
// at all: at each scrape the collector calls the snapshot function given to
// [New] and turns what it returns into constant metrics, so a scrape always
// sees one consistent state and no goroutine keeps gauges up to date.
//
// Nothing is registered globally: the caller passes its own registry.
package metrics

import (
	"errors"
	"strconv"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/poolmanagerd/pool-managerd/drivers/gpu"
	"github.com/poolmanagerd/pool-managerd/reconcile/restart"
)

// Namespace is the prefix of every metric name.
const Namespace = "pool_managerd"

// Outcomes of a preload, the values of preload_total's outcome label.
const (
	OutcomeSuccess = "success"
	OutcomeFailure = "failure"
)

// XidLost is driver_events_total's xid label for a GPU that was lost
// (fell off the bus or needs a reset).
const XidLost = "lost"

// PreloadBuckets are preload_duration_seconds's buckets, in seconds: from a
// small model in the page cache (0.1 s) to a large one pulled from slow
// storage (30 min). A function, so that no caller can change them.
func PreloadBuckets() []float64 {
	return []float64{0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600, 900, 1200, 1800}
}

// ReconcileBuckets are reconcile_duration_seconds's buckets, in seconds: a
// pass that changes nothing takes milliseconds, one that stops engines and
// waits for them takes up to minutes.
func ReconcileBuckets() []float64 {
	return []float64{0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300}
}

// FetchBuckets are model_fetch_duration_seconds's buckets, in seconds:
// from a small model on a fast link (1 s) to a 100 GB one on a slow one
// (4 h).
func FetchBuckets() []float64 {
	return []float64{1, 5, 15, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200, 14400}
}

// Metrics holds pool-managerd's metrics. Its methods are safe for
// concurrent use, and the event methods of a nil *Metrics do nothing, so
// code can run without metrics.
//
// Metrics is itself a [prometheus.Collector] (New registers it as one); it
// collects the event metrics and calls the snapshot function for the others.
type Metrics struct {
	preloads        *prometheus.CounterVec
	preloadDuration *prometheus.HistogramVec
	restarts        *prometheus.CounterVec
	engineKills     *prometheus.CounterVec
	driverEvents    *prometheus.CounterVec
	driverErrors    *prometheus.CounterVec
	reconcile       prometheus.Histogram
	configValid     prometheus.Gauge
	configLoaded    prometheus.Gauge
	fetchBytes      prometheus.Counter
	fetchDuration   *prometheus.HistogramVec
	fetchFailures   *prometheus.CounterVec

	snapshot *snapshotCollector

	// mu guards known and gpus, what Known has already exported at 0: the
	// engine of each pool, and the GPU indices.
	mu    sync.Mutex
	known map[string]string
	gpus  map[int]bool
}

var _ prometheus.Collector = (*Metrics)(nil)

// New creates the metrics and registers them with reg. snapshot is called
// at every scrape, possibly from several goroutines at once, and must
// return the current state quickly without blocking on the reconciler; its
// pools must have distinct names and its GPUs distinct indices.
//
// New fails when snapshot is nil or the registration fails (a second
// registration on the same registry, say); then nothing is registered.
func New(reg prometheus.Registerer, snapshot func() Snapshot) (*Metrics, error) {
	if reg == nil {
		return nil, errors.New("metrics: nil registerer")
	}
	if snapshot == nil {
		return nil, errors.New("metrics: nil snapshot function")
	}
	m := &Metrics{
		preloads: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: Namespace,
			Name:      "preload_total",
			Help:      "Engine preloads (spawn until Ready or failure) that ended, by pool, engine, outcome (success or failure) and reason (the error class of a failure, empty on success).",
		}, []string{"pool", "engine", "outcome", "reason"}),
		preloadDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: Namespace,
			Name:      "preload_duration_seconds",
			Help:      "Time in seconds from an engine's spawn to its pool being Ready, for successful preloads.",
			Buckets:   PreloadBuckets(),
		}, []string{"pool"}),
		restarts: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: Namespace,
			Name:      "restarts_total",
			Help:      "Engine restarts after a failure, by pool and reason (the error class of the failure).",
		}, []string{"pool", "reason"}),
		engineKills: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: Namespace,
			Name:      "engine_kills_total",
			Help:      "Engines that outlived their stop grace after SIGTERM and were sent SIGKILL, by pool.",
		}, []string{"pool"}),
		driverEvents: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: Namespace,
			Name:      "driver_events_total",
			Help:      "Critical GPU driver events, by GPU index and Xid error code (\"lost\" for a GPU that fell off the bus or needs a reset).",
		}, []string{"gpu", "xid"}),
		driverErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: Namespace,
			Name:      "driver_errors_total",
			Help:      "Critical GPU driver events (Xid errors and lost GPUs), by GPU index: driver_events_total summed over xid, exported at 0 for every GPU from the start.",
		}, []string{"gpu"}),
		reconcile: prometheus.NewHistogram(prometheus.HistogramOpts{
			Namespace: Namespace,
			Name:      "reconcile_duration_seconds",
			Help:      "Time in seconds one reconcile pass (observe, plan, apply) took.",
			Buckets:   ReconcileBuckets(),
		}),
		configValid: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: Namespace,
			Name:      "config_valid",
			Help:      "Whether the last attempt to load the config succeeded (1) or failed (0); after a failure the last good config stays in force.",
		}),
		configLoaded: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: Namespace,
			Name:      "config_last_load_timestamp_seconds",
			Help:      "Unix time in seconds of the last successful config load (the config in force).",
		}),
		fetchBytes: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: Namespace,
			Name:      "model_fetch_bytes_total",
			Help:      "Bytes of models (model.source) downloaded into the model cache; bytes resumed from a partial download are not counted again.",
		}),
		fetchDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: Namespace,
			Name:      "model_fetch_duration_seconds",
			Help:      "Time in seconds a model download took, from its request to its verified end or its failure, by outcome (success or failure). One download serves every pool of the same model.",
			Buckets:   FetchBuckets(),
		}, []string{"outcome"}),
		fetchFailures: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: Namespace,
			Name:      "model_fetch_failures_total",
			Help:      "Model downloads that failed, by class (model_digest_mismatch, insufficient_disk, fetch_http, fetch_stalled, fetch_network, model_not_cached); every class exported at 0 from the start.",
		}, []string{"class"}),
		snapshot: newSnapshotCollector(snapshot),
		known:    map[string]string{},
		gpus:     map[int]bool{},
	}
	for _, class := range restart.FetchClasses {
		m.fetchFailures.WithLabelValues(class)
	}
	for _, outcome := range []string{OutcomeSuccess, OutcomeFailure} {
		m.fetchDuration.WithLabelValues(outcome)
	}
	if err := reg.Register(m); err != nil {
		return nil, err
	}
	return m, nil
}

func (m *Metrics) collectors() []prometheus.Collector {
	return []prometheus.Collector{
		m.preloads, m.preloadDuration, m.restarts, m.engineKills, m.driverEvents, m.driverErrors,
		m.reconcile, m.configValid, m.configLoaded, m.fetchBytes, m.fetchDuration, m.fetchFailures, m.snapshot,
	}
}

// Describe sends the descriptors of every metric; it implements [prometheus.Collector].
func (m *Metrics) Describe(ch chan<- *prometheus.Desc) {
	for _, c := range m.collectors() {
		c.Describe(ch)
	}
}

// Collect sends the event metrics and the snapshot metrics of the state
// snapshot returns now; it implements [prometheus.Collector].
func (m *Metrics) Collect(ch chan<- prometheus.Metric) {
	for _, c := range m.collectors() {
		c.Collect(ch)
	}
}

// PreloadSucceeded records a preload of pool's engine (the engine kind,
// a schema.Engine: "llamacpp", "vllm", "tgi") that reached Ready after took.
func (m *Metrics) PreloadSucceeded(pool, engine string, took time.Duration) {
	if m == nil {
		return
	}
	m.preloads.WithLabelValues(pool, engine, OutcomeSuccess, "").Inc()
	m.preloadDuration.WithLabelValues(pool).Observe(took.Seconds())
}

// PreloadFailed records a preload of pool's engine that failed with the
// error class class (one of the restart.Class constants).
func (m *Metrics) PreloadFailed(pool, engine, class string) {
	if m == nil {
		return
	}
	m.preloads.WithLabelValues(pool, engine, OutcomeFailure, class).Inc()
}

// Restarted records a restart of pool's engine after a failure of the
// error class reason.
func (m *Metrics) Restarted(pool, reason string) {
	if m == nil {
		return
	}
	m.restarts.WithLabelValues(pool, reason).Inc()
}

// EngineKilled records that pool's engine outlived its stop grace and was
// sent SIGKILL.
func (m *Metrics) EngineKilled(pool string) {
	if m == nil {
		return
	}
	m.engineKills.WithLabelValues(pool).Inc()
}

// DriverEvent records a GPU driver event: an Xid error, counted under its
// code, or a lost GPU, counted under [XidLost].
func (m *Metrics) DriverEvent(e gpu.Event) {
	if m == nil {
		return
	}
	xid := XidLost
	if e.Kind != gpu.EventLost {
		xid = strconv.FormatUint(e.Xid, 10)
	}
	index := strconv.Itoa(e.Index)
	m.driverEvents.WithLabelValues(index, xid).Inc()
	m.driverErrors.WithLabelValues(index).Inc()
}

// FetchReceived records n bytes of a model download received.
func (m *Metrics) FetchReceived(n int64) {
	if m == nil || n <= 0 {
		return
	}
	m.fetchBytes.Add(float64(n))
}

// FetchFinished records a model download that ended after took: verified
// (class ""), or failed with the fetch class class.
func (m *Metrics) FetchFinished(took time.Duration, class string) {
	if m == nil {
		return
	}
	if class == "" {
		m.fetchDuration.WithLabelValues(OutcomeSuccess).Observe(took.Seconds())
		return
	}
	m.fetchDuration.WithLabelValues(OutcomeFailure).Observe(took.Seconds())
	m.fetchFailures.WithLabelValues(class).Inc()
}

// ReconcileDone records a reconcile pass that took took.
func (m *Metrics) ReconcileDone(took time.Duration) {
	if m == nil {
		return
	}
	m.reconcile.Observe(took.Seconds())
}

// ConfigLoaded records an attempt, at time at, to load the config; err is
// the load's error. A success sets config_valid to 1 and
// config_last_load_timestamp_seconds to at; a failure sets config_valid to
// 0 and leaves the timestamp at the last good load, whose config stays in
// force.
func (m *Metrics) ConfigLoaded(at time.Time, err error) {
	if m == nil {
		return
	}
	if err != nil {
		m.configValid.Set(0)
		return
	}
	m.configValid.Set(1)
	m.configLoaded.Set(float64(at.UnixNano()) / 1e9)
}

// ConfigHeldBack records a config that loaded but is held back (it leaves
// the node no pools while engines run): config_valid is 1, and the last
// load timestamp stays that of the config in force.
func (m *Metrics) ConfigHeldBack() {
	if m == nil {
		return
	}
	m.configValid.Set(1)
}

// Known exports at 0 every counter series the pools and GPUs can have and
// do not have yet, so that rate() and increase() see their first event:
// for each pool (by id, with its engine kind), engine_kills_total,
// restarts_total for each error class (restart.Classes), and
// preload_total's success and each class of failure; for each GPU index,
// driver_errors_total. driver_events_total is left alone: its xid label is
// open-ended.
//
// A pool whose engine kind changed loses its preload_total series of the
// old engine. The daemon calls Known at each reconcile pass with the pools
// it keeps and the GPUs it observed; a call that brings nothing new costs a
// map lookup per pool and GPU.
func (m *Metrics) Known(pools map[string]string, gpus []int) {
	if m == nil {
		return
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	for pool, engine := range pools {
		old, ok := m.known[pool]
		if ok && old == engine {
			continue
		}
		if ok {
			m.preloads.DeletePartialMatch(prometheus.Labels{"pool": pool, "engine": old})
		}
		m.known[pool] = engine
		m.engineKills.WithLabelValues(pool)
		m.preloads.WithLabelValues(pool, engine, OutcomeSuccess, "")
		for _, class := range restart.Classes {
			m.restarts.WithLabelValues(pool, class)
			m.preloads.WithLabelValues(pool, engine, OutcomeFailure, class)
		}
	}
	for _, index := range gpus {
		if !m.gpus[index] {
			m.gpus[index] = true
			m.driverErrors.WithLabelValues(strconv.Itoa(index))
		}
	}
}

// ForgetPool deletes the event series of a pool removed from the config
// (preload_total, preload_duration_seconds, restarts_total, engine_kills_total). Its snapshot
// series go away by themselves once the snapshot no longer lists it.
func (m *Metrics) ForgetPool(pool string) {
	if m == nil {
		return
	}
	m.mu.Lock()
	delete(m.known, pool)
	m.mu.Unlock()
	labels := prometheus.Labels{"pool": pool}
	m.preloads.DeletePartialMatch(labels)
	m.preloadDuration.DeletePartialMatch(labels)
	m.restarts.DeletePartialMatch(labels)
	m.engineKills.DeletePartialMatch(labels)
}
