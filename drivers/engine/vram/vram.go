// Package vram works out how much GPU memory a pool's engine holds on each of
// its GPUs, before it starts and in `plan`.
//
// A pool that declares `vram` gets that total spread over its GPUs by its
// split. A llama.cpp pool without it gets an estimate read from its GGUF
// file's header by gguf-parser-go: llama.cpp's own layer placement, with
// every layer offloaded (pool-managerd runs llama-server with
// --n-gpu-layers 999, --split-mode layer and --fit off), the pool's context
// size and its tensor split. vLLM and TGI pools must declare `vram`: their
// memory use is a setting (--gpu-memory-utilization, --cuda-memory-fraction),
// not a property of the model.
package vram

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math"
	"net/http"
	"os"
	"strings"
	"time"

	gguf "github.com/gpustack/gguf-parser-go"

	"github.com/poolmanagerd/pool-managerd/schema"
)

// The sources of an estimate.
const (
	// SourceGGUF marks an estimate read from the model's GGUF file.
	SourceGGUF = "gguf"
	// SourceDeclared marks the pool's declared `vram` spread over its GPUs.
	SourceDeclared = "declared"
)

// GPULayers is the --n-gpu-layers pool-managerd passes llama-server: more
// layers than any model has, so every block and the output layer are offloaded.
const GPULayers = 999

// Estimate is the VRAM a pool's engine needs.
type Estimate struct {
	// PerGPU is the bytes the engine holds on each GPU of the device mask, in
	// the order of the pool's Devices (and of its split).
	PerGPU []uint64
	// Total is the sum of PerGPU.
	Total uint64
	// Layers is the model's block count (n_layer), every one offloaded; 0 for
	// a declared estimate.
	Layers int
	// Source is SourceGGUF or SourceDeclared.
	Source string
}

// Option adjusts how EstimateGGUF models the llama-server run.
type Option func(*options)

type options struct {
	flashAttention bool

	// For EstimateGGUFRemote.
	remoteTimeout    time.Duration
	remoteBufferSize int
	remoteClient     *http.Client
}

// FlashAttention says whether llama-server runs with flash attention. The
// default is on: llama-server's --flash-attn defaults to auto, which turns it
// on for the CUDA GPUs pool-managerd runs on. Off costs a compute buffer of
// n_ctx × n_ubatch × n_head floats per GPU (4 GiB for a 70B model at 32k).
func FlashAttention(on bool) Option {
	return func(o *options) { o.flashAttention = on }
}

// declaredNeed checks the pool's split against its devices and returns its
// declared need when it has one (nil when its GGUF file is to be
// estimated, at the split returned); a sharded engine must declare one.
func declaredNeed(pool *schema.Pool) ([]float64, *Estimate, error) {
	split := pool.EffectiveSplit()
	if len(split) != len(pool.Devices) {
		return nil, &Estimate{}, fmt.Errorf("pool %s: a split of %d shares for %d devices", pool.ID, len(split), len(pool.Devices))
	}
	if pool.VRAM > 0 {
		e := Declared(uint64(pool.VRAM), split)
		return split, &e, nil
	}
	if pool.Engine != schema.EngineLlamaCpp {
		return nil, &Estimate{}, fmt.Errorf("pool %s: vram must be declared for a %s pool: pool-managerd estimates only llama.cpp GGUF models",
			pool.ID, pool.Engine)
	}
	return split, nil, nil
}

// For returns the pool's VRAM need: its declared `vram` when it has one,
// else, for a llama.cpp pool, the estimate from its GGUF file.
func For(ctx context.Context, pool *schema.Pool) (Estimate, error) {
	split, declared, err := declaredNeed(pool)
	if err != nil || declared != nil {
		return *declared, err
	}
	e, err := EstimateGGUF(ctx, pool.Model.Path, pool.Model.Ctx, split, FlashAttention(flashAttention(pool)))
	if err != nil {
		return Estimate{}, fmt.Errorf("pool %s: %w (declare vram to skip the estimate)", pool.ID, err)
	}
	return e, nil
}

// flashAttention reports whether the pool's llama-server runs with flash
// attention: on (auto) unless its flags or environment turn it off.
func flashAttention(pool *schema.Pool) bool {
	on := true
	if v, ok := pool.Env["LLAMA_ARG_FLASH_ATTN"]; ok {
		on = !isOff(v)
	}
	// Flags come after the environment: llama.cpp lets the command line win.
	for i, f := range pool.Flags {
		name, value, hasValue := strings.Cut(f, "=")
		if name != "-fa" && name != "--flash-attn" && name != "--flash_attn" {
			continue
		}
		if !hasValue {
			if i+1 >= len(pool.Flags) {
				continue
			}
			value = pool.Flags[i+1]
		}
		on = !isOff(value)
	}
	return on
}

