package restart

import (
	"encoding/json"
	"math"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/poolmanagerd/pool-managerd/schema"
)

// t0 is the fake clock's start; tests advance it by adding durations.
var t0 = time.Date(2026, 3, 4, 5, 6, 7, 0, time.UTC)

// defaultPolicy is DESIGN.md's default restart policy (the schema's defaults).
func defaultPolicy() schema.RestartPolicy {
	return schema.RestartPolicy{
		InitialBackoff: time.Second, MaxBackoff: 60 * time.Second, Jitter: 0.1, ResetAfter: 5 * time.Minute,
		StartupTimeout: 10 * time.Minute, DrainTimeout: 30 * time.Second, StopGrace: 10 * time.Second,
		Breaker: schema.Breaker{Failures: 5, Window: 10 * time.Minute, Cooldown: 5 * time.Minute},
	}
}

// noBreaker is the default policy with the breaker switched off, to watch
// the backoff alone.
func noBreaker() schema.RestartPolicy {
	p := defaultPolicy()
	p.Breaker.Failures = 0
	return p
}

// constant returns a random source that always returns v: 0.5 is no jitter.
func constant(v float64) func() float64 { return func() float64 { return v } }

var (
	exited = Failure{Class: ClassExited, ExitCode: 1}
	cuda   = Failure{Class: ClassCUDAError, Message: "CUDA error: out of memory"}
	vram   = Failure{Class: ClassInsufficientVRAM, Message: "GPU 1: needs 13.2 GiB, 11.4 GiB free"}
)

// crash spawns the engine at now and reports f after it ran for up.
func crash(tr *Tracker, now time.Time, up time.Duration, f Failure) time.Time {
	tr.Started(now)
	tr.Failed(now.Add(up), f)
	return now.Add(up)
}

func TestFirstStart(t *testing.T) {
	tr := New(defaultPolicy(), nil)
	want := Decision{Action: Start, At: t0, Reason: ReasonFirstStart, Attempt: 1}
	if diff := cmp.Diff(want, tr.Decide(t0)); diff != "" {
		t.Fatalf("Decide of a new pool (-want +got):\n%s", diff)
	}
	tr.Started(t0)
	if diff := cmp.Diff(Decision{Action: None, Reason: ReasonRunning, Attempt: 1}, tr.Decide(t0.Add(time.Second))); diff != "" {
		t.Errorf("Decide while preloading (-want +got):\n%s", diff)
	}
	tr.Ready(t0.Add(time.Minute))
	if got := tr.Decide(t0.Add(time.Hour)); got.Action != None || got.Reason != ReasonRunning {
		t.Errorf("Decide while Ready = %v, want none (running)", got)
	}
	if tr.BreakerState() != Closed || tr.ConsecutiveFailures() != 0 || tr.Restarts() != 0 || tr.LastFailure() != nil ||
		!tr.NextRetry().IsZero() || tr.Backoff() != 0 {
		t.Errorf("a healthy pool has history: %+v", tr.Record())
	}
}

// TestCrashLoopDelays follows a crash loop: each restart happens exactly
// when the backoff allows it and the engine dies a second later.
func TestCrashLoopDelays(t *testing.T) {
	s := time.Second
	tests := []struct {
		name     string
		failures []Failure
		want     []time.Duration
	}{
		{"exited", repeat(exited, 10), []time.Duration{1 * s, 2 * s, 4 * s, 8 * s, 16 * s, 32 * s, 60 * s, 60 * s, 60 * s, 60 * s}},
		{"cuda error doubles, capped after doubling", repeat(cuda, 8), []time.Duration{2 * s, 4 * s, 8 * s, 16 * s, 32 * s, 60 * s, 60 * s, 60 * s}},
		{"driver reset doubles", repeat(Failure{Class: ClassDriverReset}, 3), []time.Duration{2 * s, 4 * s, 8 * s}},
		{"only the cuda failure doubles", []Failure{exited, cuda, exited, exited}, []time.Duration{1 * s, 4 * s, 4 * s, 8 * s}},
		{"every other class is plain", classes(ClassInsufficientVRAM, ClassInsufficientRAM, ClassCPUSpillover,
			ClassMaskViolation, ClassSpawnFailed, ClassExited, ClassSignaled, ClassOOMKilled, ClassHealthTimeout, ClassHealthFailed),
			[]time.Duration{1 * s, 2 * s, 4 * s, 8 * s, 16 * s, 32 * s, 60 * s, 60 * s, 60 * s, 60 * s}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tr := New(noBreaker(), constant(0.5))
			now := t0
			tr.Started(now)
			for i, f := range tt.failures {
				now = now.Add(time.Second)
				tr.Failed(now, f)
				want := Decision{Action: Wait, Delay: tt.want[i], At: now.Add(tt.want[i]), Reason: ReasonBackoff, Attempt: i + 2}
				if diff := cmp.Diff(want, tr.Decide(now)); diff != "" {
					t.Fatalf("failure %d: Decide (-want +got):\n%s", i+1, diff)
				}
				if got := tr.Backoff(); got != tt.want[i] {
					t.Errorf("failure %d: Backoff = %v, want %v", i+1, got, tt.want[i])
				}
				if got := tr.Decide(want.At.Add(-time.Nanosecond)); got.Action != Wait || got.Delay != time.Nanosecond {
					t.Errorf("failure %d: Decide a nanosecond early = %v, want wait 1ns", i+1, got)
				}
				now = want.At
				if got := tr.Decide(now); got.Action != Start || got.Reason != ReasonBackoffElapsed || got.Attempt != i+2 || got.Delay != 0 {
					t.Errorf("failure %d: Decide when the backoff elapsed = %v, want start (backoff_elapsed, attempt %d)", i+1, got, i+2)
				}
				tr.Started(now)
			}
			if got, want := tr.Restarts(), len(tt.failures); got != want {
				t.Errorf("Restarts = %d, want %d", got, want)
			}
			if got, want := tr.ConsecutiveFailures(), len(tt.failures); got != want {
				t.Errorf("ConsecutiveFailures = %d, want %d", got, want)
			}
		})
	}
}

