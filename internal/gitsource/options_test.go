package gitsource

import (
	"crypto/ed25519"
	"crypto/rand"
	"encoding/pem"
	"errors"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/knownhosts"
)

// sshFiles writes a client key (no passphrase), a known_hosts file naming
// hosts, and a file that is not a key; keyWithPassphrase is written only
// when asked for (bcrypt makes it slow).
type sshFiles struct {
	key, knownHosts, notAKey, garbageKnownHosts string
	hostKey                                     ssh.PublicKey
	clientKey                                   ed25519.PrivateKey
}

func newSSHFiles(t *testing.T, hosts ...string) sshFiles {
	t.Helper()
	dir := t.TempDir()
	_, clientKey, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	f := sshFiles{
		key:               filepath.Join(dir, "id_ed25519"),
		knownHosts:        filepath.Join(dir, "known_hosts"),
		notAKey:           filepath.Join(dir, "not_a_key"),
		garbageKnownHosts: filepath.Join(dir, "garbage_known_hosts"),
		hostKey:           newHostKey(t),
		clientKey:         clientKey,
	}
	block, err := ssh.MarshalPrivateKey(clientKey, "test")
	if err != nil {
		t.Fatal(err)
	}
	var lines []string
	for _, h := range hosts {
		lines = append(lines, knownhosts.Line([]string{knownhosts.Normalize(h)}, f.hostKey))
	}
	for name, content := range map[string][]byte{
		f.key:               pem.EncodeToMemory(block),
		f.knownHosts:        []byte(strings.Join(lines, "\n") + "\n"),
		f.notAKey:           []byte("nodes: x: {}\n"),
		f.garbageKnownHosts: []byte("this is not a known_hosts line\n"),
	} {
		if err := os.WriteFile(name, content, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return f
}

// keyWithPassphrase writes the client key protected by a passphrase.
func (f sshFiles) keyWithPassphrase(t *testing.T) string {
	t.Helper()
	block, err := ssh.MarshalPrivateKeyWithPassphrase(f.clientKey, "test", []byte("secret"))
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(t.TempDir(), "id_locked")
	if err := os.WriteFile(p, pem.EncodeToMemory(block), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func newHostKey(t *testing.T) ssh.PublicKey {
	t.Helper()
	pub, _, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	k, err := ssh.NewPublicKey(pub)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func TestNewRejects(t *testing.T) {
	keys := newSSHFiles(t, "git.example.com:22")
	missing := filepath.Join(t.TempDir(), "absent")
	for _, tc := range []struct {
		name string
		opts Options
		want string
	}{
		{"empty URL", Options{}, "URL is empty"},
		{"blank URL", Options{URL: "  "}, "URL is empty"},
		{"URL with a space", Options{URL: "https://exa mple.com/x.git"}, "white space"},
		{"garbage scheme", Options{URL: "ht!tp://host/x.git"}, "is not a host name"},
		{"unsupported scheme", Options{URL: "ftp://host/x.git"}, `scheme "ftp" is not supported`},
		{"git protocol", Options{URL: "git://host/x.git"}, `scheme "git" is not supported`},
		{"relative path", Options{URL: "configs/repo"}, "neither a URL"},
		{"dot path", Options{URL: "./repo"}, "neither a URL"},
		{"https without host", Options{URL: "https:///x.git"}, "no valid host"},
		{"https without path", Options{URL: "https://example.com"}, "names no repository path"},
		{"bad port", Options{URL: "https://example.com:99999/x.git"}, "not a port number"},
		{"file URL with a host", Options{URL: "file://server/srv/x.git"}, "names no host"},
		{"scp-like with a bad host", Options{URL: "git@exa_mple:x.git"}, "is not a host name"},
		{"absolute path", Options{URL: "/srv/x.git", Path: "/etc"}, "must be relative"},
		{"path leaving the repository", Options{URL: "/srv/x.git", Path: "../x"}, "leaves the repository"},
		{"path leaving after cleaning", Options{URL: "/srv/x.git", Path: "a/../../b"}, "leaves the repository"},
		{"path into .git", Options{URL: "/srv/x.git", Path: "x/.git/hooks"}, ".git"},
		{"ref with a space", Options{URL: "/srv/x.git", Ref: "a b"}, "not a valid branch or tag"},
		{"ref with ..", Options{URL: "/srv/x.git", Ref: "a..b"}, "not a valid branch or tag"},
		{"ref with a colon", Options{URL: "/srv/x.git", Ref: "a:b"}, "not a valid branch or tag"},
		{"ref starting with a dash", Options{URL: "/srv/x.git", Ref: "-main"}, "dash"},
		{"negative interval", Options{URL: "/srv/x.git", Interval: -time.Second}, "negative"},
		{"no directory", Options{URL: "/srv/x.git", Dir: "-"}, "no directory"},
		{"ssh without a key", Options{URL: "git@git.example.com:org/x.git"}, "needs an SSH key file"},
		{"missing key file", Options{URL: "git@git.example.com:org/x.git", Auth: Auth{SSHKeyFile: missing, KnownHostsFile: keys.knownHosts}}, "no such file"},
		{"key file that is not a key", Options{URL: "ssh://git@git.example.com/org/x.git", Auth: Auth{SSHKeyFile: keys.notAKey, KnownHostsFile: keys.knownHosts}}, "not a private key"},
		{"key with a passphrase", Options{URL: "ssh://git@git.example.com/org/x.git", Auth: Auth{SSHKeyFile: keys.keyWithPassphrase(t), KnownHostsFile: keys.knownHosts}}, "passphrase"},
		{"missing known_hosts", Options{URL: "git@git.example.com:org/x.git", Auth: Auth{SSHKeyFile: keys.key, KnownHostsFile: missing}}, "known_hosts file"},
		{"known_hosts that is not one", Options{URL: "git@git.example.com:org/x.git", Auth: Auth{SSHKeyFile: keys.key, KnownHostsFile: keys.garbageKnownHosts}}, "known_hosts file"},
		{"token with ssh", Options{URL: "git@git.example.com:org/x.git", Auth: Auth{Token: "t", SSHKeyFile: keys.key, KnownHostsFile: keys.knownHosts}}, "goes with an https URL"},
		{"key with https", Options{URL: "https://git.example.com/org/x.git", Auth: Auth{SSHKeyFile: keys.key}}, "goes with an ssh URL"},
		{"known_hosts with https", Options{URL: "https://git.example.com/org/x.git", Auth: Auth{KnownHostsFile: keys.knownHosts}}, "goes with an ssh URL"},
		{"token over plain http", Options{URL: "http://git.example.com/org/x.git", Auth: Auth{Token: "t"}}, "in clear"},
		{"username without a token", Options{URL: "https://git.example.com/org/x.git", Auth: Auth{Username: "u"}}, "without a token"},
		{"token with a local repository", Options{URL: "/srv/x.git", Auth: Auth{Token: "t"}}, "credentials given for the local repository"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			opts := tc.opts
			switch opts.Dir {
			case "":
				opts.Dir = t.TempDir()
			case "-":
				opts.Dir = ""
			}
			s, err := New(opts)
			if err == nil {
				t.Fatalf("New accepted %+v", tc.opts)
			}
			if s != nil {
				t.Errorf("New returned a source with the error %v", err)
			}
			if !errors.Is(err, ErrInvalid) {
				t.Errorf("error %v does not wrap ErrInvalid", err)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %q does not say %q", err, tc.want)
			}
		})
	}
}

func TestNewRejectsAnUnreadableKeyFile(t *testing.T) {
	if os.Geteuid() == 0 {
		t.Skip("running as root, which reads a file whatever its mode: an unreadable key cannot be made")
	}
	keys := newSSHFiles(t, "git.example.com:22")
	if err := os.Chmod(keys.key, 0); err != nil {
		t.Fatal(err)
	}
	_, err := New(Options{URL: "git@git.example.com:org/x.git", Dir: t.TempDir(), Auth: Auth{SSHKeyFile: keys.key, KnownHostsFile: keys.knownHosts}})
	if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), "permission denied") {
		t.Errorf("New with an unreadable key = %v, want an ErrInvalid saying permission denied", err)
	}
}

func TestNewAccepts(t *testing.T) {
	keys := newSSHFiles(t, "git.example.com:22")
	sshAuth := Auth{SSHKeyFile: keys.key, KnownHostsFile: keys.knownHosts}
	for _, tc := range []struct {
		name     string
		opts     Options
		wantURL  string
		wantPath string
		wantRef  string
	}{
		{"https with a token", Options{URL: "https://git.example.com/org/x.git", Auth: Auth{Token: "t"}}, "https://git.example.com/org/x.git", "", "main"},
		{"https with a password in the URL", Options{URL: "https://u:secret@git.example.com/org/x.git"}, "https://u:xxxxx@git.example.com/org/x.git", "", "main"},
		{"loopback http with a token", Options{URL: "http://127.0.0.1:8080/x.git", Auth: Auth{Token: "t", Username: "oauth2"}}, "http://127.0.0.1:8080/x.git", "", "main"},
		{"scp-like ssh", Options{URL: "git@git.example.com:org/x.git", Auth: sshAuth}, "git@git.example.com:org/x.git", "", "main"},
		{"ssh URL", Options{URL: "ssh://git@git.example.com/org/x.git", Auth: sshAuth, Ref: "v1.2.3"}, "ssh://git@git.example.com/org/x.git", "", "v1.2.3"},
		{"file URL", Options{URL: "file:///srv/x.git", Path: "./deploy/prod/"}, "file:///srv/x.git", "deploy/prod", "main"},
		{"absolute path", Options{URL: "/srv/x.git", Path: "."}, "/srv/x.git", "", "main"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			opts := tc.opts
			opts.Dir = t.TempDir()
			s, err := New(opts)
			if err != nil {
				t.Fatal(err)
			}
			st := s.Status()
			if st.URL != tc.wantURL || st.Path != tc.wantPath || st.Ref != tc.wantRef || st.Interval != time.Minute {
				t.Errorf("status %+v, want URL %q path %q ref %q interval 1m", st, tc.wantURL, tc.wantPath, tc.wantRef)
			}
			if fi, err := os.Stat(s.checkoutsDir); err != nil || !fi.IsDir() || !strings.HasPrefix(s.checkoutsDir, opts.Dir) {
				t.Errorf("checkouts dir %s: %v", s.checkoutsDir, err)
			}
		})
	}
}

func TestKeyDependsOnTheRepositoryOnly(t *testing.T) {
	key := func(u string) string {
		t.Helper()
		r, err := parseURL(u)
		if err != nil {
			t.Fatal(err)
		}
		return r.key
	}
	if a, b := key("https://git.example.com/org/x.git"), key("https://token@git.example.com/org/x.git"); a != b {
		t.Errorf("credentials change the key: %s vs %s", a, b)
	}
	if a, b := key("https://git.example.com/org/x.git"), key("https://git.example.com/org/y.git"); a == b {
		t.Errorf("two repositories share the key %s", a)
	}
}

func TestSSHAuthMethod(t *testing.T) {
	keys := newSSHFiles(t, "git.example.com:22", "git.example.com:2222")
	for _, tc := range []struct {
		url, user, addr string
	}{
		{"git@git.example.com:org/x.git", "git", "git.example.com:22"},
		{"ssh://deploy@git.example.com:2222/org/x.git", "deploy", "git.example.com:2222"},
		{"ssh://git.example.com/org/x.git", "git", "git.example.com:22"},
	} {
		t.Run(tc.url, func(t *testing.T) {
			r, err := parseURL(tc.url)
			if err != nil {
				t.Fatal(err)
			}
			if r.kind != kindSSH {
				t.Fatalf("kind %q, want ssh", r.kind)
			}
			am, err := authMethod(r, Auth{SSHKeyFile: keys.key, KnownHostsFile: keys.knownHosts}, 42*time.Second)
			if err != nil {
				t.Fatal(err)
			}
			a, ok := am.(*sshKeyAuth)
			if !ok {
				t.Fatalf("auth method %T, want *sshKeyAuth (go-git PublicKeys)", am)
			}
			if a.User != tc.user || a.Signer == nil {
				t.Errorf("user %q signer %v, want %q and the key", a.User, a.Signer, tc.user)
			}
			cfg, err := a.ClientConfig()
			if err != nil {
				t.Fatal(err)
			}
			if cfg.Timeout != 42*time.Second {
				t.Errorf("ssh dial timeout %v, want the fetch timeout", cfg.Timeout)
			}
			if !slices.Contains(cfg.HostKeyAlgorithms, ssh.KeyAlgoED25519) {
				t.Errorf("host key algorithms %v do not ask for the known ed25519 key", cfg.HostKeyAlgorithms)
			}
			tcp := &net.TCPAddr{IP: net.IPv4(192, 0, 2, 1), Port: 22}
			if err := cfg.HostKeyCallback(tc.addr, tcp, keys.hostKey); err != nil {
				t.Errorf("the known host key is refused: %v", err)
			}
			other := newHostKey(t)
			if err := cfg.HostKeyCallback(tc.addr, tcp, other); err == nil {
				t.Error("an unknown host key is accepted")
			}
		})
	}
}

func TestRetryDelay(t *testing.T) {
	for _, tc := range []struct {
		interval time.Duration
		n        int
		u        float64
		want     time.Duration
	}{
		{time.Minute, 1, 0.5, 15 * time.Second},
		{time.Minute, 2, 0.5, 30 * time.Second},
		{time.Minute, 3, 0.5, time.Minute},
		{time.Minute, 4, 0.5, 2 * time.Minute},
		{time.Minute, 5, 0.5, 4 * time.Minute},
		{time.Minute, 6, 0.5, 5 * time.Minute},
		{time.Minute, 1000, 0.5, 5 * time.Minute},
		{time.Minute, 1, 0, 13500 * time.Millisecond},
		{time.Minute, 6, 0.999999, 330 * time.Second}, // +10 %
		{2 * time.Second, 1, 0.5, time.Second},        // floor 1s
		{2 * time.Second, 9, 0.5, 10 * time.Second},   // cap 5·interval
		{40 * time.Millisecond, 1, 0.5, 40 * time.Millisecond},
		{40 * time.Millisecond, 3, 0.5, 160 * time.Millisecond},
		{40 * time.Millisecond, 4, 0.5, 200 * time.Millisecond},
	} {
		// Within 1ms: the jitter factor is a float.
		if got := retryDelay(tc.interval, tc.n, tc.u); got < tc.want-time.Millisecond || got > tc.want+time.Millisecond {
			t.Errorf("retryDelay(%v, %d, %v) = %v, want %v", tc.interval, tc.n, tc.u, got, tc.want)
		}
	}
}

func TestFetchTimeout(t *testing.T) {
	for _, tc := range []struct{ interval, want time.Duration }{
		{time.Minute, time.Minute},
		{time.Second, 30 * time.Second},
		{time.Hour, 5 * time.Minute},
	} {
		if got := fetchTimeout(tc.interval); got != tc.want {
			t.Errorf("fetchTimeout(%v) = %v, want %v", tc.interval, got, tc.want)
		}
	}
}
