package fakeengine

import (
	"fmt"
	"io"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync/atomic"
	"time"
)

const sglangVersion = "0.5.6"

// sglangModule is what follows "-m" when SGLang's server is started:
// python -m sglang.launch_server.
const sglangModule = "sglang.launch_server"

// EnvWarmUp is how long the stand-in SGLang answers /health with 503 after
// its port opens, before its warm-up request is done (default 200ms).
const EnvWarmUp = "FAKE_ENGINE_WARMUP"

// defaultWarmUp is SGLang's warm-up when FAKE_ENGINE_WARMUP is unset.
const defaultWarmUp = 200 * time.Millisecond

// sglangOptions are the launch_server options the stand-in knows (a part of
// SGLang's ServerArgs; an option missing here is refused as unrecognized).
var sglangOptions = func() []pyOpt {
	var opts []pyOpt
	add := func(kind pyKind, typ string, names ...string) {
		opts = append(opts, pyOpt{names: names, kind: kind, typ: typ})
	}
	for _, n := range []string{"--tokenizer-path", "--host", "--load-format", "--dtype", "--kv-cache-dtype",
		"--quantization", "--served-model-name", "--chat-template", "--revision", "--device", "--api-key",
		"--log-level", "--attention-backend", "--sampling-backend", "--grammar-backend", "--schedule-policy",
		"--tool-call-parser", "--reasoning-parser", "--lora-paths", "--download-dir", "--file-storage-path",
		"--tokenizer-mode", "--speculative-algorithm", "--speculative-draft-model-path", "--json-model-override-args"} {
		add(pyValue, "str", n)
	}
	add(pyValue, "str", "--model-path", "--model")
	for _, names := range [][]string{{"--port"}, {"--tp-size", "--tp"}, {"--dp-size", "--dp"}, {"--pp-size"},
		{"--context-length"}, {"--max-running-requests"}, {"--max-total-tokens"}, {"--chunked-prefill-size"},
		{"--max-prefill-tokens"}, {"--random-seed"}, {"--base-gpu-id"}, {"--cuda-graph-max-bs"}, {"--stream-interval"},
		{"--watchdog-timeout"}, {"--cpu-offload-gb"}, {"--ep-size", "--ep"}} {
		add(pyValue, "int", names...)
	}
	for _, n := range []string{"--mem-fraction-static", "--schedule-conservativeness"} {
		add(pyValue, "float", n)
	}
	for _, n := range []string{"--trust-remote-code", "--skip-tokenizer-init", "--enable-metrics", "--disable-cuda-graph",
		"--disable-radix-cache", "--enable-torch-compile", "--enable-mixed-chunk", "--enable-dp-attention",
		"--disable-overlap-schedule", "--enable-memory-saver", "--log-requests", "--show-time-cost",
		"--enable-p2p-check", "--disable-custom-all-reduce", "--skip-server-warmup", "--help"} {
		add(pyFlag, "", n)
	}
	opts[len(opts)-1].names = []string{"--help", "-h"}
	return opts
}()

// SGLangConfig is what the stand-in takes from `python -m sglang.launch_server`.
type SGLangConfig struct {
	ModelPath        string
	Host             string
	Port             int
	TP               int
	DP               int
	ContextLength    int
	MemFraction      float64 // 0 when not given
	ServedModelName  string
	APIKey           string
	SkipServerWarmup bool
	Help             bool
}

const sglangUsage = "usage: launch_server.py [-h] --model-path MODEL_PATH [options]"

// IsSGLang reports whether argv (without the program name) starts SGLang's
// server: "-m sglang.launch_server ..." (or -msglang.launch_server).
func IsSGLang(argv []string) bool {
	return (len(argv) > 1 && argv[0] == "-m" && argv[1] == sglangModule) ||
		(len(argv) > 0 && argv[0] == "-m"+sglangModule)
}

