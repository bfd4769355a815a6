package sim

import (
	"context"
	"fmt"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	gonvml "github.com/NVIDIA/go-nvml/pkg/nvml"
	"github.com/google/go-cmp/cmp"
	"golang.org/x/sys/unix"

	"github.com/poolmanagerd/pool-managerd/drivers/gpu/nvml"
)

// testNode is a simulated node opened for a test, with or without its
// watcher (then it reads everything on every query).
type testNode struct {
	t    *testing.T
	dir  string
	lib  *library
	node *nvml.Node
	self int            // this process's pid
	pids map[int]string // names for the pids in the summaries
	kids map[string]*exec.Cmd
}

func openTestNode(t *testing.T, dir string, watched bool) *testNode {
	t.Helper()
	l, err := newLibrary(dir)
	if err != nil {
		t.Fatal(err)
	}
	l.vmu.Lock()
	w := l.view.w
	if w != nil && !watched {
		l.view.unwatch()
	}
	l.vmu.Unlock()
	if w == nil {
		t.Fatal("no inotify watcher: this system cannot test the watched view")
	}
	n, err := nvml.New(l)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := n.Close(); err != nil {
			t.Error(err)
		}
	})
	self := os.Getpid()
	return &testNode{t: t, dir: dir, lib: l, node: n, self: self, pids: map[int]string{self: "self"}, kids: map[string]*exec.Cmd{}}
}

// summary reads the node: a line a GPU, "INDEX: USED of TOTAL GiB" and the
// processes as NAME=GiB, or "INDEX lost"; or the error.
func (n *testNode) summary() ([]string, error) {
	ds, err := n.node.Devices(context.Background())
	if err != nil {
		return nil, err
	}
	var lines []string
	for _, d := range ds {
		if d.Lost {
			lines = append(lines, fmt.Sprintf("%d lost", d.Index))
			continue
		}
		s := fmt.Sprintf("%d: %d of %d GiB", d.Index, d.MemoryUsed/GiB, d.MemoryTotal/GiB)
		for _, p := range d.Processes {
			name, ok := n.pids[p.PID]
			if !ok {
				name = strconv.Itoa(p.PID)
			}
			s += fmt.Sprintf(" %s=%d", name, p.UsedBytes/GiB)
		}
		lines = append(lines, s)
	}
	return lines, nil
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func writeFile(t *testing.T, path, content string) {
	t.Helper()
	must(t, os.MkdirAll(filepath.Dir(path), 0o755))
	must(t, os.WriteFile(path, []byte(content), 0o644))
}

// startChild starts a process that lives until the test ends, unless
// killed; it is named in summaries.
func (n *testNode) startChild(name string) *exec.Cmd {
	n.t.Helper()
	cmd := exec.Command("sleep", "60")
	must(n.t, cmd.Start())
	n.t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
	})
	n.pids[cmd.Process.Pid] = name
	n.kids[name] = cmd
	return cmd
}

// killToZombie kills a child and returns once it has exited, without
// reaping it: it is a zombie then.
func killToZombie(t *testing.T, cmd *exec.Cmd) {
	t.Helper()
	must(t, cmd.Process.Kill())
	var info unix.Siginfo
	must(t, unix.Waitid(unix.P_PID, cmd.Process.Pid, &info, unix.WEXITED|unix.WNOWAIT, nil))
}

