package main

import (
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/poolmanagerd/pool-managerd/drivers/engine/proc"
	"github.com/poolmanagerd/pool-managerd/drivers/gpu/sim"
)

// workersHolding waits until each of n workers in the engine's session
// holds memory on one simulated GPU, and returns them by GPU index. The
// session may hold more (vLLM's EngineCore between the API server and its
// workers), but only n processes besides the main one hold memory.
func workersHolding(t *testing.T, e *engine, dir string, n int, each uint64) map[int]int {
	t.Helper()
	children := e.sessionChildren()
	if len(children) < n {
		t.Fatalf("session of %d has %v besides it, want at least %d workers", e.pid, children, n)
	}
	want := map[int]map[int]uint64{}
	byGPU := map[int]int{}
	got := held(t, dir)
	for gpu, pids := range got {
		for pid := range pids {
			byGPU[gpu] = pid
		}
	}
	for gpu := 0; gpu < n; gpu++ {
		pid := byGPU[gpu]
		if _, ok := children[pid]; !ok {
			t.Fatalf("GPU %d held by %d, not in the engine's session (%v); held %v", gpu, pid, keys(children), got)
		}
		want[gpu] = map[int]uint64{pid: each}
	}
	waitHeld(t, dir, want, time.Second)
	return byGPU
}

