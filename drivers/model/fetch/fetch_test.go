package fetch_test

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/poolmanagerd/pool-managerd/drivers/model/cache"
	"github.com/poolmanagerd/pool-managerd/drivers/model/fetch"
	"github.com/poolmanagerd/pool-managerd/schema/modelsource"
	"github.com/poolmanagerd/pool-managerd/testkit/modelserver"
)

const token = "hf_secret_token_value"

// loopbackAuth sends token to the test servers' host, 127.0.0.1 (over
// http: allowed for a listed loopback host).
func loopbackAuth() fetch.Auth {
	return fetch.Auth{Token: fetch.StaticToken(token), Hosts: []string{"127.0.0.1"}}
}

func digestOf(b []byte) string { return modelserver.SHA256(b) }

// model is a file's bytes: distinct per size, so that a wrong offset
// changes the digest.
func model(n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(i*7 + i/251)
	}
	return b
}

// progressAt returns a Progress callback and a channel closed once Done
// reaches n.
func progressAt(n int64) (func(fetch.Progress), <-chan struct{}) {
	ch := make(chan struct{})
	var once sync.Once
	return func(p fetch.Progress) {
		if p.Done >= n {
			once.Do(func() { close(ch) })
		}
	}, ch
}

func newFetcher(t *testing.T, dir string, copts cache.Options, opts fetch.Options) *fetch.Fetcher {
	t.Helper()
	c, err := cache.Open(dir, copts)
	if err != nil {
		t.Fatal(err)
	}
	if opts.RetryBackoff == 0 {
		opts.RetryBackoff = -1
	}
	return fetch.New(c, opts)
}

func wantVerified(t *testing.T, f *fetch.Fetcher, path string, data []byte) {
	t.Helper()
	got, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if digestOf(got) != digestOf(data) {
		t.Fatalf("%s does not hold the model (%d bytes, want %d)", path, len(got), len(data))
	}
	d := digestOf(data)
	p, verified, err := f.Cache().Lookup(d, "m.gguf")
	if err != nil || p != path || !verified {
		t.Fatalf("Lookup = %s, %v, %v; want %s verified", p, verified, err, path)
	}
	if _, err := os.Stat(f.Cache().PartialPath(d)); !os.IsNotExist(err) {
		t.Errorf("partial file left behind: %v", err)
	}
}

func wantClass(t *testing.T, err error, class string) *fetch.Error {
	t.Helper()
	var fe *fetch.Error
	if !errors.As(err, &fe) || fe.Class != class {
		t.Fatalf("error %v; want class %s", err, class)
	}
	if strings.Contains(err.Error(), token) {
		t.Errorf("the error shows the token: %v", err)
	}
	return fe
}

func TestFetchAndCacheHit(t *testing.T) {
	data := model(300 << 10)
	srv := modelserver.Start(t, map[string][]byte{"/m.gguf": data})
	dir := t.TempDir()
	f := newFetcher(t, dir, cache.Options{}, fetch.Options{})
	req := fetch.Request{URL: srv.URL + "/m.gguf", SHA256: digestOf(data), Size: int64(len(data))}
	p, err := f.Fetch(context.Background(), req)
	if err != nil {
		t.Fatal(err)
	}
	wantVerified(t, f, p, data)
	if p != f.Cache().Path(digestOf(data), "m.gguf") {
		t.Errorf("path %s is not the cache's CACHE/sha256/DIGEST/m.gguf", p)
	}
	if n := len(srv.GETs()); n != 1 {
		t.Fatalf("%d GETs for a fresh fetch; want 1", n)
	}
	// Again, by this Fetcher and by a new one on the same cache: nothing downloads.
	f2 := newFetcher(t, dir, cache.Options{}, fetch.Options{})
	for _, ff := range []*fetch.Fetcher{f, f2} {
		p2, err := ff.Fetch(context.Background(), req)
		if err != nil || p2 != p {
			t.Fatalf("second Fetch = %s, %v; want %s", p2, err, p)
		}
	}
	if n := len(srv.Requests()); n != 1 {
		t.Errorf("%d requests after fetching a cached model again; want still 1", n)
	}
}

