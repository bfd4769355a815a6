package examples_test

import (
	"fmt"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"testing"
	"unicode"

	"github.com/google/go-cmp/cmp"
)

// A small reader of the PromQL in monitoring/: enough to find the metric
// names, label matchers and grouping labels of a query, so that a test can
// check them against a live daemon's /metrics without the Prometheus server
// module (some 250 modules) that its real parser lives in. It does not
// check the syntax: `promtool check rules` does, where promtool is found.

// promMatcher is one label matcher of a selector: pool="coder".
type promMatcher struct {
	label, op, value string
}

// promSelector is one vector selector: a metric name and its matchers.
type promSelector struct {
	name     string
	matchers []promMatcher
}

// promQuery is what the tests read of one query.
type promQuery struct {
	selectors []promSelector
	// grouping are the labels named by by, without, on, ignoring,
	// group_left and group_right, and label_values's label.
	grouping []string
}

// names are the metric names the query selects, sorted, each once.
func (q promQuery) names() []string {
	var out []string
	for _, s := range q.selectors {
		out = append(out, s.name)
	}
	sort.Strings(out)
	return slices.Compact(out)
}

// promWords are identifiers that are not metric names: operators, the
// aggregations (which may be followed by "by (...)" rather than "("), and
// numbers. Any other identifier followed by "(" is a function.
var promWords = map[string]bool{
	"and": true, "or": true, "unless": true, "bool": true, "offset": true, "atan2": true,
	"inf": true, "nan": true, "start": true, "end": true,
	"sum": true, "avg": true, "count": true, "min": true, "max": true, "group": true,
	"stddev": true, "stdvar": true, "topk": true, "bottomk": true, "quantile": true,
	"count_values": true, "limitk": true, "limit_ratio": true,
}

// promGrouping are the keywords followed by a list of labels.
var promGrouping = map[string]bool{
	"by": true, "without": true, "on": true, "ignoring": true, "group_left": true, "group_right": true,
}

type promToken struct {
	kind byte // 'i' identifier, 's' string, 'n' number or duration, 'v' Grafana variable, 'p' punctuation
	text string
}

// lexPromQL splits a query into tokens; comments are dropped.
func lexPromQL(q string) ([]promToken, error) {
	var out []promToken
	isIdent := func(r byte, first bool) bool {
		return r == '_' || r == ':' || r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || !first && r >= '0' && r <= '9'
	}
	for i := 0; i < len(q); {
		c := q[i]
		switch {
		case unicode.IsSpace(rune(c)):
			i++
		case c == '#':
			for i < len(q) && q[i] != '\n' {
				i++
			}
		case isIdent(c, true):
			j := i + 1
			for j < len(q) && isIdent(q[j], false) {
				j++
			}
			out = append(out, promToken{'i', q[i:j]})
			i = j
		case c >= '0' && c <= '9' || c == '.' && i+1 < len(q) && q[i+1] >= '0' && q[i+1] <= '9':
			j := i + 1
			for j < len(q) && (isIdent(q[j], false) || q[j] == '.') {
				j++
			}
			out = append(out, promToken{'n', q[i:j]})
			i = j
		case c == '"' || c == '\'' || c == '`':
			j := i + 1
			for j < len(q) && q[j] != c {
				if q[j] == '\\' && c != '`' {
					j++
				}
				j++
			}
			if j >= len(q) {
				return nil, fmt.Errorf("unterminated string at %d in %q", i, q)
			}
			raw := q[i : j+1]
			if c == '\'' {
				raw = `"` + strings.ReplaceAll(strings.ReplaceAll(raw[1:len(raw)-1], `\'`, `'`), `"`, `\"`) + `"`
			}
			s, err := strconv.Unquote(raw)
			if err != nil {
				return nil, fmt.Errorf("string %s in %q: %w", q[i:j+1], q, err)
			}
			out = append(out, promToken{'s', s})
			i = j + 1
		case c == '$':
			j := i + 1
			if j < len(q) && q[j] == '{' {
				for j < len(q) && q[j] != '}' {
					j++
				}
				j++
			} else {
				for j < len(q) && isIdent(q[j], false) {
					j++
				}
			}
			out = append(out, promToken{'v', q[i:min(j, len(q))]})
			i = j
		default:
			if i+1 < len(q) && strings.Contains("=~ != !~ == >= <=", q[i:i+2]) {
				out = append(out, promToken{'p', q[i : i+2]})
				i += 2
				continue
			}
			out = append(out, promToken{'p', string(c)})
			i++
		}
	}
	return out, nil
}

