package features

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"time"

	"github.com/cucumber/godog"

	"github.com/poolmanagerd/pool-managerd/reconcile"
	"github.com/poolmanagerd/pool-managerd/testkit/ggufgen"
	"github.com/poolmanagerd/pool-managerd/testkit/testenv"
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
	// previous is the stdout of the run before the last.
	previous string
	// golden is what the golden plan steps keep.
	golden goldenRun
	// applyState is what the apply and lifecycle steps keep (steps_apply_test.go).
	applyState
	// daemonState is what the daemon steps keep (steps_daemon_test.go).
	daemonState
	// modelState is what the model server steps keep (steps_models_test.go).
	modelState
	// llamaServer, when set, replaces the stand-in as ENGINE (steps_engine_builds_test.go).
	llamaServer string
	// vllmServer, when set, is VLLM: a stand-in imitating a vLLM version
	// (steps_engine_builds_test.go); else VLLM is the stand-in.
	vllmServer string
}

func (w *world) simDir() string { return filepath.Join(w.workspace, "node") }

func (w *world) simulatedNode() error {
	if err := w.run("sim init SIMDIR"); err != nil {
		return err
	}
	return w.exitStatus(0)
}

func (w *world) simulatedNodeWithRAM(gib int) error {
	if err := w.run(fmt.Sprintf("sim init SIMDIR --ram %dGi", gib)); err != nil {
		return err
	}
	return w.exitStatus(0)
}

func (w *world) ggufModel(path, shape string) error {
	m := ggufgen.Llama7B()
	if shape == "Llama 70B" {
		m = ggufgen.Llama70B()
	}
	full := filepath.Join(w.workspace, path)
	if err := os.MkdirAll(filepath.Dir(full), 0o755); err != nil {
		return err
	}
	_, err := ggufgen.Write(full, m)
	return err
}

func (w *world) runAgain(args string) error { return w.run(args) }

// samePlan compares the last two plans, but for the time each was made.
func (w *world) samePlan() error {
	strip := regexp.MustCompile(`"createdAt": "[^"]*"`)
	a, b := strip.ReplaceAllString(w.previous, ""), strip.ReplaceAllString(w.stdout, "")
	if a != b {
		return fmt.Errorf("the two plans differ:\n%s\n---\n%s", w.previous, w.stdout)
	}
	return nil
}

// jsonPlan is the part of the plan format the steps read.
type jsonPlan struct {
	FormatVersion int    `json:"formatVersion"`
	Node          string `json:"node"`
	DesiredHash   string `json:"desiredHash"`
	ObservedHash  string `json:"observedHash"`
	Changes       []struct {
		Action string `json:"action"`
		Pool   string `json:"pool"`
	} `json:"changes"`
}

func decodePlan(data []byte) (jsonPlan, error) {
	var p jsonPlan
	err := json.Unmarshal(data, &p)
	return p, err
}

func (w *world) jsonPlanHeader(version int) error {
	p, err := decodePlan([]byte(w.stdout))
	if err != nil {
		return fmt.Errorf("not a JSON plan: %w\n%s", err, w.output())
	}
	if p.FormatVersion != version || !strings.HasPrefix(p.DesiredHash, "sha256:") || !strings.HasPrefix(p.ObservedHash, "sha256:") {
		return fmt.Errorf("plan header: version %d, hashes %q %q", p.FormatVersion, p.DesiredHash, p.ObservedHash)
	}
	return nil
}

func (w *world) jsonPlanChange(action, pool string) error {
	p, err := decodePlan([]byte(w.stdout))
	if err != nil {
		return fmt.Errorf("not a JSON plan: %w\n%s", err, w.output())
	}
	for _, c := range p.Changes {
		if c.Action == action && c.Pool == pool {
			return nil
		}
	}
	return fmt.Errorf("no %s change for pool %s in %+v", action, pool, p.Changes)
}

func (w *world) savedPlan(name, node string) error {
	data, err := os.ReadFile(filepath.Join(w.workspace, name))
	if err != nil {
		return err
	}
	p, err := decodePlan(data)
	if err != nil {
		return fmt.Errorf("%s: %w", name, err)
	}
	if p.Node != node || p.FormatVersion != reconcile.FormatVersion || !strings.HasPrefix(p.DesiredHash, "sha256:") || !strings.HasPrefix(p.ObservedHash, "sha256:") {
		return fmt.Errorf("%s: node %q version %d hashes %q %q", name, p.Node, p.FormatVersion, p.DesiredHash, p.ObservedHash)
	}
	return nil
}