func TestConcurrentFetchesShareOneDownload(t *testing.T) {
	data := model(200 << 10)
	srv := modelserver.Start(t, map[string][]byte{"/m.gguf": data})
	hold := srv.Hold("/m.gguf", int64(len(data)/2))
	f := newFetcher(t, t.TempDir(), cache.Options{}, fetch.Options{})
	req := fetch.Request{URL: srv.URL + "/m.gguf", SHA256: digestOf(data)}

	firstProgress, half := progressAt(int64(len(data) / 2))
	type result struct {
		path string
		err  error
	}
	results := make(chan result, 2)
	go func() {
		r := req
		r.Progress = firstProgress
		p, err := f.Fetch(context.Background(), r)
		results <- result{p, err}
	}()
	<-half
	if p, ok := f.Progress(req.SHA256); !ok || p.Done != int64(len(data)/2) || p.Total != int64(len(data)) {
		t.Errorf("Progress snapshot = %+v, %v; want half of %d done", p, ok, len(data))
	}
	// The second Fetch joins the running download: it hears its progress at once.
	joined := make(chan struct{})
	var once sync.Once
	go func() {
		r := req
		r.Progress = func(fetch.Progress) { once.Do(func() { close(joined) }) }
		p, err := f.Fetch(context.Background(), r)
		results <- result{p, err}
	}()
	<-joined
	hold.Release()
	var paths []string
	for range 2 {
		r := <-results
		if r.err != nil {
			t.Fatal(r.err)
		}
		paths = append(paths, r.path)
	}
	if paths[0] != paths[1] {
		t.Errorf("the two Fetches returned %v", paths)
	}
	if n := len(srv.GETs()); n != 1 {
		t.Errorf("%d GETs for two concurrent Fetches of one digest; want 1", n)
	}
	if _, ok := f.Progress(req.SHA256); ok {
		t.Error("Progress reports a download after it ended")
	}
}

