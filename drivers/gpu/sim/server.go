package sim

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sync"
	"time"

	gonvml "github.com/NVIDIA/go-nvml/pkg/nvml"
	"github.com/NVIDIA/go-nvml/pkg/nvml/mock"
	"github.com/NVIDIA/go-nvml/pkg/nvml/mock/gpus"
	"github.com/NVIDIA/go-nvml/pkg/nvml/mock/server"

	"github.com/poolmanagerd/pool-managerd/drivers/gpu/nvml"
)

// pollInterval is how often an event set looks at events.log while waiting,
// when inotify does not tell it of changes.
const pollInterval = 50 * time.Millisecond

// Open serves the simulated node in dir through the NVML adapter. The GPUs
// are read from node.json now; claims, foreign holds, events and lost GPUs
// are read from dir again whenever inotify reports that they changed, so
// that changes made by other processes are seen by the next NVML call, and
// a node where nothing changes costs next to nothing to ask (see view).
// Closing the node (Shutdown) releases the inotify and pidfd descriptors.
func Open(dir string) (*nvml.Node, error) {
	lib, err := newLibrary(dir)
	if err != nil {
		return nil, err
	}
	return nvml.New(lib)
}

// library is go-nvml's mock server wired to the directory.
type library struct {
	*server.Server
	dir string

	vmu  sync.Mutex // guards view
	view *view
	// followed is closed when the goroutine that follows the view's
	// watcher has returned; nil when there is none.
	followed <-chan struct{}

	mu      sync.Mutex
	lastErr error
}

// LastError returns the reason of the last call that failed with
// ERROR_UNKNOWN (a file of the node could not be read), and forgets it. The
// nvml adapter adds it to its errors.
func (l *library) LastError() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	err := l.lastErr
	l.lastErr = nil
	return err
}

// failed records err and returns the NVML code for it.
func (l *library) failed(err error) gonvml.Return {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.lastErr = err
	return gonvml.ERROR_UNKNOWN
}

func newLibrary(dir string) (l *library, err error) {
	v := newView(dir)
	defer func() {
		if err != nil {
			v.close()
		}
	}()
	// Read everything once, so that a corrupt file is reported here, by name.
	v.sync()
	desc, err := v.readNode()
	if err != nil {
		return nil, err
	}
	if _, err := v.claims.read(v, desc); err != nil {
		return nil, err
	}
	if _, err := v.foreign.read(v, desc); err != nil {
		return nil, err
	}
	if err := checkEvents(dir); err != nil {
		return nil, err
	}

	configs := make([]gpus.Config, len(desc.GPUs))
	for i, g := range desc.GPUs {
		configs[i] = gpus.Config{
			Name:     g.Name,
			MemoryMB: g.MemoryBytes >> 20,
		}
	}
	srv, err := server.New(server.WithGPUs(configs...), server.WithDriverVersion("sim"), server.WithNVMLVersion("sim"))
	if err != nil {
		return nil, fmt.Errorf("simulated node %s: %w", dir, err)
	}
	l = &library{Server: srv, dir: dir, view: v}
	for i, d := range srv.Devices {
		dev := d.(*server.Device)
		dev.UUID = desc.GPUs[i].UUID
		l.wireDevice(dev)
	}
	l.wireServer()
	if w := v.w; w != nil {
		// Drain inotify's events as they come, so that an event set
		// waiting for events.log wakes when it changes, and only then.
		l.followed = w.follow(func() {
			l.vmu.Lock()
			defer l.vmu.Unlock()
			if l.view.w == w {
				l.view.sync()
			}
		}, func() {
			l.vmu.Lock()
			defer l.vmu.Unlock()
			if l.view.w == w {
				l.view.unwatch()
				l.view.invalidate()
			}
		})
	}
	return l, nil
}

