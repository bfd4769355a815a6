package testenv

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// Bin is one build of the programs the tests run, all in one folder.
type Bin struct {
	// Dir holds the binaries and the links.
	Dir string
	// PoolManagerd is cmd/pool-managerd.
	PoolManagerd string
	// FakeEngine is cmd/fake-engine, the stand-in engine.
	FakeEngine string
	// LlamaServer, VLLM and TGI are links to FakeEngine named as the engines
	// it plays (llama-server, vllm, text-generation-launcher): it chooses its
	// mode by the name it runs under.
	LlamaServer, VLLM, TGI string
}

// The packages Binaries builds, relative to the module root, and the names
// of the links to fake-engine.
const (
	poolManagerdPkg = "./cmd/pool-managerd"
	fakeEnginePkg   = "./cmd/fake-engine"

	poolManagerdName = "pool-managerd"
	fakeEngineName   = "fake-engine"
	llamaServerName  = "llama-server"
	vllmName         = "vllm"
	tgiName          = "text-generation-launcher"
)

// binIn names the binaries of a build folder.
func binIn(dir string) *Bin {
	return &Bin{
		Dir:          dir,
		PoolManagerd: filepath.Join(dir, poolManagerdName),
		FakeEngine:   filepath.Join(dir, fakeEngineName),
		LlamaServer:  filepath.Join(dir, llamaServerName),
		VLLM:         filepath.Join(dir, vllmName),
		TGI:          filepath.Join(dir, tgiName),
	}
}

// buildArgs are the arguments of the go build that makes a build folder's
// binaries: the same as the tests used before there was this package (no
// -ldflags, no -race); GOFLAGS and the rest of the environment apply.
func buildArgs(out string) []string {
	return []string{"build", "-o", out + string(filepath.Separator), poolManagerdPkg, fakeEnginePkg}
}

// Binaries returns the binaries built from the module that holds the current
// directory (a test's package folder), building them when no earlier call,
// in this process or another, built them from the same inputs.
//
// The inputs are hashed: the go command's version and the environment that
// changes what it builds (GOFLAGS, GOOS, GOARCH, cgo's settings...), go.mod,
// go.sum, the build arguments, and every file of the module's packages that
// the binaries are built from (Go, cgo, assembly and embedded files); other
// modules count by their version. The build goes to a folder under
// os.TempDir() named by that hash, written as a temporary folder and renamed
// into place, under a file lock, so that the test processes of one
// `go test ./...` run wait for one build and a run after an edit gets fresh
// binaries. It uses the go command found on PATH.
func Binaries(ctx context.Context) (*Bin, error) {
	return binariesOf(ctx, "", cacheRoot())
}

// binariesOf is Binaries for the module that holds dir (the current
// directory when empty), with its build folders under root.
func binariesOf(ctx context.Context, dir, root string) (*Bin, error) {
	goTool, err := exec.LookPath("go")
	if err != nil {
		return nil, fmt.Errorf("testenv: the go command is needed to build the binaries: %w", err)
	}
	modDir, key, err := inputsKey(ctx, goTool, dir)
	if err != nil {
		return nil, err
	}
	c := cache{root: root, build: func(ctx context.Context, out string) error {
		return goBuild(ctx, goTool, modDir, out)
	}}
	out, err := c.get(ctx, key)
	if err != nil {
		return nil, err
	}
	return binIn(out), nil
}

// cacheRoot is the folder of the build folders: one per user, as os.TempDir
// may be shared.
func cacheRoot() string {
	return filepath.Join(os.TempDir(), fmt.Sprintf("pool-managerd-testenv-%d", os.Getuid()))
}

// keyEnv are the go env variables that change what go build makes (GOMOD,
// last, is read for the module root).
func keyEnv() []string {
	return []string{
		"GOVERSION", "GOFLAGS", "GOOS", "GOARCH", "GOEXPERIMENT", "GOAMD64", "GOARM64",
		"CGO_ENABLED", "CC", "CXX", "CGO_CFLAGS", "CGO_CPPFLAGS", "CGO_CXXFLAGS", "CGO_LDFLAGS",
		"GOMOD",
	}
}

