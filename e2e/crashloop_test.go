//go:build linux

package e2e

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/poolmanagerd/pool-managerd/reconcile/restart"
)

// loopRestart: delays of 100, 200, 400 ms (no jitter), the breaker opens on
// the 3rd failure within a minute and stays open for an hour.
const loopRestart = `initialBackoff: "100ms", maxBackoff: "400ms", jitter: 0, stopGrace: "2s", drainTimeout: "1s", breaker: {failures: 3, window: "1m", cooldown: "1h"}`

// TestCrashLoop drives a pool that keeps failing through repeated applies:
// each apply restarts it after its backoff, the breaker opens exactly at the
// 3rd failure, applies then spawn nothing until pool-managerd reset.
func TestCrashLoop(t *testing.T) {
	t.Parallel()
	t.Run("load fails", testCrashLoopLoadFails)
	t.Run("exits after Ready", testCrashLoopAfterReady)
	t.Run("unhealthy after Ready", testCrashLoopUnhealthy)
}

// testCrashLoopLoadFails: failures apply sees itself (the load fails while
// apply waits for Ready).
func testCrashLoopLoadFails(t *testing.T) {
	t.Parallel()
	w := newWorkspace(t)
	w.writeConfig(pool{ID: "a", Env: map[string]string{"FAKE_ENGINE_FAIL_LOAD": "1"}, Restart: loopRestart})

	for i := 1; i <= 3; i++ {
		r := w.apply()
		mustExit(t, r, 1)
		if n := w.spawns("a"); n != i {
			t.Fatalf("apply %d: %d spawns in all, want %d\n%s", i, n, i, r)
		}
		s := w.status()["a"]
		if s.LastError == nil || s.LastError.Class != restart.ClassExited {
			t.Fatalf("apply %d: status: %s", i, s)
		}
		switch {
		case i < 3:
			if s.Phase != "Unready" || s.Breaker != "closed" {
				t.Errorf("after failure %d: want Unready with the breaker closed, got %s", i, s)
			}
			contains(t, fmt.Sprintf("apply %d", i), r.stdout, "a: Unready (exited)")
		default:
			if s.Phase != "Failed" || s.Breaker != "open" {
				t.Errorf("after failure 3: want Failed with the breaker open, got %s", s)
			}
			contains(t, "apply 3", r.stdout, "a: Failed (exited)", "next try only after a reset or a config change (circuit open)")
		}
	}
	// Each restart waited for its backoff: spawn i+1 comes at least the load
	// (100ms, then the failure) plus the i-th delay after spawn i.
	times := w.spawnTimes("a")
	for i, min := range []time.Duration{100*time.Millisecond + 100*time.Millisecond, 100*time.Millisecond + 200*time.Millisecond} {
		if gap := times[i+1].Sub(times[i]); gap < min {
			t.Errorf("spawn %d came %v after spawn %d, want at least %v (load + backoff)", i+2, gap, i+1, min)
		}
	}

	// Open: applies are blocked and spawn nothing.
	for i := 4; i <= 5; i++ {
		r := w.apply()
		mustExit(t, r, 1)
		contains(t, fmt.Sprintf("apply %d", i), r.stdout, "! blocked  a", "blocked: circuit open after 3 failures", "hint: fix the config or run pool-managerd reset a")
		if n := w.spawns("a"); n != 3 {
			t.Errorf("apply %d with the breaker open spawned: %d spawns in all", i, n)
		}
	}
	if c := w.planBlocker("a"); c != "circuit_open" {
		t.Errorf("plan: a's blocker class is %q, want circuit_open", c)
	}
	s := w.status()["a"]
	if s.Phase != "Failed" || s.Breaker != "open" || s.PID != 0 {
		t.Errorf("status with the breaker open: %s", s)
	}
	contains(t, "status", w.statusText(), "circuit breaker is open", "run pool-managerd reset a")
	w.noEngine("a")

	// Reset: one apply spawns again.
	r := w.run(nil, "reset", "a", "--state-dir", w.state)
	mustExit(t, r, 0)
	contains(t, "reset output", r.stdout, "breaker closed")
	if s := w.status()["a"]; s.Breaker != "closed" {
		t.Errorf("after reset: %s", s)
	}
	r = w.apply()
	mustExit(t, r, 1) // the model still fails to load
	if n := w.spawns("a"); n != 4 {
		t.Errorf("the apply after reset: %d spawns in all, want 4\n%s", n, r)
	}
	if s := w.status()["a"]; s.Phase != "Unready" || s.Breaker != "closed" {
		t.Errorf("after reset and one more failure: want Unready with the breaker closed (1 failure in the window), got %s", s)
	}
}

