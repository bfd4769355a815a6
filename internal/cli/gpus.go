package cli

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"github.com/poolmanagerd/pool-managerd/drivers/gpu"
	"github.com/poolmanagerd/pool-managerd/drivers/gpu/declared"
	"github.com/poolmanagerd/pool-managerd/drivers/gpu/nvml"
	"github.com/poolmanagerd/pool-managerd/drivers/gpu/sim"
	"github.com/poolmanagerd/pool-managerd/internal/observe"
	"github.com/poolmanagerd/pool-managerd/schema"
)

// gpuSource is a parsed --gpus flag: nvml, sim:DIR or declared.
type gpuSource struct {
	Kind string // "nvml", "sim" or "declared"
	Dir  string // for sim
	// auto: the default simulated node, created with the demo's GPUs when missing.
	auto bool
}

func (g gpuSource) String() string {
	if g.Kind == "sim" {
		return "sim:" + g.Dir
	}
	return g.Kind
}

const gpusFlagHelp = "where the GPUs are read from: nvml (the NVIDIA driver), sim:DIR (a simulated node, see pool-managerd sim; plain sim: a default one with an RTX 3090 and an RTX 3060) or declared (the config's declared inventory, nothing running)"

func parseGPUSource(s string) (gpuSource, error) {
	switch {
	case s == "nvml" || s == "declared":
		return gpuSource{Kind: s}, nil
	case s == "sim":
		return gpuSource{Kind: "sim", Dir: DefaultSimDir(), auto: true}, nil
	case strings.HasPrefix(s, "sim:") && len(s) > len("sim:"):
		return gpuSource{Kind: "sim", Dir: strings.TrimPrefix(s, "sim:")}, nil
	}
	return gpuSource{}, usageError("--gpus %q: want nvml, sim, sim:DIR or declared", s)
}

// DefaultSimDir is the simulated node that plain --gpus sim uses, created on
// first use with the demo's GPUs (an RTX 3090 and an RTX 3060).
func DefaultSimDir() string {
	return filepath.Join(os.TempDir(), fmt.Sprintf("pool-managerd-sim-%d", os.Getuid()))
}

// open opens the GPUs of a node; declared needs the node's declared
// inventory. declaredOK says whether the command takes --gpus declared, for the hint.
func (g gpuSource) open(node *schema.Node, declaredOK bool) (gpu.Node, error) {
	switch g.Kind {
	case "sim":
		if g.auto {
			if err := sim.Init(g.Dir, sim.DefaultGPUs()); err != nil && !errors.Is(err, sim.ErrExists) {
				return nil, fmt.Errorf("create the default simulated node: %w", err)
			}
		}
		n, err := sim.Open(g.Dir)
		if err != nil {
			return nil, fmt.Errorf("open simulated node: %w", err)
		}
		return n, nil
	case "declared":
		return declared.New(node), nil
	default:
		n, err := nvml.Open()
		if errors.Is(err, gpu.ErrNoDriver) && declaredOK {
			return nil, fmt.Errorf("%w\nhint: on a machine without NVIDIA GPUs use --gpus declared (the config's declared GPUs, as a PR check does) or --gpus sim:DIR (a simulated node)", err)
		}
		if errors.Is(err, gpu.ErrNoDriver) {
			return nil, fmt.Errorf("%w\nhint: on a machine without NVIDIA GPUs use --gpus sim:DIR (a simulated node, see pool-managerd sim)", err)
		}
		return n, err
	}
}

// host is where the node's host memory is read from: /proc/meminfo for
// nvml, the simulated node's own figures for sim (none when it was made
// without --ram), none for declared (nothing runs here).
func (g gpuSource) host() observe.HostFunc {
	switch g.Kind {
	case "sim":
		return observe.SimHost(g.Dir)
	case "declared":
		return nil
	}
	return observe.RealHost
}

// chooseNode settles which node a command acts for. On the simulated node,
// with --node not given, a host that is not a node of a one-node config acts
// as that node (trying a config out); otherwise an undeclared node is
// warned of, since none of the config's pools run there.
func chooseNode(w io.Writer, cfg *schema.Desired, configDir string, src gpuSource, node string, given bool) string {
	if cfg.Nodes[node] != nil || src.Kind == "declared" {
		return node // declared mode refuses an undeclared node itself
	}
	if src.Kind == "sim" && !given && len(cfg.Nodes) == 1 {
		only := cfg.SortedNodeNames()[0]
		fmt.Fprintf(w, "note: this host (%s) is not a node of the config; using its only node, %s, on the simulated GPUs (--node to choose)\n", node, only)
		return only
	}
	fmt.Fprintf(w, "warning: node %q is not declared in %s, so none of its pools run here (declared: %s); name the node with --node\n", node, configDir, strings.Join(cfg.SortedNodeNames(), ", "))
	return node
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
