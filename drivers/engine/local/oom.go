package local

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// OOMSource counts the kernel's OOM kills in a process's cgroup: an engine
// that dies of SIGKILL while its cgroup's count grew was killed by the OOM
// killer (class oom_killed), not by a person.
type OOMSource interface {
	// Cgroup names the cgroup of a running process.
	Cgroup(pid int) (string, error)
	// OOMKills returns the cgroup's count of OOM kills so far.
	OOMKills(cgroup string) (uint64, error)
}

// CgroupOOM reads cgroup v2: /proc/PID/cgroup for a process's cgroup, and
// the oom_kill line of the cgroup's memory.events. Where either cannot be
// read (cgroup v1, no memory controller), an engine's OOM kill is reported
// as a kill by a signal.
type CgroupOOM struct {
	// Proc and Root are /proc and /sys/fs/cgroup; empty means those.
	Proc, Root string
}

// Cgroup reads the process's cgroup v2 path ("0::/system.slice/x.service").
func (c CgroupOOM) Cgroup(pid int) (string, error) {
	data, err := os.ReadFile(filepath.Join(or(c.Proc, "/proc"), strconv.Itoa(pid), "cgroup"))
	if err != nil {
		return "", err
	}
	for _, line := range strings.Split(string(data), "\n") {
		if path, ok := strings.CutPrefix(line, "0::"); ok {
			return path, nil
		}
	}
	return "", fmt.Errorf("pid %d: no cgroup v2 entry", pid)
}

// OOMKills reads the oom_kill count of the cgroup's memory.events.
func (c CgroupOOM) OOMKills(cgroup string) (uint64, error) {
	data, err := os.ReadFile(filepath.Join(or(c.Root, "/sys/fs/cgroup"), cgroup, "memory.events"))
	if err != nil {
		return 0, err
	}
	return parseOOMKills(data)
}

// parseOOMKills finds the oom_kill counter in a memory.events file.
func parseOOMKills(data []byte) (uint64, error) {
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		name, value, ok := strings.Cut(sc.Text(), " ")
		if ok && name == "oom_kill" {
			return strconv.ParseUint(strings.TrimSpace(value), 10, 64)
		}
	}
	return 0, fmt.Errorf("memory.events has no oom_kill line")
}

func or(s, def string) string {
	if s == "" {
		return def
	}
	return s
}

func (d *Driver) oomSource() OOMSource {
	if d.OOM != nil {
		return d.OOM
	}
	return CgroupOOM{}
}

// watchOOM notes the engine's cgroup and its OOM kill count now, to compare
// with when it exits. Unreadable: OOM kills are not told apart.
func (p *process) watchOOM(src OOMSource) {
	cg, err := src.Cgroup(p.h.PID())
	if err != nil {
		return
	}
	n, err := src.OOMKills(cg)
	if err != nil {
		return
	}
	p.oom, p.cgroup, p.oomKills = src, cg, n
}
