//go:build linux

package examples_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"go.yaml.in/yaml/v3"

	"github.com/poolmanagerd/pool-managerd/drivers/gpu/sim"
	"github.com/poolmanagerd/pool-managerd/internal/api"
	"github.com/poolmanagerd/pool-managerd/testkit/gitrepo"
	"github.com/poolmanagerd/pool-managerd/testkit/syncbuf"
	"github.com/poolmanagerd/pool-managerd/testkit/testenv"
)

// The monitoring examples: Prometheus alert rules with their promtool unit
// tests, and a Grafana dashboard.
const (
	alertsFile     = "monitoring/alerts.yml"
	alertsTestFile = "monitoring/alerts_test.yml"
	dashboardFile  = "monitoring/dashboard.json"

	// promtoolEnv names the promtool to run; without it, promtool is looked
	// up in PATH (.ci/run puts Debian's there when the machine has none).
	promtoolEnv = "POOL_MANAGERD_TEST_PROMTOOL"
)

// ---- the files --------------------------------------------------------------

type alertRule struct {
	Alert       string            `yaml:"alert"`
	Record      string            `yaml:"record"`
	Expr        string            `yaml:"expr"`
	For         string            `yaml:"for"`
	Labels      map[string]string `yaml:"labels"`
	Annotations map[string]string `yaml:"annotations"`
}

func readAlertRules(t *testing.T) []alertRule {
	t.Helper()
	var f struct {
		Groups []struct {
			Name  string      `yaml:"name"`
			Rules []alertRule `yaml:"rules"`
		} `yaml:"groups"`
	}
	readYAML(t, alertsFile, &f)
	var out []alertRule
	for _, g := range f.Groups {
		out = append(out, g.Rules...)
	}
	if len(out) == 0 {
		t.Fatalf("%s has no rules", alertsFile)
	}
	return out
}

func readYAML(t *testing.T, file string, v any) {
	t.Helper()
	data, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	if err := dec.Decode(v); err != nil {
		t.Fatalf("%s: %v", file, err)
	}
}

// dashboardQuery is one query of the dashboard: a panel's target or a
// template variable's, with the legend that names its labels.
type dashboardQuery struct {
	where, expr, legend string
}

