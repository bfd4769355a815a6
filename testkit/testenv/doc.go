// Package testenv is the one test environment that the tests which run the
// real programs share (e2e/, features/, internal/daemon and cmd/fake-engine):
//
//   - Binaries builds pool-managerd and fake-engine once per `go test ./...`
//     run, shared by the package test processes that go test runs in
//     parallel: a folder under os.TempDir() named by a hash of what the
//     binaries are built from, written by one process under a file lock
//     while the others wait, and reused as long as that hash holds (an edit
//     of the sources makes a new one).
//   - Env gives a test process a root folder; Env.NewNode lays out a
//     simulated node for one test under it (simulated GPUs, config tree,
//     state directory, model files), and Pool, NodeDecl and ConfigFile write
//     its config from a small Go description.
//   - Engines, KillEngines and CheckEngines are the one leak check: they find
//     the engine processes (by the marker every engine carries) whose state
//     directory or simulated node lies under a folder, a test's or the whole
//     process's, and kill them.
//
// A test process's engines all live under its Env's root, so the checks of
// parallel test processes never see each other's engines.
package testenv
