package afxdpref

import (
	"os/exec"
	"strings"
	"testing"
	"time"
)

func TestParse(t *testing.T) {
	for _, tc := range []struct {
		line string
		want Stats
		bad  bool
	}{
		{line: "queue=1 cpu=1 rx=100 tx=90 drop=10 kicks=5 polls=2 user_us=1500 sys_us=30000 budget=256 rx_ring_full=3 fill_ring_empty=4",
			want: Stats{Queue: 1, CPU: 1, Rx: 100, Tx: 90, Drop: 10, Kicks: 5, Polls: 2, User: 1500 * time.Microsecond,
				System: 30 * time.Millisecond, Budget: 256, RingFull: 3, FillRingEmpty: 4}},
		{line: "queue=0 rx=x", bad: true},
		{line: "ready now", bad: true},
	} {
		got, err := parse(tc.line)
		if (err != nil) != tc.bad || (!tc.bad && got != tc.want) {
			t.Errorf("parse(%q) = %+v, %v; want %+v (error %v)", tc.line, got, err, tc.want, tc.bad)
		}
	}
}

// TestBinary compiles the embedded source (or takes $XDPROUTER_AFXDP_REF)
// and checks the program answers a bad command line with its usage.
func TestBinary(t *testing.T) {
	bin, err := Binary()
	if err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(bin).CombinedOutput()
	if err == nil || !strings.Contains(string(out), "usage: afxdp-ref") {
		t.Errorf("%s without arguments: %v\n%s", bin, err, out)
	}
}
