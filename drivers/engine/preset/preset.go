// Package preset turns a pool into the command line and environment of its
// engine process: llama.cpp's llama-server, vLLM, TGI's
// text-generation-launcher or SGLang (python -m sglang.launch_server). It does no I/O beyond finding the engine binaries
// (exec.LookPath, os.Stat); starting the process is the supervisor's job.
//
// Every engine gets, whatever the pool says:
//
//   - CUDA_DEVICE_ORDER=PCI_BUS_ID, so that CUDA numbers GPUs as NVML does;
//   - CUDA_VISIBLE_DEVICES = the pool's masked GPUs in the order of its
//     devices (and of its split): GPU UUIDs for llama.cpp and TGI, NVML
//     indices for vLLM (which parses the entries as integers and crashes on
//     UUIDs before v0.24) and SGLang;
//   - the engine marker (engine.MarkerEnv), by which a scan of /proc finds it;
//   - a bind to 127.0.0.1 on the given port, the model and its context size;
//   - the shard count (vLLM, TGI, SGLang) or tensor split (llama.cpp) of the mask;
//   - for vLLM, TGI and SGLang, the share of each GPU to take, derived from
//     the pool's vram (unless the pool's flags set it), and a graceful
//     shutdown that fits in the pool's stop grace (see sharded.go).
//
// The pool's own flags come last and its env after the managed variables
// (the schema's checks refuse flags and variables that would override them).
// Of pool-managerd's own environment only PATH, HOME, LANG, LC_*, TZ and
// TMPDIR reach the engine.
package preset

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"

	"github.com/poolmanagerd/pool-managerd/drivers/engine"
	"github.com/poolmanagerd/pool-managerd/drivers/engine/caps"
	"github.com/poolmanagerd/pool-managerd/drivers/engine/vram"
	"github.com/poolmanagerd/pool-managerd/schema"
)

// SimDirEnv tells a stand-in engine where the simulated node keeps its state
// (set only when Options.SimDir is).
const SimDirEnv = "POOL_MANAGERD_SIM_DIR"

// SimVRAMEnv tells a stand-in engine on a simulated node how much memory its
// pool needs in all (set only with SimDir).
const SimVRAMEnv = "POOL_MANAGERD_SIM_VRAM"

// Host is the address every engine binds to.
const Host = "127.0.0.1"

// HealthStyle is how an engine behaves before its model is loaded, which is
// what a health check during preload must expect.
type HealthStyle int

const (
	// LlamaServer engines listen at once and answer 503 ("Loading model")
	// on every route until the model is loaded, then GET /health gives 200.
	LlamaServer HealthStyle = iota + 1
	// RefuseUntilLoaded engines (vLLM, TGI) do not listen until the model is
	// loaded: a refused connection during preload is not a failure.
	RefuseUntilLoaded
	// RefuseThenWarmUp engines (SGLang) refuse connections while loading
	// weights, then answer /health with 503 and an empty body until their
	// warm-up request succeeds, then 200 (and 503 again while exiting).
	// /ping answers 200 all along and says nothing about readiness.
	RefuseThenWarmUp
)

// String names the style.
func (h HealthStyle) String() string {
	switch h {
	case LlamaServer:
		return "llama-server"
	case RefuseUntilLoaded:
		return "refuse-until-loaded"
	case RefuseThenWarmUp:
		return "refuse-then-warm-up"
	}
	return "HealthStyle(" + strconv.Itoa(int(h)) + ")"
}

// Command is how to start one pool's engine.
type Command struct {
	// Path is the engine binary, absolute.
	Path string
	// Args are the arguments after the program name (argv[1:]).
	Args []string
	// Env is the engine's whole environment, KEY=VALUE sorted by key.
	Env []string
	// Health says what the engine's health endpoint does while it loads.
	Health HealthStyle
	// Warnings are what a person should know of how the command differs
	// from the preset (a flag the engine build lacks, left out).
	Warnings []string
}

// Argv is the engine's whole command line: Path, then Args. It is what
// /proc/PID/cmdline of the started engine reads.
func (c Command) Argv() []string {
	return append([]string{c.Path}, c.Args...)
}

