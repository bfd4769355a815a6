package testenv

import (
	"fmt"
	"slices"
	"strconv"
	"strings"

	"github.com/poolmanagerd/pool-managerd/drivers/gpu/sim"
	"github.com/poolmanagerd/pool-managerd/schema/modelsource"
)

// cueHeader opens every config file written here.
const cueHeader = "package poolmanagerd\n\n"

// GPUDecl is one GPU of a node's declaration.
type GPUDecl struct {
	Index int
	// UUID and Model are left out when empty.
	UUID, Model string
	// VRAM is a CUE number: "25769803776", "24Gi".
	VRAM string
}

// NodeDecl is a node's declaration in the config: nodes: NAME: gpus: [...].
type NodeDecl struct {
	Name string
	GPUs []GPUDecl
}

// DeclOf declares a simulated node's GPUs (as sim.GPUs returns them, with
// their UUIDs) as node name: index, UUID, model and memory in bytes.
func DeclOf(name string, gpus []sim.GPUSpec) NodeDecl {
	d := NodeDecl{Name: name}
	for i, g := range gpus {
		d.GPUs = append(d.GPUs, GPUDecl{Index: i, UUID: g.UUID, Model: g.Name, VRAM: strconv.FormatUint(g.MemoryBytes, 10)})
	}
	return d
}

// CUE is the declaration as a config file.
func (d NodeDecl) CUE() string { return cueHeader + d.body() }

// body is the declaration without the package clause:
//
//	nodes: "gpu-01": gpus: [
//		{index: 0, uuid: "GPU-…", model: "…", vram: 24Gi},
//	]
func (d NodeDecl) body() string {
	var b strings.Builder
	fmt.Fprintf(&b, "nodes: %q: gpus: [\n", d.Name)
	for _, g := range d.GPUs {
		fmt.Fprintf(&b, "\t{index: %d", g.Index)
		if g.UUID != "" {
			fmt.Fprintf(&b, ", uuid: %q", g.UUID)
		}
		if g.Model != "" {
			fmt.Fprintf(&b, ", model: %q", g.Model)
		}
		fmt.Fprintf(&b, ", vram: %s},\n", g.VRAM)
	}
	b.WriteString("]\n")
	return b.String()
}

// Pool is one pool of a test config, as a small Go description of what
// the config file says. Empty fields are left out of the file (the schema's
// defaults apply), but for Engine.
type Pool struct {
	ID   string
	Node string
	// Engine is "llamacpp" when empty.
	Engine string
	// Model is the model file's path; Ctx its context size.
	Model string
	// Source and SHA256, when Source is set, are the model's source
	// (model.source) and digest, in place of Model; Files, in place of
	// SHA256, is the manifest of a model directory (model.files).
	Source, SHA256 string
	Files          []modelsource.File
	Ctx            int
	// Devices is the device mask.
	Devices []int
	// Split and Flags are CUE lists: "[0.7, 0.3]", `["--threads", "4"]`.
	Split, Flags string
	Port         int
	// VRAM is a CUE number: "4Gi".
	VRAM string
	// RAM is the pool's host RAM need, a CUE number ("20Gi"); empty leaves it out.
	RAM   string
	Share bool
	Env   map[string]string
	// Restart is the body of the restart struct, in CUE:
	// `initialBackoff: "100ms", jitter: 0`.
	Restart string
}

// CUE is the pool as a config file of its own. Its lines come in a fixed
// order, so that a test may name a position in it:
//
//	1 package poolmanagerd
//	2
//	3 pools: "ID": {
//	4 	node:    "NODE"
//	5 	engine:  "ENGINE"
//	6 	model: path: "MODEL"          (or model: {path: "MODEL", ctx: CTX}, or model: {source: …})
//	7 	devices: [0, 1]
//	8 	split:   [...]                 then flags, port, vram, share, env, restart
func (p Pool) CUE() string { return cueHeader + p.body() }

func (p Pool) body() string {
	engine := p.Engine
	if engine == "" {
		engine = "llamacpp"
	}
	var b strings.Builder
	fmt.Fprintf(&b, "pools: %q: {\n", p.ID)
	fmt.Fprintf(&b, "\tnode:    %q\n", p.Node)
	fmt.Fprintf(&b, "\tengine:  %q\n", engine)
	switch {
	case p.Source != "":
		fmt.Fprintf(&b, "\tmodel: {source: %q", p.Source)
		if p.SHA256 != "" {
			fmt.Fprintf(&b, ", sha256: %q", p.SHA256)
		}
		if len(p.Files) > 0 {
			b.WriteString(", files: [")
			for i, f := range p.Files {
				if i > 0 {
					b.WriteString(", ")
				}
				fmt.Fprintf(&b, "{path: %q, sha256: %q, size: %d}", f.Path, f.SHA256, f.Size)
			}
			b.WriteString("]")
		}
		if p.Ctx != 0 {
			fmt.Fprintf(&b, ", ctx: %d", p.Ctx)
		}
		b.WriteString("}\n")
	case p.Ctx != 0:
		fmt.Fprintf(&b, "\tmodel: {path: %q, ctx: %d}\n", p.Model, p.Ctx)
	case p.Model != "":
		fmt.Fprintf(&b, "\tmodel: path: %q\n", p.Model)
	}
	if p.Devices != nil {
		devs := make([]string, len(p.Devices))
		for i, d := range p.Devices {
			devs[i] = strconv.Itoa(d)
		}
		fmt.Fprintf(&b, "\tdevices: [%s]\n", strings.Join(devs, ", "))
	}
	if p.Split != "" {
		fmt.Fprintf(&b, "\tsplit:   %s\n", p.Split)
	}
	if p.Flags != "" {
		fmt.Fprintf(&b, "\tflags:   %s\n", p.Flags)
	}
	if p.Port != 0 {
		fmt.Fprintf(&b, "\tport:    %d\n", p.Port)
	}
	if p.VRAM != "" {
		fmt.Fprintf(&b, "\tvram:    %s\n", p.VRAM)
	}
	if p.RAM != "" {
		fmt.Fprintf(&b, "\tram:     %s\n", p.RAM)
	}
	if p.Share {
		b.WriteString("\tshare:   true\n")
	}
	if len(p.Env) > 0 {
		b.WriteString("\tenv: {\n")
		keys := make([]string, 0, len(p.Env))
		for k := range p.Env {
			keys = append(keys, k)
		}
		slices.Sort(keys)
		for _, k := range keys {
			fmt.Fprintf(&b, "\t\t%s: %q\n", k, p.Env[k])
		}
		b.WriteString("\t}\n")
	}
	if p.Restart != "" {
		fmt.Fprintf(&b, "\trestart: {%s}\n", p.Restart)
	}
	b.WriteString("}\n")
	return b.String()
}

// ConfigFile is a whole config in one file: the node's declaration and the
// pools.
func ConfigFile(node NodeDecl, pools ...Pool) string {
	var b strings.Builder
	b.WriteString(cueHeader)
	b.WriteString(node.body())
	for _, p := range pools {
		b.WriteString("\n")
		b.WriteString(p.body())
	}
	return b.String()
}
