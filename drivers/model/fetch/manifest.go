package fetch

import (
	"context"
	"fmt"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/poolmanagerd/pool-managerd/drivers/model/cache"
	"github.com/poolmanagerd/pool-managerd/schema/modelsource"
)

// DirRequest is a model directory to fetch.
type DirRequest struct {
	// BaseURL is the directory's URL (modelsource.Source.URL of the pool's
	// source); file PATH is fetched from BaseURL + "/" + PATH (for the Hub,
	// https://huggingface.co/ORG/REPO/resolve/COMMIT[/SUBDIR]).
	BaseURL string
	// Manifest lists the files; its digest names the directory.
	Manifest modelsource.Manifest
	// Progress, when set, is called as bytes of any file arrive, with the
	// directory's totals.
	Progress func(Progress)
}

// FetchManifest returns the path of the model directory in the cache
// (DIR/sha256/MANIFESTDIGEST), fetching each file not already there and
// verified, one after the other, with the rules of Fetch. The directory is
// complete when FetchManifest returns it; the files that arrived stay when
// one fails, so a later call fetches only the rest.
func (f *Fetcher) FetchManifest(ctx context.Context, req DirRequest) (string, error) {
	m := req.Manifest
	if err := m.Validate(); err != nil {
		return "", fmt.Errorf("fetch %s: manifest: %w", req.BaseURL, err)
	}
	md := m.Digest()
	base := strings.TrimSuffix(req.BaseURL, "/")

	dp := &dirProgress{total: m.Size(), started: time.Now()}
	var missing int64
	for _, file := range m.Files {
		if _, ok, err := f.cache.LookupFile(md, file.Path, file.SHA256); err != nil {
			return "", err
		} else if ok {
			dp.finished += file.Size
		} else {
			missing += file.Size
		}
	}
	if missing > 0 && !f.opts.Offline {
		// Check the whole directory fits before fetching any of it.
		free, limited, err := f.cache.Free()
		if err != nil {
			return "", fmt.Errorf("fetch %s: %w", req.BaseURL, err)
		}
		if missing > free {
			return "", diskError(req.BaseURL, &cache.DiskError{Need: missing, Free: free, Limited: limited})
		}
	}
	f.mu.Lock()
	f.dirs[md] = dp
	f.mu.Unlock()
	defer func() {
		f.mu.Lock()
		delete(f.dirs, md)
		f.mu.Unlock()
	}()

	for _, file := range m.Files {
		u := base + "/" + escapePath(file.Path)
		fr := Request{URL: u, SHA256: file.SHA256, Size: file.Size}
		fr.Progress = func(p Progress) {
			dp.current(p)
			if req.Progress != nil {
				req.Progress(dp.snapshot())
			}
		}
		if _, err := f.fetchFile(ctx, target{entry: md, rel: file.Path}, fr); err != nil {
			return "", err
		}
		dp.finish(file.Size)
	}
	return f.cache.EntryDir(md), nil
}

func escapePath(p string) string {
	parts := strings.Split(p, "/")
	for i, s := range parts {
		parts[i] = url.PathEscape(s)
	}
	return strings.Join(parts, "/")
}

// dirProgress adds up the progress of a directory's files.
type dirProgress struct {
	mu       sync.Mutex
	total    int64
	finished int64 // bytes of the files done
	cur      Progress
	started  time.Time
	received int64
	lastDone int64
}

func (d *dirProgress) current(p Progress) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if p.Done > d.lastDone {
		d.received += p.Done - d.lastDone
	}
	d.lastDone = p.Done
	d.cur = p
}

func (d *dirProgress) finish(size int64) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.finished += size
	d.cur = Progress{}
	d.lastDone = 0
}

func (d *dirProgress) snapshot() Progress {
	d.mu.Lock()
	defer d.mu.Unlock()
	p := Progress{Done: d.finished + d.cur.Done, Total: d.total, Queued: d.cur.Queued}
	if s := time.Since(d.started).Seconds(); s > 0 {
		p.Rate = float64(d.received) / s
	}
	return p
}
