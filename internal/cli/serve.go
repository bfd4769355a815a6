package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"time"

	sddaemon "github.com/coreos/go-systemd/v22/daemon"
	"github.com/hashicorp/go-hclog"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/spf13/cobra"

	"github.com/poolmanagerd/pool-managerd/drivers/engine/caps"
	"github.com/poolmanagerd/pool-managerd/drivers/engine/local"
	"github.com/poolmanagerd/pool-managerd/drivers/gpu/sim"
	"github.com/poolmanagerd/pool-managerd/internal/api"
	"github.com/poolmanagerd/pool-managerd/internal/daemon"
	"github.com/poolmanagerd/pool-managerd/internal/gitsource"
	"github.com/poolmanagerd/pool-managerd/internal/metrics"
	"github.com/poolmanagerd/pool-managerd/schema"
)

// DefaultListen is the API's default address.
const DefaultListen = "127.0.0.1:9200"

type serveFlags struct {
	node                nodeFlags
	engines             engineFlags
	config, listen      string
	logFormat, logLevel string
	stopEnginesOnExit   bool
	resync, debounce    time.Duration
	healthEvery         time.Duration
	readyWhen           string
	removalSettle       time.Duration
	allowEmpty          bool
	git                 gitFlags
	models              modelFlags
}

// gitFlags configure the built-in Git source (serve --git).
type gitFlags struct {
	url, ref, path      string
	interval            time.Duration
	username, tokenFile string
	sshKey, knownHosts  string
}

func (g *gitFlags) register(cmd *cobra.Command) {
	fl := cmd.Flags()
	fl.StringVar(&g.url, "git", "", "follow this Git repository instead of --config: https://..., ssh://..., git@host:path or a local path (fetched with go-git; no git binary needed)")
	fl.StringVar(&g.ref, "git-ref", "main", "the branch (followed, force pushes too) or tag (pinned) of --git")
	fl.StringVar(&g.path, "git-path", "", "the subdirectory of the --git repository that is the config root (default: its root)")
	fl.DurationVar(&g.interval, "git-interval", time.Minute, "time between fetches of --git; failed fetches are retried with a backoff")
	fl.StringVar(&g.username, "git-username", "", "user name for an HTTPS --git with a token (default: git)")
	fl.StringVar(&g.tokenFile, "git-token-file", "", "file holding the token for an HTTPS --git (or set the token itself in "+GitTokenEnv+")")
	fl.StringVar(&g.sshKey, "git-ssh-key", "", "SSH private key file for an SSH --git (no passphrase)")
	fl.StringVar(&g.knownHosts, "git-known-hosts", "", "known_hosts file for an SSH --git (default: SSH_KNOWN_HOSTS, ~/.ssh/known_hosts, /etc/ssh/ssh_known_hosts)")
}

// GitTokenEnv holds the token of an HTTPS --git, as an alternative to
// --git-token-file.
const GitTokenEnv = "POOL_MANAGERD_GIT_TOKEN"

// source opens the built-in Git source, keeping its clone and checkouts in
// STATE_DIR/git; nil without --git. Options that can never work are usage
// errors (exit 2).
func (g *gitFlags) source(stateDir string, log hclog.Logger) (*gitsource.Source, error) {
	if g.url == "" {
		return nil, nil
	}
	if g.interval <= 0 {
		return nil, usageError("--git-interval %v: must be positive", g.interval)
	}
	token := os.Getenv(GitTokenEnv)
	if g.tokenFile != "" {
		data, err := os.ReadFile(g.tokenFile)
		if err != nil {
			return nil, usageError("--git-token-file: %v", err)
		}
		token = strings.TrimSpace(string(data))
		if token == "" {
			return nil, usageError("--git-token-file %s is empty", g.tokenFile)
		}
	}
	src, err := gitsource.New(gitsource.Options{
		URL: g.url, Ref: g.ref, Path: g.path, Interval: g.interval, Dir: filepath.Join(stateDir, "git"),
		Auth:   gitsource.Auth{Username: g.username, Token: token, SSHKeyFile: g.sshKey, KnownHostsFile: g.knownHosts},
		Logger: log.Named("git"),
	})
	if errors.Is(err, gitsource.ErrInvalid) {
		return nil, usageError("--git and its --git-* options: %v", err)
	}
	if err != nil {
		return nil, fmt.Errorf("serve: %w", err)
	}
	return src, nil
}

