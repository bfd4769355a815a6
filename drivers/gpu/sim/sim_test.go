package sim_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"

	"github.com/poolmanagerd/pool-managerd/drivers/gpu"
	"github.com/poolmanagerd/pool-managerd/drivers/gpu/nvml"
	"github.com/poolmanagerd/pool-managerd/drivers/gpu/sim"
)

const GiB = sim.GiB

const (
	uuid0 = "GPU-8a1f7c3e-52d4-4b9a-9e61-3f0c2d7b5a18"
	uuid1 = "GPU-c47e2b90-1d6a-4f35-8b2e-7a9d0e4f6c21"
	name0 = "NVIDIA GeForce RTX 3090"
	name1 = "NVIDIA GeForce RTX 3060"
)

// newNode makes a default simulated node in a fresh directory.
func newNode(t *testing.T) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "node")
	if err := sim.Init(dir, sim.DefaultGPUs()); err != nil {
		t.Fatal(err)
	}
	return dir
}

func open(t *testing.T, dir string) *nvml.Node {
	t.Helper()
	n, err := sim.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := n.Close(); err != nil {
			t.Error(err)
		}
	})
	return n
}

func devices(t *testing.T, n gpu.Node) []gpu.Device {
	t.Helper()
	ds, err := n.Devices(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return ds
}

// idle is the default node with nothing on it.
func idle() []gpu.Device {
	return []gpu.Device{
		{Index: 0, UUID: uuid0, Name: name0, MemoryTotal: 24 * GiB, MemoryFree: 24 * GiB},
		{Index: 1, UUID: uuid1, Name: name1, MemoryTotal: 12 * GiB, MemoryFree: 12 * GiB},
	}
}

// startSleep starts a child process that lives until the test ends.
func startSleep(t *testing.T) *exec.Cmd {
	t.Helper()
	cmd := exec.Command("sleep", "30")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if cmd.ProcessState == nil {
			cmd.Process.Kill()
			cmd.Wait()
		}
	})
	return cmd
}

// deadPID returns the pid of a process that has exited and been waited for.
func deadPID(t *testing.T) int {
	t.Helper()
	cmd := exec.Command("true")
	if err := cmd.Run(); err != nil {
		t.Fatal(err)
	}
	return cmd.Process.Pid
}

func TestDefaultNode(t *testing.T) {
	dir := newNode(t)
	if diff := cmp.Diff(idle(), devices(t, open(t, dir))); diff != "" {
		t.Errorf("devices (-want +got):\n%s", diff)
	}
	specs, err := sim.GPUs(dir)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(sim.DefaultGPUs(), specs); diff != "" {
		t.Errorf("GPUs (-want +got):\n%s", diff)
	}
}

func TestInitRefusesExistingNode(t *testing.T) {
	dir := newNode(t)
	err := sim.Init(dir, sim.DefaultGPUs())
	if !errors.Is(err, sim.ErrExists) {
		t.Fatalf("second Init: %v", err)
	}
	if err := sim.Claim(dir, os.Getpid(), map[int]uint64{0: GiB}); err != nil {
		t.Fatal(err)
	}
	if err := sim.Lose(dir, 1); err != nil {
		t.Fatal(err)
	}
	other := filepath.Join(dir, "not-the-sims")
	if err := os.WriteFile(other, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	gpus := []sim.GPUSpec{{Name: "NVIDIA A100-PCIE-40GB", MemoryBytes: 40 * GiB}}
	if err := sim.Reset(dir, gpus); err != nil {
		t.Fatal(err)
	}
	got := devices(t, open(t, dir))
	want := []gpu.Device{{Index: 0, UUID: got[0].UUID, Name: "NVIDIA A100-PCIE-40GB", MemoryTotal: 40 * GiB, MemoryFree: 40 * GiB}}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("devices after Reset (-want +got):\n%s", diff)
	}
	if _, err := os.Stat(other); err != nil {
		t.Errorf("Reset removed a file that is not the node's: %v", err)
	}
}

