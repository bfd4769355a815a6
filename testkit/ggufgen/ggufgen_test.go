package ggufgen_test

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"github.com/google/go-cmp/cmp"
	gguf "github.com/gpustack/gguf-parser-go"

	"github.com/poolmanagerd/pool-managerd/testkit/ggufgen"
)

// header is what the parser reads back of a written model.
type header struct {
	Arch                                                   string
	Name                                                   string
	FileType                                               gguf.GGUFFileType
	Tensors                                                int
	Layers, Embedding, FeedForward, Heads, HeadsKV, CtxLen uint64
	Vocab, Tokens                                          uint64
}

func parse(t *testing.T, path string) (*gguf.GGUFFile, header) {
	t.Helper()
	gf, err := gguf.ParseGGUFFile(path)
	if err != nil {
		t.Fatalf("ParseGGUFFile: %v", err)
	}
	a, md, tk := gf.Architecture(), gf.Metadata(), gf.Tokenizer()
	var ff uint64
	if len(a.FeedForwardLength) > 0 {
		ff = a.FeedForwardLength[0]
	}
	return gf, header{
		Arch: a.Architecture, Name: md.Name, FileType: md.FileType,
		Tensors: len(gf.TensorInfos),
		Layers:  a.BlockCount, Embedding: a.EmbeddingLength, FeedForward: ff,
		Heads: a.AttentionHeadCount, HeadsKV: a.AttentionHeadCountKV, CtxLen: a.MaximumContextLength,
		Vocab: a.VocabularyLength, Tokens: tk.TokensLength,
	}
}

func TestWriteParsesBack(t *testing.T) {
	for _, tc := range []struct {
		name  string
		model ggufgen.Model
		// The apparent size, bounds from real Q4_K_M files of that shape.
		minSize, maxSize int64
	}{
		{"tiny", ggufgen.Tiny(), 1, 4 << 20},
		{"tiny-q8", func() ggufgen.Model { m := ggufgen.Tiny(); m.Quant = ggufgen.Q8; return m }(), 1, 4 << 20},
		{"tiny-f16", func() ggufgen.Model { m := ggufgen.Tiny(); m.Quant = ggufgen.F16; return m }(), 1, 8 << 20},
		// Llama-2-7B Q4_K_M is 4.08 GB.
		{"7b", ggufgen.Llama7B(), 3_900_000_000, 4_200_000_000},
		// Llama-3-70B Q4_K_M is 42.5 GB.
		{"70b", ggufgen.Llama70B(), 41_000_000_000, 44_000_000_000},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), tc.name+".gguf")
			size, err := ggufgen.Write(path, tc.model)
			if err != nil {
				t.Fatal(err)
			}
			if size < tc.minSize || size > tc.maxSize {
				t.Errorf("size = %d, want %d..%d", size, tc.minSize, tc.maxSize)
			}
			fi, err := os.Stat(path)
			if err != nil {
				t.Fatal(err)
			}
			if fi.Size() != size {
				t.Errorf("file is %d bytes, Write returned %d", fi.Size(), size)
			}

			gf, got := parse(t, path)
			m := tc.model
			want := header{
				Arch: m.Arch, Name: m.Name, FileType: m.FileType(), Tensors: m.TensorCount(),
				Layers: uint64(m.Layers), Embedding: uint64(m.Embedding), FeedForward: uint64(m.FeedForward),
				Heads: uint64(m.Heads), HeadsKV: uint64(m.HeadsKV), CtxLen: uint64(m.ContextLength),
				Vocab: uint64(m.Vocab), Tokens: uint64(m.Vocab),
			}
			if diff := cmp.Diff(want, got); diff != "" {
				t.Errorf("parsed header (-want +got):\n%s", diff)
			}
			if int64(gf.Size) != size {
				t.Errorf("parser size = %d, want %d", gf.Size, size)
			}
			// The tensors fill the data region exactly, up to the padding of the last one.
			if held, need := uint64(gf.ModelSize), gf.TensorInfos.Bytes(); held < need || held-need >= ggufgen.Alignment {
				t.Errorf("data region = %d bytes, tensors need %d", held, need)
			}
			if gf.TensorDataStartOffset%ggufgen.Alignment != 0 {
				t.Errorf("tensor data starts at %d, not aligned to %d", gf.TensorDataStartOffset, ggufgen.Alignment)
			}
			for _, ti := range gf.TensorInfos {
				if ti.Offset%ggufgen.Alignment != 0 {
					t.Errorf("tensor %s at offset %d, not aligned", ti.Name, ti.Offset)
				}
			}
		})
	}
}

