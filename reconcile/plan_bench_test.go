package reconcile

import (
	"context"
	"fmt"
	"maps"
	"runtime"
	"slices"
	"testing"
	"time"

	"github.com/poolmanagerd/pool-managerd/drivers/engine/vram"
	"github.com/poolmanagerd/pool-managerd/drivers/gpu"
	"github.com/poolmanagerd/pool-managerd/reconcile/restart"
	"github.com/poolmanagerd/pool-managerd/schema"
	"github.com/poolmanagerd/pool-managerd/testkit/benchgen"
)

// benchFleet is a generated fleet, loaded, with every node's desired and
// observed state ready for Plan.
type benchFleet struct {
	cfg      *schema.Desired
	load     time.Duration // the fastest of the schema.Load runs
	nodes    []string
	desired  []Desired
	observed []Observed
}

// newBenchFleet writes a config repository of pools pools with benchgen (in
// pools/10 files, as schema's BenchmarkLoad does), loads it, and builds each
// node's states: needs from the declared VRAM (vram.For; the one pool shape
// without a declared vram gets an unknown need, as on a machine without its
// model file), and an observed node where every other pool (by id) runs its
// spec (an alive, healthy, recorded engine with its spec hash, holding its
// need on its GPUs) and the rest are fresh.
func newBenchFleet(b *testing.B, pools int) *benchFleet {
	b.Helper()
	dir := b.TempDir()
	if err := benchgen.Write(dir, pools, max(1, pools/10)); err != nil {
		b.Fatal(err)
	}
	ctx := context.Background()
	f := &benchFleet{}
	for range 2 {
		start := time.Now()
		cfg, err := schema.Load(ctx, dir)
		if err != nil {
			b.Fatal(err)
		}
		if d := time.Since(start); f.load == 0 || d < f.load {
			f.load = d
		}
		f.cfg = cfg
	}
	if len(f.cfg.Pools) != pools {
		b.Fatalf("loaded %d pools, want %d", len(f.cfg.Pools), pools)
	}
	f.nodes = f.cfg.SortedNodeNames()
	byNode := map[string]*Desired{}
	for _, node := range f.nodes {
		byNode[node] = &Desired{Node: node, Declared: f.cfg.Nodes[node], Pools: map[string]*schema.Pool{}, Needs: map[string]Need{},
			OtherPools: len(f.cfg.Pools)}
	}
	for id, p := range f.cfg.Pools { // DesiredFor for every node at once: DesiredFor alone is O(nodes × pools)
		d := byNode[p.Node]
		d.Pools[id] = p
		d.OtherPools--
		est, err := vram.For(ctx, p)
		if err != nil {
			d.Needs[id] = Need{Err: err.Error()}
		} else {
			d.Needs[id] = Need{PerGPU: est.PerGPU, Source: est.Source}
		}
	}
	pid := 1000
	for _, node := range f.nodes {
		d := byNode[node]
		o := Observed{Node: node, Source: "sim:bench", Engines: map[string]Engine{}, Pools: map[string]restart.Record{}}
		for _, g := range d.Declared.GPUs {
			o.GPUs = append(o.GPUs, gpu.Device{Index: g.Index, UUID: g.UUID, Name: g.Model, MemoryTotal: uint64(g.VRAM)})
		}
		for i, id := range slices.Sorted(maps.Keys(d.Pools)) {
			p, need := d.Pools[id], d.Needs[id]
			if i%2 == 1 || need.Err != "" {
				continue
			}
			pid++
			o.Engines[id] = Engine{Pool: id, Generation: 1, SpecHash: SpecHash(p), Spec: p, PID: pid, PIDs: []int{pid},
				Port: 18000 + i, Alive: true, Health: HealthOK, Recorded: true}
			for k, idx := range p.Devices {
				j := slices.IndexFunc(o.GPUs, func(g gpu.Device) bool { return g.Index == idx })
				o.GPUs[j].Processes = append(o.GPUs[j].Processes, gpu.Process{PID: pid, UsedBytes: need.PerGPU[k]})
				o.GPUs[j].MemoryUsed += need.PerGPU[k]
			}
		}
		for j := range o.GPUs {
			o.GPUs[j].MemoryFree = o.GPUs[j].MemoryTotal - min(o.GPUs[j].MemoryUsed, o.GPUs[j].MemoryTotal)
		}
		f.desired = append(f.desired, *d)
		f.observed = append(f.observed, o)
	}
	return f
}

