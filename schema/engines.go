package schema

import (
	"fmt"
	"math"
	"strconv"
	"time"
)

// What pool-managerd tells the sharded engines (vLLM, TGI, SGLang) so that
// they take the memory a pool declares and finish their shutdown within its
// stop grace. The presets (package drivers/engine/preset) pass these values;
// the flag checks refuse user values that break them. See ENGINES.md.

// TGIFill is the share of each GPU's total memory that TGI fills at
// --cuda-memory-fraction 1: it takes about TGIFill × total × fraction.
const TGIFill = 0.9

// memoryFlag is how a sharded engine is told how much of each GPU to take.
type memoryFlag struct {
	spellings []string
	// env is the variable the engine also reads for it ("" when none).
	env string
}

var memoryFlags = map[Engine]memoryFlag{
	// vLLM takes --gpu-memory-utilization × total of every GPU (default 0.9)
	// and refuses to start when less is free.
	EngineVLLM: {spellings: []string{"--gpu-memory-utilization"}},
	// TGI fills about TGIFill × total × --cuda-memory-fraction (default 1).
	EngineTGI: {spellings: []string{"--cuda-memory-fraction"}, env: "CUDA_MEMORY_FRACTION"},
	// SGLang takes --mem-fraction-static × total for weights and KV cache (default 0.9).
	EngineSGLang: {spellings: []string{"--mem-fraction-static"}},
}

// MemoryFlag returns the flag by which engine e is told the share of each
// GPU it takes, and its spellings; ok is false for engines without one (llamacpp).
func MemoryFlag(e Engine) (spellings []string, ok bool) {
	f, ok := memoryFlags[e]
	return f.spellings, ok
}

// NeedPerGPU is the part of a sharded pool's declared need on each of its
// GPUs: vram split evenly over the mask.
func NeedPerGPU(p *Pool) int64 {
	if len(p.Devices) == 0 {
		return 0
	}
	return p.VRAM / int64(len(p.Devices))
}

// MemoryFraction is the value of engine e's memory flag under which it takes
// at most need bytes of a GPU of total bytes: need/total for vLLM and
// SGLang, need/(TGIFill × total) for TGI. It is rounded down to 4 decimals
// and at most 1.
func MemoryFraction(e Engine, need, total int64) float64 {
	if total <= 0 || need <= 0 {
		return 0
	}
	f := float64(need) / float64(total)
	if e == EngineTGI {
		f /= TGIFill
	}
	f = math.Floor(f*1e4+1e-9) / 1e4
	return min(f, 1)
}

// MemoryTaken is the memory engine e takes of a GPU of total bytes when its
// memory flag is fraction.
func MemoryTaken(e Engine, fraction float64, total int64) int64 {
	taken := fraction * float64(total)
	if e == EngineTGI {
		taken *= TGIFill
	}
	return int64(taken)
}

// VLLMShutdownTimeout is the --shutdown-timeout, in whole seconds, that
// pool-managerd gives vLLM under a stop grace: the grace less a margin
// (a fifth of it, at least 2 s) for vLLM to tear its workers down after
// in-flight requests end. 0 means none fits (the flag is left out).
func VLLMShutdownTimeout(grace time.Duration) int {
	margin := max(2*time.Second, grace/5)
	if grace <= margin {
		return 0
	}
	return int((grace - margin) / time.Second)
}

// TGIGracefulTimeout is the largest --graceful-termination-timeout, in whole
// seconds, under which TGI's launcher finishes within a stop grace: on
// SIGTERM it waits that long for the router and then for each of its shards,
// so grace / (shards + 1).
func TGIGracefulTimeout(grace time.Duration, shards int) int {
	if shards < 1 {
		shards = 1
	}
	return int(grace / time.Duration(shards+1) / time.Second)
}

