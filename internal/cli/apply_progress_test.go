package cli

import (
	"testing"
	"time"

	"github.com/poolmanagerd/pool-managerd/drivers/engine"
	"github.com/poolmanagerd/pool-managerd/internal/executor"
	"github.com/poolmanagerd/pool-managerd/reconcile"
)

func TestReportProgress(t *testing.T) {
	start := time.Date(2026, 12, 7, 12, 0, 0, 0, time.UTC)
	tests := []struct {
		name    string
		at      time.Time
		loading []executor.Loading
		fetches map[string]reconcile.Fetch
		want    []string
	}{
		{"nothing loading", start.Add(10 * time.Second), nil, nil, nil},
		{"one loading", start.Add(12*time.Second + 400*time.Millisecond),
			[]executor.Loading{{Pool: "chat", PID: 42, Since: start, Health: engine.HealthLoading}}, nil,
			[]string{"chat: still loading [12s elapsed], engine pid 42, health: loading"}},
		{"one fetching, one loading", start.Add(12 * time.Second),
			[]executor.Loading{{Pool: "chat", PID: 42, Since: start, Health: engine.HealthLoading}},
			map[string]reconcile.Fetch{"code": {Done: 12 << 20, Total: 40 << 20, BytesPerSecond: 1 << 20, Since: start},
				"embed": {Done: 3 << 20, Since: start.Add(10 * time.Second)}},
			[]string{"code: fetching model: 12.0 of 40.0 MiB (30%) at 1.0 MiB/s [12s elapsed]",
				"embed: fetching model: 3.0 MiB [2s elapsed]",
				"chat: still loading [12s elapsed], engine pid 42, health: loading"}},
		{"before the first health answer, and under 10 s", start.Add(1200 * time.Millisecond),
			[]executor.Loading{{Pool: "a", PID: 7, Since: start}, {Pool: "b", PID: 8, Since: start.Add(-time.Minute), Health: engine.HealthFailing}}, nil,
			[]string{"a: still loading [1.2s elapsed], engine pid 7, health: no answer yet",
				"b: still loading [1m1s elapsed], engine pid 8, health: failing"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tick, stop, done := make(chan time.Time), make(chan struct{}), make(chan struct{})
			var got []string
			go func() {
				defer close(done)
				reportProgress(stop, tick, func() []executor.Loading { return tt.loading }, func() map[string]reconcile.Fetch { return tt.fetches }, func(e executor.Event) {
					want := reconcile.Preloading
					if _, ok := tt.fetches[e.Pool]; ok {
						want = reconcile.Fetching
					}
					if e.Phase != want || !e.Time.Equal(tt.at) {
						t.Errorf("event %+v: want %s at the tick's time", e, want)
					}
					got = append(got, e.Pool+": "+e.Message)
				})
			}()
			tick <- tt.at
			close(stop)
			<-done
			if len(got) != len(tt.want) {
				t.Fatalf("reported %q, want %q", got, tt.want)
			}
			for i := range got {
				if got[i] != tt.want[i] {
					t.Errorf("line %d: %q, want %q", i, got[i], tt.want[i])
				}
			}
		})
	}
}
