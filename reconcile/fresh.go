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

// TakeSpecs gives each change of a saved plan its pool's spec from desired,
// the config reloaded after CheckFresh: a saved plan holds no env values
// (WriteJSON hides them), so the specs apply runs come from the config, which
// the desired-state hash has shown to be the one the plan was made from. A
// spec whose hash differs from the change's is refused as stale.
func (p *NodePlan) TakeSpecs(desired Desired) error {
	for i, c := range p.Changes {
		if c.Spec == nil {
			continue
		}
		spec, ok := desired.Pools[c.Pool]
		if !ok || SpecHash(spec) != c.SpecHash {
			return fmt.Errorf("%w: pool %s's spec in the config is not the one planned; make a new plan", ErrStale, c.Pool)
		}
		p.Changes[i].Spec = spec
	}
	return nil
}
