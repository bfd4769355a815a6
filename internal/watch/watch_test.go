package watch

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/fsnotify/fsnotify"
	"github.com/google/go-cmp/cmp"
	"github.com/hashicorp/go-hclog"
)

// failAfter only guards against a hang: no test asserts how fast anything is.
const failAfter = 10 * time.Second

// testDebounce is short; tests never depend on it being met or missed,
// except where they set their own.
const testDebounce = 20 * time.Millisecond

// harness runs a Watcher on a temporary tree: base/root is the watched
// root, and base holds the other directories a test links or moves from.
type harness struct {
	t       *testing.T
	base    string
	root    string
	w       *Watcher
	changes <-chan Change
	cancel  context.CancelFunc
	done    chan error
	// seq numbers the flush and sentinel files.
	seq int
}

// newTree makes base/root and returns the harness with the watcher not
// yet started; setup can fill the tree before start.
func newTree(t *testing.T) *harness {
	t.Helper()
	base := t.TempDir()
	root := filepath.Join(base, "root")
	mustMkdir(t, root)
	return &harness{t: t, base: base, root: root}
}

// start creates the Watcher and runs it until the test ends.
func (h *harness) start(opts Options) {
	h.t.Helper()
	if opts.Debounce == 0 {
		opts.Debounce = testDebounce
	}
	if opts.Logger == nil {
		opts.Logger = testLogger(h.t)
	}
	w, err := New(h.root, opts)
	if err != nil {
		h.t.Fatalf("New: %v", err)
	}
	h.w = w
	h.run()
}

// run starts Run (after a test set hooks on h.w) and stops it at cleanup.
func (h *harness) run() {
	ctx, cancel := context.WithCancel(context.Background())
	h.cancel, h.changes, h.done = cancel, h.w.Changes(), make(chan error, 1)
	go func() { h.done <- h.w.Run(ctx) }()
	h.t.Cleanup(func() {
		cancel()
		select {
		case err := <-h.done:
			if err != nil {
				h.t.Errorf("Run: %v", err)
			}
		case <-time.After(failAfter):
			h.t.Errorf("Run did not return after cancel")
		}
	})
}

func testLogger(t *testing.T) hclog.Logger {
	return hclog.New(&hclog.LoggerOptions{Name: "watch", Level: hclog.Debug, Output: t.Output()})
}

// next receives one Change.
func (h *harness) next() Change {
	h.t.Helper()
	select {
	case ch, ok := <-h.changes:
		if !ok {
			h.t.Fatal("Changes closed")
		}
		h.t.Logf("change: %q overflow=%v", ch.Paths, ch.Overflow)
		return ch
	case <-time.After(failAfter):
		h.t.Fatalf("no Change within %v", failAfter)
		return Change{}
	}
}

// expect receives Changes until every path of want has been seen, and
// fails if a Change carries a path in neither want nor allowed, or
// Overflow. It returns the Changes received.
func (h *harness) expect(want []string, allowed ...string) []Change {
	h.t.Helper()
	ok := map[string]bool{}
	for _, p := range slices.Concat(want, allowed) {
		ok[p] = true
	}
	missing := map[string]bool{}
	for _, p := range want {
		missing[p] = true
	}
	var got []Change
	for len(missing) > 0 {
		ch := h.next()
		got = append(got, ch)
		if ch.Overflow {
			h.t.Errorf("unexpected Overflow in %+v", ch)
		}
		if !slices.IsSorted(ch.Paths) || len(slices.Compact(slices.Clone(ch.Paths))) != len(ch.Paths) {
			h.t.Errorf("paths not sorted and unique: %q", ch.Paths)
		}
		for _, p := range ch.Paths {
			if !ok[p] {
				h.t.Errorf("unexpected path %q in change %q (want %q, allowed %q)", p, ch.Paths, want, allowed)
			}
			delete(missing, p)
		}
		if h.t.Failed() {
			h.t.FailNow()
		}
	}
	return got
}

