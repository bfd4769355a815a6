// Package daemon is `pool-managerd serve`: one reconcile loop that keeps a
// node running what its config says.
//
//	fsnotify (config tree, debounced) ──┐
//	SIGHUP, resync timer ───────────────┤
//	GPU driver events (Xid, lost) ──────┼──▶ loop ──▶ observe ──▶ Plan ──▶ one op per pool
//	engine exits, op ends, timers ──────┤                                  (executor.Executor)
//	API: reset, stop ───────────────────┘
//
// The loop is one goroutine and owns the scheduling state (which pool has an
// op running, which pools an operator stopped). Every change of a plan runs
// as an op of its own pool, so a long preload never holds up another pool;
// an op whose pool's config changes meanwhile is cancelled and the next pass
// plans the pool again. When an op ends, an engine exits, the config changes
// or a timer (backoff, half-open try, resync) fires, the loop makes a new
// pass. A config that fails to load is never applied: the last good one stays
// in force and the error is shown in /v1/config, the config_valid metric and
// the log.
//
// The HTTP API reads the daemon through its api.Source methods, which never
// wait for the loop.
package daemon

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/poolmanagerd/pool-managerd/drivers/engine"
	"github.com/poolmanagerd/pool-managerd/drivers/engine/proc"
	"github.com/poolmanagerd/pool-managerd/drivers/gpu"
	"github.com/poolmanagerd/pool-managerd/drivers/model/fetch"
	"github.com/poolmanagerd/pool-managerd/internal/api"
	"github.com/poolmanagerd/pool-managerd/internal/executor"
	"github.com/poolmanagerd/pool-managerd/internal/gitsource"
	"github.com/poolmanagerd/pool-managerd/internal/metrics"
	"github.com/poolmanagerd/pool-managerd/internal/observe"
	"github.com/poolmanagerd/pool-managerd/internal/state"
	"github.com/poolmanagerd/pool-managerd/reconcile"
	"github.com/poolmanagerd/pool-managerd/schema"
)

// Options configure a daemon.
type Options struct {
	// ConfigDir is the config directory tree; StateDir the state directory
	// (absolute), whose lock the caller holds.
	ConfigDir, StateDir string
	// Node is this node's name in the config.
	Node string
	// GPUs is the node's GPUs; Source names them (nvml, sim:DIR).
	GPUs   gpu.Node
	Source string
	// Host reads the node's host memory; nil when it is not observed (then
	// no pool's RAM need is checked).
	Host observe.HostFunc
	// Engines starts, adopts and cleans up engines.
	Engines engine.Driver
	// Logger receives one event per transition; nil discards.
	Logger hclog.Logger
	// Registry receives the metrics; nil registers none.
	Registry prometheus.Registerer
	// Resync is the period of the full resync (default 30 s); Debounce the
	// quiet time after a config change before it is loaded (default 200 ms).
	Resync, Debounce time.Duration
	// HealthEvery is how often the health endpoints of Ready engines are
	// asked between resyncs (default 10 s); one that fails makes a pass,
	// which restarts it.
	HealthEvery time.Duration
	// Notify, when set, receives sd_notify states ("READY=1", "STATUS=...").
	Notify func(state string)
	// ReadyWhen says when the daemon becomes ready (/readyz 200 and
	// READY=1): ReadyStarted (the default, "") after the first reconcile,
	// ReadyPools once every pool of the node is Ready or given up.
	ReadyWhen ReadyWhen
	// Step is passed to the Executor (crash-safety tests).
	Step func(pool, step string)
	// Probe asks an engine's health endpoint for the health watch; nil is
	// engine.ProbeHealth.
	Probe func(ctx context.Context, port int) engine.Health
	// RemovalSettle is how long a pool's absence from the config must hold
	// before its engine is stopped (serve --removal-settle); 0 stops it at
	// once.
	RemovalSettle time.Duration
	// AllowEmpty applies a config that leaves the node no pools while
	// engines of it run (serve --allow-empty); by default it is held back.
	AllowEmpty bool
	// Fetcher fetches the models of pools with a model.source into its
	// cache (serve --model-cache) before their engines start; nil fails
	// such pools' starts.
	Fetcher *fetch.Fetcher
	// Models is where the needs of fetched models are looked up: the model
	// cache (serve --model-cache) and --offline. A model in the cache is
	// estimated from its file; one that is not is fetched first, and its
	// need checked before the spawn. Its Remote is never set: passes ask
	// no source.
	Models observe.ModelLookup
	// CacheGrace is how long a model that no pool of the node uses stays in
	// the model cache (serve --cache-grace; default 24 h). The cache is
	// collected at each resync.
	CacheGrace time.Duration
	// Git, when set, is where the config comes from (serve --git): each new
	// commit it checks out is loaded, and ConfigDir is not used. The daemon
	// runs its fetch loop.
	Git *gitsource.Source
}