// ParseSGLangArgs reads "-m sglang.launch_server [options]" (argv without the
// program name; the "-m" pair may be left out). Errors are argparse's, status 2.
func ParseSGLangArgs(argv []string) (SGLangConfig, error) {
	cfg := SGLangConfig{Host: "127.0.0.1", Port: 30000, TP: 1, DP: 1}
	switch {
	case len(argv) > 1 && argv[0] == "-m" && argv[1] == sglangModule:
		argv = argv[2:]
	case len(argv) > 0 && argv[0] == "-m"+sglangModule:
		argv = argv[1:]
	}
	a, err := parsePy(argv, sglangOptions, 0)
	if err != nil {
		return cfg, &UsageError{Message: sglangUsage + "\nlaunch_server.py: error: " + err.Error(), Code: 2}
	}
	if a.has("--help") {
		cfg.Help = true
		return cfg, nil
	}
	cfg.ModelPath = a.str("--model-path", "")
	if cfg.ModelPath == "" {
		return cfg, &UsageError{Message: sglangUsage + "\nlaunch_server.py: error: the following arguments are required: --model-path", Code: 2}
	}
	cfg.Host = a.str("--host", cfg.Host)
	cfg.Port = a.num("--port", cfg.Port)
	cfg.TP = a.num("--tp-size", 1)
	cfg.DP = a.num("--dp-size", 1)
	cfg.ContextLength = a.num("--context-length", 0)
	if v := a.str("--mem-fraction-static", ""); v != "" {
		cfg.MemFraction, _ = strconv.ParseFloat(v, 64)
	}
	cfg.ServedModelName = a.str("--served-model-name", cfg.ModelPath)
	cfg.APIKey = a.str("--api-key", "")
	cfg.SkipServerWarmup = a.has("--skip-server-warmup")
	return cfg, nil
}

func sglangTime() string { return time.Now().Format("2006-01-02 15:04:05") }

