package features

import (
	"errors"
	"fmt"
	"regexp"
	"strings"
	"time"

	"github.com/cucumber/godog"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/poolmanagerd/pool-managerd/drivers/engine/proc"
	"github.com/poolmanagerd/pool-managerd/internal/api"
	"github.com/poolmanagerd/pool-managerd/reconcile"
)

// The steps of readiness.feature (PM-1023): what the daemon reports of a
// pool while its engine is drained and replaced, of a breaker's half-open
// tries, and of an engine's end. They keep no state of their own: the
// engine pid they compare with is the one "I note the engine pids" noted.

func (w *world) registerLifecycle(sc *godog.ScenarioContext) {
	sc.Step(`^the daemon shows pool "([^"]*)" Draining, not ready, with the noted engine pid$`, w.drainingNoted)
	sc.Step(`^while the noted engine of pool "([^"]*)" runs, the API, the metrics and status all show the pool Draining and not ready$`, w.notReadyWhileDraining)
	sc.Step(`^the daemon has logged the engine_killed warn event for the noted engine of pool "([^"]*)" with the grace (\S+)$`, w.loggedKill)
	sc.Step(`^the daemon shows pool "([^"]*)" Failed with its breaker open for (\S+) after its last error, after (\d+) starts that each became Ready$`, w.breakerReopened)
	sc.Step(`^the daemon shows pool "([^"]*)" with a last error message containing "(.*)"$`, w.daemonErrorMessage)
}

// drainingNoted waits until the daemon shows the pool Draining, not ready,
// with the noted engine still its engine: the stop of that engine began.
func (w *world) drainingNoted(pool string) error {
	pid, err := w.notedEngine(pool)
	if err != nil {
		return err
	}
	return w.awaitPool(applyNode, pool, fmt.Sprintf("Draining with engine pid %d", pid), func(p api.Pool) error {
		if p.Phase != reconcile.Draining || p.Ready || p.PID != pid {
			return fmt.Errorf("phase %s, ready %v, pid %d", p.Phase, p.Ready, p.PID)
		}
		return nil
	})
}

// drainLook is one look at a pool from the three places a person or a
// router reads it: the API, the metrics and `pool-managerd status`.
type drainLook struct {
	api          api.Pool
	readyMetric  float64
	phaseMetrics map[string]float64
	status       poolStatus
}

// problems lists what of the look says the pool is anything but Draining
// and not ready, with the engine pid as its engine.
func (l drainLook) problems(pid int) []string {
	var out []string
	if l.api.Ready || l.api.Phase != reconcile.Draining || l.api.PID != pid {
		out = append(out, fmt.Sprintf("the API shows phase %s, ready %v, pid %d", l.api.Phase, l.api.Ready, l.api.PID))
	}
	if l.readyMetric != 0 {
		out = append(out, fmt.Sprintf("pool_managerd_pool_ready is %v", l.readyMetric))
	}
	for phase, v := range l.phaseMetrics {
		if want := phase == string(reconcile.Draining); v != 0 != want {
			out = append(out, fmt.Sprintf("pool_managerd_pool_phase{phase=%q} is %v", phase, v))
		}
	}
	if l.status.Ready || l.status.Phase != string(reconcile.Draining) || l.status.PID != pid {
		out = append(out, fmt.Sprintf("status shows phase %s, ready %v, pid %d", l.status.Phase, l.status.Ready, l.status.PID))
	}
	return out
}

// look reads the pool from the API, the metrics and status, in that order.
func (w *world) look(pool string) (drainLook, error) {
	var l drainLook
	var err error
	if l.api, err = w.apiPool(applyNode, pool); err != nil {
		return l, err
	}
	families, err := w.scrape()
	if err != nil {
		return l, err
	}
	ready, ok := seriesValue(families, "pool_managerd_pool_ready", `pool="`+pool+`"`)
	if !ok {
		return l, fmt.Errorf("no series pool_managerd_pool_ready{pool=%q}", pool)
	}
	l.readyMetric = ready
	l.phaseMetrics = map[string]float64{}
	for _, phase := range reconcile.Phases() {
		if v, ok := seriesValue(families, "pool_managerd_pool_phase", fmt.Sprintf(`pool="%s",phase="%s"`, pool, phase)); ok {
			l.phaseMetrics[string(phase)] = v
		}
	}
	if l.status, err = w.statusOf(pool); err != nil {
		return l, err
	}
	return l, nil
}

