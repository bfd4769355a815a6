//go:build linux

package e2e

import (
	"bytes"
	"fmt"
	"maps"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/poolmanagerd/pool-managerd/drivers/model/cache"
	"github.com/poolmanagerd/pool-managerd/internal/api"
	"github.com/poolmanagerd/pool-managerd/reconcile"
	"github.com/poolmanagerd/pool-managerd/schema"
	"github.com/poolmanagerd/pool-managerd/schema/modelsource"
	"github.com/poolmanagerd/pool-managerd/testkit/ggufgen"
	"github.com/poolmanagerd/pool-managerd/testkit/modelserver"
)

// The tests of models the daemon fetches (model.source): a
// testkit/modelserver on loopback stands in for the remote, and holds its
// bytes back where a test must act halfway through a download.

const modelPath = "/m.gguf"

// tinyGGUF is a small GGUF model (ggufgen.Tiny, under a megabyte): the
// stand-in engine checks the magic of the file it is given.
func tinyGGUF(t *testing.T) []byte {
	t.Helper()
	name := filepath.Join(t.TempDir(), "tiny.gguf")
	if _, err := ggufgen.Write(name, ggufgen.Tiny()); err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(name)
	if err != nil {
		t.Fatal(err)
	}
	return data
}

// modelCache opens the daemon's model cache (serve's default,
// STATE_DIR/models) to find its files.
func (w *workspace) modelCache() *cache.Cache {
	w.t.Helper()
	c, err := cache.Open(filepath.Join(w.state, "models"), cache.Options{})
	if err != nil {
		w.t.Fatal(err)
	}
	return c
}

// wantCached checks that the cache holds data as a verified file of its
// digest, and no partial download of it.
func (w *workspace) wantCached(data []byte) string {
	w.t.Helper()
	c := w.modelCache()
	digest := modelserver.SHA256(data)
	path, verified, err := c.Lookup(digest, "m.gguf")
	if err != nil || path == "" || !verified {
		w.t.Fatalf("the cache's entry of %s: %q verified %v, %v; want a verified file", digest, path, verified, err)
	}
	got, err := os.ReadFile(path)
	if err != nil {
		w.t.Fatal(err)
	}
	if modelserver.SHA256(got) != digest {
		w.t.Fatalf("%s: %d bytes that are not the model's (%d bytes)", path, len(got), len(data))
	}
	if _, err := os.Stat(c.PartialPath(digest)); !os.IsNotExist(err) {
		w.t.Errorf("a partial download of %s is left: %v", digest, err)
	}
	return path
}

// wantNotCached checks that the cache holds nothing of digest: no file,
// no partial download; with emptyPartial, a partial download of no bytes
// (made before a request that failed) may be there.
func (w *workspace) wantNotCached(digest string, emptyPartial bool) {
	w.t.Helper()
	c := w.modelCache()
	if path, _, _ := c.Lookup(digest, "m.gguf"); path != "" {
		w.t.Errorf("the cache holds %s at %s", digest, path)
	}
	if fi, err := os.Stat(c.PartialPath(digest)); err == nil && (!emptyPartial || fi.Size() != 0) {
		w.t.Errorf("a partial download of %s is left: %d bytes", digest, fi.Size())
	}
}

// phasesOf are the phases the daemon's JSON log shows a pool going
// through, repeats folded (read after the daemon ended with term).
func (d *daemon) phasesOf(id string) []string {
	events, _ := d.logEvents()
	var out []string
	for _, e := range events {
		if e.str("pool") != id || e.str("phase") == "" {
			continue
		}
		if p := e.str("phase"); len(out) == 0 || out[len(out)-1] != p {
			out = append(out, p)
		}
	}
	return out
}

