package restart

import (
	"fmt"
	"math"
	"slices"
	"time"

	"github.com/poolmanagerd/pool-managerd/schema"
)

// MaxCooldown caps the breaker's cool-down, which doubles each time the
// breaker re-opens: 5 minutes reaches it after nine re-openings. A policy
// whose Cooldown is longer keeps its Cooldown, undoubled.
const MaxCooldown = 24 * time.Hour

// Action is what Decide says to do about a pool's engine.
type Action int

// The actions of a Decision.
const (
	// None: nothing to do; the engine runs (or its one half-open try does).
	None Action = iota
	// Start: a start is allowed now.
	Start
	// Wait: the backoff holds the next start until Decision.At.
	Wait
	// Blocked: the circuit breaker is open; no start until Decision.At, the end of its cool-down.
	Blocked
)

// String returns the action's name: "none", "start", "wait" or "blocked".
func (a Action) String() string {
	switch a {
	case None:
		return "none"
	case Start:
		return "start"
	case Wait:
		return "wait"
	case Blocked:
		return "blocked"
	}
	return fmt.Sprintf("Action(%d)", int(a))
}

// MarshalText writes the action's name.
func (a Action) MarshalText() ([]byte, error) { return []byte(a.String()), nil }

// BreakerState is the state of a pool's circuit breaker.
type BreakerState int

// The states of the circuit breaker (see the package documentation).
const (
	// Closed: starts are governed by the backoff alone.
	Closed BreakerState = iota
	// Open: no start until the cool-down has elapsed.
	Open
	// HalfOpen: the one try after the cool-down is running (or, after a
	// daemon restart, may run).
	HalfOpen
)

// String returns "closed", "open" or "half-open", the names the state file keeps.
func (s BreakerState) String() string {
	switch s {
	case Closed:
		return "closed"
	case Open:
		return "open"
	case HalfOpen:
		return "half-open"
	}
	return fmt.Sprintf("BreakerState(%d)", int(s))
}

// MarshalText writes the state's name.
func (s BreakerState) MarshalText() ([]byte, error) { return []byte(s.String()), nil }

// Metric returns the state as the circuit_state metric has it: 0 closed, 1 open, 2 half-open.
func (s BreakerState) Metric() float64 {
	return float64(s)
}

// ParseBreakerState reads a state's name; "" is Closed (a record that never
// saw the breaker).
func ParseBreakerState(s string) (BreakerState, error) {
	switch s {
	case "", "closed":
		return Closed, nil
	case "open":
		return Open, nil
	case "half-open":
		return HalfOpen, nil
	}
	return Open, fmt.Errorf("unknown circuit breaker state %q", s)
}

// Decision is Decide's answer: what to do, when, and why.
type Decision struct {
	Action Action
	// Delay is how long until At, for Wait and Blocked; zero otherwise.
	Delay time.Duration
	// At is when a start is (or was) allowed: the time asked about for Start,
	// the end of the backoff for Wait, the end of the cool-down for Blocked;
	// zero for None.
	At time.Time
	// Reason is one of the Reason constants.
	Reason string
	// Attempt numbers the start this decision is about, counted from the
	// last time the backoff started over: 1 for a first start, n+1 after n
	// consecutive failures.
	Attempt int
}

// String describes the decision for logs: "wait 4s (backoff, attempt 3)".
func (d Decision) String() string {
	switch d.Action {
	case Wait, Blocked:
		return fmt.Sprintf("%s %v (%s, attempt %d)", d.Action, d.Delay, d.Reason, d.Attempt)
	}
	return fmt.Sprintf("%s (%s, attempt %d)", d.Action, d.Reason, d.Attempt)
}

