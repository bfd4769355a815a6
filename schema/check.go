package schema

import (
	"fmt"
	"math"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"
)

// RatioTolerance is how far split ratios may be off: their sum from 1, an
// even split from 1/n, the smallest GPU's ratio above its cap.
const RatioTolerance = 1e-3

// poolsByNode groups pools by the node they name.
func poolsByNode(pools map[string]*Pool) map[string][]*Pool {
	out := map[string][]*Pool{}
	for _, p := range pools {
		out[p.Node] = append(out[p.Node], p)
	}
	return out
}

// nodeCheck is what the checks of one node name read, and what they found.
// Every check involves one node: its declared GPUs, and the pools that name
// it (a GPU or a port is shared only by pools of one node). A pool that names
// an undeclared node is reported with the list of declared nodes.
type nodeCheck struct {
	// node is the declared node; nil when pools name a node not declared.
	node       *Node
	nodeBroken bool
	// pools are the pools that name the node, in the order the loader's
	// groups give them; poolBroken is theirs.
	pools      []*Pool
	poolBroken []bool
	// declared lists the declared nodes, when node is nil.
	declared string
	diags    Diagnostics
}

// sameInput reports whether the checks of a and b read the same values. The
// loader gives the same *Node and *Pool for a group of files that did not
// change, and nothing changes them after the load: equal pointers are equal
// values. (A nodeCheck holds its pointers, so they cannot be reused for others.)
// The broken marks come from the groups that give the values, so they follow
// the pointers; they are compared all the same, being inputs of the checks.
// Pools in another order are taken for other input: they are checked again.
func (a *nodeCheck) sameInput(b *nodeCheck) bool {
	return a.node == b.node && a.nodeBroken == b.nodeBroken && a.declared == b.declared &&
		slices.Equal(a.pools, b.pools) && slices.Equal(a.poolBroken, b.poolBroken)
}

// checkByNode runs the checks that need more than one pool or the declared
// inventory on d, node by node. byNode gives d's pools grouped by the node
// they name, in one map or several (one per group of files, as the loader
// has them). Pools and nodes in broken (already reported) are left out. The
// diagnostics of a node whose checks read the same values as in prev are
// taken from there, so that a load after one file changed checks only the
// nodes it touches. It returns the diagnostics, in no particular order (the
// loader sorts them), and what a next load may reuse.
func checkByNode(d *Desired, byNode []map[string][]*Pool, broken map[string]bool, prev map[string]*nodeCheck) (Diagnostics, map[string]*nodeCheck) {
	checks := make(map[string]*nodeCheck, len(d.Nodes))
	for name, n := range d.Nodes {
		checks[name] = &nodeCheck{node: n, nodeBroken: len(broken) > 0 && broken["nodes."+name]}
	}
	for _, group := range byNode {
		for name, pools := range group {
			in, ok := checks[name]
			if !ok {
				in = &nodeCheck{}
				checks[name] = in
			}
			in.pools = append(in.pools, pools...)
		}
	}
	declared := ""
	if len(checks) > len(d.Nodes) {
		declared = listOrNone(d.SortedNodeNames())
	}
	c := &checker{d: d, declared: declared}
	var diags Diagnostics
	for name, in := range checks {
		in.poolBroken = make([]bool, len(in.pools))
		if len(broken) > 0 {
			for i, p := range in.pools {
				in.poolBroken[i] = broken["pools."+p.ID]
			}
		}
		if in.node == nil {
			in.declared = declared
		}
		if old, ok := prev[name]; ok && old.sameInput(in) {
			in.diags = old.diags
		} else {
			c.diags = nil
			c.node(in)
			in.diags = c.diags
		}
		diags = append(diags, in.diags...)
	}
	diags = append(diags, uuidsAcrossNodes(d, broken)...)
	return diags, checks
}

