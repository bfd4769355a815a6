package sim_test

import (
	"testing"

	"github.com/poolmanagerd/pool-managerd/drivers/gpu/sim"
)

// A real engine is attributed its need while it lives; a stand-in that owns
// its claims is never overwritten, whichever comes first.
func TestAttribute(t *testing.T) {
	dir := newNode(t)
	n := open(t, dir)

	real := startSleep(t)
	ok, err := sim.Attribute(dir, real.Process.Pid, map[int]uint64{0: 3 * GiB, 1: GiB})
	if err != nil || !ok {
		t.Fatalf("Attribute = %v, %v", ok, err)
	}
	d := devices(t, n)
	if d[0].MemoryUsed != 3*GiB || d[1].MemoryUsed != GiB || len(d[0].Processes) != 1 || d[0].Processes[0].PID != real.Process.Pid {
		t.Fatalf("devices with an attributed engine: %+v", d)
	}
	// Attributed once: a second call keeps the first.
	if ok, err := sim.Attribute(dir, real.Process.Pid, map[int]uint64{0: 9 * GiB}); ok || err != nil {
		t.Errorf("second Attribute = %v, %v: want the first kept", ok, err)
	}
	if err := real.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	real.Wait()
	if got := devices(t, n)[0].MemoryUsed; got != 0 {
		t.Errorf("after the engine died: %d used", got)
	}

	// A stand-in that owns its claims holds nothing until it claims, and
	// Attribute leaves it alone.
	standin := startSleep(t)
	if err := sim.Own(dir, standin.Process.Pid); err != nil {
		t.Fatal(err)
	}
	if ok, err := sim.Attribute(dir, standin.Process.Pid, map[int]uint64{0: 3 * GiB}); ok || err != nil {
		t.Errorf("Attribute over an owned claim = %v, %v", ok, err)
	}
	if got := devices(t, n)[0].MemoryUsed; got != 0 {
		t.Errorf("a stand-in that claimed nothing: %d used", got)
	}
	// Attributed first, then the stand-in claims: its own claim wins.
	standin2 := startSleep(t)
	if ok, err := sim.Attribute(dir, standin2.Process.Pid, map[int]uint64{0: 3 * GiB}); !ok || err != nil {
		t.Fatalf("Attribute = %v, %v", ok, err)
	}
	if err := sim.Claim(dir, standin2.Process.Pid, map[int]uint64{1: 2 * GiB}); err != nil {
		t.Fatal(err)
	}
	if d := devices(t, n); d[0].MemoryUsed != 0 || d[1].MemoryUsed != 2*GiB {
		t.Errorf("the stand-in's own claim: %+v", d)
	}
	// A dead pid is attributed nothing.
	if ok, err := sim.Attribute(dir, deadPID(t), map[int]uint64{0: GiB}); ok || err != nil {
		t.Errorf("Attribute of a dead pid = %v, %v", ok, err)
	}
	if _, err := sim.Attribute(dir, standin2.Process.Pid, map[int]uint64{7: GiB}); err == nil {
		t.Error("Attribute on GPU 7 of a two-GPU node: no error")
	}
}

func TestOptions(t *testing.T) {
	dir := newNode(t)
	o, err := sim.ReadOptions(dir)
	if err != nil || o.HostRealEngines {
		t.Fatalf("a new node: %+v, %v", o, err)
	}
	if err := sim.SetOptions(dir, sim.Options{HostRealEngines: true}); err != nil {
		t.Fatal(err)
	}
	if o, err := sim.ReadOptions(dir); err != nil || !o.HostRealEngines {
		t.Fatalf("after SetOptions: %+v, %v", o, err)
	}
	if _, err := sim.ReadOptions(t.TempDir()); err == nil {
		t.Error("no node: no error")
	}
}
