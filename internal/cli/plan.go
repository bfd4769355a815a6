package cli

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/poolmanagerd/pool-managerd/internal/observe"
	"github.com/poolmanagerd/pool-managerd/reconcile"
	"github.com/poolmanagerd/pool-managerd/schema"
)

// planOptions are the parsed arguments of `pool-managerd plan`.
type planOptions struct {
	Dir              string
	GPUs             gpuSource
	StateDir         string
	Node             string
	DetailedExitCode bool
	Out              string
	Format           string
	// nodeGiven: --node was given (not defaulted to the host name).
	nodeGiven bool
	// Models: --model-cache, --offline, --model-token-file, --model-token-hosts.
	Models modelFlags
}

// DefaultStateDir is where pool-managerd keeps its state file, engine logs and lock.
const DefaultStateDir = "/var/lib/pool-managerd"

func parsePlanArgs(args []string, gpus, stateDir, node, out, format string, detailed bool) (planOptions, error) {
	o := planOptions{Dir: ".", StateDir: stateDir, Node: node, Out: out, Format: format, DetailedExitCode: detailed, nodeGiven: node != ""}
	if len(args) == 1 {
		o.Dir = args[0]
	}
	src, err := parseGPUSource(gpus)
	if err != nil {
		return o, err
	}
	o.GPUs = src
	if o.Format != "text" && o.Format != "json" {
		return o, usageError("--format %q: want text or json", o.Format)
	}
	if o.Node == "" && o.GPUs.Kind != "declared" {
		o.Node = defaultNode()
	}
	if o.Out != "" && o.Node == "" {
		return o, usageError("--out saves the plan of one node: name it with --node")
	}
	return o, nil
}

func newPlanCommand() *cobra.Command {
	var gpus, stateDir, node, out, format string
	var detailed bool
	var models modelFlags
	cmd := &cobra.Command{
		Use:   "plan [DIR]",
		Short: "Show what pool-managerd would change on a node, and why",
		Long: `plan compares the config in DIR (default: the current directory) with what the node
really runs — its GPUs (NVML, a simulated node, or the config's declared inventory)
and the engines recorded in the state directory, checked against live processes
and their health endpoints — and prints the changes, like terraform plan:

  +   create    start an engine for a pool that has none
  ~   update    a change that needs no restart (restart policy, sharing)
  -/+ replace   a change that needs a new engine (model, mask, split, flags, ...)
  -   delete    stop an engine whose pool is gone
  ↻   restart   start again an engine that crashed or fails its health check
  ←   adopt     take over a running engine the state file does not know
  !   blocked   will not run, with the reason and a hint (not enough VRAM, ...)

Nothing is changed. --out saves the plan for 'pool-managerd apply FILE'.

A pool whose model has a source (model.source) is looked up in the model cache
(--model-cache); a start of one that is not there shows the download first
("fetch 4.1 GiB from hf://…"), with its size as the source tells it. Its VRAM
need is estimated from the cached file, or else from the GGUF header read at
the source with range requests (nothing else is downloaded; at most 30 s per
source), so a PR check fails for a model too big for its GPUs. A source that
cannot be reached is a warning, and the need is checked before the engine
starts. --offline asks no source: a model not in the cache then fails apply
and serve, and the plan says so. A token for private sources comes from
--model-token-file (which wins) or POOL_MANAGERD_MODEL_TOKEN, and is sent only
to a source on a host of --model-token-hosts (default huggingface.co; exact
names, no subdomains), over https, never after a redirect that changes the
scheme, host or port: a source a pull request names on another host gets no
token.
With --gpus declared it needs no GPU and no state: a pull-request check of what a
fresh node would run (every declared node unless --node is given).

Exit codes:
                       without --detailed-exitcode   with --detailed-exitcode
  plan made            0                             0 no changes, 2 changes
  a change blocked     0 (1 with --gpus declared)    3
  error                1                             1
  usage error          2                             1
With --gpus declared a blocked change is an error: a config that cannot fit its
declared GPUs fails a pull-request check.`,
		Example: `  pool-managerd plan ./config --gpus declared                 # PR check, every node
  pool-managerd plan ./config --gpus sim:/tmp/node --state-dir /tmp/state --node gpu-01
  pool-managerd plan ./config --out plan.json && pool-managerd apply plan.json`,
		Args: cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			opts, err := parsePlanArgs(args, gpus, stateDir, node, out, format, detailed)
			if err != nil {
				return err
			}
			opts.Models = models
			tuneGCForOneShot()
			return runPlan(cmd, opts)
		},
	}
	f := cmd.Flags()
	f.StringVar(&gpus, "gpus", "nvml", gpusFlagHelp)
	f.StringVar(&stateDir, "state-dir", DefaultStateDir, "state directory (state file, engine logs); a missing one is a fresh node")
	f.StringVar(&node, "node", "", "node to plan (default: the host name; with --gpus declared: every declared node)")
	f.StringVar(&out, "out", "", "save the plan as JSON to this file, for apply")
	f.StringVar(&format, "format", "text", "output format: text or json")
	f.BoolVar(&detailed, "detailed-exitcode", false, "exit 0 when there are no changes, 2 when there are, 3 when one is blocked, 1 on any error (usage errors too)")
	models.registerLookup(cmd)
	return cmd
}

