package testenv

import (
	"flag"
	"fmt"
	"os"
	"runtime"
	"strconv"
)

// ParallelFactor is how many tests that mostly wait on the programs they
// run (engines loading, backoffs, a daemon's passes) go at once per CPU:
// with go test's default of one per CPU, the CPUs sit idle while they wait.
const ParallelFactor = 2

// WaitBoundParallel sets -test.parallel to ParallelFactor times GOMAXPROCS,
// unless the command line set it (go test -parallel N passes it on). Call it
// from TestMain before m.Run; it parses the command line.
func WaitBoundParallel() error {
	return waitBoundParallel(flag.CommandLine, os.Args[1:], runtime.GOMAXPROCS(0))
}

func waitBoundParallel(fs *flag.FlagSet, args []string, procs int) error {
	if !fs.Parsed() {
		if err := fs.Parse(args); err != nil {
			return fmt.Errorf("testenv: %w", err)
		}
	}
	set := false
	fs.Visit(func(f *flag.Flag) { set = set || f.Name == "test.parallel" })
	if set {
		return nil
	}
	if err := fs.Set("test.parallel", strconv.Itoa(ParallelFactor*procs)); err != nil {
		return fmt.Errorf("testenv: -test.parallel: %w", err)
	}
	return nil
}
