package local

import (
	"errors"
	"math/rand/v2"
	"net"
	"os"
	"strconv"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestEphemeralRange(t *testing.T) {
	def := portRange{defaultEphemeralLow, defaultEphemeralHigh}
	tests := []struct {
		name    string
		content string
		err     error
		want    portRange
	}{
		{"this host's default", "32768\t60999\n", nil, portRange{32768, 60999}},
		{"a tuned range", "10000 65000", nil, portRange{10000, 65000}},
		{"the whole range", "1024\t65535\n", nil, portRange{1024, 65535}},
		{"no /proc", "", os.ErrNotExist, def},
		{"one number", "32768\n", nil, def},
		{"not numbers", "low high", nil, def},
		{"reversed", "60999 32768", nil, def},
		{"past 65535", "32768 70000", nil, def},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := ephemeralRange(func(path string) ([]byte, error) {
				if path != ephemeralRangeFile {
					t.Errorf("read %s, want %s", path, ephemeralRangeFile)
				}
				return []byte(tt.content), tt.err
			})
			if got != tt.want {
				t.Errorf("ephemeralRange = %v, want %v", got, tt.want)
			}
		})
	}
}

func TestEnginePorts(t *testing.T) {
	tests := []struct {
		name      string
		ephemeral portRange
		want      []portRange
	}{
		{"Linux default", portRange{32768, 60999}, []portRange{{1024, 32767}, {61000, 65535}}},
		{"up to the top", portRange{10000, 65535}, []portRange{{1024, 9999}}},
		{"from the privileged ports", portRange{500, 2000}, []portRange{{2001, 65535}}},
		{"from 1024", portRange{1024, 60999}, []portRange{{61000, 65535}}},
		{"everything", portRange{1024, 65535}, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := enginePorts(tt.ephemeral)
			if diff := cmp.Diff(tt.want, got, cmp.AllowUnexported(portRange{})); diff != "" {
				t.Errorf("enginePorts (-want +got):\n%s", diff)
			}
		})
	}
}

func TestPortPicker(t *testing.T) {
	errKernel := errors.New("no kernel here")
	tests := []struct {
		name      string
		ephemeral portRange
		draws     []int        // what intn returns, in turn
		busy      map[int]bool // ports something listens on
		taken     map[int]bool // ports given to another engine
		kernel    []int        // what the kernel picks, in turn
		want      int
		wantErr   error
	}{
		{"the first draw, below the range", portRange{32768, 60999}, []int{0}, nil, nil, nil, 1024, nil},
		{"a draw past the first range lands above the ephemeral one", portRange{32768, 60999}, []int{32767 - 1024 + 1}, nil, nil, nil, 61000, nil},
		{"a busy port is skipped", portRange{32768, 60999}, []int{5, 6}, map[int]bool{1029: true}, nil, nil, 1030, nil},
		{"a port given out is skipped", portRange{32768, 60999}, []int{5, 6}, nil, map[int]bool{1029: true}, nil, 1030, nil},
		{"no room outside: the kernel picks, skipping ports given out", portRange{1024, 65535}, nil, nil, map[int]bool{40000: true}, []int{40000, 40001}, 40001, nil},
		{"every draw busy: the kernel picks", portRange{32768, 60999}, []int{1}, map[int]bool{1025: true}, nil, []int{45000}, 45000, nil},
		{"the kernel fails", portRange{1024, 65535}, nil, nil, nil, nil, 0, errKernel},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			draw, picks := 0, 0
			pp := portPicker{
				ephemeral: tt.ephemeral,
				free:      func(p int) bool { return !tt.busy[p] },
				kernel: func() (int, error) {
					if picks >= len(tt.kernel) {
						return 0, errKernel
					}
					picks++
					return tt.kernel[picks-1], nil
				},
				intn: func(n int) int {
					if len(tt.draws) == 0 {
						t.Fatalf("intn(%d) called with no draws planned", n)
					}
					d := tt.draws[min(draw, len(tt.draws)-1)]
					draw++
					return d
				},
			}
			got, err := pp.pick(func(p int) bool { return tt.taken[p] })
			if !errors.Is(err, tt.wantErr) || got != tt.want {
				t.Errorf("pick = %d, %v; want %d, %v", got, err, tt.want, tt.wantErr)
			}
		})
	}
}

// Random draws land outside the ephemeral range and above the privileged
// ports, over both ranges.
func TestPortPickerStaysOutsideEphemeral(t *testing.T) {
	eph := portRange{32768, 60999}
	rng := rand.New(rand.NewPCG(1, 2))
	pp := portPicker{ephemeral: eph, free: func(int) bool { return true },
		kernel: func() (int, error) { t.Fatal("kernel pick with room outside the range"); return 0, nil },
		intn:   rng.IntN}
	below, above := 0, 0
	for range 2000 {
		p, err := pp.pick(func(int) bool { return false })
		if err != nil {
			t.Fatal(err)
		}
		switch {
		case p >= minEnginePort && p < eph.lo:
			below++
		case p > eph.hi && p <= 65535:
			above++
		default:
			t.Fatalf("picked port %d: in the ephemeral range %v or privileged", p, eph)
		}
	}
	if below == 0 || above == 0 {
		t.Errorf("2000 picks: %d below the range, %d above; want both", below, above)
	}
}

// On this host: the port is outside the kernel's range, and free.
func TestDriverPickPortOnHost(t *testing.T) {
	eph := ephemeralRange(os.ReadFile)
	var d Driver
	p, err := d.pickPort()
	if err != nil {
		t.Fatal(err)
	}
	if len(enginePorts(eph)) > 0 && p >= eph.lo && p <= eph.hi {
		t.Errorf("pickPort = %d, inside the ephemeral range %v", p, eph)
	}
	l, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(p)))
	if err != nil {
		t.Fatalf("port %d picked is not free: %v", p, err)
	}
	l.Close()
	if q, err := d.pickPort(); err != nil || q == p {
		t.Errorf("second pickPort = %d, %v; want another port than %d", q, err, p)
	}
}
