package schema

import (
	"encoding/json"
	"strings"
	"testing"
)

// A pool may declare ram; when it does not, the spec says nothing of it
// (the engine's default estimate lives outside the spec and its hash).
func TestPoolRAM(t *testing.T) {
	for _, tc := range []struct {
		name    string
		ram     string
		want    int64
		wantMsg string
	}{
		{name: "declared", ram: "ram: 12Gi", want: 12 << 30},
		{name: "absent"},
		{name: "zero", ram: "ram: 0", wantMsg: "must be a positive number of bytes"},
		{name: "not bytes", ram: `ram: "lots"`, wantMsg: "must be a positive number of bytes"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d, diags, _ := loadConfig(t, map[string]string{"c.cue": `nodes: box: gpus: [{index: 0, vram: 24Gi}]
pools: p: {node: "box", engine: "llamacpp", model: path: "/m.gguf", devices: [0], ` + tc.ram + `}
`})
			if tc.wantMsg != "" {
				if !strings.Contains(diags.Error(), tc.wantMsg) {
					t.Fatalf("diagnostics %q lack %q", diags.Error(), tc.wantMsg)
				}
				return
			}
			if len(diags) > 0 {
				t.Fatalf("unexpected diagnostics: %v", diags)
			}
			p := d.Pools["p"]
			if p.RAM != tc.want {
				t.Errorf("RAM = %d, want %d", p.RAM, tc.want)
			}
			js, err := json.Marshal(p)
			if err != nil {
				t.Fatal(err)
			}
			if got := strings.Contains(string(js), `"ram"`); got != (tc.want != 0) {
				t.Errorf("spec JSON %s: ram present = %v, want %v", js, got, tc.want != 0)
			}
		})
	}
}
