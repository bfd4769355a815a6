package api

import (
	"errors"
	"time"

	"github.com/poolmanagerd/pool-managerd/reconcile"
	"github.com/poolmanagerd/pool-managerd/schema"
)

// Pool is one pool as GET /v1/pools and GET /v1/pools/{id} show it.
type Pool struct {
	// Pool is the pool's id.
	Pool string `json:"pool"`
	// Phase is where the pool is in its lifecycle (see reconcile.Phase).
	Phase reconcile.Phase `json:"phase"`
	// Ready is true when the engine passed its health check and its placement holds.
	Ready bool `json:"ready"`
	// Reason says why the pool is in its phase, for people (the lifecycle's
	// reason: "running, healthy", "backoff: not before ...", "waiting for its
	// GPUs: ...").
	Reason string `json:"reason,omitempty"`
	// Fetch is the download of the pool's model (model.source) that its
	// start waits on: in phase Fetching, or while a replace downloads the
	// new spec's model and the running engine serves the old one; nil
	// otherwise.
	Fetch *Fetch `json:"fetch,omitempty"`
	// Preload is the engine's model load; nil when no engine was started.
	Preload *Preload `json:"preload,omitempty"`
	// PID, Port and Endpoint are the running engine's; zero without one.
	PID      int    `json:"pid,omitempty"`
	Port     int    `json:"port,omitempty"`
	Endpoint string `json:"endpoint,omitempty"`
	// GPUs are the GPUs the engine holds memory on; empty without an engine.
	GPUs []GPU `json:"gpus"`
	// Restarts counts the restarts of the pool's engine.
	Restarts int `json:"restarts"`
	// Breaker is the circuit breaker's state: BreakerClosed, BreakerOpen or
	// BreakerHalfOpen. The handler shows an empty one as closed.
	Breaker string `json:"breaker"`
	// BreakerRetryAt is when an open breaker allows its half-open try.
	BreakerRetryAt time.Time `json:"breakerRetryAt,omitzero"`
	// LastError is the pool's last failure; nil when none.
	LastError *LastError `json:"lastError,omitempty"`
	// NextRetry is when the next start is tried, while a backoff or an open
	// breaker waits (also a replace whose start failed while its engine
	// serves on).
	NextRetry time.Time `json:"nextRetry,omitzero"`
	// RemovalAt is set while the pool, gone from the config, waits for its
	// removal to settle: its engine is stopped then unless it comes back.
	RemovalAt time.Time `json:"removalAt,omitzero"`
	// Log is the path of the engine's log file.
	Log string `json:"log,omitempty"`
}

// The states of a circuit breaker (Pool.Breaker), the names the state file keeps.
const (
	BreakerClosed   = "closed"
	BreakerOpen     = "open"
	BreakerHalfOpen = "half-open"
)

// Preload is the model load of a pool's engine.
type Preload struct {
	// State is PreloadPending, PreloadLoading, PreloadLoaded or PreloadFailed.
	State string `json:"state"`
	// StartedAt is when the engine was started; zero while pending.
	StartedAt time.Time `json:"startedAt,omitzero"`
	// LoadedAt is when the engine first passed its health check.
	LoadedAt time.Time `json:"loadedAt,omitzero"`
	// DurationSeconds is the time from StartedAt to LoadedAt (or to the
	// failure); while loading, the time so far.
	DurationSeconds float64 `json:"durationSeconds,omitzero"`
}

// Fetch is how far the download of a pool's model has come.
type Fetch struct {
	// BytesDone are the bytes on disk, counting those of a resumed download.
	BytesDone int64 `json:"bytesDone"`
	// BytesTotal is the model's size; 0 while it is not known.
	BytesTotal int64 `json:"bytesTotal"`
	// BytesPerSecond is the recent download rate.
	BytesPerSecond float64 `json:"bytesPerSecond"`
	// StartedAt is when the download began.
	StartedAt time.Time `json:"startedAt,omitzero"`
}

// The states of a preload (Preload.State).
const (
	PreloadPending = "pending"
	PreloadLoading = "loading"
	PreloadLoaded  = "loaded"
	PreloadFailed  = "failed"
)

// GPU is the memory a pool's engine holds on one GPU.
type GPU struct {
	Index       int    `json:"index"`
	UUID        string `json:"uuid"`
	MemoryBytes uint64 `json:"memoryBytes"`
}

// LastError is a pool's last failure.
type LastError struct {
	// Class is one of restart's Class constants ("insufficient_vram", "exited", ...).
	Class   string `json:"class"`
	Message string `json:"message"`
	// Hint says what to do about it (restart.Failure.HintFor).
	Hint string    `json:"hint"`
	Time time.Time `json:"time"`
}

