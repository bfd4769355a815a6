package features

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/cucumber/godog"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/poolmanagerd/pool-managerd/internal/api"
	"github.com/poolmanagerd/pool-managerd/testkit/syncbuf"
	"github.com/poolmanagerd/pool-managerd/testkit/testenv"
)

// daemonState is what the daemon steps keep of a scenario: the daemons it
// started, by node (the default node is applyNode), and the last API response.
type daemonState struct {
	daemons  map[string]*daemonProc
	httpCode int
	httpBody string
	// hupAt is when the last SIGHUP was about to be sent.
	hupAt time.Time
	// changedAt is when the last change of the config directory was about
	// to be made (a file saved, removed, truncated or written in place, a
	// folder moved aside or restored).
	changedAt time.Time
	// removalAt is, by pool, the time of its removal that the daemon
	// showed while it was pending.
	removalAt map[string]time.Time
}

// daemonProc is one pool-managerd serve.
type daemonProc struct {
	node, stateDir, simDir string
	cmd                    *exec.Cmd
	stderr                 syncbuf.Buffer
	done                   chan struct{}
	status                 int
}

func (w *world) registerDaemon(sc *godog.ScenarioContext) {
	sc.Step(`^the daemon is started(?: with "([^"]*)")?$`, w.startDaemon)
	sc.Step(`^the daemon is started with ([A-Z_][A-Z0-9_]*=\S*) and "([^"]*)"$`, w.startDaemonEnv)
	sc.Step(`^the daemon is ready$`, w.daemonReady)
	sc.Step(`^I save the config file "([^"]*)":$`, w.saveConfig)
	sc.Step(`^I write the config file "([^"]*)" in two parts with a pause between them:$`, w.writeInTwoParts)
	sc.Step(`^I remove the config file "([^"]*)"$`, w.removeConfig)
	sc.Step(`^I send (SIGHUP|SIGTERM) to the daemon$`, w.signalDaemon)
	sc.Step(`^the daemon has loaded its config again since the SIGHUP$`, w.reloadedSinceHUP)
	sc.Step(`^the daemon has logged "([^"]*)" for the reason "([^"]*)"$`, w.loggedFor)
	sc.Step(`^the config file "([^"]*)" is a link to a file outside the config directory$`, w.linkOutside)
	sc.Step(`^I edit the file that "([^"]*)" links to, in place:$`, w.editLinkTarget)
	sc.Step(`^I kill the daemon with SIGKILL$`, w.killDaemon)
	sc.Step(`^the daemon exits with status (\d+)$`, w.daemonExits)
	sc.Step(`^I kill the engine of pool "([^"]*)" with SIGKILL$`, w.killEngine)
	sc.Step(`^I GET "([^"]*)" from the daemon(?: with the token "([^"]*)")?$`, w.getFromDaemon)
	sc.Step(`^the response status is (\d+)$`, w.responseStatus)
	sc.Step(`^the response contains "(.*)"$`, w.responseContains)

	sc.Step(`^the daemon shows pool "([^"]*)" as (\w+)$`, w.daemonShows)
	sc.Step(`^the daemon shows pool "([^"]*)" with (\d+) restarts? and a last error of class "([^"]*)" with a message, a time and a hint$`, w.daemonRestarts)
	sc.Step(`^the daemon shows pool "([^"]*)" with (\d+) restarts$`, w.daemonRestartCount)
	sc.Step(`^the daemon shows pool "([^"]*)" with its next retry (\S+) after its last error$`, w.daemonRetryAfter)
	sc.Step(`^the daemon shows pool "([^"]*)" with the preload state "([^"]*)" and its start and load times$`, w.daemonPreload)
	sc.Step(`^the daemon does not know pool "([^"]*)"$`, w.daemonUnknown)
	sc.Step(`^the daemon shows pool "([^"]*)" Ready with a new engine pid$`, w.daemonNewPID)
	sc.Step(`^the daemon's config is invalid with an error at "([^"]*)" containing "(.*)"$`, w.configInvalid)
	sc.Step(`^the daemon's config is valid$`, w.configValid)
	sc.Step(`^the metric (\S+) is (\S+)$`, func(series, want string) error { return w.metricCompare(series, "=", want) })
	sc.Step(`^the metric (\S+) is above (\S+)$`, func(series, want string) error { return w.metricCompare(series, ">", want) })
	sc.Step(`^the daemon has logged an? (error|warn|info) event containing "(.*)"$`, w.loggedEvent)
	sc.Step(`^the daemon has logged pool "([^"]*)" going (\w+), then (\w+), as separate JSON events$`, w.loggedTransitions)
	sc.Step(`^the daemon never logged "(.*)"$`, w.neverLogged)

	sc.Step(`^a simulated node "([^"]*)" with one GPU of (\d+) GiB$`, w.fleetNode)
	sc.Step(`^the daemon of node "([^"]*)" is started(?: with "([^"]*)")?$`, w.startNodeDaemon)
	sc.Step(`^the daemon of node "([^"]*)" has logged an? (error|warn|info) event containing "(.*)"$`, w.nodeLoggedEvent)
	sc.Step(`^the daemon of node "([^"]*)" shows pool "([^"]*)" as (\w+)$`, w.nodeShows)
	sc.Step(`^the daemon of node "([^"]*)" knows only pools? "([^"]*)"$`, w.nodeKnowsOnly)
	sc.Step(`^the engines on node "([^"]*)" are those of pools? "([^"]*)"$`, w.nodeEngines)

	w.registerRemoval(sc)
}

