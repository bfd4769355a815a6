package fakeengine

import (
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"
)

// vllmVersion is the vLLM version the stand-in imitates unless
// FAKE_ENGINE_VLLM_VERSION names another.
const vllmVersion = "0.11.0"

// EnvVLLMVersion names the vLLM version the stand-in imitates: from 0.18 it
// knows --shutdown-timeout (older ones refuse it as unrecognized), from 0.24
// it takes full GPU UUIDs in CUDA_VISIBLE_DEVICES (older ones crash on any
// UUID; short ones still fail).
const EnvVLLMVersion = "FAKE_ENGINE_VLLM_VERSION"

// version is a release number, major.minor.patch.
type version [3]int

// parseVersion reads "0.24.1", "v0.18" or "0.11.0rc1" (the suffix is ignored).
func parseVersion(s string) (version, error) {
	var v version
	parts := strings.SplitN(strings.TrimPrefix(strings.TrimSpace(s), "v"), ".", 3)
	for i, part := range parts {
		end := 0
		for end < len(part) && part[end] >= '0' && part[end] <= '9' {
			end++
		}
		n, err := strconv.Atoi(part[:end])
		if err != nil {
			return v, fmt.Errorf("version %q: want major.minor.patch", s)
		}
		v[i] = n
	}
	return v, nil
}

func (v version) atLeast(o version) bool {
	for i := range v {
		if v[i] != o[i] {
			return v[i] > o[i]
		}
	}
	return true
}

func (v version) String() string { return fmt.Sprintf("%d.%d.%d", v[0], v[1], v[2]) }

// The vLLM releases whose behaviour the stand-in follows.
var (
	vllmShutdownTimeoutSince = version{0, 18, 0}
	vllmUUIDsSince           = version{0, 24, 0}
)

// vllmOptionsOf are the options vLLM v knows.
func vllmOptionsOf(v version) []pyOpt {
	opts := vllmOptions
	if v.atLeast(vllmShutdownTimeoutSince) {
		opts = append(append([]pyOpt(nil), opts...), pyOpt{names: []string{"--shutdown-timeout"}, kind: pyValue, typ: "int"})
	}
	return opts
}

// vllmHelp is what `vllm serve --help` (and --help=all) prints: every option
// v knows, as a capability probe reads it.
func vllmHelp(v version) string {
	var b strings.Builder
	b.WriteString(vllmUsage + "\n\nStart the vLLM OpenAI Compatible API server (fake-engine imitating vLLM " + v.String() + ").\n\noptions:\n")
	for _, o := range vllmOptionsOf(v) {
		b.WriteString("  " + strings.Join(o.names, ", ") + "\n")
	}
	return b.String() + "\n" + envHelp
}