// Config is the daemon's config as GET /v1/config shows it.
type Config struct {
	// Valid is false when the last load failed; the daemon then keeps
	// running the last good config.
	Valid bool `json:"valid"`
	// Dir is the config directory.
	Dir string `json:"dir"`
	// Files are the config files the last load read.
	Files []string `json:"files"`
	// LastLoad is when the config was last loaded, successfully or not.
	LastLoad time.Time `json:"lastLoad,omitzero"`
	// LastGoodLoad is when the config in force was loaded.
	LastGoodLoad time.Time `json:"lastGoodLoad,omitzero"`
	// Errors are the diagnostics of the last load when it failed; empty when Valid.
	Errors []schema.Diagnostic `json:"errors"`
	// Pools and Nodes are the ids of the pools and nodes of the config in force.
	Pools []string `json:"pools"`
	Nodes []string `json:"nodes"`
	// LastAppliedRevision is the revision of the config in force;
	// LastAttemptedRevision that of the last config loaded, applied or not
	// (Flux's lastAppliedRevision and lastAttemptedRevision). Absent when
	// the config is a plain directory outside Git.
	LastAppliedRevision   *Revision `json:"lastAppliedRevision,omitempty"`
	LastAttemptedRevision *Revision `json:"lastAttemptedRevision,omitempty"`
	// HeldBack says why the last config that loaded is not applied (it
	// leaves the node no pools while engines run); absent when it is.
	HeldBack *HeldBack `json:"heldBack,omitempty"`
	// Git is the built-in Git source's state; absent for a plain directory.
	Git *GitSource `json:"git,omitempty"`
}

// Revision is the version of a config tree: a commit.
type Revision struct {
	// Commit is the full commit hash.
	Commit string `json:"commit"`
	// Ref is the branch or tag it came from, when known.
	Ref string `json:"ref,omitempty"`
	// Dirty: the config directory, a Git work tree, has changes that are
	// not committed (only for a plain directory).
	Dirty bool `json:"dirty,omitempty"`
}

// String is the revision as logs and status print it: the commit, "+dirty"
// when the work tree has uncommitted changes, and the ref.
func (r *Revision) String() string {
	if r == nil {
		return ""
	}
	s := r.Commit
	if r.Dirty {
		s += "+dirty"
	}
	if r.Ref != "" {
		s += " (" + r.Ref + ")"
	}
	return s
}

// HeldBack is a config that loaded and is not applied.
type HeldBack struct {
	Reason string    `json:"reason"`
	Since  time.Time `json:"since"`
}

// GitSource is the state of serve --git: the repository it follows and
// how its last fetches went.
type GitSource struct {
	URL  string `json:"url"`
	Ref  string `json:"ref"`
	Path string `json:"path,omitempty"`
	// IntervalSeconds is the time between fetches.
	IntervalSeconds float64 `json:"intervalSeconds"`
	// LastFetch is when the last fetch ended; LastSuccess the last one that worked.
	LastFetch   time.Time `json:"lastFetch,omitzero"`
	LastSuccess time.Time `json:"lastSuccess,omitzero"`
	// Error is the last fetch's error; empty when it worked.
	Error string `json:"error,omitempty"`
	// Failures counts the fetches that failed in a row; retries back off.
	Failures int `json:"failures"`
	// NextFetch is when the next fetch is due.
	NextFetch time.Time `json:"nextFetch,omitzero"`
	// Fetched is the commit the last successful fetch found on the ref.
	Fetched string `json:"fetched,omitempty"`
}

// Readiness is GET /readyz's body when the daemon is ready.
type Readiness struct {
	Ready bool `json:"ready"`
}

// PoolReadiness is GET /v1/pools/{id}/ready's body, sent with 200 when the
// pool is Ready and with 503 when it is not.
type PoolReadiness struct {
	Pool  string          `json:"pool"`
	Ready bool            `json:"ready"`
	Phase reconcile.Phase `json:"phase"`
	// Reason says why the pool is in its phase, as Pool.Reason.
	Reason string `json:"reason,omitempty"`
}

// ResetRequest is POST /v1/reset's body.
type ResetRequest struct {
	Pools []string `json:"pools"`
}

// StopRequest is POST /v1/stop's body: Pools, or All.
type StopRequest struct {
	Pools []string `json:"pools,omitempty"`
	All   bool     `json:"all,omitempty"`
}

// Error is the body of every JSON error response.
type Error struct {
	// Error is one of the Code constants.
	Error string `json:"error"`
	// Message says what went wrong, for people.
	Message string `json:"message"`
}

// The codes of Error.Error.
const (
	CodeBadRequest   = "bad_request"  // 400: a body that is not the documented JSON
	CodeUnauthorized = "unauthorized" // 401: no or a wrong bearer token
	CodeForbidden    = "forbidden"    // 403: a cross-origin browser request or a Host that is not an address
	CodeNotFound     = "not_found"    // 404: metrics not served
	CodeUnknownPool  = "unknown_pool" // 404: an operator action or a lookup on a pool the daemon does not know
	CodeTooLarge     = "too_large"    // 413: a body over MaxBodyBytes
	CodeInternal     = "internal"     // 500: the action failed
	CodeNotReady     = "not_ready"    // 503: the first reconcile has not finished (or, with serve --ready-when pools, a pool is still starting)
)

// ErrUnknownPool is returned (wrapped) by a Source's Reset or Stop for a pool
// it does not know; the handler answers 404. The Client's errors for a 404
// on a pool wrap it too.
var ErrUnknownPool = errors.New("unknown pool")

// ErrUnauthorized is wrapped by the Client's errors for a 401.
var ErrUnauthorized = errors.New("unauthorized")
