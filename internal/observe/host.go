package observe

import (
	"context"
	"fmt"

	"github.com/poolmanagerd/pool-managerd/drivers/gpu/sim"
	"github.com/poolmanagerd/pool-managerd/drivers/host"
	"github.com/poolmanagerd/pool-managerd/reconcile"
)

// HostFunc reads the host's memory; nil memory (and no error) means the
// host's memory is not observed, and then no RAM need is checked.
type HostFunc func(ctx context.Context) (*reconcile.HostMemory, error)

// RealHost reads the machine's memory from /proc/meminfo.
func RealHost(context.Context) (*reconcile.HostMemory, error) {
	total, available, err := host.Memory()
	if err != nil {
		return nil, err
	}
	return &reconcile.HostMemory{Total: total, Available: available}, nil
}

// SimHost reads a simulated node's host memory (sim init --ram); a node
// made without --ram has none.
func SimHost(dir string) HostFunc {
	return func(context.Context) (*reconcile.HostMemory, error) {
		total, available, held, ok, err := sim.HostMemory(dir)
		if err != nil {
			return nil, fmt.Errorf("simulated host memory: %w", err)
		}
		if !ok {
			return nil, nil
		}
		return &reconcile.HostMemory{Total: total, Available: available, Held: held}, nil
	}
}
