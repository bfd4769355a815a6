package cli

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/spf13/cobra"

	"github.com/poolmanagerd/pool-managerd/drivers/engine/caps"
	"github.com/poolmanagerd/pool-managerd/drivers/engine/local"
	"github.com/poolmanagerd/pool-managerd/drivers/engine/preset"
	"github.com/poolmanagerd/pool-managerd/drivers/gpu"
	"github.com/poolmanagerd/pool-managerd/drivers/gpu/sim"
	"github.com/poolmanagerd/pool-managerd/internal/executor"
	"github.com/poolmanagerd/pool-managerd/internal/observe"
	"github.com/poolmanagerd/pool-managerd/internal/state"
	"github.com/poolmanagerd/pool-managerd/reconcile"
	"github.com/poolmanagerd/pool-managerd/schema"
)

// CrashAtEnv names a step of a start (executor.Step*, optionally POOL:step)
// at which apply kills itself with SIGKILL: the crash-safety tests use it.
const CrashAtEnv = "POOL_MANAGERD_TEST_CRASH_AT"

// engineFlags are the engine binaries, set by flags shared by apply and serve.
type engineFlags struct {
	llama, vllm, tgi, sglang string
}

func (e *engineFlags) register(cmd *cobra.Command) {
	cmd.Flags().StringVar(&e.llama, "llama-server", preset.DefaultLlamaCpp, "llama.cpp's llama-server binary (path, or a name looked up in PATH)")
	cmd.Flags().StringVar(&e.vllm, "vllm", preset.DefaultVLLM, "vLLM's vllm binary")
	cmd.Flags().StringVar(&e.tgi, "tgi", preset.DefaultTGI, "TGI's text-generation-launcher binary")
	cmd.Flags().StringVar(&e.sglang, "sglang", preset.DefaultSGLang, "the Python interpreter with SGLang installed (it runs python -m "+preset.SGLangModule+")")
}

func (e *engineFlags) binaries() preset.Binaries {
	return preset.Binaries{LlamaCpp: e.llama, VLLM: e.vllm, TGI: e.tgi, SGLang: e.sglang}
}

// nodeFlags are the flags that say which node and where its state is.
type nodeFlags struct {
	gpus, stateDir, node string
}

func (n *nodeFlags) register(cmd *cobra.Command) {
	cmd.Flags().StringVar(&n.gpus, "gpus", "nvml", gpusFlagHelp)
	cmd.Flags().StringVar(&n.stateDir, "state-dir", DefaultStateDir, "state directory: state file, engine logs, lock")
	cmd.Flags().StringVar(&n.node, "node", "", "this node's name in the config (default: the host name)")
}

func (n *nodeFlags) parse() (gpuSource, string, error) {
	src, err := parseGPUSource(n.gpus)
	if err != nil {
		return src, "", err
	}
	if src.Kind == "declared" {
		return src, "", usageError("--gpus declared: this command runs engines, on real or simulated GPUs (nvml or sim:DIR)")
	}
	node := n.node
	if node == "" {
		node = defaultNode()
	}
	return src, node, nil
}

