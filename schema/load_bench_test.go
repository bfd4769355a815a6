package schema

import (
	"context"
	"fmt"
	"testing"

	"github.com/poolmanagerd/pool-managerd/testkit/benchgen"
)

// BenchmarkLoad loads generated config repositories of 100, 1,000 and 10,000
// pools (in 10, 100 and 1,000 pool files); scripts/bench-validate.sh times the
// same sizes against cue vet.
func BenchmarkLoad(b *testing.B) {
	for _, size := range []struct{ pools, files int }{{100, 10}, {1000, 100}, {10000, 1000}} {
		b.Run(fmt.Sprint(size.pools), func(b *testing.B) {
			dir := b.TempDir()
			if err := benchgen.Write(dir, size.pools, size.files); err != nil {
				b.Fatal(err)
			}
			ctx := context.Background()
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
