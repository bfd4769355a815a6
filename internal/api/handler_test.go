package api

import (
	"encoding/json"
	"io"
	"mime"
	"net/http"
	"net/http/httptest"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/poolmanagerd/pool-managerd/reconcile"
	"github.com/poolmanagerd/pool-managerd/schema"
)

const testToken = "s3cret-token"

// apiCase is one request to the handler and what it must answer. The cases
// also feed the OpenAPI test, which checks every response against the spec.
type apiCase struct {
	name         string
	method, path string
	body         string
	// header is sent as is; unless noAuth, the right bearer token is added.
	header map[string]string
	noAuth bool
	// host overrides the request's Host.
	host string
	// noToken serves the handler without a token.
	noToken    bool
	noMetrics  bool
	setup      func(f *fakeSource)
	wantStatus int
	// wantJSON, when set, is compared with the decoded body (of its type).
	wantJSON any
	// wantText is the whole body of a text response.
	wantText string
	// wantCode and wantMessage (a substring) check an Error body.
	wantCode, wantMessage string
	// check looks at what the Source was asked.
	check func(t *testing.T, f *fakeSource)
}

type served struct {
	resp *http.Response
	body []byte
	src  *fakeSource
	// pattern is the ServeMux pattern the request matched ("" for none).
	pattern string
}

// serve runs one case against a handler behind an httptest server.
func serve(t *testing.T, c apiCase) served {
	t.Helper()
	f := newFake()
	if c.setup != nil {
		c.setup(f)
	}
	token := testToken
	if c.noToken {
		token = ""
	}
	var metrics http.Handler = fakeMetrics
	if c.noMetrics {
		metrics = nil
	}
	h := NewHandler(f, metrics, token)
	srv := httptest.NewServer(h)
	defer srv.Close()
	var body io.Reader
	if c.body != "" {
		body = strings.NewReader(c.body)
	}
	req, err := http.NewRequestWithContext(t.Context(), c.method, srv.URL+c.path, body)
	if err != nil {
		t.Fatal(err)
	}
	if c.body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	if !c.noAuth && !c.noToken {
		req.Header.Set("Authorization", "Bearer "+testToken)
	}
	for k, v := range c.header {
		req.Header.Set(k, v)
	}
	if c.host != "" {
		req.Host = c.host
	}
	_, pattern := h.(*http.ServeMux).Handler(req.Clone(t.Context()))
	resp, err := srv.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return served{resp: resp, body: data, src: f, pattern: pattern}
}

func sortedPools(ps ...Pool) []Pool { return ps }

func normalBare() Pool {
	p := barePool()
	p.GPUs, p.Breaker = []GPU{}, BreakerClosed
	return p
}

func stopped(p Pool) Pool {
	p.Phase, p.Ready, p.PID, p.Port, p.Endpoint, p.GPUs = reconcile.Stopped, false, 0, 0, "", []GPU{}
	if p.Breaker == "" {
		p.Breaker = BreakerClosed
	}
	return p
}

func bigReset() Pool {
	p := fullPool()
	p.Breaker, p.BreakerRetryAt, p.NextRetry = BreakerClosed, time.Time{}, time.Time{}
	return p
}

func failWith(err error) func(*fakeSource) {
	return func(f *fakeSource) { f.failErr = err }
}

func wantNoActions(t *testing.T, f *fakeSource) {
	t.Helper()
	if len(f.resets) > 0 || len(f.stops) > 0 {
		t.Errorf("the source was asked to act: resets %v, stops %v", f.resets, f.stops)
	}
}

var bigBody = `{"pools": ["` + strings.Repeat("x", MaxBodyBytes) + `"]}`

