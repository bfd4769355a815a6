// Package benchgen writes synthetic but realistic config repositories for
// benchmarks: a nodes/ directory with the GPU inventory and a pools/
// directory with the pools, every one of them valid.
//
// Each node has 8 GPUs, four of 80Gi and four of 24Gi, with UUIDs, and runs
// up to 10 pools (PoolsPerNode): vLLM on two equal GPUs, llama.cpp with an
// explicit split over a mixed 80Gi/24Gi mask, TGI on one large GPU, and
// small llama.cpp, vLLM and TGI pools that share the 24Gi GPUs with declared
// VRAM that fits. Ports are unique per node. The output depends only on the
// arguments, byte for byte.
package benchgen

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"cuelang.org/go/cue/format"
)

const (
	// PoolsPerNode is how many pools run on each generated node.
	PoolsPerNode = 10
	// GPUsPerNode is how many GPUs each generated node declares.
	GPUsPerNode = 8
	// NodesPerFile is how many nodes each file under nodes/ declares.
	NodesPerFile = 10
)

// NodeCount returns how many nodes Write declares for the given number of pools.
func NodeCount(pools int) int { return (pools + PoolsPerNode - 1) / PoolsPerNode }

// NodeFileCount returns how many files Write puts under nodes/ for the given number of pools.
func NodeFileCount(pools int) int { return (NodeCount(pools) + NodesPerFile - 1) / NodesPerFile }

const gi = "Gi"

// gpuSizes is the VRAM of GPU i of every node, in Gi: 0-3 large, 4-7 small.
var gpuSizes = [GPUsPerNode]int{80, 80, 80, 80, 24, 24, 24, 24}

// gpuModels holds the product names of the large and small GPUs, alternating by node.
var gpuModels = [2][2]string{
	{"NVIDIA H100 80GB HBM3", "NVIDIA L4"},
	{"NVIDIA A100-SXM4-80GB", "NVIDIA A10"},
}

// slot is one of the PoolsPerNode pool shapes of a node.
type slot struct {
	name    string // short model name, the start of the pool id
	engine  string
	path    string
	ctx     int // 0: the schema default
	devices []int
	split   []string
	vramGi  int // 0: not declared
	share   bool
	port    int // 0: assigned at start
	flags   []string
	env     [][2]string
	restart string // CUE struct body, "" for the defaults
}

