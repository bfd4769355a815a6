package fakeengine

import (
	"fmt"
	"net"
	"net/http"
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
	warm      func()
	cudaError func()
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
	ln, err := net.Listen("tcp", net.JoinHostPort(e.host, strconv.Itoa(e.port)))
	if err != nil {
		e.bindFailed(err)
		set.stop(shardGrace)
		return 1
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
	} else {
		p.state.setReady(time.Now())
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
