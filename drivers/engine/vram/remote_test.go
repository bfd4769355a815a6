package vram_test

import (
	"context"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/google/go-cmp/cmp"
	gguf "github.com/gpustack/gguf-parser-go"

	"github.com/poolmanagerd/pool-managerd/drivers/engine/vram"
	"github.com/poolmanagerd/pool-managerd/drivers/model/fetch"
)

const remoteToken = "hf_remote_secret"

// tokenFor is the remote token, allowed to hosts.
func tokenFor(hosts ...string) fetch.Auth {
	return fetch.Auth{Token: fetch.StaticToken(remoteToken), Hosts: hosts}
}

// rangeServer serves one file with range support and records what it sent.
type rangeServer struct {
	*httptest.Server
	path string

	mu     sync.Mutex
	ranges []string // the Range of each GET
	auth   []string // the Authorization of each request
	sent   int64    // body bytes written
	maxEnd int64    // one past the last byte written
}

type countingWriter struct {
	http.ResponseWriter
	n int64
}

func (w *countingWriter) Write(p []byte) (int, error) {
	n, err := w.ResponseWriter.Write(p)
	w.n += int64(n)
	return n, err
}

func newRangeServer(t *testing.T, path string) *rangeServer {
	t.Helper()
	s := &rangeServer{path: path}
	s.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		f, err := os.Open(s.path)
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		defer f.Close()
		fi, _ := f.Stat()
		cw := &countingWriter{ResponseWriter: w}
		http.ServeContent(cw, r, "model.gguf", fi.ModTime(), f)
		s.mu.Lock()
		defer s.mu.Unlock()
		s.auth = append(s.auth, r.Header.Get("Authorization"))
		if r.Method != http.MethodGet {
			return
		}
		s.ranges = append(s.ranges, r.Header.Get("Range"))
		s.sent += cw.n
		start := int64(0)
		if rng := r.Header.Get("Range"); rng != "" {
			a, _, _ := strings.Cut(strings.TrimPrefix(rng, "bytes="), "-")
			start, _ = strconv.ParseInt(a, 10, 64)
		}
		s.maxEnd = max(s.maxEnd, start+cw.n)
	}))
	t.Cleanup(s.Close)
	return s
}

func TestEstimateGGUFRemoteReadsOnlyTheHeader(t *testing.T) {
	const buf = 256 << 10
	local, err := gguf.ParseGGUFFile(model7B, gguf.SkipLargeMetadata())
	if err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(model7B)
	if err != nil {
		t.Fatal(err)
	}
	// The file is far bigger than a read: only its header may be read.
	if fi.Size() < 1000*buf {
		t.Fatalf("the test model is %d bytes: not well over the %d-byte chunks", fi.Size(), buf)
	}

	// The source redirects to another host (as the Hub does to its CDN).
	cdn := newRangeServer(t, model7B)
	_, port, _ := net.SplitHostPort(cdn.Listener.Addr().String())
	var originAuth []string
	var originMu sync.Mutex
	origin := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		originMu.Lock()
		originAuth = append(originAuth, r.Header.Get("Authorization"))
		originMu.Unlock()
		http.Redirect(w, r, "http://localhost:"+port+"/model.gguf", http.StatusFound)
	}))
	t.Cleanup(origin.Close)

	split := []float64{0.5, 0.5}
	// localhost is listed too: a redirect to another host drops the token
	// all the same.
	got, err := vram.EstimateGGUFRemote(context.Background(), origin.URL+"/org/repo/resolve/c/model.gguf", tokenFor("127.0.0.1", "localhost"), 4096, split,
		vram.RemoteBufferSize(buf))
	if err != nil {
		t.Fatal(err)
	}
	want := estimate(t, model7B, 4096, split)
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("remote estimate differs from the local one (-local +remote):\n%s", diff)
	}

	cdn.mu.Lock()
	defer cdn.mu.Unlock()
	t.Logf("GET ranges %v, %d bytes sent, header ends at %d", cdn.ranges, cdn.sent, local.TensorDataStartOffset)
	if len(cdn.ranges) == 0 {
		t.Fatal("no GET reached the file's host")
	}
	for _, r := range cdn.ranges {
		if !strings.HasPrefix(r, "bytes=") {
			t.Errorf("a GET without a byte range (%q): the whole file was asked for", r)
		}
	}
	if limit := local.TensorDataStartOffset + buf; cdn.maxEnd > limit {
		t.Errorf("bytes up to %d were read; the header ends at %d (+ one %d-byte chunk)", cdn.maxEnd, local.TensorDataStartOffset, buf)
	}
	for _, a := range cdn.auth {
		if a != "" {
			t.Errorf("the CDN host got Authorization %q", a)
		}
	}
	originMu.Lock()
	defer originMu.Unlock()
	if len(originAuth) == 0 || originAuth[0] != "Bearer "+remoteToken {
		t.Errorf("the source host got Authorization %q; want the token", originAuth)
	}
}

