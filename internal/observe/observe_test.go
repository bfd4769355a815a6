package observe

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/poolmanagerd/pool-managerd/drivers/engine"
	"github.com/poolmanagerd/pool-managerd/drivers/engine/proc"
	"github.com/poolmanagerd/pool-managerd/drivers/gpu"
	"github.com/poolmanagerd/pool-managerd/internal/state"
	"github.com/poolmanagerd/pool-managerd/reconcile"
	"github.com/poolmanagerd/pool-managerd/reconcile/restart"
	"github.com/poolmanagerd/pool-managerd/schema"
)

// fakeNode is a gpu.Node with fixed devices.
type fakeNode struct {
	devices []gpu.Device
	err     error
}

var _ gpu.Node = (*fakeNode)(nil)

func (n *fakeNode) Devices(context.Context) ([]gpu.Device, error) {
	if n.err != nil {
		return nil, n.err
	}
	return slices.Clone(n.devices), nil
}

func (n *fakeNode) Events(ctx context.Context) (<-chan gpu.Event, error) {
	ch := make(chan gpu.Event)
	go func() {
		<-ctx.Done()
		close(ch)
	}()
	return ch, nil
}

func (n *fakeNode) Close() error { return nil }

var fakeDevices = []gpu.Device{
	{Index: 0, UUID: "GPU-0", Name: "Fake 24", MemoryTotal: 24 << 30, MemoryFree: 24 << 30},
	{Index: 1, UUID: "GPU-1", Name: "Fake 12", MemoryTotal: 12 << 30, MemoryUsed: 1 << 30, MemoryFree: 11 << 30,
		Processes: []gpu.Process{{PID: 4242, UsedBytes: 1 << 30}}},
}

// healthStub records the ports it is asked about and answers with answer.
type healthStub struct {
	mu     sync.Mutex
	answer engine.Health
	calls  map[int]bool // port → readyBefore
}

func newHealthStub(answer engine.Health) *healthStub {
	return &healthStub{answer: answer, calls: map[int]bool{}}
}

func (h *healthStub) check(_ context.Context, port int, readyBefore bool) engine.Health {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.calls[port] = readyBefore
	return h.answer
}

func (h *healthStub) called() map[int]bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	return maps.Clone(h.calls)
}

// startChild starts a process in a session of its own (its pid is its session
// and process group id), with extra environment; the test kills its process
// group and waits for it when it ends.
func startChild(t *testing.T, env []string, setsid bool, name string, args ...string) *exec.Cmd {
	t.Helper()
	cmd := exec.Command(name, args...)
	cmd.Env = append(os.Environ(), env...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: setsid}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	pid := cmd.Process.Pid
	t.Cleanup(func() {
		if setsid {
			_ = syscall.Kill(-pid, syscall.SIGKILL)
		}
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		if setsid {
			// Whatever the group started is gone too.
			waitFor(t, fmt.Sprintf("session %d to end", pid), func() bool {
				pids, err := proc.Session(pid)
				if err != nil {
					return false
				}
				for _, p := range pids {
					if info, err := proc.Stat(p); err == nil && info.State != 'Z' && info.State != 'X' {
						return false
					}
				}
				return true
			})
		}
	})
	return cmd
}

// waitFor polls cond for up to ten seconds.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// waitForEnv waits until the child's environment (as /proc shows it after its
// exec) has the marker.
func waitForEnv(t *testing.T, pid int, want string) {
	t.Helper()
	waitFor(t, fmt.Sprintf("pid %d to show %s=%s", pid, engine.MarkerEnv, want), func() bool {
		env, err := proc.Environ(pid)
		return err == nil && env[engine.MarkerEnv] == want
	})
}

func startTicks(t *testing.T, pid int) uint64 {
	t.Helper()
	info, err := proc.Stat(pid)
	if err != nil {
		t.Fatalf("stat %d: %v", pid, err)
	}
	return info.StartTicks
}

