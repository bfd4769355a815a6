//go:build linux

package proc

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"
)

const markerKey = "POOL_MANAGERD_PROC_TEST"

// start starts name args in its own session with a unique marker in its
// environment. The whole session's process group is killed and the child
// waited for when the test ends.
func start(t *testing.T, name string, args ...string) (*exec.Cmd, string) {
	t.Helper()
	marker := fmt.Sprintf("%s/%d/%d", t.Name(), os.Getpid(), time.Now().UnixNano())
	cmd := exec.Command(name, args...)
	cmd.Env = append(os.Environ(), markerKey+"="+marker)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	})
	// Start returns once exec has closed the close-on-exec fds, which is
	// before the kernel has set up the new image's argument and environment
	// area: for a moment, cmdline and environ read empty.
	waitFor(t, "exec to finish", func() bool {
		args, _ := Cmdline(cmd.Process.Pid)
		info, _ := Stat(cmd.Process.Pid)
		return len(args) > 0 || info.State == 'Z'
	})
	return cmd, marker
}

// waitFor polls cond for up to 10 seconds.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestStat(t *testing.T) {
	cmd, _ := start(t, "sleep", "30")
	pid := cmd.Process.Pid
	info, err := Stat(pid)
	if err != nil {
		t.Fatal(err)
	}
	self, err := Stat(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	if info.PID != pid || info.PPID != os.Getpid() || info.PGID != pid || info.Session != pid {
		t.Errorf("Stat(%d) = %+v, want pid, pgid and session %d, ppid %d", pid, info, pid, os.Getpid())
	}
	if info.Comm != "sleep" {
		t.Errorf("Comm = %q, want sleep", info.Comm)
	}
	if info.State != 'S' && info.State != 'R' {
		t.Errorf("State = %q, want S or R", info.State)
	}
	if info.StartTicks == 0 || info.StartTicks < self.StartTicks {
		t.Errorf("StartTicks = %d, want > 0 and >= ours (%d)", info.StartTicks, self.StartTicks)
	}
	if self.Session == pid {
		t.Errorf("the child should have its own session")
	}
}

func TestStatCommWithSpacesAndParens(t *testing.T) {
	sleep, err := exec.LookPath("sleep")
	if err != nil {
		t.Skip(err)
	}
	// comm is the basename of the path given to exec (at most 15 bytes).
	link := filepath.Join(t.TempDir(), "x) (y z")
	if err := os.Symlink(sleep, link); err != nil {
		t.Fatal(err)
	}
	cmd, _ := start(t, link, "30")
	info, err := Stat(cmd.Process.Pid)
	if err != nil {
		t.Fatal(err)
	}
	if info.Comm != "x) (y z" || info.PPID != os.Getpid() || info.Session != cmd.Process.Pid {
		t.Errorf("Stat = %+v, want comm %q, ppid %d", info, "x) (y z", os.Getpid())
	}
}

func TestAlive(t *testing.T) {
	cmd, _ := start(t, "sleep", "30")
	pid := cmd.Process.Pid
	info, err := Stat(pid)
	if err != nil {
		t.Fatal(err)
	}
	if !Alive(pid, info.StartTicks) {
		t.Fatalf("Alive(%d, %d) = false for a running child", pid, info.StartTicks)
	}
	if Alive(pid, info.StartTicks+1) || Alive(pid, info.StartTicks-1) {
		t.Errorf("Alive is true with the wrong start time")
	}
	if err := cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	_ = cmd.Wait()
	if Alive(pid, info.StartTicks) {
		t.Errorf("Alive(%d, %d) = true after kill and wait", pid, info.StartTicks)
	}
	if again, err := Stat(pid); err == nil {
		// The pid was reused already: very unlikely, but not a failure.
		if again.StartTicks == info.StartTicks {
			t.Errorf("Stat(%d) after wait = %+v, the same process", pid, again)
		}
	} else if !errors.Is(err, ErrNotFound) {
		t.Errorf("Stat(%d) after wait: %v, want ErrNotFound", pid, err)
	}
}

