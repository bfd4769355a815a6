// Package caps learns what an engine binary supports from its own --help
// and --version, once per binary: the answer is cached by the binary's path,
// modification time and size, so an upgraded binary is read again and an
// unchanged one never is. It is engine-generic: the caller says which
// arguments print the help (llama-server --help, vllm serve --help=all,
// text-generation-launcher --help) and asks for the flags it cares about
// (--fit, --shutdown-timeout, ...).
//
// A probe runs the binary, which may take seconds (vLLM imports its Python
// packages): call Cache.Get off any loop that must answer quickly, as the
// engine driver does in its Start.
package caps

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"sync"
	"time"
)

// Probe says how to ask a binary about itself.
type Probe struct {
	// Help are the arguments that print every option (["--help"]).
	Help []string
	// Version are the arguments that print the version (["--version"]);
	// nil: none asked.
	Version []string
	// Env is the environment the binary runs with; nil: an empty one.
	Env []string
	// Timeout bounds each run; 0 means DefaultTimeout.
	Timeout time.Duration
}

// DefaultTimeout bounds one run of a probe.
const DefaultTimeout = 30 * time.Second

// Caps is what a binary said of itself.
type Caps struct {
	// Path is the binary.
	Path string
	// Version is the first line of what --version printed ("version: 0
	// (unknown)"), "" when not asked or it printed nothing.
	Version string
	// Known says the help was read and named options: only then does Has
	// answer from it.
	Known bool
	// Err says why the help could not be read (Known is false).
	Err   string
	flags map[string]bool
}

// Has reports whether the binary takes the long option flag ("--fit"). A
// binary whose help could not be read is assumed to take it: the engine
// itself then says if not (class args_rejected).
func (c Caps) Has(flag string) bool {
	if !c.Known {
		return true
	}
	return c.flags[flag]
}

// Lacks reports whether the help was read and does not name flag.
func (c Caps) Lacks(flag string) bool { return c.Known && !c.flags[flag] }

// Flags returns the number of long options the help named.
func (c Caps) Flags() int { return len(c.flags) }

// longOption is a long option as help texts write it: "--fit", "--fit-ctx",
// "--help=all" (the part before =).
var longOption = regexp.MustCompile(`(?:^|[\s,\[(|])(--[a-zA-Z0-9][a-zA-Z0-9_-]*)`)

// metavar is a field of an option list that is not an option: an argument's
// name or its choices ("N", "SHUTDOWN_TIMEOUT", "<DIR>", "[on|off]", "{a,b}").
var metavar = regexp.MustCompile(`^(?:[A-Z0-9_.|=-]+|<[^>]*>|\[[^\]]*\]?|\{[^}]*\}?)[,.]?$|^[\]}>]+[,.]?$`)

// Parse reads the long options out of a help text: those a line starts with
// (an option list such as "-c,    --ctx-size N" or "--help, -h"), and those
// of a usage line ("usage: vllm serve [-h] [--host HOST]"). An option named
// in a description ("use --foo instead") is not one the binary takes.
func Parse(help string) map[string]bool {
	flags := map[string]bool{}
	inUsage := false
	for _, line := range strings.Split(help, "\n") {
		trimmed := strings.TrimSpace(line)
		if strings.HasPrefix(strings.ToLower(trimmed), "usage:") {
			inUsage = true
		} else if trimmed == "" || line == trimmed && !strings.HasPrefix(trimmed, "-") && !strings.HasPrefix(trimmed, "[") {
			inUsage = false
		}
		if inUsage || strings.HasPrefix(trimmed, "[") {
			for _, m := range longOption.FindAllStringSubmatch(line, -1) {
				flags[m[1]] = true
			}
			continue
		}
		for _, field := range strings.Fields(trimmed) {
			if strings.HasPrefix(field, "-") {
				if m := longOption.FindStringSubmatch(field); m != nil {
					flags[m[1]] = true
				}
				continue
			}
			if !metavar.MatchString(field) {
				break // the description begins
			}
		}
	}
	return flags
}

// Runner runs a binary with arguments and returns what it wrote to stdout
// and stderr together.
type Runner func(ctx context.Context, path string, args, env []string) ([]byte, error)

// Exec is the Runner that starts the binary (no shell).
func Exec(ctx context.Context, path string, args, env []string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, path, args...)
	cmd.Env = env
	if cmd.Env == nil {
		cmd.Env = []string{}
	}
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	cmd.WaitDelay = time.Second
	err := cmd.Run()
	return out.Bytes(), err
}