// uuidsAcrossNodes reports a GPU UUID declared on two nodes (a GPU is in one
// machine): the second declaration, in the order of the files, naming the
// first. Two GPUs of one node with the same UUID are the node's own check.
// It reads every node, so it runs on each load, outside the reused checks;
// it is one pass over the declared GPUs.
func uuidsAcrossNodes(d *Desired, broken map[string]bool) Diagnostics {
	type decl struct {
		node  *Node
		i     int
		field string
		pos   Pos
	}
	// Group the declarations by UUID first: a position is a lookup in the
	// CUE value, too dear for every GPU of a fleet on every load, so only
	// the UUIDs declared on two nodes or more get theirs.
	byUUID := map[string][]decl{}
	for _, name := range d.SortedNodeNames() {
		n := d.Nodes[name]
		if broken["nodes."+name] {
			continue
		}
		for i, g := range n.GPUs {
			if g.UUID == "" {
				continue
			}
			u := strings.ToLower(g.UUID)
			byUUID[u] = append(byUUID[u], decl{node: n, i: i})
		}
	}
	var decls []decl
	for _, ds := range byUUID {
		if !slices.ContainsFunc(ds[1:], func(x decl) bool { return x.node != ds[0].node }) {
			continue
		}
		for _, x := range ds {
			x.field = fmt.Sprintf("gpus[%d].uuid", x.i)
			x.pos = x.node.Source.Of(x.field)
			decls = append(decls, x)
		}
	}
	slices.SortStableFunc(decls, func(a, b decl) int {
		if c := strings.Compare(a.pos.File, b.pos.File); c != 0 {
			return c
		}
		if c := a.pos.Line - b.pos.Line; c != 0 {
			return c
		}
		if c := a.pos.Column - b.pos.Column; c != 0 {
			return c
		}
		return strings.Compare(a.node.Name, b.node.Name)
	})
	var diags Diagnostics
	first := map[string]decl{}
	for _, x := range decls {
		uuid := strings.ToLower(x.node.GPUs[x.i].UUID)
		f, dup := first[uuid]
		if !dup {
			first[uuid] = x
			continue
		}
		if f.node == x.node {
			continue
		}
		where := ""
		if f.pos.File != "" {
			where = " (" + f.pos.String() + ")"
		}
		diags = append(diags, Diagnostic{Pos: x.pos, Path: "nodes." + x.node.Name + "." + x.field,
			Message: fmt.Sprintf("GPU %d has the uuid %s of GPU %d of node %s%s: a GPU is in one node only; take this node's UUIDs from pool-managerd inventory on it",
				x.node.GPUs[x.i].Index, x.node.GPUs[x.i].UUID, f.node.GPUs[f.i].Index, f.node.Name, where)})
	}
	return diags
}

type checker struct {
	d *Desired
	// flags is made when first needed.
	flags *flagChecker
	// declared lists the declared nodes, for a pool that names another.
	declared string
	diags    Diagnostics
}

// node runs the checks of one node name: its GPUs, each of its pools
// against it, and the GPUs and ports its pools share.
func (c *checker) node(in *nodeCheck) {
	if in.node != nil && !in.nodeBroken {
		c.gpus(in.node)
	}
	if in.nodeBroken {
		return
	}
	// The pools in order of id: the first of two on a port keeps it, and
	// messages list the pools on a GPU in that order.
	order := make([]int, len(in.pools))
	for i := range order {
		order[i] = i
	}
	slices.SortFunc(order, func(a, b int) int { return strings.Compare(in.pools[a].ID, in.pools[b].ID) })
	var ok []*Pool
	for _, i := range order {
		if p := in.pools[i]; !in.poolBroken[i] && c.pool(p) {
			ok = append(ok, p)
		}
	}
	c.sharing(ok)
	c.ports(ok)
}

func (c *checker) poolProblem(p *Pool, field, format string, args ...any) {
	path := "pools." + p.ID
	if field != "" {
		path += "." + field
	}
	c.diags = append(c.diags, Diagnostic{Pos: p.Source.Of(field), Path: path, Message: fmt.Sprintf(format, args...)})
}

