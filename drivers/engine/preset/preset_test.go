package preset

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/poolmanagerd/pool-managerd/drivers/engine"
	"github.com/poolmanagerd/pool-managerd/drivers/engine/caps"
	"github.com/poolmanagerd/pool-managerd/schema"
)

// fakeBinaries writes executable stand-ins for the three engines into a temp
// dir and returns Binaries naming them by absolute path.
func fakeBinaries(t *testing.T) (Binaries, string) {
	t.Helper()
	dir := t.TempDir()
	for _, name := range []string{DefaultLlamaCpp, DefaultVLLM, DefaultTGI, DefaultSGLang} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte("#!/bin/sh\n"), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	return Binaries{
		LlamaCpp: filepath.Join(dir, DefaultLlamaCpp),
		VLLM:     filepath.Join(dir, DefaultVLLM),
		TGI:      filepath.Join(dir, DefaultTGI),
		SGLang:   filepath.Join(dir, DefaultSGLang),
	}, dir
}

// environ is pool-managerd's environment in the tests: what is passed on and
// what must not be.
var environ = []string{
	"PATH=/usr/local/bin:/usr/bin",
	"HOME=/var/lib/pool-managerd",
	"LANG=C.UTF-8",
	"LC_ALL=C",
	"TZ=UTC",
	"TMPDIR=/var/tmp",
	"SECRET_TOKEN=do-not-pass",
	"CUDA_VISIBLE_DEVICES=7",
	"POOL_MANAGERD_SIM_DIR=/not/from/environ",
	"NOEQUALS",
}

// baseEnv is what every engine gets from environ.
var baseEnv = []string{
	"HOME=/var/lib/pool-managerd",
	"LANG=C.UTF-8",
	"LC_ALL=C",
	"PATH=/usr/local/bin:/usr/bin",
	"TMPDIR=/var/tmp",
	"TZ=UTC",
}

func envWith(extra ...string) []string {
	out := append(append([]string(nil), baseEnv...), "CUDA_DEVICE_ORDER=PCI_BUS_ID")
	out = append(out, extra...)
	sort.Slice(out, func(i, j int) bool {
		ki, _, _ := strings.Cut(out[i], "=")
		kj, _, _ := strings.Cut(out[j], "=")
		return ki < kj
	})
	return out
}

func fakeGPUs(p *schema.Pool) []GPU {
	gpus := make([]GPU, len(p.Devices))
	for i, d := range p.Devices {
		gpus[i] = GPU{Index: d, UUID: fmt.Sprintf("GPU-fake-%d", d)}
	}
	return gpus
}

// exampleGPUs are pool p's masked GPUs with the sizes its node declares.
func exampleGPUs(t *testing.T, d *schema.Desired, p *schema.Pool) []GPU {
	t.Helper()
	gpus := fakeGPUs(p)
	for i := range gpus {
		g, ok := d.Nodes[p.Node].GPU(gpus[i].Index)
		if !ok {
			t.Fatalf("pool %s: GPU %d not declared on node %s", p.ID, gpus[i].Index, p.Node)
		}
		gpus[i].Total = uint64(g.VRAM)
	}
	return gpus
}

// vllmCaps stands in for the capability probe of a vLLM that knows
// --shutdown-timeout (v0.18 and later).
func vllmCaps() *caps.Caps {
	c := caps.FromHelp(DefaultVLLM, "0.18.0", "  --gpu-memory-utilization GPU_MEMORY_UTILIZATION\n  --shutdown-timeout SHUTDOWN_TIMEOUT\n")
	return &c
}

// probed is what the capability probe tells Build of p's engine: a vLLM that
// knows --shutdown-timeout; nothing of the others.
func probed(p *schema.Pool) *caps.Caps {
	if p.Engine == schema.EngineVLLM {
		return vllmCaps()
	}
	return nil
}

