package watch

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/fsnotify/fsnotify"
)

// handle applies one fsnotify event to the watch set and the pending
// change, and reports whether the event counts (see the package
// documentation).
func (w *Watcher) handle(ev fsnotify.Event) bool {
	path := filepath.Clean(ev.Name)
	var changed bool
	switch {
	case path == w.root:
		changed = w.handleRoot(ev)
	case filepath.Dir(path) == w.parent:
		// A sibling of the root, seen by the parent's watch. While the
		// root is missing, it may be the target of a root that is a link
		// (current -> v1) coming back.
		if w.rootGone && w.checkRoot() {
			w.record(w.root)
			return true
		}
		return false
	default:
		changed = w.handleInTree(path, ev)
	}
	if w.rescan {
		w.resync()
	}
	return changed
}

// handleInTree handles an event on a path below the root.
func (w *Watcher) handleInTree(path string, ev fsnotify.Event) bool {
	if _, ok := w.rel(path); !ok {
		return false
	}
	name := filepath.Base(path)
	if hidden(name) {
		// Never watched, never read: .git, swap files, emacs locks.
		return false
	}
	changed := false
	if ev.Has(fsnotify.Remove) || ev.Has(fsnotify.Rename) {
		if w.dropTree(path) > 0 {
			changed = true
			w.record(path)
		}
		delete(w.attrs, path)
		if relevantFile(name) {
			changed = true
			w.record(path)
		}
	}
	if ev.Has(fsnotify.Create) || ev.Has(fsnotify.Remove) || ev.Has(fsnotify.Rename) {
		// Whatever is at path now: a new file or directory, or one that
		// replaced the removed one (a rename over it).
		if w.refresh(path) {
			changed = true
		}
	}
	if ev.Has(fsnotify.Write) && relevantFile(name) {
		changed = true
		w.record(path)
	}
	if ev.Has(fsnotify.Chmod) && w.chmod(path) {
		changed = true
	}
	return changed
}

// refresh looks at what is at path now: a directory in the tree is watched
// (with everything below it) and reported with the .cue files in it; a
// .cue file is reported. It reports whether anything counted.
func (w *Watcher) refresh(path string) bool {
	name := filepath.Base(path)
	info, err := os.Stat(path)
	if err != nil {
		// Gone again, or a dangling link (which the loader reports).
		if relevantFile(name) {
			w.record(path)
			return true
		}
		return false
	}
	if !info.IsDir() {
		if !relevantFile(name) {
			return false
		}
		w.attrs[path] = attrOf(info)
		w.record(path)
		return true
	}
	if !relevantDir(name) {
		return false
	}
	if _, ok := w.dirs[filepath.Dir(path)]; !ok {
		return false // a stale event from a directory no longer watched
	}
	w.record(path)
	if err := w.addTree(path, info, true); err != nil {
		w.warnWatch(path, err)
	}
	return true
}

// chmod handles a Chmod event on a path below the root or the root: it
// counts when the mode or owner of a .cue file or of a directory of the
// tree differs from the one last seen.
func (w *Watcher) chmod(path string) bool {
	info, err := os.Stat(path)
	if err != nil {
		return false // removed: its Remove or Rename event counts
	}
	name := filepath.Base(path)
	if info.IsDir() {
		if path != w.root && !relevantDir(name) {
			return false
		}
		if _, ok := w.dirs[path]; !ok && (path == w.root || w.isWatched(filepath.Dir(path))) {
			// Not watched, e.g. it could not be read before: try now.
			if err := w.addTree(path, info, true); err != nil {
				w.warnWatch(path, err)
			}
		}
	} else if !relevantFile(name) {
		return false
	}
	a := attrOf(info)
	old, seen := w.attrs[path]
	w.attrs[path] = a
	if seen && old == a {
		return false // touch, a link count change, an extended attribute
	}
	w.record(path)
	return true
}

// handleRoot handles an event on the root itself, seen by its own watch or
// by the watch on the directory holding it.
func (w *Watcher) handleRoot(ev fsnotify.Event) bool {
	changed := false
	if ev.Has(fsnotify.Remove) || ev.Has(fsnotify.Rename) {
		changed = true
		w.dropTree(w.root)
		w.rescan = false
	}
	if ev.Has(fsnotify.Create) || ev.Has(fsnotify.Remove) || ev.Has(fsnotify.Rename) {
		changed = true
		w.checkRoot()
	}
	if changed {
		w.record(w.root)
	}
	if ev.Has(fsnotify.Chmod) && w.chmod(w.root) {
		changed = true
	}
	return changed
}

// checkRoot looks at the root: if it is missing, it drops every watch and
// warns (once); if it is a directory not watched yet (created again, moved
// into place, or a link that now leads elsewhere), it watches the tree and
// reports what it finds. It returns whether it started watching the root.
func (w *Watcher) checkRoot() bool {
	info, err := os.Stat(w.root)
	if err != nil || !info.IsDir() {
		w.dropTree(w.root)
		w.rescan = false
		if !w.rootGone {
			w.rootGone = true
			w.log.Warn("config directory removed or renamed; it is watched again when it reappears", "path", w.root)
		}
		return false
	}
	added := false
	if key, ok := w.dirs[w.root]; !ok || key != keyOf(w.root, info) {
		w.dropTree(w.root)
		w.rescan = false
		if err := w.addTree(w.root, info, true); err != nil {
			w.warnWatch(w.root, err)
		}
		added = true
	}
	if w.rootGone {
		w.rootGone = false
		w.log.Info("config directory is back", "path", w.root)
	}
	return added
}

