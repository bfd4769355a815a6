package schema

import (
	"strconv"
	"strings"
	"testing"

	"cuelang.org/go/cue/parser"
)

func parsedFiles(t *testing.T, srcs map[string]string) []parsedFile {
	t.Helper()
	var out []parsedFile
	for name, src := range srcs {
		f, err := parser.ParseFile(name, src)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, parsedFile{name: name, size: len(src), syntax: f})
	}
	return out
}

func TestPartition(t *testing.T) {
	tests := []struct {
		name   string
		files  map[string]string
		groups int
	}{
		{name: "independent files", groups: 2, files: map[string]string{
			"n.cue": `nodes: a: gpus: [{index: 0, vram: 8Gi}]`,
			"p.cue": `pools: x: {node: "a", engine: "llamacpp", model: path: "/m", devices: [0]}`,
		}},
		{name: "a pool written in two files", groups: 1, files: map[string]string{
			"p1.cue": `pools: x: node: "a"`,
			"p2.cue": `pools: x: engine: "llamacpp"`,
		}},
		{name: "shared defaults in another file", groups: 1, files: map[string]string{
			"d.cue": `_defaults: restart: maxBackoff: "2m"`,
			"p.cue": `pools: x: _defaults & {node: "a"}`,
		}},
		{name: "a file that refers to pools", groups: 1, files: map[string]string{
			"a.cue": `pools: x: node: "a"`,
			"b.cue": `pools: y: node: pools.x.node`,
		}},
		{name: "a comprehension at the top", groups: 1, files: map[string]string{
			"a.cue": `for k in ["x", "y"] {pools: (k): node: "a"}`,
			"b.cue": `nodes: a: gpus: [{index: 0, vram: 8Gi}]`,
		}},
		{name: "a hidden field declared in two files", groups: 1, files: map[string]string{
			"a.cue": `_region: "eu"
pools: x: node: "a"`,
			"b.cue": `_region: "us"
pools: y: node: "a"`,
		}},
		{name: "names used as labels only", groups: 2, files: map[string]string{
			"a.cue": `_local: 1
pools: x: {node: "a", port: _local + 8000}`,
			"b.cue": `pools: y: {node: "a", _local: 2}`,
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := partition(parsedFiles(t, tt.files))
			if len(got) != tt.groups {
				t.Fatalf("got %d groups, want %d", len(got), tt.groups)
			}
			n := 0
			for _, g := range got {
				n += len(g)
			}
			if n != len(tt.files) {
				t.Errorf("groups hold %d files, want %d", n, len(tt.files))
			}
		})
	}
}

// TestPartitionedLoadEqualsWhole loads a config big enough to be split and
// checks it reads the same as when evaluated as one instance.
func TestPartitionedLoadEqualsWhole(t *testing.T) {
	var b strings.Builder
	b.WriteString("nodes: a: gpus: [{index: 0, vram: 80Gi}, {index: 1, vram: 80Gi}]\n")
	files := map[string]string{"nodes.cue": b.String()}
	for f := 0; f < 4; f++ {
		var p strings.Builder
		for i := 0; p.Len() < 128<<10; i++ {
			p.WriteString("pools: \"p" + string(rune('a'+f)) + strconv.Itoa(i) + "\": {node: \"a\", engine: \"vllm\", model: path: \"/m\", devices: [0], vram: 1Mi, share: true}\n")
		}
		files["pools"+strconv.Itoa(f)+".cue"] = p.String()
	}
	d, diags, _ := loadConfig(t, files)
	if len(diags) > 0 {
		// Hundreds of sharing pools overcommit nothing (1 MiB each); any problem is a defect.
		t.Fatalf("diagnostics: %v", diags[:min(3, len(diags))])
	}
	if len(d.Pools) < 1000 {
		t.Fatalf("%d pools, want the config's thousands", len(d.Pools))
	}
	for id, p := range d.Pools {
		if p.Engine != EngineVLLM || p.VRAM != 1<<20 || p.Restart.Breaker.Failures != 5 || p.Source.Of("devices").Line == 0 {
			t.Fatalf("pool %s read wrong: %+v (devices at %v)", id, p, p.Source.Of("devices"))
		}
	}
}
