//go:build linux

package supervisor

import (
	"context"
	"errors"
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
	"github.com/google/go-cmp/cmp/cmpopts"
	"golang.org/x/sys/unix"

	"github.com/poolmanagerd/pool-managerd/drivers/engine/proc"
)

// Stand-in engines: sh scripts started as the engine would be.

const (
	// termClean exits 0 on SIGTERM, as llama-server does.
	// Its sleeps are short: one forked as SIGTERM arrives may miss it (the
	// shell's handler catches it before exec), and must not hold Stop up.
	termClean = `trap 'echo got-term; exit 0' TERM; echo ready; while :; do sleep 0.05 & wait; done`
	// termIgnored ignores SIGTERM, and so does its sleep (an ignored signal
	// stays ignored across exec).
	termIgnored = `trap '' TERM; echo ready; while :; do sleep 1; done`
)

// track makes sure that h and everything in its session is gone when the
// test ends, and reaps what was re-parented to us.
func track(t *testing.T, h *Handle) *Handle {
	t.Helper()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := h.killAll(ctx); err != nil {
			t.Errorf("cleanup: %v", err)
		}
		select {
		case <-h.Done():
		case <-ctx.Done():
			t.Errorf("cleanup: engine %d did not exit", h.PID())
		}
		reapZombies()
	})
	return h
}

// start starts script under sh as an engine logging to dir/engine.log.
func start(t *testing.T, dir, script string, env ...string) *Handle {
	t.Helper()
	h, err := Start(context.Background(), shSpec(dir, script, env...))
	if err != nil {
		t.Fatal(err)
	}
	return track(t, h)
}

func shSpec(dir, script string, env ...string) Spec {
	return Spec{
		Path:    "/bin/sh",
		Args:    []string{"-c", script},
		Env:     append([]string{"PATH=" + os.Getenv("PATH"), "DIR=" + dir}, env...),
		LogPath: filepath.Join(dir, "engine.log"),
	}
}

// waitExit waits for the engine's exit.
func waitExit(t *testing.T, h *Handle) Exit {
	t.Helper()
	select {
	case e := <-h.Wait():
		return e
	case <-time.After(10 * time.Second):
		t.Fatalf("engine %d did not exit", h.PID())
		return Exit{}
	}
}

