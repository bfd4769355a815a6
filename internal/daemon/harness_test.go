//go:build linux

package daemon_test

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/poolmanagerd/pool-managerd/drivers/engine/local"
	"github.com/poolmanagerd/pool-managerd/drivers/engine/preset"
	"github.com/poolmanagerd/pool-managerd/drivers/gpu/nvml"
	"github.com/poolmanagerd/pool-managerd/drivers/gpu/sim"
	"github.com/poolmanagerd/pool-managerd/internal/api"
	"github.com/poolmanagerd/pool-managerd/internal/daemon"
	"github.com/poolmanagerd/pool-managerd/internal/state"
	"github.com/poolmanagerd/pool-managerd/reconcile"
	"github.com/poolmanagerd/pool-managerd/testkit/syncbuf"
	"github.com/poolmanagerd/pool-managerd/testkit/testenv"
)

// waitTimeout guards every wait. It is a failure guard, not a timing
// assertion: on a loaded 2-CPU machine each step takes well under a second,
// so a wait that runs this long means the daemon never got there.
const waitTimeout = 45 * time.Second

// fastRestart keeps the tests quick: a short backoff, no jitter, short
// drain and grace.
const fastRestart = `initialBackoff: "100ms", maxBackoff: "400ms", jitter: 0, stopGrace: "2s", drainTimeout: "1s"`

var nodeSeq atomic.Int64

// node is one test's world: a simulated node laid out by testenv, whose
// config directory holds one file (config.cue, replaced atomically, so the
// daemon never sees a half-written config unless a test writes one on
// purpose), and a node name of its own.
type node struct {
	t      *testing.T
	env    *testenv.Node
	name   string
	config string
	sim    string
	state  string
	models string
	gpus   *nvml.Node

	loggedEngines bool
}

// gpus16 is a node of n GPUs of 16 GiB.
func gpus16(n int) []sim.GPUSpec {
	out := make([]sim.GPUSpec, n)
	for i := range out {
		out[i] = sim.GPUSpec{Name: "NVIDIA Test GPU", MemoryBytes: 16 * sim.GiB}
	}
	return out
}

// newNode makes a node with n GPUs of 16 GiB. Its cleanup, which runs after
// the cleanups of the daemons started on it, stops every engine its state
// records (with a fresh daemon's StopEngines); then testenv's leak check
// fails the test if an engine of its folder is still alive.
func newNode(t *testing.T, n int) *node {
	t.Helper()
	tn := testEnv.NewNode(t, fmt.Sprintf("node%d-%d", os.Getpid(), nodeSeq.Add(1)), gpus16(n))
	nd := &node{
		t:      t,
		env:    tn,
		name:   tn.Name,
		config: tn.Config,
		sim:    tn.Sim,
		state:  tn.State,
		models: tn.Models,
	}
	g, err := sim.Open(nd.sim)
	if err != nil {
		t.Fatal(err)
	}
	nd.gpus = g
	t.Cleanup(nd.cleanup)
	return nd
}

