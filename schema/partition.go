package schema

import (
	"runtime"
	"sort"

	"cuelang.org/go/cue/ast"
)

// parallelThreshold is the config size (bytes of CUE) from which the files
// are evaluated in two groups at once; below it one evaluation is faster.
const parallelThreshold = 256 << 10

// partition splits the config files into groups that can be evaluated
// apart, on two cores: only when the files are independent — no node or
// pool is written in two files, and no file refers to a name declared at the
// top of another (shared defaults, say). Otherwise, and for small configs,
// it returns one group: the files evaluated together, as CUE defines them.
func partition(files []parsedFile) [][]parsedFile {
	total := 0
	for _, f := range files {
		total += f.size
	}
	if len(files) < 2 || total < parallelThreshold || runtime.GOMAXPROCS(0) < 2 || !independent(files) {
		return [][]parsedFile{files}
	}
	bySize := append([]parsedFile(nil), files...)
	sort.SliceStable(bySize, func(i, j int) bool { return bySize[i].size > bySize[j].size })
	var groups [2][]parsedFile
	var sizes [2]int
	for _, f := range bySize {
		g := 0
		if sizes[1] < sizes[0] {
			g = 1
		}
		groups[g] = append(groups[g], f)
		sizes[g] += f.size
	}
	return [][]parsedFile{groups[0], groups[1]}
}

// independent reports whether every file can be evaluated without the others.
func independent(files []parsedFile) bool {
	declaredBy := map[string]int{} // top-level name → the file declaring it (-1: several)
	keysBy := map[string]int{}     // "pools.id" → file
	refs := make([]map[string]bool, len(files))
	for i, f := range files {
		for _, decl := range f.syntax.Decls {
			switch d := decl.(type) {
			case *ast.Package, *ast.ImportDecl, *ast.CommentGroup, *ast.Attribute:
			case *ast.Field:
				name, _, err := ast.LabelName(d.Label)
				if err != nil {
					return false
				}
				if name != "nodes" && name != "pools" {
					if prev, ok := declaredBy[name]; ok && prev != i {
						return false // declared in two files: they unify, and may conflict
					}
					declaredBy[name] = i
					continue
				}
				lit, ok := d.Value.(*ast.StructLit)
				if !ok {
					return false
				}
				for _, elt := range lit.Elts {
					field, ok := elt.(*ast.Field)
					if !ok {
						if _, comment := elt.(*ast.CommentGroup); comment {
							continue
						}
						return false
					}
					key, _, err := ast.LabelName(field.Label)
					if err != nil {
						return false
					}
					if prev, dup := keysBy[name+"."+key]; dup && prev != i {
						return false // written in two files: unify them together
					}
					keysBy[name+"."+key] = i
				}
			default:
				return false
			}
		}
		refs[i] = references(f.syntax)
	}
	for i := range files {
		for name := range refs[i] {
			if name == "nodes" || name == "pools" {
				return false
			}
			if owner, ok := declaredBy[name]; ok && owner != i {
				return false
			}
		}
	}
	return true
}

// references collects the identifiers a file uses as values (not as labels
// or selected field names): the names it may take from elsewhere.
func references(f *ast.File) map[string]bool {
	labels := map[*ast.Ident]bool{}
	out := map[string]bool{}
	ast.Walk(f, func(n ast.Node) bool {
		switch x := n.(type) {
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