func TestGeneratedUUIDsAreStable(t *testing.T) {
	specs := []sim.GPUSpec{
		{Name: "NVIDIA GeForce RTX 4090", MemoryBytes: 24 * GiB},
		{Name: "NVIDIA GeForce RTX 4090", MemoryBytes: 24 * GiB},
		{Name: "NVIDIA RTX A4000", MemoryBytes: 16 * GiB, UUID: "GPU-f1a62d7b-08e3-49c5-b7d0-2e6a4c9f8135"},
	}
	dir := filepath.Join(t.TempDir(), "n")
	if err := sim.Init(dir, specs); err != nil {
		t.Fatal(err)
	}
	first := devices(t, open(t, dir))
	second := devices(t, open(t, dir))
	if diff := cmp.Diff(first, second); diff != "" {
		t.Errorf("devices differ between two Opens (-first +second):\n%s", diff)
	}
	pattern := regexp.MustCompile(`^GPU-[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$`)
	for _, d := range first {
		if !pattern.MatchString(d.UUID) {
			t.Errorf("GPU %d: uuid %q", d.Index, d.UUID)
		}
	}
	if first[0].UUID == first[1].UUID {
		t.Errorf("two GPUs share uuid %s", first[0].UUID)
	}
	if first[2].UUID != specs[2].UUID {
		t.Errorf("GPU 2 uuid = %s, want the one given", first[2].UUID)
	}
	// The same node made again gets the same UUIDs.
	if err := sim.Reset(dir, specs); err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(first, devices(t, open(t, dir))); diff != "" {
		t.Errorf("devices of the node made again differ (-first +again):\n%s", diff)
	}
	// The same GPUs in another directory are another node: other UUIDs,
	// except the one given.
	other := filepath.Join(t.TempDir(), "n")
	if err := sim.Init(other, specs); err != nil {
		t.Fatal(err)
	}
	second = devices(t, open(t, other))
	for i := range 2 {
		if second[i].UUID == first[i].UUID {
			t.Errorf("GPU %d has uuid %s on two nodes", i, first[i].UUID)
		}
	}
	if second[2].UUID != specs[2].UUID {
		t.Errorf("GPU 2 uuid on the other node = %s, want the one given", second[2].UUID)
	}
}

func TestNodeUUIDs(t *testing.T) {
	specs := []sim.GPUSpec{
		{Name: "A100", MemoryBytes: 80 * GiB},
		{Name: "A100", MemoryBytes: 80 * GiB},
		{Name: "L4", MemoryBytes: 24 * GiB, UUID: "GPU-f1a62d7b-08e3-49c5-b7d0-2e6a4c9f8135"},
	}
	pattern := regexp.MustCompile(`^GPU-[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$`)
	a, again, b := sim.NodeUUIDs("gpu-01", specs), sim.NodeUUIDs("gpu-01", specs), sim.NodeUUIDs("gpu-02", specs)
	if diff := cmp.Diff(a, again); diff != "" {
		t.Errorf("the same node's UUIDs differ (-first +again):\n%s", diff)
	}
	seen := map[string]string{}
	for node, gpus := range map[string][]sim.GPUSpec{"gpu-01": a, "gpu-02": b} {
		for i, g := range gpus[:2] {
			if !pattern.MatchString(g.UUID) {
				t.Errorf("%s GPU %d: uuid %q", node, i, g.UUID)
			}
			where := fmt.Sprintf("%s GPU %d", node, i)
			if prev, dup := seen[g.UUID]; dup {
				t.Errorf("%s has the uuid of %s: %s", where, prev, g.UUID)
			}
			seen[g.UUID] = where
		}
		if gpus[2].UUID != specs[2].UUID {
			t.Errorf("%s GPU 2 uuid = %s, want the one given", node, gpus[2].UUID)
		}
	}
	if specs[0].UUID != "" {
		t.Errorf("NodeUUIDs changed its argument")
	}
}

