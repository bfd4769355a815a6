package reconcile

import (
	"bytes"
	"encoding/json"
	"fmt"
	"maps"
	"math/rand/v2"
	"os"
	"slices"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/poolmanagerd/pool-managerd/drivers/engine/vram"
	"github.com/poolmanagerd/pool-managerd/drivers/gpu"
	"github.com/poolmanagerd/pool-managerd/reconcile/restart"
	"github.com/poolmanagerd/pool-managerd/schema"
)

// The property test generates random but coherent desired and observed states
// of one node (as internal/observe would produce them), plans, checks the
// plan, applies it with a model of apply (applyModel), and plans again.
//
// Reproduce one case with
//
//	POOL_MANAGERD_PROPERTY_CASE=SEED/CASE go test ./reconcile -run TestPlanProperties -v
//
// and run more cases with POOL_MANAGERD_PROPERTY_CASES=N.
const (
	propertySeed  = 20261127
	propertyCases = 2000
	// propertyRounds bounds how many plan-and-apply rounds a case may take
	// to reach a plan with nothing to do.
	propertyRounds = 6
)

// ignoreSource compares pools without their (unexported) source positions.
var ignoreSource = cmp.Comparer(func(a, b schema.Source) bool { return true })

var propertyNow = time.Date(2026, 11, 27, 12, 0, 0, 0, time.UTC)

func TestPlanProperties(t *testing.T) {
	seed, first, cases := uint64(propertySeed), 0, propertyCases
	if v := os.Getenv("POOL_MANAGERD_PROPERTY_CASES"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil {
			t.Fatalf("POOL_MANAGERD_PROPERTY_CASES=%q: %v", v, err)
		}
		cases = n
	}
	if v := os.Getenv("POOL_MANAGERD_PROPERTY_CASE"); v != "" {
		s, c, ok := strings.Cut(v, "/")
		var err1, err2 error
		seed, err1 = strconv.ParseUint(s, 10, 64)
		first, err2 = strconv.Atoi(c)
		if !ok || err1 != nil || err2 != nil {
			t.Fatalf("POOL_MANAGERD_PROPERTY_CASE=%q: want SEED/CASE", v)
		}
		cases = first + 1
	}
	if testing.Short() {
		cases = min(cases, first+200)
	}
	stats := map[string]int{}
	failed := 0
	for i := first; i < cases; i++ {
		r := rand.New(rand.NewPCG(seed, uint64(i)))
		g := &stateGen{r: r, now: propertyNow, nextPID: 1000}
		desired, observed := g.node()
		if errs := checkCase(desired, observed, propertyNow, stats); len(errs) > 0 {
			failed++
			t.Logf("case %d/%d: %s", seed, i, firstLines(errs))
			if failed <= 3 {
				t.Errorf("case %d/%d (rerun: POOL_MANAGERD_PROPERTY_CASE=%d/%d go test ./reconcile -run TestPlanProperties -v):\n%s\n%s",
					seed, i, seed, i, strings.Join(errs, "\n"), dumpCase(desired, observed))
			}
		}
	}
	if failed > 3 {
		t.Errorf("%d of %d cases failed (the first 3 are shown)", failed, cases-first)
	}
	keys := slices.Sorted(maps.Keys(stats))
	var b strings.Builder
	for _, k := range keys {
		fmt.Fprintf(&b, " %s=%d", k, stats[k])
	}
	t.Logf("%d cases; changes and blockers seen:%s", cases-first, b.String())
	// The generator must reach every action and the blockers it can produce,
	// or the properties prove little.
	for _, k := range []string{"create", "update", "replace", "delete", "restart", "adopt", "blocked", "unchanged", "notBefore",
		"blocked:" + ClassInsufficientVRAM, "blocked:" + ClassCircuitOpen, "blocked:" + ClassInventory, "blocked:" + ClassUnknownNeed,
		"blocked:" + ClassGPULost, "blocked:" + ClassUnknownGPU, "blocked:" + ClassForeignProcess} {
		if stats[k] == 0 && cases-first >= propertyCases {
			t.Errorf("the generator never produced %s", k)
		}
	}
}