// dashboardQueries reads every query of the dashboard, from its panels
// (rows' nested panels too) and its query variables, and checks that
// every panel and variable takes its data source from the variable.
func dashboardQueries(t *testing.T) []dashboardQuery {
	t.Helper()
	data, err := os.ReadFile(dashboardFile)
	if err != nil {
		t.Fatal(err)
	}
	type datasource struct {
		Type string `json:"type"`
		UID  string `json:"uid"`
	}
	type panel struct {
		Title      string      `json:"title"`
		Type       string      `json:"type"`
		Datasource *datasource `json:"datasource"`
		Targets    []struct {
			Expr         string      `json:"expr"`
			LegendFormat string      `json:"legendFormat"`
			Datasource   *datasource `json:"datasource"`
		} `json:"targets"`
		Panels []json.RawMessage `json:"panels"`
	}
	var d struct {
		Title      string            `json:"title"`
		UID        string            `json:"uid"`
		Panels     []json.RawMessage `json:"panels"`
		Templating struct {
			List []struct {
				Name       string          `json:"name"`
				Type       string          `json:"type"`
				Query      json.RawMessage `json:"query"`
				Datasource *datasource     `json:"datasource"`
			} `json:"list"`
		} `json:"templating"`
	}
	if err := json.Unmarshal(data, &d); err != nil {
		t.Fatalf("%s: %v", dashboardFile, err)
	}
	const dsVar = "${datasource}"
	fromVar := func(ds *datasource) bool { return ds != nil && ds.Type == "prometheus" && ds.UID == dsVar }
	var out []dashboardQuery
	var hasDSVar bool
	for _, v := range d.Templating.List {
		switch v.Type {
		case "datasource":
			var q string
			if err := json.Unmarshal(v.Query, &q); err != nil || q != "prometheus" || v.Name != "datasource" {
				t.Errorf("%s: the data source variable must be named datasource, of Prometheus sources (query %s)", dashboardFile, v.Query)
			}
			hasDSVar = true
		case "query":
			var q struct {
				Query string `json:"query"`
			}
			if err := json.Unmarshal(v.Query, &q); err != nil {
				if err := json.Unmarshal(v.Query, &q.Query); err != nil {
					t.Fatalf("%s: variable %s: query %s: %v", dashboardFile, v.Name, v.Query, err)
				}
			}
			if !fromVar(v.Datasource) {
				t.Errorf("%s: variable %s: data source %+v, want the %s variable", dashboardFile, v.Name, v.Datasource, dsVar)
			}
			out = append(out, dashboardQuery{where: "variable " + v.Name, expr: q.Query})
		}
	}
	if !hasDSVar {
		t.Errorf("%s: no data source variable", dashboardFile)
	}
	var walk func(raw []json.RawMessage)
	walk = func(raw []json.RawMessage) {
		for _, r := range raw {
			var p panel
			if err := json.Unmarshal(r, &p); err != nil {
				t.Fatalf("%s: %v", dashboardFile, err)
			}
			walk(p.Panels)
			if p.Type == "row" {
				continue
			}
			if len(p.Targets) == 0 {
				t.Errorf("%s: panel %q has no query", dashboardFile, p.Title)
			}
			if !fromVar(p.Datasource) {
				t.Errorf("%s: panel %q: data source %+v, want the %s variable", dashboardFile, p.Title, p.Datasource, dsVar)
			}
			for i, tg := range p.Targets {
				if !fromVar(tg.Datasource) {
					t.Errorf("%s: panel %q, query %d: data source %+v, want the %s variable", dashboardFile, p.Title, i, tg.Datasource, dsVar)
				}
				out = append(out, dashboardQuery{where: fmt.Sprintf("panel %q, query %d", p.Title, i), expr: tg.Expr, legend: tg.LegendFormat})
			}
		}
	}
	walk(d.Panels)
	return out
}

// ---- promtool -----------------------------------------------------------------

// promtool returns the promtool to run, or skips the test saying how to get
// one.
func promtool(t *testing.T) string {
	t.Helper()
	if p := os.Getenv(promtoolEnv); p != "" {
		return p
	}
	p, err := exec.LookPath("promtool")
	if err != nil {
		t.Skipf("promtool is not in PATH and %s is not set: the alert rules' promtool tests are skipped "+
			"(apt-get install prometheus installs it; README: Monitoring says how to get it without root)", promtoolEnv)
	}
	return p
}

// TestAlertRulesPromtool runs `promtool check rules` and `promtool test
// rules` on the examples, when promtool is at hand; and `promtool check
// rules` on the dashboard's queries, made recording rules (Grafana's
// variables replaced by values), so that Prometheus's own parser reads them.
func TestAlertRulesPromtool(t *testing.T) {
	bin := promtool(t)
	grafanaVars := strings.NewReplacer("$__rate_interval", "5m", "$instance", ".*", "$pool", ".*")
	var dash struct {
		Groups []map[string]any `yaml:"groups"`
	}
	var rules []map[string]string
	for i, q := range dashboardQueries(t) {
		if !strings.HasPrefix(q.where, "panel") {
			continue // label_values() is Grafana's, not PromQL
		}
		rules = append(rules, map[string]string{"record": fmt.Sprintf("dashboard_query_%d", i), "expr": grafanaVars.Replace(q.expr)})
	}
	dash.Groups = append(dash.Groups, map[string]any{"name": "dashboard", "rules": rules})
	data, err := yaml.Marshal(dash)
	if err != nil {
		t.Fatal(err)
	}
	dashRules, err := filepath.Abs(filepath.Join(t.TempDir(), "dashboard-queries.yml"))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(dashRules, data, 0o644); err != nil {
		t.Fatal(err)
	}
	for _, args := range [][]string{
		{"check", "rules", filepath.Base(alertsFile)},
		{"test", "rules", filepath.Base(alertsTestFile)},
		{"check", "rules", dashRules},
	} {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		cmd := exec.CommandContext(ctx, bin, args...)
		cmd.Dir = filepath.Dir(alertsFile)
		out, err := cmd.CombinedOutput()
		cancel()
		if err != nil {
			t.Errorf("promtool %s: %v\n%s", strings.Join(args, " "), err, out)
		} else {
			t.Logf("promtool %s:\n%s", strings.Join(args, " "), out)
		}
	}
}

