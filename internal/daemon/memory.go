package daemon

import (
	"runtime/debug"
	rtmetrics "runtime/metrics"
	"time"
)

// returnMemoryAfter is how much the daemon may allocate on the heap before it
// hands the memory it no longer uses back to the OS.
const returnMemoryAfter = 64 << 20

// memoryReturn hands the heap's free memory back to the OS after a burst of
// allocation. Evaluating a fleet's config takes about 1 GiB at 10,000 pools,
// all of it garbage once the pools are decoded. Left to itself the runtime
// keeps that memory: its next collection, which lowers the heap goal that the
// scavenger returns memory down to, comes only when the heap grows again or
// after two idle minutes, so an idle daemon would hold the evaluation's peak.
type memoryReturn struct {
	// after is how many bytes may be allocated before the next return.
	after uint64
	// allocated returns the bytes allocated on the heap since the process started.
	allocated func() uint64
	// release collects garbage and returns the free memory to the OS.
	release func()
	// last is allocated's answer after the last return: 0 before the first.
	last uint64
}

func newMemoryReturn() *memoryReturn {
	return &memoryReturn{after: returnMemoryAfter, allocated: heapAllocated, release: debug.FreeOSMemory}
}

// heapAllocated reads the runtime's count of bytes allocated on the heap.
func heapAllocated() uint64 {
	s := []rtmetrics.Sample{{Name: "/gc/heap/allocs:bytes"}}
	rtmetrics.Read(s)
	if s[0].Value.Kind() != rtmetrics.KindUint64 {
		return 0
	}
	return s[0].Value.Uint64()
}

// check returns the free memory to the OS when more than after bytes were
// allocated since the last time; it reports whether it did. The first check
// counts from the process's start.
func (m *memoryReturn) check() bool {
	now := m.allocated()
	if now-m.last < m.after {
		return false
	}
	m.release()
	m.last = m.allocated()
	return true
}

// returnMemory hands the memory a config load (or anything else since the
// last pass) left behind back to the OS. It runs after the pass, so that a
// config change reaches its engines first; with a small live heap (the
// decoded pools of this node and the fleet's names) the collection it makes
// costs milliseconds.
func (d *Daemon) returnMemory() {
	start := d.now()
	if d.memory.check() {
		d.log.Debug("returned free memory to the OS", "took", d.now().Sub(start).Round(time.Microsecond).String())
	}
}
