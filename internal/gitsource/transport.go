package gitsource

import (
	"errors"
	"fmt"

	"github.com/go-git/go-git/v5"
	"github.com/go-git/go-git/v5/plumbing/storer"
	"github.com/go-git/go-git/v5/plumbing/transport"
	"github.com/go-git/go-git/v5/plumbing/transport/client"
	"github.com/go-git/go-git/v5/plumbing/transport/server"
)

// InstallFileTransport makes go-git serve file URLs (and plain paths)
// in-process, instead of running the git-upload-pack binary. It changes
// go-git's global table of protocols, which go-git reads without a lock:
// call it once, from main (or TestMain), before any Source runs. New
// refuses a file URL until it has been called.
//
// Unlike go-git's server.DefaultLoader, the loader it installs opens work
// trees (their .git, or the directory a .git file names) as well as bare
// repositories.
func InstallFileTransport() {
	client.InstallProtocol("file", server.NewClient(fileLoader{}))
}

// fileLoader opens the repository at an endpoint's path.
type fileLoader struct{}

// Load implements server.Loader.
func (fileLoader) Load(ep *transport.Endpoint) (storer.Storer, error) {
	repo, err := git.PlainOpenWithOptions(ep.Path, &git.PlainOpenOptions{EnableDotGitCommonDir: true})
	if errors.Is(err, git.ErrRepositoryNotExists) {
		return nil, transport.ErrRepositoryNotFound
	}
	if err != nil {
		return nil, fmt.Errorf("open the repository: %w", err)
	}
	return repo.Storer, nil
}
