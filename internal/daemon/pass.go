package daemon

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/poolmanagerd/pool-managerd/drivers/engine"
	"github.com/poolmanagerd/pool-managerd/drivers/gpu"
	"github.com/poolmanagerd/pool-managerd/internal/executor"
	"github.com/poolmanagerd/pool-managerd/internal/observe"
	"github.com/poolmanagerd/pool-managerd/internal/state"
	"github.com/poolmanagerd/pool-managerd/reconcile"
	"github.com/poolmanagerd/pool-managerd/reconcile/restart"
	"github.com/poolmanagerd/pool-managerd/schema"
)

// opKind says what an op does, for the loop's scheduling.
type opKind int

const (
	opApply  opKind = iota // one change of a plan: start, replace, restart, adopt, update, wait for a preload
	opStop                 // an engine stops: a delete or an operator's stop
	opFault                // a driver error: drain and stop (the failure is recorded first)
	opRecord               // an engine exited by itself: record its failure
)

// op is one pool's work in flight.
type op struct {
	kind     opKind
	specHash string
	devices  []int
	cancel   context.CancelFunc
	// cancelled is set once the loop cancelled the op (its config changed).
	cancelled bool
}

type opResult struct {
	pool    string
	kind    opKind
	outcome executor.Outcome
	err     error
}

type exitEvent struct {
	pool string
	pid  int
	exit engine.ExitStatus
}

// launch runs fn as the pool's op.
func (d *Daemon) launch(pool string, o *op, fn func(ctx context.Context) opResult) {
	ctx, cancel := context.WithCancel(d.runCtx)
	o.cancel = cancel
	d.busy[pool] = o
	d.ops.Add(1)
	go func() {
		defer d.ops.Done()
		r := fn(ctx)
		cancel()
		r.pool, r.kind = pool, o.kind
		d.opDone <- r
	}()
}

// knownToMetrics exports at 0 the counter series of the pools the daemon
// keeps and of the GPUs it observed (metrics.Known), so that the first
// restart, failed preload or driver error of each shows in increase().
func (d *Daemon) knownToMetrics(desired reconcile.Desired, obs reconcile.Observed) {
	if d.metrics == nil {
		return
	}
	pools := make(map[string]string, len(desired.Pools))
	for id, p := range desired.Pools {
		pools[id] = string(p.Engine)
	}
	gpus := make([]int, len(obs.GPUs))
	for i, g := range obs.GPUs {
		gpus[i] = g.Index
	}
	d.metrics.Known(pools, gpus)
}

// finish is called by the loop when an op returns.
func (d *Daemon) finish(r opResult) {
	delete(d.busy, r.pool)
	if r.err != nil && !errors.Is(r.err, context.Canceled) {
		d.log.Error("operation failed", "pool", r.pool, "error", r.err)
	}
	if r.kind == opStop {
		d.stopped(r.pool, r.err)
		if r.outcome.Action == reconcile.Delete && r.err == nil {
			d.metrics.ForgetPool(r.pool)
			d.view.forget(r.pool)
		}
		d.recheckHeldBack()
	}
}

// recheckHeldBack loads a held-back config again once the last stop in
// flight has ended: when an operator stopped the engines (stop --all), the
// config that empties the node no longer leaves engines running, and is
// applied now rather than at the next resync.
func (d *Daemon) recheckHeldBack() {
	if !d.view.heldBack() {
		return
	}
	for _, o := range d.busy {
		if o.kind == opStop {
			return
		}
	}
	d.reload(d.runCtx, "engines stopped while a config was held back", false)
}

// observation is an observation of the node under way.
type observation struct {
	done chan struct{}
	obs  reconcile.Observed
	err  error
}