// ReadyWhen is when the daemon becomes ready (serve --ready-when).
type ReadyWhen string

const (
	// ReadyStarted: ready once the first reconcile is done, whatever the
	// pools' phases.
	ReadyStarted ReadyWhen = "started"
	// ReadyPools: ready once, after the first reconcile, every pool of the
	// node's config in force is Ready or given up: Failed (its circuit
	// breaker open), Stopped by an operator, or blocked by the plan with a
	// reason (too little VRAM, a lost GPU, ...). A pool that fails and waits
	// for its backoff is still starting: its restarts end Ready or with the
	// breaker open, so a bad pool never holds the daemon back for good.
	ReadyPools ReadyWhen = "pools"
)

// ParseReadyWhen parses serve --ready-when's value.
func ParseReadyWhen(s string) (ReadyWhen, error) {
	switch w := ReadyWhen(s); w {
	case ReadyStarted, ReadyPools:
		return w, nil
	}
	return "", fmt.Errorf("%q: want %s or %s", s, ReadyStarted, ReadyPools)
}

// Daemon is a running pool-managerd serve.
type Daemon struct {
	opts    Options
	log     hclog.Logger
	metrics *metrics.Metrics
	exec    *executor.Executor
	now     func() time.Time

	// requests to the loop
	reloads chan struct{}
	faults  chan gpu.Event
	stops   chan *stopRequest
	resets  chan resetRequest
	opDone  chan opResult
	exited  chan exitEvent
	pings   chan chan struct{}
	// refresh asks for a pass after an op reported a transition, so that
	// the view's observation (pids, ports, GPU memory) follows the ops.
	refresh chan struct{}
	// runCtx ends when Run's context does: ops and requests watch it.
	runCtx    context.Context
	cancelRun context.CancelFunc
	ops       sync.WaitGroup
	watchers  sync.WaitGroup

	// loader loads the config trees, evaluating only the files that changed
	// since its last load (a new Git checkout reuses the unchanged files).
	loader *schema.Loader
	// node is this node's part of the last config that loaded; nil after a
	// load that failed.
	node *nodeConfig

	// loop state: touched only by the loop goroutine
	cfg       *config
	busy      map[string]*op
	held      map[string]string // operator-stopped pools, by the spec hash they had
	faulted   map[string]*gpu.Event
	watching  map[string]int // engine exit watches, pool → pid
	reported  map[string]string
	needCache map[string]cachedNeed
	stopWait  map[string][]*stopRequest
	// removing are the pools pending removal (removal.go).
	removing map[string]*removal
	// dirRev is the revision of the config directory, worked out when the
	// watcher saw a change (never on an idle resync).
	dirRev *api.Revision
	// checkout is the Git source's commit last loaded, applied or not.
	checkout *gitsource.Checkout
	// wakeAt is the earliest backoff or half-open try the last pass deferred.
	wakeAt     time.Time
	lastStatus string
	// waiting are the pools readiness waits for (ReadyPools), as last logged.
	waiting string
	// memory hands what config loads leave behind back to the OS.
	memory *memoryReturn
	// collecting is set while a collection of the model cache runs.
	collecting atomic.Bool

	view view
}

