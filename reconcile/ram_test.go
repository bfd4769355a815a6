package reconcile

import (
	"strings"
	"testing"

	"github.com/poolmanagerd/pool-managerd/drivers/gpu"
	"github.com/poolmanagerd/pool-managerd/schema"
)

func TestDefaultRAM(t *testing.T) {
	for _, tc := range []struct {
		engine  schema.Engine
		vram    uint64
		weights uint64
		gpus    int
		want    uint64
	}{
		{schema.EngineLlamaCpp, 10 * giB, 0, 1, 2 * giB},
		{schema.EngineLlamaCpp, 0, 0, 1, giB},
		{schema.EngineLlamaCpp, 10 * giB, 7 * giB, 1, 2 * giB}, // the GGUF is mmap'd: its size does not count
		{schema.EngineVLLM, 40 * giB, 0, 2, 46 * giB},
		{schema.EngineVLLM, 88 * giB, 28 * giB, 4, 38 * giB}, // the weights, not the KV cache the VRAM also holds
		{schema.EngineTGI, 20 * giB, 0, 1, 24 * giB},
		{schema.EngineSGLang, 16 * giB, 0, 4, 26 * giB},
	} {
		if got := DefaultRAM(tc.engine, tc.vram, tc.weights, tc.gpus); got != tc.want {
			t.Errorf("DefaultRAM(%s, %d GiB, %d GiB weights, %d GPUs) = %s, want %s", tc.engine, tc.vram/giB, tc.weights/giB, tc.gpus, gib(got), gib(tc.want))
		}
	}
}

func TestPoolRAM(t *testing.T) {
	declared := defectPool("a", 10, 0)
	declared.RAM = 3 * giB
	estimated := defectPool("b", 10, 0)
	for _, tc := range []struct {
		name       string
		pool       *schema.Pool
		vram       Need
		want       uint64
		wantSource string
		wantKnown  bool
	}{
		{"declared wins", declared, Need{Err: "no model file"}, 3 * giB, "declared", true},
		{"estimate from the VRAM need", estimated, Need{PerGPU: []uint64{10 * giB}}, 2 * giB, "estimate", true},
		{"no estimate without a VRAM need", estimated, Need{Err: "no model file"}, 0, "", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, source, known := PoolRAM(tc.pool, tc.vram)
			if got != tc.want || source != tc.wantSource || known != tc.wantKnown {
				t.Errorf("PoolRAM = %d, %q, %v; want %d, %q, %v", got, source, known, tc.want, tc.wantSource, tc.wantKnown)
			}
		})
	}
}

// ramPool is a pool on GPU 0 with a declared VRAM and RAM need.
func ramPool(id string, vramGiB, ramGiB int64) *schema.Pool {
	p := defectPool(id, vramGiB, 0)
	p.RAM = ramGiB * giB
	return p
}

