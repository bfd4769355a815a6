package executor

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/poolmanagerd/pool-managerd/drivers/engine"
	"github.com/poolmanagerd/pool-managerd/drivers/gpu"
	"github.com/poolmanagerd/pool-managerd/internal/state"
	"github.com/poolmanagerd/pool-managerd/reconcile"
	"github.com/poolmanagerd/pool-managerd/reconcile/restart"
	"github.com/poolmanagerd/pool-managerd/schema"
)

// memStore is a state file in memory.
type memStore struct {
	mu sync.Mutex
	st *state.State
}

func (m *memStore) Load() (*state.State, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.st == nil {
		return state.New(), nil
	}
	c := *m.st
	return &c, nil
}

func (m *memStore) Save(s *state.State) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	c := *s
	m.st = &c
	return nil
}

// fakeProcess is an engine that stops as told.
type fakeProcess struct {
	pid      int
	exit     engine.ExitStatus
	killed   bool // Stop needs SIGKILL
	onStop   func()
	done     chan struct{}
	stopOnce sync.Once
	// health, when set, is what its health check answers; else ok.
	health func() engine.Health
}

func (p *fakeProcess) PID() int                { return p.pid }
func (p *fakeProcess) StartTicks() uint64      { return 1 }
func (p *fakeProcess) Port() int               { return 18000 }
func (p *fakeProcess) LogPath() string         { return "" }
func (p *fakeProcess) Argv() []string          { return []string{"engine"} }
func (p *fakeProcess) Exited() <-chan struct{} { return p.done }
func (p *fakeProcess) Exit() engine.ExitStatus { return p.exit }
func (p *fakeProcess) Session() []int          { return []int{p.pid} }
func (p *fakeProcess) LogTail() string         { return "" }
func (p *fakeProcess) Health(context.Context) engine.Health {
	if p.health != nil {
		return p.health()
	}
	return engine.HealthOK
}
func (p *fakeProcess) Stop(context.Context, time.Duration, time.Duration) (engine.StopReport, error) {
	if p.onStop != nil {
		p.onStop()
	}
	p.stopOnce.Do(func() { close(p.done) })
	return engine.StopReport{Killed: p.killed}, nil
}

// fakeDriver adopts the processes it is given; Start is counted.
type fakeDriver struct {
	mu     sync.Mutex
	procs  map[int]*fakeProcess
	starts int
	// requests are the Starts' requests.
	requests []engine.StartRequest
}

func (d *fakeDriver) Start(_ context.Context, req engine.StartRequest) (engine.Process, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.starts++
	d.requests = append(d.requests, req)
	return nil, errors.New("the test starts no engine")
}

func (d *fakeDriver) Adopt(_ context.Context, ref engine.Ref) (engine.Process, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if p, ok := d.procs[ref.PID]; ok {
		return p, nil
	}
	return nil, engine.ErrGone
}

func (d *fakeDriver) Cleanup(context.Context, engine.Ref) error { return nil }

type noGPUs struct{}

func (noGPUs) Devices(context.Context) ([]gpu.Device, error)    { return nil, nil }
func (noGPUs) Events(context.Context) (<-chan gpu.Event, error) { return nil, nil }
func (noGPUs) Close() error                                     { return nil }

func testPool() *schema.Pool {
	p := &schema.Pool{ID: "chat", Node: "gpu-01", Engine: schema.EngineLlamaCpp, Devices: []int{0}, Restart: reconcile.DefaultRestartPolicy()}
	p.Restart.Jitter = 0
	return p
}

type harness struct {
	x      *Executor
	driver *fakeDriver
	store  *memStore
	events []Event
	mu     sync.Mutex
	now    time.Time
}

func newHarness(t *testing.T, st *state.State) *harness {
	t.Helper()
	h := &harness{driver: &fakeDriver{procs: map[int]*fakeProcess{}}, store: &memStore{st: st}, now: time.Date(2026, 12, 7, 12, 0, 0, 0, time.UTC)}
	h.x = &Executor{Node: "gpu-01", GPUs: noGPUs{}, Engines: h.driver, Store: h.store,
		Now: func() time.Time { return h.now }, Rand: func() float64 { return 0.5 },
		Report: func(e Event) {
			h.mu.Lock()
			defer h.mu.Unlock()
			h.events = append(h.events, e)
		}}
	return h
}

