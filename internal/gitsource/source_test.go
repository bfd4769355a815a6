package gitsource

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/go-git/go-git/v5"
	"github.com/go-git/go-git/v5/plumbing"
	"github.com/go-git/go-git/v5/plumbing/filemode"
	"github.com/go-git/go-git/v5/plumbing/object"
	"github.com/go-git/go-git/v5/plumbing/storer"
	"github.com/google/go-cmp/cmp"

	"github.com/poolmanagerd/pool-managerd/testkit/gitrepo"
)

func TestFirstFetchDeliversTheWholeTree(t *testing.T) {
	remote := gitrepo.New(t)
	remote.Write("nodes/gpu-01.cue", "nodes: x: {}\n")
	remote.Write("pools/team-a/deep/a.cue", "pools: a: {}\n")
	remote.WriteMode("bin/hook.sh", "#!/bin/sh\n", 0o755)
	remote.Symlink("current.cue", "nodes/gpu-01.cue")
	remote.Symlink("team", "pools/team-a")
	commit := remote.Commit()
	remote.Push()

	want := map[string]string{
		"nodes":                   "dir 0755",
		"nodes/gpu-01.cue":        "file 0644 nodes: x: {}\n",
		"pools":                   "dir 0755",
		"pools/team-a":            "dir 0755",
		"pools/team-a/deep":       "dir 0755",
		"pools/team-a/deep/a.cue": "file 0644 pools: a: {}\n",
		"bin":                     "dir 0755",
		"bin/hook.sh":             "file 0755 #!/bin/sh\n",
		"current.cue":             "link -> nodes/gpu-01.cue",
		"team":                    "link -> pools/team-a",
	}
	for _, tc := range []struct {
		name, url string
	}{
		{"bare repository by path", remote.Path()},
		{"bare repository by file URL", "file://" + remote.Path()},
		{"work tree by path", remote.WorkDir()},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := mustNew(t, Options{URL: tc.url, Interval: time.Hour})
			// A temporary checkout left by a crash.
			crash := filepath.Join(s.checkoutsDir, tmpPrefix+"crashed")
			if err := os.MkdirAll(filepath.Join(crash, "x"), 0o755); err != nil {
				t.Fatal(err)
			}
			r := run(t, s)
			co := r.next(t)
			if co.Commit != commit || co.Ref != "refs/heads/main" || co.Missing {
				t.Errorf("checkout %+v, want commit %s of refs/heads/main, not missing", co, commit)
			}
			if wantRoot := filepath.Join(s.checkoutsDir, commit); co.Root != wantRoot || !filepath.IsAbs(co.Root) {
				t.Errorf("Root %q, want %q (absolute)", co.Root, wantRoot)
			}
			if diff := cmp.Diff(want, describeTree(t, co.Root)); diff != "" {
				t.Errorf("checked-out tree (-want +got):\n%s", diff)
			}
			if got := checkoutDirs(t, s); !cmp.Equal(got, map[string]bool{commit: true}) {
				t.Errorf("checkouts dir holds %v, want only %s (the crash's temporary dir removed)", got, commit)
			}
			st := r.attempt(t)
			if st.Fetched != commit || st.LastError != "" || st.Failures != 0 || st.LastSuccess.IsZero() || !st.LastSuccess.Equal(st.LastFetch) {
				t.Errorf("status after success %+v", st)
			}
			if got := st.NextFetch.Sub(st.LastFetch); got != time.Hour {
				t.Errorf("NextFetch - LastFetch = %v, want the interval 1h", got)
			}
			if st.URL != tc.url || st.Ref != "main" || st.Path != "" || st.Interval != time.Hour {
				t.Errorf("status names %q %q %q %v", st.URL, st.Ref, st.Path, st.Interval)
			}
		})
	}
}