// TestFetchLifecycle: a pool with a source goes Pending → Fetching →
// Preloading → Ready, showing its download's progress while Fetching; a
// second pool with the same source fetches nothing and runs on the same file.
func TestFetchLifecycle(t *testing.T) {
	t.Parallel()
	data := tinyGGUF(t)
	half := int64(len(data) / 2)
	srv := modelserver.Start(t, map[string][]byte{modelPath: data})
	hold := srv.Hold(modelPath, half)
	w := newWorkspace(t)
	a := pool{ID: "a", Source: srv.URL + modelPath, SHA256: modelserver.SHA256(data)}
	w.writeConfig(a)
	d := w.serve()

	<-hold.Sent()
	r := w.run(nil, "wait", "--state-dir", w.state, "a", "--for", "phase=Fetching", "--timeout", (cmdTimeout - 5*time.Second).String())
	mustExit(t, r, 0)
	p := d.waitPool("a", fmt.Sprintf("Fetching with %d of %d bytes done", half, len(data)), func(p api.Pool) bool {
		return p.Phase == "Fetching" && p.Fetch != nil && p.Fetch.BytesDone == half
	})
	if p.Fetch.BytesTotal != int64(len(data)) || p.Fetch.StartedAt.IsZero() || p.PID != 0 {
		t.Errorf("pool a while its download is held: %+v, fetch %+v; want the total, a start time and no engine", p, *p.Fetch)
	}
	w.noEngine("a")
	// status, while the daemon holds the state directory, shows the pool as
	// the daemon does: Fetching, with how far its download has come.
	if s := w.status()["a"]; s.Phase != "Fetching" {
		t.Errorf("status --format json while a's download is held: %s; want phase Fetching", s)
	}
	contains(t, "status while a's download is held", w.statusText(), "a: downloading its model: "+reconcile.Fetch{Done: int64(half), Total: int64(len(data))}.Progress())

	hold.Release()
	p = d.waitPools("a")["a"]
	if p.Fetch != nil {
		t.Errorf("pool a is Ready and still shows a fetch: %+v", *p.Fetch)
	}
	path := w.wantCached(data)
	contains(t, "a's engine command line", cmdline(t, p.PID), "--model "+path)

	// A second pool of the same model: no download, the same file.
	w.writeConfig(a, pool{ID: "b", Devices: []int{1}, Source: a.Source, SHA256: a.SHA256})
	q := d.waitPools("a", "b")
	contains(t, "b's engine command line", cmdline(t, q["b"].PID), "--model "+path)
	if gets := srv.GETs(); len(gets) != 1 {
		t.Errorf("the server saw %d GETs for two pools of one model: %+v; want 1", len(gets), gets)
	}
	d.samePIDs(map[string]api.Pool{"a": p}, "a")

	d.term()
	// The log's phase events (Pending, where the daemon logs it, comes first).
	phases := d.phasesOf("a")
	if got := slices.DeleteFunc(slices.Clone(phases), func(s string) bool { return s == "Pending" }); !slices.Equal(got, []string{"Fetching", "Preloading", "Ready"}) ||
		slices.Index(phases, "Pending") > 0 {
		t.Errorf("pool a went through the phases %v; want Pending, Fetching, Preloading, Ready", phases)
	}
}

// TestFetchResumeAfterKill: the daemon killed with SIGKILL halfway through
// a download; the next daemon asks for the rest only (a range request from
// the bytes on disk) and ends with a verified file.
func TestFetchResumeAfterKill(t *testing.T) {
	t.Parallel()
	data := tinyGGUF(t)
	half := int64(len(data) / 2)
	srv := modelserver.Start(t, map[string][]byte{modelPath: data})
	hold := srv.Hold(modelPath, half)
	w := newWorkspace(t)
	w.writeConfig(pool{ID: "a", Source: srv.URL + modelPath, SHA256: modelserver.SHA256(data)})
	d := w.serve()

	<-hold.Sent()
	// The daemon has the bytes before the hold (on disk: it writes as they
	// arrive) once it says so.
	d.waitPool("a", fmt.Sprintf("%d bytes fetched", half), func(p api.Pool) bool {
		return p.Fetch != nil && p.Fetch.BytesDone == half
	})
	d.kill()
	<-hold.Done() // the server saw the connection go with the daemon
	hold.Release()
	if fi, err := os.Stat(w.modelCache().PartialPath(modelserver.SHA256(data))); err != nil || fi.Size() != half {
		t.Fatalf("the partial download after the kill: %v, %v; want %d bytes", fi, err, half)
	}

	d2 := w.serve()
	p := d2.waitPools("a")["a"]
	w.wantCached(data)
	gets := srv.GETs()
	want := "bytes=" + strconv.FormatInt(half, 10) + "-"
	if len(gets) != 2 || gets[0].Range != "" || gets[1].Range != want || gets[1].Sent != int64(len(data))-half {
		t.Errorf("GETs %+v; want a plain one, then one with Range %s that got the rest", gets, want)
	}
	if n := w.spawns("a"); n != 1 {
		t.Errorf("pool a: %d engine starts; want 1", n)
	}
	if p.Restarts != 0 {
		t.Errorf("pool a: %d restarts after a resumed download; want 0", p.Restarts)
	}
}

