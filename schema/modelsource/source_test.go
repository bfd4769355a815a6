package modelsource_test

import (
	"strings"
	"testing"

	"github.com/poolmanagerd/pool-managerd/schema/modelsource"
)

const commit = "0123456789abcdef0123456789abcdef01234567"

func TestParse(t *testing.T) {
	const hub = "https://huggingface.co/org/repo/resolve/" + commit
	for _, tc := range []struct {
		in   string
		url  string
		file string
		hf   bool
		// wantErr is a substring of the error; "" for none.
		wantErr string
	}{
		{in: "hf://org/repo@" + commit + "/model.gguf", url: hub + "/model.gguf", file: "model.gguf", hf: true},
		{in: "hf://org/repo@" + commit + "/sub/dir/model.gguf", url: hub + "/sub/dir/model.gguf", file: "model.gguf", hf: true},
		{in: "hf://org/repo@" + commit + "/my model.gguf", url: hub + "/my%20model.gguf", file: "my model.gguf", hf: true},
		// A model directory: the whole repository, or a directory of it.
		{in: "hf://org/repo@" + commit, url: hub, hf: true},
		{in: "hf://org/repo@" + commit + "/", url: hub, hf: true},
		{in: "hf://org/repo@" + commit + "/awq", url: hub + "/awq", file: "awq", hf: true},
		{in: "https://example.com/models/m.gguf", url: "https://example.com/models/m.gguf", file: "m.gguf"},
		{in: "https://example.com/dl/m.gguf?download=true", url: "https://example.com/dl/m.gguf?download=true", file: "m.gguf"},
		{in: "https://example.com/dl/my%20model.gguf", url: "https://example.com/dl/my%20model.gguf", file: "my model.gguf"},
		{in: "https://example.com/dl/a%2Fb.gguf", url: "https://example.com/dl/a%2Fb.gguf", file: ""},
		{in: "https://example.com/models/%2e%2e", url: "https://example.com/models/%2e%2e", file: ""},
		{in: "https://example.com/models/chat/", url: "https://example.com/models/chat/", file: ""},
		{in: "https://example.com", url: "https://example.com", file: ""},
		{in: "http://127.0.0.1:8080/m.gguf", url: "http://127.0.0.1:8080/m.gguf", file: "m.gguf"},
		{in: "http://127.0.0.2/m.gguf", url: "http://127.0.0.2/m.gguf", file: "m.gguf"},
		{in: "http://localhost:8080/m.gguf", url: "http://localhost:8080/m.gguf", file: "m.gguf"},
		{in: "http://[::1]:8080/m.gguf", url: "http://[::1]:8080/m.gguf", file: "m.gguf"},

		{in: "", wantErr: "model source is empty"},
		{in: "hf://org/repo/model.gguf", wantErr: "has no revision: write hf://ORG/REPO@COMMIT/FILE with COMMIT the repository's 40-hex commit"},
		{in: "hf://org/repo@/model.gguf", wantErr: "has no revision"},
		{in: "hf://org/repo@main/model.gguf", wantErr: `revision "main" is a branch or tag, which moves: pin a 40-hex commit`},
		{in: "hf://org/repo@" + strings.ToUpper(commit) + "/model.gguf", wantErr: "in lowercase"},
		{in: "hf://org/repo@" + commit[:12] + "/model.gguf", wantErr: `revision "` + commit[:12] + `" is not a full commit id`},
		{in: "hf://org", wantErr: "names no repository"},
		{in: "hf://org/@" + commit + "/model.gguf", wantErr: "names no repository"},
		{in: "hf://repo@" + commit + "/model.gguf", wantErr: "has no ORG/ before the repository"},
		{in: "hf://o%20g/repo@" + commit + "/model.gguf", wantErr: `"o%20g" is not a Hugging Face organisation or user name`},
		{in: "hf://org/-repo@" + commit + "/model.gguf", wantErr: `"-repo" is not a Hugging Face repository name`},
		{in: "hf://org/repo@" + commit + "/../x.gguf", wantErr: `in the repository, path "../x.gguf" has a ".." element`},
		{in: "hf://org/repo@" + commit + "/dir/", wantErr: "has an empty element"},
		{in: "hf://org/repo@" + commit + "/a\\b.gguf", wantErr: "backslash"},
		{in: "http://example.com/m.gguf", wantErr: "allowed only for loopback hosts"},
		{in: "ftp://example.com/m.gguf", wantErr: `scheme "ftp" is not supported`},
		{in: "example.com/m.gguf", wantErr: "has no scheme"},
		{in: "https:///m.gguf", wantErr: "names no host"},
		{in: "https://user:pw@example.com/m.gguf", wantErr: "carries credentials"},
		{in: "https://example.com/m.gguf#x", wantErr: "#fragment"},
		{in: "https://example.com/m.gguf#", wantErr: "#fragment"},
	} {
		t.Run(tc.in, func(t *testing.T) {
			got, err := modelsource.Parse(tc.in)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("Parse(%q) = %+v, %v; want an error containing %q", tc.in, got, err, tc.wantErr)
				}
				if !strings.HasPrefix(err.Error(), "model source") {
					t.Errorf("Parse(%q): error %q does not start with \"model source\"", tc.in, err)
				}
				return
			}
			if err != nil {
				t.Fatalf("Parse(%q): %v", tc.in, err)
			}
			if got.Raw != tc.in || got.URL != tc.url || got.File != tc.file || got.HF != tc.hf {
				t.Errorf("Parse(%q) = raw %q URL %q file %q hf %v; want URL %q file %q hf %v", tc.in, got.Raw, got.URL, got.File, got.HF, tc.url, tc.file, tc.hf)
			}
			if tc.hf && (got.Repo != "org/repo" || got.Revision != commit) {
				t.Errorf("Parse(%q): repo %q revision %q", tc.in, got.Repo, got.Revision)
			}
		})
	}
	if _, err := modelsource.Parse("https://user:secret@example.com/m.gguf"); err == nil || strings.Contains(err.Error(), "secret") {
		t.Errorf("Parse of a URL with a password: error %v; want one that does not show it", err)
	}
}

