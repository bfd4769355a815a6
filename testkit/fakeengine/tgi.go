package fakeengine

import (
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"strconv"
	"strings"
	"time"
)

const tgiVersion = "3.3.6"

// tgiFill is the share of a GPU that TGI fills at --cuda-memory-fraction 1.
const tgiFill = 0.9

// A small model of clap (TGI's launcher): "--name value" and "--name=value",
// every option also read from an environment variable of the same name in
// capitals (--model-id: MODEL_ID), an option given twice refused, errors
// with status 2.

type clapOpt struct {
	long  string
	short string
	typ   string // string, usize, u16, u32, f32, bool (a value: true or false), flag (no value)
}

var tgiOptions = func() []clapOpt {
	var opts []clapOpt
	add := func(typ string, names ...string) {
		for _, n := range names {
			opts = append(opts, clapOpt{long: n, typ: typ})
		}
	}
	add("string", "model-id", "revision", "quantize", "dtype", "kv-cache-dtype", "hostname", "shard-uds-path",
		"master-addr", "huggingface-hub-cache", "weights-cache-override", "rope-scaling", "otlp-endpoint",
		"otlp-service-name", "cors-allow-origin", "api-key", "tokenizer-config-path", "lora-adapters",
		"usage-stats", "payload-limit", "max-input-length", "cuda-graphs", "prefix-caching", "attention")
	add("usize", "validation-workers", "num-shard", "speculate", "max-concurrent-requests", "max-best-of",
		"max-stop-sequences", "max-top-n-tokens", "max-input-tokens", "max-total-tokens", "max-batch-prefill-tokens",
		"max-batch-total-tokens", "max-waiting-tokens", "max-batch-size", "max-client-batch-size",
		"graceful-termination-timeout")
	add("u16", "port", "prometheus-port")
	add("usize", "master-port")
	add("f32", "waiting-served-ratio", "cuda-memory-fraction", "rope-factor", "watermark-gamma", "watermark-delta")
	add("bool", "sharded")
	add("flag", "trust-remote-code", "disable-custom-kernels", "json-output", "disable-grammar-support",
		"enable-prefill-logprobs", "disable-usage-stats", "disable-crash-reports")
	opts = append(opts, clapOpt{long: "env", short: "e", typ: "flag"},
		clapOpt{long: "help", short: "h", typ: "flag"}, clapOpt{long: "version", short: "V", typ: "flag"})
	return opts
}()

func (o clapOpt) display() string {
	if o.typ == "flag" {
		return "--" + o.long
	}
	return fmt.Sprintf("--%s <%s>", o.long, strings.ToUpper(strings.ReplaceAll(o.long, "-", "_")))
}

func (o clapOpt) envName() string { return strings.ToUpper(strings.ReplaceAll(o.long, "-", "_")) }

const tgiUsage = "Usage: text-generation-launcher [OPTIONS]"

func clapError(msg string, usage bool) *UsageError {
	m := "error: " + msg + "\n\n"
	if usage {
		m += tgiUsage + "\n\n"
	}
	return &UsageError{Message: m + "For more information, try '--help'.", Code: 2}
}

// checkClapValue is clap's value parser for the option's type.
func checkClapValue(o clapOpt, v string) error {
	intErr := func(err error) error {
		var ne *strconv.NumError
		if errors.As(err, &ne) {
			switch {
			case v == "":
				return errors.New("cannot parse integer from empty string")
			case errors.Is(ne.Err, strconv.ErrRange):
				return errors.New("number too large to fit in target type")
			}
		}
		return errors.New("invalid digit found in string")
	}
	switch o.typ {
	case "usize":
		if _, err := strconv.ParseUint(v, 10, 64); err != nil {
			return intErr(err)
		}
	case "u16":
		n, err := strconv.ParseUint(v, 10, 64)
		if err != nil {
			return intErr(err)
		}
		if n > 65535 {
			return fmt.Errorf("%d is not in 0..=65535", n)
		}
	case "f32":
		if _, err := strconv.ParseFloat(v, 32); err != nil {
			return errors.New("invalid float literal")
		}
	case "bool":
		if v != "true" && v != "false" {
			return errors.New("\n  [possible values: true, false]")
		}
	}
	return nil
}

// TGIConfig is what the stand-in takes from text-generation-launcher.
type TGIConfig struct {
	ModelID        string
	Hostname       string
	Port           int
	NumShard       int
	NumShardSet    bool
	Sharded        string // "", "true" or "false"
	MaxInputTokens int
	MaxTotalTokens int
	APIKey         string
	// CUDAMemoryFraction is --cuda-memory-fraction (0 when not given).
	CUDAMemoryFraction float64
	// GracefulTimeout is --graceful-termination-timeout (default 90s): how
	// long a stop waits for the router and then for each shard.
	GracefulTimeout time.Duration
	Help            bool
	Version         bool
}