// runSGLang plays SGLang's server: one scheduler process per tensor-parallel
// rank holds the GPU memory; the port opens when they have loaded, then
// /health answers 503 (empty body) until the warm-up request is done, then
// 200, and 503 again while the server exits. /ping answers 200 all along.
func (p *process) runSGLang(argv []string) int {
	cfg, err := ParseSGLangArgs(argv)
	if err != nil {
		return p.refuse(err)
	}
	if cfg.Help {
		fmt.Print(sglangUsage + "\n\nSGLang's OpenAI-compatible server (fake-engine).\n\n" + envHelp)
		return 0
	}
	warmUp := defaultWarmUp
	if v := os.Getenv(EnvWarmUp); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil || d < 0 {
			p.stderr.printf("fake-engine: %s=%q: want a duration such as 500ms", EnvWarmUp, v)
			return 1
		}
		warmUp = d
	}
	if cfg.SkipServerWarmup {
		warmUp = 0
	}
	logf := func(format string, a ...any) {
		p.stdout.printf("[%s] %s", sglangTime(), fmt.Sprintf(format, a...))
	}
	fatal := func(lines ...string) int {
		p.stdout.printf("Traceback (most recent call last):\n  File \"<frozen runpy>\", line 198, in _run_module_as_main\n  File \"/usr/local/lib/python3.12/site-packages/sglang/launch_server.py\", line 14, in <module>\n    launch_server(server_args)")
		for _, l := range lines {
			p.stdout.printf("%s", l)
		}
		return 1
	}
	logf("server_args=ServerArgs(model_path='%s', host='%s', port=%d, tp_size=%d, dp_size=%d, context_length=%s, mem_fraction_static=%s, ...)",
		cfg.ModelPath, cfg.Host, cfg.Port, cfg.TP, cfg.DP, pyInt(cfg.ContextLength), pyFloat(cfg.MemFraction))
	gpus, err := p.gpus(false)
	if err != nil {
		p.stderr.printf("fake-engine: %v", err)
		return 1
	}
	if !p.modelExists(cfg.ModelPath) {
		return fatal(fmt.Sprintf("OSError: %s is not a local folder and is not a valid model identifier listed on 'https://huggingface.co/models'", cfg.ModelPath))
	}
	world := max(cfg.TP, 1) * max(cfg.DP, 1)
	if _, set := os.LookupEnv("CUDA_VISIBLE_DEVICES"); set && world > len(gpus) {
		return fatal(fmt.Sprintf("RuntimeError: CUDA error: invalid device ordinal (tp_size*dp_size=%d, visible GPUs %d)", world, len(gpus)))
	}
	claims := p.fractionClaims(world, gpus, cfg.MemFraction)
	specs := make([]shardSpec, world)
	for i := range specs {
		specs[i] = shardSpec{title: fmt.Sprintf("sglang::scheduler_TP%d", i), claims: claims[i]}
		if p.faults.FailLoad {
			specs[i].fail = fmt.Sprintf("RuntimeError: Failed to load model weights (%s=1)", EnvFailLoad)
		}
	}
	h := &sglangServer{cfg: cfg, state: p.state}
	return p.runSharded(specs, shardedEngine{
		host:    cfg.Host,
		port:    cfg.Port,
		handler: h,
		warmUp:  warmUp,
		loadFailed: func(reason string) {
			logf("Scheduler hit an exception: %s", reason)
			p.stdout.printf("Exception: Rank 0 scheduler is dead. Please check if there are relevant logs.")
		},
		died: func(e shardExit) {
			logf("Subprocess scheduler_TP%d crashed (%s): Received sigquit from a child process. It usually means the child failed.", e.rank, exitDescription(e))
		},
		listening: func(port int) {
			p.stdout.printf("INFO:     Started server process [%d]", p.pid)
			p.stdout.printf("INFO:     Waiting for application startup.")
			p.stdout.printf("INFO:     Application startup complete.")
			p.stdout.printf("INFO:     Uvicorn running on http://%s:%d (Press CTRL+C to quit)", cfg.Host, port)
		},
		warm: func() {
			logf("The server is fired up and ready to roll!")
		},
		bindFailed: func(err error) {
			p.stdout.printf("ERROR:    [Errno 98] error while attempting to bind on address ('%s', %d): address already in use", cfg.Host, cfg.Port)
		},
		stopping: func() {
			h.exiting.Store(true)
			p.stdout.printf("INFO:     Shutting down")
			p.stdout.printf("INFO:     Waiting for application shutdown.")
			p.stdout.printf("INFO:     Application shutdown complete.")
		},
		stopped: func() { p.stdout.printf("INFO:     Finished server process [%d]", p.pid) },
		cudaError: func() {
			logf("TP0 Scheduler hit an exception: RuntimeError: CUDA error: out of memory")
			p.stdout.printf("CUDA kernel errors might be asynchronously reported at some other API call, so the stacktrace below might be incorrect.")
		},
	})
}

func pyInt(n int) string {
	if n <= 0 {
		return "None"
	}
	return strconv.Itoa(n)
}

func pyFloat(f float64) string {
	if f <= 0 {
		return "None"
	}
	return strconv.FormatFloat(f, 'f', -1, 64)
}

// sglangServer is SGLang's HTTP server, as far as a supervisor needs it.
type sglangServer struct {
	cfg     SGLangConfig
	state   *engineState
	exiting atomic.Bool
}