// labelValuesCall is Grafana's label_values(selector, label) (or
// label_values(label)) of a template variable.
var labelValuesCall = regexp.MustCompile(`^\s*label_values\(\s*(?:(.*),\s*)?([a-zA-Z_][a-zA-Z0-9_]*)\s*\)\s*$`)

// parsePromQL reads a query (or a Grafana label_values call).
func parsePromQL(q string) (promQuery, error) {
	var out promQuery
	if m := labelValuesCall.FindStringSubmatch(q); m != nil {
		q = m[1]
		out.grouping = append(out.grouping, m[2])
	}
	toks, err := lexPromQL(q)
	if err != nil {
		return out, err
	}
	at := func(i int, kind byte, text string) bool {
		return i < len(toks) && toks[i].kind == kind && (text == "" || toks[i].text == text)
	}
	for i := 0; i < len(toks); i++ {
		t := toks[i]
		switch {
		case t.kind == 'i' && promGrouping[t.text]:
			if !at(i+1, 'p', "(") {
				continue // group_left without labels
			}
			i += 2
			for ; !at(i, 'p', ")"); i++ {
				switch {
				case at(i, 'i', ""):
					out.grouping = append(out.grouping, toks[i].text)
				case at(i, 'p', ","):
				default:
					return out, fmt.Errorf("%s (...) holds %q in %q", t.text, tokText(toks, i), q)
				}
			}
		case t.kind == 'i' && at(i+1, 'p', "("):
			// a function or an aggregation: its arguments follow
		case t.kind == 'i' && promWords[strings.ToLower(t.text)]:
		case t.kind == 'i' || t.kind == 'p' && t.text == "{":
			sel := promSelector{}
			if t.kind == 'i' {
				sel.name = t.text
				i++
			}
			if at(i, 'p', "{") {
				for i++; !at(i, 'p', "}"); i++ {
					if at(i, 'p', ",") {
						continue
					}
					if !at(i, 'i', "") || !at(i+1, 'p', "") || !at(i+2, 's', "") {
						return out, fmt.Errorf("a label matcher at %q in %q", tokText(toks, i), q)
					}
					m := promMatcher{label: toks[i].text, op: toks[i+1].text, value: toks[i+2].text}
					if !slices.Contains([]string{"=", "!=", "=~", "!~"}, m.op) {
						return out, fmt.Errorf("matcher %s%s%q: no such operator, in %q", m.label, m.op, m.value, q)
					}
					i += 2
					if m.label == "__name__" && m.op == "=" && sel.name == "" {
						sel.name = m.value
						continue
					}
					sel.matchers = append(sel.matchers, m)
				}
			} else {
				i-- // the token after the name is read by the loop
			}
			if sel.name == "" {
				return out, fmt.Errorf("a selector without a metric name in %q", q)
			}
			out.selectors = append(out.selectors, sel)
		case t.kind == 'p' && t.text == "[":
			for i < len(toks) && !at(i, 'p', "]") {
				i++
			}
		}
	}
	return out, nil
}

func tokText(toks []promToken, i int) string {
	if i >= len(toks) {
		return "the end"
	}
	return toks[i].text
}

// templateLabels are the labels a Go template of an alert annotation
// ({{ $labels.pool }}) or a Grafana legend ({{pool}}) names.
var (
	annotationLabel = regexp.MustCompile(`\$labels\.([a-zA-Z_][a-zA-Z0-9_]*)`)
	legendLabel     = regexp.MustCompile(`\{\{\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*\}\}`)
)

