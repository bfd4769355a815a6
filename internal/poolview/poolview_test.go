package poolview

import (
	"reflect"
	"testing"
	"time"

	"github.com/poolmanagerd/pool-managerd/drivers/gpu"
	"github.com/poolmanagerd/pool-managerd/internal/api"
	"github.com/poolmanagerd/pool-managerd/internal/state"
	"github.com/poolmanagerd/pool-managerd/reconcile"
	"github.com/poolmanagerd/pool-managerd/reconcile/restart"
	"github.com/poolmanagerd/pool-managerd/schema"
)

func TestOne(t *testing.T) {
	now := time.Date(2026, 11, 27, 12, 0, 0, 0, time.UTC)
	started, ready := now.Add(-time.Minute), now.Add(-50*time.Second)
	failedAt := now.Add(-10 * time.Second)
	gpus := []gpu.Device{{Index: 0, UUID: "GPU-0", Processes: []gpu.Process{{PID: 100, UsedBytes: 4 << 30}}}}
	spec := &schema.Pool{ID: "p", Node: "n", Engine: schema.EngineLlamaCpp, Devices: []int{0}, Restart: reconcile.DefaultRestartPolicy()}
	hash := reconcile.SpecHash(spec)
	liveRec := reconcile.EngineRecord{Pool: "p", PID: 100, Port: 8080, StartedAt: started, ReadyAt: ready, LogPath: "/nonexistent/p.log", SpecHash: hash, Spec: spec}
	cases := []struct {
		name        string
		obs         map[string]reconcile.Engine
		engines     map[string]reconcile.EngineRecord
		pools       map[string]restart.Record
		wantPhase   reconcile.Phase
		wantReady   bool
		wantPID     int
		wantPreload string
		wantClass   string
		wantGPUs    int
		held        bool
	}{
		{name: "nothing known", wantPhase: reconcile.Pending, wantPreload: api.PreloadPending},
		{name: "healthy engine", obs: map[string]reconcile.Engine{"p": {PID: 100, Port: 8080, Alive: true, Recorded: true, Health: reconcile.HealthOK, SpecHash: hash, ReadyAt: ready}},
			engines: map[string]reconcile.EngineRecord{"p": liveRec}, wantPhase: reconcile.Ready, wantReady: true, wantPID: 100, wantPreload: api.PreloadLoaded, wantGPUs: 1},
		{name: "loading engine", obs: map[string]reconcile.Engine{"p": {PID: 100, Port: 8080, Alive: true, Recorded: true, Health: reconcile.HealthLoading, SpecHash: hash, Unverified: true}},
			engines: map[string]reconcile.EngineRecord{"p": {Pool: "p", PID: 100, Port: 8080, StartedAt: started, SpecHash: hash}}, wantPhase: reconcile.Preloading, wantPID: 100, wantPreload: api.PreloadLoading, wantGPUs: 1},
		{name: "failing health", obs: map[string]reconcile.Engine{"p": {PID: 100, Alive: true, Recorded: true, Health: reconcile.HealthFailing, SpecHash: hash, ReadyAt: ready}},
			engines: map[string]reconcile.EngineRecord{"p": liveRec}, wantPhase: reconcile.Unready, wantPID: 100, wantPreload: api.PreloadLoaded, wantGPUs: 1},
		{name: "dead after Ready", obs: map[string]reconcile.Engine{"p": {PID: 100, Recorded: true, SpecHash: hash, ReadyAt: ready}},
			engines: map[string]reconcile.EngineRecord{"p": liveRec}, wantPhase: reconcile.Unready, wantClass: "exited"},
		{name: "failed preload with backoff", engines: map[string]reconcile.EngineRecord{"p": {Pool: "p", PID: 100, StartedAt: started, SpecHash: hash}},
			obs:       map[string]reconcile.Engine{"p": {PID: 100, Recorded: true, SpecHash: hash}},
			pools:     map[string]restart.Record{"p": {LastError: &restart.ErrorRecord{Class: "exited", Message: "boom", Time: failedAt}, ConsecutiveFailures: 1, NextRetry: now.Add(time.Second)}},
			wantPhase: reconcile.Unready, wantPreload: api.PreloadFailed, wantClass: "exited"},
		{name: "breaker open", pools: map[string]restart.Record{"p": {BreakerState: api.BreakerOpen, BreakerRetryAt: now.Add(time.Hour), LastError: &restart.ErrorRecord{Class: "exited", Message: "boom", Time: failedAt}}},
			wantPhase: reconcile.Failed, wantClass: "exited"},
		{name: "intent only", obs: map[string]reconcile.Engine{"p": {Recorded: true, Intent: true, SpecHash: hash}},
			engines: map[string]reconcile.EngineRecord{"p": {Pool: "p", Intent: true, StartedAt: started, SpecHash: hash}}, wantPhase: reconcile.Pending, wantPreload: api.PreloadLoading},
		{name: "started since the observation", obs: map[string]reconcile.Engine{"p": {PID: 99, Recorded: true, SpecHash: hash}},
			engines: map[string]reconcile.EngineRecord{"p": {Pool: "p", PID: 100, Port: 8081, StartedAt: started, SpecHash: hash}}, wantPhase: reconcile.Preloading, wantPID: 100, wantPreload: api.PreloadLoading},
		{name: "stopped by an operator", pools: map[string]restart.Record{"p": {Restarts: 2}}, held: true, wantPhase: reconcile.Stopped},
		{name: "draining since the observation: not ready", obs: map[string]reconcile.Engine{"p": {PID: 100, Port: 8080, Alive: true, Recorded: true, Health: reconcile.HealthOK, SpecHash: hash, ReadyAt: ready}},
			engines:   map[string]reconcile.EngineRecord{"p": func() reconcile.EngineRecord { r := liveRec; r.DrainingSince = now; return r }()},
			wantPhase: reconcile.Draining, wantPID: 100, wantPreload: api.PreloadLoaded, wantGPUs: 1},
		{name: "stopped and forgotten since the observation", obs: map[string]reconcile.Engine{"p": {PID: 100, Port: 8080, Alive: true, Recorded: true, Health: reconcile.HealthOK, SpecHash: hash, ReadyAt: ready}},
			held: true, wantPhase: reconcile.Stopped},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			st := &state.State{Engines: c.engines, Pools: c.pools}
			if st.Engines == nil {
				st.Engines = map[string]reconcile.EngineRecord{}
			}
			if st.Pools == nil {
				st.Pools = map[string]restart.Record{}
			}
			obs := reconcile.Observed{GPUs: gpus, Engines: c.obs}
			got := One("p", Input{Desired: map[string]*schema.Pool{"p": spec}, Held: map[string]bool{"p": c.held}, Observed: obs, State: st, Now: now})
			if got.Phase != c.wantPhase || got.Ready != c.wantReady || got.PID != c.wantPID || len(got.GPUs) != c.wantGPUs {
				t.Errorf("phase %s ready %v pid %d gpus %v; want %s %v %d %d", got.Phase, got.Ready, got.PID, got.GPUs, c.wantPhase, c.wantReady, c.wantPID, c.wantGPUs)
			}
			switch {
			case c.wantPreload == "" && got.Preload != nil:
				t.Errorf("preload %+v, want none", got.Preload)
			case c.wantPreload != "" && (got.Preload == nil || got.Preload.State != c.wantPreload):
				t.Errorf("preload %+v, want %s", got.Preload, c.wantPreload)
			}
			switch {
			case c.wantClass == "" && got.LastError != nil:
				t.Errorf("last error %+v, want none", got.LastError)
			case c.wantClass != "" && (got.LastError == nil || got.LastError.Class != c.wantClass || got.LastError.Hint == "" || got.LastError.Time.IsZero()):
				t.Errorf("last error %+v, want class %s with a hint and a time", got.LastError, c.wantClass)
			}
			if c.wantPID != 0 && got.Endpoint == "" && (got.Port != 0) {
				t.Errorf("no endpoint for port %d", got.Port)
			}
		})
	}
}

