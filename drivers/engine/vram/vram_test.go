package vram_test

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"

	"github.com/poolmanagerd/pool-managerd/drivers/engine/vram"
	"github.com/poolmanagerd/pool-managerd/schema"
	"github.com/poolmanagerd/pool-managerd/testkit/ggufgen"
)

const gib = 1 << 30

// The synthetic models, written once for the package.
var model7B, model70B, modelTiny string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "vram-test-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	code := func() int {
		defer os.RemoveAll(dir)
		for _, f := range []struct {
			path  *string
			model ggufgen.Model
		}{
			{&model7B, ggufgen.Llama7B()},
			{&model70B, ggufgen.Llama70B()},
			{&modelTiny, ggufgen.Tiny()},
		} {
			*f.path = filepath.Join(dir, strings.ReplaceAll(f.model.Name, " ", "-")+".gguf")
			if _, err := ggufgen.Write(*f.path, f.model); err != nil {
				fmt.Fprintln(os.Stderr, err)
				return 1
			}
		}
		return m.Run()
	}()
	os.Exit(code)
}

func estimate(t testing.TB, path string, ctxSize int, split []float64, opts ...vram.Option) vram.Estimate {
	t.Helper()
	e, err := vram.EstimateGGUF(context.Background(), path, ctxSize, split, opts...)
	if err != nil {
		t.Fatalf("EstimateGGUF(%s, %d, %v): %v", filepath.Base(path), ctxSize, split, err)
	}
	return e
}

func sum(xs []uint64) uint64 {
	var s uint64
	for _, x := range xs {
		s += x
	}
	return s
}

func TestCumulativeSplit(t *testing.T) {
	for _, tc := range []struct {
		split, want []float64
	}{
		{[]float64{1}, []float64{1}},
		{[]float64{0.5, 0.5}, []float64{0.5, 1}},
		{[]float64{0.67, 0.33}, []float64{0.67, 1}},
		{[]float64{0.25, 0.25, 0.25, 0.25}, []float64{0.25, 0.5, 0.75, 1}},
		{[]float64{0.1, 0.2, 0.7}, []float64{0.1, 0.3, 1}},
		// Shares are normalised, as llama.cpp's --tensor-split 3,1 is.
		{[]float64{3, 1}, []float64{0.75, 1}},
		{[]float64{1, 1, 2}, []float64{0.25, 0.5, 1}},
		// A GPU may have no share.
		{[]float64{0, 1}, []float64{0, 1}},
		{[]float64{1, 0}, []float64{1, 1}},
	} {
		t.Run(fmt.Sprint(tc.split), func(t *testing.T) {
			got, err := vram.CumulativeSplit(tc.split)
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tc.want, got, cmpopts.EquateApprox(0, 1e-12)); diff != "" {
				t.Errorf("CumulativeSplit(%v) (-want +got):\n%s", tc.split, diff)
			}
			// The library drops fractions whose last one is not exactly 1.
			if got[len(got)-1] != 1 {
				t.Errorf("last fraction = %v, want exactly 1", got[len(got)-1])
			}
		})
	}
	// Rounding must not leave the last fraction under 1.
	thirds, err := vram.CumulativeSplit([]float64{0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1})
	if err != nil || thirds[9] != 1 {
		t.Errorf("CumulativeSplit(ten 0.1s) = %v, %v; want the last exactly 1", thirds, err)
	}
}

func TestCumulativeSplitRejects(t *testing.T) {
	for _, tc := range []struct {
		split []float64
		want  string
	}{
		{nil, "empty split"},
		{[]float64{0.5, -0.5}, "split[1] = -0.5"},
		{[]float64{math.NaN(), 1}, "split[0] = NaN"},
		{[]float64{math.Inf(1)}, "split[0] = +Inf"},
		{[]float64{0, 0}, "no GPU has a share"},
	} {
		if _, err := vram.CumulativeSplit(tc.split); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("CumulativeSplit(%v) = %v, want an error containing %q", tc.split, err, tc.want)
		}
	}
}