func (n *node) cleanup() {
	t := n.t
	defer n.gpus.Close()
	d, err := daemon.New(n.options())
	if err != nil {
		t.Errorf("cleanup: %v", err)
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	if err := d.StopEngines(ctx); err != nil {
		t.Errorf("cleanup: StopEngines: %v", err)
	}
}

// logEngineLogs prints the ends of the engines' logs, once per node.
func (n *node) logEngineLogs() {
	if n.loggedEngines {
		return
	}
	n.loggedEngines = true
	paths, _ := filepath.Glob(filepath.Join(n.state, "logs", "*.log"))
	for _, p := range paths {
		data, err := os.ReadFile(p)
		if err != nil {
			continue
		}
		if len(data) > 4096 {
			data = data[len(data)-4096:]
		}
		n.t.Logf("engine log %s (end):\n%s", filepath.Base(p), data)
	}
}

// options are the daemon options for this node, without a registry.
func (n *node) options() daemon.Options {
	return daemon.Options{
		ConfigDir: n.config, StateDir: n.state, Node: n.name, GPUs: n.gpus, Source: "sim:" + n.sim,
		Engines: &local.Driver{
			Binaries: preset.Binaries{LlamaCpp: testEnv.Bin.FakeEngine},
			LogDir:   filepath.Join(n.state, "logs"), StateDir: n.state, SimDir: n.sim,
		},
		Resync:   time.Hour, // every reaction comes from the event a test caused
		Debounce: 20 * time.Millisecond,
	}
}

// Engine ports. Left to the driver, an engine gets a port the kernel says
// is free (bound and closed), which another test's driver, running at the
// same time, may be given too before the engine binds it: the engine then
// exits at once ("couldn't bind HTTP server socket"), a failure no test
// expects. So each pool declares a port of its own, from below the kernel's
// ephemeral range (32768 and up by default), which bind(0) and outgoing
// connections never take, and which no other test of this process is given.
var (
	portMu    sync.Mutex
	portGiven = map[int]bool{}
	// portByPool keeps a pool's port across rewrites of its node's config.
	portByPool = map[string]int{}
)

const portLow, portHigh = 20000, 32000

// portFor returns the port of pool id of node.
func portFor(t *testing.T, node, id string) int {
	t.Helper()
	portMu.Lock()
	defer portMu.Unlock()
	key := node + "/" + id
	if p, ok := portByPool[key]; ok {
		return p
	}
	for range 1000 {
		p := portLow + rand.IntN(portHigh-portLow)
		if portGiven[p] {
			continue
		}
		portGiven[p] = true // taken or not, not tried again
		ln, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(p)))
		if err != nil {
			continue
		}
		ln.Close()
		portByPool[key] = p
		return p
	}
	t.Fatal("no free port for an engine")
	return 0
}

// pool is one pool of a test config.
type pool struct {
	id      string
	devices []int  // default [0]
	split   string // CUE list
	vram    string // default 1Gi
	ram     string // host RAM need; default none (not declared)
	// env is the pool's env; FAKE_ENGINE_LOAD_DELAY defaults to 50ms.
	env map[string]string
	// restart is the body of the restart struct; default fastRestart.
	restart string
	// source and sha256, when source is set, are the pool's model.source
	// and digest, in place of a model file.
	source, sha256 string
}

// cue renders the config of these pools on node name (n.name when empty).
// Every pool sets share, so that several fit on one GPU.
func (n *node) cue(name string, pools ...pool) string {
	n.t.Helper()
	if name == "" {
		name = n.name
	}
	decl := n.env.Decl()
	decl.Name = name
	specs := make([]testenv.Pool, len(pools))
	for i, p := range pools {
		specs[i] = n.spec(name, p)
	}
	return testenv.ConfigFile(decl, specs...)
}

// spec is a pool of a test config on node name, with the defaults filled in.
func (n *node) spec(name string, p pool) testenv.Pool {
	n.t.Helper()
	if p.devices == nil {
		p.devices = []int{0}
	}
	if p.vram == "" {
		p.vram = "1Gi"
	}
	if p.restart == "" {
		p.restart = fastRestart
	}
	vars := map[string]string{"FAKE_ENGINE_LOAD_DELAY": "50ms"}
	maps.Copy(vars, p.env)
	model := ""
	if p.source == "" {
		model = n.env.ModelFile(p.id + ".gguf")
	}
	return testenv.Pool{
		ID: p.id, Node: name, Model: model, Source: p.source, SHA256: p.sha256, Devices: p.devices, Split: p.split,
		Port: portFor(n.t, n.name, p.id), VRAM: p.vram, RAM: p.ram, Share: true, Env: vars, Restart: p.restart,
	}
}

