// Package modelserver is a model source for tests: an HTTP server on
// loopback that serves model files by path, the way a plain HTTPS host or the
// Hugging Face Hub does, and lets a test steer and watch every byte of it.
//
//   - GET and HEAD with single Range requests ("bytes=N-", "bytes=N-M",
//     "bytes=-N"): 206 with Content-Range, 200 without a Range, 416 past the
//     end; Accept-Ranges: bytes on every file.
//   - A request log: method, host, path, Range, Authorization, the status
//     answered, the file offset the body starts at and the body bytes sent;
//     SentOf and EndOf sum it up by path (how much was read, and how far
//     into the file).
//   - Holds: Hold(path, n) stops the body of the next GET of path at byte
//     offset n, says so on a channel once those bytes are flushed, and then
//     waits for the test to release the rest or drop the connection (or for
//     the client to go): no sleeps, no timing races.
//   - Canned failures: a status code for a path (404, 500, ...), a slow
//     trickle, a server that ignores Range.
//   - Hugging Face style redirects: a resolve URL that answers 302 to a
//     "CDN" on another host name with X-Linked-Etag (the sha256) and
//     X-Linked-Size, as the Hub does for LFS files.
//
// New starts one in-process for callers without a *testing.T (the BDD
// steps); Start starts one closed at the test's cleanup.
package modelserver

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// Request is one request the server saw.
type Request struct {
	// Time is when the request came.
	Time   time.Time
	Method string
	// Host is the Host header: "127.0.0.1:PORT", or "localhost:PORT" for
	// a request that followed a redirect to the other host name.
	Host string
	Path string
	// Range is the Range header; empty when none.
	Range string
	// Authorization is the Authorization header; empty when none.
	Authorization string
	// Status is the status answered; 0 while the request runs (or when the
	// client went before the header was written).
	Status int
	// Offset is the byte offset in the file of the body's first byte: the
	// start of the range answered for a 206, 0 for anything else.
	Offset int64
	// Sent counts the body bytes written so far.
	Sent int64
}

// Server is a running model server.
type Server struct {
	// URL is the server's base URL on 127.0.0.1, without a trailing slash.
	URL string
	srv *httptest.Server
	// closing is closed by Close: it ends every hold.
	closing   chan struct{}
	closeOnce sync.Once

	mu          sync.Mutex
	files       map[string]content
	log         []Request
	holds       map[string][]*Hold
	fails       map[string]int
	trickles    map[string]trickle
	redirects   map[string]redirect
	ignoreRange bool
	// open are the files PutFile opened, closed by Close.
	open []*os.File
	hook func(w http.ResponseWriter, r *http.Request, i int) bool
}

// content is a file the server serves: bytes in memory, or a file on disk
// (a sparse GGUF of tens of gigabytes costs nothing to serve a header of).
type content struct {
	r    io.ReaderAt
	size int64
}

type trickle struct {
	chunk int
	every time.Duration
}

type redirect struct {
	target string
	header http.Header
}

// New starts a server on 127.0.0.1 serving files (path → content; paths
// start with "/"). The caller closes it.
func New(files map[string][]byte) *Server {
	s := &Server{
		closing:   make(chan struct{}),
		files:     map[string]content{},
		holds:     map[string][]*Hold{},
		fails:     map[string]int{},
		trickles:  map[string]trickle{},
		redirects: map[string]redirect{},
	}
	for p, b := range files {
		s.files[p] = content{bytes.NewReader(b), int64(len(b))}
	}
	s.srv = httptest.NewServer(http.HandlerFunc(s.serve))
	s.URL = s.srv.URL
	return s
}

// Start is New, closed at the end of the test.
func Start(tb testing.TB, files map[string][]byte) *Server {
	tb.Helper()
	s := New(files)
	tb.Cleanup(s.Close)
	return s
}

// Close ends every hold (as a release would) and stops the server, waiting
// for the requests in flight.
func (s *Server) Close() {
	s.closeOnce.Do(func() {
		close(s.closing)
		s.srv.CloseClientConnections()
		s.srv.Close()
		s.mu.Lock()
		defer s.mu.Unlock()
		for _, f := range s.open {
			_ = f.Close()
		}
	})
}

// LocalhostURL is the server's base URL by the name "localhost": another
// host to a client that came by URL (127.0.0.1), as the Hub's CDN is.
func (s *Server) LocalhostURL() string {
	_, port, _ := net.SplitHostPort(s.srv.Listener.Addr().String())
	return "http://localhost:" + port
}

