// Package archtest holds a test that keeps the import graph running one way,
// as DESIGN.md's "The house as it should stand now" lays out: each product
// package imports only packages of its own floor or of the floors below it,
// and never a test tool.
//
//  1. schema/… (the config language; schema/llamaargs)
//  2. drivers/… (the machine: GPUs and engines)
//  3. reconcile/… (pure decisions)
//  4. internal/executor, internal/state, internal/observe, internal/watch,
//     internal/gitsource
//  5. internal/daemon, internal/api, internal/metrics, internal/poolview,
//     internal/cli, cmd/pool-managerd
//
// Tools and tests (testkit/…, cmd/fake-engine, tools/…, e2e, features,
// examples, and this package) may import anything; no product package may
// import them. A product package the table does not know fails the test
// until it is given a floor.
package archtest
