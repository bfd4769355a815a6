package api

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net/http"
	"slices"
	"sync"
	"time"

	"github.com/poolmanagerd/pool-managerd/reconcile"
	"github.com/poolmanagerd/pool-managerd/schema"
)

// fakeSource is a Source with fixed pools and config that records the
// actions it is asked for.
type fakeSource struct {
	mu      sync.Mutex
	ready   bool
	pools   map[string]Pool
	config  Config
	failErr error // returned by Reset and Stop when set
	resets  [][]string
	stops   []stopCall
}

type stopCall struct {
	Pools []string
	All   bool
}

var _ Source = (*fakeSource)(nil)

var t0 = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)

// fullPool has every field set; bare has only the required ones.
func fullPool() Pool {
	return Pool{
		Pool: "big", Phase: reconcile.Unready, Ready: false,
		Preload: &Preload{State: PreloadFailed, StartedAt: t0, LoadedAt: t0.Add(90 * time.Second), DurationSeconds: 90.5},
		PID:     4242, Port: 8001, Endpoint: "http://127.0.0.1:8001",
		GPUs:           []GPU{{Index: 0, UUID: "GPU-0000", MemoryBytes: 40 << 30}, {Index: 1, UUID: "GPU-0001", MemoryBytes: 1 << 20}},
		Restarts:       3,
		Breaker:        BreakerOpen,
		BreakerRetryAt: t0.Add(10 * time.Minute),
		LastError:      &LastError{Class: "insufficient_vram", Message: "needs 80 GiB, has 40 GiB", Hint: "use a smaller quantization", Time: t0.Add(time.Minute)},
		NextRetry:      t0.Add(10 * time.Minute),
		Log:            "/var/lib/pool-managerd/logs/big.log",
	}
}

func barePool() Pool {
	// A Source may leave GPUs nil and Breaker empty: the handler fills them in.
	return Pool{Pool: "small", Phase: reconcile.Stopped}
}

func loadingPool() Pool {
	return Pool{Pool: "mid", Phase: reconcile.Preloading, Preload: &Preload{State: PreloadLoading, StartedAt: t0, DurationSeconds: 3}, PID: 7, Port: 8002,
		Endpoint: "http://127.0.0.1:8002", GPUs: []GPU{}, Breaker: BreakerHalfOpen}
}

func newFake() *fakeSource {
	return &fakeSource{
		ready: true,
		pools: map[string]Pool{"big": fullPool(), "small": barePool(), "mid": loadingPool()},
		config: Config{
			Valid: true, Dir: "/etc/pool-managerd", Files: []string{"pools.cue", "nodes.cue"},
			LastLoad: t0, LastGoodLoad: t0,
			Pools: []string{"big", "mid", "small"}, Nodes: []string{"node-a"},
		},
	}
}

func invalidConfig() Config {
	return Config{
		Valid: false, Dir: "/etc/pool-managerd", Files: []string{"pools.cue"},
		LastLoad: t0.Add(time.Hour), LastGoodLoad: t0,
		Errors: []schema.Diagnostic{
			{Pos: schema.Pos{File: "pools.cue", Line: 3, Column: 9}, Path: "pools.big.split", Message: "split does not sum to 1"},
			{Pos: schema.Pos{File: "nodes.cue"}, Message: "cannot read file"},
		},
		Pools: []string{"big"}, Nodes: []string{"node-a"},
	}
}

func (f *fakeSource) Ready() bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.ready
}

func (f *fakeSource) Pools() []Pool {
	f.mu.Lock()
	defer f.mu.Unlock()
	// Unsorted on purpose: the handler sorts.
	var out []Pool
	for _, id := range slices.Backward(slices.Sorted(maps.Keys(f.pools))) {
		out = append(out, f.pools[id])
	}
	return out
}

func (f *fakeSource) Pool(id string) (Pool, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	p, ok := f.pools[id]
	return p, ok
}

func (f *fakeSource) Config() Config {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.config
}

func (f *fakeSource) Reset(_ context.Context, pools []string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.resets = append(f.resets, slices.Clone(pools))
	if f.failErr != nil {
		return f.failErr
	}
	for _, id := range pools {
		p := f.pools[id]
		p.Breaker, p.BreakerRetryAt, p.NextRetry = BreakerClosed, time.Time{}, time.Time{}
		f.pools[id] = p
	}
	return nil
}

func (f *fakeSource) Stop(_ context.Context, pools []string, all bool) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.stops = append(f.stops, stopCall{Pools: slices.Clone(pools), All: all})
	if f.failErr != nil {
		return f.failErr
	}
	if all {
		pools = slices.Collect(maps.Keys(f.pools))
	}
	for _, id := range pools {
		p := f.pools[id]
		p.Phase, p.Ready, p.PID, p.Port, p.Endpoint, p.GPUs = reconcile.Stopped, false, 0, 0, "", nil
		f.pools[id] = p
	}
	return nil
}

// errGone is a Source error for a pool that went away between the
// handler's check and the action.
var errGone = fmt.Errorf("pool %q: %w", "big", ErrUnknownPool)

var errKill = errors.New("stopping big: SIGKILL: operation not permitted")

// fakeMetrics stands in for promhttp.
var fakeMetrics = http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
	_, _ = w.Write([]byte("# HELP pool_managerd_config_valid Whether the config is valid.\n# TYPE pool_managerd_config_valid gauge\npool_managerd_config_valid 1\n"))
})