// wireServer sets the library-level functions the mock server leaves out.
func (l *library) wireServer() {
	s := l.Server
	s.EventSetCreateFunc = func() (gonvml.EventSet, gonvml.Return) {
		return l.newEventSet()
	}
	s.EventSetWaitFunc = func(set gonvml.EventSet, timeoutms uint32) (gonvml.EventData, gonvml.Return) {
		return set.Wait(timeoutms)
	}
	s.EventSetFreeFunc = func(set gonvml.EventSet) gonvml.Return {
		return set.Free()
	}
	s.DeviceGetMemoryInfoFunc = func(d gonvml.Device) (gonvml.Memory, gonvml.Return) {
		return d.GetMemoryInfo()
	}
	s.DeviceGetComputeRunningProcessesFunc = func(d gonvml.Device) ([]gonvml.ProcessInfo, gonvml.Return) {
		return d.GetComputeRunningProcesses()
	}
	s.DeviceRegisterEventsFunc = func(d gonvml.Device, types uint64, set gonvml.EventSet) gonvml.Return {
		return d.RegisterEvents(types, set)
	}
	s.DeviceGetUUIDFunc = func(d gonvml.Device) (string, gonvml.Return) { return d.GetUUID() }
	s.DeviceGetNameFunc = func(d gonvml.Device) (string, gonvml.Return) { return d.GetName() }
	s.DeviceGetIndexFunc = func(d gonvml.Device) (int, gonvml.Return) { return d.GetIndex() }
	s.ErrorStringFunc = func(r gonvml.Return) string { return r.Error() }
	shutdown := s.ShutdownFunc
	s.ShutdownFunc = func() gonvml.Return {
		l.vmu.Lock()
		l.view.close()
		l.vmu.Unlock()
		if l.followed != nil {
			<-l.followed
		}
		return shutdown()
	}
}

// lost returns ERROR_GPU_IS_LOST when GPU index is lost, SUCCESS when not.
func (l *library) lost(index int) gonvml.Return {
	l.vmu.Lock()
	l.view.sync()
	lost, err := l.view.isLost(index)
	l.vmu.Unlock()
	if err != nil {
		return l.failed(err)
	}
	if lost {
		return gonvml.ERROR_GPU_IS_LOST
	}
	return gonvml.SUCCESS
}

// wireDevice makes the device's calls fail while it is lost and reads its
// memory and processes from the directory.
func (l *library) wireDevice(d *server.Device) {
	index := d.Index
	getIndex, getUUID, getName := d.GetIndexFunc, d.GetUUIDFunc, d.GetNameFunc
	d.GetIndexFunc = func() (int, gonvml.Return) {
		if ret := l.lost(index); ret != gonvml.SUCCESS {
			return 0, ret
		}
		return getIndex()
	}
	d.GetUUIDFunc = func() (string, gonvml.Return) {
		if ret := l.lost(index); ret != gonvml.SUCCESS {
			return "", ret
		}
		return getUUID()
	}
	d.GetNameFunc = func() (string, gonvml.Return) {
		if ret := l.lost(index); ret != gonvml.SUCCESS {
			return "", ret
		}
		return getName()
	}
	d.GetMemoryInfoFunc = func() (gonvml.Memory, gonvml.Return) {
		if ret := l.lost(index); ret != gonvml.SUCCESS {
			return gonvml.Memory{}, ret
		}
		total, procs, err := l.usage(index)
		if err != nil {
			return gonvml.Memory{}, l.failed(err)
		}
		var used uint64
		for _, p := range procs {
			used += p.UsedGpuMemory
		}
		free := uint64(0)
		if used < total {
			free = total - used
		}
		return gonvml.Memory{Total: total, Used: used, Free: free}, gonvml.SUCCESS
	}
	d.GetComputeRunningProcessesFunc = func() ([]gonvml.ProcessInfo, gonvml.Return) {
		if ret := l.lost(index); ret != gonvml.SUCCESS {
			return nil, ret
		}
		_, procs, err := l.usage(index)
		if err != nil {
			return nil, l.failed(err)
		}
		return procs, gonvml.SUCCESS
	}
	d.RegisterEventsFunc = func(types uint64, set gonvml.EventSet) gonvml.Return {
		if ret := l.lost(index); ret != gonvml.SUCCESS {
			return ret
		}
		es, ok := l.eventSetOf(set)
		if !ok {
			return gonvml.ERROR_INVALID_ARGUMENT
		}
		if types&^gonvml.EventTypeXidCriticalError != 0 {
			return gonvml.ERROR_NOT_SUPPORTED
		}
		es.register(index, types)
		return gonvml.SUCCESS
	}
}

