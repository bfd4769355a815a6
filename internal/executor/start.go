package executor

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/poolmanagerd/pool-managerd/drivers/engine"
	"github.com/poolmanagerd/pool-managerd/drivers/engine/supervisor"
	"github.com/poolmanagerd/pool-managerd/drivers/engine/vram"
	"github.com/poolmanagerd/pool-managerd/drivers/gpu"
	"github.com/poolmanagerd/pool-managerd/internal/state"
	"github.com/poolmanagerd/pool-managerd/reconcile"
	"github.com/poolmanagerd/pool-managerd/reconcile/restart"
	"github.com/poolmanagerd/pool-managerd/schema"
)

// start runs one pool's start: the model fetched (model.source), the VRAM
// check (nothing is spawned when the GPUs lack the memory), the intent
// recorded, the spawn with the marker, the pid recorded, the preload watched
// until healthy, the placement verified.
func (x *Executor) start(ctx context.Context, c reconcile.Change, with startWith) Outcome {
	pool := c.Spec
	if c.Action == reconcile.Adopt {
		return x.adopt(ctx, c)
	}
	if o, deferred := x.settleDeath(ctx, c); deferred {
		return x.outcome(c, o)
	}
	// spawn is the spec the engine is started with: for a fetched model, a
	// copy whose model path is the model's place in the cache. The record
	// and the spec hash keep the pool's own spec (its source and digest).
	spawn := pool
	needs, ram := c.Need, c.RAM
	if pool.Model.Source != "" {
		local, f := with.model, (*restart.Failure)(nil)
		if local == "" {
			local, f = x.fetchModel(ctx, pool, 0)
		}
		if f != nil {
			o := x.failed(ctx, pool, *f)
			if c.Action == reconcile.Replace && ctx.Err() == nil {
				// Its engine is gone (found dead): the next try of this
				// spec waits for the backoff all the same.
				x.markReplaceFailed(pool.ID, c.SpecHash)
			}
			return x.outcome(c, o)
		}
		cp := *pool
		cp.Model.Path = local
		spawn = &cp
		if len(needs) == 0 {
			// The plan could not check the VRAM need: the model was not
			// here yet. It is now.
			if needs, ram, f = x.fetchedNeed(ctx, spawn, ram); f != nil {
				return x.outcome(c, x.failed(ctx, pool, *f))
			}
		}
	}
	if with.await != nil {
		if err := with.await(ctx); err != nil {
			return x.outcome(c, x.failed(ctx, pool, restart.Failure{Class: restart.ClassSpawnFailed, Message: err.Error()}))
		}
	}
	masked, err := x.maskedGPUs(ctx, pool)
	if err != nil {
		return x.outcome(c, x.failed(ctx, pool, restart.Failure{Class: restart.ClassDriverReset, Message: err.Error()}))
	}
	host, err := x.hostMemory(ctx)
	if err != nil {
		return x.outcome(c, x.failed(ctx, pool, restart.Failure{Class: restart.ClassSpawnFailed, Message: err.Error()}))
	}
	if f := x.reserve(pool, needs, masked, ram, host); f != nil {
		return x.outcome(c, x.failed(ctx, pool, *f))
	}
	defer x.unreserve(pool.ID)
	now := x.now()
	var gen int64
	if err := x.mutate(func(st *state.State) {
		gen = st.Engines[pool.ID].Generation + 1
		st.Engines[pool.ID] = reconcile.EngineRecord{Pool: pool.ID, Generation: gen, SpecHash: c.SpecHash, Spec: pool, Intent: true, StartedAt: now}
	}); err != nil {
		return x.outcome(c, x.failed(ctx, pool, restart.Failure{Class: restart.ClassSpawnFailed, Message: "record the start: " + err.Error()}))
	}
	x.step(pool.ID, StepIntent)
	t := x.tracker(pool)
	restarts := t.Restarts()
	t.Started(now)
	_ = x.saveTracker(pool.ID, t)
	marker := fmt.Sprintf("%s/%s/%d/%s", x.Node, pool.ID, gen, c.SpecHash)
	ev := Event{Pool: pool.ID, Phase: reconcile.Preloading, Engine: pool.Engine, Spawn: true,
		Message: fmt.Sprintf("starting %s on %s", pool.Engine, reconcile.GPUWord(pool.Devices))}
	if f := t.LastFailure(); t.Restarts() > restarts && f != nil {
		ev.Restart = f.Class
		ev.Message += fmt.Sprintf(" (restart %d, after %s)", t.Restarts(), f.Class)
	}
	x.emit(ev)
	var total uint64
	for _, n := range needs {
		total += n.Need
	}
	req := engine.StartRequest{Pool: spawn, GPUs: masked, Marker: marker, Need: total}
	if ram != nil {
		req.RAM = ram.Need
	}
	p, err := x.Engines.Start(ctx, req)
	if err != nil {
		_ = x.mutate(func(st *state.State) { delete(st.Engines, pool.ID) })
		return x.outcome(c, x.failed(ctx, pool, restart.Failure{Class: restart.ClassSpawnFailed, Message: err.Error()}))
	}
	x.spawned(pool.ID, p)
	x.step(pool.ID, StepSpawned)
	if err := x.mutate(func(st *state.State) {
		rec := st.Engines[pool.ID]
		rec.PID, rec.StartTicks, rec.Port, rec.LogPath, rec.Argv, rec.Intent = p.PID(), p.StartTicks(), p.Port(), p.LogPath(), p.Argv(), false
		st.Engines[pool.ID] = rec
	}); err != nil {
		return x.outcome(c, x.failed(ctx, pool, restart.Failure{Class: restart.ClassSpawnFailed, Message: "record the engine: " + err.Error()}))
	}
	x.step(pool.ID, StepRecorded)
	x.report(pool.ID, reconcile.Preloading, nil, "engine pid %d on port %d is loading its model", p.PID(), p.Port())
	return x.outcome(c, x.awaitReady(ctx, pool, p, now))
}

