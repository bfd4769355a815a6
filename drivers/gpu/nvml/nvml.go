// Package nvml implements gpu.Node over NVIDIA's NVML through go-nvml.
//
// The same adapter serves the real driver (Open) and any other
// implementation of go-nvml's Interface (New): the simulated node of package
// sim is go-nvml's mock server behind this very code.
//
// NVML is initialised once, in New. When that fails (no driver, no library)
// nothing else is ever called: with the real library the process would die
// on a missing symbol.
package nvml

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	gonvml "github.com/NVIDIA/go-nvml/pkg/nvml"

	"github.com/poolmanagerd/pool-managerd/drivers/gpu"
)

// waitTimeout is how long one EventSetWait call may block. It bounds how long
// an event stream takes to notice that its context is done, how long Close
// takes, and how often GPUs are probed for loss.
var waitTimeout = 500 * time.Millisecond

// notAvailable is NVML_VALUE_NOT_AVAILABLE, which NVML reports as a process's
// used memory where it may not be known (for instance without permission).
const notAvailable = ^uint64(0)

// Node is a node's GPUs as NVML sees them. It is safe for concurrent use.
type Node struct {
	lib gonvml.Interface

	// mu guards closed; Devices and the setup of Events hold it for reading
	// so that Close, which takes it for writing, never shuts NVML down under
	// a running call.
	mu     sync.RWMutex
	closed bool
	done   chan struct{} // closed by Close: event streams end
	wg     sync.WaitGroup

	// identity remembers each GPU's UUID and name once read, so that a GPU
	// that is lost later is still named.
	idMu     sync.Mutex
	identity map[int]identity
}

type identity struct {
	uuid, name string
}

var _ gpu.Node = (*Node)(nil)

// errorDetailer is implemented by NVML implementations that can say more
// about a failed call than its return code: the simulated node tells which
// of its files it could not read.
type errorDetailer interface {
	LastError() error
}

// Open initialises the NVIDIA driver's NVML library. Without a driver the
// error wraps gpu.ErrNoDriver.
func Open() (*Node, error) {
	return New(gonvml.New())
}

// New initialises NVML through lib and returns the node it shows. When Init
// fails the error wraps gpu.ErrNoDriver and lib is not called again.
func New(lib gonvml.Interface) (*Node, error) {
	if ret := lib.Init(); ret != gonvml.SUCCESS {
		// Return.Error never calls into a library that failed to load.
		return nil, fmt.Errorf("%w (NVML init: %s)", gpu.ErrNoDriver, ret.Error())
	}
	return &Node{lib: lib, done: make(chan struct{}), identity: map[int]identity{}}, nil
}

// errNotInitialised is returned by the methods of a nil *Node: the one New
// returns when NVML could not be initialised.
var errNotInitialised = fmt.Errorf("%w (NVML not initialised)", gpu.ErrNoDriver)

// errClosed is returned by the methods of a closed Node.
var errClosed = errors.New("nvml: node is closed")

// Error is a failed NVML call. It unwraps to the gonvml.Return, so that
// errors.Is(err, gonvml.ERROR_GPU_IS_LOST) works.
type Error struct {
	// Op says what was being done, e.g. "GPU 1: GetMemoryInfo".
	Op     string
	Return gonvml.Return
	// Detail is what the implementation knows beyond the return code, or nil.
	Detail error
	msg    string
}

func (e *Error) Error() string {
	s := "nvml: " + e.Op + ": " + e.msg
	if e.Detail != nil {
		s += ": " + e.Detail.Error()
	}
	return s
}

func (e *Error) Unwrap() []error {
	if e.Detail != nil {
		return []error{e.Return, e.Detail}
	}
	return []error{e.Return}
}

func (n *Node) fail(op string, ret gonvml.Return) error {
	e := &Error{Op: op, Return: ret, msg: ret.Error()}
	if d, ok := n.lib.(errorDetailer); ok {
		e.Detail = d.LastError()
	}
	return e
}

// isLost reports whether a return code means the GPU is gone: fallen off the
// bus, or in need of a reset.
func isLost(ret gonvml.Return) bool {
	return ret == gonvml.ERROR_GPU_IS_LOST || ret == gonvml.ERROR_RESET_REQUIRED
}

func (n *Node) remember(index int, id identity) {
	n.idMu.Lock()
	defer n.idMu.Unlock()
	n.identity[index] = id
}

func (n *Node) remembered(index int) identity {
	n.idMu.Lock()
	defer n.idMu.Unlock()
	return n.identity[index]
}