// notReadyWhileDraining looks at the pool again and again while its noted
// engine runs (alive, not a zombie), until that engine is gone. A look is
// judged only when the engine was still alive after it was taken: then
// every part of it was read during the drain, and each must say Draining
// and not ready. At least one look must have been taken so; the stop's
// grace must leave room for one (this is a lower bound on the grace, not an
// upper bound on the daemon).
func (w *world) notReadyWhileDraining(pool string) error {
	pid, err := w.notedEngine(pool)
	if err != nil {
		return err
	}
	info, err := proc.Stat(pid)
	if err != nil {
		return fmt.Errorf("the noted engine pid %d of pool %s: %w", pid, pool, err)
	}
	alive := func() bool { return proc.Alive(pid, info.StartTicks) }
	judged := 0
	deadline := time.Now().Add(waitLimit)
	for alive() {
		l, err := w.look(pool)
		switch {
		case !alive():
			// The drain may have ended while the look was taken: not judged.
		case err != nil:
			return fmt.Errorf("a look at pool %s during the drain: %w", pool, err)
		default:
			judged++
			if p := l.problems(pid); len(p) > 0 {
				return fmt.Errorf("while engine pid %d of pool %s was being stopped: %s%s", pid, pool, strings.Join(p, "; "), w.daemonLogs())
			}
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("engine pid %d of pool %s still runs after %v%s", pid, pool, waitLimit, w.daemonLogs())
		}
	}
	if judged == 0 {
		return fmt.Errorf("engine pid %d of pool %s was gone before one look at the API, the metrics and status could be taken: lengthen its stopGrace", pid, pool)
	}
	return nil
}

// loggedKill waits for the warn event that says the noted engine outlived
// its stop grace and was killed with SIGKILL.
func (w *world) loggedKill(pool, grace string) error {
	pid, err := w.notedEngine(pool)
	if err != nil {
		return err
	}
	want, err := time.ParseDuration(grace)
	if err != nil {
		return err
	}
	return w.eventually(fmt.Sprintf("the engine_killed event of engine pid %d of pool %s", pid, pool), func() error {
		events, err := w.logEvents()
		if err != nil {
			return err
		}
		var seen []string
		for _, e := range events {
			if e["event"] != "engine_killed" {
				continue
			}
			g, _ := e["grace"].(string)
			d, err := time.ParseDuration(g)
			if e["@level"] == "warn" && e["pool"] == pool && e["pid"] == float64(pid) && err == nil && d == want {
				return nil
			}
			seen = append(seen, fmt.Sprint(e))
		}
		return fmt.Errorf("no warn event with event=engine_killed, pool=%s, pid=%d, grace=%s (engine_killed events: %v)", pool, pid, want, seen)
	})
}

