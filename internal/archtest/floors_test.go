package archtest

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os/exec"
	"slices"
	"strings"
	"testing"
)

// tools is the floor of the packages that may import anything and that no
// product package may import.
const tools = -1

// floors gives each part of the module its floor: a package belongs to the
// entry that is its path or a folder above it, the longest one first.
var floors = []struct {
	path  string
	floor int
}{
	{"schema", 1},
	{"drivers", 2},
	{"reconcile", 3},
	{"internal/executor", 4},
	{"internal/state", 4},
	{"internal/observe", 4},
	{"internal/watch", 4},
	{"internal/gitsource", 4},
	{"internal/daemon", 5},
	{"internal/api", 5},
	{"internal/metrics", 5},
	{"internal/poolview", 5},
	{"internal/cli", 5},
	{"cmd/pool-managerd", 5},
	{"testkit", tools},
	{"cmd/fake-engine", tools},
	{"tools", tools},
	{"e2e", tools},
	{"features", tools},
	{"examples", tools},
	{"internal/archtest", tools},
}

// pure are the packages of pure decisions (no I/O: DESIGN's floor 3) and
// the only packages of the module they may import: the config's types and
// the GPU driver's plain types. The engine drivers (drivers/engine, which
// probes health over HTTP and reads /proc) are out of bounds for them.
var pure = map[string][]string{
	"reconcile":         {"schema", "drivers/gpu", "reconcile/restart"},
	"reconcile/restart": {"schema"},
}

// mayImport reports whether imp is one of the allowed packages, or below
// schema (the config's own leaf packages).
func mayImport(allowed []string, imp string) bool {
	return slices.Contains(allowed, imp) || (slices.Contains(allowed, "schema") && strings.HasPrefix(imp, "schema/"))
}

// floorOf returns the floor of a package, by its path within the module.
func floorOf(rel string) (int, bool) {
	best, floor := -1, 0
	for _, f := range floors {
		if (rel == f.path || strings.HasPrefix(rel, f.path+"/")) && len(f.path) > best {
			best, floor = len(f.path), f.floor
		}
	}
	return floor, best >= 0
}

// pkg is a package of the module: its path within the module and the
// module's packages it imports (test files left out).
type pkg struct {
	Path    string
	Imports []string
}

// check lists every import that runs against the floors (from a product
// package to a higher floor or to a tool) and every product package that
// has no floor.
func check(pkgs []pkg) []string {
	var bad []string
	for _, p := range pkgs {
		from, ok := floorOf(p.Path)
		if !ok {
			bad = append(bad, fmt.Sprintf("%s has no floor: add it to the table in internal/archtest", p.Path))
			continue
		}
		if from == tools {
			continue
		}
		for _, imp := range p.Imports {
			to, ok := floorOf(imp)
			switch {
			case !ok:
				// Reported as a package without a floor.
			case to == tools:
				bad = append(bad, fmt.Sprintf("%s (floor %d) imports %s, a test tool", p.Path, from, imp))
			case to > from:
				bad = append(bad, fmt.Sprintf("%s (floor %d) imports %s (floor %d), a floor above it", p.Path, from, imp, to))
			case pure[p.Path] != nil && !mayImport(pure[p.Path], imp):
				bad = append(bad, fmt.Sprintf("%s is pure and imports %s, which it may not (only %s)", p.Path, imp, strings.Join(pure[p.Path], ", ")))
			}
		}
	}
	slices.Sort(bad)
	return bad
}

// modulePackages runs go list on the module and returns its packages, with
// their imports of the module's own packages, as paths within the module.
func modulePackages(t *testing.T) []pkg {
	t.Helper()
	var mod struct{ Path, Dir string }
	if err := json.Unmarshal(goCmd(t, "", "list", "-m", "-json"), &mod); err != nil {
		t.Fatalf("go list -m -json: %v", err)
	}
	dec := json.NewDecoder(bytes.NewReader(goCmd(t, mod.Dir, "list", "-json", "./...")))
	var pkgs []pkg
	for {
		var p struct {
			ImportPath string
			Imports    []string
		}
		err := dec.Decode(&p)
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatalf("go list -json ./...: %v", err)
		}
		rel, ok := within(mod.Path, p.ImportPath)
		if !ok {
			continue
		}
		out := pkg{Path: rel}
		for _, imp := range p.Imports {
			if r, ok := within(mod.Path, imp); ok {
				out.Imports = append(out.Imports, r)
			}
		}
		pkgs = append(pkgs, out)
	}
	if len(pkgs) == 0 {
		t.Fatal("go list found no packages in the module")
	}
	return pkgs
}

// within returns an import path relative to the module, if it is the module's.
func within(module, path string) (string, bool) {
	if path == module {
		return ".", true
	}
	rel, ok := strings.CutPrefix(path, module+"/")
	return rel, ok
}

// goCmd runs the go command found on PATH in dir and returns its stdout.
func goCmd(t *testing.T, dir string, args ...string) []byte {
	t.Helper()
	cmd := exec.Command("go", args...)
	cmd.Dir = dir
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("go %s: %v\n%s", strings.Join(args, " "), err, stderr.String())
	}
	return out
}

