package modelsource_test

import (
	"strings"
	"testing"

	"github.com/poolmanagerd/pool-managerd/schema/modelsource"
)

const commit = "0123456789abcdef0123456789abcdef01234567"

func TestParse(t *testing.T) {
	for _, tc := range []struct {
		in      string
		url     string
		file    string
		hf      bool
		wantErr string
	}{
		{in: "hf://org/repo@" + commit + "/model.gguf",
			url: "https://huggingface.co/org/repo/resolve/" + commit + "/model.gguf", file: "model.gguf", hf: true},
		{in: "hf://org/repo@" + commit + "/sub/dir/model.gguf",
			url: "https://huggingface.co/org/repo/resolve/" + commit + "/sub/dir/model.gguf", file: "model.gguf", hf: true},
		{in: "https://example.com/models/m.gguf", url: "https://example.com/models/m.gguf", file: "m.gguf"},
		{in: "http://127.0.0.1:8080/m.gguf", url: "http://127.0.0.1:8080/m.gguf", file: "m.gguf"},
		{in: "http://localhost:8080/m.gguf", url: "http://localhost:8080/m.gguf", file: "m.gguf"},
		{in: "http://[::1]:8080/m.gguf", url: "http://[::1]:8080/m.gguf", file: "m.gguf"},
		{in: "", wantErr: "empty"},
		{in: "hf://org/repo/model.gguf", wantErr: "no revision"},
		{in: "hf://org/repo@main/model.gguf", wantErr: `revision "main" is not a commit`},
		{in: "hf://org/repo@" + strings.ToUpper(commit) + "/model.gguf", wantErr: "not a commit"},
		{in: "hf://org/repo@" + commit[:12] + "/model.gguf", wantErr: "not a commit"},
		{in: "hf://org/repo@" + commit, wantErr: "names no file"},
		{in: "hf://org/repo@" + commit + "/", wantErr: "names no file"},
		{in: "hf://org/repo@/model.gguf", wantErr: "empty revision"},
		{in: "hf://repo@" + commit + "/model.gguf", wantErr: "ORG/REPO"},
		{in: "hf://org/repo@" + commit + "/../x.gguf", wantErr: "clean relative path"},
		{in: "http://example.com/m.gguf", wantErr: "http:// is refused"},
		{in: "ftp://example.com/m.gguf", wantErr: "not supported"},
		{in: "example.com/m.gguf", wantErr: "no scheme"},
		{in: "https://example.com/", wantErr: "names no file"},
		{in: "https://example.com", wantErr: "names no file"},
		{in: "https://user:pw@example.com/m.gguf", wantErr: "credentials"},
	} {
		t.Run(tc.in, func(t *testing.T) {
			got, err := modelsource.Parse(tc.in)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("Parse(%q) = %+v, %v; want an error containing %q", tc.in, got, err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("Parse(%q): %v", tc.in, err)
			}
			if got.URL != tc.url || got.File != tc.file || got.HF != tc.hf {
				t.Errorf("Parse(%q) = URL %q file %q hf %v; want %q %q %v", tc.in, got.URL, got.File, got.HF, tc.url, tc.file, tc.hf)
			}
			if tc.hf && (got.Repo != "org/repo" || got.Revision != commit) {
				t.Errorf("Parse(%q): repo %q revision %q", tc.in, got.Repo, got.Revision)
			}
		})
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

func TestManifest(t *testing.T) {
	d1, d2 := strings.Repeat("1", 64), strings.Repeat("2", 64)
	m := modelsource.Manifest{Files: []modelsource.File{
		{Path: "config.json", SHA256: d1, Size: 10},
		{Path: "weights/model.safetensors", SHA256: d2, Size: 20},
	}}
	if err := m.Validate(); err != nil {
		t.Fatalf("Validate: %v", err)
	}
	reordered := modelsource.Manifest{Files: []modelsource.File{m.Files[1], m.Files[0]}}
	if m.Digest() != reordered.Digest() {
		t.Error("Digest depends on the order of the files")
	}
	if !modelsource.IsDigest(m.Digest()) {
		t.Errorf("Digest %q is not 64 lowercase hex", m.Digest())
	}
	if m.Size() != 30 {
		t.Errorf("Size = %d; want 30", m.Size())
	}
	for name, other := range map[string]modelsource.Manifest{
		"size":   {Files: []modelsource.File{{Path: "config.json", SHA256: d1, Size: 11}, m.Files[1]}},
		"digest": {Files: []modelsource.File{{Path: "config.json", SHA256: d2, Size: 10}, m.Files[1]}},
		"path":   {Files: []modelsource.File{{Path: "config2.json", SHA256: d1, Size: 10}, m.Files[1]}},
		"fewer":  {Files: m.Files[:1]},
	} {
		if other.Digest() == m.Digest() {
			t.Errorf("changing the %s leaves the digest unchanged", name)
		}
	}

	for _, tc := range []struct {
		name    string
		files   []modelsource.File
		wantErr string
	}{
		{"empty", nil, "no files"},
		{"absolute", []modelsource.File{{Path: "/etc/passwd", SHA256: d1}}, "absolute"},
		{"dotdot", []modelsource.File{{Path: "a/../../x", SHA256: d1}}, "not clean"},
		{"dotdot clean", []modelsource.File{{Path: "../x", SHA256: d1}}, "leaves"},
		{"unclean", []modelsource.File{{Path: "a//b", SHA256: d1}}, "not clean"},
		{"dot", []modelsource.File{{Path: ".", SHA256: d1}}, "not clean"},
		{"bad digest", []modelsource.File{{Path: "a", SHA256: "xyz"}}, "64 hex"},
		{"negative", []modelsource.File{{Path: "a", SHA256: d1, Size: -1}}, "negative"},
		{"twice", []modelsource.File{{Path: "a", SHA256: d1}, {Path: "a", SHA256: d2}}, "twice"},
		{"file and dir", []modelsource.File{{Path: "a", SHA256: d1}, {Path: "a/b", SHA256: d2}}, "also the directory"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := modelsource.Manifest{Files: tc.files}.Validate()
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("Validate = %v; want an error containing %q", err, tc.wantErr)
			}
		})
	}
}