// step expects a step's Changes (see expect), then flushes: it puts a
// fresh .cue file in the root and receives Changes until that file shows
// up, allowing only want and allowed meanwhile. A write's events can be
// split across two Changes on a loaded machine; the flush makes sure no
// straggler of this step is read by the next one.
func (h *harness) step(want []string, allowed ...string) []Change {
	h.t.Helper()
	got := h.expect(want, allowed...)
	if _, err := os.Stat(h.root); err != nil {
		return got // no root to flush through; the next step allows "."
	}
	h.seq++
	name := fmt.Sprintf("flush-%d.cue", h.seq)
	put(h.t, filepath.Join(h.root, name), "flush: true\n")
	h.expect([]string{name}, slices.Concat(want, allowed)...)
	return got
}

// sentinel puts a fresh .cue file in the root and expects the next Changes
// to carry it and nothing else: whatever the test did before was ignored.
// Paths from earlier steps cannot straggle in: each step flushed them.
func (h *harness) sentinel() {
	h.t.Helper()
	h.seq++
	name := fmt.Sprintf("sentinel-%d.cue", h.seq)
	put(h.t, filepath.Join(h.root, name), "sentinel: true\n")
	h.expect([]string{name})
}

func mustMkdir(t *testing.T, path string) {
	t.Helper()
	if err := os.MkdirAll(path, 0o755); err != nil {
		t.Fatal(err)
	}
}

func write(t *testing.T, path, data string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(data), 0o644); err != nil {
		t.Fatal(err)
	}
}

// put writes a file in one event, as atomic writers do: a hidden temporary
// file (ignored) renamed into place.
func put(t *testing.T, path, data string) {
	t.Helper()
	tmp := filepath.Join(filepath.Dir(path), "."+filepath.Base(path)+".tmp")
	write(t, tmp, data)
	must(t, os.Rename(tmp, path))
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func TestFilter(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name  string
		dir   bool
		wants bool
	}{
		{"x.cue", false, true},
		{"pools.cue", false, true},
		{"#x.cue", false, true}, // the loader reads it, so it counts
		{"x.cue.tmp", false, false},
		{"x.cue~", false, false},
		{".x.cue.swp", false, false},
		{".x.cue.swx", false, false},
		{".#x.cue", false, false},
		{"#x.cue#", false, false},
		{"4913", false, false},
		{"notes.txt", false, false},
		{"x.swp", false, false},
		{"x.tmp", false, false},
		{".cue", false, false},
		{"x.CUE", false, false},
		{"sub", true, true},
		{"x.cue", true, true}, // a directory named like a file is a directory
		{"cue.mod", true, false},
		{".git", true, false},
		{".hidden", true, false},
	}
	for _, tc := range tests {
		got := relevantFile(tc.name)
		if tc.dir {
			got = relevantDir(tc.name)
		}
		if got != tc.wants {
			t.Errorf("relevant(%q, dir=%v) = %v, want %v", tc.name, tc.dir, got, tc.wants)
		}
	}
}

// step is one action on a running watcher and what it must report.
type step struct {
	do func(t *testing.T, h *harness)
	// want must all be reported; allowed may be. A step with no want
	// checks nothing (it only prepares the next one).
	want, allowed []string
	// ignored: everything do did must be ignored; a sentinel file put
	// after it must be the only path reported.
	ignored bool
}

