package schema

import (
	"context"
	"os"
	"path/filepath"
	"testing"
)

// TestLoaderReleasesTheEvaluation checks that what a Loader returns, and
// keeps for the next load, holds no evaluated CUE config: a daemon that
// keeps the config in force must not keep the fleet's evaluation. A
// position asked for afterwards evaluates its group again, and is the same.
func TestLoaderReleasesTheEvaluation(t *testing.T) {
	dir := t.TempDir()
	for name, content := range map[string]string{
		"nodes.cue": "nodes: box: gpus: [{index: 0, vram: 24Gi}]\n",
		"pools.cue": "pools: p: {node: \"box\", engine: \"llamacpp\", model: path: \"/m.gguf\", devices: [0]}\n",
	} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	l := NewLoader()
	d, err := l.Load(context.Background(), dir)
	if err != nil {
		t.Fatal(err)
	}
	pool, node := d.Pools["p"], d.Nodes["box"]
	for what, s := range map[string]Source{"pool p": pool.Source, "node box": node.Source} {
		r := s.resolver
		if r == nil || r.positions == nil {
			t.Fatalf("%s has no position resolver", what)
		}
		r.mu.Lock()
		live, rebuild := r.live, r.rebuild != nil
		r.mu.Unlock()
		if live || !rebuild {
			t.Errorf("%s after the load: evaluation live %v, can evaluate again %v; want released and able to evaluate again", what, live, rebuild)
		}
	}
	if pos := pool.Source.Of("devices"); pos.Line != 1 || filepath.Base(pos.File) != "pools.cue" {
		t.Errorf("devices is at %v after the release, want line 1 of pools.cue", pos)
	}
}