// TestEveryChangeIsSeen: whatever changes in the directory, by this
// package's functions or by hand, and whatever happens to a claimant, the
// next query sees it; with the watcher (files read again only when inotify
// reports a change) as without (everything read every time).
func TestEveryChangeIsSeen(t *testing.T) {
	type step struct {
		do      func(n *testNode)
		want    []string
		wantErr string // a part of the error, instead of want
	}
	idle := []string{"0: 0 of 24 GiB", "1: 0 of 12 GiB"}
	tests := []struct {
		name  string
		steps []step
	}{{
		name: "claim written, rewritten, released",
		steps: []step{
			{do: func(n *testNode) { must(n.t, Claim(n.dir, n.self, map[int]uint64{0: GiB})) },
				want: []string{"0: 1 of 24 GiB self=1", "1: 0 of 12 GiB"}},
			{do: func(n *testNode) { must(n.t, Claim(n.dir, n.self, map[int]uint64{0: 2 * GiB, 1: 3 * GiB})) },
				want: []string{"0: 2 of 24 GiB self=2", "1: 3 of 12 GiB self=3"}},
			{do: func(n *testNode) { must(n.t, Release(n.dir, n.self)) }, want: idle},
		},
	}, {
		name: "claim file written in place, by hand",
		steps: []step{
			{do: func(n *testNode) { must(n.t, Claim(n.dir, n.self, map[int]uint64{0: GiB})) },
				want: []string{"0: 1 of 24 GiB self=1", "1: 0 of 12 GiB"}},
			{do: func(n *testNode) {
				writeFile(n.t, filepath.Join(n.dir, claimsDir, strconv.Itoa(n.self)+".json"),
					fmt.Sprintf(`{"pid": %d, "startTime": 0, "gpus": {"1": %d}}`, n.self, 5*GiB))
			}, want: []string{"0: 0 of 24 GiB", "1: 5 of 12 GiB self=5"}},
		},
	}, {
		name: "corrupt claim, then mended",
		steps: []step{
			{do: func(n *testNode) { writeFile(n.t, filepath.Join(n.dir, claimsDir, "77.json"), `{"pid": 78}`) },
				wantErr: "claims/77.json is corrupt: it holds the claim of pid 78"},
			{do: func(n *testNode) {}, wantErr: "claims/77.json is corrupt"}, // still
			{do: func(n *testNode) { must(n.t, os.Remove(filepath.Join(n.dir, claimsDir, "77.json"))) }, want: idle},
		},
	}, {
		name: "claims directory removed and made again",
		steps: []step{
			{do: func(n *testNode) { must(n.t, Claim(n.dir, n.self, map[int]uint64{0: GiB})) },
				want: []string{"0: 1 of 24 GiB self=1", "1: 0 of 12 GiB"}},
			{do: func(n *testNode) { must(n.t, os.RemoveAll(filepath.Join(n.dir, claimsDir))) }, want: idle},
			{do: func(n *testNode) { must(n.t, Claim(n.dir, n.self, map[int]uint64{1: 2 * GiB})) },
				want: []string{"0: 0 of 24 GiB", "1: 2 of 12 GiB self=2"}},
		},
	}, {
		name: "claims directory replaced by another",
		steps: []step{
			{do: func(n *testNode) { must(n.t, Claim(n.dir, n.self, map[int]uint64{0: GiB})) },
				want: []string{"0: 1 of 24 GiB self=1", "1: 0 of 12 GiB"}},
			{do: func(n *testNode) {
				other := filepath.Join(n.dir, "other")
				writeFile(n.t, filepath.Join(other, claimsDir, strconv.Itoa(n.self)+".json"),
					fmt.Sprintf(`{"pid": %d, "gpus": {"1": %d}}`, n.self, 4*GiB))
				must(n.t, os.Rename(filepath.Join(n.dir, claimsDir), filepath.Join(n.dir, "old-claims")))
				must(n.t, os.Rename(filepath.Join(other, claimsDir), filepath.Join(n.dir, claimsDir)))
			}, want: []string{"0: 0 of 24 GiB", "1: 4 of 12 GiB self=4"}},
			// The directory moved away is not watched any more.
			{do: func(n *testNode) {
				writeFile(n.t, filepath.Join(n.dir, "old-claims", "1.json"), `{"pid": 1, "gpus": {"0": 1}}`)
				must(n.t, Claim(n.dir, n.self, map[int]uint64{0: 6 * GiB}))
			}, want: []string{"0: 6 of 24 GiB self=6", "1: 0 of 12 GiB"}},
		},
	}, {
		name: "foreign holds, cleared, held again",
		steps: []step{
			{do: func(n *testNode) { must(n.t, Foreign(n.dir, 1, 4242, 2*GiB)) },
				want: []string{"0: 0 of 24 GiB", "1: 2 of 12 GiB 4242=2"}},
			{do: func(n *testNode) { must(n.t, ClearForeign(n.dir)) }, want: idle},
			{do: func(n *testNode) { must(n.t, Foreign(n.dir, 0, 4243, 3*GiB)) },
				want: []string{"0: 3 of 24 GiB 4243=3", "1: 0 of 12 GiB"}},
			{do: func(n *testNode) { must(n.t, Foreign(n.dir, 0, 4243, 0)) }, want: idle},
		},
	}, {
		name: "GPU lost and restored, lost directory removed",
		steps: []step{
			{do: func(n *testNode) { must(n.t, Lose(n.dir, 1)) }, want: []string{"0: 0 of 24 GiB", "1 lost"}},
			{do: func(n *testNode) { must(n.t, Restore(n.dir, 1)) }, want: idle},
			{do: func(n *testNode) { must(n.t, Lose(n.dir, 0)) }, want: []string{"0 lost", "1: 0 of 12 GiB"}},
			{do: func(n *testNode) { must(n.t, os.RemoveAll(filepath.Join(n.dir, lostDir))) }, want: idle},
		},
	}, {
		name: "node reset with other GPUs",
		steps: []step{
			{do: func(n *testNode) { must(n.t, Claim(n.dir, n.self, map[int]uint64{0: GiB})) },
				want: []string{"0: 1 of 24 GiB self=1", "1: 0 of 12 GiB"}},
			{do: func(n *testNode) {
				must(n.t, Reset(n.dir, []GPUSpec{{Name: "A", MemoryBytes: 48 * GiB}, {Name: "B", MemoryBytes: 16 * GiB}}))
			}, want: []string{"0: 0 of 48 GiB", "1: 0 of 16 GiB"}},
			{do: func(n *testNode) { must(n.t, Reset(n.dir, []GPUSpec{{Name: "A", MemoryBytes: 48 * GiB}})) },
				wantErr: "GPU 1 is gone from node.json"},
		},
	}, {
		name: "node directory removed, then made again",
		steps: []step{
			{do: func(n *testNode) { must(n.t, os.RemoveAll(n.dir)) }, wantErr: "not initialised"},
			{do: func(n *testNode) {}, wantErr: "not initialised"},
			{do: func(n *testNode) {
				must(n.t, Init(n.dir, DefaultGPUs()))
				must(n.t, Claim(n.dir, n.self, map[int]uint64{1: GiB}))
			}, want: []string{"0: 0 of 24 GiB", "1: 1 of 12 GiB self=1"}},
			{do: func(n *testNode) { must(n.t, Release(n.dir, n.self)) }, want: idle},
		},
	}, {
		name: "node directory moved away, another made in its place",
		steps: []step{
			{do: func(n *testNode) { must(n.t, Claim(n.dir, n.self, map[int]uint64{0: GiB})) },
				want: []string{"0: 1 of 24 GiB self=1", "1: 0 of 12 GiB"}},
			{do: func(n *testNode) {
				must(n.t, os.Rename(n.dir, n.dir+".old"))
				must(n.t, Init(n.dir, DefaultGPUs()))
			}, want: idle},
			{do: func(n *testNode) { must(n.t, Claim(n.dir+".old", n.self, map[int]uint64{0: 7 * GiB})) }, want: idle},
			{do: func(n *testNode) { must(n.t, Claim(n.dir, n.self, map[int]uint64{0: 2 * GiB})) },
				want: []string{"0: 2 of 24 GiB self=2", "1: 0 of 12 GiB"}},
		},
	}, {
		name: "claimants die, without a file changing",
		steps: []step{
			{do: func(n *testNode) {
				a, b := n.startChild("a"), n.startChild("b")
				must(n.t, Claim(n.dir, a.Process.Pid, map[int]uint64{0: GiB}))
				must(n.t, Claim(n.dir, b.Process.Pid, map[int]uint64{0: 2 * GiB, 1: GiB}))
			}, want: []string{"0: 3 of 24 GiB a=1 b=2", "1: 1 of 12 GiB b=1"}},
			{do: func(n *testNode) {
				a := n.kids["a"]
				must(n.t, a.Process.Kill())
				a.Wait() // reaped: its pid may be another process's soon
			}, want: []string{"0: 2 of 24 GiB b=2", "1: 1 of 12 GiB b=1"}},
			{do: func(n *testNode) { killToZombie(n.t, n.kids["b"]) }, want: idle},
		},
	}, {
		name: "a claim made by an earlier process of the same pid",
		steps: []step{
			{do: func(n *testNode) {
				writeFile(n.t, filepath.Join(n.dir, claimsDir, strconv.Itoa(n.self)+".json"),
					fmt.Sprintf(`{"pid": %d, "startTime": 1, "gpus": {"0": %d}}`, n.self, GiB))
			}, want: idle},
			{do: func(n *testNode) { must(n.t, Claim(n.dir, n.self, map[int]uint64{0: GiB})) },
				want: []string{"0: 1 of 24 GiB self=1", "1: 0 of 12 GiB"}},
		},
	}}
	for _, mode := range []string{"watched", "unwatched"} {
		for _, tt := range tests {
			t.Run(mode+"/"+tt.name, func(t *testing.T) {
				dir := filepath.Join(t.TempDir(), "node")
				must(t, Init(dir, DefaultGPUs()))
				n := openTestNode(t, dir, mode == "watched")
				got, err := n.summary()
				must(t, err)
				if diff := cmp.Diff(idle, got); diff != "" {
					t.Fatalf("before any change (-want +got):\n%s", diff)
				}
				for i, s := range tt.steps {
					s.do(n)
					got, err := n.summary()
					switch {
					case s.wantErr != "" && (err == nil || !strings.Contains(err.Error(), s.wantErr)):
						t.Fatalf("step %d: error %v, want one with %q (devices %q)", i, err, s.wantErr, got)
					case s.wantErr == "" && err != nil:
						t.Fatalf("step %d: %v", i, err)
					case s.wantErr == "":
						if diff := cmp.Diff(s.want, got); diff != "" {
							t.Fatalf("step %d (-want +got):\n%s", i, diff)
						}
					}
				}
			})
		}
	}
}

