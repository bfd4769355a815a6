package schema

import (
	"context"
	"crypto/sha256"
	"fmt"
	"io/fs"
	"maps"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"cuelang.org/go/cue"
	"cuelang.org/go/cue/ast"
	"cuelang.org/go/cue/parser"
)

// The names config files are evaluated under: evalRoot stands for the
// config directory, so that what a group of files evaluates to does not
// depend on where the tree is (a Git checkout per commit), and fallbackName
// for the first file of the whole tree, which names diagnostics that have no
// better place. The NUL bytes keep them apart from anything a person writes
// (CUE quotes a NUL in a string value as an escape).
const (
	evalRoot     = "\x00config"
	fallbackName = "\x00first-file"
)

// racyWindow: a file modified this recently may change again within the
// file system's timestamp granularity without its size or mtime changing,
// so its stat is not trusted on the next load; its content hash is.
const racyWindow = 2 * time.Second

// Loader loads a config tree again and again, evaluating only what changed.
// It keeps, per file, its stat and content hash and a summary of its
// declarations; per group of files that can be evaluated apart (see
// components), the Go values the evaluation gave. A load in which no file
// changed evaluates nothing; a load in which some did evaluates their groups
// again and reuses the others. The result is exactly what Load gives for
// the same tree. The files are keyed by their path relative to the config
// directory and their content, so a new directory (a Git checkout of the
// next commit) reuses the groups whose files are the same. A Loader keeps
// no CUE values or syntax trees between loads; its loads run one at a time.
type Loader struct {
	mu sync.Mutex
	// schemaNames are the top-level names the schema declares, but nodes and pools.
	schemaNames map[string]bool
	// stats by file path (as read, with the directory) tell unchanged files without reading them.
	stats map[string]fileStat
	// files by relative path and content hash.
	files map[fileKey]*fileEntry
	// groups by groupKey.
	groups map[string]*groupResult
	// last is the previous load's outcome.
	last *loadOutcome
	// checks are the last checks' inputs and findings per node name, for
	// the next load to reuse where its nodes and pools are the same.
	checks map[string]*nodeCheck
	// For tests: evaluated, when set, is called with the relative paths of
	// the files of each evaluation; now replaces time.Now; whole evaluates
	// every file in one group, as one CUE instance.
	evaluated func(rels []string)
	now       func() time.Time
	whole     bool
}

// NewLoader returns a Loader that has loaded nothing yet.
func NewLoader() *Loader {
	schemaFile, err := parser.ParseFile(schemaPath, schemaSource)
	if err != nil {
		panic(fmt.Sprintf("embedded schema does not parse: %v", err))
	}
	names := map[string]bool{}
	for _, decl := range schemaFile.Decls {
		if f, ok := decl.(*ast.Field); ok {
			if name, _, err := ast.LabelName(f.Label); err == nil {
				names[name] = true
			}
		}
	}
	delete(names, "nodes")
	delete(names, "pools")
	return &Loader{schemaNames: names, stats: map[string]fileStat{}, files: map[fileKey]*fileEntry{}, groups: map[string]*groupResult{}}
}

type fileKey struct {
	rel  string
	hash [sha256.Size]byte
}

// fileStat is what says a file is unchanged without reading it.
type fileStat struct {
	size, mtime, ctime int64
	dev, ino           uint64
	key                fileKey
}

func statOf(info fs.FileInfo) (fileStat, bool) {
	st, ok := info.Sys().(*syscall.Stat_t)
	if !ok {
		return fileStat{}, false
	}
	return fileStat{size: info.Size(), mtime: info.ModTime().UnixNano(), ctime: time.Unix(st.Ctim.Unix()).UnixNano(),
		dev: uint64(st.Dev), ino: uint64(st.Ino)}, true //nolint:unconvert // Dev's type differs by platform
}

// fileEntry is one file's content and what a parse of it said.
type fileEntry struct {
	data []byte
	// diags are the file's syntax and package problems, with the file named as evaluated.
	diags   Diagnostics
	summary fileSummary
}

