//go:build linux

package e2e

import (
	"encoding/json"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/poolmanagerd/pool-managerd/drivers/engine/proc"
	"github.com/poolmanagerd/pool-managerd/internal/state"
)

// copyExample copies examples/NAME into the workspace's config, on the
// workspace's node, with its model files in the workspace and without fixed
// ports (the driver picks free ones).
func (w *workspace) copyExample(name string) {
	w.t.Helper()
	src := filepath.Join("..", "examples", name)
	modelPath := regexp.MustCompile(`"/models/([^"]+)"`)
	fixedPort := regexp.MustCompile(`(?m)^\s*port:\s*\d+\s*\n`)
	err := filepath.WalkDir(src, func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		data, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		text := strings.ReplaceAll(string(data), `"gpu-01"`, fmt.Sprintf("%q", w.node))
		text = fixedPort.ReplaceAllString(text, "")
		text = modelPath.ReplaceAllStringFunc(text, func(m string) string {
			return fmt.Sprintf("%q", w.model(modelPath.FindStringSubmatch(m)[1]))
		})
		rel, _ := filepath.Rel(src, path)
		w.writeFile(rel, text)
		return nil
	})
	if err != nil {
		w.t.Fatal(err)
	}
}

// TestAcceptance applies the mixed 24 GB + 12 GB example: every pool Ready
// on its masked GPUs, a second apply does nothing, a change to one pool
// replaces that pool only.
func TestAcceptance(t *testing.T) {
	t.Parallel()
	w := newWorkspace(t)
	w.copyExample("mixed-24-12")
	devices := map[string][]int{"llama70b": {0, 1}, "coder": {0}}

	r := w.apply()
	mustExit(t, r, 0)
	contains(t, "apply output", r.stdout, "+ create   coder", "+ create   llama70b", "Apply done: 2 Ready, 0 failed or blocked")

	st := w.status()
	if len(st) != 2 {
		t.Fatalf("status: want 2 pools, got %v", st)
	}
	pids := map[string]int{}
	for pool, devs := range devices {
		s := st[pool]
		if s.Phase != "Ready" || !s.Ready || s.PID == 0 || s.Port == 0 || s.Endpoint != fmt.Sprintf("http://127.0.0.1:%d", s.Port) {
			t.Errorf("status of %s: want Ready with a pid, port and endpoint, got %s", pool, s)
		}
		if s.Port == 8080 {
			t.Errorf("status of %s: port 8080, the example's fixed port, which the test config removed", pool)
		}
		if !healthOK(s.Endpoint) {
			t.Errorf("%s: GET %s/health is not 200", pool, s.Endpoint)
		}
		var total uint64
		held := map[int]bool{}
		for _, g := range s.GPUs {
			held[g.Index] = true
			total += g.Bytes
			if !containsInt(devs, g.Index) {
				t.Errorf("%s holds %d bytes on GPU %d, outside its mask %v", pool, g.Bytes, g.Index, devs)
			}
		}
		for _, d := range devs {
			if !held[d] {
				t.Errorf("%s holds no memory on its masked GPU %d: %s", pool, d, s)
			}
		}
		// On a simulated node the stand-in holds the pool's VRAM need (POOL_MANAGERD_SIM_VRAM).
		wantVRAM := map[string]uint64{"coder": 4 << 30, "llama70b": 28 << 30}[pool]
		if total != wantVRAM {
			t.Errorf("%s holds %d bytes in all, want its declared vram, %d", pool, total, wantVRAM)
		}
		e := w.onlyEngine(pool)
		if e.PID != s.PID {
			t.Errorf("%s: status says pid %d, the process table %d", pool, s.PID, e.PID)
		}
		pids[pool] = e.PID
		if n := w.spawns(pool); n != 1 {
			t.Errorf("%s: %d spawns, want 1", pool, n)
		}
	}
	checkStateNames(t, w, pids)

	// Idempotent: nothing to do, no process started.
	r = w.apply()
	mustExit(t, r, 0)
	contains(t, "second apply", r.stdout, "Nothing to do")
	for pool, pid := range pids {
		if e := w.onlyEngine(pool); e.PID != pid {
			t.Errorf("%s: the second apply changed its engine: pid %d, was %d", pool, e.PID, pid)
		}
		if n := w.spawns(pool); n != 1 {
			t.Errorf("%s: the second apply spawned: %d spawns", pool, n)
		}
	}

	// A change to one pool replaces that pool only.
	coder := filepath.Join(w.config, "pools", "coder.cue")
	data, err := os.ReadFile(coder)
	if err != nil {
		t.Fatal(err)
	}
	pathLine := regexp.MustCompile(`model: path: ("[^"]+")`)
	if !pathLine.Match(data) {
		t.Fatalf("coder.cue has no model: path: line:\n%s", data)
	}
	w.writeFile("pools/coder.cue", pathLine.ReplaceAllString(string(data), "model: {path: $1, ctx: 8192}"))
	r = w.apply()
	mustExit(t, r, 0)
	contains(t, "apply of the changed config", r.stdout, "-/+ replace  coder", "model.ctx: 4096 → 8192", "Unchanged:", "llama70b: running, healthy", "Apply done: 1 Ready")
	if e := w.onlyEngine("llama70b"); e.PID != pids["llama70b"] {
		t.Errorf("llama70b was restarted by a change to coder: pid %d, was %d", e.PID, pids["llama70b"])
	}
	e := w.onlyEngine("coder")
	if e.PID == pids["coder"] {
		t.Errorf("coder was not replaced: pid %d", e.PID)
	}
	if alive(pids["coder"]) {
		t.Errorf("coder's old engine pid %d still runs", pids["coder"])
	}
	if n := w.spawns("llama70b"); n != 1 {
		t.Errorf("llama70b: %d spawns, want 1", n)
	}
	if n := w.spawns("coder"); n != 2 {
		t.Errorf("coder: %d spawns, want 2", n)
	}
	st = w.status()
	for pool := range devices {
		if !st[pool].Ready {
			t.Errorf("after the replace, %s is not Ready: %s", pool, st[pool])
		}
	}
	pids["coder"] = e.PID
	checkStateNames(t, w, pids)

	// A change of the restart policy only is an update in place.
	llama := filepath.Join(w.config, "pools", "llama70b.cue")
	data, err = os.ReadFile(llama)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(data), `stopGrace:      "30s"`) {
		t.Fatalf("llama70b.cue has no stopGrace of 30s:\n%s", data)
	}
	w.writeFile("pools/llama70b.cue", strings.Replace(string(data), `stopGrace:      "30s"`, `stopGrace:      "20s"`, 1))
	r = w.apply()
	mustExit(t, r, 0)
	contains(t, "apply of a restart policy change", r.stdout, "~ update   llama70b", "restart.stopGrace", "updated in place")
	for pool, pid := range pids {
		if e := w.onlyEngine(pool); e.PID != pid {
			t.Errorf("%s: an update in place changed its engine: pid %d, was %d", pool, e.PID, pid)
		}
	}
	if got := w.loadState().Engines["llama70b"].Spec.Restart.StopGrace; got != 20*time.Second {
		t.Errorf("the state records llama70b's stopGrace as %v after the update, want 20s", got)
	}
	contains(t, "the apply after the update", w.apply().stdout, "Nothing to do")

	// A pool removed from the config is deleted: its engine stops.
	if err := os.Remove(filepath.Join(w.config, "pools", "coder.cue")); err != nil {
		t.Fatal(err)
	}
	r = w.apply()
	mustExit(t, r, 0)
	contains(t, "apply of a removed pool", r.stdout, "- delete   coder", "pool is no longer in the config", "1 stopped")
	w.noEngine("coder")
	if alive(pids["coder"]) {
		t.Errorf("coder's engine pid %d still runs after its pool was deleted", pids["coder"])
	}
	if e := w.onlyEngine("llama70b"); e.PID != pids["llama70b"] {
		t.Errorf("llama70b changed when coder was deleted: pid %d, was %d", e.PID, pids["llama70b"])
	}
	st = w.status()
	if _, ok := st["coder"]; ok || !st["llama70b"].Ready {
		t.Errorf("status after the delete: %v", st)
	}
	if _, ok := w.loadState().Engines["coder"]; ok {
		t.Errorf("the state still records coder's engine after the delete")
	}
}