func TestChanges(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name  string
		setup func(t *testing.T, h *harness) // before New
		steps []step
	}{
		{
			name:  "write existing file",
			setup: func(t *testing.T, h *harness) { write(t, filepath.Join(h.root, "x.cue"), "a: 1\n") },
			steps: []step{{
				do:   func(t *testing.T, h *harness) { write(t, filepath.Join(h.root, "x.cue"), "a: 2\n") },
				want: []string{"x.cue"},
			}},
		},
		{
			name:  "rename-save",
			setup: func(t *testing.T, h *harness) { write(t, filepath.Join(h.root, "x.cue"), "a: 1\n") },
			steps: []step{{
				do: func(t *testing.T, h *harness) {
					tmp := filepath.Join(h.root, "x.cue.tmp")
					write(t, tmp, "a: 2\n")
					must(t, os.Rename(tmp, filepath.Join(h.root, "x.cue")))
				},
				want: []string{"x.cue"},
			}},
		},
		{
			name:  "vim-style save",
			setup: func(t *testing.T, h *harness) { write(t, filepath.Join(h.root, "x.cue"), "a: 1\n") },
			steps: []step{{
				do: func(t *testing.T, h *harness) {
					x := filepath.Join(h.root, "x.cue")
					// vim's probe that the directory is writable
					probe := filepath.Join(h.root, "4913")
					write(t, probe, "")
					must(t, os.Remove(probe))
					must(t, os.Rename(x, x+"~"))
					write(t, x, "a: 2\n")
					must(t, os.Remove(x+"~"))
				},
				want: []string{"x.cue"},
			}},
		},
		{
			name: "hidden directories and cue.mod ignored",
			setup: func(t *testing.T, h *harness) {
				mustMkdir(t, filepath.Join(h.root, ".git", "objects"))
				mustMkdir(t, filepath.Join(h.root, "cue.mod"))
				mustMkdir(t, filepath.Join(h.root, "sub"))
			},
			steps: []step{{
				do: func(t *testing.T, h *harness) {
					write(t, filepath.Join(h.root, ".git", "HEAD"), "ref: refs/heads/main\n")
					write(t, filepath.Join(h.root, ".git", "objects", "x.cue"), "a: 1\n")
					mustMkdir(t, filepath.Join(h.root, ".git", "refs", "heads"))
					write(t, filepath.Join(h.root, ".git", "refs", "heads", "main.cue"), "a: 1\n")
					write(t, filepath.Join(h.root, "cue.mod", "module.cue"), "module: \"x\"\n")
					mustMkdir(t, filepath.Join(h.root, "cue.mod", "pkg"))
					write(t, filepath.Join(h.root, "cue.mod", "pkg", "p.cue"), "a: 1\n")
					mustMkdir(t, filepath.Join(h.root, ".new"))
					write(t, filepath.Join(h.root, ".new", "x.cue"), "a: 1\n")
					mustMkdir(t, filepath.Join(h.root, "sub", ".git"))
					write(t, filepath.Join(h.root, "sub", ".git", "x.cue"), "a: 1\n")
					mustMkdir(t, filepath.Join(h.root, "sub", "cue.mod"))
					write(t, filepath.Join(h.root, "sub", "cue.mod", "module.cue"), "a: 1\n")
				},
				ignored: true,
			}},
		},
		{
			name:  "editor temp files ignored",
			setup: func(t *testing.T, h *harness) { write(t, filepath.Join(h.root, "x.cue"), "a: 1\n") },
			steps: []step{{
				do: func(t *testing.T, h *harness) {
					for _, name := range []string{".x.cue.swp", ".x.cue.swx", "#x.cue#", "x.cue~", "4913", ".#x.cue", "notes.txt", "x.cue.tmp", "x.swp", "x.tmp", "x.cue___jb_tmp___"} {
						p := filepath.Join(h.root, name)
						write(t, p, "junk")
						write(t, p, "more junk")
						must(t, os.Chmod(p, 0o600))
						must(t, os.Rename(p, p+".2"))
						must(t, os.Remove(p+".2"))
					}
				},
				ignored: true,
			}},
		},
		{
			name: "new subdirectory",
			steps: []step{
				{
					do: func(t *testing.T, h *harness) {
						mustMkdir(t, filepath.Join(h.root, "sub"))
						write(t, filepath.Join(h.root, "sub", "x.cue"), "a: 1\n")
					},
					want:    []string{"sub/x.cue"},
					allowed: []string{"sub"},
				},
				{
					do:   func(t *testing.T, h *harness) { write(t, filepath.Join(h.root, "sub", "y.cue"), "a: 1\n") },
					want: []string{"sub/y.cue"},
				},
				{
					do: func(t *testing.T, h *harness) {
						mustMkdir(t, filepath.Join(h.root, "a", "b", "c"))
						write(t, filepath.Join(h.root, "a", "b", "c", "x.cue"), "a: 1\n")
					},
					want:    []string{"a/b/c/x.cue"},
					allowed: []string{"a", "a/b", "a/b/c"},
				},
				{
					do:   func(t *testing.T, h *harness) { write(t, filepath.Join(h.root, "a", "b", "c", "y.cue"), "a: 1\n") },
					want: []string{"a/b/c/y.cue"},
				},
			},
		},
		{
			name: "directory moved in, renamed and moved out",
			setup: func(t *testing.T, h *harness) {
				mustMkdir(t, filepath.Join(h.base, "outside", "m", "n"))
				write(t, filepath.Join(h.base, "outside", "m", "x.cue"), "a: 1\n")
				write(t, filepath.Join(h.base, "outside", "m", "n", "y.cue"), "a: 1\n")
				write(t, filepath.Join(h.base, "outside", "m", "notes.txt"), "hi\n")
			},
			steps: []step{
				{
					do: func(t *testing.T, h *harness) {
						must(t, os.Rename(filepath.Join(h.base, "outside", "m"), filepath.Join(h.root, "m")))
					},
					want: []string{"m", "m/x.cue", "m/n", "m/n/y.cue"},
				},
				{
					do:   func(t *testing.T, h *harness) { write(t, filepath.Join(h.root, "m", "n", "z.cue"), "a: 1\n") },
					want: []string{"m/n/z.cue"},
				},
				{
					do: func(t *testing.T, h *harness) {
						must(t, os.Rename(filepath.Join(h.root, "m"), filepath.Join(h.root, "k")))
					},
					want: []string{"m", "k", "k/x.cue", "k/n", "k/n/y.cue", "k/n/z.cue"},
				},
				{
					do:   func(t *testing.T, h *harness) { write(t, filepath.Join(h.root, "k", "n", "z.cue"), "a: 2\n") },
					want: []string{"k/n/z.cue"},
				},
				{
					do: func(t *testing.T, h *harness) {
						must(t, os.Rename(filepath.Join(h.root, "k"), filepath.Join(h.base, "outside", "k")))
					},
					want: []string{"k"},
				},
				{
					do: func(t *testing.T, h *harness) {
						write(t, filepath.Join(h.base, "outside", "k", "x.cue"), "a: 3\n")
						write(t, filepath.Join(h.base, "outside", "k", "n", "z.cue"), "a: 3\n")
						write(t, filepath.Join(h.base, "outside", "k", "n", "new.cue"), "a: 3\n")
					},
					ignored: true,
				},
			},
		},
		{
			name: "directory removed",
			setup: func(t *testing.T, h *harness) {
				mustMkdir(t, filepath.Join(h.root, "d", "e"))
				write(t, filepath.Join(h.root, "d", "x.cue"), "a: 1\n")
				write(t, filepath.Join(h.root, "d", "e", "y.cue"), "a: 1\n")
			},
			steps: []step{
				{
					do:   func(t *testing.T, h *harness) { must(t, os.RemoveAll(filepath.Join(h.root, "d"))) },
					want: []string{"d", "d/x.cue", "d/e", "d/e/y.cue"},
				},
				{
					do: func(t *testing.T, h *harness) {
						mustMkdir(t, filepath.Join(h.root, "d"))
						write(t, filepath.Join(h.root, "d", "z.cue"), "a: 1\n")
					},
					want:    []string{"d/z.cue"},
					allowed: []string{"d"},
				},
				{
					do:   func(t *testing.T, h *harness) { write(t, filepath.Join(h.root, "d", "z.cue"), "a: 2\n") },
					want: []string{"d/z.cue"},
				},
			},
		},
		{
			name: "symlinked directory",
			setup: func(t *testing.T, h *harness) {
				mustMkdir(t, filepath.Join(h.base, "other"))
				write(t, filepath.Join(h.base, "other", "y.cue"), "a: 1\n")
				must(t, os.Symlink(filepath.Join(h.base, "other"), filepath.Join(h.root, "link")))
				mustMkdir(t, filepath.Join(h.base, "other2", "deep"))
				write(t, filepath.Join(h.base, "other2", "deep", "z.cue"), "a: 1\n")
			},
			steps: []step{
				{
					do:   func(t *testing.T, h *harness) { write(t, filepath.Join(h.base, "other", "y.cue"), "a: 2\n") },
					want: []string{"link/y.cue"},
				},
				{
					// A link made while running, relative like most are.
					do:   func(t *testing.T, h *harness) { must(t, os.Symlink("../other2", filepath.Join(h.root, "link2"))) },
					want: []string{"link2", "link2/deep", "link2/deep/z.cue"},
				},
				{
					do:   func(t *testing.T, h *harness) { write(t, filepath.Join(h.base, "other2", "deep", "w.cue"), "a: 1\n") },
					want: []string{"link2/deep/w.cue"},
				},
				{
					do:   func(t *testing.T, h *harness) { must(t, os.Remove(filepath.Join(h.root, "link2"))) },
					want: []string{"link2"},
				},
				{
					do:      func(t *testing.T, h *harness) { write(t, filepath.Join(h.base, "other2", "deep", "w.cue"), "a: 2\n") },
					ignored: true,
				},
			},
		},
		{
			name: "second link takes over when the first goes",
			setup: func(t *testing.T, h *harness) {
				mustMkdir(t, filepath.Join(h.base, "real"))
				write(t, filepath.Join(h.base, "real", "x.cue"), "a: 1\n")
				must(t, os.Symlink("../real", filepath.Join(h.root, "a")))
				must(t, os.Symlink("../real", filepath.Join(h.root, "b")))
			},
			steps: []step{
				{
					do:   func(t *testing.T, h *harness) { write(t, filepath.Join(h.base, "real", "x.cue"), "a: 2\n") },
					want: []string{"a/x.cue"},
				},
				{
					do:   func(t *testing.T, h *harness) { must(t, os.Remove(filepath.Join(h.root, "a"))) },
					want: []string{"a", "b", "b/x.cue"},
				},
				{
					do:   func(t *testing.T, h *harness) { write(t, filepath.Join(h.base, "real", "x.cue"), "a: 3\n") },
					want: []string{"b/x.cue"},
				},
			},
		},
		{
			name:  "chmod that matters, touch that does not",
			setup: func(t *testing.T, h *harness) { write(t, filepath.Join(h.root, "x.cue"), "a: 1\n") },
			steps: []step{
				{
					do:   func(t *testing.T, h *harness) { must(t, os.Chmod(filepath.Join(h.root, "x.cue"), 0)) },
					want: []string{"x.cue"},
				},
				{
					do: func(t *testing.T, h *harness) {
						then := time.Now().Add(-time.Hour)
						must(t, os.Chtimes(filepath.Join(h.root, "x.cue"), then, then))
						must(t, os.Chmod(filepath.Join(h.root, "x.cue"), 0)) // no change
					},
					ignored: true,
				},
				{
					do:   func(t *testing.T, h *harness) { must(t, os.Chmod(filepath.Join(h.root, "x.cue"), 0o644)) },
					want: []string{"x.cue"},
				},
			},
		},
		{
			name: "root removed and created again",
			setup: func(t *testing.T, h *harness) {
				mustMkdir(t, filepath.Join(h.root, "sub"))
				write(t, filepath.Join(h.root, "sub", "x.cue"), "a: 1\n")
				mustMkdir(t, filepath.Join(h.base, "sibling"))
			},
			steps: []step{
				{
					do:      func(t *testing.T, h *harness) { must(t, os.RemoveAll(h.root)) },
					want:    []string{"."},
					allowed: []string{"sub", "sub/x.cue"},
				},
				{
					do: func(t *testing.T, h *harness) {
						// The root's siblings are not in the tree.
						write(t, filepath.Join(h.base, "sibling.cue"), "a: 1\n")
						write(t, filepath.Join(h.base, "sibling", "x.cue"), "a: 1\n")
						mustMkdir(t, filepath.Join(h.root, "sub"))
						write(t, filepath.Join(h.root, "sub", "y.cue"), "a: 1\n")
					},
					want:    []string{"sub/y.cue"},
					allowed: []string{".", "sub"},
				},
				{
					do:   func(t *testing.T, h *harness) { write(t, filepath.Join(h.root, "sub", "y.cue"), "a: 2\n") },
					want: []string{"sub/y.cue"},
				},
			},
		},
		{
			name: "root renamed away and replaced",
			setup: func(t *testing.T, h *harness) {
				mustMkdir(t, filepath.Join(h.root, "sub"))
				write(t, filepath.Join(h.root, "sub", "x.cue"), "a: 1\n")
				mustMkdir(t, filepath.Join(h.base, "new"))
				write(t, filepath.Join(h.base, "new", "n.cue"), "a: 1\n")
			},
			steps: []step{
				{
					do:   func(t *testing.T, h *harness) { must(t, os.Rename(h.root, filepath.Join(h.base, "old"))) },
					want: []string{"."},
				},
				{
					do: func(t *testing.T, h *harness) {
						write(t, filepath.Join(h.base, "old", "sub", "x.cue"), "a: 2\n") // not the tree any more
						must(t, os.Rename(filepath.Join(h.base, "new"), h.root))
					},
					want: []string{".", "n.cue"},
				},
				{
					do:      func(t *testing.T, h *harness) { write(t, filepath.Join(h.base, "old", "sub", "x.cue"), "a: 3\n") },
					ignored: true,
				},
			},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			h := newTree(t)
			if tc.setup != nil {
				tc.setup(t, h)
			}
			h.start(Options{})
			for i, s := range tc.steps {
				t.Logf("step %d", i)
				s.do(t, h)
				if s.want != nil {
					h.step(s.want, s.allowed...)
				}
				if s.ignored {
					h.sentinel()
				}
			}
		})
	}
}

