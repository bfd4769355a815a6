//go:build linux

package e2e

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/poolmanagerd/pool-managerd/drivers/engine"
	"github.com/poolmanagerd/pool-managerd/drivers/engine/proc"
	"github.com/poolmanagerd/pool-managerd/drivers/gpu/sim"
	"github.com/poolmanagerd/pool-managerd/internal/state"
	"github.com/poolmanagerd/pool-managerd/schema/modelsource"
	"github.com/poolmanagerd/pool-managerd/testkit/syncbuf"
	"github.com/poolmanagerd/pool-managerd/testkit/testenv"
)

// cmdTimeout bounds every pool-managerd command a test runs.
const cmdTimeout = 30 * time.Second

var nodeSeq atomic.Int64

// workspace is one test's world, a node laid out by testenv: a config
// directory, a simulated node, a state directory, model files, and a node
// name no other test (and no other pool-managerd on this machine) uses —
// pool-managerd finds engines by the marker in their environment,
// node/pool/generation/hash, so two tests with one node name would adopt
// each other's engines.
type workspace struct {
	t      *testing.T
	n      *testenv.Node
	dir    string
	config string
	sim    string
	state  string
	models string
	node   string
}

// newWorkspace makes a workspace on the default simulated node: an RTX 3090
// (24 GiB, GPU 0) and an RTX 3060 (12 GiB, GPU 1).
func newWorkspace(t *testing.T) *workspace {
	t.Helper()
	return newWorkspaceGPUs(t, sim.DefaultGPUs())
}

// newWorkspaceGPUs makes a workspace on a simulated node with these GPUs.
// Its cleanup stops its engines with `pool-managerd stop --all`; then
// testenv's leak check fails the test if one of them still runs.
func newWorkspaceGPUs(t *testing.T, gpus []sim.GPUSpec) *workspace {
	t.Helper()
	n := testEnv.NewNode(t, fmt.Sprintf("e2e%d-%d", os.Getpid(), nodeSeq.Add(1)), gpus)
	w := &workspace{
		t:      t,
		n:      n,
		dir:    n.Dir,
		config: n.Config,
		sim:    n.Sim,
		state:  n.State,
		models: n.Models,
		node:   n.Name,
	}
	t.Cleanup(w.cleanup)
	return w
}

// model creates an (empty) model file and returns its path.
func (w *workspace) model(name string) string {
	w.t.Helper()
	return w.n.ModelFile(name)
}

// pool is one pool of a test config. Empty fields take the defaults below.
type pool struct {
	ID     string
	Engine string // default llamacpp
	Model  string // default: a file models/ID.gguf, created, unless Source is set
	// Source and SHA256 declare a model the daemon fetches (model.source);
	// Files, in place of SHA256, the manifest of a model directory (vllm).
	Source, SHA256 string
	Files          []modelsource.File
	Ctx            int
	Devices        []int // default [0]
	Split          string
	VRAM           string // default 4Gi
	Share          bool
	// Env goes into the pool's env; FAKE_ENGINE_LOAD_DELAY defaults to 100ms.
	Env map[string]string
	// Restart is the body of the restart struct, in CUE; default fastRestart.
	Restart string
}

// fastRestart keeps the tests quick: short backoff, grace and drain.
const fastRestart = `initialBackoff: "100ms", maxBackoff: "400ms", jitter: 0, stopGrace: "2s", drainTimeout: "1s"`

// writeConfig replaces the config with the node's declaration
// (nodes/NODE.cue) and these pools (pools/ID.cue).
func (w *workspace) writeConfig(pools ...pool) {
	w.t.Helper()
	specs := make([]testenv.Pool, len(pools))
	for i, p := range pools {
		specs[i] = w.poolSpec(p)
	}
	w.n.WriteConfig(specs...)
}

// poolCUE is the file of a pool on this workspace's node.
func (w *workspace) poolCUE(p pool) string {
	w.t.Helper()
	return w.poolSpec(p).CUE()
}

