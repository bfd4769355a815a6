// Package ggufgen writes synthetic GGUF model files for tests: a valid GGUF v3
// header (metadata and tensor infos shaped like a real llama.cpp model of the
// given size and quantisation) followed by a tensor data region that is never
// written. The file is truncated to its full size, so the data region is a
// hole: a "70B model" has its real apparent size (42.5 GB) while using a
// few MiB of disk, and reads of the data give zeros.
//
// The files are meant for code that reads GGUF headers (gguf-parser-go, VRAM
// estimates) and for stand-in engines. The tokenizer is a SentencePiece
// ("llama") vocabulary of the declared size, with the control and byte tokens
// llama.cpp looks up, so that llama.cpp should be able to load the file (not
// tried); with all-zero weights it would produce nothing meaningful.
package ggufgen

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"os"
	"strconv"

	gguf "github.com/gpustack/gguf-parser-go"
)

// Alignment is the general.alignment the files declare and honour.
const Alignment = 32

// Quant names how a model's weights are quantised.
type Quant string

// The quantisations Write knows.
const (
	// Q4KM is llama.cpp's Q4_K_M mix: Q4_K for most weights, Q6_K for the
	// output and for attn_v and ffn_down in about half the layers.
	Q4KM Quant = "Q4_K_M"
	// Q8 is Q8_0 for every weight matrix.
	Q8 Quant = "Q8_0"
	// F16 is half precision for every weight matrix.
	F16 Quant = "F16"
)

// Model describes the synthetic model to write. Every count must be positive.
type Model struct {
	// Arch is general.architecture, e.g. "llama".
	Arch string
	// KeyArch prefixes the hyperparameter keys ("<KeyArch>.block_count");
	// empty means Arch. Tests set it to write a file whose hyperparameters do
	// not belong to its declared architecture.
	KeyArch string
	// Type is general.type, left out when empty (a model).
	Type string
	// Name is general.name.
	Name string
	// Layers is the block count (n_layer).
	Layers int
	// Embedding is the embedding length (n_embd).
	Embedding int
	// FeedForward is the feed-forward length (n_ff).
	FeedForward int
	// Heads and HeadsKV are the attention and KV head counts; HeadsKV < Heads
	// is grouped-query attention.
	Heads, HeadsKV int
	// ContextLength is the training context length (n_ctx_train).
	ContextLength int
	// Vocab is the vocabulary size (n_vocab).
	Vocab int
	// Quant is the weights' quantisation; empty means Q4KM.
	Quant Quant
}

// Llama7B is a Llama-2-7B-shaped model in Q4_K_M (about 3.8 GiB).
func Llama7B() Model {
	return Model{
		Arch: "llama", Name: "Synthetic Llama 7B",
		Layers: 32, Embedding: 4096, FeedForward: 11008, Heads: 32, HeadsKV: 32,
		ContextLength: 4096, Vocab: 32000, Quant: Q4KM,
	}
}

// Llama70B is a Llama-3-70B-shaped model in Q4_K_M (about 40 GiB): 80 layers,
// 8192 embedding, 28672 feed-forward, 64 heads with 8 KV heads.
func Llama70B() Model {
	return Model{
		Arch: "llama", Name: "Synthetic Llama 70B",
		Layers: 80, Embedding: 8192, FeedForward: 28672, Heads: 64, HeadsKV: 8,
		ContextLength: 8192, Vocab: 128256, Quant: Q4KM,
	}
}

// Tiny is a two-layer model of under a megabyte, for fast tests.
func Tiny() Model {
	return Model{
		Arch: "llama", Name: "Synthetic Tiny",
		Layers: 2, Embedding: 256, FeedForward: 512, Heads: 4, HeadsKV: 2,
		ContextLength: 2048, Vocab: 512, Quant: Q4KM,
	}
}

// TensorCount is how many tensors Write declares for the model: token_embd,
// output_norm and output, and nine per block.
func (m Model) TensorCount() int { return 3 + 9*m.Layers }

