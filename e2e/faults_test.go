//go:build linux

package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/poolmanagerd/pool-managerd/drivers/engine"
	"github.com/poolmanagerd/pool-managerd/reconcile/restart"
)

// expectFailure checks what an apply that failed a pool with class says,
// in its output and in status, and that no engine of the pool is left. The
// hint is the class's (restart.Hint) unless hint is given.
func expectFailure(t *testing.T, w *workspace, r result, pool, phase, class string, hint ...string) poolStatus {
	t.Helper()
	mustExit(t, r, 1)
	want := restart.Hint(class)
	if len(hint) > 0 {
		want = hint[0]
	}
	contains(t, "apply output", r.stdout,
		fmt.Sprintf("%s: %s (%s): ", pool, phase, class), // the outcome line
		"hint: "+want, // the progress line's hint
	)
	s := w.status()[pool]
	if s.Phase != phase || s.Ready || s.LastError == nil || s.LastError.Class != class || s.LastError.Hint != want || s.LastError.Time == nil {
		t.Errorf("status of %s: want phase %s, last error %s with its hint %q; got %s", pool, phase, class, want, s)
	}
	w.noEngine(pool)
	return s
}

// TestFaults: each engine fault ends in its error class, with a hint, and
// no engine process left behind.
func TestFaults(t *testing.T) {
	t.Parallel()

	t.Run("slow load within the startup timeout", func(t *testing.T) {
		t.Parallel()
		w := newWorkspace(t)
		w.writeConfig(pool{ID: "a", Env: map[string]string{"FAKE_ENGINE_LOAD_DELAY": "300ms"},
			Restart: fastRestart + `, startupTimeout: "3s"`})
		r := w.apply()
		mustExit(t, r, 0)
		contains(t, "apply output", r.stdout, "Apply done: 1 Ready")
		if r.dur < 300*time.Millisecond {
			t.Errorf("apply returned after %v, before the 300ms load was over", r.dur)
		}
		if s := w.status()["a"]; !s.Ready || s.LastError != nil {
			t.Errorf("status: %s", s)
		}
		w.onlyEngine("a")
	})

	t.Run("slow load beyond the startup timeout", func(t *testing.T) {
		t.Parallel()
		w := newWorkspace(t)
		w.writeConfig(pool{ID: "a", Env: map[string]string{"FAKE_ENGINE_LOAD_DELAY": "5s"},
			Restart: fastRestart + `, startupTimeout: "500ms"`})
		r := w.apply()
		s := expectFailure(t, w, r, "a", "Unready", restart.ClassHealthTimeout)
		contains(t, "last error", s.LastError.Message, "did not pass its health check within 500ms")
		if r.dur > 4*time.Second {
			t.Errorf("apply took %v: it waited for the load instead of the 500ms startup timeout", r.dur)
		}
		for _, pid := range pidsIn(r.stdout) {
			if alive(pid) {
				t.Errorf("engine pid %d still runs after its startup timeout", pid)
			}
		}
	})

	t.Run("load failure", func(t *testing.T) {
		t.Parallel()
		w := newWorkspace(t)
		w.writeConfig(pool{ID: "a", Env: map[string]string{"FAKE_ENGINE_FAIL_LOAD": "1"}})
		r := w.apply()
		s := expectFailure(t, w, r, "a", "Unready", restart.ClassExited)
		contains(t, "last error", s.LastError.Message, "exited with status 1 while loading its model")
	})

	// A model too big for its GPU: the pool declares 4Gi, so neither plan
	// nor apply's VRAM check can know; the engine asks for 30Gi of the 24Gi
	// GPU and fails its load as the real one does: llama-server (with --fit
	// off, which pool-managerd passes) with "cudaMalloc failed: out of
	// memory", vLLM with "ValueError: Free memory on device cuda:0 ... is
	// less than desired GPU memory utilization", TGI's shard with
	// "torch.OutOfMemoryError: CUDA out of memory". restart.ClassInsufficientVRAM
	// covers "the engine's own out-of-memory at load".
	for _, engine := range []string{"llamacpp", "vllm", "tgi"} {
		t.Run("GPU out of memory at load/"+engine, func(t *testing.T) {
			t.Parallel()
			w := newWorkspace(t)
			p := pool{ID: "a", Engine: engine, Env: map[string]string{"FAKE_ENGINE_VRAM": "30Gi"}}
			if engine != "llamacpp" {
				p.Model = w.modelDir("a")
			}
			w.writeConfig(p)
			r := w.apply()
			mustExit(t, r, 1)
			logData, _ := os.ReadFile(w.state + "/logs/a.log")
			contains(t, "engine log", string(logData), map[string]string{
				"llamacpp": "cudaMalloc failed: out of memory",
				"vllm":     "is less than desired GPU memory utilization",
				"tgi":      "torch.OutOfMemoryError: CUDA out of memory",
			}[engine])
			s := w.status()["a"]
			if s.LastError == nil || s.LastError.Class != restart.ClassInsufficientVRAM {
				t.Errorf("DEFECT: a %s engine whose load failed for lack of GPU memory is not classified %s: %s\n%s",
					engine, restart.ClassInsufficientVRAM, s, r.stdout)
			}
			w.noEngine("a")
		})
	}

	// FAKE_ENGINE_CUDA_ERROR_AFTER: after Ready, ggml-cuda's out of memory
	// error and SIGABRT. Apply has returned by then; the next apply finds the
	// engine dead, reads its log, and records a CUDA error, whose backoff is
	// doubled (200ms for an initialBackoff of 100ms).
	t.Run("CUDA error after Ready", func(t *testing.T) {
		t.Parallel()
		w := newWorkspace(t)
		// The restarted engine must not abort again before the status below.
		w.writeConfig(pool{ID: "a", Env: map[string]string{
			"FAKE_ENGINE_CUDA_ERROR_AFTER": "600ms",
			"FAKE_ENGINE_FAULT_ONCE":       filepath.Join(t.TempDir(), "struck"),
		}})
		mustExit(t, w.apply(), 0)
		pid := w.onlyEngine("a").PID
		waitFor(t, 5*time.Second, "the engine to abort", func() bool { return !alive(pid) })
		if ws, ok := reap.status(pid, 2*time.Second); ok && (!ws.Signaled() || ws.Signal() != syscall.SIGABRT) {
			t.Errorf("engine pid %d should have died of SIGABRT: %v", pid, ws)
		}
		// Before any apply, status tells from the state alone.
		if s := w.status()["a"]; s.Phase != "Unready" || s.LastError == nil || s.LastError.Class != restart.ClassCUDAError {
			t.Errorf("status once the engine died of a CUDA error (its log says so) should show class %s with its hint; got %s",
				restart.ClassCUDAError, s)
		}
		r := w.apply()
		mustExit(t, r, 0)
		contains(t, "apply output", r.stdout, fmt.Sprintf("engine pid %d died after it was Ready (CUDA error: out of memory)", pid),
			"hint: "+restart.Hint(restart.ClassCUDAError), "Apply done: 1 Ready")
		if backoffWait.FindStringSubmatch(r.stdout) == nil {
			t.Errorf("the apply did not wait for the backoff:\n%s", r.stdout)
		}
		// The backoff the failure set, from the record (how much of it was
		// left when the apply looked depends on the machine's speed): a CUDA
		// error doubles the 100ms initialBackoff, give or take its 10% jitter.
		if rec := w.loadState().Pools["a"]; rec.LastError == nil {
			t.Errorf("no failure recorded for pool a: %+v", rec)
		} else if d := rec.NextRetry.Sub(rec.LastError.Time); d < 180*time.Millisecond || d > 220*time.Millisecond {
			t.Errorf("the CUDA error set a backoff of %v; it doubles the 100ms initialBackoff (200ms ± 10%%)", d)
		}
		s := w.status()["a"]
		if !s.Ready || s.LastError == nil || s.LastError.Class != restart.ClassCUDAError || s.Restarts != 1 {
			t.Errorf("status after the restart: want Ready, 1 restart, last error %s; got %s", restart.ClassCUDAError, s)
		}
	})

	t.Run("insufficient VRAM at apply's own check", testInsufficientVRAM)

	t.Run("CPU spillover", func(t *testing.T) {
		t.Parallel()
		w := newWorkspace(t)
		w.writeConfig(pool{ID: "a", Env: map[string]string{"FAKE_ENGINE_NO_GPU": "1"}})
		r := w.apply()
		s := expectFailure(t, w, r, "a", "Unready", restart.ClassCPUSpillover)
		contains(t, "last error", s.LastError.Message, "holds no memory on GPUs [0]: it runs on the CPU")
		for _, pid := range pidsIn(r.stdout) {
			if alive(pid) {
				t.Errorf("engine pid %d still runs on the CPU", pid)
			}
		}
	})

	t.Run("memory outside the mask", func(t *testing.T) {
		t.Parallel()
		w := newWorkspace(t)
		w.writeConfig(pool{ID: "a", Devices: []int{0}, Env: map[string]string{"FAKE_ENGINE_HOLD_OUTSIDE_MASK": "1"}})
		r := w.apply()
		s := expectFailure(t, w, r, "a", "Unready", restart.ClassMaskViolation)
		contains(t, "last error", s.LastError.Message, "0.5 GiB on GPU 1", "outside its mask [0]")
		for _, pid := range pidsIn(r.stdout) {
			if alive(pid) {
				t.Errorf("engine pid %d still runs outside its mask", pid)
			}
		}
	})

	t.Run("engine ignoring SIGTERM", func(t *testing.T) {
		t.Parallel()
		w := newWorkspace(t)
		a := pool{ID: "a", Env: map[string]string{"FAKE_ENGINE_IGNORE_SIGTERM": "1"},
			Restart: `stopGrace: "300ms", drainTimeout: "1s"`}
		w.writeConfig(a)
		mustExit(t, w.apply(), 0)
		old := w.onlyEngine("a").PID

		// Replaced: SIGTERM is ignored, SIGKILL after the grace period.
		a.Ctx = 8192
		w.writeConfig(a)
		r := w.apply()
		mustExit(t, r, 0)
		contains(t, "apply output", r.stdout, "-/+ replace  a", fmt.Sprintf("stopping engine pid %d", old), "Apply done: 1 Ready")
		expectKilled(t, old)
		if r.dur < 300*time.Millisecond {
			t.Errorf("the replace took %v, less than the 300ms grace", r.dur)
		}
		cur := w.onlyEngine("a").PID

		// Stopped: the same.
		r = w.run(nil, "stop", "a", "--state-dir", w.state)
		mustExit(t, r, 0)
		contains(t, "stop output", r.stdout, fmt.Sprintf("Stopping a (pid %d)", cur), "Stopped 1 engine.")
		expectKilled(t, cur)
		if r.dur < 300*time.Millisecond || r.dur > 5*time.Second {
			t.Errorf("stop took %v: want the 300ms grace, then SIGKILL", r.dur)
		}
		w.noEngine("a")
	})
}

