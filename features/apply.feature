Feature: Apply and state: plans carried out, recorded, crash-safe
  `pool-managerd apply` carries out the plan on the node: it starts each pool's engine,
  waits until the engine's health check passes (Ready) or it fails, and records all of it
  in the state directory, so that `status` can show it and the next apply knows what runs.

  These scenarios run on a simulated RTX 3090 + RTX 3060 node with the bundled stand-in
  engine (fake-engine) as llama-server; the stand-in's FAKE_ENGINE_* faults reach it
  through the pool's `env`. "I apply the config" runs
  `pool-managerd apply CONFIG --gpus SIM --state-dir STATE --node gpu-01 --llama-server ENGINE --auto-approve`
  where ENGINE is the stand-in engine's binary. No pool has a fixed port.

  Background:
    Given a simulated node with an RTX 3090 (24 GiB) and an RTX 3060 (12 GiB)
    And a node "gpu-01" with GPUs of 24 GiB and 12 GiB
    And a model file "models/model.gguf"

  @PM-1020
  Scenario: Every pool of the mixed example comes up Ready; a second apply changes nothing; a change replaces only its pool
    Given a copy of the example config "mixed-24-12" with its models in the workspace and no fixed ports
    When I apply the config
    Then the exit status is 0
    And stdout contains "Plan: 2 to create. 0 unchanged."
    And stdout contains "Apply done: 2 Ready, 0 failed or blocked, 0 stopped."
    And apply started pools "coder" and "llama70b" before either was Ready
    When I run "pool-managerd status --gpus SIM --state-dir STATE --node gpu-01 --format json"
    Then the JSON status of pool "coder" is Ready with a pid and an endpoint
    And the JSON status of pool "llama70b" is Ready with a pid and an endpoint
    And I note the engine pids
    When I apply the config again
    Then the exit status is 0
    And stdout contains "Plan: no changes. 2 unchanged."
    And stdout contains "Nothing to do: the node runs what the config says."
    And pool "coder" has the engine pid noted
    And pool "llama70b" has the engine pid noted
    And 1 engine process runs for pool "coder"
    And 1 engine process runs for pool "llama70b"
    When I append to the config file "pools/coder.cue":
      """
      pools: coder: model: ctx: 8192
      """
    And I apply the config
    Then the exit status is 0
    And stdout contains "-/+ replace  coder"
    And stdout contains "model.ctx: 4096 → 8192"
    And stdout contains "Plan: 1 to replace. 1 unchanged."
    And pool "coder" has a new engine pid
    And pool "llama70b" has the engine pid noted
    And the engine of pool "coder" was started with "--ctx-size 8192"
    And 1 engine process runs for pool "coder"
    And 1 engine process runs for pool "llama70b"

  @PM-1020
  Scenario: A pool that leaves the config is stopped first, freeing its GPU for the pool that takes its place
    Given the config file "pools/old.cue":
      """
      pools: old: {
      	node:    "gpu-01"
      	engine:  "llamacpp"
      	model: path: "WORKSPACE/models/model.gguf"
      	devices: [1]
      	vram:    10Gi
      	env: {FAKE_ENGINE_LOAD_DELAY: "100ms", FAKE_ENGINE_VRAM: "10Gi"}
      }
      """
    And I apply the config
    And the config file "pools/old.cue":
      """
      package poolmanagerd
      """
    And the config file "pools/new.cue":
      """
      pools: new: {
      	node:    "gpu-01"
      	engine:  "llamacpp"
      	model: path: "WORKSPACE/models/model.gguf"
      	devices: [1]
      	vram:    10Gi
      	env: {FAKE_ENGINE_LOAD_DELAY: "100ms", FAKE_ENGINE_VRAM: "10Gi"}
      }
      """
    When I apply the config
    Then the exit status is 0
    And stdout contains "- delete   old"
    And stdout contains "+ create   new"
    And apply stopped pool "old" before it started pool "new"
    And stdout contains "Apply done: 1 Ready, 0 failed or blocked, 1 stopped."
    And no engine process runs for pool "old"
    And 1 engine process runs for pool "new"

  @PM-1011
  Scenario: apply FILE applies exactly the saved plan
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
    When I run "pool-managerd plan CONFIG --gpus SIM --state-dir STATE --node gpu-01 --out plan.json"
    Then the exit status is 0
    When I run "pool-managerd apply plan.json --gpus SIM --state-dir STATE --llama-server ENGINE"
    Then the exit status is 0
    And stdout matches "a +Ready +Ready: engine pid \d+"
    And stdout contains "Apply done: 1 Ready, 0 failed or blocked, 0 stopped."
    And 1 engine process runs for pool "a"
    When I run "pool-managerd apply plan.json --gpus SIM --state-dir STATE --llama-server ENGINE"
    Then the exit status is 1
    And stderr contains "the plan is stale: the node changed (engines or GPUs) since it was made"
    And 1 engine process runs for pool "a"

  @PM-1011
  Scenario: A saved plan is refused once the config changed, and nothing starts
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
    When I run "pool-managerd plan CONFIG --gpus SIM --state-dir STATE --node gpu-01 --out plan.json"
    And I append to the config file "pools/a.cue":
      """
      pools: a: model: ctx: 8192
      """
    And I run "pool-managerd apply plan.json --gpus SIM --state-dir STATE --llama-server ENGINE"
    Then the exit status is 1
    And stderr contains "apply plan.json: the plan is stale: the config changed since it was made at"
    And stderr contains "make a new plan"
    And no engine was ever spawned for pool "a"

  @PM-1011
  Scenario: A saved plan is refused once the node changed, and nothing starts
    Given the config file "pools/a.cue":
      """
      pools: a: {
      	node:    "gpu-01"
      	engine:  "llamacpp"
      	model: path: "WORKSPACE/models/model.gguf"
      	devices: [1]
      	vram:    2Gi
      }
      """
    When I run "pool-managerd plan CONFIG --gpus SIM --state-dir STATE --node gpu-01 --out plan.json"
    And I run "pool-managerd sim hold SIMDIR --gpu 0 --size 1Gi --pid 4242"
    And I run "pool-managerd apply plan.json --gpus SIM --state-dir STATE --llama-server ENGINE"
    Then the exit status is 1
    And stderr contains "the plan is stale: the node changed (engines or GPUs) since it was made"
    And no engine was ever spawned for pool "a"

  @PM-1021
  Scenario: While an apply runs, another apply, a reset and a stop fail at once, naming the holder; afterwards they work
    Given the config file "pools/a.cue":
      """
      pools: a: {
      	node:    "gpu-01"
      	engine:  "llamacpp"
      	model: path: "WORKSPACE/models/model.gguf"
      	devices: [1]
      	vram:    2Gi
      	env: FAKE_ENGINE_LOAD_DELAY: "5s" // still loading after the three commands below, on a loaded machine
      }
      """
    When I start "pool-managerd apply CONFIG --gpus SIM --state-dir STATE --node gpu-01 --llama-server ENGINE --auto-approve" in the background
    And the background command has printed "is loading its model"
    And I apply the config
    Then the exit status is 1
    And the command ended while the background command was still loading pool "a"
    And stderr names the background command as the holder of the lock
    And stderr contains "hint: another apply, or the daemon, is changing this node"
    When I run "pool-managerd reset a --state-dir STATE"
    Then the exit status is 1
    And stderr contains "reset: state directory"
    And stderr names the background command as the holder of the lock
    When I run "pool-managerd stop --all --state-dir STATE"
    Then the exit status is 1
    And stderr contains "stop: state directory"
    And stderr names the background command as the holder of the lock
    And the background command is still running
    And 1 engine process runs for pool "a"
    And the background command ends with exit status 0
    And stdout contains "Apply done: 1 Ready, 0 failed or blocked, 0 stopped."
    When I apply the config
    Then the exit status is 0
    And stdout contains "Nothing to do: the node runs what the config says."
    When I run "pool-managerd reset a --state-dir STATE"
    Then the exit status is 0
    And stdout contains "Reset a: breaker closed, backoff cleared."
    When I run "pool-managerd stop --all --state-dir STATE"
    Then the exit status is 0
    And stdout contains "Stopped 1 engine."
    And no engine process runs for pool "a"

  @PM-1022
  Scenario Outline: An apply killed with SIGKILL in the middle of a start is finished by the next apply, with one engine
    Given the config file "pools/a.cue":
      """
      pools: a: {
      	node:    "gpu-01"
      	engine:  "llamacpp"
      	model: path: "WORKSPACE/models/model.gguf"
      	devices: [1]
      	vram:    2Gi
      	env: FAKE_ENGINE_LOAD_DELAY: "200ms"
      }
      """
    And I apply the config
    And I append to the config file "pools/a.cue":
      """
      pools: a: model: ctx: 8192
      """
    When I run "pool-managerd apply CONFIG --gpus SIM --state-dir STATE --node gpu-01 --llama-server ENGINE --auto-approve" with POOL_MANAGERD_TEST_CRASH_AT=<step>
    Then the command was killed by SIGKILL
    When I apply the config
    Then the exit status is 0
    And 1 engine process runs for pool "a"
    And the engine of pool "a" was started with "--ctx-size 8192"
    And the state file is valid and records the live engine of pool "a"
    When I run "pool-managerd status --gpus SIM --state-dir STATE --node gpu-01 --format json"
    Then the JSON status of pool "a" is Ready with a pid and an endpoint
    When I apply the config
    Then stdout contains "Plan: no changes. 1 unchanged."
    And 1 engine process runs for pool "a"

    Examples:
      | step           |
      | stopped        |
      | intent         |
      | spawned        |
      | recorded       |
      | healthy        |
      | ready-recorded |

  @PM-1022 @OC-POOL-3020
  Scenario: An apply killed between the health check and the placement check: the next apply checks the placement
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
    When I run "pool-managerd apply CONFIG --gpus SIM --state-dir STATE --node gpu-01 --llama-server ENGINE --auto-approve" with POOL_MANAGERD_TEST_CRASH_AT=healthy
    Then the command was killed by SIGKILL
    When I apply the config
    Then the exit status is 1
    And stdout contains "leaky: Unready (mask_violation)"
    And no engine process runs for pool "leaky"