// vllmOptions are the `vllm serve` options the stand-in knows (a good part
// of vLLM's; an option missing here is refused as unrecognized).
var vllmOptions = func() []pyOpt {
	var opts []pyOpt
	add := func(kind pyKind, typ string, names ...string) {
		opts = append(opts, pyOpt{names: names, kind: kind, typ: typ})
	}
	choice := func(name string, choices ...string) {
		opts = append(opts, pyOpt{names: []string{name}, kind: pyValue, typ: "str", choices: choices})
	}
	for _, n := range []string{"--host", "--uds", "--model", "--tokenizer", "--revision", "--code-revision",
		"--tokenizer-revision", "--tokenizer-mode", "--download-dir", "--load-format", "--config-format",
		"--kv-cache-dtype", "--api-key", "--chat-template", "--response-role", "--ssl-keyfile", "--ssl-certfile",
		"--root-path", "--middleware", "--tool-call-parser", "--reasoning-parser", "--generation-config",
		"--override-generation-config", "--hf-overrides", "--speculative-config", "--kv-transfer-config",
		"--limit-mm-per-prompt", "--mm-processor-kwargs", "--chat-template-content-format", "--allowed-origins",
		"--allowed-methods", "--allowed-headers", "--config", "--device", "--guided-decoding-backend",
		"--structured-outputs-config", "--override-pooler-config", "--task", "--runner", "--convert",
		"--worker-cls", "--log-config-file", "--kv-offloading-backend", "--hf-config-path", "--hf-token",
		"--data-parallel-address", "--data-parallel-backend", "--pooler-config", "--tool-parser-plugin",
		"--otlp-traces-endpoint", "--collect-detailed-traces", "--scheduling-policy", "--enable-ssl-refresh",
		"--logits-processors", "--max-cudagraph-capture-size", "--cuda-graph-sizes", "--attention-backend"} {
		add(pyValue, "str", n)
	}
	add(pyValue, "str", "--quantization", "-q")
	add(pyValue, "str", "--compilation-config", "-O")
	add(pyMulti, "str", "--served-model-name")
	add(pyMulti, "str", "--lora-modules")
	choice("--dtype", "auto", "half", "float16", "bfloat16", "float", "float32")
	choice("--uvicorn-log-level", "debug", "info", "warning", "error", "critical", "trace")
	choice("--distributed-executor-backend", "ray", "mp", "uni", "external_launcher")
	for _, names := range [][]string{{"--port"}, {"--tensor-parallel-size", "-tp"}, {"--pipeline-parallel-size", "-pp"},
		{"--data-parallel-size", "-dp"}, {"--data-parallel-size-local", "-dpl"}, {"--data-parallel-rank", "-dpr"},
		{"--data-parallel-start-rank", "-dpr-start"}, {"--data-parallel-rpc-port", "-dpp"}, {"--api-server-count", "-asc"},
		{"--max-num-seqs"}, {"--block-size"}, {"--seed"}, {"--max-logprobs"}, {"--max-log-len"},
		{"--max-parallel-loading-workers"}, {"--max-seq-len-to-capture"}, {"--num-gpu-blocks-override"},
		{"--max-num-partial-prefills"}, {"--max-long-partial-prefills"}, {"--max-cpu-loras"}, {"--max-loras"},
		{"--max-lora-rank"}, {"--num-scheduler-steps"}, {"--num-lookahead-slots"}} {
		add(pyValue, "int", names...)
	}
	add(pyValue, "hint", "--max-model-len")
	add(pyValue, "hint", "--max-num-batched-tokens")
	add(pyValue, "hint", "--kv-cache-memory-bytes")
	for _, n := range []string{"--gpu-memory-utilization", "--swap-space", "--cpu-offload-gb", "--kv-offloading-size"} {
		add(pyValue, "float", n)
	}
	for _, n := range []string{"--trust-remote-code", "--enforce-eager", "--disable-log-stats", "--disable-log-requests",
		"--enable-log-requests", "--enable-auto-tool-choice", "--disable-custom-all-reduce", "--enable-lora",
		"--disable-sliding-window", "--disable-frontend-multiprocessing", "--enable-request-id-headers",
		"--disable-fastapi-docs", "--enable-prompt-tokens-details", "--enable-server-load-tracking", "--headless",
		"--skip-tokenizer-init", "--disable-uvicorn-access-log", "--enable-force-include-usage", "--enable-sleep-mode",
		"--enable-log-outputs", "--return-tokens-as-token-ids", "--enable-tokenizer-info-endpoint",
		"--disable-cascade-attn", "--enable-chunked-prefill-legacy", "--help"} {
		add(pyFlag, "", n)
	}
	opts[len(opts)-1].names = []string{"--help", "-h"}
	add(pyFlag, "", "--enable-expert-parallel", "-ep")
	for _, n := range []string{"--enable-prefix-caching", "--enable-chunked-prefill", "--async-scheduling", "--enable-dbo"} {
		add(pyBoolOpt, "", n)
	}
	return opts
}()

// VLLMConfig is what the stand-in takes from `vllm serve`.
type VLLMConfig struct {
	Model            string
	Host             string
	Port             int
	TensorParallel   int
	PipelineParallel int
	MaxModelLen      int
	ServedModelNames []string
	APIKey           string
	// GPUMemoryUtilization is --gpu-memory-utilization (0 when not given).
	GPUMemoryUtilization float64
	Help                 bool
}

const vllmUsage = "usage: vllm serve [model_tag] [options]"

// ParseVLLMArgs reads `vllm serve MODEL [options]` (argv without the program
// name, starting with "serve") as the default vLLM version does. Errors are
// argparse's, status 2.
func ParseVLLMArgs(argv []string) (VLLMConfig, error) {
	v, _ := parseVersion(vllmVersion)
	return ParseVLLMArgsOf(argv, v)
}