// poolSpec is the pool with the defaults filled in, on this node.
func (w *workspace) poolSpec(p pool) testenv.Pool {
	w.t.Helper()
	if p.Model == "" && p.Source == "" {
		p.Model = w.model(p.ID + ".gguf")
	}
	if p.Devices == nil {
		p.Devices = []int{0}
	}
	if p.VRAM == "" {
		p.VRAM = "4Gi"
	}
	if p.Restart == "" {
		p.Restart = fastRestart
	}
	vars := map[string]string{"FAKE_ENGINE_LOAD_DELAY": "100ms"}
	maps.Copy(vars, p.Env)
	return testenv.Pool{
		ID: p.ID, Node: w.node, Engine: p.Engine, Model: p.Model, Source: p.Source, SHA256: p.SHA256, Files: p.Files, Ctx: p.Ctx, Devices: p.Devices, Split: p.Split,
		VRAM: p.VRAM, Share: p.Share, Env: vars, Restart: p.Restart,
	}
}

// writeFile writes a file of the config tree in place.
func (w *workspace) writeFile(rel, content string) {
	w.t.Helper()
	w.n.WriteFile(rel, content)
}

// result is how a pool-managerd command ended.
type result struct {
	args           []string
	stdout, stderr string
	// code is the exit status; -1 when killed by a signal (see signal).
	code   int
	signal syscall.Signal
	dur    time.Duration
}

func (r result) String() string {
	how := fmt.Sprintf("exit %d", r.code)
	if r.signal != 0 {
		how = "killed by " + r.signal.String()
	}
	return fmt.Sprintf("pool-managerd %s: %s after %v\n--- stdout:\n%s--- stderr:\n%s",
		strings.Join(r.args, " "), how, r.dur.Round(time.Millisecond), r.stdout, r.stderr)
}

// running is a pool-managerd command running in the background.
type running struct {
	cmd            *exec.Cmd
	args           []string
	stdout, stderr *syncbuf.Buffer
	start          time.Time
	done           chan struct{}
	res            result
	cancel         context.CancelFunc
}

// commandEnv is the environment of pool-managerd: the test's, without the
// variables that would change what it does, plus extra.
func commandEnv(extra []string) []string {
	var env []string
	for _, kv := range os.Environ() {
		k, _, _ := strings.Cut(kv, "=")
		if strings.HasPrefix(k, "POOL_MANAGERD_") || strings.HasPrefix(k, "FAKE_ENGINE_") {
			continue
		}
		if k == "PATH" {
			kv = "PATH=" + testEnv.Bin.Dir + string(os.PathListSeparator) + strings.TrimPrefix(kv, "PATH=")
		}
		env = append(env, kv)
	}
	return append(env, extra...)
}

// start runs pool-managerd in the background.
func (w *workspace) start(env []string, args ...string) *running {
	w.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), cmdTimeout)
	cmd := exec.CommandContext(ctx, testEnv.Bin.PoolManagerd, args...)
	cmd.Env = commandEnv(env)
	cmd.Dir = w.dir
	r := &running{cmd: cmd, args: args, stdout: &syncbuf.Buffer{}, stderr: &syncbuf.Buffer{}, done: make(chan struct{}), cancel: cancel}
	cmd.Stdout, cmd.Stderr = r.stdout, r.stderr
	cmd.WaitDelay = 2 * time.Second
	r.start = time.Now()
	if err := reap.startCmd(cmd); err != nil {
		cancel()
		w.t.Fatalf("start pool-managerd: %v", err)
	}
	go func() {
		defer close(r.done)
		defer cancel()
		err := cmd.Wait()
		reap.waited(cmd)
		r.res = result{args: args, stdout: r.stdout.String(), stderr: r.stderr.String(), dur: time.Since(r.start), code: cmd.ProcessState.ExitCode()}
		if ws, ok := cmd.ProcessState.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			r.res.signal = ws.Signal()
		}
		if ctx.Err() != nil {
			r.res.stderr += fmt.Sprintf("\n[e2e: killed after the %v timeout]\n", cmdTimeout)
		} else if err != nil && cmd.ProcessState == nil {
			r.res.stderr += fmt.Sprintf("\n[e2e: wait: %v]\n", err)
		}
	}()
	return r
}

// wait waits for a background command to end.
func (r *running) wait(t *testing.T) result {
	t.Helper()
	<-r.done
	if strings.Contains(r.res.stderr, "[e2e: killed after") {
		t.Fatalf("timed out: %s", r.res)
	}
	return r.res
}

func (r *running) exited() bool {
	select {
	case <-r.done:
		return true
	default:
		return false
	}
}

// run runs pool-managerd to its end.
func (w *workspace) run(env []string, args ...string) result {
	w.t.Helper()
	return w.start(env, args...).wait(w.t)
}