func newServeCommand() *cobra.Command {
	var f serveFlags
	cmd := &cobra.Command{
		Use:   "serve --config DIR",
		Short: "Run the daemon: keep the node running what the config says, and serve the API and metrics",
		Long: `serve runs pool-managerd as a daemon. It watches the config directory (fsnotify,
debounced), and on each change, every 30 s (--resync), on GPU driver events and
when an engine exits, it observes the node, plans and applies: each pool that
needs work gets its own operation, so a long preload never holds up the others.

A config that fails to load is never applied: the last good one stays in force,
and the error shows at GET /v1/config, in pool_managerd_config_valid and in the
log until the files are fixed. A pool that leaves the config is stopped only once
its absence has held for --removal-settle (5 s): a file saved in two steps or a
tree restored folder by folder stops nothing. A config that leaves this node no
pools while its engines run is held back (GET /v1/config's heldBack,
pool_managerd_config_held_back, the log) unless --allow-empty; to empty a node
on purpose, run pool-managerd stop --all. A critical Xid or a lost GPU makes the pools on
that GPU Unready; they are drained, stopped and restarted with the driver-error
backoff.

The HTTP API (see docs/openapi.yaml) serves /healthz, /readyz (ready after the
first reconcile; see --ready-when), /v1/pools, /v1/pools/{id}, each pool's probe
/v1/pools/{id}/ready (200 when it is Ready, 503 otherwise), /v1/config, /metrics, and the
operator actions that pool-managerd reset and stop use while the daemon holds
the state directory's lock. --listen 127.0.0.1:0 picks a free port; the address
is written to STATE_DIR/api.addr. A non-loopback address needs a bearer token
in POOL_MANAGERD_TOKEN.

With --git URL the daemon follows a Git repository itself instead of a
directory (the first choice for a fleet; a pull timer or git-sync writing into
--config still work). It fetches --git-ref every --git-interval off the
reconcile loop (go-git, pure Go: HTTPS with a token from --git-token-file or
POOL_MANAGERD_GIT_TOKEN, SSH with --git-ssh-key and --git-known-hosts, or a
local path), checks each new commit out into a fresh directory under
STATE_DIR/git and switches to it at once, so no half-updated tree is ever
loaded. --git-path names the subdirectory that is the config root. A commit that
fails to load is reported with its hash and never applied; a remote that cannot
be reached is retried with a backoff while the last applied revision stays in
force, also across daemon restarts (its checkout is kept). GET /v1/config shows
lastAppliedRevision and lastAttemptedRevision (for a --config directory in a Git
work tree: its HEAD and whether it is dirty) and the fetches' state;
pool_managerd_config_revision_info carries the applied revision.

A pool whose model has a source (model.source) is Fetching while its start
downloads the model into the model cache (--model-cache, default
STATE_DIR/models; CACHE/sha256/DIGEST/FILE), verified against its sha256 before
anything is spawned; pools of one model share one download and one file.
Downloads resume after a dropped connection or a restart, run --fetch-parallel
at a time, and fail (fetch_stalled) when less than 64 KiB arrives in
--fetch-stall-timeout (nothing, or a trickle). --offline uses only models already in the cache. A
token for private sources comes from --model-token-file (which wins) or
POOL_MANAGERD_MODEL_TOKEN, and goes only to a source on a host of
--model-token-hosts (default huggingface.co; exact names), over https, never
after a redirect that changes the scheme, host or port. At each resync
the models no pool of the node uses, last used longer than --cache-grace ago,
are removed (never one an engine has open).

SIGHUP reloads the config (with --git: fetches at once). SIGTERM and SIGINT stop the daemon and leave the
engines running: the next daemon adopts them without restarting any (with
--stop-engines-on-exit they are stopped). Under systemd it reports READY=1
after the first reconcile, a STATUS line, and answers the watchdog.

--ready-when pools holds /readyz and READY=1 back until every pool of the node
is Ready or given up: Failed (its circuit breaker open), stopped by an
operator, or blocked with a reason (too little VRAM, a lost GPU). A pool that
fails and waits for its backoff is still starting; its restarts end with the
breaker open, so a bad pool cannot keep the daemon starting for good. Units
ordered after pool-managerd then start once its engines serve; set the unit's
TimeoutStartSec above the longest model load (docs/deploy.md).

Every flag can be set by an environment variable: POOL_MANAGERD_ and the flag's
name in upper case with _ for - (POOL_MANAGERD_CONFIG, POOL_MANAGERD_LISTEN, ...).`,
		Example: `  pool-managerd serve --config /etc/pool-managerd/config
  pool-managerd serve --config examples/mixed-24-12 --gpus sim:/tmp/node --node gpu-01 \
      --state-dir /tmp/state --listen 127.0.0.1:0 --llama-server bin/fake-engine`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return runServe(cmd, f) },
	}
	f.node.register(cmd)
	f.engines.register(cmd)
	f.git.register(cmd)
	f.models.registerLookup(cmd)
	f.models.registerFetch(cmd)
	f.models.registerGC(cmd)
	fl := cmd.Flags()
	fl.StringVar(&f.config, "config", "", "the config directory tree (required unless --git)")
	fl.StringVar(&f.listen, "listen", DefaultListen, "the API's address, HOST:PORT (port 0: a free one, written to STATE_DIR/api.addr)")
	fl.StringVar(&f.logFormat, "log-format", "text", "log format: text or json (one JSON object a line)")
	fl.StringVar(&f.logLevel, "log-level", "info", "log level: trace, debug, info, warn or error")
	fl.BoolVar(&f.stopEnginesOnExit, "stop-engines-on-exit", false, "stop every engine when the daemon exits (by default they keep running and the next daemon adopts them)")
	fl.DurationVar(&f.resync, "resync", 30*time.Second, "period of the full resync: reload the config, observe, plan and apply")
	fl.DurationVar(&f.debounce, "debounce", 200*time.Millisecond, "quiet time after a config change before it is loaded")
	fl.DurationVar(&f.healthEvery, "health-interval", 10*time.Second, "how often Ready engines' health endpoints are asked between resyncs (an engine that fails is restarted)")
	fl.DurationVar(&f.removalSettle, "removal-settle", 5*time.Second, "how long a pool must stay out of the config before its engine is stopped (0: at once); one that comes back within it is untouched")
	fl.StringVar(&f.readyWhen, "ready-when", string(daemon.ReadyStarted), "when /readyz answers 200 and READY=1 is sent to systemd: started (after the first reconcile) or pools (once every pool is Ready or given up: Failed, stopped, or blocked with a reason)")
	fl.BoolVar(&f.allowEmpty, "allow-empty", false, "apply a config that leaves this node no pools while its engines run (by default it is held back, as Argo CD's allowEmpty)")
	return cmd
}

