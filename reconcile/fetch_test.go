package reconcile

import (
	"strings"
	"testing"
	"time"

	"github.com/poolmanagerd/pool-managerd/drivers/gpu"
	"github.com/poolmanagerd/pool-managerd/reconcile/restart"
	"github.com/poolmanagerd/pool-managerd/schema"
)

const (
	testDigest = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
	testSource = "hf://org/chat-GGUF@0123456789abcdef0123456789abcdef01234567/chat-Q4_K_M.gguf"
)

// sourcePool is a llama.cpp pool on GPU 0 whose model is fetched.
func sourcePool(id string, vramGiB int64) *schema.Pool {
	p := defectPool(id, vramGiB, 0)
	p.Model = schema.Model{Source: testSource, SHA256: testDigest, Ctx: 8192}
	return p
}

// dirPool is a vLLM pool on GPU 0 whose model directory is fetched.
func dirPool(id string, sizes ...int64) *schema.Pool {
	p := defectPool(id, 20, 0)
	p.Engine = schema.EngineVLLM
	p.Model = schema.Model{Source: "hf://org/chat@0123456789abcdef0123456789abcdef01234567", Ctx: 8192}
	for i, n := range sizes {
		p.Model.Files = append(p.Model.Files, schema.ModelFile{Path: []string{"config.json", "model.safetensors", "tokenizer.json"}[i], SHA256: testDigest, Size: n})
	}
	return p
}

