// Package engine is engine identity and the contract between the executor
// and the engine drivers, said once: the marker and the environment names
// by which pool-managerd knows its engines, the health probe, and what a
// driver starts, adopts and cleans up (Driver, Process, StartRequest, Ref).
package engine

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/poolmanagerd/pool-managerd/drivers/gpu"
	"github.com/poolmanagerd/pool-managerd/schema"
)

// MarkerEnv is the environment variable every engine pool-managerd starts
// carries, so that a scan of /proc finds an engine that a crash kept out of
// the state file. Its value is Marker's.
const MarkerEnv = "POOL_MANAGERD_ENGINE"

// Marker identifies an engine: its node, pool, generation and spec hash.
type Marker struct {
	Node       string
	Pool       string
	Generation int64
	SpecHash   string
}

// String is the marker's value: node/pool/generation/spechash.
func (m Marker) String() string {
	return fmt.Sprintf("%s/%s/%d/%s", m.Node, m.Pool, m.Generation, m.SpecHash)
}

// ParseMarker reads a marker's value.
func ParseMarker(s string) (Marker, error) {
	parts := strings.SplitN(s, "/", 4)
	if len(parts) != 4 {
		return Marker{}, fmt.Errorf("engine marker %q: want node/pool/generation/spechash", s)
	}
	for i, what := range []string{"node", "pool", "", "spec hash"} {
		if what != "" && parts[i] == "" {
			return Marker{}, fmt.Errorf("engine marker %q: empty %s", s, what)
		}
	}
	gen, err := strconv.ParseInt(parts[2], 10, 64)
	if err != nil {
		return Marker{}, fmt.Errorf("engine marker %q: generation: %w", s, err)
	}
	return Marker{Node: parts[0], Pool: parts[1], Generation: gen, SpecHash: parts[3]}, nil
}

// StateDirEnv names the state directory of the pool-managerd that started the
// engine, so that a scan for engines by marker finds only its own (tests and
// demos run several on one machine).
const StateDirEnv = "POOL_MANAGERD_STATE_DIR"

// Health is what an engine's health endpoint says.
type Health string

// Engine health as observed.
const (
	// HealthOK: the engine answered its health check; the model is loaded.
	HealthOK Health = "ok"
	// HealthLoading: the engine is up but still loading its model (llama-server
	// answers 503, vLLM and TGI refuse connections, SGLang refuses them and
	// then answers 503 with an empty body until its warm-up is done).
	HealthLoading Health = "loading"
	// HealthFailing: the engine answers that it is unhealthy, or stopped answering after it was Ready.
	HealthFailing Health = "failing"
)

// PortOf finds the --port of an engine's command line.
func PortOf(args []string) int {
	for i, a := range args {
		if a == "--port" && i+1 < len(args) {
			p, _ := strconv.Atoi(args[i+1])
			return p
		}
		if v, ok := strings.CutPrefix(a, "--port="); ok {
			p, _ := strconv.Atoi(v)
			return p
		}
	}
	return 0
}

// ProbeHealth asks an engine's /health on 127.0.0.1. llama-server answers 503
// "Loading model" while loading; vLLM and TGI refuse connections until
// loaded, which counts as loading until the engine has once been Ready.
// SGLang refuses connections while it loads its weights and then answers 503
// with an empty body until its warm-up request succeeds: before the engine
// was once Ready that is loading too, after it a failure (SGLang answers the
// same while it exits). No other engine answers an empty 503 before it is
// Ready: vLLM's (its engine died) and TGI's (a JSON body) come only later.
func ProbeHealth(ctx context.Context, port int, ready bool) Health {
	if port == 0 {
		return ""
	}
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, fmt.Sprintf("http://127.0.0.1:%d/health", port), nil)
	if err != nil {
		return HealthFailing
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		var op *net.OpError
		if errors.As(err, &op) && !ready {
			return HealthLoading
		}
		return HealthFailing
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	switch {
	case resp.StatusCode == http.StatusOK:
		return HealthOK
	case resp.StatusCode == http.StatusServiceUnavailable && strings.Contains(string(body), "Loading model"):
		return HealthLoading
	case resp.StatusCode == http.StatusServiceUnavailable && !ready && len(strings.TrimSpace(string(body))) == 0:
		return HealthLoading
	default:
		return HealthFailing
	}
}

