package fetch_test

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/poolmanagerd/pool-managerd/drivers/model/cache"
	"github.com/poolmanagerd/pool-managerd/drivers/model/fetch"
)

func mustURL(t *testing.T, s string) *url.URL {
	t.Helper()
	u, err := url.Parse(s)
	if err != nil {
		t.Fatal(err)
	}
	return u
}

func TestTokenAllowed(t *testing.T) {
	hf := []string{"huggingface.co"}
	for _, tc := range []struct {
		name           string
		hosts          []string
		origin, target string // target "" means origin itself
		want           bool
	}{
		{name: "listed https host", hosts: hf, origin: "https://huggingface.co/org/repo/resolve/c/m.gguf", want: true},
		{name: "listed host, any case and a final dot", hosts: []string{"HuggingFace.co"}, origin: "https://huggingface.CO./m.gguf", want: true},
		{name: "listed host on another port", hosts: hf, origin: "https://huggingface.co:8443/m.gguf", want: true},
		{name: "HOST:PORT on its port", hosts: []string{"models.example:8443"}, origin: "https://models.example:8443/m.gguf", want: true},
		{name: "HOST:PORT on the default port", hosts: []string{"models.example:443"}, origin: "https://models.example/m.gguf", want: true},
		{name: "HOST:PORT on another port", hosts: []string{"models.example:8443"}, origin: "https://models.example/m.gguf"},
		{name: "unlisted host", hosts: hf, origin: "https://attacker.example/x.gguf"},
		{name: "a subdomain of a listed host", hosts: hf, origin: "https://cdn-lfs.huggingface.co/m.gguf"},
		{name: "the parent of a listed host", hosts: []string{"cdn-lfs.huggingface.co"}, origin: "https://huggingface.co/m.gguf"},
		{name: "a host that ends like a listed one", hosts: hf, origin: "https://evilhuggingface.co/m.gguf"},
		{name: "no hosts", origin: "https://huggingface.co/m.gguf"},
		{name: "http to a listed host", hosts: hf, origin: "http://huggingface.co/m.gguf"},
		{name: "http to a listed loopback address", hosts: []string{"127.0.0.1"}, origin: "http://127.0.0.1:8080/m.gguf", want: true},
		{name: "http to a listed localhost", hosts: []string{"localhost"}, origin: "http://localhost:8080/m.gguf", want: true},
		{name: "http to listed IPv6 loopback", hosts: []string{"[::1]"}, origin: "http://[::1]:8080/m.gguf", want: true},
		{name: "http to an unlisted loopback address", hosts: hf, origin: "http://127.0.0.1:8080/m.gguf"},
		{name: "another scheme", hosts: hf, origin: "ftp://huggingface.co/m.gguf"},
		{name: "redirect within the host", hosts: hf, origin: "https://huggingface.co/a", target: "https://huggingface.co/b", want: true},
		{name: "redirect naming the default port", hosts: hf, origin: "https://huggingface.co/a", target: "https://huggingface.co:443/b", want: true},
		{name: "redirect to another host", hosts: hf, origin: "https://huggingface.co/a", target: "https://cdn-lfs.huggingface.co/b"},
		{name: "redirect to another listed host", hosts: []string{"huggingface.co", "models.example"}, origin: "https://huggingface.co/a", target: "https://models.example/a"},
		{name: "redirect to another port", hosts: hf, origin: "https://huggingface.co/a", target: "https://huggingface.co:8443/a"},
		{name: "redirect from https to http", hosts: hf, origin: "https://huggingface.co/a", target: "http://huggingface.co/a"},
		{name: "redirect from https to http on loopback", hosts: []string{"127.0.0.1:8443"}, origin: "https://127.0.0.1:8443/a", target: "http://127.0.0.1:8443/a"},
		{name: "redirect from an unlisted host to a listed one", hosts: hf, origin: "https://attacker.example/a", target: "https://huggingface.co/a"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			target := tc.target
			if target == "" {
				target = tc.origin
			}
			if got := fetch.TokenAllowed(tc.hosts, mustURL(t, tc.origin), mustURL(t, target)); got != tc.want {
				t.Errorf("TokenAllowed(%q, %s, %s) = %v; want %v", tc.hosts, tc.origin, target, got, tc.want)
			}
		})
	}
}

