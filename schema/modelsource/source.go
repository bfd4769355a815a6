// Package modelsource parses where a model comes from (a pool's
// model.source) and describes model directories by a manifest of their
// files' digests. It is the one parser of sources: validate checks a config
// with it, and the fetcher downloads what it gives.
//
// A source is an HTTPS URL or a Hugging Face reference pinned to a commit:
//
//	src, err := modelsource.Parse("hf://TheBloke/Llama-2-7B-GGUF@0123456789abcdef0123456789abcdef01234567/llama-2-7b.Q4_K_M.gguf")
//	// src.URL  == "https://huggingface.co/TheBloke/Llama-2-7B-GGUF/resolve/0123…4567/llama-2-7b.Q4_K_M.gguf"
//	// src.File == "llama-2-7b.Q4_K_M.gguf", src.HF == true
//
// A model file (llamacpp) is downloaded from src.URL; a model directory
// (vllm, tgi, sglang: hf://ORG/REPO@COMMIT[/SUBDIR], or a base URL) file by
// file, each PATH of its manifest from src.URL + "/" + PATH.
//
// Plain http:// is refused except for loopback hosts (tests stand in for the
// remote with a server on 127.0.0.1).
//
// A model directory is named by the digest of its Manifest: the list of its
// files with their sha256 digests (and sizes, which the digest leaves out),
// encoded as sha256sum prints them.
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

// hfForm is how an hf:// reference is written, for the errors.
const hfForm = "hf://ORG/REPO@COMMIT/FILE"

// Source is a parsed model source.
type Source struct {
	// Raw is the source as written.
	Raw string
	// URL is the HTTP(S) URL the model is downloaded from: the file's, or
	// the base of a model directory's files.
	URL string
	// File is the last element of the source's path, unescaped: for a model
	// file, its name, which it keeps in the cache. It is "" when the source
	// names no file: an hf:// reference to a whole repository, a URL whose
	// path is empty or ends in /, or whose last element is no usable file
	// name (".", "..", one with an escaped / or a NUL).
	File string
	// HF reports a Hugging Face reference: the Hub's HEAD answers carry the
	// LFS digest and size (X-Linked-Etag, X-Linked-Size).
	HF bool
	// Repo and Revision are the Hugging Face repository (ORG/REPO) and
	// commit; empty for plain URLs.
	Repo, Revision string
}

// Parse parses a model source: an https:// URL (http:// only for loopback
// hosts), without credentials or fragment, or hf://ORG/REPO@COMMIT[/PATH]
// with COMMIT a full 40-hex commit and PATH a clean relative path (a file,
// or a directory of the repository). The error, which starts with
// "model source", says what is wrong and what to write instead.
func Parse(raw string) (Source, error) {
	if raw == "" {
		return Source{}, errors.New("model source is empty: write an https:// URL or " + hfForm)
	}
	if rest, ok := strings.CutPrefix(raw, "hf://"); ok {
		return parseHF(raw, rest)
	}
	u, err := url.Parse(raw)
	if err != nil {
		return Source{}, fmt.Errorf("model source %q is not a URL: %w", raw, err)
	}
	switch u.Scheme {
	case "https", "http":
	case "":
		return Source{}, fmt.Errorf("model source %q has no scheme: write https://HOST/PATH or %s", raw, hfForm)
	default:
		return Source{}, fmt.Errorf("model source %q: scheme %q is not supported: write an https:// URL or %s", raw, u.Scheme, hfForm)
	}
	switch {
	case u.Host == "" || u.Hostname() == "":
		return Source{}, fmt.Errorf("model source %q names no host", raw)
	case u.User != nil:
		return Source{}, fmt.Errorf("model source %q carries credentials; a config holds none: give a token through the environment or a file", redacted(u))
	case u.Fragment != "" || strings.HasSuffix(raw, "#"):
		return Source{}, fmt.Errorf("model source %q has a #fragment, which is never sent to the server; remove it", raw)
	case u.Scheme == "http" && !IsLoopback(u.Hostname()):
		return Source{}, fmt.Errorf("model source %q uses http://, which is allowed only for loopback hosts (127.0.0.1, ::1, localhost); use https://", raw)
	}
	return Source{Raw: raw, URL: u.String(), File: urlFileName(u)}, nil
}