// TestAlertRulesAreTested: every alert has a severity and annotations, and
// alerts_test.yml has a case where it fires and one where it does not (no
// promtool needed: promtool runs the cases).
func TestAlertRulesAreTested(t *testing.T) {
	var tests struct {
		RuleFiles          []string `yaml:"rule_files"`
		EvaluationInterval string   `yaml:"evaluation_interval"`
		Tests              []struct {
			Interval    string `yaml:"interval"`
			InputSeries []struct {
				Series string `yaml:"series"`
				Values string `yaml:"values"`
			} `yaml:"input_series"`
			AlertRuleTest []struct {
				EvalTime  string           `yaml:"eval_time"`
				AlertName string           `yaml:"alertname"`
				ExpAlerts []map[string]any `yaml:"exp_alerts"`
			} `yaml:"alert_rule_test"`
		} `yaml:"tests"`
	}
	readYAML(t, alertsTestFile, &tests)
	if !slices.Equal(tests.RuleFiles, []string{filepath.Base(alertsFile)}) {
		t.Errorf("%s tests rule files %q, want [%s]", alertsTestFile, tests.RuleFiles, filepath.Base(alertsFile))
	}
	fires, quiet := map[string]int{}, map[string]int{}
	for _, tc := range tests.Tests {
		for _, c := range tc.AlertRuleTest {
			if len(c.ExpAlerts) > 0 {
				fires[c.AlertName]++
			} else {
				quiet[c.AlertName]++
			}
		}
	}
	alerts := map[string]bool{}
	for _, r := range readAlertRules(t) {
		if r.Alert == "" {
			continue
		}
		alerts[r.Alert] = true
		if s := r.Labels["severity"]; !slices.Contains([]string{"critical", "warning", "info"}, s) {
			t.Errorf("alert %s: severity %q, want critical, warning or info", r.Alert, s)
		}
		for _, a := range []string{"summary", "description"} {
			if strings.TrimSpace(r.Annotations[a]) == "" {
				t.Errorf("alert %s has no %s annotation", r.Alert, a)
			}
		}
		if fires[r.Alert] == 0 {
			t.Errorf("alert %s: %s has no case where it fires", r.Alert, alertsTestFile)
		}
		if quiet[r.Alert] == 0 {
			t.Errorf("alert %s: %s has no case where it does not fire", r.Alert, alertsTestFile)
		}
	}
	for name := range fires {
		if !alerts[name] {
			t.Errorf("%s tests alert %s, which %s does not have", alertsTestFile, name, alertsFile)
		}
	}
}

// ---- against a live daemon -------------------------------------------------------

// monitoringTimeout guards every wait on the daemon: a failure guard, not
// a timing assertion.
const monitoringTimeout = 45 * time.Second

