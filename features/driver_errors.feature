Feature: Driver errors: Xid events and lost GPUs
  A critical Xid error or a GPU that falls off the bus makes the pools on that GPU Unready at
  once; the daemon drains and stops their engines and starts them again after the driver-error
  backoff (twice the normal one). Pools on other GPUs are untouched. Application Xids (13, 31,
  43, 45, 68, 109) are the application's fault, not the GPU's, and are ignored.

  These scenarios run the daemon on a simulated RTX 3090 + RTX 3060 node with the bundled
  stand-in engine; `pool-managerd sim xid` raises an Xid through the simulated NVML.

  Background:
    Given a simulated node with an RTX 3090 (24 GiB) and an RTX 3060 (12 GiB)
    And a node "gpu-01" with GPUs of 24 GiB and 12 GiB
    And a model file "models/model.gguf"
    And the config file "pools/pools.cue":
      """
      pools: coder: {
      	node:    "gpu-01"
      	engine:  "llamacpp"
      	model: path: "WORKSPACE/models/model.gguf"
      	devices: [0]
      	vram:    4Gi
      	restart: {initialBackoff: "100ms", jitter: 0}
      }
      pools: chat: {
      	node:    "gpu-01"
      	engine:  "llamacpp"
      	model: path: "WORKSPACE/models/model.gguf"
      	devices: [1]
      	vram:    4Gi
      	restart: {initialBackoff: "100ms", jitter: 0}
      }
      """
    And the daemon is started
    And the daemon shows pool "coder" as Ready
    And the daemon shows pool "chat" as Ready

  @OC-POOL-3010 @PM-1031
  Scenario: A critical Xid restarts the pools on that GPU with the driver-error backoff, and no other
    When I note the engine pids
    And I run "pool-managerd sim xid SIMDIR --gpu 1 --xid 79"
    Then the daemon shows pool "chat" with 1 restart and a last error of class "driver_reset" with a message, a time and a hint
    And the daemon shows pool "chat" Ready with a new engine pid
    And the daemon has logged a warn event containing "reported Xid 79"
    And pool "coder" has the engine pid noted
    And the daemon shows pool "coder" with 0 restarts

  @OC-POOL-3010 @OC-POOL-3011
  Scenario: The driver-error backoff is twice the pool's normal one
    Given I save the config file "pools/pools.cue":
      """
      pools: coder: {
      	node:    "gpu-01"
      	engine:  "llamacpp"
      	model: path: "WORKSPACE/models/model.gguf"
      	devices: [0]
      	vram:    4Gi
      	restart: {initialBackoff: "100ms", jitter: 0}
      }
      pools: chat: {
      	node:    "gpu-01"
      	engine:  "llamacpp"
      	model: path: "WORKSPACE/models/model.gguf"
      	devices: [1]
      	vram:    4Gi
      	restart: {initialBackoff: "1h", maxBackoff: "4h", jitter: 0}
      }
      """
    And the daemon has logged an info event containing "config changed: pools/pools.cue"
    And the daemon shows pool "chat" as Ready
    When I run "pool-managerd sim xid SIMDIR --gpu 1 --xid 48"
    Then the daemon shows pool "chat" as Unready
    And the daemon shows pool "chat" with its next retry 2h0m0s after its last error
    And no engine process runs for pool "chat"

  @OC-POOL-3010
  Scenario Outline: An application Xid (<xid>) changes nothing
    When I note the engine pids
    And I run "pool-managerd sim xid SIMDIR --gpu 1 --xid <xid>"
    And I run "pool-managerd sim xid SIMDIR --gpu 0 --xid 79"
    Then the daemon shows pool "coder" with 1 restart and a last error of class "driver_reset" with a message, a time and a hint
    And the daemon shows pool "chat" with 0 restarts
    And pool "chat" has the engine pid noted
    And the metric pool_managerd_driver_events_total{gpu="0",xid="79"} is 1
    And the daemon never logged "Xid <xid>,"

    Examples:
      | xid |
      | 13  |
      | 43  |
