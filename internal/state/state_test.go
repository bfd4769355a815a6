package state

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/poolmanagerd/pool-managerd/reconcile"
	"github.com/poolmanagerd/pool-managerd/reconcile/restart"
)

// lockHelperEnv makes the test binary a lock holder: it takes the lock on the
// directory named by the variable, prints "locked", and waits until killed
// or until its stdin is closed, then exits without unlocking.
const lockHelperEnv = "POOL_MANAGERD_STATE_TEST_LOCK_DIR"

func TestMain(m *testing.M) {
	if dir := os.Getenv(lockHelperEnv); dir != "" {
		if _, err := Lock(dir); err != nil {
			fmt.Println("error:", err)
			os.Exit(1)
		}
		fmt.Println("locked")
		_, _ = bufio.NewReader(os.Stdin).ReadString('\n')
		os.Exit(0)
	}
	os.Exit(m.Run())
}

func sample() *State {
	zone := time.FixedZone("CEST", 2*3600)
	t0 := time.Date(2026, 5, 17, 10, 30, 0, 123456789, time.UTC)
	return &State{
		Version: CurrentVersion,
		Engines: map[string]reconcile.EngineRecord{
			"llama-70b": {
				Pool: "llama-70b", Generation: 3, SpecHash: "sha256:abc", PID: 4242, StartTicks: 987654321,
				Port: 8081, LogPath: "/var/log/pool-managerd/llama-70b.log", StartedAt: t0,
			},
			"qwen": {Pool: "qwen", Generation: 1, SpecHash: "sha256:def", Intent: true},
		},
		Pools: map[string]restart.Record{
			"llama-70b": {Restarts: 2},
			"qwen": {
				Failures:            []time.Time{t0.Add(-time.Minute), t0.In(zone)},
				ConsecutiveFailures: 2,
				NextRetry:           t0.Add(4 * time.Second),
				LastError:           &restart.ErrorRecord{Class: "oom", Message: "CUDA out of memory", Hint: "lower ctx", Time: t0},
				BreakerOpenedAt:     t0.Add(time.Second),
				BreakerOpenCount:    1,
				BreakerState:        "open",
			},
		},
	}
}

func TestRoundTrip(t *testing.T) {
	st := Store{Dir: filepath.Join(t.TempDir(), "state")}
	want := sample()
	if err := st.Save(want); err != nil {
		t.Fatal(err)
	}
	got, err := st.Load()
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("Load after Save (-saved +loaded):\n%s", diff)
	}
	first, err := os.ReadFile(st.Path())
	if err != nil {
		t.Fatal(err)
	}
	if err := st.Save(got); err != nil {
		t.Fatal(err)
	}
	second, err := os.ReadFile(st.Path())
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(first, second) {
		t.Errorf("saving the loaded state changed the file:\n%s\n---\n%s", first, second)
	}
	if !bytes.HasPrefix(first, []byte("{\n  \"version\": 1,\n")) || !bytes.HasSuffix(first, []byte("}\n")) {
		t.Errorf("state file is not indented JSON ending in a newline:\n%s", first)
	}
	if fi, err := os.Stat(st.Path()); err != nil || fi.Mode().Perm() != 0o644 {
		t.Errorf("state file mode: %v, %v; want 0644", fi.Mode(), err)
	}
	if fi, err := os.Stat(st.Dir); err != nil || !fi.IsDir() {
		t.Errorf("Save did not create the directory: %v", err)
	}
}

func TestLoadMissing(t *testing.T) {
	for _, dir := range []string{filepath.Join(t.TempDir(), "no", "such", "dir"), t.TempDir()} {
		s, err := Store{Dir: dir}.Load()
		if err != nil {
			t.Fatal(err)
		}
		if diff := cmp.Diff(New(), s); diff != "" {
			t.Errorf("Load of %s (-want +got):\n%s", dir, diff)
		}
		if s.Engines == nil || s.Pools == nil {
			t.Errorf("fresh state has nil maps")
		}
	}
	dir := filepath.Join(t.TempDir(), "missing")
	if _, err := (Store{Dir: dir}).Load(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(dir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("Load created the state directory: %v", err)
	}
}

// snapshot returns the names and contents of the files in dir.
func snapshot(t *testing.T, dir string) map[string]string {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]string{}
	for _, e := range entries {
		data, err := os.ReadFile(filepath.Join(dir, e.Name()))
		if err != nil {
			out[e.Name()] = "<" + err.Error() + ">"
			continue
		}
		out[e.Name()] = string(data)
	}
	return out
}

