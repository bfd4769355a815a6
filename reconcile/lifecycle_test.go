package reconcile

import (
	"slices"
	"testing"
	"time"

	"github.com/poolmanagerd/pool-managerd/reconcile/restart"
	"github.com/poolmanagerd/pool-managerd/schema"
)

func lifecyclePool() *schema.Pool {
	return &schema.Pool{ID: "chat", Node: "gpu-01", Engine: schema.EngineLlamaCpp,
		Model:   schema.Model{Path: "/models/chat.gguf", Ctx: 8192},
		Devices: []int{0}, Restart: DefaultRestartPolicy()}
}

func TestLifecycle(t *testing.T) {
	now := time.Date(2026, 12, 7, 12, 0, 0, 0, time.UTC)
	spec := lifecyclePool()
	hash := SpecHash(spec)
	changed := lifecyclePool()
	changed.Model.Ctx = 4096
	readyAt := now.Add(-time.Hour)
	live := func(mod func(e *Engine)) *Engine {
		e := &Engine{Pool: "chat", SpecHash: hash, Spec: spec, PID: 42, Port: 18000, Alive: true, Health: HealthOK, Recorded: true, ReadyAt: readyAt}
		if mod != nil {
			mod(e)
		}
		return e
	}
	dead := func(mod func(e *Engine)) *Engine {
		e := live(mod)
		e.Alive, e.Health = false, ""
		return e
	}
	failedAt := func(at time.Time, n int) restart.Record {
		r := restart.Record{ConsecutiveFailures: n, NextRetry: at.Add(2 * time.Second),
			LastError: &restart.ErrorRecord{Class: restart.ClassExited, Message: "engine exited", Time: at}}
		for i := range n {
			r.Failures = append(r.Failures, at.Add(-time.Duration(n-1-i)*time.Second))
		}
		return r
	}
	open := func(opened, retry time.Time) restart.Record {
		r := failedAt(opened, 5)
		r.BreakerState, r.BreakerOpenedAt, r.BreakerRetryAt, r.BreakerOpenCount = "open", opened, retry, 1
		return r
	}
	// fetchFailed is a replace's failed fetch of the changed spec's model at
	// at, while the engine ran (Ready an hour before).
	fetchFailed := func(at time.Time, n int) restart.Record {
		r := failedAt(at, n)
		r.LastError.Class, r.LastError.Message = restart.ClassFetchHTTP, "GET https://models.example/m.gguf: HTTP 404 Not Found"
		return r
	}
	replaceFailed := func(e *Engine) { e.ReplaceFailed = SpecHash(changed) }
	halfOpen := func(tryAt time.Time) restart.Record {
		r := open(tryAt.Add(-5*time.Minute), tryAt)
		r.BreakerState = "half-open"
		return r
	}
	tests := []struct {
		name  string
		facts Facts
		want  Status // Reason is not compared
	}{
		{"nothing yet", Facts{Spec: spec}, Status{Phase: Pending, Next: NextStart}},
		{"its start downloads the model", Facts{Spec: spec, Fetch: &Fetch{Done: 1 << 30, Total: 4 << 30, BytesPerSecond: 50 << 20}}, Status{Phase: Fetching, Next: NextAwait}},
		{"its start downloads the model, size not known yet", Facts{Spec: spec, Fetch: &Fetch{}}, Status{Phase: Fetching, Next: NextAwait}},
		{"a restart downloads the model after a failure", Facts{Spec: spec, History: failedAt(now.Add(-time.Minute), 1), Fetch: &Fetch{Done: 10}}, Status{Phase: Fetching, Next: NextAwait}},
		{"held while downloading", Facts{Spec: spec, Held: true, Fetch: &Fetch{Done: 10}}, Status{Phase: Stopped, Next: NextNone}},
		{"Ready", Facts{Spec: spec, Engine: live(nil)}, Status{Phase: Ready, Ready: true, Next: NextNone}},
		{"loading", Facts{Spec: spec, Engine: live(func(e *Engine) { e.Health, e.ReadyAt, e.Unverified = HealthLoading, time.Time{}, true })},
			Status{Phase: Preloading, Next: NextAwait}},
		{"healthy, placement not verified", Facts{Spec: spec, Engine: live(func(e *Engine) { e.ReadyAt, e.Unverified = time.Time{}, true })},
			Status{Phase: Preloading, Next: NextAwait}},
		{"draining is never ready", Facts{Spec: spec, Engine: live(func(e *Engine) { e.Draining = true })},
			Status{Phase: Draining, Next: NextRestart}},
		{"draining for a replace", Facts{Spec: changed, Engine: live(func(e *Engine) { e.Draining = true })},
			Status{Phase: Draining, Next: NextReplace}},
		{"draining ended: the stop is done", Facts{Spec: changed, Engine: dead(func(e *Engine) { e.Draining = true })},
			Status{Phase: Pending, Next: NextStart}},
		{"spec changed, stop not begun: still serving", Facts{Spec: changed, Engine: live(nil)},
			Status{Phase: Ready, Ready: true, Next: NextReplace}},
		{"spec changed, its model downloads: still serving", Facts{Spec: changed, Engine: live(nil), Fetch: &Fetch{Done: 10}},
			Status{Phase: Ready, Ready: true, Next: NextReplace}},
		{"its replace's fetch failed: serving, next try after the backoff", Facts{Spec: changed, Engine: live(replaceFailed), History: fetchFailed(now.Add(-time.Second), 1)},
			Status{Phase: Ready, Ready: true, Next: NextReplace, At: now.Add(time.Second)}},
		{"its replace's fetch failed, backoff elapsed: replace now", Facts{Spec: changed, Engine: live(replaceFailed), History: fetchFailed(now.Add(-time.Minute), 1)},
			Status{Phase: Ready, Ready: true, Next: NextReplace}},
		{"its replace's fetches opened the breaker: serving, next try after the cool-down", Facts{Spec: changed, Engine: live(replaceFailed),
			History: func() restart.Record {
				r := fetchFailed(now.Add(-time.Minute), 5)
				r.BreakerState, r.BreakerOpenedAt, r.BreakerRetryAt, r.BreakerOpenCount = "open", now.Add(-time.Minute), now.Add(4*time.Minute), 1
				return r
			}()},
			Status{Phase: Ready, Ready: true, Next: NextReplace, At: now.Add(4 * time.Minute), Breaker: restart.Open}},
		{"a fetch failed for a spec changed again since: replace now", Facts{Spec: changed, Engine: live(func(e *Engine) { e.ReplaceFailed = "another" }), History: fetchFailed(now.Add(-time.Second), 1)},
			Status{Phase: Ready, Ready: true, Next: NextReplace}},
		{"config back to the running spec after a failed replace: no restart", Facts{Spec: spec, Engine: live(replaceFailed), History: fetchFailed(now.Add(-time.Second), 1)},
			Status{Phase: Ready, Ready: true, Next: NextNone}},
		{"engine gone, its replace's fetch failed: the backoff counts", Facts{Spec: changed, Engine: dead(replaceFailed), History: fetchFailed(now.Add(-time.Second), 1)},
			Status{Phase: Unready, Next: NextWait, At: now.Add(time.Second)}},
		{"failing health", Facts{Spec: spec, Engine: live(func(e *Engine) { e.Health = HealthFailing })},
			Status{Phase: Unready, Next: NextRestart}},
		{"found by its marker", Facts{Spec: spec, Engine: live(func(e *Engine) { e.Recorded, e.ReadyAt = false, time.Time{} })},
			Status{Phase: Preloading, Next: NextAdopt}},
		{"died after Ready, not yet recorded", Facts{Spec: spec, Engine: dead(nil), History: failedAt(readyAt.Add(-time.Minute), 1)},
			Status{Phase: Unready, Next: NextRecordExit}},
		{"died, recorded, backoff runs", Facts{Spec: spec, Engine: dead(nil), History: failedAt(now.Add(-time.Second), 1)},
			Status{Phase: Unready, Next: NextWait, At: now.Add(time.Second)}},
		{"died, recorded, backoff elapsed", Facts{Spec: spec, Engine: dead(nil), History: failedAt(now.Add(-time.Minute), 1)},
			Status{Phase: Unready, Next: NextStart}},
		{"breaker open", Facts{Spec: spec, Engine: dead(nil), History: open(now.Add(-time.Minute), now.Add(4*time.Minute))},
			Status{Phase: Failed, Next: NextBlocked, At: now.Add(4 * time.Minute), Breaker: restart.Open}},
		{"breaker cool-down elapsed: one try", Facts{Spec: spec, Engine: dead(nil), History: open(now.Add(-6*time.Minute), now.Add(-time.Minute))},
			Status{Phase: Unready, Next: NextStart, Breaker: restart.Open}},
		{"breaker open, config changed: it closes", Facts{Spec: changed, Engine: dead(nil), History: open(now.Add(-time.Minute), now.Add(4*time.Minute))},
			Status{Phase: Pending, Next: NextStart}},
		{"half-open try Ready, not yet for resetAfter", Facts{Spec: spec, Engine: live(func(e *Engine) { e.ReadyAt = now.Add(-time.Minute) }), History: halfOpen(now.Add(-2 * time.Minute))},
			Status{Phase: Ready, Ready: true, Next: NextNone, Breaker: restart.HalfOpen}},
		{"half-open try Ready for resetAfter: closed", Facts{Spec: spec, Engine: live(func(e *Engine) { e.ReadyAt = now.Add(-6 * time.Minute) }), History: halfOpen(now.Add(-7 * time.Minute))},
			Status{Phase: Ready, Ready: true, Next: NextNone, Breaker: restart.Closed}},
		{"blocked by the node (a lost GPU)", Facts{Spec: spec, Blocked: ClassGPULost}, Status{Phase: Unready, Next: NextStart}},
		{"blocked, but the breaker is open: Failed", Facts{Spec: spec, Engine: dead(nil), History: open(now.Add(-time.Minute), now.Add(4*time.Minute)), Blocked: ClassGPULost},
			Status{Phase: Failed, Next: NextBlocked, At: now.Add(4 * time.Minute), Breaker: restart.Open}},
		{"recorded intent, no process", Facts{Spec: spec, Engine: &Engine{Pool: "chat", SpecHash: hash, Recorded: true, Intent: true}},
			Status{Phase: Pending, Next: NextStart}},
		{"held, engine runs", Facts{Spec: spec, Engine: live(nil), Held: true}, Status{Phase: Draining, Next: NextStop}},
		{"held, stopped", Facts{Spec: spec, Held: true}, Status{Phase: Stopped, Next: NextNone}},
		{"left the config, engine runs", Facts{Engine: live(nil)}, Status{Phase: Draining, Next: NextStop}},
		{"left the config, engine gone", Facts{Engine: dead(nil)}, Status{Phase: Stopped, Next: NextStop}},
		{"not in the config", Facts{}, Status{Phase: Stopped, Next: NextNone}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := Lifecycle(tt.facts, now)
			if got.Reason == "" {
				t.Error("no reason given")
			}
			got.Reason = ""
			if got != tt.want {
				t.Errorf("Lifecycle = %+v, want %+v", got, tt.want)
			}
			if got.Ready != (got.Phase == Ready) {
				t.Errorf("ready %v in phase %s: only Ready is ready", got.Ready, got.Phase)
			}
			if !slices.Contains(Phases(), got.Phase) {
				t.Errorf("phase %q is not in Phases()", got.Phase)
			}
		})
	}
}

