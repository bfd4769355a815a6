//go:build linux

package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/poolmanagerd/pool-managerd/drivers/engine/proc"
	"github.com/poolmanagerd/pool-managerd/drivers/gpu/sim"
	"github.com/poolmanagerd/pool-managerd/internal/executor"
)

// twoEqualGPUs: vLLM and TGI shard evenly, so a two-GPU mask needs GPUs of one size.
func twoEqualGPUs() []sim.GPUSpec {
	return []sim.GPUSpec{
		{Name: "NVIDIA GeForce RTX 4090", MemoryBytes: 24 * sim.GiB},
		{Name: "NVIDIA GeForce RTX 4090", MemoryBytes: 24 * sim.GiB},
	}
}

// modelDir creates a model directory (vLLM and TGI load directories).
func (w *workspace) modelDir(name string) string {
	w.t.Helper()
	dir := filepath.Join(w.models, name)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		w.t.Fatal(err)
	}
	return dir
}

// session lists the live processes of an engine's session: the engine and
// its workers or shards.
func session(t *testing.T, pid int) []int {
	t.Helper()
	pids, err := proc.Session(pid)
	if err != nil {
		t.Fatal(err)
	}
	var live []int
	for _, p := range pids {
		if alive(p) {
			live = append(live, p)
		}
	}
	return live
}

// TestEnginesWithWorkers runs vLLM (tensor-parallel workers) and TGI
// (shards) pools on two GPUs: their memory is held by child processes,
// which apply must see for the placement check and stop with their engine.
func TestEnginesWithWorkers(t *testing.T) {
	t.Parallel()
	w := newWorkspaceGPUs(t, twoEqualGPUs())
	v := pool{ID: "v", Engine: "vllm", Model: w.modelDir("v"), Devices: []int{0, 1}, VRAM: "8Gi", Share: true}
	g := pool{ID: "g", Engine: "tgi", Model: w.modelDir("g"), Devices: []int{0, 1}, VRAM: "8Gi", Share: true}
	w.writeConfig(v, g)

	r := w.apply()
	mustExit(t, r, 0)
	contains(t, "apply output", r.stdout, "Apply done: 2 Ready")
	st := w.status()
	sessions := map[string][]int{}
	for _, id := range []string{"v", "g"} {
		s := st[id]
		e := w.onlyEngine(id)
		if !s.Ready || s.PID != e.PID || len(s.GPUs) != 2 {
			t.Errorf("%s: want Ready, pid %d, memory on GPUs 0 and 1 (its workers'): %s", id, e.PID, s)
		}
		sessions[id] = session(t, e.PID)
		if len(sessions[id]) < 3 {
			t.Errorf("%s: the engine should run a worker per GPU; its session: %v", id, sessions[id])
		}
	}

	// Replace v: its engine and workers go, g's stay.
	v.Ctx = 8192
	w.writeConfig(v, g)
	r = w.apply()
	mustExit(t, r, 0)
	contains(t, "apply output", r.stdout, "-/+ replace  v", "Apply done: 1 Ready")
	for _, pid := range sessions["v"] {
		if alive(pid) {
			t.Errorf("v's old engine or worker pid %d still runs after the replace", pid)
		}
	}
	for _, pid := range sessions["g"] {
		if !alive(pid) {
			t.Errorf("g's engine or worker pid %d died in v's replace", pid)
		}
	}

	// Crash right after v's spawn: the next apply adopts it, workers and all.
	v.Ctx = 4096
	w.writeConfig(v, g)
	r = w.apply("POOL_MANAGERD_TEST_CRASH_AT=v:" + executor.StepSpawned)
	if r.signal != syscall.SIGKILL {
		t.Fatalf("apply should die of SIGKILL: %s", r)
	}
	r = w.apply()
	mustExit(t, r, 0)
	contains(t, "apply output", r.stdout, "← adopt    v")
	if s := w.status()["v"]; !s.Ready || len(s.GPUs) != 2 {
		t.Errorf("v after the crash and adoption: %s", s)
	}
	w.onlyEngine("v")
	w.onlyEngine("g")

	// stop --all stops engines and workers.
	r = w.run(nil, "stop", "--all", "--state-dir", w.state)
	mustExit(t, r, 0)
	contains(t, "stop output", r.stdout, "Stopped 2 engines.")
	if left := w.allEnginePIDs(); len(left) > 0 {
		t.Errorf("stop --all left engine or worker processes: %v", left)
	}
}

