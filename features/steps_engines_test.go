package features

import (
	"context"
	"fmt"
	"strconv"
	"strings"

	"github.com/cucumber/godog"

	"github.com/poolmanagerd/pool-managerd/drivers/engine/proc"
	"github.com/poolmanagerd/pool-managerd/drivers/gpu/sim"
)

// Steps of engines.feature: what the sharded engines (vLLM, TGI, SGLang) are
// told and what they hold on the simulated node.
func (w *world) registerEngines(sc *godog.ScenarioContext) {
	sc.Step(`^the engine of pool "([^"]*)" has CUDA_VISIBLE_DEVICES set to the (?:index|indices) of GPUs? ([\d, ]+) and CUDA_DEVICE_ORDER=PCI_BUS_ID$`, w.visibleIndices)
	sc.Step(`^the processes of pool "([^"]*)" hold (\d+(?:\.\d+)?) GiB on GPU (\d+) of the simulated node, and nothing on any other GPU$`, w.poolHolds)
}

func (w *world) visibleIndices(pool, list string) error {
	e, err := w.engineOf(pool)
	if err != nil {
		return err
	}
	var want []string
	for _, s := range strings.Split(list, ",") {
		want = append(want, strings.TrimSpace(s))
	}
	if got := e.env["CUDA_VISIBLE_DEVICES"]; got != strings.Join(want, ",") {
		return fmt.Errorf("engine pid %d of pool %s has CUDA_VISIBLE_DEVICES=%q, want the indices %q", e.pid, pool, got, strings.Join(want, ","))
	}
	if got := e.env["CUDA_DEVICE_ORDER"]; got != "PCI_BUS_ID" {
		return fmt.Errorf("engine pid %d of pool %s has CUDA_DEVICE_ORDER=%q, want PCI_BUS_ID", e.pid, pool, got)
	}
	return nil
}

// poolHolds checks the memory that the processes of the pool's engine
// session hold on the simulated node: gib on GPU gpu (to 0.01 GiB), none elsewhere.
func (w *world) poolHolds(pool, gib string, gpu int) error {
	e, err := w.engineOf(pool)
	if err != nil {
		return err
	}
	want, err := strconv.ParseFloat(gib, 64)
	if err != nil {
		return err
	}
	members, err := proc.Session(e.pid)
	if err != nil {
		return err
	}
	ours := map[int]bool{e.pid: true}
	for _, pid := range members {
		ours[pid] = true
	}
	node, err := sim.Open(w.simDir())
	if err != nil {
		return err
	}
	defer node.Close()
	devs, err := node.Devices(context.Background())
	if err != nil {
		return err
	}
	held := map[int]uint64{}
	for _, d := range devs {
		for _, p := range d.Processes {
			if ours[p.PID] {
				held[d.Index] += p.UsedBytes
			}
		}
	}
	for idx, b := range held {
		got := float64(b) / (1 << 30)
		switch {
		case idx != gpu && b > 0:
			return fmt.Errorf("pool %s's engine holds %.2f GiB on GPU %d, outside its GPU %d (held: %v)", pool, got, idx, gpu, held)
		case idx == gpu && (got < want-0.01 || got > want+0.01):
			return fmt.Errorf("pool %s's engine holds %.2f GiB on GPU %d, want %s GiB", pool, got, idx, gib)
		}
	}
	if held[gpu] == 0 {
		return fmt.Errorf("pool %s's engine holds nothing on GPU %d (held: %v)", pool, gpu, held)
	}
	return nil
}
