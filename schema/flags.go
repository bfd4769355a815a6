package schema

import (
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"

	"github.com/poolmanagerd/pool-managerd/schema/llamaargs"
)

// flagChecker rejects engine flags and environment that pool-managerd sets
// itself or that would move work to the CPU, in every spelling the engine accepts.
type flagChecker struct {
	llama *llamaargs.Table
	// llamaManaged maps a llama-server option (by its canonical spelling) to what to do instead.
	llamaManaged map[string]string
}

func newFlagChecker() *flagChecker {
	return &flagChecker{
		llama: llamaargs.Default(),
		llamaManaged: map[string]string{
			"--model":        "use model.path instead",
			"--model-url":    "use model.source instead (hf://ORG/REPO@COMMIT/FILE or an https:// URL, with its sha256: pool-managerd fetches and verifies it) or model.path for a local file",
			"--docker-repo":  "use model.path (a local file) instead",
			"--hf-repo":      "use model.source instead (hf://ORG/REPO@COMMIT/FILE or an https:// URL, with its sha256: pool-managerd fetches and verifies it) or model.path for a local file",
			"--hf-file":      "use model.source instead (hf://ORG/REPO@COMMIT/FILE or an https:// URL, with its sha256: pool-managerd fetches and verifies it) or model.path for a local file",
			"--host":         "pool-managerd binds engines to 127.0.0.1",
			"--port":         "use the pool's port field instead",
			"--ctx-size":     "use model.ctx instead",
			"--n-gpu-layers": "pool-managerd passes --n-gpu-layers 999 so that every layer runs on the GPU",
			"--tensor-split": "use split instead",
			"--split-mode":   "pool-managerd passes --split-mode layer; use split for the ratios",
			"--device":       "use devices (the device mask) instead",
		},
	}
}

// flagProblem is one rejected flag or environment variable.
type flagProblem struct {
	// path is the pool field at fault: flags[i] or env.NAME.
	path    string
	message string
}

func (c *flagChecker) check(p *Pool) []flagProblem {
	var out []flagProblem
	switch p.Engine {
	case EngineLlamaCpp:
		out = c.checkLlama(p.Flags)
	case EngineVLLM:
		out = checkDashFlags(p.Flags, "vllm", vllmRules)
	case EngineTGI:
		out = checkDashFlags(p.Flags, "text-generation-launcher", tgiRules)
	case EngineSGLang:
		out = checkDashFlags(p.Flags, "sglang", sglangRules)
	}
	out = append(out, checkShutdown(p)...)
	return append(out, c.checkEnv(p)...)
}

func flagPath(i int) string { return fmt.Sprintf("flags[%d]", i) }

const cpuSpill = "would run part of the model on the CPU (CPU spillover is not allowed: every pool runs fully on its GPUs); remove it"

func (c *flagChecker) checkLlama(flags []string) []flagProblem {
	var out []flagProblem
	for i := 0; i < len(flags); i++ {
		arg := flags[i]
		problem := func(msg string, args ...any) {
			out = append(out, flagProblem{path: flagPath(i), message: fmt.Sprintf("%q: ", arg) + fmt.Sprintf(msg, args...)})
		}
		if name, value, ok := strings.Cut(arg, "="); ok && strings.HasPrefix(arg, "-") {
			if _, known := c.llama.Lookup(name); known {
				problem("llama-server does not accept --name=value; write %q, %q as two elements", name, value)
				continue
			}
		}
		opt, ok := c.llama.Lookup(arg)
		if !ok {
			if strings.HasPrefix(arg, "-") {
				problem("llama-server has no such option (it would exit with \"error: invalid argument: %s\")", arg)
				// Its values, if any, cannot be told from options: skip to the next option.
				for i+1 < len(flags) && !strings.HasPrefix(flags[i+1], "-") {
					i++
				}
			} else {
				problem("a value without an option; llama-server takes the model from model.path")
			}
			continue
		}
		if opt.Arity == llamaargs.Removed {
			problem("llama-server no longer accepts this option")
			continue
		}
		var values []string
		switch opt.Arity {
		case llamaargs.Value:
			values = flags[min(i+1, len(flags)):min(i+2, len(flags))]
		case llamaargs.TwoValues:
			values = flags[min(i+1, len(flags)):min(i+3, len(flags))]
		}
		want := map[llamaargs.Arity]int{llamaargs.Value: 1, llamaargs.TwoValues: 2}[opt.Arity]
		if len(values) < want {
			problem("needs a value as the next element")
			break
		}
		if msg := c.llamaProblem(opt, values); msg != "" {
			problem("%s", msg)
		}
		i += len(values)
	}
	return out
}

