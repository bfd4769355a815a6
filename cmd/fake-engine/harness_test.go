package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/poolmanagerd/pool-managerd/drivers/engine/proc"
	"github.com/poolmanagerd/pool-managerd/drivers/gpu/sim"
	"github.com/poolmanagerd/pool-managerd/testkit/testenv"
)

// binDir holds the fake-engine binary the tests run (built by testenv,
// once per go test run), and links to it named vllm,
// text-generation-launcher and llama-server.
var binDir string

func TestMain(m *testing.M) { os.Exit(testMain(m)) }

func testMain(m *testing.M) int {
	bin, err := testenv.Binaries(context.Background())
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	// Workers whose main process died are re-parented to this process (not
	// to init), so that the tests reap them and leave no zombie behind.
	const prSetChildSubreaper = 36
	syscall.RawSyscall(syscall.SYS_PRCTL, prSetChildSubreaper, 1, 0)
	binDir = bin.Dir
	return m.Run()
}

// engine is a fake-engine process started in its own session, as the
// supervisor starts engines; its stdout and stderr go to one log file.
type engine struct {
	t       *testing.T
	cmd     *exec.Cmd
	pid     int
	port    int
	logPath string
	done    chan struct{}
	started time.Time
}

// baseEnv is the environment every engine starts with: nothing of the
// test's own (no CUDA_VISIBLE_DEVICES, PORT, HOSTNAME...).
func baseEnv(extra ...string) []string {
	return append([]string{"PATH=" + os.Getenv("PATH")}, extra...)
}

