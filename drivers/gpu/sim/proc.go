package sim

import (
	"os"
	"strconv"
	"strings"
)

// procStat returns the state and start time of process pid from
// /proc/PID/stat; ok is false when there is no such process.
func procStat(pid int) (state byte, start uint64, ok bool) {
	if pid <= 0 {
		return 0, 0, false
	}
	data, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0, 0, false
	}
	// pid (comm) state ppid ...: comm may hold spaces and parentheses, so
	// the fields start after the last ')'.
	s := string(data)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return 0, 0, false
	}
	fields := strings.Fields(s[i+1:])
	if len(fields) < 20 || len(fields[0]) != 1 {
		return 0, 0, false
	}
	// fields[0] is field 3 (state); the start time is field 22.
	start, err = strconv.ParseUint(fields[19], 10, 64)
	if err != nil {
		return 0, 0, false
	}
	return fields[0][0], start, true
}

// procStart returns the start time of a live process.
func procStart(pid int) (uint64, bool) {
	state, start, ok := procStat(pid)
	if !ok || state == 'Z' || state == 'X' {
		return 0, false
	}
	return start, true
}

// alive reports whether the process that made claim c still runs: the pid
// exists, is not a zombie, and (when known) started when the claimant did.
func alive(c claimFile) bool {
	start, ok := procStart(c.PID)
	if !ok {
		return false
	}
	return c.StartTime == 0 || c.StartTime == start
}
