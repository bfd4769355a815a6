package schema

import (
	"fmt"

	"github.com/poolmanagerd/pool-managerd/schema/modelsource"
)

// sourceProblem says what is wrong with a pool's model source, or "": what
// modelsource.Parse (the fetcher's parser) refuses, and a source that names
// no file for llamacpp, which loads one GGUF file.
func sourceProblem(engine Engine, source string) string {
	src, err := modelsource.Parse(source)
	if err != nil {
		return err.Error()
	}
	if engine != EngineLlamaCpp || src.File != "" {
		return ""
	}
	if src.HF {
		return fmt.Sprintf("model source %q names a repository, but llamacpp loads one GGUF file: write hf://%s@%s/FILE.gguf", source, src.Repo, src.Revision)
	}
	return fmt.Sprintf("model source %q names no file: llamacpp loads one GGUF file, so the URL's path ends in its name (…/model.gguf)", source)
}

// Digest returns the model's content digest, in lowercase hex: the sha256 of
// the file for a model with a sha256 (llamacpp), the manifest's digest for a
// model with one (vllm, tgi, sglang), which names its directory in the cache:
// modelsource.Manifest.Digest, the sha256 of the lines "SHA256  PATH\n" that
// sha256sum prints for the files, sorted by path. It returns "" for a model
// without a source (a path).
func (m Model) Digest() string {
	if len(m.Files) > 0 {
		return m.Manifest().Digest()
	}
	return m.SHA256
}

// Manifest returns the model's manifest (empty for a model file).
func (m Model) Manifest() modelsource.Manifest {
	return modelsource.Manifest{Files: m.Files}
}

// FileName returns the base name of a file model's source: what the file is
// called in the cache (CACHE/sha256/DIGEST/FILENAME), so that an engine sees
// its usual name and extension; modelsource.Parse gives it as Source.File.
// It returns "" for a model directory (with a manifest), for a model without
// a source, and for a source that names no file (validate refuses those for
// llamacpp).
func (m Model) FileName() string {
	if m.Source == "" || len(m.Files) > 0 {
		return ""
	}
	src, err := modelsource.Parse(m.Source)
	if err != nil {
		return ""
	}
	return src.File
}
