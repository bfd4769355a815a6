package fakeengine

import (
	"context"
	"fmt"
	"math"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/poolmanagerd/pool-managerd/drivers/gpu/sim"
)

// GPU is one GPU the engine sees, in the order of CUDA_VISIBLE_DEVICES
// (its CUDA ordinal is its position).
type GPU struct {
	// SimIndex is the GPU's index on the simulated node; -1 when there is
	// no simulated node.
	SimIndex int
	UUID     string
	Name     string
	// Total is the GPU's memory in bytes (0 when unknown).
	Total uint64
}

// VisibleGPUs resolves CUDA_VISIBLE_DEVICES the way the CUDA runtime does:
// entries are GPU indices (in NVML's order, as with CUDA_DEVICE_ORDER=PCI_BUS_ID)
// or GPU UUIDs (a unique prefix is enough); the first entry that names no GPU,
// or one already named, ends the list. node is the simulated node's GPUs, or
// nil when there is none: then every entry that looks valid is a GPU of
// unknown size. An unset variable shows no GPU (see the package comment).
// With intsOnly (vLLM), an entry that is not an integer is an error, as vLLM
// parses the entries with int().
func VisibleGPUs(cvd string, set bool, node []sim.GPUSpec, intsOnly bool) ([]GPU, error) {
	if !set {
		return nil, nil
	}
	var gpus []GPU
	seen := map[int]bool{}
	seenUUID := map[string]bool{}
	if strings.TrimSpace(cvd) == "" {
		return nil, nil
	}
	for _, entry := range strings.Split(cvd, ",") {
		entry = strings.TrimSpace(entry)
		if intsOnly {
			if _, err := strconv.Atoi(entry); err != nil {
				return nil, fmt.Errorf("invalid literal for int() with base 10: '%s'", entry)
			}
		}
		if n, err := strconv.Atoi(entry); err == nil {
			if n < 0 || (node != nil && n >= len(node)) || seen[n] {
				break
			}
			seen[n] = true
			g := GPU{SimIndex: -1, Name: "NVIDIA GPU"}
			if node != nil {
				g = GPU{SimIndex: n, UUID: node[n].UUID, Name: node[n].Name, Total: node[n].MemoryBytes}
			}
			gpus = append(gpus, g)
			continue
		}
		if !strings.HasPrefix(strings.ToUpper(entry), "GPU-") {
			break // MIG-... or garbage: CUDA stops here
		}
		if node == nil {
			if seenUUID[strings.ToLower(entry)] {
				break
			}
			seenUUID[strings.ToLower(entry)] = true
			gpus = append(gpus, GPU{SimIndex: -1, UUID: entry, Name: "NVIDIA GPU"})
			continue
		}
		match := -1
		for i, spec := range node {
			if strings.HasPrefix(strings.ToLower(spec.UUID), strings.ToLower(entry)) {
				if match >= 0 {
					match = -2 // ambiguous prefix
					break
				}
				match = i
			}
		}
		if match < 0 || seen[match] {
			break
		}
		seen[match] = true
		gpus = append(gpus, GPU{SimIndex: match, UUID: node[match].UUID, Name: node[match].Name, Total: node[match].MemoryBytes})
	}
	return gpus, nil
}

// SplitBytes divides total bytes in proportion to weights (negative weights
// count as 0; all zero splits evenly). The parts add up to total exactly.
func SplitBytes(total uint64, weights []float64) []uint64 {
	parts := make([]uint64, len(weights))
	if len(weights) == 0 {
		return parts
	}
	w := make([]float64, len(weights))
	sum := 0.0
	for i, x := range weights {
		if x > 0 && !math.IsInf(x, 0) && !math.IsNaN(x) {
			w[i] = x
			sum += x
		}
	}
	if sum == 0 {
		for i := range w {
			w[i] = 1
		}
		sum = float64(len(w))
	}
	var given uint64
	biggest := 0
	for i, x := range w {
		parts[i] = uint64(math.Floor(float64(total) * (x / sum)))
		if parts[i] > total-given {
			parts[i] = total - given
		}
		given += parts[i]
		if x > w[biggest] {
			biggest = i
		}
	}
	parts[biggest] += total - given
	return parts
}

// freeMemory reads the free memory of every simulated GPU, by index.
func freeMemory(dir string) (map[int]uint64, error) {
	node, err := sim.Open(dir)
	if err != nil {
		return nil, err
	}
	defer node.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	devs, err := node.Devices(ctx)
	if err != nil {
		return nil, err
	}
	free := map[int]uint64{}
	for _, d := range devs {
		free[d.Index] = d.MemoryFree
	}
	return free, nil
}

// encodeClaims writes claims as "index=bytes,..." in index order.
func encodeClaims(c map[int]uint64) string {
	idx := make([]int, 0, len(c))
	for i := range c {
		idx = append(idx, i)
	}
	sort.Ints(idx)
	parts := make([]string, len(idx))
	for k, i := range idx {
		parts[k] = fmt.Sprintf("%d=%d", i, c[i])
	}
	return strings.Join(parts, ",")
}

// decodeClaims reads what encodeClaims wrote.
func decodeClaims(s string) (map[int]uint64, error) {
	c := map[int]uint64{}
	if s == "" {
		return c, nil
	}
	for _, part := range strings.Split(s, ",") {
		k, v, ok := strings.Cut(part, "=")
		i, err1 := strconv.Atoi(k)
		n, err2 := strconv.ParseUint(v, 10, 64)
		if !ok || err1 != nil || err2 != nil {
			return nil, fmt.Errorf("bad claim %q", part)
		}
		c[i] += n
	}
	return c, nil
}

func mib(b uint64) float64 { return float64(b) / (1 << 20) }
func gib(b uint64) float64 { return float64(b) / (1 << 30) }