func newApplyCommand() *cobra.Command {
	var nf nodeFlags
	var ef engineFlags
	var autoApprove bool
	var progress time.Duration
	var models modelFlags
	cmd := &cobra.Command{
		Use:   "apply [DIR | PLANFILE]",
		Short: "Start, replace and stop engines so that the node runs what the config says",
		Long: `apply makes the node run its pools: it plans (as plan does), shows the plan, asks for a
confirmation on a terminal, then stops what must go first (freeing GPUs), updates,
and starts engines in parallel, each waited on until its model is loaded and its
GPU memory is where its device mask says (Ready) or it failed. Engines keep running
after apply exits. A pool whose model has a source (model.source) first fetches it
into the model cache (--model-cache, default STATE_DIR/models), verified against
its sha256, as serve does. While it waits, every --progress-interval it prints each
model still downloading (bytes, rate) and each pool still loading, with the time
since its engine started and what the engine's health check last answered.

With PLANFILE (from plan --out) it applies exactly that plan, without asking, and
refuses it when the config or the node changed since it was made.

Only one writer at a time: apply takes an exclusive lock on the state directory.

Exit codes: 0 every pool Ready (or nothing to do), 1 a pool failed or is blocked,
or an error, 2 usage error.`,
		Example: `  pool-managerd apply ./config --gpus sim:/tmp/node --state-dir /tmp/state --llama-server bin/fake-engine
  pool-managerd plan ./config --out plan.json && pool-managerd apply plan.json`,
		Args: cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			src, node, err := nf.parse()
			if err != nil {
				return err
			}
			target := "."
			if len(args) == 1 {
				target = args[0]
			}
			if progress <= 0 {
				return usageError("--progress-interval %v: must be more than 0", progress)
			}
			if err := models.check(); err != nil {
				return err
			}
			if _, err := models.token(); err != nil {
				return err
			}
			return runApply(cmd, target, src, node, nf.stateDir, ef.binaries(), autoApprove, nf.node != "", progress, &models)
		},
	}
	nf.register(cmd)
	ef.register(cmd)
	cmd.Flags().BoolVar(&autoApprove, "auto-approve", false, "apply without asking")
	cmd.Flags().DurationVar(&progress, "progress-interval", DefaultProgressInterval, "how often to print the pools still fetching their models or loading while apply waits")
	models.registerLookup(cmd)
	models.registerFetch(cmd)
	return cmd
}

// nodeSession is everything a command that changes a node holds: the lock,
// the GPUs, the config and what was observed.
type nodeSession struct {
	lock     *state.DirLock
	gpus     gpu.Node
	cfg      *schema.Desired
	desired  reconcile.Desired
	observed reconcile.Observed
}

func (s *nodeSession) close() {
	if s.gpus != nil {
		s.gpus.Close()
	}
	if s.lock != nil {
		s.lock.Unlock()
	}
}

// lockState takes the state directory's lock, creating the directory.
func lockState(dir string) (*state.DirLock, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("state directory: %w", err)
	}
	l, err := state.Lock(dir)
	if errors.Is(err, state.ErrLocked) {
		return nil, fmt.Errorf("%w\nhint: another apply, or the daemon, is changing this node; wait for it, or stop it", err)
	}
	return l, err
}

// openNodeSession locks the state directory, loads the config and observes
// the node; models says where the needs of fetched models are looked up.
func openNodeSession(cmd *cobra.Command, configDir string, src gpuSource, node, stateDir string, nodeGiven bool, models observe.ModelLookup) (*nodeSession, error) {
	ctx := cmd.Context()
	s := &nodeSession{}
	lock, err := lockState(stateDir)
	if err != nil {
		return nil, err
	}
	s.lock = lock
	cfg, err := schema.Load(ctx, configDir)
	if err != nil {
		s.close()
		return nil, configError(configDir, err)
	}
	s.cfg = cfg
	node = chooseNode(cmd.ErrOrStderr(), cfg, configDir, src, node, nodeGiven)
	if s.gpus, err = src.open(cfg.Nodes[node], false); err != nil {
		s.close()
		return nil, err
	}
	s.desired = reconcile.DesiredFor(cfg, node)
	models.Needs(ctx, &s.desired)
	s.observed, err = observe.Observe(ctx, observe.Options{Node: node, GPUs: s.gpus, Source: src.String(), Host: src.host(), StateDir: stateDir, ScanProcesses: true,
		Models: models, Pools: s.desired.Pools})
	if err != nil {
		s.close()
		return nil, err
	}
	return s, nil
}

