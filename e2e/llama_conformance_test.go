//go:build linux

package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/poolmanagerd/pool-managerd/drivers/gpu/sim"
	"github.com/poolmanagerd/pool-managerd/internal/api"
	"github.com/poolmanagerd/pool-managerd/reconcile/restart"
	"github.com/poolmanagerd/pool-managerd/testkit/ggufgen"
	"github.com/poolmanagerd/pool-managerd/testkit/testenv"
)

// realLlamaEnv names the real llama-server binary the conformance suite also
// runs against (.ci/run sets it to ../shared/tools/llama-server/llama-server
// when that file exists). It is a test-only variable: the product's own
// POOL_MANAGERD_LLAMA_SERVER would reach every command the tests run.
const realLlamaEnv = "POOL_MANAGERD_TEST_LLAMA_SERVER"

// llamaUnderTest is one llama-server the conformance checks run against:
// the stand-in always, the real binary when realLlamaEnv names one.
type llamaUnderTest struct {
	name string
	bin  string
	real bool
	// env goes into every pool's env (the stand-in's load delay).
	env map[string]string
	// busyEnv makes a /completion hold its slot long enough to drain.
	busyEnv map[string]string
	// rejected makes the engine exit at once naming an argument: pool flags
	// (a CUE list) and env, and the argument it names.
	rejectFlags string
	rejectEnv   map[string]string
	rejectArg   string
}

// Every check below holds for both; what differs is only how a case is
// brought about (the stand-in's load delay and its imitation of an older
// build, a flag the real build does not know).
func llamasUnderTest(t *testing.T) []llamaUnderTest {
	list := []llamaUnderTest{{
		name:    "fake-engine",
		bin:     testEnv.Bin.FakeEngine,
		env:     map[string]string{"FAKE_ENGINE_LOAD_DELAY": "1s"},
		busyEnv: map[string]string{"FAKE_ENGINE_GEN_DELAY": "3s"},
		// The capability probe runs without the pool's env, so it reads the
		// help of a build with --fit, and pool-managerd passes --fit off to
		// an engine that imitates a build without it.
		rejectEnv: map[string]string{"FAKE_ENGINE_LLAMA_BUILD": "7000"},
		rejectArg: "--fit",
	}}
	if bin := os.Getenv(realLlamaEnv); bin != "" {
		if fi, err := os.Stat(bin); err != nil || fi.Mode()&0o111 == 0 {
			t.Fatalf("%s=%s: not an executable file (%v)", realLlamaEnv, bin, err)
		}
		list = append(list, llamaUnderTest{
			name: "llama-server", bin: bin, real: true,
			// --log-jsonl is in pool-managerd's option table (a newer
			// llama.cpp) but not in build 27aef3d.
			rejectFlags: `["--log-jsonl"]`,
			rejectArg:   "--log-jsonl",
		})
	}
	return list
}

// conformanceModel writes a synthetic F16 model big enough that a real CPU
// llama-server with --threads 1 takes a while to load it (and to generate).
func conformanceModel(t *testing.T, dir string) string {
	t.Helper()
	m := ggufgen.Tiny()
	m.Name = "Synthetic Conformance"
	m.Quant = ggufgen.F16
	m.Layers, m.Embedding, m.FeedForward, m.Vocab = 4, 1024, 4096, 8192
	path := filepath.Join(dir, "conformance.gguf")
	if _, err := ggufgen.Write(path, m); err != nil {
		t.Fatal(err)
	}
	return path
}

// TestLlamaServerConformance runs one set of checks through pool-managerd
// serve on a simulated node that hosts real engines, against the stand-in
// and (when realLlamaEnv is set) the real llama-server, one engine at a
// time: a difference between them fails a check.
func TestLlamaServerConformance(t *testing.T) {
	engines := llamasUnderTest(t)
	if len(engines) == 1 {
		t.Run("llama-server", func(t *testing.T) {
			t.Skipf("%s is not set: the real llama-server is not tested (set it to a llama-server binary, "+
				"such as ../shared/tools/llama-server/llama-server; see the README)", realLlamaEnv)
		})
	}
	for _, e := range engines {
		t.Run(e.name, func(t *testing.T) { conformance(t, e) })
	}
}

