package features

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/cucumber/godog"

	"github.com/poolmanagerd/pool-managerd/drivers/engine"
	"github.com/poolmanagerd/pool-managerd/drivers/engine/proc"
	"github.com/poolmanagerd/pool-managerd/drivers/gpu/sim"
	"github.com/poolmanagerd/pool-managerd/internal/state"
	"github.com/poolmanagerd/pool-managerd/testkit/syncbuf"
	"github.com/poolmanagerd/pool-managerd/testkit/testenv"
)

// applyState is what the apply and lifecycle steps keep of a scenario, besides the world's.
type applyState struct {
	// elapsed is how long the last command ran.
	elapsed time.Duration
	// signal names the signal that ended the last command ("killed"), "" when it exited.
	signal string
	// bg is the command started in the background, if any.
	bg *background
	// noted are the engine pids by pool, as status showed them when noted.
	noted map[string]int
}

// The node every pool of these scenarios runs on, and the environment
// variables by which pool-managerd marks the engines it starts.
const (
	applyNode = "gpu-01"
	simDirEnv = "POOL_MANAGERD_SIM_DIR"
)

// applyCommand is what "I apply the config" runs.
const applyCommand = "apply CONFIG --gpus SIM --state-dir STATE --node " + applyNode + " --llama-server ENGINE --auto-approve"

// statusCommand is what the steps that look at a pool quietly run.
const statusCommand = "status --gpus SIM --state-dir STATE --node " + applyNode + " --format json"

// waitLimit bounds every wait of these steps.
const waitLimit = 20 * time.Second

func (w *world) registerApply(sc *godog.ScenarioContext) {
	sc.Step(`^a model file "([^"]*)"$`, w.modelFile)
	sc.Step(`^a copy of the example config "([^"]*)" with its models in the workspace and no fixed ports$`, w.exampleInWorkspace)
	sc.Step(`^I append to the config file "([^"]*)":$`, w.appendConfig)

	sc.Step(`^I apply the config(?: again)?$`, w.applyConfig)
	sc.Step(`^I run "pool-managerd ([^"]*)" with ([A-Z_][A-Z0-9_]*=\S*)$`, w.runWith)
	sc.Step(`^I start "pool-managerd ([^"]*)" in the background$`, w.startBackground)
	sc.Step(`^the background command has printed "(.*)"$`, w.backgroundPrinted)
	sc.Step(`^the background command is still running$`, w.backgroundRunning)
	sc.Step(`^the background command ends with exit status (\d+)$`, w.backgroundEnds)
	sc.Step(`^stderr names the background command as the holder of the lock$`, w.holderNamed)
	sc.Step(`^the command was killed by SIGKILL$`, w.killedBySIGKILL)
	sc.Step(`^the command took at least (\d+)ms$`, w.tookAtLeast)
	sc.Step(`^the command ended while the background command was still loading pool "([^"]*)"$`, w.endedWhileLoading)

	sc.Step(`^apply reported pool "([^"]*)" Preloading, then Ready at least (\d+)ms later$`, w.preloadingThenReady)
	sc.Step(`^apply waited about (\d+)ms for the backoff of pool "([^"]*)"$`, w.waitedBackoff)
	sc.Step(`^apply started pools "([^"]*)" and "([^"]*)" before either was Ready$`, w.startedTogether)
	sc.Step(`^apply stopped pool "([^"]*)" before it started pool "([^"]*)"$`, w.stoppedBefore)

	sc.Step(`^the JSON status of pool "([^"]*)" is (\w+) with a pid and an endpoint$`, w.jsonRunning)
	sc.Step(`^the JSON status of pool "([^"]*)" is (\w+) with no engine$`, w.jsonNoEngine)
	sc.Step(`^the JSON status of pool "([^"]*)" has a last error of class "([^"]*)" with a message, a time and a hint$`, w.jsonLastError)
	sc.Step(`^the JSON status of pool "([^"]*)" has a last error message containing "(.*)"$`, w.jsonErrorMessage)
	sc.Step(`^the JSON status of pool "([^"]*)" has a next retry in the future$`, w.jsonNextRetry)
	sc.Step(`^the JSON status of pool "([^"]*)" has its next retry (\S+) after its last error$`, w.jsonRetryAfter)
	sc.Step(`^the JSON status of pool "([^"]*)" has the breaker (closed|open|half-open)$`, w.jsonBreaker)
	sc.Step(`^the status table shows pool "([^"]*)" as (\w+)$`, w.tableRow)
	sc.Step(`^the status table gives pool "([^"]*)" its last error with class "([^"]*)" and time, a hint and the next retry$`, w.tableError)

	sc.Step(`^pool "([^"]*)" becomes (\w+)$`, w.becomes)
	sc.Step(`^I note the engine pids$`, w.notePIDs)
	sc.Step(`^pool "([^"]*)" has the engine pid noted$`, w.samePID)
	sc.Step(`^pool "([^"]*)" has a new engine pid$`, w.newPID)

	sc.Step(`^(\d+) engine process(?:es)? runs? for pool "([^"]*)"$`, w.engineCount)
	sc.Step(`^no engine process runs for pool "([^"]*)"$`, w.noEngine)
	sc.Step(`^no engine was ever spawned for pool "([^"]*)"$`, w.neverSpawned)
	sc.Step(`^the engine of pool "([^"]*)" has exited$`, w.engineExited)
	sc.Step(`^the engine of pool "([^"]*)" has CUDA_VISIBLE_DEVICES set to the UUIDs? of GPUs? ([\d, ]+) and CUDA_DEVICE_ORDER=PCI_BUS_ID$`, w.visibleDevices)
	sc.Step(`^the engine of pool "([^"]*)" runs the stand-in engine's binary without a shell, in a session of its own$`, w.noShell)
	sc.Step(`^the engine of pool "([^"]*)" was started with "([^"]*)"$`, w.startedWith)
	sc.Step(`^the endpoint of pool "([^"]*)" answers GET /health with (\d+) and a body containing "(.*)"$`, w.health)

	sc.Step(`^the log of pool "([^"]*)" holds (\d+) starts?$`, w.logStarts)
	sc.Step(`^the log of pool "([^"]*)" contains "(.*)"$`, w.logContains)
	sc.Step(`^in the log of pool "([^"]*)", "(.*)" comes before start (\d+)$`, w.logBefore)
	sc.Step(`^the engine of pool "([^"]*)" exited on SIGTERM, with no SIGKILL$`, w.exitedOnSIGTERM)
	sc.Step(`^the engine of pool "([^"]*)" was killed with SIGKILL$`, w.killedWithSIGKILL)
	sc.Step(`^the state file is valid and records the live engine of pool "([^"]*)"$`, w.stateRecordsEngine)
}