func TestResume(t *testing.T) {
	data := model(256 << 10)
	half := len(data) / 2
	wantRange := fmt.Sprintf("bytes=%d-", half)

	t.Run("dropped connection", func(t *testing.T) {
		srv := modelserver.Start(t, map[string][]byte{"/m.gguf": data})
		hold := srv.Hold("/m.gguf", int64(half))
		f := newFetcher(t, t.TempDir(), cache.Options{}, fetch.Options{})
		progress, reached := progressAt(int64(half))
		go func() { <-reached; hold.Drop() }()
		p, err := f.Fetch(context.Background(), fetch.Request{URL: srv.URL + "/m.gguf", SHA256: digestOf(data), Progress: progress})
		if err != nil {
			t.Fatal(err, srv.Requests())
		}
		wantVerified(t, f, p, data)
		gets := srv.GETs()
		if len(gets) != 2 || gets[0].Range != "" || gets[1].Range != wantRange {
			t.Errorf("GETs %+v; want a plain one, then Range %s", gets, wantRange)
		}
	})

	t.Run("process restart", func(t *testing.T) {
		srv := modelserver.Start(t, map[string][]byte{"/m.gguf": data})
		srv.Hold("/m.gguf", int64(half)) // held until the client goes
		dir := t.TempDir()
		f := newFetcher(t, dir, cache.Options{}, fetch.Options{})
		progress, reached := progressAt(int64(half))
		ctx, cancel := context.WithCancel(context.Background())
		go func() { <-reached; cancel() }()
		req := fetch.Request{URL: srv.URL + "/m.gguf", SHA256: digestOf(data), Progress: progress}
		if _, err := f.Fetch(ctx, req); !errors.Is(err, context.Canceled) {
			t.Fatalf("Fetch with its context cancelled halfway = %v; want context.Canceled", err)
		}
		fi, err := os.Stat(f.Cache().PartialPath(req.SHA256))
		if err != nil || fi.Size() != int64(half) {
			t.Fatalf("partial file after the cancel: %v, %v; want %d bytes", fi, err, half)
		}
		// A new process: a new cache and Fetcher on the same directory.
		f2 := newFetcher(t, dir, cache.Options{}, fetch.Options{})
		req.Progress = nil
		p, err := f2.Fetch(context.Background(), req)
		if err != nil {
			t.Fatal(err)
		}
		wantVerified(t, f2, p, data)
		gets := srv.GETs()
		if len(gets) != 2 || gets[1].Range != wantRange {
			t.Errorf("GETs %+v; want the second with Range %s", gets, wantRange)
		}
	})

	t.Run("server ignores the range", func(t *testing.T) {
		srv := modelserver.Start(t, map[string][]byte{"/m.gguf": data})
		dir := t.TempDir()
		f := newFetcher(t, dir, cache.Options{}, fetch.Options{})
		d := digestOf(data)
		if err := os.WriteFile(f.Cache().PartialPath(d), data[:half], 0o644); err != nil {
			t.Fatal(err)
		}
		srv.IgnoreRange(true)
		p, err := f.Fetch(context.Background(), fetch.Request{URL: srv.URL + "/m.gguf", SHA256: d})
		if err != nil {
			t.Fatal(err)
		}
		wantVerified(t, f, p, data)
		if gets := srv.GETs(); len(gets) != 1 || gets[0].Range != wantRange {
			t.Errorf("GETs %+v; want one with Range %s (answered 200)", gets, wantRange)
		}
	})

	t.Run("partial file already complete", func(t *testing.T) {
		srv := modelserver.Start(t, map[string][]byte{"/m.gguf": data})
		f := newFetcher(t, t.TempDir(), cache.Options{}, fetch.Options{})
		d := digestOf(data)
		if err := os.WriteFile(f.Cache().PartialPath(d), data, 0o644); err != nil {
			t.Fatal(err)
		}
		p, err := f.Fetch(context.Background(), fetch.Request{URL: srv.URL + "/m.gguf", SHA256: d})
		if err != nil {
			t.Fatal(err)
		}
		wantVerified(t, f, p, data)
		if gets := srv.GETs(); len(gets) != 1 || gets[0].Range != fmt.Sprintf("bytes=%d-", len(data)) {
			t.Errorf("GETs %+v; want one range request answered 416", gets)
		}
	})
}

func TestDigestMismatch(t *testing.T) {
	data := model(64 << 10)
	for _, tc := range []struct {
		name string
		size int64
	}{
		{"wrong digest", 0},
		{"wrong size", int64(len(data)) + 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srv := modelserver.Start(t, map[string][]byte{"/m.gguf": data})
			f := newFetcher(t, t.TempDir(), cache.Options{}, fetch.Options{})
			wrong := digestOf([]byte("something else"))
			if tc.size != 0 {
				wrong = digestOf(data)
			}
			_, err := f.Fetch(context.Background(), fetch.Request{URL: srv.URL + "/m.gguf", SHA256: wrong, Size: tc.size})
			fe := wantClass(t, err, fetch.ClassDigestMismatch)
			if !strings.Contains(fe.Hint, "declared sha256") {
				t.Errorf("hint %q does not say to check the declared digest", fe.Hint)
			}
			if _, err := os.Stat(f.Cache().PartialPath(wrong)); !os.IsNotExist(err) {
				t.Errorf("partial file still there: %v", err)
			}
			if p, _, _ := f.Cache().Lookup(wrong, "m.gguf"); p != "" {
				t.Errorf("a mismatched file is in the cache at %s", p)
			}
		})
	}
}

