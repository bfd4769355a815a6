// Command fake-engine is pool-managerd's stand-in for llama.cpp's
// llama-server, vLLM and TGI on machines without GPUs: it behaves like the
// engine on its command line and over HTTP, holds memory on the simulated
// GPU node in POOL_MANAGERD_SIM_DIR, and fails on demand. See package
// testkit/fakeengine for the reference, or run fake-engine --help.
package main

import (
	"os"

	"github.com/poolmanagerd/pool-managerd/testkit/fakeengine"
)

func main() { os.Exit(fakeengine.Main(os.Args)) }
