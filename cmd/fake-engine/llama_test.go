package main

import (
	"encoding/json"
	"fmt"
	"net"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/poolmanagerd/pool-managerd/drivers/gpu/sim"
	"github.com/poolmanagerd/pool-managerd/testkit/fakeengine"
)

const loadingBody = `{"error":{"code":503,"message":"Loading model","type":"unavailable_error"}}`

// presetArgs is the command line pool-managerd's llama.cpp preset writes.
func presetArgs(model string, port int) []string {
	return []string{"--model", model, "--host", "127.0.0.1", "--port", strconv.Itoa(port),
		"--ctx-size", "8192", "--n-gpu-layers", "999", "--fit", "off", "--split-mode", "layer",
		"--tensor-split", "0.67,0.33", "--parallel", "4", "--metrics"}
}

func simEnv(dir string, cvd string, more ...string) []string {
	env := []string{"POOL_MANAGERD_SIM_DIR=" + dir, "CUDA_DEVICE_ORDER=PCI_BUS_ID"}
	if cvd != "" {
		env = append(env, "CUDA_VISIBLE_DEVICES="+cvd)
	}
	return append(env, more...)
}

func sameJSON(t *testing.T, what, got, want string) {
	t.Helper()
	var g, w any
	if err := json.Unmarshal([]byte(got), &g); err != nil {
		t.Errorf("%s: %q is not JSON: %v", what, got, err)
		return
	}
	json.Unmarshal([]byte(want), &w)
	if fmt.Sprint(g) != fmt.Sprint(w) {
		t.Errorf("%s: %s, want %s", what, got, want)
	}
}

// TestLlamaServer runs the exact command line of pool-managerd's preset on
// a simulated node, masked by GPU UUIDs.
func TestLlamaServer(t *testing.T) {
	t.Parallel()
	dir := newSim(t)
	gpus := sim.DefaultGPUs()
	port := freePort(t)
	m := model(t)
	e := start(t, "fake-engine", port, presetArgs(m, port),
		simEnv(dir, gpus[0].UUID+","+gpus[1].UUID, "FAKE_ENGINE_VRAM=3Gi", "FAKE_ENGINE_LOAD_DELAY=500ms")...)

	// The listener opens before the model loads: 503 Loading model.
	r, _ := e.firstAnswer("/health", 5*time.Second)
	if r.code != 503 || r.header.Get("Server") != "llama.cpp" {
		t.Errorf("first answer: %d, Server %q; want 503 from llama.cpp", r.code, r.header.Get("Server"))
	}
	sameJSON(t, "loading body", r.body, loadingBody)
	if r := e.mustGet("/props"); r.code == 503 {
		sameJSON(t, "/props while loading", r.body, loadingBody)
	}

	r = e.waitStatus("/health", 200, 10*time.Second)
	sameJSON(t, "/health", r.body, `{"status":"ok"}`)
	if r.header.Get("Server") != "llama.cpp" {
		t.Errorf("Server header %q", r.header.Get("Server"))
	}
	if r := e.mustGet("/v1/health"); r.code != 200 {
		t.Errorf("/v1/health: %d", r.code)
	}
	if r := e.mustGet("/nowhere"); r.code != 404 || r.header.Get("Server") != "llama.cpp" {
		t.Errorf("/nowhere: %d, Server %q", r.code, r.header.Get("Server"))
	}

	var props struct {
		TotalSlots int    `json:"total_slots"`
		ModelPath  string `json:"model_path"`
		BuildInfo  string `json:"build_info"`
		Defaults   struct {
			NCtx int `json:"n_ctx"`
		} `json:"default_generation_settings"`
	}
	if err := json.Unmarshal([]byte(e.mustGet("/props").body), &props); err != nil {
		t.Fatal(err)
	}
	if props.TotalSlots != 4 || props.ModelPath != m || props.Defaults.NCtx != 8192 || props.BuildInfo == "" {
		t.Errorf("/props: %+v", props)
	}

	var slots []struct {
		ID           int  `json:"id"`
		IsProcessing bool `json:"is_processing"`
	}
	if err := json.Unmarshal([]byte(e.mustGet("/slots").body), &slots); err != nil {
		t.Fatal(err)
	}
	if len(slots) != 4 || slots[3].ID != 3 || slots[0].IsProcessing {
		t.Errorf("/slots: %+v", slots)
	}
	if r := e.mustGet("/slots?fail_on_no_slot=1"); r.code != 200 {
		t.Errorf("/slots?fail_on_no_slot=1 with idle slots: %d", r.code)
	}

	r = e.mustGet("/metrics")
	if r.code != 200 || !strings.HasPrefix(r.header.Get("Content-Type"), "text/plain") {
		t.Errorf("/metrics: %d %s", r.code, r.header.Get("Content-Type"))
	}
	for _, name := range []string{"llamacpp:requests_processing 0", "llamacpp:prompt_tokens_total", "llamacpp:tokens_predicted_total", "llamacpp:requests_deferred 0"} {
		if !strings.Contains(r.body, "\n"+name) {
			t.Errorf("/metrics lacks %s:\n%s", name, r.body)
		}
	}

	// The memory is held by the engine's pid, split 0.67:0.33.
	parts := fakeengine.SplitBytes(3<<30, []float64{float64(float32(0.67)), float64(float32(0.33))})
	waitHeld(t, dir, map[int]map[int]uint64{0: {e.pid: parts[0]}, 1: {e.pid: parts[1]}}, time.Second)

	e.wantLog(
		"main: HTTP server is listening, hostname: 127.0.0.1, port: "+strconv.Itoa(port),
		"load_model: loading model '"+m+"'",
		"main: model loaded",
		fmt.Sprintf("main: server is listening on http://127.0.0.1:%d - starting the main loop", port))

	e.signal(syscall.SIGTERM)
	wantExit(t, e.wait(5*time.Second), 0, e.log())
	waitHeld(t, dir, map[int]map[int]uint64{}, time.Second)
	e.wantLog("cleaning up before exit")
}

