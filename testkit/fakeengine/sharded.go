package fakeengine

import (
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"strconv"
	"time"
)

// shardGrace is how long a stopping main process waits for its workers.
const shardGrace = 5 * time.Second

// shardedEngine is what differs between vLLM and TGI around the common
// life of an engine whose GPU memory is held by worker processes: the port
// opens only once every worker has loaded.
type shardedEngine struct {
	host    string
	port    int
	handler http.Handler
	// warmUp, when > 0, is how long the engine answers on its port before
	// it is Ready (SGLang: /health 503 until its warm-up request is done).
	warmUp time.Duration
	// Logs, in the engine's words.
	loadFailed func(reason string)
	died       func(e shardExit)
	listening  func(port int)
	bindFailed func(err error)
	stopping   func()
	stopped    func()
	// warm logs the end of the warm-up (with warmUp).
	warm func()
	// router, when set, is the process that serves the port (TGI's
	// text-generation-router), started once the workers are loaded; the
	// engine itself does not listen then. handler is not used.
	router *shardSpec
	// stageGrace is how long a stop waits for the router and then for the
	// workers before it kills them (TGI's --graceful-termination-timeout);
	// 0 means shardGrace.
	stageGrace time.Duration
	cudaError  func()
}

// runSharded starts the workers, waits until they are loaded, then serves.
func (p *process) runSharded(specs []shardSpec, e shardedEngine) int {
	sigs := notify()
	set, err := p.startShards(specs)
	if err != nil {
		e.loadFailed(fmt.Sprintf("starting worker processes: %v", err))
		return 1
	}
	fail, died, sig := set.waitReady(sigs, p.faults.IgnoreSIGTERM)
	switch {
	case sig != nil:
		e.stopping()
		set.stop(shardGrace)
		e.stopped()
		return 0
	case fail != nil:
		e.loadFailed(fail.reason)
		set.stop(shardGrace)
		return 1
	case died != nil:
		e.died(*died)
		set.stop(shardGrace)
		return 1
	}
	if e.router != nil {
		return p.runRouted(sigs, set, e)
	}
	ln, err := net.Listen("tcp", net.JoinHostPort(e.host, strconv.Itoa(e.port)))
	if err != nil {
		e.bindFailed(err)
		set.stop(shardGrace)
		return 1
	}
	if e.warmUp <= 0 {
		// Ready before the first request is served: vLLM and TGI bind the
		// port only once the engine is up, and answer /health 200 from the
		// first request on.
		p.state.setReady(time.Now())
	}
	hs := &http.Server{Handler: e.handler, ErrorLog: discardLog()}
	go hs.Serve(ln)
	e.listening(ln.Addr().(*net.TCPAddr).Port)
	if e.warmUp > 0 {
		warm := time.AfterFunc(e.warmUp, func() {
			p.state.setReady(time.Now())
			if e.warm != nil {
				e.warm()
			}
		})
		defer warm.Stop()
	}
	return p.runReady(sigs, afterReady{
		shutdown: func() int {
			e.stopping()
			time.Sleep(p.faults.ShutdownDelay)
			hs.Close()
			set.stop(shardGrace)
			e.stopped()
			return 0
		},
		// The workers see the lifeline end when this process has gone.
		exit: func(code int) int { return code },
		cudaError: func() int {
			e.cudaError()
			hs.Close()
			set.stop(shardGrace)
			return 1
		},
		died: set.exited,
		onDied: func(x shardExit) int {
			e.died(x)
			hs.Close()
			set.stop(shardGrace)
			return 1
		},
	})
}

// evenClaims gives each of n workers an even part of the memory on its
// GPU (worker i on gpus[i]); gpus shorter than n leaves the rest without.
// FAKE_ENGINE_NO_GPU gives none; FAKE_ENGINE_HOLD_OUTSIDE_MASK adds to
// worker 0.
func (p *process) evenClaims(n int, gpus []GPU) []map[int]uint64 {
	out := make([]map[int]uint64, n)
	parts := SplitBytes(p.faults.VRAM, make([]float64, n))
	for i := range out {
		out[i] = map[int]uint64{}
		if !p.faults.NoGPU && i < len(gpus) && gpus[i].SimIndex >= 0 && parts[i] > 0 {
			out[i][gpus[i].SimIndex] = parts[i]
		}
	}
	if n > 0 {
		out[0] = p.withOutside(out[0])
	}
	return out
}

// exitDescription says how a worker ended, as Python would.
func exitDescription(e shardExit) string {
	if e.state == nil {
		return "unknown"
	}
	if ws, ok := e.state.Sys().(interface{ Signaled() bool }); ok && ws.Signaled() {
		return e.state.String()
	}
	return fmt.Sprintf("exit code %d", e.state.ExitCode())
}

// runRouted is runSharded's second half for an engine whose port is served
// by a router process of its own (TGI): the router starts once the workers
// are loaded; a stop ends the router first, then the workers, each given
// stageGrace, as TGI's launcher does.
func (p *process) runRouted(sigs chan os.Signal, set *shardSet, e shardedEngine) int {
	grace := e.stageGrace
	if grace <= 0 {
		grace = shardGrace
	}
	rset, err := p.startShards([]shardSpec{*e.router})
	if err != nil {
		e.bindFailed(err)
		set.stop(grace)
		return 1
	}
	fail, died, sig := rset.waitReady(sigs, p.faults.IgnoreSIGTERM)
	switch {
	case sig != nil:
		e.stopping()
		rset.stop(grace)
		set.stop(grace)
		e.stopped()
		return 0
	case fail != nil:
		e.bindFailed(errors.New(fail.reason))
		rset.stop(grace)
		set.stop(grace)
		return 1
	case died != nil:
		e.bindFailed(fmt.Errorf("router exited (%s)", exitDescription(*died)))
		rset.stop(grace)
		set.stop(grace)
		return 1
	}
	p.state.setReady(time.Now())
	e.listening(e.port)
	// A worker or the router (rank -1) that exits.
	exited := make(chan shardExit, 2)
	go func() {
		for {
			select {
			case x := <-set.exited:
				exited <- x
			case x := <-rset.exited:
				x.rank = -1
				exited <- x
			}
		}
	}()
	stopAll := func() {
		rset.stop(grace)
		set.stop(grace)
	}
	return p.runReady(sigs, afterReady{
		shutdown: func() int {
			e.stopping()
			stopAll()
			e.stopped()
			return 0
		},
		exit: func(code int) int { return code },
		cudaError: func() int {
			e.cudaError()
			stopAll()
			return 1
		},
		died: exited,
		onDied: func(x shardExit) int {
			if x.rank < 0 {
				e.bindFailed(fmt.Errorf("router exited (%s)", exitDescription(x)))
			} else {
				e.died(x)
			}
			stopAll()
			return 1
		},
	})
}
