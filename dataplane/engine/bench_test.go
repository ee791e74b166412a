package engine

import (
	"context"
	"testing"
	"time"

	"github.com/xdprouter/xdprouter/bench/gen"
)

// BenchmarkWorker measures the worker's own cost per frame: receive,
// parse, FIB lookup, rewrite and move to the egress socket's tx ring,
// on frames waiting in the rx ring (sent by the generator beforehand),
// excluding sendto (the kernel's copy and transmit), which runs with the
// timer stopped. One op is one frame.
func BenchmarkWorker(b *testing.B) {
	for _, fam := range []int{4, 6} {
		b.Run(map[int]string{4: "ipv4", 6: "ipv6"}[fam], func(b *testing.B) {
			r := newRig(b, 1)
			w := r.manualWorker(b, Config{Batch: 256})
			src, dst := gen.DefaultPrefixes(fam)
			g, err := gen.New(gen.Config{Namespace: r.lab.GenNS, Links: gen.LabLinks(r.lab)[:1], Src: src, Dst: dst,
				Count: 1500, CPUs: []int{0}})
			if err != nil {
				b.Fatal(err)
			}
			defer g.Close()
			var in *port
			for _, p := range w.ports {
				if p.ifindex == r.lab.Ingress[0].B.Index {
					in = p
				}
			}
			b.ResetTimer()
			b.StopTimer()
			done := 0
			for done < b.N {
				if _, err := g.Run(context.Background()); err != nil {
					b.Fatal(err)
				}
				deadline := time.Now().Add(time.Second)
				for in.s.Rings().Rx < 1400 && time.Now().Before(deadline) {
					time.Sleep(100 * time.Microsecond)
				}
				b.StartTimer()
				for {
					n := w.receive(in)
					if n == 0 {
						break
					}
					done += n
				}
				b.StopTimer()
				for _, p := range w.ports {
					if len(p.pending) > 0 {
						p.s.Send(p.pending)
						p.pending = p.pending[:0]
					}
				}
				for i := 0; i < 100; i++ {
					w.reap() // completions back to the free list, fill rings refilled
					if w.ports[len(w.ports)-1].s.TxInFlight() == 0 {
						break
					}
					time.Sleep(time.Millisecond)
				}
			}
			// ns/op divides by b.N; report per frame actually processed.
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(done), "ns/frame")
			if w.c.forwarded.Load() == 0 {
				b.Fatal("nothing forwarded")
			}
		})
	}
}
