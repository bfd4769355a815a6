package reconcile

import (
	"fmt"
	"maps"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/poolmanagerd/pool-managerd/drivers/gpu"
	"github.com/poolmanagerd/pool-managerd/reconcile/restart"
	"github.com/poolmanagerd/pool-managerd/schema"
)

// FormatVersion is the version of the plan's JSON format (docs/plan-format.md).
const FormatVersion = 2

// Action is what a plan does to one pool.
type Action string

// The actions of a plan, in the order apply runs them.
const (
	// Delete stops an engine whose pool is gone from the config (or from this node).
	Delete Action = "delete"
	// Replace stops the running engine and starts one with the new spec.
	Replace Action = "replace"
	// Update records a change that needs no restart (restart policy, sharing, declared VRAM).
	Update Action = "update"
	// Restart starts again an engine that crashed or fails its health check.
	Restart Action = "restart"
	// Create starts an engine for a pool that has none.
	Create Action = "create"
	// Adopt takes over a running engine that matches its pool but is not in the state file.
	Adopt Action = "adopt"
	// Blocked: the pool will not run, and why.
	Blocked Action = "blocked"
)

// Symbol is the action's mark in the text rendering.
func (a Action) Symbol() string {
	switch a {
	case Create:
		return "+"
	case Update:
		return "~"
	case Replace:
		return "-/+"
	case Delete:
		return "-"
	case Restart:
		return "↻"
	case Adopt:
		return "←"
	case Blocked:
		return "!"
	}
	return "?"
}

func (a Action) order() int {
	for i, x := range []Action{Delete, Replace, Update, Restart, Create, Adopt, Blocked} {
		if a == x {
			return i
		}
	}
	return 99
}

// Change is one pool's line in a plan.
type Change struct {
	Action Action        `json:"action"`
	Pool   string        `json:"pool"`
	Engine schema.Engine `json:"engine,omitempty"`
	// Devices is the pool's device mask (the running engine's, for a delete).
	Devices []int `json:"devices,omitempty"`
	// Reasons say why, for people; apply never reads them.
	Reasons []string `json:"reasons,omitempty"`
	// Fields are the spec fields that differ from the running engine's (update, replace).
	Fields []FieldChange `json:"fields,omitempty"`
	// Blocker says why a blocked pool will not run.
	Blocker *Blocker `json:"blocker,omitempty"`
	// NotBefore is when the backoff allows a restart (or the next try of a
	// replace whose start failed while its engine ran).
	NotBefore *time.Time `json:"notBefore,omitempty"`
	// Need is the VRAM the start needs on each masked GPU, against what is free.
	Need []GPUNeed `json:"need,omitempty"`
	// RAM is the host RAM the start needs, against what is available; absent
	// where the host's memory is not observed (--gpus declared, a simulated
	// node made without --ram).
	RAM *RAMNeed `json:"ram,omitempty"`
	// Fetch is the model download the start makes first: its model has a
	// source and is not in the node's model cache. Absent when it is
	// there, when the pool has a model.path, and for blocked pools.
	Fetch *ModelFetch `json:"fetch,omitempty"`
	// PID is the running engine's process (delete, replace, adopt).
	PID int `json:"pid,omitempty"`
	// Spec is the pool spec to run (create, replace, update, restart, adopt).
	Spec *schema.Pool `json:"spec,omitempty"`
	// SpecHash identifies Spec.
	SpecHash string `json:"specHash,omitempty"`
}

// ModelFetch is a model a start downloads into the node's model cache
// before it spawns the engine.
type ModelFetch struct {
	// Source is the pool's model.source, as written.
	Source string `json:"source"`
	// Digest is the model's digest (schema.Model.Digest): the file's sha256,
	// or a model directory's manifest digest.
	Digest string `json:"digest"`
	// Bytes is the size to download, from the manifest's declared sizes or
	// what the source told; 0 (absent) when unknown.
	Bytes int64 `json:"bytes,omitempty"`
}