// liveDaemon runs `pool-managerd serve` on a simulated node of two GPUs,
// following a Git repository (so the config revision and the Git fetch
// series are there) with one pool on GPU 0, waits until the pool is Ready,
// injects a critical Xid on GPU 1 (so driver_events_total is there), and
// returns the series of its /metrics.
func liveDaemon(t *testing.T) liveMetrics {
	t.Helper()
	ctx := context.Background()
	env, err := testenv.New(ctx, "examples")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := env.Close(); err != nil {
			t.Error(err)
		}
	})
	gpu := sim.GPUSpec{Name: "NVIDIA Test GPU", MemoryBytes: 16 * sim.GiB}
	n := env.NewNode(t, "mon-node", []sim.GPUSpec{gpu, gpu})
	repo := gitrepo.NewIn(t, env.TempDir(t))
	repo.Write("nodes/"+n.Name+".cue", n.Decl().CUE())
	const pool = "mon"
	repo.Write("pools/"+pool+".cue", testenv.Pool{
		ID: pool, Node: n.Name, Model: n.ModelFile("mon.gguf"), Devices: []int{0}, VRAM: "4Gi",
		Env: map[string]string{"FAKE_ENGINE_LOAD_DELAY": "50ms"},
	}.CUE())
	repo.Commit()
	repo.Push()

	stderr := &syncbuf.Buffer{}
	cmd := exec.Command(env.Bin.PoolManagerd, "serve", "--git", repo.Path(), "--git-interval", "1h",
		"--gpus", "sim:"+n.Sim, "--node", n.Name, "--state-dir", n.State, "--listen", "127.0.0.1:0",
		"--llama-server", env.Bin.FakeEngine, "--resync", "1h", "--stop-engines-on-exit")
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "POOL_MANAGERD_") && !strings.HasPrefix(kv, "FAKE_ENGINE_") {
			cmd.Env = append(cmd.Env, kv)
		}
	}
	cmd.Stdout, cmd.Stderr = stderr, stderr
	cmd.WaitDelay = 2 * time.Second
	if err := cmd.Start(); err != nil {
		t.Fatalf("start pool-managerd serve: %v", err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = cmd.Wait()
	}()
	// Registered after NewNode's leak check, so it runs before it: the
	// daemon stops its engines as it exits.
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-done:
		case <-time.After(monitoringTimeout):
			t.Errorf("pool-managerd serve did not exit %v after SIGTERM", monitoringTimeout)
			_ = cmd.Process.Kill()
			<-done
		}
		if t.Failed() {
			t.Logf("pool-managerd serve's output:\n%s", stderr.String())
		}
	})
	exited := func() bool {
		select {
		case <-done:
			return true
		default:
			return false
		}
	}

	var addr string
	waitUntil(t, "the daemon's "+api.AddrFileName, exited, func() bool {
		a, err := api.ReadAddr(n.State)
		addr = a
		return err == nil
	})
	var fams map[string]*dto.MetricFamily
	scrape := func() bool {
		f, err := scrapeMetrics(ctx, addr)
		if err != nil {
			t.Logf("scrape: %v", err)
			return false
		}
		fams = f
		return true
	}
	waitUntil(t, "pool "+pool+" Ready on /metrics", exited, func() bool {
		return scrape() && gaugeIs(fams, "pool_managerd_pool_ready", "pool", pool, 1) &&
			fams["pool_managerd_git_last_success_timestamp_seconds"] != nil
	})
	// The driver's event stream runs once the pool is Ready: a critical Xid
	// on GPU 1, where no pool runs.
	if err := sim.InjectXid(n.Sim, 1, 48); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, "driver_events_total of the Xid on /metrics", exited, func() bool {
		return scrape() && fams["pool_managerd_driver_events_total"] != nil
	})
	return liveOf(fams)
}

