package examples_test

import (
	"os"
	"strings"
	"testing"
)

// The repository is licensed under Apache 2.0: LICENSE holds the license's
// full text, from its title to its appendix, and the README says so.
func TestLicense(t *testing.T) {
	data, err := os.ReadFile("../LICENSE")
	if err != nil {
		t.Fatalf("the repository has no LICENSE: %v", err)
	}
	text := strings.Join(strings.Fields(string(data)), " ")
	for _, want := range []string{
		"Apache License Version 2.0, January 2004 http://www.apache.org/licenses/",
		"1. Definitions.",
		"9. Accepting Warranty or Additional Liability.",
		"END OF TERMS AND CONDITIONS",
		"APPENDIX: How to apply the Apache License to your work.",
	} {
		if !strings.Contains(text, want) {
			t.Errorf("LICENSE lacks %q: not the full Apache 2.0 text", want)
		}
	}
	readme, err := os.ReadFile("../README.md")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(readme), "[Apache License 2.0](LICENSE)") {
		t.Errorf("README.md does not name the license: want a link [Apache License 2.0](LICENSE)")
	}
}