func newLogger(w io.Writer, format, level string) (hclog.Logger, error) {
	if format != "text" && format != "json" {
		return nil, usageError("--log-format %q: want text or json", format)
	}
	lvl := hclog.LevelFromString(level)
	if lvl == hclog.NoLevel {
		return nil, usageError("--log-level %q: want trace, debug, info, warn or error", level)
	}
	return hclog.New(&hclog.LoggerOptions{
		Name: "pool-managerd", Level: lvl, Output: w, JSONFormat: format == "json",
		TimeFormat: "2006-01-02T15:04:05.000Z07:00",
	}), nil
}

func runServe(cmd *cobra.Command, f serveFlags) error {
	switch {
	case f.config == "" && f.git.url == "":
		return usageError("serve needs --config DIR or --git URL (or POOL_MANAGERD_CONFIG, POOL_MANAGERD_GIT)")
	case f.config != "" && f.git.url != "":
		return usageError("--config and --git both given: the config comes from one of them")
	case f.config != "":
		if info, err := os.Stat(f.config); err != nil || !info.IsDir() {
			return usageError("--config %s: not a directory", f.config)
		}
	}
	if f.resync <= 0 || f.debounce <= 0 || f.healthEvery <= 0 {
		return usageError("--resync, --debounce and --health-interval must be positive")
	}
	readyWhen, err := daemon.ParseReadyWhen(f.readyWhen)
	if err != nil {
		return usageError("--ready-when %v", err)
	}
	if f.removalSettle < 0 {
		return usageError("--removal-settle %v: must be 0 or more", f.removalSettle)
	}
	src, node, err := f.node.parse()
	if err != nil {
		return err
	}
	token := os.Getenv(api.TokenEnv)
	if err := api.CheckListen(f.listen, token); err != nil {
		return usageError("%v", err)
	}
	log, err := newLogger(cmd.ErrOrStderr(), f.logFormat, f.logLevel)
	if err != nil {
		return err
	}
	var configDir string
	if f.config != "" {
		if configDir, err = filepath.Abs(f.config); err != nil {
			return err
		}
	}
	stateDir, err := filepath.Abs(f.node.stateDir)
	if err != nil {
		return err
	}
	git, err := f.git.source(stateDir, log)
	if err != nil {
		return err
	}
	if f.models.grace <= 0 {
		return usageError("--cache-grace %v: must be more than 0", f.models.grace)
	}
	fetcher, err := f.models.fetcher(stateDir)
	if err != nil {
		return err
	}
	lock, err := lockState(stateDir)
	if err != nil {
		return fmt.Errorf("serve: %w", err)
	}
	defer lock.Unlock()
	if f.node.node == "" && src.Kind == "sim" && configDir != "" {
		// Trying a one-node config on the simulated node: act as that node.
		if cfg, err := schema.Load(cmd.Context(), configDir); err == nil {
			node = chooseNode(io.Discard, cfg, configDir, src, node, false)
		}
	}
	gpus, err := src.open(nil, false)
	if err != nil {
		return fmt.Errorf("serve: %w", err)
	}
	defer gpus.Close()
	bins := f.engines.binaries()
	driver := &local.Driver{Binaries: bins, LogDir: filepath.Join(stateDir, "logs"), StateDir: stateDir, Caps: &caps.Cache{}, Log: log}
	if src.Kind == "sim" {
		driver.SimDir = src.Dir
		if o, err := sim.ReadOptions(src.Dir); err == nil {
			driver.SimHostEngines = o.HostRealEngines
		}
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		metrics.NewBuildInfo(Version(), runtime.Version(), Revision()))
	d, err := daemon.New(daemon.Options{
		ConfigDir: configDir, StateDir: stateDir, Node: node, GPUs: gpus, Source: src.String(), Host: src.host(), Engines: driver,
		Logger: log, Registry: reg, Resync: f.resync, Debounce: f.debounce, HealthEvery: f.healthEvery, Notify: sdNotify(log),
		RemovalSettle: f.removalSettle, AllowEmpty: f.allowEmpty, Git: git, ReadyWhen: readyWhen,
		Fetcher: fetcher, CacheGrace: f.models.grace,
		Models: f.models.cachedLookup(stateDir),
		Step:   crashStep(),
	})
	if err != nil {
		return err
	}

	ctx, cancel := context.WithCancel(cmd.Context())
	defer cancel()
	ln, err := api.Listen(ctx, f.listen, stateDir)
	if err != nil {
		return fmt.Errorf("serve: %w", err)
	}
	defer func() { _ = api.RemoveAddr(stateDir) }()
	handler := api.NewHandler(d, promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg, EnableOpenMetrics: true}), token)
	apiErr := make(chan error, 1)
	go func() { apiErr <- api.Serve(ctx, ln, handler) }()
	log.Info("API listening", "address", ln.Addr().String(), "token", token != "")

	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	go func() {
		for {
			select {
			case <-hup:
				log.Info("SIGHUP: reloading the config")
				d.Reload()
			case <-ctx.Done():
				return
			}
		}
	}()
	go watchdog(ctx, d, log)

	runErr := make(chan error, 1)
	go func() { runErr <- d.Run(ctx) }()
	select {
	case err = <-runErr:
	case err = <-apiErr:
		if err != nil {
			log.Error("API failed", "error", err)
		}
		cancel()
		err = errors.Join(err, <-runErr)
	}
	cancel()
	sdNotify(log)("STOPPING=1")
	if f.stopEnginesOnExit {
		log.Info("stopping every engine (--stop-engines-on-exit)")
		stopCtx, stop := context.WithTimeout(context.WithoutCancel(cmd.Context()), 10*time.Minute)
		defer stop()
		if serr := d.StopEngines(stopCtx); serr != nil {
			err = errors.Join(err, serr)
		}
	} else {
		log.Info("daemon stopped; engines keep running and the next daemon adopts them")
	}
	if err != nil {
		return fmt.Errorf("serve: %w", err)
	}
	return nil
}

