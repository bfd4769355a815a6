package cli

import (
	"errors"
	"fmt"
	"math"
	"strconv"
	"strings"

	"github.com/spf13/cobra"

	"github.com/poolmanagerd/pool-managerd/drivers/gpu/sim"
)

func newSimCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "sim",
		Short: "Create and steer a simulated GPU node (for trying pool-managerd without GPUs)",
		Long: `sim manages a simulated GPU node kept in a directory. Use it with --gpus sim:DIR in
plan, apply, serve, status and inventory. Engines started on it (the bundled
stand-in engine) claim memory on their GPUs; these commands add what a test or a
person wants to see happen: another process holding memory, an Xid error, a lost GPU.`,
		Example: `  pool-managerd sim init /tmp/node                        # RTX 3090 24 GiB + RTX 3060 12 GiB
  pool-managerd sim init /tmp/node --gpu "NVIDIA A100=80Gi" --gpu "NVIDIA A100=80Gi"
  pool-managerd sim init /tmp/node --ram 64Gi                # with 64 GiB of host RAM
  pool-managerd sim hold /tmp/node --gpu 1 --size 2Gi --pid 4242
  pool-managerd sim xid /tmp/node --gpu 0 --xid 79
  pool-managerd sim lose /tmp/node --gpu 1`,
	}
	cmd.AddCommand(newSimInitCommand(), newSimHoldCommand(), newSimXidCommand(), newSimLoseCommand(true), newSimLoseCommand(false))
	for _, c := range cmd.Commands() {
		wrapArgs(c)
	}
	return cmd
}

func newSimInitCommand() *cobra.Command {
	var gpuSpecs []string
	var node string
	var reset, hostReal bool
	var ram string
	cmd := &cobra.Command{
		Use:   "init DIR",
		Short: "Create a simulated node (default: RTX 3090 24 GiB + RTX 3060 12 GiB)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			gpus := sim.DefaultGPUs()
			if len(gpuSpecs) > 0 {
				gpus = nil
				for _, s := range gpuSpecs {
					g, err := parseSimGPU(s)
					if err != nil {
						return err
					}
					gpus = append(gpus, g)
				}
			}
			if node != "" {
				if len(gpuSpecs) == 0 {
					gpus = sim.DefaultGPUs()
					for i := range gpus {
						gpus[i].UUID = ""
					}
				}
				gpus = sim.NodeUUIDs(node, gpus)
			}
			var ramBytes uint64
			if ram != "" {
				n, err := parseSize(ram)
				if err != nil {
					return usageError("--ram: %v", err)
				}
				ramBytes = n
			}
			init := sim.Init
			if reset {
				init = sim.Reset
			}
			if err := init(args[0], gpus); err != nil {
				if errors.Is(err, sim.ErrExists) {
					return fmt.Errorf("sim init: %w (use --reset to replace it)", err)
				}
				return fmt.Errorf("sim init: %w", err)
			}
			if hostReal {
				if err := sim.SetOptions(args[0], sim.Options{HostRealEngines: true}); err != nil {
					return fmt.Errorf("sim init: %w", err)
				}
			}
			if ramBytes > 0 {
				if err := sim.SetHostRAM(args[0], ramBytes); err != nil {
					return fmt.Errorf("sim init: %w", err)
				}
			}
			for i, g := range gpus {
				fmt.Fprintf(cmd.OutOrStdout(), "GPU %d: %s, %s\n", i, g.Name, cueBytes(g.MemoryBytes))
			}
			if ramBytes > 0 {
				fmt.Fprintf(cmd.OutOrStdout(), "host RAM: %s (each engine started here holds its pool's RAM need while it runs)\n", cueBytes(ramBytes))
			}
			if hostReal {
				fmt.Fprintln(cmd.OutOrStdout(), "hosts real engines: each engine pool-managerd starts here is given its pool's VRAM need on its GPUs while it runs")
			}
			return nil
		},
	}
	cmd.Flags().StringArrayVar(&gpuSpecs, "gpu", nil, `a GPU as "NAME=SIZE" (SIZE like 24Gi); repeat for each GPU, in index order`)
	cmd.Flags().StringVar(&node, "node", "", "the node's name: its GPUs' UUIDs are made from it, so each node has its own (default: from DIR's absolute path; without --gpu, the UUIDs of examples/mixed-24-12's gpu-01)")
	cmd.Flags().BoolVar(&reset, "reset", false, "replace an existing simulated node")
	cmd.Flags().StringVar(&ram, "ram", "", "the host's RAM (SIZE like 64Gi): plan and apply check each pool's RAM need against it, less what the node's running engines hold; without it, host RAM is not simulated and not checked")
	cmd.Flags().BoolVar(&hostReal, "host-real-engines", false, "let real engines (a CPU build of llama-server) run here: pool-managerd attributes each engine it starts its pool's VRAM need on its GPUs while it runs (stand-in engines keep their own claims)")
	return cmd
}

