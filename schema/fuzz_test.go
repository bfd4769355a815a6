package schema

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// FuzzLoad writes the fuzzed bytes as one config file next to a valid nodes
// file and loads the directory. Load must not panic, and every diagnostic it
// returns must say something and point into the config directory.
//
//	go test -run '^$' -fuzz FuzzLoad -fuzztime 60s ./schema
func FuzzLoad(f *testing.F) {
	seeds := []string{
		// The valid config.
		testPoolsCUE,
		strings.TrimPrefix(testPoolsCUE, "package poolmanagerd\n"),
		// Invalid configs.
		`pools: coder: {node: "gpu-01", engine: "llama", model: {path: "/m.gguf"}, devices: [0]}`,
		`pools: coder: {node: "gpu-01", engine: "llamacpp", model: {path: "/m.gguf"}, devices: [0], split: [0.7, 0.4]}`,
		`pools: coder: {node: "gpu-01", engine: "llamacpp", model: {path: "/m.gguf"}, devices: [0], split: [2]}`,
		`pools: coder: {node: "gpu-01", engine: "llamacpp", model: {path: "m.gguf", ctx: 1}, devices: [0, 0, 7]}`,
		`pools: coder: {node: "gpu-02", engine: "vllm", model: {path: "/m"}, devices: [0], flags: ["--ctx-size", "4096"]}`,
		`pools: coder: {node: "gpu-01", engine: "llamacpp", model: {path: "/m.gguf"}, devices: [0], gpu: 0}`,
		`pools: coder: {node: "gpu-01", engine: "llamacpp", model: {path: "/m.gguf"}, devices: [0], restart: {initialBackoff: "soon"}}`,
		`pools: coder: {node: "gpu-01", engine: "llamacpp", model: {path: "/m.gguf"}, devices: [0], env: {"1BAD": "x"}, port: 80}`,
		`pools: {a: {node: "gpu-01", engine: "llamacpp", model: path: "/a", devices: [0], share: true}, b: {node: "gpu-01", engine: "tgi", vram: 30Gi, model: path: "/b", devices: [0], share: true}}`,
		`nodes: "gpu-01": gpus: [{index: 0, vram: 48Gi}]`,
		`nodes: "GPU_01": gpus: []`,
		`services: web: {}`,
		`pools: x: {node: `,
		`package other`,
		`package poolmanagerd
import "strings"
pools: coder: {node: "gpu-01", engine: strings.ToLower("LLAMACPP"), model: path: "/m", devices: [0]}`,
		`import "nonexistent.example/pkg"`,
		`pools: coder: engine: _|_`,
		`pools: coder: devices: [for i in [0, 1] {i}]`,
		`x: x + 1`,
		`#Pool: port: 1`,
		`pools: [string]: share: true`,
		// Empty and near-empty input.
		"",
		"\n",
		"// only a comment\n",
		"package poolmanagerd\n",
		// Deep nesting.
		"pools: coder: " + strings.Repeat("{a: ", 500) + "1" + strings.Repeat("}", 500),
		"pools: coder: devices: " + strings.Repeat("[", 300) + strings.Repeat("]", 300),
		strings.Repeat("(", 1000),
		// Huge numbers.
		`pools: coder: {node: "gpu-01", engine: "llamacpp", model: {path: "/m.gguf", ctx: 99999999999999999999999999999}, devices: [99999999999999999999]}`,
		`nodes: "gpu-01": gpus: [{index: 0, vram: 1e400}]`,
		`pools: coder: {node: "gpu-01", engine: "llamacpp", model: path: "/m", devices: [0], vram: 9999999Ei, split: [1e-400]}`,
		`pools: coder: {node: "gpu-01", engine: "llamacpp", model: path: "/m", devices: [-9223372036854775808]}`,
		`pools: coder: {node: "gpu-01", engine: "llamacpp", model: path: "/m", devices: [0], vram: 99999999999999999999}`,
		// Unicode.
		`pools: "cødér": {node: "gpu-01", engine: "llamacpp", model: path: "/models/模型.gguf", devices: [0]}`,
		"pools: coder: {node: \"gpu-01\u202e\", engine: \"llamacpp\", model: path: \"/m\", devices: [0]}",
		"\ufeffpools: {}",
		"pools: \xff\xfe: 1",
		"pools: \"\x00\": 1",
	}
	for _, s := range seeds {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		dir := t.TempDir()
		if err := os.WriteFile(filepath.Join(dir, "nodes.cue"), []byte(testNodesCUE), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, "fuzz.cue"), data, 0o644); err != nil {
			t.Fatal(err)
		}
		d, err := Load(context.Background(), dir)
		var problems []string
		if err == nil {
			if d == nil {
				t.Fatal("Load returned neither a desired state nor an error")
			}
			problems = checkInvariants(d)
		} else {
			if d != nil {
				t.Errorf("Load returned a desired state with its error %v", err)
			}
			var diags Diagnostics
			if !errors.As(err, &diags) {
				t.Fatalf("Load = %v (%T), want Diagnostics", err, err)
			}
			if len(diags) == 0 {
				t.Fatal("Load returned empty Diagnostics as an error")
			}
			for _, dg := range diags {
				if strings.TrimSpace(dg.Message) == "" {
					problems = append(problems, fmt.Sprintf("diagnostic without a message: %#v", dg))
				}
				switch {
				case dg.Pos.File == "":
					problems = append(problems, fmt.Sprintf("diagnostic without a file: %v", dg))
				case dg.Pos.File != dir && !strings.HasPrefix(dg.Pos.File, dir+string(filepath.Separator)):
					problems = append(problems, fmt.Sprintf("diagnostic file %q is not in the config directory %s: %v", dg.Pos.File, dir, dg))
				}
				if dg.Pos.Line < 0 || dg.Pos.Column < 0 || (dg.Pos.Line > 0) != (dg.Pos.Column > 0) {
					problems = append(problems, fmt.Sprintf("diagnostic with a bad line and column: %#v", dg))
				}
			}
		}
		if len(problems) == 0 {
			return
		}
		t.Fatalf("config %q:\n%s", data, strings.Join(problems, "\n"))
	})
}