// ParseTGIArgs reads a text-generation-launcher command line (without the
// program name); getenv supplies the variables every option also reads.
func ParseTGIArgs(argv []string, getenv func(string) string) (TGIConfig, error) {
	cfg := TGIConfig{ModelID: "bigscience/bloom-560m", Hostname: "0.0.0.0", Port: 3000}
	byLong, byShort := map[string]clapOpt{}, map[string]clapOpt{}
	for _, o := range tgiOptions {
		byLong[o.long] = o
		if o.short != "" {
			byShort[o.short] = o
		}
	}
	values := map[string]string{}
	seen := map[string]bool{}
	for i := 0; i < len(argv); i++ {
		arg := argv[i]
		var o clapOpt
		var ok bool
		name, value, hasValue := arg, "", false
		switch {
		case strings.HasPrefix(arg, "--") && len(arg) > 2:
			name, value, hasValue = strings.Cut(arg[2:], "=")
			o, ok = byLong[name]
		case strings.HasPrefix(arg, "-") && len(arg) == 2:
			o, ok = byShort[arg[1:]]
		}
		if !ok {
			return cfg, clapError(fmt.Sprintf("unexpected argument '%s' found", arg), true)
		}
		if seen[o.long] {
			return cfg, clapError(fmt.Sprintf("the argument '%s' cannot be used multiple times", o.display()), true)
		}
		seen[o.long] = true
		if o.typ == "flag" {
			if hasValue {
				return cfg, clapError(fmt.Sprintf("unexpected value '%s' for '%s' found; no more were expected", value, o.display()), true)
			}
			values[o.long] = "true"
			continue
		}
		if !hasValue {
			if i+1 >= len(argv) || (strings.HasPrefix(argv[i+1], "-") && len(argv[i+1]) > 1) {
				return cfg, clapError(fmt.Sprintf("a value is required for '%s' but none was supplied", o.display()), false)
			}
			i++
			value = argv[i]
		}
		if err := checkClapValue(o, value); err != nil {
			return cfg, clapError(fmt.Sprintf("invalid value '%s' for '%s': %v", value, o.display(), err), false)
		}
		values[o.long] = value
	}
	if values["help"] != "" {
		cfg.Help = true
		return cfg, nil
	}
	if values["version"] != "" {
		cfg.Version = true
		return cfg, nil
	}
	for _, o := range tgiOptions {
		if _, given := values[o.long]; given || o.typ == "flag" {
			continue
		}
		if v := getenv(o.envName()); v != "" {
			if err := checkClapValue(o, v); err != nil {
				return cfg, clapError(fmt.Sprintf("invalid value '%s' for '%s': %v", v, o.display(), err), false)
			}
			values[o.long] = v
		}
	}
	if v, ok := values["model-id"]; ok {
		cfg.ModelID = v
	}
	if v, ok := values["hostname"]; ok {
		cfg.Hostname = v
	}
	num := func(name string, def int) int {
		if v, ok := values[name]; ok {
			n, _ := strconv.Atoi(v)
			return n
		}
		return def
	}
	cfg.Port = num("port", 3000)
	cfg.NumShard = num("num-shard", 0)
	_, cfg.NumShardSet = values["num-shard"]
	cfg.Sharded = values["sharded"]
	cfg.MaxInputTokens = num("max-input-tokens", 0)
	cfg.MaxTotalTokens = num("max-total-tokens", 0)
	cfg.APIKey = values["api-key"]
	cfg.GracefulTimeout = time.Duration(num("graceful-termination-timeout", 90)) * time.Second
	if v, ok := values["cuda-memory-fraction"]; ok {
		cfg.CUDAMemoryFraction, _ = strconv.ParseFloat(v, 64)
	}
	return cfg, nil
}

// tgiShards is the launcher's find_num_shards: visible is the number of
// CUDA_VISIBLE_DEVICES entries (-1 when unset).
func tgiShards(cfg TGIConfig, visible int) (int, error) {
	n := 1
	switch {
	case cfg.Sharded == "true" && !cfg.NumShardSet:
		if visible < 0 {
			return 0, errors.New("--num-shard and CUDA_VISIBLE_DEVICES/NVIDIA_VISIBLE_DEVICES are not set")
		}
		if visible <= 1 {
			return 0, fmt.Errorf("`sharded` is true but only found %d CUDA devices", visible)
		}
		n = visible
	case cfg.Sharded == "true" && cfg.NumShardSet:
		if cfg.NumShard <= 1 {
			return 0, errors.New("`sharded` is true but `num_shard` <= 1")
		}
		n = cfg.NumShard
	case cfg.Sharded == "false" && cfg.NumShardSet:
		if cfg.NumShard > 1 {
			return 0, errors.New("`sharded` is false but `num_shard` > 1")
		}
		n = cfg.NumShard
	case cfg.NumShardSet:
		n = cfg.NumShard
	case cfg.Sharded == "":
		if visible > 0 {
			n = visible
		}
	}
	if n < 1 {
		return 0, errors.New("`num_shard` cannot be < 1")
	}
	return n, nil
}