func TestLoadCorrupt(t *testing.T) {
	for _, tc := range []struct {
		name, content, detail string
	}{
		{"truncated", "{\n  \"version\": 1,\n  \"engines\": {", "unexpected end of JSON input"},
		{"garbage", "\x00\x01binary", "line 1, column 1: invalid character"},
		{"empty", "", "unexpected end"},
		{"wrong type", "{\n  \"version\": 1,\n  \"engines\": []\n}", "line 3, column 14: json: cannot unmarshal array"},
		{"bad field", `{"version": 1, "engines": {"a": {"pid": "x"}}}`, "cannot unmarshal string"},
		{"string version", `{"version": "1"}`, `version "1" is not an integer`},
		{"no version", `{"engines": {}}`, "no version"},
		{"null", `null`, "no version"},
		{"trailing data", `{"version": 1} {}`, "invalid character '{' after top-level value"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			path := filepath.Join(dir, FileName)
			if err := os.WriteFile(path, []byte(tc.content), 0o600); err != nil {
				t.Fatal(err)
			}
			before := snapshot(t, dir)
			s, err := Store{Dir: dir}.Load()
			if !errors.Is(err, ErrCorrupt) {
				t.Fatalf("Load = %v, %v; want ErrCorrupt", s, err)
			}
			msg := err.Error()
			for _, want := range []string{"state file " + path + " is corrupt: ", tc.detail, "move it aside to start fresh"} {
				if !strings.Contains(msg, want) {
					t.Errorf("error %q does not contain %q", msg, want)
				}
			}
			if diff := cmp.Diff(before, snapshot(t, dir)); diff != "" {
				t.Errorf("Load changed the directory:\n%s", diff)
			}
		})
	}
}

func TestLoadUnknownVersion(t *testing.T) {
	for _, tc := range []struct {
		content string
		want    []string
	}{
		{`{"version": 2, "engines": "a newer shape"}`, []string{"has unknown version 2; this pool-managerd reads version 1", "newer pool-managerd?"}},
		{`{"version": 0}`, []string{"unknown version 0", "not written by pool-managerd?"}},
		{`{"version": -7}`, []string{"unknown version -7"}},
	} {
		dir := t.TempDir()
		path := filepath.Join(dir, FileName)
		if err := os.WriteFile(path, []byte(tc.content), 0o644); err != nil {
			t.Fatal(err)
		}
		before := snapshot(t, dir)
		_, err := Store{Dir: dir}.Load()
		if !errors.Is(err, ErrUnknownVersion) || errors.Is(err, ErrCorrupt) {
			t.Fatalf("Load(%s) = %v; want ErrUnknownVersion", tc.content, err)
		}
		for _, want := range append(tc.want, path) {
			if !strings.Contains(err.Error(), want) {
				t.Errorf("error %q does not contain %q", err, want)
			}
		}
		if diff := cmp.Diff(before, snapshot(t, dir)); diff != "" {
			t.Errorf("Load changed the directory:\n%s", diff)
		}
	}
}

func TestSaveLeavesNoTempFiles(t *testing.T) {
	dir := t.TempDir()
	st := Store{Dir: dir}
	s := sample()
	for i := range 5 {
		s.Pools["qwen"] = restart.Record{Restarts: i}
		if err := st.Save(s); err != nil {
			t.Fatal(err)
		}
	}
	if got := snapshot(t, dir); len(got) != 1 || got[FileName] == "" {
		t.Errorf("directory after Save: %v; want only %s", got, FileName)
	}
}

func TestSaveVersion(t *testing.T) {
	st := Store{Dir: t.TempDir()}
	if err := st.Save(&State{}); err != nil {
		t.Fatal(err)
	}
	got, err := st.Load()
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(New(), got); diff != "" {
		t.Errorf("Save of an empty State, Load (-want +got):\n%s", diff)
	}
	before := snapshot(t, st.Dir)
	if err := st.Save(&State{Version: CurrentVersion + 1}); err == nil {
		t.Errorf("Save of a State with version %d succeeded", CurrentVersion+1)
	}
	if diff := cmp.Diff(before, snapshot(t, st.Dir)); diff != "" {
		t.Errorf("a failed Save changed the directory:\n%s", diff)
	}
}