// checkCase plans one case and checks every property; it returns the violations.
func checkCase(desired Desired, observed Observed, now time.Time, stats map[string]int) []string {
	var errs []string
	fail := func(format string, args ...any) { errs = append(errs, fmt.Sprintf(format, args...)) }

	dBefore, oBefore := cloneDesired(desired), cloneObserved(observed)
	plan := Plan(desired, observed, now)
	if diff := cmp.Diff(dBefore, desired, ignoreSource); diff != "" {
		fail("Plan changed its desired input:\n%s", diff)
	}
	if diff := cmp.Diff(oBefore, observed, ignoreSource); diff != "" {
		fail("Plan changed its observed input:\n%s", diff)
	}
	// Deterministic: two calls give equal plans.
	if diff := cmp.Diff(plan, Plan(desired, observed, now), ignoreSource); diff != "" {
		fail("a second Plan on the same input differs:\n%s", diff)
	}
	for _, c := range plan.Changes {
		stats[string(c.Action)]++
		if c.Blocker != nil {
			stats["blocked:"+c.Blocker.Class]++
		}
		if c.NotBefore != nil {
			stats["notBefore"]++
		}
	}
	stats["unchanged"] += len(plan.Unchanged)
	errs = append(errs, checkPlan(desired, observed, plan)...)
	if len(errs) > 0 {
		return append(errs, "plan:\n"+planText(plan))
	}

	// Apply and plan again. The first apply must be enough: a second apply
	// plans nothing (PM-1020), and the pools blocked stay blocked for the
	// same reasons: applying a plan changes nothing that blocked a pool (a
	// pool blocked for VRAM is checked against every byte the plan frees,
	// less what the starts before it take, which is at least what is free
	// after the apply).
	//
	blocked1 := blockedClasses(plan)
	cur, curPlan := observed, plan
	for round := 1; round <= propertyRounds; round++ {
		// Apply stops every engine the plan stops before it starts any.
		next, err := applyModel(cur, curPlan, true)
		if err != nil {
			fail("round %d: applying the plan: %v", round, err)
			break
		}
		nextPlan := Plan(desired, next, now)
		if verrs := checkPlan(desired, next, nextPlan); len(verrs) > 0 {
			fail("round %d: the plan after apply breaks a property:\n%s", round, strings.Join(verrs, "\n"))
		}
		if round == 1 {
			blocked2 := blockedClasses(nextPlan)
			if nextPlan.HasChanges() {
				fail("a second plan, after applying the first, still has changes (%s):\n%s", changeList(nextPlan, plan), planText(nextPlan))
			}
			if !maps.Equal(blocked1, blocked2) {
				fail("the second plan's blocked pools differ from the first's (first %v, second %v; first plan %s)", blocked1, blocked2, changeList(plan, nil))
			}
		}
		cur, curPlan = next, nextPlan
		if !nextPlan.HasChanges() {
			stats[fmt.Sprintf("converged in %d rounds", round)]++
			break
		}
		if round == propertyRounds {
			fail("still changes after %d rounds of plan and apply:\n%s", propertyRounds, planText(nextPlan))
		}
	}
	if len(errs) > 0 {
		errs = append(errs, "first plan:\n"+planText(plan))
	}
	return errs
}

