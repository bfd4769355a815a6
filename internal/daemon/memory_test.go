package daemon

import (
	"slices"
	"testing"
)

func TestMemoryReturnAfterABurst(t *testing.T) {
	tests := []struct {
		name string
		// allocated are the heap counter's readings, one per check; a check
		// that releases reads the counter again, which the next reading answers.
		allocated []uint64
		want      []bool
	}{
		{"nothing allocated", []uint64{0, 0}, []bool{false}},
		{"below the threshold since start", []uint64{99}, []bool{false}},
		{"the threshold since start", []uint64{100, 100}, []bool{true}},
		{"counted from the last return", []uint64{150, 160, 200, 259, 260, 270}, []bool{true, false, false, true}},
		{"small allocations add up", []uint64{40, 80, 120, 125, 200}, []bool{false, false, true, false}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			readings := slices.Clone(tt.allocated)
			released := 0
			m := &memoryReturn{
				after: 100,
				allocated: func() uint64 {
					if len(readings) == 0 {
						t.Fatal("the heap counter was read more often than the test planned")
					}
					n := readings[0]
					readings = readings[1:]
					return n
				},
				release: func() { released++ },
			}
			var got []bool
			for range tt.want {
				got = append(got, m.check())
			}
			if !slices.Equal(got, tt.want) {
				t.Errorf("checks released %v, want %v", got, tt.want)
			}
			if want := countTrue(tt.want); released != want {
				t.Errorf("release called %d times, want %d", released, want)
			}
		})
	}
}

func countTrue(bs []bool) int {
	n := 0
	for _, b := range bs {
		if b {
			n++
		}
	}
	return n
}

// TestHeapAllocatedCounts checks that the daemon reads the runtime's heap
// counter (a metric name that no longer exists reads as zero).
func TestHeapAllocatedCounts(t *testing.T) {
	before := heapAllocated()
	sink := make([][]byte, 0, 64)
	for range 64 {
		sink = append(sink, make([]byte, 1<<20))
	}
	after := heapAllocated()
	if after-before < 64<<20 || len(sink) != 64 {
		t.Errorf("the heap counter went from %d to %d over 64 MiB of allocations", before, after)
	}
}