func TestHTTPErrors(t *testing.T) {
	for _, tc := range []struct {
		code      int
		hint      string
		temporary bool
	}{
		{http.StatusNotFound, "check the path and the revision", false},
		{http.StatusUnauthorized, "POOL_MANAGERD_MODEL_TOKEN", false},
		{http.StatusForbidden, "--model-token-file", false},
		{http.StatusInternalServerError, "retried later", true},
		{http.StatusBadGateway, "retried later", true},
	} {
		t.Run(strconv.Itoa(tc.code), func(t *testing.T) {
			srv := modelserver.Start(t, nil)
			srv.Fail("/m.gguf", tc.code)
			f := newFetcher(t, t.TempDir(), cache.Options{}, fetch.Options{Auth: loopbackAuth()})
			_, err := f.Fetch(context.Background(), fetch.Request{URL: srv.URL + "/m.gguf", SHA256: digestOf([]byte("x"))})
			fe := wantClass(t, err, fetch.ClassHTTP)
			if fe.Code != tc.code || !strings.Contains(fe.Hint, tc.hint) || fe.Temporary != tc.temporary {
				t.Errorf("error code %d hint %q temporary %v; want %d, a hint with %q, %v", fe.Code, fe.Hint, fe.Temporary, tc.code, tc.hint, tc.temporary)
			}
			// One request: the caller's backoff retries, not a loop here.
			if n := len(srv.Requests()); n != 1 {
				t.Errorf("%d requests; want 1", n)
			}
		})
	}
}

func TestStall(t *testing.T) {
	data := model(64 << 10)
	srv := modelserver.Start(t, map[string][]byte{"/m.gguf": data})
	srv.Hold("/m.gguf", 1000) // sends 1000 bytes, then nothing
	f := newFetcher(t, t.TempDir(), cache.Options{}, fetch.Options{StallTimeout: 200 * time.Millisecond})
	_, err := f.Fetch(context.Background(), fetch.Request{URL: srv.URL + "/m.gguf", SHA256: digestOf(data)})
	fe := wantClass(t, err, fetch.ClassStalled)
	if !fe.Temporary {
		t.Error("a stall is not marked temporary")
	}
	// The bytes that arrived stay for the next try.
	if fi, err := os.Stat(f.Cache().PartialPath(digestOf(data))); err != nil || fi.Size() != 1000 {
		t.Errorf("partial file after the stall: %v, %v; want 1000 bytes", fi, err)
	}
}

// A trickle is a stall too: a source that keeps sending, but far too
// little to ever finish, fails the download (its bytes stay for the next
// try), instead of holding the pool in Fetching for weeks.
func TestTrickle(t *testing.T) {
	data := model(256 << 10)
	srv := modelserver.Start(t, map[string][]byte{"/m.gguf": data})
	srv.Trickle("/m.gguf", 100, 10*time.Millisecond) // about 10 KB/s
	f := newFetcher(t, t.TempDir(), cache.Options{}, fetch.Options{StallTimeout: 200 * time.Millisecond, StallBytes: 64 << 10})
	_, err := f.Fetch(context.Background(), fetch.Request{URL: srv.URL + "/m.gguf", SHA256: digestOf(data)})
	fe := wantClass(t, err, fetch.ClassStalled)
	if !strings.Contains(fe.Message, "trickle") || !fe.Temporary {
		t.Errorf("a trickle: %q (temporary %v); want a temporary stall that says so", fe.Message, fe.Temporary)
	}
	if fi, err := os.Stat(f.Cache().PartialPath(digestOf(data))); err != nil || fi.Size() == 0 || fi.Size() >= int64(len(data)) {
		t.Errorf("partial file after the trickle: %v, %v; want the bytes that came", fi, err)
	}
}

