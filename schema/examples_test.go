package schema

import (
	"context"
	"path/filepath"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
)

const gi = int64(1) << 30

// schemaDefaultRestart is the restart policy a pool gets when it writes none:
// the schema's defaults.
var schemaDefaultRestart = RestartPolicy{
	InitialBackoff: time.Second,
	MaxBackoff:     time.Minute,
	Jitter:         0.1,
	ResetAfter:     5 * time.Minute,
	StartupTimeout: 10 * time.Minute,
	DrainTimeout:   30 * time.Second,
	StopGrace:      10 * time.Second,
	Breaker:        Breaker{Failures: 5, Window: 10 * time.Minute, Cooldown: 5 * time.Minute},
}

// withRestart returns the default restart policy changed by fn.
func withRestart(fn func(r *RestartPolicy)) RestartPolicy {
	r := schemaDefaultRestart
	fn(&r)
	return r
}

// poolSummary is what TestExamples checks of each pool of the larger examples.
type poolSummary struct {
	Node    string
	Engine  Engine
	Ctx     int
	Devices []int
	Split   []float64
	VRAM    int64
	Port    int
	Share   bool
	Restart RestartPolicy
}

func summarize(d *Desired) map[string]poolSummary {
	out := map[string]poolSummary{}
	for id, p := range d.Pools {
		out[id] = poolSummary{Node: p.Node, Engine: p.Engine, Ctx: p.Model.Ctx, Devices: p.Devices, Split: p.Split,
			VRAM: p.VRAM, Port: p.Port, Share: p.Share, Restart: p.Restart}
	}
	return out
}

// exampleGPUSizes maps each node to its GPUs' sizes, in order.
func exampleGPUSizes(d *Desired) map[string][]int64 {
	out := map[string][]int64{}
	for name, n := range d.Nodes {
		sizes := []int64{}
		for _, g := range n.GPUs {
			sizes = append(sizes, g.VRAM)
		}
		out[name] = sizes
	}
	return out
}

var ignoreSource = cmpopts.IgnoreTypes(Source{})

