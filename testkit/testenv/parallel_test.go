package testenv

import (
	"flag"
	"testing"
)

func TestWaitBoundParallel(t *testing.T) {
	for _, tc := range []struct {
		name string
		args []string
		want int
	}{
		{"not set", nil, 2 * ParallelFactor},
		{"set", []string{"-test.parallel=3"}, 3},
		{"other flags", []string{"-test.v"}, 2 * ParallelFactor},
	} {
		t.Run(tc.name, func(t *testing.T) {
			fs := flag.NewFlagSet("test", flag.ContinueOnError)
			parallel := fs.Int("test.parallel", 2, "")
			fs.Bool("test.v", false, "")
			if err := waitBoundParallel(fs, tc.args, 2); err != nil {
				t.Fatal(err)
			}
			if *parallel != tc.want {
				t.Errorf("-test.parallel = %d, want %d", *parallel, tc.want)
			}
		})
	}
}
