// Package cache is a node's content-addressed model cache.
//
// Layout under the cache root DIR:
//
//	DIR/sha256/DIGEST/FILENAME        a single-file model (GGUF), DIGEST its sha256
//	DIR/sha256/MDIGEST/REL/PATH       a model directory, MDIGEST its manifest's digest
//	DIR/meta/DIGEST/REL/PATH.verified a verification record per file (JSON)
//	DIR/meta/DIGEST/last-used         touched whenever the entry is used (GC)
//	DIR/tmp/FILEDIGEST.partial        a download in progress, resumable
//
// A file enters the cache only by Commit, which renames a verified partial
// file into place and writes its verification record: size, mtime, inode and
// digest. The record is trusted while the file's size, mtime and inode still
// match, so a lookup never re-hashes a 40 GB file. Records live in a tree
// beside the entries (meta/), not inside them, so a model directory holds
// exactly the model's files.
//
// Free space is the file system's available bytes, capped by an optional
// size limit for the whole cache (--model-cache-max):
//
//	c, err := cache.Open(dir, cache.Options{MaxSize: 100 << 30})
//	release, err := c.Reserve(size) // *cache.DiskError if short
//	defer release()
//	…download to c.PartialPath(digest), verify…
//	p, err := c.Commit(c.PartialPath(digest), digest, name, digest)
//	p, verified, err := c.Lookup(digest, name)
//	removed, err := c.GC(ctx, inUse, 24*time.Hour)
package cache

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/poolmanagerd/pool-managerd/schema/modelsource"
)

const (
	entriesDir = "sha256"
	metaDir    = "meta"
	tmpDir     = "tmp"
	// PartialSuffix ends the name of a download in progress.
	PartialSuffix = ".partial"
	recordSuffix  = ".verified"
	lastUsedName  = "last-used"
)

// Options configure a Cache.
type Options struct {
	// MaxSize caps the bytes the whole cache may hold (entries and partial
	// downloads); 0 means no cap beyond the file system's free space.
	MaxSize int64
	// Now is the clock for last-use times; nil means time.Now.
	Now func() time.Time
}

// Cache is a content-addressed model cache rooted at a directory. Its methods
// are safe for concurrent use within one process.
type Cache struct {
	root string
	opts Options

	mu       sync.Mutex
	reserved int64          // bytes promised to running downloads
	active   map[string]int // partial digests with a running download
}

// Open opens (creating if needed) the cache rooted at dir.
func Open(dir string, opts Options) (*Cache, error) {
	if dir == "" {
		return nil, errors.New("model cache: no directory")
	}
	if opts.MaxSize < 0 {
		return nil, fmt.Errorf("model cache: size limit %d is negative", opts.MaxSize)
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	abs, err := filepath.Abs(dir)
	if err != nil {
		return nil, fmt.Errorf("model cache %s: %w", dir, err)
	}
	for _, d := range []string{entriesDir, metaDir, tmpDir} {
		if err := os.MkdirAll(filepath.Join(abs, d), 0o755); err != nil {
			return nil, fmt.Errorf("model cache: %w", err)
		}
	}
	return &Cache{root: abs, opts: opts, active: map[string]int{}}, nil
}

// Root is the cache's absolute root directory.
func (c *Cache) Root() string { return c.root }

// EntryDir is the directory of the entry named by digest (a file's digest or
// a manifest's): DIR/sha256/DIGEST.
func (c *Cache) EntryDir(digest string) string { return filepath.Join(c.root, entriesDir, digest) }

// Path is where file rel (a file name, or a manifest path) of entry digest
// lives: DIR/sha256/DIGEST/REL.
func (c *Cache) Path(digest, rel string) string {
	return filepath.Join(c.EntryDir(digest), filepath.FromSlash(rel))
}

// PartialPath is where the download of the file with digest fileDigest is
// kept until it is verified: DIR/tmp/FILEDIGEST.partial. It survives a restart
// so the download can resume.
func (c *Cache) PartialPath(fileDigest string) string {
	return filepath.Join(c.root, tmpDir, fileDigest+PartialSuffix)
}

func (c *Cache) recordPath(digest, rel string) string {
	return filepath.Join(c.root, metaDir, digest, filepath.FromSlash(rel)+recordSuffix)
}

func (c *Cache) lastUsedPath(digest string) string {
	return filepath.Join(c.root, metaDir, digest, lastUsedName)
}

func checkName(digest, rel string) error {
	if err := modelsource.CheckDigest(digest); err != nil {
		return fmt.Errorf("model cache: %w", err)
	}
	if err := modelsource.CheckPath(rel); err != nil {
		return fmt.Errorf("model cache: %w", err)
	}
	return nil
}

// Record is a file's verification record: the digest it was verified to have
// and the file's identity when it was.
type Record struct {
	SHA256     string    `json:"sha256"`
	Size       int64     `json:"size"`
	MTimeNs    int64     `json:"mtime_ns"`
	Inode      uint64    `json:"inode"`
	VerifiedAt time.Time `json:"verified_at"`
}

func identity(fi fs.FileInfo) (size, mtime int64, inode uint64) {
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		inode = st.Ino
	}
	return fi.Size(), fi.ModTime().UnixNano(), inode
}