// startObserve starts an observation of the node. A config change starts
// one before it loads the config, so that the engines' health checks and
// the scan of /proc overlap the load rather than follow it on the path from
// the change to its first step. Nothing the loop does while the config
// loads changes the node: ops only end, and an op that ends (or an engine
// exit) taken after the load makes the loop observe again instead (Run); an
// observation not used ends by itself.
func (d *Daemon) startObserve(ctx context.Context) *observation {
	o := &observation{done: make(chan struct{})}
	d.watchers.Add(1)
	go func() {
		defer d.watchers.Done()
		defer close(o.done)
		o.obs, o.err = d.observe(ctx)
	}()
	return o
}

// wait returns the observation once it is done.
func (o *observation) wait() (reconcile.Observed, error) {
	<-o.done
	return o.obs, o.err
}

func (d *Daemon) observe(ctx context.Context) (reconcile.Observed, error) {
	opts := observe.Options{Node: d.opts.Node, GPUs: d.opts.GPUs, Source: d.opts.Source, Host: d.opts.Host, StateDir: d.opts.StateDir, ScanProcesses: true,
		Models: d.opts.Models}
	if d.cfg != nil {
		opts.Pools = d.cfg.desired.Pools
	}
	return observe.Observe(ctx, opts)
}

// pass observes the node (or takes early, an observation started while the
// config loaded), plans, and launches an op for each pool that needs one
// and has none in flight.
func (d *Daemon) pass(ctx context.Context, early *observation) {
	if ctx.Err() != nil {
		return
	}
	if d.cfg == nil {
		// No config ever loaded: nothing is known to be desired, so nothing
		// is started or stopped, but what an operator asks to stop.
		if st, err := d.exec.State(); err == nil {
			d.runHeld(st, reconcile.Observed{})
		}
		d.notifyStatus()
		return
	}
	started := time.Now()
	now := d.now()
	var obs reconcile.Observed
	var err error
	if early != nil {
		obs, err = early.wait()
	} else {
		obs, err = d.observe(ctx)
	}
	if err != nil {
		if ctx.Err() == nil {
			d.log.Error("observe the node", "error", err)
		}
		return
	}
	if ctx.Err() != nil {
		// Shutting down: health checks cut short by it read as failing
		// engines, and must not be acted on.
		return
	}
	st, err := d.exec.State()
	if err != nil {
		d.log.Error("read the state", "error", err)
		return
	}
	d.trackRemovals(ctx, obs, st, now)
	desired, settles := d.effective(now)
	d.liftHolds(desired)
	plan := reconcile.Plan(desired, obs, now)
	d.view.observed(obs, desired, plan, d.removalTimes())
	d.knownToMetrics(desired, obs)
	d.cancelStale(desired)
	d.runFaults(desired, st)
	d.runHeld(st, obs)
	var wake time.Time
	later := func(t time.Time) {
		if wake.IsZero() || t.Before(wake) {
			wake = t
		}
	}
	if !settles.IsZero() {
		later(settles)
	}
	d.launchChanges(plan, now, later)
	d.launchAwaits(plan, st)
	if !d.watchExits(obs, st) {
		// An engine died between the observation and its exit watch: no
		// exit event will come, so look again soon rather than at the resync.
		later(d.now().Add(100 * time.Millisecond))
	}
	d.wakeAt = wake
	d.metrics.ReconcileDone(time.Since(started))
	d.becomeReady(len(desired.Pools), time.Since(started))
	d.notifyStatus()
}

// becomeReady marks the daemon ready, and tells systemd, at the end of the
// first pass, or with ReadyPools at the end of the first pass that finds
// every pool Ready or given up. Once ready it stays ready.
func (d *Daemon) becomeReady(pools int, took time.Duration) {
	if d.view.isReady() {
		return
	}
	if d.opts.ReadyWhen == ReadyPools {
		if waiting := d.view.unsettled(d.exec, d.now()); len(waiting) > 0 {
			if w := strings.Join(waiting, ", "); w != d.waiting {
				d.waiting = w
				d.log.Info("not ready yet: waiting for pools to be Ready or given up", "pools", w)
			}
			return
		}
	}
	if d.view.markReady() {
		what := "first reconcile done: ready"
		if d.opts.ReadyWhen == ReadyPools {
			what = "every pool Ready or given up: ready"
		}
		d.log.Info(what, "pools", pools, "took", took.Round(time.Millisecond).String())
		d.notify("READY=1")
	}
}

