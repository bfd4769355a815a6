// Package api is the daemon's HTTP API: the handler that `pool-managerd
// serve` serves, the listener that records its address in the state
// directory, and the client that the CLI's reset and stop commands use while
// the daemon holds the state lock.
//
// The routes (documented in docs/openapi.yaml, which a test checks against
// the real responses):
//
//	GET  /healthz               200 "ok", always, without a token
//	GET  /readyz                200 once the first reconcile is done, else 503; without a token
//	GET  /v1/pools              every pool: phase, preload, engine, GPUs, errors
//	GET  /v1/pools/{id}         one pool (404 for an unknown one)
//	GET  /v1/pools/{id}/ready   200 when the pool is Ready, else 503 (404 unknown); without a token
//	GET  /v1/config             the config: valid, files, last loads, diagnostics
//	GET  /metrics               the Prometheus metrics
//	POST /v1/pools/{id}/reset   close one pool's breaker and clear its backoff
//	POST /v1/reset              the same for {"pools": [...]}
//	POST /v1/stop               stop {"pools": [...]} or {"all": true}
//
// The daemon owns the state; the handler only asks it, through [Source].
//
// Security: on a non-loopback address the daemon needs a bearer token
// (POOL_MANAGERD_TOKEN, see [CheckListen]); with a token every route but
// the probes /healthz, /readyz and /v1/pools/{id}/ready requires it, compared in constant time. Without a token (loopback
// only) requests must name the host as an IP address or localhost, which
// defeats DNS rebinding, and cross-origin browser POSTs are refused always.
package api
