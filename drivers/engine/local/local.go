// Package local runs engines as processes on this machine: it turns a pool
// into a command (package preset), starts, adopts and stops it (package
// supervisor), and asks its health endpoint. It is the engine driver that
// the executor (package internal/executor) uses.
package local

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/poolmanagerd/pool-managerd/drivers/engine"
	"github.com/poolmanagerd/pool-managerd/drivers/engine/caps"
	"github.com/poolmanagerd/pool-managerd/drivers/engine/preset"
	"github.com/poolmanagerd/pool-managerd/drivers/engine/proc"
	"github.com/poolmanagerd/pool-managerd/drivers/engine/supervisor"
	"github.com/poolmanagerd/pool-managerd/drivers/gpu/sim"
	"github.com/poolmanagerd/pool-managerd/schema"
)

// Warner takes a warning with key-value pairs (a *slog.Logger, an hclog.Logger).
type Warner interface {
	Warn(msg string, args ...any)
}

// Driver starts and adopts engine processes.
type Driver struct {
	Binaries preset.Binaries
	// LogDir holds one log file per pool (POOL.log, rotated by size).
	LogDir      string
	LogMaxBytes int64
	LogKeep     int
	// SimDir is the simulated node the engines run on, when there is one.
	SimDir string
	// SimHostEngines (with SimDir): attribute to each engine started the
	// pool's VRAM need on its GPUs while it lives (sim.Attribute), so that
	// a real engine without GPUs reaches Ready on the simulated node. A
	// stand-in engine keeps its own claims. The simulated node's option
	// HostRealEngines turns it on.
	SimHostEngines bool
	// StateDir is the state directory the engines belong to (absolute).
	StateDir string
	// OOM counts the kernel's OOM kills in an engine's cgroup, so that an
	// engine the OOM killer ended is told apart from one killed by hand;
	// nil reads cgroup v2's memory.events (CgroupOOM).
	OOM OOMSource
	// Caps, when set, learns once per engine binary (path, mtime, size)
	// what it supports, from its --help, in Start: a preset flag the build
	// lacks is left out (llama-server's --fit), and an optional one is passed
	// only when the help names it (vLLM's --shutdown-timeout). nil: no probe,
	// every preset flag is passed and no optional one.
	Caps *caps.Cache
	// Log gets the warnings of a start (a flag left out); nil: none.
	Log Warner

	mu sync.Mutex
	// given are the ports handed to engines by this driver: parallel starts
	// must not get the same free port between its probe and the engine's bind.
	given map[int]bool
	// started are the engines this driver started that still run, by pid.
	// Adopt hands out the started process itself: this process is their
	// parent, so it learns how each ends (the signal, the exit code), which
	// a watch on an adopted process cannot.
	started map[int]*process
}

var _ engine.Driver = (*Driver)(nil)

// DefaultLogMaxBytes is the size at which an engine's log is rotated at its next start.
const DefaultLogMaxBytes = 64 << 20

func (d *Driver) logPath(pool string) string { return filepath.Join(d.LogDir, pool+".log") }