// checkPlan checks the properties every single plan has.
func checkPlan(desired Desired, observed Observed, plan *NodePlan) []string {
	var errs []string
	fail := func(format string, args ...any) { errs = append(errs, fmt.Sprintf(format, args...)) }

	if plan.FormatVersion != FormatVersion || plan.Node != desired.Node || plan.Source != observed.Source || !plan.CreatedAt.Equal(propertyNow) {
		fail("plan header: version %d node %q source %q createdAt %v", plan.FormatVersion, plan.Node, plan.Source, plan.CreatedAt)
	}
	if plan.DesiredHash != DesiredHash(desired) || plan.ObservedHash != ObservedHash(observed) {
		fail("plan hashes do not identify its inputs")
	}

	// Every desired pool appears exactly once in changes or unchanged; an
	// undesired one only as a delete, and every undesired engine is deleted.
	seen := map[string]int{}
	for _, c := range plan.Changes {
		seen[c.Pool]++
		_, wanted := desired.Pools[c.Pool]
		if !wanted && c.Action != Delete {
			fail("pool %s is not desired on this node but gets %s", c.Pool, c.Action)
		}
		if wanted && c.Action == Delete {
			fail("desired pool %s is deleted", c.Pool)
		}
		if c.Action == Delete {
			if _, ok := observed.Engines[c.Pool]; !ok {
				fail("delete of pool %s, which has no engine", c.Pool)
			}
		}
	}
	for _, u := range plan.Unchanged {
		seen[u.Pool]++
		if _, wanted := desired.Pools[u.Pool]; !wanted {
			fail("pool %s is not desired on this node but is listed unchanged", u.Pool)
		}
	}
	for id := range desired.Pools {
		if seen[id] != 1 {
			fail("desired pool %s appears %d times in the plan, want once", id, seen[id])
		}
	}
	for id := range observed.Engines {
		if _, wanted := desired.Pools[id]; !wanted && seen[id] != 1 {
			fail("undesired engine %s appears %d times in the plan, want once (delete)", id, seen[id])
		}
	}

	// Changes are ordered delete, replace, update, restart, create, adopt,
	// blocked; by pool within an action. Unchanged is sorted by pool.
	order := []Action{Delete, Replace, Update, Restart, Create, Adopt, Blocked}
	for i := 1; i < len(plan.Changes); i++ {
		a, b := plan.Changes[i-1], plan.Changes[i]
		ia, ib := slices.Index(order, a.Action), slices.Index(order, b.Action)
		if ia < 0 || ib < 0 || ia > ib || (ia == ib && a.Pool >= b.Pool) {
			fail("changes out of order: %s %s before %s %s", a.Action, a.Pool, b.Action, b.Pool)
		}
	}
	if !sort.SliceIsSorted(plan.Unchanged, func(i, j int) bool { return plan.Unchanged[i].Pool < plan.Unchanged[j].Pool }) {
		fail("unchanged pools are not sorted")
	}

	// Each change is complete for its action.
	for _, c := range plan.Changes {
		pool := desired.Pools[c.Pool]
		e, known := observed.Engines[c.Pool]
		switch c.Action {
		case Delete:
			if c.Spec != nil || c.Blocker != nil || len(c.Need) > 0 {
				fail("delete %s carries a spec, blocker or need", c.Pool)
			}
			if e.Alive && c.PID != e.PID || !e.Alive && c.PID != 0 {
				fail("delete %s: pid %d, engine pid %d alive %v", c.Pool, c.PID, e.PID, e.Alive)
			}
		case Blocked:
			if c.Blocker == nil || !slices.Contains(blockerClasses, c.Blocker.Class) || c.Blocker.Message == "" {
				fail("blocked %s without a known blocker: %+v", c.Pool, c.Blocker)
			}
		default:
			if c.Blocker != nil {
				fail("%s %s carries a blocker", c.Action, c.Pool)
			}
		}
		if c.Action != Delete {
			if c.Spec != pool {
				fail("%s %s: spec is not the desired pool", c.Action, c.Pool)
			}
			if c.SpecHash != SpecHash(pool) {
				fail("%s %s: specHash is not the desired pool's", c.Action, c.Pool)
			}
			if c.Engine != pool.Engine || !slices.Equal(c.Devices, pool.Devices) {
				fail("%s %s: engine/devices %s %v, pool has %s %v", c.Action, c.Pool, c.Engine, c.Devices, pool.Engine, pool.Devices)
			}
		}
		switch c.Action {
		case Create, Replace, Restart:
			if need := desired.Needs[c.Pool]; need.Err != "" && strings.HasPrefix(observed.Source, "declared") {
				// A pull-request check goes ahead without the need (the model files are on the node).
				if len(c.Need) != 0 {
					fail("%s %s: need %v although it is unknown", c.Action, c.Pool, c.Need)
				}
				continue
			}
			if len(c.Need) != len(pool.Devices) {
				fail("%s %s: need for %d GPUs, mask has %d", c.Action, c.Pool, len(c.Need), len(pool.Devices))
				continue
			}
			for i, n := range c.Need {
				if n.Index != pool.Devices[i] || n.Need != desired.Needs[c.Pool].PerGPU[i] || n.Need > n.Free {
					fail("%s %s: need %+v on GPU %d (need %d)", c.Action, c.Pool, n, pool.Devices[i], desired.Needs[c.Pool].PerGPU[i])
				}
			}
		case Update, Adopt:
			if !known || !e.Alive || c.PID != e.PID || len(c.Need) > 0 {
				fail("%s %s: engine %+v, pid %d, need %v", c.Action, c.Pool, e, c.PID, c.Need)
			}
		}
		// A replace waits only to try again a spec whose start failed.
		retry := c.Action == Replace && known && e.ReplaceFailed == c.SpecHash
		if c.NotBefore != nil && (c.Action != Restart && c.Action != Create && c.Action != Blocked && !retry || !c.NotBefore.After(propertyNow)) {
			fail("%s %s: notBefore %v", c.Action, c.Pool, c.NotBefore)
		}
	}

	// The VRAM booked on each GPU by the starts that go ahead never exceeds
	// its free memory plus what the plan's stops free on it.
	booked, freed := map[int]uint64{}, map[int]uint64{}
	for _, c := range plan.Changes {
		e := observed.Engines[c.Pool]
		switch c.Action {
		case Delete, Replace, Restart:
			if e.Alive {
				for idx, b := range heldByModel(observed, e) {
					freed[idx] += b
				}
			}
		}
		for _, n := range c.Need {
			if c.Action != Blocked {
				booked[n.Index] += n.Need
			}
		}
	}
	for _, d := range observed.GPUs {
		if booked[d.Index] > d.MemoryFree+freed[d.Index] {
			fail("GPU %d: starts book %s, but only %s is free and the plan's stops free %s", d.Index, gib(booked[d.Index]), gib(d.MemoryFree), gib(freed[d.Index]))
		}
	}

	// The summary counts the changes.
	if want := summarize(plan, desired.OtherPools); plan.Summary != want {
		fail("summary %+v, want %+v", plan.Summary, want)
	}
	if plan.HasChanges() != (len(plan.Changes) > plan.Summary.Blocked) {
		fail("HasChanges %v with %d changes, %d blocked", plan.HasChanges(), len(plan.Changes), plan.Summary.Blocked)
	}

	// The JSON format round-trips, env values hidden, and the specs taken
	// from the config (as apply FILE does) give the plan made.
	var buf bytes.Buffer
	if err := WriteJSON(&buf, plan); err != nil {
		fail("WriteJSON: %v", err)
	} else if back, err := ReadJSON(&buf); err != nil {
		fail("ReadJSON: %v", err)
	} else if diff := cmp.Diff(plan.HideEnvValues(), back, ignoreSource); diff != "" {
		fail("plan JSON does not round-trip (-made +decoded):\n%s", diff)
	} else if err := back.TakeSpecs(desired); err != nil {
		fail("TakeSpecs: %v", err)
	} else if diff := cmp.Diff(plan, back, ignoreSource); diff != "" {
		fail("plan JSON with the config's specs is not the plan made (-made +decoded):\n%s", diff)
	}
	return errs
}

var blockerClasses = []string{ClassInsufficientVRAM, ClassCircuitOpen, ClassMaskConflict, ClassInventory, ClassUnknownNeed,
	ClassGPULost, ClassUnknownGPU, ClassForeignProcess, ClassMaskViolation, ClassEngineUnreachable}

// blockedClasses maps each blocked pool to its blocker's class.
func blockedClasses(p *NodePlan) map[string]string {
	out := map[string]string{}
	for _, c := range p.Changes {
		if c.Action == Blocked {
			out[c.Pool] = c.Blocker.Class
		}
	}
	return out
}

// heldByModel is the memory an engine's processes hold on each GPU, worked
// out independently of the planner's heldBy.
func heldByModel(o Observed, e Engine) map[int]uint64 {
	held := map[int]uint64{}
	for _, d := range o.GPUs {
		for _, p := range d.Processes {
			if p.PID == e.PID || slices.Contains(e.PIDs, p.PID) {
				held[d.Index] += p.UsedBytes
			}
		}
	}
	return held
}

