package api

import (
	"cmp"
	"context"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"slices"
	"strings"
)

// Source is what the handler shows and acts on; the daemon implements it.
// Its methods are called from many requests at once.
type Source interface {
	// Ready reports whether the daemon is ready: the first reconcile is
	// done (and, with serve --ready-when pools, every pool is Ready or
	// given up).
	Ready() bool
	// Pools returns every pool the daemon knows: those of the config in
	// force and those it still has engines or restart records for.
	Pools() []Pool
	// Pool returns one pool; false for a pool the daemon does not know.
	Pool(id string) (Pool, bool)
	// Config returns the config's state.
	Config() Config
	// Reset closes the named pools' circuit breakers and clears their
	// backoff (what `pool-managerd reset` does). An error that wraps
	// ErrUnknownPool is answered 404, any other 500 with its message.
	Reset(ctx context.Context, pools []string) error
	// Stop stops the named pools' engines, or every engine when all is set
	// (then pools is nil), as `pool-managerd stop` does. It may take the
	// pools' grace periods; ctx ends when the client goes away. Errors as
	// for Reset.
	Stop(ctx context.Context, pools []string, all bool) error
}

// MaxBodyBytes is the largest request body the handler reads; a larger one
// is answered 413.
const MaxBodyBytes = 64 << 10

// route is one route of the handler; routes lists them all, for NewHandler
// and for the test that checks them against docs/openapi.yaml.
type route struct {
	method, path string
	// open routes need no token.
	open  bool
	serve func(h *handler, w http.ResponseWriter, r *http.Request)
}

var routes = []route{
	{method: http.MethodGet, path: "/healthz", open: true, serve: (*handler).healthz},
	{method: http.MethodGet, path: "/readyz", open: true, serve: (*handler).readyz},
	{method: http.MethodGet, path: "/v1/pools", serve: (*handler).pools},
	{method: http.MethodGet, path: "/v1/pools/{id}", serve: (*handler).pool},
	{method: http.MethodGet, path: "/v1/pools/{id}/ready", open: true, serve: (*handler).poolReady},
	{method: http.MethodGet, path: "/v1/config", serve: (*handler).config},
	{method: http.MethodGet, path: "/metrics", serve: (*handler).metricsRoute},
	{method: http.MethodPost, path: "/v1/pools/{id}/reset", serve: (*handler).resetOne},
	{method: http.MethodPost, path: "/v1/reset", serve: (*handler).reset},
	{method: http.MethodPost, path: "/v1/stop", serve: (*handler).stop},
}

type handler struct {
	src     Source
	metrics http.Handler
	token   []byte
	csrf    *http.CrossOriginProtection
}

// NewHandler returns the API's handler: the routes of the package
// documentation on a ServeMux, which answers 404 for unknown paths and 405
// with an Allow header for a wrong method. metrics serves GET /metrics (404
// when nil), typically promhttp.HandlerFor the daemon's registry.
//
// With a token, every route but /healthz, /readyz and /v1/pools/{id}/ready
// (the probes, which a kubelet or a load balancer sends without credentials)
// requires the header
// "Authorization: Bearer TOKEN" (401 otherwise). Without one (only allowed
// on loopback, see CheckListen) requests must carry a Host that is an IP
// address or localhost (403 otherwise: a DNS rebinding attack names its own
// domain). Cross-origin browser POSTs are refused with 403 either way.
func NewHandler(src Source, metrics http.Handler, token string) http.Handler {
	if src == nil {
		panic("api: NewHandler with a nil Source")
	}
	h := &handler{src: src, metrics: metrics, token: []byte(token), csrf: http.NewCrossOriginProtection()}
	mux := http.NewServeMux()
	for _, rt := range routes {
		serve := rt.serve
		var next http.Handler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { serve(h, w, r) })
		if !rt.open {
			next = h.guard(next)
		}
		mux.Handle(rt.method+" "+rt.path, next)
	}
	return mux
}

// guard checks the token (or, without one, the Host) and refuses
// cross-origin browser requests.
func (h *handler) guard(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if len(h.token) == 0 {
			if !addressHost(r.Host) {
				writeError(w, http.StatusForbidden, CodeForbidden, fmt.Sprintf(
					"host %q is not an IP address or localhost: without a token (POOL_MANAGERD_TOKEN) the API answers only requests addressed to its IP address", r.Host))
				return
			}
		} else if msg, ok := h.authorized(r); !ok {
			challenge := `Bearer realm="pool-managerd"`
			if r.Header.Get("Authorization") != "" {
				challenge += `, error="invalid_token"`
			}
			w.Header().Set("WWW-Authenticate", challenge)
			writeError(w, http.StatusUnauthorized, CodeUnauthorized, msg)
			return
		}
		if err := h.csrf.Check(r); err != nil {
			writeError(w, http.StatusForbidden, CodeForbidden, "cross-origin browser requests may not change anything: "+err.Error())
			return
		}
		next.ServeHTTP(w, r)
	})
}

