package schema

import (
	"context"
	_ "embed"
	"fmt"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"

	"cuelang.org/go/cue"
	"cuelang.org/go/cue/ast"
	"cuelang.org/go/cue/build"
	"cuelang.org/go/cue/cuecontext"
	cueerrors "cuelang.org/go/cue/errors"
	"cuelang.org/go/cue/parser"
)

// SchemaFileName is the name of the embedded schema file, as it appears in the repository.
const SchemaFileName = "poolmanagerd.cue"

// PackageName is the CUE package of the schema and of every config file that has a package clause.
const PackageName = "poolmanagerd"

//go:embed poolmanagerd.cue
var schemaSource []byte

// SchemaSource returns the CUE schema, for `cue vet` and for people.
func SchemaSource() []byte { return append([]byte(nil), schemaSource...) }

// schemaPath is the file name the schema carries in CUE positions; it cannot
// collide with a config file, whose names all start with the config directory.
const schemaPath = "<schema>/" + SchemaFileName

// Load reads the config directory tree at dir as one CUE package, checks it
// against the schema and the declared inventories, and returns the desired
// state. Problems with the config are returned together as Diagnostics,
// sorted and without duplicates; a dir that is not a directory gives an error
// wrapping ErrNotDirectory; cancelling ctx stops the load. It is a Loader's
// first load: a program that loads the same tree again keeps a Loader.
func Load(ctx context.Context, dir string) (*Desired, error) {
	return NewLoader().Load(ctx, dir)
}

// parseConfig parses one config file under the name it is evaluated as,
// gives it the package clause when it has none, and refuses what a config
// file may not hold. The diagnostics name the file as it was parsed.
func parseConfig(name string, data []byte) (*ast.File, Diagnostics) {
	syntax, err := parser.ParseFile(name, data)
	if err != nil {
		return nil, cueDiagnostics(err, nil)
	}
	switch pkg := syntax.PackageName(); pkg {
	case "":
		syntax.Decls = append([]ast.Decl{&ast.Package{Name: ast.NewIdent(PackageName)}}, syntax.Decls...)
	case PackageName:
	default:
		return nil, Diagnostics{{Pos: posOf(syntax.Pos()), Message: fmt.Sprintf("package %s: config files belong to package %s (or have no package clause)", pkg, PackageName)}}
	}
	if problems := checkSyntax(syntax); len(problems) > 0 {
		return nil, problems
	}
	return syntax, nil
}

// parsedFile is a config file parsed and checked, ready to evaluate.
type parsedFile struct {
	name   string
	size   int
	syntax *ast.File
}

// groupResult is what evaluating one group of files gives. It holds plain
// Go values: the evaluated CUE value stays only in pos, which drops it
// when released and evaluates the group again if a position is asked for.
type groupResult struct {
	desired *Desired
	diags   Diagnostics
	broken  map[string]bool
	pos     *positions
	// fatal: the group did not compile (a reference to nothing, say), so
	// nothing of it could be read. Evaluated with every file, such an error
	// is all a load reports: the loader reports only the fatal groups.
	fatal bool
	// published is what the last load that used the group returned of it.
	published *publishedGroup
}

// buildGroup builds the schema and a group of files as one CUE instance
// and evaluates it. It fails only when a file cannot join the instance.
func buildGroup(files []parsedFile) (cue.Value, map[string]bool, Diagnostics) {
	schemaFile, err := parser.ParseFile(schemaPath, schemaSource)
	if err != nil {
		panic(fmt.Sprintf("embedded schema does not parse: %v", err))
	}
	inst := build.NewContext().NewInstance("", nil)
	inst.PkgName = PackageName
	if err := inst.AddSyntax(schemaFile); err != nil {
		panic(fmt.Sprintf("embedded schema: %v", err))
	}
	var diags Diagnostics
	names := map[string]bool{}
	for _, f := range files {
		if err := inst.AddSyntax(f.syntax); err != nil {
			diags = append(diags, Diagnostic{Pos: Pos{File: f.name}, Message: err.Error()})
			continue
		}
		names[f.name] = true
	}
	if len(diags) > 0 {
		return cue.Value{}, nil, diags
	}
	return cuecontext.New().BuildInstance(inst), names, nil
}