// applyModel is what apply does with a plan, as far as the next plan can
// see it: changes run in the plan's order; a start (create, restart,
// replace) stops the old engine if it runs, then runs an alive, recorded,
// healthy engine with the change's spec under a fresh pid, holding the
// change's need on its GPUs, and clears the pool's backoff and breaker;
// update and adopt record the running engine's new spec; delete stops the
// engine and forgets the pool; blocked does nothing. Restarts with a
// notBefore are applied too (apply waits for them). It fails when a start
// would need more memory than the GPU has free at that point. With
// stopsFirst, every engine the plan stops (deletes, replaces, restarts) is
// stopped before anything starts.
func applyModel(obs Observed, plan *NodePlan, stopsFirst bool) (Observed, error) {
	o := cloneObserved(obs)
	if o.Engines == nil {
		o.Engines = map[string]Engine{}
	}
	if o.Pools == nil {
		o.Pools = map[string]restart.Record{}
	}
	nextPID := 1 << 20
	for _, e := range o.Engines {
		nextPID = max(nextPID, e.PID+1)
		for _, p := range e.PIDs {
			nextPID = max(nextPID, p+1)
		}
	}
	if stopsFirst {
		for _, c := range plan.Changes {
			if e, known := o.Engines[c.Pool]; known && (c.Action == Delete || c.Action == Replace || c.Action == Restart) {
				stopModel(&o, e)
			}
		}
	}
	for _, c := range plan.Changes {
		e, known := o.Engines[c.Pool]
		switch c.Action {
		case Delete:
			if !known {
				return o, fmt.Errorf("delete %s: no engine", c.Pool)
			}
			stopModel(&o, e)
			delete(o.Engines, c.Pool)
			delete(o.Pools, c.Pool)
		case Create, Restart, Replace:
			if known && !stopsFirst {
				stopModel(&o, e)
			}
			pid := nextPID
			nextPID++
			for _, n := range c.Need {
				i := slices.IndexFunc(o.GPUs, func(d gpu.Device) bool { return d.Index == n.Index })
				if i < 0 {
					return o, fmt.Errorf("%s %s: GPU %d is not on the node", c.Action, c.Pool, n.Index)
				}
				d := &o.GPUs[i]
				if d.MemoryFree < n.Need {
					return o, fmt.Errorf("%s %s: GPU %d has %s free when the engine starts, it needs %s (the plan said %s free)",
						c.Action, c.Pool, n.Index, gib(d.MemoryFree), gib(n.Need), gib(n.Free))
				}
				d.MemoryFree -= n.Need
				d.MemoryUsed += n.Need
				d.Processes = append(d.Processes, gpu.Process{PID: pid, UsedBytes: n.Need})
				sort.Slice(d.Processes, func(a, b int) bool { return d.Processes[a].PID < d.Processes[b].PID })
			}
			o.Engines[c.Pool] = Engine{Pool: c.Pool, Generation: e.Generation + 1, SpecHash: c.SpecHash, Spec: c.Spec,
				PID: pid, PIDs: []int{pid}, Port: 20000 + pid%10000, Alive: true, Health: HealthOK, Recorded: true}
			st := o.Pools[c.Pool]
			st.NextRetry, st.BreakerState, st.BreakerRetryAt = time.Time{}, "", time.Time{}
			o.Pools[c.Pool] = st
		case Update, Adopt:
			if !known || !e.Alive || e.PID != c.PID {
				return o, fmt.Errorf("%s %s: the engine is not the one planned", c.Action, c.Pool)
			}
			e.Spec, e.SpecHash, e.Recorded = c.Spec, c.SpecHash, true
			o.Engines[c.Pool] = e
		case Blocked:
		default:
			return o, fmt.Errorf("unknown action %q", c.Action)
		}
	}
	return o, nil
}

// stopModel stops an engine: its processes leave the GPUs. A dead engine has
// nothing to stop (its old pid may belong to another process by now).
func stopModel(o *Observed, e Engine) {
	if !e.Alive {
		return
	}
	for i := range o.GPUs {
		d := &o.GPUs[i]
		kept := d.Processes[:0]
		for _, p := range d.Processes {
			if p.PID == e.PID || slices.Contains(e.PIDs, p.PID) {
				d.MemoryFree += p.UsedBytes
				d.MemoryUsed -= p.UsedBytes
				continue
			}
			kept = append(kept, p)
		}
		d.Processes = kept
	}
}

// stateGen draws random, coherent node states.
type stateGen struct {
	r       *rand.Rand
	now     time.Time
	nextPID int
}

func (g *stateGen) pid() int {
	g.nextPID += 1 + g.r.IntN(5)
	return g.nextPID
}

func (g *stateGen) chance(p float64) bool { return g.r.Float64() < p }

func pick[T any](g *stateGen, xs ...T) T { return xs[g.r.IntN(len(xs))] }

const giB = 1 << 30

