Feature: Device masks: every pool on exactly its GPUs, never on the CPU
  An engine sees only the GPUs of its pool's mask (CUDA_VISIBLE_DEVICES by UUID, in PCI bus
  order). After its health check, its memory must be on those GPUs: memory outside the mask is
  a mask_violation, no GPU memory at all means it runs on the CPU. (Split ratios are checked
  at validation: see validation.feature and plan.feature.)

  These scenarios run on a simulated RTX 3090 + RTX 3060 node with the bundled stand-in
  engine (fake-engine) as llama-server; the stand-in's FAKE_ENGINE_* faults reach it
  through the pool's `env`. "I apply the config" runs
  `pool-managerd apply CONFIG --gpus SIM --state-dir STATE --node gpu-01 --llama-server ENGINE --auto-approve`
  where ENGINE is the stand-in engine's binary. No pool has a fixed port.

  Background:
    Given a simulated node with an RTX 3090 (24 GiB) and an RTX 3060 (12 GiB)
    And a node "gpu-01" with GPUs of 24 GiB and 12 GiB
    And a model file "models/model.gguf"

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
