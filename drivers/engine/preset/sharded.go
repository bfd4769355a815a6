package preset

import (
	"strconv"

	"github.com/poolmanagerd/pool-managerd/schema"
)

// What vLLM, TGI and SGLang are told beyond the model, port and shard count,
// so that they do what the plan counts on (ENGINES.md):
//
//   - Memory: each takes a fixed share of every GPU whatever a pool declares
//     (vLLM --gpu-memory-utilization × total, default 0.9, and it refuses to
//     start when less is free; TGI about 90 % of total × --cuda-memory-fraction,
//     default 1; SGLang --mem-fraction-static × total, default 0.9). The plan
//     books vram / devices on each GPU, so the share is derived from that
//     (schema.MemoryFraction), unless the pool's flags set it (validate
//     refuses a value that takes more than the pool declares).
//   - Shutdown: vLLM and TGI get no drain before SIGTERM (they have no
//     /slots), so their own graceful shutdown must end within the pool's
//     restart.stopGrace, after which pool-managerd sends SIGKILL. vLLM from
//     v0.18 aborts in-flight requests on SIGTERM unless --shutdown-timeout is
//     set, and older builds reject that flag: it is passed only where the
//     binary is known to support it (Options.Caps names it), as
//     schema.VLLMShutdownTimeout (the grace less a margin). TGI's launcher
//     waits --graceful-termination-timeout (default 90 s) for its router and
//     then for each shard: it gets schema.TGIGracefulTimeout, stopGrace /
//     (shards + 1), so that the whole shutdown fits in the grace. A longer
//     drain for TGI is had by raising restart.stopGrace.

// FlagShutdownTimeout is vLLM's --shutdown-timeout, an optional flag: builds
// before v0.18 exit with an argparse error on it.
const FlagShutdownTimeout = "--shutdown-timeout"

// indices lists the GPUs' NVML indices, which vLLM and SGLang take in
// CUDA_VISIBLE_DEVICES (with CUDA_DEVICE_ORDER=PCI_BUS_ID they are NVML's).
func indices(gpus []GPU) []string {
	out := make([]string, len(gpus))
	for i, g := range gpus {
		out[i] = strconv.Itoa(g.Index)
	}
	return out
}

// memoryArgs is the engine's memory flag derived from the pool's declared
// need, or nothing when the pool sets it, declares no need, or a GPU's size
// is unknown.
func memoryArgs(p *schema.Pool, gpus []GPU) []string {
	spellings, ok := schema.MemoryFlag(p.Engine)
	if !ok || p.VRAM <= 0 {
		return nil
	}
	if _, _, set := schema.DashFlag(p.Flags, spellings...); set {
		return nil
	}
	if p.Engine == schema.EngineTGI {
		if _, set := p.Env["CUDA_MEMORY_FRACTION"]; set {
			return nil
		}
	}
	need := schema.NeedPerGPU(p)
	fraction := 0.0
	for i, g := range gpus {
		if g.Total == 0 {
			return nil
		}
		f := schema.MemoryFraction(p.Engine, need, int64(g.Total))
		if i == 0 || f < fraction {
			fraction = f // the smallest GPU's share: none takes more than the need
		}
	}
	if fraction <= 0 {
		return nil
	}
	return []string{spellings[0], strconv.FormatFloat(fraction, 'f', -1, 64)}
}

// vllmArgs are vLLM's memory and shutdown flags.
func vllmArgs(p *schema.Pool, gpus []GPU, path string, opts Options) []string {
	args := memoryArgs(p, gpus)
	if _, _, set := schema.DashFlag(p.Flags, FlagShutdownTimeout); !set && opts.supports(FlagShutdownTimeout) {
		if n := schema.VLLMShutdownTimeout(p.Restart.StopGrace); n > 0 {
			args = append(args, FlagShutdownTimeout, strconv.Itoa(n))
		}
	}
	return args
}

// tgiArgs are TGI's memory and shutdown flags.
func tgiArgs(p *schema.Pool, gpus []GPU) []string {
	args := memoryArgs(p, gpus)
	_, _, set := schema.DashFlag(p.Flags, "--graceful-termination-timeout")
	_, setEnv := p.Env["GRACEFUL_TERMINATION_TIMEOUT"]
	if !set && !setEnv && p.Restart.StopGrace > 0 {
		args = append(args, "--graceful-termination-timeout", strconv.Itoa(schema.TGIGracefulTimeout(p.Restart.StopGrace, len(gpus))))
	}
	return args
}
