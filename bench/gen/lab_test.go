package gen

import (
	"context"
	"fmt"
	"math"
	"runtime"
	"testing"
	"time"

	"github.com/xdprouter/xdprouter/bench/sink"
	"github.com/xdprouter/xdprouter/internal/testutil"
	"github.com/xdprouter/xdprouter/lab"
)

// upLab brings up a lab for the test and removes it in Cleanup.
func upLab(t *testing.T) *lab.Lab {
	t.Helper()
	testutil.Privileged(t)
	name := testutil.LabName()
	t.Cleanup(func() {
		if err := lab.Down(name); err != nil {
			t.Errorf("lab down: %v", err)
		}
	})
	l, err := lab.Up(context.Background(), lab.Config{Name: name})
	if err != nil {
		t.Fatal(err)
	}
	return l
}

func allCPUs() []int {
	var cpus []int
	for i := range runtime.NumCPU() {
		cpus = append(cpus, i)
	}
	return cpus
}

func attachSink(t *testing.T, l *lab.Lab) *sink.Sink {
	t.Helper()
	s, err := sink.Attach(l.SinkNS, []string{l.Egress.B.Name}, sink.DefaultPort)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// TestKernelForwardingExact sends an exact count through the kernel router
// at a moderate rate and requires exactly that many frames, of exactly the
// asked size, at the sink.
func TestKernelForwardingExact(t *testing.T) {
	l := upLab(t)
	s := attachSink(t, l)
	tests := []struct {
		family int
		size   int
		count  uint64
	}{
		{4, 64, 20000},
		{6, 66, 20000},
		{4, 1518, 5000},
		{6, 1518, 5000},
		{4, 777, 3001},
	}
	var before sink.Counters
	for _, tc := range tests {
		t.Run(fmt.Sprintf("v%d-%dB", tc.family, tc.size), func(t *testing.T) {
			src, dst := DefaultPrefixes(tc.family)
			g, err := New(Config{
				Namespace: l.GenNS, Links: LabLinks(l), Src: src, Dst: dst,
				Size: tc.size, Count: tc.count, Rate: 50000, CPUs: allCPUs(),
			})
			if err != nil {
				t.Fatal(err)
			}
			defer g.Close()
			res, err := g.Run(context.Background())
			if err != nil {
				t.Fatal(err)
			}
			if res.Sent != tc.count {
				t.Fatalf("generator sent %d, want %d", res.Sent, tc.count)
			}
			after, err := s.WaitMatched(context.Background(), before.MatchedPackets+tc.count, time.Second)
			if err != nil {
				t.Fatal(err)
			}
			got := after.MatchedPackets - before.MatchedPackets
			if got != tc.count {
				t.Errorf("sink received %d, want exactly %d", got, tc.count)
			}
			wantLen := uint64(tc.size - FCSLen)
			if b := after.MatchedBytes - before.MatchedBytes; b != got*wantLen {
				t.Errorf("sink bytes %d for %d frames, want %d-byte frames", b, got, wantLen)
			}
			if after.MatchedMaxLen != max(before.MatchedMaxLen, wantLen) {
				t.Errorf("largest frame %d, want %d", after.MatchedMaxLen, wantLen)
			}
			if before.MatchedPackets == 0 && after.MatchedMinLen != wantLen {
				t.Errorf("smallest frame %d, want %d", after.MatchedMinLen, wantLen)
			}
			before = after
		})
	}
}

// TestRateControl paces the generator at 100 kpps and checks the rate the
// sink measures in the steady middle of the run, and the generator's own.
func TestRateControl(t *testing.T) {
	l := upLab(t)
	s := attachSink(t, l)
	const target = 100000.0
	g, err := New(Config{
		Namespace: l.GenNS, Links: LabLinks(l), Rate: target,
		Duration: 3 * time.Second, CPUs: allCPUs(),
	})
	if err != nil {
		t.Fatal(err)
	}
	defer g.Close()
	type reading struct {
		c  sink.Counters
		at time.Time
	}
	readings := make(chan reading, 2)
	go func() {
		time.Sleep(time.Second)
		for range 2 {
			c, _ := s.Counters()
			readings <- reading{c, time.Now()}
			time.Sleep(time.Second)
		}
	}()
	res, err := g.Run(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	a, b := <-readings, <-readings
	sinkRate := sink.RateBetween(a.c, b.c, b.at.Sub(a.at)).PPS
	t.Logf("target %.0f pps: generator %.0f pps (%d sent in %v), sink %.0f pps; per CPU %+v",
		target, res.PPS(), res.Sent, res.Elapsed, sinkRate, res.PerCPU)
	for name, rate := range map[string]float64{"generator": res.PPS(), "sink": sinkRate} {
		if math.Abs(rate-target)/target > 0.05 {
			t.Errorf("%s measured %.0f pps, more than 5%% off the %.0f target", name, rate, target)
		}
	}
}