// slots use GPUs 0-7 of a node so that every prefix of them is valid:
// GPUs 0-5 hold one pool each (or one mixed-mask pool over 2 and 4), GPU 6
// is shared by slots 4, 5 and 9 (8+8+6 = 22Gi of 24Gi), GPU 7 by slots 6,
// 7 and 8 (7+9+6 = 22Gi of 24Gi).
var slots = [PoolsPerNode]slot{
	{
		name: "llama31-70b", engine: "vllm", path: "/models/meta-llama/Llama-3.1-70B-Instruct", ctx: 32768,
		devices: []int{0, 1}, vramGi: 120, port: 8000,
		flags:   []string{"--gpu-memory-utilization", "0.75", "--enable-prefix-caching"},
		env:     [][2]string{{"HF_HUB_OFFLINE", "1"}, {"VLLM_LOGGING_LEVEL", "WARNING"}},
		restart: `startupTimeout: "20m", breaker: failures: 3`,
	},
	{
		name: "qwen25-72b-q4", engine: "llamacpp", path: "/models/gguf/Qwen2.5-72B-Instruct-Q4_K_M.gguf", ctx: 16384,
		devices: []int{2, 4}, split: []string{"0.8", "0.2"}, vramGi: 60, port: 8001,
		flags: []string{"--parallel", "4", "--flash-attn", "on", "--cont-batching"},
	},
	{
		name: "mixtral-8x7b", engine: "tgi", path: "/models/mistralai/Mixtral-8x7B-Instruct-v0.1", ctx: 8192,
		devices: []int{3}, vramGi: 64, port: 8002,
		flags:   []string{"--max-concurrent-requests", "128"},
		env:     [][2]string{{"HUGGINGFACE_HUB_CACHE", "/models/hf"}},
		restart: `maxBackoff: "2m", jitter: 0.2`,
	},
	{
		name: "llama31-8b-q8", engine: "llamacpp", path: "/models/gguf/Llama-3.1-8B-Instruct-Q8_0.gguf",
		devices: []int{5},
		flags:   []string{"-np", "2", "--metrics"},
	},
	{
		name: "phi35-mini", engine: "llamacpp", path: "/models/gguf/Phi-3.5-mini-instruct-Q6_K.gguf", ctx: 8192,
		devices: []int{6}, vramGi: 8, share: true, port: 8004,
		flags: []string{"--parallel", "2"},
	},
	{
		name: "qwen25-3b", engine: "vllm", path: "/models/Qwen/Qwen2.5-3B-Instruct", ctx: 8192,
		devices: []int{6}, vramGi: 8, share: true, port: 8005,
		flags: []string{"--max-num-seqs", "32", "--gpu-memory-utilization", "0.33"},
	},
	{
		name: "gemma2-2b", engine: "llamacpp", path: "/models/gguf/gemma-2-2b-it-Q8_0.gguf",
		devices: []int{7}, vramGi: 7, share: true, port: 8006,
		flags: []string{"--parallel", "4", "--threads", "4"},
		env:   [][2]string{{"LLAMA_LOG_COLORS", "0"}},
	},
	{
		name: "smollm2-1b7", engine: "tgi", path: "/models/HuggingFaceTB/SmolLM2-1.7B-Instruct",
		devices: []int{7}, vramGi: 9, share: true, port: 8007,
	},
	{
		name: "nomic-embed", engine: "llamacpp", path: "/models/gguf/nomic-embed-text-v1.5.f16.gguf", ctx: 2048,
		devices: []int{7}, vramGi: 6, share: true, port: 8008,
		flags:   []string{"--embeddings", "--parallel", "8"},
		restart: `drainTimeout: "5s", stopGrace: "5s"`,
	},
	{
		name: "qwen25-coder-1b5", engine: "llamacpp", path: "/models/gguf/Qwen2.5-Coder-1.5B-Instruct-Q8_0.gguf", ctx: 4096,
		devices: []int{6}, vramGi: 6, share: true, port: 8009,
		flags: []string{"--parallel", "2", "--cache-reuse", "256"},
	},
}

// Write generates a config repository under dir (created if needed): pools
// pools spread evenly over files files in dir/pools, and the NodeCount(pools)
// nodes they run on in dir/nodes, NodesPerFile to a file. Files alternate
// between having a package clause and not. It needs 1 <= files <= pools,
// and dir must be missing or empty, so that no stale file joins the config.
func Write(dir string, pools, files int) error {
	if pools < 1 || files < 1 || files > pools {
		return fmt.Errorf("benchgen: want 1 <= files <= pools, got %d pools in %d files", pools, files)
	}
	switch entries, err := os.ReadDir(dir); {
	case errors.Is(err, fs.ErrNotExist):
	case err != nil:
		return err
	case len(entries) > 0:
		return fmt.Errorf("benchgen: %s is not empty", dir)
	}
	for _, sub := range []string{"nodes", "pools"} {
		if err := os.MkdirAll(filepath.Join(dir, sub), 0o755); err != nil {
			return err
		}
	}
	nodes := NodeCount(pools)
	nodeFiles := NodeFileCount(pools)
	for f := range nodeFiles {
		var b strings.Builder
		header(&b, f, fmt.Sprintf("nodes %d to %d of %d", f*NodesPerFile, min((f+1)*NodesPerFile, nodes)-1, nodes))
		for n := f * NodesPerFile; n < min((f+1)*NodesPerFile, nodes); n++ {
			writeNode(&b, n)
		}
		if err := writeFile(filepath.Join(dir, "nodes", fmt.Sprintf("nodes-%s.cue", pad(f, nodeFiles))), b.String()); err != nil {
			return err
		}
	}
	for f := range files {
		lo, hi := f*pools/files, (f+1)*pools/files
		var b strings.Builder
		header(&b, f, fmt.Sprintf("pools %d to %d of %d", lo, hi-1, pools))
		for i := lo; i < hi; i++ {
			writePool(&b, i)
		}
		if err := writeFile(filepath.Join(dir, "pools", fmt.Sprintf("pools-%s.cue", pad(f, files))), b.String()); err != nil {
			return err
		}
	}
	return nil
}

