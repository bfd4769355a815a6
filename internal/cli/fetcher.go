package cli

import (
	"fmt"

	"github.com/poolmanagerd/pool-managerd/drivers/model/cache"
	"github.com/poolmanagerd/pool-managerd/drivers/model/fetch"
)

// fetcher opens the model cache (--model-cache, default STATE_DIR/models)
// and returns the fetcher that downloads into it, with the fetch flags. The
// flags are checked first: their errors are usage errors (exit 2), the
// token file's and --model-token-hosts' included. The token is read again
// for every request that may carry it (a rotated file is picked up), goes
// only to the hosts of --model-token-hosts, and is never logged.
func (m *modelFlags) fetcher(stateDir string) (*fetch.Fetcher, error) {
	if err := m.check(); err != nil {
		return nil, err
	}
	if _, err := m.token(); err != nil {
		return nil, err
	}
	maxSize, err := m.maxBytes()
	if err != nil {
		return nil, err
	}
	c, err := cache.Open(m.cacheDir(stateDir), cache.Options{MaxSize: int64(maxSize)})
	if err != nil {
		return nil, fmt.Errorf("model cache: %w", err)
	}
	auth := fetch.Auth{Token: fetch.TokenFromFileOrEnv(m.tokenFile, ModelTokenEnv), Hosts: m.tokenHosts}
	return fetch.New(c, fetch.Options{Auth: auth, Parallel: m.parallel, StallTimeout: m.stall, Offline: m.offline}), nil
}
