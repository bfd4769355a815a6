// Package gitrepo stands in for a config repository's remote in tests: a
// bare repository (what a daemon's --git names, by path or file:// URL) and
// a work clone that commits and pushes to it. It uses go-git only, no git
// binary and no transport: a push copies the objects a ref needs from the
// clone's storage into the bare repository's and then moves the ref there
// by a rename, so that a fetch running at the same time (a daemon that
// fetches every 200 ms) sees the old commit or the new one, never a ref
// file half written.
//
//	r := gitrepo.New(t)
//	r.Write("pools/a.cue", "...")
//	c1 := r.Commit()
//	r.Push()                    // fast-forward only, as git push
//	r.Reset(c0)                 // rewrite history...
//	r.Write("pools/b.cue", "...")
//	r.Commit()
//	r.ForcePush()               // ...and force-push it
//	r.Hide()                    // the remote is unreachable until Unhide
//
// Every method fails the test (tb.Fatalf) on an error.
package gitrepo

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/go-git/go-git/v5"
	"github.com/go-git/go-git/v5/config"
	"github.com/go-git/go-git/v5/plumbing"
	"github.com/go-git/go-git/v5/plumbing/object"
	"github.com/go-git/go-git/v5/plumbing/revlist"
)

// Branch is the branch the repository starts on (its HEAD), and the one
// Push and ForcePush push.
const Branch = "main"

// TB is what the package needs of a test: testing.TB fits, and so does a
// small adapter in a step runner that has none (godog's steps).
type TB interface {
	Helper()
	Fatalf(format string, args ...any)
}

// Repo is a bare repository and a work clone of it. It is not safe for
// use by several goroutines at once.
type Repo struct {
	tb      TB
	bare    string
	workDir string
	work    *git.Repository
	// n counts the commits, whose times are one minute apart (commits are
	// deterministic: the same files give the same hashes in every run).
	n int
}

// signature is the author and committer of every commit.
var signature = object.Signature{Name: "gitrepo", Email: "gitrepo@example.com", When: time.Unix(1_700_000_000, 0).UTC()}

// New makes an empty bare repository and its work clone in a temporary
// directory of the test, both on Branch.
func New(tb testing.TB) *Repo {
	tb.Helper()
	return NewIn(tb, tb.TempDir())
}

// NewIn is New under dir (which must exist), for a caller without a
// testing.TB: remote.git and work/ are made in it.
func NewIn(tb TB, dir string) *Repo {
	tb.Helper()
	r := &Repo{tb: tb, bare: filepath.Join(dir, "remote.git"), workDir: filepath.Join(dir, "work")}
	head := plumbing.NewBranchReferenceName(Branch)
	if _, err := git.PlainInitWithOptions(r.bare, &git.PlainInitOptions{Bare: true, InitOptions: git.InitOptions{DefaultBranch: head}}); err != nil {
		tb.Fatalf("gitrepo: init the bare repository: %v", err)
	}
	work, err := git.PlainInitWithOptions(r.workDir, &git.PlainInitOptions{InitOptions: git.InitOptions{DefaultBranch: head}})
	if err != nil {
		tb.Fatalf("gitrepo: init the work clone: %v", err)
	}
	if _, err := work.CreateRemote(&config.RemoteConfig{Name: "origin", URLs: []string{r.bare}}); err != nil {
		tb.Fatalf("gitrepo: %v", err)
	}
	r.work = work
	return r
}

// Path is the bare repository's absolute path: a --git URL.
func (r *Repo) Path() string { return r.bare }

// URL is the bare repository as a file:// URL.
func (r *Repo) URL() string { return "file://" + filepath.ToSlash(r.bare) }

// WorkDir is the work clone's directory (a Git work tree).
func (r *Repo) WorkDir() string { return r.workDir }

// Work is the work clone, for what the methods do not cover (tags).
func (r *Repo) Work() *git.Repository { return r.work }

// Write writes a file of the work tree (rel is slash-separated), making
// its directories; the file's mode is 0644.
func (r *Repo) Write(rel, content string) {
	r.tb.Helper()
	r.WriteMode(rel, content, 0o644)
}

// WriteMode is Write with the file's mode.
func (r *Repo) WriteMode(rel, content string, mode fs.FileMode) {
	r.tb.Helper()
	p := r.path(rel)
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		r.tb.Fatalf("gitrepo: %v", err)
	}
	if err := os.WriteFile(p, []byte(content), mode); err != nil {
		r.tb.Fatalf("gitrepo: %v", err)
	}
	// WriteFile leaves an existing file's mode, and the umask cuts a new one's.
	if err := os.Chmod(p, mode); err != nil {
		r.tb.Fatalf("gitrepo: %v", err)
	}
}