// FileType is the general.file_type Write declares for the model's quantisation.
func (m Model) FileType() gguf.GGUFFileType {
	switch m.quant() {
	case Q8:
		return gguf.GGUFFileTypeMostlyQ8_0
	case F16:
		return gguf.GGUFFileTypeMostlyF16
	default:
		return gguf.GGUFFileTypeMostlyQ4_K_M
	}
}

func (m Model) quant() Quant {
	if m.Quant == "" {
		return Q4KM
	}
	return m.Quant
}

func (m Model) keyArch() string {
	if m.KeyArch != "" {
		return m.KeyArch
	}
	return m.Arch
}

// Validate reports why Write cannot write the model, or nil.
func (m Model) Validate() error {
	switch m.quant() {
	case Q4KM, Q8, F16:
	default:
		return fmt.Errorf("unknown quantisation %q", m.Quant)
	}
	if m.Arch == "" {
		return errors.New("no architecture")
	}
	for _, f := range []struct {
		name string
		v    int
	}{
		{"layers", m.Layers}, {"embedding", m.Embedding}, {"feed-forward", m.FeedForward},
		{"heads", m.Heads}, {"KV heads", m.HeadsKV}, {"context length", m.ContextLength}, {"vocab", m.Vocab},
	} {
		if f.v <= 0 || f.v > math.MaxUint32 {
			return fmt.Errorf("%s must be in 1..%d, not %d", f.name, uint32(math.MaxUint32), f.v)
		}
	}
	if m.Embedding%m.Heads != 0 {
		return fmt.Errorf("embedding %d is not a multiple of the %d heads", m.Embedding, m.Heads)
	}
	if m.Heads%m.HeadsKV != 0 {
		return fmt.Errorf("heads %d is not a multiple of the %d KV heads", m.Heads, m.HeadsKV)
	}
	if m.Vocab < 3 {
		return fmt.Errorf("vocab %d cannot hold <unk>, <s> and </s>", m.Vocab)
	}
	// Every weight matrix's rows are Embedding or FeedForward wide, and
	// quantised rows are whole blocks.
	block := uint64(1)
	for _, t := range m.tensors() {
		if tt, ok := t.typ.Trait(); ok && tt.BlockSize > block {
			block = tt.BlockSize
		}
	}
	if uint64(m.Embedding)%block != 0 || uint64(m.FeedForward)%block != 0 {
		return fmt.Errorf("%s needs embedding (%d) and feed-forward (%d) lengths that are multiples of %d",
			m.quant(), m.Embedding, m.FeedForward, block)
	}
	return nil
}

type tensor struct {
	name string
	dims []uint64 // ggml order: dims[0] is the row length
	typ  gguf.GGMLType
}

func (t tensor) bytes() uint64 { return t.typ.RowSizeOf(t.dims) }

// useMoreBits is llama.cpp's rule for the layers whose attn_v and ffn_down a
// _M quantisation keeps at higher precision.
func useMoreBits(i, n int) bool {
	return i < n/8 || i >= 7*n/8 || (i-n/8)%3 == 2
}