// TestIdleNodeReadsNothing: with nothing changing, queries read no file
// again and keep each claimant's pidfd; a claim that changes is the only
// file read again.
func TestIdleNodeReadsNothing(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "node")
	must(t, Init(dir, DefaultGPUs()))
	n := openTestNode(t, dir, true)
	a, b := n.startChild("a"), n.startChild("b")
	must(t, Claim(dir, a.Process.Pid, map[int]uint64{0: GiB}))
	must(t, Claim(dir, b.Process.Pid, map[int]uint64{1: GiB}))
	want := []string{"0: 1 of 24 GiB a=1", "1: 1 of 12 GiB b=1"}
	entries := func() map[string]*claim {
		n.lib.vmu.Lock()
		defer n.lib.vmu.Unlock()
		if !n.lib.view.claims.current || !n.lib.view.nodeOK || !n.lib.view.lostOK {
			t.Errorf("after a query: claims current %v, node %v, lost %v; want all kept",
				n.lib.view.claims.current, n.lib.view.nodeOK, n.lib.view.lostOK)
		}
		return maps.Clone(n.lib.view.claims.entries)
	}
	for range 2 {
		got, err := n.summary()
		must(t, err)
		if diff := cmp.Diff(want, got); diff != "" {
			t.Fatalf("(-want +got):\n%s", diff)
		}
	}
	first := entries()
	for name, c := range first {
		if c.fd < 0 {
			t.Errorf("%s: no pidfd kept for a live claimant", name)
		}
	}
	got, err := n.summary()
	must(t, err)
	if diff := cmp.Diff(want, got); diff != "" {
		t.Fatalf("(-want +got):\n%s", diff)
	}
	for name, c := range entries() {
		if first[name] != c {
			t.Errorf("%s was read again, though it did not change", name)
		}
	}

	must(t, Claim(dir, b.Process.Pid, map[int]uint64{1: 2 * GiB}))
	got, err = n.summary()
	must(t, err)
	if diff := cmp.Diff([]string{"0: 1 of 24 GiB a=1", "1: 2 of 12 GiB b=2"}, got); diff != "" {
		t.Fatalf("after b's claim changed (-want +got):\n%s", diff)
	}
	nameA, nameB := strconv.Itoa(a.Process.Pid)+".json", strconv.Itoa(b.Process.Pid)+".json"
	second := entries()
	if second[nameA] != first[nameA] {
		t.Errorf("a's claim was read again, though only b's changed")
	}
	if second[nameB] == first[nameB] {
		t.Errorf("b's claim was not read again after it changed")
	}
	if first[nameB].fd != -1 {
		t.Errorf("b's old claim still holds its pidfd %d", first[nameB].fd)
	}
}

