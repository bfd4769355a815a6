package local

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/poolmanagerd/pool-managerd/drivers/engine"
	"github.com/poolmanagerd/pool-managerd/drivers/gpu"
	"github.com/poolmanagerd/pool-managerd/schema"
)

func TestFreePort(t *testing.T) {
	p, err := freePort()
	if err != nil || p <= 0 || p > 65535 {
		t.Fatalf("freePort() = %d, %v", p, err)
	}
}

// slotsServer answers /slots with busy slots until busyFor has passed.
func slotsServer(t *testing.T, busy int, busyFor time.Duration) (port int, calls *atomic.Int32) {
	t.Helper()
	calls = &atomic.Int32{}
	start := time.Now()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		calls.Add(1)
		var slots []string
		for i := 0; i < 2; i++ {
			processing := i < busy && time.Since(start) < busyFor
			slots = append(slots, fmt.Sprintf(`{"id":%d,"is_processing":%v}`, i, processing))
		}
		fmt.Fprintf(w, "[%s]", strings.Join(slots, ","))
	}))
	t.Cleanup(srv.Close)
	u, err := url.Parse(srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	port, err = strconv.Atoi(u.Port())
	if err != nil {
		t.Fatal(err)
	}
	return port, calls
}

func TestDrainSlots(t *testing.T) {
	t.Run("waits until idle", func(t *testing.T) {
		port, calls := slotsServer(t, 1, 300*time.Millisecond)
		start := time.Now()
		if err := drainSlots(context.Background(), port); err != nil {
			t.Fatal(err)
		}
		if waited := time.Since(start); waited < 300*time.Millisecond {
			t.Errorf("drain returned after %v, before the busy slot became idle", waited)
		}
		if calls.Load() < 2 {
			t.Errorf("/slots asked %d times, want it polled", calls.Load())
		}
	})
	t.Run("bounded by its context", func(t *testing.T) {
		port, _ := slotsServer(t, 2, time.Hour)
		ctx, cancel := context.WithTimeout(context.Background(), 250*time.Millisecond)
		defer cancel()
		if err := drainSlots(ctx, port); err == nil {
			t.Fatal("drain of slots busy for an hour returned without error")
		}
	})
	t.Run("an engine that does not answer has nothing to drain", func(t *testing.T) {
		port, err := freePort()
		if err != nil {
			t.Fatal(err)
		}
		if err := drainSlots(context.Background(), port); err != nil {
			t.Fatal(err)
		}
	})
}

func TestLogTail(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "pool.log")
	// An earlier run's CUDA error is not this run's.
	old := "-- pool-managerd 2026-11-27T12:00:00Z: start fake-engine\nCUDA error: out of memory\n"
	if err := os.WriteFile(path, []byte(old+"-- pool-managerd 2026-11-27T12:01:00Z: start fake-engine\nexiting due to model loading error\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if tail := (&process{logPath: path}).LogTail(); strings.Contains(tail, "CUDA error") || !strings.Contains(tail, "model loading error") {
		t.Errorf("LogTail = %q, want only the last run's output", tail)
	}
	big := strings.Repeat("x", 20<<10) + "\nCUDA error: out of memory\n"
	if err := os.WriteFile(path, []byte(big), 0o644); err != nil {
		t.Fatal(err)
	}
	p := &process{logPath: path}
	tail := p.LogTail()
	if len(tail) != 16<<10 || !strings.HasSuffix(tail, "CUDA error: out of memory\n") {
		t.Errorf("LogTail: %d bytes ending %q, want the last 16 KiB", len(tail), tail[max(0, len(tail)-30):])
	}
	if (&process{logPath: filepath.Join(dir, "missing.log")}).LogTail() != "" {
		t.Error("LogTail of a missing log is not empty")
	}
}

func TestAttribution(t *testing.T) {
	gpus := []gpu.Device{{Index: 1}, {Index: 0}}
	for _, tt := range []struct {
		name string
		pool schema.Pool
		need uint64
		want map[int]uint64
	}{
		{"one GPU", schema.Pool{Engine: schema.EngineLlamaCpp, Devices: []int{1}}, 3000, map[int]uint64{1: 3000}},
		{"llama.cpp by its split", schema.Pool{Engine: schema.EngineLlamaCpp, Devices: []int{1, 0}, Split: []float64{3, 1}}, 4000, map[int]uint64{1: 3000, 0: 1000}},
		{"an even split, the remainder last", schema.Pool{Engine: schema.EngineLlamaCpp, Devices: []int{1, 0}}, 3001, map[int]uint64{1: 1500, 0: 1501}},
		{"vLLM evenly", schema.Pool{Engine: schema.EngineVLLM, Devices: []int{1, 0}, Split: []float64{3, 1}}, 4000, map[int]uint64{1: 2000, 0: 2000}},
		{"no need", schema.Pool{Engine: schema.EngineLlamaCpp, Devices: []int{1}}, 0, nil},
	} {
		t.Run(tt.name, func(t *testing.T) {
			req := engine.StartRequest{Pool: &tt.pool, GPUs: gpus[:len(tt.pool.Devices)], Need: tt.need}
			got := Attribution(req)
			if len(got) != len(tt.want) {
				t.Fatalf("%v, want %v", got, tt.want)
			}
			for k, v := range tt.want {
				if got[k] != v {
					t.Errorf("%v, want %v", got, tt.want)
				}
			}
		})
	}
}
