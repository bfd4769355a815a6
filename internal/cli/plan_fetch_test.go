package cli

import (
	"bytes"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"

	gguf "github.com/gpustack/gguf-parser-go"

	"github.com/poolmanagerd/pool-managerd/drivers/engine/vram"
	"github.com/poolmanagerd/pool-managerd/reconcile"
	"github.com/poolmanagerd/pool-managerd/testkit/ggufgen"
)

// ggufServer serves GGUF files from a directory with range support and
// records what it sent: the requests, and one past the last byte of each
// file it wrote.
type ggufServer struct {
	*httptest.Server
	mu       sync.Mutex
	requests []string         // METHOD PATH RANGE
	auth     []string         // the Authorization of each request
	maxEnd   map[string]int64 // by path
	sent     map[string]int64 // body bytes, by path
	ranged   map[string]bool  // every GET of the path asked for a range
	gets     map[string]int   // GETs, by path
	dir      string
}

type countingWriter struct {
	http.ResponseWriter
	n int64
}

func (w *countingWriter) Write(p []byte) (int, error) {
	n, err := w.ResponseWriter.Write(p)
	w.n += int64(n)
	return n, err
}

func newGGUFServer(t *testing.T, dir string) *ggufServer {
	t.Helper()
	s := &ggufServer{dir: dir, maxEnd: map[string]int64{}, sent: map[string]int64{}, ranged: map[string]bool{}, gets: map[string]int{}}
	s.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		// Recorded as it arrives: before the client has its answer.
		rng := r.Header.Get("Range")
		s.mu.Lock()
		s.requests = append(s.requests, r.Method+" "+r.URL.Path+" "+rng)
		s.auth = append(s.auth, r.Header.Get("Authorization"))
		s.mu.Unlock()
		f, err := os.Open(filepath.Join(s.dir, filepath.Base(r.URL.Path)))
		if err != nil {
			http.NotFound(w, r)
			return
		}
		defer f.Close()
		fi, err := f.Stat()
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		cw := &countingWriter{ResponseWriter: w}
		http.ServeContent(cw, r, fi.Name(), fi.ModTime(), f)
		s.mu.Lock()
		defer s.mu.Unlock()
		if r.Method != http.MethodGet {
			return
		}
		if s.gets[r.URL.Path] == 0 {
			s.ranged[r.URL.Path] = true
		}
		s.gets[r.URL.Path]++
		s.ranged[r.URL.Path] = s.ranged[r.URL.Path] && strings.HasPrefix(rng, "bytes=")
		start := int64(0)
		if a, _, ok := strings.Cut(strings.TrimPrefix(rng, "bytes="), "-"); ok {
			start, _ = strconv.ParseInt(a, 10, 64)
		}
		s.sent[r.URL.Path] += cw.n
		s.maxEnd[r.URL.Path] = max(s.maxEnd[r.URL.Path], start+cw.n)
	}))
	t.Cleanup(s.Close)
	return s
}

const (
	digestA = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
	digestB = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb"
)

// runMain runs the command line and returns its exit code and output.
func runMain(args ...string) (int, string, string) {
	var stdout, stderr bytes.Buffer
	code := Main(args, &stdout, &stderr)
	return code, stdout.String(), stderr.String()
}

