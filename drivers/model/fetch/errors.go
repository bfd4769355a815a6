package fetch

import (
	"errors"
	"fmt"
	"net/http"
	"syscall"

	"github.com/poolmanagerd/pool-managerd/drivers/model/cache"
)

// The failure classes of a fetch (Error.Class).
const (
	// ClassDigestMismatch: the downloaded bytes' sha256 (or size) is not the
	// declared one. The partial file is deleted.
	ClassDigestMismatch = "model_digest_mismatch"
	// ClassInsufficientDisk: the model does not fit in the cache's free
	// space (or under its size limit); nothing was downloaded.
	ClassInsufficientDisk = "insufficient_disk"
	// ClassHTTP: the source answered an HTTP error; Error.Code holds it.
	ClassHTTP = "fetch_http"
	// ClassStalled: no byte arrived for the stall timeout.
	ClassStalled = "fetch_stalled"
	// ClassNetwork: the connection failed (refused, reset, dropped) more
	// times than a fetch retries.
	ClassNetwork = "fetch_network"
	// ClassNotCached: offline mode, and the model is not in the cache with a
	// matching digest.
	ClassNotCached = "model_not_cached"
)

// Error is a failed fetch. It never holds the token.
type Error struct {
	// Class is one of the Class constants.
	Class string
	// Message says what failed, naming the URL.
	Message string
	// Hint says what to do about it.
	Hint string
	// Code is the HTTP status for ClassHTTP, else 0.
	Code int
	// Need and Free are the bytes of a ClassInsufficientDisk failure.
	Need, Free int64
	// Temporary reports a failure that a later try may not meet (a 5xx, 429,
	// a stall, a dropped connection): the caller retries it with backoff.
	Temporary bool
	// Err is the underlying error, if any.
	Err error
}

func (e *Error) Error() string {
	s := e.Class + ": " + e.Message
	if e.Hint != "" {
		s += " (" + e.Hint + ")"
	}
	return s
}

func (e *Error) Unwrap() error { return e.Err }

// ClassOf returns the class of err's *Error, or "" when it has none.
func ClassOf(err error) string {
	var fe *Error
	if errors.As(err, &fe) {
		return fe.Class
	}
	return ""
}

func httpError(url string, code int) *Error {
	e := &Error{
		Class:   ClassHTTP,
		Code:    code,
		Message: fmt.Sprintf("GET %s: HTTP %d %s", url, code, http.StatusText(code)),
	}
	switch {
	case code == http.StatusNotFound:
		e.Hint = "not found at the source — check the path and the revision"
	case code == http.StatusUnauthorized || code == http.StatusForbidden:
		e.Hint = "the source refuses access: set the token (--model-token-file, or POOL_MANAGERD_MODEL_TOKEN) and list the source's host in --model-token-hosts (https only)"
	case code == http.StatusTooManyRequests:
		e.Hint, e.Temporary = "the source limits the request rate; retried later", true
	case code >= 500:
		e.Hint, e.Temporary = "the source failed; retried later", true
	}
	return e
}

func diskError(url string, de *cache.DiskError) *Error {
	return &Error{
		Class:   ClassInsufficientDisk,
		Message: fmt.Sprintf("%s: %v", url, de),
		Hint:    "free disk space, raise --model-cache-max, or remove models no pool uses",
		Need:    de.Need, Free: de.Free,
		Err: de,
	}
}

// writeError classifies an error writing the partial file: a full disk is
// insufficient_disk.
func writeError(url string, err error) error {
	if errors.Is(err, syscall.ENOSPC) || errors.Is(err, syscall.EDQUOT) {
		return &Error{
			Class: ClassInsufficientDisk, Message: fmt.Sprintf("%s: the disk filled up: %v", url, err),
			Hint: "free disk space or lower the number of parallel fetches", Err: err,
		}
	}
	return fmt.Errorf("%s: writing the partial file: %w", url, err)
}
