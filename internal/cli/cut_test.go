package cli

import (
	"bytes"
	"fmt"
	"strings"
	"testing"
)

func TestCutLongValues(t *testing.T) {
	long := strings.Repeat("x", 300)
	keep := long[:echoKeep]
	accented := strings.Repeat("é", 200) // 400 bytes; cut on a character boundary
	tests := []struct {
		name   string
		msg    string
		values []string
		want   string
	}{
		{"short values stay", `--format "yaml": want one of text, json, github`, []string{"--format", "yaml"},
			`--format "yaml": want one of text, json, github`},
		{"a long value, each time it is echoed, quoted or not",
			fmt.Sprintf(`invalid argument %q for "--auto-approve" flag: parsing %q; stat %s`, long, long, long), []string{"--auto-approve=" + long, long},
			fmt.Sprintf(`invalid argument "%s"…(300 bytes) for "--auto-approve" flag: parsing "%s"…(300 bytes); stat %s…(300 bytes)`, keep, keep, keep)},
		{"an unknown flag", "unknown flag: --" + long, []string{"--" + long},
			"unknown flag: --" + long[:echoKeep-2] + "…(302 bytes)"},
		{"not cut inside a character", "bad " + accented, []string{accented},
			"bad " + strings.Repeat("é", echoKeep/2) + "…(400 bytes)"},
		{"a long run from elsewhere", "bad " + strings.Repeat("y", maxRun+1) + " end\n", nil,
			"bad " + strings.Repeat("y", echoKeep) + fmt.Sprintf("…(%d bytes)", maxRun+1) + " end\n"},
		{"a long run that fits stays", "bad " + long + "\n", nil, "bad " + long + "\n"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := cutLongValues(tt.msg, tt.values); got != tt.want {
				t.Errorf("cutLongValues:\n got %q\nwant %q", got, tt.want)
			}
		})
	}
}

// A 3 MiB unknown flag is named, cut, once: the message stays short.
func TestMainCutsALongUnknownFlag(t *testing.T) {
	flag := "--" + strings.Repeat("x", 3<<20)
	var stdout, stderr bytes.Buffer
	if code := Main([]string{"validate", flag}, &stdout, &stderr); code != ExitUsage {
		t.Errorf("exit %d, want %d", code, ExitUsage)
	}
	want := fmt.Sprintf("pool-managerd: unknown flag: %s…(%d bytes)\n", flag[:echoKeep], len(flag))
	if !strings.HasPrefix(stderr.String(), want) || stderr.Len() > 1024 {
		t.Errorf("stderr (%d bytes) starts %q, want %q and at most 1 KiB", stderr.Len(), prefix(stderr.String(), 200), want)
	}
}