// loadOutcome is a load's outcome with what it was loaded from.
type loadOutcome struct {
	dir   string
	files []fileKey
	// walkDiags are the problems reading the tree.
	walkDiags Diagnostics
	desired   *Desired
	diags     Diagnostics
}

func (r *loadOutcome) sameInput(dir string, files []fileKey, walkDiags Diagnostics) bool {
	return r != nil && r.dir == dir && slices.Equal(r.files, files) && slices.Equal(r.walkDiags, walkDiags)
}

// outcome returns the load's result as Load returns it; the caller may keep
// the Desired, which no later load changes.
func (r *loadOutcome) outcome() (*Desired, error) {
	if len(r.diags) > 0 {
		return nil, slices.Clone(r.diags)
	}
	return r.desired, nil
}

// Load loads the config tree at dir as Load does, evaluating only the
// groups of files that changed since the loader's last load.
func (l *Loader) Load(ctx context.Context, dir string) (*Desired, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	dir = filepath.Clean(dir)
	now := time.Now()
	if l.now != nil {
		now = l.now()
	}
	stats := map[string]fileStat{}
	keys := map[string]fileKey{}
	collected, err := collectFiles(ctx, dir, func(path, rel string, info fs.FileInfo) ([]byte, error) {
		st, statOK := statOf(info)
		if prev, ok := l.stats[path]; ok && statOK {
			st.key = prev.key
			if st == prev && prev.key.rel == rel {
				if e, ok := l.files[prev.key]; ok {
					stats[path], keys[path] = prev, prev.key
					return e.data, nil
				}
			}
		}
		data, err := readLimited(path, MaxFileSize)
		if err != nil {
			return nil, err
		}
		st.key = fileKey{rel: rel, hash: sha256.Sum256(data)}
		keys[path] = st.key
		if statOK && now.Sub(time.Unix(0, max(st.mtime, st.ctime))) >= racyWindow {
			stats[path] = st
		}
		return data, nil
	})
	if err != nil {
		return nil, err
	}
	l.stats = stats
	if len(collected.files) == 0 && len(collected.diags) == 0 {
		msg := "no .cue files found"
		if collected.ignored > 0 {
			msg = fmt.Sprintf("no .cue files found (%d other files ignored)", collected.ignored)
		}
		return nil, Diagnostics{{Pos: Pos{File: dir}, Message: msg}}
	}
	fileKeys := make([]fileKey, len(collected.files))
	for i, f := range collected.files {
		fileKeys[i] = keys[f.name]
	}
	if l.last.sameInput(dir, fileKeys, collected.diags) {
		return l.last.outcome()
	}
	res := &loadOutcome{dir: dir, files: fileKeys, walkDiags: collected.diags}
	res.desired, res.diags = l.evaluate(ctx, dir, collected.files, fileKeys)
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	res.diags = append(slices.Clone(collected.diags), res.diags...)
	if len(res.diags) > 0 {
		res.desired, res.diags = nil, res.diags.normalize()
	}
	l.last = res
	return res.outcome()
}