// matches reports whether the record still describes the file and digest.
func (r Record) matches(fi fs.FileInfo, digest string) bool {
	size, mtime, inode := identity(fi)
	return r.SHA256 == digest && r.Size == size && r.MTimeNs == mtime && r.Inode == inode
}

// Lookup finds file rel of entry digest, a single-file model's name (digest
// being the file's own) or a manifest path. verified reports a verification
// record that still matches the file: its digest is fileDigest (for a single
// file, the entry's digest). A missing file is ("", false, nil); a file
// without a matching record is (path, false, nil): Verify hashes it.
func (c *Cache) Lookup(digest, rel string) (path string, verified bool, err error) {
	return c.lookup(digest, rel, digest)
}

// LookupFile is Lookup for a file of a model directory, whose own digest
// fileDigest differs from the entry's (the manifest's) digest.
func (c *Cache) LookupFile(digest, rel, fileDigest string) (path string, verified bool, err error) {
	return c.lookup(digest, rel, fileDigest)
}

func (c *Cache) lookup(digest, rel, fileDigest string) (string, bool, error) {
	if err := checkName(digest, rel); err != nil {
		return "", false, err
	}
	p := c.Path(digest, rel)
	fi, err := os.Stat(p)
	if errors.Is(err, fs.ErrNotExist) {
		return "", false, nil
	}
	if err != nil {
		return "", false, fmt.Errorf("model cache: %w", err)
	}
	if !fi.Mode().IsRegular() {
		return "", false, fmt.Errorf("model cache: %s is not a regular file", p)
	}
	rec, err := c.readRecord(digest, rel)
	if err != nil {
		return p, false, nil
	}
	return p, rec.matches(fi, fileDigest), nil
}

// LookupManifest finds a model directory: its path and whether every file of
// the manifest is there and verified.
func (c *Cache) LookupManifest(m modelsource.Manifest) (dir string, verified bool, err error) {
	if err := m.Validate(); err != nil {
		return "", false, fmt.Errorf("model cache: manifest: %w", err)
	}
	d := m.Digest()
	for _, f := range m.Files {
		_, ok, err := c.LookupFile(d, f.Path, f.SHA256)
		if err != nil {
			return "", false, err
		}
		if !ok {
			return c.EntryDir(d), false, nil
		}
	}
	return c.EntryDir(d), true, nil
}

func (c *Cache) readRecord(digest, rel string) (Record, error) {
	b, err := os.ReadFile(c.recordPath(digest, rel))
	if err != nil {
		return Record{}, err
	}
	var r Record
	if err := json.Unmarshal(b, &r); err != nil {
		return Record{}, err
	}
	return r, nil
}

func (c *Cache) writeRecord(digest, rel string, fi fs.FileInfo, fileDigest string) error {
	size, mtime, inode := identity(fi)
	b, err := json.Marshal(Record{SHA256: fileDigest, Size: size, MTimeNs: mtime, Inode: inode, VerifiedAt: c.opts.Now().UTC()})
	if err != nil {
		return err
	}
	p := c.recordPath(digest, rel)
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		return err
	}
	tmp := p + ".tmp"
	if err := os.WriteFile(tmp, append(b, '\n'), 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, p)
}

