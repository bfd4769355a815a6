package executor

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/poolmanagerd/pool-managerd/drivers/engine"
	"github.com/poolmanagerd/pool-managerd/drivers/gpu"
	"github.com/poolmanagerd/pool-managerd/internal/state"
	"github.com/poolmanagerd/pool-managerd/reconcile"
	"github.com/poolmanagerd/pool-managerd/reconcile/restart"
	"github.com/poolmanagerd/pool-managerd/schema"
)

// Store is the state file.
type Store interface {
	Load() (*state.State, error)
	Save(*state.State) error
}

// Executor applies plans on one node: it stops, starts and adopts engines,
// waits for each started pool to be Ready, and records everything in the
// state file as it goes, so that a crash at any point is recovered by the
// next run (intent recorded before a spawn, the engine's marker, its pid).
type Executor struct {
	Node string
	GPUs gpu.Node
	// Host reads the host's memory for the RAM check before a spawn; nil,
	// or nil memory, means it is not observed and nothing is checked.
	Host    func(ctx context.Context) (*reconcile.HostMemory, error)
	Engines engine.Driver
	Store   Store
	// Models fetches the models of pools with a model.source before their
	// engines are spawned; nil fails such a pool's start.
	Models Models
	// Now and Rand are the clock and random source (jitter).
	Now  func() time.Time
	Rand func() float64
	// HealthEvery is the health poll interval during preload (≤ 100 ms).
	HealthEvery time.Duration
	// Report receives progress, one event per transition; may be nil.
	Report func(Event)
	// Step, when set, is called as a start passes each of its steps (the
	// Step* constants), after what the step records is saved. Crash-safety
	// tests use it to kill the process there.
	Step func(pool, step string)

	mu sync.Mutex
	st *state.State
	// snap is a copy of st as of its last change, which State returns
	// without waiting for a save in progress (an fsync can take long).
	snap atomic.Pointer[state.State]
	// inflight are the starts under way, by pool: what each booked on each
	// GPU, and its engine once spawned, so that parallel starts do not both
	// take the same bytes, nor count twice what an engine already holds.
	inflight map[string]*inflightStart
	// loading are the engines awaited until Ready, by pool.
	loading map[string]*Loading
	// fetching are the model downloads starts wait on, by pool.
	fetching map[string]reconcile.Fetch
}

// Fetches lists, by pool, the model downloads that starts wait on now
// (the pools are Fetching).
func (x *Executor) Fetches() map[string]reconcile.Fetch {
	x.mu.Lock()
	defer x.mu.Unlock()
	return maps.Clone(x.fetching)
}

// setFetch records a pool's download's progress; nil ends it. It returns
// the progress it replaces.
func (x *Executor) setFetch(pool string, f *reconcile.Fetch) *reconcile.Fetch {
	x.mu.Lock()
	defer x.mu.Unlock()
	var was *reconcile.Fetch
	if old, ok := x.fetching[pool]; ok {
		was = &old
	}
	if f == nil {
		delete(x.fetching, pool)
		return was
	}
	if x.fetching == nil {
		x.fetching = map[string]reconcile.Fetch{}
	}
	x.fetching[pool] = *f
	return was
}

// Loading is an engine whose model is loading, as a start waits on it.
type Loading struct {
	Pool   string
	Engine schema.Engine
	PID    int
	// Since is the engine's start.
	Since time.Time
	// Health is what its health check last answered; empty before the first.
	Health engine.Health
}

// Loading lists, by pool, the engines awaited until Ready now.
func (x *Executor) Loading() []Loading {
	x.mu.Lock()
	defer x.mu.Unlock()
	out := make([]Loading, 0, len(x.loading))
	for _, l := range x.loading {
		out = append(out, *l)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Pool < out[j].Pool })
	return out
}

// setLoading records a loading engine's last health answer; done removes it.
func (x *Executor) setLoading(l Loading, done bool) {
	x.mu.Lock()
	defer x.mu.Unlock()
	if done {
		delete(x.loading, l.Pool)
		return
	}
	if x.loading == nil {
		x.loading = map[string]*Loading{}
	}
	x.loading[l.Pool] = &l
}