func (c *checker) gpus(n *Node) {
	indices := map[int]int{}
	for i, g := range n.GPUs {
		if first, dup := indices[g.Index]; dup {
			field := fmt.Sprintf("gpus[%d].index", i)
			c.diags = append(c.diags, Diagnostic{Pos: n.Source.Of(field), Path: "nodes." + n.Name + "." + field,
				Message: fmt.Sprintf("GPU index %d is declared twice (gpus[%d] and gpus[%d]); each GPU of a node has its own NVML index", g.Index, first, i)})
			continue
		}
		indices[g.Index] = i
	}
	seen := map[string]int{}
	for i, g := range n.GPUs {
		if g.UUID == "" {
			continue
		}
		if first, dup := seen[g.UUID]; dup {
			field := fmt.Sprintf("gpus[%d].uuid", i)
			c.diags = append(c.diags, Diagnostic{Pos: n.Source.Of(field), Path: "nodes." + n.Name + "." + field,
				Message: fmt.Sprintf("GPU %d has the same uuid as GPU %d", g.Index, n.GPUs[first].Index)})
			continue
		}
		seen[g.UUID] = i
	}
}

// pool checks one pool against its node; it reports whether the pool is
// sound enough for the checks across pools.
func (c *checker) pool(p *Pool) bool {
	if c.flags == nil {
		c.flags = newFlagChecker()
	}
	for _, f := range c.flags.check(p) {
		c.poolProblem(p, f.path, "%s", f.message)
	}
	c.restart(p)
	if p.Model.Source != "" {
		if msg := sourceProblem(p.Engine, p.Model.Source); msg != "" {
			c.poolProblem(p, "model.source", "%s", msg)
		}
		if len(p.Model.Files) > 0 {
			if err := p.Model.Manifest().Validate(); err != nil {
				c.poolProblem(p, "model.files", "model.files: %v", err)
			}
		}
	}
	node, ok := c.d.Nodes[p.Node]
	if !ok {
		c.poolProblem(p, "node", "node %q is not declared under nodes (declared: %s); declare its GPUs, for example with the output of pool-managerd inventory", p.Node, c.declared)
		return false
	}
	gpus := make([]GPU, 0, len(p.Devices))
	for i, idx := range p.Devices {
		g, ok := node.GPU(idx)
		if !ok {
			c.poolProblem(p, fmt.Sprintf("devices[%d]", i), "GPU %d is not on node %s (it has %s)", idx, node.Name, gpuIndexList(node))
			continue
		}
		gpus = append(gpus, g)
	}
	if len(gpus) != len(p.Devices) || (len(p.Split) > 0 && len(p.Split) != len(p.Devices)) {
		return false
	}
	for _, f := range c.flags.checkSized(p, gpus) {
		c.poolProblem(p, f.path, "%s", f.message)
	}
	return c.split(p, gpus)
}

// restart checks the restart policy's durations: each positive, and the backoff's cap above its start.
func (c *checker) restart(p *Pool) {
	r := p.Restart
	durations := []struct {
		field string
		d     time.Duration
	}{
		{"restart.initialBackoff", r.InitialBackoff}, {"restart.maxBackoff", r.MaxBackoff},
		{"restart.resetAfter", r.ResetAfter}, {"restart.startupTimeout", r.StartupTimeout},
		{"restart.drainTimeout", r.DrainTimeout}, {"restart.stopGrace", r.StopGrace},
		{"restart.breaker.window", r.Breaker.Window}, {"restart.breaker.cooldown", r.Breaker.Cooldown},
	}
	for _, f := range durations {
		if f.d <= 0 {
			c.poolProblem(p, f.field, "%s must be a positive duration, not %v", f.field, f.d)
		}
	}
	if r.InitialBackoff > 0 && r.MaxBackoff > 0 && r.MaxBackoff < r.InitialBackoff {
		c.poolProblem(p, "restart.maxBackoff", "restart.maxBackoff (%v) is below restart.initialBackoff (%v); the backoff starts at initialBackoff and doubles up to maxBackoff", r.MaxBackoff, r.InitialBackoff)
	}
}

