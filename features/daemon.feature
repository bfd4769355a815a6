Feature: The daemon: config watching, resync, the API and operator actions
  In production nobody runs apply by hand: a commit lands in the config repository, the node
  picks it up, and the pools follow. `pool-managerd serve` watches the config directory,
  re-plans and applies on every settled change, keeps the last good config when a change
  does not load, resyncs on a timer and on GPU events, and serves an HTTP API on loopback.

  A config can be valid and momentarily incomplete: an editor that truncates a file before it
  writes it, a restore that copies nodes/ before pools/. A pool that leaves the config therefore
  keeps serving until its absence has held for the settle window (`--removal-settle`, 5 s by
  default), and a config that leaves the node no pools while its engines run is held back
  unless `--allow-empty`.

  These scenarios run on a simulated RTX 3090 + RTX 3060 node with the bundled stand-in
  engine. "The daemon is started" runs
  `pool-managerd serve --config CONFIG --gpus SIM --state-dir STATE --node gpu-01
  --listen 127.0.0.1:0 --debounce 50ms --log-format json --llama-server ENGINE`
  in the background, with the default settle window; a scenario that wants a removal soon
  passes a short one. The API's address is read from STATE/api.addr.

  Background:
    Given a simulated node with an RTX 3090 (24 GiB) and an RTX 3060 (12 GiB)
    And a node "gpu-01" with GPUs of 24 GiB and 12 GiB
    And a model file "models/model.gguf"
    And the config file "pools/coder.cue":
      """
      pools: coder: {
      	node:    "gpu-01"
      	engine:  "llamacpp"
      	model: {path: "WORKSPACE/models/model.gguf", ctx: 4096}
      	devices: [0]
      	vram:    4Gi
      	restart: {initialBackoff: "100ms", jitter: 0}
      }
      """
    And the config file "pools/chat.cue":
      """
      pools: chat: {
      	node:    "gpu-01"
      	engine:  "llamacpp"
      	model: {path: "WORKSPACE/models/model.gguf", ctx: 4096}
      	devices: [1]
      	vram:    4Gi
      	restart: {initialBackoff: "100ms", jitter: 0}
      }
      """

  @PM-1030 @PM-1020
  Scenario: A saved edit is picked up, planned and applied to the pool it changes only
    Given the daemon is started
    Then the daemon is ready
    And the daemon shows pool "coder" as Ready
    And the daemon shows pool "chat" as Ready
    When I note the engine pids
    And I save the config file "pools/chat.cue":
      """
      pools: chat: {
      	node:    "gpu-01"
      	engine:  "llamacpp"
      	model: {path: "WORKSPACE/models/model.gguf", ctx: 8192}
      	devices: [1]
      	vram:    4Gi
      	restart: {initialBackoff: "100ms", jitter: 0}
      }
      """
    Then the daemon shows pool "chat" Ready with a new engine pid
    And pool "coder" has the engine pid noted
    And the engine of pool "chat" was started with "--ctx-size 8192"
    And the daemon has logged an info event containing "config changed: pools/chat.cue"

  @PM-1030
  Scenario: A pool added in a new folder is started; a removed file stops its pool
    Given the daemon is started with "--removal-settle 200ms"
    And the daemon shows pool "chat" as Ready
    When I save the config file "team-b/pools/embed.cue":
      """
      pools: embed: {
      	node:    "gpu-01"
      	engine:  "llamacpp"
      	model: {path: "WORKSPACE/models/model.gguf", ctx: 2048}
      	devices: [0]
      	vram:    2Gi
      	share:   true
      }
      pools: coder: share: true
      """
    Then the daemon shows pool "embed" as Ready
    When I remove the config file "pools/chat.cue"
    Then the daemon does not know pool "chat"
    And no engine process runs for pool "chat"

  @PM-1030
  Scenario Outline: A change that does not load is never applied; the last good config stays in force
    Given the daemon is started
    And the daemon shows pool "coder" as Ready
    And the daemon shows pool "chat" as Ready
    When I note the engine pids
    And I save the config file "pools/chat.cue":
      """
      <broken>
      """
    Then the daemon's config is invalid with an error at "<where>" containing "<message>"
    And the metric pool_managerd_config_valid is 0
    And the daemon has logged an error event containing "the last good config stays in force"
    And pool "chat" has the engine pid noted
    And pool "coder" has the engine pid noted
    And the daemon shows pool "chat" as Ready
    When I save the config file "pools/chat.cue":
      """
      pools: chat: {node: "gpu-01", engine: "llamacpp", model: {path: "WORKSPACE/models/model.gguf", ctx: 2048}, devices: [1], vram: 4Gi}
      """
    Then the daemon's config is valid
    And the metric pool_managerd_config_valid is 1
    And the daemon shows pool "chat" Ready with a new engine pid
    And pool "coder" has the engine pid noted

    Examples:
      | broken                                                                                                       | where            | message |
      | pools: chat: { node: "gpu-01"                                                                                | pools/chat.cue:1 | expected |
      | pools: chat: {node: "gpu-01", engine: "llamacpp", model: path: "WORKSPACE/models/model.gguf", devices: [7]} | pools/chat.cue:1 | GPU 7   |
      | pools: chat: {node: "gpu-01", engine: "ollama", model: path: "WORKSPACE/models/model.gguf", devices: [1]}    | pools/chat.cue:1 | engine  |

  @PM-1030
  Scenario: A half-written file is never applied
    Given the daemon is started
    And the daemon shows pool "chat" as Ready
    When I note the engine pids
    And I write the config file "pools/chat.cue" in two parts with a pause between them:
      """
      pools: chat: {
      	node:    "gpu-01"
      	engine:  "llamacpp"
      <pause>
      	model: {path: "WORKSPACE/models/model.gguf", ctx: 8192}
      	devices: [1]
      	vram:    4Gi
      }
      """
    Then the daemon shows pool "chat" Ready with a new engine pid
    And the log of pool "chat" holds 2 starts
    And the engine of pool "chat" was started with "--ctx-size 8192"
    And the daemon has logged an error event containing "pools/chat.cue"
    And pool "coder" has the engine pid noted

  @PM-1030 @PM-1034
  Scenario: A pool file truncated in place and written again a second later leaves its engine alone
    # An editor or scp that writes in place: the file holds 0 bytes until its content is written.
    # The daemon loads the config without chat in between; chat keeps serving until its removal
    # settles (5 s by default), and is back long before.
    Given the daemon is started
    And the daemon shows pool "coder" as Ready
    And the daemon shows pool "chat" as Ready
    When I note the engine pids
    And I truncate the config file "pools/chat.cue" to 0 bytes in place
    Then the daemon shows pool "chat" pending removal, Ready with the noted engine pid
    And the metric pool_managerd_pools_pending_removal is 1
    And the daemon has logged an info event containing "pool left the config: its engine keeps running until its removal settles"
    When I write the config file "pools/chat.cue" in place, 1s after the last change:
      """
      pools: chat: {
      	node:    "gpu-01"
      	engine:  "llamacpp"
      	model: {path: "WORKSPACE/models/model.gguf", ctx: 4096}
      	devices: [1]
      	vram:    4Gi
      	restart: {initialBackoff: "100ms", jitter: 0}
      }
      """
    Then the daemon has logged an info event containing "pool is back in the config before its removal settled: its engine is untouched"
    And the daemon shows pool "chat" Ready with the noted engine pid and no removal pending
    And the metric pool_managerd_pools_pending_removal is 0
    And the daemon never logged a stop of pool "chat"
    And the log of pool "chat" holds 1 start
    And pool "coder" has the engine pid noted

  @PM-1030 @PM-1034
  Scenario: A config tree restored in two steps, nodes/ first and pools/ a second later, stops no engine
    # As rm -r then cp -r, rsync or a restore from backup: the daemon sees an empty tree (invalid:
    # the last good config stays), then a node with no pools (held back), then the pools.
    Given the daemon is started
    And the daemon shows pool "coder" as Ready
    And the daemon shows pool "chat" as Ready
    When I note the engine pids
    And I move the config tree aside
    Then the daemon's config is invalid with an error containing "no .cue files"
    When I restore "nodes" from what was moved aside
    Then the daemon's config is held back since the last change, with a reason containing:
      | no pools      |
      | chat, coder   |
      | stop --all    |
      | --allow-empty |
    And the metric pool_managerd_config_held_back is 1
    And the daemon's config in force has the pools "chat, coder"
    And the daemon shows pool "coder" Ready with the noted engine pid and no removal pending
    And the daemon shows pool "chat" Ready with the noted engine pid and no removal pending
    When I restore "pools" from what was moved aside, 1s after the last change
    Then the daemon's config is applied, not held back
    And the metric pool_managerd_config_held_back is 0
    And the daemon shows pool "coder" Ready with the noted engine pid and no removal pending
    And the daemon shows pool "chat" Ready with the noted engine pid and no removal pending
    And the daemon never logged a stop of pool "coder"
    And the daemon never logged a stop of pool "chat"
    And the log of pool "coder" holds 1 start
    And the log of pool "chat" holds 1 start

  @PM-1030 @PM-1034
  Scenario: A config that leaves the node no pools is held back: nothing is stopped, and /v1/config, the log and a metric say why
    Given the daemon is started
    And the daemon shows pool "coder" as Ready
    And the daemon shows pool "chat" as Ready
    When I note the engine pids
    And I move the config folder "pools" aside
    Then the daemon's config is held back since the last change, with a reason containing:
      | no pools      |
      | chat, coder   |
      | stop --all    |
      | --allow-empty |
    And the daemon has logged a warn event containing "config held back: the config leaves node gpu-01 no pools while 2 engines run"
    And the metric pool_managerd_config_held_back is 1
    And the metric pool_managerd_pools_pending_removal is 0
    And the daemon's config in force has the pools "chat, coder"
    And the daemon shows pool "coder" Ready with the noted engine pid and no removal pending
    And the daemon shows pool "chat" Ready with the noted engine pid and no removal pending
    When I restore "pools" from what was moved aside
    Then the daemon's config is applied, not held back
    And the metric pool_managerd_config_held_back is 0
    And the daemon shows pool "coder" Ready with the noted engine pid and no removal pending
    And the daemon shows pool "chat" Ready with the noted engine pid and no removal pending
    And the daemon never logged a stop of pool "coder"
    And the daemon never logged a stop of pool "chat"

  @PM-1030 @PM-1034
  Scenario: With --allow-empty, a config that leaves the node no pools is applied: its pools are stopped once their removal settles
    Given the daemon is started with "--allow-empty --removal-settle 3s"
    And the daemon shows pool "coder" as Ready
    And the daemon shows pool "chat" as Ready
    When I note the engine pids
    And I move the config folder "pools" aside
    Then the daemon shows pool "coder" pending removal, Ready with the noted engine pid
    And the daemon shows pool "chat" pending removal, Ready with the noted engine pid
    And the daemon's config is applied, not held back
    And the daemon's config in force has the pools ""
    And the metric pool_managerd_config_held_back is 0
    And the metric pool_managerd_pools_pending_removal is 2
    Then the daemon does not know pool "coder"
    And the daemon does not know pool "chat"
    And no engine process runs for pool "coder"
    And no engine process runs for pool "chat"
    And the daemon stopped the engine of pool "coder" once, not before the removal time it showed
    And the daemon stopped the engine of pool "chat" once, not before the removal time it showed
    And the metric pool_managerd_pools_pending_removal is 0

  @PM-1030 @PM-1034
  Scenario: A pool really removed keeps serving until its removal settles, then is stopped once
    Given the daemon is started with "--removal-settle 3s"
    And the daemon shows pool "coder" as Ready
    And the daemon shows pool "chat" as Ready
    When I note the engine pids
    And I remove the config file "pools/chat.cue"
    Then the daemon shows pool "chat" pending removal, Ready with the noted engine pid
    And the metric pool_managerd_pools_pending_removal is 1
    And the daemon's config in force has the pools "coder"
    Then the daemon does not know pool "chat"
    And no engine process runs for pool "chat"
    And the daemon stopped the engine of pool "chat" once, not before the removal time it showed
    And the engine of pool "chat" exited on SIGTERM, with no SIGKILL
    And the metric pool_managerd_pools_pending_removal is 0
    And the daemon never logged a stop of pool "coder"
    And pool "coder" has the engine pid noted

  @PM-1030 @PM-1034
  Scenario: A pool renamed on a GPU with memory for one waits for the old one's removal, without a failure
    # GPU 1 has 12 GiB: chat holds 4 GiB of it until its removal settles, talk needs 10 GiB.
    Given the daemon is started with "--removal-settle 3s"
    And the daemon shows pool "coder" as Ready
    And the daemon shows pool "chat" as Ready
    When I note the engine pids
    And I save the config file "pools/chat.cue":
      """
      pools: talk: {
      	node:    "gpu-01"
      	engine:  "llamacpp"
      	model: {path: "WORKSPACE/models/model.gguf", ctx: 4096}
      	devices: [1]
      	vram:    10Gi
      	restart: {initialBackoff: "100ms", jitter: 0}
      }
      """
    Then the daemon shows pool "talk" as Pending with no engine, the reason "waiting for its GPUs: a pool that left the config holds them until its removal settles" and no failure recorded
    And the daemon shows pool "chat" pending removal, Ready with the noted engine pid
    Then the daemon shows pool "talk" as Ready
    And the daemon shows pool "talk" with no failure recorded
    And the log of pool "talk" holds 1 start
    And the daemon does not know pool "chat"
    And no engine process runs for pool "chat"
    And the daemon stopped the engine of pool "chat" once, not before the removal time it showed
    And the daemon never logged a stop of pool "talk"
    And pool "coder" has the engine pid noted

  @PM-1031 @OC-POOL-3011
  Scenario: An engine killed by hand is restarted at once, not at the next resync
    Given the daemon is started with "--resync 1h"
    And the daemon shows pool "coder" as Ready
    When I note the engine pids
    And I kill the engine of pool "coder" with SIGKILL
    Then the daemon shows pool "coder" with 1 restart and a last error of class "signaled" with a message, a time and a hint
    And the daemon shows pool "coder" Ready with a new engine pid
    And pool "chat" has the engine pid noted
    And the metric pool_managerd_restarts_total{pool="coder",reason="signaled"} is 1

  @PM-1031
  Scenario: An engine that stops answering its health check once Ready is restarted between resyncs
    Given the config file "pools/chat.cue":
      """
      pools: chat: {
      	node:    "gpu-01"
      	engine:  "llamacpp"
      	model: {path: "WORKSPACE/models/model.gguf", ctx: 4096}
      	devices: [1]
      	vram:    4Gi
      	env: FAKE_ENGINE_UNHEALTHY_AFTER: "1s"
      	restart: {initialBackoff: "1h", maxBackoff: "1h", jitter: 0}
      }
      """
    And the daemon is started with "--resync 1h --health-interval 200ms"
    And the daemon shows pool "chat" as Ready
    Then the daemon has logged a warn event containing "engine health check failed"
    And the daemon shows pool "chat" with 0 restarts and a last error of class "health_failed" with a message, a time and a hint
    And no engine process runs for pool "chat"
    And the daemon shows pool "coder" as Ready

  @PM-1031 @OC-POOL-3010
  Scenario: A lost GPU blocks its pool; the resync timer brings it back once the GPU returns
    Given the daemon is started with "--resync 500ms"
    And the daemon shows pool "chat" as Ready
    When I run "pool-managerd sim lose SIMDIR --gpu 1"
    Then the daemon shows pool "chat" as Unready
    And no engine process runs for pool "chat"
    And the daemon has logged a warn event containing "GPU 1 is lost"
    And the daemon shows pool "coder" as Ready
    When I run "pool-managerd sim restore SIMDIR --gpu 1"
    Then the daemon shows pool "chat" as Ready

  @PM-1022 @PM-1021
  Scenario: A daemon killed with SIGKILL is replaced by one that adopts every engine, restarting none
    Given the daemon is started
    And the daemon shows pool "coder" as Ready
    And the daemon shows pool "chat" as Ready
    When I note the engine pids
    And I run "pool-managerd apply CONFIG --gpus SIM --state-dir STATE --node gpu-01 --llama-server ENGINE --auto-approve"
    Then the exit status is 1
    And stderr contains "pool-managerd serve"
    When I kill the daemon with SIGKILL
    And the daemon is started
    Then the daemon is ready
    And the daemon shows pool "coder" as Ready
    And the daemon shows pool "chat" as Ready
    And pool "coder" has the engine pid noted
    And pool "chat" has the engine pid noted
    And the log of pool "coder" holds 1 start
    And the log of pool "chat" holds 1 start
    And the daemon shows pool "coder" with 0 restarts

  @PM-1030 @PM-1022
  Scenario: SIGHUP reloads the config, even a change the watcher cannot see; SIGTERM stops the daemon and leaves the engines running
    # pools/chat.cue links to a file outside the config directory. The watcher does not see that
    # file edited in place, and the resync timer is an hour away: only SIGHUP can load the change.
    Given the config file "pools/chat.cue" is a link to a file outside the config directory
    And the daemon is started with "--resync 1h"
    And the daemon shows pool "coder" as Ready
    And the daemon shows pool "chat" as Ready
    When I note the engine pids
    And I edit the file that "pools/chat.cue" links to, in place:
      """
      pools: chat: {
      	node:    "gpu-01"
      	engine:  "llamacpp"
      	model: {path: "WORKSPACE/models/model.gguf", ctx: 8192}
      	devices: [1]
      	vram:    4Gi
      	restart: {initialBackoff: "100ms", jitter: 0}
      }
      """
    And I send SIGHUP to the daemon
    Then the daemon has logged an info event containing "SIGHUP: reloading the config"
    And the daemon has loaded its config again since the SIGHUP
    And the daemon has logged "config loaded" for the reason "SIGHUP"
    And the daemon shows pool "chat" Ready with a new engine pid
    And the engine of pool "chat" was started with "--ctx-size 8192"
    And pool "coder" has the engine pid noted
    When I note the engine pids
    And I send SIGTERM to the daemon
    Then the daemon exits with status 0
    And pool "coder" has the engine pid noted
    And pool "chat" has the engine pid noted
    And the daemon has logged an info event containing "engines keep running"

  @PM-1032 @OC-POOL-3003
  Scenario: The API shows health, readiness, each pool's preload and last error, the config and the metrics
    Given the config file "pools/broken.cue":
      """
      pools: broken: {
      	node:    "gpu-01"
      	engine:  "llamacpp"
      	model: path: "WORKSPACE/models/model.gguf"
      	devices: [1]
      	vram:    2Gi
      	share:   true
      	env: FAKE_ENGINE_FAIL_LOAD: "1"
      	restart: {initialBackoff: "1h", maxBackoff: "1h", jitter: 0}
      }
      pools: chat: share: true
      """
    And the daemon is started
    When I GET "/healthz" from the daemon
    Then the response status is 200
    And the daemon is ready
    And the daemon shows pool "coder" with the preload state "loaded" and its start and load times
    And the daemon shows pool "broken" with 0 restarts and a last error of class "exited" with a message, a time and a hint
    And the daemon shows pool "broken" with the preload state "failed" and its start and load times
    When I GET "/v1/pools/broken" from the daemon
    Then the response status is 200
    And the response contains "nextRetry"
    When I GET "/v1/pools/nope" from the daemon
    Then the response status is 404
    And the response contains "unknown_pool"
    When I GET "/v1/config" from the daemon
    Then the response contains ""valid": true"
    When I GET "/metrics" from the daemon
    Then the response contains "pool_managerd_pool_ready{pool="coder"} 1"

  @PM-1036
  Scenario: Each pool has its own readiness probe (200 when Ready, 503 with its phase otherwise); its counters are exported from 0
    Given the config file "pools/broken.cue":
      """
      pools: broken: {
      	node:    "gpu-01"
      	engine:  "llamacpp"
      	model: path: "WORKSPACE/models/model.gguf"
      	devices: [1]
      	vram:    2Gi
      	share:   true
      	env: FAKE_ENGINE_FAIL_LOAD: "1"
      	restart: {initialBackoff: "1h", maxBackoff: "1h", jitter: 0}
      }
      pools: chat: share: true
      """
    And the daemon is started
    And the daemon shows pool "coder" as Ready
    And the daemon shows pool "broken" with 0 restarts and a last error of class "exited" with a message, a time and a hint
    When I GET "/v1/pools/coder/ready" from the daemon
    Then the response status is 200
    And the response contains ""ready": true"
    And the response contains ""phase": "Ready""
    When I GET "/v1/pools/broken/ready" from the daemon
    Then the response status is 503
    And the response contains ""ready": false"
    And the response contains ""phase": "Unready""
    When I GET "/v1/pools/nope/ready" from the daemon
    Then the response status is 404
    And the metric pool_managerd_restarts_total{pool="coder",reason="cuda_error"} is 0
    And the metric pool_managerd_restarts_total{pool="broken",reason="exited"} is 0
    And the metric pool_managerd_preload_total{pool="coder",outcome="failure",reason="health_timeout"} is 0
    And the metric pool_managerd_preload_total{pool="broken",outcome="failure",reason="exited"} is 1
    And the metric pool_managerd_engine_kills_total{pool="coder"} is 0
    And the metric pool_managerd_driver_errors_total{gpu="1"} is 0

  @PM-1032
  Scenario: reset and stop go through the daemon while it holds the state directory
    Given the daemon is started with "--resync 1h"
    And the daemon shows pool "coder" as Ready
    When I run "pool-managerd stop coder --state-dir STATE"
    Then the exit status is 0
    And stdout contains "Stopped coder through the daemon"
    And the daemon shows pool "coder" as Stopped
    And no engine process runs for pool "coder"
    When I send SIGHUP to the daemon
    Then the daemon has loaded its config again since the SIGHUP
    And the daemon shows pool "coder" as Stopped
    And no engine process runs for pool "coder"
    When I run "pool-managerd reset coder --state-dir STATE"
    Then the exit status is 0
    And the daemon shows pool "coder" as Ready

  @PM-1032
  Scenario: Listening beyond loopback needs a bearer token; the probes stay open
    When I run "pool-managerd serve --config CONFIG --gpus SIM --state-dir STATE --node gpu-01 --listen 0.0.0.0:0"
    Then the exit status is 2
    And stderr contains "without a bearer token"
    Given the daemon is started with POOL_MANAGERD_TOKEN=s3cret and "--listen 0.0.0.0:0"
    When I GET "/healthz" from the daemon
    Then the response status is 200
    And the daemon is ready
    When I GET "/v1/pools" from the daemon
    Then the response status is 401
    When I GET "/v1/pools" from the daemon with the token "wrong"
    Then the response status is 401
    When I GET "/v1/pools" from the daemon with the token "s3cret"
    Then the response status is 200
    And the response contains ""pool": "coder""
