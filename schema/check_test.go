package schema

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// loadConfig writes files (name → CUE source) into a temp dir and loads it.
func loadConfig(t *testing.T, files map[string]string) (*Desired, Diagnostics, string) {
	t.Helper()
	dir := t.TempDir()
	for name, src := range files {
		path := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, []byte(src), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	d, err := Load(context.Background(), dir)
	var diags Diagnostics
	if err != nil && !errors.As(err, &diags) {
		t.Fatalf("Load: unexpected error %v", err)
	}
	return d, diags, dir
}

const mixedNode = `nodes: box: gpus: [{index: 0, vram: 24Gi}, {index: 1, vram: 16Gi}, {index: 2, vram: 24Gi}, {index: 3, vram: 12Gi}]
`

func TestSplitRules(t *testing.T) {
	tests := []struct {
		name string
		pool string
		// wantPath and wantMsg describe the one expected diagnostic; empty wantPath means valid.
		wantPath, wantMsg string
	}{
		{name: "24+16 at 0.7/0.3", pool: `engine: "llamacpp", devices: [0, 1], split: [0.7, 0.3]`},
		{name: "24+16 at the cap 0.6/0.4", pool: `engine: "llamacpp", devices: [0, 1], split: [0.6, 0.4]`},
		{name: "24+16 over the cap", pool: `engine: "llamacpp", devices: [0, 1], split: [0.55, 0.45]`,
			wantPath: "pools.p.split[1]", wantMsg: "GPU 1 (16.0 GiB) would take 0.45 of the model, more than its share of the mask's VRAM (16.0 GiB of 40.0 GiB = 0.4)"},
		{name: "smallest GPU listed first", pool: `engine: "llamacpp", devices: [1, 0], split: [0.45, 0.55]`,
			wantPath: "pools.p.split[0]", wantMsg: "the smallest GPU caps the split"},
		{name: "within tolerance of the cap", pool: `engine: "llamacpp", devices: [0, 3], split: [0.667, 0.333]`},
		{name: "three GPUs, smallest caps", pool: `engine: "llamacpp", devices: [0, 2, 3], split: [0.35, 0.35, 0.3]`,
			wantPath: "pools.p.split[2]", wantMsg: "give it at most 0.2"},
		{name: "equal GPUs may split unevenly", pool: `engine: "llamacpp", devices: [0, 2], split: [0.8, 0.2]`},
		{name: "equal GPUs need no split", pool: `engine: "llamacpp", devices: [0, 2]`},
		{name: "mixed GPUs need a split", pool: `engine: "llamacpp", devices: [0, 3]`,
			wantPath: "pools.p.devices", wantMsg: "write split explicitly, for example split: [0.67, 0.33]"},
		{name: "vllm shards evenly", pool: `engine: "vllm", vram: 30Gi, devices: [0, 2], split: [0.6, 0.4]`,
			wantPath: "pools.p.split", wantMsg: "vllm shards a model evenly across its GPUs"},
		{name: "vllm even split written out", pool: `engine: "vllm", vram: 30Gi, devices: [0, 2], split: [0.5, 0.5]`},
		{name: "tgi on mixed GPUs breaks the cap", pool: `engine: "tgi", vram: 20Gi, devices: [0, 3]`,
			wantPath: "pools.p.devices", wantMsg: `tgi shards a model evenly, 0.5 of it on each of the 2 GPUs, and takes no uneven split: GPU 3 (12.0 GiB) is short, its share of the mask's VRAM being 0.333 (12.0 GiB of 36.0 GiB); mask GPUs of one size, use fewer GPUs, or use engine "llamacpp", whose llama-server splits unevenly (for example split: [0.67, 0.33])`},
		{name: "sglang on three mixed GPUs names the smallest", pool: `engine: "sglang", vram: 20Gi, devices: [0, 1, 3]`,
			wantPath: "pools.p.devices", wantMsg: "sglang shards a model evenly, 0.333 of it on each of the 3 GPUs, and takes no uneven split: GPU 3 (12.0 GiB) is short"},
		{name: "vllm even split on mixed GPUs is no way out", pool: `engine: "vllm", vram: 20Gi, devices: [0, 1], split: [0.5, 0.5]`,
			wantPath: "pools.p.split", wantMsg: "vllm shards a model evenly, 0.5 of it on each of the 2 GPUs, and takes no uneven split: GPU 1 (16.0 GiB) is short"},
		{name: "declared vram fits each part", pool: `engine: "llamacpp", vram: 30Gi, devices: [0, 3], split: [0.7, 0.3]`},
		{name: "declared vram part too big", pool: `engine: "llamacpp", vram: 40Gi, devices: [0, 3], split: [0.7, 0.3]`,
			wantPath: "pools.p.vram", wantMsg: "GPU 0 (24.0 GiB) would hold 28.0 GiB of the pool's 40.0 GiB"},
		{name: "device not on node", pool: `engine: "llamacpp", devices: [0, 7], split: [0.5, 0.5]`,
			wantPath: "pools.p.devices[1]", wantMsg: "GPU 7 is not on node box (it has GPUs 0, 1, 2, 3)"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			src := "pools: p: {node: \"box\", model: {path: \"/m.gguf\"}, " + tt.pool + "}\n"
			_, diags, dir := loadConfig(t, map[string]string{"nodes.cue": mixedNode, "pools.cue": src})
			if tt.wantPath == "" {
				if len(diags) != 0 {
					t.Fatalf("want valid, got:\n%v", diags)
				}
				return
			}
			if len(diags) != 1 {
				t.Fatalf("want 1 diagnostic, got %d:\n%v", len(diags), diags)
			}
			d := diags[0]
			if d.Path != tt.wantPath || !strings.Contains(d.Message, tt.wantMsg) {
				t.Errorf("got %s: %s\nwant %s: ...%s...", d.Path, d.Message, tt.wantPath, tt.wantMsg)
			}
			if d.Pos.File != filepath.Join(dir, "pools.cue") || d.Pos.Line != 1 || d.Pos.Column == 0 {
				t.Errorf("position %v, want pools.cue line 1 with a column", d.Pos)
			}
		})
	}
}