// parseHF parses rest, an hf:// reference without its scheme.
func parseHF(raw, rest string) (Source, error) {
	org, rest, ok := strings.Cut(rest, "/")
	if !ok || org == "" {
		return Source{}, fmt.Errorf("model source %q names no repository: write %s", raw, hfForm)
	}
	repoRev, file, _ := strings.Cut(rest, "/")
	repo, rev, hasRev := strings.Cut(repoRev, "@")
	if strings.Contains(org, "@") {
		return Source{}, fmt.Errorf("model source %q has no ORG/ before the repository: write %s", raw, hfForm)
	}
	if !isHFName(org) {
		return Source{}, fmt.Errorf("model source %q: %q is not a Hugging Face organisation or user name (letters, digits, '.', '_', '-'); write %s", raw, org, hfForm)
	}
	if repo == "" {
		return Source{}, fmt.Errorf("model source %q names no repository: write %s", raw, hfForm)
	}
	if !isHFName(repo) {
		return Source{}, fmt.Errorf("model source %q: %q is not a Hugging Face repository name (letters, digits, '.', '_', '-'); write %s", raw, repo, hfForm)
	}
	switch {
	case !hasRev || rev == "":
		return Source{}, fmt.Errorf("model source %q has no revision: write %s with COMMIT the repository's 40-hex commit (pin a commit, not a branch: hf:// sources are content-addressed)", raw, hfForm)
	case IsCommit(rev):
	case isHex(rev) && len(rev) == 40:
		return Source{}, fmt.Errorf("model source %q: write the commit %q in lowercase", raw, rev)
	case isHex(rev):
		return Source{}, fmt.Errorf("model source %q: revision %q is not a full commit id: pin the whole 40-hex commit (hf:// sources are content-addressed)", raw, rev)
	default:
		return Source{}, fmt.Errorf("model source %q: revision %q is a branch or tag, which moves: pin a 40-hex commit, not a branch (hf:// sources are content-addressed; the Hub lists a repository's commits under \"Files and versions\", History)", raw, rev)
	}
	src := Source{Raw: raw, HF: true, Repo: org + "/" + repo, Revision: rev}
	u := url.URL{Scheme: "https", Host: HFHost, Path: "/" + src.Repo + "/resolve/" + rev}
	if file != "" {
		if err := CheckPath(file); err != nil {
			return Source{}, fmt.Errorf("model source %q: in the repository, %w", raw, err)
		}
		u.Path += "/" + file
		src.File = path.Base(file)
	}
	src.URL = u.String()
	return src, nil
}

// isHFName reports whether s is an organisation, user or repository name on
// the Hub: letters, digits, '.', '_' and '-', starting with a letter or digit.
func isHFName(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		alnum := c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9'
		if !alnum && (i == 0 || c != '.' && c != '_' && c != '-') {
			return false
		}
	}
	return s != ""
}

func redacted(u *url.URL) string {
	c := *u
	c.User = url.User("REDACTED")
	return c.String()
}

// urlFileName is the last element of a URL's path, unescaped; "" when it is
// not a usable file name (empty, . or .., or with a / or NUL of its own).
func urlFileName(u *url.URL) string {
	p := u.Path
	if p == "" || strings.HasSuffix(p, "/") {
		return ""
	}
	// u.Path is unescaped already: an escaped slash would split it, so the
	// last element is taken from the escaped form and unescaped alone.
	escaped := u.EscapedPath()
	name, err := url.PathUnescape(escaped[strings.LastIndex(escaped, "/")+1:])
	if err != nil || name == "" || name == "." || name == ".." || strings.ContainsAny(name, "/\x00") {
		return ""
	}
	return name
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

// isHex reports whether s is hex digits, in either case.
func isHex(s string) bool {
	return s != "" && !strings.ContainsFunc(s, func(r rune) bool {
		return (r < '0' || r > '9') && (r < 'a' || r > 'f') && (r < 'A' || r > 'F')
	})
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