func apiCases() []apiCase {
	return []apiCase{
		// Probes.
		{name: "healthz", method: "GET", path: "/healthz", wantStatus: 200, wantText: "ok"},
		{name: "healthz without token", method: "GET", path: "/healthz", noAuth: true, wantStatus: 200, wantText: "ok"},
		{name: "healthz wrong token", method: "GET", path: "/healthz", noAuth: true, header: map[string]string{"Authorization": "Bearer nope"}, wantStatus: 200, wantText: "ok"},
		{name: "healthz any host", method: "GET", path: "/healthz", noToken: true, host: "evil.example", wantStatus: 200, wantText: "ok"},
		{name: "readyz", method: "GET", path: "/readyz", wantStatus: 200, wantJSON: Readiness{Ready: true}},
		{name: "readyz not ready", method: "GET", path: "/readyz", setup: func(f *fakeSource) { f.ready = false }, wantStatus: 503, wantCode: CodeNotReady, wantMessage: "first reconcile"},
		{name: "readyz without token (a probe)", method: "GET", path: "/readyz", noAuth: true, wantStatus: 200, wantJSON: Readiness{Ready: true}},

		// Pools.
		{name: "pools", method: "GET", path: "/v1/pools", wantStatus: 200, wantJSON: sortedPools(fullPool(), loadingPool(), normalBare())},
		{name: "pools none", method: "GET", path: "/v1/pools", setup: func(f *fakeSource) { f.pools = nil }, wantStatus: 200, wantJSON: []Pool{}, wantText: "[]\n"},
		{name: "pools without token", method: "GET", path: "/v1/pools", noAuth: true, wantStatus: 401, wantCode: CodeUnauthorized},
		{name: "pools cross-origin GET", method: "GET", path: "/v1/pools", header: map[string]string{"Sec-Fetch-Site": "cross-site"}, wantStatus: 200},
		{name: "pool full", method: "GET", path: "/v1/pools/big", wantStatus: 200, wantJSON: fullPool()},
		{name: "pool bare", method: "GET", path: "/v1/pools/small", wantStatus: 200, wantJSON: normalBare()},
		{name: "pool loading", method: "GET", path: "/v1/pools/mid", wantStatus: 200, wantJSON: loadingPool()},
		{name: "pool unknown", method: "GET", path: "/v1/pools/nope", wantStatus: 404, wantCode: CodeUnknownPool, wantMessage: `unknown pool "nope" (known: big, mid, small)`},
		{name: "pool unknown escaped", method: "GET", path: "/v1/pools/a%2Fb", wantStatus: 404, wantCode: CodeUnknownPool, wantMessage: `"a/b"`},
		{name: "pool unknown none known", method: "GET", path: "/v1/pools/nope", setup: func(f *fakeSource) { f.pools = nil }, wantStatus: 404, wantCode: CodeUnknownPool, wantMessage: "(known: none)"},
		{name: "pool without token", method: "GET", path: "/v1/pools/big", noAuth: true, wantStatus: 401, wantCode: CodeUnauthorized},

		// A pool's readiness probe.
		{name: "pool ready", method: "GET", path: "/v1/pools/mid/ready", setup: func(f *fakeSource) {
			p := f.pools["mid"]
			p.Phase, p.Ready, p.Reason = reconcile.Ready, true, "running, healthy"
			f.pools["mid"] = p
		}, wantStatus: 200, wantJSON: PoolReadiness{Pool: "mid", Ready: true, Phase: reconcile.Ready, Reason: "running, healthy"}},
		{name: "pool ready preloading", method: "GET", path: "/v1/pools/mid/ready", wantStatus: 503, wantJSON: PoolReadiness{Pool: "mid", Phase: reconcile.Preloading}},
		{name: "pool ready failed", method: "GET", path: "/v1/pools/big/ready", setup: func(f *fakeSource) {
			p := f.pools["big"]
			p.Phase, p.Reason = reconcile.Failed, "circuit breaker open"
			f.pools["big"] = p
		}, wantStatus: 503, wantJSON: PoolReadiness{Pool: "big", Phase: reconcile.Failed, Reason: "circuit breaker open"}},
		{name: "pool ready stopped", method: "GET", path: "/v1/pools/small/ready", wantStatus: 503, wantJSON: PoolReadiness{Pool: "small", Phase: reconcile.Stopped}},
		// Open to anyone, so it does not list the pools the daemon knows.
		{name: "pool ready unknown", method: "GET", path: "/v1/pools/nope/ready", noAuth: true, wantStatus: 404, wantCode: CodeUnknownPool,
			wantText: "{\n  \"error\": \"unknown_pool\",\n  \"message\": \"unknown pool \\\"nope\\\"\"\n}\n"},
		{name: "pool ready without token (a probe)", method: "GET", path: "/v1/pools/mid/ready", noAuth: true, wantStatus: 503, wantJSON: PoolReadiness{Pool: "mid", Phase: reconcile.Preloading}},
		{name: "pool ready wrong token", method: "GET", path: "/v1/pools/mid/ready", noAuth: true, header: map[string]string{"Authorization": "Bearer nope"}, wantStatus: 503},
		{name: "pool ready any host", method: "GET", path: "/v1/pools/mid/ready", noToken: true, host: "lb.example", wantStatus: 503},

		// Config.
		{name: "config", method: "GET", path: "/v1/config", wantStatus: 200, wantJSON: func() Config {
			c := newFake().config
			c.Errors = []schema.Diagnostic{}
			return c
		}()},
		{name: "config invalid", method: "GET", path: "/v1/config", setup: func(f *fakeSource) { f.config = invalidConfig() }, wantStatus: 200, wantJSON: invalidConfig()},
		{name: "config empty", method: "GET", path: "/v1/config", setup: func(f *fakeSource) { f.config = Config{} }, wantStatus: 200,
			wantJSON: Config{Files: []string{}, Errors: []schema.Diagnostic{}, Pools: []string{}, Nodes: []string{}},
			wantText: "{\n  \"valid\": false,\n  \"dir\": \"\",\n  \"files\": [],\n  \"errors\": [],\n  \"pools\": [],\n  \"nodes\": []\n}\n"},
		{name: "config without token", method: "GET", path: "/v1/config", noAuth: true, wantStatus: 401, wantCode: CodeUnauthorized},

		// Metrics.
		{name: "metrics", method: "GET", path: "/metrics", wantStatus: 200, wantText: "# HELP pool_managerd_config_valid Whether the config is valid.\n# TYPE pool_managerd_config_valid gauge\npool_managerd_config_valid 1\n"},
		{name: "metrics none", method: "GET", path: "/metrics", noMetrics: true, wantStatus: 404, wantCode: CodeNotFound},
		{name: "metrics without token", method: "GET", path: "/metrics", noAuth: true, wantStatus: 401, wantCode: CodeUnauthorized},

		// Reset one pool.
		{name: "reset one", method: "POST", path: "/v1/pools/big/reset", wantStatus: 200, wantJSON: []Pool{bigReset()},
			check: func(t *testing.T, f *fakeSource) {
				if d := cmp.Diff([][]string{{"big"}}, f.resets); d != "" {
					t.Errorf("resets (-want +got):\n%s", d)
				}
			}},
		{name: "reset one unknown", method: "POST", path: "/v1/pools/nope/reset", wantStatus: 404, wantCode: CodeUnknownPool, wantMessage: `"nope"`, check: wantNoActions},
		{name: "reset one gone", method: "POST", path: "/v1/pools/big/reset", setup: failWith(errGone), wantStatus: 404, wantCode: CodeUnknownPool, wantMessage: errGone.Error()},
		{name: "reset one fails", method: "POST", path: "/v1/pools/big/reset", setup: failWith(errKill), wantStatus: 500, wantCode: CodeInternal, wantMessage: errKill.Error()},
		{name: "reset one without token", method: "POST", path: "/v1/pools/big/reset", noAuth: true, wantStatus: 401, wantCode: CodeUnauthorized, check: wantNoActions},
		{name: "reset one cross-origin", method: "POST", path: "/v1/pools/big/reset", header: map[string]string{"Sec-Fetch-Site": "cross-site"}, wantStatus: 403, wantCode: CodeForbidden, check: wantNoActions},

		// Reset.
		{name: "reset", method: "POST", path: "/v1/reset", body: `{"pools": ["big", "mid", "big"]}`, wantStatus: 200, wantJSON: []Pool{bigReset(), func() Pool { p := loadingPool(); p.Breaker = BreakerClosed; return p }()},
			check: func(t *testing.T, f *fakeSource) {
				if d := cmp.Diff([][]string{{"big", "mid"}}, f.resets); d != "" {
					t.Errorf("resets (-want +got):\n%s", d)
				}
			}},
		{name: "reset no body", method: "POST", path: "/v1/reset", wantStatus: 400, wantCode: CodeBadRequest, wantMessage: "empty request body", check: wantNoActions},
		{name: "reset bad JSON", method: "POST", path: "/v1/reset", body: `{"pools": [`, wantStatus: 400, wantCode: CodeBadRequest, check: wantNoActions},
		{name: "reset no pools", method: "POST", path: "/v1/reset", body: `{"pools": []}`, wantStatus: 400, wantCode: CodeBadRequest, wantMessage: "name the pools", check: wantNoActions},
		{name: "reset null", method: "POST", path: "/v1/reset", body: `null`, wantStatus: 400, wantCode: CodeBadRequest, check: wantNoActions},
		{name: "reset empty id", method: "POST", path: "/v1/reset", body: `{"pools": ["big", ""]}`, wantStatus: 400, wantCode: CodeBadRequest, wantMessage: "empty pool id", check: wantNoActions},
		{name: "reset unknown field", method: "POST", path: "/v1/reset", body: `{"pool": ["big"]}`, wantStatus: 400, wantCode: CodeBadRequest, wantMessage: `unknown field "pool"`, check: wantNoActions},
		{name: "reset wrong type", method: "POST", path: "/v1/reset", body: `{"pools": "big"}`, wantStatus: 400, wantCode: CodeBadRequest, check: wantNoActions},
		{name: "reset trailing data", method: "POST", path: "/v1/reset", body: `{"pools": ["big"]} {"pools": ["mid"]}`, wantStatus: 400, wantCode: CodeBadRequest, wantMessage: "data after the JSON object", check: wantNoActions},
		{name: "reset trailing space", method: "POST", path: "/v1/reset", body: "{\"pools\": [\"big\"]}\n\n", wantStatus: 200, wantJSON: []Pool{bigReset()}},
		{name: "reset too large", method: "POST", path: "/v1/reset", body: bigBody, wantStatus: 413, wantCode: CodeTooLarge, check: wantNoActions},
		{name: "reset too large after the object", method: "POST", path: "/v1/reset", body: `{"pools": ["big"]}` + strings.Repeat(" ", MaxBodyBytes), wantStatus: 413, wantCode: CodeTooLarge, check: wantNoActions},
		{name: "reset unknown", method: "POST", path: "/v1/reset", body: `{"pools": ["big", "x", "y"]}`, wantStatus: 404, wantCode: CodeUnknownPool, wantMessage: `unknown pools "x", "y" (known: big, mid, small)`, check: wantNoActions},
		{name: "reset fails", method: "POST", path: "/v1/reset", body: `{"pools": ["big"]}`, setup: failWith(errKill), wantStatus: 500, wantCode: CodeInternal, wantMessage: errKill.Error()},
		{name: "reset without token", method: "POST", path: "/v1/reset", body: `{"pools": ["big"]}`, noAuth: true, wantStatus: 401, wantCode: CodeUnauthorized, check: wantNoActions},

		// Stop.
		{name: "stop", method: "POST", path: "/v1/stop", body: `{"pools": ["mid"]}`, wantStatus: 200, wantJSON: []Pool{stopped(loadingPool())},
			check: func(t *testing.T, f *fakeSource) {
				if d := cmp.Diff([]stopCall{{Pools: []string{"mid"}}}, f.stops); d != "" {
					t.Errorf("stops (-want +got):\n%s", d)
				}
			}},
		{name: "stop all", method: "POST", path: "/v1/stop", body: `{"all": true}`, wantStatus: 200, wantJSON: []Pool{stopped(fullPool()), stopped(loadingPool()), stopped(barePool())},
			check: func(t *testing.T, f *fakeSource) {
				if d := cmp.Diff([]stopCall{{All: true}}, f.stops); d != "" {
					t.Errorf("stops (-want +got):\n%s", d)
				}
			}},
		{name: "stop both", method: "POST", path: "/v1/stop", body: `{"pools": ["mid"], "all": true}`, wantStatus: 400, wantCode: CodeBadRequest, wantMessage: "name the pools to stop, or all", check: wantNoActions},
		{name: "stop neither", method: "POST", path: "/v1/stop", body: `{}`, wantStatus: 400, wantCode: CodeBadRequest, check: wantNoActions},
		{name: "stop all false", method: "POST", path: "/v1/stop", body: `{"all": false}`, wantStatus: 400, wantCode: CodeBadRequest, check: wantNoActions},
		{name: "stop unknown", method: "POST", path: "/v1/stop", body: `{"pools": ["nope"]}`, wantStatus: 404, wantCode: CodeUnknownPool, check: wantNoActions},
		{name: "stop gone", method: "POST", path: "/v1/stop", body: `{"pools": ["big"]}`, setup: failWith(errGone), wantStatus: 404, wantCode: CodeUnknownPool},
		{name: "stop fails", method: "POST", path: "/v1/stop", body: `{"all": true}`, setup: failWith(errKill), wantStatus: 500, wantCode: CodeInternal, wantMessage: errKill.Error()},
		{name: "stop too large", method: "POST", path: "/v1/stop", body: bigBody, wantStatus: 413, wantCode: CodeTooLarge, check: wantNoActions},
		{name: "stop without token", method: "POST", path: "/v1/stop", body: `{"all": true}`, noAuth: true, wantStatus: 401, wantCode: CodeUnauthorized, check: wantNoActions},
		{name: "stop cross-origin", method: "POST", path: "/v1/stop", body: `{"all": true}`, header: map[string]string{"Origin": "http://evil.example"}, wantStatus: 403, wantCode: CodeForbidden, check: wantNoActions},

		// Without a token: the Host must be an address.
		{name: "no token, IP host", method: "POST", path: "/v1/stop", body: `{"all": true}`, noToken: true, wantStatus: 200},
		{name: "no token, localhost", method: "GET", path: "/v1/pools", noToken: true, host: "localhost:9200", wantStatus: 200},
		{name: "no token, IPv6 host", method: "GET", path: "/v1/config", noToken: true, host: "[::1]:9200", wantStatus: 200},
		{name: "no token, IP without port", method: "GET", path: "/v1/pools/big", noToken: true, host: "127.0.0.1", wantStatus: 200},
		{name: "no token, DNS name", method: "POST", path: "/v1/stop", body: `{"all": true}`, noToken: true, host: "evil.example:9200", wantStatus: 403, wantCode: CodeForbidden, wantMessage: "evil.example", check: wantNoActions},
		{name: "no token, DNS name GET", method: "GET", path: "/v1/pools", noToken: true, host: "rebind.example", wantStatus: 403, wantCode: CodeForbidden},
		{name: "no token, DNS name readyz (open)", method: "GET", path: "/readyz", noToken: true, host: "rebind.example", wantStatus: 200},
		{name: "no token, DNS name pool", method: "GET", path: "/v1/pools/big", noToken: true, host: "rebind.example", wantStatus: 403, wantCode: CodeForbidden},
		{name: "no token, DNS name config", method: "GET", path: "/v1/config", noToken: true, host: "rebind.example", wantStatus: 403, wantCode: CodeForbidden},
		{name: "no token, DNS name metrics", method: "GET", path: "/metrics", noToken: true, host: "rebind.example", wantStatus: 403, wantCode: CodeForbidden},
		{name: "no token, DNS name reset", method: "POST", path: "/v1/reset", body: `{"pools": ["big"]}`, noToken: true, host: "rebind.example", wantStatus: 403, wantCode: CodeForbidden, check: wantNoActions},
		{name: "no token, cross-origin", method: "POST", path: "/v1/reset", body: `{"pools": ["big"]}`, noToken: true, header: map[string]string{"Sec-Fetch-Site": "cross-site"}, wantStatus: 403, wantCode: CodeForbidden, check: wantNoActions},
	}
}

