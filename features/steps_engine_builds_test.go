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
func (w *world) olderLlamaServer(build int) (err error) {
	w.llamaServer, err = w.standInAs(fmt.Sprintf("llama-server-b%d", build), fmt.Sprintf("FAKE_ENGINE_LLAMA_BUILD=%d", build))
	return err
}

// vllmVersion makes VLLM a wrapper that runs the stand-in imitating a vLLM
// version: its serve --help=all (the capability probe's) and what its command
// line may hold are that version's.
func (w *world) vllmVersion(version string) (err error) {
	w.vllmServer, err = w.standInAs("vllm-"+version, "FAKE_ENGINE_VLLM_VERSION="+version)
	return err
}

// standInAs writes a script named name in the workspace that runs the
// stand-in with one more variable (NAME=value) set, and returns its path.
func (w *world) standInAs(name, variable string) (string, error) {
	path := filepath.Join(w.workspace, name)
	script := fmt.Sprintf("#!/bin/sh\n%s exec %s \"$@\"\n", variable, w.h.fakeEngine())
	return path, os.WriteFile(path, []byte(script), 0o755)
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
