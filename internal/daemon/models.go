package daemon

import (
	"context"

	"github.com/poolmanagerd/pool-managerd/internal/executor"
)

// ModelCache describes the node's model cache: where it is, the bytes it
// holds and its models; nil without one (no Fetcher).
func (d *Daemon) ModelCache() (*executor.CacheUsage, error) {
	if d.opts.Fetcher == nil {
		return nil, nil
	}
	u, err := executor.UsageOf(d.opts.Fetcher.Cache())
	if err != nil {
		return nil, err
	}
	return &u, nil
}

// collectModels removes, off the loop, the models of the cache that no pool
// of the node uses (the config in force, and the engines recorded, whatever
// their spec) and that were last used longer than CacheGrace ago. A model an
// engine has open is its recorded spec's: never removed. One collection
// runs at a time.
func (d *Daemon) collectModels(ctx context.Context) {
	if d.opts.Fetcher == nil || d.cfg == nil || !d.collecting.CompareAndSwap(false, true) {
		// No config in force (none loaded yet): what the pools use is not known.
		return
	}
	inUse := map[string]bool{}
	for _, p := range d.cfg.desired.Pools {
		if dg := executor.CacheDigest(p.Model); dg != "" {
			inUse[dg] = true
		}
	}
	st, err := d.exec.State()
	if err != nil {
		d.collecting.Store(false)
		d.log.Error("model cache: read the state", "error", err)
		return
	}
	for _, rec := range st.Engines {
		if rec.Spec != nil {
			if dg := executor.CacheDigest(rec.Spec.Model); dg != "" {
				inUse[dg] = true
			}
		}
	}
	c := d.opts.Fetcher.Cache()
	d.watchers.Add(1)
	go func() {
		defer d.watchers.Done()
		defer d.collecting.Store(false)
		removed, err := c.GC(ctx, func(digest string) bool { return inUse[digest] }, d.opts.CacheGrace)
		if err != nil {
			if ctx.Err() == nil {
				d.log.Error("model cache: collect unused models", "dir", c.Root(), "error", err)
			}
			return
		}
		if len(removed.Entries) > 0 || len(removed.Partials) > 0 {
			d.log.Info("model cache: removed models no pool uses", "dir", c.Root(), "models", removed.Entries,
				"partial_downloads", removed.Partials, "bytes", removed.Bytes, "grace", d.opts.CacheGrace.String())
		}
	}()
}
