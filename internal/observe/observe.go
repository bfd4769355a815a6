// Package observe gathers what a node really looks like — its GPUs, the
// engines in the state file checked against live processes and their health
// endpoints, engines found by the marker in their environment — into the
// reconcile.Observed that the pure planner works on. All the I/O of planning
// lives here and in the drivers.
package observe

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"sync"

	"github.com/poolmanagerd/pool-managerd/drivers/engine"
	"github.com/poolmanagerd/pool-managerd/drivers/engine/proc"
	"github.com/poolmanagerd/pool-managerd/drivers/gpu"
	"github.com/poolmanagerd/pool-managerd/internal/state"
	"github.com/poolmanagerd/pool-managerd/reconcile"
	"github.com/poolmanagerd/pool-managerd/reconcile/restart"
	"github.com/poolmanagerd/pool-managerd/schema"
)

// absDir makes a directory absolute, as engines record it.
func absDir(dir string) string {
	if dir == "" {
		return ""
	}
	if abs, err := filepath.Abs(dir); err == nil {
		return abs
	}
	return dir
}

// Options say where to look.
type Options struct {
	// Node is the node being observed.
	Node string
	// GPUs is the node's GPUs; Source names them for people (nvml, sim:DIR, declared).
	GPUs   gpu.Node
	Source string
	// StateDir holds the state file; empty means none (declared mode: nothing runs).
	StateDir string
	// ScanProcesses looks through /proc for engines by their marker. Off in
	// declared mode, where nothing on this machine belongs to the node.
	ScanProcesses bool
	// Host reads the host's memory; nil means it is not observed (declared
	// mode), and then no pool's RAM need is checked.
	Host HostFunc
	// Health probes an engine's health endpoint; nil means engine.ProbeHealth.
	Health func(ctx context.Context, port int, readyBefore bool) engine.Health
	// Models says where the model cache is and whether the node is
	// offline (Observed.Models, Observed.Offline); Pools are the desired
	// pools whose fetched models are looked up in it. A zero Models.Cache
	// observes no cache (declared mode: a fresh node).
	Models ModelLookup
	Pools  map[string]*schema.Pool
}

// Observe reads the node's GPUs, the state file and the live processes.
// A missing state directory is a fresh node; a corrupt state file is an error.
func Observe(ctx context.Context, opts Options) (reconcile.Observed, error) {
	obs := reconcile.Observed{Node: opts.Node, Source: opts.Source, StateDir: absDir(opts.StateDir), Engines: map[string]reconcile.Engine{}, Pools: map[string]restart.Record{}}
	devices, err := opts.GPUs.Devices(ctx)
	if err != nil {
		return obs, fmt.Errorf("observe GPUs (%s): %w", opts.Source, err)
	}
	obs.GPUs = devices
	obs.Offline = opts.Models.Offline
	if obs.Models, err = opts.Models.Models(opts.Pools); err != nil {
		return obs, fmt.Errorf("observe the model cache: %w", err)
	}
	if opts.Host != nil {
		if obs.Host, err = opts.Host(ctx); err != nil {
			return obs, fmt.Errorf("observe host memory: %w", err)
		}
	}
	health := opts.Health
	if health == nil {
		health = engine.ProbeHealth
	}
	st := state.New()
	if opts.StateDir != "" {
		st, err = state.Store{Dir: opts.StateDir}.Load()
		if err != nil {
			return obs, err
		}
	}
	// One read of /proc for every engine's session, not one per engine.
	sessions := &sessionIndex{}
	// The scan of /proc for marked engines runs while the recorded engines
	// are checked, and their health endpoints are asked at once: an
	// observation, which lies on the path from a config change to its first
	// step, takes about one probe's time rather than one per engine.
	var scan struct {
		found []markedLeader
		err   error
	}
	var wg sync.WaitGroup
	if opts.ScanProcesses {
		wg.Go(func() { scan.found, scan.err = markedLeaders(absDir(opts.StateDir)) })
	}
	var mu sync.Mutex
	slots := make(chan struct{}, probeWorkers)
	for id, rec := range st.Engines {
		slots <- struct{}{}
		wg.Go(func() {
			defer func() { <-slots }()
			e := engineOf(ctx, rec, st.Pools[id], health, sessions)
			mu.Lock()
			obs.Engines[id] = e
			mu.Unlock()
		})
	}
	wg.Wait()
	for id, rec := range st.Pools {
		obs.Pools[id] = rec
	}
	if opts.ScanProcesses {
		if scan.err != nil {
			return obs, scan.err
		}
		addMarked(ctx, opts.Node, scan.found, obs.Engines, health, sessions)
	}
	return obs, nil
}

