Feature: Models pool-managerd fetches
  A pool may name its model by source and digest (`model.source` with `model.sha256`) in
  place of a path on the node. The daemon fetches it into the node's content-addressed model
  cache (STATE/models by default) in the phase Fetching, before Preloading: one download per
  digest however many pools use it, resumed with a range request after a restart, verified
  before anything is served. `plan` shows the fetch and its size, and estimates a remote
  GGUF's VRAM need from its header alone.

  A model server on loopback stands in for the remote (testkit/modelserver): MODELSERVER in a
  config file is its address, MODELDIGEST the sha256 of the model it serves. It holds a
  download's bytes back where a scenario must act halfway through one.

  Background:
    Given a simulated node with an RTX 3090 (24 GiB) and an RTX 3060 (12 GiB)
    And a node "gpu-01" with GPUs of 24 GiB and 12 GiB
    And a model server serving a small GGUF model at "/m.gguf"

  @PM-1050
  Scenario: A pool with a source is Fetching, then Preloading and Ready on the cached file
    Given the model server holds "/m.gguf" after half of its bytes
    And the config file "pools/a.cue":
      """
      pools: a: {
      	node:    "gpu-01"
      	engine:  "llamacpp"
      	model: {source: "MODELSERVER/m.gguf", sha256: "MODELDIGEST"}
      	devices: [0]
      	vram:    2Gi
      }
      """
    When the daemon is started
    Then the model server has sent half of "/m.gguf"
    And the daemon shows pool "a" Fetching with half of "/m.gguf" done
    And no engine runs for pool "a"
    When the model server releases "/m.gguf"
    Then the daemon shows pool "a" as Ready
    And the model cache holds a verified copy of "/m.gguf" and no partial download
    And the engine of pool "a" runs on the cached copy of "/m.gguf"
    And the daemon has logged pool "a" going Fetching, then Preloading, as separate JSON events

  @PM-1050
  Scenario: Two pools of one model share one download and one file
    Given the config file "pools/a.cue":
      """
      pools: a: {
      	node:    "gpu-01"
      	engine:  "llamacpp"
      	model: {source: "MODELSERVER/m.gguf", sha256: "MODELDIGEST"}
      	devices: [0]
      	vram:    2Gi
      }
      """
    When the daemon is started
    Then the daemon shows pool "a" as Ready
    When I save the config file "pools/b.cue":
      """
      pools: b: {
      	node:    "gpu-01"
      	engine:  "llamacpp"
      	model: {source: "MODELSERVER/m.gguf", sha256: "MODELDIGEST"}
      	devices: [1]
      	vram:    2Gi
      }
      """
    Then the daemon shows pool "b" as Ready
    And the model server saw 1 GET of "/m.gguf"
    And the engine of pool "b" runs on the cached copy of "/m.gguf"

  @PM-1050
  Scenario: A model whose bytes do not match its sha256 is never served, and its download is deleted
    Given the config file "pools/a.cue":
      """
      pools: a: {
      	node:    "gpu-01"
      	engine:  "llamacpp"
      	model: {source: "MODELSERVER/m.gguf", sha256: "0000000000000000000000000000000000000000000000000000000000000000"}
      	devices: [0]
      	vram:    2Gi
      	restart: {initialBackoff: "1h", maxBackoff: "1h", jitter: 0}
      }
      """
    When the daemon is started
    Then the daemon shows pool "a" Unready with a last error of class "model_digest_mismatch" and a hint
    And no engine was ever spawned for pool "a"
    And the model cache holds nothing of the digest "0000000000000000000000000000000000000000000000000000000000000000"

  @PM-1050
  Scenario: A download interrupted by a daemon killed with SIGKILL resumes from the bytes on disk
    Given the model server holds "/m.gguf" after half of its bytes
    And the config file "pools/a.cue":
      """
      pools: a: {
      	node:    "gpu-01"
      	engine:  "llamacpp"
      	model: {source: "MODELSERVER/m.gguf", sha256: "MODELDIGEST"}
      	devices: [0]
      	vram:    2Gi
      }
      """
    When the daemon is started
    Then the daemon shows pool "a" Fetching with half of "/m.gguf" done
    When I kill the daemon with SIGKILL
    And the model server releases "/m.gguf"
    And the daemon is started
    Then the daemon shows pool "a" as Ready
    And the model server's last GET of "/m.gguf" asked for the range from half of its bytes
    And the model cache holds a verified copy of "/m.gguf" and no partial download

  @PM-1050
  Scenario: A plan shows the fetch of a model that is not in the cache, with its size
    Given the config file "pools/a.cue":
      """
      pools: a: {
      	node:    "gpu-01"
      	engine:  "llamacpp"
      	model: {source: "MODELSERVER/m.gguf", sha256: "MODELDIGEST"}
      	devices: [0]
      	vram:    2Gi
      }
      """
    When I run "pool-managerd plan CONFIG --gpus SIM --state-dir STATE --node gpu-01"
    Then the exit status is 0
    And stdout contains "+ create   a"
    And the plan fetches "/m.gguf" with its size

  @PM-1050
  Scenario: A pull-request check blocks a remote GGUF too big for its GPUs, reading its header alone
    Given the model server serves a GGUF model shaped like Llama 70B at "/llama-70b.gguf"
    And the config file "pools/huge.cue":
      """
      pools: huge: {
      	node:    "gpu-01"
      	engine:  "llamacpp"
      	model: {source: "MODELSERVER/llama-70b.gguf", sha256: "7000000000000000000000000000000000000000000000000000000000000070", ctx: 8192}
      	devices: [1]
      }
      """
    When I run "pool-managerd plan CONFIG --gpus declared"
    Then the exit status is 1
    And stdout matches "blocked: insufficient VRAM on GPU 1 .*: needs \d+\.\d GiB for http://127\.0\.0\.1:\d+/llama-70b\.gguf at ctx 8192"
    And stderr contains "1 pool blocked on the declared GPUs: huge"
    And the model server sent only the header of "/llama-70b.gguf"