// breakerReopened waits until the daemon shows the pool Failed with its
// breaker open and the half-open try cooldown after the last error, then
// counts the pool's engine starts and the Ready events the daemon logged
// for it before that try: no start is allowed before it, so the counts are
// final, however late the step looks. Each start must have become Ready
// (else the engine died before Ready and the scenario does not show a try
// that dies after Ready).
func (w *world) breakerReopened(pool, cooldown string, starts int) error {
	want, err := time.ParseDuration(cooldown)
	if err != nil {
		return err
	}
	var p api.Pool
	if err := w.awaitPool(applyNode, pool, fmt.Sprintf("Failed with its breaker open for %v", want), func(got api.Pool) error {
		p = got
		switch {
		case got.Phase != reconcile.Failed || got.Ready || got.Breaker != api.BreakerOpen:
			return fmt.Errorf("phase %s, ready %v, breaker %s", got.Phase, got.Ready, got.Breaker)
		case got.LastError == nil || got.BreakerRetryAt.IsZero():
			return errors.New("no last error or no half-open try time")
		case got.BreakerRetryAt.Sub(got.LastError.Time) != want:
			return fmt.Errorf("the half-open try is %v after the last error", got.BreakerRetryAt.Sub(got.LastError.Time))
		}
		return nil
	}); err != nil {
		return err
	}
	before := p.BreakerRetryAt
	log, err := w.engineLog(pool)
	if err != nil {
		return err
	}
	n, err := startsBefore(log, before)
	if err != nil {
		return err
	}
	if n != starts {
		return fmt.Errorf("pool %s: %d engine starts before the half-open try at %s, want %d (one per cool-down)\n%s%s",
			pool, n, before.Format(time.RFC3339Nano), starts, log, w.daemonLogs())
	}
	readies, err := w.readyEventsBefore(pool, before)
	if err != nil {
		return err
	}
	if readies != starts {
		return fmt.Errorf("pool %s: the daemon logged %d Ready events before %s, want one per start (%d): an engine died before it was Ready%s",
			pool, readies, before.Format(time.RFC3339Nano), starts, w.daemonLogs())
	}
	return nil
}

// startStamp reads the time of each start line of an engine log.
var startStamp = regexp.MustCompile(`(?m)^-- pool-managerd (\S+): start `)

// startsBefore counts the engine starts that a log stamps before t.
func startsBefore(log string, t time.Time) (int, error) {
	n := 0
	for _, m := range startStamp.FindAllStringSubmatch(log, -1) {
		at, err := time.Parse(time.RFC3339Nano, m[1])
		if err != nil {
			return 0, fmt.Errorf("engine log start line stamped %q: %w", m[1], err)
		}
		if at.Before(t) {
			n++
		}
	}
	return n, nil
}

// logTimeFormat is the time format of the daemon's JSON log (@timestamp).
const logTimeFormat = "2006-01-02T15:04:05.000Z07:00"

// readyEventsBefore counts the events in which the daemon logged the pool
// Ready before t.
func (w *world) readyEventsBefore(pool string, t time.Time) (int, error) {
	events, err := w.logEvents()
	if err != nil {
		return 0, err
	}
	n := 0
	for _, e := range events {
		if e["pool"] != pool || e["phase"] != string(reconcile.Ready) {
			continue
		}
		stamp, _ := e["@timestamp"].(string)
		at, err := time.Parse(logTimeFormat, stamp)
		if err != nil {
			return 0, fmt.Errorf("log event %v: @timestamp: %w", e, err)
		}
		if at.Before(t) {
			n++
		}
	}
	return n, nil
}

func (w *world) daemonErrorMessage(pool, text string) error {
	return w.awaitPool(applyNode, pool, fmt.Sprintf("with a last error saying %q", text), func(p api.Pool) error {
		if p.LastError == nil || !strings.Contains(p.LastError.Message, text) {
			return fmt.Errorf("last error %+v", p.LastError)
		}
		return nil
	})
}

// scrape reads the default daemon's metrics once.
func (w *world) scrape() (map[string]*dto.MetricFamily, error) {
	if err := w.getFromDaemon("/metrics", ""); err != nil {
		return nil, err
	}
	if w.httpCode != 200 {
		return nil, fmt.Errorf("GET /metrics: status %d", w.httpCode)
	}
	parser := expfmt.NewTextParser(model.LegacyValidation)
	return parser.TextToMetricFamilies(strings.NewReader(w.httpBody))
}

// seriesValue is the value of the counter or gauge series of name whose
// labels include labels (a="b",c="d").
func seriesValue(families map[string]*dto.MetricFamily, name, labels string) (float64, bool) {
	fam, ok := families[name]
	if !ok {
		return 0, false
	}
	for _, m := range fam.GetMetric() {
		if !labelsMatch(m.GetLabel(), labels) {
			continue
		}
		switch {
		case m.Counter != nil:
			return m.GetCounter().GetValue(), true
		case m.Gauge != nil:
			return m.GetGauge().GetValue(), true
		}
	}
	return 0, false
}
