package cli

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/poolmanagerd/pool-managerd/internal/api"
	"github.com/poolmanagerd/pool-managerd/reconcile"
)

// waitPollInterval is how often wait asks the daemon: the state it reports
// is the event waited on, and asking it this often costs the daemon little.
const waitPollInterval = 50 * time.Millisecond

// defaultWaitTimeout is how long wait waits unless --timeout says otherwise.
const defaultWaitTimeout = 60 * time.Second

// waitKind is what `pool-managerd wait` waits for.
type waitKind int

const (
	// waitPhase: each named pool in a phase (--for phase=NAME).
	waitPhase waitKind = iota + 1
	// waitReady: the daemon's first reconcile done, as /readyz says (--for ready).
	waitReady
	// waitConfig: the config valid or invalid, as /v1/config says (--for config=valid|invalid).
	waitConfig
	// waitHeldBack: a config that loaded is held back (--for config=held-back).
	waitHeldBack
	// waitRevision: the config of a commit applied (--for revision=COMMIT).
	waitRevision
)

// waitFlags are wait's flags as given.
type waitFlags struct {
	stateDir string
	cond     string
	notPID   int
	since    string
	timeout  time.Duration
}

// waitSpec is what `pool-managerd wait` waits for, parsed from its arguments.
type waitSpec struct {
	Kind waitKind
	// Pools and Phase: for waitPhase, each of Pools in Phase.
	Pools []string
	Phase reconcile.Phase
	// NotPID, when not 0, holds only for an engine other than this pid (a
	// replaced or restarted engine).
	NotPID int
	// Valid is the config state waited for (waitConfig).
	Valid bool
	// Since, when not zero, holds only for a config load after it (waitConfig).
	Since time.Time
	// Revision is the commit, or a prefix of it, waited for (waitRevision).
	Revision string
	Timeout  time.Duration
}

// knownPhases are the phases a pool can be in: the lifecycle's.
func knownPhases() []reconcile.Phase {
	return reconcile.Phases()
}

// parseWaitArgs turns wait's arguments (the pools) and flags into what it
// waits for; it is pure, so tests call it directly. Its errors are usage errors.
func parseWaitArgs(pools []string, f waitFlags) (waitSpec, error) {
	s := waitSpec{Timeout: f.timeout}
	if f.timeout <= 0 {
		return s, usageError("--timeout %v: want a duration above 0, such as 60s", f.timeout)
	}
	if f.notPID < 0 {
		return s, usageError("--not-pid %d: want a process id", f.notPID)
	}
	for _, p := range pools {
		if strings.TrimSpace(p) == "" {
			return s, usageError("an empty pool name")
		}
	}
	key, value, hasValue := strings.Cut(f.cond, "=")
	switch {
	case f.cond == "":
		return s, usageError("say what to wait for: --for phase=NAME (with pools), --for ready, --for config=valid|invalid|held-back, or --for revision=COMMIT")
	case key == "phase" && hasValue:
		s.Kind = waitPhase
		for _, p := range knownPhases() {
			if strings.EqualFold(value, string(p)) {
				s.Phase = p
			}
		}
		if s.Phase == "" {
			return s, usageError("--for %s: unknown phase %q; want one of %s", f.cond, value, phaseList())
		}
		if len(pools) == 0 {
			return s, usageError("--for %s: name the pools to wait for", f.cond)
		}
		s.Pools = pools
		s.NotPID = f.notPID
	case key == "ready" && !hasValue:
		s.Kind = waitReady
	case key == "config" && hasValue:
		s.Kind = waitConfig
		switch value {
		case "valid":
			s.Valid = true
		case "invalid":
		case "held-back":
			s.Kind = waitHeldBack
		default:
			return s, usageError("--for %s: want config=valid, config=invalid or config=held-back", f.cond)
		}
	case key == "revision" && hasValue:
		s.Kind, s.Revision = waitRevision, strings.ToLower(value)
		if len(value) < 4 || strings.Trim(s.Revision, "0123456789abcdef") != "" {
			return s, usageError("--for %s: want revision=COMMIT, a commit hash or its first 4 or more hex digits", f.cond)
		}
	default:
		return s, usageError("--for %q: want phase=NAME (with pools), ready, config=valid|invalid|held-back, or revision=COMMIT", f.cond)
	}
	if s.Kind != waitPhase && len(pools) > 0 {
		return s, usageError("--for %s waits on the daemon, not on pools: drop %s", f.cond, strings.Join(pools, " "))
	}
	if f.notPID != 0 && s.Kind != waitPhase {
		return s, usageError("--not-pid goes with pools and --for phase=NAME")
	}
	if f.since != "" {
		if s.Kind != waitConfig && s.Kind != waitHeldBack {
			return s, usageError("--since goes with --for config=valid|invalid|held-back")
		}
		t, err := time.Parse(time.RFC3339Nano, f.since)
		if err != nil {
			return s, usageError("--since %q: want a time in RFC 3339, such as $(date -u +%%Y-%%m-%%dT%%H:%%M:%%S.%%NZ)", f.since)
		}
		s.Since = t
	}
	return s, nil
}

