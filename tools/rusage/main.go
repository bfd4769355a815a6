// Command rusage runs a command and prints what it cost, for the benchmark
// scripts: wall-clock seconds, CPU seconds (user + system) and peak resident
// memory in KiB, on one line ("WALL CPU MAXRSS_KIB"), to the file named by
// -o (standard error when empty). The command's own output goes where
// rusage's does; its exit status is rusage's.
//
//	go run ./tools/rusage -o cost.txt -- pool-managerd validate DIR
package main

import (
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"syscall"
	"time"
)

func main() {
	out := flag.String("o", "", "write the cost line to this file (default: standard error)")
	flag.Parse()
	if flag.NArg() == 0 {
		fmt.Fprintln(os.Stderr, "usage: rusage [-o FILE] -- COMMAND [ARG...]")
		os.Exit(2)
	}
	cmd := exec.Command(flag.Arg(0), flag.Args()[1:]...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
	start := time.Now()
	err := cmd.Run()
	wall := time.Since(start)
	var exit *exec.ExitError
	if err != nil && !errors.As(err, &exit) {
		fmt.Fprintln(os.Stderr, "rusage:", err)
		os.Exit(127)
	}
	ru, ok := cmd.ProcessState.SysUsage().(*syscall.Rusage)
	if !ok {
		fmt.Fprintln(os.Stderr, "rusage: no resource usage on this system")
		os.Exit(1)
	}
	cpu := time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
	line := fmt.Sprintf("%.3f %.3f %d\n", wall.Seconds(), cpu.Seconds(), ru.Maxrss) // Maxrss is in KiB on Linux
	if *out == "" {
		fmt.Fprint(os.Stderr, line)
	} else if err := os.WriteFile(*out, []byte(line), 0o644); err != nil {
		fmt.Fprintln(os.Stderr, "rusage:", err)
		os.Exit(1)
	}
	os.Exit(cmd.ProcessState.ExitCode())
}
