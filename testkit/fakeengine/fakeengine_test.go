package fakeengine

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/poolmanagerd/pool-managerd/drivers/gpu/sim"
)

// PoolManagerdArgs is the llama-server command line pool-managerd's preset
// writes (model, port and split vary).
var poolManagerdArgs = strings.Fields("--model /m.gguf --host 127.0.0.1 --port 8081 --ctx-size 8192 --n-gpu-layers 999 --fit off --split-mode layer --tensor-split 0.67,0.33 --parallel 4 --metrics")

func TestParseLlamaArgsAcceptsRealCommandLines(t *testing.T) {
	lines := [][]string{
		poolManagerdArgs,
		strings.Fields("-m /m.gguf -c 4096 -ngl 99 --host 0.0.0.0 --port 8080"),
		strings.Fields("--model /m.gguf --ctx_size 2048 --n_gpu_layers all --flash-attn on --jinja --no-webui"),
		strings.Fields("-m /m.gguf -ngl auto -ts 3/1 -sm row -mg 0 -np 2 -cb --api-key secret --alias mymodel --props"),
		strings.Fields("-m /m.gguf -fit on -fitt 512 -ctk q8_0 -ctv q8_0 -b 2048 -ub 512 -t 8 --mlock --no-mmap --slots --temp 0.7 -s 42"),
		strings.Fields("-hf ggml-org/gemma-3-1b-it-GGUF --port 0 --log-disable --threads-http 4 --chat-template chatml --reasoning-format none"),
		strings.Fields("-m /m.gguf -dev CUDA0,CUDA1 -ot blk\\.1\\.ffn=CUDA1 --no-kv-offload -cmoe -ncmoe 4 --override-kv tokenizer.ggml.add_bos_token=bool:false"),
		strings.Fields("-m /m.gguf --control-vector-layer-range 1 10 -v -lv 3"),
	}
	for _, argv := range lines {
		if _, err := ParseLlamaArgs(argv); err != nil {
			t.Errorf("llama-server %s: %v", strings.Join(argv, " "), err)
		}
	}
}

func TestParseLlamaArgsValues(t *testing.T) {
	cfg, err := ParseLlamaArgs(poolManagerdArgs)
	if err != nil {
		t.Fatal(err)
	}
	want := LlamaConfig{
		Host: "127.0.0.1", Port: 8081, Model: "/m.gguf", CtxSize: 8192, GPULayers: 999, GPULayersSet: true,
		TensorSplit: []float64{float64(float32(0.67)), float64(float32(0.33))}, SplitMode: "layer",
		Fit: false, Parallel: 4, Metrics: true, Slots: true, Build: LlamaDefaultBuild,
	}
	if diff := cmp.Diff(want, cfg); diff != "" {
		t.Errorf("config (-want +got):\n%s", diff)
	}

	cfg, err = ParseLlamaArgs(nil)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Port != 8080 || cfg.Host != "127.0.0.1" || !cfg.Fit || cfg.GPULayers != -1 || cfg.GPULayersSet || cfg.Metrics {
		t.Errorf("defaults: %+v", cfg)
	}

	cfg, _ = ParseLlamaArgs(strings.Fields("-ngl all -ts 3/1 -dev CUDA1 --no-slots -np 2 -fitt 256,512 --api-key a,b"))
	if cfg.GPULayers != -2 || !cmp.Equal(cfg.TensorSplit, []float64{3, 1}) || !cmp.Equal(cfg.Devices, []string{"CUDA1"}) ||
		cfg.Slots || cfg.Parallel != 2 || !cmp.Equal(cfg.FitTarget, []int{256, 512}) || !cmp.Equal(cfg.APIKeys, []string{"a", "b"}) {
		t.Errorf("config: %+v", cfg)
	}
}