// --- setup

func (w *world) modelFile(rel string) error {
	full := filepath.Join(w.workspace, rel)
	if err := os.MkdirAll(filepath.Dir(full), 0o755); err != nil {
		return err
	}
	return os.WriteFile(full, nil, 0o644)
}

var (
	fixedPort = regexp.MustCompile(`(?m)^\s*port:\s*\d+\s*\n`)
	modelPath = regexp.MustCompile(`path:\s*"(/models/[^"]+)"`)
)

// exampleInWorkspace copies an example config so that it runs here: its
// model files are created under the workspace (the stand-in engine only
// checks that they exist) and fixed ports are dropped (ports are picked at start).
func (w *world) exampleInWorkspace(name string) error {
	if err := w.exampleConfig(name); err != nil {
		return err
	}
	return filepath.WalkDir(w.path(""), func(p string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() || !strings.HasSuffix(p, ".cue") {
			return err
		}
		data, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		text := fixedPort.ReplaceAllString(string(data), "")
		for _, m := range modelPath.FindAllStringSubmatch(text, -1) {
			if err := w.modelFile(strings.TrimPrefix(m[1], "/")); err != nil {
				return err
			}
		}
		text = modelPath.ReplaceAllString(text, `path: "`+w.workspace+`$1"`)
		return os.WriteFile(p, []byte(text), 0o644)
	})
}

func (w *world) appendConfig(rel string, doc *godog.DocString) error {
	f, err := os.OpenFile(w.path(rel), os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		return err
	}
	_, err = fmt.Fprintf(f, "\n%s\n", strings.ReplaceAll(doc.Content, "WORKSPACE", w.workspace))
	return errors.Join(err, f.Close())
}

// --- commands

func (w *world) applyConfig() error { return w.run(applyCommand) }

func (w *world) runWith(args, env string) error { return w.runEnv([]string{env}, args) }

// signalOf names the signal that ended a command, "" when it exited.
func signalOf(exit *exec.ExitError) string {
	if ws, ok := exit.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
		return ws.Signal().String()
	}
	return ""
}

func (w *world) killedBySIGKILL() error {
	if w.signal != syscall.SIGKILL.String() {
		return fmt.Errorf("the command was not killed by SIGKILL (signal %q)\n%s", w.signal, w.output())
	}
	return nil
}

// tookAtLeast checks a lower bound only: how long a command may take on a
// busy machine has no upper bound the steps could check.
func (w *world) tookAtLeast(ms int) error {
	limit := time.Duration(ms) * time.Millisecond
	if w.elapsed < limit {
		return fmt.Errorf("the command took %v, want at least %v\n%s", w.elapsed, limit, w.output())
	}
	return nil
}

// background is a pool-managerd command that runs while the scenario goes on.
type background struct {
	cmd            *exec.Cmd
	stdout, stderr syncbuf.Buffer
	done           chan struct{}
	status         int
}