// inflightStart is a start's booking of GPU memory.
type inflightStart struct {
	need map[int]uint64
	// ram is the host RAM it booked.
	ram  uint64
	proc engine.Process
}

// The steps of a start, in order, for Executor.Step.
const (
	StepStopped       = "stopped"        // an engine to replace is stopped and its record removed
	StepIntent        = "intent"         // the intent to start is recorded
	StepSpawned       = "spawned"        // the engine process runs, its pid not yet recorded
	StepRecorded      = "recorded"       // its pid, start time and argv are recorded
	StepHealthy       = "healthy"        // it passed its health check, placement not yet verified
	StepReadyRecorded = "ready-recorded" // Ready is recorded
)

func (x *Executor) step(pool, step string) {
	if x.Step != nil {
		x.Step(pool, step)
	}
}

// Event is a transition of a pool during apply, for progress output and logs.
type Event struct {
	Time  time.Time
	Pool  string
	Phase reconcile.Phase
	// Message says what happened, for people.
	Message string
	// Failure is set when the pool failed.
	Failure *restart.Failure
	// Engine is the pool's engine, on events of a start.
	Engine schema.Engine
	// Spawn is set on the event of an engine's spawn (a preload begins).
	Spawn bool
	// FetchBegins and FetchEnds are set on the events of a model download
	// a start waits on (phase Fetching): its first bytes, its verified end.
	FetchBegins, FetchEnds bool
	// Restart is set on a spawn that follows a failure: that failure's class.
	Restart string
	// Loaded is set on the Ready event that ends a preload: the time from
	// the engine's start to Ready.
	Loaded time.Duration
	// Killed is set when a stopped engine outlived its grace after SIGTERM
	// and was sent SIGKILL: PID is the engine, Grace the grace that ran out.
	Killed bool
	PID    int
	Grace  time.Duration
}

// Outcome is how one pool ended an apply.
type Outcome struct {
	Pool    string           `json:"pool"`
	Action  reconcile.Action `json:"action"`
	Phase   reconcile.Phase  `json:"phase"`
	PID     int              `json:"pid,omitempty"`
	Failure *restart.Failure `json:"failure,omitempty"`
	// NotBefore is set when nothing was started because a failure was just
	// recorded (an engine found dead): when its backoff (or its breaker's
	// cool-down) allows the start. The caller waits or looks again then.
	NotBefore time.Time `json:"notBefore,omitzero"`
	// KeptRunning is set when a replace failed before it stopped the
	// pool's engine (the new spec's model could not be fetched): the
	// engine serves the spec it was started from, Phase is its phase, and
	// Failure is the replace's.
	KeptRunning bool `json:"keptRunning,omitempty"`
}

// Result is what an apply did.
type Result struct {
	Outcomes []Outcome
}

// Failed reports whether any pool failed or stayed blocked, or a replace
// failed and left its engine serving the old spec.
func (r Result) Failed() bool {
	for _, o := range r.Outcomes {
		if o.Phase == reconcile.Failed || o.Phase == reconcile.Unready || o.KeptRunning {
			return true
		}
	}
	return false
}

func (x *Executor) now() time.Time { return x.Now() }

func (x *Executor) report(pool string, phase reconcile.Phase, f *restart.Failure, format string, args ...any) {
	x.emit(Event{Pool: pool, Phase: phase, Message: fmt.Sprintf(format, args...), Failure: f})
}

func (x *Executor) emit(e Event) {
	if x.Report != nil {
		e.Time = x.now()
		x.Report(e)
	}
}

// load reads the state file once.
func (x *Executor) load() error {
	x.mu.Lock()
	defer x.mu.Unlock()
	if x.st != nil {
		return nil
	}
	st, err := x.Store.Load()
	if err != nil {
		return err
	}
	x.st = st
	x.publish()
	return nil
}

// publish makes a copy of the state the one State returns. Called with x.mu held.
func (x *Executor) publish() {
	snap := &state.State{Version: x.st.Version, Engines: maps.Clone(x.st.Engines), Pools: maps.Clone(x.st.Pools)}
	if x.st.AppliedRevision != nil {
		rev := *x.st.AppliedRevision
		snap.AppliedRevision = &rev
	}
	x.snap.Store(snap)
}