// checkStateNames checks that the state file is valid and records each
// pool's live engine.
func checkStateNames(t *testing.T, w *workspace, pids map[string]int) {
	t.Helper()
	st := w.loadState()
	for pool, pid := range pids {
		rec, ok := st.Engines[pool]
		if !ok {
			t.Errorf("the state file has no engine for %s", pool)
			continue
		}
		if rec.PID != pid || !proc.Alive(rec.PID, rec.StartTicks) {
			t.Errorf("the state file records %s as pid %d (ticks %d, alive %v), want live pid %d", pool, rec.PID, rec.StartTicks, proc.Alive(rec.PID, rec.StartTicks), pid)
		}
	}
}

func containsInt(list []int, x int) bool {
	for _, v := range list {
		if v == x {
			return true
		}
	}
	return false
}

// TestSavedPlan: plan --out, then apply FILE; a plan made before the config
// or the node changed is refused as stale and starts nothing.
func TestSavedPlan(t *testing.T) {
	t.Parallel()
	w := newWorkspace(t)
	a := pool{ID: "a", Devices: []int{0}}
	b := pool{ID: "b", Devices: []int{1}}
	w.writeConfig(a)

	plan := w.planOut("plan1.json")
	r := w.applyPlan(plan)
	mustExit(t, r, 0)
	contains(t, "apply of a saved plan", r.stdout, "Apply done: 1 Ready")
	pidA := w.onlyEngine("a").PID
	if s := w.status()["a"]; !s.Ready || s.PID != pidA {
		t.Fatalf("a after apply FILE: %s", s)
	}
	// The saved plan names the pool's env variables, never their values;
	// apply ran the engine with the config's values.
	saved, err := os.ReadFile(plan)
	if err != nil {
		t.Fatal(err)
	}
	contains(t, "the saved plan", string(saved), `"FAKE_ENGINE_LOAD_DELAY": "(hidden)"`)
	if strings.Contains(string(saved), `"FAKE_ENGINE_LOAD_DELAY": "100ms"`) {
		t.Errorf("the saved plan holds an env value:\n%s", saved)
	}
	environ, err := os.ReadFile(fmt.Sprintf("/proc/%d/environ", pidA))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains("\x00"+string(environ)+"\x00", "\x00FAKE_ENGINE_LOAD_DELAY=100ms\x00") {
		t.Errorf("a's engine was not given the config's FAKE_ENGINE_LOAD_DELAY=100ms")
	}

	t.Run("config changed", func(t *testing.T) {
		w.t = t
		w.writeConfig(a, b)
		plan := w.planOut("plan2.json")
		b2 := b
		b2.Ctx = 8192
		w.writeConfig(a, b2)
		r := w.applyPlan(plan)
		mustExit(t, r, 1)
		contains(t, "stderr", r.stderr, "the plan is stale", "the config changed", "make a new plan")
		if strings.Contains(r.stderr, "the node changed") {
			t.Errorf("only the config changed, the refusal says the node did too: %s", r.stderr)
		}
		w.noEngine("b")
		if n := w.spawns("b"); n != 0 {
			t.Errorf("b was spawned %d times by a stale plan", n)
		}
		if e := w.onlyEngine("a"); e.PID != pidA {
			t.Errorf("a changed: pid %d, was %d", e.PID, pidA)
		}
	})

	t.Run("engine started", func(t *testing.T) {
		w.t = t
		w.writeConfig(a, b)
		plan := w.planOut("plan3.json")
		// Someone applies the config first: b's engine starts.
		mustExit(t, w.apply(), 0)
		pidB := w.onlyEngine("b").PID
		r := w.applyPlan(plan)
		mustExit(t, r, 1)
		contains(t, "stderr", r.stderr, "the plan is stale", "the node changed (engines or GPUs)")
		if e := w.onlyEngine("b"); e.PID != pidB {
			t.Errorf("b changed under a stale plan: pid %d, was %d", e.PID, pidB)
		}
		if n := w.spawns("b"); n != 1 {
			t.Errorf("b: %d spawns, want 1 (a stale plan must not start it again)", n)
		}
		if e := w.onlyEngine("a"); e.PID != pidA {
			t.Errorf("a changed: pid %d, was %d", e.PID, pidA)
		}
	})

	t.Run("engine stopped", func(t *testing.T) {
		w.t = t
		b2 := b
		b2.Ctx = 8192
		w.writeConfig(a, b2)
		plan := w.planOut("plan4.json") // replaces b
		r := w.run(nil, "stop", "a", "--state-dir", w.state)
		mustExit(t, r, 0)
		r = w.applyPlan(plan)
		mustExit(t, r, 1)
		contains(t, "stderr", r.stderr, "the plan is stale", "the node changed (engines or GPUs)")
		if strings.Contains(r.stderr, "the config changed") {
			t.Errorf("only the node changed, the refusal says the config did too: %s", r.stderr)
		}
		w.noEngine("a")
		if n := w.spawns("b"); n != 1 {
			t.Errorf("b: %d spawns, want 1 (a stale plan must not replace it)", n)
		}
		if n := w.spawns("a"); n != 1 {
			t.Errorf("a: %d spawns, want 1 (a stale plan must not start it)", n)
		}
	})

	t.Run("fresh plan applies", func(t *testing.T) {
		w.t = t
		plan := w.planOut("plan5.json")
		var p struct {
			Changes []struct{ Action, Pool string }
		}
		data, _ := os.ReadFile(plan)
		if err := json.Unmarshal(data, &p); err != nil {
			t.Fatal(err)
		}
		if got := fmt.Sprint(p.Changes); got != "[{replace b} {create a}]" {
			t.Errorf("plan changes: %s, want b replaced and a created", got)
		}
		r := w.applyPlan(plan)
		mustExit(t, r, 0)
		contains(t, "apply of a fresh plan", r.stdout, "Apply done: 2 Ready")
		w.onlyEngine("a")
		w.onlyEngine("b")
	})
	w.t = t
}

