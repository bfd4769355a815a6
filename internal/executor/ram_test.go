package executor

import (
	"context"
	"strings"
	"testing"

	"github.com/poolmanagerd/pool-managerd/drivers/gpu"
	"github.com/poolmanagerd/pool-managerd/internal/state"
	"github.com/poolmanagerd/pool-managerd/reconcile"
	"github.com/poolmanagerd/pool-managerd/reconcile/restart"
)

type oneGPU struct{}

func (oneGPU) Devices(context.Context) ([]gpu.Device, error) {
	return []gpu.Device{{Index: 0, UUID: "GPU-00000000-0000-0000-0000-000000000000", Name: "NVIDIA Test", MemoryTotal: 24 << 30, MemoryFree: 24 << 30}}, nil
}
func (oneGPU) Events(context.Context) (<-chan gpu.Event, error) { return nil, nil }
func (oneGPU) Close() error                                     { return nil }

// The start checks the host's RAM again before the spawn (the plan may be
// old, or another process took memory since): short, nothing is spawned,
// and the failure counts for the backoff like a VRAM shortage.
func TestStartChecksHostRAMBeforeTheSpawn(t *testing.T) {
	for _, tc := range []struct {
		name       string
		available  uint64
		wantStarts int
	}{
		{"short: nothing is spawned", 10 << 30, 0},
		{"enough: the engine is spawned", 30 << 30, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			pool := testPool()
			pool.RAM = 20 << 30
			h := newHarness(t, state.New())
			h.x.GPUs = oneGPU{}
			h.x.Host = func(context.Context) (*reconcile.HostMemory, error) {
				return &reconcile.HostMemory{Total: 64 << 30, Available: tc.available}, nil
			}
			c := reconcile.Change{Action: reconcile.Create, Pool: pool.ID, Spec: pool, SpecHash: reconcile.SpecHash(pool),
				Need: []reconcile.GPUNeed{{Index: 0, Need: 2 << 30, Free: 24 << 30}},
				RAM:  &reconcile.RAMNeed{Need: 20 << 30, Source: "declared", Available: 64 << 30}}
			res, _ := h.x.Apply(context.Background(), &reconcile.NodePlan{Node: "gpu-01", Changes: []reconcile.Change{c}})
			if h.driver.starts != tc.wantStarts {
				t.Fatalf("%d spawns, want %d", h.driver.starts, tc.wantStarts)
			}
			if tc.wantStarts > 0 {
				return // the fake driver fails the spawn itself
			}
			if len(res.Outcomes) != 1 {
				t.Fatalf("outcomes %+v", res.Outcomes)
			}
			o := res.Outcomes[0]
			if o.Phase != reconcile.Unready || o.Failure == nil || o.Failure.Class != restart.ClassInsufficientRAM || o.Failure.Hint == "" {
				t.Fatalf("outcome %+v, want Unready with insufficient_ram and a hint", o)
			}
			if !strings.Contains(o.Failure.Message, "needs 20.0 GiB (the pool's ram), 10.0 GiB available of 64.0 GiB") {
				t.Errorf("message %q", o.Failure.Message)
			}
			st, _ := h.x.State()
			if st.Pools[pool.ID].NextRetry.IsZero() {
				t.Errorf("no backoff recorded: %+v", st.Pools[pool.ID])
			}
		})
	}
}
