Feature: Engines: SGLang, and what vLLM, TGI and SGLang are told so that they take what a pool declares
  vLLM, TGI and SGLang shard a model evenly over their GPUs and take a fixed share of
  each GPU whatever a pool declares (vLLM --gpu-memory-utilization, TGI about 90 % ×
  --cuda-memory-fraction, SGLang --mem-fraction-static). pool-managerd derives that share
  from the pool's vram, so that the plan's booking of each GPU is what the engine takes,
  and `validate` refuses a share above it. SGLang (python -m sglang.launch_server) refuses
  connections while it loads, then answers /health with 503 until its warm-up is done:
  neither is a failure during the preload.

  These scenarios run on a simulated RTX 3090 + RTX 3060 node; the bundled stand-in engine
  (fake-engine) plays each engine, started the way pool-managerd starts the real one.

  Background:
    Given a simulated node with an RTX 3090 (24 GiB) and an RTX 3060 (12 GiB)
    And a node "gpu-01" with GPUs of 24 GiB and 12 GiB
    And a model file "models/qwen/config.json"

  @PM-1043
  Scenario: An SGLang pool starts as python -m sglang.launch_server, warms up, and holds what it declares
    Given the config file "pools/qwen.cue":
      """
      pools: qwen: {
      	node:    "gpu-01"
      	engine:  "sglang"
      	model: {path: "WORKSPACE/models/qwen", ctx: 8192}
      	devices: [0]
      	vram:    18Gi
      	env: {FAKE_ENGINE_LOAD_DELAY: "300ms", FAKE_ENGINE_WARMUP: "500ms"}
      }
      """
    When I run "pool-managerd apply CONFIG --gpus SIM --state-dir STATE --node gpu-01 --sglang ENGINE --auto-approve"
    Then the exit status is 0
    And stdout contains "Apply done: 1 Ready, 0 failed or blocked, 0 stopped."
    And the engine of pool "qwen" was started with "-m sglang.launch_server --model-path"
    And the engine of pool "qwen" was started with "--tp-size 1 --context-length 8192 --mem-fraction-static 0.75"
    And the engine of pool "qwen" has CUDA_VISIBLE_DEVICES set to the index of GPU 0 and CUDA_DEVICE_ORDER=PCI_BUS_ID
    And the processes of pool "qwen" hold 18 GiB on GPU 0 of the simulated node, and nothing on any other GPU
    And the endpoint of pool "qwen" answers GET /health with 200 and a body containing ""
    And the log of pool "qwen" contains "The server is fired up and ready to roll!"
    When I run "pool-managerd status --gpus SIM --state-dir STATE --node gpu-01 --format json"
    Then the JSON status of pool "qwen" is Ready with a pid and an endpoint

  @PM-1043
  Scenario: validate refuses an SGLang memory fraction above the pool's need, and the flags pool-managerd sets
    Given the config file "pools/qwen.cue":
      """
      pools: qwen: {
      	node:    "gpu-01"
      	engine:  "sglang"
      	model: path: "/models/qwen"
      	devices: [0]
      	vram:    18Gi
      	flags: ["--mem-fraction-static", "0.9", "--tp-size", "1"]
      }
      """
    When I run "pool-managerd validate CONFIG"
    Then the exit status is 1
    And an error is reported at "pools/qwen.cue:7:10" containing "sglang would take 21.6 GiB of GPU 0 (24.0 GiB), more than the pool declares for each GPU (vram 18.0 GiB over 1 GPUs = 18.0 GiB); the plan books only what vram says, so leave the flag out (pool-managerd passes --mem-fraction-static 0.75, derived from vram)"
    And an error is reported at "pools/qwen.cue:7:42" containing "\"--tp-size\": this sglang option is set by pool-managerd itself; the shard count is the number of devices"
    And 2 errors are reported

  @PM-1040
  Scenario: vLLM and TGI are told the share of each GPU that the pool declares, and a shutdown within its stop grace
    Given the config file "pools/chat.cue":
      """
      pools: chat: {
      	node:    "gpu-01"
      	engine:  "vllm"
      	model: {path: "WORKSPACE/models/qwen", ctx: 8192}
      	devices: [0]
      	vram:    18Gi
      }
      pools: mixtral: {
      	node:    "gpu-01"
      	engine:  "tgi"
      	model: {path: "WORKSPACE/models/qwen", ctx: 8192}
      	devices: [1]
      	vram:    9Gi
      }
      """
    When I run "pool-managerd apply CONFIG --gpus SIM --state-dir STATE --node gpu-01 --vllm ENGINE --tgi ENGINE --auto-approve"
    Then the exit status is 0
    And stdout contains "Apply done: 2 Ready, 0 failed or blocked, 0 stopped."
    And the engine of pool "chat" was started with "--max-model-len 8192 --gpu-memory-utilization 0.75"
    And the engine of pool "chat" has CUDA_VISIBLE_DEVICES set to the index of GPU 0 and CUDA_DEVICE_ORDER=PCI_BUS_ID
    And the processes of pool "chat" hold 18 GiB on GPU 0 of the simulated node, and nothing on any other GPU
    And the engine of pool "mixtral" was started with "--cuda-memory-fraction 0.8333 --graceful-termination-timeout 5"
    And the processes of pool "mixtral" hold 9 GiB on GPU 1 of the simulated node, and nothing on any other GPU

  @PM-1040
  Scenario: validate refuses engine settings that break management: a vLLM share above the need, a TGI shutdown longer than the grace, llama-server's --api-key
    Given the config file "pools/p.cue":
      """
      pools: chat: {
      	node: "gpu-01", engine: "vllm", model: path: "/models/qwen", devices: [0], vram: 18Gi
      	flags: ["--gpu-memory-utilization", "0.9"]
      }
      pools: mixtral: {
      	node: "gpu-01", engine: "tgi", model: path: "/models/mixtral", devices: [1], share: true, vram: 9Gi
      	flags: ["--graceful-termination-timeout", "90"]
      }
      pools: coder: {
      	node: "gpu-01", engine: "llamacpp", model: path: "/models/coder.gguf", devices: [1], share: true, vram: 2Gi
      	flags: ["--api-key", "secret"]
      }
      """
    When I run "pool-managerd validate CONFIG"
    Then the exit status is 1
    And an error is reported at "pools/p.cue:3:10" containing "vllm would take 21.6 GiB of GPU 0 (24.0 GiB), more than the pool declares"
    And an error is reported at "pools/p.cue:7:10" containing "on SIGTERM text-generation-launcher waits up to 90s for its router and then 90s for each of its 1 shards (180s in all), longer than restart.stopGrace (10s)"
    And an error is reported at "pools/p.cue:11:10" containing "puts /slots behind an API key (401 without it), so pool-managerd cannot see busy slots"
    And 3 errors are reported