// The environment variables of the golden plan tests (reconcile/golden_test.go).
const (
	updateGoldenEnv = "POOL_MANAGERD_UPDATE_GOLDEN"
	goldenDirEnv    = "POOL_MANAGERD_GOLDEN_DIR"
)

// goldenRun is what the golden plan steps keep of a scenario.
type goldenRun struct {
	// out and err are the output and error of the last go test run.
	out string
	err error
	// copy is the workspace's copy of the golden cases, before is what it
	// held before a case was changed, and source is what the source tree's
	// cases held then.
	copy           string
	before, source map[string][]byte
	// changed is the file of the copy that was changed, relative to it.
	changed string
}

// goldenSource is the source tree's folder of golden cases.
func (w *world) goldenSource() string { return filepath.Join(w.h.repo, "testdata", "golden") }

// goTest runs go test in the repository with the golden switches of the
// caller's environment dropped and env added (KEY=VALUE), so that a run
// never rewrites the source tree; it keeps the output and the error.
func (w *world) goTest(env []string, args ...string) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "go", append([]string{"test"}, args...)...)
	cmd.Dir = w.h.repo
	for _, kv := range os.Environ() {
		if k, _, _ := strings.Cut(kv, "="); k != updateGoldenEnv && k != goldenDirEnv {
			cmd.Env = append(cmd.Env, kv)
		}
	}
	cmd.Env = append(cmd.Env, env...)
	out, err := cmd.CombinedOutput()
	w.golden.out, w.golden.err = string(out), err
}

func (w *world) goldenTests() error {
	w.goTest(nil, "-count=1", "-run", "^TestGolden$", "-v", "./reconcile")
	if w.golden.err != nil {
		return fmt.Errorf("golden tests failed: %w\n%s", w.golden.err, w.golden.out)
	}
	return nil
}

func (w *world) goldenPassed(minCases int) error {
	passed := strings.Count(w.golden.out, "--- PASS: TestGolden/")
	if passed < minCases {
		return fmt.Errorf("%d golden cases passed, want at least %d\n%s", passed, minCases, w.golden.out)
	}
	cases, err := os.ReadDir(w.goldenSource())
	if err != nil {
		return err
	}
	for _, c := range cases {
		if !c.IsDir() {
			continue
		}
		for _, f := range []string{"desired", "observed.json", "plan.txt", "plan.json"} {
			if _, err := os.Stat(filepath.Join(w.goldenSource(), c.Name(), f)); err != nil {
				return fmt.Errorf("golden case %s: %w", c.Name(), err)
			}
		}
	}
	return nil
}

// readTree reads every file under dir, by path relative to it.
func readTree(dir string) (map[string][]byte, error) {
	files := map[string][]byte{}
	err := filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		rel, err := filepath.Rel(dir, p)
		if err != nil {
			return err
		}
		data, err := os.ReadFile(p)
		files[rel] = data
		return err
	})
	return files, err
}

// writeTree writes files (by relative path) under dir.
func writeTree(dir string, files map[string][]byte) error {
	for rel, data := range files {
		p := filepath.Join(dir, rel)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			return err
		}
		if err := os.WriteFile(p, data, 0o644); err != nil {
			return err
		}
	}
	return nil
}

// treeDiff lists the files that differ between two trees, or are in one only.
func treeDiff(want, got map[string][]byte) []string {
	var diff []string
	for rel, data := range want {
		if g, ok := got[rel]; !ok {
			diff = append(diff, rel+" is gone")
		} else if !bytes.Equal(g, data) {
			diff = append(diff, rel+" changed")
		}
	}
	for rel := range got {
		if _, ok := want[rel]; !ok {
			diff = append(diff, rel+" is new")
		}
	}
	sort.Strings(diff)
	return diff
}

func (w *world) copyGolden() error {
	src, err := readTree(w.goldenSource())
	if err != nil {
		return err
	}
	w.golden.source = src
	w.golden.copy = filepath.Join(w.workspace, "golden")
	return writeTree(w.golden.copy, src)
}

// changeGoldenPlan edits the expected text plan of one case of the copy: a
// line the planner does not write is added to it.
func (w *world) changeGoldenPlan(name string) error {
	if w.golden.copy == "" {
		return errors.New("no copy of the golden cases")
	}
	before, err := readTree(w.golden.copy)
	if err != nil {
		return err
	}
	rel := filepath.Join(name, "plan.txt")
	plan, ok := before[rel]
	if !ok {
		return fmt.Errorf("the golden cases have no %s", rel)
	}
	w.golden.before, w.golden.changed = before, rel
	edited := append(bytes.Clone(plan), "Changed by hand: an expectation the planner does not make.\n"...)
	return os.WriteFile(filepath.Join(w.golden.copy, rel), edited, 0o644)
}

