package fakeengine

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/poolmanagerd/pool-managerd/drivers/gpu/sim"
)

// Mode is the engine the stand-in plays.
type Mode string

// The engines the stand-in can play.
const (
	LlamaCpp Mode = "llamacpp"
	VLLM     Mode = "vllm"
	TGI      Mode = "tgi"
	SGLang   Mode = "sglang"
)

// modeFlag is the optional first argument that chooses the mode.
const modeFlag = "--fake-engine-as"

// workerFlag is the first argument of a vLLM worker or TGI shard process.
const workerFlag = "--fake-engine-worker"

// DetectMode says which engine to play and returns the engine's own
// arguments. In order: a first argument --fake-engine-as=MODE (or
// --fake-engine-as MODE), the variable FAKE_ENGINE_AS, the name the program
// was started under (vllm, text-generation-launcher, llama-server), then
// the command line: one that starts with serve is vLLM's, one with
// --model-id TGI's, one that starts with -m sglang.launch_server SGLang's
// (llama-server refuses all three); anything else is llama-server's.
func DetectMode(args []string, getenv func(string) string) (Mode, []string, error) {
	var rest []string
	if len(args) > 1 {
		rest = args[1:]
	}
	choice := strings.TrimSpace(getenv(EnvAs))
	source := EnvAs
	if len(rest) > 0 && (rest[0] == modeFlag || strings.HasPrefix(rest[0], modeFlag+"=")) {
		source = modeFlag
		if v, ok := strings.CutPrefix(rest[0], modeFlag+"="); ok {
			choice, rest = v, rest[1:]
		} else if len(rest) > 1 {
			choice, rest = rest[1], rest[2:]
		} else {
			return "", nil, fmt.Errorf("%s needs a value: llamacpp, vllm, tgi or sglang", modeFlag)
		}
	}
	if choice != "" {
		switch strings.ToLower(choice) {
		case "llamacpp", "llama.cpp", "llama-server", "llama":
			return LlamaCpp, rest, nil
		case "vllm":
			return VLLM, rest, nil
		case "tgi", "text-generation-launcher":
			return TGI, rest, nil
		case "sglang":
			return SGLang, rest, nil
		}
		return "", nil, fmt.Errorf("%s=%q: want llamacpp, vllm, tgi or sglang", source, choice)
	}
	if len(args) > 0 {
		switch filepath.Base(args[0]) {
		case "vllm":
			return VLLM, rest, nil
		case "text-generation-launcher":
			return TGI, rest, nil
		case "llama-server":
			return LlamaCpp, rest, nil
		}
	}
	// Under any other name (fake-engine), a command line llama-server would
	// refuse from its first word says which engine it is for: `serve MODEL`
	// is vLLM's, --model-id TGI's.
	if len(rest) > 0 && rest[0] == "serve" {
		return VLLM, rest, nil
	}
	if IsSGLang(rest) {
		return SGLang, rest, nil
	}
	for _, a := range rest {
		if a == "--model-id" || strings.HasPrefix(a, "--model-id=") {
			return TGI, rest, nil
		}
	}
	return LlamaCpp, rest, nil
}

// Main runs the stand-in engine with os.Args and the process environment and
// returns the exit status. Some faults end the process by a signal instead.
func Main(args []string) int {
	if len(args) > 1 && args[1] == workerFlag {
		return runWorker(args[2:])
	}
	mode, rest, err := DetectMode(args, os.Getenv)
	if err != nil {
		fmt.Fprintf(os.Stderr, "fake-engine: %v\n", err)
		return 2
	}
	faults, err := ParseFaults(os.Getenv)
	if err != nil {
		fmt.Fprintf(os.Stderr, "fake-engine: %v\n", err)
		return 1
	}
	p := &process{
		mode:   mode,
		faults: faults,
		stdout: &syncWriter{w: os.Stdout},
		stderr: &syncWriter{w: os.Stderr},
		pid:    os.Getpid(),
		simDir: os.Getenv(EnvSimDir),
		state:  newEngineState(faults),
	}
	// vLLM's EngineCore and workers survive a killed API server, holding the
	// GPUs; FAKE_ENGINE_ORPHAN_WORKERS=0 makes them follow it, =1 makes TGI's
	// shards and SGLang's schedulers outlive their main process too.
	p.orphans = faults.OrphanWorkers || (mode == VLLM && os.Getenv(EnvOrphanWorkers) != "0")
	if p.simDir != "" {
		// This engine claims what it loads itself: pool-managerd, on a node
		// that hosts real engines, attributes it nothing.
		if err := sim.Own(p.simDir, p.pid); err == nil {
			p.claimed = true
		}
	}
	switch mode {
	case VLLM:
		return p.runVLLM(rest)
	case TGI:
		return p.runTGI(rest)
	case SGLang:
		return p.runSGLang(rest)
	default:
		return p.runLlama(rest)
	}
}

