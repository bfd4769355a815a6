package daemon

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/poolmanagerd/pool-managerd/internal/api"
	"github.com/poolmanagerd/pool-managerd/internal/state"
	"github.com/poolmanagerd/pool-managerd/internal/watch"
	"github.com/poolmanagerd/pool-managerd/reconcile"
	"github.com/poolmanagerd/pool-managerd/schema"
)

// cachedNeed is a pool's VRAM need, kept while its spec and model file are
// unchanged, so that a reload does not parse every model again.
type cachedNeed struct {
	size  int64
	mtime time.Time
	need  reconcile.Need
}

func describeChange(ch watch.Change) string {
	if ch.Overflow {
		return "config changed (events were lost)"
	}
	const show = 3
	if len(ch.Paths) > show {
		return fmt.Sprintf("config changed: %s and %d more", strings.Join(ch.Paths[:show], ", "), len(ch.Paths)-show)
	}
	return "config changed: " + strings.Join(ch.Paths, ", ")
}

// tree is a config tree to load: its directory and the revision it holds.
type tree struct {
	dir string
	// rev is nil when the directory is not in Git.
	rev *api.Revision
	// source is where the revision comes from (the --git URL or the
	// config directory), as the state file records it.
	source string
	// missing says why the tree is not there (--git-path is not in the
	// commit); it is then a load error.
	missing string
}

// loadConfig loads a config tree. A config that fails to load is never
// used: the last good one stays in force, and the error is shown (once
// each time it changes) until the files are fixed. A config that loads but
// leaves the node no pools while its engines run is held back the same way
// (holdBack). reason says why it was loaded, for the log; empty for the
// resync, which logs only changes.
func (d *Daemon) loadConfig(ctx context.Context, reason string, t tree) {
	now := d.now()
	var all *schema.Desired
	var desired reconcile.Desired
	var err error
	if t.missing != "" {
		err = missingDiagnostics(t)
	} else {
		all, err = d.loader.Load(ctx, t.dir)
	}
	if err == nil {
		// The loader keeps decoded values, not the evaluation of the fleet's
		// config: their Sources evaluate a group again only when asked for
		// a position (schema.Loader).
		desired, err = d.forNode(all, t.dir)
	}
	if err != nil {
		d.node = nil
		if ctx.Err() != nil {
			return
		}
		diags := diagnosticsOf(t.dir, err)
		changed := d.view.configFailed(now, t.rev, diags)
		d.metrics.ConfigLoaded(now, err)
		if changed || reason != "" {
			keep := "nothing is applied until it loads"
			if d.cfg != nil {
				keep = "the last good config stays in force"
			}
			lines := make([]string, len(diags))
			for i, dg := range diags {
				lines[i] = dg.String()
			}
			args := []any{"reason", reason, "problems", len(diags), "errors", strings.Join(lines, "; ")}
			d.log.Error("config invalid: "+keep, append(args, revisionArgs(t.rev)...)...)
		}
		return
	}
	if why := d.holdBack(desired); why != "" {
		if d.view.configHeldBack(now, t.rev, why) || reason != "" {
			args := []any{"reason", reason}
			d.log.Warn("config held back: "+why, append(args, revisionArgs(t.rev)...)...)
		}
		d.metrics.ConfigHeldBack()
		return
	}
	d.needs(ctx, &desired)
	hash := reconcile.DesiredHash(desired)
	wasValid, wasHeld := d.view.configValid(), d.view.heldBack()
	revChanged := d.view.configLoaded(now, t.dir, all, t.rev)
	d.metrics.ConfigLoaded(now, nil)
	d.recordRevision(t)
	if d.cfg != nil && d.cfg.hash == hash {
		switch {
		case revChanged:
			d.log.Info("config loaded; this node's pools are unchanged", append([]any{"reason", reason}, revisionArgs(t.rev)...)...)
		case !wasValid || wasHeld:
			d.log.Info("config valid again; this node's pools are unchanged", "reason", reason)
		}
		return
	}
	prev := d.cfg
	d.cfg = &config{desired: desired, hash: hash}
	args := []any{"reason", reason, "pools", len(desired.Pools), "other_nodes_pools", desired.OtherPools, "files", len(all.Files)}
	d.log.Info("config loaded", append(args, revisionArgs(t.rev)...)...)
	d.noteRemovals(prev, desired, all, now)
}