// New checks the options and creates the daemon; Run starts it.
func New(opts Options) (*Daemon, error) {
	if (opts.ConfigDir == "" && opts.Git == nil) || opts.StateDir == "" || opts.Node == "" || opts.GPUs == nil || opts.Engines == nil {
		return nil, errors.New("daemon: ConfigDir (or Git), StateDir, Node, GPUs and Engines are required")
	}
	if opts.Resync <= 0 {
		opts.Resync = 30 * time.Second
	}
	if opts.Debounce <= 0 {
		opts.Debounce = 200 * time.Millisecond
	}
	if opts.HealthEvery <= 0 {
		opts.HealthEvery = 10 * time.Second
	}
	if opts.CacheGrace <= 0 {
		opts.CacheGrace = 24 * time.Hour
	}
	if opts.ReadyWhen == "" {
		opts.ReadyWhen = ReadyStarted
	}
	if _, err := ParseReadyWhen(string(opts.ReadyWhen)); err != nil {
		return nil, fmt.Errorf("daemon: ReadyWhen %w", err)
	}
	log := opts.Logger
	if log == nil {
		log = hclog.NewNullLogger()
	}
	d := &Daemon{
		opts: opts, log: log, now: time.Now,
		reloads: make(chan struct{}, 1),
		faults:  make(chan gpu.Event, 64), stops: make(chan *stopRequest), resets: make(chan resetRequest),
		opDone: make(chan opResult), exited: make(chan exitEvent, 16), pings: make(chan chan struct{}), refresh: make(chan struct{}, 1),
		busy: map[string]*op{}, held: map[string]string{}, faulted: map[string]*gpu.Event{},
		watching: map[string]int{}, reported: map[string]string{}, needCache: map[string]cachedNeed{},
		stopWait: map[string][]*stopRequest{}, removing: map[string]*removal{},
		loader: schema.NewLoader(),
		memory: newMemoryReturn(),
	}
	d.runCtx, d.cancelRun = context.WithCancel(context.Background())
	d.view.init(opts.ConfigDir)
	if opts.Git != nil {
		d.view.source = opts.Git.Status().URL
	}
	d.exec = &executor.Executor{
		Node: opts.Node, GPUs: opts.GPUs, Host: opts.Host, Engines: opts.Engines, Store: state.Store{Dir: opts.StateDir},
		Now: time.Now, Rand: rand.Float64, Report: d.onEvent, Step: opts.Step,
	}
	if opts.Registry != nil {
		m, err := metrics.New(opts.Registry, d.snapshot)
		if err != nil {
			return nil, fmt.Errorf("daemon: metrics: %w", err)
		}
		d.metrics = m
	}
	if opts.Fetcher != nil {
		d.exec.Models = &executor.FetchedModels{Fetcher: opts.Fetcher, Received: d.metrics.FetchReceived, Finished: d.metrics.FetchFinished}
	}
	if _, err := d.exec.State(); err != nil {
		return nil, fmt.Errorf("daemon: %w", err)
	}
	return d, nil
}

func (d *Daemon) probe(ctx context.Context, port int) engine.Health {
	if d.opts.Probe != nil {
		return d.opts.Probe(ctx, port)
	}
	return engine.ProbeHealth(ctx, port, true)
}

// Ping returns once the loop has answered: the systemd watchdog's proof
// that the daemon is not stuck.
func (d *Daemon) Ping(ctx context.Context) error {
	reply := make(chan struct{})
	select {
	case d.pings <- reply:
	case <-ctx.Done():
		return ctx.Err()
	case <-d.runCtx.Done():
		return errShuttingDown
	}
	<-reply
	return nil
}

// Reload asks the loop to load the config again (SIGHUP).
func (d *Daemon) Reload() {
	select {
	case d.reloads <- struct{}{}:
	default:
	}
}

// Run runs the loop until ctx is done, then waits for the ops in flight to
// return (a preload is left running, a stop that began finishes) and
// returns. Engines are left running.
func (d *Daemon) Run(ctx context.Context) error {
	stop := context.AfterFunc(ctx, d.cancelRun)
	defer stop()
	defer d.cancelRun()
	ctx = d.runCtx
	src, err := d.openSource(ctx)
	if err != nil {
		return err
	}
	events, err := d.opts.GPUs.Events(ctx)
	if err != nil {
		d.cancelRun()
		<-src.done
		return fmt.Errorf("serve: GPU events: %w", err)
	}
	d.watchers.Add(1)
	go d.watchHealth(ctx)
	where := d.opts.ConfigDir
	if d.opts.Git != nil {
		where = d.opts.Git.Status().URL
	}
	d.log.Info("daemon started", "node", d.opts.Node, "config", where, "state_dir", d.opts.StateDir, "gpus", d.opts.Source)
	d.firstLoad(ctx)
	d.pass(ctx, nil)
	d.returnMemory()
	resync := time.NewTicker(d.opts.Resync)
	defer resync.Stop()
	wake := time.NewTimer(time.Hour)
	defer wake.Stop()
	changes, checkouts := src.changes, src.checkouts
	for {
		d.schedule(wake)
		// early is the observation of the node that a config load starts,
		// to run while the config loads (pass).
		var early *observation
		select {
		case <-ctx.Done():
			d.shutdown()
			<-src.done
			return nil
		case ch, ok := <-changes:
			if !ok {
				changes = nil
				continue
			}
			early = d.startObserve(ctx)
			d.loadConfig(ctx, describeChange(ch), d.dirTree(true))
		case co := <-checkouts:
			early = d.startObserve(ctx)
			d.loadCheckout(ctx, "new commit "+co.Commit, co)
		case <-d.reloads:
			early = d.startObserve(ctx)
			d.reload(ctx, "SIGHUP", true)
		case <-resync.C:
			early = d.startObserve(ctx)
			d.reload(ctx, "", false)
			d.collectModels(ctx)
		case ev, ok := <-events:
			if !ok {
				events = nil
				continue
			}
			d.driverEvent(ev)
		case r := <-d.opDone:
			d.finish(r)
		case e := <-d.exited:
			d.engineExited(e)
		case r := <-d.stops:
			d.operatorStop(r)
		case r := <-d.resets:
			d.operatorReset(r)
		case <-d.refresh:
		case reply := <-d.pings:
			close(reply)
			continue
		case <-wake.C:
		}
		if d.drain() {
			// An op ended or an engine exited while the config loaded: an
			// observation started before may predate what it did.
			early = nil
		}
		d.pass(ctx, early)
		d.returnMemory()
	}
}