// liftHolds lifts the operator stops of pools whose config changed.
func (d *Daemon) liftHolds(desired reconcile.Desired) {
	for id, hash := range d.held {
		if p, ok := desired.Pools[id]; ok && reconcile.SpecHash(p) != hash {
			delete(d.held, id)
			d.view.setHeld(id, false)
			d.log.Info("operator stop lifted: the pool's config changed", "pool", id)
		}
	}
}

// cancelStale cancels each op whose pool's config changed (or left the
// config); the pass after it ends plans the pool again.
func (d *Daemon) cancelStale(desired reconcile.Desired) {
	for id, o := range d.busy {
		if o.kind != opApply || o.cancelled {
			continue
		}
		if p, ok := desired.Pools[id]; !ok || reconcile.SpecHash(p) != o.specHash {
			o.cancel()
			o.cancelled = true
			d.log.Info("config changed while the pool was busy: cancelling its operation", "pool", id)
		}
	}
}

// free reports whether the loop may launch an op for the pool: none runs,
// and no operator holds it stopped.
func (d *Daemon) free(pool string) bool {
	_, held := d.held[pool]
	return d.busy[pool] == nil && !held
}

// launchChanges launches the plan's changes: deletes first (they free
// GPUs), then the others. A change whose backoff or breaker cool-down has
// not elapsed (NotBefore) is not launched: the loop looks again then. A
// start on a GPU that an engine is leaving waits for that stop (the op that
// frees it pokes the loop when it ends), so that it does not fail for
// memory about to be freed.
func (d *Daemon) launchChanges(plan *reconcile.NodePlan, now time.Time, later func(time.Time)) {
	var leaving []int
	for _, o := range d.busy {
		if o.kind != opApply {
			leaving = append(leaving, o.devices...)
		}
	}
	for _, c := range plan.Changes {
		if c.Action != reconcile.Delete || !d.free(c.Pool) {
			continue
		}
		if d.settling(c.Pool, now) {
			// Pending removal with no spec on record to keep it by: its
			// delete waits for the settle window all the same.
			continue
		}
		leaving = append(leaving, c.Devices...)
		d.launchChange(c)
	}
	for _, c := range plan.Changes {
		if c.Action == reconcile.Delete || !d.free(c.Pool) {
			continue
		}
		if c.NotBefore != nil && c.NotBefore.After(now) {
			later(*c.NotBefore)
			continue
		}
		if c.Action == reconcile.Blocked && c.Blocker.Class != reconcile.ClassInsufficientVRAM && c.Blocker.Class != reconcile.ClassInsufficientRAM {
			// Reported once until it changes; a VRAM or RAM shortage is a failure,
			// counted once per backoff (the NotBefore above).
			key := c.Blocker.Class + ": " + c.Blocker.Message
			if d.reported[c.Pool] == key {
				continue
			}
			d.reported[c.Pool] = key
		}
		if starts(c.Action) && overlaps(leaving, c.Devices) {
			continue
		}
		if c.Action != reconcile.Blocked {
			delete(d.reported, c.Pool)
		}
		d.launchChange(c)
	}
}

// launchAwaits watches each engine that was still loading (or whose
// placement was never verified) when the node was observed, until Ready.
func (d *Daemon) launchAwaits(plan *reconcile.NodePlan, st *state.State) {
	for _, u := range plan.Unchanged {
		delete(d.reported, u.Pool)
		if u.Health != reconcile.HealthLoading || !d.free(u.Pool) {
			continue
		}
		d.launchPlan(u.Pool, &op{kind: opApply, specHash: st.Engines[u.Pool].SpecHash}, &reconcile.NodePlan{Node: d.opts.Node, Unchanged: []reconcile.Unchanged{u}})
	}
}

