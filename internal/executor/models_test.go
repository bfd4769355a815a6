package executor

import (
	"context"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/poolmanagerd/pool-managerd/drivers/model/fetch"
	"github.com/poolmanagerd/pool-managerd/internal/state"
	"github.com/poolmanagerd/pool-managerd/reconcile"
	"github.com/poolmanagerd/pool-managerd/reconcile/restart"
	"github.com/poolmanagerd/pool-managerd/schema"
)

// restart may not import drivers: the fetch package's classes are held to
// restart's here.
func TestFetchClassesAreRestartClasses(t *testing.T) {
	fetchClasses := []string{fetch.ClassDigestMismatch, fetch.ClassInsufficientDisk, fetch.ClassHTTP, fetch.ClassStalled,
		fetch.ClassNetwork, fetch.ClassNotCached}
	if !slices.Equal(fetchClasses, restart.FetchClasses) {
		t.Fatalf("fetch classes %v, restart's %v", fetchClasses, restart.FetchClasses)
	}
	for _, c := range restart.FetchClasses {
		if !slices.Contains(restart.Classes, c) {
			t.Errorf("%s is not in restart.Classes (metrics.Known would not export it)", c)
		}
	}
}

const testDigest = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"

func sourcePool() *schema.Pool {
	p := testPool()
	p.Model = schema.Model{Source: "https://models.example/m/model.gguf", SHA256: testDigest, Ctx: 4096}
	return p
}

// fakeModels stands in for the model cache: it reports progress, then
// returns its path or its error.
type fakeModels struct {
	path string
	err  error
	// during is what the executor said of the pool while the fetch ran.
	during func()
	calls  int
}

func (m *fakeModels) Ensure(_ context.Context, _ *schema.Pool, progress func(reconcile.Fetch)) (string, error) {
	m.calls++
	progress(reconcile.Fetch{Done: 1 << 20, Total: 4 << 20, BytesPerSecond: 1 << 20})
	if m.during != nil {
		m.during()
	}
	return m.path, m.err
}

// A pool with a model.source gets its model before anything is spawned:
// Fetching while it downloads, then the engine starts with the cache's path,
// while the record keeps the pool's spec (source and digest, no cache root).
func TestStartFetchesTheModelFirst(t *testing.T) {
	pool := sourcePool()
	h := newHarness(t, state.New())
	h.x.GPUs = oneGPU{}
	const cached = "/var/lib/pool-managerd/models/sha256/" + testDigest + "/model.gguf"
	var fetching map[string]reconcile.Fetch
	var phase reconcile.Phase
	m := &fakeModels{path: cached, during: func() {
		fetching = h.x.Fetches()
		f := fetching[pool.ID]
		phase = reconcile.Lifecycle(reconcile.Facts{Spec: pool, Fetch: &f}, h.now).Phase
	}}
	h.x.Models = m
	var recorded *schema.Pool
	h.x.Step = func(_, step string) {
		if step == StepIntent {
			st, _ := h.x.State()
			recorded = st.Engines[pool.ID].Spec
		}
	}
	c := reconcile.Change{Action: reconcile.Create, Pool: pool.ID, Spec: pool, SpecHash: reconcile.SpecHash(pool),
		Need: []reconcile.GPUNeed{{Index: 0, Need: 2 << 30, Free: 24 << 30}}}
	if _, err := h.x.Apply(context.Background(), &reconcile.NodePlan{Node: "gpu-01", Changes: []reconcile.Change{c}}); err != nil {
		t.Fatal(err)
	}
	if f, ok := fetching[pool.ID]; !ok || f.Done != 1<<20 || f.Total != 4<<20 {
		t.Errorf("while fetching, Fetches() = %v, want the pool's progress", fetching)
	}
	if phase != reconcile.Fetching {
		t.Errorf("while fetching the pool is %s, want Fetching", phase)
	}
	if len(h.x.Fetches()) != 0 {
		t.Errorf("after the fetch, Fetches() = %v, want none", h.x.Fetches())
	}
	if len(h.driver.requests) != 1 {
		t.Fatalf("%d spawns, want 1", len(h.driver.requests))
	}
	if got := h.driver.requests[0].Pool.Model.Path; got != cached {
		t.Errorf("spawned with model path %q, want the cache's %q", got, cached)
	}
	if recorded == nil || recorded.Model.Path != "" || recorded.Model.Source != pool.Model.Source || recorded.Model.SHA256 != testDigest {
		t.Errorf("recorded spec's model %+v, want the pool's own (source and digest, no path)", recorded)
	}
	if pool.Model.Path != "" {
		t.Errorf("the pool's spec was changed: model path %q", pool.Model.Path)
	}
	var begins, ends int
	for _, e := range h.events {
		if e.FetchBegins && e.Phase == reconcile.Fetching {
			begins++
		}
		if e.FetchEnds {
			ends++
		}
	}
	if begins != 1 || ends != 1 {
		t.Errorf("%d fetch-begins and %d fetch-ends events, want one each: %+v", begins, ends, h.events)
	}
}

