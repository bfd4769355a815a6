package nvml

import (
	"context"
	"errors"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	gonvml "github.com/NVIDIA/go-nvml/pkg/nvml"
	"github.com/NVIDIA/go-nvml/pkg/nvml/mock"
	"github.com/NVIDIA/go-nvml/pkg/nvml/mock/gpus"
	"github.com/NVIDIA/go-nvml/pkg/nvml/mock/server"
	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"

	"github.com/poolmanagerd/pool-managerd/drivers/gpu"
)

func TestMain(m *testing.M) {
	// Event streams wake up every waitTimeout: keep the tests fast.
	waitTimeout = 20 * time.Millisecond
	os.Exit(m.Run())
}

const (
	MiB = 1 << 20
	GiB = 1 << 30
)

var rtx3090 = gpus.Config{Name: "NVIDIA GeForce RTX 3090", Architecture: gonvml.DEVICE_ARCH_AMPERE, MemoryMB: 24 * 1024}

// fake is go-nvml's mock server with the calls the adapter needs wired to
// state the test sets.
type fake struct {
	srv *server.Server

	mu        sync.Mutex
	fail      map[string]gonvml.Return // "GetMemoryInfo/1" -> return code
	procs     map[int][]gonvml.ProcessInfo
	noEvents  map[int]bool // RegisterEvents not supported
	waitFail  gonvml.Return
	waits     int
	frees     int
	registers []int

	events chan gonvml.EventData
}

func newFake(t *testing.T, configs ...gpus.Config) *fake {
	t.Helper()
	srv, err := server.New(server.WithGPUs(configs...))
	if err != nil {
		t.Fatal(err)
	}
	f := &fake{
		srv:      srv,
		fail:     map[string]gonvml.Return{},
		procs:    map[int][]gonvml.ProcessInfo{},
		noEvents: map[int]bool{},
		events:   make(chan gonvml.EventData, 16),
	}
	for i, d := range srv.Devices {
		dev := d.(*server.Device)
		dev.UUID = "GPU-0000000" + string(rune('0'+i)) + "-0000-0000-0000-000000000000"
		f.wire(i, dev)
	}
	getHandle := srv.DeviceGetHandleByIndexFunc
	srv.DeviceGetHandleByIndexFunc = func(i int) (gonvml.Device, gonvml.Return) {
		if ret := f.failure("DeviceGetHandleByIndex", i); ret != gonvml.SUCCESS {
			return nil, ret
		}
		return getHandle(i)
	}
	srv.EventSetCreateFunc = func() (gonvml.EventSet, gonvml.Return) {
		return &mock.EventSet{
			WaitFunc: func(ms uint32) (gonvml.EventData, gonvml.Return) {
				f.mu.Lock()
				f.waits++
				ret := f.waitFail
				f.mu.Unlock()
				if ret != gonvml.SUCCESS {
					return gonvml.EventData{}, ret
				}
				select {
				case e := <-f.events:
					return e, gonvml.SUCCESS
				case <-time.After(time.Duration(ms) * time.Millisecond):
					return gonvml.EventData{}, gonvml.ERROR_TIMEOUT
				}
			},
			FreeFunc: func() gonvml.Return {
				f.mu.Lock()
				defer f.mu.Unlock()
				f.frees++
				return gonvml.SUCCESS
			},
		}, gonvml.SUCCESS
	}
	return f
}

func (f *fake) failure(call string, index int) gonvml.Return {
	f.mu.Lock()
	defer f.mu.Unlock()
	if ret, ok := f.fail[call+"/"+string(rune('0'+index))]; ok {
		return ret
	}
	return gonvml.SUCCESS
}

func (f *fake) set(fn func(f *fake)) {
	f.mu.Lock()
	defer f.mu.Unlock()
	fn(f)
}

