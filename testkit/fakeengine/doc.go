// Package fakeengine is fake-engine, the stand-in for the LLM inference
// engines pool-managerd runs (llama.cpp llama-server, vLLM, TGI, SGLang), for tests
// and the demo on machines without GPUs. It parses its command line as the
// engine does, answers the engine's health and status endpoints, holds
// memory on a simulated GPU node (package sim) while it lives, and acts out
// failures on demand. cmd/fake-engine is a thin main around Main.
//
// # Which engine it plays
//
// In order: a first argument --fake-engine-as=llamacpp|vllm|tgi, the
// variable FAKE_ENGINE_AS=llamacpp|vllm|tgi, the name it was started under
// (vllm, whose first argument must be serve as in `vllm serve MODEL`;
// text-generation-launcher; llama-server), then, under any other name, the
// command line itself: `serve MODEL ...` is vLLM's and one with --model-id
// is TGI's (llama-server would refuse both). Anything else plays
// llama-server. So one fake-engine binary can stand in for all three presets.
//
//	llama-server  argv parsed with package llamaargs (every llama-server option
//	              is accepted; unknown: "error: invalid argument: X", exit 1; bad
//	              or missing value: `error while handling argument "X": ...`,
//	              exit 1). The port opens before the model loads; while loading,
//	              every route answers 503 {"error":{"message":"Loading model",...}}.
//	              Until loaded, SIGTERM/SIGINT kill it (llama-server installs its
//	              handlers after loading); then the first exits 0, a second during
//	              the clean-up exits 1 at once.
//	vllm serve    argparse-style options (--name value, --name=value; unknown:
//	              usage and "vllm serve: error: unrecognized arguments: X", exit 2).
//	              tensor-parallel x pipeline-parallel worker processes hold the
//	              memory; the port is closed (connection refused) until they are
//	              loaded, then GET /health answers 200 with an empty body.
//	              CUDA_VISIBLE_DEVICES must hold indices: a UUID makes it fail as
//	              vLLM does (ValueError: invalid literal for int()).
//	TGI           clap-style options (also read from MODEL_ID, PORT, HOSTNAME, ...;
//	              unknown: "error: unexpected argument 'X' found", exit 2).
//	              --num-shard shard processes hold the memory; connection refused
//	              until warm, then GET /health 200 (empty body) or 503
//	              {"error":"unhealthy","error_type":"healthcheck"}.
//
//	SGLang        python -m sglang.launch_server (any interpreter name: the first
//	              arguments -m sglang.launch_server say it; or FAKE_ENGINE_AS=sglang).
//	              argparse-style options (unknown: "launch_server.py: error:
//	              unrecognized arguments: X", exit 2). One scheduler process per
//	              --tp-size rank holds --mem-fraction-static of its GPU. Connection
//	              refused while loading, then /health and /health_generate answer
//	              503 with an empty body until the warm-up is done
//	              (FAKE_ENGINE_WARMUP), then 200, and 503 again while it exits;
//	              /ping is always 200.
//
// Workers and shards are this program run again (first argument
// --fake-engine-worker), in the engine's session and process group, with
// titles as the engines name them: vLLM runs API server → VLLM::EngineCore →
// VLLM::Worker_TP<n> (with -tp 1 the EngineCore holds the memory itself);
// TGI's shards are text-generation-server, each in a process group of its
// own, and its port is served by text-generation-router, another process of
// its own group that binds only once the shards are warm: a SIGTERM to the
// launcher's group reaches only the launcher, which stops the router, then
// the shards, giving each stage --graceful-termination-timeout (default 90s);
// SGLang's are sglang::scheduler_TP<n>.
// They exit when the main process goes away, except vLLM's, which keep their
// GPUs after the API server is killed, as vLLM's do.
//
// vLLM behaves as the version FAKE_ENGINE_VLLM_VERSION names (default
// 0.11.0): --shutdown-timeout is known from 0.18 (older: unrecognized, exit
// 2), full GPU UUIDs in CUDA_VISIBLE_DEVICES work from 0.24 (older: the
// int() ValueError; short UUIDs always fail). `vllm serve --help` (and
// --help=all) lists the options that version knows. vLLM, TGI and SGLang
// hold the share of each GPU their memory flag says (vLLM
// --gpu-memory-utilization × total, TGI 0.9 × --cuda-memory-fraction × total,
// SGLang --mem-fraction-static × total) unless FAKE_ENGINE_VRAM is set.
//
// # GPUs
//
// The simulated node is the directory in POOL_MANAGERD_SIM_DIR; when it is
// unset no memory is held anywhere (as on real GPUs the stand-in cannot
// touch). The GPUs the engine may use are CUDA_VISIBLE_DEVICES, resolved as
// the CUDA runtime does: simulated GPU indices (NVML order, i.e.
// CUDA_DEVICE_ORDER=PCI_BUS_ID) or UUIDs (GPU-..., a unique prefix is
// enough); the list ends at the first entry that names no GPU. When
// CUDA_VISIBLE_DEVICES is unset or empty the engine sees no GPU and runs on
// the CPU: it holds no GPU memory (CPU spillover).
//
// Once loaded the engine holds FAKE_ENGINE_VRAM bytes (default 2Gi) on its
// GPUs with sim.Claim under the pid of the process that holds it (the
// llama-server process itself; each vLLM worker or TGI shard), released on
// a clean exit (the simulator ignores the claims of dead processes anyway).
// llama-server spreads it by --tensor-split (proportions separated by , or
// /), or without one in proportion to each GPU's free memory, as llama.cpp
// does; -sm none puts it all on --main-gpu; -ngl 0 and -dev none keep it on
// the CPU. When a GPU lacks the free memory: with --fit on (llama-server's
// default) and no --n-gpu-layers given, fit keeps fewer layers on the GPU,
// leaving --fit-target MiB (default 1024) free: quiet CPU spillover; else
// the load fails with cudaMalloc's out of memory and "exiting due to model
// loading error", exit 1. vLLM and TGI split evenly, worker i on the i-th
// visible GPU, and fail to load when a GPU lacks the memory.
//
// # Faults and settings
//
// These variables are also printed by --help (see envHelp):
//
//	FAKE_ENGINE_VRAM=2Gi               GPU memory held once loaded (bytes; Ki, Mi, Gi, Ti suffixes)
//	FAKE_ENGINE_LOAD_DELAY=200ms       how long loading takes
//	FAKE_ENGINE_FAIL_LOAD=1            loading fails after the delay (llama-server:
//	                                   "exiting due to model loading error", exit 1)
//	FAKE_ENGINE_SKIP_MODEL_CHECK=1     load any model path, even a missing one
//	                                   (by default a missing model fails to load)
//	FAKE_ENGINE_EXIT_AFTER=<dur>       that long after Ready, exit with
//	FAKE_ENGINE_EXIT_CODE=<n>          status n (default 1), or be killed by
//	FAKE_ENGINE_EXIT_SIGNAL=<sig>      the signal (SIGSEGV, SIGABRT, KILL, 9...; wins over the code)
//	FAKE_ENGINE_CUDA_ERROR_AFTER=<dur> that long after Ready, print a CUDA out-of-memory
//	                                   error and abort (llama-server: ggml-cuda's message,
//	                                   then SIGABRT; vLLM and TGI: Python's RuntimeError, exit 1)
//	FAKE_ENGINE_FAULT_ONCE=<file>      the exit and CUDA error above strike only the first
//	                                   engine to reach Ready (it creates the file); a
//	                                   restarted engine that finds the file leaves them out
//	FAKE_ENGINE_HOLD_OUTSIDE_MASK=<i>  also hold memory on simulated GPU i (comma list),
//	FAKE_ENGINE_OUTSIDE_VRAM=512Mi     this much, whatever CUDA_VISIBLE_DEVICES says
//	FAKE_ENGINE_NO_GPU=1               hold no GPU memory although GPUs are visible
//	FAKE_ENGINE_IGNORE_SIGTERM=1       ignore SIGTERM (workers too): only SIGKILL (or SIGINT) stops it
//	FAKE_ENGINE_SHUTDOWN_DELAY=<dur>   how long the clean-up after SIGTERM takes
//	FAKE_ENGINE_FLAP_HEALTH=<period>   after Ready, health alternates 200 and 503 every period
//	FAKE_ENGINE_UNHEALTHY_AFTER=<dur>  health answers 503 from that long after Ready on
//	FAKE_ENGINE_BUSY_SLOTS=<n>         n slots report is_processing from Ready on,
//	FAKE_ENGINE_BUSY_FOR=1s            for this long ("forever": until exit)
//	FAKE_ENGINE_GEN_DELAY=100ms        how long a completion request holds a slot
//	FAKE_ENGINE_ORPHAN_WORKERS=1       TGI shards and SGLang schedulers outlive a main
//	                                   process that dies (holding their memory), as
//	                                   vLLM's EngineCore and workers always do (=0: not even they)
//	FAKE_ENGINE_WARMUP=200ms           SGLang: how long /health answers 503 after the port opens
//	FAKE_ENGINE_VLLM_VERSION=0.11.0    the vLLM version imitated (see above)
//	FAKE_ENGINE_LLAMA_BUILD=<n>        imitate llama.cpp build n (default 8000): before
//	                                   7437 there is no --fit (not in --help; refused with
//	                                   "error: invalid argument: --fit", exit 1)
//
// An invalid value of one of them prints "fake-engine: invalid environment:
// ..." and exits 1.
package fakeengine

