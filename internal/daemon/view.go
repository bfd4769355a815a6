package daemon

import (
	"context"
	"slices"
	"sync"
	"time"

	"github.com/poolmanagerd/pool-managerd/drivers/host"
	"github.com/poolmanagerd/pool-managerd/internal/api"
	"github.com/poolmanagerd/pool-managerd/internal/executor"
	"github.com/poolmanagerd/pool-managerd/internal/metrics"
	"github.com/poolmanagerd/pool-managerd/internal/poolview"
	"github.com/poolmanagerd/pool-managerd/reconcile"
	"github.com/poolmanagerd/pool-managerd/reconcile/restart"
	"github.com/poolmanagerd/pool-managerd/schema"
)

// view is what the API and the metrics read: the last observation, the
// config in force, the operator's holds, the config's state; each pool's
// phase is the lifecycle's answer from these and the executor's state. The
// loop and the ops write it; requests read it; no one waits for the loop.
type view struct {
	mu        sync.RWMutex
	cfg       api.Config
	lastDiags []string
	// desired is the config in force for this node, by pool id.
	desired map[string]*schema.Pool
	// ramNeeds is each pool's host RAM need, where known, by pool id.
	ramNeeds map[string]uint64
	// blocked are the pools the last plan blocked, with the blocker's class.
	blocked map[string]string
	obs     reconcile.Observed
	held    map[string]bool
	ready   bool
	// preloads are the preloads under way, by pool, for the preload metrics.
	preloads map[string]schema.Engine
	// removals are the pools pending removal, by when it takes effect.
	removals map[string]time.Time
	// source is where the config comes from: the --git URL or the config
	// directory.
	source string
	// names are the pool IDs and node names of the config in force
	// (cfg.Pools and cfg.Nodes), sorted when first asked for.
	names *fleetNames
}

// fleetNames are the pool IDs and node names of a loaded config, sorted the
// first time /v1/config asks for them rather than on each load: at 10,000
// pools that is milliseconds on the path from a change to its first step.
// The sorted lists are never changed once made.
type fleetNames struct {
	all          *schema.Desired
	once         sync.Once
	pools, nodes []string
}

func (f *fleetNames) sorted() (pools, nodes []string) {
	f.once.Do(func() { f.pools, f.nodes = f.all.SortedPoolIDs(), f.all.SortedNodeNames() })
	return f.pools, f.nodes
}

func (v *view) init(configDir string) {
	v.cfg = api.Config{Dir: configDir}
	v.source = configDir
	v.held = map[string]bool{}
	v.preloads = map[string]schema.Engine{}
}

// configFailed records a failed load of the revision rev (nil outside
// Git); it reports whether the errors or the revision differ from the last
// failure's.
func (v *view) configFailed(at time.Time, rev *api.Revision, diags schema.Diagnostics) bool {
	v.mu.Lock()
	defer v.mu.Unlock()
	lines := make([]string, len(diags))
	for i, d := range diags {
		lines[i] = d.String()
	}
	changed := v.cfg.Valid || !slices.Equal(lines, v.lastDiags) || v.cfg.LastAttemptedRevision.String() != rev.String()
	v.cfg.LastAttemptedRevision = cloneRevision(rev)
	v.lastDiags = lines
	v.cfg.Valid, v.cfg.Errors, v.cfg.LastLoad, v.cfg.HeldBack = false, diags, at, nil
	return changed
}

// configLoaded records a config that came into force; it reports whether
// its revision differs from the one in force before.
func (v *view) configLoaded(at time.Time, dir string, all *schema.Desired, rev *api.Revision) bool {
	v.mu.Lock()
	defer v.mu.Unlock()
	v.lastDiags = nil
	v.cfg.Dir = dir
	changed := v.cfg.LastAppliedRevision.String() != rev.String()
	v.cfg.Valid, v.cfg.Errors, v.cfg.LastLoad, v.cfg.LastGoodLoad, v.cfg.HeldBack = true, nil, at, at, nil
	v.cfg.LastAppliedRevision, v.cfg.LastAttemptedRevision = cloneRevision(rev), cloneRevision(rev)
	v.cfg.Files = all.Files
	if v.names == nil || v.names.all != all {
		// A load with nothing changed returns the same config (an idle
		// resync): its names are sorted already.
		v.names = &fleetNames{all: all}
	}
	return changed
}

// configHeldBack records a config of revision rev that loaded and is not
// applied; it reports whether the reason or the revision differ from the
// last one's.
func (v *view) configHeldBack(at time.Time, rev *api.Revision, why string) bool {
	v.mu.Lock()
	defer v.mu.Unlock()
	v.lastDiags = nil
	changed := v.cfg.HeldBack == nil || v.cfg.HeldBack.Reason != why || v.cfg.LastAttemptedRevision.String() != rev.String()
	v.cfg.LastAttemptedRevision = cloneRevision(rev)
	since := at
	if !changed {
		since = v.cfg.HeldBack.Since
	}
	v.cfg.Valid, v.cfg.Errors, v.cfg.LastLoad = true, nil, at
	v.cfg.HeldBack = &api.HeldBack{Reason: why, Since: since}
	return changed
}

// appliedRevision is the revision of the config in force; nil outside Git.
func (v *view) appliedRevision() *api.Revision {
	v.mu.RLock()
	defer v.mu.RUnlock()
	return cloneRevision(v.cfg.LastAppliedRevision)
}

