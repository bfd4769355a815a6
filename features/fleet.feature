Feature: A fleet shares one config repository
  Pools name their node; every node runs its own daemon on the same config (a clone of the
  repository) and acts only on its own node's pools. There is no coordinator: moving a pool
  is a change of its node field, which one daemon stops and the other starts.

  Each node here is simulated in a directory of its own, with one GPU, and has its own state
  directory and its own daemon (`pool-managerd serve --node NAME`); the three daemons share
  one config directory.

  Background:
    Given a simulated node "a" with one GPU of 24 GiB
    And a simulated node "b" with one GPU of 24 GiB
    And a simulated node "c" with one GPU of 24 GiB
    And a model file "models/model.gguf"
    And the config file "pools/fleet.cue":
      """
      _pool: {engine: "llamacpp", model: path: "WORKSPACE/models/model.gguf", devices: [0], vram: 4Gi, share: true}
      pools: {
      	a1: _pool & {node: "a"}
      	a2: _pool & {node: "a"}
      	b1: _pool & {node: "b"}
      	c1: _pool & {node: "c"}
      }
      """

  @PM-1033
  Scenario: Three daemons on one config each run exactly their node's pools; a moved pool follows its node
    # Node a stops a moved pool once its removal settles: a short settle window keeps this quick.
    # Node a keeps a1, so the move does not leave it empty (that config would be held back).
    When the daemon of node "a" is started with "--removal-settle 200ms"
    And the daemon of node "b" is started
    And the daemon of node "c" is started
    Then the daemon of node "a" shows pool "a1" as Ready
    And the daemon of node "a" shows pool "a2" as Ready
    And the daemon of node "b" shows pool "b1" as Ready
    And the daemon of node "c" shows pool "c1" as Ready
    And the daemon of node "a" knows only pools "a1, a2"
    And the daemon of node "b" knows only pool "b1"
    And the daemon of node "c" knows only pool "c1"
    And the engines on node "a" are those of pools "a1, a2"
    And the engines on node "b" are those of pool "b1"
    And the engines on node "c" are those of pool "c1"
    When I save the config file "pools/fleet.cue":
      """
      _pool: {engine: "llamacpp", model: path: "WORKSPACE/models/model.gguf", devices: [0], vram: 4Gi, share: true}
      pools: {
      	a1: _pool & {node: "a"}
      	a2: _pool & {node: "b"}
      	b1: _pool & {node: "b"}
      	c1: _pool & {node: "c"}
      }
      """
    Then the daemon of node "b" shows pool "a2" as Ready
    And the daemon of node "a" has logged an info event containing "pool moved to node b: its engine keeps running until its removal settles"
    And the daemon of node "a" knows only pool "a1"
    And the engines on node "a" are those of pool "a1"
    And the engines on node "b" are those of pools "a2, b1"
    And the engines on node "c" are those of pool "c1"
