package daemon

import (
	"slices"
	"sync"
	"time"

	"github.com/poolmanagerd/pool-managerd/internal/api"
	"github.com/poolmanagerd/pool-managerd/internal/executor"
	"github.com/poolmanagerd/pool-managerd/internal/metrics"
	"github.com/poolmanagerd/pool-managerd/internal/poolview"
	"github.com/poolmanagerd/pool-managerd/reconcile"
	"github.com/poolmanagerd/pool-managerd/reconcile/restart"
	"github.com/poolmanagerd/pool-managerd/schema"
)

// view is what the API and the metrics read: the last observation, the
// latest transition of each pool, the config's state. The loop and the ops
// write it; requests read it; no one waits for the loop.
type view struct {
	mu        sync.RWMutex
	cfg       api.Config
	lastDiags []string
	desired   []string
	obs       reconcile.Observed
	obsAt     time.Time
	phases    map[string]transition
	held      map[string]bool
	ready     bool
	// preloads are the preloads under way, by pool, for the preload metrics.
	preloads map[string]schema.Engine
}

// transition is a pool's latest phase as an op reported it.
type transition struct {
	phase reconcile.Phase
	at    time.Time
}

func (v *view) init(configDir string) {
	v.cfg = api.Config{Dir: configDir}
	v.phases = map[string]transition{}
	v.held = map[string]bool{}
	v.preloads = map[string]schema.Engine{}
}

// configFailed records a failed load; it reports whether the errors differ
// from the last failure's.
func (v *view) configFailed(at time.Time, diags schema.Diagnostics) bool {
	v.mu.Lock()
	defer v.mu.Unlock()
	lines := make([]string, len(diags))
	for i, d := range diags {
		lines[i] = d.String()
	}
	changed := v.cfg.Valid || !slices.Equal(lines, v.lastDiags)
	v.lastDiags = lines
	v.cfg.Valid, v.cfg.Errors, v.cfg.LastLoad = false, diags, at
	return changed
}

func (v *view) configLoaded(at time.Time, all *schema.Desired, node string) {
	v.mu.Lock()
	defer v.mu.Unlock()
	v.lastDiags = nil
	v.cfg.Valid, v.cfg.Errors, v.cfg.LastLoad, v.cfg.LastGoodLoad = true, nil, at, at
	v.cfg.Files = all.Files
	v.cfg.Pools = all.SortedPoolIDs()
	v.cfg.Nodes = all.SortedNodeNames()
}

func (v *view) configValid() bool {
	v.mu.RLock()
	defer v.mu.RUnlock()
	return v.cfg.Valid
}

func (v *view) config() api.Config {
	v.mu.RLock()
	defer v.mu.RUnlock()
	c := v.cfg
	c.Files, c.Errors, c.Pools, c.Nodes = slices.Clone(c.Files), slices.Clone(c.Errors), slices.Clone(c.Pools), slices.Clone(c.Nodes)
	return c
}

func (v *view) observed(obs reconcile.Observed, at time.Time, desired []string) {
	v.mu.Lock()
	defer v.mu.Unlock()
	v.obs, v.obsAt, v.desired = obs, at, desired
}

func (v *view) setPhase(pool string, phase reconcile.Phase, at time.Time) {
	v.mu.Lock()
	defer v.mu.Unlock()
	v.phases[pool] = transition{phase: phase, at: at}
}

func (v *view) setHeld(pool string, held bool) {
	v.mu.Lock()
	defer v.mu.Unlock()
	if held {
		v.held[pool] = true
	} else {
		delete(v.held, pool)
	}
}

// forget drops a deleted pool's transitions.
func (v *view) forget(pool string) {
	v.mu.Lock()
	defer v.mu.Unlock()
	delete(v.phases, pool)
	delete(v.preloads, pool)
}

// markReady marks the first reconcile done; true the first time.
func (v *view) markReady() bool {
	v.mu.Lock()
	defer v.mu.Unlock()
	first := !v.ready
	v.ready = true
	return first
}

func (v *view) isReady() bool {
	v.mu.RLock()
	defer v.mu.RUnlock()
	return v.ready
}