// checkShutdown refuses shutdown timeouts under which an engine is killed
// before its own shutdown ends: vLLM and TGI get no drain before SIGTERM, so
// their graceful shutdown must fit in restart.stopGrace.
func checkShutdown(p *Pool) []flagProblem {
	grace := p.Restart.StopGrace
	if grace <= 0 {
		return nil // reported by the restart checks
	}
	var out []flagProblem
	switch p.Engine {
	case EngineVLLM:
		i, v, ok := DashFlag(p.Flags, "--shutdown-timeout")
		if !ok {
			break
		}
		n, err := strconv.ParseFloat(v, 64)
		if err != nil || n < 0 {
			out = append(out, flagProblem{flagPath(i), fmt.Sprintf("%q: vllm's --shutdown-timeout takes a number of seconds, not %q", p.Flags[i], v)})
			break
		}
		if time.Duration(n*float64(time.Second)) >= grace {
			out = append(out, flagProblem{flagPath(i), fmt.Sprintf(
				"%q: vllm waits up to %gs for in-flight requests after SIGTERM, but pool-managerd sends SIGKILL restart.stopGrace (%v) after SIGTERM, so the engine is killed mid-shutdown; lower it below %v (or leave it out: pool-managerd passes --shutdown-timeout %d where the vllm build knows the flag), or raise restart.stopGrace above %gs",
				p.Flags[i], n, grace, grace, VLLMShutdownTimeout(grace), n)})
		}
	case EngineTGI:
		shards := max(len(p.Devices), 1)
		bound := TGIGracefulTimeout(grace, shards)
		check := func(path, what, v string) {
			n, err := strconv.ParseUint(v, 10, 32)
			if err != nil {
				out = append(out, flagProblem{path, fmt.Sprintf("%s: text-generation-launcher's graceful termination timeout is a whole number of seconds, not %q", what, v)})
				return
			}
			if int(n) > bound {
				out = append(out, flagProblem{path, fmt.Sprintf(
					"%s: on SIGTERM text-generation-launcher waits up to %ds for its router and then %ds for each of its %d shards (%ds in all), longer than restart.stopGrace (%v) after which pool-managerd sends SIGKILL; lower it to at most %d (stopGrace / (shards + 1)), or raise restart.stopGrace to at least %ds",
					what, n, n, shards, int(n)*(shards+1), grace, bound, int(n)*(shards+1))})
			}
		}
		if i, v, ok := DashFlag(p.Flags, "--graceful-termination-timeout"); ok {
			check(flagPath(i), strconv.Quote(p.Flags[i]), v)
		}
		if v, ok := p.Env["GRACEFUL_TERMINATION_TIMEOUT"]; ok {
			check("env.GRACEFUL_TERMINATION_TIMEOUT", "GRACEFUL_TERMINATION_TIMEOUT="+v, v)
		}
	}
	return out
}

// checkSized checks a sharded pool's memory flag against the GPUs of its
// mask: the engine must take no more of a GPU than the pool declares, or the
// plan's booking of each GPU is wrong (and the engine may not start: vLLM
// refuses to when less than its fraction is free).
func (c *flagChecker) checkSized(p *Pool, gpus []GPU) []flagProblem {
	mf, ok := memoryFlags[p.Engine]
	if !ok || p.VRAM <= 0 || len(gpus) == 0 {
		return nil
	}
	need := NeedPerGPU(p)
	var out []flagProblem
	check := func(path, what, v string) {
		f, err := strconv.ParseFloat(v, 64)
		if err != nil || f <= 0 || f > 1 {
			out = append(out, flagProblem{path, fmt.Sprintf("%s: %s takes a fraction of each GPU's memory above 0 and at most 1, not %q", what, p.Engine, v)})
			return
		}
		for _, g := range gpus {
			taken := MemoryTaken(p.Engine, f, g.VRAM)
			if float64(taken) <= float64(need)*(1+RatioTolerance) {
				continue
			}
			suggest := MemoryFraction(p.Engine, need, g.VRAM)
			// The vram under which this fraction fits: what it takes, on every GPU.
			raise := int64(math.Ceil(float64(taken)/float64(1<<30)*10)/10*float64(1<<30)) * int64(len(p.Devices))
			out = append(out, flagProblem{path, fmt.Sprintf(
				"%s: %s would take %s of GPU %d (%s), more than the pool declares for each GPU (vram %s over %d GPUs = %s); the plan books only what vram says, so leave the flag out (pool-managerd passes %s %s, derived from vram) or raise vram to %s",
				what, p.Engine, humanBytes(taken), g.Index, humanBytes(g.VRAM), humanBytes(p.VRAM), len(p.Devices), humanBytes(need),
				mf.spellings[0], strconv.FormatFloat(suggest, 'f', -1, 64), humanBytes(raise))})
			return
		}
	}
	if i, v, ok := DashFlag(p.Flags, mf.spellings...); ok {
		check(flagPath(i), strconv.Quote(p.Flags[i]), v)
	}
	if mf.env != "" {
		if v, ok := p.Env[mf.env]; ok {
			check("env."+mf.env, mf.env+"="+v, v)
		}
	}
	return out
}