// split checks the pool's split against the sizes of its masked GPUs.
func (c *checker) split(p *Pool, gpus []GPU) bool {
	sound := true
	n := len(gpus)
	if p.Engine != EngineLlamaCpp && len(p.Split) > 0 {
		for _, r := range p.Split {
			if math.Abs(r-1/float64(n)) > RatioTolerance {
				c.poolProblem(p, "split", "%s shards a model evenly across its GPUs; remove split or make every ratio %s", p.Engine, formatRatio(1/float64(n)))
				return false
			}
		}
	}
	var total, smallest int64 = 0, math.MaxInt64
	for _, g := range gpus {
		total += g.VRAM
		smallest = min(smallest, g.VRAM)
	}
	mixed := false
	for _, g := range gpus {
		mixed = mixed || g.VRAM != smallest
	}
	if mixed && len(p.Split) == 0 && p.Engine == EngineLlamaCpp {
		c.poolProblem(p, "devices", "the masked GPUs differ in size (%s): write split explicitly, for example split: %s", gpuSizes(gpus), proportionalSplit(gpus, total))
		return false
	}
	split := p.EffectiveSplit()
	if mixed && p.Engine != EngineLlamaCpp {
		// An even share is always more than the smallest GPU's share of
		// the VRAM, and these engines take no other: no split can help.
		field := "devices"
		if len(p.Split) > 0 {
			field = "split"
		}
		for _, g := range gpus {
			if g.VRAM == smallest {
				c.poolProblem(p, field, "%s shards a model evenly, %s of it on each of the %d GPUs, and takes no uneven split: GPU %d (%s) is short, its share of the mask's VRAM being %s (%s of %s); mask GPUs of one size, use fewer GPUs, or use engine \"llamacpp\", whose llama-server splits unevenly (for example split: %s)",
					p.Engine, formatRatio(1/float64(n)), n, g.Index, humanBytes(g.VRAM), formatRatio(float64(smallest)/float64(total)), humanBytes(g.VRAM), humanBytes(total), proportionalSplit(gpus, total))
				break
			}
		}
		return false
	}
	if mixed {
		limit := float64(smallest) / float64(total)
		for i, g := range gpus {
			if g.VRAM != smallest || split[i] <= limit+RatioTolerance {
				continue
			}
			field := fmt.Sprintf("split[%d]", i)
			if len(p.Split) == 0 {
				field = "devices"
			}
			c.poolProblem(p, field, "GPU %d (%s) would take %s of the model, more than its share of the mask's VRAM (%s of %s = %s): the smallest GPU caps the split; give it at most %s",
				g.Index, humanBytes(g.VRAM), formatRatio(split[i]), humanBytes(g.VRAM), humanBytes(total), formatRatio(limit), formatRatio(limit))
			sound = false
		}
	}
	if p.VRAM > 0 {
		for i, g := range gpus {
			part := int64(float64(p.VRAM) * split[i])
			if part > g.VRAM {
				c.poolProblem(p, "vram", "GPU %d (%s) would hold %s of the pool's %s (ratio %s), more than its memory; move the split toward larger GPUs, add GPUs to devices, or lower vram",
					g.Index, humanBytes(g.VRAM), humanBytes(part), humanBytes(p.VRAM), formatRatio(split[i]))
				sound = false
			}
		}
	}
	return sound
}

type gpuRef struct {
	node  string
	index int
}

type gpuUser struct {
	pool *Pool
	// field is the devices entry that names the GPU.
	field string
	ratio float64
}