// mutate changes the state under the lock and saves it atomically.
func (x *Executor) mutate(fn func(st *state.State)) error {
	x.mu.Lock()
	defer x.mu.Unlock()
	fn(x.st)
	x.publish()
	return x.Store.Save(x.st)
}

// Apply carries out a plan. Stops run first (they free GPUs), then updates,
// then starts, adoptions and restarts in parallel, each waited on until
// Ready or failed; pools that were still loading when planned are waited on too.
//
// A replace whose new spec's model has a source (FetchesFirst) is the
// exception: its engine serves the old spec while the model downloads, and
// is stopped only once the model is in the cache; a failed fetch stops
// nothing. The other starts do not wait for that download, except those on
// a GPU the replaced engine holds, which wait for its stop.
//
// The state file is read at the first Apply and kept in memory after: one
// Executor is the state file's only writer, and a daemon runs several
// Applies at once (one per pool that needs work) on the same Executor.
func (x *Executor) Apply(ctx context.Context, plan *reconcile.NodePlan) (Result, error) {
	if err := x.load(); err != nil {
		return Result{}, err
	}
	var res Result
	var resMu sync.Mutex
	add := func(o Outcome) {
		resMu.Lock()
		res.Outcomes = append(res.Outcomes, o)
		resMu.Unlock()
	}
	// Stops: deletes, and the running engines of replaces and restarts, in
	// parallel. A pool whose stop fails is reported failed; the others go on.
	// The engines of replaces that fetch first stop later, each once its
	// model is in the cache.
	var wg sync.WaitGroup
	stopFailed := map[string]bool{}
	var stopMu sync.Mutex
	var errs []error
	failStop := func(c reconcile.Change, err error) Outcome {
		stopMu.Lock()
		stopFailed[c.Pool], errs = true, append(errs, err)
		stopMu.Unlock()
		x.report(c.Pool, reconcile.Unready, &restart.Failure{Class: restart.ClassExited, Message: err.Error()}, "could not stop: %v", err)
		return Outcome{Pool: c.Pool, Action: c.Action, Phase: reconcile.Unready, Failure: &restart.Failure{Class: "stop_failed", Message: err.Error()}}
	}
	leaving := map[string]*leavingEngine{}
	for _, c := range plan.Changes {
		if FetchesFirst(c) {
			leaving[c.Pool] = &leavingEngine{devices: x.devicesOf(c), stopped: make(chan struct{})}
			continue
		}
		if c.Action != reconcile.Delete && !((c.Action == reconcile.Replace || c.Action == reconcile.Restart) && c.PID != 0) {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := x.stop(ctx, c); err != nil {
				add(failStop(c, err))
				return
			}
			if c.Action == reconcile.Delete {
				add(Outcome{Pool: c.Pool, Action: reconcile.Delete, Phase: reconcile.Stopped})
			}
		}()
	}
	wg.Wait()
	for _, c := range plan.Changes {
		if c.Action == reconcile.Blocked {
			add(x.blocked(ctx, c))
		}
	}
	for _, c := range plan.Changes {
		if stopFailed[c.Pool] {
			continue
		}
		switch {
		case leaving[c.Pool] != nil:
			wg.Add(1)
			go func() {
				defer wg.Done()
				add(x.replaceFetchingFirst(ctx, c, leaving[c.Pool], failStop))
			}()
		case c.Action == reconcile.Update:
			wg.Add(1)
			go func() {
				defer wg.Done()
				add(x.update(ctx, c))
			}()
		case c.Action == reconcile.Create || c.Action == reconcile.Replace || c.Action == reconcile.Restart || c.Action == reconcile.Adopt:
			wg.Add(1)
			go func() {
				defer wg.Done()
				add(x.start(ctx, c, startWith{await: awaitLeaving(c, leaving)}))
			}()
		}
	}
	for _, u := range plan.Unchanged {
		if u.Health == reconcile.HealthLoading {
			wg.Add(1)
			go func() {
				defer wg.Done()
				add(x.awaitLoading(ctx, u.Pool))
			}()
		}
	}
	wg.Wait()
	sort.Slice(res.Outcomes, func(i, j int) bool { return res.Outcomes[i].Pool < res.Outcomes[j].Pool })
	if ctx.Err() != nil {
		return res, ctx.Err()
	}
	return res, errors.Join(errs...)
}

