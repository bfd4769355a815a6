package reconcile

// Phase is where a pool is in its lifecycle.
type Phase string

// The phases of a pool.
//
//	Pending ──start──▶ Preloading ──health ok, placement ok──▶ Ready
//	   ▲                  │ exit, timeout, CUDA error,            │ exit, health
//	   │                  ▼ spillover, mask violation            ▼ failing
//	   └── backoff ◀── Unready ◀──────────────────────────────────┘
//	                     │ breaker opens
//	                     ▼
//	                   Failed (until the half-open try, a config change or reset)
//	Draining: between the decision to stop and the engine's exit.
const (
	Pending    Phase = "Pending"
	Preloading Phase = "Preloading"
	Ready      Phase = "Ready"
	Unready    Phase = "Unready"
	Draining   Phase = "Draining"
	Failed     Phase = "Failed"
	Stopped    Phase = "Stopped"
)
