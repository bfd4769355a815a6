package schema

import (
	"fmt"
	"net"
	"net/url"
	"path"
	"regexp"
	"strings"

	"github.com/poolmanagerd/pool-managerd/schema/modelsource"
)

// hfScheme starts a Hugging Face source: hf://ORG/REPO@COMMIT[/PATH].
const hfScheme = "hf://"

var (
	// hfName is an organisation or repository name on the Hub.
	hfName = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]*$`)
	// commitHex is a full git commit id, as the Hub names revisions.
	commitHex = regexp.MustCompile(`^[0-9a-f]{40}$`)
	anyHex    = regexp.MustCompile(`^[0-9a-fA-F]+$`)
)

// hfSource is a parsed hf:// reference.
type hfSource struct {
	org, repo, revision string
	// file is the path in the repository; empty for the whole repository.
	file string
}

// parseHFSource parses hf://ORG/REPO@COMMIT[/PATH]; the error says what to write instead.
func parseHFSource(s string) (hfSource, error) {
	const form = "hf://ORG/REPO@COMMIT/FILE"
	rest, ok := strings.CutPrefix(s, hfScheme)
	if !ok {
		return hfSource{}, fmt.Errorf("%q is not an hf:// reference", s)
	}
	org, rest, ok := strings.Cut(rest, "/")
	if !ok || org == "" {
		return hfSource{}, fmt.Errorf("%q names no repository: write %s", s, form)
	}
	repoRev, file, _ := strings.Cut(rest, "/")
	repo, rev, ok := strings.Cut(repoRev, "@")
	if !hfName.MatchString(org) {
		return hfSource{}, fmt.Errorf("%q: %q is not a Hugging Face organisation or user name (letters, digits, '.', '_', '-'); write %s", s, org, form)
	}
	if repo == "" {
		return hfSource{}, fmt.Errorf("%q names no repository: write %s", s, form)
	}
	if !hfName.MatchString(repo) {
		return hfSource{}, fmt.Errorf("%q: %q is not a Hugging Face repository name (letters, digits, '.', '_', '-'); write %s", s, repo, form)
	}
	switch {
	case !ok || rev == "":
		return hfSource{}, fmt.Errorf("%q has no revision: write %s with COMMIT the repository's 40-hex commit (pin a commit, not a branch: hf:// sources are content-addressed)", s, form)
	case commitHex.MatchString(rev):
	case anyHex.MatchString(rev) && len(rev) == 40:
		return hfSource{}, fmt.Errorf("%q: write the commit %q in lowercase", s, rev)
	case anyHex.MatchString(rev):
		return hfSource{}, fmt.Errorf("%q: revision %q is not a full commit id: pin the whole 40-hex commit (hf:// sources are content-addressed)", s, rev)
	default:
		return hfSource{}, fmt.Errorf("%q: revision %q is a branch or tag, which moves: pin a 40-hex commit, not a branch (hf:// sources are content-addressed; the Hub lists a repository's commits under \"Files and versions\", History)", s, rev)
	}
	if file != "" {
		if err := cleanRelative(file); err != nil {
			return hfSource{}, fmt.Errorf("%q: the path in the repository %w", s, err)
		}
	}
	return hfSource{org: org, repo: repo, revision: rev, file: file}, nil
}

// cleanRelative checks a slash-separated path in a repository or model
// directory: relative, no empty, . or .. elements, no control characters or
// backslashes. The error reads after "the path ...".
func cleanRelative(p string) error {
	if strings.HasPrefix(p, "/") {
		return fmt.Errorf("%q starts with /: it is relative to the repository", p)
	}
	if strings.ContainsFunc(p, func(r rune) bool { return r < 0x20 || r == 0x7f || r == '\\' }) {
		return fmt.Errorf("%q holds a control character or a backslash", p)
	}
	for _, el := range strings.Split(p, "/") {
		switch el {
		case "":
			return fmt.Errorf("%q has an empty element (a trailing / or //)", p)
		case ".", "..":
			return fmt.Errorf("%q has a %q element: write the clean path", p, el)
		}
	}
	return nil
}

// isLoopbackHost reports whether host (as url.URL.Hostname gives it) is this machine.
func isLoopbackHost(host string) bool {
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// sourceProblem says what is wrong with a pool's model source, or "".
// The schema has checked that it starts with https://, http:// or hf://.
func sourceProblem(engine Engine, source string) string {
	if strings.HasPrefix(source, hfScheme) {
		hf, err := parseHFSource(source)
		if err != nil {
			return fmt.Sprintf("model source %v", err)
		}
		if engine == EngineLlamaCpp && hf.file == "" {
			return fmt.Sprintf("model source %q names a repository, but llamacpp loads one GGUF file: write hf://%s/%s@%s/FILE.gguf", source, hf.org, hf.repo, hf.revision)
		}
		return ""
	}
	u, err := url.Parse(source)
	if err != nil {
		return fmt.Sprintf("model source %q is not a URL: %v", source, err)
	}
	switch {
	case u.Host == "" || u.Hostname() == "":
		return fmt.Sprintf("model source %q names no host", source)
	case u.User != nil:
		return fmt.Sprintf("model source %q carries credentials; a config holds none: give a token through the environment or a file", redacted(u))
	case u.Fragment != "" || strings.HasSuffix(source, "#"):
		return fmt.Sprintf("model source %q has a #fragment, which is never sent to the server; remove it", source)
	case u.Scheme == "http" && !isLoopbackHost(u.Hostname()):
		return fmt.Sprintf("model source %q uses http://, which is allowed only for loopback hosts (127.0.0.1, ::1, localhost); use https://", source)
	}
	if engine == EngineLlamaCpp {
		if name := urlFileName(u); name == "" {
			return fmt.Sprintf("model source %q names no file: llamacpp loads one GGUF file, so the URL's path ends in its name (…/model.gguf)", source)
		}
	}
	return ""
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
// its usual name and extension. It returns "" for a model directory (with a
// manifest), for a model without a source, and for a source that names no
// file (validate refuses those for llamacpp).
func (m Model) FileName() string {
	if m.Source == "" || len(m.Files) > 0 {
		return ""
	}
	if strings.HasPrefix(m.Source, hfScheme) {
		hf, err := parseHFSource(m.Source)
		if err != nil || hf.file == "" {
			return ""
		}
		return path.Base(hf.file)
	}
	u, err := url.Parse(m.Source)
	if err != nil {
		return ""
	}
	return urlFileName(u)
}