// revisionArgs are a log event's fields naming a config's revision.
func revisionArgs(rev *api.Revision) []any {
	if rev == nil {
		return nil
	}
	args := []any{"revision", rev.Commit}
	if rev.Ref != "" {
		args = append(args, "ref", rev.Ref)
	}
	if rev.Dirty {
		args = append(args, "dirty", true)
	}
	return args
}

// recordRevision keeps the applied revision in the state file, for status
// and for a restarted daemon to start from.
func (d *Daemon) recordRevision(t tree) {
	var rev *state.Revision
	if t.rev != nil {
		rev = &state.Revision{Source: t.source, Commit: t.rev.Commit, Ref: t.rev.Ref, Dirty: t.rev.Dirty}
	}
	if err := d.exec.RecordRevision(rev); err != nil {
		d.log.Error("record the applied revision in the state file", "error", err)
	}
}

// nodeConfig is this node's part of a config that loaded, kept with the
// loader's result it was taken from.
type nodeConfig struct {
	all *schema.Desired
	// desired has no Needs: needs works them out on each load.
	desired reconcile.Desired
}

// forNode checks that the config knows this node and returns the node's
// part of it, VRAM needs left to fill in. A load that returns the same
// result as the last one (schema.Loader does when no file changed, as on an
// idle resync) reuses what the last one found, rather than going through
// the fleet's pools again.
func (d *Daemon) forNode(all *schema.Desired, dir string) (reconcile.Desired, error) {
	if d.node == nil || d.node.all != all {
		d.node = nil
		if err := d.checkNode(all, dir); err != nil {
			return reconcile.Desired{}, err
		}
		d.node = &nodeConfig{all: all, desired: reconcile.DesiredFor(all, d.opts.Node)}
	}
	desired := d.node.desired
	desired.Pools, desired.Needs = maps.Clone(desired.Pools), map[string]reconcile.Need{}
	return desired, nil
}

// checkNode refuses a config that does not know this node: a misspelt
// --node would otherwise stop every engine the node runs.
func (d *Daemon) checkNode(all *schema.Desired, dir string) error {
	if _, ok := all.Nodes[d.opts.Node]; ok {
		return nil
	}
	for _, p := range all.Pools {
		if p.Node == d.opts.Node {
			return nil
		}
	}
	return schema.Diagnostics{{Pos: schema.Pos{File: dir}, Message: fmt.Sprintf(
		"node %q is not in the config: no nodes.%s and no pool names it (nodes: %s); set --node (or POOL_MANAGERD_NODE) to this machine's name in the config",
		d.opts.Node, d.opts.Node, strings.Join(all.SortedNodeNames(), ", "))}}
}

func diagnosticsOf(dir string, err error) schema.Diagnostics {
	var diags schema.Diagnostics
	if errors.As(err, &diags) {
		return diags
	}
	return schema.Diagnostics{{Pos: schema.Pos{File: dir}, Message: err.Error()}}
}

// needs fills in each pool's VRAM need, from the cache while the pool's
// spec and model file are unchanged.
func (d *Daemon) needs(ctx context.Context, desired *reconcile.Desired) {
	keep := map[string]cachedNeed{}
	for id, p := range desired.Pools {
		key := reconcile.SpecHash(p)
		info, statErr := os.Stat(p.Model.Path)
		if c, ok := d.needCache[key]; ok && statErr == nil && c.size == info.Size() && c.mtime.Equal(info.ModTime()) {
			desired.Needs[id] = c.need
			keep[key] = c
			continue
		}
		need := d.opts.Models.NeedOf(ctx, p)
		desired.Needs[id] = need
		if statErr == nil {
			keep[key] = cachedNeed{size: info.Size(), mtime: info.ModTime(), need: need}
		}
	}
	d.needCache = keep
}

// policies are the restart policies of the config in force, by pool.
func (d *Daemon) policies() map[string]schema.RestartPolicy {
	out := map[string]schema.RestartPolicy{}
	if d.cfg == nil {
		return out
	}
	for id, p := range d.cfg.desired.Pools {
		out[id] = p.Restart
	}
	return out
}

// desiredIDs are this node's pools in the config in force, sorted.
func (d *Daemon) desiredIDs() []string {
	if d.cfg == nil {
		return nil
	}
	ids := make([]string, 0, len(d.cfg.desired.Pools))
	for id := range d.cfg.desired.Pools {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	return ids
}
