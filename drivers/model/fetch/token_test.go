package fetch_test

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/poolmanagerd/pool-managerd/drivers/model/fetch"
)

// TestReadToken: the file wins over the environment, both are trimmed, and
// an unreadable or empty file is an error.
func TestReadToken(t *testing.T) {
	const env = "POOL_MANAGERD_TEST_MODEL_TOKEN"
	dir := t.TempDir()
	file := filepath.Join(dir, "token")
	if err := os.WriteFile(file, []byte("from-file\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	empty := filepath.Join(dir, "empty")
	if err := os.WriteFile(empty, []byte(" \n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name, file, env, want string
		wantErr               bool
	}{
		{name: "neither"},
		{name: "env", env: " from-env\n", want: "from-env"},
		{name: "file", file: file, want: "from-file"},
		{name: "the file wins", file: file, env: "from-env", want: "from-file"},
		{name: "empty file", file: empty, env: "from-env", wantErr: true},
		{name: "missing file", file: filepath.Join(dir, "missing"), env: "from-env", wantErr: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Setenv(env, tc.env)
			got, err := fetch.ReadToken(tc.file, env)
			if (err != nil) != tc.wantErr || got != tc.want {
				t.Errorf("ReadToken = %q, %v; want %q, error %v", got, err, tc.want, tc.wantErr)
			}
			src, err2 := fetch.TokenFromFileOrEnv(tc.file, env)()
			if src != got || (err2 != nil) != (err != nil) {
				t.Errorf("TokenFromFileOrEnv gives %q, %v; ReadToken %q, %v", src, err2, got, err)
			}
		})
	}
}