// usage reads GPU index's total memory and the processes holding memory on
// it: live claimants and foreign holds.
func (l *library) usage(index int) (uint64, []gonvml.ProcessInfo, error) {
	l.vmu.Lock()
	defer l.vmu.Unlock()
	v := l.view
	v.sync()
	desc, err := v.readNode()
	if err != nil {
		return 0, nil, err
	}
	if index >= len(desc.GPUs) {
		return 0, nil, fmt.Errorf("simulated node %s: GPU %d is gone from %s", l.dir, index, nodeFile)
	}
	claims, err := v.claims.read(v, desc)
	if err != nil {
		return 0, nil, err
	}
	holds, err := v.foreign.read(v, desc)
	if err != nil {
		return 0, nil, err
	}
	var procs []gonvml.ProcessInfo
	add := func(pid int, bytes uint64) {
		procs = append(procs, gonvml.ProcessInfo{
			Pid:               uint32(pid),
			UsedGpuMemory:     bytes,
			GpuInstanceId:     0xFFFFFFFF,
			ComputeInstanceId: 0xFFFFFFFF,
		})
	}
	var mine []*claim
	var claimants []*claimant
	for _, c := range claims {
		if _, ok := c.GPUs[index]; ok {
			mine = append(mine, c)
			claimants = append(claimants, c.claimant)
		}
	}
	for i, live := range living(claimants, v.w != nil) {
		if live {
			add(mine[i].PID, mine[i].GPUs[index])
		}
	}
	for _, h := range holds {
		if h.Index == index {
			add(h.PID, h.Bytes)
		}
	}
	return desc.GPUs[index].MemoryBytes, procs, nil
}

// eventSet is a simulated NVML event set: it delivers the Xid errors
// appended to events.log after it was created, for the GPUs registered.
type eventSet struct {
	*mock.EventSet
	l *library

	mu         sync.Mutex
	registered map[int]uint64 // GPU index -> event types
	offset     int64          // of the first byte of events.log not yet read
	seen       uint64         // the library's count of events.log changes when it was read
	pending    []eventLine
	freed      bool
}

func (l *library) newEventSet() (gonvml.EventSet, gonvml.Return) {
	seen, _ := l.eventsChanges()
	es := &eventSet{l: l, registered: map[int]uint64{}, seen: seen}
	size, err := eventsSize(l.dir)
	if err != nil {
		return nil, l.failed(err)
	}
	es.offset = size
	es.EventSet = &mock.EventSet{
		WaitFunc: es.wait,
		FreeFunc: func() gonvml.Return {
			es.mu.Lock()
			defer es.mu.Unlock()
			es.freed = true
			return gonvml.SUCCESS
		},
	}
	return es, gonvml.SUCCESS
}

// eventsChanges counts the changes to events.log so far: an event set
// whose count is the same has nothing new to read. changed is closed on
// the next change (nil: poll).
func (l *library) eventsChanges() (count uint64, changed <-chan struct{}) {
	l.vmu.Lock()
	defer l.vmu.Unlock()
	l.view.sync()
	return l.view.events, l.view.eventsSignal()
}

func (l *library) eventSetOf(set gonvml.EventSet) (*eventSet, bool) {
	es, ok := set.(*eventSet)
	return es, ok && es.l == l
}

func (es *eventSet) register(index int, types uint64) {
	es.mu.Lock()
	defer es.mu.Unlock()
	es.registered[index] |= types
}

// wait returns the next event for a registered GPU, reading events.log when
// it changed, until the timeout; ERROR_TIMEOUT when none came. It sleeps
// until the file changes (polling it without inotify).
func (es *eventSet) wait(timeoutms uint32) (gonvml.EventData, gonvml.Return) {
	deadline := time.Now().Add(time.Duration(timeoutms) * time.Millisecond)
	for {
		ev, ret, ok, changed := es.next()
		if ok {
			return ev, ret
		}
		left := time.Until(deadline)
		if left <= 0 {
			return gonvml.EventData{}, gonvml.ERROR_TIMEOUT
		}
		if changed == nil {
			time.Sleep(min(left, pollInterval))
			continue
		}
		t := time.NewTimer(left)
		select {
		case <-changed:
		case <-t.C:
		}
		t.Stop()
	}
}

