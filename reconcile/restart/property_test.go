package restart

import (
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/poolmanagerd/pool-managerd/schema"
)

// propertyPolicies are the policies the random event sequences run under:
// the default and its edges.
func propertyPolicies() []schema.RestartPolicy {
	def := defaultPolicy()
	wide := def
	wide.Jitter = 0.5
	noBrk := noBreaker()
	inverted := def // initial above max
	inverted.InitialBackoff, inverted.MaxBackoff = 10*time.Second, 5*time.Second
	zero := schema.RestartPolicy{Breaker: schema.Breaker{Failures: 1}}
	eager := def
	eager.Breaker = schema.Breaker{Failures: 1, Window: 0, Cooldown: time.Second}
	huge := def
	huge.InitialBackoff, huge.MaxBackoff, huge.Jitter = time.Hour, math.MaxInt64, 0.5
	huge.Breaker = schema.Breaker{Failures: 3, Window: 100 * time.Hour, Cooldown: 30 * time.Hour}
	short := def
	short.ResetAfter, short.Breaker.Window = 0, time.Minute
	return []schema.RestartPolicy{def, wide, noBrk, inverted, zero, eager, huge, short}
}

// scales are the steps of the fake clock between events.
var scales = []time.Duration{0, time.Nanosecond, time.Millisecond, 100 * time.Millisecond, time.Second, 10 * time.Second, time.Minute, 5 * time.Minute}

// checker drives a tracker with events and checks its invariants after each.
type checker struct {
	t      testing.TB
	p      schema.RestartPolicy
	tr     *Tracker
	rnd    func() float64
	now    time.Time
	trying bool // the half-open try was spawned and has not ended
	log    []string
}

func newChecker(t testing.TB, p schema.RestartPolicy, rnd func() float64) *checker {
	return &checker{t: t, p: p, tr: New(p, rnd), rnd: rnd, now: t0}
}

// step advances the clock by dt and applies event kind (arg picks a class).
func (c *checker) step(kind, arg byte, dt time.Duration) {
	c.now = c.now.Add(dt)
	tr, now := c.tr, c.now
	var what string
	switch kind % 11 {
	case 0:
		what = "Started"
		tr.Started(now)
		c.trying = tr.BreakerState() == HalfOpen
	case 1:
		what = "Ready"
		tr.Ready(now)
		c.trying = false
	case 2, 3:
		f := Failure{Class: Classes[int(arg)%len(Classes)], ExitCode: int(arg)}
		what = "Failed " + f.Class
		tr.Failed(now, f)
		c.trying = false
	case 4:
		what = "Stopped"
		tr.Stopped(now)
		c.trying = false
	case 5:
		what = "StableCheck"
		tr.StableCheck(now)
	case 6:
		what = "ConfigChanged"
		tr.ConfigChanged(now)
		c.trying = false
	case 7:
		what = "Reset"
		tr.Reset(now)
		c.trying = false
	case 8:
		what = "daemon restart"
		c.tr = FromRecord(c.p, tr.Record(), c.rnd)
		c.trying = false // the restored tracker allows the try again (documented)
	default:
		// Obey: wait for what Decide says and start when it allows.
		d := tr.Decide(now)
		if d.Action == Wait || d.Action == Blocked {
			c.now = d.At
			c.check("before obeying")
			d = tr.Decide(c.now)
		}
		what = "obey " + d.String()
		if d.Action == Start {
			tr.Started(c.now)
			c.trying = tr.BreakerState() == HalfOpen
		}
	}
	c.log = append(c.log, fmt.Sprintf("+%v %s", c.now.Sub(t0), what))
	c.check(what)
}

func (c *checker) fail(format string, args ...any) {
	c.t.Helper()
	tail := c.log
	if len(tail) > 12 {
		tail = tail[len(tail)-12:]
	}
	c.t.Fatalf("%s\nlast events:\n%v\nrecord: %+v", fmt.Sprintf(format, args...), tail, c.tr.Record())
}

