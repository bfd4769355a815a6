package gitsource

import (
	"net/http"
	"net/http/cgi"
	"net/http/httptest"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/poolmanagerd/pool-managerd/testkit/gitrepo"
)

// TestHTTPSToken serves the remote over loopback HTTP with git's own smart
// HTTP server (git http-backend, which needs the git binary: go-git has no
// HTTP server) behind a basic-auth check, and fetches with a token.
func TestHTTPToken(t *testing.T) {
	gitBin, err := exec.LookPath("git")
	if err != nil {
		t.Skip("the git binary is not on PATH; git http-backend serves this test's remote")
	}
	remote := gitrepo.New(t)
	remote.Write("a.cue", "a\n")
	commit := remote.Commit()
	remote.Push()

	const token = "s3cret-token"
	backend := &cgi.Handler{
		Path: gitBin,
		Args: []string{"http-backend"},
		Env: []string{
			"GIT_PROJECT_ROOT=" + filepath.Dir(remote.Path()),
			"GIT_HTTP_EXPORT_ALL=1",
			"GIT_CONFIG_NOSYSTEM=1",
			"HOME=" + t.TempDir(),
		},
	}
	var mu sync.Mutex
	var seen []string // user:password of each request, "-" when none
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		user, pass, ok := r.BasicAuth()
		mu.Lock()
		if ok {
			seen = append(seen, user+":"+pass)
		} else {
			seen = append(seen, "-")
		}
		mu.Unlock()
		if !ok || user != "git" || pass != token {
			w.Header().Set("WWW-Authenticate", `Basic realm="git"`)
			http.Error(w, "unauthorized", http.StatusUnauthorized)
			return
		}
		backend.ServeHTTP(w, r)
	}))
	t.Cleanup(srv.Close)
	url := srv.URL + "/" + filepath.Base(remote.Path())

	for _, tc := range []struct {
		name, token string
		wantErr     string // "" = delivered
		wantSeen    string
	}{
		{"right token", token, "", "git:" + token},
		{"wrong token", "wrong", "authentication", "git:wrong"},
		{"no token", "", "authentication required", "-"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			mu.Lock()
			seen = nil
			mu.Unlock()
			r := start(t, Options{URL: url, Interval: time.Hour, Auth: Auth{Token: tc.token}})
			st := r.attempt(t)
			if tc.wantErr == "" {
				if st.LastError != "" || st.Fetched != commit {
					t.Fatalf("status %+v, want commit %s fetched", st, commit)
				}
				if co := r.next(t); co.Commit != commit {
					t.Errorf("checkout %s, want %s", co.Commit, commit)
				}
			} else {
				if !strings.Contains(st.LastError, tc.wantErr) || st.Failures != 1 {
					t.Errorf("status %+v, want a failure saying %q", st, tc.wantErr)
				}
				r.noDelivery(t)
			}
			mu.Lock()
			defer mu.Unlock()
			if len(seen) == 0 {
				t.Fatal("the server saw no request")
			}
			for _, s := range seen {
				if s != tc.wantSeen {
					t.Errorf("the server saw credentials %q, want %q on every request (all: %q)", s, tc.wantSeen, seen)
					break
				}
			}
		})
	}
}
