package testenv

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/poolmanagerd/pool-managerd/drivers/engine"
	"github.com/poolmanagerd/pool-managerd/drivers/engine/preset"
	"github.com/poolmanagerd/pool-managerd/drivers/gpu/sim"
)

// startEngine starts a process that looks like an engine: it carries the
// marker, with env, and is waited for in the background.
func startEngine(t *testing.T, env ...string) *exec.Cmd {
	t.Helper()
	cmd := exec.Command("sleep", "60")
	cmd.Env = append([]string{engine.MarkerEnv + "=node/pool/1/sha256:x"}, env...)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		_ = cmd.Wait()
		close(done)
	}()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-done
	})
	return cmd
}

func pids(es []Engine) []int {
	var out []int
	for _, e := range es {
		out = append(out, e.PID)
	}
	return out
}

// TestLeakCheck: the check finds the engines whose state directory or
// simulated node lies under the folder, and only those; it kills them and
// names them; a second check finds none.
func TestLeakCheck(t *testing.T) {
	dir := t.TempDir()
	byState := startEngine(t, engine.StateDirEnv+"="+filepath.Join(dir, "state"))
	bySim := startEngine(t, preset.SimDirEnv+"="+filepath.Join(dir, "a", "sim"))
	elsewhere := startEngine(t, engine.StateDirEnv+"="+dir+"-other/state")
	noMarker := exec.Command("sleep", "60")
	noMarker.Env = []string{engine.StateDirEnv + "=" + dir}
	if err := noMarker.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = noMarker.Process.Kill()
		_ = noMarker.Wait()
	})

	found, err := Engines(dir)
	if err != nil {
		t.Fatal(err)
	}
	want := []int{byState.Process.Pid, bySim.Process.Pid}
	if want[0] > want[1] {
		want[0], want[1] = want[1], want[0]
	}
	if got := pids(found); len(got) != 2 || got[0] != want[0] || got[1] != want[1] {
		t.Fatalf("Engines(%s) = %v, want %v", dir, got, want)
	}

	err = CheckEngines(context.Background(), dir)
	var leak *LeakError
	if !errors.As(err, &leak) || len(leak.Engines) != 2 || leak.Where != dir {
		t.Fatalf("CheckEngines: %v, want a leak of 2 engines under %s", err, dir)
	}
	if left, err := Engines(dir); err != nil || len(left) != 0 {
		t.Errorf("after the check: %v (%v), want none", pids(left), err)
	}
	if err := CheckEngines(context.Background(), dir); err != nil {
		t.Errorf("a second check: %v, want none", err)
	}
	if !alive(elsewhere.Process.Pid) || !alive(noMarker.Process.Pid) {
		t.Errorf("the check killed a process not under %s", dir)
	}
}

// TestWithin: a folder's own path and the paths below it, not a sibling
// whose name starts with the folder's.
func TestWithin(t *testing.T) {
	for _, tc := range []struct {
		path string
		want bool
	}{
		{"/a/b", true},
		{"/a/b/", true},
		{"/a/b/c/d", true},
		{"/a/bc", false},
		{"/a", false},
		{"", false},
	} {
		if got := within("/a/b", tc.path); got != tc.want {
			t.Errorf("within(/a/b, %q) = %v, want %v", tc.path, got, tc.want)
		}
	}
}

// TestNewNode: a node's folder holds the simulated GPUs, its config and
// model folders; WriteConfig writes what loads.
func TestNewNode(t *testing.T) {
	e := &Env{Root: t.TempDir()}
	n := e.NewNode(t, "n1", []sim.GPUSpec{{Name: "GPU", MemoryBytes: 16 * sim.GiB}})
	n.WriteConfig(Pool{ID: "a", Model: n.ModelFile("a.gguf"), Devices: []int{0}})
	d := load(t, readTree(t, n.Config))
	if p := d.Pools["a"]; p == nil || p.Node != "n1" || p.Model.Path != filepath.Join(n.Models, "a.gguf") {
		t.Errorf("pools %+v", d.Pools)
	}
	if g := d.Nodes["n1"]; g == nil || len(g.GPUs) != 1 || g.GPUs[0].UUID == "" {
		t.Errorf("nodes %+v", d.Nodes)
	}
	if _, err := os.Stat(filepath.Join(n.Sim, "node.json")); err != nil {
		t.Error(err)
	}
}

func readTree(t *testing.T, dir string) map[string]string {
	t.Helper()
	files := map[string]string{}
	err := filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		data, err := os.ReadFile(p)
		rel, _ := filepath.Rel(dir, p)
		files[rel] = string(data)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return files
}
