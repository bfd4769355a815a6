package features

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/cucumber/godog"

	"github.com/poolmanagerd/pool-managerd/drivers/engine/proc"
	"github.com/poolmanagerd/pool-managerd/drivers/model/cache"
	"github.com/poolmanagerd/pool-managerd/internal/api"
	"github.com/poolmanagerd/pool-managerd/reconcile"
	"github.com/poolmanagerd/pool-managerd/testkit/ggufgen"
	"github.com/poolmanagerd/pool-managerd/testkit/modelserver"
)

// modelState is what the model steps keep of a scenario: the model server
// standing in for the remote, what it serves and the holds on it.
type modelState struct {
	models *modelserver.Server
	// served is the size of each file served, by path; digest the sha256
	// of the last model served from memory (MODELDIGEST).
	served map[string]int64
	digest string
	holds  map[string]*modelserver.Hold
}

func (w *world) registerModels(sc *godog.ScenarioContext) {
	sc.Step(`^a model server serving a small GGUF model at "([^"]*)"$`, w.serveTinyModel)
	sc.Step(`^the model server serves a GGUF model shaped like Llama 70B at "([^"]*)"$`, w.serveBigModel)
	sc.Step(`^the model server holds "([^"]*)" after half of its bytes$`, w.holdModel)
	sc.Step(`^the model server has sent half of "([^"]*)"$`, w.heldModelSent)
	sc.Step(`^the model server releases "([^"]*)"$`, w.releaseModel)
	sc.Step(`^the model server saw (\d+) GETs? of "([^"]*)"$`, w.modelGETs)
	sc.Step(`^the model server's last GET of "([^"]*)" asked for the range from half of its bytes$`, w.resumedFromHalf)
	sc.Step(`^the model server sent only the header of "([^"]*)"$`, w.onlyHeaderSent)
	sc.Step(`^the daemon shows pool "([^"]*)" Fetching with half of "([^"]*)" done$`, w.fetchingHalf)
	sc.Step(`^the daemon shows pool "([^"]*)" (\w+) with a last error of class "([^"]*)" and a hint$`, w.fetchFailed)
	sc.Step(`^no engine runs for pool "([^"]*)"$`, w.noEngineRuns)
	sc.Step(`^the model cache holds a verified copy of "([^"]*)" and no partial download$`, w.cachedVerified)
	sc.Step(`^the model cache holds nothing of the digest "([0-9a-f]{64})"$`, w.notCached)
	sc.Step(`^the engine of pool "([^"]*)" runs on the cached copy of "([^"]*)"$`, w.engineOnCachedCopy)
	sc.Step(`^the plan fetches "([^"]*)" with its size$`, w.planFetches)
	sc.After(func(ctx context.Context, _ *godog.Scenario, err error) (context.Context, error) {
		if w.models != nil {
			w.models.Close()
		}
		return ctx, nil
	})
}

// expandModels replaces MODELSERVER and MODELDIGEST in a config file.
func (w *world) expandModels(s string) string {
	if w.models == nil {
		return s
	}
	return strings.NewReplacer("MODELSERVER", w.models.URL, "MODELDIGEST", w.digest).Replace(s)
}

func (w *world) modelServer() *modelserver.Server {
	if w.models == nil {
		w.models = modelserver.New(nil)
		w.served = map[string]int64{}
		w.holds = map[string]*modelserver.Hold{}
	}
	return w.models
}

// serveTinyModel serves a small GGUF (ggufgen.Tiny): the stand-in engine
// checks the magic of the file it is given.
func (w *world) serveTinyModel(path string) error {
	name := filepath.Join(w.workspace, "tiny.gguf")
	if _, err := ggufgen.Write(name, ggufgen.Tiny()); err != nil {
		return err
	}
	data, err := os.ReadFile(name)
	if err != nil {
		return err
	}
	w.modelServer().Put(path, data)
	w.served[path] = int64(len(data))
	w.digest = modelserver.SHA256(data)
	return nil
}

// serveBigModel serves a sparse GGUF of a 70B model's size (tens of GB,
// nothing of it but its header on disk).
func (w *world) serveBigModel(path string) error {
	name := filepath.Join(w.workspace, "big.gguf")
	size, err := ggufgen.Write(name, ggufgen.Llama70B())
	if err != nil {
		return err
	}
	if err := w.modelServer().PutFile(path, name); err != nil {
		return err
	}
	w.served[path] = size
	return nil
}

func (w *world) holdModel(path string) error {
	size, ok := w.served[path]
	if !ok {
		return fmt.Errorf("the model server serves nothing at %s", path)
	}
	w.holds[path] = w.models.Hold(path, size/2)
	return nil
}

func (w *world) hold(path string) (*modelserver.Hold, error) {
	h := w.holds[path]
	if h == nil {
		return nil, fmt.Errorf("no hold on %s", path)
	}
	return h, nil
}

func (w *world) heldModelSent(path string) error {
	h, err := w.hold(path)
	if err != nil {
		return err
	}
	select {
	case <-h.Sent():
		return nil
	case <-time.After(waitLimit):
		return fmt.Errorf("the model server did not send half of %s within %v; requests: %+v%s", path, waitLimit, w.models.Requests(), w.daemonLogs())
	}
}

func (w *world) releaseModel(path string) error {
	h, err := w.hold(path)
	if err != nil {
		return err
	}
	h.Release()
	return nil
}

func (w *world) modelGETs(n int, path string) error {
	if got := w.modelServer().GETsOf(path); len(got) != n {
		return fmt.Errorf("the model server saw %d GETs of %s, want %d: %+v", len(got), path, n, got)
	}
	return nil
}

