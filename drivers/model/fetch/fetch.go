// Package fetch downloads models into a node's model cache (package cache):
// verified, resumable, one download per digest, limited in parallel.
//
//	c, _ := cache.Open(dir, cache.Options{MaxSize: maxBytes})
//	f := fetch.New(c, fetch.Options{
//		Auth: fetch.Auth{
//			Token: fetch.TokenFromFileOrEnv(tokenFile, "POOL_MANAGERD_MODEL_TOKEN"),
//			Hosts: []string{fetch.DefaultTokenHost},
//		},
//		Parallel:     2,
//		StallTimeout: 60 * time.Second,
//	})
//	path, err := f.Fetch(ctx, fetch.Request{
//		URL: src.URL, FileName: src.File, SHA256: digest,
//		Progress: func(p fetch.Progress) { … }, // or poll f.Progress(digest)
//	})
//	if fetch.ClassOf(err) == fetch.ClassDigestMismatch { … }
//
// A download goes to the cache's partial file for its digest and resumes
// from the bytes already there, with a Range request, both after a dropped
// connection (retried within the Fetch) and after a restart of the process.
// The bytes are hashed as they arrive (the partial prefix first); only a
// file with the declared sha256 (and size) is renamed into place, with a
// verification record that later lookups trust without re-hashing. Errors
// are *Error with a Class, a Message, a Hint and, for HTTP errors, a Code.
//
// The token goes only where TokenAllowed says: to a source on one of
// Auth.Hosts, over https (or http on a listed loopback host), and never on
// a redirect that changes the scheme, host or port (the Hub redirects to a
// CDN); it is never logged, never in an error.
package fetch

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"hash"
	"io"
	"io/fs"
	"net/http"
	"net/url"
	"os"
	"path"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/poolmanagerd/pool-managerd/drivers/model/cache"
	"github.com/poolmanagerd/pool-managerd/schema/modelsource"
)

// Defaults of Options.
const (
	DefaultParallel     = 2
	DefaultStallTimeout = 60 * time.Second
	// DefaultStallBytes is the least a download must receive in each
	// stall timeout.
	DefaultStallBytes   = 64 << 10
	DefaultRetries      = 5
	DefaultRetryBackoff = time.Second
)

// Options configure a Fetcher. The zero value works: default client, no
// token, the defaults above.
type Options struct {
	// Client makes the requests; nil means a client with no overall timeout
	// (the stall timeout bounds a download). Its CheckRedirect is wrapped
	// so that Authorization never follows a redirect that TokenAllowed
	// refuses.
	Client *http.Client
	// Auth is the token sent as "Authorization: Bearer" and the hosts it
	// may go to; the zero value sends none.
	Auth Auth
	// Parallel is how many downloads run at once; 0 means DefaultParallel.
	Parallel int
	// StallTimeout fails a download (ClassStalled) that receives less than
	// StallBytes in this long: nothing at all, or a trickle; 0 means
	// DefaultStallTimeout.
	StallTimeout time.Duration
	// StallBytes is the least a download must receive in each StallTimeout;
	// 0 means DefaultStallBytes (64 KiB: about 1 KiB/s at the default
	// timeout, at which a model of gigabytes would take weeks).
	StallBytes int64
	// Retries is how many times a Fetch resumes after a dropped connection;
	// 0 means DefaultRetries, negative none.
	Retries int
	// RetryBackoff is the wait before the n-th resume (n × RetryBackoff);
	// 0 means DefaultRetryBackoff, negative none.
	RetryBackoff time.Duration
	// Offline uses only models already in the cache with a matching digest;
	// anything else fails with ClassNotCached. Nothing is requested.
	Offline bool
}

// Request is one model file to fetch.
type Request struct {
	// URL is where the file is downloaded from (modelsource.Source.URL).
	URL string
	// FileName is its name in the cache; empty means the URL path's last
	// element.
	FileName string
	// SHA256 is the declared digest, 64 lowercase hex digits.
	SHA256 string
	// Size is the declared size in bytes; 0 means unknown (the response's
	// Content-Length then sizes the free-space check).
	Size int64
	// Progress, when set, is called as bytes arrive (often: it must be cheap
	// and must not block).
	Progress func(Progress)
}

