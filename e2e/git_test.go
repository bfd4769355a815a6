//go:build linux

package e2e

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/poolmanagerd/pool-managerd/internal/api"
	"github.com/poolmanagerd/pool-managerd/testkit/gitrepo"
)

// serve --git with the real binary: bad input at start, a remote that is
// broken, and the revision that status prints. A bare repository from
// testkit/gitrepo stands in for the remote; pool-managerd reads it by path
// (in-process: main installs go-git's file transport).

// gitFlags make a daemon follow repo instead of --config: "--config=" undoes
// the --config of daemonFlags (the last value of a flag wins).
func gitFlags(repo string, extra ...string) []string {
	return append([]string{"--config=", "--git", repo, "--git-interval", "200ms"}, extra...)
}

// commitConfig makes the repository hold the workspace's node and these
// pools (nodes/NODE.cue, pools/ID.cue), commits and pushes it.
func (w *workspace) commitConfig(repo *gitrepo.Repo, pools ...pool) string {
	w.t.Helper()
	if _, err := os.Stat(filepath.Join(repo.WorkDir(), "pools")); err == nil {
		repo.Remove("pools")
	}
	repo.Write("nodes/"+w.node+".cue", w.n.Decl().CUE())
	for _, p := range pools {
		repo.Write("pools/"+p.ID+".cue", w.poolCUE(p))
	}
	c := repo.Commit()
	repo.Push()
	return c
}

// waitConfig waits until GET /v1/config satisfies cond and returns it.
func (d *daemon) waitConfig(what string, cond func(api.Config) bool) api.Config {
	d.t.Helper()
	var c api.Config
	d.waitFor(what, func() bool {
		c = d.config()
		return cond(c)
	})
	return c
}

func appliedIs(commit string) func(api.Config) bool {
	return func(c api.Config) bool { return c.LastAppliedRevision != nil && c.LastAppliedRevision.Commit == commit }
}

