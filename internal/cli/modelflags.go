package cli

import (
	"path/filepath"
	"time"

	"github.com/spf13/cobra"

	"github.com/poolmanagerd/pool-managerd/drivers/model/fetch"
	"github.com/poolmanagerd/pool-managerd/internal/observe"
)

// ModelTokenEnv holds the token sent to model sources (model.source), as an
// alternative to --model-token-file (the file wins when both are given). It
// is sent only to the hosts of --model-token-hosts.
const ModelTokenEnv = "POOL_MANAGERD_MODEL_TOKEN"

// modelFlags say where fetched models (model.source) are kept and how they
// are fetched. plan, apply and serve share them; which command registers
// which flag is said by the register methods.
type modelFlags struct {
	// cache is the model cache directory; "" means STATE_DIR/models.
	cache string
	// offline: use only models already in the cache, with a verified digest.
	offline bool
	// tokenFile holds the token for private sources (or ModelTokenEnv).
	tokenFile string
	// tokenHosts are the hosts the token may be sent to
	// (fetch.TokenAllowed).
	tokenHosts []string
	// maxSize caps the cache ("" or "0": no cap beyond the disk's free space).
	maxSize string
	// parallel bounds the downloads that run at once.
	parallel int
	// stall is how long a download may receive nothing before it fails.
	stall time.Duration
	// grace is how long a model no pool uses stays in the cache.
	grace time.Duration
}

// registerLookup registers the flags every command that looks at models has
// (plan, apply, serve).
func (m *modelFlags) registerLookup(cmd *cobra.Command) {
	fl := cmd.Flags()
	fl.StringVar(&m.cache, "model-cache", "", "the model cache, where model.source models are fetched to (default STATE_DIR/models)")
	fl.BoolVar(&m.offline, "offline", false, "use only models already in the model cache (with a verified digest): nothing is fetched or looked up")
	fl.StringVar(&m.tokenFile, "model-token-file", "", "file holding the token for private model sources (or set the token itself in "+ModelTokenEnv+"; the file wins); sent only to the hosts of --model-token-hosts")
	fl.StringSliceVar(&m.tokenHosts, "model-token-hosts", []string{fetch.DefaultTokenHost}, "the hosts the model token is sent to, comma-separated: HOST (any port) or HOST:PORT, matched exactly (a subdomain is another host: list cdn.example.com itself); "+
		"only over https (http only to a listed loopback host: localhost, 127.0.0.1, ::1), never after a redirect that changes the scheme, host or port; a source on any other host gets no token")
}

// registerFetch registers the flags of the commands that fetch (apply, serve).
func (m *modelFlags) registerFetch(cmd *cobra.Command) {
	fl := cmd.Flags()
	fl.StringVar(&m.maxSize, "model-cache-max", "0", "cap on the model cache's size (e.g. 500Gi); 0: the disk's free space is the only limit")
	fl.IntVar(&m.parallel, "fetch-parallel", 2, "how many model downloads run at once")
	fl.DurationVar(&m.stall, "fetch-stall-timeout", 60*time.Second, "a download that receives less than 64 KiB in this long (nothing, or a trickle) fails (fetch_stalled) and is retried with backoff")
}

// registerGC registers the cache hygiene flag (serve).
func (m *modelFlags) registerGC(cmd *cobra.Command) {
	cmd.Flags().DurationVar(&m.grace, "cache-grace", 24*time.Hour, "how long a model that no pool of the node uses any longer stays in the model cache")
}

// cacheDir returns the model cache directory for a state directory.
func (m *modelFlags) cacheDir(stateDir string) string {
	if m.cache != "" {
		return m.cache
	}
	return filepath.Join(stateDir, "models")
}

// cachedLookup is where apply and serve look fetched models up: the model
// cache and --offline, never a source (they fetch rather than ask).
func (m *modelFlags) cachedLookup(stateDir string) observe.ModelLookup {
	return observe.ModelLookup{Cache: m.cacheDir(stateDir), Offline: m.offline}
}

// maxBytes parses --model-cache-max: 0 when there is no cap.
func (m *modelFlags) maxBytes() (uint64, error) {
	if m.maxSize == "" || m.maxSize == "0" {
		return 0, nil
	}
	n, err := parseSize(m.maxSize)
	if err != nil {
		return 0, usageError("--model-cache-max: %v", err)
	}
	return n, nil
}

// token checks --model-token-hosts and returns the token for private
// sources (fetch.ReadToken: --model-token-file's content when given, else
// ModelTokenEnv, else ""). Its errors are usage errors. The token is never
// logged.
func (m *modelFlags) token() (string, error) {
	if err := fetch.CheckTokenHosts(m.tokenHosts); err != nil {
		return "", usageError("--model-token-hosts: %v", err)
	}
	t, err := fetch.ReadToken(m.tokenFile, ModelTokenEnv)
	if err != nil {
		return "", usageError("--model-token-file: %v", err)
	}
	return t, nil
}

// auth is the token read once (see token) with the hosts it may go to.
func (m *modelFlags) auth(token string) fetch.Auth {
	return fetch.Auth{Token: fetch.StaticToken(token), Hosts: m.tokenHosts}
}

// check validates the fetch flags: usage errors (exit 2).
func (m *modelFlags) check() error {
	if m.parallel < 1 {
		return usageError("--fetch-parallel %d: must be 1 or more", m.parallel)
	}
	if m.stall <= 0 {
		return usageError("--fetch-stall-timeout %v: must be more than 0", m.stall)
	}
	if _, err := m.maxBytes(); err != nil {
		return err
	}
	return nil
}
