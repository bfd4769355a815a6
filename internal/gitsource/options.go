package gitsource

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"path"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/go-git/go-git/v5/plumbing"
	"github.com/go-git/go-git/v5/plumbing/transport"
	githttp "github.com/go-git/go-git/v5/plumbing/transport/http"
	gitssh "github.com/go-git/go-git/v5/plumbing/transport/ssh"
	"github.com/hashicorp/go-hclog"
	"golang.org/x/crypto/ssh"
)

// ErrInvalid is wrapped by every error New returns for options that can
// never work (a usage error: the CLI exits 2). Test with errors.Is.
var ErrInvalid = errors.New("invalid git source")

// Options configure a Source.
type Options struct {
	// URL of the repository: https://..., http://..., ssh://...,
	// git@host:path (scp-like, ssh), file:///abs/path or a plain absolute
	// path (file).
	URL string
	// Ref is a branch or a tag; "" is "main". A branch is followed (force
	// pushes too); a tag is pinned.
	Ref string
	// Path is the subdirectory of the repository that is the config root
	// ("" is the root). It must be relative and stay inside the
	// repository; it is cleaned, so "./deploy" is "deploy".
	Path string
	// Interval between fetches; 0 is 1m.
	Interval time.Duration
	// Dir is where the source keeps its clone and checkouts (the daemon
	// passes STATE_DIR/git). It is created.
	Dir    string
	Auth   Auth
	Logger hclog.Logger     // nil discards
	Now    func() time.Time // nil is time.Now (tests)
}

// Auth holds the credentials of a Source. See the package doc for which
// fields go with which URLs.
type Auth struct {
	Username       string // HTTPS basic auth user that goes with Token; "" is "git"
	Token          string // HTTPS token
	SSHKeyFile     string // SSH private key (PEM or OpenSSH), without a passphrase
	KnownHostsFile string // SSH known_hosts; "" is go-git's defaults (SSH_KNOWN_HOSTS, ~/.ssh/known_hosts, /etc/ssh/ssh_known_hosts)
}

const (
	defaultRef      = "main"
	defaultInterval = time.Minute
	minFetchTimeout = 30 * time.Second
	maxFetchTimeout = 5 * time.Minute
)

// transport kinds New accepts.
const (
	kindHTTP = "http"
	kindSSH  = "ssh"
	kindFile = "file"
)

// remote is a validated URL.
type remote struct {
	url     string // as given, for go-git
	display string // without a password, for logs and Status
	key     string // directory name under Dir: hash of the URL without credentials
	kind    string // kindHTTP, kindSSH or kindFile
	ep      *transport.Endpoint
}

var (
	schemeRE   = regexp.MustCompile(`^([A-Za-z][A-Za-z0-9+.-]*)://`)
	scpLikeRE  = regexp.MustCompile(`^(?:([^@/:]+)@)?([^@/:]+|\[[0-9A-Fa-f:.]+\]):(.+)$`)
	hostnameRE = regexp.MustCompile(`^[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?$`)
)

func invalid(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrInvalid, fmt.Sprintf(format, args...))
}