func isOff(v string) bool {
	switch strings.ToLower(strings.TrimSpace(v)) {
	case "off", "0", "false", "disabled":
		return true
	}
	return false
}

// Declared spreads a declared total over the GPUs by the split (shares in the
// order of the devices, normally summing to 1). The parts add up to total
// exactly. A split that is empty gives no parts; one with a negative or
// non-finite share, or no positive one, is taken as even.
func Declared(total uint64, split []float64) Estimate {
	e := Estimate{Total: total, Source: SourceDeclared}
	if len(split) == 0 {
		return e
	}
	cum, err := CumulativeSplit(split)
	if err != nil {
		even := make([]float64, len(split))
		for i := range even {
			even[i] = 1
		}
		cum, _ = CumulativeSplit(even)
	}
	e.PerGPU = make([]uint64, len(split))
	var prev uint64
	for i, c := range cum {
		end := uint64(math.Round(float64(total) * c))
		if i == len(cum)-1 || end > total {
			end = total
		}
		end = max(end, prev)
		e.PerGPU[i] = end - prev
		prev = end
	}
	return e
}

// CumulativeSplit converts per-GPU shares (our split, as llama-server's
// --tensor-split takes it) into the cumulative fractions gguf-parser-go's
// WithTensorSplitFraction takes: the share of all GPUs up to and including
// each one, the last exactly 1. [0.67, 0.33] becomes [0.67, 1]; [1, 1, 2]
// becomes [0.25, 0.5, 1]. The shares are normalised by their sum, as
// llama.cpp does.
//
// llama.cpp and the library put offloaded layer i of n on the first GPU
// whose cumulative fraction exceeds i/(n+1), the +1 being the output layer.
func CumulativeSplit(split []float64) ([]float64, error) {
	if len(split) == 0 {
		return nil, errors.New("empty split")
	}
	var sum float64
	for i, s := range split {
		if math.IsNaN(s) || math.IsInf(s, 0) || s < 0 {
			return nil, fmt.Errorf("split[%d] = %v: shares must be finite and non-negative", i, s)
		}
		sum += s
	}
	if sum <= 0 || math.IsInf(sum, 0) {
		return nil, fmt.Errorf("split %v: no GPU has a share", split)
	}
	cum := make([]float64, len(split))
	var acc float64
	for i, s := range split {
		acc += s
		cum[i] = min(acc/sum, 1)
	}
	// The library ignores fractions whose last one is not exactly 1, and
	// rounding can leave it a hair under.
	cum[len(cum)-1] = 1
	return cum, nil
}

// EstimateGGUF estimates the VRAM llama-server holds on each GPU to serve the
// GGUF model at path with a context of ctxSize tokens, every layer offloaded
// and split by layer over the GPUs by split (per-GPU shares, in device order).
//
// Only the file's header is read (metadata and tensor infos, never the tensor
// data, skipping large metadata arrays such as the vocabulary), so a 40 GiB
// model costs a few milliseconds; a model split into shards
// (name-00001-of-00003.gguf) is read from all its shards. The file is only
// ever read locally.
//
// Each GPU's part is gguf-parser-go's NonUMA VRAM for that device, the
// figure for a discrete GPU: the weights of the layers it holds (and the
// output layer, on the last GPU), its KV cache for those layers, and its
// compute buffer. It leaves out the CUDA context and cuBLAS workspace that
// any CUDA process holds per GPU (a few hundred MiB).
func EstimateGGUF(ctx context.Context, path string, ctxSize int, split []float64, opts ...Option) (Estimate, error) {
	o := options{flashAttention: true}
	for _, opt := range opts {
		opt(&o)
	}
	if err := ctx.Err(); err != nil {
		return Estimate{}, err
	}
	if ctxSize <= 0 || ctxSize > math.MaxInt32 {
		return Estimate{}, fmt.Errorf("context size %d: must be in 1..%d", ctxSize, math.MaxInt32)
	}
	cum, err := CumulativeSplit(split)
	if err != nil {
		return Estimate{}, err
	}

	gf, err := parse(path)
	if err != nil {
		return Estimate{}, err
	}
	if err := ctx.Err(); err != nil {
		return Estimate{}, err
	}
	return estimateFile(gf, path, ctxSize, split, cum, o)
}