func TestInitErrors(t *testing.T) {
	tests := []struct {
		name    string
		gpus    []sim.GPUSpec
		wantErr string
	}{
		{"no GPUs", nil, "simulated node: at least one GPU is needed"},
		{"no name", []sim.GPUSpec{{MemoryBytes: GiB}}, "simulated GPU 0: no name"},
		{"no memory", []sim.GPUSpec{{Name: "x"}}, "simulated GPU 0 (x): no memory"},
		{"bad uuid", []sim.GPUSpec{{Name: "x", MemoryBytes: GiB, UUID: "GPU-1"}}, `simulated GPU 0: uuid "GPU-1" does not look like GPU-xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx`},
		{"same uuid", []sim.GPUSpec{{Name: "x", MemoryBytes: GiB, UUID: uuid0}, {Name: "y", MemoryBytes: GiB, UUID: uuid0}}, "simulated GPU 1 has the same uuid as GPU 0"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "n")
			err := sim.Init(dir, tt.gpus)
			if err == nil || err.Error() != tt.wantErr {
				t.Fatalf("Init error = %v, want %q", err, tt.wantErr)
			}
			if _, err := os.Stat(dir); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("failed Init left %s behind", dir)
			}
		})
	}
}

func TestClaims(t *testing.T) {
	dir := newNode(t)
	n := open(t, dir) // opened before the claims: changes are seen
	engine := startSleep(t)
	pid := engine.Process.Pid
	if err := sim.Claim(dir, pid, map[int]uint64{0: 20 * GiB, 1: 4 * GiB}); err != nil {
		t.Fatal(err)
	}
	dead := deadPID(t)
	if err := sim.Claim(dir, dead, map[int]uint64{1: 8 * GiB}); err != nil {
		t.Fatal(err)
	}
	want := []gpu.Device{
		{Index: 0, UUID: uuid0, Name: name0, MemoryTotal: 24 * GiB, MemoryUsed: 20 * GiB, MemoryFree: 4 * GiB,
			Processes: []gpu.Process{{PID: pid, UsedBytes: 20 * GiB}}},
		{Index: 1, UUID: uuid1, Name: name1, MemoryTotal: 12 * GiB, MemoryUsed: 4 * GiB, MemoryFree: 8 * GiB,
			Processes: []gpu.Process{{PID: pid, UsedBytes: 4 * GiB}}},
	}
	if diff := cmp.Diff(want, devices(t, n)); diff != "" {
		t.Errorf("devices with a live engine (-want +got):\n%s", diff)
	}
	// Another process's view is the same.
	if diff := cmp.Diff(want, devices(t, open(t, dir))); diff != "" {
		t.Errorf("devices from a second Open (-want +got):\n%s", diff)
	}

	// The engine dies: its memory is free again.
	if err := engine.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	engine.Wait()
	if diff := cmp.Diff(idle(), devices(t, n)); diff != "" {
		t.Errorf("devices after the engine died (-want +got):\n%s", diff)
	}

	// Released claims are gone, even for a live process.
	self := os.Getpid()
	if err := sim.Claim(dir, self, map[int]uint64{1: GiB}); err != nil {
		t.Fatal(err)
	}
	if got := devices(t, n)[1].MemoryUsed; got != GiB {
		t.Errorf("used with a claim of this process = %d, want 1 GiB", got)
	}
	if err := sim.Release(dir, self); err != nil {
		t.Fatal(err)
	}
	if err := sim.Release(dir, self); err != nil {
		t.Fatalf("second Release: %v", err)
	}
	if diff := cmp.Diff(idle(), devices(t, n)); diff != "" {
		t.Errorf("devices after Release (-want +got):\n%s", diff)
	}
}

