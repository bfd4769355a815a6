package cli

import (
	"context"
	"errors"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/poolmanagerd/pool-managerd/internal/api"
	"github.com/poolmanagerd/pool-managerd/reconcile"
	"github.com/poolmanagerd/pool-managerd/schema"
)

func TestParseWaitArgs(t *testing.T) {
	since := time.Date(2026, 12, 1, 10, 0, 0, 123456789, time.UTC)
	flags := func(cond string) waitFlags { return waitFlags{cond: cond, timeout: time.Minute} }
	with := func(f waitFlags, change func(*waitFlags)) waitFlags { change(&f); return f }
	tests := []struct {
		name    string
		pools   []string
		flags   waitFlags
		want    waitSpec
		wantErr string
	}{
		{name: "phase", pools: []string{"coder"}, flags: flags("phase=Ready"),
			want: waitSpec{Kind: waitPhase, Pools: []string{"coder"}, Phase: reconcile.Ready, Timeout: time.Minute}},
		{name: "phase of several pools", pools: []string{"coder", "llama70b"}, flags: flags("phase=Stopped"),
			want: waitSpec{Kind: waitPhase, Pools: []string{"coder", "llama70b"}, Phase: reconcile.Stopped, Timeout: time.Minute}},
		{name: "phase names in any case", pools: []string{"coder"}, flags: flags("phase=preloading"),
			want: waitSpec{Kind: waitPhase, Pools: []string{"coder"}, Phase: reconcile.Preloading, Timeout: time.Minute}},
		{name: "every phase is known", pools: []string{"coder"}, flags: flags("phase=Draining"),
			want: waitSpec{Kind: waitPhase, Pools: []string{"coder"}, Phase: reconcile.Draining, Timeout: time.Minute}},
		{name: "not-pid", pools: []string{"llama70b"}, flags: with(flags("phase=Ready"), func(f *waitFlags) { f.notPID = 1234 }),
			want: waitSpec{Kind: waitPhase, Pools: []string{"llama70b"}, Phase: reconcile.Ready, NotPID: 1234, Timeout: time.Minute}},
		{name: "ready", flags: flags("ready"), want: waitSpec{Kind: waitReady, Timeout: time.Minute}},
		{name: "config valid", flags: flags("config=valid"), want: waitSpec{Kind: waitConfig, Valid: true, Timeout: time.Minute}},
		{name: "config invalid", flags: flags("config=invalid"), want: waitSpec{Kind: waitConfig, Timeout: time.Minute}},
		{name: "config held back", flags: flags("config=held-back"), want: waitSpec{Kind: waitHeldBack, Timeout: time.Minute}},
		{name: "revision", flags: flags("revision=0123ABcd"), want: waitSpec{Kind: waitRevision, Revision: "0123abcd", Timeout: time.Minute}},
		{name: "revision too short", flags: flags("revision=012"), wantErr: "--for revision=012: want revision=COMMIT, a commit hash or its first 4 or more hex digits"},
		{name: "revision not hex", flags: flags("revision=main"), wantErr: "--for revision=main: want revision=COMMIT, a commit hash or its first 4 or more hex digits"},
		{name: "revision with pools", pools: []string{"coder"}, flags: flags("revision=0123abcd"),
			wantErr: "--for revision=0123abcd waits on the daemon, not on pools: drop coder"},
		{name: "config since", flags: with(flags("config=valid"), func(f *waitFlags) { f.since = "2026-12-01T10:00:00.123456789Z" }),
			want: waitSpec{Kind: waitConfig, Valid: true, Since: since, Timeout: time.Minute}},
		{name: "since without fraction", flags: with(flags("config=invalid"), func(f *waitFlags) { f.since = "2026-12-01T11:00:00+01:00" }),
			want: waitSpec{Kind: waitConfig, Since: since.Truncate(time.Second).In(time.FixedZone("", 3600)), Timeout: time.Minute}},
		{name: "timeout", flags: with(flags("ready"), func(f *waitFlags) { f.timeout = 5 * time.Minute }),
			want: waitSpec{Kind: waitReady, Timeout: 5 * time.Minute}},

		{name: "no condition", pools: []string{"coder"}, flags: flags(""),
			wantErr: "say what to wait for: --for phase=NAME (with pools), --for ready, --for config=valid|invalid|held-back, or --for revision=COMMIT"},
		{name: "unknown condition", flags: flags("healthy"),
			wantErr: `--for "healthy": want phase=NAME (with pools), ready, config=valid|invalid|held-back, or revision=COMMIT`},
		{name: "phase without a name", pools: []string{"coder"}, flags: flags("phase"),
			wantErr: `--for "phase": want phase=NAME (with pools), ready, config=valid|invalid|held-back, or revision=COMMIT`},
		{name: "unknown phase", pools: []string{"coder"}, flags: flags("phase=Running"),
			wantErr: `--for phase=Running: unknown phase "Running"; want one of Pending, Fetching, Preloading, Ready, Unready, Draining, Failed, Stopped`},
		{name: "phase without pools", flags: flags("phase=Ready"), wantErr: "--for phase=Ready: name the pools to wait for"},
		{name: "empty pool", pools: []string{""}, flags: flags("phase=Ready"), wantErr: "an empty pool name"},
		{name: "ready with a value", flags: flags("ready=yes"),
			wantErr: `--for "ready=yes": want phase=NAME (with pools), ready, config=valid|invalid|held-back, or revision=COMMIT`},
		{name: "ready with pools", pools: []string{"coder"}, flags: flags("ready"),
			wantErr: "--for ready waits on the daemon, not on pools: drop coder"},
		{name: "config with pools", pools: []string{"coder", "x"}, flags: flags("config=valid"),
			wantErr: "--for config=valid waits on the daemon, not on pools: drop coder x"},
		{name: "config state", flags: flags("config=ok"), wantErr: "--for config=ok: want config=valid, config=invalid or config=held-back"},
		{name: "config without a state", flags: flags("config"),
			wantErr: `--for "config": want phase=NAME (with pools), ready, config=valid|invalid|held-back, or revision=COMMIT`},
		{name: "not-pid without a phase", flags: with(flags("ready"), func(f *waitFlags) { f.notPID = 1 }),
			wantErr: "--not-pid goes with pools and --for phase=NAME"},
		{name: "negative not-pid", pools: []string{"coder"}, flags: with(flags("phase=Ready"), func(f *waitFlags) { f.notPID = -1 }),
			wantErr: "--not-pid -1: want a process id"},
		{name: "since with a phase", pools: []string{"coder"}, flags: with(flags("phase=Ready"), func(f *waitFlags) { f.since = "2026-12-01T10:00:00Z" }),
			wantErr: "--since goes with --for config=valid|invalid|held-back"},
		{name: "since not RFC 3339", flags: with(flags("config=valid"), func(f *waitFlags) { f.since = "10:00" }),
			wantErr: `--since "10:00": want a time in RFC 3339, such as $(date -u +%Y-%m-%dT%H:%M:%S.%NZ)`},
		{name: "zero timeout", flags: with(flags("ready"), func(f *waitFlags) { f.timeout = 0 }),
			wantErr: "--timeout 0s: want a duration above 0, such as 60s"},
		{name: "negative timeout", flags: with(flags("ready"), func(f *waitFlags) { f.timeout = -time.Second }),
			wantErr: "--timeout -1s: want a duration above 0, such as 60s"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := parseWaitArgs(tt.pools, tt.flags)
			if tt.wantErr != "" {
				var ee *exitError
				if !errors.As(err, &ee) || ee.code != ExitUsage {
					t.Fatalf("parseWaitArgs(%q, %+v) = %v, want a usage error", tt.pools, tt.flags, err)
				}
				if err.Error() != tt.wantErr {
					t.Errorf("error %q, want %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("parseWaitArgs(%q, %+v): %v", tt.pools, tt.flags, err)
			}
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("parseWaitArgs(%q, %+v) (-want +got):\n%s", tt.pools, tt.flags, diff)
			}
		})
	}
}

