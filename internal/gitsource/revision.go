package gitsource

import (
	"errors"
	"fmt"
	"path/filepath"
	"strings"

	"github.com/go-git/go-git/v5"
	"github.com/go-git/go-git/v5/plumbing"
)

// Revision is the commit a plain config directory in a Git work tree is at.
type Revision struct {
	Commit string // HEAD's commit; "" before the first commit
	Ref    string // HEAD's branch (short name); "" when HEAD is detached
	Dirty  bool   // a file under the directory is modified, added, deleted or untracked (ignored files do not count)
}

// DirRevision reports the revision of dir when dir lies in a Git work tree
// (ok is false, with a nil error, when it does not). Linked work trees
// (git worktree add) are understood.
//
// It hashes every file of the work tree (go-git's Worktree.Status), which
// costs time on a big tree: call it only when the loader saw a change,
// never on an idle resync.
func DirRevision(dir string) (Revision, bool, error) {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return Revision{}, false, fmt.Errorf("git revision of %s: %w", dir, err)
	}
	if abs, err = filepath.EvalSymlinks(abs); err != nil {
		return Revision{}, false, fmt.Errorf("git revision of %s: %w", dir, err)
	}
	repo, err := git.PlainOpenWithOptions(abs, &git.PlainOpenOptions{DetectDotGit: true, EnableDotGitCommonDir: true})
	if errors.Is(err, git.ErrRepositoryNotExists) {
		return Revision{}, false, nil
	}
	if err != nil {
		return Revision{}, false, fmt.Errorf("git revision of %s: open the repository: %w", dir, err)
	}
	wt, err := repo.Worktree()
	if errors.Is(err, git.ErrIsBareRepository) {
		return Revision{}, false, nil
	}
	if err != nil {
		return Revision{}, false, fmt.Errorf("git revision of %s: %w", dir, err)
	}
	root, err := filepath.EvalSymlinks(wt.Filesystem.Root())
	if err != nil {
		return Revision{}, false, fmt.Errorf("git revision of %s: %w", dir, err)
	}
	rel, err := filepath.Rel(root, abs)
	if err != nil {
		return Revision{}, false, fmt.Errorf("git revision of %s: %w", dir, err)
	}
	rel = filepath.ToSlash(rel)
	if rel == ".git" || strings.HasPrefix(rel, ".git/") || rel == ".." || strings.HasPrefix(rel, "../") {
		return Revision{}, false, nil
	}

	var rev Revision
	head, err := repo.Storer.Reference(plumbing.HEAD)
	if err != nil {
		return Revision{}, false, fmt.Errorf("git revision of %s: read HEAD: %w", dir, err)
	}
	if head.Type() == plumbing.SymbolicReference {
		if head.Target().IsBranch() {
			rev.Ref = head.Target().Short()
		}
		if r, err := repo.Storer.Reference(head.Target()); err == nil {
			rev.Commit = r.Hash().String()
		} else if !errors.Is(err, plumbing.ErrReferenceNotFound) {
			return Revision{}, false, fmt.Errorf("git revision of %s: read %s: %w", dir, head.Target(), err)
		}
	} else {
		rev.Commit = head.Hash().String()
	}

	st, err := wt.Status()
	if err != nil {
		return Revision{}, false, fmt.Errorf("git revision of %s: work tree status: %w", dir, err)
	}
	prefix := rel + "/"
	for p, fs := range st {
		if rel != "." && !strings.HasPrefix(p, prefix) {
			continue
		}
		if fs.Worktree != git.Unmodified || fs.Staging != git.Unmodified {
			rev.Dirty = true
			break
		}
	}
	return rev, true, nil
}
