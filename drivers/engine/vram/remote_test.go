package vram_test

import (
	"context"
	"net/http"
	"os"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	gguf "github.com/gpustack/gguf-parser-go"

	"github.com/poolmanagerd/pool-managerd/drivers/engine/vram"
	"github.com/poolmanagerd/pool-managerd/drivers/model/fetch"
	"github.com/poolmanagerd/pool-managerd/testkit/modelserver"
)

const remoteToken = "hf_remote_secret"

// tokenFor is the remote token, allowed to hosts.
func tokenFor(hosts ...string) fetch.Auth {
	return fetch.Auth{Token: fetch.StaticToken(remoteToken), Hosts: hosts}
}

// hostOf is the Host header a request to base (a server's URL) carries.
func hostOf(base string) string { return strings.TrimPrefix(base, "http://") }

func TestEstimateGGUFRemoteReadsOnlyTheHeader(t *testing.T) {
	const buf = 256 << 10
	local, err := gguf.ParseGGUFFile(model7B, gguf.SkipLargeMetadata())
	if err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(model7B)
	if err != nil {
		t.Fatal(err)
	}
	// The file is far bigger than a read: only its header may be read.
	if fi.Size() < 1000*buf {
		t.Fatalf("the test model is %d bytes: not well over the %d-byte chunks", fi.Size(), buf)
	}

	// The source redirects to another host (as the Hub does to its CDN):
	// the same server by the name localhost.
	srv := modelserver.Start(t, nil)
	const resolve, file = "/org/repo/resolve/c/model.gguf", "/model.gguf"
	if err := srv.PutFile(file, model7B); err != nil {
		t.Fatal(err)
	}
	srv.Redirect(resolve, srv.LocalhostURL()+file, nil)
	origin, cdn := hostOf(srv.URL), hostOf(srv.LocalhostURL())

	split := []float64{0.5, 0.5}
	// localhost is listed too: a redirect to another host drops the token
	// all the same.
	got, err := vram.EstimateGGUFRemote(context.Background(), srv.URL+resolve, tokenFor("127.0.0.1", "localhost"), 4096, split,
		vram.RemoteBufferSize(buf))
	if err != nil {
		t.Fatal(err)
	}
	want := estimate(t, model7B, 4096, split)
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("remote estimate differs from the local one (-local +remote):\n%s", diff)
	}

	gets := srv.GETsOf(file)
	t.Logf("requests %+v; header ends at %d", srv.Requests(), local.TensorDataStartOffset)
	if len(gets) == 0 {
		t.Fatal("no GET reached the file's host")
	}
	for _, r := range gets {
		if !strings.HasPrefix(r.Range, "bytes=") || r.Status != http.StatusPartialContent {
			t.Errorf("a GET of Range %q answered %d: the whole file was asked for", r.Range, r.Status)
		}
	}
	if limit := local.TensorDataStartOffset + buf; srv.EndOf(file) > limit {
		t.Errorf("bytes up to %d were read; the header ends at %d (+ one %d-byte chunk)", srv.EndOf(file), local.TensorDataStartOffset, buf)
	}
	// The token goes to the source's host only: the file is read from the
	// CDN host, which never sees it.
	var toOrigin int
	for _, r := range srv.Requests() {
		switch {
		case r.Host == cdn && r.Authorization != "":
			t.Errorf("the CDN host got Authorization %q on %s %s", r.Authorization, r.Method, r.Path)
		case r.Host == cdn:
		case r.Host != origin:
			t.Errorf("a request by host %q: neither the source's (%s) nor the CDN's (%s)", r.Host, origin, cdn)
		case r.Path != resolve:
			t.Errorf("the source host was asked for %s %s; want only the resolve URL, redirected", r.Method, r.Path)
		case r.Authorization != "Bearer "+remoteToken:
			t.Errorf("the source host got Authorization %q; want the token", r.Authorization)
		default:
			toOrigin++
		}
	}
	if toOrigin == 0 {
		t.Error("no request with the token reached the source host")
	}
}

func TestEstimateGGUFRemoteErrors(t *testing.T) {
	srv := modelserver.Start(t, nil) // every path answers 404
	for _, tc := range []struct {
		name, url, want string
	}{
		{"not found", srv.URL + "/m.gguf", "HTTP 404"},
		{"sharded", srv.URL + "/m-00001-of-00003.gguf", "shards"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := vram.EstimateGGUFRemote(context.Background(), tc.url, fetch.Auth{}, 4096, []float64{1})
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("EstimateGGUFRemote = %v; want an error with %q", err, tc.want)
			}
		})
	}
}

// TestEstimateGGUFRemoteToken: the HEADs and the header reads carry the
// token only to a listed host, and not after a redirect to another port.
func TestEstimateGGUFRemoteToken(t *testing.T) {
	for _, tc := range []struct {
		name string
		// hosts returns the token's hosts, given the file server's address.
		hosts func(addr string) []string
		// redirect: the source is another server on 127.0.0.1 that
		// redirects to the file's server (another port).
		redirect             bool
		originAuth, fileAuth string
	}{
		{name: "listed host", hosts: func(string) []string { return []string{"127.0.0.1"} }, fileAuth: "Bearer " + remoteToken},
		{name: "listed host and port", hosts: func(addr string) []string { return []string{addr} }, fileAuth: "Bearer " + remoteToken},
		{name: "unlisted host", hosts: func(string) []string { return []string{fetch.DefaultTokenHost} }},
		{name: "listed host, another port", hosts: func(string) []string { return []string{"127.0.0.1:1"} }},
		{name: "redirect to another port", hosts: func(string) []string { return []string{"127.0.0.1"} }, redirect: true, originAuth: "Bearer " + remoteToken},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srv := modelserver.Start(t, nil)
			if err := srv.PutFile("/model.gguf", modelTiny); err != nil {
				t.Fatal(err)
			}
			src := srv.URL + "/model.gguf"
			var origin *modelserver.Server
			if tc.redirect {
				origin = modelserver.Start(t, nil)
				origin.Redirect("/model.gguf", srv.URL+"/model.gguf", nil)
				src = origin.URL + "/model.gguf"
			}
			if _, err := vram.EstimateGGUFRemote(context.Background(), src, tokenFor(tc.hosts(hostOf(srv.URL))...), 2048, []float64{1}); err != nil {
				t.Fatal(err)
			}
			reqs := srv.Requests()
			if len(reqs) < 2 || len(srv.GETsOf("/model.gguf")) == 0 {
				t.Fatalf("requests %+v; want the redirect check and the header reads", reqs)
			}
			for i, r := range reqs {
				if r.Authorization != tc.fileAuth {
					t.Errorf("request %d (%s %s) to the file's server carried Authorization %q; want %q", i, r.Method, r.Path, r.Authorization, tc.fileAuth)
				}
			}
			if tc.redirect {
				if o := origin.Requests(); len(o) == 0 || o[0].Authorization != tc.originAuth {
					t.Errorf("the source got %+v; want its first request with Authorization %q", o, tc.originAuth)
				}
			}
		})
	}
}