func (w *world) startBackground(args string) error {
	if w.bg != nil {
		return errors.New("a command runs in the background already")
	}
	bg := &background{done: make(chan struct{})}
	bg.cmd = exec.Command(w.h.poolManagerd(), strings.Fields(w.expand(args))...)
	bg.cmd.Dir = w.workspace
	bg.cmd.Stdout, bg.cmd.Stderr = &bg.stdout, &bg.stderr
	if err := bg.cmd.Start(); err != nil {
		return err
	}
	w.bg = bg
	go func() {
		err := bg.cmd.Wait()
		var exit *exec.ExitError
		if errors.As(err, &exit) {
			bg.status = exit.ExitCode()
		} else if err != nil {
			bg.status = -1
		}
		close(bg.done)
	}()
	return nil
}

func (w *world) background() (*background, error) {
	if w.bg == nil {
		return nil, errors.New("no command was started in the background")
	}
	return w.bg, nil
}

func (w *world) backgroundPrinted(text string) error {
	bg, err := w.background()
	if err != nil {
		return err
	}
	deadline := time.Now().Add(waitLimit)
	for !strings.Contains(bg.stdout.String(), text) {
		select {
		case <-bg.done:
			if strings.Contains(bg.stdout.String(), text) {
				return nil
			}
			return fmt.Errorf("the background command ended (status %d) without printing %q\n--- stdout\n%s--- stderr\n%s", bg.status, text, bg.stdout.String(), bg.stderr.String())
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("the background command did not print %q within %v\n%s", text, waitLimit, bg.stdout.String())
		}
	}
	return nil
}

func (w *world) backgroundRunning() error {
	bg, err := w.background()
	if err != nil {
		return err
	}
	select {
	case <-bg.done:
		return fmt.Errorf("the background command has ended (status %d)\n%s", bg.status, bg.stdout.String())
	default:
		return nil
	}
}

// backgroundEnds waits for the background command; its output becomes the
// last command's, for the stdout and stderr steps.
func (w *world) backgroundEnds(want int) error {
	bg, err := w.background()
	if err != nil {
		return err
	}
	select {
	case <-bg.done:
	case <-time.After(waitLimit):
		return fmt.Errorf("the background command still runs after %v\n%s", waitLimit, bg.stdout.String())
	}
	w.previous = w.stdout
	w.stdout, w.stderr, w.status, w.signal = bg.stdout.String(), bg.stderr.String(), bg.status, ""
	return w.exitStatus(want)
}

// endedWhileLoading checks, after the last command ended, that the
// background apply has reported the pool Preloading and nothing after it:
// the command did not wait for the background apply to finish that start.
func (w *world) endedWhileLoading(pool string) error {
	bg, err := w.background()
	if err != nil {
		return err
	}
	out := bg.stdout.String()
	preloading := false
	for _, e := range progress(out) {
		if e.pool != pool {
			continue
		}
		if e.phase != "Preloading" {
			return fmt.Errorf("the background command reported pool %s %s before the command ended: the command waited for it\n--- background stdout\n%s--- command\n%s", pool, e.phase, out, w.output())
		}
		preloading = true
	}
	if !preloading {
		return fmt.Errorf("the background command has not reported pool %s Preloading\n%s", pool, out)
	}
	return w.backgroundRunning()
}

func (w *world) holderNamed() error {
	bg, err := w.background()
	if err != nil {
		return err
	}
	want := fmt.Sprintf("is locked by pid %d ", bg.cmd.Process.Pid)
	if !strings.Contains(w.stderr, want) {
		return fmt.Errorf("stderr does not contain %q\n%s", want, w.output())
	}
	return nil
}

// --- apply's progress output

// progressLine is one event of apply's progress: time, pool, phase, message.
var progressLine = regexp.MustCompile(`^(\d\d:\d\d:\d\d\.\d{3})  (\S+) +(Pending|Preloading|Ready|Unready|Draining|Failed|Stopped) +(.*)$`)

type progressEvent struct {
	at                   time.Time
	pool, phase, message string
}

func progress(out string) []progressEvent {
	var events []progressEvent
	for _, line := range strings.Split(out, "\n") {
		m := progressLine.FindStringSubmatch(line)
		if m == nil {
			continue
		}
		at, err := time.Parse("15:04:05.000", m[1])
		if err != nil {
			continue
		}
		events = append(events, progressEvent{at: at, pool: m[2], phase: m[3], message: m[4]})
	}
	return events
}

func (w *world) preloadingThenReady(pool string, ms int) error {
	var preloading, ready *progressEvent
	events := progress(w.stdout)
	for i := range events {
		e := &events[i]
		if e.pool != pool {
			continue
		}
		if e.phase == "Preloading" && preloading == nil {
			preloading = e
		}
		if e.phase == "Ready" && ready == nil {
			if preloading == nil {
				return fmt.Errorf("pool %s was reported Ready before Preloading\n%s", pool, w.output())
			}
			ready = e
		}
	}
	if preloading == nil || ready == nil {
		return fmt.Errorf("pool %s was not reported Preloading then Ready\n%s", pool, w.output())
	}
	d := ready.at.Sub(preloading.at)
	if d < 0 {
		d += 24 * time.Hour // past midnight
	}
	if d < time.Duration(ms)*time.Millisecond {
		return fmt.Errorf("pool %s was reported Ready %v after Preloading, want at least %dms\n%s", pool, d, ms, w.output())
	}
	return nil
}