func TestEstimateGGUFRemoteErrors(t *testing.T) {
	srv := httptest.NewServer(http.NotFoundHandler())
	t.Cleanup(srv.Close)
	for _, tc := range []struct {
		name, url, want string
	}{
		{"not found", srv.URL + "/m.gguf", "HTTP 404"},
		{"sharded", srv.URL + "/m-00001-of-00003.gguf", "shards"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := vram.EstimateGGUFRemote(context.Background(), tc.url, fetch.Auth{}, 4096, []float64{1})
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("EstimateGGUFRemote = %v; want an error with %q", err, tc.want)
			}
		})
	}
}

// TestEstimateGGUFRemoteToken: the HEADs and the header reads carry the
// token only to a listed host, and not after a redirect to another port.
func TestEstimateGGUFRemoteToken(t *testing.T) {
	for _, tc := range []struct {
		name string
		// hosts returns the token's hosts, given the file server's address.
		hosts func(addr string) []string
		// redirect: the source is another server on 127.0.0.1 that
		// redirects to the file's server (another port).
		redirect             bool
		originAuth, fileAuth string
	}{
		{name: "listed host", hosts: func(string) []string { return []string{"127.0.0.1"} }, fileAuth: "Bearer " + remoteToken},
		{name: "listed host and port", hosts: func(addr string) []string { return []string{addr} }, fileAuth: "Bearer " + remoteToken},
		{name: "unlisted host", hosts: func(string) []string { return []string{fetch.DefaultTokenHost} }},
		{name: "listed host, another port", hosts: func(string) []string { return []string{"127.0.0.1:1"} }},
		{name: "redirect to another port", hosts: func(string) []string { return []string{"127.0.0.1"} }, redirect: true, originAuth: "Bearer " + remoteToken},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srv := newRangeServer(t, modelTiny)
			src := srv.URL + "/model.gguf"
			var mu sync.Mutex
			var originAuth []string
			if tc.redirect {
				origin := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
					mu.Lock()
					originAuth = append(originAuth, r.Header.Get("Authorization"))
					mu.Unlock()
					http.Redirect(w, r, srv.URL+"/model.gguf", http.StatusFound)
				}))
				t.Cleanup(origin.Close)
				src = origin.URL + "/model.gguf"
			}
			auth := tokenFor(tc.hosts(srv.Listener.Addr().String())...)
			if _, err := vram.EstimateGGUFRemote(context.Background(), src, auth, 2048, []float64{1}); err != nil {
				t.Fatal(err)
			}
			srv.mu.Lock()
			defer srv.mu.Unlock()
			if len(srv.auth) < 2 {
				t.Fatalf("%d requests; want the redirect check and the header reads", len(srv.auth))
			}
			for i, a := range srv.auth {
				if a != tc.fileAuth {
					t.Errorf("request %d to the file's server carried Authorization %q; want %q", i, a, tc.fileAuth)
				}
			}
			mu.Lock()
			defer mu.Unlock()
			if tc.redirect && (len(originAuth) == 0 || originAuth[0] != tc.originAuth) {
				t.Errorf("the source got Authorization %q; want %q", originAuth, tc.originAuth)
			}
		})
	}
}
