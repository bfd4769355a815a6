package daemon

import (
	"context"
	"fmt"
	"path/filepath"

	"github.com/poolmanagerd/pool-managerd/internal/api"
	"github.com/poolmanagerd/pool-managerd/internal/gitsource"
	"github.com/poolmanagerd/pool-managerd/internal/watch"
	"github.com/poolmanagerd/pool-managerd/schema"
)

// Where the config comes from: a directory the daemon watches (fsnotify,
// debounced), or the built-in Git source (Options.Git), which fetches off
// the loop and hands over each new commit as a complete checkout, so the
// loader never sees a half-updated tree.

// configSource is what the loop reads config trees from.
type configSource struct {
	// changes are the watcher's settled changes (a directory), checkouts
	// the Git source's new commits; the other is nil.
	changes   <-chan watch.Change
	checkouts <-chan gitsource.Checkout
	// done reports the end of the watcher's or the Git source's Run.
	done chan error
}

// openSource starts the watcher of the config directory or the Git
// source's fetch loop, each in a goroutine of its own.
func (d *Daemon) openSource(ctx context.Context) (*configSource, error) {
	src := &configSource{done: make(chan error, 1)}
	if g := d.opts.Git; g != nil {
		src.checkouts = g.Checkouts()
		go func() { src.done <- g.Run(ctx) }()
		return src, nil
	}
	w, err := watch.New(d.opts.ConfigDir, watch.Options{Debounce: d.opts.Debounce, Logger: d.log.Named("watch")})
	if err != nil {
		return nil, fmt.Errorf("serve: %w", err)
	}
	src.changes = w.Changes()
	go func() { src.done <- w.Run(ctx) }()
	return src, nil
}

// firstLoad loads the config at start: the directory, or with Git the
// checkout of the revision last applied (recorded in the state file), which
// is kept on disk; without one, nothing is loaded until the first fetch.
func (d *Daemon) firstLoad(ctx context.Context) {
	g := d.opts.Git
	if g == nil {
		d.loadConfig(ctx, "start", d.dirTree(true))
		return
	}
	st := g.Status()
	d.log.Info("following a Git repository", "url", st.URL, "ref", st.Ref, "path", st.Path, "interval", st.Interval.String())
	rec, err := d.exec.State()
	if err != nil || rec.AppliedRevision == nil || rec.AppliedRevision.Source != st.URL {
		d.log.Info("no revision of this repository applied yet: waiting for the first fetch")
		return
	}
	co, ok := g.Checkout(rec.AppliedRevision.Commit)
	if !ok {
		d.log.Warn("the checkout of the last applied revision is gone: waiting for the first fetch", "revision", rec.AppliedRevision.Commit)
		return
	}
	if co.Ref == "" {
		co.Ref = rec.AppliedRevision.Ref
	}
	d.loadCheckout(ctx, "start: the last applied revision", co)
}

// loadCheckout loads a commit of the Git source; once it is in force, the
// source keeps its checkout and may remove older ones.
func (d *Daemon) loadCheckout(ctx context.Context, reason string, co gitsource.Checkout) {
	d.checkout = &co
	d.loadConfig(ctx, reason, d.gitTree(co))
	if rev := d.view.appliedRevision(); rev != nil && rev.Commit == co.Commit {
		d.opts.Git.InForce(co.Commit)
	}
}

// gitTree is a checkout as a tree to load.
func (d *Daemon) gitTree(co gitsource.Checkout) tree {
	t := tree{dir: co.Root, rev: &api.Revision{Commit: co.Commit, Ref: shortRef(co.Ref)}, source: d.opts.Git.Status().URL}
	if co.Missing {
		t.missing = fmt.Sprintf("--git-path %s is not a directory in commit %s", d.opts.Git.Status().Path, co.Commit)
	}
	return t
}

// reload loads the config in force again (a resync: changed false; SIGHUP:
// true, and the Git source fetches at once).
func (d *Daemon) reload(ctx context.Context, reason string, changed bool) {
	if d.opts.Git == nil {
		d.loadConfig(ctx, reason, d.dirTree(changed))
		return
	}
	if changed {
		d.opts.Git.FetchNow()
	}
	if d.checkout != nil {
		d.loadCheckout(ctx, reason, *d.checkout)
	}
}

// dirTree is the config directory as a tree to load. Its revision (HEAD,
// and whether it is dirty, when it is in a Git work tree) is worked out
// only when changed says the watcher saw a change: working out dirtiness
// hashes every file, and an idle resync must cost nothing.
func (d *Daemon) dirTree(changed bool) tree {
	if changed {
		d.dirRev = nil
		rev, ok, err := gitsource.DirRevision(d.opts.ConfigDir)
		switch {
		case err != nil:
			d.log.Warn("cannot read the config directory's Git revision", "dir", d.opts.ConfigDir, "error", err)
		case ok:
			d.dirRev = &api.Revision{Commit: rev.Commit, Ref: rev.Ref, Dirty: rev.Dirty}
		}
	}
	return tree{dir: d.opts.ConfigDir, rev: d.dirRev, source: d.opts.ConfigDir}
}

// shortRef is a ref's short name: main for refs/heads/main.
func shortRef(ref string) string {
	for _, prefix := range []string{"refs/heads/", "refs/tags/"} {
		if len(ref) > len(prefix) && ref[:len(prefix)] == prefix {
			return ref[len(prefix):]
		}
	}
	return ref
}

// gitStatus is the Git source's state for /v1/config; nil without one.
func (d *Daemon) gitStatus() *api.GitSource {
	if d.opts.Git == nil {
		return nil
	}
	st := d.opts.Git.Status()
	return &api.GitSource{URL: st.URL, Ref: st.Ref, Path: st.Path, IntervalSeconds: st.Interval.Seconds(),
		LastFetch: st.LastFetch, LastSuccess: st.LastSuccess, Error: st.LastError, Failures: st.Failures,
		NextFetch: st.NextFetch, Fetched: st.Fetched}
}

// missingDiagnostics is the load error of a checkout without --git-path.
func missingDiagnostics(t tree) schema.Diagnostics {
	return schema.Diagnostics{{Pos: schema.Pos{File: filepath.Dir(t.dir)}, Message: t.missing}}
}
