package restart

import (
	"fmt"
	"strconv"
	"strings"
	"time"
)

// The error classes of a failure (DESIGN.md, "Lifecycle of a pool"). Each
// has a Hint.
const (
	// ClassInsufficientVRAM: the masked GPUs lack the VRAM the model needs,
	// found before the spawn (or the engine's own out-of-memory at load).
	ClassInsufficientVRAM = "insufficient_vram"
	// ClassInsufficientRAM: the host lacks the RAM the model needs, found before the spawn.
	ClassInsufficientRAM = "insufficient_ram"
	// ClassCPUSpillover: the engine runs but holds no (or too little) GPU memory: it computes on the CPU.
	ClassCPUSpillover = "cpu_spillover"
	// ClassMaskViolation: the engine holds memory on a GPU outside its mask.
	ClassMaskViolation = "mask_violation"
	// ClassSpawnFailed: the engine process could not be started.
	ClassSpawnFailed = "spawn_failed"
	// ClassExited: the engine exited on its own.
	ClassExited = "exited"
	// ClassSignaled: a signal pool-managerd did not send killed the engine.
	ClassSignaled = "signaled"
	// ClassOOMKilled: the kernel's OOM killer killed the engine.
	ClassOOMKilled = "oom_killed"
	// ClassCUDAError: the engine reported a CUDA error. Doubles the backoff delay.
	ClassCUDAError = "cuda_error"
	// ClassDriverReset: an Xid critical error, a GPU reset or a lost GPU
	// under the engine. Doubles the backoff delay.
	ClassDriverReset = "driver_reset"
	// ClassHealthTimeout: the engine did not pass its health check within the startup timeout.
	ClassHealthTimeout = "health_timeout"
	// ClassHealthFailed: the engine failed its health check after it was Ready.
	ClassHealthFailed = "health_failed"
	// ClassArgsRejected: the engine exited at once, naming an argument of its
	// command line it does not know or cannot take (a flag of a newer build,
	// a bad value).
	ClassArgsRejected = "args_rejected"
	// ClassModelMissing: the engine could not open the model file.
	ClassModelMissing = "model_missing"
	// ClassModelCorrupt: the engine opened the model file but could not read
	// it as a model (bad magic, a truncated header or tensor data).
	ClassModelCorrupt = "model_corrupt"

	// The classes of a failed fetch of a pool's model (model.source), found
	// before anything is spawned. drivers/model/fetch names its errors with
	// the same strings (a test in internal/executor holds them equal).

	// ClassModelDigestMismatch: the downloaded model's sha256 (or size) is not
	// the declared one; the partial file was deleted.
	ClassModelDigestMismatch = "model_digest_mismatch"
	// ClassInsufficientDisk: the model does not fit in the model cache's free
	// space (or under --model-cache-max); nothing was downloaded.
	ClassInsufficientDisk = "insufficient_disk"
	// ClassFetchHTTP: the model's source answered an HTTP error (the message
	// has the status code).
	ClassFetchHTTP = "fetch_http"
	// ClassFetchStalled: the download received nothing for --fetch-stall-timeout.
	ClassFetchStalled = "fetch_stalled"
	// ClassFetchNetwork: the connection to the model's source failed (refused,
	// reset, dropped) more often than a fetch retries.
	ClassFetchNetwork = "fetch_network"
	// ClassModelNotCached: offline mode, and the model is not in the model
	// cache with a matching digest.
	ClassModelNotCached = "model_not_cached"
)

// Classes lists every error class, in the order of DESIGN.md.
var Classes = []string{
	ClassInsufficientVRAM, ClassInsufficientRAM, ClassCPUSpillover, ClassMaskViolation,
	ClassSpawnFailed, ClassExited, ClassSignaled, ClassOOMKilled,
	ClassCUDAError, ClassDriverReset, ClassHealthTimeout, ClassHealthFailed,
	ClassArgsRejected, ClassModelMissing, ClassModelCorrupt,
	ClassModelDigestMismatch, ClassInsufficientDisk, ClassFetchHTTP, ClassFetchStalled,
	ClassFetchNetwork, ClassModelNotCached,
}

// FetchClasses are the classes of a failed fetch of a pool's model.
var FetchClasses = []string{
	ClassModelDigestMismatch, ClassInsufficientDisk, ClassFetchHTTP, ClassFetchStalled,
	ClassFetchNetwork, ClassModelNotCached,
}

// Failure is what went wrong with a pool's start or its engine.
type Failure struct {
	// Class is one of the Class constants.
	Class string `json:"class"`
	// Message is the detail: the engine's error line, the numbers of a VRAM check.
	Message string `json:"message,omitempty"`
	// ExitCode is the engine's exit status (ClassExited); 0 when not known.
	ExitCode int `json:"exitCode,omitempty"`
	// Signal names the signal that killed the engine ("SIGKILL"), for ClassSignaled and ClassOOMKilled.
	Signal string `json:"signal,omitempty"`
	// Hint, when set, replaces the class's Hint (a hint that knows the pool,
	// say); see HintFor.
	Hint string `json:"hint,omitempty"`
}