// A failed fetch is the pool's failure, with the fetch's class and hint,
// counted for backoff; nothing is spawned. So is a source with no Models.
func TestFailedFetchSpawnsNothing(t *testing.T) {
	for _, tc := range []struct {
		name      string
		models    Models
		wantClass string
	}{
		{"digest mismatch", &fakeModels{err: &fetch.Error{Class: fetch.ClassDigestMismatch, Message: "sha256 is 00…, declared 01…", Hint: "check the digest"}},
			restart.ClassModelDigestMismatch},
		{"HTTP 404", &fakeModels{err: &fetch.Error{Class: fetch.ClassHTTP, Code: 404, Message: "GET https://models.example/m/model.gguf: HTTP 404 Not Found"}},
			restart.ClassFetchHTTP},
		{"no model cache", nil, restart.ClassModelNotCached},
	} {
		t.Run(tc.name, func(t *testing.T) {
			pool := sourcePool()
			h := newHarness(t, state.New())
			h.x.GPUs = oneGPU{}
			h.x.Models = tc.models
			c := reconcile.Change{Action: reconcile.Create, Pool: pool.ID, Spec: pool, SpecHash: reconcile.SpecHash(pool),
				Need: []reconcile.GPUNeed{{Index: 0, Need: 2 << 30, Free: 24 << 30}}}
			res, _ := h.x.Apply(context.Background(), &reconcile.NodePlan{Node: "gpu-01", Changes: []reconcile.Change{c}})
			if h.driver.starts != 0 {
				t.Fatalf("%d spawns, want none", h.driver.starts)
			}
			if len(res.Outcomes) != 1 {
				t.Fatalf("outcomes %+v", res.Outcomes)
			}
			o := res.Outcomes[0]
			if o.Phase != reconcile.Unready || o.Failure == nil || o.Failure.Class != tc.wantClass || o.Failure.Hint == "" {
				t.Fatalf("outcome %+v (failure %+v), want Unready with %s and a hint", o, o.Failure, tc.wantClass)
			}
			if m, ok := tc.models.(*fakeModels); ok && o.Failure.Message != m.err.(*fetch.Error).Message {
				t.Errorf("message %q, want the fetch's", o.Failure.Message)
			}
			st, _ := h.x.State()
			if st.Pools[pool.ID].NextRetry.IsZero() {
				t.Errorf("no backoff recorded: %+v", st.Pools[pool.ID])
			}
			if _, ok := st.Engines[pool.ID]; ok {
				t.Errorf("an engine is recorded: %+v", st.Engines[pool.ID])
			}
		})
	}
}

// A plan made before the model was here has no VRAM need for the pool: the
// start checks it once the model is fetched, and spawns nothing when the
// GPU lacks it.
func TestDeferredNeedIsCheckedAfterTheFetch(t *testing.T) {
	for _, tc := range []struct {
		name       string
		vram       int64
		wantStarts int
	}{
		{"too big: nothing is spawned", 30 << 30, 0},
		{"fits: the engine is spawned", 8 << 30, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			pool := sourcePool()
			pool.VRAM = tc.vram
			h := newHarness(t, state.New())
			h.x.GPUs = oneGPU{}
			h.x.Models = &fakeModels{path: "/cache/model.gguf"}
			c := reconcile.Change{Action: reconcile.Create, Pool: pool.ID, Spec: pool, SpecHash: reconcile.SpecHash(pool)}
			res, _ := h.x.Apply(context.Background(), &reconcile.NodePlan{Node: "gpu-01", Changes: []reconcile.Change{c}})
			if h.driver.starts != tc.wantStarts {
				t.Fatalf("%d spawns, want %d", h.driver.starts, tc.wantStarts)
			}
			if tc.wantStarts == 0 {
				if o := res.Outcomes[0]; o.Failure == nil || o.Failure.Class != restart.ClassInsufficientVRAM {
					t.Fatalf("outcome %+v, want insufficient_vram", o)
				}
				return
			}
			if got := h.driver.requests[0].Need; got != uint64(tc.vram) {
				t.Errorf("spawn's need %d, want %d", got, tc.vram)
			}
		})
	}
}

