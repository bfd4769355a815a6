package reconcile

import (
	"errors"
	"fmt"
	"strings"
	"time"
)

// ErrStale is returned when a saved plan no longer matches the states it was made from.
var ErrStale = errors.New("the plan is stale")

// CheckFresh refuses a plan whose desired or observed state changed since it was made.
func CheckFresh(p *NodePlan, desired Desired, observed Observed) error {
	var changed []string
	if DesiredHash(desired) != p.DesiredHash {
		changed = append(changed, "the config changed")
	}
	if ObservedHash(observed) != p.ObservedHash {
		changed = append(changed, "the node changed (engines or GPUs)")
	}
	if len(changed) > 0 {
		return fmt.Errorf("%w: %s since it was made at %s; make a new plan", ErrStale, strings.Join(changed, " and "), p.CreatedAt.Format(time.RFC3339))
	}
	return nil
}