// The default engine binaries, looked up in PATH.
const (
	DefaultLlamaCpp = "llama-server"
	DefaultVLLM     = "vllm"
	DefaultTGI      = "text-generation-launcher"
	// DefaultSGLang is the Python interpreter that runs SGLang
	// (python3 -m sglang.launch_server): the one of the environment where
	// SGLang is installed.
	DefaultSGLang = "python3"
)

// SGLangModule is the module the SGLang interpreter runs (its "-m" argument).
const SGLangModule = "sglang.launch_server"

// Binaries are the engine programs. An empty field means the default name;
// a value without a slash is looked up in PATH, one with a slash is a path
// (made absolute). SGLang is a Python interpreter that has SGLang installed
// (a virtual environment's bin/python, say).
type Binaries struct {
	LlamaCpp, VLLM, TGI, SGLang string
}

// ErrBinary is wrapped by the errors of Binaries.Path and Binaries.Check.
var ErrBinary = errors.New("engine binary not usable")

// BinaryError says which engine binary is missing or not executable.
type BinaryError struct {
	Engine schema.Engine
	// Path is the configured value (a name or a path).
	Path string
	// Reason says what is wrong ("not found in PATH", "not executable", ...).
	Reason string
}

func (e *BinaryError) Error() string {
	return fmt.Sprintf("%s engine binary %q: %s; install it, or configure the %s binary with an absolute path or a name found in PATH",
		e.Engine, e.Path, e.Reason, e.Engine)
}

// Unwrap makes errors.Is(err, ErrBinary) true.
func (e *BinaryError) Unwrap() error { return ErrBinary }

// name returns the configured binary of engine e, or its default.
func (b Binaries) name(e schema.Engine) (string, error) {
	var v, def string
	switch e {
	case schema.EngineLlamaCpp:
		v, def = b.LlamaCpp, DefaultLlamaCpp
	case schema.EngineVLLM:
		v, def = b.VLLM, DefaultVLLM
	case schema.EngineTGI:
		v, def = b.TGI, DefaultTGI
	case schema.EngineSGLang:
		v, def = b.SGLang, DefaultSGLang
	default:
		return "", fmt.Errorf("unknown engine %q", e)
	}
	if v == "" {
		v = def
	}
	return v, nil
}

// Path returns the absolute path of engine e's binary, checking that it is
// an executable file.
func (b Binaries) Path(e schema.Engine) (string, error) {
	name, err := b.name(e)
	if err != nil {
		return "", err
	}
	fail := func(reason string) error { return &BinaryError{Engine: e, Path: name, Reason: reason} }
	path := name
	if !strings.Contains(name, "/") {
		p, err := exec.LookPath(name)
		if err != nil {
			return "", fail("not found in PATH")
		}
		path = p
	}
	abs, err := filepath.Abs(path)
	if err != nil {
		return "", fail(err.Error())
	}
	fi, err := os.Stat(abs)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return "", fail("no such file")
	case err != nil:
		return "", fail(err.Error())
	case fi.IsDir():
		return "", fail("is a directory")
	case fi.Mode()&0o111 == 0:
		return "", fail("not executable (mode " + fi.Mode().Perm().String() + ")")
	}
	return abs, nil
}

