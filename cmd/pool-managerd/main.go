// Command pool-managerd is a declarative reconciler for GPU inference pools.
// See `pool-managerd --help`.
package main

import (
	"os"

	"github.com/poolmanagerd/pool-managerd/internal/cli"
)

func main() { os.Exit(cli.Main(os.Args[1:], os.Stdout, os.Stderr)) }