// envHelp is the part of every mode's --help that documents the stand-in.
const envHelp = `----- fake-engine (pool-managerd's stand-in engine) -----

Plays llama-server (default), vLLM (started as "vllm serve ...", or as
"fake-engine serve MODEL ...", or with FAKE_ENGINE_AS=vllm), TGI (started
as "text-generation-launcher", or with --model-id, or with FAKE_ENGINE_AS=tgi)
or SGLang (started as "ANY -m sglang.launch_server ...", or with
FAKE_ENGINE_AS=sglang).
A first argument --fake-engine-as=MODE also chooses.

GPUs: POOL_MANAGERD_SIM_DIR is the simulated node (unset: no memory is held);
CUDA_VISIBLE_DEVICES (indices or GPU UUIDs) are the GPUs it may use; unset or
empty: no GPU, CPU only.

Environment:
  FAKE_ENGINE_VRAM=2Gi               GPU memory held once loaded
  FAKE_ENGINE_LOAD_DELAY=200ms       how long loading takes
  FAKE_ENGINE_FAIL_LOAD=1            loading fails after the delay
  FAKE_ENGINE_SKIP_MODEL_CHECK=1     load any model path, even a missing one
  FAKE_ENGINE_EXIT_AFTER=<dur>       after Ready, exit with FAKE_ENGINE_EXIT_CODE
  FAKE_ENGINE_EXIT_CODE=1            (default 1) or be killed by
  FAKE_ENGINE_EXIT_SIGNAL=<sig>      this signal (SIGSEGV, SIGABRT, ...)
  FAKE_ENGINE_CUDA_ERROR_AFTER=<dur> after Ready, print a CUDA out-of-memory error and abort
  FAKE_ENGINE_FAULT_ONCE=<file>      the exit and CUDA error strike only the first engine (creates the file)
  FAKE_ENGINE_HOLD_OUTSIDE_MASK=<i>  also hold FAKE_ENGINE_OUTSIDE_VRAM (512Mi) on
                                     simulated GPU i (comma list), outside the mask
  FAKE_ENGINE_NO_GPU=1               hold no GPU memory though given GPUs (CPU spillover)
  FAKE_ENGINE_IGNORE_SIGTERM=1       ignore SIGTERM
  FAKE_ENGINE_SHUTDOWN_DELAY=<dur>   clean-up time after SIGTERM (a second signal exits 1)
  FAKE_ENGINE_FLAP_HEALTH=<period>   after Ready, health alternates 200/503
  FAKE_ENGINE_UNHEALTHY_AFTER=<dur>  health answers 503 from then on
  FAKE_ENGINE_BUSY_SLOTS=<n>         n slots busy from Ready on, for
  FAKE_ENGINE_BUSY_FOR=1s            this long ("forever": until exit)
  FAKE_ENGINE_GEN_DELAY=100ms        how long a completion request holds a slot
  FAKE_ENGINE_ORPHAN_WORKERS=1       TGI/SGLang workers outlive a dead main process
                                     (vLLM's always do; =0: not even they)
  FAKE_ENGINE_WARMUP=200ms           SGLang: /health 503 this long after the port opens
  FAKE_ENGINE_VLLM_VERSION=0.11.0    vLLM version imitated (--shutdown-timeout from
                                     0.18, full GPU UUIDs from 0.24)
  FAKE_ENGINE_LLAMA_BUILD=8000       llama.cpp build imitated; before 7437 it has no fit options
`
