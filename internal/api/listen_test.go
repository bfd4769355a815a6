package api

import (
	"context"
	"errors"
	"io"
	"io/fs"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestCheckListen(t *testing.T) {
	for _, tc := range []struct {
		addr    string
		refused bool // without a token
	}{
		{"127.0.0.1:9200", false},
		{"127.0.0.1:0", false},
		{"127.1.2.3:9200", false},
		{"[::1]:9200", false},
		{"localhost:9200", false},
		{"LOCALHOST:0", false},
		{"[::ffff:127.0.0.1]:9200", false},
		{"0.0.0.0:9200", true},
		{"[::]:9200", true},
		{":9200", true},
		{":0", true},
		{"192.168.1.20:9200", true},
		{"10.0.0.5:0", true},
		{"[fe80::1%eth0]:9200", true},
		{"myhost.example:9200", true},
		{"128.0.0.1:9200", true},
	} {
		t.Run(tc.addr, func(t *testing.T) {
			err := CheckListen(tc.addr, "")
			if tc.refused {
				if !errors.Is(err, ErrTokenRequired) {
					t.Fatalf("CheckListen(%q, \"\") = %v, want an error wrapping ErrTokenRequired", tc.addr, err)
				}
				if !strings.Contains(err.Error(), TokenEnv) || !strings.Contains(err.Error(), tc.addr) {
					t.Errorf("error %q does not name %s and the address", err, TokenEnv)
				}
			} else if err != nil {
				t.Errorf("CheckListen(%q, \"\") = %v, want nil", tc.addr, err)
			}
			if err := CheckListen(tc.addr, "tok"); err != nil {
				t.Errorf("CheckListen(%q, token) = %v, want nil", tc.addr, err)
			}
		})
	}
	for _, bad := range []string{"", "127.0.0.1", "localhost", "::1", "[::1"} {
		err := CheckListen(bad, "tok")
		if err == nil || errors.Is(err, ErrTokenRequired) {
			t.Errorf("CheckListen(%q, token) = %v, want an address error", bad, err)
		}
	}
	if err := CheckListen(":9200", ""); !strings.Contains(err.Error(), "every interface") {
		t.Errorf("CheckListen(\":9200\") = %q, want it to say every interface", err)
	}
}

func TestListenRecordsAddress(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "state")
	ln, err := Listen(t.Context(), "127.0.0.1:0", dir)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	got, err := ReadAddr(dir)
	if err != nil {
		t.Fatal(err)
	}
	if got != ln.Addr().String() || strings.HasSuffix(got, ":0") {
		t.Errorf("ReadAddr = %q, want the listener's %q", got, ln.Addr())
	}
	entries, _ := os.ReadDir(dir)
	if len(entries) != 1 || entries[0].Name() != AddrFileName {
		t.Errorf("state directory holds %v, want only %s", entries, AddrFileName)
	}
	if info, err := os.Stat(filepath.Join(dir, AddrFileName)); err != nil || info.Mode().Perm() != 0o644 {
		t.Errorf("%s: %v, mode %v, want 0644", AddrFileName, err, info.Mode())
	}

	// The address is the server's: a request to it is answered.
	go func() { _ = http.Serve(ln, NewHandler(newFake(), nil, "")) }()
	resp, err := http.Get("http://" + got + "/healthz")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if string(body) != "ok" {
		t.Errorf("GET /healthz at the recorded address: %q", body)
	}

	// A second listener replaces the address.
	ln2, err := Listen(t.Context(), "127.0.0.1:0", dir)
	if err != nil {
		t.Fatal(err)
	}
	defer ln2.Close()
	if got, _ := ReadAddr(dir); got != ln2.Addr().String() {
		t.Errorf("after a second Listen, ReadAddr = %q, want %q", got, ln2.Addr())
	}

	if err := RemoveAddr(dir); err != nil {
		t.Fatal(err)
	}
	if err := RemoveAddr(dir); err != nil {
		t.Errorf("RemoveAddr twice: %v", err)
	}
	if _, err := ReadAddr(dir); !errors.Is(err, fs.ErrNotExist) || !strings.Contains(err.Error(), "serve running") {
		t.Errorf("ReadAddr after RemoveAddr = %v, want fs.ErrNotExist and a hint", err)
	}
}