// The config directory is often a symlink swapped atomically to deploy a
// new release: the new target is watched and the old one no longer.
func TestRootSymlinkSwap(t *testing.T) {
	t.Parallel()
	base := t.TempDir()
	for _, v := range []string{"v1", "v2"} {
		mustMkdir(t, filepath.Join(base, v))
		write(t, filepath.Join(base, v, v+".cue"), "a: 1\n")
	}
	root := filepath.Join(base, "current")
	must(t, os.Symlink("v1", root))
	h := &harness{t: t, base: base, root: root}
	h.start(Options{})

	write(t, filepath.Join(base, "v1", "v1.cue"), "a: 2\n")
	h.step([]string{"v1.cue"})

	must(t, os.Symlink("v2", filepath.Join(base, "current.tmp")))
	must(t, os.Rename(filepath.Join(base, "current.tmp"), root))
	h.step([]string{".", "v2.cue"})

	write(t, filepath.Join(base, "v2", "v2.cue"), "a: 2\n")
	h.step([]string{"v2.cue"})

	write(t, filepath.Join(base, "v1", "v1.cue"), "a: 3\n")
	h.sentinel()

	// The link's target goes away and comes back.
	must(t, os.Rename(filepath.Join(base, "v2"), filepath.Join(base, "v2.old")))
	h.step([]string{"."}) // no flush: the root is missing
	must(t, os.Rename(filepath.Join(base, "v2.old"), filepath.Join(base, "v2")))
	h.step([]string{".", "v2.cue"}, slices.Collect(maps.Keys(flushed(t, base, "v2")))...)
	write(t, filepath.Join(base, "v2", "v2.cue"), "a: 3\n")
	h.step([]string{"v2.cue"})
}