func TestWriteTensors(t *testing.T) {
	path := filepath.Join(t.TempDir(), "7b.gguf")
	if _, err := ggufgen.Write(path, ggufgen.Llama7B()); err != nil {
		t.Fatal(err)
	}
	gf, err := gguf.ParseGGUFFile(path)
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]string{}
	for _, ti := range gf.TensorInfos {
		switch ti.Name {
		case "token_embd.weight", "output.weight", "output_norm.weight",
			"blk.0.attn_q.weight", "blk.0.attn_k.weight", "blk.0.attn_v.weight", "blk.5.attn_v.weight",
			"blk.0.ffn_gate.weight", "blk.0.ffn_down.weight", "blk.5.ffn_down.weight", "blk.31.attn_norm.weight":
			got[ti.Name] = ti.Type.String() + " " + joinDims(ti.Dimensions)
		}
	}
	want := map[string]string{
		"token_embd.weight":       "Q4_K 4096x32000",
		"output.weight":           "Q6_K 4096x32000",
		"output_norm.weight":      "F32 4096",
		"blk.0.attn_q.weight":     "Q4_K 4096x4096",
		"blk.0.attn_k.weight":     "Q4_K 4096x4096",
		"blk.0.attn_v.weight":     "Q6_K 4096x4096", // use_more_bits: first eighth
		"blk.5.attn_v.weight":     "Q4_K 4096x4096",
		"blk.0.ffn_gate.weight":   "Q4_K 4096x11008",
		"blk.0.ffn_down.weight":   "Q6_K 11008x4096",
		"blk.5.ffn_down.weight":   "Q4_K 11008x4096",
		"blk.31.attn_norm.weight": "F32 4096",
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("tensors (-want +got):\n%s", diff)
	}
}

func joinDims(d []uint64) string {
	s := make([]string, len(d))
	for i, v := range d {
		s[i] = strconv.FormatUint(v, 10)
	}
	return strings.Join(s, "x")
}

func TestWriteIsSparse(t *testing.T) {
	path := filepath.Join(t.TempDir(), "70b.gguf")
	size, err := ggufgen.Write(path, ggufgen.Llama70B())
	if err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		t.Skip("no block counts on this platform")
	}
	onDisk := st.Blocks * 512
	// The header, with a 128256-token vocabulary, is a few MiB; the 40 GiB of
	// tensor data must not be on disk.
	t.Logf("apparent size %d bytes, %d bytes on disk", size, onDisk)
	if onDisk > 16<<20 {
		t.Errorf("file uses %d bytes of disk for an apparent size of %d; want a sparse file", onDisk, size)
	}
	if size < 40_000_000_000 {
		t.Errorf("apparent size = %d, want over 40 GB", size)
	}
}

func TestWriteRejects(t *testing.T) {
	for _, tc := range []struct {
		name   string
		modify func(*ggufgen.Model)
		want   string
	}{
		{"no layers", func(m *ggufgen.Model) { m.Layers = 0 }, "layers must be"},
		{"heads", func(m *ggufgen.Model) { m.Heads = 3 }, "not a multiple of the 3 heads"},
		{"kv heads", func(m *ggufgen.Model) { m.HeadsKV = 3 }, "not a multiple of the 3 KV heads"},
		{"k-quant rows", func(m *ggufgen.Model) { m.FeedForward = 500 }, "multiples of 256"},
		{"quant", func(m *ggufgen.Model) { m.Quant = "Q1" }, `unknown quantisation "Q1"`},
		{"arch", func(m *ggufgen.Model) { m.Arch = "" }, "no architecture"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m := ggufgen.Tiny()
			tc.modify(&m)
			path := filepath.Join(t.TempDir(), "m.gguf")
			_, err := ggufgen.Write(path, m)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Write = %v, want an error containing %q", err, tc.want)
			}
			if _, err := os.Stat(path); !os.IsNotExist(err) {
				t.Errorf("Write left a file behind (stat: %v)", err)
			}
		})
	}
}
