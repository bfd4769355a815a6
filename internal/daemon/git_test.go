//go:build linux

package daemon_test

import (
	"fmt"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/poolmanagerd/pool-managerd/internal/api"
	"github.com/poolmanagerd/pool-managerd/internal/daemon"
	"github.com/poolmanagerd/pool-managerd/internal/executor"
	"github.com/poolmanagerd/pool-managerd/internal/gitsource"
	"github.com/poolmanagerd/pool-managerd/testkit/gitrepo"
)

// The built-in Git source (serve --git) with real engines on the sim node.
// A bare repository made by testkit/gitrepo stands in for the remote; the
// daemon reads it by path, in-process (TestMain installs the file
// transport). The fetch interval is short, and every test waits on what
// the daemon reports (/v1/config's revisions and git state), never on time.

// gitInterval is the fetch interval of these tests.
const gitInterval = 200 * time.Millisecond

// withGit makes the daemon follow repo instead of the config directory;
// edit changes the source's options first.
func withGit(t *testing.T, repo *gitrepo.Repo, edit ...func(*gitsource.Options)) func(*daemon.Options) {
	return func(o *daemon.Options) {
		t.Helper()
		opts := gitsource.Options{URL: repo.Path(), Interval: gitInterval, Dir: filepath.Join(o.StateDir, "git"), Logger: o.Logger.Named("git")}
		for _, e := range edit {
			e(&opts)
		}
		src, err := gitsource.New(opts)
		if err != nil {
			t.Fatalf("gitsource.New: %v", err)
		}
		o.Git, o.ConfigDir = src, ""
	}
}

// commitPools makes the repository's tree under dir ("" for its root) the
// node's declaration and these pools, laid out as writeSplit lays them
// (nodes.cue, pools/ID.cue), and commits it. It does not push.
func (n *node) commitPools(repo *gitrepo.Repo, dir string, pools ...pool) string {
	n.t.Helper()
	at := func(rel string) string { return path.Join(dir, rel) }
	if _, err := os.Stat(filepath.Join(repo.WorkDir(), filepath.FromSlash(at("pools")))); err == nil {
		repo.Remove(at("pools"))
	}
	decl := n.env.Decl()
	decl.Name = n.name
	repo.Write(at("nodes.cue"), decl.CUE())
	for _, p := range pools {
		repo.Write(at("pools/"+p.id+".cue"), n.spec(n.name, p).CUE())
	}
	return repo.Commit()
}

// waitConfig waits until /v1/config satisfies cond, and returns it.
func (r *running) waitConfig(what string, cond func(api.Config) bool) api.Config {
	r.t.Helper()
	var c api.Config
	r.waitUntil(func() string {
		return fmt.Sprintf("%s (config: %s)", what, configString(c))
	}, func() bool {
		c = r.d.Config()
		return cond(c)
	})
	return c
}

// waitApplied waits until /v1/config's lastAppliedRevision is commit.
func (r *running) waitApplied(commit string) api.Config {
	r.t.Helper()
	return r.waitConfig("lastAppliedRevision "+commit, func(c api.Config) bool {
		return c.LastAppliedRevision != nil && c.LastAppliedRevision.Commit == commit
	})
}

// waitRefused waits until /v1/config says commit was attempted and failed
// to load. (lastAttemptedRevision is set as the load begins: waiting for
// it alone races the load's outcome.)
func (r *running) waitRefused(commit string) api.Config {
	r.t.Helper()
	return r.waitConfig("lastAttemptedRevision "+commit+", invalid", func(c api.Config) bool {
		return c.LastAttemptedRevision != nil && c.LastAttemptedRevision.Commit == commit && !c.Valid
	})
}

// configString prints what the Git tests look at in a config.
func configString(c api.Config) string {
	s := fmt.Sprintf("valid %v applied %q attempted %q dir %s", c.Valid, c.LastAppliedRevision.String(), c.LastAttemptedRevision.String(), c.Dir)
	if c.HeldBack != nil {
		s += " heldBack " + c.HeldBack.Reason
	}
	if g := c.Git; g != nil {
		s += fmt.Sprintf(" git{fetched %s error %q failures %d lastFetch %s nextFetch %s}", g.Fetched, g.Error, g.Failures,
			g.LastFetch.Format("15:04:05.000"), g.NextFetch.Format("15:04:05.000"))
	}
	if len(c.Errors) > 0 {
		s += " errors: " + errorsText(c)
	}
	return s
}

