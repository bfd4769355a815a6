//go:build !unix

package watch

import "io/fs"

// dirKey identifies a real directory, whatever path reaches it.
type dirKey struct {
	dev, ino uint64
	// path is the resolved path where the device and inode are not known.
	path string
}

// keyOf returns the identity of the directory at path: its path with every
// link resolved, on systems without device and inode numbers.
func keyOf(path string, _ fs.FileInfo) dirKey {
	return resolvedKey(path)
}

// attr is what a Chmod event can change that matters to the loader.
type attr struct {
	mode fs.FileMode
}

func attrOf(info fs.FileInfo) attr {
	return attr{mode: info.Mode()}
}