// estimateFile estimates the run of the parsed GGUF file gf; path (a file's
// path or a URL) names it in errors.
func estimateFile(gf *gguf.GGUFFile, path string, ctxSize int, split, cum []float64, o options) (Estimate, error) {
	a := gf.Architecture()
	if a.Type != "model" {
		return Estimate{}, fmt.Errorf("model file %s holds a GGUF %s (%s), not a model llama-server can serve",
			path, a.Type, a.Architecture)
	}
	if a.BlockCount == 0 || a.EmbeddingLength == 0 {
		return Estimate{}, fmt.Errorf("model file %s: unsupported architecture %q: no %s.block_count and %s.embedding_length metadata",
			path, a.Architecture, a.Architecture, a.Architecture)
	}

	runOpts := []gguf.GGUFRunEstimateOption{
		gguf.WithLLaMACppContextSize(int32(ctxSize)),
		gguf.WithLLaMACppOffloadLayers(GPULayers),
		gguf.WithLLaMACppSplitMode(gguf.LLaMACppSplitModeLayer),
		gguf.WithTensorSplitFraction(cum),
		gguf.WithMainGPUIndex(0),
	}
	if o.flashAttention {
		runOpts = append(runOpts, gguf.WithFlashAttention())
	}
	run, err := estimate(gf, runOpts)
	if err != nil {
		return Estimate{}, fmt.Errorf("model file %s: %w", path, err)
	}
	if len(run.Devices) != len(split)+1 {
		return Estimate{}, fmt.Errorf("model file %s: the estimate covers %d GPUs, not %d", path, len(run.Devices)-1, len(split))
	}
	// mmap changes only the host (RAM) and UMA figures; no extra per-device
	// footprint is added, see the doc comment.
	sum := run.SummarizeItem(true, 0, 0)
	e := Estimate{
		PerGPU: make([]uint64, len(sum.VRAMs)),
		Layers: int(a.BlockCount),
		Source: SourceGGUF,
	}
	for i, v := range sum.VRAMs {
		e.PerGPU[i] = uint64(v.NonUMA)
		e.Total += uint64(v.NonUMA)
	}
	return e, nil
}

// ggufFixedHeader is the size of a GGUF file's fixed header: magic, version,
// tensor count and metadata count.
const ggufFixedHeader = 4 + 4 + 8 + 8

// parse reads the header of the GGUF file at path.
func parse(path string) (gf *gguf.GGUFFile, err error) {
	fi, err := os.Stat(path)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return nil, &notFoundError{path: path, err: err}
	case err != nil:
		return nil, fmt.Errorf("model file %s: %w", path, err)
	case fi.IsDir():
		return nil, fmt.Errorf("model file %s is a directory, not a GGUF file", path)
	case !fi.Mode().IsRegular():
		return nil, fmt.Errorf("model file %s is not a regular file", path)
	case fi.Size() < ggufFixedHeader:
		return nil, fmt.Errorf("model file %s is not a GGUF file: %d bytes is too short for a header", path, fi.Size())
	}
	// The parser panics on some malformed files rather than failing.
	defer func() {
		if r := recover(); r != nil {
			gf, err = nil, fmt.Errorf("model file %s is not a valid GGUF file: %v", path, r)
		}
	}()
	// SkipLargeMetadata skips the values of large arrays (the vocabulary and
	// merges); mmap turns the parser's many small reads and seeks into memory
	// accesses (9 ms for the 70B header instead of 90 ms). Only the header's
	// pages are touched; the tensor data is never read.
	gf, err = gguf.ParseGGUFFile(path, gguf.SkipLargeMetadata(), gguf.UseMMap())
	switch {
	case errors.Is(err, gguf.ErrGGUFFileInvalidFormat):
		return nil, fmt.Errorf("model file %s is not a GGUF file", path)
	case errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF):
		return nil, fmt.Errorf("model file %s is not a GGUF file: it ends inside the header", path)
	case errors.Is(err, fs.ErrNotExist):
		// A missing shard of a split model.
		return nil, fmt.Errorf("model file %s: %w", path, err)
	case err != nil:
		return nil, fmt.Errorf("model file %s is not a valid GGUF file: %w", path, err)
	}
	return gf, nil
}

// estimate runs the library's estimate, turning its panics (on invalid
// options or unexpected files) into errors.
func estimate(gf *gguf.GGUFFile, opts []gguf.GGUFRunEstimateOption) (run gguf.LLaMACppRunEstimate, err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("estimate: %v", r)
		}
	}()
	return gf.EstimateLLaMACppRun(opts...), nil
}

// notFoundError is a missing model file; it matches fs.ErrNotExist.
type notFoundError struct {
	path string
	err  error
}

func (e *notFoundError) Error() string { return "model file " + e.path + " not found" }
func (e *notFoundError) Unwrap() error { return e.err }
