package llamaargs

import (
	"errors"
	"slices"
	"strings"
	"testing"
)

func TestParse(t *testing.T) {
	tests := []struct {
		name    string
		tsv     string
		wantErr string
		// lookups maps a spelling to the canonical name it finds ("" for none).
		lookups map[string]string
		arity   map[string]Arity
		options int
	}{
		{
			name:    "empty",
			tsv:     "",
			options: 0,
			lookups: map[string]string{"--ctx-size": ""},
		},
		{
			name:    "comments and blank lines",
			tsv:     "# a comment\n\n   \n# -c,--ctx-size\tvalue\n",
			options: 0,
			lookups: map[string]string{"--ctx-size": "", "-c": ""},
		},
		{
			name:    "every arity",
			tsv:     "-c,--ctx-size\tvalue\n--perf\tswitch\n--spec-replace\ttwo-values\n--draft-min\tremoved\n",
			options: 4,
			lookups: map[string]string{"-c": "--ctx-size", "--ctx-size": "--ctx-size", "--ctx_size": "--ctx-size", "--perf": "--perf", "--draft-min": "--draft-min"},
			arity:   map[string]Arity{"-c": Value, "--perf": Switch, "--spec-replace": TwoValues, "--draft-min": Removed},
		},
		{
			name:    "CRLF line ends and padded arity",
			tsv:     "-c,--ctx-size\tvalue\r\n--perf\t switch \r\n",
			options: 2,
			arity:   map[string]Arity{"--ctx-size": Value, "--perf": Switch},
		},
		{
			name:    "underscores in the table are read as dashes",
			tsv:     "--tensor_split\tvalue\n",
			options: 1,
			lookups: map[string]string{"--tensor-split": "--tensor_split", "--tensor_split": "--tensor_split"},
		},
		{
			name:    "a current option wins over a removed one listed after it",
			tsv:     "--draft\tvalue\n--draft,--draft-n\tremoved\n",
			options: 2,
			arity:   map[string]Arity{"--draft": Value, "--draft-n": Removed},
		},
		{
			name:    "a current option wins over a removed one listed before it",
			tsv:     "--draft,--draft-n\tremoved\n--draft\tvalue\n",
			options: 2,
			arity:   map[string]Arity{"--draft": Value, "--draft-n": Removed},
		},
		{
			name:    "missing tab",
			tsv:     "--perf\n",
			wantErr: "options table line 1: want spellings<TAB>arity",
		},
		{
			name:    "space instead of tab",
			tsv:     "# header\n--perf switch\n",
			wantErr: "options table line 2: want spellings<TAB>arity",
		},
		{
			name:    "unknown arity",
			tsv:     "--perf\tswitch\n-c\tnumber\n",
			wantErr: `options table line 2: unknown arity "number"`,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			table, err := Parse(tt.tsv)
			if tt.wantErr != "" {
				if err == nil || err.Error() != tt.wantErr {
					t.Fatalf("Parse = %v, want error %q", err, tt.wantErr)
				}
				if table != nil {
					t.Errorf("Parse returned a table with its error")
				}
				return
			}
			if err != nil {
				t.Fatalf("Parse: %v", err)
			}
			if got := len(table.Options()); got != tt.options {
				t.Errorf("%d options, want %d", got, tt.options)
			}
			for spelling, want := range tt.lookups {
				opt, ok := table.Lookup(spelling)
				switch {
				case want == "" && ok:
					t.Errorf("Lookup(%q) found %v, want none", spelling, opt.Names)
				case want != "" && !ok:
					t.Errorf("Lookup(%q) found none, want %s", spelling, want)
				case want != "" && opt.Canonical() != want:
					t.Errorf("Lookup(%q) = %s, want %s", spelling, opt.Canonical(), want)
				}
			}
			for spelling, want := range tt.arity {
				opt, ok := table.Lookup(spelling)
				if !ok {
					t.Errorf("Lookup(%q) found none", spelling)
					continue
				}
				if opt.Arity != want {
					t.Errorf("Lookup(%q).Arity = %d, want %d", spelling, opt.Arity, want)
				}
			}
		})
	}
}

