package schema

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"

	"github.com/poolmanagerd/pool-managerd/testkit/benchgen"
)

// configGen makes random config trees and random edits of them: nodes
// files, pool files, shared defaults that pools refer to, files that write
// the same pool (unified), references to nodes as a whole and to the
// schema's definitions, comprehensions, and syntax, schema and cross-check
// errors. Pool ids and node names come
// from small sets, so that files often tie.
type configGen struct {
	rnd *rand.Rand
	// files by relative path.
	files map[string]string
	// made counts the files made, for new names.
	made int
}

var (
	genPools = []string{"a", "b", "c", "d", "e", "f"}
	genNodes = []string{"gpu-01", "gpu-02", "gpu-03"}
)

func (g *configGen) pick(xs []string) string { return xs[g.rnd.IntN(len(xs))] }

// fragment is one random declaration of a config file.
func (g *configGen) fragment() string {
	pool, node := g.pick(genPools), g.pick(genNodes)
	full := func(prefix, extra string) string {
		return fmt.Sprintf(`pools: %q: %s{node: %q, engine: "llamacpp", model: path: "/m/%s", devices: [%d]%s}`,
			pool, prefix, node, pool, g.rnd.IntN(3), extra)
	}
	extras := []string{"", fmt.Sprintf(", port: %d", 8000+g.rnd.IntN(3)), ", share: true, vram: 8Gi", ", split: [1]", ", split: [0.5]", `, flags: ["--ctx-size", "4096"]`}
	switch g.rnd.IntN(23) {
	case 0, 1, 2, 3:
		return full("", g.pick(extras))
	case 4, 5:
		return full("_defaults & ", g.pick(extras))
	case 6:
		return fmt.Sprintf(`pools: %q: port: %d`, pool, 8100+g.rnd.IntN(2))
	case 7, 8:
		return fmt.Sprintf(`nodes: %q: gpus: [{index: 0, vram: 24Gi}, {index: 1, vram: %dGi}]`, node, 16+8*g.rnd.IntN(2))
	case 9:
		return g.pick([]string{`_defaults: restart: maxBackoff: "2m"`, `_defaults: restart: maxBackoff: "soon"`, `_defaults: share: true`, `_defaults: {}`})
	case 10:
		return fmt.Sprintf(`pools: %q: {node: %q, engine: "llamacpp", model: path: "/n", devices: [nodes[%q].gpus[0].index]}`, pool, node, node)
	case 11:
		return `pools: x: {node: ` // a syntax error
	case 12:
		return fmt.Sprintf(`pools: %q: {node: %q, engine: "llama", model: path: "m", devices: [0]}`, pool, node)
	case 13:
		return `services: web: {}`
	case 14:
		return fmt.Sprintf(`for k in [%q] {pools: (k): port: 8200}`, pool)
	case 15:
		return g.pick([]string{`_port: 8300`, `_port: 80`})
	case 16:
		return fmt.Sprintf(`pools: %q: port: _port`, pool)
	case 17:
		return full("", `, devices: [0, 1], vram: 40Gi`)
	case 18:
		return fmt.Sprintf(`pools: "Bad_ID": {node: %q, engine: "tgi", model: path: "/t", devices: [0]}`, node)
	case 19:
		// A node the cross-checks reject: a GPU index or uuid declared twice.
		return g.pick([]string{
			fmt.Sprintf(`nodes: %q: gpus: [{index: 0, vram: 24Gi}, {index: 0, vram: 24Gi}]`, node),
			fmt.Sprintf(`nodes: %q: gpus: [{index: 0, uuid: "GPU-1", vram: 24Gi}, {index: 1, uuid: "GPU-1", vram: 24Gi}]`, node),
		})
	case 20:
		// A broken node (a GPU without its size): its pools are not cross-checked.
		return fmt.Sprintf(`nodes: %q: gpus: [{index: 0}]`, node)
	case 21:
		// Pools of two nodes on GPUs of the same index, sharing or not.
		return fmt.Sprintf(`pools: %q: {node: %q, engine: "llamacpp", model: path: "/s", devices: [1], port: 8000%s}`,
			pool, node, g.pick([]string{"", ", share: true, vram: 20Gi"}))
	default:
		if g.rnd.IntN(2) == 0 {
			return fmt.Sprintf(`pools: %q: restart: #Restart & {maxBackoff: "%dm"}`, pool, g.rnd.IntN(3))
		}
		return fmt.Sprintf(`pools: %q: restart: initialBackoff: "%ds"`, pool, 1+g.rnd.IntN(90))
	}
}

