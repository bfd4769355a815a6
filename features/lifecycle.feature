Feature: Supervising engines: failures, backoff, the circuit breaker, GPU masks and stops
  Engines fail: they crash, hit CUDA errors, fall back to the CPU, or touch GPUs outside
  their device mask. pool-managerd classifies each failure, backs off before a restart,
  opens a circuit breaker on a restart storm, and stops engines with drain, SIGTERM,
  grace period and SIGKILL, keeping each pool's log across restarts.

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

  @OC-POOL-3012
  Scenario: An engine that holds no GPU memory runs on the CPU: it is refused at preload and stopped
    Given the config file "pools/cpu.cue":
      """
      pools: cpu: {
      	node:    "gpu-01"
      	engine:  "llamacpp"
      	model: path: "WORKSPACE/models/model.gguf"
      	devices: [1]
      	vram:    2Gi
      	env: {FAKE_ENGINE_LOAD_DELAY: "100ms", FAKE_ENGINE_NO_GPU: "1"}
      }
      """
    When I apply the config
    Then the exit status is 1
    And stdout matches "cpu +Unready +engine pid \d+ passed its health check but holds no memory on GPUs \[1\]: it runs on the CPU"
    And stdout contains "cpu: Unready (cpu_spillover)"
    And stdout contains "Apply done: 0 Ready, 1 failed or blocked"
    And no engine process runs for pool "cpu"
    And the log of pool "cpu" contains "cleaning up before exit"
    When I run "pool-managerd status --gpus SIM --state-dir STATE --node gpu-01 --format json"
    Then the JSON status of pool "cpu" is Unready with no engine
    And the JSON status of pool "cpu" has a last error of class "cpu_spillover" with a message, a time and a hint

  @OC-POOL-3020
  Scenario Outline: An engine sees only the GPUs of its mask, by UUID in PCI bus order
    Given the config file "pools/masked.cue":
      """
      pools: masked: {
      	node:    "gpu-01"
      	engine:  "llamacpp"
      	model: path: "WORKSPACE/models/model.gguf"
      	devices: <devices>
      	split:   <split>
      	vram:    4Gi
      	env: FAKE_ENGINE_LOAD_DELAY: "100ms"
      }
      """
    When I apply the config
    Then the exit status is 0
    And the engine of pool "masked" has CUDA_VISIBLE_DEVICES set to the UUIDs of GPUs <visible> and CUDA_DEVICE_ORDER=PCI_BUS_ID

    Examples:
      | devices | split        | visible |
      | [0]     | [1]          | 0       |
      | [1]     | [1]          | 1       |
      | [0, 1]  | [0.67, 0.33] | 0, 1    |
      | [1, 0]  | [0.33, 0.67] | 1, 0    |

  @OC-POOL-3020
  Scenario: An engine that holds memory outside its mask fails with mask_violation and is stopped
    Given the config file "pools/leaky.cue":
      """
      pools: leaky: {
      	node:    "gpu-01"
      	engine:  "llamacpp"
      	model: path: "WORKSPACE/models/model.gguf"
      	devices: [1]
      	vram:    2Gi
      	env: {FAKE_ENGINE_LOAD_DELAY: "100ms", FAKE_ENGINE_HOLD_OUTSIDE_MASK: "0"}
      }
      """
    When I apply the config
    Then the exit status is 1
    And stdout matches "leaky +Unready +engine pid (\d+) holds 0\.5 GiB on GPU 0 \(pid \d+\), outside its mask \[1\]"
    And stdout contains "leaky: Unready (mask_violation)"
    And no engine process runs for pool "leaky"
    When I run "pool-managerd status --gpus SIM --state-dir STATE --node gpu-01 --format json"
    Then the JSON status of pool "leaky" is Unready with no engine
    And the JSON status of pool "leaky" has a last error of class "mask_violation" with a message, a time and a hint

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
    When I apply the config
    And I run "pool-managerd stop busy --state-dir STATE"
    Then the exit status is 0
    And the command took at least 400ms
    And the command took less than 5000ms
    And no engine process runs for pool "busy"
    And the log of pool "busy" contains "cleaning up before exit"

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
    And I run "pool-managerd stop stubborn --state-dir STATE"
    Then the exit status is 0
    And stdout contains "Stopped 1 engine."
    And the command took at least 400ms
    And no engine process runs for pool "stubborn"
    And the log of pool "stubborn" contains "fake-engine: SIGTERM ignored (FAKE_ENGINE_IGNORE_SIGTERM=1)"

  @PM-1041 @OC-POOL-3001
  Scenario: The stand-in engine answers /health as llama-server does: 503 "Loading model", then 200
    Given the config file "pools/slow.cue":
      """
      pools: slow: {
      	node:    "gpu-01"
      	engine:  "llamacpp"
      	model: path: "WORKSPACE/models/model.gguf"
      	devices: [1]
      	vram:    2Gi
      	env: FAKE_ENGINE_LOAD_DELAY: "1s"
      }
      """
    When I start "pool-managerd apply CONFIG --gpus SIM --state-dir STATE --node gpu-01 --llama-server ENGINE --auto-approve" in the background
    And the background command has printed "is loading its model"
    Then pool "slow" becomes Preloading
    And the endpoint of pool "slow" answers GET /health with 503 and a body containing ""message":"Loading model""
    And the background command is still running
    And the background command ends with exit status 0
    And stdout matches "slow +Ready +Ready: engine pid \d+"
    And the endpoint of pool "slow" answers GET /health with 200 and a body containing "{"status":"ok"}"
    When I run "pool-managerd status --gpus SIM --state-dir STATE --node gpu-01 --format json"
    Then the JSON status of pool "slow" is Ready with a pid and an endpoint