func TestHandler(t *testing.T) {
	for _, c := range apiCases() {
		t.Run(c.name, func(t *testing.T) {
			s := serve(t, c)
			if s.resp.StatusCode != c.wantStatus {
				t.Fatalf("status %d, want %d; body:\n%s", s.resp.StatusCode, c.wantStatus, s.body)
			}
			ct := s.resp.Header.Get("Content-Type")
			mt, _, _ := mime.ParseMediaType(ct)
			if c.wantJSON != nil || c.wantCode != "" {
				if mt != "application/json" {
					t.Errorf("Content-Type %q, want application/json", ct)
				}
			}
			if c.wantJSON != nil {
				got := reflect.New(reflect.TypeOf(c.wantJSON))
				if err := json.Unmarshal(s.body, got.Interface()); err != nil {
					t.Fatalf("decoding %s: %v", s.body, err)
				}
				if d := cmp.Diff(c.wantJSON, got.Elem().Interface()); d != "" {
					t.Errorf("body (-want +got):\n%s", d)
				}
			}
			if c.wantText != "" && string(s.body) != c.wantText {
				t.Errorf("body %q, want %q", s.body, c.wantText)
			}
			if c.wantCode != "" {
				var e Error
				if err := json.Unmarshal(s.body, &e); err != nil {
					t.Fatalf("decoding %s: %v", s.body, err)
				}
				if e.Error != c.wantCode || !strings.Contains(e.Message, c.wantMessage) || e.Message == "" {
					t.Errorf("error %+v, want code %q and a message with %q", e, c.wantCode, c.wantMessage)
				}
			}
			if c.check != nil {
				c.check(t, s.src)
			}
		})
	}
}

