package api

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"net/url"
	"strings"
)

// Client calls a daemon's API; the CLI uses it while the daemon holds the
// state lock.
type Client struct {
	base  string
	token string
	// HTTP sends the requests; http.DefaultClient when nil. Give it no
	// timeout shorter than a stop's grace periods: ctx bounds each call.
	HTTP *http.Client
}

// NewClient returns a client of the daemon at addr (HOST:PORT as ReadAddr
// returns it, or a base URL such as http://host:9200). An empty token sends
// no Authorization header.
func NewClient(addr, token string) *Client {
	base := addr
	if !strings.Contains(base, "://") {
		base = "http://" + base
	}
	return &Client{base: strings.TrimRight(base, "/"), token: token}
}

// StatusError is the Client's error for a response other than 2xx: the
// status and the server's error code and message. It wraps ErrUnknownPool
// for an unknown pool and ErrUnauthorized for a 401.
type StatusError struct {
	StatusCode int
	// Code is the Error body's code (the Code constants); empty when the
	// body was not an Error.
	Code string
	// Message is the server's message, or the start of a body that was not an Error.
	Message string
}

// Error returns the server's message.
func (e *StatusError) Error() string {
	if e.Message == "" {
		return fmt.Sprintf("daemon API: %d %s", e.StatusCode, http.StatusText(e.StatusCode))
	}
	return e.Message
}

// Unwrap returns ErrUnknownPool or ErrUnauthorized, or nil.
func (e *StatusError) Unwrap() error {
	switch {
	case e.Code == CodeUnknownPool:
		return ErrUnknownPool
	case e.StatusCode == http.StatusUnauthorized:
		return ErrUnauthorized
	}
	return nil
}

// Ready reports whether the daemon finished its first reconcile.
func (c *Client) Ready(ctx context.Context) (bool, error) {
	var r Readiness
	err := c.do(ctx, http.MethodGet, "/readyz", nil, &r)
	var se *StatusError
	if errors.As(err, &se) && se.StatusCode == http.StatusServiceUnavailable {
		return false, nil
	}
	return r.Ready, err
}

// Pools returns every pool.
func (c *Client) Pools(ctx context.Context) ([]Pool, error) {
	var ps []Pool
	err := c.do(ctx, http.MethodGet, "/v1/pools", nil, &ps)
	return ps, err
}

// Pool returns one pool; its error wraps ErrUnknownPool for an unknown one.
func (c *Client) Pool(ctx context.Context, id string) (Pool, error) {
	var p Pool
	err := c.do(ctx, http.MethodGet, "/v1/pools/"+url.PathEscape(id), nil, &p)
	return p, err
}

// Config returns the daemon's config state.
func (c *Client) Config(ctx context.Context) (Config, error) {
	var cfg Config
	err := c.do(ctx, http.MethodGet, "/v1/config", nil, &cfg)
	return cfg, err
}

// Reset closes the named pools' circuit breakers and clears their backoff,
// and returns the pools as they are after it.
func (c *Client) Reset(ctx context.Context, pools []string) ([]Pool, error) {
	var ps []Pool
	err := c.do(ctx, http.MethodPost, "/v1/reset", ResetRequest{Pools: pools}, &ps)
	return ps, err
}

// Stop stops the named pools' engines, or every engine with all (pools
// then empty), and returns the pools as they are after it (every pool for all).
func (c *Client) Stop(ctx context.Context, pools []string, all bool) ([]Pool, error) {
	var ps []Pool
	err := c.do(ctx, http.MethodPost, "/v1/stop", StopRequest{Pools: pools, All: all}, &ps)
	return ps, err
}

// do sends a request with body (JSON, when not nil) and decodes a 2xx
// response's JSON into out.
func (c *Client) do(ctx context.Context, method, path string, body, out any) error {
	var rd io.Reader
	if body != nil {
		data, err := json.Marshal(body)
		if err != nil {
			return err
		}
		rd = bytes.NewReader(data)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.base+path, rd)
	if err != nil {
		return fmt.Errorf("daemon API: %w", err)
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	req.Header.Set("Accept", "application/json")
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	hc := c.HTTP
	if hc == nil {
		hc = http.DefaultClient
	}
	resp, err := hc.Do(req)
	if err != nil {
		return fmt.Errorf("daemon API: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		return readError(resp)
	}
	if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
		return fmt.Errorf("daemon API: %s %s: decoding the response: %w", method, path, err)
	}
	return nil
}

func readError(resp *http.Response) error {
	data, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	se := &StatusError{StatusCode: resp.StatusCode}
	var e Error
	if mt, _, _ := mime.ParseMediaType(resp.Header.Get("Content-Type")); mt == "application/json" && json.Unmarshal(data, &e) == nil && e.Error != "" {
		se.Code, se.Message = e.Error, e.Message
		return se
	}
	if msg := strings.TrimSpace(string(data)); msg != "" {
		if len(msg) > 200 {
			msg = msg[:200] + "..."
		}
		se.Message = fmt.Sprintf("daemon API: %d %s: %s", resp.StatusCode, http.StatusText(resp.StatusCode), msg)
	}
	return se
}