func repeat(f Failure, n int) []Failure {
	out := make([]Failure, n)
	for i := range out {
		out[i] = f
	}
	return out
}

func classes(cs ...string) []Failure {
	out := make([]Failure, len(cs))
	for i, c := range cs {
		out[i] = Failure{Class: c}
	}
	return out
}

func TestJitterBounds(t *testing.T) {
	p := noBreaker()
	for _, tt := range []struct {
		name   string
		rnd    float64
		factor float64 // the expected factor on the unjittered delay
	}{
		{"rnd 0 is the low end", 0, 0.9},
		{"rnd 0.5 is no jitter", 0.5, 1},
		{"rnd 0.999 is near the high end", 0.999, 1.0998},
		{"rnd below 0 is clamped", -3, 0.9},
		{"rnd 1 or above is clamped", 7, 1.1},
		{"NaN is the low end", math.NaN(), 0.9},
	} {
		t.Run(tt.name, func(t *testing.T) {
			for _, class := range []string{ClassExited, ClassCUDAError} {
				tr := New(p, constant(tt.rnd))
				now := t0
				for n := 1; n <= 9; n++ {
					now = now.Add(time.Minute)
					tr.Failed(now, Failure{Class: class})
					base := p.InitialBackoff << (n - 1)
					if class == ClassCUDAError {
						base *= 2
					}
					base = min(base, p.MaxBackoff)
					got := tr.Backoff()
					want := time.Duration(float64(base) * tt.factor)
					if d := got - want; d < -time.Microsecond || d > time.Microsecond {
						t.Errorf("%s failure %d: delay %v, want %v (base %v × %v)", class, n, got, want, base, tt.factor)
					}
					lo, hi := time.Duration(float64(base)*(1-p.Jitter))-1, time.Duration(float64(base)*(1+p.Jitter))+1
					if got < lo || got > hi {
						t.Errorf("%s failure %d: delay %v outside [%v, %v]", class, n, got, lo, hi)
					}
				}
			}
		})
	}
}

func TestJitterDrawsOncePerFailure(t *testing.T) {
	draws := 0
	tr := New(defaultPolicy(), func() float64 { draws++; return 0.5 })
	tr.Decide(t0)
	tr.Started(t0)
	tr.Failed(t0.Add(time.Second), exited)
	tr.Decide(t0.Add(2 * time.Second))
	tr.Record()
	if draws != 1 {
		t.Errorf("rnd called %d times, want once (at the failure)", draws)
	}
}

func TestStablePeriodResetsBackoff(t *testing.T) {
	p := defaultPolicy()
	// Three crashes (1 s, 2 s, 4 s), then a start that reaches Ready at ready.
	setup := func() (*Tracker, time.Time) {
		tr := New(p, constant(0.5))
		now := t0
		for range 3 {
			crash(tr, now, time.Second, exited)
			now = tr.NextRetry()
		}
		tr.Started(now)
		ready := now.Add(20 * time.Second)
		tr.Ready(ready)
		return tr, ready
	}
	t.Run("StableCheck", func(t *testing.T) {
		tr, ready := setup()
		if tr.StableCheck(ready.Add(p.ResetAfter - time.Nanosecond)) {
			t.Fatal("StableCheck before ResetAfter started the backoff over")
		}
		if got := tr.ConsecutiveFailures(); got != 3 {
			t.Fatalf("ConsecutiveFailures = %d, want 3", got)
		}
		tr.Ready(ready.Add(time.Minute)) // a later health poll does not restart the stable period
		if !tr.StableCheck(ready.Add(p.ResetAfter)) {
			t.Fatal("StableCheck after ResetAfter of Ready did not start the backoff over")
		}
		if tr.ConsecutiveFailures() != 0 || !tr.NextRetry().IsZero() || tr.Backoff() != 0 {
			t.Errorf("after the stable period: %d consecutive, next retry %v, backoff %v; want 0, zero, 0",
				tr.ConsecutiveFailures(), tr.NextRetry(), tr.Backoff())
		}
		if tr.StableCheck(ready.Add(2 * p.ResetAfter)) {
			t.Error("a second StableCheck reported another start-over")
		}
		tr.Failed(ready.Add(time.Hour), exited)
		if got := tr.Backoff(); got != time.Second {
			t.Errorf("first failure after the stable period: backoff %v, want 1s", got)
		}
	})
	for _, tt := range []struct {
		name  string
		after time.Duration
		want  time.Duration
	}{
		{"failure at ResetAfter of Ready starts a new streak", p.ResetAfter, time.Second},
		{"failure just before ResetAfter continues the streak", p.ResetAfter - time.Nanosecond, 8 * time.Second},
	} {
		t.Run(tt.name, func(t *testing.T) {
			tr, ready := setup()
			tr.Failed(ready.Add(tt.after), exited)
			if got := tr.Backoff(); got != tt.want {
				t.Errorf("backoff %v, want %v", got, tt.want)
			}
		})
	}
	t.Run("the stable period must be continuous", func(t *testing.T) {
		tr, ready := setup()
		tr.Failed(ready.Add(4*time.Minute), exited) // 4th failure: 8 s
		tr.Started(ready.Add(5 * time.Minute))
		tr.Ready(ready.Add(5*time.Minute + 10*time.Second))
		if tr.StableCheck(ready.Add(9 * time.Minute)) {
			t.Error("Ready before the failure counted toward the stable period")
		}
		if got := tr.ConsecutiveFailures(); got != 4 {
			t.Errorf("ConsecutiveFailures = %d, want 4", got)
		}
	})
	t.Run("not while preloading", func(t *testing.T) {
		tr := New(p, constant(0.5))
		crash(tr, t0, time.Second, exited)
		tr.Started(t0.Add(time.Minute))
		if tr.StableCheck(t0.Add(time.Hour)) {
			t.Error("StableCheck of an engine that never became Ready started the backoff over")
		}
	})
}