func TestFollowsNewCommitsAndForcePushes(t *testing.T) {
	remote := gitrepo.New(t)
	remote.Write("pools/a.cue", "v1\n")
	c1 := remote.Commit()
	remote.Push()

	r := start(t, Options{URL: remote.Path(), Interval: time.Hour})
	if co := r.next(t); co.Commit != c1 {
		t.Fatalf("first checkout %s, want %s", co.Commit, c1)
	}
	r.attempt(t)

	remote.Write("pools/a.cue", "v2\n")
	remote.Write("pools/b.cue", "b\n")
	c2 := remote.Commit()
	remote.Push()
	r.FetchNow()
	r.nextIs(t, "after a new commit", c2, map[string]string{
		"pools":       "dir 0755",
		"pools/a.cue": "file 0644 v2\n",
		"pools/b.cue": "file 0644 b\n",
	})
	r.attempt(t)

	// Rewrite history: c2 is dropped, c3 is built on c1, and force-pushed.
	remote.Reset(c1)
	remote.Write("pools/c.cue", "c\n")
	c3 := remote.Commit()
	remote.ForcePush()
	r.FetchNow()
	r.nextIs(t, "after a force push", c3, map[string]string{
		"pools":       "dir 0755",
		"pools/a.cue": "file 0644 v1\n",
		"pools/c.cue": "file 0644 c\n",
	})
	r.attempt(t)

	// Nothing new: no delivery.
	r.FetchNow()
	if st := r.attempt(t); st.Fetched != c3 || st.LastError != "" {
		t.Errorf("status of a fetch with nothing new: %+v", st)
	}
	r.noDelivery(t)
}

func TestTagRefs(t *testing.T) {
	remote := gitrepo.New(t)
	remote.Write("a.cue", "one\n")
	c1 := remote.Commit()
	remote.Write("a.cue", "two\n")
	c2 := remote.Commit()
	remote.Push()
	if _, err := remote.Work().CreateTag("v1-light", plumbing.NewHash(c1), nil); err != nil {
		t.Fatal(err)
	}
	if _, err := remote.Work().CreateTag("v1-annotated", plumbing.NewHash(c1), &git.CreateTagOptions{Tagger: sig, Message: "release"}); err != nil {
		t.Fatal(err)
	}
	// A branch and a tag of one name: the branch wins.
	if _, err := remote.Work().CreateTag("both", plumbing.NewHash(c1), nil); err != nil {
		t.Fatal(err)
	}
	if err := remote.Work().Storer.SetReference(plumbing.NewHashReference(plumbing.NewBranchReferenceName("both"), plumbing.NewHash(c2))); err != nil {
		t.Fatal(err)
	}
	remote.Push("refs/tags/*:refs/tags/*", "refs/heads/both:refs/heads/both")

	for _, tc := range []struct {
		ref, commit, fullRef, content string
	}{
		{"v1-light", c1, "refs/tags/v1-light", "one\n"},
		{"v1-annotated", c1, "refs/tags/v1-annotated", "one\n"},
		{"both", c2, "refs/heads/both", "two\n"},
	} {
		t.Run(tc.ref, func(t *testing.T) {
			r := start(t, Options{URL: remote.Path(), Ref: tc.ref, Interval: time.Hour})
			co := r.next(t)
			if co.Commit != tc.commit || co.Ref != tc.fullRef {
				t.Errorf("checkout %s of %s, want %s of %s", co.Commit, co.Ref, tc.commit, tc.fullRef)
			}
			if b, err := os.ReadFile(filepath.Join(co.Root, "a.cue")); err != nil || string(b) != tc.content {
				t.Errorf("a.cue = %q, %v; want %q", b, err, tc.content)
			}
			if st := r.attempt(t); st.Ref != tc.ref || st.Fetched != tc.commit {
				t.Errorf("status %+v", st)
			}
		})
	}
}

