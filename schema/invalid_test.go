package schema

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// invalidRoot holds one invalid config per directory, each with one mistake.
const invalidRoot = "../testdata/invalid"

// invalidDiag is one expected diagnostic of an invalid config.
type invalidDiag struct {
	// file is relative to the case directory; the diagnostic's file is filepath.Join(caseDir, file).
	file      string
	line, col int
	path      string
	// msg is a substring of the message.
	msg string
}

type invalidCase struct {
	// name is the case's directory under testdata/invalid.
	name string
	// cueLevel: plain `cue vet` with the schema rejects the case too (a
	// schema-level mistake); false for the Go-level checks (inventory, sharing,
	// ports, engine flags), which cue vet accepts. TestCueVet checks both ways.
	cueLevel bool
	// want is what the loader should report: the one mistake, normally once.
	want []invalidDiag
}

var invalidCases = []invalidCase{
	// ---- schema-level: the pool's own fields ----
	{name: "unknown-engine", cueLevel: true, want: []invalidDiag{
		{"pools.cue", 5, 10, "pools.chat.engine", `engine must be "llamacpp", "vllm", "tgi" or "sglang"`},
	}},
	{name: "conflicting-engine-two-files", cueLevel: true,
		want: []invalidDiag{
			{"overrides.cue", 4, 22, "pools.chat.engine", `conflicting values "llamacpp" and "vllm"`},
		},
	},
	{name: "relative-model-path", cueLevel: true, want: []invalidDiag{
		{"pools.cue", 6, 15, "pools.chat.model.path", "model path must be absolute"},
	}},
	{name: "ctx-too-small", cueLevel: true, want: []invalidDiag{
		{"pools.cue", 8, 9, "pools.chat.model.ctx", "model ctx must be from 256 to 1048576 tokens"},
	}},
	{name: "ctx-too-large", cueLevel: true, want: []invalidDiag{
		{"pools.cue", 8, 9, "pools.chat.model.ctx", "model ctx must be from 256 to 1048576 tokens"},
	}},
	{name: "ctx-not-integer", cueLevel: true,
		want: []invalidDiag{
			{"pools.cue", 8, 9, "pools.chat.model.ctx", "model ctx must be from 256 to 1048576 tokens"},
		},
	},
	{name: "model-not-struct", cueLevel: true,
		want: []invalidDiag{
			{"pools.cue", 6, 10, "pools.chat.model", "must be a struct"},
		},
	},
	{name: "bad-pool-id", cueLevel: true, want: []invalidDiag{
		{"pools.cue", 3, 8, "pools.Chat-7B", "pool id must be lowercase letters"},
	}},
	{name: "bad-node-reference-name", cueLevel: true, want: []invalidDiag{
		{"pools.cue", 4, 10, "pools.chat.node", "must be a lowercase DNS label"},
	}},
	{name: "node-not-string", cueLevel: true, want: []invalidDiag{
		{"pools.cue", 4, 10, "pools.chat.node", "must be a lowercase DNS label"},
	}},
	{name: "duplicate-device", cueLevel: true, want: []invalidDiag{
		{"pools.cue", 7, 11, "pools.chat.devices", "devices lists GPU 0 twice (at positions 0 and 1)"},
	}},
	{name: "empty-devices", cueLevel: true,
		want: []invalidDiag{
			{"pools.cue", 7, 11, "pools.chat.devices", "at least one"},
		},
	},
	{name: "negative-device", cueLevel: true,
		want: []invalidDiag{
			{"pools.cue", 7, 12, "pools.chat.devices[0]", "device index must be an integer >= 0"},
		},
	},
	{name: "device-not-integer", cueLevel: true,
		want: []invalidDiag{
			{"pools.cue", 7, 12, "pools.chat.devices[0]", "device index must be an integer >= 0"},
		},
	},
	{name: "missing-node", cueLevel: true, want: []invalidDiag{
		{"pools.cue", 3, 8, "pools.chat.node", "missing required field node"},
	}},
	{name: "missing-engine", cueLevel: true,
		want: []invalidDiag{
			{"pools.cue", 3, 8, "pools.chat.engine", "missing required field engine"},
		},
	},
	{name: "missing-devices", cueLevel: true, want: []invalidDiag{
		{"pools.cue", 3, 8, "pools.chat.devices", "missing required field devices"},
	}},
	{name: "missing-model", cueLevel: true, want: []invalidDiag{
		{"pools.cue", 3, 8, "pools.chat.model", "missing required field model"},
	}},
	{name: "missing-model-path", cueLevel: true, want: []invalidDiag{
		{"pools.cue", 6, 2, "pools.chat.model", "model declares neither path nor source: set path (the model on the node) or source"},
	}},
	// ---- model.source: a fetched model, its digest or manifest ----
	{name: "model-path-and-source", cueLevel: true, want: []invalidDiag{
		{"pools.cue", 6, 2, "pools.chat.model", "model declares both path and source; they are alternatives"},
	}},
	{name: "llamacpp-source-without-sha256", cueLevel: true, want: []invalidDiag{
		{"pools.cue", 6, 2, "pools.chat.model.sha256", "a llamacpp model with a source needs model.sha256, the sha256 of the GGUF file"},
	}},
	{name: "bad-sha256", cueLevel: true, want: []invalidDiag{
		{"pools.cue", 8, 11, "pools.chat.model.sha256", "must be a sha256 digest: 64 lowercase hex digits"},
	}},
	{name: "vllm-source-without-files", cueLevel: true, want: []invalidDiag{
		{"pools.cue", 6, 2, "pools.chat.model.files", "a vllm model with a source needs model.files, the manifest of the model directory"},
	}},
	{name: "manifest-path-dotdot", cueLevel: true, want: []invalidDiag{
		{"pools.cue", 10, 11, "pools.chat.model.files[1].path", "manifest path must be a clean relative path in the model directory: no leading /, no . or .. elements"},
	}},
	{name: "manifest-duplicate-path", cueLevel: true, want: []invalidDiag{
		{"pools.cue", 8, 3, "pools.chat.model.files", `model.files lists path "config.json" twice (files[0] and files[2])`},
	}},
	{name: "manifest-file-and-directory", want: []invalidDiag{
		{"pools.cue", 8, 3, "pools.chat.model.files", `model.files: files[2] (weights/model.safetensors) lies in directory "weights", which files[1] lists as a file: a path is a file or a directory, not both`},
	}},
	{name: "hf-source-without-revision", want: []invalidDiag{
		{"pools.cue", 7, 11, "pools.chat.model.source", "has no revision: write hf://ORG/REPO@COMMIT/FILE with COMMIT the repository's 40-hex commit (pin a commit, not a branch: hf:// sources are content-addressed)"},
	}},
	{name: "hf-source-branch", want: []invalidDiag{
		{"pools.cue", 7, 11, "pools.chat.model.source", `revision "main" is a branch or tag, which moves: pin a 40-hex commit, not a branch (hf:// sources are content-addressed`},
	}},
	{name: "http-source-remote-host", want: []invalidDiag{
		{"pools.cue", 7, 11, "pools.chat.model.source", "uses http://, which is allowed only for loopback hosts (127.0.0.1, ::1, localhost); use https://"},
	}},
	{name: "vllm-without-vram", cueLevel: true, want: []invalidDiag{
		{"pools.cue", 3, 8, "pools.chat.vram", "missing required field vram (vllm, tgi and sglang pools declare their total VRAM need"},
	}},
	{name: "tgi-without-vram", cueLevel: true, want: []invalidDiag{
		{"pools.cue", 3, 8, "pools.chat.vram", "missing required field vram (vllm, tgi and sglang pools declare their total VRAM need"},
	}},
	{name: "vram-not-bytes", cueLevel: true, want: []invalidDiag{
		{"pools.cue", 8, 8, "pools.chat.vram", "must be a positive number of bytes"},
	}},
	{name: "split-length-mismatch", cueLevel: true, want: []invalidDiag{
		{"pools.cue", 8, 2, "pools.chat.split", "split has 3 ratios but devices has 2 GPUs"},
	}},
	{name: "split-ratio-zero", cueLevel: true, want: []invalidDiag{
		{"pools.cue", 8, 13, "pools.chat.split[1]", "split ratio must be > 0 and <= 1"},
	}},
	{name: "split-sum-not-one", cueLevel: true, want: []invalidDiag{
		{"pools.cue", 8, 2, "pools.chat.split", "split ratios sum to 1.2; they must sum to 1"},
	}},
	{name: "unknown-field-optional", cueLevel: true, want: []invalidDiag{
		{"pools.cue", 8, 2, "pools.chat.prot", "unknown field prot"},
	}},
	// A typo in a required field is two true statements: the typo is unknown
	// and the required field is missing.
	{name: "unknown-field-required", cueLevel: true, want: []invalidDiag{
		{"pools.cue", 3, 8, "pools.chat.devices", "missing required field devices"},
		{"pools.cue", 7, 2, "pools.chat.devics", "unknown field devics"},
	}},
	{name: "flags-not-list", cueLevel: true,
		want: []invalidDiag{
			{"pools.cue", 8, 9, "pools.chat.flags", "list"},
		},
	},
	{name: "share-not-bool", cueLevel: true,
		want: []invalidDiag{
			{"pools.cue", 8, 9, "pools.chat.share", "share must be true or false"},
		},
	},
	{name: "bad-env-name", cueLevel: true,
		want: []invalidDiag{
			{"pools.cue", 8, 7, "pools.chat.env.HF-HOME", "environment variable name"},
		},
	},
	{name: "port-out-of-range", cueLevel: true, want: []invalidDiag{
		{"pools.cue", 8, 8, "pools.chat.port", "port must be from 1024 to 65535"},
	}},

	// ---- schema-level: restart policy ----
	{name: "bad-duration", cueLevel: true, want: []invalidDiag{
		{"pools.cue", 8, 27, "pools.chat.restart.initialBackoff", `must be a duration such as "500ms"`},
	}},
	{name: "breaker-window-bad-duration", cueLevel: true,
		want: []invalidDiag{
			{"pools.cue", 8, 28, "pools.chat.restart.breaker.window", `must be a duration such as "500ms"`},
		},
	},
	{name: "jitter-out-of-range", cueLevel: true, want: []invalidDiag{
		{"pools.cue", 8, 19, "pools.chat.restart.jitter", "jitter must be from 0 to 0.5"},
	}},
	{name: "breaker-failures-zero", cueLevel: true, want: []invalidDiag{
		{"pools.cue", 8, 30, "pools.chat.restart.breaker.failures", "breaker failures must be >= 1"},
	}},

	// ---- schema-level: nodes ----
	{name: "bad-node-name", cueLevel: true, want: []invalidDiag{
		{"nodes.cue", 5, 8, "nodes.gpu_02", "must be a lowercase DNS label"},
	}},
	{name: "bad-gpu-uuid", cueLevel: true,
		want: []invalidDiag{
			{"nodes.cue", 4, 19, "nodes.box.gpus[0].uuid", "GPU uuid must look like GPU-xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx"},
		},
	},
	{name: "duplicate-gpu-index", cueLevel: false,
		want: []invalidDiag{
			{"nodes.cue", 5, 10, "nodes.box.gpus[1].index", "GPU index 0 is declared twice (gpus[0] and gpus[1])"},
		},
	},
	{name: "gpu-vram-negative", cueLevel: true,
		want: []invalidDiag{
			{"nodes.cue", 4, 19, "nodes.box.gpus[0].vram", "must be a positive number of bytes"},
		},
	},
	{name: "gpu-missing-vram", cueLevel: true, want: []invalidDiag{
		{"nodes.cue", 4, 2, "nodes.box.gpus[0].vram", "missing required field vram"},
	}},
	{name: "node-without-gpus", cueLevel: true,
		want: []invalidDiag{
			{"nodes.cue", 5, 21, "nodes.spare.gpus", "at least one GPU"},
		},
	},

	// ---- schema-level: files ----
	{name: "wrong-package", cueLevel: true, want: []invalidDiag{
		{"pools.cue", 1, 1, "", "package pools: config files belong to package poolmanagerd"},
	}},
	{name: "syntax-error", cueLevel: true, want: []invalidDiag{
		{"pools.cue", 8, 1, "", "expected operand, found '}'"},
	}},

	// ---- Go-level: integers beyond int64, which CUE accepts ----
	{name: "device-index-overflow",
		want: []invalidDiag{
			{"pools.cue", 7, 12, "pools.chat.devices[0]", "is out of range (at most 9223372036854775807)"},
		},
	},
	{name: "pool-vram-overflow",
		want: []invalidDiag{
			{"pools.cue", 8, 8, "pools.chat.vram", "is out of range (at most 9223372036854775807)"},
		},
	},
	{name: "gpu-vram-overflow",
		want: []invalidDiag{
			{"nodes.cue", 4, 19, "nodes.box.gpus[0].vram", "is out of range (at most 9223372036854775807)"},
		},
	},
	{name: "breaker-failures-overflow",
		want: []invalidDiag{
			{"pools.cue", 8, 30, "pools.chat.restart.breaker.failures", "is out of range (at most 9223372036854775807)"},
		},
	},

	// ---- schema-level: the config as a whole (plain cue vet rejects it too) ----
	{name: "unknown-top-level-field", cueLevel: true, want: []invalidDiag{
		{"pools.cue", 3, 1, "defaults", "unknown top-level field; a config declares nodes and pools"},
	}},
	{name: "unknown-top-level-settings", cueLevel: true, want: []invalidDiag{
		{"config.cue", 8, 1, "settings", "unknown top-level field; a config declares nodes and pools"},
	}},

	// ---- Go-level: pools against the inventory ----
	{name: "pool-node-undeclared", want: []invalidDiag{
		{"pools.cue", 4, 10, "pools.chat.node", `node "gpu-07" is not declared under nodes (declared: box)`},
	}},
	{name: "device-not-on-node", want: []invalidDiag{
		{"pools.cue", 7, 15, "pools.chat.devices[1]", "GPU 2 is not on node box (it has GPUs 0, 1)"},
	}},
	{name: "duplicate-gpu-uuid", want: []invalidDiag{
		{"nodes.cue", 5, 19, "nodes.box.gpus[1].uuid", "GPU 1 has the same uuid as GPU 0"},
	}},
	{name: "gpu-uuid-on-two-nodes", want: []invalidDiag{
		{"b.cue", 6, 19, "nodes.gpu-02.gpus[1].uuid", "GPU 1 has the uuid GPU-8a1f7c3e-52d4-4b9a-9e61-3f0c2d7b5a18 of GPU 0 of node gpu-01 (" + filepath.Join(invalidRoot, "gpu-uuid-on-two-nodes", "a.cue") + ":4:19): a GPU is in one node only"},
	}},
	{name: "split-missing-mixed-gpus", want: []invalidDiag{
		{"pools.cue", 7, 2, "pools.chat.devices", "the masked GPUs differ in size (GPU 0: 24.0 GiB, GPU 1: 16.0 GiB): write split explicitly, for example split: [0.6, 0.4]"},
	}},
	{name: "split-over-smallest-cap", want: []invalidDiag{
		{"pools.cue", 8, 16, "pools.chat.split[1]", "GPU 1 (16.0 GiB) would take 0.45 of the model, more than its share of the mask's VRAM (16.0 GiB of 40.0 GiB = 0.4)"},
	}},
	{name: "vllm-uneven-split", want: []invalidDiag{
		{"pools.cue", 8, 2, "pools.chat.split", "vllm shards a model evenly across its GPUs; remove split or make every ratio 0.5"},
	}},
	{name: "vllm-mixed-gpus", want: []invalidDiag{
		{"pools.cue", 7, 2, "pools.chat.devices", `vllm shards a model evenly, 0.5 of it on each of the 2 GPUs, and takes no uneven split: GPU 1 (16.0 GiB) is short, its share of the mask's VRAM being 0.4 (16.0 GiB of 40.0 GiB); mask GPUs of one size, use fewer GPUs, or use engine "llamacpp", whose llama-server splits unevenly (for example split: [0.6, 0.4])`},
	}},
	{name: "vram-part-too-big", want: []invalidDiag{
		{"pools.cue", 8, 8, "pools.chat.vram", "GPU 0 (24.0 GiB) would hold 30.0 GiB of the pool's 30.0 GiB (ratio 1), more than its memory"},
	}},

	// ---- Go-level: pools against each other ----
	{name: "gpu-in-two-pools-without-share", want: []invalidDiag{
		{"pools.cue", 16, 12, "pools.embed.devices[0]", "GPU 0 of node box is also in pool chat; a GPU belongs to one pool unless every pool on it sets share: true"},
	}},
	{name: "shared-gpu-without-vram", want: []invalidDiag{
		{"pools.cue", 16, 12, "pools.embed.devices[0]", "GPU 0 of node box is shared with pool chat: pools that share a GPU declare vram"},
	}},
	// Both pools are at fault, so each is told.
	{name: "shared-gpu-overcommitted", want: []invalidDiag{
		{"pools.cue", 7, 12, "pools.chat.devices[0]", "GPU 0 of node box (24.0 GiB) is shared by chat 20.0 GiB, embed 6.0 GiB: 26.0 GiB in all does not fit"},
		{"pools.cue", 16, 12, "pools.embed.devices[0]", "GPU 0 of node box (24.0 GiB) is shared by chat 20.0 GiB, embed 6.0 GiB: 26.0 GiB in all does not fit"},
	}},
	{name: "duplicate-port", want: []invalidDiag{
		{"pools.cue", 16, 8, "pools.embed.port", "port 8080 is already used by pool chat on node box"},
	}},

	// ---- Go-level: llama-server flags that pool-managerd manages, in several spellings ----
	{name: "flag-c", want: []invalidDiag{
		{"pools.cue", 8, 10, "pools.chat.flags[0]", `"-c": pool-managerd sets --ctx-size itself; use model.ctx instead`},
	}},
	{name: "flag-ctx-size", want: []invalidDiag{
		{"pools.cue", 8, 29, "pools.chat.flags[2]", `"--ctx-size": pool-managerd sets --ctx-size itself; use model.ctx instead`},
	}},
	{name: "flag-tensor-split-underscore", want: []invalidDiag{
		{"pools.cue", 8, 10, "pools.chat.flags[0]", `"--tensor_split": pool-managerd sets --tensor-split itself; use split instead`},
	}},
	{name: "flag-ngl-partial", want: []invalidDiag{
		{"pools.cue", 8, 10, "pools.chat.flags[0]", `"-ngl": pool-managerd passes --n-gpu-layers 999 so that every layer runs on the GPU; remove it (20 would leave layers on the CPU)`},
	}},
	{name: "flag-host", want: []invalidDiag{
		{"pools.cue", 8, 10, "pools.chat.flags[0]", `"--host": pool-managerd sets --host itself; pool-managerd binds engines to 127.0.0.1`},
	}},
	{name: "flag-port", want: []invalidDiag{
		{"pools.cue", 8, 10, "pools.chat.flags[0]", `"--port": pool-managerd sets --port itself; use the pool's port field instead`},
	}},
	{name: "flag-model", want: []invalidDiag{
		{"pools.cue", 8, 10, "pools.chat.flags[0]", `"-m": pool-managerd sets --model itself; use model.path instead`},
	}},
	{name: "flag-hf-repo", want: []invalidDiag{
		{"pools.cue", 8, 10, "pools.chat.flags[0]", `"-hf": pool-managerd sets --hf-repo itself; use model.source instead (hf://ORG/REPO@COMMIT/FILE or an https:// URL, with its sha256: pool-managerd fetches and verifies it) or model.path for a local file`},
	}},
	{name: "flag-dev", want: []invalidDiag{
		{"pools.cue", 8, 10, "pools.chat.flags[0]", `"-dev": pool-managerd sets --device itself; use devices (the device mask) instead`},
	}},

	// ---- Go-level: llama-server flags that spill onto the CPU ----
	{name: "flag-nkvo", want: []invalidDiag{
		{"pools.cue", 8, 10, "pools.chat.flags[0]", `"-nkvo": would run part of the model on the CPU`},
	}},
	{name: "flag-cpu-moe", want: []invalidDiag{
		{"pools.cue", 8, 10, "pools.chat.flags[0]", `"--cpu-moe": would run part of the model on the CPU`},
	}},
	{name: "flag-n-cpu-moe", want: []invalidDiag{
		{"pools.cue", 8, 10, "pools.chat.flags[0]", `"--n-cpu-moe": would run part of the model on the CPU`},
	}},
	{name: "flag-override-tensor-cpu", want: []invalidDiag{
		{"pools.cue", 8, 10, "pools.chat.flags[0]", `"-ot": moves tensors to a CPU buffer, which would run part of the model on the CPU`},
	}},
	{name: "flag-fit-on", want: []invalidDiag{
		{"pools.cue", 8, 10, "pools.chat.flags[0]", `"--fit": --fit on lowers GPU layers and context to fit memory, which would run part of the model on the CPU`},
	}},
	{name: "flag-device-none", want: []invalidDiag{
		{"pools.cue", 8, 10, "pools.chat.flags[0]", `"--device": --device none would run part of the model on the CPU`},
	}},

	// ---- Go-level: llama-server flags that break management ----
	{name: "flag-api-key", want: []invalidDiag{
		{"pools.cue", 8, 29, "pools.chat.flags[2]", `"--api-key": puts /slots behind an API key (401 without it), so pool-managerd cannot see busy slots and the drain before a stop silently does nothing; remove it`},
	}},
	{name: "flag-no-slots", want: []invalidDiag{
		{"pools.cue", 8, 10, "pools.chat.flags[0]", `"--no-slots": turns /slots off (501), which the drain before a stop needs to see busy slots; remove it`},
	}},
	{name: "flag-sleep-idle-seconds", want: []invalidDiag{
		{"pools.cue", 8, 10, "pools.chat.flags[0]", `"--sleep-idle-seconds": unloads the model when idle: its GPU memory is freed while /health still answers 200`},
	}},
	{name: "flag-models-dir", want: []invalidDiag{
		{"pools.cue", 8, 10, "pools.chat.flags[0]", `"--models-dir": starts llama-server's multi-model router mode, but a pool serves one model on its own GPUs; remove it and declare one pool per model with model.path`},
	}},
	{name: "flag-models-preset", want: []invalidDiag{
		{"pools.cue", 8, 23, "pools.chat.flags[1]", `"--models-preset": starts llama-server's multi-model router mode`},
	}},

	// ---- Go-level: llama-server argv syntax ----
	{name: "flag-unknown-option",
		want: []invalidDiag{
			{"pools.cue", 8, 10, "pools.chat.flags[0]", `"--flash-attention": llama-server has no such option (it would exit with "error: invalid argument: --flash-attention")`},
		},
	},
	{name: "flag-name-equals-value", want: []invalidDiag{
		{"pools.cue", 8, 10, "pools.chat.flags[0]", `"--parallel=4": llama-server does not accept --name=value; write "--parallel", "4" as two elements`},
	}},
	{name: "flag-missing-value", want: []invalidDiag{
		{"pools.cue", 8, 23, "pools.chat.flags[1]", `"--parallel": needs a value as the next element`},
	}},
	{name: "flag-bare-value", want: []invalidDiag{
		{"pools.cue", 8, 23, "pools.chat.flags[1]", `"4": a value without an option`},
	}},

	// ---- Go-level: environment ----
	{name: "env-cuda-visible-devices", want: []invalidDiag{
		{"pools.cue", 8, 29, "pools.chat.env.CUDA_VISIBLE_DEVICES", "pool-managerd sets CUDA_VISIBLE_DEVICES from devices (the device mask); use devices instead"},
	}},
	{name: "env-llama-arg-n-gpu-layers", want: []invalidDiag{
		{"pools.cue", 8, 31, "pools.chat.env.LLAMA_ARG_N_GPU_LAYERS", "llama-server reads LLAMA_ARG_N_GPU_LAYERS=20 as --n-gpu-layers: pool-managerd passes --n-gpu-layers 999"},
	}},

	// ---- Go-level: vllm and tgi flags ----
	{name: "vllm-cpu-offload", want: []invalidDiag{
		{"pools.cue", 9, 34, "pools.chat.flags[2]", `"--cpu-offload-gb": this vllm option runs part of the model on the CPU`},
	}},
	{name: "vllm-tensor-parallel-size", want: []invalidDiag{
		{"pools.cue", 9, 10, "pools.chat.flags[0]", `"--tensor-parallel-size": this vllm option is set by pool-managerd itself; the shard count is the number of devices`},
	}},
	{name: "vllm-tp-equals", want: []invalidDiag{
		{"pools.cue", 9, 10, "pools.chat.flags[0]", `"--tensor_parallel_size=2": this vllm option is set by pool-managerd itself`},
	}},
	{name: "tgi-num-shard", want: []invalidDiag{
		{"pools.cue", 9, 10, "pools.chat.flags[0]", `"--num-shard": this text-generation-launcher option is set by pool-managerd itself; the shard count is the number of devices`},
	}},
	{name: "tgi-env-num-shard", want: []invalidDiag{
		{"pools.cue", 9, 18, "pools.chat.env.NUM_SHARD", "text-generation-launcher reads NUM_SHARD as a flag that pool-managerd sets; use devices instead"},
	}},
	{name: "sglang-tp-size", want: []invalidDiag{
		{"pools.cue", 9, 10, "pools.chat.flags[0]", `"--tp": this sglang option is set by pool-managerd itself; the shard count is the number of devices`},
	}},
	{name: "sglang-without-vram", cueLevel: true, want: []invalidDiag{
		{"pools.cue", 3, 8, "pools.chat.vram", "missing required field vram (vllm, tgi and sglang pools declare their total VRAM need"},
	}},

	// ---- Go-level: engine memory the plan does not book (vllm, tgi, sglang take a fraction of each GPU) ----
	{name: "vllm-memory-over-need", want: []invalidDiag{
		{"pools.cue", 9, 10, "pools.chat.flags[0]", `"--gpu-memory-utilization": vllm would take 21.6 GiB of GPU 0 (24.0 GiB), more than the pool declares for each GPU (vram 40.0 GiB over 2 GPUs = 20.0 GiB); the plan books only what vram says, so leave the flag out (pool-managerd passes --gpu-memory-utilization 0.8333, derived from vram) or raise vram to 43.2 GiB`},
	}},
	{name: "tgi-env-memory-fraction-over-need", want: []invalidDiag{
		{"pools.cue", 9, 29, "pools.chat.env.CUDA_MEMORY_FRACTION", "CUDA_MEMORY_FRACTION=1.0: tgi would take 21.6 GiB of GPU 0 (24.0 GiB), more than the pool declares for each GPU"},
	}},
	{name: "sglang-mem-fraction-over-need", want: []invalidDiag{
		{"pools.cue", 9, 10, "pools.chat.flags[0]", `"--mem-fraction-static=0.95": sglang would take 22.8 GiB of GPU 0 (24.0 GiB), more than the pool declares for each GPU`},
	}},

	// ---- Go-level: engine shutdowns that do not fit the stop grace ----
	{name: "vllm-shutdown-timeout-over-grace", want: []invalidDiag{
		{"pools.cue", 9, 10, "pools.chat.flags[0]", `"--shutdown-timeout": vllm waits up to 30s for in-flight requests after SIGTERM, but pool-managerd sends SIGKILL restart.stopGrace (15s) after SIGTERM`},
	}},
	{name: "tgi-graceful-timeout-over-grace", want: []invalidDiag{
		{"pools.cue", 9, 10, "pools.chat.flags[0]", `"--graceful-termination-timeout": on SIGTERM text-generation-launcher waits up to 5s for its router and then 5s for each of its 2 shards (15s in all), longer than restart.stopGrace (10s) after which pool-managerd sends SIGKILL; lower it to at most 3 (stopGrace / (shards + 1)), or raise restart.stopGrace to at least 15s`},
	}},
}