func runApply(cmd *cobra.Command, target string, src gpuSource, node, stateDir string, bins preset.Binaries, autoApprove, nodeGiven bool, progress time.Duration, models *modelFlags) error {
	ctx := cmd.Context()
	out := cmd.OutOrStdout()
	var saved *reconcile.NodePlan
	configDir := target
	if info, err := os.Stat(target); err == nil && !info.IsDir() {
		f, err := os.Open(target)
		if err != nil {
			return err
		}
		saved, err = reconcile.ReadJSON(f)
		f.Close()
		if err != nil {
			return fmt.Errorf("apply %s: %w", target, err)
		}
		if saved.Config == "" {
			return fmt.Errorf("apply %s: the plan does not say which config it was made from; make it with pool-managerd plan --out", target)
		}
		configDir, node, nodeGiven = saved.Config, saved.Node, true
	}
	s, err := openNodeSession(cmd, configDir, src, node, stateDir, nodeGiven, models.cachedLookup(stateDir))
	if err != nil {
		return fmt.Errorf("apply: %w", err)
	}
	defer s.close()
	plan := saved
	if saved != nil {
		if err := reconcile.CheckFresh(saved, s.desired, s.observed); err != nil {
			return fmt.Errorf("apply %s: %w", target, err)
		}
		// The saved plan's specs have their env values hidden: run the config's.
		if err := saved.TakeSpecs(s.desired); err != nil {
			return fmt.Errorf("apply %s: %w", target, err)
		}
	} else {
		plan = reconcile.Plan(s.desired, s.observed, time.Now())
		if err := reconcile.WriteText(out, plan, reconcile.TextOptions{Color: isTerminal(out)}); err != nil {
			return err
		}
	}
	loading := false
	for _, u := range plan.Unchanged {
		loading = loading || u.Health == reconcile.HealthLoading
	}
	if !plan.HasChanges() && !loading && plan.Summary.Blocked == 0 {
		fmt.Fprintln(out, "Nothing to do: the node runs what the config says.")
		return nil
	}
	// Blocked pools alone change no engine: they are recorded (a failure for
	// their backoff) without asking.
	if saved == nil && !autoApprove && (plan.HasChanges() || loading) {
		ok, err := confirm(cmd)
		if err != nil {
			return err
		}
		if !ok {
			fmt.Fprintln(out, "Apply cancelled.")
			return silentExit(ExitFailure)
		}
	}
	if err := bins.Check(startingEngines(plan)...); err != nil {
		return fmt.Errorf("apply: %w\nhint: set the engine's binary with --llama-server, --vllm, --tgi or --sglang (or POOL_MANAGERD_LLAMA_SERVER, ...)", err)
	}
	absState, err := filepath.Abs(stateDir)
	if err != nil {
		return err
	}
	driver := &local.Driver{Binaries: bins, LogDir: filepath.Join(absState, "logs"), StateDir: absState, Caps: &caps.Cache{},
		Log: slog.New(slog.NewTextHandler(cmd.ErrOrStderr(), &slog.HandlerOptions{Level: slog.LevelWarn}))}
	if src.Kind == "sim" {
		driver.SimDir = src.Dir
		if o, err := sim.ReadOptions(src.Dir); err == nil {
			driver.SimHostEngines = o.HostRealEngines
		}
	}
	var mu sync.Mutex
	report := func(e executor.Event) {
		mu.Lock()
		defer mu.Unlock()
		fmt.Fprintf(out, "%s  %-12s %-10s %s\n", e.Time.Format("15:04:05.000"), e.Pool, e.Phase, e.Message)
		if e.Failure != nil && e.Failure.HintFor() != "" {
			fmt.Fprintf(out, "%s  %-12s %-10s hint: %s\n", e.Time.Format("15:04:05.000"), e.Pool, "", e.Failure.HintFor())
		}
	}
	x := &executor.Executor{
		Node: plan.Node, GPUs: s.gpus, Host: src.host(), Engines: driver, Store: state.Store{Dir: stateDir},
		Now: time.Now, Rand: rand.Float64,
		Report: report,
	}
	if fetches(plan) {
		// Opened only when a pool fetches: apply leaves no cache behind otherwise.
		fetcher, err := models.fetcher(absState)
		if err != nil {
			return err
		}
		x.Models = &executor.FetchedModels{Fetcher: fetcher}
	}
	// Crash-safety tests: die as kill -9 would, at the named step.
	x.Step = crashStep()
	if ctx.Err() != nil {
		return fmt.Errorf("apply: interrupted before anything was done")
	}
	fmt.Fprintln(out)
	tick := time.NewTicker(progress)
	stopProgress := make(chan struct{})
	progressDone := make(chan struct{})
	go func() {
		defer close(progressDone)
		reportProgress(stopProgress, tick.C, x.Loading, x.Fetches, report)
	}()
	res, err := applyWaitingBackoffs(ctx, x, plan, report)
	tick.Stop()
	close(stopProgress)
	<-progressDone
	if err != nil {
		return fmt.Errorf("apply: %w", err)
	}
	writeOutcomes(out, res)
	if res.Failed() {
		return silentExit(ExitFailure)
	}
	return nil
}