func TestFailuresBackOffAndDeliverNothing(t *testing.T) {
	remote := gitrepo.New(t)
	remote.Write("a.cue", "a\n")
	remote.Commit()
	remote.Push()
	notRepo := t.TempDir()

	const interval = 40 * time.Millisecond
	for _, tc := range []struct {
		name, url, ref, want string
	}{
		{"missing ref", remote.Path(), "nope", `no branch or tag "nope"`},
		{"directory that is not a repository", notRepo, "", "repository not found"},
		{"path that does not exist", filepath.Join(notRepo, "absent.git"), "", "repository not found"},
		{"unreachable remote", "http://127.0.0.1:1/x.git", "", "connection refused"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := start(t, Options{URL: tc.url, Ref: tc.ref, Interval: interval})
			var gaps []time.Duration
			for i := 1; i <= 3; i++ {
				st := r.attempt(t)
				if st.Failures != i {
					t.Fatalf("attempt %d: Failures = %d (status %+v)", i, st.Failures, st)
				}
				if !strings.Contains(st.LastError, tc.want) {
					t.Errorf("attempt %d: LastError %q does not say %q", i, st.LastError, tc.want)
				}
				if st.Fetched != "" || !st.LastSuccess.IsZero() {
					t.Errorf("attempt %d: a failed source reports a fetch: %+v", i, st)
				}
				gaps = append(gaps, st.NextFetch.Sub(st.LastFetch))
			}
			for i := 1; i < len(gaps); i++ {
				if gaps[i] <= gaps[i-1] {
					t.Errorf("retry delays %v do not grow", gaps)
				}
			}
			if gaps[0] < interval*9/10 {
				t.Errorf("first retry after %v, want about the interval %v (its floor for intervals under 1s)", gaps[0], interval)
			}
			r.noDelivery(t)
		})
	}
}

func TestSuccessResetsTheBackoff(t *testing.T) {
	remote := gitrepo.New(t)
	remote.Write("a.cue", "a\n")
	c1 := remote.Commit()
	remote.Push()

	r := start(t, Options{URL: remote.Path(), Ref: "dev", Interval: 50 * time.Millisecond})
	for i := 1; i <= 2; i++ {
		if st := r.attempt(t); st.Failures != i {
			t.Fatalf("attempt %d: Failures = %d", i, st.Failures)
		}
	}
	remote.Push("refs/heads/main:refs/heads/dev")
	r.FetchNow()
	if co := r.next(t); co.Commit != c1 || co.Ref != "refs/heads/dev" {
		t.Fatalf("checkout %+v, want %s of refs/heads/dev", co, c1)
	}
	var st Status
	for st = r.attempt(t); st.Failures != 0; st = r.attempt(t) {
	}
	if st.LastError != "" || st.Fetched != c1 || st.NextFetch.Sub(st.LastFetch) != 50*time.Millisecond {
		t.Errorf("status after recovery %+v, want no error and the next fetch one interval later", st)
	}
}

func TestPath(t *testing.T) {
	remote := gitrepo.New(t)
	remote.Write("deploy/prod/pools.cue", "prod\n")
	remote.Write("README", "r\n")
	c1 := remote.Commit()
	remote.Push()

	for _, tc := range []struct {
		path, sub string
		missing   bool
	}{
		{"", "", false},
		{"deploy/prod", "deploy/prod", false},
		{"./deploy/prod/", "deploy/prod", false},
		{"deploy/test", "deploy/test", true},
		{"README", "README", true}, // a file is not a config directory
	} {
		t.Run(tc.path, func(t *testing.T) {
			r := start(t, Options{URL: remote.Path(), Path: tc.path, Interval: time.Hour})
			co := r.next(t)
			want := filepath.Join(r.checkoutsDir, c1, filepath.FromSlash(tc.sub))
			if co.Root != want || co.Missing != tc.missing {
				t.Errorf("Root %q Missing %v, want %q %v", co.Root, co.Missing, want, tc.missing)
			}
			if st := r.Status(); st.Path != tc.sub {
				t.Errorf("Status.Path %q, want %q", st.Path, tc.sub)
			}
		})
	}

	// The path disappears in a later commit: delivered, Missing.
	r := start(t, Options{URL: remote.Path(), Path: "deploy/prod", Interval: time.Hour})
	if co := r.next(t); co.Missing {
		t.Fatalf("first checkout %+v is missing its path", co)
	}
	remote.Remove("deploy")
	c2 := remote.Commit()
	remote.Push()
	r.FetchNow()
	if co := r.next(t); co.Commit != c2 || !co.Missing {
		t.Errorf("checkout %+v, want %s with Missing set", co, c2)
	}
}

