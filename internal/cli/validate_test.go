package cli

import (
	"bytes"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/poolmanagerd/pool-managerd/schema"
)

func TestParseValidateArgs(t *testing.T) {
	tests := []struct {
		name    string
		args    []string
		format  string
		want    validateOptions
		wantErr string
	}{
		{name: "defaults", args: nil, format: "text", want: validateOptions{Dir: ".", Format: "text"}},
		{name: "empty args", args: []string{}, format: "text", want: validateOptions{Dir: ".", Format: "text"}},
		{name: "dir", args: []string{"./config"}, format: "text", want: validateOptions{Dir: "./config", Format: "text"}},
		{name: "json", args: []string{"config"}, format: "json", want: validateOptions{Dir: "config", Format: "json"}},
		{name: "github", args: []string{"/abs/config"}, format: "github", want: validateOptions{Dir: "/abs/config", Format: "github"}},
		{name: "yaml", args: []string{"config"}, format: "yaml", wantErr: `--format "yaml": want one of text, json, github`},
		{name: "empty format", args: nil, format: "", wantErr: `--format "": want one of text, json, github`},
		{name: "formats are lower case", args: nil, format: "JSON", wantErr: `--format "JSON": want one of text, json, github`},
		{name: "no trimming", args: nil, format: " text", wantErr: `--format " text": want one of text, json, github`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := parseValidateArgs(tt.args, tt.format)
			if tt.wantErr != "" {
				var ee *exitError
				if !errors.As(err, &ee) || ee.code != ExitUsage {
					t.Fatalf("parseValidateArgs(%q, %q) = %v, want a usage error", tt.args, tt.format, err)
				}
				if err.Error() != tt.wantErr {
					t.Errorf("error %q, want %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("parseValidateArgs(%q, %q): %v", tt.args, tt.format, err)
			}
			if got != tt.want {
				t.Errorf("parseValidateArgs(%q, %q) = %+v, want %+v", tt.args, tt.format, got, tt.want)
			}
		})
	}
}

func TestGithubAnnotation(t *testing.T) {
	tests := []struct {
		name string
		d    schema.Diagnostic
		want string
	}{
		{
			name: "positioned, with a path",
			d:    schema.Diagnostic{Pos: schema.Pos{File: "config/pools.cue", Line: 3, Column: 10}, Path: "pools.coder.engine", Message: `engine must be "llamacpp", "vllm", "tgi" or "sglang"`},
			want: `::error file=config/pools.cue,line=3,col=10,title=pool-managerd validate%3A pools.coder.engine::engine must be "llamacpp", "vllm", "tgi" or "sglang"`,
		},
		{
			name: "a whole file: no line or column",
			d:    schema.Diagnostic{Pos: schema.Pos{File: "config/huge.cue"}, Message: "file is 50.0 MiB, over the 4.0 MiB limit for a config file"},
			want: `::error file=config/huge.cue,title=pool-managerd validate::file is 50.0 MiB, over the 4.0 MiB limit for a config file`,
		},
		{
			name: "no file",
			d:    schema.Diagnostic{Message: "something"},
			want: `::error title=pool-managerd validate::something`,
		},
		{
			name: "message: percent, newlines and carriage returns are escaped; colons and commas are not",
			d:    schema.Diagnostic{Pos: schema.Pos{File: "a.cue", Line: 1, Column: 1}, Message: "100% sure\nsecond line\r\nthird: a, b :: c"},
			want: `::error file=a.cue,line=1,col=1,title=pool-managerd validate::100%25 sure%0Asecond line%0D%0Athird: a, b :: c`,
		},
		{
			name: "file name: colon, comma, percent and newline are escaped",
			d:    schema.Diagnostic{Pos: schema.Pos{File: "c:onf,ig/50%/a\nb.cue", Line: 2, Column: 4}, Message: "m"},
			want: `::error file=c%3Aonf%2Cig/50%25/a%0Ab.cue,line=2,col=4,title=pool-managerd validate::m`,
		},
		{
			name: "an escape sequence in a file name is not read as one",
			d:    schema.Diagnostic{Pos: schema.Pos{File: "a%3A%2C.cue"}, Message: "m"},
			want: `::error file=a%253A%252C.cue,title=pool-managerd validate::m`,
		},
		{
			name: "title: the path is escaped as a property",
			d:    schema.Diagnostic{Pos: schema.Pos{File: "a.cue", Line: 1, Column: 2}, Path: "pools.x.env.A,B:C%", Message: "m"},
			want: `::error file=a.cue,line=1,col=2,title=pool-managerd validate%3A pools.x.env.A%2CB%3AC%25::m`,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := githubAnnotation(tt.d)
			if got != tt.want {
				t.Errorf("githubAnnotation(%#v)\n got %s\nwant %s", tt.d, got, tt.want)
			}
			if strings.ContainsAny(got, "\r\n") {
				t.Errorf("annotation spans lines: %q", got)
			}
		})
	}
}