// Progress is a download's progress.
type Progress struct {
	// Done is the bytes on disk, resumed ones included; Total the bytes of
	// the model (0 while unknown).
	Done, Total int64
	// Rate is the bytes per second received since the download started.
	Rate float64
	// Queued reports a download waiting for a free slot (Parallel).
	Queued bool
}

// Fetcher downloads models into a cache. Its methods are safe for
// concurrent use.
type Fetcher struct {
	cache  *cache.Cache
	opts   Options
	client *http.Client
	slots  chan struct{}

	mu      sync.Mutex
	flights map[string]*flight // by file digest
	dirs    map[string]*dirProgress
}

// New returns a Fetcher storing into c.
func New(c *cache.Cache, opts Options) *Fetcher {
	if opts.Parallel <= 0 {
		opts.Parallel = DefaultParallel
	}
	if opts.StallTimeout <= 0 {
		opts.StallTimeout = DefaultStallTimeout
	}
	if opts.StallBytes <= 0 {
		opts.StallBytes = DefaultStallBytes
	}
	switch {
	case opts.Retries == 0:
		opts.Retries = DefaultRetries
	case opts.Retries < 0:
		opts.Retries = 0
	}
	switch {
	case opts.RetryBackoff == 0:
		opts.RetryBackoff = DefaultRetryBackoff
	case opts.RetryBackoff < 0:
		opts.RetryBackoff = 0
	}
	return &Fetcher{
		cache:   c,
		opts:    opts,
		client:  tokenGuardClient(opts.Client, opts.Auth.Hosts),
		slots:   make(chan struct{}, opts.Parallel),
		flights: map[string]*flight{},
		dirs:    map[string]*dirProgress{},
	}
}

// tokenGuardClient returns a copy of c (or a new client) whose redirects
// drop Authorization unless TokenAllowed allows it for the URL the redirect
// leads to, from the first request's URL: Go's client keeps it for the same
// host on another port or scheme, and for a subdomain.
func tokenGuardClient(c *http.Client, hosts []string) *http.Client {
	var cc http.Client
	if c != nil {
		cc = *c
	}
	next := cc.CheckRedirect
	cc.CheckRedirect = func(req *http.Request, via []*http.Request) error {
		if len(via) > 0 && !TokenAllowed(hosts, via[0].URL, req.URL) {
			req.Header.Del("Authorization")
		}
		if next != nil {
			return next(req, via)
		}
		if len(via) >= 10 {
			return errors.New("stopped after 10 redirects")
		}
		return nil
	}
	return &cc
}

// Cache is the cache the Fetcher stores into.
func (f *Fetcher) Cache() *cache.Cache { return f.cache }

// target is where a verified file goes: file rel of cache entry digest.
type target struct{ entry, rel string }

// flight is one running download of a file digest, shared by every Fetch of it.
type flight struct {
	target target
	done   chan struct{}
	path   string
	err    error
	cancel context.CancelFunc

	mu        sync.Mutex
	waiters   int
	abandoned bool // every waiter gave up: the download was cancelled
	listeners []*listener
	progress  Progress
}

// listener is one waiting Fetch's progress callback; a Fetch that gives up
// removes its own (wait), so it hears nothing after it returned.
type listener struct{ fn func(Progress) }

func (fl *flight) wasAbandoned() bool {
	fl.mu.Lock()
	defer fl.mu.Unlock()
	return fl.abandoned
}

func (fl *flight) report(p Progress) {
	fl.mu.Lock()
	fl.progress = p
	ls := slices.Clone(fl.listeners)
	fl.mu.Unlock()
	for _, l := range ls {
		l.fn(p)
	}
}

// Fetch returns the path of the model file in the cache, downloading it
// first unless the cache already has it verified. Concurrent Fetches of one
// digest share one download. A cancelled ctx leaves the partial file for a
// later Fetch to resume (the download goes on while another Fetch of the
// same digest still waits for it).
func (f *Fetcher) Fetch(ctx context.Context, req Request) (string, error) {
	if err := modelsource.CheckDigest(req.SHA256); err != nil {
		return "", fmt.Errorf("fetch %s: %w", req.URL, err)
	}
	if req.FileName == "" {
		req.FileName = path.Base(req.URL)
	}
	if err := modelsource.CheckPath(req.FileName); err != nil || strings.Contains(req.FileName, "/") {
		return "", fmt.Errorf("fetch %s: file name %q: want a plain file name", req.URL, req.FileName)
	}
	return f.fetchFile(ctx, target{entry: req.SHA256, rel: req.FileName}, req)
}