// diagRow is a diagnostic as the test compares it.
type diagRow struct {
	File      string
	Line, Col int
	Path      string
	Message   string
}

func TestInvalidConfigs(t *testing.T) {
	for _, tc := range invalidCases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			dir := filepath.Join(invalidRoot, tc.name)
			d, err := Load(context.Background(), dir)
			want := tc.want
			var diags Diagnostics
			if !errors.As(err, &diags) {
				t.Fatalf("Load(%s) = %v, %v; want Diagnostics", dir, d, err)
			}
			if d != nil {
				t.Errorf("Load(%s) returned a desired state with its diagnostics", dir)
			}
			wantRows := make([]diagRow, len(want))
			for i, w := range want {
				wantRows[i] = diagRow{File: filepath.Join(dir, w.file), Line: w.line, Col: w.col, Path: w.path, Message: w.msg}
			}
			gotRows := make([]diagRow, len(diags))
			for i, g := range diags {
				gotRows[i] = diagRow{File: g.Pos.File, Line: g.Pos.Line, Col: g.Pos.Column, Path: g.Path, Message: g.Message}
				// A message matches when it contains the expected substring;
				// show it as that substring so that the diff shows only real differences.
				if i < len(want) && want[i].msg != "" && strings.Contains(g.Message, want[i].msg) {
					gotRows[i].Message = want[i].msg
				}
			}
			if diff := cmp.Diff(wantRows, gotRows); diff != "" {
				t.Errorf("Load(%s): diagnostics differ (-want +got):\n%s\nall diagnostics:\n%v", dir, diff, diags)
			}
			if len(diags) != len(want) {
				t.Errorf("Load(%s) gave %d diagnostics, want %d", dir, len(diags), len(want))
			}
		})
	}
}

