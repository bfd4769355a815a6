package metrics

import "github.com/prometheus/client_golang/prometheus"

// NewBuildInfo returns the collector of pool_managerd_build_info, always 1,
// with the version of pool-managerd, the Go version it was built with and
// the commit it was built from (empty when the build did not record one)
// as labels; register it beside [New]'s metrics. A dashboard shows which
// build runs on each node, and an alert can join on it.
func NewBuildInfo(version, goVersion, revision string) prometheus.Collector {
	return prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Namespace: Namespace,
		Name:      "build_info",
		Help:      "The build of pool-managerd that runs: always 1, with its version, the Go version it was built with and the commit it was built from (empty when unknown) as labels.",
		ConstLabels: prometheus.Labels{
			"version": version, "goversion": goVersion, "revision": revision,
		},
	}, func() float64 { return 1 })
}