func (w *workspace) nodeFlags() []string {
	return []string{"--gpus", "sim:" + w.sim, "--state-dir", w.state, "--node", w.node}
}

func engineFlags() []string {
	return []string{"--llama-server", testEnv.Bin.FakeEngine, "--vllm", testEnv.Bin.VLLM, "--tgi", testEnv.Bin.TGI}
}

// applyArgs are the arguments of an apply of target (the config when empty).
func (w *workspace) applyArgs(target string) []string {
	if target == "" {
		target = w.config
	}
	args := append([]string{"apply", target}, w.nodeFlags()...)
	args = append(args, engineFlags()...)
	return append(args, "--auto-approve")
}

// apply runs apply on the config, with extra environment (KEY=VALUE).
func (w *workspace) apply(env ...string) result {
	w.t.Helper()
	return w.run(env, w.applyArgs("")...)
}

// applyPlan runs apply on a saved plan.
func (w *workspace) applyPlan(file string) result {
	w.t.Helper()
	return w.run(nil, w.applyArgs(file)...)
}

// planOut saves a plan of the config to a file in the workspace.
func (w *workspace) planOut(name string) string {
	w.t.Helper()
	file := filepath.Join(w.dir, name)
	r := w.run(nil, append([]string{"plan", w.config, "--out", file}, w.nodeFlags()...)...)
	if r.code != 0 {
		w.t.Fatalf("plan --out failed: %s", r)
	}
	return file
}

// poolStatus is one row of `status --format json`.
type poolStatus struct {
	Pool     string `json:"pool"`
	Phase    string `json:"phase"`
	Ready    bool   `json:"ready"`
	PID      int    `json:"pid"`
	Port     int    `json:"port"`
	Endpoint string `json:"endpoint"`
	GPUs     []struct {
		Index int    `json:"index"`
		UUID  string `json:"uuid"`
		Bytes uint64 `json:"memoryBytes"`
	} `json:"gpus"`
	Restarts  int    `json:"restarts"`
	Breaker   string `json:"breaker"`
	LastError *struct {
		Class   string     `json:"class"`
		Message string     `json:"message"`
		Hint    string     `json:"hint"`
		Time    *time.Time `json:"time"`
	} `json:"lastError"`
	NextRetry *time.Time `json:"nextRetry"`
	Log       string     `json:"log"`
}

func (s poolStatus) String() string {
	data, _ := json.Marshal(s)
	return string(data)
}

// status reads `status --format json`, by pool.
func (w *workspace) status() map[string]poolStatus {
	w.t.Helper()
	r := w.run(nil, append([]string{"status", "--format", "json"}, w.nodeFlags()...)...)
	if r.code != 0 {
		w.t.Fatalf("status failed: %s", r)
	}
	var doc struct {
		FormatVersion int          `json:"formatVersion"`
		Pools         []poolStatus `json:"pools"`
	}
	if err := json.Unmarshal([]byte(r.stdout), &doc); err != nil || doc.FormatVersion != 1 {
		w.t.Fatalf("status --format json: want {\"formatVersion\": 1, \"pools\": [...]}: %v\n%s", err, r.stdout)
	}
	out := map[string]poolStatus{}
	for _, row := range doc.Pools {
		out[row.Pool] = row
	}
	return out
}

// statusText is the table of `status`.
func (w *workspace) statusText() string {
	w.t.Helper()
	r := w.run(nil, append([]string{"status"}, w.nodeFlags()...)...)
	if r.code != 0 {
		w.t.Fatalf("status failed: %s", r)
	}
	return r.stdout
}

// loadState reads the state file, which must be valid.
func (w *workspace) loadState() *state.State {
	w.t.Helper()
	data, err := os.ReadFile(filepath.Join(w.state, state.FileName))
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		w.t.Fatal(err)
	}
	if err == nil && !json.Valid(data) {
		w.t.Fatalf("the state file is not valid JSON:\n%s", data)
	}
	st, err := state.Store{Dir: w.state}.Load()
	if err != nil {
		w.t.Fatalf("load the state file: %v", err)
	}
	return st
}

// engineProc is a live engine process of this workspace's node: the leader
// of its session (workers are left out), found by its marker.
type engineProc struct {
	PID    int
	Marker engine.Marker
	Ticks  uint64
}