func (f *fake) wire(i int, d *server.Device) {
	getUUID, getName, getMem := d.GetUUIDFunc, d.GetNameFunc, d.GetMemoryInfoFunc
	d.GetUUIDFunc = func() (string, gonvml.Return) {
		if ret := f.failure("GetUUID", i); ret != gonvml.SUCCESS {
			return "", ret
		}
		return getUUID()
	}
	d.GetNameFunc = func() (string, gonvml.Return) {
		if ret := f.failure("GetName", i); ret != gonvml.SUCCESS {
			return "", ret
		}
		return getName()
	}
	d.GetMemoryInfoFunc = func() (gonvml.Memory, gonvml.Return) {
		if ret := f.failure("GetMemoryInfo", i); ret != gonvml.SUCCESS {
			return gonvml.Memory{}, ret
		}
		return getMem()
	}
	d.GetComputeRunningProcessesFunc = func() ([]gonvml.ProcessInfo, gonvml.Return) {
		if ret := f.failure("GetComputeRunningProcesses", i); ret != gonvml.SUCCESS {
			return nil, ret
		}
		f.mu.Lock()
		defer f.mu.Unlock()
		return f.procs[i], gonvml.SUCCESS
	}
	d.RegisterEventsFunc = func(types uint64, set gonvml.EventSet) gonvml.Return {
		f.mu.Lock()
		defer f.mu.Unlock()
		if f.noEvents[i] {
			return gonvml.ERROR_NOT_SUPPORTED
		}
		if types != gonvml.EventTypeXidCriticalError {
			return gonvml.ERROR_INVALID_ARGUMENT
		}
		f.registers = append(f.registers, i)
		return gonvml.SUCCESS
	}
}

func (f *fake) device(i int) *server.Device { return f.srv.Devices[i].(*server.Device) }

func open(t *testing.T, f *fake) *Node {
	t.Helper()
	n, err := New(f.srv)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { n.Close() })
	return n
}

func TestDevices(t *testing.T) {
	uuid := func(i int) string { return "GPU-0000000" + string(rune('0'+i)) + "-0000-0000-0000-000000000000" }
	tests := []struct {
		name    string
		setup   func(f *fake)
		want    []gpu.Device
		wantErr string
	}{{
		name: "memory in bytes and processes by pid",
		setup: func(f *fake) {
			f.device(0).MemoryInfo = gonvml.Memory{Total: 24 * GiB, Used: 10 * GiB, Free: 14 * GiB}
			f.procs[0] = []gonvml.ProcessInfo{
				{Pid: 4321, UsedGpuMemory: 8 * GiB},
				{Pid: 1234, UsedGpuMemory: 2 * GiB},
			}
			f.procs[1] = []gonvml.ProcessInfo{{Pid: 77, UsedGpuMemory: ^uint64(0)}} // NVML_VALUE_NOT_AVAILABLE
		},
		want: []gpu.Device{
			{Index: 0, UUID: uuid(0), Name: "NVIDIA GeForce RTX 3090", MemoryTotal: 24 * GiB, MemoryUsed: 10 * GiB, MemoryFree: 14 * GiB,
				Processes: []gpu.Process{{PID: 1234, UsedBytes: 2 * GiB}, {PID: 4321, UsedBytes: 8 * GiB}}},
			// The mock server's own memory figures: MemoryMB in bytes, nothing free.
			{Index: 1, UUID: uuid(1), Name: "NVIDIA A100-PCIE-40GB", MemoryTotal: 40960 * MiB,
				Processes: []gpu.Process{{PID: 77}}},
		},
	}, {
		name: "GPU lost on memory info",
		setup: func(f *fake) {
			f.fail["GetMemoryInfo/1"] = gonvml.ERROR_GPU_IS_LOST
		},
		want: []gpu.Device{
			{Index: 0, UUID: uuid(0), Name: "NVIDIA GeForce RTX 3090", MemoryTotal: 24 * GiB},
			{Index: 1, UUID: uuid(1), Name: "NVIDIA A100-PCIE-40GB", Lost: true},
		},
	}, {
		name: "GPU needing a reset has no handle",
		setup: func(f *fake) {
			f.fail["DeviceGetHandleByIndex/0"] = gonvml.ERROR_RESET_REQUIRED
		},
		want: []gpu.Device{
			{Index: 0, Lost: true},
			{Index: 1, UUID: uuid(1), Name: "NVIDIA A100-PCIE-40GB", MemoryTotal: 40960 * MiB},
		},
	}, {
		name: "process list not supported",
		setup: func(f *fake) {
			f.fail["GetComputeRunningProcesses/0"] = gonvml.ERROR_NOT_SUPPORTED
			f.procs[1] = []gonvml.ProcessInfo{{Pid: 9, UsedGpuMemory: MiB}}
		},
		want: []gpu.Device{
			{Index: 0, UUID: uuid(0), Name: "NVIDIA GeForce RTX 3090", MemoryTotal: 24 * GiB},
			{Index: 1, UUID: uuid(1), Name: "NVIDIA A100-PCIE-40GB", MemoryTotal: 40960 * MiB, Processes: []gpu.Process{{PID: 9, UsedBytes: MiB}}},
		},
	}, {
		name:    "other errors fail",
		setup:   func(f *fake) { f.fail["GetMemoryInfo/1"] = gonvml.ERROR_UNKNOWN },
		wantErr: "nvml: GPU 1: GetMemoryInfo: ERROR_UNKNOWN",
	}, {
		name:    "name errors fail",
		setup:   func(f *fake) { f.fail["GetName/0"] = gonvml.ERROR_INSUFFICIENT_SIZE },
		wantErr: "nvml: GPU 0: GetName: ERROR_INSUFFICIENT_SIZE",
	}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFake(t, rtx3090, gpus.A100_PCIE_40GB)
			tt.setup(f)
			n := open(t, f)
			got, err := n.Devices(context.Background())
			if tt.wantErr != "" {
				if err == nil || err.Error() != tt.wantErr {
					t.Fatalf("Devices error = %v, want %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("Devices (-want +got):\n%s", diff)
			}
		})
	}
}