func TestWaitPoolsHold(t *testing.T) {
	ready := func(id string, pid int) api.Pool {
		return api.Pool{Pool: id, Phase: reconcile.Ready, Ready: true, PID: pid}
	}
	tests := []struct {
		name     string
		spec     waitSpec
		shown    []api.Pool
		want     bool
		wantSeen string
	}{
		{name: "ready", spec: waitSpec{Pools: []string{"coder"}, Phase: reconcile.Ready},
			shown: []api.Pool{ready("coder", 7)}, want: true, wantSeen: "coder Ready (pid 7)"},
		{name: "still loading", spec: waitSpec{Pools: []string{"coder"}, Phase: reconcile.Ready},
			shown: []api.Pool{{Pool: "coder", Phase: reconcile.Preloading, PID: 7}}, want: false, wantSeen: "coder Preloading (pid 7)"},
		{name: "every named pool", spec: waitSpec{Pools: []string{"a", "b"}, Phase: reconcile.Ready},
			shown: []api.Pool{ready("a", 1), {Pool: "b", Phase: reconcile.Unready}}, want: false, wantSeen: "a Ready (pid 1), b Unready (no engine)"},
		{name: "other pools do not matter", spec: waitSpec{Pools: []string{"a"}, Phase: reconcile.Ready},
			shown: []api.Pool{ready("a", 1), {Pool: "b", Phase: reconcile.Unready}}, want: true, wantSeen: "a Ready (pid 1)"},
		{name: "unknown pool", spec: waitSpec{Pools: []string{"a", "b"}, Phase: reconcile.Ready},
			shown: []api.Pool{ready("a", 1)}, want: false, wantSeen: "a Ready (pid 1), b unknown to the daemon"},
		{name: "the old engine", spec: waitSpec{Pools: []string{"big"}, Phase: reconcile.Ready, NotPID: 10},
			shown: []api.Pool{ready("big", 10)}, want: false, wantSeen: "big Ready (pid 10)"},
		{name: "a new engine", spec: waitSpec{Pools: []string{"big"}, Phase: reconcile.Ready, NotPID: 10},
			shown: []api.Pool{ready("big", 11)}, want: true, wantSeen: "big Ready (pid 11)"},
		{name: "a new engine loading", spec: waitSpec{Pools: []string{"big"}, Phase: reconcile.Ready, NotPID: 10},
			shown: []api.Pool{{Pool: "big", Phase: reconcile.Preloading, PID: 11}}, want: false, wantSeen: "big Preloading (pid 11)"},
		{name: "not-pid needs an engine", spec: waitSpec{Pools: []string{"big"}, Phase: reconcile.Stopped, NotPID: 10},
			shown: []api.Pool{{Pool: "big", Phase: reconcile.Stopped}}, want: false, wantSeen: "big Stopped (no engine)"},
		{name: "stopped", spec: waitSpec{Pools: []string{"big"}, Phase: reconcile.Stopped},
			shown: []api.Pool{{Pool: "big", Phase: reconcile.Stopped}}, want: true, wantSeen: "big Stopped (no engine)"},
		{name: "nothing shown", spec: waitSpec{Pools: []string{"big"}, Phase: reconcile.Pending},
			shown: nil, want: false, wantSeen: "big unknown to the daemon"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, seen := tt.spec.poolsHold(tt.shown)
			if got != tt.want || seen != tt.wantSeen {
				t.Errorf("poolsHold = %v, %q; want %v, %q", got, seen, tt.want, tt.wantSeen)
			}
		})
	}
}

