package schema

import (
	"fmt"
	"math"
	"slices"
	"strings"
	"time"

	"cuelang.org/go/cue"
)

// desired reads nodes and pools out of the evaluated config. Values that CUE
// already reported are skipped; missing or non-concrete fields are reported here.
func (r *reader) desired(root cue.Value) *Desired {
	d := &Desired{Nodes: map[string]*Node{}, Pools: map[string]*Pool{}}
	top, err := root.Fields()
	if err != nil {
		return d
	}
	for top.Next() {
		switch name := top.Selector().Unquoted(); name {
		case "nodes":
			r.eachKey(top.Value(), r.keys.nodes, func(key string, v cue.Value) {
				d.Nodes[key] = r.node(key, v)
			})
		case "pools":
			r.eachKey(top.Value(), r.keys.pools, func(key string, v cue.Value) {
				d.Pools[key] = r.pool(key, v)
			})
		default:
			if top.Value().Err() != nil {
				continue // the schema's top-level pattern rejected it, and CUE's error is reported
			}
			pos := r.userPos(top.Value())
			if pos.File == "" {
				pos = Pos{File: r.fallback}
			}
			r.add(pos, name, "unknown top-level field %s; a config declares nodes and pools", name)
		}
	}
	return d
}

// eachKey calls fn for each field of a struct. When the keys are known from
// the files' syntax it looks them up directly: iterating a struct of
// thousands of fields sorts them, which grows faster than linearly.
func (r *reader) eachKey(v cue.Value, keys []string, fn func(key string, v cue.Value)) {
	if keys == nil {
		r.eachField(v, fn)
		return
	}
	for _, k := range keys {
		if fv := v.LookupPath(cue.MakePath(cue.Str(k))); fv.Exists() {
			fn(k, fv)
		}
	}
}

func (r *reader) eachField(v cue.Value, fn func(key string, v cue.Value)) {
	it, err := v.Fields()
	if err != nil {
		return
	}
	for it.Next() {
		fn(it.Selector().Unquoted(), it.Value())
	}
}

// object reads the fields of one node or pool, reporting missing and
// non-concrete values at the object's position.
type object struct {
	r *reader
	// owner is the node or pool the object belongs to ("nodes.x", "pools.y");
	// prefix is the object's own path ("nodes.x.gpus[0]").
	owner, prefix string
	v             cue.Value
}

func (o *object) path(field string) string { return o.prefix + "." + field }

func (o *object) markBroken() { o.r.broken[o.owner] = true }

// requiredHints explain required fields whose need is not obvious.
var requiredHints = map[string]string{
	"vram": " (vllm, tgi and sglang pools declare their total VRAM need, e.g. vram: 40Gi; the share of each GPU they are told to take is derived from it)",
}

// get returns the concrete value of a field. ok is false when the field is
// absent (reported when required), not concrete (reported), or wrong (CUE reported it).
func (o *object) get(field string, required bool) (cue.Value, bool) {
	v := o.v.LookupPath(o.r.pathOf(field))
	if o.r.valid {
		// The whole config validated: every field is there and concrete, or an absent optional one.
		return v, v.Exists()
	}
	if !v.Exists() {
		if parent, _, nested := strings.Cut(field, "."); nested {
			pv := o.v.LookupPath(o.r.pathOf(parent))
			if pv.Exists() && pv.Err() != nil {
				o.markBroken()
				return v, false // the parent is wrong, and reported as such
			}
			if !pv.Exists() {
				field = parent // report the missing parent, not each of its fields
			}
		}
		if required {
			o.markBroken()
			o.r.add(o.r.userPos(o.v), o.path(field), "missing required field %s", field)
		}
		return v, false
	}
	if err := v.Err(); err != nil {
		o.markBroken()
		switch {
		case strings.Contains(err.Error(), "field is required but not present"):
			o.r.add(o.r.userPos(o.v), o.path(field), "missing required field %s%s", field, requiredHints[field])
		case isIncompleteErr(err):
			o.reportIncomplete(field, v, required)
		}
		return v, false
	}
	if d, ok := v.Default(); ok {
		v = d
	}
	if !v.IsConcrete() {
		if v.IncompleteKind()&(cue.StructKind|cue.ListKind) != 0 && v.IncompleteKind()&^(cue.StructKind|cue.ListKind) == 0 {
			return v, true // a struct or list: its elements are read one by one
		}
		o.markBroken()
		o.reportIncomplete(field, v, required)
		return v, false
	}
	return v, true
}