func conformance(t *testing.T, e llamaUnderTest) {
	w := newWorkspace(t)
	if err := sim.SetOptions(w.sim, sim.Options{HostRealEngines: true}); err != nil {
		t.Fatal(err)
	}
	model := conformanceModel(t, w.models)
	const restartBody = `initialBackoff: "100ms", maxBackoff: "400ms", jitter: 0, stopGrace: "10s", drainTimeout: "60s"`
	spec := func(id string, ctx int, flags string, env map[string]string) testenv.Pool {
		p := w.poolSpec(pool{ID: id, Model: model, Ctx: ctx, VRAM: "2Gi", Share: true, Restart: restartBody})
		p.Flags = flags
		p.Env = map[string]string{}
		for k, v := range e.env {
			p.Env[k] = v
		}
		for k, v := range env {
			p.Env[k] = v
		}
		return p
	}
	const flags = `["--threads", "1", "--metrics"]`
	conf := spec("conf", 1024, flags, e.busyEnv)
	w.n.WriteConfig(conf)
	d := w.startDaemon("--llama-server", e.bin)

	// While it loads: every 503 is llama-server's "Loading model".
	loading := watchLoad(t, d, "conf")
	p := d.waitPools("conf")["conf"]
	saw := <-loading
	t.Logf("%s: %d answers 503 \"Loading model\" seen during the load", e.name, saw.n503)
	switch {
	case saw.bad != "":
		t.Errorf("/health during the load: %s", saw.bad)
	case saw.n503 == 0 && e.real:
		t.Logf("no 503 seen while the real llama-server loaded (it loaded in well under a poll); the bodies were not checked")
	case saw.n503 == 0:
		t.Errorf("no 503 \"Loading model\" seen during the stand-in's 1 s load")
	}

	// The argv pool-managerd builds is accepted: Ready, and with --fit off
	// where the build has --fit.
	argv := cmdline(t, p.PID)
	for _, want := range []string{"--fit off", "--n-gpu-layers 999", "--split-mode layer", "--threads 1 --metrics"} {
		if !strings.Contains(argv, want) {
			t.Errorf("engine argv %q lacks %q", argv, want)
		}
	}
	if p.LastError != nil {
		t.Errorf("Ready with a last error: %+v", p.LastError)
	}

	// --metrics: llama.cpp's metrics are served.
	body := get(t, p.Port, "/metrics", http.StatusOK)
	for _, name := range []string{"llamacpp:prompt_tokens_total", "llamacpp:tokens_predicted_total", "llamacpp:requests_processing"} {
		if !strings.Contains(body, "# TYPE "+name+" ") {
			t.Errorf("/metrics lacks %s:\n%s", name, body)
		}
	}
	if slots := busySlots(t, p.Port); slots != 0 {
		t.Errorf("%d slots busy on an idle engine", slots)
	}

	// A busy slot holds the drain of a replace (a ctx edit) until its
	// request is answered whole; then SIGTERM ends the engine (no SIGKILL).
	const nPredict = 900 // within ctx 1024: all of them are generated
	done := make(chan completion, 1)
	go func() { done <- complete(p.Port, nPredict) }()
	d.waitFor("a slot busy with the completion", func() bool { return busySlots(t, p.Port) > 0 })
	conf.Model, conf.Ctx = model, 2048
	w.n.WriteConfig(conf)
	d.waitFor("the old engine draining", func() bool {
		q := d.pool("conf")
		return q.PID != p.PID || q.Phase == "Draining"
	})
	select {
	case c := <-done:
		done <- c
		if !e.real {
			t.Errorf("the stand-in's 3 s completion ended before the replace began draining")
		} else {
			t.Logf("the completion ended before the daemon began the replace: the drain had nothing to wait for")
		}
	default:
		t.Logf("%s: draining with the completion in flight", e.name)
	}
	c := <-done
	if c.err != nil || c.status != http.StatusOK || c.predicted != nPredict {
		t.Errorf("the completion in flight during the drain: status %d, %d of %d tokens, %v: the drain did not wait for it",
			c.status, c.predicted, nPredict, c.err)
	}
	if !c.engineAlive && c.err == nil {
		t.Errorf("the completion was answered after its engine was gone")
	}
	q := d.waitNewEngine("conf", p.PID)
	if kills, ok := d.metrics().value(t, "pool_managerd_engine_kills_total", map[string]string{"pool": "conf"}); ok && kills != 0 {
		t.Errorf("the replaced engine needed SIGKILL (%v): it should exit on SIGTERM", kills)
	}
	if log := readFile(t, filepath.Join(w.state, "logs", "conf.log")); !strings.Contains(log, "cleaning up before exit") {
		t.Errorf("the engine log lacks llama-server's SIGTERM line \"cleaning up before exit\":\n%s", log)
	}
	if !strings.Contains(cmdline(t, q.PID), "--ctx-size 2048") {
		t.Errorf("the new engine: %s", cmdline(t, q.PID))
	}

	// kill -9 of the daemon: the next one adopts the engine, memory and all.
	d.quiesce()
	d.kill()
	d = w.serve("--llama-server", e.bin)
	if a := d.waitPools("conf")["conf"]; a.PID != q.PID {
		t.Errorf("after kill -9 of the daemon: engine pid %d, want %d adopted", a.PID, q.PID)
	}

	// Each way to fail at once ends in its own class, with the engine's
	// own error line in lastError.
	corrupt := filepath.Join(w.models, "corrupt.gguf")
	if err := os.WriteFile(corrupt, append([]byte("PK\x03\x04"), bytes.Repeat([]byte{0x5a}, 4096)...), 0o644); err != nil {
		t.Fatal(err)
	}
	bad := []struct {
		spec  testenv.Pool
		class string
		line  string
	}{
		{spec("badarg", 1024, e.rejectFlags, e.rejectEnv), restart.ClassArgsRejected, "error: invalid argument: " + e.rejectArg},
		{spec("nomodel", 1024, flags, nil), restart.ClassModelMissing, "failed to open GGUF file"},
		{spec("corrupt", 1024, flags, nil), restart.ClassModelCorrupt, "invalid magic characters"},
	}
	bad[1].spec.Model = filepath.Join(w.models, "missing.gguf")
	bad[2].spec.Model = corrupt
	specs := []testenv.Pool{conf}
	for _, b := range bad {
		specs = append(specs, b.spec)
	}
	w.n.WriteConfig(specs...)
	for _, b := range bad {
		got := d.waitPool(b.spec.ID, "a last error of class "+b.class, func(p api.Pool) bool {
			return p.LastError != nil && p.LastError.Class != restart.ClassSpawnFailed
		})
		if le := got.LastError; le.Class != b.class || !strings.Contains(le.Message, b.line) || le.Hint != restart.Hint(b.class) {
			t.Errorf("%s: last error %+v, want class %s with %q and its hint", b.spec.ID, le, b.class, b.line)
		}
	}
	d.term()
}