// TestOrphanedWorkers: a TGI launcher is killed after Ready; its shards and
// its router (each in a process group of its own) live on, holding GPU
// memory and the port (FAKE_ENGINE_ORPHAN_WORKERS; vLLM's EngineCore and
// workers do it by themselves, see TestKilledVLLMServer). They carry the
// engine's marker and session: they are pool-managerd's own. The next apply
// must clean them up and restart the pool, not block it as if a stranger
// held the GPUs. (A kill, not FAKE_ENGINE_EXIT_AFTER: that would end the
// restarted engine too, racing the status read after the apply.)
func TestOrphanedWorkers(t *testing.T) {
	t.Parallel()
	w := newWorkspaceGPUs(t, twoEqualGPUs())
	w.writeConfig(pool{ID: "g", Engine: "tgi", Model: w.modelDir("g"), Devices: []int{0, 1}, VRAM: "8Gi",
		Env: map[string]string{"FAKE_ENGINE_ORPHAN_WORKERS": "1"}})
	mustExit(t, w.apply(), 0)
	e := w.onlyEngine("g")
	workers := session(t, e.PID)[1:]
	if len(workers) != 3 {
		t.Fatalf("TGI with 2 shards should run 2 shards and a router besides its launcher; its session: %v", session(t, e.PID))
	}
	if err := syscall.Kill(e.PID, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "the launcher to die", func() bool { return !alive(e.PID) })
	for _, pid := range workers {
		if !alive(pid) {
			t.Fatalf("pid %d died with its launcher: FAKE_ENGINE_ORPHAN_WORKERS did not act", pid)
		}
	}

	r := w.apply()
	s := w.status()["g"]
	var left []int
	for _, pid := range workers {
		if alive(pid) {
			left = append(left, pid)
		}
	}
	if r.code != 0 || !s.Ready || len(left) > 0 {
		t.Errorf("DEFECT: the shards and router %v of a dead engine (pid %d) are left holding GPU memory; the next apply %s; status: %s; still alive: %v\n%s",
			workers, e.PID, describeExit(r), s, left, r.stdout)
	}
	if len(left) > 0 {
		stop := w.run(nil, "stop", "--all", "--state-dir", w.state)
		for _, pid := range left {
			if alive(pid) {
				t.Errorf("DEFECT: `stop --all` (%q) leaves pid %d of the dead engine running", stop.stdout, pid)
				_ = syscall.Kill(pid, syscall.SIGKILL)
			}
		}
	}
}

func describeExit(r result) string {
	if r.code == 0 {
		return "exits 0"
	}
	return fmt.Sprintf("exits %d", r.code)
}

// TestKilledVLLMServer: vLLM's API server is killed with SIGKILL; its
// EngineCore and the workers under it (API server → VLLM::EngineCore →
// VLLM::Worker_TP<n>, one session) live on, holding both GPUs, as real vLLM's
// do. The next apply cleans all of them up and starts the pool again, and
// stop --all leaves nothing of the new engine's tree.
func TestKilledVLLMServer(t *testing.T) {
	t.Parallel()
	w := newWorkspaceGPUs(t, twoEqualGPUs())
	w.writeConfig(pool{ID: "v", Engine: "vllm", Model: w.modelDir("v"), Devices: []int{0, 1}, VRAM: "8Gi"})
	mustExit(t, w.apply(), 0)
	e := w.onlyEngine("v")
	rest := session(t, e.PID)[1:]
	if len(rest) != 3 {
		t.Fatalf("vLLM -tp 2 should run an EngineCore and 2 workers besides its API server; its session: %v", session(t, e.PID))
	}
	if err := syscall.Kill(e.PID, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "the API server to die", func() bool { return !alive(e.PID) })
	for _, pid := range rest {
		if !alive(pid) {
			t.Fatalf("pid %d of the engine's tree died with its API server: the stand-in does not act as vLLM", pid)
		}
	}

	r := w.apply()
	mustExit(t, r, 0)
	if s := w.status()["v"]; !s.Ready || len(s.GPUs) != 2 {
		t.Errorf("v after its API server was killed and apply ran again: %s\n%s", s, r.stdout)
	}
	for _, pid := range rest {
		if alive(pid) {
			t.Errorf("pid %d of the killed engine's tree still runs after the next apply", pid)
		}
	}
	mustExit(t, w.run(nil, "stop", "--all", "--state-dir", w.state), 0)
	if left := w.allEnginePIDs(); len(left) > 0 {
		t.Errorf("stop --all left engine processes: %v", left)
	}
}
