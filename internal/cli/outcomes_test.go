package cli

import (
	"strings"
	"testing"

	"github.com/poolmanagerd/pool-managerd/internal/executor"
	"github.com/poolmanagerd/pool-managerd/reconcile"
	"github.com/poolmanagerd/pool-managerd/reconcile/restart"
)

// A replace that failed before it stopped its engine (its new model could
// not be fetched) is counted failed, not Ready, and said to serve its old
// spec; apply fails.
func TestWriteOutcomesCountsAKeptEngineFailed(t *testing.T) {
	res := executor.Result{Outcomes: []executor.Outcome{
		{Pool: "chat", Action: reconcile.Replace, Phase: reconcile.Ready, KeptRunning: true,
			Failure: &restart.Failure{Class: restart.ClassFetchHTTP, Message: "GET https://models.example/m.gguf: HTTP 404 Not Found"}},
		{Pool: "code", Action: reconcile.Create, Phase: reconcile.Ready, PID: 42},
	}}
	var out strings.Builder
	writeOutcomes(&out, res)
	for _, want := range []string{
		"Apply done: 1 Ready, 1 failed or blocked, 0 stopped.",
		"chat: Ready on its old spec, not replaced (fetch_http): GET https://models.example/m.gguf: HTTP 404 Not Found",
	} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("the outcomes lack %q:\n%s", want, out.String())
		}
	}
	if !res.Failed() {
		t.Error("Result.Failed() is false with a replace that failed")
	}
}