// Commit moves a verified download (partial, a file on the cache's file
// system, normally PartialPath(fileDigest)) into place as file rel of entry
// digest and writes its verification record. The caller has checked that
// the file's sha256 is fileDigest. It returns the file's path in the cache.
func (c *Cache) Commit(partial, digest, rel, fileDigest string) (string, error) {
	if err := checkName(digest, rel); err != nil {
		return "", err
	}
	if err := modelsource.CheckDigest(fileDigest); err != nil {
		return "", fmt.Errorf("model cache: %w", err)
	}
	p := c.Path(digest, rel)
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		return "", fmt.Errorf("model cache: %w", err)
	}
	// A stale record must never describe the new file.
	if err := os.Remove(c.recordPath(digest, rel)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return "", fmt.Errorf("model cache: %w", err)
	}
	if err := os.Chmod(partial, 0o444); err != nil {
		return "", fmt.Errorf("model cache: %w", err)
	}
	if err := os.Rename(partial, p); err != nil {
		return "", fmt.Errorf("model cache: %w", err)
	}
	fi, err := os.Stat(p)
	if err != nil {
		return "", fmt.Errorf("model cache: %w", err)
	}
	if err := c.writeRecord(digest, rel, fi, fileDigest); err != nil {
		return "", fmt.Errorf("model cache: verification record for %s: %w", p, err)
	}
	if err := c.Touch(digest); err != nil {
		return "", err
	}
	return p, nil
}

// Verify hashes file rel of entry digest (a file already in place without a
// trusted record, e.g. from an older daemon) and writes its record when the
// sha256 is fileDigest. It reports whether it matched; a file that does not
// match is left alone.
func (c *Cache) Verify(ctx context.Context, digest, rel, fileDigest string) (bool, error) {
	if err := checkName(digest, rel); err != nil {
		return false, err
	}
	p := c.Path(digest, rel)
	f, err := os.Open(p)
	if err != nil {
		return false, fmt.Errorf("model cache: %w", err)
	}
	defer f.Close()
	before, err := f.Stat()
	if err != nil {
		return false, fmt.Errorf("model cache: %w", err)
	}
	got, err := HashReader(ctx, f)
	if err != nil {
		return false, fmt.Errorf("model cache: hashing %s: %w", p, err)
	}
	if got != fileDigest {
		return false, nil
	}
	after, err := f.Stat()
	if err != nil {
		return false, fmt.Errorf("model cache: %w", err)
	}
	if !after.ModTime().Equal(before.ModTime()) || after.Size() != before.Size() {
		return false, fmt.Errorf("model cache: %s changed while it was hashed", p)
	}
	if err := c.writeRecord(digest, rel, after, fileDigest); err != nil {
		return false, fmt.Errorf("model cache: %w", err)
	}
	return true, nil
}

// HashReader returns the hex sha256 of r's bytes, stopping when ctx is done.
func HashReader(ctx context.Context, r io.Reader) (string, error) {
	h := sha256.New()
	buf := make([]byte, 1<<20)
	for {
		if err := ctx.Err(); err != nil {
			return "", err
		}
		n, err := r.Read(buf)
		h.Write(buf[:n])
		if errors.Is(err, io.EOF) {
			return hex.EncodeToString(h.Sum(nil)), nil
		}
		if err != nil {
			return "", err
		}
	}
}

// Touch records that entry digest was used now (for GC).
func (c *Cache) Touch(digest string) error {
	if err := modelsource.CheckDigest(digest); err != nil {
		return fmt.Errorf("model cache: %w", err)
	}
	c.mu.Lock() // GC checks an entry's last use and removes it under the lock
	defer c.mu.Unlock()
	p := c.lastUsedPath(digest)
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		return fmt.Errorf("model cache: %w", err)
	}
	now := c.opts.Now()
	if err := os.WriteFile(p, []byte(now.UTC().Format(time.RFC3339Nano)+"\n"), 0o644); err != nil {
		return fmt.Errorf("model cache: %w", err)
	}
	return nil
}

