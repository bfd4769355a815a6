package gitsource

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/go-git/go-git/v5/plumbing/transport/client"
	"github.com/go-git/go-git/v5/plumbing/transport/file"
	"github.com/hashicorp/go-hclog"
)

// Checkout is a commit checked out on disk.
type Checkout struct {
	Commit string // full hash
	Ref    string // the full ref it came from (refs/heads/main, refs/tags/v1); "" when found on disk by Checkout
	Root   string // absolute: Dir/<key>/checkouts/<commit>, then Options.Path inside it
	// Missing is set when Options.Path is not a directory in this commit.
	// The checkout is delivered anyway; the daemon reports it as a load
	// error.
	Missing bool
}

// Status is what a Source last did.
type Status struct {
	URL, Ref, Path string // as configured (URL without a password, Ref "main" when left empty, Path cleaned)
	Interval       time.Duration
	LastFetch      time.Time // end of the last attempt
	LastSuccess    time.Time // end of the last attempt that succeeded (fetch and checkout)
	LastError      string    // "" when the last attempt succeeded
	Failures       int       // consecutive failed attempts
	NextFetch      time.Time // when Run fetches next, unless FetchNow comes first
	Fetched        string    // the commit the last successful fetch found
}

// Source fetches one ref of a Git repository and delivers its commits as
// checkouts. Make one with New; Run does the fetching; every other method
// is safe from any goroutine and never waits on the network.
type Source struct {
	remote   remote
	ref      string
	path     string
	interval time.Duration
	timeout  time.Duration
	auth     Auth
	log      hclog.Logger
	now      func() time.Time

	repoDir      string
	checkoutsDir string

	wake    chan struct{}
	out     chan Checkout
	running atomic.Bool

	// observe, when set before Run (tests), is called with the status at the
	// end of each attempt.
	observe func(Status)

	// diskMu serializes changes to checkoutsDir: installing a checkout and
	// cleaning up. Taken before mu.
	diskMu sync.Mutex

	mu        sync.Mutex
	status    Status
	lastWarn  string // the error last logged at Warn
	delivered string // commit sent on out last
	taken     string // last commit known to have been taken from out
	pending   string // commit being installed
	inForce   string
	forceSet  bool // InForce was called
}

// New validates opts (without the network) and makes the Source's
// directories. Errors for options that can never work wrap ErrInvalid.
func New(opts Options) (*Source, error) {
	r, err := parseURL(opts.URL)
	if err != nil {
		return nil, err
	}
	ref := opts.Ref
	if ref == "" {
		ref = defaultRef
	}
	if err := checkRef(ref); err != nil {
		return nil, err
	}
	p, err := cleanPath(opts.Path)
	if err != nil {
		return nil, err
	}
	interval := opts.Interval
	if interval < 0 {
		return nil, invalid("interval %v is negative", interval)
	}
	if interval == 0 {
		interval = defaultInterval
	}
	if opts.Dir == "" {
		return nil, invalid("no directory for the clone and checkouts")
	}
	if err := checkAuth(r, opts.Auth); err != nil {
		return nil, err
	}
	if r.kind == kindFile && client.Protocols["file"] == file.DefaultClient {
		return nil, errors.New("gitsource: InstallFileTransport was not called: go-git would run git-upload-pack for " + r.display)
	}
	dir, err := filepath.Abs(opts.Dir)
	if err != nil {
		return nil, fmt.Errorf("git source directory %s: %w", opts.Dir, err)
	}
	base := filepath.Join(dir, r.key)
	s := &Source{
		remote:       r,
		ref:          ref,
		path:         p,
		interval:     interval,
		timeout:      fetchTimeout(interval),
		auth:         opts.Auth,
		log:          opts.Logger,
		now:          opts.Now,
		repoDir:      filepath.Join(base, "repo"),
		checkoutsDir: filepath.Join(base, "checkouts"),
		wake:         make(chan struct{}, 1),
		out:          make(chan Checkout, 1),
	}
	if s.log == nil {
		s.log = hclog.NewNullLogger()
	}
	if s.now == nil {
		s.now = time.Now
	}
	if err := os.MkdirAll(s.checkoutsDir, 0o755); err != nil {
		return nil, fmt.Errorf("git source directory: %w", err)
	}
	s.status = Status{URL: r.display, Ref: ref, Path: p, Interval: interval}
	return s, nil
}

