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
	"regexp"
	"runtime/debug"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"unicode"
	"unicode/utf8"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
)

// Exit codes of every pool-managerd command.
const (
	ExitOK      = 0
	ExitFailure = 1
	ExitUsage   = 2
)

// Exit codes of plan --detailed-exitcode (where a usage error is ExitFailure).
const (
	exitChanges = 2
	exitBlocked = 3
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
	cmd, err := root.ExecuteContextC(ctx)
	code, usage := report(namingEnv(cmd, err), &cuttingWriter{w: stderr, values: echoedValues(args, os.Environ())})
	// plan --detailed-exitcode gives 2 the meaning "changes": every failure,
	// a usage error included, is 1 there, so that a PR check cannot read a
	// bad flag or a missing directory as a plan with changes. Decided from
	// the arguments, since cobra may have failed before parsing the flag.
	if usage && wantsDetailedExitCode(root, args) {
		return ExitFailure
	}
	return code
}

// report prints err, if it says something, and returns the exit code it
// stands for and whether it is a usage error.
func report(err error, stderr io.Writer) (code int, usage bool) {
	if err == nil {
		return ExitOK, false
	}
	var ee *exitError
	if errors.As(err, &ee) {
		if ee.err != nil {
			fmt.Fprintf(stderr, "pool-managerd: %v\n", ee.err)
		}
		if ee.code == ExitUsage && ee.err != nil {
			fmt.Fprintln(stderr, "Run 'pool-managerd --help' for usage.")
		}
		// A silent exit with code 2 is plan's "changes", not a usage error.
		return ee.code, ee.code == ExitUsage && ee.err != nil
	}
	fmt.Fprintf(stderr, "pool-managerd: %v\n", err)
	if isCobraUsageError(err) {
		fmt.Fprintln(stderr, "Run 'pool-managerd --help' for usage.")
		return ExitUsage, true
	}
	return ExitFailure, false
}

// A message repeats at most maxEcho bytes of a value whole: a longer one (a
// 3 MiB argument pasted by mistake) is cut to its first echoKeep bytes, an
// ellipsis and its length, each time it is echoed.
const (
	maxEcho  = 256
	echoKeep = 64
	// maxRun is the longest run of non-space bytes a message keeps whole,
	// for long values that come from elsewhere (a file, a derived path).
	maxRun = 1024
)

// echoedValues are the values a message may echo: the arguments, the
// values of --flag=value arguments, and the POOL_MANAGERD_ variables' values.
func echoedValues(args, environ []string) []string {
	var vs []string
	for _, a := range args {
		vs = append(vs, a)
		if _, v, ok := strings.Cut(a, "="); ok && strings.HasPrefix(a, "-") {
			vs = append(vs, v)
		}
	}
	for _, kv := range environ {
		if k, v, ok := strings.Cut(kv, "="); ok && strings.HasPrefix(k, "POOL_MANAGERD_") {
			vs = append(vs, v)
		}
	}
	return vs
}

// cuttingWriter writes messages with their long values cut (cutLongValues).
type cuttingWriter struct {
	w      io.Writer
	values []string
}

func (c *cuttingWriter) Write(p []byte) (int, error) {
	if _, err := io.WriteString(c.w, cutLongValues(string(p), c.values)); err != nil {
		return 0, err
	}
	return len(p), nil
}

// cutLongValues cuts, in msg, each value of values longer than maxEcho
// bytes, as it is and as %q writes it, to its first echoKeep bytes, "…" and
// its length; then any other run of more than maxRun non-space bytes.
func cutLongValues(msg string, values []string) string {
	long := slices.DeleteFunc(slices.Clone(values), func(v string) bool { return len(v) <= maxEcho })
	// The longest first: a value may contain a shorter one (--x=V holds V).
	slices.SortFunc(long, func(a, b string) int { return len(b) - len(a) })
	for _, v := range long {
		if q := strconv.Quote(v); strings.Contains(msg, q) {
			msg = strings.ReplaceAll(msg, q, strconv.Quote(prefix(v, echoKeep))+fmt.Sprintf("…(%d bytes)", len(v)))
		}
		if strings.Contains(msg, v) {
			msg = strings.ReplaceAll(msg, v, cutValue(v))
		}
	}
	var b strings.Builder
	for len(msg) > 0 {
		i := strings.IndexFunc(msg, unicode.IsSpace)
		if i < 0 {
			i = len(msg)
		}
		run := msg[:i]
		if len(run) > maxRun {
			run = cutValue(run)
		}
		b.WriteString(run)
		msg = msg[i:]
		j := strings.IndexFunc(msg, func(r rune) bool { return !unicode.IsSpace(r) })
		if j < 0 {
			j = len(msg)
		}
		b.WriteString(msg[:j])
		msg = msg[j:]
	}
	return b.String()
}

// cutValue is v's first echoKeep bytes, "…" and its length.
func cutValue(v string) string {
	return fmt.Sprintf("%s…(%d bytes)", prefix(v, echoKeep), len(v))
}

// prefix is at most the first n bytes of s, not splitting a UTF-8 character.
func prefix(s string, n int) string {
	if len(s) <= n {
		return s
	}
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n]
}

// flagMention finds the flags a usage error names.
var flagMention = regexp.MustCompile(`--([a-z][a-z0-9-]*)`)

// namingEnv adds to a usage error the environment variables that set the
// flags it names, when they were set that way: POOL_MANAGERD_FORMAT=github
// pool-managerd status says "... (set by POOL_MANAGERD_FORMAT)", since no
// --format was typed. Other errors are returned as they are.
func namingEnv(cmd *cobra.Command, err error) error {
	var ee *exitError
	if cmd == nil || !errors.As(err, &ee) || ee.code != ExitUsage || ee.err == nil {
		return err
	}
	msg := ee.err.Error()
	var vars []string
	for _, m := range flagMention.FindAllStringSubmatch(msg, -1) {
		f := cmd.Flags().Lookup(m[1])
		name := envName(m[1])
		if f == nil || f.Changed || os.Getenv(name) == "" || strings.Contains(msg, name) || slices.Contains(vars, name) {
			continue
		}
		vars = append(vars, name)
	}
	if len(vars) == 0 {
		return err
	}
	return &exitError{code: ExitUsage, err: fmt.Errorf("%w (set by %s)", ee.err, strings.Join(vars, ", "))}
}

// wantsDetailedExitCode reports whether args (before a "--") ask for
// --detailed-exitcode, or the environment does for plan. Any spelling of the
// flag but an explicit false counts: a malformed value, or the flag given to
// a mistyped command, still comes from a script that reads the detailed codes.
func wantsDetailedExitCode(root *cobra.Command, args []string) bool {
	const flag = "--detailed-exitcode"
	asked := false
	if cmd, _, err := root.Find(args); err == nil && cmd.Name() == "plan" {
		if v, ok := os.LookupEnv(envName(flag[2:])); ok && v != "" {
			b, err := strconv.ParseBool(v)
			asked = err != nil || b
		}
	}
	for _, a := range args {
		if a == "--" {
			break
		}
		switch {
		case a == flag:
			asked = true
		case strings.HasPrefix(a, flag+"="):
			b, err := strconv.ParseBool(strings.TrimPrefix(a, flag+"="))
			asked = err != nil || b
		}
	}
	return asked
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

Exit codes: 0 success, 1 failure or invalid config, 2 usage error
(plan --detailed-exitcode: see plan --help).`,
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
	registerCompletions(root)
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
