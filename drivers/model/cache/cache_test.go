package cache_test

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/poolmanagerd/pool-managerd/drivers/model/cache"
	"github.com/poolmanagerd/pool-managerd/schema/modelsource"
)

func digestOf(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

// clock is a settable test clock.
type clock struct{ t time.Time }

func (c *clock) now() time.Time { return c.t }

func open(t *testing.T, opts cache.Options) (*cache.Cache, *clock) {
	t.Helper()
	clk := &clock{t: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}
	if opts.Now == nil {
		opts.Now = clk.now
	}
	c, err := cache.Open(t.TempDir(), opts)
	if err != nil {
		t.Fatal(err)
	}
	return c, clk
}

// put writes data as a partial download and commits it as entry digest/name.
func put(t *testing.T, c *cache.Cache, name string, data []byte) (digest, path string) {
	t.Helper()
	digest = digestOf(data)
	if err := os.WriteFile(c.PartialPath(digest), data, 0o644); err != nil {
		t.Fatal(err)
	}
	p, err := c.Commit(c.PartialPath(digest), digest, name, digest)
	if err != nil {
		t.Fatalf("Commit: %v", err)
	}
	return digest, p
}

func TestCommitLookup(t *testing.T) {
	c, _ := open(t, cache.Options{})
	data := []byte("a model")
	d, p := put(t, c, "m.gguf", data)
	if want := filepath.Join(c.Root(), "sha256", d, "m.gguf"); p != want {
		t.Errorf("Commit path = %s; want %s", p, want)
	}
	if _, err := os.Stat(c.PartialPath(d)); !os.IsNotExist(err) {
		t.Errorf("partial file still there after Commit: %v", err)
	}
	got, verified, err := c.Lookup(d, "m.gguf")
	if err != nil || got != p || !verified {
		t.Fatalf("Lookup = %s, %v, %v; want %s, true", got, verified, err, p)
	}
	// Another name or digest is absent.
	if got, verified, err := c.Lookup(d, "other.gguf"); got != "" || verified || err != nil {
		t.Errorf("Lookup of a missing name = %q, %v, %v", got, verified, err)
	}
	if _, _, err := c.Lookup("nothex", "m.gguf"); err == nil {
		t.Error("Lookup with an invalid digest: no error")
	}
	if _, _, err := c.Lookup(d, "../x"); err == nil {
		t.Error("Lookup with a path out of the entry: no error")
	}

	// A changed file (new mtime) is no longer trusted until verified again.
	later := time.Now().Add(time.Hour)
	if err := os.Chtimes(p, later, later); err != nil {
		t.Fatal(err)
	}
	if _, verified, _ := c.Lookup(d, "m.gguf"); verified {
		t.Fatal("Lookup trusts a record whose mtime no longer matches")
	}
	ok, err := c.Verify(context.Background(), d, "m.gguf", d)
	if err != nil || !ok {
		t.Fatalf("Verify = %v, %v; want true", ok, err)
	}
	if _, verified, _ := c.Lookup(d, "m.gguf"); !verified {
		t.Error("Lookup after Verify: not verified")
	}
	// Verify of a wrong digest says no and leaves the record alone.
	if ok, err := c.Verify(context.Background(), d, "m.gguf", strings.Repeat("0", 64)); ok || err != nil {
		t.Errorf("Verify with a wrong digest = %v, %v; want false, nil", ok, err)
	}
}

func TestLookupManifest(t *testing.T) {
	c, _ := open(t, cache.Options{})
	files := map[string][]byte{"config.json": []byte("{}"), "w/model.safetensors": []byte("weights")}
	var m modelsource.Manifest
	for p, b := range files {
		m.Files = append(m.Files, modelsource.File{Path: p, SHA256: digestOf(b), Size: int64(len(b))})
	}
	md := m.Digest()
	if _, verified, err := c.LookupManifest(m); verified || err != nil {
		t.Fatalf("LookupManifest of an empty cache = %v, %v", verified, err)
	}
	for i, f := range m.Files {
		if err := os.WriteFile(c.PartialPath(f.SHA256), files[f.Path], 0o644); err != nil {
			t.Fatal(err)
		}
		if _, err := c.Commit(c.PartialPath(f.SHA256), md, f.Path, f.SHA256); err != nil {
			t.Fatal(err)
		}
		dir, verified, err := c.LookupManifest(m)
		if err != nil || dir != c.EntryDir(md) || verified != (i == len(m.Files)-1) {
			t.Fatalf("after %d of %d files: LookupManifest = %s, %v, %v", i+1, len(m.Files), dir, verified, err)
		}
	}
	// The model directory holds the model's files and nothing else.
	var got []string
	_ = filepath.WalkDir(c.EntryDir(md), func(p string, e os.DirEntry, err error) error {
		if err == nil && !e.IsDir() {
			rel, _ := filepath.Rel(c.EntryDir(md), p)
			got = append(got, filepath.ToSlash(rel))
		}
		return nil
	})
	slices.Sort(got)
	if want := []string{"config.json", "w/model.safetensors"}; !slices.Equal(got, want) {
		t.Errorf("model directory holds %v; want %v", got, want)
	}
}

func TestReserve(t *testing.T) {
	c, _ := open(t, cache.Options{MaxSize: 100})
	put(t, c, "a", make([]byte, 30))
	size, err := c.Size()
	if err != nil || size != 30 {
		t.Fatalf("Size = %d, %v; want 30", size, err)
	}
	release, err := c.Reserve(50)
	if err != nil {
		t.Fatalf("Reserve(50) with 70 free: %v", err)
	}
	_, err = c.Reserve(30)
	var de *cache.DiskError
	if !errors.As(err, &de) || de.Need != 30 || de.Free != 20 || !de.Limited {
		t.Fatalf("Reserve(30) with 20 left = %v; want a DiskError need 30 free 20 limited", err)
	}
	release()
	release() // twice is harmless
	if r, err := c.Reserve(70); err != nil {
		t.Errorf("Reserve(70) after the release: %v", err)
	} else {
		r()
	}
	// A partial download counts in the size.
	if err := os.WriteFile(c.PartialPath(strings.Repeat("a", 64)), make([]byte, 10), 0o644); err != nil {
		t.Fatal(err)
	}
	if size, _ := c.Size(); size != 40 {
		t.Errorf("Size with a partial download = %d; want 40", size)
	}

	// Without a limit, the file system's free space is the bound.
	unlimited, _ := open(t, cache.Options{})
	free, limited, err := unlimited.Free()
	if err != nil || free <= 0 || limited {
		t.Fatalf("Free = %d, %v, %v", free, limited, err)
	}
	if _, err := unlimited.Reserve(free + 1); !errors.As(err, &de) || de.Limited {
		t.Errorf("Reserve(free+1) = %v; want a DiskError of the file system", err)
	}
}

func TestGC(t *testing.T) {
	const grace = 24 * time.Hour
	c, clk := open(t, cache.Options{})
	ctx := context.Background()
	inUseOld, _ := put(t, c, "in-use-old", []byte("1"))
	unusedOld, _ := put(t, c, "unused-old", []byte("2"))
	clk.t = clk.t.Add(2 * grace)
	unusedNew, _ := put(t, c, "unused-new", []byte("3"))
	// Partial downloads: one running, one abandoned, both with an old mtime.
	running, stale := strings.Repeat("a", 64), strings.Repeat("b", 64)
	for _, d := range []string{running, stale} {
		if err := os.WriteFile(c.PartialPath(d), []byte("part"), 0o644); err != nil {
			t.Fatal(err)
		}
		old := time.Now().Add(-2 * grace)
		if err := os.Chtimes(c.PartialPath(d), old, old); err != nil {
			t.Fatal(err)
		}
	}
	done := c.Active(running)
	defer done()
	// Pin the clock to real time for the partials' mtimes.
	clk.t = time.Now().Add(time.Minute)
	if err := c.Touch(unusedNew); err != nil {
		t.Fatal(err)
	}

	removed, err := c.GC(ctx, func(d string) bool { return d == inUseOld }, grace)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(removed.Entries, []string{unusedOld}) {
		t.Errorf("GC removed entries %v; want only %s", removed.Entries, unusedOld)
	}
	if !slices.Equal(removed.Partials, []string{stale}) {
		t.Errorf("GC removed partials %v; want only %s", removed.Partials, stale)
	}
	for _, tc := range []struct {
		digest, name string
		want         bool
	}{{inUseOld, "in-use-old", true}, {unusedOld, "unused-old", false}, {unusedNew, "unused-new", true}} {
		p, _, _ := c.Lookup(tc.digest, tc.name)
		if (p != "") != tc.want {
			t.Errorf("%s present = %v after GC; want %v", tc.name, p != "", tc.want)
		}
	}
	if _, err := os.Stat(c.PartialPath(running)); err != nil {
		t.Errorf("GC removed the partial file of a running download: %v", err)
	}
	if _, err := os.Stat(c.PartialPath(stale)); !os.IsNotExist(err) {
		t.Errorf("stale partial file still there: %v", err)
	}
}

// A model's grace starts when it falls out of use, not when it was fetched:
// an engine that ran on it for two days and whose pool was then removed
// leaves it in the cache for the whole grace.
func TestGCGraceFromRelease(t *testing.T) {
	const grace = 24 * time.Hour
	c, clk := open(t, cache.Options{})
	ctx := context.Background()
	d, _ := put(t, c, "m.gguf", []byte("model"))
	used := func(string) bool { return true }
	for range 48 { // a resync an hour, the model in use
		clk.t = clk.t.Add(time.Hour)
		if removed, err := c.GC(ctx, used, grace); err != nil || len(removed.Entries) != 0 {
			t.Fatalf("GC while in use: removed %v, %v", removed.Entries, err)
		}
	}
	unused := func(string) bool { return false }
	clk.t = clk.t.Add(30 * time.Second)
	if removed, err := c.GC(ctx, unused, grace); err != nil || len(removed.Entries) != 0 {
		t.Fatalf("GC 30 s after the model fell out of use removed %v (%v); want it kept for the grace", removed.Entries, err)
	}
	clk.t = clk.t.Add(grace + time.Minute)
	if removed, err := c.GC(ctx, unused, grace); err != nil || !slices.Equal(removed.Entries, []string{d}) {
		t.Fatalf("GC a grace after the model fell out of use removed %v (%v); want %s", removed.Entries, err, d)
	}
	if p, _, _ := c.Lookup(d, "m.gguf"); p != "" {
		t.Errorf("the removed model is still at %s", p)
	}
	entries, err := os.ReadDir(filepath.Join(c.Root(), "tmp"))
	if err != nil || len(entries) != 0 {
		t.Errorf("the cache's tmp holds %v after GC (%v); want nothing left of the removed entry", entries, err)
	}
}

// A start that touches an old, unused model before a collection gets to it
// keeps it: the collection checks the last use again under the cache's lock.
func TestGCSparesAModelTouchedMeanwhile(t *testing.T) {
	const grace = time.Hour
	c, clk := open(t, cache.Options{})
	d, _ := put(t, c, "m.gguf", []byte("model"))
	clk.t = clk.t.Add(2 * grace)
	// The collection's view of what is in use was taken before a new config
	// brought the model back; the start touches it before the removal.
	inUse := func(digest string) bool {
		if err := c.Touch(digest); err != nil { // the start, between GC's listing and its check
			t.Fatal(err)
		}
		return false
	}
	removed, err := c.GC(context.Background(), inUse, grace)
	if err != nil || len(removed.Entries) != 0 {
		t.Fatalf("GC removed %v (%v) after a start touched it; want it kept", removed.Entries, err)
	}
	if p, _, _ := c.Lookup(d, "m.gguf"); p == "" {
		t.Error("the model a start touched is gone")
	}
}