func TestDeclared(t *testing.T) {
	for _, tc := range []struct {
		name  string
		total uint64
		split []float64
		want  []uint64
	}{
		{"one", 24 * gib, []float64{1}, []uint64{24 * gib}},
		{"even", 100, []float64{0.5, 0.5}, []uint64{50, 50}},
		{"two to one", 100, []float64{0.67, 0.33}, []uint64{67, 33}},
		{"thirds add up", 10, []float64{1, 1, 1}, []uint64{3, 4, 3}},
		{"big", 80 * gib, []float64{0.75, 0.25}, []uint64{60 * gib, 20 * gib}},
		{"unnormalised", 40, []float64{3, 1}, []uint64{30, 10}},
		{"zero share", 40, []float64{0, 1}, []uint64{0, 40}},
		{"zero total", 0, []float64{0.5, 0.5}, []uint64{0, 0}},
		{"invalid split is even", 40, []float64{-1, 2}, []uint64{20, 20}},
		{"no split", 40, nil, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := vram.Declared(tc.total, tc.split)
			want := vram.Estimate{PerGPU: tc.want, Total: tc.total, Source: vram.SourceDeclared}
			if diff := cmp.Diff(want, got); diff != "" {
				t.Errorf("Declared(%d, %v) (-want +got):\n%s", tc.total, tc.split, diff)
			}
			if tc.want != nil && sum(got.PerGPU) != tc.total {
				t.Errorf("parts add up to %d, want %d", sum(got.PerGPU), tc.total)
			}
		})
	}
}

func TestEstimateGrowsWithContext(t *testing.T) {
	for _, tc := range []struct {
		name  string
		path  *string
		split []float64
		// kvPerToken is the f16 KV cache per token of context, over all layers:
		// layers × n_embd_kv × 2 (K and V) × 2 bytes.
		kvPerToken uint64
	}{
		{"7b", &model7B, []float64{1}, 32 * 4096 * 2 * 2},
		{"7b split", &model7B, []float64{0.67, 0.33}, 32 * 4096 * 2 * 2},
		{"70b split", &model70B, []float64{0.67, 0.33}, 80 * 1024 * 2 * 2},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var prev vram.Estimate
			prevCtx := 0
			for _, ctx := range []int{512, 2048, 4096, 8192, 16384, 32768} {
				e := estimate(t, *tc.path, ctx, tc.split)
				if prevCtx > 0 {
					if e.Total <= prev.Total {
						t.Errorf("ctx %d: total %d, not more than %d at ctx %d", ctx, e.Total, prev.Total, prevCtx)
					}
					for i := range e.PerGPU {
						if e.PerGPU[i] <= prev.PerGPU[i] {
							t.Errorf("ctx %d: GPU %d needs %d, not more than %d at ctx %d", ctx, i, e.PerGPU[i], prev.PerGPU[i], prevCtx)
						}
					}
					// The growth is the KV cache, plus a compute buffer that grows a little.
					kv := uint64(ctx-prevCtx) * tc.kvPerToken
					if grow := e.Total - prev.Total; grow < kv || float64(grow) > 1.15*float64(kv) {
						t.Errorf("ctx %d→%d: grew %d bytes, want the KV cache's %d and at most 15%% more", prevCtx, ctx, grow, kv)
					}
				}
				prev, prevCtx = e, ctx
			}
		})
	}
}

func TestEstimateFollowsSplit(t *testing.T) {
	for _, tc := range []struct {
		name     string
		path     *string
		ctx      int
		split    []float64
		min, max []float64 // bounds of each GPU's part relative to the first's
	}{
		{"7b 2:1", &model7B, 4096, []float64{0.67, 0.33}, []float64{1, 0.4}, []float64{1, 0.55}},
		{"7b even", &model7B, 4096, []float64{0.5, 0.5}, []float64{1, 0.85}, []float64{1, 1.15}},
		{"70b 2:1", &model70B, 8192, []float64{0.67, 0.33}, []float64{1, 0.45}, []float64{1, 0.55}},
		{"70b 1:2", &model70B, 8192, []float64{0.33, 0.67}, []float64{1, 1.8}, []float64{1, 2.2}},
		{"70b 3:1", &model70B, 8192, []float64{0.75, 0.25}, []float64{1, 0.28}, []float64{1, 0.38}},
		{"70b four", &model70B, 8192, []float64{0.25, 0.25, 0.25, 0.25},
			[]float64{1, 0.9, 0.9, 0.9}, []float64{1, 1.1, 1.1, 1.1}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := estimate(t, *tc.path, tc.ctx, tc.split)
			if len(e.PerGPU) != len(tc.split) {
				t.Fatalf("%d parts for %d GPUs", len(e.PerGPU), len(tc.split))
			}
			if e.Total != sum(e.PerGPU) {
				t.Errorf("total %d, parts add up to %d", e.Total, sum(e.PerGPU))
			}
			for i, p := range e.PerGPU {
				r := float64(p) / float64(e.PerGPU[0])
				if r < tc.min[i] || r > tc.max[i] {
					t.Errorf("GPU %d: %.2f GiB, %.2f× GPU 0's %.2f GiB; want %.2f..%.2f×",
						i, float64(p)/gib, r, float64(e.PerGPU[0])/gib, tc.min[i], tc.max[i])
				}
			}
			// Splitting adds a compute buffer per GPU, no more.
			one := estimate(t, *tc.path, tc.ctx, []float64{1})
			if e.Total < one.Total || float64(e.Total) > 1.05*float64(one.Total) {
				t.Errorf("split total %.2f GiB, one GPU %.2f GiB; want at most 5%% more", float64(e.Total)/gib, float64(one.Total)/gib)
			}
		})
	}
}

