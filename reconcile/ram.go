package reconcile

import (
	"fmt"

	"github.com/poolmanagerd/pool-managerd/schema"
)

// HostMemory is the node's host RAM as observed: /proc/meminfo on a real
// node, the simulated node's own figures on one (sim init --ram).
type HostMemory struct {
	// Total is the host's memory in bytes (MemTotal).
	Total uint64 `json:"total"`
	// Available is what new processes can take without swapping (MemAvailable).
	Available uint64 `json:"available"`
	// Held is the RAM each engine process holds, by pid, where the node
	// knows it (a simulated node holds each engine's need while it lives);
	// nil on a real host, where the engines' share of Available is not split out.
	Held map[int]uint64 `json:"held,omitempty"`
}

// RAMNeed is a start's host RAM need against what is available for it.
type RAMNeed struct {
	// Need is the pool's host RAM need in bytes.
	Need uint64 `json:"need"`
	// Source says where Need comes from: "declared" (the pool's ram) or
	// "estimate" (the engine's default, see DefaultRAM).
	Source string `json:"source"`
	// Available is the host's available memory, plus what this plan's stops
	// free, less what earlier starts of the plan take.
	Available uint64 `json:"available"`
}

// The parts of the default host RAM estimates (DefaultRAM).
const (
	// llamaRAMBase is llama-server's own process: the binary, the CUDA
	// context and runtime, pinned staging buffers.
	llamaRAMBase = 1 << 30
	// llamaRAMDivisor: llama.cpp keeps some tensors in host memory even with
	// every layer offloaded (the token embeddings), and its compute buffers
	// for the CPU side; a tenth of the VRAM need covers them. The GGUF file
	// itself is mmap'd: its pages are page cache, which MemAvailable counts
	// as free to reclaim.
	llamaRAMDivisor = 10
	// pythonRAMPerProcess is one Python process of vLLM, TGI or SGLang:
	// the interpreter with torch and the CUDA runtime loaded (the API
	// server, and one worker or shard per GPU).
	pythonRAMPerProcess = 2 << 30
)

// DefaultRAM is an engine's default host RAM estimate for a pool that
// declares no ram, from its VRAM need in all (vramTotal), the size of its
// weight files where known (weights, 0 when not) and its GPUs:
//
//   - llamacpp: 1 GiB + a tenth of the VRAM need (a fully offloaded
//     llama-server keeps little on the host side);
//   - vllm, tgi, sglang: the weights + 2 GiB for each Python process (the API
//     server and one worker per GPU): they read the safetensors weights
//     through host memory while they load. Where the weights' size is not
//     known, the VRAM need stands in for it (the weights lie within it, with
//     the KV cache: an estimate that errs high).
//
// It is computed here, not written into the spec, so that a new estimate in
// a later pool-managerd changes no spec hash and restarts no engine.
func DefaultRAM(engine schema.Engine, vramTotal, weights uint64, gpus int) uint64 {
	if engine.Sharded() {
		if weights == 0 {
			weights = vramTotal
		}
		return weights + uint64(1+gpus)*pythonRAMPerProcess
	}
	return llamaRAMBase + vramTotal/llamaRAMDivisor
}

// PoolRAM is a pool's host RAM need and where it comes from; known is false
// when it declares none and its VRAM need, which the estimate starts from,
// is unknown.
func PoolRAM(pool *schema.Pool, vram Need) (need uint64, source string, known bool) {
	if pool.RAM > 0 {
		return uint64(pool.RAM), "declared", true
	}
	if vram.Err != "" || len(vram.PerGPU) != len(pool.Devices) {
		return 0, "", false
	}
	var total uint64
	for _, b := range vram.PerGPU {
		total += b
	}
	return DefaultRAM(pool.Engine, total, vram.Weights, len(pool.Devices)), "estimate", true
}

// RAMHint is the hint for a pool the host lacks the RAM for.
func RAMHint(pool *schema.Pool) string {
	if pool.RAM > 0 {
		return "free host memory (stop other processes or pools), lower ram if the engine needs less, or run the pool on another node"
	}
	return fmt.Sprintf("free host memory (stop other processes or pools), or declare ram for the pool if %s needs less than the estimate", pool.Engine)
}

// ramHeldBy is the host RAM a live engine gives back when it stops: what
// the node says its processes hold, or, on a real host (which does not say),
// its pool's need as the config states it.
func (p *planner) ramHeldBy(e Engine) uint64 {
	if !e.Alive || p.observed.Host == nil {
		return 0
	}
	if held := p.observed.Host.Held; held != nil {
		var sum uint64
		seen := map[int]bool{}
		for _, pid := range append([]int{e.PID}, e.PIDs...) {
			if !seen[pid] {
				seen[pid] = true
				sum += held[pid]
			}
		}
		return sum
	}
	if e.Spec == nil {
		return 0
	}
	need, _, _ := PoolRAM(e.Spec, p.desired.Needs[e.Pool])
	return need
}

// ramBlocker says whether the host lacks the RAM for a start, or nil; it
// fills in the change's RAM line.
func (p *planner) ramBlocker(c *Change, available uint64) (*Blocker, uint64) {
	if p.observed.Host == nil {
		return nil, 0
	}
	need, source, known := PoolRAM(c.Spec, p.desired.Needs[c.Pool])
	if !known {
		return nil, 0
	}
	c.RAM = &RAMNeed{Need: need, Source: source, Available: available}
	if need <= available {
		return nil, need
	}
	return &Blocker{Class: ClassInsufficientRAM, Message: RAMShortage(c.Spec, *c.RAM, p.observed.Host.Total), Hint: RAMHint(c.Spec)}, need
}

// RAMShortage is the message of a start the host lacks the RAM for.
func RAMShortage(pool *schema.Pool, r RAMNeed, total uint64) string {
	what := "the pool's ram"
	if r.Source == "estimate" {
		what = fmt.Sprintf("%s's default estimate", pool.Engine)
	}
	return fmt.Sprintf("insufficient host RAM: needs %s (%s), %s available of %s", gib(r.Need), what, gib(r.Available), gib(total))
}