func loadExample(t *testing.T, name string) *schema.Desired {
	t.Helper()
	d, err := schema.Load(context.Background(), filepath.Join("..", "..", "..", "examples", name))
	if err != nil {
		t.Fatalf("load example %s: %v", name, err)
	}
	return d
}

// TestBuildExamples pins the command line and environment of every pool of
// the example config repos.
func TestBuildExamples(t *testing.T) {
	bins, dir := fakeBinaries(t)
	const marker = "node/pool/3/abc123"
	mk := "POOL_MANAGERD_ENGINE=" + marker
	tests := []struct {
		example, pool string
		port          int // used when the pool names none
		path          string
		args          []string
		env           []string
		health        HealthStyle
	}{
		{
			example: "single-gpu", pool: "coder", path: DefaultLlamaCpp, health: LlamaServer,
			args: []string{
				"--model", "/models/qwen2.5-coder-7b-instruct-q5_k_m.gguf", "--host", "127.0.0.1", "--port", "8081",
				"--ctx-size", "32768", "--n-gpu-layers", "999", "--fit", "off", "--split-mode", "layer",
				"--parallel", "4", "--flash-attn", "on", "--jinja",
			},
			env: envWith("CUDA_VISIBLE_DEVICES=GPU-fake-0", mk),
		},
		{
			example: "single-gpu", pool: "embed", port: 9101, path: DefaultLlamaCpp, health: LlamaServer,
			args: []string{
				"--model", "/models/nomic-embed-text-v1.5.f16.gguf", "--host", "127.0.0.1", "--port", "9101",
				"--ctx-size", "4096", "--n-gpu-layers", "999", "--fit", "off", "--split-mode", "layer",
				"--embeddings", "--pooling", "mean",
			},
			env: envWith("CUDA_VISIBLE_DEVICES=GPU-fake-0", mk),
		},
		{
			example: "mixed-24-12", pool: "llama70b", path: DefaultLlamaCpp, health: LlamaServer,
			args: []string{
				"--model", "/models/Llama-3.3-70B-Instruct-IQ2_XS.gguf", "--host", "127.0.0.1", "--port", "8080",
				"--ctx-size", "8192", "--n-gpu-layers", "999", "--fit", "off", "--split-mode", "layer",
				"--tensor-split", "0.67,0.33",
				"--parallel", "4", "--metrics", "--flash-attn", "on",
			},
			env: envWith("CUDA_VISIBLE_DEVICES=GPU-fake-0,GPU-fake-1", "LLAMA_ARG_CACHE_TYPE_K=q8_0", mk),
		},
		{
			example: "mixed-24-12", pool: "coder", port: 9102, path: DefaultLlamaCpp, health: LlamaServer,
			args: []string{
				"--model", "/models/qwen2.5-coder-3b-instruct-q6_k.gguf", "--host", "127.0.0.1", "--port", "9102",
				"--ctx-size", "4096", "--n-gpu-layers", "999", "--fit", "off", "--split-mode", "layer",
			},
			env: envWith("CUDA_VISIBLE_DEVICES=GPU-fake-0", mk),
		},
		{
			example: "fleet", pool: "llama70b-q4", port: 9103, path: DefaultLlamaCpp, health: LlamaServer,
			args: []string{
				"--model", "/models/Llama-3.3-70B-Instruct-Q4_K_M.gguf", "--host", "127.0.0.1", "--port", "9103",
				"--ctx-size", "16384", "--n-gpu-layers", "999", "--fit", "off", "--split-mode", "layer",
				"--tensor-split", "0.75,0.25",
				"--flash-attn", "on", "--cache-type-k", "q8_0", "--cache-type-v", "q8_0",
			},
			env: envWith("CUDA_VISIBLE_DEVICES=GPU-fake-0,GPU-fake-1", mk),
		},
		{
			example: "fleet", pool: "bge-embed", port: 9104, path: DefaultLlamaCpp, health: LlamaServer,
			args: []string{
				"--model", "/models/bge-m3-f16.gguf", "--host", "127.0.0.1", "--port", "9104",
				"--ctx-size", "8192", "--n-gpu-layers", "999", "--fit", "off", "--split-mode", "layer",
				"--embeddings", "--pooling", "cls",
			},
			env: envWith("CUDA_VISIBLE_DEVICES=GPU-fake-0", mk),
		},
		{
			// Same-size GPUs and no split: llama.cpp gets the even split.
			example: "fleet", pool: "qwen-coder-32b", path: DefaultLlamaCpp, health: LlamaServer,
			args: []string{
				"--model", "/models/Qwen2.5-Coder-32B-Instruct-Q6_K.gguf", "--host", "127.0.0.1", "--port", "8080",
				"--ctx-size", "32768", "--n-gpu-layers", "999", "--fit", "off", "--split-mode", "layer",
				"--tensor-split", "0.5,0.5",
				"--parallel", "2", "--flash-attn", "on", "--metrics",
			},
			env: envWith("CUDA_VISIBLE_DEVICES=GPU-fake-0,GPU-fake-1", mk),
		},
		{
			// vLLM takes indices, never UUIDs.
			example: "fleet", pool: "mistral-small", port: 9105, path: DefaultVLLM, health: RefuseUntilLoaded,
			args: []string{
				"serve", "/models/mistral-small-24b-instruct-awq", "--host", "127.0.0.1", "--port", "9105",
				"--tensor-parallel-size", "2", "--max-model-len", "16384",
				// 21Gi of each 24Gi GPU; a grace of 10 s leaves vLLM 8 s.
				"--gpu-memory-utilization", "0.875", "--shutdown-timeout", "8",
				"--quantization", "awq_marlin",
			},
			env: envWith("CUDA_VISIBLE_DEVICES=2,3", mk),
		},
		{
			example: "fleet", pool: "llama70b-chat", path: DefaultVLLM, health: RefuseUntilLoaded,
			args: []string{
				"serve", "/models/meta-llama/Llama-3.3-70B-Instruct", "--host", "127.0.0.1", "--port", "8000",
				"--tensor-parallel-size", "4", "--max-model-len", "32768",
				"--gpu-memory-utilization", "0.875", "--shutdown-timeout", "8",
				"--enable-prefix-caching", "--max-num-seqs", "128",
			},
			env: envWith("CUDA_VISIBLE_DEVICES=0,1,2,3", mk),
		},
		{
			example: "fleet", pool: "qwen32b", port: 9106, path: DefaultVLLM, health: RefuseUntilLoaded,
			args: []string{
				"serve", "/models/Qwen/Qwen2.5-32B-Instruct", "--host", "127.0.0.1", "--port", "9106",
				"--tensor-parallel-size", "2", "--max-model-len", "16384",
				"--shutdown-timeout", "8",
				"--gpu-memory-utilization", "0.85", // the pool's own, which matches its vram
			},
			env: envWith("CUDA_VISIBLE_DEVICES=4,5", "VLLM_LOGGING_LEVEL=WARNING", mk),
		},
		{
			example: "fleet", pool: "mixtral-tgi", port: 9107, path: DefaultTGI, health: RefuseUntilLoaded,
			args: []string{
				"--model-id", "/models/mistralai/Mixtral-8x7B-Instruct-v0.1", "--hostname", "127.0.0.1", "--port", "9107",
				"--num-shard", "2", "--max-total-tokens", "16384",
				// 60Gi of each 80Gi GPU at TGI's 90 % fill; router + 2 shards in 10 s.
				"--cuda-memory-fraction", "0.8333", "--graceful-termination-timeout", "3",
				"--max-input-tokens", "12288", "--max-batch-prefill-tokens", "16384",
			},
			env: envWith("CUDA_VISIBLE_DEVICES=GPU-fake-6,GPU-fake-7", mk),
		},
		{
			// SGLang takes indices, as vLLM does.
			example: "fleet", pool: "qwen72b-sglang", path: DefaultSGLang, health: RefuseThenWarmUp,
			args: []string{
				"-m", "sglang.launch_server",
				"--model-path", "/models/Qwen/Qwen2.5-72B-Instruct-FP8", "--host", "127.0.0.1", "--port", "30000",
				"--tp-size", "2", "--context-length", "32768",
				"--mem-fraction-static", "0.9",
				"--enable-metrics", "--served-model-name", "qwen2.5-72b",
			},
			env: envWith("CUDA_VISIBLE_DEVICES=0,1", mk),
		},
	}
	desired := map[string]*schema.Desired{}
	covered := map[string]bool{}
	for _, tc := range tests {
		t.Run(tc.example+"/"+tc.pool, func(t *testing.T) {
			d := desired[tc.example]
			if d == nil {
				d = loadExample(t, tc.example)
				desired[tc.example] = d
			}
			p := d.Pools[tc.pool]
			if p == nil {
				t.Fatalf("no pool %s in example %s", tc.pool, tc.example)
			}
			covered[tc.example+"/"+tc.pool] = true
			port := p.Port
			if port == 0 {
				port = tc.port
			}
			got, err := Build(p, exampleGPUs(t, d, p), port, bins, marker, Options{Environ: environ, Caps: probed(p)})
			if err != nil {
				t.Fatal(err)
			}
			want := Command{Path: filepath.Join(dir, tc.path), Args: tc.args, Env: tc.env, Health: tc.health}
			if diff := cmp.Diff(want, got); diff != "" {
				t.Errorf("Build (-want +got):\n%s", diff)
			}
		})
	}
	// Every pool of every example is pinned.
	for name, d := range desired {
		for id := range d.Pools {
			if !covered[name+"/"+id] {
				t.Errorf("pool %s of example %s has no case", id, name)
			}
		}
	}
	if len(desired) != 3 {
		t.Errorf("examples loaded: %d, want 3", len(desired))
	}
}