// TestEstimateNumbers checks the library's estimates against first
// principles: the weights on the GPUs are every tensor but token_embd (which
// llama.cpp keeps on the host), the KV cache is layers × n_ctx × n_embd_kv ×
// 2 × 2 bytes, and the compute buffers are a few hundred MiB. Run with -v for
// the table.
func TestEstimateNumbers(t *testing.T) {
	type model struct {
		path      *string
		tokenEmbd float64 // bytes of the Q4_K token_embd, which stays on the host
		kvToken   float64 // KV bytes per token
	}
	m7 := model{&model7B, 4096 * 32000 * 144 / 256, 32 * 4096 * 4}
	m70 := model{&model70B, 8192 * 128256 * 144 / 256, 80 * 1024 * 4}
	for _, tc := range []struct {
		name  string
		m     model
		ctx   int
		split []float64
		want  []float64 // GiB per GPU, ±0.35 GiB
	}{
		{"7b 4k", m7, 4096, []float64{1}, []float64{5.85}},
		{"7b 8k", m7, 8192, []float64{1}, []float64{7.86}},
		{"7b 32k", m7, 32768, []float64{1}, []float64{19.93}},
		{"7b 4k 2:1", m7, 4096, []float64{0.67, 0.33}, []float64{4.19, 1.87}},
		{"7b 8k 2:1", m7, 8192, []float64{0.67, 0.33}, []float64{5.67, 2.47}},
		{"7b 32k 2:1", m7, 32768, []float64{0.67, 0.33}, []float64{14.50, 6.06}},
		{"70b 4k", m70, 4096, []float64{1}, []float64{40.56}},
		{"70b 8k", m70, 8192, []float64{1}, []float64{41.82}},
		{"70b 32k", m70, 32768, []float64{1}, []float64{49.39}},
		{"70b 4k 2:1", m70, 4096, []float64{0.67, 0.33}, []float64{27.35, 13.63}},
		{"70b 8k 2:1", m70, 8192, []float64{0.67, 0.33}, []float64{28.24, 14.05}},
		{"70b 32k 2:1", m70, 32768, []float64{0.67, 0.33}, []float64{33.61, 16.61}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := estimate(t, *tc.m.path, tc.ctx, tc.split)
			got := make([]float64, len(e.PerGPU))
			for i, p := range e.PerGPU {
				got[i] = float64(p) / gib
			}
			t.Logf("ctx %d split %v: %.2f GiB per GPU, %.2f GiB in all", tc.ctx, tc.split, got, float64(e.Total)/gib)
			if diff := cmp.Diff(tc.want, got, cmpopts.EquateApprox(0, 0.35)); diff != "" {
				t.Errorf("GiB per GPU (-want +got):\n%s", diff)
			}
			// First principles: weights + KV cache + under 1 GiB of compute per GPU.
			fi, err := os.Stat(*tc.m.path)
			if err != nil {
				t.Fatal(err)
			}
			weights := (float64(fi.Size()) - tc.m.tokenEmbd) / gib
			kv := float64(tc.ctx) * tc.m.kvToken / gib
			base := weights + kv
			total := float64(e.Total) / gib
			if total < base || total > base+float64(len(tc.split)) {
				t.Errorf("total %.2f GiB, want weights %.2f + KV %.2f GiB + under 1 GiB of compute per GPU",
					total, weights, kv)
			}
			if e.Layers != map[*string]int{&model7B: 32, &model70B: 80}[tc.m.path] {
				t.Errorf("layers = %d", e.Layers)
			}
			if e.Source != vram.SourceGGUF {
				t.Errorf("source = %q", e.Source)
			}
		})
	}
}

func TestEstimateFlashAttention(t *testing.T) {
	// Without flash attention llama.cpp materialises the n_kv × n_ubatch ×
	// n_head attention scores: 32768 × 512 × 32 × 4 bytes = 2 GiB for the 7B.
	on := estimate(t, model7B, 32768, []float64{1})
	off := estimate(t, model7B, 32768, []float64{1}, vram.FlashAttention(false))
	if d := float64(off.Total) - float64(on.Total); d < 1.5*gib || d > 2.5*gib {
		t.Errorf("flash attention off costs %.2f GiB more, want about 2 GiB", d/gib)
	}
}

