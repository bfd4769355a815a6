package schema

import (
	"bytes"
	"encoding/json"
	"fmt"
	"sort"
	"strconv"
	"strings"
	"time"

	"cuelang.org/go/cue"

	"github.com/poolmanagerd/pool-managerd/schema/modelsource"
)

// Engine names the inference engine of a pool.
type Engine string

// The engines pool-managerd knows how to run.
const (
	EngineLlamaCpp Engine = "llamacpp"
	EngineVLLM     Engine = "vllm"
	EngineTGI      Engine = "tgi"
	// EngineSGLang is SGLang's server (python -m sglang.launch_server).
	EngineSGLang Engine = "sglang"
)

// Sharded reports whether the engine shards a model evenly over its GPUs
// (tensor parallel) and so has no GGUF file to estimate its need from: vLLM,
// TGI and SGLang. Such pools declare vram.
func (e Engine) Sharded() bool {
	return e == EngineVLLM || e == EngineTGI || e == EngineSGLang
}

// Desired is the desired state of a fleet: every node's declared inventory and
// every pool, as read from one config directory.
type Desired struct {
	// Nodes by name.
	Nodes map[string]*Node `json:"nodes"`
	// Pools by id.
	Pools map[string]*Pool `json:"pools"`
	// Files are the config files the state was read from, relative to the config directory, sorted.
	Files []string `json:"files"`
}

// Node is one node's declared GPU inventory.
type Node struct {
	Name   string `json:"name"`
	GPUs   []GPU  `json:"gpus"`
	Source Source `json:"-"`
}

// GPU is one GPU of a node's declared inventory.
type GPU struct {
	Index int    `json:"index"`
	UUID  string `json:"uuid,omitempty"`
	Model string `json:"model,omitempty"`
	// VRAM is the total memory in bytes.
	VRAM int64 `json:"vram"`
}

// GPU returns the GPU with the given NVML index.
func (n *Node) GPU(index int) (GPU, bool) {
	for _, g := range n.GPUs {
		if g.Index == index {
			return g, true
		}
	}
	return GPU{}, false
}

// Model is the model a pool serves: a file or directory already on the node
// (Path), or one that pool-managerd fetches into its content-addressed cache
// (Source, with SHA256 for a file or Files for a directory). Exactly one of
// Path and Source is set. A model with a source carries its digests, never a
// cache path, so that its spec (and the spec's hash) is the same on every node.
type Model struct {
	// Path is the absolute path of the model file or directory; empty with a source.
	Path string `json:"path,omitempty"`
	// Source is where the model is fetched from: an https:// URL (http:// for
	// loopback hosts only) or hf://ORG/REPO@COMMIT[/PATH]; empty with a path.
	Source string `json:"source,omitempty"`
	// SHA256 is the digest of the model file (llamacpp), in lowercase hex.
	SHA256 string `json:"sha256,omitempty"`
	// Files is the manifest of a model directory (vllm, tgi, sglang).
	Files []ModelFile `json:"files,omitempty"`
	// Ctx is the context size in tokens.
	Ctx int `json:"ctx"`
}

// ModelFile is one file of a model directory's manifest: its path in the
// directory, its sha256 and its size when declared. It is the fetcher's
// modelsource.File, so that a pool's manifest is the one the fetcher
// validates and names by its digest (Model.Digest).
type ModelFile = modelsource.File

// Pool is one inference pool: an engine process serving a model on a set of GPUs.
type Pool struct {
	ID     string `json:"id"`
	Node   string `json:"node"`
	Engine Engine `json:"engine"`
	Model  Model  `json:"model"`
	// Devices is the device mask: NVML indices of the GPUs the pool may use.
	Devices []int `json:"devices"`
	// Split is each masked GPU's share of the model, in the order of Devices;
	// nil when the schema leaves it out (an even split).
	Split []float64 `json:"split,omitempty"`
	// Flags are extra engine arguments, appended after the managed ones.
	Flags []string `json:"flags,omitempty"`
	// Env is extra environment for the engine.
	Env map[string]string `json:"env,omitempty"`
	// Port is the engine's port; 0 means one is assigned at start.
	Port int `json:"port,omitempty"`
	// VRAM is the declared total VRAM need in bytes; 0 when not declared.
	VRAM int64 `json:"vram,omitempty"`
	// RAM is the declared host RAM need in bytes; 0 when not declared (the
	// engine's default estimate, reconcile.RAMNeed, applies; it is not
	// written into the spec, so that its hash does not move with it).
	RAM int64 `json:"ram,omitempty"`
	// Share allows the pool's GPUs to hold other sharing pools.
	Share   bool          `json:"share,omitempty"`
	Restart RestartPolicy `json:"restart"`
	// Source records where the pool and its fields are written, for error messages.
	Source Source `json:"-"`
}

// RestartPolicy holds the backoff and circuit breaker settings of a pool.
type RestartPolicy struct {
	InitialBackoff time.Duration
	MaxBackoff     time.Duration
	Jitter         float64
	ResetAfter     time.Duration
	StartupTimeout time.Duration
	DrainTimeout   time.Duration
	StopGrace      time.Duration
	Breaker        Breaker
}