// flushed lists the flush and sentinel files a test left in dir: they come
// back when the directory does.
func flushed(t *testing.T, base, dir string) map[string]bool {
	t.Helper()
	entries, err := os.ReadDir(filepath.Join(base, dir))
	must(t, err)
	out := map[string]bool{}
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), "flush-") || strings.HasPrefix(e.Name(), "sentinel-") {
			out[e.Name()] = true
		}
	}
	return out
}

func TestSymlinkLoop(t *testing.T) {
	t.Parallel()
	h := newTree(t)
	dir := filepath.Join(h.root, "dir")
	mustMkdir(t, dir)
	must(t, os.Symlink(dir, filepath.Join(dir, "loop")))
	must(t, os.Symlink(".", filepath.Join(dir, "self")))
	must(t, os.Symlink("..", filepath.Join(h.root, "up"))) // the directory holding the root
	h.start(Options{})

	got := slices.Sorted(maps.Keys(h.w.dirs))
	want := []string{h.root, dir}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("watched directories (-want +got):\n%s", diff)
	}
	write(t, filepath.Join(dir, "z.cue"), "a: 1\n")
	h.step([]string{"dir/z.cue"})

	// A loop made while running is not followed either.
	must(t, os.Symlink("../..", filepath.Join(dir, "loop2")))
	h.step([]string{"dir/loop2"})
	write(t, filepath.Join(dir, "z.cue"), "a: 2\n")
	h.step([]string{"dir/z.cue"})
}

