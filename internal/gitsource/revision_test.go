package gitsource

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/go-git/go-git/v5"
	"github.com/go-git/go-git/v5/plumbing"

	"github.com/poolmanagerd/pool-managerd/testkit/gitrepo"
)

func TestDirRevision(t *testing.T) {
	for _, tc := range []struct {
		name   string
		dir    string // the config dir inside the work tree
		change func(t *testing.T, r *gitrepo.Repo, head string)
		ref    string
		dirty  bool
	}{
		{"clean", "config", nil, "main", false},
		{"clean, the root", ".", nil, "main", false},
		{"edit under the dir", "config", func(_ *testing.T, r *gitrepo.Repo, _ string) { r.Write("config/pools/a.cue", "changed\n") }, "main", true},
		{"new file under the dir", "config", func(_ *testing.T, r *gitrepo.Repo, _ string) { r.Write("config/new.cue", "new\n") }, "main", true},
		{"deleted file under the dir", "config", func(_ *testing.T, r *gitrepo.Repo, _ string) { r.Remove("config/pools/a.cue") }, "main", true},
		{"edit outside the dir", "config", func(_ *testing.T, r *gitrepo.Repo, _ string) { r.Write("README", "changed\n") }, "main", false},
		{"new file outside the dir", "config", func(_ *testing.T, r *gitrepo.Repo, _ string) { r.Write("configs.txt", "x\n") }, "main", false},
		{"ignored file under the dir", "config", func(_ *testing.T, r *gitrepo.Repo, _ string) { r.Write("config/x.swp", "x\n") }, "main", false},
		{"edit outside, dir is the root", ".", func(_ *testing.T, r *gitrepo.Repo, _ string) { r.Write("README", "changed\n") }, "main", true},
		{"nested dir, edit in its parent", "config/pools", func(_ *testing.T, r *gitrepo.Repo, _ string) { r.Write("config/nodes.cue", "changed\n") }, "main", false},
		{"detached HEAD", "config", func(t *testing.T, r *gitrepo.Repo, head string) {
			if err := r.Work().Storer.SetReference(plumbing.NewHashReference(plumbing.HEAD, plumbing.NewHash(head))); err != nil {
				t.Fatal(err)
			}
		}, "", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := gitrepo.New(t)
			r.Write("README", "readme\n")
			r.Write(".gitignore", "*.swp\n")
			r.Write("config/nodes.cue", "nodes\n")
			r.Write("config/pools/a.cue", "a\n")
			head := r.Commit()
			if tc.change != nil {
				tc.change(t, r, head)
			}
			rev, ok, err := DirRevision(filepath.Join(r.WorkDir(), tc.dir))
			if err != nil || !ok {
				t.Fatalf("DirRevision = %+v, %v, %v", rev, ok, err)
			}
			want := Revision{Commit: head, Ref: tc.ref, Dirty: tc.dirty}
			if rev != want {
				t.Errorf("DirRevision = %+v, want %+v", rev, want)
			}
		})
	}
}

func TestDirRevisionOutsideAWorkTree(t *testing.T) {
	dir := t.TempDir()
	bare := filepath.Join(dir, "bare.git")
	if _, err := git.PlainInit(bare, true); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(filepath.Join(dir, "plain"), 0o755); err != nil {
		t.Fatal(err)
	}
	for _, d := range []string{filepath.Join(dir, "plain"), bare} {
		if rev, ok, err := DirRevision(d); ok || err != nil {
			t.Errorf("DirRevision(%s) = %+v, %v, %v; want not a work tree", d, rev, ok, err)
		}
	}
	if _, _, err := DirRevision(filepath.Join(dir, "absent")); err == nil {
		t.Error("DirRevision of a missing directory: no error")
	}
}

func TestDirRevisionBeforeTheFirstCommit(t *testing.T) {
	r := gitrepo.New(t)
	r.Write("config/a.cue", "a\n")
	rev, ok, err := DirRevision(filepath.Join(r.WorkDir(), "config"))
	if err != nil || !ok {
		t.Fatalf("DirRevision = %+v, %v, %v", rev, ok, err)
	}
	if want := (Revision{Ref: "main", Dirty: true}); rev != want {
		t.Errorf("DirRevision = %+v, want %+v", rev, want)
	}
}