// FieldChange is one field of a pool spec that changes, with its old and new value as JSON.
type FieldChange struct {
	Path string `json:"path"`
	Old  string `json:"old"`
	New  string `json:"new"`
}

// Blocker is why a pool will not run: an error class, a message and a hint a person can act on.
type Blocker struct {
	Class   string `json:"class"`
	Message string `json:"message"`
	Hint    string `json:"hint,omitempty"`
}

// The classes of blockers found at plan time.
const (
	ClassInsufficientVRAM  = "insufficient_vram"
	ClassInsufficientRAM   = restart.ClassInsufficientRAM
	ClassCircuitOpen       = "circuit_open"
	ClassMaskConflict      = "mask_conflict"
	ClassInventory         = "inventory_mismatch"
	ClassUnknownNeed       = "unknown_vram_need"
	ClassGPULost           = "gpu_lost"
	ClassUnknownGPU        = "unknown_gpu"
	ClassForeignProcess    = "foreign_process"
	ClassMaskViolation     = "mask_violation"
	ClassEngineUnreachable = "engine_unhealthy"
	// ClassAwaitingRemoval: the memory a start needs is held by a pool
	// that has left the config and is stopped once its removal settles
	// (Desired.Settling). Not a failure: the start waits for it.
	ClassAwaitingRemoval = "awaiting_removal"
	// ClassModelNotCached: offline, and the model of a pool with a source
	// is not in the node's model cache (the fetcher's class of that failure).
	ClassModelNotCached = "model_not_cached"
)

// GPUNeed is a start's VRAM need on one GPU against what will be free for it.
type GPUNeed struct {
	Index int    `json:"index"`
	UUID  string `json:"uuid,omitempty"`
	Need  uint64 `json:"need"`
	// Free is the GPU's free memory plus what this plan frees on it before the
	// start, less what earlier starts of the plan take.
	Free uint64 `json:"free"`
}

// NodePlan is what pool-managerd will do on a node, and why: the result of Plan.
type NodePlan struct {
	FormatVersion int    `json:"formatVersion"`
	Node          string `json:"node"`
	// Config is the config directory the plan was made from (absolute), so
	// that apply can check the config has not changed since.
	Config string `json:"config,omitempty"`
	// Source says where the GPUs were observed.
	Source    string    `json:"source"`
	CreatedAt time.Time `json:"createdAt"`
	// DesiredHash and ObservedHash identify the states the plan was made
	// from; apply refuses a plan whose states have changed since.
	DesiredHash  string   `json:"desiredHash"`
	ObservedHash string   `json:"observedHash"`
	Changes      []Change `json:"changes"`
	// Unchanged lists the pools that need nothing, with what they are doing.
	Unchanged []Unchanged `json:"unchanged"`
	// Warnings are findings that change nothing: a process outside its mask,
	// a GPU the config does not declare.
	Warnings []string `json:"warnings"`
	Summary  Summary  `json:"summary"`
}

// Unchanged is a pool that needs nothing.
type Unchanged struct {
	Pool   string `json:"pool"`
	PID    int    `json:"pid,omitempty"`
	Status string `json:"status"`
	// Health is the engine's health: loading while it preloads (apply waits for it).
	Health Health `json:"health,omitempty"`
}

// Summary counts a plan's changes.
type Summary struct {
	Create     int `json:"create"`
	Update     int `json:"update"`
	Replace    int `json:"replace"`
	Delete     int `json:"delete"`
	Restart    int `json:"restart"`
	Adopt      int `json:"adopt"`
	Blocked    int `json:"blocked"`
	Unchanged  int `json:"unchanged"`
	OtherNodes int `json:"otherNodes"`
}

// HasChanges reports whether applying the plan would do anything.
func (p *NodePlan) HasChanges() bool {
	for _, c := range p.Changes {
		if c.Action != Blocked {
			return true
		}
	}
	return false
}

