package fakeengine

import (
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// refuse prints why a command line was refused, as the engine does (its
// usage error), and returns the engine's exit status for it.
func (p *process) refuse(err error) int {
	var ue *UsageError
	if errors.As(err, &ue) {
		p.stderr.printf("%s", ue.Message)
		return ue.Code
	}
	p.stderr.printf("%v", err)
	return 1
}

// runLlama plays llama-server: the listener opens first and answers 503
// while the model loads; signals kill the process until the model is loaded
// (llama-server installs its handlers after loading), then SIGTERM and
// SIGINT shut it down cleanly.
func (p *process) runLlama(argv []string) int {
	if p.faults.IgnoreSIGTERM {
		signal.Ignore(syscall.SIGTERM)
	}
	build, err := LlamaBuild(os.Getenv)
	if err != nil {
		p.stderr.printf("fake-engine: %v", err)
		return 1
	}
	cfg, err := ParseLlamaArgsBuild(argv, build)
	if err != nil {
		return p.refuse(err)
	}
	if cfg.Version {
		p.stderr.printf("version: %d (%s)\nbuilt with cc (GCC) 13.3.0 for x86_64-linux-gnu (fake-engine)", build, llamaCommit)
		return 0
	}
	gpus, err := p.gpus(false)
	if err != nil {
		p.stderr.printf("fake-engine: %v", err)
		return 1
	}
	if cfg.ListDevices {
		p.stderr.printf("%s", p.cudaInit(gpus))
		free := p.freeOrNil()
		var b strings.Builder
		b.WriteString("Available devices:\n")
		for i, g := range gpus {
			fmt.Fprintf(&b, "  CUDA%d: %s (%.0f MiB, %.0f MiB free)\n", i, g.Name, mib(g.Total), mib(freeOf(free, g)))
		}
		fmt.Print(b.String())
		return 0
	}
	if cfg.Help {
		fmt.Print(llamaUsage(build))
		return 0
	}
	selected, err := selectDevices(cfg, gpus)
	if err != nil {
		p.stderr.printf("%s", err.(*UsageError).Message)
		return 1
	}

	p.stderr.printf("%s", p.cudaInit(gpus))
	p.stderr.printf("build: %d (%s) with cc (GCC) 13.3.0 for x86_64-linux-gnu", build, llamaCommit)
	p.stderr.printf("system info: n_threads = 8, n_threads_batch = 8, total_threads = 16\n")
	p.stderr.printf("system_info: n_threads = 8 (n_threads_batch = 8) / 16 | CUDA : ARCHS = 860,890 | USE_GRAPHS = 1 | PEER_MAX_BATCH_SIZE = 128 | CPU : SSE3 = 1 | SSSE3 = 1 | AVX = 1 | AVX2 = 1 | F16C = 1 | FMA = 1 | OPENMP = 1 | REPACK = 1 |\n")
	p.stderr.printf("main: binding port with default address family")
	ln, err := net.Listen("tcp", net.JoinHostPort(cfg.Host, strconv.Itoa(cfg.Port)))
	if err != nil {
		p.stderr.printf("main: couldn't bind HTTP server socket, hostname: %s, port: %d", cfg.Host, cfg.Port)
		return 1
	}
	port := ln.Addr().(*net.TCPAddr).Port
	p.stderr.printf("main: HTTP server is listening, hostname: %s, port: %d, http threads: 15", cfg.Host, port)
	p.stderr.printf("main: loading model")
	model := cfg.Model
	if model == "" {
		model = llamaDefaultModel
	}
	p.stderr.printf("srv    load_model: loading model '%s'", model)

	nSlots := cfg.Parallel
	if nSlots <= 0 {
		nSlots = llamaDefaultSlots
	}
	nCtx := cfg.CtxSize
	if nCtx <= 0 {
		nCtx = llamaModelCtx
	}
	srv := newLlamaServer(cfg, model, nSlots, nCtx, p.state)
	hs := &http.Server{Handler: srv, ErrorLog: discardLog()}
	go hs.Serve(ln)

	// Loading: no signal handler yet, as in llama-server.
	time.Sleep(p.faults.LoadDelay)

	failLoad := func(lines ...string) int {
		for _, l := range lines {
			p.stderr.printf("%s", l)
		}
		p.stderr.printf("srv    load_model: failed to load model, '%s'", model)
		p.stderr.printf("srv    operator(): operator(): cleaning up before exit...")
		p.stderr.printf("main: exiting due to model loading error")
		hs.Close()
		return 1
	}
	if !p.modelExists(cfg.Model) {
		return failLoad(
			fmt.Sprintf("gguf_init_from_file: failed to open GGUF file '%s' (No such file or directory)", model),
			fmt.Sprintf("llama_model_load: error loading model: llama_model_loader: failed to load model from %s", model),
			"llama_model_load_from_file_impl: failed to load model",
			fmt.Sprintf("common_init_from_params: failed to load model '%s'", model))
	}
	if line := p.ggufHeaderError(cfg.Model); line != "" {
		return failLoad(line,
			fmt.Sprintf("llama_model_load: error loading model: llama_model_loader: failed to load model from %s", model),
			"llama_model_load_from_file_impl: failed to load model",
			fmt.Sprintf("common_init_from_params: failed to load model '%s'", model))
	}
	if p.faults.FailLoad {
		return failLoad(
			fmt.Sprintf("llama_model_load: error loading model: error loading model vocabulary: unknown pre-tokenizer type (%s=1)", EnvFailLoad),
			"llama_model_load_from_file_impl: failed to load model",
			fmt.Sprintf("common_init_from_params: failed to load model '%s'", model))
	}
	var free map[int]uint64
	if p.simDir != "" && len(selected) > 0 {
		if free, err = freeMemory(p.simDir); err != nil {
			return failLoad(fmt.Sprintf("fake-engine: reading the simulated node: %v", err))
		}
	}
	pl := PlaceLlama(cfg, selected, free, p.faults)
	if pl.Failed {
		return failLoad(pl.Logs...)
	}
	for _, l := range pl.Logs {
		p.stderr.printf("%s", l)
	}

	sigs := notify()
	if err := p.claim(p.withOutside(pl.Claims)); err != nil {
		return failLoad(fmt.Sprintf("fake-engine: claiming simulated GPU memory: %v", err))
	}
	p.stderr.printf("llama_context: n_ctx = %d", nCtx)
	p.stderr.printf("srv    load_model: initializing slots, n_slots = %d", nSlots)
	for i := 0; i < nSlots; i++ {
		p.stderr.printf("slot   load_model: id %2d | task -1 | new slot, n_ctx = %d", i, nCtx)
	}
	p.state.setReady(time.Now())
	p.stderr.printf("main: model loaded")
	p.stderr.printf("main: server is listening on http://%s - starting the main loop", net.JoinHostPort(cfg.Host, strconv.Itoa(port)))
	p.stderr.printf("srv  update_slots: all slots are idle")

	return p.runReady(sigs, afterReady{
		shutdown: func() int {
			p.stderr.printf("srv    operator(): operator(): cleaning up before exit...")
			time.Sleep(p.faults.ShutdownDelay)
			hs.Close()
			p.release()
			return 0
		},
		exit: func(code int) int {
			p.release()
			return code
		},
		cudaError: func() int {
			p.stderr.printf("%s", ggmlCUDAError(0))
			dieBySignal(syscall.SIGABRT)
			return 134
		},
	})
}

// ggmlCUDAError is what ggml-cuda prints before it aborts.
func ggmlCUDAError(device int) string {
	return fmt.Sprintf("CUDA error: out of memory\n"+
		"  current device: %d, in function ggml_backend_cuda_buffer_type_alloc_buffer at /app/ggml/src/ggml-cuda/ggml-cuda.cu:709\n"+
		"  cudaMalloc(&ptr, size)\n"+
		"/app/ggml/src/ggml-cuda/ggml-cuda.cu:88: CUDA error", device)
}

// cudaInit is ggml-cuda's start-up report of the devices it found.
func (p *process) cudaInit(gpus []GPU) string {
	if len(gpus) == 0 {
		return "ggml_cuda_init: failed to initialize CUDA: no CUDA-capable device is detected\n" +
			"warning: no usable GPU found, --gpu-layers option will be ignored\n" +
			"warning: one possible reason is that llama.cpp was compiled without GPU support\n" +
			"warning: consult docs/build.md for compilation instructions"
	}
	var b strings.Builder
	b.WriteString("ggml_cuda_init: GGML_CUDA_FORCE_MMQ:    no\nggml_cuda_init: GGML_CUDA_FORCE_CUBLAS: no\n")
	fmt.Fprintf(&b, "ggml_cuda_init: found %d CUDA devices:\n", len(gpus))
	for i, g := range gpus {
		fmt.Fprintf(&b, "  Device %d: %s, compute capability 8.6, VMM: yes\n", i, g.Name)
	}
	return strings.TrimSuffix(b.String(), "\n")
}

func (p *process) freeOrNil() map[int]uint64 {
	if p.simDir == "" {
		return nil
	}
	free, err := freeMemory(p.simDir)
	if err != nil {
		return nil
	}
	return free
}

// freeOf is a GPU's free memory, or its total when unknown.
func freeOf(free map[int]uint64, g GPU) uint64 {
	if f, ok := free[g.SimIndex]; ok && free != nil {
		return f
	}
	return g.Total
}

// selectDevices applies -dev/--device: CUDA<n> names (n counts the visible
// GPUs) or none.
func selectDevices(cfg LlamaConfig, gpus []GPU) ([]GPU, error) {
	if cfg.Devices == nil {
		return gpus, nil
	}
	var out []GPU
	for _, d := range cfg.Devices {
		if d == "none" {
			if len(cfg.Devices) == 1 {
				return nil, nil
			}
		}
		n, err := strconv.Atoi(strings.TrimPrefix(d, "CUDA"))
		if !strings.HasPrefix(d, "CUDA") || err != nil || n < 0 || n >= len(gpus) {
			return nil, llamaHandlingError(cfg.DevicesArg, llamaTable.Find("--device"), "invalid device: "+d)
		}
		out = append(out, gpus[n])
	}
	return out, nil
}

// Placement is where a llama-server load puts the model.
type Placement struct {
	// Claims are the bytes held on each simulated GPU index.
	Claims map[int]uint64
	// Offloaded is how many of the model's layers are on GPUs.
	Offloaded int
	// Logs are the load's log lines; when Failed, the reason it failed.
	Logs   []string
	Failed bool
}

// PlaceLlama decides what a llama-server load holds on the selected GPUs
// (free is each simulated GPU's free memory, nil when unknown):
//
//   - no GPU, -ngl 0, -dev none or FAKE_ENGINE_NO_GPU: nothing (all on the CPU);
//   - -sm none: everything on -mg;
//   - else split by -ts, or, without one, in proportion to free memory, as
//     llama.cpp does;
//   - a part that does not fit its GPU: with --fit on (the default) and no
//     -ngl given, fit lowers the layers on the GPU to leave --fit-target MiB
//     free (CPU spillover); otherwise the load fails with cudaMalloc's out
//     of memory.
func PlaceLlama(cfg LlamaConfig, gpus []GPU, free map[int]uint64, f Faults) Placement {
	pl := Placement{Claims: map[int]uint64{}}
	total := f.VRAM
	if len(gpus) == 0 || cfg.GPULayers == 0 || f.NoGPU || total == 0 {
		pl.Logs = append(pl.Logs, fmt.Sprintf("load_tensors: offloaded 0/%d layers to GPU", llamaLayers),
			fmt.Sprintf("load_tensors:   CPU_Mapped model buffer size = %8.2f MiB", mib(total)))
		return pl
	}
	for i, g := range gpus {
		pl.Logs = append(pl.Logs, fmt.Sprintf("llama_model_load_from_file_impl: using device CUDA%d (%s) (0000:%02x:00.0) - %.0f MiB free", i, g.Name, i+1, mib(freeOf(free, g))))
	}
	weights := make([]float64, len(gpus))
	if cfg.SplitMode == "none" {
		if cfg.MainGPU < 0 || cfg.MainGPU >= len(gpus) {
			pl.Failed = true
			pl.Logs = append(pl.Logs, fmt.Sprintf("llama_prepare_model_devices: invalid value for main_gpu: %d (available devices: %d)", cfg.MainGPU, len(gpus)),
				"llama_model_load_from_file_impl: failed to load model")
			return pl
		}
		weights[cfg.MainGPU] = 1
	} else {
		allZero := true
		for i := range weights {
			if i < len(cfg.TensorSplit) && cfg.TensorSplit[i] > 0 {
				weights[i] = cfg.TensorSplit[i]
				allZero = false
			}
		}
		if allZero {
			for i, g := range gpus {
				weights[i] = float64(freeOf(free, g))
			}
		}
	}
	want := SplitBytes(total, weights)
	claims := make([]uint64, len(want))
	copy(claims, want)
	if free != nil {
		var wanted, kept uint64
		for i, g := range gpus {
			fr := freeOf(free, g)
			margin := uint64(llamaFitTargetMiB) << 20
			if len(cfg.FitTarget) > 0 {
				t := cfg.FitTarget[len(cfg.FitTarget)-1]
				if i < len(cfg.FitTarget) {
					t = cfg.FitTarget[i]
				}
				margin = uint64(max(t, 0)) << 20
			}
			if cfg.Fit && !cfg.GPULayersSet && want[i]+margin > fr {
				if fr > margin {
					claims[i] = fr - margin
				} else {
					claims[i] = 0
				}
				pl.Logs = append(pl.Logs, fmt.Sprintf("llama_params_fit_impl: projected to use %.0f MiB of device memory vs. %.0f MiB of free device memory on CUDA%d", mib(want[i]), mib(fr), i))
			}
			wanted += want[i]
			kept += claims[i]
		}
		for i, g := range gpus {
			if fr := freeOf(free, g); claims[i] > fr {
				pl.Failed = true
				pl.Logs = append(pl.Logs,
					fmt.Sprintf("ggml_backend_cuda_buffer_type_alloc_buffer: allocating %.2f MiB on device %d: cudaMalloc failed: out of memory", mib(claims[i]), i),
					fmt.Sprintf("alloc_tensor_range: failed to allocate CUDA%d buffer of size %d", i, claims[i]),
					fmt.Sprintf("llama_model_load: error loading model: unable to allocate CUDA%d buffer", i),
					"llama_model_load_from_file_impl: failed to load model",
					fmt.Sprintf("common_init_from_params: failed to load model '%s'", cfg.Model))
				return pl
			}
		}
		pl.Offloaded = llamaLayers
		if kept < wanted {
			pl.Offloaded = int(float64(llamaLayers) * float64(kept) / float64(wanted))
			pl.Logs = append(pl.Logs, fmt.Sprintf("llama_params_fit_impl: set n_gpu_layers to %d to fit device memory (--fit on)", pl.Offloaded))
		}
	} else {
		pl.Offloaded = llamaLayers
	}
	pl.Logs = append(pl.Logs, fmt.Sprintf("load_tensors: offloading %d repeating layers to GPU", min(pl.Offloaded, llamaLayers-1)),
		fmt.Sprintf("load_tensors: offloaded %d/%d layers to GPU", pl.Offloaded, llamaLayers))
	for i, g := range gpus {
		if claims[i] == 0 {
			continue
		}
		pl.Logs = append(pl.Logs, fmt.Sprintf("load_tensors:        CUDA%d model buffer size = %8.2f MiB", i, mib(claims[i])))
		if g.SimIndex >= 0 {
			pl.Claims[g.SimIndex] += claims[i]
		}
	}
	return pl
}

// ggufHeaderError is what llama.cpp's GGUF reader says of a model file whose
// start is not a GGUF header ("" when it is, or when the model check is
// skipped): the lines of the real llama-server (build 27aef3d). An empty
// file is where the stand-in differs: it stands for a model (the tests'
// placeholder models are empty files, or the magic alone), where
// llama-server says "failed to read magic" or "failed to read header".
func (p *process) ggufHeaderError(path string) string {
	if p.faults.SkipModelCheck || path == "" {
		return ""
	}
	f, err := os.Open(path)
	if err != nil {
		return ""
	}
	if fi, err := f.Stat(); err != nil || fi.Size() == 0 || !fi.Mode().IsRegular() {
		return ""
	}
	defer f.Close()
	head := make([]byte, 4) // the magic
	n, _ := io.ReadFull(f, head)
	switch {
	case n < 4:
		return "gguf_init_from_file_ptr: failed to read magic"
	case string(head[:4]) != "GGUF":
		magic := []byte(string(head[:4]))
		for i, c := range magic {
			if c < 0x20 || c > 0x7e {
				magic[i] = '?'
			}
		}
		return fmt.Sprintf("gguf_init_from_file_ptr: invalid magic characters: '%s', expected 'GGUF'", magic)
	}
	// A file of the magic alone is a placeholder too (llama.cpp: "failed
	// to read header"); the real header is not read further.
	return ""
}