// node draws one node's desired and observed states.
func (g *stateGen) node() (Desired, Observed) {
	const node = "gpu-01"
	nGPU := 2 + g.r.IntN(5)
	obs := Observed{Node: node, Source: "sim:/var/lib/pool-managerd/sim", Engines: map[string]Engine{}, Pools: map[string]restart.Record{}}
	// A pull-request check (plan --gpus declared): the declared GPUs, nothing running.
	declaredMode := g.chance(0.05)
	if declaredMode {
		obs.Source = "declared"
	}
	nominal := map[int]uint64{}
	for i := range nGPU {
		total := uint64(8+g.r.IntN(73)) * giB
		nominal[i] = total
		d := gpu.Device{Index: i, UUID: g.uuid(), Name: fmt.Sprintf("NVIDIA Test %dGB", total/giB), MemoryTotal: total}
		if !declaredMode && g.chance(0.04) {
			d.Lost = true
			d.MemoryTotal = 0
		}
		obs.GPUs = append(obs.GPUs, d)
	}

	des := Desired{Node: node, Pools: map[string]*schema.Pool{}, Needs: map[string]Need{}}
	if g.chance(0.3) {
		des.OtherPools = 1 + g.r.IntN(5)
	}
	if declaredMode || g.chance(0.35) {
		decl := &schema.Node{Name: node}
		for _, d := range obs.GPUs {
			decl.GPUs = append(decl.GPUs, schema.GPU{Index: d.Index, UUID: d.UUID, Model: d.Name, VRAM: int64(nominal[d.Index])})
		}
		if !declaredMode && g.chance(0.2) {
			i := g.r.IntN(len(decl.GPUs))
			switch g.r.IntN(3) {
			case 0:
				decl.GPUs[i].UUID = g.uuid()
			case 1:
				decl.GPUs[i].VRAM *= 2
			default:
				decl.GPUs = append(decl.GPUs, schema.GPU{Index: nGPU, UUID: g.uuid(), VRAM: 24 * giB})
			}
		}
		if !declaredMode && g.chance(0.1) && len(decl.GPUs) > 1 {
			decl.GPUs = decl.GPUs[:len(decl.GPUs)-1] // an observed GPU the config does not declare: a warning
		}
		des.Declared = decl
	}

	nPools := g.r.IntN(9)
	for i := range nPools {
		id := fmt.Sprintf("%s-%d", pick(g, "chat", "coder", "embed", "vision", "reason"), i)
		p := g.pool(id, node, nGPU)
		des.Pools[id] = p
		switch x := g.r.Float64(); {
		case x < 0.07:
			des.Needs[id] = Need{Err: "open /models/" + id + ".gguf: no such file or directory"}
		case x < 0.1:
			// no need at all: the caller did not work it out
		default:
			est := vram.Declared(uint64(p.VRAM), p.EffectiveSplit())
			des.Needs[id] = Need{PerGPU: est.PerGPU, Source: est.Source}
		}
	}

	// Engines: for some desired pools, as started from their spec or an older one; and some undesired ones.
	type running struct {
		id   string
		spec *schema.Pool
	}
	var alive []running
	var deadPIDs []int
	for _, id := range slices.Sorted(maps.Keys(des.Pools)) {
		if declaredMode || !g.chance(0.65) {
			continue
		}
		ran := des.Pools[id]
		if g.chance(0.45) {
			ran = g.mutate(ran, nGPU)
		}
		e := Engine{Pool: id, Generation: int64(1 + g.r.IntN(5)), SpecHash: SpecHash(ran), Spec: ran, Port: 18000 + g.r.IntN(1000)}
		switch x := g.r.Float64(); {
		case x < 0.6: // recorded and alive
			g.alive(&e)
			e.Recorded = true
			if ran != des.Pools[id] && g.chance(0.15) {
				e.Spec = nil // a record without its spec
			}
			alive = append(alive, running{id, ran})
		case x < 0.75: // found by its marker only
			g.alive(&e)
			e.Spec = nil
			alive = append(alive, running{id, ran})
		case x < 0.95: // recorded, dead
			e.Recorded = true
			e.PID = g.pid()
			deadPIDs = append(deadPIDs, e.PID)
			if g.chance(0.6) {
				e.Exit = pick(g, "exited with status 1 after 41s", "was killed by signal 9 (OOM killer?)", "exited with status 0")
			}
		default: // start recorded, no process seen
			e.Recorded, e.Intent = true, true
		}
		obs.Engines[id] = e
	}
	for i := range g.r.IntN(3) {
		if declaredMode {
			break
		}
		id := fmt.Sprintf("old-%d", i)
		spec := g.pool(id, node, nGPU)
		if g.chance(0.3) {
			spec.Node = "gpu-02"
		}
		e := Engine{Pool: id, Generation: 1, SpecHash: SpecHash(spec), Spec: spec, Recorded: true}
		switch x := g.r.Float64(); {
		case x < 0.6:
			g.alive(&e)
			alive = append(alive, running{id, spec})
		case x < 0.75:
			g.alive(&e)
			e.Spec, e.Recorded = nil, false
			alive = append(alive, running{id, spec})
		default:
			e.PID = g.pid()
			deadPIDs = append(deadPIDs, e.PID)
		}
		obs.Engines[id] = e
	}

	// GPU memory: the live engines hold about their need on the GPUs of the
	// spec they were started from (within what the GPU has), then foreign
	// processes, then the driver's own overhead.
	left := map[int]uint64{}
	for _, d := range obs.GPUs {
		left[d.Index] = d.MemoryTotal
	}
	place := func(idx int, pid int, want uint64) {
		i := slices.IndexFunc(obs.GPUs, func(d gpu.Device) bool { return d.Index == idx })
		if i < 0 || obs.GPUs[i].Lost {
			return
		}
		b := min(want, left[idx])
		if b == 0 {
			return
		}
		left[idx] -= b
		obs.GPUs[i].Processes = append(obs.GPUs[i].Processes, gpu.Process{PID: pid, UsedBytes: b})
	}
	g.r.Shuffle(len(alive), func(i, j int) { alive[i], alive[j] = alive[j], alive[i] })
	for _, a := range alive {
		e := obs.Engines[a.id]
		need := vram.Declared(uint64(a.spec.VRAM), a.spec.EffectiveSplit()).PerGPU
		for i, idx := range a.spec.Devices {
			want := need[i]
			switch x := g.r.Float64(); {
			case x < 0.15: // more than its need (a leak, or a larger batch)
				want = want * uint64(11+g.r.IntN(10)) / 10
			case x < 0.3: // still loading, or less
				want = want * uint64(1+g.r.IntN(9)) / 10
			}
			pid := e.PID
			if len(e.PIDs) > 1 { // a worker holds the memory
				pid = e.PIDs[1+i%(len(e.PIDs)-1)]
			}
			place(idx, pid, want)
		}
	}
	for range pick(g, 0, 0, 0, 1, 1, 2) {
		if declaredMode {
			break
		}
		place(g.r.IntN(nGPU), g.pid(), uint64(1+g.r.IntN(16))*giB/2)
	}
	if len(deadPIDs) > 0 && g.chance(0.05) {
		// A dead engine's pid, reused by another process on a GPU.
		place(g.r.IntN(nGPU), pick(g, deadPIDs...), uint64(1+g.r.IntN(8))*giB/2)
	}
	for i := range obs.GPUs {
		d := &obs.GPUs[i]
		sort.Slice(d.Processes, func(a, b int) bool { return d.Processes[a].PID < d.Processes[b].PID })
		if d.Lost {
			continue
		}
		for _, p := range d.Processes {
			d.MemoryUsed += p.UsedBytes
		}
		if !declaredMode {
			d.MemoryUsed += min(uint64(g.r.IntN(512))<<20, left[d.Index])
		}
		d.MemoryFree = d.MemoryTotal - d.MemoryUsed
	}

	// Backoff and breakers.
	for _, id := range slices.Concat(slices.Sorted(maps.Keys(des.Pools)), slices.Sorted(maps.Keys(obs.Engines))) {
		if _, done := obs.Pools[id]; done || declaredMode || !g.chance(0.35) {
			continue
		}
		n := g.r.IntN(6)
		st := restart.Record{ConsecutiveFailures: n,
			LastError: &restart.ErrorRecord{Class: "exited", Message: "exited with status 1", Time: g.now.Add(-time.Duration(1+g.r.IntN(120)) * time.Second)}}
		for i := range n {
			st.Failures = append(st.Failures, g.now.Add(-time.Duration(n-i)*time.Minute))
		}
		if g.chance(0.6) {
			st.NextRetry = g.now.Add(time.Duration(g.r.IntN(240)-120) * time.Second)
		}
		if g.chance(0.35) {
			st.BreakerState = "open" // half-open once its retry time has passed
			st.BreakerRetryAt = g.now.Add(time.Duration(g.r.IntN(600)-300) * time.Second)
		}
		obs.Pools[id] = st
	}
	return des, obs
}

