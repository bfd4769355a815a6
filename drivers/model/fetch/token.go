package fetch

import (
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"strconv"
	"strings"
)

// DefaultTokenHost is the host the command line sends the token to when
// no --model-token-hosts is given: the Hugging Face Hub.
const DefaultTokenHost = "huggingface.co"

// TokenSource returns the token for the sources, "" for none. It is called
// for every request that may carry it (see Auth), so a rotated token file
// is picked up.
type TokenSource func() (string, error)

// ReadToken is the one reader of the token for private sources: the
// content of file when file is given (trimmed; an unreadable or empty file
// is an error), else the environment variable env (trimmed), else "". The
// file wins, as it does for --git-token-file.
func ReadToken(file, env string) (string, error) {
	if file == "" {
		return strings.TrimSpace(os.Getenv(env)), nil
	}
	b, err := os.ReadFile(file)
	if err != nil {
		return "", fmt.Errorf("token file: %w", err)
	}
	t := strings.TrimSpace(string(b))
	if t == "" {
		return "", fmt.Errorf("token file %s is empty", file)
	}
	return t, nil
}

// TokenFromFileOrEnv is a TokenSource that calls ReadToken(file, env) each
// time.
func TokenFromFileOrEnv(file, env string) TokenSource {
	return func() (string, error) { return ReadToken(file, env) }
}

// StaticToken is a TokenSource of a token read once ("" for none).
func StaticToken(token string) TokenSource {
	if token == "" {
		return nil
	}
	return func() (string, error) { return token, nil }
}

// Auth is the token for private sources and the hosts it may be sent to.
// The zero value sends no token anywhere.
type Auth struct {
	// Token gives the token; nil means none. It is called only for a
	// request that may carry it.
	Token TokenSource
	// Hosts are where the token may go (see TokenAllowed); none means
	// nowhere. Check them with CheckTokenHosts.
	Hosts []string
}

// For returns the token to send with a request for target, reached from
// the source URL origin (target itself for the first request, the URL a
// redirect leads to after it): the token when TokenAllowed says so, else
// "".
func (a Auth) For(origin, target *url.URL) (string, error) {
	if a.Token == nil || !TokenAllowed(a.Hosts, origin, target) {
		return "", nil
	}
	return a.Token()
}

// TokenAllowed is the one place that decides whether a request for target,
// reached from the source URL origin, may carry the token. It may when:
//
//   - origin's host is one of hosts: an exact, case-insensitive match of
//     the host name ("huggingface.co" is not "cdn-lfs.huggingface.co", nor
//     the other way round), on any port, or of HOST:PORT on that port only
//     (IPv6 as [ADDR] or [ADDR]:PORT);
//   - origin is https, or http on a loopback host (localhost, 127.0.0.0/8,
//     ::1) that is listed: the token never crosses a network in clear;
//   - target has origin's scheme, host and port: a redirect that changes
//     any of them (to a CDN, to another port, from https to http) drops
//     the token, wherever it leads, listed hosts included.
func TokenAllowed(hosts []string, origin, target *url.URL) bool {
	if origin == nil || target == nil {
		return false
	}
	scheme := strings.ToLower(origin.Scheme)
	host, port := hostPort(origin)
	if scheme != strings.ToLower(target.Scheme) {
		return false
	}
	if th, tp := hostPort(target); th != host || tp != port {
		return false
	}
	switch scheme {
	case "https":
	case "http":
		if !isLoopback(host) {
			return false
		}
	default:
		return false
	}
	for _, h := range hosts {
		lh, lp := splitTokenHost(h)
		if lh == host && (lp == "" || lp == port) {
			return true
		}
	}
	return false
}

// CheckTokenHosts checks a list of token hosts: each a host name or IP
// address, optionally with :PORT (IPv6 in brackets), without a scheme, a
// path or a wildcard.
func CheckTokenHosts(hosts []string) error {
	for _, h := range hosts {
		switch {
		case strings.TrimSpace(h) == "":
			return errors.New("an empty host")
		case strings.Contains(h, "://"):
			return fmt.Errorf("%q: a host name, not a URL (drop the scheme)", h)
		case strings.ContainsAny(h, "/?#@*"):
			return fmt.Errorf("%q: a host name, or HOST:PORT (no path, user or wildcard: the match is exact)", h)
		}
		host, port := splitTokenHost(h)
		if host == "" {
			return fmt.Errorf("%q: no host name", h)
		}
		if port != "" {
			if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 {
				return fmt.Errorf("%q: port %q is not a port number", h, port)
			}
		}
	}
	return nil
}

// splitTokenHost splits a token host entry into its normalized host and
// its port ("" for any port).
func splitTokenHost(entry string) (host, port string) {
	entry = strings.TrimSpace(entry)
	if h, p, err := net.SplitHostPort(entry); err == nil {
		return normalizeHost(h), p
	}
	return normalizeHost(strings.TrimSuffix(strings.TrimPrefix(entry, "["), "]")), ""
}

// hostPort is u's normalized host and its port, the scheme's default when
// the URL names none.
func hostPort(u *url.URL) (host, port string) {
	port = u.Port()
	if port == "" {
		switch strings.ToLower(u.Scheme) {
		case "https":
			port = "443"
		case "http":
			port = "80"
		}
	}
	return normalizeHost(u.Hostname()), port
}

// normalizeHost lowers a host name and drops a final dot.
func normalizeHost(h string) string {
	return strings.TrimSuffix(strings.ToLower(h), ".")
}

// isLoopback reports whether host (normalized) names this machine:
// localhost or a loopback address.
func isLoopback(host string) bool {
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}