func templateLabels(re *regexp.Regexp, s string) []string {
	var out []string
	for _, m := range re.FindAllStringSubmatch(s, -1) {
		out = append(out, m[1])
	}
	return out
}

// liveMetrics are the series names a daemon exports (a histogram as its
// _bucket, _sum and _count), each with its label names and the values seen
// of each.
type liveMetrics map[string]map[string]map[string]bool

// targetLabels are the labels Prometheus adds to every series it scrapes.
var targetLabels = map[string]bool{"job": true, "instance": true}

// checkQuery returns the problems of a query against the live metrics:
// names that are neither the daemon's (pool_managerd_*) nor Prometheus's
// own up; labels that the metric does not have; values of an = matcher that
// no series of the metric has; grouping labels that not every metric of the
// query has; and template labels (legend or annotation) that no metric of
// the query has.
func checkQuery(q promQuery, live liveMetrics, templated []string) []string {
	var problems []string
	labelsOf := func(name string) map[string]map[string]bool {
		if name == "up" {
			return map[string]map[string]bool{}
		}
		return live[name]
	}
	if len(q.selectors) == 0 {
		problems = append(problems, "selects no metric")
	}
	have := map[string]bool{}
	for _, s := range q.selectors {
		labels := labelsOf(s.name)
		if labels == nil {
			if strings.HasPrefix(s.name, "pool_managerd_") {
				problems = append(problems, fmt.Sprintf("%s: the daemon does not export it", s.name))
			} else {
				problems = append(problems, fmt.Sprintf("%s: not a metric of pool-managerd (pool_managerd_*) nor up", s.name))
			}
			continue
		}
		for l := range labels {
			have[l] = true
		}
		for _, m := range s.matchers {
			if targetLabels[m.label] {
				continue
			}
			values, ok := labels[m.label]
			switch {
			case !ok:
				problems = append(problems, fmt.Sprintf("%s has no label %q", s.name, m.label))
			case m.op == "=" && !strings.Contains(m.value, "$") && !values[m.value]:
				problems = append(problems, fmt.Sprintf("%s{%s=%q}: no series has that value (it has %s)", s.name, m.label, m.value, strings.Join(sortedKeys(values), ", ")))
			}
		}
	}
	for _, l := range q.grouping {
		if targetLabels[l] {
			continue
		}
		for _, s := range q.selectors {
			if labels := labelsOf(s.name); labels != nil && labels[l] == nil {
				problems = append(problems, fmt.Sprintf("groups by %q, which %s does not have", l, s.name))
			}
		}
	}
	for _, l := range templated {
		if !targetLabels[l] && !have[l] {
			problems = append(problems, fmt.Sprintf("names label %q, which none of %s has", l, strings.Join(q.names(), ", ")))
		}
	}
	return problems
}

func sortedKeys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// ---- the reader's own tests --------------------------------------------------