func TestBreakerOpensAtNthFailureInWindow(t *testing.T) {
	p := defaultPolicy()
	tests := []struct {
		name     string
		spacing  time.Duration // between failures
		failures int
		opensAt  int // the failure that opens it; 0: never
	}{
		{"one a minute: the fifth opens", time.Minute, 5, 5},
		{"crash loop: the fifth opens", time.Second, 7, 5},
		{"the fifth exactly Window after the first still counts", p.Breaker.Window / 4, 5, 5},
		{"just over Window apart: never", p.Breaker.Window/4 + time.Nanosecond, 30, 0},
		{"three minutes apart: never", 3 * time.Minute, 30, 0},
	}
	for _, tt := range tests {
		for _, pre := range []bool{false, true} {
			name := tt.name
			if pre {
				name += " (insufficient VRAM before the spawn)"
			}
			t.Run(name, func(t *testing.T) {
				tr := New(p, constant(0.5))
				now := t0
				for i := 1; i <= tt.failures; i++ {
					if tr.BreakerState() != Closed {
						break
					}
					if pre {
						tr.Failed(now, vram)
					} else {
						tr.Started(now.Add(-time.Millisecond))
						tr.Failed(now, exited)
					}
					wantOpen := tt.opensAt != 0 && i >= tt.opensAt
					if got := tr.BreakerState(); (got == Open) != wantOpen {
						t.Fatalf("after failure %d at +%v: breaker %v, want open %v", i, now.Sub(t0), got, wantOpen)
					}
					if wantOpen {
						want := Decision{Action: Blocked, Delay: p.Breaker.Cooldown, At: now.Add(p.Breaker.Cooldown), Reason: ReasonBreakerOpen, Attempt: i + 1}
						if diff := cmp.Diff(want, tr.Decide(now)); diff != "" {
							t.Errorf("Decide when it opened (-want +got):\n%s", diff)
						}
						if !tr.BreakerOpenedAt().Equal(now) || tr.BreakerOpenCount() != 1 {
							t.Errorf("opened at %v (count %d), want %v (1)", tr.BreakerOpenedAt(), tr.BreakerOpenCount(), now)
						}
					}
					now = now.Add(tt.spacing)
				}
			})
		}
	}
}

// openBreaker runs a crash loop until the breaker opens and returns when it opened.
func openBreaker(t *testing.T, tr *Tracker, now time.Time) time.Time {
	t.Helper()
	for range 100 {
		now = crash(tr, now, time.Second, exited)
		if tr.BreakerState() == Open {
			return now
		}
		now = tr.NextRetry()
	}
	t.Fatal("the breaker did not open")
	return now
}

func TestNoStartWhileOpen(t *testing.T) {
	p := defaultPolicy()
	tr := New(p, constant(0.5))
	opened := openBreaker(t, tr, t0)
	retry := opened.Add(p.Breaker.Cooldown)
	if !tr.BreakerRetryAt().Equal(retry) {
		t.Fatalf("BreakerRetryAt = %v, want %v", tr.BreakerRetryAt(), retry)
	}
	for d := time.Duration(0); d < p.Breaker.Cooldown; d += 7 * time.Second {
		got := tr.Decide(opened.Add(d))
		if got.Action != Blocked || got.Reason != ReasonBreakerOpen || !got.At.Equal(retry) || got.Delay != retry.Sub(opened.Add(d)) {
			t.Fatalf("Decide at +%v while open = %+v, want blocked until %v", d, got, retry)
		}
	}
	if got := tr.Decide(retry.Add(-time.Nanosecond)); got.Action != Blocked {
		t.Fatalf("Decide a nanosecond before the cool-down ends = %v, want blocked", got)
	}
	if got := tr.Decide(retry); got.Action != Start || got.Reason != ReasonHalfOpen {
		t.Fatalf("Decide at the end of the cool-down = %v, want start (half_open)", got)
	}
	if tr.BreakerState() != Open {
		t.Errorf("Decide changed the breaker: %v", tr.BreakerState())
	}
}

