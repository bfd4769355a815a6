package main

import (
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// sglangArgs is the command line pool-managerd's preset gives SGLang.
func sglangArgs(model string, port, tp int, more ...string) []string {
	return append([]string{"-m", "sglang.launch_server", "--model-path", model, "--host", "127.0.0.1",
		"--port", strconv.Itoa(port), "--tp-size", strconv.Itoa(tp), "--context-length", "8192"}, more...)
}

// TestSGLang: python -m sglang.launch_server with two tensor-parallel
// schedulers. Connection refused while loading; then /health 503 with an
// empty body until the warm-up is done, then 200; /ping 200 all along; 503
// again while it exits; each scheduler holds --mem-fraction-static of its GPU.
func TestSGLang(t *testing.T) {
	t.Parallel()
	dir := newSim(t)
	port := freePort(t)
	// Started as pool-managerd starts it: the interpreter (here fake-engine)
	// with -m sglang.launch_server; no FAKE_ENGINE_VRAM, so the fraction rules.
	e := start(t, "fake-engine", port, sglangArgs(model(t), port, 2, "--mem-fraction-static", "0.25", "--enable-metrics"),
		simEnv(dir, "0,1", "FAKE_ENGINE_LOAD_DELAY=300ms", "FAKE_ENGINE_WARMUP=2s", "FAKE_ENGINE_SHUTDOWN_DELAY=1s")...)

	r, refused := e.firstAnswer("/health", 5*time.Second)
	if refused == 0 || r.code != 503 || r.body != "" {
		t.Errorf("first answer %d %q after %d refusals; want 503 with an empty body after refusals", r.code, r.body, refused)
	}
	if r := e.mustGet("/ping"); r.code != 200 {
		t.Errorf("/ping during warm-up: %d, want 200 (it says nothing about readiness)", r.code)
	}
	if r := e.waitStatus("/health", 200, 10*time.Second); r.body != "" {
		t.Errorf("/health when warm: body %q, want empty", r.body)
	}
	// 0.25 of the 24 GiB GPU 0 and of the 12 GiB GPU 1, each by its own scheduler.
	children := e.sessionChildren()
	if len(children) != 2 {
		t.Fatalf("schedulers %v, want 2", children)
	}
	got := held(t, dir)
	if len(got[0]) != 1 || len(got[1]) != 1 {
		t.Fatalf("held %v, want one scheduler on each GPU", got)
	}
	for gpu, want := range map[int]uint64{0: 6 << 30, 1: 3 << 30} {
		for pid, b := range got[gpu] {
			if !children[pid] || b != want {
				t.Errorf("GPU %d: pid %d holds %d; want a scheduler holding %d", gpu, pid, b, want)
			}
		}
	}
	if r := e.mustGet("/v1/models"); r.code != 200 || !strings.Contains(r.body, `"max_model_len":8192`) {
		t.Errorf("/v1/models: %d %s", r.code, r.body)
	}

	if err := syscall.Kill(-e.pid, syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	e.waitStatus("/health", 503, 5*time.Second) // exiting
	wantExit(t, e.wait(10*time.Second), 0, e.log())
	waitHeld(t, dir, map[int]map[int]uint64{}, time.Second)
	e.wantLog("Uvicorn running on http://127.0.0.1:"+strconv.Itoa(port), "The server is fired up and ready to roll!", "Finished server process")
}

func TestSGLangRefuses(t *testing.T) {
	t.Parallel()
	_, stderr, st := runShort(t, "fake-engine", []string{"-m", "sglang.launch_server", "--model-path", "/m", "--bogus"})
	if st.ExitCode() != 2 || !strings.Contains(stderr, "launch_server.py: error: unrecognized arguments: --bogus") {
		t.Errorf("unknown option: status %d, stderr %q", st.ExitCode(), stderr)
	}
	_, stderr, st = runShort(t, "fake-engine", []string{"-m", "sglang.launch_server", "--port", "1"})
	if st.ExitCode() != 2 || !strings.Contains(stderr, "the following arguments are required: --model-path") {
		t.Errorf("no model: status %d, stderr %q", st.ExitCode(), stderr)
	}
	// Two schedulers on one GPU.
	dir := newSim(t)
	stdout, _, st := runShort(t, "fake-engine", sglangArgs("/m", 1, 2), simEnv(dir, "0", "FAKE_ENGINE_SKIP_MODEL_CHECK=1")...)
	if st.ExitCode() != 1 || !strings.Contains(stdout, "invalid device ordinal") {
		t.Errorf("--tp-size 2 on one GPU: status %d, stdout:\n%s", st.ExitCode(), stdout)
	}
	// A fraction the GPU does not have free.
	stdout, _, st = runShort(t, "fake-engine", sglangArgs("/m", freePort(t), 1, "--mem-fraction-static", "0.9"),
		simEnv(dir, "1", "FAKE_ENGINE_SKIP_MODEL_CHECK=1", "FAKE_ENGINE_HOLD_OUTSIDE_MASK=1", "FAKE_ENGINE_OUTSIDE_VRAM=4Gi")...)
	if st.ExitCode() != 1 || !strings.Contains(stdout, "Please try to increase --mem-fraction-static") {
		t.Errorf("fraction over free memory: status %d, stdout:\n%s", st.ExitCode(), stdout)
	}
}