// FetchesFirst reports whether a change is a replace of a running engine
// whose new spec's model has a source: its model is got into the cache
// (fetched, or found there) while the engine serves the old spec, and the
// engine is stopped only then. A caller that marks an engine draining the
// moment it decides to stop it (BeginStop) does not for such a change: the
// stop begins only once the model is there.
func FetchesFirst(c reconcile.Change) bool {
	return c.Action == reconcile.Replace && c.PID != 0 && c.Spec != nil && c.Spec.Model.Source != ""
}

// leavingEngine is the engine of a replace that fetches first, which other
// starts on its GPUs wait for: stopped is closed once it is stopped, or
// once the replace ended without stopping it.
type leavingEngine struct {
	devices []int
	stopped chan struct{}
}

// devicesOf is the GPUs the running engine of a change holds: its recorded
// spec's mask, or the change's.
func (x *Executor) devicesOf(c reconcile.Change) []int {
	x.mu.Lock()
	defer x.mu.Unlock()
	if rec, ok := x.st.Engines[c.Pool]; ok && rec.Spec != nil {
		return rec.Spec.Devices
	}
	return c.Devices
}

// awaitLeaving returns what a start waits for before it books GPU memory:
// the stops of the replaced engines that hold a GPU of its mask and wait
// for their models (nil when none do).
func awaitLeaving(c reconcile.Change, leaving map[string]*leavingEngine) func(context.Context) error {
	if c.Spec == nil {
		return nil
	}
	var wait []chan struct{}
	for pool, l := range leaving {
		if pool != c.Pool && slices.ContainsFunc(l.devices, func(d int) bool { return slices.Contains(c.Spec.Devices, d) }) {
			wait = append(wait, l.stopped)
		}
	}
	if len(wait) == 0 {
		return nil
	}
	return func(ctx context.Context) error {
		for _, ch := range wait {
			select {
			case <-ch:
			case <-ctx.Done():
				return ctx.Err()
			}
		}
		return nil
	}
}

// replaceFetchingFirst runs a replace whose new spec's model has a source
// (FetchesFirst): the model is got into the cache while the old engine
// serves, and the engine is stopped only once it is there, then the new
// one started. A failed fetch stops nothing: the engine serves the old spec
// on, and the failure is the replace's (replaceFailed).
func (x *Executor) replaceFetchingFirst(ctx context.Context, c reconcile.Change, l *leavingEngine, failStop func(reconcile.Change, error) Outcome) Outcome {
	gone := sync.OnceFunc(func() { close(l.stopped) })
	defer gone()
	local, f := x.fetchModel(ctx, c.Spec, c.PID)
	if f != nil {
		return x.outcome(c, x.replaceFailed(ctx, c, *f))
	}
	if ctx.Err() != nil {
		// Interrupted with the model in the cache: nothing was stopped.
		return x.outcome(c, x.replaceFailed(ctx, c, restart.Failure{}))
	}
	if err := x.stop(ctx, c); err != nil {
		return failStop(c, err)
	}
	gone()
	return x.start(ctx, c, startWith{model: local})
}