// readyState records pool's engine pid Ready an hour ago.
func readyState(pool *schema.Pool, pid int, now time.Time) *state.State {
	st := state.New()
	st.Engines[pool.ID] = reconcile.EngineRecord{Pool: pool.ID, Generation: 1, SpecHash: reconcile.SpecHash(pool), Spec: pool,
		PID: pid, StartTicks: 1, Port: 18000, StartedAt: now.Add(-time.Hour), ReadyAt: now.Add(-time.Hour)}
	return st
}

// lifecycleOf is what the lifecycle says of the pool from the executor's
// state, with the engine alive and healthy as observed.
func (h *harness) lifecycleOf(t *testing.T, pool *schema.Pool) reconcile.Status {
	t.Helper()
	st, err := h.x.State()
	if err != nil {
		t.Fatal(err)
	}
	rec := st.Engines[pool.ID]
	observed := &reconcile.Engine{Pool: pool.ID, SpecHash: rec.SpecHash, Spec: rec.Spec, PID: rec.PID, Alive: true, Health: reconcile.HealthOK, Recorded: true, ReadyAt: rec.ReadyAt}
	var r *reconcile.EngineRecord
	if _, ok := st.Engines[pool.ID]; ok {
		r = &rec
	}
	return reconcile.Lifecycle(reconcile.Facts{Spec: pool, Engine: reconcile.WithRecord(observed, r), History: st.Pools[pool.ID]}, h.now)
}

// Regression: a draining engine was reported Ready for the whole drain and
// stop grace. From the moment a stop begins the pool is Draining.
func TestStopMarksDrainingBeforeTheEngineGoes(t *testing.T) {
	pool := testPool()
	now := time.Date(2026, 12, 7, 12, 0, 0, 0, time.UTC)
	h := newHarness(t, readyState(pool, 4242, now))
	if got := h.lifecycleOf(t, pool); !got.Ready {
		t.Fatalf("before the stop: %+v, want Ready", got)
	}
	var during reconcile.Status
	h.driver.procs[4242] = &fakeProcess{pid: 4242, done: make(chan struct{}), onStop: func() { during = h.lifecycleOf(t, pool) }}
	changed := testPool()
	changed.Model.Ctx = 4096
	c := reconcile.Change{Action: reconcile.Replace, Pool: pool.ID, PID: 4242, Spec: changed, SpecHash: reconcile.SpecHash(changed)}
	if err := h.x.stop(context.Background(), c); err != nil {
		t.Fatal(err)
	}
	if during.Ready || during.Phase != reconcile.Draining {
		t.Errorf("while the engine was being stopped: %+v, want Draining and not ready", during)
	}
	saved, _ := h.store.Load()
	if _, ok := saved.Engines[pool.ID]; ok {
		t.Error("the stopped engine's record was kept")
	}
}

func TestBeginStopIsSeenAtOnce(t *testing.T) {
	pool := testPool()
	now := time.Date(2026, 12, 7, 12, 0, 0, 0, time.UTC)
	h := newHarness(t, readyState(pool, 4242, now))
	h.x.BeginStop(pool.ID, 4242)
	if got := h.lifecycleOf(t, pool); got.Ready || got.Phase != reconcile.Draining {
		t.Errorf("after BeginStop: %+v, want Draining and not ready", got)
	}
	h.x.BeginStop(pool.ID, 999) // another engine's pid: nothing
	st, _ := h.x.State()
	if !st.Engines[pool.ID].DrainingSince.Equal(now) {
		t.Errorf("DrainingSince = %v, want %v", st.Engines[pool.ID].DrainingSince, now)
	}
}

