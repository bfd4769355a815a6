package reconcile

import (
	"encoding/json"
	"fmt"
	"io"
	"slices"
	"strings"
)

// TextOptions control the text rendering of a plan.
type TextOptions struct {
	// Color adds ANSI colours; set it only when writing to a terminal.
	Color bool
}

const (
	ansiReset  = "\x1b[0m"
	ansiBold   = "\x1b[1m"
	ansiRed    = "\x1b[31m"
	ansiGreen  = "\x1b[32m"
	ansiYellow = "\x1b[33m"
	ansiCyan   = "\x1b[36m"
)

func (a Action) color() string {
	switch a {
	case Create, Adopt:
		return ansiGreen
	case Update, Restart:
		return ansiYellow
	case Replace:
		return ansiCyan
	case Delete, Blocked:
		return ansiRed
	}
	return ""
}

// WriteText renders a plan for people: one block per change with its
// reasons, the unchanged pools, warnings, and a summary line.
func WriteText(w io.Writer, p *NodePlan, opts TextOptions) error {
	tw := &textWriter{w: w, color: opts.Color}
	tw.printf("Plan for node %s (GPUs from %s)\n", p.Node, p.Source)
	if len(p.Changes) > 0 {
		tw.printf("\n")
	}
	for _, c := range p.Changes {
		tw.change(c)
	}
	if len(p.Unchanged) > 0 {
		tw.printf("\nUnchanged:\n")
		for _, u := range p.Unchanged {
			if u.PID != 0 {
				tw.printf("    %s: %s (pid %d)\n", u.Pool, u.Status, u.PID)
			} else {
				tw.printf("    %s: %s\n", u.Pool, u.Status)
			}
		}
	}
	if len(p.Warnings) > 0 {
		tw.printf("\nWarnings:\n")
		for _, warn := range p.Warnings {
			tw.printf("    %s\n", tw.paint(ansiYellow, "! ")+warn)
		}
	}
	tw.printf("\n%s\n", SummaryLine(p))
	return tw.err
}

type textWriter struct {
	w     io.Writer
	color bool
	err   error
}

func (t *textWriter) printf(format string, args ...any) {
	if t.err == nil {
		_, t.err = fmt.Fprintf(t.w, format, args...)
	}
}

func (t *textWriter) paint(color, s string) string {
	if !t.color || color == "" {
		return s
	}
	return color + s + ansiReset
}

func (t *textWriter) change(c Change) {
	head := fmt.Sprintf("%3s %-8s", c.Action.Symbol(), c.Action)
	detail := c.Pool
	if c.Engine != "" {
		detail += fmt.Sprintf("  %s", c.Engine)
	}
	if len(c.Devices) > 0 {
		detail += "  " + gpuWord(c.Devices)
	}
	t.printf("  %s %s\n", t.paint(c.Action.color(), head), t.paint(ansiBold, c.Pool)+strings.TrimPrefix(detail, c.Pool))
	for _, r := range c.Reasons {
		t.printf("        %s\n", r)
	}
	for _, f := range c.Fields {
		t.printf("        %s: %s → %s\n", f.Path, f.Old, f.New)
	}
	if f := c.Fetch; f != nil {
		if f.Bytes > 0 {
			t.printf("        fetch %s from %s\n", ByteSize(f.Bytes), f.Source)
		} else {
			t.printf("        fetch from %s (size unknown)\n", f.Source)
		}
	}
	for _, n := range c.Need {
		t.printf("        GPU %d: needs %s, %s free\n", n.Index, gib(n.Need), gib(n.Free))
	}
	if r := c.RAM; r != nil {
		t.printf("        host RAM: needs %s (%s), %s available\n", gib(r.Need), r.Source, gib(r.Available))
	}
	if c.Blocker != nil && c.Blocker.Hint != "" {
		t.printf("        hint: %s\n", c.Blocker.Hint)
	}
}

func gpuWord(devices []int) string {
	parts := make([]string, len(devices))
	for i, d := range devices {
		parts[i] = fmt.Sprint(d)
	}
	if len(devices) == 1 {
		return "GPU " + parts[0]
	}
	return "GPUs " + strings.Join(parts, ",")
}