func TestHalfOpenExactlyOneTry(t *testing.T) {
	p := defaultPolicy()
	tr := New(p, constant(0.5))
	opened := openBreaker(t, tr, t0)
	try := opened.Add(p.Breaker.Cooldown)
	tr.Started(try)
	if tr.BreakerState() != HalfOpen {
		t.Fatalf("breaker %v after the try started, want half-open", tr.BreakerState())
	}
	for d := time.Duration(0); d < 2*time.Hour; d += time.Minute {
		if got := tr.Decide(try.Add(d)); got.Action != None || got.Reason != ReasonHalfOpenTry {
			t.Fatalf("Decide at +%v during the try = %v, want none (half_open_try)", d, got)
		}
	}
	if got := tr.BreakerState().Metric(); got != 2 {
		t.Errorf("circuit_state = %v during the try, want 2", got)
	}

	t.Run("Ready is not yet a success", func(t *testing.T) {
		tr := *tr
		ready := try.Add(time.Minute)
		tr.Ready(ready)
		tr.StableCheck(ready.Add(p.ResetAfter - time.Second))
		if tr.BreakerState() != HalfOpen {
			t.Fatalf("breaker %v once the try is Ready but not yet for ResetAfter, want half-open", tr.BreakerState())
		}
		if got := tr.Decide(ready.Add(time.Second)); got.Action != None || got.Reason != ReasonHalfOpenTry {
			t.Errorf("Decide while the try is Ready = %v, want none (half_open_try)", got)
		}
		// The engine dies 0.1 s after Ready: the try failed, the breaker
		// re-opens at once with twice the cool-down.
		died := ready.Add(100 * time.Millisecond)
		tr.Failed(died, exited)
		if tr.BreakerState() != Open || tr.BreakerOpenCount() != 2 || !tr.BreakerRetryAt().Equal(died.Add(2*p.Breaker.Cooldown)) {
			t.Errorf("after the Ready try died: %v (count %d) until %v, want open (2) until %v",
				tr.BreakerState(), tr.BreakerOpenCount(), tr.BreakerRetryAt(), died.Add(2*p.Breaker.Cooldown))
		}
		if got := tr.Decide(died.Add(p.Breaker.Cooldown)); got.Action != Blocked {
			t.Errorf("Decide one cool-down later = %v, want blocked (the cool-down doubled)", got)
		}
	})
	t.Run("Ready for ResetAfter closes", func(t *testing.T) {
		tr := *tr
		ready := try.Add(time.Minute)
		tr.Ready(ready)
		stable := ready.Add(p.ResetAfter)
		if !tr.StableCheck(stable) {
			t.Fatal("StableCheck changed nothing once the try was Ready for ResetAfter")
		}
		if tr.BreakerState() != Closed || tr.FailuresInWindow(stable) != 0 || !tr.BreakerRetryAt().IsZero() || tr.BreakerOpenCount() != 0 {
			t.Errorf("after the try stayed Ready: breaker %v, %d failures in window, retry at %v, count %d; want closed, 0, zero, 0",
				tr.BreakerState(), tr.FailuresInWindow(stable), tr.BreakerRetryAt(), tr.BreakerOpenCount())
		}
		if got := tr.Decide(stable); got.Action != None || got.Reason != ReasonRunning {
			t.Errorf("Decide after the breaker closed = %v, want none (running)", got)
		}
		// A new failure is one in a fresh window: the breaker needs five again.
		now := stable.Add(time.Minute)
		for i := 1; i <= 4; i++ {
			tr.Failed(now, exited)
			if tr.BreakerState() != Closed {
				t.Fatalf("breaker re-opened at failure %d after a successful try", i)
			}
			tr.Started(now.Add(time.Minute))
			now = now.Add(time.Minute + time.Second)
		}
	})
	t.Run("a failure after ResetAfter of Ready is a new streak", func(t *testing.T) {
		tr := *tr
		ready := try.Add(time.Minute)
		tr.Ready(ready)
		failed := ready.Add(p.ResetAfter + time.Minute) // nobody called StableCheck meanwhile
		tr.Failed(failed, exited)
		if tr.BreakerState() != Closed || tr.ConsecutiveFailures() != 1 || tr.FailuresInWindow(failed) != 1 {
			t.Errorf("breaker %v, %d consecutive, %d in window; want closed, 1, 1", tr.BreakerState(), tr.ConsecutiveFailures(), tr.FailuresInWindow(failed))
		}
	})
	t.Run("a failure re-opens with twice the cool-down", func(t *testing.T) {
		tr := *tr
		failed := try.Add(40 * time.Second)
		tr.Failed(failed, Failure{Class: ClassHealthTimeout})
		want := Decision{Action: Blocked, Delay: 2 * p.Breaker.Cooldown, At: failed.Add(2 * p.Breaker.Cooldown), Reason: ReasonBreakerOpen,
			Attempt: tr.ConsecutiveFailures() + 1}
		if diff := cmp.Diff(want, tr.Decide(failed)); diff != "" {
			t.Errorf("Decide after the try failed (-want +got):\n%s", diff)
		}
		if tr.BreakerOpenCount() != 2 || !tr.BreakerOpenedAt().Equal(failed) {
			t.Errorf("open count %d at %v, want 2 at %v", tr.BreakerOpenCount(), tr.BreakerOpenedAt(), failed)
		}
	})
}

func TestCooldownDoublesEachReopen(t *testing.T) {
	m := time.Minute
	tests := []struct {
		name     string
		cooldown time.Duration
		want     []time.Duration
	}{
		{"default", 5 * m, []time.Duration{5 * m, 10 * m, 20 * m, 40 * m, 80 * m, 160 * m, 320 * m, 640 * m, 1280 * m, MaxCooldown, MaxCooldown}},
		{"longer than MaxCooldown is kept undoubled", 30 * time.Hour, []time.Duration{30 * time.Hour, 30 * time.Hour, 30 * time.Hour}},
		{"zero", 0, []time.Duration{0, 0, 0}},
	}
	for _, tt := range tests {
		for _, preSpawn := range []bool{false, true} {
			t.Run(tt.name+map[bool]string{true: " (try fails before the spawn)", false: ""}[preSpawn], func(t *testing.T) {
				p := defaultPolicy()
				p.Breaker.Cooldown = tt.cooldown
				tr := New(p, constant(0.5))
				now := openBreaker(t, tr, t0)
				for i, want := range tt.want {
					if got := tr.BreakerRetryAt().Sub(now); got != want || tr.BreakerOpenCount() != i+1 {
						t.Fatalf("opening %d: cool-down %v (count %d), want %v", i+1, got, tr.BreakerOpenCount(), want)
					}
					now = tr.BreakerRetryAt()
					if got := tr.Decide(now); got.Action != Start || got.Reason != ReasonHalfOpen {
						t.Fatalf("opening %d: Decide after the cool-down = %v, want start (half_open)", i+1, got)
					}
					if preSpawn {
						tr.Failed(now, vram)
					} else {
						now = crash(tr, now, 30*time.Second, cuda)
					}
					if tr.BreakerState() != Open {
						t.Fatalf("opening %d: breaker %v after the try failed, want open", i+1, tr.BreakerState())
					}
				}
			})
		}
	}
}

func TestFailureWhileOpenKeepsCooldown(t *testing.T) {
	p := defaultPolicy()
	tr := New(p, constant(0.5))
	opened := openBreaker(t, tr, t0)
	retry := tr.BreakerRetryAt()
	n := tr.ConsecutiveFailures()
	tr.Failed(opened.Add(time.Minute), vram) // reported while open, before the cool-down ends
	if tr.BreakerState() != Open || !tr.BreakerRetryAt().Equal(retry) || tr.BreakerOpenCount() != 1 {
		t.Errorf("breaker %v until %v (count %d), want open until %v (1)", tr.BreakerState(), tr.BreakerRetryAt(), tr.BreakerOpenCount(), retry)
	}
	if tr.ConsecutiveFailures() != n+1 || tr.LastFailure().Class != ClassInsufficientVRAM {
		t.Errorf("the failure was not recorded: %d consecutive, last %v", tr.ConsecutiveFailures(), tr.LastFailure())
	}
}