func TestInsufficientDisk(t *testing.T) {
	data := model(64 << 10)
	for _, tc := range []struct {
		name     string
		size     int64
		wantGets int
	}{
		{"declared size: no request", int64(len(data)), 0},
		{"size from Content-Length: no body read", 0, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srv := modelserver.Start(t, map[string][]byte{"/m.gguf": data})
			// Headers, then no body until the client goes: the check must
			// come from the headers alone.
			srv.Hold("/m.gguf", 0)
			f := newFetcher(t, t.TempDir(), cache.Options{MaxSize: int64(len(data)) / 2}, fetch.Options{})
			_, err := f.Fetch(context.Background(), fetch.Request{URL: srv.URL + "/m.gguf", SHA256: digestOf(data), Size: tc.size})
			fe := wantClass(t, err, fetch.ClassInsufficientDisk)
			if fe.Need != int64(len(data)) || fe.Free != int64(len(data))/2 {
				t.Errorf("need %d free %d; want %d, %d", fe.Need, fe.Free, len(data), len(data)/2)
			}
			if n := len(srv.GETs()); n != tc.wantGets {
				t.Errorf("%d GETs; want %d", n, tc.wantGets)
			}
			if fi, err := os.Stat(f.Cache().PartialPath(digestOf(data))); err == nil && fi.Size() != 0 {
				t.Errorf("%d bytes downloaded", fi.Size())
			}
		})
	}
}

// crossHost returns a server on 127.0.0.1 that redirects path to the same
// path on a second server reached as "localhost" (with extra on the
// redirect), and the second, which serves data there.
func crossHost(t *testing.T, path string, data []byte, extra http.Header) (origin, cdn *modelserver.Server) {
	t.Helper()
	cdn = modelserver.Start(t, map[string][]byte{path: data})
	origin = modelserver.Start(t, nil)
	origin.Redirect(path, cdn.LocalhostURL()+path, extra)
	return origin, cdn
}