// syncWriter writes whole lines from several goroutines.
type syncWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (s *syncWriter) Write(b []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.w.Write(b)
}

func (s *syncWriter) printf(format string, a ...any) {
	msg := fmt.Sprintf(format, a...)
	if !strings.HasSuffix(msg, "\n") {
		msg += "\n"
	}
	s.Write([]byte(msg))
}

// process is the running stand-in.
type process struct {
	mode   Mode
	faults Faults
	stdout *syncWriter
	stderr *syncWriter
	pid    int
	simDir string
	state  *engineState

	// orphans: the workers outlive this process when it is killed (vLLM's do).
	orphans bool

	claimMu sync.Mutex
	claimed bool
}

// gpus resolves CUDA_VISIBLE_DEVICES against the simulated node.
func (p *process) gpus(intsOnly bool) ([]GPU, error) {
	var node []sim.GPUSpec
	if p.simDir != "" {
		var err error
		node, err = sim.GPUs(p.simDir)
		if err != nil {
			return nil, fmt.Errorf("%s=%s: %w", EnvSimDir, p.simDir, err)
		}
	}
	cvd, set := os.LookupEnv("CUDA_VISIBLE_DEVICES")
	return VisibleGPUs(cvd, set, node, intsOnly)
}

// claim holds memory on the simulated node for this process.
func (p *process) claim(c map[int]uint64) error {
	if p.simDir == "" || len(c) == 0 {
		return nil
	}
	p.claimMu.Lock()
	defer p.claimMu.Unlock()
	if err := sim.Claim(p.simDir, p.pid, c); err != nil {
		return err
	}
	p.claimed = true
	return nil
}

// release gives back what claim held.
func (p *process) release() {
	p.claimMu.Lock()
	defer p.claimMu.Unlock()
	if p.claimed {
		sim.Release(p.simDir, p.pid)
		p.claimed = false
	}
}

// withOutside adds the memory FAKE_ENGINE_HOLD_OUTSIDE_MASK asks for.
func (p *process) withOutside(c map[int]uint64) map[int]uint64 {
	if p.simDir == "" || len(p.faults.HoldOutside) == 0 {
		return c
	}
	if c == nil {
		c = map[int]uint64{}
	}
	for _, i := range p.faults.HoldOutside {
		c[i] += p.faults.OutsideVRAM
	}
	return c
}

// engineState is what the HTTP side needs to know: loading or ready, and
// the health and slot faults, which count from Ready.
type engineState struct {
	faults  Faults
	readyAt atomic.Int64 // unix nanoseconds; 0 while loading
}

func newEngineState(f Faults) *engineState { return &engineState{faults: f} }

func (s *engineState) setReady(t time.Time) { s.readyAt.Store(t.UnixNano()) }

// ready reports whether the model is loaded, and since when.
func (s *engineState) ready() (time.Time, bool) {
	n := s.readyAt.Load()
	if n == 0 {
		return time.Time{}, false
	}
	return time.Unix(0, n), true
}

// healthy applies FAKE_ENGINE_UNHEALTHY_AFTER and FAKE_ENGINE_FLAP_HEALTH.
func (s *engineState) healthy(now time.Time) bool {
	at, ok := s.ready()
	if !ok {
		return false
	}
	since := now.Sub(at)
	if s.faults.UnhealthyAfter != Never && since >= s.faults.UnhealthyAfter {
		return false
	}
	if s.faults.FlapHealth > 0 {
		return (since/s.faults.FlapHealth)%2 == 0
	}
	return true
}

