package cli

import (
	"fmt"

	"github.com/poolmanagerd/pool-managerd/drivers/model/cache"
	"github.com/poolmanagerd/pool-managerd/drivers/model/fetch"
)

// fetcher opens the model cache (--model-cache, default STATE_DIR/models)
// and returns the fetcher that downloads into it, with the fetch flags. The
// flags are checked first: their errors are usage errors (exit 2), the
// token file's included. The token is read again for every download (a
// rotated file is picked up) and never logged.
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
	token := fetch.TokenFromFileOrEnv(m.tokenFile, ModelTokenEnv)
	return fetch.New(c, fetch.Options{Token: token, Parallel: m.parallel, StallTimeout: m.stall, Offline: m.offline}), nil
}