func (o *object) reportIncomplete(field string, v cue.Value, required bool) {
	pos := o.r.userPos(v)
	if pos.File == "" {
		pos = o.r.userPos(o.v)
	}
	if required && pos == o.r.userPos(o.v) {
		o.r.add(pos, o.path(field), "missing required field %s", field)
		return
	}
	o.r.add(pos, o.path(field), "%s must be a concrete value, not %v", field, v)
}

// isIncompleteErr reports CUE errors about values not given (missing,
// required, not concrete): the typed reading reports those itself.
func isIncompleteErr(err error) bool {
	msg := err.Error()
	for _, s := range []string{"incomplete value", "field is required but not present", "required field missing", "non-concrete value"} {
		if strings.Contains(msg, s) {
			return true
		}
	}
	return false
}

func (o *object) str(field string, required bool) string {
	v, ok := o.get(field, required)
	if !ok {
		return ""
	}
	s, err := v.String()
	if err != nil {
		o.valueProblem(field, v, err)
		return ""
	}
	return s
}

func (o *object) int64(field string, required bool) int64 {
	v, ok := o.get(field, required)
	if !ok {
		return 0
	}
	n, err := v.Int64()
	if err != nil {
		o.valueProblem(field, v, err)
		return 0
	}
	return n
}

// valueProblem reports a value CUE accepted that Go cannot hold (an integer
// beyond 64 bits, say).
func (o *object) valueProblem(field string, v cue.Value, err error) {
	o.markBroken()
	msg := err.Error()
	if strings.Contains(msg, "out of range") || strings.Contains(msg, "overflow") || strings.Contains(msg, "rounded") {
		msg = fmt.Sprintf("%v is out of range (at most %d)", v, int64(math.MaxInt64))
	}
	o.r.add(o.r.userPos(v), o.path(field), "%s", msg)
}

func (o *object) float(field string) float64 {
	v, ok := o.get(field, true)
	if !ok {
		return 0
	}
	f, err := v.Float64()
	if err != nil {
		o.valueProblem(field, v, err)
		return 0
	}
	return f
}

func (o *object) boolean(field string) bool {
	v, ok := o.get(field, true)
	if !ok {
		return false
	}
	b, err := v.Bool()
	if err != nil {
		o.valueProblem(field, v, err)
	}
	return b
}

func (o *object) duration(field string) time.Duration {
	s := o.str(field, true)
	if s == "" {
		return 0
	}
	d, err := time.ParseDuration(s)
	if err != nil {
		// The schema checks durations; this is a safety net for a schema edit.
		o.markBroken()
		o.r.add(o.r.userPos(o.v.LookupPath(o.r.pathOf(field))), o.path(field), "invalid duration %q: %v", s, err)
	}
	return d
}

// list calls fn for each element of a list field, with its index and the
// element's path; fn returns an error for a value it cannot read.
func (o *object) list(field string, required bool, fn func(i int, v cue.Value) error) {
	v, ok := o.get(field, required)
	if !ok {
		return
	}
	it, err := v.List()
	if err != nil {
		o.markBroken()
		return
	}
	for i := 0; it.Next(); i++ {
		el := it.Value()
		if !o.r.valid && (el.Err() != nil || !el.IsConcrete()) {
			o.markBroken()
			if el.Err() == nil || isIncompleteErr(el.Err()) {
				o.r.add(o.r.userPos(el), fmt.Sprintf("%s[%d]", o.path(field), i), "%s[%d] must be a concrete value, not %v", field, i, el)
			}
			continue
		}
		if err := fn(i, el); err != nil {
			o.valueProblem(fmt.Sprintf("%s[%d]", field, i), el, err)
		}
	}
}

func (r *reader) node(name string, v cue.Value) *Node {
	o := &object{r: r, owner: "nodes." + name, prefix: "nodes." + name, v: v}
	n := &Node{Name: name, Source: Source{resolver: r.posResolver, path: []cue.Selector{cue.Str("nodes"), cue.Str(name)}}}
	o.list("gpus", true, func(i int, g cue.Value) error {
		gpu := &object{r: r, owner: o.owner, prefix: fmt.Sprintf("%s.gpus[%d]", o.prefix, i), v: g}
		n.GPUs = append(n.GPUs, GPU{
			Index: int(gpu.int64("index", true)),
			UUID:  gpu.str("uuid", false),
			Model: gpu.str("model", false),
			VRAM:  gpu.int64("vram", true),
		})
		return nil
	})
	return n
}

