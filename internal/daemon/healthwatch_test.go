//go:build linux

package daemon_test

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/poolmanagerd/pool-managerd/drivers/engine"
	"github.com/poolmanagerd/pool-managerd/internal/api"
	"github.com/poolmanagerd/pool-managerd/internal/daemon"
	"github.com/poolmanagerd/pool-managerd/reconcile"
)

// probeCount counts the health watch's probes, by port.
type probeCount struct {
	mu    sync.Mutex
	ports map[int]int
}

func (c *probeCount) add(port int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.ports == nil {
		c.ports = map[int]int{}
	}
	c.ports[port]++
}

func (c *probeCount) get(port int) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.ports[port]
}

// rounds waits until the health watch has asked port n more times: n more
// rounds of the watch, when port is a Ready engine's.
func (r *running) rounds(c *probeCount, port, n int) {
	r.t.Helper()
	want := c.get(port) + n
	r.waitUntil(func() string {
		return fmt.Sprintf("%d health probes of port %d (%d so far)", want, port, c.get(port))
	}, func() bool { return c.get(port) >= want })
}

// healthWarnings returns the daemon's "engine health check failed"
// warnings about the pool.
func (r *running) healthWarnings(pool string) []string {
	var out []string
	for _, line := range strings.Split(r.log.String(), "\n") {
		if strings.Contains(line, "engine health check failed") && strings.Contains(line, "pool="+pool+" ") {
			out = append(out, line)
		}
	}
	return out
}

// TestHealthWatchAsksOnlyReadyEngines (issue 10, defect 4): the health
// watch, which asks the health endpoint of Ready engines between resyncs,
// asks no engine that has exited or is being stopped, and so never warns
// "engine health check failed" about one; it does ask the Ready ones.
//
// The probe is injected and counts its calls by port (each pool has a port
// of its own). The watch is one goroutine that, each HealthEvery, lists
// the pools the lifecycle has Ready and asks them one after the other: a
// round that began before a pool left Ready may still ask it once, so
// once the test has seen a pool leave Ready, at most one more probe may
// reach its port; every later round leaves it out. Many rounds run
// meanwhile: the Ready pool's probes count them.
//
// Before the fix, the watch asked every recorded engine: an exited one
// (whose record stays until its restart) and one being stopped were asked
// each round, and their failing checks were logged as warnings.
func TestHealthWatchAsksOnlyReadyEngines(t *testing.T) {
	t.Parallel()
	n := newNode(t, 2)
	// Nothing is started again within the test: the exited pool waits an
	// hour for its backoff, and an operator's stop holds the stopped one.
	// The stopped one ignores SIGTERM and has an hour's grace: it stays
	// Draining until the test kills it.
	n.writeConfig(
		pool{id: "exits", restart: `initialBackoff: "1h", maxBackoff: "1h", jitter: 0`},
		pool{id: "steady", devices: []int{1}},
		pool{id: "stopped", devices: []int{1}, env: map[string]string{"FAKE_ENGINE_IGNORE_SIGTERM": "1"},
			restart: `stopGrace: "1h", drainTimeout: "100ms"`},
	)
	probes := &probeCount{}
	r := n.start(func(o *daemon.Options) {
		o.HealthEvery = 10 * time.Millisecond
		o.Probe = func(ctx context.Context, port int) engine.Health {
			probes.add(port)
			return engine.ProbeHealth(ctx, port, true)
		}
	})
	ids := []string{"exits", "steady", "stopped"}
	pids := r.waitReady(ids...)
	port := map[string]int{}
	for _, id := range ids {
		port[id] = r.pool(id).Port
		if port[id] == 0 {
			t.Fatalf("pool %s: Ready without a port: %v", id, poolString(r.pool(id)))
		}
	}
	// The probes reach every Ready engine.
	for _, id := range ids {
		r.rounds(probes, port[id], 1)
	}

	// An engine exits: once the daemon shows its pool Unready, no round
	// that begins asks it.
	if err := syscall.Kill(pids["exits"], syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	r.waitPool("exits", "Unready after its engine's exit", func(p api.Pool) bool {
		return p.Phase == reconcile.Unready && !p.Ready && p.PID == 0 && p.LastError != nil
	})
	afterExit := probes.get(port["exits"])

	// An engine is being stopped: once the daemon shows its pool Draining,
	// no round that begins asks it.
	stopDone := make(chan error, 1)
	go func() { stopDone <- r.d.Stop(r.ctx(), []string{"stopped"}, false) }()
	r.waitPool("stopped", "Draining, its engine still running", func(p api.Pool) bool {
		return p.Phase == reconcile.Draining && !p.Ready && p.PID == pids["stopped"]
	})
	atDrain := probes.get(port["stopped"])

	// Many rounds while the one is dead and the other drains.
	r.rounds(probes, port["steady"], 20)
	if !alive(pids["stopped"]) {
		t.Fatalf("pool stopped: engine pid %d is gone before the test ended its drain", pids["stopped"])
	}
	if got := probes.get(port["stopped"]) - atDrain; got > 1 {
		t.Errorf("pool stopped: %d health probes reached engine pid %d while it was being stopped, want at most the one of a round already under way", got, pids["stopped"])
	}

	// The drain ends when the engine dies; the stop then finishes.
	if err := syscall.Kill(pids["stopped"], syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	if err := <-stopDone; err != nil {
		t.Fatalf("Stop of pool stopped: %v", err)
	}
	r.waitPool("stopped", "Stopped", func(p api.Pool) bool { return p.Phase == reconcile.Stopped && !p.Ready && p.PID == 0 })
	r.rounds(probes, port["steady"], 20)

	if got := probes.get(port["exits"]) - afterExit; got > 1 {
		t.Errorf("pool exits: %d health probes reached the port of engine pid %d after its exit was recorded, want at most the one of a round already under way", got, pids["exits"])
	}
	if got := probes.get(port["stopped"]) - atDrain; got > 1 {
		t.Errorf("pool stopped: %d health probes reached the port of engine pid %d once its stop began, want at most the one of a round already under way", got, pids["stopped"])
	}
	for _, id := range []string{"exits", "stopped"} {
		if w := r.healthWarnings(id); len(w) > 0 {
			t.Errorf("pool %s: the daemon warned about the health check of an engine that had exited or was being stopped:\n%s", id, strings.Join(w, "\n"))
		}
	}
	if p := r.pool("steady"); !p.Ready || p.PID != pids["steady"] {
		t.Errorf("pool steady: %v, want still Ready in pid %d", poolString(p), pids["steady"])
	}
	if w := r.healthWarnings("steady"); len(w) > 0 {
		t.Errorf("pool steady: health warnings about a healthy engine:\n%s", strings.Join(w, "\n"))
	}
}