func TestCheckTokenHosts(t *testing.T) {
	for _, ok := range [][]string{nil, {"huggingface.co"}, {"models.example:8443", "127.0.0.1", "[::1]:8080", "::1"}} {
		if err := fetch.CheckTokenHosts(ok); err != nil {
			t.Errorf("CheckTokenHosts(%q) = %v; want nil", ok, err)
		}
	}
	for _, bad := range [][]string{{""}, {"https://huggingface.co"}, {"huggingface.co/org"}, {"*.huggingface.co"}, {"user@host"}, {"host:port"}, {"host:70000"}, {":443"}} {
		if err := fetch.CheckTokenHosts(bad); err == nil {
			t.Errorf("CheckTokenHosts(%q) = nil; want an error", bad)
		}
	}
}

// TestReadToken: the file wins over the environment, both are trimmed, and
// an unreadable or empty file is an error.
func TestReadToken(t *testing.T) {
	const env = "POOL_MANAGERD_TEST_MODEL_TOKEN"
	dir := t.TempDir()
	file := filepath.Join(dir, "token")
	if err := os.WriteFile(file, []byte("from-file\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	empty := filepath.Join(dir, "empty")
	if err := os.WriteFile(empty, []byte(" \n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name, file, env, want string
		wantErr               bool
	}{
		{name: "neither"},
		{name: "env", env: " from-env\n", want: "from-env"},
		{name: "file", file: file, want: "from-file"},
		{name: "the file wins", file: file, env: "from-env", want: "from-file"},
		{name: "empty file", file: empty, env: "from-env", wantErr: true},
		{name: "missing file", file: filepath.Join(dir, "missing"), env: "from-env", wantErr: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Setenv(env, tc.env)
			got, err := fetch.ReadToken(tc.file, env)
			if (err != nil) != tc.wantErr || got != tc.want {
				t.Errorf("ReadToken = %q, %v; want %q, error %v", got, err, tc.want, tc.wantErr)
			}
			src, err2 := fetch.TokenFromFileOrEnv(tc.file, env)()
			if src != got || (err2 != nil) != (err != nil) {
				t.Errorf("TokenFromFileOrEnv gives %q, %v; ReadToken %q, %v", src, err2, got, err)
			}
		})
	}
}

// fakeSite is an http.RoundTripper standing in for https hosts (no network,
// no TLS): each URL answers a redirect or the file, and every request's
// Authorization is recorded.
type fakeSite struct {
	data      []byte
	redirects map[string]string // URL → Location

	mu   sync.Mutex
	seen []string // "METHOD URL Authorization"
}

func (s *fakeSite) RoundTrip(r *http.Request) (*http.Response, error) {
	s.mu.Lock()
	s.seen = append(s.seen, r.Method+" "+r.URL.String()+" "+r.Header.Get("Authorization"))
	s.mu.Unlock()
	resp := &http.Response{Request: r, Header: http.Header{}, Body: io.NopCloser(bytes.NewReader(nil))}
	if loc, ok := s.redirects[r.URL.String()]; ok {
		resp.StatusCode = http.StatusFound
		resp.Header.Set("Location", loc)
		return resp, nil
	}
	resp.StatusCode = http.StatusOK
	resp.ContentLength = int64(len(s.data))
	resp.Header.Set("Content-Length", strconv.Itoa(len(s.data)))
	resp.Header.Set("Accept-Ranges", "bytes")
	if r.Method == http.MethodGet {
		resp.Body = io.NopCloser(bytes.NewReader(s.data))
	}
	return resp, nil
}

func (s *fakeSite) requests() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.seen)
}

