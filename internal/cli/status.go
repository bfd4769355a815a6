package cli

import (
	"context"
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
	"github.com/poolmanagerd/pool-managerd/drivers/model/cache"
	"github.com/poolmanagerd/pool-managerd/internal/api"
	"github.com/poolmanagerd/pool-managerd/internal/executor"
	"github.com/poolmanagerd/pool-managerd/internal/observe"
	"github.com/poolmanagerd/pool-managerd/internal/poolview"
	"github.com/poolmanagerd/pool-managerd/internal/state"
	"github.com/poolmanagerd/pool-managerd/reconcile"
)

func newStatusCommand() *cobra.Command {
	var nf nodeFlags
	var format, field, modelCache string
	cmd := &cobra.Command{
		Use:   "status [POOL...]",
		Short: "Show each pool's phase, engine, GPU memory, restarts and last error",
		Long: `status reads the state directory and the node's GPUs and shows, for every pool this
node has run (or the named pools): its phase as the pool lifecycle decides it
(Pending, Fetching, Preloading, Ready, Unready, Draining, Failed, Stopped), its engine (pid,
port), the memory it holds on each GPU, its restarts, the circuit breaker, and
its last error with a hint and the next retry. Without the config at hand, a
pool is taken to want what its engine was started from. While a daemon runs on
the state directory, status shows the pools as the daemon sees them (GET
/v1/pools at STATE_DIR/api.addr): with the config in force, and the downloads
of pools in phase Fetching with their progress. Above the table it
prints the revision of the config the daemon last applied (the commit, and its
branch or tag) when that config came from Git. Below it, a line gives the model
cache's size (--model-cache, default STATE_DIR/models): its models, its bytes and
the downloads not finished. It changes nothing.

--field NAME prints one value of one pool, alone on a line, for scripts:
` + statusFieldList() + `.
pid, port and endpoint exit 1 when the pool has no engine.

--format json prints one object, {"formatVersion": 1, "pools": [...]}, each
pool as the daemon's API gives it (GET /v1/pools in docs/openapi.yaml), and
"modelCache": {"dir", "bytes", "models", "partialDownloads"} when the cache
exists.

Exit codes: 0 shown, 1 a named pool unknown, no engine for --field, or an
error, 2 usage error.`,
		Example: `  pool-managerd status --gpus sim:/tmp/node --state-dir /tmp/state
  pool-managerd status --format json
  pool-managerd status coder --field pid`,
		RunE: func(cmd *cobra.Command, args []string) error {
			src, node, err := nf.parse()
			if err != nil {
				return err
			}
			if format != "table" && format != "json" {
				return usageError("--format %q: want table or json", format)
			}
			if field != "" {
				if err := checkStatusField(args, field, cmd.Flags().Changed("format")); err != nil {
					return err
				}
			}
			st, err := state.Store{Dir: nf.stateDir}.Load()
			if err != nil {
				return fmt.Errorf("status: %w", err)
			}
			all, ok := daemonPools(cmd.Context(), nf.stateDir)
			if !ok {
				if all, err = localPools(cmd.Context(), src, node, nf.stateDir, st); err != nil {
					return fmt.Errorf("status: %w", err)
				}
			}
			rows, err := selectPools(all, args)
			if err != nil {
				return fmt.Errorf("status: %w", err)
			}
			if field != "" {
				v, err := statusField(rows[0], field)
				if err != nil {
					return fmt.Errorf("status: %w", err)
				}
				_, err = fmt.Fprintln(cmd.OutOrStdout(), v)
				return err
			}
			if modelCache == "" {
				modelCache = filepath.Join(nf.stateDir, "models")
			}
			usage, err := cacheUsage(modelCache)
			if err != nil {
				return fmt.Errorf("status: %w", err)
			}
			if format == "json" {
				enc := json.NewEncoder(cmd.OutOrStdout())
				enc.SetIndent("", "  ")
				if rows == nil {
					rows = []api.Pool{}
				}
				return enc.Encode(statusJSON{FormatVersion: StatusFormatVersion, Pools: rows, ModelCache: usage})
			}
			if err := writeRevision(cmd.OutOrStdout(), st.AppliedRevision); err != nil {
				return err
			}
			if err := writeStatusTable(cmd.OutOrStdout(), rows, time.Now()); err != nil {
				return err
			}
			return writeCacheUsage(cmd.OutOrStdout(), usage)
		},
	}
	nf.register(cmd)
	cmd.Flags().StringVar(&format, "format", "table", "output format: table or json")
	cmd.Flags().StringVar(&modelCache, "model-cache", "", "the model cache whose size to show (default STATE_DIR/models)")
	cmd.Flags().StringVar(&field, "field", "", "print only this value of the one named pool: "+statusFieldList())
	return cmd
}

// statusFields are the values --field prints, in the order help lists them.
func statusFields() []string {
	return []string{"phase", "ready", "pid", "port", "endpoint", "restarts", "breaker", "log"}
}

func statusFieldList() string { return strings.Join(statusFields(), ", ") }

// checkStatusField checks status's arguments for --field: one pool, a known
// field, and no --format beside it.
func checkStatusField(pools []string, field string, formatGiven bool) error {
	if !slices.Contains(statusFields(), field) {
		return usageError("--field %q: want one of %s", field, statusFieldList())
	}
	if len(pools) != 1 {
		return usageError("--field %s prints one pool's value: name one pool (got %d)", field, len(pools))
	}
	if formatGiven {
		return usageError("--field prints one value: leave out --format")
	}
	return nil
}

// StatusFormatVersion is the version of status --format json.
const StatusFormatVersion = 1