// alive makes an engine a live process with its session and a health.
func (g *stateGen) alive(e *Engine) {
	e.Alive = true
	e.PID = g.pid()
	switch g.r.IntN(4) {
	case 0: // only the pid known
	case 1:
		e.PIDs = []int{e.PID}
	default: // workers
		e.PIDs = []int{e.PID}
		for range 1 + g.r.IntN(2) {
			e.PIDs = append(e.PIDs, g.pid())
		}
	}
	e.Health = pick(g, HealthOK, HealthOK, HealthOK, HealthLoading, HealthFailing, "")
}

func (g *stateGen) uuid() string {
	return fmt.Sprintf("GPU-%08x-%04x-%04x-%04x-%012x", g.r.Uint32(), g.r.IntN(1<<16), g.r.IntN(1<<16), g.r.IntN(1<<16), g.r.Uint64()&(1<<48-1))
}

// pool draws a valid pool of the node.
func (g *stateGen) pool(id, node string, nGPU int) *schema.Pool {
	p := &schema.Pool{
		ID: id, Node: node,
		Engine:  pick(g, schema.EngineLlamaCpp, schema.EngineLlamaCpp, schema.EngineVLLM, schema.EngineTGI),
		Model:   schema.Model{Path: "/models/" + id + ".gguf", Ctx: pick(g, 2048, 4096, 8192, 16384, 32768)},
		Devices: g.devices(nGPU),
		VRAM:    int64(1+g.r.IntN(64)) * giB / 2,
		Share:   g.chance(0.3),
		Restart: schema.RestartPolicy{
			InitialBackoff: time.Duration(1+g.r.IntN(5)) * time.Second, MaxBackoff: time.Duration(1+g.r.IntN(5)) * time.Minute,
			Jitter: 0.1, ResetAfter: 5 * time.Minute, StartupTimeout: 10 * time.Minute,
			DrainTimeout: 30 * time.Second, StopGrace: 10 * time.Second,
			Breaker: schema.Breaker{Failures: 5, Window: 10 * time.Minute, Cooldown: 5 * time.Minute},
		},
	}
	if len(p.Devices) > 1 && g.chance(0.4) {
		p.Split = g.split(len(p.Devices))
	}
	if g.chance(0.4) {
		p.Flags = []string{"--parallel", strconv.Itoa(1 + g.r.IntN(8))}
	}
	if g.chance(0.2) {
		p.Env = map[string]string{"HF_HUB_OFFLINE": "1"}
	}
	if g.chance(0.5) {
		p.Port = 8000 + g.r.IntN(100)
	}
	return p
}

// devices draws a device mask: mostly sorted, sometimes not, rarely with a GPU the node lacks.
func (g *stateGen) devices(nGPU int) []int {
	n := 1 + g.r.IntN(min(3, nGPU))
	devs := g.r.Perm(nGPU)[:n]
	if g.chance(0.8) {
		sort.Ints(devs)
	}
	if g.chance(0.03) {
		devs = append(devs, nGPU+g.r.IntN(2))
	}
	return devs
}

func (g *stateGen) split(n int) []float64 {
	s := make([]float64, n)
	for i := range s {
		s[i] = float64(1+g.r.IntN(9)) / 10
	}
	return s
}