func TestReopenKeepsDoublingUntilStable(t *testing.T) {
	p := defaultPolicy()
	tr := New(p, constant(0.5))
	openBreaker(t, tr, t0)
	now := tr.BreakerRetryAt()
	tr.Started(now)
	now = now.Add(30 * time.Second)
	tr.Ready(now) // Ready, but not for ResetAfter: the try has not succeeded yet
	now = now.Add(time.Minute)
	tr.Failed(now, exited)
	if got := tr.BreakerRetryAt().Sub(now); got != 2*p.Breaker.Cooldown || tr.BreakerOpenCount() != 2 {
		t.Fatalf("second opening before a stable period: cool-down %v (count %d), want %v (2)", got, tr.BreakerOpenCount(), 2*p.Breaker.Cooldown)
	}
	// The next try succeeds and the pool runs stable: the next opening starts at Cooldown again.
	now = tr.BreakerRetryAt()
	tr.Started(now)
	tr.Ready(now.Add(time.Second))
	if !tr.StableCheck(now.Add(time.Second + p.ResetAfter)) {
		t.Fatal("StableCheck did not start over")
	}
	if tr.BreakerOpenCount() != 0 || tr.BreakerState() != Closed {
		t.Fatalf("breaker %v, open count %d after a stable period, want closed, 0", tr.BreakerState(), tr.BreakerOpenCount())
	}
	now = openBreaker(t, tr, now.Add(time.Hour))
	if got := tr.BreakerRetryAt().Sub(now); got != p.Breaker.Cooldown {
		t.Errorf("opening after a stable period: cool-down %v, want %v", got, p.Breaker.Cooldown)
	}
}

func TestConfigChangedAndResetClose(t *testing.T) {
	p := defaultPolicy()
	type setup func(t *testing.T, tr *Tracker) time.Time
	setups := map[string]setup{
		"mid-backoff": func(t *testing.T, tr *Tracker) time.Time {
			crash(tr, t0, time.Second, exited)
			return crash(tr, tr.NextRetry(), time.Second, exited)
		},
		"open": func(t *testing.T, tr *Tracker) time.Time { return openBreaker(t, tr, t0) },
		"half-open try failed": func(t *testing.T, tr *Tracker) time.Time {
			openBreaker(t, tr, t0)
			return crash(tr, tr.BreakerRetryAt(), time.Second, exited)
		},
	}
	inputs := map[string]struct {
		do     func(tr *Tracker, now time.Time)
		reason string
	}{
		"ConfigChanged": {(*Tracker).ConfigChanged, ReasonConfigChanged},
		"Reset":         {(*Tracker).Reset, ReasonReset},
	}
	for sname, s := range setups {
		for iname, in := range inputs {
			t.Run(iname+" "+sname, func(t *testing.T) {
				tr := New(p, constant(0.5))
				now := s(t, tr).Add(time.Second)
				restarts := tr.Restarts()
				in.do(tr, now)
				want := Decision{Action: Start, At: now, Reason: in.reason, Attempt: 1}
				if diff := cmp.Diff(want, tr.Decide(now)); diff != "" {
					t.Errorf("Decide (-want +got):\n%s", diff)
				}
				if tr.BreakerState() != Closed || tr.ConsecutiveFailures() != 0 || !tr.NextRetry().IsZero() ||
					tr.FailuresInWindow(now) != 0 || tr.BreakerOpenCount() != 0 || !tr.BreakerRetryAt().IsZero() {
					t.Errorf("history left: %+v", tr.Record())
				}
				if tr.LastFailure() == nil {
					t.Error("the last failure was forgotten; people still want to read it")
				}
				if tr.Restarts() != restarts {
					t.Errorf("Restarts = %d, want %d (a counter)", tr.Restarts(), restarts)
				}
				// Four failures right away do not re-open it.
				for i := range 4 {
					crash(tr, now.Add(time.Duration(i)*time.Minute), time.Second, exited)
				}
				if tr.BreakerState() != Closed {
					t.Errorf("breaker %v after four fresh failures, want closed", tr.BreakerState())
				}
			})
		}
	}
	t.Run("Reset during the half-open try", func(t *testing.T) {
		tr := New(p, constant(0.5))
		openBreaker(t, tr, t0)
		now := tr.BreakerRetryAt()
		tr.Started(now)
		tr.Reset(now.Add(time.Second))
		if got := tr.Decide(now.Add(time.Second)); got.Action != None || got.Reason != ReasonRunning || tr.BreakerState() != Closed {
			t.Errorf("Decide = %v with breaker %v, want none (running), closed", got, tr.BreakerState())
		}
	})
}

func TestStoppedIsNotAFailure(t *testing.T) {
	p := defaultPolicy()
	t.Run("stop of a Ready engine", func(t *testing.T) {
		tr := New(p, constant(0.5))
		tr.Started(t0)
		tr.Ready(t0.Add(time.Minute))
		tr.Stopped(t0.Add(2 * time.Minute))
		want := Decision{Action: Start, At: t0.Add(2 * time.Minute), Reason: ReasonStopped, Attempt: 1}
		if diff := cmp.Diff(want, tr.Decide(t0.Add(2*time.Minute))); diff != "" {
			t.Errorf("Decide (-want +got):\n%s", diff)
		}
		if tr.ConsecutiveFailures() != 0 || tr.FailuresInWindow(t0.Add(2*time.Minute)) != 0 || tr.LastFailure() != nil {
			t.Errorf("a stop was counted as a failure: %+v", tr.Record())
		}
		tr.Started(t0.Add(3 * time.Minute))
		if tr.Restarts() != 0 {
			t.Errorf("a start after a stop counted as a restart")
		}
	})
	t.Run("stop during preload after failures keeps the history", func(t *testing.T) {
		tr := New(p, constant(0.5))
		crash(tr, t0, time.Second, exited)
		now := crash(tr, tr.NextRetry(), time.Second, exited)
		tr.Started(tr.NextRetry())
		tr.Stopped(tr.NextRetry().Add(time.Second))
		if tr.ConsecutiveFailures() != 2 || tr.FailuresInWindow(now) != 2 {
			t.Errorf("history changed by a stop: %+v", tr.Record())
		}
		if got := tr.Decide(now.Add(time.Minute)); got.Action != Start || got.Reason != ReasonStopped {
			t.Errorf("Decide = %v, want start (stopped)", got)
		}
	})
	t.Run("stopping an engine already reported failed changes nothing", func(t *testing.T) {
		tr := New(p, constant(0.5))
		tr.Started(t0)
		tr.Ready(t0.Add(time.Second))
		failed := t0.Add(time.Minute)
		tr.Failed(failed, Failure{Class: ClassHealthFailed})
		before := tr.Record()
		tr.Stopped(failed.Add(100 * time.Millisecond)) // pool-managerd kills the unhealthy engine
		if diff := cmp.Diff(before, tr.Record()); diff != "" {
			t.Errorf("Stopped changed the record (-before +after):\n%s", diff)
		}
		if got := tr.Decide(failed.Add(500 * time.Millisecond)); got.Action != Wait || got.Reason != ReasonBackoff {
			t.Errorf("Decide = %v, want wait (backoff)", got)
		}
	})
	t.Run("a half-open try stopped on purpose is not used up", func(t *testing.T) {
		tr := New(p, constant(0.5))
		openBreaker(t, tr, t0)
		now := tr.BreakerRetryAt()
		tr.Started(now)
		tr.Stopped(now.Add(time.Second))
		if got := tr.Decide(now.Add(2 * time.Second)); got.Action != Start || got.Reason != ReasonHalfOpen {
			t.Errorf("Decide = %v, want start (half_open)", got)
		}
	})
}