// key identifies one version of one binary.
type key struct {
	path  string
	mtime time.Time
	size  int64
	args  string
}

// Cache holds what each binary said, by path, mtime and size. The zero
// Cache is ready to use; it is safe for concurrent use, and two Gets of the
// same binary at once run its probe once.
type Cache struct {
	// Run runs the binary; nil means Exec.
	Run Runner

	mu      sync.Mutex
	entries map[key]*entry
	// probes counts the probes run, for tests.
	probes int
}

type entry struct {
	done chan struct{}
	caps Caps
}

// Get returns what the binary at path says of itself, running the probe
// only when this version of the binary (its mtime and size) was not asked
// before. An error is returned only when the binary cannot be read
// (stat); a help that cannot be had is Caps{Known: false} with Err set,
// cached like any other answer.
func (c *Cache) Get(ctx context.Context, path string, p Probe) (Caps, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return Caps{Path: path}, fmt.Errorf("engine capabilities: %w", err)
	}
	k := key{path: path, mtime: fi.ModTime(), size: fi.Size(), args: strings.Join(p.Help, "\x00") + "\x01" + strings.Join(p.Version, "\x00")}
	c.mu.Lock()
	if c.entries == nil {
		c.entries = map[key]*entry{}
	}
	e, ok := c.entries[k]
	if !ok {
		e = &entry{done: make(chan struct{})}
		c.entries[k] = e
		// An older version of the same binary is forgotten.
		for old := range c.entries {
			if old.path == path && old.args == k.args && old != k {
				delete(c.entries, old)
			}
		}
		c.probes++
		c.mu.Unlock()
		e.caps = c.probe(ctx, path, p)
		close(e.done)
		if ctx.Err() != nil {
			// Cut short by the caller, not an answer of the binary's.
			c.mu.Lock()
			if c.entries[k] == e {
				delete(c.entries, k)
			}
			c.mu.Unlock()
		}
		return e.caps, nil
	}
	c.mu.Unlock()
	select {
	case <-e.done:
		return e.caps, nil
	case <-ctx.Done():
		return Caps{Path: path}, fmt.Errorf("engine capabilities of %s: %w", path, ctx.Err())
	}
}

// Probes returns how many probes the cache has run.
func (c *Cache) Probes() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.probes
}

func (c *Cache) probe(ctx context.Context, path string, p Probe) Caps {
	run := c.Run
	if run == nil {
		run = Exec
	}
	timeout := p.Timeout
	if timeout <= 0 {
		timeout = DefaultTimeout
	}
	once := func(args []string) ([]byte, error) {
		ctx, cancel := context.WithTimeout(ctx, timeout)
		defer cancel()
		out, err := run(ctx, path, args, p.Env)
		if ctx.Err() != nil {
			return out, fmt.Errorf("%s %s: %w", path, strings.Join(args, " "), ctx.Err())
		}
		return out, err
	}
	caps := Caps{Path: path}
	if len(p.Version) > 0 {
		if out, err := once(p.Version); err == nil {
			caps.Version = firstLine(string(out))
		}
	}
	out, err := once(p.Help)
	flags := Parse(string(out))
	switch {
	case err != nil:
		var ee *exec.ExitError
		if !errors.As(err, &ee) || len(flags) == 0 {
			caps.Err = fmt.Sprintf("%s %s: %v", path, strings.Join(p.Help, " "), err)
			return caps
		}
		// Some programs exit non-zero after printing their help: the help counts.
	case len(flags) == 0:
		caps.Err = fmt.Sprintf("%s %s printed no options", path, strings.Join(p.Help, " "))
		return caps
	}
	caps.Known, caps.flags = true, flags
	return caps
}

func firstLine(s string) string {
	for _, l := range strings.Split(s, "\n") {
		if l = strings.TrimSpace(l); l != "" {
			return l
		}
	}
	return ""
}

// FromHelp is the Caps of a binary whose --help printed help and --version
// version: what a probe of it finds.
func FromHelp(path, version, help string) Caps {
	flags := Parse(help)
	if len(flags) == 0 {
		return Caps{Path: path, Version: firstLine(version), Err: "the help names no options"}
	}
	return Caps{Path: path, Version: firstLine(version), Known: true, flags: flags}
}
