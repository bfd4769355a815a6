//go:build linux

package e2e

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/poolmanagerd/pool-managerd/drivers/engine/proc"
	"github.com/poolmanagerd/pool-managerd/internal/api"
	"github.com/poolmanagerd/pool-managerd/testkit/syncbuf"
)

// daemonTimeout guards every wait on a daemon. It is a failure guard, not a
// timing assertion: on a loaded 2-CPU machine a change takes well under a
// second, so a wait that runs this long means the daemon never got there.
const daemonTimeout = 45 * time.Second

// daemon is a `pool-managerd serve` of a workspace, running in the
// background. Unlike the commands run by workspace.start it has no time
// limit: a test ends it with term or kill, and its cleanup kills it (and
// waits for it) whatever happened. When the test failed, the cleanup prints
// the daemon's log.
type daemon struct {
	t      *testing.T
	w      *workspace
	args   []string
	cmd    *exec.Cmd
	stderr *syncbuf.Buffer
	done   chan struct{}
	// code and signal say how it ended, once done is closed (code -1 when
	// a signal ended it).
	code   int
	signal syscall.Signal
	addr   string
	client *api.Client
}

// daemonFlags are the flags every test daemon runs with: a free port on
// loopback, a short debounce, JSON logs, and a resync of an hour, so that
// every reaction a test sees comes from the event it caused (fsnotify, an
// engine's exit, a driver event, SIGHUP), not from the periodic pass. Flags
// given to serve come after these and win (pflag keeps the last).
func (w *workspace) daemonFlags() []string {
	args := []string{"serve", "--config", w.config, "--listen", "127.0.0.1:0",
		"--debounce", "50ms", "--resync", "1h", "--log-format", "json"}
	args = append(args, w.nodeFlags()...)
	return append(args, engineFlags()...)
}

// serve starts a daemon on the workspace and waits until its API answers
// /readyz with 200 (its first reconcile is done). extra flags come last.
func (w *workspace) serve(extra ...string) *daemon {
	w.t.Helper()
	d := w.startDaemon(extra...)
	d.waitReadyz()
	return d
}

// startDaemon starts a daemon and waits for its API address only.
func (w *workspace) startDaemon(extra ...string) *daemon {
	t := w.t
	t.Helper()
	// A daemon killed with SIGKILL leaves its api.addr behind; the new one
	// must be read from the file the new daemon writes.
	if err := os.Remove(filepath.Join(w.state, api.AddrFileName)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		t.Fatal(err)
	}
	d := &daemon{t: t, w: w, args: append(w.daemonFlags(), extra...), stderr: &syncbuf.Buffer{}, done: make(chan struct{})}
	d.cmd = exec.Command(testEnv.Bin.PoolManagerd, d.args...)
	d.cmd.Env = commandEnv(nil)
	d.cmd.Dir = w.dir
	d.cmd.Stdout, d.cmd.Stderr = d.stderr, d.stderr
	// Engines get their own log files, but should one keep a copy of the
	// daemon's stderr open, Wait still returns.
	d.cmd.WaitDelay = 2 * time.Second
	if err := reap.startCmd(d.cmd); err != nil {
		t.Fatalf("start pool-managerd serve: %v", err)
	}
	go func() {
		defer close(d.done)
		_ = d.cmd.Wait()
		reap.waited(d.cmd)
		d.code = d.cmd.ProcessState.ExitCode()
		if ws, ok := d.cmd.ProcessState.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			d.signal = ws.Signal()
		}
	}()
	t.Cleanup(func() {
		if !d.exited() {
			_ = d.cmd.Process.Kill()
			<-d.done
		}
		if t.Failed() {
			t.Logf("daemon pid %d (%s), its output:\n%s", d.cmd.Process.Pid, d.how(), d.stderr.String())
		}
	})
	// Polled often: TestDaemonEngineDiesDuringPass acts during the first pass.
	deadline := time.Now().Add(daemonTimeout)
	for {
		if addr, err := api.ReadAddr(w.state); err == nil {
			d.addr, d.client = addr, api.NewClient(addr, "")
			return d
		}
		if d.exited() {
			t.Fatalf("the daemon ended (%s) before it wrote %s", d.how(), api.AddrFileName)
		}
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for the daemon's %s", daemonTimeout, api.AddrFileName)
		}
		time.Sleep(time.Millisecond)
	}
}