func (w *world) goldenOnCopy() error {
	w.goTest([]string{goldenDirEnv + "=" + w.golden.copy}, "-count=1", "-run", "^TestGolden$", "-v", "./reconcile")
	return nil
}

// goldenFailOnChange checks that the run failed on the changed case only,
// naming the changed file and the command that regenerates it.
func (w *world) goldenFailOnChange() error {
	if w.golden.err == nil {
		return fmt.Errorf("the golden tests passed on a changed expectation\n%s", w.golden.out)
	}
	name := filepath.Dir(w.golden.changed)
	failed := regexp.MustCompile(`--- FAIL: TestGolden/(\S+)`).FindAllStringSubmatch(w.golden.out, -1)
	if len(failed) != 1 || failed[0][1] != name {
		return fmt.Errorf("failed cases %v, want %s only\n%s", failed, name, w.golden.out)
	}
	for _, want := range []string{
		filepath.Join(w.golden.copy, w.golden.changed) + " differs",
		updateGoldenEnv + "=1 go test ./reconcile -run TestGolden",
	} {
		if !strings.Contains(w.golden.out, want) {
			return fmt.Errorf("the failure does not say %q\n%s", want, w.golden.out)
		}
	}
	return nil
}

// regenerateCopy runs the command that README.md documents, as written
// there, with POOL_MANAGERD_GOLDEN_DIR naming the copy (and GOFLAGS=-count=1,
// so that no cached result stands in for the run).
func (w *world) regenerateCopy(command string) error {
	readme, err := os.ReadFile(filepath.Join(w.h.repo, "README.md"))
	if err != nil {
		return err
	}
	if !bytes.Contains(readme, []byte("`"+command+"`")) {
		return fmt.Errorf("README.md does not document the command `%s`", command)
	}
	env := []string{goldenDirEnv + "=" + w.golden.copy, "GOFLAGS=" + strings.TrimSpace(os.Getenv("GOFLAGS")+" -count=1")}
	fields := strings.Fields(command)
	for len(fields) > 0 && strings.Contains(fields[0], "=") {
		env = append(env, fields[0])
		fields = fields[1:]
	}
	if len(fields) < 2 || fields[0] != "go" || fields[1] != "test" {
		return fmt.Errorf("the command %q is not a go test run", command)
	}
	w.goTest(env, fields[2:]...)
	return nil
}

func (w *world) regenerationPassed() error {
	if w.golden.err != nil {
		return fmt.Errorf("the regeneration failed: %w\n%s", w.golden.err, w.golden.out)
	}
	return nil
}

// goldenRestored checks the copy after the regeneration: the changed file
// holds what the planner makes (the source tree's file, which the golden
// tests passed on) and every other file is byte for byte what it was.
func (w *world) goldenRestored() error {
	after, err := readTree(w.golden.copy)
	if err != nil {
		return err
	}
	if got, want := after[w.golden.changed], w.golden.source[w.golden.changed]; !bytes.Equal(got, want) {
		return fmt.Errorf("%s was not rewritten to what the planner makes:\n%s\n--- want\n%s", w.golden.changed, got, want)
	}
	want := maps.Clone(w.golden.before)
	want[w.golden.changed] = after[w.golden.changed]
	if diff := treeDiff(want, after); len(diff) > 0 {
		return fmt.Errorf("the regeneration changed more than the changed expectation: %s", strings.Join(diff, ", "))
	}
	return nil
}

func (w *world) goldenSourceUntouched() error {
	now, err := readTree(w.goldenSource())
	if err != nil {
		return err
	}
	if diff := treeDiff(w.golden.source, now); len(diff) > 0 {
		return fmt.Errorf("the golden cases of the source tree changed: %s", strings.Join(diff, ", "))
	}
	return nil
}