// evaluateGroup builds the schema and a group of files as one CUE instance,
// evaluates it once, and reads the desired state out of it. What it gives
// depends only on the files of the group: positions that fall back to no
// file name fallbackName, for the caller to replace. rebuild evaluates the
// same files again, for positions asked for after the value is released.
func evaluateGroup(files []parsedFile, rebuild func() cue.Value) groupResult {
	value, names, diags := buildGroup(files)
	if len(diags) > 0 {
		return groupResult{desired: &Desired{}, diags: diags, fatal: true}
	}
	syntaxes := make([]*ast.File, 0, len(files))
	for _, f := range files {
		syntaxes = append(syntaxes, f.syntax)
	}
	pos := &positions{root: value, live: true, userFiles: names, rebuild: rebuild}
	r := &reader{posResolver: &posResolver{positions: pos, fallback: fallbackName}, broken: map[string]bool{},
		paths: map[string]cue.Path{}, keys: scanKeys(syntaxes)}
	if err := value.Validate(cue.Concrete(true)); err != nil {
		r.collectErrors(value)
	} else {
		r.valid = true
	}
	d := r.desired(value)
	_, err := value.Fields()
	return groupResult{desired: d, diags: r.diags, broken: r.broken, pos: pos, fatal: err != nil}
}

// checkSyntax refuses what a config file may not hold, before evaluation:
// imports other than CUE's standard library (there is no module to resolve
// them from) and values embedded at the top level (a config declares fields;
// an embedded struct would spread its fields over the whole package).
func checkSyntax(f *ast.File) Diagnostics {
	var out Diagnostics
	for _, decl := range f.Decls {
		switch d := decl.(type) {
		case *ast.ImportDecl:
			for _, spec := range d.Specs {
				path, err := strconv.Unquote(spec.Path.Value)
				if err != nil {
					continue // the parser reports malformed paths
				}
				if first, _, _ := strings.Cut(path, "/"); strings.Contains(first, ".") {
					out = append(out, Diagnostic{Pos: posOf(spec.Pos()), Message: fmt.Sprintf("import %q: config files may import only CUE's standard library (such as \"list\" or \"strings\")", path)})
				}
			}
		case *ast.EmbedDecl:
			out = append(out, Diagnostic{Pos: posOf(d.Pos()), Message: "a value embedded at the top level of a config file; declare fields instead (nodes: ..., pools: ...)"})
		}
	}
	return out
}

// reader turns an evaluated config into typed Go values, recording a
// diagnostic for every field that is missing or wrong.
type reader struct {
	*posResolver
	diags Diagnostics
	// broken holds the pools and nodes ("pools.x", "nodes.y") that have
	// errors already: the checks across pools and nodes leave them out.
	broken map[string]bool
	// cueErrors collects CUE's errors before they become diagnostics.
	cueErrors []cueDiagnostic
	// valid: the whole config passed CUE's validation, so the typed reading
	// can skip its checks for missing and non-concrete values.
	valid bool
	// paths caches parsed field paths: the same few are read for every pool.
	paths map[string]cue.Path
	// keys are the node names and pool ids, when the files' syntax tells them.
	keys configKeys
}

// pathOf returns the parsed path of a field such as "restart.breaker.failures".
func (r *reader) pathOf(field string) cue.Path {
	p, ok := r.paths[field]
	if !ok {
		p = cue.ParsePath(field)
		r.paths[field] = p
	}
	return p
}

// configKeys are the keys of the top-level nodes and pools structs; nil
// when the syntax does not tell them plainly (a comprehension, a reference).
type configKeys struct {
	nodes, pools []string
}

// scanKeys reads the node names and pool ids from the files' syntax:
// `pools: id: {...}` and `pools: {id: {...}}` with literal labels.
func scanKeys(files []*ast.File) configKeys {
	found := map[string]map[string]bool{"nodes": {}, "pools": {}}
	plain := true
	for _, f := range files {
		for _, decl := range f.Decls {
			switch d := decl.(type) {
			case *ast.Package, *ast.ImportDecl, *ast.CommentGroup, *ast.Attribute:
			case *ast.Field:
				name, _, err := ast.LabelName(d.Label)
				if err != nil {
					plain = false
					continue
				}
				keys, tracked := found[name]
				if !tracked {
					continue
				}
				lit, ok := d.Value.(*ast.StructLit)
				if !ok {
					plain = false
					continue
				}
				for _, elt := range lit.Elts {
					field, ok := elt.(*ast.Field)
					if !ok {
						if _, comment := elt.(*ast.CommentGroup); !comment {
							plain = false
						}
						continue
					}
					key, isIdent, err := ast.LabelName(field.Label)
					if err != nil || (isIdent && strings.HasPrefix(key, "#")) || strings.HasPrefix(key, "_") {
						plain = false
						continue
					}
					keys[key] = true
				}
			default:
				plain = false
			}
		}
	}
	if !plain {
		return configKeys{}
	}
	sorted := func(m map[string]bool) []string {
		out := make([]string, 0, len(m))
		for k := range m {
			out = append(out, k)
		}
		sort.Strings(out)
		return out
	}
	return configKeys{nodes: sorted(found["nodes"]), pools: sorted(found["pools"])}
}