// writeSplit writes the config as nodes.cue (this node) and one file per
// pool, pools/ID.cue, as an operator's repository holds it.
func (n *node) writeSplit(pools ...pool) {
	n.t.Helper()
	decl := n.env.Decl()
	decl.Name = n.name
	n.writeFile("nodes.cue", decl.CUE())
	for _, p := range pools {
		n.writeFile("pools/"+p.id+".cue", n.spec(n.name, p).CUE())
	}
}

// writeConfig replaces the config with these pools on this node.
func (n *node) writeConfig(pools ...pool) {
	n.t.Helper()
	n.writeFile("config.cue", n.cue("", pools...))
}

// writeFile writes a file of the config tree atomically: a hidden
// temporary file (which the watcher and the loader skip) renamed into place.
func (n *node) writeFile(rel, content string) {
	n.t.Helper()
	n.env.SaveFile(rel, content)
}

func (n *node) removeFile(rel string) {
	n.t.Helper()
	if err := os.Remove(filepath.Join(n.config, rel)); err != nil {
		n.t.Fatal(err)
	}
}

// loadState reads the state file.
func (n *node) loadState() *state.State {
	n.t.Helper()
	st, err := state.Store{Dir: n.state}.Load()
	if err != nil {
		n.t.Fatal(err)
	}
	return st
}

// running is one daemon of a node, its Run in a goroutine.
type running struct {
	t      *testing.T
	n      *node
	d      *daemon.Daemon
	reg    *prometheus.Registry
	log    *syncbuf.Buffer
	cancel context.CancelFunc
	done   chan struct{}
	err    error // Run's, once done is closed

	mu      sync.Mutex
	steps   []string // "pool step", from Options.Step
	notices []string // from Options.Notify
}

// start creates a daemon on the node (with a registry of its own) and runs
// it; edit changes its options first. Its cleanup ends Run (engines are
// left to the node's cleanup) and prints its log when the test failed.
func (n *node) start(edit ...func(*daemon.Options)) *running {
	n.t.Helper()
	t := n.t
	r := &running{t: t, n: n, reg: prometheus.NewRegistry(), log: &syncbuf.Buffer{}, done: make(chan struct{})}
	opts := n.options()
	opts.Registry = r.reg
	opts.Logger = hclog.New(&hclog.LoggerOptions{Name: "daemon", Level: hclog.Debug, Output: r.log, TimeFormat: "15:04:05.000"})
	opts.Step = func(pool, step string) {
		r.mu.Lock()
		r.steps = append(r.steps, pool+" "+step)
		r.mu.Unlock()
	}
	opts.Notify = func(s string) {
		r.mu.Lock()
		r.notices = append(r.notices, s)
		r.mu.Unlock()
	}
	for _, e := range edit {
		e(&opts)
	}
	d, err := daemon.New(opts)
	if err != nil {
		t.Fatal(err)
	}
	r.d = d
	ctx, cancel := context.WithCancel(context.Background())
	r.cancel = cancel
	go func() {
		defer close(r.done)
		r.err = d.Run(ctx)
	}()
	t.Cleanup(func() {
		r.stop()
		if t.Failed() {
			t.Logf("daemon on node %s, its log:\n%s", n.name, r.log.String())
			n.logEngineLogs()
		}
	})
	return r
}

// stop cancels Run's context and waits for Run to return.
func (r *running) stop() {
	r.cancel()
	select {
	case <-r.done:
	case <-time.After(waitTimeout):
		r.t.Errorf("Run did not return within %v of its context's end", waitTimeout)
	}
}

// shutdown stops the daemon and checks that Run returned nil. Once it
// returned, every op the daemon launched has ended.
func (r *running) shutdown() {
	r.t.Helper()
	r.stop()
	if r.err != nil {
		r.t.Fatalf("Run: %v", r.err)
	}
}

func (r *running) exited() bool {
	select {
	case <-r.done:
		return true
	default:
		return false
	}
}

// waitFor polls cond until it holds, failing the test when waitTimeout
// passes first or Run returned meanwhile.
func (r *running) waitFor(what string, cond func() bool) {
	r.t.Helper()
	r.waitUntil(func() string { return what }, cond)
}