// pools builds every pool's view: from the last observation and the state,
// with the phase of a transition reported since the observation.
func (v *view) pools(x *executor.Executor, now time.Time) []api.Pool {
	st, err := x.State()
	if err != nil {
		return nil
	}
	v.mu.RLock()
	defer v.mu.RUnlock()
	rows := poolview.Build(v.obs, st, now)
	for _, id := range v.desired {
		if !slices.ContainsFunc(rows, func(p api.Pool) bool { return p.Pool == id }) {
			rows = append(rows, poolview.One(id, v.obs, st, now))
		}
	}
	for i := range rows {
		r := &rows[i]
		t, ok := v.phases[r.Pool]
		switch {
		case ok && t.at.After(v.obsAt):
			r.Phase, r.Ready = t.phase, t.phase == reconcile.Ready
			if t.phase == reconcile.Stopped {
				// Stopped since the observation: its engine is gone.
				r.PID, r.Port, r.Endpoint, r.GPUs, r.Preload = 0, 0, "", []api.GPU{}, nil
			}
		case r.Ready && (r.Preload == nil || r.Preload.State != api.PreloadLoaded):
			// Healthy, but its placement is not verified yet: Ready comes from the op.
			r.Phase, r.Ready = reconcile.Preloading, false
		case v.held[r.Pool] && r.PID == 0:
			r.Phase, r.Ready = reconcile.Stopped, false
		}
	}
	slices.SortFunc(rows, func(a, b api.Pool) int {
		switch {
		case a.Pool < b.Pool:
			return -1
		case a.Pool > b.Pool:
			return 1
		}
		return 0
	})
	return rows
}

// readyCount counts the Ready pools of the config in force.
func (v *view) readyCount(x *executor.Executor) (ready, total int) {
	rows := v.pools(x, time.Now())
	v.mu.RLock()
	defer v.mu.RUnlock()
	for _, r := range rows {
		if !slices.Contains(v.desired, r.Pool) {
			continue
		}
		total++
		if r.Ready {
			ready++
		}
	}
	return ready, total
}

// snapshot is the metrics' view at a scrape.
func (d *Daemon) snapshot() metrics.Snapshot {
	now := d.now()
	var s metrics.Snapshot
	for _, r := range d.view.pools(d.exec, now) {
		ps := metrics.PoolSnapshot{Pool: r.Pool, Phase: string(r.Phase), Ready: r.Ready}
		if !r.NextRetry.IsZero() && r.NextRetry.After(now) {
			ps.Backoff = r.NextRetry.Sub(now)
		}
		if b, err := restart.ParseBreakerState(r.Breaker); err == nil {
			ps.Circuit = int(b.Metric())
		}
		s.Pools = append(s.Pools, ps)
	}
	d.view.mu.RLock()
	s.GPUs = slices.Clone(d.view.obs.GPUs)
	d.view.mu.RUnlock()
	s.HostTotal, s.HostAvailable, _ = metrics.HostMemory()
	return s
}

// onEvent is the Executor's report: one log event per transition, the
// pool's phase for the API, and the preload and restart metrics.
func (d *Daemon) onEvent(e executor.Event) {
	// The phase is shown after it is logged: whoever sees it can read why;
	// then a pass observes the node again.
	defer func() {
		d.view.setPhase(e.Pool, e.Phase, e.Time)
		select {
		case d.refresh <- struct{}{}:
		default:
		}
	}()
	args := []any{"pool", e.Pool, "phase", string(e.Phase)}
	if e.Restart != "" {
		args = append(args, "restart_reason", e.Restart)
		d.metrics.Restarted(e.Pool, e.Restart)
	}
	if e.Loaded > 0 {
		args = append(args, "loaded_in", e.Loaded.Round(time.Millisecond).String())
	}
	d.view.mu.Lock()
	engine, preloading := d.view.preloads[e.Pool]
	switch {
	case e.Spawn:
		d.view.preloads[e.Pool] = e.Engine
	case preloading && e.Phase == reconcile.Ready:
		delete(d.view.preloads, e.Pool)
		d.metrics.PreloadSucceeded(e.Pool, string(engine), e.Loaded)
	case preloading && e.Failure != nil:
		delete(d.view.preloads, e.Pool)
		d.metrics.PreloadFailed(e.Pool, string(engine), e.Failure.Class)
	}
	d.view.mu.Unlock()
	if e.Failure != nil {
		args = append(args, "class", e.Failure.Class, "hint", e.Failure.HintFor())
		d.log.Warn(e.Message, args...)
		return
	}
	d.log.Info(e.Message, args...)
}