func starts(a reconcile.Action) bool {
	switch a {
	case reconcile.Create, reconcile.Replace, reconcile.Restart, reconcile.Adopt:
		return true
	}
	return false
}

func overlaps(a, b []int) bool {
	for _, x := range b {
		if slices.Contains(a, x) {
			return true
		}
	}
	return false
}

// launchChange runs one change of a plan as its pool's op. A change that
// stops a running engine marks it draining first, so that from the moment
// the stop is decided the pool is ready nowhere; a replace that fetches its
// new model first decides its stop only once the model is in the cache (the
// executor marks it then), and serves the old spec meanwhile.
func (d *Daemon) launchChange(c reconcile.Change) {
	o := &op{kind: opApply, specHash: c.SpecHash, devices: c.Devices}
	if c.Action == reconcile.Delete {
		o.kind = opStop
	}
	if c.PID != 0 && (c.Action == reconcile.Delete || c.Action == reconcile.Replace || c.Action == reconcile.Restart) && !executor.FetchesFirst(c) {
		d.exec.BeginStop(c.Pool, c.PID)
	}
	d.launchPlan(c.Pool, o, &reconcile.NodePlan{Node: d.opts.Node, Source: d.opts.Source, Changes: []reconcile.Change{c}})
}

func (d *Daemon) launchPlan(pool string, o *op, plan *reconcile.NodePlan) {
	d.launch(pool, o, func(ctx context.Context) opResult {
		res, err := d.exec.Apply(ctx, plan)
		r := opResult{err: err}
		if len(res.Outcomes) > 0 {
			r.outcome = res.Outcomes[0]
		}
		return r
	})
}

// schedule sets the wake timer to the earliest backoff or half-open try
// the last pass deferred.
func (d *Daemon) schedule(t *time.Timer) {
	t.Stop()
	select {
	case <-t.C:
	default:
	}
	if d.wakeAt.IsZero() {
		return
	}
	delay := max(d.wakeAt.Sub(d.now()), time.Millisecond)
	t.Reset(delay)
}

// driverEvent handles a critical Xid or a lost GPU: the pools on that GPU
// are made Unready, drained and stopped, and restarted with the driver
// error backoff.
func (d *Daemon) driverEvent(ev gpu.Event) {
	d.metrics.DriverEvent(ev)
	st, err := d.exec.State()
	if err != nil {
		d.log.Error("read the state", "error", err)
		return
	}
	affected := []string{}
	for id, rec := range st.Engines {
		var devices []int
		if rec.Spec != nil {
			devices = rec.Spec.Devices
		}
		if p, ok := d.desiredPool(id); ok {
			devices = p.Devices
		}
		if slices.Contains(devices, ev.Index) {
			affected = append(affected, id)
			e := ev
			d.faulted[id] = &e
			if o := d.busy[id]; o != nil && o.kind == opApply && !o.cancelled {
				o.cancel()
				o.cancelled = true
			}
		}
	}
	slices.Sort(affected)
	what := fmt.Sprintf("Xid %d", ev.Xid)
	if ev.Kind == gpu.EventLost {
		what = "lost (fell off the bus or needs a reset)"
	}
	d.log.Warn("GPU driver event: "+what, "gpu", ev.Index, "uuid", ev.UUID, "kind", string(ev.Kind), "xid", ev.Xid, "pools", affected)
}

