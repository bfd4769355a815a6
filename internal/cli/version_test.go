package cli

import (
	"runtime/debug"
	"testing"
)

func TestRevisionOf(t *testing.T) {
	tests := []struct {
		name     string
		settings []debug.BuildSetting
		want     string
	}{
		{"none recorded", nil, ""},
		{"clean", []debug.BuildSetting{{Key: "vcs.revision", Value: "0123abcd"}, {Key: "vcs.modified", Value: "false"}}, "0123abcd"},
		{"dirty", []debug.BuildSetting{{Key: "vcs.modified", Value: "true"}, {Key: "vcs.revision", Value: "0123abcd"}}, "0123abcd+dirty"},
		{"modified without a revision", []debug.BuildSetting{{Key: "vcs.modified", Value: "true"}}, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := revisionOf(tt.settings); got != tt.want {
				t.Errorf("revisionOf(%v) = %q, want %q", tt.settings, got, tt.want)
			}
		})
	}
}
