// Package modelsource parses where a model comes from (a pool's model.source) and
// describes model directories by a manifest of their files' digests.
//
// A source is an HTTPS URL or a Hugging Face reference pinned to a commit:
//
//	src, err := modelsource.Parse("hf://TheBloke/Llama-2-7B-GGUF@0123456789abcdef0123456789abcdef01234567/llama-2-7b.Q4_K_M.gguf")
//	// src.URL  == "https://huggingface.co/TheBloke/Llama-2-7B-GGUF/resolve/0123…4567/llama-2-7b.Q4_K_M.gguf"
//	// src.File == "llama-2-7b.Q4_K_M.gguf", src.HF == true
//
// Plain http:// is refused except for loopback hosts (tests stand in for the
// remote with a server on 127.0.0.1).
//
// A model directory (vLLM, TGI, SGLang) is named by the digest of its
// Manifest: the list of its files with their sha256 digests (and sizes,
// which the digest leaves out), encoded as sha256sum prints them.
//
//	m := modelsource.Manifest{Files: []modelsource.File{{Path: "config.json", SHA256: d1, Size: 612}, …}}
//	if err := m.Validate(); err != nil { … }
//	dirDigest := m.Digest()
package modelsource

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/url"
	"path"
	"slices"
	"strings"
)

// HFHost is the Hugging Face Hub an hf:// reference resolves against.
const HFHost = "huggingface.co"

// Source is a parsed model source.
type Source struct {
	// Raw is the source as written.
	Raw string
	// URL is the HTTP(S) URL the model is downloaded from.
	URL string
	// File is the file name of the model (the URL path's last element),
	// the name it gets in the cache.
	File string
	// HF reports a Hugging Face reference: the Hub's HEAD answers carry the
	// LFS digest and size (X-Linked-Etag, X-Linked-Size).
	HF bool
	// Repo and Revision are the Hugging Face repository (ORG/REPO) and
	// commit; empty for plain URLs.
	Repo, Revision string
}

// Parse parses a model source: an https:// URL (http:// only for loopback
// hosts) or hf://ORG/REPO@REVISION/FILE with REVISION a 40-hex commit.
// Errors say what is wrong with it.
func Parse(raw string) (Source, error) {
	s := strings.TrimSpace(raw)
	if s == "" {
		return Source{}, errors.New("model source is empty")
	}
	if rest, ok := strings.CutPrefix(s, "hf://"); ok {
		return parseHF(raw, rest)
	}
	u, err := url.Parse(s)
	if err != nil {
		return Source{}, fmt.Errorf("model source %q is not a URL: %w", raw, err)
	}
	switch u.Scheme {
	case "https":
	case "http":
		if !IsLoopback(u.Hostname()) {
			return Source{}, fmt.Errorf("model source %q: http:// is refused (the download would be unauthenticated and in the clear); use https://", raw)
		}
	case "":
		return Source{}, fmt.Errorf("model source %q has no scheme: use https://HOST/PATH or hf://ORG/REPO@COMMIT/FILE", raw)
	default:
		return Source{}, fmt.Errorf("model source %q: scheme %q is not supported: use https:// or hf://", raw, u.Scheme)
	}
	if u.Host == "" {
		return Source{}, fmt.Errorf("model source %q has no host", raw)
	}
	if u.User != nil {
		return Source{}, fmt.Errorf("model source %q carries credentials in the URL: give a token file instead", raw)
	}
	file := path.Base(u.Path)
	if u.Path == "" || strings.HasSuffix(u.Path, "/") || file == "." || file == "/" || file == ".." {
		return Source{}, fmt.Errorf("model source %q names no file: the URL's path must end in the file name", raw)
	}
	u.Fragment = ""
	return Source{Raw: raw, URL: u.String(), File: file}, nil
}

func parseHF(raw, rest string) (Source, error) {
	const form = "hf://ORG/REPO@REVISION/FILE"
	repo, revFile, hasRev := strings.Cut(rest, "@")
	if !hasRev {
		return Source{}, fmt.Errorf("model source %q has no revision: pin a 40-hex commit, as in %s (a branch can change under the declared digest)", raw, form)
	}
	rev, file, _ := strings.Cut(revFile, "/")
	if rev == "" {
		return Source{}, fmt.Errorf("model source %q has an empty revision: pin a 40-hex commit, as in %s", raw, form)
	}
	org, name, _ := strings.Cut(repo, "/")
	if org == "" || name == "" || strings.Contains(name, "/") {
		return Source{}, fmt.Errorf("model source %q: the repository must be ORG/REPO, as in %s", raw, form)
	}
	if !IsCommit(rev) {
		return Source{}, fmt.Errorf("model source %q: revision %q is not a commit: give the full 40-hex commit (a branch or tag can move)", raw, rev)
	}
	if file == "" || strings.HasSuffix(file, "/") {
		return Source{}, fmt.Errorf("model source %q names no file after the revision, as in %s", raw, form)
	}
	if path.Clean(file) != file || slices.Contains(strings.Split(file, "/"), "..") || strings.HasPrefix(file, "/") {
		return Source{}, fmt.Errorf("model source %q: file %q must be a clean relative path", raw, file)
	}
	u := url.URL{Scheme: "https", Host: HFHost, Path: "/" + repo + "/resolve/" + rev + "/" + file}
	return Source{
		Raw: raw, URL: u.String(), File: path.Base(file), HF: true,
		Repo: repo, Revision: rev,
	}, nil
}