// TestVLLM: `vllm serve` with two tensor-parallel workers.
func TestVLLM(t *testing.T) {
	t.Parallel()
	dir := newSim(t)
	port := freePort(t)
	m := model(t)
	e := start(t, "vllm", port, []string{"serve", m, "--host", "127.0.0.1", "--port", strconv.Itoa(port),
		"--tensor-parallel-size", "2", "--max-model-len", "8192"},
		simEnv(dir, "0,1", "FAKE_ENGINE_LOAD_DELAY=300ms", "FAKE_ENGINE_VRAM=4Gi")...)

	// Connection refused until loaded, then 200 with an empty body.
	r, refused := e.firstAnswer("/health", 5*time.Second)
	if refused == 0 || r.code != 200 || r.body != "" {
		t.Errorf("first answer %d %q after %d refusals; want 200, empty body, after refusals", r.code, r.body, refused)
	}
	if loaded := time.Since(e.started); loaded < 300*time.Millisecond {
		t.Errorf("answered %v after start, before the load delay", loaded)
	}
	workers := workersHolding(t, e, dir, 2, 2<<30)
	if r := e.mustGet("/v1/models"); r.code != 200 || !strings.Contains(r.body, `"max_model_len":8192`) {
		t.Errorf("/v1/models: %d %s", r.code, r.body)
	}
	// API server → VLLM::EngineCore → VLLM::Worker_TP0, VLLM::Worker_TP1,
	// all in one session; the EngineCore holds nothing with -tp 2.
	wantTree(t, e, map[string]string{"VLLM::EngineCore": "", "VLLM::Worker_TP0": "VLLM::EngineCore", "VLLM::Worker_TP1": "VLLM::EngineCore"})

	// A supervisor signals the whole process group: the workers wait for
	// the main process to stop them, so that it exits 0.
	if err := syscall.Kill(-e.pid, syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	wantExit(t, e.wait(5*time.Second), 0, e.log())
	waitHeld(t, dir, map[int]map[int]uint64{}, time.Second)
	for _, pid := range workers {
		if alive(pid) {
			t.Errorf("worker %d still runs after the engine stopped", pid)
		}
	}
	e.wantLog("Starting vLLM API server 0 on http://127.0.0.1:"+strconv.Itoa(port), "Model loading took 2.0000 GiB")
}

// wantTree checks the engine's session: each process titled as a key, whose
// parent is titled as its value ("" for the main process).
func wantTree(t *testing.T, e *engine, want map[string]string) {
	t.Helper()
	members, err := sessionOf(e.pid)
	if err != nil {
		t.Fatal(err)
	}
	titles := map[int]string{e.pid: ""}
	for _, pid := range members {
		argv, err := proc.Cmdline(pid)
		if err == nil && len(argv) > 0 {
			titles[pid] = argv[0]
		}
	}
	titles[e.pid] = ""
	got := map[string]string{}
	for pid, ppid := range parentsOf(members, e.pid) {
		got[titles[pid]] = titles[ppid]
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("process tree of engine %d (title: parent's title; -want +got):\n%s", e.pid, diff)
	}
}

func alive(pid int) bool {
	err := syscall.Kill(pid, 0)
	if err != nil {
		return false
	}
	st, _ := readState(pid)
	return st != 'Z'
}

// TestVLLMMode: FAKE_ENGINE_AS=vllm with the program's own name, one GPU.
func TestVLLMMode(t *testing.T) {
	t.Parallel()
	dir := newSim(t)
	port := freePort(t)
	e := start(t, "fake-engine", port, []string{"serve", model(t), "--host=127.0.0.1", "--port=" + strconv.Itoa(port)},
		simEnv(dir, "1", "FAKE_ENGINE_AS=vllm", "FAKE_ENGINE_LOAD_DELAY=100ms", "FAKE_ENGINE_VRAM=1Gi")...)
	r, _ := e.firstAnswer("/health", 5*time.Second)
	if r.code != 200 {
		t.Errorf("/health: %d", r.code)
	}
	children := e.sessionChildren()
	if len(children) != 1 {
		t.Fatalf("workers %v, want 1", children)
	}
	waitHeld(t, dir, map[int]map[int]uint64{1: {keys(children)[0]: 1 << 30}}, time.Second)
}

func TestVLLMRefuses(t *testing.T) {
	t.Parallel()
	_, stderr, st := runShort(t, "vllm", []string{"serve", "/m", "--port", "1", "--bogus"})
	if st.ExitCode() != 2 || stderr != "usage: vllm serve [model_tag] [options]\nvllm serve: error: unrecognized arguments: --bogus\n" {
		t.Errorf("unknown option: status %d, stderr %q", st.ExitCode(), stderr)
	}
	// vLLM parses CUDA_VISIBLE_DEVICES with int(): a UUID is fatal.
	dir := newSim(t)
	stdout, _, st := runShort(t, "vllm", []string{"serve", "/m", "--port", "1"}, simEnv(dir, sim.DefaultGPUs()[0].UUID, "FAKE_ENGINE_SKIP_MODEL_CHECK=1")...)
	if st.ExitCode() != 1 || !strings.Contains(stdout, "ValueError: invalid literal for int() with base 10: 'GPU-") {
		t.Errorf("UUID mask: status %d, stdout:\n%s", st.ExitCode(), stdout)
	}
	// Two workers on one GPU.
	stdout, _, st = runShort(t, "vllm", []string{"serve", "/m", "-tp", "2"}, simEnv(dir, "0", "FAKE_ENGINE_SKIP_MODEL_CHECK=1")...)
	if st.ExitCode() != 1 || !strings.Contains(stdout, "exceeds the total number of available GPUs") {
		t.Errorf("-tp 2 on one GPU: status %d, stdout:\n%s", st.ExitCode(), stdout)
	}
}

// TestVLLMFaults: load failures, a dying worker, orphaned workers.
func TestVLLMFaults(t *testing.T) {
	t.Parallel()
	run := func(t *testing.T, dir string, env ...string) *engine {
		t.Parallel()
		port := freePort(t)
		return start(t, "vllm", port, []string{"serve", model(t), "--host", "127.0.0.1", "--port", strconv.Itoa(port), "-tp", "2"},
			simEnv(dir, "0,1", append([]string{"FAKE_ENGINE_LOAD_DELAY=100ms", "FAKE_ENGINE_VRAM=2Gi"}, env...)...)...)
	}
	t.Run("fail load", func(t *testing.T) {
		dir := newSim(t)
		e := run(t, dir, "FAKE_ENGINE_FAIL_LOAD=1")
		wantExit(t, e.wait(5*time.Second), 1, e.log())
		e.wantLog("Engine core initialization failed")
	})
	t.Run("not enough free memory", func(t *testing.T) {
		dir := newSim(t)
		if err := sim.Foreign(dir, 1, 4242, 11<<30+512<<20); err != nil {
			t.Fatal(err)
		}
		e := run(t, dir)
		wantExit(t, e.wait(5*time.Second), 1, e.log())
		e.wantLog("ValueError: Free memory on device")
	})
	t.Run("a worker dies", func(t *testing.T) {
		dir := newSim(t)
		e := run(t, dir)
		e.firstAnswer("/health", 5*time.Second)
		workers := workersHolding(t, e, dir, 2, 1<<30)
		syscall.Kill(workers[1], syscall.SIGKILL)
		wantExit(t, e.wait(5*time.Second), 1, e.log())
		e.wantLog("died unexpectedly")
	})
	t.Run("CUDA error", func(t *testing.T) {
		dir := newSim(t)
		e := run(t, dir, "FAKE_ENGINE_CUDA_ERROR_AFTER=100ms")
		wantExit(t, e.wait(5*time.Second), 1, e.log())
		e.wantLog("RuntimeError: CUDA error: out of memory")
		waitHeld(t, dir, map[int]map[int]uint64{}, time.Second)
	})
	t.Run("exit signal", func(t *testing.T) {
		dir := newSim(t)
		e := run(t, dir, "FAKE_ENGINE_EXIT_AFTER=100ms", "FAKE_ENGINE_EXIT_SIGNAL=SIGKILL", "FAKE_ENGINE_ORPHAN_WORKERS=0")
		wantSignal(t, e.wait(5*time.Second), syscall.SIGKILL, e.log())
		// Told to follow their API server, the EngineCore and workers exit.
		waitHeld(t, dir, map[int]map[int]uint64{}, 3*time.Second)
	})
	t.Run("a killed API server leaves its EngineCore and workers holding the GPUs", func(t *testing.T) {
		dir := newSim(t)
		e := run(t, dir) // vLLM's own behaviour: no FAKE_ENGINE_ORPHAN_WORKERS needed
		e.firstAnswer("/health", 5*time.Second)
		workers := workersHolding(t, e, dir, 2, 1<<30)
		before := e.sessionChildren()
		e.signal(syscall.SIGKILL)
		e.wait(5 * time.Second)
		// Still holding, and still in the engine's session for a supervisor that looks there.
		waitHeld(t, dir, map[int]map[int]uint64{0: {workers[0]: 1 << 30}, 1: {workers[1]: 1 << 30}}, time.Second)
		members, _ := sessionOf(e.pid)
		if len(members) != len(before) {
			t.Errorf("session %d: %v, want the EngineCore and 2 workers %v", e.pid, members, keys(before))
		}
		// SIGTERM to the session (what a supervisor's cleanup sends) ends them.
		for _, pid := range members {
			syscall.Kill(pid, syscall.SIGTERM)
		}
		waitHeld(t, dir, map[int]map[int]uint64{}, 5*time.Second)
	})
}

// TestTGI: text-generation-launcher with two shards, masked by UUID.
func TestTGI(t *testing.T) {
	t.Parallel()
	dir := newSim(t)
	gpus := sim.DefaultGPUs()
	port := freePort(t)
	e := start(t, "text-generation-launcher", port, []string{"--model-id", model(t), "--hostname", "127.0.0.1", "--port", strconv.Itoa(port),
		"--num-shard", "2", "--max-input-tokens", "2048", "--max-total-tokens", "4096"},
		simEnv(dir, gpus[0].UUID+","+gpus[1].UUID, "FAKE_ENGINE_LOAD_DELAY=300ms", "FAKE_ENGINE_VRAM=2Gi")...)
	r, refused := e.firstAnswer("/health", 5*time.Second)
	if refused == 0 || r.code != 200 || r.body != "" {
		t.Errorf("first answer %d %q after %d refusals; want 200, empty body, after refusals", r.code, r.body, refused)
	}
	workersHolding(t, e, dir, 2, 1<<30)
	if r := e.mustGet("/info"); !strings.Contains(r.body, `"max_total_tokens":4096`) {
		t.Errorf("/info: %s", r.body)
	}
	// The launcher, each shard and the router (which owns the port) each in
	// a process group of its own, all in the launcher's session.
	wantTree(t, e, map[string]string{"text-generation-server": "", "text-generation-router": ""})
	members, err := sessionOf(e.pid)
	if err != nil {
		t.Fatal(err)
	}
	groups := map[int]bool{}
	for _, pid := range members {
		info, err := proc.Stat(pid)
		if err != nil {
			t.Fatal(err)
		}
		if info.PGID != pid {
			t.Errorf("pid %d is in process group %d, want a group of its own", pid, info.PGID)
		}
		groups[info.PGID] = true
	}
	if len(members) != 4 || len(groups) != 4 {
		t.Errorf("session %d: %v in %d process groups; want the launcher, 2 shards and the router, each its own group", e.pid, members, len(groups))
	}
	// SIGTERM to the launcher's group reaches only the launcher: it stops
	// the router, then the shards.
	if err := syscall.Kill(-e.pid, syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	wantExit(t, e.wait(5*time.Second), 0, e.log())
	waitHeld(t, dir, map[int]map[int]uint64{}, time.Second)
	e.wantLog("Shard ready in", "Connected", "Shutting down shards")
}

// TestTGIUnhealthy: options from the environment; health 503 with TGI's body.
func TestTGIUnhealthy(t *testing.T) {
	t.Parallel()
	port := freePort(t)
	e := start(t, "fake-engine", port, nil, "FAKE_ENGINE_AS=tgi", "MODEL_ID="+model(t), "HOSTNAME=127.0.0.1", "PORT="+strconv.Itoa(port),
		"FAKE_ENGINE_LOAD_DELAY=100ms", "FAKE_ENGINE_UNHEALTHY_AFTER=0")
	r, _ := e.firstAnswer("/health", 5*time.Second)
	if r.code != 503 {
		t.Errorf("/health: %d, want 503", r.code)
	}
	sameJSON(t, "/health", r.body, `{"error":"unhealthy","error_type":"healthcheck"}`)
}

func TestTGIRefuses(t *testing.T) {
	t.Parallel()
	_, stderr, st := runShort(t, "text-generation-launcher", []string{"--model-id", "/m", "--bogus"})
	want := "error: unexpected argument '--bogus' found\n\nUsage: text-generation-launcher [OPTIONS]\n\nFor more information, try '--help'.\n"
	if st.ExitCode() != 2 || stderr != want {
		t.Errorf("unknown option: status %d, stderr %q", st.ExitCode(), stderr)
	}
	_, stderr, st = runShort(t, "text-generation-launcher", []string{"--max-input-tokens", "4096", "--max-total-tokens", "4096"})
	if st.ExitCode() != 1 || !strings.Contains(stderr, "ArgumentValidation") {
		t.Errorf("max-input-tokens >= max-total-tokens: status %d, stderr %q", st.ExitCode(), stderr)
	}
}

// TestVLLMVersions: what depends on the vLLM version the stand-in imitates
// (FAKE_ENGINE_VLLM_VERSION): --shutdown-timeout from v0.18, full GPU UUIDs in
// CUDA_VISIBLE_DEVICES from v0.24; --help lists what the version knows.
func TestVLLMVersions(t *testing.T) {
	t.Parallel()
	gpus := sim.DefaultGPUs()
	dir := newSim(t)
	args := []string{"serve", "/m", "--port", "1", "--shutdown-timeout", "8"}
	_, stderr, st := runShort(t, "vllm", args, simEnv(dir, "0", "FAKE_ENGINE_SKIP_MODEL_CHECK=1", "FAKE_ENGINE_VLLM_VERSION=0.17.1")...)
	if st.ExitCode() != 2 || !strings.Contains(stderr, "unrecognized arguments: --shutdown-timeout 8") {
		t.Errorf("v0.17 with --shutdown-timeout: status %d, stderr %q", st.ExitCode(), stderr)
	}
	for _, tc := range []struct {
		version string
		listed  bool
	}{{"0.17.1", false}, {"0.18.0", true}, {"0.24.2", true}} {
		stdout, _, st := runShort(t, "vllm", []string{"serve", "--help=all"}, "FAKE_ENGINE_VLLM_VERSION="+tc.version)
		if st.ExitCode() != 0 || strings.Contains(stdout, "\n  --shutdown-timeout\n") != tc.listed || !strings.Contains(stdout, "imitating vLLM "+tc.version) {
			t.Errorf("v%s serve --help=all: status %d, lists --shutdown-timeout: %v, want %v", tc.version, st.ExitCode(), strings.Contains(stdout, "\n  --shutdown-timeout\n"), tc.listed)
		}
	}
	// v0.24 takes full UUIDs (and --shutdown-timeout); a short one still fails.
	port := freePort(t)
	e := start(t, "vllm", port, []string{"serve", model(t), "--host", "127.0.0.1", "--port", strconv.Itoa(port), "-tp", "2", "--shutdown-timeout", "8"},
		simEnv(dir, gpus[1].UUID+","+gpus[0].UUID, "FAKE_ENGINE_VLLM_VERSION=0.24.0", "FAKE_ENGINE_VRAM=2Gi")...)
	if r, _ := e.firstAnswer("/health", 5*time.Second); r.code != 200 {
		t.Errorf("v0.24 with full UUIDs: /health %d", r.code)
	}
	workersHolding(t, e, dir, 2, 1<<30)
	if r := e.mustGet("/version"); !strings.Contains(r.body, `"0.24.0"`) {
		t.Errorf("/version: %s", r.body)
	}
	stdout, _, st := runShort(t, "vllm", []string{"serve", "/m", "--port", "1"}, simEnv(dir, gpus[0].UUID[:12], "FAKE_ENGINE_SKIP_MODEL_CHECK=1", "FAKE_ENGINE_VLLM_VERSION=0.24.0")...)
	if st.ExitCode() != 1 || !strings.Contains(stdout, "ValueError: invalid literal for int() with base 10: '"+gpus[0].UUID[:12]+"'") {
		t.Errorf("v0.24 with a short UUID: status %d, stdout:\n%s", st.ExitCode(), stdout)
	}
}