// exampleChecks checks the decoded desired state of each example; every
// directory under examples/ has an entry.
var exampleChecks = map[string]func(t *testing.T, d *Desired){
	"single-gpu": func(t *testing.T, d *Desired) {
		want := &Desired{
			Nodes: map[string]*Node{
				"workstation": {Name: "workstation", GPUs: []GPU{
					{Index: 0, UUID: "GPU-5f3c9a1e-7b2d-4e8f-a6c1-0d9e8b7a6f54", Model: "NVIDIA GeForce RTX 4090", VRAM: 24 * gi},
				}},
			},
			Pools: map[string]*Pool{
				"coder": {
					ID: "coder", Node: "workstation", Engine: EngineLlamaCpp,
					Model:   Model{Path: "/models/qwen2.5-coder-7b-instruct-q5_k_m.gguf", Ctx: 32768},
					Devices: []int{0},
					Flags:   []string{"--parallel", "4", "--flash-attn", "on", "--jinja"},
					Port:    8081, VRAM: 16 * gi, Share: true,
					Restart: schemaDefaultRestart,
				},
				"embed": {
					ID: "embed", Node: "workstation", Engine: EngineLlamaCpp,
					Model:   Model{Path: "/models/nomic-embed-text-v1.5.f16.gguf", Ctx: 4096},
					Devices: []int{0},
					Flags:   []string{"--embeddings", "--pooling", "mean"},
					VRAM:    3 * gi, Share: true,
					Restart: schemaDefaultRestart,
				},
			},
			Files: []string{filepath.Join("nodes", "workstation.cue"), filepath.Join("pools", "coder.cue"), filepath.Join("pools", "embed.cue")},
		}
		if diff := cmp.Diff(want, d, ignoreSource); diff != "" {
			t.Errorf("desired state differs (-want +got):\n%s", diff)
		}
	},
	"mixed-24-12": func(t *testing.T, d *Desired) {
		want := &Desired{
			Nodes: map[string]*Node{
				"gpu-01": {Name: "gpu-01", GPUs: []GPU{
					{Index: 0, UUID: "GPU-8a1f7c3e-52d4-4b9a-9e61-3f0c2d7b5a18", Model: "NVIDIA GeForce RTX 3090", VRAM: 25769803776},
					{Index: 1, UUID: "GPU-c47e2b90-1d6a-4f35-8b2e-7a9d0e4f6c21", Model: "NVIDIA GeForce RTX 3060", VRAM: 12884901888},
				}},
			},
			Pools: map[string]*Pool{
				"llama70b": {
					ID: "llama70b", Node: "gpu-01", Engine: EngineLlamaCpp,
					Model:   Model{Path: "/models/Llama-3.3-70B-Instruct-IQ2_XS.gguf", Ctx: 8192},
					Devices: []int{0, 1},
					Split:   []float64{0.67, 0.33},
					Flags:   []string{"--parallel", "4", "--metrics", "--flash-attn", "on"},
					Env:     map[string]string{"LLAMA_ARG_CACHE_TYPE_K": "q8_0"},
					Port:    8080,
					VRAM:    28 * gi,
					Share:   true,
					Restart: RestartPolicy{
						InitialBackoff: 5 * time.Second,
						MaxBackoff:     5 * time.Minute,
						Jitter:         0.1, // not written: the schema's default
						ResetAfter:     5 * time.Minute,
						StartupTimeout: 20 * time.Minute,
						DrainTimeout:   2 * time.Minute,
						StopGrace:      30 * time.Second,
						Breaker:        Breaker{Failures: 3, Window: 30 * time.Minute, Cooldown: 15 * time.Minute},
					},
				},
				"coder": {
					ID: "coder", Node: "gpu-01", Engine: EngineLlamaCpp,
					// ctx is not written: the schema's default.
					Model:   Model{Path: "/models/qwen2.5-coder-3b-instruct-q6_k.gguf", Ctx: 4096},
					Devices: []int{0},
					VRAM:    4 * gi,
					Share:   true,
					Restart: schemaDefaultRestart,
				},
			},
			Files: []string{
				filepath.Join("nodes", "gpu-01.cue"),
				filepath.Join("pools", "coder.cue"),
				filepath.Join("pools", "llama70b.cue"),
			},
		}
		if diff := cmp.Diff(want, d, ignoreSource); diff != "" {
			t.Errorf("desired state differs (-want +got):\n%s", diff)
		}
		// Spelled out, the defaults the brief names.
		coder := d.Pools["coder"]
		if coder == nil {
			return
		}
		if coder.Restart.InitialBackoff != time.Second || coder.Restart.Breaker.Failures != 5 || coder.Model.Ctx != 4096 {
			t.Errorf("coder does not get the schema's defaults: %+v, ctx %d", coder.Restart, coder.Model.Ctx)
		}
	},
	"fleet": func(t *testing.T, d *Desired) {
		a100s := make([]int64, 8)
		for i := range a100s {
			a100s[i] = 80 * gi
		}
		wantGPUs := map[string][]int64{
			"dgx-01":   a100s,
			"rtx-01":   {24 * gi, 24 * gi, 24 * gi, 24 * gi},
			"mixed-01": {48 * gi, 16 * gi},
			"h100-01":  {80 * gi, 80 * gi},
		}
		if diff := cmp.Diff(wantGPUs, exampleGPUSizes(d)); diff != "" {
			t.Errorf("GPU sizes differ (-want +got):\n%s", diff)
		}
		for i, g := range d.Nodes["dgx-01"].GPUs {
			if g.Index != i || g.Model != "NVIDIA A100-SXM4-80GB" || g.UUID != "" {
				t.Errorf("dgx-01 GPU %d is %+v", i, g)
			}
		}
		want := map[string]poolSummary{
			"llama70b-chat": {Node: "dgx-01", Engine: EngineVLLM, Ctx: 32768, Devices: []int{0, 1, 2, 3}, VRAM: 280 * gi, Port: 8000,
				Restart: withRestart(func(r *RestartPolicy) { r.StartupTimeout = 30 * time.Minute })},
			"qwen32b": {Node: "dgx-01", Engine: EngineVLLM, Ctx: 16384, Devices: []int{4, 5}, VRAM: 136 * gi,
				Restart: schemaDefaultRestart},
			"mixtral-tgi": {Node: "dgx-01", Engine: EngineTGI, Ctx: 16384, Devices: []int{6, 7}, VRAM: 120 * gi,
				Restart: withRestart(func(r *RestartPolicy) { r.StartupTimeout = 20 * time.Minute; r.Breaker.Failures = 3 })},
			"qwen-coder-32b": {Node: "rtx-01", Engine: EngineLlamaCpp, Ctx: 32768, Devices: []int{0, 1}, Port: 8080,
				Restart: schemaDefaultRestart},
			"mistral-small": {Node: "rtx-01", Engine: EngineVLLM, Ctx: 16384, Devices: []int{2, 3}, VRAM: 42 * gi,
				Restart: schemaDefaultRestart},
			"llama70b-q4": {Node: "mixed-01", Engine: EngineLlamaCpp, Ctx: 16384, Devices: []int{0, 1}, Split: []float64{0.75, 0.25},
				VRAM: 56 * gi, Share: true, Restart: schemaDefaultRestart},
			"qwen72b-sglang": {Node: "h100-01", Engine: EngineSGLang, Ctx: 32768, Devices: []int{0, 1}, VRAM: 144 * gi, Port: 30000,
				Restart: withRestart(func(r *RestartPolicy) { r.StartupTimeout = 20 * time.Minute })},
			"bge-embed": {Node: "mixed-01", Engine: EngineLlamaCpp, Ctx: 8192, Devices: []int{0}, VRAM: 4 * gi, Share: true,
				Restart: schemaDefaultRestart},
		}
		if diff := cmp.Diff(want, summarize(d)); diff != "" {
			t.Errorf("pools differ (-want +got):\n%s", diff)
		}
		if p := d.Pools["qwen32b"]; p != nil {
			if diff := cmp.Diff(map[string]string{"VLLM_LOGGING_LEVEL": "WARNING"}, p.Env); diff != "" {
				t.Errorf("qwen32b env differs (-want +got):\n%s", diff)
			}
		}
	},
}

// TestExamples loads every example config repository and checks what it decodes to.
func TestExamples(t *testing.T) {
	dirs := exampleDirs(t)
	for _, dir := range dirs {
		name := filepath.Base(dir)
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			d, err := Load(context.Background(), filepath.Join(moduleRoot, dir))
			if err != nil {
				t.Fatalf("Load(%s): %v", dir, err)
			}
			check, ok := exampleChecks[name]
			if !ok {
				t.Fatalf("examples/%s has no entry in exampleChecks: say what it must decode to", name)
			}
			check(t, d)
		})
	}
	for name := range exampleChecks {
		found := false
		for _, dir := range dirs {
			found = found || filepath.Base(dir) == name
		}
		if !found {
			t.Errorf("exampleChecks has %s, but examples/%s does not exist", name, name)
		}
	}
}