// parseURL validates a repository URL without the network.
func parseURL(raw string) (remote, error) {
	if strings.TrimSpace(raw) == "" {
		return remote{}, invalid("URL is empty")
	}
	if strings.ContainsAny(raw, " \t\r\n\x00") {
		return remote{}, invalid("URL %q contains white space or control characters", raw)
	}
	r := remote{url: raw, display: raw}
	switch {
	case schemeRE.MatchString(raw):
		u, err := url.Parse(raw)
		if err != nil {
			return remote{}, invalid("URL %q: %v", raw, err)
		}
		r.display = u.Redacted()
		switch scheme := strings.ToLower(u.Scheme); scheme {
		case "http", "https":
			r.kind = kindHTTP
		case "ssh":
			r.kind = kindSSH
		case "file":
			r.kind = kindFile
			if u.Host != "" && u.Host != "localhost" {
				return remote{}, invalid("URL %q: a file URL names no host (file:///abs/path)", r.display)
			}
			if !path.IsAbs(u.Path) {
				return remote{}, invalid("URL %q: a file URL needs an absolute path", r.display)
			}
		default:
			return remote{}, invalid("URL %q: scheme %q is not supported (https, http, ssh, file, scp-like user@host:path or an absolute path)", r.display, u.Scheme)
		}
		if r.kind != kindFile {
			if !validHost(u.Hostname()) {
				return remote{}, invalid("URL %q: no valid host", r.display)
			}
			if p := u.Port(); p != "" {
				if n, err := strconv.Atoi(p); err != nil || n < 1 || n > 65535 {
					return remote{}, invalid("URL %q: port %q is not a port number", r.display, p)
				}
			}
			if u.Path == "" || u.Path == "/" {
				return remote{}, invalid("URL %q names no repository path", r.display)
			}
		}
	case strings.HasPrefix(raw, "/"):
		r.kind = kindFile
	case scpLikeRE.MatchString(raw):
		m := scpLikeRE.FindStringSubmatch(raw)
		if !validHost(m[2]) {
			return remote{}, invalid("URL %q: %q is not a host name", raw, m[2])
		}
		r.kind = kindSSH
	default:
		return remote{}, invalid("URL %q is neither a URL (https://, ssh://, file://), an scp-like user@host:path nor an absolute path", raw)
	}
	ep, err := transport.NewEndpoint(raw)
	if err != nil {
		return remote{}, invalid("URL %q: %v", r.display, err)
	}
	r.ep = ep
	sum := sha256.Sum256([]byte(ep.Protocol + "://" + strings.ToLower(ep.Host) + ":" + strconv.Itoa(ep.Port) + ep.Path))
	r.key = hex.EncodeToString(sum[:])[:12]
	return r, nil
}

func validHost(h string) bool {
	h = strings.TrimSuffix(strings.TrimPrefix(h, "["), "]")
	if net.ParseIP(h) != nil {
		return true
	}
	return hostnameRE.MatchString(h)
}

