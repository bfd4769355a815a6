// Package executor carries out reconcile's plans on one node: it stops,
// starts and adopts engines through an engine.Driver, waits for each started
// pool to be Ready, and records everything in the state file as it goes, so
// that a crash at any point is recovered by the next run. It is the
// imperative layer under the daemon and the CLI; the decisions it acts on
// are reconcile's, which does no I/O.
package executor
