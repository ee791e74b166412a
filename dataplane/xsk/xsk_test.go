package xsk

import (
	"context"
	"runtime"
	"testing"
	"time"

	"github.com/xdprouter/xdprouter/bench/gen"
	"github.com/xdprouter/xdprouter/dataplane/fib"
	"github.com/xdprouter/xdprouter/dataplane/xdp"
	"github.com/xdprouter/xdprouter/internal/labtest"
	"github.com/xdprouter/xdprouter/lab"
)

// TestSteering: with engine afxdp on eth1 and eth2, every forwardable
// frame reaches the AF_XDP socket of its (interface, queue), and both
// queues are used; frames whose queue has no socket go to the kernel.
func TestSteering(t *testing.T) {
	l := labtest.Up(t, 2)
	tb, err := fib.New(fib.Config{Nodes4: 256, Leaves4: 512, Nodes6: 256, Leaves6: 512, Nexthops: 4, ECMPGroups: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer tb.Close()
	eg := l.Egress
	if err := tb.SetNexthop(1, fib.Nexthop{Ifindex: eg.A.Index, SrcMAC: eg.A.MAC, DstMAC: eg.B.MAC, MTU: 1500, State: fib.Resolved}); err != nil {
		t.Fatal(err)
	}
	if err := tb.Insert(l.RouteV4, fib.MakeResult(fib.RouteNexthop, 1)); err != nil {
		t.Fatal(err)
	}
	prog, err := xdp.Load(tb, xdp.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer prog.Close()
	if err := prog.AddXSKEgress(eg.A.Index); err != nil {
		t.Fatal(err)
	}
	err = lab.InNamespace(l.RouterNS, func() error {
		for _, lk := range l.Ingress {
			if err := prog.Attach(lk.B.Index, xdp.EngineAFXDP, xdp.AttachOptions{}); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	type sq struct {
		s   *Socket
		key uint32
	}
	var socks []sq
	// One UMEM shared by all four sockets: the first registers it.
	u, err := NewUMEM(4*8192, 2048)
	if err != nil {
		t.Fatal(err)
	}
	defer u.Close()
	for i, lk := range l.Ingress {
		slot, _ := prog.Slot(lk.B.Index)
		for q := range 2 {
			s, err := Open(l.RouterNS, lk.B.Index, q, u, Options{})
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close()
			if s.Shared != (i+q > 0) {
				t.Errorf("socket %d/%d: shared %v", i, q, s.Shared)
			}
			if s.TopUp(0) != 4096 {
				t.Errorf("fill ring took %d frames, want 4096", s.Rings().Fill)
			}
			key := slot*xdp.MaxQueues + uint32(q)
			if err := s.Register(prog.XSKMap(), key); err != nil {
				t.Fatal(err)
			}
			socks = append(socks, sq{s, key})
		}
	}
	var cpus []int
	for i := range runtime.NumCPU() {
		cpus = append(cpus, i)
	}
	links := gen.LabLinks(l)
	const n = 20000
	g, err := gen.New(gen.Config{Namespace: l.GenNS, Links: links, Count: n, Rate: 20000, CPUs: cpus})
	if err != nil {
		t.Fatal(err)
	}
	defer g.Close()
	done := make(chan error, 1)
	go func() { _, err := g.Run(context.Background()); done <- err }()
	got := make([]int, len(socks))
	descs := make([]Desc, 256)
	total := 0
	deadline := time.Now().Add(10 * time.Second)
	for total < n && time.Now().Before(deadline) {
		for i, x := range socks {
			k := x.s.Receive(descs)
			for _, d := range descs[:k] {
				if f := u.Bytes(d); len(f) != 60 {
					t.Fatalf("socket %d got a %d-byte frame, want 60", i, len(f))
				}
				u.Drop(d.Addr) // give the frame back
			}
			got[i] += k
			total += k
			x.s.TopUp(0)
		}
		time.Sleep(time.Millisecond)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	t.Logf("frames per socket (eth1 q0, q1, eth2 q0, q1): %v", got)
	if err := u.Check(); err != nil {
		t.Error(err)
	}
	if total != n {
		t.Errorf("sockets received %d of %d frames", total, n)
	}
	used := 0
	for _, c := range got {
		if c > 0 {
			used++
		}
	}
	if used < 2 {
		t.Errorf("only %d sockets used: %v", used, got)
	}
	var c xdp.Counters
	for _, lk := range l.Ingress {
		cc, _ := prog.Counters(lk.B.Index)
		for i := range c {
			c[i] += cc[i]
		}
	}
	if c[xdp.ToAFXDP] != n || c[xdp.PassNoXSK] != 0 {
		t.Errorf("counters: to_afxdp %d, pass_no_xsk %d; want %d and 0", c[xdp.ToAFXDP], c[xdp.PassNoXSK], n)
	}
	// Unregister every socket: frames now go to the kernel, never dropped.
	for _, x := range socks {
		if err := Unregister(prog.XSKMap(), x.key); err != nil {
			t.Fatal(err)
		}
	}
	g2, err := gen.New(gen.Config{Namespace: l.GenNS, Links: links, Count: 1000, Rate: 20000, CPUs: cpus})
	if err != nil {
		t.Fatal(err)
	}
	defer g2.Close()
	if _, err := g2.Run(context.Background()); err != nil {
		t.Fatal(err)
	}
	var c2 xdp.Counters
	for _, lk := range l.Ingress {
		cc, _ := prog.Counters(lk.B.Index)
		for i := range c2 {
			c2[i] += cc[i]
		}
	}
	if c2[xdp.PassNoXSK]-c[xdp.PassNoXSK] != 1000 {
		t.Errorf("without sockets: pass_no_xsk moved by %d, want 1000", c2[xdp.PassNoXSK]-c[xdp.PassNoXSK])
	}
}
