// Package poolview renders how each pool stands, as `pool-managerd status`
// and the daemon's /v1/pools show it. It gathers each pool's facts (the
// config in force, what was observed on the node, the state file's records)
// and asks the lifecycle (reconcile.Lifecycle) for the phase and readiness:
// it renders that answer and never decides a phase of its own.
package poolview

import (
	"fmt"
	"os"
	"sort"
	"time"

	"github.com/poolmanagerd/pool-managerd/internal/api"
	"github.com/poolmanagerd/pool-managerd/internal/executor"
	"github.com/poolmanagerd/pool-managerd/internal/state"
	"github.com/poolmanagerd/pool-managerd/reconcile"
	"github.com/poolmanagerd/pool-managerd/reconcile/restart"
	"github.com/poolmanagerd/pool-managerd/schema"
)

// Input is what the view is made from.
type Input struct {
	// Desired is the config in force for this node, by pool id; nil when it
	// is not known (status reads the state directory alone): a pool is then
	// taken to want the spec its engine was started from.
	Desired map[string]*schema.Pool
	// Held are the pools an operator stopped (the daemon's holds).
	Held map[string]bool
	// Blocked are the pools the last plan found the node cannot run now,
	// with the blocker's class.
	Blocked map[string]string
	// Removals are the pools that left the config and wait for their
	// removal to settle, by when it takes effect (the daemon's).
	Removals map[string]time.Time
	// Fetches are the model downloads that pools' starts wait on, by pool id
	// (the daemon's fetcher).
	Fetches map[string]reconcile.Fetch
	// Observed is the last observation of the node; State the state file as
	// the executor holds it now (newer than the observation).
	Observed reconcile.Observed
	State    *state.State
	Now      time.Time
}

// Build returns the row of every pool of the config in force and of every
// pool that has an engine or a restart record, sorted by id.
func Build(in Input) []api.Pool {
	ids := map[string]bool{}
	for id := range in.Desired {
		ids[id] = true
	}
	for id := range in.Observed.Engines {
		ids[id] = true
	}
	for id := range in.State.Engines {
		ids[id] = true
	}
	for id := range in.State.Pools {
		ids[id] = true
	}
	rows := make([]api.Pool, 0, len(ids))
	for id := range ids {
		rows = append(rows, One(id, in))
	}
	sort.Slice(rows, func(i, j int) bool { return rows[i].Pool < rows[j].Pool })
	return rows
}

// Facts gathers what the lifecycle decides one pool from.
func Facts(id string, in Input) reconcile.Facts {
	var observed, e *reconcile.Engine
	if o, ok := in.Observed.Engines[id]; ok {
		observed = &o
	}
	var rec *reconcile.EngineRecord
	if r, ok := in.State.Engines[id]; ok {
		rec = &r
	}
	e = reconcile.WithRecord(observed, rec)
	history := in.State.Pools[id]
	f := reconcile.Facts{Engine: e, History: history, Held: in.Held[id], Blocked: in.Blocked[id]}
	if fe, ok := in.Fetches[id]; ok {
		f.Fetch = &fe
	}
	switch {
	case in.Desired != nil:
		f.Spec = in.Desired[id]
	case rec != nil:
		// No config at hand: the pool wants what its engine was started from.
		f.Spec, f.WantedHash = rec.Spec, rec.SpecHash
		if f.Spec == nil {
			f.Spec = &schema.Pool{ID: id, Restart: reconcile.DefaultRestartPolicy()}
		}
	case history.LastError != nil || history.BreakerState != "":
		// No config and no engine record: a pool with a failure is taken
		// to be wanted still, under the default restart policy.
		f.Spec = &schema.Pool{ID: id, Restart: reconcile.DefaultRestartPolicy()}
	}
	return f
}

// One returns one pool's row.
func One(id string, in Input) api.Pool {
	f := Facts(id, in)
	st := reconcile.Lifecycle(f, in.Now)
	return Render(id, st, f, in)
}

// Render writes the row of a pool whose lifecycle status is st.
func Render(id string, st reconcile.Status, f reconcile.Facts, in Input) api.Pool {
	history := f.History
	engineRec, recorded := in.State.Engines[id]
	row := api.Pool{Pool: id, Phase: st.Phase, Ready: st.Ready, Reason: st.Reason, Restarts: history.Restarts, Breaker: st.Breaker.String(), GPUs: []api.GPU{}}
	if history.LastError != nil {
		hint := history.LastError.Hint
		if hint == "" {
			hint = restart.Hint(history.LastError.Class)
		}
		row.LastError = &api.LastError{Class: history.LastError.Class, Message: history.LastError.Message, Hint: hint, Time: history.LastError.Time}
	}
	switch st.Next {
	case reconcile.NextWait:
		row.NextRetry = st.At
	case reconcile.NextReplace:
		// Zero unless a replace's start failed while its engine ran.
		row.NextRetry = st.At
	case reconcile.NextBlocked:
		// The next try is the breaker's half-open one, not the backoff's.
		row.NextRetry, row.BreakerRetryAt = st.At, st.At
		if row.LastError != nil {
			row.LastError.Hint = fmt.Sprintf("the circuit breaker is open: fix the config or run pool-managerd reset %s; %s", id, row.LastError.Hint)
		}
	case reconcile.NextRecordExit:
		// It died after it was Ready, and no one has recorded it yet.
		at := in.Now
		if info, err := os.Stat(engineRec.LogPath); err == nil {
			at = info.ModTime() // when it died is not recorded: its log's last write is the closest
		}
		f := executor.DeathFailure(engineRec)
		row.LastError = &api.LastError{Class: f.Class, Message: f.Message + "; the next apply restarts it", Hint: restart.Hint(f.Class), Time: at}
	}
	if recorded {
		row.Log = engineRec.LogPath
	}
	row.RemovalAt = in.Removals[id]
	if e := f.Engine; e != nil && e.Alive {
		row.PID, row.Port = e.PID, e.Port
		if e.Port != 0 {
			row.Endpoint = fmt.Sprintf("http://127.0.0.1:%d", e.Port)
		}
		if o, ok := in.Observed.Engines[id]; ok && o.PID == e.PID {
			row.GPUs = held(in.Observed, o)
		}
	}
	if f.Fetch != nil && (st.Phase == reconcile.Fetching || st.Next == reconcile.NextReplace) {
		// Fetching, or a replace's download while the engine serves the old spec.
		row.Fetch = &api.Fetch{BytesDone: f.Fetch.Done, BytesTotal: f.Fetch.Total, BytesPerSecond: f.Fetch.BytesPerSecond, StartedAt: f.Fetch.Since}
	}
	row.Preload = preload(row, engineRec, recorded, in.Now)
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
