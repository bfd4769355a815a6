package executor

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/poolmanagerd/pool-managerd/drivers/model/cache"
	"github.com/poolmanagerd/pool-managerd/drivers/model/fetch"
	"github.com/poolmanagerd/pool-managerd/reconcile"
	"github.com/poolmanagerd/pool-managerd/reconcile/restart"
	"github.com/poolmanagerd/pool-managerd/schema"
	"github.com/poolmanagerd/pool-managerd/schema/modelsource"
)

// Models gets the model of a pool with a model.source into the node's model
// cache before its engine is spawned.
type Models interface {
	// Ensure returns the local path of the pool's model (a file, or a model
	// directory, in the cache), fetching it first unless the cache holds it
	// verified. progress is called as a download's bytes arrive, only while
	// one runs: a model already cached reports nothing. A failed fetch is a
	// *fetch.Error (its Class is a restart class: FetchFailure).
	Ensure(ctx context.Context, pool *schema.Pool, progress func(reconcile.Fetch)) (string, error)
}

// CacheDigest is the name of a fetched model's entry in the model cache
// (CACHE/sha256/DIGEST): schema.Model.Digest, a file model's sha256 or a
// model directory's manifest digest. "" for a model without a source.
func CacheDigest(m schema.Model) string {
	if m.Source == "" {
		return ""
	}
	return m.Digest()
}

// FetchedModels is Models over a fetcher: downloads into its cache, one
// per digest however many pools want it.
type FetchedModels struct {
	Fetcher *fetch.Fetcher
	// Received, when set, is told the bytes each download receives, as they
	// arrive (bytes resumed from a partial file are not counted again).
	Received func(n int64)
	// Finished, when set, is told how each download ended: its duration,
	// and the failure class ("" when it succeeded). A model found in the
	// cache, and a download given up because every pool that waited for it
	// was cancelled, are not downloads that ended.
	Finished func(took time.Duration, class string)

	mu   sync.Mutex
	runs map[string]*fetchRun
}

// fetchRun is the download of one cache entry, as the pools that wait on it
// see it.
type fetchRun struct {
	since   time.Time
	waiters int
	// started: a progress report came, so a download runs (the model was
	// not in the cache).
	started bool
	// base is the first report's Done (bytes resumed, not received now);
	// done the last Done counted.
	based    bool
	done     int64
	recorded bool
}

// Ensure implements Models.
func (m *FetchedModels) Ensure(ctx context.Context, pool *schema.Pool, progress func(reconcile.Fetch)) (string, error) {
	model := pool.Model
	if model.Source == "" {
		return model.Path, nil
	}
	digest := CacheDigest(model)
	run := m.join(digest)
	defer m.leave(digest)
	report := func(p fetch.Progress) {
		f := m.observe(run, p)
		if progress != nil {
			progress(f)
		}
	}
	var path string
	src, err := modelsource.Parse(model.Source)
	if err != nil {
		m.finish(run, err, false)
		return "", err
	}
	if len(model.Files) > 0 {
		path, err = m.Fetcher.FetchManifest(ctx, fetch.DirRequest{BaseURL: src.URL, Manifest: model.Manifest(), Progress: report})
	} else {
		path, err = m.Fetcher.Fetch(ctx, fetch.Request{URL: src.URL, FileName: src.File, SHA256: model.SHA256, Progress: report})
	}
	m.finish(run, err, ctx.Err() != nil)
	return path, err
}

func (m *FetchedModels) join(digest string) *fetchRun {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.runs == nil {
		m.runs = map[string]*fetchRun{}
	}
	r := m.runs[digest]
	if r == nil {
		r = &fetchRun{since: time.Now()}
		m.runs[digest] = r
	}
	r.waiters++
	return r
}

func (m *FetchedModels) leave(digest string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if r := m.runs[digest]; r != nil {
		r.waiters--
		if r.waiters == 0 {
			delete(m.runs, digest)
		}
	}
}

// observe counts a report's new bytes once (every waiter hears every
// report of a shared download) and returns it as the lifecycle's Fetch.
func (m *FetchedModels) observe(r *fetchRun, p fetch.Progress) reconcile.Fetch {
	m.mu.Lock()
	r.started = true
	var n int64
	switch {
	case p.Queued:
	case !r.based:
		r.based, r.done = true, p.Done
	case p.Done > r.done:
		n, r.done = p.Done-r.done, p.Done
	}
	f := reconcile.Fetch{Done: p.Done, Total: p.Total, BytesPerSecond: p.Rate, Since: r.since}
	m.mu.Unlock()
	if n > 0 && m.Received != nil {
		m.Received(n)
	}
	return f
}

// finish records how the download ended, once per run: a download that ran,
// or a fetch that failed with a class (offline, not cached). A waiter that
// was cancelled records nothing.
func (m *FetchedModels) finish(r *fetchRun, err error, cancelled bool) {
	class := fetch.ClassOf(err)
	m.mu.Lock()
	record := !r.recorded && !cancelled && (r.started || class != "")
	if record {
		r.recorded = true
	}
	took := time.Since(r.since)
	m.mu.Unlock()
	if record && m.Finished != nil {
		if err != nil && class == "" {
			class = "fetch_error"
		}
		m.Finished(took, class)
	}
}

// FetchFailure is the failure of a pool whose model could not be fetched:
// the fetch's class, message and hint.
func FetchFailure(err error) restart.Failure {
	var fe *fetch.Error
	if errors.As(err, &fe) {
		return restart.Failure{Class: fe.Class, Message: fe.Message, Hint: fe.Hint}
	}
	return restart.Failure{Class: restart.ClassFetchNetwork, Message: "fetch the model: " + err.Error()}
}

// CacheUsage is what a model cache holds, as status shows it.
type CacheUsage struct {
	// Dir is the cache's root.
	Dir string `json:"dir"`
	// Bytes is the bytes of its models and partial downloads.
	Bytes int64 `json:"bytes"`
	// Models counts its entries (a model file or directory each).
	Models int `json:"models"`
	// PartialDownloads counts the downloads not finished (running, or left
	// by a stopped one to resume); their bytes are in Bytes.
	PartialDownloads int `json:"partialDownloads,omitempty"`
}

// UsageOf reads what the model cache c holds.
func UsageOf(c *cache.Cache) (CacheUsage, error) {
	u := CacheUsage{Dir: c.Root()}
	size, err := c.Size()
	if err != nil {
		return u, fmt.Errorf("model cache %s: %w", c.Root(), err)
	}
	u.Bytes = size
	entries, err := os.ReadDir(filepath.Join(c.Root(), "sha256"))
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return u, fmt.Errorf("model cache %s: %w", c.Root(), err)
	}
	for _, e := range entries {
		if e.IsDir() {
			u.Models++
		}
	}
	partials, err := os.ReadDir(filepath.Join(c.Root(), "tmp"))
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return u, fmt.Errorf("model cache %s: %w", c.Root(), err)
	}
	for _, e := range partials {
		if strings.HasSuffix(e.Name(), cache.PartialSuffix) {
			u.PartialDownloads++
		}
	}
	return u, nil
}