func TestAuth(t *testing.T) {
	for _, rt := range routes {
		for _, tc := range []struct {
			name, header string
			want         int
			challenge    string
		}{
			{"missing", "", 401, `Bearer realm="pool-managerd"`},
			{"wrong", "Bearer " + testToken + "x", 401, `Bearer realm="pool-managerd", error="invalid_token"`},
			{"prefix", "Bearer " + testToken[:len(testToken)-1], 401, `Bearer realm="pool-managerd", error="invalid_token"`},
			{"empty bearer", "Bearer ", 401, `Bearer realm="pool-managerd", error="invalid_token"`},
			{"basic", "Basic " + testToken, 401, `Bearer realm="pool-managerd", error="invalid_token"`},
			{"no scheme", testToken, 401, `Bearer realm="pool-managerd", error="invalid_token"`},
			{"right", "Bearer " + testToken, 0, ""},
			{"right, lower-case scheme", "bearer " + testToken, 0, ""},
		} {
			t.Run(rt.method+" "+rt.path+"/"+tc.name, func(t *testing.T) {
				path := strings.ReplaceAll(rt.path, "{id}", "big")
				body := ""
				switch rt.path {
				case "/v1/reset":
					body = `{"pools": ["big"]}`
				case "/v1/stop":
					body = `{"pools": ["big"]}`
				}
				c := apiCase{method: rt.method, path: path, body: body, noAuth: true}
				if tc.header != "" {
					c.header = map[string]string{"Authorization": tc.header}
				}
				s := serve(t, c)
				want := tc.want
				if rt.open || want == 0 {
					want = 200
					if rt.path == "/v1/pools/{id}/ready" {
						want = 503 // big is Unready
					}
				}
				if s.resp.StatusCode != want {
					t.Fatalf("status %d, want %d; body:\n%s", s.resp.StatusCode, want, s.body)
				}
				if want != 401 {
					return
				}
				if got := s.resp.Header.Get("WWW-Authenticate"); got != tc.challenge {
					t.Errorf("WWW-Authenticate %q, want %q", got, tc.challenge)
				}
				wantNoActions(t, s.src)
				var e Error
				if err := json.Unmarshal(s.body, &e); err != nil || e.Error != CodeUnauthorized {
					t.Errorf("body %s (%v), want an %q error", s.body, err, CodeUnauthorized)
				}
			})
		}
	}
}

