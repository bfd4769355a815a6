package schema

import (
	"testing"
	"time"
)

func TestMemoryFraction(t *testing.T) {
	const gi = int64(1) << 30
	tests := []struct {
		engine      Engine
		need, total int64
		want        float64
	}{
		{EngineVLLM, 70 * gi, 80 * gi, 0.875},    // llama70b-chat: vLLM takes exactly the need
		{EngineVLLM, 20 * gi, 24 * gi, 0.8333},   // rounded down: never more than the need
		{EngineSGLang, 72 * gi, 80 * gi, 0.9},    // SGLang's default, derived
		{EngineTGI, 60 * gi, 80 * gi, 0.8333},    // TGI fills 90 % of total × fraction
		{EngineTGI, 78 * gi, 80 * gi, 1},         // more than TGI ever takes: at most 1
		{EngineVLLM, 0, 80 * gi, 0},              // no need declared
		{EngineVLLM, 20 * gi, 0, 0},              // total unknown
		{EngineVLLM, 85 * gi, 80 * gi, 1},        // over the GPU (vram-part-too-big reports it)
		{EngineSGLang, 68 * gi, 80 * gi, 0.85},   // 0.85 exactly, not 0.8499
		{EngineTGI, 9 * gi, 10 * gi, 1},          // 9/(0.9×10) = 1
		{EngineVLLM, 1 * gi, 3 * gi, 0.3333},     // thirds
		{EngineSGLang, 40 * gi, 48 * gi, 0.8333}, // even split of 80Gi over two 48Gi GPUs
	}
	for _, tc := range tests {
		got := MemoryFraction(tc.engine, tc.need, tc.total)
		if got != tc.want {
			t.Errorf("MemoryFraction(%s, %d, %d) = %v, want %v", tc.engine, tc.need, tc.total, got, tc.want)
		}
		if got > 0 && got < 1 && MemoryTaken(tc.engine, got, tc.total) > tc.need {
			t.Errorf("%s at %v takes %d of %d, more than the need %d", tc.engine, got, MemoryTaken(tc.engine, got, tc.total), tc.total, tc.need)
		}
	}
}

func TestShutdownTimeouts(t *testing.T) {
	for _, tc := range []struct {
		grace time.Duration
		want  int
	}{
		{10 * time.Second, 8}, {30 * time.Second, 24}, {2 * time.Second, 0}, {3 * time.Second, 1}, {time.Minute, 48},
	} {
		if got := VLLMShutdownTimeout(tc.grace); got != tc.want {
			t.Errorf("VLLMShutdownTimeout(%v) = %d, want %d", tc.grace, got, tc.want)
		}
		if got := VLLMShutdownTimeout(tc.grace); time.Duration(got)*time.Second >= tc.grace {
			t.Errorf("VLLMShutdownTimeout(%v) = %ds is not below the grace", tc.grace, got)
		}
	}
	for _, tc := range []struct {
		grace  time.Duration
		shards int
		want   int
	}{
		{10 * time.Second, 1, 5}, {10 * time.Second, 2, 3}, {10 * time.Second, 8, 1}, {30 * time.Second, 2, 10},
		{5 * time.Second, 8, 0}, {10 * time.Second, 0, 5},
	} {
		got := TGIGracefulTimeout(tc.grace, tc.shards)
		if got != tc.want {
			t.Errorf("TGIGracefulTimeout(%v, %d) = %d, want %d", tc.grace, tc.shards, got, tc.want)
		}
		if time.Duration(got*(max(tc.shards, 1)+1))*time.Second > tc.grace {
			t.Errorf("TGIGracefulTimeout(%v, %d) = %d: the launcher's stages take longer than the grace", tc.grace, tc.shards, got)
		}
	}
}

func TestDashFlag(t *testing.T) {
	tests := []struct {
		flags     []string
		spellings []string
		index     int
		value     string
		found     bool
	}{
		{[]string{"--a", "1", "--gpu-memory-utilization", "0.8"}, []string{"--gpu-memory-utilization"}, 2, "0.8", true},
		{[]string{"--gpu_memory_utilization=0.7"}, []string{"--gpu-memory-utilization"}, 0, "0.7", true},
		// the last one wins, as in argparse
		{[]string{"--tp", "2", "--tp-size", "4"}, []string{"--tp", "--tp-size"}, 2, "4", true},
		{[]string{"--enable-metrics"}, []string{"--enable-metrics"}, 0, "", true},
		{[]string{"--x", "--y"}, []string{"--z"}, -1, "", false},
		// a value is not a flag
		{[]string{"--served-model-name", "--tp"}, []string{"--tp"}, 1, "", true},
	}
	for _, tc := range tests {
		i, v, ok := DashFlag(tc.flags, tc.spellings...)
		if i != tc.index || v != tc.value || ok != tc.found {
			t.Errorf("DashFlag(%q, %q) = %d, %q, %v; want %d, %q, %v", tc.flags, tc.spellings, i, v, ok, tc.index, tc.value, tc.found)
		}
	}
}
