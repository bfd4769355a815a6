/*
Package reconcile is pool-managerd's decisions, and nothing else: no I/O, no
goroutines, no sleeping, no clock. The imperative layer (package
internal/executor) carries out what it decides and records what happened;
the daemon, the API, the metrics and `status` render its answers.

It holds the types of desired, observed and recorded state (Desired,
Observed, EngineRecord), Plan and its renderings, the hashes that make a saved
plan refuse a changed node, and the one pool lifecycle.

	config ──schema.Load──▶ Desired ──┐
	                                   ├──▶ Plan ──▶ Changes (create, update, replace,
	GPUs + state file ──observe──▶ Observed ┘          delete, restart, adopt, blocked)

The reasons attached to a change are for people; the change's action, spec
and notBefore are what the executor and the daemon act on.

# The pool lifecycle

Lifecycle is the one place a pool's phase and readiness are decided: from
the pool's facts (its spec in the config in force, its engine as observed
with what the state file records of it, its backoff and breaker history, an
operator's hold) and the time, it says the phase, whether the pool is ready,
what comes next and when. Plan turns "what comes next" into a change; the
daemon schedules its next look from the change's notBefore; poolview renders
the phase for /v1/pools, the metrics and `status`; the executor's progress
events name the phase the lifecycle gives.

	              start                 health ok, placement verified
	Pending ──────────────▶ Preloading ─────────────────────────────▶ Ready
	   │                       ▲
	   │ start, model.source   │ downloaded and verified
	   │ not in the cache      │ (a failed download: Unready)
	   └──────▶ Fetching ──────┘
	   ▲                     │ exit, timeout, CUDA error,              │ exit, health
	   │                     ▼ spillover, mask violation              ▼ failing, Xid
	   │                  Unready ◀────────────────────────────────────┘
	   │   backoff elapsed │  ▲  │ breaker opens
	   └───────────────────┘  │  ▼
	                          │ Failed ── cool-down elapsed: one half-open try
	                          │           (Preloading); a success only once
	                          │           Ready for restart.resetAfter
	  replace, delete,        │
	  restart, driver ──────▶ Draining ──▶ (engine gone) ──▶ Pending / Unready / Stopped
	  error, operator stop

	Phase       ready  what comes next (Next)
	Pending     no     start (first start, a changed config, a recorded intent; one
	                   that waits for GPUs a pool pending removal holds)
	Fetching    no     await (its start downloads the model into the model cache;
	                   nothing is spawned until the file is verified)
	Preloading  no     await (loading, or healthy with its placement not verified), adopt
	Ready       yes    none, update (in place), replace (the stop has not begun yet:
	                   a new spec's model downloads first; a failed download
	                   leaves the engine serving, replace again at At)
	Unready     no     wait (backoff until At), start, restart (health failing, driver
	                   error), record-exit (died after Ready, not yet recorded)
	Draining    no     none while the stop runs; after a daemon restart mid-stop:
	                   restart, replace or stop to finish it
	Failed      no     blocked (breaker open until At, its half-open try)
	Stopped     no     none (an operator's stop), stop (left the config)

Draining begins the moment the executor begins a stop: it marks the engine's
record (EngineRecord.DrainingSince) before the drain, so a router reading
`ready` never sends traffic to an engine being stopped. A failure recorded
against a running engine (a driver error on its GPU) makes it Unready at once;
a failed fetch never is a running engine's (its model is on disk): it is the
failure of a replace, which the engine's record marks (ReplaceFailed), so
that the replace is tried again when the backoff allows, the engine serving
meanwhile.

A pool that leaves the config is not stopped at once: the daemon keeps it in
the desired state as Desired.Settling until its removal settles (serve
--removal-settle), so its phase is what it was, and a start that needs the
memory it holds is blocked as awaiting_removal, which is not a failure.

Adding a phase or an input is one case in Lifecycle, one constant and a line
in Phases: the pool_phase metric and the API's phase enum are checked against
Phases.
*/
package reconcile
