package schema

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/poolmanagerd/pool-managerd/schema/modelsource"
)

const (
	testCommit = "4f3c1e2d5a6b7c8d9e0f1a2b3c4d5e6f7a8b9c0d"
	testSHA    = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
	testSHA2   = "fedcba9876543210fedcba9876543210fedcba9876543210fedcba9876543210"
)

// TestValidModelSources loads configs whose pools fetch their model, and
// checks what the typed model holds.
func TestValidModelSources(t *testing.T) {
	manifest := `files: [
			{path: "config.json", sha256: "` + testSHA + `", size: 512},
			{path: "weights/model-00001-of-00002.safetensors", sha256: "` + testSHA2 + `"},
		]`
	wantFiles := []ModelFile{
		{Path: "config.json", SHA256: testSHA, Size: 512},
		{Path: "weights/model-00001-of-00002.safetensors", SHA256: testSHA2},
	}
	tests := []struct {
		name, engine, model string
		want                Model
	}{
		{name: "llamacpp hf file", engine: "llamacpp",
			model: `source: "hf://org/chat-GGUF@` + testCommit + `/chat-Q4_K_M.gguf", sha256: "` + testSHA + `"`,
			want:  Model{Source: "hf://org/chat-GGUF@" + testCommit + "/chat-Q4_K_M.gguf", SHA256: testSHA, Ctx: 4096}},
		{name: "llamacpp hf file in a subdirectory", engine: "llamacpp",
			model: `source: "hf://org/chat-GGUF@` + testCommit + `/Q4_K_M/chat-00001-of-00002.gguf", sha256: "` + testSHA + `", ctx: 8192`,
			want:  Model{Source: "hf://org/chat-GGUF@" + testCommit + "/Q4_K_M/chat-00001-of-00002.gguf", SHA256: testSHA, Ctx: 8192}},
		{name: "llamacpp https", engine: "llamacpp",
			model: `source: "https://models.example.com/chat.gguf?download=1", sha256: "` + testSHA + `"`,
			want:  Model{Source: "https://models.example.com/chat.gguf?download=1", SHA256: testSHA, Ctx: 4096}},
		{name: "llamacpp http on loopback", engine: "llamacpp",
			model: `source: "http://127.0.0.1:8080/chat.gguf", sha256: "` + testSHA + `"`,
			want:  Model{Source: "http://127.0.0.1:8080/chat.gguf", SHA256: testSHA, Ctx: 4096}},
		{name: "llamacpp http on localhost", engine: "llamacpp",
			model: `source: "http://localhost/chat.gguf", sha256: "` + testSHA + `"`,
			want:  Model{Source: "http://localhost/chat.gguf", SHA256: testSHA, Ctx: 4096}},
		{name: "llamacpp http on ipv6 loopback", engine: "llamacpp",
			model: `source: "http://[::1]:9000/chat.gguf", sha256: "` + testSHA + `"`,
			want:  Model{Source: "http://[::1]:9000/chat.gguf", SHA256: testSHA, Ctx: 4096}},
		{name: "vllm hf repository", engine: "vllm",
			model: `source: "hf://org/chat@` + testCommit + `", ` + manifest,
			want:  Model{Source: "hf://org/chat@" + testCommit, Files: wantFiles, Ctx: 4096}},
		{name: "tgi hf subdirectory", engine: "tgi",
			model: `source: "hf://org/chat@` + testCommit + `/awq", ` + manifest,
			want:  Model{Source: "hf://org/chat@" + testCommit + "/awq", Files: wantFiles, Ctx: 4096}},
		{name: "sglang https base", engine: "sglang",
			model: `source: "https://models.example.com/chat/", ` + manifest,
			want:  Model{Source: "https://models.example.com/chat/", Files: wantFiles, Ctx: 4096}},
		{name: "path", engine: "llamacpp",
			model: `path: "/models/chat.gguf"`,
			want:  Model{Path: "/models/chat.gguf", Ctx: 4096}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			dir := t.TempDir()
			vram := ""
			if Engine(tc.engine).Sharded() {
				vram = "vram: 20Gi"
			}
			config := "nodes: box: gpus: [{index: 0, vram: 24Gi}]\n" +
				"pools: chat: {\n\tnode: \"box\"\n\tengine: \"" + tc.engine + "\"\n\tdevices: [0]\n\t" + vram + "\n\tmodel: {\n\t\t" + tc.model + "\n\t}\n}\n"
			if err := os.WriteFile(filepath.Join(dir, "pools.cue"), []byte(config), 0o644); err != nil {
				t.Fatal(err)
			}
			d, err := Load(context.Background(), dir)
			if err != nil {
				t.Fatalf("Load:\n%v\nconfig:\n%s", err, config)
			}
			if diff := cmp.Diff(tc.want, d.Pools["chat"].Model); diff != "" {
				t.Errorf("model differs (-want +got):\n%s", diff)
			}
		})
	}
}