func TestParseLlamaArgsRefuses(t *testing.T) {
	tests := []struct {
		argv []string
		want string // the first line of the message
	}{
		{[]string{"--bogus"}, "error: invalid argument: --bogus"},
		{[]string{"--metrics", "true"}, "error: invalid argument: true"},
		{[]string{"--ctx-size=8192"}, "error: invalid argument: --ctx-size=8192"},
		{[]string{"--port", "abc"}, `error while handling argument "--port": stoi`},
		{[]string{"-c"}, `error while handling argument "-c": expected value for argument`},
		{[]string{"-ngl", "most"}, `error while handling argument "-ngl": stoi`},
		{[]string{"-ts", "a,b"}, `error while handling argument "-ts": stof`},
		{[]string{"-ts", "1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1"}, `error while handling argument "-ts": got 16 input configs, but system only has 16 devices`},
		{[]string{"-sm", "both"}, `error while handling argument "-sm": invalid value`},
		{[]string{"--fit", "maybe"}, `error while handling argument "--fit": invalid value`},
		{[]string{"--spec-ngram-size-n", "4"}, `error while handling argument "--spec-ngram-size-n": the argument has been removed`},
		// An earlier bad value is reported before a later unknown option.
		{[]string{"--port", "x", "--bogus"}, `error while handling argument "--port": stoi`},
	}
	for _, tt := range tests {
		_, err := ParseLlamaArgs(tt.argv)
		var ue *UsageError
		if !errors.As(err, &ue) {
			t.Errorf("%q: error %v, want a usage error", tt.argv, err)
			continue
		}
		first, rest, _ := strings.Cut(ue.Message, "\n")
		if first != tt.want || ue.Code != 1 {
			t.Errorf("%q: %q (status %d), want %q (status 1)", tt.argv, first, ue.Code, tt.want)
		}
		if strings.HasPrefix(first, "error while handling") && !strings.Contains(rest, "to show complete usage, run with -h") {
			t.Errorf("%q: no usage after the message: %q", tt.argv, ue.Message)
		}
	}
	// --version acts when it is read, before a later error.
	if cfg, err := ParseLlamaArgs([]string{"--version", "--bogus"}); err != nil || !cfg.Version {
		t.Errorf("--version --bogus: %+v, %v", cfg, err)
	}
}

