package features

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/cucumber/godog"

	"github.com/poolmanagerd/pool-managerd/internal/api"
)

// The steps of the removal settle window and the empty-config guard
// (serve --removal-settle, --allow-empty). They change the config the way
// editors, scp and restores do, note when (changedAt), and wait on what the
// daemon reports: a pool pending removal (removalAt), a config held back,
// a stop in its log. The only pause is the gap between two writes that a
// scenario names ("1s after the last change").

func (w *world) registerRemoval(sc *godog.ScenarioContext) {
	sc.Step(`^I truncate the config file "([^"]*)" to 0 bytes in place$`, w.truncateConfig)
	sc.Step(`^I write the config file "([^"]*)" in place, (\d+)s after the last change:$`, w.writeInPlaceAfter)
	sc.Step(`^I move the config tree aside$`, func() error { return w.moveAside("") })
	sc.Step(`^I move the config folder "([^"]*)" aside$`, w.moveAside)
	sc.Step(`^I restore "([^"]*)" from what was moved aside(?:, (\d+)s after the last change)?$`, w.restoreFromAside)
	sc.Step(`^the daemon shows pool "([^"]*)" pending removal, Ready with the noted engine pid$`, w.pendingRemoval)
	sc.Step(`^the daemon shows pool "([^"]*)" Ready with the noted engine pid and no removal pending$`, w.noRemovalPending)
	sc.Step(`^the daemon shows pool "([^"]*)" as Pending with no engine, the reason "([^"]*)" and no failure recorded$`, w.pendingWithReason)
	sc.Step(`^the daemon shows pool "([^"]*)" with no failure recorded$`, w.noFailure)
	sc.Step(`^the daemon stopped the engine of pool "([^"]*)" once, not before the removal time it showed$`, w.stoppedOnceAfterRemoval)
	sc.Step(`^the daemon never logged a stop of pool "([^"]*)"$`, w.neverStopped)
	sc.Step(`^the daemon's config is held back since the last change, with a reason containing:$`, w.configHeldBack)
	sc.Step(`^the daemon's config is applied, not held back$`, w.configNotHeldBack)
	sc.Step(`^the daemon's config in force has the pools "([^"]*)"$`, w.configPools)
	sc.Step(`^the daemon's config is invalid with an error containing "(.*)"$`, w.configInvalidWith)
}

// changing notes that the config is about to change.
func (w *world) changing() { w.changedAt = time.Now() }

// gapAfterLastChange waits until seconds have passed since the last change:
// the gap between two writes that a scenario names, not a wait for a result.
func (w *world) gapAfterLastChange(seconds string) error {
	if seconds == "" {
		return nil
	}
	n, err := strconv.Atoi(seconds)
	if err != nil {
		return err
	}
	if w.changedAt.IsZero() {
		return errors.New("no config change was made yet")
	}
	time.Sleep(time.Until(w.changedAt.Add(time.Duration(n) * time.Second)))
	return nil
}

// truncateConfig empties a config file in place, as an editor or scp that
// writes in place leaves it until it writes the new content.
func (w *world) truncateConfig(rel string) error {
	w.changing()
	return os.Truncate(w.path(rel), 0)
}

// writeInPlaceAfter writes a config file in place (same file, no rename)
// once the gap since the last change has passed.
func (w *world) writeInPlaceAfter(rel, seconds string, doc *godog.DocString) error {
	if err := w.gapAfterLastChange(seconds); err != nil {
		return err
	}
	f, err := os.OpenFile(w.path(rel), os.O_WRONLY|os.O_TRUNC, 0)
	if err != nil {
		return err
	}
	w.changing()
	if _, err := f.WriteString(strings.ReplaceAll(doc.Content, "WORKSPACE", w.workspace)); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// asideDir is where moveAside puts what it takes out of the config directory.
func (w *world) asideDir() string { return filepath.Join(w.workspace, "aside") }

// moveAside moves a folder of the config directory ("" for all of it,
// entry by entry) out of it in one rename each, as a restore that starts
// from an empty tree.
func (w *world) moveAside(rel string) error {
	names := []string{rel}
	if rel == "" {
		entries, err := os.ReadDir(w.path(""))
		if err != nil {
			return err
		}
		names = names[:0]
		for _, e := range entries {
			names = append(names, e.Name())
		}
	}
	if err := os.MkdirAll(w.asideDir(), 0o755); err != nil {
		return err
	}
	w.changing()
	for _, name := range names {
		dst := filepath.Join(w.asideDir(), name)
		if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
			return err
		}
		if err := os.Rename(w.path(name), dst); err != nil {
			return err
		}
	}
	return nil
}

