// Command pool-managerd is a declarative reconciler for GPU inference pools.
// See `pool-managerd --help`.
package main

import (
	"os"

	"github.com/poolmanagerd/pool-managerd/internal/cli"
	"github.com/poolmanagerd/pool-managerd/internal/gitsource"
)

func main() {
	// serve --git with a local path fetches in-process, without git-upload-pack.
	gitsource.InstallFileTransport()
	os.Exit(cli.Main(os.Args[1:], os.Stdout, os.Stderr))
}