func (w *world) register(sc *godog.ScenarioContext) {
	w.registerEngineBuilds(sc)
	sc.Before(func(ctx context.Context, _ *godog.Scenario) (context.Context, error) {
		dir, err := os.MkdirTemp(w.h.env.Root, "scenario-")
		w.workspace, w.config = dir, "config"
		return ctx, err
	})
	sc.After(func(ctx context.Context, _ *godog.Scenario, err error) (context.Context, error) {
		cleanErr := errors.Join(w.stopDaemons(), w.stopEngines())
		return ctx, errors.Join(cleanErr, os.RemoveAll(w.workspace))
	})
	sc.Step(`^an empty config directory$`, w.emptyConfig)
	sc.Step(`^a copy of the example config "([^"]*)"$`, w.exampleConfig)
	sc.Step(`^the config file "([^"]*)":$`, w.configFile)
	sc.Step(`^a node "([^"]*)" with GPUs of (\d+) GiB and (\d+) GiB$`, w.twoGPUNode)
	sc.Step(`^a llama\.cpp pool "([^"]*)" on GPUs (\d+) and (\d+) with split \[([^\]]*)\]$`, w.splitPool)
	sc.Step(`^a llama\.cpp pool "([^"]*)" on GPU (\d+) with flags (.*)$`, w.flagPool)
	sc.Step(`^a simulated node with an RTX 3090 \(24 GiB\) and an RTX 3060 \(12 GiB\)$`, w.simulatedNode)
	sc.Step(`^a simulated node with an RTX 3090 \(24 GiB\), an RTX 3060 \(12 GiB\) and (\d+) GiB of host RAM$`, w.simulatedNodeWithRAM)
	sc.Step(`^a GGUF model file "([^"]*)" shaped like (Llama 7B|Llama 70B)$`, w.ggufModel)
	sc.Step(`^I run "pool-managerd ([^"]*)"$`, w.run)
	sc.Step(`^I run "pool-managerd ([^"]*)" again$`, w.runAgain)
	sc.Step(`^both runs printed the same plan$`, w.samePlan)
	sc.Step(`^the JSON plan has format version (\d+) and the hashes of the states it was made from$`, w.jsonPlanHeader)
	sc.Step(`^the JSON plan has a "([^"]*)" change for pool "([^"]*)"$`, w.jsonPlanChange)
	sc.Step(`^the file "([^"]*)" holds a plan for node "([^"]*)"$`, w.savedPlan)
	sc.Step(`^the golden plan tests run$`, w.goldenTests)
	sc.Step(`^they pass, with at least (\d+) cases, each with its config, observed state and both renderings$`, w.goldenPassed)
	sc.Step(`^a copy of the golden cases in the workspace$`, w.copyGolden)
	sc.Step(`^I change the expected text plan of golden case "([^"]*)" in the copy$`, w.changeGoldenPlan)
	sc.Step(`^the golden plan tests run on the copy$`, w.goldenOnCopy)
	sc.Step(`^they fail on that case only, naming the changed file and the command that regenerates it$`, w.goldenFailOnChange)
	sc.Step(`^I run the regeneration command that README\.md documents, "([^"]*)", on the copy$`, w.regenerateCopy)
	sc.Step(`^the regeneration passes$`, w.regenerationPassed)
	sc.Step(`^the changed plan is rewritten to what the planner makes, and every other file of the copy is as it was$`, w.goldenRestored)
	sc.Step(`^the golden cases of the source tree are untouched$`, w.goldenSourceUntouched)
	sc.Step(`^the exit status is (\d+)$`, w.exitStatus)
	sc.Step(`^stdout contains "(.*)"$`, w.stdoutContains)
	sc.Step(`^stdout matches "([^"]*)"$`, w.stdoutMatches)
	sc.Step(`^stderr contains "([^"]*)"$`, w.stderrContains)
	sc.Step(`^an error is reported at "([^"]*)" containing "(.*)"$`, w.errorAt)
	sc.Step(`^(\d+) errors? (?:is|are) reported$`, w.errorCount)
	sc.Step(`^the JSON output reports (\d+) diagnostics? with file, line and column$`, w.jsonDiagnostics)
	sc.Step(`^a GitHub annotation is printed for "([^"]*)" at line (\d+), column (\d+)$`, w.githubAnnotation)
	w.registerApply(sc)
	w.registerDaemon(sc)
	w.registerModels(sc)
	w.registerLifecycle(sc)
	w.registerEngines(sc)
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
	// As an editor saves: a temp file renamed over the old one, so that a
	// daemon watching the config never reads half of it.
	tmp := w.path(rel) + ".tmp"
	if err := os.WriteFile(tmp, []byte(content), 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, w.path(rel))
}

// configFile writes a config file; WORKSPACE in it stands for the scenario's
// workspace, MODELSERVER and MODELDIGEST for the model server (steps_models_test.go).
func (w *world) configFile(rel string, doc *godog.DocString) error {
	return w.writeFile(rel, w.expandModels(strings.ReplaceAll(doc.Content, "WORKSPACE", w.workspace)))
}