func TestListenWildcardRecordsLoopback(t *testing.T) {
	dir := t.TempDir()
	ln, err := Listen(t.Context(), "0.0.0.0:0", dir)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	got, err := ReadAddr(dir)
	if err != nil {
		t.Fatal(err)
	}
	_, port, _ := net.SplitHostPort(ln.Addr().String())
	if want := net.JoinHostPort("127.0.0.1", port); got != want {
		t.Errorf("ReadAddr = %q, want %q", got, want)
	}
	conn, err := net.Dial("tcp", got)
	if err != nil {
		t.Fatalf("dialing the recorded address: %v", err)
	}
	conn.Close()
	v6 := &net.TCPAddr{IP: net.IPv6unspecified, Port: 80}
	for addr, want := range map[string]string{
		"[::]:0":    "[::1]:80",
		"0.0.0.0:0": "127.0.0.1:80",
		":0":        "127.0.0.1:80",
	} {
		if got := dialAddr(addr, v6); got != want {
			t.Errorf("dialAddr(%q, [::]:80) = %q, want %q", addr, got, want)
		}
	}
	if got := dialAddr(":0", &net.TCPAddr{IP: net.IPv4zero, Port: 80}); got != "127.0.0.1:80" {
		t.Errorf("dialAddr(0.0.0.0:80) = %q, want 127.0.0.1:80", got)
	}
	if got := dialAddr("[::1]:0", &net.TCPAddr{IP: net.IPv6loopback, Port: 80}); got != "[::1]:80" {
		t.Errorf("dialAddr([::1]:80) = %q, want [::1]:80", got)
	}
}

func TestListenErrors(t *testing.T) {
	// A port in use.
	dir := t.TempDir()
	ln, err := Listen(t.Context(), "127.0.0.1:0", dir)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	if _, err := Listen(t.Context(), ln.Addr().String(), dir); err == nil {
		t.Error("Listen on a port in use succeeded")
	}
	if got, _ := ReadAddr(dir); got != ln.Addr().String() {
		t.Errorf("a failed Listen changed the recorded address to %q", got)
	}

	// A state directory that cannot be written: the listener is closed again.
	file := filepath.Join(t.TempDir(), "file")
	if err := os.WriteFile(file, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := Listen(t.Context(), "127.0.0.1:0", filepath.Join(file, "state")); err == nil {
		t.Error("Listen with a state directory under a file succeeded")
	}
}

func TestReadAddrBad(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, AddrFileName), []byte("garbage\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := ReadAddr(dir); err == nil {
		t.Error("ReadAddr of garbage succeeded")
	}
}

func TestServe(t *testing.T) {
	ln, err := Listen(t.Context(), "127.0.0.1:0", t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- Serve(ctx, ln, NewHandler(newFake(), nil, testToken)) }()
	c := NewClient(ln.Addr().String(), testToken)
	if ready, err := c.Ready(t.Context()); err != nil || !ready {
		t.Fatalf("Ready = %v, %v", ready, err)
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("Serve after cancel = %v, want nil", err)
		}
	case <-time.After(ShutdownTimeout + 5*time.Second):
		t.Fatal("Serve did not return after its context ended")
	}
	if _, err := c.Ready(t.Context()); err == nil {
		t.Error("the server still answers after Serve returned")
	}

	// Serving a closed listener fails at once.
	ln2, _ := net.Listen("tcp", "127.0.0.1:0")
	ln2.Close()
	if err := Serve(t.Context(), ln2, NewHandler(newFake(), nil, "")); err == nil {
		t.Error("Serve on a closed listener returned nil")
	}
}
