package cli

import (
	"bytes"
	"encoding/json"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	gguf "github.com/gpustack/gguf-parser-go"

	"github.com/poolmanagerd/pool-managerd/drivers/engine/vram"
	"github.com/poolmanagerd/pool-managerd/reconcile"
	"github.com/poolmanagerd/pool-managerd/testkit/ggufgen"
	"github.com/poolmanagerd/pool-managerd/testkit/modelserver"
)

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
	srv := modelserver.Start(t, nil)
	for _, name := range []string{"big.gguf", "small.gguf"} {
		if err := srv.PutFile("/"+name, filepath.Join(models, name)); err != nil {
			t.Fatal(err)
		}
	}

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

	t.Logf("requests %+v; big.gguf: %d bytes sent, up to byte %d, header ends at %d", srv.Requests(), srv.SentOf("/big.gguf"), srv.EndOf("/big.gguf"), headerEnd)
	bigGETs := srv.GETsOf("/big.gguf")
	if len(bigGETs) == 0 {
		t.Error("big.gguf: no GET; want its header read by ranges")
	}
	for _, r := range bigGETs {
		if !strings.HasPrefix(r.Range, "bytes=") || r.Status != http.StatusPartialContent {
			t.Errorf("big.gguf: a GET of Range %q answered %d; want its header read by ranges", r.Range, r.Status)
		}
	}
	if limit := headerEnd + vram.DefaultRemoteBufferSize; srv.EndOf("/big.gguf") > limit {
		t.Errorf("big.gguf: bytes up to %d were read; the header ends at %d (+ one %d-byte chunk)", srv.EndOf("/big.gguf"), headerEnd, vram.DefaultRemoteBufferSize)
	}
	for _, r := range srv.Requests() {
		if r.Authorization != "Bearer hf_plan_secret" {
			t.Errorf("request %s %s %q got Authorization %q; want the token of --model-token-file", r.Method, r.Path, r.Range, r.Authorization)
		}
	}
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
	asked := len(srv.Requests())
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
	if reqs := srv.Requests(); len(reqs) != asked {
		t.Errorf("plan --offline asked the source: %+v", reqs[asked:])
	}
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
	srv := modelserver.Start(t, nil)
	if err := srv.PutFile("/tiny.gguf", filepath.Join(models, "tiny.gguf")); err != nil {
		t.Fatal(err)
	}
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
			before := len(srv.Requests())
			code, stdout, stderr := runMain(append([]string{"plan", config, "--gpus", "declared"}, tc.args...)...)
			if code != tc.wantCode || !strings.Contains(stderr, tc.wantErr) {
				t.Errorf("plan exited %d, want %d with %q in stderr\nstdout:\n%s\nstderr:\n%s", code, tc.wantCode, tc.wantErr, stdout, stderr)
			}
			if strings.Contains(stdout+stderr, "from-env") || strings.Contains(stdout+stderr, "from-file") {
				t.Error("the token is in plan's output")
			}
			reqs := srv.Requests()[before:]
			if asked := len(reqs) > 0; asked != tc.asks {
				t.Errorf("the source got %+v; want it asked: %v", reqs, tc.asks)
			}
			for _, r := range reqs {
				if r.Authorization != tc.wantAuth {
					t.Errorf("request %s %s (range %q) got Authorization %q; want %q", r.Method, r.Path, r.Range, r.Authorization, tc.wantAuth)
				}
			}
		})
	}
}

// TestPlanUnreachableSourceWarns: a source that cannot be reached during a
// plan is a warning on the change, not a blocked pool.
func TestPlanUnreachableSourceWarns(t *testing.T) {
	down := modelserver.New(nil)
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