// llamaProblem says what is wrong with one parsed llama-server option, or "".
func (c *flagChecker) llamaProblem(opt *llamaargs.Option, values []string) string {
	name := opt.Canonical()
	value := ""
	if len(values) > 0 {
		value = values[0]
	}
	switch name {
	case "--fit":
		if value == "off" {
			return "pool-managerd already passes --fit off; remove it"
		}
		return "--fit " + value + " lowers GPU layers and context to fit memory, which " + cpuSpill
	case "--n-gpu-layers":
		if n, err := strconv.Atoi(value); err == nil && n < 999 {
			return fmt.Sprintf("%s; remove it (%d would leave layers on the CPU)", c.llamaManaged[name], n)
		}
	case "--device":
		if strings.EqualFold(value, "none") {
			return "--device none " + cpuSpill
		}
	case "--no-kv-offload", "--cpu-moe", "--n-cpu-moe", "--n-cpu-ffn", "--no-mmproj-offload",
		"--cpu-moe-draft", "--n-cpu-moe-draft":
		return cpuSpill
	case "--override-tensor", "--override-tensor-draft":
		if overridesToCPU(value) {
			return "moves tensors to a CPU buffer, which " + cpuSpill
		}
	case "--device-draft", "--mmproj-device":
		if strings.EqualFold(value, "none") {
			return name + " none " + cpuSpill
		}
	case "--api-key", "--api-key-file":
		return "puts /slots behind an API key (401 without it), so pool-managerd cannot see busy slots and the drain before a stop silently does nothing; remove it and authenticate in the reverse proxy in front of the engine (it listens on 127.0.0.1 only)"
	case "--no-slots":
		return "turns /slots off (501), which the drain before a stop needs to see busy slots; remove it"
	case "--sleep-idle-seconds":
		return "unloads the model when idle: its GPU memory is freed while /health still answers 200, so the pool looks Ready without its model and the memory booked for it can be taken by others; remove it"
	case "--models-dir", "--models-preset":
		return "starts llama-server's multi-model router mode, but a pool serves one model on its own GPUs; remove it and declare one pool per model with model.path"
	case "--n-gpu-layers-draft":
		if n, err := strconv.Atoi(value); value != "all" && (err != nil || n < 999) {
			return fmt.Sprintf("%s %s may leave draft-model layers on the CPU; use \"all\" or 999, or leave it out", name, value)
		}
	}
	if instead, ok := c.llamaManaged[name]; ok {
		return fmt.Sprintf("pool-managerd sets %s itself; %s", name, instead)
	}
	return ""
}

// overridesToCPU reports whether an --override-tensor value ("<regex>=<buffer type>,...")
// places any tensor in a CPU buffer.
func overridesToCPU(value string) bool {
	for _, part := range strings.Split(value, ",") {
		_, buffer, ok := strings.Cut(part, "=")
		if ok && strings.HasPrefix(strings.ToUpper(strings.TrimSpace(buffer)), "CPU") {
			return true
		}
	}
	return false
}

// dashRule says why an argparse- or clap-style engine flag is rejected.
type dashRule struct {
	// spellings of the flag, long names with '-' (underscores are read as dashes).
	spellings []string
	// reject returns the problem with the flag's value, or "" when the value is fine.
	reject func(value string) string
}

