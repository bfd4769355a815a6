package gitrepo_test

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/go-git/go-git/v5"
	"github.com/go-git/go-git/v5/plumbing"
	"github.com/go-git/go-git/v5/plumbing/filemode"
	"github.com/go-git/go-git/v5/plumbing/object"

	"github.com/poolmanagerd/pool-managerd/testkit/gitrepo"
)

// remoteTree reads the files of the bare repository's commit: path →
// "mode content" (a link's content is its target).
func remoteTree(t *testing.T, r *gitrepo.Repo, commit string) map[string]string {
	t.Helper()
	bare, err := git.PlainOpen(r.Path())
	if err != nil {
		t.Fatal(err)
	}
	c, err := bare.CommitObject(plumbing.NewHash(commit))
	if err != nil {
		t.Fatalf("the bare repository lacks commit %s: %v", commit, err)
	}
	files, err := c.Files()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]string{}
	err = files.ForEach(func(f *object.File) error {
		content, err := f.Contents()
		out[f.Name] = fmt.Sprintf("%v %s", f.Mode, content)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func TestCommitAndPush(t *testing.T) {
	r := gitrepo.New(t)
	if !filepath.IsAbs(r.Path()) || r.URL() != "file://"+r.Path() {
		t.Errorf("Path %q URL %q, want an absolute path and its file URL", r.Path(), r.URL())
	}
	r.Write("nodes.cue", "nodes\n")
	r.Write("pools/a.cue", "a\n")
	r.WriteMode("bin/hook.sh", "#!/bin/sh\n", 0o755)
	r.Symlink("current.cue", "nodes.cue")
	c1 := r.Commit()
	if got := r.RemoteHead("refs/heads/main"); got != "" {
		t.Errorf("before a push the remote branch is at %q, want none", got)
	}
	r.Push()
	if got := r.RemoteHead("refs/heads/main"); got != c1 {
		t.Errorf("after a push the remote branch is at %q, want %s", got, c1)
	}
	want := map[string]string{
		"nodes.cue":   fmt.Sprintf("%v nodes\n", filemode.Regular),
		"pools/a.cue": fmt.Sprintf("%v a\n", filemode.Regular),
		"bin/hook.sh": fmt.Sprintf("%v #!/bin/sh\n", filemode.Executable),
		"current.cue": fmt.Sprintf("%v nodes.cue", filemode.Symlink),
	}
	if got := remoteTree(t, r, c1); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("remote tree of %s:\n got %v\nwant %v", c1, got, want)
	}

	// A change and a removal, in one commit.
	r.Write("pools/a.cue", "a2\n")
	r.Remove("pools")
	r.Write("pools/b.cue", "b\n")
	r.Remove("current.cue")
	c2 := r.Commit()
	if c2 == c1 || r.Head() != c2 {
		t.Fatalf("second commit %s, head %s (first %s)", c2, r.Head(), c1)
	}
	r.Push()
	got := remoteTree(t, r, c2)
	if _, ok := got["pools/a.cue"]; ok || got["pools/b.cue"] == "" || got["current.cue"] != "" {
		t.Errorf("remote tree of %s: %v, want pools/a.cue and current.cue removed, pools/b.cue added", c2, got)
	}
	// The ref file holds the hash alone, and no lock file is left.
	data, err := os.ReadFile(filepath.Join(r.Path(), "refs", "heads", "main"))
	if err != nil || string(data) != c2+"\n" {
		t.Errorf("refs/heads/main holds %q (%v), want %q", data, err, c2+"\n")
	}
	if m, _ := filepath.Glob(filepath.Join(r.Path(), "refs", "heads", "*.lock")); len(m) != 0 {
		t.Errorf("lock files left: %v", m)
	}
}

// Commits are deterministic: the same files make the same hashes.
func TestCommitsAreDeterministic(t *testing.T) {
	var hashes [2][]string
	for i := range hashes {
		r := gitrepo.New(t)
		r.Write("a.cue", "a\n")
		hashes[i] = append(hashes[i], r.Commit())
		r.Write("b.cue", "b\n")
		hashes[i] = append(hashes[i], r.Commit())
	}
	if !slices.Equal(hashes[0], hashes[1]) {
		t.Errorf("two repositories with the same commits have hashes %v and %v", hashes[0], hashes[1])
	}
}

// fatalTB records a Fatalf and stops the method that called it.
type fatalTB struct{ msg string }

type stop struct{}

func (*fatalTB) Helper() {}
func (f *fatalTB) Fatalf(format string, args ...any) {
	f.msg = fmt.Sprintf(format, args...)
	panic(stop{})
}

// fails runs do and returns the message it failed with ("" when it did not).
func fails(f *fatalTB, do func()) (msg string) {
	f.msg = ""
	defer func() {
		if p := recover(); p != nil {
			if _, ok := p.(stop); !ok {
				panic(p)
			}
			msg = f.msg
		}
	}()
	do()
	return ""
}

func TestPushRefusesRewrittenHistoryUnlessForced(t *testing.T) {
	tb := &fatalTB{}
	r := gitrepo.NewIn(tb, t.TempDir())
	r.Write("a.cue", "a\n")
	c1 := r.Commit()
	r.Write("b.cue", "b\n")
	c2 := r.Commit()
	r.Push()

	r.Reset(c1)
	if _, err := os.Stat(filepath.Join(r.WorkDir(), "b.cue")); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("after Reset to %s, b.cue is still in the work tree (%v)", c1, err)
	}
	r.Write("c.cue", "c\n")
	c3 := r.Commit()
	msg := fails(tb, func() { r.Push() })
	if !strings.Contains(msg, "not a fast-forward") {
		t.Errorf("a push of a rewritten history failed with %q, want a refusal (not a fast-forward)", msg)
	}
	if got := r.RemoteHead("refs/heads/main"); got != c2 {
		t.Errorf("after the refused push the remote is at %s, want still %s", got, c2)
	}
	if msg := fails(tb, r.ForcePush); msg != "" {
		t.Fatalf("ForcePush: %s", msg)
	}
	if got := r.RemoteHead("refs/heads/main"); got != c3 {
		t.Errorf("after ForcePush the remote is at %s, want %s", got, c3)
	}
	if got := remoteTree(t, r, c3); len(got) != 2 || got["c.cue"] == "" || got["b.cue"] != "" {
		t.Errorf("remote tree of %s: %v, want a.cue and c.cue", c3, got)
	}
}