func TestCppStoi(t *testing.T) {
	for in, want := range map[string]int{"8080": 8080, " 42": 42, "-1": -1, "+7": 7, "99abc": 99} {
		if got, err := cppStoi(in); err != nil || got != want {
			t.Errorf("stoi(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, in := range []string{"", "abc", "-", "99999999999"} {
		if _, err := cppStoi(in); err == nil || err.Error() != "stoi" {
			t.Errorf("stoi(%q): %v, want stoi", in, err)
		}
	}
}

func TestParseSGLangArgs(t *testing.T) {
	cfg, err := ParseSGLangArgs(strings.Fields("-m sglang.launch_server --model-path /m --host 127.0.0.1 --port 30001 --tp 2 --context_length 8192 --mem-fraction-static=0.8 --enable-metrics --served-model-name q"))
	if err != nil {
		t.Fatal(err)
	}
	want := SGLangConfig{ModelPath: "/m", Host: "127.0.0.1", Port: 30001, TP: 2, DP: 1, ContextLength: 8192, MemFraction: 0.8, ServedModelName: "q"}
	if diff := cmp.Diff(want, cfg); diff != "" {
		t.Errorf("config (-want +got):\n%s", diff)
	}
	for _, tc := range []struct {
		argv []string
		want string
	}{
		{strings.Fields("-m sglang.launch_server --port 1"), "the following arguments are required: --model-path"},
		{strings.Fields("-m sglang.launch_server --model-path /m --tp-size x"), "argument --tp-size/--tp: invalid int value: 'x'"},
		{strings.Fields("-m sglang.launch_server --model-path /m --fit off"), "unrecognized arguments: --fit off"},
	} {
		_, err := ParseSGLangArgs(tc.argv)
		var ue *UsageError
		if !errors.As(err, &ue) || ue.Code != 2 || !strings.Contains(ue.Message, tc.want) {
			t.Errorf("ParseSGLangArgs(%q) = %v; want a usage error (2) containing %q", tc.argv, err, tc.want)
		}
	}
}

func TestParseVLLMArgs(t *testing.T) {
	cfg, err := ParseVLLMArgs(strings.Fields("serve /m --host 127.0.0.1 --port=8001 -tp 2 --max_model_len 32k --gpu-memory-utilization 0.85 --enforce-eager --no-enable-prefix-caching --served-model-name a b"))
	if err != nil {
		t.Fatal(err)
	}
	want := VLLMConfig{Model: "/m", Host: "127.0.0.1", Port: 8001, TensorParallel: 2, PipelineParallel: 1, MaxModelLen: 32000, ServedModelNames: []string{"a", "b"}, GPUMemoryUtilization: 0.85}
	if diff := cmp.Diff(want, cfg); diff != "" {
		t.Errorf("config (-want +got):\n%s", diff)
	}
	tests := []struct {
		argv []string
		want string
	}{
		{strings.Fields("serve /m --bogus 1"), "vllm serve: error: unrecognized arguments: --bogus 1"},
		{strings.Fields("serve /m --port abc"), "vllm serve: error: argument --port: invalid int value: 'abc'"},
		{strings.Fields("serve /m --port"), "vllm serve: error: argument --port: expected one argument"},
		{strings.Fields("serve /m --dtype fp7"), "vllm serve: error: argument --dtype: invalid choice: 'fp7' (choose from 'auto', 'half', 'float16', 'bfloat16', 'float', 'float32')"},
		{strings.Fields("serve /m --enforce-eager=yes"), "vllm serve: error: argument --enforce-eager: ignored explicit argument 'yes'"},
		{strings.Fields("serve"), "vllm serve: error: the following arguments are required: model_tag"},
		{strings.Fields("/m"), "vllm: error: argument subparser: invalid choice: '/m' (choose from 'chat', 'complete', 'serve', 'bench', 'collect-env', 'run-batch')"},
	}
	for _, tt := range tests {
		_, err := ParseVLLMArgs(tt.argv)
		var ue *UsageError
		if !errors.As(err, &ue) || ue.Code != 2 {
			t.Errorf("%q: %v, want a usage error with status 2", tt.argv, err)
			continue
		}
		lines := strings.Split(ue.Message, "\n")
		if !strings.HasPrefix(lines[0], "usage: vllm") || lines[len(lines)-1] != tt.want {
			t.Errorf("%q:\n%s\nwant the usage line, then %q", tt.argv, ue.Message, tt.want)
		}
	}
}

func TestParseTGIArgs(t *testing.T) {
	env := map[string]string{"MAX_TOTAL_TOKENS": "4096", "PORT": "9999", "GRACEFUL_TERMINATION_TIMEOUT": "3"}
	cfg, err := ParseTGIArgs(strings.Fields("--model-id /m --hostname 127.0.0.1 --port=3001 --num-shard 2 --max-input-tokens 2048 --trust-remote-code --cuda-memory-fraction 0.8"), func(k string) string { return env[k] })
	if err != nil {
		t.Fatal(err)
	}
	want := TGIConfig{ModelID: "/m", Hostname: "127.0.0.1", Port: 3001, NumShard: 2, NumShardSet: true, MaxInputTokens: 2048, MaxTotalTokens: 4096,
		CUDAMemoryFraction: 0.8, GracefulTimeout: 3 * time.Second}
	if diff := cmp.Diff(want, cfg); diff != "" {
		t.Errorf("config (-want +got):\n%s", diff)
	}
	none := func(string) string { return "" }
	tests := []struct {
		argv []string
		want string
	}{
		{[]string{"--bogus"}, "error: unexpected argument '--bogus' found\n\nUsage: text-generation-launcher [OPTIONS]\n\nFor more information, try '--help'."},
		{[]string{"--port", "abc"}, "error: invalid value 'abc' for '--port <PORT>': invalid digit found in string\n\nFor more information, try '--help'."},
		{[]string{"--port", "70000"}, "error: invalid value '70000' for '--port <PORT>': 70000 is not in 0..=65535\n\nFor more information, try '--help'."},
		{[]string{"--port"}, "error: a value is required for '--port <PORT>' but none was supplied\n\nFor more information, try '--help'."},
		{[]string{"--port", "1", "--port", "2"}, "error: the argument '--port <PORT>' cannot be used multiple times\n\nUsage: text-generation-launcher [OPTIONS]\n\nFor more information, try '--help'."},
	}
	for _, tt := range tests {
		_, err := ParseTGIArgs(tt.argv, none)
		var ue *UsageError
		if !errors.As(err, &ue) || ue.Code != 2 || ue.Message != tt.want {
			t.Errorf("%q: %v, want status 2 and\n%s", tt.argv, err, tt.want)
		}
	}
}

func TestTGIShards(t *testing.T) {
	tests := []struct {
		cfg     TGIConfig
		visible int
		want    int
		wantErr bool
	}{
		{TGIConfig{}, -1, 1, false},
		{TGIConfig{}, 2, 2, false},
		{TGIConfig{NumShard: 2, NumShardSet: true}, -1, 2, false},
		{TGIConfig{Sharded: "true"}, 4, 4, false},
		{TGIConfig{Sharded: "true"}, 1, 0, true},
		{TGIConfig{Sharded: "false", NumShard: 2, NumShardSet: true}, 2, 0, true},
		{TGIConfig{NumShard: 0, NumShardSet: true}, 2, 0, true},
	}
	for _, tt := range tests {
		got, err := tgiShards(tt.cfg, tt.visible)
		if got != tt.want || (err != nil) != tt.wantErr {
			t.Errorf("tgiShards(%+v, %d) = %d, %v; want %d (error %v)", tt.cfg, tt.visible, got, err, tt.want, tt.wantErr)
		}
	}
}

func TestDetectMode(t *testing.T) {
	env := func(v string) func(string) string {
		return func(k string) string {
			if k == EnvAs {
				return v
			}
			return ""
		}
	}
	tests := []struct {
		args     []string
		as       string
		want     Mode
		wantRest []string
	}{
		{[]string{"/bin/fake-engine", "-m", "x"}, "", LlamaCpp, []string{"-m", "x"}},
		{[]string{"/usr/bin/vllm", "serve", "x"}, "", VLLM, []string{"serve", "x"}},
		{[]string{"text-generation-launcher", "--model-id", "x"}, "", TGI, []string{"--model-id", "x"}},
		{[]string{"fake-engine", "serve", "x"}, "vllm", VLLM, []string{"serve", "x"}},
		{[]string{"vllm", "serve"}, "llamacpp", LlamaCpp, []string{"serve"}},
		{[]string{"fake-engine", "--fake-engine-as=tgi", "--port", "1"}, "vllm", TGI, []string{"--port", "1"}},
		{[]string{"fake-engine", "--fake-engine-as", "vllm", "serve"}, "", VLLM, []string{"serve"}},
		{[]string{"/bin/fake-engine", "serve", "/m", "--port", "1"}, "", VLLM, []string{"serve", "/m", "--port", "1"}},
		{[]string{"/bin/fake-engine", "--port", "1", "--model-id=/m"}, "", TGI, []string{"--port", "1", "--model-id=/m"}},
		{[]string{"/bin/llama-server", "serve"}, "", LlamaCpp, []string{"serve"}},
		// SGLang is a Python module: the interpreter's name says nothing.
		{[]string{"/opt/venv/bin/python3", "-m", "sglang.launch_server", "--model-path", "/m"}, "", SGLang, []string{"-m", "sglang.launch_server", "--model-path", "/m"}},
		{[]string{"fake-engine", "--model-path", "/m"}, "sglang", SGLang, []string{"--model-path", "/m"}},
	}
	for _, tt := range tests {
		got, rest, err := DetectMode(tt.args, env(tt.as))
		if err != nil || got != tt.want || !cmp.Equal(rest, tt.wantRest) {
			t.Errorf("DetectMode(%q, %s=%q) = %s %q %v; want %s %q", tt.args, EnvAs, tt.as, got, rest, err, tt.want, tt.wantRest)
		}
	}
	if _, _, err := DetectMode([]string{"x"}, env("ollama")); err == nil {
		t.Error("FAKE_ENGINE_AS=ollama: no error")
	}
}

func TestParseFaults(t *testing.T) {
	f, err := ParseFaults(func(string) string { return "" })
	if err != nil || !cmp.Equal(f, DefaultFaults()) {
		t.Fatalf("empty environment: %+v, %v", f, err)
	}
	env := map[string]string{
		EnvVRAM: "1.5Gi", EnvLoadDelay: "50ms", EnvFailLoad: "1", EnvExitAfter: "2s", EnvExitCode: "3",
		EnvExitSignal: "SIGSEGV", EnvCUDAErrorAfter: "0", EnvHoldOutside: "1,2", EnvNoGPU: "true",
		EnvIgnoreSIGTERM: "1", EnvFlapHealth: "100ms", EnvBusySlots: "2", EnvBusyFor: "forever", EnvOrphanWorkers: "1",
		EnvFaultOnce: "/run/struck",
	}
	f, err = ParseFaults(func(k string) string { return env[k] })
	if err != nil {
		t.Fatal(err)
	}
	want := DefaultFaults()
	want.VRAM = 3 << 29
	want.LoadDelay = 50 * time.Millisecond
	want.FailLoad = true
	want.ExitAfter = 2 * time.Second
	want.ExitCode = 3
	want.ExitSignal = syscall.SIGSEGV
	want.CUDAErrorAfter = 0
	want.HoldOutside = []int{1, 2}
	want.NoGPU = true
	want.IgnoreSIGTERM = true
	want.FlapHealth = 100 * time.Millisecond
	want.BusySlots = 2
	want.BusyFor = Forever
	want.OrphanWorkers = true
	want.FaultOnce = "/run/struck"
	if diff := cmp.Diff(want, f); diff != "" {
		t.Errorf("faults (-want +got):\n%s", diff)
	}
	bad := map[string]string{EnvVRAM: "lots", EnvLoadDelay: "soon", EnvExitSignal: "SIGNOPE", EnvFailLoad: "maybe"}
	_, err = ParseFaults(func(k string) string { return bad[k] })
	if err == nil {
		t.Fatal("bad environment: no error")
	}
	for name := range bad {
		if !strings.Contains(err.Error(), name) {
			t.Errorf("error %q does not name %s", err, name)
		}
	}
}

func TestParseBytes(t *testing.T) {
	for in, want := range map[string]uint64{"0": 0, "1024": 1024, "2Gi": 2 << 30, "512Mi": 512 << 20, "2GiB": 2 << 30, "1.5Gi": 3 << 29, "4Ki": 4096, "1Ti": 1 << 40} {
		if got, err := ParseBytes(in); err != nil || got != want {
			t.Errorf("ParseBytes(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, in := range []string{"", "2G", "-1", "x", "-2Gi"} {
		if _, err := ParseBytes(in); err == nil {
			t.Errorf("ParseBytes(%q): no error", in)
		}
	}
}

func TestSplitBytes(t *testing.T) {
	tests := []struct {
		total   uint64
		weights []float64
		want    []uint64
	}{
		{100, []float64{1, 1}, []uint64{50, 50}},
		{100, []float64{0, 0, 0}, []uint64{34, 33, 33}},
		{100, []float64{3, 1}, []uint64{75, 25}},
		{101, []float64{2, 1}, []uint64{68, 33}},
		{100, []float64{1, -1, 0}, []uint64{100, 0, 0}},
		{7, nil, []uint64{}},
	}
	for _, tt := range tests {
		got := SplitBytes(tt.total, tt.weights)
		if !cmp.Equal(got, tt.want) {
			t.Errorf("SplitBytes(%d, %v) = %v, want %v", tt.total, tt.weights, got, tt.want)
		}
	}
	parts := SplitBytes(3<<30, []float64{0.67, 0.33})
	if parts[0]+parts[1] != 3<<30 {
		t.Errorf("parts %v do not add up", parts)
	}
}

func TestVisibleGPUs(t *testing.T) {
	node := sim.DefaultGPUs()
	u0, u1 := node[0].UUID, node[1].UUID
	g0 := GPU{SimIndex: 0, UUID: u0, Name: node[0].Name, Total: node[0].MemoryBytes}
	g1 := GPU{SimIndex: 1, UUID: u1, Name: node[1].Name, Total: node[1].MemoryBytes}
	tests := []struct {
		cvd  string
		set  bool
		want []GPU
	}{
		{"", false, nil},
		{"", true, nil},
		{"0,1", true, []GPU{g0, g1}},
		{"1", true, []GPU{g1}},
		{u1 + "," + u0, true, []GPU{g1, g0}},
		{strings.ToUpper(u0[:8]), true, []GPU{g0}}, // a unique prefix
		{"GPU-", true, nil},                        // ambiguous prefix
		{"0,7,1", true, []GPU{g0}},                 // the list ends at a GPU that does not exist
		{"1,1", true, []GPU{g1}},                   // or at one named twice
		{"MIG-1234,0", true, nil},                  //
		{u0 + ",GPU-00000000-0000-0000-0000-000000000000,1", true, []GPU{g0}}, //
	}
	for _, tt := range tests {
		got, err := VisibleGPUs(tt.cvd, tt.set, node, false)
		if err != nil || !cmp.Equal(got, tt.want) {
			t.Errorf("VisibleGPUs(%q, %v) = %v, %v; want %v", tt.cvd, tt.set, got, err, tt.want)
		}
	}
	if _, err := VisibleGPUs(u0, true, node, true); err == nil || !strings.Contains(err.Error(), "invalid literal for int()") {
		t.Errorf("vLLM with a UUID: %v", err)
	}
	got, _ := VisibleGPUs("0,"+u1, true, nil, false)
	if len(got) != 2 || got[0].SimIndex != -1 || got[1].UUID != u1 {
		t.Errorf("without a simulated node: %v", got)
	}
}

func TestPlaceLlama(t *testing.T) {
	node := sim.DefaultGPUs()
	gpus := []GPU{
		{SimIndex: 0, UUID: node[0].UUID, Name: node[0].Name, Total: node[0].MemoryBytes},
		{SimIndex: 1, UUID: node[1].UUID, Name: node[1].Name, Total: node[1].MemoryBytes},
	}
	const gi = 1 << 30
	allFree := map[int]uint64{0: 24 * gi, 1: 12 * gi}
	base, _ := ParseLlamaArgs(strings.Fields("-m /m --fit off -ngl 999"))
	withArgs := func(args string) LlamaConfig {
		cfg, err := ParseLlamaArgs(strings.Fields("-m /m " + args))
		if err != nil {
			t.Fatal(err)
		}
		return cfg
	}
	faults := func(vram uint64, noGPU bool) Faults {
		f := DefaultFaults()
		f.VRAM, f.NoGPU = vram, noGPU
		return f
	}
	tests := []struct {
		name      string
		cfg       LlamaConfig
		gpus      []GPU
		free      map[int]uint64
		f         Faults
		want      map[int]uint64
		offloaded int
		failed    string
	}{
		{"tensor split", withArgs("--fit off -ngl 999 -ts 3,1"), gpus, allFree, faults(4*gi, false), map[int]uint64{0: 3 * gi, 1: gi}, 33, ""},
		{"split by free memory by default", base, gpus, allFree, faults(3*gi, false), map[int]uint64{0: 2 * gi, 1: gi}, 33, ""},
		{"by total memory when free memory is unknown", base, gpus, nil, faults(3*gi, false), map[int]uint64{0: 2 * gi, 1: gi}, 33, ""},
		{"evenly when nothing is known", base, []GPU{{SimIndex: 0}, {SimIndex: 1}}, nil, faults(2*gi, false), map[int]uint64{0: gi, 1: gi}, 33, ""},
		{"split mode none: the main GPU", withArgs("-sm none -mg 1"), gpus, allFree, faults(2*gi, false), map[int]uint64{1: 2 * gi}, 33, ""},
		{"split mode none, main GPU missing", withArgs("-sm none -mg 2"), gpus, allFree, faults(2*gi, false), map[int]uint64{}, 0, "invalid value for main_gpu: 2"},
		{"no GPU", base, nil, nil, faults(2*gi, false), map[int]uint64{}, 0, ""},
		{"-ngl 0", withArgs("-ngl 0"), gpus, allFree, faults(2*gi, false), map[int]uint64{}, 0, ""},
		{"FAKE_ENGINE_NO_GPU", base, gpus, allFree, faults(2*gi, true), map[int]uint64{}, 0, ""},
		{"out of memory with --fit off", withArgs("--fit off -ngl 999 -ts 0,1"), gpus, allFree, faults(13*gi, false), nil, 0, "cudaMalloc failed: out of memory"},
		{"out of memory with -ngl given", withArgs("-ngl 999 -ts 0,1"), gpus, allFree, faults(13*gi, false), nil, 0, "cudaMalloc failed: out of memory"},
		{"fit spills to the CPU", withArgs("-ts 0,1"), gpus, allFree, faults(22*gi, false), map[int]uint64{1: 11 * gi}, 16, ""},
		{"fit target", withArgs("-ts 0,1 -fitt 2048"), gpus, allFree, faults(22*gi, false), map[int]uint64{1: 10 * gi}, 15, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			pl := PlaceLlama(tt.cfg, tt.gpus, tt.free, tt.f)
			logs := strings.Join(pl.Logs, "\n")
			if tt.failed != "" {
				if !pl.Failed || !strings.Contains(logs, tt.failed) {
					t.Errorf("failed %v, logs:\n%s\nwant a failure with %q", pl.Failed, logs, tt.failed)
				}
				return
			}
			if pl.Failed {
				t.Fatalf("failed:\n%s", logs)
			}
			if diff := cmp.Diff(tt.want, pl.Claims); diff != "" {
				t.Errorf("claims (-want +got):\n%s", diff)
			}
			if pl.Offloaded != tt.offloaded {
				t.Errorf("offloaded %d layers, want %d", pl.Offloaded, tt.offloaded)
			}
			if !strings.Contains(logs, "layers to GPU") {
				t.Errorf("no offload line in:\n%s", logs)
			}
		})
	}
}

func TestClaimsEncoding(t *testing.T) {
	c := map[int]uint64{1: 5, 0: 1 << 40}
	s := encodeClaims(c)
	if s != "0=1099511627776,1=5" {
		t.Errorf("encodeClaims = %q", s)
	}
	back, err := decodeClaims(s)
	if err != nil || !cmp.Equal(back, c) {
		t.Errorf("decodeClaims(%q) = %v, %v", s, back, err)
	}
	if _, err := decodeClaims("0:1"); err == nil {
		t.Error("decodeClaims(0:1): no error")
	}
}

func TestEngineStateHealth(t *testing.T) {
	f := DefaultFaults()
	f.FlapHealth = 100 * time.Millisecond
	s := newEngineState(f)
	t0 := time.Unix(1000, 0)
	if s.healthy(t0) {
		t.Error("healthy while loading")
	}
	s.setReady(t0)
	for _, c := range []struct {
		after time.Duration
		want  bool
	}{{0, true}, {99 * time.Millisecond, true}, {100 * time.Millisecond, false}, {250 * time.Millisecond, true}} {
		if got := s.healthy(t0.Add(c.after)); got != c.want {
			t.Errorf("flapping, %v after ready: healthy %v, want %v", c.after, got, c.want)
		}
	}
	f = DefaultFaults()
	f.UnhealthyAfter = time.Second
	f.BusySlots, f.BusyFor = 2, time.Second
	s = newEngineState(f)
	s.setReady(t0)
	if !s.healthy(t0.Add(999*time.Millisecond)) || s.healthy(t0.Add(time.Second)) {
		t.Error("unhealthy after 1s: wrong")
	}
	if s.faultBusy(t0) != 2 || s.faultBusy(t0.Add(time.Second)) != 0 {
		t.Error("busy slots for 1s: wrong")
	}
}

func TestSimVRAMIsTheDefault(t *testing.T) {
	tests := []struct {
		env  map[string]string
		want uint64
	}{
		{map[string]string{EnvSimVRAM: "3221225472"}, 3 << 30},
		{map[string]string{EnvSimVRAM: "3221225472", EnvVRAM: "1Gi"}, 1 << 30}, // an explicit fault wins
	}
	for _, tt := range tests {
		f, err := ParseFaults(func(k string) string { return tt.env[k] })
		if err != nil {
			t.Fatal(err)
		}
		if f.VRAM != tt.want {
			t.Errorf("env %v: VRAM %d, want %d", tt.env, f.VRAM, tt.want)
		}
	}
}

func TestFaultOnceStrikesTheFirstEngineOnly(t *testing.T) {
	if !(&process{faults: DefaultFaults()}).firstToStrike() {
		t.Error("without FAKE_ENGINE_FAULT_ONCE every engine acts out its faults")
	}
	f := DefaultFaults()
	f.FaultOnce = filepath.Join(t.TempDir(), "struck")
	if !(&process{faults: f}).firstToStrike() {
		t.Fatal("the first engine to reach Ready should act out its faults")
	}
	if _, err := os.Stat(f.FaultOnce); err != nil {
		t.Fatalf("the first engine should leave %s: %v", f.FaultOnce, err)
	}
	if (&process{faults: f}).firstToStrike() {
		t.Error("a restarted engine that finds the file should leave its faults out")
	}
}
