//go:build linux

package daemon_test

import (
	"context"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/poolmanagerd/pool-managerd/internal/api"
	"github.com/poolmanagerd/pool-managerd/internal/daemon"
	"github.com/poolmanagerd/pool-managerd/internal/executor"
	"github.com/poolmanagerd/pool-managerd/schema"
)

// configBreak is one way a config fails to load.
type configBreak struct {
	name string
	// breakIt makes the node's config fail to load, for a daemon of node
	// name daemonNode (n.name unless the case changes it).
	breakIt func(n *node, pools []pool)
	// daemonNode changes the daemon's --node (the unknown node case at start).
	daemonNode func(n *node) string
	// fix undoes breakIt.
	fix func(n *node, pools []pool)
	// want is in the diagnostics; file, when set, is the file they point at
	// (with a line).
	want, file string
}

func configBreaks() []configBreak {
	// The fix of a broken file: the config wanted (still invalid while the
	// broken file is there), then the broken file removed.
	removeBroken := func(n *node, pools []pool) {
		n.writeConfig(pools...)
		n.removeFile("broken.cue")
	}
	return []configBreak{{
		// An editor that writes in place, seen half-way.
		name: "syntax error",
		breakIt: func(n *node, _ []pool) {
			n.writeFile("broken.cue", "package poolmanagerd\n\npools: extra: {\n\tnode: \"x\"\n")
		},
		fix:  removeBroken,
		want: "broken.cue", file: "broken.cue",
	}, {
		name: "schema violation",
		breakIt: func(n *node, _ []pool) {
			n.writeFile("broken.cue", "package poolmanagerd\n\npools: a: colour: \"red\"\n")
		},
		fix:  removeBroken,
		want: "colour", file: "broken.cue",
	}, {
		// The config is valid but does not know this node: applying it
		// would stop every engine the node runs.
		name: "unknown node",
		breakIt: func(n *node, pools []pool) {
			n.writeFile("config.cue", n.cue(n.name+"-elsewhere", pools...))
		},
		daemonNode: func(n *node) string { return n.name + "-typo" },
		fix:        func(n *node, pools []pool) { n.writeConfig(pools...) },
		want:       "is not in the config",
	}}
}

// checkDiagnostics checks that an invalid config's diagnostics say what
// the case wants, pointing at its file and line.
func checkDiagnostics(t *testing.T, c api.Config, tc configBreak) {
	t.Helper()
	if c.Valid || len(c.Errors) == 0 {
		t.Fatalf("config valid %v with %d errors, want invalid with diagnostics", c.Valid, len(c.Errors))
	}
	if text := errorsText(c); !strings.Contains(text, tc.want) {
		t.Errorf("diagnostics do not mention %q:\n%s", tc.want, text)
	}
	if tc.file != "" && !slices.ContainsFunc(c.Errors, func(d schema.Diagnostic) bool {
		return filepath.Base(d.Pos.File) == tc.file && d.Pos.Line > 0
	}) {
		t.Errorf("no diagnostic points at a line of %s:\n%s", tc.file, errorsText(c))
	}
	if c.LastLoad.IsZero() {
		t.Error("lastLoad is zero after a failed load")
	}
}

