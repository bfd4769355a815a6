package observe

import (
	"context"
	"errors"
	"io/fs"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/poolmanagerd/pool-managerd/drivers/engine/vram"
	"github.com/poolmanagerd/pool-managerd/drivers/model/cache"
	"github.com/poolmanagerd/pool-managerd/drivers/model/fetch"
	"github.com/poolmanagerd/pool-managerd/reconcile"
	"github.com/poolmanagerd/pool-managerd/schema"
	"github.com/poolmanagerd/pool-managerd/testkit/ggufgen"
)

const (
	modelToken = "hf_observe_secret"
	// otherDigest is a digest no test file has.
	otherDigest = "ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff"
)

// modelServer serves one GGUF file at /model.gguf, with range support, and
// records the requests it gets.
type modelServer struct {
	*httptest.Server
	mu       sync.Mutex
	requests []string // METHOD RANGE
	auth     []string
}

func newModelServer(t *testing.T, path, etag string) *modelServer {
	t.Helper()
	s := &modelServer{}
	s.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.mu.Lock()
		s.requests = append(s.requests, r.Method+" "+r.Header.Get("Range"))
		s.auth = append(s.auth, r.Header.Get("Authorization"))
		s.mu.Unlock()
		f, err := os.Open(path)
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		defer f.Close()
		fi, err := f.Stat()
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		if etag != "" {
			w.Header().Set("X-Linked-Etag", `"`+etag+`"`)
		}
		http.ServeContent(w, r, "model.gguf", fi.ModTime(), f)
	}))
	t.Cleanup(s.Close)
	return s
}

func (s *modelServer) seen() ([]string, []string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.requests...), append([]string(nil), s.auth...)
}

// writeGGUF writes a synthetic model and returns its path and size.
func writeGGUF(t *testing.T, m ggufgen.Model) (string, int64) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "model.gguf")
	size, err := ggufgen.Write(path, m)
	if err != nil {
		t.Fatal(err)
	}
	return path, size
}

// cacheModel puts the file at path into a model cache at dir, verified,
// as name; it returns the file's digest.
func cacheModel(t *testing.T, dir, path, name string) string {
	t.Helper()
	c, err := cache.Open(dir, cache.Options{})
	if err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	digest, err := cache.HashReader(context.Background(), strings.NewReader(string(data)))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(c.PartialPath(digest), data, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Commit(c.PartialPath(digest), digest, name, digest); err != nil {
		t.Fatal(err)
	}
	return digest
}

func llamaSourcePool(id, src, digest string, vramBytes int64) *schema.Pool {
	return &schema.Pool{ID: id, Node: "n", Engine: schema.EngineLlamaCpp,
		Model:   schema.Model{Source: src, SHA256: digest, Ctx: 4096},
		Devices: []int{0, 1}, Split: []float64{0.5, 0.5}, VRAM: vramBytes}
}

func localEstimate(t *testing.T, path string) reconcile.Need {
	t.Helper()
	est, err := vram.EstimateGGUF(context.Background(), path, 4096, []float64{0.5, 0.5})
	if err != nil {
		t.Fatal(err)
	}
	return reconcile.Need{PerGPU: est.PerGPU, Source: est.Source}
}

func TestNeedsOfFetchedModels(t *testing.T) {
	tinyPath, _ := writeGGUF(t, ggufgen.Tiny())
	cacheDir := filepath.Join(t.TempDir(), "models")
	tinyDigest := cacheModel(t, cacheDir, tinyPath, "tiny.gguf")
	cachedNeed := localEstimate(t, tinyPath)

	bigPath, bigSize := writeGGUF(t, ggufgen.Llama7B())
	bigNeed := localEstimate(t, bigPath)
	declaredDigest := strings.Repeat("a", 64)
	srv := newModelServer(t, bigPath, otherDigest)
	remoteURL := srv.URL + "/model.gguf"
	down := httptest.NewServer(http.NotFoundHandler())
	downURL := down.URL + "/model.gguf"
	down.Close()

	tests := []struct {
		name   string
		lookup ModelLookup
		pool   *schema.Pool
		want   reconcile.Need
		// wantWarnings are parts of the warnings, in order.
		wantWarnings []string
		// asks: the source is asked (HEAD and, without vram, the header).
		asks bool
		// wantAuth is the Authorization of every request the source gets.
		wantAuth string
	}{{
		name:   "in the cache: estimated from the cached file",
		lookup: ModelLookup{Cache: cacheDir, Remote: true},
		pool:   llamaSourcePool("chat", srv.URL+"/tiny.gguf", tinyDigest, 0),
		want:   cachedNeed,
	}, {
		name:   "not cached, no remote lookup (the daemon): deferred",
		lookup: ModelLookup{Cache: cacheDir},
		pool:   llamaSourcePool("chat", remoteURL, declaredDigest, 0),
		want:   reconcile.Need{Deferred: "the model is not in the model cache yet: checked before the engine starts, once it is fetched"},
	}, {
		name:   "offline: deferred, nothing asked",
		lookup: ModelLookup{Cache: cacheDir, Remote: true, Offline: true},
		pool:   llamaSourcePool("chat", remoteURL, declaredDigest, 0),
		want:   reconcile.Need{Deferred: "the model is not in the model cache (offline: its source is not asked)"},
	}, {
		name:   "remote: estimated from the header; the size and a differing digest from the source",
		lookup: ModelLookup{Cache: cacheDir, Remote: true, Auth: fetch.Auth{Token: fetch.StaticToken(modelToken), Hosts: []string{"127.0.0.1"}}},
		pool:   llamaSourcePool("chat", remoteURL, declaredDigest, 0),
		want:   reconcile.Need{PerGPU: bigNeed.PerGPU, Source: vram.SourceGGUF, Bytes: bigSize},
		wantWarnings: []string{"the source's file has digest " + otherDigest + ", the config says " + declaredDigest +
			": the fetch will fail (model_digest_mismatch)"},
		asks:     true,
		wantAuth: "Bearer " + modelToken,
	}, {
		name:   "remote, a host the token is not for: asked without the token",
		lookup: ModelLookup{Cache: cacheDir, Remote: true, Auth: fetch.Auth{Token: fetch.StaticToken(modelToken), Hosts: []string{fetch.DefaultTokenHost}}},
		pool:   llamaSourcePool("chat", remoteURL, declaredDigest, 0),
		want:   reconcile.Need{PerGPU: bigNeed.PerGPU, Source: vram.SourceGGUF, Bytes: bigSize},
		wantWarnings: []string{"the source's file has digest " + otherDigest + ", the config says " + declaredDigest +
			": the fetch will fail (model_digest_mismatch)"},
		asks: true,
	}, {
		name:         "remote: a source that cannot be reached is a warning, the need deferred",
		lookup:       ModelLookup{Remote: true},
		pool:         llamaSourcePool("chat", downURL, declaredDigest, 0),
		want:         reconcile.Need{Deferred: "the source could not be asked: checked before the engine starts, once the model is fetched"},
		wantWarnings: []string{"the source cannot be reached"},
	}, {
		name:   "a declared vram wins; the source still tells the size",
		lookup: ModelLookup{Remote: true},
		pool:   llamaSourcePool("chat", remoteURL, otherDigest, 8<<30),
		want:   reconcile.Need{PerGPU: []uint64{4 << 30, 4 << 30}, Source: vram.SourceDeclared, Bytes: bigSize},
		asks:   true,
	}}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			before, _ := srv.seen()
			got := tc.lookup.NeedOf(context.Background(), tc.pool)
			warnings := got.Warnings
			got.Warnings = nil
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("need (-want +got):\n%s", diff)
			}
			if len(warnings) != len(tc.wantWarnings) {
				t.Errorf("warnings %q; want %d like %q", warnings, len(tc.wantWarnings), tc.wantWarnings)
			}
			for i, w := range tc.wantWarnings {
				if i < len(warnings) && !strings.Contains(warnings[i], w) {
					t.Errorf("warning %q lacks %q", warnings[i], w)
				}
			}
			after, auth := srv.seen()
			asked := len(after) > len(before)
			if asked != tc.asks {
				t.Errorf("the source got %q; want it asked: %v", after[len(before):], tc.asks)
			}
			for i, a := range auth[len(before):] {
				if a != tc.wantAuth {
					t.Errorf("request %q got Authorization %q; want %q", after[len(before)+i], a, tc.wantAuth)
				}
			}
		})
	}
}