func (d *daemon) pid() int { return d.cmd.Process.Pid }

func (d *daemon) exited() bool {
	select {
	case <-d.done:
		return true
	default:
		return false
	}
}

// how says how the daemon ended, or that it runs.
func (d *daemon) how() string {
	switch {
	case !d.exited():
		return "running"
	case d.signal != 0:
		return "killed by signal " + d.signal.String()
	default:
		return fmt.Sprintf("exit %d", d.code)
	}
}

// waitFor polls cond until it holds, failing at once when the daemon
// exited meanwhile.
func (d *daemon) waitFor(what string, cond func() bool) {
	d.t.Helper()
	waitFor(d.t, daemonTimeout, what, func() bool {
		if d.exited() {
			d.t.Fatalf("the daemon ended (%s) while waiting for %s", d.how(), what)
		}
		return cond()
	})
}

// spin is waitFor without the pause between polls, for a test that must act
// within milliseconds of what cond sees.
func (d *daemon) spin(what string, cond func() bool) {
	d.t.Helper()
	deadline := time.Now().Add(daemonTimeout)
	for !cond() {
		if d.exited() {
			d.t.Fatalf("the daemon ended (%s) while waiting for %s", d.how(), what)
		}
		if time.Now().After(deadline) {
			d.t.Fatalf("timed out after %v waiting for %s", daemonTimeout, what)
		}
	}
}

// waitReadyz waits until /readyz answers 200.
func (d *daemon) waitReadyz() {
	d.t.Helper()
	d.waitFor("/readyz 200", func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		ok, err := d.client.Ready(ctx)
		return err == nil && ok
	})
}

// signalAndWait sends sig and waits for the daemon to end.
func (d *daemon) signalAndWait(sig syscall.Signal) {
	d.t.Helper()
	if err := d.cmd.Process.Signal(sig); err != nil {
		d.t.Fatalf("signal the daemon: %v", err)
	}
	select {
	case <-d.done:
	case <-time.After(daemonTimeout):
		d.t.Fatalf("the daemon did not end within %v of %v", daemonTimeout, sig)
	}
}

// term stops the daemon with SIGTERM, waits for it and checks that it
// exited 0.
func (d *daemon) term() {
	d.t.Helper()
	d.signalAndWait(syscall.SIGTERM)
	if d.signal != 0 || d.code != 0 {
		d.t.Fatalf("after SIGTERM the daemon ended with %s, want exit 0", d.how())
	}
}

// kill kills the daemon with SIGKILL and waits for it.
func (d *daemon) kill() {
	d.t.Helper()
	d.signalAndWait(syscall.SIGKILL)
}

// hup sends SIGHUP (reload the config).
func (d *daemon) hup() {
	d.t.Helper()
	if err := d.cmd.Process.Signal(syscall.SIGHUP); err != nil {
		d.t.Fatalf("SIGHUP the daemon: %v", err)
	}
}

func apiCtx() (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), 10*time.Second)
}

// pools reads GET /v1/pools, by pool.
func (d *daemon) pools() map[string]api.Pool {
	d.t.Helper()
	ctx, cancel := apiCtx()
	defer cancel()
	list, err := d.client.Pools(ctx)
	if err != nil {
		d.t.Fatalf("GET /v1/pools: %v", err)
	}
	out := map[string]api.Pool{}
	for _, p := range list {
		out[p.Pool] = p
	}
	return out
}

// pool reads GET /v1/pools/{id}.
func (d *daemon) pool(id string) api.Pool {
	d.t.Helper()
	ctx, cancel := apiCtx()
	defer cancel()
	p, err := d.client.Pool(ctx, id)
	if err != nil {
		d.t.Fatalf("GET /v1/pools/%s: %v", id, err)
	}
	return p
}

// config reads GET /v1/config.
func (d *daemon) config() api.Config {
	d.t.Helper()
	ctx, cancel := apiCtx()
	defer cancel()
	c, err := d.client.Config(ctx)
	if err != nil {
		d.t.Fatalf("GET /v1/config: %v", err)
	}
	return c
}

// isReady reports whether the API shows the pool Ready with an engine whose
// preload the daemon saw through (loaded). The API can show a pool Ready,
// from an observation, while the operation that started its engine has not
// yet checked its placement and recorded it Ready: {"phase": "Ready",
// "ready": true, "preload": {"state": "loading"}} (a daemon defect this
// package found). The tests wait for the daemon's own verdict.
func isReady(p api.Pool) bool {
	return p.Phase == "Ready" && p.Ready && p.PID > 0 && p.Preload != nil && p.Preload.State == api.PreloadLoaded
}