// Regression (issue 15 review): a replace stopped the running engine first
// and fetched the new spec's model after, so the pool was down for the whole
// download and stayed down when the fetch failed. The model is got first,
// while the engine serves the old spec (Ready, its replace next); the engine
// is stopped only once the model is in the cache. A failed fetch stops
// nothing: the failure is the replace's, and its next try waits for the
// backoff.
func TestReplaceFetchesBeforeItStopsTheEngine(t *testing.T) {
	const cached = "/var/lib/pool-managerd/models/sha256/" + testDigest + "/model.gguf"
	notFound := &fetch.Error{Class: fetch.ClassHTTP, Code: 404, Message: "GET https://models.example/m/other.gguf: HTTP 404 Not Found"}
	for _, tc := range []struct {
		name     string
		fetchErr error
	}{
		{"fetched: then stopped and replaced", nil},
		{"404: the engine serves on", notFound},
	} {
		t.Run(tc.name, func(t *testing.T) {
			old := sourcePool()
			h := newHarness(t, readyState(old, 4242, time.Date(2026, 12, 7, 12, 0, 0, 0, time.UTC)))
			h.x.GPUs = oneGPU{}
			stopped := false
			h.driver.procs[4242] = &fakeProcess{pid: 4242, done: make(chan struct{}), onStop: func() { stopped = true }}
			changed := sourcePool()
			changed.Model.Source = "https://models.example/m/other.gguf"
			changed.Model.SHA256 = strings.Repeat("b", 64)
			var during reconcile.Status
			var fetching map[string]reconcile.Fetch
			var stoppedDuring bool
			m := &fakeModels{path: cached, err: tc.fetchErr, during: func() {
				stoppedDuring, fetching = stopped, h.x.Fetches()
				during = h.lifecycleOf(t, changed)
			}}
			h.x.Models = m
			c := reconcile.Change{Action: reconcile.Replace, Pool: old.ID, PID: 4242, Spec: changed, SpecHash: reconcile.SpecHash(changed),
				Need: []reconcile.GPUNeed{{Index: 0, Need: 2 << 30, Free: 24 << 30}}}
			if !FetchesFirst(c) {
				t.Fatal("FetchesFirst is false for a replace of a running engine by a spec with a source")
			}
			res, _ := h.x.Apply(context.Background(), &reconcile.NodePlan{Node: "gpu-01", Changes: []reconcile.Change{c}})

			if stoppedDuring {
				t.Error("the engine was stopped before its replace's model was in the cache")
			}
			if !during.Ready || during.Phase != reconcile.Ready || during.Next != reconcile.NextReplace {
				t.Errorf("while the model downloads: %+v, want Ready (serving the old spec) with its replace next", during)
			}
			if _, ok := fetching[old.ID]; !ok {
				t.Errorf("while the model downloads, Fetches() = %v, want the pool's progress", fetching)
			}
			if m.calls != 1 {
				t.Errorf("%d calls to Models.Ensure, want 1", m.calls)
			}
			if len(res.Outcomes) != 1 {
				t.Fatalf("outcomes %+v, want one", res.Outcomes)
			}
			o := res.Outcomes[0]
			st, _ := h.x.State()
			if tc.fetchErr == nil {
				if !stopped || h.driver.starts != 1 {
					t.Fatalf("stopped %v, %d spawns; want the engine stopped, then one spawn", stopped, h.driver.starts)
				}
				if got := h.driver.requests[0].Pool.Model.Path; got != cached {
					t.Errorf("spawned with model path %q, want the cache's %q", got, cached)
				}
				if o.KeptRunning {
					t.Errorf("outcome %+v: kept running after the engine was stopped", o)
				}
				return
			}
			if stopped || h.driver.starts != 0 {
				t.Fatalf("stopped %v, %d spawns; want the engine left running, nothing spawned", stopped, h.driver.starts)
			}
			if !o.KeptRunning || o.Phase != reconcile.Ready || o.Failure == nil || o.Failure.Class != restart.ClassFetchHTTP || o.Failure.Hint == "" || o.NotBefore.IsZero() {
				t.Errorf("outcome %+v (failure %+v), want kept running, Ready, fetch_http with a hint, a next try", o, o.Failure)
			}
			if !res.Failed() {
				t.Error("Result.Failed() is false for a replace that failed")
			}
			rec := st.Engines[old.ID]
			if rec.PID != 4242 || !rec.DrainingSince.IsZero() || rec.SpecHash != reconcile.SpecHash(old) || rec.ReplaceFailed != c.SpecHash {
				t.Errorf("engine record %+v, want pid 4242 not draining, the old spec, the new spec's failure marked", rec)
			}
			history := st.Pools[old.ID]
			if history.LastError == nil || history.LastError.Class != restart.ClassFetchHTTP || !history.NextRetry.Equal(o.NotBefore) {
				t.Errorf("history %+v, want the fetch_http failure and its backoff", history)
			}
			after := h.lifecycleOf(t, changed)
			if !after.Ready || after.Next != reconcile.NextReplace || !after.At.Equal(history.NextRetry) {
				t.Errorf("after the failure: %+v, want Ready, the replace next at the backoff's end %v", after, history.NextRetry)
			}
			// The next try, once the backoff allows, fails again: the
			// backoff grows (the config change is not counted again).
			h.now = history.NextRetry
			if _, err := h.x.Apply(context.Background(), &reconcile.NodePlan{Node: "gpu-01", Changes: []reconcile.Change{c}}); err != nil {
				t.Fatal(err)
			}
			st, _ = h.x.State()
			if got := st.Pools[old.ID].ConsecutiveFailures; got != 2 || stopped {
				t.Errorf("after a second failed try: %d consecutive failures, stopped %v; want 2, still running", got, stopped)
			}
		})
	}
}
