//go:build unix

package watch

import (
	"io/fs"
	"syscall"
)

// dirKey identifies a real directory, whatever path reaches it.
type dirKey struct {
	dev, ino uint64
	// path is the resolved path where the device and inode are not known.
	path string
}

// keyOf returns the identity of the directory at path, described by info
// (from os.Stat, so links are followed).
func keyOf(path string, info fs.FileInfo) dirKey {
	if st, ok := info.Sys().(*syscall.Stat_t); ok {
		return dirKey{dev: uint64(st.Dev), ino: uint64(st.Ino)} //nolint:unconvert // Dev's type differs by platform
	}
	return resolvedKey(path)
}

// attr is what a Chmod event can change that matters to the loader:
// whether it may read the file or list the directory.
type attr struct {
	mode     fs.FileMode
	uid, gid uint32
}

func attrOf(info fs.FileInfo) attr {
	a := attr{mode: info.Mode()}
	if st, ok := info.Sys().(*syscall.Stat_t); ok {
		a.uid, a.gid = st.Uid, st.Gid
	}
	return a
}