// Start builds the pool's command and starts it.
func (d *Driver) Start(ctx context.Context, req engine.StartRequest) (engine.Process, error) {
	port := req.Pool.Port
	if port == 0 {
		p, err := d.pickPort()
		if err != nil {
			return nil, fmt.Errorf("pick a port for pool %s: %w", req.Pool.ID, err)
		}
		port = p
	}
	gpus := make([]preset.GPU, len(req.GPUs))
	for i, g := range req.GPUs {
		gpus[i] = preset.GPU{Index: g.Index, UUID: g.UUID, Total: g.MemoryTotal}
	}
	opts := preset.Options{SimDir: d.SimDir, StateDir: d.StateDir, SimVRAM: req.Need}
	if d.Caps != nil {
		if path, err := d.Binaries.Path(req.Pool.Engine); err == nil {
			c, err := d.Caps.Get(ctx, path, preset.Probe(req.Pool.Engine, nil))
			if err != nil {
				return nil, fmt.Errorf("pool %s: %w", req.Pool.ID, err)
			}
			if !c.Known && d.Log != nil {
				d.Log.Warn("engine capabilities unknown: every preset flag is passed", "pool", req.Pool.ID, "binary", path, "reason", c.Err)
			}
			opts.Caps = &c
		}
	}
	cmd, err := preset.Build(req.Pool, gpus, port, d.Binaries, req.Marker, opts)
	if err != nil {
		return nil, err
	}
	for _, w := range cmd.Warnings {
		if d.Log != nil {
			d.Log.Warn(w, "pool", req.Pool.ID)
		}
	}
	if err := os.MkdirAll(d.LogDir, 0o755); err != nil {
		return nil, fmt.Errorf("log directory: %w", err)
	}
	maxBytes, keep := d.LogMaxBytes, d.LogKeep
	if maxBytes <= 0 {
		maxBytes = DefaultLogMaxBytes
	}
	if keep <= 0 {
		keep = 3
	}
	h, err := supervisor.Start(ctx, supervisor.Spec{Path: cmd.Path, Args: cmd.Args, Env: cmd.Env,
		LogPath: d.logPath(req.Pool.ID), LogMaxBytes: maxBytes, LogKeep: keep})
	if err != nil {
		return nil, err
	}
	if d.SimDir != "" && req.RAM > 0 {
		if err := sim.HoldRAM(d.SimDir, h.PID(), req.RAM); err != nil && d.Log != nil {
			d.Log.Warn("simulated node: cannot hold host RAM for the engine", "pool", req.Pool.ID, "pid", h.PID(), "error", err)
		}
	}
	if d.SimDir != "" && d.SimHostEngines {
		if _, err := sim.Attribute(d.SimDir, h.PID(), Attribution(req)); err != nil && d.Log != nil {
			d.Log.Warn("simulated node: cannot attribute GPU memory to the engine", "pool", req.Pool.ID, "pid", h.PID(), "error", err)
		}
	}
	p := &process{h: h, port: port, logPath: d.logPath(req.Pool.ID), argv: cmd.Argv(), llama: cmd.Health == preset.LlamaServer}
	p.watchOOM(d.oomSource())
	d.remember(p)
	return p, nil
}

// remember keeps a started engine for Adopt until it exits.
func (d *Driver) remember(p *process) {
	d.mu.Lock()
	if d.started == nil {
		d.started = map[int]*process{}
	}
	d.started[p.PID()] = p
	d.mu.Unlock()
	go func() {
		<-p.h.Done()
		d.mu.Lock()
		defer d.mu.Unlock()
		if d.started[p.PID()] == p {
			delete(d.started, p.PID())
		}
	}()
}

// startedEngine returns the engine that this driver started, still
// running, that ref names (its pid, and its start time when recorded).
func (d *Driver) startedEngine(ref engine.Ref) *process {
	d.mu.Lock()
	defer d.mu.Unlock()
	p := d.started[ref.PID]
	if p == nil || (ref.StartTicks != 0 && ref.StartTicks != p.StartTicks()) {
		return nil
	}
	select {
	case <-p.h.Done():
		return nil // exited: not running, as Adopt then finds
	default:
		return p
	}
}