func TestSourceProblem(t *testing.T) {
	tests := []struct {
		name   string
		engine Engine
		source string
		// want is a substring of the problem; "" for none.
		want string
	}{
		{"hf file", EngineLlamaCpp, "hf://org/repo@" + testCommit + "/m.gguf", ""},
		{"hf repo for vllm", EngineVLLM, "hf://org/repo@" + testCommit, ""},
		{"hf subdirectory for vllm", EngineVLLM, "hf://org/repo@" + testCommit + "/sub/dir", ""},
		{"https", EngineLlamaCpp, "https://host/m.gguf", ""},
		{"http loopback", EngineLlamaCpp, "http://127.0.0.1:1234/m.gguf", ""},
		{"http loopback other address", EngineLlamaCpp, "http://127.0.0.2/m.gguf", ""},
		{"hf repo for llamacpp", EngineLlamaCpp, "hf://org/repo@" + testCommit, "names a repository, but llamacpp loads one GGUF file"},
		{"hf no revision", EngineLlamaCpp, "hf://org/repo/m.gguf", "has no revision"},
		{"hf empty revision", EngineLlamaCpp, "hf://org/repo@/m.gguf", "has no revision"},
		{"hf branch", EngineLlamaCpp, "hf://org/repo@main/m.gguf", `revision "main" is a branch or tag, which moves: pin a 40-hex commit, not a branch`},
		{"hf short commit", EngineLlamaCpp, "hf://org/repo@4f3c1e2/m.gguf", "is not a full commit id"},
		{"hf uppercase commit", EngineLlamaCpp, "hf://org/repo@" + strings.ToUpper(testCommit) + "/m.gguf", "in lowercase"},
		{"hf no repository", EngineLlamaCpp, "hf://org", "names no repository"},
		{"hf empty repository", EngineLlamaCpp, "hf://org/@" + testCommit + "/m.gguf", "names no repository"},
		{"hf bad org", EngineLlamaCpp, "hf://o%20g/repo@" + testCommit + "/m.gguf", "is not a Hugging Face organisation"},
		{"hf dotdot", EngineLlamaCpp, "hf://org/repo@" + testCommit + "/../m.gguf", `has a ".." element`},
		{"hf trailing slash", EngineLlamaCpp, "hf://org/repo@" + testCommit + "/dir/", "has an empty element"},
		{"http remote", EngineLlamaCpp, "http://example.com/m.gguf", "allowed only for loopback hosts"},
		{"credentials", EngineLlamaCpp, "https://user:secret@host/m.gguf", "carries credentials"},
		{"fragment", EngineLlamaCpp, "https://host/m.gguf#x", "#fragment"},
		{"no host", EngineLlamaCpp, "https:///m.gguf", "names no host"},
		{"no file for llamacpp", EngineLlamaCpp, "https://host/models/", "names no file"},
		{"dotdot file for llamacpp", EngineLlamaCpp, "https://host/models/%2e%2e", "names no file"},
		{"base URL for vllm", EngineVLLM, "https://host/models/", ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got := sourceProblem(tc.engine, tc.source)
			switch {
			case tc.want == "" && got != "":
				t.Errorf("sourceProblem(%s, %q) = %q, want none", tc.engine, tc.source, got)
			case tc.want != "" && !strings.Contains(got, tc.want):
				t.Errorf("sourceProblem(%s, %q) = %q, want it to contain %q", tc.engine, tc.source, got, tc.want)
			}
		})
	}
	if got := sourceProblem(EngineLlamaCpp, "https://user:secret@host/m.gguf"); strings.Contains(got, "secret") {
		t.Errorf("the problem shows the password: %q", got)
	}
}

