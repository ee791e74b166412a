package bench

import "testing"

func TestNDRLimit(t *testing.T) {
	tests := []struct {
		name string
		n    NDR
		want string
	}{
		{"passed at the maximum", NDR{PPS: 5e6, Offered: 0, MaxPPS: 5e6}, "generator"},
		{"search found the limit", NDR{PPS: 1.1e6, Offered: 1.1e6, MaxPPS: 3e6}, "path"},
		{"nothing passed", NDR{PPS: 0, MaxPPS: 3e6}, "none passed"},
	}
	for _, tt := range tests {
		if got := tt.n.Limit(); got != tt.want {
			t.Errorf("%s: Limit() = %q, want %q", tt.name, got, tt.want)
		}
	}
}
