package gitsource

import (
	"github.com/google/go-cmp/cmp"

	"context"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/go-git/go-git/v5/plumbing/object"
	"github.com/hashicorp/go-hclog"
)

func TestMain(m *testing.M) {
	InstallFileTransport()
	os.Exit(m.Run())
}

// waitLimit bounds every wait on an event; it is a deadline for a hung
// test, never a timing assertion.
const waitLimit = 60 * time.Second

func testLogger(t *testing.T) hclog.Logger {
	return hclog.New(&hclog.LoggerOptions{Name: "gitsource", Level: hclog.Debug, Output: t.Output()})
}

// sig signs the tags the tests make.
var sig = &object.Signature{Name: "Test", Email: "test@example.com", When: time.Unix(1_700_000_000, 0)}

// running is a Source whose Run goroutine the test controls.
type running struct {
	*Source
	statuses chan Status
	stop     func()
}

// start makes a Source (with a test logger) and runs it until the test
// ends or stop is called. Every attempt's status arrives on statuses.
func start(t *testing.T, opts Options) *running {
	t.Helper()
	s := mustNew(t, opts)
	return run(t, s)
}

func mustNew(t *testing.T, opts Options) *Source {
	t.Helper()
	if opts.Logger == nil {
		opts.Logger = testLogger(t)
	}
	if opts.Dir == "" {
		opts.Dir = t.TempDir()
	}
	s, err := New(opts)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func run(t *testing.T, s *Source) *running {
	t.Helper()
	r := &running{Source: s, statuses: make(chan Status, 1000)}
	s.observe = func(st Status) {
		select {
		case r.statuses <- st:
		default:
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	stopped := false
	r.stop = func() {
		if stopped {
			return
		}
		stopped = true
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	}
	t.Cleanup(r.stop)
	return r
}

// next waits for the next delivered checkout.
func (r *running) next(t *testing.T) Checkout {
	t.Helper()
	select {
	case co := <-r.Checkouts():
		return co
	case <-time.After(waitLimit):
		t.Fatalf("no checkout delivered within %v; status %+v", waitLimit, r.Status())
		return Checkout{}
	}
}

// nextIs waits for the next checkout and checks that it is commit, with the
// tree want (as describeTree gives it); what names the step for failures.
func (r *running) nextIs(t *testing.T, what, commit string, want map[string]string) Checkout {
	t.Helper()
	co := r.next(t)
	if co.Commit != commit {
		t.Fatalf("%s: checkout %s, want %s", what, co.Commit, commit)
	}
	if diff := cmp.Diff(want, describeTree(t, co.Root)); diff != "" {
		t.Errorf("tree %s (-want +got):\n%s", what, diff)
	}
	return co
}

// attempt waits for the status of the next fetch attempt.
func (r *running) attempt(t *testing.T) Status {
	t.Helper()
	select {
	case st := <-r.statuses:
		return st
	case <-time.After(waitLimit):
		t.Fatalf("no fetch attempt within %v; status %+v", waitLimit, r.Status())
		return Status{}
	}
}

// noDelivery fails when a checkout is waiting on the channel.
func (r *running) noDelivery(t *testing.T) {
	t.Helper()
	select {
	case co := <-r.Checkouts():
		t.Fatalf("unexpected delivery %+v", co)
	default:
	}
}

// describeTree maps each entry under root (relative, slash-separated) to
// its kind, mode and content or link target.
func describeTree(t *testing.T, root string) map[string]string {
	t.Helper()
	out := map[string]string{}
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if p == root {
			return nil
		}
		rel, _ := filepath.Rel(root, p)
		rel = filepath.ToSlash(rel)
		fi, err := os.Lstat(p)
		if err != nil {
			return err
		}
		switch {
		case fi.Mode()&fs.ModeSymlink != 0:
			target, err := os.Readlink(p)
			if err != nil {
				return err
			}
			out[rel] = "link -> " + target
		case fi.IsDir():
			out[rel] = fmt.Sprintf("dir %#o", fi.Mode().Perm())
		default:
			b, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			out[rel] = fmt.Sprintf("file %#o %s", fi.Mode().Perm(), b)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// checkoutDirs lists the commit directories under the source's checkouts.
func checkoutDirs(t *testing.T, s *Source) map[string]bool {
	t.Helper()
	entries, err := os.ReadDir(s.checkoutsDir)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]bool{}
	for _, e := range entries {
		out[e.Name()] = true
	}
	return out
}