func TestWaitConfigHolds(t *testing.T) {
	t0 := time.Date(2026, 12, 1, 10, 0, 0, 0, time.UTC)
	valid := api.Config{Valid: true, LastLoad: t0}
	invalid := api.Config{Valid: false, LastLoad: t0, Errors: []schema.Diagnostic{{Pos: schema.Pos{File: "pools/coder.cue", Line: 17, Column: 22}, Message: "expected operand, found 'EOF'"}}}
	held := valid
	held.HeldBack = &api.HeldBack{Reason: "the config leaves node gpu-01 no pools while 1 engines run (coder)", Since: t0}
	tests := []struct {
		name     string
		spec     waitSpec
		cfg      api.Config
		want     bool
		wantSeen string
	}{
		{name: "valid", spec: waitSpec{Valid: true}, cfg: valid, want: true, wantSeen: "the config valid, last loaded 2026-12-01T10:00:00Z"},
		{name: "not invalid", spec: waitSpec{}, cfg: valid, want: false, wantSeen: "the config valid, last loaded 2026-12-01T10:00:00Z"},
		{name: "invalid", spec: waitSpec{}, cfg: invalid, want: true,
			wantSeen: "the config invalid, last loaded 2026-12-01T10:00:00Z (pools/coder.cue:17:22: expected operand, found 'EOF')"},
		{name: "never loaded", spec: waitSpec{Valid: true}, cfg: api.Config{}, want: false, wantSeen: "the config invalid, never loaded"},
		{name: "loaded after since", spec: waitSpec{Valid: true, Since: t0.Add(-time.Nanosecond)}, cfg: valid, want: true,
			wantSeen: "the config valid, last loaded 2026-12-01T10:00:00Z"},
		{name: "loaded at since is not after it", spec: waitSpec{Valid: true, Since: t0}, cfg: valid, want: false,
			wantSeen: "the config valid, last loaded 2026-12-01T10:00:00Z"},
		{name: "loaded before since", spec: waitSpec{Since: t0.Add(time.Second)}, cfg: invalid, want: false,
			wantSeen: "the config invalid, last loaded 2026-12-01T10:00:00Z (pools/coder.cue:17:22: expected operand, found 'EOF')"},
		{name: "held back", spec: waitSpec{Kind: waitHeldBack}, cfg: held, want: true,
			wantSeen: "the config valid, last loaded 2026-12-01T10:00:00Z, held back: the config leaves node gpu-01 no pools while 1 engines run (coder)"},
		{name: "not held back", spec: waitSpec{Kind: waitHeldBack}, cfg: valid, want: false, wantSeen: "the config valid, last loaded 2026-12-01T10:00:00Z"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.spec.Kind == 0 {
				tt.spec.Kind = waitConfig
			}
			got, seen := tt.spec.configHolds(tt.cfg)
			if got != tt.want || seen != tt.wantSeen {
				t.Errorf("configHolds = %v, %q; want %v, %q", got, seen, tt.want, tt.wantSeen)
			}
		})
	}
}