func TestRestarts(t *testing.T) {
	tr := New(defaultPolicy(), constant(0.5))
	steps := []struct {
		do   func(now time.Time)
		want int
	}{
		{func(now time.Time) { tr.Started(now) }, 0},
		{func(now time.Time) { tr.Failed(now, exited) }, 0},
		{func(now time.Time) { tr.Started(now) }, 1},
		{func(now time.Time) { tr.Stopped(now) }, 1},
		{func(now time.Time) { tr.Started(now) }, 1},
		{func(now time.Time) { tr.Failed(now, exited) }, 1},
		{func(now time.Time) { tr.Failed(now, vram) }, 1},
		{func(now time.Time) { tr.Started(now) }, 2},
		{func(now time.Time) { tr.Ready(now) }, 2},
	}
	now := t0
	for i, s := range steps {
		now = now.Add(time.Minute)
		s.do(now)
		if got := tr.Restarts(); got != s.want {
			t.Fatalf("step %d: Restarts = %d, want %d", i, got, s.want)
		}
	}
}

func TestAdopted(t *testing.T) {
	p := defaultPolicy()
	tr := New(p, constant(0.5))
	crash(tr, t0, time.Second, exited)
	rec := tr.Record()
	restored := FromRecord(p, rec, constant(0.5))
	restored.Adopted(t0.Add(time.Minute))
	if got := restored.Decide(t0.Add(time.Minute)); got.Action != None || got.Reason != ReasonRunning {
		t.Errorf("Decide with an adopted engine = %v, want none (running)", got)
	}
	if restored.Restarts() != tr.Restarts() {
		t.Errorf("adoption counted a restart")
	}
	// The stable period counts from the engine's first Ready, as the state file has it.
	restored.Ready(t0.Add(2 * time.Minute))
	if !restored.StableCheck(t0.Add(2*time.Minute + p.ResetAfter)) {
		t.Error("the stable period did not count from the Ready passed in")
	}
}

// TestRecordRoundTrip encodes the tracker's record as the state file does (JSON), decodes it (as a
// restarted daemon would) and checks that the restored tracker says and
// saves the same.
func TestRecordRoundTrip(t *testing.T) {
	p := defaultPolicy()
	tests := []struct {
		name  string
		build func(t *testing.T, tr *Tracker) time.Time // returns the time of the last event
		// probes are offsets from that time at which both trackers must decide alike.
		probes []time.Duration
		// want is the restored tracker's decision at the time of the last event, when set.
		want *Decision
	}{
		{name: "fresh", build: func(t *testing.T, tr *Tracker) time.Time { return t0 }, probes: []time.Duration{0}},
		{name: "mid-backoff", build: func(t *testing.T, tr *Tracker) time.Time {
			crash(tr, t0, time.Second, exited)
			return crash(tr, tr.NextRetry(), 41*time.Second, cuda)
		}, probes: []time.Duration{0, time.Second, 4*time.Second - 1, 4 * time.Second, time.Hour}},
		{name: "mid-open: a daemon restart keeps the breaker open", build: func(t *testing.T, tr *Tracker) time.Time {
			return openBreaker(t, tr, t0)
		}, probes: []time.Duration{0, time.Minute, 5*time.Minute - 1, 5 * time.Minute, time.Hour},
			want: &Decision{Action: Blocked, Reason: ReasonBreakerOpen, Delay: 5 * time.Minute}},
		{name: "re-opened", build: func(t *testing.T, tr *Tracker) time.Time {
			openBreaker(t, tr, t0)
			return crash(tr, tr.BreakerRetryAt(), time.Second, exited)
		}, probes: []time.Duration{0, 10*time.Minute - 1, 10 * time.Minute},
			want: &Decision{Action: Blocked, Reason: ReasonBreakerOpen, Delay: 10 * time.Minute}},
		{name: "closed again after a try", build: func(t *testing.T, tr *Tracker) time.Time {
			openBreaker(t, tr, t0)
			now := tr.BreakerRetryAt()
			tr.Started(now)
			tr.Ready(now.Add(time.Minute))
			now = now.Add(2 * time.Minute)
			tr.Failed(now, Failure{Class: ClassSignaled, Signal: "SIGKILL"})
			return now
		}, probes: []time.Duration{0, time.Hour}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tr := New(p, constant(0.5))
			last := tt.build(t, tr)
			rec := tr.Record()

			// The state file holds the records as JSON, by pool id (internal/state,
			// which imports this package, tests its own round trip).
			data, err := json.Marshal(map[string]Record{"big": rec})
			if err != nil {
				t.Fatal(err)
			}
			var loaded map[string]Record
			if err := json.Unmarshal(data, &loaded); err != nil {
				t.Fatal(err)
			}
			restored := FromRecord(p, loaded["big"], constant(0.5))

			if diff := cmp.Diff(rec, restored.Record()); diff != "" {
				t.Errorf("Record after FromRecord (-saved +restored):\n%s", diff)
			}
			for _, d := range tt.probes {
				now := last.Add(d)
				if diff := cmp.Diff(tr.Decide(now), restored.Decide(now)); diff != "" {
					t.Errorf("Decide at +%v (-original +restored):\n%s", d, diff)
				}
			}
			if tt.want != nil {
				got := restored.Decide(last)
				if got.Action != tt.want.Action || got.Reason != tt.want.Reason || got.Delay != tt.want.Delay {
					t.Errorf("restored Decide = %v, want %v", got, *tt.want)
				}
			}
			type facts struct {
				Breaker                BreakerState
				NextRetry, RetryAt     time.Time
				Backoff                time.Duration
				Restarts, Consecutive  int
				OpenCount, InWindow    int
				LastClass, LastMessage string
				LastAt                 time.Time
			}
			get := func(x *Tracker) facts {
				f := facts{Breaker: x.BreakerState(), NextRetry: x.NextRetry(), RetryAt: x.BreakerRetryAt(), Backoff: x.Backoff(),
					Restarts: x.Restarts(), Consecutive: x.ConsecutiveFailures(), OpenCount: x.BreakerOpenCount(),
					InWindow: x.FailuresInWindow(last), LastAt: x.LastFailureAt()}
				if lf := x.LastFailure(); lf != nil {
					f.LastClass, f.LastMessage = lf.Class, lf.Message
				}
				return f
			}
			if diff := cmp.Diff(get(tr), get(restored)); diff != "" {
				t.Errorf("accessors (-original +restored):\n%s", diff)
			}
		})
	}
}

