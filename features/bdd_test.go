// Package features runs the executable specification of pool-managerd: the
// Gherkin scenarios in this folder, each tagged with the requirement IDs of
// docs/requirements.md that it shows, driven through the real binaries.
//
//	go test ./features                                     # every scenario, strict
//	LLORCH_BDD_FEATURE_PATH=features/validation.feature go test ./features
//	go test ./features -godog.tags=@PM-1002                # by tag
package features

import (
	"context"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"testing"

	"github.com/cucumber/godog"
	"github.com/cucumber/godog/colors"

	"github.com/poolmanagerd/pool-managerd/testkit/testenv"
)

// FeaturePathEnv narrows a run to one feature file or folder, as in the original harness.
const FeaturePathEnv = "LLORCH_BDD_FEATURE_PATH"

// harness holds what every scenario shares: the test environment (the
// binaries, built once per go test run, and the folder that holds every
// scenario's workspace).
type harness struct {
	env *testenv.Env
	// repo is the repository root, for the examples.
	repo string
}

func (h *harness) poolManagerd() string { return h.env.Bin.PoolManagerd }

// fakeEngine is the stand-in engine.
func (h *harness) fakeEngine() string { return h.env.Bin.FakeEngine }

// opts run the scenarios several at a time: each has a workspace, a
// simulated node and a state directory of its own, and most of a
// scenario's time is spent waiting on the programs it runs.
// -godog.concurrency=1 runs them one by one.
var opts = godog.Options{
	Output: colors.Colored(os.Stdout), Format: "pretty", Strict: true,
	Concurrency: 2 * runtime.GOMAXPROCS(0),
}

func init() {
	// On the go test flag set, so that -godog.tags and the others parse with
	// -test.* (BindCommandLineFlags binds them to pflag, which flag.Parse ignores).
	godog.BindFlags("godog.", flag.CommandLine, &opts)
}

func TestMain(m *testing.M) {
	flag.Parse()
	os.Exit(m.Run())
}

// buildHarness sets up the test environment. When the test ends, every
// scenario has stopped its engines: an engine still running under the
// environment's folder fails the test (and is killed).
func buildHarness(t *testing.T) *harness {
	t.Helper()
	repo, err := filepath.Abs("..")
	if err != nil {
		t.Fatal(err)
	}
	env, err := testenv.New(context.Background(), "bdd")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := env.Close(); err != nil {
			t.Error(err)
		}
	})
	return &harness{env: env, repo: repo}
}

// featurePaths returns the features to run: LLORCH_BDD_FEATURE_PATH (relative to
// the repository root or absolute) when set, else this folder.
func featurePaths(repo string) ([]string, error) {
	p := os.Getenv(FeaturePathEnv)
	if p == "" {
		return []string{"."}, nil
	}
	if !filepath.IsAbs(p) {
		p = filepath.Join(repo, p)
	}
	if _, err := os.Stat(p); err != nil {
		return nil, fmt.Errorf("%s=%s: %w", FeaturePathEnv, os.Getenv(FeaturePathEnv), err)
	}
	return []string{p}, nil
}

func TestFeatures(t *testing.T) {
	h := buildHarness(t)
	paths, err := featurePaths(h.repo)
	if err != nil {
		t.Fatal(err)
	}
	o := opts
	o.Paths = paths
	o.TestingT = t
	suite := godog.TestSuite{
		Name: "pool-managerd",
		ScenarioInitializer: func(sc *godog.ScenarioContext) {
			w := &world{h: h}
			w.register(sc)
			w.registerGit(sc)
		},
		Options: &o,
	}
	if code := suite.Run(); code != 0 {
		t.Fatalf("godog exited with %d (undefined, pending or ambiguous steps fail in strict mode)", code)
	}
}