func (r *reader) pool(id string, v cue.Value) *Pool {
	o := &object{r: r, owner: "pools." + id, prefix: "pools." + id, v: v}
	p := &Pool{
		ID:     id,
		Node:   o.str("node", true),
		Engine: Engine(o.str("engine", true)),
		Model:  o.model(),
		Port:   int(o.int64("port", false)),
		VRAM:   o.int64("vram", false),
		RAM:    o.int64("ram", false),
		Share:  o.boolean("share"),
		Source: Source{resolver: r.posResolver, path: []cue.Selector{cue.Str("pools"), cue.Str(id)}},
		Restart: RestartPolicy{
			InitialBackoff: o.duration("restart.initialBackoff"),
			MaxBackoff:     o.duration("restart.maxBackoff"),
			Jitter:         o.float("restart.jitter"),
			ResetAfter:     o.duration("restart.resetAfter"),
			StartupTimeout: o.duration("restart.startupTimeout"),
			DrainTimeout:   o.duration("restart.drainTimeout"),
			StopGrace:      o.duration("restart.stopGrace"),
			Breaker: Breaker{
				Failures: int(o.int64("restart.breaker.failures", true)),
				Window:   o.duration("restart.breaker.window"),
				Cooldown: o.duration("restart.breaker.cooldown"),
			},
		},
	}
	if !r.valid && !v.LookupPath(r.pathOf("model")).Exists() {
		// The missing model is reported (by the typed reading of model.ctx);
		// the schema's rule "path or source" has nothing to add.
		r.diags = slices.DeleteFunc(r.diags, func(d Diagnostic) bool {
			return d.Path == o.path("model") && strings.HasPrefix(d.Message, neitherPathNorSource)
		})
	}
	// A pool with a VRAM read has the field: look it up only when it is not.
	if p.Engine.Sharded() && p.VRAM == 0 && !v.LookupPath(r.pathOf("vram")).Exists() {
		o.markBroken()
		r.add(r.userPos(v), o.path("vram"), "missing required field vram%s", requiredHints["vram"])
	}
	o.list("devices", true, func(_ int, v cue.Value) error {
		n, err := v.Int64()
		p.Devices = append(p.Devices, int(n))
		return err
	})
	o.list("split", false, func(_ int, v cue.Value) error {
		f, err := v.Float64()
		p.Split = append(p.Split, f)
		return err
	})
	o.list("flags", true, func(_ int, v cue.Value) error {
		s, err := v.String()
		p.Flags = append(p.Flags, s)
		return err
	})
	if env, ok := o.get("env", true); ok {
		r.eachField(env, func(key string, v cue.Value) {
			s, err := v.String()
			if err != nil || !v.IsConcrete() {
				o.markBroken()
				r.add(r.userPos(v), o.path("env."+key), "env %s must be a string value, not %v", key, v)
				return
			}
			if strings.ContainsRune(s, 0) {
				o.markBroken()
				r.add(r.userPos(v), o.path("env."+key), "env %s contains a NUL byte, which no environment can hold", key)
				return
			}
			if p.Env == nil {
				p.Env = map[string]string{}
			}
			p.Env[key] = s
		})
	}
	return p
}

// neitherPathNorSource starts the schema's message for a model with neither
// path nor source (poolmanagerd.cue, _modelPathOrSource).
const neitherPathNorSource = "model declares neither path nor source"

// model reads a pool's model. The manifest and the digest are read only
// with a source: the schema refuses them without one, and a config of
// thousands of pools with paths looks up nothing more than before.
func (o *object) model() Model {
	m := Model{
		Path:   o.str("model.path", false),
		Source: o.str("model.source", false),
		Ctx:    int(o.int64("model.ctx", true)),
	}
	if m.Source == "" {
		return m
	}
	m.SHA256 = o.str("model.sha256", false)
	o.list("model.files", false, func(i int, v cue.Value) error {
		f := &object{r: o.r, owner: o.owner, prefix: fmt.Sprintf("%s.model.files[%d]", o.prefix, i), v: v}
		m.Files = append(m.Files, ModelFile{
			Path:   f.str("path", true),
			SHA256: f.str("sha256", true),
			Size:   f.int64("size", false),
		})
		return nil
	})
	return m
}