// restoreFromAside copies a folder moved aside back into the config
// directory file by file, as cp -r and rsync do, after the gap since the
// last change when one is named.
func (w *world) restoreFromAside(rel, seconds string) error {
	if err := w.gapAfterLastChange(seconds); err != nil {
		return err
	}
	src := filepath.Join(w.asideDir(), rel)
	if _, err := os.Stat(src); err != nil {
		return fmt.Errorf("%s was not moved aside: %w", rel, err)
	}
	w.changing()
	return filepath.WalkDir(src, func(p string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		sub, err := filepath.Rel(src, p)
		if err != nil {
			return err
		}
		dst := w.path(filepath.Join(rel, sub))
		if d.IsDir() {
			return os.MkdirAll(dst, 0o755)
		}
		data, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		return os.WriteFile(dst, data, 0o644)
	})
}

// pendingRemoval waits until the daemon shows the pool pending removal
// while its noted engine keeps serving, and keeps the removal time it shows.
// That time comes after the change that removed the pool: the removal
// waits for its settle window and does not take effect at once.
func (w *world) pendingRemoval(pool string) error {
	pid, err := w.notedEngine(pool)
	if err != nil {
		return err
	}
	var shown time.Time
	err = w.awaitPool(applyNode, pool, "pending removal with its noted engine", func(p api.Pool) error {
		switch {
		case p.RemovalAt.IsZero():
			return errors.New("no removalAt")
		case p.Phase != "Ready" || !p.Ready || p.PID != pid:
			return fmt.Errorf("phase %s, ready %v, pid %d (noted %d)", p.Phase, p.Ready, p.PID, pid)
		case !w.changedAt.IsZero() && !p.RemovalAt.After(w.changedAt):
			return fmt.Errorf("removalAt %v is not after the change made at %v", p.RemovalAt, w.changedAt)
		}
		shown = p.RemovalAt
		return nil
	})
	if err != nil {
		return err
	}
	if w.removalAt == nil {
		w.removalAt = map[string]time.Time{}
	}
	w.removalAt[pool] = shown
	return nil
}

// noRemovalPending waits until the pool is Ready with its noted engine and
// no removal pending.
func (w *world) noRemovalPending(pool string) error {
	pid, err := w.notedEngine(pool)
	if err != nil {
		return err
	}
	return w.awaitPool(applyNode, pool, "Ready with its noted engine and no removal pending", func(p api.Pool) error {
		if !p.RemovalAt.IsZero() || p.Phase != "Ready" || !p.Ready || p.PID != pid {
			return fmt.Errorf("removalAt %v, phase %s, ready %v, pid %d (noted %d)", p.RemovalAt, p.Phase, p.Ready, p.PID, pid)
		}
		return nil
	})
}

// failureRecorded says what failure the pool shows, if any.
func failureRecorded(p api.Pool) error {
	if p.LastError != nil || p.Restarts != 0 || p.Breaker != api.BreakerClosed || !p.NextRetry.IsZero() {
		return fmt.Errorf("a failure is recorded: last error %+v, %d restarts, breaker %s, next retry %v", p.LastError, p.Restarts, p.Breaker, p.NextRetry)
	}
	return nil
}

func (w *world) pendingWithReason(pool, reason string) error {
	return w.awaitPool(applyNode, pool, "Pending: "+reason, func(p api.Pool) error {
		if p.Phase != "Pending" || p.Ready || p.PID != 0 || p.Reason != reason {
			return fmt.Errorf("phase %s, ready %v, pid %d, reason %q", p.Phase, p.Ready, p.PID, p.Reason)
		}
		return failureRecorded(p)
	})
}

func (w *world) noFailure(pool string) error {
	p, err := w.apiPool(applyNode, pool)
	if err != nil {
		return err
	}
	return failureRecorded(p)
}

// stops are the daemon's log events that begin a stop of the pool's engine.
func (w *world) stops(pool string) ([]map[string]any, error) {
	events, err := w.logEvents()
	if err != nil {
		return nil, err
	}
	var out []map[string]any
	for _, e := range events {
		if msg, _ := e["@message"].(string); e["pool"] == pool && strings.HasPrefix(msg, "stopping engine pid ") {
			out = append(out, e)
		}
	}
	return out, nil
}

