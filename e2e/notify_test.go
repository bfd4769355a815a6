//go:build linux

package e2e

import (
	"net"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestServeNotifiesSystemd runs serve as systemd's Type=notify would: with
// NOTIFY_SOCKET and WATCHDOG_USEC set. It must send READY=1 after the first
// reconcile, a STATUS line counting the Ready pools, WATCHDOG=1 while its loop
// answers, and STOPPING=1 on SIGTERM.
func TestServeNotifiesSystemd(t *testing.T) {
	t.Parallel()
	w := newWorkspace(t)
	w.writeConfig(pool{ID: "one"})
	sock := filepath.Join(w.dir, "notify.sock")
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: sock, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	messages := make(chan string, 256)
	go func() {
		buf := make([]byte, 4096)
		for {
			n, err := conn.Read(buf)
			if err != nil {
				close(messages)
				return
			}
			for _, line := range strings.Split(strings.TrimSpace(string(buf[:n])), "\n") {
				messages <- line
			}
		}
	}()
	args := append([]string{"serve", "--config", w.config, "--listen", "127.0.0.1:0"}, w.nodeFlags()...)
	args = append(args, engineFlags()...)
	d := w.start([]string{"NOTIFY_SOCKET=" + sock, "WATCHDOG_USEC=400000"}, args...)
	defer func() {
		if !d.exited() {
			_ = d.cmd.Process.Kill()
			d.wait(t)
		}
		w.run(nil, "stop", "--all", "--state-dir", w.state)
	}()

	// expect waits for a message; what came before it is kept in seen.
	var seen []string
	expect := func(want string) {
		t.Helper()
		timeout := time.After(20 * time.Second) // a failure guard only
		for {
			select {
			case m, ok := <-messages:
				if !ok {
					t.Fatalf("the socket closed before %q; got %q", want, seen)
				}
				seen = append(seen, m)
				if m == want {
					return
				}
			case <-timeout:
				t.Fatalf("no %q from the daemon; got %q\n%s", want, seen, d.stderr.String())
			}
		}
	}
	expect("READY=1")
	expect("STATUS=1/1 pools Ready")
	expect("WATCHDOG=1")
	expect("WATCHDOG=1") // again: it keeps answering
	if err := d.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	expect("STOPPING=1")
	if r := d.wait(t); r.code != 0 {
		t.Fatalf("serve exited with %d after SIGTERM\n%s", r.code, r)
	}
	for i, m := range seen {
		if m == "READY=1" {
			for _, before := range seen[:i] {
				if strings.HasPrefix(before, "WATCHDOG") {
					t.Errorf("WATCHDOG=1 came before READY=1: %q", seen)
				}
			}
			break
		}
	}
}