// testCrashLoopAfterReady: the engine reaches Ready, apply returns, and the
// engine exits 1 later. Only the next apply can notice: it must count the
// exit as a failure for the backoff and the breaker.
func testCrashLoopAfterReady(t *testing.T) {
	t.Parallel()
	w := newWorkspace(t)
	w.writeConfig(pool{ID: "a", Env: map[string]string{"FAKE_ENGINE_EXIT_AFTER": "700ms"}, Restart: loopRestart})

	readyPID := regexp.MustCompile(`Ready: engine pid (\d+)`)
	// runReady applies, expects the pool Ready with one more spawn, and
	// waits for its engine to exit.
	runReady := func(i, wantSpawns int) {
		t.Helper()
		r := w.apply()
		mustExit(t, r, 0)
		if n := w.spawns("a"); n != wantSpawns {
			t.Fatalf("apply %d: %d spawns in all, want %d\n%s", i, n, wantSpawns, r)
		}
		m := readyPID.FindStringSubmatch(r.stdout)
		if m == nil {
			t.Fatalf("apply %d did not report Ready: %s", i, r)
		}
		pid, _ := strconv.Atoi(m[1])
		waitFor(t, 5*time.Second, fmt.Sprintf("engine pid %d to exit", pid), func() bool { return !alive(pid) })
		if ws, ok := reap.status(pid, 2*time.Second); ok && (!ws.Exited() || ws.ExitStatus() != 1) {
			t.Errorf("engine pid %d should have exited 1 (FAKE_ENGINE_EXIT_AFTER), wait status %v", pid, ws)
		}
		// Seen by status before any apply records it.
		if s := w.status()["a"]; s.Phase != "Unready" || s.LastError == nil || s.LastError.Class != restart.ClassExited {
			t.Errorf("status once engine pid %d exited: %s", pid, s)
		}
	}
	for i := 1; i <= 3; i++ {
		runReady(i, i)
		if i >= 2 {
			// Apply i found engine i-1 dead: failure i-1, recorded.
			st := w.loadState()
			rec := st.Pools["a"]
			if len(rec.Failures) != i-1 || rec.LastError == nil || rec.LastError.Class != restart.ClassExited || rec.BreakerState == "open" {
				data, _ := json.Marshal(rec)
				t.Errorf("after apply %d (failure %d found): the pool's restart record: %s", i, i-1, data)
			}
		}
	}
	// Apply 4 finds the 3rd dead engine: the breaker opens, nothing spawns.
	r := w.apply()
	mustExit(t, r, 1)
	contains(t, "apply 4", r.stdout, "exited after it was Ready", "a: Failed (circuit_open)", "circuit open after 3 failures", "hint: fix the config or run pool-managerd reset a")
	if n := w.spawns("a"); n != 3 {
		t.Errorf("apply 4 spawned with the breaker open: %d spawns in all", n)
	}
	s := w.status()["a"]
	if s.Phase != "Failed" || s.Breaker != "open" {
		t.Errorf("after the 3rd failure: want Failed with the breaker open, got %s", s)
	}
	contains(t, "status", w.statusText(), "run pool-managerd reset a")
	r = w.apply()
	mustExit(t, r, 1)
	contains(t, "apply 5", r.stdout, "! blocked  a", "blocked: circuit open")
	if n := w.spawns("a"); n != 3 {
		t.Errorf("apply 5 spawned with the breaker open: %d spawns in all", n)
	}
	mustExit(t, w.run(nil, "reset", "a", "--state-dir", w.state), 0)
	runReady(6, 4)
}