// waitPools waits until the API shows every pool of ids Ready, and returns
// the pools.
func (d *daemon) waitPools(ids ...string) map[string]api.Pool {
	d.t.Helper()
	var got map[string]api.Pool
	d.waitFor(fmt.Sprintf("pools %v Ready", ids), func() bool {
		got = d.pools()
		for _, id := range ids {
			if !isReady(got[id]) {
				return false
			}
		}
		return true
	})
	return got
}

// waitPool waits until the API shows the pool as cond wants, and returns it.
func (d *daemon) waitPool(id, what string, cond func(api.Pool) bool) api.Pool {
	d.t.Helper()
	var p api.Pool
	d.waitFor("pool "+id+": "+what, func() bool {
		p = d.pools()[id]
		return cond(p)
	})
	return p
}

// waitNewEngine waits until the pool is Ready on an engine other than old,
// and checks that old is gone.
func (d *daemon) waitNewEngine(id string, old int) api.Pool {
	d.t.Helper()
	p := d.waitPool(id, fmt.Sprintf("Ready on an engine other than pid %d", old), func(p api.Pool) bool {
		return isReady(p) && p.PID != old
	})
	d.waitFor(fmt.Sprintf("the old engine pid %d of %s to be gone", old, id), func() bool { return !alive(old) })
	return p
}

// samePIDs checks that the pools still run on the engines of before, Ready,
// with the restarts they had.
func (d *daemon) samePIDs(before map[string]api.Pool, ids ...string) {
	d.t.Helper()
	now := d.pools()
	for _, id := range ids {
		b, n := before[id], now[id]
		if !isReady(n) || n.PID != b.PID || n.Restarts != b.Restarts {
			d.t.Errorf("pool %s changed: before pid %d restarts %d, now %s pid %d restarts %d (ready %v)",
				id, b.PID, b.Restarts, n.Phase, n.PID, n.Restarts, n.Ready)
		}
		if list := d.w.engines()[id]; len(list) != 1 || list[0].PID != b.PID {
			d.t.Errorf("pool %s: want only engine pid %d in the process table, found %v", id, b.PID, list)
		}
	}
}

// quiesce waits until the daemon's loop looks idle: the count of its
// reconcile passes (reconcile_duration_seconds) unchanged over five scrapes
// in a row. It is no assertion: a test that kills an engine or the daemon on
// purpose first lets the passes in flight end, so that it tests what it
// means to, not one of the races TestDaemonSIGTERMDuringPass (a SIGTERM
// during a pass stopped the engines; fixed) and TestDaemonEngineDiesDuringPass
// (an engine that dies between a pass's observation and its exit watch is
// noticed only at the next resync) are about.
func (d *daemon) quiesce() {
	d.t.Helper()
	last, stable := -1.0, 0
	d.waitFor("the daemon's passes to stop", func() bool {
		n, _ := d.metrics().value(d.t, "pool_managerd_reconcile_duration_seconds", nil)
		if n == last {
			stable++
		} else {
			last, stable = n, 0
		}
		return stable >= 5
	})
}

// loopRoundTrip sends an operator reset of a pool, which the daemon's loop
// answers only after the pass it is in (if any) is over: the pass started
// by an earlier event has then launched whatever it was going to. (The
// reset makes a pass of its own; a held pool must not be the one reset.)
func (d *daemon) loopRoundTrip(pool string) {
	d.t.Helper()
	ctx, cancel := apiCtx()
	defer cancel()
	if _, err := d.client.Reset(ctx, []string{pool}); err != nil {
		d.t.Fatalf("POST /v1/reset %s: %v", pool, err)
	}
}

// cmdline returns an engine's argv, joined by spaces.
func cmdline(t *testing.T, pid int) string {
	t.Helper()
	argv, err := proc.Cmdline(pid)
	if err != nil {
		t.Fatalf("argv of pid %d: %v", pid, err)
	}
	return strings.Join(argv, " ")
}

// logEvent is one line of the daemon's JSON log.
type logEvent map[string]any

func (e logEvent) str(key string) string {
	s, _ := e[key].(string)
	return s
}

