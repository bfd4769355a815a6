package executor

import (
	"strings"
	"testing"

	"github.com/poolmanagerd/pool-managerd/drivers/engine"
	"github.com/poolmanagerd/pool-managerd/reconcile/restart"
)

// The engines' own lines (from the real llama-server 27aef3d, vLLM's
// argparse and TGI's clap) decide the class of an exit, and the line is in
// the message.
func TestExitFailureReadsTheEnginesErrorLine(t *testing.T) {
	for _, tt := range []struct {
		name      string
		exit      engine.ExitStatus
		tail      string
		wantClass string
		wantLine  string
	}{
		{"llama-server: an unknown flag", engine.ExitStatus{Code: 1},
			"error: invalid argument: --fit\n", restart.ClassArgsRejected, "error: invalid argument: --fit"},
		{"llama-server: a bad value", engine.ExitStatus{Code: 1},
			"error while handling argument \"--ctx-size\": stoi\n\nusage:\n-c,    --ctx-size N\n", restart.ClassArgsRejected, `error while handling argument "--ctx-size": stoi`},
		{"vllm: unrecognized arguments", engine.ExitStatus{Code: 2},
			"usage: vllm serve [model_tag] [options]\nvllm serve: error: unrecognized arguments: --shutdown-timeout 5\n", restart.ClassArgsRejected, "vllm serve: error: unrecognized arguments: --shutdown-timeout 5"},
		{"tgi: unexpected argument", engine.ExitStatus{Code: 2},
			"error: unexpected argument '--bogus' found\n", restart.ClassArgsRejected, "error: unexpected argument '--bogus' found"},
		{"llama-server: a missing model", engine.ExitStatus{Code: 1},
			"main: loading model\ngguf_init_from_file: failed to open GGUF file '/m/x.gguf' (No such file or directory)\nllama_model_load: error loading model: llama_model_loader: failed to load model from /m/x.gguf\nmain: exiting due to model loading error\n",
			restart.ClassModelMissing, "gguf_init_from_file: failed to open GGUF file '/m/x.gguf' (No such file or directory)"},
		{"llama-server: bad magic", engine.ExitStatus{Code: 1},
			"gguf_init_from_file_ptr: invalid magic characters: 'abcd', expected 'GGUF'\nllama_model_load: error loading model\n",
			restart.ClassModelCorrupt, "gguf_init_from_file_ptr: invalid magic characters: 'abcd', expected 'GGUF'"},
		{"llama-server: a truncated header", engine.ExitStatus{Code: 1},
			"gguf_init_from_file_ptr: failed to read header\n", restart.ClassModelCorrupt, "gguf_init_from_file_ptr: failed to read header"},
		{"a CUDA error wins over the rest", engine.ExitStatus{Code: -1, Signal: "SIGABRT"},
			"CUDA error: out of memory\n", restart.ClassCUDAError, "CUDA error: out of memory"},
		{"a signal is not a load error", engine.ExitStatus{Code: -1, Signal: "SIGKILL"},
			"error: invalid argument: --x\n", restart.ClassSignaled, "SIGKILL"},
		{"a plain exit", engine.ExitStatus{Code: 1},
			"main: exiting due to model loading error\n", restart.ClassExited, "exited with status 1"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			f := exitFailure(4242, tt.exit, tt.tail, "/logs/chat.log", "while loading its model")
			if f.Class != tt.wantClass || !strings.Contains(f.Message, tt.wantLine) {
				t.Errorf("exitFailure = %+v, want class %s with %q", f, tt.wantClass, tt.wantLine)
			}
			if f.HintFor() == "" || f.HintFor() == restart.Hint("no such class") {
				t.Errorf("class %s has no hint of its own", f.Class)
			}
		})
	}
}
