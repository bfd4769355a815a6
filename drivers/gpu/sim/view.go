package sim

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
)

// view is what a library has read of its node's directory, kept until
// inotify reports a change: a query on a node where nothing changed reads no
// file. Every query first drains the watcher's events (one read(2) when there
// are none), so a change made before the query began is always seen: the
// kernel queues the event before the writer's call returns. Without inotify
// (none on this system, or out of instances) nothing is kept and every query
// reads the directory, as it always did. Errors are never kept: a file that
// cannot be read, or is corrupt, is read again by the next query.
//
// The liveness of claimants is not on disk: it is checked on every query,
// through a pidfd kept per claim while there is a watcher (see claimant).
//
// A view is not safe for concurrent use: the library holds a lock around it.
type view struct {
	dir string
	w   *watcher // nil: nothing is kept between queries

	nodeOK bool // node is what node.json holds
	node   nodeDesc

	claims  dirCache[*claim]
	foreign dirCache[foreignFile]

	lostOK bool // lost is what lost/ holds
	lost   map[string]bool

	// events counts the changes to events.log (and the times anything may
	// have changed): an event set reads the file when it moved. signal, when
	// not nil, is closed when it moves.
	events uint64
	signal chan struct{}
}

// claim is a claim file read, with its claimant's liveness.
type claim struct {
	claimFile
	*claimant
}

func newView(dir string) *view {
	v := &view{
		dir:     dir,
		claims:  dirCache[*claim]{sub: claimsDir, parse: parseClaim, drop: func(c *claim) { c.release() }},
		foreign: dirCache[foreignFile]{sub: foreignDir, parse: parseForeign},
	}
	if w, err := newWatcher(dir, []string{claimsDir, foreignDir, lostDir}); err == nil {
		v.w = w
	}
	return v
}

// close releases the watcher and the pidfds; the view still answers, reading
// everything every time and keeping no pidfd.
func (v *view) close() {
	v.unwatch()
	v.claims.reset()
	v.invalidate()
}

// unwatch gives the watcher up: from now on everything is read every time
// (and event sets poll events.log).
func (v *view) unwatch() {
	if v.w != nil {
		v.w.release()
		v.w = nil
		v.eventsChanged()
	}
}

// invalidate forgets everything read.
func (v *view) invalidate() {
	v.nodeOK = false
	v.lostOK = false
	v.claims.changed("")
	v.foreign.changed("")
	v.eventsChanged()
}

// eventsChanged notes that events.log may have changed.
func (v *view) eventsChanged() {
	v.events++
	if v.signal != nil {
		close(v.signal)
		v.signal = nil
	}
}

// eventsSignal returns a channel closed when events.log changes, or nil
// when changes are not watched (then it must be polled).
func (v *view) eventsSignal() <-chan struct{} {
	if v.w == nil || !v.w.watching() {
		return nil
	}
	if v.signal == nil {
		v.signal = make(chan struct{})
	}
	return v.signal
}

// sync brings the view up to date with the directory's changes: it forgets
// what changed since the last query.
func (v *view) sync() {
	if v.w == nil {
		v.invalidate()
		return
	}
	if err := v.w.drain(v.changed); err != nil {
		// Not expected; give inotify up rather than miss a change.
		v.unwatch()
		v.invalidate()
		return
	}
	if ok, fresh := v.w.watchRoot(); !ok || fresh {
		// Read before the directory was watched (or while it cannot be):
		// nothing of it can be trusted.
		v.invalidate()
	}
}

// changed is told of one change by the watcher (see watcher.drain).
func (v *view) changed(sub, name string) {
	switch {
	case sub == "" && (name == "" || name == nodeFile):
		// The GPUs decide which claims and holds are valid: everything.
		v.invalidate()
	case sub == "" && name == eventsFile:
		v.eventsChanged()
	case sub == claimsDir:
		v.claims.changed(name)
	case sub == foreignDir:
		v.foreign.changed(name)
	case sub == lostDir:
		v.lostOK = false
	}
}

// readNode returns node.json's GPUs.
func (v *view) readNode() (nodeDesc, error) {
	if v.nodeOK {
		return v.node, nil
	}
	desc, err := readNode(v.dir)
	if err != nil {
		return nodeDesc{}, err
	}
	v.node, v.nodeOK = desc, true
	return desc, nil
}