// runFaults records the failure of each pool a driver event hit, once its
// op in flight (cancelled) has returned: from then on the lifecycle has it
// Unready. Then its engine is drained and stopped as an op of its own.
func (d *Daemon) runFaults(desired reconcile.Desired, st *state.State) {
	for id, ev := range d.faulted {
		if d.busy[id] != nil {
			continue
		}
		delete(d.faulted, id)
		pool, ok := desired.Pools[id]
		if !ok {
			continue // leaving the config: the plan deletes it
		}
		rec, running := st.Engines[id]
		if !running {
			continue
		}
		f := restart.Failure{Class: restart.ClassDriverReset}
		if ev.Kind == gpu.EventLost {
			f.Message = fmt.Sprintf("GPU %d (%s) is lost: the driver reports it off the bus or in need of a reset", ev.Index, ev.UUID)
		} else {
			f.Message = fmt.Sprintf("GPU %d (%s) reported Xid %d, a critical driver error", ev.Index, ev.UUID, ev.Xid)
		}
		d.exec.RecordFault(pool, f)
		d.exec.BeginStop(id, rec.PID)
		d.launch(id, &op{kind: opFault, devices: pool.Devices}, func(ctx context.Context) opResult {
			return opResult{err: d.exec.StopEngine(ctx, id)}
		})
	}
}

func (d *Daemon) desiredPool(id string) (*schema.Pool, bool) {
	if d.cfg == nil {
		return nil, false
	}
	p, ok := d.cfg.desired.Pools[id]
	return p, ok
}

// watchExits watches each running engine that no op is busy with, so that
// its exit is handled at once rather than at the next resync. It reports
// false when an engine seen alive could not be watched (gone meanwhile).
func (d *Daemon) watchExits(obs reconcile.Observed, st *state.State) bool {
	ok := true
	for id, e := range obs.Engines {
		rec, recorded := st.Engines[id]
		if !e.Alive || !recorded || rec.PID != e.PID || d.watching[id] == e.PID || d.busy[id] != nil {
			continue
		}
		p, err := d.opts.Engines.Adopt(d.runCtx, executor.RefOf(rec))
		if err != nil {
			ok = false // gone meanwhile: the next pass sees it
			continue
		}
		d.watching[id] = e.PID
		d.watchers.Add(1)
		go func() {
			defer d.watchers.Done()
			select {
			case <-p.Exited():
				select {
				case d.exited <- exitEvent{pool: id, pid: p.PID(), exit: p.Exit()}:
				case <-d.runCtx.Done():
				}
			case <-d.runCtx.Done():
			}
		}()
	}
	return ok
}

// engineExited handles the exit of a watched engine that no op stopped: its
// failure is recorded, classified by its exit status, as an op of its pool;
// the pass after it sees the backoff and looks again when it elapses.
func (d *Daemon) engineExited(e exitEvent) {
	if d.watching[e.pool] == e.pid {
		delete(d.watching, e.pool)
	}
	if d.busy[e.pool] != nil {
		return // stopped by its own op
	}
	args := []any{"pool", e.pool, "pid", e.pid}
	if e.exit.Known() {
		args = append(args, "exit", e.exit.String())
	}
	d.log.Warn("engine exited", args...)
	pool, ok := d.desiredPool(e.pool)
	if !ok {
		return
	}
	if _, held := d.held[e.pool]; held {
		return
	}
	d.launch(e.pool, &op{kind: opRecord}, func(ctx context.Context) opResult {
		return opResult{outcome: d.exec.RecordExit(ctx, pool, e.pid, e.exit)}
	})
}

func (d *Daemon) notify(s string) {
	if d.opts.Notify != nil {
		d.opts.Notify(s)
	}
}

// notifyStatus tells systemd how many pools are Ready, when it changed.
func (d *Daemon) notifyStatus() {
	var s string
	if d.cfg == nil {
		s = "STATUS=waiting for a valid config"
	} else {
		ready, total := d.view.readyCount(d.exec)
		s = fmt.Sprintf("STATUS=%d/%d pools Ready", ready, total)
		if d.waiting != "" && !d.view.isReady() {
			s += "; starting, waiting for " + d.waiting
		}
		if !d.view.configValid() {
			s += "; config invalid, the last good one is in force"
		}
	}
	if s != d.lastStatus {
		d.lastStatus = s
		d.notify(s)
	}
}