func TestParsePromQL(t *testing.T) {
	tests := []struct {
		q        string
		want     []promSelector
		grouping []string
	}{
		{q: `up{job="pool-managerd"} == 0`, want: []promSelector{{name: "up", matchers: []promMatcher{{"job", "=", "pool-managerd"}}}}},
		{q: `absent(up{job='a\'b'})`, want: []promSelector{{name: "up", matchers: []promMatcher{{"job", "=", "a'b"}}}}},
		{
			q: "pool_managerd_pool_ready == 0\nunless on (job, instance, pool)\npool_managerd_pool_phase{phase=\"Stopped\"} == 1",
			want: []promSelector{
				{name: "pool_managerd_pool_ready"},
				{name: "pool_managerd_pool_phase", matchers: []promMatcher{{"phase", "=", "Stopped"}}},
			},
			grouping: []string{"job", "instance", "pool"},
		},
		{
			q:        `histogram_quantile(0.95, sum by (instance, le) (rate(x_bucket{instance=~"$instance", pool!~"a|b"}[$__rate_interval])))`,
			want:     []promSelector{{name: "x_bucket", matchers: []promMatcher{{"instance", "=~", "$instance"}, {"pool", "!~", "a|b"}}}},
			grouping: []string{"instance", "le"},
		},
		{
			q:        `sum(rate(a_sum[5m] offset 1h)) by (pool) / ignoring(reason) group_left b or {__name__="c"} or vector(0) # c{d="e"}`,
			want:     []promSelector{{name: "a_sum"}, {name: "b"}, {name: "c"}},
			grouping: []string{"pool", "reason"},
		},
		{q: `time() - x_seconds`, want: []promSelector{{name: "x_seconds"}}},
		{q: `{__name__="x", a="1"}`, want: []promSelector{{name: "x", matchers: []promMatcher{{"a", "=", "1"}}}}},
		{
			q:        `label_values(x{instance=~"$instance"}, pool)`,
			want:     []promSelector{{name: "x", matchers: []promMatcher{{"instance", "=~", "$instance"}}}},
			grouping: []string{"pool"},
		},
	}
	for _, tc := range tests {
		got, err := parsePromQL(tc.q)
		if err != nil {
			t.Errorf("parsePromQL(%q): %v", tc.q, err)
			continue
		}
		if diff := cmp.Diff(tc.want, got.selectors, cmp.AllowUnexported(promSelector{}, promMatcher{})); diff != "" {
			t.Errorf("parsePromQL(%q) selectors (-want +got):\n%s", tc.q, diff)
		}
		if !slices.Equal(got.grouping, tc.grouping) {
			t.Errorf("parsePromQL(%q) grouping %q, want %q", tc.q, got.grouping, tc.grouping)
		}
	}
	for _, bad := range []string{`x{a="b}`, `x{a}`, `x{a<"b"}`, `{a="b"}`, `sum by (a, "b") (x)`} {
		if q, err := parsePromQL(bad); err == nil {
			t.Errorf("parsePromQL(%q) = %+v, want an error", bad, q)
		}
	}
}

// TestCheckQuery: each kind of mistake in a query is found, and a right
// query passes.
func TestCheckQuery(t *testing.T) {
	live := liveMetrics{
		"pool_managerd_pool_phase": {"pool": {"a": true}, "phase": {"Ready": true, "Stopped": true}},
		"pool_managerd_gpu_used":   {"gpu": {"0": true}},
		"pool_managerd_x_bucket":   {"pool": {"a": true}, "le": {}},
	}
	tests := []struct {
		q, legend string
		want      string // in the one problem; "" for none
	}{
		{q: `pool_managerd_pool_phase{phase="Ready", pool=~"$pool", instance="n"} == 1`, legend: "{{instance}} {{pool}} {{phase}}"},
		{q: `sum by (instance, le) (rate(pool_managerd_x_bucket[5m]))`},
		{q: `up{job="pool-managerd"}`, legend: "{{job}}"},
		{q: `pool_managerd_pool_phases`, want: "the daemon does not export it"},
		{q: `node_load1`, want: "not a metric of pool-managerd"},
		{q: `pool_managerd_pool_phase{phase="stopped"}`, want: `no series has that value`},
		{q: `pool_managerd_pool_phase{node="a"}`, want: `has no label "node"`},
		{q: `up{pool="a"}`, want: `up has no label "pool"`},
		{q: `sum by (pool) (pool_managerd_gpu_used)`, want: `groups by "pool"`},
		{q: `pool_managerd_gpu_used`, legend: "GPU {{index}}", want: `names label "index"`},
		{q: `vector(1)`, want: "selects no metric"},
	}
	for _, tc := range tests {
		q, err := parsePromQL(tc.q)
		if err != nil {
			t.Fatalf("parsePromQL(%q): %v", tc.q, err)
		}
		problems := checkQuery(q, live, templateLabels(legendLabel, tc.legend))
		switch {
		case tc.want == "" && len(problems) != 0:
			t.Errorf("checkQuery(%q) = %q, want no problem", tc.q, problems)
		case tc.want != "" && (len(problems) != 1 || !strings.Contains(problems[0], tc.want)):
			t.Errorf("checkQuery(%q) = %q, want one problem with %q", tc.q, problems, tc.want)
		}
	}
}
