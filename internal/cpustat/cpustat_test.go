package cpustat

import (
	"math"
	"strings"
	"testing"
)

func TestShares(t *testing.T) {
	a, err := Parse(strings.NewReader(`cpu  10 0 10 80 0 0 0 0 0 0
cpu0 5 0 5 40 0 0 0 0 0 0
cpu1 5 0 5 40 0 0 0 0 0 0
intr 1 2 3
`))
	if err != nil {
		t.Fatal(err)
	}
	b, err := Parse(strings.NewReader(`cpu0 5 0 25 40 0 0 60 0 0 0
cpu1 15 10 5 120 0 0 0 0 0 0
`))
	if err != nil {
		t.Fatal(err)
	}
	got := Shares(a, b)
	want := []Share{{CPU: 0, SoftIRQ: 0.75, System: 0.25}, {CPU: 1, User: 0.2, Idle: 0.8}}
	if len(got) != len(want) {
		t.Fatalf("got %d shares, want %d", len(got), len(want))
	}
	for i := range want {
		g, w := got[i], want[i]
		for _, p := range [][2]float64{{g.SoftIRQ, w.SoftIRQ}, {g.System, w.System}, {g.User, w.User}, {g.Idle, w.Idle}} {
			if math.Abs(p[0]-p[1]) > 1e-9 {
				t.Errorf("cpu%d: got %+v, want %+v", w.CPU, g, w)
			}
		}
	}
}

func TestReadThisMachine(t *testing.T) {
	ts, err := Read()
	if err != nil {
		t.Fatal(err)
	}
	if len(ts) == 0 || ts[0].CPU != 0 {
		t.Fatalf("no cpu0 line read from /proc/stat: %+v", ts)
	}
}