func (v *view) heldBack() bool {
	v.mu.RLock()
	defer v.mu.RUnlock()
	return v.cfg.HeldBack != nil
}

func cloneRevision(rev *api.Revision) *api.Revision {
	if rev == nil {
		return nil
	}
	r := *rev
	return &r
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
	if v.names != nil {
		pools, nodes := v.names.sorted()
		c.Pools, c.Nodes = slices.Clone(pools), slices.Clone(nodes)
	}
	c.Files, c.Errors = slices.Clone(c.Files), slices.Clone(c.Errors)
	c.LastAppliedRevision, c.LastAttemptedRevision = cloneRevision(c.LastAppliedRevision), cloneRevision(c.LastAttemptedRevision)
	if c.HeldBack != nil {
		h := *c.HeldBack
		c.HeldBack = &h
	}
	return c
}

func (v *view) observed(obs reconcile.Observed, desired reconcile.Desired, plan *reconcile.NodePlan, removals map[string]time.Time) {
	ramNeeds := map[string]uint64{}
	for id, p := range desired.Pools {
		if need, _, known := reconcile.PoolRAM(p, desired.Needs[id]); known {
			ramNeeds[id] = need
		}
	}
	blocked := map[string]string{}
	for _, c := range plan.Changes {
		if c.Action == reconcile.Blocked {
			blocked[c.Pool] = c.Blocker.Class
		}
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	v.obs, v.desired, v.ramNeeds, v.blocked, v.removals = obs, desired.Pools, ramNeeds, blocked, removals
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

// forget drops a deleted pool's preload.
func (v *view) forget(pool string) {
	v.mu.Lock()
	defer v.mu.Unlock()
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

// pools renders every pool as the lifecycle says it stands: from the last
// observation, the state as the executor holds it now (newer: a spawn, Ready,
// a stop begun since), the config in force and the operator's holds. The
// pools of the config in force and every pool with an engine or a record.
func (v *view) pools(x *executor.Executor, now time.Time) []api.Pool {
	st, err := x.State()
	if err != nil {
		return nil
	}
	v.mu.RLock()
	defer v.mu.RUnlock()
	return poolview.Build(poolview.Input{Desired: v.desired, Held: v.held, Blocked: v.blocked, Removals: v.removals, Observed: v.obs, State: st,
		Fetches: x.Fetches(), Now: now})
}

// unsettled lists, sorted, the pools of the config in force that are
// neither Ready nor given up (Failed, Stopped, or blocked by the last plan):
// those serve --ready-when pools waits for.
func (v *view) unsettled(x *executor.Executor, now time.Time) []string {
	rows := v.pools(x, now)
	v.mu.RLock()
	defer v.mu.RUnlock()
	var out []string
	for _, r := range rows {
		if _, wanted := v.desired[r.Pool]; !wanted || v.blocked[r.Pool] != "" {
			continue
		}
		switch r.Phase {
		case reconcile.Ready, reconcile.Failed, reconcile.Stopped:
			continue
		}
		out = append(out, r.Pool)
	}
	return out
}

// readyCount counts the Ready pools of the config in force.
func (v *view) readyCount(x *executor.Executor) (ready, total int) {
	rows := v.pools(x, time.Now())
	v.mu.RLock()
	defer v.mu.RUnlock()
	for _, r := range rows {
		if _, wanted := v.desired[r.Pool]; !wanted {
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
	for i := range s.Pools {
		s.Pools[i].RAMNeed = d.view.ramNeeds[s.Pools[i].Pool]
	}
	s.GPUs = slices.Clone(d.view.obs.GPUs)
	s.Config.HeldBack = d.view.cfg.HeldBack != nil
	if rev := d.view.cfg.LastAppliedRevision; rev != nil {
		s.Config.Revision, s.Config.Dirty, s.Config.Source = rev.Commit, rev.Dirty, d.view.source
	}
	if g := d.gitStatus(); g != nil {
		s.Config.Git = &metrics.GitSnapshot{OK: g.Error == "" && !g.LastFetch.IsZero(), Failures: g.Failures, LastSuccess: g.LastSuccess}
	}
	for _, at := range d.view.removals {
		if at.After(now) {
			s.Config.PendingRemovals++
		}
	}
	d.view.mu.RUnlock()
	if mc, err := d.ModelCache(); err == nil && mc != nil {
		s.ModelCache = &metrics.ModelCacheSnapshot{Bytes: mc.Bytes}
	}
	// As the node observes it (a simulated node's --ram, not this
	// machine's), read at the scrape.
	if d.opts.Host != nil {
		if h, err := d.opts.Host(context.Background()); err == nil && h != nil {
			s.HostTotal, s.HostAvailable = h.Total, h.Available
			return s
		}
	}
	s.HostTotal, s.HostAvailable, _ = host.Memory()
	return s
}

// onEvent is the Executor's report: one log event per transition, the
// pool's phase for the API, and the preload and restart metrics.
func (d *Daemon) onEvent(e executor.Event) {
	// Once it is logged, a pass observes the node again, so that the view
	// (pids, ports, GPU memory) follows what the executor did.
	defer func() {
		select {
		case d.refresh <- struct{}{}:
		default:
		}
	}()
	if e.Killed {
		d.metrics.EngineKilled(e.Pool)
		d.log.Warn(e.Message, "pool", e.Pool, "pid", e.PID, "grace", e.Grace.String(), "event", "engine_killed")
		return
	}
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