// restartJSON is RestartPolicy as JSON: durations as Go duration strings, as in the config.
type restartJSON struct {
	InitialBackoff string      `json:"initialBackoff"`
	MaxBackoff     string      `json:"maxBackoff"`
	Jitter         float64     `json:"jitter"`
	ResetAfter     string      `json:"resetAfter"`
	StartupTimeout string      `json:"startupTimeout"`
	DrainTimeout   string      `json:"drainTimeout"`
	StopGrace      string      `json:"stopGrace"`
	Breaker        breakerJSON `json:"breaker"`
}

type breakerJSON struct {
	Failures int    `json:"failures"`
	Window   string `json:"window"`
	Cooldown string `json:"cooldown"`
}

// MarshalJSON writes durations as duration strings ("1m0s").
func (r RestartPolicy) MarshalJSON() ([]byte, error) {
	return json.Marshal(restartJSON{
		InitialBackoff: r.InitialBackoff.String(), MaxBackoff: r.MaxBackoff.String(), Jitter: r.Jitter,
		ResetAfter: r.ResetAfter.String(), StartupTimeout: r.StartupTimeout.String(),
		DrainTimeout: r.DrainTimeout.String(), StopGrace: r.StopGrace.String(),
		Breaker: breakerJSON{Failures: r.Breaker.Failures, Window: r.Breaker.Window.String(), Cooldown: r.Breaker.Cooldown.String()},
	})
}

// UnmarshalJSON reads what MarshalJSON writes.
func (r *RestartPolicy) UnmarshalJSON(data []byte) error {
	var j restartJSON
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&j); err != nil {
		return fmt.Errorf("restart policy: %w", err)
	}
	var out RestartPolicy
	for _, f := range []struct {
		s string
		d *time.Duration
	}{
		{j.InitialBackoff, &out.InitialBackoff}, {j.MaxBackoff, &out.MaxBackoff}, {j.ResetAfter, &out.ResetAfter},
		{j.StartupTimeout, &out.StartupTimeout}, {j.DrainTimeout, &out.DrainTimeout}, {j.StopGrace, &out.StopGrace},
		{j.Breaker.Window, &out.Breaker.Window}, {j.Breaker.Cooldown, &out.Breaker.Cooldown},
	} {
		d, err := time.ParseDuration(f.s)
		if err != nil {
			return fmt.Errorf("restart policy: %w", err)
		}
		*f.d = d
	}
	out.Jitter, out.Breaker.Failures = j.Jitter, j.Breaker.Failures
	*r = out
	return nil
}

// Breaker holds the circuit breaker settings of a pool.
type Breaker struct {
	Failures int
	Window   time.Duration
	Cooldown time.Duration
}

// EffectiveSplit returns the pool's split, or the even split when none is written.
func (p *Pool) EffectiveSplit() []float64 {
	if len(p.Split) > 0 {
		return p.Split
	}
	even := make([]float64, len(p.Devices))
	for i := range even {
		even[i] = 1 / float64(len(p.Devices))
	}
	return even
}

// Source says where a pool or node and its fields are written in the config
// files. Positions are worked out when asked for: only error messages need them.
// Once the load that read it has returned, a Source holds no evaluated CUE
// config (hundreds of MiB at 10,000 pools), only the bytes of its group of
// files: asking for a position evaluates that group again, and keeps the
// result while the Source lives.
type Source struct {
	resolver *posResolver
	path     []cue.Selector
}

// Of returns where the field path of the pool or node is written ("devices",
// "split[1]", "flags[2]", "env.NAME", "" for the pool itself), falling back to
// its parent fields and then to the pool itself.
func (s Source) Of(field string) Pos {
	if s.resolver == nil {
		return Pos{}
	}
	sels := append([]cue.Selector(nil), s.path...)
	for _, part := range strings.Split(field, ".") {
		if part == "" {
			continue
		}
		name, rest, _ := strings.Cut(part, "[")
		sels = append(sels, cue.Str(name))
		for rest != "" {
			idx, after, _ := strings.Cut(rest, "]")
			n, err := strconv.Atoi(idx)
			if err != nil {
				break
			}
			sels = append(sels, cue.Index(n))
			_, rest, _ = strings.Cut(after, "[")
		}
	}
	return s.resolver.posAt(sels)
}

// SortedPoolIDs returns the pool ids in order.
func (d *Desired) SortedPoolIDs() []string {
	ids := make([]string, 0, len(d.Pools))
	for id := range d.Pools {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	return ids
}

// SortedNodeNames returns the node names in order.
func (d *Desired) SortedNodeNames() []string {
	names := make([]string, 0, len(d.Nodes))
	for n := range d.Nodes {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

// GPUCount returns the number of GPUs declared over all nodes.
func (d *Desired) GPUCount() int {
	n := 0
	for _, node := range d.Nodes {
		n += len(node.GPUs)
	}
	return n
}