func TestZombieHoldsNothing(t *testing.T) {
	dir := newNode(t)
	engine := startSleep(t)
	if err := sim.Claim(dir, engine.Process.Pid, map[int]uint64{0: GiB}); err != nil {
		t.Fatal(err)
	}
	if err := engine.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	n := open(t, dir)
	// Not waited for yet: a zombie, which holds no memory.
	deadline := time.Now().Add(5 * time.Second)
	for {
		d := devices(t, n)[0]
		if d.MemoryUsed == 0 && d.Processes == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("a killed engine still holds memory: %+v", d)
		}
		time.Sleep(10 * time.Millisecond)
	}
	engine.Wait()
}

func TestForeign(t *testing.T) {
	dir := newNode(t)
	n := open(t, dir)
	const fake = 999999 // no such process: shown all the same
	if err := sim.Foreign(dir, 1, fake, 10*GiB); err != nil {
		t.Fatal(err)
	}
	if err := sim.Foreign(dir, 1, 4242, 6*GiB); err != nil {
		t.Fatal(err)
	}
	if err := sim.Foreign(dir, 0, fake, GiB); err != nil {
		t.Fatal(err)
	}
	want := []gpu.Device{
		{Index: 0, UUID: uuid0, Name: name0, MemoryTotal: 24 * GiB, MemoryUsed: GiB, MemoryFree: 23 * GiB,
			Processes: []gpu.Process{{PID: fake, UsedBytes: GiB}}},
		// More than the GPU has: nothing free, never below zero.
		{Index: 1, UUID: uuid1, Name: name1, MemoryTotal: 12 * GiB, MemoryUsed: 16 * GiB, MemoryFree: 0,
			Processes: []gpu.Process{{PID: 4242, UsedBytes: 6 * GiB}, {PID: fake, UsedBytes: 10 * GiB}}},
	}
	if diff := cmp.Diff(want, devices(t, n)); diff != "" {
		t.Errorf("devices with foreign holds (-want +got):\n%s", diff)
	}
	// 0 bytes removes one hold.
	if err := sim.Foreign(dir, 0, fake, 0); err != nil {
		t.Fatal(err)
	}
	want[0] = idle()[0]
	if diff := cmp.Diff(want, devices(t, n)); diff != "" {
		t.Errorf("devices after removing a hold (-want +got):\n%s", diff)
	}
	if err := sim.ClearForeign(dir); err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(idle(), devices(t, n)); diff != "" {
		t.Errorf("devices after ClearForeign (-want +got):\n%s", diff)
	}
}

func next(t *testing.T, ch <-chan gpu.Event) gpu.Event {
	t.Helper()
	select {
	case e, ok := <-ch:
		if !ok {
			t.Fatal("event channel closed")
		}
		return e
	case <-time.After(5 * time.Second):
		t.Fatal("no event within 5s")
	}
	return gpu.Event{}
}

var ignoreTime = cmpopts.IgnoreFields(gpu.Event{}, "Time")

