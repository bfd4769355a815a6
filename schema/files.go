package schema

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
)

// MaxFileSize bounds one config file. Config files are small; a bigger one
// is a mistake (a model or a log dropped into the repository), not a config.
const MaxFileSize = 4 << 20

// ErrNotDirectory is returned when the config path is missing or not a directory.
var ErrNotDirectory = errors.New("not a config directory")

// sourceFile is one config file read from the config directory.
type sourceFile struct {
	// name is the path shown to people: the config directory joined with the file's relative path.
	name string
	// rel is the path relative to the config directory.
	rel  string
	data []byte
}

// collected is the outcome of reading a config directory tree.
type collected struct {
	files []sourceFile
	// ignored counts regular files that are not .cue files.
	ignored int
	diags   Diagnostics
}

// readFunc reads a config file that the walk found: path is where it was
// found, rel that path relative to the config directory, info its stat
// (of the link's target for a symbolic link).
type readFunc func(path, rel string, info fs.FileInfo) ([]byte, error)

// collectFiles reads every .cue file in the tree under dir. It follows
// symbolic links to files and directories, detects symlink loops, skips
// hidden files and directories and cue.mod, refuses non-regular and
// oversized files, and reports every problem as a diagnostic rather than
// stopping at the first one. It returns ErrNotDirectory (wrapped) when dir
// itself is not a readable directory. Each file is read with read (nil: from disk).
func collectFiles(ctx context.Context, dir string, read readFunc) (collected, error) {
	var out collected
	if read == nil {
		read = func(path, _ string, _ fs.FileInfo) ([]byte, error) { return readLimited(path, MaxFileSize) }
	}
	info, err := os.Stat(dir)
	if err != nil {
		return out, fmt.Errorf("%w: %w", ErrNotDirectory, err)
	}
	if !info.IsDir() {
		return out, fmt.Errorf("%w: %s is a file; give the directory that holds the config", ErrNotDirectory, dir)
	}
	w := walker{ctx: ctx, root: dir, read: read, out: &out, active: map[fileID]string{}, seen: map[fileID]string{}}
	if err := w.walkDir(dir, "", info); err != nil {
		return out, err
	}
	sort.Slice(out.files, func(i, j int) bool { return out.files[i].rel < out.files[j].rel })
	return out, nil
}

type fileID struct{ dev, ino uint64 }

func idOf(info fs.FileInfo) (fileID, bool) {
	st, ok := info.Sys().(*syscall.Stat_t)
	if !ok {
		return fileID{}, false
	}
	return fileID{dev: uint64(st.Dev), ino: uint64(st.Ino)}, true //nolint:unconvert // Dev's type differs by platform
}

type walker struct {
	ctx  context.Context
	root string
	read readFunc
	out  *collected
	// active holds the directories on the current path, to detect loops.
	active map[fileID]string
	// seen holds every directory and file read so far: one reachable by two
	// paths (through symbolic links) is read once, so a tree of links that
	// fans out cannot make the walk exponential.
	seen map[fileID]string
}

// firstVisit records a directory or file and reports whether it is new.
func (w *walker) firstVisit(info fs.FileInfo, rel string) bool {
	id, ok := idOf(info)
	if !ok {
		return true
	}
	if _, dup := w.seen[id]; dup {
		return false
	}
	w.seen[id] = rel
	return true
}

func (w *walker) fileProblem(rel, format string, args ...any) {
	w.out.diags = append(w.out.diags, Diagnostic{
		Pos:     Pos{File: filepath.Join(w.root, rel)},
		Message: fmt.Sprintf(format, args...),
	})
}

func (w *walker) walkDir(path, rel string, info fs.FileInfo) error {
	if err := w.ctx.Err(); err != nil {
		return err
	}
	if id, ok := idOf(info); ok {
		if first, seen := w.active[id]; seen {
			w.fileProblem(rel, "symlink loop: this directory is %s again; remove the link", displayRel(first))
			return nil
		}
		w.active[id] = rel
		defer delete(w.active, id)
	}
	if !w.firstVisit(info, rel) {
		return nil // already read through another path
	}
	entries, err := os.ReadDir(path)
	if err != nil {
		w.fileProblem(rel, "cannot read directory: %v", unwrapPathError(err))
		return nil
	}
	for _, e := range entries {
		name := e.Name()
		if strings.HasPrefix(name, ".") || name == "cue.mod" {
			continue
		}
		childPath := filepath.Join(path, name)
		childRel := filepath.Join(rel, name)
		info, err := e.Info()
		if err != nil {
			w.fileProblem(childRel, "cannot stat: %v", unwrapPathError(err))
			continue
		}
		if info.Mode()&fs.ModeSymlink != 0 {
			target, err := os.Stat(childPath)
			if err != nil {
				// A broken link may be a config folder that went missing: say so.
				w.fileProblem(childRel, "cannot follow symlink: %v", unwrapPathError(err))
				continue
			}
			info = target
		}
		switch {
		case info.IsDir():
			if err := w.walkDir(childPath, childRel, info); err != nil {
				return err
			}
		case !strings.HasSuffix(name, ".cue"):
			w.out.ignored++
		case !info.Mode().IsRegular():
			w.fileProblem(childRel, "not a regular file (%s); a config file must be a plain file", info.Mode().Type())
		case info.Size() > MaxFileSize:
			w.fileProblem(childRel, "file is %s, over the %s limit for a config file", humanBytes(info.Size()), humanBytes(MaxFileSize))
		case !w.firstVisit(info, childRel):
			// The same file through another link: read once.
		default:
			data, err := w.read(childPath, childRel, info)
			if err != nil {
				w.fileProblem(childRel, "cannot read: %v", unwrapPathError(err))
				continue
			}
			w.out.files = append(w.out.files, sourceFile{name: filepath.Join(w.root, childRel), rel: childRel, data: data})
		}
	}
	return nil
}

func displayRel(rel string) string {
	if rel == "" {
		return "the config directory"
	}
	return rel
}

// readLimited reads a file, failing if it grows past limit while being read.
func readLimited(path string, limit int64) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, limit+1))
	if err != nil {
		return nil, err
	}
	if int64(len(data)) > limit {
		return nil, fmt.Errorf("file is over the %s limit for a config file", humanBytes(limit))
	}
	return data, nil
}

func unwrapPathError(err error) error {
	var pe *fs.PathError
	if errors.As(err, &pe) {
		return pe.Err
	}
	return err
}

func humanBytes(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}