func (w *world) twoGPUNode(name string, a, b int) error {
	node := testenv.NodeDecl{Name: name, GPUs: []testenv.GPUDecl{
		{Index: 0, VRAM: fmt.Sprintf("%dGi", a)},
		{Index: 1, VRAM: fmt.Sprintf("%dGi", b)},
	}}
	return w.writeFile("nodes/"+name+".cue", node.CUE())
}

// poolNode is the node the pool steps put their pools on.
const poolNode = "gpu-01"

// stepPool is a pool of the pool steps: its file's lines are as
// testenv.Pool.CUE says, which the positions in the scenarios count on.
func stepPool(id string, devices ...int) testenv.Pool {
	return testenv.Pool{ID: id, Node: poolNode, Model: "/models/model.gguf", Ctx: 8192, Devices: devices}
}

func (w *world) splitPool(id string, g0, g1 int, split string) error {
	p := stepPool(id, g0, g1)
	p.Split = "[" + split + "]"
	return w.writeFile("pools/"+id+".cue", p.CUE())
}

func (w *world) flagPool(id string, gpu int, flags string) error {
	p := stepPool(id, gpu)
	p.Flags = "[" + flags + "]"
	return w.writeFile("pools/"+id+".cue", p.CUE())
}

func (w *world) stateDir() string { return filepath.Join(w.workspace, "state") }

// expand replaces the tokens of a command's arguments: CONFIG stands for the
// config directory, SIM for the simulated node (sim:DIR), SIMDIR for its
// directory, STATE for the state directory and ENGINE for the stand-in
// engine's binary.
func (w *world) expand(args string) string {
	engine := w.h.fakeEngine()
	if w.llamaServer != "" {
		engine = w.llamaServer
	}
	vllm := w.h.fakeEngine()
	if w.vllmServer != "" {
		vllm = w.vllmServer
	}
	return strings.NewReplacer("CONFIG", w.config, "SIMDIR", w.simDir(), "SIM", "sim:"+w.simDir(), "STATE", w.stateDir(), "ENGINE", engine, "VLLM", vllm).Replace(args)
}

// run runs pool-managerd in the workspace, its arguments expanded (see expand).
func (w *world) run(args string) error { return w.runEnv(nil, args) }

// runEnv runs pool-managerd with extra environment variables (KEY=VALUE).
func (w *world) runEnv(env []string, args string) error {
	w.previous = w.stdout
	args = w.expand(args)
	argv := strings.Fields(args)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, w.h.poolManagerd(), argv...)
	cmd.Dir = w.workspace
	if env != nil {
		cmd.Env = append(os.Environ(), env...)
	}
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	start := time.Now()
	err := cmd.Run()
	w.elapsed = time.Since(start)
	w.stdout, w.stderr, w.status = stdout.String(), stderr.String(), 0
	w.signal = ""
	var exit *exec.ExitError
	switch {
	case errors.As(err, &exit):
		w.status = exit.ExitCode()
		w.signal = signalOf(exit)
	case err != nil:
		return fmt.Errorf("run pool-managerd %s: %w", args, err)
	}
	return nil
}

func (w *world) output() string {
	return fmt.Sprintf("exit status %d\n--- stdout\n%s--- stderr\n%s%s", w.status, w.stdout, w.stderr, engineLogTails(w.stdout+w.stderr))
}

// engineLog is an engine log that pool-managerd's output names ("log: PATH").
var engineLog = regexp.MustCompile(`log: (/\S+\.log)`)

// engineLogTails is the end of each engine log the output names, so that a
// failed step shows what the engine said before the scenario's workspace goes.
func engineLogTails(out string) string {
	var b strings.Builder
	seen := map[string]bool{}
	for _, m := range engineLog.FindAllStringSubmatch(out, -1) {
		if seen[m[1]] {
			continue
		}
		seen[m[1]] = true
		data, err := os.ReadFile(m[1])
		if err != nil {
			continue
		}
		lines := strings.Split(strings.TrimRight(string(data), "\n"), "\n")
		fmt.Fprintf(&b, "--- last lines of %s\n%s\n", m[1], strings.Join(lines[max(0, len(lines)-15):], "\n"))
	}
	return b.String()
}

func (w *world) exitStatus(want int) error {
	if w.status != want {
		return fmt.Errorf("exit status %d, want %d\n%s", w.status, want, w.output())
	}
	return nil
}

func (w *world) stdoutContains(s string) error {
	s = strings.ReplaceAll(s, `\"`, `"`)
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
