package reconcile

import (
	"time"

	"github.com/poolmanagerd/pool-managerd/schema"
)

// EngineRecord is an engine process pool-managerd started (or is about to
// start: see Intent), as the state file records it (package internal/state).
type EngineRecord struct {
	Pool       string `json:"pool"`
	Generation int64  `json:"generation"`
	// SpecHash is the hash of the pool's spec the engine was started from.
	SpecHash string `json:"specHash"`
	// PID and StartTicks identify the process (see drivers/engine/proc.Alive);
	// zero while Intent is set.
	PID        int       `json:"pid,omitzero"`
	StartTicks uint64    `json:"startTicks,omitzero"`
	Port       int       `json:"port,omitzero"`
	LogPath    string    `json:"logPath,omitzero"`
	StartedAt  time.Time `json:"startedAt,omitzero"`
	// Intent is set when the record is written before the spawn: the spawn
	// may not have happened, so the engine is to be looked for by its marker.
	Intent bool `json:"intent,omitzero"`
	// ReadyAt is when the engine first passed its health check; zero while it preloads.
	ReadyAt time.Time `json:"readyAt,omitzero"`
	// DrainingSince is when a stop of the engine began (drain, SIGTERM,
	// grace, SIGKILL); zero while none has. The pool is not ready from then on.
	DrainingSince time.Time `json:"drainingSince,omitzero"`
	// ReplaceFailed is the hash of a spec whose start failed while this
	// engine was the pool's (its model could not be fetched; the engine, if
	// it runs, keeps serving): the next try of that spec waits for the
	// pool's backoff, and its config change is not counted again at each
	// try. Empty when none failed.
	ReplaceFailed string `json:"replaceFailed,omitzero"`
	// Spec is the pool spec the engine was started from, for field-level plan reasons.
	Spec *schema.Pool `json:"spec,omitzero"`
	// Argv is the engine's command line, checked when a later run adopts it.
	Argv []string `json:"argv,omitzero"`
}