func TestModelDigest(t *testing.T) {
	// The manifest's encoding, written out by hand: sorted by path, "SHA256  PATH\n".
	lines := testSHA2 + "  a/b.safetensors\n" + testSHA + "  config.json\n" + testSHA2 + "  z.json\n"
	sum := sha256.Sum256([]byte(lines))
	manifestDigest := hex.EncodeToString(sum[:])
	files := []ModelFile{
		{Path: "z.json", SHA256: testSHA2, Size: 10},
		{Path: "config.json", SHA256: testSHA},
		{Path: "a/b.safetensors", SHA256: testSHA2, Size: 1 << 30},
	}
	tests := []struct {
		name  string
		model Model
		want  string
	}{
		{"file", Model{Source: "https://h/m.gguf", SHA256: testSHA}, testSHA},
		{"manifest", Model{Source: "hf://o/r@" + testCommit, Files: files}, manifestDigest},
		{"manifest in another order, without sizes", Model{Source: "hf://o/r@" + testCommit, Files: []ModelFile{
			{Path: "a/b.safetensors", SHA256: testSHA2}, {Path: "z.json", SHA256: testSHA2}, {Path: "config.json", SHA256: testSHA},
		}}, manifestDigest},
		// What sha256sum printed for a directory of these files (modelsource's TestManifestDigest).
		{"manifest as sha256sum prints it", Model{Source: "hf://o/r@" + testCommit, Files: []ModelFile{
			{Path: "weights/model.safetensors", SHA256: "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"},
			{Path: "config.json", SHA256: "ca3d163bab055381827226140568f3bef7eaac187cebd76878e0b63e9e442356"},
			{Path: "tokenizer.json", SHA256: "2d711642b726b04401627ca9fbac32f5c8530fb1903cc4db02258717921a4881"},
		}}, "3d656d0c5df2a7f9a5613419b707d3479f2b5d1b856b19d6b2666c5d8994ba44"},
		{"path", Model{Path: "/models/m.gguf"}, ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := tc.model.Digest(); got != tc.want {
				t.Errorf("Digest() = %q, want %q", got, tc.want)
			}
			// The fetcher names the directory by the manifest it is given:
			// the config's digest must be the same, or the cache has two names.
			if len(tc.model.Files) > 0 {
				if fetched := (modelsource.Manifest{Files: tc.model.Files}).Digest(); fetched != tc.want {
					t.Errorf("modelsource.Manifest.Digest() = %q, want the model's %q", fetched, tc.want)
				}
			}
		})
	}
	if files[0].Path != "z.json" {
		t.Errorf("Digest sorted the model's own manifest: %v", files)
	}
	other := []ModelFile{{Path: "config.json", SHA256: testSHA2}, {Path: "a/b.safetensors", SHA256: testSHA2}, {Path: "z.json", SHA256: testSHA2}}
	if (Model{Files: other}).Digest() == manifestDigest {
		t.Error("a manifest with another file digest has the same Digest")
	}
}

func TestModelFileName(t *testing.T) {
	tests := []struct {
		name  string
		model Model
		want  string
	}{
		{"hf file", Model{Source: "hf://org/repo@" + testCommit + "/chat-Q4_K_M.gguf", SHA256: testSHA}, "chat-Q4_K_M.gguf"},
		{"hf file in a subdirectory", Model{Source: "hf://org/repo@" + testCommit + "/Q4/chat-00001-of-00002.gguf", SHA256: testSHA}, "chat-00001-of-00002.gguf"},
		{"https with a query", Model{Source: "https://host/dl/chat.gguf?download=true", SHA256: testSHA}, "chat.gguf"},
		{"https escaped", Model{Source: "https://host/dl/my%20model.gguf", SHA256: testSHA}, "my model.gguf"},
		{"https escaped slash", Model{Source: "https://host/dl/a%2Fb.gguf", SHA256: testSHA}, ""},
		{"hf repository", Model{Source: "hf://org/repo@" + testCommit, Files: []ModelFile{{Path: "config.json", SHA256: testSHA}}}, ""},
		{"manifest", Model{Source: "https://host/models/chat/", Files: []ModelFile{{Path: "config.json", SHA256: testSHA}}}, ""},
		{"path", Model{Path: "/models/chat.gguf"}, ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := tc.model.FileName(); got != tc.want {
				t.Errorf("FileName() = %q, want %q", got, tc.want)
			}
		})
	}
}
