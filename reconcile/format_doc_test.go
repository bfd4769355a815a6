package reconcile

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/poolmanagerd/pool-managerd/schema"
)

// formatDoc is the documented plan format.
const formatDoc = "../docs/plan-format.md"

// docBlock is a fenced code block of the format document.
type docBlock struct {
	info   string // the fence's info string: "json" (a whole plan) or "json change" (one change)
	text   string
	line   int
	golden string // the golden file the block copies, from a <!-- golden: PATH --> line before it
}

func docBlocks(t *testing.T, doc string) []docBlock {
	t.Helper()
	var blocks []docBlock
	lines := strings.SplitAfter(doc, "\n")
	for i := 0; i < len(lines); i++ {
		info, ok := strings.CutPrefix(strings.TrimRight(lines[i], "\n"), "```")
		if !ok || info == "" {
			continue
		}
		b := docBlock{info: strings.TrimSpace(info), line: i + 1}
		if i > 0 {
			if path, ok := strings.CutPrefix(strings.TrimSpace(lines[i-1]), "<!-- golden: "); ok {
				b.golden = strings.TrimSpace(strings.TrimSuffix(path, "-->"))
			}
		}
		var body strings.Builder
		for i++; i < len(lines) && strings.TrimRight(lines[i], "\n") != "```"; i++ {
			body.WriteString(lines[i])
		}
		if i == len(lines) {
			t.Fatalf("%s:%d: the code block is not closed", formatDoc, b.line)
		}
		b.text = body.String()
		blocks = append(blocks, b)
	}
	return blocks
}

// TestFormatDocExamples parses every JSON example of docs/plan-format.md as
// apply would: a ```json block is a whole plan (reconcile.ReadJSON), a
// ```json change block one entry of changes (decoded strictly). Each must be
// written exactly as WriteJSON writes it, and a block marked as a copy of a
// golden file must still be one.
func TestFormatDocExamples(t *testing.T) {
	data, err := os.ReadFile(formatDoc)
	if err != nil {
		t.Fatal(err)
	}
	plans := 0
	for _, b := range docBlocks(t, string(data)) {
		where := fmt.Sprintf("%s:%d", formatDoc, b.line)
		var canonical bytes.Buffer
		switch b.info {
		case "json":
			plans++
			p, err := ReadJSON(strings.NewReader(b.text))
			if err != nil {
				t.Errorf("%s: the example plan does not read: %v", where, err)
				continue
			}
			if err := WriteJSON(&canonical, p); err != nil {
				t.Fatal(err)
			}
		case "json change":
			var c Change
			dec := json.NewDecoder(strings.NewReader(b.text))
			dec.DisallowUnknownFields()
			if err := dec.Decode(&c); err != nil {
				t.Errorf("%s: the example change does not decode: %v", where, err)
				continue
			}
			if c.Action.order() == 99 {
				t.Errorf("%s: the example change has an unknown action %q", where, c.Action)
			}
			enc := json.NewEncoder(&canonical)
			enc.SetIndent("", "  ")
			if err := enc.Encode(c); err != nil {
				t.Fatal(err)
			}
		default:
			if strings.HasPrefix(b.info, "json") {
				t.Errorf("%s: unknown JSON block %q: want json (a plan) or json change", where, b.info)
			}
			continue
		}
		if canonical.String() != b.text {
			t.Errorf("%s: the example is not as pool-managerd writes it; want:\n%s", where, canonical.String())
		}
		if b.golden != "" {
			want, err := os.ReadFile(filepath.Join("..", b.golden))
			if err != nil {
				t.Errorf("%s: %v", where, err)
			} else if string(want) != b.text {
				t.Errorf("%s: the example is no longer a copy of %s; copy it again", where, b.golden)
			}
		}
	}
	if plans == 0 {
		t.Errorf("%s has no complete example plan (a ```json block)", formatDoc)
	}
}

// TestFormatDocCoversFields checks that docs/plan-format.md names, in
// backquotes, every JSON field of the plan and of the pool spec, every
// action with its symbol, and every blocker class, and states the current
// format version.
func TestFormatDocCoversFields(t *testing.T) {
	data, err := os.ReadFile(formatDoc)
	if err != nil {
		t.Fatal(err)
	}
	doc := string(data)
	if want := fmt.Sprintf("# The plan format, version %d\n", FormatVersion); !strings.HasPrefix(doc, want) {
		t.Errorf("%s does not start with %q", formatDoc, want)
	}
	if want := fmt.Sprintf("`formatVersion` is `%d`", FormatVersion); !strings.Contains(doc, want) {
		t.Errorf("%s does not say %q", formatDoc, want)
	}
	mention := func(what, name string) {
		if !strings.Contains(doc, "`"+name+"`") {
			t.Errorf("%s does not describe %s `%s`", formatDoc, what, name)
		}
	}
	for _, typ := range []any{NodePlan{}, Change{}, FieldChange{}, Blocker{}, GPUNeed{}, RAMNeed{}, ModelFetch{}, Unchanged{}, Summary{}, schema.Pool{}, schema.Model{}} {
		rt := reflect.TypeOf(typ)
		for _, name := range jsonNames(rt) {
			mention(rt.Name()+" field", name)
		}
	}
	// The restart policy has its own JSON form (durations as strings).
	rp, err := json.Marshal(schema.RestartPolicy{InitialBackoff: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	var fields map[string]json.RawMessage
	if err := json.Unmarshal(rp, &fields); err != nil {
		t.Fatal(err)
	}
	var breaker map[string]json.RawMessage
	if err := json.Unmarshal(fields["breaker"], &breaker); err != nil {
		t.Fatal(err)
	}
	for _, m := range []map[string]json.RawMessage{fields, breaker} {
		for name := range m {
			mention("restart policy field", name)
		}
	}
	for _, a := range []Action{Delete, Replace, Update, Restart, Create, Adopt, Blocked} {
		row := fmt.Sprintf("| %d | `%s` | `%s` |", a.order()+1, a, a.Symbol())
		if !strings.Contains(doc, row) {
			t.Errorf("%s has no row %q for action %s (its order and symbol)", formatDoc, row, a)
		}
	}
	for _, class := range blockerClasses {
		mention("blocker class", class)
	}
}

// jsonNames lists the JSON field names of a struct type, embedded structs' included.
func jsonNames(rt reflect.Type) []string {
	var names []string
	for i := range rt.NumField() {
		f := rt.Field(i)
		tag := f.Tag.Get("json")
		name, _, _ := strings.Cut(tag, ",")
		switch {
		case name == "-" || !f.IsExported():
		case f.Anonymous && name == "":
			names = append(names, jsonNames(f.Type)...)
		case name == "":
			names = append(names, f.Name)
		default:
			names = append(names, name)
		}
	}
	sort.Strings(names)
	return names
}