// Put serves data at path (replacing what was there).
func (s *Server) Put(path string, data []byte) {
	s.PutReaderAt(path, bytes.NewReader(data), int64(len(data)))
}

// PutReaderAt serves size bytes of r at path (replacing what was there).
func (s *Server) PutReaderAt(path string, r io.ReaderAt, size int64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.files[path] = content{r, size}
}

// PutFile serves the file at name on disk at path, as it is now (its
// size is read once); the file is opened here and closed with the server.
// A sparse file (ggufgen's models) is served without being read whole.
func (s *Server) PutFile(path, name string) error {
	f, err := os.Open(name)
	if err != nil {
		return fmt.Errorf("modelserver: %w", err)
	}
	fi, err := f.Stat()
	if err != nil {
		_ = f.Close()
		return fmt.Errorf("modelserver: %w", err)
	}
	s.mu.Lock()
	s.open = append(s.open, f)
	s.mu.Unlock()
	s.PutReaderAt(path, f, fi.Size())
	return nil
}

// Remove stops serving path: it answers 404.
func (s *Server) Remove(path string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.files, path)
}

// Fail makes every request of path answer code (with a short text body);
// code 0 clears it.
func (s *Server) Fail(path string, code int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if code == 0 {
		delete(s.fails, path)
		return
	}
	s.fails[path] = code
}

// Trickle makes the bodies of path come chunk bytes at a time, one chunk
// every interval: a slow source (not a stalled one, unless interval is
// longer than the client's stall timeout). chunk 0 clears it.
func (s *Server) Trickle(path string, chunk int, every time.Duration) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if chunk <= 0 {
		delete(s.trickles, path)
		return
	}
	s.trickles[path] = trickle{chunk, every}
}

// IgnoreRange makes the server answer every GET with the whole file and
// 200, whatever its Range, as some servers do.
func (s *Server) IgnoreRange(ignore bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.ignoreRange = ignore
}

// Redirect makes requests of path answer 302 Found to target (an absolute
// URL), with header added to the response.
func (s *Server) Redirect(path, target string, header http.Header) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.redirects[path] = redirect{target, header}
}

// SHA256 is the hex sha256 of data.
func SHA256(data []byte) string {
	d := sha256.Sum256(data)
	return hex.EncodeToString(d[:])
}

// LinkedHeader is what the Hugging Face Hub adds to the redirect of an LFS
// file: X-Linked-Etag (the quoted sha256) and X-Linked-Size.
func LinkedHeader(data []byte) http.Header {
	return http.Header{
		"X-Linked-Etag": {`"` + SHA256(data) + `"`},
		"X-Linked-Size": {strconv.Itoa(len(data))},
	}
}

// HF serves data as the Hub serves an LFS file: the path
// /ORG/REPO/resolve/REVISION/FILE answers 302 to /cdn/SHA256 at
// LocalhostURL (another host, so that a client must not send its token
// there) with LinkedHeader, and /cdn/SHA256 serves the file. It returns
// the resolve URL; the hf:// reference is hf://ORG/REPO@REVISION/FILE.
func (s *Server) HF(org, repo, revision, file string, data []byte) string {
	path := fmt.Sprintf("/%s/%s/resolve/%s/%s", org, repo, revision, file)
	cdn := "/cdn/" + SHA256(data)
	s.Put(cdn, data)
	s.Redirect(path, s.LocalhostURL()+cdn, LinkedHeader(data))
	return s.URL + path
}

// Handle sets a hook that sees every request first and may answer it
// itself (returning true); i counts the requests from 0. nil clears it.
func (s *Server) Handle(hook func(w http.ResponseWriter, r *http.Request, i int) bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.hook = hook
}

// Requests returns the log so far.
func (s *Server) Requests() []Request {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]Request(nil), s.log...)
}

// GETs returns the GET requests of the log so far.
func (s *Server) GETs() []Request {
	return s.filter(func(r Request) bool { return r.Method == http.MethodGet })
}

// GETsOf returns the GET requests of path so far.
func (s *Server) GETsOf(path string) []Request {
	return s.filter(func(r Request) bool { return r.Method == http.MethodGet && r.Path == path })
}

// SentOf counts the body bytes sent for path, over every request so far.
func (s *Server) SentOf(path string) int64 {
	var n int64
	for _, r := range s.filter(func(r Request) bool { return r.Path == path }) {
		n += r.Sent
	}
	return n
}