// evaluate reads the desired state out of the files, evaluating the groups
// not evaluated before.
func (l *Loader) evaluate(ctx context.Context, dir string, files []sourceFile, keys []fileKey) (*Desired, Diagnostics) {
	shown := &shownNames{prefix: rootPrefix(dir)}
	if len(files) > 0 {
		shown.first = files[0].name
	}
	// Parse the new files: their syntax serves this load's evaluation and is then dropped.
	fresh := map[fileKey]*ast.File{}
	entries := make([]*fileEntry, len(files))
	var added []int
	for i := range files {
		if e, ok := l.files[keys[i]]; ok {
			entries[i] = e
		} else {
			added = append(added, i)
		}
	}
	syntaxes := make([]*ast.File, len(added))
	parallel(len(added), func(k int) {
		f := files[added[k]]
		e := &fileEntry{data: f.data}
		syntax, problems := parseConfig(evalName(f.rel), f.data)
		if len(problems) > 0 {
			e.diags = problems
		} else {
			e.summary = summarizeFile(syntax, l.schemaNames)
			syntaxes[k] = syntax
		}
		entries[added[k]] = e
	})
	for k, i := range added {
		l.files[keys[i]] = entries[i]
		if syntaxes[k] != nil {
			fresh[keys[i]] = syntaxes[k]
		}
	}
	var diags Diagnostics
	for _, e := range entries {
		for _, d := range e.diags {
			diags = append(diags, shown.diag(d))
		}
	}
	if len(diags) > 0 {
		l.prune(keys)
		return nil, diags
	}
	summaries := make([]fileSummary, len(entries))
	for i, e := range entries {
		summaries[i] = e.summary
	}
	comps := components(summaries)
	if l.whole {
		all := make([]int, len(files))
		for i := range all {
			all[i] = i
		}
		comps = [][]int{all}
	}
	results := make([]*groupResult, len(comps))
	groupKeys := make([]string, len(comps))
	var todo []int
	for c, comp := range comps {
		groupKeys[c] = groupKey(keys, comp)
		if g, ok := l.groups[groupKeys[c]]; ok {
			results[c] = g
		} else {
			todo = append(todo, c)
		}
	}
	l.evaluateGroups(ctx, todo, comps, files, keys, summaries, fresh, results)
	if ctx.Err() != nil {
		return nil, nil
	}
	groups := make(map[string]*groupResult, len(comps))
	for c, g := range results {
		groups[groupKeys[c]] = g
	}
	l.groups = groups
	l.prune(keys)
	defer func() {
		for _, g := range l.groups {
			if g.pos != nil {
				g.pos.release()
			}
		}
	}()

	for _, g := range results {
		if g.fatal {
			for _, dg := range g.diags {
				diags = append(diags, shown.diag(dg))
			}
		}
	}
	if len(diags) > 0 {
		return nil, diags
	}
	nodes, pools := 0, 0
	for _, g := range results {
		nodes, pools = nodes+len(g.desired.Nodes), pools+len(g.desired.Pools)
	}
	d := &Desired{Nodes: make(map[string]*Node, nodes), Pools: make(map[string]*Pool, pools), Files: make([]string, 0, len(files))}
	broken := map[string]bool{}
	for _, g := range results {
		for _, dg := range g.diags {
			diags = append(diags, shown.diag(dg))
		}
		pub := g.publish(shown)
		maps.Copy(d.Nodes, pub.nodes)
		maps.Copy(d.Pools, pub.pools)
		for k := range g.broken {
			broken[k] = true
		}
	}
	for _, f := range files {
		d.Files = append(d.Files, f.rel)
	}
	byNode := make([]map[string][]*Pool, len(results))
	for c, g := range results {
		byNode[c] = g.published.byNode
	}
	checked, checks := checkByNode(d, byNode, broken, l.checks)
	l.checks = checks
	diags = append(diags, checked...)
	if len(diags) > 0 {
		return nil, diags
	}
	return d, nil
}

// publishedGroup is a group's nodes and pools as loads return them:
// copies whose Sources show the files' names as people see them.
type publishedGroup struct {
	shown shownNames
	nodes map[string]*Node
	pools map[string]*Pool
	// byNode are the pools by the node they name, for the checks.
	byNode map[string][]*Pool
}

// publish returns the group's nodes and pools for a load whose files are
// shown as shown. Loads that show them alike (the same directory and first
// file) share the same copies: an unchanged group costs a load nothing, and
// its pools keep their identity, which the checks' cache goes by. Nothing
// changes a Node or Pool after the load that returned it.
func (g *groupResult) publish(shown *shownNames) *publishedGroup {
	if g.published != nil && g.published.shown == *shown {
		return g.published
	}
	pub := &publishedGroup{shown: *shown, nodes: make(map[string]*Node, len(g.desired.Nodes)), pools: make(map[string]*Pool, len(g.desired.Pools))}
	var resolver *posResolver
	if g.pos != nil {
		resolver = &posResolver{positions: g.pos, fallback: fallbackName, shown: &pub.shown}
	}
	for k, v := range g.desired.Nodes {
		n := *v
		n.Source = Source{resolver: resolver, path: v.Source.path}
		pub.nodes[k] = &n
	}
	for k, v := range g.desired.Pools {
		p := *v
		p.Source = Source{resolver: resolver, path: v.Source.path}
		pub.pools[k] = &p
	}
	pub.byNode = poolsByNode(pub.pools)
	g.published = pub
	return pub
}

