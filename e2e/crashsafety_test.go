//go:build linux

package e2e

import (
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/poolmanagerd/pool-managerd/drivers/engine/proc"
	"github.com/poolmanagerd/pool-managerd/internal/executor"
	"github.com/poolmanagerd/pool-managerd/reconcile/restart"
)

// TestCrashSafety kills apply with SIGKILL at each step of a start
// (POOL_MANAGERD_TEST_CRASH_AT), for a fresh start and for a replace of two
// pools started in parallel, then runs apply again and checks that the node
// converges: every pool Ready, exactly one engine process per pool, the
// state file valid and naming the live pid, no engine of a replaced spec
// left, and a further apply with nothing to do.
func TestCrashSafety(t *testing.T) {
	t.Parallel()
	steps := []string{
		executor.StepStopped, executor.StepIntent, executor.StepSpawned,
		executor.StepRecorded, executor.StepHealthy, executor.StepReadyRecorded,
	}
	for _, mode := range []string{"fresh", "replace"} {
		for _, step := range steps {
			t.Run(mode+"/"+step, func(t *testing.T) {
				t.Parallel()
				crashAndRecover(t, mode, step, false)
			})
		}
	}
	// POOL:step crashes at one pool's step only, whatever the other does.
	t.Run("replace/b:spawned", func(t *testing.T) {
		t.Parallel()
		crashAndRecover(t, "replace", "b:"+executor.StepSpawned, false)
	})
	// The config changes between the crash and the next apply: the engine
	// the crash left unrecorded (found by its marker) must be replaced, not
	// left running beside its successor.
	t.Run("fresh/spawned, then the config changes", func(t *testing.T) {
		t.Parallel()
		crashAndRecover(t, "fresh", executor.StepSpawned, true)
	})
	t.Run("stop --all after a crash at spawned", testStopAfterCrash)
	t.Run("loaded unwatched", testCrashBeforePlacement)
}

// crashAndRecover: mode fresh starts two pools, replace changes both; the
// apply dies at step; with changeAfter the config changes (again) before
// the apply that must recover.
func crashAndRecover(t *testing.T, mode, step string, changeAfter bool) {
	w := newWorkspace(t)
	// b loads slower than a, so that a reaches healthy and ready-recorded
	// first, while b still loads: the crash always finds b mid-start, and
	// the next apply finds it still loading (an engine that finished loading
	// while no apply watched it is TestCrashSafety/"loaded unwatched").
	pools := []pool{{ID: "a", Devices: []int{0}}, {ID: "b", Devices: []int{1}, Env: map[string]string{"FAKE_ENGINE_LOAD_DELAY": "1s"}}}
	w.writeConfig(pools...)
	oldHash := map[string]string{}
	if mode == "replace" {
		mustExit(t, w.apply(), 0)
		for _, p := range pools {
			if n := w.spawns(p.ID); n != 1 {
				t.Fatalf("%s: %d spawns before the replace", p.ID, n)
			}
		}
		for _, p := range pools {
			oldHash[p.ID] = w.onlyEngine(p.ID).Marker.SpecHash
		}
		for i := range pools {
			pools[i].Ctx = 8192
		}
		w.writeConfig(pools...)
	}

	r := w.apply("POOL_MANAGERD_TEST_CRASH_AT=" + step)
	switch {
	case mode == "fresh" && step == executor.StepStopped:
		// A fresh start stops nothing: the hook never fires.
		mustExit(t, r, 0)
	case r.signal != syscall.SIGKILL:
		t.Fatalf("apply with POOL_MANAGERD_TEST_CRASH_AT=%s should die of SIGKILL: %s", step, r)
	}
	w.loadState() // valid, whatever the moment of the crash
	if changeAfter {
		for pool, list := range w.engines() {
			for _, e := range list {
				oldHash[pool] = e.Marker.SpecHash
			}
		}
		if len(oldHash) == 0 {
			t.Fatalf("the crash at %s left no engine running", step)
		}
		for i := range pools {
			pools[i].Ctx = 2048
		}
		w.writeConfig(pools...)
	}

	r = w.apply()
	mustExit(t, r, 0)

	st := w.status()
	state := w.loadState()
	engines := w.engines()
	for _, p := range pools {
		if s := st[p.ID]; s.Phase != "Ready" || !s.Ready {
			t.Errorf("after recovery, %s is not Ready: %s", p.ID, s)
		}
		list := engines[p.ID]
		if len(list) != 1 {
			t.Errorf("after recovery, pool %s has %d engine processes, want exactly 1: %v", p.ID, len(list), list)
			continue
		}
		e := list[0]
		rec, ok := state.Engines[p.ID]
		switch {
		case !ok:
			t.Errorf("the state file has no engine for %s (live engine pid %d)", p.ID, e.PID)
			continue
		case rec.PID != e.PID || rec.StartTicks != e.Ticks || !proc.Alive(rec.PID, rec.StartTicks):
			t.Errorf("the state file records %s as pid %d (ticks %d), the live engine is pid %d (ticks %d)", p.ID, rec.PID, rec.StartTicks, e.PID, e.Ticks)
		case rec.Intent:
			t.Errorf("the state file still records %s as an intent: %+v", p.ID, rec)
		case rec.ReadyAt.IsZero():
			t.Errorf("DEFECT: the state file does not record %s's engine pid %d as Ready (readyAt is zero): it was healthy at the crash, and the next apply took it as Ready without verifying its placement or recording Ready", p.ID, e.PID)
		}
		if e.Marker.SpecHash != rec.SpecHash {
			t.Errorf("%s: the engine's marker has spec hash %s, the state %s", p.ID, e.Marker.SpecHash, rec.SpecHash)
		}
		if old := oldHash[p.ID]; old != "" && e.Marker.SpecHash == old {
			t.Errorf("%s: the engine runs the replaced spec (hash %s)", p.ID, old)
		}
		if s := st[p.ID]; s.PID != e.PID {
			t.Errorf("%s: status says pid %d, the process table %d", p.ID, s.PID, e.PID)
		}
	}
	for pool, list := range engines {
		if pool != "a" && pool != "b" {
			t.Errorf("engines of an unknown pool %s: %v", pool, list)
		}
	}
	if pids := w.allEnginePIDs(); len(pids) != len(pools) {
		var desc []string
		for _, pid := range pids {
			desc = append(desc, describeProcess(pid))
		}
		t.Errorf("after recovery %d engine processes run on the node, want %d:\n\t%s", len(pids), len(pools), strings.Join(desc, "\n\t"))
	}
	if r := w.run(nil, append([]string{"plan", w.config}, w.nodeFlags()...)...); strings.Contains(r.stdout, "does not own") {
		t.Errorf("after recovery the plan sees processes pool-managerd does not own (its own engines, orphaned):\n%s", r.stdout)
	}

	spawns := map[string]int{}
	for _, p := range pools {
		spawns[p.ID] = w.spawns(p.ID)
	}
	r = w.apply()
	mustExit(t, r, 0)
	contains(t, "the apply after recovery", r.stdout, "Nothing to do")
	for _, p := range pools {
		if n := w.spawns(p.ID); n != spawns[p.ID] {
			t.Errorf("%s: the apply after recovery spawned (%d spawns, was %d)", p.ID, n, spawns[p.ID])
		}
	}
}

