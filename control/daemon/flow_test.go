package daemon

import (
	"context"
	"path/filepath"
	"runtime"
	"testing"
	"time"

	"github.com/xdprouter/xdprouter/bench/gen"
	"github.com/xdprouter/xdprouter/bench/sink"
	"github.com/xdprouter/xdprouter/internal/labtest"
	"github.com/xdprouter/xdprouter/lab"
)

// flow is a daemon with engine xdp on every lab port forwarding 100 kpps
// from the generator (both links) to the sink, for the tests that change
// a setting while traffic flows. Everything stops when tb ends.
type flow struct {
	l *lab.Lab
	d *Daemon
	// matched is the number of frames the sink received so far.
	matched func() uint64
}

func startFlow(tb testing.TB) flow {
	tb.Helper()
	l := labtest.Up(tb, 2)
	cfg := Config{Namespace: l.RouterNS, Metrics: "off", Control: filepath.Join(tb.TempDir(), "x.sock"),
		CPUs:       []int{0, 1 % runtime.NumCPU()},
		Interfaces: []Interface{{Name: l.Ingress[0].B.Name, Engine: "xdp"}, {Name: l.Ingress[1].B.Name, Engine: "xdp"}, {Name: l.Egress.A.Name, Engine: "xdp"}},
		FIB:        FIBConfig{Nodes4: 4096, Leaves4: 8192, Nodes6: 4096, Leaves6: 8192, Nexthops: 64}}
	d, err := Start(context.Background(), cfg)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { d.Stop() })
	sk, err := sink.Attach(l.SinkNS, []string{l.Egress.B.Name}, sink.DefaultPort)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { sk.Close() })
	g, err := gen.New(gen.Config{Namespace: l.GenNS, Links: gen.LabLinks(l), CPUs: []int{0}, Rate: 100000, Duration: time.Minute})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { g.Close() })
	ctx, cancel := context.WithCancel(context.Background())
	sent := make(chan error, 1)
	go func() { _, err := g.Run(ctx); sent <- err }()
	tb.Cleanup(func() { cancel(); <-sent })
	return flow{l: l, d: d, matched: func() uint64 {
		c, err := sk.Counters()
		if err != nil {
			tb.Fatal(err)
		}
		return c.MatchedPackets
	}}
}