func TestCleanupKeepsTheCheckoutInForce(t *testing.T) {
	remote := gitrepo.New(t)
	dir := t.TempDir()
	commit := func(content string) string {
		remote.Write("a.cue", content)
		c := remote.Commit()
		remote.Push()
		return c
	}
	c1 := commit("1")
	r := start(t, Options{URL: remote.Path(), Dir: dir, Interval: time.Hour})
	deliver := func(want string) {
		t.Helper()
		r.FetchNow()
		if co := r.next(t); co.Commit != want {
			t.Fatalf("checkout %s, want %s", co.Commit, want)
		}
		r.attempt(t)
	}
	onDisk := func(want ...string) {
		t.Helper()
		w := map[string]bool{}
		for _, c := range want {
			w[c] = true
		}
		if got := checkoutDirs(t, r.Source); !cmp.Equal(got, w) {
			t.Errorf("checkouts on disk %v, want %v", got, w)
		}
	}

	if co := r.next(t); co.Commit != c1 {
		t.Fatalf("first checkout %s, want %s", co.Commit, c1)
	}
	r.attempt(t)
	c2 := commit("2")
	deliver(c2)
	onDisk(c1, c2) // nothing is removed before the daemon says what is in force

	r.InForce(c1)
	onDisk(c1, c2) // c2 was taken: the daemon may be loading it

	c3 := commit("3")
	deliver(c3)
	onDisk(c1, c2, c3) // c2 is still the last one taken before c3
	c4 := commit("4")
	deliver(c4)
	onDisk(c1, c3, c4) // in force, last taken, delivered

	r.InForce(c4)
	onDisk(c4)

	// A checkout the daemon never took is replaced and removed.
	c5 := commit("5")
	r.FetchNow()
	r.attempt(t)
	c6 := commit("6")
	r.FetchNow()
	r.attempt(t)
	if co := r.next(t); co.Commit != c6 {
		t.Fatalf("checkout %s, want the newest %s (%s replaced)", co.Commit, c6, c5)
	}
	onDisk(c4, c6)
	r.noDelivery(t)

	// Restart: a new Source on the same directory finds the checkout in force.
	r.stop()
	s2 := mustNew(t, Options{URL: remote.Path(), Dir: dir, Path: "", Interval: time.Hour})
	co, ok := s2.Checkout(c4)
	if !ok || co.Commit != c4 || co.Root != filepath.Join(s2.checkoutsDir, c4) || co.Missing || co.Ref != "" {
		t.Errorf("Checkout(%s) after a restart = %+v, %v", c4, co, ok)
	}
	if b, err := os.ReadFile(filepath.Join(co.Root, "a.cue")); err != nil || string(b) != "4" {
		t.Errorf("a.cue of the checkout in force = %q, %v", b, err)
	}
	for _, c := range []string{c3, "../../../etc", strings.Repeat("0", 40), ""} {
		if co, ok := s2.Checkout(c); ok {
			t.Errorf("Checkout(%q) = %+v, want none", c, co)
		}
	}
	// The restarted source delivers the fetched commit and keeps the one
	// in force until the daemon moves on.
	s2.InForce(c4)
	r2 := run(t, s2)
	if co := r2.next(t); co.Commit != c6 {
		t.Errorf("after restart: checkout %s, want %s", co.Commit, c6)
	}
	onDisk(c4, c6)
}

func TestRunTwiceIsRefused(t *testing.T) {
	remote := gitrepo.New(t)
	remote.Write("a.cue", "a\n")
	remote.Commit()
	remote.Push()
	r := start(t, Options{URL: remote.Path(), Interval: time.Hour})
	r.next(t)
	if err := r.Run(t.Context()); err == nil || !strings.Contains(err.Error(), "already running") {
		t.Errorf("second Run = %v, want an error", err)
	}
}

