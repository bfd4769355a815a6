package schema

import (
	"strings"
	"testing"
)

func TestFlagChecker(t *testing.T) {
	tests := []struct {
		name   string
		engine Engine
		flags  []string
		env    map[string]string
		// want is a substring of each expected problem, keyed by its path; empty means accepted.
		want map[string]string
	}{
		{name: "allowed llama flags", engine: EngineLlamaCpp, flags: []string{"--parallel", "4", "--metrics", "-fa", "on", "--no-webui", "--override-tensor", "blk\\.1\\.=CUDA0"}},
		{name: "short ctx", engine: EngineLlamaCpp, flags: []string{"-c", "4096"}, want: map[string]string{"flags[0]": "use model.ctx"}},
		{name: "long ctx", engine: EngineLlamaCpp, flags: []string{"--ctx-size", "4096"}, want: map[string]string{"flags[0]": "use model.ctx"}},
		{name: "underscore spelling", engine: EngineLlamaCpp, flags: []string{"--tensor_split", "3,1"}, want: map[string]string{"flags[0]": "use split"}},
		{name: "ts short", engine: EngineLlamaCpp, flags: []string{"-ts", "3/1"}, want: map[string]string{"flags[0]": "use split"}},
		{name: "partial ngl", engine: EngineLlamaCpp, flags: []string{"--metrics", "-ngl", "20"}, want: map[string]string{"flags[1]": "20 would leave layers on the CPU"}},
		{name: "full ngl is still managed", engine: EngineLlamaCpp, flags: []string{"--gpu-layers", "999"}, want: map[string]string{"flags[0]": "passes --n-gpu-layers 999"}},
		{name: "no kv offload", engine: EngineLlamaCpp, flags: []string{"-nkvo"}, want: map[string]string{"flags[0]": "CPU spillover"}},
		{name: "cpu moe", engine: EngineLlamaCpp, flags: []string{"--cpu-moe"}, want: map[string]string{"flags[0]": "CPU spillover"}},
		{name: "n cpu moe", engine: EngineLlamaCpp, flags: []string{"--n-cpu-moe", "8"}, want: map[string]string{"flags[0]": "CPU spillover"}},
		{name: "override tensor to cpu", engine: EngineLlamaCpp, flags: []string{"-ot", "exps=CPU"}, want: map[string]string{"flags[0]": "CPU buffer"}},
		{name: "fit on", engine: EngineLlamaCpp, flags: []string{"--fit", "on"}, want: map[string]string{"flags[0]": "CPU spillover"}},
		{name: "fit off is ours", engine: EngineLlamaCpp, flags: []string{"-fit", "off"}, want: map[string]string{"flags[0]": "already passes --fit off"}},
		{name: "device none", engine: EngineLlamaCpp, flags: []string{"--device", "none"}, want: map[string]string{"flags[0]": "--device none would run"}},
		{name: "device is the mask", engine: EngineLlamaCpp, flags: []string{"-dev", "CUDA0"}, want: map[string]string{"flags[0]": "use devices"}},
		{name: "host", engine: EngineLlamaCpp, flags: []string{"--host", "0.0.0.0"}, want: map[string]string{"flags[0]": "127.0.0.1"}},
		{name: "model", engine: EngineLlamaCpp, flags: []string{"-m", "/x.gguf"}, want: map[string]string{"flags[0]": "use model.path"}},
		{name: "hf repo", engine: EngineLlamaCpp, flags: []string{"-hf", "org/model"}, want: map[string]string{"flags[0]": "use model.source instead (hf://"}},
		{name: "hf file", engine: EngineLlamaCpp, flags: []string{"--hf-file", "m.gguf"}, want: map[string]string{"flags[0]": "use model.source instead"}},
		{name: "model url", engine: EngineLlamaCpp, flags: []string{"-mu", "https://x/m.gguf"}, want: map[string]string{"flags[0]": "use model.source instead"}},
		{name: "equals form", engine: EngineLlamaCpp, flags: []string{"--parallel=4"}, want: map[string]string{"flags[0]": "does not accept --name=value"}},
		{name: "unknown option", engine: EngineLlamaCpp, flags: []string{"--bogus"}, want: map[string]string{"flags[0]": "no such option"}},
		{name: "stray value", engine: EngineLlamaCpp, flags: []string{"4"}, want: map[string]string{"flags[0]": "value without an option"}},
		{name: "missing value", engine: EngineLlamaCpp, flags: []string{"--parallel"}, want: map[string]string{"flags[0]": "needs a value"}},
		{name: "draft layers partial", engine: EngineLlamaCpp, flags: []string{"-ngld", "10"}, want: map[string]string{"flags[0]": "draft-model layers on the CPU"}},
		{name: "draft layers all", engine: EngineLlamaCpp, flags: []string{"-ngld", "all"}},
		{name: "value that looks like managed option is consumed", engine: EngineLlamaCpp, flags: []string{"--alias", "-c"}},
		{name: "cuda visible devices", engine: EngineVLLM, env: map[string]string{"CUDA_VISIBLE_DEVICES": "0"}, want: map[string]string{"env.CUDA_VISIBLE_DEVICES": "use devices"}},
		{name: "llama env", engine: EngineLlamaCpp, env: map[string]string{"LLAMA_ARG_N_GPU_LAYERS": "10", "LLAMA_ARG_THREADS": "8"}, want: map[string]string{"env.LLAMA_ARG_N_GPU_LAYERS": "--n-gpu-layers"}},
		{name: "llama env spill", engine: EngineLlamaCpp, env: map[string]string{"LLAMA_ARG_NO_KV_OFFLOAD": "1"}, want: map[string]string{"env.LLAMA_ARG_NO_KV_OFFLOAD": "CPU spillover"}},
		{name: "vllm allowed", engine: EngineVLLM, flags: []string{"--gpu-memory-utilization", "0.85", "--cpu-offload-gb", "0", "--enable-prefix-caching"}},
		{name: "vllm cpu offload", engine: EngineVLLM, flags: []string{"--cpu-offload-gb", "4"}, want: map[string]string{"flags[0]": "CPU spillover"}},
		{name: "vllm cpu offload inline", engine: EngineVLLM, flags: []string{"--cpu_offload_gb=4"}, want: map[string]string{"flags[0]": "CPU spillover"}},
		{name: "vllm tp", engine: EngineVLLM, flags: []string{"-tp", "2"}, want: map[string]string{"flags[0]": "number of devices"}},
		{name: "vllm max model len", engine: EngineVLLM, flags: []string{"--max-model-len=8192"}, want: map[string]string{"flags[0]": "model.ctx"}},
		{name: "vllm kv offloading", engine: EngineVLLM, flags: []string{"--kv-offloading-size", "8"}, want: map[string]string{"flags[0]": "CPU spillover"}},
		{name: "tgi num shard", engine: EngineTGI, flags: []string{"--num-shard", "2"}, want: map[string]string{"flags[0]": "number of devices"}},
		{name: "tgi env", engine: EngineTGI, env: map[string]string{"NUM_SHARD": "2", "HF_TOKEN": "x"}, want: map[string]string{"env.NUM_SHARD": "use devices"}},
		{name: "tgi env is not llama", engine: EngineLlamaCpp, env: map[string]string{"PORT": "1"}},
	}
	c := newFlagChecker()
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := c.check(&Pool{ID: "p", Engine: tt.engine, Flags: tt.flags, Env: tt.env})
			if len(got) != len(tt.want) {
				t.Fatalf("got %d problems %+v, want %d %v", len(got), got, len(tt.want), tt.want)
			}
			for _, p := range got {
				want, ok := tt.want[p.path]
				if !ok {
					t.Errorf("unexpected problem at %s: %s", p.path, p.message)
					continue
				}
				if !strings.Contains(p.message, want) {
					t.Errorf("%s: message %q does not contain %q", p.path, p.message, want)
				}
			}
		})
	}
}

func TestOverridesToCPU(t *testing.T) {
	tests := map[string]bool{
		"exps=CPU":                  true,
		"blk\\.(1|2)\\.ffn=cpu":     true,
		"a=CUDA0,b=CPU_REPACK":      true,
		"ffn_.*=CUDA1":              false,
		"no-equals":                 false,
		"blk\\.0\\.=CUDA0,x=CUDA1 ": false,
	}
	for value, want := range tests {
		if got := overridesToCPU(value); got != want {
			t.Errorf("overridesToCPU(%q) = %v, want %v", value, got, want)
		}
	}
}