// Reasons of a Decision. Their values are stable: logs, metrics and tests use them.
const (
	// ReasonFirstStart: the pool has never started and has no failure: Start.
	ReasonFirstStart = "first_start"
	// ReasonStopped: the engine was stopped on purpose, which is not a
	// failure: Start whenever the pool is wanted again.
	ReasonStopped = "stopped"
	// ReasonConfigChanged: the pool's config changed, which closed the
	// breaker and cleared the backoff: Start.
	ReasonConfigChanged = "config_changed"
	// ReasonReset: an operator ran pool-managerd reset, which closed the
	// breaker and cleared the backoff: Start.
	ReasonReset = "reset"
	// ReasonBackoff: the pool failed and its backoff has not elapsed: Wait until At.
	ReasonBackoff = "backoff"
	// ReasonBackoffElapsed: the pool failed and its backoff has elapsed: Start (a restart).
	ReasonBackoffElapsed = "backoff_elapsed"
	// ReasonBreakerOpen: the circuit breaker is open: Blocked until At, the
	// end of its cool-down. A config change or pool-managerd reset closes it.
	ReasonBreakerOpen = "breaker_open"
	// ReasonHalfOpen: the breaker's cool-down has elapsed: Start, once. The
	// try closes the breaker once it has stayed Ready for ResetAfter and
	// re-opens it, with twice the cool-down, when it fails before that.
	ReasonHalfOpen = "half_open"
	// ReasonHalfOpenTry: the one half-open try is running: None until it
	// has stayed Ready for ResetAfter (the breaker closes) or fails (the
	// breaker re-opens).
	ReasonHalfOpenTry = "half_open_try"
	// ReasonRunning: an engine was spawned (or adopted) and has not failed
	// or stopped: None.
	ReasonRunning = "running"
)

// runState is what the tracker knows of the engine process.
type runState int

const (
	idle     runState = iota // no engine: never started, failed or stopped
	starting                 // spawned or adopted, not Ready yet
	ready                    // passed its health check
)

// event is the last event that decides the reason of an idle pool's start.
type event int

const (
	evNone event = iota
	evStarted
	evFailed
	evStopped
	evConfigChanged
	evReset
)

// Tracker is the backoff and circuit breaker of one pool. It is told what
// happened (Started, Ready, Failed, Stopped, ConfigChanged, Reset,
// StableCheck), each time with the time it happened, and asked what to do
// (Decide). It reads no clock and draws no random number of its own: the
// caller passes the time and New the random source. A Tracker is not safe
// for concurrent use.
type Tracker struct {
	policy schema.RestartPolicy
	rnd    func() float64

	// Backoff.
	consecutive int
	delay       time.Duration // the last backoff delay chosen
	nextRetry   time.Time
	last        *Failure
	lastAt      time.Time
	lastUptime  time.Duration // how long the failed engine ran; 0 when unknown or never spawned
	restarts    int
	lastEvent   event

	// Breaker.
	breaker     BreakerState
	failures    []time.Time // failure times within the window, oldest first
	openedAt    time.Time
	openCount   int // openings since the last stable period, reset or config change
	retryAt     time.Time
	tryInFlight bool // HalfOpen: the try was spawned in this process

	// The engine.
	run        runState
	startedAt  time.Time
	readySince time.Time
}

// New returns the tracker of a pool that has no history. rnd returns
// numbers in [0, 1) for the jitter (math/rand/v2's Float64 of a seeded
// source, in production); nil means no jitter, as does a constant 0.5.
func New(policy schema.RestartPolicy, rnd func() float64) *Tracker {
	if rnd == nil {
		rnd = func() float64 { return 0.5 }
	}
	return &Tracker{policy: policy, rnd: rnd}
}

// FromRecord returns the tracker a pool's saved record describes, so that a
// restarted pool-managerd keeps the pool's backoff and an open breaker.
//
// What the record does not keep is the engine: the restored tracker sees
// none. Report an adopted engine with Adopted, or with Ready and the time it
// first became Ready (reconcile.EngineRecord.ReadyAt), so that the stable period
// counts from then; report a dead one with Failed. A breaker saved
// half-open may or may not have spawned its try: the restored tracker
// allows the try (once) unless an adopted engine is reported first. An
// unknown breaker state is restored as Open (no restart storm from a
// damaged record). Failure's ExitCode and Signal are not in the record;
// its Hint is, when it is not the class's.
func FromRecord(policy schema.RestartPolicy, rec Record, rnd func() float64) *Tracker {
	t := New(policy, rnd)
	t.failures = slices.Clone(rec.Failures)
	if len(t.failures) == 0 {
		t.failures = nil
	}
	t.consecutive = rec.ConsecutiveFailures
	t.nextRetry = rec.NextRetry
	if e := rec.LastError; e != nil {
		t.last = &Failure{Class: e.Class, Message: e.Message}
		if e.Hint != Hint(e.Class) {
			t.last.Hint = e.Hint
		}
		t.lastAt = e.Time
		if !rec.NextRetry.IsZero() && !rec.NextRetry.Before(e.Time) {
			t.delay = rec.NextRetry.Sub(e.Time)
		}
	}
	t.breaker, _ = ParseBreakerState(rec.BreakerState)
	t.openedAt = rec.BreakerOpenedAt
	t.openCount = rec.BreakerOpenCount
	t.retryAt = rec.BreakerRetryAt
	t.restarts = rec.Restarts
	if t.consecutive > 0 {
		t.lastEvent = evFailed
	}
	return t
}