var benchSizes = []int{100, 1000, 10000}

// BenchmarkPlan plans every node of a generated fleet of 100, 1,000 and
// 10,000 pools (10 pools on each node of 8 GPUs) in one op, as `plan --gpus
// declared` does for a pull-request check, from states built beforehand:
// only reconcile.Plan is timed. plan/load-% is the op's time as a
// percentage of schema.Load's time on the same config (the fastest of two
// loads, measured before the timer); the target is under 10 at every size.
func BenchmarkPlan(b *testing.B) {
	for _, pools := range benchSizes {
		b.Run(fmt.Sprintf("pools=%d", pools), func(b *testing.B) {
			f := newBenchFleet(b, pools)
			now := time.Date(2026, 11, 27, 12, 0, 0, 0, time.UTC)
			changes, unchanged := 0, 0
			runtime.GC() // the load's garbage is not the plan's
			for b.Loop() {
				changes, unchanged = 0, 0
				for i := range f.nodes {
					p := Plan(f.desired[i], f.observed[i], now)
					changes += len(p.Changes)
					unchanged += len(p.Unchanged)
				}
			}
			if changes+unchanged != pools {
				b.Fatalf("%d changes and %d unchanged for %d pools", changes, unchanged, pools)
			}
			perOp := b.Elapsed() / time.Duration(b.N)
			b.ReportMetric(100*float64(perOp)/float64(f.load), "plan/load-%")
			b.ReportMetric(float64(f.load.Milliseconds()), "load-ms")
			b.ReportMetric(float64(perOp.Microseconds())/float64(len(f.nodes)), "µs/node")
		})
	}
}

// BenchmarkLoadAndPlan times what `pool-managerd plan --gpus declared DIR`
// does for the whole fleet, less the observing: schema.Load, then for every
// node DesiredFor, the needs (vram.For) and Plan, with the observed states
// built beforehand. plan/load-% is the time after the load as a percentage
// of the load.
func BenchmarkLoadAndPlan(b *testing.B) {
	for _, pools := range benchSizes {
		b.Run(fmt.Sprintf("pools=%d", pools), func(b *testing.B) {
			f := newBenchFleet(b, pools)
			dir := b.TempDir()
			if err := benchgen.Write(dir, pools, max(1, pools/10)); err != nil {
				b.Fatal(err)
			}
			ctx := context.Background()
			now := time.Date(2026, 11, 27, 12, 0, 0, 0, time.UTC)
			var load, plan time.Duration
			runtime.GC()
			for b.Loop() {
				start := time.Now()
				cfg, err := schema.Load(ctx, dir)
				if err != nil {
					b.Fatal(err)
				}
				loaded := time.Now()
				for i, node := range f.nodes {
					d := DesiredFor(cfg, node)
					for id, p := range d.Pools {
						est, err := vram.For(ctx, p)
						if err != nil {
							d.Needs[id] = Need{Err: err.Error()}
						} else {
							d.Needs[id] = Need{PerGPU: est.PerGPU, Source: est.Source}
						}
					}
					Plan(d, f.observed[i], now)
				}
				load += loaded.Sub(start)
				plan += time.Since(loaded)
			}
			b.ReportMetric(100*float64(plan)/float64(load), "plan/load-%")
			b.ReportMetric(float64(load.Milliseconds())/float64(b.N), "load-ms")
			b.ReportMetric(float64(plan.Milliseconds())/float64(b.N), "plan-ms")
		})
	}
}