// Regression: a SIGKILL after the stop grace was said nowhere.
func TestStopReportsTheSIGKILL(t *testing.T) {
	pool := testPool()
	now := time.Date(2026, 12, 7, 12, 0, 0, 0, time.UTC)
	h := newHarness(t, readyState(pool, 4242, now))
	h.driver.procs[4242] = &fakeProcess{pid: 4242, done: make(chan struct{}), killed: true}
	if err := h.x.StopPool(context.Background(), pool.ID); err != nil {
		t.Fatal(err)
	}
	var kills []Event
	for _, e := range h.events {
		if e.Killed {
			kills = append(kills, e)
		}
	}
	if len(kills) != 1 || kills[0].PID != 4242 || kills[0].Grace != pool.Restart.StopGrace || kills[0].Pool != pool.ID {
		t.Errorf("kill events %+v, want one for pid 4242 with grace %v", kills, pool.Restart.StopGrace)
	}
}

// Regression: an engine killed by a signal was classed exited. Death by
// signal of an engine this process spawned is signaled, with the signal's
// name; an adopted engine's status is unknown; an OOM kill is oom_killed.
func TestRecordExitClassifiesByExitStatus(t *testing.T) {
	for _, tt := range []struct {
		name      string
		exit      engine.ExitStatus
		wantClass string
		wantIn    string
	}{
		{"killed by a signal", engine.ExitStatus{Code: -1, Signal: "SIGKILL"}, restart.ClassSignaled, "was killed by SIGKILL"},
		{"segfault", engine.ExitStatus{Code: -1, Signal: "SIGSEGV"}, restart.ClassSignaled, "SIGSEGV"},
		{"the OOM killer", engine.ExitStatus{Code: -1, Signal: "SIGKILL", OOMKilled: true}, restart.ClassOOMKilled, "OOM killer"},
		{"an exit code", engine.ExitStatus{Code: 3}, restart.ClassExited, "exited with status 3"},
		{"adopted: status unknown", engine.ExitStatus{Code: -1}, restart.ClassExited, "status unknown"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			pool := testPool()
			now := time.Date(2026, 12, 7, 12, 0, 0, 0, time.UTC)
			h := newHarness(t, readyState(pool, 4242, now))
			o := h.x.RecordExit(context.Background(), pool, 4242, tt.exit)
			if o.Failure == nil || o.Failure.Class != tt.wantClass || !strings.Contains(o.Failure.Message, tt.wantIn) {
				t.Fatalf("RecordExit = %+v, want class %s with %q", o.Failure, tt.wantClass, tt.wantIn)
			}
			st, _ := h.x.State()
			if got := st.Pools[pool.ID].LastError; got == nil || got.Class != tt.wantClass {
				t.Errorf("recorded %+v, want class %s", got, tt.wantClass)
			}
			if o.NotBefore.IsZero() || !o.NotBefore.After(now) {
				t.Errorf("NotBefore %v: the backoff says when to restart", o.NotBefore)
			}
			// Recorded once: the same exit again changes nothing.
			again := h.x.RecordExit(context.Background(), pool, 4242, tt.exit)
			if again.Failure != nil {
				t.Errorf("the exit was recorded twice: %+v", again)
			}
			if h.driver.starts != 0 {
				t.Errorf("%d starts: recording an exit starts nothing", h.driver.starts)
			}
		})
	}
}

// The executor never sleeps out a backoff: a restart that finds its engine
// dead after Ready records that and starts nothing; its outcome says when.
func TestRestartOfADeadEngineDefersToTheBackoff(t *testing.T) {
	pool := testPool()
	now := time.Date(2026, 12, 7, 12, 0, 0, 0, time.UTC)
	h := newHarness(t, readyState(pool, 4242, now))
	c := reconcile.Change{Action: reconcile.Restart, Pool: pool.ID, Spec: pool, SpecHash: reconcile.SpecHash(pool)}
	done := make(chan Result, 1)
	go func() {
		res, _ := h.x.Apply(context.Background(), &reconcile.NodePlan{Node: "gpu-01", Changes: []reconcile.Change{c}})
		done <- res
	}()
	var res Result
	select {
	case res = <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("Apply did not return: the executor waits out the backoff")
	}
	if len(res.Outcomes) != 1 {
		t.Fatalf("outcomes %+v", res.Outcomes)
	}
	o := res.Outcomes[0]
	want := now.Add(pool.Restart.InitialBackoff)
	if o.Phase != reconcile.Unready || !o.NotBefore.Equal(want) || o.Failure == nil || o.Failure.Class != restart.ClassExited {
		t.Errorf("outcome %+v, want Unready, not before %v, class exited", o, want)
	}
	if h.driver.starts != 0 {
		t.Errorf("%d starts before the backoff elapsed", h.driver.starts)
	}
	// The plan now says when: the lifecycle has the pool waiting.
	st, _ := h.x.State()
	e := &reconcile.Engine{Pool: pool.ID, SpecHash: reconcile.SpecHash(pool), PID: 4242, Recorded: true, ReadyAt: st.Engines[pool.ID].ReadyAt}
	if got := reconcile.Lifecycle(reconcile.Facts{Spec: pool, Engine: e, History: st.Pools[pool.ID]}, now); got.Next != reconcile.NextWait || !got.At.Equal(want) {
		t.Errorf("lifecycle after the death was recorded: %+v, want wait until %v", got, want)
	}
}