// startWith is what a start is given besides its change.
type startWith struct {
	// model is the path of the pool's model in the cache, when it was got
	// before the start (a replace that fetches first); empty otherwise.
	model string
	// await, when set, is waited for before GPU memory is booked: the
	// stops of other engines on the pool's GPUs.
	await func(context.Context) error
}

// fetchModel gets the pool's model into the cache (Models) and returns its
// path there. While a download runs the pool is Fetching (Fetches), or, for
// a replace, serving its old spec with engine pid serving; the download's
// first and last reports are events.
func (x *Executor) fetchModel(ctx context.Context, pool *schema.Pool, serving int) (string, *restart.Failure) {
	if x.Models == nil {
		return "", &restart.Failure{Class: restart.ClassModelNotCached,
			Message: fmt.Sprintf("the pool's model comes from %s, and this pool-managerd has no model cache to fetch it into", pool.Model.Source),
			Hint:    "run the pool with pool-managerd serve or apply, which fetch models into --model-cache"}
	}
	var once sync.Once
	var mu sync.Mutex
	finished := false // no report after Ensure returned counts
	began := x.now()
	meanwhile := ""
	if serving != 0 {
		meanwhile = fmt.Sprintf("; engine pid %d serves the old spec until the model is in the cache", serving)
	}
	progress := func(f reconcile.Fetch) {
		mu.Lock()
		if finished {
			mu.Unlock()
			return
		}
		x.setFetch(pool.ID, &f)
		mu.Unlock()
		once.Do(func() {
			x.emit(Event{Pool: pool.ID, Phase: reconcile.Fetching, Engine: pool.Engine, FetchBegins: true,
				Message: fmt.Sprintf("fetching model %s (sha256 %s)%s", pool.Model.Source, shortDigest(CacheDigest(pool.Model)), meanwhile)})
		})
	}
	local, err := x.Models.Ensure(ctx, pool, progress)
	mu.Lock()
	finished = true
	fetched := x.setFetch(pool.ID, nil)
	mu.Unlock()
	if err != nil {
		f := FetchFailure(err)
		return "", &f
	}
	if fetched != nil {
		x.emit(Event{Pool: pool.ID, Phase: reconcile.Fetching, Engine: pool.Engine, FetchEnds: true,
			Message: fmt.Sprintf("model fetched and verified: %.1f MiB in %v, %s", float64(fetched.Done)/(1<<20),
				x.now().Sub(began).Round(time.Millisecond), local)})
	}
	return local, nil
}

