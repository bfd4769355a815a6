package reconcile

import (
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/poolmanagerd/pool-managerd/reconcile/restart"
	"github.com/poolmanagerd/pool-managerd/schema"
)

// Phase is where a pool is in its lifecycle (see Lifecycle).
type Phase string

// The phases of a pool, in the order Phases lists them.
const (
	// Pending: wanted, nothing tried yet (or a start is about to be).
	Pending Phase = "Pending"
	// Fetching: a start downloads the pool's model (model.source) into the
	// node's model cache before any engine is spawned; not ready.
	Fetching Phase = "Fetching"
	// Preloading: an engine runs and loads its model; not ready.
	Preloading Phase = "Preloading"
	// Ready: the engine passed its health check and its GPU placement was verified.
	Ready Phase = "Ready"
	// Unready: the pool failed; it is restarted when its backoff allows.
	Unready Phase = "Unready"
	// Draining: its engine is being stopped (replace, delete, restart, a
	// driver error, an operator's stop); not ready from the decision on.
	Draining Phase = "Draining"
	// Failed: the circuit breaker is open; no restart until its half-open
	// try, a config change or a reset.
	Failed Phase = "Failed"
	// Stopped: no engine, and none wanted (an operator stopped it, or the
	// pool left the config).
	Stopped Phase = "Stopped"
)

// Phases lists every phase: the values of the pool_phase metric and of the
// API's phase enum are checked against it.
func Phases() []Phase {
	return []Phase{Pending, Fetching, Preloading, Ready, Unready, Draining, Failed, Stopped}
}

// Next is what the lifecycle says comes next for a pool.
type Next string

// What comes next for a pool.
const (
	// NextNone: nothing to do (Ready, or Stopped and not wanted).
	NextNone Next = "none"
	// NextAwait: an engine preloads, or is healthy but its placement is not
	// verified yet: watch it until Ready.
	NextAwait Next = "await"
	// NextStart: spawn an engine (the first start, a restart once the
	// backoff has elapsed, the breaker's half-open try).
	NextStart Next = "start"
	// NextRestart: stop the engine that fails its health check, then start one.
	NextRestart Next = "restart"
	// NextReplace: stop the engine, then start one with the new spec.
	NextReplace Next = "replace"
	// NextUpdate: record a spec change that needs no restart.
	NextUpdate Next = "update"
	// NextAdopt: take over a running engine that the state file lacks.
	NextAdopt Next = "adopt"
	// NextRecordExit: the engine died after it was Ready and its failure is
	// not recorded yet: record it; the backoff then says when to restart.
	NextRecordExit Next = "record-exit"
	// NextStop: stop the engine and forget it: the pool is not wanted here
	// (or an operator stopped it).
	NextStop Next = "stop"
	// NextWait: the backoff runs until At.
	NextWait Next = "wait"
	// NextBlocked: the circuit breaker is open until At, its half-open try.
	NextBlocked Next = "blocked"
)

// Facts are what is known of one pool at one moment: the inputs of Lifecycle.
type Facts struct {
	// Spec is the pool as the config in force wants it; nil when the pool is
	// not (or no longer) in this node's config.
	Spec *schema.Pool
	// Engine is the pool's engine as observed, with what the state file
	// records of it; nil when there is none.
	Engine *Engine
	// History is the pool's backoff and breaker record.
	History restart.Record
	// Held: an operator stopped the pool; it stays Stopped until a reset, a
	// change of its config or a daemon restart.
	Held bool
	// Blocked names why the node cannot run the pool now, whatever its
	// history (the plan's blocker class: a lost GPU, a foreign process on
	// its GPUs, too little VRAM, an unknown need); empty when nothing does.
	Blocked string
	// Fetch is the download of the pool's model that its start waits on;
	// nil when none runs (no model.source, or the model is in the cache).
	Fetch *Fetch
	// WantedHash is the hash of the spec the pool wants, when Spec is not
	// that spec itself (status without a config knows only the hash its
	// engine was started from); empty means SpecHash(Spec).
	WantedHash string
}

// Fetch is how far the download of a pool's model has come.
type Fetch struct {
	// Done and Total are bytes; Total is 0 while the size is not known yet.
	Done, Total int64
	// BytesPerSecond is the recent download rate.
	BytesPerSecond float64
	// Since is when the download (shared by every pool of the same model) began.
	Since time.Time
}

