package fakeengine

import (
	"fmt"
	"strconv"
	"strings"
)

// EnvLlamaBuild makes the stand-in imitate that llama.cpp build number: a
// build before LlamaFitBuild has no --fit, --fit-target or --fit-ctx (its
// --help does not name them, and it refuses them as the real old build
// does: "error: invalid argument: --fit", exit 1). Unset: LlamaDefaultBuild.
const EnvLlamaBuild = "FAKE_ENGINE_LLAMA_BUILD"

// LlamaFitBuild is the first llama.cpp build with --fit (about b7437, December 2025).
const LlamaFitBuild = 7437

// LlamaDefaultBuild is the build the stand-in imitates unless told: one
// with --fit.
const LlamaDefaultBuild = 8000

// llamaFitOptions are the options that came with --fit, by canonical name.
var llamaFitOptions = map[string]bool{"--fit": true, "--fit-target": true, "--fit-ctx": true}

// LlamaBuild reads EnvLlamaBuild.
func LlamaBuild(getenv func(string) string) (int, error) {
	v := strings.TrimSpace(getenv(EnvLlamaBuild))
	if v == "" {
		return LlamaDefaultBuild, nil
	}
	n, err := strconv.Atoi(v)
	if err != nil || n <= 0 {
		return 0, fmt.Errorf("invalid environment: %s=%q: want a build number (such as 7000)", EnvLlamaBuild, v)
	}
	return n, nil
}

// ParseLlamaArgsBuild reads a command line as llama.cpp build number build
// does: before LlamaFitBuild, the first --fit option in it is an unknown
// argument (what comes before it is read first, as llama-server reads in
// order), and fit is off.
func ParseLlamaArgsBuild(argv []string, build int) (LlamaConfig, error) {
	if build >= LlamaFitBuild {
		cfg, err := ParseLlamaArgs(argv)
		cfg.Build = build
		return cfg, err
	}
	args, _ := llamaTable.ParseArgv(argv)
	for _, a := range args {
		if !llamaFitOptions[a.Option.Canonical()] {
			continue
		}
		cfg, err := ParseLlamaArgs(argv[:a.Index])
		cfg.Fit, cfg.Build = false, build
		if err != nil || cfg.Version || cfg.ListDevices {
			return cfg, err
		}
		return cfg, &UsageError{Message: "error: invalid argument: " + a.Spelling, Code: 1}
	}
	cfg, err := ParseLlamaArgs(argv)
	cfg.Fit, cfg.Build = false, build
	return cfg, err
}
