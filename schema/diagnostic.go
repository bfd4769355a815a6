package schema

import (
	"cmp"
	"fmt"
	"slices"
	"strings"
)

// Pos is a position in a config file. Line and Column are 1-based; a Pos
// with Line 0 refers to the file as a whole.
type Pos struct {
	File   string `json:"file"`
	Line   int    `json:"line,omitempty"`
	Column int    `json:"column,omitempty"`
}

func (p Pos) String() string {
	switch {
	case p.File == "":
		return "-"
	case p.Line == 0:
		return p.File
	default:
		return fmt.Sprintf("%s:%d:%d", p.File, p.Line, p.Column)
	}
}

func comparePos(a, b Pos) int {
	return cmp.Or(cmp.Compare(a.File, b.File), cmp.Compare(a.Line, b.Line), cmp.Compare(a.Column, b.Column))
}

// Diagnostic is one problem found in a config: where, in which field, and what is wrong.
type Diagnostic struct {
	Pos Pos `json:"pos"`
	// Path is the CUE path of the field at fault, such as pools.coder.split; empty for file-level problems.
	Path    string `json:"path,omitempty"`
	Message string `json:"message"`
}

func (d Diagnostic) String() string {
	if d.Path == "" {
		return fmt.Sprintf("%s: %s", d.Pos, d.Message)
	}
	return fmt.Sprintf("%s: %s: %s", d.Pos, d.Path, d.Message)
}

// Diagnostics is every problem found in a config. As an error it lists them all, one a line.
type Diagnostics []Diagnostic

func (ds Diagnostics) Error() string {
	lines := make([]string, len(ds))
	for i, d := range ds {
		lines[i] = d.String()
	}
	return strings.Join(lines, "\n")
}

// normalize sorts the diagnostics by position, then path and message, and drops duplicates.
func (ds Diagnostics) normalize() Diagnostics {
	slices.SortFunc(ds, func(a, b Diagnostic) int {
		return cmp.Or(comparePos(a.Pos, b.Pos), cmp.Compare(a.Path, b.Path), cmp.Compare(a.Message, b.Message))
	})
	return slices.Compact(ds)
}