func TestPushRefspecs(t *testing.T) {
	tb := &fatalTB{}
	r := gitrepo.NewIn(tb, t.TempDir())
	r.Write("a.cue", "a\n")
	c1 := r.Commit()
	r.Write("a.cue", "a2\n")
	c2 := r.Commit()
	sig := &object.Signature{Name: "t", Email: "t@example.com"}
	if _, err := r.Work().CreateTag("v1", plumbing.NewHash(c1), &git.CreateTagOptions{Tagger: sig, Message: "v1"}); err != nil {
		t.Fatal(err)
	}
	if _, err := r.Work().CreateTag("light", plumbing.NewHash(c2), nil); err != nil {
		t.Fatal(err)
	}
	r.Push("refs/tags/*:refs/tags/*", "refs/heads/main:refs/heads/dev")
	if got := r.RemoteHead("refs/heads/dev"); got != c2 {
		t.Errorf("refs/heads/dev at %q, want %s", got, c2)
	}
	if got := r.RemoteHead("refs/heads/main"); got != "" {
		t.Errorf("refs/heads/main at %q, want none: only dev was pushed", got)
	}
	if got := r.RemoteHead("refs/tags/light"); got != c2 {
		t.Errorf("refs/tags/light at %q, want %s", got, c2)
	}
	bare, err := git.PlainOpen(r.Path())
	if err != nil {
		t.Fatal(err)
	}
	tagRef, err := bare.Tag("v1")
	if err != nil {
		t.Fatal(err)
	}
	tag, err := bare.TagObject(tagRef.Hash())
	if err != nil {
		t.Fatalf("the annotated tag's object was not pushed: %v", err)
	}
	if tag.Target.String() != c1 {
		t.Errorf("tag v1 points at %s, want %s", tag.Target, c1)
	}

	// A tag moved is refused without +, and taken with it.
	if err := r.Work().DeleteTag("light"); err != nil {
		t.Fatal(err)
	}
	if _, err := r.Work().CreateTag("light", plumbing.NewHash(c1), nil); err != nil {
		t.Fatal(err)
	}
	if msg := fails(tb, func() { r.Push("refs/tags/light:refs/tags/light") }); !strings.Contains(msg, "not a fast-forward") {
		t.Errorf("moving a tag without + failed with %q, want a refusal", msg)
	}
	r.Push("+refs/tags/light:refs/tags/light")
	if got := r.RemoteHead("refs/tags/light"); got != c1 {
		t.Errorf("refs/tags/light at %q after a forced push, want %s", got, c1)
	}
	if msg := fails(tb, func() { r.Push("refs/heads/nosuch:refs/heads/nosuch") }); !strings.Contains(msg, "no local ref matches") {
		t.Errorf("a push of no ref failed with %q, want 'no local ref matches'", msg)
	}
}

func TestHideAndUnhide(t *testing.T) {
	tb := &fatalTB{}
	r := gitrepo.NewIn(tb, t.TempDir())
	r.Write("a.cue", "a\n")
	c1 := r.Commit()
	r.Push()
	r.Hide()
	if _, err := git.PlainOpen(r.Path()); !errors.Is(err, git.ErrRepositoryNotExists) {
		t.Errorf("open the hidden repository: %v, want ErrRepositoryNotExists", err)
	}
	r.Write("b.cue", "b\n")
	r.Commit()
	if msg := fails(tb, func() { r.Push() }); !strings.Contains(msg, "open the bare repository") {
		t.Errorf("a push to the hidden repository failed with %q, want it to fail to open it", msg)
	}
	r.Unhide()
	if got := r.RemoteHead("refs/heads/main"); got != c1 {
		t.Errorf("after Unhide the remote is at %q, want %s", got, c1)
	}
	if msg := fails(tb, func() { r.Remove("nosuch.cue") }); msg == "" {
		t.Error("Remove of a file that does not exist did not fail")
	}
	if msg := fails(tb, func() { r.Write("../escape.cue", "x") }); !strings.Contains(msg, "not a path inside the work tree") {
		t.Errorf("Write outside the work tree failed with %q, want a refusal", msg)
	}
}
