package fakeengine

import (
	"fmt"
	"math"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// The environment variables the stand-in reads.
const (
	EnvAs     = "FAKE_ENGINE_AS"
	EnvSimDir = "POOL_MANAGERD_SIM_DIR"
	EnvVRAM   = "FAKE_ENGINE_VRAM"
	// EnvSimVRAM is what pool-managerd tells an engine on a simulated node:
	// the pool's VRAM need. It is the default of FAKE_ENGINE_VRAM.
	EnvSimVRAM        = "POOL_MANAGERD_SIM_VRAM"
	EnvLoadDelay      = "FAKE_ENGINE_LOAD_DELAY"
	EnvFailLoad       = "FAKE_ENGINE_FAIL_LOAD"
	EnvSkipModelCheck = "FAKE_ENGINE_SKIP_MODEL_CHECK"
	EnvExitAfter      = "FAKE_ENGINE_EXIT_AFTER"
	EnvExitCode       = "FAKE_ENGINE_EXIT_CODE"
	EnvExitSignal     = "FAKE_ENGINE_EXIT_SIGNAL"
	EnvCUDAErrorAfter = "FAKE_ENGINE_CUDA_ERROR_AFTER"
	EnvHoldOutside    = "FAKE_ENGINE_HOLD_OUTSIDE_MASK"
	EnvOutsideVRAM    = "FAKE_ENGINE_OUTSIDE_VRAM"
	EnvNoGPU          = "FAKE_ENGINE_NO_GPU"
	EnvIgnoreSIGTERM  = "FAKE_ENGINE_IGNORE_SIGTERM"
	EnvShutdownDelay  = "FAKE_ENGINE_SHUTDOWN_DELAY"
	EnvFlapHealth     = "FAKE_ENGINE_FLAP_HEALTH"
	EnvUnhealthyAfter = "FAKE_ENGINE_UNHEALTHY_AFTER"
	EnvBusySlots      = "FAKE_ENGINE_BUSY_SLOTS"
	EnvBusyFor        = "FAKE_ENGINE_BUSY_FOR"
	EnvGenDelay       = "FAKE_ENGINE_GEN_DELAY"
	EnvOrphanWorkers  = "FAKE_ENGINE_ORPHAN_WORKERS"
	EnvFaultOnce      = "FAKE_ENGINE_FAULT_ONCE"
)

// Never is the value of an optional duration that is not set.
const Never time.Duration = -1

// Forever is BusyFor when the busy slots never become idle.
const Forever time.Duration = math.MaxInt64

// Faults is what the environment tells the stand-in to do beyond behaving
// like its engine: how long loading takes, how much GPU memory to hold, and
// the failures to act out.
type Faults struct {
	// VRAM is the GPU memory the engine holds once loaded, in bytes, spread
	// over its GPUs.
	VRAM uint64
	// LoadDelay is how long loading the model takes.
	LoadDelay time.Duration
	// FailLoad makes loading fail after LoadDelay.
	FailLoad bool
	// SkipModelCheck loads any model path, even one that does not exist.
	SkipModelCheck bool
	// ExitAfter (Never when unset) ends the process that long after Ready:
	// killed by ExitSignal when set, else with status ExitCode.
	ExitAfter  time.Duration
	ExitCode   int
	ExitSignal syscall.Signal
	// CUDAErrorAfter (Never when unset): that long after Ready, print a CUDA
	// out-of-memory error and abort.
	CUDAErrorAfter time.Duration
	// HoldOutside are simulated GPU indices where the engine also holds
	// OutsideVRAM bytes, whatever its mask.
	HoldOutside []int
	OutsideVRAM uint64
	// NoGPU holds no GPU memory although GPUs are visible (CPU spillover).
	NoGPU bool
	// IgnoreSIGTERM makes the engine (and its workers) ignore SIGTERM.
	IgnoreSIGTERM bool
	// ShutdownDelay is how long the clean-up after the first SIGTERM or
	// SIGINT takes; a second signal meanwhile exits 1 at once.
	ShutdownDelay time.Duration
	// FlapHealth (0 when unset): after Ready, health is good for a period,
	// bad for the next, and so on.
	FlapHealth time.Duration
	// UnhealthyAfter (Never when unset): health is bad from that long after
	// Ready on.
	UnhealthyAfter time.Duration
	// BusySlots slots report is_processing from Ready for BusyFor (Forever:
	// until exit).
	BusySlots int
	BusyFor   time.Duration
	// GenDelay is how long a completion request keeps its slot busy.
	GenDelay time.Duration
	// OrphanWorkers keeps vLLM workers and TGI shards alive (holding their
	// memory) when the main process dies.
	OrphanWorkers bool
	// FaultOnce (empty when unset) is a file that makes the after-Ready exit
	// and CUDA error strike once: the first engine to reach Ready creates it
	// and acts them out; an engine that finds it (a restarted one) leaves
	// them out.
	FaultOnce string
}

// DefaultFaults is what an empty environment gives.
func DefaultFaults() Faults {
	return Faults{
		VRAM:           2 << 30,
		LoadDelay:      200 * time.Millisecond,
		ExitAfter:      Never,
		ExitCode:       1,
		CUDAErrorAfter: Never,
		OutsideVRAM:    512 << 20,
		UnhealthyAfter: Never,
		BusyFor:        time.Second,
		GenDelay:       100 * time.Millisecond,
	}
}

// ParseFaults reads the FAKE_ENGINE_* variables through getenv.
func ParseFaults(getenv func(string) string) (Faults, error) {
	f := DefaultFaults()
	var errs []string
	fail := func(name, value string, err error) {
		errs = append(errs, fmt.Sprintf("%s=%q: %v", name, value, err))
	}
	str := func(name string) (string, bool) {
		v := strings.TrimSpace(getenv(name))
		return v, v != ""
	}
	dur := func(name string, dst *time.Duration) {
		if v, ok := str(name); ok {
			d, err := parseDuration(v)
			if err != nil {
				fail(name, v, err)
				return
			}
			*dst = d
		}
	}
	boolean := func(name string, dst *bool) {
		if v, ok := str(name); ok {
			b, err := parseBool(v)
			if err != nil {
				fail(name, v, err)
				return
			}
			*dst = b
		}
	}
	bytes := func(name string, dst *uint64) {
		if v, ok := str(name); ok {
			n, err := ParseBytes(v)
			if err != nil {
				fail(name, v, err)
				return
			}
			*dst = n
		}
	}

	bytes(EnvSimVRAM, &f.VRAM)
	bytes(EnvVRAM, &f.VRAM)
	bytes(EnvOutsideVRAM, &f.OutsideVRAM)
	dur(EnvLoadDelay, &f.LoadDelay)
	boolean(EnvFailLoad, &f.FailLoad)
	boolean(EnvSkipModelCheck, &f.SkipModelCheck)
	dur(EnvExitAfter, &f.ExitAfter)
	if v, ok := str(EnvExitCode); ok {
		n, err := strconv.Atoi(v)
		if err != nil || n < 0 || n > 255 {
			fail(EnvExitCode, v, fmt.Errorf("want an exit status from 0 to 255"))
		} else {
			f.ExitCode = n
		}
	}
	if v, ok := str(EnvExitSignal); ok {
		s, err := ParseSignal(v)
		if err != nil {
			fail(EnvExitSignal, v, err)
		} else {
			f.ExitSignal = s
		}
	}
	dur(EnvCUDAErrorAfter, &f.CUDAErrorAfter)
	if v, ok := str(EnvFaultOnce); ok {
		f.FaultOnce = v
	}
	if v, ok := str(EnvHoldOutside); ok {
		for _, part := range strings.Split(v, ",") {
			n, err := strconv.Atoi(strings.TrimSpace(part))
			if err != nil || n < 0 {
				fail(EnvHoldOutside, v, fmt.Errorf("want simulated GPU indices separated by commas"))
				break
			}
			f.HoldOutside = append(f.HoldOutside, n)
		}
	}
	boolean(EnvNoGPU, &f.NoGPU)
	boolean(EnvIgnoreSIGTERM, &f.IgnoreSIGTERM)
	dur(EnvShutdownDelay, &f.ShutdownDelay)
	dur(EnvFlapHealth, &f.FlapHealth)
	dur(EnvUnhealthyAfter, &f.UnhealthyAfter)
	if v, ok := str(EnvBusySlots); ok {
		n, err := strconv.Atoi(v)
		if err != nil || n < 0 {
			fail(EnvBusySlots, v, fmt.Errorf("want a number of slots"))
		} else {
			f.BusySlots = n
		}
	}
	if v, ok := str(EnvBusyFor); ok {
		if strings.EqualFold(v, "forever") || strings.EqualFold(v, "inf") {
			f.BusyFor = Forever
		} else {
			dur(EnvBusyFor, &f.BusyFor)
		}
	}
	dur(EnvGenDelay, &f.GenDelay)
	boolean(EnvOrphanWorkers, &f.OrphanWorkers)

	if len(errs) > 0 {
		return f, fmt.Errorf("invalid environment: %s", strings.Join(errs, "; "))
	}
	return f, nil
}

func parseDuration(v string) (time.Duration, error) {
	if v == "0" {
		return 0, nil
	}
	d, err := time.ParseDuration(v)
	if err != nil {
		return 0, fmt.Errorf("want a duration such as 250ms or 2s")
	}
	if d < 0 {
		return 0, fmt.Errorf("negative duration")
	}
	return d, nil
}

func parseBool(v string) (bool, error) {
	switch strings.ToLower(v) {
	case "1", "true", "yes", "on":
		return true, nil
	case "0", "false", "no", "off":
		return false, nil
	}
	return false, fmt.Errorf("want 1 or 0")
}

// ParseBytes reads a size in bytes: an integer or decimal number with an
// optional binary suffix Ki, Mi, Gi or Ti (a trailing B is allowed: 2GiB).
func ParseBytes(v string) (uint64, error) {
	s := strings.TrimSuffix(strings.TrimSpace(v), "B")
	mult := 1.0
	for i, suf := range []string{"Ki", "Mi", "Gi", "Ti"} {
		if strings.HasSuffix(s, suf) {
			mult = math.Pow(1024, float64(i+1))
			s = strings.TrimSpace(strings.TrimSuffix(s, suf))
			break
		}
	}
	if mult == 1 {
		n, err := strconv.ParseUint(s, 10, 64)
		if err != nil {
			return 0, fmt.Errorf("want bytes, optionally with a suffix Ki, Mi, Gi or Ti (e.g. 2Gi)")
		}
		return n, nil
	}
	x, err := strconv.ParseFloat(s, 64)
	if err != nil || x < 0 || math.IsInf(x, 0) || math.IsNaN(x) || x*mult >= math.MaxUint64 {
		return 0, fmt.Errorf("want bytes, optionally with a suffix Ki, Mi, Gi or Ti (e.g. 2Gi)")
	}
	return uint64(math.Round(x * mult)), nil
}

var signalNames = map[string]syscall.Signal{
	"HUP": syscall.SIGHUP, "INT": syscall.SIGINT, "QUIT": syscall.SIGQUIT, "ILL": syscall.SIGILL,
	"TRAP": syscall.SIGTRAP, "ABRT": syscall.SIGABRT, "IOT": syscall.SIGABRT, "BUS": syscall.SIGBUS,
	"FPE": syscall.SIGFPE, "KILL": syscall.SIGKILL, "USR1": syscall.SIGUSR1, "SEGV": syscall.SIGSEGV,
	"USR2": syscall.SIGUSR2, "PIPE": syscall.SIGPIPE, "ALRM": syscall.SIGALRM, "TERM": syscall.SIGTERM,
	"XCPU": syscall.SIGXCPU, "XFSZ": syscall.SIGXFSZ, "SYS": syscall.SIGSYS,
}

// ParseSignal reads a signal name (SIGSEGV, SEGV, segv) or number.
func ParseSignal(v string) (syscall.Signal, error) {
	if n, err := strconv.Atoi(v); err == nil {
		if n <= 0 || n > 64 {
			return 0, fmt.Errorf("no signal %d", n)
		}
		return syscall.Signal(n), nil
	}
	name := strings.TrimPrefix(strings.ToUpper(strings.TrimSpace(v)), "SIG")
	if s, ok := signalNames[name]; ok {
		return s, nil
	}
	return 0, fmt.Errorf("unknown signal; want a name such as SIGSEGV or SIGABRT, or a number")
}