// TestLlamaCPUOnly: no CUDA_VISIBLE_DEVICES, no --metrics, --no-slots.
func TestLlamaCPUOnly(t *testing.T) {
	t.Parallel()
	dir := newSim(t)
	port := freePort(t)
	e := start(t, "llama-server", port, []string{"-m", model(t), "--port", strconv.Itoa(port), "--no-slots"},
		simEnv(dir, "", "FAKE_ENGINE_LOAD_DELAY=100ms")...)
	e.waitReady()
	if r := e.mustGet("/metrics"); r.code != 501 {
		t.Errorf("/metrics without --metrics: %d %s", r.code, r.body)
	}
	if r := e.mustGet("/slots"); r.code != 501 {
		t.Errorf("/slots with --no-slots: %d %s", r.code, r.body)
	}
	if got := held(t, dir); len(got) != 0 {
		t.Errorf("CPU-only engine holds %v", got)
	}
	e.wantLog("no usable GPU found", "offloaded 0/33 layers to GPU")
}

// TestLlamaArgvAccepted starts real llama-server command lines: each parses
// and gets as far as loading its (missing) model.
func TestLlamaArgvAccepted(t *testing.T) {
	t.Parallel()
	lines := []string{
		"--model /missing.gguf --host 127.0.0.1 --ctx-size 8192 --n-gpu-layers 999 --fit off --split-mode layer --tensor-split 0.67,0.33 --parallel 4 --metrics",
		"-m /missing.gguf -c 4096 -ngl 99 -fa on --jinja --no-webui -np 2 -cb --api-key secret",
		"--model /missing.gguf --ctx_size 2048 --n_gpu_layers all -ts 3/1 -sm row -mg 0 -ctk q8_0 --mlock --no-mmap",
		"-m /missing.gguf -fit on -fitt 512 -b 2048 -ub 512 -t 8 --temp 0.7 -s 42 --alias m --props --slots",
	}
	for i, line := range lines {
		t.Run(strconv.Itoa(i), func(t *testing.T) {
			t.Parallel()
			port := freePort(t)
			e := start(t, "fake-engine", port, append(strings.Fields(line), "--port", strconv.Itoa(port)), "FAKE_ENGINE_LOAD_DELAY=0")
			st := e.wait(5 * time.Second)
			wantExit(t, st, 1, e.log())
			e.wantLog("srv    load_model: loading model '/missing.gguf'", "exiting due to model loading error")
			if strings.Contains(e.log(), "error: invalid argument") || strings.Contains(e.log(), "error while handling argument") {
				t.Errorf("refused:\n%s", e.log())
			}
		})
	}
}

