package schema

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/poolmanagerd/pool-managerd/testkit/benchgen"
)

// benchSizes are the generated config repositories: 100, 1,000 and 10,000
// pools in 10, 100 and 1,000 pool files.
var benchSizes = []struct{ pools, files int }{{100, 10}, {1000, 100}, {10000, 1000}}

// BenchmarkLoad loads generated config repositories of 100, 1,000 and 10,000
// pools (in 10, 100 and 1,000 pool files); scripts/bench-validate.sh times the
// same sizes against cue vet.
func BenchmarkLoad(b *testing.B) {
	for _, size := range benchSizes {
		b.Run(fmt.Sprint(size.pools), func(b *testing.B) {
			dir := b.TempDir()
			if err := benchgen.Write(dir, size.pools, size.files); err != nil {
				b.Fatal(err)
			}
			ctx := context.Background()
			defer reportCPU(b)()
			for b.Loop() {
				d, err := Load(ctx, dir)
				if err != nil {
					b.Fatal(err)
				}
				if len(d.Pools) != size.pools {
					b.Fatalf("loaded %d pools, want %d", len(d.Pools), size.pools)
				}
			}
			b.ReportMetric(float64(size.pools)*float64(b.N)/b.Elapsed().Seconds(), "pools/s")
		})
	}
}

// BenchmarkLoader times a daemon's loads with one Loader: the first (full)
// load, a reload with nothing changed (the resync), and a reload after one
// pool file is edited. The loader is told the files are old, as a daemon's
// files are when it resyncs: it trusts their stat.
func BenchmarkLoader(b *testing.B) {
	for _, size := range benchSizes {
		dir := b.TempDir()
		if err := benchgen.Write(dir, size.pools, size.files); err != nil {
			b.Fatal(err)
		}
		ctx := context.Background()
		load := func(b *testing.B, l *Loader) {
			d, err := l.Load(ctx, dir)
			if err != nil {
				b.Fatal(err)
			}
			if len(d.Pools) != size.pools {
				b.Fatalf("loaded %d pools, want %d", len(d.Pools), size.pools)
			}
		}
		b.Run(fmt.Sprintf("full/%d", size.pools), func(b *testing.B) {
			defer reportCPU(b)()
			for b.Loop() {
				load(b, NewLoader())
			}
		})
		b.Run(fmt.Sprintf("unchanged/%d", size.pools), func(b *testing.B) {
			l := NewLoader()
			l.now = later
			load(b, l)
			defer reportCPU(b)()
			for b.Loop() {
				load(b, l)
			}
		})
		b.Run(fmt.Sprintf("one-file-edited/%d", size.pools), func(b *testing.B) {
			l := NewLoader()
			l.now = later
			load(b, l)
			path := filepath.Join(dir, "pools", fmt.Sprintf("pools-%0*d.cue", len(fmt.Sprint(size.files-1)), size.files/2))
			orig, err := os.ReadFile(path)
			if err != nil {
				b.Fatal(err)
			}
			defer reportCPU(b)()
			for i := 0; b.Loop(); i++ {
				b.StopTimer()
				// A comment keeps the pools as they are; the file's content changes each time.
				if err := os.WriteFile(path, fmt.Appendf(orig, "// edit %d\n", i), 0o644); err != nil {
					b.Fatal(err)
				}
				b.StartTimer()
				load(b, l)
			}
			b.StopTimer()
			if err := os.WriteFile(path, orig, 0o644); err != nil {
				b.Fatal(err)
			}
		})
	}
}

func later() time.Time { return time.Now().Add(time.Hour) }

// reportCPU reports the process's CPU time (user and system) per
// operation: on a loaded machine it tells more than the wall time.
func reportCPU(b *testing.B) func() {
	start := cpuTime()
	return func() { b.ReportMetric(float64(cpuTime()-start)/float64(time.Millisecond)/float64(b.N), "cpu-ms/op") }
}

func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