// daemonFlags are the flags every daemon of these scenarios runs with: a
// free port, a short debounce, JSON logs.
const daemonFlags = "--listen 127.0.0.1:0 --debounce 50ms --log-format json --llama-server ENGINE"

func (w *world) startDaemon(extra string) error {
	return w.launchDaemon(applyNode, w.stateDir(), w.simDir(), nil, extra)
}

func (w *world) startDaemonEnv(env, extra string) error {
	return w.launchDaemon(applyNode, w.stateDir(), w.simDir(), []string{env}, extra)
}

func (w *world) launchDaemon(node, stateDir, simDir string, env []string, extra string) error {
	if w.daemons == nil {
		w.daemons = map[string]*daemonProc{}
	}
	if d := w.daemons[node]; d != nil && !d.exited() {
		return fmt.Errorf("the daemon of node %s runs already", node)
	}
	_ = os.Remove(filepath.Join(stateDir, api.AddrFileName))
	args := fmt.Sprintf("serve --config CONFIG --gpus sim:%s --state-dir %s --node %s %s %s", simDir, stateDir, node, daemonFlags, extra)
	d := &daemonProc{node: node, stateDir: stateDir, simDir: simDir, done: make(chan struct{})}
	d.cmd = exec.Command(w.h.poolManagerd(), strings.Fields(w.expand(args))...)
	d.cmd.Dir = w.workspace
	d.cmd.Env = append(os.Environ(), env...)
	d.cmd.Stdout, d.cmd.Stderr = io.Discard, &d.stderr
	if err := d.cmd.Start(); err != nil {
		return err
	}
	w.daemons[node] = d
	go func() {
		err := d.cmd.Wait()
		d.status = exitCode(err)
		close(d.done)
	}()
	// It is started once it serves: its address is in the state directory.
	return w.eventually(fmt.Sprintf("the daemon of %s to listen", node), func() error {
		if d.exited() {
			return fmt.Errorf("it exited with status %d:\n%s", d.status, d.stderr.String())
		}
		_, err := api.ReadAddr(stateDir)
		return err
	})
}

func exitCode(err error) int {
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return ee.ExitCode()
	}
	if err != nil {
		return -1
	}
	return 0
}

func (d *daemonProc) exited() bool {
	select {
	case <-d.done:
		return true
	default:
		return false
	}
}

