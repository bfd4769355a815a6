package cli

import (
	"errors"
	"os"
	"os/exec"
	"strconv"
	"testing"

	"github.com/rogpeppe/go-internal/testscript"

	"github.com/poolmanagerd/pool-managerd/testkit/ggufgen"
)

// TestMain lets the scripts run pool-managerd as a command: testscript
// re-executes this test binary under that name, which runs Main.
func TestMain(m *testing.M) {
	testscript.Main(m, map[string]func(){
		"pool-managerd": func() { os.Exit(Main(os.Args[1:], os.Stdout, os.Stderr)) },
	})
}

// TestScripts runs the command-line scripts in testdata/script, one subtest
// each: go test -run TestScripts/validate_json ./internal/cli
func TestScripts(t *testing.T) {
	testscript.Run(t, testscript.Params{
		Dir:                 "testdata/script",
		RequireExplicitExec: true,
		RequireUniqueNames:  true,
		Cmds:                map[string]func(*testscript.TestScript, bool, []string){"exits": cmdExits, "ggufgen": cmdGGUFGen, "expand": cmdExpand},
	})
}

// cmdExits runs a command, as exec does, and checks its exit status:
//
//	exits 2 pool-managerd validate --format yaml
//
// Its stdout and stderr can be checked afterwards, as after exec.
func cmdExits(ts *testscript.TestScript, neg bool, args []string) {
	if neg {
		ts.Fatalf("unsupported: ! exits")
	}
	if len(args) < 2 {
		ts.Fatalf("usage: exits CODE COMMAND [ARGS...]")
	}
	want, err := strconv.Atoi(args[0])
	if err != nil {
		ts.Fatalf("exits: bad exit code %q", args[0])
	}
	got := 0
	if err := ts.Exec(args[1], args[2:]...); err != nil {
		var ee *exec.ExitError
		if !errors.As(err, &ee) {
			ts.Fatalf("exits: %v", err)
		}
		got = ee.ExitCode()
	}
	if got != want {
		ts.Fatalf("%s exited with %d, want %d", args[1], got, want)
	}
}

// cmdGGUFGen writes a synthetic GGUF model of a 7B Llama (F16, about 13 GiB,
// sparse) for plans to estimate:
//
//	ggufgen models/big.gguf
func cmdGGUFGen(ts *testscript.TestScript, neg bool, args []string) {
	if neg || len(args) != 1 {
		ts.Fatalf("usage: ggufgen FILE")
	}
	m := ggufgen.Llama7B()
	m.Quant = "F16"
	if _, err := ggufgen.Write(ts.MkAbs(args[0]), m); err != nil {
		ts.Fatalf("ggufgen: %v", err)
	}
}

// cmdExpand replaces $NAME and ${NAME} in a file with the script's
// variables, for a config that must name a path under $WORK:
//
//	expand toobig/pools.cue
func cmdExpand(ts *testscript.TestScript, neg bool, args []string) {
	if neg || len(args) != 1 {
		ts.Fatalf("usage: expand FILE")
	}
	path := ts.MkAbs(args[0])
	data := ts.ReadFile(args[0])
	ts.Check(os.WriteFile(path, []byte(os.Expand(data, ts.Getenv)), 0o644))
}