func (r *reader) add(pos Pos, path, format string, args ...any) {
	r.diags = append(r.diags, Diagnostic{Pos: pos, Path: path, Message: fmt.Sprintf(format, args...)})
}

// hiddenFieldOwner maps the schema's hidden check fields to the field they
// check, a path below the struct that holds them.
var hiddenFieldOwner = map[string][]string{
	"_splitLength":       {"split"},
	"_splitSum":          {"split"},
	"_splitSumOK":        {"split"},
	"_gpuIndices":        {"gpus"},
	"_modelPathOrSource": {"model"},
	"_modelSHA256":       {"model", "sha256"},
	"_modelFiles":        {"model", "files"},
	"_modelFilesUnique":  {"model", "files"},
}

// collectErrors walks the evaluated config down to the deepest values that
// fail validation and records their errors, so that every independent
// mistake is reported, not just the first. Missing and incomplete fields are
// left to the typed reading, which reports them whatever else failed.
func (r *reader) collectErrors(root cue.Value) {
	var walk func(v cue.Value) bool
	walk = func(v cue.Value) bool {
		err := v.Validate(cue.Concrete(true))
		if err == nil {
			return false
		}
		found := false
		var it interface {
			Next() bool
			Value() cue.Value
		}
		switch v.IncompleteKind() {
		case cue.StructKind:
			if fields, err := v.Fields(cue.Hidden(true)); err == nil {
				it = definitionSkipper{fields}
			}
		case cue.ListKind:
			if list, err := v.List(); err == nil {
				it = &list
			}
		}
		if it != nil {
			for it.Next() {
				if walk(it.Value()) {
					found = true
				}
			}
		}
		if !found {
			for _, e := range cueerrors.Errors(err) {
				if isIncomplete(e) {
					continue
				}
				found = true
				r.addCUEError(e)
			}
		}
		return found
	}
	walk(root)
	r.flushCUEErrors()
}

type definitionSkipper struct{ *cue.Iterator }

func (d definitionSkipper) Next() bool {
	for d.Iterator.Next() {
		if !d.Selector().IsDefinition() {
			return true
		}
	}
	return false
}

func isIncomplete(e cueerrors.Error) bool { return isIncompleteErr(e) }

func (r *reader) addCUEError(e cueerrors.Error) {
	path := cueerrors.Path(e)
	remapped, modelRule := false, false
	for i, sel := range path {
		if owner, ok := hiddenFieldOwner[sel]; ok {
			modelRule = modelRules[sel]
			path = append(append([]string(nil), path[:i]...), owner...)
			remapped = true
			break
		}
	}
	// The key fields the schema derives (a node's name, a pool's id) are
	// reported at the key the user wrote.
	if len(path) == 3 && ((path[0] == "nodes" && path[2] == "name") || (path[0] == "pools" && path[2] == "id")) {
		path = path[:2]
	}
	if len(path) >= 2 {
		r.broken[path[0]+"."+unquote(path[1])] = true
	}
	var pos Pos
	userPositions := 0
	for _, p := range cueerrors.Positions(e) {
		if r.userFiles[p.Filename()] {
			userPositions++
			if pos.File == "" && !remapped {
				pos = posOf(p)
			}
		}
	}
	if pos.File == "" {
		pos = r.posAt(selectors(path))
	}
	msg := cueMessage(e)
	if strings.HasSuffix(msg, "errors in empty disjunction:") {
		return // a heading; the disjuncts' own errors follow
	}
	if strings.Contains(msg, "(:"+PackageName+")") {
		// A schema message whose interpolation met a value that is not
		// concrete; the typed reading reports that value itself.
		return
	}
	r.cueErrors = append(r.cueErrors, cueDiagnostic{
		Diagnostic:    Diagnostic{Pos: pos, Path: formatPath(path), Message: friendlyMessage(path, msg)},
		userPositions: userPositions,
		modelRule:     modelRule,
	})
}

// modelRules are the schema's hidden fields for the rules between a pool's
// model fields (path or source, digest, manifest).
var modelRules = map[string]bool{"_modelPathOrSource": true, "_modelSHA256": true, "_modelFiles": true}

// cueDiagnostic is a CUE error turned into a diagnostic, with what is needed
// to drop the noise of failed disjunctions.
type cueDiagnostic struct {
	Diagnostic
	// userPositions counts the error's positions in config files.
	userPositions int
	// modelRule: the error is a rule between model fields, which tests
	// whether fields have valid values: a wrong value sets it off too.
	modelRule bool
}