func (g *configGen) content() string {
	var b strings.Builder
	switch g.rnd.IntN(12) {
	case 0, 1, 2:
		b.WriteString("package poolmanagerd\n")
	case 3:
		if g.rnd.IntN(4) == 0 {
			b.WriteString("package other\n")
		}
	}
	for range 1 + g.rnd.IntN(3) {
		b.WriteString(g.fragment())
		b.WriteByte('\n')
	}
	return b.String()
}

func (g *configGen) newName() string {
	g.made++
	return filepath.Join(g.pick([]string{"", "pools", "nodes", "shared"}), fmt.Sprintf("f%03d.cue", g.made))
}

func (g *configGen) names() []string {
	names := make([]string, 0, len(g.files))
	for n := range g.files {
		names = append(names, n)
	}
	slices.Sort(names)
	return names
}

// edit changes the tree at random and says how.
func (g *configGen) edit() string {
	names := g.names()
	switch op := g.rnd.IntN(10); {
	case len(names) == 0 || op == 0:
		name := g.newName()
		g.files[name] = g.content()
		return "add " + name
	case op == 1 && len(names) > 1:
		name := g.pick(names)
		delete(g.files, name)
		return "remove " + name
	case op == 2:
		old := g.pick(names)
		name := g.newName()
		g.files[name] = g.files[old]
		delete(g.files, old)
		return "rename " + old + " to " + name
	case op == 3:
		name := g.pick(names)
		return "rewrite " + name + " unchanged"
	case op == 4:
		name := g.pick(names)
		g.files[name] += g.fragment() + "\n"
		return "append to " + name
	default:
		name := g.pick(names)
		g.files[name] = g.content()
		return "replace " + name
	}
}