// probeWorkers bounds how many engines one observation checks at once.
const probeWorkers = 16

// engineOf checks a recorded engine against its live process and health endpoint.
func engineOf(ctx context.Context, rec reconcile.EngineRecord, pool restart.Record, health func(context.Context, int, bool) engine.Health, sessions *sessionIndex) reconcile.Engine {
	e := reconcile.Engine{
		Pool: rec.Pool, Generation: rec.Generation, SpecHash: rec.SpecHash, Spec: rec.Spec,
		PID: rec.PID, Port: rec.Port, Recorded: true, ReadyAt: rec.ReadyAt, ReplaceFailed: rec.ReplaceFailed,
	}
	if rec.PID == 0 {
		e.Intent = rec.Intent
		return e
	}
	if !proc.Alive(rec.PID, rec.StartTicks) {
		if pool.LastError != nil {
			e.Exit = pool.LastError.Message
		}
		e.PIDs = leftovers(rec, sessions)
		return e
	}
	e.Alive = true
	e.Unverified = rec.ReadyAt.IsZero()
	e.Draining = !rec.DrainingSince.IsZero()
	// Asked right after the liveness check, before the session's processes
	// are listed (a read of /proc that another engine's check may be making
	// meanwhile): an engine killed during the observation is then seldom
	// seen alive and failing, which would read as a health failure rather
	// than the exit its watch reports.
	e.Health = reconcile.Health(health(ctx, rec.Port, !rec.ReadyAt.IsZero()))
	e.PIDs = sessionOf(rec.PID, sessions)
	return e
}

// leftovers lists the live processes of a dead engine's session that carry
// its pool's marker: workers that outlived it and may hold GPU memory.
func leftovers(rec reconcile.EngineRecord, sessions *sessionIndex) []int {
	pids, err := sessions.of(rec.PID)
	if err != nil {
		return nil
	}
	var out []int
	for _, pid := range pids {
		if info, err := proc.Stat(pid); err != nil || info.State == 'Z' {
			continue
		}
		env, err := proc.Environ(pid)
		if err != nil {
			continue
		}
		if m, err := engine.ParseMarker(env[engine.MarkerEnv]); err == nil && m.Pool == rec.Pool {
			out = append(out, pid)
		}
	}
	return out
}

// sessionOf lists the processes of an engine's session (its workers and shards).
func sessionOf(pid int, sessions *sessionIndex) []int {
	info, err := proc.Stat(pid)
	if err != nil {
		return []int{pid}
	}
	pids, err := sessions.of(info.Session)
	if err != nil || len(pids) == 0 {
		return []int{pid}
	}
	return pids
}

// addMarked adds the live engines of this node found by their marker
// (markedLeaders) that the state file does not know (or knows under an
// older generation).
func addMarked(ctx context.Context, node string, found []markedLeader, engines map[string]reconcile.Engine, health func(context.Context, int, bool) engine.Health, sessions *sessionIndex) {
	for _, f := range found {
		if f.marker.Node != node {
			continue
		}
		if e, ok := engines[f.marker.Pool]; ok && e.Alive {
			continue
		}
		engines[f.marker.Pool] = reconcile.Engine{
			Pool: f.marker.Pool, Generation: f.marker.Generation, SpecHash: f.marker.SpecHash, PID: f.pid, Port: f.port,
			PIDs: sessionOf(f.pid, sessions), Alive: true, Health: reconcile.Health(health(ctx, f.port, false)),
		}
	}
}

