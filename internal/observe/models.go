package observe

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/poolmanagerd/pool-managerd/drivers/engine/vram"
	"github.com/poolmanagerd/pool-managerd/drivers/model/cache"
	"github.com/poolmanagerd/pool-managerd/drivers/model/fetch"
	"github.com/poolmanagerd/pool-managerd/reconcile"
	"github.com/poolmanagerd/pool-managerd/schema"
	"github.com/poolmanagerd/pool-managerd/schema/modelsource"
)

// ModelLookup says where the models of pools with a model.source are
// looked for when their VRAM need is worked out, and whether they are in
// the node's cache (Observed.Models).
//
// A model in the cache with a trusted verification record is estimated from
// the cached file (never re-hashed). One that is not is, when Remote allows
// it, asked about at its source: the GGUF header of a llama.cpp model is read
// with range requests for the estimate, and a HEAD request tells its size
// and digest. Otherwise its need is deferred (reconcile.Need.Deferred):
// checked before the engine starts, once the model is fetched. A declared
// vram always wins over an estimate.
type ModelLookup struct {
	// Cache is the node's model cache directory; "" means none (nothing is
	// cached). It is only read: a missing cache is an empty one.
	Cache string
	// Remote allows asking a model's source when the cache lacks it: `plan`
	// sets it, the daemon's passes do not (they fetch instead).
	Remote bool
	// Offline: only models already in the cache are used; nothing is asked
	// of a source, and a start whose model is not cached fails
	// (Observed.Offline). It overrides Remote.
	Offline bool
	// Auth is the token for private sources and the hosts it may go to
	// (fetch.TokenAllowed decides, for every request and redirect). Never
	// logged.
	Auth fetch.Auth
	// Timeout bounds each remote lookup (the header read, the HEAD); 0
	// means vram.DefaultRemoteTimeout.
	Timeout time.Duration
	// Client makes the remote requests; nil means a default client.
	Client *http.Client
}

// remoteWorkers bounds how many pools' sources one Needs asks at once.
const remoteWorkers = 8

// Needs works out each pool's VRAM need: declared, or estimated from its
// GGUF file (local, cached or, with Remote, at its source). The sources
// are asked at once, up to remoteWorkers at a time.
func (m ModelLookup) Needs(ctx context.Context, d *reconcile.Desired) {
	if d.Needs == nil {
		d.Needs = map[string]reconcile.Need{}
	}
	l := m.open()
	var mu sync.Mutex
	var wg sync.WaitGroup
	slots := make(chan struct{}, remoteWorkers)
	for id, p := range d.Pools {
		slots <- struct{}{}
		wg.Go(func() {
			defer func() { <-slots }()
			need := l.needOf(ctx, p)
			mu.Lock()
			d.Needs[id] = need
			mu.Unlock()
		})
	}
	wg.Wait()
}

// NeedOf is one pool's VRAM need (see Needs); an error is recorded in the
// need, and blocks the pool. For vLLM, TGI and SGLang it also sums the
// model's weight files (Need.Weights).
func (m ModelLookup) NeedOf(ctx context.Context, p *schema.Pool) reconcile.Need {
	return m.open().needOf(ctx, p)
}

// lookup is a ModelLookup with its cache opened.
type lookup struct {
	ModelLookup
	// cache is nil when there is none (no directory, or not made yet).
	cache *cache.Cache
	// cacheErr says why an existing cache could not be opened.
	cacheErr error
}

// open opens the cache for reading: a directory that does not exist yet, or
// holds no entries, is an empty cache, and nothing is created.
func (m ModelLookup) open() *lookup {
	l := &lookup{ModelLookup: m}
	if m.Cache == "" {
		return l
	}
	// cache.Open makes its directories: only call it on a cache that has
	// them all already, so that looking changes nothing.
	for _, sub := range []string{"", "sha256", "meta", "tmp"} {
		fi, err := os.Stat(filepath.Join(m.Cache, sub))
		switch {
		case errors.Is(err, fs.ErrNotExist):
			return l
		case err != nil:
			l.cacheErr = fmt.Errorf("model cache %s: %w", m.Cache, err)
			return l
		case !fi.IsDir():
			l.cacheErr = fmt.Errorf("model cache %s: %s is not a directory", m.Cache, filepath.Join(m.Cache, sub))
			return l
		}
	}
	l.cache, l.cacheErr = cache.Open(m.Cache, cache.Options{})
	return l
}

// cached returns where model m is in the cache, verified, and its size on
// disk; ok is false when it is not there (or not verified).
func (l *lookup) cached(m schema.Model) (path string, size int64, ok bool, err error) {
	if l.cache == nil {
		return "", 0, false, l.cacheErr
	}
	if len(m.Files) > 0 {
		dir, verified, err := l.cache.LookupManifest(m.Manifest())
		if err != nil || !verified {
			return "", 0, false, err
		}
		for _, f := range m.Files {
			fi, err := os.Stat(filepath.Join(dir, filepath.FromSlash(f.Path)))
			if err != nil {
				return "", 0, false, fmt.Errorf("model cache: %w", err)
			}
			size += fi.Size()
		}
		return dir, size, true, nil
	}
	name := m.FileName()
	if name == "" || m.SHA256 == "" {
		return "", 0, false, nil
	}
	path, verified, err := l.cache.Lookup(m.SHA256, name)
	if err != nil || !verified {
		return "", 0, false, err
	}
	fi, err := os.Stat(path)
	if err != nil {
		return "", 0, false, fmt.Errorf("model cache: %w", err)
	}
	return path, fi.Size(), true, nil
}