// faultBusy is how many slots FAKE_ENGINE_BUSY_SLOTS keeps busy now.
func (s *engineState) faultBusy(now time.Time) int {
	at, ok := s.ready()
	if !ok || s.faults.BusySlots == 0 {
		return 0
	}
	if s.faults.BusyFor != Forever && now.Sub(at) >= s.faults.BusyFor {
		return 0
	}
	return s.faults.BusySlots
}

// afterReady is what a mode does when the faults strike.
type afterReady struct {
	// shutdown runs on the first SIGTERM or SIGINT and returns the status.
	shutdown func() int
	// exit ends with a status (FAKE_ENGINE_EXIT_AFTER without a signal).
	exit func(code int) int
	// cudaError acts out FAKE_ENGINE_CUDA_ERROR_AFTER.
	cudaError func() int
	// died reports a worker that exited; onDied returns the status.
	died   <-chan shardExit
	onDied func(shardExit) int
}

// firstToStrike reports whether this engine acts out its after-Ready exit
// and CUDA error: always without FAKE_ENGINE_FAULT_ONCE, else only when it is
// the first to create that file.
func (p *process) firstToStrike() bool {
	if p.faults.FaultOnce == "" {
		return true
	}
	f, err := os.OpenFile(p.faults.FaultOnce, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		if !errors.Is(err, fs.ErrExist) {
			fmt.Fprintf(os.Stderr, "fake-engine: %s: %v; acting out the faults\n", EnvFaultOnce, err)
			return true
		}
		return false
	}
	fmt.Fprintf(f, "%d\n", os.Getpid())
	_ = f.Close()
	return true
}

// runReady waits for a signal or a fault once the engine is Ready.
func (p *process) runReady(sigs chan os.Signal, h afterReady) int {
	exitAfter, cudaErrorAfter := p.faults.ExitAfter, p.faults.CUDAErrorAfter
	if !p.firstToStrike() {
		exitAfter, cudaErrorAfter = Never, Never
	}
	exitC := after(exitAfter)
	cudaC := after(cudaErrorAfter)
	for {
		select {
		case s := <-sigs:
			if s == syscall.SIGTERM && p.faults.IgnoreSIGTERM {
				p.logIgnored()
				continue
			}
			go p.secondSignal(sigs)
			return h.shutdown()
		case <-exitC:
			if p.faults.ExitSignal != 0 {
				dieBySignal(p.faults.ExitSignal)
			}
			return h.exit(p.faults.ExitCode)
		case <-cudaC:
			return h.cudaError()
		case e := <-h.died:
			return h.onDied(e)
		}
	}
}

// secondSignal exits 1 at once on a signal that comes during shutdown.
func (p *process) secondSignal(sigs chan os.Signal) {
	for s := range sigs {
		if s == syscall.SIGTERM && p.faults.IgnoreSIGTERM {
			p.logIgnored()
			continue
		}
		switch p.mode {
		case LlamaCpp:
			p.stderr.printf("Received second interrupt, terminating immediately.")
		case VLLM, SGLang:
			p.stdout.printf("INFO:     Received second signal, forcing exit")
		default:
			p.stdout.printf("%s  WARN text_generation_launcher: Received second signal, exiting now", tgiTime())
		}
		os.Exit(1)
	}
}

func (p *process) logIgnored() {
	w := p.stderr
	if p.mode != LlamaCpp {
		w = p.stdout
	}
	w.printf("fake-engine: SIGTERM ignored (%s=1)", EnvIgnoreSIGTERM)
}

// notify starts receiving SIGTERM and SIGINT.
func notify() chan os.Signal {
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT)
	return sigs
}

// after is a timer channel, or nil (never) for Never.
func after(d time.Duration) <-chan time.Time {
	if d == Never {
		return nil
	}
	return time.After(d)
}

// modelExists reports whether the model path can be loaded.
func (p *process) modelExists(path string) bool {
	if p.faults.SkipModelCheck {
		return true
	}
	if path == "" {
		return false
	}
	_, err := os.Stat(path)
	return err == nil
}
