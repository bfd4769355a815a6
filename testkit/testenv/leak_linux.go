package testenv

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/poolmanagerd/pool-managerd/drivers/engine"
	"github.com/poolmanagerd/pool-managerd/drivers/engine/preset"
	"github.com/poolmanagerd/pool-managerd/drivers/engine/proc"
)

// Engine is a live engine process: a process whose environment carries the
// engine marker (engine.MarkerEnv), an engine's or one of its workers'.
type Engine struct {
	PID int
	// Marker is the marker's value (node/pool/generation/spechash).
	Marker string
	// StateDir and SimDir are the state directory (engine.StateDirEnv) and
	// simulated node (preset.SimDirEnv) of its environment, "" when unset.
	StateDir, SimDir string
	// Argv is its command line.
	Argv []string
}

func (e Engine) String() string {
	return fmt.Sprintf("pid %d marker %q state %s: %s", e.PID, e.Marker, e.StateDir, strings.Join(e.Argv, " "))
}

// Engines returns the live engine processes (zombies left out) whose state
// directory or simulated node is dir or lies under it, by pid.
func Engines(dir string) ([]Engine, error) {
	found, err := proc.FindByEnv(engine.MarkerEnv)
	if err != nil {
		return nil, fmt.Errorf("testenv: find engines: %w", err)
	}
	var out []Engine
	for pid, marker := range found {
		env, err := proc.Environ(pid)
		if err != nil {
			continue // gone meanwhile
		}
		e := Engine{PID: pid, Marker: marker, StateDir: env[engine.StateDirEnv], SimDir: env[preset.SimDirEnv]}
		if !within(dir, e.StateDir) && !within(dir, e.SimDir) {
			continue
		}
		if !alive(pid) {
			continue
		}
		e.Argv, _ = proc.Cmdline(pid)
		out = append(out, e)
	}
	slices.SortFunc(out, func(a, b Engine) int { return a.PID - b.PID })
	return out, nil
}

// within reports whether path is dir or lies under it.
func within(dir, path string) bool {
	if path == "" {
		return false
	}
	rel, err := filepath.Rel(filepath.Clean(dir), filepath.Clean(path))
	return err == nil && rel != ".." && !strings.HasPrefix(rel, ".."+string(filepath.Separator))
}

// alive reports whether pid is a live process (not a zombie).
func alive(pid int) bool {
	info, err := proc.Stat(pid)
	return err == nil && info.State != 'Z' && info.State != 'X'
}

// killGrace bounds the wait for killed engines to be gone. It is a failure
// guard: SIGKILL ends a process at once on any machine.
const killGrace = 10 * time.Second

// KillEngines kills the engines under dir (see Engines) with SIGKILL and
// waits until they are gone. It returns those it found: where the caller
// expected none, a leak. The error says which survived.
func KillEngines(ctx context.Context, dir string) ([]Engine, error) {
	found, err := Engines(dir)
	if err != nil || len(found) == 0 {
		return found, err
	}
	for _, e := range found {
		_ = syscall.Kill(e.PID, syscall.SIGKILL)
	}
	ctx, cancel := context.WithTimeout(ctx, killGrace)
	defer cancel()
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		var left []int
		for _, e := range found {
			if alive(e.PID) {
				left = append(left, e.PID)
			}
		}
		if len(left) == 0 {
			return found, nil
		}
		select {
		case <-ctx.Done():
			return found, fmt.Errorf("testenv: engine processes %v survived SIGKILL: %w", left, ctx.Err())
		case <-tick.C:
		}
	}
}

// LeakError reports engines that were still running where none should be.
type LeakError struct {
	// Where is the folder that was checked.
	Where string
	// Engines are those found, killed since.
	Engines []Engine
}

func (e *LeakError) Error() string {
	lines := make([]string, len(e.Engines))
	for i, en := range e.Engines {
		lines[i] = en.String()
	}
	return fmt.Sprintf("%d engine process(es) of %s were still running (killed now):\n\t%s",
		len(e.Engines), e.Where, strings.Join(lines, "\n\t"))
}

// CheckEngines is the leak check: it kills the engines under dir and
// returns a *LeakError naming them when there were any, joined with the
// error of the kill.
func CheckEngines(ctx context.Context, dir string) error {
	found, err := KillEngines(ctx, dir)
	if len(found) == 0 {
		return err
	}
	return errors.Join(&LeakError{Where: dir, Engines: found}, err)
}

// CheckNoEngines fails tb when engines run under dir, and kills them. what
// says when the check runs, for the message ("after stop --all").
func CheckNoEngines(tb testing.TB, dir, what string) {
	tb.Helper()
	if err := CheckEngines(context.Background(), dir); err != nil {
		tb.Errorf("%s: %v", what, err)
	}
}
