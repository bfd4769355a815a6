/*
Package restart is the backoff and circuit breaker of one pool: a small
state machine that is told what happened to the pool (Started, Adopted,
Ready, Failed, Stopped, ConfigChanged, Reset, StableCheck) and asked what to
do next (Decide). It is pure: no goroutines, no I/O, no clock and no global
random source. Every input carries the time it happened and New takes the
random source of the jitter, so the timing is tested without sleeping. Its
history is saved in and restored from the state file (Record, FromRecord),
so a restarted pool-managerd keeps a pool's backoff and an open breaker.

# Backoff

The n-th consecutive failure delays the next start by

	delay = min(InitialBackoff × 2^(n−1) × k, MaxBackoff) × (1 + Jitter × (2·rnd() − 1))

where k is 2 for CUDA and driver errors (ClassCUDAError, ClassDriverReset)
and 1 for every other class. The doubling for CUDA errors comes before the
cap, so MaxBackoff stays the longest delay before jitter; the jitter comes
after it, so pools crash-looping at the cap still spread out, within
MaxBackoff × (1 ± Jitter). With the defaults (1 s, 60 s, ±10 %) the delays
are 1, 2, 4, 8, 16, 32, 60, 60, ... seconds, and 2, 4, 8, 16, 32, 60, 60, ...
for CUDA errors, each spread by ±10 %.

	             Started                  Ready
	(no engine) ─────────▶ starting ───────────▶ ready ───┐ StableCheck: Ready for
	     ▲                    │                    │ ▲    │ ResetAfter without a break:
	     │                    │ Failed             │ └────┘ n = 0 (the backoff starts over)
	     │                    ▼                    │
	     │      ┌─────────────────────────┐ Failed │
	     │      │ waiting: n++, NextRetry │◀───────┘ (a failure after ResetAfter of Ready
	     │      │ = now + delay(n)        │           starts a new streak: n = 1)
	     │      └─────────────────────────┘
	     │         │ Decide before NextRetry: Wait (backoff)
	     └─────────┘ Decide from NextRetry on: Start (backoff_elapsed)

Stopped (on purpose, whatever the exit status) is no failure: the engine
goes, n and NextRetry stay. ConfigChanged and Reset clear n and NextRetry.

A failure found before any spawn (insufficient VRAM or RAM on the pre-spawn
check) is reported with Failed like any other: it counts for the backoff and
for the breaker, so a pool that cannot fit is retried slower and slower and
then stopped by the breaker, not retried every resync.

# Circuit breaker

The breaker keeps the times of the failures within its Window (a sliding
window: a failure counts until it is more than Window old; one exactly Window
old still counts). Every failure reported to Failed counts, of every class,
before or after a spawn; a stable period does not clear the window (it only
restarts the backoff), a half-open success (the try Ready for ResetAfter),
ConfigChanged and Reset do.

	              Failures failures within Window
	┌────────┐ ──────────────────────────────────────▶ ┌────────┐
	│ Closed │                                         │  Open  │ Decide: Blocked
	└────────┘ ◀─── ConfigChanged, Reset (any state) ── └────────┘ (breaker_open)
	    ▲                                                 │   ▲
	    │ the try stays Ready                    cool-down│   │ the try fails, also
	    │ for ResetAfter                         elapsed, │   │ after Ready but before
	    │ (StableCheck): the                 Decide: Start│   │ ResetAfter: re-open at
	    │ window is cleared                   (half_open);│   │ once, the cool-down
	    │                                  Started (the   ▼   │ doubles
	    │                                  one try)  ┌───────────┐
	    └────────────────────────────────────────────│ Half-open │ Decide: None
	                                                 └───────────┘ (half_open_try)

A half-open try counts as a success only once its engine has stayed Ready
for ResetAfter: an engine that dies right after Ready (0.1 s, say) is a
failed try, and the breaker re-opens with the doubled cool-down, so there is
exactly one spawn per cool-down however the engine fails.

The k-th opening (since the pool last ran stable for ResetAfter, was reset
or had its config changed) has a cool-down of Cooldown × 2^(k−1): 5, 10, 20,
40 minutes ... with the default, at most MaxCooldown. An Open breaker whose
cool-down has elapsed stays Open until its try is spawned, and Decide says
Start once; a failure reported after the cool-down (even one found before the
spawn) is the try's failure and re-opens the breaker. The breaker becomes
Half-open when the try is spawned and stays so while it preloads; Decide says
None, so there is exactly one try. The backoff is not consulted while the
breaker is open: the cool-down replaces it. A Half-open breaker restored from
the state file does not know whether its try was spawned: it allows the try
unless an adopted engine is reported first (Adopted, Ready).

# Reasons

Every Decision carries one of these reasons:

	first_start      (Start)   never started, no failure
	stopped          (Start)   stopped on purpose, which is no failure
	config_changed   (Start)   the config changed: breaker closed, backoff cleared
	reset            (Start)   pool-managerd reset: breaker closed, backoff cleared
	backoff          (Wait)    failed; the backoff runs until Decision.At
	backoff_elapsed  (Start)   failed; the backoff has elapsed: restart
	breaker_open     (Blocked) the breaker is open until Decision.At, the end of its cool-down
	half_open        (Start)   the cool-down has elapsed: one try
	half_open_try    (None)    the one try is running
	running          (None)    an engine runs

Each error class (Class constants) has a Hint a person can act on, and
Message writes the line that tells a person where the pool stands.
*/
package restart
