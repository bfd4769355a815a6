package features

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"time"

	"github.com/cucumber/godog"
)

// world is one scenario's state: a workspace folder with a config
// directory in it, and the result of the last command.
type world struct {
	h         *harness
	workspace string
	// config is the config directory, relative to the workspace.
	config string
	stdout string
	stderr string
	status int
}

func (w *world) register(sc *godog.ScenarioContext) {
	sc.Before(func(ctx context.Context, _ *godog.Scenario) (context.Context, error) {
		dir, err := os.MkdirTemp("", "pool-managerd-bdd-")
		w.workspace, w.config = dir, "config"
		return ctx, err
	})
	sc.After(func(ctx context.Context, _ *godog.Scenario, err error) (context.Context, error) {
		return ctx, os.RemoveAll(w.workspace)
	})
	sc.Step(`^an empty config directory$`, w.emptyConfig)
	sc.Step(`^a copy of the example config "([^"]*)"$`, w.exampleConfig)
	sc.Step(`^the config file "([^"]*)":$`, w.configFile)
	sc.Step(`^a node "([^"]*)" with GPUs of (\d+) GiB and (\d+) GiB$`, w.twoGPUNode)
	sc.Step(`^a llama\.cpp pool "([^"]*)" on GPUs (\d+) and (\d+) with split \[([^\]]*)\]$`, w.splitPool)
	sc.Step(`^a llama\.cpp pool "([^"]*)" on GPU (\d+) with flags (.*)$`, w.flagPool)
	sc.Step(`^I run "pool-managerd ([^"]*)"$`, w.run)
	sc.Step(`^the exit status is (\d+)$`, w.exitStatus)
	sc.Step(`^stdout contains "([^"]*)"$`, w.stdoutContains)
	sc.Step(`^stdout matches "([^"]*)"$`, w.stdoutMatches)
	sc.Step(`^stderr contains "([^"]*)"$`, w.stderrContains)
	sc.Step(`^an error is reported at "([^"]*)" containing "(.*)"$`, w.errorAt)
	sc.Step(`^(\d+) errors? (?:is|are) reported$`, w.errorCount)
	sc.Step(`^the JSON output reports (\d+) diagnostics? with file, line and column$`, w.jsonDiagnostics)
	sc.Step(`^a GitHub annotation is printed for "([^"]*)" at line (\d+), column (\d+)$`, w.githubAnnotation)
}

func (w *world) path(rel string) string { return filepath.Join(w.workspace, w.config, rel) }

func (w *world) emptyConfig() error { return os.MkdirAll(w.path(""), 0o755) }

func (w *world) exampleConfig(name string) error {
	src := filepath.Join(w.h.repo, "examples", name)
	return filepath.WalkDir(src, func(p string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(src, p)
		if d.IsDir() {
			return os.MkdirAll(w.path(rel), 0o755)
		}
		data, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		return os.WriteFile(w.path(rel), data, 0o644)
	})
}

func (w *world) writeFile(rel, content string) error {
	if err := os.MkdirAll(filepath.Dir(w.path(rel)), 0o755); err != nil {
		return err
	}
	return os.WriteFile(w.path(rel), []byte(content), 0o644)
}

func (w *world) configFile(rel string, doc *godog.DocString) error {
	return w.writeFile(rel, doc.Content)
}

func (w *world) twoGPUNode(name string, a, b int) error {
	return w.writeFile("nodes/"+name+".cue", fmt.Sprintf("package poolmanagerd\n\nnodes: %q: gpus: [{index: 0, vram: %dGi}, {index: 1, vram: %dGi}]\n", name, a, b))
}

// poolNode is the node the pool steps put their pools on.
const poolNode = "gpu-01"

func (w *world) splitPool(id string, g0, g1 int, split string) error {
	return w.writeFile("pools/"+id+".cue", fmt.Sprintf(`package poolmanagerd

pools: %q: {
	node:    %q
	engine:  "llamacpp"
	model: {path: "/models/model.gguf", ctx: 8192}
	devices: [%d, %d]
	split:   [%s]
}
`, id, poolNode, g0, g1, split))
}