// evaluateGroups evaluates the components todo into results, in parallel
// over the available cores. Each evaluation carries the schema's cost, so
// many small components (a first load) are evaluated in batches of
// independent components, whose results are then split by component.
func (l *Loader) evaluateGroups(ctx context.Context, todo []int, comps [][]int, files []sourceFile, keys []fileKey, summaries []fileSummary, fresh map[fileKey]*ast.File, results []*groupResult) {
	parsedOf := func(i int) parsedFile {
		// Each new file's syntax serves one evaluation: CUE's resolution changes it.
		syntax, ok := fresh[keys[i]]
		if ok {
			delete(fresh, keys[i])
		} else {
			syntax, _ = parseConfig(evalName(files[i].rel), files[i].data)
		}
		return parsedFile{name: evalName(files[i].rel), size: len(files[i].data), syntax: syntax}
	}
	compSize := func(c int) int {
		n := 0
		for _, i := range comps[c] {
			n += len(files[i].data)
		}
		return n
	}
	total := 0
	for _, c := range todo {
		total += compSize(c)
	}
	batches := packBatches(todo, compSize, batchCount(len(todo), total))
	type job struct {
		comps  []int
		parsed []parsedFile
	}
	jobs := make([]job, len(batches))
	for b, batch := range batches {
		var idx []int
		for _, c := range batch {
			idx = append(idx, comps[c]...)
		}
		slices.Sort(idx) // the files in the tree's order, as one evaluation of them all has them
		for _, i := range idx {
			jobs[b].parsed = append(jobs[b].parsed, parsedOf(i))
		}
		jobs[b].comps = batch
	}
	evaluate := func(idx []int, parsed []parsedFile) groupResult {
		if l.evaluated != nil {
			rels := make([]string, len(idx))
			for k, i := range idx {
				rels[k] = files[i].rel
			}
			l.evaluated(rels)
		}
		sources := make([]sourceFile, len(idx))
		for k, i := range idx {
			sources[k] = files[i]
		}
		g := evaluateGroup(parsed, func() cue.Value { return rebuildGroup(sources) })
		// What was read holds plain Go values: drop the evaluation now, so
		// that at most one per worker is live. A position asked for later
		// (a cross-check's diagnostic) evaluates the group again.
		if g.pos != nil {
			g.pos.release()
		}
		return g
	}
	run := func(j job) {
		if len(j.comps) == 1 {
			g := evaluate(comps[j.comps[0]], j.parsed)
			results[j.comps[0]] = &g
			return
		}
		var idx []int
		for _, c := range j.comps {
			idx = append(idx, comps[c]...)
		}
		slices.Sort(idx)
		if parts, ok := splitGroup(evaluate(idx, j.parsed), j.comps, comps, files, summaries); ok {
			for k, c := range j.comps {
				results[c] = parts[k]
			}
			return
		}
		// A problem that cannot be told to one component: evaluate each alone.
		for _, c := range j.comps {
			parsed := make([]parsedFile, len(comps[c]))
			for k, i := range comps[c] {
				parsed[k] = parsedOf(i)
			}
			g := evaluate(comps[c], parsed)
			results[c] = &g
		}
	}
	next := make(chan job)
	var wg sync.WaitGroup
	for range min(runtime.GOMAXPROCS(0), len(jobs)) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := range next {
				run(j)
			}
		}()
	}
	for b := range jobs {
		if ctx.Err() != nil {
			break
		}
		next <- jobs[b]
		jobs[b] = job{} // the worker holds the job's syntax until it is evaluated, and no longer
	}
	close(next)
	wg.Wait()
}

// parallel calls fn(0) to fn(n-1) on up to GOMAXPROCS goroutines and
// returns when all have returned.
func parallel(n int, fn func(i int)) {
	var next atomic.Int64
	var wg sync.WaitGroup
	for range min(runtime.GOMAXPROCS(0), n) {
		wg.Go(func() {
			for i := int(next.Add(1)) - 1; i < n; i = int(next.Add(1)) - 1 {
				fn(i)
			}
		})
	}
	wg.Wait()
}

