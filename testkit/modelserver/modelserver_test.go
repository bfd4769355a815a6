package modelserver_test

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/poolmanagerd/pool-managerd/testkit/modelserver"
)

func content(n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(i*13 + i/241)
	}
	return b
}

func do(t *testing.T, method, url string, header http.Header) (*http.Response, []byte) {
	t.Helper()
	req, err := http.NewRequestWithContext(context.Background(), method, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range header {
		req.Header[k] = v
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp, b
}

func TestRanges(t *testing.T) {
	data := content(1000)
	srv := modelserver.Start(t, map[string][]byte{"/m.gguf": data})
	for _, tc := range []struct {
		name, method, rng string
		status            int
		body              []byte
		contentRange      string
		// offset is the Offset logged: the range's start for a 206.
		offset int64
	}{
		{"whole file", http.MethodGet, "", http.StatusOK, data, "", 0},
		{"from an offset", http.MethodGet, "bytes=600-", http.StatusPartialContent, data[600:], "bytes 600-999/1000", 600},
		{"a slice", http.MethodGet, "bytes=10-19", http.StatusPartialContent, data[10:20], "bytes 10-19/1000", 10},
		{"past the end clipped", http.MethodGet, "bytes=990-5000", http.StatusPartialContent, data[990:], "bytes 990-999/1000", 990},
		{"the last bytes", http.MethodGet, "bytes=-100", http.StatusPartialContent, data[900:], "bytes 900-999/1000", 900},
		{"at the end", http.MethodGet, "bytes=1000-", http.StatusRequestedRangeNotSatisfiable, nil, "bytes */1000", 0},
		{"several ranges", http.MethodGet, "bytes=0-1,5-6", http.StatusRequestedRangeNotSatisfiable, nil, "bytes */1000", 0},
		{"not bytes", http.MethodGet, "items=0-1", http.StatusRequestedRangeNotSatisfiable, nil, "bytes */1000", 0},
		{"HEAD", http.MethodHead, "", http.StatusOK, nil, "", 0},
		{"HEAD of a range", http.MethodHead, "bytes=100-", http.StatusPartialContent, nil, "bytes 100-999/1000", 100},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := http.Header{}
			if tc.rng != "" {
				h.Set("Range", tc.rng)
			}
			resp, body := do(t, tc.method, srv.URL+"/m.gguf", h)
			if resp.StatusCode != tc.status {
				t.Fatalf("status %d; want %d", resp.StatusCode, tc.status)
			}
			if got := resp.Header.Get("Content-Range"); got != tc.contentRange {
				t.Errorf("Content-Range %q; want %q", got, tc.contentRange)
			}
			if tc.status != http.StatusRequestedRangeNotSatisfiable && !bytes.Equal(body, tc.body) {
				t.Errorf("body of %d bytes; want %d", len(body), len(tc.body))
			}
			if tc.status != http.StatusRequestedRangeNotSatisfiable {
				if got := resp.Header.Get("Accept-Ranges"); got != "bytes" {
					t.Errorf("Accept-Ranges %q", got)
				}
			}
			if tc.method == http.MethodHead && resp.ContentLength != int64(len(data)-offset(tc.rng)) {
				t.Errorf("HEAD Content-Length %d", resp.ContentLength)
			}
			last := srv.Requests()[len(srv.Requests())-1]
			want := modelserver.Request{Time: last.Time, Method: tc.method, Host: last.Host, Path: "/m.gguf", Range: tc.rng, Status: tc.status, Offset: tc.offset, Sent: int64(len(tc.body))}
			if tc.status == http.StatusRequestedRangeNotSatisfiable {
				want.Sent = last.Sent // the error text
			}
			if last != want {
				t.Errorf("logged %+v; want %+v", last, want)
			}
		})
	}
}

// offset is the start of a "bytes=N-" range, 0 for none.
func offset(rng string) int {
	if rng == "" {
		return 0
	}
	start, _, _ := modelserver.ParseRange(rng, 1<<40)
	return int(start)
}