// flushCUEErrors adds the CUE errors as diagnostics. When one value
// conflicts with several branches of a disjunction (an enum, say) CUE
// reports each; if some of those conflicts are between values written in
// config files, only those are kept: the others name schema values nobody wrote.
func (r *reader) flushCUEErrors() {
	best := map[string]int{}
	for _, d := range r.cueErrors {
		if strings.HasPrefix(d.Message, "conflicting values") {
			best[d.Path] = max(best[d.Path], d.userPositions)
		}
	}
	// A model with a wrong value is reported for that value alone.
	wrongModel := map[string]bool{}
	for _, d := range r.cueErrors {
		if pool, rest, ok := cutModelPath(d.Path); ok && !d.modelRule && (rest == "" || rest[0] == '.' || rest[0] == '[') {
			wrongModel[pool] = true
		}
	}
	for _, d := range r.cueErrors {
		if strings.HasPrefix(d.Message, "conflicting values") && d.userPositions < best[d.Path] {
			continue
		}
		if pool, _, _ := cutModelPath(d.Path); d.modelRule && wrongModel[pool] {
			continue
		}
		r.diags = append(r.diags, d.Diagnostic)
	}
	r.cueErrors = nil
}

// cutModelPath splits "pools.ID.model..." into "pools.ID" and what follows "model".
func cutModelPath(path string) (pool, rest string, ok bool) {
	rest, ok = strings.CutPrefix(path, "pools.")
	if !ok {
		return "", "", false
	}
	id, after, ok := strings.Cut(rest, ".")
	if !ok {
		return "", "", false
	}
	rest, ok = strings.CutPrefix(after, "model")
	return "pools." + id, rest, ok
}

// cueMessage returns an error's message without the path CUE puts in front.
func cueMessage(e cueerrors.Error) string {
	msg := e.Error()
	if prefix := strings.Join(cueerrors.Path(e), ".") + ": "; strings.HasPrefix(msg, prefix) {
		return msg[len(prefix):]
	}
	format, args := e.Msg()
	return fmt.Sprintf(format, args...)
}

var (
	uniqueItemsError = regexp.MustCompile(`does not satisfy list\.UniqueItems\): equal value \((.*)\) at position (\d+) and (\d+)`)
	minItemsError    = regexp.MustCompile(`does not satisfy list\.MinItems\((\d+)\)`)
	structConflict   = regexp.MustCompile(`^conflicting values (.*) and \{.*\(mismatched types (\w+) and struct\)$`)
	listConflict     = regexp.MustCompile(`^conflicting values (.*) and \[.*\(mismatched types (\w+) and list\)$`)
)

// friendlyMessage rewrites the messages of CUE's builtin validators and of
// type conflicts with the schema's structs into what a person can act on.
func friendlyMessage(path []string, msg string) string {
	field := ""
	if len(path) > 0 {
		field = unquote(path[len(path)-1])
	}
	parent := ""
	if len(path) > 1 {
		parent = unquote(path[len(path)-2])
	}
	switch {
	case msg == "field not allowed" && parent == "env":
		return fmt.Sprintf("%q is not a valid environment variable name (letters, digits and _, not starting with a digit)", field)
	case msg == "field not allowed":
		return fmt.Sprintf("unknown field %s", field)
	}
	if m := uniqueItemsError.FindStringSubmatch(msg); m != nil {
		switch field {
		case "devices":
			return fmt.Sprintf("devices lists GPU %s twice (at positions %s and %s)", m[1], m[2], m[3])
		case "files":
			return fmt.Sprintf("model.files lists path %s twice (files[%s] and files[%s]); each file of the model directory is listed once", m[1], m[2], m[3])
		}
		return fmt.Sprintf("%s lists %s twice (at positions %s and %s)", field, m[1], m[2], m[3])
	}
	if m := minItemsError.FindStringSubmatch(msg); m != nil {
		switch field {
		case "files":
			return "model.files lists no files; list every file of the model directory with its sha256"
		case "devices":
			return "devices must list at least one GPU"
		case "gpus":
			return "a node declares at least one GPU"
		}
		return fmt.Sprintf("%s must have at least %s elements", field, m[1])
	}
	if m := structConflict.FindStringSubmatch(msg); m != nil {
		return fmt.Sprintf("%s must be a struct ({...}), not %s %s", field, m[2], m[1])
	}
	if m := listConflict.FindStringSubmatch(msg); m != nil {
		return fmt.Sprintf("%s must be a list ([...]), not %s %s", field, m[2], m[1])
	}
	return msg
}

