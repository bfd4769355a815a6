package vram

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"net/http"
	"net/url"
	"time"

	gguf "github.com/gpustack/gguf-parser-go"

	"github.com/poolmanagerd/pool-managerd/drivers/model/fetch"
	"github.com/poolmanagerd/pool-managerd/schema"
)

// Defaults of EstimateGGUFRemote.
const (
	// DefaultRemoteTimeout bounds a remote estimate as a whole: the library
	// sets no overall timeout of its own.
	DefaultRemoteTimeout = 30 * time.Second
	// DefaultRemoteBufferSize is the bytes each range request reads (the
	// library's default is 4 MiB).
	DefaultRemoteBufferSize = 1 << 20
)

// errNotGGUF is a remote file whose header is not a GGUF one.
var errNotGGUF = errors.New("not a GGUF file")

// remoteTries is how many times EstimateGGUFRemote reads a header that
// ends early (see there).
const remoteTries = 3

// RemoteTimeout bounds EstimateGGUFRemote (default DefaultRemoteTimeout).
func RemoteTimeout(d time.Duration) Option {
	return func(o *options) { o.remoteTimeout = d }
}

// RemoteBufferSize sets the bytes EstimateGGUFRemote reads per range request
// (default DefaultRemoteBufferSize; the library's minimum is 32 KiB).
func RemoteBufferSize(n int) Option {
	return func(o *options) { o.remoteBufferSize = n }
}

// RemoteClient sets the client EstimateGGUFRemote follows the source's
// redirects with (default: a plain client). The header itself is read by
// gguf-parser-go's own client.
func RemoteClient(c *http.Client) Option {
	return func(o *options) { o.remoteClient = c }
}

// ForRemote is For for a pool whose model is not on this machine but at
// rawURL (its model.source's URL): the declared `vram` when it has one,
// else, for a llama.cpp pool, the estimate from the GGUF header at rawURL
// (EstimateGGUFRemote, with auth), with the pool's context size, split and
// flash attention.
func ForRemote(ctx context.Context, pool *schema.Pool, rawURL string, auth fetch.Auth, opts ...Option) (Estimate, error) {
	split, declared, err := declaredNeed(pool)
	if err != nil || declared != nil {
		return *declared, err
	}
	opts = append([]Option{FlashAttention(flashAttention(pool))}, opts...)
	return EstimateGGUFRemote(ctx, rawURL, auth, pool.Model.Ctx, split, opts...)
}