func TestCannedAnswers(t *testing.T) {
	data := content(100)
	for _, tc := range []struct {
		name   string
		setup  func(s *modelserver.Server)
		path   string
		status int
		body   []byte
	}{
		{"missing file", func(*modelserver.Server) {}, "/nope.gguf", http.StatusNotFound, nil},
		{"removed file", func(s *modelserver.Server) { s.Remove("/m.gguf") }, "/m.gguf", http.StatusNotFound, nil},
		{"canned 500", func(s *modelserver.Server) { s.Fail("/m.gguf", 500) }, "/m.gguf", http.StatusInternalServerError, nil},
		{"canned 404 of a file", func(s *modelserver.Server) { s.Fail("/m.gguf", 404) }, "/m.gguf", http.StatusNotFound, nil},
		{"failure cleared", func(s *modelserver.Server) { s.Fail("/m.gguf", 500); s.Fail("/m.gguf", 0) }, "/m.gguf", http.StatusOK, data},
		{"another file added", func(s *modelserver.Server) { s.Put("/n.gguf", data[:7]) }, "/n.gguf", http.StatusOK, data[:7]},
		{"range ignored", func(s *modelserver.Server) { s.IgnoreRange(true) }, "/m.gguf", http.StatusOK, data},
		{"hook answers", func(s *modelserver.Server) {
			s.Handle(func(w http.ResponseWriter, _ *http.Request, i int) bool {
				if i != 0 {
					return false
				}
				w.WriteHeader(http.StatusTeapot)
				return true
			})
		}, "/m.gguf", http.StatusTeapot, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srv := modelserver.Start(t, map[string][]byte{"/m.gguf": data})
			tc.setup(srv)
			h := http.Header{}
			if tc.name == "range ignored" {
				h.Set("Range", "bytes=50-")
			}
			resp, body := do(t, http.MethodGet, srv.URL+tc.path, h)
			if resp.StatusCode != tc.status {
				t.Fatalf("status %d; want %d", resp.StatusCode, tc.status)
			}
			if tc.body != nil && !bytes.Equal(body, tc.body) {
				t.Errorf("body of %d bytes; want %d", len(body), len(tc.body))
			}
			if got := srv.GETsOf(tc.path); len(got) != 1 || got[0].Status != tc.status {
				t.Errorf("logged %+v; want one GET answered %d", got, tc.status)
			}
		})
	}
}

func TestHold(t *testing.T) {
	data := content(64 << 10)
	const at = 20 << 10
	for _, tc := range []struct {
		name string
		// end ends the hold; want says what the client then has.
		end      func(h *modelserver.Hold)
		dropped  bool
		rng      string
		wantFrom int
	}{
		{"released", (*modelserver.Hold).Release, false, "", 0},
		{"dropped", (*modelserver.Hold).Drop, true, "", 0},
		{"released within a range", (*modelserver.Hold).Release, false, "bytes=10240-", 10 << 10},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srv := modelserver.Start(t, map[string][]byte{"/m.gguf": data})
			h := srv.Hold("/m.gguf", at)
			req, err := http.NewRequest(http.MethodGet, srv.URL+"/m.gguf", nil)
			if err != nil {
				t.Fatal(err)
			}
			if tc.rng != "" {
				req.Header.Set("Range", tc.rng)
			}
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			<-h.Sent()
			// The bytes before the hold arrive; the next read waits for the end of the hold.
			head := make([]byte, at-tc.wantFrom)
			if _, err := io.ReadFull(resp.Body, head); err != nil || !bytes.Equal(head, data[tc.wantFrom:at]) {
				t.Fatalf("the bytes before the hold: %v, or wrong content", err)
			}
			if got := srv.SentOf("/m.gguf"); got != int64(len(head)) {
				t.Errorf("SentOf = %d at the hold; want %d", got, len(head))
			}
			tc.end(h)
			rest, err := io.ReadAll(resp.Body)
			if tc.dropped {
				if err == nil {
					t.Fatalf("read %d more bytes and no error after a drop", len(rest))
				}
			} else if err != nil || !bytes.Equal(rest, data[at:]) {
				t.Fatalf("after the release: %d bytes, %v; want the rest", len(rest), err)
			}
			<-h.Done()
			// The hold was for one request: the next is served whole.
			if _, body := do(t, http.MethodGet, srv.URL+"/m.gguf", nil); !bytes.Equal(body, data) {
				t.Errorf("the GET after the hold got %d bytes", len(body))
			}
		})
	}

	t.Run("client goes", func(t *testing.T) {
		srv := modelserver.Start(t, map[string][]byte{"/m.gguf": data})
		h := srv.Hold("/m.gguf", at)
		ctx, cancel := context.WithCancel(context.Background())
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, srv.URL+"/m.gguf", nil)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		<-h.Sent()
		cancel()
		resp.Body.Close()
		<-h.Done()
		if got := srv.GETs(); len(got) != 1 || got[0].Sent != at {
			t.Errorf("logged %+v; want one GET that sent %d bytes", got, at)
		}
	})

	t.Run("a range past the hold is not held", func(t *testing.T) {
		srv := modelserver.Start(t, map[string][]byte{"/m.gguf": data})
		h := srv.Hold("/m.gguf", at)
		_, body := do(t, http.MethodGet, srv.URL+"/m.gguf", http.Header{"Range": {"bytes=" + strconv.Itoa(at+1) + "-"}})
		if !bytes.Equal(body, data[at+1:]) {
			t.Errorf("got %d bytes", len(body))
		}
		select {
		case <-h.Sent():
			t.Error("the hold was taken by a range that does not cover it")
		default:
		}
	})

	t.Run("close ends a hold", func(t *testing.T) {
		srv := modelserver.New(map[string][]byte{"/m.gguf": data})
		h := srv.Hold("/m.gguf", at)
		resp, err := http.Get(srv.URL + "/m.gguf")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		<-h.Sent()
		srv.Close()
		<-h.Done()
		if _, err := io.ReadAll(resp.Body); err == nil {
			t.Error("the body ended cleanly though the server closed at the hold")
		}
	})
}