// deadPID returns the pid and start ticks of a process that has exited and been reaped.
func deadPID(t *testing.T) (int, uint64) {
	t.Helper()
	cmd := exec.Command("sleep", "30")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	pid := cmd.Process.Pid
	ticks := startTicks(t, pid)
	_ = cmd.Process.Kill()
	_ = cmd.Wait()
	if proc.Alive(pid, ticks) {
		t.Fatalf("pid %d is alive after it was killed and reaped", pid)
	}
	return pid, ticks
}

func saveState(t *testing.T, dir string, st *state.State) {
	t.Helper()
	if err := (state.Store{Dir: dir}).Save(st); err != nil {
		t.Fatal(err)
	}
}

// testNode is a node name no other test's engines use.
func testNode(t *testing.T) string {
	return fmt.Sprintf("observe-%d-%s", os.Getpid(), strings.ToLower(strings.NewReplacer("/", "-", "_", "-").Replace(t.Name())))
}

func TestObserveLiveRecordedEngine(t *testing.T) {
	child := startChild(t, nil, true, "sleep", "30")
	pid := child.Process.Pid
	dir := t.TempDir()
	st := state.New()
	st.Engines["chat"] = reconcile.EngineRecord{
		Pool: "chat", Generation: 2, SpecHash: "sha256:x", PID: pid, StartTicks: startTicks(t, pid),
		Port: 18081, ReadyAt: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC),
	}
	st.Engines["loading"] = reconcile.EngineRecord{
		Pool: "loading", Generation: 1, SpecHash: "sha256:y", PID: pid, StartTicks: startTicks(t, pid), Port: 18082,
	}
	saveState(t, dir, st)

	health := newHealthStub(engine.HealthOK)
	obs, err := Observe(context.Background(), Options{
		Node: testNode(t), GPUs: &fakeNode{devices: fakeDevices}, Source: "fake", StateDir: dir, Health: health.check,
	})
	if err != nil {
		t.Fatal(err)
	}
	if obs.Node != testNode(t) || obs.Source != "fake" {
		t.Errorf("Observe: node %q, source %q", obs.Node, obs.Source)
	}
	if diff := cmp.Diff(fakeDevices, obs.GPUs); diff != "" {
		t.Errorf("GPUs (-want +got):\n%s", diff)
	}
	e, ok := obs.Engines["chat"]
	if !ok {
		t.Fatalf("no engine for chat: %+v", obs.Engines)
	}
	want := reconcile.Engine{
		Pool: "chat", Generation: 2, SpecHash: "sha256:x", PID: pid, Port: 18081,
		PIDs: []int{pid}, Alive: true, Health: reconcile.HealthOK, Recorded: true, ReadyAt: st.Engines["chat"].ReadyAt,
	}
	if diff := cmp.Diff(want, e); diff != "" {
		t.Errorf("engine (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff(map[int]bool{18081: true, 18082: false}, health.called()); diff != "" {
		t.Errorf("health checks, port → readyBefore (-want +got):\n%s", diff)
	}
	if len(obs.Pools) != 0 {
		t.Errorf("pools: %+v, want none", obs.Pools)
	}
}