// Plan works out what to do on the node: a pure function of the desired
// state, the observed state and the time.
func Plan(desired Desired, observed Observed, now time.Time) *NodePlan {
	p := &planner{
		desired:  desired,
		observed: observed,
		now:      now,
		owned:    observed.ownedPIDs(),
		free:     map[int]uint64{},
	}
	return p.plan()
}

type planner struct {
	desired  Desired
	observed Observed
	now      time.Time
	// owned maps the pids of live engines to their pools.
	owned map[int]string
	// free tracks each GPU's memory free for starts as the plan goes: the
	// observed free memory, plus what stops free, less what starts take.
	free map[int]uint64
	// ramFree is the host RAM free for starts as the plan goes: the
	// observed available memory plus what deletes free (0 when the host's
	// memory is not observed).
	ramFree  uint64
	changes  []Change
	warnings []string
	// badGPUs are GPUs whose declared and observed inventories differ, with why.
	badGPUs map[int]string
}

func (p *planner) plan() *NodePlan {
	for _, d := range p.observed.GPUs {
		p.free[d.Index] = d.MemoryFree
	}
	if p.observed.Host != nil {
		p.ramFree = p.observed.Host.Available
	}
	p.checkInventory()
	p.checkProcesses()

	var unchanged []Unchanged
	// Stops first: they free memory that starts may need.
	for _, id := range slices.Sorted(maps.Keys(p.observed.Engines)) {
		e := p.observed.Engines[id]
		if _, wanted := p.desired.Pools[id]; wanted {
			continue
		}
		reason := "pool is no longer in the config"
		if p.desired.OtherPools > 0 && e.Spec != nil && e.Spec.Node != p.desired.Node {
			reason = fmt.Sprintf("pool now belongs to node %s", e.Spec.Node)
		}
		c := Change{Action: Delete, Pool: id, PID: e.PID, Reasons: []string{reason}}
		if e.Spec != nil {
			c.Engine, c.Devices = e.Spec.Engine, e.Spec.Devices
		}
		if !e.Alive {
			c.PID = 0
			c.Reasons = append(c.Reasons, "its engine is not running: only its record is removed")
		}
		p.release(e)
		p.changes = append(p.changes, c)
	}
	var starts []Change
	for _, id := range slices.Sorted(maps.Keys(p.desired.Pools)) {
		pool := p.desired.Pools[id]
		c, u := p.decide(pool)
		switch {
		case u != nil:
			unchanged = append(unchanged, *u)
		case c.Action == Create || c.Action == Replace || c.Action == Restart:
			starts = append(starts, c)
		default:
			p.changes = append(p.changes, c)
		}
	}
	p.changes = append(p.changes, p.bookVRAM(starts)...)
	sort.SliceStable(p.changes, func(i, j int) bool {
		a, b := p.changes[i], p.changes[j]
		if a.Action.order() != b.Action.order() {
			return a.Action.order() < b.Action.order()
		}
		return a.Pool < b.Pool
	})
	sort.Slice(unchanged, func(i, j int) bool { return unchanged[i].Pool < unchanged[j].Pool })
	out := &NodePlan{
		FormatVersion: FormatVersion,
		Node:          p.desired.Node,
		Source:        p.observed.Source,
		CreatedAt:     p.now.UTC(),
		DesiredHash:   DesiredHash(p.desired),
		ObservedHash:  ObservedHash(p.observed),
		Changes:       p.changes,
		Unchanged:     unchanged,
		Warnings:      p.warnings,
	}
	if out.Changes == nil {
		out.Changes = []Change{}
	}
	if out.Unchanged == nil {
		out.Unchanged = []Unchanged{}
	}
	if out.Warnings == nil {
		out.Warnings = []string{}
	}
	out.Summary = summarize(out, p.desired.OtherPools)
	return out
}