// ParseVLLMArgsOf reads `vllm serve MODEL [options]` as vLLM v does.
func ParseVLLMArgsOf(argv []string, v version) (VLLMConfig, error) {
	cfg := VLLMConfig{Port: 8000, TensorParallel: 1, PipelineParallel: 1}
	if len(argv) == 0 || argv[0] != "serve" {
		if len(argv) > 0 && (argv[0] == "--version" || argv[0] == "-v") {
			return cfg, &UsageError{Message: v.String(), Code: 0}
		}
		msg := "the following arguments are required: subparser"
		if len(argv) > 0 {
			msg = fmt.Sprintf("argument subparser: invalid choice: '%s' (choose from 'chat', 'complete', 'serve', 'bench', 'collect-env', 'run-batch')", argv[0])
		}
		return cfg, &UsageError{Message: "usage: vllm [-h] [-v] {chat,complete,serve,bench,collect-env,run-batch} ...\nvllm: error: " + msg, Code: 2}
	}
	if slices.Contains(argv[1:], "--help=all") || slices.Contains(argv[1:], "--help") || slices.Contains(argv[1:], "-h") {
		cfg.Help = true
		return cfg, nil
	}
	a, err := parsePy(argv[1:], vllmOptionsOf(v), 1)
	if err != nil {
		return cfg, &UsageError{Message: vllmUsage + "\nvllm serve: error: " + err.Error(), Code: 2}
	}
	if a.has("--help") {
		cfg.Help = true
		return cfg, nil
	}
	if len(a.positionals) > 0 {
		cfg.Model = a.positionals[0]
	} else {
		cfg.Model = a.str("--model", "")
	}
	if cfg.Model == "" {
		return cfg, &UsageError{Message: vllmUsage + "\nvllm serve: error: the following arguments are required: model_tag", Code: 2}
	}
	cfg.Host = a.str("--host", "")
	cfg.Port = a.num("--port", 8000)
	cfg.TensorParallel = a.num("--tensor-parallel-size", 1)
	cfg.PipelineParallel = a.num("--pipeline-parallel-size", 1)
	cfg.MaxModelLen = a.num("--max-model-len", 0)
	cfg.ServedModelNames = a.values["--served-model-name"]
	cfg.APIKey = a.str("--api-key", os.Getenv("VLLM_API_KEY"))
	if v := a.str("--gpu-memory-utilization", ""); v != "" {
		cfg.GPUMemoryUtilization, _ = strconv.ParseFloat(v, 64)
	}
	return cfg, nil
}

func vllmTime() string { return time.Now().Format("01-02 15:04:05") }