// TestNoGoodConfigTouchesNothing: a daemon whose config has never loaded
// (a syntax error, a schema violation, or a --node the config does not
// know) is not Ready, shows the diagnostics and config_valid 0, and starts
// and stops nothing: an engine a previous daemon left running (recorded in
// the state) is still running, with its record, when Run has returned (all
// its ops ended). Once the config is right a new daemon adopts that engine
// without restarting it.
func TestNoGoodConfigTouchesNothing(t *testing.T) {
	t.Parallel()
	for _, tc := range configBreaks() {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			n := newNode(t, 1)
			pools := []pool{{id: "a"}}
			n.writeConfig(pools...)
			first := n.start()
			pid := first.waitReady("a")["a"]
			first.shutdown()

			tc.breakIt(n, pools)
			edit := func(*daemon.Options) {}
			if tc.daemonNode != nil {
				edit = func(o *daemon.Options) { o.Node = tc.daemonNode(n) }
			}
			r := n.start(edit)
			r.waitFor("a failed config load", func() bool { return !r.d.Config().LastLoad.IsZero() })
			checkDiagnostics(t, r.d.Config(), tc)
			r.settle() // a second load and the pass after it
			checkDiagnostics(t, r.d.Config(), tc)
			if r.d.Ready() {
				t.Error("Ready() with no good config ever loaded, want not ready (/readyz 503)")
			}
			wantMetric(t, r.reg, "pool_managerd_config_valid", nil, 0)
			if c := r.d.Config(); !c.LastGoodLoad.IsZero() || len(c.Pools) != 0 {
				t.Errorf("config: lastGoodLoad %v, pools %v; want none, no config is in force", c.LastGoodLoad, c.Pools)
			}
			r.shutdown()

			if !alive(pid) {
				t.Fatalf("engine pid %d of pool a was stopped by a daemon with no good config", pid)
			}
			if rec := n.loadState().Engines["a"]; rec.PID != pid {
				t.Errorf("the state records pool a's engine as pid %d, want %d", rec.PID, pid)
			}
			for _, step := range []string{executor.StepStopped, executor.StepIntent} {
				if c := r.stepCount("a", step); c != 0 {
					t.Errorf("pool a: step %s happened %d times", step, c)
				}
			}
			if got := notifiedReady(r.notified()); got != 0 {
				t.Errorf("READY=1 notified %d times with no good config", got)
			}
			if !slices.Contains(r.notified(), "STATUS=waiting for a valid config") {
				t.Errorf("no STATUS=waiting for a valid config notice: %q", r.notified())
			}

			tc.fix(n, pools)
			fixed := n.start()
			p := fixed.waitReadyWhere("a", "Ready", func(api.Pool) bool { return true })
			if p.PID != pid || p.Restarts != 0 {
				t.Errorf("after the fix pool a is pid %d with %d restarts, want the adopted pid %d and 0", p.PID, p.Restarts, pid)
			}
			if c := fixed.stepCount("a", executor.StepIntent); c != 0 {
				t.Errorf("after the fix pool a was started %d times, want adopted", c)
			}
		})
	}
}

// TestLastGoodConfigStaysInForce: a running daemon whose config stops
// loading (a half-written file, a schema violation, a config that no longer
// knows the node) keeps the last good config: its engines untouched and
// Ready, Config().Valid false with the diagnostics, lastGoodLoad and the
// pools of the config in force unchanged, config_valid 0, and a systemd
// STATUS that says so. Once fixed (with changes: pool b's env differs, pool
// c is new) the new config is applied: b replaced, c started, a untouched.
func TestLastGoodConfigStaysInForce(t *testing.T) {
	t.Parallel()
	for _, tc := range configBreaks() {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			n := newNode(t, 2)
			pools := []pool{{id: "a"}, {id: "b", devices: []int{1}}}
			n.writeConfig(pools...)
			r := n.start()
			pids := r.waitReady("a", "b")
			good := r.d.Config()
			if !good.Valid || good.LastGoodLoad.IsZero() {
				t.Fatalf("config %+v, want valid", good)
			}
			wantMetric(t, r.reg, "pool_managerd_config_valid", nil, 1)
			wantMetric(t, r.reg, "pool_managerd_config_last_load_timestamp_seconds", nil, float64(good.LastGoodLoad.UnixNano())/1e9)

			tc.breakIt(n, pools)
			r.waitFor("the config to be invalid", func() bool { return !r.d.Config().Valid })
			r.settle()
			c := r.d.Config()
			checkDiagnostics(t, c, tc)
			if !c.LastGoodLoad.Equal(good.LastGoodLoad) {
				t.Errorf("lastGoodLoad %v, want %v (the config in force)", c.LastGoodLoad, good.LastGoodLoad)
			}
			if !slices.Equal(c.Pools, []string{"a", "b"}) || !slices.Equal(c.Nodes, []string{n.name}) {
				t.Errorf("config pools %v nodes %v, want the last good config's [a b] [%s]", c.Pools, c.Nodes, n.name)
			}
			wantMetric(t, r.reg, "pool_managerd_config_valid", nil, 0)
			wantMetric(t, r.reg, "pool_managerd_config_last_load_timestamp_seconds", nil, float64(good.LastGoodLoad.UnixNano())/1e9)
			for id, pid := range pids {
				if p := r.pool(id); !p.Ready || p.PID != pid {
					t.Errorf("with the config invalid: %v, want Ready with pid %d", poolString(p), pid)
				}
			}
			if !slices.Contains(r.notified(), "STATUS=2/2 pools Ready; config invalid, the last good one is in force") {
				t.Errorf("no STATUS notice of the invalid config: %q", r.notified())
			}

			fixed := []pool{pools[0], {id: "b", devices: []int{1}, env: map[string]string{"FAKE_ENGINE_VRAM": "1Gi"}}, {id: "c", devices: []int{1}}}
			tc.fix(n, fixed)
			r.waitFor("the config to be valid again", func() bool { return r.d.Config().Valid })
			b := r.waitReadyWhere("b", "Ready with a new engine", func(p api.Pool) bool { return p.PID != pids["b"] })
			if b.Restarts != 0 || b.LastError != nil {
				t.Errorf("pool b after its replacement: %v, want no restart and no error", poolString(b))
			}
			r.waitReady("c")
			c = r.d.Config()
			if len(c.Errors) != 0 || !c.LastGoodLoad.After(good.LastGoodLoad) || !slices.Equal(c.Pools, []string{"a", "b", "c"}) {
				t.Errorf("config after the fix: %+v", c)
			}
			wantMetric(t, r.reg, "pool_managerd_config_valid", nil, 1)
			r.shutdown()
			if !alive(pids["a"]) || n.loadState().Engines["a"].PID != pids["a"] {
				t.Errorf("pool a's engine pid %d was touched; its config never changed", pids["a"])
			}
			if c := r.stepCount("a", executor.StepIntent); c != 1 {
				t.Errorf("pool a was started %d times, want once", c)
			}
			if alive(pids["b"]) {
				t.Errorf("pool b's old engine pid %d is still alive after its replacement", pids["b"])
			}
		})
	}
}