func TestEstimateGGUFErrors(t *testing.T) {
	dir := t.TempDir()
	write := func(name string, data []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, data, 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	gen := func(name string, modify func(*ggufgen.Model)) string {
		m := ggufgen.Tiny()
		modify(&m)
		p := filepath.Join(dir, name)
		if _, err := ggufgen.Write(p, m); err != nil {
			t.Fatal(err)
		}
		return p
	}
	missing := filepath.Join(dir, "missing.gguf")
	text := write("model.gguf", []byte("this is a text file, not a model, however long it is\n"))
	short := write("short.gguf", []byte("GGUF"))
	empty := write("empty.gguf", nil)
	truncated := gen("truncated.gguf", func(*ggufgen.Model) {})
	if err := os.Truncate(truncated, 200); err != nil {
		t.Fatal(err)
	}
	noData := gen("nodata.gguf", func(*ggufgen.Model) {})
	if fi, err := os.Stat(noData); err != nil {
		t.Fatal(err)
	} else if err := os.Truncate(noData, fi.Size()-1<<10); err != nil {
		t.Fatal(err)
	}
	unknownArch := gen("foo.gguf", func(m *ggufgen.Model) { m.Arch, m.KeyArch = "foo", "llama" })
	adapter := gen("adapter.gguf", func(m *ggufgen.Model) { m.Type = "adapter" })
	canceled, cancel := context.WithCancel(context.Background())
	cancel()

	for _, tc := range []struct {
		name  string
		ctx   context.Context
		path  string
		size  int
		split []float64
		want  string
		is    error
	}{
		{"missing", nil, missing, 4096, []float64{1}, "model file " + missing + " not found", fs.ErrNotExist},
		{"directory", nil, dir, 4096, []float64{1}, "model file " + dir + " is a directory, not a GGUF file", nil},
		{"text", nil, text, 4096, []float64{1}, "model file " + text + " is not a GGUF file", nil},
		{"device", nil, os.DevNull, 4096, []float64{1}, "model file " + os.DevNull + " is not a regular file", nil},
		{"short", nil, short, 4096, []float64{1}, "model file " + short + " is not a GGUF file: 4 bytes is too short for a header", nil},
		{"empty", nil, empty, 4096, []float64{1}, "model file " + empty + " is not a GGUF file: 0 bytes", nil},
		{"truncated header", nil, truncated, 4096, []float64{1}, "model file " + truncated + " is not a valid GGUF file: tensor count too large", nil},
		{"truncated data", nil, noData, 4096, []float64{1}, "model file " + noData + " is not a valid GGUF file: tensor data needs", nil},
		{"unknown architecture", nil, unknownArch, 4096, []float64{1},
			"model file " + unknownArch + `: unsupported architecture "foo": no foo.block_count and foo.embedding_length metadata`, nil},
		{"adapter", nil, adapter, 4096, []float64{1},
			"model file " + adapter + " holds a GGUF adapter (llama), not a model llama-server can serve", nil},
		{"no context", nil, modelTiny, 0, []float64{1}, "context size 0: must be in 1..2147483647", nil},
		{"huge context", nil, modelTiny, math.MaxInt32 + 1, []float64{1}, "context size 2147483648", nil},
		{"no split", nil, modelTiny, 4096, nil, "empty split", nil},
		{"bad split", nil, modelTiny, 4096, []float64{1, -1}, "split[1] = -1", nil},
		{"canceled", canceled, modelTiny, 4096, []float64{1}, "context canceled", context.Canceled},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := tc.ctx
			if ctx == nil {
				ctx = context.Background()
			}
			e, err := vram.EstimateGGUF(ctx, tc.path, tc.size, tc.split)
			if err == nil || !strings.HasPrefix(err.Error(), tc.want) {
				t.Fatalf("EstimateGGUF = %+v, %v; want an error starting %q", e, err, tc.want)
			}
			if tc.is != nil && !errors.Is(err, tc.is) {
				t.Errorf("error %v is not %v", err, tc.is)
			}
		})
	}
}

func TestEstimateTiny(t *testing.T) {
	// Two blocks and the output layer over four GPUs: blocks 0 and 1 (at
	// 0/3 and 1/3 of the offloaded layers) go to GPUs 0 and 1, the output
	// with the last block, and GPUs 2 and 3 hold nothing.
	e := estimate(t, modelTiny, 2048, []float64{0.25, 0.25, 0.25, 0.25})
	if len(e.PerGPU) != 4 || e.Total != sum(e.PerGPU) || e.Layers != 2 {
		t.Fatalf("estimate = %+v", e)
	}
	for i, p := range e.PerGPU {
		if holds := i < 2; holds != (p > 0) || p > 256<<20 {
			t.Errorf("GPU %d: %d bytes; want some, under 256 MiB, only on GPUs 0 and 1", i, p)
		}
	}
}