// TestDefault checks the bundled table: it parses, and every spelling is an option name.
func TestDefault(t *testing.T) {
	table := Default()
	if n := len(table.Options()); n < 100 {
		t.Fatalf("bundled table has %d options; want the full llama-server list", n)
	}
	for _, o := range table.Options() {
		if len(o.Names) == 0 {
			t.Errorf("option without a name: %+v", o)
		}
		for _, n := range o.Names {
			if !strings.HasPrefix(n, "-") || n == "-" || n == "--" || strings.ContainsAny(n, " \t=,") {
				t.Errorf("option %v: bad spelling %q", o.Names, n)
			}
		}
		if !strings.HasPrefix(o.Canonical(), "--") {
			t.Errorf("option %v: canonical spelling %q is not a long name", o.Names, o.Canonical())
		}
	}
}

func TestLookup(t *testing.T) {
	table := Default()
	tests := []struct {
		spelling, canonical string
		arity               Arity
	}{
		{"--ctx-size", "--ctx-size", Value},
		{"-c", "--ctx-size", Value},
		{"--ctx_size", "--ctx-size", Value},
		{"--tensor-split", "--tensor-split", Value},
		{"--tensor_split", "--tensor-split", Value},
		{"-ts", "--tensor-split", Value},
		{"-ngl", "--n-gpu-layers", Value},
		{"--gpu-layers", "--n-gpu-layers", Value},
		{"--n_gpu_layers", "--n-gpu-layers", Value},
		{"-dev", "--device", Value},
		{"-nkvo", "--no-kv-offload", Switch},
		{"--no_kv_offload", "--no-kv-offload", Switch},
		{"--control-vector-layer-range", "--control-vector-layer-range", TwoValues},
		{"--spec-ngram-size-n", "--spec-ngram-size-n", Removed},
		{"--spec_ngram_size_n", "--spec-ngram-size-n", Removed},
		// --draft is both a removed spelling and a current one: the current one wins.
		{"--draft", "--draft", Value},
		{"--draft-min", "--draft-min", Value},
		{"-h", "--usage", Switch},
	}
	for _, tt := range tests {
		t.Run(tt.spelling, func(t *testing.T) {
			opt, ok := table.Lookup(tt.spelling)
			if !ok {
				t.Fatalf("Lookup(%q) found nothing", tt.spelling)
			}
			if opt.Canonical() != tt.canonical || opt.Arity != tt.arity {
				t.Errorf("Lookup(%q) = %s (arity %d), want %s (arity %d)", tt.spelling, opt.Canonical(), opt.Arity, tt.canonical, tt.arity)
			}
			if got := table.Find(tt.spelling); got != opt {
				t.Errorf("Find(%q) = %v, want %v", tt.spelling, got.Names, opt.Names)
			}
		})
	}
	for _, spelling := range []string{
		"", "-", "--", "ctx-size", "--ctx-size=4096", "-C4096", "--CTX-SIZE", "-t_s", "—ctx-size", "--ctx-size ",
	} {
		if opt, ok := table.Lookup(spelling); ok {
			t.Errorf("Lookup(%q) found %v, want nothing", spelling, opt.Names)
		}
	}
	// Underscores are read as dashes in long names only.
	if _, ok := table.Lookup("-n_gl"); ok {
		t.Error(`Lookup("-n_gl") found an option; short names keep their underscores`)
	}
}

func TestFindPanicsOnUnknown(t *testing.T) {
	defer func() {
		if r := recover(); r == nil || !strings.Contains(r.(string), "--no-such-option") {
			t.Errorf("Find of an unknown option: recover() = %v, want a panic naming it", r)
		}
	}()
	Default().Find("--no-such-option")
}

