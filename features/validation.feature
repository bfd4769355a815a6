Feature: Validating a config repository before anything touches a GPU
  Operators keep each node's GPUs and pools in CUE files in Git. `pool-managerd validate`
  checks them in the pull request: every mistake is reported with its file, line and
  column, and the exit status tells a CI job whether the config is valid.

  @PM-1001 @PM-1002
  Scenario: A valid config repository passes with a one-line summary
    Given a copy of the example config "mixed-24-12"
    When I run "pool-managerd validate CONFIG"
    Then the exit status is 0
    And stdout matches "^config: valid: \d+ pools?, 1 node, 2 GPUs in \d+ files\n$"

  @PM-1001
  Scenario: A value the schema forbids is reported at its position in the config file
    Given a node "gpu-01" with GPUs of 24 GiB and 12 GiB
    And the config file "pools/coder.cue":
      """
      package poolmanagerd

      pools: coder: {
      	node:    "gpu-01"
      	engine:  "llama.cpp"
      	model: {path: "/models/qwen2.5-coder-7b-q4_k_m.gguf"}
      	devices: [1]
      }
      """
    When I run "pool-managerd validate CONFIG"
    Then the exit status is 1
    And an error is reported at "pools/coder.cue:5:11" containing "engine must be \"llamacpp\", \"vllm\", \"tgi\" or \"sglang\""
    And 1 error is reported

  @PM-1002
  Scenario: Every mistake is reported at once, sorted by file and line
    Given a node "gpu-01" with GPUs of 24 GiB and 12 GiB
    And the config file "pools/a.cue":
      """
      pools: a: {
      	node:    "gpu-01"
      	engine:  "llamacpp"
      	model: {path: "models/a.gguf", ctx: 8192}
      	devices: [0]
      	restart: initialBackoff: "soon"
      }
      """
    And the config file "pools/b.cue":
      """
      pools: b: {
      	node:    "gpu-01"
      	engine:  "llamacpp"
      	model: {path: "/models/b.gguf"}
      	devics:  [1]
      }
      """
    When I run "pool-managerd validate CONFIG"
    Then the exit status is 1
    And an error is reported at "pools/a.cue:4:16" containing "model path must be absolute"
    And an error is reported at "pools/a.cue:6:27" containing "must be a duration"
    And an error is reported at "pools/b.cue:5:2" containing "unknown field devics"
    And stdout contains "config: invalid: "

  @PM-1002
  Scenario: GitHub Actions annotations point at the line of each mistake
    Given a node "gpu-01" with GPUs of 24 GiB and 12 GiB
    And a llama.cpp pool "big" on GPUs 0 and 1 with split [0.5, 0.5]
    When I run "pool-managerd validate --format github CONFIG"
    Then the exit status is 1
    And a GitHub annotation is printed for "pools/big.cue" at line 8, column 17

  @PM-1002
  Scenario: JSON output for tools carries file, line and column
    Given a node "gpu-01" with GPUs of 24 GiB and 12 GiB
    And a llama.cpp pool "big" on GPUs 0 and 1 with split [0.5, 0.5]
    When I run "pool-managerd validate --format json CONFIG"
    Then the exit status is 1
    And the JSON output reports 1 diagnostic with file, line and column

  @PM-1002
  Scenario Outline: Usage mistakes exit with 2, not with "invalid"
    Given an empty config directory
    When I run "pool-managerd <command>"
    Then the exit status is 2
    And stderr contains "<message>"

    Examples:
      | command                         | message                      |
      | validate does-not-exist         | not a config directory       |
      | validate --format yaml CONFIG   | want one of text, json, github |
      | validate CONFIG CONFIG          | accepts at most 1 arg        |

  @PM-1002
  Scenario: An empty config directory is invalid, with a clear reason
    Given an empty config directory
    When I run "pool-managerd validate CONFIG"
    Then the exit status is 1
    And stdout contains "no .cue files found"

  @PM-1003
  Scenario: A device mask naming a GPU the declared node lacks is caught without the hardware
    Given a node "gpu-01" with GPUs of 24 GiB and 12 GiB
    And the config file "pools/coder.cue":
      """
      pools: coder: {
      	node:    "gpu-01"
      	engine:  "llamacpp"
      	model: {path: "/models/coder.gguf"}
      	devices: [1, 2]
      	split:   [0.5, 0.5]
      }
      """
    When I run "pool-managerd validate CONFIG"
    Then the exit status is 1
    And an error is reported at "pools/coder.cue:5:15" containing "GPU 2 is not on node gpu-01 (it has GPUs 0, 1)"

  @PM-1003
  Scenario: A pool on a node whose inventory is not declared
    Given a node "gpu-01" with GPUs of 24 GiB and 12 GiB
    And the config file "pools/coder.cue":
      """
      pools: coder: {
      	node:    "gpu-02"
      	engine:  "llamacpp"
      	model: {path: "/models/coder.gguf"}
      	devices: [0]
      }
      """
    When I run "pool-managerd validate CONFIG"
    Then the exit status is 1
    And an error is reported at "pools/coder.cue:2:11" containing "node \"gpu-02\" is not declared under nodes (declared: gpu-01)"

  @OC-POOL-3021
  Scenario Outline: On 24 GB + 16 GB the smaller GPU caps the split at its share of the VRAM
    Given a node "gpu-01" with GPUs of 24 GiB and 16 GiB
    And a llama.cpp pool "big" on GPUs 0 and 1 with split [<split>]
    When I run "pool-managerd validate CONFIG"
    Then the exit status is <status>
    And stdout contains "<outcome>"

    Examples:
      | split      | status | outcome                                                    |
      | 0.7, 0.3   | 0      | valid: 1 pool                                              |
      | 0.6, 0.4   | 0      | valid: 1 pool                                              |
      | 0.55, 0.45 | 1      | GPU 1 (16.0 GiB) would take 0.45 of the model, more than its share of the mask's VRAM (16.0 GiB of 40.0 GiB = 0.4) |
      | 0.4, 0.6   | 1      | GPU 1 (16.0 GiB) would take 0.6 of the model               |

  @OC-POOL-3021
  Scenario: A pool across GPUs of different sizes must write its split
    Given a node "gpu-01" with GPUs of 24 GiB and 12 GiB
    And the config file "pools/big.cue":
      """
      pools: big: {
      	node:    "gpu-01"
      	engine:  "llamacpp"
      	model: {path: "/models/llama-70b.gguf"}
      	devices: [0, 1]
      }
      """
    When I run "pool-managerd validate CONFIG"
    Then the exit status is 1
    And an error is reported at "pools/big.cue:5:2" containing "write split explicitly, for example split: [0.67, 0.33]"

  @OC-POOL-3021
  Scenario Outline: Split ratios match the mask and sum to 1
    Given a node "gpu-01" with GPUs of 24 GiB and 12 GiB
    And a llama.cpp pool "big" on GPUs 0 and 1 with split [<split>]
    When I run "pool-managerd validate CONFIG"
    Then the exit status is 1
    And an error is reported at "pools/big.cue:8:2" containing "<message>"

    Examples:
      | split          | message                                    |
      | 0.6, 0.3       | split ratios sum to 0.9; they must sum to 1 |
      | 0.5, 0.3, 0.2  | split has 3 ratios but devices has 2 GPUs  |

  @OC-POOL-3012
  Scenario Outline: Engine flags that would run part of a model on the CPU are refused
    Given a node "gpu-01" with GPUs of 24 GiB and 12 GiB
    And a llama.cpp pool "coder" on GPU 0 with flags <flags>
    When I run "pool-managerd validate CONFIG"
    Then the exit status is 1
    And an error is reported at "pools/coder.cue:8:12" containing "<message>"

    Examples:
      | flags                         | message                                |
      | "--no-kv-offload"             | CPU spillover is not allowed           |
      | "-nkvo"                       | CPU spillover is not allowed           |
      | "--cpu-moe"                   | CPU spillover is not allowed           |
      | "--n-cpu-moe", "12"           | CPU spillover is not allowed           |
      | "-ot", "ffn_.*_exps=CPU"      | moves tensors to a CPU buffer          |
      | "--fit", "on"                 | CPU spillover is not allowed           |
      | "--device", "none"            | CPU spillover is not allowed           |
      | "-ngl", "20"                  | 20 would leave layers on the CPU       |

  @OC-POOL-3012 @OC-POOL-3021
  Scenario Outline: Flags pool-managerd sets itself are refused in every spelling, naming the field to use
    Given a node "gpu-01" with GPUs of 24 GiB and 12 GiB
    And a llama.cpp pool "coder" on GPU 0 with flags <flags>
    When I run "pool-managerd validate CONFIG"
    Then the exit status is 1
    And an error is reported at "pools/coder.cue:8:12" containing "<message>"

    Examples:
      | flags                     | message            |
      | "-c", "32768"             | use model.ctx      |
      | "--ctx-size", "32768"     | use model.ctx      |
      | "--tensor_split", "3,1"   | use split          |
      | "-ts", "3/1"              | use split          |
      | "--port", "8080"          | use the pool's port field |
      | "-m", "/models/x.gguf"    | use model.path     |

  @OC-POOL-3020
  Scenario Outline: The device mask is the only way to choose GPUs
    Given a node "gpu-01" with GPUs of 24 GiB and 12 GiB
    And the config file "pools/coder.cue":
      """
      pools: coder: {
      	node:    "gpu-01"
      	engine:  "llamacpp"
      	model: {path: "/models/coder.gguf"}
      	devices: [1]
      	<field>
      }
      """
    When I run "pool-managerd validate CONFIG"
    Then the exit status is 1
    And stdout contains "<message>"

    Examples:
      | field                                 | message                                          |
      | env: CUDA_VISIBLE_DEVICES: "0"        | pool-managerd sets CUDA_VISIBLE_DEVICES from devices |
      | flags: ["--device", "CUDA0"]          | use devices (the device mask) instead             |
      | flags: ["-dev", "CUDA0,CUDA1"]        | use devices (the device mask) instead             |

  @OC-POOL-3020
  Scenario: Two pools may not claim one GPU unless both share it and fit
    Given a node "gpu-01" with GPUs of 24 GiB and 12 GiB
    And the config file "pools/two.cue":
      """
      pools: chat: {node: "gpu-01", engine: "llamacpp", model: path: "/models/chat.gguf", devices: [1]}
      pools: embed: {node: "gpu-01", engine: "llamacpp", model: path: "/models/embed.gguf", devices: [1], share: true, vram: 2Gi}
      """
    When I run "pool-managerd validate CONFIG"
    Then the exit status is 1
    And an error is reported at "pools/two.cue:1:95" containing "GPU 1 of node gpu-01 is also in pool embed"
