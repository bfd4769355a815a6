package host

import (
	"runtime"
	"strings"
	"testing"
)

const meminfo = `MemTotal:       32594160 kB
MemFree:         1234560 kB
MemAvailable:   20971520 kB
Buffers:          345678 kB
Cached:         15000000 kB
HugePages_Total:       0
Hugepagesize:       2048 kB
`

func TestParseMeminfo(t *testing.T) {
	tests := []struct {
		name             string
		text             string
		total, available uint64
		wantErr          string
	}{
		{name: "proc", text: meminfo, total: 32594160 * 1024, available: 20 << 30},
		{name: "order does not matter", text: "MemAvailable: 1 kB\nMemTotal: 2 kB\n", total: 2048, available: 1024},
		{name: "no MemTotal", text: "MemAvailable: 1 kB\n", wantErr: "no MemTotal"},
		{name: "no MemAvailable", text: "MemTotal: 1 kB\nMemFree: 1 kB\n", wantErr: "no MemAvailable"},
		{name: "empty", text: "", wantErr: "no MemTotal"},
		{name: "no unit", text: "MemTotal: 1\nMemAvailable: 1 kB\n", wantErr: `MemTotal: "1" is not a number of kB`},
		{name: "not a number", text: "MemTotal: lots kB\nMemAvailable: 1 kB\n", wantErr: "MemTotal: "},
		{name: "overflow", text: "MemTotal: 18446744073709551615 kB\nMemAvailable: 1 kB\n", wantErr: "MemTotal: "},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			total, available, err := parseMeminfo(strings.NewReader(tt.text))
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("error %v, want one containing %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if total != tt.total || available != tt.available {
				t.Errorf("got %d, %d; want %d, %d", total, available, tt.total, tt.available)
			}
		})
	}
}

func TestMemory(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("/proc/meminfo is Linux's")
	}
	total, available, err := Memory()
	if err != nil {
		t.Fatal(err)
	}
	if total == 0 || available > total {
		t.Errorf("total %d, available %d", total, available)
	}
}
