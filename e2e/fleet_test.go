//go:build linux

package e2e

import (
	"context"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/poolmanagerd/pool-managerd/drivers/gpu/sim"
	"github.com/poolmanagerd/pool-managerd/internal/api"
)

// TestFleet: three daemons, one per node (each its own simulated GPUs and
// state directory), share one config repository that declares the three
// nodes. Each runs exactly its node's pools; a pool moved to another node
// by editing its node field is stopped by the daemon of the node it left
// and started by the daemon of the node it joined (node a stops it once its
// removal settles: a short settle window here; node a keeps a1, so the move
// does not leave it empty, which would be held back).
func TestFleet(t *testing.T) {
	t.Parallel()
	// Each node gets UUIDs of its own (from its name): one config declares
	// all three, and a GPU UUID declared on two nodes is an error.
	gpus := sim.DefaultGPUs()
	for i := range gpus {
		gpus[i].UUID = ""
	}
	wa, wb, wc := newWorkspaceGPUs(t, gpus), newWorkspaceGPUs(t, gpus), newWorkspaceGPUs(t, gpus)
	nodes := []*workspace{wa, wb, wc}

	// The repository lives in wa's config directory: wa's node and pools
	// (a1, a2), then the declarations of b and c (as writeConfig writes
	// them in their own config directories) and their pools.
	wa.writeConfig(pool{ID: "a1"}, pool{ID: "a2", Devices: []int{1}})
	for _, w := range []*workspace{wb, wc} {
		w.writeConfig()
		decl, err := os.ReadFile(filepath.Join(w.config, "nodes", w.node+".cue"))
		if err != nil {
			t.Fatal(err)
		}
		wa.writeFile(filepath.Join("nodes", w.node+".cue"), string(decl))
	}
	wa.writeFile("pools/b1.cue", wb.poolCUE(pool{ID: "b1"}))
	wa.writeFile("pools/c1.cue", wc.poolCUE(pool{ID: "c1"}))
	want := map[*workspace][]string{wa: {"a1", "a2"}, wb: {"b1"}, wc: {"c1"}}

	daemons := map[*workspace]*daemon{}
	for _, w := range nodes {
		daemons[w] = w.serve("--config", wa.config, "--removal-settle", "200ms")
	}
	before := map[*workspace]map[string]api.Pool{}
	for _, w := range nodes {
		d := daemons[w]
		before[w] = d.waitPools(want[w]...)
		checkNodeRuns(t, w, d, want[w])
	}

	// Move a2 from node a to node b: same model, same GPU index.
	wa.writeFile("pools/a2.cue", wb.poolCUE(pool{ID: "a2", Devices: []int{1}, Model: wa.modelOf("a2")}))
	da, db, dc := daemons[wa], daemons[wb], daemons[wc]
	old := before[wa]["a2"].PID
	da.waitFor("daemon a to stop a2 and forget it", func() bool {
		_, listed := da.pools()["a2"]
		return !listed && !alive(old)
	})
	if _, ok := da.findLog(func(e logEvent) bool {
		return e.str("pool") == "a2" && strings.HasPrefix(e.str("@message"), "pool moved to node "+wb.node+": ")
	}); !ok {
		t.Errorf("daemon a's log does not say a2 moved to node %s", wb.node)
	}
	a2 := db.waitPools("a2", "b1")["a2"]
	if a2.PID == old {
		t.Fatalf("a2 runs on node b with the pid it had on node a (%d)", old)
	}
	want[wa], want[wb] = []string{"a1"}, []string{"a2", "b1"}
	for _, w := range nodes {
		checkNodeRuns(t, w, daemons[w], want[w])
	}
	da.samePIDs(before[wa], "a1")
	db.samePIDs(before[wb], "b1")
	dc.samePIDs(before[wc], "c1")
	checkSpawns(t, wa, map[string]int{"a1": 1, "a2": 1})
	checkSpawns(t, wb, map[string]int{"a2": 1, "b1": 1})
}

// checkNodeRuns checks that a node's daemon lists exactly its pools, all
// Ready; that its node runs exactly their engines; and that the GPU memory
// of its simulated node is held by those engines alone.
func checkNodeRuns(t *testing.T, w *workspace, d *daemon, pools []string) {
	t.Helper()
	listed := d.pools()
	if got := slices.Sorted(maps.Keys(listed)); !slices.Equal(got, pools) {
		t.Errorf("node %s: the daemon lists pools %v, want %v", w.node, got, pools)
	}
	for _, id := range pools {
		if !isReady(listed[id]) {
			t.Errorf("node %s: pool %s is not Ready: %+v", w.node, id, listed[id])
		}
	}
	engines := w.engines()
	if got := slices.Sorted(maps.Keys(engines)); !slices.Equal(got, pools) {
		t.Errorf("node %s: engines run for pools %v, want %v", w.node, got, pools)
	}
	ours := w.allEnginePIDs()
	n, err := sim.Open(w.sim)
	if err != nil {
		t.Fatal(err)
	}
	defer n.Close()
	devices, err := n.Devices(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	held := 0
	for _, dev := range devices {
		for _, p := range dev.Processes {
			held++
			if !slices.Contains(ours, p.PID) {
				t.Errorf("node %s: GPU %d: process %d holds memory but is none of this node's engines %v", w.node, dev.Index, p.PID, ours)
			}
		}
	}
	if held < len(pools) {
		t.Errorf("node %s: %d process(es) hold GPU memory, want at least one per pool %v", w.node, held, pools)
	}
}