// Burst: many writes in quick succession are coalesced. The debounce is
// long enough that a slow machine does not split the burst, and the test
// only asserts that far fewer Changes than writes were sent.
func TestBurstCoalesced(t *testing.T) {
	t.Parallel()
	h := newTree(t)
	const files = 50
	var want []string
	for i := range files {
		name := "f" + string(rune('a'+i/10)) + string(rune('0'+i%10)) + ".cue"
		want = append(want, name)
		write(t, filepath.Join(h.root, name), "a: 0\n")
	}
	h.start(Options{Debounce: 300 * time.Millisecond, MaxDelay: time.Minute})
	for round := range 2 {
		for _, name := range want {
			write(t, filepath.Join(h.root, name), "a: "+string(rune('1'+round))+"\n")
		}
	}
	got := h.expect(want)
	t.Logf("%d writes to %d files gave %d Changes", 2*files, files, len(got))
	if len(got) >= files {
		t.Errorf("%d Changes for %d writes: not coalesced", len(got), 2*files)
	}
}

// MaxDelay: a writer that never lets the debounce settle still gets a
// Change while it is writing. The debounce is far longer than the test can
// run, so only MaxDelay can produce the Change the writer waits for.
func TestMaxDelay(t *testing.T) {
	t.Parallel()
	h := newTree(t)
	h.start(Options{Debounce: time.Hour, MaxDelay: 200 * time.Millisecond})
	stop := make(chan struct{})
	stopped := make(chan bool, 1) // true: stopped by the Change
	finished := make(chan struct{})
	var once sync.Once
	halt := func() { once.Do(func() { close(stop) }) }
	t.Cleanup(func() { halt(); <-finished })
	go func() {
		defer close(finished)
		p := filepath.Join(h.root, "busy.cue")
		for range 500 { // far longer than failAfter
			if err := os.WriteFile(p, []byte("a: 1\n"), 0o644); err != nil {
				t.Error(err)
			}
			select {
			case <-stop:
				stopped <- true
				return
			case <-time.After(20 * time.Millisecond): // well under Debounce/2
			}
		}
		stopped <- false
	}()
	ch := h.next()
	halt()
	if !<-stopped {
		t.Error("the writer ran out of writes before a Change arrived")
	}
	if diff := cmp.Diff(Change{Paths: []string{"busy.cue"}}, ch); diff != "" {
		t.Errorf("change (-want +got):\n%s", diff)
	}
}