// testStopAfterCrash: an apply killed right after a spawn leaves the engine
// recorded only as an intent (no pid); `stop --all` must still stop it.
func testStopAfterCrash(t *testing.T) {
	t.Parallel()
	w := newWorkspace(t)
	w.writeConfig(pool{ID: "a", Env: map[string]string{"FAKE_ENGINE_LOAD_DELAY": "300ms"}})
	r := w.apply("POOL_MANAGERD_TEST_CRASH_AT=" + executor.StepSpawned)
	if r.signal != syscall.SIGKILL {
		t.Fatalf("apply should die of SIGKILL: %s", r)
	}
	e := w.onlyEngine("a")
	if s := w.status()["a"]; s.PID != e.PID {
		t.Errorf("status does not show the engine the crash left: %s (engine pid %d)", s, e.PID)
	}
	r = w.run(nil, "stop", "--all", "--state-dir", w.state)
	mustExit(t, r, 0)
	if alive(e.PID) {
		t.Errorf("DEFECT: `stop --all` after an apply killed at %q leaves engine pid %d running (the state file knew it only as an intent, no pid) and says: %q; the state no longer mentions it",
			executor.StepSpawned, e.PID, strings.TrimSpace(r.stdout))
		_ = syscall.Kill(e.PID, syscall.SIGKILL)
		waitFor(t, 5*time.Second, "the engine to die", func() bool { return !alive(e.PID) })
	}
}

// testCrashBeforePlacement: the engine runs on the CPU (FAKE_ENGINE_NO_GPU),
// which the placement check after the health check refuses. An apply killed
// at step healthy (health passed, placement not yet verified), or at step
// recorded with the engine then loading to healthy while no apply watches
// it: the next apply must still verify the placement, not take a healthy
// engine as Ready.
func testCrashBeforePlacement(t *testing.T) {
	t.Parallel()
	for _, step := range []string{executor.StepHealthy, executor.StepRecorded} {
		t.Run(step, func(t *testing.T) {
			t.Parallel()
			w := newWorkspace(t)
			w.writeConfig(pool{ID: "a", Env: map[string]string{"FAKE_ENGINE_NO_GPU": "1"}})
			r := w.apply("POOL_MANAGERD_TEST_CRASH_AT=" + step)
			if r.signal != syscall.SIGKILL {
				t.Fatalf("apply should die of SIGKILL: %s", r)
			}
			// Loaded and healthy before the next apply looks (and not Ready:
			// its placement is not verified).
			w.waitForHealthy("a", 5*time.Second)
			r = w.apply()
			s := w.status()["a"]
			if r.code != 1 || s.LastError == nil || s.LastError.Class != restart.ClassCPUSpillover || len(w.engines()["a"]) != 0 {
				t.Errorf("DEFECT: after an apply killed at %q, the next apply takes the healthy engine as Ready without verifying its placement: a CPU-only engine (no GPU memory) is accepted, and readyAt is never recorded.\nwant exit 1, class %s, engine stopped; got exit %d, status %s\n%s",
					step, restart.ClassCPUSpillover, r.code, s, r.stdout)
			}
		})
	}
}