// TestObserveAsksEnginesAtOnce: the health endpoints of the recorded
// engines are asked at once, so that an observation (on the path from a
// config change to its first step) costs one probe's time, not one per
// engine. Each probe here answers only once every engine has been asked; one
// at a time, the first would wait for its context, and read as failing.
func TestObserveAsksEnginesAtOnce(t *testing.T) {
	child := startChild(t, nil, true, "sleep", "30")
	pid := child.Process.Pid
	dir := t.TempDir()
	st := state.New()
	ports := []int{18091, 18092, 18093, 18094}
	for i, port := range ports {
		id := fmt.Sprintf("pool-%d", i)
		st.Engines[id] = reconcile.EngineRecord{
			Pool: id, Generation: 1, SpecHash: "sha256:x", PID: pid, StartTicks: startTicks(t, pid),
			Port: port, ReadyAt: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC),
		}
	}
	saveState(t, dir, st)

	var mu sync.Mutex
	asked := map[int]bool{}
	all := make(chan struct{})
	probe := func(ctx context.Context, port int, _ bool) engine.Health {
		mu.Lock()
		asked[port] = true
		if len(asked) == len(ports) {
			close(all)
		}
		mu.Unlock()
		select {
		case <-all:
			return engine.HealthOK
		case <-ctx.Done():
			return engine.HealthFailing
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	obs, err := Observe(ctx, Options{Node: testNode(t), GPUs: &fakeNode{}, Source: "fake", StateDir: dir, Health: probe})
	if err != nil {
		t.Fatal(err)
	}
	for id, e := range obs.Engines {
		if !e.Alive || e.Health != reconcile.HealthOK {
			t.Errorf("engine %s: alive %v, health %q; want alive and ok", id, e.Alive, e.Health)
		}
	}
	if len(obs.Engines) != len(ports) {
		t.Errorf("engines: %d, want %d", len(obs.Engines), len(ports))
	}
}

func TestObserveDeadRecordedEngine(t *testing.T) {
	pid, ticks := deadPID(t)
	dir := t.TempDir()
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	spec := &schema.Pool{ID: "chat", Node: "n", Engine: schema.EngineLlamaCpp, Devices: []int{1}, VRAM: 4 << 30}
	st := state.New()
	st.Engines["chat"] = reconcile.EngineRecord{Pool: "chat", Generation: 4, SpecHash: "sha256:x", PID: pid, StartTicks: ticks, Port: 18090, Spec: spec}
	// A live pid with the wrong start time is another process: not the engine.
	st.Engines["reused"] = reconcile.EngineRecord{Pool: "reused", Generation: 1, SpecHash: "sha256:y", PID: os.Getpid(), StartTicks: 1, Port: 18091}
	st.Pools["chat"] = restart.Record{
		Failures:            []time.Time{t0, t0.Add(time.Minute)},
		ConsecutiveFailures: 2,
		NextRetry:           t0.Add(2 * time.Minute),
		LastError:           &restart.ErrorRecord{Class: "crash", Message: "exited with status 1", Time: t0},
		BreakerState:        "half-open",
		BreakerRetryAt:      t0.Add(time.Hour),
	}
	st.Pools["quiet"] = restart.Record{Restarts: 3}
	saveState(t, dir, st)

	health := newHealthStub(engine.HealthOK)
	obs, err := Observe(context.Background(), Options{
		Node: testNode(t), GPUs: &fakeNode{}, Source: "fake", StateDir: dir, Health: health.check,
	})
	if err != nil {
		t.Fatal(err)
	}
	wantEngines := map[string]reconcile.Engine{
		"chat": {Pool: "chat", Generation: 4, SpecHash: "sha256:x", Spec: spec, PID: pid, Port: 18090,
			Recorded: true, Exit: "exited with status 1"},
		"reused": {Pool: "reused", Generation: 1, SpecHash: "sha256:y", PID: os.Getpid(), Port: 18091, Recorded: true},
	}
	if diff := cmp.Diff(wantEngines, obs.Engines, cmp.AllowUnexported(schema.Source{})); diff != "" {
		t.Errorf("engines (-want +got):\n%s", diff)
	}
	wantPools := map[string]restart.Record{"chat": st.Pools["chat"], "quiet": st.Pools["quiet"]}
	if diff := cmp.Diff(wantPools, obs.Pools); diff != "" {
		t.Errorf("pools (-want +got):\n%s", diff)
	}
	if calls := health.called(); len(calls) != 0 {
		t.Errorf("health checked for dead engines: %v", calls)
	}
}

func TestObserveIntent(t *testing.T) {
	dir := t.TempDir()
	st := state.New()
	st.Engines["new"] = reconcile.EngineRecord{Pool: "new", Generation: 1, SpecHash: "sha256:z", Intent: true}
	saveState(t, dir, st)
	health := newHealthStub(engine.HealthOK)
	obs, err := Observe(context.Background(), Options{Node: testNode(t), GPUs: &fakeNode{}, Source: "fake", StateDir: dir, Health: health.check})
	if err != nil {
		t.Fatal(err)
	}
	want := reconcile.Engine{Pool: "new", Generation: 1, SpecHash: "sha256:z", Recorded: true, Intent: true}
	if diff := cmp.Diff(want, obs.Engines["new"]); diff != "" {
		t.Errorf("engine (-want +got):\n%s", diff)
	}
	if calls := health.called(); len(calls) != 0 {
		t.Errorf("health checked for an intent: %v", calls)
	}
}

func TestObserveScanProcesses(t *testing.T) {
	node := testNode(t)
	dir := t.TempDir()

	// A recorded, live engine of pool chat.
	recorded := startChild(t, nil, true, "sleep", "30")
	recPID := recorded.Process.Pid

	// An engine of pool scanned that the state file does not know: a shell
	// (the session leader, with --port on its command line) and its worker.
	scannedMarker := engine.Marker{Node: node, Pool: "scanned", Generation: 3, SpecHash: "sha256:x"}.String()
	scanned := startChild(t, []string{engine.MarkerEnv + "=" + scannedMarker}, true,
		"sh", "-c", "sleep 30; exit 0", "engine", "--port", "18123")
	scannedPID := scanned.Process.Pid

	// Another engine of chat, by its marker: the live recorded one wins.
	chatMarker := engine.Marker{Node: node, Pool: "chat", Generation: 5, SpecHash: "sha256:z"}.String()
	dup := startChild(t, []string{engine.MarkerEnv + "=" + chatMarker}, true, "sleep", "30")

	// An engine of another node, and a marked process that leads no session.
	otherMarker := engine.Marker{Node: node + "-other", Pool: "foreign", Generation: 1, SpecHash: "sha256:o"}.String()
	other := startChild(t, []string{engine.MarkerEnv + "=" + otherMarker}, true, "sleep", "30")
	workerMarker := engine.Marker{Node: node, Pool: "worker", Generation: 1, SpecHash: "sha256:w"}.String()
	worker := startChild(t, []string{engine.MarkerEnv + "=" + workerMarker}, false, "sleep", "30")

	// A dead recorded engine of pool revived, and a live unrecorded one found by its marker.
	deadPid, deadTicks := deadPID(t)
	revivedMarker := engine.Marker{Node: node, Pool: "revived", Generation: 8, SpecHash: "sha256:r"}.String()
	revived := startChild(t, []string{engine.MarkerEnv + "=" + revivedMarker}, true, "sleep", "30")

	waitForEnv(t, scannedPID, scannedMarker)
	waitForEnv(t, dup.Process.Pid, chatMarker)
	waitForEnv(t, other.Process.Pid, otherMarker)
	waitForEnv(t, worker.Process.Pid, workerMarker)
	waitForEnv(t, revived.Process.Pid, revivedMarker)
	var scannedPIDs []int
	waitFor(t, "the shell to start its worker", func() bool {
		pids, err := proc.Session(scannedPID)
		if err != nil || len(pids) != 2 {
			return false
		}
		for _, p := range pids {
			if env, err := proc.Environ(p); err != nil || env[engine.MarkerEnv] != scannedMarker {
				return false
			}
			if args, err := proc.Cmdline(p); err != nil || len(args) == 0 {
				return false
			}
		}
		scannedPIDs = pids
		return true
	})
	if args, err := proc.Cmdline(scannedPID); err != nil || engine.PortOf(args) != 18123 {
		t.Fatalf("the shell's command line: %q, %v", args, err)
	}

	st := state.New()
	st.Engines["chat"] = reconcile.EngineRecord{Pool: "chat", Generation: 2, SpecHash: "sha256:c", PID: recPID, StartTicks: startTicks(t, recPID), Port: 18100}
	st.Engines["revived"] = reconcile.EngineRecord{Pool: "revived", Generation: 7, SpecHash: "sha256:r", PID: deadPid, StartTicks: deadTicks, Port: 18101}
	saveState(t, dir, st)

	health := newHealthStub(engine.HealthLoading)
	obs, err := Observe(context.Background(), Options{
		Node: node, GPUs: &fakeNode{devices: fakeDevices}, Source: "fake", StateDir: dir, ScanProcesses: true, Health: health.check,
	})
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]reconcile.Engine{
		"chat": {Pool: "chat", Generation: 2, SpecHash: "sha256:c", PID: recPID, Port: 18100, PIDs: []int{recPID},
			Alive: true, Health: reconcile.HealthLoading, Recorded: true, Unverified: true}, // never recorded Ready
		"scanned": {Pool: "scanned", Generation: 3, SpecHash: "sha256:x", PID: scannedPID, Port: 18123, PIDs: scannedPIDs,
			Alive: true, Health: reconcile.HealthLoading},
		"revived": {Pool: "revived", Generation: 8, SpecHash: "sha256:r", PID: revived.Process.Pid, PIDs: []int{revived.Process.Pid},
			Alive: true, Health: reconcile.HealthLoading},
	}
	if diff := cmp.Diff(want, obs.Engines); diff != "" {
		t.Errorf("engines (-want +got):\n%s", diff)
	}
	if !slices.Contains(obs.Engines["scanned"].PIDs, scannedPID) {
		t.Errorf("scanned engine's PIDs %v lack its leader %d", obs.Engines["scanned"].PIDs, scannedPID)
	}
	// The recorded engine has no readyAt and the found ones were never seen
	// ready: none counts as once ready. The revived one's port is unknown
	// (its command line has no --port).
	if diff := cmp.Diff(map[int]bool{18100: false, 18123: false, 0: false}, health.called()); diff != "" {
		t.Errorf("health checks, port → readyBefore (-want +got):\n%s", diff)
	}

	// Without ScanProcesses, only the state file counts.
	obs, err = Observe(context.Background(), Options{Node: node, GPUs: &fakeNode{}, Source: "fake", StateDir: dir, Health: health.check})
	if err != nil {
		t.Fatal(err)
	}
	if got := sortedEngineKeys(obs.Engines); !slices.Equal(got, []string{"chat", "revived"}) {
		t.Errorf("engines without a scan: %v, want chat and revived", got)
	}
	if e := obs.Engines["revived"]; e.Alive || !e.Recorded || e.PID != deadPid {
		t.Errorf("revived without a scan: %+v, want its dead record", e)
	}
}

