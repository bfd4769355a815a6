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

// alive reports whether the process that made a claim still runs: the pid
// exists, is not a zombie, and (when known, start is not 0) started when the
// claimant did.
func alive(pid int, start uint64) bool {
	now, ok := procStart(pid)
	if !ok {
		return false
	}
	return start == 0 || start == now
}

// claimant follows whether the process of a claim runs, without reading
// /proc on every query: once it was seen alive, a pidfd of it is kept and
// polled (one poll(2), which never blocks), and once it has exited it is
// known gone for good. A claim whose start time is not known (0) counts for
// any process of its pid, so it is read from /proc every time, as is one
// whose pidfd could not be had.
type claimant struct {
	pid   int
	start uint64
	fd    int  // pidfd of the claimant, -1 when none is held
	gone  bool // it has exited (or its pid is another process's)
	plain bool // no pidfd: read /proc every time
}

func newClaimant(pid int, start uint64) *claimant {
	return &claimant{pid: pid, start: start, fd: -1, plain: start == 0}
}

// living reports which of the claimants run. keep says whether a pidfd may
// be opened and kept (not without a watcher: the claims are read again on
// every query then). The pidfds already held are polled all at once.
func living(cs []*claimant, keep bool) []bool {
	out := make([]bool, len(cs))
	known := make([]bool, len(cs))
	var fds []int
	var held []int // the index in cs of each of fds
	for i, c := range cs {
		if !c.gone && c.fd >= 0 {
			fds = append(fds, c.fd)
			held = append(held, i)
		}
	}
	if len(fds) > 0 {
		if exited, bad, err := pidfdsExited(fds); err == nil {
			for k, i := range held {
				c := cs[i]
				switch {
				case bad[k]: // a pidfd that cannot be polled: read /proc
					c.release()
					c.plain = true
				case exited[k]:
					c.release()
					c.gone = true
					known[i] = true
				default:
					out[i], known[i] = true, true
				}
			}
		}
	}
	for i, c := range cs {
		if !known[i] {
			out[i] = c.alive(keep)
		}
	}
	return out
}

// alive reports whether the claimant runs (see living).
func (c *claimant) alive(keep bool) bool {
	if c.gone {
		return false
	}
	if c.fd >= 0 {
		exited, bad, err := pidfdsExited([]int{c.fd})
		if err == nil && !bad[0] {
			if exited[0] {
				c.release()
				c.gone = true
			}
			return !exited[0]
		}
		c.release()
		c.plain = true
	}
	if c.plain || !keep {
		return alive(c.pid, c.start)
	}
	fd, gone, err := pidfdOpen(c.pid)
	switch {
	case gone:
		c.gone = true
		return false
	case err != nil:
		c.plain = true
		return alive(c.pid, c.start)
	}
	// The pidfd is the claimant's if the process of the pid, read after it
	// was opened, is the one that claimed: a pid is reused only once its
	// process is gone.
	state, now, ok := procStat(c.pid)
	switch {
	case !ok: // not known now: not alive, as before; asked again next time
		closeFd(fd)
		return false
	case state == 'Z' || state == 'X' || now != c.start:
		closeFd(fd)
		c.gone = true
		return false
	}
	c.fd = fd
	return true
}

// release closes the pidfd, if one is held.
func (c *claimant) release() {
	if c.fd >= 0 {
		closeFd(c.fd)
		c.fd = -1
	}
}
