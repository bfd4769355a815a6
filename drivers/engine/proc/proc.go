//go:build linux

// Package proc reads the identity of live processes from /proc.
//
// A pid alone is not an identity: the kernel reuses pids. A process is
// identified by its pid together with its start time (StartTicks, field 22 of
// /proc/PID/stat), which does not change for the life of the process and
// differs between two processes that had the same pid.
package proc

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"slices"
	"strconv"
	"strings"
	"syscall"
)

// ErrNotFound is wrapped by the errors of this package when the process does
// not exist (or exited while it was being read).
var ErrNotFound = errors.New("no such process")

// root is the mount point of procfs.
const root = "/proc"

// Info is the part of /proc/PID/stat that identifies a process and places it
// in the process tree.
type Info struct {
	PID     int
	PPID    int
	PGID    int
	Session int
	// State is the process state letter: 'R' running, 'S' sleeping, 'D' disk
	// sleep, 'T' stopped, 'Z' zombie, 'X' dead, ...
	State byte
	// StartTicks is the time the process started after boot, in clock ticks
	// (field 22 of /proc/PID/stat). With PID it identifies the process.
	StartTicks uint64
	// Comm is the command name (at most 15 bytes, chosen by the process).
	Comm string
}

// Stat reads /proc/PID/stat.
func Stat(pid int) (Info, error) {
	data, err := readFile(pid, "stat")
	if err != nil {
		return Info{}, err
	}
	info, err := parseStat(data)
	if err != nil {
		return Info{}, fmt.Errorf("process %d: %w", pid, err)
	}
	return info, nil
}

// Alive reports whether the process pid exists, has started at startTicks (so
// it is the same process, not a later one that reuses the pid), and is neither
// a zombie nor dead.
func Alive(pid int, startTicks uint64) bool {
	info, err := Stat(pid)
	if err != nil {
		return false
	}
	return info.StartTicks == startTicks && info.State != 'Z' && info.State != 'X'
}

// Cmdline returns the command line of the process (/proc/PID/cmdline). It is
// empty for kernel threads and zombies, and for a moment while the process
// execs (see Environ).
func Cmdline(pid int) ([]string, error) {
	data, err := readFile(pid, "cmdline")
	if err != nil {
		return nil, err
	}
	return splitNUL(data), nil
}

// Environ returns the environment the process was started with
// (/proc/PID/environ: what it was given at exec, not later changes it made
// to its own environment). Entries without '=' are left out. Reading another
// user's process needs privileges.
//
// While a process execs, there is a moment when it reads empty: os/exec's
// Start returns before the kernel has set up the new program's environment.
// A process found by its environment (FindByEnv) may therefore be missed
// right after it was started; whoever started it knows its pid anyway.
func Environ(pid int) (map[string]string, error) {
	data, err := readFile(pid, "environ")
	if err != nil {
		return nil, err
	}
	env := make(map[string]string)
	for _, kv := range splitNUL(data) {
		k, v, ok := strings.Cut(kv, "=")
		if ok {
			env[k] = v
		}
	}
	return env, nil
}

// Session returns every pid whose session id is sid, sorted. A process
// started with setsid is the leader of its own session, and every process it
// starts stays in that session unless it calls setsid itself, so the result
// is the leader's process tree. Zombies are included (see Info.State).
func Session(sid int) ([]int, error) {
	all, err := Sessions()
	if err != nil {
		return nil, err
	}
	return all[sid], nil
}

// Sessions reads /proc once and returns the pids of every session, by
// session id, each list sorted: Session for many sessions at the cost of one.
// Zombies are included (see Info.State).
func Sessions() (map[int][]int, error) {
	pids, err := Pids()
	if err != nil {
		return nil, err
	}
	out := make(map[int][]int)
	for _, pid := range pids {
		info, err := Stat(pid)
		if err != nil {
			continue // exited since the directory was read
		}
		out[info.Session] = append(out[info.Session], pid)
	}
	return out, nil
}