func TestLostGPUKeepsItsName(t *testing.T) {
	f := newFake(t, rtx3090, rtx3090)
	n := open(t, f)
	if _, err := n.Devices(context.Background()); err != nil {
		t.Fatal(err)
	}
	f.set(func(f *fake) { f.fail["DeviceGetHandleByIndex/1"] = gonvml.ERROR_GPU_IS_LOST })
	got, err := n.Devices(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	want := gpu.Device{Index: 1, UUID: "GPU-00000001-0000-0000-0000-000000000000", Name: rtx3090.Name, Lost: true}
	if diff := cmp.Diff(want, got[1]); diff != "" {
		t.Errorf("lost GPU (-want +got):\n%s", diff)
	}
}

func TestErrorUnwraps(t *testing.T) {
	f := newFake(t, rtx3090)
	f.fail["GetUUID/0"] = gonvml.ERROR_NO_PERMISSION
	n := open(t, f)
	_, err := n.Devices(context.Background())
	if !errors.Is(err, gonvml.ERROR_NO_PERMISSION) {
		t.Fatalf("error %v does not wrap ERROR_NO_PERMISSION", err)
	}
	var e *Error
	if !errors.As(err, &e) || e.Op != "GPU 0: GetUUID" {
		t.Fatalf("error %#v is not an *Error for GPU 0: GetUUID", err)
	}
}

// next returns the next event, failing the test after a while.
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

// closed waits for the channel to be closed, failing after a while.
func closed(t *testing.T, ch <-chan gpu.Event) {
	t.Helper()
	timeout := time.After(5 * time.Second)
	for {
		select {
		case e, ok := <-ch:
			if !ok {
				return
			}
			t.Errorf("unexpected event %+v", e)
		case <-timeout:
			t.Fatal("event channel not closed within 5s")
		}
	}
}

var ignoreTime = cmpopts.IgnoreFields(gpu.Event{}, "Time")

func TestEvents(t *testing.T) {
	f := newFake(t, rtx3090, gpus.A100_PCIE_40GB, rtx3090)
	f.noEvents[2] = true
	n := open(t, f)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ch, err := n.Events(ctx)
	if err != nil {
		t.Fatal(err)
	}
	f.set(func(f *fake) {
		if diff := cmp.Diff([]int{0, 1}, f.registers); diff != "" {
			t.Errorf("registered GPUs (-want +got):\n%s", diff)
		}
	})
	uuid := func(i int) string { return f.device(i).UUID }
	for _, e := range []gonvml.EventData{
		{Device: f.device(0), EventType: gonvml.EventTypeXidCriticalError, EventData: 13}, // application: dropped
		{Device: f.device(1), EventType: gonvml.EventTypeXidCriticalError, EventData: 79},
		{Device: f.device(0), EventType: gonvml.EventTypeSingleBitEccError, EventData: 1},  // not an Xid
		{Device: f.device(1), EventType: gonvml.EventTypeXidCriticalError, EventData: 109}, // application: dropped
		{Device: f.device(0), EventType: gonvml.EventTypeXidCriticalError, EventData: 48},
		{Device: nil, EventType: gonvml.EventTypeXidCriticalError, EventData: 94}, // which GPU? all of them
	} {
		f.events <- e
	}
	want := []gpu.Event{
		{Kind: gpu.EventXid, Index: 1, UUID: uuid(1), Xid: 79},
		{Kind: gpu.EventXid, Index: 0, UUID: uuid(0), Xid: 48},
		{Kind: gpu.EventXid, Index: 0, UUID: uuid(0), Xid: 94},
		{Kind: gpu.EventXid, Index: 1, UUID: uuid(1), Xid: 94},
		{Kind: gpu.EventXid, Index: 2, UUID: uuid(2), Xid: 94},
	}
	var got []gpu.Event
	for range want {
		e := next(t, ch)
		if e.Time.IsZero() {
			t.Errorf("event %+v has no time", e)
		}
		got = append(got, e)
	}
	if diff := cmp.Diff(want, got, ignoreTime); diff != "" {
		t.Errorf("events (-want +got):\n%s", diff)
	}

	// A lost GPU is reported once, however many times it is probed.
	f.set(func(f *fake) { f.fail["GetMemoryInfo/2"] = gonvml.ERROR_GPU_IS_LOST })
	if diff := cmp.Diff(gpu.Event{Kind: gpu.EventLost, Index: 2, UUID: uuid(2)}, next(t, ch), ignoreTime); diff != "" {
		t.Errorf("lost event (-want +got):\n%s", diff)
	}
	// Several probes, then an application Xid (dropped) and a critical one.
	time.Sleep(10 * waitTimeout)
	f.events <- gonvml.EventData{Device: f.device(1), EventType: gonvml.EventTypeXidCriticalError, EventData: 31}
	f.events <- gonvml.EventData{Device: f.device(1), EventType: gonvml.EventTypeXidCriticalError, EventData: 62}
	if diff := cmp.Diff(gpu.Event{Kind: gpu.EventXid, Index: 1, UUID: uuid(1), Xid: 62}, next(t, ch), ignoreTime); diff != "" {
		t.Errorf("event after lost (-want +got):\n%s", diff)
	}
	// Back, and lost again: reported again.
	f.set(func(f *fake) { delete(f.fail, "GetMemoryInfo/2") })
	time.Sleep(5 * waitTimeout)
	f.set(func(f *fake) { f.fail["GetMemoryInfo/2"] = gonvml.ERROR_RESET_REQUIRED })
	if diff := cmp.Diff(gpu.Event{Kind: gpu.EventLost, Index: 2, UUID: uuid(2)}, next(t, ch), ignoreTime); diff != "" {
		t.Errorf("second lost event (-want +got):\n%s", diff)
	}

	cancel()
	closed(t, ch)
	f.set(func(f *fake) {
		if f.frees != 1 {
			t.Errorf("event set freed %d times, want 1", f.frees)
		}
	})
}

func TestEventsLostAtStart(t *testing.T) {
	f := newFake(t, rtx3090, rtx3090)
	f.fail["DeviceGetHandleByIndex/0"] = gonvml.ERROR_GPU_IS_LOST
	n := open(t, f)
	ch, err := n.Events(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(gpu.Event{Kind: gpu.EventLost, Index: 0}, next(t, ch), ignoreTime); diff != "" {
		t.Errorf("lost event (-want +got):\n%s", diff)
	}
	f.set(func(f *fake) {
		if diff := cmp.Diff([]int{1}, f.registers); diff != "" {
			t.Errorf("registered GPUs (-want +got):\n%s", diff)
		}
	})
}

func TestEventsWaitFailingDoesNotSpin(t *testing.T) {
	f := newFake(t, rtx3090)
	n := open(t, f)
	ch, err := n.Events(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	f.set(func(f *fake) {
		f.waitFail = gonvml.ERROR_GPU_IS_LOST
		f.fail["GetMemoryInfo/0"] = gonvml.ERROR_GPU_IS_LOST
		f.waits = 0
	})
	if diff := cmp.Diff(gpu.Event{Kind: gpu.EventLost, Index: 0, UUID: f.device(0).UUID}, next(t, ch), ignoreTime); diff != "" {
		t.Errorf("lost event (-want +got):\n%s", diff)
	}
	time.Sleep(10 * waitTimeout)
	f.set(func(f *fake) {
		if f.waits > 15 {
			t.Errorf("%d waits in 10 wait timeouts: spinning", f.waits)
		}
	})
}

func TestEventsErrors(t *testing.T) {
	tests := []struct {
		name    string
		setup   func(f *fake)
		wantErr string
	}{{
		name: "event set",
		setup: func(f *fake) {
			f.srv.EventSetCreateFunc = func() (gonvml.EventSet, gonvml.Return) { return nil, gonvml.ERROR_NOT_SUPPORTED }
		},
		wantErr: "nvml: EventSetCreate: ERROR_NOT_SUPPORTED",
	}, {
		name: "registration",
		setup: func(f *fake) {
			f.device(1).RegisterEventsFunc = func(uint64, gonvml.EventSet) gonvml.Return { return gonvml.ERROR_UNKNOWN }
		},
		wantErr: "nvml: GPU 1: RegisterEvents: ERROR_UNKNOWN",
	}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFake(t, rtx3090, rtx3090)
			tt.setup(f)
			n := open(t, f)
			_, err := n.Events(t.Context())
			if err == nil || err.Error() != tt.wantErr {
				t.Fatalf("Events error = %v, want %q", err, tt.wantErr)
			}
		})
	}
}

func TestClose(t *testing.T) {
	f := newFake(t, rtx3090)
	n, err := New(f.srv)
	if err != nil {
		t.Fatal(err)
	}
	shutdowns := 0
	f.srv.ShutdownFunc = func() gonvml.Return { shutdowns++; return gonvml.SUCCESS }
	ch, err := n.Events(context.Background()) // never cancelled: Close ends it
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	for range 4 {
		wg.Go(func() {
			for range 10 {
				if _, err := n.Devices(context.Background()); err != nil && !errors.Is(err, errClosed) {
					t.Error(err)
				}
			}
		})
	}
	if err := n.Close(); err != nil {
		t.Fatal(err)
	}
	wg.Wait()
	closed(t, ch)
	if err := n.Close(); err != nil {
		t.Fatal(err)
	}
	if shutdowns != 1 {
		t.Errorf("Shutdown called %d times, want 1", shutdowns)
	}
	if _, err := n.Devices(context.Background()); !errors.Is(err, errClosed) {
		t.Errorf("Devices after Close: %v", err)
	}
	if _, err := n.Events(context.Background()); !errors.Is(err, errClosed) {
		t.Errorf("Events after Close: %v", err)
	}
}

func TestInitFails(t *testing.T) {
	for _, ret := range []gonvml.Return{gonvml.ERROR_LIBRARY_NOT_FOUND, gonvml.ERROR_DRIVER_NOT_LOADED, gonvml.ERROR_NO_PERMISSION} {
		t.Run(ret.Error(), func(t *testing.T) {
			// Every other function of the mock is nil: calling it panics.
			lib := &mock.Interface{InitFunc: func() gonvml.Return { return ret }}
			n, err := New(lib)
			if !errors.Is(err, gpu.ErrNoDriver) {
				t.Fatalf("New error %v does not wrap gpu.ErrNoDriver", err)
			}
			if want := "no NVIDIA driver found (NVML init: " + ret.Error() + ")"; err.Error() != want {
				t.Errorf("New error = %q, want %q", err, want)
			}
			if n != nil {
				t.Fatal("New returned a node")
			}
			if _, err := n.Devices(context.Background()); !errors.Is(err, gpu.ErrNoDriver) {
				t.Errorf("Devices on no node: %v", err)
			}
			if _, err := n.Events(context.Background()); !errors.Is(err, gpu.ErrNoDriver) {
				t.Errorf("Events on no node: %v", err)
			}
			if err := n.Close(); err != nil {
				t.Errorf("Close on no node: %v", err)
			}
			if got := len(lib.InitCalls()); got != 1 {
				t.Errorf("Init called %d times, want 1", got)
			}
		})
	}
}

// TestOpenWithoutDriver opens the real NVML library: on a machine without
// an NVIDIA driver it fails, cleanly.
func TestOpenWithoutDriver(t *testing.T) {
	for range 2 {
		n, err := Open()
		if err == nil {
			n.Close()
			t.Skip("an NVIDIA driver is present")
		}
		if !errors.Is(err, gpu.ErrNoDriver) {
			t.Fatalf("Open error %v does not wrap gpu.ErrNoDriver", err)
		}
		if !strings.HasPrefix(err.Error(), "no NVIDIA driver found (NVML init: ") {
			t.Errorf("Open error = %q", err)
		}
	}
}

// TestRealNVML runs against the machine's driver when
// POOL_MANAGERD_REAL_NVML=1.
func TestRealNVML(t *testing.T) {
	if os.Getenv("POOL_MANAGERD_REAL_NVML") != "1" {
		t.Skip("set POOL_MANAGERD_REAL_NVML=1 to test the real NVIDIA driver")
	}
	n, err := Open()
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		if err := n.Close(); err != nil {
			t.Error(err)
		}
	}()
	devices, err := n.Devices(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if len(devices) == 0 {
		t.Fatal("no GPUs")
	}
	for i, d := range devices {
		t.Logf("%+v", d)
		if d.Index != i || d.Lost || d.UUID == "" || d.Name == "" || d.MemoryTotal == 0 || d.MemoryUsed+d.MemoryFree > d.MemoryTotal {
			t.Errorf("GPU %d: %+v", i, d)
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	ch, err := n.Events(ctx)
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(3 * waitTimeout)
	cancel()
	timeout := time.After(10 * time.Second)
	for {
		select {
		case e, ok := <-ch:
			if !ok {
				return
			}
			t.Logf("event %+v", e)
		case <-timeout:
			t.Fatal("event stream did not stop")
		}
	}
}