// fetchedNeed estimates a fetched model's VRAM need, and its host RAM need
// when the plan had none, from the model now in the cache (spawn is the
// spec with its cache path).
func (x *Executor) fetchedNeed(ctx context.Context, spawn *schema.Pool, ram *reconcile.RAMNeed) ([]reconcile.GPUNeed, *reconcile.RAMNeed, *restart.Failure) {
	est, err := vram.For(ctx, spawn)
	if err != nil {
		return nil, ram, &restart.Failure{Class: restart.ClassModelCorrupt, Message: "estimate the VRAM need of the fetched model: " + err.Error()}
	}
	needs := make([]reconcile.GPUNeed, 0, len(est.PerGPU))
	for i, b := range est.PerGPU {
		if i < len(spawn.Devices) {
			needs = append(needs, reconcile.GPUNeed{Index: spawn.Devices[i], Need: b})
		}
	}
	if ram == nil {
		if n, src, known := reconcile.PoolRAM(spawn, reconcile.Need{PerGPU: est.PerGPU, Source: est.Source}); known {
			ram = &reconcile.RAMNeed{Need: n, Source: src}
		}
	}
	return needs, ram, nil
}

func shortDigest(d string) string {
	if len(d) > 12 {
		return d[:12] + "…"
	}
	return d
}

// settleDeath cleans up after a recorded engine that is gone (its leftover
// workers) and records its death when nothing has yet: then a restart
// starts nothing now, and its outcome says when the backoff allows it
// (NotBefore); the daemon looks again then, apply waits. A replace (the
// config changed, which closes the breaker and clears the backoff) goes on.
// The executor decides no phase and waits out no backoff: the lifecycle
// does the one, the caller the other.
func (x *Executor) settleDeath(ctx context.Context, c reconcile.Change) (Outcome, bool) {
	pool := c.Spec
	x.mu.Lock()
	rec, known := x.st.Engines[pool.ID]
	history := x.st.Pools[pool.ID]
	x.mu.Unlock()
	if c.Action == reconcile.Restart && c.PID != 0 {
		// Its engine failed its health check and was stopped, which recorded
		// that failure: the backoff says when to start again.
		return x.deferred(pool, x.tracker(pool)), true
	}
	// A recorded engine that is gone (the plan stops none: c.PID is 0).
	if dead := known && c.PID == 0 && rec.PID != 0 && (c.Action == reconcile.Restart || c.Action == reconcile.Replace); dead {
		if err := x.Engines.Cleanup(ctx, RefOf(rec)); err != nil {
			return x.failed(ctx, pool, restart.Failure{Class: restart.ClassSpawnFailed, Message: err.Error()}), true
		}
		if reconcile.ExitUnrecorded(rec.ReadyAt, history) {
			// It died after it was Ready, and nothing has counted that yet.
			o := x.recordExit(pool, rec, DeathFailure(rec))
			if c.Action == reconcile.Restart {
				return o, true
			}
		}
	}
	if c.Action == reconcile.Replace && rec.SpecHash != c.SpecHash && rec.ReplaceFailed != c.SpecHash {
		// A config change closes the breaker and clears the backoff, once:
		// the failed tries of this spec (ReplaceFailed) count.
		t := x.tracker(pool)
		t.ConfigChanged(x.now())
		_ = x.saveTracker(pool.ID, t)
	}
	return Outcome{}, false
}

// markReplaceFailed marks on the pool's engine record, when it has one,
// that a start of the spec specHash failed (EngineRecord.ReplaceFailed).
func (x *Executor) markReplaceFailed(pool, specHash string) {
	_ = x.mutate(func(st *state.State) {
		if r, ok := st.Engines[pool]; ok && r.SpecHash != specHash {
			r.ReplaceFailed = specHash
			st.Engines[pool] = r
		}
	})
}