// mutate returns a copy of the pool with one or two fields changed, as an
// engine started from an older config would have.
func (g *stateGen) mutate(p *schema.Pool, nGPU int) *schema.Pool {
	q := clonePool(p)
	for range 1 + g.r.IntN(2) {
		switch g.r.IntN(8) {
		case 0:
			q.Model.Ctx *= 2
		case 1:
			q.Devices = g.devices(nGPU)
			q.Split = nil
		case 2:
			q.Restart.InitialBackoff += time.Second
		case 3:
			q.Restart.Breaker.Failures++
		case 4:
			q.Flags = append(q.Flags, "--metrics")
		case 5:
			q.Share = !q.Share
		case 6:
			q.VRAM += giB
		default:
			q.Env = map[string]string{"CUDA_LAUNCH_BLOCKING": "1"}
		}
	}
	return q
}

func clonePool(p *schema.Pool) *schema.Pool {
	if p == nil {
		return nil
	}
	q := *p
	q.Devices = slices.Clone(p.Devices)
	q.Split = slices.Clone(p.Split)
	q.Flags = slices.Clone(p.Flags)
	q.Env = maps.Clone(p.Env)
	return &q
}

func cloneDesired(d Desired) Desired {
	out := d
	out.Pools = map[string]*schema.Pool{}
	for id, p := range d.Pools {
		out.Pools[id] = clonePool(p)
	}
	out.Needs = map[string]Need{}
	for id, n := range d.Needs {
		n.PerGPU = slices.Clone(n.PerGPU)
		out.Needs[id] = n
	}
	if d.Declared != nil {
		decl := *d.Declared
		decl.GPUs = slices.Clone(decl.GPUs)
		out.Declared = &decl
	}
	return out
}

func cloneObserved(o Observed) Observed {
	out := o
	out.GPUs = slices.Clone(o.GPUs)
	for i := range out.GPUs {
		out.GPUs[i].Processes = slices.Clone(o.GPUs[i].Processes)
	}
	out.Engines = map[string]Engine{}
	for id, e := range o.Engines {
		e.PIDs = slices.Clone(e.PIDs)
		e.Spec = clonePool(e.Spec)
		out.Engines[id] = e
	}
	out.Pools = maps.Clone(o.Pools)
	if o.Engines == nil {
		out.Engines = nil
	}
	return out
}

// changeList lists a plan's changes in one line, each with its action in
// an earlier plan when one is given.
func changeList(p, earlier *NodePlan) string {
	was := map[string]string{}
	if earlier != nil {
		for _, c := range earlier.Changes {
			was[c.Pool] = " (was " + string(c.Action) + ")"
		}
		for _, u := range earlier.Unchanged {
			was[u.Pool] = " (was unchanged)"
		}
	}
	var parts []string
	for _, c := range p.Changes {
		s := string(c.Action) + " " + c.Pool
		if c.Blocker != nil {
			s += " [" + c.Blocker.Class + "]"
		}
		parts = append(parts, s+was[c.Pool])
	}
	return strings.Join(parts, ", ")
}

// firstLines is the first line of each violation, for a one-line log.
func firstLines(errs []string) string {
	var out []string
	for _, e := range errs {
		line, _, _ := strings.Cut(e, "\n")
		if !strings.HasSuffix(line, "plan:") {
			out = append(out, line)
		}
	}
	return strings.Join(out, " | ")
}

func planText(p *NodePlan) string {
	var b bytes.Buffer
	_ = WriteText(&b, p, TextOptions{})
	return b.String()
}

// dumpCase shows a failing case's inputs as JSON.
func dumpCase(d Desired, o Observed) string {
	data, err := json.MarshalIndent(struct {
		Desired  Desired  `json:"desired"`
		Observed Observed `json:"observed"`
	}{d, o}, "", "  ")
	if err != nil {
		return err.Error()
	}
	return string(data)
}

// Regressions: the planner defects the property test found, each in its
// smallest form, asserting what the planner does since they were fixed.

// defectPool is a small llama.cpp pool on the given GPUs with a declared VRAM.
func defectPool(id string, vramGiB int64, devices ...int) *schema.Pool {
	return &schema.Pool{ID: id, Node: "gpu-01", Engine: schema.EngineLlamaCpp,
		Model: schema.Model{Path: "/models/" + id + ".gguf", Ctx: 8192}, Devices: devices, VRAM: vramGiB * giB,
		Restart: schema.RestartPolicy{InitialBackoff: time.Second, MaxBackoff: time.Minute, Jitter: 0.1, ResetAfter: 5 * time.Minute,
			StartupTimeout: 10 * time.Minute, DrainTimeout: 30 * time.Second, StopGrace: 10 * time.Second,
			Breaker: schema.Breaker{Failures: 5, Window: 10 * time.Minute, Cooldown: 5 * time.Minute}}}
}

func defectDesired(pools ...*schema.Pool) Desired {
	d := Desired{Node: "gpu-01", Pools: map[string]*schema.Pool{}, Needs: map[string]Need{}}
	for _, p := range pools {
		d.Pools[p.ID] = p
		est := vram.Declared(uint64(p.VRAM), p.EffectiveSplit())
		d.Needs[p.ID] = Need{PerGPU: est.PerGPU, Source: est.Source}
	}
	return d
}

// defectGPU is GPU 0 of totalGiB, holding the given processes (pid → GiB).
func defectGPU(totalGiB uint64, procs map[int]uint64) gpu.Device {
	d := gpu.Device{Index: 0, UUID: "GPU-00000000-0000-0000-0000-000000000000", Name: "NVIDIA Test", MemoryTotal: totalGiB * giB}
	for _, pid := range slices.Sorted(maps.Keys(procs)) {
		d.Processes = append(d.Processes, gpu.Process{PID: pid, UsedBytes: procs[pid] * giB})
		d.MemoryUsed += procs[pid] * giB
	}
	d.MemoryFree = d.MemoryTotal - d.MemoryUsed
	return d
}

