package schema

import (
	"sort"

	"cuelang.org/go/cue/ast"
)

// fileSummary is what the partition needs to know of one config file, as
// plain data read from a fresh parse: nothing of the syntax tree is kept.
type fileSummary struct {
	// declares are the top-level names the file declares, other than nodes and pools.
	declares []string
	// writes are the nodes and pools keys the file writes ("nodes.x", "pools.y").
	writes []string
	// refs are the identifiers the file uses as values: names it may take from elsewhere.
	refs []string
	// shared are the refs that name nodes, pools or a name of the schema:
	// every file that uses one of them is evaluated with the others that
	// do, since CUE may report a problem of the one value they share at any
	// of its uses.
	shared []string
	// tiesAll: the file has something the partition cannot classify (a
	// comprehension or an embedding at the top, a computed label, a
	// declaration of a name the schema uses): it is evaluated with every file.
	tiesAll bool
}

// summarizeFile reads a parsed config file's top-level declarations, the nodes
// and pools keys it writes and the names it refers to. schemaNames are the
// top-level names the schema declares: a file that declares one of them
// changes the schema for every file.
func summarizeFile(f *ast.File, schemaNames map[string]bool) fileSummary {
	var s fileSummary
	declared := map[string]bool{}
	written := map[string]bool{}
	for _, decl := range f.Decls {
		switch d := decl.(type) {
		case *ast.Package, *ast.ImportDecl, *ast.CommentGroup, *ast.Attribute:
		case *ast.Field:
			name, _, err := ast.LabelName(d.Label)
			if err != nil {
				s.tiesAll = true
				continue
			}
			if name != "nodes" && name != "pools" {
				if schemaNames[name] {
					s.tiesAll = true
				}
				declared[name] = true
				continue
			}
			lit, ok := d.Value.(*ast.StructLit)
			if !ok {
				s.tiesAll = true
				continue
			}
			for _, elt := range lit.Elts {
				field, ok := elt.(*ast.Field)
				if !ok {
					if _, comment := elt.(*ast.CommentGroup); !comment {
						s.tiesAll = true
					}
					continue
				}
				key, _, err := ast.LabelName(field.Label)
				if err != nil {
					s.tiesAll = true
					continue
				}
				written[name+"."+key] = true
			}
		default:
			s.tiesAll = true
		}
	}
	s.declares = sortedKeys(declared)
	s.writes = sortedKeys(written)
	s.refs = sortedKeys(references(f))
	for _, name := range s.refs {
		if name == "nodes" || name == "pools" || schemaNames[name] {
			s.shared = append(s.shared, name)
		}
	}
	return s
}

func sortedKeys(m map[string]bool) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// components splits files into the groups that can be evaluated apart: the
// connected components of the relation "tied". Two files are tied when they
// declare the same top-level name, write the same node or pool, or one
// refers to a name the other declares; a reference to nodes or pools as a
// whole ties a file to every file that writes either or uses them (so does a
// reference to a name of the schema, to the other files that use it), and a
// file the summary could not classify is tied to every file. Each component lists indices
// into files in increasing order; the components are ordered by their
// first file.
func components(files []fileSummary) [][]int {
	parent := make([]int, len(files))
	for i := range parent {
		parent[i] = i
	}
	find := func(i int) int {
		for parent[i] != i {
			parent[i] = parent[parent[i]]
			i = parent[i]
		}
		return i
	}
	union := func(a, b int) {
		ra, rb := find(a), find(b)
		switch {
		case ra < rb:
			parent[rb] = ra
		case rb < ra:
			parent[ra] = rb
		}
	}
	declaredBy := map[string]int{} // top-level name → first file declaring it
	writtenBy := map[string]int{}  // "pools.id" → first file writing it
	writers := map[string][]int{}  // "nodes", "pools" → files writing keys of it
	all := -1                      // first file tied to everything
	for i, f := range files {
		if f.tiesAll {
			if all < 0 {
				all = i
			}
			union(all, i)
		}
		for _, name := range f.declares {
			if first, ok := declaredBy[name]; ok {
				union(first, i)
			} else {
				declaredBy[name] = i
			}
		}
		for _, key := range f.writes {
			if first, ok := writtenBy[key]; ok {
				union(first, i)
			} else {
				writtenBy[key] = i
			}
			top := key[:len("pools")] // "nodes" and "pools" are both five letters
			if w := writers[top]; len(w) == 0 || w[len(w)-1] != i {
				writers[top] = append(w, i)
			}
		}
	}
	if all >= 0 {
		for i := range files {
			union(all, i)
		}
	}
	usedBy := map[string]int{} // shared name → first file using it
	for i, f := range files {
		for _, name := range f.shared {
			if first, ok := usedBy[name]; ok {
				union(first, i)
			} else {
				usedBy[name] = i
			}
		}
		for _, name := range f.refs {
			if name == "nodes" || name == "pools" {
				// Conservative: how CUE reports a problem with what the
				// file reads (a node that is not there) depends on how far
				// the rest of nodes and pools were evaluated.
				for _, w := range writers["nodes"] {
					union(i, w)
				}
				for _, w := range writers["pools"] {
					union(i, w)
				}
				continue
			}
			if owner, ok := declaredBy[name]; ok {
				union(i, owner)
			}
		}
	}
	index := map[int]int{}
	var out [][]int
	for i := range files {
		r := find(i)
		c, ok := index[r]
		if !ok {
			c = len(out)
			index[r] = c
			out = append(out, nil)
		}
		out[c] = append(out[c], i)
	}
	return out
}

// partition splits parsed config files into the groups components gives.
func partition(files []parsedFile) [][]parsedFile {
	summaries := make([]fileSummary, len(files))
	for i, f := range files {
		summaries[i] = summarizeFile(f.syntax, nil)
	}
	var out [][]parsedFile
	for _, c := range components(summaries) {
		group := make([]parsedFile, len(c))
		for j, i := range c {
			group[j] = files[i]
		}
		out = append(out, group)
	}
	return out
}

// references collects the identifiers a file uses as values (not as labels,
// selected field names or the package's name): the names it may take from elsewhere.
func references(f *ast.File) map[string]bool {
	labels := map[*ast.Ident]bool{}
	out := map[string]bool{}
	ast.Walk(f, func(n ast.Node) bool {
		switch x := n.(type) {
		case *ast.Package:
			labels[x.Name] = true
		case *ast.ImportSpec:
			if x.Name != nil {
				labels[x.Name] = true
			}
		case *ast.Field:
			if id, ok := x.Label.(*ast.Ident); ok {
				labels[id] = true
			}
		case *ast.SelectorExpr:
			if id, ok := x.Sel.(*ast.Ident); ok {
				labels[id] = true
			}
		case *ast.Ident:
			if !labels[x] {
				out[x.Name] = true
			}
		}
		return true
	}, nil)
	return out
}
