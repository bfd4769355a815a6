package schema

import (
	"runtime"
	"testing"
	"weak"
)

// TestReleaseSourcesFreesTheEvaluation checks that a Desired's Sources hold
// the evaluated config until ReleaseSources, and nothing of it after: a
// daemon that keeps the config in force must not keep the fleet's evaluation.
func TestReleaseSourcesFreesTheEvaluation(t *testing.T) {
	d, diags, _ := loadConfig(t, map[string]string{
		"nodes.cue": "nodes: box: gpus: [{index: 0, vram: 24Gi}]\n",
		"pools.cue": "pools: p: {node: \"box\", engine: \"llamacpp\", model: path: \"/m.gguf\", devices: [0]}\n",
	})
	if len(diags) > 0 {
		t.Fatalf("diagnostics: %v", diags)
	}
	pool, node := d.Pools["p"], d.Nodes["box"]
	if pool.Source.resolver == nil || node.Source.resolver == nil {
		t.Fatal("the loaded pool and node have no position resolver")
	}
	if pos := pool.Source.Of("devices"); pos.Line != 1 {
		t.Fatalf("before the release, devices is at %v, want line 1 of pools.cue", pos)
	}
	evaluation := weak.Make(pool.Source.resolver)
	runtime.GC()
	if evaluation.Value() == nil {
		t.Fatal("the evaluation was collected while the Sources still hold it")
	}

	d.ReleaseSources()
	runtime.GC()
	if evaluation.Value() != nil {
		t.Error("after ReleaseSources, something still holds the evaluated config")
	}
	if pos := pool.Source.Of("devices"); pos != (Pos{}) {
		t.Errorf("after the release, devices is at %v, want the zero Pos", pos)
	}
	if pos := node.Source.Of("gpus[0].index"); pos != (Pos{}) {
		t.Errorf("after the release, the node's gpus[0].index is at %v, want the zero Pos", pos)
	}
	runtime.KeepAlive(d)
}