// next reads new lines of events.log and returns the first event for a
// registered GPU, if any; when none, changed is closed once events.log
// changes after what was read (nil: poll).
func (es *eventSet) next() (_ gonvml.EventData, _ gonvml.Return, ok bool, changed <-chan struct{}) {
	es.mu.Lock()
	defer es.mu.Unlock()
	if es.freed {
		return gonvml.EventData{}, gonvml.ERROR_UNINITIALIZED, true, nil
	}
	changes, changed := es.l.eventsChanges()
	if len(es.pending) == 0 && changes != es.seen {
		if err := es.read(); err != nil {
			return gonvml.EventData{}, es.l.failed(err), true, nil
		}
		es.seen = changes
	}
	for len(es.pending) > 0 {
		e := es.pending[0]
		es.pending = es.pending[1:]
		if es.registered[e.Index]&gonvml.EventTypeXidCriticalError == 0 {
			continue
		}
		return gonvml.EventData{
			Device:            es.l.Devices[e.Index],
			EventType:         gonvml.EventTypeXidCriticalError,
			EventData:         e.Xid,
			GpuInstanceId:     0xFFFFFFFF,
			ComputeInstanceId: 0xFFFFFFFF,
		}, gonvml.SUCCESS, true, nil
	}
	return gonvml.EventData{}, gonvml.SUCCESS, false, changed
}

// read appends the whole lines written to events.log since the last read to
// pending.
func (es *eventSet) read() error {
	path := filepath.Join(es.l.dir, eventsFile)
	f, err := os.Open(path)
	if errors.Is(err, fs.ErrNotExist) {
		es.offset = 0
		return nil
	} else if err != nil {
		return fmt.Errorf("simulated node: %w", err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return fmt.Errorf("simulated node: %w", err)
	}
	if st.Size() < es.offset { // reset: start over
		es.offset = 0
	}
	if st.Size() == es.offset {
		return nil
	}
	data := make([]byte, st.Size()-es.offset)
	n, err := f.ReadAt(data, es.offset)
	if err != nil && !errors.Is(err, io.EOF) {
		return fmt.Errorf("simulated node: %w", err)
	}
	data = data[:n]
	// Only whole lines: a line being written is read next time.
	end := bytes.LastIndexByte(data, '\n')
	if end < 0 {
		return nil
	}
	// A corrupt line is skipped (and reported), not read again and again.
	lines, err := parseEvents(path, data[:end+1])
	es.offset += int64(end + 1)
	for _, e := range lines {
		if e.Index >= 0 && e.Index < len(es.l.Devices) {
			es.pending = append(es.pending, e)
		}
	}
	if err != nil && len(es.pending) == 0 {
		return err
	}
	return nil
}

// parseEvents parses whole lines of events.log; the error is about the
// first corrupt line, the others are returned all the same.
func parseEvents(path string, data []byte) ([]eventLine, error) {
	var lines []eventLine
	var first error
	for line := range bytes.Lines(data) {
		line = bytes.TrimSpace(line)
		if len(line) == 0 {
			continue
		}
		var e eventLine
		if err := json.Unmarshal(line, &e); err != nil {
			if first == nil {
				first = fmt.Errorf("simulated node: %s is corrupt: line %q: %w", path, line, err)
			}
			continue
		}
		lines = append(lines, e)
	}
	return lines, first
}

// eventsSize returns the size of events.log, 0 when there is none.
func eventsSize(dir string) (int64, error) {
	st, err := os.Stat(filepath.Join(dir, eventsFile))
	if errors.Is(err, fs.ErrNotExist) {
		return 0, nil
	} else if err != nil {
		return 0, fmt.Errorf("simulated node: %w", err)
	}
	return st.Size(), nil
}

// checkEvents reads events.log through, so that a corrupt one is reported by Open.
func checkEvents(dir string) error {
	path := filepath.Join(dir, eventsFile)
	data, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	} else if err != nil {
		return fmt.Errorf("simulated node: %w", err)
	}
	if end := bytes.LastIndexByte(data, '\n'); end >= 0 {
		_, err = parseEvents(path, data[:end+1])
	}
	return err
}