// TestInvalidCasesListed keeps the table and testdata/invalid in step, so that
// no case directory goes unchecked.
func TestInvalidCasesListed(t *testing.T) {
	entries, err := os.ReadDir(invalidRoot)
	if err != nil {
		t.Fatal(err)
	}
	var dirs []string
	for _, e := range entries {
		if e.IsDir() {
			dirs = append(dirs, e.Name())
		} else {
			t.Errorf("%s: only case directories belong in %s", e.Name(), invalidRoot)
		}
	}
	var names []string
	for _, tc := range invalidCases {
		if slices.Contains(names, tc.name) {
			t.Errorf("case %s is in the table twice", tc.name)
		}
		names = append(names, tc.name)
		if len(tc.want) == 0 {
			t.Errorf("case %s expects no diagnostic", tc.name)
		}
	}
	for _, d := range dirs {
		if !slices.Contains(names, d) {
			t.Errorf("%s/%s is not in invalidCases: add it with the diagnostics it must give", invalidRoot, d)
		}
	}
	for _, n := range names {
		if !slices.Contains(dirs, n) {
			t.Errorf("invalidCases has %s, but %s/%s does not exist", n, invalidRoot, n)
		}
	}
	if len(dirs) < 30 {
		t.Errorf("%d invalid cases; the suite covers every rule with at least 30", len(dirs))
	}
}
