package declared

import (
	"context"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/poolmanagerd/pool-managerd/drivers/gpu"
	"github.com/poolmanagerd/pool-managerd/schema"
)

const GiB = 1 << 30

func TestDevices(t *testing.T) {
	tests := []struct {
		name string
		node *schema.Node
		want []gpu.Device
	}{{
		name: "mixed GPUs, sorted by index",
		node: &schema.Node{Name: "gpu-01", GPUs: []schema.GPU{
			{Index: 1, UUID: "GPU-c47e2b90-1d6a-4f35-8b2e-7a9d0e4f6c21", Model: "NVIDIA GeForce RTX 3060", VRAM: 12 * GiB},
			{Index: 0, UUID: "GPU-8a1f7c3e-52d4-4b9a-9e61-3f0c2d7b5a18", Model: "NVIDIA GeForce RTX 3090", VRAM: 24 * GiB},
		}},
		want: []gpu.Device{
			{Index: 0, UUID: "GPU-8a1f7c3e-52d4-4b9a-9e61-3f0c2d7b5a18", Name: "NVIDIA GeForce RTX 3090", MemoryTotal: 24 * GiB, MemoryFree: 24 * GiB},
			{Index: 1, UUID: "GPU-c47e2b90-1d6a-4f35-8b2e-7a9d0e4f6c21", Name: "NVIDIA GeForce RTX 3060", MemoryTotal: 12 * GiB, MemoryFree: 12 * GiB},
		},
	}, {
		name: "nothing but VRAM declared",
		node: &schema.Node{Name: "n", GPUs: []schema.GPU{{Index: 0, VRAM: 16 * GiB}}},
		want: []gpu.Device{{Index: 0, MemoryTotal: 16 * GiB, MemoryFree: 16 * GiB}},
	}, {
		name: "no GPUs",
		node: &schema.Node{Name: "n"},
	}, {
		name: "no node",
	}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			n := New(tt.node)
			got, err := n.Devices(context.Background())
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("Devices (-want +got):\n%s", diff)
			}
			// The caller cannot change the node through the result.
			if len(got) > 0 {
				got[0].MemoryFree = 0
				again, _ := n.Devices(context.Background())
				if diff := cmp.Diff(tt.want, again); diff != "" {
					t.Errorf("Devices after changing the result (-want +got):\n%s", diff)
				}
			}
			if err := n.Close(); err != nil {
				t.Error(err)
			}
		})
	}
}

func TestDevicesCancelled(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := New(&schema.Node{}).Devices(ctx); err == nil {
		t.Error("Devices with a done context succeeded")
	}
}

func TestEvents(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	ch, err := New(&schema.Node{GPUs: []schema.GPU{{Index: 0, VRAM: GiB}}}).Events(ctx)
	if err != nil {
		t.Fatal(err)
	}
	select {
	case e := <-ch:
		t.Fatalf("event before cancel: %+v", e)
	default:
	}
	cancel()
	select {
	case e, ok := <-ch:
		if ok {
			t.Fatalf("event: %+v", e)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("channel not closed after cancel")
	}
}
