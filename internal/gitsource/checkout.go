package gitsource

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/go-git/go-git/v5"
	"github.com/go-git/go-git/v5/plumbing"
	"github.com/go-git/go-git/v5/plumbing/filemode"
	"github.com/go-git/go-git/v5/plumbing/object"
	"golang.org/x/sys/unix"
)

const tmpPrefix = ".tmp-"

// isCommitName reports whether name is a full commit hash (SHA-1 or
// SHA-256, lower-case hex): the only names a checkout directory has.
func isCommitName(name string) bool {
	if len(name) != 40 && len(name) != 64 {
		return false
	}
	for _, c := range name {
		if (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return false
		}
	}
	return true
}

// checkoutOf describes the checkout directory of commit.
func (s *Source) checkoutOf(commit, ref string) Checkout {
	root := filepath.Join(s.checkoutsDir, commit)
	if s.path != "" {
		root = filepath.Join(root, filepath.FromSlash(s.path))
	}
	fi, err := os.Stat(root)
	return Checkout{Commit: commit, Ref: ref, Root: root, Missing: err != nil || !fi.IsDir()}
}

// Checkout returns the checkout of commit (a full hash) if it is on disk,
// as after a restart; its Ref is "". It does not fetch.
func (s *Source) Checkout(commit string) (Checkout, bool) {
	if !isCommitName(commit) {
		return Checkout{}, false
	}
	fi, err := os.Stat(filepath.Join(s.checkoutsDir, commit))
	if err != nil || !fi.IsDir() {
		return Checkout{}, false
	}
	return s.checkoutOf(commit, ""), true
}

// InForce tells the source which commit the daemon runs ("" for none),
// and cleans up: see the package doc. Call it before Run with the commit
// the daemon starts from, and after each commit it applies.
func (s *Source) InForce(commit string) {
	s.diskMu.Lock()
	defer s.diskMu.Unlock()
	s.mu.Lock()
	s.inForce, s.forceSet = commit, true
	if len(s.out) == 0 && s.delivered != "" {
		s.taken = s.delivered
	}
	s.mu.Unlock()
	s.cleanup()
}

// install puts commit's checkout in place (or finds it there) and returns
// it; the commit is protected from cleanup until it is delivered.
func (s *Source) install(ctx context.Context, repo *git.Repository, commit, ref string) (Checkout, error) {
	final := filepath.Join(s.checkoutsDir, commit)
	s.diskMu.Lock()
	if _, err := os.Lstat(final); err == nil {
		s.setPending(commit)
		s.diskMu.Unlock()
		return s.checkoutOf(commit, ref), nil
	}
	s.diskMu.Unlock()

	tmp, err := os.MkdirTemp(s.checkoutsDir, tmpPrefix+commit+"-")
	if err != nil {
		return Checkout{}, err
	}
	keep := false
	defer func() {
		if !keep {
			_ = os.RemoveAll(tmp)
		}
	}()
	if err := os.Chmod(tmp, 0o755); err != nil {
		return Checkout{}, err
	}
	c, err := repo.CommitObject(plumbing.NewHash(commit))
	if err != nil {
		return Checkout{}, fmt.Errorf("read commit: %w", err)
	}
	tree, err := c.Tree()
	if err != nil {
		return Checkout{}, fmt.Errorf("read tree: %w", err)
	}
	if err := s.writeTree(ctx, repo, tree, tmp, ""); err != nil {
		return Checkout{}, err
	}
	if err := syncFS(tmp); err != nil {
		return Checkout{}, err
	}

	s.diskMu.Lock()
	defer s.diskMu.Unlock()
	if err := os.Rename(tmp, final); err != nil {
		if _, statErr := os.Lstat(final); statErr != nil {
			return Checkout{}, fmt.Errorf("move into place: %w", err)
		}
		// Already there (the same commit, complete): keep that one.
	} else {
		keep = true
		if err := syncDir(s.checkoutsDir); err != nil {
			return Checkout{}, err
		}
	}
	s.setPending(commit)
	return s.checkoutOf(commit, ref), nil
}

func (s *Source) setPending(commit string) {
	s.mu.Lock()
	s.pending = commit
	s.mu.Unlock()
}

// deliver sends co, replacing one not taken yet, after cleaning up.
func (s *Source) deliver(co Checkout) {
	s.diskMu.Lock()
	s.mu.Lock()
	select {
	case <-s.out: // not taken: dropped
	default:
		if s.delivered != "" {
			s.taken = s.delivered
		}
	}
	s.delivered, s.pending = co.Commit, ""
	s.mu.Unlock()
	s.cleanup()
	s.diskMu.Unlock()
	// Only Run sends and the buffer is empty: this does not block.
	s.out <- co
}