func TestSummaryLine(t *testing.T) {
	diag := func(file string) schema.Diagnostic {
		return schema.Diagnostic{Pos: schema.Pos{File: file, Line: 1, Column: 1}, Message: "m"}
	}
	tests := []struct {
		name string
		r    validateReport
		want string
	}{
		{
			name: "valid, singular",
			r:    validateReport{Valid: true, Dir: "config", Pools: 1, Nodes: 1, GPUs: 1, Files: 1},
			want: "config: valid: 1 pool, 1 node, 1 GPU in 1 file",
		},
		{
			name: "valid, plural",
			r:    validateReport{Valid: true, Dir: ".", Pools: 12, Nodes: 3, GPUs: 10, Files: 7},
			want: ".: valid: 12 pools, 3 nodes, 10 GPUs in 7 files",
		},
		{
			name: "valid, zero",
			r:    validateReport{Valid: true, Dir: "config", Pools: 0, Nodes: 1, GPUs: 2, Files: 1},
			want: "config: valid: 0 pools, 1 node, 2 GPUs in 1 file",
		},
		{
			name: "invalid, one",
			r:    validateReport{Dir: "config", Diagnostics: schema.Diagnostics{diag("config/a.cue")}},
			want: "config: invalid: 1 error in 1 file",
		},
		{
			name: "invalid, files counted once",
			r:    validateReport{Dir: "config", Diagnostics: schema.Diagnostics{diag("config/a.cue"), diag("config/b.cue"), diag("config/a.cue")}},
			want: "config: invalid: 3 errors in 2 files",
		},
		{
			name: "invalid: counts are not shown",
			r:    validateReport{Dir: "config", Pools: 4, Nodes: 2, Diagnostics: schema.Diagnostics{diag("config/a.cue"), diag("config/a.cue")}},
			want: "config: invalid: 2 errors in 1 file",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := summaryLine(tt.r); got != tt.want {
				t.Errorf("summaryLine = %q, want %q", got, tt.want)
			}
		})
	}
}