func TestRevisionHolds(t *testing.T) {
	applied := &api.Revision{Commit: "0123abcd0123abcd0123abcd0123abcd0123abcd", Ref: "main"}
	bad := &api.Revision{Commit: "feedbeeffeedbeeffeedbeeffeedbeeffeedbeef", Ref: "main"}
	tests := []struct {
		name     string
		want     string
		cfg      api.Config
		holds    bool
		wantSeen string
	}{
		{"applied, full hash", applied.Commit, api.Config{Valid: true, LastAppliedRevision: applied, LastAttemptedRevision: applied}, true,
			"applied revision 0123abcd0123abcd0123abcd0123abcd0123abcd (main), last attempted 0123abcd0123abcd0123abcd0123abcd0123abcd (main)"},
		{"applied, a prefix", "0123abcd", api.Config{Valid: true, LastAppliedRevision: applied}, true,
			"applied revision 0123abcd0123abcd0123abcd0123abcd0123abcd (main), last attempted none"},
		{"attempted, failed to load", "feedbeef", api.Config{LastAppliedRevision: applied, LastAttemptedRevision: bad,
			Errors: []schema.Diagnostic{{Pos: schema.Pos{File: "pools/x.cue", Line: 1, Column: 2}, Message: "bad"}}}, false,
			"applied revision 0123abcd0123abcd0123abcd0123abcd0123abcd (main), last attempted feedbeeffeedbeeffeedbeeffeedbeeffeedbeef (main) (invalid: pools/x.cue:1:2: bad)"},
		{"none yet, fetch failing", "0123abcd", api.Config{Git: &api.GitSource{Error: "repository not found"}}, false,
			"applied revision none, last attempted none (fetch failing: repository not found)"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := waitSpec{Kind: waitRevision, Revision: tt.want}
			holds, seen := s.revisionHolds(tt.cfg)
			if holds != tt.holds || seen != tt.wantSeen {
				t.Errorf("revisionHolds = %v, %q; want %v, %q", holds, seen, tt.holds, tt.wantSeen)
			}
		})
	}
}

// daemonScript is an api.Source that shows, at each request, the next of a
// list of states, and the last one once the list is used up: a daemon whose
// pools move on.
type daemonScript struct {
	mu      sync.Mutex
	ready   []bool
	pools   [][]api.Pool
	configs []api.Config
	asked   int
}

func next[T any](list []T, i int) T {
	if i >= len(list) {
		i = len(list) - 1
	}
	return list[i]
}

func (d *daemonScript) Ready() bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.asked++
	return next(d.ready, d.asked-1)
}