func TestMethodNotAllowed(t *testing.T) {
	for _, tc := range []struct {
		method, path string
		allow        []string
	}{
		{"POST", "/v1/pools", []string{"GET", "HEAD"}},
		{"DELETE", "/v1/pools/big", []string{"GET", "HEAD"}},
		{"POST", "/healthz", []string{"GET", "HEAD"}},
		{"GET", "/v1/reset", []string{"POST"}},
		{"GET", "/v1/stop", []string{"POST"}},
		{"GET", "/v1/pools/big/reset", []string{"POST"}},
		{"POST", "/v1/pools/big/ready", []string{"GET", "HEAD"}},
		{"PUT", "/metrics", []string{"GET", "HEAD"}},
	} {
		t.Run(tc.method+" "+tc.path, func(t *testing.T) {
			s := serve(t, apiCase{method: tc.method, path: tc.path})
			if s.resp.StatusCode != http.StatusMethodNotAllowed {
				t.Fatalf("status %d, want 405", s.resp.StatusCode)
			}
			got := strings.Split(s.resp.Header.Get("Allow"), ", ")
			slices.Sort(got)
			if d := cmp.Diff(tc.allow, got); d != "" {
				t.Errorf("Allow (-want +got):\n%s", d)
			}
			wantNoActions(t, s.src)
		})
	}
}