// RecordExit records the failure of a pool's engine that exited by itself
// after it was Ready, as the daemon saw it exit: classified from its exit
// status (signaled with the signal's name, oom_killed, an exit code) and
// its log (a CUDA error). Its record stays, dead, so that the next plan
// restarts it once its backoff allows. An exit already recorded, or of an
// engine that is no longer the pool's, changes nothing.
func (x *Executor) RecordExit(ctx context.Context, pool *schema.Pool, pid int, exit engine.ExitStatus) Outcome {
	if err := x.load(); err != nil {
		return Outcome{Pool: pool.ID, Phase: reconcile.Unready, Failure: &restart.Failure{Class: "state_read_failed", Message: err.Error()}}
	}
	x.mu.Lock()
	rec, known := x.st.Engines[pool.ID]
	history := x.st.Pools[pool.ID]
	x.mu.Unlock()
	if !known || rec.PID != pid || !rec.DrainingSince.IsZero() || !reconcile.ExitUnrecorded(rec.ReadyAt, history) {
		return Outcome{Pool: pool.ID}
	}
	_ = x.Engines.Cleanup(ctx, RefOf(rec))
	return x.recordExit(pool, rec, exitFailure(pid, exit, logTail(rec), rec.LogPath, "after it was Ready"))
}

// recordExit records an engine's death after Ready as a failure of its pool.
func (x *Executor) recordExit(pool *schema.Pool, rec reconcile.EngineRecord, f restart.Failure) Outcome {
	t := x.tracker(pool)
	t.Ready(rec.ReadyAt)
	t.Failed(x.now(), f)
	if err := x.saveTracker(pool.ID, t); err != nil {
		x.report(pool.ID, reconcile.Unready, nil, "could not record the failure in the state file: %v", err)
	}
	o := x.deferred(pool, t)
	x.report(pool.ID, o.Phase, fc(t), "%s; next try %s", f.Message, describeDecision(t.Decide(x.now())))
	if o.Failure.Class == reconcile.ClassCircuitOpen {
		x.report(pool.ID, o.Phase, o.Failure, "%s", o.Failure.Message)
	}
	return o
}

// fc is the tracker's last failure with its hint.
func fc(t *restart.Tracker) *restart.Failure {
	f := t.LastFailure()
	if f != nil && f.Hint == "" {
		f.Hint = restart.Hint(f.Class)
	}
	return f
}

// deferred is the outcome of a start that did not start because a failure
// was just recorded: when the backoff, or the breaker's cool-down, allows it.
// An open breaker's outcome is the breaker's, with its hint.
func (x *Executor) deferred(pool *schema.Pool, t *restart.Tracker) Outcome {
	o := Outcome{Pool: pool.ID, Phase: x.phaseAfter(pool, t), Failure: t.LastFailure(), NotBefore: t.NextRetry()}
	if t.BreakerState() == restart.Open {
		o.NotBefore = t.BreakerRetryAt()
		o.Failure = &restart.Failure{Class: reconcile.ClassCircuitOpen, Message: restart.BreakerMessage(pool.ID, t.FailuresInWindow(x.now()), pool.Restart.Breaker.Window),
			Hint: fmt.Sprintf("fix the config or run pool-managerd reset %s", pool.ID)}
	}
	return o
}

// DeathFailure classifies, from its log, the death of a recorded engine
// found gone after it was Ready, whose exit status no one could read.
func DeathFailure(rec reconcile.EngineRecord) restart.Failure {
	return exitFailure(rec.PID, engine.ExitStatus{Code: -1}, logTail(rec), rec.LogPath, "after it was Ready")
}

// logTail reads what a recorded engine printed since its last start.
func logTail(rec reconcile.EngineRecord) string {
	if rec.LogPath == "" {
		return ""
	}
	return supervisor.LogSinceStart(rec.LogPath, 16<<10)
}

func (x *Executor) outcome(c reconcile.Change, o Outcome) Outcome {
	o.Action = c.Action
	return o
}

