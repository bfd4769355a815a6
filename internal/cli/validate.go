package cli

import (
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/spf13/cobra"

	"github.com/poolmanagerd/pool-managerd/schema"
)

// validateOptions are the parsed arguments of `pool-managerd validate`.
type validateOptions struct {
	Dir    string
	Format string
}

var validateFormats = []string{"text", "json", "github"}

// parseValidateArgs turns the command's arguments into options; it is pure, so tests call it directly.
func parseValidateArgs(args []string, format string) (validateOptions, error) {
	o := validateOptions{Dir: ".", Format: format}
	if len(args) == 1 {
		o.Dir = args[0]
	}
	if !slices.Contains(validateFormats, o.Format) {
		return o, usageError("--format %q: want one of %s", o.Format, strings.Join(validateFormats, ", "))
	}
	return o, nil
}

func newValidateCommand() *cobra.Command {
	var format string
	cmd := &cobra.Command{
		Use:   "validate [DIR]",
		Short: "Check a config directory against the schema and the declared GPUs",
		Long: `validate reads every .cue file under DIR (default: the current directory) as one
CUE package and checks it: the schema (field types, engines, durations), the
pools against their nodes' declared GPUs (device masks, split ratios and their
caps, shared GPUs), and engine flags (none that pool-managerd sets itself, none
that would run part of a model on the CPU).

It touches no GPU and no engine, so it runs anywhere, as a pull-request check.
Every problem is reported with its file, line and column.

Exit codes: 0 valid, 1 invalid, 2 usage error (such as DIR not being a directory).`,
		Example: `  pool-managerd validate ./config
  pool-managerd validate --format json ./config
  pool-managerd validate --format github ./config   # annotations in GitHub Actions`,
		Args: cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			opts, err := parseValidateArgs(args, format)
			if err != nil {
				return err
			}
			tuneGCForOneShot()
			return runValidate(cmd, opts)
		},
	}
	cmd.Flags().StringVar(&format, "format", "text", "output format: text, json or github (GitHub Actions annotations)")
	return cmd
}

// validateReport is the JSON output of validate.
type validateReport struct {
	Valid       bool                `json:"valid"`
	Dir         string              `json:"dir"`
	Pools       int                 `json:"pools"`
	Nodes       int                 `json:"nodes"`
	GPUs        int                 `json:"gpus"`
	Files       int                 `json:"files"`
	Diagnostics []schema.Diagnostic `json:"diagnostics"`
}

func runValidate(cmd *cobra.Command, opts validateOptions) error {
	desired, err := schema.Load(cmd.Context(), opts.Dir)
	var diags schema.Diagnostics
	switch {
	case errors.Is(err, schema.ErrNotDirectory):
		return &exitError{code: ExitUsage, err: fmt.Errorf("validate %s: %w", opts.Dir, err)}
	case errors.As(err, &diags):
	case err != nil:
		return fmt.Errorf("validate %s: %w", opts.Dir, err)
	}
	report := validateReport{Valid: err == nil, Dir: opts.Dir, Diagnostics: diags}
	if report.Diagnostics == nil {
		report.Diagnostics = schema.Diagnostics{}
	}
	if desired != nil {
		report.Pools, report.Nodes, report.GPUs, report.Files = len(desired.Pools), len(desired.Nodes), desired.GPUCount(), len(desired.Files)
	}
	out := cmd.OutOrStdout()
	switch opts.Format {
	case "json":
		enc := json.NewEncoder(out)
		enc.SetIndent("", "  ")
		if err := enc.Encode(report); err != nil {
			return err
		}
	case "github":
		for _, d := range diags {
			fmt.Fprintln(out, githubAnnotation(d))
		}
		fmt.Fprintln(out, summaryLine(report))
	default:
		for _, d := range diags {
			fmt.Fprintln(out, d.String())
		}
		fmt.Fprintln(out, summaryLine(report))
	}
	if !report.Valid {
		return silentExit(ExitFailure)
	}
	return nil
}

func summaryLine(r validateReport) string {
	if !r.Valid {
		files := map[string]bool{}
		for _, d := range r.Diagnostics {
			files[d.Pos.File] = true
		}
		return fmt.Sprintf("%s: invalid: %s in %s", r.Dir, plural(len(r.Diagnostics), "error"), plural(len(files), "file"))
	}
	return fmt.Sprintf("%s: valid: %s, %s, %s in %s", r.Dir, plural(r.Pools, "pool"), plural(r.Nodes, "node"), plural(r.GPUs, "GPU"), plural(r.Files, "file"))
}

func plural(n int, noun string) string {
	if n == 1 {
		return "1 " + noun
	}
	return fmt.Sprintf("%d %ss", n, noun)
}

// githubAnnotation formats a diagnostic as a GitHub Actions workflow command,
// escaped as the runner expects.
func githubAnnotation(d schema.Diagnostic) string {
	var props []string
	if d.Pos.File != "" {
		props = append(props, "file="+escapeProperty(d.Pos.File))
	}
	if d.Pos.Line > 0 {
		props = append(props, fmt.Sprintf("line=%d", d.Pos.Line), fmt.Sprintf("col=%d", d.Pos.Column))
	}
	title := "pool-managerd validate"
	if d.Path != "" {
		title += ": " + d.Path
	}
	props = append(props, "title="+escapeProperty(title))
	return fmt.Sprintf("::error %s::%s", strings.Join(props, ","), escapeData(d.Message))
}

func escapeData(s string) string {
	return strings.NewReplacer("%", "%25", "\r", "%0D", "\n", "%0A").Replace(s)
}

func escapeProperty(s string) string {
	return strings.NewReplacer("%", "%25", "\r", "%0D", "\n", "%0A", ":", "%3A", ",", "%2C").Replace(s)
}