func TestFor(t *testing.T) {
	llama := func(modify func(*schema.Pool)) *schema.Pool {
		p := &schema.Pool{
			ID: "chat", Node: "n1", Engine: schema.EngineLlamaCpp,
			Model:   schema.Model{Path: model70B, Ctx: 8192},
			Devices: []int{2, 5}, Split: []float64{0.67, 0.33},
		}
		if modify != nil {
			modify(p)
		}
		return p
	}
	gguf70 := estimate(t, model70B, 8192, []float64{0.67, 0.33})
	gguf70NoFA := estimate(t, model70B, 8192, []float64{0.67, 0.33}, vram.FlashAttention(false))
	even7 := estimate(t, model7B, 4096, []float64{0.5, 0.5})

	for _, tc := range []struct {
		name    string
		pool    *schema.Pool
		want    vram.Estimate
		wantErr string
	}{
		{"gguf", llama(nil), gguf70, ""},
		{"gguf even split", llama(func(p *schema.Pool) {
			p.Model = schema.Model{Path: model7B, Ctx: 4096}
			p.Split = nil
		}), even7, ""},
		{"flash attention off", llama(func(p *schema.Pool) { p.Flags = []string{"--parallel", "2", "-fa", "off"} }), gguf70NoFA, ""},
		{"flash attention off, = form", llama(func(p *schema.Pool) { p.Flags = []string{"--flash-attn=0"} }), gguf70NoFA, ""},
		{"flash attention off in env", llama(func(p *schema.Pool) { p.Env = map[string]string{"LLAMA_ARG_FLASH_ATTN": "off"} }), gguf70NoFA, ""},
		{"flag beats env", llama(func(p *schema.Pool) {
			p.Env = map[string]string{"LLAMA_ARG_FLASH_ATTN": "off"}
			p.Flags = []string{"--flash-attn", "on"}
		}), gguf70, ""},
		{"declared llama.cpp", llama(func(p *schema.Pool) { p.VRAM = 30 * gib }),
			vram.Estimate{PerGPU: []uint64{uint64(math.Round(30 * gib * 0.67)), 30*gib - uint64(math.Round(30*gib*0.67))}, Total: 30 * gib, Source: vram.SourceDeclared}, ""},
		{"declared vllm", &schema.Pool{ID: "v", Engine: schema.EngineVLLM, Devices: []int{0, 1}, VRAM: 160 * gib},
			vram.Estimate{PerGPU: []uint64{80 * gib, 80 * gib}, Total: 160 * gib, Source: vram.SourceDeclared}, ""},
		{"undeclared vllm", &schema.Pool{ID: "v", Engine: schema.EngineVLLM, Devices: []int{0, 1}, Model: schema.Model{Path: "/models/llama", Ctx: 8192}},
			vram.Estimate{}, "pool v: vram must be declared for a vllm pool"},
		{"undeclared tgi", &schema.Pool{ID: "t", Engine: schema.EngineTGI, Devices: []int{0}},
			vram.Estimate{}, "pool t: vram must be declared for a tgi pool"},
		{"missing model", llama(func(p *schema.Pool) { p.Model.Path = "/no/such/model.gguf" }),
			vram.Estimate{}, "pool chat: model file /no/such/model.gguf not found (declare vram to skip the estimate)"},
		{"split mismatch", llama(func(p *schema.Pool) { p.Split = []float64{1} }),
			vram.Estimate{}, "pool chat: a split of 1 shares for 2 devices"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := vram.For(context.Background(), tc.pool)
			if tc.wantErr != "" {
				if err == nil || !strings.HasPrefix(err.Error(), tc.wantErr) {
					t.Fatalf("For = %+v, %v; want an error starting %q", got, err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("For (-want +got):\n%s", diff)
			}
		})
	}
	if gguf70NoFA.Total <= gguf70.Total {
		t.Errorf("flash attention off: %d bytes, not more than %d", gguf70NoFA.Total, gguf70.Total)
	}
}

func BenchmarkEstimateGGUF(b *testing.B) {
	split := []float64{0.67, 0.33}
	for b.Loop() {
		if _, err := vram.EstimateGGUF(context.Background(), model70B, 8192, split); err != nil {
			b.Fatal(err)
		}
	}
}