// runVLLM plays `vllm serve`: tensor-parallel × pipeline-parallel worker
// processes hold the GPU memory; the port opens only when they are loaded.
func (p *process) runVLLM(argv []string) int {
	ver, err := parseVersion(vllmVersion)
	if s := os.Getenv(EnvVLLMVersion); s != "" {
		ver, err = parseVersion(s)
	}
	if err != nil {
		p.stderr.printf("fake-engine: %s: %v", EnvVLLMVersion, err)
		return 1
	}
	cfg, err := ParseVLLMArgsOf(argv, ver)
	if err != nil {
		var ue *UsageError
		if errors.As(err, &ue) {
			if ue.Code == 0 {
				fmt.Println(ue.Message)
				return 0
			}
			p.stderr.printf("%s", ue.Message)
			return ue.Code
		}
		return 1
	}
	if cfg.Help {
		fmt.Print(vllmHelp(ver))
		return 0
	}
	info := func(file, format string, a ...any) {
		p.stdout.printf("INFO %s [%s] %s", vllmTime(), file, fmt.Sprintf(format, a...))
	}
	fatal := func(lines ...string) int {
		p.stdout.printf("Traceback (most recent call last):\n  File \"/usr/local/bin/vllm\", line 10, in <module>\n    sys.exit(main())")
		for _, l := range lines {
			p.stdout.printf("%s", l)
		}
		return 1
	}
	info("api_server.py:1896", "vLLM API server version %s", ver)
	info("utils.py:328", "non-default args: {'model_tag': '%s', 'host': '%s', 'port': %d, 'tensor_parallel_size': %d}", cfg.Model, cfg.Host, cfg.Port, cfg.TensorParallel)
	// Before v0.24 vLLM parses every entry with int(); from v0.24 it also
	// resolves full GPU UUIDs, but a short one still fails.
	uuids := ver.atLeast(vllmUUIDsSince)
	if uuids {
		if cvd, set := os.LookupEnv("CUDA_VISIBLE_DEVICES"); set {
			for _, entry := range splitList(cvd) {
				if _, err := strconv.Atoi(entry); err != nil && len(entry) != len("GPU-00000000-0000-0000-0000-000000000000") {
					return fatal(fmt.Sprintf("ValueError: invalid literal for int() with base 10: '%s'", entry))
				}
			}
		}
	}
	gpus, err := p.gpus(!uuids)
	if err != nil {
		if strings.HasPrefix(err.Error(), "invalid literal") {
			return fatal("ValueError: " + err.Error())
		}
		p.stderr.printf("fake-engine: %v", err)
		return 1
	}
	if !p.modelExists(cfg.Model) {
		return fatal(fmt.Sprintf("OSError: %s is not a local folder and is not a valid model identifier listed on 'https://huggingface.co/models'", cfg.Model))
	}
	world := max(cfg.TensorParallel, 1) * max(cfg.PipelineParallel, 1)
	if _, set := os.LookupEnv("CUDA_VISIBLE_DEVICES"); set && world > len(gpus) {
		return fatal(fmt.Sprintf("ValueError: The number of required GPUs exceeds the total number of available GPUs in the placement group. (world size %d, available GPUs %d)", world, len(gpus)))
	}
	maxLen := cfg.MaxModelLen
	if maxLen <= 0 {
		maxLen = llamaModelCtx
	}
	// vLLM takes --gpu-memory-utilization of each GPU, whatever a pool declares.
	claims := p.fractionClaims(world, gpus, cfg.GPUMemoryUtilization)
	workers := make([]shardSpec, world)
	for i := range workers {
		workers[i] = shardSpec{title: fmt.Sprintf("VLLM::Worker_TP%d", i), claims: claims[i]}
		if p.faults.FailLoad {
			workers[i].fail = fmt.Sprintf("RuntimeError: Failed to load model weights (%s=1)", EnvFailLoad)
		}
	}
	// API server → VLLM::EngineCore → VLLM::Worker_TP<n>; with one GPU the
	// EngineCore runs the model itself and holds the memory.
	specs := []shardSpec{{title: "VLLM::EngineCore", children: workers}}
	if world == 1 {
		specs[0] = workers[0]
		specs[0].title = "VLLM::EngineCore"
	}
	info("core.py:74", "Initializing a V1 LLM engine (v%s) with config: model='%s', tensor_parallel_size=%d, pipeline_parallel_size=%d, max_seq_len=%d", ver, cfg.Model, cfg.TensorParallel, cfg.PipelineParallel, maxLen)
	names := cfg.ServedModelNames
	if len(names) == 0 {
		names = []string{cfg.Model}
	}
	h := &vllmServer{cfg: cfg, names: names, maxLen: maxLen, state: p.state, version: ver.String()}
	return p.runSharded(specs, shardedEngine{
		host:    cfg.Host,
		port:    cfg.Port,
		handler: h,
		loadFailed: func(reason string) {
			p.stdout.printf("ERROR %s [core.py:700] EngineCore failed to start.\n%s", vllmTime(), reason)
			p.stdout.printf("RuntimeError: Engine core initialization failed. See root cause above. Failed core proc(s): {}")
		},
		died: func(e shardExit) {
			p.stdout.printf("ERROR %s [multiproc_executor.py:149] Worker proc VllmWorker-%d died unexpectedly (%s), shutting down executor.", vllmTime(), e.rank, exitDescription(e))
			p.stdout.printf("ERROR %s [core_client.py:564] Engine core proc EngineCore_DP0 died unexpectedly, shutting down client.", vllmTime())
		},
		listening: func(port int) {
			host := cfg.Host
			if host == "" {
				host = "0.0.0.0"
			}
			info("api_server.py:1971", "Starting vLLM API server 0 on http://%s:%d", host, port)
			info("launcher.py:36", "Available routes are:")
			info("launcher.py:44", "Route: /health, Methods: GET")
			p.stdout.printf("INFO:     Started server process [%d]", p.pid)
			p.stdout.printf("INFO:     Waiting for application startup.")
			p.stdout.printf("INFO:     Application startup complete.")
		},
		bindFailed: func(err error) {
			host := cfg.Host
			if host == "" {
				host = "0.0.0.0"
			}
			p.stdout.printf("ERROR:    [Errno 98] error while attempting to bind on address ('%s', %d): address already in use", host, cfg.Port)
		},
		stopping: func() {
			p.stdout.printf("INFO:     Shutting down")
			p.stdout.printf("INFO:     Waiting for application shutdown.")
			p.stdout.printf("INFO:     Application shutdown complete.")
		},
		stopped: func() { p.stdout.printf("INFO:     Finished server process [%d]", p.pid) },
		cudaError: func() {
			p.stdout.printf("(VllmWorker TP0 pid=%d) ERROR %s [multiproc_executor.py:671] WorkerProc hit an exception.", p.pid, vllmTime())
			p.stdout.printf("RuntimeError: CUDA error: out of memory\nCUDA kernel errors might be asynchronously reported at some other API call, so the stacktrace below might be incorrect.\nFor debugging consider passing CUDA_LAUNCH_BLOCKING=1\nCompile with `TORCH_USE_CUDA_DSA` to enable device-side assertions.")
			p.stdout.printf("ERROR %s [core.py:710] EngineCore encountered a fatal error.", vllmTime())
		},
	})
}

