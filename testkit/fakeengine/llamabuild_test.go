package fakeengine

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// An older llama.cpp build has no --fit: the stand-in imitating one refuses
// it as the real old build does, and reads the rest as before.
func TestParseLlamaArgsBuild(t *testing.T) {
	for _, tt := range []struct {
		name    string
		argv    string
		build   int
		wantErr string
		wantFit bool
	}{
		{"current build takes --fit", "--model /m.gguf --fit off", LlamaDefaultBuild, "", false},
		{"current build: fit on by default", "--model /m.gguf", LlamaDefaultBuild, "", true},
		{"the first build with --fit", "--model /m.gguf --fit on", LlamaFitBuild, "", true},
		{"an older build refuses --fit", "--model /m.gguf --n-gpu-layers 999 --fit off --split-mode layer", 7000, "error: invalid argument: --fit", false},
		{"an older build refuses -fitt", "-m /m.gguf -fitt 512", 7000, "error: invalid argument: -fitt", false},
		{"an older build: an earlier error comes first", "--ctx-size x --fit off", 7000, `error while handling argument "--ctx-size"`, false},
		{"an older build: no fit by default", "--model /m.gguf", 7000, "", false},
		{"an older build: --version before --fit answers", "--version --fit off", 7000, "", false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			cfg, err := ParseLlamaArgsBuild(strings.Fields(tt.argv), tt.build)
			if tt.wantErr == "" {
				if err != nil {
					t.Fatalf("error %v", err)
				}
				if cfg.Fit != tt.wantFit || cfg.Build != tt.build {
					t.Errorf("fit %v build %d, want fit %v build %d", cfg.Fit, cfg.Build, tt.wantFit, tt.build)
				}
				return
			}
			var ue *UsageError
			if !errors.As(err, &ue) || ue.Code != 1 || !strings.HasPrefix(ue.Message, tt.wantErr) {
				t.Fatalf("error %v, want %q, status 1", err, tt.wantErr)
			}
		})
	}
}

func TestLlamaUsageByBuild(t *testing.T) {
	for _, tt := range []struct {
		build   int
		wantFit bool
	}{{LlamaDefaultBuild, true}, {LlamaFitBuild, true}, {7000, false}} {
		help := llamaUsage(tt.build)
		if got := strings.Contains(help, "--fit"); got != tt.wantFit {
			t.Errorf("build %d: help names --fit %v, want %v", tt.build, got, tt.wantFit)
		}
		if !strings.Contains(help, "--ctx-size") {
			t.Errorf("build %d: help lost --ctx-size", tt.build)
		}
	}
}

func TestLlamaBuild(t *testing.T) {
	for _, tt := range []struct {
		v       string
		want    int
		wantErr bool
	}{{"", LlamaDefaultBuild, false}, {"7000", 7000, false}, {" 9100 ", 9100, false}, {"b7000", 0, true}, {"-1", 0, true}} {
		got, err := LlamaBuild(func(string) string { return tt.v })
		if got != tt.want || (err != nil) != tt.wantErr {
			t.Errorf("%q: %d, %v", tt.v, got, err)
		}
	}
}

// The stand-in reads a model file's GGUF header as llama.cpp does; an empty
// file is a placeholder model.
func TestGGUFHeaderError(t *testing.T) {
	dir := t.TempDir()
	p := &process{}
	for _, tt := range []struct {
		name, content, want string
	}{
		{"placeholder", "", ""},
		{"too short for the magic", "GG", "gguf_init_from_file_ptr: failed to read magic"},
		{"not GGUF", "PK\x03\x04 a zip file, say", "gguf_init_from_file_ptr: invalid magic characters: 'PK??', expected 'GGUF'"},
		{"the magic alone: a placeholder", "GGUF", ""},
		{"a whole header", "GGUF\x03\x00\x00\x00" + strings.Repeat("\x00", 16), ""},
	} {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(dir, strings.ReplaceAll(tt.name, " ", "-")+".gguf")
			if err := os.WriteFile(path, []byte(tt.content), 0o644); err != nil {
				t.Fatal(err)
			}
			if got := p.ggufHeaderError(path); got != tt.want {
				t.Errorf("%q, want %q", got, tt.want)
			}
		})
	}
}