// EstimateGGUFRemote is EstimateGGUF for a GGUF file at an HTTP(S) URL (a
// model source's full URL, e.g. a Hub resolve/COMMIT URL): it reads only the
// file's header, with range requests of a bounded size, so `plan` can check
// a model that is not on the machine.
//
// The token of auth goes only where fetch.TokenAllowed says, from rawURL.
// The source's redirects are followed first with HEAD requests (the Hub
// redirects to a CDN with a signed URL); gguf-parser-go then reads the
// final URL, with the token only when TokenAllowed allows it there (that is,
// no redirect changed the scheme, host or port). gguf-parser-go's bearer
// option sends the token on every request its own client makes, redirects
// included, and it takes no client of ours: a host the token is allowed to
// that answers the GETs with a redirect its HEAD did not show would still
// get it on the next hop. The whole estimate is bounded by RemoteTimeout. Sharded models (NAME-00001-of-0000N.gguf) are not estimated
// remotely. A source that cannot be reached is an error, which plan reports
// as a warning.
func EstimateGGUFRemote(ctx context.Context, rawURL string, auth fetch.Auth, ctxSize int, split []float64, opts ...Option) (Estimate, error) {
	o := options{flashAttention: true, remoteTimeout: DefaultRemoteTimeout, remoteBufferSize: DefaultRemoteBufferSize}
	for _, opt := range opts {
		opt(&o)
	}
	if ctxSize <= 0 || ctxSize > math.MaxInt32 {
		return Estimate{}, fmt.Errorf("context size %d: must be in 1..%d", ctxSize, math.MaxInt32)
	}
	cum, err := CumulativeSplit(split)
	if err != nil {
		return Estimate{}, err
	}
	if gguf.CompleteShardGGUFFilename(rawURL) != nil {
		return Estimate{}, fmt.Errorf("model %s is split into shards: its VRAM need is not estimated remotely (declare vram)", rawURL)
	}
	if o.remoteTimeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, o.remoteTimeout)
		defer cancel()
	}

	final, token, err := followRedirects(ctx, o.remoteClient, rawURL, auth)
	if err != nil {
		return Estimate{}, fmt.Errorf("model %s: %w", rawURL, err)
	}
	readOpts := []gguf.GGUFReadOption{
		gguf.SkipLargeMetadata(),
		gguf.SkipCache(),
		gguf.UseBufferSize(o.remoteBufferSize),
	}
	if token != "" {
		readOpts = append(readOpts, gguf.UseBearerAuth(token))
	}
	// gguf-parser-go's remote reader now and then misreads a header (an
	// io.EOF or a garbage length inside the metadata, about one read in
	// ten against a loopback test server): the header is read again, up
	// to remoteTries times in all, before the estimate fails. Each try
	// reads only the header's ranges.
	var gf *gguf.GGUFFile
	for try := 1; ; try++ {
		gf, err = parseRemote(ctx, final, readOpts)
		if err == nil || try == remoteTries || ctx.Err() != nil || errors.Is(err, errNotGGUF) {
			break
		}
	}
	if err != nil {
		if ctx.Err() != nil {
			return Estimate{}, fmt.Errorf("model %s: reading the GGUF header: %w", rawURL, ctx.Err())
		}
		return Estimate{}, fmt.Errorf("model %s: reading the GGUF header: %w", rawURL, err)
	}
	return estimateFile(gf, rawURL, ctxSize, split, cum, o)
}

// followRedirects follows rawURL's redirects with HEAD requests, each with
// the token when fetch.TokenAllowed allows it from rawURL. It returns the
// final URL and the token for it ("" when it may not have it).
func followRedirects(ctx context.Context, c *http.Client, rawURL string, auth fetch.Auth) (final, token string, err error) {
	var cc http.Client
	if c != nil {
		cc = *c
	}
	cc.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
	first, err := url.Parse(rawURL)
	if err != nil {
		return "", "", err
	}
	cur := first
	for hop := 0; hop <= 10; hop++ {
		req, err := http.NewRequestWithContext(ctx, http.MethodHead, cur.String(), nil)
		if err != nil {
			return "", "", err
		}
		req.Header.Set("Accept-Encoding", "identity")
		tok, err := auth.For(first, cur)
		if err != nil {
			return "", "", err
		}
		if tok != "" {
			req.Header.Set("Authorization", "Bearer "+tok)
		}
		resp, err := cc.Do(req)
		if err != nil {
			return "", "", fmt.Errorf("HEAD: %w", err)
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		switch {
		case resp.StatusCode >= 300 && resp.StatusCode < 400 && resp.Header.Get("Location") != "":
			next, err := cur.Parse(resp.Header.Get("Location"))
			if err != nil {
				return "", "", fmt.Errorf("bad redirect: %w", err)
			}
			cur = next
		case resp.StatusCode >= 400:
			return "", "", fmt.Errorf("HEAD: HTTP %d %s", resp.StatusCode, http.StatusText(resp.StatusCode))
		default:
			return cur.String(), tok, nil
		}
	}
	return "", "", errors.New("more than 10 redirects")
}

// parseRemote reads the header of the GGUF file at url, turning the
// library's panics into errors.
func parseRemote(ctx context.Context, url string, opts []gguf.GGUFReadOption) (gf *gguf.GGUFFile, err error) {
	defer func() {
		if r := recover(); r != nil {
			gf, err = nil, fmt.Errorf("not a valid GGUF file: %v", r)
		}
	}()
	gf, err = gguf.ParseGGUFFileRemote(ctx, url, opts...)
	if errors.Is(err, gguf.ErrGGUFFileInvalidFormat) {
		return nil, errNotGGUF
	}
	return gf, err
}