// TestFetchDigestMismatch: a source whose bytes do not match the declared
// sha256: the pool is Unready with the digest class and its hint, no engine
// is ever started, and the download is deleted.
func TestFetchDigestMismatch(t *testing.T) {
	t.Parallel()
	data := tinyGGUF(t)
	srv := modelserver.Start(t, map[string][]byte{modelPath: data})
	wrong := modelserver.SHA256([]byte("another model"))
	w := newWorkspace(t)
	// One try: the next is an hour away, so that nothing runs while the
	// test looks at the cache.
	w.writeConfig(pool{ID: "a", Source: srv.URL + modelPath, SHA256: wrong, Restart: `initialBackoff: "1h", maxBackoff: "1h", jitter: 0`})
	d := w.serve()

	p := d.waitPool("a", "failed with model_digest_mismatch", func(p api.Pool) bool {
		return p.LastError != nil && p.LastError.Class == "model_digest_mismatch"
	})
	if p.Phase != "Unready" && p.Phase != "Failed" {
		t.Errorf("pool a is %s after a digest mismatch; want Unready (or Failed once its breaker opens)", p.Phase)
	}
	contains(t, "the failure's message", p.LastError.Message, wrong)
	if p.LastError.Hint == "" {
		t.Error("a digest mismatch without a hint")
	}
	if p.Ready || p.PID != 0 {
		t.Errorf("pool a after a digest mismatch: ready %v pid %d", p.Ready, p.PID)
	}
	w.noEngine("a")
	if n := w.spawns("a"); n != 0 {
		t.Errorf("pool a: %d engine starts with a model that failed its digest; want 0", n)
	}
	w.wantNotCached(wrong, false)
	w.wantNotCached(modelserver.SHA256(data), false)
	if gets := srv.GETs(); len(gets) != 1 || gets[0].Sent != int64(len(data)) {
		t.Errorf("GETs %+v; want one that got the whole file", gets)
	}
	d.metrics().expect(t, "pool_managerd_model_fetch_failures_total", map[string]string{"class": "model_digest_mismatch"}, 1)
}

