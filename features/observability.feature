Feature: Observability: Prometheus metrics and structured log events
  Dashboards and alerts watch readiness, VRAM and restarts. The daemon serves its metrics at
  /metrics (prefix pool_managerd_) and logs one event per transition with go-hclog; with
  --log-format json every line is one JSON object with the pool and its phase.

  These scenarios run the daemon on a simulated RTX 3090 + RTX 3060 node with the bundled
  stand-in engine, as in daemon.feature.

  Background:
    Given a simulated node with an RTX 3090 (24 GiB) and an RTX 3060 (12 GiB)
    And a node "gpu-01" with GPUs of 24 GiB and 12 GiB
    And a model file "models/model.gguf"
    And the config file "pools/coder.cue":
      """
      pools: coder: {
      	node:    "gpu-01"
      	engine:  "llamacpp"
      	model: {path: "WORKSPACE/models/model.gguf", ctx: 4096}
      	devices: [0]
      	vram:    4Gi
      	restart: {initialBackoff: "100ms", jitter: 0}
      }
      """
    And the config file "pools/chat.cue":
      """
      pools: chat: {
      	node:    "gpu-01"
      	engine:  "llamacpp"
      	model: {path: "WORKSPACE/models/model.gguf", ctx: 4096}
      	devices: [1]
      	vram:    4Gi
      	restart: {initialBackoff: "100ms", jitter: 0}
      }
      """

  @OC-POOL-3030
  Scenario: Preload outcomes, readiness, phases, GPU and host memory are metrics
    Given the daemon is started
    Then the daemon shows pool "coder" as Ready
    And the daemon shows pool "chat" as Ready
    And the metric pool_managerd_preload_total{pool="coder",engine="llamacpp",outcome="success"} is 1
    And the metric pool_managerd_preload_duration_seconds{pool="coder"} is 1
    And the metric pool_managerd_pool_ready{pool="coder"} is 1
    And the metric pool_managerd_pool_phase{pool="coder",phase="Ready"} is 1
    And the metric pool_managerd_pool_phase{pool="coder",phase="Preloading"} is 0
    And the metric pool_managerd_circuit_state{pool="coder"} is 0
    And the metric pool_managerd_backoff_seconds{pool="coder"} is 0
    And the metric pool_managerd_gpu_memory_total_bytes{gpu="0"} is 25769803776
    And the metric pool_managerd_gpu_memory_total_bytes{gpu="1"} is 12884901888
    And the metric pool_managerd_gpu_memory_used_bytes{gpu="0"} is above 4294967295
    And the metric pool_managerd_host_memory_total_bytes is above 0
    And the metric pool_managerd_host_memory_available_bytes is above 0
    And the metric pool_managerd_reconcile_duration_seconds is above 0
    And the metric pool_managerd_config_valid is 1
    And the metric pool_managerd_config_last_load_timestamp_seconds is above 0

  @OC-POOL-3030
  Scenario: Each transition of a pool is one structured log event
    Given the daemon is started
    Then the daemon shows pool "coder" as Ready
    And the daemon has logged pool "coder" going Preloading, then Ready, as separate JSON events
    And the daemon has logged an info event containing "first reconcile done"

  @OC-POOL-3030 @OC-POOL-3001
  Scenario: A failed preload is counted with its reason, logged with its class and hint, and backs off
    Given the config file "pools/broken.cue":
      """
      pools: broken: {
      	node:    "gpu-01"
      	engine:  "llamacpp"
      	model: path: "WORKSPACE/models/model.gguf"
      	devices: [1]
      	vram:    2Gi
      	share:   true
      	env: FAKE_ENGINE_FAIL_LOAD: "1"
      	restart: {initialBackoff: "1h", maxBackoff: "1h", jitter: 0}
      }
      pools: chat: share: true
      """
    When the daemon is started
    Then the daemon shows pool "broken" as Unready
    And the metric pool_managerd_preload_total{pool="broken",outcome="failure",reason="exited"} is 1
    And the metric pool_managerd_pool_ready{pool="broken"} is 0
    And the metric pool_managerd_backoff_seconds{pool="broken"} is above 3000
    And the daemon has logged a warn event containing "while loading its model"
    And the daemon has logged a warn event containing "hint"

  @OC-POOL-3030 @OC-POOL-3010
  Scenario: A driver Xid and the restart it causes are counted and logged with the GPU and the Xid
    Given the daemon is started
    And the daemon shows pool "chat" as Ready
    When I run "pool-managerd sim xid SIMDIR --gpu 1 --xid 79"
    Then the metric pool_managerd_driver_events_total{gpu="1",xid="79"} is 1
    And the metric pool_managerd_restarts_total{pool="chat",reason="driver_reset"} is 1
    And the daemon has logged a warn event containing "GPU driver event: Xid 79"
    And the daemon has logged a warn event containing "gpu":1"
