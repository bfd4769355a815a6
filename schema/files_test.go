package schema

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// The smallest valid config, split over two files as a repository would hold it.
const (
	testNodesCUE = `package poolmanagerd

nodes: "gpu-01": gpus: [{index: 0, vram: 24Gi}]
`
	testPoolsCUE = `package poolmanagerd

pools: coder: {node: "gpu-01", engine: "llamacpp", model: {path: "/models/coder.gguf", ctx: 8192}, devices: [0]}
`
)

// loadTimeout bounds one Load in these tests: every case reads a handful of
// small files, so a load that takes longer is hung (on a FIFO, a loop).
const loadTimeout = 20 * time.Second

// loadResult is what one Load returned.
type loadResult struct {
	desired *Desired
	err     error
}

// loadWithin runs Load under a deadline, in a goroutine so that a Load blocked
// in a system call (which ctx cannot interrupt) fails the test instead of
// hanging it, and so that a panic is reported as such.
func loadWithin(t *testing.T, dir string) (*Desired, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), loadTimeout)
	defer cancel()
	done := make(chan loadResult, 1)
	panicked := make(chan any, 1)
	go func() {
		defer func() {
			if r := recover(); r != nil {
				panicked <- r
			}
		}()
		d, err := Load(ctx, dir)
		done <- loadResult{d, err}
	}()
	select {
	case r := <-done:
		return r.desired, r.err
	case p := <-panicked:
		t.Fatalf("Load(%s) panicked: %v", dir, p)
	case <-time.After(loadTimeout + 5*time.Second):
		t.Fatalf("Load(%s) did not return within %v", dir, loadTimeout)
	}
	return nil, nil
}

// writeFile writes a file under dir, making its parent directories.
func writeFile(t *testing.T, dir, rel, content string) {
	t.Helper()
	path := filepath.Join(dir, rel)
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}

func symlink(t *testing.T, target, link string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(link), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(target, link); err != nil {
		t.Fatal(err)
	}
}

// wantDiag is a diagnostic a case expects: in file (relative to the config
// directory; "." for the directory itself), with a message containing msg,
// and, when positioned, at a line and column.
type wantDiag struct {
	file       string
	msg        string
	positioned bool
	line       int // checked when > 0
}