func (c *checker) check(after string) {
	c.t.Helper()
	tr, now, p := c.tr, c.now, c.p

	before := tr.Record()
	d := tr.Decide(now)
	if rec := tr.Record(); !sameRecord(before, rec) {
		c.fail("after %s: Decide changed the record:\n%s", after, cmp.Diff(before, rec))
	}
	if d2 := tr.Decide(now); d2 != d {
		c.fail("after %s: Decide answered %v, then %v", after, d, d2)
	}

	// The delay is never negative and never beyond MaxBackoff × 2 × (1 + Jitter)
	// (the chosen rule keeps it within MaxBackoff × (1 + Jitter)).
	b := float64(tr.Backoff())
	limit := max(float64(p.MaxBackoff), 0) * (1 + p.Jitter)
	if b < 0 || b > limit*2+1 || b > limit+1 {
		c.fail("after %s: backoff %v outside [0, %v]", after, tr.Backoff(), time.Duration(limit))
	}
	if d.Delay < 0 {
		c.fail("after %s: negative delay %v", after, d)
	}
	switch d.Action {
	case Wait, Blocked:
		if d.Delay == 0 || !d.At.Equal(now.Add(d.Delay)) {
			c.fail("after %s: %v with At %v, want a positive delay to At", after, d, d.At)
		}
	case Start, None:
		if d.Delay != 0 {
			c.fail("after %s: %v with a delay", after, d)
		}
	}
	if d.Action == Wait && float64(d.Delay) > limit+1 {
		c.fail("after %s: wait %v beyond the backoff limit", after, d.Delay)
	}

	// While Open, no Start before the cool-down.
	if tr.BreakerState() == Open && now.Before(tr.BreakerRetryAt()) && d.Action == Start {
		c.fail("after %s: %v while open until %v", after, d, tr.BreakerRetryAt())
	}
	if tr.BreakerState() == Open {
		cd := tr.BreakerRetryAt().Sub(tr.BreakerOpenedAt())
		if cd < 0 || cd > max(p.Breaker.Cooldown, MaxCooldown) {
			c.fail("after %s: cool-down %v", after, cd)
		}
	}
	// Exactly one half-open try.
	if c.trying && d.Action == Start {
		c.fail("after %s: %v while the half-open try runs", after, d)
	}
	// A closed breaker holds fewer failures than open it.
	if n := p.Breaker.Failures; tr.BreakerState() == Closed && n > 0 && len(before.Failures) >= n {
		c.fail("after %s: closed with %d failures in its window", after, len(before.Failures))
	}
	if tr.FailuresInWindow(now) > len(before.Failures) {
		c.fail("after %s: %d failures in window of %d recorded", after, tr.FailuresInWindow(now), len(before.Failures))
	}
	if d.Attempt != tr.ConsecutiveFailures()+1 {
		c.fail("after %s: attempt %d with %d consecutive failures", after, d.Attempt, tr.ConsecutiveFailures())
	}
	// The record round-trips.
	if again := FromRecord(p, before, c.rnd).Record(); !sameRecord(before, again) {
		c.fail("after %s: Record/FromRecord round trip:\n%s", after, cmp.Diff(before, again))
	}
}

// sameRecord is cmp.Equal for records, without the reflection: the
// property test compares millions of them.
func sameRecord(a, b Record) bool {
	if !slices.EqualFunc(a.Failures, b.Failures, time.Time.Equal) || (a.LastError == nil) != (b.LastError == nil) ||
		(a.LastError != nil && !sameError(*a.LastError, *b.LastError)) {
		return false
	}
	return a.ConsecutiveFailures == b.ConsecutiveFailures && a.NextRetry.Equal(b.NextRetry) &&
		a.BreakerOpenedAt.Equal(b.BreakerOpenedAt) && a.BreakerOpenCount == b.BreakerOpenCount &&
		a.BreakerRetryAt.Equal(b.BreakerRetryAt) && a.BreakerState == b.BreakerState && a.Restarts == b.Restarts
}

// TestProperties runs random event sequences under each policy.
func TestProperties(t *testing.T) {
	runs := 100
	if testing.Short() {
		runs = 10
	}
	for pi, p := range propertyPolicies() {
		t.Run(fmt.Sprintf("policy%d", pi), func(t *testing.T) {
			for seed := range uint64(runs) {
				r := rand.New(rand.NewPCG(seed, uint64(pi)))
				c := newChecker(t, p, r.Float64)
				for range 200 {
					dt := scales[r.IntN(len(scales))] * time.Duration(1+r.IntN(32))
					c.step(byte(r.IntN(256)), byte(r.IntN(256)), dt)
				}
			}
		})
	}
}

// FuzzTracker drives a tracker with events decoded from the input (three
// bytes an event: kind, class, time step) and checks the same invariants.
func FuzzTracker(f *testing.F) {
	f.Add([]byte{0, 0, 0})
	f.Add([]byte{0, 5, 3, 2, 5, 4, 9, 0, 0, 2, 5, 4, 9, 0, 0, 2, 5, 4, 9, 0, 0, 2, 5, 4, 9, 0, 0, 2, 5, 4, 9, 0, 0, 9, 0, 0, 1, 0, 4})
	f.Add([]byte{1, 2, 8, 0, 200, 2, 3, 8, 4, 8, 9, 0, 0, 8, 0, 0, 9, 0, 0, 2, 4, 4, 7, 0, 0})
	f.Fuzz(func(t *testing.T, data []byte) {
		if len(data) == 0 {
			return
		}
		pols := propertyPolicies()
		p := pols[int(data[0])%len(pols)]
		data = data[1:]
		// The jitter's random numbers come from the input too.
		i := 0
		rnd := func() float64 {
			i++
			if len(data) == 0 {
				return 0.5
			}
			return float64(data[i%len(data)]) / 256
		}
		c := newChecker(t, p, rnd)
		for len(data) >= 3 && len(c.log) < 1000 {
			step := data[2]
			dt := scales[int(step)%len(scales)] * time.Duration(1+int(step)/len(scales))
			c.step(data[0], data[1], dt)
			data = data[3:]
		}
	})
}

func sameError(a, b ErrorRecord) bool {
	return a.Class == b.Class && a.Message == b.Message && a.Hint == b.Hint && a.Time.Equal(b.Time)
}