// TestTokenGoesOnlyToListedHosts downloads from loopback servers (a
// listed host, an unlisted one, redirects to another host name, to another
// port, and within one server) and checks which requests carried the token.
func TestTokenGoesOnlyToListedHosts(t *testing.T) {
	data := model(32 << 10)
	for _, tc := range []struct {
		name string
		// setup returns the source URL and the servers to check.
		setup func(t *testing.T) (src string, origin, next *modelserver.Server)
		hosts []string
		// originAuth, nextAuth: the Authorization each server must see.
		originAuth, nextAuth string
	}{{
		name: "listed host",
		setup: func(t *testing.T) (string, *modelserver.Server, *modelserver.Server) {
			srv := modelserver.Start(t, map[string][]byte{"/m.gguf": data})
			return srv.URL + "/m.gguf", srv, nil
		},
		hosts:      []string{"127.0.0.1"},
		originAuth: "Bearer " + token,
	}, {
		name: "listed host and port",
		setup: func(t *testing.T) (string, *modelserver.Server, *modelserver.Server) {
			srv := modelserver.Start(t, map[string][]byte{"/m.gguf": data})
			return srv.URL + "/m.gguf", srv, nil
		},
		hosts:      nil, // set from the server's address below
		originAuth: "Bearer " + token,
	}, {
		name: "unlisted host (the default list)",
		setup: func(t *testing.T) (string, *modelserver.Server, *modelserver.Server) {
			srv := modelserver.Start(t, map[string][]byte{"/m.gguf": data})
			return srv.URL + "/m.gguf", srv, nil
		},
		hosts: []string{fetch.DefaultTokenHost},
	}, {
		name: "listed host, another port listed",
		setup: func(t *testing.T) (string, *modelserver.Server, *modelserver.Server) {
			srv := modelserver.Start(t, map[string][]byte{"/m.gguf": data})
			return srv.URL + "/m.gguf", srv, nil
		},
		hosts: []string{"127.0.0.1:1"},
	}, {
		name: "redirect to another host name",
		setup: func(t *testing.T) (string, *modelserver.Server, *modelserver.Server) {
			origin, cdn := crossHost(t, "/m.gguf", data, nil)
			return origin.URL + "/m.gguf", origin, cdn
		},
		hosts:      []string{"127.0.0.1", "localhost"},
		originAuth: "Bearer " + token,
	}, {
		name: "redirect to another port of the same host",
		setup: func(t *testing.T) (string, *modelserver.Server, *modelserver.Server) {
			other := modelserver.Start(t, map[string][]byte{"/m.gguf": data})
			origin := modelserver.Start(t, nil)
			origin.Redirect("/m.gguf", other.URL+"/m.gguf", nil)
			return origin.URL + "/m.gguf", origin, other
		},
		hosts:      []string{"127.0.0.1"},
		originAuth: "Bearer " + token,
	}, {
		name: "redirect within the source's host and port",
		setup: func(t *testing.T) (string, *modelserver.Server, *modelserver.Server) {
			srv := modelserver.Start(t, map[string][]byte{"/blob/m.gguf": data})
			srv.Redirect("/m.gguf", srv.URL+"/blob/m.gguf", nil)
			return srv.URL + "/m.gguf", srv, nil
		},
		hosts:      []string{"127.0.0.1"},
		originAuth: "Bearer " + token,
	}} {
		t.Run(tc.name, func(t *testing.T) {
			src, origin, next := tc.setup(t)
			if !strings.HasPrefix(origin.URL, "http://127.0.0.1:") {
				t.Fatalf("origin at %s; the test needs it on 127.0.0.1", origin.URL)
			}
			hosts := tc.hosts
			if hosts == nil {
				hosts = []string{strings.TrimPrefix(origin.URL, "http://")}
			}
			auth := fetch.Auth{Token: fetch.StaticToken(token), Hosts: hosts}
			f := newFetcher(t, t.TempDir(), cache.Options{}, fetch.Options{Auth: auth})
			p, err := f.Fetch(context.Background(), fetch.Request{URL: src, FileName: "m.gguf", SHA256: digestOf(data)})
			if err != nil {
				t.Fatal(err)
			}
			wantVerified(t, f, p, data)
			if _, err := f.Resolve(context.Background(), src); err != nil {
				t.Fatal(err)
			}
			check := func(who string, srv *modelserver.Server, want string) {
				t.Helper()
				got := srv.Requests()
				if len(got) == 0 {
					t.Errorf("%s saw no request", who)
				}
				for _, r := range got {
					if r.Authorization != want {
						t.Errorf("%s: %s %s%s carried Authorization %q; want %q", who, r.Method, r.Host, r.Path, r.Authorization, want)
					}
				}
			}
			check("the source", origin, tc.originAuth)
			if next != nil {
				check("the redirect's target", next, tc.nextAuth)
			}
		})
	}
}

