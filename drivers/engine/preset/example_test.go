package preset_test

import (
	"fmt"

	"github.com/poolmanagerd/pool-managerd/drivers/engine/preset"
	"github.com/poolmanagerd/pool-managerd/schema"
)

func ExampleBuild() {
	p := &schema.Pool{
		ID: "llama70b", Node: "gpu-01", Engine: schema.EngineLlamaCpp,
		Model:   schema.Model{Path: "/models/llama-70b.gguf", Ctx: 8192},
		Devices: []int{0, 1},
		Split:   []float64{0.67, 0.33},
		Flags:   []string{"--metrics"},
	}
	gpus := []preset.GPU{{Index: 0, UUID: "GPU-8a1f"}, {Index: 1, UUID: "GPU-c47e"}}
	// /bin/sh stands in for llama-server, which this machine may not have.
	bins := preset.Binaries{LlamaCpp: "/bin/sh"}
	cmd, err := preset.Build(p, gpus, 8080, bins, "gpu-01/llama70b/1/4f2a", preset.Options{Environ: []string{"PATH=/usr/bin", "SECRET=x"}})
	if err != nil {
		fmt.Println(err)
		return
	}
	fmt.Println(cmd.Args)
	for _, kv := range cmd.Env {
		fmt.Println(kv)
	}
	fmt.Println(cmd.Health)
	// Output:
	// [--model /models/llama-70b.gguf --host 127.0.0.1 --port 8080 --ctx-size 8192 --n-gpu-layers 999 --fit off --split-mode layer --tensor-split 0.67,0.33 --metrics]
	// CUDA_DEVICE_ORDER=PCI_BUS_ID
	// CUDA_VISIBLE_DEVICES=GPU-8a1f,GPU-c47e
	// PATH=/usr/bin
	// POOL_MANAGERD_ENGINE=gpu-01/llama70b/1/4f2a
	// llama-server
}