// isLost reports whether GPU index is lost: lost/<index> exists.
func (v *view) isLost(index int) (bool, error) {
	if !v.lostOK {
		watched := v.w != nil && v.w.watchSub(lostDir)
		entries, err := os.ReadDir(filepath.Join(v.dir, lostDir))
		if err != nil && !errors.Is(err, fs.ErrNotExist) {
			return false, fmt.Errorf("simulated node: %w", err)
		}
		lost := make(map[string]bool, len(entries))
		for _, e := range entries {
			lost[e.Name()] = true
		}
		v.lost, v.lostOK = lost, watched
	}
	return v.lost[strconv.Itoa(index)], nil
}

// dirCache is the *.json files of one subdirectory, parsed, in name order.
type dirCache[T any] struct {
	sub   string
	parse func(path, name string, data []byte, desc nodeDesc) (T, error)
	drop  func(T) // releases what an entry holds; nil when nothing

	current bool            // nothing changed since list was read
	all     bool            // every file must be read again
	dirty   map[string]bool // the files changed since they were read
	entries map[string]T    // by file name
	list    []T             // in file name order
}

// changed notes that file name changed; "" means any file may have.
func (d *dirCache[T]) changed(name string) {
	d.current = false
	if name == "" {
		d.all = true
		return
	}
	if d.dirty == nil {
		d.dirty = map[string]bool{}
	}
	d.dirty[name] = true
}

// reset drops every entry.
func (d *dirCache[T]) reset() {
	if d.drop != nil {
		for _, e := range d.entries {
			d.drop(e)
		}
	}
	d.entries, d.list, d.dirty = nil, nil, nil
	d.current, d.all = false, true
}

// read returns the files, reading the directory and the files that changed
// (all of them without a watcher). A file removed while reading is left out;
// the first that cannot be read or is corrupt, in name order, is the error.
func (d *dirCache[T]) read(v *view, desc nodeDesc) ([]T, error) {
	if d.current {
		return d.list, nil
	}
	// Watched before it is listed: a change after the listing is reported.
	watched := v.w != nil && v.w.watchSub(d.sub)
	names, err := listJSON(v.dir, d.sub)
	if err != nil {
		return nil, err
	}
	entries := make(map[string]T, len(names))
	list := make([]T, 0, len(names))
	var replaced []T
	for _, name := range names {
		e, ok := d.entries[name]
		if !ok || d.all || d.dirty[name] {
			path := filepath.Join(v.dir, d.sub, name)
			data, err := os.ReadFile(path)
			if errors.Is(err, fs.ErrNotExist) {
				continue
			} else if err != nil {
				return nil, fmt.Errorf("simulated node: %w", err)
			}
			fresh, err := d.parse(path, name, data, desc)
			if err != nil {
				return nil, err
			}
			if ok {
				replaced = append(replaced, e)
			}
			e = fresh
		}
		entries[name] = e
		list = append(list, e)
	}
	if d.drop != nil {
		for _, e := range replaced {
			d.drop(e)
		}
		for name, e := range d.entries {
			if _, ok := entries[name]; !ok {
				d.drop(e)
			}
		}
	}
	d.entries, d.list = entries, list
	d.dirty, d.all = nil, false
	d.current = watched
	return list, nil
}

// parseClaim parses claims/<name>.
func parseClaim(path, name string, data []byte, desc nodeDesc) (*claim, error) {
	var c claimFile
	if err := strictUnmarshal(data, &c); err != nil {
		return nil, fmt.Errorf("simulated node: %s is corrupt: %w", path, err)
	}
	if strconv.Itoa(c.PID)+".json" != name {
		return nil, fmt.Errorf("simulated node: %s is corrupt: it holds the claim of pid %d", path, c.PID)
	}
	for index := range c.GPUs {
		if index < 0 || index >= len(desc.GPUs) {
			return nil, fmt.Errorf("simulated node: %s is corrupt: no GPU %d", path, index)
		}
	}
	return &claim{claimFile: c, claimant: newClaimant(c.PID, c.StartTime)}, nil
}

// parseForeign parses foreign/<name>.
func parseForeign(path, _ string, data []byte, desc nodeDesc) (foreignFile, error) {
	var h foreignFile
	if err := strictUnmarshal(data, &h); err != nil {
		return foreignFile{}, fmt.Errorf("simulated node: %s is corrupt: %w", path, err)
	}
	if h.Index < 0 || h.Index >= len(desc.GPUs) {
		return foreignFile{}, fmt.Errorf("simulated node: %s is corrupt: no GPU %d", path, h.Index)
	}
	return h, nil
}
