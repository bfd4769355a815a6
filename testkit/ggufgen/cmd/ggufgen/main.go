// Command ggufgen writes a synthetic GGUF model file (package ggufgen): all
// weights zero, the shape of a real model, loadable by llama.cpp. The demo
// uses it to give a real llama-server a model to load.
//
//	ggufgen [-model tiny|7b|70b] [-quant F16|Q8_0|Q4_K_M] FILE
package main

import (
	"flag"
	"fmt"
	"os"

	"github.com/poolmanagerd/pool-managerd/testkit/ggufgen"
)

func main() {
	shape := flag.String("model", "tiny", "the model's shape: tiny, 7b or 70b")
	quant := flag.String("quant", "F16", "the weights' quantisation: F16, Q8_0 or Q4_K_M (llama.cpp's CPU build loads F16)")
	flag.Parse()
	if flag.NArg() != 1 {
		fmt.Fprintln(os.Stderr, "usage: ggufgen [-model tiny|7b|70b] [-quant F16|Q8_0|Q4_K_M] FILE")
		os.Exit(2)
	}
	var m ggufgen.Model
	switch *shape {
	case "tiny":
		m = ggufgen.Tiny()
	case "7b":
		m = ggufgen.Llama7B()
	case "70b":
		m = ggufgen.Llama70B()
	default:
		fmt.Fprintf(os.Stderr, "ggufgen: -model %q: want tiny, 7b or 70b\n", *shape)
		os.Exit(2)
	}
	m.Quant = ggufgen.Quant(*quant)
	size, err := ggufgen.Write(flag.Arg(0), m)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	fmt.Printf("%s: %s %s, %d bytes\n", flag.Arg(0), m.Name, m.Quant, size)
}
