Feature: What an engine build takes, and how it says no
  pool-managerd learns what each engine binary takes from its own --help, once per binary
  (path, modification time and size): a llama-server older than --fit (llama.cpp before about
  build 7437, December 2025) is started without it, and the daemon warns that the fit check is
  then the engine's. An engine that exits at once naming an argument it does not take ends in
  `args_rejected`; one that cannot open its model file in `model_missing`; one that opened it but
  cannot read it as a model in `model_corrupt`. Each carries the engine's own error line and a
  hint. A simulated node can host real engines (`sim init --host-real-engines`): pool-managerd
  then attributes each engine it starts its pool's VRAM need, while stand-in engines keep their
  own claims and faults.

  These scenarios run the daemon on a simulated RTX 3090 + RTX 3060 node with the bundled
  stand-in engine as llama-server (or a wrapper that makes it imitate an older build);
  the e2e suite runs the same checks against a real llama-server when one is given
  (POOL_MANAGERD_TEST_LLAMA_SERVER).

  Background:
    Given a simulated node with an RTX 3090 (24 GiB) and an RTX 3060 (12 GiB)
    And a node "gpu-01" with GPUs of 24 GiB and 12 GiB
    And a model file "models/model.gguf"

  @PM-1042
  Scenario: A llama-server build without --fit is started without it, with a warning
    Given the llama-server binary is the stand-in imitating llama.cpp build 7000
    And the config file "pools/chat.cue":
      """
      pools: chat: {
      	node:    "gpu-01"
      	engine:  "llamacpp"
      	model: path: "WORKSPACE/models/model.gguf"
      	devices: [0]
      	vram:    4Gi
      	restart: {initialBackoff: "100ms", jitter: 0}
      }
      """
    When the daemon is started
    Then the daemon shows pool "chat" as Ready
    And the engine of pool "chat" was started with "--n-gpu-layers 999"
    And the engine of pool "chat" was started without "--fit"
    And the daemon has logged a warn event containing "has no --fit"

  @PM-1042
  Scenario Outline: vLLM <version> is told --shutdown-timeout only when its own help names the flag
    vLLM from v0.18 aborts requests in flight on SIGTERM unless --shutdown-timeout is set, and
    older builds refuse the flag: it is passed, within the pool's stop grace, only to a build
    whose serve --help=all lists it.
    Given the vLLM binary is the stand-in imitating vLLM <version>
    And the config file "pools/chat.cue":
      """
      pools: chat: {
      	node:    "gpu-01"
      	engine:  "vllm"
      	model: {path: "WORKSPACE/models/model.gguf", ctx: 8192}
      	devices: [0]
      	vram:    18Gi
      	restart: stopGrace: "10s"
      }
      """
    When I run "pool-managerd apply CONFIG --gpus SIM --state-dir STATE --node gpu-01 --vllm VLLM --auto-approve"
    Then the exit status is 0
    And stdout contains "Apply done: 1 Ready, 0 failed or blocked, 0 stopped."
    And the engine of pool "chat" was started <told>

    Examples:
      | version | told                                   |
      | 0.18.0  | with "--shutdown-timeout 8"            |
      | 0.11.0  | without "--shutdown-timeout"           |

  @PM-1042
  Scenario: An engine that refuses an argument, a missing model and a file that is no model each fail in a class of their own
    Given a model file "models/zip.gguf" that is not a GGUF file
    And the config file "pools/pools.cue":
      """
      pools: oldbuild: {
      	node:    "gpu-01"
      	engine:  "llamacpp"
      	model: path: "WORKSPACE/models/model.gguf"
      	devices: [0]
      	vram:    2Gi
      	share:   true
      	env: FAKE_ENGINE_LLAMA_BUILD: "7000"
      	restart: {initialBackoff: "100ms", jitter: 0}
      }
      pools: nomodel: {
      	node:    "gpu-01"
      	engine:  "llamacpp"
      	model: path: "WORKSPACE/models/missing.gguf"
      	devices: [0]
      	vram:    2Gi
      	share:   true
      	restart: {initialBackoff: "100ms", jitter: 0}
      }
      pools: zip: {
      	node:    "gpu-01"
      	engine:  "llamacpp"
      	model: path: "WORKSPACE/models/zip.gguf"
      	devices: [1]
      	vram:    2Gi
      	restart: {initialBackoff: "100ms", jitter: 0}
      }
      """
    When the daemon is started
    Then the daemon shows pool "oldbuild" with a last error of class "args_rejected" containing "error: invalid argument: --fit" and the class's hint
    And the daemon shows pool "nomodel" with a last error of class "model_missing" containing "failed to open GGUF file" and the class's hint
    And the daemon shows pool "zip" with a last error of class "model_corrupt" containing "invalid magic characters: 'PK??', expected 'GGUF'" and the class's hint

  @PM-1042
  Scenario: A node that hosts real engines leaves the stand-in's own claims alone
    Given the simulated node hosts real engines
    And the config file "pools/pools.cue":
      """
      pools: chat: {
      	node:    "gpu-01"
      	engine:  "llamacpp"
      	model: path: "WORKSPACE/models/model.gguf"
      	devices: [0]
      	vram:    4Gi
      	restart: {initialBackoff: "100ms", jitter: 0}
      }
      pools: cpu: {
      	node:    "gpu-01"
      	engine:  "llamacpp"
      	model: path: "WORKSPACE/models/model.gguf"
      	devices: [1]
      	vram:    2Gi
      	env: FAKE_ENGINE_NO_GPU: "1"
      	restart: {initialBackoff: "100ms", jitter: 0}
      }
      """
    When the daemon is started
    Then the daemon shows pool "chat" as Ready
    And the daemon shows pool "cpu" with a last error of class "cpu_spillover" containing "holds no memory on GPUs [1]" and the class's hint