func summarize(p *NodePlan, otherPools int) Summary {
	s := Summary{Unchanged: len(p.Unchanged), OtherNodes: otherPools}
	for _, c := range p.Changes {
		switch c.Action {
		case Create:
			s.Create++
		case Update:
			s.Update++
		case Replace:
			s.Replace++
		case Delete:
			s.Delete++
		case Restart:
			s.Restart++
		case Adopt:
			s.Adopt++
		case Blocked:
			s.Blocked++
		}
	}
	return s
}

// decide turns the pool's lifecycle status into its change, or its
// unchanged line. The lifecycle decides what comes next; the plan adds
// what depends on the node as a whole: the GPUs and their memory.
func (p *planner) decide(pool *schema.Pool) (Change, *Unchanged) {
	e, known := p.observed.Engines[pool.ID]
	facts := Facts{Spec: pool, History: p.observed.Pools[pool.ID]}
	if known {
		facts.Engine = &e
	}
	st := Lifecycle(facts, p.now)
	hash := SpecHash(pool)
	c := Change{Pool: pool.ID, Engine: pool.Engine, Devices: pool.Devices, Spec: pool, SpecHash: hash, Reasons: []string{st.Reason}}
	switch st.Next {
	case NextNone, NextAwait:
		u := &Unchanged{Pool: pool.ID, PID: e.PID, Status: st.Reason, Health: e.Health}
		if st.Next == NextAwait {
			u.Health = HealthLoading
		}
		return c, u
	case NextUpdate:
		c.Action, c.PID, c.Fields = Update, e.PID, diffSpecs(e.Spec, pool)
		return c, nil
	case NextAdopt:
		c.Action, c.PID = Adopt, e.PID
		return c, nil
	case NextBlocked:
		c.Action, c.Reasons = p.startReasons(pool, e, known)
		at := st.At.UTC()
		c.NotBefore = &at
		p.block(&c, &Blocker{Class: ClassCircuitOpen, Message: st.Reason, Hint: fmt.Sprintf("fix the config or run pool-managerd reset %s", pool.ID)})
		return c, nil
	case NextReplace:
		c.Action, c.PID, c.Fields = Replace, e.PID, diffSpecs(e.Spec, pool)
		if !st.At.IsZero() {
			// Its start failed while the engine ran: the next try waits
			// for the backoff (the engine serves meanwhile).
			at := st.At.UTC()
			c.NotBefore = &at
		}
	case NextRestart:
		c.Action, c.PID = Restart, e.PID
	case NextStart, NextWait, NextRecordExit:
		c.Action, c.Reasons = p.startReasons(pool, e, known)
		if c.Action == Replace {
			c.Fields = diffSpecs(e.Spec, pool)
		}
		if b := p.observed.Pools[pool.ID].BreakerState; b == restart.Open.String() || b == restart.HalfOpen.String() {
			if known && e.SpecHash != hash {
				c.Reasons = append(c.Reasons, "the config changed: the circuit breaker closes")
			} else {
				c.Reasons = append(c.Reasons, "circuit half-open: one try")
			}
		}
		if st.Next == NextWait {
			at := st.At.UTC()
			c.NotBefore = &at
			c.Reasons = append(c.Reasons, st.Reason)
		}
	}
	p.addModel(pool, &c)
	if b := p.precheck(pool, &c); b != nil {
		p.block(&c, b)
	}
	return c, nil
}

// addModel adds to a start what its fetched model (model.source) brings:
// the download when the model is not in the cache (or, offline, why the
// start will fail) and the remote lookup's warnings.
func (p *planner) addModel(pool *schema.Pool, c *Change) {
	m := pool.Model
	if m.Source == "" {
		return
	}
	need := p.desired.Needs[pool.ID]
	for _, w := range need.Warnings {
		c.Reasons = append(c.Reasons, "warning: "+w)
	}
	digest := m.Digest()
	if _, cached := p.observed.Models[digest]; cached {
		return
	}
	if p.observed.Offline {
		c.Reasons = append(c.Reasons, "offline: the model is not in the model cache, so apply and serve fail this pool ("+ClassModelNotCached+") until it is fetched")
		return
	}
	f := &ModelFetch{Source: m.Source, Digest: digest, Bytes: need.Bytes}
	if f.Bytes <= 0 {
		f.Bytes = manifestBytes(m)
	}
	c.Fetch = f
}