// fetchFile fetches the file req.SHA256 into t.
func (f *Fetcher) fetchFile(ctx context.Context, t target, req Request) (string, error) {
	for {
		p, ok, err := f.cached(ctx, t, req.SHA256)
		if err != nil || ok {
			return p, err
		}
		if f.opts.Offline {
			return "", &Error{
				Class:   ClassNotCached,
				Message: fmt.Sprintf("%s (sha256 %s) is not in the model cache", req.URL, req.SHA256),
				Hint:    "offline mode uses only models already cached: fetch it on a node that is online, or turn offline mode off",
			}
		}
		fl, joined, l := f.join(t, req)
		p, err = f.wait(ctx, fl, l)
		if joined && fl.target != t && err == nil {
			// The file was fetched for another name: fetch ours now.
			continue
		}
		if fl.wasAbandoned() && ctx.Err() == nil {
			// We joined a download its last other waiter had just given up.
			continue
		}
		return p, err
	}
}

// cached looks t up: a verified file is touched and returned; an unverified
// one is hashed (once: the record is then written), and one that does not
// match is removed.
func (f *Fetcher) cached(ctx context.Context, t target, fileDigest string) (string, bool, error) {
	p, verified, err := f.cache.LookupFile(t.entry, t.rel, fileDigest)
	if err != nil || p == "" {
		return "", false, err
	}
	if !verified {
		ok, err := f.cache.Verify(ctx, t.entry, t.rel, fileDigest)
		if err != nil {
			return "", false, err
		}
		if !ok {
			if err := os.Remove(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
				return "", false, fmt.Errorf("removing %s, which does not match its digest: %w", p, err)
			}
			return "", false, nil
		}
	}
	if err := f.cache.Touch(t.entry); err != nil {
		return "", false, err
	}
	// A collection that found it unused before the touch moved it out:
	// fetch it again rather than hand out a path that is gone.
	if _, err := os.Stat(p); err != nil {
		return "", false, nil
	}
	return p, true, nil
}

// join returns the running flight of req.SHA256, or starts one for t.
func (f *Fetcher) join(t target, req Request) (fl *flight, joined bool, l *listener) {
	f.mu.Lock()
	fl, joined = f.flights[req.SHA256]
	var ctx context.Context
	if !joined {
		var cancel context.CancelFunc
		ctx, cancel = context.WithCancel(context.Background())
		fl = &flight{target: t, done: make(chan struct{}), cancel: cancel}
		f.flights[req.SHA256] = fl
	}
	// Counted as a waiter, and listening, before f.mu is released and before
	// the download starts: the flight cannot be cancelled for want of
	// waiters under a joiner, and the leader hears every report.
	fl.mu.Lock()
	fl.waiters++
	if req.Progress != nil {
		l = &listener{fn: req.Progress}
		fl.listeners = append(fl.listeners, l)
	}
	now := fl.progress
	fl.mu.Unlock()
	f.mu.Unlock()
	if joined {
		if req.Progress != nil {
			// A Fetch that joins a running download learns where it stands at once.
			req.Progress(now)
		}
		return fl, true, l
	}
	go func() {
		defer fl.cancel()
		fl.path, fl.err = f.download(ctx, fl, req)
		f.mu.Lock()
		delete(f.flights, req.SHA256)
		f.mu.Unlock()
		close(fl.done)
	}()
	return fl, false, l
}

// wait waits for fl or ctx; the last waiter to give up cancels the download.
// A waiter that gives up stops listening (l, nil when it had no callback).
func (f *Fetcher) wait(ctx context.Context, fl *flight, l *listener) (string, error) {
	select {
	case <-fl.done:
		return fl.path, fl.err
	case <-ctx.Done():
		fl.mu.Lock()
		fl.listeners = slices.DeleteFunc(fl.listeners, func(x *listener) bool { return x == l })
		fl.waiters--
		last := fl.waiters == 0
		fl.abandoned = fl.abandoned || last
		fl.mu.Unlock()
		if last {
			fl.cancel()
			<-fl.done // the partial file is closed and consistent
		}
		return "", ctx.Err()
	}
}