func TestBuildSortsAndCovers(t *testing.T) {
	st := &state.State{Engines: map[string]reconcile.EngineRecord{}, Pools: map[string]restart.Record{"b": {}, "a": {}}}
	obs := reconcile.Observed{Engines: map[string]reconcile.Engine{"c": {PID: 1, Alive: true, Health: reconcile.HealthOK}}}
	rows := Build(Input{Observed: obs, State: st, Now: time.Now()})
	var ids []string
	for _, r := range rows {
		ids = append(ids, r.Pool)
	}
	if len(ids) != 3 || ids[0] != "a" || ids[1] != "b" || ids[2] != "c" {
		t.Errorf("pools %v, want [a b c]", ids)
	}
}

// Without a config (status reads the state directory alone), a pool wants
// the spec its engine was started from.
func TestStatusWithoutConfig(t *testing.T) {
	now := time.Date(2026, 11, 27, 12, 0, 0, 0, time.UTC)
	spec := &schema.Pool{ID: "p", Node: "n", Engine: schema.EngineLlamaCpp, Devices: []int{0}, Restart: reconcile.DefaultRestartPolicy()}
	hash := reconcile.SpecHash(spec)
	rec := reconcile.EngineRecord{Pool: "p", PID: 100, Port: 8080, StartedAt: now.Add(-time.Minute), ReadyAt: now.Add(-50 * time.Second), SpecHash: hash, Spec: spec}
	st := &state.State{Engines: map[string]reconcile.EngineRecord{"p": rec}, Pools: map[string]restart.Record{
		"gone":    {Restarts: 1},
		"failing": {ConsecutiveFailures: 1, NextRetry: now.Add(time.Minute), LastError: &restart.ErrorRecord{Class: "exited", Message: "boom", Time: now}},
	}}
	obs := reconcile.Observed{Engines: map[string]reconcile.Engine{"p": {PID: 100, Port: 8080, Alive: true, Recorded: true, Health: reconcile.HealthOK, SpecHash: hash, ReadyAt: rec.ReadyAt}}}
	want := map[string]reconcile.Phase{"p": reconcile.Ready, "gone": reconcile.Stopped, "failing": reconcile.Unready}
	for _, r := range Build(Input{Observed: obs, State: st, Now: now}) {
		if r.Phase != want[r.Pool] {
			t.Errorf("pool %s: %s, want %s", r.Pool, r.Phase, want[r.Pool])
		}
	}
}