// fetches reports whether a change of the plan starts a pool whose model
// has a source (model.source).
func fetches(plan *reconcile.NodePlan) bool {
	for _, c := range plan.Changes {
		if c.Spec != nil && c.Spec.Model.Source != "" {
			return true
		}
	}
	return false
}

// DefaultProgressInterval is how often apply says which pools are still loading.
const DefaultProgressInterval = 10 * time.Second

// reportProgress says, at each tick until stop, which models are still
// downloading, as "fetching model: 12.0 of 40.0 MiB (30%) at 5.0 MiB/s [10s
// elapsed]", and which engines are still loading: the time since each
// started and its last health answer, as "still loading [10s elapsed],
// health: loading".
func reportProgress(stop <-chan struct{}, tick <-chan time.Time, loading func() []executor.Loading, fetches func() map[string]reconcile.Fetch, report func(executor.Event)) {
	for {
		select {
		case <-stop:
			return
		case now := <-tick:
			fs := fetches()
			for _, pool := range slices.Sorted(maps.Keys(fs)) {
				f := fs[pool]
				report(executor.Event{Time: now, Pool: pool, Phase: reconcile.Fetching,
					Message: fmt.Sprintf("fetching model: %s [%v elapsed]", f.Progress(), elapsed(now.Sub(f.Since)))})
			}
			for _, l := range loading() {
				health := "no answer yet"
				if l.Health != "" {
					health = string(l.Health)
				}
				report(executor.Event{Time: now, Pool: l.Pool, Phase: reconcile.Preloading, Engine: l.Engine, PID: l.PID,
					Message: fmt.Sprintf("still loading [%v elapsed], engine pid %d, health: %s", elapsed(now.Sub(l.Since)), l.PID, health)})
			}
		}
	}
}

// elapsed is a wait as progress says it: to the tenth of a second under
// 10 s, to the second above.
func elapsed(d time.Duration) time.Duration {
	if d < 10*time.Second {
		return d.Round(100 * time.Millisecond)
	}
	return d.Truncate(time.Second)
}

// applyWaitingBackoffs applies the plan, waiting out backoffs here, in the
// command: the executor never waits. A restart whose backoff has not
// elapsed (the plan's notBefore) is applied once it has; a restart that
// found its engine dead records that failure and starts nothing (its
// outcome's NotBefore), and is applied again once the new backoff elapses.
// Each wait is said as "waiting D for the backoff".
func applyWaitingBackoffs(ctx context.Context, x *executor.Executor, plan *reconcile.NodePlan, report func(executor.Event)) (executor.Result, error) {
	first, later := splitWaiting(plan, time.Now())
	res, err := x.Apply(ctx, first)
	if err != nil {
		return res, err
	}
	for _, c := range later {
		if err := waitBackoff(ctx, x, c.Pool, *c.NotBefore, report); err != nil {
			return res, err
		}
	}
	if len(later) > 0 {
		more, err := x.Apply(ctx, &reconcile.NodePlan{Node: plan.Node, Source: plan.Source, Changes: later})
		res.Outcomes = append(res.Outcomes, more.Outcomes...)
		if err != nil {
			return res, err
		}
	}
	// Restarts that recorded their engine's death: once more, after the backoff.
	var again []reconcile.Change
	kept := res.Outcomes[:0]
	for _, o := range res.Outcomes {
		c, ok := changeOf(plan, o.Pool)
		if ok && o.Action == reconcile.Restart && !o.NotBefore.IsZero() && o.Phase == reconcile.Unready {
			if err := waitBackoff(ctx, x, o.Pool, o.NotBefore, report); err != nil {
				return res, err
			}
			c.PID = 0 // the engine it named is gone (stopped, or found dead)
			again = append(again, c)
			continue
		}
		kept = append(kept, o)
	}
	res.Outcomes = kept
	if len(again) > 0 {
		more, err := x.Apply(ctx, &reconcile.NodePlan{Node: plan.Node, Source: plan.Source, Changes: again})
		res.Outcomes = append(res.Outcomes, more.Outcomes...)
		sort.Slice(res.Outcomes, func(i, j int) bool { return res.Outcomes[i].Pool < res.Outcomes[j].Pool })
		return res, err
	}
	return res, nil
}

