//go:build linux

package daemon_test

import (
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/poolmanagerd/pool-managerd/internal/api"
	"github.com/poolmanagerd/pool-managerd/reconcile"
	"github.com/poolmanagerd/pool-managerd/reconcile/restart"
	"github.com/poolmanagerd/pool-managerd/testkit/modelserver"
)

// otherModel is a second model file the stand-in engine takes, of the size
// of testModel's and with other bytes, and its sha256.
func otherModel() ([]byte, string) {
	data := make([]byte, 256<<10)
	copy(data, "GGUF")
	for i := 4; i < len(data); i++ {
		data[i] = byte(i * 11)
	}
	return data, modelserver.SHA256(data)
}

// Regression (issue 15 review): a replace stopped the running engine before
// it downloaded the new spec's model, so a change of model.source left the
// pool down for the whole download. The old engine serves (Ready, same pid)
// while the new model downloads, held halfway by the server; once the model
// is in the cache the old engine is stopped and the new one is Ready on it.
func TestReplaceFetchesTheNewModelBeforeItStopsTheEngine(t *testing.T) {
	t.Parallel()
	dataA, digestA := testModel()
	dataB, digestB := otherModel()
	srv := modelserver.Start(t, map[string][]byte{"/org/a.gguf": dataA, "/org/b.gguf": dataB})
	n := newNode(t, 1)
	cacheDir := filepath.Join(n.state, "models")
	n.writeConfig(pool{id: "a", source: srv.URL + "/org/a.gguf", sha256: digestA})
	r := n.start(withFetcher(t, cacheDir))
	oldPID := r.waitReady("a")["a"]

	hold := srv.Hold("/org/b.gguf", int64(len(dataB)/2))
	n.writeConfig(pool{id: "a", source: srv.URL + "/org/b.gguf", sha256: digestB})
	select {
	case <-hold.Sent():
	case <-time.After(waitTimeout):
		t.Fatal("the new model's download did not reach the hold")
	}
	p := r.waitPool("a", "the new model's download in the view", func(p api.Pool) bool {
		return p.Fetch != nil && p.Fetch.BytesDone > 0
	})
	if p.Phase != reconcile.Ready || !p.Ready || p.PID != oldPID || !alive(oldPID) {
		t.Errorf("while the new model downloads: %v (old pid %d alive %v); want Ready on the old engine", poolString(p), oldPID, alive(oldPID))
	}
	if rec := n.loadState().Engines["a"]; rec.PID != oldPID || !rec.DrainingSince.IsZero() {
		t.Errorf("while the new model downloads, the engine record is %+v; want pid %d, not draining", rec, oldPID)
	}
	if got := r.stepCount("a", "stopped"); got != 0 {
		t.Errorf("the engine was stopped %d times before its new model was in the cache", got)
	}

	hold.Release()
	ready := r.waitReadyWhere("a", "Ready on a new engine", func(p api.Pool) bool { return p.PID != oldPID })
	cached := filepath.Join(cacheDir, "sha256", digestB, "b.gguf")
	rec := n.loadState().Engines["a"]
	if rec.PID != ready.PID || !strings.Contains(strings.Join(rec.Argv, " "), cached) {
		t.Errorf("the new engine's record %+v does not run the cached model %s", rec, cached)
	}
	if alive(oldPID) {
		t.Errorf("the old engine pid %d is still alive after the replace", oldPID)
	}
	log := r.log.String()
	fetching, stopping := strings.Index(log, "fetching model "+srv.URL+"/org/b.gguf"), strings.Index(log, "stopping engine pid")
	if fetching < 0 || stopping < fetching {
		t.Errorf("the log does not show the new model's download before the engine's stop (at %d, %d)", fetching, stopping)
	}
}

// A replace whose new model cannot be fetched (404) stops nothing: the old
// engine serves on (Ready, same pid), the failure is recorded as the pool's
// last error with fetch_http and a next try after the backoff, and passes
// during the backoff fetch nothing again.
func TestReplaceWhoseFetchFailsKeepsTheEngine(t *testing.T) {
	t.Parallel()
	dataA, digestA := testModel()
	_, digestB := otherModel()
	srv := modelserver.Start(t, map[string][]byte{"/org/a.gguf": dataA})
	srv.Fail("/org/b.gguf", http.StatusNotFound)
	n := newNode(t, 1)
	n.writeConfig(pool{id: "a", source: srv.URL + "/org/a.gguf", sha256: digestA, restart: slowRestart})
	r := n.start(withFetcher(t, filepath.Join(n.state, "models")))
	oldPID := r.waitReady("a")["a"]

	n.writeConfig(pool{id: "a", source: srv.URL + "/org/b.gguf", sha256: digestB, restart: slowRestart})
	p := r.waitPool("a", "the replace's fetch_http failure", func(p api.Pool) bool {
		return p.LastError != nil && p.LastError.Class == restart.ClassFetchHTTP
	})
	if p.Phase != reconcile.Ready || !p.Ready || p.PID != oldPID || !alive(oldPID) {
		t.Errorf("after the failed fetch: %v (old pid %d alive %v); want Ready on the old engine", poolString(p), oldPID, alive(oldPID))
	}
	if !strings.Contains(p.LastError.Message, "404") || p.LastError.Hint == "" {
		t.Errorf("last error %+v, want the 404 in the message and a hint", *p.LastError)
	}
	if p.NextRetry.IsZero() || !p.NextRetry.After(time.Now().Add(30*time.Second)) {
		t.Errorf("next retry %v, want the backoff's minute away", p.NextRetry)
	}
	rec := n.loadState().Engines["a"]
	if rec.PID != oldPID || !rec.DrainingSince.IsZero() {
		t.Errorf("engine record %+v, want pid %d, not draining", rec, oldPID)
	}
	if got := r.stepCount("a", "stopped"); got != 0 {
		t.Errorf("the engine was stopped %d times for a replace whose model could not be fetched", got)
	}
	requests := func() int {
		k := 0
		for _, q := range srv.Requests() {
			if q.Path == "/org/b.gguf" {
				k++
			}
		}
		return k
	}
	before := requests()
	// Passes that change nothing (a reload) start no new try during the backoff.
	r.settle()
	r.settle()
	if got := requests(); got != before {
		t.Errorf("%d requests for the new model during the backoff, want none after the failed %d", got-before, before)
	}
	if p := r.pool("a"); !p.Ready || p.PID != oldPID {
		t.Errorf("after two passes in the backoff: %v; want still Ready on pid %d", poolString(p), oldPID)
	}
}