func TestPlanFetchedModels(t *testing.T) {
	gpu24 := []gpu.Device{defectGPU(24, nil)}
	withNeed := func(d Desired, id string, n Need) Desired {
		d.Needs[id] = n
		return d
	}
	tests := []struct {
		name     string
		desired  Desired
		observed Observed
		// wantFetch is the change's fetch, nil for none.
		wantFetch  *ModelFetch
		wantAction Action
		wantClass  string
		// wantText are lines (or parts) the text plan holds; notText those it must not.
		wantText, notText []string
	}{{
		name:       "a model not in the cache is fetched, with the size the source told",
		desired:    withNeed(defectDesired(sourcePool("chat", 10)), "chat", Need{PerGPU: []uint64{10 * giB}, Source: "gguf", Bytes: 4404019200}),
		observed:   Observed{Node: "gpu-01", Source: "sim", GPUs: gpu24, Models: map[string]int64{}},
		wantFetch:  &ModelFetch{Source: testSource, Digest: testDigest, Bytes: 4404019200},
		wantAction: Create,
		wantText:   []string{"fetch 4.1 GiB from " + testSource, "GPU 0: needs 10.0 GiB"},
	}, {
		name:       "a model in the cache is not fetched",
		desired:    defectDesired(sourcePool("chat", 10)),
		observed:   Observed{Node: "gpu-01", Source: "sim", GPUs: gpu24, Models: map[string]int64{testDigest: 4404019200}},
		wantAction: Create,
		notText:    []string{"fetch"},
	}, {
		name:       "a fresh node (declared) has nothing cached; a source that did not say its size",
		desired:    defectDesired(sourcePool("chat", 10)),
		observed:   Observed{Node: "gpu-01", Source: "declared", GPUs: gpu24},
		wantFetch:  &ModelFetch{Source: testSource, Digest: testDigest},
		wantAction: Create,
		wantText:   []string{"fetch from " + testSource + " (size unknown)"},
	}, {
		name:       "a directory's size is its manifest's",
		desired:    defectDesired(dirPool("chat", 1000, 3<<30, 2000)),
		observed:   Observed{Node: "gpu-01", Source: "sim", GPUs: gpu24},
		wantFetch:  &ModelFetch{Source: "hf://org/chat@0123456789abcdef0123456789abcdef01234567", Digest: dirPool("chat", 1000, 3<<30, 2000).Model.Digest(), Bytes: 3<<30 + 3000},
		wantAction: Create,
		wantText:   []string{"fetch 3.0 GiB from hf://org/chat@"},
	}, {
		name:       "a manifest without every size: size unknown",
		desired:    defectDesired(dirPool("chat", 1000, 0)),
		observed:   Observed{Node: "gpu-01", Source: "sim", GPUs: gpu24},
		wantFetch:  &ModelFetch{Source: "hf://org/chat@0123456789abcdef0123456789abcdef01234567", Digest: dirPool("chat", 1000, 0).Model.Digest()},
		wantAction: Create,
		wantText:   []string{"fetch from hf://org/chat@0123456789abcdef0123456789abcdef01234567 (size unknown)"},
	}, {
		name:       "a deferred need is not blocked and not booked",
		desired:    withNeed(defectDesired(sourcePool("chat", 0)), "chat", Need{Deferred: "the model is not in the model cache: checked before the engine starts, once it is fetched"}),
		observed:   Observed{Node: "gpu-01", Source: "sim", GPUs: gpu24, Host: &HostMemory{Total: 64 * giB, Available: 32 * giB}},
		wantFetch:  &ModelFetch{Source: testSource, Digest: testDigest},
		wantAction: Create,
		wantText:   []string{"VRAM need not checked here: the model is not in the model cache"},
		notText:    []string{"GPU 0: needs", "host RAM"},
	}, {
		name:       "offline: no fetch, and the reason says the start fails",
		desired:    withNeed(defectDesired(sourcePool("chat", 0)), "chat", Need{Deferred: "the model is not in the model cache (offline: not looked up at its source)"}),
		observed:   Observed{Node: "gpu-01", Source: "sim", GPUs: gpu24, Models: map[string]int64{}, Offline: true},
		wantAction: Create,
		wantText:   []string{"offline: the model is not in the model cache, so apply and serve fail this pool (model_not_cached)"},
		notText:    []string{"fetch "},
	}, {
		name: "warnings of the lookup are reasons, not blockers",
		desired: withNeed(defectDesired(sourcePool("chat", 10)), "chat", Need{PerGPU: []uint64{10 * giB}, Source: "declared",
			Warnings: []string{"the source's file has digest ffff, the config says 0123: the fetch will fail"}}),
		observed:   Observed{Node: "gpu-01", Source: "sim", GPUs: gpu24},
		wantFetch:  &ModelFetch{Source: testSource, Digest: testDigest},
		wantAction: Create,
		wantText:   []string{"warning: the source's file has digest ffff, the config says 0123: the fetch will fail"},
	}, {
		name:       "a model too big for its GPU is blocked, naming the model, and fetches nothing",
		desired:    withNeed(defectDesired(sourcePool("chat", 0)), "chat", Need{PerGPU: []uint64{40 * giB}, Source: "gguf", Bytes: 38 << 30}),
		observed:   Observed{Node: "gpu-01", Source: "sim", GPUs: gpu24},
		wantAction: Blocked,
		wantClass:  ClassInsufficientVRAM,
		wantText:   []string{"needs 40.0 GiB for " + testSource + " at ctx 8192, 24.0 GiB free"},
		notText:    []string{"fetch "},
	}}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			p := Plan(tc.desired, tc.observed, propertyNow)
			text := planText(p)
			if len(p.Changes) != 1 {
				t.Fatalf("want one change:\n%s", text)
			}
			c := p.Changes[0]
			if c.Action != tc.wantAction {
				t.Errorf("action %s, want %s:\n%s", c.Action, tc.wantAction, text)
			}
			if tc.wantClass != "" && (c.Blocker == nil || c.Blocker.Class != tc.wantClass) {
				t.Errorf("blocker %+v, want class %s", c.Blocker, tc.wantClass)
			}
			if tc.wantAction != Blocked {
				if (c.Fetch == nil) != (tc.wantFetch == nil) || (c.Fetch != nil && *c.Fetch != *tc.wantFetch) {
					t.Errorf("fetch %+v, want %+v", c.Fetch, tc.wantFetch)
				}
			} else if tc.wantClass == ClassInsufficientVRAM && c.Fetch != nil {
				t.Errorf("a blocked pool fetches %+v", c.Fetch)
			}
			for _, want := range tc.wantText {
				if !strings.Contains(text, want) {
					t.Errorf("the plan lacks %q:\n%s", want, text)
				}
			}
			for _, not := range tc.notText {
				if strings.Contains(text, not) {
					t.Errorf("the plan holds %q:\n%s", not, text)
				}
			}
		})
	}
}