// TestUnsafeTreeIsNotCheckedOut serves commits whose trees a normal git
// refuses to make: a name that could write outside the checkout or make a
// .git, and a symbolic link and a directory of one name (writing the
// directory's files would follow the link).
func TestUnsafeTreeIsNotCheckedOut(t *testing.T) {
	outside := t.TempDir()
	for _, tc := range []struct {
		name, want string
		entries    func(blob, sub, link plumbing.Hash) []object.TreeEntry
	}{
		{"dot-dot", "unsafe name", func(blob, sub, _ plumbing.Hash) []object.TreeEntry {
			return []object.TreeEntry{{Name: "..", Mode: filemode.Dir, Hash: sub}, {Name: "ok.cue", Mode: filemode.Regular, Hash: blob}}
		}},
		{".git", "unsafe name", func(blob, sub, _ plumbing.Hash) []object.TreeEntry {
			return []object.TreeEntry{{Name: ".git", Mode: filemode.Dir, Hash: sub}, {Name: "ok.cue", Mode: filemode.Regular, Hash: blob}}
		}},
		{".GIT", "unsafe name", func(blob, sub, _ plumbing.Hash) []object.TreeEntry {
			return []object.TreeEntry{{Name: ".GIT", Mode: filemode.Dir, Hash: sub}, {Name: "ok.cue", Mode: filemode.Regular, Hash: blob}}
		}},
		{"link and directory of one name", "file exists", func(_, sub, link plumbing.Hash) []object.TreeEntry {
			return []object.TreeEntry{{Name: "a", Mode: filemode.Symlink, Hash: link}, {Name: "a", Mode: filemode.Dir, Hash: sub}}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			remote := gitrepo.New(t)
			bare, err := git.PlainOpen(remote.Path())
			if err != nil {
				t.Fatal(err)
			}
			blob := storeBlob(t, bare.Storer, "payload")
			link := storeBlob(t, bare.Storer, outside)
			sub := storeTree(t, bare.Storer, object.TreeEntry{Name: "config", Mode: filemode.Regular, Hash: blob})
			root := storeTree(t, bare.Storer, tc.entries(blob, sub, link)...)
			c := &object.Commit{Author: *sig, Committer: *sig, Message: "unsafe", TreeHash: root}
			obj := bare.Storer.NewEncodedObject()
			if err := c.Encode(obj); err != nil {
				t.Fatal(err)
			}
			h, err := bare.Storer.SetEncodedObject(obj)
			if err != nil {
				t.Fatal(err)
			}
			if err := bare.Storer.SetReference(plumbing.NewHashReference(plumbing.NewBranchReferenceName("main"), h)); err != nil {
				t.Fatal(err)
			}

			r := start(t, Options{URL: remote.Path(), Interval: time.Hour})
			st := r.attempt(t)
			if !strings.Contains(st.LastError, tc.want) || st.Failures != 1 || st.Fetched != h.String() {
				t.Errorf("status %+v, want a failure saying %q for fetched %s", st, tc.want, h)
			}
			r.noDelivery(t)
			if got := checkoutDirs(t, r.Source); len(got) != 0 {
				t.Errorf("checkouts dir holds %v after a failed checkout", got)
			}
			if entries, err := os.ReadDir(outside); err != nil || len(entries) != 0 {
				t.Errorf("the checkout wrote outside its directory: %v, %v", entries, err)
			}
		})
	}
}

func storeBlob(t *testing.T, s storer.EncodedObjectStorer, content string) plumbing.Hash {
	t.Helper()
	obj := s.NewEncodedObject()
	obj.SetType(plumbing.BlobObject)
	w, err := obj.Writer()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.Write([]byte(content)); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	h, err := s.SetEncodedObject(obj)
	if err != nil {
		t.Fatal(err)
	}
	return h
}

func storeTree(t *testing.T, s storer.EncodedObjectStorer, entries ...object.TreeEntry) plumbing.Hash {
	t.Helper()
	tree := &object.Tree{Entries: entries}
	obj := s.NewEncodedObject()
	if err := tree.Encode(obj); err != nil {
		t.Fatal(err)
	}
	h, err := s.SetEncodedObject(obj)
	if err != nil {
		t.Fatal(err)
	}
	return h
}