// FindByEnv returns every process whose environment (see Environ) has key,
// with its value, by pid. Processes whose environment cannot be read (another
// user's, or exited meanwhile) are skipped.
func FindByEnv(key string) (map[int]string, error) {
	pids, err := Pids()
	if err != nil {
		return nil, err
	}
	prefix := []byte(key + "=")
	out := make(map[int]string)
	for _, pid := range pids {
		data, err := readFile(pid, "environ")
		if err != nil {
			continue
		}
		for len(data) > 0 {
			var entry []byte
			entry, data, _ = bytes.Cut(data, []byte{0})
			if bytes.HasPrefix(entry, prefix) {
				out[pid] = string(entry[len(prefix):])
				break
			}
		}
	}
	return out, nil
}

// Pids returns the pid of every process (thread group) in /proc, sorted.
func Pids() ([]int, error) {
	entries, err := os.ReadDir(root)
	if err != nil {
		return nil, err
	}
	pids := make([]int, 0, len(entries))
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid <= 0 {
			continue
		}
		pids = append(pids, pid)
	}
	slices.Sort(pids)
	return pids, nil
}

// readFile reads /proc/PID/name, turning "no such file" and ESRCH (the
// process exited while the file was read) into ErrNotFound.
func readFile(pid int, name string) ([]byte, error) {
	if pid <= 0 {
		return nil, fmt.Errorf("process %d: %w", pid, ErrNotFound)
	}
	data, err := os.ReadFile(root + "/" + strconv.Itoa(pid) + "/" + name)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) || errors.Is(err, syscall.ESRCH) {
			return nil, fmt.Errorf("process %d: %w", pid, ErrNotFound)
		}
		return nil, err
	}
	return data, nil
}

// parseStat parses the contents of /proc/PID/stat:
//
//	pid (comm) state ppid pgrp session tty_nr tpgid flags minflt cminflt majflt cmajflt utime stime cutime cstime priority nice num_threads itrealvalue starttime ...
//
// comm may contain anything, spaces and parentheses included, so it ends at
// the last ')'.
func parseStat(data []byte) (Info, error) {
	open := bytes.IndexByte(data, '(')
	end := bytes.LastIndexByte(data, ')')
	if open < 0 || end < open {
		return Info{}, fmt.Errorf("malformed stat %q", trim(data))
	}
	var info Info
	pid, err := strconv.Atoi(string(bytes.TrimSpace(data[:open])))
	if err != nil {
		return Info{}, fmt.Errorf("malformed stat %q: pid: %v", trim(data), err)
	}
	info.PID = pid
	info.Comm = string(data[open+1 : end])
	// Fields after comm, numbered from 3 (state) as in proc(5).
	fields := bytes.Fields(data[end+1:])
	if len(fields) < 22-2 {
		return Info{}, fmt.Errorf("malformed stat %q: %d fields after comm, want at least 20", trim(data), len(fields))
	}
	field := func(n int) []byte { return fields[n-3] }
	if len(field(3)) != 1 {
		return Info{}, fmt.Errorf("malformed stat %q: state %q", trim(data), field(3))
	}
	info.State = field(3)[0]
	for _, f := range []struct {
		n   int
		dst *int
	}{{4, &info.PPID}, {5, &info.PGID}, {6, &info.Session}} {
		v, err := strconv.Atoi(string(field(f.n)))
		if err != nil {
			return Info{}, fmt.Errorf("malformed stat %q: field %d: %v", trim(data), f.n, err)
		}
		*f.dst = v
	}
	info.StartTicks, err = strconv.ParseUint(string(field(22)), 10, 64)
	if err != nil {
		return Info{}, fmt.Errorf("malformed stat %q: starttime: %v", trim(data), err)
	}
	return info, nil
}

func trim(data []byte) []byte {
	data = bytes.TrimSpace(data)
	if len(data) > 200 {
		data = data[:200]
	}
	return data
}

// splitNUL splits NUL-terminated (or NUL-separated) strings.
func splitNUL(data []byte) []string {
	data = bytes.TrimSuffix(data, []byte{0})
	if len(data) == 0 {
		return []string{}
	}
	parts := bytes.Split(data, []byte{0})
	out := make([]string, len(parts))
	for i, p := range parts {
		out[i] = string(p)
	}
	return out
}
