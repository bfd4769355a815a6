package cli

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/poolmanagerd/pool-managerd/drivers/engine"
	"github.com/poolmanagerd/pool-managerd/drivers/engine/local"
	"github.com/poolmanagerd/pool-managerd/internal/api"
	"github.com/poolmanagerd/pool-managerd/internal/executor"
	"github.com/poolmanagerd/pool-managerd/internal/observe"
	"github.com/poolmanagerd/pool-managerd/internal/poolview"
	"github.com/poolmanagerd/pool-managerd/internal/state"
	"github.com/poolmanagerd/pool-managerd/reconcile"
)

func newStatusCommand() *cobra.Command {
	var nf nodeFlags
	var format string
	cmd := &cobra.Command{
		Use:   "status",
		Short: "Show each pool's phase, engine, GPU memory, restarts and last error",
		Long: `status reads the state directory and the node's GPUs and shows, for every pool this
node has run: its phase (Preloading, Ready, Unready, Failed, Stopped), its engine
(pid, port), the memory it holds on each GPU, its restarts, the circuit breaker,
and its last error with a hint and the next retry. It changes nothing.`,
		Example: `  pool-managerd status --gpus sim:/tmp/node --state-dir /tmp/state
  pool-managerd status --format json`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			src, node, err := nf.parse()
			if err != nil {
				return err
			}
			if format != "table" && format != "json" {
				return usageError("--format %q: want table or json", format)
			}
			gpus, err := src.open(nil, false)
			if err != nil {
				return fmt.Errorf("status: %w", err)
			}
			defer gpus.Close()
			obs, err := observe.Observe(cmd.Context(), observe.Options{Node: node, GPUs: gpus, Source: src.String(), StateDir: nf.stateDir, ScanProcesses: true})
			if err != nil {
				return fmt.Errorf("status: %w", err)
			}
			st, err := state.Store{Dir: nf.stateDir}.Load()
			if err != nil {
				return fmt.Errorf("status: %w", err)
			}
			rows := poolview.Build(poolview.Input{Observed: obs, State: st, Now: time.Now()})
			if format == "json" {
				enc := json.NewEncoder(cmd.OutOrStdout())
				enc.SetIndent("", "  ")
				return enc.Encode(rows)
			}
			return writeStatusTable(cmd.OutOrStdout(), rows, time.Now())
		},
	}
	nf.register(cmd)
	cmd.Flags().StringVar(&format, "format", "table", "output format: table or json")
	return cmd
}