// openFDs counts this process's open descriptors.
func openFDs(t *testing.T) int {
	t.Helper()
	entries, err := os.ReadDir("/proc/self/fd")
	must(t, err)
	return len(entries)
}

// TestCloseReleasesDescriptors: the inotify descriptor and the pidfds go
// with Close, and with an Open that fails.
func TestCloseReleasesDescriptors(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "node")
	must(t, Init(dir, DefaultGPUs()))
	cmd := exec.Command("sleep", "60")
	must(t, cmd.Start())
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
	})
	must(t, Claim(dir, cmd.Process.Pid, map[int]uint64{0: GiB}))
	before := openFDs(t)
	n, err := Open(dir)
	must(t, err)
	ds, err := n.Devices(context.Background())
	must(t, err)
	if len(ds[0].Processes) != 1 {
		t.Fatalf("GPU 0 shows %v, want the claimant", ds[0].Processes)
	}
	if open := openFDs(t); open < before+2 {
		t.Errorf("%d descriptors open, %d before Open: want the watcher's and a pidfd more", open, before)
	}
	must(t, n.Close())
	if after := openFDs(t); after != before {
		t.Errorf("%d descriptors open after Close, %d before Open", after, before)
	}

	writeFile(t, filepath.Join(dir, claimsDir, "77.json"), `{"pid": 78}`)
	if _, err := Open(dir); err == nil {
		t.Fatal("Open of a node with a corrupt claim succeeded")
	}
	if after := openFDs(t); after != before {
		t.Errorf("%d descriptors open after a failed Open, %d before", after, before)
	}
}

