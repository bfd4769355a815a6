Feature: One lifecycle decides a pool's phase and readiness, everywhere
  A router sends traffic to the pools the daemon reports ready, so "ready" must mean that
  the pool's engine serves and will go on serving: never while it is drained, stopped or
  replaced, in the API, the metrics or `pool-managerd status`. A crash loop that opened the
  circuit breaker gets one try per cool-down, and a try counts as a success only once its
  engine has stayed Ready for restart.resetAfter. How an engine ended (a signal, an exit
  code) is what the daemon reports, and a SIGKILL after the stop grace is said.

  These scenarios run the daemon on a simulated RTX 3090 + RTX 3060 node with the bundled
  stand-in engine (fake-engine) as llama-server; the stand-in's FAKE_ENGINE_* faults reach
  it through the pool's `env`. "The daemon is started" runs
  `pool-managerd serve --config CONFIG --gpus SIM --state-dir STATE --node gpu-01
  --listen 127.0.0.1:0 --debounce 50ms --log-format json --llama-server ENGINE`
  in the background. Every wait polls what the daemon reports, and has no upper bound but
  the steps' failure guard.

  Background:
    Given a simulated node with an RTX 3090 (24 GiB) and an RTX 3060 (12 GiB)
    And a node "gpu-01" with GPUs of 24 GiB and 12 GiB
    And a model file "models/model.gguf"

  @PM-1023 @PM-1040
  Scenario: A pool whose engine is being replaced is not ready anywhere until the new engine is Ready
    # The engine ignores SIGTERM, so its stop lasts the whole stopGrace and ends with a SIGKILL:
    # a window long enough to look at the API, the metrics and status while the old engine runs.
    Given the config file "pools/swap.cue":
      """
      pools: swap: {
      	node:    "gpu-01"
      	engine:  "llamacpp"
      	model: {path: "WORKSPACE/models/model.gguf", ctx: 4096}
      	devices: [1]
      	vram:    2Gi
      	env: {FAKE_ENGINE_LOAD_DELAY: "100ms", FAKE_ENGINE_IGNORE_SIGTERM: "1"}
      	restart: {stopGrace: "4s", drainTimeout: "1s"}
      }
      """
    And the daemon is started with "--resync 1h"
    And the daemon shows pool "swap" as Ready
    And the metric pool_managerd_pool_ready{pool="swap"} is 1
    When I note the engine pids
    And I save the config file "pools/swap.cue":
      """
      pools: swap: {
      	node:    "gpu-01"
      	engine:  "llamacpp"
      	model: {path: "WORKSPACE/models/model.gguf", ctx: 8192}
      	devices: [1]
      	vram:    2Gi
      	env: {FAKE_ENGINE_LOAD_DELAY: "100ms", FAKE_ENGINE_IGNORE_SIGTERM: "1"}
      	restart: {stopGrace: "4s", drainTimeout: "1s"}
      }
      """
    Then the daemon shows pool "swap" Draining, not ready, with the noted engine pid
    And while the noted engine of pool "swap" runs, the API, the metrics and status all show the pool Draining and not ready
    And the daemon has logged pool "swap" going Draining, then Preloading, as separate JSON events
    And the daemon shows pool "swap" Ready with a new engine pid
    And the engine of pool "swap" was started with "--ctx-size 8192"
    And the metric pool_managerd_pool_ready{pool="swap"} is 1
    And the daemon has logged the engine_killed warn event for the noted engine of pool "swap" with the grace 4s
    And the metric pool_managerd_engine_kills_total{pool="swap"} is 1

  @PM-1023 @OC-POOL-3011
  Scenario: A half-open try that dies right after Ready re-opens the breaker at once
    # Each engine dies 500ms after it is Ready: after the daemon recorded it Ready, long before
    # resetAfter. Two failures open the breaker; each cool-down then allows one try, whose death
    # re-opens the breaker with twice the cool-down. Starts are counted in the engine's log up
    # to the breaker's next half-open try, before which no start is allowed.
    Given the config file "pools/flaky.cue":
      """
      pools: flaky: {
      	node:    "gpu-01"
      	engine:  "llamacpp"
      	model: {path: "WORKSPACE/models/model.gguf", ctx: 4096}
      	devices: [1]
      	vram:    2Gi
      	env: {FAKE_ENGINE_LOAD_DELAY: "100ms", FAKE_ENGINE_EXIT_AFTER: "500ms"}
      	restart: {initialBackoff: "100ms", jitter: 0, resetAfter: "1m", breaker: {failures: 2, cooldown: "2s"}}
      }
      """
    When the daemon is started with "--resync 1h"
    Then the daemon shows pool "flaky" Failed with its breaker open for 2s after its last error, after 2 starts that each became Ready
    And the metric pool_managerd_circuit_state{pool="flaky"} is 1
    # The first cool-down: one try, Ready, dead: open again at once, for twice as long.
    And the daemon shows pool "flaky" Failed with its breaker open for 4s after its last error, after 3 starts that each became Ready
    And the metric pool_managerd_circuit_state{pool="flaky"} is 1
    # The second cool-down: one try again.
    And the daemon shows pool "flaky" Failed with its breaker open for 8s after its last error, after 4 starts that each became Ready
    And the metric pool_managerd_circuit_state{pool="flaky"} is 1

  @PM-1023 @OC-POOL-3003
  Scenario: An engine killed by a signal is classed signaled
    Given the config file "pools/victim.cue":
      """
      pools: victim: {
      	node:    "gpu-01"
      	engine:  "llamacpp"
      	model: {path: "WORKSPACE/models/model.gguf", ctx: 4096}
      	devices: [0]
      	vram:    2Gi
      	env: FAKE_ENGINE_LOAD_DELAY: "100ms"
      	restart: {initialBackoff: "100ms", jitter: 0}
      }
      """
    And the daemon is started with "--resync 1h"
    And the daemon shows pool "victim" as Ready
    When I note the engine pids
    And I kill the engine of pool "victim" with SIGKILL
    Then the daemon shows pool "victim" with 1 restart and a last error of class "signaled" with a message, a time and a hint
    And the daemon shows pool "victim" with a last error message containing "SIGKILL"
    And the daemon shows pool "victim" Ready with a new engine pid
    And the metric pool_managerd_restarts_total{pool="victim",reason="signaled"} is 1
