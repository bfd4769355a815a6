Feature: Engine processes: supervised, logged, stopped
  Engines are real processes, started without a shell in a session of their own, with one log
  per pool kept across restarts, and stopped with drain, SIGTERM, a grace period and SIGKILL.

  These scenarios run on a simulated RTX 3090 + RTX 3060 node with the bundled stand-in
  engine (fake-engine) as llama-server; the stand-in's FAKE_ENGINE_* faults reach it
  through the pool's `env`. "I apply the config" runs
  `pool-managerd apply CONFIG --gpus SIM --state-dir STATE --node gpu-01 --llama-server ENGINE --auto-approve`
  where ENGINE is the stand-in engine's binary. No pool has a fixed port.

  Background:
    Given a simulated node with an RTX 3090 (24 GiB) and an RTX 3060 (12 GiB)
    And a node "gpu-01" with GPUs of 24 GiB and 12 GiB
    And a model file "models/model.gguf"

  @PM-1040
  Scenario: Engines run without a shell, in a session of their own, and keep one log across restarts
    Given the config file "pools/a.cue":
      """
      pools: a: {
      	node:    "gpu-01"
      	engine:  "llamacpp"
      	model: path: "WORKSPACE/models/model.gguf"
      	devices: [1]
      	vram:    2Gi
      	env: FAKE_ENGINE_LOAD_DELAY: "100ms"
      }
      """
    When I apply the config
    Then the exit status is 0
    And the engine of pool "a" runs the stand-in engine's binary without a shell, in a session of its own
    When I run "pool-managerd stop a --state-dir STATE"
    Then the exit status is 0
    And stdout matches "Stopping a \(pid \d+\)\.\.\."
    And stdout contains "Stopped 1 engine."
    And no engine process runs for pool "a"
    When I apply the config again
    Then the exit status is 0
    And 1 engine process runs for pool "a"
    And the log of pool "a" holds 2 starts
    And in the log of pool "a", "cleaning up before exit" comes before start 2

  @PM-1040
  Scenario: stop drains the busy slots before SIGTERM, for at most restart.drainTimeout
    Given the config file "pools/busy.cue":
      """
      pools: busy: {
      	node:    "gpu-01"
      	engine:  "llamacpp"
      	model: path: "WORKSPACE/models/model.gguf"
      	devices: [1]
      	vram:    2Gi
      	env: {FAKE_ENGINE_LOAD_DELAY: "100ms", FAKE_ENGINE_BUSY_SLOTS: "1", FAKE_ENGINE_BUSY_FOR: "forever"}
      	restart: {drainTimeout: "400ms", stopGrace: "10s"}
      }
      """
    # The slot stays busy for ever, so the drain can only end by giving up after drainTimeout; then
    # the engine must end on SIGTERM, which its log and the GPU memory it gave back itself show.
    When I apply the config
    And I note the engine pids
    And I run "pool-managerd stop busy --state-dir STATE"
    Then the exit status is 0
    And stdout contains "Stopped 1 engine."
    And the command took at least 400ms
    And no engine process runs for pool "busy"
    And the engine of pool "busy" exited on SIGTERM, with no SIGKILL

  @PM-1040
  Scenario: An engine that ignores SIGTERM is killed after restart.stopGrace
    Given the config file "pools/stubborn.cue":
      """
      pools: stubborn: {
      	node:    "gpu-01"
      	engine:  "llamacpp"
      	model: path: "WORKSPACE/models/model.gguf"
      	devices: [1]
      	vram:    2Gi
      	env: {FAKE_ENGINE_LOAD_DELAY: "100ms", FAKE_ENGINE_IGNORE_SIGTERM: "1"}
      	restart: stopGrace: "400ms"
      }
      """
    When I apply the config
    And I note the engine pids
    And I run "pool-managerd stop stubborn --state-dir STATE"
    Then the exit status is 0
    And stdout contains "Stopped 1 engine."
    And the command took at least 400ms
    And no engine process runs for pool "stubborn"
    And the log of pool "stubborn" contains "fake-engine: SIGTERM ignored (FAKE_ENGINE_IGNORE_SIGTERM=1)"
    And the engine of pool "stubborn" was killed with SIGKILL
