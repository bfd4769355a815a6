package api

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// AddrFileName is the file in the state directory that holds the address
// the daemon's API listens on.
const AddrFileName = "api.addr"

// TokenEnv is the environment variable that holds the API's bearer token.
const TokenEnv = "POOL_MANAGERD_TOKEN"

// ErrTokenRequired is wrapped by CheckListen's error for a non-loopback
// address without a token.
var ErrTokenRequired = errors.New("a bearer token is required")

// CheckListen checks a listen address (HOST:PORT) before the daemon
// listens: an address that is not loopback (127.0.0.0/8, ::1 or localhost)
// needs a token, since anyone who reaches it could stop the engines. An empty
// host (":9200") listens on every interface and needs one too.
func CheckListen(addr string, token string) error {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("listen address %q: want HOST:PORT, such as 127.0.0.1:9200: %w", addr, err)
	}
	if token != "" || isLoopback(host) {
		return nil
	}
	what := fmt.Sprintf("%q is not a loopback address", host)
	if host == "" {
		what = "it listens on every interface"
	} else if a, err := netip.ParseAddr(host); err == nil && a.IsUnspecified() {
		what = fmt.Sprintf("%s listens on every interface", host)
	}
	return fmt.Errorf("refusing to serve the API on %s without a bearer token: %s; set %s, or listen on 127.0.0.1: %w",
		addr, what, TokenEnv, ErrTokenRequired)
}

func isLoopback(host string) bool {
	if strings.EqualFold(host, "localhost") {
		return true
	}
	a, err := netip.ParseAddr(host)
	return err == nil && a.IsLoopback()
}

// Listen listens on addr (a port of 0 picks a free one) and writes the
// address it got into stateDir/api.addr, atomically, for ReadAddr. For a
// wildcard address (0.0.0.0, ::, an empty host) the file holds a loopback
// address with the port, so the CLI can dial it. Listen does not call
// CheckListen.
func Listen(ctx context.Context, addr string, stateDir string) (net.Listener, error) {
	var lc net.ListenConfig
	ln, err := lc.Listen(ctx, "tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("api: %w", err)
	}
	if err := writeAddr(stateDir, dialAddr(addr, ln.Addr())); err != nil {
		_ = ln.Close()
		return nil, err
	}
	return ln, nil
}

// dialAddr is where a client on this host reaches a listener's address a,
// listened on as addr. A wildcard listener is reached on loopback: ::1 when
// addr asked for IPv6's wildcard, else 127.0.0.1 (Go listens on 0.0.0.0 and
// on an empty host dual-stack when it can, reporting [::], and 127.0.0.1
// reaches it either way).
func dialAddr(addr string, a net.Addr) string {
	tcp, ok := a.(*net.TCPAddr)
	if !ok {
		return a.String()
	}
	ap := tcp.AddrPort()
	if !ap.Addr().Unmap().IsUnspecified() {
		return ap.String()
	}
	loop := netip.AddrFrom4([4]byte{127, 0, 0, 1})
	if host, _, err := net.SplitHostPort(addr); err == nil {
		if h, err := netip.ParseAddr(host); err == nil && h.Is6() && !h.Is4In6() {
			loop = netip.IPv6Loopback()
		}
	}
	return netip.AddrPortFrom(loop, ap.Port()).String()
}

// writeAddr writes addr to stateDir/api.addr: a temporary file, synced and
// renamed over it, then the directory synced.
func writeAddr(stateDir, addr string) error {
	if err := os.MkdirAll(stateDir, 0o755); err != nil {
		return fmt.Errorf("recording the API address: %w", err)
	}
	tmp, err := os.CreateTemp(stateDir, "."+AddrFileName+".tmp-*")
	if err != nil {
		return fmt.Errorf("recording the API address: %w", err)
	}
	renamed := false
	defer func() {
		if !renamed {
			_ = tmp.Close()
			_ = os.Remove(tmp.Name())
		}
	}()
	if _, err := tmp.WriteString(addr + "\n"); err != nil {
		return fmt.Errorf("recording the API address: %w", err)
	}
	if err := tmp.Chmod(0o644); err != nil {
		return fmt.Errorf("recording the API address: %w", err)
	}
	if err := tmp.Sync(); err != nil {
		return fmt.Errorf("recording the API address: %w", err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("recording the API address: %w", err)
	}
	path := filepath.Join(stateDir, AddrFileName)
	if err := os.Rename(tmp.Name(), path); err != nil {
		return fmt.Errorf("recording the API address: %w", err)
	}
	renamed = true
	if d, err := os.Open(stateDir); err == nil {
		_ = d.Sync()
		_ = d.Close()
	}
	return nil
}

// ReadAddr returns the address the daemon recorded in stateDir/api.addr. Its
// error wraps fs.ErrNotExist when there is none. The file outlives a daemon
// that was killed: whether a daemon runs is the state lock's to say.
func ReadAddr(stateDir string) (string, error) {
	path := filepath.Join(stateDir, AddrFileName)
	data, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return "", fmt.Errorf("no daemon API address in %s (is pool-managerd serve running?): %w", stateDir, err)
	}
	if err != nil {
		return "", fmt.Errorf("reading the daemon API address: %w", err)
	}
	addr := strings.TrimSpace(string(data))
	if _, _, err := net.SplitHostPort(addr); err != nil {
		return "", fmt.Errorf("%s: bad address %q: %w", path, addr, err)
	}
	return addr, nil
}

// RemoveAddr removes stateDir/api.addr, if there is one. The daemon calls it
// when it stops serving, before it lets go of the state lock.
func RemoveAddr(stateDir string) error {
	err := os.Remove(filepath.Join(stateDir, AddrFileName))
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("removing the API address: %w", err)
	}
	return nil
}

// ShutdownTimeout is how long Serve waits for requests in flight when its
// context ends before it cuts them off.
const ShutdownTimeout = 5 * time.Second

// Serve serves h on ln until ctx ends, then shuts the server down: it stops
// accepting, waits up to ShutdownTimeout for requests in flight and closes
// the rest. It returns nil after a clean shutdown, and the server's error
// when serving fails. Requests have no write timeout, since a stop waits for
// the pools' grace periods.
func Serve(ctx context.Context, ln net.Listener, h http.Handler) error {
	srv := &http.Server{
		Handler:           h,
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       30 * time.Second,
		IdleTimeout:       2 * time.Minute,
		MaxHeaderBytes:    64 << 10,
	}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	select {
	case err := <-errc:
		return fmt.Errorf("api: %w", err)
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.Background(), ShutdownTimeout)
	defer cancel()
	err := srv.Shutdown(sctx)
	if err != nil {
		_ = srv.Close()
		err = fmt.Errorf("api: requests still running after %s were cut off: %w", ShutdownTimeout, err)
	}
	if serr := <-errc; !errors.Is(serr, http.ErrServerClosed) && err == nil {
		err = fmt.Errorf("api: %w", serr)
	}
	return err
}
