package preset

import (
	"go/ast"
	"go/parser"
	"go/token"
	"path/filepath"
	"strconv"
	"testing"
)

// The marker variable the engines carry must be the one observe scans /proc
// for. observe is read as source rather than imported: it imports reconcile,
// which may import this package.
func TestMarkerEnvMatchesObserve(t *testing.T) {
	path := filepath.Join("..", "..", "..", "internal", "observe", "observe.go")
	f, err := parser.ParseFile(token.NewFileSet(), path, nil, 0)
	if err != nil {
		t.Fatal(err)
	}
	var lit *ast.BasicLit
	ast.Inspect(f, func(n ast.Node) bool {
		if spec, ok := n.(*ast.ValueSpec); ok && len(spec.Names) == 1 && spec.Names[0].Name == "MarkerEnv" && len(spec.Values) == 1 {
			lit, _ = spec.Values[0].(*ast.BasicLit)
		}
		return lit == nil
	})
	if lit == nil {
		t.Fatalf("%s: no MarkerEnv string constant", path)
	}
	got, err := strconv.Unquote(lit.Value)
	if err != nil {
		t.Fatal(err)
	}
	if got != MarkerEnv {
		t.Fatalf("observe.MarkerEnv = %q, preset.MarkerEnv = %q", got, MarkerEnv)
	}
}