// TestPlanDeclaredBlocksARemoteModelFromItsHeader: a PR check (plan --gpus
// declared) of a GGUF source too big for its GPU fails from the file's
// header alone, read with range requests; a source that fits shows its
// download with the size the source tells.
func TestPlanDeclaredBlocksARemoteModelFromItsHeader(t *testing.T) {
	models := t.TempDir()
	bigSize, err := ggufgen.Write(filepath.Join(models, "big.gguf"), ggufgen.Llama70B())
	if err != nil {
		t.Fatal(err)
	}
	smallSize, err := ggufgen.Write(filepath.Join(models, "small.gguf"), ggufgen.Tiny())
	if err != nil {
		t.Fatal(err)
	}
	header, err := gguf.ParseGGUFFile(filepath.Join(models, "big.gguf"), gguf.SkipLargeMetadata())
	if err != nil {
		t.Fatal(err)
	}
	headerEnd := header.TensorDataStartOffset
	// The file is far bigger than what a remote estimate reads in one go.
	if bigSize < 1000*vram.DefaultRemoteBufferSize {
		t.Fatalf("big.gguf is %d bytes: not well over the %d-byte chunks", bigSize, vram.DefaultRemoteBufferSize)
	}
	srv := newGGUFServer(t, models)

	config := t.TempDir()
	writeConfig(t, config, `package poolmanagerd

nodes: "gpu-01": gpus: [
	{index: 0, vram: 24Gi, model: "NVIDIA GeForce RTX 3090"},
	{index: 1, vram: 12Gi, model: "NVIDIA GeForce RTX 3060"},
]
pools: "big": {
	node:    "gpu-01"
	engine:  "llamacpp"
	model: {source: "`+srv.URL+`/big.gguf", sha256: "`+digestA+`", ctx: 8192}
	devices: [0]
}
pools: "small": {
	node:    "gpu-01"
	engine:  "llamacpp"
	model: {source: "`+srv.URL+`/small.gguf", sha256: "`+digestB+`", ctx: 2048}
	devices: [1]
}
`)
	tokenFile := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(tokenFile, []byte("hf_plan_secret\n"), 0o600); err != nil {
		t.Fatal(err)
	}

	code, stdout, stderr := runMain("plan", config, "--gpus", "declared", "--model-token-file", tokenFile, "--model-token-hosts", "127.0.0.1")
	if code != 1 {
		t.Errorf("plan exited %d, want 1 (a blocked pool fails a PR check)\nstdout:\n%s\nstderr:\n%s", code, stdout, stderr)
	}
	for _, want := range []string{
		"! blocked  big  llamacpp  GPU 0",
		"insufficient VRAM on GPU 0 (NVIDIA GeForce RTX 3090, 24.0 GiB): needs ",
		"for " + srv.URL + "/big.gguf at ctx 8192",
		"+ create   small  llamacpp  GPU 1",
		"fetch " + reconcile.ByteSize(smallSize) + " from " + srv.URL + "/small.gguf",
	} {
		if !strings.Contains(stdout, want) {
			t.Errorf("the plan lacks %q:\n%s", want, stdout)
		}
	}
	if want := "plan: 1 pool blocked on the declared GPUs: big on gpu-01"; !strings.Contains(stderr, want) {
		t.Errorf("stderr %q lacks %q", stderr, want)
	}

	srv.mu.Lock()
	t.Logf("requests %q; big.gguf: %d bytes sent, up to byte %d, header ends at %d", srv.requests, srv.sent["/big.gguf"], srv.maxEnd["/big.gguf"], headerEnd)
	if srv.gets["/big.gguf"] == 0 || !srv.ranged["/big.gguf"] {
		t.Errorf("big.gguf: %d GETs, all with a byte range: %v; want its header read by ranges", srv.gets["/big.gguf"], srv.ranged["/big.gguf"])
	}
	if limit := headerEnd + vram.DefaultRemoteBufferSize; srv.maxEnd["/big.gguf"] > limit {
		t.Errorf("big.gguf: bytes up to %d were read; the header ends at %d (+ one %d-byte chunk)", srv.maxEnd["/big.gguf"], headerEnd, vram.DefaultRemoteBufferSize)
	}
	for i, a := range srv.auth {
		if a != "Bearer hf_plan_secret" {
			t.Errorf("request %q got Authorization %q; want the token of --model-token-file", srv.requests[i], a)
		}
	}
	srv.mu.Unlock()
	if strings.Contains(stdout+stderr, "hf_plan_secret") {
		t.Error("the token is in plan's output")
	}

	// --detailed-exitcode: 3, as for any blocked pool.
	if code, stdout, _ := runMain("plan", config, "--gpus", "declared", "--detailed-exitcode"); code != 3 {
		t.Errorf("plan --detailed-exitcode exited %d, want 3:\n%s", code, stdout)
	}

	// The JSON plan carries the fetch, and the blocker's class.
	code, stdout, _ = runMain("plan", config, "--gpus", "declared", "--format", "json")
	if code != 1 {
		t.Errorf("plan --format json exited %d, want 1:\n%s", code, stdout)
	}
	plan, err := reconcile.ReadJSON(strings.NewReader(stdout))
	if err != nil {
		t.Fatalf("%v:\n%s", err, stdout)
	}
	byPool := map[string]reconcile.Change{}
	for _, c := range plan.Changes {
		byPool[c.Pool] = c
	}
	if b := byPool["big"].Blocker; b == nil || b.Class != reconcile.ClassInsufficientVRAM {
		t.Errorf("big's blocker %+v; want %s", b, reconcile.ClassInsufficientVRAM)
	}
	want := reconcile.ModelFetch{Source: srv.URL + "/small.gguf", Digest: digestB, Bytes: smallSize}
	if f := byPool["small"].Fetch; f == nil || *f != want {
		t.Errorf("small's fetch %+v; want %+v", f, want)
	}
	var raw map[string]any
	if err := json.Unmarshal([]byte(stdout), &raw); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(stdout, `"fetch": {`) || !strings.Contains(stdout, `"bytes": `+strconv.FormatInt(smallSize, 10)) {
		t.Errorf("the JSON plan has no fetch object with bytes:\n%s", stdout)
	}

	// --offline asks no source: nothing is estimated, nothing blocked, and
	// the plan says that apply and serve would fail the pools.
	srv.mu.Lock()
	asked := len(srv.requests)
	srv.mu.Unlock()
	code, stdout, stderr = runMain("plan", config, "--gpus", "declared", "--offline")
	if code != 0 {
		t.Errorf("plan --offline exited %d, want 0:\n%s\n%s", code, stdout, stderr)
	}
	for _, want := range []string{
		"+ create   big  llamacpp  GPU 0",
		"VRAM need not checked here: the model is not in the model cache (offline: its source is not asked)",
		"offline: the model is not in the model cache, so apply and serve fail this pool (model_not_cached)",
	} {
		if !strings.Contains(stdout, want) {
			t.Errorf("the offline plan lacks %q:\n%s", want, stdout)
		}
	}
	if strings.Contains(stdout, "fetch ") {
		t.Errorf("the offline plan fetches:\n%s", stdout)
	}
	srv.mu.Lock()
	if len(srv.requests) != asked {
		t.Errorf("plan --offline asked the source: %q", srv.requests[asked:])
	}
	srv.mu.Unlock()
}