// Progress is the progress of the running download of digest: a file's
// digest, or a manifest's while FetchManifest runs. ok is false when none
// runs.
func (f *Fetcher) Progress(digest string) (p Progress, ok bool) {
	f.mu.Lock()
	fl := f.flights[digest]
	d := f.dirs[digest]
	f.mu.Unlock()
	switch {
	case fl != nil:
		fl.mu.Lock()
		defer fl.mu.Unlock()
		return fl.progress, true
	case d != nil:
		return d.snapshot(), true
	}
	return Progress{}, false
}

// download runs one flight: waits for a slot, then downloads, verifies and
// commits the file.
func (f *Fetcher) download(ctx context.Context, fl *flight, req Request) (string, error) {
	fl.report(Progress{Total: req.Size, Queued: true})
	select {
	case f.slots <- struct{}{}:
	case <-ctx.Done():
		return "", ctx.Err()
	}
	defer func() { <-f.slots }()
	done := f.cache.Active(req.SHA256)
	defer done()

	d := &download{f: f, fl: fl, req: req, partial: f.cache.PartialPath(req.SHA256)}
	if err := d.run(ctx); err != nil {
		return "", err
	}
	p, err := f.cache.Commit(d.partial, fl.target.entry, fl.target.rel, req.SHA256)
	if err != nil {
		return "", fmt.Errorf("fetch %s: %w", req.URL, err)
	}
	return p, nil
}

// download is the state of one file's download.
type download struct {
	f       *Fetcher
	fl      *flight
	req     Request
	partial string

	file    *os.File
	hash    hash.Hash
	done    int64 // bytes in the partial file, all hashed
	total   int64 // 0 while unknown
	release func()

	started  time.Time
	received int64
}

func (d *download) progress(queued bool) Progress {
	p := Progress{Done: d.done, Total: d.total, Queued: queued}
	if s := time.Since(d.started).Seconds(); s > 0 {
		p.Rate = float64(d.received) / s
	}
	return p
}

// run downloads into the partial file until it is complete and verified.
func (d *download) run(ctx context.Context) error {
	url := d.req.URL
	var err error
	d.file, err = os.OpenFile(d.partial, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return fmt.Errorf("fetch %s: %w", url, err)
	}
	defer d.file.Close()
	defer func() {
		if d.release != nil {
			d.release()
		}
	}()
	d.total = d.req.Size
	d.started = time.Now()
	if err := d.hashPrefix(ctx); err != nil {
		return err
	}
	if d.total > 0 {
		if err := d.reserve(); err != nil {
			return err
		}
	}
	d.fl.report(d.progress(false))

	for attempt := 0; ; attempt++ {
		complete, err := d.attempt(ctx)
		if err == nil && complete {
			return d.verify()
		}
		if err == nil {
			err = &Error{Class: ClassNetwork, Message: fmt.Sprintf("GET %s: the connection closed early", url), Temporary: true}
		}
		var fe *Error
		retry := errors.As(err, &fe) && fe.Class == ClassNetwork
		if !retry || attempt >= d.f.opts.Retries || ctx.Err() != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			return err
		}
		if wait := time.Duration(attempt+1) * d.f.opts.RetryBackoff; wait > 0 {
			t := time.NewTimer(wait)
			select {
			case <-t.C:
			case <-ctx.Done():
				t.Stop()
				return ctx.Err()
			}
		}
	}
}

// hashPrefix hashes the bytes a previous download left in the partial file.
func (d *download) hashPrefix(ctx context.Context) error {
	d.hash = sha256.New()
	n, err := io.Copy(d.hash, ctxReader{ctx, d.file})
	if err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		return fmt.Errorf("fetch %s: reading the partial file: %w", d.req.URL, err)
	}
	d.done = n
	if d.total > 0 && d.done > d.total {
		return d.restart()
	}
	return nil
}

// restart empties the partial file.
func (d *download) restart() error {
	if err := d.file.Truncate(0); err != nil {
		return fmt.Errorf("fetch %s: %w", d.req.URL, err)
	}
	if _, err := d.file.Seek(0, io.SeekStart); err != nil {
		return fmt.Errorf("fetch %s: %w", d.req.URL, err)
	}
	d.hash.Reset()
	d.done = 0
	return nil
}

// reserve claims the bytes still to download.
func (d *download) reserve() error {
	if d.release != nil {
		return nil
	}
	release, err := d.f.cache.Reserve(d.total - d.done)
	var de *cache.DiskError
	if errors.As(err, &de) {
		return diskError(d.req.URL, de)
	}
	if err != nil {
		return fmt.Errorf("fetch %s: %w", d.req.URL, err)
	}
	d.release = release
	return nil
}