func (w *world) resumedFromHalf(path string) error {
	gets := w.modelServer().GETsOf(path)
	if len(gets) < 2 {
		return fmt.Errorf("%d GETs of %s, want a first and a resumed one: %+v", len(gets), path, gets)
	}
	last, size := gets[len(gets)-1], w.served[path]
	if want := fmt.Sprintf("bytes=%d-", size/2); last.Range != want || last.Sent != size-size/2 {
		return fmt.Errorf("the last GET of %s: %+v; want Range %s and the other half sent", path, last, want)
	}
	return nil
}

// onlyHeaderSent: every byte the server sent of path lies within the
// first 16 MiB (the header and the reader's chunks), of a file far bigger.
func (w *world) onlyHeaderSent(path string) error {
	const limit = 16 << 20
	size := w.served[path]
	if size < 100*limit {
		return fmt.Errorf("%s is %d bytes: too small to show that only its header was read", path, size)
	}
	reqs := w.modelServer().Requests()
	var ranged int
	for _, r := range reqs {
		if r.Path != path || r.Method != http.MethodGet {
			continue
		}
		start, end, ok := modelserver.ParseRange(r.Range, size)
		if !ok || end > limit || start+r.Sent > limit {
			return fmt.Errorf("a GET of %s beyond its header: %+v", path, r)
		}
		ranged++
	}
	if ranged == 0 {
		return fmt.Errorf("no range request of %s: %+v", path, reqs)
	}
	if sent := w.models.SentOf(path); sent > limit {
		return fmt.Errorf("%d bytes of %s sent", sent, path)
	}
	return nil
}

func (w *world) fetchingHalf(pool, path string) error {
	size := w.served[path]
	return w.awaitPool(applyNode, pool, "Fetching with half done", func(p api.Pool) error {
		if p.Phase != "Fetching" || p.Fetch == nil || p.Fetch.BytesDone != size/2 || p.Fetch.BytesTotal != size {
			return fmt.Errorf("phase %s, fetch %+v; want %d of %d bytes done", p.Phase, p.Fetch, size/2, size)
		}
		if p.Ready || p.PID != 0 {
			return fmt.Errorf("ready %v, pid %d while Fetching", p.Ready, p.PID)
		}
		return nil
	})
}

func (w *world) fetchFailed(pool, phase, class string) error {
	return w.awaitPool(applyNode, pool, phase+" with "+class, func(p api.Pool) error {
		if string(p.Phase) != phase || p.Ready || p.PID != 0 {
			return fmt.Errorf("phase %s, ready %v, pid %d", p.Phase, p.Ready, p.PID)
		}
		if e := p.LastError; e == nil || e.Class != class || e.Message == "" || e.Hint == "" {
			return fmt.Errorf("last error %+v; want class %s with a message and a hint", e, class)
		}
		return nil
	})
}

func (w *world) noEngineRuns(pool string) error {
	p, err := w.apiPool(applyNode, pool)
	if err != nil {
		return err
	}
	if p.PID != 0 {
		return fmt.Errorf("pool %s shows engine pid %d", pool, p.PID)
	}
	return w.neverSpawned(pool)
}

func (w *world) modelCache() (*cache.Cache, error) {
	return cache.Open(filepath.Join(w.stateDir(), "models"), cache.Options{})
}

func (w *world) cachedPath(path string) (string, error) {
	c, err := w.modelCache()
	if err != nil {
		return "", err
	}
	p, verified, err := c.Lookup(w.digest, filepath.Base(path))
	if err != nil || p == "" || !verified {
		return "", fmt.Errorf("the cache's entry of %s: %q verified %v, %v", w.digest, p, verified, err)
	}
	return p, nil
}

func (w *world) cachedVerified(path string) error {
	p, err := w.cachedPath(path)
	if err != nil {
		return err
	}
	data, err := os.ReadFile(p)
	if err != nil {
		return err
	}
	if modelserver.SHA256(data) != w.digest {
		return fmt.Errorf("%s does not hold the model", p)
	}
	c, err := w.modelCache()
	if err != nil {
		return err
	}
	if _, err := os.Stat(c.PartialPath(w.digest)); !os.IsNotExist(err) {
		return fmt.Errorf("a partial download is left: %v", err)
	}
	return nil
}

func (w *world) notCached(digest string) error {
	c, err := w.modelCache()
	if err != nil {
		return err
	}
	if p, _, _ := c.Lookup(digest, "m.gguf"); p != "" {
		return fmt.Errorf("the cache holds %s at %s", digest, p)
	}
	if fi, err := os.Stat(c.PartialPath(digest)); err == nil {
		return fmt.Errorf("a partial download of %s is left: %d bytes", digest, fi.Size())
	}
	return nil
}

func (w *world) engineOnCachedCopy(pool, path string) error {
	p, err := w.cachedPath(path)
	if err != nil {
		return err
	}
	a, err := w.apiPool(applyNode, pool)
	if err != nil {
		return err
	}
	argv, err := proc.Cmdline(a.PID)
	if err != nil {
		return fmt.Errorf("pool %s: engine pid %d: %w", pool, a.PID, err)
	}
	if line := strings.Join(argv, " "); !strings.Contains(line, "--model "+p) {
		return fmt.Errorf("pool %s's engine does not run on %s: %s", pool, p, line)
	}
	return nil
}

// planFetches: the plan's text shows "fetch SIZE from SOURCE" for the
// model at path, its size as the plan prints sizes (reconcile.ByteSize).
func (w *world) planFetches(path string) error {
	size := w.served[path]
	want := fmt.Sprintf("fetch %s from %s%s", reconcile.ByteSize(int64(size)), w.models.URL, path)
	if !strings.Contains(w.stdout, want) {
		return fmt.Errorf("stdout does not say %q:\n%s", want, w.stdout)
	}
	return nil
}