// loopProbe collects Run's loop states (through Watcher.observe).
type loopProbe struct {
	mu     sync.Mutex
	last   loopState
	notify chan struct{}
}

func probe(w *Watcher) *loopProbe {
	p := &loopProbe{notify: make(chan struct{}, 1)}
	w.observe = func(s loopState) {
		p.mu.Lock()
		p.last = s
		p.mu.Unlock()
		select {
		case p.notify <- struct{}{}:
		default:
		}
	}
	return p
}

// wait blocks until Run's loop reaches a state that satisfies ok.
func (p *loopProbe) wait(t *testing.T, what string, ok func(loopState) bool) {
	t.Helper()
	deadline := time.After(failAfter)
	for {
		p.mu.Lock()
		s := p.last
		p.mu.Unlock()
		if ok(s) {
			return
		}
		select {
		case <-p.notify:
		case <-deadline:
			t.Fatalf("loop never reached %s; last state %+v", what, s)
		}
	}
}

// A slow consumer gets everything merged into one Change; nothing is
// dropped, and Overflow stays set until delivered.
func TestSlowConsumerMerges(t *testing.T) {
	t.Parallel()
	h := newTree(t)
	w, err := New(h.root, Options{Debounce: testDebounce, Logger: testLogger(t)})
	must(t, err)
	h.w = w
	p := probe(w)
	h.run()

	write(t, filepath.Join(h.root, "a.cue"), "a: 1\n")
	p.wait(t, "ready with a.cue", func(s loopState) bool { return s.ready && slices.Contains(s.paths, "a.cue") })
	put(t, filepath.Join(h.root, "b.cue"), "a: 1\n") // one event: none left to come after the Change
	p.wait(t, "b.cue pending", func(s loopState) bool { return slices.Contains(s.paths, "b.cue") })
	w.fs.Errors <- fsnotify.ErrEventOverflow // as inotify reports a queue overflow
	p.wait(t, "overflow pending", func(s loopState) bool { return s.overflow })

	if diff := cmp.Diff(Change{Paths: []string{"a.cue", "b.cue"}, Overflow: true}, h.next()); diff != "" {
		t.Errorf("merged change (-want +got):\n%s", diff)
	}
	write(t, filepath.Join(h.root, "c.cue"), "a: 1\n")
	h.expect([]string{"c.cue"}) // fails on a stale Overflow
}

