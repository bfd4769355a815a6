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
		want    []string
	}{
		{"nothing loading", start.Add(10 * time.Second), nil, nil},
		{"one loading", start.Add(12*time.Second + 400*time.Millisecond),
			[]executor.Loading{{Pool: "chat", PID: 42, Since: start, Health: engine.HealthLoading}},
			[]string{"chat: still loading [12s elapsed], engine pid 42, health: loading"}},
		{"before the first health answer, and under 10 s", start.Add(1200 * time.Millisecond),
			[]executor.Loading{{Pool: "a", PID: 7, Since: start}, {Pool: "b", PID: 8, Since: start.Add(-time.Minute), Health: engine.HealthFailing}},
			[]string{"a: still loading [1.2s elapsed], engine pid 7, health: no answer yet",
				"b: still loading [1m1s elapsed], engine pid 8, health: failing"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tick, stop, done := make(chan time.Time), make(chan struct{}), make(chan struct{})
			var got []string
			go func() {
				defer close(done)
				reportProgress(stop, tick, func() []executor.Loading { return tt.loading }, func(e executor.Event) {
					if e.Phase != reconcile.Preloading || !e.Time.Equal(tt.at) {
						t.Errorf("event %+v: want Preloading at the tick's time", e)
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
