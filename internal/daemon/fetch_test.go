//go:build linux

package daemon_test

import (
	"crypto/sha256"
	"encoding/hex"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/poolmanagerd/pool-managerd/drivers/model/cache"
	"github.com/poolmanagerd/pool-managerd/drivers/model/fetch"
	"github.com/poolmanagerd/pool-managerd/internal/api"
	"github.com/poolmanagerd/pool-managerd/internal/daemon"
	"github.com/poolmanagerd/pool-managerd/reconcile"
	"github.com/poolmanagerd/pool-managerd/reconcile/restart"
	"github.com/poolmanagerd/pool-managerd/testkit/modelserver"
)

// modelPath is where a test's model server serves its model.
const modelPath = "/org/models/model.gguf"

// startModelServer serves data at modelPath on loopback.
func startModelServer(t *testing.T, data []byte) *modelserver.Server {
	t.Helper()
	return modelserver.Start(t, map[string][]byte{modelPath: data})
}

// testModel is a model file the stand-in engine takes (a GGUF magic), of
// 256 KiB, and its sha256.
func testModel() ([]byte, string) {
	data := make([]byte, 256<<10)
	copy(data, "GGUF")
	for i := 4; i < len(data); i++ {
		data[i] = byte(i * 7)
	}
	sum := sha256.Sum256(data)
	return data, hex.EncodeToString(sum[:])
}

// withFetcher gives the daemon a fetcher into cacheDir.
func withFetcher(t *testing.T, cacheDir string) func(*daemon.Options) {
	t.Helper()
	c, err := cache.Open(cacheDir, cache.Options{})
	if err != nil {
		t.Fatal(err)
	}
	f := fetch.New(c, fetch.Options{Retries: -1})
	return func(o *daemon.Options) { o.Fetcher = f }
}

// partials lists the partial downloads left in a cache.
func partials(t *testing.T, cacheDir string) []string {
	t.Helper()
	var out []string
	_ = filepath.WalkDir(cacheDir, func(path string, _ os.DirEntry, err error) error {
		if err == nil && strings.HasSuffix(path, cache.PartialSuffix) {
			out = append(out, path)
		}
		return nil
	})
	return out
}

// A pool with a model.source is Fetching while its model downloads (held
// halfway by the server, with the bytes done shown), then Preloading, then
// Ready on the cached file; a second pool of the same model downloads
// nothing and shares the file.
func TestPoolFetchesItsModel(t *testing.T) {
	t.Parallel()
	data, digest := testModel()
	srv := startModelServer(t, data)
	// The download stops halfway until the test releases the rest.
	hold := srv.Hold(modelPath, int64(len(data)/2))
	n := newNode(t, 1)
	cacheDir := filepath.Join(n.state, "models")
	a := pool{id: "a", source: srv.URL + modelPath, sha256: digest}
	n.writeConfig(a)
	r := n.start(withFetcher(t, cacheDir))

	p := r.waitPool("a", "Fetching with bytes done", func(p api.Pool) bool {
		return p.Phase == reconcile.Fetching && p.Fetch != nil && p.Fetch.BytesDone > 0
	})
	if p.Ready || p.PID != 0 || p.Fetch.BytesTotal != int64(len(data)) {
		t.Errorf("while fetching: %v, fetch %+v; want not ready, no engine, the model's size as total", poolString(p), *p.Fetch)
	}
	if st := n.loadState(); len(st.Engines) != 0 {
		t.Errorf("an engine is recorded while the model downloads: %+v", st.Engines)
	}
	hold.Release()
	r.waitReady("a")

	cached := filepath.Join(cacheDir, "sha256", digest, "model.gguf")
	rec := n.loadState().Engines["a"]
	if rec.Spec == nil || rec.Spec.Model.Path != "" || rec.Spec.Model.Source != srv.URL+modelPath {
		t.Errorf("recorded spec's model %+v, want the pool's source and no path", rec.Spec)
	}
	if !strings.Contains(strings.Join(rec.Argv, " "), cached) {
		t.Errorf("engine argv %q does not name the cached model %s", rec.Argv, cached)
	}
	// The Ready event is logged just after Ready is recorded.
	r.waitFor("the Ready event in the log", func() bool { return strings.Contains(r.log.String(), "Ready: engine") })
	log := r.log.String()
	fetching, starting, ready := strings.Index(log, "fetching model"), strings.Index(log, "starting llamacpp"), strings.Index(log, "Ready: engine")
	if fetching < 0 || starting < fetching || ready < starting {
		t.Errorf("the log does not show Fetching, then Preloading, then Ready (at %d, %d, %d)", fetching, starting, ready)
	}
	<-hold.Done() // the held request has logged all it sent
	if got := srv.Requests(); len(got) != 1 || got[0].Sent != int64(len(data)) {
		t.Errorf("requests for the model %+v, want 1 that sent the whole file", got)
	}

	n.writeConfig(a, pool{id: "b", source: srv.URL + modelPath, sha256: digest})
	r.waitReady("b")
	if got := srv.Requests(); len(got) != 1 {
		t.Errorf("requests for the model after a second pool of it started %+v, want still 1", got)
	}
	entries, _ := os.ReadDir(filepath.Join(cacheDir, "sha256"))
	if len(entries) != 1 {
		t.Errorf("%d models in the cache, want the one both pools share", len(entries))
	}
	r.waitMetric("pool_managerd_model_fetch_bytes_total", nil, float64(len(data)))
	r.waitMetric("pool_managerd_model_fetch_failures_total", map[string]string{"class": restart.ClassModelDigestMismatch}, 0)
}