func TestOverflow(t *testing.T) {
	t.Parallel()
	h := newTree(t)
	h.start(Options{})
	h.w.fs.Errors <- errors.New("read: something broke")
	if ch := h.next(); !ch.Overflow {
		t.Errorf("watcher error gave %+v, want Overflow", ch)
	}
}

func TestRunStopsOnCancel(t *testing.T) {
	t.Parallel()
	h := newTree(t)
	w, err := New(h.root, Options{Logger: testLogger(t)})
	must(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- w.Run(ctx) }()
	write(t, filepath.Join(h.root, "x.cue"), "a: 1\n") // pending, never read
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("Run = %v, want nil", err)
		}
	case <-time.After(failAfter):
		t.Fatal("Run did not return after cancel")
	}
	for range w.Changes() { // must be closed: a pending Change may come first
	}
	if err := w.Run(context.Background()); err == nil {
		t.Error("second Run succeeded")
	}
}

func TestNewErrors(t *testing.T) {
	t.Parallel()
	base := t.TempDir()
	file := filepath.Join(base, "config.cue")
	write(t, file, "a: 1\n")
	tests := []struct {
		name string
		path string
		is   error
	}{
		{"missing", filepath.Join(base, "nope"), fs.ErrNotExist},
		{"file", file, syscall.ENOTDIR},
		{"dangling link", func() string {
			p := filepath.Join(base, "dangling")
			must(t, os.Symlink("nope", p))
			return p
		}(), fs.ErrNotExist},
	}
	for _, tc := range tests {
		w, err := New(tc.path, Options{})
		if err == nil {
			w.fs.Close()
			t.Errorf("%s: New(%s) succeeded", tc.name, tc.path)
			continue
		}
		if !strings.Contains(err.Error(), tc.path) || !errors.Is(err, tc.is) {
			t.Errorf("%s: New(%s) = %v, want an error naming the path and wrapping %v", tc.name, tc.path, err, tc.is)
		}
	}
}

func TestOptionDefaults(t *testing.T) {
	t.Parallel()
	tests := []struct {
		in                 Options
		debounce, maxDelay time.Duration
	}{
		{Options{}, DefaultDebounce, 10 * DefaultDebounce},
		{Options{Debounce: time.Second}, time.Second, 10 * time.Second},
		{Options{Debounce: time.Second, MaxDelay: 3 * time.Second}, time.Second, 3 * time.Second},
		{Options{Debounce: time.Second, MaxDelay: time.Millisecond}, time.Second, time.Millisecond},
	}
	dir := t.TempDir()
	for _, tc := range tests {
		w, err := New(dir, tc.in)
		must(t, err)
		w.fs.Close()
		if w.debounce != tc.debounce || w.maxDelay != tc.maxDelay {
			t.Errorf("New(%+v): debounce %v, max delay %v; want %v, %v", tc.in, w.debounce, w.maxDelay, tc.debounce, tc.maxDelay)
		}
	}
}