// attempt makes one request and copies its body; complete reports that the
// whole file is in the partial file.
func (d *download) attempt(ctx context.Context) (complete bool, err error) {
	if d.total > 0 && d.done == d.total {
		return true, nil
	}
	actx, cancel := context.WithCancel(ctx)
	defer cancel()
	var stalled atomic.Bool
	stall := time.AfterFunc(d.f.opts.StallTimeout, func() {
		stalled.Store(true)
		cancel()
	})
	defer stall.Stop()
	stallErr := func(err error) error {
		return &Error{
			Class:     ClassStalled,
			Message:   fmt.Sprintf("GET %s: less than %d bytes in %s (stalled, or a trickle) at %d of %d bytes", d.req.URL, d.f.opts.StallBytes, d.f.opts.StallTimeout, d.done, d.total),
			Hint:      "the source or the network is stalled or crawling; retried later, resuming from the bytes on disk (--fetch-stall-timeout sets the limit)",
			Temporary: true, Err: err,
		}
	}

	resp, err := d.f.get(actx, d.req.URL, d.done)
	if err != nil {
		switch {
		case stalled.Load():
			return false, stallErr(err)
		case ctx.Err() != nil:
			return false, ctx.Err()
		}
		var fe *Error
		if errors.As(err, &fe) {
			return false, err
		}
		return false, &Error{Class: ClassNetwork, Message: fmt.Sprintf("GET %s: %v", d.req.URL, err), Hint: "retried later", Temporary: true, Err: err}
	}
	defer resp.Body.Close()

	switch resp.StatusCode {
	case http.StatusOK:
		if d.done > 0 {
			// The server ignored the Range: start over.
			if err := d.restart(); err != nil {
				return false, err
			}
		}
		if resp.ContentLength >= 0 {
			if err := d.setTotal(resp.ContentLength); err != nil {
				return false, err
			}
		}
	case http.StatusPartialContent:
		start, total, ok := parseContentRange(resp.Header.Get("Content-Range"))
		if !ok || start != d.done {
			// Not the range asked for: start over with a plain GET.
			if err := d.restart(); err != nil {
				return false, err
			}
			return false, &Error{Class: ClassNetwork, Message: fmt.Sprintf("GET %s: the server sent range %q, not bytes=%d-", d.req.URL, resp.Header.Get("Content-Range"), start), Temporary: true}
		}
		if total >= 0 {
			if err := d.setTotal(total); err != nil {
				return false, err
			}
		}
	case http.StatusRequestedRangeNotSatisfiable:
		// The partial file is as long as the file or longer.
		if _, total, ok := parseContentRange(resp.Header.Get("Content-Range")); ok && total == d.done {
			d.total = total
			return true, nil
		}
		if err := d.restart(); err != nil {
			return false, err
		}
		return false, &Error{Class: ClassNetwork, Message: fmt.Sprintf("GET %s: the partial file is longer than the file at the source", d.req.URL), Temporary: true}
	default:
		return false, httpError(d.req.URL, resp.StatusCode)
	}
	if d.total > 0 {
		if err := d.reserve(); err != nil {
			return false, err
		}
	}

	buf := make([]byte, 256<<10)
	var window int64 // bytes since the stall timer last started
	for {
		n, rerr := resp.Body.Read(buf)
		if n > 0 {
			if window += int64(n); window >= d.f.opts.StallBytes {
				// Enough arrived in this window: a new one starts.
				stall.Reset(d.f.opts.StallTimeout)
				window = 0
			}
			if _, err := d.file.Write(buf[:n]); err != nil {
				return false, writeError(d.req.URL, err)
			}
			d.hash.Write(buf[:n])
			d.done += int64(n)
			d.received += int64(n)
			d.fl.report(d.progress(false))
			if d.total > 0 && d.done > d.total {
				return false, d.mismatch(fmt.Sprintf("the source sent more than the %d bytes declared", d.total))
			}
		}
		if errors.Is(rerr, io.EOF) {
			return d.total <= 0 || d.done == d.total, nil
		}
		if rerr != nil {
			switch {
			case stalled.Load():
				return false, stallErr(rerr)
			case ctx.Err() != nil:
				return false, ctx.Err()
			}
			return false, &Error{Class: ClassNetwork, Message: fmt.Sprintf("GET %s: the connection dropped at %d bytes: %v", d.req.URL, d.done, rerr), Hint: "retried later", Temporary: true, Err: rerr}
		}
	}
}