// positions holds a group's evaluated value while positions are read from
// it. Released, it keeps only what evaluates the group again.
type positions struct {
	mu   sync.Mutex
	root cue.Value
	live bool
	// userFiles are the names of the group's config files, as evaluated.
	userFiles map[string]bool
	// rebuild evaluates the group again; nil when the value cannot be released.
	rebuild func() cue.Value
}

// value returns the evaluated value, evaluating the group again if it was
// released; it holds the lock until done is called.
func (ps *positions) value() (root cue.Value, done func()) {
	ps.mu.Lock()
	if !ps.live {
		ps.root, ps.live = ps.rebuild(), true
	}
	return ps.root, ps.mu.Unlock
}

// release drops the evaluated value, so that only Go values stay.
func (ps *positions) release() {
	ps.mu.Lock()
	defer ps.mu.Unlock()
	if ps.rebuild != nil {
		ps.root, ps.live = cue.Value{}, false
	}
}

// posResolver finds where values of an evaluated config are written.
type posResolver struct {
	*positions
	// fallback is the file named when nothing better is known: every diagnostic names a file.
	fallback string
	// shown maps the names the files were evaluated under to the names
	// people see; nil while the group is read, whose diagnostics the loader renames.
	shown *shownNames
}

// posAt returns where the value at path, or its nearest parent, is written in a config file.
func (pr *posResolver) posAt(path []cue.Selector) Pos {
	root, done := pr.value()
	defer done()
	// The search stops at the node or pool (or the top-level field): the
	// nodes and pools structs, and the root, hold every file's fields, so
	// where they are written depends on which files are evaluated together.
	floor := 1
	if len(path) > 0 && (path[0].String() == "nodes" || path[0].String() == "pools") {
		floor = 2
	}
	for n := len(path); n >= floor; n-- {
		if p := pr.userPos(root.LookupPath(cue.MakePath(path[:n]...))); p.File != "" {
			return pr.shown.pos(p)
		}
	}
	return pr.shown.pos(Pos{File: pr.fallback})
}

func selectors(path []string) []cue.Selector {
	sels := make([]cue.Selector, 0, len(path))
	for _, s := range path {
		sels = append(sels, selectorOf(s))
	}
	return sels
}

// formatPath writes a CUE error path the way diagnostics name fields:
// pools.x.split[1], nodes.gpu-01.gpus[0].vram.
func formatPath(path []string) string {
	var b strings.Builder
	for _, s := range path {
		if _, err := strconv.Atoi(s); err == nil {
			fmt.Fprintf(&b, "[%s]", s)
			continue
		}
		if b.Len() > 0 {
			b.WriteByte('.')
		}
		b.WriteString(unquote(s))
	}
	return b.String()
}

func selectorOf(s string) cue.Selector {
	if strings.HasPrefix(s, "_") {
		return cue.Hid(s, "_")
	}
	var idx int
	if _, err := fmt.Sscanf(s, "%d", &idx); err == nil && fmt.Sprint(idx) == s {
		return cue.Index(idx)
	}
	return cue.Str(unquote(s))
}

func unquote(s string) string {
	if len(s) >= 2 && s[0] == '"' && s[len(s)-1] == '"' {
		return s[1 : len(s)-1]
	}
	return s
}

// userPos returns where a value is written in a config file (not in the schema).
func (ps *positions) userPos(v cue.Value) Pos {
	if !v.Exists() {
		return Pos{}
	}
	if p := v.Pos(); ps.userFiles[p.Filename()] {
		return posOf(p)
	}
	var best Pos
	if op, args := v.Expr(); op == cue.AndOp {
		for _, a := range args {
			if p := a.Pos(); ps.userFiles[p.Filename()] {
				if pp := posOf(p); best.File == "" || comparePos(pp, best) < 0 {
					best = pp
				}
			}
		}
	}
	return best
}

func posOf(p interface {
	Filename() string
	Line() int
	Column() int
}) Pos {
	return Pos{File: filepath.ToSlash(p.Filename()), Line: p.Line(), Column: p.Column()}
}

// cueDiagnostics converts a CUE error (a syntax error, say) to diagnostics at its positions.
func cueDiagnostics(err error, userFiles map[string]bool) Diagnostics {
	var out Diagnostics
	for _, e := range cueerrors.Errors(err) {
		var pos Pos
		for _, p := range cueerrors.Positions(e) {
			if userFiles == nil || userFiles[p.Filename()] {
				pos = posOf(p)
				break
			}
		}
		format, args := e.Msg()
		out = append(out, Diagnostic{Pos: pos, Message: fmt.Sprintf(format, args...)})
	}
	return out
}