// isWatched reports whether path is a watched directory.
func (w *Watcher) isWatched(path string) bool {
	_, ok := w.dirs[path]
	return ok
}

// addTree watches the directory at path (info is from os.Stat) and every
// directory of the tree below it not yet watched. With report, the
// directories it starts watching and the .cue files in them are recorded
// as changed. It returns the error of watching path itself; errors below
// it are logged.
func (w *Watcher) addTree(path string, info fs.FileInfo, report bool) error {
	return w.walk(path, info, report, map[dirKey]bool{}, true)
}

func (w *Watcher) walk(path string, info fs.FileInfo, report bool, visited map[dirKey]bool, top bool) error {
	key := keyOf(path, info)
	if visited[key] || (w.parent != "" && key == w.parentKey) {
		w.aliased = true
		w.log.Debug("directory reached again through a link; not watched twice", "path", path)
		return nil
	}
	visited[key] = true
	if other, ok := w.byKey[key]; ok && other != path {
		if w.still(other, key) {
			w.aliased = true
			w.log.Debug("directory already watched through another path", "path", path, "watched_as", other)
			return nil
		}
		w.dropTree(other) // stale: that path no longer leads there
	}
	isNew := false
	if old, ok := w.dirs[path]; !ok || old != key {
		if ok {
			w.dropTree(path) // replaced by another directory
		}
		if err := w.fs.Add(path); err != nil {
			if top {
				return err
			}
			w.warnWatch(path, err)
		} else {
			w.dirs[path], w.byKey[key] = key, path
			w.log.Debug("watching directory", "path", path)
		}
		isNew = true
		w.attrs[path] = attrOf(info)
		if report {
			w.record(path)
		}
	}
	// List after adding the watch: an entry created meanwhile is seen by
	// the listing, the event, or both.
	entries, err := os.ReadDir(path)
	if err != nil {
		w.log.Debug("cannot list directory", "path", path, "error", err)
		return nil
	}
	for _, e := range entries {
		name := e.Name()
		if hidden(name) {
			continue
		}
		child := filepath.Join(path, name)
		typ := e.Type()
		var ci fs.FileInfo
		if typ.IsDir() || typ&fs.ModeSymlink != 0 {
			ci, err = os.Stat(child)
			if err != nil {
				continue // removed meanwhile, or a dangling link
			}
			if ci.IsDir() {
				if relevantDir(name) {
					if err := w.walk(child, ci, report, visited, false); err != nil {
						return err // not reached: only top returns errors
					}
				}
				continue
			}
		}
		if !isNew || !relevantFile(name) {
			continue
		}
		if ci == nil {
			if ci, err = e.Info(); err != nil {
				continue
			}
		}
		w.attrs[child] = attrOf(ci)
		if report {
			w.record(child)
		}
	}
	return nil
}

// still reports whether path still leads to the directory key.
func (w *Watcher) still(path string, key dirKey) bool {
	info, err := os.Stat(path)
	return err == nil && info.IsDir() && keyOf(path, info) == key
}

// dropTree stops watching path and every directory below it, and forgets
// the attributes seen there. It returns how many directories it dropped.
// fsnotify may have dropped the watches already (a removed directory):
// errors from it are only logged.
func (w *Watcher) dropTree(path string) int {
	n := 0
	for p, key := range w.dirs {
		if !within(p, path) {
			continue
		}
		if err := w.fs.Remove(p); err != nil && !errors.Is(err, fsnotify.ErrNonExistentWatch) {
			w.log.Debug("removing watch", "path", p, "error", err)
		}
		delete(w.dirs, p)
		if w.byKey[key] == p {
			delete(w.byKey, key)
		}
		w.log.Debug("stopped watching directory", "path", p)
		n++
	}
	for p := range w.attrs {
		if within(p, path) {
			delete(w.attrs, p)
		}
	}
	if n > 0 && w.aliased {
		// Another path may reach a directory dropped here.
		w.rescan = true
	}
	return n
}

// resync checks the watch set against the tree after events may have been
// lost or a directory reached by two paths was dropped: it drops watches
// whose path no longer leads to the directory watched, and watches every
// directory of the tree not yet watched, reporting what it adds.
func (w *Watcher) resync() {
	w.rescan = false
	for p, key := range w.dirs { // entries dropped meanwhile are skipped
		if !w.still(p, key) {
			w.record(p)
			w.dropTree(p)
		}
	}
	w.rescan = false
	info, err := os.Stat(w.root)
	if err != nil || !info.IsDir() {
		return
	}
	w.aliased = false // recounted by the walk
	if err := w.addTree(w.root, info, true); err != nil {
		w.warnWatch(w.root, err)
	}
	w.rescan = false
}

// warnWatch logs a directory that cannot be watched.
func (w *Watcher) warnWatch(path string, err error) {
	if errors.Is(err, syscall.ENOSPC) {
		w.log.Warn("cannot watch directory: inotify watch limit reached; raise the fs.inotify.max_user_watches sysctl. Changes in it are seen only by the periodic resync",
			"path", path, "error", err)
		return
	}
	w.log.Warn("cannot watch directory; changes in it are seen only by the periodic resync", "path", path, "error", err)
}

// within reports whether path is dir or below it.
func within(path, dir string) bool {
	return path == dir || strings.HasPrefix(path, dir) && (strings.HasSuffix(dir, string(filepath.Separator)) || path[len(dir)] == filepath.Separator)
}

// resolvedKey identifies a directory by its path with every link resolved.
func resolvedKey(path string) dirKey {
	if r, err := filepath.EvalSymlinks(path); err == nil {
		return dirKey{path: r}
	}
	return dirKey{path: path}
}
