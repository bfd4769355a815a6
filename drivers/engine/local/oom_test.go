package local

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/poolmanagerd/pool-managerd/drivers/engine"
	"github.com/poolmanagerd/pool-managerd/drivers/engine/proc"
	"github.com/poolmanagerd/pool-managerd/drivers/engine/supervisor"
)

// fakeOOM is an injected cgroup: its OOM kill count is what the test says.
type fakeOOM struct{ kills atomic.Uint64 }

func (f *fakeOOM) Cgroup(int) (string, error)      { return "/test.slice", nil }
func (f *fakeOOM) OOMKills(string) (uint64, error) { return f.kills.Load(), nil }
func (f *fakeOOM) oomKilled()                      { f.kills.Add(1) }
func startSleep(t *testing.T) *supervisor.Handle {
	t.Helper()
	h, err := supervisor.Start(context.Background(), supervisor.Spec{Path: "sleep", Args: []string{"60"}, Env: []string{"PATH=" + os.Getenv("PATH")}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = syscall.Kill(h.PID(), syscall.SIGKILL); <-h.Done() })
	return h
}

func TestExitTellsOOMKillFromSIGKILL(t *testing.T) {
	for _, tt := range []struct {
		name       string
		oomDuring  bool
		wantOOM    bool
		wantSignal string
	}{
		{name: "the cgroup counted an OOM kill", oomDuring: true, wantOOM: true, wantSignal: "SIGKILL"},
		{name: "killed by hand", oomDuring: false, wantOOM: false, wantSignal: "SIGKILL"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			src := &fakeOOM{}
			src.kills.Store(3) // kills before the engine started do not count
			p := &process{h: startSleep(t)}
			p.watchOOM(src)
			if tt.oomDuring {
				src.oomKilled()
			}
			if err := syscall.Kill(p.PID(), syscall.SIGKILL); err != nil {
				t.Fatal(err)
			}
			select {
			case <-p.Exited():
			case <-time.After(10 * time.Second):
				t.Fatal("the process did not exit")
			}
			got := p.Exit()
			if got.OOMKilled != tt.wantOOM || got.Signal != tt.wantSignal {
				t.Errorf("Exit() = %+v, want OOMKilled %v, signal %s", got, tt.wantOOM, tt.wantSignal)
			}
		})
	}
}

func TestStopReportsTheSIGKILL(t *testing.T) {
	// A process that ignores SIGTERM is killed when its grace runs out.
	log := filepath.Join(t.TempDir(), "log")
	h, err := supervisor.Start(context.Background(), supervisor.Spec{Path: "sh", Args: []string{"-c", "trap '' TERM; echo up; while :; do sleep 1; done"},
		Env: []string{"PATH=" + os.Getenv("PATH")}, LogPath: log})
	if err != nil {
		t.Fatal(err)
	}
	p := &process{h: h}
	deadline := time.Now().Add(10 * time.Second)
	for data, _ := os.ReadFile(log); !strings.Contains(string(data), "\nup\n") && time.Now().Before(deadline); data, _ = os.ReadFile(log) {
		time.Sleep(10 * time.Millisecond) // until the trap is set: the shell says "up" after the supervisor's header line
	}
	report, err := p.Stop(context.Background(), 0, 100*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	if !report.Killed {
		t.Errorf("Stop of a process that ignores SIGTERM: %+v, want Killed", report)
	}
	if p.Exit().OOMKilled {
		t.Error("a kill by Stop was taken for an OOM kill")
	}

	quick := &process{h: startSleep(t)}
	report, err = quick.Stop(context.Background(), 0, 10*time.Second)
	if err != nil || report.Killed {
		t.Errorf("Stop of a process that exits on SIGTERM: %+v, %v; want not killed", report, err)
	}
}

func TestParseOOMKills(t *testing.T) {
	for _, tt := range []struct {
		in      string
		want    uint64
		wantErr bool
	}{
		{"low 0\nhigh 0\nmax 2\noom 1\noom_kill 1\noom_group_kill 0\n", 1, false},
		{"oom_kill 42", 42, false},
		{"low 0\n", 0, true},
		{"oom_kill x\n", 0, true},
	} {
		got, err := parseOOMKills([]byte(tt.in))
		if got != tt.want || (err != nil) != tt.wantErr {
			t.Errorf("parseOOMKills(%q) = %d, %v; want %d, error %v", tt.in, got, err, tt.want, tt.wantErr)
		}
	}
	if _, err := (CgroupOOM{Proc: t.TempDir()}).Cgroup(1); err == nil {
		t.Error("Cgroup of a process without /proc entry: no error")
	}
	dir := t.TempDir()
	if err := os.MkdirAll(filepath.Join(dir, "1"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "1", "cgroup"), []byte("0::/system.slice/pool-managerd.service\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if cg, err := (CgroupOOM{Proc: dir}).Cgroup(1); err != nil || cg != "/system.slice/pool-managerd.service" {
		t.Errorf("Cgroup = %q, %v", cg, err)
	}
}

// TestAdoptOfAStartedEngineKnowsHowItEnds: Adopt of an engine this driver
// started returns the started process, whose exit status this process, its
// parent, learns: a SIGKILL is seen as one. An engine the driver did not
// start (another daemon's) is adopted through /proc, and how it ends is
// unknown. Once the started engine has exited, Adopt finds it gone.
func TestAdoptOfAStartedEngineKnowsHowItEnds(t *testing.T) {
	ended := func(t *testing.T, p engine.Process) engine.ExitStatus {
		t.Helper()
		select {
		case <-p.Exited():
		case <-time.After(10 * time.Second):
			t.Fatal("the process did not exit")
		}
		return p.Exit()
	}
	// refOf is the engine's record: its command line is read once the
	// process has exec'd (it reads empty for a moment before).
	refOf := func(t *testing.T, h *supervisor.Handle) engine.Ref {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for {
			argv, err := proc.Cmdline(h.PID())
			if err != nil {
				t.Fatal(err)
			}
			if len(argv) > 0 && argv[len(argv)-1] == "60" {
				return engine.Ref{Pool: "a", PID: h.PID(), StartTicks: h.StartTicks(), Argv: argv}
			}
			if time.Now().After(deadline) {
				t.Fatalf("pid %d: command line %q, want sleep's", h.PID(), argv)
			}
			time.Sleep(time.Millisecond)
		}
	}
	for _, tt := range []struct {
		name    string
		started bool
		want    engine.ExitStatus
	}{
		{name: "started by this driver", started: true, want: engine.ExitStatus{Code: -1, Signal: "SIGKILL"}},
		{name: "started elsewhere", started: false, want: engine.ExitStatus{Code: -1}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			d := &Driver{OOM: &fakeOOM{}}
			started := &process{h: startSleep(t)}
			if tt.started {
				d.remember(started)
			}
			ref := refOf(t, started.h)
			p, err := d.Adopt(context.Background(), ref)
			if err != nil {
				t.Fatal(err)
			}
			if same := p == engine.Process(started); same != tt.started {
				t.Errorf("Adopt returned the started process: %v, want %v", same, tt.started)
			}
			if err := syscall.Kill(ref.PID, syscall.SIGKILL); err != nil {
				t.Fatal(err)
			}
			if got := ended(t, p); got != tt.want {
				t.Errorf("Exit() = %+v, want %+v", got, tt.want)
			}
			<-started.h.Done()
			if _, err := d.Adopt(context.Background(), ref); !errors.Is(err, engine.ErrGone) {
				t.Errorf("Adopt after the exit: %v, want ErrGone", err)
			}
		})
	}
}
