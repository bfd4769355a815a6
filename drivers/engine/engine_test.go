package engine

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

func TestMarkerRoundTrip(t *testing.T) {
	for _, m := range []Marker{
		{Node: "gpu-01", Pool: "chat", Generation: 3, SpecHash: "sha256:abc"},
		{Node: "n", Pool: "p", Generation: 0, SpecHash: "sha256:" + strings.Repeat("f", 64)},
		{Node: "gpu-02", Pool: "llama-70b", Generation: 1 << 40, SpecHash: "sha256:x"},
		// The spec hash is the rest of the value, slashes and all.
		{Node: "gpu-01", Pool: "chat", Generation: 7, SpecHash: "sha256:a/b"},
	} {
		s := m.String()
		got, err := ParseMarker(s)
		if err != nil {
			t.Errorf("ParseMarker(%q): %v", s, err)
			continue
		}
		if got != m {
			t.Errorf("ParseMarker(%q) = %+v, want %+v", s, got, m)
		}
	}
	if got, want := (Marker{Node: "gpu-01", Pool: "chat", Generation: 3, SpecHash: "sha256:x"}).String(), "gpu-01/chat/3/sha256:x"; got != want {
		t.Errorf("String() = %q, want %q", got, want)
	}
}

func TestParseMarker(t *testing.T) {
	for _, tc := range []struct {
		in      string
		want    Marker
		wantErr string
	}{
		{in: "gpu-01/chat/3/sha256:x", want: Marker{Node: "gpu-01", Pool: "chat", Generation: 3, SpecHash: "sha256:x"}},
		{in: "gpu-01/chat/-1/sha256:x", want: Marker{Node: "gpu-01", Pool: "chat", Generation: -1, SpecHash: "sha256:x"}},
		{in: "", wantErr: `engine marker "": want node/pool/generation/spechash`},
		{in: "gpu-01", wantErr: `engine marker "gpu-01": want node/pool/generation/spechash`},
		{in: "gpu-01/chat/3", wantErr: `engine marker "gpu-01/chat/3": want node/pool/generation/spechash`},
		{in: "gpu-01/chat/three/sha256:x", wantErr: `engine marker "gpu-01/chat/three/sha256:x": generation: strconv.ParseInt: parsing "three": invalid syntax`},
		{in: "gpu-01/chat//sha256:x", wantErr: `engine marker "gpu-01/chat//sha256:x": generation: `},
		{in: "gpu-01/chat/99999999999999999999/sha256:x", wantErr: "value out of range"},
		{in: "gpu-01/chat/1.5/sha256:x", wantErr: "invalid syntax"},
	} {
		got, err := ParseMarker(tc.in)
		if tc.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("ParseMarker(%q) = %+v, %v; want an error containing %q", tc.in, got, err, tc.wantErr)
			}
			if got != (Marker{}) {
				t.Errorf("ParseMarker(%q) with an error returned %+v, want the zero Marker", tc.in, got)
			}
			continue
		}
		if err != nil || got != tc.want {
			t.Errorf("ParseMarker(%q) = %+v, %v; want %+v", tc.in, got, err, tc.want)
		}
	}
}

func TestPortOf(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want int
	}{
		{nil, 0},
		{[]string{"llama-server", "--model", "/m.gguf"}, 0},
		{[]string{"llama-server", "--port", "8080"}, 8080},
		{[]string{"llama-server", "--host", "127.0.0.1", "--port", "8081", "--ctx-size", "4096"}, 8081},
		{[]string{"vllm", "serve", "--port=8082"}, 8082},
		{[]string{"text-generation-launcher", "--port", "8083", "--port", "9"}, 8083},
		{[]string{"llama-server", "--port=8084", "--port", "9"}, 8084},
		{[]string{"llama-server", "--port"}, 0},
		{[]string{"llama-server", "--port", "http"}, 0},
		{[]string{"llama-server", "--port="}, 0},
		{[]string{"llama-server", "-port", "8085"}, 0},
		{[]string{"llama-server", "--ports", "8086"}, 0},
	} {
		if got := PortOf(tc.args); got != tc.want {
			t.Errorf("PortOf(%q) = %d, want %d", tc.args, got, tc.want)
		}
	}
}

// serverPort starts an HTTP server on 127.0.0.1 that answers /health with
// status and body, and returns its port.
func serverPort(t *testing.T, status int, body string) int {
	t.Helper()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/health" || r.Method != http.MethodGet {
			http.Error(w, "wrong request "+r.Method+" "+r.URL.Path, http.StatusNotFound)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(status)
		fmt.Fprint(w, body)
	}))
	t.Cleanup(srv.Close)
	return srv.Listener.Addr().(*net.TCPAddr).Port
}

// closedPort returns a port on 127.0.0.1 that nothing listens on.
func closedPort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	return port
}

func TestProbeHealth(t *testing.T) {
	const loading = `{"error":{"message":"Loading model","type":"unavailable_error","code":503}}`
	ok := serverPort(t, http.StatusOK, `{"status":"ok"}`)
	okEmpty := serverPort(t, http.StatusOK, "")
	llamaLoading := serverPort(t, http.StatusServiceUnavailable, loading)
	unavailable := serverPort(t, http.StatusServiceUnavailable, `{"error":{"message":"no slot available","type":"unavailable_error","code":503}}`)
	unavailableEmpty := serverPort(t, http.StatusServiceUnavailable, "")
	internal := serverPort(t, http.StatusInternalServerError, loading)
	notFound := serverPort(t, http.StatusNotFound, "")
	closed := closedPort(t)

	for _, tc := range []struct {
		name        string
		port        int
		readyBefore bool
		want        Health
	}{
		{"200", ok, false, HealthOK},
		{"200 after ready", ok, true, HealthOK},
		{"200 without body", okEmpty, false, HealthOK},
		{"503 loading model", llamaLoading, false, HealthLoading},
		{"503 loading model after ready", llamaLoading, true, HealthLoading},
		{"503 other", unavailable, false, HealthFailing},
		{"503 empty before ready: SGLang warming up", unavailableEmpty, false, HealthLoading},
		{"503 empty after ready: SGLang exiting, vLLM's engine dead", unavailableEmpty, true, HealthFailing},
		{"500 with the loading body", internal, false, HealthFailing},
		{"404", notFound, false, HealthFailing},
		{"refused, never ready", closed, false, HealthLoading},
		{"refused after ready", closed, true, HealthFailing},
		{"no port", 0, false, ""},
		{"no port after ready", 0, true, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := ProbeHealth(context.Background(), tc.port, tc.readyBefore); got != tc.want {
				t.Errorf("ProbeHealth(port %d, readyBefore %v) = %q, want %q", tc.port, tc.readyBefore, got, tc.want)
			}
		})
	}
}

func TestProbeHealthCanceled(t *testing.T) {
	port := serverPort(t, http.StatusOK, "")
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if got := ProbeHealth(ctx, port, true); got != HealthFailing {
		t.Errorf("ProbeHealth with a canceled context = %q, want %q", got, HealthFailing)
	}
}