func TestOffline(t *testing.T) {
	data := model(16 << 10)
	srv := modelserver.Start(t, map[string][]byte{"/m.gguf": data})
	dir := t.TempDir()
	req := fetch.Request{URL: srv.URL + "/m.gguf", SHA256: digestOf(data)}
	offline := newFetcher(t, dir, cache.Options{}, fetch.Options{Offline: true})
	_, err := offline.Fetch(context.Background(), req)
	wantClass(t, err, fetch.ClassNotCached)
	if n := len(srv.Requests()); n != 0 {
		t.Fatalf("offline mode sent %d requests", n)
	}
	online := newFetcher(t, dir, cache.Options{}, fetch.Options{})
	want, err := online.Fetch(context.Background(), req)
	if err != nil {
		t.Fatal(err)
	}
	got, err := offline.Fetch(context.Background(), req)
	if err != nil || got != want {
		t.Fatalf("offline Fetch of a cached model = %s, %v; want %s", got, err, want)
	}
	// A cached file that no longer matches its digest is not served offline.
	if err := os.Chmod(want, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(want, []byte("tampered"), 0o644); err != nil {
		t.Fatal(err)
	}
	_, err = offline.Fetch(context.Background(), req)
	wantClass(t, err, fetch.ClassNotCached)
	if n := len(srv.Requests()); n != 1 {
		t.Errorf("%d requests in all; want the online one only", n)
	}
}

func TestResolve(t *testing.T) {
	data := model(8 << 10)
	claimed := digestOf(data)
	origin, cdn := crossHost(t, "/org/repo/resolve/c/m.gguf", data, http.Header{
		"X-Linked-Etag": {`"` + claimed + `"`},
		"X-Linked-Size": {"123456789"},
	})
	f := newFetcher(t, t.TempDir(), cache.Options{}, fetch.Options{Auth: loopbackAuth()})
	r, err := f.Resolve(context.Background(), origin.URL+"/org/repo/resolve/c/m.gguf")
	if err != nil {
		t.Fatal(err)
	}
	if r.SHA256 != claimed || r.Size != 123456789 || !r.AcceptRanges {
		t.Errorf("Resolve = %+v; want the linked digest and size, ranges accepted", r)
	}
	if got := cdn.Requests(); len(got) != 1 || got[0].Method != http.MethodHead || got[0].Authorization != "" {
		t.Errorf("the other host saw %+v; want one HEAD without Authorization", got)
	}

	// A plain source: the size from Content-Length, no digest.
	plain := modelserver.Start(t, map[string][]byte{"/m.gguf": data})
	r, err = f.Resolve(context.Background(), plain.URL+"/m.gguf")
	if err != nil || r.Size != int64(len(data)) || r.SHA256 != "" {
		t.Errorf("Resolve of a plain source = %+v, %v; want size %d, no digest", r, err, len(data))
	}
	_, err = f.Resolve(context.Background(), plain.URL+"/missing.gguf")
	if fe := wantClass(t, err, fetch.ClassHTTP); fe.Code != http.StatusNotFound {
		t.Errorf("code %d; want 404", fe.Code)
	}
}

func TestFetchManifest(t *testing.T) {
	files := map[string][]byte{
		"/base/config.json":               []byte(`{"model_type":"llama"}`),
		"/base/weights/model.safetensors": model(100 << 10),
	}
	srv := modelserver.Start(t, files)
	var m modelsource.Manifest
	for p, b := range files {
		m.Files = append(m.Files, modelsource.File{Path: strings.TrimPrefix(p, "/base/"), SHA256: digestOf(b), Size: int64(len(b))})
	}
	f := newFetcher(t, t.TempDir(), cache.Options{}, fetch.Options{})
	var last fetch.Progress
	req := fetch.DirRequest{BaseURL: srv.URL + "/base", Manifest: m, Progress: func(p fetch.Progress) { last = p }}
	dir, err := f.FetchManifest(context.Background(), req)
	if err != nil {
		t.Fatal(err)
	}
	if dir != f.Cache().EntryDir(m.Digest()) {
		t.Errorf("directory %s; want the manifest digest's entry", dir)
	}
	for p, b := range files {
		got, err := os.ReadFile(dir + strings.TrimPrefix(p, "/base"))
		if err != nil || digestOf(got) != digestOf(b) {
			t.Errorf("%s: %v, or wrong content", p, err)
		}
	}
	if last.Done != m.Size() || last.Total != m.Size() {
		t.Errorf("last progress %+v; want %d of %d", last, m.Size(), m.Size())
	}
	if _, verified, err := f.Cache().LookupManifest(m); !verified || err != nil {
		t.Errorf("LookupManifest = %v, %v; want verified", verified, err)
	}
	n := len(srv.Requests())
	if _, err := f.FetchManifest(context.Background(), req); err != nil {
		t.Fatal(err)
	}
	if n != 2 || len(srv.Requests()) != n {
		t.Errorf("%d requests, then %d after fetching again; want 2 and no more", n, len(srv.Requests()))
	}

	// A directory that does not fit is refused before any file is fetched.
	small := newFetcher(t, t.TempDir(), cache.Options{MaxSize: m.Size() - 1}, fetch.Options{})
	_, err = small.FetchManifest(context.Background(), req)
	wantClass(t, err, fetch.ClassInsufficientDisk)
	if len(srv.Requests()) != n {
		t.Error("a directory too big for the cache was fetched")
	}
}

func TestParallelLimit(t *testing.T) {
	a, b := model(64<<10), model(65<<10)
	srv := modelserver.Start(t, map[string][]byte{"/a.gguf": a, "/b.gguf": b})
	hold := srv.Hold("/a.gguf", int64(len(a)/2))
	f := newFetcher(t, t.TempDir(), cache.Options{}, fetch.Options{Parallel: 1})

	errs := make(chan error, 2)
	progressA, halfA := progressAt(int64(len(a) / 2))
	go func() {
		_, err := f.Fetch(context.Background(), fetch.Request{URL: srv.URL + "/a.gguf", SHA256: digestOf(a), Progress: progressA})
		errs <- err
	}()
	<-halfA
	queued := make(chan struct{})
	var once sync.Once
	go func() {
		_, err := f.Fetch(context.Background(), fetch.Request{URL: srv.URL + "/b.gguf", SHA256: digestOf(b), Progress: func(p fetch.Progress) {
			if p.Queued {
				once.Do(func() { close(queued) })
			}
		}})
		errs <- err
	}()
	<-queued
	if p, ok := f.Progress(digestOf(b)); !ok || !p.Queued {
		t.Errorf("Progress of the second download = %+v, %v; want queued", p, ok)
	}
	if n := len(srv.GETs()); n != 1 {
		t.Errorf("%d GETs while one slot is taken; want 1", n)
	}
	hold.Release()
	for range 2 {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	if gets := srv.GETs(); len(gets) != 2 || gets[1].Path != "/b.gguf" {
		t.Errorf("GETs %+v; want a, then b", gets)
	}
}

// A Fetch that gives up while another Fetch of the same model keeps the
// download going hears no more of it: its pool is not shown Fetching a
// download it left.
func TestCancelledFetchStopsListening(t *testing.T) {
	data := model(1 << 20)
	srv := modelserver.Start(t, map[string][]byte{"/m.gguf": data})
	hold := srv.Hold("/m.gguf", 1000)
	f := newFetcher(t, t.TempDir(), cache.Options{}, fetch.Options{})
	req := fetch.Request{URL: srv.URL + "/m.gguf", SHA256: digestOf(data)}

	var returned atomic.Bool
	var afterReturn atomic.Int64
	ctxA, cancelA := context.WithCancel(context.Background())
	aGot := make(chan struct{})
	var aOnce sync.Once
	aDone := make(chan struct{})
	go func() {
		defer close(aDone)
		a := req
		a.Progress = func(p fetch.Progress) {
			if returned.Load() {
				afterReturn.Add(1)
			}
			if p.Done > 0 {
				aOnce.Do(func() { close(aGot) })
			}
		}
		_, _ = f.Fetch(ctxA, a)
	}()
	<-aGot
	bJoined := make(chan struct{})
	var bOnce sync.Once
	bDone := make(chan error, 1)
	go func() {
		b := req
		b.Progress = func(fetch.Progress) { bOnce.Do(func() { close(bJoined) }) }
		_, err := f.Fetch(context.Background(), b)
		bDone <- err
	}()
	<-bJoined // B learnt where the running download stands: it has joined
	cancelA()
	<-aDone
	returned.Store(true)
	hold.Release()
	if err := <-bDone; err != nil {
		t.Fatalf("the Fetch that stayed: %v", err)
	}
	if n := afterReturn.Load(); n != 0 {
		t.Errorf("the cancelled Fetch's progress callback was called %d times after it returned", n)
	}
}