// sdNotify sends sd_notify states when run under systemd (NOTIFY_SOCKET
// set); elsewhere it does nothing.
func sdNotify(log hclog.Logger) func(string) {
	return func(state string) {
		if _, err := sddaemon.SdNotify(false, state); err != nil {
			log.Warn("sd_notify failed", "state", state, "error", err)
		}
	}
}

// watchdog answers systemd's watchdog (WatchdogSec=) at half its period,
// each time after the loop answered a ping: a stuck loop gets the daemon
// restarted, and the engines, in their own sessions, keep running.
func watchdog(ctx context.Context, d *daemon.Daemon, log hclog.Logger) {
	every, err := sddaemon.SdWatchdogEnabled(false)
	if err != nil || every <= 0 {
		return
	}
	tick := time.NewTicker(every / 2)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		pctx, cancel := context.WithTimeout(ctx, every/2)
		err := d.Ping(pctx)
		cancel()
		if err != nil {
			log.Warn("watchdog: the reconcile loop did not answer", "error", err)
			continue
		}
		if _, err := sddaemon.SdNotify(false, sddaemon.SdNotifyWatchdog); err != nil {
			log.Warn("sd_notify failed", "state", "WATCHDOG=1", "error", err)
		}
	}
}

// crashStep is the crash-safety tests' hook (see CrashAtEnv).
func crashStep() func(pool, step string) {
	at := os.Getenv(CrashAtEnv)
	if at == "" {
		return nil
	}
	return func(pool, step string) {
		if at == step || at == pool+":"+step {
			_ = syscall.Kill(os.Getpid(), syscall.SIGKILL)
			select {}
		}
	}
}

// envName is the environment variable that sets a flag.
func envName(flag string) string {
	return "POOL_MANAGERD_" + strings.ToUpper(strings.ReplaceAll(flag, "-", "_"))
}