// manifestBytes is the size of a model directory's files as its manifest
// declares them; 0 when one has no size (or for a single file).
func manifestBytes(m schema.Model) int64 {
	var sum int64
	for _, f := range m.Files {
		if f.Size <= 0 {
			return 0
		}
		sum += f.Size
	}
	return sum
}

// startReasons says why a pool whose engine does not run is started: a
// create, a restart of a dead engine, or its replace when its spec changed.
func (p *planner) startReasons(pool *schema.Pool, e Engine, known bool) (Action, []string) {
	switch {
	case !known:
		return Create, []string{"no engine runs this pool"}
	case e.Intent:
		return Create, []string{"an earlier start was recorded but no engine process was found"}
	case e.SpecHash != SpecHash(pool):
		return Replace, []string{exitReason(&e), "and its spec changed"}
	}
	return Restart, []string{exitReason(&e)}
}

func (p *planner) block(c *Change, b *Blocker) {
	c.Blocker = b
	c.Reasons = append(c.Reasons, "blocked: "+b.Message)
	c.Action = Blocked
	c.PID = 0
	c.Need = nil
	c.RAM = nil
	c.Fetch = nil
}

// precheck says why a start cannot go ahead, whatever the memory: a GPU
// that is lost, unknown or not as declared, a process pool-managerd does
// not own, an unknown need. (The breaker and the backoff are the
// lifecycle's.)
func (p *planner) precheck(pool *schema.Pool, c *Change) *Blocker {
	for _, idx := range pool.Devices {
		d, ok := p.observed.device(idx)
		switch {
		case ok && d.Lost:
			return &Blocker{Class: ClassGPULost, Message: fmt.Sprintf("GPU %d is lost: the driver reports it off the bus or in need of a reset", idx),
				Hint: "reset the GPU (nvidia-smi -r) or reboot; check dmesg for Xid errors"}
		case !ok:
			if why, bad := p.badGPUs[idx]; bad {
				return &Blocker{Class: ClassInventory, Message: why, Hint: "update the node's declared GPUs (pool-managerd inventory prints them) or check the hardware"}
			}
			return &Blocker{Class: ClassUnknownGPU, Message: fmt.Sprintf("GPU %d is not on this node (observed GPUs: %s)", idx, deviceList(p.observed.GPUs)),
				Hint: "change devices, or declare the node's real GPUs"}
		}
		if why, bad := p.badGPUs[idx]; bad {
			return &Blocker{Class: ClassInventory, Message: why, Hint: "update the node's declared GPUs (pool-managerd inventory prints them) or check the hardware"}
		}
		for _, proc := range d.Processes {
			if _, ours := p.owned[proc.PID]; !ours {
				return &Blocker{Class: ClassForeignProcess,
					Message: fmt.Sprintf("GPU %d holds a process pool-managerd does not own (pid %d, %s)", idx, proc.PID, gib(proc.UsedBytes)),
					Hint:    "stop that process or take the GPU out of devices"}
			}
		}
	}
	need, known := p.desired.Needs[pool.ID]
	if known && need.Err != "" && strings.HasPrefix(p.observed.Source, "declared") {
		// A pull-request check runs where the model files are not: the need
		// is checked on the node itself.
		c.Reasons = append(c.Reasons, "VRAM need not checked here: "+need.Err)
		return nil
	}
	if known && need.Deferred != "" {
		// Checked before the engine starts, once the model is fetched.
		c.Reasons = append(c.Reasons, "VRAM need not checked here: "+need.Deferred)
		return nil
	}
	if !known || need.Err != "" || len(need.PerGPU) != len(pool.Devices) {
		msg := "the VRAM need is unknown"
		if need.Err != "" {
			msg = "the VRAM need is unknown: " + need.Err
		}
		return &Blocker{Class: ClassUnknownNeed, Message: msg, Hint: "make the model file readable, or declare vram for the pool"}
	}
	return nil
}