func TestParseArgv(t *testing.T) {
	table := Default()
	type arg struct {
		spelling, canonical string
		values              []string
	}
	tests := []struct {
		name string
		argv []string
		want []arg
		// wantErr is the message; errIndex and errArg the failing element.
		wantErr  string
		errIndex int
	}{
		{name: "nil", argv: nil},
		{name: "empty", argv: []string{}},
		{
			name: "switch",
			argv: []string{"--perf"},
			want: []arg{{"--perf", "--perf", nil}},
		},
		{
			name: "value",
			argv: []string{"-c", "4096"},
			want: []arg{{"-c", "--ctx-size", []string{"4096"}}},
		},
		{
			name: "value that looks like an option",
			argv: []string{"-ngl", "-1", "--override-tensor", "--perf"},
			want: []arg{{"-ngl", "--n-gpu-layers", []string{"-1"}}, {"--override-tensor", "--override-tensor", []string{"--perf"}}},
		},
		{
			name: "two values",
			argv: []string{"--control-vector-layer-range", "1", "10", "--perf"},
			want: []arg{{"--control-vector-layer-range", "--control-vector-layer-range", []string{"1", "10"}}, {"--perf", "--perf", nil}},
		},
		{
			name: "mixed, with underscores",
			argv: []string{"--tensor_split", "3,1", "-ts", "1,1", "--flash-attn", "on", "--no_kv_offload", "-c", "8192"},
			want: []arg{
				{"--tensor_split", "--tensor-split", []string{"3,1"}},
				{"-ts", "--tensor-split", []string{"1,1"}},
				{"--flash-attn", "--flash-attn", []string{"on"}},
				{"--no_kv_offload", "--no-kv-offload", nil},
				{"-c", "--ctx-size", []string{"8192"}},
			},
		},
		{
			name:     "removed",
			argv:     []string{"--perf", "--spec-ngram-size-n", "3"},
			want:     []arg{{"--perf", "--perf", nil}},
			wantErr:  `error while handling argument "--spec-ngram-size-n": the argument has been removed`,
			errIndex: 1,
		},
		{
			name:     "unknown option",
			argv:     []string{"-c", "4096", "--bogus", "1"},
			want:     []arg{{"-c", "--ctx-size", []string{"4096"}}},
			wantErr:  "error: invalid argument: --bogus",
			errIndex: 2,
		},
		{
			name:     "name=value is not accepted",
			argv:     []string{"--ctx-size=4096"},
			wantErr:  "error: invalid argument: --ctx-size=4096",
			errIndex: 0,
		},
		{
			name:     "a bare value",
			argv:     []string{"/models/x.gguf"},
			wantErr:  "error: invalid argument: /models/x.gguf",
			errIndex: 0,
		},
		{
			name:     "empty element",
			argv:     []string{"--perf", ""},
			want:     []arg{{"--perf", "--perf", nil}},
			wantErr:  "error: invalid argument: ",
			errIndex: 1,
		},
		{
			name:     "missing value",
			argv:     []string{"--perf", "-c"},
			want:     []arg{{"--perf", "--perf", nil}},
			wantErr:  `error while handling argument "-c": expected value for argument`,
			errIndex: 1,
		},
		{
			name:     "missing second value",
			argv:     []string{"--control-vector-layer-range", "1"},
			wantErr:  `error while handling argument "--control-vector-layer-range": expected value for argument`,
			errIndex: 0,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			args, err := table.ParseArgv(tt.argv)
			if tt.wantErr == "" {
				if err != nil {
					t.Fatalf("ParseArgv(%q): %v", tt.argv, err)
				}
			} else {
				var pe *ParseError
				if !errors.As(err, &pe) {
					t.Fatalf("ParseArgv(%q) = %v, want a *ParseError", tt.argv, err)
				}
				if pe.Message != tt.wantErr || err.Error() != tt.wantErr {
					t.Errorf("message %q, want %q", pe.Message, tt.wantErr)
				}
				if pe.Index != tt.errIndex || pe.Arg != tt.argv[tt.errIndex] {
					t.Errorf("error at %d (%q), want %d (%q)", pe.Index, pe.Arg, tt.errIndex, tt.argv[tt.errIndex])
				}
			}
			if len(args) != len(tt.want) {
				t.Fatalf("ParseArgv(%q) = %d args, want %d: %+v", tt.argv, len(args), len(tt.want), args)
			}
			for i, w := range tt.want {
				a := args[i]
				if a.Spelling != w.spelling || a.Option.Canonical() != w.canonical || !slices.Equal(a.Values, w.values) {
					t.Errorf("arg %d = %s (%s) %q, want %s (%s) %q", i, a.Spelling, a.Option.Canonical(), a.Values, w.spelling, w.canonical, w.values)
				}
				if tt.argv[a.Index] != a.Spelling {
					t.Errorf("arg %d: Index %d names %q, not %q", i, a.Index, tt.argv[a.Index], a.Spelling)
				}
			}
		})
	}
}