// TestPlanSendsTheTokenOnlyToListedHosts: a pull request that points a
// pool's model.source at a host of its choosing gets nothing from a CI that
// holds a token: plan sends it only to the hosts of --model-token-hosts
// (default huggingface.co), and the token file wins over the environment.
func TestPlanSendsTheTokenOnlyToListedHosts(t *testing.T) {
	models := t.TempDir()
	if _, err := ggufgen.Write(filepath.Join(models, "tiny.gguf"), ggufgen.Tiny()); err != nil {
		t.Fatal(err)
	}
	srv := newGGUFServer(t, models)
	config := t.TempDir()
	writeConfig(t, config, `package poolmanagerd

nodes: "gpu-01": gpus: [{index: 0, vram: 24Gi, model: "NVIDIA GeForce RTX 3090"}]
pools: "chat": {
	node:    "gpu-01"
	engine:  "llamacpp"
	model: {source: "`+srv.URL+`/tiny.gguf", sha256: "`+digestA+`", ctx: 2048}
	devices: [0]
}
`)
	tokenFile := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(tokenFile, []byte("from-file\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		args []string
		env  map[string]string
		// wantCode is plan's exit code; wantAuth the Authorization of
		// every request the source gets.
		wantCode int
		wantAuth string
		// wantErr is part of stderr; asks: the source is asked.
		wantErr string
		asks    bool
	}{{
		name: "default hosts: an unlisted source gets no token",
		args: []string{"--model-token-file", tokenFile},
		env:  map[string]string{ModelTokenEnv: "from-env"},
		asks: true,
	}, {
		name:     "a listed host gets the token of the environment",
		args:     []string{"--model-token-hosts", "huggingface.co,127.0.0.1"},
		env:      map[string]string{ModelTokenEnv: "from-env"},
		asks:     true,
		wantAuth: "Bearer from-env",
	}, {
		name:     "hosts from the environment; the file wins over the token's variable",
		args:     []string{"--model-token-file", tokenFile},
		env:      map[string]string{ModelTokenEnv: "from-env", "POOL_MANAGERD_MODEL_TOKEN_HOSTS": "127.0.0.1"},
		asks:     true,
		wantAuth: "Bearer from-file",
	}, {
		name: "another name for the host is another host",
		args: []string{"--model-token-hosts", "localhost"},
		env:  map[string]string{ModelTokenEnv: "from-env"},
		asks: true,
	}, {
		name:     "a URL is not a host",
		args:     []string{"--model-token-hosts", "https://huggingface.co"},
		env:      map[string]string{ModelTokenEnv: "from-env"},
		wantCode: ExitUsage,
		wantErr:  "--model-token-hosts: \"https://huggingface.co\": a host name, not a URL",
	}} {
		t.Run(tc.name, func(t *testing.T) {
			for k, v := range tc.env {
				t.Setenv(k, v)
			}
			srv.mu.Lock()
			before := len(srv.requests)
			srv.mu.Unlock()
			code, stdout, stderr := runMain(append([]string{"plan", config, "--gpus", "declared"}, tc.args...)...)
			if code != tc.wantCode || !strings.Contains(stderr, tc.wantErr) {
				t.Errorf("plan exited %d, want %d with %q in stderr\nstdout:\n%s\nstderr:\n%s", code, tc.wantCode, tc.wantErr, stdout, stderr)
			}
			if strings.Contains(stdout+stderr, "from-env") || strings.Contains(stdout+stderr, "from-file") {
				t.Error("the token is in plan's output")
			}
			srv.mu.Lock()
			defer srv.mu.Unlock()
			if asked := len(srv.requests) > before; asked != tc.asks {
				t.Errorf("the source got %q; want it asked: %v", srv.requests[before:], tc.asks)
			}
			for i, a := range srv.auth[before:] {
				if a != tc.wantAuth {
					t.Errorf("request %q got Authorization %q; want %q", srv.requests[before+i], a, tc.wantAuth)
				}
			}
		})
	}
}

// TestPlanUnreachableSourceWarns: a source that cannot be reached during a
// plan is a warning on the change, not a blocked pool.
func TestPlanUnreachableSourceWarns(t *testing.T) {
	down := httptest.NewServer(http.NotFoundHandler())
	url := down.URL + "/gone.gguf"
	down.Close()
	config := t.TempDir()
	writeConfig(t, config, `package poolmanagerd

nodes: "gpu-01": gpus: [{index: 0, vram: 24Gi, model: "NVIDIA GeForce RTX 3090"}]
pools: "chat": {
	node:    "gpu-01"
	engine:  "llamacpp"
	model: {source: "`+url+`", sha256: "`+digestA+`"}
	devices: [0]
}
`)
	code, stdout, stderr := runMain("plan", config, "--gpus", "declared")
	if code != 0 {
		t.Errorf("plan exited %d, want 0:\n%s\n%s", code, stdout, stderr)
	}
	for _, want := range []string{
		"+ create   chat  llamacpp  GPU 0",
		"warning: the source cannot be reached: ",
		"VRAM need not checked here: the source could not be asked",
		"fetch from " + url + " (size unknown)",
	} {
		if !strings.Contains(stdout, want) {
			t.Errorf("the plan lacks %q:\n%s", want, stdout)
		}
	}
}

func writeConfig(t *testing.T, dir, cue string) {
	t.Helper()
	if err := os.WriteFile(filepath.Join(dir, "pools.cue"), []byte(cue), 0o644); err != nil {
		t.Fatal(err)
	}
}