// Record returns what is saved of the tracker in the state file.
func (t *Tracker) Record() Record {
	rec := Record{
		Failures:            slices.Clone(t.failures),
		ConsecutiveFailures: t.consecutive,
		NextRetry:           t.nextRetry,
		BreakerOpenedAt:     t.openedAt,
		BreakerOpenCount:    t.openCount,
		BreakerRetryAt:      t.retryAt,
		BreakerState:        t.breaker.String(),
		Restarts:            t.restarts,
	}
	if t.last != nil {
		rec.LastError = &ErrorRecord{Class: t.last.Class, Message: t.last.Message, Hint: t.last.HintFor(), Time: t.lastAt}
	}
	return rec
}

// Policy returns the restart policy the tracker applies.
func (t *Tracker) Policy() schema.RestartPolicy { return t.policy }

// SetPolicy changes the restart policy (an in-place update of the pool's
// restart settings). It applies from the next event: a backoff or cool-down
// already chosen is kept. It does not close the breaker; ConfigChanged does.
func (t *Tracker) SetPolicy(p schema.RestartPolicy) { t.policy = p }

// Started reports that the pool's engine was spawned at now. A spawn after
// a failure counts as a restart; a spawn once an open breaker's cool-down
// has elapsed is its one half-open try.
func (t *Tracker) Started(now time.Time) {
	if t.lastEvent == evFailed {
		t.restarts++
	}
	t.lastEvent = evStarted
	switch {
	case t.breaker == Open && !now.Before(t.retryAt):
		t.breaker, t.tryInFlight = HalfOpen, true
	case t.breaker == HalfOpen:
		t.tryInFlight = true
	}
	t.run, t.startedAt, t.readySince = starting, now, time.Time{}
}

// Adopted reports that an engine pool-managerd started earlier runs and is
// still loading (found after a daemon restart). It is no spawn: no restart
// is counted and no half-open try is used, except that the try a breaker
// saved half-open had spawned is taken to be this engine.
func (t *Tracker) Adopted(now time.Time) {
	if t.breaker == HalfOpen {
		t.tryInFlight = true
	}
	if t.run == idle {
		t.run, t.startedAt = starting, now
	}
}

// Ready reports that the engine passed its health check at now (the model
// is loaded). Calling it again while Ready changes nothing, so it may be
// called on every health poll. A half-open try that reaches Ready does not
// close the breaker yet: it closes once the engine has stayed Ready for the
// policy's ResetAfter (StableCheck, or the next Failed, sees it), and a
// failure before that re-opens it with twice the cool-down. Ready of an
// engine the tracker did not see start (an adopted one) is accepted; pass
// the time it first became Ready.
func (t *Tracker) Ready(now time.Time) {
	if t.run == ready {
		return
	}
	if t.run == idle {
		t.startedAt = now
	}
	t.run, t.readySince = ready, now
}

// Stable reports whether the engine has been Ready for the policy's
// ResetAfter at now, without a break.
func (t *Tracker) Stable(now time.Time) bool {
	return t.run == ready && now.Sub(t.readySince) >= t.policy.ResetAfter
}

// StableCheck is called whenever the tracker is looked at with a running
// engine: once the engine has been Ready for the policy's ResetAfter without
// a break, the backoff starts over (no consecutive failures; the next
// cool-down is the policy's Cooldown again) and a half-open breaker closes,
// its window cleared: the half-open try succeeded. It reports whether it
// changed anything.
func (t *Tracker) StableCheck(now time.Time) bool {
	if !t.Stable(now) {
		return false
	}
	changed := false
	if t.breaker == HalfOpen {
		t.breaker, t.tryInFlight = Closed, false
		t.failures, t.openedAt, t.retryAt = nil, time.Time{}, time.Time{}
		changed = true
	}
	if t.consecutive == 0 && t.openCount == 0 && t.nextRetry.IsZero() && t.delay == 0 {
		return changed
	}
	t.consecutive, t.openCount, t.delay, t.nextRetry = 0, 0, 0, time.Time{}
	return true
}