// maskedGPUs returns the pool's GPUs as observed now, in device order.
func (x *Executor) maskedGPUs(ctx context.Context, pool *schema.Pool) ([]gpu.Device, error) {
	devices, err := x.GPUs.Devices(ctx)
	if err != nil {
		return nil, fmt.Errorf("read GPUs: %w", err)
	}
	out := make([]gpu.Device, 0, len(pool.Devices))
	for _, idx := range pool.Devices {
		found := false
		for _, d := range devices {
			if d.Index == idx {
				if d.Lost {
					return nil, fmt.Errorf("GPU %d is lost", idx)
				}
				out = append(out, d)
				found = true
			}
		}
		if !found {
			return nil, fmt.Errorf("GPU %d is not on this node", idx)
		}
	}
	return out, nil
}

// hostMemory reads the host's memory now; nil when it is not observed.
func (x *Executor) hostMemory(ctx context.Context) (*reconcile.HostMemory, error) {
	if x.Host == nil {
		return nil, nil
	}
	h, err := x.Host(ctx)
	if err != nil {
		return nil, fmt.Errorf("read host memory: %w", err)
	}
	return h, nil
}

// reserve fails fast when a masked GPU lacks the memory the pool needs, or
// the host the RAM (when the plan gave its need and the host's memory is
// observed), counting what other starts in flight have booked but do not
// yet visibly hold; else it books the need.
func (x *Executor) reserve(pool *schema.Pool, need []reconcile.GPUNeed, masked []gpu.Device, ram *reconcile.RAMNeed, host *reconcile.HostMemory) *restart.Failure {
	x.mu.Lock()
	defer x.mu.Unlock()
	if x.inflight == nil {
		x.inflight = map[string]*inflightStart{}
	}
	for i, n := range need {
		if i >= len(masked) {
			break
		}
		d := masked[i]
		free := d.MemoryFree - min(d.MemoryFree, x.pendingOn(d, pool.ID))
		if n.Need > free {
			return &restart.Failure{Class: restart.ClassInsufficientVRAM,
				Message: fmt.Sprintf("insufficient VRAM on GPU %d (%s): needs %s at ctx %d, %s free", d.Index, reconcile.GPUSize(d.Name, d.MemoryTotal), reconcile.GiB(n.Need), pool.Model.Ctx, reconcile.GiB(free))}
		}
	}
	if ram != nil && host != nil {
		avail := host.Available - min(host.Available, x.pendingRAM(host, pool.ID))
		if ram.Need > avail {
			short := *ram
			short.Available = avail
			return &restart.Failure{Class: restart.ClassInsufficientRAM, Message: reconcile.RAMShortage(pool, short, host.Total)}
		}
	}
	booking := &inflightStart{need: map[int]uint64{}}
	if ram != nil {
		booking.ram = ram.Need
	}
	for _, n := range need {
		booking.need[n.Index] += n.Need
	}
	x.inflight[pool.ID] = booking
	return nil
}

// pendingOn is the memory other starts in flight booked on a GPU and do not
// yet hold there (an engine allocates while it loads). Called with x.mu held.
func (x *Executor) pendingOn(d gpu.Device, except string) uint64 {
	var pending uint64
	for id, b := range x.inflight {
		booked := b.need[d.Index]
		if id == except || booked == 0 {
			continue
		}
		var held uint64
		if b.proc != nil {
			session := map[int]bool{b.proc.PID(): true}
			for _, pid := range b.proc.Session() {
				session[pid] = true
			}
			for _, p := range d.Processes {
				if session[p.PID] {
					held += p.UsedBytes
				}
			}
		}
		pending += booked - min(booked, held)
	}
	return pending
}

// pendingRAM is the host RAM other starts in flight booked and do not yet
// visibly hold: on a simulated node an engine holds its need from its
// spawn (host.Held); on a real host the booking stands until the start
// ends, since an engine's memory grows while it loads. Called with x.mu held.
func (x *Executor) pendingRAM(host *reconcile.HostMemory, except string) uint64 {
	var pending uint64
	for id, b := range x.inflight {
		if id == except || b.ram == 0 {
			continue
		}
		var held uint64
		if b.proc != nil && host.Held != nil {
			held = host.Held[b.proc.PID()]
			for _, pid := range b.proc.Session() {
				if pid != b.proc.PID() {
					held += host.Held[pid]
				}
			}
		}
		pending += b.ram - min(b.ram, held)
	}
	return pending
}