func (w *world) flagPool(id string, gpu int, flags string) error {
	return w.writeFile("pools/"+id+".cue", fmt.Sprintf(`package poolmanagerd

pools: %q: {
	node:    %q
	engine:  "llamacpp"
	model: {path: "/models/model.gguf", ctx: 8192}
	devices: [%d]
	flags:   [%s]
}
`, id, poolNode, gpu, flags))
}

// run runs pool-managerd in the workspace; the word CONFIG stands for the config directory.
func (w *world) run(args string) error {
	argv := strings.Fields(strings.ReplaceAll(args, "CONFIG", w.config))
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, w.h.poolManagerd(), argv...)
	cmd.Dir = w.workspace
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	w.stdout, w.stderr, w.status = stdout.String(), stderr.String(), 0
	var exit *exec.ExitError
	switch {
	case errors.As(err, &exit):
		w.status = exit.ExitCode()
	case err != nil:
		return fmt.Errorf("run pool-managerd %s: %w", args, err)
	}
	return nil
}

func (w *world) output() string {
	return fmt.Sprintf("exit status %d\n--- stdout\n%s--- stderr\n%s", w.status, w.stdout, w.stderr)
}

func (w *world) exitStatus(want int) error {
	if w.status != want {
		return fmt.Errorf("exit status %d, want %d\n%s", w.status, want, w.output())
	}
	return nil
}

func (w *world) stdoutContains(s string) error {
	if !strings.Contains(w.stdout, s) {
		return fmt.Errorf("stdout does not contain %q\n%s", s, w.output())
	}
	return nil
}

func (w *world) stdoutMatches(pattern string) error {
	re, err := regexp.Compile(pattern)
	if err != nil {
		return err
	}
	if !re.MatchString(w.stdout) {
		return fmt.Errorf("stdout does not match %q\n%s", pattern, w.output())
	}
	return nil
}

func (w *world) stderrContains(s string) error {
	if !strings.Contains(w.stderr, s) {
		return fmt.Errorf("stderr does not contain %q\n%s", s, w.output())
	}
	return nil
}

// errorAt checks for a diagnostic line "config/<pos>: ... <message> ..." in text output.
func (w *world) errorAt(pos, message string) error {
	message = strings.ReplaceAll(message, `\"`, `"`)
	prefix := filepath.Join(w.config, pos) + ":"
	for _, line := range strings.Split(w.stdout, "\n") {
		if strings.HasPrefix(line, prefix) && strings.Contains(line, message) {
			return nil
		}
	}
	return fmt.Errorf("no error at %s containing %q\n%s", prefix, message, w.output())
}

var diagnosticLine = regexp.MustCompile(`^\S+\.cue:\d+:\d+: `)

func (w *world) errorCount(want int) error {
	n := 0
	for _, line := range strings.Split(w.stdout, "\n") {
		if diagnosticLine.MatchString(line) {
			n++
		}
	}
	if n != want {
		return fmt.Errorf("%d errors reported, want %d\n%s", n, want, w.output())
	}
	return nil
}

func (w *world) jsonDiagnostics(want int) error {
	var report struct {
		Valid       bool
		Diagnostics []struct {
			Pos struct {
				File         string
				Line, Column int
			}
			Message string
		}
	}
	if err := json.Unmarshal([]byte(w.stdout), &report); err != nil {
		return fmt.Errorf("output is not JSON: %w\n%s", err, w.output())
	}
	if len(report.Diagnostics) != want {
		return fmt.Errorf("%d diagnostics, want %d\n%s", len(report.Diagnostics), want, w.output())
	}
	for _, d := range report.Diagnostics {
		if d.Pos.File == "" || d.Pos.Line == 0 || d.Pos.Column == 0 || d.Message == "" {
			return fmt.Errorf("diagnostic without file, line, column or message: %+v", d)
		}
	}
	return nil
}

func (w *world) githubAnnotation(file string, line, col int) error {
	want := fmt.Sprintf("::error file=%s,line=%d,col=%d,", filepath.Join(w.config, file), line, col)
	if !strings.Contains(w.stdout, want) {
		return fmt.Errorf("no annotation starting %q\n%s", want, w.output())
	}
	return nil
}