func TestLoadFiles(t *testing.T) {
	valid := func(t *testing.T, dir string) {
		writeFile(t, dir, "nodes.cue", testNodesCUE)
		writeFile(t, dir, "pools.cue", testPoolsCUE)
	}
	tests := []struct {
		name string
		// setup fills dir; it returns the path to load, or "" for dir itself.
		setup func(t *testing.T, dir string) string
		// notDir: Load returns an error wrapping ErrNotDirectory.
		notDir bool
		// diags: Load returns Diagnostics including these (and only
		// diagnostics in the config directory).
		diags []wantDiag
		// ok: Load succeeds; check looks at the result.
		ok    bool
		check func(t *testing.T, d *Desired)
	}{
		{
			name:   "missing directory",
			setup:  func(t *testing.T, dir string) string { return filepath.Join(dir, "nope") },
			notDir: true,
		},
		{
			name: "path is a file",
			setup: func(t *testing.T, dir string) string {
				writeFile(t, dir, "config.cue", testNodesCUE)
				return filepath.Join(dir, "config.cue")
			},
			notDir: true,
		},
		{
			name: "dangling symlink as the directory",
			setup: func(t *testing.T, dir string) string {
				symlink(t, "missing", filepath.Join(dir, "cfg"))
				return filepath.Join(dir, "cfg")
			},
			notDir: true,
		},
		{
			name:  "empty directory",
			setup: func(t *testing.T, dir string) string { return "" },
			diags: []wantDiag{{file: ".", msg: "no .cue files found"}},
		},
		{
			name: "only other files",
			setup: func(t *testing.T, dir string) string {
				writeFile(t, dir, "README.md", "# config\n")
				writeFile(t, dir, "nodes.yaml", "nodes: {}\n")
				writeFile(t, dir, "sub/notes.txt", "x\n")
				return ""
			},
			diags: []wantDiag{{file: ".", msg: "no .cue files found (3 other files ignored)"}},
		},
		{
			name: "only hidden and cue.mod files",
			setup: func(t *testing.T, dir string) string {
				writeFile(t, dir, ".git/x.cue", "this is not cue {{{")
				writeFile(t, dir, ".hidden.cue", "this is not cue {{{")
				writeFile(t, dir, "cue.mod/module.cue", `module: "example.com/x"`)
				return ""
			},
			diags: []wantDiag{{file: ".", msg: "no .cue files found"}},
		},
		{
			name: "dangling symlink",
			setup: func(t *testing.T, dir string) string {
				valid(t, dir)
				symlink(t, "missing", filepath.Join(dir, "x.cue"))
				return ""
			},
			diags: []wantDiag{{file: "x.cue", msg: "cannot follow symlink: no such file or directory"}},
		},
		{
			name: "dangling symlink to a folder that went missing is reported",
			setup: func(t *testing.T, dir string) string {
				valid(t, dir)
				symlink(t, "../team-b", filepath.Join(dir, "pools-team-b"))
				return ""
			},
			diags: []wantDiag{{file: "pools-team-b", msg: "cannot follow symlink: no such file or directory"}},
		},
		{
			name: "unreadable file",
			setup: func(t *testing.T, dir string) string {
				if os.Geteuid() == 0 {
					t.Skip("root reads files whatever their mode")
				}
				valid(t, dir)
				writeFile(t, dir, "secret.cue", testPoolsCUE)
				if err := os.Chmod(filepath.Join(dir, "secret.cue"), 0); err != nil {
					t.Fatal(err)
				}
				return ""
			},
			diags: []wantDiag{{file: "secret.cue", msg: "cannot read: permission denied"}},
		},
		{
			name: "unreadable directory",
			setup: func(t *testing.T, dir string) string {
				if os.Geteuid() == 0 {
					t.Skip("root reads directories whatever their mode")
				}
				valid(t, dir)
				writeFile(t, dir, "locked/x.cue", testPoolsCUE)
				if err := os.Chmod(filepath.Join(dir, "locked"), 0); err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { os.Chmod(filepath.Join(dir, "locked"), 0o755) })
				return ""
			},
			diags: []wantDiag{{file: "locked", msg: "cannot read directory: permission denied"}},
		},
		{
			name: "oversized file",
			setup: func(t *testing.T, dir string) string {
				valid(t, dir)
				writeFile(t, dir, "huge.cue", "")
				if err := os.Truncate(filepath.Join(dir, "huge.cue"), 50<<20); err != nil {
					t.Fatal(err)
				}
				return ""
			},
			diags: []wantDiag{{file: "huge.cue", msg: "file is 50.0 MiB, over the 4.0 MiB limit for a config file"}},
		},
		{
			name: "file at the size limit is read",
			setup: func(t *testing.T, dir string) string {
				valid(t, dir)
				// A comment padded to exactly MaxFileSize bytes.
				pad := "//" + strings.Repeat("x", MaxFileSize-3) + "\n"
				writeFile(t, dir, "big.cue", pad)
				return ""
			},
			ok: true,
		},
		{
			name: "oversized file behind a symlink",
			setup: func(t *testing.T, dir string) string {
				valid(t, dir)
				outside := t.TempDir()
				writeFile(t, outside, "huge.cue", "")
				if err := os.Truncate(filepath.Join(outside, "huge.cue"), 50<<20); err != nil {
					t.Fatal(err)
				}
				symlink(t, filepath.Join(outside, "huge.cue"), filepath.Join(dir, "link.cue"))
				return ""
			},
			diags: []wantDiag{{file: "link.cue", msg: "over the 4.0 MiB limit"}},
		},
		{
			name: "directory symlink loop",
			setup: func(t *testing.T, dir string) string {
				valid(t, dir)
				symlink(t, "..", filepath.Join(dir, "sub", "loop"))
				return ""
			},
			diags: []wantDiag{{file: "sub/loop", msg: "symlink loop: this directory is the config directory again"}},
		},
		{
			name: "directory symlink loop below the root",
			setup: func(t *testing.T, dir string) string {
				valid(t, dir)
				symlink(t, "../..", filepath.Join(dir, "a", "b", "up"))
				return ""
			},
			diags: []wantDiag{{file: "a/b/up", msg: "symlink loop"}},
		},
		{
			name: "self-referencing symlink",
			setup: func(t *testing.T, dir string) string {
				valid(t, dir)
				symlink(t, "a.cue", filepath.Join(dir, "a.cue"))
				return ""
			},
			diags: []wantDiag{{file: "a.cue", msg: "cannot follow symlink: too many levels of symbolic links"}},
		},
		{
			name: "self-referencing symlink without .cue suffix",
			setup: func(t *testing.T, dir string) string {
				valid(t, dir)
				symlink(t, "loop", filepath.Join(dir, "loop"))
				return ""
			},
			diags: []wantDiag{{file: "loop", msg: "too many levels of symbolic links"}},
		},
		{
			name: "symlinked directory is followed",
			setup: func(t *testing.T, dir string) string {
				writeFile(t, dir, "nodes.cue", testNodesCUE)
				outside := t.TempDir()
				writeFile(t, outside, "pools.cue", testPoolsCUE)
				symlink(t, outside, filepath.Join(dir, "shared"))
				return ""
			},
			ok: true,
			check: func(t *testing.T, d *Desired) {
				if got := strings.Join(d.Files, " "); got != "nodes.cue shared/pools.cue" {
					t.Errorf("Files = %q, want nodes.cue shared/pools.cue", got)
				}
			},
		},
		{
			name: "FIFO",
			setup: func(t *testing.T, dir string) string {
				valid(t, dir)
				if err := syscall.Mkfifo(filepath.Join(dir, "x.cue"), 0o644); err != nil {
					t.Skipf("mkfifo: %v", err)
				}
				return ""
			},
			diags: []wantDiag{{file: "x.cue", msg: "not a regular file"}},
		},
		{
			name: "symlink to a FIFO",
			setup: func(t *testing.T, dir string) string {
				valid(t, dir)
				if err := syscall.Mkfifo(filepath.Join(dir, "pipe"), 0o644); err != nil {
					t.Skipf("mkfifo: %v", err)
				}
				symlink(t, "pipe", filepath.Join(dir, "y.cue"))
				return ""
			},
			diags: []wantDiag{{file: "y.cue", msg: "not a regular file"}},
		},
		{
			name: "symlink to /dev/zero",
			setup: func(t *testing.T, dir string) string {
				if _, err := os.Stat("/dev/zero"); err != nil {
					t.Skip("no /dev/zero")
				}
				valid(t, dir)
				symlink(t, "/dev/zero", filepath.Join(dir, "zero.cue"))
				return ""
			},
			diags: []wantDiag{{file: "zero.cue", msg: "not a regular file"}},
		},
		{
			name: "hidden directories and cue.mod are skipped",
			setup: func(t *testing.T, dir string) string {
				valid(t, dir)
				writeFile(t, dir, ".git/x.cue", "this is not cue {{{")
				writeFile(t, dir, "sub/.cache/y.cue", "package other\n")
				writeFile(t, dir, ".hidden.cue", "nodes: 1\n")
				writeFile(t, dir, "cue.mod/module.cue", `module: "example.com/x"`)
				writeFile(t, dir, "cue.mod/pkg/x/x.cue", "package x\n")
				return ""
			},
			ok: true,
			check: func(t *testing.T, d *Desired) {
				if got := strings.Join(d.Files, " "); got != "nodes.cue pools.cue" {
					t.Errorf("Files = %q, want nodes.cue pools.cue", got)
				}
			},
		},
		{
			name: "nested folders merge into one package",
			setup: func(t *testing.T, dir string) string {
				writeFile(t, dir, "nodes/gpu-01.cue", testNodesCUE)
				writeFile(t, dir, "nodes/gpu-02.cue", "package poolmanagerd\nnodes: \"gpu-02\": gpus: [{index: 0, vram: 48Gi}, {index: 1, vram: 48Gi}]\n")
				writeFile(t, dir, "pools/coder.cue", testPoolsCUE)
				writeFile(t, dir, "pools/big/chat.cue", "package poolmanagerd\npools: chat: {node: \"gpu-02\", engine: \"vllm\", vram: 80Gi, model: path: \"/models/chat\", devices: [0, 1]}\n")
				writeFile(t, dir, "README.md", "docs\n")
				return ""
			},
			ok: true,
			check: func(t *testing.T, d *Desired) {
				if len(d.Nodes) != 2 || len(d.Pools) != 2 || d.GPUCount() != 3 {
					t.Errorf("got %d nodes, %d pools, %d GPUs; want 2, 2, 3", len(d.Nodes), len(d.Pools), d.GPUCount())
				}
				want := "nodes/gpu-01.cue nodes/gpu-02.cue pools/big/chat.cue pools/coder.cue"
				if got := strings.Join(d.Files, " "); got != want {
					t.Errorf("Files = %q, want %q", got, want)
				}
				if p := d.Pools["coder"]; p == nil || p.Model.Ctx != 8192 || p.Node != "gpu-01" {
					t.Errorf("pool coder = %+v", p)
				}
			},
		},
		{
			name: "files without a package clause merge with package poolmanagerd",
			setup: func(t *testing.T, dir string) string {
				writeFile(t, dir, "nodes.cue", testNodesCUE)
				writeFile(t, dir, "pools.cue", strings.TrimPrefix(testPoolsCUE, "package poolmanagerd\n"))
				return ""
			},
			ok: true,
			check: func(t *testing.T, d *Desired) {
				if d.Pools["coder"] == nil || d.Nodes["gpu-01"] == nil {
					t.Errorf("want pool coder and node gpu-01, got %v and %v", d.Pools, d.Nodes)
				}
			},
		},
		{
			name: "no file has a package clause",
			setup: func(t *testing.T, dir string) string {
				writeFile(t, dir, "nodes.cue", strings.TrimPrefix(testNodesCUE, "package poolmanagerd\n"))
				writeFile(t, dir, "pools.cue", strings.TrimPrefix(testPoolsCUE, "package poolmanagerd\n"))
				return ""
			},
			ok: true,
		},
		{
			name: "another package",
			setup: func(t *testing.T, dir string) string {
				valid(t, dir)
				writeFile(t, dir, "sub/other.cue", "// a comment\n\npackage other\n\nx: 1\n")
				return ""
			},
			diags: []wantDiag{{file: "sub/other.cue", msg: "package other: config files belong to package poolmanagerd", positioned: true, line: 3}},
		},
		{
			name: "binary garbage",
			setup: func(t *testing.T, dir string) string {
				valid(t, dir)
				garbage := []byte{0x7f, 'E', 'L', 'F', 2, 1, 1, 0, 0, 0, 0xff, 0xfe, '{', 0x00, 0x80, '"', '\n', 0xc3, 0x28, '}', '}'}
				writeFile(t, dir, "blob.cue", string(garbage))
				return ""
			},
			diags: []wantDiag{{file: "blob.cue", msg: "", positioned: true, line: 1}},
		},
		{
			name: "syntax error",
			setup: func(t *testing.T, dir string) string {
				valid(t, dir)
				writeFile(t, dir, "bad.cue", "package poolmanagerd\n\npools: x: {node: \n")
				return ""
			},
			diags: []wantDiag{{file: "bad.cue", msg: "", positioned: true}},
		},
		{
			name: "problems in several files are all reported",
			setup: func(t *testing.T, dir string) string {
				valid(t, dir)
				symlink(t, "missing", filepath.Join(dir, "a.cue"))
				writeFile(t, dir, "b.cue", "package other\n")
				writeFile(t, dir, "c.cue", "")
				if err := os.Truncate(filepath.Join(dir, "c.cue"), 5<<20); err != nil {
					t.Fatal(err)
				}
				return ""
			},
			diags: []wantDiag{
				{file: "a.cue", msg: "cannot follow symlink"},
				{file: "b.cue", msg: "package other", positioned: true, line: 1},
				{file: "c.cue", msg: "over the 4.0 MiB limit"},
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			path := tt.setup(t, dir)
			if path == "" {
				path = dir
			}
			start := time.Now()
			d, err := loadWithin(t, path)
			if elapsed := time.Since(start); elapsed > 10*time.Second {
				t.Errorf("Load took %v", elapsed)
			}
			switch {
			case tt.notDir:
				if !errors.Is(err, ErrNotDirectory) {
					t.Fatalf("Load(%s) = %v, want an error wrapping ErrNotDirectory", path, err)
				}
				if d != nil {
					t.Errorf("Load returned a desired state with its error")
				}
				if !strings.Contains(err.Error(), path) {
					t.Errorf("error %q does not name the path %s", err, path)
				}
			case tt.ok:
				if err != nil {
					t.Fatalf("Load: %v", err)
				}
				if tt.check != nil {
					tt.check(t, d)
				}
			default:
				var diags Diagnostics
				if !errors.As(err, &diags) {
					t.Fatalf("Load = %v (%T), want Diagnostics", err, err)
				}
				if d != nil {
					t.Errorf("Load returned a desired state with its diagnostics")
				}
				t.Logf("diagnostics:\n%v", diags)
				checkDiagFiles(t, dir, diags)
				for _, w := range tt.diags {
					if !hasDiag(dir, diags, w) {
						t.Errorf("no diagnostic in %s with %q (positioned %v, line %d); got:\n%v", w.file, w.msg, w.positioned, w.line, diags)
					}
				}
			}
		})
	}
}

