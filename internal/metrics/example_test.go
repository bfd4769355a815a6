package metrics_test

import (
	"bufio"
	"fmt"
	"log"
	"net/http"
	"net/http/httptest"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/poolmanagerd/pool-managerd/internal/metrics"
)

func Example() {
	// The daemon's own registry: nothing goes to the global one.
	reg := prometheus.NewRegistry()

	// The snapshot is read at each scrape; the daemon returns a copy of the
	// state it keeps under a lock.
	m, err := metrics.New(reg, func() metrics.Snapshot {
		return metrics.Snapshot{
			Pools: []metrics.PoolSnapshot{{Pool: "chat", Phase: "Ready", Ready: true}},
		}
	})
	if err != nil {
		log.Fatal(err)
	}

	// Events, as the daemon sees them happen.
	m.ConfigLoaded(time.Unix(1700000000, 0), nil)
	m.PreloadSucceeded("chat", "llamacpp", 42*time.Second)

	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg}))

	// A scrape.
	rec := httptest.NewRecorder()
	mux.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/metrics", nil))
	sc := bufio.NewScanner(rec.Body)
	for sc.Scan() {
		line := sc.Text()
		for _, name := range []string{"pool_ready", "pool_phase", "preload_total", "config_valid"} {
			if strings.HasPrefix(line, "pool_managerd_"+name+"{") || strings.HasPrefix(line, "pool_managerd_"+name+" ") {
				fmt.Println(line)
			}
		}
	}
	// Output:
	// pool_managerd_config_valid 1
	// pool_managerd_pool_phase{phase="Draining",pool="chat"} 0
	// pool_managerd_pool_phase{phase="Failed",pool="chat"} 0
	// pool_managerd_pool_phase{phase="Fetching",pool="chat"} 0
	// pool_managerd_pool_phase{phase="Pending",pool="chat"} 0
	// pool_managerd_pool_phase{phase="Preloading",pool="chat"} 0
	// pool_managerd_pool_phase{phase="Ready",pool="chat"} 1
	// pool_managerd_pool_phase{phase="Stopped",pool="chat"} 0
	// pool_managerd_pool_phase{phase="Unready",pool="chat"} 0
	// pool_managerd_pool_ready{pool="chat"} 1
	// pool_managerd_preload_total{engine="llamacpp",outcome="success",pool="chat",reason=""} 1
}