// waitUntil is waitFor with a description made when it fails.
func (r *running) waitUntil(what func() string, cond func() bool) {
	r.t.Helper()
	deadline := time.Now().Add(waitTimeout)
	for !cond() {
		if r.exited() {
			r.t.Fatalf("Run returned (%v) while waiting for %s", r.err, what())
		}
		if time.Now().After(deadline) {
			r.t.Fatalf("timed out after %v waiting for %s", waitTimeout, what())
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// pool returns a pool as the API shows it.
func (r *running) pool(id string) api.Pool {
	r.t.Helper()
	p, ok := r.d.Pool(id)
	if !ok {
		r.t.Fatalf("pool %s is unknown to the daemon (pools: %v)", id, poolIDs(r.d.Pools()))
	}
	return p
}

func poolIDs(ps []api.Pool) []string {
	var ids []string
	for _, p := range ps {
		ids = append(ids, p.Pool)
	}
	return ids
}

// poolString prints a pool for failure messages.
type poolString api.Pool

func (p poolString) String() string {
	s := fmt.Sprintf("%s: phase %s ready %v pid %d restarts %d breaker %s", p.Pool, p.Phase, p.Ready, p.PID, p.Restarts, p.Breaker)
	if p.LastError != nil {
		s += fmt.Sprintf(" lastError %s (%s)", p.LastError.Class, p.LastError.Message)
	}
	return s
}

// waitPool waits until pool id satisfies cond and returns it.
func (r *running) waitPool(id, what string, cond func(api.Pool) bool) api.Pool {
	r.t.Helper()
	var last api.Pool
	var known bool
	r.waitUntil(func() string {
		if !known {
			return fmt.Sprintf("pool %s: %s (the pool is unknown)", id, what)
		}
		return fmt.Sprintf("pool %s: %s (last seen: %v)", id, what, poolString(last))
	}, func() bool {
		last, known = r.d.Pool(id)
		return known && cond(last)
	})
	return last
}

// enginePID is the pid of pool id's engine as the state file records it.
func (r *running) enginePID(id string) int {
	r.t.Helper()
	return r.n.loadState().Engines[id].PID
}

// waitReady waits until the pools are Ready with an engine and returns
// their pids.
func (r *running) waitReady(ids ...string) map[string]int {
	r.t.Helper()
	pids := map[string]int{}
	for _, id := range ids {
		pids[id] = r.waitReadyWhere(id, "Ready", func(api.Pool) bool { return true }).PID
	}
	return pids
}

// waitReadyWhere waits until pool id is Ready, as the view shows it and as
// the state file records it (the engine's record has ReadyAt: the placement
// was verified), in an engine that satisfies cond. Checking both keeps the
// tests that read the state file next from racing the view.
func (r *running) waitReadyWhere(id, what string, cond func(api.Pool) bool) api.Pool {
	r.t.Helper()
	return r.waitPool(id, what, func(p api.Pool) bool {
		if p.Phase != reconcile.Ready || !p.Ready || p.PID == 0 || !cond(p) {
			return false
		}
		rec := r.n.loadState().Engines[id]
		return rec.PID == p.PID && !rec.ReadyAt.IsZero()
	})
}

// settle is a barrier: it asks for a reload (SIGHUP), waits until the loop
// has loaded the config, then pings the loop. The loop answers the ping only
// after the pass that followed that load, so when settle returns, the pass
// has seen everything that happened before settle was called (ops it
// launched may still run).
func (r *running) settle() {
	r.t.Helper()
	prev := r.d.Config().LastLoad
	r.d.Reload()
	r.waitFor("a reload", func() bool { return r.d.Config().LastLoad.After(prev) })
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	if err := r.d.Ping(ctx); err != nil {
		r.t.Fatalf("Ping: %v", err)
	}
}

// stepCount counts the executor steps of pool (executor.Step*).
func (r *running) stepCount(pool, step string) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := 0
	for _, s := range r.steps {
		if s == pool+" "+step {
			n++
		}
	}
	return n
}

func (r *running) notified() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.notices)
}