func TestUnknownPath(t *testing.T) {
	for _, path := range []string{"/", "/v1", "/v2/pools", "/v1/pools/big/stop", "/v1/pools/big/reset/x"} {
		s := serve(t, apiCase{method: "GET", path: path})
		if s.resp.StatusCode != http.StatusNotFound {
			t.Errorf("GET %s: status %d, want 404", path, s.resp.StatusCode)
		}
	}
}

func TestHead(t *testing.T) {
	s := serve(t, apiCase{method: "HEAD", path: "/healthz", noAuth: true})
	if s.resp.StatusCode != 200 {
		t.Errorf("HEAD /healthz: status %d, want 200", s.resp.StatusCode)
	}
}

func TestNewHandlerNilSource(t *testing.T) {
	defer func() {
		if recover() == nil {
			t.Error("NewHandler(nil, ...) did not panic")
		}
	}()
	NewHandler(nil, nil, "")
}

func TestAddressHost(t *testing.T) {
	for host, want := range map[string]bool{
		"":                  true,
		"127.0.0.1":         true,
		"127.0.0.1:9200":    true,
		"10.1.2.3:9200":     true,
		"[::1]:9200":        true,
		"::1":               true,
		"[fe80::1%eth0]:80": true,
		"localhost":         true,
		"LocalHost:9200":    true,
		"evil.example":      false,
		"evil.example:9200": false,
		"127.0.0.1.nip.io":  false,
		"localhost.evil":    false,
	} {
		if got := addressHost(host); got != want {
			t.Errorf("addressHost(%q) = %v, want %v", host, got, want)
		}
	}
}