// Driver is what the executor needs of an engine driver: start an engine for
// a pool, take over one that runs already, and clean up after one that died.
type Driver interface {
	Start(ctx context.Context, req StartRequest) (Process, error)
	// Adopt returns an error wrapping ErrGone when the process is not running.
	Adopt(ctx context.Context, ref Ref) (Process, error)
	// Cleanup kills what is left of a dead engine's session: vLLM workers and
	// TGI shards that outlived it and still hold GPU memory.
	Cleanup(ctx context.Context, ref Ref) error
}

// ErrGone is returned by Driver.Adopt when the engine process is not running.
var ErrGone = errors.New("engine process is not running")

// Ref is what a driver needs to adopt an engine or clean up after it: its
// pool, its process's identity (pid and start time), its port, log and
// command line, and which engine it is. Zero fields are unknown (an engine
// found by its marker, not yet recorded): the driver reads them from /proc.
type Ref struct {
	Pool       string
	PID        int
	StartTicks uint64
	Port       int
	LogPath    string
	Argv       []string
	// Engine is the pool's engine; empty when the record lacks its spec.
	Engine schema.Engine
}

// StartRequest is one engine start.
type StartRequest struct {
	Pool *schema.Pool
	// GPUs are the pool's masked GPUs, in the order of its devices.
	GPUs []gpu.Device
	// Marker goes into the engine's environment (see MarkerEnv).
	Marker string
	// Need is the pool's VRAM need in all, in bytes (0 when unknown).
	Need uint64
	// RAM is the pool's host RAM need in bytes (0 when not checked); a
	// simulated node holds it for the engine while it lives.
	RAM uint64
}

// Process is a running engine.
type Process interface {
	PID() int
	StartTicks() uint64
	Port() int
	LogPath() string
	// Argv is the engine's command line, recorded to check it on adoption.
	Argv() []string
	// Exited is closed, after Exit is set, when the process ends.
	Exited() <-chan struct{}
	Exit() ExitStatus
	// Session lists the processes of the engine's session (its workers hold GPU memory).
	Session() []int
	// Health asks the engine's health endpoint.
	Health(ctx context.Context) Health
	// Stop drains the engine (waits for busy slots up to drain), sends
	// SIGTERM to its session, and SIGKILL after grace; it says whether the
	// SIGKILL was needed.
	Stop(ctx context.Context, drain, grace time.Duration) (StopReport, error)
	// LogTail returns the end of the engine's log, for CUDA errors.
	LogTail() string
}

// StopReport is how a stop went.
type StopReport struct {
	// Killed: the engine (or a process of its session) outlived its grace
	// after SIGTERM and was sent SIGKILL.
	Killed bool
}

// ExitStatus is how an engine process ended. A Code of -1 with no Signal
// means unknown: the engine was not this process's child (adopted), so its
// exit status cannot be read.
type ExitStatus struct {
	Code   int    `json:"code"`
	Signal string `json:"signal,omitempty"`
	// OOMKilled: the kernel's OOM killer killed it (its cgroup's
	// memory.events counted an oom_kill while it ran).
	OOMKilled bool `json:"oomKilled,omitempty"`
}

// Known reports whether the exit status could be read.
func (e ExitStatus) Known() bool { return e.Signal != "" || e.Code >= 0 }

func (e ExitStatus) String() string {
	if e.OOMKilled {
		return "was killed by the kernel's OOM killer (" + e.Signal + ")"
	}
	if e.Signal != "" {
		return "was killed by " + e.Signal
	}
	if e.Code < 0 {
		return "exited (status unknown: it was not started by this run)"
	}
	return fmt.Sprintf("exited with status %d", e.Code)
}