func runningEngine(spec *schema.Pool, pid int, health Health) Engine {
	return Engine{Pool: spec.ID, Generation: 1, SpecHash: SpecHash(spec), Spec: spec, PID: pid, PIDs: []int{pid},
		Alive: true, Health: health, Recorded: true}
}

// assertIdempotent applies the plan with applyModel (in the plan's order)
// and checks that the next plan has nothing to do.
func assertIdempotent(t *testing.T, d Desired, o Observed) {
	t.Helper()
	plan := Plan(d, o, propertyNow)
	t.Logf("first plan:\n%s", planText(plan))
	next, err := applyModel(o, plan, true)
	if err != nil {
		t.Fatalf("applying the plan, stops first: %v", err)
	}
	if again := Plan(d, next, propertyNow); again.HasChanges() {
		t.Errorf("the plan after applying the first still has changes:\n%s", planText(again))
	}
}

// Regression A (fixed): a pool whose engine fails its health check and
// whose spec changed only in fields that need no restart (here
// restart.initialBackoff) got an update: the record changed, the failing
// engine kept running, and only the next plan restarted it. The plan
// restarts it with the new spec at once.
func TestRegressionUpdateHidesRestartOfFailingEngine(t *testing.T) {
	want := defectPool("chat", 6, 0)
	ran := clonePool(want)
	ran.Restart.InitialBackoff = 2 * time.Second
	d := defectDesired(want)
	o := Observed{Node: "gpu-01", Source: "sim", GPUs: []gpu.Device{defectGPU(24, map[int]uint64{100: 6})},
		Engines: map[string]Engine{"chat": runningEngine(ran, 100, HealthFailing)}}
	assertIdempotent(t, d, o)
}

// Regression B (fixed): starts were booked in pool-id order, and a replace
// or restart freed its engine's memory only when its own pool came up. Pool "a" needs
// 6 GiB on a 16 GiB GPU with 4 GiB free; pool "b"'s engine holds 12 GiB and
// its new spec needs 8. Stopping b frees room for both (6 + 8 <= 16), but a
// was checked first, against 4 GiB, and blocked; the next plan created it.
func TestRegressionLaterStopNotCountedForEarlierStart(t *testing.T) {
	a, b := defectPool("a", 6, 0), defectPool("b", 8, 0)
	ran := clonePool(b)
	ran.Model.Ctx, ran.VRAM = 32768, 12*giB
	d := defectDesired(a, b)
	o := Observed{Node: "gpu-01", Source: "sim", GPUs: []gpu.Device{defectGPU(16, map[int]uint64{200: 12})},
		Engines: map[string]Engine{"b": runningEngine(ran, 200, HealthOK)}}
	if p := Plan(d, o, propertyNow); p.Summary.Blocked != 0 {
		t.Errorf("blocked although both pools fit once b's engine stops:\n%s", planText(p))
	}
	assertIdempotent(t, d, o)
}

// Regression C (fixed): the VRAM check followed pool-id order while apply
// runs the changes in action order (replace before restart). Pool "a"'s failing engine holds
// 14 GiB of a 24 GiB GPU and needs 6 once restarted; pool "b" (crashed,
// spec changed: a replace) needs 12. The plan checks a first (24 GiB free
// after its stop, 18 left) and then b against 18 GiB; but apply replaces b
// first, when a's engine still holds its 14 GiB and 10 GiB are free.
func TestRegressionBookingOrderIsNotApplyOrder(t *testing.T) {
	a, b := defectPool("a", 6, 0), defectPool("b", 12, 0)
	ranB := clonePool(b)
	ranB.Model.Ctx = 4096
	d := defectDesired(a, b)
	o := Observed{Node: "gpu-01", Source: "sim", GPUs: []gpu.Device{defectGPU(24, map[int]uint64{300: 14})},
		Engines: map[string]Engine{
			"a": runningEngine(a, 300, HealthFailing),
			"b": {Pool: "b", Generation: 1, SpecHash: SpecHash(ranB), Spec: ranB, PID: 301, Recorded: true, Exit: "exited with status 1"},
		}}
	assertIdempotent(t, d, o)
}

// Regression D (fixed): a config change did not close an open circuit breaker.
// OC-POOL-3011 says the breaker stops the restarts "until the config
// changes or an operator resets it", and the blocker's hint says "fix the
// config", but a pool whose crashed engine ran another spec was a replace,
// and a replace was blocked by the open breaker like a restart until its
// half-open time.
func TestRegressionConfigChangeDoesNotCloseBreaker(t *testing.T) {
	want := defectPool("coder", 6, 0)
	ran := clonePool(want)
	ran.Model.Ctx = 65536 // the config that crashed
	d := defectDesired(want)
	o := Observed{Node: "gpu-01", Source: "sim", GPUs: []gpu.Device{defectGPU(24, nil)},
		Engines: map[string]Engine{"coder": {Pool: "coder", Generation: 5, SpecHash: SpecHash(ran), Spec: ran, PID: 7,
			Recorded: true, Exit: "exited with status 1"}},
		Pools: map[string]restart.Record{"coder": {ConsecutiveFailures: 5, BreakerState: "open", BreakerRetryAt: propertyNow.Add(5 * time.Minute)}}}
	p := Plan(d, o, propertyNow)
	if len(p.Changes) != 1 || p.Changes[0].Action != Replace {
		t.Errorf("want a replace with the fixed config, got:\n%s", planText(p))
	}
}