func TestEnvName(t *testing.T) {
	table := Default()
	tests := []struct{ spelling, env string }{
		{"--ctx-size", "LLAMA_ARG_CTX_SIZE"},
		{"-c", "LLAMA_ARG_CTX_SIZE"},
		{"--tensor_split", "LLAMA_ARG_TENSOR_SPLIT"},
		{"-ts", "LLAMA_ARG_TENSOR_SPLIT"},
		{"-ngl", "LLAMA_ARG_N_GPU_LAYERS"},
		{"-dev", "LLAMA_ARG_DEVICE"},
		{"--flash-attn", "LLAMA_ARG_FLASH_ATTN"},
		{"--port", "LLAMA_ARG_PORT"},
		{"--host", "LLAMA_ARG_HOST"},
		{"-m", "LLAMA_ARG_MODEL"},
		{"-sm", "LLAMA_ARG_SPLIT_MODE"},
		{"-ncmoe", "LLAMA_ARG_N_CPU_MOE"},
	}
	for _, tt := range tests {
		if got := table.Find(tt.spelling).EnvName(); got != tt.env {
			t.Errorf("%s: EnvName() = %s, want %s", tt.spelling, got, tt.env)
		}
	}
	// Options built by hand: the last spelling names the variable.
	for _, tt := range []struct {
		names []string
		env   string
	}{
		{[]string{"--x"}, "LLAMA_ARG_X"},
		{[]string{"-a", "--long-name"}, "LLAMA_ARG_LONG_NAME"},
		{[]string{"-s"}, "LLAMA_ARG_S"},
	} {
		o := &Option{Names: tt.names}
		if got := o.EnvName(); got != tt.env {
			t.Errorf("%v: EnvName() = %s, want %s", tt.names, got, tt.env)
		}
	}
}

// FuzzParseArgv splits the input into an argv and parses it: ParseArgv must
// not panic, must account for every element it accepts, and must say where
// it stopped.
//
//	go test -run '^$' -fuzz FuzzParseArgv -fuzztime 30s ./schema/llamaargs
func FuzzParseArgv(f *testing.F) {
	for _, s := range []string{
		"",
		"-c 4096",
		"--perf",
		"-ngl 999 --split-mode layer --tensor-split 3,1 --flash-attn on",
		"--tensor_split 1,1 -ts 1,1",
		"--control-vector-layer-range 1 10 --perf",
		"--control-vector-layer-range 1",
		"--draft-min 3",
		"--draft 4",
		"--ctx-size=4096",
		"-c",
		"--bogus value",
		"/models/x.gguf",
		"-- -",
		"--_ ___",
		"\x00 \xff --\u00e9t\u00e9",
	} {
		f.Add(s)
	}
	table := Default()
	f.Fuzz(func(t *testing.T, s string) {
		argv := strings.Fields(s)
		args, err := table.ParseArgv(argv)
		// The accepted options cover argv[:next] exactly, in order.
		next := 0
		for _, a := range args {
			if a.Index != next {
				t.Fatalf("argv %q: option at %d, want %d: %+v", argv, a.Index, next, args)
			}
			if a.Option == nil || argv[a.Index] != a.Spelling {
				t.Fatalf("argv %q: arg %+v does not match the element it names", argv, a)
			}
			if opt, ok := table.Lookup(a.Spelling); !ok || opt != a.Option || opt.Arity == Removed {
				t.Fatalf("argv %q: accepted %q as %v", argv, a.Spelling, a.Option.Names)
			}
			want := map[Arity]int{Switch: 0, Value: 1, TwoValues: 2}[a.Option.Arity]
			if len(a.Values) != want || !slices.Equal(a.Values, argv[a.Index+1:a.Index+1+want]) {
				t.Fatalf("argv %q: %s has values %q, want the next %d elements", argv, a.Spelling, a.Values, want)
			}
			next = a.Index + 1 + want
		}
		if err == nil {
			if next != len(argv) {
				t.Fatalf("argv %q: parsed up to %d of %d elements without an error", argv, next, len(argv))
			}
			return
		}
		var pe *ParseError
		if !errors.As(err, &pe) {
			t.Fatalf("argv %q: error %v is %T, want *ParseError", argv, err, err)
		}
		if pe.Index != next || pe.Index >= len(argv) || pe.Arg != argv[pe.Index] {
			t.Fatalf("argv %q: error at %d (%q), want at %d", argv, pe.Index, pe.Arg, next)
		}
		if !strings.HasPrefix(pe.Message, "error") || !strings.Contains(pe.Message, pe.Arg) {
			t.Fatalf("argv %q: message %q does not name %q", argv, pe.Message, pe.Arg)
		}
	})
}