// splitWaiting splits off the restarts whose backoff has not elapsed at now.
func splitWaiting(plan *reconcile.NodePlan, now time.Time) (*reconcile.NodePlan, []reconcile.Change) {
	p := *plan
	p.Changes = nil
	var later []reconcile.Change
	for _, c := range plan.Changes {
		if c.Action != reconcile.Blocked && c.NotBefore != nil && c.NotBefore.After(now) {
			later = append(later, c)
			continue
		}
		p.Changes = append(p.Changes, c)
	}
	return &p, later
}

func changeOf(plan *reconcile.NodePlan, pool string) (reconcile.Change, bool) {
	for _, c := range plan.Changes {
		if c.Pool == pool {
			return c, true
		}
	}
	return reconcile.Change{}, false
}

// waitBackoff waits until at, saying so, with the backoff chosen after the
// pool's last failure (the state's next retry less its time), which the
// wait is what is left of.
func waitBackoff(ctx context.Context, x *executor.Executor, pool string, at time.Time, report func(executor.Event)) error {
	d := time.Until(at)
	if d <= 0 {
		return nil
	}
	msg := fmt.Sprintf("waiting %v for the backoff", d.Round(time.Millisecond))
	if st, err := x.State(); err == nil {
		if h := st.Pools[pool]; h.LastError != nil && h.NextRetry.Equal(at) {
			msg += fmt.Sprintf(" (%v after the failure)", h.NextRetry.Sub(h.LastError.Time).Round(time.Millisecond))
		}
	}
	report(executor.Event{Time: time.Now(), Pool: pool, Phase: reconcile.Unready, Message: msg})
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// startingEngines lists the engines the plan starts, whose binaries must exist.
func startingEngines(plan *reconcile.NodePlan) []schema.Engine {
	seen := map[schema.Engine]bool{}
	var out []schema.Engine
	for _, c := range plan.Changes {
		switch c.Action {
		case reconcile.Create, reconcile.Replace, reconcile.Restart:
			if c.Spec != nil && !seen[c.Spec.Engine] {
				seen[c.Spec.Engine] = true
				out = append(out, c.Spec.Engine)
			}
		}
	}
	return out
}

func writeOutcomes(w io.Writer, res executor.Result) {
	ready, failed := 0, 0
	for _, o := range res.Outcomes {
		switch {
		case o.KeptRunning:
			failed++ // its replace failed; the engine serves the old spec
		case o.Phase == reconcile.Ready:
			ready++
		case o.Phase == reconcile.Failed || o.Phase == reconcile.Unready:
			failed++
		}
	}
	fmt.Fprintf(w, "\nApply done: %d Ready, %d failed or blocked, %d stopped.\n", ready, failed, len(res.Outcomes)-ready-failed)
	for _, o := range res.Outcomes {
		switch {
		case o.KeptRunning && o.Failure != nil:
			fmt.Fprintf(w, "  %s: %s on its old spec, not replaced (%s): %s\n", o.Pool, o.Phase, o.Failure.Class, o.Failure.Message)
		case o.Failure != nil:
			fmt.Fprintf(w, "  %s: %s (%s): %s\n", o.Pool, o.Phase, o.Failure.Class, o.Failure.Message)
		}
	}
}

// confirm asks on a terminal whether to go ahead.
func confirm(cmd *cobra.Command) (bool, error) {
	in, ok := cmd.InOrStdin().(*os.File)
	if !ok || !isTerminal(in) {
		return false, usageError("apply asks for a confirmation on a terminal; use --auto-approve, or apply a saved plan")
	}
	fmt.Fprint(cmd.OutOrStdout(), "\nApply these changes? Only 'yes' goes ahead: ")
	type answer struct {
		line string
		err  error
	}
	answers := make(chan answer, 1)
	go func() {
		line, err := bufio.NewReader(in).ReadString('\n')
		answers <- answer{line, err}
	}()
	select {
	case <-cmd.Context().Done():
		// Ctrl-C at the prompt: nothing was done.
		fmt.Fprintln(cmd.OutOrStdout())
		return false, nil
	case a := <-answers:
		if a.err != nil && !errors.Is(a.err, io.EOF) {
			return false, a.err
		}
		return strings.TrimSpace(a.line) == "yes", nil
	}
}