// Status is the lifecycle's answer for one pool: the one place a pool's
// phase and readiness are decided.
type Status struct {
	Phase Phase
	// Ready: a router may send the pool traffic. Only in phase Ready.
	Ready bool
	// Next is what comes next, and At when it may happen: the end of the
	// backoff (NextWait, and NextReplace after a replace's failed start) or
	// of the breaker's cool-down (NextBlocked, NextReplace); zero means now.
	Next Next
	At   time.Time
	// Breaker is the circuit breaker's state at the time asked about.
	Breaker restart.BreakerState
	// Reason says why, for people.
	Reason string
}

// Lifecycle decides where one pool stands at now, and what comes next (the
// package doc draws its diagram and tables). It is pure: no I/O, no clock;
// ask as often as needed. Draining starts the moment the executor begins a
// stop (it marks the engine's record) and lasts until the engine is gone; a
// pool is never ready while draining.
func Lifecycle(f Facts, now time.Time) Status {
	e := f.Engine
	if e != nil && e.Draining && !e.Alive {
		e = nil // the stop has ended: what follows is decided as if no engine ran
	}
	if e != nil && !e.Alive && !e.Recorded {
		e = nil
	}
	switch {
	case f.Held:
		return held(e)
	case f.Spec == nil:
		return unwanted(e)
	case e != nil && e.Alive:
		return running(f.Spec, f.wanted(), e, f.History, f.Fetch, now)
	}
	return stopped(f, f.wanted(), e, now)
}

func (f Facts) wanted() string {
	if f.WantedHash != "" {
		return f.WantedHash
	}
	return SpecHash(f.Spec)
}

// held: an operator stopped the pool.
func held(e *Engine) Status {
	if e != nil && e.Alive {
		return Status{Phase: Draining, Next: NextStop, Reason: "stopped by an operator: its engine is being stopped"}
	}
	return Status{Phase: Stopped, Next: NextNone, Reason: "stopped by an operator; reset it, change its config or restart the daemon to start it again"}
}

// unwanted: the pool is not in this node's config.
func unwanted(e *Engine) Status {
	if e != nil && e.Alive {
		return Status{Phase: Draining, Next: NextStop, Reason: "the pool is no longer in this node's config"}
	}
	if e != nil {
		return Status{Phase: Stopped, Next: NextStop, Reason: "the pool is no longer in this node's config: its record is removed"}
	}
	return Status{Phase: Stopped, Next: NextNone, Reason: "not in this node's config"}
}

// running decides about a pool whose engine runs.
func running(spec *schema.Pool, hash string, e *Engine, history restart.Record, fetch *Fetch, now time.Time) Status {
	t := restart.FromRecord(spec.Restart, history, nil)
	if !e.ReadyAt.IsZero() {
		t.Ready(e.ReadyAt)
		t.StableCheck(now)
	}
	s := Status{Breaker: t.BreakerState()}
	switch {
	case e.Draining:
		// A stop began and the engine still runs: a daemon restarted in the
		// middle of it finishes it.
		s.Phase, s.Next, s.Reason = Draining, NextReplace, fmt.Sprintf("engine pid %d is being stopped", e.PID)
		if e.SpecHash == hash {
			s.Next = NextRestart
		}
		return s
	case e.SpecHash != hash:
		if e.Spec != nil && inPlace(diffSpecs(e.Spec, spec)) && e.Health != HealthFailing {
			s = healthy(e, s)
			s.Next, s.Reason = NextUpdate, "only fields that need no restart changed; the engine keeps running"
			return s
		}
		// The engine serves the old spec until its stop begins (then
		// Draining); a replace that cannot start (no memory for the new
		// spec) leaves it serving. So does the download of the new spec's
		// model (model.source): the engine is stopped only once the model
		// is in the cache, and a failed fetch leaves it serving.
		s = healthy(e, s)
		s.Next = NextReplace
		switch {
		case e.Spec == nil:
			s.Reason = "the running engine was started from another spec (its fields are not recorded)"
		case e.Health == HealthFailing:
			s.Reason = fmt.Sprintf("engine pid %d fails its health check, and its spec changed", e.PID)
		default:
			s.Reason = "fields that need a new engine changed"
		}
		switch {
		case fetch != nil:
			s.Reason += "; the new model downloads while the engine serves the old spec: " + fetch.Progress()
		case e.ReplaceFailed == hash:
			s = retryReplace(spec, history, s, now)
		}
		return s
	case e.Health == HealthFailing:
		s.Phase, s.Next, s.Reason = Unready, NextRestart, fmt.Sprintf("engine pid %d fails its health check", e.PID)
		return s
	case FailedSinceReady(e.ReadyAt, history):
		// A failure was recorded against this engine while it ran (a driver
		// error on its GPU): it is not to be trusted, and is restarted.
		s.Phase, s.Next, s.Reason = Unready, NextRestart, fmt.Sprintf("engine pid %d: %s", e.PID, history.LastError.Message)
		return s
	case !e.Recorded:
		s.Phase, s.Next = Preloading, NextAdopt
		s.Reason = fmt.Sprintf("engine pid %d runs this pool's spec but is not in the state file (found by its marker)", e.PID)
		return s
	}
	s = healthy(e, s)
	s.Next = NextNone
	if !s.Ready {
		s.Next = NextAwait
	}
	return s
}