// TestDesiredHashLeavesOutFetchedModelsNeeds: a fetched model's need
// follows from its spec (the digest pins the file), so how it was found
// (the cache, the source's header, not yet) does not make a plan stale;
// a local model's need still does (its file may change).
func TestDesiredHashLeavesOutFetchedModelsNeeds(t *testing.T) {
	d := defectDesired(sourcePool("chat", 0), defectPool("local", 4, 0))
	base := DesiredHash(d)
	d.Needs["chat"] = Need{Deferred: "not in the model cache"}
	if got := DesiredHash(d); got != base {
		t.Errorf("a fetched model's need changed the desired hash")
	}
	d.Needs["local"] = Need{PerGPU: []uint64{5 * giB}, Source: "gguf"}
	if got := DesiredHash(d); got == base {
		t.Errorf("a local model's need did not change the desired hash")
	}
	if d.Needs["chat"].Deferred == "" {
		t.Errorf("DesiredHash changed the needs it was given")
	}
}

// TestDiffSpecsShowsModelSource: a new model.source is a field change of
// a replace (the pool's own position in the config is not).
func TestDiffSpecsShowsModelSource(t *testing.T) {
	old, new := sourcePool("chat", 10), sourcePool("chat", 10)
	new.Model.Source = "https://models.example.com/chat-Q4_K_M.gguf"
	got := diffSpecs(old, new)
	if len(got) != 1 || got[0].Path != "model.source" {
		t.Errorf("diffSpecs = %+v; want one change, of model.source", got)
	}
}

// A replace whose start failed while its engine ran (the new spec's model
// could not be fetched) is planned again with the engine's pid, for when the
// backoff allows (NotBefore), not at once: no hot loop of failed fetches.
// A later config change replaces at once.
func TestPlanRetriesAFailedReplaceAfterTheBackoff(t *testing.T) {
	old := sourcePool("chat", 10)
	changed := sourcePool("chat", 10)
	changed.Model.SHA256 = strings.Repeat("b", 64)
	again := sourcePool("chat", 10)
	again.Model.SHA256 = strings.Repeat("c", 64)
	next := propertyNow.Add(30 * time.Second)
	history := restart.Record{ConsecutiveFailures: 1, NextRetry: next, Failures: []time.Time{propertyNow.Add(-time.Second)},
		LastError: &restart.ErrorRecord{Class: restart.ClassFetchHTTP, Message: "HTTP 404", Time: propertyNow.Add(-time.Second)}}
	observed := func(p *schema.Pool) Observed {
		return Observed{Node: "gpu-01", Source: "sim", GPUs: []gpu.Device{defectGPU(24, map[int]uint64{42: 10})}, Models: map[string]int64{old.Model.Digest(): 1 << 30},
			Engines: map[string]Engine{"chat": {Pool: "chat", SpecHash: SpecHash(old), Spec: old, PID: 42, Alive: true, Health: HealthOK, Recorded: true,
				ReadyAt: propertyNow.Add(-time.Hour), ReplaceFailed: SpecHash(p)}},
			Pools: map[string]restart.Record{"chat": history}}
	}
	for _, tc := range []struct {
		name          string
		desired       *schema.Pool
		wantNotBefore *time.Time
	}{
		{"the spec that failed: after the backoff", changed, &next},
		{"a spec changed since: at once", again, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			o := observed(changed)
			p := Plan(defectDesired(tc.desired), o, propertyNow)
			if len(p.Changes) != 1 {
				t.Fatalf("want one change:\n%s", planText(p))
			}
			c := p.Changes[0]
			if c.Action != Replace || c.PID != 42 {
				t.Fatalf("change %s pid %d, want a replace of pid 42:\n%s", c.Action, c.PID, planText(p))
			}
			if (c.NotBefore == nil) != (tc.wantNotBefore == nil) || (c.NotBefore != nil && !c.NotBefore.Equal(*tc.wantNotBefore)) {
				t.Errorf("notBefore %v, want %v", c.NotBefore, tc.wantNotBefore)
			}
		})
	}
}