// ctx is a context for a call to the daemon, bounded by waitTimeout.
func (r *running) ctx() context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	r.t.Cleanup(cancel)
	return ctx
}

// metric returns the value of the first series of metric name whose
// labels include labels: a counter's or gauge's value, a histogram's sample
// count. ok is false when there is no such series.
func metric(t *testing.T, g prometheus.Gatherer, name string, labels map[string]string) (float64, bool) {
	t.Helper()
	values := metricValues(t, g, name, labels)
	if len(values) == 0 {
		return 0, false
	}
	return values[0], true
}

// metricValues returns the value of every series of metric name whose
// labels include labels, as metric reads them.
func metricValues(t *testing.T, g prometheus.Gatherer, name string, labels map[string]string) []float64 {
	t.Helper()
	families, err := g.Gather()
	if err != nil {
		t.Fatalf("gather: %v", err)
	}
	var values []float64
	for _, f := range families {
		if f.GetName() != name {
			continue
		}
	series:
		for _, m := range f.GetMetric() {
			have := map[string]string{}
			for _, l := range m.GetLabel() {
				have[l.GetName()] = l.GetValue()
			}
			for k, v := range labels {
				if have[k] != v {
					continue series
				}
			}
			switch f.GetType() {
			case dto.MetricType_COUNTER:
				values = append(values, m.GetCounter().GetValue())
			case dto.MetricType_GAUGE:
				values = append(values, m.GetGauge().GetValue())
			case dto.MetricType_HISTOGRAM:
				values = append(values, float64(m.GetHistogram().GetSampleCount()))
			default:
				t.Fatalf("%s: type %v", name, f.GetType())
			}
		}
	}
	return values
}

// wantAllZero checks that metric name has series with labels (every counter
// a pool can have is exported from 0) and that each of them is 0.
func wantAllZero(t *testing.T, g prometheus.Gatherer, name string, labels map[string]string, why string) {
	t.Helper()
	values := metricValues(t, g, name, labels)
	if len(values) == 0 {
		t.Errorf("%s%v: no series, want them exported at 0", name, labels)
	}
	for _, v := range values {
		if v != 0 {
			t.Errorf("%s%v has a series at %v: %s", name, labels, v, why)
			return
		}
	}
}

// wantMetric checks that a series exists with the value want.
func wantMetric(t *testing.T, g prometheus.Gatherer, name string, labels map[string]string, want float64) {
	t.Helper()
	got, ok := metric(t, g, name, labels)
	switch {
	case !ok:
		t.Errorf("%s%v: no such series, want %v", name, labels, want)
	case got != want:
		t.Errorf("%s%v = %v, want %v", name, labels, got, want)
	}
}

// waitMetric waits until a series has the value want.
func (r *running) waitMetric(name string, labels map[string]string, want float64) {
	r.t.Helper()
	r.waitFor(fmt.Sprintf("%s%v = %v", name, labels, want), func() bool {
		got, ok := metric(r.t, r.reg, name, labels)
		return ok && got == want
	})
}

// l builds a label set from pairs.
func l(pairs ...string) map[string]string {
	m := map[string]string{}
	for i := 0; i+1 < len(pairs); i += 2 {
		m[pairs[i]] = pairs[i+1]
	}
	return m
}

// errorsText joins a config's diagnostics, for messages and matching.
func errorsText(c api.Config) string {
	var lines []string
	for _, d := range c.Errors {
		lines = append(lines, d.String())
	}
	return strings.Join(lines, "\n")
}

// isShuttingDown reports whether err is the daemon's answer once Run has
// returned (not the caller's context ending).
func isShuttingDown(err error) bool {
	return err != nil && !errors.Is(err, context.DeadlineExceeded) && !errors.Is(err, context.Canceled) &&
		strings.Contains(err.Error(), "shutting down")
}