// Check checks that the binary of each engine named exists and is
// executable; every problem is reported, joined.
func (b Binaries) Check(engines ...schema.Engine) error {
	var errs []error
	seen := map[schema.Engine]bool{}
	for _, e := range engines {
		if seen[e] {
			continue
		}
		seen[e] = true
		if _, err := b.Path(e); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// GPU is one GPU of a pool's device mask.
type GPU struct {
	// Index is the NVML index (PCI bus order).
	Index int
	// UUID is the GPU's UUID ("GPU-...").
	UUID string
	// Total is the GPU's memory in bytes; 0 when unknown, and then vLLM,
	// TGI and SGLang get no memory fraction (they take their default).
	Total uint64
}

// Options are the inputs of Build that do not come from the pool.
type Options struct {
	// SimDir, when set, is passed to the engine as POOL_MANAGERD_SIM_DIR: the
	// stand-in engine claims memory on the simulated node kept there.
	SimDir string
	// StateDir, when set, is passed to the engine as POOL_MANAGERD_STATE_DIR.
	StateDir string
	// SimVRAM, with SimDir, is passed as POOL_MANAGERD_SIM_VRAM: the pool's
	// VRAM need, which the stand-in engine holds on the simulated GPUs.
	SimVRAM uint64
	// Environ is pool-managerd's environment, from which PATH, HOME, LANG,
	// LC_*, TZ and TMPDIR are passed on; nil means os.Environ().
	Environ []string
	// Caps, when set, is what the engine binary said of itself (package
	// caps): a preset flag it does not take is left out. nil: every preset
	// flag is passed.
	Caps *caps.Caps
}

// supports reports whether the engine binary is known to take an optional
// flag (vLLM's --shutdown-timeout, which builds before v0.18 reject): only
// when its help was read and names the flag.
func (o Options) supports(flag string) bool {
	return o.Caps != nil && o.Caps.Known && o.Caps.Has(flag)
}

// Probe is how to ask engine e's binary what it supports: its --help (vLLM:
// serve --help=all) and --version, run with the environment an engine gets
// of pool-managerd's (environ; nil means os.Environ()).
func Probe(e schema.Engine, environ []string) caps.Probe {
	if environ == nil {
		environ = os.Environ()
	}
	var env []string
	for _, kv := range environ {
		if k, _, ok := strings.Cut(kv, "="); ok && passed(k) {
			env = append(env, kv)
		}
	}
	p := caps.Probe{Help: []string{"--help"}, Version: []string{"--version"}, Env: env}
	if e == schema.EngineVLLM {
		p.Help = []string{"serve", "--help=all"}
	}
	return p
}

// FitWarning is the warning of a llama-server that lacks --fit.
const FitWarning = "llama-server %s has no --fit (a build older than about December 2025, version %q): " +
	"started without --fit off; its own fit check, if any, decides how many layers go to the GPU, " +
	"and pool-managerd's placement check is what finds layers left on the CPU"

// passed reports whether a variable of pool-managerd's environment reaches the engine.
func passed(key string) bool {
	switch key {
	case "PATH", "HOME", "LANG", "TZ", "TMPDIR":
		return true
	}
	return strings.HasPrefix(key, "LC_")
}

// managedEnv are the variables Build sets; a pool may not set them.
var managedEnv = []string{"CUDA_VISIBLE_DEVICES", "CUDA_DEVICE_ORDER", engine.MarkerEnv, SimDirEnv, engine.StateDirEnv, SimVRAMEnv}

// Build returns the command that runs pool p's engine on gpus (the pool's
// masked GPUs, in the order of p.Devices) listening on port, marked with
// marker (engine.Marker's value).
func Build(p *schema.Pool, gpus []GPU, port int, b Binaries, marker string, opts Options) (Command, error) {
	fail := func(format string, args ...any) (Command, error) {
		return Command{}, fmt.Errorf("pool %s: "+format, append([]any{p.ID}, args...)...)
	}
	if len(gpus) == 0 || len(gpus) != len(p.Devices) {
		return fail("%d GPUs given for a mask of %d devices", len(gpus), len(p.Devices))
	}
	for i, g := range gpus {
		if g.Index != p.Devices[i] {
			return fail("GPU %d given for device %d of the mask %v", g.Index, i, p.Devices)
		}
	}
	if port <= 0 || port > 65535 {
		return fail("port %d out of range", port)
	}
	if p.Port != 0 && port != p.Port {
		return fail("port %d given, but the pool names port %d", port, p.Port)
	}
	if marker == "" {
		return fail("no engine marker")
	}
	if p.Model.Path == "" || p.Model.Ctx <= 0 {
		return fail("model path %q, ctx %d", p.Model.Path, p.Model.Ctx)
	}
	for _, k := range managedEnv {
		if _, ok := p.Env[k]; ok {
			return fail("env %s is set by pool-managerd", k)
		}
	}
	path, err := b.Path(p.Engine)
	if err != nil {
		return fail("%w", err)
	}

	n := strconv.Itoa(len(gpus))
	portArg := strconv.Itoa(port)
	ctxArg := strconv.Itoa(p.Model.Ctx)
	cmd := Command{Path: path}
	var visible []string
	switch p.Engine {
	case schema.EngineLlamaCpp:
		cmd.Health = LlamaServer
		cmd.Args = []string{
			"--model", p.Model.Path,
			"--host", Host,
			"--port", portArg,
			"--ctx-size", ctxArg,
			"--n-gpu-layers", strconv.Itoa(vram.GPULayers),
		}
		if opts.Caps != nil && opts.Caps.Lacks("--fit") {
			cmd.Warnings = append(cmd.Warnings, fmt.Sprintf(FitWarning, path, opts.Caps.Version))
		} else {
			cmd.Args = append(cmd.Args, "--fit", "off")
		}
		cmd.Args = append(cmd.Args, "--split-mode", "layer")
		if len(gpus) > 1 {
			split := p.EffectiveSplit()
			if len(split) != len(gpus) {
				return fail("split %v for %d devices", split, len(gpus))
			}
			parts := make([]string, len(split))
			for i, r := range split {
				parts[i] = strconv.FormatFloat(r, 'g', -1, 64)
			}
			cmd.Args = append(cmd.Args, "--tensor-split", strings.Join(parts, ","))
		}
		visible, err = uuids(gpus)
	case schema.EngineVLLM:
		cmd.Health = RefuseUntilLoaded
		cmd.Args = []string{
			"serve", p.Model.Path,
			"--host", Host,
			"--port", portArg,
			"--tensor-parallel-size", n,
			"--max-model-len", ctxArg,
		}
		cmd.Args = append(cmd.Args, vllmArgs(p, gpus, path, opts)...)
		visible = indices(gpus)
	case schema.EngineTGI:
		cmd.Health = RefuseUntilLoaded
		cmd.Args = []string{
			"--model-id", p.Model.Path,
			"--hostname", Host,
			"--port", portArg,
			"--num-shard", n,
			"--max-total-tokens", ctxArg,
		}
		cmd.Args = append(cmd.Args, tgiArgs(p, gpus)...)
		visible, err = uuids(gpus)
	case schema.EngineSGLang:
		cmd.Health = RefuseThenWarmUp
		cmd.Args = []string{
			"-m", SGLangModule,
			"--model-path", p.Model.Path,
			"--host", Host,
			"--port", portArg,
			"--tp-size", n,
			"--context-length", ctxArg,
		}
		cmd.Args = append(cmd.Args, memoryArgs(p, gpus)...)
		visible = indices(gpus)
	default:
		return fail("unknown engine %q", p.Engine)
	}
	if err != nil {
		return fail("%w", err)
	}
	cmd.Args = append(cmd.Args, p.Flags...)

	env := map[string]string{}
	environ := opts.Environ
	if environ == nil {
		environ = os.Environ()
	}
	for _, kv := range environ {
		if k, v, ok := strings.Cut(kv, "="); ok && passed(k) {
			env[k] = v
		}
	}
	for k, v := range p.Env {
		env[k] = v
	}
	env["CUDA_VISIBLE_DEVICES"] = strings.Join(visible, ",")
	env["CUDA_DEVICE_ORDER"] = "PCI_BUS_ID"
	env[engine.MarkerEnv] = marker
	if opts.SimDir != "" {
		env[SimDirEnv] = opts.SimDir
		if opts.SimVRAM > 0 {
			env[SimVRAMEnv] = strconv.FormatUint(opts.SimVRAM, 10)
		}
	}
	if opts.StateDir != "" {
		env[engine.StateDirEnv] = opts.StateDir
	}
	keys := make([]string, 0, len(env))
	for k := range env {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	cmd.Env = make([]string, len(keys))
	for i, k := range keys {
		cmd.Env[i] = k + "=" + env[k]
	}
	return cmd, nil
}

// uuids lists the GPUs' UUIDs, which llama.cpp and TGI take in CUDA_VISIBLE_DEVICES.
func uuids(gpus []GPU) ([]string, error) {
	out := make([]string, len(gpus))
	for i, g := range gpus {
		if g.UUID == "" {
			return nil, fmt.Errorf("GPU %d has no UUID", g.Index)
		}
		out[i] = g.UUID
	}
	return out, nil
}
