package preset

import (
	"slices"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/poolmanagerd/pool-managerd/drivers/engine/caps"
	"github.com/poolmanagerd/pool-managerd/schema"
)

// TestShardedArgs pins what vLLM, TGI and SGLang are told beyond the model,
// port and shard count: the memory share derived from vram and a shutdown
// within the stop grace, and when each is left out.
func TestShardedArgs(t *testing.T) {
	bins, _ := fakeBinaries(t)
	const gi = uint64(1) << 30
	pool := func(e schema.Engine, flags ...string) *schema.Pool {
		return &schema.Pool{
			ID: "p", Engine: e, Model: schema.Model{Path: "/models/m", Ctx: 4096},
			Devices: []int{0, 1}, VRAM: 40 << 30, Flags: flags,
			Restart: schema.RestartPolicy{StopGrace: 10 * time.Second},
		}
	}
	gpus := []GPU{{Index: 0, UUID: "GPU-a", Total: 24 * gi}, {Index: 1, UUID: "GPU-b", Total: 24 * gi}}
	oldVLLM := caps.FromHelp(DefaultVLLM, "0.11.0", "  --gpu-memory-utilization GPU_MEMORY_UTILIZATION\n")
	tests := []struct {
		name string
		pool *schema.Pool
		gpus []GPU
		help *caps.Caps
		// want are the arguments after the managed ones (the pool's own flags last).
		want []string
	}{
		{name: "vllm with a probe that knows --shutdown-timeout", pool: pool(schema.EngineVLLM), help: vllmCaps(),
			want: []string{"--gpu-memory-utilization", "0.8333", "--shutdown-timeout", "8"}},
		{name: "vllm without a probe: no optional flag", pool: pool(schema.EngineVLLM),
			want: []string{"--gpu-memory-utilization", "0.8333"}},
		{name: "vllm whose build does not know --shutdown-timeout", pool: pool(schema.EngineVLLM),
			help: &oldVLLM,
			want: []string{"--gpu-memory-utilization", "0.8333"}},
		{name: "vllm: the pool's own fraction and timeout are kept", help: vllmCaps(),
			pool: pool(schema.EngineVLLM, "--gpu_memory_utilization=0.8", "--shutdown-timeout", "5"),
			want: []string{"--gpu_memory_utilization=0.8", "--shutdown-timeout", "5"}},
		{name: "vllm: GPU sizes unknown, no fraction", pool: pool(schema.EngineVLLM),
			gpus: []GPU{{Index: 0, UUID: "GPU-a"}, {Index: 1, UUID: "GPU-b"}}, want: nil},
		{name: "vllm: a grace too short for any shutdown", help: vllmCaps(),
			pool: func() *schema.Pool { p := pool(schema.EngineVLLM); p.Restart.StopGrace = 2 * time.Second; return p }(),
			want: []string{"--gpu-memory-utilization", "0.8333"}},
		{name: "tgi", pool: pool(schema.EngineTGI),
			want: []string{"--cuda-memory-fraction", "0.9259", "--graceful-termination-timeout", "3"}},
		{name: "tgi: the pool's env is kept",
			pool: func() *schema.Pool {
				p := pool(schema.EngineTGI)
				p.Env = map[string]string{"CUDA_MEMORY_FRACTION": "0.9", "GRACEFUL_TERMINATION_TIMEOUT": "2"}
				return p
			}(), want: nil},
		{name: "tgi: a longer grace, a longer timeout",
			pool: func() *schema.Pool { p := pool(schema.EngineTGI); p.Restart.StopGrace = time.Minute; return p }(),
			want: []string{"--cuda-memory-fraction", "0.9259", "--graceful-termination-timeout", "20"}},
		{name: "sglang", pool: pool(schema.EngineSGLang, "--enable-metrics"),
			want: []string{"--mem-fraction-static", "0.8333", "--enable-metrics"}},
		{name: "sglang: the smallest GPU's share", pool: pool(schema.EngineSGLang),
			gpus: []GPU{{Index: 0, Total: 48 * gi}, {Index: 1, Total: 24 * gi}},
			want: []string{"--mem-fraction-static", "0.4166"}},
		{name: "sglang: the pool's own fraction", pool: pool(schema.EngineSGLang, "--mem-fraction-static", "0.7"),
			want: []string{"--mem-fraction-static", "0.7"}},
	}
	managed := map[schema.Engine]int{schema.EngineVLLM: 10, schema.EngineTGI: 10, schema.EngineSGLang: 12}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			g := gpus
			if tc.gpus != nil {
				g = tc.gpus
			}
			cmd, err := Build(tc.pool, g, 9000, bins, "n/p/1/h", Options{Environ: []string{}, Caps: tc.help})
			if err != nil {
				t.Fatal(err)
			}
			got := cmd.Args[managed[tc.pool.Engine]:]
			if len(got) == 0 {
				got = nil
			}
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("args after the managed ones (-want +got):\n%s\nall: %q", diff, cmd.Args)
			}
		})
	}
}

// TestSGLangCommand pins SGLang's whole command line and environment.
func TestSGLangCommand(t *testing.T) {
	bins, _ := fakeBinaries(t)
	p := &schema.Pool{ID: "qwen", Engine: schema.EngineSGLang, Model: schema.Model{Path: "/models/qwen", Ctx: 8192},
		Devices: []int{3, 1}, VRAM: 144 << 30}
	cmd, err := Build(p, []GPU{{Index: 3, UUID: "GPU-d", Total: 80 << 30}, {Index: 1, UUID: "GPU-b", Total: 80 << 30}}, 30000, bins, "n/qwen/1/h", Options{Environ: []string{}})
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"-m", "sglang.launch_server", "--model-path", "/models/qwen", "--host", "127.0.0.1", "--port", "30000",
		"--tp-size", "2", "--context-length", "8192", "--mem-fraction-static", "0.9"}
	if diff := cmp.Diff(want, cmd.Args); diff != "" {
		t.Errorf("Args (-want +got):\n%s", diff)
	}
	if !slices.Contains(cmd.Env, "CUDA_VISIBLE_DEVICES=3,1") || !slices.Contains(cmd.Env, "CUDA_DEVICE_ORDER=PCI_BUS_ID") {
		t.Errorf("Env %q: want NVML indices in the mask's order with PCI bus order", cmd.Env)
	}
	if cmd.Health != RefuseThenWarmUp {
		t.Errorf("Health = %v, want %v", cmd.Health, RefuseThenWarmUp)
	}
}