func TestObserveModels(t *testing.T) {
	tinyPath, tinySize := writeGGUF(t, ggufgen.Tiny())
	cacheDir := filepath.Join(t.TempDir(), "models")
	digest := cacheModel(t, cacheDir, tinyPath, "tiny.gguf")
	pools := map[string]*schema.Pool{
		"cached":   llamaSourcePool("cached", "https://models.example.com/tiny.gguf", digest, 0),
		"missing":  llamaSourcePool("missing", "https://models.example.com/other.gguf", otherDigest, 0),
		"renamed":  llamaSourcePool("renamed", "https://models.example.com/renamed.gguf", digest, 0), // another name: not that entry's file
		"local":    {ID: "local", Engine: schema.EngineLlamaCpp, Model: schema.Model{Path: tinyPath, Ctx: 4096}, Devices: []int{0}},
		"manifest": {ID: "manifest", Engine: schema.EngineVLLM, Model: schema.Model{Source: "https://models.example.com/m/", Files: []schema.ModelFile{{Path: "config.json", SHA256: otherDigest}}}, Devices: []int{0}, VRAM: 1 << 30},
	}
	obs, err := Observe(context.Background(), Options{Node: "n", GPUs: &fakeNode{}, Source: "sim",
		Models: ModelLookup{Cache: cacheDir, Offline: true}, Pools: pools})
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(map[string]int64{digest: tinySize}, obs.Models); diff != "" {
		t.Errorf("Observed.Models (-want +got):\n%s", diff)
	}
	if !obs.Offline {
		t.Error("Observed.Offline is false with ModelLookup.Offline")
	}

	// A cache that is not there yet is an empty one, and looking does not make it.
	none := filepath.Join(t.TempDir(), "models")
	obs, err = Observe(context.Background(), Options{Node: "n", GPUs: &fakeNode{}, Source: "sim", Models: ModelLookup{Cache: none}, Pools: pools})
	if err != nil {
		t.Fatal(err)
	}
	if obs.Models == nil || len(obs.Models) != 0 {
		t.Errorf("Observed.Models = %v; want an empty map", obs.Models)
	}
	d := reconcile.Desired{Pools: pools}
	ModelLookup{Cache: none}.Needs(context.Background(), &d)
	if _, err := os.Stat(none); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("observing made the model cache %s (%v)", none, err)
	}
	if n := d.Needs["missing"]; n.Deferred == "" || n.Err != "" {
		t.Errorf("need of a model not cached: %+v; want it deferred", n)
	}

	// No cache observed (declared mode): nil, nothing cached.
	obs, err = Observe(context.Background(), Options{Node: "n", GPUs: &fakeNode{}, Source: "declared", Pools: pools})
	if err != nil {
		t.Fatal(err)
	}
	if obs.Models != nil {
		t.Errorf("Observed.Models = %v without a cache; want nil", obs.Models)
	}
}