// bookVRAM checks each start's need against the memory free for it: the
// GPUs' free memory, plus what every stop of the plan frees (apply stops
// first, and a replace or restart stops its own engine), less what earlier
// starts take. A replace or restart blocked for memory keeps its engine, so
// its memory is not freed after all: booking is redone without it until it
// settles, and then each such pool is tried again, in case the memory of
// another one kept running was what it lacked.
func (p *planner) bookVRAM(starts []Change) []Change {
	keeps := map[string]bool{} // replaces and restarts whose engines keep running
	out, _ := p.bookSettled(starts, keeps)
	for _, c := range starts {
		if !keeps[c.Pool] {
			continue
		}
		delete(keeps, c.Pool)
		if trial, grew := p.bookSettled(starts, keeps); !grew {
			out = trial
			continue
		}
		keeps[c.Pool] = true
	}
	return out
}

// bookSettled books the starts, adding to keeps every replace or restart
// that does not fit until none is added; grew says whether keeps grew.
func (p *planner) bookSettled(starts []Change, keeps map[string]bool) ([]Change, bool) {
	grew := false
	for {
		out, failed := p.book(starts, keeps)
		if failed == "" {
			return out, grew
		}
		keeps[failed] = true
		grew = true
	}
}

// book makes one booking pass. It stops at the first replace or restart
// that does not fit (its engine must keep running) and returns its pool.
func (p *planner) book(starts []Change, keeps map[string]bool) ([]Change, string) {
	free := map[int]uint64{}
	for idx, f := range p.free {
		free[idx] = f
	}
	ram := p.ramFree
	for _, c := range starts {
		e := p.observed.Engines[c.Pool]
		// A running engine stops before its pool restarts; a dead one's
		// leftover workers are killed.
		if c.Action != Blocked && (c.PID != 0 || (!e.Alive && len(e.PIDs) > 0)) && !keeps[c.Pool] {
			for idx, b := range p.observed.heldBy(e) {
				free[idx] += b
			}
			if c.PID != 0 {
				ram += p.ramHeldBy(e)
			}
		}
	}
	out := make([]Change, len(starts))
	copy(out, starts)
	// Pools that run now (replaces, restarts) are placed first: the memory
	// their own engines free is theirs before any new pool's.
	order := make([]int, 0, len(starts))
	for pass := 0; pass < 2; pass++ {
		for i, c := range starts {
			if (c.PID != 0) == (pass == 0) {
				order = append(order, i)
			}
		}
	}
	for _, i := range order {
		c := starts[i]
		if c.Action == Blocked {
			continue
		}
		if keeps[c.Pool] {
			continue // placed last, below
		}
		need, ok := p.desired.Needs[c.Pool]
		if !ok || need.Err != "" || need.Deferred != "" {
			continue // a pull-request check, or a model not fetched yet: not known here
		}
		out[i].Need = make([]GPUNeed, len(c.Spec.Devices))
		for j, idx := range c.Spec.Devices {
			d, _ := p.observed.device(idx)
			out[i].Need[j] = GPUNeed{Index: idx, UUID: d.UUID, Need: need.PerGPU[j], Free: free[idx]}
		}
		b := p.vramBlocker(out[i], free)
		var ramNeed uint64
		if b == nil {
			b, ramNeed = p.ramBlocker(&out[i], ram)
		}
		if b != nil {
			if c.PID != 0 {
				return nil, c.Pool
			}
			p.block(&out[i], b)
			continue
		}
		for j, idx := range c.Spec.Devices {
			free[idx] -= need.PerGPU[j]
		}
		ram -= ramNeed
	}
	// The replaces and restarts that did not fit in their turn: each still
	// goes ahead if what is left, with its own engine's memory, holds it;
	// else its engine keeps running and it is blocked.
	for i, c := range starts {
		if !keeps[c.Pool] || c.Action == Blocked {
			continue
		}
		withOwn := map[int]uint64{}
		for idx, f := range free {
			withOwn[idx] = f
		}
		for idx, b := range p.observed.heldBy(p.observed.Engines[c.Pool]) {
			withOwn[idx] += b
		}
		ramWithOwn := ram + p.ramHeldBy(p.observed.Engines[c.Pool])
		b := p.vramBlocker(c, withOwn)
		var ramNeed uint64
		if b == nil {
			b, ramNeed = p.ramBlocker(&out[i], ramWithOwn)
		}
		if b != nil {
			p.block(&out[i], b)
			continue
		}
		need := p.desired.Needs[c.Pool]
		out[i].Need = make([]GPUNeed, len(c.Spec.Devices))
		for j, idx := range c.Spec.Devices {
			d, _ := p.observed.device(idx)
			out[i].Need[j] = GPUNeed{Index: idx, UUID: d.UUID, Need: need.PerGPU[j], Free: withOwn[idx]}
		}
		ram = ramWithOwn - ramNeed
		for idx := range withOwn {
			free[idx] = withOwn[idx]
		}
		for j, idx := range c.Spec.Devices {
			free[idx] -= need.PerGPU[j]
		}
	}
	return out, ""
}

