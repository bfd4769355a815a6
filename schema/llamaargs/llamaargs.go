// Package llamaargs knows llama.cpp llama-server's command-line options: every
// spelling of each option and whether it takes a value. The validator uses it
// to reject flags pool-managerd manages or that move work to the CPU, in any
// spelling; the stand-in engine uses it to parse argv as llama-server does.
//
// The table is options.tsv, collected from llama.cpp's common/arg.cpp.
package llamaargs

import (
	_ "embed"
	"fmt"
	"strings"
)

//go:embed llama-server-options.tsv
var optionsTSV string

// Arity says how many argv elements follow an option.
type Arity int

// The arities of llama-server options.
const (
	Switch    Arity = iota // no value
	Value                  // one value
	TwoValues              // two values
	Removed                // recognised, then refused
)

// Option is one llama-server option with all its spellings.
type Option struct {
	// Names are the spellings, as listed (short ones first); Names[len-1] is usually the long form.
	Names []string
	Arity Arity
}

// Canonical is the option's last listed spelling, its usual long form.
func (o *Option) Canonical() string { return o.Names[len(o.Names)-1] }

// Table maps every spelling of every option to its option.
type Table struct {
	byName  map[string]*Option
	options []*Option
}

// Parse reads a table in the options.tsv format: one option a line, its
// comma-separated spellings, a tab, and its arity; '#' starts a comment line.
func Parse(tsv string) (*Table, error) {
	t := &Table{byName: map[string]*Option{}}
	for i, line := range strings.Split(tsv, "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		names, kind, ok := strings.Cut(line, "\t")
		if !ok {
			return nil, fmt.Errorf("options table line %d: want spellings<TAB>arity", i+1)
		}
		opt := &Option{Names: strings.Split(names, ",")}
		switch strings.TrimSpace(kind) {
		case "switch":
			opt.Arity = Switch
		case "value":
			opt.Arity = Value
		case "two-values":
			opt.Arity = TwoValues
		case "removed":
			opt.Arity = Removed
		default:
			return nil, fmt.Errorf("options table line %d: unknown arity %q", i+1, kind)
		}
		t.options = append(t.options, opt)
		for _, n := range opt.Names {
			n = normalize(n)
			// A spelling that a current option accepts wins over a removed one.
			if prev, dup := t.byName[n]; dup && (prev.Arity != Removed || opt.Arity == Removed) {
				continue
			}
			t.byName[n] = opt
		}
	}
	return t, nil
}

// Default returns the table of llama-server's options bundled with pool-managerd.
func Default() *Table {
	t, err := Parse(optionsTSV)
	if err != nil {
		// The table is embedded and tested: a parse error is a build defect.
		panic(err)
	}
	return t
}

// normalize reads '_' in long option names as '-', as llama-server does.
func normalize(arg string) string {
	if strings.HasPrefix(arg, "--") {
		return "--" + strings.ReplaceAll(arg[2:], "_", "-")
	}
	return arg
}

// Lookup finds the option an argv element names, in any spelling.
func (t *Table) Lookup(arg string) (*Option, bool) {
	o, ok := t.byName[normalize(arg)]
	return o, ok
}

// Find returns the option with the given spelling; it panics when there is
// none, since callers name options they know exist.
func (t *Table) Find(spelling string) *Option {
	o, ok := t.Lookup(spelling)
	if !ok {
		panic("llamaargs: no option " + spelling)
	}
	return o
}

// Options returns every option, in table order.
func (t *Table) Options() []*Option { return t.options }

// Arg is one option as it appears in an argv: the spelling used, the option, its values.
type Arg struct {
	// Index is the position of the option in the argv.
	Index    int
	Spelling string
	Option   *Option
	Values   []string
}

// ParseError is an argv that llama-server would refuse, with its message.
type ParseError struct {
	Index int
	Arg   string
	// Message is what llama-server prints on stderr.
	Message string
}

func (e *ParseError) Error() string { return e.Message }

// ParseArgv splits an argv (without the program name) into options the way
// llama-server does: each value is the next element, "--name=value" is not
// accepted, and an unknown or removed option is an error.
func (t *Table) ParseArgv(argv []string) ([]Arg, error) {
	var args []Arg
	for i := 0; i < len(argv); i++ {
		a := argv[i]
		opt, ok := t.Lookup(a)
		if !ok {
			return args, &ParseError{Index: i, Arg: a, Message: fmt.Sprintf("error: invalid argument: %s", a)}
		}
		if opt.Arity == Removed {
			return args, &ParseError{Index: i, Arg: a, Message: fmt.Sprintf("error while handling argument \"%s\": the argument has been removed", a)}
		}
		n := 0
		switch opt.Arity {
		case Value:
			n = 1
		case TwoValues:
			n = 2
		}
		if i+n >= len(argv) {
			return args, &ParseError{Index: i, Arg: a, Message: fmt.Sprintf("error while handling argument \"%s\": expected value for argument", a)}
		}
		args = append(args, Arg{Index: i, Spelling: a, Option: opt, Values: argv[i+1 : i+1+n]})
		i += n
	}
	return args, nil
}

// EnvName is the environment variable llama-server reads for an option
// (LLAMA_ARG_ and the long name in capitals: --ctx-size is LLAMA_ARG_CTX_SIZE).
func (o *Option) EnvName() string {
	long := o.Canonical()
	long = strings.TrimLeft(long, "-")
	return "LLAMA_ARG_" + strings.ToUpper(strings.ReplaceAll(long, "-", "_"))
}