// startedTogether checks that two pools were started in parallel: both
// were Preloading before the first of them was Ready.
func (w *world) startedTogether(a, b string) error {
	firstReady := -1
	started := map[string]bool{}
	for i, e := range progress(w.stdout) {
		if e.pool != a && e.pool != b {
			continue
		}
		switch e.phase {
		case "Preloading":
			started[e.pool] = true
		case "Ready":
			if firstReady < 0 {
				firstReady = i
				if !started[a] || !started[b] {
					return fmt.Errorf("pool %s was Ready before both %s and %s had started\n%s", e.pool, a, b, w.output())
				}
			}
		}
	}
	if firstReady < 0 {
		return fmt.Errorf("neither %s nor %s was reported Ready\n%s", a, b, w.output())
	}
	return nil
}

// stoppedBefore checks that apply drained a pool's engine before it started another's.
func (w *world) stoppedBefore(stopped, started string) error {
	drained := false
	for _, e := range progress(w.stdout) {
		if e.pool == stopped && e.phase == "Draining" {
			drained = true
		}
		if e.pool == started && e.phase == "Preloading" {
			if !drained {
				return fmt.Errorf("pool %s was started before pool %s was stopped\n%s", started, stopped, w.output())
			}
			return nil
		}
	}
	return fmt.Errorf("apply did not start pool %s\n%s", started, w.output())
}

var backoffWait = regexp.MustCompile(`^waiting (\S+) for the backoff \((\S+) after the failure\)`)

// waitedBackoff checks the backoff apply waited for before it restarted a
// pool: the backoff chosen after the failure is the one wanted (the
// scenarios set no jitter), and apply waited what was left of it, more than
// nothing. How much was left depends on how busy the machine was between
// the failure and the wait, so it is not held to a bound below.
func (w *world) waitedBackoff(ms int, pool string) error {
	want := time.Duration(ms) * time.Millisecond
	for _, e := range progress(w.stdout) {
		if e.pool != pool {
			continue
		}
		m := backoffWait.FindStringSubmatch(e.message)
		if m == nil {
			continue
		}
		waited, err := time.ParseDuration(m[1])
		if err != nil {
			return err
		}
		backoff, err := time.ParseDuration(m[2])
		if err != nil {
			return err
		}
		if backoff != want || waited <= 0 || waited > backoff {
			return fmt.Errorf("apply waited %v of a %v backoff for %s, want a backoff of %v\n%s", waited, backoff, pool, want, w.output())
		}
		return nil
	}
	return fmt.Errorf("apply did not wait for a backoff of pool %s\n%s", pool, w.output())
}

// --- status

// poolStatus is the part of `status --format json` the steps read.
type poolStatus struct {
	Pool     string `json:"pool"`
	Phase    string `json:"phase"`
	Ready    bool   `json:"ready"`
	PID      int    `json:"pid"`
	Port     int    `json:"port"`
	Endpoint string `json:"endpoint"`
	Breaker  string `json:"breaker"`
	Restarts int    `json:"restarts"`
	Log      string `json:"log"`

	LastError *struct {
		Class   string     `json:"class"`
		Message string     `json:"message"`
		Hint    string     `json:"hint"`
		Time    *time.Time `json:"time"`
	} `json:"lastError"`
	NextRetry *time.Time `json:"nextRetry"`
}

// statusRows reads `status --format json`: {"formatVersion": 1, "pools": [...]}.
func statusRows(out string) ([]poolStatus, error) {
	var doc struct {
		FormatVersion int          `json:"formatVersion"`
		Pools         []poolStatus `json:"pools"`
	}
	if err := json.Unmarshal([]byte(out), &doc); err != nil {
		return nil, fmt.Errorf("status is not its JSON: %w\n%s", err, out)
	}
	if doc.FormatVersion != 1 {
		return nil, fmt.Errorf("status JSON format version %d, want 1\n%s", doc.FormatVersion, out)
	}
	return doc.Pools, nil
}

func findPool(out, pool string) (poolStatus, error) {
	rows, err := statusRows(out)
	if err != nil {
		return poolStatus{}, err
	}
	for _, r := range rows {
		if r.Pool == pool {
			return r, nil
		}
	}
	return poolStatus{}, fmt.Errorf("status has no pool %s\n%s", pool, out)
}

// jsonPool reads a pool from the last command's output, `status --format json`.
func (w *world) jsonPool(pool string) (poolStatus, error) {
	r, err := findPool(w.stdout, pool)
	if err != nil {
		return r, fmt.Errorf("%w\n%s", err, w.output())
	}
	return r, nil
}

// quiet runs pool-managerd for a step's own use, leaving the last command's output alone.
func (w *world) quiet(args string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, w.h.poolManagerd(), strings.Fields(w.expand(args))...)
	cmd.Dir = w.workspace
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("pool-managerd %s: %w\n%s%s", args, err, stdout.String(), stderr.String())
	}
	return stdout.String(), nil
}