// spawned attaches a start's engine to its booking.
func (x *Executor) spawned(pool string, p engine.Process) {
	x.mu.Lock()
	defer x.mu.Unlock()
	if b := x.inflight[pool]; b != nil {
		b.proc = p
	}
}

func (x *Executor) unreserve(pool string) {
	x.mu.Lock()
	defer x.mu.Unlock()
	delete(x.inflight, pool)
}

// awaitReady watches a preloading engine until its health check passes and
// its GPU memory is where its mask says, or it fails.
func (x *Executor) awaitReady(ctx context.Context, pool *schema.Pool, p engine.Process, startedAt time.Time) Outcome {
	every := x.HealthEvery
	if every <= 0 || every > 100*time.Millisecond {
		every = 100 * time.Millisecond
	}
	deadline := startedAt.Add(pool.Restart.StartupTimeout)
	tick := time.NewTicker(every)
	defer tick.Stop()
	l := Loading{Pool: pool.ID, Engine: pool.Engine, PID: p.PID(), Since: startedAt}
	x.setLoading(l, false)
	defer x.setLoading(l, true)
	for {
		select {
		case <-ctx.Done():
			return Outcome{Pool: pool.ID, Phase: reconcile.Preloading, PID: p.PID()}
		case <-p.Exited():
			return x.failed(ctx, pool, exitFailure(p.PID(), p.Exit(), p.LogTail(), p.LogPath(), "while loading its model"))
		case <-tick.C:
		}
		l.Health = p.Health(ctx)
		if l.Health == engine.HealthOK {
			break
		}
		x.setLoading(l, false)
		if x.now().After(deadline) {
			_, _ = p.Stop(ctx, 0, pool.Restart.StopGrace)
			return x.failed(ctx, pool, restart.Failure{Class: restart.ClassHealthTimeout,
				Message: fmt.Sprintf("engine pid %d did not pass its health check within %v", p.PID(), pool.Restart.StartupTimeout)})
		}
	}
	x.setLoading(l, true) // loaded: its placement is checked next
	x.step(pool.ID, StepHealthy)
	if f := x.checkPlacement(ctx, pool, p); f != nil {
		select {
		case <-p.Exited():
			// It died meanwhile: that, not the memory it no longer holds, is the failure.
			return x.failed(ctx, pool, exitFailure(p.PID(), p.Exit(), p.LogTail(), p.LogPath(), "right after its health check passed"))
		default:
		}
		_, _ = p.Stop(ctx, 0, pool.Restart.StopGrace)
		return x.failed(ctx, pool, *f)
	}
	now := x.now()
	t := x.tracker(pool)
	t.Ready(now)
	_ = x.mutate(func(st *state.State) {
		rec := st.Engines[pool.ID]
		rec.ReadyAt = now
		st.Engines[pool.ID] = rec
		st.Pools[pool.ID] = t.Record()
	})
	x.step(pool.ID, StepReadyRecorded)
	x.emit(Event{Pool: pool.ID, Phase: reconcile.Ready, Engine: pool.Engine, Loaded: now.Sub(startedAt),
		Message: fmt.Sprintf("Ready: engine pid %d on port %d, model loaded in %v", p.PID(), p.Port(), now.Sub(startedAt).Round(time.Millisecond))})
	return Outcome{Pool: pool.ID, Phase: reconcile.Ready, PID: p.PID()}
}

