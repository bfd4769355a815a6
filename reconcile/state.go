package reconcile

import (
	"time"

	"github.com/poolmanagerd/pool-managerd/drivers/gpu"
	"github.com/poolmanagerd/pool-managerd/reconcile/restart"
	"github.com/poolmanagerd/pool-managerd/schema"
)

// Desired is what one node should run: its pools, its declared inventory and
// each pool's VRAM need.
type Desired struct {
	// Node is the node being planned.
	Node string `json:"node"`
	// Declared is the node's declared inventory; nil when the config declares none.
	Declared *schema.Node `json:"declared,omitempty"`
	// Pools are the pools of this node, by id.
	Pools map[string]*schema.Pool `json:"pools"`
	// Needs is each pool's VRAM need, by pool id.
	Needs map[string]Need `json:"needs"`
	// OtherPools counts the config's pools that belong to other nodes.
	OtherPools int `json:"otherPools"`
	// Settling are pools of Pools that have left the config, by when their
	// removal takes effect: the daemon keeps them (their engines serve and
	// hold their GPUs) until then, in case they come back. A start that
	// lacks memory they hold waits for them (ClassAwaitingRemoval), and is
	// not a failure.
	Settling map[string]time.Time `json:"settling,omitempty"`
}

// Need is a pool's VRAM need on each GPU of its mask.
type Need struct {
	// PerGPU is the need on each masked GPU in bytes, in the order of the pool's devices.
	PerGPU []uint64 `json:"perGPU,omitempty"`
	// Source says where the numbers come from: "gguf" (estimated from the model file) or "declared".
	Source string `json:"source,omitempty"`
	// Err says why the need is unknown (a missing model file, say); the pool is then blocked.
	Err string `json:"error,omitempty"`
	// Weights is the size of a vLLM, TGI or SGLang model's weight files in
	// bytes (the .safetensors, .bin, .pt and .pth files of its directory, or
	// the sizes its manifest declares); 0 when not known. The host RAM
	// estimate starts from it (DefaultRAM).
	Weights uint64 `json:"weights,omitempty"`
	// Deferred says why the need is not checked here but before the
	// engine starts, once its model is fetched: a model.source that is not
	// in the node's model cache and was not looked up remotely (the
	// daemon's passes, --offline, a model directory). PerGPU is then empty
	// and the pool is not blocked for it: unlike Err, which is.
	Deferred string `json:"deferred,omitempty"`
	// Bytes is the size of a model.source's file as its source tells it
	// (X-Linked-Size, Content-Length), for the plan's fetch line; 0 when
	// the source was not asked or did not say.
	Bytes int64 `json:"bytes,omitempty"`
	// Warnings are findings of the remote lookup that block nothing: a
	// source that cannot be reached, a digest that differs from the
	// declared one. The plan adds them to the pool's change.
	Warnings []string `json:"warnings,omitempty"`
}

// DesiredByNode splits a config by node in one pass: each declared node's
// desired state (needs are filled in by the caller).
func DesiredByNode(cfg *schema.Desired) map[string]Desired {
	out := map[string]Desired{}
	for name, n := range cfg.Nodes {
		out[name] = Desired{Node: name, Declared: n, Pools: map[string]*schema.Pool{}, Needs: map[string]Need{}}
	}
	for id, p := range cfg.Pools {
		d, ok := out[p.Node]
		if !ok {
			d = Desired{Node: p.Node, Pools: map[string]*schema.Pool{}, Needs: map[string]Need{}}
		}
		d.Pools[id] = p
		out[p.Node] = d
	}
	for name, d := range out {
		d.OtherPools = len(cfg.Pools) - len(d.Pools)
		out[name] = d
	}
	return out
}

// DesiredFor selects one node's pools from a config; needs are filled in by the caller.
func DesiredFor(cfg *schema.Desired, node string) Desired {
	d := Desired{Node: node, Pools: map[string]*schema.Pool{}, Needs: map[string]Need{}, Declared: cfg.Nodes[node]}
	for id, p := range cfg.Pools {
		if p.Node == node {
			d.Pools[id] = p
		} else {
			d.OtherPools++
		}
	}
	return d
}

// Health is what an engine's health endpoint said when the node was
// observed (observe asks it through drivers/engine).
type Health string

// Engine health as observed.
const (
	// HealthOK: the engine answered its health check; the model is loaded.
	HealthOK Health = "ok"
	// HealthLoading: the engine is up but still loading its model (llama-server
	// answers 503, vLLM and TGI refuse connections).
	HealthLoading Health = "loading"
	// HealthFailing: the engine answers that it is unhealthy, or stopped answering after it was Ready.
	HealthFailing Health = "failing"
)

