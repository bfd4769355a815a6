package schema

import (
	"bytes"
	"context"
	"errors"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// moduleRoot is the repository root, relative to this package's directory
// (where go test runs the test binary).
const moduleRoot = ".."

// schemaRel is the schema file, relative to the repository root, as the
// documented cue vet command names it.
const schemaRel = "schema/" + SchemaFileName

// buildCUE returns the cue command at the version go.mod requires (go.mod
// has `tool cuelang.org/go/cmd/cue`, so this works offline once the modules
// are in the module cache). `go tool -n` builds it once and keeps it in the
// build cache, so a later run does not link it again.
func buildCUE(t *testing.T) string {
	t.Helper()
	goTool, err := exec.LookPath("go")
	if err != nil {
		t.Skip("go is not on PATH: cannot build the cue command")
	}
	cmd := exec.Command(goTool, "tool", "-n", "cue")
	cmd.Dir = moduleRoot
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("go tool -n cue: %v\n%s", err, stderr.Bytes())
	}
	bin := strings.TrimSpace(string(out))
	if info, err := os.Stat(bin); err != nil || info.IsDir() {
		t.Fatalf("go tool -n cue printed %q, not the cue command (%v)", bin, err)
	}
	return bin
}

// findCUEFiles lists the files that the command documented in the schema
// lists when run in the directory root:
//
//	find -L DIR -name '*.cue' -not -path '*/.*' -not -path '*/cue.mod/*'
//
// It follows symbolic links; it matches -name against the base name of every
// entry (directories too, as find does) and -path against the whole path as
// find prints it (DIR joined with the path below it), where find's '*' also
// matches '/'. It returns the paths as find prints them, sorted.
func findCUEFiles(root, dir string) ([]string, error) {
	var out []string
	// active holds the directories on the current path: find -L reports a
	// loop and does not descend into it.
	active := map[[2]uint64]bool{}
	var walk func(path, shown string, info fs.FileInfo) error
	walk = func(path, shown string, info fs.FileInfo) error {
		if ok, _ := filepath.Match("*.cue", filepath.Base(shown)); ok &&
			!strings.Contains(shown, "/.") && !strings.Contains(shown, "/cue.mod/") {
			out = append(out, shown)
		}
		if !info.IsDir() {
			return nil
		}
		if st, ok := info.Sys().(*syscall.Stat_t); ok {
			id := [2]uint64{uint64(st.Dev), uint64(st.Ino)} //nolint:unconvert // Dev's type differs by platform
			if active[id] {
				return nil
			}
			active[id] = true
			defer delete(active, id)
		}
		entries, err := os.ReadDir(path)
		if err != nil {
			return err
		}
		for _, e := range entries {
			child := filepath.Join(path, e.Name())
			info, err := os.Stat(child) // -L: what a link points to
			if err != nil {
				info, err = os.Lstat(child) // a dangling link is still listed
				if err != nil {
					return err
				}
			}
			if err := walk(child, shown+"/"+e.Name(), info); err != nil {
				return err
			}
		}
		return nil
	}
	path := filepath.Join(root, dir)
	info, err := os.Stat(path)
	if err != nil {
		return nil, err
	}
	if err := walk(path, dir, info); err != nil {
		return nil, err
	}
	slices.Sort(out)
	return out, nil
}

// cueVet runs `cue vet -c schema/poolmanagerd.cue FILES...` from the
// repository root on the files of dir (relative to the root). It returns
// whether cue vet accepted them, and its output.
func cueVet(t *testing.T, cue, dir string) (bool, string) {
	t.Helper()
	files, err := findCUEFiles(moduleRoot, dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(files) == 0 {
		t.Fatalf("%s: no .cue files", dir)
	}
	if find, err := exec.LookPath("find"); err == nil {
		// The listing must be the documented command's.
		cmd := exec.Command(find, "-L", dir, "-name", "*.cue", "-not", "-path", "*/.*", "-not", "-path", "*/cue.mod/*")
		cmd.Dir = moduleRoot
		out, err := cmd.Output()
		if err != nil {
			t.Fatalf("find %s: %v", dir, err)
		}
		listed := strings.Fields(string(out))
		slices.Sort(listed)
		if diff := cmp.Diff(listed, files); diff != "" {
			t.Fatalf("findCUEFiles(%s) differs from find (-find +findCUEFiles):\n%s", dir, diff)
		}
	}
	cmd := exec.Command(cue, append([]string{"vet", "-c", schemaRel}, files...)...)
	cmd.Dir = moduleRoot
	cmd.Env = append(os.Environ(), "CUE_CACHE_DIR="+t.TempDir())
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err = cmd.Run()
	var exit *exec.ExitError
	switch {
	case err == nil:
		return true, out.String()
	case errors.As(err, &exit) && exit.ExitCode() == 1:
		return false, out.String()
	default:
		// Not a verdict on the config: cue crashed or did not run.
		t.Fatalf("cue vet %s: %v\n%s", dir, err, out.String())
		return false, ""
	}
}

// exampleDirs returns the example config repositories, relative to the
// repository root: the folders of examples/ that hold .cue files (others,
// such as systemd/ and kubernetes/, are deployment examples).
func exampleDirs(t *testing.T) []string {
	t.Helper()
	entries, err := os.ReadDir(filepath.Join(moduleRoot, "examples"))
	if err != nil {
		t.Fatal(err)
	}
	var dirs []string
	for _, e := range entries {
		if e.IsDir() && hasCUEFiles(filepath.Join(moduleRoot, "examples", e.Name())) {
			dirs = append(dirs, "examples/"+e.Name())
		}
	}
	if len(dirs) == 0 {
		t.Fatal("no examples")
	}
	return dirs
}

// hasCUEFiles reports whether the tree under dir holds a .cue file.
func hasCUEFiles(dir string) bool {
	found := false
	_ = filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err == nil && !d.IsDir() && strings.HasSuffix(p, ".cue") {
			found = true
			return filepath.SkipAll
		}
		return err
	})
	return found
}

// TestCueVet checks that the schema works with plain cue vet, as documented,
// and agrees with the loader: the examples pass both; the invalid cases marked
// cueLevel fail both; the others pass cue vet and fail only the loader's Go
// checks, which is what makes them Go-level.
func TestCueVet(t *testing.T) {
	cue := buildCUE(t)
	for _, dir := range exampleDirs(t) {
		t.Run(dir, func(t *testing.T) {
			t.Parallel()
			if ok, out := cueVet(t, cue, dir); !ok {
				t.Errorf("cue vet rejects %s:\n%s", dir, out)
			}
			if _, err := Load(context.Background(), filepath.Join(moduleRoot, dir)); err != nil {
				t.Errorf("Load(%s): %v", dir, err)
			}
		})
	}
	for _, tc := range invalidCases {
		dir := "testdata/invalid/" + tc.name
		t.Run(dir, func(t *testing.T) {
			t.Parallel()
			ok, out := cueVet(t, cue, dir)
			switch {
			case tc.cueLevel && ok:
				t.Errorf("cue vet accepts %s, but the case is marked cueLevel: make it cueLevel: false", dir)
			case !tc.cueLevel && !ok:
				t.Errorf("cue vet rejects %s, but the case is not marked cueLevel (a schema-level mistake); cue vet says:\n%s", dir, out)
			}
			_, err := Load(context.Background(), filepath.Join(moduleRoot, dir))
			var diags Diagnostics
			if !errors.As(err, &diags) {
				t.Errorf("Load(%s) = %v, want Diagnostics", dir, err)
			}
		})
	}
}
