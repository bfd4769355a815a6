package daemon

import (
	"errors"
	"maps"
	"slices"
	"testing"

	"github.com/poolmanagerd/pool-managerd/reconcile"
	"github.com/poolmanagerd/pool-managerd/schema"
)

// TestForNode: the node's part of a config is worked out once per loader
// result; a load that returns the same result (nothing changed) reuses it,
// and each call gets maps of its own.
func TestForNode(t *testing.T) {
	d := &Daemon{opts: Options{Node: "a"}}
	fleet := func(nodeOfP string) *schema.Desired {
		return &schema.Desired{
			Nodes: map[string]*schema.Node{"a": {Name: "a"}, "b": {Name: "b"}},
			Pools: map[string]*schema.Pool{"p": {ID: "p", Node: nodeOfP}, "q": {ID: "q", Node: "b"}},
		}
	}
	all := fleet("a")
	first, err := d.forNode(all, "dir")
	if err != nil {
		t.Fatal(err)
	}
	if got := slices.Sorted(maps.Keys(first.Pools)); !slices.Equal(got, []string{"p"}) || first.OtherPools != 1 || first.Declared != all.Nodes["a"] {
		t.Fatalf("forNode: pools %v, other pools %d, declared %v; want [p], 1, node a", got, first.OtherPools, first.Declared)
	}
	kept := d.node
	// What a caller does to its copy (needs, the removal settle window)
	// must not reach the next load's.
	first.Needs["p"] = reconcile.Need{Source: "declared"}
	first.Pools["gone"] = &schema.Pool{ID: "gone"}

	again, err := d.forNode(all, "dir")
	if err != nil {
		t.Fatal(err)
	}
	if d.node != kept {
		t.Error("the same loader result was worked out again")
	}
	if len(again.Needs) != 0 || len(again.Pools) != 1 || again.Pools["p"] != all.Pools["p"] {
		t.Errorf("reused: pools %v, needs %v; want p alone and no needs", again.Pools, again.Needs)
	}

	moved, err := d.forNode(fleet("b"), "dir")
	if err != nil {
		t.Fatal(err)
	}
	if d.node == kept || len(moved.Pools) != 0 || moved.OtherPools != 2 {
		t.Errorf("a new loader result: pools %v, other pools %d, worked out again %v; want none, 2, true", moved.Pools, moved.OtherPools, d.node != kept)
	}

	unknown := fleet("b")
	delete(unknown.Nodes, "a")
	_, err = d.forNode(unknown, "dir")
	var diags schema.Diagnostics
	if !errors.As(err, &diags) || d.node != nil {
		t.Errorf("a config without the node: error %v, kept %v; want diagnostics and nothing kept", err, d.node)
	}
}