var backoffWait = regexp.MustCompile(`waiting (\d+)ms for the backoff`)

// expectKilled checks that pid is gone, killed by SIGKILL (its exit status
// comes from the test's reaper: the engine was re-parented to the test when
// the apply that started it exited).
func expectKilled(t *testing.T, pid int) {
	t.Helper()
	if alive(pid) {
		t.Errorf("engine pid %d still runs", pid)
		return
	}
	ws, ok := reap.status(pid, 2*time.Second)
	if !ok {
		t.Errorf("engine pid %d is gone, but the test did not reap it (not re-parented to the test?)", pid)
		return
	}
	if !ws.Signaled() || ws.Signal() != syscall.SIGKILL {
		t.Errorf("engine pid %d ignored SIGTERM, so it should have died of SIGKILL; its wait status: exited %v code %d signaled %v %v",
			pid, ws.Exited(), ws.ExitStatus(), ws.Signaled(), ws.Signal())
	}
}

// testInsufficientVRAM reaches apply's own VRAM check (the one just before
// the spawn), not plan's: the GPU's memory must shrink between the plan and
// the start. Pool big declares 4Gi but its engine takes 20Gi of GPU 0 once
// loaded; pool small (8Gi, sharing GPU 0) is planned while big still loads
// (24Gi free), and applied, from the saved plan, once big has loaded (4Gi
// free). A saved plan is not stale for that: an engine's memory use is left
// out of the plan's observed hash on purpose.
func testInsufficientVRAM(t *testing.T) {
	t.Parallel()
	w := newWorkspace(t)
	big := pool{ID: "big", Share: true, VRAM: "4Gi",
		Env: map[string]string{"FAKE_ENGINE_VRAM": "20Gi", "FAKE_ENGINE_LOAD_DELAY": "2s"}}
	small := pool{ID: "small", Share: true, VRAM: "8Gi"}
	w.writeConfig(big)
	// Big's apply dies once its engine is recorded (the crash-safety hook),
	// leaving it loading, with no apply holding the lock.
	r := w.apply("POOL_MANAGERD_TEST_CRASH_AT=big:recorded")
	if r.signal != syscall.SIGKILL {
		t.Fatalf("apply with the crash hook should die of SIGKILL: %s", r)
	}
	w.writeConfig(big, small)
	planFile := w.planOut("plan.json")
	var plan struct {
		Changes []struct {
			Action, Pool string
			Need         []struct{ Need, Free uint64 }
		}
		Unchanged []struct{ Pool, Health string }
	}
	data, _ := os.ReadFile(planFile)
	if err := json.Unmarshal(data, &plan); err != nil {
		t.Fatal(err)
	}
	if len(plan.Changes) != 1 || plan.Changes[0].Action != "create" || plan.Changes[0].Pool != "small" ||
		len(plan.Unchanged) != 1 || plan.Unchanged[0].Health != "loading" {
		t.Fatalf("the plan should create small while big loads (machine too slow?):\n%s", data)
	}
	w.waitForHealthy("big", 10*time.Second)

	r = w.applyPlan(planFile)
	// The hint of a single-GPU pool (a split cannot move).
	s := expectFailure(t, w, r, "small", "Unready", restart.ClassInsufficientVRAM, "lower ctx, add GPUs to devices, or pick a smaller model or quantisation")
	contains(t, "last error", s.LastError.Message, "insufficient VRAM on GPU 0", "needs 8.0 GiB", "4.0 GiB free")
	if strings.Contains(r.stdout, "small        Preloading") {
		t.Errorf("apply started small's engine:\n%s", r.stdout)
	}
	if n := w.spawns("small"); n != 0 {
		t.Errorf("small was spawned %d times; the VRAM check comes before the spawn", n)
	}
	if s := w.status()["big"]; !s.Ready {
		t.Errorf("big: %s", s)
	}

	// The next apply blocks small at plan time, with the same class.
	r = w.apply()
	mustExit(t, r, 1)
	contains(t, "plan output", r.stdout, "! blocked  small", "blocked: insufficient VRAM on GPU 0")
	if n := w.spawns("small"); n != 0 {
		t.Errorf("small was spawned %d times", n)
	}
	w.noEngine("small")
	if s := w.status()["small"]; s.LastError == nil || s.LastError.Class != restart.ClassInsufficientVRAM {
		t.Errorf("status of small: %s", s)
	}
}

// waitForReady waits until status shows the pool Ready.
// waitForHealthy waits until the pool's engine answers its health check.
// An engine no apply watched to Ready is healthy, but its placement is not
// verified: status shows it Preloading, never Ready, until an apply does.
func (w *workspace) waitForHealthy(pool string, timeout time.Duration) {
	w.t.Helper()
	waitFor(w.t, timeout, pool+"'s engine to pass its health check", func() bool {
		s := w.status()[pool]
		return s.Port != 0 && engine.ProbeHealth(context.Background(), s.Port, false) == engine.HealthOK
	})
	if s := w.status()[pool]; s.Ready || s.Phase != "Preloading" {
		w.t.Errorf("%s: healthy but never verified, want Preloading and not ready; got %s", pool, s)
	}
}