// retryReplace decides when a replace is tried again whose start failed
// while the engine ran (the new spec's model could not be fetched): when
// the pool's backoff, or its breaker's cool-down, allows (At). The failures
// are the replace's, not the running engine's: the breaker is theirs.
func retryReplace(spec *schema.Pool, history restart.Record, s Status, now time.Time) Status {
	t := restart.FromRecord(spec.Restart, history, nil)
	s.Breaker = t.BreakerState()
	failed := "its start failed"
	if history.LastError != nil {
		failed = fmt.Sprintf("its start failed (%s)", history.LastError.Class)
	}
	switch d := t.Decide(now); d.Action {
	case restart.Wait, restart.Blocked:
		s.At = d.At
		s.Reason += fmt.Sprintf("; %s: next try at %s (in %v)", failed, d.At.UTC().Format(time.RFC3339), d.Delay.Round(time.Second))
	default:
		s.Reason += "; " + failed + ": trying again"
	}
	return s
}

// healthy sets the phase of a running engine from its health and whether
// its placement was verified (it was recorded Ready).
func healthy(e *Engine, s Status) Status {
	switch {
	case e.Health == HealthLoading:
		s.Phase, s.Reason = Preloading, "running, loading its model"
	case e.Health == HealthFailing:
		s.Phase, s.Reason = Unready, fmt.Sprintf("engine pid %d fails its health check", e.PID)
	case e.Unverified || !e.Recorded:
		// Healthy, but its placement was never checked: waited on like a preload.
		s.Phase, s.Reason = Preloading, "running, healthy; its GPU placement is not yet verified"
	case e.Health == "":
		s.Phase, s.Ready, s.Reason = Ready, true, "running"
	default:
		s.Phase, s.Ready, s.Reason = Ready, true, "running, healthy"
	}
	return s
}

// stopped decides about a wanted pool whose engine does not run.
func stopped(f Facts, hash string, e *Engine, now time.Time) Status {
	spec, history := f.Spec, f.History
	t := restart.FromRecord(spec.Restart, history, nil)
	if e != nil && e.SpecHash != hash && e.ReplaceFailed != hash {
		// A config change closes the breaker and clears the backoff; the
		// failed tries of the spec it brought (ReplaceFailed) count.
		t.ConfigChanged(now)
	}
	s := Status{Breaker: t.BreakerState()}
	if e != nil && ExitUnrecorded(e.ReadyAt, history) {
		s.Phase, s.Next, s.Reason = Unready, NextRecordExit, exitReason(e)
		return s
	}
	if f.Fetch != nil {
		// A start is under way: it downloads the model before it spawns.
		s.Phase, s.Next, s.Reason = Fetching, NextAwait, "downloading its model: "+f.Fetch.Progress()
		return s
	}
	d := t.Decide(now)
	switch d.Action {
	case restart.Blocked:
		s.Phase, s.Next, s.At = Failed, NextBlocked, d.At
		s.Reason = fmt.Sprintf("circuit open after %d failures in %s (half-open try at %s)", len(history.Failures), restart.Human(spec.Restart.Breaker.Window), d.At.UTC().Format(time.RFC3339))
		return s
	case restart.Wait:
		s.Phase, s.Next, s.At = Unready, NextWait, d.At
		s.Reason = fmt.Sprintf("backoff: not before %s (in %v)", d.At.UTC().Format(time.RFC3339), d.Delay.Round(time.Second))
		return s
	}
	s.Next = NextStart
	switch {
	case f.Blocked == ClassAwaitingRemoval:
		s.Phase, s.Reason = Pending, "waiting for its GPUs: a pool that left the config holds them until its removal settles"
	case f.Blocked != "":
		s.Phase, s.Reason = Unready, "blocked: "+f.Blocked
	case d.Reason == restart.ReasonHalfOpen:
		s.Phase, s.Reason = Unready, "circuit half-open: one try"
	case e != nil && e.Intent:
		s.Phase, s.Reason = Pending, "an earlier start was recorded but no engine process was found"
	case d.Reason == restart.ReasonConfigChanged:
		s.Phase, s.Reason = Pending, "its config changed: it starts afresh"
	case d.Reason == restart.ReasonBackoffElapsed:
		s.Phase, s.Reason = Unready, "the backoff has elapsed"
	case e != nil && e.PID != 0:
		s.Phase, s.Reason = Unready, exitReason(e)
	case history.LastError != nil:
		s.Phase, s.Reason = Unready, "it failed: "+history.LastError.Message
	default:
		s.Phase, s.Reason = Pending, "no engine runs this pool"
	}
	return s
}