// eventually retries check until it succeeds or waitLimit passes.
func (w *world) eventually(what string, check func() error) error {
	deadline := time.Now().Add(waitLimit)
	for {
		err := check()
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("waiting for %s: %w%s", what, err, w.daemonLogs())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// daemonLogs is every daemon's log, for a failing step's message.
func (w *world) daemonLogs() string {
	var b strings.Builder
	for node, d := range w.daemons {
		fmt.Fprintf(&b, "\n--- log of the daemon of %s\n%s", node, d.stderr.String())
	}
	return b.String()
}

func (w *world) daemon(node string) (*daemonProc, error) {
	d := w.daemons[node]
	if d == nil {
		return nil, fmt.Errorf("no daemon was started for node %s", node)
	}
	return d, nil
}

func (w *world) client(node string) (*api.Client, error) {
	d, err := w.daemon(node)
	if err != nil {
		return nil, err
	}
	addr, err := api.ReadAddr(d.stateDir)
	if err != nil {
		return nil, err
	}
	return api.NewClient(addr, ""), nil
}

func (w *world) daemonReady() error {
	c, err := w.client(applyNode)
	if err != nil {
		return err
	}
	return w.eventually("/readyz", func() error {
		ready, err := c.Ready(context.Background())
		if err == nil && !ready {
			err = errors.New("not ready")
		}
		return err
	})
}

// saveConfig writes a config file as an editor saves it: a temp file
// renamed over the old one.
func (w *world) saveConfig(rel string, doc *godog.DocString) error {
	w.changing()
	return w.writeFile(rel, w.expandModels(strings.ReplaceAll(doc.Content, "WORKSPACE", w.workspace)))
}

// writeInTwoParts writes a file in place in two chunks, split at a line
// "<pause>", waiting between them for longer than the daemon's debounce.
func (w *world) writeInTwoParts(rel string, doc *godog.DocString) error {
	first, second, ok := strings.Cut(strings.ReplaceAll(doc.Content, "WORKSPACE", w.workspace), "<pause>\n")
	if !ok {
		return errors.New(`the file has no "<pause>" line`)
	}
	path := w.path(rel)
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o644)
	if err != nil {
		return err
	}
	defer f.Close()
	if _, err := f.WriteString(first); err != nil {
		return err
	}
	// The daemon sees the first part, waits out its debounce (50 ms) and loads it.
	if err := w.eventually("the daemon to load the first part", func() error {
		c, err := w.client(applyNode)
		if err != nil {
			return err
		}
		cfg, err := c.Config(context.Background())
		if err == nil && cfg.Valid {
			err = errors.New("the config is still valid")
		}
		return err
	}); err != nil {
		return err
	}
	if _, err := f.WriteString(second); err != nil {
		return err
	}
	return f.Close()
}

func (w *world) removeConfig(rel string) error {
	w.changing()
	return os.Remove(w.path(rel))
}

func (w *world) signalDaemon(name string) error {
	d, err := w.daemon(applyNode)
	if err != nil {
		return err
	}
	sig := syscall.SIGHUP
	if name == "SIGTERM" {
		sig = syscall.SIGTERM
	}
	if sig == syscall.SIGHUP {
		w.hupAt = time.Now()
	}
	return d.cmd.Process.Signal(sig)
}

// reloadedSinceHUP waits until GET /v1/config says the config was loaded
// after the last SIGHUP was sent. Run the daemon with --resync 1h and leave
// the config directory alone meanwhile, so that neither the resync timer
// nor the watcher can have made that load.
func (w *world) reloadedSinceHUP() error {
	if w.hupAt.IsZero() {
		return errors.New("no SIGHUP was sent")
	}
	return w.eventually("a config load after the SIGHUP", func() error {
		cfg, err := w.daemonConfig()
		if err != nil {
			return err
		}
		if !cfg.LastLoad.After(w.hupAt) {
			return fmt.Errorf("the last load was at %v, the SIGHUP was sent at %v", cfg.LastLoad, w.hupAt)
		}
		return nil
	})
}

// loggedFor waits for an event with the message and its reason field.
func (w *world) loggedFor(message, reason string) error {
	return w.eventually(fmt.Sprintf("a %q event for the reason %q", message, reason), func() error {
		events, err := w.logEvents()
		if err != nil {
			return err
		}
		for _, e := range events {
			if e["@message"] == message && e["reason"] == reason {
				return nil
			}
		}
		return errors.New("none yet")
	})
}

// linkTarget is where linkOutside moves a config file: outside the config directory.
func (w *world) linkTarget(rel string) string {
	return filepath.Join(w.workspace, "outside", filepath.Base(rel))
}

// linkOutside moves a config file out of the config directory and leaves a
// symbolic link to it in its place. The loader follows the link; the
// watcher sees changes of the link, not edits of its target (see package
// internal/watch, Limits).
func (w *world) linkOutside(rel string) error {
	data, err := os.ReadFile(w.path(rel))
	if err != nil {
		return err
	}
	target := w.linkTarget(rel)
	if err := os.MkdirAll(filepath.Dir(target), 0o755); err != nil {
		return err
	}
	if err := os.WriteFile(target, data, 0o644); err != nil {
		return err
	}
	if err := os.Remove(w.path(rel)); err != nil {
		return err
	}
	return os.Symlink(target, w.path(rel))
}

// editLinkTarget rewrites the file a config link points to, in place.
func (w *world) editLinkTarget(rel string, doc *godog.DocString) error {
	target, err := os.Readlink(w.path(rel))
	if err != nil {
		return err
	}
	if target != w.linkTarget(rel) {
		return fmt.Errorf("%s links to %s, not to the file outside the config directory", rel, target)
	}
	return os.WriteFile(target, []byte(strings.ReplaceAll(doc.Content, "WORKSPACE", w.workspace)), 0o644)
}

func (w *world) killDaemon() error {
	d, err := w.daemon(applyNode)
	if err != nil {
		return err
	}
	if err := d.cmd.Process.Kill(); err != nil {
		return err
	}
	<-d.done
	return nil
}

func (w *world) daemonExits(code int) error {
	d, err := w.daemon(applyNode)
	if err != nil {
		return err
	}
	select {
	case <-d.done:
	case <-time.After(waitLimit):
		return fmt.Errorf("the daemon still runs after %v%s", waitLimit, w.daemonLogs())
	}
	if d.status != code {
		return fmt.Errorf("the daemon exited with status %d, want %d%s", d.status, code, w.daemonLogs())
	}
	return nil
}

func (w *world) killEngine(pool string) error {
	p, err := w.apiPool(applyNode, pool)
	if err != nil {
		return err
	}
	if p.PID == 0 {
		return fmt.Errorf("pool %s has no engine: %+v", pool, p)
	}
	return syscall.Kill(p.PID, syscall.SIGKILL)
}

func (w *world) getFromDaemon(path, token string) error {
	d, err := w.daemon(applyNode)
	if err != nil {
		return err
	}
	addr, err := api.ReadAddr(d.stateDir)
	if err != nil {
		return err
	}
	req, err := http.NewRequest(http.MethodGet, "http://"+addr+path, nil)
	if err != nil {
		return err
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	w.httpCode, w.httpBody = resp.StatusCode, string(body)
	return err
}

func (w *world) responseStatus(code int) error {
	if w.httpCode != code {
		return fmt.Errorf("status %d, want %d\n%s", w.httpCode, code, w.httpBody)
	}
	return nil
}

func (w *world) responseContains(s string) error {
	if !strings.Contains(w.httpBody, s) {
		return fmt.Errorf("the response does not contain %q:\n%s", s, w.httpBody)
	}
	return nil
}

// apiPool asks a node's daemon for one pool.
func (w *world) apiPool(node, pool string) (api.Pool, error) {
	c, err := w.client(node)
	if err != nil {
		return api.Pool{}, err
	}
	return c.Pool(context.Background(), pool)
}

// awaitPool waits until the daemon shows the pool as check wants.
func (w *world) awaitPool(node, pool, what string, check func(api.Pool) error) error {
	return w.eventually(fmt.Sprintf("pool %s %s", pool, what), func() error {
		p, err := w.apiPool(node, pool)
		if err != nil {
			return err
		}
		if err := check(p); err != nil {
			data, _ := json.Marshal(p)
			return fmt.Errorf("%w: %s", err, data)
		}
		return nil
	})
}

func (w *world) daemonShows(pool, phase string) error { return w.nodeShows(applyNode, pool, phase) }

func (w *world) nodeShows(node, pool, phase string) error {
	return w.awaitPool(node, pool, "as "+phase, func(p api.Pool) error {
		if string(p.Phase) != phase || p.Ready != (phase == "Ready") {
			return fmt.Errorf("phase %s, ready %v", p.Phase, p.Ready)
		}
		return nil
	})
}

// daemonNewPID waits until the pool is Ready with an engine other than the noted one.
func (w *world) daemonNewPID(pool string) error {
	old, ok := w.noted[pool]
	if !ok {
		return fmt.Errorf("no engine pid noted for pool %s", pool)
	}
	return w.awaitPool(applyNode, pool, "Ready with a new engine", func(p api.Pool) error {
		if !p.Ready || p.PID == 0 || p.PID == old {
			return fmt.Errorf("ready %v, pid %d (noted %d)", p.Ready, p.PID, old)
		}
		return nil
	})
}

func (w *world) daemonRestarts(pool string, restarts int, class string) error {
	return w.awaitPool(applyNode, pool, fmt.Sprintf("with %d restarts after %s", restarts, class), func(p api.Pool) error {
		e := p.LastError
		switch {
		case p.Restarts != restarts:
			return fmt.Errorf("%d restarts", p.Restarts)
		case e == nil || e.Class != class || e.Message == "" || e.Hint == "" || e.Time.IsZero():
			return fmt.Errorf("last error %+v", e)
		}
		return nil
	})
}

func (w *world) daemonRetryAfter(pool, delay string) error {
	want, err := time.ParseDuration(delay)
	if err != nil {
		return err
	}
	return w.awaitPool(applyNode, pool, "with its next retry "+delay+" after its last error", func(p api.Pool) error {
		if p.LastError == nil || p.NextRetry.Sub(p.LastError.Time) != want {
			return fmt.Errorf("next retry %v, last error %+v", p.NextRetry, p.LastError)
		}
		return nil
	})
}

func (w *world) daemonRestartCount(pool string, restarts int) error {
	p, err := w.apiPool(applyNode, pool)
	if err != nil {
		return err
	}
	if p.Restarts != restarts {
		return fmt.Errorf("pool %s has %d restarts, want %d", pool, p.Restarts, restarts)
	}
	return nil
}

func (w *world) daemonPreload(pool, state string) error {
	return w.awaitPool(applyNode, pool, "with preload "+state, func(p api.Pool) error {
		pr := p.Preload
		if pr == nil || pr.State != state || pr.StartedAt.IsZero() || (state == api.PreloadLoaded && !pr.LoadedAt.After(pr.StartedAt)) {
			return fmt.Errorf("preload %+v", pr)
		}
		return nil
	})
}

func (w *world) daemonUnknown(pool string) error {
	return w.eventually("pool "+pool+" to be gone", func() error {
		_, err := w.apiPool(applyNode, pool)
		if errors.Is(err, api.ErrUnknownPool) {
			return nil
		}
		return fmt.Errorf("the daemon still knows it (%v)", err)
	})
}

func (w *world) daemonConfig() (api.Config, error) {
	c, err := w.client(applyNode)
	if err != nil {
		return api.Config{}, err
	}
	return c.Config(context.Background())
}

func (w *world) configInvalid(at, msg string) error {
	return w.eventually("the config to be invalid", func() error {
		cfg, err := w.daemonConfig()
		if err != nil {
			return err
		}
		if cfg.Valid {
			return errors.New("the daemon's config is valid")
		}
		for _, d := range cfg.Errors {
			if strings.Contains(d.Pos.String(), at+":") && strings.Contains(d.Message, msg) {
				return nil
			}
		}
		return fmt.Errorf("no error at %s containing %q: %v", at, msg, cfg.Errors)
	})
}

func (w *world) configValid() error {
	return w.eventually("the config to be valid", func() error {
		cfg, err := w.daemonConfig()
		if err == nil && !cfg.Valid {
			err = fmt.Errorf("invalid: %v", cfg.Errors)
		}
		return err
	})
}

// metricCompare waits until a series (NAME or NAME{label="value",...}) has
// the value (op "=") or a value above it (op ">"); for a histogram, its count.
func (w *world) metricCompare(series, op, want string) error {
	name, labels, _ := strings.Cut(strings.TrimSuffix(series, "}"), "{")
	wantValue, err := strconv.ParseFloat(want, 64)
	if err != nil {
		return err
	}
	return w.eventually(series+" "+op+" "+want, func() error {
		if err := w.getFromDaemon("/metrics", ""); err != nil {
			return err
		}
		parser := expfmt.NewTextParser(model.LegacyValidation)
		families, err := parser.TextToMetricFamilies(strings.NewReader(w.httpBody))
		if err != nil {
			return err
		}
		fam, ok := families[name]
		if !ok {
			return fmt.Errorf("no metric %s", name)
		}
		for _, m := range fam.GetMetric() {
			if !labelsMatch(m.GetLabel(), labels) {
				continue
			}
			var got float64
			switch {
			case m.Counter != nil:
				got = m.GetCounter().GetValue()
			case m.Gauge != nil:
				got = m.GetGauge().GetValue()
			case m.Histogram != nil:
				got = float64(m.GetHistogram().GetSampleCount())
			}
			if (op == "=" && got != wantValue) || (op == ">" && got <= wantValue) {
				return fmt.Errorf("%s is %v", series, got)
			}
			return nil
		}
		return fmt.Errorf("no series %s", series)
	})
}

// labelsMatch reports whether a series has every label of want (a="b",c="d").
func labelsMatch[L interface {
	GetName() string
	GetValue() string
}](have []L, want string) bool {
	if want == "" {
		return true
	}
	for _, pair := range strings.Split(want, ",") {
		k, v, _ := strings.Cut(pair, "=")
		v = strings.Trim(v, `"`)
		if !slices.ContainsFunc(have, func(l L) bool { return l.GetName() == k && l.GetValue() == v }) {
			return false
		}
	}
	return true
}

// logEvents decodes the default daemon's JSON log.
func (w *world) logEvents() ([]map[string]any, error) { return w.nodeLogEvents(applyNode) }

// nodeLogEvents decodes a node's daemon's JSON log.
func (w *world) nodeLogEvents(node string) ([]map[string]any, error) {
	d, err := w.daemon(node)
	if err != nil {
		return nil, err
	}
	var events []map[string]any
	sc := bufio.NewScanner(strings.NewReader(d.stderr.String()))
	for sc.Scan() {
		var e map[string]any
		if err := json.Unmarshal(sc.Bytes(), &e); err != nil {
			return nil, fmt.Errorf("a log line is not JSON: %q: %w", sc.Text(), err)
		}
		events = append(events, e)
	}
	return events, nil
}

func (w *world) loggedEvent(level, text string) error {
	return w.nodeLoggedEvent(applyNode, level, text)
}

func (w *world) nodeLoggedEvent(node, level, text string) error {
	return w.eventually(fmt.Sprintf("a %s event of the daemon of %s containing %q", level, node, text), func() error {
		events, err := w.nodeLogEvents(node)
		if err != nil {
			return err
		}
		for _, e := range events {
			data, _ := json.Marshal(e)
			if e["@level"] == level && strings.Contains(string(data), text) {
				return nil
			}
		}
		return errors.New("none yet")
	})
}

func (w *world) neverLogged(text string) error {
	d, err := w.daemon(applyNode)
	if err != nil {
		return err
	}
	if strings.Contains(d.stderr.String(), text) {
		return fmt.Errorf("the daemon logged %q%s", text, w.daemonLogs())
	}
	return nil
}

func (w *world) loggedTransitions(pool, first, then string) error {
	return w.eventually(fmt.Sprintf("a %s event of pool %s followed by a %s event", first, pool, then), func() error {
		events, err := w.logEvents()
		if err != nil {
			return err
		}
		seen := false
		for _, e := range events {
			if e["pool"] != pool {
				continue
			}
			seen = seen || e["phase"] == first
			if e["phase"] == then && seen {
				return nil
			}
		}
		return errors.New("none yet")
	})
}

// --- fleet: one simulated node and one daemon per node, one config

func (w *world) fleetSim(node string) string   { return filepath.Join(w.workspace, "node-"+node) }
func (w *world) fleetState(node string) string { return filepath.Join(w.workspace, "state-"+node) }

func (w *world) fleetNode(node string, gib int) error {
	if _, err := w.quiet(fmt.Sprintf("sim init %s --gpu NVIDIA-GPU=%dGi", w.fleetSim(node), gib)); err != nil {
		return err
	}
	decl := testenv.NodeDecl{Name: node, GPUs: []testenv.GPUDecl{{Index: 0, VRAM: fmt.Sprintf("%dGi", gib)}}}
	return w.writeFile(fmt.Sprintf("nodes/%s.cue", node), decl.CUE())
}

func (w *world) startNodeDaemon(node, extra string) error {
	return w.launchDaemon(node, w.fleetState(node), w.fleetSim(node), nil, extra)
}

func (w *world) nodeKnowsOnly(node, pools string) error {
	want := splitList(pools)
	c, err := w.client(node)
	if err != nil {
		return err
	}
	return w.eventually(fmt.Sprintf("node %s to know only %v", node, want), func() error {
		ps, err := c.Pools(context.Background())
		if err != nil {
			return err
		}
		var got []string
		for _, p := range ps {
			got = append(got, p.Pool)
		}
		if !slices.Equal(got, want) {
			return fmt.Errorf("it knows %v", got)
		}
		return nil
	})
}

// nodeEngines checks the processes holding memory on the node's simulated
// GPU: exactly the engines of the pools, each run by that node's daemon.
func (w *world) nodeEngines(node, pools string) error {
	want := splitList(pools)
	return w.eventually(fmt.Sprintf("the engines on %s to be %v", node, want), func() error {
		all, err := w.engineProcesses()
		if err != nil {
			return err
		}
		var got []string
		for _, p := range all {
			if filepath.Clean(p.env[simDirEnv]) == w.fleetSim(node) {
				got = append(got, p.pool)
			}
		}
		slices.Sort(got)
		if !slices.Equal(got, want) {
			return fmt.Errorf("the engines of %v run there", got)
		}
		return nil
	})
}

func splitList(s string) []string {
	var out []string
	for _, p := range strings.Split(s, ",") {
		if p = strings.TrimSpace(strings.Trim(strings.TrimSpace(p), `"`)); p != "" {
			out = append(out, p)
		}
	}
	slices.Sort(out)
	return out
}

// stopDaemons ends every daemon of the scenario (SIGTERM, then SIGKILL) and
// stops the engines of each state directory.
func (w *world) stopDaemons() error {
	var errs []error
	for _, d := range w.daemons {
		if !d.exited() {
			_ = d.cmd.Process.Signal(syscall.SIGTERM)
			select {
			case <-d.done:
			case <-time.After(10 * time.Second):
				_ = d.cmd.Process.Kill()
				<-d.done
				errs = append(errs, fmt.Errorf("the daemon of %s did not stop on SIGTERM", d.node))
			}
		}
		if _, err := os.Stat(d.stateDir); err == nil {
			if _, err := w.quiet("stop --all --state-dir " + d.stateDir); err != nil {
				errs = append(errs, err)
			}
		}
	}
	w.daemons = nil
	return errors.Join(errs...)
}