// TestFetchHTTPErrors: a source that answers 404 or 500: fetch_http with the
// code in the message, a backoff between tries (no hot loop: the tries come
// at least the initial backoff apart, one GET each), no engine.
func TestFetchHTTPErrors(t *testing.T) {
	t.Parallel()
	trickled := bytes.Repeat([]byte("m"), 256<<10)
	for _, tc := range []struct {
		name  string
		setup func(srv *modelserver.Server)
		data  []byte
		args  []string
		class string
		says  string
	}{
		{name: "404", setup: func(srv *modelserver.Server) { srv.Fail(modelPath, http.StatusNotFound) }, data: []byte("x"), class: "fetch_http", says: "404"},
		{name: "500", setup: func(srv *modelserver.Server) { srv.Fail(modelPath, http.StatusInternalServerError) }, data: []byte("x"), class: "fetch_http", says: "500"},
		// About 10 KB/s: it never stops sending, and never gets far.
		{name: "trickle", setup: func(srv *modelserver.Server) { srv.Trickle(modelPath, 100, 10*time.Millisecond) }, data: trickled,
			args: []string{"--fetch-stall-timeout", "300ms"}, class: "fetch_stalled", says: "trickle"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			srv := modelserver.Start(t, map[string][]byte{modelPath: tc.data})
			tc.setup(srv)
			w := newWorkspace(t)
			const backoff = 200 * time.Millisecond
			w.writeConfig(pool{ID: "a", Source: srv.URL + modelPath, SHA256: modelserver.SHA256(tc.data),
				Restart: fmt.Sprintf(`initialBackoff: "%v", maxBackoff: "%v", jitter: 0, stopGrace: "2s"`, backoff, 2*backoff)})
			d := w.serve(tc.args...)

			p := d.waitPool("a", "failed with "+tc.class, func(p api.Pool) bool {
				return p.LastError != nil && p.LastError.Class == tc.class && !p.NextRetry.IsZero()
			})
			contains(t, "the failure's message", p.LastError.Message, tc.says)
			if p.LastError.Hint == "" {
				t.Errorf("%s without a hint", tc.class)
			}
			d.waitFor("three tries", func() bool { return len(srv.GETs()) >= 3 })
			gets := srv.GETs()
			for i := 1; i < len(gets); i++ {
				if gap := gets[i].Time.Sub(gets[i-1].Time); gap < backoff {
					t.Errorf("GET %d came %v after the one before; want the backoff, %v or more, between tries: %+v", i, gap, backoff, gets)
				}
			}
			w.noEngine("a")
			if n := w.spawns("a"); n != 0 {
				t.Errorf("pool a: %d engine starts without its model; want 0", n)
			}
			if tc.class == "fetch_http" {
				w.wantNotCached(modelserver.SHA256(tc.data), true)
				return
			}
			// A stalled download keeps its bytes, and each try resumes from them.
			if path, _, _ := w.modelCache().Lookup(modelserver.SHA256(tc.data), "m.gguf"); path != "" {
				t.Errorf("the trickled model is in the cache at %s", path)
			}
			for i, g := range gets[1:] {
				if !strings.HasPrefix(g.Range, "bytes=") || g.Range == "bytes=0-" {
					t.Errorf("try %d after a stall asked for range %q; want it to resume from the bytes on disk", i+2, g.Range)
				}
			}
		})
	}
}

// TestFetchInsufficientDisk: a model bigger than --model-cache-max is
// blocked with insufficient_disk before any byte of it is downloaded (the
// server holds every body at its first byte: a daemon that needed the body
// to decide would wait in Fetching).
func TestFetchInsufficientDisk(t *testing.T) {
	t.Parallel()
	data := tinyGGUF(t)
	srv := modelserver.Start(t, map[string][]byte{modelPath: data})
	for range 10 {
		srv.Hold(modelPath, 0)
	}
	w := newWorkspace(t)
	w.writeConfig(pool{ID: "a", Source: srv.URL + modelPath, SHA256: modelserver.SHA256(data)})
	limit := len(data) / 2
	d := w.serve("--model-cache-max", strconv.Itoa(limit))

	p := d.waitPool("a", "blocked with insufficient_disk", func(p api.Pool) bool {
		return p.LastError != nil && p.LastError.Class == "insufficient_disk"
	})
	if p.Ready || p.PID != 0 || p.Phase == "Preloading" || p.Phase == "Ready" {
		t.Errorf("pool a with too little disk: %+v", p)
	}
	contains(t, "the failure's message", p.LastError.Message+" "+p.LastError.Hint, "--model-cache-max")
	if sent := srv.SentOf(modelPath); sent != 0 {
		t.Errorf("%d bytes of the model sent; want none", sent)
	}
	for _, r := range srv.Requests() {
		if r.Method == http.MethodGet && r.Range != "" {
			t.Errorf("a range request %+v: the daemon tried to download", r)
		}
	}
	w.noEngine("a")
	w.wantNotCached(modelserver.SHA256(data), true)
}

