package sim

import (
	"os"
	"os/exec"
	"strconv"
	"testing"
)

func TestHostMemory(t *testing.T) {
	dir := t.TempDir()
	if err := Init(dir, DefaultGPUs()); err != nil {
		t.Fatal(err)
	}
	if _, _, _, ok, err := HostMemory(dir); err != nil || ok {
		t.Fatalf("a node without --ram: ok %v, err %v; want not simulated", ok, err)
	}
	if err := SetHostRAM(dir, 64*GiB); err != nil {
		t.Fatal(err)
	}
	// A live process (this test) and one that has exited.
	if err := HoldRAM(dir, os.Getpid(), 20*GiB); err != nil {
		t.Fatal(err)
	}
	done := exec.Command("true")
	if err := done.Run(); err != nil {
		t.Fatal(err)
	}
	if err := writeJSON(dir, "ram/"+strconv.Itoa(done.Process.Pid)+".json", ramHold{PID: done.Process.Pid, StartTime: 1, Bytes: 30 * GiB}); err != nil {
		t.Fatal(err)
	}
	total, avail, held, ok, err := HostMemory(dir)
	if err != nil || !ok {
		t.Fatalf("HostMemory: ok %v, err %v", ok, err)
	}
	if total != 64*GiB || avail != 44*GiB || held[os.Getpid()] != 20*GiB || len(held) != 1 {
		t.Errorf("HostMemory = %d, %d, %v; want 64 GiB, 44 GiB (a dead process holds nothing), this process 20 GiB", total, avail, held)
	}
	if err := HoldRAM(dir, os.Getpid(), 0); err != nil {
		t.Fatal(err)
	}
	if _, avail, _, _, _ := HostMemory(dir); avail != 64*GiB {
		t.Errorf("after the release: %d available, want 64 GiB", avail)
	}
	if err := Reset(dir, DefaultGPUs()); err != nil {
		t.Fatal(err)
	}
	if _, _, _, ok, _ := HostMemory(dir); ok {
		t.Error("Reset kept the host memory")
	}
}
