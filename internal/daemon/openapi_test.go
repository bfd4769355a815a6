//go:build linux

package daemon_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/poolmanagerd/pool-managerd/internal/api"
	"github.com/poolmanagerd/pool-managerd/reconcile"
	"github.com/poolmanagerd/pool-managerd/testkit/openapicheck"
)

// specPath is the API's OpenAPI document, which internal/api's tests hold
// to the handler against a fake Source; TestOpenAPIAgainstTheDaemon holds
// it to the real daemon's responses with the same validator.
const specPath = "../../docs/openapi.yaml"

const apiToken = "daemon-test-token"

// apiServer is api.NewHandler on the daemon, served on a loopback listener.
type apiServer struct {
	url   string
	mux   *http.ServeMux
	token string
}

// apiChecker sends requests and checks every response against the spec,
// recording which documented responses were seen.
type apiChecker struct {
	t    *testing.T
	spec *openapicheck.Spec
	ops  map[string]openapicheck.Object
	seen map[string]bool
}

// serve serves the daemon's API as `serve` does: api.Listen on 127.0.0.1:0
// (writing the address into addrDir), api.Serve until the test ends.
func (c *apiChecker) serve(r *running, metrics http.Handler, token, addrDir string) *apiServer {
	t := c.t
	t.Helper()
	h := api.NewHandler(r.d, metrics, token)
	ctx, cancel := context.WithCancel(context.Background())
	ln, err := api.Listen(ctx, "127.0.0.1:0", addrDir)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- api.Serve(ctx, ln, h) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("api.Serve: %v", err)
		}
	})
	addr, err := api.ReadAddr(addrDir)
	if err != nil {
		t.Fatal(err)
	}
	return &apiServer{url: "http://" + addr, mux: h.(*http.ServeMux), token: token}
}

// reqOpt changes a request.
type reqOpt func(*http.Request)

func noAuth(r *http.Request) { r.Header.Del("Authorization") }

func withHost(host string) reqOpt { return func(r *http.Request) { r.Host = host } }

func withHeader(k, v string) reqOpt { return func(r *http.Request) { r.Header.Set(k, v) } }

// answer is a checked response.
type answer struct {
	status int
	header http.Header
	body   []byte
}

// do sends a request and checks its response against the spec: the route
// it matched is documented, and so are its status, media type, headers and
// body. A request body that got a 200 must match the documented request
// schema too.
func (c *apiChecker) do(s *apiServer, method, path, body string, opts ...reqOpt) answer {
	t := c.t
	t.Helper()
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req, err := http.NewRequestWithContext(t.Context(), method, s.url+path, rd)
	if err != nil {
		t.Fatal(err)
	}
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	if s.token != "" {
		req.Header.Set("Authorization", "Bearer "+s.token)
	}
	for _, o := range opts {
		o(req)
	}
	_, pattern := s.mux.Handler(req.Clone(t.Context()))
	if pattern == "" {
		t.Fatalf("%s %s matches no route", method, path)
	}
	client := &http.Client{Timeout: waitTimeout}
	resp, err := client.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	key, errs := c.spec.CheckResponse(t, pattern, resp, data)
	c.seen[key] = true
	for _, e := range errs {
		t.Errorf("%s %s: %s\nbody: %s", method, path, e, data)
	}
	if resp.StatusCode == http.StatusOK && body != "" {
		var v any
		if err := json.Unmarshal([]byte(body), &v); err == nil {
			schema := c.spec.Get(t, c.ops[pattern], "requestBody", "content", "application/json", "schema")
			for _, e := range c.spec.Validate(t, "request", schema, v) {
				t.Errorf("%s %s: a request the daemon accepted does not match the spec: %s", method, path, e)
			}
		}
	}
	return answer{status: resp.StatusCode, header: resp.Header, body: data}
}

// want checks a response's status, and decodes a JSON body into out.
func (a answer) want(t *testing.T, what string, status int, out any) {
	t.Helper()
	if a.status != status {
		t.Fatalf("%s: status %d, want %d; body: %s", what, a.status, status, a.body)
	}
	if out != nil {
		if err := json.Unmarshal(a.body, out); err != nil {
			t.Fatalf("%s: %v: %s", what, err, a.body)
		}
	}
}