// TestFetchModelDirectory: a vllm pool whose source is a base URL and whose
// model is a directory declared by a manifest (model.files): the daemon
// fetches each file once into the cache entry named by the manifest's
// digest, starts the engine on that directory, and a second daemon on the
// same state directory fetches nothing.
func TestFetchModelDirectory(t *testing.T) {
	t.Parallel()
	contents := map[string][]byte{
		"config.json":       []byte(`{"architectures": ["LlamaForCausalLM"], "hidden_size": 64}` + "\n"),
		"tokenizer.json":    []byte(`{"version": "1.0", "model": {"type": "BPE", "vocab": {"a": 0, "b": 1}}}` + "\n"),
		"model.safetensors": bytes.Repeat([]byte("safetensors\x00"), 3<<10), // 36 KiB
	}
	const base = "/org/model/"
	served := map[string][]byte{}
	var manifest modelsource.Manifest
	for _, name := range []string{"config.json", "tokenizer.json", "model.safetensors"} {
		data := contents[name]
		served[base+name] = data
		manifest.Files = append(manifest.Files, modelsource.File{Path: name, SHA256: modelserver.SHA256(data), Size: int64(len(data))})
	}
	srv := modelserver.Start(t, served)
	w := newWorkspace(t)
	w.writeConfig(pool{ID: "v", Engine: "vllm", Source: srv.URL + base, Files: manifest.Files, VRAM: "4Gi"})
	digest := schema.Model{Files: manifest.Files}.Digest()
	dir := filepath.Join(w.state, "models", "sha256", digest)

	d := w.serve()
	p := d.waitPools("v")["v"]
	contains(t, "v's engine command line", cmdline(t, p.PID), "serve "+dir+" ")
	wantDir := func(when string) {
		t.Helper()
		entries, err := os.ReadDir(dir)
		if err != nil {
			t.Fatalf("%s: the model directory: %v", when, err)
		}
		var names []string
		for _, e := range entries {
			names = append(names, e.Name())
		}
		if want := slices.Sorted(maps.Keys(contents)); !slices.Equal(names, want) {
			t.Errorf("%s: %s holds %v; want exactly the manifest's files %v", when, dir, names, want)
		}
		for name, data := range contents {
			if got, err := os.ReadFile(filepath.Join(dir, name)); err != nil || !bytes.Equal(got, data) {
				t.Errorf("%s: %s: %d bytes, %v; want the served %d bytes", when, name, len(got), err, len(data))
			}
		}
		if _, verified, err := w.modelCache().LookupManifest(manifest); !verified || err != nil {
			t.Errorf("%s: the cache's lookup of the manifest: verified %v, %v; want verified", when, verified, err)
		}
	}
	wantDir("after the first run")
	wantGETs := func(when string) {
		t.Helper()
		gets := srv.GETs()
		for name, data := range contents {
			if g := srv.GETsOf(base + name); len(g) != 1 || g[0].Sent != int64(len(data)) {
				t.Errorf("%s: GETs of %s: %+v; want one that got its %d bytes", when, name, g, len(data))
			}
		}
		if len(gets) != len(contents) {
			t.Errorf("%s: %d GETs in all: %+v; want %d, one per file", when, len(gets), gets, len(contents))
		}
	}
	wantGETs("after the first run")
	d.term()

	d2 := w.serve()
	p2 := d2.waitPools("v")["v"]
	contains(t, "v's engine command line after the restart", cmdline(t, p2.PID), "serve "+dir+" ")
	if p2.Fetch != nil {
		t.Errorf("pool v after the restart shows a fetch: %+v", *p2.Fetch)
	}
	wantGETs("after the second run")
	wantDir("after the second run")
	d2.term()
	if phases := d2.phasesOf("v"); slices.Contains(phases, "Fetching") {
		t.Errorf("the second daemon's pool v went through %v; want no Fetching", phases)
	}
}
