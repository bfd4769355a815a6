package reconcile

import (
	"fmt"
	"strings"

	"github.com/poolmanagerd/pool-managerd/drivers/gpu"
	"github.com/poolmanagerd/pool-managerd/schema"
)

// GiB formats bytes as GiB with one decimal, as plans say GPU memory (for
// the executor's messages, which must read like the plan's).
func GiB(b uint64) string { return gib(b) }

// GPUWord names a pool's devices as plans do: "GPU 0", "GPUs 0,1".
func GPUWord(devices []int) string { return gpuWord(devices) }

// GPUSize says what a GPU is, for the parentheses after "GPU N": its
// model and size ("NVIDIA GeForce RTX 3090, 24.0 GiB"), or its size alone
// when the model is not known (a declared GPU without one).
func GPUSize(model string, total uint64) string {
	if strings.TrimSpace(model) == "" {
		return gib(total)
	}
	return model + ", " + gib(total)
}

// inventoryMismatch says how observed GPU d differs from declared GPU g,
// naming the model and size of both, so that the reader sees which card
// is where: `GPU 1: declared "RTX 3090" 24.0 GiB (uuid A), observed
// "RTX 4090" 24.0 GiB (uuid B)`. The UUIDs are printed where they differ,
// else the observed one once.
func inventoryMismatch(g schema.GPU, d gpu.Device) string {
	side := func(model string, total uint64) string {
		if strings.TrimSpace(model) == "" {
			return gib(total)
		}
		return fmt.Sprintf("%q %s", model, gib(total))
	}
	declared, observed := side(g.Model, uint64(max(g.VRAM, 0))), side(d.Name, d.MemoryTotal)
	if g.UUID != "" && !strings.EqualFold(g.UUID, d.UUID) {
		return fmt.Sprintf("GPU %d: declared %s (uuid %s), observed %s (uuid %s)", g.Index, declared, g.UUID, observed, d.UUID)
	}
	return fmt.Sprintf("GPU %d: declared %s, observed %s (uuid %s)", g.Index, declared, observed, d.UUID)
}