// tensors lists the model's tensors in file order, as llama.cpp names them.
func (m Model) tensors() []tensor {
	e, ff, v := uint64(m.Embedding), uint64(m.FeedForward), uint64(m.Vocab)
	ekv := e / uint64(m.Heads) * uint64(m.HeadsKV)

	bulk, output := gguf.GGMLTypeQ4_K, gguf.GGMLTypeQ6_K
	switch m.quant() {
	case Q8:
		bulk, output = gguf.GGMLTypeQ8_0, gguf.GGMLTypeQ8_0
	case F16:
		bulk, output = gguf.GGMLTypeF16, gguf.GGMLTypeF16
	}
	attnV := func(i int) gguf.GGMLType {
		if m.quant() != Q4KM {
			return bulk
		}
		if useMoreBits(i, m.Layers) {
			return gguf.GGMLTypeQ6_K
		}
		if m.Heads >= 4*m.HeadsKV {
			// Grouped-query attention makes attn_v small; llama.cpp spends
			// more bits on it.
			return gguf.GGMLTypeQ5_K
		}
		return bulk
	}
	ffnDown := func(i int) gguf.GGMLType {
		if m.quant() == Q4KM && useMoreBits(i, m.Layers) {
			return gguf.GGMLTypeQ6_K
		}
		return bulk
	}

	ts := make([]tensor, 0, m.TensorCount())
	ts = append(ts, tensor{"token_embd.weight", []uint64{e, v}, bulk})
	for i := 0; i < m.Layers; i++ {
		p := "blk." + strconv.Itoa(i) + "."
		ts = append(ts,
			tensor{p + "attn_norm.weight", []uint64{e}, gguf.GGMLTypeF32},
			tensor{p + "attn_q.weight", []uint64{e, e}, bulk},
			tensor{p + "attn_k.weight", []uint64{e, ekv}, bulk},
			tensor{p + "attn_v.weight", []uint64{e, ekv}, attnV(i)},
			tensor{p + "attn_output.weight", []uint64{e, e}, bulk},
			tensor{p + "ffn_norm.weight", []uint64{e}, gguf.GGMLTypeF32},
			tensor{p + "ffn_gate.weight", []uint64{e, ff}, bulk},
			tensor{p + "ffn_up.weight", []uint64{e, ff}, bulk},
			tensor{p + "ffn_down.weight", []uint64{ff, e}, ffnDown(i)},
		)
	}
	ts = append(ts,
		tensor{"output_norm.weight", []uint64{e}, gguf.GGMLTypeF32},
		tensor{"output.weight", []uint64{e, v}, output},
	)
	return ts
}

func align(n uint64) uint64 { return (n + Alignment - 1) / Alignment * Alignment }

// Write writes the model to path as a GGUF v3 file whose tensor data region is
// a hole, and returns the file's apparent size. An existing file is replaced.
func Write(path string, m Model) (size int64, err error) {
	if err := m.Validate(); err != nil {
		return 0, fmt.Errorf("ggufgen: model %q: %w", m.Name, err)
	}
	f, err := os.Create(path)
	if err != nil {
		return 0, fmt.Errorf("ggufgen: %w", err)
	}
	defer func() {
		if cerr := f.Close(); err == nil && cerr != nil {
			err = fmt.Errorf("ggufgen: %w", cerr)
		}
		if err != nil {
			_ = os.Remove(path)
		}
	}()

	w := &writer{w: bufio.NewWriterSize(f, 1<<20)}
	tensors := m.tensors()
	kvs := m.metadata()

	w.u32(0x46554747) // "GGUF" read as a little-endian uint32
	w.u32(3)          // version
	w.u64(uint64(len(tensors)))
	w.u64(uint64(len(kvs)))
	for _, kv := range kvs {
		w.str(kv.key)
		w.value(kv.value)
	}
	var off uint64
	for _, t := range tensors {
		w.str(t.name)
		w.u32(uint32(len(t.dims)))
		for _, d := range t.dims {
			w.u64(d)
		}
		w.u32(uint32(t.typ))
		w.u64(off)
		off = align(off + t.bytes())
	}
	if w.err == nil {
		w.err = w.w.Flush()
	}
	if w.err != nil {
		return 0, fmt.Errorf("ggufgen: write %s: %w", path, w.err)
	}
	// The data region starts at the next alignment boundary and holds every
	// tensor, each padded to the alignment; it is left as a hole.
	size = int64(align(w.n) + off)
	if err := f.Truncate(size); err != nil {
		return 0, fmt.Errorf("ggufgen: %w", err)
	}
	return size, nil
}

type kv struct {
	key   string
	value any
}

// Typed values for the metadata, in GGUF's value type numbering.
type (
	stringArray  []string
	float32Array []float32
	int32Array   []int32
)