// replaceFailed records the failure of a replace whose start failed before
// it stopped the pool's engine, which serves the old spec on: a failure for
// the backoff and the breaker (the first try of a new spec closes the
// breaker and clears the backoff, as a config change does), and the spec
// marked on the engine's record (ReplaceFailed), so that the lifecycle
// tries it again when the backoff allows, not at once. The outcome's phase
// is the lifecycle's for the running engine. When ctx is done (an
// interrupted apply), nothing failed: nothing is recorded.
func (x *Executor) replaceFailed(ctx context.Context, c reconcile.Change, f restart.Failure) Outcome {
	pool := c.Spec
	x.mu.Lock()
	rec, recorded := x.st.Engines[pool.ID]
	x.mu.Unlock()
	if ctx.Err() != nil {
		phase := x.servingPhase(c, rec, x.history(pool.ID))
		x.report(pool.ID, phase, nil, "interrupted; engine pid %d serves the old spec on", c.PID)
		return Outcome{Pool: pool.ID, Phase: phase, KeptRunning: true}
	}
	t := x.tracker(pool)
	if rec.ReplaceFailed != c.SpecHash {
		t.ConfigChanged(x.now()) // its first try: the old spec's failures are not the new one's
	}
	t.Failed(x.now(), f)
	if err := x.mutate(func(st *state.State) {
		st.Pools[pool.ID] = t.Record()
		if r, ok := st.Engines[pool.ID]; ok {
			r.ReplaceFailed = c.SpecHash
			st.Engines[pool.ID] = r
		}
	}); err != nil {
		x.report(pool.ID, reconcile.Unready, nil, "could not record the failure in the state file: %v", err)
	}
	if recorded {
		rec.ReplaceFailed = c.SpecHash
	}
	if f.Hint == "" {
		f.Hint = restart.Hint(f.Class)
	}
	o := Outcome{Pool: pool.ID, Phase: x.servingPhase(c, rec, t.Record()), Failure: &f, NotBefore: t.NextRetry(), KeptRunning: true}
	if t.BreakerState() == restart.Open {
		o.NotBefore = t.BreakerRetryAt()
	}
	x.report(pool.ID, o.Phase, &f, "%s; engine pid %d serves the old spec on; next try %s", f.Message, c.PID, describeDecision(t.Decide(x.now())))
	return o
}

// servingPhase is the lifecycle's phase of a pool whose engine (the
// change's pid, recorded as rec) runs on after its replace failed.
func (x *Executor) servingPhase(c reconcile.Change, rec reconcile.EngineRecord, history restart.Record) reconcile.Phase {
	e := reconcile.WithRecord(nil, &rec)
	if rec.PID != c.PID {
		// Found by its marker, not recorded with its pid.
		e = &reconcile.Engine{Pool: c.Pool, PID: c.PID, SpecHash: rec.SpecHash, Alive: true, Health: reconcile.HealthOK}
	}
	return reconcile.Lifecycle(reconcile.Facts{Spec: c.Spec, Engine: e, History: history}, x.now()).Phase
}

// stop stops the running engine of a delete or replace.
func (x *Executor) stop(ctx context.Context, c reconcile.Change) error {
	x.mu.Lock()
	rec := x.st.Engines[c.Pool]
	x.mu.Unlock()
	if c.PID != 0 {
		if rec.PID != c.PID {
			// Found by its marker, not (or not yet) recorded with its pid:
			// the driver reads its identity from /proc.
			rec = reconcile.EngineRecord{Pool: c.Pool, PID: c.PID, Spec: rec.Spec}
		}
		x.markDraining(c.Pool, c.PID)
		x.report(c.Pool, reconcile.Draining, nil, "stopping engine pid %d", c.PID)
		// A restart stops an engine that fails its health check: a failure,
		// unless one was recorded against it already (a driver error).
		if c.Action == reconcile.Restart && c.Spec != nil && !reconcile.FailedSinceReady(rec.ReadyAt, x.history(c.Pool)) {
			// Alive but failing its health check: a failure, for backoff and breaker.
			t := x.tracker(c.Spec)
			if !rec.ReadyAt.IsZero() {
				t.Ready(rec.ReadyAt)
			}
			t.Failed(x.now(), restart.Failure{Class: restart.ClassHealthFailed,
				Message: fmt.Sprintf("engine pid %d fails its health check; log: %s", c.PID, rec.LogPath)})
			if err := x.saveTracker(c.Pool, t); err != nil {
				return err
			}
		}
		p, err := x.Engines.Adopt(ctx, RefOf(rec))
		switch {
		case err == nil:
			policy := restartPolicyOf(rec.Spec, c.Spec)
			// A stop that has begun finishes, drain and grace included, even if apply is interrupted.
			stopCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), policy.DrainTimeout+policy.StopGrace+30*time.Second)
			defer cancel()
			report, err := p.Stop(stopCtx, policy.DrainTimeout, policy.StopGrace)
			if report.Killed {
				x.emit(Event{Pool: c.Pool, Phase: reconcile.Draining, Killed: true, PID: c.PID, Grace: policy.StopGrace,
					Message: fmt.Sprintf("engine pid %d outlived its stop grace of %v after SIGTERM: killed with SIGKILL", c.PID, policy.StopGrace)})
			}
			if err != nil {
				return fmt.Errorf("stop pool %s (pid %d): %w", c.Pool, c.PID, err)
			}
		case !errors.Is(err, engine.ErrGone):
			// Still there but not what was recorded: keep the record, do not guess.
			return fmt.Errorf("stop pool %s: engine pid %d: %w", c.Pool, c.PID, err)
		}
	}
	if err := x.Engines.Cleanup(ctx, RefOf(rec)); err != nil {
		return fmt.Errorf("stop pool %s: %w", c.Pool, err)
	}
	err := x.mutate(func(st *state.State) {
		delete(st.Engines, c.Pool)
		if c.Action == reconcile.Delete {
			delete(st.Pools, c.Pool)
		}
	})
	x.step(c.Pool, StepStopped)
	return err
}

