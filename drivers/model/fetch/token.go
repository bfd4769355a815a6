package fetch

import (
	"fmt"
	"os"
	"strings"
)

// TokenSource returns the token for the sources, "" for none. It is called
// for every download, so a rotated token file is picked up.
type TokenSource func() (string, error)

// ReadToken is the one reader of the token for private sources: the
// content of file when file is given (trimmed; an unreadable or empty file
// is an error), else the environment variable env (trimmed), else "". The
// file wins, as it does for --git-token-file.
func ReadToken(file, env string) (string, error) {
	if file == "" {
		return strings.TrimSpace(os.Getenv(env)), nil
	}
	b, err := os.ReadFile(file)
	if err != nil {
		return "", fmt.Errorf("token file: %w", err)
	}
	t := strings.TrimSpace(string(b))
	if t == "" {
		return "", fmt.Errorf("token file %s is empty", file)
	}
	return t, nil
}

// TokenFromFileOrEnv is a TokenSource that calls ReadToken(file, env) each
// time.
func TokenFromFileOrEnv(file, env string) TokenSource {
	return func() (string, error) { return ReadToken(file, env) }
}