// lastUsed is when entry digest was last used: its last-used record, else
// the entry directory's modification time.
func (c *Cache) lastUsed(digest string) (time.Time, error) {
	if b, err := os.ReadFile(c.lastUsedPath(digest)); err == nil {
		if t, err := time.Parse(time.RFC3339Nano, strings.TrimSpace(string(b))); err == nil {
			return t, nil
		}
	}
	fi, err := os.Stat(c.EntryDir(digest))
	if err != nil {
		return time.Time{}, err
	}
	return fi.ModTime(), nil
}

// DiskError is the error of a download that does not fit: Need bytes more
// than the Free ones (the file system's, capped by the cache's size limit).
type DiskError struct {
	Need, Free int64
	// Limited reports that the cache's size limit, not the file system,
	// is what is short.
	Limited bool
}

func (e *DiskError) Error() string {
	what := "free disk space"
	if e.Limited {
		what = "room under the model cache's size limit"
	}
	return fmt.Sprintf("insufficient disk: need %d bytes, %d bytes of %s", e.Need, e.Free, what)
}

// Free is the bytes the cache can still take: the file system's available
// bytes, capped by MaxSize less Size, less what running downloads have
// reserved. limited reports that the cap is the smaller.
func (c *Cache) Free() (free int64, limited bool, err error) {
	var st unix.Statfs_t
	if err := unix.Statfs(c.root, &st); err != nil {
		return 0, false, fmt.Errorf("model cache: statfs %s: %w", c.root, err)
	}
	free = int64(st.Bavail) * int64(st.Bsize)
	if c.opts.MaxSize > 0 {
		size, err := c.Size()
		if err != nil {
			return 0, false, err
		}
		if room := c.opts.MaxSize - size; room < free {
			free, limited = room, true
		}
	}
	c.mu.Lock()
	free -= c.reserved
	c.mu.Unlock()
	return max(free, 0), limited, nil
}