// setTotal records the size the source reports, which must be the declared one.
func (d *download) setTotal(total int64) error {
	if d.req.Size > 0 && total != d.req.Size {
		return d.mismatch(fmt.Sprintf("the source has %d bytes, not the %d declared", total, d.req.Size))
	}
	d.total = total
	return nil
}

// verify checks the complete partial file's digest; a mismatch deletes it.
func (d *download) verify() error {
	if err := d.file.Sync(); err != nil {
		return writeError(d.req.URL, err)
	}
	got := fmt.Sprintf("%x", d.hash.Sum(nil))
	if got != d.req.SHA256 {
		return d.mismatch(fmt.Sprintf("its sha256 is %s, not the declared %s", got, d.req.SHA256))
	}
	if d.req.Size > 0 && d.done != d.req.Size {
		return d.mismatch(fmt.Sprintf("it has %d bytes, not the %d declared", d.done, d.req.Size))
	}
	return nil
}

// mismatch deletes the partial file and returns a digest-mismatch error.
func (d *download) mismatch(what string) error {
	_ = d.file.Close()
	if err := os.Remove(d.partial); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("fetch %s: removing the mismatched partial file: %w", d.req.URL, err)
	}
	return d.mismatchNoRemove(what)
}

func (d *download) mismatchNoRemove(what string) error {
	return &Error{
		Class:   ClassDigestMismatch,
		Message: fmt.Sprintf("%s: %s", d.req.URL, what),
		Hint:    "check the declared sha256 and size: the file at the source may have changed (pin a commit)",
	}
}

// get sends GET url, from byte offset when it is not 0, with the token if
// TokenAllowed allows it for url.
func (f *Fetcher) get(ctx context.Context, rawURL string, offset int64) (*http.Response, error) {
	req, err := f.newRequest(ctx, http.MethodGet, nil, rawURL)
	if err != nil {
		return nil, err
	}
	if offset > 0 {
		req.Header.Set("Range", "bytes="+strconv.FormatInt(offset, 10)+"-")
	}
	return f.client.Do(req)
}

// newRequest makes a request for rawURL, with the token when TokenAllowed
// allows it for rawURL reached from origin (nil: rawURL is the source's
// URL itself).
func (f *Fetcher) newRequest(ctx context.Context, method string, origin *url.URL, rawURL string) (*http.Request, error) {
	req, err := http.NewRequestWithContext(ctx, method, rawURL, nil)
	if err != nil {
		return nil, fmt.Errorf("fetch %s: %w", rawURL, err)
	}
	// Byte ranges of the file itself, never of a compressed encoding.
	req.Header.Set("Accept-Encoding", "identity")
	req.Header.Set("User-Agent", "pool-managerd")
	if origin == nil {
		origin = req.URL
	}
	tok, err := f.opts.Auth.For(origin, req.URL)
	if err != nil {
		return nil, fmt.Errorf("fetch %s: %w", rawURL, err)
	}
	if tok != "" {
		req.Header.Set("Authorization", "Bearer "+tok)
	}
	return req, nil
}

// parseContentRange parses "bytes START-END/TOTAL" and "bytes */TOTAL"; total
// is -1 when "*".
func parseContentRange(s string) (start, total int64, ok bool) {
	rest, ok := strings.CutPrefix(s, "bytes ")
	if !ok {
		return 0, 0, false
	}
	rng, tot, ok := strings.Cut(rest, "/")
	if !ok {
		return 0, 0, false
	}
	total = -1
	if tot != "*" {
		t, err := strconv.ParseInt(tot, 10, 64)
		if err != nil || t < 0 {
			return 0, 0, false
		}
		total = t
	}
	if rng == "*" {
		return -1, total, true
	}
	a, _, ok := strings.Cut(rng, "-")
	if !ok {
		return 0, 0, false
	}
	start, err := strconv.ParseInt(a, 10, 64)
	if err != nil {
		return 0, 0, false
	}
	return start, total, true
}

// ctxReader stops reading when ctx is done.
type ctxReader struct {
	ctx context.Context
	r   io.Reader
}

func (c ctxReader) Read(p []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	return c.r.Read(p)
}