// vramBlocker says which masked GPU lacks the memory for a start, or nil.
func (p *planner) vramBlocker(c Change, free map[int]uint64) *Blocker {
	need := p.desired.Needs[c.Pool]
	for j, idx := range c.Spec.Devices {
		if j >= len(need.PerGPU) || need.PerGPU[j] <= free[idx] {
			continue
		}
		d, _ := p.observed.device(idx)
		if pools, held := p.settlingOn(idx); free[idx]+held >= need.PerGPU[j] {
			at := p.desired.Settling[pools[0]]
			for _, id := range pools[1:] {
				at = later(at, p.desired.Settling[id])
			}
			return &Blocker{Class: ClassAwaitingRemoval,
				Message: fmt.Sprintf("GPU %d is held by %s, which left the config and is stopped at %s unless it comes back", idx, poolList(pools), at.UTC().Format(time.RFC3339)),
				Hint:    "nothing to do: the pool starts once the removal settles (serve --removal-settle)"}
		}
		model := ""
		if src := c.Spec.Model.Source; src != "" {
			model = " for " + src
		}
		return &Blocker{Class: ClassInsufficientVRAM,
			Message: fmt.Sprintf("insufficient VRAM on GPU %d (%s): needs %s%s at ctx %d, %s free", idx, GPUSize(d.Name, d.MemoryTotal), gib(need.PerGPU[j]), model, c.Spec.Model.Ctx, gib(free[idx])),
			Hint:    VRAMHint(c.Spec)}
	}
	return nil
}

// settlingOn returns the pools pending removal that hold memory on GPU idx,
// sorted, and how much they hold together.
func (p *planner) settlingOn(idx int) ([]string, uint64) {
	var pools []string
	var held uint64
	for _, id := range slices.Sorted(maps.Keys(p.desired.Settling)) {
		e, ok := p.observed.Engines[id]
		if !ok || !e.Alive {
			continue
		}
		if b := p.observed.heldBy(e)[idx]; b > 0 {
			pools = append(pools, id)
			held += b
		}
	}
	return pools, held
}

func later(a, b time.Time) time.Time {
	if b.After(a) {
		return b
	}
	return a
}

func poolList(pools []string) string {
	if len(pools) == 1 {
		return "pool " + pools[0]
	}
	return "pools " + strings.Join(pools, ", ")
}

// VRAMHint is the hint for a pool that lacks GPU memory: what to change in its spec.
func VRAMHint(pool *schema.Pool) string {
	if len(pool.Devices) > 1 && pool.Engine == schema.EngineLlamaCpp {
		return "lower ctx, move the split toward the larger GPU, or pick a smaller quantisation"
	}
	return "lower ctx, add GPUs to devices, or pick a smaller model or quantisation"
}