func (l *lookup) needOf(ctx context.Context, p *schema.Pool) reconcile.Need {
	if p.Model.Source == "" {
		return needFrom(ctx, p)
	}
	path, _, ok, err := l.cached(p.Model)
	if ok {
		// Estimated from the cached copy, as from a local file.
		local := *p
		local.Model.Path = path
		return needFrom(ctx, &local)
	}
	var warnings []string
	if err != nil {
		warnings = append(warnings, fmt.Sprintf("the model cache cannot be read (%v): the model is taken as not cached", err))
	}
	if p.VRAM > 0 {
		need := needFrom(ctx, p) // declared: no file is read
		need.Warnings = warnings
		if l.Remote && !l.Offline && !p.Engine.Sharded() {
			if err := l.resolve(ctx, p, &need); err != nil {
				need.Warnings = append(need.Warnings, fmt.Sprintf("the source cannot be reached: %v", err))
			}
		}
		return need
	}
	need := reconcile.Need{Warnings: warnings}
	if p.Engine.Sharded() {
		// vram.For refuses a model directory without a declared vram, as for a local one.
		need = needFrom(ctx, p)
		need.Warnings = warnings
		return need
	}
	switch {
	case l.Offline:
		need.Deferred = "the model is not in the model cache (offline: its source is not asked)"
		return need
	case !l.Remote:
		need.Deferred = "the model is not in the model cache yet: checked before the engine starts, once it is fetched"
		return need
	}
	if err := l.resolve(ctx, p, &need); err != nil {
		need.Warnings = append(need.Warnings, fmt.Sprintf("the source cannot be reached: %v", err))
		need.Deferred = "the source could not be asked: checked before the engine starts, once the model is fetched"
		return need
	}
	est, err := l.estimateRemote(ctx, p)
	if err != nil {
		need.Warnings = append(need.Warnings, fmt.Sprintf("the VRAM need was not estimated from the source: %v", err))
		need.Deferred = "the source's GGUF header could not be read: checked before the engine starts, once the model is fetched"
		return need
	}
	need.PerGPU, need.Source = est.PerGPU, est.Source
	return need
}

// resolve asks the source of a single-file model for its size and digest
// (a HEAD request), for the plan's fetch line; a digest that differs from
// the declared one is a warning. The error is a source that does not answer.
func (l *lookup) resolve(ctx context.Context, p *schema.Pool, need *reconcile.Need) error {
	src, err := modelsource.Parse(p.Model.Source)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, l.timeout())
	defer cancel()
	f := fetch.New(nil, fetch.Options{Client: l.Client, Auth: l.Auth})
	r, err := f.Resolve(ctx, src.URL)
	if err != nil {
		return err
	}
	if r.Size > 0 {
		need.Bytes = r.Size
	}
	if r.SHA256 != "" && p.Model.SHA256 != "" && r.SHA256 != p.Model.SHA256 {
		need.Warnings = append(need.Warnings, fmt.Sprintf("the source's file has digest %s, the config says %s: the fetch will fail (%s)",
			r.SHA256, p.Model.SHA256, fetch.ClassDigestMismatch))
	}
	return nil
}

// estimateRemote estimates a llama.cpp model's need from the GGUF header at
// its source.
func (l *lookup) estimateRemote(ctx context.Context, p *schema.Pool) (vram.Estimate, error) {
	src, err := modelsource.Parse(p.Model.Source)
	if err != nil {
		return vram.Estimate{}, err
	}
	opts := []vram.Option{vram.RemoteTimeout(l.timeout())}
	if l.Client != nil {
		opts = append(opts, vram.RemoteClient(l.Client))
	}
	return vram.ForRemote(ctx, p, src.URL, l.Auth, opts...)
}

func (l *lookup) timeout() time.Duration {
	if l.Timeout > 0 {
		return l.Timeout
	}
	return vram.DefaultRemoteTimeout
}

// Models records which of the pools' fetched models are in the cache,
// verified: their size by digest. Nil when there is no cache to look in.
func (m ModelLookup) Models(pools map[string]*schema.Pool) (map[string]int64, error) {
	l := m.open()
	if l.cacheErr != nil {
		return nil, l.cacheErr
	}
	if m.Cache == "" {
		return nil, nil
	}
	out := map[string]int64{}
	if l.cache == nil {
		return out, nil
	}
	for _, p := range pools {
		if p.Model.Source == "" {
			continue
		}
		_, size, ok, err := l.cached(p.Model)
		if err != nil {
			return nil, err
		}
		if ok {
			out[p.Model.Digest()] = size
		}
	}
	return out, nil
}

// needFrom is a pool's need from its declared vram or its local model file.
func needFrom(ctx context.Context, p *schema.Pool) reconcile.Need {
	est, err := vram.For(ctx, p)
	if err != nil {
		return reconcile.Need{Err: err.Error()}
	}
	need := reconcile.Need{PerGPU: est.PerGPU, Source: est.Source}
	if p.Engine.Sharded() {
		need.Weights = weightsOf(p.Model)
	}
	return need
}
