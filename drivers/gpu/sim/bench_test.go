package sim_test

import (
	"context"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/poolmanagerd/pool-managerd/drivers/gpu/sim"
)

// BenchmarkUsageIdle reads the GPUs of a node that nothing changes: 8 GPUs,
// 100 live engines holding 6 GiB each (the daemon benchmark's node), so
// every Devices call asks for the memory and processes of each GPU. It is
// what the daemon's event stream and its passes pay while the node is idle.
func BenchmarkUsageIdle(b *testing.B) {
	const engines, ngpus = 100, 8
	dir := filepath.Join(b.TempDir(), "node")
	specs := make([]sim.GPUSpec, ngpus)
	for i := range specs {
		specs[i] = sim.GPUSpec{Name: "NVIDIA A100", MemoryBytes: 80 * GiB}
	}
	if err := sim.Init(dir, specs); err != nil {
		b.Fatal(err)
	}
	for i := range engines {
		cmd := exec.Command("sleep", "600")
		if err := cmd.Start(); err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() {
			cmd.Process.Kill()
			cmd.Wait()
		})
		if err := sim.Claim(dir, cmd.Process.Pid, map[int]uint64{i % ngpus: 6 * GiB}); err != nil {
			b.Fatal(err)
		}
	}
	n, err := sim.Open(dir)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { n.Close() })
	ctx := context.Background()
	var held int
	b.ReportAllocs()
	for b.Loop() {
		ds, err := n.Devices(ctx)
		if err != nil {
			b.Fatal(err)
		}
		held = 0
		for _, d := range ds {
			held += len(d.Processes)
		}
	}
	if held != engines {
		b.Fatalf("the GPUs show %d engines, want %d", held, engines)
	}
}