// HintFor returns the failure's own Hint, or its class's.
func (f Failure) HintFor() string {
	if f.Hint != "" {
		return f.Hint
	}
	return Hint(f.Class)
}

var summaries = map[string]string{
	ClassInsufficientVRAM: "insufficient VRAM",
	ClassInsufficientRAM:  "insufficient host RAM",
	ClassCPUSpillover:     "engine runs on the CPU",
	ClassMaskViolation:    "engine uses a GPU outside its devices",
	ClassSpawnFailed:      "engine could not be started",
	ClassExited:           "engine exited",
	ClassSignaled:         "engine killed",
	ClassOOMKilled:        "engine killed by the kernel's OOM killer",
	ClassCUDAError:        "engine hit a CUDA error",
	ClassDriverReset:      "GPU driver error or reset",
	ClassHealthTimeout:    "engine not healthy within the startup timeout",
	ClassHealthFailed:     "engine failed its health check",
	ClassArgsRejected:     "engine rejected its command line",
	ClassModelMissing:     "engine could not open the model file",
	ClassModelCorrupt:     "engine could not read the model file",

	ClassModelDigestMismatch: "downloaded model does not match its sha256",
	ClassInsufficientDisk:    "model cache lacks the disk space for the model",
	ClassFetchHTTP:           "model source answered an HTTP error",
	ClassFetchStalled:        "model download stalled",
	ClassFetchNetwork:        "model source could not be reached",
	ClassModelNotCached:      "model not in the model cache (offline)",
}

// String describes the failure in a few words, the detail in parentheses:
// "engine exited with code 1 (CUDA error: out of memory)".
func (f Failure) String() string {
	s, ok := summaries[f.Class]
	if !ok {
		s = "engine failed"
		if f.Class != "" {
			s += " (" + f.Class + ")"
		}
	}
	switch {
	case f.Class == ClassExited && f.ExitCode != 0:
		s += " with code " + strconv.Itoa(f.ExitCode)
	case f.Class == ClassSignaled && f.Signal != "":
		s += " by " + f.Signal
	}
	if f.Message != "" {
		s += " (" + f.Message + ")"
	}
	return s
}

var hints = map[string]string{
	ClassInsufficientVRAM: "lower ctx, move the split toward the larger GPU, or pick a smaller quantisation",
	ClassInsufficientRAM: "free host memory (stop other processes), lower ctx or --parallel, " +
		"or pick a smaller model or quantisation; the model passes through host RAM while it loads",
	ClassCPUSpillover: "the engine holds no GPU memory: it computes on the CPU; check that the engine build has CUDA, " +
		"that CUDA_VISIBLE_DEVICES in its log names the pool's GPUs, and that no flag offloads layers to the CPU " +
		"(--n-gpu-layers, --fit on, --cpu-offload-gb)",
	ClassMaskViolation: "the engine holds memory on a GPU outside its devices; check CUDA_VISIBLE_DEVICES in the engine log " +
		"and remove flags that pick devices themselves (--device, --main-gpu); a process in the pool's session may be using the GPU",
	ClassSpawnFailed: "check that the engine binary exists and is executable, that the model path is readable, " +
		"and that the port is free; the engine log in the state directory has the details",
	ClassExited: "read the end of the engine log for its error; check the model file and the extra flags " +
		"(an unknown flag makes the engine exit at once)",
	ClassSignaled: "something else killed the engine: check dmesg and the system journal for who sent the signal " +
		"(another supervisor, a user, systemd stopping a unit)",
	ClassOOMKilled: "the kernel ran out of host memory: free host RAM, lower ctx or --parallel, or pick a smaller model; " +
		"dmesg has the OOM report",
	ClassCUDAError: "check the engine log for the CUDA error; lower ctx or --parallel if out of memory; " +
		"check nvidia-smi and dmesg for Xid errors",
	ClassDriverReset: "check nvidia-smi and dmesg for Xid errors; a GPU off the bus needs nvidia-smi -r or a reboot, " +
		"and repeated Xids point to the hardware, its power or its temperature",
	ClassHealthTimeout: "the model did not load within restart.startupTimeout: raise it for a large model or a slow disk, " +
		"and check the engine log for a hang",
	ClassHealthFailed: "the engine answers its health check with an error or stopped answering: check the engine log; " +
		"an overloaded engine may need a lower --parallel or ctx",
	ClassArgsRejected: "the engine build does not take an argument of its command line (the error names it): remove the flag " +
		"from the pool's flags, or upgrade the engine (an older llama-server lacks --fit and other newer flags); " +
		"`engine --help` lists what the build takes",
	ClassModelMissing: "the model file does not exist or cannot be read by the engine's user: check model.path " +
		"(absolute, on this node) and its permissions",
	ClassModelCorrupt: "the model file is not a model the engine can read (truncated download, wrong format, " +
		"or a GGUF version newer than the engine): download it again and compare its checksum, or upgrade the engine",
	ClassModelDigestMismatch: "the source serves other bytes than model.sha256 (or model.files) declares: check that the " +
		"declared digest is the file's (sha256sum, or the Hub's LFS sha256) and that the source pins the revision; " +
		"the partial download was deleted",
	ClassInsufficientDisk: "free disk space under the model cache (--model-cache), raise --model-cache-max, " +
		"or let the cache's GC remove models no pool uses (--cache-grace)",
	ClassFetchHTTP: "check model.source (a 404 is a wrong URL, file or revision; 401 or 403 a private source: set " +
		"--model-token-file or POOL_MANAGERD_MODEL_TOKEN, and list its host in --model-token-hosts); a 5xx or 429 is the source's and is retried with backoff",
	ClassFetchStalled: "the source sent nothing for --fetch-stall-timeout: check the network and the source; " +
		"the download resumes from the bytes already on disk at the next try",
	ClassFetchNetwork: "the node could not reach the source (DNS, refused, reset): check its network, proxy and firewall; " +
		"the download resumes from the bytes already on disk at the next try",
	ClassModelNotCached: "offline mode uses only models already in the model cache: fetch the model on a node that is " +
		"online (or copy the cache), or run without --offline",
}