// Symlink makes a symbolic link in the work tree.
func (r *Repo) Symlink(rel, target string) {
	r.tb.Helper()
	p := r.path(rel)
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		r.tb.Fatalf("gitrepo: %v", err)
	}
	if err := os.Symlink(target, p); err != nil {
		r.tb.Fatalf("gitrepo: %v", err)
	}
}

// Remove removes a file or a directory tree of the work tree; it must
// exist.
func (r *Repo) Remove(rel string) {
	r.tb.Helper()
	p := r.path(rel)
	if _, err := os.Lstat(p); err != nil {
		r.tb.Fatalf("gitrepo: remove: %v", err)
	}
	if err := os.RemoveAll(p); err != nil {
		r.tb.Fatalf("gitrepo: %v", err)
	}
}

func (r *Repo) path(rel string) string {
	r.tb.Helper()
	if rel == "" || filepath.IsAbs(rel) || strings.HasPrefix(filepath.Clean(filepath.FromSlash(rel)), "..") {
		r.tb.Fatalf("gitrepo: %q is not a path inside the work tree", rel)
	}
	return filepath.Join(r.workDir, filepath.FromSlash(rel))
}

// Commit commits every change of the work tree (new, changed and removed
// files) on the current branch, and returns the commit's full hash. A
// commit without changes is made too.
func (r *Repo) Commit() string {
	r.tb.Helper()
	wt, err := r.work.Worktree()
	if err != nil {
		r.tb.Fatalf("gitrepo: %v", err)
	}
	if err := wt.AddWithOptions(&git.AddOptions{All: true}); err != nil {
		r.tb.Fatalf("gitrepo: add: %v", err)
	}
	r.n++
	sig := signature
	sig.When = sig.When.Add(time.Duration(r.n) * time.Minute)
	h, err := wt.Commit(fmt.Sprintf("commit %d", r.n), &git.CommitOptions{All: true, Author: &sig, Committer: &sig, AllowEmptyCommits: true})
	if err != nil {
		r.tb.Fatalf("gitrepo: commit: %v", err)
	}
	return h.String()
}

// Head is the commit the work clone's branch is at.
func (r *Repo) Head() string {
	r.tb.Helper()
	h, err := r.work.Head()
	if err != nil {
		r.tb.Fatalf("gitrepo: %v", err)
	}
	return h.Hash().String()
}

// Reset moves the work clone's branch to commit and its work tree with it
// (git reset --hard): with a commit and ForcePush, a rewritten history.
func (r *Repo) Reset(commit string) {
	r.tb.Helper()
	wt, err := r.work.Worktree()
	if err != nil {
		r.tb.Fatalf("gitrepo: %v", err)
	}
	if err := wt.Reset(&git.ResetOptions{Commit: plumbing.NewHash(commit), Mode: git.HardReset}); err != nil {
		r.tb.Fatalf("gitrepo: reset to %s: %v", commit, err)
	}
}

// Push pushes the refs the refspecs name ([+]src:dst, src may end in *;
// default: Branch to Branch) to the bare repository, as git push does: a
// ref whose remote value is not an ancestor of the new one (a branch) or
// differs from it (a tag) is refused unless the refspec starts with +.
func (r *Repo) Push(refspecs ...string) {
	r.tb.Helper()
	if len(refspecs) == 0 {
		refspecs = []string{"refs/heads/" + Branch + ":refs/heads/" + Branch}
	}
	if err := r.push(refspecs); err != nil {
		r.tb.Fatalf("gitrepo: push %s: %v", strings.Join(refspecs, " "), err)
	}
}

// ForcePush pushes Branch whatever the remote branch holds: after Reset, a
// rewritten history.
func (r *Repo) ForcePush() {
	r.tb.Helper()
	r.Push("+refs/heads/" + Branch + ":refs/heads/" + Branch)
}

// RemoteHead is the commit the bare repository's ref (refs/heads/main,
// refs/tags/v1) is at; "" when it has no such ref.
func (r *Repo) RemoteHead(ref string) string {
	r.tb.Helper()
	bare, err := git.PlainOpen(r.bare)
	if err != nil {
		r.tb.Fatalf("gitrepo: open the bare repository: %v", err)
	}
	got, err := bare.Storer.Reference(plumbing.ReferenceName(ref))
	if errors.Is(err, plumbing.ErrReferenceNotFound) {
		return ""
	}
	if err != nil {
		r.tb.Fatalf("gitrepo: %v", err)
	}
	return got.Hash().String()
}