// Adopt takes over a running engine: by its recorded pid, start time and
// command line, or — for an engine found by its marker, not yet recorded —
// by its pid and what /proc says of it. An engine this driver started and
// that still runs is the started process itself, whose exit status is known.
func (d *Driver) Adopt(_ context.Context, ref engine.Ref) (engine.Process, error) {
	if p := d.startedEngine(ref); p != nil {
		return p, nil
	}
	gone := func(err error) error { return fmt.Errorf("%w: pid %d: %w", engine.ErrGone, ref.PID, err) }
	ticks, argv := ref.StartTicks, ref.Argv
	if ticks == 0 || len(argv) == 0 {
		// Known by pid alone (found by its marker): it must still carry this
		// pool's marker, or the pid now belongs to some other process.
		env, err := proc.Environ(ref.PID)
		if err != nil {
			return nil, gone(err)
		}
		m, err := engine.ParseMarker(env[engine.MarkerEnv])
		if err != nil || m.Pool != ref.Pool || (d.StateDir != "" && env[engine.StateDirEnv] != "" && env[engine.StateDirEnv] != d.StateDir) {
			return nil, gone(fmt.Errorf("the process does not carry pool %s's engine marker", ref.Pool))
		}
	}
	if ticks == 0 {
		info, err := proc.Stat(ref.PID)
		if err != nil {
			return nil, gone(err)
		}
		ticks = info.StartTicks
	}
	if len(argv) == 0 {
		a, err := proc.Cmdline(ref.PID)
		if err != nil {
			return nil, gone(err)
		}
		argv = a
	}
	h, err := supervisor.Adopt(ref.PID, ticks, argv)
	if errors.Is(err, supervisor.ErrNotRunning) || errors.Is(err, supervisor.ErrMismatch) {
		// Not running, or the pid now belongs to another process: our engine is gone.
		return nil, gone(err)
	}
	if err != nil {
		return nil, err
	}
	port := ref.Port
	if port == 0 {
		port = engine.PortOf(argv)
	}
	logPath := ref.LogPath
	if logPath == "" {
		logPath = d.logPath(ref.Pool)
	}
	llama := ref.Engine == "" || ref.Engine == schema.EngineLlamaCpp
	p := &process{h: h, port: port, logPath: logPath, argv: argv, llama: llama}
	p.watchOOM(d.oomSource())
	return p, nil
}