// write makes dir hold exactly the generated files. Each file written gets
// its own mtime in the past, so that the loader's stat cache is used (the
// loader under test is told it is much later).
func (g *configGen) write(t testing.TB, dir string, stamp *time.Time) {
	t.Helper()
	for name, src := range g.files {
		path := filepath.Join(dir, name)
		if old, err := os.ReadFile(path); err == nil && string(old) == src && g.rnd.IntN(2) == 0 {
			continue // left alone, or rewritten with the same content
		}
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, []byte(src), 0o644); err != nil {
			t.Fatal(err)
		}
		*stamp = stamp.Add(time.Second)
		if err := os.Chtimes(path, *stamp, *stamp); err != nil {
			t.Fatal(err)
		}
	}
	err := filepath.WalkDir(dir, func(path string, e os.DirEntry, err error) error {
		if err != nil || e.IsDir() {
			return err
		}
		rel, _ := filepath.Rel(dir, path)
		if _, ok := g.files[rel]; !ok {
			return os.Remove(path)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// outcome is a load's result in comparable form.
type outcome struct {
	Desired *Desired
	Diags   Diagnostics
	// Positions are where some fields of each pool and node are written, as Source.Of says.
	Positions map[string]Pos
}

func outcomeOf(d *Desired, err error) (outcome, error) {
	var diags Diagnostics
	if err != nil && !errors.As(err, &diags) {
		return outcome{}, err
	}
	o := outcome{Desired: d, Diags: diags}
	if d != nil {
		o.Positions = map[string]Pos{}
		for id, p := range d.Pools {
			for _, f := range []string{"", "devices", "devices[0]", "port", "split[0]", "restart.maxBackoff", "node"} {
				o.Positions["pools."+id+"."+f] = p.Source.Of(f)
			}
		}
		for name, n := range d.Nodes {
			for _, f := range []string{"", "gpus[1].index"} {
				o.Positions["nodes."+name+"."+f] = n.Source.Of(f)
			}
		}
	}
	return o, nil
}

var outcomeCmp = []cmp.Option{cmpopts.IgnoreFields(Pool{}, "Source"), cmpopts.IgnoreFields(Node{}, "Source"), cmpopts.EquateEmpty()}

// runEdits applies n random edits to a random tree and, after each, checks
// that an incremental Loader gives what a fresh Load gives, and what one
// evaluation of all the files as one CUE instance gives.
func runEdits(t *testing.T, seed uint64, n int) {
	t.Helper()
	g := &configGen{rnd: rand.New(rand.NewPCG(seed, seed^0x5eed)), files: map[string]string{}}
	for range 2 + g.rnd.IntN(5) {
		g.files[g.newName()] = g.content()
	}
	dir := t.TempDir()
	stamp := time.Now().Add(-time.Hour)
	loader := NewLoader()
	loader.now = func() time.Time { return time.Now().Add(time.Hour) }
	ctx := context.Background()
	var history []string
	for step := range n {
		if step > 0 {
			history = append(history, g.edit())
		}
		g.write(t, dir, &stamp)
		whole := NewLoader()
		whole.whole = true
		var outcomes [3]outcome
		for i, l := range []*Loader{loader, NewLoader(), whole} {
			o, err := outcomeOf(l.Load(ctx, dir))
			if err != nil {
				t.Fatalf("seed %d step %d: %v", seed, step, err)
			}
			outcomes[i] = o
		}
		got, fresh, one := outcomes[0], outcomes[1], outcomes[2]
		if diff := cmp.Diff(fresh, got, outcomeCmp...); diff != "" {
			t.Fatalf("seed %d step %d: incremental load differs from a fresh load (-fresh +incremental):\n%s\nedits: %s\nfiles:\n%s", seed, step, diff, strings.Join(history, "; "), g.dump())
		}
		if diff := cmp.Diff(one, fresh, outcomeCmp...); diff != "" {
			t.Fatalf("seed %d step %d: load by components differs from one evaluation (-one +components):\n%s\nedits: %s\nfiles:\n%s", seed, step, diff, strings.Join(history, "; "), g.dump())
		}
	}
}

func (g *configGen) dump() string {
	var b strings.Builder
	for _, n := range g.names() {
		fmt.Fprintf(&b, "--- %s\n%s", n, g.files[n])
	}
	return b.String()
}

func TestLoaderMatchesFullLoad(t *testing.T) {
	for seed := range uint64(12) {
		t.Run(fmt.Sprint(seed), func(t *testing.T) {
			t.Parallel()
			runEdits(t, seed, 25)
		})
	}
}

// FuzzLoaderMatchesFullLoad runs random edit sequences from fuzzed seeds.
//
//	go test -run '^$' -fuzz FuzzLoaderMatchesFullLoad -fuzztime 60s ./schema
func FuzzLoaderMatchesFullLoad(f *testing.F) {
	f.Add(uint64(100))
	f.Fuzz(func(t *testing.T, seed uint64) {
		runEdits(t, seed, 10)
	})
}

func writeTree(t *testing.T, dir string, files map[string]string) {
	t.Helper()
	for name, src := range files {
		path := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, []byte(src), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

// TestLoaderEvaluatesOnlyWhatChanged counts the evaluations of each load.
func TestLoaderEvaluatesOnlyWhatChanged(t *testing.T) {
	pool := func(id, extra string) string {
		return fmt.Sprintf("pools: %q: {node: \"gpu-01\", engine: \"llamacpp\", model: path: \"/m\", devices: [0], share: true, vram: 1Gi%s}\n", id, extra)
	}
	dir := t.TempDir()
	writeTree(t, dir, map[string]string{
		"nodes.cue":    `nodes: "gpu-01": gpus: [{index: 0, vram: 24Gi}]` + "\n",
		"a.cue":        pool("a", ""),
		"b.cue":        pool("b", ""),
		"defaults.cue": `_defaults: restart: maxBackoff: "2m"` + "\n",
		"c.cue":        strings.Replace(pool("c", ""), `"c": {`, `"c": _defaults & {`, 1),
	})
	var (
		mu        sync.Mutex
		evaluated [][]string
	)
	for _, trusted := range []bool{true, false} {
		t.Run(fmt.Sprintf("stat trusted %v", trusted), func(t *testing.T) {
			l := NewLoader()
			if trusted {
				l.now = func() time.Time { return time.Now().Add(time.Hour) }
			}
			l.evaluated = func(rels []string) {
				mu.Lock()
				defer mu.Unlock()
				evaluated = append(evaluated, rels)
			}
			load := func(what string, want ...[]string) *Desired {
				t.Helper()
				evaluated = nil
				d, err := l.Load(context.Background(), dir)
				if err != nil {
					t.Fatalf("%s: %v", what, err)
				}
				if len(want) > 0 && want[0] == nil {
					want = nil
				}
				slices.SortFunc(evaluated, slices.Compare)
				if diff := cmp.Diff(want, evaluated, cmpopts.EquateEmpty()); diff != "" {
					t.Errorf("%s: evaluated (-want +got):\n%s", what, diff)
				}
				return d
			}
			evaluated = nil
			first, err := l.Load(context.Background(), dir)
			if err != nil {
				t.Fatal(err)
			}
			// The first load evaluates every file once, in batches of components.
			var all []string
			for _, rels := range evaluated {
				all = append(all, rels...)
			}
			slices.Sort(all)
			if want := []string{"a.cue", "b.cue", "c.cue", "defaults.cue", "nodes.cue"}; !slices.Equal(all, want) {
				t.Fatalf("the first load evaluated %v, want each of %v once", evaluated, want)
			}
			again := load("nothing changed", nil)
			if again != first {
				t.Error("a load with nothing changed gave a new Desired")
			}
			writeTree(t, dir, map[string]string{"a.cue": pool("a", ", port: 8001")})
			d := load("a.cue edited", []string{"a.cue"})
			if d.Pools["a"].Port != 8001 {
				t.Errorf("pool a's port %d, want 8001", d.Pools["a"].Port)
			}
			// The pools of unchanged groups are not copied again (their checks are reused by identity).
			if d.Pools["b"] != first.Pools["b"] || d.Nodes["gpu-01"] != first.Nodes["gpu-01"] {
				t.Error("a.cue edited: pool b or node gpu-01, of unchanged files, is a new copy")
			}
			writeTree(t, dir, map[string]string{"defaults.cue": `_defaults: restart: maxBackoff: "3m"` + "\n"})
			if d := load("defaults.cue edited", []string{"c.cue", "defaults.cue"}); d.Pools["c"].Restart.MaxBackoff != 3*time.Minute {
				t.Errorf("pool c's maxBackoff %v, want 3m", d.Pools["c"].Restart.MaxBackoff)
			}
			writeTree(t, dir, map[string]string{"b.cue": strings.Replace(pool("b", ""), `"b": {`, `"b": _defaults & {`, 1)})
			load("b.cue refers to the defaults", []string{"b.cue", "c.cue", "defaults.cue"})
			writeTree(t, dir, map[string]string{"b.cue": pool("b", "")})
			// The component {c, defaults} was dropped when b joined it.
			load("b.cue no longer refers to the defaults", []string{"b.cue"}, []string{"c.cue", "defaults.cue"})
			load("nothing changed again", nil)
			// Back to the first content of a.cue: the component is evaluated again
			// (only the components of the last load are kept).
			writeTree(t, dir, map[string]string{"a.cue": pool("a", "")})
			load("a.cue edited back", []string{"a.cue"})
		})
		writeTree(t, dir, map[string]string{"a.cue": pool("a", ""), "b.cue": pool("b", ""), "defaults.cue": `_defaults: restart: maxBackoff: "2m"` + "\n"})
	}
}

// TestLoaderMovedTree loads a tree, then a copy of it elsewhere (as a Git
// checkout of another commit is): nothing is evaluated again, and the
// diagnostics name the new place.
func TestLoaderMovedTree(t *testing.T) {
	files := map[string]string{
		"nodes.cue":       `nodes: "gpu-01": gpus: [{index: 0, vram: 24Gi}]` + "\n",
		"pools/a.cue":     `pools: a: {node: "gpu-01", engine: "llamacpp", model: path: "/m", devices: [3]}` + "\n",
		"pools/b.cue":     `pools: b: {node: "gpu-01", engine: "llama", model: path: "/m", devices: [0]}` + "\n",
		"pools/empty.cue": "",
	}
	dirA, dirB := t.TempDir(), t.TempDir()
	writeTree(t, dirA, files)
	writeTree(t, dirB, files)
	l := NewLoader()
	var evaluations atomic.Int32
	l.evaluated = func([]string) { evaluations.Add(1) }
	_, errA := l.Load(context.Background(), dirA)
	if evaluations.Load() == 0 {
		t.Fatal("the first load evaluated nothing")
	}
	evaluations.Store(0)
	_, errB := l.Load(context.Background(), dirB)
	if n := evaluations.Load(); n != 0 {
		t.Errorf("the copy was evaluated again (%d evaluations)", n)
	}
	_, fresh := Load(context.Background(), dirB)
	if errB == nil || fresh == nil || errB.Error() != fresh.Error() {
		t.Fatalf("the copy's load gave\n%v\nwant\n%v", errB, fresh)
	}
	if want := strings.ReplaceAll(errA.Error(), dirA, dirB); errB.Error() != want {
		t.Errorf("the copy's diagnostics\n%v\nwant\n%v", errB, want)
	}
}

// TestLoaderSeesQuickRewrites rewrites a file with content of the same
// size right after a load, within the file system's timestamp granularity:
// the loader must not take it for unchanged.
func TestLoaderSeesQuickRewrites(t *testing.T) {
	dir := t.TempDir()
	node := func(vram int) string { return fmt.Sprintf(`nodes: "gpu-01": gpus: [{index: 0, vram: %dGi}]`, vram) }
	writeTree(t, dir, map[string]string{"nodes.cue": node(10)})
	l := NewLoader()
	for vram := 11; vram < 20; vram++ {
		writeTree(t, dir, map[string]string{"nodes.cue": node(vram)})
		d, err := l.Load(context.Background(), dir)
		if err != nil {
			t.Fatal(err)
		}
		if got := d.Nodes["gpu-01"].GPUs[0].VRAM; got != int64(vram)<<30 {
			t.Fatalf("vram %d after writing %dGi", got, vram)
		}
	}
}

// TestGeneratedFleetSplits checks that a generated fleet repository (pool
// files with and without a package clause) is split into one component per
// file: nothing in it ties the files.
func TestGeneratedFleetSplits(t *testing.T) {
	dir := t.TempDir()
	if err := benchgen.Write(dir, 100, 10); err != nil {
		t.Fatal(err)
	}
	l := NewLoader()
	evaluations := map[string]bool{}
	var mu sync.Mutex
	l.evaluated = func(rels []string) {
		mu.Lock()
		defer mu.Unlock()
		for _, r := range rels {
			evaluations[r] = true
		}
	}
	if _, err := l.Load(context.Background(), dir); err != nil {
		t.Fatal(err)
	}
	if n := len(l.groups); n != len(evaluations) || n < 11 {
		t.Errorf("%d components of %d files, want one per file", n, len(evaluations))
	}
}

// TestLoaderRechecksWhatAChangeAffects edits one input of a node's
// cross-checks at a time, in a file apart from the others (so that the
// other files' pools are reused, with their previous checks), and compares
// each incremental load with a fresh one.
func TestLoaderRechecksWhatAChangeAffects(t *testing.T) {
	pool := func(id, node, extra string) string {
		return fmt.Sprintf("pools: %q: {node: %q, engine: \"llamacpp\", model: path: \"/m\", devices: [0]%s}\n", id, node, extra)
	}
	node := func(name, vram string) string {
		return fmt.Sprintf("nodes: %q: gpus: [{index: 0, vram: %s}]\n", name, vram)
	}
	tests := []struct {
		name  string
		steps []map[string]string // files written (an empty content removes the file)
		// wantChange: a step whose diagnostics the test expects to differ from the step before.
		wantChange []bool
	}{
		{
			name: "the node's GPUs shrink under a pool",
			steps: []map[string]string{
				{"nodes.cue": node("gpu-01", "24Gi"), "p.cue": pool("p", "gpu-01", ", vram: 20Gi")},
				{"nodes.cue": node("gpu-01", "16Gi")},
				{"nodes.cue": node("gpu-01", "24Gi")},
			},
			wantChange: []bool{false, true, true},
		},
		{
			name: "the node breaks and mends",
			steps: []map[string]string{
				{"nodes.cue": node("gpu-01", "24Gi"), "p.cue": pool("p", "gpu-01", ", devices: [0, 3]")},
				{"nodes.cue": `nodes: "gpu-01": gpus: [{index: 0}]` + "\n"},
				{"nodes.cue": node("gpu-01", "24Gi")},
			},
			wantChange: []bool{false, true, true},
		},
		{
			name: "a node is declared beside a pool's undeclared one",
			steps: []map[string]string{
				{"nodes.cue": node("gpu-01", "24Gi"), "p.cue": pool("p", "gpu-09", "")},
				{"other-nodes.cue": node("gpu-02", "24Gi")},
				{"other-nodes.cue": ""},
				{"nodes.cue": node("gpu-09", "24Gi")},
			},
			wantChange: []bool{false, true, true, true},
		},
		{
			name: "a pool in another file takes the same GPU and port",
			steps: []map[string]string{
				{"nodes.cue": node("gpu-01", "24Gi"), "p.cue": pool("p", "gpu-01", ", port: 8000"), "q.cue": pool("q", "gpu-02", ", port: 8000")},
				{"q.cue": pool("q", "gpu-01", ", port: 8000")},
				{"q.cue": pool("q", "gpu-01", ", port: 8001, share: true, vram: 8Gi")},
				{"p.cue": pool("p", "gpu-01", ", port: 8000, share: true, vram: 20Gi")},
				{"q.cue": ""},
			},
			wantChange: []bool{false, true, true, true, true},
		},
		{
			name: "a pool breaks in its own file",
			steps: []map[string]string{
				{"nodes.cue": node("gpu-01", "24Gi"), "p.cue": pool("p", "gpu-01", ", port: 8000"), "q.cue": pool("q", "gpu-01", ", port: 8000")},
				{"q.cue": pool("q", "gpu-01", `, port: 8000, engine: "llama"`)},
				{"q.cue": pool("q", "gpu-01", ", port: 8000")},
			},
			wantChange: []bool{false, true, true},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			stamp := time.Now().Add(-time.Hour)
			l := NewLoader()
			l.now = func() time.Time { return time.Now().Add(time.Hour) }
			var prev outcome
			for step, files := range tt.steps {
				for name, src := range files {
					path := filepath.Join(dir, name)
					if src == "" {
						if err := os.Remove(path); err != nil {
							t.Fatal(err)
						}
						continue
					}
					writeTree(t, dir, map[string]string{name: src})
					stamp = stamp.Add(time.Second)
					if err := os.Chtimes(path, stamp, stamp); err != nil {
						t.Fatal(err)
					}
				}
				got, err := outcomeOf(l.Load(context.Background(), dir))
				if err != nil {
					t.Fatalf("step %d: %v", step, err)
				}
				fresh, err := outcomeOf(Load(context.Background(), dir))
				if err != nil {
					t.Fatalf("step %d: %v", step, err)
				}
				if diff := cmp.Diff(fresh, got, outcomeCmp...); diff != "" {
					t.Fatalf("step %d: incremental load differs from a fresh load (-fresh +incremental):\n%s", step, diff)
				}
				if changed := !cmp.Equal(prev.Diags, got.Diags, cmpopts.EquateEmpty()); step > 0 && changed != tt.wantChange[step] {
					t.Errorf("step %d changed the diagnostics: %v, want %v (the step does not test what it means to):\n%v", step, changed, tt.wantChange[step], got.Diags)
				}
				prev = got
			}
		})
	}
}