// Devices returns every GPU of the node, sorted by index. A GPU that NVML
// reports lost (or in need of a reset) comes back with Lost set, zero memory
// and the UUID and name last read, if any.
func (n *Node) Devices(ctx context.Context) ([]gpu.Device, error) {
	if n == nil {
		return nil, errNotInitialised
	}
	n.mu.RLock()
	defer n.mu.RUnlock()
	if n.closed {
		return nil, errClosed
	}
	count, ret := n.lib.DeviceGetCount()
	if ret != gonvml.SUCCESS {
		return nil, n.fail("DeviceGetCount", ret)
	}
	devices := make([]gpu.Device, 0, count)
	for i := range count {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		d, err := n.device(i)
		if err != nil {
			return nil, err
		}
		devices = append(devices, d)
	}
	return devices, nil
}

// device reads GPU i. Lost GPUs are not errors.
func (n *Node) device(i int) (gpu.Device, error) {
	lost := func() (gpu.Device, error) {
		id := n.remembered(i)
		return gpu.Device{Index: i, UUID: id.uuid, Name: id.name, Lost: true}, nil
	}
	h, ret := n.lib.DeviceGetHandleByIndex(i)
	if isLost(ret) {
		return lost()
	} else if ret != gonvml.SUCCESS {
		return gpu.Device{}, n.fail(fmt.Sprintf("GPU %d: DeviceGetHandleByIndex", i), ret)
	}
	uuid, ret := h.GetUUID()
	if isLost(ret) {
		return lost()
	} else if ret != gonvml.SUCCESS {
		return gpu.Device{}, n.fail(fmt.Sprintf("GPU %d: GetUUID", i), ret)
	}
	name, ret := h.GetName()
	if isLost(ret) {
		return lost()
	} else if ret != gonvml.SUCCESS {
		return gpu.Device{}, n.fail(fmt.Sprintf("GPU %d: GetName", i), ret)
	}
	n.remember(i, identity{uuid: uuid, name: name})
	mem, ret := h.GetMemoryInfo()
	if isLost(ret) {
		return lost()
	} else if ret != gonvml.SUCCESS {
		return gpu.Device{}, n.fail(fmt.Sprintf("GPU %d: GetMemoryInfo", i), ret)
	}
	infos, ret := h.GetComputeRunningProcesses()
	switch {
	case isLost(ret):
		return lost()
	case ret == gonvml.ERROR_NOT_SUPPORTED:
		infos = nil
	case ret != gonvml.SUCCESS:
		return gpu.Device{}, n.fail(fmt.Sprintf("GPU %d: GetComputeRunningProcesses", i), ret)
	}
	var procs []gpu.Process
	for _, p := range infos {
		used := p.UsedGpuMemory
		if used == notAvailable {
			used = 0
		}
		procs = append(procs, gpu.Process{PID: int(p.Pid), UsedBytes: used})
	}
	slices.SortStableFunc(procs, func(a, b gpu.Process) int { return a.PID - b.PID })
	return gpu.Device{
		Index:       i,
		UUID:        uuid,
		Name:        name,
		MemoryTotal: mem.Total,
		MemoryUsed:  mem.Used,
		MemoryFree:  mem.Free,
		Processes:   procs,
	}, nil
}

// watched is one GPU of an event stream.
type watched struct {
	index  int
	handle gonvml.Device // nil when the handle could not be had (lost)
	uuid   string
}

// Events streams critical Xid errors (application Xids left out) and lost
// GPUs until ctx is done or the node is closed, then closes the channel.
// XidCriticalError is registered on every GPU that supports it; GPUs that do
// not are still watched for loss. A lost GPU is reported once, and again only
// if it came back in between.
func (n *Node) Events(ctx context.Context) (<-chan gpu.Event, error) {
	if n == nil {
		return nil, errNotInitialised
	}
	n.mu.RLock()
	defer n.mu.RUnlock()
	if n.closed {
		return nil, errClosed
	}
	count, ret := n.lib.DeviceGetCount()
	if ret != gonvml.SUCCESS {
		return nil, n.fail("DeviceGetCount", ret)
	}
	set, ret := n.lib.EventSetCreate()
	if ret != gonvml.SUCCESS {
		return nil, n.fail("EventSetCreate", ret)
	}
	gpus := make([]watched, count)
	for i := range count {
		w := watched{index: i}
		gpus[i] = w
		h, ret := n.lib.DeviceGetHandleByIndex(i)
		if isLost(ret) {
			continue
		} else if ret != gonvml.SUCCESS {
			set.Free()
			return nil, n.fail(fmt.Sprintf("GPU %d: DeviceGetHandleByIndex", i), ret)
		}
		w.handle = h
		if uuid, ret := h.GetUUID(); ret == gonvml.SUCCESS {
			w.uuid = uuid
		} else if !isLost(ret) {
			set.Free()
			return nil, n.fail(fmt.Sprintf("GPU %d: GetUUID", i), ret)
		}
		gpus[i] = w
		ret = h.RegisterEvents(gonvml.EventTypeXidCriticalError, set)
		if ret != gonvml.SUCCESS && ret != gonvml.ERROR_NOT_SUPPORTED && !isLost(ret) {
			set.Free()
			return nil, n.fail(fmt.Sprintf("GPU %d: RegisterEvents", i), ret)
		}
	}
	ch := make(chan gpu.Event, 16)
	n.wg.Add(1)
	go n.watch(ctx, set, gpus, ch)
	return ch, nil
}

