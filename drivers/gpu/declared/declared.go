// Package declared implements gpu.Node from a node's inventory as declared
// in the config, with nothing running on it: what plan shows in a pull
// request check, without the hardware.
package declared

import (
	"context"
	"slices"

	"github.com/poolmanagerd/pool-managerd/drivers/gpu"
	"github.com/poolmanagerd/pool-managerd/schema"
)

// Node is a declared inventory seen as GPUs. It is safe for concurrent use.
type Node struct {
	devices []gpu.Device
}

var _ gpu.Node = (*Node)(nil)

// New returns the GPUs declared for node: each with its declared VRAM all
// free, its UUID (empty when not declared) and its model as the name. A nil
// node has no GPUs.
func New(node *schema.Node) *Node {
	n := &Node{}
	if node == nil {
		return n
	}
	for _, g := range node.GPUs {
		total := uint64(max(g.VRAM, 0))
		n.devices = append(n.devices, gpu.Device{
			Index:       g.Index,
			UUID:        g.UUID,
			Name:        g.Model,
			MemoryTotal: total,
			MemoryFree:  total,
		})
	}
	slices.SortStableFunc(n.devices, func(a, b gpu.Device) int { return a.Index - b.Index })
	return n
}

// Devices returns the declared GPUs, sorted by index.
func (n *Node) Devices(ctx context.Context) ([]gpu.Device, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	return slices.Clone(n.devices), nil
}

// Events returns a channel that never carries an event and is closed when
// ctx is done.
func (n *Node) Events(ctx context.Context) (<-chan gpu.Event, error) {
	ch := make(chan gpu.Event)
	go func() {
		<-ctx.Done()
		close(ch)
	}()
	return ch, nil
}

// Close does nothing.
func (n *Node) Close() error { return nil }