func writeStatusTable(w io.Writer, rows []api.Pool, now time.Time) error {
	if len(rows) == 0 {
		_, err := fmt.Fprintln(w, "No pools have run on this node yet (the state directory is empty).")
		return err
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "POOL\tPHASE\tREADY\tPID\tENDPOINT\tGPU MEMORY\tRESTARTS\tBREAKER")
	for _, r := range rows {
		var mem []string
		for _, g := range r.GPUs {
			mem = append(mem, fmt.Sprintf("%d: %.1f GiB", g.Index, float64(g.MemoryBytes)/(1<<30)))
		}
		fmt.Fprintf(tw, "%s\t%s\t%v\t%s\t%s\t%s\t%d\t%s\n", r.Pool, r.Phase, yesNo(r.Ready), dash(r.PID), orDash(r.Endpoint), orDash(strings.Join(mem, ", ")), r.Restarts, r.Breaker)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	for _, r := range rows {
		if r.LastError == nil || r.Ready || r.Phase == reconcile.Stopped {
			continue
		}
		fmt.Fprintf(w, "\n%s: %s (%s, %s)\n", r.Pool, r.LastError.Message, r.LastError.Class, r.LastError.Time.Local().Format(time.DateTime))
		fmt.Fprintf(w, "  hint: %s\n", r.LastError.Hint)
		if !r.NextRetry.IsZero() {
			fmt.Fprintf(w, "  next retry in %v\n", roundDelay(r.NextRetry.Sub(now)))
		}
		if r.Log != "" {
			fmt.Fprintf(w, "  log: %s\n", r.Log)
		}
	}
	return nil
}

// roundDelay rounds a delay to what a person reads: milliseconds under a second.
func roundDelay(d time.Duration) time.Duration {
	if d < time.Second {
		return d.Round(time.Millisecond)
	}
	return d.Round(time.Second)
}

func yesNo(b bool) string {
	if b {
		return "yes"
	}
	return "no"
}

func dash(n int) string {
	if n == 0 {
		return "-"
	}
	return fmt.Sprint(n)
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func newResetCommand() *cobra.Command {
	var stateDir string
	cmd := &cobra.Command{
		Use:   "reset POOL...",
		Short: "Close a pool's circuit breaker and clear its backoff, so the next apply starts it",
		Long: `reset closes the circuit breaker of each named pool and clears its backoff, after you
fixed what made it fail (a bad model file, a GPU). Run apply (or let the daemon
reconcile) to start it. It takes the state directory's lock, like apply.`,
		Example: `  pool-managerd reset big --state-dir /var/lib/pool-managerd`,
		Args:    cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			lock, err := lockState(stateDir)
			if errors.Is(err, state.ErrLocked) {
				return viaDaemon(cmd, stateDir, err, func(c *api.Client) ([]api.Pool, error) { return c.Reset(cmd.Context(), args) }, "Reset %s through the daemon: breaker closed, backoff cleared; the daemon starts them.\n", strings.Join(args, ", "))
			}
			if err != nil {
				return fmt.Errorf("reset: %w", err)
			}
			defer lock.Unlock()
			x := offlineExecutor(cmd, stateDir, nil)
			if err := x.ResetPools(args, nil); err != nil {
				if errors.Is(err, executor.ErrNoRecord) {
					st, _ := x.State()
					return fmt.Errorf("%w (in %s; known: %s)", err, stateDir, strings.Join(sortedPoolIDs(st), ", "))
				}
				return fmt.Errorf("reset: %w", err)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "Reset %s: breaker closed, backoff cleared. Run apply to start them.\n", strings.Join(args, ", "))
			return nil
		},
	}
	cmd.Flags().StringVar(&stateDir, "state-dir", DefaultStateDir, "state directory")
	return cmd
}

func sortedPoolIDs(st *state.State) []string {
	var ids []string
	for id := range st.Pools {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	if len(ids) == 0 {
		return []string{"none"}
	}
	return ids
}

// viaDaemon carries out an operator action through the daemon's API when
// the daemon holds the state directory's lock (locked), and prints the pools
// it acted on.
func viaDaemon(cmd *cobra.Command, stateDir string, locked error, call func(*api.Client) ([]api.Pool, error), done string, args ...any) error {
	addr, err := api.ReadAddr(stateDir)
	if err != nil {
		return fmt.Errorf("%s: %w (and no daemon API address to go through: %v)", cmd.Name(), locked, err)
	}
	pools, err := call(api.NewClient(addr, os.Getenv(api.TokenEnv)))
	if err != nil {
		return fmt.Errorf("%s through the daemon at %s: %w", cmd.Name(), addr, err)
	}
	out := cmd.OutOrStdout()
	fmt.Fprintf(out, done, args...)
	return writeStatusTable(out, pools, time.Now())
}

// offlineExecutor is the executor of the CLI's own stop and reset, when no
// daemon holds the state directory: the same one apply and the daemon use.
func offlineExecutor(cmd *cobra.Command, stateDir string, driver engine.Driver) *executor.Executor {
	return &executor.Executor{Engines: driver, Store: state.Store{Dir: stateDir}, Now: time.Now, Rand: rand.Float64,
		Report: func(e executor.Event) {
			if e.Killed {
				fmt.Fprintf(cmd.OutOrStdout(), "%s: %s\n", e.Pool, e.Message)
			}
		}}
}

func newStopCommand() *cobra.Command {
	var stateDir string
	var all bool
	cmd := &cobra.Command{
		Use:   "stop [POOL...] [--all]",
		Short: "Stop pools' engines (drain, SIGTERM, grace period, SIGKILL)",
		Long: `stop stops the engines of the named pools, or of every pool of the node with --all:
it drains busy slots, sends SIGTERM, and SIGKILL after the pool's grace period.
The config is not changed: the next apply (or the daemon) starts them again.
It takes the state directory's lock, like apply.`,
		Example: `  pool-managerd stop coder
  pool-managerd stop --all`,
		RunE: func(cmd *cobra.Command, args []string) error {
			if all == (len(args) > 0) {
				return usageError("name the pools to stop, or --all")
			}
			lock, err := lockState(stateDir)
			if errors.Is(err, state.ErrLocked) {
				what := strings.Join(args, ", ")
				if all {
					what = "every pool"
				}
				return viaDaemon(cmd, stateDir, err, func(c *api.Client) ([]api.Pool, error) { return c.Stop(cmd.Context(), args, all) },
					"Stopped %s through the daemon; it keeps them stopped until pool-managerd reset or a change of their config.\n", what)
			}
			if err != nil {
				return fmt.Errorf("stop: %w", err)
			}
			defer lock.Unlock()
			abs, err := filepath.Abs(stateDir)
			if err != nil {
				return err
			}
			x := offlineExecutor(cmd, stateDir, &local.Driver{StateDir: abs})
			st, err := x.State()
			if err != nil {
				return fmt.Errorf("stop: %w", err)
			}
			// Engines this state directory started but never recorded with a
			// pid (a crash between spawn and record) are found by their marker.
			marked, err := observe.MarkedEngines(abs)
			if err != nil {
				return fmt.Errorf("stop: %w", err)
			}
			ids := args
			if all {
				ids = slices.Sorted(maps.Keys(st.Engines))
				for id, pid := range marked {
					if _, recorded := st.Engines[id]; !recorded && pid != 0 {
						ids = append(ids, id)
					}
				}
				slices.Sort(ids)
				ids = slices.Compact(ids)
			}
			stopped := 0
			for _, id := range ids {
				rec, recorded := st.Engines[id]
				pid, found := marked[id]
				if !recorded && !found {
					return fmt.Errorf("stop: pool %q has no engine in %s", id, stateDir)
				}
				// The recorded engine first, then one found only by its marker
				// (a pool may have one besides its recorded engine, after a crash).
				if recorded {
					if rec.PID != 0 && marked[id] == rec.PID {
						fmt.Fprintf(cmd.OutOrStdout(), "Stopping %s (pid %d)...\n", id, rec.PID)
						stopped++
					}
					if err := x.StopPool(cmd.Context(), id); err != nil {
						return fmt.Errorf("stop %s: %w", id, err)
					}
				}
				if found && pid != rec.PID {
					fmt.Fprintf(cmd.OutOrStdout(), "Stopping %s (pid %d, not in the state file)...\n", id, pid)
					if err := x.StopUnrecorded(cmd.Context(), id, pid); err != nil {
						return fmt.Errorf("stop %s: %w", id, err)
					}
					stopped++
				}
			}
			fmt.Fprintf(cmd.OutOrStdout(), "Stopped %s.\n", plural(stopped, "engine"))
			return nil
		},
	}
	cmd.Flags().StringVar(&stateDir, "state-dir", DefaultStateDir, "state directory")
	cmd.Flags().BoolVar(&all, "all", false, "stop every pool of the node")
	return cmd
}