// statusJSON is status --format json: the pools as the daemon's API gives
// them (GET /v1/pools, docs/openapi.yaml), under a format version.
type statusJSON struct {
	FormatVersion int        `json:"formatVersion"`
	Pools         []api.Pool `json:"pools"`
	// ModelCache is the model cache's size; absent when there is none.
	ModelCache *executor.CacheUsage `json:"modelCache,omitempty"`
}

// cacheUsage reads the model cache at dir; nil when there is none (status
// creates nothing).
func cacheUsage(dir string) (*executor.CacheUsage, error) {
	if _, err := os.Stat(filepath.Join(dir, "sha256")); errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	c, err := cache.Open(dir, cache.Options{})
	if err != nil {
		return nil, fmt.Errorf("model cache: %w", err)
	}
	u, err := executor.UsageOf(c)
	if err != nil {
		return nil, err
	}
	return &u, nil
}

// writeCacheUsage writes the model cache's line under the pools:
// "Model cache /var/lib/pool-managerd/models: 2 models, 12.4 GiB (1 download
// not finished)".
func writeCacheUsage(w io.Writer, u *executor.CacheUsage) error {
	if u == nil {
		return nil
	}
	models := "1 model"
	if u.Models != 1 {
		models = fmt.Sprintf("%d models", u.Models)
	}
	line := fmt.Sprintf("\nModel cache %s: %s, %s", u.Dir, models, reconcile.ByteSize(u.Bytes))
	switch u.PartialDownloads {
	case 0:
	case 1:
		line += " (1 download not finished)"
	default:
		line += fmt.Sprintf(" (%d downloads not finished)", u.PartialDownloads)
	}
	_, err := fmt.Fprintln(w, line)
	return err
}

// selectPools returns the rows of the named pools, in the order named; all
// rows when none is named. A named pool without a row is an error.
func selectPools(rows []api.Pool, ids []string) ([]api.Pool, error) {
	if len(ids) == 0 {
		return rows, nil
	}
	out := make([]api.Pool, 0, len(ids))
	for _, id := range ids {
		i := slices.IndexFunc(rows, func(r api.Pool) bool { return r.Pool == id })
		if i < 0 {
			known := make([]string, 0, len(rows))
			for _, r := range rows {
				known = append(known, r.Pool)
			}
			if len(known) == 0 {
				known = append(known, "none")
			}
			return nil, fmt.Errorf("pool %q has not run on this node (known: %s)", id, strings.Join(known, ", "))
		}
		out = append(out, rows[i])
	}
	return out, nil
}

// statusField returns one value of a pool's row, as --field prints it. The
// engine's values (pid, port, endpoint) are an error when it has none.
func statusField(r api.Pool, field string) (string, error) {
	noEngine := func() (string, error) {
		return "", fmt.Errorf("pool %s has no engine (phase %s)", r.Pool, r.Phase)
	}
	switch field {
	case "phase":
		return string(r.Phase), nil
	case "ready":
		return fmt.Sprint(r.Ready), nil
	case "pid":
		if r.PID == 0 {
			return noEngine()
		}
		return fmt.Sprint(r.PID), nil
	case "port":
		if r.Port == 0 {
			return noEngine()
		}
		return fmt.Sprint(r.Port), nil
	case "endpoint":
		if r.Endpoint == "" {
			return noEngine()
		}
		return r.Endpoint, nil
	case "restarts":
		return fmt.Sprint(r.Restarts), nil
	case "breaker":
		return r.Breaker, nil
	case "log":
		return r.Log, nil
	}
	return "", usageError("--field %q: want one of %s", field, statusFieldList())
}

// writeRevision prints the revision of the config the daemon last applied,
// as the state file records it; nothing when it did not come from Git.
func writeRevision(w io.Writer, rev *state.Revision) error {
	if rev == nil {
		return nil
	}
	r := api.Revision{Commit: rev.Commit, Ref: rev.Ref, Dirty: rev.Dirty}
	_, err := fmt.Fprintf(w, "Config revision applied: %s from %s\n\n", r.String(), rev.Source)
	return err
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
		if f := r.Fetch; f != nil {
			fmt.Fprintf(w, "\n%s: downloading its model: %s\n", r.Pool, reconcile.Fetch{Done: f.BytesDone, Total: f.BytesTotal, BytesPerSecond: f.BytesPerSecond}.Progress())
		}
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

// daemonPools returns the pools as the daemon of the state directory sees
// them (its address is in STATE_DIR/api.addr); false when there is no
// address, or nothing answers there within a few seconds (a daemon that
// ended leaves its address behind): status then reads the state directory
// itself. It takes no lock: status changes nothing, and must never stand in
// the way of a daemon or an apply starting.
func daemonPools(ctx context.Context, stateDir string) ([]api.Pool, bool) {
	addr, err := api.ReadAddr(stateDir)
	if err != nil {
		return nil, false
	}
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	pools, err := api.NewClient(addr, os.Getenv(api.TokenEnv)).Pools(ctx)
	if err != nil {
		return nil, false
	}
	return pools, true
}

// localPools works out the pools from the state directory and the node's
// GPUs, as the daemon would without its config.
func localPools(ctx context.Context, src gpuSource, node, stateDir string, st *state.State) ([]api.Pool, error) {
	gpus, err := src.open(nil, false)
	if err != nil {
		return nil, err
	}
	defer gpus.Close()
	obs, err := observe.Observe(ctx, observe.Options{Node: node, GPUs: gpus, Source: src.String(), Host: src.host(), StateDir: stateDir, ScanProcesses: true})
	if err != nil {
		return nil, err
	}
	return poolview.Build(poolview.Input{Observed: obs, State: st, Now: time.Now()}), nil
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
