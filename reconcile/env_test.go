package reconcile

import (
	"bytes"
	"errors"
	"strings"
	"testing"

	"github.com/poolmanagerd/pool-managerd/drivers/gpu"
)

// A plan names the env variables that change, never their values, in text
// and JSON alike; a saved plan gets its specs back from the config.
func TestPlanHidesEnvValues(t *testing.T) {
	const oldSecret, newSecret, added = "hf_old_s3cret", "hf_new_s3cret", "s3cret_added"
	running := defectPool("coder", 4, 0)
	running.Env = map[string]string{"HF_TOKEN": oldSecret, "GONE": "gone_s3cret", "SAME": "same_s3cret"}
	desired := defectPool("coder", 4, 0)
	desired.Env = map[string]string{"HF_TOKEN": newSecret, "NEW": added, "SAME": "same_s3cret"}
	fresh := defectPool("chat", 2, 1)
	fresh.Env = map[string]string{"API_KEY": "chat_s3cret"}
	d := defectDesired(desired, fresh)
	gpu1 := defectGPU(16, nil)
	gpu1.Index, gpu1.UUID = 1, "GPU-00000000-0000-0000-0000-000000000001"
	obs := Observed{Node: "gpu-01", Source: "sim", GPUs: []gpu.Device{defectGPU(16, map[int]uint64{100: 4}), gpu1},
		Engines: map[string]Engine{"coder": runningEngine(running, 100, HealthOK)}}
	p := Plan(d, obs, propertyNow)

	var text, js bytes.Buffer
	if err := WriteText(&text, p, TextOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := WriteJSON(&js, p); err != nil {
		t.Fatal(err)
	}
	for name, out := range map[string]string{"text": text.String(), "JSON": js.String()} {
		if strings.Contains(out, "s3cret") {
			t.Errorf("the %s plan shows an env value:\n%s", name, out)
		}
	}
	for _, want := range []string{"env.HF_TOKEN: (hidden) → (hidden)", "env.NEW: (unset) → (hidden)", "env.GONE: (hidden) → (unset)"} {
		if !strings.Contains(text.String(), want) {
			t.Errorf("the text plan lacks %q:\n%s", want, text.String())
		}
	}
	if strings.Contains(text.String(), "env.SAME") {
		t.Errorf("an unchanged variable is listed:\n%s", text.String())
	}
	if !strings.Contains(js.String(), `"API_KEY": "(hidden)"`) {
		t.Errorf("the JSON spec does not name API_KEY:\n%s", js.String())
	}
	// Writing hides values in a copy: the plan apply runs keeps them.
	if desired.Env["HF_TOKEN"] != newSecret || p.Changes[0].Spec.Env["HF_TOKEN"] != newSecret {
		t.Errorf("WriteJSON changed the plan's specs: %v", p.Changes[0].Spec.Env)
	}

	saved, err := ReadJSON(&js)
	if err != nil {
		t.Fatal(err)
	}
	if err := saved.TakeSpecs(d); err != nil {
		t.Fatalf("TakeSpecs: %v", err)
	}
	for _, c := range saved.Changes {
		if c.Spec != d.Pools[c.Pool] {
			t.Errorf("pool %s: the spec is not the config's after TakeSpecs", c.Pool)
		}
	}
	// A config whose spec is not the planned one is refused.
	saved, err = ReadJSON(bytes.NewReader(mustJSON(t, p)))
	if err != nil {
		t.Fatal(err)
	}
	other := *fresh
	other.Env = map[string]string{"API_KEY": "another"}
	if err := saved.TakeSpecs(defectDesired(desired, &other)); !errors.Is(err, ErrStale) {
		t.Errorf("TakeSpecs with another spec: %v, want ErrStale", err)
	}
}

func mustJSON(t *testing.T, p *NodePlan) []byte {
	t.Helper()
	var b bytes.Buffer
	if err := WriteJSON(&b, p); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}