func hasDiag(dir string, diags Diagnostics, w wantDiag) bool {
	file := dir
	if w.file != "." {
		file = filepath.Join(dir, w.file)
	}
	for _, d := range diags {
		if d.Pos.File != file || !strings.Contains(d.Message, w.msg) {
			continue
		}
		if w.positioned && (d.Pos.Line < 1 || d.Pos.Column < 1) {
			continue
		}
		if w.line > 0 && d.Pos.Line != w.line {
			continue
		}
		return true
	}
	return false
}

// checkDiagFiles checks that every diagnostic has a message and names a file
// as the config directory joined with the file's relative path.
func checkDiagFiles(t *testing.T, dir string, diags Diagnostics) {
	t.Helper()
	if len(diags) == 0 {
		t.Error("empty Diagnostics as an error")
	}
	for _, d := range diags {
		if d.Message == "" {
			t.Errorf("diagnostic without a message: %#v", d)
		}
		if d.Pos.File != dir && !strings.HasPrefix(d.Pos.File, dir+string(filepath.Separator)) {
			t.Errorf("diagnostic file %q is not in the config directory %s: %v", d.Pos.File, dir, d)
		}
		if d.Pos.File != filepath.Clean(d.Pos.File) {
			t.Errorf("diagnostic file %q is not a clean path", d.Pos.File)
		}
	}
}