func phaseList() string {
	names := make([]string, 0, len(knownPhases()))
	for _, p := range knownPhases() {
		names = append(names, string(p))
	}
	return strings.Join(names, ", ")
}

// String says what the spec waits for, for people.
func (s waitSpec) String() string {
	switch s.Kind {
	case waitPhase:
		what := fmt.Sprintf("%s %s", strings.Join(s.Pools, ", "), s.Phase)
		if s.NotPID != 0 {
			what += fmt.Sprintf(" on an engine other than pid %d", s.NotPID)
		}
		return what
	case waitReady:
		return "the daemon's first reconcile (/readyz)"
	case waitConfig:
		what := "the config invalid"
		if s.Valid {
			what = "the config valid"
		}
		if !s.Since.IsZero() {
			what += ", loaded after " + s.Since.Format(time.RFC3339Nano)
		}
		return what
	case waitHeldBack:
		what := "a config held back"
		if !s.Since.IsZero() {
			what += ", loaded after " + s.Since.Format(time.RFC3339Nano)
		}
		return what
	case waitRevision:
		return "revision " + s.Revision + " applied"
	}
	return "nothing"
}

// poolsHold reports whether the pools the daemon shows satisfy a phase
// spec, and describes the named pools as shown.
func (s waitSpec) poolsHold(shown []api.Pool) (bool, string) {
	byID := make(map[string]api.Pool, len(shown))
	for _, p := range shown {
		byID[p.Pool] = p
	}
	holds := true
	seen := make([]string, 0, len(s.Pools))
	for _, id := range s.Pools {
		p, ok := byID[id]
		if !ok {
			holds = false
			seen = append(seen, id+" unknown to the daemon")
			continue
		}
		desc := fmt.Sprintf("%s %s", id, p.Phase)
		if p.PID != 0 {
			desc += fmt.Sprintf(" (pid %d)", p.PID)
		} else {
			desc += " (no engine)"
		}
		seen = append(seen, desc)
		if p.Phase != s.Phase || (s.NotPID != 0 && (p.PID == 0 || p.PID == s.NotPID)) {
			holds = false
		}
	}
	return holds, strings.Join(seen, ", ")
}

// configHolds reports whether the daemon's config state satisfies a config
// spec, and describes it.
func (s waitSpec) configHolds(c api.Config) (bool, string) {
	state := "invalid"
	if c.Valid {
		state = "valid"
	}
	seen := "the config " + state
	if c.LastLoad.IsZero() {
		seen += ", never loaded"
	} else {
		seen += ", last loaded " + c.LastLoad.Format(time.RFC3339Nano)
	}
	if !c.Valid && len(c.Errors) > 0 {
		seen += fmt.Sprintf(" (%s)", c.Errors[0].String())
	}
	if c.HeldBack != nil {
		seen += ", held back: " + c.HeldBack.Reason
	}
	recent := s.Since.IsZero() || c.LastLoad.After(s.Since)
	if s.Kind == waitHeldBack {
		return c.HeldBack != nil && recent, seen
	}
	return c.Valid == s.Valid && recent, seen
}

// revisionHolds reports whether the config of the spec's commit is in
// force, and describes the revisions the daemon shows.
func (s waitSpec) revisionHolds(c api.Config) (bool, string) {
	seen := "applied revision " + orNone(c.LastAppliedRevision.String()) + ", last attempted " + orNone(c.LastAttemptedRevision.String())
	if !c.Valid && len(c.Errors) > 0 {
		seen += fmt.Sprintf(" (invalid: %s)", c.Errors[0].String())
	}
	if c.HeldBack != nil {
		seen += " (held back: " + c.HeldBack.Reason + ")"
	}
	if c.Git != nil && c.Git.Error != "" {
		seen += " (fetch failing: " + c.Git.Error + ")"
	}
	return c.LastAppliedRevision != nil && strings.HasPrefix(c.LastAppliedRevision.Commit, s.Revision), seen
}

func orNone(s string) string {
	if s == "" {
		return "none"
	}
	return s
}

// waitClient is the part of the daemon's API wait asks; *api.Client has it.
type waitClient interface {
	Ready(ctx context.Context) (bool, error)
	Pools(ctx context.Context) ([]api.Pool, error)
	Config(ctx context.Context) (api.Config, error)
}

// check asks the daemon once whether the spec holds, and says what it saw.
func (s waitSpec) check(ctx context.Context, c waitClient) (bool, string, error) {
	switch s.Kind {
	case waitPhase:
		pools, err := c.Pools(ctx)
		if err != nil {
			return false, "", err
		}
		ok, seen := s.poolsHold(pools)
		return ok, seen, nil
	case waitReady:
		ready, err := c.Ready(ctx)
		if err != nil {
			return false, "", err
		}
		if ready {
			return true, "the daemon is ready: its first reconcile is done", nil
		}
		return false, "the daemon is not ready: its first reconcile is not done", nil
	case waitConfig, waitHeldBack, waitRevision:
		cfg, err := c.Config(ctx)
		if err != nil {
			return false, "", err
		}
		ok, seen := s.configHolds(cfg)
		if s.Kind == waitRevision {
			ok, seen = s.revisionHolds(cfg)
		}
		return ok, seen, nil
	}
	return false, "", fmt.Errorf("wait: unknown condition %d", s.Kind)
}