func TestTrickle(t *testing.T) {
	data := content(5000)
	srv := modelserver.Start(t, map[string][]byte{"/m.gguf": data})
	const every = 5 * time.Millisecond
	srv.Trickle("/m.gguf", 1000, every)
	began := time.Now()
	resp, err := http.Get(srv.URL + "/m.gguf")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	got, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	took := time.Since(began)
	if !bytes.Equal(got, data) {
		t.Errorf("%d bytes; want the file's %d", len(got), len(data))
	}
	// Five chunks with a pause between each: the file cannot have come
	// faster than the four pauses (how much slower depends on the machine,
	// and is not checked).
	if took < 4*every {
		t.Errorf("the trickled file came in %v; the server pauses %v between its 5 chunks", took, every)
	}
}

func TestHFRedirect(t *testing.T) {
	data := content(3000)
	srv := modelserver.Start(t, nil)
	rev := "0123456789abcdef0123456789abcdef01234567"
	url := srv.HF("org", "repo", rev, "m.gguf", data)
	if want := srv.URL + "/org/repo/resolve/" + rev + "/m.gguf"; url != want {
		t.Fatalf("HF URL %s; want %s", url, want)
	}

	// Not followed: the Hub's headers on the 302.
	noFollow := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	resp, err := noFollow.Head(url)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusFound ||
		resp.Header.Get("X-Linked-Etag") != `"`+modelserver.SHA256(data)+`"` ||
		resp.Header.Get("X-Linked-Size") != "3000" ||
		resp.Header.Get("Location") != srv.LocalhostURL()+"/cdn/"+modelserver.SHA256(data) {
		t.Errorf("HEAD: %s %v", resp.Status, resp.Header)
	}

	// Followed, with a token: the other host never sees it.
	_, body := do(t, http.MethodGet, url, http.Header{"Authorization": {"Bearer secret"}})
	if !bytes.Equal(body, data) {
		t.Fatalf("got %d bytes", len(body))
	}
	gets := srv.GETs()
	if len(gets) != 2 || gets[0].Authorization != "Bearer secret" || gets[0].Status != http.StatusFound ||
		gets[1].Authorization != "" || gets[1].Host == gets[0].Host || gets[1].Status != http.StatusOK {
		t.Errorf("GETs %+v; want the resolve URL with the token, then the CDN host without", gets)
	}
}

