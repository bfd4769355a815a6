package daemon

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"

	"github.com/poolmanagerd/pool-managerd/internal/observe"
	"github.com/poolmanagerd/pool-managerd/internal/state"
	"github.com/poolmanagerd/pool-managerd/reconcile"
	"github.com/poolmanagerd/pool-managerd/schema"
)

// Removals that wait to be sure. A config can be valid and momentarily
// incomplete: an editor that truncates a file before writing it, a restore
// that copies nodes/ before pools/. A pool whose engine runs and that leaves
// the config (or moves to another node) is therefore kept, serving and
// holding its GPUs, until its absence has held for the settle window
// (Options.RemovalSettle); one that comes back within it is untouched.
// Additions and changes are not delayed.
//
// A config that leaves the node no pools while engines of it run is not
// applied at all unless Options.AllowEmpty (Argo CD's allowEmpty): the
// engines keep running and /v1/config, the log and config_held_back say
// why. After a daemon restart, the engines recorded in the state file are
// what the guard compares with.

// removal is a pool pending removal.
type removal struct {
	// spec and need are the pool as it ran; spec is nil when its record
	// lacks it (then its delete is only held back, see launchChanges).
	spec *schema.Pool
	need reconcile.Need
	// at is when the removal takes effect.
	at time.Time
}

// noteRemovals starts the settle window of each pool that the config in
// force had and next lacks, and ends it for those next has again. It is
// called as a new config comes into force.
func (d *Daemon) noteRemovals(prev *config, next reconcile.Desired, all *schema.Desired, now time.Time) {
	if d.opts.RemovalSettle <= 0 {
		return
	}
	for id := range d.removing {
		if _, back := next.Pools[id]; back {
			delete(d.removing, id)
			d.log.Info("pool is back in the config before its removal settled: its engine is untouched", "pool", id)
		}
	}
	if prev == nil {
		return
	}
	st, err := d.exec.State()
	if err != nil {
		return // the pass's trackRemovals starts the windows from what it observes
	}
	for _, id := range slices.Sorted(maps.Keys(prev.desired.Pools)) {
		if _, kept := next.Pools[id]; kept || d.removing[id] != nil {
			continue
		}
		if rec, ok := st.Engines[id]; !ok || !d.engineAlive(id, rec.PID) {
			continue // no engine to keep: removing it costs nothing
		}
		where := "left the config"
		if p, ok := all.Pools[id]; ok {
			where = "moved to node " + p.Node
		}
		d.startRemoval(id, &removal{spec: prev.desired.Pools[id], need: prev.desired.Needs[id]}, where, now)
	}
}

func (d *Daemon) startRemoval(id string, r *removal, where string, now time.Time) {
	r.at = now.Add(d.opts.RemovalSettle)
	d.removing[id] = r
	d.log.Info("pool "+where+": its engine keeps running until its removal settles, and is untouched if it comes back",
		"pool", id, "removal_at", r.at.UTC().Format(time.RFC3339Nano), "settle", d.opts.RemovalSettle.String())
}

// trackRemovals, at each pass, starts the settle window of running engines
// that no config in force has wanted since the daemon started (their pools
// left the config while no daemon ran), and forgets pools pending removal
// whose engines are gone: a pool that left the config is not restarted.
func (d *Daemon) trackRemovals(ctx context.Context, obs reconcile.Observed, st *state.State, now time.Time) {
	if d.opts.RemovalSettle <= 0 {
		return
	}
	for _, id := range slices.Sorted(maps.Keys(obs.Engines)) {
		e := obs.Engines[id]
		if _, wanted := d.cfg.desired.Pools[id]; wanted || !e.Alive || d.removing[id] != nil {
			continue
		}
		if _, held := d.held[id]; held {
			continue // an operator's stop: stopped now
		}
		if _, busy := d.busy[id]; busy {
			continue
		}
		r := &removal{spec: e.Spec}
		if rec, ok := st.Engines[id]; ok && rec.Spec != nil {
			r.spec = rec.Spec
		}
		if r.spec != nil {
			r.need = observe.NeedOf(ctx, r.spec)
		}
		d.startRemoval(id, r, "is not in the config", now)
	}
	for id := range d.removing {
		if e, ok := obs.Engines[id]; !ok || !e.Alive {
			delete(d.removing, id)
		}
	}
}

// effective is the desired state a pass plans from: the config in force,
// and the pools pending removal whose settle window has not ended, marked
// Settling. It returns the earliest end of a settle window still running.
func (d *Daemon) effective(now time.Time) (reconcile.Desired, time.Time) {
	des := d.cfg.desired
	var wake time.Time
	if len(d.removing) == 0 {
		return des, wake
	}
	des.Pools, des.Needs = maps.Clone(des.Pools), maps.Clone(des.Needs)
	des.Settling = map[string]time.Time{}
	for id, r := range d.removing {
		if !now.Before(r.at) {
			continue
		}
		if wake.IsZero() || r.at.Before(wake) {
			wake = r.at
		}
		if r.spec == nil {
			continue
		}
		des.Pools[id], des.Needs[id], des.Settling[id] = r.spec, r.need, r.at
	}
	return des, wake
}

// settling reports whether the pool's removal waits for its settle window.
func (d *Daemon) settling(pool string, now time.Time) bool {
	r := d.removing[pool]
	return r != nil && now.Before(r.at)
}

// removalTimes are the pools pending removal, by when it takes effect.
func (d *Daemon) removalTimes() map[string]time.Time {
	out := make(map[string]time.Time, len(d.removing))
	for id, r := range d.removing {
		out[id] = r.at
	}
	return out
}

// holdBack says why a config that loaded must not be applied: it leaves
// this node no pools while engines of it run, and the operator did not
// allow that (--allow-empty). Empty when it may be applied.
func (d *Daemon) holdBack(next reconcile.Desired) string {
	if d.opts.AllowEmpty || len(next.Pools) > 0 {
		return ""
	}
	st, err := d.exec.State()
	if err != nil {
		return ""
	}
	var running []string
	for id, rec := range st.Engines {
		if d.engineAlive(id, rec.PID) {
			running = append(running, id)
		}
	}
	if len(running) == 0 {
		return ""
	}
	slices.Sort(running)
	return fmt.Sprintf("the config leaves node %s no pools while %d engines run (%s): not applied; to empty the node on purpose run pool-managerd stop --all, or serve with --allow-empty",
		d.opts.Node, len(running), strings.Join(running, ", "))
}