// TestTokenOverHTTPS: with real host names and schemes (a transport stands
// in for the network), Fetch and Resolve send the token to a listed https
// host only, and drop it on a redirect that changes scheme, host or port.
func TestTokenOverHTTPS(t *testing.T) {
	data := model(16 << 10)
	const (
		src      = "https://huggingface.co/org/repo/resolve/c/m.gguf"
		attacker = "https://attacker.example/x.gguf"
	)
	bearer := "Bearer " + token
	for _, tc := range []struct {
		name      string
		src       string
		redirects map[string]string
		// want is each request's "METHOD URL Authorization" for the GET
		// of Fetch; Resolve's HEADs must carry the same tokens.
		want []string
	}{{
		name: "listed host",
		src:  src,
		want: []string{"GET " + src + " " + bearer},
	}, {
		name: "unlisted host",
		src:  attacker,
		want: []string{"GET " + attacker + " "},
	}, {
		name: "http to a listed host",
		src:  "http://huggingface.co/m.gguf",
		want: []string{"GET http://huggingface.co/m.gguf "},
	}, {
		name:      "redirect within the host keeps it",
		src:       src,
		redirects: map[string]string{src: "https://huggingface.co/blob/m.gguf"},
		want:      []string{"GET " + src + " " + bearer, "GET https://huggingface.co/blob/m.gguf " + bearer},
	}, {
		name:      "redirect to the CDN",
		src:       src,
		redirects: map[string]string{src: "https://cdn-lfs.huggingface.co/sha256/m"},
		want:      []string{"GET " + src + " " + bearer, "GET https://cdn-lfs.huggingface.co/sha256/m "},
	}, {
		name:      "redirect to another port",
		src:       src,
		redirects: map[string]string{src: "https://huggingface.co:8443/m.gguf"},
		want:      []string{"GET " + src + " " + bearer, "GET https://huggingface.co:8443/m.gguf "},
	}, {
		name:      "redirect from https to http",
		src:       src,
		redirects: map[string]string{src: "http://huggingface.co/org/repo/resolve/c/m.gguf"},
		want:      []string{"GET " + src + " " + bearer, "GET http://huggingface.co/org/repo/resolve/c/m.gguf "},
	}, {
		name:      "unlisted host redirecting to a listed one",
		src:       attacker,
		redirects: map[string]string{attacker: src},
		want:      []string{"GET " + attacker + " ", "GET " + src + " "},
	}} {
		t.Run(tc.name, func(t *testing.T) {
			site := &fakeSite{data: data, redirects: tc.redirects}
			auth := fetch.Auth{Token: fetch.StaticToken(token), Hosts: []string{fetch.DefaultTokenHost}}
			f := newFetcher(t, t.TempDir(), cache.Options{}, fetch.Options{Client: &http.Client{Transport: site}, Auth: auth})
			p, err := f.Fetch(context.Background(), fetch.Request{URL: tc.src, FileName: "m.gguf", SHA256: digestOf(data)})
			if err != nil {
				t.Fatal(err)
			}
			wantVerified(t, f, p, data)
			if got := site.requests(); !slices.Equal(got, tc.want) {
				t.Errorf("Fetch sent\n%q\nwant\n%q", got, tc.want)
			}
			n := len(site.requests())
			if _, err := f.Resolve(context.Background(), tc.src); err != nil {
				t.Fatal(err)
			}
			var heads []string
			for _, r := range site.requests()[n:] {
				heads = append(heads, "GET"+strings.TrimPrefix(r, "HEAD"))
			}
			if !slices.Equal(heads, tc.want) {
				t.Errorf("Resolve sent (as GETs)\n%q\nwant\n%q", heads, tc.want)
			}
		})
	}
}

// TestTokenSourceNotCalledForUnlistedHosts: a token file is not even read
// for a source that may not have the token, so a broken one fails only the
// sources that would carry it.
func TestTokenSourceNotCalledForUnlistedHosts(t *testing.T) {
	data := model(4 << 10)
	site := &fakeSite{data: data}
	called := false
	auth := fetch.Auth{Token: func() (string, error) { called = true; return token, nil }, Hosts: []string{fetch.DefaultTokenHost}}
	f := newFetcher(t, t.TempDir(), cache.Options{}, fetch.Options{Client: &http.Client{Transport: site}, Auth: auth})
	if _, err := f.Fetch(context.Background(), fetch.Request{URL: "https://models.example/m.gguf", SHA256: digestOf(data)}); err != nil {
		t.Fatal(err)
	}
	if called {
		t.Error("the token source was asked for a source on an unlisted host")
	}
	if got := site.requests(); len(got) != 1 || !strings.HasSuffix(got[0], " ") {
		t.Errorf("requests %q; want one without Authorization", got)
	}
	other := model(5 << 10)
	site = &fakeSite{data: other}
	f = newFetcher(t, t.TempDir(), cache.Options{}, fetch.Options{Client: &http.Client{Transport: site}, Auth: auth})
	if _, err := f.Fetch(context.Background(), fetch.Request{URL: "https://huggingface.co/m.gguf", SHA256: digestOf(other)}); err != nil {
		t.Fatal(err)
	}
	if !called {
		t.Error("the token source was not asked for a source on a listed host")
	}
}
