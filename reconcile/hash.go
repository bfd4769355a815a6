package reconcile

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"maps"
	"reflect"
	"slices"
	"sort"
	"strings"
	"unicode"

	"github.com/google/go-cmp/cmp"

	"github.com/poolmanagerd/pool-managerd/reconcile/restart"
	"github.com/poolmanagerd/pool-managerd/schema"
)

// SpecHash identifies a pool spec: two specs with the same hash run the same engine.
func SpecHash(p *schema.Pool) string { return hashJSON(p) }

// DesiredHash identifies the desired state of a node. The needs of pools
// whose model has a source are left out: the spec pins such a model by its
// digest, so its need follows from the spec, and how the need was found
// (from the cache, from the source's header, or not yet) must not make a
// saved plan stale, nor the daemon take a config as changed.
func DesiredHash(d Desired) string {
	if d.Needs != nil {
		needs := make(map[string]Need, len(d.Needs))
		for id, n := range d.Needs {
			if p, ok := d.Pools[id]; ok && p.Model.Source != "" {
				continue
			}
			needs[id] = n
		}
		d.Needs = needs
	}
	return hashJSON(d)
}

// ObservedHash identifies what a plan decides from: the GPUs (identity,
// size, health), the processes pool-managerd does not own on them, the
// engines (identity, spec, whether they live and fail) and the pools'
// restart states. What moves while an engine loads — memory use, its
// workers' pids, loading versus healthy — is left out, so that a plan saved
// during a preload is not stale by the time it is applied.
func ObservedHash(o Observed) string {
	type device struct {
		Index   int
		UUID    string
		Total   uint64
		Lost    bool
		Foreign []int
	}
	type engineView struct {
		Generation               int64
		SpecHash                 string
		PID                      int
		Alive, Failing, Recorded bool
		Intent                   bool
		Draining                 bool `json:",omitempty"`
	}
	view := struct {
		Node     string
		Source   string
		StateDir string
		GPUs     []device
		Engines  map[string]engineView
		Pools    map[string]restart.Record
	}{Node: o.Node, Source: o.Source, StateDir: o.StateDir, Engines: map[string]engineView{}, Pools: o.Pools}
	owned := o.ownedPIDs()
	for _, d := range o.GPUs {
		dev := device{Index: d.Index, UUID: d.UUID, Total: d.MemoryTotal, Lost: d.Lost}
		for _, p := range d.Processes {
			if _, ours := owned[p.PID]; !ours {
				dev.Foreign = append(dev.Foreign, p.PID)
			}
		}
		sort.Ints(dev.Foreign)
		view.GPUs = append(view.GPUs, dev)
	}
	for id, e := range o.Engines {
		view.Engines[id] = engineView{Generation: e.Generation, SpecHash: e.SpecHash, PID: e.PID, Alive: e.Alive,
			Failing: e.Health == HealthFailing, Recorded: e.Recorded, Intent: e.Intent, Draining: e.Draining}
	}
	return hashJSON(view)
}

func hashJSON(v any) string {
	data, err := json.Marshal(v)
	if err != nil {
		// Only plain data is hashed: an error is a programming defect.
		panic(fmt.Sprintf("reconcile: hash: %v", err))
	}
	sum := sha256.Sum256(data)
	return "sha256:" + hex.EncodeToString(sum[:])
}

// inPlaceFields are the spec fields that change nothing in the engine
// process: they are applied by updating the record, without a restart.
var inPlaceFields = []string{"restart", "share", "vram", "ram"}

// inPlace reports whether every changed field can be applied without a restart.
func inPlace(fields []FieldChange) bool {
	if len(fields) == 0 {
		return false
	}
	for _, f := range fields {
		ok := false
		for _, prefix := range inPlaceFields {
			if f.Path == prefix || strings.HasPrefix(f.Path, prefix+".") {
				ok = true
			}
		}
		if !ok {
			return false
		}
	}
	return true
}