func sortedEngineKeys(m map[string]reconcile.Engine) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}

func TestObserveFreshNode(t *testing.T) {
	for _, tc := range []struct {
		name     string
		stateDir func(t *testing.T) string
	}{
		{"missing state dir", func(t *testing.T) string { return filepath.Join(t.TempDir(), "state") }},
		{"empty state dir", func(t *testing.T) string { return t.TempDir() }},
		{"no state dir", func(*testing.T) string { return "" }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := tc.stateDir(t)
			health := newHealthStub(engine.HealthOK)
			obs, err := Observe(context.Background(), Options{
				Node: "n", GPUs: &fakeNode{devices: fakeDevices}, Source: "fake", StateDir: dir, Health: health.check,
			})
			if err != nil {
				t.Fatal(err)
			}
			want := reconcile.Observed{Node: "n", Source: "fake", StateDir: dir, GPUs: fakeDevices,
				Engines: map[string]reconcile.Engine{}, Pools: map[string]restart.Record{}}
			if diff := cmp.Diff(want, obs); diff != "" {
				t.Errorf("observed (-want +got):\n%s", diff)
			}
			if dir != "" {
				if _, err := os.Stat(filepath.Join(dir, state.FileName)); !errors.Is(err, os.ErrNotExist) {
					t.Errorf("Observe wrote a state file: %v", err)
				}
			}
		})
	}
	// A missing directory is not created.
	dir := filepath.Join(t.TempDir(), "state")
	if _, err := Observe(context.Background(), Options{Node: "n", GPUs: &fakeNode{}, StateDir: dir}); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(dir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("Observe created the state directory: %v", err)
	}
}

