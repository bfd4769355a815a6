package gitsource

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/go-git/go-git/v5"
	"github.com/go-git/go-git/v5/plumbing"
)

func TestDirRevision(t *testing.T) {
	for _, tc := range []struct {
		name   string
		dir    string // the config dir inside the work tree
		change func(r *remoteRepo, head string)
		ref    string
		dirty  bool
	}{
		{"clean", "config", nil, "main", false},
		{"clean, the root", ".", nil, "main", false},
		{"edit under the dir", "config", func(r *remoteRepo, _ string) { r.write("config/pools/a.cue", "changed\n", 0) }, "main", true},
		{"new file under the dir", "config", func(r *remoteRepo, _ string) { r.write("config/new.cue", "new\n", 0) }, "main", true},
		{"deleted file under the dir", "config", func(r *remoteRepo, _ string) { r.remove("config/pools/a.cue") }, "main", true},
		{"edit outside the dir", "config", func(r *remoteRepo, _ string) { r.write("README", "changed\n", 0) }, "main", false},
		{"new file outside the dir", "config", func(r *remoteRepo, _ string) { r.write("configs.txt", "x\n", 0) }, "main", false},
		{"ignored file under the dir", "config", func(r *remoteRepo, _ string) { r.write("config/x.swp", "x\n", 0) }, "main", false},
		{"edit outside, dir is the root", ".", func(r *remoteRepo, _ string) { r.write("README", "changed\n", 0) }, "main", true},
		{"nested dir, edit in its parent", "config/pools", func(r *remoteRepo, _ string) { r.write("config/nodes.cue", "changed\n", 0) }, "main", false},
		{"detached HEAD", "config", func(r *remoteRepo, head string) {
			if err := r.work.Storer.SetReference(plumbing.NewHashReference(plumbing.HEAD, plumbing.NewHash(head))); err != nil {
				r.t.Fatal(err)
			}
		}, "", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := newRemoteRepo(t)
			r.write("README", "readme\n", 0)
			r.write(".gitignore", "*.swp\n", 0)
			r.write("config/nodes.cue", "nodes\n", 0)
			r.write("config/pools/a.cue", "a\n", 0)
			head := r.commit()
			if tc.change != nil {
				tc.change(r, head)
			}
			rev, ok, err := DirRevision(filepath.Join(r.workDir, tc.dir))
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
	r := newRemoteRepo(t)
	r.write("config/a.cue", "a\n", 0)
	rev, ok, err := DirRevision(filepath.Join(r.workDir, "config"))
	if err != nil || !ok {
		t.Fatalf("DirRevision = %+v, %v, %v", rev, ok, err)
	}
	if want := (Revision{Ref: "main", Dirty: true}); rev != want {
		t.Errorf("DirRevision = %+v, want %+v", rev, want)
	}
}