// logEvents parses the daemon's log so far (--log-format json), one event a
// line; lines that are not JSON objects are returned apart. A daemon killed
// with SIGKILL may have left its last line cut: read a log whole only after
// the daemon ended with term, or accept an incomplete last line.
func (d *daemon) logEvents() (events []logEvent, bad []string) {
	for _, line := range strings.Split(strings.TrimRight(d.stderr.String(), "\n"), "\n") {
		if line == "" {
			continue
		}
		var e logEvent
		if err := json.Unmarshal([]byte(line), &e); err != nil {
			bad = append(bad, line)
			continue
		}
		events = append(events, e)
	}
	return events, bad
}

// findLog returns the first log event that match accepts.
func (d *daemon) findLog(match func(logEvent) bool) (logEvent, bool) {
	events, _ := d.logEvents()
	for _, e := range events {
		if match(e) {
			return e, true
		}
	}
	return nil, false
}

// metrics scrapes GET /metrics and parses the Prometheus text format.
func (d *daemon) metrics() metricFamilies {
	d.t.Helper()
	c := http.Client{Timeout: 10 * time.Second}
	resp, err := c.Get("http://" + d.addr + "/metrics")
	if err != nil {
		d.t.Fatalf("GET /metrics: %v", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		d.t.Fatalf("GET /metrics: %s", resp.Status)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(resp.Body)
	if err != nil {
		d.t.Fatalf("GET /metrics: parse the text format: %v", err)
	}
	return fams
}

// scrape GETs /metrics with the Accept header accept (none when empty) and
// returns the response's Content-Type and body.
func (d *daemon) scrape(accept string) (contentType, body string) {
	d.t.Helper()
	req, err := http.NewRequest(http.MethodGet, "http://"+d.addr+"/metrics", nil)
	if err != nil {
		d.t.Fatal(err)
	}
	if accept != "" {
		req.Header.Set("Accept", accept)
	}
	c := http.Client{Timeout: 10 * time.Second}
	resp, err := c.Do(req)
	if err != nil {
		d.t.Fatalf("GET /metrics (Accept: %s): %v", accept, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		d.t.Fatalf("GET /metrics (Accept: %s): %v", accept, err)
	}
	if resp.StatusCode != http.StatusOK {
		d.t.Fatalf("GET /metrics (Accept: %s): %s", accept, resp.Status)
	}
	return resp.Header.Get("Content-Type"), string(b)
}

// metricFamilies are the metric families of a scrape, by name.
type metricFamilies map[string]*dto.MetricFamily

// find returns the series of the family name whose labels include labels.
func (m metricFamilies) find(name string, labels map[string]string) []*dto.Metric {
	fam := m[name]
	if fam == nil {
		return nil
	}
	var out []*dto.Metric
	for _, s := range fam.GetMetric() {
		have := map[string]string{}
		for _, l := range s.GetLabel() {
			have[l.GetName()] = l.GetValue()
		}
		match := true
		for k, v := range labels {
			if have[k] != v {
				match = false
				break
			}
		}
		if match {
			out = append(out, s)
		}
	}
	return out
}

// value returns the value of the one series of name with labels (a gauge's
// or a counter's, a histogram's count); ok is false when there is none.
func (m metricFamilies) value(t *testing.T, name string, labels map[string]string) (v float64, ok bool) {
	t.Helper()
	series := m.find(name, labels)
	switch len(series) {
	case 0:
		return 0, false
	case 1:
	default:
		t.Fatalf("metric %s%v: %d series, want one", name, labels, len(series))
	}
	s := series[0]
	switch {
	case s.Gauge != nil:
		return s.Gauge.GetValue(), true
	case s.Counter != nil:
		return s.Counter.GetValue(), true
	case s.Histogram != nil:
		return float64(s.Histogram.GetSampleCount()), true
	case s.Untyped != nil:
		return s.Untyped.GetValue(), true
	}
	return 0, false
}

// expect checks the value of the one series of name with labels.
func (m metricFamilies) expect(t *testing.T, name string, labels map[string]string, want float64) {
	t.Helper()
	got, ok := m.value(t, name, labels)
	if !ok {
		t.Errorf("metric %s%v: no such series", name, labels)
		return
	}
	if got != want {
		t.Errorf("metric %s%v = %v, want %v", name, labels, got, want)
	}
}