// exitFailure classifies an engine's exit: out of GPU memory or a CUDA
// error in its log, the kernel's OOM killer, a signal, an exit code. An
// exit status that cannot be read (an adopted engine is not this process's
// child) is an exit "status unknown".
func exitFailure(pid int, exit engine.ExitStatus, tail, logPath, when string) restart.Failure {
	with := func(class, msg string) restart.Failure {
		f := restart.Failure{Class: class, Message: msg, Signal: exit.Signal}
		if exit.Signal == "" && exit.Code >= 0 {
			f.ExitCode = exit.Code
		}
		return f
	}
	status, unknown := exit.String(), ""
	if !exit.Known() {
		// Not this process's child (adopted, or found dead): its status
		// cannot be read.
		status, unknown = "died", " (status unknown)"
	}
	if line := outOfMemoryLine(tail); line != "" {
		return with(restart.ClassInsufficientVRAM, fmt.Sprintf("engine pid %d %s %s: it ran out of GPU memory (%s); log: %s", pid, status, when, line, logPath))
	}
	if line := cudaErrorLine(tail); line != "" {
		return with(restart.ClassCUDAError, fmt.Sprintf("engine pid %d %s %s (%s); log: %s", pid, status, when, line, logPath))
	}
	if exit.Signal == "" {
		// The engine's own line says what it could not take: the model file
		// (missing, unreadable as a model) or an argument.
		if class, line := loadErrorLine(tail); line != "" {
			return with(class, fmt.Sprintf("engine pid %d %s %s (%s); log: %s", pid, status, when, line, logPath))
		}
	}
	if unknown != "" {
		status, when = "exited", when+unknown
	}
	switch {
	case exit.OOMKilled:
		return with(restart.ClassOOMKilled, fmt.Sprintf("engine pid %d %s %s: host memory ran out; log: %s", pid, status, when, logPath))
	case exit.Signal != "":
		return with(restart.ClassSignaled, fmt.Sprintf("engine pid %d %s %s; log: %s", pid, status, when, logPath))
	}
	return with(restart.ClassExited, fmt.Sprintf("engine pid %d %s %s; log: %s", pid, status, when, logPath))
}

// outOfMemoryLine finds where an engine's log says a GPU allocation failed
// while it loaded (llama.cpp: "cudaMalloc failed: out of memory").
func outOfMemoryLine(log string) string {
	for _, line := range strings.Split(log, "\n") {
		if strings.Contains(line, "cudaMalloc failed: out of memory") || strings.Contains(line, "failed to allocate CUDA") ||
			strings.Contains(line, "CUDA out of memory") || strings.Contains(line, "less than desired GPU memory utilization") {
			return strings.TrimSpace(line)
		}
	}
	return ""
}

// The lines by which an engine says it refused its command line or its model
// file (llama-server, vLLM's argparse, TGI's clap), each with its class. The
// first line of the log that matches one decides.
var loadErrors = []struct {
	class string
	match func(line string) bool
}{
	{restart.ClassArgsRejected, func(l string) bool {
		return strings.HasPrefix(l, "error: invalid argument: ") || strings.HasPrefix(l, "error while handling argument ") ||
			strings.Contains(l, "error: unrecognized arguments: ") || strings.HasPrefix(l, "error: unexpected argument ") ||
			strings.HasPrefix(l, "error: invalid value ")
	}},
	{restart.ClassModelMissing, func(l string) bool {
		return strings.Contains(l, "failed to open GGUF file") ||
			(strings.Contains(l, "No such file or directory") && strings.Contains(l, "model"))
	}},
	{restart.ClassModelCorrupt, func(l string) bool {
		return strings.Contains(l, "invalid magic characters") || strings.Contains(l, "failed to read header") ||
			strings.Contains(l, "failed to read tensor info") || strings.Contains(l, "tensor data is not within the file bounds") ||
			strings.Contains(l, "failed to read key-value pairs") || strings.Contains(l, "unsupported GGUF version") ||
			strings.Contains(l, "failed to read magic")
	}},
}

// loadErrorLine finds where an engine's log says it refused an argument or
// could not open or read its model file: the class and the engine's own line.
func loadErrorLine(log string) (class, line string) {
	for _, l := range strings.Split(log, "\n") {
		l = strings.TrimSpace(l)
		for _, e := range loadErrors {
			if e.match(l) {
				return e.class, l
			}
		}
	}
	return "", ""
}