func managed(instead string) func(string) string {
	return func(string) string { return "is set by pool-managerd itself; " + instead }
}

func spillIfPositive(value string) string {
	if f, err := strconv.ParseFloat(value, 64); err == nil && f <= 0 {
		return ""
	}
	return strings.Replace(cpuSpill, "would run", "runs", 1)
}

var vllmRules = []dashRule{
	{[]string{"--model"}, managed("use model.path instead")},
	{[]string{"--host"}, managed("pool-managerd binds engines to 127.0.0.1")},
	{[]string{"--port"}, managed("use the pool's port field instead")},
	{[]string{"--max-model-len"}, managed("use model.ctx instead")},
	{[]string{"-tp", "--tensor-parallel-size"}, managed("the shard count is the number of devices")},
	{[]string{"-pp", "--pipeline-parallel-size"}, managed("the shard count is the number of devices")},
	{[]string{"-dp", "--data-parallel-size"}, managed("run one pool per replica instead")},
	{[]string{"--cpu-offload-gb"}, spillIfPositive},
	{[]string{"--kv-offloading-size"}, spillIfPositive},
	{[]string{"--swap-space"}, spillIfPositive},
	{[]string{"--device"}, func(v string) string {
		if strings.EqualFold(v, "cpu") {
			return strings.Replace(cpuSpill, "would run", "runs", 1)
		}
		return ""
	}},
}

var sglangRules = []dashRule{
	{[]string{"--model-path", "--model"}, managed("use model.path instead")},
	{[]string{"--host"}, managed("pool-managerd binds engines to 127.0.0.1")},
	{[]string{"--port"}, managed("use the pool's port field instead")},
	{[]string{"--context-length"}, managed("use model.ctx instead")},
	{[]string{"--tp-size", "--tp", "--tensor-parallel-size"}, managed("the shard count is the number of devices")},
	{[]string{"--pp-size", "--pipeline-parallel-size"}, managed("the shard count is the number of devices")},
	{[]string{"--dp-size", "--dp", "--data-parallel-size"}, managed("run one pool per replica instead")},
	{[]string{"--base-gpu-id"}, managed("use devices (the device mask) instead")},
	{[]string{"--cpu-offload-gb"}, spillIfPositive},
	{[]string{"--device"}, func(v string) string {
		if strings.EqualFold(v, "cpu") {
			return strings.Replace(cpuSpill, "would run", "runs", 1)
		}
		return ""
	}},
}

var tgiRules = []dashRule{
	{[]string{"--model-id"}, managed("use model.path instead")},
	{[]string{"--hostname"}, managed("pool-managerd binds engines to 127.0.0.1")},
	{[]string{"--port"}, managed("use the pool's port field instead")},
	{[]string{"--num-shard"}, managed("the shard count is the number of devices")},
	{[]string{"--sharded"}, managed("the shard count is the number of devices")},
	{[]string{"--max-total-tokens"}, managed("use model.ctx instead")},
}

// DashFlag finds the last occurrence of an argparse- or clap-style flag
// ("--name value" or "--name=value"; '_' in a long name reads as '-') among
// flags, under any of its spellings: its index in flags and its value.
func DashFlag(flags []string, spellings ...string) (index int, value string, found bool) {
	index = -1
	for i, arg := range flags {
		if !strings.HasPrefix(arg, "-") {
			continue
		}
		name, v, inline := strings.Cut(arg, "=")
		if strings.HasPrefix(name, "--") {
			name = "--" + strings.ReplaceAll(name[2:], "_", "-")
		}
		if !slices.Contains(spellings, name) {
			continue
		}
		if !inline {
			v = ""
			if i+1 < len(flags) && !strings.HasPrefix(flags[i+1], "-") {
				v = flags[i+1]
			}
		}
		index, value, found = i, v, true
	}
	return index, value, found
}