// listedPackage is what the key reads of `go list -deps -json`.
type listedPackage struct {
	ImportPath string
	Dir        string
	Standard   bool
	GoFiles    []string
	CgoFiles   []string
	CFiles     []string
	CXXFiles   []string
	HFiles     []string
	SFiles     []string
	SysoFiles  []string
	EmbedFiles []string
	Module     *struct {
		Path    string
		Version string
		Main    bool
		Replace *struct{ Path, Version string }
	}
}

// files are the package's source files that go build reads.
func (p listedPackage) files() []string {
	var out []string
	for _, list := range [][]string{p.GoFiles, p.CgoFiles, p.CFiles, p.CXXFiles, p.HFiles, p.SFiles, p.SysoFiles, p.EmbedFiles} {
		out = append(out, list...)
	}
	return out
}

// local reports whether the package's files are in the tree rather than a
// module of a fixed version: the main module's, or a module replaced by a
// folder.
func (p listedPackage) local() bool {
	m := p.Module
	return m == nil || m.Main || (m.Replace != nil && m.Replace.Version == "")
}

// inputsKey returns the root of the module that holds dir (the current
// directory when empty) and the hash of the binaries' inputs (see Binaries).
func inputsKey(ctx context.Context, goTool, dir string) (modDir, key string, err error) {
	h := sha256.New()
	fmt.Fprintf(h, "build %q\n", buildArgs("OUT"))

	names := keyEnv()
	envOut, err := goOutput(ctx, goTool, dir, append([]string{"env"}, names...)...)
	if err != nil {
		return "", "", err
	}
	fmt.Fprintf(h, "env\n%s\n", envOut)
	lines := strings.Split(strings.TrimRight(string(envOut), "\n"), "\n")
	gomod := lines[len(lines)-1]
	if gomod == "" || gomod == os.DevNull || len(lines) != len(names) {
		return "", "", fmt.Errorf("testenv: %q is not in a module (go env GOMOD)", dir)
	}
	modDir = filepath.Dir(gomod)
	for _, name := range []string{"go.mod", "go.sum"} {
		if err := hashFile(h, filepath.Join(modDir, name)); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return "", "", fmt.Errorf("testenv: %w", err)
		}
	}

	listOut, err := goOutput(ctx, goTool, modDir, "list", "-deps",
		"-json=ImportPath,Dir,Standard,GoFiles,CgoFiles,CFiles,CXXFiles,HFiles,SFiles,SysoFiles,EmbedFiles,Module",
		poolManagerdPkg, fakeEnginePkg)
	if err != nil {
		return "", "", err
	}
	dec := json.NewDecoder(bytes.NewReader(listOut))
	for {
		var p listedPackage
		if err := dec.Decode(&p); errors.Is(err, io.EOF) {
			break
		} else if err != nil {
			return "", "", fmt.Errorf("testenv: go list -deps -json: %w", err)
		}
		if p.Standard {
			continue // the toolchain's version covers it
		}
		fmt.Fprintf(h, "package %s\n", p.ImportPath)
		if !p.local() {
			fmt.Fprintf(h, "module %s@%s", p.Module.Path, p.Module.Version)
			if r := p.Module.Replace; r != nil {
				fmt.Fprintf(h, " => %s@%s", r.Path, r.Version)
			}
			fmt.Fprintln(h)
			continue
		}
		for _, f := range p.files() {
			if err := hashFile(h, filepath.Join(p.Dir, f)); err != nil {
				return "", "", fmt.Errorf("testenv: %w", err)
			}
		}
	}
	return modDir, hex.EncodeToString(h.Sum(nil))[:24], nil
}

// hashFile writes a file's name and content into h.
func hashFile(h io.Writer, path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	fmt.Fprintf(h, "file %s\n", path)
	if _, err := io.Copy(h, f); err != nil {
		return fmt.Errorf("read %s: %w", path, err)
	}
	_, err = fmt.Fprintln(h)
	return err
}

// goOutput runs the go command in dir (the current directory when empty)
// and returns its standard output.
func goOutput(ctx context.Context, goTool, dir string, args ...string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, goTool, args...)
	cmd.Dir = dir
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("testenv: go %s: %w\n%s", strings.Join(args, " "), err, stderr.Bytes())
	}
	return out, nil
}

