package cli

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/poolmanagerd/pool-managerd/internal/executor"
)

// status shows the model cache's size under the pools, and in its JSON;
// without a cache it shows nothing of one and creates none.
func TestStatusModelCache(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "models")
	if u, err := cacheUsage(dir); err != nil || u != nil {
		t.Fatalf("no cache: %+v, %v; want nil", u, err)
	}
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Fatalf("status created the cache: %v", err)
	}
	digest := strings.Repeat("a", 64)
	write := func(rel string, size int) {
		p := filepath.Join(dir, rel)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, make([]byte, size), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("sha256/"+digest+"/model.gguf", 3<<20)
	write("tmp/"+strings.Repeat("b", 64)+".partial", 1<<20)
	u, err := cacheUsage(dir)
	if err != nil || u == nil {
		t.Fatalf("cacheUsage: %+v, %v", u, err)
	}
	if u.Models != 1 || u.PartialDownloads != 1 || u.Bytes != 4<<20 {
		t.Errorf("usage %+v, want 1 model, 1 partial download, 4 MiB", *u)
	}
	var out bytes.Buffer
	if err := writeCacheUsage(&out, u); err != nil {
		t.Fatal(err)
	}
	if want := "Model cache " + u.Dir + ": 1 model, 4.0 MiB (1 download not finished)"; !strings.Contains(out.String(), want) {
		t.Errorf("line %q, want %q", out.String(), want)
	}
	data, err := json.Marshal(statusJSON{FormatVersion: StatusFormatVersion, ModelCache: u})
	if err != nil {
		t.Fatal(err)
	}
	var back struct {
		FormatVersion int                  `json:"formatVersion"`
		ModelCache    *executor.CacheUsage `json:"modelCache"`
	}
	if err := json.Unmarshal(data, &back); err != nil || back.FormatVersion != 1 || back.ModelCache == nil || back.ModelCache.Dir != u.Dir || back.ModelCache.Bytes != u.Bytes {
		t.Errorf("JSON %s: want formatVersion 1 and modelCache {dir, bytes, models}", data)
	}
	if !strings.Contains(string(data), `"modelCache":{"dir":`) || !strings.Contains(string(data), `"models":1`) {
		t.Errorf("JSON %s lacks modelCache's dir, bytes and models", data)
	}
}