// checkInvariants lists the ways a desired state that Load accepted breaks
// what the schema and the checks promise.
func checkInvariants(d *Desired) []string {
	var out []string
	bad := func(format string, args ...any) { out = append(out, fmt.Sprintf(format, args...)) }
	if len(d.Nodes) == 0 && len(d.Pools) == 0 {
		bad("no nodes and no pools")
	}
	for name, n := range d.Nodes {
		if n == nil {
			bad("node %s is nil", name)
			continue
		}
		if len(n.GPUs) == 0 {
			bad("node %s has no GPUs", name)
		}
		seen := map[int]bool{}
		for _, g := range n.GPUs {
			if g.Index < 0 || g.VRAM <= 0 {
				bad("node %s: GPU %+v", name, g)
			}
			if seen[g.Index] {
				bad("node %s: GPU index %d twice", name, g.Index)
			}
			seen[g.Index] = true
		}
	}
	for id, p := range d.Pools {
		if p == nil {
			bad("pool %s is nil", id)
			continue
		}
		node, ok := d.Nodes[p.Node]
		if !ok {
			bad("pool %s: node %q not declared", id, p.Node)
		}
		switch p.Engine {
		case EngineLlamaCpp, EngineVLLM, EngineTGI:
		default:
			bad("pool %s: engine %q", id, p.Engine)
		}
		if (p.Engine == EngineVLLM || p.Engine == EngineTGI) && p.VRAM <= 0 {
			bad("pool %s: %s without vram", id, p.Engine)
		}
		if !strings.HasPrefix(p.Model.Path, "/") || p.Model.Ctx < 256 || p.Model.Ctx > 1048576 {
			bad("pool %s: model %+v", id, p.Model)
		}
		if len(p.Devices) == 0 {
			bad("pool %s: no devices", id)
		}
		for _, dev := range p.Devices {
			if _, found := node.GPU(dev); ok && !found {
				bad("pool %s: device %d not on node %s", id, dev, p.Node)
			}
		}
		if len(p.Split) > 0 && len(p.Split) != len(p.Devices) {
			bad("pool %s: split %v for devices %v", id, p.Split, p.Devices)
		}
		if p.VRAM < 0 || (p.Port != 0 && (p.Port < 1024 || p.Port > 65535)) {
			bad("pool %s: vram %d, port %d", id, p.VRAM, p.Port)
		}
		if r := p.Restart; r.Breaker.Failures < 1 || r.Jitter < 0 || r.Jitter > 0.5 {
			bad("pool %s: restart %+v", id, r)
		}
	}
	return out
}