// batchCount is how many evaluations n components of size bytes in all
// are packed into: about one per batchBytes, so that each evaluation is small
// (what one costs grows faster than its size, and a worker holds one
// evaluation at a time, which bounds the peak memory) yet carries enough
// files to amortize the schema's cost; at least one per core, to use them.
func batchCount(n, size int) int {
	if n == 0 {
		return 0
	}
	return min(n, max(runtime.GOMAXPROCS(0), size/batchBytes, 1))
}

// batchBytes is about how much config source one evaluation is given.
// validate at 10,000 pools (3.6 MB of source; 2 cores, medians of 3 runs):
// 8 batches of 450 KiB took 6.1 s CPU and 676 MiB peak RSS; 128 batches of
// 28 KiB 4.6 s and 296 MiB; one evaluation per file (3 KiB, the schema's
// cost each time) 6.0 s and 290 MiB; 16 and 64 KiB cost more CPU than 32.
const batchBytes = 32 << 10

// packBatches packs the components into n batches of about equal size,
// the biggest component first (each goes to the smallest batch so far);
// batches are returned biggest first, so that the cores finish together.
func packBatches(todo []int, size func(int) int, n int) [][]int {
	if n == 0 {
		return nil
	}
	order := slices.Clone(todo)
	slices.SortStableFunc(order, func(a, b int) int { return size(b) - size(a) })
	batches := make([][]int, n)
	sizes := make([]int, n)
	for _, c := range order {
		smallest := 0
		for b := range sizes {
			if sizes[b] < sizes[smallest] {
				smallest = b
			}
		}
		batches[smallest] = append(batches[smallest], c)
		sizes[smallest] += size(c)
	}
	for _, b := range batches {
		slices.Sort(b)
	}
	idx := make([]int, n)
	for i := range idx {
		idx[i] = i
	}
	slices.SortStableFunc(idx, func(a, b int) int { return sizes[b] - sizes[a] })
	out := make([][]int, 0, n)
	for _, i := range idx {
		if len(batches[i]) > 0 {
			out = append(out, batches[i])
		}
	}
	return out
}

// splitGroup splits what evaluating several independent components
// together gave into what each gives alone: each node, pool, broken mark
// and diagnostic goes to the component that writes its key, declares its
// top-level name or holds its file. ok is false when something cannot be
// told to exactly one component.
func splitGroup(g groupResult, batch []int, comps [][]int, files []sourceFile, summaries []fileSummary) (parts []*groupResult, ok bool) {
	if g.fatal {
		return nil, false // which components failed to compile is told by evaluating them alone
	}
	owner := map[string]int{} // "pools.x", "nodes.y", top-level name → index into batch
	fileOwner := map[string]int{}
	for k, c := range batch {
		for _, i := range comps[c] {
			fileOwner[evalName(files[i].rel)] = k
			for _, key := range summaries[i].writes {
				owner[key] = k
			}
			for _, name := range summaries[i].declares {
				owner[name] = k
			}
		}
	}
	// ownerOfPath finds the one component owning a path such as
	// pools.a.b.split[1]: every prefix ending before a '.' or '[' is a
	// candidate key (ids may hold dots).
	ownerOfPath := func(path string) (int, bool) {
		found := -1
		for i := 0; i <= len(path); i++ {
			if i < len(path) && path[i] != '.' && path[i] != '[' {
				continue
			}
			k, ok := owner[path[:i]]
			if !ok {
				continue
			}
			if found >= 0 && found != k {
				return 0, false
			}
			found = k
		}
		return found, found >= 0
	}
	parts = make([]*groupResult, len(batch))
	for k, c := range batch {
		// A position asked for later evaluates the component alone, not the
		// batch: its files write every value it holds, so the positions are
		// the same.
		sources := make([]sourceFile, len(comps[c]))
		names := make(map[string]bool, len(comps[c]))
		for j, i := range comps[c] {
			sources[j] = files[i]
			names[evalName(files[i].rel)] = true
		}
		pos := &positions{userFiles: names, rebuild: func() cue.Value { return rebuildGroup(sources) }}
		parts[k] = &groupResult{desired: &Desired{Nodes: map[string]*Node{}, Pools: map[string]*Pool{}}, broken: map[string]bool{}, pos: pos}
	}
	for key, n := range g.desired.Nodes {
		k, ok := owner["nodes."+key]
		if !ok {
			return nil, false
		}
		parts[k].desired.Nodes[key] = n
	}
	for key, p := range g.desired.Pools {
		k, ok := owner["pools."+key]
		if !ok {
			return nil, false
		}
		parts[k].desired.Pools[key] = p
	}
	for key := range g.broken {
		k, ok := ownerOfPath(key)
		if !ok {
			return nil, false
		}
		parts[k].broken[key] = true
	}
	for _, d := range g.diags {
		k, ok := ownerOfPath(d.Path)
		if d.Path == "" {
			k, ok = fileOwner[d.Pos.File]
		}
		if !ok {
			return nil, false
		}
		parts[k].diags = append(parts[k].diags, d)
	}
	return parts, true
}