func TestCheckDigest(t *testing.T) {
	good := strings.Repeat("ab", 32)
	for _, tc := range []struct {
		in string
		ok bool
	}{
		{good, true},
		{"", false},
		{good[:63], false},
		{strings.ToUpper(good), false},
		{strings.Repeat("g", 64), false},
	} {
		if err := modelsource.CheckDigest(tc.in); (err == nil) != tc.ok {
			t.Errorf("CheckDigest(%q) = %v; want ok=%v", tc.in, err, tc.ok)
		}
		if modelsource.IsDigest(tc.in) != tc.ok {
			t.Errorf("IsDigest(%q) != %v", tc.in, tc.ok)
		}
	}
}

// TestManifestDigest pins the manifest digest: for a directory of these
// three files, what the README's pipeline printed,
//
//	(cd DIR && find . -type f | sed 's,^\./,,' | LC_ALL=C sort | xargs -d '\n' sha256sum) | sha256sum
//
// with config.json "{}\n", tokenizer.json "x", weights/model.safetensors "abc".
func TestManifestDigest(t *testing.T) {
	const want = "3d656d0c5df2a7f9a5613419b707d3479f2b5d1b856b19d6b2666c5d8994ba44"
	files := []modelsource.File{
		{Path: "weights/model.safetensors", SHA256: "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad", Size: 3},
		{Path: "config.json", SHA256: "ca3d163bab055381827226140568f3bef7eaac187cebd76878e0b63e9e442356", Size: 3},
		{Path: "tokenizer.json", SHA256: "2d711642b726b04401627ca9fbac32f5c8530fb1903cc4db02258717921a4881", Size: 1},
	}
	m := modelsource.Manifest{Files: files}
	if err := m.Validate(); err != nil {
		t.Fatalf("Validate: %v", err)
	}
	if got := m.Digest(); got != want {
		t.Errorf("Digest() = %s, want %s (what sha256sum prints)", got, want)
	}
	if files[0].Path != "weights/model.safetensors" {
		t.Errorf("Digest sorted the manifest's own files: %v", files)
	}
	if m.Size() != 7 {
		t.Errorf("Size() = %d, want 7", m.Size())
	}

	withoutSizes := modelsource.Manifest{Files: []modelsource.File{
		{Path: files[2].Path, SHA256: files[2].SHA256},
		{Path: files[1].Path, SHA256: files[1].SHA256},
		{Path: files[0].Path, SHA256: files[0].SHA256},
	}}
	if got := withoutSizes.Digest(); got != want {
		t.Errorf("Digest() of the manifest in another order, without sizes = %s, want %s", got, want)
	}
	for name, other := range map[string][]modelsource.File{
		"a file's digest": {{Path: files[0].Path, SHA256: files[1].SHA256}, files[1], files[2]},
		"a path":          {{Path: "weights/model2.safetensors", SHA256: files[0].SHA256}, files[1], files[2]},
		"a file fewer":    files[1:],
	} {
		if (modelsource.Manifest{Files: other}).Digest() == want {
			t.Errorf("changing %s leaves the digest unchanged", name)
		}
	}
}