// TestBuildEnvLiteral pins one whole environment written out, sorted by key,
// with the simulated node's directory.
func TestBuildEnvLiteral(t *testing.T) {
	bins, _ := fakeBinaries(t)
	p := &schema.Pool{
		ID: "chat", Node: "n1", Engine: schema.EngineVLLM,
		Model:   schema.Model{Path: "/models/m", Ctx: 2048},
		Devices: []int{1, 0},
		Env:     map[string]string{"A_FIRST": "1", "PATH": "/opt/engine/bin", "HF_HOME": "/cache"},
	}
	got, err := Build(p, []GPU{{Index: 1, UUID: "GPU-b"}, {Index: 0, UUID: "GPU-a"}}, 9000, bins, "n1/chat/1/h", Options{Environ: environ, SimDir: "/tmp/sim", StateDir: "/var/lib/pm", SimVRAM: 3 << 30})
	if err != nil {
		t.Fatal(err)
	}
	want := []string{
		"A_FIRST=1",
		"CUDA_DEVICE_ORDER=PCI_BUS_ID",
		"CUDA_VISIBLE_DEVICES=1,0", // the mask's order, not sorted
		"HF_HOME=/cache",
		"HOME=/var/lib/pool-managerd",
		"LANG=C.UTF-8",
		"LC_ALL=C",
		"PATH=/opt/engine/bin", // the pool's env wins over what is passed on
		"POOL_MANAGERD_ENGINE=n1/chat/1/h",
		"POOL_MANAGERD_SIM_DIR=/tmp/sim",
		"POOL_MANAGERD_SIM_VRAM=3221225472", // the need the stand-in holds on the simulated GPUs
		"POOL_MANAGERD_STATE_DIR=/var/lib/pm",
		"TMPDIR=/var/tmp",
		"TZ=UTC",
	}
	if diff := cmp.Diff(want, got.Env); diff != "" {
		t.Errorf("Env (-want +got):\n%s", diff)
	}

	// nil Environ reads the process environment; an empty one passes nothing.
	t.Setenv("LC_TIME", "en_DK.UTF-8")
	t.Setenv("SECRET_TOKEN", "x")
	got, err = Build(p, []GPU{{Index: 1, UUID: "GPU-b"}, {Index: 0, UUID: "GPU-a"}}, 9000, bins, "n1/chat/1/h", Options{})
	if err != nil {
		t.Fatal(err)
	}
	if !contains(got.Env, "LC_TIME=en_DK.UTF-8") || containsPrefix(got.Env, "SECRET_TOKEN=") {
		t.Errorf("Env from os.Environ: %q", got.Env)
	}
	got, err = Build(p, []GPU{{Index: 1, UUID: "GPU-b"}, {Index: 0, UUID: "GPU-a"}}, 9000, bins, "n1/chat/1/h", Options{Environ: []string{}})
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]string{
		"A_FIRST=1", "CUDA_DEVICE_ORDER=PCI_BUS_ID", "CUDA_VISIBLE_DEVICES=1,0", "HF_HOME=/cache",
		"PATH=/opt/engine/bin", "POOL_MANAGERD_ENGINE=n1/chat/1/h",
	}, got.Env); diff != "" {
		t.Errorf("Env with empty Environ (-want +got):\n%s", diff)
	}
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

