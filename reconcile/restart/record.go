package restart

import "time"

// Record is a pool's restart and circuit breaker history.
type Record struct {
	// Failures are the recent failures, within the breaker's window.
	Failures            []time.Time  `json:"failures,omitzero"`
	ConsecutiveFailures int          `json:"consecutiveFailures,omitzero"`
	NextRetry           time.Time    `json:"nextRetry,omitzero"`
	LastError           *ErrorRecord `json:"lastError,omitzero"`
	BreakerOpenedAt     time.Time    `json:"breakerOpenedAt,omitzero"`
	BreakerOpenCount    int          `json:"breakerOpenCount,omitzero"`
	// BreakerRetryAt is when an open breaker allows its half-open try.
	BreakerRetryAt time.Time `json:"breakerRetryAt,omitzero"`
	BreakerState   string    `json:"breakerState,omitzero"`
	Restarts       int       `json:"restarts,omitzero"`
}

// ErrorRecord is the last error of a pool.
type ErrorRecord struct {
	Class   string    `json:"class"`
	Message string    `json:"message"`
	Hint    string    `json:"hint,omitzero"`
	Time    time.Time `json:"time"`
}