// TestLock: while an apply runs, a second apply (and stop) fails at once
// with an error that names the holder's pid.
func TestLock(t *testing.T) {
	t.Parallel()
	w := newWorkspace(t)
	w.writeConfig(pool{ID: "a", Env: map[string]string{"FAKE_ENGINE_LOAD_DELAY": "2s"}})

	first := w.start(nil, w.applyArgs("")...)
	holder := first.cmd.Process.Pid
	waitFor(t, 10*time.Second, "the first apply to hold the lock and start the engine", func() bool {
		var h state.Holder
		data, _ := os.ReadFile(filepath.Join(w.state, state.LockFileName))
		return json.Unmarshal(data, &h) == nil && h.PID == holder && strings.Contains(first.stdout.String(), "is loading its model")
	})

	second := w.apply()
	if first.exited() {
		t.Fatalf("the first apply ended before the second did: the test proves nothing: %s", first.wait(t))
	}
	mustExit(t, second, 1)
	contains(t, "second apply's stderr", second.stderr,
		fmt.Sprintf("is locked by pid %d", holder), "hint: another apply, or the daemon, is changing this node")
	if second.dur > 1500*time.Millisecond {
		t.Errorf("the second apply took %v: it should fail at once, not wait for the lock", second.dur)
	}
	if strings.Contains(second.stdout, "Plan for node") {
		t.Errorf("the second apply planned although the node is locked:\n%s", second.stdout)
	}

	stop := w.run(nil, "stop", "--all", "--state-dir", w.state)
	mustExit(t, stop, 1)
	contains(t, "stop's stderr", stop.stderr, fmt.Sprintf("is locked by pid %d", holder))

	r := first.wait(t)
	mustExit(t, r, 0)
	contains(t, "first apply", r.stdout, "Apply done: 1 Ready")
	w.onlyEngine("a")
	if n := w.spawns("a"); n != 1 {
		t.Errorf("a: %d spawns, want 1", n)
	}
	// The lock is free again.
	mustExit(t, w.apply(), 0)
}