// A download whose bytes do not match the declared sha256: the pool is
// Unready with model_digest_mismatch and a hint, no engine was spawned,
// and no partial file is left.
func TestFetchDigestMismatchSpawnsNothing(t *testing.T) {
	t.Parallel()
	data, _ := testModel()
	other := strings.Repeat("0", 64) // not the file's sha256
	srv := startModelServer(t, data)
	n := newNode(t, 1)
	cacheDir := filepath.Join(n.state, "models")
	n.writeConfig(pool{id: "a", source: srv.URL + modelPath, sha256: other, restart: slowRestart})
	r := n.start(withFetcher(t, cacheDir))
	p := r.waitPool("a", "Unready with model_digest_mismatch", func(p api.Pool) bool {
		return p.LastError != nil && p.LastError.Class == restart.ClassModelDigestMismatch
	})
	if p.Phase != reconcile.Unready || p.PID != 0 || p.LastError.Hint == "" {
		t.Errorf("after the mismatch: %v, hint %q; want Unready, no engine, a hint", poolString(p), p.LastError.Hint)
	}
	if st := n.loadState(); len(st.Engines) != 0 {
		t.Errorf("an engine is recorded: %+v", st.Engines)
	}
	if strings.Contains(r.log.String(), "starting llamacpp") {
		t.Error("an engine was spawned for a model that failed its digest")
	}
	if left := partials(t, cacheDir); len(left) != 0 {
		t.Errorf("partial files left: %v", left)
	}
	if _, err := os.Stat(filepath.Join(cacheDir, "sha256", other)); !os.IsNotExist(err) {
		t.Errorf("the cache has an entry for the declared digest: %v", err)
	}
	r.waitMetric("pool_managerd_model_fetch_failures_total", map[string]string{"class": restart.ClassModelDigestMismatch}, 1)
}

// slowRestart keeps the next try a minute away: a test that counts the
// requests after a failure sees none come meanwhile.
const slowRestart = `initialBackoff: "1m", maxBackoff: "1m", jitter: 0, stopGrace: "2s", drainTimeout: "1s"`

// A source that answers 404: the pool is Unready with fetch_http, the code
// in the message, and its next try waits for the backoff: one request, not
// a loop of them.
func TestFetchHTTPErrorBacksOff(t *testing.T) {
	t.Parallel()
	data, digest := testModel()
	srv := startModelServer(t, data)
	srv.Fail(modelPath, http.StatusNotFound)
	n := newNode(t, 1)
	n.writeConfig(pool{id: "a", source: srv.URL + modelPath, sha256: digest, restart: slowRestart})
	r := n.start(withFetcher(t, filepath.Join(n.state, "models")))
	p := r.waitPool("a", "Unready with fetch_http", func(p api.Pool) bool {
		return p.LastError != nil && p.LastError.Class == restart.ClassFetchHTTP
	})
	if p.Phase != reconcile.Unready || !strings.Contains(p.LastError.Message, "404") || p.LastError.Hint == "" {
		t.Errorf("after the 404: %v, hint %q; want Unready, the code in the message, a hint", poolString(p), p.LastError.Hint)
	}
	if p.NextRetry.IsZero() || !p.NextRetry.After(time.Now().Add(30*time.Second)) {
		t.Errorf("next retry %v, want the backoff's minute away", p.NextRetry)
	}
	// Passes that change nothing (a reload) start no new try during the backoff.
	r.settle()
	r.settle()
	if got := srv.Requests(); len(got) != 1 || got[0].Status != http.StatusNotFound {
		t.Errorf("requests %+v during the backoff, want the failed one only", got)
	}
}

// At a resync the daemon removes the models of its cache that no pool uses
// once their grace is over, and keeps those its pools use, however long ago
// they were last used.
func TestResyncCollectsUnusedModels(t *testing.T) {
	t.Parallel()
	data, digest := testModel()
	srv := startModelServer(t, data)
	n := newNode(t, 1)
	cacheDir := filepath.Join(n.state, "models")
	n.writeConfig(pool{id: "a", source: srv.URL + modelPath, sha256: digest})
	r := n.start(withFetcher(t, cacheDir), func(o *daemon.Options) {
		o.Resync = 50 * time.Millisecond
		o.CacheGrace = time.Nanosecond // every model is past its grace: only use keeps one
	})
	r.waitReady("a")
	// A model no pool uses, put there once pool a's is in the cache: the
	// collection that removes it has a's to keep.
	unused := strings.Repeat("e", 64)
	old := filepath.Join(cacheDir, "sha256", unused)
	if err := os.MkdirAll(old, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(old, "old.gguf"), []byte("GGUF old"), 0o644); err != nil {
		t.Fatal(err)
	}
	r.waitFor("the removal of the unused model in the log", func() bool {
		return strings.Contains(r.log.String(), unused)
	})
	if !strings.Contains(r.log.String(), "model cache: removed models no pool uses") {
		t.Error("the log does not say why the model was removed")
	}
	if _, err := os.Stat(old); !os.IsNotExist(err) {
		t.Errorf("the unused model is still there: %v", err)
	}
	if _, err := os.Stat(filepath.Join(cacheDir, "sha256", digest, "model.gguf")); err != nil {
		t.Errorf("the model pool a uses was removed: %v", err)
	}
	if p := r.pool("a"); !p.Ready {
		t.Errorf("pool a after the collection: %v", poolString(p))
	}
}