// statusOf asks pool-managerd status for a pool now.
func (w *world) statusOf(pool string) (poolStatus, error) {
	out, err := w.quiet(statusCommand)
	if err != nil {
		return poolStatus{}, err
	}
	return findPool(out, pool)
}

func (w *world) jsonRunning(pool, phase string) error {
	r, err := w.jsonPool(pool)
	if err != nil {
		return err
	}
	if r.Phase != phase || r.PID == 0 || r.Port == 0 || r.Endpoint != fmt.Sprintf("http://127.0.0.1:%d", r.Port) || r.Ready != (phase == "Ready") {
		return fmt.Errorf("pool %s: %+v, want %s with a pid and an endpoint\n%s", pool, r, phase, w.output())
	}
	return nil
}

func (w *world) jsonNoEngine(pool, phase string) error {
	r, err := w.jsonPool(pool)
	if err != nil {
		return err
	}
	if r.Phase != phase || r.PID != 0 || r.Endpoint != "" || r.Ready {
		return fmt.Errorf("pool %s: %+v, want %s without an engine\n%s", pool, r, phase, w.output())
	}
	return nil
}

func (w *world) jsonLastError(pool, class string) error {
	r, err := w.jsonPool(pool)
	if err != nil {
		return err
	}
	e := r.LastError
	if e == nil || e.Class != class || e.Message == "" || e.Hint == "" || e.Time == nil {
		return fmt.Errorf("pool %s: last error %+v at %v, want class %s with a message, a time and a hint\n%s", pool, e, e, class, w.output())
	}
	if age := time.Since(*e.Time); age < 0 || age > time.Minute {
		return fmt.Errorf("pool %s: last error time %v is not this scenario's", pool, e.Time)
	}
	return nil
}

func (w *world) jsonErrorMessage(pool, text string) error {
	r, err := w.jsonPool(pool)
	if err != nil {
		return err
	}
	if r.LastError == nil || !strings.Contains(r.LastError.Message, text) {
		return fmt.Errorf("pool %s: last error %+v does not say %q\n%s", pool, r.LastError, text, w.output())
	}
	return nil
}

func (w *world) jsonNextRetry(pool string) error {
	r, err := w.jsonPool(pool)
	if err != nil {
		return err
	}
	if r.NextRetry == nil || !r.NextRetry.After(time.Now()) {
		return fmt.Errorf("pool %s: next retry %v, want one in the future\n%s", pool, r.NextRetry, w.output())
	}
	return nil
}

func (w *world) jsonRetryAfter(pool, delay string) error {
	want, err := time.ParseDuration(delay)
	if err != nil {
		return err
	}
	r, err := w.jsonPool(pool)
	if err != nil {
		return err
	}
	if r.NextRetry == nil || r.LastError == nil || r.LastError.Time == nil || r.NextRetry.Sub(*r.LastError.Time) != want {
		return fmt.Errorf("pool %s: last error at %v, next retry %v, want the retry %v after the error\n%s", pool, r.LastError, r.NextRetry, want, w.output())
	}
	return nil
}

func (w *world) jsonBreaker(pool, breaker string) error {
	r, err := w.jsonPool(pool)
	if err != nil {
		return err
	}
	if r.Breaker != breaker {
		return fmt.Errorf("pool %s: breaker %q, want %q\n%s", pool, r.Breaker, breaker, w.output())
	}
	return nil
}

func (w *world) tableRow(pool, phase string) error {
	for _, line := range strings.Split(w.stdout, "\n") {
		f := strings.Fields(line)
		if len(f) >= 3 && f[0] == pool && f[1] == phase {
			return nil
		}
	}
	return fmt.Errorf("the status table has no row for pool %s as %s\n%s", pool, phase, w.output())
}

// tableError checks the lines under the table that explain a pool's last
// error: "POOL: MESSAGE (CLASS, TIME)", its hint and its next retry.
func (w *world) tableError(pool, class string) error {
	re := regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(pool) + `: .+ \(` + regexp.QuoteMeta(class) + `, (\d{4}-\d\d-\d\d \d\d:\d\d:\d\d)\)\n  hint: \S.*\n  next retry in \S+\n`)
	m := re.FindStringSubmatch(w.stdout)
	if m == nil {
		return fmt.Errorf("the status table does not explain pool %s's %s error with its time, a hint and the next retry\n%s", pool, class, w.output())
	}
	at, err := time.ParseInLocation(time.DateTime, m[1], time.Local)
	if err != nil {
		return err
	}
	if age := time.Since(at); age < -time.Second || age > time.Minute {
		return fmt.Errorf("pool %s: the error time %s is not this scenario's", pool, m[1])
	}
	return nil
}