// waitUntil polls cond until it holds, failing when the daemon exited or
// monitoringTimeout passed.
func waitUntil(t *testing.T, what string, exited, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(monitoringTimeout)
	for !cond() {
		if exited() {
			t.Fatalf("pool-managerd serve ended while waiting for %s", what)
		}
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", monitoringTimeout, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func scrapeMetrics(ctx context.Context, addr string) (map[string]*dto.MetricFamily, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+"/metrics", nil)
	if err != nil {
		return nil, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET /metrics: %s", resp.Status)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(resp.Body)
	if err != nil {
		return nil, fmt.Errorf("GET /metrics: %w", err)
	}
	return fams, nil
}

// gaugeIs reports whether the gauge family has a series with label=value
// whose value is want.
func gaugeIs(fams map[string]*dto.MetricFamily, name, label, value string, want float64) bool {
	f := fams[name]
	if f == nil {
		return false
	}
	for _, m := range f.GetMetric() {
		for _, lp := range m.GetLabel() {
			if lp.GetName() == label && lp.GetValue() == value && m.GetGauge().GetValue() == want {
				return true
			}
		}
	}
	return false
}

// liveOf turns the families into series names with their labels and
// values; a histogram gives its _bucket (with le), _sum and _count.
func liveOf(fams map[string]*dto.MetricFamily) liveMetrics {
	live := liveMetrics{}
	add := func(name string, m *dto.Metric, extra ...string) {
		labels := live[name]
		if labels == nil {
			labels = map[string]map[string]bool{}
			live[name] = labels
		}
		set := func(l, v string) {
			if labels[l] == nil {
				labels[l] = map[string]bool{}
			}
			labels[l][v] = true
		}
		for _, lp := range m.GetLabel() {
			set(lp.GetName(), lp.GetValue())
		}
		for _, l := range extra {
			labels[l] = map[string]bool{}
		}
	}
	for name, f := range fams {
		for _, m := range f.GetMetric() {
			switch f.GetType() {
			case dto.MetricType_HISTOGRAM:
				add(name+"_bucket", m, "le")
				add(name+"_sum", m)
				add(name+"_count", m)
			case dto.MetricType_SUMMARY:
				add(name, m, "quantile")
				add(name+"_sum", m)
				add(name+"_count", m)
			default:
				add(name, m)
			}
		}
	}
	return live
}

// familyOf is the family of a series name: a histogram's _bucket, _sum and
// _count belong to it.
func familyOf(live liveMetrics, name string) string {
	for _, suffix := range []string{"_bucket", "_sum", "_count"} {
		base, ok := strings.CutSuffix(name, suffix)
		if ok && live[base+"_bucket"] != nil {
			return base
		}
	}
	return name
}

// TestMonitoringAgainstLiveDaemon reads every query of the alert rules and
// the dashboard and checks it against a live daemon's /metrics: every
// pool_managerd_* metric it names is exported, with every label it matches
// on, groups by or names in a legend or annotation, and the values its =
// matchers want; every alert that names a pool or GPU says which in its
// summary, and names the node. And the dashboard shows every metric the
// daemon exports (dashboardLeavesOut aside).
func TestMonitoringAgainstLiveDaemon(t *testing.T) {
	// The daemon's metrics the dashboard does not show, and why.
	dashboardLeavesOut := map[string]string{
		"pool_managerd_gpu_memory_free_bytes": "total minus used, which the dashboard shows",
	}
	rules := readAlertRules(t)
	queries := dashboardQueries(t)
	live := liveDaemon(t)

	for _, r := range rules {
		q, err := parsePromQL(r.Expr)
		if err != nil {
			t.Errorf("%s: rule %s: %v", alertsFile, r.Alert, err)
			continue
		}
		var templated []string
		for _, a := range r.Annotations {
			templated = append(templated, templateLabels(annotationLabel, a)...)
		}
		for _, p := range checkQuery(q, live, templated) {
			t.Errorf("%s: rule %s: %s", alertsFile, r.Alert, p)
		}
		summary := r.Annotations["summary"]
		for _, l := range []string{"pool", "gpu"} {
			for _, s := range q.selectors {
				if live[s.name][l] != nil && !strings.Contains(summary, "$labels."+l) {
					t.Errorf("%s: rule %s: its series have a %s label, which the summary %q does not name", alertsFile, r.Alert, l, summary)
				}
			}
		}
		if !strings.HasPrefix(strings.TrimSpace(r.Expr), "absent(") && !strings.Contains(summary, "$labels.instance") {
			t.Errorf("%s: rule %s: the summary %q does not name the node ($labels.instance)", alertsFile, r.Alert, summary)
		}
	}

	shown := map[string]bool{}
	for _, dq := range queries {
		q, err := parsePromQL(dq.expr)
		if err != nil {
			t.Errorf("%s: %s: %v", dashboardFile, dq.where, err)
			continue
		}
		for _, p := range checkQuery(q, live, templateLabels(legendLabel, dq.legend)) {
			t.Errorf("%s: %s: %s", dashboardFile, dq.where, p)
		}
		for _, name := range q.names() {
			shown[familyOf(live, name)] = true
		}
	}
	for name := range live {
		family := familyOf(live, name)
		if !strings.HasPrefix(family, "pool_managerd_") || shown[family] {
			continue
		}
		if _, ok := dashboardLeavesOut[family]; !ok {
			t.Errorf("%s shows nothing of %s, which the daemon exports (or add it to dashboardLeavesOut, saying why)", dashboardFile, family)
		}
	}
}