// Hint returns what a person can do about a failure of the class; for an
// unknown class, to read the engine log.
func Hint(class string) string {
	if h, ok := hints[class]; ok {
		return h
	}
	return "check the engine log in the state directory"
}

// BreakerMessage is the line that says a pool's breaker is open:
// "circuit open after 5 failures in 10 minutes; fix the config or run
// pool-managerd reset big".
func BreakerMessage(pool string, failures int, window time.Duration) string {
	return fmt.Sprintf("circuit open after %d failures in %s; fix the config or run pool-managerd reset %s",
		failures, Human(window), pool)
}

// Message is the line that tells a person where the pool stands, "" when
// there is nothing to tell (no failure pending). For example:
//
//	engine exited (CUDA error: out of memory) after 41 s; restart 3 of 5 in 10 minutes (backoff 8 s)
//	circuit open after 5 failures in 10 minutes; fix the config or run pool-managerd reset big
//	circuit re-opened: the half-open try failed (engine exited with code 1); next try in 10 minutes; fix the config or run pool-managerd reset big
func (t *Tracker) Message(pool string, now time.Time) string {
	d := t.Decide(now)
	reset := "fix the config or run pool-managerd reset " + pool
	switch d.Reason {
	case ReasonBreakerOpen:
		if t.openCount <= 1 {
			return BreakerMessage(pool, t.FailuresInWindow(t.openedAt), t.policy.Breaker.Window)
		}
		what := "failed"
		if t.last != nil {
			what = "failed (" + t.last.String() + ")"
		}
		return fmt.Sprintf("circuit re-opened: the half-open try %s; next try in %s; %s",
			what, Human(t.retryAt.Sub(t.openedAt)), reset)
	case ReasonHalfOpen:
		return "circuit half-open: one try to start; " + reset + " if it fails again"
	case ReasonHalfOpenTry:
		return "circuit half-open: the one try is starting; Ready closes the circuit"
	case ReasonBackoff, ReasonBackoffElapsed:
		if t.last == nil {
			return ""
		}
		var b strings.Builder
		b.WriteString(t.last.String())
		if t.lastUptime > 0 {
			b.WriteString(" after " + Human(t.lastUptime))
		}
		fmt.Fprintf(&b, "; restart %d", t.FailuresInWindow(t.lastAt))
		if n := t.policy.Breaker.Failures; n > 0 {
			fmt.Fprintf(&b, " of %d in %s", n, Human(t.policy.Breaker.Window))
		}
		fmt.Fprintf(&b, " (backoff %s)", Human(t.delay))
		return b.String()
	}
	return ""
}

// Human writes a duration the way the messages do: "10 minutes",
// "1 hour", "41 s", "7.6 s", "1m30s".
func Human(d time.Duration) string {
	plural := func(n int64, unit string) string {
		if n == 1 {
			return "1 " + unit
		}
		return strconv.FormatInt(n, 10) + " " + unit + "s"
	}
	switch {
	case d <= 0:
		return "0 s"
	case d%time.Hour == 0:
		return plural(int64(d/time.Hour), "hour")
	case d%time.Minute == 0:
		return plural(int64(d/time.Minute), "minute")
	case d < time.Minute:
		return strconv.FormatFloat(d.Round(100*time.Millisecond).Seconds(), 'f', -1, 64) + " s"
	}
	return d.Round(time.Second).String()
}