// start runs bin (a name in binDir) with args and env.
func start(t *testing.T, bin string, port int, args []string, env ...string) *engine {
	t.Helper()
	logPath := filepath.Join(t.TempDir(), "engine.log")
	logf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close()
	cmd := exec.Command(filepath.Join(binDir, bin), args...)
	cmd.Env = baseEnv(env...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	e := &engine{t: t, cmd: cmd, pid: cmd.Process.Pid, port: port, logPath: logPath, done: make(chan struct{}), started: time.Now()}
	go func() {
		cmd.Wait()
		close(e.done)
	}()
	t.Cleanup(e.cleanup)
	return e
}

// cleanup kills the engine's whole session and reaps it: no process is left.
func (e *engine) cleanup() {
	members, _ := proc.Session(e.pid)
	syscall.Kill(-e.pid, syscall.SIGKILL)
	for _, pid := range members {
		syscall.Kill(pid, syscall.SIGKILL) // a worker that left the process group
	}
	select {
	case <-e.done:
	case <-time.After(10 * time.Second):
		e.t.Errorf("engine %d still runs 10s after SIGKILL", e.pid)
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		left, _ := proc.Session(e.pid)
		if len(left) == 0 {
			return
		}
		if time.Now().After(deadline) {
			e.t.Errorf("processes of engine %d's session left behind: %v", e.pid, left)
			return
		}
		for _, pid := range left {
			var ws syscall.WaitStatus
			syscall.Wait4(pid, &ws, syscall.WNOHANG, nil) // orphans are our children
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// wait waits for the engine to exit.
func (e *engine) wait(timeout time.Duration) *os.ProcessState {
	e.t.Helper()
	select {
	case <-e.done:
		return e.cmd.ProcessState
	case <-time.After(timeout):
		e.t.Fatalf("engine still running after %v; log:\n%s", timeout, e.log())
		return nil
	}
}

// exited reports whether the engine has exited.
func (e *engine) exited() bool {
	select {
	case <-e.done:
		return true
	default:
		return false
	}
}

func (e *engine) signal(s syscall.Signal) {
	e.t.Helper()
	if err := syscall.Kill(e.pid, s); err != nil {
		e.t.Fatal(err)
	}
}

func (e *engine) log() string {
	data, _ := os.ReadFile(e.logPath)
	return string(data)
}

// wantLog fails unless the log has every line fragment.
func (e *engine) wantLog(fragments ...string) {
	e.t.Helper()
	log := e.log()
	for _, f := range fragments {
		if !strings.Contains(log, f) {
			e.t.Errorf("log lacks %q:\n%s", f, log)
		}
	}
}

func (e *engine) url(path string) string { return fmt.Sprintf("http://127.0.0.1:%d%s", e.port, path) }

// response is one HTTP answer.
type response struct {
	code   int
	body   string
	header http.Header
}

var client = &http.Client{Timeout: 3 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}

func get(url string) (response, error) {
	resp, err := client.Get(url)
	if err != nil {
		return response{}, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	return response{code: resp.StatusCode, body: string(body), header: resp.Header}, err
}

// mustGet fails the test unless the request gets an answer.
func (e *engine) mustGet(path string) response {
	e.t.Helper()
	r, err := get(e.url(path))
	if err != nil {
		e.t.Fatalf("GET %s: %v; log:\n%s", path, err, e.log())
	}
	return r
}

// firstAnswer polls path until the engine answers; refused counts the
// connections refused before. It fails when the engine exits first.
func (e *engine) firstAnswer(path string, timeout time.Duration) (r response, refused int) {
	e.t.Helper()
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		r, err := get(e.url(path))
		if err == nil {
			return r, refused
		}
		if !errors.Is(err, syscall.ECONNREFUSED) {
			e.t.Fatalf("GET %s: %v, want an answer or connection refused", path, err)
		}
		refused++
		if e.exited() {
			e.t.Fatalf("engine exited before answering; log:\n%s", e.log())
		}
		time.Sleep(5 * time.Millisecond)
	}
	e.t.Fatalf("no answer on %s within %v; log:\n%s", path, timeout, e.log())
	return response{}, refused
}

// waitStatus polls path until it answers code.
func (e *engine) waitStatus(path string, code int, timeout time.Duration) response {
	e.t.Helper()
	var last response
	var lastErr error
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		last, lastErr = get(e.url(path))
		if lastErr == nil && last.code == code {
			return last
		}
		if e.exited() {
			e.t.Fatalf("engine exited while waiting for %d on %s; log:\n%s", code, path, e.log())
		}
		time.Sleep(10 * time.Millisecond)
	}
	e.t.Fatalf("%s: no %d within %v (last %d %q, %v); log:\n%s", path, code, timeout, last.code, last.body, lastErr, e.log())
	return last
}

// waitReady waits for a llama-server to answer /health with 200.
func (e *engine) waitReady() { e.t.Helper(); e.waitStatus("/health", 200, 10*time.Second) }

// freePort is a port nothing listens on now.
func freePort(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// newSim makes a simulated node: GPU 0 an RTX 3090 (24 GiB), GPU 1 an RTX
// 3060 (12 GiB), or the GPUs given.
func newSim(t *testing.T, gpus ...sim.GPUSpec) string {
	t.Helper()
	if len(gpus) == 0 {
		gpus = sim.DefaultGPUs()
	}
	dir := t.TempDir()
	if err := sim.Init(dir, gpus); err != nil {
		t.Fatal(err)
	}
	return dir
}

// held is the memory held on each simulated GPU, by index and pid.
func held(t *testing.T, dir string) map[int]map[int]uint64 {
	t.Helper()
	node, err := sim.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer node.Close()
	devs, err := node.Devices(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	out := map[int]map[int]uint64{}
	for _, d := range devs {
		for _, p := range d.Processes {
			if out[d.Index] == nil {
				out[d.Index] = map[int]uint64{}
			}
			out[d.Index][p.PID] = p.UsedBytes
		}
	}
	return out
}

// waitHeld polls the simulated node until it shows want.
func waitHeld(t *testing.T, dir string, want map[int]map[int]uint64, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		got := held(t, dir)
		if fmt.Sprint(got) == fmt.Sprint(want) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("simulated GPUs hold %v, want %v", got, want)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// model makes a model file.
func model(t *testing.T) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "model.gguf")
	if err := os.WriteFile(path, []byte("GGUF"), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

// runShort runs a command that exits by itself and returns its output.
func runShort(t *testing.T, bin string, args []string, env ...string) (stdout, stderr string, state *os.ProcessState) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, filepath.Join(binDir, bin), args...)
	cmd.Env = baseEnv(env...)
	var out, errOut strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &errOut
	cmd.WaitDelay = time.Second
	err := cmd.Run()
	var ee *exec.ExitError
	if err != nil && !errors.As(err, &ee) {
		t.Fatalf("%s %q: %v", bin, args, err)
	}
	return out.String(), errOut.String(), cmd.ProcessState
}

// wantExit fails unless the process exited with code.
func wantExit(t *testing.T, st *os.ProcessState, code int, log string) {
	t.Helper()
	if ws := st.Sys().(syscall.WaitStatus); ws.Signaled() || ws.ExitStatus() != code {
		t.Errorf("engine ended %v, want exit status %d; log:\n%s", st, code, log)
	}
}

// wantSignal fails unless the process was killed by sig.
func wantSignal(t *testing.T, st *os.ProcessState, sig syscall.Signal, log string) {
	t.Helper()
	if ws := st.Sys().(syscall.WaitStatus); !ws.Signaled() || ws.Signal() != sig {
		t.Errorf("engine ended %v, want killed by %v; log:\n%s", st, sig, log)
	}
}

// sessionChildren are the other processes of the engine's session, and
// whether each is the engine's child.
func (e *engine) sessionChildren() map[int]bool {
	e.t.Helper()
	members, err := proc.Session(e.pid)
	if err != nil {
		e.t.Fatal(err)
	}
	out := map[int]bool{}
	for pid, ppid := range parentsOf(members, e.pid) {
		out[pid] = ppid == e.pid
	}
	return out
}

// parentsOf maps each of members but main to its parent's pid; a process
// that is gone by the time it is read is left out.
func parentsOf(members []int, main int) map[int]int {
	parents := map[int]int{}
	for _, pid := range members {
		if pid == main {
			continue
		}
		if info, err := proc.Stat(pid); err == nil {
			parents[pid] = info.PPID
		}
	}
	return parents
}

func keys(m map[int]bool) []int {
	var out []int
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}

// readState is the state letter of process pid.
func readState(pid int) (byte, error) {
	info, err := proc.Stat(pid)
	return info.State, err
}

// sessionOf lists the live processes of session sid.
func sessionOf(sid int) ([]int, error) {
	members, err := proc.Session(sid)
	var out []int
	for _, pid := range members {
		if st, err := readState(pid); err == nil && st != 'Z' {
			out = append(out, pid)
		}
	}
	return out, err
}
