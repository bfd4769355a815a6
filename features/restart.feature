Feature: Restart, backoff and the circuit breaker
  Engines fail: they crash after Ready, or print a CUDA error and die while loading.
  pool-managerd classifies each failure, backs off before a restart (twice as long for CUDA
  and driver errors), and opens a circuit breaker on a restart storm, until a reset or a
  config change.

  These scenarios run on a simulated RTX 3090 + RTX 3060 node with the bundled stand-in
  engine (fake-engine) as llama-server; the stand-in's FAKE_ENGINE_* faults reach it
  through the pool's `env`. "I apply the config" runs
  `pool-managerd apply CONFIG --gpus SIM --state-dir STATE --node gpu-01 --llama-server ENGINE --auto-approve`
  where ENGINE is the stand-in engine's binary. No pool has a fixed port.

  Background:
    Given a simulated node with an RTX 3090 (24 GiB) and an RTX 3060 (12 GiB)
    And a node "gpu-01" with GPUs of 24 GiB and 12 GiB
    And a model file "models/model.gguf"

  @OC-POOL-3011
  Scenario: A crash loop opens the circuit breaker at its 3rd failure; a reset closes it
    Given the config file "pools/crash.cue":
      """
      pools: crash: {
      	node:    "gpu-01"
      	engine:  "llamacpp"
      	model: path: "WORKSPACE/models/model.gguf"
      	devices: [1]
      	vram:    2Gi
      	env: {FAKE_ENGINE_LOAD_DELAY: "100ms", FAKE_ENGINE_EXIT_AFTER: "400ms"}
      	restart: {initialBackoff: "100ms", jitter: 0, breaker: failures: 3}
      }
      """
    When I apply the config
    Then the exit status is 0
    And the engine of pool "crash" has exited
    When I apply the config again
    Then the exit status is 0
    And stdout matches "crash +Unready +engine pid \d+ exited after it was Ready"
    And apply waited about 100ms for the backoff of pool "crash"
    And stdout matches "crash +Ready +Ready: engine pid \d+"
    And the engine of pool "crash" has exited
    When I apply the config again
    Then the exit status is 0
    And apply waited about 200ms for the backoff of pool "crash"
    And the log of pool "crash" holds 3 starts
    And the engine of pool "crash" has exited
    When I apply the config again
    Then the exit status is 1
    And stdout contains "circuit open after 3 failures in 10 minutes; fix the config or run pool-managerd reset crash"
    And stdout contains "crash: Failed (circuit_open)"
    And the log of pool "crash" holds 3 starts
    When I apply the config again
    Then the exit status is 1
    And stdout contains "! blocked  crash"
    And stdout contains "hint: fix the config or run pool-managerd reset crash"
    And the log of pool "crash" holds 3 starts
    And no engine process runs for pool "crash"
    When I run "pool-managerd status --gpus SIM --state-dir STATE --node gpu-01 --format json"
    Then the JSON status of pool "crash" is Failed with no engine
    And the JSON status of pool "crash" has the breaker open
    When I run "pool-managerd status --gpus SIM --state-dir STATE --node gpu-01"
    Then the status table shows pool "crash" as Failed
    And stdout contains "the circuit breaker is open: fix the config or run pool-managerd reset crash"
    When I run "pool-managerd reset crash --state-dir STATE"
    Then the exit status is 0
    And stdout contains "Reset crash: breaker closed, backoff cleared."
    When I apply the config again
    Then the exit status is 0
    And stdout matches "crash +Ready +Ready: engine pid \d+"
    And the log of pool "crash" holds 4 starts

  @OC-POOL-3010
  Scenario Outline: An engine that dies after Ready is restarted after its backoff, doubled for a CUDA error
    Given the config file "pools/gpu.cue":
      """
      pools: gpu: {
      	node:    "gpu-01"
      	engine:  "llamacpp"
      	model: path: "WORKSPACE/models/model.gguf"
      	devices: [1]
      	vram:    2Gi
      	env: {FAKE_ENGINE_LOAD_DELAY: "100ms", <fault>: "400ms"}
      	restart: {initialBackoff: "300ms", jitter: 0}
      }
      """
    When I apply the config
    Then the exit status is 0
    And the engine of pool "gpu" has exited
    And the log of pool "gpu" contains "<log>"
    When I apply the config again
    Then the exit status is 0
    And stdout matches "gpu +Unready +engine pid \d+ <death>"
    And stdout contains "hint: <hint>"
    And apply waited about <backoff> for the backoff of pool "gpu"
    And stdout matches "gpu +Ready +Ready: engine pid \d+"
    And the log of pool "gpu" holds 2 starts

    Examples:
      | fault                        | log                       | death                                                 | hint                                         | backoff |
      | FAKE_ENGINE_EXIT_AFTER       | all slots are idle        | exited after it was Ready                             | read the end of the engine log for its error | 300ms   |
      | FAKE_ENGINE_CUDA_ERROR_AFTER | CUDA error: out of memory | died after it was Ready \(CUDA error: out of memory\) | check the engine log for the CUDA error      | 600ms   |

  @OC-POOL-3010 @OC-POOL-3003
  Scenario Outline: An engine that prints a CUDA error and dies while loading is classified cuda_error, with twice the backoff
    Given the config file "pools/gpu.cue":
      """
      pools: gpu: {
      	node:    "gpu-01"
      	engine:  "llamacpp"
      	model: path: "WORKSPACE/models/model.gguf"
      	devices: [1]
      	vram:    2Gi
      	env: {FAKE_ENGINE_LOAD_DELAY: "100ms", FAKE_ENGINE_UNHEALTHY_AFTER: "0s", <fault>: "200ms"}
      	restart: {initialBackoff: "10s", jitter: 0}
      }
      """
    When I apply the config
    Then the exit status is 1
    And stdout contains "gpu: Unready (<class>)"
    And no engine process runs for pool "gpu"
    When I run "pool-managerd status --gpus SIM --state-dir STATE --node gpu-01 --format json"
    Then the JSON status of pool "gpu" is Unready with no engine
    And the JSON status of pool "gpu" has a last error of class "<class>" with a message, a time and a hint
    And the JSON status of pool "gpu" has a last error message containing "<message>"
    And the JSON status of pool "gpu" has its next retry <backoff> after its last error

    Examples:
      | fault                        | class      | message                                             | backoff |
      | FAKE_ENGINE_EXIT_AFTER       | exited     | exited with status 1 while loading                  | 10s     |
      | FAKE_ENGINE_CUDA_ERROR_AFTER | cuda_error | while loading its model (CUDA error: out of memory) | 20s     |