// TestLlamaArgvRefused: llama-server's messages and status 1.
func TestLlamaArgvRefused(t *testing.T) {
	t.Parallel()
	tests := []struct {
		args []string
		want string // stderr's first line
	}{
		{[]string{"--bogus"}, "error: invalid argument: --bogus"},
		{[]string{"-m", "/m.gguf", "--metrics", "true"}, "error: invalid argument: true"},
		{[]string{"--ctx-size=8192"}, "error: invalid argument: --ctx-size=8192"},
		{[]string{"--port", "abc"}, `error while handling argument "--port": stoi`},
		{[]string{"--port"}, `error while handling argument "--port": expected value for argument`},
		{[]string{"--fit", "maybe"}, `error while handling argument "--fit": invalid value`},
	}
	for _, tt := range tests {
		_, stderr, st := runShort(t, "fake-engine", tt.args)
		first, _, _ := strings.Cut(stderr, "\n")
		if first != tt.want || st.ExitCode() != 1 {
			t.Errorf("%q: status %d, stderr:\n%s\nwant status 1 and %q", tt.args, st.ExitCode(), stderr, tt.want)
		}
	}
	if _, stderr, _ := runShort(t, "fake-engine", []string{"--bogus"}); stderr != "error: invalid argument: --bogus\n" {
		t.Errorf("unknown option: stderr %q", stderr)
	}
}

func TestLlamaHelpAndVersion(t *testing.T) {
	t.Parallel()
	stdout, _, st := runShort(t, "fake-engine", []string{"--help"})
	if st.ExitCode() != 0 || !strings.Contains(stdout, "-ngl, --gpu-layers, --n-gpu-layers VALUE") || !strings.Contains(stdout, "FAKE_ENGINE_LOAD_DELAY") {
		t.Errorf("--help: status %d, stdout:\n%s", st.ExitCode(), stdout)
	}
	_, stderr, st := runShort(t, "fake-engine", []string{"--version"})
	if st.ExitCode() != 0 || !strings.HasPrefix(stderr, "version: ") {
		t.Errorf("--version: status %d, stderr %q", st.ExitCode(), stderr)
	}
	dir := newSim(t)
	stdout, _, st = runShort(t, "fake-engine", []string{"--list-devices"}, simEnv(dir, "1,0")...)
	if st.ExitCode() != 0 || !strings.Contains(stdout, "CUDA0: NVIDIA GeForce RTX 3060 (12288 MiB, 12288 MiB free)") {
		t.Errorf("--list-devices: status %d, stdout:\n%s", st.ExitCode(), stdout)
	}
	_, stderr, st = runShort(t, "fake-engine", []string{"-m", "x"}, "FAKE_ENGINE_LOAD_DELAY=soon")
	if st.ExitCode() != 1 || !strings.Contains(stderr, "FAKE_ENGINE_LOAD_DELAY") {
		t.Errorf("bad environment: status %d, stderr %q", st.ExitCode(), stderr)
	}
}

// TestLlamaMissingModel: the listener answers 503 first, then the engine
// exits 1.
func TestLlamaMissingModel(t *testing.T) {
	t.Parallel()
	port := freePort(t)
	e := start(t, "fake-engine", port, []string{"-m", "/no/such/model.gguf", "--port", strconv.Itoa(port)}, "FAKE_ENGINE_LOAD_DELAY=500ms")
	r, _ := e.firstAnswer("/health", 5*time.Second)
	if r.code != 503 {
		t.Errorf("first answer %d %s, want 503", r.code, r.body)
	}
	wantExit(t, e.wait(5*time.Second), 1, e.log())
	e.wantLog("failed to load model", "main: exiting due to model loading error")
}

func TestLlamaPortInUse(t *testing.T) {
	t.Parallel()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	port := ln.Addr().(*net.TCPAddr).Port
	e := start(t, "fake-engine", port, []string{"-m", model(t), "--port", strconv.Itoa(port)})
	wantExit(t, e.wait(5*time.Second), 1, e.log())
	e.wantLog(fmt.Sprintf("couldn't bind HTTP server socket, hostname: 127.0.0.1, port: %d", port))
}