func TestAliveZombie(t *testing.T) {
	cmd, _ := start(t, "true")
	pid := cmd.Process.Pid
	var info Info
	waitFor(t, "the child to become a zombie", func() bool {
		var err error
		info, err = Stat(pid)
		if err != nil {
			t.Fatal(err) // not waited for, so it cannot be gone
		}
		return info.State == 'Z'
	})
	if Alive(pid, info.StartTicks) {
		t.Errorf("Alive(%d, %d) = true for a zombie", pid, info.StartTicks)
	}
	args, err := Cmdline(pid)
	if err != nil || len(args) != 0 {
		t.Errorf("Cmdline of a zombie = %q, %v; want empty", args, err)
	}
}

func TestCmdline(t *testing.T) {
	// "; :" keeps the shell from exec'ing sleep in its place.
	cmd, _ := start(t, "sh", "-c", "sleep 30; :", "arg with spaces", "")
	got, err := Cmdline(cmd.Process.Pid)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"sh", "-c", "sleep 30; :", "arg with spaces", ""}
	if !slices.Equal(got, want) {
		t.Errorf("Cmdline = %q, want %q", got, want)
	}
}

func TestEnvironAndFindByEnv(t *testing.T) {
	cmd, marker := start(t, "sleep", "30")
	pid := cmd.Process.Pid
	env, err := Environ(pid)
	if err != nil {
		t.Fatal(err)
	}
	if env[markerKey] != marker {
		t.Errorf("Environ[%s] = %q, want %q", markerKey, env[markerKey], marker)
	}
	if env["PATH"] != os.Getenv("PATH") {
		t.Errorf("Environ[PATH] = %q, want %q", env["PATH"], os.Getenv("PATH"))
	}
	found, err := FindByEnv(markerKey)
	if err != nil {
		t.Fatal(err)
	}
	if found[pid] != marker {
		t.Errorf("FindByEnv(%s) = %v, want %d: %q", markerKey, found, pid, marker)
	}
	if _, ok := found[os.Getpid()]; ok && os.Getenv(markerKey) == "" {
		t.Errorf("FindByEnv found the test process, which has no marker")
	}
	found, err = FindByEnv(markerKey + "_NOT_SET_ANYWHERE")
	if err != nil || len(found) != 0 {
		t.Errorf("FindByEnv(unset key) = %v, %v; want nothing", found, err)
	}
	// A key that is a prefix of the marker's key is a different variable.
	found, err = FindByEnv(markerKey[:len(markerKey)-1])
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := found[pid]; ok {
		t.Errorf("FindByEnv matched a prefix of the key")
	}
}

