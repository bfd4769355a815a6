package sim

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
)

// The files of a simulated node's host memory:
//
//	host.json        the host's RAM in bytes (SetHostRAM; sim init --ram)
//	ram/<pid>.json   RAM an engine process holds (HoldRAM), counted only
//	                 while the process is alive
//
// A node without host.json does not simulate host memory: HostMemory says so,
// and pool-managerd then checks no pool's RAM need on it.
const (
	hostFile = "host.json"
	ramDir   = "ram"
)

type hostDesc struct {
	RAM uint64 `json:"ram"`
}

type ramHold struct {
	PID       int    `json:"pid"`
	StartTime uint64 `json:"startTime"`
	Bytes     uint64 `json:"bytes"`
}

// SetHostRAM gives the simulated node's host ram bytes of memory.
func SetHostRAM(dir string, ram uint64) error {
	if ram == 0 {
		return errors.New("simulated node: host RAM must be more than 0")
	}
	if _, err := readNode(dir); err != nil {
		return err
	}
	return writeJSON(dir, hostFile, hostDesc{RAM: ram})
}

// HoldRAM records that engine process pid holds bytes of the host's RAM
// while it lives (pool-managerd writes it when it starts an engine on the
// node: the pool's RAM need). 0 releases it.
func HoldRAM(dir string, pid int, bytes uint64) error {
	if pid <= 0 {
		return fmt.Errorf("simulated node: RAM held by invalid pid %d", pid)
	}
	if _, err := readNode(dir); err != nil {
		return err
	}
	name := filepath.Join(ramDir, strconv.Itoa(pid)+".json")
	if bytes == 0 {
		if err := os.Remove(filepath.Join(dir, name)); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("simulated node: %w", err)
		}
		return nil
	}
	start, ok := procStart(pid)
	if !ok {
		return nil // gone already: it holds nothing
	}
	return writeJSON(dir, name, ramHold{PID: pid, StartTime: start, Bytes: bytes})
}

// HostMemory is the simulated host's memory: its total (0 and ok false when
// the node does not simulate host memory), what is available (the total
// less what live engine processes hold) and what each holds, by pid.
func HostMemory(dir string) (total, available uint64, held map[int]uint64, ok bool, err error) {
	if _, err := readNode(dir); err != nil {
		return 0, 0, nil, false, err
	}
	data, err := os.ReadFile(filepath.Join(dir, hostFile))
	if errors.Is(err, fs.ErrNotExist) {
		return 0, 0, nil, false, nil
	} else if err != nil {
		return 0, 0, nil, false, fmt.Errorf("simulated node: %w", err)
	}
	var h hostDesc
	if err := strictUnmarshal(data, &h); err != nil {
		return 0, 0, nil, false, fmt.Errorf("simulated node: %s is corrupt: %w", hostFile, err)
	}
	names, err := listJSON(dir, ramDir)
	if err != nil {
		return 0, 0, nil, false, err
	}
	held = map[int]uint64{}
	var sum uint64
	for _, name := range names {
		data, err := os.ReadFile(filepath.Join(dir, ramDir, name))
		if errors.Is(err, fs.ErrNotExist) {
			continue // released meanwhile
		} else if err != nil {
			return 0, 0, nil, false, fmt.Errorf("simulated node: %w", err)
		}
		var r ramHold
		if err := strictUnmarshal(data, &r); err != nil {
			return 0, 0, nil, false, fmt.Errorf("simulated node: %s/%s is corrupt: %w", ramDir, name, err)
		}
		if !alive(r.PID, r.StartTime) {
			continue
		}
		held[r.PID] += r.Bytes
		sum += r.Bytes
	}
	return h.RAM, h.RAM - min(h.RAM, sum), held, true, nil
}