// TestUnknownNodeMessage: a config that loads but does not know the
// daemon's --node is an error of its own (it would otherwise stop every
// engine): the message names the node and the nodes the config has.
func TestUnknownNodeMessage(t *testing.T) {
	t.Parallel()
	n := newNode(t, 1)
	n.writeConfig(pool{id: "a"})
	r := n.start(func(o *daemon.Options) { o.Node = "typo" })
	r.waitFor("a failed config load", func() bool { return !r.d.Config().LastLoad.IsZero() })
	c := r.d.Config()
	if c.Valid || len(c.Errors) != 1 {
		t.Fatalf("config %+v, want one error", c)
	}
	msg := c.Errors[0].Message
	for _, want := range []string{`node "typo" is not in the config`, "nodes: " + n.name, "--node"} {
		if !strings.Contains(msg, want) {
			t.Errorf("message %q does not say %q", msg, want)
		}
	}
	if c.Errors[0].Pos.File != n.config {
		t.Errorf("the error points at %q, want the config directory %q", c.Errors[0].Pos.File, n.config)
	}
}

// TestStopWithoutConfig: an operator's Stop while no config has loaded yet
// is carried out (it is the one thing such a daemon does): the engine a
// previous daemon left running is stopped and forgotten, and Stop answers.
// (Before the fix the pass returned before stopping held pools, and Stop
// hung until its context ended.)
func TestStopWithoutConfig(t *testing.T) {
	t.Parallel()
	n := newNode(t, 1)
	n.writeConfig(pool{id: "a"})
	first := n.start()
	pid := first.waitReady("a")["a"]
	first.shutdown()

	n.writeFile("broken.cue", "package poolmanagerd\n\npools: {\n")
	r := n.start()
	r.waitFor("a failed config load", func() bool { return !r.d.Config().LastLoad.IsZero() })
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	if err := r.d.Stop(ctx, []string{"a"}, false); err != nil {
		t.Fatalf("Stop of pool a with no config loaded: %v", err)
	}
	if alive(pid) {
		t.Errorf("engine pid %d still alive after Stop returned", pid)
	}
	if rec, ok := n.loadState().Engines["a"]; ok {
		t.Errorf("the state still records pool a's engine: pid %d", rec.PID)
	}
	if r.d.Ready() {
		t.Error("Ready() with no config loaded")
	}
}