// A pool whose engine is being stopped is never ready, whatever else is
// true of it: the one rule a router relies on.
func TestLifecycleNeverReadyWhileDraining(t *testing.T) {
	now := time.Date(2026, 12, 7, 12, 0, 0, 0, time.UTC)
	spec := lifecyclePool()
	for _, held := range []bool{false, true} {
		for _, wanted := range []*schema.Pool{spec, nil} {
			for _, health := range []Health{HealthOK, HealthLoading, HealthFailing, ""} {
				e := &Engine{Pool: "chat", SpecHash: SpecHash(spec), Spec: spec, PID: 42, Alive: true, Health: health, Recorded: true, ReadyAt: now.Add(-time.Hour), Draining: true}
				got := Lifecycle(Facts{Spec: wanted, Engine: e, Held: held}, now)
				if got.Ready || got.Phase != Draining {
					t.Errorf("held %v, wanted %v, health %q: %+v, want Draining and not ready", held, wanted != nil, health, got)
				}
			}
		}
	}
}

func TestFetchingReasonSaysHowFar(t *testing.T) {
	spec := lifecyclePool()
	tests := []struct {
		fetch Fetch
		want  string
	}{
		{Fetch{Done: 1 << 30, Total: 4 << 30, BytesPerSecond: 50 << 20}, "downloading its model: 1024.0 of 4096.0 MiB (25%) at 50.0 MiB/s"},
		{Fetch{Done: 3 << 20}, "downloading its model: 3.0 MiB"},
	}
	for _, tt := range tests {
		got := Lifecycle(Facts{Spec: spec, Fetch: &tt.fetch}, time.Now()).Reason
		if got != tt.want {
			t.Errorf("reason = %q, want %q", got, tt.want)
		}
	}
}
