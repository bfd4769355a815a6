Feature: Host RAM
  A pool's start needs host RAM as well as VRAM: its declared `ram`, or its engine's default
  estimate. Plan and apply check the need against the host's available memory, less what the
  starts of the same plan take, and a start the host lacks the RAM for is blocked before
  anything is spawned, with the class insufficient_ram and a hint; the pool stays Unready and
  is retried with backoff. `ram` changes in place: changing it restarts nothing.

  These scenarios run on a simulated RTX 3090 + RTX 3060 node made with `sim init --ram 32Gi`:
  its available memory is 32 GiB less what the engines running on it hold (each holds its
  pool's RAM need while it lives). "I apply the config" runs
  `pool-managerd apply CONFIG --gpus SIM --state-dir STATE --node gpu-01 --llama-server ENGINE --auto-approve`.

  Background:
    Given a simulated node with an RTX 3090 (24 GiB), an RTX 3060 (12 GiB) and 32 GiB of host RAM
    And a node "gpu-01" with GPUs of 24 GiB and 12 GiB
    And a model file "models/model.gguf"

  @OC-POOL-3002
  Scenario: A pool that needs more RAM than the host has is Unready with insufficient_ram, and no engine is spawned
    Given the config file "pools/big.cue":
      """
      pools: big: {
      	node:    "gpu-01"
      	engine:  "llamacpp"
      	model: path: "WORKSPACE/models/model.gguf"
      	devices: [0]
      	vram:    2Gi
      	ram:     40Gi
      	env: FAKE_ENGINE_LOAD_DELAY: "100ms"
      	// long enough that status, however slow the machine, runs within it
      	restart: initialBackoff: "1m"
      }
      """
    When I run "pool-managerd plan CONFIG --gpus SIM --state-dir STATE --node gpu-01"
    Then stdout contains "blocked: insufficient host RAM: needs 40.0 GiB (the pool's ram), 32.0 GiB available of 32.0 GiB"
    When I apply the config
    Then the exit status is 1
    And stdout contains "big: Unready (insufficient_ram)"
    And no engine was ever spawned for pool "big"
    When I run "pool-managerd status --gpus SIM --state-dir STATE --node gpu-01 --format json"
    Then the JSON status of pool "big" is Unready with no engine
    And the JSON status of pool "big" has a last error of class "insufficient_ram" with a message, a time and a hint
    And the JSON status of pool "big" has a next retry in the future

  @OC-POOL-3002
  Scenario: Two pools that each fit the host's RAM alone but not together are not both started
    Given the config file "pools/two.cue":
      """
      pools: a: {
      	node:    "gpu-01"
      	engine:  "llamacpp"
      	model: path: "WORKSPACE/models/model.gguf"
      	devices: [0]
      	vram:    2Gi
      	ram:     20Gi
      	env: FAKE_ENGINE_LOAD_DELAY: "100ms"
      	restart: initialBackoff: "1m"
      }
      pools: b: {
      	node:    "gpu-01"
      	engine:  "llamacpp"
      	model: path: "WORKSPACE/models/model.gguf"
      	devices: [1]
      	vram:    2Gi
      	ram:     20Gi
      	env: FAKE_ENGINE_LOAD_DELAY: "100ms"
      	restart: initialBackoff: "1m"
      }
      """
    When I run "pool-managerd plan CONFIG --gpus SIM --state-dir STATE --node gpu-01"
    Then stdout contains "host RAM: needs 20.0 GiB (declared), 32.0 GiB available"
    And stdout contains "blocked: insufficient host RAM: needs 20.0 GiB (the pool's ram), 12.0 GiB available of 32.0 GiB"
    When I apply the config
    Then the exit status is 1
    And stdout contains "b: Unready (insufficient_ram)"
    And 1 engine process runs for pool "a"
    And no engine was ever spawned for pool "b"

  @OC-POOL-3002
  Scenario: A running engine's RAM counts: a pool added later sees what is left
    Given the config file "pools/a.cue":
      """
      pools: a: {
      	node:    "gpu-01"
      	engine:  "llamacpp"
      	model: path: "WORKSPACE/models/model.gguf"
      	devices: [0]
      	vram:    2Gi
      	ram:     20Gi
      	env: FAKE_ENGINE_LOAD_DELAY: "100ms"
      }
      """
    And I apply the config
    And the config file "pools/b.cue":
      """
      pools: b: {
      	node:    "gpu-01"
      	engine:  "llamacpp"
      	model: path: "WORKSPACE/models/model.gguf"
      	devices: [1]
      	vram:    2Gi
      	ram:     20Gi
      	env: FAKE_ENGINE_LOAD_DELAY: "100ms"
      	restart: initialBackoff: "1m"
      }
      """
    When I apply the config
    Then the exit status is 1
    And stdout contains "blocked: insufficient host RAM: needs 20.0 GiB (the pool's ram), 12.0 GiB available of 32.0 GiB"
    And no engine was ever spawned for pool "b"
    And 1 engine process runs for pool "a"

  @OC-POOL-3002
  Scenario: Changing a pool's ram restarts nothing
    Given the config file "pools/chat.cue":
      """
      pools: chat: {
      	node:    "gpu-01"
      	engine:  "llamacpp"
      	model: path: "WORKSPACE/models/model.gguf"
      	devices: [0]
      	vram:    2Gi
      	ram:     4Gi
      	env: FAKE_ENGINE_LOAD_DELAY: "100ms"
      }
      """
    And I apply the config
    And I note the engine pids
    And the config file "pools/chat.cue":
      """
      pools: chat: {
      	node:    "gpu-01"
      	engine:  "llamacpp"
      	model: path: "WORKSPACE/models/model.gguf"
      	devices: [0]
      	vram:    2Gi
      	ram:     8Gi
      	env: FAKE_ENGINE_LOAD_DELAY: "100ms"
      }
      """
    When I run "pool-managerd plan CONFIG --gpus SIM --state-dir STATE --node gpu-01"
    Then stdout contains "ram: 4.0 GiB → 8.0 GiB"
    When I apply the config
    Then the exit status is 0
    And pool "chat" has the engine pid noted