// A driver fault makes the lifecycle say Unready at once, before the stop.
func TestRecordFaultIsUnreadyAtOnce(t *testing.T) {
	pool := testPool()
	now := time.Date(2026, 12, 7, 12, 0, 0, 0, time.UTC)
	h := newHarness(t, readyState(pool, 4242, now))
	h.now = now.Add(time.Second)
	o := h.x.RecordFault(pool, restart.Failure{Class: restart.ClassDriverReset, Message: "GPU 0 reported Xid 79"})
	if o.Phase != reconcile.Unready {
		t.Errorf("RecordFault phase %s, want Unready", o.Phase)
	}
	if got := h.lifecycleOf(t, pool); got.Ready || got.Phase != reconcile.Unready || got.Next != reconcile.NextRestart {
		t.Errorf("after the fault, engine still running: %+v, want Unready, restart", got)
	}
}

// An engine awaited until Ready is listed by Loading, with its start and its
// last health answer, until it passes its health check (apply's progress).
func TestLoadingListsTheEnginesAwaited(t *testing.T) {
	pool := testPool()
	now := time.Date(2026, 12, 7, 12, 0, 0, 0, time.UTC)
	st := readyState(pool, 4242, now)
	rec := st.Engines[pool.ID]
	rec.ReadyAt, rec.StartedAt = time.Time{}, now.Add(-5*time.Second) // still loading
	st.Engines[pool.ID] = rec
	h := newHarness(t, st)
	// The first health check answers loading; the second waits for the
	// test, which then sees the first answer recorded, and answers ok.
	second, proceed := make(chan struct{}), make(chan struct{})
	calls := 0
	health := func() engine.Health {
		calls++
		if calls == 1 {
			return engine.HealthLoading
		}
		if calls == 2 {
			close(second)
			<-proceed
		}
		return engine.HealthOK
	}
	h.driver.procs[4242] = &fakeProcess{pid: 4242, done: make(chan struct{}), health: health}
	if got := h.x.Loading(); len(got) != 0 {
		t.Fatalf("Loading before the apply: %+v", got)
	}
	c := reconcile.Change{Action: reconcile.Update, Pool: pool.ID, Spec: pool, SpecHash: reconcile.SpecHash(pool), PID: 4242}
	done := make(chan Result, 1)
	go func() {
		res, _ := h.x.Apply(context.Background(), &reconcile.NodePlan{Node: "gpu-01", Changes: []reconcile.Change{c}})
		done <- res
	}()
	select {
	case <-second:
	case res := <-done:
		t.Fatalf("Apply returned before its second health check: %+v", res)
	}
	want := Loading{Pool: pool.ID, Engine: pool.Engine, PID: 4242, Since: rec.StartedAt, Health: engine.HealthLoading}
	if got := h.x.Loading(); len(got) != 1 || got[0] != want {
		t.Errorf("Loading while the engine loads: %+v, want [%+v]", got, want)
	}
	close(proceed)
	res := <-done
	if len(res.Outcomes) != 1 {
		t.Fatalf("outcomes %+v, want one", res.Outcomes)
	}
	// (noGPUs fails the placement check that follows the health check.)
	if got := h.x.Loading(); len(got) != 0 {
		t.Errorf("Loading after the health check passed: %+v, want none", got)
	}
}
