package fakeengine

import (
	"errors"
	"fmt"
	"os"
	"regexp"
	"strconv"
	"strings"

	"github.com/poolmanagerd/pool-managerd/schema/llamaargs"
)

// UsageError is a command line the engine refuses: Message goes to stderr
// and the process exits with Code.
type UsageError struct {
	Message string
	Code    int
}

func (e *UsageError) Error() string { return e.Message }

// llama.cpp's defaults, as in common/common.h and tools/server.
const (
	llamaDefaultPort   = 8080
	llamaDefaultHost   = "127.0.0.1"
	llamaDefaultModel  = "models/7B/ggml-model-f16.gguf"
	llamaMaxDevices    = 16
	llamaDefaultSlots  = 4
	llamaModelCtx      = 4096 // the training context of the pretend model
	llamaLayers        = 33   // layers of the pretend model (32 repeating + output)
	llamaCommit        = "fa4e0b2c"
	llamaFitTargetMiB  = 1024
	llamaGPULayersAuto = -1
	llamaGPULayersAll  = -2
)

// LlamaConfig is what the stand-in takes from a llama-server command line.
type LlamaConfig struct {
	Host  string
	Port  int
	Model string
	// CtxSize 0 means the model's own context.
	CtxSize int
	// GPULayers is -1 for auto (the default), -2 for all, else a count;
	// GPULayersSet says the command line gave it.
	GPULayers    int
	GPULayersSet bool
	// TensorSplit are the proportions of -ts, by selected device.
	TensorSplit []float64
	SplitMode   string // none, layer, row
	MainGPU     int
	// Devices is -dev's list (nil: every visible GPU); DevicesArg is the
	// spelling used, for errors.
	Devices    []string
	DevicesArg string
	Fit        bool
	// FitTarget is the margin (MiB) fit leaves free on each device.
	FitTarget []int
	// Parallel is the number of slots (-1: auto).
	Parallel    int
	Metrics     bool
	Slots       bool
	APIKeys     []string
	Alias       string
	Help        bool
	Version     bool
	ListDevices bool
	// Build is the llama.cpp build number imitated (LlamaDefaultBuild
	// unless ParseLlamaArgsBuild was told another).
	Build int
}

var llamaTable = llamaargs.Default()

// ParseLlamaArgs reads a llama-server command line (without the program
// name) as llama-server does, options in order: --version and
// --list-devices act as soon as they are read; an unknown option, a missing
// value or a value the option's handler refuses is a *UsageError with
// llama-server's message and status 1.
func ParseLlamaArgs(argv []string) (LlamaConfig, error) {
	cfg := LlamaConfig{
		Host:      llamaDefaultHost,
		Port:      llamaDefaultPort,
		GPULayers: llamaGPULayersAuto,
		SplitMode: "layer",
		Fit:       true,
		Parallel:  -1,
		Slots:     true,
		Build:     LlamaDefaultBuild,
	}
	args, perr := llamaTable.ParseArgv(argv)
	is := func(a llamaargs.Arg, spelling string) bool { return a.Option == llamaTable.Find(spelling) }
	for _, a := range args {
		v := ""
		if len(a.Values) > 0 {
			v = a.Values[0]
		}
		var err error
		switch {
		case is(a, "--help"):
			cfg.Help = true
		case is(a, "--version"):
			cfg.Version = true
			return cfg, nil
		case is(a, "--list-devices"):
			cfg.ListDevices = true
			return cfg, nil
		case is(a, "--host"):
			cfg.Host = v
		case is(a, "--port"):
			cfg.Port, err = cppStoi(v)
		case is(a, "--model"):
			cfg.Model = v
		case is(a, "--ctx-size"):
			cfg.CtxSize, err = cppStoi(v)
		case is(a, "--n-gpu-layers"):
			cfg.GPULayersSet = true
			switch v {
			case "auto":
				cfg.GPULayers = llamaGPULayersAuto
			case "all":
				cfg.GPULayers = llamaGPULayersAll
			default:
				cfg.GPULayers, err = cppStoi(v)
			}
		case is(a, "--tensor-split"):
			cfg.TensorSplit, err = parseTensorSplit(v)
		case is(a, "--split-mode"):
			switch v {
			case "none", "layer", "row":
				cfg.SplitMode = v
			default:
				err = errors.New("invalid value")
			}
		case is(a, "--main-gpu"):
			cfg.MainGPU, err = cppStoi(v)
		case is(a, "--device"):
			cfg.Devices, cfg.DevicesArg = splitList(v), a.Spelling
		case is(a, "--fit"):
			cfg.Fit, err = parseOnOff(v)
		case is(a, "--fit-target"):
			cfg.FitTarget = nil
			for _, s := range splitList(v) {
				var n int
				if n, err = cppStoi(s); err != nil {
					break
				}
				cfg.FitTarget = append(cfg.FitTarget, n)
			}
		case is(a, "--parallel"):
			cfg.Parallel, err = cppStoi(v)
		case is(a, "--metrics"):
			cfg.Metrics = true
		case is(a, "--slots"):
			cfg.Slots = true
		case is(a, "--no-slots"):
			cfg.Slots = false
		case is(a, "--api-key"):
			cfg.APIKeys = append(cfg.APIKeys, splitList(v)...)
		case is(a, "--api-key-file"):
			var data []byte
			if data, err = os.ReadFile(v); err != nil {
				err = fmt.Errorf("failed to open file '%s'", v)
			} else {
				for _, line := range strings.Split(string(data), "\n") {
					if line = strings.TrimSpace(line); line != "" {
						cfg.APIKeys = append(cfg.APIKeys, line)
					}
				}
			}
		case is(a, "--alias"):
			cfg.Alias = v
		}
		if err != nil {
			return cfg, llamaHandlingError(a.Spelling, a.Option, err.Error())
		}
	}
	if perr != nil {
		var pe *llamaargs.ParseError
		if errors.As(perr, &pe) {
			if opt, ok := llamaTable.Lookup(pe.Arg); ok && strings.HasPrefix(pe.Message, "error while handling") {
				return cfg, &UsageError{Message: pe.Message + llamaOptionUsage(opt), Code: 1}
			}
			return cfg, &UsageError{Message: pe.Message, Code: 1}
		}
		return cfg, &UsageError{Message: perr.Error(), Code: 1}
	}
	return cfg, nil
}