// checkDashFlags checks the flags of an engine that parses "--name value" and
// "--name=value" alike (vLLM's argparse, TGI's clap).
func checkDashFlags(flags []string, engine string, rules []dashRule) []flagProblem {
	var out []flagProblem
	for i, arg := range flags {
		if !strings.HasPrefix(arg, "-") {
			continue
		}
		name, value, inline := strings.Cut(arg, "=")
		if strings.HasPrefix(name, "--") {
			name = "--" + strings.ReplaceAll(name[2:], "_", "-")
		}
		if !inline && i+1 < len(flags) && !strings.HasPrefix(flags[i+1], "-") {
			value = flags[i+1]
		}
		for _, r := range rules {
			if !slices.Contains(r.spellings, name) {
				continue
			}
			if msg := r.reject(value); msg != "" {
				out = append(out, flagProblem{path: flagPath(i), message: fmt.Sprintf("%q: this %s option %s", arg, engine, msg)})
			}
		}
	}
	return out
}

// tgiManagedEnv are the variables TGI's launcher reads in place of the flags pool-managerd sets.
var tgiManagedEnv = map[string]string{
	"MODEL_ID": "model.path", "HOSTNAME": "the engine host (127.0.0.1)", "PORT": "port",
	"NUM_SHARD": "devices", "SHARDED": "devices", "MAX_TOTAL_TOKENS": "model.ctx",
}

func (c *flagChecker) checkEnv(p *Pool) []flagProblem {
	var out []flagProblem
	for _, name := range slices.Sorted(maps.Keys(p.Env)) {
		path := "env." + name
		switch {
		case name == "CUDA_VISIBLE_DEVICES":
			out = append(out, flagProblem{path, "pool-managerd sets CUDA_VISIBLE_DEVICES from devices (the device mask); use devices instead"})
		case name == "CUDA_DEVICE_ORDER":
			out = append(out, flagProblem{path, "pool-managerd sets CUDA_DEVICE_ORDER=PCI_BUS_ID so that indices match NVML's; remove it"})
		case p.Engine == EngineTGI && tgiManagedEnv[name] != "":
			out = append(out, flagProblem{path, fmt.Sprintf("text-generation-launcher reads %s as a flag that pool-managerd sets; use %s instead", name, tgiManagedEnv[name])})
		case p.Engine == EngineLlamaCpp && strings.HasPrefix(name, "LLAMA_ARG_"):
			if msg := c.llamaEnvProblem(name, p.Env[name]); msg != "" {
				out = append(out, flagProblem{path, msg})
			}
		}
	}
	return out
}

// llamaEnvProblem checks a LLAMA_ARG_* variable, which llama-server reads as
// the option of that name. A switch is set by a true value ("1", "true",
// "on", "enabled"); for a switch that has a --no- twin (--kv-offload and
// --no-kv-offload share LLAMA_ARG_KV_OFFLOAD) a false value means the twin.
func (c *flagChecker) llamaEnvProblem(name, value string) string {
	for _, opt := range c.llama.Options() {
		if opt.EnvName() != name || opt.Arity == llamaargs.Removed {
			continue
		}
		var values []string
		if opt.Arity != llamaargs.Switch {
			values = []string{value}
		} else if isFalse(value) {
			twin, ok := c.llama.Lookup("--no-" + strings.TrimPrefix(opt.Canonical(), "--"))
			if !ok {
				continue // the switch is off: nothing is set
			}
			opt = twin
		}
		if msg := c.llamaProblem(opt, values); msg != "" {
			return fmt.Sprintf("llama-server reads %s=%s as %s: %s", name, value, opt.Canonical(), msg)
		}
	}
	return ""
}

// isFalse reports the values llama-server reads as false for a switch variable.
func isFalse(v string) bool {
	switch strings.ToLower(strings.TrimSpace(v)) {
	case "0", "false", "off", "no", "disabled":
		return true
	}
	return false
}