// goBuild builds the binaries into out and adds the links to fake-engine.
func goBuild(ctx context.Context, goTool, modDir, out string) error {
	cmd := exec.CommandContext(ctx, goTool, buildArgs(out)...)
	cmd.Dir = modDir
	if output, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("testenv: go %s: %w\n%s", strings.Join(buildArgs(out), " "), err, output)
	}
	for _, name := range []string{llamaServerName, vllmName, tgiName} {
		if err := os.Symlink(fakeEngineName, filepath.Join(out, name)); err != nil {
			return fmt.Errorf("testenv: %w", err)
		}
	}
	return nil
}

// staleAfter is how long a build folder stays unused before a later build
// removes it. Every use of a folder renews it.
const staleAfter = 24 * time.Hour

// lockPoll is how often a process that waits for another's build tries the
// lock again.
const lockPoll = 50 * time.Millisecond

// cache keeps build folders under root, one per key.
type cache struct {
	root string
	// build makes a build folder's content in out, a new empty folder.
	build func(ctx context.Context, out string) error
}

// get returns the build folder of key, building it when it is not there.
// Processes that ask for one key at once wait for one build.
func (c cache) get(ctx context.Context, key string) (string, error) {
	if err := os.MkdirAll(c.root, 0o700); err != nil {
		return "", fmt.Errorf("testenv: %w", err)
	}
	dir := filepath.Join(c.root, key)
	unlock, err := lockFile(ctx, dir+".lock")
	if err != nil {
		return "", err
	}
	defer unlock()
	now := time.Now()
	if _, err := os.Stat(dir); err == nil {
		// Complete: a folder appears only by the rename below.
		return dir, os.Chtimes(dir, now, now)
	}
	tmp, err := os.MkdirTemp(c.root, key+".tmp-")
	if err != nil {
		return "", fmt.Errorf("testenv: %w", err)
	}
	if err := c.build(ctx, tmp); err != nil {
		return "", errors.Join(err, os.RemoveAll(tmp))
	}
	if err := os.Rename(tmp, dir); err != nil {
		return "", fmt.Errorf("testenv: %w", errors.Join(err, os.RemoveAll(tmp)))
	}
	c.prune(dir, now)
	return dir, nil
}

// prune removes what builds left under root that was not used for
// staleAfter: build folders, with their locks, and temporary folders of
// builds that did not finish. Folders whose lock another process holds are
// left alone. It is best effort: an error leaves the folder.
func (c cache) prune(keep string, now time.Time) {
	entries, err := os.ReadDir(c.root)
	if err != nil {
		return
	}
	for _, e := range entries {
		path := filepath.Join(c.root, e.Name())
		info, err := e.Info()
		if err != nil || !e.IsDir() || path == keep || now.Sub(info.ModTime()) < staleAfter {
			continue
		}
		if strings.Contains(e.Name(), ".tmp-") {
			_ = os.RemoveAll(path)
			continue
		}
		unlock, err := tryLockFile(path + ".lock")
		if err != nil {
			continue
		}
		if os.RemoveAll(path) == nil {
			_ = os.Remove(path + ".lock")
		}
		unlock()
	}
}

// lockFile takes an exclusive flock of path (created if needed), waiting
// for another holder to let go, and returns its release.
func lockFile(ctx context.Context, path string) (unlock func(), err error) {
	for {
		unlock, err := tryLockFile(path)
		if !errors.Is(err, unix.EWOULDBLOCK) {
			return unlock, err
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("testenv: waiting for the lock %s: %w", path, ctx.Err())
		case <-time.After(lockPoll):
		}
	}
}

// tryLockFile takes an exclusive flock of path without waiting; the error
// wraps unix.EWOULDBLOCK when another holds it.
func tryLockFile(path string) (unlock func(), err error) {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return nil, fmt.Errorf("testenv: %w", err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		f.Close()
		return nil, fmt.Errorf("testenv: lock %s: %w", path, err)
	}
	return func() {
		_ = unix.Flock(int(f.Fd()), unix.LOCK_UN)
		f.Close()
	}, nil
}