func containsPrefix(list []string, prefix string) bool {
	for _, x := range list {
		if strings.HasPrefix(x, prefix) {
			return true
		}
	}
	return false
}

func TestBuildErrors(t *testing.T) {
	bins, _ := fakeBinaries(t)
	pool := func() *schema.Pool {
		return &schema.Pool{
			ID: "p", Engine: schema.EngineLlamaCpp, Model: schema.Model{Path: "/m.gguf", Ctx: 4096},
			Devices: []int{0, 1},
		}
	}
	two := []GPU{{Index: 0, UUID: "GPU-a"}, {Index: 1, UUID: "GPU-b"}}
	tests := []struct {
		name   string
		modify func(p *schema.Pool)
		gpus   []GPU
		port   int
		bins   Binaries
		marker string
		want   string
	}{
		{name: "too few GPUs", gpus: two[:1], want: "1 GPUs given for a mask of 2 devices"},
		{name: "GPUs out of order", gpus: []GPU{two[1], two[0]}, want: "GPU 1 given for device 0"},
		{name: "no UUID", gpus: []GPU{{Index: 0, UUID: "GPU-a"}, {Index: 1, UUID: ""}}, want: "GPU 1 has no UUID"},
		{name: "no port", port: -1, want: "port -1 out of range"},
		{name: "port differs from the pool's", modify: func(p *schema.Pool) { p.Port = 8080 }, want: "the pool names port 8080"},
		{name: "no marker", marker: "-", want: "no engine marker"},
		{name: "managed env", modify: func(p *schema.Pool) { p.Env = map[string]string{"CUDA_VISIBLE_DEVICES": "0"} }, want: "env CUDA_VISIBLE_DEVICES is set by pool-managerd"},
		{name: "marker env", modify: func(p *schema.Pool) { p.Env = map[string]string{engine.MarkerEnv: "x"} }, want: "env POOL_MANAGERD_ENGINE is set"},
		{name: "split length", modify: func(p *schema.Pool) { p.Split = []float64{1} }, want: "split [1] for 2 devices"},
		{name: "unknown engine", modify: func(p *schema.Pool) { p.Engine = "ollama" }, want: `unknown engine "ollama"`},
		{name: "missing binary", bins: Binaries{LlamaCpp: "/nonexistent/llama-server"}, want: `llamacpp engine binary "/nonexistent/llama-server": no such file`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			p := pool()
			if tc.modify != nil {
				tc.modify(p)
			}
			gpus, port, b, marker := two, 9000, bins, "n/p/1/h"
			if tc.gpus != nil {
				gpus = tc.gpus
			}
			if tc.port != 0 {
				port = tc.port
			}
			if tc.bins != (Binaries{}) {
				b = tc.bins
			}
			if tc.marker == "-" {
				marker = ""
			}
			_, err := Build(p, gpus, port, b, marker, Options{Environ: []string{}})
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Build error %v, want one containing %q", err, tc.want)
			}
			if !strings.HasPrefix(err.Error(), "pool p: ") {
				t.Errorf("error %q does not name the pool", err)
			}
		})
	}
}

