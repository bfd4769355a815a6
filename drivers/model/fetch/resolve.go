package fetch

import (
	"context"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"strings"

	"github.com/poolmanagerd/pool-managerd/schema/modelsource"
)

// Remote is what a source says about a file without sending it.
type Remote struct {
	// Size is the file's size in bytes, -1 when the source does not say.
	Size int64
	// SHA256 is the digest the source claims (the Hub's X-Linked-Etag for
	// LFS files, or an ETag that is a sha256), "" when it claims none.
	SHA256 string
	// AcceptRanges reports that the final response advertised byte ranges.
	AcceptRanges bool
}

// Resolve asks the source about url with HEAD requests, following redirects
// itself (with the token only where TokenAllowed says, from url): the Hub answers the
// resolve URL with a redirect carrying X-Linked-Size and X-Linked-Etag (the
// LFS file's size and sha256), which Resolve reads before following it. It is
// for plans: the size to show, and the digest to warn about when it is not
// the declared one. Errors are *Error (ClassHTTP, ClassNetwork).
func (f *Fetcher) Resolve(ctx context.Context, rawURL string) (Remote, error) {
	noFollow := *f.client
	noFollow.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
	first, err := url.Parse(rawURL)
	if err != nil {
		return Remote{}, fmt.Errorf("resolve %s: %w", rawURL, err)
	}
	r := Remote{Size: -1}
	cur := first
	for hop := 0; ; hop++ {
		if hop > 10 {
			return Remote{}, &Error{Class: ClassNetwork, Message: fmt.Sprintf("HEAD %s: more than 10 redirects", rawURL)}
		}
		req, err := f.newRequest(ctx, http.MethodHead, first, cur.String())
		if err != nil {
			return Remote{}, err
		}
		resp, err := noFollow.Do(req)
		if err != nil {
			if ctx.Err() != nil {
				return Remote{}, ctx.Err()
			}
			return Remote{}, &Error{Class: ClassNetwork, Message: fmt.Sprintf("HEAD %s: %v", rawURL, err), Temporary: true, Err: err}
		}
		resp.Body.Close()
		if r.SHA256 == "" {
			if d := etagDigest(resp.Header.Get("X-Linked-Etag")); d != "" {
				r.SHA256 = d
			}
		}
		if r.Size < 0 {
			if n, err := strconv.ParseInt(resp.Header.Get("X-Linked-Size"), 10, 64); err == nil && n >= 0 {
				r.Size = n
			}
		}
		switch {
		case resp.StatusCode >= 300 && resp.StatusCode < 400 && resp.Header.Get("Location") != "":
			next, err := cur.Parse(resp.Header.Get("Location"))
			if err != nil {
				return Remote{}, &Error{Class: ClassNetwork, Message: fmt.Sprintf("HEAD %s: bad redirect: %v", rawURL, err), Err: err}
			}
			cur = next
			continue
		case resp.StatusCode >= 400:
			e := httpError(rawURL, resp.StatusCode)
			e.Message = strings.Replace(e.Message, "GET", "HEAD", 1)
			return Remote{}, e
		}
		if r.Size < 0 && resp.ContentLength >= 0 {
			r.Size = resp.ContentLength
		}
		if r.SHA256 == "" {
			r.SHA256 = etagDigest(resp.Header.Get("ETag"))
		}
		r.AcceptRanges = strings.Contains(resp.Header.Get("Accept-Ranges"), "bytes")
		return r, nil
	}
}

// etagDigest returns the sha256 an ETag holds ("…" or W/"…"), "" if none.
func etagDigest(etag string) string {
	etag = strings.TrimPrefix(strings.TrimSpace(etag), "W/")
	etag = strings.ToLower(strings.Trim(etag, `"`))
	if modelsource.IsDigest(etag) {
		return etag
	}
	return ""
}
