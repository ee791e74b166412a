package engine

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"net/netip"
	"os/exec"
	"runtime"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/xdprouter/xdprouter/bench/gen"
	"github.com/xdprouter/xdprouter/bench/sink"
	"github.com/xdprouter/xdprouter/dataplane/fib"
	"github.com/xdprouter/xdprouter/dataplane/xdp"
	"github.com/xdprouter/xdprouter/dataplane/xsk"
	"github.com/xdprouter/xdprouter/internal/labtest"
	"github.com/xdprouter/xdprouter/lab"
)

// rig is a lab with the router program on eth1 and eth2 (engine afxdp),
// a FIB routing the lab's test prefixes to the sink, and a sink on sink0.
type rig struct {
	lab  *lab.Lab
	tb   *fib.Table
	prog *xdp.Program
	sink *sink.Sink
	eng  *Engine
}

// foreignMAC is a next hop's MAC that is not the sink's: frames sent
// there reach sink0 (same link) but count as "foreign".
var foreignMAC = net.HardwareAddr{0x02, 0xaa, 0, 0, 0, 2}

func newRig(t testing.TB, queues int) *rig {
	t.Helper()
	l := labtest.Up(t, queues)
	r := &rig{lab: l}
	var err error
	r.tb, err = fib.New(fib.Config{Nodes4: 1024, Leaves4: 2048, Nodes6: 1024, Leaves6: 2048, Nexthops: 16, ECMPGroups: 4})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.tb.Close() })
	eg := l.Egress
	for id, mac := range map[uint32]net.HardwareAddr{1: eg.B.MAC, 2: foreignMAC} {
		if err := r.tb.SetNexthop(id, fib.Nexthop{Ifindex: eg.A.Index, SrcMAC: eg.A.MAC, DstMAC: mac, MTU: 1500, State: fib.Resolved}); err != nil {
			t.Fatal(err)
		}
	}
	for _, p := range []netip.Prefix{l.RouteV4, l.RouteV6} {
		if err := r.tb.Insert(p, fib.MakeResult(fib.RouteNexthop, 1)); err != nil {
			t.Fatal(err)
		}
	}
	r.prog, err = xdp.Load(r.tb, xdp.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.prog.Close() })
	err = lab.InNamespace(l.RouterNS, func() error {
		for _, lk := range l.Ingress {
			if err := r.prog.Attach(lk.B.Index, xdp.EngineAFXDP, xdp.AttachOptions{}); err != nil {
				return err
			}
			for _, a := range []netip.Prefix{lk.B.V4, lk.B.V6} {
				if err := r.prog.AddLocal(a.Addr()); err != nil {
					return err
				}
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	r.sink, err = sink.Attach(l.SinkNS, []string{eg.B.Name}, sink.DefaultPort)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.sink.Close() })
	return r
}

// start runs the engine with a worker per queue on CPUs 0, 1, ...
func (r *rig) start(t *testing.T) { r.startWith(t, func(*Config) {}) }

// startWith is start with the config changed by set.
func (r *rig) startWith(t *testing.T, set func(*Config)) {
	t.Helper()
	var cpus []int
	for q := range r.lab.Queues {
		cpus = append(cpus, q%runtime.NumCPU())
	}
	cfg := Config{Namespace: r.lab.RouterNS, Program: r.prog, Table: r.tb,
		Interfaces: []int{r.lab.Ingress[0].B.Index, r.lab.Ingress[1].B.Index}, Egress: []int{r.lab.Egress.A.Index},
		Queues: r.lab.Queues, CPUs: cpus}
	set(&cfg)
	var err error
	r.eng, err = Start(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = r.eng.Stop() })
}