// engines scans the process table for the live engines of this node, by pool.
func (w *workspace) engines() map[string][]engineProc {
	w.t.Helper()
	found, err := proc.FindByEnv(markerEnv)
	if err != nil {
		w.t.Fatal(err)
	}
	out := map[string][]engineProc{}
	for pid, value := range found {
		m, err := engine.ParseMarker(value)
		if err != nil || m.Node != w.node {
			continue
		}
		info, err := proc.Stat(pid)
		if err != nil || info.State == 'Z' || info.State == 'X' || info.Session != pid {
			continue
		}
		out[m.Pool] = append(out[m.Pool], engineProc{PID: pid, Marker: m, Ticks: info.StartTicks})
	}
	for _, list := range out {
		sort.Slice(list, func(i, j int) bool { return list[i].PID < list[j].PID })
	}
	return out
}

// allEnginePIDs lists every live process (workers too) of this node's engines.
func (w *workspace) allEnginePIDs() []int {
	found, err := proc.FindByEnv(markerEnv)
	if err != nil {
		w.t.Fatal(err)
	}
	var out []int
	for pid, value := range found {
		m, err := engine.ParseMarker(value)
		if err != nil || m.Node != w.node {
			continue
		}
		if info, err := proc.Stat(pid); err == nil && info.State != 'Z' && info.State != 'X' {
			out = append(out, pid)
		}
	}
	sort.Ints(out)
	return out
}

// onlyEngine checks that exactly one engine runs the pool and returns it.
func (w *workspace) onlyEngine(pool string) engineProc {
	w.t.Helper()
	list := w.engines()[pool]
	if len(list) != 1 {
		w.t.Fatalf("pool %s: want exactly one engine process, found %d: %v", pool, len(list), list)
	}
	return list[0]
}

// noEngine checks that no engine process runs the pool.
func (w *workspace) noEngine(pool string) {
	w.t.Helper()
	if list := w.engines()[pool]; len(list) != 0 {
		w.t.Errorf("pool %s: want no engine process, found %v", pool, list)
	}
}

// spawns counts the engine starts of a pool, from the start lines the
// supervisor writes into the pool's log ("-- pool-managerd TIME: start ...").
func (w *workspace) spawns(pool string) int {
	w.t.Helper()
	data, err := os.ReadFile(filepath.Join(w.state, "logs", pool+".log"))
	if errors.Is(err, os.ErrNotExist) {
		return 0
	}
	if err != nil {
		w.t.Fatal(err)
	}
	return len(startLine.FindAll(data, -1))
}

var startLine = regexp.MustCompile(`(?m)^-- pool-managerd \S+: start `)

// alive reports whether pid is a live process (not a zombie).
func alive(pid int) bool {
	info, err := proc.Stat(pid)
	return err == nil && info.State != 'Z' && info.State != 'X'
}

// waitFor polls cond until it holds or timeout passes.
func waitFor(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// healthOK asks an engine's /health.
func healthOK(endpoint string) bool {
	c := http.Client{Timeout: 2 * time.Second}
	resp, err := c.Get(endpoint + "/health")
	if err != nil {
		return false
	}
	resp.Body.Close()
	return resp.StatusCode == http.StatusOK
}

// pidsIn returns the numbers after "engine pid " in apply's output.
func pidsIn(out string) []int {
	var pids []int
	for _, m := range enginePID.FindAllStringSubmatch(out, -1) {
		n, _ := strconv.Atoi(m[1])
		pids = append(pids, n)
	}
	return pids
}

var enginePID = regexp.MustCompile(`engine pid (\d+)`)

// cleanup stops the workspace's engines with `stop --all`, as a person
// would. testenv's leak check, which runs next, fails the test if one of
// them still runs (and kills it).
func (w *workspace) cleanup() {
	if _, err := os.Stat(w.state); err == nil {
		r := w.run(nil, "stop", "--all", "--state-dir", w.state)
		if r.code != 0 {
			w.t.Errorf("cleanup: stop --all failed: %s", r)
		}
	}
}

// mustExit checks a command's exit code.
func mustExit(t *testing.T, r result, code int) {
	t.Helper()
	if r.signal != 0 || r.code != code {
		t.Fatalf("want exit %d: %s", code, r)
	}
}

// contains checks that s has every one of subs.
func contains(t *testing.T, what, s string, subs ...string) {
	t.Helper()
	for _, sub := range subs {
		if !strings.Contains(s, sub) {
			t.Errorf("%s does not contain %q:\n%s", what, sub, s)
		}
	}
}
