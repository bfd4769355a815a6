package state

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

// LockFileName is the name of the lock file in the state directory.
const LockFileName = "lock"

// ErrLocked is wrapped by Lock's error when another process (or another Lock
// in this one) holds the state directory.
var ErrLocked = errors.New("locked")

// Holder is the process that holds a state directory's lock, as it recorded
// itself in the lock file.
type Holder struct {
	PID  int      `json:"pid"`
	Args []string `json:"args"`
	// Since is when the lock was taken.
	Since time.Time `json:"since"`
}

// LockedError is Lock's error when the directory is locked. It wraps ErrLocked.
type LockedError struct {
	Dir string
	// Holder is nil when the holder has not recorded itself yet.
	Holder *Holder
}

func (e *LockedError) Error() string {
	if e.Holder == nil {
		return fmt.Sprintf("state directory %s is locked by another process", e.Dir)
	}
	cmd := strings.Join(e.Holder.Args, " ")
	if len(cmd) > 200 {
		cmd = cmd[:200] + "..."
	}
	return fmt.Sprintf("state directory %s is locked by pid %d (%s) since %s",
		e.Dir, e.Holder.PID, cmd, e.Holder.Since.Format(time.RFC3339))
}

func (e *LockedError) Unwrap() error { return ErrLocked }

// DirLock is an exclusive lock on a state directory, taken by Lock. (The type
// cannot be called Lock too: the function has that name.)
type DirLock struct {
	f *os.File
}

// Lock takes the exclusive advisory lock (flock) on dir/lock, creating the
// directory and the file if needed, and records this process as the holder.
// It does not wait: when another process holds the lock it fails at once
// with a *LockedError naming the holder.
//
// The lock belongs to the open file, which is closed on exec, so it is not
// inherited by the engines pool-managerd starts and ends with the process,
// however it ends: a killed pool-managerd leaves no stale lock. The lock file
// itself is never removed (removing it would let two processes lock two
// different files).
func Lock(dir string) (*DirLock, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("locking state directory: %w", err)
	}
	path := filepath.Join(dir, LockFileName)
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return nil, fmt.Errorf("locking state directory: %w", err)
	}
	if err := flock(f, syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		_ = f.Close()
		if errors.Is(err, syscall.EWOULDBLOCK) {
			return nil, &LockedError{Dir: dir, Holder: readHolder(path)}
		}
		return nil, fmt.Errorf("locking state directory %s: %w", dir, err)
	}
	data, err := json.Marshal(Holder{PID: os.Getpid(), Args: os.Args, Since: time.Now()})
	if err == nil {
		err = f.Truncate(0)
	}
	if err == nil {
		_, err = f.WriteAt(append(data, '\n'), 0)
	}
	if err != nil {
		_ = f.Close()
		return nil, fmt.Errorf("locking state directory %s: recording the holder: %w", dir, err)
	}
	return &DirLock{f: f}, nil
}

// Unlock clears the holder record and releases the lock. Unlocking twice
// does nothing.
func (l *DirLock) Unlock() error {
	if l == nil || l.f == nil {
		return nil
	}
	f := l.f
	l.f = nil
	terr := f.Truncate(0)
	uerr := flock(f, syscall.LOCK_UN)
	cerr := f.Close()
	if err := errors.Join(terr, uerr, cerr); err != nil {
		return fmt.Errorf("unlocking state directory: %w", err)
	}
	return nil
}

func flock(f *os.File, how int) error {
	for {
		err := syscall.Flock(int(f.Fd()), how)
		if err != syscall.EINTR {
			return err
		}
	}
}

// readHolder reads the holder record without taking the lock; nil when it
// cannot be read or is not written yet.
func readHolder(path string) *Holder {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil
	}
	var h Holder
	if err := json.Unmarshal(data, &h); err != nil || h.PID == 0 {
		return nil
	}
	return &h
}