// A pool whose start downloads its model is Fetching, with how far the
// download has come; once the fetcher reports nothing, the fetch is gone.
func TestFetchingRow(t *testing.T) {
	now := time.Date(2026, 12, 7, 12, 0, 0, 0, time.UTC)
	spec := &schema.Pool{ID: "p", Node: "n", Engine: schema.EngineLlamaCpp, Devices: []int{0}, Restart: reconcile.DefaultRestartPolicy()}
	st := &state.State{}
	in := Input{Desired: map[string]*schema.Pool{"p": spec}, State: st, Now: now,
		Fetches: map[string]reconcile.Fetch{"p": {Done: 1 << 20, Total: 4 << 20, BytesPerSecond: 1 << 20, Since: now.Add(-time.Second)}}}
	row := One("p", in)
	want := &api.Fetch{BytesDone: 1 << 20, BytesTotal: 4 << 20, BytesPerSecond: 1 << 20, StartedAt: now.Add(-time.Second)}
	if row.Phase != reconcile.Fetching || row.Ready || !reflect.DeepEqual(row.Fetch, want) {
		t.Errorf("row = phase %s ready %v fetch %+v, want Fetching, not ready, %+v", row.Phase, row.Ready, row.Fetch, want)
	}
	in.Fetches = nil
	if row := One("p", in); row.Phase != reconcile.Pending || row.Fetch != nil {
		t.Errorf("without a fetch: phase %s fetch %+v, want Pending and none", row.Phase, row.Fetch)
	}
}
