package cli

import (
	"encoding/json"
	"fmt"
	"io"
	"regexp"
	"strings"

	"github.com/spf13/cobra"

	"github.com/poolmanagerd/pool-managerd/drivers/gpu"
	"github.com/poolmanagerd/pool-managerd/reconcile"
)

var nodeNamePattern = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$`)

func newInventoryCommand() *cobra.Command {
	var gpus, node, format string
	cmd := &cobra.Command{
		Use:   "inventory",
		Short: "Print this node's GPUs as CUE, ready to commit beside the pools",
		Long: `inventory reads the node's GPUs (from NVML, or a simulated node) and prints them as a
CUE node declaration. Commit it in the config repository (nodes/NAME.cue) so that
validate and plan can check device masks and split ratios without the hardware.

--format json prints the same GPUs for scripts, one JSON object:
  {"formatVersion": 1, "node", "source",
   "gpus": [{"index", "uuid", "model", "vram" (bytes), "lost" (only when true)}],
   "hostRAM": {"total", "available"} (bytes; absent on a simulated node made without --ram)}
A lost GPU is listed with "lost": true (the CUE output leaves it out). The CUE
output names the host's RAM in a comment: pools declare their own need (ram).

Exit codes: 0 printed, 1 the GPUs could not be read, 2 usage error.`,
		Example: `  pool-managerd inventory > config/nodes/$(hostname).cue
  pool-managerd inventory --gpus sim:/tmp/node --node gpu-01
  pool-managerd inventory --format json | jq '.gpus[].uuid'`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			src, err := parseGPUSource(gpus)
			if err != nil {
				return err
			}
			if format != "cue" && format != "json" {
				return usageError("--format %q: want cue or json", format)
			}
			if src.Kind == "declared" {
				return usageError("--gpus declared: inventory reads real or simulated GPUs (nvml or sim:DIR)")
			}
			if node == "" {
				node = defaultNode()
			}
			if !nodeNamePattern.MatchString(node) {
				return usageError("node name %q is not a lowercase DNS label; name the node with --node", node)
			}
			n, err := src.open(nil, false)
			if err != nil {
				return fmt.Errorf("inventory: %w", err)
			}
			defer n.Close()
			devices, err := n.Devices(cmd.Context())
			if err != nil {
				return fmt.Errorf("inventory: %w", err)
			}
			var host *reconcile.HostMemory
			if read := src.host(); read != nil {
				if host, err = read(cmd.Context()); err != nil {
					return fmt.Errorf("inventory: %w", err)
				}
			}
			if format == "json" {
				return writeInventoryJSON(cmd.OutOrStdout(), node, src.String(), devices, host)
			}
			return writeInventory(cmd.OutOrStdout(), node, src.String(), devices, host)
		},
	}
	cmd.Flags().StringVar(&gpus, "gpus", "nvml", "where the GPUs are read from: nvml or sim:DIR")
	cmd.Flags().StringVar(&node, "node", "", "the node's name in the config (default: the host name)")
	cmd.Flags().StringVar(&format, "format", "cue", "output format: cue (a node declaration) or json")
	return cmd
}

// writeInventory prints a node declaration in CUE.
func writeInventory(w io.Writer, node, source string, devices []gpu.Device, host *reconcile.HostMemory) error {
	var b strings.Builder
	fmt.Fprintf(&b, "package poolmanagerd\n\n// The GPUs of %s, as read by pool-managerd inventory (%s).\n", node, source)
	if host != nil {
		fmt.Fprintf(&b, "// Host RAM: %s, %s available now (a pool's need is its ram, or its engine's estimate).\n", reconcile.GiB(host.Total), reconcile.GiB(host.Available))
	}
	fmt.Fprintf(&b, "nodes: %q: gpus: [\n", node)
	for _, d := range devices {
		if d.Lost {
			fmt.Fprintf(&b, "\t// GPU %d is lost: the driver reports it off the bus; reset it and run inventory again.\n", d.Index)
			continue
		}
		fmt.Fprintf(&b, "\t{index: %d, uuid: %q, model: %q, vram: %s},\n", d.Index, d.UUID, d.Name, cueBytes(d.MemoryTotal))
	}
	b.WriteString("]\n")
	_, err := io.WriteString(w, b.String())
	return err
}

// InventoryFormatVersion is the version of inventory --format json.
const InventoryFormatVersion = 1

// inventoryJSON is inventory --format json.
type inventoryJSON struct {
	FormatVersion int            `json:"formatVersion"`
	Node          string         `json:"node"`
	Source        string         `json:"source"`
	GPUs          []inventoryGPU `json:"gpus"`
	// HostRAM is the host's memory; absent where it is not observed.
	HostRAM *inventoryHost `json:"hostRAM,omitempty"`
}

type inventoryHost struct {
	Total     uint64 `json:"total"`
	Available uint64 `json:"available"`
}

type inventoryGPU struct {
	Index int    `json:"index"`
	UUID  string `json:"uuid,omitempty"`
	Model string `json:"model,omitempty"`
	VRAM  uint64 `json:"vram"`
	Lost  bool   `json:"lost,omitempty"`
}

// writeInventoryJSON prints the node's GPUs as one JSON object.
func writeInventoryJSON(w io.Writer, node, source string, devices []gpu.Device, host *reconcile.HostMemory) error {
	doc := inventoryJSON{FormatVersion: InventoryFormatVersion, Node: node, Source: source, GPUs: []inventoryGPU{}}
	if host != nil {
		doc.HostRAM = &inventoryHost{Total: host.Total, Available: host.Available}
	}
	for _, d := range devices {
		doc.GPUs = append(doc.GPUs, inventoryGPU{Index: d.Index, UUID: d.UUID, Model: d.Name, VRAM: d.MemoryTotal, Lost: d.Lost})
	}
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(doc)
}

// cueBytes writes a size with CUE's largest exact multiplier.
func cueBytes(n uint64) string {
	for _, m := range []struct {
		unit string
		size uint64
	}{{"Ti", 1 << 40}, {"Gi", 1 << 30}, {"Mi", 1 << 20}, {"Ki", 1 << 10}} {
		if n >= m.size && n%m.size == 0 {
			return fmt.Sprintf("%d%s", n/m.size, m.unit)
		}
	}
	return fmt.Sprint(n)
}