func restartPolicyOf(specs ...*schema.Pool) schema.RestartPolicy {
	for _, s := range specs {
		if s != nil {
			return s.Restart
		}
	}
	return reconcile.DefaultRestartPolicy()
}

// update records a spec change that needs no restart.
// update records a spec change that needs no restart; the engine is Ready
// only if it was (one still loading, or never verified, is waited on).
func (x *Executor) update(ctx context.Context, c reconcile.Change) Outcome {
	var rec reconcile.EngineRecord
	if err := x.mutate(func(st *state.State) {
		rec = st.Engines[c.Pool]
		rec.Spec, rec.SpecHash = c.Spec, c.SpecHash
		st.Engines[c.Pool] = rec
	}); err != nil {
		return Outcome{Pool: c.Pool, Action: reconcile.Update, Phase: reconcile.Unready, Failure: &restart.Failure{Class: "state_write_failed", Message: err.Error()}}
	}
	p, err := x.Engines.Adopt(ctx, RefOf(rec))
	if err != nil {
		return x.outcome(c, x.failed(ctx, c.Spec, restart.Failure{Class: restart.ClassExited, Message: fmt.Sprintf("engine pid %d: %v", rec.PID, err)}))
	}
	if !rec.ReadyAt.IsZero() && p.Health(ctx) == engine.HealthOK {
		x.report(c.Pool, reconcile.Ready, nil, "updated in place; the engine keeps running")
		return Outcome{Pool: c.Pool, Action: reconcile.Update, Phase: reconcile.Ready, PID: c.PID}
	}
	x.report(c.Pool, reconcile.Preloading, nil, "updated in place; engine pid %d is still loading or unverified", rec.PID)
	return x.outcome(c, x.awaitReady(ctx, c.Spec, p, rec.StartedAt))
}

func (x *Executor) blocked(ctx context.Context, c reconcile.Change) Outcome {
	if (c.Blocker.Class == reconcile.ClassInsufficientVRAM || c.Blocker.Class == reconcile.ClassInsufficientRAM) && c.Spec != nil {
		// Found before anything was spawned: a failure for backoff and breaker all the same.
		o := x.failed(ctx, c.Spec, restart.Failure{Class: c.Blocker.Class, Message: c.Blocker.Message, Hint: c.Blocker.Hint})
		o.Action = reconcile.Blocked
		return o
	}
	f := &restart.Failure{Class: c.Blocker.Class, Message: c.Blocker.Message, Hint: c.Blocker.Hint}
	phase := reconcile.Unready
	if c.Spec != nil {
		phase = reconcile.Lifecycle(reconcile.Facts{Spec: c.Spec, History: x.history(c.Pool), Blocked: c.Blocker.Class}, x.now()).Phase
	}
	x.report(c.Pool, phase, f, "blocked: %s", c.Blocker.Message)
	return Outcome{Pool: c.Pool, Action: reconcile.Blocked, Phase: phase, Failure: f}
}

// RefOf is what a driver needs of an engine's record to adopt the engine
// or clean up after it.
func RefOf(r reconcile.EngineRecord) engine.Ref {
	ref := engine.Ref{Pool: r.Pool, PID: r.PID, StartTicks: r.StartTicks, Port: r.Port, LogPath: r.LogPath, Argv: r.Argv}
	if r.Spec != nil {
		ref.Engine = r.Spec.Engine
	}
	return ref
}