// SummaryLine counts a plan's changes in one line.
func SummaryLine(p *NodePlan) string {
	s := p.Summary
	var parts []string
	add := func(n int, what string) {
		if n > 0 {
			parts = append(parts, fmt.Sprintf("%d to %s", n, what))
		}
	}
	add(s.Create, "create")
	add(s.Update, "update in place")
	add(s.Replace, "replace")
	add(s.Delete, "delete")
	add(s.Restart, "restart")
	add(s.Adopt, "adopt")
	if s.Blocked > 0 {
		parts = append(parts, fmt.Sprintf("%d blocked", s.Blocked))
	}
	line := "Plan: no changes."
	if len(parts) > 0 {
		line = "Plan: " + strings.Join(parts, ", ") + "."
	}
	line += fmt.Sprintf(" %d unchanged.", s.Unchanged)
	if s.OtherNodes > 0 {
		noun := "pools"
		if s.OtherNodes == 1 {
			noun = "pool"
		}
		line += fmt.Sprintf(" %d %s of other nodes not planned here.", s.OtherNodes, noun)
	}
	return line
}

// WriteJSON writes a plan in its versioned JSON format (docs/plan-format.md),
// with the values of the specs' env hidden (HideEnvValues).
func WriteJSON(w io.Writer, p *NodePlan) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(p.HideEnvValues())
}

// HideEnvValues returns p with each spec's env values replaced by
// EnvValueHidden, names kept: what a plan may show or save (env values may be
// secrets). p is not changed. Spec hashes are left as they are: they identify
// the real specs, which apply takes from the config (TakeSpecs).
func (p *NodePlan) HideEnvValues() *NodePlan {
	q := *p
	q.Changes = slices.Clone(p.Changes)
	for i, c := range q.Changes {
		if c.Spec == nil || len(c.Spec.Env) == 0 {
			continue
		}
		spec := *c.Spec
		spec.Env = make(map[string]string, len(c.Spec.Env))
		for name := range c.Spec.Env {
			spec.Env[name] = EnvValueHidden
		}
		q.Changes[i].Spec = &spec
	}
	return &q
}

// ReadJSON decodes a plan, refusing other format versions.
func ReadJSON(r io.Reader) (*NodePlan, error) {
	var p NodePlan
	dec := json.NewDecoder(r)
	dec.DisallowUnknownFields()
	if err := dec.Decode(&p); err != nil {
		return nil, fmt.Errorf("decode plan: %w", err)
	}
	if dec.More() {
		return nil, fmt.Errorf("decode plan: more than one JSON document (a plan file holds the plan of one node)")
	}
	if p.FormatVersion != FormatVersion {
		return nil, fmt.Errorf("plan format version %d: this pool-managerd reads version %d", p.FormatVersion, FormatVersion)
	}
	if p.Node == "" || p.DesiredHash == "" || p.ObservedHash == "" {
		return nil, fmt.Errorf("decode plan: node, desiredHash and observedHash are required")
	}
	for i, c := range p.Changes {
		if c.Action.order() == 99 {
			return nil, fmt.Errorf("decode plan: change %d (pool %s): unknown action %q", i, c.Pool, c.Action)
		}
		if c.Action != Delete && c.Action != Blocked && c.Spec == nil {
			return nil, fmt.Errorf("decode plan: change %d (pool %s): %s without a spec", i, c.Pool, c.Action)
		}
	}
	return &p, nil
}

// ByteSize formats a size for people: GiB or MiB with one decimal, KiB, or bytes.
func ByteSize(b int64) string {
	switch {
	case b >= 1<<30:
		return fmt.Sprintf("%.1f GiB", float64(b)/(1<<30))
	case b >= 1<<20:
		return fmt.Sprintf("%.1f MiB", float64(b)/(1<<20))
	case b >= 1<<10:
		return fmt.Sprintf("%.1f KiB", float64(b)/(1<<10))
	}
	return fmt.Sprintf("%d bytes", b)
}