func TestLlamaSignals(t *testing.T) {
	t.Parallel()
	t.Run("second signal exits 1 at once", func(t *testing.T) {
		t.Parallel()
		port := freePort(t)
		e := start(t, "fake-engine", port, []string{"-m", model(t), "--port", strconv.Itoa(port)},
			"FAKE_ENGINE_LOAD_DELAY=50ms", "FAKE_ENGINE_SHUTDOWN_DELAY=5s")
		e.waitReady()
		e.signal(syscall.SIGTERM)
		time.Sleep(100 * time.Millisecond)
		e.signal(syscall.SIGINT)
		wantExit(t, e.wait(2*time.Second), 1, e.log())
		e.wantLog("Received second interrupt, terminating immediately.")
	})
	t.Run("a signal while loading kills", func(t *testing.T) {
		t.Parallel()
		port := freePort(t)
		e := start(t, "fake-engine", port, []string{"-m", model(t), "--port", strconv.Itoa(port)}, "FAKE_ENGINE_LOAD_DELAY=5s")
		e.firstAnswer("/health", 5*time.Second)
		e.signal(syscall.SIGTERM)
		wantSignal(t, e.wait(2*time.Second), syscall.SIGTERM, e.log())
	})
	t.Run("SIGTERM ignored", func(t *testing.T) {
		t.Parallel()
		dir := newSim(t)
		port := freePort(t)
		e := start(t, "fake-engine", port, []string{"-m", model(t), "--port", strconv.Itoa(port)},
			simEnv(dir, "0", "FAKE_ENGINE_LOAD_DELAY=50ms", "FAKE_ENGINE_IGNORE_SIGTERM=1")...)
		e.waitReady()
		e.signal(syscall.SIGTERM)
		time.Sleep(200 * time.Millisecond)
		if e.exited() {
			t.Fatalf("exited on SIGTERM; log:\n%s", e.log())
		}
		e.waitReady()
		e.signal(syscall.SIGKILL)
		wantSignal(t, e.wait(2*time.Second), syscall.SIGKILL, e.log())
		// The simulator ignores the claims of a dead process.
		waitHeld(t, dir, map[int]map[int]uint64{}, time.Second)
	})
}