func TestSession(t *testing.T) {
	cmd, _ := start(t, "sh", "-c", "sleep 30 & wait")
	pid := cmd.Process.Pid
	var pids []int
	waitFor(t, "the shell to start sleep", func() bool {
		var err error
		pids, err = Session(pid)
		if err != nil {
			t.Fatal(err)
		}
		return len(pids) == 2
	})
	if !slices.IsSorted(pids) || !slices.Contains(pids, pid) {
		t.Fatalf("Session(%d) = %v, want sorted, with the leader", pid, pids)
	}
	other := pids[0]
	if other == pid {
		other = pids[1]
	}
	// Kill sleep first so that the shell reaps it: killed with the shell,
	// it would be left to an init that may not reap zombies.
	t.Cleanup(func() {
		_ = syscall.Kill(other, syscall.SIGKILL)
		done := make(chan struct{})
		go func() { _ = cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			_ = cmd.Process.Kill()
			<-done
		}
	})
	// The shell may not have exec'd sleep yet: wait for the comm.
	waitFor(t, "the shell's child to become sleep", func() bool {
		info, err := Stat(other)
		if err != nil {
			t.Fatal(err)
		}
		if info.PPID != pid || info.Session != pid {
			t.Fatalf("Stat(%d) = %+v, want a child of %d in its session", other, info, pid)
		}
		return info.Comm == "sleep"
	})
	self, err := Session(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	if slices.Contains(self, pid) {
		t.Errorf("the child is listed in our session")
	}
}

func TestNotFound(t *testing.T) {
	const pid = 1<<31 - 1 // above any pid_max
	if _, err := Stat(pid); !errors.Is(err, ErrNotFound) {
		t.Errorf("Stat: %v, want ErrNotFound", err)
	}
	if _, err := Cmdline(pid); !errors.Is(err, ErrNotFound) {
		t.Errorf("Cmdline: %v, want ErrNotFound", err)
	}
	if _, err := Environ(pid); !errors.Is(err, ErrNotFound) {
		t.Errorf("Environ: %v, want ErrNotFound", err)
	}
	if _, err := Stat(0); !errors.Is(err, ErrNotFound) {
		t.Errorf("Stat(0): %v, want ErrNotFound", err)
	}
	if _, err := Stat(-1); !errors.Is(err, ErrNotFound) {
		t.Errorf("Stat(-1): %v, want ErrNotFound", err)
	}
	if Alive(pid, 1) {
		t.Errorf("Alive of a missing pid")
	}
	pids, err := Session(pid)
	if err != nil || len(pids) != 0 {
		t.Errorf("Session(missing) = %v, %v", pids, err)
	}
}

// tail is the part of a real stat line after comm, from state to the end;
// starttime (field 22) is 777.
const tail = " S 10 20 30 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 777 8192 100 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 3 0 0 0 0 0\n"

func TestParseStat(t *testing.T) {
	for _, tc := range []struct {
		name string
		in   string
		want Info
		err  string
	}{
		{name: "plain", in: "42 (sleep)" + tail,
			want: Info{PID: 42, PPID: 10, PGID: 20, Session: 30, State: 'S', StartTicks: 777, Comm: "sleep"}},
		{name: "spaces", in: "42 (llama server 1)" + tail,
			want: Info{PID: 42, PPID: 10, PGID: 20, Session: 30, State: 'S', StartTicks: 777, Comm: "llama server 1"}},
		{name: "parens", in: "42 (a) (b))" + tail,
			want: Info{PID: 42, PPID: 10, PGID: 20, Session: 30, State: 'S', StartTicks: 777, Comm: "a) (b)"}},
		{name: "fake fields in comm", in: "42 () Z 1 2 3 4 5)" + tail,
			want: Info{PID: 42, PPID: 10, PGID: 20, Session: 30, State: 'S', StartTicks: 777, Comm: ") Z 1 2 3 4 5"}},
		{name: "empty comm", in: "42 ()" + tail,
			want: Info{PID: 42, PPID: 10, PGID: 20, Session: 30, State: 'S', StartTicks: 777}},
		{name: "zombie", in: "7 (x) Z 1 7 7 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 123456789012 0 0",
			want: Info{PID: 7, PPID: 1, PGID: 7, Session: 7, State: 'Z', StartTicks: 123456789012, Comm: "x"}},
		{name: "no close paren", in: "42 (sleep S 1 2 3", err: "malformed"},
		{name: "no open paren", in: "42 sleep) S 1 2 3", err: "malformed"},
		{name: "empty", in: "", err: "malformed"},
		{name: "too few fields", in: "42 (sleep) S 1 2 3 0 -1", err: "fields after comm"},
		{name: "bad pid", in: "x (sleep)" + tail, err: "pid"},
		{name: "bad state", in: "42 (sleep) SS 1 2 3 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 777", err: "state"},
		{name: "bad ppid", in: "42 (sleep) S x 2 3 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 777", err: "field 4"},
		{name: "bad starttime", in: "42 (sleep) S 1 2 3 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 -5", err: "starttime"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := parseStat([]byte(tc.in))
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("parseStat(%q) = %+v, %v; want an error containing %q", tc.in, got, err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got != tc.want {
				t.Errorf("parseStat(%q) = %+v, want %+v", tc.in, got, tc.want)
			}
		})
	}
}

func TestPids(t *testing.T) {
	pids, err := Pids()
	if err != nil {
		t.Fatal(err)
	}
	if !slices.IsSorted(pids) || !slices.Contains(pids, os.Getpid()) {
		t.Errorf("Pids() = %d pids, sorted %v, want ours (%d) among them", len(pids), slices.IsSorted(pids), os.Getpid())
	}
}