func TestCheck(t *testing.T) {
	dir := t.TempDir()
	write := func(name string, mode os.FileMode) string {
		path := filepath.Join(dir, name)
		if err := os.WriteFile(path, []byte("#!/bin/sh\n"), mode); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(path, mode); err != nil { // umask
			t.Fatal(err)
		}
		return path
	}
	exe := write("llama-server", 0o755)
	plain := write("vllm", 0o644)
	if err := os.Mkdir(filepath.Join(dir, "tgi-dir"), 0o755); err != nil {
		t.Fatal(err)
	}
	t.Setenv("PATH", dir)

	tests := []struct {
		name    string
		bins    Binaries
		engines []schema.Engine
		want    []string // substrings of the error; none means no error
	}{
		{name: "executable by path", bins: Binaries{LlamaCpp: exe}, engines: []schema.Engine{schema.EngineLlamaCpp}},
		{name: "default name found in PATH", engines: []schema.Engine{schema.EngineLlamaCpp, schema.EngineLlamaCpp}},
		{name: "engines not asked for are not checked", bins: Binaries{VLLM: plain}, engines: []schema.Engine{schema.EngineLlamaCpp}},
		{name: "nothing asked", bins: Binaries{VLLM: plain}},
		{
			name: "not executable", bins: Binaries{VLLM: plain}, engines: []schema.Engine{schema.EngineVLLM},
			want: []string{`vllm engine binary "` + plain + `": not executable (mode -rw-r--r--)`, "configure the vllm binary"},
		},
		{
			name: "default not in PATH", engines: []schema.Engine{schema.EngineTGI},
			want: []string{`tgi engine binary "text-generation-launcher": not found in PATH`},
		},
		{
			name: "name not in PATH", bins: Binaries{VLLM: "vllm"}, engines: []schema.Engine{schema.EngineVLLM},
			want: []string{`vllm engine binary "vllm": not found in PATH`}, // not executable: LookPath skips it
		},
		{
			name: "missing file", bins: Binaries{TGI: filepath.Join(dir, "nope")}, engines: []schema.Engine{schema.EngineTGI},
			want: []string{"nope\": no such file"},
		},
		{
			name: "directory", bins: Binaries{TGI: filepath.Join(dir, "tgi-dir")}, engines: []schema.Engine{schema.EngineTGI},
			want: []string{"tgi-dir\": is a directory"},
		},
		{
			name: "every problem reported", bins: Binaries{VLLM: plain}, engines: []schema.Engine{schema.EngineVLLM, schema.EngineTGI, schema.EngineLlamaCpp},
			want: []string{"vllm engine binary", "tgi engine binary"},
		},
		{name: "unknown engine", engines: []schema.Engine{"ollama"}, want: []string{`unknown engine "ollama"`}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.bins.Check(tc.engines...)
			if len(tc.want) == 0 {
				if err != nil {
					t.Fatalf("Check: %v", err)
				}
				return
			}
			if err == nil {
				t.Fatalf("Check passed, want an error containing %q", tc.want)
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("Check error %q does not contain %q", err, w)
				}
			}
			if strings.Contains(err.Error(), "engine binary") && !errors.Is(err, ErrBinary) {
				t.Errorf("Check error %v does not wrap ErrBinary", err)
			}
		})
	}

	// Path resolves a name in PATH to an absolute path, a relative path too.
	got, err := Binaries{}.Path(schema.EngineLlamaCpp)
	if err != nil || got != exe {
		t.Errorf("Path = %q, %v; want %q", got, err, exe)
	}
	t.Chdir(dir)
	got, err = Binaries{LlamaCpp: "./llama-server"}.Path(schema.EngineLlamaCpp)
	if err != nil || got != exe {
		t.Errorf("Path(./llama-server) = %q, %v; want %q", got, err, exe)
	}
}