// TestLoadDefectRegressions holds configs that the loader once got wrong,
// found by FuzzLoad and by hand.
func TestLoadDefectRegressions(t *testing.T) {
	tests := []struct {
		name, config string
		// wantPath and wantMsg: a diagnostic at this path whose message contains wantMsg.
		wantPath, wantMsg string
		// notMsg: no diagnostic message contains it.
		notMsg string
	}{
		{
			name:     "device index beyond int64 leaves the pool without devices",
			config:   `pools: coder: {node: "gpu-01", engine: "llamacpp", model: path: "/m.gguf", devices: [99999999999999999999]}`,
			wantPath: "pools.coder.devices[0]",
		},
		{
			name:     "device index beyond int64 is dropped from the mask",
			config:   `pools: coder: {node: "gpu-01", engine: "llamacpp", model: path: "/m.gguf", devices: [0, 99999999999999999999]}`,
			wantPath: "pools.coder.devices[1]",
		},
		{
			name:     "pool vram beyond int64 is read as 0",
			config:   `pools: coder: {node: "gpu-01", engine: "llamacpp", model: path: "/m.gguf", devices: [0], vram: 99999999999999999999}`,
			wantPath: "pools.coder.vram",
		},
		{
			name:     "vllm vram beyond int64 is reported as missing",
			config:   `pools: coder: {node: "gpu-01", engine: "vllm", model: path: "/m", devices: [0], vram: 99999999999999999999}`,
			wantPath: "pools.coder.vram",
			notMsg:   "missing required field vram",
		},
		{
			name:     "GPU vram beyond int64 is read as 0",
			config:   `nodes: "gpu-02": gpus: [{index: 0, vram: 99999999999999999999}]`,
			wantPath: "nodes.gpu-02.gpus[0].vram",
		},
		{
			name:     "GPU index beyond int64 is read as 0",
			config:   `nodes: "gpu-02": gpus: [{index: 99999999999999999999, vram: 1Gi}]`,
			wantPath: "nodes.gpu-02.gpus[0].index",
		},
		{
			name:     "breaker failures beyond int64 is read as 0",
			config:   `pools: coder: {node: "gpu-01", engine: "llamacpp", model: path: "/m.gguf", devices: [0], restart: breaker: failures: 99999999999999999999}`,
			wantPath: "pools.coder.restart.breaker.failures",
		},
		{
			name:     "a bad vram also reports a duplicate GPU index",
			config:   `nodes: "gpu-02": gpus: [{index: 0, vram: 1.5}]`,
			wantPath: "nodes.gpu-02.gpus[0].vram",
			notMsg:   "same index",
		},
		{
			name:    "an unknown import is reported with a truncated message",
			config:  `import "example.com/nope"` + "\n" + `x: 1`,
			wantMsg: "example.com/nope",
		},
		{
			name:   "a value embedded at the top level gives diagnostics without a file",
			config: "pools\n",
		},
		{
			name:     "LLAMA_ARG_KV_OFFLOAD=false turns KV offload off unchecked",
			config:   `pools: coder: {node: "gpu-01", engine: "llamacpp", model: path: "/m.gguf", devices: [0], env: LLAMA_ARG_KV_OFFLOAD: "false"}`,
			wantPath: "pools.coder.env.LLAMA_ARG_KV_OFFLOAD",
			wantMsg:  "CPU",
		},
		{
			name:     "LLAMA_ARG_MMPROJ_OFFLOAD=false turns projector offload off unchecked",
			config:   `pools: coder: {node: "gpu-01", engine: "llamacpp", model: path: "/m.gguf", devices: [0], env: LLAMA_ARG_MMPROJ_OFFLOAD: "0"}`,
			wantPath: "pools.coder.env.LLAMA_ARG_MMPROJ_OFFLOAD",
			wantMsg:  "CPU",
		},
		{
			name:     "a non-concrete env value is dropped without a diagnostic",
			config:   `pools: coder: {node: "gpu-01", engine: "llamacpp", model: path: "/m.gguf", devices: [0], env: A: string}`,
			wantPath: "pools.coder.env.A",
		},
		{
			name:     "a non-concrete split ratio leaks a hidden field in the sum message",
			config:   `pools: coder: {node: "gpu-01", engine: "llamacpp", model: path: "/m.gguf", devices: [0], split: [number]}`,
			wantPath: "pools.coder.split[0]",
			notMsg:   "_splitSum",
		},
		{
			name:     "a bad device also reports a duplicate device",
			config:   `pools: coder: {node: "gpu-01", engine: "llamacpp", model: path: "/m.gguf", devices: [{a: int}]}`,
			wantPath: "pools.coder.devices[0]",
			notMsg:   "lists a GPU twice",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			writeFile(t, dir, "nodes.cue", testNodesCUE)
			writeFile(t, dir, "config.cue", tt.config)
			_, err := Load(context.Background(), dir)
			var diags Diagnostics
			if !errors.As(err, &diags) {
				t.Fatalf("Load = %v, want Diagnostics", err)
			}
			found := false
			for _, d := range diags {
				if d.Pos.File != filepath.Join(dir, "config.cue") && d.Pos.File != filepath.Join(dir, "nodes.cue") {
					t.Errorf("diagnostic not in config.cue or nodes.cue: %v", d)
				}
				if (tt.wantPath == "" || d.Path == tt.wantPath) && strings.Contains(d.Message, tt.wantMsg) {
					found = true
				}
				if tt.notMsg != "" && strings.Contains(d.Message, tt.notMsg) {
					t.Errorf("misleading diagnostic: %v", d)
				}
				if strings.HasSuffix(d.Message, " in ") || strings.HasSuffix(d.Message, " in") {
					t.Errorf("truncated diagnostic: %q", d.Message)
				}
			}
			if !found {
				t.Errorf("no diagnostic at %s containing %q; got:\n%v", tt.wantPath, tt.wantMsg, diags)
			}
		})
	}
}