// Stopped reports that the engine was stopped on purpose (drain before a
// replace or delete, an operator's stop). It is not a failure, whatever the
// engine's exit status: the backoff and the breaker are left as they are.
// A half-open try stopped on purpose is not used up. Stopping an engine
// already reported Failed (killing an unhealthy one) changes nothing.
func (t *Tracker) Stopped(now time.Time) {
	if t.run == idle {
		return
	}
	t.run, t.readySince, t.tryInFlight = idle, time.Time{}, false
	t.lastEvent = evStopped
}

// ConfigChanged reports that the pool's config changed: the breaker closes
// and the backoff and failure history are cleared. The last failure is kept
// for people to read.
func (t *Tracker) ConfigChanged(now time.Time) {
	t.clear()
	t.lastEvent = evConfigChanged
}

// Reset reports pool-managerd reset: the breaker closes and the backoff and
// failure history are cleared. The last failure is kept for people to read.
func (t *Tracker) Reset(now time.Time) {
	t.clear()
	t.lastEvent = evReset
}

func (t *Tracker) clear() {
	t.consecutive, t.delay, t.nextRetry = 0, 0, time.Time{}
	t.breaker, t.failures, t.openCount, t.tryInFlight = Closed, nil, 0, false
	t.openedAt, t.retryAt = time.Time{}, time.Time{}
}

// Failed reports a failure at now: the engine failed, or the start failed
// before any spawn (insufficient VRAM or RAM found by the pre-spawn check
// counts too, for the backoff and for the breaker). It chooses the next
// backoff delay and opens the breaker on the policy's Failures-th failure
// within its Window. A failure of the half-open try (or any failure once
// the cool-down has elapsed) re-opens the breaker with twice the cool-down.
func (t *Tracker) Failed(now time.Time, f Failure) {
	// It ran stable: this failure starts a new streak (and a half-open try
	// that stayed Ready for ResetAfter succeeded before it failed).
	t.StableCheck(now)
	if t.run != idle && !t.startedAt.IsZero() {
		t.lastUptime = now.Sub(t.startedAt)
	} else {
		t.lastUptime = 0
	}
	f2 := f
	t.last, t.lastAt, t.lastEvent = &f2, now, evFailed
	t.run, t.readySince = idle, time.Time{}
	t.consecutive++
	t.delay = t.backoff(t.consecutive, f.Class)
	t.nextRetry = now.Add(t.delay)

	t.failures = append(t.pruned(now), now)
	switch t.breaker {
	case Closed:
		if n := t.policy.Breaker.Failures; n > 0 && len(t.failures) >= n {
			t.open(now)
		}
	case Open:
		if !now.Before(t.retryAt) {
			t.open(now) // the try, made before any spawn, failed
		}
	case HalfOpen:
		t.open(now)
	}
}

// pruned returns the failure times within the window of now; a failure
// exactly Window old still counts.
func (t *Tracker) pruned(now time.Time) []time.Time {
	cut := now.Add(-t.policy.Breaker.Window)
	i := 0
	for i < len(t.failures) && t.failures[i].Before(cut) {
		i++
	}
	return slices.Clip(t.failures[i:])
}

func (t *Tracker) open(now time.Time) {
	t.openCount++
	t.breaker, t.tryInFlight = Open, false
	t.openedAt = now
	t.retryAt = now.Add(t.cooldown(t.openCount))
}

// cooldown is the cool-down of the n-th opening: Cooldown × 2^(n−1), at
// most MaxCooldown (or Cooldown, when that is longer).
func (t *Tracker) cooldown(n int) time.Duration {
	c := max(t.policy.Breaker.Cooldown, 0)
	for i := 1; i < n && c > 0 && c < MaxCooldown; i++ {
		c *= 2
	}
	return min(c, max(t.policy.Breaker.Cooldown, MaxCooldown))
}

// backoff is the delay after the n-th consecutive failure:
// InitialBackoff × 2^(n−1), doubled again for CUDA and driver errors, then
// capped at MaxBackoff, then spread by ±Jitter.
func (t *Tracker) backoff(n int, class string) time.Duration {
	limit := max(t.policy.MaxBackoff, 0)
	d := max(t.policy.InitialBackoff, 0)
	for i := 1; i < n && d > 0 && d < limit; i++ {
		if d > limit/2 {
			d = limit // doubling would pass the cap (or overflow)
			break
		}
		d *= 2
	}
	if doubles(class) && d <= math.MaxInt64/2 {
		d *= 2
	}
	d = min(d, limit)
	j := min(max(t.policy.Jitter, 0), 1)
	r := t.rnd()
	if !(r >= 0) { // NaN too
		r = 0
	}
	r = min(r, 1)
	x := float64(d) * (1 + j*(2*r-1))
	if x >= math.MaxInt64 {
		return math.MaxInt64
	}
	return time.Duration(x)
}

