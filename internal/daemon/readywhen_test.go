package daemon_test

import (
	"slices"
	"strings"
	"testing"

	"github.com/poolmanagerd/pool-managerd/internal/api"
	"github.com/poolmanagerd/pool-managerd/internal/daemon"
	"github.com/poolmanagerd/pool-managerd/reconcile"
)

// TestReadyWhenPools: with ReadyPools the daemon is not ready, and sends no
// READY=1, while a pool preloads; a pool given up (its breaker open) does
// not hold it back; once the last pool is
// Ready it becomes ready, once.
func TestReadyWhenPools(t *testing.T) {
	t.Parallel()
	n := newNode(t, 2)
	ok := pool{id: "ok"}
	slow := pool{id: "slow", devices: []int{1}, env: longLoad}
	broken := pool{id: "broken", devices: []int{1}, env: failLoad, restart: fastRestart + `, breaker: {failures: 1}`}
	n.writeConfig(ok, slow, broken)
	r := n.start(func(o *daemon.Options) { o.ReadyWhen = daemon.ReadyPools })

	r.waitReady("ok")
	r.waitPreloading("slow")
	r.waitPool("broken", "breaker open", func(p api.Pool) bool { return p.Phase == reconcile.Failed })
	r.waitFor("a STATUS that waits for slow alone", func() bool {
		return slices.ContainsFunc(r.notified(), func(s string) bool { return strings.HasSuffix(s, "; starting, waiting for slow") })
	})
	if r.d.Ready() {
		t.Error("Ready() true while pool slow preloads")
	}
	if got := notifiedReady(r.notified()); got != 0 {
		t.Errorf("READY=1 notified %d times while pool slow preloads (notices: %q)", got, r.notified())
	}

	// slow loads quickly with its new spec: the daemon becomes ready.
	slow.env = nil
	n.writeConfig(ok, slow, broken)
	r.waitReady("slow")
	r.waitFor("Ready()", r.d.Ready)
	r.waitFor("READY=1", func() bool { return notifiedReady(r.notified()) == 1 })
	r.settle()
	if got := notifiedReady(r.notified()); got != 1 {
		t.Errorf("READY=1 notified %d times, want once (notices: %q)", got, r.notified())
	}
}

// TestReadyWhenStarted: by default the daemon is ready after the first
// reconcile, while a pool still preloads.
func TestReadyWhenStarted(t *testing.T) {
	t.Parallel()
	n := newNode(t, 1)
	n.writeConfig(pool{id: "slow", env: longLoad})
	r := n.start()
	r.waitPreloading("slow")
	r.waitFor("Ready()", r.d.Ready)
	r.waitFor("READY=1", func() bool { return notifiedReady(r.notified()) == 1 })
}

func TestParseReadyWhen(t *testing.T) {
	for _, tc := range []struct {
		in      string
		want    daemon.ReadyWhen
		wantErr bool
	}{
		{"started", daemon.ReadyStarted, false},
		{"pools", daemon.ReadyPools, false},
		{"", "", true},
		{"Pools", "", true},
		{"all", "", true},
	} {
		got, err := daemon.ParseReadyWhen(tc.in)
		if got != tc.want || (err != nil) != tc.wantErr {
			t.Errorf("ParseReadyWhen(%q) = %q, %v; want %q, error %v", tc.in, got, err, tc.want, tc.wantErr)
		}
	}
}