func TestRecordJSON(t *testing.T) {
	p := defaultPolicy()
	tr := New(p, constant(0.5))
	crash(tr, t0, 41*time.Second, cuda)
	got, err := json.Marshal(tr.Record())
	if err != nil {
		t.Fatal(err)
	}
	want := `{"failures":["2026-03-04T05:06:48Z"],"consecutiveFailures":1,"nextRetry":"2026-03-04T05:06:50Z",` +
		`"lastError":{"class":"cuda_error","message":"CUDA error: out of memory","hint":"` + Hint(ClassCUDAError) + `","time":"2026-03-04T05:06:48Z"},` +
		`"breakerState":"closed"}`
	if string(got) != want {
		t.Errorf("record JSON\n got %s\nwant %s", got, want)
	}
}

func TestHintOverrideIsSaved(t *testing.T) {
	p := defaultPolicy()
	tr := New(p, nil)
	f := vram
	f.Hint = "lower ctx, add GPUs to devices, or pick a smaller model or quantisation"
	tr.Failed(t0, f)
	rec := tr.Record()
	if rec.LastError.Hint != f.Hint {
		t.Errorf("saved hint %q, want the failure's own %q", rec.LastError.Hint, f.Hint)
	}
	if got := FromRecord(p, rec, nil).LastFailure(); got.HintFor() != f.Hint {
		t.Errorf("restored hint %q, want %q", got.HintFor(), f.Hint)
	}
	tr.Failed(t0.Add(time.Second), vram)
	if got := tr.Record().LastError.Hint; got != Hint(ClassInsufficientVRAM) {
		t.Errorf("saved hint %q, want the class's", got)
	}
}

func TestFromRecordHalfOpen(t *testing.T) {
	p := defaultPolicy()
	tr := New(p, constant(0.5))
	openBreaker(t, tr, t0)
	now := tr.BreakerRetryAt()
	tr.Started(now) // the try runs when the daemon stops
	rec := tr.Record()
	if rec.BreakerState != "half-open" {
		t.Fatalf("saved breaker state %q, want half-open", rec.BreakerState)
	}
	t.Run("no engine found: the try is allowed once", func(t *testing.T) {
		r := FromRecord(p, rec, nil)
		if got := r.Decide(now.Add(time.Minute)); got.Action != Start || got.Reason != ReasonHalfOpen {
			t.Fatalf("Decide = %v, want start (half_open)", got)
		}
		r.Started(now.Add(time.Minute))
		if got := r.Decide(now.Add(2 * time.Minute)); got.Action != None || got.Reason != ReasonHalfOpenTry {
			t.Errorf("Decide during the try = %v, want none (half_open_try)", got)
		}
		r.Failed(now.Add(3*time.Minute), exited)
		if r.BreakerState() != Open || r.BreakerRetryAt().Sub(now.Add(3*time.Minute)) != 2*p.Breaker.Cooldown {
			t.Errorf("after the try failed: %v until %v, want open for %v", r.BreakerState(), r.BreakerRetryAt(), 2*p.Breaker.Cooldown)
		}
	})
	t.Run("the try's engine is adopted", func(t *testing.T) {
		r := FromRecord(p, rec, nil)
		r.Adopted(now.Add(time.Minute))
		if got := r.Decide(now.Add(time.Minute)); got.Action != None || got.Reason != ReasonHalfOpenTry {
			t.Fatalf("Decide = %v, want none (half_open_try)", got)
		}
		r.Ready(now.Add(2 * time.Minute))
		if r.BreakerState() != HalfOpen {
			t.Errorf("breaker %v after the adopted try became Ready, want half-open until ResetAfter", r.BreakerState())
		}
		r.StableCheck(now.Add(2*time.Minute + p.ResetAfter))
		if r.BreakerState() != Closed {
			t.Errorf("breaker %v after the adopted try stayed Ready for ResetAfter, want closed", r.BreakerState())
		}
	})
	t.Run("an unknown state is restored open", func(t *testing.T) {
		bad := rec
		bad.BreakerState = "ajar"
		r := FromRecord(p, bad, nil)
		if r.BreakerState() != Open {
			t.Errorf("breaker %v, want open", r.BreakerState())
		}
	})
}