// sharing checks that a GPU is in two pools only when both allow sharing
// and their declared VRAM fits in it.
func (c *checker) sharing(pools []*Pool) {
	users := map[gpuRef][]gpuUser{}
	var refs []gpuRef
	for _, p := range pools {
		split := p.EffectiveSplit()
		for i, idx := range p.Devices {
			ref := gpuRef{p.Node, idx}
			if len(users[ref]) == 0 {
				refs = append(refs, ref)
			}
			users[ref] = append(users[ref], gpuUser{pool: p, field: fmt.Sprintf("devices[%d]", i), ratio: split[i]})
		}
	}
	sort.Slice(refs, func(i, j int) bool {
		if refs[i].node != refs[j].node {
			return refs[i].node < refs[j].node
		}
		return refs[i].index < refs[j].index
	})
	for _, ref := range refs {
		us := users[ref]
		if len(us) < 2 {
			continue
		}
		ids := make([]string, len(us))
		for i, u := range us {
			ids[i] = u.pool.ID
		}
		allShare := true
		for _, u := range us {
			if !u.pool.Share {
				allShare = false
				c.poolProblem(u.pool, u.field, "GPU %d of node %s is also in %s; a GPU belongs to one pool unless every pool on it sets share: true",
					ref.index, ref.node, others(ids, u.pool.ID))
			}
		}
		if !allShare {
			continue
		}
		gpu, _ := c.d.Nodes[ref.node].GPU(ref.index)
		var need int64
		var parts []string
		undeclared := false
		for _, u := range us {
			if u.pool.VRAM == 0 {
				undeclared = true
				c.poolProblem(u.pool, u.field, "GPU %d of node %s is shared with %s: pools that share a GPU declare vram so that the fit can be checked",
					ref.index, ref.node, others(ids, u.pool.ID))
				continue
			}
			part := int64(float64(u.pool.VRAM) * u.ratio)
			need += part
			parts = append(parts, fmt.Sprintf("%s %s", u.pool.ID, humanBytes(part)))
		}
		if !undeclared && need > gpu.VRAM {
			for _, u := range us {
				c.poolProblem(u.pool, u.field, "GPU %d of node %s (%s) is shared by %s: %s in all does not fit",
					ref.index, ref.node, humanBytes(gpu.VRAM), strings.Join(parts, ", "), humanBytes(need))
			}
		}
	}
}

// ports checks that no two pools of a node ask for the same port.
func (c *checker) ports(pools []*Pool) {
	type key struct {
		node string
		port int
	}
	first := map[key]*Pool{}
	for _, p := range pools {
		if p.Port == 0 {
			continue
		}
		k := key{p.Node, p.Port}
		if other, dup := first[k]; dup {
			c.poolProblem(p, "port", "port %d is already used by pool %s on node %s", p.Port, other.ID, p.Node)
			continue
		}
		first[k] = p
	}
}

func others(ids []string, self string) string {
	var out []string
	for _, id := range ids {
		if id != self {
			out = append(out, "pool "+id)
		}
	}
	return strings.Join(out, ", ")
}

func listOrNone(names []string) string {
	if len(names) == 0 {
		return "none"
	}
	return strings.Join(names, ", ")
}

func gpuIndexList(n *Node) string {
	idx := make([]string, len(n.GPUs))
	for i, g := range n.GPUs {
		idx[i] = strconv.Itoa(g.Index)
	}
	if len(idx) == 1 {
		return "GPU " + idx[0]
	}
	return "GPUs " + strings.Join(idx, ", ")
}

func gpuSizes(gpus []GPU) string {
	parts := make([]string, len(gpus))
	for i, g := range gpus {
		parts[i] = fmt.Sprintf("GPU %d: %s", g.Index, humanBytes(g.VRAM))
	}
	return strings.Join(parts, ", ")
}

// proportionalSplit suggests a split by VRAM share, rounded down to two
// decimals for every GPU but the largest, which takes the rest.
func proportionalSplit(gpus []GPU, total int64) string {
	largest := 0
	for i, g := range gpus {
		if g.VRAM > gpus[largest].VRAM {
			largest = i
		}
	}
	ratios := make([]float64, len(gpus))
	rest := 1.0
	for i, g := range gpus {
		if i != largest {
			ratios[i] = math.Floor(float64(g.VRAM)/float64(total)*100) / 100
			rest -= ratios[i]
		}
	}
	ratios[largest] = math.Round(rest*100) / 100
	parts := make([]string, len(ratios))
	for i, r := range ratios {
		parts[i] = formatRatio(r)
	}
	return "[" + strings.Join(parts, ", ") + "]"
}

func formatRatio(r float64) string {
	return strconv.FormatFloat(math.Floor(r*1000+1e-9)/1000, 'f', -1, 64)
}