func TestEvents(t *testing.T) {
	dir := newNode(t)
	if err := sim.InjectXid(dir, 0, 48); err != nil { // before the stream: not seen
		t.Fatal(err)
	}
	n := open(t, dir)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ch, err := n.Events(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, x := range []struct {
		index int
		xid   uint64
	}{{0, 13}, {1, 79}, {1, 43}, {0, 94}} {
		if err := sim.InjectXid(dir, x.index, x.xid); err != nil {
			t.Fatal(err)
		}
	}
	for _, want := range []gpu.Event{
		{Kind: gpu.EventXid, Index: 1, UUID: uuid1, Xid: 79},
		{Kind: gpu.EventXid, Index: 0, UUID: uuid0, Xid: 94},
	} {
		if diff := cmp.Diff(want, next(t, ch), ignoreTime); diff != "" {
			t.Errorf("event (-want +got):\n%s", diff)
		}
	}

	// Devices may be read while the stream runs.
	if diff := cmp.Diff(idle(), devices(t, n)); diff != "" {
		t.Errorf("devices (-want +got):\n%s", diff)
	}

	// A lost GPU is reported once.
	if err := sim.Lose(dir, 0); err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(gpu.Event{Kind: gpu.EventLost, Index: 0, UUID: uuid0}, next(t, ch), ignoreTime); diff != "" {
		t.Errorf("lost event (-want +got):\n%s", diff)
	}
	// Two probes of the lost GPU, then an application Xid (dropped) and a
	// critical one.
	time.Sleep(1200 * time.Millisecond)
	if err := sim.InjectXid(dir, 1, 31); err != nil {
		t.Fatal(err)
	}
	if err := sim.InjectXid(dir, 1, 62); err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(gpu.Event{Kind: gpu.EventXid, Index: 1, UUID: uuid1, Xid: 62}, next(t, ch), ignoreTime); diff != "" {
		t.Errorf("event after lost (-want +got):\n%s", diff)
	}

	cancel()
	select {
	case e, ok := <-ch:
		if ok {
			t.Errorf("event after cancel: %+v", e)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("event channel not closed after cancel")
	}
}

func TestLoseRestore(t *testing.T) {
	dir := newNode(t)
	n := open(t, dir)
	if err := sim.Claim(dir, os.Getpid(), map[int]uint64{0: GiB, 1: GiB}); err != nil {
		t.Fatal(err)
	}
	before := devices(t, n)
	if err := sim.Lose(dir, 1); err != nil {
		t.Fatal(err)
	}
	want := []gpu.Device{before[0], {Index: 1, UUID: uuid1, Name: name1, Lost: true}}
	if diff := cmp.Diff(want, devices(t, n)); diff != "" {
		t.Errorf("devices with GPU 1 lost (-want +got):\n%s", diff)
	}
	// A process that never saw the GPU cannot name it.
	want[1] = gpu.Device{Index: 1, Lost: true}
	if diff := cmp.Diff(want, devices(t, open(t, dir))); diff != "" {
		t.Errorf("devices with GPU 1 lost, fresh Open (-want +got):\n%s", diff)
	}
	if err := sim.Restore(dir, 1); err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(before, devices(t, n)); diff != "" {
		t.Errorf("devices after Restore (-want +got):\n%s", diff)
	}
}

func TestErrors(t *testing.T) {
	tests := []struct {
		name  string
		setup func(t *testing.T, dir string)
		// wantErr is the error of Open, with DIR for the directory.
		wantErr string
	}{{
		name:    "missing directory",
		setup:   func(t *testing.T, dir string) {},
		wantErr: "simulated node DIR not initialised; run pool-managerd sim init DIR",
	}, {
		name:    "empty directory",
		setup:   func(t *testing.T, dir string) { os.Mkdir(dir, 0o755) },
		wantErr: "simulated node DIR not initialised; run pool-managerd sim init DIR",
	}, {
		name:    "corrupt node.json",
		setup:   func(t *testing.T, dir string) { write(t, dir, "node.json", `{"gpus": [`) },
		wantErr: "simulated node: DIR/node.json is corrupt: unexpected EOF",
	}, {
		name:    "node.json without GPUs",
		setup:   func(t *testing.T, dir string) { write(t, dir, "node.json", `{"gpus": []}`) },
		wantErr: "simulated node: DIR/node.json is corrupt: no GPUs",
	}, {
		name: "corrupt claim",
		setup: func(t *testing.T, dir string) {
			initNode(t, dir)
			write(t, dir, "claims/123.json", `{"pid": 123, "gpus": {"0": -1}}`)
		},
		wantErr: "simulated node: DIR/claims/123.json is corrupt: json: cannot unmarshal number -1 into Go struct field claimFile.gpus of type uint64",
	}, {
		name: "claim on a GPU the node has not",
		setup: func(t *testing.T, dir string) {
			initNode(t, dir)
			write(t, dir, "claims/123.json", `{"pid": 123, "gpus": {"7": 1}}`)
		},
		wantErr: "simulated node: DIR/claims/123.json is corrupt: no GPU 7",
	}, {
		name: "corrupt foreign hold",
		setup: func(t *testing.T, dir string) {
			initNode(t, dir)
			write(t, dir, "foreign/0-1.json", `nonsense`)
		},
		wantErr: "simulated node: DIR/foreign/0-1.json is corrupt: invalid character 'o' in literal null (expecting 'u')",
	}, {
		name: "corrupt events log",
		setup: func(t *testing.T, dir string) {
			initNode(t, dir)
			write(t, dir, "events.log", "{\"index\":0,\"xid\":79}\n{\n")
		},
		wantErr: `simulated node: DIR/events.log is corrupt: line "{": unexpected end of JSON input`,
	}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "node")
			tt.setup(t, dir)
			n, err := sim.Open(dir)
			if err == nil {
				n.Close()
				t.Fatal("Open succeeded")
			}
			if want := strings.ReplaceAll(tt.wantErr, "DIR", dir); err.Error() != want {
				t.Errorf("Open error:\n got %s\nwant %s", err, want)
			}
		})
	}
	dir := filepath.Join(t.TempDir(), "none")
	if _, err := sim.Open(dir); !errors.Is(err, sim.ErrNotInitialised) {
		t.Errorf("Open of a missing directory: %v does not wrap ErrNotInitialised", err)
	}
	for name, f := range map[string]func() error{
		"Claim":     func() error { return sim.Claim(dir, 1, map[int]uint64{0: 1}) },
		"Release":   func() error { return sim.Release(dir, 1) },
		"Foreign":   func() error { return sim.Foreign(dir, 0, 1, 1) },
		"InjectXid": func() error { return sim.InjectXid(dir, 0, 79) },
		"Lose":      func() error { return sim.Lose(dir, 0) },
		"Restore":   func() error { return sim.Restore(dir, 0) },
	} {
		if err := f(); !errors.Is(err, sim.ErrNotInitialised) {
			t.Errorf("%s on a missing node: %v", name, err)
		}
	}
}