// Reserve claims need bytes for a download, or returns a *DiskError when
// they are not free. The bytes stay claimed until release is called (once
// the download is committed or abandoned). A download's partial file counts
// in Size as it grows while its reservation still holds, so the check is
// conservative while downloads run.
func (c *Cache) Reserve(need int64) (release func(), err error) {
	if need < 0 {
		need = 0
	}
	free, limited, err := c.Free()
	if err != nil {
		return nil, err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if need > free {
		return nil, &DiskError{Need: need, Free: free, Limited: limited}
	}
	c.reserved += need
	var once sync.Once
	return func() {
		once.Do(func() {
			c.mu.Lock()
			c.reserved -= need
			c.mu.Unlock()
		})
	}, nil
}

// Size is the bytes the cache holds: its entries and partial downloads.
func (c *Cache) Size() (int64, error) {
	var n int64
	for _, d := range []string{entriesDir, tmpDir} {
		err := filepath.WalkDir(filepath.Join(c.root, d), func(_ string, e fs.DirEntry, err error) error {
			if err != nil {
				if errors.Is(err, fs.ErrNotExist) {
					return nil
				}
				return err
			}
			if !e.Type().IsRegular() {
				return nil
			}
			fi, err := e.Info()
			if errors.Is(err, fs.ErrNotExist) {
				return nil
			}
			if err != nil {
				return err
			}
			n += fi.Size()
			return nil
		})
		if err != nil {
			return 0, fmt.Errorf("model cache: size: %w", err)
		}
	}
	return n, nil
}

// Active marks the partial download of fileDigest as running in this
// process, so GC leaves its partial file alone; done unmarks it.
func (c *Cache) Active(fileDigest string) (done func()) {
	c.mu.Lock()
	c.active[fileDigest]++
	c.mu.Unlock()
	var once sync.Once
	return func() {
		once.Do(func() {
			c.mu.Lock()
			if c.active[fileDigest]--; c.active[fileDigest] <= 0 {
				delete(c.active, fileDigest)
			}
			c.mu.Unlock()
		})
	}
}

// Removed is what GC removed.
type Removed struct {
	// Entries are the digests of the entries removed.
	Entries []string
	// Partials are the partial downloads removed (their files' digests).
	Partials []string
	// Bytes is the bytes freed.
	Bytes int64
}

// GC removes the entries whose digest inUse does not report and whose last
// use is older than grace, and the partial downloads with no running
// download (see Active) untouched for longer than grace (a partial file is
// kept that long so a restarted daemon can resume it). inUse must report
// every digest an engine has open or a pool of the node uses: those are
// never removed, and GC counts them as used now, so that a model's grace
// starts when it falls out of use, not when it was fetched. An entry is
// checked and moved out of the cache under the cache's lock, which Touch
// takes too: a start that touched it first keeps it.
func (c *Cache) GC(ctx context.Context, inUse func(digest string) bool, grace time.Duration) (Removed, error) {
	var out Removed
	cutoff := c.opts.Now().Add(-grace)
	entries, err := os.ReadDir(filepath.Join(c.root, entriesDir))
	if err != nil {
		return out, fmt.Errorf("model cache: gc: %w", err)
	}
	for _, e := range entries {
		if err := ctx.Err(); err != nil {
			return out, err
		}
		d := e.Name()
		if !modelsource.IsDigest(d) {
			continue
		}
		if inUse(d) {
			if err := c.Touch(d); err != nil {
				return out, fmt.Errorf("model cache: gc: %w", err)
			}
			continue
		}
		n, removed, err := c.removeUnused(d, cutoff)
		if err != nil {
			return out, err
		}
		if removed {
			out.Entries = append(out.Entries, d)
			out.Bytes += n
		}
	}
	partials, err := os.ReadDir(filepath.Join(c.root, tmpDir))
	if err != nil {
		return out, fmt.Errorf("model cache: gc: %w", err)
	}
	for _, e := range partials {
		if e.IsDir() && strings.HasPrefix(e.Name(), "gc-") {
			// An entry a collection moved out and did not finish deleting.
			if err := os.RemoveAll(filepath.Join(c.root, tmpDir, e.Name())); err != nil {
				return out, fmt.Errorf("model cache: gc: %w", err)
			}
			continue
		}
		d, ok := strings.CutSuffix(e.Name(), PartialSuffix)
		if !ok {
			continue
		}
		c.mu.Lock()
		running := c.active[d] > 0
		c.mu.Unlock()
		if running {
			continue
		}
		fi, err := e.Info()
		if err != nil || fi.ModTime().After(cutoff) {
			continue
		}
		if err := os.Remove(filepath.Join(c.root, tmpDir, e.Name())); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return out, fmt.Errorf("model cache: gc: %w", err)
		}
		out.Partials = append(out.Partials, d)
		out.Bytes += fi.Size()
	}
	return out, nil
}

// removeUnused removes entry d when it was last used before cutoff: the
// check and the move out of the cache happen under the lock (Touch takes
// it), the deletion of the moved files after it. It reports the bytes freed.
func (c *Cache) removeUnused(d string, cutoff time.Time) (int64, bool, error) {
	c.mu.Lock()
	used, err := c.lastUsed(d)
	if err != nil || used.After(cutoff) {
		c.mu.Unlock()
		return 0, false, nil
	}
	trash, err := os.MkdirTemp(filepath.Join(c.root, tmpDir), "gc-"+d+"-")
	if err == nil {
		err = os.Rename(c.EntryDir(d), filepath.Join(trash, "entry"))
		if err == nil {
			err = os.Rename(filepath.Join(c.root, metaDir, d), filepath.Join(trash, "meta"))
			if errors.Is(err, fs.ErrNotExist) {
				err = nil
			}
		}
	}
	c.mu.Unlock()
	if err != nil {
		return 0, false, fmt.Errorf("model cache: gc: %w", err)
	}
	n := dirSize(filepath.Join(trash, "entry"))
	if err := os.RemoveAll(trash); err != nil {
		return 0, false, fmt.Errorf("model cache: gc: %w", err)
	}
	return n, true, nil
}

func dirSize(dir string) int64 {
	var n int64
	_ = filepath.WalkDir(dir, func(_ string, e fs.DirEntry, err error) error {
		if err == nil && e.Type().IsRegular() {
			if fi, err := e.Info(); err == nil {
				n += fi.Size()
			}
		}
		return nil
	})
	return n
}
