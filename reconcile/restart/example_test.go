package restart_test

import (
	"fmt"
	"time"

	"github.com/poolmanagerd/pool-managerd/reconcile/restart"
	"github.com/poolmanagerd/pool-managerd/schema"
)

// A crash loop under the default policy: the engine dies two seconds after
// each start. The backoff doubles until the fifth failure within ten
// minutes opens the breaker; after the cool-down there is one try.
func Example() {
	policy := schema.RestartPolicy{
		InitialBackoff: time.Second, MaxBackoff: time.Minute, Jitter: 0.1, ResetAfter: 5 * time.Minute,
		Breaker: schema.Breaker{Failures: 5, Window: 10 * time.Minute, Cooldown: 5 * time.Minute},
	}
	tr := restart.New(policy, func() float64 { return 0.5 }) // 0.5: no jitter, for a stable output
	now := time.Date(2026, 3, 4, 5, 0, 0, 0, time.UTC)
	for range 13 {
		d := tr.Decide(now)
		fmt.Printf("%s  %v\n", now.Format("15:04:05"), d)
		switch d.Action {
		case restart.Start:
			tr.Started(now)
			now = now.Add(2 * time.Second)
			tr.Failed(now, restart.Failure{Class: restart.ClassExited, ExitCode: 1})
		case restart.Wait, restart.Blocked:
			now = d.At
		}
	}
	fmt.Println(tr.Message("big", now))
	// Output:
	// 05:00:00  start (first_start, attempt 1)
	// 05:00:02  wait 1s (backoff, attempt 2)
	// 05:00:03  start (backoff_elapsed, attempt 2)
	// 05:00:05  wait 2s (backoff, attempt 3)
	// 05:00:07  start (backoff_elapsed, attempt 3)
	// 05:00:09  wait 4s (backoff, attempt 4)
	// 05:00:13  start (backoff_elapsed, attempt 4)
	// 05:00:15  wait 8s (backoff, attempt 5)
	// 05:00:23  start (backoff_elapsed, attempt 5)
	// 05:00:25  blocked 5m0s (breaker_open, attempt 6)
	// 05:05:25  start (half_open, attempt 6)
	// 05:05:27  blocked 10m0s (breaker_open, attempt 7)
	// 05:15:27  start (half_open, attempt 7)
	// circuit re-opened: the half-open try failed (engine exited with code 1); next try in 20 minutes; fix the config or run pool-managerd reset big
}

func ExampleHint() {
	fmt.Println(restart.Hint(restart.ClassInsufficientVRAM))
	// Output:
	// lower ctx, move the split toward the larger GPU, or pick a smaller quantisation
}