func TestBadIndex(t *testing.T) {
	dir := newNode(t)
	want := "simulated node " + dir + " has no GPU 2 (it has 2: 0 to 1)"
	for name, f := range map[string]func() error{
		"Claim":     func() error { return sim.Claim(dir, 1, map[int]uint64{2: 1}) },
		"Foreign":   func() error { return sim.Foreign(dir, 2, 1, 1) },
		"InjectXid": func() error { return sim.InjectXid(dir, 2, 79) },
		"Lose":      func() error { return sim.Lose(dir, 2) },
		"Restore":   func() error { return sim.Restore(dir, 2) },
	} {
		if err := f(); err == nil || err.Error() != want {
			t.Errorf("%s: error %v, want %q", name, err, want)
		}
	}
}

// A file that turns corrupt after Open is named in the error of the call.
func TestCorruptAfterOpen(t *testing.T) {
	dir := newNode(t)
	n := open(t, dir)
	write(t, dir, "claims/77.json", `{"pid": 78}`)
	_, err := n.Devices(context.Background())
	want := "nvml: GPU 0: GetMemoryInfo: ERROR_UNKNOWN: simulated node: " + dir + "/claims/77.json is corrupt: it holds the claim of pid 78"
	if err == nil || err.Error() != want {
		t.Errorf("Devices error:\n got %v\nwant %s", err, want)
	}
}

func initNode(t *testing.T, dir string) {
	t.Helper()
	if err := sim.Init(dir, sim.DefaultGPUs()); err != nil {
		t.Fatal(err)
	}
}

func write(t *testing.T, dir, name, content string) {
	t.Helper()
	path := filepath.Join(dir, name)
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}