// Checkouts delivers each new commit's checkout. It holds one: a checkout
// not taken yet is replaced by a newer one.
func (s *Source) Checkouts() <-chan Checkout { return s.out }

// FetchNow makes Run fetch at once (SIGHUP), backoff or not. It does not
// block; a call during a fetch makes another one follow it.
func (s *Source) FetchNow() {
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

// Status returns what the source last did.
func (s *Source) Status() Status {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.status
}

// Run fetches at once, then as the package doc says, until ctx ends; then
// it returns nil. One Run at a time.
func (s *Source) Run(ctx context.Context) error {
	if !s.running.CompareAndSwap(false, true) {
		return errors.New("gitsource: Run is already running")
	}
	defer s.running.Store(false)
	s.removeTemps()
	timer := time.NewTimer(0)
	defer timer.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-timer.C:
		case <-s.wake:
		}
		next := s.attempt(ctx)
		if ctx.Err() != nil {
			return nil
		}
		timer.Reset(next)
	}
}

// attempt fetches once, delivers a new commit, records the outcome and
// returns the time until the next attempt.
func (s *Source) attempt(ctx context.Context) time.Duration {
	fctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	commit, ref, repo, err := s.fetch(fctx)
	fetched := err == nil
	if fetched && commit != s.lastDelivered() {
		var co Checkout
		if co, err = s.install(ctx, repo, commit, ref); err == nil {
			s.deliver(co)
			s.log.Info("new commit checked out", "url", s.remote.display, "ref", ref, "commit", commit, "root", co.Root, "missing", co.Missing)
		} else {
			err = fmt.Errorf("check out %s: %w", commit, err)
		}
	}
	if ctx.Err() != nil {
		return 0
	}
	end := s.now()

	s.mu.Lock()
	st := &s.status
	st.LastFetch = end
	if fetched {
		st.Fetched = commit
	}
	var delay time.Duration
	warn, recovered := false, 0
	if err == nil {
		recovered = st.Failures
		st.LastSuccess, st.LastError, st.Failures = end, "", 0
		s.lastWarn = ""
		delay = s.interval
	} else {
		st.LastError = oneLine(err.Error())
		st.Failures++
		if st.LastError != s.lastWarn {
			warn, s.lastWarn = true, st.LastError
		}
		delay = retryDelay(s.interval, st.Failures, rand.Float64())
	}
	st.NextFetch = end.Add(delay)
	snap := *st
	s.mu.Unlock()

	switch {
	case err != nil && warn:
		s.log.Warn("git fetch failed", "url", snap.URL, "ref", snap.Ref, "error", snap.LastError, "failures", snap.Failures, "retry_in", delay.Round(time.Millisecond))
	case err != nil:
		s.log.Debug("git fetch failed again", "url", snap.URL, "ref", snap.Ref, "error", snap.LastError, "failures", snap.Failures, "retry_in", delay.Round(time.Millisecond))
	case recovered > 0:
		s.log.Info("git fetch succeeded after failures", "url", snap.URL, "ref", snap.Ref, "commit", commit, "failures", recovered)
	default:
		s.log.Debug("git fetch done", "url", snap.URL, "ref", snap.Ref, "commit", commit)
	}
	if s.observe != nil {
		s.observe(snap)
	}
	return delay
}

// retryDelay is the wait after the n-th consecutive failure (n >= 1):
// base·2^(n-1) capped at 5·interval, base = max(interval/4, min(1s,
// interval)), times a jitter factor of 0.9 + 0.2·u for u in [0, 1).
func retryDelay(interval time.Duration, n int, u float64) time.Duration {
	base := max(interval/4, min(time.Second, interval))
	limit := 5 * interval
	d := base
	for i := 1; i < n && d < limit; i++ {
		d *= 2
	}
	d = min(d, limit)
	return time.Duration(float64(d) * (0.9 + 0.2*u))
}

// oneLine trims a message and joins its lines (a server's error page may
// end up in an error).
func oneLine(msg string) string {
	return strings.Join(strings.Fields(msg), " ")
}

func (s *Source) lastDelivered() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.delivered
}
