package fakeengine

import (
	"fmt"
	"strconv"
	"strings"
)

// A small model of Python's argparse, as vLLM's FlexibleArgumentParser uses
// it: "--name value" and "--name=value", '_' in long names read as '-', no
// abbreviations, unknown arguments collected and refused at the end.

type pyKind int

const (
	pyValue   pyKind = iota // one value
	pyMulti                 // nargs='+'
	pyFlag                  // store_true
	pyBoolOpt               // BooleanOptionalAction: --x and --no-x
)

type pyOpt struct {
	names   []string // the first is the dest
	kind    pyKind
	typ     string // str, int, float, hint (vLLM's human-readable int: 32k, 1M)
	choices []string
}

// pyArgs is a parsed command line: values by the option's first name.
type pyArgs struct {
	values      map[string][]string
	positionals []string
}

func (a pyArgs) str(name, def string) string {
	if v, ok := a.values[name]; ok && len(v) > 0 {
		return v[0]
	}
	return def
}

func (a pyArgs) has(name string) bool { _, ok := a.values[name]; return ok }

func (a pyArgs) num(name string, def int) int {
	v, ok := a.values[name]
	if !ok {
		return def
	}
	n, _ := parseHumanInt(v[0])
	return n
}

// parsePy parses argv against opts; maxPositionals are accepted, the rest
// are unrecognized. The error is argparse's message (without "prog: error: ").
func parsePy(argv []string, opts []pyOpt, maxPositionals int) (pyArgs, error) {
	byName := map[string]*pyOpt{}
	for i := range opts {
		for _, n := range opts[i].names {
			byName[n] = &opts[i]
			if opts[i].kind == pyBoolOpt && strings.HasPrefix(n, "--") {
				byName["--no-"+n[2:]] = &opts[i]
			}
		}
	}
	out := pyArgs{values: map[string][]string{}}
	var unknown []string
	looksLikeOption := func(s string) bool {
		if !strings.HasPrefix(s, "-") || s == "-" {
			return false
		}
		_, err := strconv.ParseFloat(s, 64)
		return err != nil
	}
	onlyPositionals := false
	for i := 0; i < len(argv); i++ {
		arg := argv[i]
		if arg == "--" && !onlyPositionals {
			onlyPositionals = true
			continue
		}
		if onlyPositionals || !looksLikeOption(arg) {
			if len(out.positionals) < maxPositionals {
				out.positionals = append(out.positionals, arg)
			} else {
				unknown = append(unknown, arg)
			}
			continue
		}
		name, value, hasValue := strings.Cut(arg, "=")
		if strings.HasPrefix(name, "--") {
			name = "--" + strings.ReplaceAll(name[2:], "_", "-")
		}
		opt, ok := byName[name]
		if !ok {
			unknown = append(unknown, arg)
			continue
		}
		display := strings.Join(opt.names, "/")
		if opt.kind == pyBoolOpt {
			display = opt.names[len(opt.names)-1] + ", --no-" + strings.TrimPrefix(opt.names[len(opt.names)-1], "--")
		}
		switch opt.kind {
		case pyFlag, pyBoolOpt:
			if hasValue {
				return out, fmt.Errorf("argument %s: ignored explicit argument '%s'", display, value)
			}
			v := "true"
			if strings.HasPrefix(name, "--no-") && opt.kind == pyBoolOpt {
				v = "false"
			}
			out.values[opt.names[0]] = []string{v}
			continue
		}
		var vals []string
		if hasValue {
			vals = []string{value}
		} else {
			for i+1 < len(argv) && !looksLikeOption(argv[i+1]) && argv[i+1] != "--" {
				vals = append(vals, argv[i+1])
				i++
				if opt.kind == pyValue {
					break
				}
			}
		}
		if len(vals) == 0 {
			if opt.kind == pyMulti {
				return out, fmt.Errorf("argument %s: expected at least one argument", display)
			}
			return out, fmt.Errorf("argument %s: expected one argument", display)
		}
		for _, v := range vals {
			if err := checkPyValue(opt, v); err != nil {
				return out, fmt.Errorf("argument %s: %v", display, err)
			}
		}
		out.values[opt.names[0]] = vals
	}
	if len(unknown) > 0 {
		return out, fmt.Errorf("unrecognized arguments: %s", strings.Join(unknown, " "))
	}
	return out, nil
}

func checkPyValue(opt *pyOpt, v string) error {
	switch opt.typ {
	case "int":
		if _, err := strconv.Atoi(strings.TrimSpace(v)); err != nil {
			return fmt.Errorf("invalid int value: '%s'", v)
		}
	case "float":
		if _, err := strconv.ParseFloat(strings.TrimSpace(v), 64); err != nil {
			return fmt.Errorf("invalid float value: '%s'", v)
		}
	case "hint":
		if _, err := parseHumanInt(v); err != nil {
			return fmt.Errorf("invalid human_readable_int value: '%s'", v)
		}
	}
	if len(opt.choices) > 0 {
		for _, c := range opt.choices {
			if v == c {
				return nil
			}
		}
		q := make([]string, len(opt.choices))
		for i, c := range opt.choices {
			q[i] = "'" + c + "'"
		}
		return fmt.Errorf("invalid choice: '%s' (choose from %s)", v, strings.Join(q, ", "))
	}
	return nil
}

// parseHumanInt reads vLLM's human-readable integers: 2048, 32k (x1000),
// 32K (x1024), 1m, 1M, 1g, 1G, and decimals such as 25.6k.
func parseHumanInt(v string) (int, error) {
	v = strings.TrimSpace(v)
	if n, err := strconv.Atoi(v); err == nil {
		return n, nil
	}
	if v == "" {
		return 0, fmt.Errorf("empty")
	}
	mult := map[byte]float64{'k': 1e3, 'm': 1e6, 'g': 1e9, 'K': 1 << 10, 'M': 1 << 20, 'G': 1 << 30}[v[len(v)-1]]
	if mult == 0 {
		return 0, fmt.Errorf("bad number")
	}
	x, err := strconv.ParseFloat(v[:len(v)-1], 64)
	if err != nil || x < 0 {
		return 0, fmt.Errorf("bad number")
	}
	return int(x * mult), nil
}