// llamaHandlingError is llama-server's message for a value an option refuses.
func llamaHandlingError(arg string, opt *llamaargs.Option, reason string) *UsageError {
	return &UsageError{
		Message: fmt.Sprintf("error while handling argument \"%s\": %s", arg, reason) + llamaOptionUsage(opt),
		Code:    1,
	}
}

// llamaOptionUsage is the usage that follows a handling error.
func llamaOptionUsage(opt *llamaargs.Option) string {
	return "\n\nusage:\n" + llamaOptionLine(opt) + "\n\nto show complete usage, run with -h"
}

func llamaOptionLine(opt *llamaargs.Option) string {
	s := strings.Join(opt.Names, ", ")
	switch opt.Arity {
	case llamaargs.Value:
		s += " VALUE"
	case llamaargs.TwoValues:
		s += " VALUE1 VALUE2"
	}
	if opt.Arity != llamaargs.Removed {
		s += fmt.Sprintf("\n%40s(env: %s)", "", opt.EnvName())
	}
	return s
}

// cppStoi is std::stoi: leading spaces, a sign and at least one digit; what
// follows the digits is ignored. Its errors say "stoi", as libstdc++'s do.
func cppStoi(s string) (int, error) {
	t := strings.TrimLeft(s, " \t\n\r\f\v")
	i := 0
	if i < len(t) && (t[i] == '+' || t[i] == '-') {
		i++
	}
	j := i
	for j < len(t) && t[j] >= '0' && t[j] <= '9' {
		j++
	}
	if j == i {
		return 0, errors.New("stoi")
	}
	n, err := strconv.ParseInt(t[:j], 10, 32)
	if err != nil {
		return 0, errors.New("stoi")
	}
	return int(n), nil
}

var floatPrefix = regexp.MustCompile(`^[\s]*[+-]?((\d+\.?\d*|\.\d+)([eE][+-]?\d+)?|inf(inity)?|nan)`)

// cppStof is std::stof: the longest number at the start of s.
func cppStof(s string) (float64, error) {
	m := floatPrefix.FindString(strings.ToLower(s))
	if m == "" {
		return 0, errors.New("stof")
	}
	x, err := strconv.ParseFloat(strings.TrimSpace(m), 32)
	if err != nil {
		return 0, errors.New("stof")
	}
	return x, nil
}

var splitSeparators = regexp.MustCompile(`[,/]+`)

// parseTensorSplit reads -ts: proportions separated by ',' or '/'.
func parseTensorSplit(v string) ([]float64, error) {
	parts := splitSeparators.Split(v, -1)
	if len(parts) >= llamaMaxDevices {
		return nil, fmt.Errorf("got %d input configs, but system only has %d devices", len(parts), llamaMaxDevices)
	}
	out := make([]float64, len(parts))
	for i, p := range parts {
		x, err := cppStof(p)
		if err != nil {
			return nil, err
		}
		out[i] = x
	}
	return out, nil
}

// parseOnOff reads llama.cpp's truthy and falsey words.
func parseOnOff(v string) (bool, error) {
	switch v {
	case "on", "enabled", "true", "1":
		return true, nil
	case "off", "disabled", "false", "0":
		return false, nil
	}
	return false, errors.New("invalid value")
}

func splitList(v string) []string {
	var out []string
	for _, s := range strings.Split(v, ",") {
		if s = strings.TrimSpace(s); s != "" {
			out = append(out, s)
		}
	}
	return out
}

// llamaUsage is what --help of llama.cpp build number build prints.
func llamaUsage(build int) string {
	var b strings.Builder
	b.WriteString("----- common params -----\n\n")
	for _, o := range llamaTable.Options() {
		if o.Arity == llamaargs.Removed || (build < LlamaFitBuild && llamaFitOptions[o.Canonical()]) {
			continue
		}
		b.WriteString(llamaOptionLine(o))
		b.WriteString("\n")
	}
	b.WriteString("\n")
	b.WriteString(envHelp)
	return b.String()
}