func (n *Node) watch(ctx context.Context, set gonvml.EventSet, gpus []watched, ch chan<- gpu.Event) {
	defer n.wg.Done()
	defer close(ch)
	defer set.Free()

	stopped := func() bool {
		select {
		case <-ctx.Done():
			return true
		case <-n.done:
			return true
		default:
			return false
		}
	}
	send := func(e gpu.Event) bool {
		e.Time = time.Now()
		select {
		case ch <- e:
			return true
		case <-ctx.Done():
			return false
		case <-n.done:
			return false
		}
	}
	pause := func() bool {
		t := time.NewTimer(waitTimeout)
		defer t.Stop()
		select {
		case <-t.C:
			return true
		case <-ctx.Done():
			return false
		case <-n.done:
			return false
		}
	}

	reported := make(map[int]bool) // lost GPUs already reported
	probe := func() bool {
		for _, g := range gpus {
			if !n.probeLost(g) {
				delete(reported, g.index)
				continue
			}
			if reported[g.index] {
				continue
			}
			reported[g.index] = true
			if !send(gpu.Event{Kind: gpu.EventLost, Index: g.index, UUID: n.uuidOf(g)}) {
				return false
			}
		}
		return true
	}

	if !probe() {
		return
	}
	ms := uint32(waitTimeout / time.Millisecond)
	for !stopped() {
		data, ret := set.Wait(ms)
		switch {
		case ret == gonvml.SUCCESS:
			if data.EventType&gonvml.EventTypeXidCriticalError == 0 || gpu.IsApplicationXid(data.EventData) {
				continue
			}
			for _, g := range n.eventGPUs(gpus, data.Device) {
				if !send(gpu.Event{Kind: gpu.EventXid, Index: g.index, UUID: n.uuidOf(g), Xid: data.EventData}) {
					return
				}
			}
		case ret == gonvml.ERROR_TIMEOUT:
			if !probe() {
				return
			}
		case isLost(ret):
			// Some GPU of the set is gone: find which, and do not spin on
			// a set that keeps failing.
			if !probe() || !pause() {
				return
			}
		default:
			// Nothing to report to; back off and try again.
			if !pause() {
				return
			}
		}
	}
}

// probeLost reports whether a GPU is lost now.
func (n *Node) probeLost(g watched) bool {
	h := g.handle
	if h == nil {
		var ret gonvml.Return
		h, ret = n.lib.DeviceGetHandleByIndex(g.index)
		if ret != gonvml.SUCCESS {
			return isLost(ret)
		}
	}
	_, ret := h.GetMemoryInfo()
	return isLost(ret)
}

func (n *Node) uuidOf(g watched) string {
	if g.uuid != "" {
		return g.uuid
	}
	return n.remembered(g.index).uuid
}

// eventGPUs maps the device of an event back to the GPU it names. When it
// cannot be told (no device, or one not known) every GPU is affected, as
// NVIDIA's device plugin does.
func (n *Node) eventGPUs(gpus []watched, d gonvml.Device) []watched {
	if d != nil {
		for _, g := range gpus {
			if g.handle != nil && sameDevice(g.handle, d) {
				return []watched{g}
			}
		}
		if uuid, ret := d.GetUUID(); ret == gonvml.SUCCESS {
			for _, g := range gpus {
				if n.uuidOf(g) == uuid {
					return []watched{g}
				}
			}
		}
	}
	return gpus
}

// sameDevice compares two device handles; handles of a type that cannot be
// compared are never the same.
func sameDevice(a, b gonvml.Device) (same bool) {
	defer func() {
		if recover() != nil {
			same = false
		}
	}()
	return a == b
}

// Close stops every event stream, then shuts NVML down. Later calls return
// an error; closing again does nothing.
func (n *Node) Close() error {
	if n == nil {
		return nil
	}
	n.mu.Lock()
	if n.closed {
		n.mu.Unlock()
		return nil
	}
	n.closed = true
	close(n.done)
	n.mu.Unlock()
	n.wg.Wait()
	if ret := n.lib.Shutdown(); ret != gonvml.SUCCESS {
		return n.fail("Shutdown", ret)
	}
	return nil
}
