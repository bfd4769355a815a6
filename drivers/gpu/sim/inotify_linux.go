package sim

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// watchMask is what a watch reports: every change to a directory's entries
// or to a file's content or mode, and the directory itself going away.
// Opening and reading are left out: the reader's own reads report nothing.
const watchMask = unix.IN_CREATE | unix.IN_DELETE | unix.IN_MOVED_FROM | unix.IN_MOVED_TO |
	unix.IN_MODIFY | unix.IN_CLOSE_WRITE | unix.IN_ATTRIB |
	unix.IN_DELETE_SELF | unix.IN_MOVE_SELF | unix.IN_ONLYDIR

// goneMask says a watched directory is no longer at its path.
const goneMask = unix.IN_IGNORED | unix.IN_DELETE_SELF | unix.IN_MOVE_SELF

// watcher reports changes to a node's directory and to some of its
// subdirectories through a non-blocking inotify descriptor. It is read
// synchronously (drain), so that a change made before a query began is known
// to that query: the kernel queues the event before the writer's rename,
// write or unlink returns. It can also be waited on (follow). Not safe for
// concurrent use, but for follow.
type watcher struct {
	fd       int
	file     *os.File // fd, known to Go's poller: follow waits on it
	raw      syscall.RawConn
	followed bool // follow closes the file
	dir      string
	subs     []string         // the subdirectories that may be watched
	root     int32            // the watch of dir, -1 when none
	wds      map[string]int32 // subdirectory -> watch
	of       map[int32]string // watch -> subdirectory
	buf      []byte
}

// newWatcher makes a watcher of dir and of its subdirectories subs; none is
// watched yet (see watchRoot and watchSub).
func newWatcher(dir string, subs []string) (*watcher, error) {
	fd, err := unix.InotifyInit1(unix.IN_NONBLOCK | unix.IN_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("simulated node: inotify: %w", err)
	}
	// A non-blocking descriptor: the file is pollable.
	file := os.NewFile(uintptr(fd), "inotify")
	raw, err := file.SyscallConn()
	if err != nil {
		file.Close()
		return nil, fmt.Errorf("simulated node: inotify: %w", err)
	}
	return &watcher{
		fd: fd, file: file, raw: raw, dir: dir, subs: subs, root: -1,
		wds: map[string]int32{}, of: map[int32]string{},
		buf: make([]byte, 16<<10),
	}, nil
}

// follow calls f, in a goroutine of its own, whenever events may be
// queued; f drains them (with the lock that guards the watcher). The
// goroutine sleeps in Go's poller in between: a directory where nothing
// changes wakes nobody. It stops after release, or when it cannot wait
// (then it calls stopped first, which must give the watcher up); then it
// closes the watcher, and done.
func (w *watcher) follow(f, stopped func()) (done <-chan struct{}) {
	w.followed = true
	ch := make(chan struct{})
	go func() {
		defer close(ch)
		// Returns once release has set a deadline in the past.
		_ = w.raw.Read(func(uintptr) bool {
			f()
			return false // wait for more
		})
		stopped()
		_ = w.file.Close()
	}()
	return ch
}

// watchRoot makes sure dir is watched. ok is false when it cannot be (it
// does not exist); fresh is true when the watch is new, so that nothing read
// before can be trusted.
func (w *watcher) watchRoot() (ok, fresh bool) {
	if w.root >= 0 {
		return true, false
	}
	wd, err := unix.InotifyAddWatch(w.fd, w.dir, watchMask)
	if err != nil {
		return false, false
	}
	w.root = int32(wd)
	return true, true
}

// watching reports whether dir is watched.
func (w *watcher) watching() bool { return w.root >= 0 }

// watchSub makes sure subdirectory sub is watched, and reports whether a
// change in it will be seen: a subdirectory that does not exist is covered
// by the watch of dir, which reports its creation.
func (w *watcher) watchSub(sub string) bool {
	if w.root < 0 {
		return false
	}
	if _, ok := w.wds[sub]; ok {
		return true
	}
	wd, err := unix.InotifyAddWatch(w.fd, filepath.Join(w.dir, sub), watchMask)
	if errors.Is(err, unix.ENOENT) {
		return true
	} else if err != nil {
		return false
	}
	w.wds[sub] = int32(wd)
	w.of[int32(wd)] = sub
	return true
}

// unwatch gives up the watch of subdirectory sub, if any.
func (w *watcher) unwatch(sub string) {
	wd, ok := w.wds[sub]
	if !ok {
		return
	}
	// The directory may be gone (then the kernel has removed the watch) or
	// moved away (then it is watched still): either way, the watch goes.
	_, _ = unix.InotifyRmWatch(w.fd, uint32(wd))
	delete(w.wds, sub)
	delete(w.of, wd)
}

// unwatchAll gives up every watch.
func (w *watcher) unwatchAll() {
	for _, sub := range w.subs {
		w.unwatch(sub)
	}
	if w.root >= 0 {
		_, _ = unix.InotifyRmWatch(w.fd, uint32(w.root))
		w.root = -1
	}
}

// drain reads every event queued so far and tells changed what it is about:
//
//	("", "")      anything may have changed (the queue overflowed, dir is gone)
//	(sub, "")     subdirectory sub was created, removed or replaced
//	("", name)    file name of dir changed
//	(sub, name)   file name of subdirectory sub changed
//
// When nothing is queued it costs one read(2), which fails with EAGAIN.
func (w *watcher) drain(changed func(sub, name string)) error {
	for {
		n, err := unix.Read(w.fd, w.buf)
		switch {
		case errors.Is(err, unix.EINTR):
			continue
		case errors.Is(err, unix.EAGAIN):
			return nil
		case err != nil:
			return fmt.Errorf("simulated node: reading inotify events: %w", err)
		}
		for off := 0; off+unix.SizeofInotifyEvent <= n; {
			wd := int32(binary.NativeEndian.Uint32(w.buf[off:]))
			mask := binary.NativeEndian.Uint32(w.buf[off+4:])
			size := int(binary.NativeEndian.Uint32(w.buf[off+12:]))
			off += unix.SizeofInotifyEvent
			if off+size > n {
				return fmt.Errorf("simulated node: a truncated inotify event")
			}
			name := w.buf[off : off+size]
			for len(name) > 0 && name[len(name)-1] == 0 { // NUL padded
				name = name[:len(name)-1]
			}
			off += size
			w.event(wd, mask, string(name), changed)
		}
	}
}

func (w *watcher) event(wd int32, mask uint32, name string, changed func(sub, name string)) {
	if mask&unix.IN_Q_OVERFLOW != 0 {
		changed("", "")
		return
	}
	if wd == w.root {
		switch {
		case mask&goneMask != 0:
			w.unwatchAll()
			changed("", "")
		case slices.Contains(w.subs, name):
			// Created, removed or renamed: whatever was watched under
			// that name is not what the name holds now.
			w.unwatch(name)
			changed(name, "")
		default:
			changed("", name)
		}
		return
	}
	sub, ok := w.of[wd]
	if !ok {
		return // a watch given up
	}
	if mask&goneMask != 0 {
		w.unwatch(sub)
		changed(sub, "")
		return
	}
	changed(sub, name)
}

// release gives the watcher up: its descriptor is closed, by the goroutine
// that follows it if there is one (closing it here would wait for that
// goroutine, which may be waiting for the caller's lock).
func (w *watcher) release() {
	if w.followed {
		_ = w.file.SetReadDeadline(time.Unix(1, 0))
		return
	}
	_ = w.file.Close()
}