// TestFloors fails on every import that runs up the floors or into a test
// tool, and on every product package without a floor.
func TestFloors(t *testing.T) {
	pkgs := modulePackages(t)
	for _, want := range []string{"schema", "reconcile", "internal/executor", "testkit/fakeengine"} {
		if !slices.ContainsFunc(pkgs, func(p pkg) bool { return p.Path == want }) {
			t.Fatalf("go list did not list %s: the module's packages were not read", want)
		}
	}
	for _, b := range check(pkgs) {
		t.Error(b)
	}
}

// TestCheck shows that check finds what it must, and passes what it must.
func TestCheck(t *testing.T) {
	for _, tc := range []struct {
		name string
		pkgs []pkg
		want []string
	}{
		{
			name: "down and across",
			pkgs: []pkg{
				{Path: "schema/llamaargs"},
				{Path: "schema", Imports: []string{"schema/llamaargs"}},
				{Path: "drivers/engine/local", Imports: []string{"drivers/engine", "drivers/engine/proc", "schema"}},
				{Path: "reconcile", Imports: []string{"drivers/gpu", "reconcile/restart", "schema", "schema/llamaargs"}},
				{Path: "internal/executor", Imports: []string{"internal/state", "reconcile", "drivers/engine/supervisor"}},
				{Path: "internal/poolview", Imports: []string{"internal/api", "internal/state"}},
				{Path: "cmd/pool-managerd", Imports: []string{"internal/cli"}},
			},
		},
		{
			name: "tools import anything",
			pkgs: []pkg{
				{Path: "testkit/fakeengine", Imports: []string{"drivers/gpu/sim", "schema/llamaargs"}},
				{Path: "cmd/fake-engine", Imports: []string{"testkit/fakeengine"}},
				{Path: "e2e", Imports: []string{"internal/cli", "testkit/syncbuf"}},
				{Path: "internal/archtest", Imports: []string{"internal/daemon"}},
			},
		},
		{
			name: "up a floor",
			pkgs: []pkg{{Path: "reconcile", Imports: []string{"internal/state", "schema"}}},
			want: []string{"reconcile (floor 3) imports internal/state (floor 4), a floor above it"},
		},
		{
			name: "from the ground to the top",
			pkgs: []pkg{{Path: "schema/llamaargs", Imports: []string{"cmd/pool-managerd"}}},
			want: []string{"schema/llamaargs (floor 1) imports cmd/pool-managerd (floor 5), a floor above it"},
		},
		{
			name: "a driver into the executor",
			pkgs: []pkg{{Path: "drivers/engine/local", Imports: []string{"internal/executor", "drivers/engine"}}},
			want: []string{"drivers/engine/local (floor 2) imports internal/executor (floor 4), a floor above it"},
		},
		{
			name: "a product package imports a test tool",
			pkgs: []pkg{{Path: "internal/daemon", Imports: []string{"testkit/syncbuf"}}},
			want: []string{"internal/daemon (floor 5) imports testkit/syncbuf, a test tool"},
		},
		{
			name: "the pure planner reaches for an engine driver",
			pkgs: []pkg{{Path: "reconcile", Imports: []string{"drivers/engine", "schema"}}, {Path: "reconcile/restart", Imports: []string{"drivers/gpu"}}},
			want: []string{
				"reconcile is pure and imports drivers/engine, which it may not (only schema, drivers/gpu, reconcile/restart)",
				"reconcile/restart is pure and imports drivers/gpu, which it may not (only schema)",
			},
		},
		{
			name: "a package without a floor",
			pkgs: []pkg{{Path: "internal/newthing", Imports: []string{"schema"}}, {Path: "internal/cli", Imports: []string{"internal/newthing"}}},
			want: []string{"internal/newthing has no floor: add it to the table in internal/archtest"},
		},
		{
			name: "a prefix is not a folder",
			pkgs: []pkg{{Path: "schemas"}, {Path: "reconciler"}},
			want: []string{"reconciler has no floor: add it to the table in internal/archtest", "schemas has no floor: add it to the table in internal/archtest"},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := check(tc.pkgs)
			if !slices.Equal(got, tc.want) {
				t.Errorf("check = %q\nwant    %q", got, tc.want)
			}
		})
	}
}

func TestFloorOf(t *testing.T) {
	for _, tc := range []struct {
		path  string
		floor int
		ok    bool
	}{
		{"schema", 1, true},
		{"schema/llamaargs", 1, true},
		{"drivers/engine/supervisor", 2, true},
		{"reconcile/restart", 3, true},
		{"internal/executor", 4, true},
		{"internal/api", 5, true},
		{"cmd/pool-managerd", 5, true},
		{"internal/archtest", tools, true},
		{"testkit/openapicheck", tools, true},
		{"internal", 0, false},
		{"cmd", 0, false},
		{".", 0, false},
	} {
		floor, ok := floorOf(tc.path)
		if floor != tc.floor || ok != tc.ok {
			t.Errorf("floorOf(%q) = %d, %v; want %d, %v", tc.path, floor, ok, tc.floor, tc.ok)
		}
	}
}