// release counts the memory a stopped engine frees.
func (p *planner) release(e Engine) {
	for idx, b := range p.observed.heldBy(e) {
		p.free[idx] += b
	}
	p.ramFree += p.ramHeldBy(e)
}

// checkInventory compares the declared inventory with the observed GPUs.
func (p *planner) checkInventory() {
	p.badGPUs = map[int]string{}
	decl := p.desired.Declared
	if decl == nil || strings.HasPrefix(p.observed.Source, "declared") {
		return
	}
	for _, g := range decl.GPUs {
		d, ok := p.observed.device(g.Index)
		switch {
		case ok && d.Lost:
			// A lost GPU reports neither UUID nor memory: blocked as lost, not as a mismatch.
		case !ok:
			p.badGPUs[g.Index] = fmt.Sprintf("declared inventory differs from the observed one: GPU %d is declared but not observed", g.Index)
		case g.UUID != "" && !strings.EqualFold(g.UUID, d.UUID):
			p.badGPUs[g.Index] = "declared inventory differs from the observed one: " + inventoryMismatch(g, d)
		case !d.Lost && !closeEnough(uint64(g.VRAM), d.MemoryTotal):
			p.badGPUs[g.Index] = "declared inventory differs from the observed one: " + inventoryMismatch(g, d)
		}
	}
	for _, d := range p.observed.GPUs {
		if _, ok := decl.GPU(d.Index); !ok {
			p.warnings = append(p.warnings, fmt.Sprintf("GPU %d (%s) is not in node %s's declared inventory", d.Index, GPUSize(d.Name, d.MemoryTotal), decl.Name))
		}
	}
	for _, idx := range slices.Sorted(maps.Keys(p.badGPUs)) {
		p.warnings = append(p.warnings, p.badGPUs[idx])
	}
}

// closeEnough allows the few percent that drivers report below a card's nominal size.
func closeEnough(declared, observed uint64) bool {
	diff := float64(declared) - float64(observed)
	if diff < 0 {
		diff = -diff
	}
	return diff <= 0.05*float64(declared)
}

// checkProcesses warns of engine processes on GPUs outside their masks and of processes nobody owns.
func (p *planner) checkProcesses() {
	for _, d := range p.observed.GPUs {
		for _, proc := range d.Processes {
			id, ours := p.owned[proc.PID]
			if !ours {
				if users := p.poolsOn(d.Index); len(users) > 0 {
					p.warnings = append(p.warnings, fmt.Sprintf("GPU %d holds a process pool-managerd does not own (pid %d, %s), in the mask of %s", d.Index, proc.PID, gib(proc.UsedBytes), strings.Join(users, ", ")))
				}
				continue
			}
			spec := p.observed.Engines[id].Spec
			if spec != nil && !slices.Contains(spec.Devices, d.Index) {
				p.warnings = append(p.warnings, fmt.Sprintf("pool %s: engine process %d holds %s on GPU %d, outside its mask %v", id, proc.PID, gib(proc.UsedBytes), d.Index, spec.Devices))
			}
		}
	}
}

func (p *planner) poolsOn(index int) []string {
	var out []string
	for _, id := range slices.Sorted(maps.Keys(p.desired.Pools)) {
		if slices.Contains(p.desired.Pools[id].Devices, index) {
			out = append(out, "pool "+id)
		}
	}
	return out
}

func deviceList(devs []gpu.Device) string {
	if len(devs) == 0 {
		return "none"
	}
	parts := make([]string, len(devs))
	for i, d := range devs {
		parts[i] = fmt.Sprint(d.Index)
	}
	return strings.Join(parts, ", ")
}

// gib formats bytes as GiB with one decimal, as people read GPU memory.
func gib(b uint64) string {
	return fmt.Sprintf("%.1f GiB", float64(b)/(1<<30))
}