// TestValidateJSON decodes the JSON report of an invalid and a valid config.
func TestValidateJSON(t *testing.T) {
	dir := t.TempDir()
	write := func(rel, content string) {
		t.Helper()
		path := filepath.Join(dir, rel)
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("ok/nodes.cue", "package poolmanagerd\nnodes: \"gpu-01\": gpus: [{index: 0, vram: 24Gi}]\n")
	write("ok/pools.cue", "pools: coder: {node: \"gpu-01\", engine: \"llamacpp\", model: {path: \"/models/coder.gguf\", ctx: 8192}, devices: [0]}\n")
	write("bad/nodes.cue", "package poolmanagerd\nnodes: \"gpu-01\": gpus: [{index: 0, vram: 24Gi}]\n")
	write("bad/pools.cue", "pools: coder: {node: \"gpu-01\", engine: \"llama\", model: path: \"/m\", devices: [0]}\npools: chat: {node: \"gpu-09\", engine: \"llamacpp\", model: path: \"/m\", devices: [0]}\n")

	run := func(d string) (validateReport, int) {
		t.Helper()
		var stdout, stderr bytes.Buffer
		code := Main([]string{"validate", "--format", "json", filepath.Join(dir, d)}, &stdout, &stderr)
		if stderr.Len() > 0 {
			t.Errorf("stderr: %s", stderr.String())
		}
		var r validateReport
		dec := json.NewDecoder(&stdout)
		dec.DisallowUnknownFields()
		if err := dec.Decode(&r); err != nil {
			t.Fatalf("stdout is not a JSON report: %v\n%s", err, stdout.String())
		}
		if dec.More() {
			t.Errorf("more than one JSON value on stdout")
		}
		return r, code
	}

	r, code := run("ok")
	if code != ExitOK || !r.Valid || r.Pools != 1 || r.Nodes != 1 || r.GPUs != 1 || r.Files != 2 || r.Diagnostics == nil || len(r.Diagnostics) != 0 {
		t.Errorf("valid config: exit %d, report %+v", code, r)
	}

	r, code = run("bad")
	if code != ExitFailure || r.Valid || len(r.Diagnostics) != 2 {
		t.Fatalf("invalid config: exit %d, report %+v", code, r)
	}
	for _, d := range r.Diagnostics {
		if d.Pos.File != filepath.Join(dir, "bad", "pools.cue") || d.Pos.Line < 1 || d.Pos.Column < 1 || d.Path == "" || d.Message == "" {
			t.Errorf("diagnostic %+v: want file, line, column, path and message", d)
		}
	}
}

// TestMainExitCodes runs Main in process for each documented exit code.
func TestMainExitCodes(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "fleet.cue"), []byte("package poolmanagerd\nnodes: \"gpu-01\": gpus: [{index: 0, vram: 24Gi}]\npools: coder: {node: \"gpu-01\", engine: \"llamacpp\", model: {path: \"/models/coder.gguf\", ctx: 8192}, devices: [0]}\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	bad := t.TempDir()
	if err := os.WriteFile(filepath.Join(bad, "x.cue"), []byte("pools: {\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		args     []string
		code     int
		stdout   string
		stderr   string
		emptyOut bool
	}{
		{args: []string{"version"}, code: ExitOK, stdout: "pool-managerd "},
		{args: []string{"validate", dir}, code: ExitOK, stdout: ": valid: 1 pool, 1 node, 1 GPU in 1 file\n"},
		{args: []string{"validate", bad}, code: ExitFailure, stdout: ": invalid: 1 error in 1 file\n"},
		{args: []string{"validate", "--format", "yaml", dir}, code: ExitUsage, stderr: `--format "yaml"`, emptyOut: true},
		{args: []string{"validate", dir, bad}, code: ExitUsage, stderr: "accepts at most 1 arg(s), received 2", emptyOut: true},
		{args: []string{"validate", filepath.Join(dir, "nope")}, code: ExitUsage, stderr: "not a config directory", emptyOut: true},
		{args: []string{"validate", filepath.Join(dir, "fleet.cue")}, code: ExitUsage, stderr: "is a file; give the directory that holds the config", emptyOut: true},
		{args: []string{"validate", "--bogus"}, code: ExitUsage, stderr: "unknown flag: --bogus", emptyOut: true},
		{args: []string{"validate", "--format"}, code: ExitUsage, stderr: "flag needs an argument", emptyOut: true},
	}
	for _, tt := range tests {
		t.Run(strings.Join(tt.args, " "), func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			code := Main(tt.args, &stdout, &stderr)
			if code != tt.code {
				t.Errorf("exit %d, want %d\nstdout: %s\nstderr: %s", code, tt.code, stdout.String(), stderr.String())
			}
			if !strings.Contains(stdout.String(), tt.stdout) {
				t.Errorf("stdout %q does not contain %q", stdout.String(), tt.stdout)
			}
			if tt.emptyOut && stdout.Len() > 0 {
				t.Errorf("stdout %q, want none", stdout.String())
			}
			if tt.stderr == "" && stderr.Len() > 0 {
				t.Errorf("stderr %q, want none", stderr.String())
			}
			if tt.stderr != "" {
				if !strings.Contains(stderr.String(), tt.stderr) {
					t.Errorf("stderr %q does not contain %q", stderr.String(), tt.stderr)
				}
				if !strings.HasPrefix(stderr.String(), "pool-managerd: ") || !strings.HasSuffix(stderr.String(), "Run 'pool-managerd --help' for usage.\n") {
					t.Errorf("stderr %q: want pool-managerd: MESSAGE and a pointer to --help", stderr.String())
				}
			}
		})
	}
}
