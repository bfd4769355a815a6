package reconcile

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/poolmanagerd/pool-managerd/drivers/engine/vram"
	"github.com/poolmanagerd/pool-managerd/schema"
)

// UpdateGoldenEnv regenerates the golden plans when set:
//
//	POOL_MANAGERD_UPDATE_GOLDEN=1 go test ./reconcile -run TestGolden
//
// An environment variable rather than a -update flag, so that the command
// also works as `go test ./...` (a flag exists only in the package defining it).
const UpdateGoldenEnv = "POOL_MANAGERD_UPDATE_GOLDEN"

// GoldenDirEnv names another folder of golden cases than testdata/golden:
// an absolute path, or one relative to the repository root. The BDD
// scenario of PM-1013 runs the regeneration on a copy through it, so that
// the source tree is never rewritten.
//
//	POOL_MANAGERD_GOLDEN_DIR=/tmp/golden POOL_MANAGERD_UPDATE_GOLDEN=1 go test ./reconcile -run TestGolden
const GoldenDirEnv = "POOL_MANAGERD_GOLDEN_DIR"

// repoRoot is the repository root as seen from this package's folder,
// where go test runs it.
const repoRoot = ".."

// goldenRoot is the folder of golden cases: GoldenDirEnv, or testdata/golden.
func goldenRoot() string {
	dir := os.Getenv(GoldenDirEnv)
	if dir == "" {
		dir = filepath.Join("testdata", "golden")
	}
	if !filepath.IsAbs(dir) {
		dir = filepath.Join(repoRoot, dir)
	}
	return dir
}

// goldenNow is the time every golden plan is made at.
var goldenNow = time.Date(2026, 11, 27, 12, 0, 0, 0, time.UTC)

// goldenObserved is observed.json: the Observed state, where an engine's
// spec may be named instead of written out: engines started from a spec in
// the case's running/ config get that spec and its hash.
type goldenObserved struct {
	Observed
}

// loadGoldenCase reads a case directory: desired/ (the config), running/
// (optional: the config the running engines were started from) and observed.json.
func loadGoldenCase(t *testing.T, dir string) (Desired, Observed) {
	t.Helper()
	ctx := context.Background()
	cfg, err := schema.Load(ctx, filepath.Join(dir, "desired"))
	if err != nil {
		t.Fatalf("load desired: %v", err)
	}
	data, err := os.ReadFile(filepath.Join(dir, "observed.json"))
	if err != nil {
		t.Fatal(err)
	}
	var obs goldenObserved
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&obs); err != nil {
		t.Fatalf("decode observed.json: %v", err)
	}
	observed := obs.Observed
	if running := filepath.Join(dir, "running"); exists(running) {
		ran, err := schema.Load(ctx, running)
		if err != nil {
			t.Fatalf("load running: %v", err)
		}
		for id, e := range observed.Engines {
			if spec, ok := ran.Pools[id]; ok {
				e.Spec = spec
				e.SpecHash = SpecHash(spec)
				observed.Engines[id] = e
			}
		}
	}
	desired := DesiredFor(cfg, observed.Node)
	for id, p := range desired.Pools {
		desired.Needs[id] = needOf(ctx, p)
	}
	return desired, observed
}

// needOf is the VRAM need as the command layer works it out, with no
// model cache and no remote lookup: a fetched model without a declared
// vram has its need deferred.
func needOf(ctx context.Context, p *schema.Pool) Need {
	if p.Model.Source != "" && p.VRAM == 0 && p.Engine == schema.EngineLlamaCpp {
		return Need{Deferred: "the model is not in the model cache yet: checked before the engine starts, once it is fetched"}
	}
	est, err := vram.For(ctx, p)
	if err != nil {
		return Need{Err: err.Error()}
	}
	return Need{PerGPU: est.PerGPU, Source: est.Source}
}

func exists(path string) bool {
	_, err := os.Stat(path)
	return err == nil
}

func TestGolden(t *testing.T) {
	root := goldenRoot()
	entries, err := os.ReadDir(root)
	if err != nil {
		t.Fatalf("golden cases: %v", err)
	}
	update := os.Getenv(UpdateGoldenEnv) != ""
	cases := 0
	for _, e := range entries {
		if !e.IsDir() {
			continue
		}
		cases++
		dir := filepath.Join(root, e.Name())
		t.Run(e.Name(), func(t *testing.T) {
			desired, observed := loadGoldenCase(t, dir)
			plan := Plan(desired, observed, goldenNow)
			var text, js bytes.Buffer
			if err := WriteText(&text, plan, TextOptions{}); err != nil {
				t.Fatal(err)
			}
			if err := WriteJSON(&js, plan); err != nil {
				t.Fatal(err)
			}
			checkGolden(t, filepath.Join(dir, "plan.txt"), text.Bytes(), update)
			checkGolden(t, filepath.Join(dir, "plan.json"), js.Bytes(), update)

			// The JSON decodes into the documented format and round-trips,
			// env values hidden.
			back, err := ReadJSON(bytes.NewReader(js.Bytes()))
			if err != nil {
				t.Fatalf("ReadJSON: %v", err)
			}
			if diff := cmp.Diff(plan.HideEnvValues(), back, cmp.Comparer(func(a, b schema.Source) bool { return true })); diff != "" {
				t.Errorf("plan JSON does not round-trip (-made +decoded):\n%s", diff)
			}
			// Planning is deterministic.
			again := Plan(desired, observed, goldenNow)
			var text2 bytes.Buffer
			if err := WriteText(&text2, again, TextOptions{}); err != nil {
				t.Fatal(err)
			}
			if text.String() != text2.String() {
				t.Errorf("a second Plan on the same input differs:\n%s\n---\n%s", text.String(), text2.String())
			}
		})
	}
	if cases < 15 {
		t.Errorf("%d golden cases; at least 15 cover the planner", cases)
	}
}

// regenerate is the command that regenerates the golden cases in use.
func regenerate() string {
	cmd := UpdateGoldenEnv + "=1 go test ./reconcile -run TestGolden"
	if dir := os.Getenv(GoldenDirEnv); dir != "" {
		cmd = GoldenDirEnv + "=" + dir + " " + cmd
	}
	return cmd
}

func checkGolden(t *testing.T, path string, got []byte, update bool) {
	t.Helper()
	if update {
		if err := os.WriteFile(path, got, 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		t.Fatalf("%s is missing; run %s", path, regenerate())
	}
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(string(want), string(got)); diff != "" {
		t.Errorf("%s differs (-golden +got); if the change is intended, run %s and review the diff:\n%s", path, regenerate(), diff)
	}
}
