// Command genconfig writes a synthetic, valid config repository for benchmarks:
//
//	go run ./tools/genconfig -pools 10000 -files 1000 -out bin/bench/10000
package main

import (
	"flag"
	"fmt"
	"os"

	"github.com/poolmanagerd/pool-managerd/testkit/benchgen"
)

func main() {
	pools := flag.Int("pools", 100, "number of pools")
	files := flag.Int("files", 10, "number of files under pools/ (nodes/ gets one file per 10 nodes, one node per 10 pools)")
	out := flag.String("out", "", "directory to write (created if needed)")
	flag.Parse()
	if *out == "" || flag.NArg() > 0 {
		fmt.Fprintln(os.Stderr, "usage: genconfig -pools N -files M -out DIR")
		os.Exit(2)
	}
	if err := benchgen.Write(*out, *pools, *files); err != nil {
		fmt.Fprintln(os.Stderr, "genconfig:", err)
		os.Exit(1)
	}
}
