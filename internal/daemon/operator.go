package daemon

import (
	"context"
	"errors"
	"fmt"
	"slices"

	"github.com/poolmanagerd/pool-managerd/internal/api"
	"github.com/poolmanagerd/pool-managerd/internal/state"
	"github.com/poolmanagerd/pool-managerd/reconcile"
)

// An operator's stop holds the pool Stopped while the daemon runs: the
// loop does not start it again until `pool-managerd reset POOL`, a change of
// the pool's config, or a restart of the daemon.

type stopRequest struct {
	pools   []string
	all     bool
	done    chan error
	pending int
	errs    []error
}

// finish counts one pool of the request done.
func (r *stopRequest) finish(err error) {
	if err != nil {
		r.errs = append(r.errs, err)
	}
	r.pending--
	if r.pending == 0 {
		r.done <- errors.Join(r.errs...)
	}
}

type resetRequest struct {
	pools []string
	done  chan error
}

// operatorStop holds the pools and cancels their ops; the pass stops their
// engines, and the request is answered when every one is stopped.
func (d *Daemon) operatorStop(r *stopRequest) {
	ids := slices.Clone(r.pools)
	if r.all {
		ids = d.desiredIDs()
		if st, err := d.exec.State(); err == nil {
			for id := range st.Engines {
				if !slices.Contains(ids, id) {
					ids = append(ids, id)
				}
			}
		}
		slices.Sort(ids)
	}
	r.pending = len(ids) + 1
	for _, id := range ids {
		hash := ""
		if p, ok := d.desiredPool(id); ok {
			hash = reconcile.SpecHash(p)
		}
		d.held[id] = hash
		d.view.setHeld(id, true)
		delete(d.faulted, id)
		if o := d.busy[id]; o != nil && o.kind == opApply && !o.cancelled {
			o.cancel()
			o.cancelled = true
		}
		d.stopWait[id] = append(d.stopWait[id], r)
	}
	d.log.Info("operator stop", "pools", ids)
	r.finish(nil) // the +1 above: answered once every pool is done, even none
}

// runHeld stops the engines of held pools that no op is busy with, and
// answers the stop requests of held pools that have no engine.
func (d *Daemon) runHeld(st *state.State, obs reconcile.Observed) {
	for id := range d.held {
		if d.busy[id] != nil {
			continue
		}
		_, recorded := st.Engines[id]
		if e, found := obs.Engines[id]; recorded || (found && e.Alive) {
			if !recorded {
				continue // found only by its marker: the plan adopts it first
			}
			d.launch(id, &op{kind: opStop, devices: devicesOf(st.Engines[id])}, func(ctx context.Context) opResult {
				return opResult{err: d.exec.StopPool(ctx, id)}
			})
			continue
		}
		d.stopped(id, nil)
	}
}

func devicesOf(rec reconcile.EngineRecord) []int {
	if rec.Spec == nil {
		return nil
	}
	return rec.Spec.Devices
}

// stopped answers the stop requests waiting on a pool.
func (d *Daemon) stopped(id string, err error) {
	for _, r := range d.stopWait[id] {
		r.finish(err)
	}
	delete(d.stopWait, id)
}

// operatorReset closes the breakers, clears the backoffs and lifts the
// operator stops of the pools.
func (d *Daemon) operatorReset(r resetRequest) {
	st, err := d.exec.State()
	if err != nil {
		r.done <- err
		return
	}
	var withRecord []string
	for _, id := range r.pools {
		if _, held := d.held[id]; held {
			delete(d.held, id)
			d.view.setHeld(id, false)
		}
		delete(d.reported, id)
		if _, ok := st.Pools[id]; ok {
			withRecord = append(withRecord, id)
		}
	}
	if err := d.exec.ResetPools(withRecord, d.policies()); err != nil {
		r.done <- err
		return
	}
	d.log.Info("operator reset: breaker closed, backoff cleared", "pools", r.pools)
	r.done <- nil
}

// Ready reports whether the first reconcile is done.
func (d *Daemon) Ready() bool { return d.view.isReady() }

// Config returns the config's state.
func (d *Daemon) Config() api.Config {
	c := d.view.config()
	c.Git = d.gitStatus()
	return c
}

// Pools returns every pool of the config in force and every pool the
// state still has an engine or a record for.
func (d *Daemon) Pools() []api.Pool { return d.view.pools(d.exec, d.now()) }

// Pool returns one pool.
func (d *Daemon) Pool(id string) (api.Pool, bool) {
	for _, p := range d.Pools() {
		if p.Pool == id {
			return p, true
		}
	}
	return api.Pool{}, false
}

// Reset closes the pools' breakers and clears their backoff, and lifts an
// operator's stop.
func (d *Daemon) Reset(ctx context.Context, pools []string) error {
	for _, id := range pools {
		if _, ok := d.Pool(id); !ok {
			return fmt.Errorf("reset %s: %w", id, api.ErrUnknownPool)
		}
	}
	r := resetRequest{pools: pools, done: make(chan error, 1)}
	select {
	case d.resets <- r:
	case <-ctx.Done():
		return ctx.Err()
	case <-d.runCtx.Done():
		return errShuttingDown
	}
	return d.wait(ctx, r.done)
}

// Stop stops the pools' engines and holds them Stopped (see operatorStop).
func (d *Daemon) Stop(ctx context.Context, pools []string, all bool) error {
	for _, id := range pools {
		if _, ok := d.Pool(id); !ok {
			return fmt.Errorf("stop %s: %w", id, api.ErrUnknownPool)
		}
	}
	r := &stopRequest{pools: pools, all: all, done: make(chan error, 1)}
	select {
	case d.stops <- r:
	case <-ctx.Done():
		return ctx.Err()
	case <-d.runCtx.Done():
		return errShuttingDown
	}
	return d.wait(ctx, r.done)
}

var errShuttingDown = errors.New("the daemon is shutting down")

func (d *Daemon) wait(ctx context.Context, done <-chan error) error {
	select {
	case err := <-done:
		return err
	case <-ctx.Done():
		return ctx.Err()
	case <-d.runCtx.Done():
		return errShuttingDown
	}
}
