package gitsource

import (
	"context"
	"errors"
	"fmt"
	"os"

	"github.com/go-git/go-git/v5"
	"github.com/go-git/go-git/v5/config"
	"github.com/go-git/go-git/v5/plumbing"
	"github.com/go-git/go-git/v5/plumbing/object"
)

// openRepo opens the bare clone, or makes it: when it is missing, or when
// it cannot be opened (it is a cache).
func (s *Source) openRepo() (*git.Repository, error) {
	repo, err := git.PlainOpen(s.repoDir)
	if err == nil {
		return repo, nil
	}
	if !errors.Is(err, git.ErrRepositoryNotExists) {
		s.log.Warn("the local clone cannot be opened; making it afresh", "dir", s.repoDir, "error", err)
	}
	if err := os.RemoveAll(s.repoDir); err != nil {
		return nil, fmt.Errorf("remove the local clone: %w", err)
	}
	repo, err = git.PlainInit(s.repoDir, true)
	if err != nil {
		return nil, fmt.Errorf("make the local clone: %w", err)
	}
	return repo, nil
}

// fetch fetches the ref (branch first, then tag) and returns its commit
// and full ref name.
func (s *Source) fetch(ctx context.Context) (string, string, *git.Repository, error) {
	repo, err := s.openRepo()
	if err != nil {
		return "", "", nil, err
	}
	auth, err := authMethod(s.remote, s.auth, s.timeout)
	if err != nil {
		return "", "", nil, err
	}
	rem := git.NewRemote(repo.Storer, &config.RemoteConfig{Name: "origin", URLs: []string{s.remote.url}})
	try := func(src, dst plumbing.ReferenceName) error {
		err := rem.FetchContext(ctx, &git.FetchOptions{
			RefSpecs: []config.RefSpec{config.RefSpec("+" + src.String() + ":" + dst.String())},
			Auth:     auth,
			Tags:     git.NoTags,
			Force:    true,
		})
		if errors.Is(err, git.NoErrAlreadyUpToDate) {
			return nil
		}
		return err
	}
	ref := plumbing.NewBranchReferenceName(s.ref)
	local := plumbing.NewRemoteReferenceName("origin", s.ref)
	err = try(ref, local)
	if errors.Is(err, git.NoMatchingRefSpecError{}) {
		ref = plumbing.NewTagReferenceName(s.ref)
		local = ref
		err = try(ref, local)
		if errors.Is(err, git.NoMatchingRefSpecError{}) {
			return "", "", nil, fmt.Errorf("fetch %s: the remote has no branch or tag %q", s.remote.display, s.ref)
		}
	}
	if err != nil {
		if ctxErr := ctx.Err(); ctxErr != nil && errors.Is(ctxErr, context.DeadlineExceeded) {
			return "", "", nil, fmt.Errorf("fetch %s: no answer within %v: %w", s.remote.display, s.timeout, err)
		}
		return "", "", nil, fmt.Errorf("fetch %s: %w", s.remote.display, err)
	}
	r, err := repo.Storer.Reference(local)
	if err != nil {
		return "", "", nil, fmt.Errorf("fetch %s: read %s after the fetch: %w", s.remote.display, local, err)
	}
	commit, err := peel(repo, r.Hash())
	if err != nil {
		return "", "", nil, fmt.Errorf("fetch %s: %s: %w", s.remote.display, ref, err)
	}
	return commit.String(), ref.String(), repo, nil
}

// peel follows annotated tags to the commit they name.
func peel(repo *git.Repository, h plumbing.Hash) (plumbing.Hash, error) {
	for range 10 {
		obj, err := repo.Storer.EncodedObject(plumbing.AnyObject, h)
		if err != nil {
			return plumbing.ZeroHash, fmt.Errorf("read object %s: %w", h, err)
		}
		switch obj.Type() {
		case plumbing.CommitObject:
			return h, nil
		case plumbing.TagObject:
			tag, err := object.DecodeTag(repo.Storer, obj)
			if err != nil {
				return plumbing.ZeroHash, fmt.Errorf("read tag %s: %w", h, err)
			}
			h = tag.Target
		default:
			return plumbing.ZeroHash, fmt.Errorf("names a %s, not a commit", obj.Type())
		}
	}
	return plumbing.ZeroHash, fmt.Errorf("tag %s: too many tags of tags", h)
}
