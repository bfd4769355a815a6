package testenv

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/poolmanagerd/pool-managerd/drivers/gpu/sim"
)

// Env is one test process's share of the environment: the binaries, and a
// root folder that holds the files of every node the process lays out (so
// the leak check at its end finds its own engines and no one else's).
type Env struct {
	Bin *Bin
	// Root is the process's folder under os.TempDir().
	Root string
}

// New returns a test process's environment: the binaries (see Binaries) and
// a new root folder named after name (the package, say).
func New(ctx context.Context, name string) (*Env, error) {
	bin, err := Binaries(ctx)
	if err != nil {
		return nil, err
	}
	root, err := os.MkdirTemp("", "pool-managerd-"+name+"-")
	if err != nil {
		return nil, fmt.Errorf("testenv: %w", err)
	}
	return &Env{Bin: bin, Root: root}, nil
}

// Close is the process's leak check: it kills the engines still running
// under the root and removes the root. The error is a *LeakError naming the
// engines, when there were any.
func (e *Env) Close() error {
	err := CheckEngines(context.Background(), e.Root)
	return errors.Join(err, os.RemoveAll(e.Root))
}

// TempDir makes a folder for one test under the root, removed when the test
// ends, after the cleanups registered after this call. Its name is short, so
// that the paths of unix sockets in it stay within their limit.
func (e *Env) TempDir(tb testing.TB) string {
	tb.Helper()
	dir, err := os.MkdirTemp(e.Root, shortName(tb.Name())+"-")
	if err != nil {
		tb.Fatalf("testenv: %v", err)
	}
	tb.Cleanup(func() {
		if err := os.RemoveAll(dir); err != nil {
			tb.Errorf("testenv: remove the test's folder: %v", err)
		}
	})
	return dir
}

// shortName keeps the first letters and digits of a test's name.
func shortName(name string) string {
	var b strings.Builder
	for _, r := range name {
		if b.Len() == 24 {
			break
		}
		if r < 128 && (r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9') {
			b.WriteRune(r)
		}
	}
	return b.String()
}

// Node is a simulated node laid out for one test, in a folder of its own
// (Dir): the simulated GPUs (Sim), the config tree (Config), the state
// directory (State, made by pool-managerd), model files (Models), and the
// node's name.
type Node struct {
	tb   testing.TB
	Name string
	Dir  string
	// Config is the config directory: nodes/NAME.cue and pools/ID.cue as
	// WriteConfig writes them, or whatever files a test writes.
	Config string
	Sim    string
	State  string
	Models string
}

// NewNode lays out a node named name with these GPUs (sim.Init) in a new
// folder under the root. When the test ends, after the cleanups registered
// after this call (which stop what the test started), the leak check runs
// on the folder: an engine still running under it fails the test and is
// killed. Then the folder is removed.
func (e *Env) NewNode(tb testing.TB, name string, gpus []sim.GPUSpec) *Node {
	tb.Helper()
	dir := e.TempDir(tb)
	n := &Node{
		tb:     tb,
		Name:   name,
		Dir:    dir,
		Config: filepath.Join(dir, "config"),
		Sim:    filepath.Join(dir, "sim"),
		State:  filepath.Join(dir, "state"),
		Models: filepath.Join(dir, "models"),
	}
	for _, d := range []string{n.Config, n.Models} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			tb.Fatalf("testenv: %v", err)
		}
	}
	if err := sim.Init(n.Sim, sim.NodeUUIDs(name, gpus)); err != nil {
		tb.Fatalf("testenv: %v", err)
	}
	tb.Cleanup(func() { CheckNoEngines(tb, dir, "cleanup") })
	return n
}

// ModelFile creates an empty model file (the stand-in engine only checks
// that it exists) and returns its path.
func (n *Node) ModelFile(name string) string {
	n.tb.Helper()
	path := filepath.Join(n.Models, name)
	if err := os.WriteFile(path, nil, 0o644); err != nil {
		n.tb.Fatalf("testenv: %v", err)
	}
	return path
}

// Decl is the node's declaration: its simulated GPUs with the UUIDs
// sim.Init gave them.
func (n *Node) Decl() NodeDecl {
	n.tb.Helper()
	gpus, err := sim.GPUs(n.Sim)
	if err != nil {
		n.tb.Fatalf("testenv: %v", err)
	}
	return DeclOf(n.Name, gpus)
}

// WriteConfig replaces the config tree with the node's declaration
// (nodes/NAME.cue) and the pools (pools/ID.cue); a pool without a node is
// put on this one.
func (n *Node) WriteConfig(pools ...Pool) {
	n.tb.Helper()
	if err := os.RemoveAll(n.Config); err != nil {
		n.tb.Fatalf("testenv: %v", err)
	}
	if err := os.MkdirAll(filepath.Join(n.Config, "pools"), 0o755); err != nil {
		n.tb.Fatalf("testenv: %v", err)
	}
	n.WriteFile(filepath.Join("nodes", n.Name+".cue"), n.Decl().CUE())
	for _, p := range pools {
		if p.Node == "" {
			p.Node = n.Name
		}
		n.WriteFile(filepath.Join("pools", p.ID+".cue"), p.CUE())
	}
}

// WriteFile writes a file of the config tree in place, making its folder.
func (n *Node) WriteFile(rel, content string) {
	n.tb.Helper()
	path := filepath.Join(n.Config, rel)
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		n.tb.Fatalf("testenv: %v", err)
	}
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		n.tb.Fatalf("testenv: %v", err)
	}
}

// SaveFile writes a file of the config tree as an editor saves it: a hidden
// temporary file (which the watcher and the loader skip) renamed into
// place, so that a daemon never reads half of it.
func (n *Node) SaveFile(rel, content string) {
	n.tb.Helper()
	path := filepath.Join(n.Config, rel)
	tmp := filepath.Join(filepath.Dir(path), ".tmp-"+filepath.Base(path))
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		n.tb.Fatalf("testenv: %v", err)
	}
	if err := os.WriteFile(tmp, []byte(content), 0o644); err != nil {
		n.tb.Fatalf("testenv: %v", err)
	}
	if err := os.Rename(tmp, path); err != nil {
		n.tb.Fatalf("testenv: %v", err)
	}
}
