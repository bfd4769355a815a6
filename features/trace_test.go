package features

import (
	"bufio"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strings"
	"testing"
)

// requirementsDoc is the requirements document whose IDs the scenarios carry as tags.
const requirementsDoc = "../docs/requirements.md"

var (
	// requirementRow is a row of the document's tables: "| OC-POOL-3001 | ...".
	requirementRow = regexp.MustCompile(`^\|\s*([A-Z]+(?:-[A-Z]+)*-\d+)\s*\|`)
	// requirementTag is a tag shaped like a requirement ID.
	requirementTag = regexp.MustCompile(`^@([A-Z]+(?:-[A-Z]+)*-\d+)$`)
)

// requirementIDs reads the IDs of the requirements document.
func requirementIDs(path string) ([]string, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var ids []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if m := requirementRow.FindStringSubmatch(sc.Text()); m != nil {
			ids = append(ids, m[1])
		}
	}
	return ids, sc.Err()
}

// tagUse is where a feature file carries a requirement tag.
type tagUse struct {
	file string
	line int
}

// requirementTags reads every requirement-shaped tag of the feature files
// in dir, with where it is.
func requirementTags(dir string) (map[string][]tagUse, error) {
	files, err := filepath.Glob(filepath.Join(dir, "*.feature"))
	if err != nil {
		return nil, err
	}
	tags := map[string][]tagUse{}
	for _, file := range files {
		data, err := os.ReadFile(file)
		if err != nil {
			return nil, err
		}
		for i, line := range strings.Split(string(data), "\n") {
			line = strings.TrimSpace(line)
			if !strings.HasPrefix(line, "@") {
				continue
			}
			for _, tag := range strings.Fields(line) {
				if m := requirementTag.FindStringSubmatch(tag); m != nil {
					tags[m[1]] = append(tags[m[1]], tagUse{file: filepath.Base(file), line: i + 1})
				}
			}
		}
	}
	return tags, nil
}

// TestEveryRequirementHasAScenario fails when a requirement of
// docs/requirements.md is carried by no scenario, or a scenario carries an
// ID the document does not have.
func TestEveryRequirementHasAScenario(t *testing.T) {
	ids, err := requirementIDs(requirementsDoc)
	if err != nil {
		t.Fatal(err)
	}
	if len(ids) < 20 {
		t.Fatalf("found %d requirement IDs in %s; the table format changed?", len(ids), requirementsDoc)
	}
	tags, err := requirementTags(".")
	if err != nil {
		t.Fatal(err)
	}
	problems := traceProblems(ids, tags)
	for _, p := range problems {
		t.Error(p)
	}
}

// traceProblems lists the requirements without a scenario and the tags
// that name no requirement.
func traceProblems(ids []string, tags map[string][]tagUse) []string {
	var problems []string
	for _, id := range ids {
		if len(tags[id]) == 0 {
			problems = append(problems, fmt.Sprintf("requirement %s of docs/requirements.md has no scenario: tag one with @%s", id, id))
		}
	}
	var unknown []string
	for tag := range tags {
		if !slices.Contains(ids, tag) {
			unknown = append(unknown, tag)
		}
	}
	sort.Strings(unknown)
	for _, tag := range unknown {
		for _, u := range tags[tag] {
			problems = append(problems, fmt.Sprintf("%s:%d: tag @%s is not a requirement of docs/requirements.md", u.file, u.line, tag))
		}
	}
	return problems
}

// TestTraceProblems checks that the trace check can fail, both ways.
func TestTraceProblems(t *testing.T) {
	ids := []string{"PM-1001", "OC-POOL-3001"}
	cases := []struct {
		name string
		tags map[string][]tagUse
		want []string
	}{
		{"all covered", map[string][]tagUse{"PM-1001": {{"a.feature", 3}}, "OC-POOL-3001": {{"b.feature", 9}}}, nil},
		{"one missing", map[string][]tagUse{"PM-1001": {{"a.feature", 3}}}, []string{
			"requirement OC-POOL-3001 of docs/requirements.md has no scenario: tag one with @OC-POOL-3001"}},
		{"unknown tag", map[string][]tagUse{"PM-1001": {{"a.feature", 3}}, "OC-POOL-3001": {{"b.feature", 9}}, "PM-9999": {{"c.feature", 12}}}, []string{
			"c.feature:12: tag @PM-9999 is not a requirement of docs/requirements.md"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if got := traceProblems(ids, c.tags); !slices.Equal(got, c.want) {
				t.Errorf("got %q, want %q", got, c.want)
			}
		})
	}
}

// TestRequirementTagsParse checks the readers on files written here.
func TestRequirementTagsParse(t *testing.T) {
	dir := t.TempDir()
	feature := "Feature: x\n  @PM-1001 @smoke\n  Scenario: s\n    Given y\n\n  @OC-POOL-3001\n  Scenario Outline: o\n"
	if err := os.WriteFile(filepath.Join(dir, "x.feature"), []byte(feature), 0o644); err != nil {
		t.Fatal(err)
	}
	tags, err := requirementTags(dir)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string][]tagUse{"PM-1001": {{"x.feature", 2}}, "OC-POOL-3001": {{"x.feature", 6}}}
	if fmt.Sprint(tags) != fmt.Sprint(want) {
		t.Errorf("tags %v, want %v", tags, want)
	}
	doc := filepath.Join(dir, "req.md")
	if err := os.WriteFile(doc, []byte("| ID | requirement |\n|---|---|\n| PM-1001 | a |\n| OC-POOL-3001 | b |\ntext PM-1002\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	ids, err := requirementIDs(doc)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(ids, []string{"PM-1001", "OC-POOL-3001"}) {
		t.Errorf("ids %v", ids)
	}
}
