package executor

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/poolmanagerd/pool-managerd/drivers/engine"
	"github.com/poolmanagerd/pool-managerd/drivers/engine/supervisor"
	"github.com/poolmanagerd/pool-managerd/drivers/gpu"
	"github.com/poolmanagerd/pool-managerd/internal/state"
	"github.com/poolmanagerd/pool-managerd/reconcile"
	"github.com/poolmanagerd/pool-managerd/reconcile/restart"
	"github.com/poolmanagerd/pool-managerd/schema"
)

// start runs one pool's start: the VRAM check (nothing is spawned when the
// GPUs lack the memory), the intent recorded, the spawn with the marker, the
// pid recorded, the preload watched until healthy, the placement verified.
func (x *Executor) start(ctx context.Context, c reconcile.Change) Outcome {
	pool := c.Spec
	if c.Action == reconcile.Adopt {
		return x.adopt(ctx, c)
	}
	if o, stop := x.recordDeath(ctx, c); stop {
		return x.outcome(c, o)
	}
	masked, err := x.maskedGPUs(ctx, pool)
	if err != nil {
		return x.outcome(c, x.failed(ctx, pool, restart.Failure{Class: restart.ClassDriverReset, Message: err.Error()}))
	}
	if f := x.reserve(pool, c.Need, masked); f != nil {
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
	for _, n := range c.Need {
		total += n.Need
	}
	p, err := x.Engines.Start(ctx, engine.StartRequest{Pool: pool, GPUs: masked, Marker: marker, Need: total})
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

// recordDeath records the failure of an engine that died after it was
// Ready (found dead by this plan, not yet counted), then follows the pool's
// restart decision: wait out the backoff, or stop at an open breaker.
func (x *Executor) recordDeath(ctx context.Context, c reconcile.Change) (Outcome, bool) {
	pool := c.Spec
	x.mu.Lock()
	rec, known := x.st.Engines[pool.ID]
	x.mu.Unlock()
	t := x.tracker(pool)
	// A recorded engine that is gone (the plan stops none: c.PID is 0).
	if dead := known && c.PID == 0 && rec.PID != 0 && (c.Action == reconcile.Restart || c.Action == reconcile.Replace); dead {
		if err := x.Engines.Cleanup(ctx, rec.Ref()); err != nil {
			return x.failed(ctx, pool, restart.Failure{Class: restart.ClassSpawnFailed, Message: err.Error()}), true
		}
		if !rec.ReadyAt.IsZero() && rec.ReadyAt.After(t.LastFailureAt()) {
			// It died after it was Ready, and nothing has counted that yet.
			t.Ready(rec.ReadyAt)
			t.Failed(x.now(), deathFailure(rec, logTail(rec)))
			if err := x.saveTracker(pool.ID, t); err != nil {
				return Outcome{Pool: pool.ID, Phase: reconcile.Unready}, true
			}
			f := t.LastFailure()
			x.report(pool.ID, reconcile.Unready, f, "%s", f.Message)
		}
	}
	if c.Action == reconcile.Replace && rec.SpecHash != c.SpecHash {
		t.ConfigChanged(x.now()) // a config change closes the breaker and clears the backoff
		_ = x.saveTracker(pool.ID, t)
	}
	d := t.Decide(x.now())
	switch d.Action {
	case restart.Blocked:
		f := &restart.Failure{Class: reconcile.ClassCircuitOpen, Message: restart.BreakerMessage(pool.ID, t.FailuresInWindow(x.now()), pool.Restart.Breaker.Window),
			Hint: fmt.Sprintf("fix the config or run pool-managerd reset %s", pool.ID)}
		x.report(pool.ID, reconcile.Failed, f, "%s", f.Message)
		return Outcome{Pool: pool.ID, Phase: reconcile.Failed, Failure: f}, true
	case restart.Wait:
		x.report(pool.ID, reconcile.Unready, nil, "waiting %v for the backoff (%s)", d.Delay.Round(time.Millisecond), d.Reason)
		select {
		case <-ctx.Done():
			return Outcome{Pool: pool.ID, Phase: reconcile.Unready}, true
		case <-time.After(d.Delay):
		}
	}
	return Outcome{}, false
}

// DeathFailure describes an engine found dead after it was Ready, from its log.
func DeathFailure(rec reconcile.EngineRecord) restart.Failure {
	return deathFailure(rec, logTail(rec))
}

func deathFailure(rec reconcile.EngineRecord, logTail string) restart.Failure {
	if line := cudaErrorLine(logTail); line != "" {
		return restart.Failure{Class: restart.ClassCUDAError, Message: fmt.Sprintf("engine pid %d died after it was reconcile.Ready (%s); log: %s", rec.PID, line, rec.LogPath)}
	}
	return restart.Failure{Class: restart.ClassExited, Message: fmt.Sprintf("engine pid %d exited after it was reconcile.Ready; log: %s", rec.PID, rec.LogPath)}
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

// reserve fails fast when a masked GPU lacks the memory the pool needs,
// counting what other starts in flight have booked but do not yet visibly
// hold; else it books the need.
func (x *Executor) reserve(pool *schema.Pool, need []reconcile.GPUNeed, masked []gpu.Device) *restart.Failure {
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
				Message: fmt.Sprintf("insufficient VRAM on GPU %d (%s, %s): needs %s at ctx %d, %s free", d.Index, d.Name, reconcile.GiB(d.MemoryTotal), reconcile.GiB(n.Need), pool.Model.Ctx, reconcile.GiB(free))}
		}
	}
	booking := &inflightStart{need: map[int]uint64{}}
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
	for {
		select {
		case <-ctx.Done():
			return Outcome{Pool: pool.ID, Phase: reconcile.Preloading, PID: p.PID()}
		case <-p.Exited():
			return x.failed(ctx, pool, exitFailure(p, "while loading its model"))
		case <-tick.C:
		}
		if p.Health(ctx) == engine.HealthOK {
			break
		}
		if x.now().After(deadline) {
			_ = p.Stop(ctx, 0, pool.Restart.StopGrace)
			return x.failed(ctx, pool, restart.Failure{Class: restart.ClassHealthTimeout,
				Message: fmt.Sprintf("engine pid %d did not pass its health check within %v", p.PID(), pool.Restart.StartupTimeout)})
		}
	}
	x.step(pool.ID, StepHealthy)
	if f := x.checkPlacement(ctx, pool, p); f != nil {
		select {
		case <-p.Exited():
			// It died meanwhile: that, not the memory it no longer holds, is the failure.
			return x.failed(ctx, pool, exitFailure(p, "right after its health check passed"))
		default:
		}
		_ = p.Stop(ctx, 0, pool.Restart.StopGrace)
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
// error in its log, a signal, an exit code.
func exitFailure(p engine.Process, when string) restart.Failure {
	exit := p.Exit()
	tail := p.LogTail()
	if line := outOfMemoryLine(tail); line != "" {
		return restart.Failure{Class: restart.ClassInsufficientVRAM, Message: fmt.Sprintf("engine pid %d %s %s: it ran out of GPU memory (%s); log: %s", p.PID(), exit, when, line, p.LogPath()), ExitCode: exit.Code, Signal: exit.Signal}
	}
	if line := cudaErrorLine(tail); line != "" {
		return restart.Failure{Class: restart.ClassCUDAError, Message: fmt.Sprintf("engine pid %d %s %s (%s); log: %s", p.PID(), exit, when, line, p.LogPath()), ExitCode: exit.Code, Signal: exit.Signal}
	}
	if exit.Signal != "" {
		return restart.Failure{Class: restart.ClassSignaled, Message: fmt.Sprintf("engine pid %d %s %s; log: %s", p.PID(), exit, when, p.LogPath()), Signal: exit.Signal}
	}
	return restart.Failure{Class: restart.ClassExited, Message: fmt.Sprintf("engine pid %d %s %s; log: %s", p.PID(), exit, when, p.LogPath()), ExitCode: exit.Code}
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
	p, err := x.Engines.Adopt(ctx, rec.Ref())
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
	p, err := x.Engines.Adopt(ctx, rec.Ref())
	if err != nil {
		return x.failed(ctx, rec.Spec, restart.Failure{Class: restart.ClassExited, Message: fmt.Sprintf("engine pid %d: %v", rec.PID, err)})
	}
	x.report(id, reconcile.Preloading, nil, "engine pid %d is still loading its model", rec.PID)
	return x.awaitReady(ctx, rec.Spec, p, rec.StartedAt)
}