func (s *sglangServer) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Server", "uvicorn")
	path := r.URL.Path
	if s.cfg.APIKey != "" && path != "/health" && path != "/health_generate" && path != "/ping" && path != "/metrics" &&
		r.Header.Get("Authorization") != "Bearer "+s.cfg.APIKey {
		writeJSON(w, http.StatusUnauthorized, map[string]string{"error": "Unauthorized"})
		return
	}
	switch {
	case path == "/ping":
		w.WriteHeader(http.StatusOK) // says nothing about readiness
	case path == "/health" || path == "/health_generate":
		if !s.exiting.Load() && s.state.healthy(time.Now()) {
			w.WriteHeader(http.StatusOK)
		} else {
			w.WriteHeader(http.StatusServiceUnavailable)
		}
	case path == "/get_server_info" || path == "/server_info":
		writeJSON(w, http.StatusOK, map[string]any{"model_path": s.cfg.ModelPath, "tp_size": s.cfg.TP,
			"context_length": s.cfg.ContextLength, "mem_fraction_static": s.cfg.MemFraction, "version": sglangVersion})
	case path == "/get_model_info" || path == "/model_info":
		writeJSON(w, http.StatusOK, map[string]any{"model_path": s.cfg.ModelPath, "tokenizer_path": s.cfg.ModelPath, "is_generation": true})
	case path == "/v1/models":
		writeJSON(w, http.StatusOK, map[string]any{"object": "list", "data": []map[string]any{
			{"id": s.cfg.ServedModelName, "object": "model", "owned_by": "sglang", "root": s.cfg.ModelPath, "max_model_len": s.cfg.ContextLength}}})
	case path == "/metrics":
		w.Header().Set("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
		fmt.Fprintf(w, "# HELP sglang:num_running_reqs The number of running requests.\n# TYPE sglang:num_running_reqs gauge\nsglang:num_running_reqs{model_name=\"%s\"} %d\n", s.cfg.ServedModelName, s.state.faultBusy(time.Now()))
	case r.Method == http.MethodPost && (path == "/generate" || path == "/v1/completions" || path == "/v1/chat/completions"):
		io.Copy(io.Discard, io.LimitReader(r.Body, 1<<20))
		time.Sleep(s.state.faults.GenDelay)
		writeJSON(w, http.StatusOK, map[string]any{
			"id": "fake", "object": "text_completion", "created": time.Now().Unix(), "model": s.cfg.ServedModelName,
			"choices": []map[string]any{{"index": 0, "text": "Hello from fake-engine.", "finish_reason": "stop"}},
		})
	default:
		writeJSON(w, http.StatusNotFound, map[string]string{"detail": "Not Found"})
	}
}

// fractionClaims is what n workers hold when the engine is told a share of
// each GPU (vLLM --gpu-memory-utilization, SGLang --mem-fraction-static):
// that share of worker i's GPU, as the real engines take it whatever a pool
// declares. Without a fraction, a GPU of unknown size, or FAKE_ENGINE_VRAM
// set, it is evenClaims.
func (p *process) fractionClaims(n int, gpus []GPU, fraction float64) []map[int]uint64 {
	if _, set := os.LookupEnv(EnvVRAM); set || fraction <= 0 || p.faults.NoGPU {
		return p.evenClaims(n, gpus)
	}
	out := make([]map[int]uint64, n)
	for i := range out {
		out[i] = map[int]uint64{}
		if i >= len(gpus) || gpus[i].SimIndex < 0 {
			continue
		}
		if gpus[i].Total == 0 {
			return p.evenClaims(n, gpus)
		}
		out[i][gpus[i].SimIndex] = uint64(fraction * float64(gpus[i].Total))
	}
	if n > 0 {
		out[0] = p.withOutside(out[0])
	}
	return out
}

// sglangNotEnoughMemory is SGLang's error when a GPU has less free memory
// than its static fraction asks for.
func sglangNotEnoughMemory(gpu int, want, free uint64) string {
	return fmt.Sprintf("RuntimeError: Not enough memory on GPU %d (want %.2f GiB, %.2f GiB free). Please try to increase --mem-fraction-static.", gpu, gib(want), gib(free))
}

// sglangPrefix is how a scheduler process prefixes its log lines.
func sglangPrefix(rank int) string {
	return strings.Join([]string{"[", sglangTime(), " TP", strconv.Itoa(rank), "] "}, "")
}
