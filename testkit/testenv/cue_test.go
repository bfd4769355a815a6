package testenv

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"

	"github.com/poolmanagerd/pool-managerd/drivers/gpu/sim"
	"github.com/poolmanagerd/pool-managerd/schema"
)

// load writes files (by path in the config directory) and loads them as
// pool-managerd does.
func load(t *testing.T, files map[string]string) *schema.Desired {
	t.Helper()
	dir := t.TempDir()
	for rel, content := range files {
		path := filepath.Join(dir, rel)
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	d, err := schema.Load(context.Background(), dir)
	if err != nil {
		t.Fatalf("load:\n%v\n%v", err, files)
	}
	return d
}

// TestConfigLoads: what Pool, NodeDecl and ConfigFile write loads, as a tree
// and as one file, and says what the description says.
func TestConfigLoads(t *testing.T) {
	gpus := append(sim.DefaultGPUs(), sim.GPUSpec{Name: "NVIDIA Test GPU", MemoryBytes: 16 * sim.GiB}) // no UUID: left out
	node := DeclOf("gpu-01", gpus)
	pools := []Pool{
		{ID: "full", Node: "gpu-01", Model: "/models/a.gguf", Ctx: 8192, Devices: []int{0, 1}, Split: "[0.7, 0.3]",
			Flags: `["--threads", "4"]`, Port: 20001, VRAM: "4Gi", Share: true,
			Env: map[string]string{"B": "2", "A": "1"}, Restart: `initialBackoff: "100ms", jitter: 0`},
		{ID: "bare", Node: "gpu-01", Engine: "tgi", Model: "/models/b", Devices: []int{2}, VRAM: "8Gi"},
		{ID: "fetched", Node: "gpu-01", Source: "http://127.0.0.1:1/m.gguf", SHA256: strings.Repeat("ab", 32), Ctx: 4096, Devices: []int{0}, VRAM: "1Gi", Share: true},
	}
	trees := map[string]map[string]string{
		"tree":     {"nodes/gpu-01.cue": node.CUE(), "pools/full.cue": pools[0].CUE(), "pools/bare.cue": pools[1].CUE(), "pools/fetched.cue": pools[2].CUE()},
		"one file": {"config.cue": ConfigFile(node, pools...)},
	}
	for name, files := range trees {
		t.Run(name, func(t *testing.T) {
			d := load(t, files)
			gotNode := d.Nodes["gpu-01"]
			wantGPUs := []schema.GPU{
				{Index: 0, UUID: gpus[0].UUID, Model: gpus[0].Name, VRAM: 24 << 30},
				{Index: 1, UUID: gpus[1].UUID, Model: gpus[1].Name, VRAM: 12 << 30},
				{Index: 2, Model: gpus[2].Name, VRAM: 16 << 30},
			}
			if gotNode == nil {
				t.Fatalf("no node gpu-01 in %+v", d.Nodes)
			}
			if diff := cmp.Diff(wantGPUs, gotNode.GPUs); diff != "" {
				t.Errorf("GPUs (-want +got):\n%s", diff)
			}
			full, bare := d.Pools["full"], d.Pools["bare"]
			if full == nil || bare == nil {
				t.Fatalf("pools: %v", d.Pools)
			}
			want := schema.Pool{
				ID: "full", Node: "gpu-01", Engine: schema.EngineLlamaCpp, Devices: []int{0, 1}, Split: []float64{0.7, 0.3},
				Flags: []string{"--threads", "4"}, Env: map[string]string{"A": "1", "B": "2"}, Port: 20001, VRAM: 4 << 30, Share: true,
			}
			ignore := cmpopts.IgnoreFields(schema.Pool{}, "Model", "Restart", "Source")
			if diff := cmp.Diff(want, *full, ignore); diff != "" {
				t.Errorf("pool full (-want +got):\n%s", diff)
			}
			if full.Model.Path != "/models/a.gguf" || full.Model.Ctx != 8192 {
				t.Errorf("pool full: model %+v", full.Model)
			}
			if full.Restart.InitialBackoff != 100*time.Millisecond || full.Restart.Jitter != 0 {
				t.Errorf("pool full: restart %+v", full.Restart)
			}
			if m := d.Pools["fetched"].Model; m.Source != "http://127.0.0.1:1/m.gguf" || m.SHA256 != strings.Repeat("ab", 32) || m.Ctx != 4096 || m.Path != "" {
				t.Errorf("pool fetched: model %+v", m)
			}
			if bare.Engine != schema.EngineTGI || bare.VRAM != 8<<30 || bare.Model.Path != "/models/b" || bare.Share || bare.Port != 0 || len(bare.Env) != 0 {
				t.Errorf("pool bare: %+v", *bare)
			}
		})
	}
}

// TestPoolLines: the lines of a pool's file are where Pool.CUE says, so
// that a scenario may name a position (features/validation.feature does).
func TestPoolLines(t *testing.T) {
	p := Pool{ID: "big", Node: "gpu-01", Model: "/models/model.gguf", Ctx: 8192, Devices: []int{0, 1}, Split: "[0.5, 0.5]"}
	lines := strings.Split(p.CUE(), "\n")
	want := map[int]string{
		1: "package poolmanagerd",
		3: `pools: "big": {`,
		4: "\tnode:    \"gpu-01\"",
		5: "\tengine:  \"llamacpp\"",
		6: "\tmodel: {path: \"/models/model.gguf\", ctx: 8192}",
		7: "\tdevices: [0, 1]",
		8: "\tsplit:   [0.5, 0.5]",
		9: "}",
	}
	for n, line := range want {
		if n > len(lines) || lines[n-1] != line {
			t.Errorf("line %d: want %q in\n%s", n, line, p.CUE())
		}
	}
}
