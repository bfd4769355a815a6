package testenv

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// TestCacheBuildsOnce: callers that ask for one key at once get one build
// and one folder; another key builds again.
func TestCacheBuildsOnce(t *testing.T) {
	var builds atomic.Int32
	c := cache{root: t.TempDir(), build: func(_ context.Context, out string) error {
		builds.Add(1)
		return os.WriteFile(filepath.Join(out, "bin"), []byte("built"), 0o755)
	}}
	const callers = 8
	dirs := make([]string, callers)
	errs := make([]error, callers)
	var wg sync.WaitGroup
	for i := range callers {
		wg.Go(func() { dirs[i], errs[i] = c.get(context.Background(), "k1") })
	}
	wg.Wait()
	for i := range callers {
		if errs[i] != nil {
			t.Fatalf("get %d: %v", i, errs[i])
		}
		if dirs[i] != dirs[0] {
			t.Errorf("get %d returned %s, get 0 %s", i, dirs[i], dirs[0])
		}
	}
	if n := builds.Load(); n != 1 {
		t.Errorf("%d builds for one key, want 1", n)
	}
	if data, err := os.ReadFile(filepath.Join(dirs[0], "bin")); err != nil || string(data) != "built" {
		t.Errorf("the build folder holds %q (%v), want what the build wrote", data, err)
	}
	if _, err := c.get(context.Background(), "k2"); err != nil {
		t.Fatal(err)
	}
	if n := builds.Load(); n != 2 {
		t.Errorf("%d builds after a second key, want 2", n)
	}
}

// TestCacheFailedBuild: a failed build leaves nothing behind, and the next
// call builds again.
func TestCacheFailedBuild(t *testing.T) {
	root := t.TempDir()
	fail := errors.New("compile error")
	c := cache{root: root, build: func(_ context.Context, out string) error {
		if err := os.WriteFile(filepath.Join(out, "half"), nil, 0o644); err != nil {
			return err
		}
		return fail
	}}
	if _, err := c.get(context.Background(), "k"); !errors.Is(err, fail) {
		t.Fatalf("get: %v, want the build's error", err)
	}
	entries, err := os.ReadDir(root)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		if e.IsDir() {
			t.Errorf("a failed build left the folder %s", e.Name())
		}
	}
	c.build = func(context.Context, string) error { return nil }
	if dir, err := c.get(context.Background(), "k"); err != nil || dir != filepath.Join(root, "k") {
		t.Errorf("get after the failure: %q, %v", dir, err)
	}
}

// TestCacheWaitsForLock: a caller waits while another process holds the
// key's lock, and gives up when its context ends.
func TestCacheWaitsForLock(t *testing.T) {
	root := t.TempDir()
	c := cache{root: root, build: func(context.Context, string) error { return nil }}
	unlock, err := tryLockFile(filepath.Join(root, "k.lock"))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := c.get(ctx, "k"); !errors.Is(err, context.Canceled) {
		t.Errorf("get with the lock held and a cancelled context: %v, want context.Canceled", err)
	}
	done := make(chan error, 1)
	go func() {
		_, err := c.get(context.Background(), "k")
		done <- err
	}()
	unlock()
	if err := <-done; err != nil {
		t.Errorf("get after the lock was let go: %v", err)
	}
}

// TestCachePrune: a build removes the folders unused for staleAfter, but
// not one whose lock is held, nor recent ones.
func TestCachePrune(t *testing.T) {
	root := t.TempDir()
	old := time.Now().Add(-2 * staleAfter)
	for _, name := range []string{"stale", "busy", "recent", "x.tmp-1"} {
		dir := filepath.Join(root, name)
		if err := os.Mkdir(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		if name != "recent" {
			if err := os.Chtimes(dir, old, old); err != nil {
				t.Fatal(err)
			}
		}
	}
	unlock, err := tryLockFile(filepath.Join(root, "busy.lock"))
	if err != nil {
		t.Fatal(err)
	}
	defer unlock()
	c := cache{root: root, build: func(context.Context, string) error { return nil }}
	if _, err := c.get(context.Background(), "new"); err != nil {
		t.Fatal(err)
	}
	for name, want := range map[string]bool{"stale": false, "x.tmp-1": false, "busy": true, "recent": true, "new": true} {
		_, err := os.Stat(filepath.Join(root, name))
		if got := err == nil; got != want {
			t.Errorf("%s there after the build: %v, want %v", name, got, want)
		}
	}
}

// TestBinaries builds a small module with the two programs: the binaries
// and the links are there; a second call reuses them; an edit of a source
// or an embedded file, or of GOFLAGS, gives a new build; a test file does
// not.
func TestBinaries(t *testing.T) {
	if testing.Short() {
		t.Skip("builds programs")
	}
	if _, err := exec.LookPath("go"); err != nil {
		t.Skip("no go command on PATH")
	}
	mod := t.TempDir()
	write := func(rel, content string) {
		t.Helper()
		path := filepath.Join(mod, rel)
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("go.mod", "module example.com/m\n\ngo 1.22\n")
	write("cmd/pool-managerd/main.go", "package main\n\nimport _ \"embed\"\n\n//go:embed msg.txt\nvar msg string\n\nfunc main() { println(msg) }\n")
	write("cmd/pool-managerd/msg.txt", "one")
	write("cmd/fake-engine/main.go", "package main\n\nfunc main() {}\n")
	root := t.TempDir()
	t.Setenv("GOFLAGS", "-buildvcs=false")

	get := func() *Bin {
		t.Helper()
		b, err := binariesOf(context.Background(), mod, root)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	first := get()
	for _, p := range []string{first.PoolManagerd, first.FakeEngine, first.LlamaServer, first.VLLM, first.TGI} {
		info, err := os.Stat(p)
		if err != nil || info.Mode()&0o111 == 0 {
			t.Errorf("%s: not an executable (%v)", p, err)
		}
	}
	if target, err := os.Readlink(first.VLLM); err != nil || target != "fake-engine" {
		t.Errorf("vllm links to %q (%v), want fake-engine", target, err)
	}
	if again := get(); again.Dir != first.Dir {
		t.Errorf("a second call built again: %s, then %s", first.Dir, again.Dir)
	}

	write("cmd/fake-engine/main_test.go", "package main\n")
	if b := get(); b.Dir != first.Dir {
		t.Errorf("a test file changed the build: %s, then %s", first.Dir, b.Dir)
	}
	seen := map[string]string{first.Dir: "the first build"}
	for _, edit := range []struct {
		what string
		do   func()
	}{
		{"a Go file", func() { write("cmd/fake-engine/main.go", "package main\n\nfunc main() { println() }\n") }},
		{"an embedded file", func() { write("cmd/pool-managerd/msg.txt", "two") }},
		{"GOFLAGS", func() { t.Setenv("GOFLAGS", "-buildvcs=false -trimpath") }},
	} {
		edit.do()
		b := get()
		if was, ok := seen[b.Dir]; ok {
			t.Errorf("after an edit of %s, the build of %s was reused", edit.what, was)
		}
		seen[b.Dir] = "the build after an edit of " + edit.what
	}
}