// history returns the pool's restart record.
func (x *Executor) history(pool string) restart.Record {
	x.mu.Lock()
	defer x.mu.Unlock()
	return x.st.Pools[pool]
}

// tracker restores a pool's backoff and breaker from the state.
func (x *Executor) tracker(pool *schema.Pool) *restart.Tracker {
	x.mu.Lock()
	defer x.mu.Unlock()
	return restart.FromRecord(pool.Restart, x.st.Pools[pool.ID], x.Rand)
}

func (x *Executor) saveTracker(pool string, t *restart.Tracker) error {
	return x.mutate(func(st *state.State) { st.Pools[pool] = t.Record() })
}

// failed records a failure in the pool's tracker and reports it. When ctx
// is done (an interrupted apply), nothing failed: nothing is recorded.
func (x *Executor) failed(ctx context.Context, pool *schema.Pool, f restart.Failure) Outcome {
	if ctx.Err() != nil {
		x.report(pool.ID, reconcile.Unready, nil, "interrupted")
		return Outcome{Pool: pool.ID, Phase: reconcile.Unready}
	}
	if f.Class == restart.ClassInsufficientVRAM && f.Hint == "" {
		f.Hint = reconcile.VRAMHint(pool)
	}
	if f.Class == restart.ClassInsufficientRAM && f.Hint == "" {
		f.Hint = reconcile.RAMHint(pool)
	}
	t := x.tracker(pool)
	phase := x.recordFailure(pool, t, f)
	fc := f
	if fc.Hint == "" {
		fc.Hint = restart.Hint(f.Class)
	}
	d := t.Decide(x.now())
	x.report(pool.ID, phase, &fc, "%s; next try %s", f.Message, describeDecision(d))
	return Outcome{Pool: pool.ID, Phase: phase, Failure: &fc}
}

// recordFailure records a failure in the pool's tracker and saves it; it
// returns the pool's phase after it, as the lifecycle says.
func (x *Executor) recordFailure(pool *schema.Pool, t *restart.Tracker, f restart.Failure) reconcile.Phase {
	t.Failed(x.now(), f)
	if err := x.saveTracker(pool.ID, t); err != nil {
		x.report(pool.ID, reconcile.Unready, nil, "could not record the failure in the state file: %v", err)
	}
	return x.phaseAfter(pool, t)
}

// phaseAfter is the pool's phase once its engine is gone with the history
// t: the lifecycle's answer (Failed once the breaker is open), for the
// events the executor reports. The executor decides no phase of its own.
func (x *Executor) phaseAfter(pool *schema.Pool, t *restart.Tracker) reconcile.Phase {
	return reconcile.Lifecycle(reconcile.Facts{Spec: pool, History: t.Record()}, x.now()).Phase
}

// markDraining records that a stop of the pool's engine pid begins now:
// from this moment the pool is not ready anywhere (the lifecycle says
// Draining), in the API and metrics at once and in the state file, so that
// status and a daemon restarted in the middle see it too.
func (x *Executor) markDraining(pool string, pid int) {
	_ = x.mutate(func(st *state.State) {
		if rec, ok := st.Engines[pool]; ok && rec.PID == pid && rec.DrainingSince.IsZero() {
			rec.DrainingSince = x.now()
			st.Engines[pool] = rec
		}
	})
}

// BeginStop marks the pool's engine pid as draining in memory, the moment
// the caller decides to stop it (the stop saves it): between that decision
// and the stop's first step, nothing shows the pool ready.
func (x *Executor) BeginStop(pool string, pid int) {
	if x.load() != nil {
		return
	}
	x.mu.Lock()
	defer x.mu.Unlock()
	if rec, ok := x.st.Engines[pool]; ok && rec.PID == pid && pid != 0 && rec.DrainingSince.IsZero() {
		rec.DrainingSince = x.now()
		x.st.Engines[pool] = rec
		x.publish()
	}
}

func describeDecision(d restart.Decision) string {
	switch d.Action {
	case restart.Blocked:
		return "only after a reset or a config change (circuit open)"
	case restart.Wait:
		if d.Delay < time.Second {
			return fmt.Sprintf("in %v", d.Delay.Round(time.Millisecond))
		}
		return fmt.Sprintf("in %v", d.Delay.Round(time.Second))
	default:
		return "now"
	}
}