// IsLoopback reports whether host (without port) is a loopback name or address.
func IsLoopback(host string) bool {
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// IsCommit reports whether s is a full 40-hex git commit (lowercase).
func IsCommit(s string) bool { return len(s) == 40 && isLowerHex(s) }

// IsDigest reports whether s is a sha256 digest as pool-managerd writes them:
// 64 lowercase hex digits.
func IsDigest(s string) bool { return len(s) == 64 && isLowerHex(s) }

// CheckDigest returns an error saying what is wrong with a digest string, nil
// for a valid one.
func CheckDigest(s string) error {
	switch {
	case s == "":
		return errors.New("sha256 is empty")
	case len(s) != 64:
		return fmt.Errorf("sha256 %q has %d characters: want 64 hex digits", s, len(s))
	case !isLowerHex(s):
		return fmt.Errorf("sha256 %q: want 64 lowercase hex digits", s)
	}
	return nil
}

func isLowerHex(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return false
		}
	}
	return true
}

// File is one file of a model directory.
type File struct {
	// Path is the file's path relative to the directory (CheckPath): clean,
	// slash separated, never absolute, never through "..", no control
	// characters or backslashes.
	Path string `json:"path"`
	// SHA256 is the file's digest, 64 lowercase hex digits.
	SHA256 string `json:"sha256"`
	// Size is the file's size in bytes when declared, 0 otherwise; the
	// digest is what is verified.
	Size int64 `json:"size,omitempty"`
}

// Manifest lists the files of a model directory.
type Manifest struct {
	Files []File `json:"files"`
}

// Validate checks every path and digest, that no path repeats, and that no
// path is both a file and the directory of another.
func (m Manifest) Validate() error {
	if len(m.Files) == 0 {
		return errors.New("manifest lists no files")
	}
	seen := make(map[string]int, len(m.Files))
	for i, f := range m.Files {
		if err := CheckPath(f.Path); err != nil {
			return fmt.Errorf("files[%d]: %w", i, err)
		}
		if err := CheckDigest(f.SHA256); err != nil {
			return fmt.Errorf("files[%d] (%s): %w", i, f.Path, err)
		}
		if f.Size < 0 {
			return fmt.Errorf("files[%d] (%s): size %d is negative", i, f.Path, f.Size)
		}
		if first, dup := seen[f.Path]; dup {
			return fmt.Errorf("path %q is listed twice (files[%d] and files[%d]); each file of the model directory is listed once", f.Path, first, i)
		}
		seen[f.Path] = i
	}
	for i, f := range m.Files {
		for dir := path.Dir(f.Path); dir != "."; dir = path.Dir(dir) {
			if j, ok := seen[dir]; ok {
				return fmt.Errorf("files[%d] (%s) lies in directory %q, which files[%d] lists as a file: a path is a file or a directory, not both", i, f.Path, dir, j)
			}
		}
	}
	return nil
}

// CheckPath checks a path in a model directory or a Hugging Face
// repository: not empty, relative, slash separated, no empty, "." or ".."
// elements, no control characters or backslashes (so that a path is one
// line of a manifest's encoding, see Digest).
func CheckPath(p string) error {
	if p == "" {
		return errors.New("path is empty")
	}
	if strings.HasPrefix(p, "/") {
		return fmt.Errorf("path %q starts with /: write it relative, without the leading /", p)
	}
	if strings.ContainsRune(p, '\\') {
		return fmt.Errorf("path %q holds a backslash: separate its elements with /", p)
	}
	if strings.ContainsFunc(p, func(r rune) bool { return r < 0x20 || r == 0x7f }) {
		return fmt.Errorf("path %q holds a control character", p)
	}
	for _, el := range strings.Split(p, "/") {
		switch el {
		case "":
			return fmt.Errorf("path %q has an empty element (a trailing / or //)", p)
		case ".", "..":
			return fmt.Errorf("path %q has a %q element: write the clean path", p, el)
		}
	}
	return nil
}

// Digest is the manifest's own digest, in lowercase hex, which names the
// model directory in the cache: the sha256 of one line "SHA256  PATH\n" per
// file (two spaces, as sha256sum prints them), sorted by path in byte
// order. Sizes are not part of it, and the order of Files does not change
// it. For a directory that holds exactly the manifest's files,
//
//	(cd DIR && find . -type f | sed 's,^\./,,' | LC_ALL=C sort | xargs -d '\n' sha256sum) | sha256sum
//
// prints it. It is the digest of a valid manifest (Validate): CheckPath
// refuses the control characters and backslashes with which a path could
// forge a line, or which sha256sum would escape.
func (m Manifest) Digest() string {
	files := slices.Clone(m.Files)
	slices.SortFunc(files, func(a, b File) int { return strings.Compare(a.Path, b.Path) })
	h := sha256.New()
	for _, f := range files {
		h.Write([]byte(f.SHA256 + "  " + f.Path + "\n"))
	}
	return hex.EncodeToString(h.Sum(nil))
}

// Size is the total size of the manifest's files.
func (m Manifest) Size() int64 {
	var n int64
	for _, f := range m.Files {
		n += f.Size
	}
	return n
}