func tgiTime() string { return time.Now().UTC().Format("2006-01-02T15:04:05.000000Z") }

// runTGI plays text-generation-launcher: num-shard shard processes hold the
// GPU memory; the router's port opens only when they are warm.
func (p *process) runTGI(argv []string) int {
	cfg, err := ParseTGIArgs(argv, os.Getenv)
	if err != nil {
		return p.refuse(err)
	}
	if cfg.Help {
		fmt.Print("Text Generation Launcher (fake-engine)\n\n" + tgiUsage + "\n\n" + envHelp)
		return 0
	}
	if cfg.Version {
		fmt.Printf("text-generation-launcher %s\n", tgiVersion)
		return 0
	}
	logf := func(level, target, format string, a ...any) {
		p.stdout.printf("%s %5s %s: %s", tgiTime(), level, target, fmt.Sprintf(format, a...))
	}
	fatal := func(format string, a ...any) int {
		logf("ERROR", "text_generation_launcher", format, a...)
		p.stderr.printf("Error: %s", "ArgumentValidation(\""+fmt.Sprintf(format, a...)+"\")")
		return 1
	}
	logf("INFO", "text_generation_launcher", "Args { model_id: %q, hostname: %q, port: %d, num_shard: %v, max_input_tokens: %d, max_total_tokens: %d, .. }", cfg.ModelID, cfg.Hostname, cfg.Port, cfg.NumShard, cfg.MaxInputTokens, cfg.MaxTotalTokens)
	if cfg.MaxInputTokens > 0 && cfg.MaxTotalTokens > 0 && cfg.MaxInputTokens >= cfg.MaxTotalTokens {
		return fatal("`max_input_tokens`(%d) must be < `max_total_tokens`(%d)", cfg.MaxInputTokens, cfg.MaxTotalTokens)
	}
	gpus, err := p.gpus(false)
	if err != nil {
		p.stderr.printf("fake-engine: %v", err)
		return 1
	}
	visible := -1
	if cvd, set := os.LookupEnv("CUDA_VISIBLE_DEVICES"); set {
		visible = len(splitList(cvd))
	}
	n, err := tgiShards(cfg, visible)
	if err != nil {
		return fatal("%v", err)
	}
	logf("INFO", "download", "Starting check and download process for %s", cfg.ModelID)
	if !p.modelExists(cfg.ModelID) {
		logf("ERROR", "download", "Download encountered an error: OSError: %s is not a local folder and is not a valid model identifier", cfg.ModelID)
		p.stderr.printf("Error: DownloadError")
		return 1
	}
	logf("INFO", "download", "Successfully downloaded weights for %s", cfg.ModelID)
	// TGI fills about 90 % of each GPU × --cuda-memory-fraction.
	claims := p.evenClaims(n, gpus)
	if cfg.CUDAMemoryFraction > 0 {
		claims = p.fractionClaims(n, gpus, tgiFill*cfg.CUDAMemoryFraction)
	}
	specs := make([]shardSpec, n)
	for i := range specs {
		// Each shard in a process group of its own, as the launcher starts them.
		specs[i] = shardSpec{title: "text-generation-server", claims: claims[i], ownGroup: true}
		if visible >= 0 && i >= len(gpus) {
			specs[i].fail = "RuntimeError: CUDA error: invalid device ordinal"
		}
		if p.faults.FailLoad {
			specs[i].fail = fmt.Sprintf("RuntimeError: Error while loading weights (%s=1)", EnvFailLoad)
		}
		logf("INFO", "shard-manager: text_generation_launcher", "Starting shard rank=%d", i)
	}
	start := time.Now()
	// The router (text-generation-router) is a process of its own group
	// that binds the port only once the shards are warm.
	router := &shardSpec{title: "text-generation-router", ownGroup: true, router: true, routerArgs: argv, shards: n}
	return p.runSharded(specs, shardedEngine{
		host:       cfg.Hostname,
		port:       cfg.Port,
		router:     router,
		stageGrace: cfg.GracefulTimeout,
		loadFailed: func(reason string) {
			logf("ERROR", "text_generation_launcher", "Error when initializing model\n%s", reason)
			logf("ERROR", "text_generation_launcher", "Shard 0 failed to start")
			logf("INFO", "text_generation_launcher", "Shutting down shards")
			p.stderr.printf("Error: ShardCannotStart")
		},
		died: func(e shardExit) {
			logf("ERROR", "shard-manager: text_generation_launcher", "Shard process was signaled to shutdown with %s rank=%d", exitDescription(e), e.rank)
			logf("ERROR", "text_generation_launcher", "Shard %d crashed", e.rank)
			p.stderr.printf("Error: ShardFailed")
		},
		listening: func(port int) {
			for i := 0; i < n; i++ {
				logf("INFO", "shard-manager: text_generation_launcher", "Shard ready in %.2fs rank=%d", time.Since(start).Seconds(), i)
			}
			logf("INFO", "text_generation_launcher", "Starting Webserver")
			logf("INFO", "text_generation_router_v3", "backends/v3/src/lib.rs:125: Warming up model")
			logf("INFO", "text_generation_router::server", "router/src/server.rs:2400: Serving on %s:%d", cfg.Hostname, port)
			logf("INFO", "text_generation_router::server", "router/src/server.rs:2486: Connected")
		},
		bindFailed: func(err error) {
			logf("ERROR", "text_generation_launcher", "Webserver Crashed")
			logf("ERROR", "text_generation_router", "Address already in use (os error 98): %v", err)
			p.stderr.printf("Error: WebserverFailed")
		},
		stopping: func() {
			logf("INFO", "text_generation_launcher", "Terminating webserver")
			logf("INFO", "text_generation_launcher", "Waiting for webserver to gracefully shutdown")
			logf("INFO", "text_generation_launcher", "webserver terminated")
			logf("INFO", "text_generation_launcher", "Shutting down shards")
		},
		stopped: func() {
			for i := 0; i < n; i++ {
				logf("INFO", "shard-manager: text_generation_launcher", "shard terminated rank=%d", i)
			}
		},
		cudaError: func() {
			logf("ERROR", "text_generation_launcher", "Method Decode encountered an error.\nRuntimeError: CUDA error: out of memory\nCUDA kernel errors might be asynchronously reported at some other API call, so the stacktrace below might be incorrect.")
			logf("ERROR", "text_generation_launcher", "Shard 0 crashed")
			p.stderr.printf("Error: ShardFailed")
		},
	})
}

