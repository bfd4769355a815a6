package reconcile

import (
	"testing"
	"time"

	"github.com/poolmanagerd/pool-managerd/drivers/gpu"
)

// A pool that left the config and waits for its removal to settle is kept
// (its engine serves, nothing is planned for it); a start that lacks the
// memory it holds waits as awaiting_removal, and only that start.
func TestPlanSettlingRemoval(t *testing.T) {
	old, renamed := defectPool("old", 12, 0), defectPool("renamed", 12, 0)
	small := defectPool("small", 2, 0)
	at := propertyNow.Add(5 * time.Second)
	obs := Observed{Node: "gpu-01", Source: "sim", GPUs: []gpu.Device{defectGPU(16, map[int]uint64{100: 12})},
		Engines: map[string]Engine{"old": runningEngine(old, 100, HealthOK)}}
	tests := []struct {
		name     string
		desired  Desired
		wantPool string // the change planned, "" for none
		want     Action
		class    string
	}{
		{"settling and alone: nothing to do", withSettling(defectDesired(old), "old", at), "", "", ""},
		{"settled: deleted", defectDesired(), "old", Delete, ""},
		{"a start that needs its memory waits for it", withSettling(defectDesired(old, renamed), "old", at), "renamed", Blocked, ClassAwaitingRemoval},
		{"a start that fits beside it goes ahead", withSettling(defectDesired(old, small), "old", at), "small", Create, ""},
		{"without a settling pool it is short of memory", defectDesired(old, renamed), "renamed", Blocked, ClassInsufficientVRAM},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := Plan(tt.desired, obs, propertyNow)
			if tt.wantPool == "" {
				if len(p.Changes) != 0 {
					t.Fatalf("changes planned:\n%s", planText(p))
				}
				return
			}
			if len(p.Changes) != 1 || p.Changes[0].Pool != tt.wantPool || p.Changes[0].Action != tt.want {
				t.Fatalf("want one %s of %s, got:\n%s", tt.want, tt.wantPool, planText(p))
			}
			c := p.Changes[0]
			if got := ""; c.Blocker != nil {
				got = c.Blocker.Class
				if got != tt.class {
					t.Errorf("blocker class %q, want %q (%s)", got, tt.class, c.Blocker.Message)
				}
			} else if tt.class != "" {
				t.Errorf("not blocked, want class %q", tt.class)
			}
			if tt.class == ClassAwaitingRemoval {
				st := Lifecycle(Facts{Spec: tt.desired.Pools[c.Pool], Blocked: c.Blocker.Class}, propertyNow)
				if st.Phase != Pending {
					t.Errorf("a start awaiting a removal is %s, want Pending (not a failure)", st.Phase)
				}
			}
		})
	}
}

func withSettling(d Desired, pool string, at time.Time) Desired {
	d.Settling = map[string]time.Time{pool: at}
	return d
}
