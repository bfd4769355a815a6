package daemon

import (
	"context"
	"errors"
	"fmt"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/poolmanagerd/pool-managerd/internal/observe"
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

// loadConfig loads the config tree. A config that fails to load is never
// used: the last good one stays in force, and the error is shown (once
// each time it changes) until the files are fixed. reason says why it was
// loaded, for the log; empty for the resync, which logs only changes.
func (d *Daemon) loadConfig(ctx context.Context, reason string) {
	now := d.now()
	all, err := schema.Load(ctx, d.opts.ConfigDir)
	if err == nil {
		err = d.checkNode(all)
	}
	if err != nil {
		if ctx.Err() != nil {
			return
		}
		diags := diagnosticsOf(d.opts.ConfigDir, err)
		changed := d.view.configFailed(now, diags)
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
			d.log.Error("config invalid: "+keep, "reason", reason, "problems", len(diags), "errors", strings.Join(lines, "; "))
		}
		return
	}
	desired := reconcile.DesiredFor(all, d.opts.Node)
	d.needs(ctx, &desired)
	hash := reconcile.DesiredHash(desired)
	wasValid := d.view.configValid()
	d.view.configLoaded(now, all, d.opts.Node)
	d.metrics.ConfigLoaded(now, nil)
	if d.cfg != nil && d.cfg.hash == hash {
		if !wasValid {
			d.log.Info("config valid again; this node's pools are unchanged", "reason", reason)
		}
		d.cfg.all = all
		return
	}
	d.cfg = &config{all: all, desired: desired, hash: hash}
	d.log.Info("config loaded", "reason", reason, "pools", len(desired.Pools), "other_nodes_pools", desired.OtherPools, "files", len(all.Files))
}

// checkNode refuses a config that does not know this node: a misspelt
// --node would otherwise stop every engine the node runs.
func (d *Daemon) checkNode(all *schema.Desired) error {
	if _, ok := all.Nodes[d.opts.Node]; ok {
		return nil
	}
	for _, p := range all.Pools {
		if p.Node == d.opts.Node {
			return nil
		}
	}
	return schema.Diagnostics{{Pos: schema.Pos{File: d.opts.ConfigDir}, Message: fmt.Sprintf(
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
		need := observe.NeedOf(ctx, p)
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