// Hide moves the bare repository away (a rename beside it), so that
// fetches fail as from a remote that cannot be reached; Unhide puts it
// back.
func (r *Repo) Hide() {
	r.tb.Helper()
	if err := os.Rename(r.bare, r.hidden()); err != nil {
		r.tb.Fatalf("gitrepo: hide the bare repository: %v", err)
	}
}

// Unhide puts back the bare repository Hide moved away.
func (r *Repo) Unhide() {
	r.tb.Helper()
	if err := os.Rename(r.hidden(), r.bare); err != nil {
		r.tb.Fatalf("gitrepo: unhide the bare repository: %v", err)
	}
}

func (r *Repo) hidden() string { return r.bare + ".hidden" }

// push carries out the refspecs: for each local ref a refspec matches, the
// objects it reaches, then the ref.
func (r *Repo) push(refspecs []string) error {
	bare, err := git.PlainOpen(r.bare)
	if err != nil {
		return fmt.Errorf("open the bare repository: %w", err)
	}
	specs := make([]config.RefSpec, len(refspecs))
	for i, s := range refspecs {
		specs[i] = config.RefSpec(s)
		if err := specs[i].Validate(); err != nil {
			return fmt.Errorf("refspec %q: %w", s, err)
		}
	}
	refs, err := r.work.References()
	if err != nil {
		return err
	}
	defer refs.Close()
	type update struct {
		dst   plumbing.ReferenceName
		hash  plumbing.Hash
		force bool
	}
	var updates []update
	err = refs.ForEach(func(ref *plumbing.Reference) error {
		if ref.Type() != plumbing.HashReference {
			return nil
		}
		for _, s := range specs {
			if s.Match(ref.Name()) {
				updates = append(updates, update{dst: s.Dst(ref.Name()), hash: ref.Hash(), force: s.IsForceUpdate()})
			}
		}
		return nil
	})
	if err != nil {
		return err
	}
	if len(updates) == 0 {
		return errors.New("no local ref matches")
	}
	for _, u := range updates {
		if err := r.copyObjects(bare, u.hash); err != nil {
			return err
		}
		old, err := bare.Storer.Reference(u.dst)
		switch {
		case errors.Is(err, plumbing.ErrReferenceNotFound):
		case err != nil:
			return err
		case old.Hash() == u.hash:
			continue
		case !u.force:
			if err := r.fastForward(u.dst, old.Hash(), u.hash); err != nil {
				return err
			}
		}
		if err := writeRef(r.bare, u.dst, u.hash); err != nil {
			return err
		}
	}
	return nil
}

// fastForward refuses an update of dst from old to next that is not a
// fast-forward: a branch whose old commit is not an ancestor of the new
// one, or a tag moved.
func (r *Repo) fastForward(dst plumbing.ReferenceName, old, next plumbing.Hash) error {
	rejected := fmt.Errorf("%s: %s to %s is not a fast-forward (force it with +)", dst, old, next)
	if !dst.IsBranch() {
		return rejected
	}
	oldCommit, err := r.work.CommitObject(old)
	if err != nil {
		return rejected
	}
	nextCommit, err := r.work.CommitObject(next)
	if err != nil {
		return err
	}
	ok, err := oldCommit.IsAncestor(nextCommit)
	if err != nil {
		return err
	}
	if !ok {
		return rejected
	}
	return nil
}

// copyObjects copies the objects that hash reaches (a commit's history,
// trees and blobs; a tag's target) that the bare repository lacks.
func (r *Repo) copyObjects(bare *git.Repository, hash plumbing.Hash) error {
	hashes, err := revlist.Objects(r.work.Storer, []plumbing.Hash{hash}, nil)
	if err != nil {
		return fmt.Errorf("objects of %s: %w", hash, err)
	}
	for _, h := range hashes {
		if bare.Storer.HasEncodedObject(h) == nil {
			continue
		}
		obj, err := r.work.Storer.EncodedObject(plumbing.AnyObject, h)
		if err != nil {
			return err
		}
		if _, err := bare.Storer.SetEncodedObject(obj); err != nil {
			return fmt.Errorf("copy object %s: %w", h, err)
		}
	}
	return nil
}

// writeRef points the bare repository's ref name at hash: a file written
// beside it and renamed into place, as git's lock files do.
func writeRef(bare string, name plumbing.ReferenceName, hash plumbing.Hash) error {
	p := filepath.Join(bare, filepath.FromSlash(name.String()))
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		return err
	}
	tmp := p + ".lock"
	if err := os.WriteFile(tmp, []byte(hash.String()+"\n"), 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, p)
}