func TestPutFile(t *testing.T) {
	// A sparse file of 1 GiB apparent size: a range of its head is served
	// without the rest ever being read or sent.
	name := filepath.Join(t.TempDir(), "big.gguf")
	head := content(4096)
	if err := os.WriteFile(name, head, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(name, 1<<30); err != nil {
		t.Fatal(err)
	}
	srv := modelserver.Start(t, nil)
	if err := srv.PutFile("/big.gguf", name); err != nil {
		t.Fatal(err)
	}
	if err := srv.PutFile("/gone.gguf", filepath.Join(t.TempDir(), "none")); err == nil {
		t.Error("PutFile of a missing file: no error")
	}
	resp, body := do(t, http.MethodGet, srv.URL+"/big.gguf", http.Header{"Range": {"bytes=0-8191"}})
	if resp.StatusCode != http.StatusPartialContent || resp.Header.Get("Content-Range") != "bytes 0-8191/1073741824" {
		t.Fatalf("%s, Content-Range %q", resp.Status, resp.Header.Get("Content-Range"))
	}
	if !bytes.Equal(body[:4096], head) || !bytes.Equal(body[4096:], make([]byte, 4096)) {
		t.Error("the range does not hold the file's bytes")
	}
	resp, _ = do(t, http.MethodHead, srv.URL+"/big.gguf", nil)
	if resp.ContentLength != 1<<30 {
		t.Errorf("HEAD Content-Length %d; want 1 GiB", resp.ContentLength)
	}
	if got := srv.SentOf("/big.gguf"); got != 8192 {
		t.Errorf("SentOf = %d; want only the 8192 bytes asked for", got)
	}
}

func TestEndOf(t *testing.T) {
	data := content(1000)
	get := func(rng string) func(t *testing.T, s *modelserver.Server) {
		return func(t *testing.T, s *modelserver.Server) {
			h := http.Header{}
			if rng != "" {
				h.Set("Range", rng)
			}
			do(t, http.MethodGet, s.URL+"/m.gguf", h)
		}
	}
	for _, tc := range []struct {
		name string
		// setup steers the server; requests are then made in turn.
		setup    func(s *modelserver.Server)
		requests []func(t *testing.T, s *modelserver.Server)
		// end is EndOf("/m.gguf"); offsets the Offset of each request logged.
		end     int64
		offsets []int64
	}{
		{"no request", nil, nil, 0, nil},
		{"the whole file", nil, []func(*testing.T, *modelserver.Server){get("")}, 1000, []int64{0}},
		{"a slice", nil, []func(*testing.T, *modelserver.Server){get("bytes=10-19")}, 20, []int64{10}},
		{"the furthest of several ranges", nil,
			[]func(*testing.T, *modelserver.Server){get("bytes=0-99"), get("bytes=300-349"), get("bytes=100-199")}, 350, []int64{0, 300, 100}},
		{"from an offset to the end", nil, []func(*testing.T, *modelserver.Server){get("bytes=600-")}, 1000, []int64{600}},
		{"the last bytes", nil, []func(*testing.T, *modelserver.Server){get("bytes=-100")}, 1000, []int64{900}},
		{"a range past the end", nil, []func(*testing.T, *modelserver.Server){get("bytes=1000-")}, 0, []int64{0}},
		{"HEAD", nil, []func(*testing.T, *modelserver.Server){func(t *testing.T, s *modelserver.Server) {
			do(t, http.MethodHead, s.URL+"/m.gguf", http.Header{"Range": {"bytes=100-"}})
		}}, 0, []int64{100}},
		{"a canned failure's body is not the file", func(s *modelserver.Server) { s.Fail("/m.gguf", 500) },
			[]func(*testing.T, *modelserver.Server){get("bytes=0-9")}, 0, []int64{0}},
		{"a range ignored", func(s *modelserver.Server) { s.IgnoreRange(true) },
			[]func(*testing.T, *modelserver.Server){get("bytes=0-9")}, 1000, []int64{0}},
		{"another file's bytes", nil, []func(*testing.T, *modelserver.Server){func(t *testing.T, s *modelserver.Server) {
			do(t, http.MethodGet, s.URL+"/n.gguf", nil)
		}}, 0, []int64{0}},
		{"stopped at a hold", func(s *modelserver.Server) { s.Hold("/m.gguf", 400).Drop() },
			[]func(*testing.T, *modelserver.Server){func(t *testing.T, s *modelserver.Server) {
				resp, err := http.Get(s.URL + "/m.gguf")
				if err != nil {
					t.Fatal(err)
				}
				defer resp.Body.Close()
				if _, err := io.ReadAll(resp.Body); err == nil {
					t.Error("a dropped body ended cleanly")
				}
			}}, 400, []int64{0}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srv := modelserver.Start(t, map[string][]byte{"/m.gguf": data, "/n.gguf": content(5000)})
			if tc.setup != nil {
				tc.setup(srv)
			}
			for _, req := range tc.requests {
				req(t, srv)
			}
			// A dropped hold's request may still be logging its last write:
			// Close waits for the requests in flight.
			srv.Close()
			if got := srv.EndOf("/m.gguf"); got != tc.end {
				t.Errorf("EndOf = %d; want %d", got, tc.end)
			}
			var offsets []int64
			for _, r := range srv.Requests() {
				offsets = append(offsets, r.Offset)
			}
			if !slices.Equal(offsets, tc.offsets) {
				t.Errorf("offsets logged %v; want %v", offsets, tc.offsets)
			}
		})
	}
}
