package cli

import (
	"maps"
	"os"
	"slices"
	"strings"

	"github.com/spf13/cobra"

	"github.com/poolmanagerd/pool-managerd/internal/state"
)

// flagValues are the values shell completion offers for a flag, by command
// and flag name ("" for any command): the values each command accepts.
func flagValues() map[string]map[string][]string {
	return map[string]map[string][]string{
		"plan":      {"format": {"text", "json"}, "gpus": {"nvml", "sim:", "declared"}},
		"validate":  {"format": validateFormats},
		"status":    {"format": {"table", "json"}, "field": statusFields()},
		"inventory": {"format": {"cue", "json"}},
		"serve":     {"log-level": {"trace", "debug", "info", "warn", "error"}, "log-format": {"text", "json"}},
		"":          {"gpus": {"nvml", "sim:"}},
	}
}

// poolArgCommands take pool names as arguments: completed from the state
// directory that --state-dir names.
func poolArgCommands() []string { return []string{"status", "reset", "stop", "wait"} }

// registerCompletions gives root's commands shell completion of flag values
// and pool names (pool-managerd completion bash|zsh|fish|powershell).
func registerCompletions(root *cobra.Command) {
	table := flagValues()
	var walk func(c *cobra.Command)
	walk = func(c *cobra.Command) {
		for _, name := range []string{"format", "gpus", "log-level", "log-format", "field"} {
			if c.Flags().Lookup(name) == nil {
				continue
			}
			values, ok := table[c.Name()][name]
			if !ok {
				values, ok = table[""][name]
			}
			if ok {
				_ = c.RegisterFlagCompletionFunc(name, completeValues(values))
			}
		}
		if slices.Contains(poolArgCommands(), c.Name()) && c.Parent() == root {
			c.ValidArgsFunction = completePools
		}
		for _, sub := range c.Commands() {
			walk(sub)
		}
	}
	walk(root)
}

// completeValues completes a flag from a fixed list. A value ending in ':'
// (sim:) takes more after it, so no space is added.
func completeValues(values []string) cobra.CompletionFunc {
	return func(_ *cobra.Command, _ []string, toComplete string) ([]cobra.Completion, cobra.ShellCompDirective) {
		var out []cobra.Completion
		noSpace := false
		for _, v := range values {
			if strings.HasPrefix(v, toComplete) {
				out = append(out, v)
				noSpace = noSpace || strings.HasSuffix(v, ":")
			}
		}
		directive := cobra.ShellCompDirectiveNoFileComp
		if noSpace {
			directive |= cobra.ShellCompDirectiveNoSpace
		}
		return out, directive
	}
}

// completePools completes the pools the node's state file knows (their
// engines and restart records), in the state directory of --state-dir, its
// variable, or the default, leaving out pools already named.
func completePools(cmd *cobra.Command, args []string, toComplete string) ([]cobra.Completion, cobra.ShellCompDirective) {
	dir := DefaultStateDir
	if f := cmd.Flags().Lookup("state-dir"); f != nil && f.Changed {
		dir = f.Value.String()
	} else if v := os.Getenv(envName("state-dir")); v != "" {
		dir = v
	}
	st, err := state.Store{Dir: dir}.Load()
	if err != nil {
		return nil, cobra.ShellCompDirectiveNoFileComp | cobra.ShellCompDirectiveError
	}
	ids := map[string]bool{}
	for id := range st.Engines {
		ids[id] = true
	}
	for id := range st.Pools {
		ids[id] = true
	}
	var out []cobra.Completion
	for _, id := range slices.Sorted(maps.Keys(ids)) {
		if strings.HasPrefix(id, toComplete) && !slices.Contains(args, id) {
			out = append(out, id)
		}
	}
	return out, cobra.ShellCompDirectiveNoFileComp
}