// doubles reports whether a failure class doubles the backoff delay.
func doubles(class string) bool {
	return class == ClassCUDAError || class == ClassDriverReset
}

// Decide says what to do about the pool at now. It changes nothing: ask as
// often as needed.
func (t *Tracker) Decide(now time.Time) Decision {
	d := Decision{Attempt: t.consecutive + 1}
	if t.run != idle {
		d.Action, d.Reason = None, ReasonRunning
		if t.breaker == HalfOpen {
			d.Reason = ReasonHalfOpenTry
		}
		return d
	}
	switch t.breaker {
	case Open:
		if now.Before(t.retryAt) {
			d.Action, d.Reason, d.At, d.Delay = Blocked, ReasonBreakerOpen, t.retryAt, t.retryAt.Sub(now)
			return d
		}
		d.Action, d.Reason, d.At = Start, ReasonHalfOpen, now
		return d
	case HalfOpen:
		// Only after a daemon restart: the try may not have been spawned.
		d.Action, d.Reason, d.At = Start, ReasonHalfOpen, now
		return d
	}
	d.Action, d.At = Start, now
	switch t.lastEvent {
	case evFailed:
		if now.Before(t.nextRetry) {
			d.Action, d.Reason, d.At, d.Delay = Wait, ReasonBackoff, t.nextRetry, t.nextRetry.Sub(now)
			return d
		}
		d.Reason = ReasonBackoffElapsed
	case evStopped:
		d.Reason = ReasonStopped
	case evConfigChanged:
		d.Reason = ReasonConfigChanged
	case evReset:
		d.Reason = ReasonReset
	default:
		d.Reason = ReasonFirstStart
	}
	return d
}

// BreakerState returns the breaker's state. An Open breaker whose cool-down
// has elapsed stays Open until its try is spawned (Decide then says Start,
// ReasonHalfOpen); it is HalfOpen while the try runs.
func (t *Tracker) BreakerState() BreakerState { return t.breaker }

// BreakerRetryAt returns when an open breaker allows its half-open try; zero while closed.
func (t *Tracker) BreakerRetryAt() time.Time { return t.retryAt }

// BreakerOpenedAt returns when the breaker last opened; zero while closed.
func (t *Tracker) BreakerOpenedAt() time.Time { return t.openedAt }

// BreakerOpenCount returns how many times the breaker opened since the pool
// last ran stable, was reset or changed: the next cool-down is
// Cooldown × 2^count.
func (t *Tracker) BreakerOpenCount() int { return t.openCount }

// NextRetry returns when the backoff allows (or allowed) the start after the
// last failure; zero when no failure is pending (none yet, or cleared by a
// stable period, a config change or a reset).
func (t *Tracker) NextRetry() time.Time { return t.nextRetry }

// Backoff returns the last backoff delay chosen (the backoff_seconds
// metric); zero when no failure is pending.
func (t *Tracker) Backoff() time.Duration { return t.delay }

// LastFailure returns a copy of the last failure, nil when there is none.
func (t *Tracker) LastFailure() *Failure {
	if t.last == nil {
		return nil
	}
	f := *t.last
	return &f
}

// LastFailureAt returns when the last failure happened; zero when there is none.
func (t *Tracker) LastFailureAt() time.Time { return t.lastAt }

// Restarts returns how many spawns followed a failure (the pool's
// restarts, over its whole recorded life: not cleared by a reset).
func (t *Tracker) Restarts() int { return t.restarts }

// ConsecutiveFailures returns the failures since the backoff last started over.
func (t *Tracker) ConsecutiveFailures() int { return t.consecutive }

// FailuresInWindow returns how many recorded failures lie within the
// breaker's window of now.
func (t *Tracker) FailuresInWindow(now time.Time) int {
	n := 0
	cut := now.Add(-t.policy.Breaker.Window)
	for _, f := range t.failures {
		if !f.Before(cut) && !f.After(now) {
			n++
		}
	}
	return n
}