// MarkedEngines finds, by the marker in their environment, the live
// engines that a pool-managerd with this state directory started, whatever
// their node, by pool (the newest pid of a pool wins). It is the one scan
// of /proc for engines: Observe uses it, and so do the CLI's offline stop
// for engines a crash kept out of the state file.
func MarkedEngines(stateDir string) (map[string]int, error) {
	found, err := markedLeaders(absDir(stateDir))
	if err != nil {
		return nil, err
	}
	out := map[string]int{}
	for _, f := range found {
		out[f.marker.Pool] = f.pid
	}
	return out, nil
}

type markedLeader struct {
	pid    int
	port   int
	marker engine.Marker
}

// markedLeaders lists, in pid order, the live leaders of engine sessions
// (not their workers) that carry an engine marker and were started for
// stateDir (or do not say which state directory).
func markedLeaders(stateDir string) ([]markedLeader, error) {
	found, err := proc.FindByEnv(engine.MarkerEnv)
	if err != nil {
		return nil, fmt.Errorf("scan processes for engines: %w", err)
	}
	pids := make([]int, 0, len(found))
	for pid := range found {
		pids = append(pids, pid)
	}
	sort.Ints(pids)
	var out []markedLeader
	for _, pid := range pids {
		m, err := engine.ParseMarker(found[pid])
		if err != nil {
			continue
		}
		info, err := proc.Stat(pid)
		if err != nil || info.State == 'Z' || info.Session != pid {
			continue // gone, or a worker of an engine (the leader is the one)
		}
		if env, err := proc.Environ(pid); err == nil && env[engine.StateDirEnv] != "" && stateDir != "" && env[engine.StateDirEnv] != stateDir {
			continue // started by a pool-managerd with another state directory
		}
		port := 0
		if args, err := proc.Cmdline(pid); err == nil {
			port = engine.PortOf(args)
		}
		out = append(out, markedLeader{pid: pid, port: port, marker: m})
	}
	return out, nil
}

// sessionIndex is every session's processes, read from /proc once, on first
// use, for one observation (instead of one read of /proc per engine).
type sessionIndex struct {
	once     sync.Once
	sessions map[int][]int
	err      error
}

// of returns the pids of session sid, as proc.Session does.
func (s *sessionIndex) of(sid int) ([]int, error) {
	s.once.Do(func() { s.sessions, s.err = proc.Sessions() })
	if s.err != nil {
		return nil, s.err
	}
	return s.sessions[sid], nil
}

// Needs works out each pool's VRAM need: declared, or estimated from its
// GGUF file. With no model cache to look in and no remote lookup, the need
// of a pool with a model.source and no declared vram is deferred; see
// ModelLookup.Needs.
func Needs(ctx context.Context, d *reconcile.Desired) {
	ModelLookup{}.Needs(ctx, d)
}

// NeedOf is one pool's VRAM need; an error is recorded in the need, and blocks the pool.
// For vLLM, TGI and SGLang it also sums the model's weight files (Need.Weights).
// See ModelLookup.NeedOf for pools with a model.source.
func NeedOf(ctx context.Context, p *schema.Pool) reconcile.Need {
	return ModelLookup{}.NeedOf(ctx, p)
}

// weightsOf is the size of a model directory's weight files: those in
// model.path, or, for a fetched model, the sizes its manifest declares; 0
// when not known (a directory that cannot be read, a manifest without sizes).
func weightsOf(m schema.Model) uint64 {
	var sum uint64
	if m.Path == "" {
		for _, f := range m.Files {
			if !isWeightFile(f.Path) {
				continue
			}
			if f.Size <= 0 {
				return 0
			}
			sum += uint64(f.Size)
		}
		return sum
	}
	entries, err := os.ReadDir(m.Path)
	if err != nil {
		return 0
	}
	for _, e := range entries {
		if !isWeightFile(e.Name()) {
			continue
		}
		info, err := os.Stat(filepath.Join(m.Path, e.Name())) // follows links (a Hub snapshot links into blobs/)
		if err != nil || !info.Mode().IsRegular() {
			continue
		}
		sum += uint64(info.Size())
	}
	return sum
}

// isWeightFile reports whether a model directory's file holds weights.
func isWeightFile(name string) bool {
	switch filepath.Ext(name) {
	case ".safetensors", ".bin", ".pt", ".pth":
		return true
	}
	return false
}