// cudaErrorLine finds the line of a CUDA error in an engine's log.
func cudaErrorLine(log string) string {
	for _, line := range strings.Split(log, "\n") {
		if strings.Contains(line, "CUDA error") || strings.Contains(line, "cudaErrorMemoryAllocation") {
			return strings.TrimSpace(line)
		}
	}
	return ""
}

// checkPlacement verifies that the engine's processes hold memory on its
// masked GPUs and on no others; none at all means it runs on the CPU.
func (x *Executor) checkPlacement(ctx context.Context, pool *schema.Pool, p engine.Process) *restart.Failure {
	devices, err := x.GPUs.Devices(ctx)
	if err != nil {
		return &restart.Failure{Class: restart.ClassDriverReset, Message: "read GPUs: " + err.Error()}
	}
	session := map[int]bool{}
	for _, pid := range p.Session() {
		session[pid] = true
	}
	session[p.PID()] = true
	var onMask, outside uint64
	var where []string
	for _, d := range devices {
		for _, proc := range d.Processes {
			if !session[proc.PID] {
				continue
			}
			if slices.Contains(pool.Devices, d.Index) {
				onMask += proc.UsedBytes
			} else {
				outside += proc.UsedBytes
				where = append(where, fmt.Sprintf("%s on GPU %d (pid %d)", reconcile.GiB(proc.UsedBytes), d.Index, proc.PID))
			}
		}
	}
	switch {
	case outside > 0:
		return &restart.Failure{Class: restart.ClassMaskViolation,
			Message: fmt.Sprintf("engine pid %d holds %s, outside its mask %v", p.PID(), strings.Join(where, ", "), pool.Devices)}
	case onMask == 0:
		return &restart.Failure{Class: restart.ClassCPUSpillover,
			Message: fmt.Sprintf("engine pid %d passed its health check but holds no memory on GPUs %v: it runs on the CPU", p.PID(), pool.Devices)}
	}
	return nil
}

// adopt takes over a running engine that matches its pool.
func (x *Executor) adopt(ctx context.Context, c reconcile.Change) Outcome {
	pool := c.Spec
	m := x.markerOf(c)
	rec := reconcile.EngineRecord{Pool: pool.ID, Generation: m, SpecHash: c.SpecHash, Spec: pool, PID: c.PID, StartedAt: x.now()}
	p, err := x.Engines.Adopt(ctx, RefOf(rec))
	if err != nil {
		return x.outcome(c, x.failed(ctx, pool, restart.Failure{Class: restart.ClassExited, Message: fmt.Sprintf("adopt engine pid %d: %v", c.PID, err)}))
	}
	rec.StartTicks, rec.Port, rec.LogPath, rec.Argv = p.StartTicks(), p.Port(), p.LogPath(), p.Argv()
	if err := x.mutate(func(st *state.State) { st.Engines[pool.ID] = rec }); err != nil {
		return x.outcome(c, Outcome{Pool: pool.ID, Phase: reconcile.Unready})
	}
	x.report(pool.ID, reconcile.Preloading, nil, "adopted engine pid %d", p.PID())
	return x.outcome(c, x.awaitReady(ctx, pool, p, rec.StartedAt))
}

func (x *Executor) markerOf(c reconcile.Change) int64 {
	x.mu.Lock()
	defer x.mu.Unlock()
	return x.st.Engines[c.Pool].Generation + 1
}

// awaitLoading waits for an engine that was already loading when the plan was made.
func (x *Executor) awaitLoading(ctx context.Context, id string) Outcome {
	x.mu.Lock()
	rec, ok := x.st.Engines[id]
	x.mu.Unlock()
	if !ok || rec.Spec == nil {
		return Outcome{Pool: id, Phase: reconcile.Preloading}
	}
	p, err := x.Engines.Adopt(ctx, RefOf(rec))
	if err != nil {
		return x.failed(ctx, rec.Spec, restart.Failure{Class: restart.ClassExited, Message: fmt.Sprintf("engine pid %d: %v", rec.PID, err)})
	}
	x.report(id, reconcile.Preloading, nil, "engine pid %d is still loading its model", rec.PID)
	return x.awaitReady(ctx, rec.Spec, p, rec.StartedAt)
}