// TestLoadRelativeDir checks that diagnostics name files as the directory as
// given joined with the file's path below it, so that editors and CI
// annotations find them relative to where the command ran.
func TestLoadRelativeDir(t *testing.T) {
	root := t.TempDir()
	writeFile(t, root, "config/nodes/gpu-01.cue", testNodesCUE)
	writeFile(t, root, "config/pools/coder.cue", testPoolsCUE)
	writeFile(t, root, "config/pools/bad.cue", "package poolmanagerd\npools: bad: {node: \"gpu-01\", engine: \"llama\", model: {path: \"/m.gguf\"}, devices: [0]}\n")
	symlink(t, "missing", filepath.Join(root, "config", "pools", "gone.cue"))
	t.Chdir(root)

	for _, dir := range []string{"config", "./config", "config/"} {
		t.Run(dir, func(t *testing.T) {
			_, err := loadWithin(t, dir)
			var diags Diagnostics
			if !errors.As(err, &diags) {
				t.Fatalf("Load = %v, want Diagnostics", err)
			}
			files := map[string]bool{}
			for _, d := range diags {
				files[d.Pos.File] = true
			}
			for _, want := range []string{"config/pools/bad.cue", "config/pools/gone.cue"} {
				if !files[want] {
					t.Errorf("no diagnostic in %s; got:\n%v", want, diags)
				}
			}
			for f := range files {
				if !strings.HasPrefix(f, "config/pools/") {
					t.Errorf("diagnostic file %q: want config/pools/...", f)
				}
			}
		})
	}
}

