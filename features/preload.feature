Feature: Preload and readiness
  A pool preloads its model when it starts and is Ready only once its engine's health check
  passes and its GPU memory is where its device mask says. A start whose GPUs lack the memory
  fails before anything is spawned, and the pool's phase and last error are shown with a hint.

  These scenarios run on a simulated RTX 3090 + RTX 3060 node with the bundled stand-in
  engine (fake-engine) as llama-server; the stand-in's FAKE_ENGINE_* faults reach it
  through the pool's `env`. "I apply the config" runs
  `pool-managerd apply CONFIG --gpus SIM --state-dir STATE --node gpu-01 --llama-server ENGINE --auto-approve`
  where ENGINE is the stand-in engine's binary. No pool has a fixed port.

  Background:
    Given a simulated node with an RTX 3090 (24 GiB) and an RTX 3060 (12 GiB)
    And a node "gpu-01" with GPUs of 24 GiB and 12 GiB
    And a model file "models/model.gguf"

  @OC-POOL-3001
  Scenario: A pool is Ready only once its engine has loaded its model and passed its health check
    Given the config file "pools/slow.cue":
      """
      pools: slow: {
      	node:    "gpu-01"
      	engine:  "llamacpp"
      	model: path: "WORKSPACE/models/model.gguf"
      	devices: [1]
      	vram:    2Gi
      	env: FAKE_ENGINE_LOAD_DELAY: "500ms"
      }
      """
    When I apply the config
    Then the exit status is 0
    And apply reported pool "slow" Preloading, then Ready at least 500ms later
    And stdout matches "slow +Preloading engine pid \d+ on port \d+ is loading its model"
    And stdout matches "slow +Ready +Ready: engine pid \d+ on port \d+, model loaded in"
    And stdout contains "Apply done: 1 Ready, 0 failed or blocked, 0 stopped."
    When I run "pool-managerd status --gpus SIM --state-dir STATE --node gpu-01 --format json"
    Then the exit status is 0
    And the JSON status of pool "slow" is Ready with a pid and an endpoint
    And 1 engine process runs for pool "slow"
    When I run "pool-managerd status --gpus SIM --state-dir STATE --node gpu-01"
    Then the status table shows pool "slow" as Ready
    And stdout matches "slow +Ready +yes +\d+ +http://127\.0\.0\.1:\d+ +1: 2\.0 GiB"

  @OC-POOL-3002
  Scenario: Of two new pools, the one whose GPU lacks the memory fails before it is spawned, and is retried later
    # hog declares 4 GiB but its engine holds 10 GiB of the 3060's 12 GiB.
    Given the config file "pools/hog.cue":
      """
      pools: hog: {
      	node:    "gpu-01"
      	engine:  "llamacpp"
      	model: path: "WORKSPACE/models/model.gguf"
      	devices: [1]
      	vram:    4Gi
      	share:   true
      	env: {FAKE_ENGINE_LOAD_DELAY: "100ms", FAKE_ENGINE_VRAM: "10Gi"}
      }
      """
    And I apply the config
    And the config file "pools/late.cue":
      """
      pools: late: {
      	node:    "gpu-01"
      	engine:  "llamacpp"
      	model: path: "WORKSPACE/models/model.gguf"
      	devices: [1]
      	vram:    4Gi
      	share:   true
      	env: FAKE_ENGINE_LOAD_DELAY: "100ms"
      	// long enough that status, however slow the machine, runs within it
      	restart: initialBackoff: "1m"
      }
      """
    And the config file "pools/fits.cue":
      """
      pools: fits: {
      	node:    "gpu-01"
      	engine:  "llamacpp"
      	model: path: "WORKSPACE/models/model.gguf"
      	devices: [0]
      	vram:    2Gi
      	env: FAKE_ENGINE_LOAD_DELAY: "100ms"
      }
      """
    When I apply the config
    Then the exit status is 1
    And stdout contains "blocked: insufficient VRAM on GPU 1 (NVIDIA GeForce RTX 3060, 12.0 GiB): needs 4.0 GiB at ctx 4096, 2.0 GiB free"
    And stdout contains "late: Unready (insufficient_vram)"
    And stdout contains "Apply done: 1 Ready, 1 failed or blocked, 0 stopped."
    And no engine was ever spawned for pool "late"
    And 1 engine process runs for pool "hog"
    And 1 engine process runs for pool "fits"
    When I run "pool-managerd status --gpus SIM --state-dir STATE --node gpu-01 --format json"
    Then the JSON status of pool "late" is Unready with no engine
    And the JSON status of pool "late" has a last error of class "insufficient_vram" with a message, a time and a hint
    And the JSON status of pool "late" has a next retry in the future
    And the JSON status of pool "hog" is Ready with a pid and an endpoint
    And the JSON status of pool "fits" is Ready with a pid and an endpoint

  @OC-POOL-3002
  Scenario Outline: A start whose GPU lacks the memory fails before anything is spawned, and is retried later
    # hog declares 4 GiB but its engine holds 10 GiB of the 3060's 12 GiB.
    Given the config file "pools/hog.cue":
      """
      pools: hog: {
      	node:    "gpu-01"
      	engine:  "llamacpp"
      	model: path: "WORKSPACE/models/model.gguf"
      	devices: [1]
      	vram:    4Gi
      	share:   true
      	env: {FAKE_ENGINE_LOAD_DELAY: "100ms", FAKE_ENGINE_VRAM: "10Gi"}
      }
      """
    And I apply the config
    And the config file "pools/late.cue":
      """
      pools: late: {
      	node:    "gpu-01"
      	engine:  "llamacpp"
      	model: path: "WORKSPACE/models/model.gguf"
      	devices: <devices>
      	split:   <split>
      	vram:    <vram>
      	share:   true
      	env: FAKE_ENGINE_LOAD_DELAY: "100ms"
      	// long enough that status, however slow the machine, runs within it
      	restart: initialBackoff: "1m"
      }
      """
    When I apply the config
    Then the exit status is 1
    And stdout contains "blocked: insufficient VRAM on GPU 1 (NVIDIA GeForce RTX 3060, 12.0 GiB): needs <need> at ctx 4096, 2.0 GiB free"
    And stdout contains "late: Unready (insufficient_vram)"
    And stdout contains "Apply done: 0 Ready, 1 failed or blocked, 0 stopped."
    And no engine was ever spawned for pool "late"
    And 1 engine process runs for pool "hog"
    When I run "pool-managerd status --gpus SIM --state-dir STATE --node gpu-01 --format json"
    Then the JSON status of pool "late" is Unready with no engine
    And the JSON status of pool "late" has a last error of class "insufficient_vram" with a message, a time and a hint
    And the JSON status of pool "late" has a next retry in the future
    And the JSON status of pool "hog" is Ready with a pid and an endpoint

    Examples:
      | devices | split      | vram | need    |
      | [1]     | [1]        | 4Gi  | 4.0 GiB |
      | [0, 1]  | [0.7, 0.3] | 12Gi | 3.6 GiB |

  @OC-POOL-3003
  Scenario Outline: Status shows a failed pool's phase and its last error: class, message, time, hint and next retry
    Given the config file "pools/bad.cue":
      """
      pools: bad: {
      	node:    "gpu-01"
      	engine:  "llamacpp"
      	model: path: "WORKSPACE/models/model.gguf"
      	devices: [1]
      	vram:    2Gi
      	env: {FAKE_ENGINE_LOAD_DELAY: "100ms", <fault>}
      	restart: {initialBackoff: "30s", jitter: 0}
      }
      """
    When I apply the config
    Then the exit status is 1
    And stdout contains "bad: Unready (<class>)"
    When I run "pool-managerd status --gpus SIM --state-dir STATE --node gpu-01"
    Then the exit status is 0
    And the status table shows pool "bad" as Unready
    And the status table gives pool "bad" its last error with class "<class>" and time, a hint and the next retry
    And stdout contains "<message>"
    When I run "pool-managerd status --gpus SIM --state-dir STATE --node gpu-01 --format json"
    Then the exit status is 0
    And the JSON status of pool "bad" is Unready with no engine
    And the JSON status of pool "bad" has a last error of class "<class>" with a message, a time and a hint
    And the JSON status of pool "bad" has a last error message containing "<message>"
    And the JSON status of pool "bad" has its next retry <backoff> after its last error

    Examples:
      | fault                                                                    | class          | message                                         | backoff |
      | FAKE_ENGINE_FAIL_LOAD: "1"                                               | exited         | exited with status 1 while loading its model    | 30s     |
      | FAKE_ENGINE_NO_GPU: "1"                                                  | cpu_spillover  | holds no memory on GPUs [1]: it runs on the CPU | 30s     |
      | FAKE_ENGINE_HOLD_OUTSIDE_MASK: "0"                                       | mask_violation | on GPU 0                                        | 30s     |
      | FAKE_ENGINE_UNHEALTHY_AFTER: "0s", FAKE_ENGINE_CUDA_ERROR_AFTER: "100ms" | cuda_error     | CUDA error: out of memory                       | 1m0s    |

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
      	env: FAKE_ENGINE_LOAD_DELAY: "5s" // the 503 must still be there after the steps before the GET, on a loaded machine
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