// loadWatch is what a poll of /health saw while an engine loaded.
type loadWatch struct {
	n503 int
	bad  string // a 503 that is not llama-server's "Loading model", or another status
}

// watchLoad polls the pool's engine's /health from the moment its port is
// known until it answers 200, checking every 503's body.
func watchLoad(t *testing.T, d *daemon, id string) <-chan loadWatch {
	t.Helper()
	out := make(chan loadWatch, 1)
	go func() {
		var lw loadWatch
		defer func() { out <- lw }()
		deadline := time.Now().Add(daemonTimeout)
		port := 0
		client := &http.Client{Timeout: 2 * time.Second}
		for time.Now().Before(deadline) {
			if port == 0 {
				ctx, cancel := apiCtx()
				p, err := d.client.Pool(ctx, id)
				cancel()
				if err == nil && p.Port != 0 {
					port = p.Port
				}
				time.Sleep(5 * time.Millisecond)
				continue
			}
			resp, err := client.Get(fmt.Sprintf("http://127.0.0.1:%d/health", port))
			if err != nil {
				time.Sleep(5 * time.Millisecond)
				continue
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			switch resp.StatusCode {
			case http.StatusOK:
				return
			case http.StatusServiceUnavailable:
				lw.n503++
				var e struct {
					Error struct {
						Code    int    `json:"code"`
						Message string `json:"message"`
						Type    string `json:"type"`
					} `json:"error"`
				}
				if err := json.Unmarshal(body, &e); err != nil || e.Error.Message != "Loading model" || e.Error.Type != "unavailable_error" || e.Error.Code != 503 {
					lw.bad = fmt.Sprintf("503 %s", body)
					return
				}
				time.Sleep(2 * time.Millisecond)
			default:
				lw.bad = fmt.Sprintf("%d %s", resp.StatusCode, body)
				return
			}
		}
		lw.bad = "no 200 within " + daemonTimeout.String()
	}()
	return out
}

// get asks an engine's endpoint and checks the status.
func get(t *testing.T, port int, path string, want int) string {
	t.Helper()
	resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d%s", port, path))
	if err != nil {
		t.Fatalf("GET %s: %v", path, err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != want {
		t.Fatalf("GET %s: %d %s, want %d", path, resp.StatusCode, body, want)
	}
	return string(body)
}

// busySlots counts the slots of /slots that process a request.
func busySlots(t *testing.T, port int) int {
	t.Helper()
	var slots []struct {
		ID           int  `json:"id"`
		IsProcessing bool `json:"is_processing"`
	}
	if err := json.Unmarshal([]byte(get(t, port, "/slots", http.StatusOK)), &slots); err != nil || len(slots) == 0 {
		t.Fatalf("/slots: %v, %d slots", err, len(slots))
	}
	n := 0
	for _, s := range slots {
		if s.IsProcessing {
			n++
		}
	}
	return n
}

// completion is how a /completion ended.
type completion struct {
	status, predicted int
	err               error
	// engineAlive: the engine's port still answered right after.
	engineAlive bool
}

// complete asks for nPredict tokens (ignore_eos: all of them).
func complete(port, nPredict int) completion {
	ctx, cancel := context.WithTimeout(context.Background(), 2*daemonTimeout)
	defer cancel()
	body := fmt.Sprintf(`{"prompt": "Hello", "n_predict": %d, "ignore_eos": true}`, nPredict)
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, "http://127.0.0.1:"+strconv.Itoa(port)+"/completion", strings.NewReader(body))
	if err != nil {
		return completion{err: err}
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return completion{err: err}
	}
	defer resp.Body.Close()
	var out struct {
		TokensPredicted int `json:"tokens_predicted"`
	}
	err = json.NewDecoder(resp.Body).Decode(&out)
	c := completion{status: resp.StatusCode, predicted: out.TokensPredicted, err: err}
	c.engineAlive = healthAnswers(port)
	return c
}

// healthAnswers reports whether anything answers /health on the port.
func healthAnswers(port int) bool {
	resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/health", port))
	if err != nil {
		return false
	}
	resp.Body.Close()
	return true
}

func readFile(t *testing.T, path string) string {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(data)
}

// TestOlderLlamaServerGetsNoFit: a llama-server build without --fit (the
// stand-in imitating build 7000, behind a wrapper so that its --help is the
// old build's too) is started without --fit, with a warning in the daemon's
// log that the fit check is the engine's; it reaches Ready.
func TestOlderLlamaServerGetsNoFit(t *testing.T) {
	t.Parallel()
	w := newWorkspace(t)
	old := filepath.Join(w.dir, "llama-server-b7000")
	script := "#!/bin/sh\nFAKE_ENGINE_LLAMA_BUILD=7000 exec " + testEnv.Bin.FakeEngine + " \"$@\"\n"
	if err := os.WriteFile(old, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	w.writeConfig(pool{ID: "chat"})
	d := w.serve("--llama-server", old)
	p := d.waitPools("chat")["chat"]
	argv := cmdline(t, p.PID)
	if strings.Contains(argv, "--fit") || !strings.Contains(argv, "--n-gpu-layers 999") {
		t.Errorf("an older llama-server's argv %q: want no --fit, the other preset flags", argv)
	}
	if !strings.Contains(d.stderr.String(), "has no --fit") {
		t.Errorf("the daemon's log lacks the warning that the build has no --fit:\n%s", d.stderr.String())
	}
	if v := get(t, p.Port, "/props", http.StatusOK); !strings.Contains(v, `"build_info":"b7000-`) {
		t.Errorf("/props of the older build: %s", v)
	}
	d.term()
}