func TestObserveBadStateFile(t *testing.T) {
	for _, tc := range []struct {
		name    string
		content string
		is      error
		wantMsg string
	}{
		{"corrupt", "{not json", state.ErrCorrupt, "is corrupt: line 1, column 2: "},
		{"empty", "", state.ErrCorrupt, "is corrupt"},
		{"no version", `{"engines": {}, "pools": {}}`, state.ErrCorrupt, "no version"},
		{"newer version", `{"version": 99, "engines": {}, "pools": {}}`, state.ErrUnknownVersion, "has unknown version 99"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			path := filepath.Join(dir, state.FileName)
			if err := os.WriteFile(path, []byte(tc.content), 0o644); err != nil {
				t.Fatal(err)
			}
			_, err := Observe(context.Background(), Options{Node: "n", GPUs: &fakeNode{}, Source: "fake", StateDir: dir})
			if !errors.Is(err, tc.is) {
				t.Fatalf("Observe: %v, want an error wrapping %v", err, tc.is)
			}
			if !strings.Contains(err.Error(), path) || !strings.Contains(err.Error(), tc.wantMsg) {
				t.Errorf("Observe: %v, want the path %s and %q", err, path, tc.wantMsg)
			}
			data, err := os.ReadFile(path)
			if err != nil || string(data) != tc.content {
				t.Errorf("the state file changed: %q, %v", data, err)
			}
		})
	}
}