// TestWatchStartedLate: what was read while the directory could not be
// watched (it was made between the attempt and the read) is read again
// once the watch is in place, though no event reported the change.
func TestWatchStartedLate(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "node")
	v := newView(dir)
	if v.w == nil {
		t.Fatal("no inotify watcher: this system cannot test the watched view")
	}
	t.Cleanup(v.close)
	v.sync() // the directory is not there: not watched
	must(t, Init(dir, DefaultGPUs()))
	desc, err := v.readNode()
	must(t, err)
	if got := desc.GPUs[0].MemoryBytes; got != 24*GiB {
		t.Fatalf("GPU 0 has %d bytes, want 24 GiB", got)
	}
	must(t, Reset(dir, []GPUSpec{{Name: "A", MemoryBytes: 48 * GiB}}))
	v.sync() // watched from now on
	desc, err = v.readNode()
	must(t, err)
	if got := desc.GPUs[0].MemoryBytes; got != 48*GiB {
		t.Errorf("GPU 0 has %d bytes after the node was reset to 48 GiB: read before the watch, kept after", got)
	}
}

// TestWaitWakesOnXid: an event set waiting (with a timeout far away) for
// an Xid returns it once it is injected: woken by inotify, or by polling
// without it.
func TestWaitWakesOnXid(t *testing.T) {
	for _, mode := range []string{"watched", "unwatched"} {
		t.Run(mode, func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "node")
			must(t, Init(dir, DefaultGPUs()))
			n := openTestNode(t, dir, mode == "watched")
			set, ret := n.lib.EventSetCreate()
			if ret != gonvml.SUCCESS {
				t.Fatalf("EventSetCreate: %v", ret)
			}
			defer set.Free()
			if ret := n.lib.Devices[1].RegisterEvents(gonvml.EventTypeXidCriticalError, set); ret != gonvml.SUCCESS {
				t.Fatalf("RegisterEvents: %v", ret)
			}
			type result struct {
				data gonvml.EventData
				ret  gonvml.Return
			}
			got := make(chan result, 1)
			waiting := make(chan struct{})
			go func() {
				close(waiting)
				data, ret := set.Wait(uint32(time.Hour / time.Millisecond))
				got <- result{data, ret}
			}()
			<-waiting
			must(t, InjectXid(dir, 1, 79))
			select {
			case r := <-got:
				if r.ret != gonvml.SUCCESS || r.data.EventData != 79 || r.data.Device != n.lib.Devices[1] {
					t.Errorf("Wait = %+v, %v; want Xid 79 on GPU 1", r.data, r.ret)
				}
			case <-time.After(10 * time.Second):
				t.Fatal("Wait did not return the Xid injected while it waited")
			}
		})
	}
}