func parseSimGPU(s string) (sim.GPUSpec, error) {
	name, size, ok := strings.Cut(s, "=")
	if !ok || name == "" {
		return sim.GPUSpec{}, usageError("--gpu %q: want NAME=SIZE, like \"NVIDIA GeForce RTX 3090=24Gi\"", s)
	}
	n, err := parseSize(size)
	if err != nil {
		return sim.GPUSpec{}, usageError("--gpu %q: %v", s, err)
	}
	return sim.GPUSpec{Name: name, MemoryBytes: n}, nil
}

// parseSize reads a byte size with a binary multiplier: 24Gi, 512Mi, or bytes.
func parseSize(s string) (uint64, error) {
	mult := uint64(1)
	for suffix, m := range map[string]uint64{"Ki": 1 << 10, "Mi": 1 << 20, "Gi": 1 << 30, "Ti": 1 << 40} {
		if strings.HasSuffix(s, suffix) {
			mult, s = m, strings.TrimSuffix(s, suffix)
			break
		}
	}
	n, err := strconv.ParseUint(s, 10, 64)
	if err != nil || n == 0 {
		return 0, fmt.Errorf("size %q: want a positive number with Ki, Mi, Gi or Ti", s)
	}
	if n > math.MaxUint64/mult {
		return 0, fmt.Errorf("size %q is too large", s)
	}
	return n * mult, nil
}

func newSimHoldCommand() *cobra.Command {
	var index, pid int
	var size string
	cmd := &cobra.Command{
		Use:   "hold DIR",
		Short: "Make a process pool-managerd does not own hold memory on a GPU (--size 0 releases it)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if pid <= 0 {
				return usageError("--pid %d: want a positive process id", pid)
			}
			n := uint64(0)
			if size != "0" {
				var err error
				if n, err = parseSize(size); err != nil {
					return usageError("--size: %v", err)
				}
			}
			if err := sim.Foreign(args[0], index, pid, n); err != nil {
				return fmt.Errorf("sim hold: %w", err)
			}
			return nil
		},
	}
	cmd.Flags().IntVar(&index, "gpu", 0, "GPU index")
	cmd.Flags().IntVar(&pid, "pid", 4242, "the process id NVML reports for it")
	cmd.Flags().StringVar(&size, "size", "1Gi", "memory held, like 2Gi")
	return cmd
}

func newSimXidCommand() *cobra.Command {
	var index int
	var xid uint64
	cmd := &cobra.Command{
		Use:   "xid DIR",
		Short: "Raise an Xid error on a GPU (79: fallen off the bus; 13, 31, 43, 45, 68, 109 are application errors)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := sim.InjectXid(args[0], index, xid); err != nil {
				return fmt.Errorf("sim xid: %w", err)
			}
			return nil
		},
	}
	cmd.Flags().IntVar(&index, "gpu", 0, "GPU index")
	cmd.Flags().Uint64Var(&xid, "xid", 79, "Xid code")
	return cmd
}

func newSimLoseCommand(lose bool) *cobra.Command {
	var index int
	use, short, do := "lose DIR", "Make a GPU fall off the bus (NVML reports it lost)", sim.Lose
	if !lose {
		use, short, do = "restore DIR", "Bring a lost GPU back", sim.Restore
	}
	cmd := &cobra.Command{
		Use:   use,
		Short: short,
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := do(args[0], index); err != nil {
				return fmt.Errorf("sim %s: %w", strings.Fields(use)[0], err)
			}
			return nil
		},
	}
	cmd.Flags().IntVar(&index, "gpu", 0, "GPU index")
	return cmd
}