func TestSharing(t *testing.T) {
	node := `nodes: box: gpus: [{index: 0, vram: 24Gi}, {index: 1, vram: 24Gi}]
`
	pool := func(id, extra string) string {
		return "pools: " + id + ": {node: \"box\", engine: \"llamacpp\", model: path: \"/m.gguf\", devices: [0], " + extra + "}\n"
	}
	tests := []struct {
		name  string
		pools string
		// want maps each expected diagnostic's path to a substring of its message.
		want map[string]string
	}{
		{name: "both share and fit", pools: pool("a", "share: true, vram: 10Gi") + pool("b", "share: true, vram: 14Gi")},
		{name: "one does not share", pools: pool("a", "share: true, vram: 10Gi") + pool("b", "vram: 10Gi"),
			want: map[string]string{"pools.b.devices[0]": "GPU 0 of node box is also in pool a; a GPU belongs to one pool unless every pool on it sets share: true"}},
		{name: "neither shares", pools: pool("a", "") + pool("b", ""),
			want: map[string]string{"pools.a.devices[0]": "also in pool b", "pools.b.devices[0]": "also in pool a"}},
		{name: "sharing without vram", pools: pool("a", "share: true") + pool("b", "share: true, vram: 4Gi"),
			want: map[string]string{"pools.a.devices[0]": "pools that share a GPU declare vram"}},
		{name: "overcommitted", pools: pool("a", "share: true, vram: 16Gi") + pool("b", "share: true, vram: 12Gi"),
			want: map[string]string{"pools.a.devices[0]": "28.0 GiB in all does not fit", "pools.b.devices[0]": "28.0 GiB in all does not fit"}},
		{name: "same port", pools: pool("a", "port: 8081") + strings.Replace(pool("b", "port: 8081"), "[0]", "[1]", 1),
			want: map[string]string{"pools.b.port": "port 8081 is already used by pool a on node box"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, diags, _ := loadConfig(t, map[string]string{"nodes.cue": node, "pools.cue": tt.pools})
			if len(diags) != len(tt.want) {
				t.Fatalf("want %d diagnostics, got:\n%v", len(tt.want), diags)
			}
			for _, d := range diags {
				if want, ok := tt.want[d.Path]; !ok || !strings.Contains(d.Message, want) {
					t.Errorf("unexpected %s: %s (want %q)", d.Path, d.Message, want)
				}
			}
		})
	}
}

func TestNodeMissing(t *testing.T) {
	_, diags, _ := loadConfig(t, map[string]string{
		"n.cue": "nodes: a: gpus: [{index: 0, vram: 8Gi}]\n",
		"p.cue": "pools: p: {node: \"b\", engine: \"llamacpp\", model: path: \"/m\", devices: [0]}\n",
	})
	if len(diags) != 1 || diags[0].Path != "pools.p.node" || !strings.Contains(diags[0].Message, `node "b" is not declared under nodes (declared: a)`) {
		t.Fatalf("got %v", diags)
	}
	if diags[0].Pos.Line != 1 || diags[0].Pos.Column != 18 {
		t.Errorf("position %v, want line 1 column 18 (the node value)", diags[0].Pos)
	}
}

func TestRestartDurations(t *testing.T) {
	tests := []struct {
		name, restart     string
		wantPath, wantMsg string
	}{
		{name: "defaults"},
		{name: "negative", restart: `initialBackoff: "-1s"`, wantPath: "pools.p.restart.initialBackoff", wantMsg: "must be a positive duration, not -1s"},
		{name: "zero window", restart: `breaker: window: "0s"`, wantPath: "pools.p.restart.breaker.window", wantMsg: "must be a positive duration"},
		{name: "cap below start", restart: `initialBackoff: "2m", maxBackoff: "30s"`, wantPath: "pools.p.restart.maxBackoff", wantMsg: "is below restart.initialBackoff"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			src := "pools: p: {node: \"box\", engine: \"llamacpp\", model: path: \"/m.gguf\", devices: [0], restart: {" + tt.restart + "}}\n"
			_, diags, _ := loadConfig(t, map[string]string{"nodes.cue": mixedNode, "pools.cue": src})
			if tt.wantPath == "" {
				if len(diags) != 0 {
					t.Fatalf("want valid, got:\n%v", diags)
				}
				return
			}
			if len(diags) != 1 || diags[0].Path != tt.wantPath || !strings.Contains(diags[0].Message, tt.wantMsg) {
				t.Fatalf("got %v, want one diagnostic %s: ...%s...", diags, tt.wantPath, tt.wantMsg)
			}
			if diags[0].Pos.Line != 1 {
				t.Errorf("position %v, want line 1", diags[0].Pos)
			}
		})
	}
}
