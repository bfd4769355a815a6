package reconcile

import (
	"time"

	"github.com/poolmanagerd/pool-managerd/schema"
)

// DefaultRestartPolicy is the schema's default restart policy, for records
// that lack their spec.
func DefaultRestartPolicy() schema.RestartPolicy {
	return schema.RestartPolicy{
		InitialBackoff: time.Second, MaxBackoff: time.Minute, Jitter: 0.1, ResetAfter: 5 * time.Minute,
		StartupTimeout: 10 * time.Minute, DrainTimeout: 30 * time.Second, StopGrace: 10 * time.Second,
		Breaker: schema.Breaker{Failures: 5, Window: 10 * time.Minute, Cooldown: 5 * time.Minute},
	}
}