// Observed is what pool-managerd sees on the node at one moment.
type Observed struct {
	Node string `json:"node"`
	// Source says where the GPUs were observed: nvml, sim:DIR or declared.
	Source string `json:"source"`
	// StateDir is the state directory the engines were read from, if any:
	// a plan saved for one state directory is stale for another.
	StateDir string `json:"stateDir,omitempty"`
	// GPUs are the node's devices, sorted by index.
	GPUs []gpu.Device `json:"gpus"`
	// Host is the host's RAM; nil where it is not observed (--gpus
	// declared, a simulated node made without --ram): then no start's RAM
	// need is checked.
	Host *HostMemory `json:"host,omitempty"`
	// Engines are the engine processes pool-managerd knows of, by pool id.
	Engines map[string]Engine `json:"engines,omitempty"`
	// Pools holds each pool's backoff and breaker history, by pool id.
	Pools map[string]restart.Record `json:"pools,omitempty"`
	// Models are the fetched models (model.source) in the node's model
	// cache with a trusted verification record: their size in bytes by
	// digest (schema.Model.Digest). A start of a pool whose digest is not
	// here fetches its model first (Change.Fetch). Nil where the cache is
	// not observed (--gpus declared: a fresh node).
	Models map[string]int64 `json:"models,omitempty"`
	// Offline: the node uses only models already in its cache; a start
	// whose model is not there fails (ClassModelNotCached) rather than
	// fetching it.
	Offline bool `json:"offline,omitempty"`
}

// Engine is an engine process as observed: from the state file, checked
// against the live process and its health endpoint, or found by its marker.
type Engine struct {
	Pool       string `json:"pool"`
	Generation int64  `json:"generation"`
	// SpecHash is the hash of the pool spec the engine was started with.
	SpecHash string `json:"specHash"`
	// Spec is that pool spec, when the state file has it.
	Spec *schema.Pool `json:"spec,omitempty"`
	PID  int          `json:"pid,omitempty"`
	Port int          `json:"port,omitempty"`
	// PIDs are the processes of the engine's session (vLLM workers and TGI
	// shards are children): the ones that may hold its GPU memory.
	PIDs []int `json:"pids,omitempty"`
	// Alive: the process runs (same pid and start time; not a zombie).
	Alive  bool   `json:"alive"`
	Health Health `json:"health,omitempty"`
	// Recorded: the engine is in the state file. An engine found only by the
	// marker in its environment (a crash between spawn and record) is not.
	Recorded bool `json:"recorded"`
	// Intent: a start was recorded but no process was seen for it.
	Intent bool `json:"intent,omitempty"`
	// Exit says how a dead engine ended, when known.
	Exit string `json:"exit,omitempty"`
	// Unverified: the engine is recorded but never recorded Ready (a crash
	// between its health check and the placement check, say): apply verifies it.
	Unverified bool `json:"unverified,omitempty"`
	// ReadyAt is when the engine was recorded Ready (its placement
	// verified); zero while it preloads, or when it is not recorded.
	ReadyAt time.Time `json:"readyAt,omitzero"`
	// Draining: a stop of the engine has begun (its record says so).
	Draining bool `json:"draining,omitempty"`
	// ReplaceFailed is the hash of a spec whose start failed while this
	// engine was the pool's (EngineRecord.ReplaceFailed).
	ReplaceFailed string `json:"replaceFailed,omitempty"`
}

// device returns the observed GPU with the given index.
func (o *Observed) device(index int) (gpu.Device, bool) {
	for _, d := range o.GPUs {
		if d.Index == index {
			return d, true
		}
	}
	return gpu.Device{}, false
}

// ownedPIDs maps every pid of every live engine to its pool.
func (o *Observed) ownedPIDs() map[int]string {
	owned := map[int]string{}
	for id, e := range o.Engines {
		if e.Alive {
			owned[e.PID] = id
		}
		// A dead engine's PIDs are its leftover workers: ours too, and
		// cleaned up before the pool starts again.
		for _, pid := range e.PIDs {
			owned[pid] = id
		}
	}
	return owned
}

// heldBy returns the memory the engine's processes hold on each GPU, by index.
func (o *Observed) heldBy(e Engine) map[int]uint64 {
	pids := map[int]bool{e.PID: true}
	for _, p := range e.PIDs {
		pids[p] = true
	}
	held := map[int]uint64{}
	for _, d := range o.GPUs {
		for _, p := range d.Processes {
			if pids[p.PID] {
				held[d.Index] += p.UsedBytes
			}
		}
	}
	return held
}