func TestSaveReadOnlyDir(t *testing.T) {
	dir := t.TempDir()
	st := Store{Dir: dir}
	if err := st.Save(sample()); err != nil {
		t.Fatal(err)
	}
	before := snapshot(t, dir)
	if err := os.Chmod(dir, 0o555); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.Chmod(dir, 0o755) })
	probe := filepath.Join(dir, "probe")
	if f, err := os.Create(probe); err == nil {
		_ = f.Close()
		_ = os.Remove(probe)
		t.Skip("this user can write to a read-only directory (root?)")
	}
	s := sample()
	s.Pools["qwen"] = restart.Record{Restarts: 99}
	if err := st.Save(s); err == nil {
		t.Fatal("Save into a read-only directory succeeded")
	}
	if diff := cmp.Diff(before, snapshot(t, dir)); diff != "" {
		t.Errorf("a failed Save changed the directory:\n%s", diff)
	}
}

// TestSaveRenameFails makes the rename fail (the state file is a directory),
// which works as root too: the temporary file must be removed.
func TestSaveRenameFails(t *testing.T) {
	dir := t.TempDir()
	if err := os.MkdirAll(filepath.Join(dir, FileName, "x"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := (Store{Dir: dir}).Save(sample()); err == nil {
		t.Fatal("Save over a directory succeeded")
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) != 1 || entries[0].Name() != FileName {
		t.Errorf("directory after a failed Save: %v; want only %s", entries, FileName)
	}
}

func TestLockTwiceInProcess(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "state")
	l, err := Lock(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Unlock()
	_, err = Lock(dir)
	if !errors.Is(err, ErrLocked) {
		t.Fatalf("second Lock: %v, want ErrLocked", err)
	}
	var locked *LockedError
	if !errors.As(err, &locked) || locked.Holder == nil || locked.Holder.PID != os.Getpid() {
		t.Fatalf("second Lock: %#v, want a LockedError naming pid %d", err, os.Getpid())
	}
	if !slices.Equal(locked.Holder.Args, os.Args) || time.Since(locked.Holder.Since) > time.Minute {
		t.Errorf("holder = %+v", locked.Holder)
	}
	want := fmt.Sprintf("state directory %s is locked by pid %d (%s", dir, os.Getpid(), os.Args[0])
	if !strings.HasPrefix(err.Error(), want) || !strings.Contains(err.Error(), ") since ") {
		t.Errorf("error %q, want it to start with %q and say since when", err, want)
	}

	if err := l.Unlock(); err != nil {
		t.Fatal(err)
	}
	if err := l.Unlock(); err != nil {
		t.Errorf("second Unlock: %v", err)
	}
	if data, err := os.ReadFile(filepath.Join(dir, LockFileName)); err != nil || len(data) != 0 {
		t.Errorf("lock file after Unlock: %q, %v; want empty", data, err)
	}
	l2, err := Lock(dir)
	if err != nil {
		t.Fatalf("Lock after Unlock: %v", err)
	}
	if err := l2.Unlock(); err != nil {
		t.Fatal(err)
	}
}

func TestLockHolderNotRecorded(t *testing.T) {
	dir := t.TempDir()
	l, err := Lock(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Unlock()
	// As between another process's flock and its record.
	if err := os.WriteFile(filepath.Join(dir, LockFileName), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	_, err = Lock(dir)
	var locked *LockedError
	if !errors.As(err, &locked) || locked.Holder != nil || !errors.Is(err, ErrLocked) {
		t.Fatalf("Lock: %v, want a LockedError with no holder", err)
	}
	if want := "state directory " + dir + " is locked by another process"; err.Error() != want {
		t.Errorf("error %q, want %q", err, want)
	}
}

// startHolder starts the test binary as a lock holder of dir.
func startHolder(t *testing.T, dir string) *exec.Cmd {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), lockHelperEnv+"="+dir)
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = stdin.Close()
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	})
	line, err := bufio.NewReader(stdout).ReadString('\n')
	if line != "locked\n" {
		t.Fatalf("lock holder said %q, %v", line, err)
	}
	return cmd
}

