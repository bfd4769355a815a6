package local

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"strconv"
	"strings"
)

// An engine's port is picked here and bound by the engine later, once it has
// started. A port in the kernel's ephemeral range may be taken in between by
// any outbound connection on the host (the kernel hands those ports out to
// connect), and the engine then fails to bind. So ports are picked outside
// that range, where only a process that binds a port explicitly can take it.

// ephemeralRangeFile is where Linux keeps the range of ports it gives to
// outbound connections: "LOW\tHIGH".
const ephemeralRangeFile = "/proc/sys/net/ipv4/ip_local_port_range"

// Linux's default ephemeral range, assumed when the file cannot be read
// (another system, a sandbox without /proc).
const defaultEphemeralLow, defaultEphemeralHigh = 32768, 60999

// minEnginePort is the lowest port given to an engine: the ports below need
// privileges to bind.
const minEnginePort = 1024

// portRange is the ports from lo to hi, both included.
type portRange struct{ lo, hi int }

func (r portRange) size() int { return r.hi - r.lo + 1 }

// parsePortRange reads ip_local_port_range's "LOW HIGH".
func parsePortRange(b []byte) (portRange, error) {
	f := strings.Fields(string(b))
	if len(f) != 2 {
		return portRange{}, fmt.Errorf("want two ports, got %q", strings.TrimSpace(string(b)))
	}
	lo, err1 := strconv.Atoi(f[0])
	hi, err2 := strconv.Atoi(f[1])
	if err := errors.Join(err1, err2); err != nil {
		return portRange{}, err
	}
	if lo < 1 || hi > 65535 || lo > hi {
		return portRange{}, fmt.Errorf("not a port range: %d-%d", lo, hi)
	}
	return portRange{lo, hi}, nil
}

// ephemeralRange returns the kernel's ephemeral port range, read with read
// from ephemeralRangeFile, or Linux's default when it cannot be read.
func ephemeralRange(read func(string) ([]byte, error)) portRange {
	b, err := read(ephemeralRangeFile)
	if err != nil {
		return portRange{defaultEphemeralLow, defaultEphemeralHigh}
	}
	r, err := parsePortRange(b)
	if err != nil {
		return portRange{defaultEphemeralLow, defaultEphemeralHigh}
	}
	return r
}

// enginePorts returns the ranges of ports an engine may be given: from
// minEnginePort to 65535, less the ephemeral range; none when the ephemeral
// range covers them all.
func enginePorts(ephemeral portRange) []portRange {
	var out []portRange
	if lo, hi := minEnginePort, min(ephemeral.lo-1, 65535); lo <= hi {
		out = append(out, portRange{lo, hi})
	}
	if lo, hi := max(ephemeral.hi+1, minEnginePort), 65535; lo <= hi {
		out = append(out, portRange{lo, hi})
	}
	return out
}

// nthPort returns the n-th port of ranges, counting from 0 across them.
func nthPort(ranges []portRange, n int) int {
	for _, r := range ranges {
		if n < r.size() {
			return r.lo + n
		}
		n -= r.size()
	}
	return 0
}

// portPicker picks a port for an engine: a random port outside the kernel's
// ephemeral range that nothing listens on now and that taken does not hold;
// when none is found (or the range leaves none), a port the kernel picks.
type portPicker struct {
	// ephemeral is the kernel's ephemeral range.
	ephemeral portRange
	// free reports whether a port can be bound on the engines' address now.
	free func(port int) bool
	// kernel asks the kernel for a free port (from the ephemeral range).
	kernel func() (int, error)
	// intn returns a random number from 0 to n-1.
	intn func(n int) int
}

// hostPortPicker is the picker of this host: the range from /proc, ports
// probed on 127.0.0.1.
func hostPortPicker() portPicker {
	return portPicker{
		ephemeral: ephemeralRange(os.ReadFile),
		free: func(port int) bool {
			l, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)))
			if err != nil {
				return false
			}
			l.Close()
			return true
		},
		kernel: freePort,
		intn:   rand.IntN,
	}
}

// tries is how many random ports pick probes outside the ephemeral range
// before it falls back to the kernel's pick.
const tries = 64

// pick returns a port that taken does not hold.
func (pp portPicker) pick(taken func(int) bool) (int, error) {
	ranges := enginePorts(pp.ephemeral)
	total := 0
	for _, r := range ranges {
		total += r.size()
	}
	if total > 0 {
		for range tries {
			p := nthPort(ranges, pp.intn(total))
			if !taken(p) && pp.free(p) {
				return p, nil
			}
		}
	}
	for range 20 {
		p, err := pp.kernel()
		if err != nil {
			return 0, err
		}
		if !taken(p) {
			return p, nil
		}
	}
	return 0, errors.New("no free port found that was not already given out")
}
