// Package cli is the pool-managerd command line: one file per subcommand,
// flags parsed into plain structs, errors printed once, and documented exit
// codes (0 success, 1 failure or invalid config, 2 usage error).
package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"runtime/debug"
	"strings"
	"syscall"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
)

// Exit codes of every pool-managerd command.
const (
	ExitOK      = 0
	ExitFailure = 1
	ExitUsage   = 2
)

// exitError carries an exit code, and a message unless the command printed its own.
type exitError struct {
	code int
	err  error
}

func (e *exitError) Error() string {
	if e.err == nil {
		return ""
	}
	return e.err.Error()
}

func (e *exitError) Unwrap() error { return e.err }

// usageError marks an error in how the command was called.
func usageError(format string, args ...any) error {
	return &exitError{code: ExitUsage, err: fmt.Errorf(format, args...)}
}

// silentExit ends the command with code after it printed what it had to say.
func silentExit(code int) error { return &exitError{code: code} }

// oneShotGCPercent is the garbage collector target of commands that load a
// config and exit (validate, plan). The loader evaluates a config in small
// batches and drops each evaluation once read, so the live heap stays small
// (60-100 MiB at 10,000 pools) and the peak follows GOGC. Measured with
// scripts/gogc-validate.sh at 10,000 pools (medians of 5, a loaded 2-core
// machine), against cue vet's 6.8 s CPU and 720 MiB: GOGC 100 took 6.0 s
// and 186 MiB, 150 5.6 s and 218 MiB, 200 4.7 s and 277 MiB. 200 keeps the
// most margin on CPU (and wall time) while the peak stays well under cue
// vet's. GOGC, when set, wins.
const oneShotGCPercent = 200

// tuneGCForOneShot raises the GC target for a command that runs once and exits.
func tuneGCForOneShot() {
	if os.Getenv("GOGC") == "" {
		debug.SetGCPercent(oneShotGCPercent)
	}
}

// Main runs pool-managerd with args and returns its exit code.
func Main(args []string, stdout, stderr io.Writer) int {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	root := newRootCommand(stdout, stderr)
	root.SetArgs(args)
	err := root.ExecuteContext(ctx)
	if err == nil {
		return ExitOK
	}
	var ee *exitError
	if errors.As(err, &ee) {
		if ee.err != nil {
			fmt.Fprintf(stderr, "pool-managerd: %v\n", ee.err)
		}
		if ee.code == ExitUsage && ee.err != nil {
			fmt.Fprintln(stderr, "Run 'pool-managerd --help' for usage.")
		}
		return ee.code
	}
	fmt.Fprintf(stderr, "pool-managerd: %v\n", err)
	if isCobraUsageError(err) {
		fmt.Fprintln(stderr, "Run 'pool-managerd --help' for usage.")
		return ExitUsage
	}
	return ExitFailure
}

// isCobraUsageError reports errors cobra returns for bad flags and arguments,
// which it raises before a command's RunE.
func isCobraUsageError(err error) bool {
	var u *usageFlagError
	return errors.As(err, &u) || strings.HasPrefix(err.Error(), "unknown command ")
}

// usageFlagError wraps flag and argument errors found by cobra.
type usageFlagError struct{ err error }

func (e *usageFlagError) Error() string { return e.err.Error() }
func (e *usageFlagError) Unwrap() error { return e.err }

func newRootCommand(stdout, stderr io.Writer) *cobra.Command {
	root := &cobra.Command{
		Use:   "pool-managerd",
		Short: "Declarative reconciler for GPU inference pools",
		Long: `pool-managerd runs LLM inference engines (llama.cpp llama-server, vLLM, TGI) on
the GPUs of a node, as declared in CUE files that you keep in Git.

A config directory declares each node's GPUs under "nodes" and the pools
under "pools": which engine serves which model, on which GPUs (the device
mask), and how the model is split across GPUs of different sizes.

Start with:
  pool-managerd validate ./config                  check the config, as a PR check would
  pool-managerd plan ./config --gpus declared      what a fresh node would run
  pool-managerd inventory > config/nodes/$(hostname).cue
                                                   declare this node's GPUs
  pool-managerd plan ./config                      what would change on this node
  pool-managerd sim init /tmp/node                 a simulated node, for --gpus sim:/tmp/node

Exit codes: 0 success, 1 failure or invalid config, 2 usage error.`,
		SilenceErrors: true,
		SilenceUsage:  true,
	}
	root.SetOut(stdout)
	root.SetErr(stderr)
	root.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return &usageFlagError{err} })
	root.PersistentPreRunE = func(cmd *cobra.Command, _ []string) error { return flagsFromEnv(cmd) }
	root.AddCommand(newVersionCommand(), newValidateCommand(), newSchemaCommand(), newPlanCommand(), newApplyCommand(), newServeCommand(), newStatusCommand(), newResetCommand(), newStopCommand(), newWaitCommand(), newInventoryCommand(), newSimCommand())
	for _, c := range root.Commands() {
		wrapArgs(c)
	}
	return root
}

// wrapArgs marks cobra's argument-count errors as usage errors.
func wrapArgs(c *cobra.Command) {
	if c.Args == nil {
		return
	}
	check := c.Args
	c.Args = func(cmd *cobra.Command, args []string) error {
		if err := check(cmd, args); err != nil {
			return &usageFlagError{err}
		}
		return nil
	}
}

// flagsFromEnv sets each flag not given on the command line from its
// environment variable, POOL_MANAGERD_ and the flag's name (see envName).
func flagsFromEnv(cmd *cobra.Command) error {
	var err error
	cmd.Flags().VisitAll(func(f *pflag.Flag) {
		if err != nil || f.Changed || f.Name == "help" {
			return
		}
		v, ok := os.LookupEnv(envName(f.Name))
		if !ok || v == "" {
			return
		}
		if serr := f.Value.Set(v); serr != nil {
			err = usageError("%s=%q (for --%s): %v", envName(f.Name), v, f.Name, serr)
		}
	})
	return err
}
