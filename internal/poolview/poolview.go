// Package poolview works out how each pool stands, as `pool-managerd
// status` and the daemon's /v1/pools show it, from what was observed on the
// node (engines alive, their health, GPU memory) and the state file (engine
// records, restart and breaker history).
package poolview

import (
	"fmt"
	"os"
	"sort"
	"time"

	"github.com/poolmanagerd/pool-managerd/drivers/engine"
	"github.com/poolmanagerd/pool-managerd/internal/api"
	"github.com/poolmanagerd/pool-managerd/internal/executor"
	"github.com/poolmanagerd/pool-managerd/internal/state"
	"github.com/poolmanagerd/pool-managerd/reconcile"
	"github.com/poolmanagerd/pool-managerd/reconcile/restart"
)

// Build returns every pool that has an engine or a restart record, sorted
// by id.
func Build(obs reconcile.Observed, st *state.State, now time.Time) []api.Pool {
	ids := map[string]bool{}
	for id := range obs.Engines {
		ids[id] = true
	}
	for id := range st.Pools {
		ids[id] = true
	}
	rows := make([]api.Pool, 0, len(ids))
	for id := range ids {
		rows = append(rows, One(id, obs, st, now))
	}
	sort.Slice(rows, func(i, j int) bool { return rows[i].Pool < rows[j].Pool })
	return rows
}

// One returns one pool's view. A pool with neither an engine nor a record
// is Pending: nothing was tried yet.
func One(id string, obs reconcile.Observed, st *state.State, now time.Time) api.Pool {
	e, hasEngine := obs.Engines[id]
	rec, hasRecord := st.Pools[id]
	engineRec, recorded := st.Engines[id]
	row := api.Pool{Pool: id, Restarts: rec.Restarts, Breaker: api.BreakerClosed, GPUs: []api.GPU{}}
	if rec.BreakerState != "" {
		row.Breaker = rec.BreakerState
	}
	if rec.LastError != nil {
		hint := rec.LastError.Hint
		if hint == "" {
			hint = restart.Hint(rec.LastError.Class)
		}
		row.LastError = &api.LastError{Class: rec.LastError.Class, Message: rec.LastError.Message, Hint: hint, Time: rec.LastError.Time}
	}
	if !rec.NextRetry.IsZero() && rec.NextRetry.After(now) {
		row.NextRetry = rec.NextRetry
	}
	if rec.BreakerState == api.BreakerOpen {
		// The next try is the breaker's half-open one, not the backoff's.
		row.NextRetry, row.BreakerRetryAt = rec.BreakerRetryAt, rec.BreakerRetryAt
		if row.LastError != nil {
			row.LastError.Hint = fmt.Sprintf("the circuit breaker is open: fix the config or run pool-managerd reset %s; %s", id, row.LastError.Hint)
		}
	}
	if recorded {
		row.Log = engineRec.LogPath
	}
	switch {
	case recorded && engineRec.PID != 0 && (!hasEngine || e.PID != engineRec.PID):
		// Started since the node was observed: the state file knows it
		// better than the observation.
		row.PID, row.Port, row.Phase = engineRec.PID, engineRec.Port, reconcile.Preloading
		if row.Port != 0 {
			row.Endpoint = fmt.Sprintf("http://127.0.0.1:%d", row.Port)
		}
	case hasEngine && e.Alive:
		row.PID, row.Port = e.PID, e.Port
		if e.Port != 0 {
			row.Endpoint = fmt.Sprintf("http://127.0.0.1:%d", e.Port)
		}
		switch e.Health {
		case engine.HealthOK:
			row.Phase, row.Ready = reconcile.Ready, true
		case engine.HealthLoading:
			row.Phase = reconcile.Preloading
		default:
			row.Phase = reconcile.Unready
		}
		row.GPUs = held(obs, e)
	case rec.BreakerState == api.BreakerOpen:
		row.Phase = reconcile.Failed
	case hasEngine && e.Intent:
		row.Phase = reconcile.Pending
	case hasEngine && e.PID != 0 && recorded:
		// Recorded and not stopped by pool-managerd, yet gone: it died.
		row.Phase = reconcile.Unready
		if row.LastError == nil || !rec.LastError.Time.After(engineRec.ReadyAt) {
			f := executor.DeathFailure(engineRec)
			// When it died is not recorded: its log's last write is the closest.
			at := now
			if info, err := os.Stat(engineRec.LogPath); err == nil {
				at = info.ModTime()
			}
			row.LastError = &api.LastError{Class: f.Class, Message: f.Message + "; the next apply restarts it", Hint: restart.Hint(f.Class), Time: at}
		}
	case rec.LastError != nil:
		row.Phase = reconcile.Unready
	case hasRecord || recorded:
		row.Phase = reconcile.Stopped
	default:
		row.Phase = reconcile.Pending
	}
	row.Preload = preload(row, engineRec, recorded, now)
	return row
}

// preload describes the model load of the pool's engine.
func preload(row api.Pool, rec reconcile.EngineRecord, recorded bool, now time.Time) *api.Preload {
	if !recorded || rec.StartedAt.IsZero() {
		if row.Phase == reconcile.Pending {
			return &api.Preload{State: api.PreloadPending}
		}
		return nil
	}
	p := &api.Preload{StartedAt: rec.StartedAt}
	switch {
	case !rec.ReadyAt.IsZero() && row.PID == 0:
		return nil // the engine that loaded is gone
	case !rec.ReadyAt.IsZero():
		p.State, p.LoadedAt = api.PreloadLoaded, rec.ReadyAt
		p.DurationSeconds = rec.ReadyAt.Sub(rec.StartedAt).Seconds()
	case row.Phase == reconcile.Preloading || row.Phase == reconcile.Pending:
		p.State = api.PreloadLoading
		p.DurationSeconds = now.Sub(rec.StartedAt).Seconds()
	case row.LastError != nil && !row.LastError.Time.Before(rec.StartedAt):
		p.State = api.PreloadFailed
		p.DurationSeconds = row.LastError.Time.Sub(rec.StartedAt).Seconds()
	default:
		p.State = api.PreloadLoading
		p.DurationSeconds = now.Sub(rec.StartedAt).Seconds()
	}
	return p
}

// held lists the memory the engine's processes hold on each GPU.
func held(obs reconcile.Observed, e reconcile.Engine) []api.GPU {
	pids := map[int]bool{e.PID: true}
	for _, p := range e.PIDs {
		pids[p] = true
	}
	out := []api.GPU{}
	for _, d := range obs.GPUs {
		var bytes uint64
		for _, p := range d.Processes {
			if pids[p.PID] {
				bytes += p.UsedBytes
			}
		}
		if bytes > 0 {
			out = append(out, api.GPU{Index: d.Index, UUID: d.UUID, MemoryBytes: bytes})
		}
	}
	return out
}
