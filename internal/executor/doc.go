// Package executor carries out reconcile's plans on one node: it stops,
// starts and adopts engines through an engine.Driver, waits for each started
// pool to be Ready, and records everything in the state file as it goes, so
// that a crash at any point is recovered by the next run. It is the
// imperative layer under the daemon and the CLI; the decisions it acts on
// are reconcile's, which does no I/O. It reports what happened (events, and
// the state file: an exit classified by its status, the start of a stop, a
// SIGKILL after the grace, a driver fault), decides no phase of its own
// (the phase it names in an event is reconcile.Lifecycle's) and never sleeps
// out a backoff: a start it cannot make yet returns with the time it may
// (Outcome.NotBefore), and the caller waits or looks again then.
package executor