// EndOf is one past the furthest byte of the file at path sent so far, over
// every request that answered with the file (200 or 206; the largest
// Offset + Sent): how far into the file clients read. 0 when none of its
// bytes were sent.
func (s *Server) EndOf(path string) int64 {
	var end int64
	for _, r := range s.filter(func(r Request) bool {
		return r.Path == path && r.Sent > 0 && (r.Status == http.StatusOK || r.Status == http.StatusPartialContent)
	}) {
		end = max(end, r.Offset+r.Sent)
	}
	return end
}

func (s *Server) filter(keep func(Request) bool) []Request {
	var out []Request
	for _, r := range s.Requests() {
		if keep(r) {
			out = append(out, r)
		}
	}
	return out
}

// Hold is a hold on the body of a GET: see Server.Hold.
type Hold struct {
	path  string
	after int64
	// sent is closed once the held request has flushed the bytes before
	// the hold; release or drop end the hold; done once its request ended.
	sent, release, drop, done chan struct{}
	relOnce, dropOnce         sync.Once
	doneOnce                  sync.Once
}

// Hold holds the body of the next GET of path whose response covers byte
// offset after: it sends the bytes before after, flushes them, closes
// Sent, and waits. Release sends the rest; Drop drops the connection
// instead; a client that goes first ends it too. Holds of one path apply
// in the order made, one request each.
func (s *Server) Hold(path string, after int64) *Hold {
	h := &Hold{
		path: path, after: after,
		sent: make(chan struct{}), release: make(chan struct{}), drop: make(chan struct{}), done: make(chan struct{}),
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.holds[path] = append(s.holds[path], h)
	return h
}

// Sent is closed once the held request has sent (and flushed) the bytes
// before the hold's offset: "N bytes sent".
func (h *Hold) Sent() <-chan struct{} { return h.sent }

// Done is closed once the held request has ended, however.
func (h *Hold) Done() <-chan struct{} { return h.done }

// Release lets the held request send the rest of its body. It may be
// called before the hold is reached, and more than once.
func (h *Hold) Release() { h.relOnce.Do(func() { close(h.release) }) }

// Drop makes the held request drop its connection at the hold, the rest
// unsent. It may be called before the hold is reached, and more than once.
func (h *Hold) Drop() { h.dropOnce.Do(func() { close(h.drop) }) }

func (h *Hold) end() { h.doneOnce.Do(func() { close(h.done) }) }

// takeHold returns (and forgets) the first hold of path that a body from
// start to end (exclusive) covers.
func (s *Server) takeHold(path string, start, end int64) *Hold {
	s.mu.Lock()
	defer s.mu.Unlock()
	for i, h := range s.holds[path] {
		if start <= h.after && h.after < end {
			s.holds[path] = append(s.holds[path][:i:i], s.holds[path][i+1:]...)
			return h
		}
	}
	return nil
}

func (s *Server) record(i int, update func(*Request)) {
	s.mu.Lock()
	defer s.mu.Unlock()
	update(&s.log[i])
}

// recorder is the ResponseWriter of a request: it logs its status and the
// body bytes it writes.
type recorder struct {
	http.ResponseWriter
	s *Server
	i int
}

func (w *recorder) WriteHeader(code int) {
	w.s.record(w.i, func(r *Request) { r.Status = code })
	w.ResponseWriter.WriteHeader(code)
}

func (w *recorder) Write(b []byte) (int, error) {
	n, err := w.ResponseWriter.Write(b)
	w.s.record(w.i, func(r *Request) {
		if r.Status == 0 {
			r.Status = http.StatusOK
		}
		r.Sent += int64(n)
	})
	return n, err
}

func (w *recorder) Flush() { w.ResponseWriter.(http.Flusher).Flush() }

func (s *Server) serve(rw http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	i := len(s.log)
	s.log = append(s.log, Request{
		Time: time.Now(), Method: r.Method, Host: r.Host, Path: r.URL.Path,
		Range: r.Header.Get("Range"), Authorization: r.Header.Get("Authorization"),
	})
	hook := s.hook
	code, failing := s.fails[r.URL.Path]
	red, redirecting := s.redirects[r.URL.Path]
	data, found := s.files[r.URL.Path]
	tr := s.trickles[r.URL.Path]
	ignoreRange := s.ignoreRange
	s.mu.Unlock()

	w := &recorder{ResponseWriter: rw, s: s, i: i}
	switch {
	case hook != nil && hook(w, r, i):
	case failing:
		http.Error(w, fmt.Sprintf("modelserver: canned %d for %s", code, r.URL.Path), code)
	case redirecting:
		for k, v := range red.header {
			w.Header()[k] = v
		}
		http.Redirect(w, r, red.target, http.StatusFound)
	case !found:
		http.NotFound(w, r)
	case r.Method != http.MethodGet && r.Method != http.MethodHead:
		w.Header().Set("Allow", "GET, HEAD")
		http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
	default:
		rng := r.Header.Get("Range")
		if ignoreRange {
			rng = ""
		}
		s.serveFile(w, r, data, rng, tr)
	}
}

// serveFile answers a GET or HEAD of data with the range rng.
func (s *Server) serveFile(w *recorder, r *http.Request, data content, rng string, tr trickle) {
	size := data.size
	w.Header().Set("Accept-Ranges", "bytes")
	w.Header().Set("Content-Type", "application/octet-stream")
	start, end := int64(0), size
	status := http.StatusOK
	if rng != "" {
		var ok bool
		start, end, ok = ParseRange(rng, size)
		if !ok {
			w.Header().Set("Content-Range", fmt.Sprintf("bytes */%d", size))
			http.Error(w, "range not satisfiable", http.StatusRequestedRangeNotSatisfiable)
			return
		}
		status = http.StatusPartialContent
		w.Header().Set("Content-Range", fmt.Sprintf("bytes %d-%d/%d", start, end-1, size))
		s.record(w.i, func(r *Request) { r.Offset = start })
	}
	w.Header().Set("Content-Length", strconv.FormatInt(end-start, 10))
	if r.Method == http.MethodHead {
		w.WriteHeader(status)
		return
	}
	h := s.takeHold(r.URL.Path, start, end)
	if h != nil {
		defer h.end()
	}
	w.WriteHeader(status)
	w.Flush()
	pos := start
	if h != nil {
		if !s.write(w, r, data, pos, h.after, tr) {
			return
		}
		pos = h.after
		w.Flush()
		close(h.sent)
		select {
		case <-h.release:
		case <-h.drop:
			panic(http.ErrAbortHandler)
		case <-r.Context().Done():
			return
		case <-s.closing:
			return
		}
		// Drop wins over a release given together.
		select {
		case <-h.drop:
			panic(http.ErrAbortHandler)
		default:
		}
	}
	s.write(w, r, data, pos, end, tr)
}

// write writes the bytes [from, to) of data, a trickle's chunk at a time
// (each flushed) when tr is set; false when the client went, the server
// closes or data cannot be read.
func (s *Server) write(w *recorder, r *http.Request, data content, from, to int64, tr trickle) bool {
	chunk := 32 << 10
	var tick <-chan time.Time
	if tr.chunk > 0 {
		chunk = tr.chunk
		t := time.NewTicker(tr.every)
		defer t.Stop()
		tick = t.C
	}
	buf := make([]byte, chunk)
	for from < to {
		n := int(min(int64(chunk), to-from))
		// ReadAt fills buf or says why not; io.EOF with a full buf is the end.
		if m, err := data.r.ReadAt(buf[:n], from); m != n || (err != nil && !errors.Is(err, io.EOF)) {
			panic(http.ErrAbortHandler)
		}
		if _, err := w.Write(buf[:n]); err != nil {
			return false
		}
		from += int64(n)
		if tick == nil || from == to {
			continue
		}
		w.Flush()
		select {
		case <-tick:
		case <-r.Context().Done():
			return false
		case <-s.closing:
			return false
		}
	}
	return true
}

// ParseRange parses a single-range Range header ("bytes=N-", "bytes=N-M",
// "bytes=-N") against a file of size bytes, returning the byte offsets
// [start, end); ok is false for a range the file cannot satisfy or one
// this server does not serve (several ranges).
func ParseRange(header string, size int64) (start, end int64, ok bool) {
	spec, found := strings.CutPrefix(header, "bytes=")
	if !found || strings.Contains(spec, ",") {
		return 0, 0, false
	}
	first, last, found := strings.Cut(spec, "-")
	if !found {
		return 0, 0, false
	}
	if first == "" { // the last N bytes
		n, err := strconv.ParseInt(last, 10, 64)
		if err != nil || n <= 0 || size == 0 {
			return 0, 0, false
		}
		return max(size-n, 0), size, true
	}
	start, err := strconv.ParseInt(first, 10, 64)
	if err != nil || start < 0 || start >= size {
		return 0, 0, false
	}
	end = size
	if last != "" {
		l, err := strconv.ParseInt(last, 10, 64)
		if err != nil || l < start {
			return 0, 0, false
		}
		end = min(l+1, size)
	}
	return start, end, true
}