// TestLoadCancelled checks that a cancelled context stops the load with the context's error.
func TestLoadCancelled(t *testing.T) {
	dir := t.TempDir()
	writeFile(t, dir, "nodes.cue", testNodesCUE)
	writeFile(t, dir, "pools.cue", testPoolsCUE)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	d, err := Load(ctx, dir)
	if !errors.Is(err, context.Canceled) || d != nil {
		t.Fatalf("Load with a cancelled context = %v, %v; want context.Canceled", d, err)
	}
}

// TestLoadManyFiles checks a wide tree loads in reasonable time and every file is read.
func TestLoadManyFiles(t *testing.T) {
	dir := t.TempDir()
	writeFile(t, dir, "nodes.cue", testNodesCUE)
	for i := range 200 {
		writeFile(t, dir, fmt.Sprintf("pools/g%02d/p%03d.cue", i%13, i), "package poolmanagerd\n")
	}
	writeFile(t, dir, "pools/coder.cue", testPoolsCUE)
	d, err := loadWithin(t, dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(d.Files) != 202 {
		t.Errorf("got %d files", len(d.Files))
	}
}

// TestLoadSymlinkFanOut builds a tree without a loop whose paths double at
// each level (d00/x and d00/y both link to d01, and so on): walking every
// path would take millions of directory reads. Load must either refuse the
// tree with a diagnostic or stop at the context's deadline; it must not run on.
func TestLoadSymlinkFanOut(t *testing.T) {
	// 24 folders, each linking twice to the next: 2^23 paths to the same leaf
	// without a loop. Each real folder and file is read once.
	dir := t.TempDir()
	writeFile(t, dir, "nodes.cue", testNodesCUE)
	writeFile(t, dir, "pools.cue", testPoolsCUE)
	const levels = 24
	for i := range levels {
		d := filepath.Join(dir, fmt.Sprintf("d%02d", i))
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
		if i+1 < levels {
			symlink(t, fmt.Sprintf("../d%02d", i+1), filepath.Join(d, "x"))
			symlink(t, fmt.Sprintf("../d%02d", i+1), filepath.Join(d, "y"))
		}
	}
	writeFile(t, dir, fmt.Sprintf("d%02d/leaf.cue", levels-1), "package poolmanagerd\n")

	d, err := loadWithin(t, dir)
	if err != nil {
		t.Fatalf("Load: %v", err)
	}
	leaves := 0
	for _, f := range d.Files {
		if filepath.Base(f) == "leaf.cue" {
			leaves++
		}
	}
	if leaves != 1 {
		t.Errorf("leaf.cue read %d times, want once; files: %v", leaves, d.Files)
	}
}