// Options of serve --git that can never work are refused at start with
// exit 2 and a message that names what is wrong, before the network.
func TestGitBadInput(t *testing.T) {
	t.Parallel()
	w := newWorkspace(t)
	keyDir := filepath.Join(w.dir, "keys")
	if err := os.MkdirAll(keyDir, 0o755); err != nil {
		t.Fatal(err)
	}
	notAKey := filepath.Join(w.dir, "not-a-key")
	if err := os.WriteFile(notAKey, []byte("not a key\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	missing := filepath.Join(w.dir, "nosuch-key")
	const sshURL = "ssh://git@git.example.com/pools.git"
	cases := []struct {
		name string
		args []string
		want []string
	}{
		{"unsupported scheme", []string{"--git", "ftp://git.example.com/pools.git"}, []string{`"ftp://git.example.com/pools.git"`, "not supported"}},
		{"not a URL", []string{"--git", "pools/config"}, []string{`"pools/config"`, "neither a URL"}},
		{"no host", []string{"--git", "https:///pools.git"}, []string{`"https:///pools.git"`, "no valid host"}},
		{"ssh without a key", []string{"--git", sshURL}, []string{sshURL, "needs an SSH key file"}},
		{"missing key file", []string{"--git", sshURL, "--git-ssh-key", missing}, []string{"SSH key file", missing, "no such file"}},
		{"unreadable key file", []string{"--git", sshURL, "--git-ssh-key", keyDir}, []string{"SSH key file", keyDir}},
		{"not a key", []string{"--git", sshURL, "--git-ssh-key", notAKey}, []string{notAKey, "not a private key"}},
		{"--config and --git", []string{"--config", w.config, "--git", sshURL}, []string{"--config and --git"}},
		{"negative interval", []string{"--git", "/srv/pools.git", "--git-interval", "-1s"}, []string{"--git-interval"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			args := append([]string{"serve", "--listen", "127.0.0.1:0"}, w.nodeFlags()...)
			args = append(append(args, engineFlags()...), tc.args...)
			r := w.run(nil, args...)
			mustExit(t, r, 2)
			contains(t, "stderr", r.stderr, tc.want...)
		})
	}
	if _, err := os.Stat(filepath.Join(w.state, "git")); err == nil {
		t.Errorf("a refused serve made %s", filepath.Join(w.state, "git"))
	}
}

// A remote that is not a repository or lacks the ref: the daemon starts,
// reports the error (API, metric, log) and retries; the engines an earlier
// daemon left running are not stopped.
func TestGitBrokenRemote(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name string
		// remote makes the --git flags of the case.
		remote func(t *testing.T, w *workspace) []string
		want   string
	}{
		{"not a repository", func(t *testing.T, w *workspace) []string {
			dir := filepath.Join(w.dir, "not-a-repo")
			if err := os.MkdirAll(dir, 0o755); err != nil {
				t.Fatal(err)
			}
			return gitFlags(dir)
		}, "repository not found"},
		{"the ref is missing", func(t *testing.T, w *workspace) []string {
			repo := gitrepo.New(t)
			w.commitConfig(repo, pool{ID: "a"})
			return gitFlags(repo.Path(), "--git-ref", "release")
		}, "no branch or tag"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			w := newWorkspace(t)
			w.writeConfig(pool{ID: "a"})
			d := w.serve()
			before := d.waitPools("a")
			d.term()

			d = w.startDaemon(tc.remote(t, w)...)
			c := d.waitConfig("2 failed fetches", func(c api.Config) bool { return c.Git != nil && c.Git.Failures >= 2 })
			if !strings.Contains(c.Git.Error, tc.want) {
				t.Errorf("git error %q, want it to say %q", c.Git.Error, tc.want)
			}
			if c.LastAppliedRevision != nil || !c.Git.LastSuccess.IsZero() {
				t.Errorf("config %+v, git %+v: want nothing applied, no fetch that worked", c, *c.Git)
			}
			d.metrics().expect(t, "pool_managerd_git_fetch_ok", nil, 0)
			if _, ok := d.findLog(func(e logEvent) bool {
				return e.str("@level") == "warn" && e.str("@message") == "git fetch failed" && strings.Contains(e.str("error"), tc.want)
			}); !ok {
				t.Errorf("no warning \"git fetch failed\" with the error %q in the log", tc.want)
			}
			d.loopRoundTrip("a")
			if list := w.engines()["a"]; len(list) != 1 || list[0].PID != before["a"].PID {
				t.Errorf("pool a's engines %v, want only pid %d, left running", list, before["a"].PID)
			}
			if n := w.spawns("a"); n != 1 {
				t.Errorf("pool a's engine was started %d times, want once", n)
			}
			d.term()
		})
	}
}

// status prints the revision a --git daemon applied, while the daemon runs
// and after it stopped (from the state file).
func TestGitStatusPrintsRevision(t *testing.T) {
	t.Parallel()
	w := newWorkspace(t)
	repo := gitrepo.New(t)
	c1 := w.commitConfig(repo, pool{ID: "a"})
	d := w.startDaemon(gitFlags(repo.Path())...)
	d.waitConfig("lastAppliedRevision "+c1, appliedIs(c1))
	pools := d.waitPools("a")
	contains(t, "status", w.statusText(), "Config revision applied: "+c1+" (main) from "+repo.Path())

	c2 := w.commitConfig(repo, pool{ID: "a"}, pool{ID: "b", Devices: []int{1}})
	d.waitConfig("lastAppliedRevision "+c2, appliedIs(c2))
	d.waitPools("b")
	d.samePIDs(pools, "a")
	d.term()
	text := w.statusText()
	contains(t, "status after the daemon stopped", text, "Config revision applied: "+c2+" (main) from "+repo.Path())
	if strings.Contains(text, c1) {
		t.Errorf("status still names %s:\n%s", c1, text)
	}
}