// waitLog waits until the log holds the line want.
func waitLog(t *testing.T, path, want string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		data, _ := os.ReadFile(path)
		if slices.Contains(strings.Split(string(data), "\n"), want) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("log %s: no %q in:\n%s", path, want, data)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func readFile(t *testing.T, path string) string {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(data)
}

var ignoreAt = cmpopts.IgnoreFields(Exit{}, "At")

func TestStartAppendsToLogAcrossStarts(t *testing.T) {
	dir := t.TempDir()
	spec := shSpec(dir, `echo "out-$RUN"; echo "err-$RUN" >&2`)
	spec.LogPath = filepath.Join(dir, "logs", "pool.log") // the directory is created
	for _, run := range []string{"1", "2"} {
		s := spec
		s.Env = append(slices.Clone(spec.Env), "RUN="+run)
		h, err := Start(context.Background(), s)
		if err != nil {
			t.Fatal(err)
		}
		track(t, h)
		if e := waitExit(t, h); !e.Clean() {
			t.Fatalf("run %s: %v", run, e)
		}
	}
	log := readFile(t, spec.LogPath)
	var lines []string
	for _, l := range strings.Split(strings.TrimSpace(log), "\n") {
		if strings.HasPrefix(l, "-- pool-managerd ") {
			l = l[:len("-- pool-managerd ")] + "TIME" + l[strings.Index(l, ": start"):]
		}
		lines = append(lines, l)
	}
	header := `-- pool-managerd TIME: start /bin/sh -c "echo \"out-$RUN\"; echo \"err-$RUN\" >&2"`
	want := []string{header, "out-1", "err-1", header, "out-2", "err-2"}
	if diff := cmp.Diff(want, lines); diff != "" {
		t.Errorf("log (-want +got):\n%s", diff)
	}
}

// TestStartProcessSetup checks what the engine is given: its own session and
// group, stdin /dev/null, stdout and stderr on the log file itself (not a
// pipe), no other descriptor, exactly Env, and Dir.
func TestStartProcessSetup(t *testing.T) {
	dir := t.TempDir()
	work := t.TempDir()
	t.Setenv("SUPERVISOR_SECRET", "not-passed")
	// Open files of ours are not inherited: Go's (close-on-exec), and one
	// opened without the flag, as the daemon may inherit from its parent.
	leak, err := os.Open(os.DevNull)
	if err != nil {
		t.Fatal(err)
	}
	defer leak.Close()
	rawFd, err := syscall.Open(os.DevNull, syscall.O_RDONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer syscall.Close(rawFd)
	spec := shSpec(dir, `
echo "stdin: $(readlink /proc/$$/fd/0)"
echo "stdout: $(readlink /proc/$$/fd/1)"
echo "stderr: $(readlink /proc/$$/fd/2)"
echo "secret: ${SUPERVISOR_SECRET:-unset}"
echo "pwd: $(pwd)"
sleep 300 &
echo ready
wait`)
	spec.Dir = work
	h, err := Start(context.Background(), spec)
	if err != nil {
		t.Fatal(err)
	}
	track(t, h)
	waitLog(t, spec.LogPath, "ready")

	info, err := proc.Stat(h.PID())
	if err != nil {
		t.Fatal(err)
	}
	if info.Session != h.PID() || info.PGID != h.PID() {
		t.Errorf("engine %d: session %d, group %d; want its own", h.PID(), info.Session, info.PGID)
	}
	if info.PPID != os.Getpid() {
		t.Errorf("engine's parent %d, want us (%d)", info.PPID, os.Getpid())
	}
	if info.StartTicks != h.StartTicks() {
		t.Errorf("StartTicks %d, /proc says %d", h.StartTicks(), info.StartTicks)
	}
	cmdline, err := proc.Cmdline(h.PID())
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(spec.Argv(), cmdline); diff != "" {
		t.Errorf("cmdline (-Argv +/proc):\n%s", diff)
	}
	for _, want := range []string{
		"stdin: /dev/null\n",
		"stdout: " + spec.LogPath + "\n",
		"stderr: " + spec.LogPath + "\n",
		"secret: unset\n",
		"pwd: " + work + "\n",
	} {
		if log := readFile(t, spec.LogPath); !strings.Contains(log, want) {
			t.Errorf("log lacks %q:\n%s", want, log)
		}
	}
	entries, err := os.ReadDir("/proc/" + strconv.Itoa(h.PID()) + "/fd")
	if err != nil {
		t.Fatal(err)
	}
	var fds []string
	for _, e := range entries {
		fds = append(fds, e.Name())
	}
	slices.Sort(fds)
	if diff := cmp.Diff([]string{"0", "1", "2"}, fds); diff != "" {
		t.Errorf("engine's descriptors (-want +got):\n%s", diff)
	}
	if h.Adopted() {
		t.Error("a started engine says it was adopted")
	}
}

func TestLogRotation(t *testing.T) {
	dir := t.TempDir()
	spec := shSpec(dir, `echo "run-$RUN with enough bytes to pass the limit"`)
	spec.LogMaxBytes = 20
	spec.LogKeep = 2
	for run := 1; run <= 4; run++ {
		s := spec
		s.Env = append(slices.Clone(spec.Env), "RUN="+strconv.Itoa(run))
		h, err := Start(context.Background(), s)
		if err != nil {
			t.Fatal(err)
		}
		track(t, h)
		waitExit(t, h)
	}
	for name, want := range map[string]string{"": "run-4", ".1": "run-3", ".2": "run-2"} {
		log := readFile(t, spec.LogPath+name)
		if !strings.Contains(log, "\n"+want+" ") || strings.Count(log, "\nrun-") != 1 {
			t.Errorf("engine.log%s = %q, want only %s", name, log, want)
		}
	}
	if _, err := os.Stat(spec.LogPath + ".3"); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("engine.log.3: %v, want it removed (keep 2)", err)
	}
}

func TestRotateLog(t *testing.T) {
	write := func(t *testing.T, path, s string) {
		t.Helper()
		if err := os.WriteFile(path, []byte(s), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	tests := []struct {
		name     string
		files    map[string]string // suffix → content before
		max      int64
		keep     int
		rotated  bool
		want     map[string]string // suffix → content after
		noSuffix []string
	}{
		{name: "missing log", max: 1, keep: 2, want: map[string]string{}},
		{name: "under the limit", files: map[string]string{"": "12345"}, max: 5, keep: 2, want: map[string]string{"": "12345"}},
		{name: "no limit", files: map[string]string{"": "123456"}, max: 0, keep: 2, want: map[string]string{"": "123456"}},
		{
			name: "over the limit shifts", files: map[string]string{"": "new-enough", ".1": "one", ".2": "two"}, max: 5, keep: 2, rotated: true,
			want: map[string]string{".1": "new-enough", ".2": "one"}, noSuffix: []string{"", ".3"},
		},
		{
			name: "gaps are fine", files: map[string]string{"": "new-enough", ".2": "two"}, max: 5, keep: 3, rotated: true,
			want: map[string]string{".1": "new-enough", ".3": "two"}, noSuffix: []string{"", ".2"},
		},
		{name: "keep 0 removes", files: map[string]string{"": "new-enough"}, max: 5, keep: 0, rotated: true, want: map[string]string{}, noSuffix: []string{"", ".1"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "x.log")
			for suffix, s := range tc.files {
				write(t, path+suffix, s)
			}
			rotated, err := RotateLog(path, tc.max, tc.keep)
			if err != nil || rotated != tc.rotated {
				t.Fatalf("RotateLog = %v, %v; want %v", rotated, err, tc.rotated)
			}
			for suffix, want := range tc.want {
				if got := readFile(t, path+suffix); got != want {
					t.Errorf("x.log%s = %q, want %q", suffix, got, want)
				}
			}
			for _, suffix := range tc.noSuffix {
				if _, err := os.Stat(path + suffix); !errors.Is(err, os.ErrNotExist) {
					t.Errorf("x.log%s exists", suffix)
				}
			}
		})
	}
}

func TestExitStatus(t *testing.T) {
	tests := []struct {
		script string
		want   Exit
		clean  bool
		reason string
		str    string
	}{
		{script: "exit 0", want: Exit{}, clean: true, str: "exit status 0"},
		{script: "exit 3", want: Exit{Code: 3}, reason: ReasonExited, str: "exit status 3"},
		{script: "kill -TERM $$", want: Exit{Code: -1, Signal: "terminated", Signo: syscall.SIGTERM}, reason: ReasonSignaled, str: "signal: terminated"},
		{script: "kill -HUP $$", want: Exit{Code: -1, Signal: "hangup", Signo: syscall.SIGHUP}, reason: ReasonSignaled, str: "signal: hangup"},
		// A SIGKILL we did not send: the OOM killer's signature.
		{script: "kill -KILL $$", want: Exit{Code: -1, Signal: "killed", Signo: syscall.SIGKILL}, reason: ReasonOOMKilled, str: "signal: killed"},
	}
	for _, tc := range tests {
		t.Run(tc.script, func(t *testing.T) {
			h := start(t, t.TempDir(), tc.script)
			before := time.Now()
			got := waitExit(t, h)
			if diff := cmp.Diff(tc.want, got, ignoreAt, cmpopts.EquateErrors()); diff != "" {
				t.Errorf("Exit (-want +got):\n%s", diff)
			}
			if got.At.IsZero() || got.At.After(time.Now()) || got.At.Before(before.Add(-time.Minute)) {
				t.Errorf("Exit.At = %v", got.At)
			}
			if got.Clean() != tc.clean || got.Reason() != tc.reason || got.String() != tc.str || got.Signaled() != (tc.want.Signo != 0) {
				t.Errorf("Clean %v Reason %q String %q Signaled %v; want %v %q %q", got.Clean(), got.Reason(), got.String(), got.Signaled(), tc.clean, tc.reason, tc.str)
			}
			// Every watcher gets the exit, also after it happened.
			if again := <-h.Wait(); !cmp.Equal(again, got, cmpopts.EquateErrors()) {
				t.Errorf("second Wait = %v, want %v", again, got)
			}
			if e, ok := h.Exited(); !ok || !cmp.Equal(e, got, cmpopts.EquateErrors()) {
				t.Errorf("Exited = %v, %v", e, ok)
			}
		})
	}
}

func TestExitString(t *testing.T) {
	for _, tc := range []struct {
		e    Exit
		want string
	}{
		{Exit{Code: 0, Stopped: true}, "exit status 0 (stopped)"},
		{Exit{Code: -1, Signal: "killed", Signo: syscall.SIGKILL, Stopped: true, Killed: true}, "signal: killed (stopped: SIGKILL after the grace period)"},
		{Exit{Code: -1, Err: ErrNoStatus}, "exited (status unknown: adopted process)"},
		{Exit{Code: -1, Err: errors.New("wait: boom")}, "exit status unknown: wait: boom"},
	} {
		if got := tc.e.String(); got != tc.want {
			t.Errorf("%#v.String() = %q, want %q", tc.e, got, tc.want)
		}
	}
	if r := (Exit{Code: -1, Signal: "killed", Signo: syscall.SIGKILL, Killed: true}).Reason(); r != ReasonSignaled {
		t.Errorf("Reason of a SIGKILL Stop sent = %q, want %q", r, ReasonSignaled)
	}
	if r := (Exit{Code: -1, Err: ErrNoStatus}).Reason(); r != ReasonExited {
		t.Errorf("Reason of an adopted exit = %q, want %q", r, ReasonExited)
	}
}

func TestStopTERMHonoured(t *testing.T) {
	dir := t.TempDir()
	h := start(t, dir, termClean)
	waitLog(t, filepath.Join(dir, "engine.log"), "ready")
	begin := time.Now()
	got, err := h.Stop(context.Background(), StopSpec{Grace: 10 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	if d := time.Since(begin); d > 5*time.Second {
		t.Errorf("Stop took %v: it should not wait out the grace period", d)
	}
	if diff := cmp.Diff(Exit{Stopped: true}, got, ignoreAt); diff != "" {
		t.Errorf("Stop (-want +got):\n%s", diff)
	}
	if !got.Clean() {
		t.Errorf("Clean() = false for %v", got)
	}
	waitLog(t, filepath.Join(dir, "engine.log"), "got-term")
	if e := waitExit(t, h); !e.Stopped || e.Killed {
		t.Errorf("Wait's exit %v: want Stopped, not Killed", e)
	}
	// A second Stop gives the same exit at once.
	again, err := h.Stop(context.Background(), StopSpec{Grace: time.Hour})
	if err != nil || !cmp.Equal(got, again, cmpopts.EquateErrors()) {
		t.Errorf("second Stop = %v, %v; want %v", again, err, got)
	}
}

func TestStopKillsAfterGrace(t *testing.T) {
	dir := t.TempDir()
	h := start(t, dir, termIgnored)
	waitLog(t, filepath.Join(dir, "engine.log"), "ready")
	const grace = 300 * time.Millisecond
	begin := time.Now()
	got, err := h.Stop(context.Background(), StopSpec{Grace: grace})
	if err != nil {
		t.Fatal(err)
	}
	if d := time.Since(begin); d < grace {
		t.Errorf("Stop took %v, less than the grace period %v", d, grace)
	}
	want := Exit{Code: -1, Signal: "killed", Signo: syscall.SIGKILL, Stopped: true, Killed: true}
	if diff := cmp.Diff(want, got, ignoreAt); diff != "" {
		t.Errorf("Stop (-want +got):\n%s", diff)
	}
	if got.Reason() == ReasonOOMKilled {
		t.Errorf("a SIGKILL Stop sent reads as %q", got.Reason())
	}
	if pids, err := h.Session(); err != nil || len(pids) != 0 {
		t.Errorf("session after Stop: %v, %v", pids, err)
	}
}

// TestStopKillsSession: the engine honours SIGTERM, but a child that ignores
// it and a process in another group of its session (as TGI's shards are) are
// still there after the grace period: they get SIGKILL.
func TestStopKillsSession(t *testing.T) {
	dir := t.TempDir()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	log := filepath.Join(dir, "engine.log")
	h := start(t, dir, `
trap 'exit 0' TERM
(trap '' TERM; echo child-ready; exec sleep 300) &
echo $! > "$DIR/child.pid"
SUPERVISOR_TEST_HELPER=own-group "$HELPER" &
echo $! > "$DIR/helper.pid"
echo ready
wait`, "HELPER="+self)
	waitLog(t, log, "ready")
	waitLog(t, log, "helper-ready")
	waitLog(t, log, "child-ready")
	child := readPid(t, filepath.Join(dir, "child.pid"))
	helperPid := readPid(t, filepath.Join(dir, "helper.pid"))
	t.Cleanup(func() { // in case a check fails before Stop
		_ = syscall.Kill(child, syscall.SIGKILL)
		_ = syscall.Kill(helperPid, syscall.SIGKILL)
	})

	session, err := h.Session()
	if err != nil {
		t.Fatal(err)
	}
	want := []int{h.PID(), child, helperPid}
	slices.Sort(want)
	if diff := cmp.Diff(want, session); diff != "" {
		t.Errorf("Session (-want +got):\n%s", diff)
	}
	if info, err := proc.Stat(helperPid); err != nil || info.PGID == h.PID() || info.Session != h.PID() {
		t.Fatalf("helper: %+v, %v; want another group of the engine's session", info, err)
	}

	const grace = 500 * time.Millisecond
	begin := time.Now()
	got, err := h.Stop(context.Background(), StopSpec{Grace: grace})
	if err != nil {
		t.Fatal(err)
	}
	if d := time.Since(begin); d < grace {
		t.Errorf("Stop took %v: the session's processes should have had the grace period %v", d, grace)
	}
	// The engine itself exited 0 on SIGTERM; its session needed SIGKILL.
	if diff := cmp.Diff(Exit{Stopped: true, Killed: true}, got, ignoreAt); diff != "" {
		t.Errorf("Stop (-want +got):\n%s", diff)
	}
	for _, pid := range []int{child, helperPid} {
		if alive(pid) {
			t.Errorf("process %d of the session is still alive", pid)
		}
	}
	if pids, err := h.Session(); err != nil || len(pids) != 0 {
		t.Errorf("session after Stop: %v, %v", pids, err)
	}
}

// TestStopAfterExitCleansSession: an engine that died by itself leaves a
// worker behind; Stop gives the worker the grace period, then kills it.
func TestStopAfterExitCleansSession(t *testing.T) {
	dir := t.TempDir()
	h := start(t, dir, `(trap '' TERM; echo child-ready; exec sleep 300) & echo $! > "$DIR/child.pid"; exit 7`)
	e := waitExit(t, h)
	waitLog(t, filepath.Join(dir, "engine.log"), "child-ready")
	child := readPid(t, filepath.Join(dir, "child.pid"))
	t.Cleanup(func() { _ = syscall.Kill(child, syscall.SIGKILL) })
	if pids, _ := h.Session(); !slices.Equal(pids, []int{child}) {
		t.Fatalf("session after the engine's exit: %v, want [%d]", pids, child)
	}
	got, err := h.Stop(context.Background(), StopSpec{Grace: 100 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	want := e
	want.Killed = true // Stopped stays false: the engine ended by itself
	if diff := cmp.Diff(want, got, cmpopts.EquateErrors()); diff != "" {
		t.Errorf("Stop (-want +got):\n%s", diff)
	}
	if alive(child) {
		t.Errorf("worker %d still alive", child)
	}
}

func TestStopDrain(t *testing.T) {
	t.Run("bounded by DrainTimeout", func(t *testing.T) {
		dir := t.TempDir()
		h := start(t, dir, termClean)
		waitLog(t, filepath.Join(dir, "engine.log"), "ready")
		called := make(chan struct{})
		const timeout = 300 * time.Millisecond
		begin := time.Now()
		got, err := h.Stop(context.Background(), StopSpec{
			Drain: func(ctx context.Context) error {
				close(called)
				<-ctx.Done() // never idle
				return ctx.Err()
			},
			DrainTimeout: timeout,
			Grace:        10 * time.Second,
		})
		if err != nil {
			t.Fatal(err)
		}
		d := time.Since(begin)
		select {
		case <-called:
		default:
			t.Fatal("Drain was not called")
		}
		if d < timeout || d > 5*time.Second {
			t.Errorf("Stop took %v with DrainTimeout %v", d, timeout)
		}
		if !errors.Is(got.DrainErr, context.DeadlineExceeded) {
			t.Errorf("DrainErr = %v, want a deadline", got.DrainErr)
		}
		if !got.Clean() || !got.Stopped || got.Killed {
			t.Errorf("Stop = %v", got)
		}
	})
	t.Run("a Drain that ignores its context", func(t *testing.T) {
		dir := t.TempDir()
		h := start(t, dir, termClean)
		waitLog(t, filepath.Join(dir, "engine.log"), "ready")
		release := make(chan struct{})
		defer close(release)
		begin := time.Now()
		got, err := h.Stop(context.Background(), StopSpec{
			Drain:        func(context.Context) error { <-release; return nil },
			DrainTimeout: 200 * time.Millisecond,
			Grace:        10 * time.Second,
		})
		if err != nil {
			t.Fatal(err)
		}
		if d := time.Since(begin); d > 5*time.Second {
			t.Errorf("Stop took %v", d)
		}
		if got.DrainErr == nil || !got.Clean() {
			t.Errorf("Stop = %v, DrainErr %v", got, got.DrainErr)
		}
	})
	t.Run("idle at once", func(t *testing.T) {
		dir := t.TempDir()
		h := start(t, dir, termClean)
		waitLog(t, filepath.Join(dir, "engine.log"), "ready")
		calls := 0
		got, err := h.Stop(context.Background(), StopSpec{
			Drain:        func(context.Context) error { calls++; return nil },
			DrainTimeout: time.Minute,
			Grace:        10 * time.Second,
		})
		if err != nil || calls != 1 || got.DrainErr != nil || !got.Clean() {
			t.Errorf("Stop = %v, %v (DrainErr %v), %d Drain calls", got, err, got.DrainErr, calls)
		}
	})
	t.Run("failing drain", func(t *testing.T) {
		dir := t.TempDir()
		h := start(t, dir, termClean)
		waitLog(t, filepath.Join(dir, "engine.log"), "ready")
		boom := errors.New("slots: connection refused")
		got, err := h.Stop(context.Background(), StopSpec{
			Drain: func(context.Context) error { return boom },
			Grace: 10 * time.Second,
		})
		if err != nil || !errors.Is(got.DrainErr, boom) || !got.Clean() {
			t.Errorf("Stop = %v, %v (DrainErr %v)", got, err, got.DrainErr)
		}
	})
	t.Run("not called once exited", func(t *testing.T) {
		h := start(t, t.TempDir(), "exit 0")
		waitExit(t, h)
		_, err := h.Stop(context.Background(), StopSpec{
			Drain: func(context.Context) error { t.Error("Drain called"); return nil },
		})
		if err != nil {
			t.Fatal(err)
		}
	})
}

func TestStopContextEndsGrace(t *testing.T) {
	dir := t.TempDir()
	h := start(t, dir, termIgnored)
	waitLog(t, filepath.Join(dir, "engine.log"), "ready")
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	begin := time.Now()
	got, err := h.Stop(ctx, StopSpec{Grace: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	if d := time.Since(begin); d > 5*time.Second {
		t.Errorf("Stop took %v", d)
	}
	if !got.Killed || got.Signo != syscall.SIGKILL {
		t.Errorf("Stop = %v, want SIGKILL once ctx ended", got)
	}
}

func TestStartErrors(t *testing.T) {
	dir := t.TempDir()
	plain := filepath.Join(dir, "not-executable")
	if err := os.WriteFile(plain, []byte("#!/bin/sh\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	cancelled, cancel := context.WithCancel(context.Background())
	cancel()
	tests := []struct {
		name string
		ctx  context.Context
		spec Spec
		want string
		is   error
	}{
		{name: "missing binary", spec: Spec{Path: "/nonexistent/llama-server"}, want: `start engine "/nonexistent/llama-server": engine did not start: no such file or directory`, is: ErrStart},
		{name: "name not in PATH", spec: Spec{Path: "no-such-engine-here"}, want: `start engine "no-such-engine-here": engine did not start: not found in PATH`, is: ErrStart},
		{name: "not executable", spec: Spec{Path: plain}, want: "permission denied", is: ErrStart},
		{name: "bad working directory", spec: Spec{Path: "/bin/sh", Dir: filepath.Join(dir, "nope")}, want: "no such file or directory", is: ErrStart},
		{name: "no program", spec: Spec{}, want: "no program", is: ErrStart},
		{name: "cancelled", ctx: cancelled, spec: Spec{Path: "/bin/sh"}, is: context.Canceled},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ctx := tc.ctx
			if ctx == nil {
				ctx = context.Background()
			}
			tc.spec.LogPath = filepath.Join(t.TempDir(), "engine.log")
			h, err := Start(ctx, tc.spec)
			if err == nil {
				track(t, h)
				t.Fatal("Start succeeded")
			}
			if !strings.Contains(err.Error(), tc.want) || !errors.Is(err, tc.is) {
				t.Errorf("Start error %q, want one containing %q and wrapping %v", err, tc.want, tc.is)
			}
		})
	}
	// The failure is in the pool's log too.
	logPath := filepath.Join(dir, "engine.log")
	if _, err := Start(context.Background(), Spec{Path: "/nonexistent/llama-server", LogPath: logPath}); err == nil {
		t.Fatal("Start succeeded")
	}
	if log := readFile(t, logPath); !strings.Contains(log, "start failed: no such file or directory") {
		t.Errorf("log: %q", log)
	}
}

// startOther starts script in a new session from another process (a shell
// that exits at once), as a previous daemon would have, and returns the pid
// of the process once it runs argv.
func startOther(t *testing.T, script string, argv []string) (int, uint64) {
	t.Helper()
	out, err := exec.Command("sh", "-c", script+` >/dev/null 2>&1 & echo $!`).Output()
	if err != nil {
		t.Fatal(err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(out)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = syscall.Kill(pid, syscall.SIGKILL)
		var ws unix.WaitStatus
		_, _ = unix.Wait4(pid, &ws, 0, nil) // re-parented to us, the subreaper
	})
	deadline := time.Now().Add(5 * time.Second)
	for {
		info, err := proc.Stat(pid)
		cmd, _ := proc.Cmdline(pid)
		if err == nil && info.Session == pid && slices.Equal(cmd, argv) {
			return pid, info.StartTicks
		}
		if time.Now().After(deadline) {
			t.Fatalf("process %d: %+v %v, cmdline %q", pid, info, err, cmd)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestAdopt(t *testing.T) {
	for _, pidfd := range []bool{true, false} {
		name := "pidfd"
		if !pidfd {
			name = "proc polling"
		}
		t.Run(name, func(t *testing.T) {
			old := usePidfd
			usePidfd = pidfd
			t.Cleanup(func() { usePidfd = old })

			t.Run("notices the exit", func(t *testing.T) {
				argv := []string{"sleep", "30"}
				pid, ticks := startOther(t, "setsid sleep 30", argv)
				h, err := Adopt(pid, ticks, argv)
				if err != nil {
					t.Fatal(err)
				}
				if h.PID() != pid || h.StartTicks() != ticks || !h.Adopted() {
					t.Errorf("handle: pid %d ticks %d adopted %v", h.PID(), h.StartTicks(), h.Adopted())
				}
				if pids, err := h.Session(); err != nil || !slices.Equal(pids, []int{pid}) {
					t.Errorf("Session = %v, %v", pids, err)
				}
				select {
				case e := <-h.Wait():
					t.Fatalf("exit %v before the process exited", e)
				case <-time.After(100 * time.Millisecond):
				}
				// Killed by someone else: it becomes our zombie (we are
				// the subreaper), which counts as gone.
				if err := syscall.Kill(pid, syscall.SIGTERM); err != nil {
					t.Fatal(err)
				}
				got := waitExit(t, h)
				if diff := cmp.Diff(Exit{Code: -1, Err: ErrNoStatus}, got, ignoreAt, cmpopts.EquateErrors()); diff != "" {
					t.Errorf("Exit (-want +got):\n%s", diff)
				}
				if got.Reason() != ReasonExited || got.Clean() {
					t.Errorf("Reason %q Clean %v", got.Reason(), got.Clean())
				}
			})
			t.Run("Stop with TERM honoured", func(t *testing.T) {
				argv := []string{"sleep", "30"}
				pid, ticks := startOther(t, "setsid sleep 30", argv)
				h, err := Adopt(pid, ticks, argv)
				if err != nil {
					t.Fatal(err)
				}
				got, err := h.Stop(context.Background(), StopSpec{Grace: 10 * time.Second})
				if err != nil {
					t.Fatal(err)
				}
				if diff := cmp.Diff(Exit{Code: -1, Err: ErrNoStatus, Stopped: true}, got, ignoreAt, cmpopts.EquateErrors()); diff != "" {
					t.Errorf("Stop (-want +got):\n%s", diff)
				}
				if proc.Alive(pid, ticks) {
					t.Error("still alive after Stop")
				}
			})
			t.Run("Stop of a TERM-ignoring process", func(t *testing.T) {
				argv := []string{"sleep", "30"}
				pid, ticks := startOther(t, `setsid sh -c "trap '' TERM; exec sleep 30"`, argv)
				h, err := Adopt(pid, ticks, argv)
				if err != nil {
					t.Fatal(err)
				}
				got, err := h.Stop(context.Background(), StopSpec{Grace: 200 * time.Millisecond})
				if err != nil {
					t.Fatal(err)
				}
				if !got.Stopped || !got.Killed || !errors.Is(got.Err, ErrNoStatus) {
					t.Errorf("Stop = %+v", got)
				}
				if proc.Alive(pid, ticks) {
					t.Error("still alive after Stop")
				}
			})
		})
	}
}

func TestAdoptRefuses(t *testing.T) {
	argv := []string{"sleep", "30"}
	pid, ticks := startOther(t, "setsid sleep 30", argv)

	// A process of our own session: not one Start left.
	notLeader := exec.Command("sleep", "30")
	if err := notLeader.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = notLeader.Process.Kill(); _ = notLeader.Wait() })
	nlInfo, err := proc.Stat(notLeader.Process.Pid)
	if err != nil {
		t.Fatal(err)
	}

	// A zombie: a child of ours, exited, not yet waited for.
	zombie := exec.Command("sh", "-c", "exit 0")
	zombie.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := zombie.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = zombie.Wait() })
	zInfo, err := proc.Stat(zombie.Process.Pid)
	if err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(5 * time.Second); ; {
		if info, _ := proc.Stat(zombie.Process.Pid); info.State == 'Z' {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("no zombie")
		}
		time.Sleep(5 * time.Millisecond)
	}

	// A pid that is gone.
	gone := exec.Command("true")
	if err := gone.Run(); err != nil {
		t.Fatal(err)
	}

	tests := []struct {
		name  string
		pid   int
		ticks uint64
		argv  []string
		is    error
		want  string
	}{
		{name: "wrong start time", pid: pid, ticks: ticks + 1, argv: argv, is: ErrMismatch, want: "the pid was reused"},
		{name: "wrong command line", pid: pid, ticks: ticks, argv: []string{"sleep", "31"}, is: ErrMismatch, want: `command line ["sleep" "30"], want ["sleep" "31"]`},
		{name: "not a session leader", pid: notLeader.Process.Pid, ticks: nlInfo.StartTicks, argv: argv, is: ErrMismatch, want: "not the leader of its own session"},
		{name: "zombie", pid: zombie.Process.Pid, ticks: zInfo.StartTicks, argv: []string{"sh", "-c", "exit 0"}, is: ErrNotRunning, want: "zombie"},
		{name: "gone", pid: gone.Process.Pid, ticks: 1, argv: argv, is: ErrNotRunning},
		{name: "bad pid", pid: 0, argv: argv, is: ErrNotRunning},
	}
	for _, pidfd := range []bool{true, false} {
		old := usePidfd
		usePidfd = pidfd
		for _, tc := range tests {
			t.Run(tc.name+"/pidfd="+strconv.FormatBool(pidfd), func(t *testing.T) {
				h, err := Adopt(tc.pid, tc.ticks, tc.argv)
				if err == nil {
					t.Fatalf("Adopt succeeded: %+v", h)
				}
				if !errors.Is(err, tc.is) || !strings.Contains(err.Error(), tc.want) {
					t.Errorf("Adopt error %q, want %v containing %q", err, tc.is, tc.want)
				}
			})
		}
		usePidfd = old
	}
	if _, err := Adopt(pid, ticks, nil); err == nil {
		t.Error("Adopt without a command line succeeded")
	}
	if !proc.Alive(pid, ticks) {
		t.Error("a refused Adopt touched the process")
	}
}

// TestWaitPidfd checks that the pidfd watch itself works here (TestAdopt
// would pass on the /proc fallback too).
func TestWaitPidfd(t *testing.T) {
	argv := []string{"sleep", "30"}
	pid, _ := startOther(t, "setsid sleep 30", argv)
	fd, err := unix.PidfdOpen(pid, unix.PIDFD_NONBLOCK)
	if err != nil {
		t.Skipf("pidfd_open: %v (the /proc fallback is used here)", err)
	}
	res := make(chan bool, 1)
	go func() { res <- waitPidfd(os.NewFile(uintptr(fd), "pidfd")) }()
	select {
	case ok := <-res:
		t.Fatalf("waitPidfd returned %v before the exit", ok)
	case <-time.After(100 * time.Millisecond):
	}
	begin := time.Now()
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	select {
	case ok := <-res:
		if !ok {
			t.Fatal("waitPidfd could not wait in the runtime poller")
		}
		if d := time.Since(begin); d >= procPollInterval {
			t.Errorf("exit noticed after %v", d)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("waitPidfd did not return after the exit")
	}
}
