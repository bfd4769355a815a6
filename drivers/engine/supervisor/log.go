//go:build linux

package supervisor

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// RotateLog rotates the log at path when it is larger than maxBytes: path.N
// is removed (N = keep), path.N-1 becomes path.N, ..., path becomes path.1.
// With keep 0 the log is removed. It reports whether it rotated; a missing
// log, or maxBytes <= 0, is left alone.
//
// Start rotates before it opens the log, so a log grows without bound only
// during one run of the engine. Because the engine writes with O_APPEND, a
// running engine's log could also be copied and truncated in place; nothing
// here does that.
func RotateLog(path string, maxBytes int64, keep int) (bool, error) {
	if maxBytes <= 0 {
		return false, nil
	}
	fi, err := os.Stat(path)
	if errors.Is(err, fs.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("rotate log: %w", err)
	}
	if fi.Size() <= maxBytes {
		return false, nil
	}
	if keep <= 0 {
		if err := os.Remove(path); err != nil {
			return false, fmt.Errorf("rotate log: %w", err)
		}
		return true, nil
	}
	old := func(n int) string { return path + "." + strconv.Itoa(n) }
	if err := os.Remove(old(keep)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return false, fmt.Errorf("rotate log: %w", err)
	}
	for n := keep - 1; n >= 1; n-- {
		if err := os.Rename(old(n), old(n+1)); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return false, fmt.Errorf("rotate log: %w", err)
		}
	}
	if err := os.Rename(path, old(1)); err != nil {
		return false, fmt.Errorf("rotate log: %w", err)
	}
	return true, nil
}

// openLog rotates the log when it is too big and opens it for appending,
// creating it and its directory. Without a path, output goes to /dev/null.
func openLog(spec Spec) (*os.File, error) {
	if spec.LogPath == "" {
		return os.OpenFile(os.DevNull, os.O_WRONLY, 0)
	}
	if err := os.MkdirAll(filepath.Dir(spec.LogPath), 0o750); err != nil {
		return nil, fmt.Errorf("engine log: %w", err)
	}
	if _, err := RotateLog(spec.LogPath, spec.LogMaxBytes, spec.LogKeep); err != nil {
		return nil, err
	}
	f, err := os.OpenFile(spec.LogPath, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o640)
	if err != nil {
		return nil, fmt.Errorf("engine log: %w", err)
	}
	return f, nil
}

// StartHeader begins the line Start writes into an engine's log before each start.
const StartHeader = "-- pool-managerd "

// LogSinceStart returns what an engine's log holds since its last start
// (StartHeader), reading at most the last maxBytes of the file: logs rotate
// only at a start, so a long run's log may be large.
func LogSinceStart(path string, maxBytes int64) string {
	f, err := os.Open(path)
	if err != nil {
		return ""
	}
	defer f.Close()
	if fi, err := f.Stat(); err == nil && fi.Size() > maxBytes {
		if _, err := f.Seek(-maxBytes, io.SeekEnd); err != nil {
			return ""
		}
	}
	data, err := io.ReadAll(io.LimitReader(f, maxBytes))
	if err != nil {
		return ""
	}
	s := string(data)
	if i := strings.LastIndex(s, StartHeader); i >= 0 {
		s = s[i:]
	}
	return s
}