func TestBreakerStateNames(t *testing.T) {
	for _, tt := range []struct {
		s      BreakerState
		name   string
		metric float64
	}{{Closed, "closed", 0}, {Open, "open", 1}, {HalfOpen, "half-open", 2}} {
		if tt.s.String() != tt.name || tt.s.Metric() != tt.metric {
			t.Errorf("%d: %q %v, want %q %v", tt.s, tt.s.String(), tt.s.Metric(), tt.name, tt.metric)
		}
		got, err := ParseBreakerState(tt.name)
		if err != nil || got != tt.s {
			t.Errorf("ParseBreakerState(%q) = %v, %v", tt.name, got, err)
		}
	}
	if got, err := ParseBreakerState(""); err != nil || got != Closed {
		t.Errorf(`ParseBreakerState("") = %v, %v; want closed`, got, err)
	}
	if _, err := ParseBreakerState("ajar"); err == nil {
		t.Error(`ParseBreakerState("ajar") succeeded`)
	}
	for a, want := range map[Action]string{None: "none", Start: "start", Wait: "wait", Blocked: "blocked"} {
		if a.String() != want {
			t.Errorf("Action %d: %q, want %q", a, a.String(), want)
		}
	}
}

func TestHint(t *testing.T) {
	seen := map[string]string{}
	for _, c := range Classes {
		h := Hint(c)
		if h == "" || h == Hint("no such class") {
			t.Errorf("class %s has no hint of its own", c)
		}
		if other, dup := seen[h]; dup {
			t.Errorf("classes %s and %s share a hint", c, other)
		}
		seen[h] = c
		if s := (Failure{Class: c}).String(); strings.HasPrefix(s, "engine failed (") {
			t.Errorf("class %s has no description: %q", c, s)
		}
	}
	if len(Classes) != 21 {
		t.Errorf("%d classes, DESIGN.md names 12, issue 13 adds 3 and issue 15 adds 6", len(Classes))
	}
	for class, want := range map[string]string{
		ClassInsufficientVRAM: "lower ctx, move the split toward the larger GPU, or pick a smaller quantisation",
		ClassCUDAError:        "check the engine log for the CUDA error; lower ctx or --parallel if out of memory; check nvidia-smi and dmesg for Xid errors",
	} {
		if got := Hint(class); got != want {
			t.Errorf("Hint(%s) = %q, want %q", class, got, want)
		}
	}
	if !strings.HasPrefix(Hint(ClassCPUSpillover), "the engine holds no GPU memory: ") {
		t.Errorf("Hint(cpu_spillover) = %q", Hint(ClassCPUSpillover))
	}
}

func TestFailureString(t *testing.T) {
	for _, tt := range []struct {
		f    Failure
		want string
	}{
		{Failure{Class: ClassExited, ExitCode: 1}, "engine exited with code 1"},
		{Failure{Class: ClassExited, Message: "CUDA error: out of memory"}, "engine exited (CUDA error: out of memory)"},
		{Failure{Class: ClassSignaled, Signal: "SIGKILL"}, "engine killed by SIGKILL"},
		{Failure{Class: ClassOOMKilled, Signal: "SIGKILL"}, "engine killed by the kernel's OOM killer"},
		{vram, "insufficient VRAM (GPU 1: needs 13.2 GiB, 11.4 GiB free)"},
		{Failure{Class: "weird"}, "engine failed (weird)"},
		{Failure{}, "engine failed"},
	} {
		if got := tt.f.String(); got != tt.want {
			t.Errorf("%+v: %q, want %q", tt.f, got, tt.want)
		}
	}
}

func TestMessage(t *testing.T) {
	p := defaultPolicy()
	t.Run("backoff, as in USERS.md", func(t *testing.T) {
		tr := New(p, constant(0.5))
		crash(tr, t0, 10*time.Second, exited)
		crash(tr, tr.NextRetry(), 20*time.Second, exited)
		tr.Started(tr.NextRetry())
		now := tr.NextRetry().Add(41 * time.Second)
		tr.Failed(now, Failure{Class: ClassExited, Message: "CUDA error: out of memory"})
		want := "engine exited (CUDA error: out of memory) after 41 s; restart 3 of 5 in 10 minutes (backoff 4 s)"
		if got := tr.Message("big", now); got != want {
			t.Errorf("Message\n got %q\nwant %q", got, want)
		}
		tr.Failed(now.Add(time.Second), vram) // before any spawn: no uptime
		want = "insufficient VRAM (GPU 1: needs 13.2 GiB, 11.4 GiB free); restart 4 of 5 in 10 minutes (backoff 8 s)"
		if got := tr.Message("big", now.Add(time.Second)); got != want {
			t.Errorf("Message\n got %q\nwant %q", got, want)
		}
	})
	t.Run("open, as in USERS.md", func(t *testing.T) {
		tr := New(p, constant(0.5))
		now := openBreaker(t, tr, t0)
		want := "circuit open after 5 failures in 10 minutes; fix the config or run pool-managerd reset big"
		if got := tr.Message("big", now.Add(time.Minute)); got != want {
			t.Errorf("Message\n got %q\nwant %q", got, want)
		}
		if got := BreakerMessage("big", 5, 10*time.Minute); got != want {
			t.Errorf("BreakerMessage\n got %q\nwant %q", got, want)
		}
		now = crash(tr, tr.BreakerRetryAt(), time.Second, exited)
		want = "circuit re-opened: the half-open try failed (engine exited with code 1); next try in 10 minutes; " +
			"fix the config or run pool-managerd reset big"
		if got := tr.Message("big", now); got != want {
			t.Errorf("Message\n got %q\nwant %q", got, want)
		}
	})
	t.Run("nothing to tell", func(t *testing.T) {
		tr := New(p, nil)
		if got := tr.Message("big", t0); got != "" {
			t.Errorf("Message of a new pool = %q, want empty", got)
		}
	})
}

func TestHuman(t *testing.T) {
	for d, want := range map[time.Duration]string{
		0: "0 s", -time.Second: "0 s", 41 * time.Second: "41 s", 7600 * time.Millisecond: "7.6 s",
		time.Minute: "1 minute", 10 * time.Minute: "10 minutes", time.Hour: "1 hour", 48 * time.Hour: "48 hours",
		90 * time.Second: "1m30s", 61*time.Second + 400*time.Millisecond: "1m1s",
	} {
		if got := Human(d); got != want {
			t.Errorf("Human(%v) = %q, want %q", d, got, want)
		}
	}
}