// send runs the generator (both links, one thread per CPU) to completion.
func (r *rig) send(t *testing.T, cfg gen.Config) gen.Result {
	t.Helper()
	cfg.Namespace = r.lab.GenNS
	cfg.Links = gen.LabLinks(r.lab)
	if cfg.CPUs == nil {
		for i := range runtime.NumCPU() {
			cfg.CPUs = append(cfg.CPUs, i)
		}
	}
	g, err := gen.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer g.Close()
	res, err := g.Run(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return res
}

func (r *rig) counters(t *testing.T) xdp.Counters {
	t.Helper()
	sum, err := r.prog.SumCounters(r.lab.Ingress[0].B.Index, r.lab.Ingress[1].B.Index)
	if err != nil {
		t.Fatal(err)
	}
	return sum
}

func sumStats(ws []WorkerStats) (rx, fwd, dropped uint64) {
	for _, w := range ws {
		rx += w.RxPackets
		fwd += w.Forwarded
		dropped += w.Dropped()
	}
	return
}

// TestForwardExact: generator -> router (engine afxdp, 2 queues, workers
// on CPUs 0 and 1) -> sink delivers exactly the sent count for IPv4 and
// IPv6, through both queues, with the sink's MAC on every frame and the
// router's kernel forwarding none of it; after Stop every UMEM frame is
// back (Stop checks the accounting).
func TestForwardExact(t *testing.T) {
	r := newRig(t, 2)
	r.start(t)
	k0, err := lab.KernelForwarded(r.lab.RouterNS)
	if err != nil {
		t.Fatal(err)
	}
	var sent uint64
	for _, tc := range []struct {
		family int
		size   int
	}{{4, 64}, {6, 66}, {4, 1518}, {6, 1518}} {
		src, dst := gen.DefaultPrefixes(tc.family)
		res := r.send(t, gen.Config{Src: src, Dst: dst, Size: tc.size, Count: 20000, Rate: 50000})
		sent += res.Sent
		got, err := r.sink.WaitMatched(context.Background(), sent, 2*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		if got.MatchedPackets != sent {
			t.Errorf("IPv%d %d B: sink matched %d frames in total, want %d sent", tc.family, tc.size, got.MatchedPackets, sent)
		}
		if want := uint64(tc.size - sink.FCSLen); got.MatchedMaxLen < want {
			t.Errorf("IPv%d %d B: largest frame at the sink %d B, want %d", tc.family, tc.size, got.MatchedMaxLen, want)
		}
		if got.MatchedForeignMAC != 0 {
			t.Errorf("IPv%d: %d frames reached the sink with a wrong destination MAC", tc.family, got.MatchedForeignMAC)
		}
	}
	ws := r.eng.Stats()
	rx, fwd, dropped := sumStats(ws)
	if rx != sent || fwd != sent || dropped != 0 {
		t.Errorf("workers: rx %d, forwarded %d, dropped %d; want %d, %d, 0", rx, fwd, dropped, sent, sent)
	}
	var handoff uint64
	for _, w := range ws {
		handoff += w.Handoff
	}
	if handoff != fwd {
		t.Errorf("%d of %d frames forwarded by the program's handoff, want all (the nexthop never changed)", handoff, fwd)
	}
	for _, w := range ws {
		if w.RxPackets == 0 {
			t.Errorf("worker %d (CPU %d) received nothing: both queues must be used", w.Queue, w.CPU)
		}
		t.Logf("worker %d cpu %d: rx %d fwd %d kicks %d sleeps %d user %v sys %v", w.Queue, w.CPU, w.RxPackets, w.Forwarded, w.Kicks, w.Sleeps, w.UserTime, w.SystemTime)
		for _, s := range w.Sockets {
			if s.ZeroCopy {
				t.Errorf("ifindex %d queue %d: zero-copy on veth?", s.Ifindex, s.Queue)
			}
			if s.Kernel.Rx_dropped+s.Kernel.Rx_ring_full+s.Kernel.Rx_invalid_descs+s.Kernel.Tx_invalid_descs != 0 {
				t.Errorf("ifindex %d queue %d: kernel dropped frames: %+v", s.Ifindex, s.Queue, s.Kernel)
			}
		}
	}
	c := r.counters(t)
	if c[xdp.ToAFXDP] != sent || c[xdp.PassNoXSK] != 0 {
		t.Errorf("program: to_afxdp %d, pass_no_xsk %d; want %d and 0", c[xdp.ToAFXDP], c[xdp.PassNoXSK], sent)
	}
	k1, err := lab.KernelForwarded(r.lab.RouterNS)
	if err != nil {
		t.Fatal(err)
	}
	if k1 != k0 {
		t.Errorf("the router's kernel forwarded %d packets: the workers should have", k1-k0)
	}
	if err := r.eng.Stop(); err != nil {
		t.Errorf("stop: %v", err)
	}
	// Stopped: nothing is steered to the (closed) sockets; the kernel forwards.
	res := r.send(t, gen.Config{Count: 1000, Rate: 50000})
	got, _ := r.sink.WaitMatched(context.Background(), sent+res.Sent, 2*time.Second)
	if got.MatchedPackets != sent+res.Sent {
		t.Errorf("after stop: sink matched %d, want %d (kernel forwarding)", got.MatchedPackets-sent, res.Sent)
	}
}

// TestExceptions: what the workers do not forward still reaches Linux:
// the router answers ping on its own address, and a destination with no
// route in the FIB (the sink's own address, connected in the kernel) is
// forwarded by the kernel.
func TestExceptions(t *testing.T) {
	r := newRig(t, 2)
	r.start(t)
	out, err := exec.Command("ip", "netns", "exec", r.lab.GenNS, "ping", "-c", "3", "-i", "0.2", "-W", "1",
		r.lab.Ingress[0].B.V4.Addr().String()).CombinedOutput()
	if err != nil || !strings.Contains(string(out), " 0% packet loss") {
		t.Errorf("ping the router through an afxdp interface: %v\n%s", err, out)
	}
	out, err = exec.Command("ip", "netns", "exec", r.lab.GenNS, "ping", "-6", "-c", "3", "-i", "0.2", "-W", "1",
		r.lab.Ingress[1].B.V6.Addr().String()).CombinedOutput()
	if err != nil || !strings.Contains(string(out), " 0% packet loss") {
		t.Errorf("ping6 the router through an afxdp interface: %v\n%s", err, out)
	}
	k0, _ := lab.KernelForwarded(r.lab.RouterNS)
	c0 := r.counters(t)
	src, _ := gen.DefaultPrefixes(4)
	dst := netip.PrefixFrom(r.lab.Egress.B.V4.Addr(), 32)
	res := r.send(t, gen.Config{Src: src, Dst: dst, Count: 1000, Rate: 20000})
	got, err := r.sink.WaitMatched(context.Background(), res.Sent, 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	k1, _ := lab.KernelForwarded(r.lab.RouterNS)
	c1 := r.counters(t)
	if got.MatchedPackets != res.Sent || k1-k0 != res.Sent || c1[xdp.PassNoRoute]-c0[xdp.PassNoRoute] != res.Sent {
		t.Errorf("no FIB route: sink %d, kernel forwarded %d, pass_no_route %d; want %d each",
			got.MatchedPackets, k1-k0, c1[xdp.PassNoRoute]-c0[xdp.PassNoRoute], res.Sent)
	}
	if _, fwd, _ := sumStats(r.eng.Stats()); fwd != 0 {
		t.Errorf("workers forwarded %d frames the kernel should have", fwd)
	}
}

// TestRouteChange: the route moves from one next hop to another while
// traffic flows; every frame arrives, and once the change returned (plus
// the frames already on the wire) none leaves with the old next hop's MAC.
func TestRouteChange(t *testing.T) {
	r := newRig(t, 2)
	for _, p := range []netip.Prefix{r.lab.RouteV4, r.lab.RouteV6} {
		if err := r.tb.Insert(p, fib.MakeResult(fib.RouteNexthop, 2)); err != nil { // the foreign MAC first
			t.Fatal(err)
		}
	}
	r.start(t)
	// The workers run real-time (Config.Priority): at normal priority a
	// woken worker waited behind the generator on its CPU while its ring
	// filled, and this test lost frames in about a third of the runs.
	for _, s := range r.eng.Stats() {
		if a, err := unix.SchedGetAttr(s.TID, 0); err != nil || a.Policy != unix.SCHED_FIFO || a.Priority != 1 {
			t.Errorf("worker %d: scheduling %+v (%v); want SCHED_FIFO 1", s.Queue, a, err)
		}
	}
	done := make(chan gen.Result, 1)
	go func() { done <- r.send(t, gen.Config{Count: 150000, Rate: 100000}) }()
	time.Sleep(500 * time.Millisecond)
	before, _ := r.sink.Counters()
	if before.MatchedForeignMAC == 0 {
		t.Fatal("no traffic via the first next hop before the change")
	}
	for _, p := range []netip.Prefix{r.lab.RouteV4, r.lab.RouteV6} {
		if err := r.tb.Insert(p, fib.MakeResult(fib.RouteNexthop, 1)); err != nil {
			t.Fatal(err)
		}
	}
	time.Sleep(50 * time.Millisecond) // frames already rewritten and queued
	settled, _ := r.sink.Counters()
	res := <-done
	after, err := r.sink.WaitMatched(context.Background(), res.Sent, 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if after.MatchedPackets != res.Sent {
		t.Errorf("sink matched %d of %d frames across the change", after.MatchedPackets, res.Sent)
		r.account(t)
	}
	if after.MatchedForeignMAC != settled.MatchedForeignMAC {
		t.Errorf("%d frames left with the old next hop's MAC after the change", after.MatchedForeignMAC-settled.MatchedForeignMAC)
	}
	if after.MatchedPackets-after.MatchedForeignMAC == 0 {
		t.Error("no frame reached the new next hop")
	}
	t.Logf("old next hop %d frames, new %d", after.MatchedForeignMAC, after.MatchedPackets-after.MatchedForeignMAC)
}

// TestFlap: the egress and an ingress interface go down and up during
// traffic; the engine (Watch) rebuilds their sockets and afterwards
// forwards exactly again, with no frame leaked.
func TestFlap(t *testing.T) {
	r := newRig(t, 2)
	r.start(t)
	ctx, cancel := context.WithCancel(context.Background())
	watched := make(chan error, 1)
	go func() { watched <- r.eng.Watch(ctx) }()
	defer func() {
		cancel()
		if err := <-watched; err != nil {
			t.Errorf("watch: %v", err)
		}
	}()
	time.Sleep(100 * time.Millisecond) // subscribed
	done := make(chan gen.Result, 1)
	go func() { done <- r.send(t, gen.Config{Count: 100000, Rate: 50000}) }()
	for _, ifname := range []string{r.lab.Egress.A.Name, r.lab.Ingress[0].B.Name} {
		time.Sleep(300 * time.Millisecond)
		for _, state := range []string{"down", "up"} {
			if out, err := exec.Command("ip", "-n", r.lab.RouterNS, "link", "set", ifname, state).CombinedOutput(); err != nil {
				t.Fatalf("ip link set %s %s: %v\n%s", ifname, state, err, out)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	res := <-done
	during, _ := r.sink.WaitMatched(context.Background(), res.Sent, time.Second)
	t.Logf("during the flaps: %d of %d frames arrived", during.MatchedPackets, res.Sent)
	time.Sleep(500 * time.Millisecond) // links up, sockets rebuilt
	res2 := r.send(t, gen.Config{Count: 20000, Rate: 50000})
	after, err := r.sink.WaitMatched(context.Background(), during.MatchedPackets+res2.Sent, 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if got := after.MatchedPackets - during.MatchedPackets; got != res2.Sent {
		t.Errorf("after the flaps: sink matched %d of %d", got, res2.Sent)
	}
	if after.MatchedForeignMAC != 0 {
		t.Errorf("%d frames with a wrong MAC", after.MatchedForeignMAC)
	}
	if err := r.eng.Stop(); err != nil && !errors.Is(err, ErrLeak) {
		t.Errorf("stop: %v", err)
	} else if err != nil {
		t.Errorf("frames leaked: %v", err)
	}
}

// TestBusyPoll: with BusyPoll every socket carries the busy-poll options,
// the workers never sleep in poll(2), and every frame is forwarded.
func TestBusyPoll(t *testing.T) {
	r := newRig(t, 2)
	r.startWith(t, func(c *Config) { c.BusyPoll = true })
	if got := r.eng.Idle(); got != "busy-poll" {
		t.Errorf("Idle() = %q, want busy-poll", got)
	}
	for ifindex, ports := range r.eng.ports {
		for q, p := range ports {
			for _, o := range []struct {
				opt, want int
				name      string
			}{{unix.SO_PREFER_BUSY_POLL, 1, "SO_PREFER_BUSY_POLL"}, {unix.SO_BUSY_POLL, 20, "SO_BUSY_POLL"},
				{unix.SO_BUSY_POLL_BUDGET, 256, "SO_BUSY_POLL_BUDGET"}} {
				v, err := unix.GetsockoptInt(p.s.FD(), unix.SOL_SOCKET, o.opt)
				if errors.Is(err, unix.ENOPROTOOPT) {
					continue // SO_BUSY_POLL_BUDGET is set-only: Start checked the set
				}
				if err != nil || v != o.want {
					t.Errorf("ifindex %d queue %d: %s = %d (%v), want %d", ifindex, q, o.name, v, err, o.want)
				}
			}
		}
	}
	sleeps := func() (n uint64) {
		for _, w := range r.eng.Stats() {
			n += w.Sleeps
		}
		return n
	}
	s0 := sleeps()
	res := r.send(t, gen.Config{Count: 20000, Rate: 50000})
	got, err := r.sink.WaitMatched(context.Background(), res.Sent, 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if got.MatchedPackets != res.Sent || got.MatchedForeignMAC != 0 {
		t.Errorf("sink matched %d of %d, %d with a wrong MAC", got.MatchedPackets, res.Sent, got.MatchedForeignMAC)
		r.account(t)
	}
	if n := sleeps() - s0; n != 0 {
		t.Errorf("busy-polling workers slept %d times in poll(2)", n)
	}
	if err := r.eng.Stop(); err != nil {
		t.Errorf("stop: %v", err)
	}
}

// TestHandoff: the worker forwards by the nexthop the program's lookup
// handed over only while that entry is unchanged. Frames wait on the rx
// rings (the worker is driven by hand); the nexthop changes under them;
// the worker must look them up again (no handoff) and send them by the
// entry as it is now; frames steered after the change use the handoff.
func TestHandoff(t *testing.T) {
	r := newRig(t, 1)
	w := r.manualWorker(t, Config{Batch: 64})
	eg := r.lab.Egress
	setNH := func(mac net.HardwareAddr) {
		if err := r.tb.SetNexthop(1, fib.Nexthop{Ifindex: eg.A.Index, SrcMAC: eg.A.MAC, DstMAC: mac, MTU: 1500, State: fib.Resolved}); err != nil {
			t.Fatal(err)
		}
	}
	drain := func() {
		for w.round() > 0 {
		}
	}
	var sent uint64
	for _, tc := range []struct {
		name        string
		change      net.HardwareAddr // nexthop 1's MAC set while the frames wait (nil: none)
		wantHandoff bool
		wantForeign bool
	}{
		{"unchanged", nil, true, false},
		{"changed while waiting", foreignMAC, false, true},
		{"steered after the change", nil, true, true},
		{"changed back", eg.B.MAC, false, false},
	} {
		before, _ := r.sink.Counters()
		h0, f0 := w.c.handoff.Load(), w.c.forwarded.Load()
		res := r.send(t, gen.Config{Count: 1000, Rate: 100000})
		sent += res.Sent
		if tc.change != nil {
			setNH(tc.change)
		}
		drain()
		got, err := r.sink.WaitMatched(context.Background(), sent, 2*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		handoff, fwd := w.c.handoff.Load()-h0, w.c.forwarded.Load()-f0
		foreign := got.MatchedForeignMAC - before.MatchedForeignMAC
		if fwd != res.Sent || got.MatchedPackets != sent {
			t.Errorf("%s: forwarded %d, sink matched %d in total; want %d and %d", tc.name, fwd, got.MatchedPackets, res.Sent, sent)
		}
		if want := map[bool]uint64{true: res.Sent}[tc.wantHandoff]; handoff != want {
			t.Errorf("%s: %d frames forwarded by the program's handoff, want %d", tc.name, handoff, want)
		}
		if want := map[bool]uint64{true: res.Sent}[tc.wantForeign]; foreign != want {
			t.Errorf("%s: %d frames to the changed MAC, want %d (sent by the entry as it is when forwarded)", tc.name, foreign, want)
		}
	}
}

// manualWorker makes an engine (cfg on the rig's lab, eth1 and eth2 in,
// eth3 out) with one worker that is not started: the test drives it by
// calling round. The engine stops at cleanup, and its accounting is
// checked then.
func (r *rig) manualWorker(tb testing.TB, cfg Config) *worker {
	tb.Helper()
	cfg.Namespace, cfg.Program, cfg.Table = r.lab.RouterNS, r.prog, r.tb
	cfg.Interfaces = []int{r.lab.Ingress[0].B.Index, r.lab.Ingress[1].B.Index}
	e := &Engine{cfg: cfg, ports: map[int][]*port{}, log: slog.New(slog.DiscardHandler)}
	u, err := xsk.NewUMEM(3*8192, 2048)
	if err != nil {
		tb.Fatal(err)
	}
	w := newWorker(e, 0, -1, u)
	e.workers = []*worker{w}
	tb.Cleanup(func() {
		w.drain() // not started, so Stop does not drain it
		if err := e.Stop(); err != nil {
			tb.Error(err)
		}
	})
	for _, ifindex := range []int{r.lab.Ingress[0].B.Index, r.lab.Ingress[1].B.Index, r.lab.Egress.A.Index} {
		if err := e.open(ifindex); err != nil {
			tb.Fatal(err)
		}
		if err := e.publish(ifindex); err != nil {
			tb.Fatal(err)
		}
	}
	return w
}

// TestRoundAllocs: a worker round that receives, looks up, rewrites and
// sends real frames allocates nothing.
func TestRoundAllocs(t *testing.T) {
	r := newRig(t, 1)
	w := r.manualWorker(t, Config{Batch: 64, Spin: time.Millisecond})
	res := r.send(t, gen.Config{Count: 1500, Rate: 100000})
	if w.round() == 0 { // warm up (first use of the scratch and of each ring)
		t.Fatal("no frame on the sockets")
	}
	before := w.c.forwarded.Load()
	allocs := testing.AllocsPerRun(10, func() { w.round() })
	moved := w.c.forwarded.Load() - before
	if moved < 10*64 {
		t.Fatalf("only %d frames forwarded during the measured rounds: the measure would not mean anything", moved)
	}
	if allocs != 0 {
		t.Errorf("%v allocations per round (%d frames forwarded in 11 rounds)", allocs, moved)
	}
	for w.round() > 0 {
	}
	got, _ := r.sink.WaitMatched(context.Background(), res.Sent, time.Second)
	if got.MatchedPackets != res.Sent {
		t.Errorf("sink matched %d of %d", got.MatchedPackets, res.Sent)
	}
}

// account logs where the frames went: the program's verdicts, each
// worker's counters, and each socket's XDP_STATISTICS (rx_ring_full: the
// worker did not drain its ring in time; fill_ring_empty: no frame to
// receive into), so a loss names its place.
func (r *rig) account(t *testing.T) {
	t.Helper()
	t.Logf("program: %v", r.counters(t).Map())
	for _, w := range r.eng.Stats() {
		t.Logf("worker %d cpu %d: rx %d forwarded %d drops %v kicks %d sleeps %d rounds %d user %v sys %v",
			w.Queue, w.CPU, w.RxPackets, w.Forwarded, w.Drops, w.Kicks, w.Sleeps, w.Rounds, w.UserTime, w.SystemTime)
		for _, s := range w.Sockets {
			t.Logf("  ifindex %d queue %d: rx %d tx %d kernel %+v", s.Ifindex, s.Queue, s.RxPackets, s.TxPackets, s.Kernel)
		}
	}
}