func (d *daemonScript) Pools() []api.Pool {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.asked++
	return next(d.pools, d.asked-1)
}

func (d *daemonScript) Pool(id string) (api.Pool, bool) {
	for _, p := range d.Pools() {
		if p.Pool == id {
			return p, true
		}
	}
	return api.Pool{}, false
}

func (d *daemonScript) Config() api.Config {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.asked++
	return next(d.configs, d.asked-1)
}

func (d *daemonScript) Reset(context.Context, []string) error { return errors.New("not in this test") }

func (d *daemonScript) Stop(context.Context, []string, bool) error {
	return errors.New("not in this test")
}

func (d *daemonScript) requests() int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.asked
}

// serveScript serves src's API as a daemon of a state directory would, and
// returns the state directory.
func serveScript(t *testing.T, src api.Source, token string) string {
	t.Helper()
	srv := httptest.NewServer(api.NewHandler(src, nil, token))
	t.Cleanup(srv.Close)
	dir := t.TempDir()
	addr := strings.TrimPrefix(srv.URL, "http://")
	if err := os.WriteFile(filepath.Join(dir, api.AddrFileName), []byte(addr+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	return dir
}

func TestRunWait(t *testing.T) {
	loading := func(pid int) api.Pool {
		return api.Pool{Pool: "big", Phase: reconcile.Preloading, PID: pid}
	}
	ready := func(pid int) api.Pool {
		return api.Pool{Pool: "big", Phase: reconcile.Ready, Ready: true, PID: pid}
	}
	t0 := time.Date(2026, 12, 1, 10, 0, 0, 0, time.UTC)
	tests := []struct {
		name string
		src  *daemonScript
		spec waitSpec
		// wantSeen is what a wait that succeeds prints; wantErr what one
		// that fails says.
		wantSeen, wantErr string
		// minAsked is how many states the wait must have gone through.
		minAsked int
	}{
		{name: "a pool becomes Ready",
			src:  &daemonScript{pools: [][]api.Pool{{}, {loading(7)}, {loading(7)}, {ready(7)}}},
			spec: waitSpec{Kind: waitPhase, Pools: []string{"big"}, Phase: reconcile.Ready, Timeout: time.Minute},
			// the last state is the only one that holds
			wantSeen: "big Ready (pid 7)", minAsked: 4},
		{name: "a replaced engine",
			src:      &daemonScript{pools: [][]api.Pool{{ready(7)}, {{Pool: "big", Phase: reconcile.Draining, PID: 7}}, {loading(8)}, {ready(8)}}},
			spec:     waitSpec{Kind: waitPhase, Pools: []string{"big"}, Phase: reconcile.Ready, NotPID: 7, Timeout: time.Minute},
			wantSeen: "big Ready (pid 8)", minAsked: 4},
		{name: "the daemon's first reconcile",
			src:      &daemonScript{ready: []bool{false, false, true}},
			spec:     waitSpec{Kind: waitReady, Timeout: time.Minute},
			wantSeen: "the daemon is ready: its first reconcile is done", minAsked: 3},
		{name: "a config load after a moment",
			src: &daemonScript{configs: []api.Config{
				{Valid: true, LastLoad: t0}, {Valid: false, LastLoad: t0.Add(-time.Second)}, {Valid: false, LastLoad: t0.Add(time.Second)}}},
			spec:     waitSpec{Kind: waitConfig, Since: t0, Timeout: time.Minute},
			wantSeen: "the config invalid, last loaded 2026-12-01T10:00:01Z", minAsked: 3},
		{name: "timeout says what it last saw",
			src:     &daemonScript{pools: [][]api.Pool{{loading(7)}}},
			spec:    waitSpec{Kind: waitPhase, Pools: []string{"big"}, Phase: reconcile.Ready, Timeout: 200 * time.Millisecond},
			wantErr: "wait: timed out after 200ms waiting for big Ready; last seen: big Preloading (pid 7)", minAsked: 1},
		{name: "timeout on the old engine",
			src:     &daemonScript{pools: [][]api.Pool{{ready(7)}}},
			spec:    waitSpec{Kind: waitPhase, Pools: []string{"big"}, Phase: reconcile.Ready, NotPID: 7, Timeout: 200 * time.Millisecond},
			wantErr: "wait: timed out after 200ms waiting for big Ready on an engine other than pid 7; last seen: big Ready (pid 7)", minAsked: 1},
		{name: "timeout before the first reconcile",
			src:     &daemonScript{ready: []bool{false}},
			spec:    waitSpec{Kind: waitReady, Timeout: 200 * time.Millisecond},
			wantErr: "wait: timed out after 200ms waiting for the daemon's first reconcile (/readyz); last seen: the daemon is not ready: its first reconcile is not done", minAsked: 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := serveScript(t, tt.src, "")
			seen, err := runWait(t.Context(), tt.spec, dir, "", time.Millisecond)
			if tt.wantErr != "" {
				if err == nil || err.Error() != tt.wantErr {
					t.Fatalf("runWait = %q, %v; want the error %q", seen, err, tt.wantErr)
				}
			} else if err != nil || seen != tt.wantSeen {
				t.Fatalf("runWait = %q, %v; want %q", seen, err, tt.wantSeen)
			}
			if n := tt.src.requests(); n < tt.minAsked {
				t.Errorf("the daemon was asked %d times, want at least %d: wait ended before the state it waits for", n, tt.minAsked)
			}
		})
	}
}

func TestRunWaitNoDaemon(t *testing.T) {
	dir := t.TempDir()
	spec := waitSpec{Kind: waitReady, Timeout: 100 * time.Millisecond}
	_, err := runWait(t.Context(), spec, dir, "", time.Millisecond)
	want := "wait: timed out after 100ms waiting for the daemon's first reconcile (/readyz); last seen: no daemon API address in " + dir + " (is pool-managerd serve running?)"
	if err == nil || !strings.HasPrefix(err.Error(), want) {
		t.Fatalf("runWait without a daemon: %v, want an error starting %q", err, want)
	}

	// A daemon that is gone, its address left behind: the message says so.
	srv := httptest.NewServer(api.NewHandler(&daemonScript{ready: []bool{true}}, nil, ""))
	addr := strings.TrimPrefix(srv.URL, "http://")
	srv.Close()
	if err := os.WriteFile(filepath.Join(dir, api.AddrFileName), []byte(addr+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	_, err = runWait(t.Context(), spec, dir, "", time.Millisecond)
	want = "wait: timed out after 100ms waiting for the daemon's first reconcile (/readyz); last seen: no answer from the daemon at " + addr + ": daemon API: "
	if err == nil || !strings.HasPrefix(err.Error(), want) {
		t.Fatalf("runWait with a gone daemon: %v, want an error starting %q", err, want)
	}
}

func TestRunWaitUnauthorized(t *testing.T) {
	src := &daemonScript{pools: [][]api.Pool{{{Pool: "big", Phase: reconcile.Preloading}}}}
	dir := serveScript(t, src, "secret")
	// A wrong token is no state to wait out: wait ends at the first answer,
	// long before its timeout.
	spec := waitSpec{Kind: waitPhase, Pools: []string{"big"}, Phase: reconcile.Ready, Timeout: time.Hour}
	_, err := runWait(t.Context(), spec, dir, "wrong", time.Millisecond)
	if !errors.Is(err, api.ErrUnauthorized) {
		t.Fatalf("runWait with a wrong token: %v, want an error wrapping ErrUnauthorized", err)
	}
	if !strings.Contains(err.Error(), "set POOL_MANAGERD_TOKEN to its token") {
		t.Errorf("error %q does not say what to do", err)
	}
	// With the right token it is asked and answers.
	spec.Timeout = 200 * time.Millisecond
	_, err = runWait(t.Context(), spec, dir, "secret", time.Millisecond)
	if err == nil || !strings.HasSuffix(err.Error(), "last seen: big Preloading (no engine)") {
		t.Fatalf("runWait with the token: %v, want a timeout that saw big Preloading", err)
	}
}

func TestRunWaitInterrupted(t *testing.T) {
	src := &daemonScript{ready: []bool{false}}
	dir := serveScript(t, src, "")
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	_, err := runWait(ctx, waitSpec{Kind: waitReady, Timeout: time.Hour}, dir, "", time.Millisecond)
	if err == nil || !strings.HasPrefix(err.Error(), "wait: interrupted while waiting for the daemon's first reconcile (/readyz)") {
		t.Fatalf("runWait after its context ended: %v, want an interrupted error", err)
	}
}
