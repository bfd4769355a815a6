package cli

import (
	"bytes"
	"testing"

	"github.com/poolmanagerd/pool-managerd/internal/state"
)

func TestWriteRevision(t *testing.T) {
	tests := []struct {
		name string
		rev  *state.Revision
		want string
	}{
		{"not from Git", nil, ""},
		{"a Git source", &state.Revision{Source: "https://git.example.com/pools.git", Commit: "0123abcd", Ref: "main"},
			"Config revision applied: 0123abcd (main) from https://git.example.com/pools.git\n\n"},
		{"a dirty work tree", &state.Revision{Source: "/etc/pool-managerd/config", Commit: "0123abcd", Dirty: true},
			"Config revision applied: 0123abcd+dirty from /etc/pool-managerd/config\n\n"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var b bytes.Buffer
			if err := writeRevision(&b, tt.rev); err != nil {
				t.Fatal(err)
			}
			if b.String() != tt.want {
				t.Errorf("got %q, want %q", b.String(), tt.want)
			}
		})
	}
}