// TestApplyProgress: while apply waits for a pool to load, it says every
// progress interval (here POOL_MANAGERD_PROGRESS_INTERVAL=200ms) that the
// pool is still loading, how long since its engine started, and what the
// engine's health check answered; plain output (not a terminal) included.
func TestApplyProgress(t *testing.T) {
	t.Parallel()
	w := newWorkspace(t)
	w.writeConfig(pool{ID: "a", Env: map[string]string{"FAKE_ENGINE_LOAD_DELAY": "3s"}})

	line := regexp.MustCompile(`(?m)^\d\d:\d\d:\d\d\.\d{3}  a +Preloading +still loading \[[0-9.]+s elapsed\], engine pid \d+, health: loading$`)
	r := w.start([]string{"POOL_MANAGERD_PROGRESS_INTERVAL=200ms"}, w.applyArgs("")...)
	waitFor(t, 10*time.Second, "a progress line while a loads", func() bool {
		return line.MatchString(r.stdout.String()) || r.exited()
	})
	if r.exited() {
		t.Fatalf("apply ended before it said a was still loading: %s", r.wait(t))
	}
	res := r.wait(t)
	mustExit(t, res, 0)
	after := res.stdout[strings.Index(res.stdout, "Ready: engine pid"):]
	if strings.Contains(after, "still loading") {
		t.Errorf("progress said a was still loading after it was Ready:\n%s", res.stdout)
	}
}