// authorized compares the request's bearer token with the daemon's in
// constant time; when it fails it says why.
func (h *handler) authorized(r *http.Request) (string, bool) {
	header := r.Header.Get("Authorization")
	if header == "" {
		return "missing bearer token: send Authorization: Bearer followed by the daemon's POOL_MANAGERD_TOKEN", false
	}
	scheme, cred, _ := strings.Cut(header, " ")
	if !strings.EqualFold(scheme, "Bearer") {
		return "the Authorization header is not a bearer token", false
	}
	if subtle.ConstantTimeCompare([]byte(strings.TrimSpace(cred)), h.token) != 1 {
		return "wrong bearer token", false
	}
	return "", true
}

// addressHost reports whether a request's Host names the server by an IP
// address or as localhost (or is absent, which no browser does).
func addressHost(host string) bool {
	if host == "" {
		return true
	}
	if h, _, err := net.SplitHostPort(host); err == nil {
		host = h
	}
	host = strings.TrimSuffix(strings.TrimPrefix(host, "["), "]")
	if strings.EqualFold(host, "localhost") {
		return true
	}
	_, err := netip.ParseAddr(host)
	return err == nil
}

func (h *handler) healthz(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	_, _ = io.WriteString(w, "ok")
}

func (h *handler) readyz(w http.ResponseWriter, _ *http.Request) {
	if !h.src.Ready() {
		writeError(w, http.StatusServiceUnavailable, CodeNotReady, "not ready: the first reconcile has not finished, or (serve --ready-when pools) a pool is still starting; GET /v1/pools shows them")
		return
	}
	writeJSON(w, http.StatusOK, Readiness{Ready: true})
}

// poolReady is one pool's readiness probe: 200 when the pool is Ready, 503
// otherwise, with its phase and reason either way. It is open like /readyz,
// so an unknown pool's 404 does not list the pools the daemon knows.
func (h *handler) poolReady(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	p, ok := h.src.Pool(id)
	if !ok {
		writeError(w, http.StatusNotFound, CodeUnknownPool, fmt.Sprintf("unknown pool %q", id))
		return
	}
	p = normalizePool(id, p)
	status := http.StatusOK
	if !p.Ready {
		status = http.StatusServiceUnavailable
	}
	writeJSON(w, status, PoolReadiness{Pool: p.Pool, Ready: p.Ready, Phase: p.Phase, Reason: p.Reason})
}

func (h *handler) pools(w http.ResponseWriter, _ *http.Request) {
	writeJSON(w, http.StatusOK, h.allPools())
}

func (h *handler) pool(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	p, ok := h.src.Pool(id)
	if !ok {
		h.unknownPools(w, []string{id})
		return
	}
	writeJSON(w, http.StatusOK, normalizePool(id, p))
}

func (h *handler) config(w http.ResponseWriter, _ *http.Request) {
	c := h.src.Config()
	c.Files = nonNil(c.Files)
	c.Errors = nonNil(c.Errors)
	c.Pools = nonNil(c.Pools)
	c.Nodes = nonNil(c.Nodes)
	writeJSON(w, http.StatusOK, c)
}

func (h *handler) metricsRoute(w http.ResponseWriter, r *http.Request) {
	if h.metrics == nil {
		writeError(w, http.StatusNotFound, CodeNotFound, "this daemon serves no metrics")
		return
	}
	h.metrics.ServeHTTP(w, r)
}

func (h *handler) resetOne(w http.ResponseWriter, r *http.Request) {
	ids := []string{r.PathValue("id")}
	if h.unknownPools(w, ids) {
		return
	}
	h.act(w, r, ids, false, func(ctx context.Context) error { return h.src.Reset(ctx, ids) })
}

func (h *handler) reset(w http.ResponseWriter, r *http.Request) {
	var req ResetRequest
	if !decodeBody(w, r, &req) {
		return
	}
	ids, ok := poolList(w, req.Pools)
	if !ok {
		return
	}
	if len(ids) == 0 {
		writeError(w, http.StatusBadRequest, CodeBadRequest, `name the pools to reset: {"pools": ["ID", ...]}`)
		return
	}
	if h.unknownPools(w, ids) {
		return
	}
	h.act(w, r, ids, false, func(ctx context.Context) error { return h.src.Reset(ctx, ids) })
}

func (h *handler) stop(w http.ResponseWriter, r *http.Request) {
	var req StopRequest
	if !decodeBody(w, r, &req) {
		return
	}
	ids, ok := poolList(w, req.Pools)
	if !ok {
		return
	}
	if req.All == (len(ids) > 0) {
		writeError(w, http.StatusBadRequest, CodeBadRequest, `name the pools to stop, or all: {"pools": ["ID", ...]} or {"all": true}`)
		return
	}
	if h.unknownPools(w, ids) {
		return
	}
	h.act(w, r, ids, req.All, func(ctx context.Context) error { return h.src.Stop(ctx, ids, req.All) })
}

