// Package e2e holds end-to-end tests of pool-managerd's apply with real
// processes: the pool-managerd and fake-engine binaries built from this
// module, a simulated GPU node per test (package sim) and engines that run
// as real processes on free ports.
//
// It has no code of its own: everything is in the _test.go files.
//
//   - main_test.go: TestMain builds the binaries, makes the test process a
//     child subreaper (so that engines outliving the apply that started
//     them are re-parented to it and reaped), and fails the run when a test
//     left an engine process running.
//   - helpers_test.go: a workspace per test (config, simulated node, state
//     directory, model files, a node name of its own), running pool-managerd,
//     reading status --format json, the state file, the engine logs and the
//     process table.
//   - apply_test.go: acceptance on the mixed 24 GB + 12 GB example, saved
//     plans and their staleness, the state directory's lock.
//   - faults_test.go: engine faults and their error classes.
//   - crashloop_test.go: backoff, circuit breaker and reset across applies,
//     for loads that fail, engines that exit after Ready and engines that
//     turn unhealthy after Ready.
//   - crashsafety_test.go: apply killed with SIGKILL at each step of a start.
//   - engines_test.go: vLLM and TGI engines, whose worker processes hold
//     the GPU memory.
//   - daemon_helpers_test.go: pool-managerd serve in the background (killed and
//     waited for in cleanup, its log printed on failure), its API client,
//     /metrics parsed, its JSON log.
//   - daemon_test.go: the daemon: config edits, invalid and half-written
//     files, engine exits, Xids, adoption, operator actions, metrics, logs.
//   - fleet_test.go: three daemons on one config repository.
//   - fetch_test.go: models the daemon fetches (model.source) from a
//     testkit/modelserver on loopback: the Fetching phase, a shared
//     download, resume after kill -9, digest mismatch, HTTP errors with
//     backoff, a cache too small.
//   - notify_test.go: serve under systemd's Type=notify (READY, STATUS,
//     WATCHDOG, STOPPING).
//
// Tests that end with "DEFECT:" name a defect of pool-managerd that they
// found; they assert the documented behaviour, so they fail until it is fixed.
//
// Run with `go test ./e2e/`; the tests need Linux (/proc, prctl).
package e2e