// testCrashLoopUnhealthy: the engine reaches Ready, then its health check
// fails (503) while it keeps running. The next apply restarts it (stop, then
// start): that is a failure of class health_failed, for the backoff and the
// breaker, like a crash.
func testCrashLoopUnhealthy(t *testing.T) {
	t.Parallel()
	w := newWorkspace(t)
	w.writeConfig(pool{ID: "a", Env: map[string]string{"FAKE_ENGINE_UNHEALTHY_AFTER": "500ms"}, Restart: loopRestart})
	var problems []string
	for i := 1; i <= 4; i++ {
		r := w.apply()
		n := w.spawns("a")
		if i == 4 {
			if n != 3 || r.code != 1 {
				problems = append(problems, fmt.Sprintf("apply 4, after 3 health failures, spawned again (%d spawns in all, exit %d): the breaker did not open", n, r.code))
			}
			break
		}
		mustExit(t, r, 0)
		if n != i {
			t.Fatalf("apply %d: %d spawns in all, want %d\n%s", i, n, i, r)
		}
		pid := w.onlyEngine("a").PID
		waitFor(t, 5*time.Second, fmt.Sprintf("engine pid %d to fail its health check", pid), func() bool { return w.status()["a"].Phase == "Unready" })
		if i >= 2 {
			rec := w.loadState().Pools["a"]
			if len(rec.Failures) != i-1 || rec.LastError == nil || rec.LastError.Class != restart.ClassHealthFailed {
				data, _ := json.Marshal(rec)
				problems = append(problems, fmt.Sprintf("apply %d replaced the unhealthy engine of apply %d without recording a %s failure; restart record: %s", i, i-1, restart.ClassHealthFailed, data))
			}
		}
	}
	if len(problems) > 0 {
		t.Errorf("DEFECT: an engine that fails its health check after Ready is stopped and restarted by the next apply without counting a failure: no backoff, no breaker, no last error:\n\t%s",
			strings.Join(problems, "\n\t"))
	}
}

// spawnTimes returns the times of a pool's engine starts, from its log.
func (w *workspace) spawnTimes(pool string) []time.Time {
	w.t.Helper()
	data, err := os.ReadFile(filepath.Join(w.state, "logs", pool+".log"))
	if err != nil {
		w.t.Fatal(err)
	}
	var out []time.Time
	for _, m := range startTime.FindAllSubmatch(data, -1) {
		at, err := time.Parse(time.RFC3339Nano, string(m[1]))
		if err != nil {
			w.t.Fatal(err)
		}
		out = append(out, at)
	}
	return out
}

var startTime = regexp.MustCompile(`(?m)^-- pool-managerd (\S+): start `)

// planBlocker returns the blocker class of a pool in `plan --format json`.
func (w *workspace) planBlocker(pool string) string {
	w.t.Helper()
	r := w.run(nil, append([]string{"plan", w.config, "--format", "json"}, w.nodeFlags()...)...)
	mustExit(w.t, r, 0)
	var plan struct {
		Changes []struct {
			Pool    string
			Blocker *struct{ Class string }
		}
	}
	if err := json.Unmarshal([]byte(r.stdout), &plan); err != nil {
		w.t.Fatalf("plan --format json: %v\n%s", err, r.stdout)
	}
	for _, c := range plan.Changes {
		if c.Pool == pool && c.Blocker != nil {
			return c.Blocker.Class
		}
	}
	return ""
}