// tgiServer is TGI's router, as far as a supervisor needs it.
type tgiServer struct {
	cfg    TGIConfig
	shards int
	state  *engineState
}

func (s *tgiServer) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	path := r.URL.Path
	switch {
	case path == "/health":
		if s.state.healthy(time.Now()) {
			w.WriteHeader(http.StatusOK)
			return
		}
		writeJSON(w, http.StatusServiceUnavailable, map[string]string{"error": "unhealthy", "error_type": "healthcheck"})
	case path == "/info":
		writeJSON(w, http.StatusOK, map[string]any{
			"model_id": s.cfg.ModelID, "model_dtype": "torch.float16", "model_device_type": "cuda",
			"max_concurrent_requests": 128, "max_input_tokens": s.cfg.MaxInputTokens, "max_total_tokens": s.cfg.MaxTotalTokens,
			"version": tgiVersion, "sha": "fake-engine", "router": "text-generation-router", "num_shard": s.shards,
		})
	case path == "/metrics":
		w.Header().Set("Content-Type", "text/plain; version=0.0.4")
		fmt.Fprintf(w, "# TYPE tgi_queue_size gauge\ntgi_queue_size 0\n# TYPE tgi_batch_current_size gauge\ntgi_batch_current_size %d\n# TYPE tgi_request_count counter\ntgi_request_count 0\n", s.state.faultBusy(time.Now()))
	case r.Method == http.MethodPost && (path == "/generate" || path == "/" || path == "/v1/chat/completions" || path == "/v1/completions"):
		if s.cfg.APIKey != "" && r.Header.Get("Authorization") != "Bearer "+s.cfg.APIKey {
			writeJSON(w, http.StatusUnauthorized, map[string]string{"error": "Unauthorized", "error_type": "authorization"})
			return
		}
		io.Copy(io.Discard, io.LimitReader(r.Body, 1<<20))
		time.Sleep(s.state.faults.GenDelay)
		writeJSON(w, http.StatusOK, map[string]any{"generated_text": "Hello from fake-engine."})
	default:
		w.WriteHeader(http.StatusNotFound)
	}
}