// runWait asks the daemon of stateDir every interval until the spec holds
// (nil), or its timeout passes (an error saying what it last saw). The
// daemon's address is read again each time: the daemon may not have written
// it yet, or a new daemon may have replaced the one that did.
func runWait(ctx context.Context, s waitSpec, stateDir, token string, interval time.Duration) (string, error) {
	wctx, cancel := context.WithTimeout(ctx, s.Timeout)
	defer cancel()
	ticker := time.NewTicker(interval)
	defer ticker.Stop()
	seen := "nothing: the daemon never answered"
	for {
		addr, err := api.ReadAddr(stateDir)
		if err != nil {
			seen = err.Error()
		} else {
			ok, now, err := s.check(wctx, api.NewClient(addr, token))
			switch {
			case err == nil:
				seen = now
				if ok {
					return seen, nil
				}
			case errors.Is(err, api.ErrUnauthorized):
				return "", fmt.Errorf("wait: the daemon at %s refused the request (set %s to its token): %w", addr, api.TokenEnv, err)
			case wctx.Err() != nil:
				// Cut off by the deadline: what was seen before stands.
			default:
				seen = fmt.Sprintf("no answer from the daemon at %s: %v", addr, err)
			}
		}
		select {
		case <-wctx.Done():
			if ctx.Err() != nil {
				return "", fmt.Errorf("wait: interrupted while waiting for %s; last seen: %s", s, seen)
			}
			return "", fmt.Errorf("wait: timed out after %v waiting for %s; last seen: %s", s.Timeout, s, seen)
		case <-ticker.C:
		}
	}
}

func newWaitCommand() *cobra.Command {
	var f waitFlags
	cmd := &cobra.Command{
		Use:   "wait [POOL...] --for phase=NAME|ready|config=valid|config=invalid|config=held-back|revision=COMMIT",
		Short: "Wait until the daemon reports a pool's phase, its readiness or the config's state",
		Long: `wait asks the running daemon's API (its address is in STATE_DIR/api.addr; the
token, if any, is read from POOL_MANAGERD_TOKEN) every 50 ms until what it
reports satisfies the condition, then prints what it saw and exits 0. It is
what a script waits with instead of sleeping.

Conditions (--for):
  phase=NAME        each named pool is in phase NAME (Pending, Fetching, Preloading, Ready,
                    Unready, Draining, Failed, Stopped); with --not-pid PID, only
                    on an engine other than PID: a replaced or restarted engine
  ready             the daemon's first reconcile is done (/readyz)
  config=valid      the config loaded (/v1/config); with --since TIME, a load
  config=invalid    after TIME (RFC 3339), such as one noted before an edit
  config=held-back  a config loaded and is held back: it leaves the node no
                    pools while engines run (serve --allow-empty)
  revision=COMMIT   the config of this commit (or a commit it is a prefix of)
                    is in force (/v1/config's lastAppliedRevision): a rollout
                    from Git reached this node

A daemon that does not answer yet (not started, or its address not written)
is asked again until the timeout.

Exit codes: 0 the condition holds, 1 the timeout passed (the message says what
the daemon last reported) or the daemon refused the token, 2 usage error.`,
		Example: `  pool-managerd wait --state-dir /tmp/state --for ready
  pool-managerd wait coder llama70b --for phase=Ready
  pool-managerd wait llama70b --for phase=Ready --not-pid 1234 --timeout 5m
  since=$(date -u +%Y-%m-%dT%H:%M:%S.%NZ); vi config/pools/coder.cue
  pool-managerd wait --for config=valid --since "$since"
  pool-managerd wait --for revision=$(git rev-parse HEAD) --timeout 5m`,
		RunE: func(cmd *cobra.Command, args []string) error {
			spec, err := parseWaitArgs(args, f)
			if err != nil {
				return err
			}
			seen, err := runWait(cmd.Context(), spec, f.stateDir, os.Getenv(api.TokenEnv), waitPollInterval)
			if err != nil {
				return err
			}
			_, err = fmt.Fprintln(cmd.OutOrStdout(), seen)
			return err
		},
	}
	cmd.Flags().StringVar(&f.stateDir, "state-dir", DefaultStateDir, "the daemon's state directory (its API address is in api.addr)")
	cmd.Flags().StringVar(&f.cond, "for", "", "the condition: phase=NAME (with pools), ready, config=valid, config=invalid, config=held-back or revision=COMMIT")
	cmd.Flags().IntVar(&f.notPID, "not-pid", 0, "with --for phase=NAME: only on an engine other than this pid")
	cmd.Flags().StringVar(&f.since, "since", "", "with --for config=...: only a config load after this time (RFC 3339)")
	cmd.Flags().DurationVar(&f.timeout, "timeout", defaultWaitTimeout, "how long to wait before exit status 1")
	return cmd
}
