package benchgen_test

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"testing"

	"github.com/poolmanagerd/pool-managerd/schema"
	"github.com/poolmanagerd/pool-managerd/testkit/benchgen"
)

func TestWriteIsValid(t *testing.T) {
	for _, tc := range []struct{ pools, files int }{
		{100, 10},
		{37, 4}, // a partly filled last node and uneven files
		{1, 1},
	} {
		dir := t.TempDir()
		if err := benchgen.Write(dir, tc.pools, tc.files); err != nil {
			t.Fatal(err)
		}
		d, err := schema.Load(context.Background(), dir)
		if err != nil {
			t.Fatalf("%d pools in %d files: schema.Load: %v", tc.pools, tc.files, err)
		}
		if got := len(d.Pools); got != tc.pools {
			t.Errorf("%d pools in %d files: loaded %d pools", tc.pools, tc.files, got)
		}
		if got, want := len(d.Nodes), benchgen.NodeCount(tc.pools); got != want {
			t.Errorf("%d pools in %d files: loaded %d nodes, want %d", tc.pools, tc.files, got, want)
		}
		if got, want := d.GPUCount(), benchgen.NodeCount(tc.pools)*benchgen.GPUsPerNode; got != want {
			t.Errorf("%d pools in %d files: loaded %d GPUs, want %d", tc.pools, tc.files, got, want)
		}
		if got, want := len(d.Files), tc.files+benchgen.NodeFileCount(tc.pools); got != want {
			t.Errorf("%d pools in %d files: loaded %d files, want %d", tc.pools, tc.files, got, want)
		}
		pools, _ := filepath.Glob(filepath.Join(dir, "pools", "*.cue"))
		if len(pools) != tc.files {
			t.Errorf("%d pools in %d files: wrote %d pool files", tc.pools, tc.files, len(pools))
		}
	}
}

func TestWriteMixesShapes(t *testing.T) {
	dir := t.TempDir()
	if err := benchgen.Write(dir, 100, 10); err != nil {
		t.Fatal(err)
	}
	d, err := schema.Load(context.Background(), dir)
	if err != nil {
		t.Fatal(err)
	}
	engines := map[schema.Engine]int{}
	var split, shared, flagged, mixed int
	for _, p := range d.Pools {
		engines[p.Engine]++
		if len(p.Split) > 0 {
			split++
		}
		if p.Share {
			shared++
		}
		if len(p.Flags) > 0 {
			flagged++
		}
		node := d.Nodes[p.Node]
		sizes := map[int64]bool{}
		for _, idx := range p.Devices {
			g, _ := node.GPU(idx)
			sizes[g.VRAM] = true
		}
		if len(sizes) > 1 {
			mixed++
		}
	}
	for _, e := range []schema.Engine{schema.EngineLlamaCpp, schema.EngineVLLM, schema.EngineTGI} {
		if engines[e] == 0 {
			t.Errorf("no %s pools", e)
		}
	}
	if split == 0 || shared == 0 || flagged == 0 || mixed == 0 {
		t.Errorf("want pools with split, share, flags and mixed masks; got %d, %d, %d, %d", split, shared, flagged, mixed)
	}
}

func TestWriteIsDeterministic(t *testing.T) {
	a, b := t.TempDir(), t.TempDir()
	for _, dir := range []string{a, b} {
		if err := benchgen.Write(dir, 250, 7); err != nil {
			t.Fatal(err)
		}
	}
	err := filepath.WalkDir(a, func(path string, e os.DirEntry, err error) error {
		if err != nil || e.IsDir() {
			return err
		}
		rel, _ := filepath.Rel(a, path)
		x, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		y, err := os.ReadFile(filepath.Join(b, rel))
		if err != nil {
			return err
		}
		if !bytes.Equal(x, y) {
			t.Errorf("%s differs between two runs", rel)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

func TestWriteRejectsBadCounts(t *testing.T) {
	for _, tc := range []struct{ pools, files int }{{0, 1}, {10, 0}, {5, 6}} {
		if err := benchgen.Write(t.TempDir(), tc.pools, tc.files); err == nil {
			t.Errorf("Write(%d pools, %d files): no error", tc.pools, tc.files)
		}
	}
}

func TestWriteRefusesNonEmptyDir(t *testing.T) {
	dir := t.TempDir()
	if err := benchgen.Write(dir, 10, 1); err != nil {
		t.Fatal(err)
	}
	if err := benchgen.Write(dir, 10, 1); err == nil {
		t.Error("second Write into the same dir: no error")
	}
}