// stoppedOnceAfterRemoval checks that the daemon began exactly one stop of
// the pool's noted engine, and not before the removal time it showed while
// the pool was pending removal (the log's timestamps have milliseconds).
func (w *world) stoppedOnceAfterRemoval(pool string) error {
	pid, err := w.notedEngine(pool)
	if err != nil {
		return err
	}
	at, ok := w.removalAt[pool]
	if !ok {
		return fmt.Errorf("the daemon was not seen showing pool %s pending removal", pool)
	}
	var stops []map[string]any
	if err := w.eventually("a stop of pool "+pool+" in the log", func() error {
		stops, err = w.stops(pool)
		if err == nil && len(stops) == 0 {
			err = errors.New("none yet")
		}
		return err
	}); err != nil {
		return err
	}
	if len(stops) != 1 {
		return fmt.Errorf("the daemon began %d stops of pool %s, want 1: %v%s", len(stops), pool, stops, w.daemonLogs())
	}
	e := stops[0]
	if want := fmt.Sprintf("stopping engine pid %d", pid); e["@message"] != want {
		return fmt.Errorf("the stop of pool %s is %q, want %q", pool, e["@message"], want)
	}
	ts, _ := e["@timestamp"].(string)
	stoppedAt, err := time.Parse(time.RFC3339Nano, ts)
	if err != nil {
		return fmt.Errorf("the stop event's @timestamp %q: %w", ts, err)
	}
	if stoppedAt.Before(at.Truncate(time.Millisecond)) {
		return fmt.Errorf("pool %s was stopped at %v, before its removal time %v", pool, stoppedAt, at)
	}
	return nil
}

func (w *world) neverStopped(pool string) error {
	stops, err := w.stops(pool)
	if err != nil {
		return err
	}
	if len(stops) != 0 {
		return fmt.Errorf("the daemon stopped pool %s: %v%s", pool, stops, w.daemonLogs())
	}
	return nil
}

// configHeldBack waits until /v1/config says the config that loaded after
// the last change is held back, for a reason that contains each cell of
// the table's first column.
func (w *world) configHeldBack(table *godog.Table) error {
	var want []string
	for _, row := range table.Rows {
		want = append(want, row.Cells[0].Value)
	}
	return w.eventually("the config to be held back", func() error {
		cfg, err := w.daemonConfig()
		if err != nil {
			return err
		}
		h := cfg.HeldBack
		switch {
		case !cfg.Valid:
			return fmt.Errorf("the config is invalid: %v", cfg.Errors)
		case h == nil:
			return errors.New("not held back")
		case h.Since.Before(w.changedAt):
			return fmt.Errorf("held back since %v, before the last change at %v", h.Since, w.changedAt)
		}
		for _, s := range want {
			if !strings.Contains(h.Reason, s) {
				return fmt.Errorf("the reason %q does not contain %q", h.Reason, s)
			}
		}
		return nil
	})
}

func (w *world) configNotHeldBack() error {
	return w.eventually("the config to be applied", func() error {
		cfg, err := w.daemonConfig()
		switch {
		case err != nil:
			return err
		case !cfg.Valid:
			return fmt.Errorf("the config is invalid: %v", cfg.Errors)
		case cfg.HeldBack != nil:
			return fmt.Errorf("held back: %+v", cfg.HeldBack)
		case cfg.LastGoodLoad.Before(w.changedAt):
			return fmt.Errorf("the last good load was at %v, before the last change at %v", cfg.LastGoodLoad, w.changedAt)
		}
		return nil
	})
}

// configPools checks the pools of the config in force, as /v1/config lists them.
func (w *world) configPools(pools string) error {
	cfg, err := w.daemonConfig()
	if err != nil {
		return err
	}
	if want := splitList(pools); !slices.Equal(cfg.Pools, want) {
		return fmt.Errorf("the config in force has the pools %v, want %v", cfg.Pools, want)
	}
	return nil
}

func (w *world) configInvalidWith(msg string) error {
	return w.eventually("the config to be invalid", func() error {
		cfg, err := w.daemonConfig()
		if err != nil {
			return err
		}
		if cfg.Valid {
			return errors.New("the daemon's config is valid")
		}
		for _, d := range cfg.Errors {
			if strings.Contains(d.Message, msg) {
				return nil
			}
		}
		return fmt.Errorf("no error containing %q: %v", msg, cfg.Errors)
	})
}