// Progress says how far a download has come, for people: "1024.0 of 4096.0
// MiB (25%) at 50.0 MiB/s".
func (f Fetch) Progress() string {
	done := fmt.Sprintf("%.1f MiB", float64(f.Done)/(1<<20))
	if f.Total > 0 {
		done = fmt.Sprintf("%.1f of %.1f MiB (%.0f%%)", float64(f.Done)/(1<<20), float64(f.Total)/(1<<20), 100*float64(f.Done)/float64(f.Total))
	}
	if f.BytesPerSecond > 0 {
		done += fmt.Sprintf(" at %.1f MiB/s", f.BytesPerSecond/(1<<20))
	}
	return done
}

// exitReason says how a recorded engine that is gone ended, when known.
func exitReason(e *Engine) string {
	switch {
	case strings.HasPrefix(e.Exit, "engine "):
		return e.Exit
	case e.Exit != "":
		return "the engine " + e.Exit
	}
	return "the engine is not running"
}

// FailedSinceReady reports whether a failure was recorded after an engine
// became Ready at readyAt (zero: it never did): one of its own. A failed
// fetch of a model is never a running engine's (its model is on disk): it
// is the failure of a replace that left the engine running.
func FailedSinceReady(readyAt time.Time, history restart.Record) bool {
	return !readyAt.IsZero() && history.LastError != nil && history.LastError.Time.After(readyAt) &&
		!slices.Contains(restart.FetchClasses, history.LastError.Class)
}

// ExitUnrecorded reports whether an engine that was Ready at readyAt (zero:
// never) and is now gone died without its failure being recorded in the
// pool's history: the death is counted once, by whoever finds it first.
func ExitUnrecorded(readyAt time.Time, history restart.Record) bool {
	if readyAt.IsZero() {
		return false
	}
	return history.LastError == nil || readyAt.After(history.LastError.Time)
}

// WithRecord brings an observed engine up to date with its record in the
// state file, which the executor writes as things happen between two
// observations: a spawn, Ready, the start of a stop. rec nil means the
// record is gone: the engine was stopped and forgotten since (one found by
// its marker alone never had a record). The result is what Lifecycle is
// asked about; e is not changed.
func WithRecord(e *Engine, rec *EngineRecord) *Engine {
	if rec == nil {
		if e != nil && e.Recorded {
			return nil
		}
		return e
	}
	if rec.PID == 0 && e != nil && e.PID != 0 {
		return e // only the intent is recorded; the observation found its engine (by its marker)
	}
	if e == nil || rec.PID != e.PID {
		// Started (or its start recorded) since the observation: it runs
		// unless it is only an intent, and it loads until recorded Ready.
		n := &Engine{Pool: rec.Pool, Generation: rec.Generation, SpecHash: rec.SpecHash, Spec: rec.Spec,
			PID: rec.PID, Port: rec.Port, Recorded: true, Intent: rec.PID == 0 && rec.Intent, Alive: rec.PID != 0,
			Health: HealthLoading, Unverified: rec.ReadyAt.IsZero(), ReadyAt: rec.ReadyAt, Draining: !rec.DrainingSince.IsZero(),
			ReplaceFailed: rec.ReplaceFailed}
		if !rec.ReadyAt.IsZero() {
			n.Health = HealthOK
		}
		return n
	}
	c := *e
	c.Recorded, c.SpecHash, c.Spec = true, rec.SpecHash, rec.Spec
	c.ReadyAt, c.Unverified = rec.ReadyAt, rec.ReadyAt.IsZero()
	c.Draining = !rec.DrainingSince.IsZero()
	c.ReplaceFailed = rec.ReplaceFailed
	if c.Alive && !rec.ReadyAt.IsZero() && c.Health == HealthLoading {
		c.Health = HealthOK // recorded Ready since the observation
	}
	return &c
}