func TestObserveGPUError(t *testing.T) {
	boom := errors.New("boom")
	_, err := Observe(context.Background(), Options{Node: "n", GPUs: &fakeNode{err: boom}, Source: "sim:/x"})
	if !errors.Is(err, boom) || !strings.Contains(err.Error(), "observe GPUs (sim:/x)") {
		t.Errorf("Observe: %v, want observe GPUs (sim:/x) wrapping boom", err)
	}
}

func TestNeeds(t *testing.T) {
	missing := filepath.Join(t.TempDir(), "missing.gguf")
	d := reconcile.Desired{
		Node: "n",
		Pools: map[string]*schema.Pool{
			"split": {ID: "split", Engine: schema.EngineLlamaCpp, Model: schema.Model{Path: missing, Ctx: 4096},
				Devices: []int{0, 1}, Split: []float64{0.75, 0.25}, VRAM: 16 << 30},
			"even":  {ID: "even", Engine: schema.EngineVLLM, Devices: []int{0, 1, 2}, VRAM: 3 << 30},
			"one":   {ID: "one", Engine: schema.EngineTGI, Devices: []int{1}, VRAM: 5 << 30},
			"gguf":  {ID: "gguf", Engine: schema.EngineLlamaCpp, Model: schema.Model{Path: missing, Ctx: 4096}, Devices: []int{0}},
			"vllm":  {ID: "vllm", Engine: schema.EngineVLLM, Model: schema.Model{Path: "/models/x"}, Devices: []int{0}},
			"short": {ID: "short", Engine: schema.EngineVLLM, Devices: []int{0, 1}, Split: []float64{1}, VRAM: 1 << 30},
		},
		Needs: map[string]reconcile.Need{},
	}
	Needs(context.Background(), &d)

	declared := map[string]reconcile.Need{
		"split": {PerGPU: []uint64{12 << 30, 4 << 30}, Source: "declared"},
		"even":  {PerGPU: []uint64{1 << 30, 1 << 30, 1 << 30}, Source: "declared"},
		"one":   {PerGPU: []uint64{5 << 30}, Source: "declared"},
	}
	for id, want := range declared {
		if diff := cmp.Diff(want, d.Needs[id]); diff != "" {
			t.Errorf("need of %s (-want +got):\n%s", id, diff)
		}
	}
	for id, wantErr := range map[string][]string{
		"gguf":  {missing, "declare vram"},
		"vllm":  {"vram must be declared for a vllm pool"},
		"short": {"a split of 1 shares for 2 devices"},
	} {
		n, ok := d.Needs[id]
		if !ok {
			t.Errorf("no need for %s", id)
			continue
		}
		if n.PerGPU != nil || n.Source != "" {
			t.Errorf("need of %s: %+v, want only an error", id, n)
		}
		for _, w := range wantErr {
			if !strings.Contains(n.Err, w) {
				t.Errorf("need of %s: error %q, want it to mention %q", id, n.Err, w)
			}
		}
	}
	if len(d.Needs) != len(d.Pools) {
		t.Errorf("%d needs for %d pools", len(d.Needs), len(d.Pools))
	}

	// NeedOf is the same for one pool.
	if diff := cmp.Diff(declared["split"], NeedOf(context.Background(), d.Pools["split"])); diff != "" {
		t.Errorf("NeedOf(split) (-want +got):\n%s", diff)
	}
	if n := NeedOf(context.Background(), d.Pools["gguf"]); !strings.Contains(n.Err, missing) {
		t.Errorf("NeedOf(gguf).Err = %q, want it to mention %s", n.Err, missing)
	}
}

