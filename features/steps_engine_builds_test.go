package features

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/cucumber/godog"

	"github.com/poolmanagerd/pool-managerd/drivers/gpu/sim"
	"github.com/poolmanagerd/pool-managerd/internal/api"
	"github.com/poolmanagerd/pool-managerd/reconcile/restart"
)

// registerEngineBuilds registers the steps about what engine builds take and
// what their failures are (issue 13).
func (w *world) registerEngineBuilds(sc *godog.ScenarioContext) {
	sc.Step(`^the llama-server binary is the stand-in imitating llama\.cpp build (\d+)$`, w.olderLlamaServer)
	sc.Step(`^the vLLM binary is the stand-in imitating vLLM (\d+\.\d+\.\d+)$`, w.vllmVersion)
	sc.Step(`^a model file "([^"]*)" that is not a GGUF file$`, w.notGGUF)
	sc.Step(`^the simulated node hosts real engines$`, w.hostRealEngines)
	sc.Step(`^the engine of pool "([^"]*)" was started without "([^"]*)"$`, w.startedWithout)
	sc.Step(`^the daemon shows pool "([^"]*)" with a last error of class "([^"]*)" containing "(.*)" and the class's hint$`, w.lastErrorOf)
}

// olderLlamaServer makes the llama-server binary a wrapper that runs the
// stand-in imitating an older llama.cpp build: its --help (the capability
// probe's) and its command line are that build's.
func (w *world) olderLlamaServer(build int) error {
	path := filepath.Join(w.workspace, fmt.Sprintf("llama-server-b%d", build))
	script := fmt.Sprintf("#!/bin/sh\nFAKE_ENGINE_LLAMA_BUILD=%d exec %s \"$@\"\n", build, w.h.fakeEngine())
	if err := os.WriteFile(path, []byte(script), 0o755); err != nil {
		return err
	}
	w.llamaServer = path
	return nil
}

// vllmVersion makes VLLM a wrapper that runs the stand-in imitating a vLLM
// version: its serve --help=all (the capability probe's) and what its command
// line may hold are that version's.
func (w *world) vllmVersion(version string) error {
	path := filepath.Join(w.workspace, "vllm-"+version)
	script := fmt.Sprintf("#!/bin/sh\nFAKE_ENGINE_VLLM_VERSION=%s exec %s \"$@\"\n", version, w.h.fakeEngine())
	if err := os.WriteFile(path, []byte(script), 0o755); err != nil {
		return err
	}
	w.vllmServer = path
	return nil
}

// notGGUF writes a file that llama.cpp's GGUF reader refuses (a zip header).
func (w *world) notGGUF(rel string) error {
	full := filepath.Join(w.workspace, rel)
	if err := os.MkdirAll(filepath.Dir(full), 0o755); err != nil {
		return err
	}
	return os.WriteFile(full, append([]byte("PK\x03\x04"), bytes.Repeat([]byte{0x5a}, 1024)...), 0o644)
}

func (w *world) hostRealEngines() error {
	return sim.SetOptions(w.simDir(), sim.Options{HostRealEngines: true})
}

func (w *world) startedWithout(pool, arg string) error {
	pid, argv, has, err := w.engineArgvHas(pool, arg)
	if err != nil {
		return err
	}
	if has {
		return fmt.Errorf("engine pid %d of pool %s runs %q, with %q", pid, pool, argv, arg)
	}
	return nil
}

func (w *world) lastErrorOf(pool, class, text string) error {
	return w.awaitPool(applyNode, pool, fmt.Sprintf("with a last error of class %s saying %q", class, text), func(p api.Pool) error {
		le := p.LastError
		if le == nil || le.Class != class || !strings.Contains(le.Message, text) {
			return fmt.Errorf("last error %+v", le)
		}
		if le.Hint != restart.Hint(class) || le.Time.IsZero() {
			return fmt.Errorf("last error %+v: want the hint of class %s and a time", le, class)
		}
		return nil
	})
}