// rebuildGroup evaluates a group's files again from their content.
func rebuildGroup(files []sourceFile) cue.Value {
	parsed := make([]parsedFile, len(files))
	for i, f := range files {
		syntax, _ := parseConfig(evalName(f.rel), f.data)
		parsed[i] = parsedFile{name: evalName(f.rel), size: len(f.data), syntax: syntax}
	}
	v, _, _ := buildGroup(parsed)
	return v
}

// prune drops the files no longer in the tree and not in a kept group.
func (l *Loader) prune(keys []fileKey) {
	keep := make(map[fileKey]bool, len(keys))
	for _, k := range keys {
		keep[k] = true
	}
	for k := range l.groups {
		for _, fk := range parseGroupKey(k) {
			keep[fk] = true
		}
	}
	for k := range l.files {
		if !keep[k] {
			delete(l.files, k)
		}
	}
}

// groupKey names a group by its files' relative paths and content hashes.
func groupKey(keys []fileKey, comp []int) string {
	var b strings.Builder
	for _, i := range comp {
		b.WriteString(keys[i].rel)
		b.WriteByte(0)
		b.Write(keys[i].hash[:])
	}
	return b.String()
}

func parseGroupKey(k string) []fileKey {
	var out []fileKey
	for k != "" {
		rel, rest, _ := strings.Cut(k, "\x00")
		var fk fileKey
		fk.rel = rel
		copy(fk.hash[:], rest)
		out = append(out, fk)
		k = rest[sha256.Size:]
	}
	return out
}

// evalName is the name a config file is evaluated under.
func evalName(rel string) string { return evalRoot + "/" + filepath.ToSlash(rel) }

// rootPrefix is what the config directory puts in front of a relative path
// (filepath.Join(dir, rel) for a clean dir).
func rootPrefix(dir string) string {
	switch {
	case dir == ".":
		return ""
	case strings.HasSuffix(dir, "/"):
		return dir
	default:
		return dir + "/"
	}
}

// shownNames maps the names files are evaluated under to the names people see.
type shownNames struct {
	// prefix replaces evalRoot and the slash after it.
	prefix string
	// first is the name of the tree's first file, which fallbackName stands for.
	first string
}

func (s *shownNames) pos(p Pos) Pos {
	if s == nil {
		return p
	}
	if p.File == fallbackName {
		return Pos{File: s.first}
	}
	if rest, ok := strings.CutPrefix(p.File, evalRoot+"/"); ok {
		p.File = filepath.ToSlash(s.prefix + rest)
	}
	return p
}

func (s *shownNames) diag(d Diagnostic) Diagnostic {
	d.Pos = s.pos(d.Pos)
	if strings.Contains(d.Message, "\x00") {
		d.Message = strings.ReplaceAll(d.Message, evalRoot+"/", s.prefix)
		d.Message = strings.ReplaceAll(d.Message, fallbackName, s.first)
	}
	return d
}
