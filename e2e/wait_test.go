//go:build linux

package e2e

import (
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"
)

// TestWaitCommand runs `pool-managerd wait` against a real daemon: it waits
// for a daemon that is not started yet, for a pool's phase, for a replaced
// engine, for a config load after a moment; what it prints is what the API
// says at that point; and a condition that never comes ends at its timeout
// with exit 1 and what it last saw.
func TestWaitCommand(t *testing.T) {
	t.Parallel()
	w := newWorkspace(t)
	w.writeConfig(pool{ID: "a"})
	// wait's own timeout comes before the harness's (cmdTimeout), so a failure says what wait saw.
	waitArgs := func(args ...string) []string {
		return append([]string{"wait", "--state-dir", w.state, "--timeout", (cmdTimeout - 5*time.Second).String()}, args...)
	}

	// Asked before the daemon runs: wait goes on asking until it answers.
	early := w.start(nil, waitArgs("--for", "ready")...)
	d := w.serve()
	if r := early.wait(t); r.code != 0 || r.stdout != "the daemon is ready: its first reconcile is done\n" {
		t.Fatalf("wait --for ready, started before the daemon: %s", r)
	}

	r := w.run(nil, waitArgs("a", "--for", "phase=Ready")...)
	p := d.pool("a")
	if r.code != 0 || r.stdout != fmt.Sprintf("a Ready (pid %d)\n", p.PID) {
		t.Fatalf("wait a --for phase=Ready: %s\nthe API after it: %+v", r, p)
	}
	if !isReady(p) {
		t.Fatalf("wait said a is Ready; the API after it: %+v", p)
	}
	status := w.run(nil, append([]string{"status", "a", "--field", "pid"}, w.nodeFlags()...)...)
	if status.code != 0 || status.stdout != fmt.Sprintf("%d\n", p.PID) {
		t.Fatalf("status a --field pid, the API saying pid %d: %s", p.PID, status)
	}

	// A context change replaces a's engine: wait --not-pid returns on the new one.
	w.writeFile("pools/a.cue", w.poolCUE(pool{ID: "a", Model: w.modelOf("a"), Ctx: 8192}))
	r = w.run(nil, waitArgs("a", "--for", "phase=Ready", "--not-pid", strconv.Itoa(p.PID))...)
	q := d.pool("a")
	if r.code != 0 || r.stdout != fmt.Sprintf("a Ready (pid %d)\n", q.PID) || q.PID == p.PID || !isReady(q) {
		t.Fatalf("wait a --for phase=Ready --not-pid %d: %s\nthe API after it: %+v", p.PID, r, q)
	}
	contains(t, "the engine wait returned on", cmdline(t, q.PID), "--ctx-size 8192")

	// A half-written file: the load after the moment noted is invalid.
	since := time.Now()
	w.writeFile("pools/broken.cue", "package poolmanagerd\n\npools: broken: {")
	r = w.run(nil, waitArgs("--for", "config=invalid", "--since", since.Format(time.RFC3339Nano))...)
	cfg := d.config()
	if r.code != 0 || cfg.Valid || !cfg.LastLoad.After(since) || !strings.HasPrefix(r.stdout, "the config invalid, last loaded ") {
		t.Fatalf("wait --for config=invalid --since %s: %s\n/v1/config after it: valid %v, last load %s", since.Format(time.RFC3339Nano), r, cfg.Valid, cfg.LastLoad)
	}
	contains(t, "wait's report of the invalid config", r.stdout, "broken.cue")

	// What never comes: exit 1 at the timeout, saying what it last saw (a
	// stays Ready on its engine: the broken file is never applied).
	r = w.run(nil, "wait", "--state-dir", w.state, "a", "--for", "phase=Failed", "--timeout", "300ms")
	if want := fmt.Sprintf("pool-managerd: wait: timed out after 300ms waiting for a Failed; last seen: a Ready (pid %d)\n", q.PID); r.code != 1 || r.stderr != want || r.stdout != "" {
		t.Fatalf("wait a --for phase=Failed --timeout 300ms: %s\nwant exit 1 and the error %q", r, want)
	}

	// After the daemon is gone: the same, naming what is missing.
	d.term()
	r = w.run(nil, "wait", "--state-dir", w.state, "--for", "ready", "--timeout", "300ms")
	if r.code != 1 || !strings.Contains(r.stderr, "last seen: no daemon API address in "+w.state) {
		t.Fatalf("wait --for ready with no daemon: %s\nwant exit 1 saying there is no API address", r)
	}
}
