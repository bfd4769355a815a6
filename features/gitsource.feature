Feature: The daemon follows a Git repository itself (serve --git)
  A fleet keeps its config in a Git repository. With `serve --git URL` the daemon fetches the
  branch itself (go-git, no git binary), checks each new commit out into a directory of its own
  and switches to it at once, so it never loads a half-updated tree. It applies a commit as a
  whole, or not at all, and says which commit runs: /v1/config shows lastAppliedRevision and
  lastAttemptedRevision, the metric pool_managerd_config_revision_info carries the commit, each
  "config loaded" log event names it, and `status` prints it.

  These scenarios run on a simulated RTX 3090 + RTX 3060 node with the bundled stand-in engine.
  A bare repository in the scenario's workspace stands in for the remote, and a work clone of it
  commits and pushes. "The daemon is started following the repository every 200ms" runs
  `pool-managerd serve --git REPO --git-interval 200ms --gpus SIM --state-dir STATE --node gpu-01
  --listen 127.0.0.1:0 --debounce 50ms --log-format json --llama-server ENGINE` in the background.
  The scenarios wait on what the daemon reports, never on the clock.

  Background:
    Given a simulated node with an RTX 3090 (24 GiB) and an RTX 3060 (12 GiB)
    And a model file "models/model.gguf"
    And a Git repository standing in for the config remote
    And the repository holds a node "gpu-01" with GPUs of 24 GiB and 12 GiB
    And I write the repository's file "pools/coder.cue":
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
    And I commit and push it as "first"

  @PM-1030 @PM-1035
  Scenario: A new commit is applied at the next fetch, and its revision is shown everywhere
    Given the daemon is started following the repository every 200ms
    Then the daemon has applied commit "first"
    And the daemon shows pool "coder" as Ready
    When I note the engine pids
    And I write the repository's file "pools/chat.cue":
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
    And I commit and push it as "second"
    Then the daemon has applied commit "second"
    And the daemon shows pool "chat" as Ready
    And pool "coder" has the engine pid noted
    And the metric pool_managerd_config_revision_info names commit "second"
    And the metric pool_managerd_git_fetch_ok is 1
    And the daemon has logged "config loaded" for commit "second"
    When I run "pool-managerd status --gpus SIM --state-dir STATE --node gpu-01"
    Then the exit status is 0
    And stdout names commit "second" as the applied revision

  @PM-1030 @PM-1035
  Scenario: A commit that fails to load is reported with its hash and never applied; the next good one is
    Given the daemon is started following the repository every 200ms
    And the daemon has applied commit "first"
    And the daemon shows pool "coder" as Ready
    When I note the engine pids
    And I write the repository's file "pools/broken.cue":
      """
      pools: coder: colour: "red"
      """
    And I commit and push it as "bad"
    Then the daemon has refused commit "bad" with an error containing "colour"
    And the daemon's applied revision is still commit "first"
    And the daemon has logged "config invalid" for commit "bad"
    And the metric pool_managerd_config_valid is 0
    And the metric pool_managerd_config_revision_info names commit "first"
    And pool "coder" has the engine pid noted
    When I remove the repository's file "pools/broken.cue"
    And I commit and push it as "fixed"
    Then the daemon has applied commit "fixed"
    And the daemon's config is valid
    And pool "coder" has the engine pid noted

  @PM-1030 @PM-1035
  Scenario: A force-pushed branch is followed
    Given I write the repository's file "pools/chat.cue":
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
    And I commit and push it as "second"
    And the daemon is started following the repository every 200ms with "--removal-settle 200ms"
    And the daemon has applied commit "second"
    And the daemon shows pool "chat" as Ready
    And the daemon shows pool "coder" as Ready
    When I note the engine pids
    And I reset the repository's branch to commit "first"
    And I write the repository's file "pools/coder.cue":
      """
      pools: coder: {
      	node:    "gpu-01"
      	engine:  "llamacpp"
      	model: {path: "WORKSPACE/models/model.gguf", ctx: 8192}
      	devices: [0]
      	vram:    4Gi
      	restart: {initialBackoff: "100ms", jitter: 0}
      }
      """
    And I commit and force-push it as "rewritten"
    Then the daemon has applied commit "rewritten"
    And the daemon shows pool "coder" Ready with a new engine pid
    And the engine of pool "coder" was started with "--ctx-size 8192"
    And the daemon does not know pool "chat"

  @PM-1030 @PM-1035
  Scenario: An unreachable remote is reported and retried with a backoff while the pools keep running
    Given the daemon is started following the repository every 200ms
    And the daemon has applied commit "first"
    And the daemon shows pool "coder" as Ready
    When I note the engine pids
    And the repository becomes unreachable
    Then the daemon reports 3 failed fetches in a row with an error containing "repository not found"
    And the fetch retries back off
    And the metric pool_managerd_git_fetch_ok is 0
    And the daemon has logged a warn event containing "git fetch failed"
    And the daemon's applied revision is still commit "first"
    And the daemon's config is valid
    And the daemon shows pool "coder" as Ready
    And pool "coder" has the engine pid noted
    When the repository is reachable again
    And I write the repository's file "pools/chat.cue":
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
    And I commit and push it as "second"
    Then the daemon has applied commit "second"
    And the metric pool_managerd_git_fetch_ok is 1
    And the daemon shows pool "chat" as Ready
    And pool "coder" has the engine pid noted

  @PM-1030 @PM-1035
  Scenario: A commit that deletes every pool of the node is held back
    Given the daemon is started following the repository every 200ms
    And the daemon has applied commit "first"
    And the daemon shows pool "coder" as Ready
    When I note the engine pids
    And I remove the repository's file "pools/coder.cue"
    And I commit and push it as "empty"
    Then the daemon holds commit "empty" back with a reason containing "no pools"
    And the metric pool_managerd_config_held_back is 1
    And the daemon has logged "config held back" for commit "empty"
    And the daemon's applied revision is still commit "first"
    And the daemon shows pool "coder" as Ready
    And pool "coder" has the engine pid noted
