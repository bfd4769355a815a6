// Package host reads the machine's own resources that pool-managerd checks
// pools against: its memory (/proc/meminfo).
package host

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
)

// Memory returns the host's total and available memory in bytes, read
// from MemTotal and MemAvailable of /proc/meminfo (Linux only).
func Memory() (total, available uint64, err error) {
	f, err := os.Open("/proc/meminfo")
	if err != nil {
		return 0, 0, fmt.Errorf("host memory: %w", err)
	}
	defer f.Close()
	total, available, err = parseMeminfo(f)
	if err != nil {
		return 0, 0, fmt.Errorf("host memory: /proc/meminfo: %w", err)
	}
	return total, available, nil
}

// parseMeminfo reads MemTotal and MemAvailable, in bytes, from text in the
// format of /proc/meminfo ("MemTotal:       32594160 kB").
func parseMeminfo(r io.Reader) (total, available uint64, err error) {
	var haveTotal, haveAvailable bool
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		key, value, ok := strings.Cut(sc.Text(), ":")
		if !ok {
			continue
		}
		var dst *uint64
		switch key {
		case "MemTotal":
			dst, haveTotal = &total, true
		case "MemAvailable":
			dst, haveAvailable = &available, true
		default:
			continue
		}
		n, err := parseKB(value)
		if err != nil {
			return 0, 0, fmt.Errorf("%s: %w", key, err)
		}
		*dst = n
	}
	if err := sc.Err(); err != nil {
		return 0, 0, err
	}
	switch {
	case !haveTotal:
		return 0, 0, errors.New("no MemTotal line")
	case !haveAvailable:
		return 0, 0, errors.New("no MemAvailable line (kernel older than 3.14?)")
	}
	return total, available, nil
}

// parseKB reads "  32594160 kB" as a number of bytes.
func parseKB(s string) (uint64, error) {
	f := strings.Fields(s)
	if len(f) != 2 || f[1] != "kB" {
		return 0, fmt.Errorf("%q is not a number of kB", strings.TrimSpace(s))
	}
	n, err := strconv.ParseUint(f[0], 10, 64)
	if err != nil || n > (1<<64-1)/1024 {
		return 0, fmt.Errorf("%q is not a number of kB", strings.TrimSpace(s))
	}
	return n * 1024, nil
}
