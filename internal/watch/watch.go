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
	"sync/atomic"
	"syscall"
	"time"

	"github.com/fsnotify/fsnotify"
	"github.com/hashicorp/go-hclog"
)

// DefaultDebounce is the Debounce used when Options.Debounce is 0.
const DefaultDebounce = 200 * time.Millisecond

// Change is one settled burst of changes in the config tree.
type Change struct {
	// Paths are the changed paths (files or directories), sorted,
	// deduplicated, relative to the watched root with "/" separators. The
	// root itself is "." (it was removed, renamed, or came back).
	Paths []string
	// Overflow: events may have been lost (fsnotify's ErrEventOverflow or
	// another watcher error); reload everything. Paths may be incomplete.
	Overflow bool
}

// Options configure a Watcher. The zero value is usable.
type Options struct {
	// Debounce is the quiet time after the last relevant event before a
	// Change is sent (DefaultDebounce when 0).
	Debounce time.Duration
	// MaxDelay bounds how long a continuous stream of events can postpone a
	// Change, counted from the first event of the burst (10*Debounce when
	// 0). A MaxDelay under Debounce sends every burst MaxDelay after its
	// first event.
	MaxDelay time.Duration
	// Logger receives debug lines about watches added and removed, and
	// warnings about errors; nil discards them.
	Logger hclog.Logger
}

// Watcher watches one config directory tree. Create it with New, then call
// Run once and read Changes.
type Watcher struct {
	// root is the watched directory, absolute and clean.
	root string
	// parent is the directory holding root, watched for root's own name
	// only; "" when it is not watched.
	parent    string
	parentKey dirKey

	fs       *fsnotify.Watcher
	log      hclog.Logger
	debounce time.Duration
	maxDelay time.Duration
	changes  chan Change
	started  atomic.Bool

	// The watch set and the pending change: set up by New, then touched
	// only by the goroutine running Run.

	// dirs maps each watched directory path to the real directory it
	// watches; byKey is its inverse.
	dirs  map[string]dirKey
	byKey map[dirKey]string
	// attrs holds the last-seen mode and owner of .cue files and watched
	// directories, to tell a Chmod that matters from a touch.
	attrs map[string]attr
	// aliased is set when a directory was not watched because another path
	// already watches it (a second link, a loop); dropping a directory then
	// walks the tree again, for the other path may have to take over.
	aliased bool
	// rescan asks for a walk of the whole tree after the current event.
	rescan bool
	// rootGone is set while the root is missing, to warn once.
	rootGone bool

	pending  map[string]struct{}
	overflow bool

	// observe, when set (tests), is called after every step of Run's loop.
	observe func(loopState)
}

// loopState is what tests can see of Run's loop.
type loopState struct {
	paths    []string
	overflow bool
	// ready: the debounce is over and the Change waits for the consumer.
	ready bool
}

// New starts watching root, which must be an existing directory, and every
// directory below it (see the package documentation for which ones).
// Errors name the path that failed. Events are queued by the kernel until
// Run reads them; call Run, or the fsnotify watcher is never closed.
func New(root string, opts Options) (*Watcher, error) {
	abs, err := filepath.Abs(root)
	if err != nil {
		return nil, fmt.Errorf("watch %s: %w", root, err)
	}
	info, err := os.Stat(abs)
	if err != nil {
		return nil, fmt.Errorf("watch %s: %w", root, unwrapPathError(err))
	}
	if !info.IsDir() {
		return nil, fmt.Errorf("watch %s: %w", root, syscall.ENOTDIR)
	}
	if opts.Debounce <= 0 {
		opts.Debounce = DefaultDebounce
	}
	if opts.MaxDelay <= 0 {
		opts.MaxDelay = 10 * opts.Debounce
	}
	if opts.Logger == nil {
		opts.Logger = hclog.NewNullLogger()
	}
	fw, err := fsnotify.NewWatcher()
	if err != nil {
		return nil, fmt.Errorf("watch %s: %w", root, err)
	}
	w := &Watcher{
		root:     abs,
		fs:       fw,
		log:      opts.Logger,
		debounce: opts.Debounce,
		maxDelay: opts.MaxDelay,
		changes:  make(chan Change),
		dirs:     map[string]dirKey{},
		byKey:    map[dirKey]string{},
		attrs:    map[string]attr{},
		pending:  map[string]struct{}{},
	}
	w.watchParent()
	if err := w.addTree(abs, info, false); err != nil {
		fw.Close()
		return nil, fmt.Errorf("watch %s: %w", root, err)
	}
	w.rescan = false
	return w, nil
}