// A vLLM-style model's weights are the sizes of its weight files, from its
// directory or its manifest; anything else in it (config, tokenizer) does
// not count, and an unknown size makes the whole unknown.
func TestNeedWeights(t *testing.T) {
	dir := t.TempDir()
	for name, size := range map[string]int{"model-00001.safetensors": 3000, "model-00002.safetensors": 2000, "config.json": 50, "tokenizer.json": 700, "pytorch_model.bin": 1000} {
		if err := os.WriteFile(filepath.Join(dir, name), make([]byte, size), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Symlink(filepath.Join(dir, "pytorch_model.bin"), filepath.Join(dir, "linked.pt")); err != nil {
		t.Fatal(err)
	}
	manifest := []schema.ModelFile{{Path: "a.safetensors", Size: 10}, {Path: "sub/b.safetensors", Size: 20}, {Path: "config.json", Size: 5}}
	for _, tc := range []struct {
		name string
		pool *schema.Pool
		want uint64
	}{
		{"directory", &schema.Pool{ID: "d", Engine: schema.EngineVLLM, Model: schema.Model{Path: dir}, Devices: []int{0}, VRAM: 1 << 30}, 3000 + 2000 + 1000 + 1000},
		{"manifest", &schema.Pool{ID: "m", Engine: schema.EngineTGI, Model: schema.Model{Source: "https://example.com/m", Files: manifest}, Devices: []int{0}, VRAM: 1 << 30}, 30},
		{"manifest without a size", &schema.Pool{ID: "u", Engine: schema.EngineSGLang, Model: schema.Model{Source: "https://example.com/m", Files: []schema.ModelFile{{Path: "a.safetensors"}}}, Devices: []int{0}, VRAM: 1 << 30}, 0},
		{"no directory", &schema.Pool{ID: "n", Engine: schema.EngineVLLM, Model: schema.Model{Path: filepath.Join(dir, "missing")}, Devices: []int{0}, VRAM: 1 << 30}, 0},
		{"llamacpp counts none", &schema.Pool{ID: "l", Engine: schema.EngineLlamaCpp, Model: schema.Model{Path: dir}, Devices: []int{0}, VRAM: 1 << 30}, 0},
	} {
		if got := NeedOf(context.Background(), tc.pool).Weights; got != tc.want {
			t.Errorf("%s: weights %d, want %d", tc.name, got, tc.want)
		}
	}
}
