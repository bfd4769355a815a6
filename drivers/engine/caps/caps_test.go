package caps

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"
)

// Lines of the real llama-server's --help (build 27aef3d) and of an older build.
const (
	newHelp = `----- common params -----

-h,    --help, --usage                  print usage and exit
--version                               show version and build info
-fit,  --fit [on|off]                   whether to adjust unset arguments to fit in device memory ('on' or
-fitt, --fit-target MiB0,MiB1,MiB2,...
-c,    --ctx-size N                     size of the prompt context (default: 4096, 0 = loaded from model)
`
	oldHelp = `-h,    --help, --usage                  print usage and exit
-c,    --ctx-size N                     size of the prompt context
-ngl,  --gpu-layers, --n-gpu-layers N   max. number of layers to store in VRAM
`
)

func TestParse(t *testing.T) {
	for _, tt := range []struct {
		name      string
		help      string
		has, lack []string
	}{
		{"llama-server with --fit", newHelp, []string{"--fit", "--fit-target", "--ctx-size", "--help", "--usage", "--version"}, []string{"--fit-ctx", "--shutdown-timeout"}},
		{"llama-server before --fit", oldHelp, []string{"--n-gpu-layers", "--gpu-layers"}, []string{"--fit"}},
		{"argparse", "options:\n  --shutdown-timeout SHUTDOWN_TIMEOUT\n  --help=all\n  [--max-model-len MAX_MODEL_LEN]", []string{"--shutdown-timeout", "--help", "--max-model-len"}, []string{"--shutdown"}},
		{"argparse usage lines", "usage: vllm serve [-h] [--host HOST]\n                  [--port PORT]\n\noptions:\n  --port PORT  the port (default: 8000)\n", []string{"--host", "--port"}, []string{"--help"}},
		{"clap", "Options:\n      --graceful-termination-timeout <GRACEFUL_TERMINATION_TIMEOUT>\n          [env: GRACEFUL_TERMINATION_TIMEOUT=]\n  -h, --help\n", []string{"--graceful-termination-timeout", "--help"}, nil},
		{"choices and a metavar before the description", "  --tokenizer-mode {auto,slow,mistral}, --tokenizer_mode {auto,slow}\n  -fit, --fit [on|off]    whether to fit\n", []string{"--tokenizer-mode", "--tokenizer_mode", "--fit"}, nil},
		{"an option named in a description is not taken", "  --model M        the model; use --model-path on older builds\nEnvironment:\n  FAKE_ENGINE_VLLM_VERSION=0.11.0    (--shutdown-timeout from 0.18)\nA first argument --fake-engine-as=MODE also chooses.\n", []string{"--model"}, []string{"--model-path", "--shutdown-timeout", "--fake-engine-as"}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			got := Parse(tt.help)
			for _, f := range tt.has {
				if !got[f] {
					t.Errorf("%s not found in %v", f, got)
				}
			}
			for _, f := range tt.lack {
				if got[f] {
					t.Errorf("%s found, but the help does not name it", f)
				}
			}
		})
	}
}

// A binary is asked once per version: the same path, mtime and size answer
// from the cache; a new mtime asks again.
func TestCacheAsksOncePerBinaryVersion(t *testing.T) {
	bin := filepath.Join(t.TempDir(), "llama-server")
	if err := os.WriteFile(bin, []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	help := oldHelp
	var runs []string
	c := &Cache{Run: func(_ context.Context, path string, args, _ []string) ([]byte, error) {
		runs = append(runs, args[0])
		if args[0] == "--version" {
			return []byte("version: 0 (unknown)\nbuilt with GNU 12.2.0 for Linux x86_64\n"), nil
		}
		return []byte(help), nil
	}}
	p := Probe{Help: []string{"--help"}, Version: []string{"--version"}}
	ctx := context.Background()
	for range 3 {
		got, err := c.Get(ctx, bin, p)
		if err != nil {
			t.Fatal(err)
		}
		if !got.Known || got.Has("--fit") || !got.Lacks("--fit") || got.Version != "version: 0 (unknown)" {
			t.Fatalf("old build: %+v", got)
		}
	}
	if c.Probes() != 1 || len(runs) != 2 {
		t.Fatalf("%d probes, runs %v: want one probe (--version, --help)", c.Probes(), runs)
	}
	// The binary is replaced by a newer build.
	help = newHelp
	later := time.Now().Add(time.Hour)
	if err := os.Chtimes(bin, later, later); err != nil {
		t.Fatal(err)
	}
	got, err := c.Get(ctx, bin, p)
	if err != nil {
		t.Fatal(err)
	}
	if !got.Has("--fit") || c.Probes() != 2 {
		t.Fatalf("after the binary changed: %+v, %d probes", got, c.Probes())
	}
}

// A help that cannot be had is cached as unknown, and unknown takes every flag.
func TestUnknownHelpAssumesEveryFlag(t *testing.T) {
	bin := filepath.Join(t.TempDir(), "engine")
	if err := os.WriteFile(bin, []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		name string
		out  string
		err  error
	}{
		{"fails", "", errors.New("exec format error")},
		{"prints no options", "usage: engine MODEL\n", nil},
		{"exits non-zero with nothing", "", &exec.ExitError{}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			c := &Cache{Run: func(context.Context, string, []string, []string) ([]byte, error) { return []byte(tt.out), tt.err }}
			got, err := c.Get(context.Background(), bin, Probe{Help: []string{"--help"}})
			if err != nil {
				t.Fatal(err)
			}
			if got.Known || got.Err == "" || !got.Has("--fit") || got.Lacks("--fit") {
				t.Errorf("%+v: want unknown, with a reason, taking every flag", got)
			}
		})
	}
	if _, err := (&Cache{}).Get(context.Background(), filepath.Join(t.TempDir(), "missing"), Probe{Help: []string{"--help"}}); err == nil {
		t.Error("a missing binary: no error")
	}
}

// The real engine, when given: its help names --fit (build 27aef3d).
func TestRealLlamaServer(t *testing.T) {
	bin := os.Getenv("POOL_MANAGERD_TEST_LLAMA_SERVER")
	if bin == "" {
		t.Skip("POOL_MANAGERD_TEST_LLAMA_SERVER is not set: no real llama-server to ask")
	}
	got, err := (&Cache{}).Get(context.Background(), bin, Probe{Help: []string{"--help"}, Version: []string{"--version"}})
	if err != nil {
		t.Fatal(err)
	}
	if !got.Known || !got.Has("--fit") || !got.Has("--ctx-size") || got.Version == "" {
		t.Errorf("%+v (%d flags)", got, got.Flags())
	}
}
