package reconcile

import (
	"testing"

	"github.com/poolmanagerd/pool-managerd/drivers/gpu"
	"github.com/poolmanagerd/pool-managerd/schema"
)

func TestInventoryMismatch(t *testing.T) {
	const gi = 1 << 30
	const a, b = "GPU-8a1f7c3e-52d4-4b9a-9e61-3f0c2d7b5a18", "GPU-c47e2b90-1d6a-4f35-8b2e-7a9d0e4f6c21"
	tests := []struct {
		name     string
		declared schema.GPU
		observed gpu.Device
		want     string
	}{
		{"another card of the same size",
			schema.GPU{Index: 1, UUID: a, Model: "RTX 3090", VRAM: 24 * gi},
			gpu.Device{Index: 1, UUID: b, Name: "RTX 4090", MemoryTotal: 24 * gi},
			`GPU 1: declared "RTX 3090" 24.0 GiB (uuid ` + a + `), observed "RTX 4090" 24.0 GiB (uuid ` + b + `)`},
		{"another size, same UUID",
			schema.GPU{Index: 0, UUID: a, Model: "RTX 3060", VRAM: 12 * gi},
			gpu.Device{Index: 0, UUID: a, Name: "RTX 3060", MemoryTotal: 16 * gi},
			`GPU 0: declared "RTX 3060" 12.0 GiB, observed "RTX 3060" 16.0 GiB (uuid ` + a + `)`},
		{"no model declared",
			schema.GPU{Index: 0, VRAM: 12 * gi},
			gpu.Device{Index: 0, UUID: a, Name: "RTX 3060", MemoryTotal: 16 * gi},
			`GPU 0: declared 12.0 GiB, observed "RTX 3060" 16.0 GiB (uuid ` + a + `)`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := inventoryMismatch(tt.declared, tt.observed); got != tt.want {
				t.Errorf("inventoryMismatch\n got %s\nwant %s", got, tt.want)
			}
		})
	}
}

func TestGPUSize(t *testing.T) {
	tests := []struct {
		model string
		want  string
	}{
		{"NVIDIA GeForce RTX 3090", "NVIDIA GeForce RTX 3090, 24.0 GiB"},
		{"", "24.0 GiB"},
		{" ", "24.0 GiB"},
	}
	for _, tt := range tests {
		if got := GPUSize(tt.model, 24<<30); got != tt.want {
			t.Errorf("GPUSize(%q) = %q, want %q", tt.model, got, tt.want)
		}
	}
}