func runPlan(cmd *cobra.Command, opts planOptions) error {
	ctx := cmd.Context()
	token, err := opts.Models.token()
	if err != nil {
		return err
	}
	cfg, err := schema.Load(ctx, opts.Dir)
	if err != nil {
		return configError(opts.Dir, err)
	}
	nodes := cfg.SortedNodeNames() // --gpus declared without --node: every node
	if opts.Node != "" {
		nodes = []string{chooseNode(cmd.ErrOrStderr(), cfg, opts.Dir, opts.GPUs, opts.Node, opts.nodeGiven)}
	}
	changes := false
	var blocked []string // "pool on node", for the message of a PR check
	var out bytes.Buffer
	byNode := reconcile.DesiredByNode(cfg)
	for i, node := range nodes {
		desired, ok := byNode[node]
		if !ok {
			desired = reconcile.DesiredFor(cfg, node)
		}
		plan, err := planNode(cmd, cfg, desired, opts, token)
		if err != nil {
			return err
		}
		if abs, err := filepath.Abs(opts.Dir); err == nil {
			plan.Config = abs
		}
		changes = changes || plan.HasChanges()
		for _, c := range plan.Changes {
			if c.Action == reconcile.Blocked {
				blocked = append(blocked, fmt.Sprintf("%s on %s", c.Pool, plan.Node))
			}
		}
		if i > 0 && opts.Format == "text" {
			out.WriteString("\n")
		}
		switch opts.Format {
		case "json":
			err = reconcile.WriteJSON(&out, plan)
		default:
			err = reconcile.WriteText(&out, plan, reconcile.TextOptions{Color: isTerminal(cmd.OutOrStdout())})
		}
		if err != nil {
			return err
		}
		if opts.Out != "" {
			if err := savePlan(opts.Out, plan); err != nil {
				return err
			}
			// On stderr, so that --format json leaves stdout one JSON document.
			defer fmt.Fprintf(cmd.ErrOrStderr(), "Saved the plan to %s; apply it with: pool-managerd apply %s\n", opts.Out, opts.Out)
		}
	}
	if _, err := cmd.OutOrStdout().Write(out.Bytes()); err != nil {
		return err
	}
	return planExit(opts, changes, blocked)
}

// planExit is plan's exit, after the plan is printed (see plan --help):
// with --detailed-exitcode 3 when a change is blocked, else 2 when there are
// changes; without it, a blocked change with --gpus declared is an error (a
// config that cannot fit its declared GPUs fails a PR check).
func planExit(opts planOptions, changes bool, blocked []string) error {
	switch {
	case opts.DetailedExitCode && len(blocked) > 0:
		return silentExit(exitBlocked)
	case opts.DetailedExitCode && changes:
		return silentExit(exitChanges)
	case opts.DetailedExitCode:
		return nil
	case len(blocked) > 0 && opts.GPUs.Kind == "declared":
		return &exitError{code: ExitFailure, err: fmt.Errorf("plan: %s blocked on the declared GPUs: %s", plural(len(blocked), "pool"), strings.Join(blocked, ", "))}
	}
	return nil
}