// pad formats i with as many digits as count-1 has, so that names sort in order.
func pad(i, count int) string {
	return fmt.Sprintf("%0*d", len(strconv.Itoa(max(count-1, 0))), i)
}

func header(b *strings.Builder, fileIndex int, what string) {
	fmt.Fprintf(b, "// Generated by tools/genconfig for benchmarks: %s.\n", what)
	if fileIndex%2 == 0 {
		b.WriteString("package poolmanagerd\n")
	}
	b.WriteString("\n")
}

// NodeName returns the name of generated node n.
func NodeName(n int) string { return fmt.Sprintf("gpu-%04d", n) }

// PoolID returns the id of generated pool i.
func PoolID(i int) string { return fmt.Sprintf("%s-%05d", slots[i%PoolsPerNode].name, i) }

func writeNode(b *strings.Builder, n int) {
	fmt.Fprintf(b, "nodes: %q: gpus: [\n", NodeName(n))
	for g, size := range gpuSizes {
		model := gpuModels[n%2][0]
		if size < 80 {
			model = gpuModels[n%2][1]
		}
		fmt.Fprintf(b, "\t{index: %d, uuid: %q, model: %q, vram: %d%s},\n", g, uuid(n, g), model, size, gi)
	}
	b.WriteString("]\n\n")
}

// uuid returns a deterministic, unique NVML-style UUID for GPU g of node n.
func uuid(n, g int) string {
	sum := sha256.Sum256(fmt.Appendf(nil, "pool-managerd benchgen node %d gpu %d", n, g))
	x := hex.EncodeToString(sum[:16])
	return "GPU-" + x[0:8] + "-" + x[8:12] + "-" + x[12:16] + "-" + x[16:20] + "-" + x[20:32]
}

func writePool(b *strings.Builder, i int) {
	s := slots[i%PoolsPerNode]
	fmt.Fprintf(b, "pools: %q: {\n", PoolID(i))
	fmt.Fprintf(b, "node: %q\n", NodeName(i/PoolsPerNode))
	fmt.Fprintf(b, "engine: %q\n", s.engine)
	if s.ctx != 0 {
		fmt.Fprintf(b, "model: {path: %q, ctx: %d}\n", s.path, s.ctx)
	} else {
		fmt.Fprintf(b, "model: path: %q\n", s.path)
	}
	fmt.Fprintf(b, "devices: [%s]\n", joinInts(s.devices))
	if len(s.split) > 0 {
		fmt.Fprintf(b, "split: [%s]\n", strings.Join(s.split, ", "))
	}
	if s.vramGi != 0 {
		fmt.Fprintf(b, "vram: %d%s\n", s.vramGi, gi)
	}
	if s.share {
		b.WriteString("share: true\n")
	}
	if s.port != 0 {
		fmt.Fprintf(b, "port: %d\n", s.port)
	}
	if len(s.flags) > 0 {
		quoted := make([]string, len(s.flags))
		for k, f := range s.flags {
			quoted[k] = strconv.Quote(f)
		}
		fmt.Fprintf(b, "flags: [%s]\n", strings.Join(quoted, ", "))
	}
	if len(s.env) > 0 {
		b.WriteString("env: {\n")
		for _, kv := range s.env {
			fmt.Fprintf(b, "%s: %q\n", kv[0], kv[1])
		}
		b.WriteString("}\n")
	}
	if s.restart != "" {
		fmt.Fprintf(b, "restart: {%s}\n", s.restart)
	}
	b.WriteString("}\n\n")
}

func joinInts(xs []int) string {
	parts := make([]string, len(xs))
	for i, x := range xs {
		parts[i] = strconv.Itoa(x)
	}
	return strings.Join(parts, ", ")
}

// writeFile formats src as cue fmt would and writes it to path.
func writeFile(path, src string) error {
	out, err := format.Source([]byte(src))
	if err != nil {
		return errors.Join(fmt.Errorf("benchgen: generated %s does not format", path), err)
	}
	return os.WriteFile(path, out, 0o644)
}
