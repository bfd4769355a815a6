package api_test

import (
	"context"
	"fmt"
	"net/http/httptest"
	"strings"

	"github.com/poolmanagerd/pool-managerd/internal/api"
	"github.com/poolmanagerd/pool-managerd/reconcile"
)

// oneTimeSource is a Source with one pool whose breaker is open.
type oneTimeSource struct{ breaker string }

func (s *oneTimeSource) Ready() bool { return true }
func (s *oneTimeSource) Pools() []api.Pool {
	return []api.Pool{{Pool: "big", Phase: reconcile.Failed, Breaker: s.breaker}}
}
func (s *oneTimeSource) Pool(id string) (api.Pool, bool) {
	if id != "big" {
		return api.Pool{}, false
	}
	return s.Pools()[0], true
}
func (s *oneTimeSource) Config() api.Config { return api.Config{Valid: true} }
func (s *oneTimeSource) Reset(context.Context, []string) error {
	s.breaker = api.BreakerClosed
	return nil
}
func (s *oneTimeSource) Stop(context.Context, []string, bool) error { return nil }

// The daemon serves NewHandler; the CLI's reset goes through a Client.
func Example() {
	srv := httptest.NewServer(api.NewHandler(&oneTimeSource{breaker: api.BreakerOpen}, nil, "token"))
	defer srv.Close()
	c := api.NewClient(strings.TrimPrefix(srv.URL, "http://"), "token")
	ctx := context.Background()

	pools, _ := c.Reset(ctx, []string{"big"})
	fmt.Println(pools[0].Pool, pools[0].Breaker)

	_, err := c.Reset(ctx, []string{"small"})
	fmt.Println(err)

	_, err = api.NewClient(strings.TrimPrefix(srv.URL, "http://"), "").Pools(ctx)
	fmt.Println(err)
	// Output:
	// big closed
	// unknown pool "small" (known: big)
	// missing bearer token: send Authorization: Bearer followed by the daemon's POOL_MANAGERD_TOKEN
}

func ExampleCheckListen() {
	fmt.Println(api.CheckListen("127.0.0.1:0", ""))
	fmt.Println(api.CheckListen("0.0.0.0:9200", ""))
	fmt.Println(api.CheckListen("0.0.0.0:9200", "a-long-random-token"))
	// Output:
	// <nil>
	// refusing to serve the API on 0.0.0.0:9200 without a bearer token: 0.0.0.0 listens on every interface; set POOL_MANAGERD_TOKEN, or listen on 127.0.0.1: a bearer token is required
	// <nil>
}