// logLines are the lines of the daemon's log that hold every one of subs.
func (r *running) logLines(subs ...string) []string {
	var out []string
	for _, line := range strings.Split(r.log.String(), "\n") {
		if !slices.ContainsFunc(subs, func(s string) bool { return !strings.Contains(line, s) }) {
			out = append(out, line)
		}
	}
	return out
}

// wantLogged checks that a line of the log holds every one of subs,
// waiting for it up to waitTimeout: the daemon may log an event just after
// the state that the test waited on shows it.
func (r *running) wantLogged(subs ...string) {
	r.t.Helper()
	deadline := time.Now().Add(waitTimeout)
	for len(r.logLines(subs...)) == 0 {
		if time.Now().After(deadline) {
			r.t.Errorf("no line of the daemon's log holds all of %q", subs)
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// samePIDs checks that the pools are Ready on the engines of pids, and
// that this daemon never stopped one.
func (r *running) samePIDs(pids map[string]int) {
	r.t.Helper()
	for id, pid := range pids {
		if p := r.pool(id); !p.Ready || p.PID != pid {
			r.t.Errorf("%v, want Ready on the engine pid %d it had", poolString(p), pid)
		}
		if !alive(pid) {
			r.t.Errorf("pool %s's engine pid %d is gone", id, pid)
		}
		if c := r.stepCount(id, executor.StepStopped); c != 0 {
			r.t.Errorf("pool %s's engine was stopped %d times, want never", id, c)
		}
	}
}

// checkouts lists the commits checked out under the state directory.
func (n *node) checkouts() []string {
	n.t.Helper()
	dirs, err := filepath.Glob(filepath.Join(n.state, "git", "*", "checkouts", "*"))
	if err != nil {
		n.t.Fatal(err)
	}
	var out []string
	for _, d := range dirs {
		if b := filepath.Base(d); !strings.HasPrefix(b, ".") {
			out = append(out, b)
		}
	}
	slices.Sort(out)
	return out
}

// A new commit is applied at the next fetch, without a SIGHUP: the
// revision it reports is the commit's, the pool it adds runs, the others
// are untouched.
func TestGitNewCommitApplied(t *testing.T) {
	t.Parallel()
	n := newNode(t, 1)
	repo := gitrepo.New(t)
	a, b := pool{id: "a"}, pool{id: "b"}
	c1 := n.commitPools(repo, "", a)
	repo.Push()
	r := n.start(withGit(t, repo))

	c := r.waitApplied(c1)
	pids := r.waitReady("a")
	if rev := c.LastAppliedRevision; rev.Ref != gitrepo.Branch || rev.Dirty {
		t.Errorf("lastAppliedRevision %+v, want ref %s, not dirty", rev, gitrepo.Branch)
	}

	// The next fetch, one interval after the last, finds it: no SIGHUP,
	// no FetchNow.
	c2 := n.commitPools(repo, "", a, b)
	repo.Push()
	c = r.waitApplied(c2)
	r.waitReady("b")
	r.samePIDs(pids)

	if !c.Valid || c.LastAttemptedRevision.String() != c.LastAppliedRevision.String() || !slices.Equal(c.Pools, []string{"a", "b"}) {
		t.Errorf("config %s, pools %v: want valid, attempted = applied, pools a and b", configString(c), c.Pools)
	}
	if !strings.HasSuffix(c.Dir, string(filepath.Separator)+c2) {
		t.Errorf("config dir %s, want the checkout of %s", c.Dir, c2)
	}
	g := c.Git
	if g == nil {
		t.Fatalf("/v1/config has no git state: %s", configString(c))
	}
	if g.URL != repo.Path() || g.Ref != gitrepo.Branch || g.Path != "" || g.IntervalSeconds != gitInterval.Seconds() {
		t.Errorf("git state names %q %q %q every %vs, want %s %s, no path, every %vs", g.URL, g.Ref, g.Path, g.IntervalSeconds, repo.Path(), gitrepo.Branch, gitInterval.Seconds())
	}
	if g.Fetched != c2 || g.Error != "" || g.Failures != 0 || g.LastSuccess.IsZero() || !g.NextFetch.After(g.LastFetch) {
		t.Errorf("git state %s, want fetched %s, no error, a next fetch after the last", configString(c), c2)
	}

	wantMetric(t, r.reg, "pool_managerd_config_revision_info", l("revision", c2, "source", repo.Path()), 1)
	if v, ok := metric(t, r.reg, "pool_managerd_config_revision_info", l("revision", c1)); ok {
		t.Errorf("config_revision_info still has the series of %s (%v)", c1, v)
	}
	wantMetric(t, r.reg, "pool_managerd_git_fetch_ok", nil, 1)
	wantMetric(t, r.reg, "pool_managerd_git_fetch_failures", nil, 0)
	if v, ok := metric(t, r.reg, "pool_managerd_git_last_success_timestamp_seconds", nil); !ok || v <= 0 {
		t.Errorf("git_last_success_timestamp_seconds = %v (present %v), want a time", v, ok)
	}
	r.wantLogged("config loaded", "revision="+c2, "ref=main")
	if st := n.loadState(); st.AppliedRevision == nil || st.AppliedRevision.Commit != c2 || st.AppliedRevision.Source != repo.Path() {
		t.Errorf("state file appliedRevision %+v, want %s from %s", st.AppliedRevision, c2, repo.Path())
	}
}

// A commit that fails to load is attempted, reported with its hash, and
// never applied; the engines are untouched; the next good commit is
// applied.
func TestGitBadCommitNotApplied(t *testing.T) {
	t.Parallel()
	n := newNode(t, 1)
	repo := gitrepo.New(t)
	a, b := pool{id: "a"}, pool{id: "b"}
	c1 := n.commitPools(repo, "", a)
	repo.Push()
	r := n.start(withGit(t, repo))
	r.waitApplied(c1)
	pids := r.waitReady("a")

	repo.Write("pools/broken.cue", "package poolmanagerd\n\npools: a: colour: \"red\"\n")
	c2 := repo.Commit()
	repo.Push()
	c := r.waitRefused(c2)
	if !strings.Contains(errorsText(c), "colour") {
		t.Errorf("after the bad commit: %s, want an error about colour", configString(c))
	}
	if c.LastAppliedRevision == nil || c.LastAppliedRevision.Commit != c1 {
		t.Errorf("lastAppliedRevision %q after the bad commit, want still %s", c.LastAppliedRevision.String(), c1)
	}
	r.waitFor("the bad commit to be logged", func() bool { return len(r.logLines("config invalid", "revision="+c2)) > 0 })
	wantMetric(t, r.reg, "pool_managerd_config_revision_info", l("revision", c1), 1)
	wantMetric(t, r.reg, "pool_managerd_config_valid", nil, 0)
	r.settle()
	r.samePIDs(pids)
	if st := n.loadState(); st.AppliedRevision == nil || st.AppliedRevision.Commit != c1 {
		t.Errorf("state file appliedRevision %+v, want still %s", st.AppliedRevision, c1)
	}

	repo.Remove("pools/broken.cue")
	c3 := n.commitPools(repo, "", a, b)
	repo.Push()
	c = r.waitApplied(c3)
	if !c.Valid || c.LastAttemptedRevision.Commit != c3 {
		t.Errorf("after the good commit: %s, want valid, attempted %s", configString(c), c3)
	}
	r.waitReady("b")
	r.samePIDs(pids)
	r.wantLogged("config loaded", "revision="+c3)
}

// A branch whose history is rewritten and force-pushed is followed.
func TestGitForcePushFollowed(t *testing.T) {
	t.Parallel()
	n := newNode(t, 1)
	repo := gitrepo.New(t)
	a, b, c := pool{id: "a"}, pool{id: "b"}, pool{id: "c"}
	c1 := n.commitPools(repo, "", a)
	c2 := n.commitPools(repo, "", a, b)
	repo.Push()
	r := n.start(withGit(t, repo))
	r.waitApplied(c2)
	pids := r.waitReady("a", "b")

	repo.Reset(c1)
	c3 := n.commitPools(repo, "", a, c)
	repo.ForcePush()
	cfg := r.waitApplied(c3)
	if cfg.Git.Fetched != c3 || cfg.Git.Error != "" {
		t.Errorf("after the force push: %s, want fetched %s without an error", configString(cfg), c3)
	}
	r.waitReady("c")
	r.waitFor("pool b's engine, gone from the rewritten history, to be stopped", func() bool { return !alive(pids["b"]) })
	r.samePIDs(map[string]int{"a": pids["a"]})
}

// An unreachable remote: the last applied revision keeps running, the
// failure is reported (API, metric, log once) and retried with a growing
// backoff; once the remote is back, the next commit is applied.
func TestGitUnreachableRemote(t *testing.T) {
	t.Parallel()
	n := newNode(t, 1)
	repo := gitrepo.New(t)
	a, b := pool{id: "a"}, pool{id: "b"}
	c1 := n.commitPools(repo, "", a)
	repo.Push()
	r := n.start(withGit(t, repo))
	r.waitApplied(c1)
	pids := r.waitReady("a")

	repo.Hide()
	// The gap between a failed fetch and the next, by count of failures.
	gaps := map[int]time.Duration{}
	var c api.Config
	r.waitUntil(func() string { return "3 failed fetches in a row: " + configString(c) }, func() bool {
		c = r.d.Config()
		if g := c.Git; g != nil && g.Failures > 0 {
			gaps[g.Failures] = g.NextFetch.Sub(g.LastFetch)
			return g.Failures >= 3
		}
		return false
	})
	for k := 1; k < 3; k++ {
		// Retries back off: base·2^(n-1), ±10 % of jitter, so each gap is
		// more than 1.6 times the one before (jitter alone: 1.23 at most).
		if gaps[k] == 0 || float64(gaps[k+1]) < 1.5*float64(gaps[k]) {
			t.Errorf("nextFetch-lastFetch after %d failures %v, after %d %v: want the retry to back off (gaps %v)", k, gaps[k], k+1, gaps[k+1], gaps)
		}
	}
	if !strings.Contains(c.Git.Error, "repository not found") {
		t.Errorf("git error %q, want it to say the repository is not found", c.Git.Error)
	}
	if !c.Valid || c.LastAppliedRevision.Commit != c1 || c.Git.Fetched != c1 {
		t.Errorf("with the remote unreachable: %s, want %s still applied and valid", configString(c), c1)
	}
	wantMetric(t, r.reg, "pool_managerd_git_fetch_ok", nil, 0)
	if v, _ := metric(t, r.reg, "pool_managerd_git_fetch_failures", nil); v < 3 {
		t.Errorf("git_fetch_failures = %v, want at least 3", v)
	}
	wantMetric(t, r.reg, "pool_managerd_config_revision_info", l("revision", c1), 1)
	if warns := r.logLines("[WARN]", "git fetch failed"); len(warns) != 1 {
		t.Errorf("%d warnings about the failed fetch, want one (repeats at debug):\n%s", len(warns), strings.Join(warns, "\n"))
	}
	r.settle()
	r.samePIDs(pids)

	repo.Unhide()
	r.waitUntil(func() string { return "a fetch to work again: " + configString(r.d.Config()) }, func() bool {
		g := r.d.Config().Git
		return g.Error == "" && g.Failures == 0
	})
	r.waitMetric("pool_managerd_git_fetch_ok", nil, 1)
	r.wantLogged("git fetch succeeded after failures")
	c2 := n.commitPools(repo, "", a, b)
	repo.Push()
	r.waitApplied(c2)
	r.waitReady("b")
	r.samePIDs(pids)
}

// A commit that deletes every pool of the node is held back: the engines
// keep running on the last applied revision until a commit brings pools.
func TestGitCommitDeletingEveryPoolHeldBack(t *testing.T) {
	t.Parallel()
	n := newNode(t, 1)
	repo := gitrepo.New(t)
	a, b := pool{id: "a"}, pool{id: "b"}
	c1 := n.commitPools(repo, "", a, b)
	repo.Push()
	r := n.start(withGit(t, repo), settleAfter(50*time.Millisecond))
	r.waitApplied(c1)
	pids := r.waitReady("a", "b")

	c2 := n.commitPools(repo, "")
	repo.Push()
	c := r.waitConfig(c2+" held back", func(c api.Config) bool {
		return c.LastAttemptedRevision != nil && c.LastAttemptedRevision.Commit == c2 && c.HeldBack != nil
	})
	for _, want := range []string{"no pools", "2 engines run", "a, b", "--allow-empty"} {
		if !strings.Contains(c.HeldBack.Reason, want) {
			t.Errorf("heldBack reason %q does not say %q", c.HeldBack.Reason, want)
		}
	}
	if c.LastAppliedRevision.Commit != c1 || c.LastAttemptedRevision.Commit != c2 {
		t.Errorf("held back: %s, want applied %s, attempted %s", configString(c), c1, c2)
	}
	r.waitMetric("pool_managerd_config_held_back", nil, 1)
	wantMetric(t, r.reg, "pool_managerd_config_revision_info", l("revision", c1), 1)
	r.wantLogged("config held back", "revision="+c2)
	r.settle()
	r.samePIDs(pids)

	c3 := n.commitPools(repo, "", a, b)
	repo.Push()
	c = r.waitApplied(c3)
	if c.HeldBack != nil {
		t.Errorf("after a commit with pools: %s, want nothing held back", configString(c))
	}
	r.waitMetric("pool_managerd_config_held_back", nil, 0)
	r.settle()
	r.samePIDs(pids)
}

// A daemon restarted while the remote cannot be reached starts from the
// checkout of the revision in force, which cleanup kept: it adopts the
// engines and stops nothing.
func TestGitRestartWithRemoteUnreachable(t *testing.T) {
	t.Parallel()
	n := newNode(t, 1)
	repo := gitrepo.New(t)
	a, b, c := pool{id: "a"}, pool{id: "b"}, pool{id: "c"}
	c1 := n.commitPools(repo, "", a)
	repo.Push()
	r := n.start(withGit(t, repo))
	r.waitApplied(c1)
	r.waitReady("a")
	c2 := n.commitPools(repo, "", a, b)
	repo.Push()
	r.waitApplied(c2)
	pids := r.waitReady("a", "b")
	r.waitFor("the checkout of "+c1+" to be cleaned up", func() bool { return slices.Equal(n.checkouts(), []string{c2}) })
	r.shutdown()

	repo.Hide()
	r = n.start(withGit(t, repo))
	cfg := r.waitApplied(c2)
	if cfg.LastAppliedRevision.Ref != gitrepo.Branch {
		t.Errorf("lastAppliedRevision after the restart %q, want the ref %s from the state file", cfg.LastAppliedRevision.String(), gitrepo.Branch)
	}
	r.waitUntil(func() string { return "2 failed fetches: " + configString(r.d.Config()) }, func() bool {
		g := r.d.Config().Git
		return g.Failures >= 2 && g.Error != ""
	})
	r.settle()
	r.samePIDs(pids)
	for id := range pids {
		if s := r.stepCount(id, executor.StepIntent); s != 0 {
			t.Errorf("the restarted daemon started pool %s %d times, want it adopted", id, s)
		}
	}
	if got := n.checkouts(); !slices.Equal(got, []string{c2}) {
		t.Errorf("checkouts %v with the remote unreachable, want the one in force, %s", got, c2)
	}
	r.wantLogged("start: the last applied revision", "revision="+c2)
	wantMetric(t, r.reg, "pool_managerd_config_revision_info", l("revision", c2, "source", repo.Path()), 1)

	// Back online: the next commit is applied, and the old checkout goes.
	repo.Unhide()
	c3 := n.commitPools(repo, "", a, b, c)
	repo.Push()
	r.waitApplied(c3)
	r.waitReady("c")
	r.samePIDs(pids)
	r.waitFor("the checkout of "+c2+" to be cleaned up", func() bool { return slices.Equal(n.checkouts(), []string{c3}) })
}

// --git-path: a subdirectory of the repository is the config root; a
// commit without it is a load error that changes nothing.
func TestGitPath(t *testing.T) {
	t.Parallel()
	n := newNode(t, 1)
	repo := gitrepo.New(t)
	a := pool{id: "a"}
	// Outside the config root: it would fail to load if it were read.
	repo.Write("broken.cue", "this is not CUE {\n")
	c1 := n.commitPools(repo, "deploy/prod", a)
	repo.Push()
	r := n.start(withGit(t, repo, func(o *gitsource.Options) { o.Path = "./deploy/prod/" }))
	c := r.waitApplied(c1)
	pids := r.waitReady("a")
	if !c.Valid || c.Git.Path != "deploy/prod" || !strings.HasSuffix(c.Dir, filepath.Join(c1, "deploy", "prod")) {
		t.Errorf("config %s, git path %q: want valid, the path cleaned to deploy/prod, the dir that path in the checkout", configString(c), c.Git.Path)
	}

	repo.Remove("deploy")
	repo.Write("elsewhere/README", "moved\n")
	c2 := repo.Commit()
	repo.Push()
	c = r.waitRefused(c2)
	if want := "--git-path deploy/prod is not a directory in commit " + c2; !strings.Contains(errorsText(c), want) {
		t.Errorf("after a commit without the path: %s, want the error %q", configString(c), want)
	}
	if c.LastAppliedRevision.Commit != c1 {
		t.Errorf("lastAppliedRevision %q, want still %s", c.LastAppliedRevision.String(), c1)
	}
	r.settle()
	r.samePIDs(pids)
}

// A plain --config directory that is a Git work tree: the revision is its
// HEAD, dirty once the watcher has seen an uncommitted edit.
func TestGitWorkTreeConfigDir(t *testing.T) {
	t.Parallel()
	n := newNode(t, 1)
	repo := gitrepo.New(t)
	a, b := pool{id: "a"}, pool{id: "b"}
	c1 := n.commitPools(repo, "", a)
	dir := repo.WorkDir()
	r := n.start(func(o *daemon.Options) { o.ConfigDir = dir })
	c := r.waitApplied(c1)
	pids := r.waitReady("a")
	if want := (api.Revision{Commit: c1, Ref: gitrepo.Branch}); *c.LastAppliedRevision != want || c.Git != nil {
		t.Errorf("lastAppliedRevision %+v (git state %+v), want %+v and no git state", *c.LastAppliedRevision, c.Git, want)
	}
	wantMetric(t, r.reg, "pool_managerd_config_revision_info", l("revision", c1, "source", dir), 1)

	// Not committed: the revision is dirty.
	repo.Write("pools/b.cue", n.spec(n.name, b).CUE())
	r.waitFor("the revision to be dirty", func() bool {
		rev := r.d.Config().LastAppliedRevision
		return rev != nil && rev.Dirty
	})
	r.waitReady("b")
	c = r.d.Config()
	if want := (api.Revision{Commit: c1, Ref: gitrepo.Branch, Dirty: true}); *c.LastAppliedRevision != want {
		t.Errorf("after an uncommitted edit: lastAppliedRevision %+v, want %+v", *c.LastAppliedRevision, want)
	}
	wantMetric(t, r.reg, "pool_managerd_config_revision_info", l("revision", c1+"+dirty", "source", dir), 1)
	r.wantLogged("config loaded", "revision="+c1, "dirty=true")
	if st := n.loadState(); st.AppliedRevision == nil || !st.AppliedRevision.Dirty || st.AppliedRevision.Source != dir {
		t.Errorf("state file appliedRevision %+v, want %s dirty from %s", st.AppliedRevision, c1, dir)
	}

	// Committed: the watcher does not see .git, a SIGHUP loads it again.
	c2 := repo.Commit()
	r.d.Reload()
	c = r.waitApplied(c2)
	if want := (api.Revision{Commit: c2, Ref: gitrepo.Branch}); *c.LastAppliedRevision != want {
		t.Errorf("after the commit and a SIGHUP: lastAppliedRevision %+v, want %+v", *c.LastAppliedRevision, want)
	}
	r.samePIDs(pids)
}