// modelLookup is where plan looks for fetched models: the node's model
// cache, and the sources themselves unless --offline. With --gpus declared
// (a fresh node) the cache is used only for estimates, and only when
// --model-cache names it; nothing counts as cached there.
func (o planOptions) modelLookup(token string) observe.ModelLookup {
	m := observe.ModelLookup{Remote: !o.Models.offline, Offline: o.Models.offline, Auth: o.Models.auth(token)}
	switch {
	case o.GPUs.Kind != "declared":
		m.Cache = o.Models.cacheDir(o.StateDir)
	case o.Models.cache != "":
		m.Cache = o.Models.cache
	}
	return m
}

// planNode observes one node and plans it.
func planNode(cmd *cobra.Command, cfg *schema.Desired, desired reconcile.Desired, opts planOptions, token string) (*reconcile.NodePlan, error) {
	ctx := cmd.Context()
	node := desired.Node
	declaredNode := cfg.Nodes[node]
	if opts.GPUs.Kind == "declared" && declaredNode == nil {
		return nil, fmt.Errorf("plan: node %q is not declared in %s (declared: %s)", node, opts.Dir, strings.Join(cfg.SortedNodeNames(), ", "))
	}
	gpus, err := opts.GPUs.open(declaredNode, true)
	if err != nil {
		return nil, fmt.Errorf("plan: %w", err)
	}
	defer gpus.Close()
	lookup := opts.modelLookup(token)
	lookup.Needs(ctx, &desired)
	obsOpts := observe.Options{Node: node, GPUs: gpus, Source: opts.GPUs.String(), Host: opts.GPUs.host(),
		Models: observe.ModelLookup{Offline: opts.Models.offline}}
	if opts.GPUs.Kind != "declared" {
		obsOpts.StateDir = opts.StateDir
		obsOpts.ScanProcesses = true
		obsOpts.Models, obsOpts.Pools = lookup, desired.Pools
	}
	observed, err := observe.Observe(ctx, obsOpts)
	if err != nil {
		return nil, fmt.Errorf("plan: %w", err)
	}
	return reconcile.Plan(desired, observed, time.Now()), nil
}

// configError turns a load failure into the command's error: the diagnostics, one a line.
func configError(dir string, err error) error {
	var diags schema.Diagnostics
	if errors.As(err, &diags) {
		return fmt.Errorf("the config in %s is invalid (%s; see pool-managerd validate %s):\n%w", dir, plural(len(diags), "problem"), dir, err)
	}
	if errors.Is(err, schema.ErrNotDirectory) {
		return &exitError{code: ExitUsage, err: fmt.Errorf("%s: %w", dir, err)}
	}
	return err
}

// savePlan writes a plan file atomically.
func savePlan(path string, plan *reconcile.NodePlan) error {
	var buf bytes.Buffer
	if err := reconcile.WriteJSON(&buf, plan); err != nil {
		return err
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), ".plan-*.json")
	if err != nil {
		return fmt.Errorf("save plan: %w", err)
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(buf.Bytes()); err != nil {
		tmp.Close()
		return fmt.Errorf("save plan: %w", err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("save plan: %w", err)
	}
	if err := os.Chmod(tmp.Name(), 0o644); err != nil {
		return fmt.Errorf("save plan: %w", err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return fmt.Errorf("save plan: %w", err)
	}
	return nil
}

// isTerminal reports whether w is a terminal (for colour); NO_COLOR turns colour off.
func isTerminal(w io.Writer) bool {
	if os.Getenv("NO_COLOR") != "" {
		return false
	}
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	info, err := f.Stat()
	return err == nil && info.Mode()&os.ModeCharDevice != 0
}