func TestLockFromChildProcess(t *testing.T) {
	dir := t.TempDir()
	holder := startHolder(t, dir)
	_, err := Lock(dir)
	var locked *LockedError
	if !errors.As(err, &locked) || !errors.Is(err, ErrLocked) {
		t.Fatalf("Lock while a child holds it: %v, want ErrLocked", err)
	}
	if locked.Holder == nil || locked.Holder.PID != holder.Process.Pid {
		t.Fatalf("holder = %+v, want pid %d", locked.Holder, holder.Process.Pid)
	}
	if !strings.Contains(err.Error(), "locked by pid "+strconv.Itoa(holder.Process.Pid)+" ("+os.Args[0]+" -test.run=^$) since ") {
		t.Errorf("error %q does not name the holder", err)
	}
	// kill -9: no chance to unlock.
	if err := holder.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	_ = holder.Wait()
	l, err := Lock(dir)
	if err != nil {
		t.Fatalf("Lock after the holder was killed: %v", err)
	}
	if err := l.Unlock(); err != nil {
		t.Fatal(err)
	}
}

// TestLockNotInherited: the engines pool-managerd starts outlive it, so they
// must not inherit the lock, or a killed daemon's lock would outlive it too.
func TestLockNotInherited(t *testing.T) {
	dir := t.TempDir()
	l, err := Lock(dir)
	if err != nil {
		t.Fatal(err)
	}
	engine := exec.Command("sleep", "30")
	if err := engine.Start(); err != nil {
		t.Skip(err)
	}
	t.Cleanup(func() {
		_ = engine.Process.Kill()
		_ = engine.Wait()
	})
	// Die as a killed process does: close the file without unlocking it.
	if err := l.f.Close(); err != nil {
		t.Fatal(err)
	}
	l.f = nil
	l2, err := Lock(dir)
	if err != nil {
		t.Fatalf("Lock with the holder gone and its child running: %v", err)
	}
	if err := l2.Unlock(); err != nil {
		t.Fatal(err)
	}
}

func FuzzDecode(f *testing.F) {
	data, err := encode(sample())
	if err != nil {
		f.Fatal(err)
	}
	for _, seed := range []string{
		string(data),
		`{"version": 1}`,
		`{"version": 1, "engines": null, "pools": {}}`,
		`{"version": 1, "pools": {"a": {"failures": [], "lastError": null}}}`,
		`{"version": 1, "pools": {"a": {"failures": ["2026-01-02T03:04:05.5+01:00"], "nextRetry": "0001-01-01T00:00:00Z"}}}`,
		`{"version": 1, "engines": {"a": {"startedAt": "0000-01-01T00:00:00+01:00", "pid": 1, "PID": 2}}}`,
		`{"version": 2}`,
		`{"version": 1.5}`,
		`{"Version": 1, "ENGINES": {"x": {"pool": "\ud800"}}}`,
		`{`,
		``,
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		dir := t.TempDir()
		st := Store{Dir: dir}
		if err := os.WriteFile(st.Path(), data, 0o644); err != nil {
			t.Fatal(err)
		}
		s, err := st.Load()
		if err != nil {
			if !errors.Is(err, ErrCorrupt) && !errors.Is(err, ErrUnknownVersion) {
				t.Fatalf("Load: %v, want ErrCorrupt or ErrUnknownVersion", err)
			}
			if got, _ := os.ReadFile(st.Path()); !bytes.Equal(got, data) {
				t.Fatalf("Load changed the file")
			}
			return
		}
		if err := st.Save(s); err != nil {
			t.Fatalf("Save of a loaded state: %v", err)
		}
		saved, err := os.ReadFile(st.Path())
		if err != nil {
			t.Fatal(err)
		}
		s2, err := st.Load()
		if err != nil {
			t.Fatalf("Load of a saved state: %v\n%s", err, saved)
		}
		if diff := cmp.Diff(s, s2); diff != "" {
			t.Fatalf("Save, Load (-first +second):\n%s", diff)
		}
		again, err := encode(s2)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(saved, again) {
			t.Fatalf("encoding is not stable:\n%s\n---\n%s", saved, again)
		}
	})
}
