package cli

import (
	"errors"
	"fmt"
	"os"
	"strings"

	"github.com/poolmanagerd/pool-managerd/drivers/gpu"
	"github.com/poolmanagerd/pool-managerd/drivers/gpu/declared"
	"github.com/poolmanagerd/pool-managerd/drivers/gpu/nvml"
	"github.com/poolmanagerd/pool-managerd/drivers/gpu/sim"
	"github.com/poolmanagerd/pool-managerd/schema"
)

// gpuSource is a parsed --gpus flag: nvml, sim:DIR or declared.
type gpuSource struct {
	Kind string // "nvml", "sim" or "declared"
	Dir  string // for sim
}

func (g gpuSource) String() string {
	if g.Kind == "sim" {
		return "sim:" + g.Dir
	}
	return g.Kind
}

const gpusFlagHelp = "where the GPUs are read from: nvml (the NVIDIA driver), sim:DIR (a simulated node, see pool-managerd sim) or declared (the config's declared inventory, nothing running)"

func parseGPUSource(s string) (gpuSource, error) {
	switch {
	case s == "nvml" || s == "declared":
		return gpuSource{Kind: s}, nil
	case strings.HasPrefix(s, "sim:") && len(s) > len("sim:"):
		return gpuSource{Kind: "sim", Dir: strings.TrimPrefix(s, "sim:")}, nil
	}
	return gpuSource{}, usageError("--gpus %q: want nvml, sim:DIR or declared", s)
}

// open opens the GPUs of a node; declared needs the node's declared inventory.
func (g gpuSource) open(node *schema.Node) (gpu.Node, error) {
	switch g.Kind {
	case "sim":
		n, err := sim.Open(g.Dir)
		if err != nil {
			return nil, fmt.Errorf("open simulated node: %w", err)
		}
		return n, nil
	case "declared":
		return declared.New(node), nil
	default:
		n, err := nvml.Open()
		if errors.Is(err, gpu.ErrNoDriver) {
			return nil, fmt.Errorf("%w\nhint: on a machine without NVIDIA GPUs use --gpus declared (the config's declared GPUs, as a PR check does) or --gpus sim:DIR (a simulated node)", err)
		}
		return n, err
	}
}

// defaultNode is the node a command acts for when --node is not given: the host name.
func defaultNode() string {
	name, err := os.Hostname()
	if err != nil {
		return ""
	}
	name, _, _ = strings.Cut(name, ".")
	return strings.ToLower(name)
}