func isLoopback(host string) bool {
	host = strings.TrimSuffix(strings.TrimPrefix(host, "["), "]")
	if strings.EqualFold(host, "localhost") {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// cleanPath validates Options.Path and returns it cleaned ("" for the root).
func cleanPath(p string) (string, error) {
	if p == "" {
		return "", nil
	}
	if strings.ContainsAny(p, "\x00\\") {
		return "", invalid("path %q contains a NUL or a backslash", p)
	}
	if path.IsAbs(p) {
		return "", invalid("path %q must be relative to the repository root", p)
	}
	c := path.Clean(p)
	if c == ".." || strings.HasPrefix(c, "../") {
		return "", invalid("path %q leaves the repository", p)
	}
	for _, part := range strings.Split(c, "/") {
		if strings.EqualFold(part, ".git") {
			return "", invalid("path %q names a .git directory", p)
		}
	}
	if c == "." {
		return "", nil
	}
	return c, nil
}

func checkRef(ref string) error {
	if strings.HasPrefix(ref, "-") {
		return invalid("ref %q starts with a dash", ref)
	}
	if err := plumbing.NewBranchReferenceName(ref).Validate(); err != nil {
		return invalid("ref %q is not a valid branch or tag name", ref)
	}
	return nil
}

// checkAuth refuses credentials that cannot go with the URL's kind, and
// reads the files once so that a missing or malformed one fails at start.
func checkAuth(r remote, a Auth) error {
	switch r.kind {
	case kindHTTP:
		if a.SSHKeyFile != "" || a.KnownHostsFile != "" {
			return invalid("an SSH key or known_hosts file goes with an ssh URL, not with %q", r.display)
		}
		if a.Username != "" && a.Token == "" {
			return invalid("a username without a token for %q", r.display)
		}
		if a.Token != "" && strings.EqualFold(r.ep.Protocol, "http") && !isLoopback(r.ep.Host) {
			return invalid("a token over plain http would cross the network in clear: use https for %q", r.display)
		}
		return nil
	case kindSSH:
		if a.Token != "" || a.Username != "" {
			return invalid("a token or username goes with an https URL, not with the ssh URL %q", r.display)
		}
		if a.SSHKeyFile == "" {
			return invalid("the ssh URL %q needs an SSH key file", r.display)
		}
		_, err := sshAuth(r, a, minFetchTimeout)
		return err
	default:
		if a != (Auth{}) {
			return invalid("credentials given for the local repository %q", r.display)
		}
		return nil
	}
}

// authMethod builds the go-git auth for one fetch (nil: none).
func authMethod(r remote, a Auth, timeout time.Duration) (transport.AuthMethod, error) {
	switch {
	case r.kind == kindHTTP && a.Token != "":
		user := a.Username
		if user == "" {
			user = "git"
		}
		return &githttp.BasicAuth{Username: user, Password: a.Token}, nil
	case r.kind == kindSSH:
		return sshAuth(r, a, timeout)
	}
	return nil, nil
}

// sshKeyAuth is go-git's public key auth with a connection time limit (the
// ssh transport dials without the fetch's context).
type sshKeyAuth struct {
	*gitssh.PublicKeys
	timeout time.Duration
}

// ClientConfig implements gitssh.AuthMethod.
func (a *sshKeyAuth) ClientConfig() (*ssh.ClientConfig, error) {
	cfg, err := a.PublicKeys.ClientConfig()
	if err != nil {
		return nil, err
	}
	cfg.Timeout = a.timeout
	return cfg, nil
}

// sshAuth reads the key and known_hosts files; its errors wrap ErrInvalid.
func sshAuth(r remote, a Auth, timeout time.Duration) (*sshKeyAuth, error) {
	pem, err := os.ReadFile(a.SSHKeyFile)
	if err != nil {
		return nil, invalid("SSH key file: %v", err)
	}
	signer, err := ssh.ParsePrivateKey(pem)
	if err != nil {
		var pm *ssh.PassphraseMissingError
		if errors.As(err, &pm) {
			return nil, invalid("SSH key file %s is protected by a passphrase; use a key without one", a.SSHKeyFile)
		}
		return nil, invalid("SSH key file %s: not a private key: %v", a.SSHKeyFile, err)
	}
	var files []string
	if a.KnownHostsFile != "" {
		if _, err := os.ReadFile(a.KnownHostsFile); err != nil {
			return nil, invalid("known_hosts file: %v", err)
		}
		files = append(files, a.KnownHostsFile)
	}
	db, err := gitssh.NewKnownHostsDb(files...)
	if err != nil {
		if a.KnownHostsFile != "" {
			return nil, invalid("known_hosts file %s: %v", a.KnownHostsFile, err)
		}
		return nil, invalid("no known_hosts file given and none of go-git's defaults is usable (SSH_KNOWN_HOSTS, ~/.ssh/known_hosts, /etc/ssh/ssh_known_hosts): %v", err)
	}
	user := r.ep.User
	if user == "" {
		user = "git"
	}
	port := r.ep.Port
	if port == 0 {
		port = 22
	}
	pk := &gitssh.PublicKeys{User: user, Signer: signer}
	pk.HostKeyCallback = db.HostKeyCallback()
	pk.HostKeyAlgorithms = db.HostKeyAlgorithms(net.JoinHostPort(strings.Trim(r.ep.Host, "[]"), strconv.Itoa(port)))
	return &sshKeyAuth{PublicKeys: pk, timeout: timeout}, nil
}

// fetchTimeout is the time limit of one fetch: Interval clamped to
// [30s, 5m].
func fetchTimeout(interval time.Duration) time.Duration {
	return min(max(interval, minFetchTimeout), maxFetchTimeout)
}