// cleanup removes the checkouts nobody needs; diskMu is held.
func (s *Source) cleanup() {
	s.mu.Lock()
	if !s.forceSet {
		s.mu.Unlock()
		return
	}
	keep := map[string]bool{s.inForce: true, s.delivered: true, s.taken: true, s.pending: true}
	s.mu.Unlock()
	entries, err := os.ReadDir(s.checkoutsDir)
	if err != nil {
		s.log.Warn("cannot list the checkouts to clean up", "dir", s.checkoutsDir, "error", err)
		return
	}
	for _, e := range entries {
		if !isCommitName(e.Name()) || keep[e.Name()] {
			continue
		}
		if err := os.RemoveAll(filepath.Join(s.checkoutsDir, e.Name())); err != nil {
			s.log.Warn("cannot remove an old checkout", "commit", e.Name(), "error", err)
			continue
		}
		s.log.Debug("removed an old checkout", "commit", e.Name())
	}
}

// removeTemps removes the temporary directories a crash left behind.
func (s *Source) removeTemps() {
	s.diskMu.Lock()
	defer s.diskMu.Unlock()
	entries, err := os.ReadDir(s.checkoutsDir)
	if err != nil {
		s.log.Warn("cannot list the checkouts", "dir", s.checkoutsDir, "error", err)
		return
	}
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), tmpPrefix) {
			if err := os.RemoveAll(filepath.Join(s.checkoutsDir, e.Name())); err != nil {
				s.log.Warn("cannot remove a temporary checkout", "dir", e.Name(), "error", err)
			}
		}
	}
}

// safeName reports whether a tree entry's name can be written as one
// directory entry without leaving the checkout or making a .git.
func safeName(name string) bool {
	return name != "" && name != "." && name != ".." &&
		!strings.ContainsAny(name, "/\x00") && !strings.EqualFold(name, ".git")
}

// writeTree writes tree into dir (which exists). Creating with Mkdir,
// O_EXCL and Symlink, which all fail on an existing name, means a tree
// with two entries of one name cannot write through a symbolic link.
func (s *Source) writeTree(ctx context.Context, repo *git.Repository, tree *object.Tree, dir, rel string) error {
	for _, e := range tree.Entries {
		if err := ctx.Err(); err != nil {
			return err
		}
		name := rel + e.Name
		if !safeName(e.Name) {
			return fmt.Errorf("the tree holds an unsafe name %q", name)
		}
		p := filepath.Join(dir, e.Name)
		switch e.Mode {
		case filemode.Dir:
			if err := os.Mkdir(p, 0o755); err != nil {
				return err
			}
			if err := os.Chmod(p, 0o755); err != nil {
				return err
			}
			sub, err := repo.TreeObject(e.Hash)
			if err != nil {
				return fmt.Errorf("read tree %s: %w", name, err)
			}
			if err := s.writeTree(ctx, repo, sub, p, name+"/"); err != nil {
				return err
			}
		case filemode.Regular, filemode.Deprecated:
			if err := writeBlob(repo, e.Hash, p, 0o644); err != nil {
				return fmt.Errorf("%s: %w", name, err)
			}
		case filemode.Executable:
			if err := writeBlob(repo, e.Hash, p, 0o755); err != nil {
				return fmt.Errorf("%s: %w", name, err)
			}
		case filemode.Symlink:
			target, err := readBlob(repo, e.Hash)
			if err != nil {
				return fmt.Errorf("%s: %w", name, err)
			}
			if err := os.Symlink(string(target), p); err != nil {
				return err
			}
		case filemode.Submodule:
			// As git does without --recurse-submodules: an empty directory.
			if err := os.Mkdir(p, 0o755); err != nil {
				return err
			}
		default:
			return fmt.Errorf("%s: unknown file mode %v", name, e.Mode)
		}
	}
	return nil
}

func readBlob(repo *git.Repository, h plumbing.Hash) ([]byte, error) {
	b, err := repo.BlobObject(h)
	if err != nil {
		return nil, fmt.Errorf("read blob %s: %w", h, err)
	}
	r, err := b.Reader()
	if err != nil {
		return nil, fmt.Errorf("read blob %s: %w", h, err)
	}
	defer r.Close()
	return io.ReadAll(r)
}

func writeBlob(repo *git.Repository, h plumbing.Hash, p string, perm fs.FileMode) (err error) {
	b, err := repo.BlobObject(h)
	if err != nil {
		return fmt.Errorf("read blob %s: %w", h, err)
	}
	r, err := b.Reader()
	if err != nil {
		return fmt.Errorf("read blob %s: %w", h, err)
	}
	defer r.Close()
	f, err := os.OpenFile(p, os.O_WRONLY|os.O_CREATE|os.O_EXCL|unix.O_NOFOLLOW, perm)
	if err != nil {
		return err
	}
	defer func() {
		if cerr := f.Close(); cerr != nil && err == nil {
			err = cerr
		}
	}()
	if _, err := io.Copy(f, r); err != nil {
		return err
	}
	return f.Chmod(perm) // exact modes, whatever the umask
}

// syncFS flushes the file system that holds dir (one call for every file
// of a checkout, instead of one fsync each).
func syncFS(dir string) error {
	f, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer f.Close()
	if err := unix.Syncfs(int(f.Fd())); err != nil {
		return fmt.Errorf("syncfs %s: %w", dir, err)
	}
	return nil
}

func syncDir(dir string) error {
	f, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer f.Close()
	if err := f.Sync(); err != nil && !errors.Is(err, unix.EINVAL) {
		return fmt.Errorf("sync %s: %w", dir, err)
	}
	return nil
}