// wantError checks an Error response.
func (a answer) wantError(t *testing.T, what string, status int, code string) {
	t.Helper()
	var e api.Error
	a.want(t, what, status, &e)
	if e.Error != code || e.Message == "" {
		t.Errorf("%s: error %+v, want code %s with a message", what, e, code)
	}
}

func byID(pools []api.Pool) map[string]api.Pool {
	m := map[string]api.Pool{}
	for _, p := range pools {
		m[p.Pool] = p
	}
	return m
}

// TestOpenAPIAgainstTheDaemon runs the real daemon on a simulated node with
// the stand-in engine, serves its API on loopback, drives it through the
// states worth showing, and checks every response of every route against
// docs/openapi.yaml with the validator the handler's tests use:
//
//   - before any config loaded: /readyz 503, /v1/config invalid with its
//     diagnostics, no pools, an unknown pool 404;
//   - pools Ready (one over two GPUs), one preloading, one failed and
//     waiting for its backoff, one with its circuit breaker open;
//   - the operator actions (reset one, reset, stop) and their 400, 401,
//     403, 404 and 413 answers; /metrics 404 where none are served;
//   - a config that no longer loads, with the last good one in force;
//   - stop of all; then, Run returned, the actions' 500.
//
// Every documented response must be produced.
func TestOpenAPIAgainstTheDaemon(t *testing.T) {
	t.Parallel()
	spec := openapicheck.Load(t, specPath)
	c := &apiChecker{t: t, spec: spec, ops: spec.Operations(t), seen: map[string]bool{}}
	n := newNode(t, 2)
	pools := []pool{
		{id: "ready"},
		{id: "split", devices: []int{0, 1}, split: "[0.5, 0.5]", vram: "2Gi"},
		{id: "loading", devices: []int{1}, env: longLoad},
		{id: "failing", env: failLoad, restart: `initialBackoff: "10m", maxBackoff: "10m", jitter: 0`},
		{id: "broken", devices: []int{1}, env: failLoad, restart: fastRestart + `, breaker: {failures: 1}`},
	}
	n.writeConfig(pools...)
	n.writeFile("broken.cue", "package poolmanagerd\n\npools: extra: {\n")
	r := n.start()
	srv := c.serve(r, promhttp.HandlerFor(r.reg, promhttp.HandlerOpts{Registry: r.reg}), apiToken, n.state)
	// Without a token (loopback only) and without metrics.
	bare := c.serve(r, nil, "", t.TempDir())

	// No config has loaded: not ready, the diagnostics shown, no pool known.
	var text string
	a := c.do(srv, "GET", "/healthz", "")
	a.want(t, "healthz", 200, nil)
	c.do(srv, "GET", "/readyz", "").wantError(t, "readyz before any config loaded", 503, api.CodeNotReady)
	c.do(srv, "GET", "/readyz", "", noAuth).wantError(t, "readyz without a token", 503, api.CodeNotReady)
	var cfg api.Config
	r.waitFor("GET /v1/config to show a failed load", func() bool {
		c.do(srv, "GET", "/v1/config", "").want(t, "config", 200, &cfg)
		return !cfg.LastLoad.IsZero()
	})
	if cfg.Valid || len(cfg.Errors) == 0 || filepath.Base(cfg.Errors[0].Pos.File) != "broken.cue" || cfg.Errors[0].Pos.Line == 0 {
		t.Errorf("config before any good load: %+v, want invalid, pointing at a line of broken.cue", cfg)
	}
	var list []api.Pool
	c.do(srv, "GET", "/v1/pools", "").want(t, "pools", 200, &list)
	if len(list) != 0 {
		t.Errorf("pools before any config loaded: %v, want none", poolIDs(list))
	}
	c.do(srv, "GET", "/v1/pools/ready", "").wantError(t, "a pool before any config loaded", 404, api.CodeUnknownPool)
	a = c.do(srv, "GET", "/metrics", "")
	a.want(t, "metrics", 200, nil)
	if text = string(a.body); !strings.Contains(text, "pool_managerd_config_valid 0\n") {
		t.Errorf("metrics before any config loaded do not say config_valid 0:\n%s", text)
	}

	// The config loads: every kind of pool.
	n.removeFile("broken.cue")
	r.waitFor("GET /readyz 200", func() bool { return c.do(srv, "GET", "/readyz", "", noAuth).status == 200 })
	r.waitReady("ready", "split")
	r.waitPreloading("loading")
	r.waitPool("failing", "failed, waiting", func(p api.Pool) bool { return p.LastError != nil && !p.NextRetry.IsZero() })
	r.waitPool("broken", "breaker open", func(p api.Pool) bool { return p.Breaker == api.BreakerOpen && p.Phase == reconcile.Failed })
	r.settle()

	c.do(srv, "GET", "/v1/pools", "").want(t, "pools", 200, &list)
	got := byID(list)
	if ids := poolIDs(list); !slices.Equal(ids, []string{"broken", "failing", "loading", "ready", "split"}) {
		t.Errorf("GET /v1/pools lists %v", ids)
	}
	for _, id := range poolIDs(list) {
		var p api.Pool
		c.do(srv, "GET", "/v1/pools/"+id, "").want(t, "pool "+id, 200, &p)
	}
	if p := got["split"]; len(p.GPUs) != 2 || p.GPUs[0].UUID == "" || p.Endpoint == "" {
		t.Errorf("pool split: %+v, want memory on 2 GPUs with UUIDs, and an endpoint", p)
	}
	if p := got["loading"]; p.Phase != reconcile.Preloading || p.Preload == nil || p.Preload.State != api.PreloadLoading {
		t.Errorf("pool loading: %+v, want Preloading", p)
	}
	if p := got["failing"]; p.LastError == nil || p.NextRetry.IsZero() || p.Preload == nil || p.Preload.State != api.PreloadFailed {
		t.Errorf("pool failing: %+v, want a last error, a next retry, a failed preload", p)
	}
	if p := got["broken"]; p.Breaker != api.BreakerOpen || p.BreakerRetryAt.IsZero() || p.Phase != reconcile.Failed {
		t.Errorf("pool broken: %+v, want Failed with its breaker open", p)
	}
	c.do(srv, "GET", "/v1/pools/nope", "").wantError(t, "an unknown pool", 404, api.CodeUnknownPool)
	// Each pool's probe, without a token: 200 exactly for the Ready ones.
	for _, tc := range []struct {
		id     string
		status int
		phase  reconcile.Phase
	}{
		{"ready", 200, reconcile.Ready},
		{"split", 200, reconcile.Ready},
		{"loading", 503, reconcile.Preloading},
		{"failing", 503, got["failing"].Phase},
		{"broken", 503, reconcile.Failed},
	} {
		var pr api.PoolReadiness
		c.do(srv, "GET", "/v1/pools/"+tc.id+"/ready", "", noAuth).want(t, "probe of pool "+tc.id, tc.status, &pr)
		if pr.Pool != tc.id || pr.Ready != (tc.status == 200) || pr.Phase != tc.phase {
			t.Errorf("probe of pool %s: %+v, want ready %v in phase %s", tc.id, pr, tc.status == 200, tc.phase)
		}
	}
	c.do(srv, "GET", "/v1/pools/nope/ready", "", noAuth).wantError(t, "the probe of an unknown pool", 404, api.CodeUnknownPool)
	c.do(srv, "GET", "/v1/config", "").want(t, "config", 200, &cfg)
	if !cfg.Valid || len(cfg.Errors) != 0 || len(cfg.Pools) != 5 || cfg.LastGoodLoad.IsZero() {
		t.Errorf("config: %+v, want valid with 5 pools", cfg)
	}
	a = c.do(srv, "GET", "/metrics", "")
	a.want(t, "metrics", 200, nil)
	for _, want := range []string{"pool_managerd_config_valid 1\n", `pool_managerd_pool_ready{pool="ready"} 1`, `pool_managerd_circuit_state{pool="broken"} 1`} {
		if !strings.Contains(string(a.body), want) {
			t.Errorf("metrics do not have %s", want)
		}
	}
	c.do(srv, "GET", "/metrics", "", withHeader("Accept", "application/openmetrics-text; version=1.0.0")).want(t, "metrics (OpenMetrics asked)", 200, nil)

	// The operator actions.
	var acted []api.Pool
	c.do(srv, "POST", "/v1/pools/failing/reset", "").want(t, "reset failing", 200, &acted)
	if ids := poolIDs(acted); !slices.Equal(ids, []string{"failing"}) {
		t.Errorf("reset failing acted on %v", ids)
	}
	c.do(srv, "POST", "/v1/reset", `{"pools": ["broken"]}`).want(t, "reset broken", 200, &acted)
	if len(acted) != 1 || acted[0].Breaker != api.BreakerClosed {
		t.Errorf("reset broken answered %+v, want the pool with its breaker closed", acted)
	}
	c.do(srv, "POST", "/v1/stop", `{"pools": ["ready"]}`).want(t, "stop ready", 200, &acted)
	if len(acted) != 1 || acted[0].Phase != reconcile.Stopped || acted[0].PID != 0 || acted[0].Endpoint != "" {
		t.Errorf("stop ready answered %+v, want the pool Stopped with no engine", acted)
	}
	var p api.Pool
	c.do(srv, "GET", "/v1/pools/ready", "").want(t, "pool ready", 200, &p)
	if p.Phase != reconcile.Stopped {
		t.Errorf("pool ready after its stop: %+v", p)
	}

	for _, tc := range []struct {
		name, method, path, body string
		opts                     []reqOpt
		status                   int
		code                     string
	}{
		{"reset an unknown pool", "POST", "/v1/pools/nope/reset", "", nil, 404, api.CodeUnknownPool},
		{"reset unknown pools", "POST", "/v1/reset", `{"pools": ["split", "nope"]}`, nil, 404, api.CodeUnknownPool},
		{"stop an unknown pool", "POST", "/v1/stop", `{"pools": ["nope"]}`, nil, 404, api.CodeUnknownPool},
		{"reset no pools", "POST", "/v1/reset", `{"pools": []}`, nil, 400, api.CodeBadRequest},
		{"reset an unknown field", "POST", "/v1/reset", `{"pool": ["split"]}`, nil, 400, api.CodeBadRequest},
		{"stop pools and all", "POST", "/v1/stop", `{"pools": ["split"], "all": true}`, nil, 400, api.CodeBadRequest},
		{"stop without a body", "POST", "/v1/stop", "", nil, 400, api.CodeBadRequest},
		{"reset too large", "POST", "/v1/reset", `{"pools": ["split"]}` + strings.Repeat(" ", api.MaxBodyBytes), nil, 413, api.CodeTooLarge},
		{"stop too large", "POST", "/v1/stop", `{"pools": ["split"]` + strings.Repeat(" ", api.MaxBodyBytes) + "}", nil, 413, api.CodeTooLarge},
		{"pools without a token", "GET", "/v1/pools", "", []reqOpt{noAuth}, 401, api.CodeUnauthorized},
		{"pool with a wrong token", "GET", "/v1/pools/split", "", []reqOpt{withHeader("Authorization", "Bearer wrong")}, 401, api.CodeUnauthorized},
		{"config without a token", "GET", "/v1/config", "", []reqOpt{noAuth}, 401, api.CodeUnauthorized},
		{"metrics without a token", "GET", "/metrics", "", []reqOpt{noAuth}, 401, api.CodeUnauthorized},
		{"reset one without a token", "POST", "/v1/pools/split/reset", "", []reqOpt{noAuth}, 401, api.CodeUnauthorized},
		{"reset without a token", "POST", "/v1/reset", `{"pools": ["split"]}`, []reqOpt{noAuth}, 401, api.CodeUnauthorized},
		{"stop without a token", "POST", "/v1/stop", `{"all": true}`, []reqOpt{noAuth}, 401, api.CodeUnauthorized},
		{"cross-site reset one", "POST", "/v1/pools/split/reset", "", []reqOpt{withHeader("Sec-Fetch-Site", "cross-site")}, 403, api.CodeForbidden},
		{"cross-site reset", "POST", "/v1/reset", `{"pools": ["split"]}`, []reqOpt{withHeader("Sec-Fetch-Site", "cross-site")}, 403, api.CodeForbidden},
		{"cross-site stop", "POST", "/v1/stop", `{"all": true}`, []reqOpt{withHeader("Sec-Fetch-Site", "cross-site")}, 403, api.CodeForbidden},
	} {
		c.do(srv, tc.method, tc.path, tc.body, tc.opts...).wantError(t, tc.name, tc.status, tc.code)
	}
	for _, path := range []string{"/v1/pools", "/v1/pools/split", "/v1/config", "/metrics"} {
		c.do(bare, "GET", path, "", withHost("pool-managerd.example:9200")).wantError(t, "GET "+path+" by name without a token", 403, api.CodeForbidden)
	}
	c.do(bare, "GET", "/v1/pools", "").want(t, "pools without a token on loopback", 200, &list)
	c.do(bare, "GET", "/metrics", "").wantError(t, "metrics where none are served", 404, api.CodeNotFound)
	c.do(bare, "GET", "/healthz", "", withHost("pool-managerd.example")).want(t, "healthz by name", 200, nil)
	if p := r.pool("split"); !p.Ready {
		t.Errorf("pool split after the refused actions: %v", poolString(p))
	}

	// The config stops loading: the last good one stays in force.
	n.writeFile("broken.cue", "package poolmanagerd\n\npools: split: colour: \"red\"\n")
	r.waitFor("GET /v1/config to show the invalid config", func() bool {
		c.do(srv, "GET", "/v1/config", "").want(t, "config", 200, &cfg)
		return !cfg.Valid
	})
	if len(cfg.Errors) == 0 || cfg.LastGoodLoad.IsZero() || len(cfg.Pools) != 5 {
		t.Errorf("invalid config with the last good one in force: %+v", cfg)
	}
	c.do(srv, "GET", "/v1/pools", "").want(t, "pools", 200, &list)

	c.do(srv, "POST", "/v1/stop", `{"all": true}`).want(t, "stop all", 200, &acted)
	if ids := poolIDs(acted); !slices.Equal(ids, []string{"broken", "failing", "loading", "ready", "split"}) {
		t.Errorf("stop all answered %v", ids)
	}
	for _, p := range acted {
		if p.Ready || p.PID != 0 || p.Endpoint != "" {
			t.Errorf("after stop all: %v, want no engine", poolString(p))
		}
	}
	if left := ourEngines(n.state); len(left) != 0 {
		t.Errorf("engines running after stop all: %v", describe(left))
	}

	// Run returns: the actions fail (500), the reads still answer.
	r.shutdown()
	c.do(srv, "POST", "/v1/stop", `{"pools": ["split"]}`).wantError(t, "stop after Run returned", 500, api.CodeInternal)
	c.do(srv, "POST", "/v1/reset", `{"pools": ["split"]}`).wantError(t, "reset after Run returned", 500, api.CodeInternal)
	c.do(srv, "POST", "/v1/pools/split/reset", "").wantError(t, "reset one after Run returned", 500, api.CodeInternal)
	c.do(srv, "GET", "/v1/pools", "").want(t, "pools after Run returned", 200, &list)

	if d := cmp.Diff(spec.Responses(t), openapicheck.SortedKeys(c.seen)); d != "" {
		t.Errorf("documented responses (-) and responses the daemon gave (+) differ:\n%s", d)
	}
	if t.Failed() {
		t.Logf("responses seen: %s", fmt.Sprint(openapicheck.SortedKeys(c.seen)))
	}
}