func TestPlanChecksHostRAM(t *testing.T) {
	host := func(availGiB uint64) *HostMemory {
		return &HostMemory{Total: 64 * giB, Available: availGiB * giB, Held: map[int]uint64{}}
	}
	t.Run("a pool that needs more than is available is blocked", func(t *testing.T) {
		d := defectDesired(ramPool("big", 4, 40))
		o := Observed{Node: "gpu-01", Source: "sim", GPUs: []gpu.Device{defectGPU(24, nil)}, Host: host(32)}
		p := Plan(d, o, propertyNow)
		c := p.Changes[0]
		if c.Action != Blocked || c.Blocker.Class != ClassInsufficientRAM {
			t.Fatalf("want big blocked for insufficient_ram:\n%s", planText(p))
		}
		for _, want := range []string{"needs 40.0 GiB", "32.0 GiB available of 64.0 GiB"} {
			if !strings.Contains(c.Blocker.Message, want) {
				t.Errorf("blocker %q lacks %q", c.Blocker.Message, want)
			}
		}
		if c.Blocker.Hint == "" {
			t.Error("the blocker has no hint")
		}
	})
	t.Run("two pools that fit alone but not together: one starts", func(t *testing.T) {
		d := defectDesired(ramPool("a", 4, 20), ramPool("b", 4, 20))
		o := Observed{Node: "gpu-01", Source: "sim", GPUs: []gpu.Device{defectGPU(24, nil)}, Host: host(30)}
		p := Plan(d, o, propertyNow)
		if p.Summary.Create != 1 || p.Summary.Blocked != 1 {
			t.Fatalf("want one create and one blocked:\n%s", planText(p))
		}
		for _, c := range p.Changes {
			switch c.Action {
			case Create:
				if c.RAM == nil || c.RAM.Need != 20*giB || c.RAM.Available != 30*giB || c.RAM.Source != "declared" {
					t.Errorf("create %s: RAM line %+v", c.Pool, c.RAM)
				}
			case Blocked:
				if c.Blocker.Class != ClassInsufficientRAM || !strings.Contains(c.Blocker.Message, "10.0 GiB available") {
					t.Errorf("blocked %s: %+v; want insufficient_ram against what the other start leaves (10 GiB)", c.Pool, c.Blocker)
				}
			}
		}
	})
	t.Run("a replace counts the RAM its own engine frees", func(t *testing.T) {
		want := ramPool("a", 4, 20)
		ran := clonePool(want)
		ran.Model.Ctx = 4096
		d := defectDesired(want)
		o := Observed{Node: "gpu-01", Source: "sim", GPUs: []gpu.Device{defectGPU(24, map[int]uint64{100: 4})},
			Host:    &HostMemory{Total: 64 * giB, Available: 5 * giB, Held: map[int]uint64{100: 20 * giB}},
			Engines: map[string]Engine{"a": runningEngine(ran, 100, HealthOK)}}
		p := Plan(d, o, propertyNow)
		if p.Summary.Replace != 1 || p.Changes[0].RAM == nil || p.Changes[0].RAM.Available != 25*giB {
			t.Fatalf("want a replace with 25 GiB available:\n%s", planText(p))
		}
	})
	t.Run("a delete frees RAM for a create", func(t *testing.T) {
		gone := ramPool("gone", 4, 20)
		d := defectDesired(ramPool("new", 4, 20))
		o := Observed{Node: "gpu-01", Source: "sim", GPUs: []gpu.Device{defectGPU(24, map[int]uint64{100: 4})},
			Host:    &HostMemory{Total: 64 * giB, Available: 5 * giB, Held: map[int]uint64{100: 20 * giB}},
			Engines: map[string]Engine{"gone": runningEngine(gone, 100, HealthOK)}}
		if p := Plan(d, o, propertyNow); p.Summary.Create != 1 || p.Summary.Blocked != 0 {
			t.Fatalf("want the create to use the RAM the delete frees:\n%s", planText(p))
		}
	})
	t.Run("no host observed: nothing checked, no RAM line", func(t *testing.T) {
		d := defectDesired(ramPool("big", 4, 400))
		o := Observed{Node: "gpu-01", Source: "sim", GPUs: []gpu.Device{defectGPU(24, nil)}}
		p := Plan(d, o, propertyNow)
		if p.Summary.Create != 1 || p.Changes[0].RAM != nil {
			t.Fatalf("want a create without a RAM line:\n%s", planText(p))
		}
	})
}

// Changing ram restarts nothing: the pool's record is updated in place.
func TestRAMChangeIsInPlace(t *testing.T) {
	for _, tc := range []struct{ from, to int64 }{{0, 8}, {8, 16}, {16, 0}} {
		ran := ramPool("a", 4, tc.from)
		want := ramPool("a", 4, tc.to)
		d := defectDesired(want)
		o := Observed{Node: "gpu-01", Source: "sim", GPUs: []gpu.Device{defectGPU(24, map[int]uint64{100: 4})},
			Host:    &HostMemory{Total: 64 * giB, Available: 1 * giB, Held: map[int]uint64{100: 1 * giB}},
			Engines: map[string]Engine{"a": runningEngine(ran, 100, HealthOK)}}
		p := Plan(d, o, propertyNow)
		if len(p.Changes) != 1 || p.Changes[0].Action != Update {
			t.Fatalf("ram %d → %d GiB: want one update:\n%s", tc.from, tc.to, planText(p))
		}
		if f := p.Changes[0].Fields; len(f) != 1 || f[0].Path != "ram" {
			t.Errorf("ram %d → %d GiB: fields %+v, want ram only", tc.from, tc.to, f)
		}
	}
}