// Cleanup kills what is left of a dead engine's session: processes of the
// session it led that still carry its pool's marker (vLLM workers and TGI
// shards that outlived it, holding GPU memory).
func (d *Driver) Cleanup(_ context.Context, ref engine.Ref) error {
	if ref.PID == 0 {
		return nil
	}
	pids, err := proc.Session(ref.PID)
	if err != nil {
		return nil
	}
	var killed []int
	for _, pid := range pids {
		env, err := proc.Environ(pid)
		if err != nil {
			continue
		}
		m, err := engine.ParseMarker(env[engine.MarkerEnv])
		if err != nil || m.Pool != ref.Pool {
			continue
		}
		if err := unix.Kill(pid, unix.SIGKILL); err != nil && !errors.Is(err, unix.ESRCH) {
			return fmt.Errorf("kill pid %d left from pool %s's engine: %w", pid, ref.Pool, err)
		}
		killed = append(killed, pid)
	}
	// Wait until they are gone (a zombie counts as gone): their GPU memory
	// is freed only then, and the pool's next start counts on it.
	deadline := time.Now().Add(10 * time.Second)
	for _, pid := range killed {
		for {
			info, err := proc.Stat(pid)
			if err != nil || info.State == 'Z' || info.State == 'X' {
				break
			}
			if time.Now().After(deadline) {
				return fmt.Errorf("pid %d left from pool %s's engine did not die within 10 s of SIGKILL", pid, ref.Pool)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	return nil
}

// pickPort picks a free port, outside the kernel's ephemeral range where it
// can (see portPicker), that this driver has not given to another engine
// already.
func (d *Driver) pickPort() (int, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.given == nil {
		d.given = map[int]bool{}
	}
	p, err := hostPortPicker().pick(func(p int) bool { return d.given[p] })
	if err != nil {
		return 0, err
	}
	d.given[p] = true
	return p, nil
}

// freePort asks the kernel for a free port on 127.0.0.1.
func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

type process struct {
	h *supervisor.Handle
	// oom, cgroup and oomKills: the engine's cgroup and its OOM kill count
	// when it was started or adopted; oom is nil when they are unknown.
	oom      OOMSource
	cgroup   string
	oomKills uint64
	port     int
	logPath  string
	argv     []string
	// llama: llama-server's /slots can be drained; vLLM and TGI have none.
	llama bool
}

func (p *process) PID() int                { return p.h.PID() }
func (p *process) StartTicks() uint64      { return p.h.StartTicks() }
func (p *process) Port() int               { return p.port }
func (p *process) LogPath() string         { return p.logPath }
func (p *process) Argv() []string          { return p.argv }
func (p *process) Exited() <-chan struct{} { return p.h.Done() }
func (p *process) Health(ctx context.Context) engine.Health {
	return engine.ProbeHealth(ctx, p.port, false)
}

func (p *process) Exit() engine.ExitStatus {
	e, ok := p.h.Exited()
	if !ok {
		return engine.ExitStatus{}
	}
	status := engine.ExitStatus{Code: e.Code}
	if e.Signo != 0 {
		status.Signal = unix.SignalName(e.Signo)
	}
	if e.Signo == unix.SIGKILL && !e.Killed && p.oom != nil {
		// Killed, and not by its stop: the OOM killer, if its cgroup counted one since.
		if n, err := p.oom.OOMKills(p.cgroup); err == nil && n > p.oomKills {
			status.OOMKilled = true
		}
	}
	return status
}

func (p *process) Session() []int {
	pids, err := p.h.Session()
	if err != nil {
		return []int{p.h.PID()}
	}
	return pids
}

// Stop drains (llama-server: until no slot is processing), then SIGTERM, then SIGKILL after grace.
func (p *process) Stop(ctx context.Context, drain, grace time.Duration) (engine.StopReport, error) {
	spec := supervisor.StopSpec{DrainTimeout: drain, Grace: grace}
	if p.llama && drain > 0 {
		spec.Drain = func(ctx context.Context) error { return drainSlots(ctx, p.port) }
	}
	e, err := p.h.Stop(ctx, spec)
	return engine.StopReport{Killed: e.Killed}, err
}

// drainSlots waits until no slot of a llama-server is processing a request.
func drainSlots(ctx context.Context, port int) error {
	for {
		busy, err := busySlots(ctx, port)
		if err != nil || busy == 0 {
			return err
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
	}
}

func busySlots(ctx context.Context, port int) (int, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, fmt.Sprintf("http://127.0.0.1:%d/slots", port), nil)
	if err != nil {
		return 0, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, nil // not answering: nothing to drain
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return 0, nil
	}
	var slots []struct {
		IsProcessing bool `json:"is_processing"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&slots); err != nil {
		return 0, nil
	}
	n := 0
	for _, s := range slots {
		if s.IsProcessing {
			n++
		}
	}
	return n, nil
}

// LogTail returns what the engine printed since its start (at most the last 16 KiB).
func (p *process) LogTail() string { return supervisor.LogSinceStart(p.logPath, 16<<10) }

// Attribution is what a simulated node that hosts real engines says an
// engine of req holds: the pool's need, on its masked GPUs, by its split
// (llama.cpp's tensor split; an even one for the others), the remainder of
// the rounding on the last GPU.
func Attribution(req engine.StartRequest) map[int]uint64 {
	if len(req.GPUs) == 0 || req.Need == 0 {
		return nil
	}
	split := req.Pool.EffectiveSplit()
	var sum float64
	for _, r := range split {
		sum += r
	}
	if req.Pool.Engine != schema.EngineLlamaCpp || len(split) != len(req.GPUs) || sum <= 0 {
		split = make([]float64, len(req.GPUs))
		for i := range split {
			split[i] = 1
		}
		sum = float64(len(split))
	}
	claims := make(map[int]uint64, len(req.GPUs))
	var given uint64
	for i, g := range req.GPUs {
		n := uint64(float64(req.Need) * split[i] / sum)
		if i == len(req.GPUs)-1 {
			n = req.Need - given
		}
		claims[g.Index] += n
		given += n
	}
	return claims
}