func TestHealthStyleString(t *testing.T) {
	for h, want := range map[HealthStyle]string{LlamaServer: "llama-server", RefuseUntilLoaded: "refuse-until-loaded", RefuseThenWarmUp: "refuse-then-warm-up", 0: "HealthStyle(0)"} {
		if got := h.String(); got != want {
			t.Errorf("%d.String() = %q, want %q", int(h), got, want)
		}
	}
}

func TestArgv(t *testing.T) {
	c := Command{Path: "/bin/x", Args: []string{"a", "b"}}
	if diff := cmp.Diff([]string{"/bin/x", "a", "b"}, c.Argv()); diff != "" {
		t.Error(diff)
	}
}

// A llama-server whose help lacks --fit (a build older than about December
// 2025) is started without it, with a warning; one whose help names it, or
// whose help is unknown, gets --fit off.
func TestBuildLeavesOutFlagsTheBinaryLacks(t *testing.T) {
	bins, _ := fakeBinaries(t)
	p := &schema.Pool{ID: "chat", Node: "n1", Engine: schema.EngineLlamaCpp,
		Model: schema.Model{Path: "/models/m.gguf", Ctx: 2048}, Devices: []int{0}}
	old := caps.FromHelp("/bin/llama-server", "version: 6789 (fa4e0b2c)", "-c, --ctx-size N\n-ngl, --n-gpu-layers N\n")
	current := caps.FromHelp("/bin/llama-server", "version: 0 (unknown)", "-c, --ctx-size N\n-fit, --fit [on|off]\n")
	unknown := caps.FromHelp("/bin/llama-server", "", "usage: nothing here\n")
	for _, tt := range []struct {
		name    string
		caps    *caps.Caps
		wantFit bool
	}{
		{"not asked", nil, true},
		{"a build with --fit", &current, true},
		{"a build without --fit", &old, false},
		{"a help that names nothing", &unknown, true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			got, err := Build(p, []GPU{{Index: 0, UUID: "GPU-a"}}, 9000, bins, "n1/chat/1/h", Options{Environ: environ, Caps: tt.caps})
			if err != nil {
				t.Fatal(err)
			}
			hasFit := slices.Contains(got.Args, "--fit")
			if hasFit != tt.wantFit {
				t.Errorf("args %q: --fit passed %v, want %v", got.Args, hasFit, tt.wantFit)
			}
			if warned := len(got.Warnings) > 0; warned == tt.wantFit {
				t.Errorf("warnings %q with --fit %v", got.Warnings, hasFit)
			}
			if !tt.wantFit && !strings.Contains(got.Warnings[0], "has no --fit") {
				t.Errorf("warning %q", got.Warnings[0])
			}
			if !slices.Contains(got.Args, "--split-mode") || !slices.Contains(got.Args, "--n-gpu-layers") {
				t.Errorf("args %q lost a preset flag", got.Args)
			}
		})
	}
}

func TestProbe(t *testing.T) {
	env := []string{"PATH=/bin", "SECRET=x", "LC_ALL=C"}
	for _, tt := range []struct {
		engine schema.Engine
		help   []string
	}{
		{schema.EngineLlamaCpp, []string{"--help"}},
		{schema.EngineVLLM, []string{"serve", "--help=all"}},
		{schema.EngineTGI, []string{"--help"}},
	} {
		p := Probe(tt.engine, env)
		if !slices.Equal(p.Help, tt.help) || !slices.Equal(p.Env, []string{"PATH=/bin", "LC_ALL=C"}) {
			t.Errorf("%s: %+v", tt.engine, p)
		}
	}
}