func TestManifestValidate(t *testing.T) {
	d1, d2 := strings.Repeat("1", 64), strings.Repeat("2", 64)
	for _, tc := range []struct {
		name    string
		files   []modelsource.File
		wantErr string
	}{
		{"valid", []modelsource.File{{Path: "config.json", SHA256: d1, Size: 10}, {Path: "weights/model.safetensors", SHA256: d2}}, ""},
		{"empty", nil, "no files"},
		{"empty path", []modelsource.File{{Path: "", SHA256: d1}}, "files[0]: path is empty"},
		{"absolute", []modelsource.File{{Path: "/etc/passwd", SHA256: d1}}, "starts with /"},
		{"dotdot inside", []modelsource.File{{Path: "a/../../x", SHA256: d1}}, `has a ".." element`},
		{"dotdot first", []modelsource.File{{Path: "../x", SHA256: d1}}, `has a ".." element`},
		{"dot", []modelsource.File{{Path: ".", SHA256: d1}}, `has a "." element`},
		{"double slash", []modelsource.File{{Path: "a//b", SHA256: d1}}, "empty element"},
		{"trailing slash", []modelsource.File{{Path: "a/", SHA256: d1}}, "empty element"},
		{"backslash", []modelsource.File{{Path: `a\b`, SHA256: d1}}, "backslash"},
		{"newline", []modelsource.File{{Path: "a\n" + d2 + "  b", SHA256: d1}}, "control character"},
		{"bad digest", []modelsource.File{{Path: "a", SHA256: "xyz"}}, "64 hex"},
		{"uppercase digest", []modelsource.File{{Path: "a", SHA256: strings.ToUpper(strings.Repeat("ab", 32))}}, "lowercase"},
		{"negative", []modelsource.File{{Path: "a", SHA256: d1, Size: -1}}, "negative"},
		{"twice", []modelsource.File{{Path: "a", SHA256: d1}, {Path: "b", SHA256: d1}, {Path: "a", SHA256: d2}}, `path "a" is listed twice (files[0] and files[2])`},
		{"file and dir", []modelsource.File{{Path: "a/b/c", SHA256: d2}, {Path: "a", SHA256: d1}}, `files[0] (a/b/c) lies in directory "a", which files[1] lists as a file`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := modelsource.Manifest{Files: tc.files}.Validate()
			switch {
			case tc.wantErr == "" && err != nil:
				t.Errorf("Validate = %v, want nil", err)
			case tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)):
				t.Errorf("Validate = %v; want an error containing %q", err, tc.wantErr)
			}
		})
	}
}