// watchHealth asks the health endpoint of every Ready engine each
// HealthEvery, off the loop (a hung engine takes its timeout to answer),
// and asks for a pass when one is not healthy: the pass sees it failing and
// restarts it. Exits are seen at once without it; this finds engines that
// run but no longer serve. Only pools the lifecycle has Ready are asked: an
// engine that has exited, is being stopped or still loads is not, so no
// warning is logged about one.
func (d *Daemon) watchHealth(ctx context.Context) {
	defer d.watchers.Done()
	tick := time.NewTicker(d.opts.HealthEvery)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		for _, r := range d.view.pools(d.exec, d.now()) {
			if !r.Ready || r.Port == 0 {
				continue
			}
			h := d.probe(ctx, r.Port)
			if h == engine.HealthOK || ctx.Err() != nil {
				continue
			}
			if !d.stillReady(r.Pool, r.PID) || !d.engineAlive(r.Pool, r.PID) {
				// Stopped or gone meanwhile: not a failure of a Ready engine.
				// An engine that died is its exit watch's to report, with its
				// exit status, however soon the probe found it gone.
				continue
			}
			d.log.Warn("engine health check failed", "pool", r.Pool, "pid", r.PID, "health", string(h))
			select {
			case d.refresh <- struct{}{}:
			default:
			}
			break
		}
	}
}

// engineAlive reports whether the pool's recorded engine pid still runs
// (the same process: its start time is the recorded one; not a zombie).
func (d *Daemon) engineAlive(pool string, pid int) bool {
	st, err := d.exec.State()
	if err != nil {
		return true // unknown: the probe's answer stands
	}
	rec, ok := st.Engines[pool]
	return ok && rec.PID == pid && proc.Alive(pid, rec.StartTicks)
}

// stillReady reports whether the pool is still Ready with the engine pid.
func (d *Daemon) stillReady(pool string, pid int) bool {
	for _, r := range d.view.pools(d.exec, d.now()) {
		if r.Pool == pool {
			return r.Ready && r.PID == pid
		}
	}
	return false
}

// drain takes the op ends and engine exits that are already waiting, so
// that a burst of them (a hundred preloads ending together) makes one pass,
// not one each. It reports whether it took any.
func (d *Daemon) drain() bool {
	took := false
	for {
		select {
		case r := <-d.opDone:
			d.finish(r)
		case e := <-d.exited:
			d.engineExited(e)
		default:
			return took
		}
		took = true
	}
}

// shutdown waits for the ops in flight, which see the cancelled context.
func (d *Daemon) shutdown() {
	d.log.Info("daemon stopping: waiting for the operations in flight; engines keep running")
	done := make(chan struct{})
	go func() {
		d.ops.Wait()
		close(done)
	}()
	for {
		select {
		case <-done:
			d.watchers.Wait()
			for _, waiters := range d.stopWait {
				for _, r := range waiters {
					r.finish(errors.New("the daemon is shutting down"))
				}
			}
			return
		case r := <-d.opDone:
			delete(d.busy, r.pool)
		}
	}
}

// StopEngines stops every engine of the node (--stop-engines-on-exit),
// after Run returned.
func (d *Daemon) StopEngines(ctx context.Context) error {
	st, err := d.exec.State()
	if err != nil {
		return err
	}
	var wg sync.WaitGroup
	errs := make([]error, 0, len(st.Engines))
	var mu sync.Mutex
	for id := range st.Engines {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := d.exec.StopPool(ctx, id); err != nil {
				mu.Lock()
				errs = append(errs, err)
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	return errors.Join(errs...)
}

// config is a config that loaded: the desired state of this node. The
// fleet's other pools and nodes are not kept (the view keeps their names).
type config struct {
	desired reconcile.Desired
	hash    string
}