// act runs an operator action and answers with the pools it acted on, as
// they are after it.
func (h *handler) act(w http.ResponseWriter, r *http.Request, ids []string, all bool, do func(context.Context) error) {
	if err := do(r.Context()); err != nil {
		if errors.Is(err, ErrUnknownPool) {
			writeError(w, http.StatusNotFound, CodeUnknownPool, err.Error())
		} else {
			writeError(w, http.StatusInternalServerError, CodeInternal, err.Error())
		}
		return
	}
	if all {
		writeJSON(w, http.StatusOK, h.allPools())
		return
	}
	out := []Pool{}
	for _, id := range ids {
		if p, ok := h.src.Pool(id); ok {
			out = append(out, normalizePool(id, p))
		}
	}
	writeJSON(w, http.StatusOK, out)
}

func (h *handler) allPools() []Pool {
	src := h.src.Pools()
	out := make([]Pool, 0, len(src))
	for _, p := range src {
		out = append(out, normalizePool(p.Pool, p))
	}
	slices.SortFunc(out, func(a, b Pool) int { return cmp.Compare(a.Pool, b.Pool) })
	return out
}

// unknownPools answers 404 and returns true when a pool of ids is unknown.
func (h *handler) unknownPools(w http.ResponseWriter, ids []string) bool {
	var unknown []string
	for _, id := range ids {
		if _, ok := h.src.Pool(id); !ok {
			unknown = append(unknown, fmt.Sprintf("%q", id))
		}
	}
	if len(unknown) == 0 {
		return false
	}
	known := make([]string, 0, 11)
	for _, p := range h.allPools() {
		if len(known) == 10 {
			known = append(known, "...")
			break
		}
		known = append(known, p.Pool)
	}
	if len(known) == 0 {
		known = append(known, "none")
	}
	noun := "pool"
	if len(unknown) > 1 {
		noun = "pools"
	}
	writeError(w, http.StatusNotFound, CodeUnknownPool, fmt.Sprintf("unknown %s %s (known: %s)",
		noun, strings.Join(unknown, ", "), strings.Join(known, ", ")))
	return true
}

// poolList checks a body's pool ids and drops repeats.
func poolList(w http.ResponseWriter, pools []string) ([]string, bool) {
	var ids []string
	for _, id := range pools {
		if id == "" {
			writeError(w, http.StatusBadRequest, CodeBadRequest, "empty pool id in pools")
			return nil, false
		}
		if !slices.Contains(ids, id) {
			ids = append(ids, id)
		}
	}
	return ids, true
}

// decodeBody decodes a request body of at most MaxBodyBytes that holds
// exactly one JSON object with no unknown fields into v; on a bad body it
// answers 400 (413 when too large) and returns false.
func decodeBody(w http.ResponseWriter, r *http.Request, v any) bool {
	r.Body = http.MaxBytesReader(w, r.Body, MaxBodyBytes)
	dec := json.NewDecoder(r.Body)
	dec.DisallowUnknownFields()
	err := dec.Decode(v)
	if err == nil {
		if _, terr := dec.Token(); terr != io.EOF {
			err = errors.New("data after the JSON object")
			if terr != nil {
				var tooLarge *http.MaxBytesError
				if errors.As(terr, &tooLarge) {
					err = terr
				}
			}
		}
	}
	if err == nil {
		return true
	}
	var tooLarge *http.MaxBytesError
	switch {
	case errors.As(err, &tooLarge):
		writeError(w, http.StatusRequestEntityTooLarge, CodeTooLarge, fmt.Sprintf("request body over %d bytes", MaxBodyBytes))
	case errors.Is(err, io.EOF):
		writeError(w, http.StatusBadRequest, CodeBadRequest, "empty request body: want a JSON object")
	default:
		writeError(w, http.StatusBadRequest, CodeBadRequest, "bad request body: "+err.Error())
	}
	return false
}

// normalizePool fills in what a Source may leave zero: the id, an empty
// GPU list rather than null, and a closed breaker.
func normalizePool(id string, p Pool) Pool {
	if p.Pool == "" {
		p.Pool = id
	}
	p.GPUs = nonNil(p.GPUs)
	if p.Breaker == "" {
		p.Breaker = BreakerClosed
	}
	return p
}

func nonNil[T any](s []T) []T {
	if s == nil {
		return []T{}
	}
	return s
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	data, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		status = http.StatusInternalServerError
		data, _ = json.Marshal(Error{Error: CodeInternal, Message: "encoding the response: " + err.Error()})
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	_, _ = w.Write(append(data, '\n'))
}

func writeError(w http.ResponseWriter, status int, code, message string) {
	writeJSON(w, status, Error{Error: code, Message: message})
}