func (m Model) metadata() []kv {
	a := m.keyArch()
	kvs := []kv{
		{"general.architecture", m.Arch},
	}
	if m.Type != "" {
		kvs = append(kvs, kv{"general.type", m.Type})
	}
	kvs = append(kvs,
		kv{"general.name", m.Name},
		kv{"general.alignment", uint32(Alignment)},
		kv{"general.file_type", uint32(m.FileType())},
		kv{"general.quantization_version", uint32(2)},
		kv{a + ".block_count", uint32(m.Layers)},
		kv{a + ".context_length", uint32(m.ContextLength)},
		kv{a + ".embedding_length", uint32(m.Embedding)},
		kv{a + ".feed_forward_length", uint32(m.FeedForward)},
		kv{a + ".attention.head_count", uint32(m.Heads)},
		kv{a + ".attention.head_count_kv", uint32(m.HeadsKV)},
		kv{a + ".attention.layer_norm_rms_epsilon", float32(1e-5)},
		kv{a + ".rope.dimension_count", uint32(m.Embedding / m.Heads)},
		kv{a + ".rope.freq_base", float32(10000)},
		kv{a + ".vocab_size", uint32(m.Vocab)},
	)
	tokens, scores, types := m.vocab()
	kvs = append(kvs,
		kv{"tokenizer.ggml.model", "llama"},
		kv{"tokenizer.ggml.tokens", tokens},
		kv{"tokenizer.ggml.scores", scores},
		kv{"tokenizer.ggml.token_type", types},
		kv{"tokenizer.ggml.unknown_token_id", uint32(0)},
		kv{"tokenizer.ggml.bos_token_id", uint32(1)},
		kv{"tokenizer.ggml.eos_token_id", uint32(2)},
	)
	return kvs
}

// vocab returns a SentencePiece-style vocabulary of m.Vocab tokens: <unk>,
// <s>, </s>, the 256 byte tokens while they fit, then placeholders.
func (m Model) vocab() (stringArray, float32Array, int32Array) {
	const (
		normal  = 1
		unknown = 2
		control = 3
		byteTok = 6
	)
	tokens := make(stringArray, m.Vocab)
	scores := make(float32Array, m.Vocab)
	types := make(int32Array, m.Vocab)
	for i := range tokens {
		switch {
		case i == 0:
			tokens[i], types[i] = "<unk>", unknown
		case i == 1:
			tokens[i], types[i] = "<s>", control
		case i == 2:
			tokens[i], types[i] = "</s>", control
		case i < 3+256:
			tokens[i], types[i] = fmt.Sprintf("<0x%02X>", i-3), byteTok
		default:
			tokens[i], types[i] = "\u2581t"+strconv.Itoa(i), normal
			scores[i] = -float32(i)
		}
	}
	return tokens, scores, types
}

// writer writes little-endian GGUF values, remembering the first error and
// counting the bytes written.
type writer struct {
	w   *bufio.Writer
	n   uint64
	err error
	buf [8]byte
}

func (w *writer) write(p []byte) {
	if w.err != nil {
		return
	}
	n, err := w.w.Write(p)
	w.n += uint64(n)
	w.err = err
}

func (w *writer) u32(v uint32) {
	binary.LittleEndian.PutUint32(w.buf[:4], v)
	w.write(w.buf[:4])
}

func (w *writer) u64(v uint64) {
	binary.LittleEndian.PutUint64(w.buf[:8], v)
	w.write(w.buf[:8])
}

func (w *writer) str(s string) {
	w.u64(uint64(len(s)))
	w.write([]byte(s))
}

// GGUF metadata value types.
const (
	typeUint32  = 4
	typeInt32   = 5
	typeFloat32 = 6
	typeString  = 8
	typeArray   = 9
)

func (w *writer) value(v any) {
	switch v := v.(type) {
	case uint32:
		w.u32(typeUint32)
		w.u32(v)
	case float32:
		w.u32(typeFloat32)
		w.u32(math.Float32bits(v))
	case string:
		w.u32(typeString)
		w.str(v)
	case stringArray:
		w.u32(typeArray)
		w.u32(typeString)
		w.u64(uint64(len(v)))
		for _, s := range v {
			w.str(s)
		}
	case float32Array:
		w.u32(typeArray)
		w.u32(typeFloat32)
		w.u64(uint64(len(v)))
		for _, f := range v {
			w.u32(math.Float32bits(f))
		}
	case int32Array:
		w.u32(typeArray)
		w.u32(typeInt32)
		w.u64(uint64(len(v)))
		for _, i := range v {
			w.u32(uint32(i))
		}
	default:
		panic(fmt.Sprintf("ggufgen: no GGUF encoding for %T", v))
	}
}