// diffSpecs lists the fields that differ between the running spec and the
// desired one, named as in the config (model.ctx, restart.maxBackoff).
func diffSpecs(old, new *schema.Pool) []FieldChange {
	if old == nil || new == nil {
		return nil
	}
	var r fieldReporter
	cmp.Equal(*old, *new, cmp.Reporter(&r), cmp.FilterPath(func(p cmp.Path) bool {
		sf, ok := p.Last().(cmp.StructField)
		// Source is where the pool is written (schema.Source), not model.source.
		return ok && (sf.Type() == reflect.TypeFor[schema.Source]() || sf.Name() == "Env")
	}, cmp.Ignore()))
	r.changes = append(r.changes, diffEnv(old.Env, new.Env)...)
	sort.SliceStable(r.changes, func(i, j int) bool { return r.changes[i].Path < r.changes[j].Path })
	return r.changes
}

// Values an env change shows in place of the variable's value: a plan names
// the variables that change, never their values (they may be secrets).
const (
	// EnvValueHidden stands for a variable's value, set but not shown.
	EnvValueHidden = "(hidden)"
	// EnvValueUnset: the variable is not set.
	EnvValueUnset = "(unset)"
)

// diffEnv lists the variables of env that are added, removed or changed, as
// env.NAME, with their values hidden.
func diffEnv(old, new map[string]string) []FieldChange {
	var out []FieldChange
	shown := func(m map[string]string, name string) string {
		if _, ok := m[name]; ok {
			return EnvValueHidden
		}
		return EnvValueUnset
	}
	for _, name := range slices.Sorted(maps.Keys(old)) {
		if v, ok := new[name]; !ok || v != old[name] {
			out = append(out, FieldChange{Path: "env." + name, Old: EnvValueHidden, New: shown(new, name)})
		}
	}
	for _, name := range slices.Sorted(maps.Keys(new)) {
		if _, ok := old[name]; !ok {
			out = append(out, FieldChange{Path: "env." + name, Old: EnvValueUnset, New: EnvValueHidden})
		}
	}
	return out
}

// fieldReporter collects go-cmp's differences as config field paths. A list
// that changes length is reported as one change of the whole list.
type fieldReporter struct {
	path    cmp.Path
	changes []FieldChange
	// seen keeps a list reported once when several of its elements differ.
	seen map[string]bool
}

func (r *fieldReporter) PushStep(ps cmp.PathStep) { r.path = append(r.path, ps) }
func (r *fieldReporter) PopStep()                 { r.path = r.path[:len(r.path)-1] }

func (r *fieldReporter) Report(rs cmp.Result) {
	if rs.Equal() {
		return
	}
	path, vx, vy := configPath(r.path)
	if r.seen == nil {
		r.seen = map[string]bool{}
	}
	if r.seen[path] {
		return
	}
	r.seen[path] = true
	change := FieldChange{Path: path, Old: render(vx), New: render(vy)}
	if (path == "vram" || path == "ram") && vx.CanInt() && vy.CanInt() {
		change.Old, change.New = gib(uint64(vx.Int())), gib(uint64(vy.Int()))
	}
	r.changes = append(r.changes, change)
}

// configPath turns a go-cmp path into the config's field path. Slice
// elements are reported as the whole slice (so that a mask [0, 1] → [1]
// reads as one change); map entries as map.key.
func configPath(path cmp.Path) (string, reflect.Value, reflect.Value) {
	var parts []string
	vx, vy := path.Last().Values()
	for i, step := range path {
		switch s := step.(type) {
		case cmp.StructField:
			parts = append(parts, configName(s.Name()))
		case cmp.MapIndex:
			parts = append(parts, fmt.Sprint(s.Key()))
		case cmp.SliceIndex:
			vx, vy = path[i-1].Values()
			return strings.Join(parts, "."), vx, vy
		}
	}
	return strings.Join(parts, "."), vx, vy
}

// configName turns a Go field name into the config's: InitialBackoff → initialBackoff, VRAM → vram.
func configName(goName string) string {
	if strings.ToUpper(goName) == goName {
		return strings.ToLower(goName)
	}
	r := []rune(goName)
	r[0] = unicode.ToLower(r[0])
	return string(r)
}

func render(v reflect.Value) string {
	if !v.IsValid() {
		return "(none)"
	}
	if s, ok := v.Interface().(fmt.Stringer); ok && v.Kind() != reflect.Struct {
		return fmt.Sprintf("%q", s.String())
	}
	data, err := json.Marshal(v.Interface())
	if err != nil {
		return fmt.Sprint(v.Interface())
	}
	return string(data)
}