// TestLlamaFaults acts out each fault.
func TestLlamaFaults(t *testing.T) {
	t.Parallel()
	gpus := sim.DefaultGPUs()
	// run starts a llama-server on a fresh simulated node, masked to GPU 0.
	run := func(t *testing.T, env ...string) (*engine, string) {
		t.Parallel()
		dir := newSim(t)
		port := freePort(t)
		e := start(t, "fake-engine", port, []string{"-m", model(t), "--port", strconv.Itoa(port), "--metrics"},
			simEnv(dir, gpus[0].UUID, append([]string{"FAKE_ENGINE_LOAD_DELAY=100ms", "FAKE_ENGINE_VRAM=1Gi"}, env...)...)...)
		return e, dir
	}
	t.Run("fail load", func(t *testing.T) {
		e, dir := run(t, "FAKE_ENGINE_FAIL_LOAD=1")
		wantExit(t, e.wait(5*time.Second), 1, e.log())
		e.wantLog("exiting due to model loading error")
		if got := held(t, dir); len(got) != 0 {
			t.Errorf("holds %v after a failed load", got)
		}
	})
	t.Run("exit code", func(t *testing.T) {
		e, dir := run(t, "FAKE_ENGINE_EXIT_AFTER=500ms", "FAKE_ENGINE_EXIT_CODE=3")
		e.waitReady()
		waitHeld(t, dir, map[int]map[int]uint64{0: {e.pid: 1 << 30}}, time.Second)
		wantExit(t, e.wait(5*time.Second), 3, e.log())
	})
	t.Run("exit signal", func(t *testing.T) {
		e, _ := run(t, "FAKE_ENGINE_EXIT_AFTER=100ms", "FAKE_ENGINE_EXIT_SIGNAL=SIGSEGV")
		wantSignal(t, e.wait(5*time.Second), syscall.SIGSEGV, e.log())
	})
	t.Run("CUDA error", func(t *testing.T) {
		e, _ := run(t, "FAKE_ENGINE_CUDA_ERROR_AFTER=100ms")
		wantSignal(t, e.wait(5*time.Second), syscall.SIGABRT, e.log())
		e.wantLog("main: model loaded\n", "CUDA error: out of memory\n  current device: 0, in function ggml_")
	})
	t.Run("memory outside the mask", func(t *testing.T) {
		e, dir := run(t, "FAKE_ENGINE_HOLD_OUTSIDE_MASK=1", "FAKE_ENGINE_OUTSIDE_VRAM=256Mi")
		e.waitReady()
		waitHeld(t, dir, map[int]map[int]uint64{0: {e.pid: 1 << 30}, 1: {e.pid: 256 << 20}}, time.Second)
	})
	t.Run("no GPU memory", func(t *testing.T) {
		e, dir := run(t, "FAKE_ENGINE_NO_GPU=1")
		e.waitReady()
		if got := held(t, dir); len(got) != 0 {
			t.Errorf("holds %v", got)
		}
		e.wantLog("offloaded 0/33 layers to GPU")
	})
	t.Run("flapping health", func(t *testing.T) {
		e, _ := run(t, "FAKE_ENGINE_FLAP_HEALTH=150ms")
		e.waitReady()
		e.waitStatus("/health", 503, 2*time.Second)
		e.waitStatus("/health", 200, 2*time.Second)
	})
	t.Run("unhealthy", func(t *testing.T) {
		e, _ := run(t, "FAKE_ENGINE_UNHEALTHY_AFTER=0")
		e.waitStatus("/props", 200, 5*time.Second)
		if r := e.mustGet("/health"); r.code != 503 {
			t.Errorf("/health: %d, want 503", r.code)
		}
	})
	t.Run("busy slots", func(t *testing.T) {
		e, _ := run(t, "FAKE_ENGINE_BUSY_SLOTS=4", "FAKE_ENGINE_BUSY_FOR=1s")
		e.waitReady()
		if r := e.mustGet("/slots?fail_on_no_slot=1"); r.code != 503 {
			t.Errorf("all slots busy: /slots?fail_on_no_slot=1 answered %d", r.code)
		}
		if !strings.Contains(e.mustGet("/slots").body, `"is_processing":true`) {
			t.Error("no slot is processing")
		}
		if r := e.mustGet("/metrics"); !strings.Contains(r.body, "\nllamacpp:requests_processing 4\n") {
			t.Errorf("/metrics:\n%s", r.body)
		}
		e.waitStatus("/slots?fail_on_no_slot=1", 200, 2*time.Second)
	})
}

// TestLlamaOutOfMemory: 4 GiB on a 3 GiB GPU.
func TestLlamaOutOfMemory(t *testing.T) {
	t.Parallel()
	small := []sim.GPUSpec{{Name: "NVIDIA T4", MemoryBytes: 3 << 30}}
	t.Run("fit off fails", func(t *testing.T) {
		t.Parallel()
		dir := newSim(t, small...)
		port := freePort(t)
		e := start(t, "fake-engine", port, []string{"-m", model(t), "--port", strconv.Itoa(port), "--fit", "off", "-ngl", "999"},
			simEnv(dir, "0", "FAKE_ENGINE_LOAD_DELAY=50ms", "FAKE_ENGINE_VRAM=4Gi")...)
		wantExit(t, e.wait(5*time.Second), 1, e.log())
		e.wantLog("cudaMalloc failed: out of memory", "exiting due to model loading error")
	})
	t.Run("fit on spills to the CPU", func(t *testing.T) {
		t.Parallel()
		dir := newSim(t, small...)
		port := freePort(t)
		e := start(t, "fake-engine", port, []string{"-m", model(t), "--port", strconv.Itoa(port)},
			simEnv(dir, "0", "FAKE_ENGINE_LOAD_DELAY=50ms", "FAKE_ENGINE_VRAM=4Gi")...)
		e.waitReady()
		waitHeld(t, dir, map[int]map[int]uint64{0: {e.pid: 2 << 30}}, time.Second)
		e.wantLog("offloaded 16/33 layers to GPU")
	})
}