// vllmServer is vLLM's OpenAI-compatible server, as far as a supervisor
// needs it.
type vllmServer struct {
	cfg     VLLMConfig
	names   []string
	maxLen  int
	state   *engineState
	version string
}

func (s *vllmServer) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Server", "uvicorn")
	path := r.URL.Path
	if s.cfg.APIKey != "" && strings.HasPrefix(path, "/v1") &&
		r.Header.Get("Authorization") != "Bearer "+s.cfg.APIKey {
		writeJSON(w, http.StatusUnauthorized, map[string]string{"error": "Unauthorized"})
		return
	}
	switch {
	case path == "/health" || path == "/ping":
		if s.state.healthy(time.Now()) {
			w.WriteHeader(http.StatusOK)
		} else {
			w.WriteHeader(http.StatusServiceUnavailable)
		}
	case path == "/version":
		writeJSON(w, http.StatusOK, map[string]string{"version": s.version})
	case path == "/v1/models":
		var data []map[string]any
		for _, n := range s.names {
			data = append(data, map[string]any{"id": n, "object": "model", "owned_by": "vllm", "root": s.cfg.Model, "max_model_len": s.maxLen})
		}
		writeJSON(w, http.StatusOK, map[string]any{"object": "list", "data": data})
	case path == "/metrics":
		busy := s.state.faultBusy(time.Now())
		w.Header().Set("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
		fmt.Fprintf(w, "# HELP vllm:num_requests_running Number of requests in model execution batches.\n# TYPE vllm:num_requests_running gauge\nvllm:num_requests_running{engine=\"0\",model_name=\"%s\"} %d\n", s.names[0], busy)
		fmt.Fprintf(w, "# HELP vllm:num_requests_waiting Number of requests waiting to be processed.\n# TYPE vllm:num_requests_waiting gauge\nvllm:num_requests_waiting{engine=\"0\",model_name=\"%s\"} 0\n", s.names[0])
		fmt.Fprintf(w, "# HELP vllm:kv_cache_usage_perc KV-cache usage. 1 means 100 percent usage.\n# TYPE vllm:kv_cache_usage_perc gauge\nvllm:kv_cache_usage_perc{engine=\"0\",model_name=\"%s\"} 0.0\n", s.names[0])
	case r.Method == http.MethodPost && (path == "/v1/completions" || path == "/v1/chat/completions"):
		io.Copy(io.Discard, io.LimitReader(r.Body, 1<<20))
		time.Sleep(s.state.faults.GenDelay)
		writeJSON(w, http.StatusOK, map[string]any{
			"id": "cmpl-fake", "object": "text_completion", "created": time.Now().Unix(), "model": s.names[0],
			"choices": []map[string]any{{"index": 0, "text": "Hello from fake-engine.", "finish_reason": "stop"}},
			"usage":   map[string]int{"prompt_tokens": 8, "completion_tokens": 16, "total_tokens": 24},
		})
	default:
		writeJSON(w, http.StatusNotFound, map[string]string{"detail": "Not Found"})
	}
}