// watchParent watches the directory that holds the root, to see the root
// itself removed, renamed, replaced or created again.
func (w *Watcher) watchParent() {
	parent := filepath.Dir(w.root)
	if parent == w.root {
		return // the root is "/"
	}
	info, err := os.Stat(parent)
	if err == nil {
		err = w.fs.Add(parent)
	}
	if err != nil {
		w.log.Warn("cannot watch the directory holding the config directory; if the config directory is removed or replaced, it is not watched again",
			"path", parent, "error", err)
		return
	}
	w.parent, w.parentKey = parent, keyOf(parent, info)
	w.log.Debug("watching directory for the config directory's name", "path", parent, "name", filepath.Base(w.root))
}

// Changes delivers settled changes. It is closed after Run returns.
func (w *Watcher) Changes() <-chan Change {
	return w.changes
}

// Run processes events until ctx is done, then closes the fsnotify watcher
// and the Changes channel and returns nil. It returns an error if fsnotify
// stops delivering events by itself, or if it is called more than once.
// A Change still pending when ctx is done is dropped.
func (w *Watcher) Run(ctx context.Context) error {
	if !w.started.CompareAndSwap(false, true) {
		return fmt.Errorf("watch %s: Run called more than once", w.root)
	}
	defer close(w.changes)
	defer func() {
		if err := w.fs.Close(); err != nil {
			w.log.Warn("closing the watcher", "path", w.root, "error", err)
		}
	}()

	// timer fires when the burst has settled (or MaxDelay is reached);
	// it runs only while a burst is open and not yet ready.
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	defer timer.Stop()
	var (
		burstStart time.Time // first relevant event of the open burst
		open       bool      // a burst is open: the timer runs
		ready      bool      // the burst settled: a Change waits for the consumer
	)
	// mark notes a relevant event: it opens a burst or pushes its end back,
	// no further than MaxDelay after its start. Once ready, more events
	// are merged into the waiting Change without delaying it.
	mark := func() {
		if ready {
			return
		}
		now := time.Now()
		if !open {
			open, burstStart = true, now
		}
		wait := min(w.debounce, burstStart.Add(w.maxDelay).Sub(now))
		timer.Reset(max(wait, 0))
	}

	for {
		var (
			out  chan<- Change
			next Change
		)
		if ready {
			out, next = w.changes, w.snapshot()
		}
		if w.observe != nil {
			w.observe(loopState{paths: w.snapshot().Paths, overflow: w.overflow, ready: ready})
		}
		select {
		case <-ctx.Done():
			return nil
		case ev, ok := <-w.fs.Events:
			if !ok {
				return fmt.Errorf("watch %s: fsnotify stopped delivering events", w.root)
			}
			if w.handle(ev) {
				mark()
			}
		case err, ok := <-w.fs.Errors:
			if !ok {
				return fmt.Errorf("watch %s: fsnotify stopped delivering errors", w.root)
			}
			if errors.Is(err, fsnotify.ErrEventOverflow) {
				w.log.Warn("events were lost (inotify queue overflow); reloading everything", "path", w.root, "error", err)
			} else {
				w.log.Warn("watcher error; events may have been lost, reloading everything", "path", w.root, "error", err)
			}
			w.overflow = true
			w.resync()
			mark()
		case <-timer.C:
			open, ready = false, true
		case out <- next:
			clear(w.pending)
			w.overflow = false
			ready = false
		}
	}
}

// snapshot returns the pending change.
func (w *Watcher) snapshot() Change {
	return Change{Paths: slices.Sorted(maps.Keys(w.pending)), Overflow: w.overflow}
}

// record adds a path to the pending change.
func (w *Watcher) record(path string) {
	if rel, ok := w.rel(path); ok {
		w.pending[rel] = struct{}{}
	}
}

// rel returns path relative to the root with "/" separators ("." for the
// root), and false for a path outside the tree.
func (w *Watcher) rel(path string) (string, bool) {
	r, err := filepath.Rel(w.root, path)
	if err != nil || r == ".." || len(r) > 2 && r[:3] == ".."+string(filepath.Separator) {
		return "", false
	}
	return filepath.ToSlash(r), true
}

func unwrapPathError(err error) error {
	var pe *fs.PathError
	if errors.As(err, &pe) {
		return pe.Err
	}
	return err
}
