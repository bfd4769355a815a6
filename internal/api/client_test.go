package api

import (
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func newTestClient(t *testing.T, f *fakeSource, token string) *Client {
	t.Helper()
	srv := httptest.NewServer(NewHandler(f, fakeMetrics, testToken))
	t.Cleanup(srv.Close)
	return NewClient(strings.TrimPrefix(srv.URL, "http://"), token)
}

func TestClient(t *testing.T) {
	ctx := t.Context()
	f := newFake()
	c := newTestClient(t, f, testToken)

	ready, err := c.Ready(ctx)
	if err != nil || !ready {
		t.Errorf("Ready = %v, %v; want true", ready, err)
	}
	pools, err := c.Pools(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if d := cmp.Diff([]Pool{fullPool(), loadingPool(), normalBare()}, pools); d != "" {
		t.Errorf("Pools (-want +got):\n%s", d)
	}
	p, err := c.Pool(ctx, "big")
	if err != nil {
		t.Fatal(err)
	}
	if d := cmp.Diff(fullPool(), p); d != "" {
		t.Errorf("Pool (-want +got):\n%s", d)
	}
	cfg, err := c.Config(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Dir != "/etc/pool-managerd" || !cfg.Valid {
		t.Errorf("Config = %+v", cfg)
	}

	reset, err := c.Reset(ctx, []string{"big"})
	if err != nil {
		t.Fatal(err)
	}
	if d := cmp.Diff([]Pool{bigReset()}, reset); d != "" {
		t.Errorf("Reset (-want +got):\n%s", d)
	}
	stoppedPools, err := c.Stop(ctx, []string{"mid"}, false)
	if err != nil {
		t.Fatal(err)
	}
	if len(stoppedPools) != 1 || stoppedPools[0].Phase != "Stopped" {
		t.Errorf("Stop = %+v", stoppedPools)
	}
	all, err := c.Stop(ctx, nil, true)
	if err != nil {
		t.Fatal(err)
	}
	if len(all) != 3 {
		t.Errorf("Stop all = %d pools, want 3", len(all))
	}
	want := []stopCall{{Pools: []string{"mid"}}, {All: true}}
	if d := cmp.Diff(want, f.stops); d != "" {
		t.Errorf("stops (-want +got):\n%s", d)
	}
}

func TestClientErrors(t *testing.T) {
	ctx := t.Context()
	f := newFake()
	c := newTestClient(t, f, testToken)

	_, err := c.Reset(ctx, []string{"nope"})
	var se *StatusError
	if !errors.As(err, &se) || se.StatusCode != 404 || se.Code != CodeUnknownPool || !errors.Is(err, ErrUnknownPool) {
		t.Fatalf("Reset(nope) = %#v, want a 404 StatusError wrapping ErrUnknownPool", err)
	}
	if err.Error() != `unknown pool "nope" (known: big, mid, small)` {
		t.Errorf("Reset(nope) error %q, want the server's message", err)
	}
	if _, err := c.Pool(ctx, "nope"); !errors.Is(err, ErrUnknownPool) {
		t.Errorf("Pool(nope) = %v, want ErrUnknownPool", err)
	}
	if _, err := c.Stop(ctx, nil, false); err == nil || !strings.Contains(err.Error(), "name the pools to stop") {
		t.Errorf("Stop(nothing) = %v, want the server's 400 message", err)
	}
	f.failErr = errKill
	if _, err := c.Stop(ctx, []string{"big"}, false); err == nil || err.Error() != errKill.Error() {
		t.Errorf("Stop with a failing source = %v, want %q", err, errKill)
	}
	f.ready = false
	if ready, err := c.Ready(ctx); err != nil || ready {
		t.Errorf("Ready when not ready = %v, %v; want false, nil", ready, err)
	}

	// Wrong token and no token.
	for _, token := range []string{"wrong", ""} {
		bad := newTestClient(t, newFake(), token)
		_, err := bad.Pools(ctx)
		if !errors.Is(err, ErrUnauthorized) || !strings.Contains(err.Error(), "token") {
			t.Errorf("Pools with token %q = %v, want ErrUnauthorized", token, err)
		}
	}

	// A response that is not an Error: the status and the body's start.
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		http.Error(w, "upstream exploded", http.StatusBadGateway)
	}))
	defer srv.Close()
	_, err = NewClient(srv.URL, "").Pools(ctx)
	if !errors.As(err, &se) || se.StatusCode != 502 || !strings.Contains(err.Error(), "502 Bad Gateway: upstream exploded") {
		t.Errorf("Pools against a 502 = %v", err)
	}
	if (&StatusError{StatusCode: 418}).Error() != "daemon API: 418 I'm a teapot" {
		t.Errorf("StatusError without a message = %q", (&StatusError{StatusCode: 418}).Error())
	}

	// A bad JSON success body.
	srv2 := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		_, _ = w.Write([]byte("{not json"))
	}))
	defer srv2.Close()
	if _, err := NewClient(srv2.URL+"/", "").Config(ctx); err == nil || !strings.Contains(err.Error(), "decoding the response") {
		t.Errorf("Config against bad JSON = %v", err)
	}

	// No server.
	srv3 := httptest.NewServer(http.NotFoundHandler())
	addr := srv3.Listener.Addr().String()
	srv3.Close()
	if _, err := NewClient(addr, "").Pools(ctx); err == nil || !strings.Contains(err.Error(), "daemon API") {
		t.Errorf("Pools with no server = %v", err)
	}
}