// becomes waits until status shows the pool in the phase.
func (w *world) becomes(pool, phase string) error {
	deadline := time.Now().Add(waitLimit)
	for {
		r, err := w.statusOf(pool)
		if err == nil && r.Phase == phase {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("pool %s is not %s after %v: %+v %v", pool, phase, waitLimit, r, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func (w *world) notePIDs() error {
	out, err := w.quiet(statusCommand)
	if err != nil {
		return err
	}
	rows, err := statusRows(out)
	if err != nil {
		return err
	}
	w.noted = map[string]int{}
	for _, r := range rows {
		if r.PID == 0 {
			return fmt.Errorf("pool %s has no engine to note\n%s", r.Pool, out)
		}
		w.noted[r.Pool] = r.PID
	}
	return nil
}

func (w *world) samePID(pool string) error {
	r, err := w.statusOf(pool)
	if err != nil {
		return err
	}
	if r.PID == 0 || r.PID != w.noted[pool] {
		return fmt.Errorf("pool %s: engine pid %d, noted %d", pool, r.PID, w.noted[pool])
	}
	return nil
}

func (w *world) newPID(pool string) error {
	r, err := w.statusOf(pool)
	if err != nil {
		return err
	}
	if r.PID == 0 || r.PID == w.noted[pool] {
		return fmt.Errorf("pool %s: engine pid %d, want a new one (noted %d)", pool, r.PID, w.noted[pool])
	}
	return nil
}

// --- engine processes

// engineProcess is a live process started for this scenario's simulated node.
type engineProcess struct {
	pid  int
	pool string
	env  map[string]string
}

// engineProcesses finds, through /proc, every live process whose
// environment names this scenario's simulated node: the engines.
func (w *world) engineProcesses() ([]engineProcess, error) {
	found, err := proc.FindByEnv(simDirEnv)
	if err != nil {
		return nil, err
	}
	// The scenario's simulated nodes are all in its workspace.
	var out []engineProcess
	for pid, dir := range found {
		if !strings.HasPrefix(filepath.Clean(dir), filepath.Clean(w.workspace)+string(filepath.Separator)) {
			continue
		}
		info, err := proc.Stat(pid)
		if err != nil || info.State == 'Z' || info.State == 'X' {
			continue
		}
		env, err := proc.Environ(pid)
		if err != nil {
			continue
		}
		p := engineProcess{pid: pid, env: env}
		if m, err := engine.ParseMarker(env[engine.MarkerEnv]); err == nil {
			p.pool = m.Pool
		}
		out = append(out, p)
	}
	slices.SortFunc(out, func(a, b engineProcess) int { return a.pid - b.pid })
	return out, nil
}

func (w *world) enginesOf(pool string) ([]engineProcess, error) {
	all, err := w.engineProcesses()
	var out []engineProcess
	for _, p := range all {
		if p.pool == pool {
			out = append(out, p)
		}
	}
	return out, err
}

func (w *world) engineCount(n int, pool string) error {
	ps, err := w.enginesOf(pool)
	if err != nil {
		return err
	}
	if len(ps) != n {
		return fmt.Errorf("%d engine processes run for pool %s (%v), want %d", len(ps), pool, ps, n)
	}
	return nil
}

// noEngine waits until no engine process runs for the pool. A daemon stops
// an engine after it shows why (the pool Unready, its last error), so the
// engine may still be draining when the step before saw that.
func (w *world) noEngine(pool string) error { return w.engineExited(pool) }

// neverSpawned checks that no engine runs for the pool and none ever wrote to its log.
func (w *world) neverSpawned(pool string) error {
	if err := w.noEngine(pool); err != nil {
		return err
	}
	log := filepath.Join(w.stateDir(), "logs", pool+".log")
	if _, err := os.Stat(log); !errors.Is(err, os.ErrNotExist) {
		data, _ := os.ReadFile(log)
		return fmt.Errorf("pool %s has an engine log, so an engine was spawned:\n%s", pool, data)
	}
	return nil
}

func (w *world) engineExited(pool string) error {
	deadline := time.Now().Add(waitLimit)
	for {
		ps, err := w.enginesOf(pool)
		if err == nil && len(ps) == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("the engine of pool %s still runs after %v: %v %v", pool, waitLimit, ps, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// engineOf is the pool's one live engine process, the one status shows.
func (w *world) engineOf(pool string) (engineProcess, error) {
	r, err := w.statusOf(pool)
	if err != nil {
		return engineProcess{}, err
	}
	if r.PID == 0 {
		return engineProcess{}, fmt.Errorf("status shows no engine for pool %s: %+v", pool, r)
	}
	env, err := proc.Environ(r.PID)
	if err != nil {
		return engineProcess{}, fmt.Errorf("pool %s: engine pid %d: %w", pool, r.PID, err)
	}
	return engineProcess{pid: r.PID, pool: pool, env: env}, nil
}

func (w *world) visibleDevices(pool, list string) error {
	e, err := w.engineOf(pool)
	if err != nil {
		return err
	}
	gpus, err := sim.GPUs(w.simDir())
	if err != nil {
		return err
	}
	var want []string
	for _, s := range strings.Split(list, ",") {
		i, err := strconv.Atoi(strings.TrimSpace(s))
		if err != nil || i < 0 || i >= len(gpus) {
			return fmt.Errorf("GPU %q is not on the simulated node", s)
		}
		want = append(want, gpus[i].UUID)
	}
	if got := e.env["CUDA_VISIBLE_DEVICES"]; got != strings.Join(want, ",") {
		return fmt.Errorf("engine pid %d of pool %s has CUDA_VISIBLE_DEVICES=%q, want %q", e.pid, pool, got, strings.Join(want, ","))
	}
	if got := e.env["CUDA_DEVICE_ORDER"]; got != "PCI_BUS_ID" {
		return fmt.Errorf("engine pid %d of pool %s has CUDA_DEVICE_ORDER=%q, want PCI_BUS_ID", e.pid, pool, got)
	}
	return nil
}

func (w *world) noShell(pool string) error {
	e, err := w.engineOf(pool)
	if err != nil {
		return err
	}
	argv, err := proc.Cmdline(e.pid)
	if err != nil {
		return err
	}
	if len(argv) == 0 || argv[0] != w.h.fakeEngine() {
		return fmt.Errorf("engine pid %d of pool %s runs %q, want the stand-in engine %s itself", e.pid, pool, argv, w.h.fakeEngine())
	}
	info, err := proc.Stat(e.pid)
	if err != nil {
		return err
	}
	if info.Session != e.pid || info.PGID != e.pid {
		return fmt.Errorf("engine pid %d of pool %s is in session %d, group %d: want its own", e.pid, pool, info.Session, info.PGID)
	}
	if info.Comm != "fake-engine" {
		return fmt.Errorf("engine pid %d of pool %s is %q, want fake-engine", e.pid, pool, info.Comm)
	}
	return nil
}

func (w *world) startedWith(pool, args string) error {
	pid, argv, has, err := w.engineArgvHas(pool, args)
	if err != nil {
		return err
	}
	if !has {
		return fmt.Errorf("engine pid %d of pool %s runs %q, without %q", pid, pool, argv, args)
	}
	return nil
}

// engineArgvHas reads the command line of pool's engine and reports whether
// args (one or more whole arguments) appear in it, in that order.
func (w *world) engineArgvHas(pool, args string) (pid int, argv []string, has bool, err error) {
	e, err := w.engineOf(pool)
	if err != nil {
		return 0, nil, false, err
	}
	argv, err = proc.Cmdline(e.pid)
	if err != nil {
		return e.pid, nil, false, err
	}
	return e.pid, argv, strings.Contains(" "+strings.Join(argv, " ")+" ", " "+args+" "), nil
}

func (w *world) health(pool string, code int, body string) error {
	r, err := w.statusOf(pool)
	if err != nil {
		return err
	}
	if r.Endpoint == "" {
		return fmt.Errorf("pool %s has no endpoint: %+v", pool, r)
	}
	client := http.Client{Timeout: 5 * time.Second}
	resp, err := client.Get(r.Endpoint + "/health")
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	if err != nil {
		return err
	}
	if resp.StatusCode != code || !strings.Contains(string(data), body) {
		return fmt.Errorf("GET %s/health: %d %s, want %d and %q", r.Endpoint, resp.StatusCode, data, code, body)
	}
	return nil
}

// --- logs and state

func (w *world) engineLog(pool string) (string, error) {
	data, err := os.ReadFile(filepath.Join(w.stateDir(), "logs", pool+".log"))
	return string(data), err
}

// startLine marks each start of an engine in its log.
var startLine = regexp.MustCompile(`(?m)^-- pool-managerd \S+: start `)

func (w *world) logStarts(pool string, n int) error {
	log, err := w.engineLog(pool)
	if err != nil {
		return err
	}
	if got := len(startLine.FindAllStringIndex(log, -1)); got != n {
		return fmt.Errorf("the log of pool %s holds %d starts, want %d\n%s", pool, got, n, log)
	}
	return nil
}

func (w *world) logContains(pool, text string) error {
	log, err := w.engineLog(pool)
	if err != nil {
		return err
	}
	if !strings.Contains(log, text) {
		return fmt.Errorf("the log of pool %s does not contain %q\n%s", pool, text, log)
	}
	return nil
}

func (w *world) logBefore(pool, text string, n int) error {
	log, err := w.engineLog(pool)
	if err != nil {
		return err
	}
	starts := startLine.FindAllStringIndex(log, -1)
	if len(starts) < n {
		return fmt.Errorf("the log of pool %s holds %d starts, not %d\n%s", pool, len(starts), n, log)
	}
	if i := strings.Index(log, text); i < 0 || i > starts[n-1][0] {
		return fmt.Errorf("in the log of pool %s, %q does not come before start %d\n%s", pool, text, n, log)
	}
	return nil
}

// lastRun is what the pool's engine log holds since its last start.
func (w *world) lastRun(pool string) (string, error) {
	log, err := w.engineLog(pool)
	if err != nil {
		return "", err
	}
	starts := startLine.FindAllStringIndex(log, -1)
	if len(starts) == 0 {
		return "", fmt.Errorf("the log of pool %s holds no start\n%s", pool, log)
	}
	return log[starts[len(starts)-1][0]:], nil
}

// simClaim reports whether the simulated node still holds the GPU memory
// claim of a process. The stand-in engine writes its claim (the file
// claims/PID.json of the simulated node) before it reports its model
// loaded, and removes it as the last thing its SIGTERM handler does; a
// process killed with SIGKILL leaves it behind.
func (w *world) simClaim(pid int) (bool, error) {
	_, err := os.Stat(filepath.Join(w.simDir(), "claims", strconv.Itoa(pid)+".json"))
	switch {
	case err == nil:
		return true, nil
	case errors.Is(err, os.ErrNotExist):
		return false, nil
	}
	return false, err
}

// notedEngine is the engine pid noted for the pool.
func (w *world) notedEngine(pool string) (int, error) {
	pid, ok := w.noted[pool]
	if !ok || pid == 0 {
		return 0, fmt.Errorf("no engine pid noted for pool %s: note the engine pids first", pool)
	}
	return pid, nil
}

// notedRun returns the pool's noted engine and what its log says of its last run.
func (w *world) notedRun(pool string) (int, string, error) {
	pid, err := w.notedEngine(pool)
	if err != nil {
		return 0, "", err
	}
	run, err := w.lastRun(pool)
	return pid, run, err
}

// exitedOnSIGTERM checks, by what the noted engine left behind, that its
// SIGTERM handler ran to the end: its log says it loaded its model (so it
// held memory), then cleaned up, without ignoring a SIGTERM or being
// interrupted a second time, and it gave back its GPU memory itself, which
// a SIGKILL would have prevented.
func (w *world) exitedOnSIGTERM(pool string) error {
	pid, run, err := w.notedRun(pool)
	if err != nil {
		return err
	}
	loaded := strings.Index(run, "main: model loaded")
	cleanup := strings.Index(run, "cleaning up before exit")
	switch {
	case loaded < 0:
		return fmt.Errorf("the engine of pool %s never reported its model loaded\n%s", pool, run)
	case cleanup < loaded:
		return fmt.Errorf("the engine of pool %s did not clean up on SIGTERM after it loaded\n%s", pool, run)
	case strings.Contains(run, "SIGTERM ignored"), strings.Contains(run, "Received second interrupt"):
		return fmt.Errorf("the engine of pool %s did not end on the first SIGTERM\n%s", pool, run)
	}
	held, err := w.simClaim(pid)
	if err != nil {
		return err
	}
	if held {
		return fmt.Errorf("engine pid %d of pool %s still holds its simulated GPU memory: it did not finish its SIGTERM handler (killed?)\n%s", pid, pool, run)
	}
	return nil
}

// killedWithSIGKILL checks that the noted engine was gone without running a
// SIGTERM handler to its end: it ignored SIGTERM, never cleaned up, and its
// GPU memory claim is left behind, as only a SIGKILL leaves it.
func (w *world) killedWithSIGKILL(pool string) error {
	pid, run, err := w.notedRun(pool)
	if err != nil {
		return err
	}
	if !strings.Contains(run, "SIGTERM ignored") || strings.Contains(run, "cleaning up before exit") {
		return fmt.Errorf("the engine of pool %s did not ignore SIGTERM without cleaning up\n%s", pool, run)
	}
	held, err := w.simClaim(pid)
	if err != nil {
		return err
	}
	if !held {
		return fmt.Errorf("engine pid %d of pool %s gave back its simulated GPU memory: it was not killed with SIGKILL\n%s", pid, pool, run)
	}
	return nil
}

func (w *world) stateRecordsEngine(pool string) error {
	st, err := state.Store{Dir: w.stateDir()}.Load()
	if err != nil {
		return fmt.Errorf("the state file is not valid: %w", err)
	}
	rec, ok := st.Engines[pool]
	if !ok {
		return fmt.Errorf("the state file has no engine for pool %s", pool)
	}
	ps, err := w.enginesOf(pool)
	if err != nil {
		return err
	}
	if len(ps) != 1 || rec.PID != ps[0].pid || !proc.Alive(rec.PID, rec.StartTicks) || rec.Intent {
		return fmt.Errorf("the state file records %+v for pool %s; its live engines: %v", rec, pool, ps)
	}
	return nil
}

// --- clean-up

// stopEngines leaves no process of the scenario behind: it kills a
// background command and runs pool-managerd stop --all; then the leak check
// fails the scenario if an engine of its workspace still runs (and kills it).
func (w *world) stopEngines() error {
	if bg := w.bg; bg != nil {
		select {
		case <-bg.done:
		default:
			_ = bg.cmd.Process.Kill()
			<-bg.done
		}
	}
	if _, err := os.Stat(w.stateDir()); err == nil {
		_, _ = w.quiet("stop --all --state-dir STATE")
	}
	return testenv.CheckEngines(context.Background(), w.workspace)
}
