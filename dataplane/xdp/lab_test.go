package xdp

import (
	"context"
	"net"
	"net/netip"
	"os/exec"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/xdprouter/xdprouter/bench/gen"
	"github.com/xdprouter/xdprouter/bench/sink"
	"github.com/xdprouter/xdprouter/lab"
)

// attach puts the rig's program on the router's eth1 and eth2 with the
// xdp engine, as a bpf_link, and removes it at the end of the test.
func (r *rig) attach(t *testing.T) {
	t.Helper()
	err := lab.InNamespace(r.lab.RouterNS, func() error {
		for _, lk := range r.lab.Ingress {
			if err := r.prog.Attach(lk.B.Index, EngineXDP, AttachOptions{}); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	for _, lk := range r.lab.Ingress {
		for _, a := range []netip.Prefix{lk.B.V4, lk.B.V6} {
			if err := r.prog.AddLocal(a.Addr()); err != nil {
				t.Fatal(err)
			}
		}
	}
}

func (r *rig) counters(t *testing.T) Counters {
	t.Helper()
	sum, err := r.prog.SumCounters(r.lab.Ingress[0].B.Index, r.lab.Ingress[1].B.Index)
	if err != nil {
		t.Fatal(err)
	}
	return sum
}

func kernelForwarded(t *testing.T, ns string) uint64 {
	t.Helper()
	n, err := lab.KernelForwarded(ns)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

func allCPUs() []int {
	var c []int
	for i := range runtime.NumCPU() {
		c = append(c, i)
	}
	return c
}

// TestLabForwardExact: generator -> router (engine xdp) -> sink delivers
// exactly what was sent, and the router's kernel forwarded none of it.
func TestLabForwardExact(t *testing.T) {
	r := newRig(t, SourceFIB)
	r.attach(t)
	sk, err := sink.Attach(r.lab.SinkNS, []string{r.lab.Egress.B.Name}, sink.DefaultPort)
	if err != nil {
		t.Fatal(err)
	}
	defer sk.Close()
	k0 := kernelForwarded(t, r.lab.RouterNS)
	c0 := r.counters(t)
	var before sink.Counters
	var sent uint64
	for _, fam := range []int{4, 6} {
		src, dst := gen.DefaultPrefixes(fam)
		g, err := gen.New(gen.Config{Namespace: r.lab.GenNS, Links: gen.LabLinks(r.lab), Src: src, Dst: dst,
			Count: 20000, Rate: 50000, CPUs: allCPUs()})
		if err != nil {
			t.Fatal(err)
		}
		res, err := g.Run(context.Background())
		g.Close()
		if err != nil {
			t.Fatal(err)
		}
		after, err := sk.WaitMatched(context.Background(), before.MatchedPackets+res.Sent, time.Second)
		if err != nil {
			t.Fatal(err)
		}
		if got := after.MatchedPackets - before.MatchedPackets; got != res.Sent || res.Sent != 20000 {
			t.Errorf("IPv%d: sent %d, sink received %d", fam, res.Sent, got)
		}
		before = after
		sent += res.Sent
	}
	c1 := r.counters(t)
	if fwd := c1[Forwarded] - c0[Forwarded]; fwd != sent {
		t.Errorf("XDP forwarded %d of %d (counters moved: %v)", fwd, sent, diff(c0, c1))
	}
	if k := kernelForwarded(t, r.lab.RouterNS) - k0; k != 0 {
		t.Errorf("the router's kernel forwarded %d packets itself", k)
	}
}

// sh runs a command in a namespace and returns its combined output.
func sh(ns string, args ...string) (string, error) {
	out, err := exec.Command("ip", append([]string{"netns", "exec", ns}, args...)...).CombinedOutput()
	return string(out), err
}

// TestLabExceptionsReachLinux: ARP/ND, pings to the router and packets
// whose TTL expires are passed, and the kernel answers them.
func TestLabExceptionsReachLinux(t *testing.T) {
	r := newRig(t, SourceFIB)
	r.attach(t)
	for _, cmd := range [][]string{
		{"ip", "route", "add", "198.19.0.0/16", "via", "198.18.1.1", "proto", "213"},
		{"ip", "-6", "route", "add", "2001:2:0:ff00::/56", "via", "2001:2:0:1::1", "proto", "213"},
	} {
		if out, err := sh(r.lab.GenNS, cmd...); err != nil {
			t.Fatalf("%v: %v %s", cmd, err, out)
		}
	}
	c0 := r.counters(t)
	tests := []struct {
		name string
		args []string
		want string
	}{
		{"ping router", []string{"ping", "-c", "2", "-W", "2", "198.18.1.1"}, "2 received"},
		{"ping6 router", []string{"ping", "-6", "-c", "2", "-W", "2", "2001:2:0:1::1"}, "2 received"},
		{"ttl expires", []string{"ping", "-c", "1", "-W", "2", "-t", "1", "198.19.0.5"}, "Time to live exceeded"},
		{"hop limit expires", []string{"ping", "-6", "-c", "1", "-W", "2", "-t", "1", "2001:2:0:ff00::5"}, "Time exceeded"},
	}
	for _, tc := range tests {
		out, _ := sh(r.lab.GenNS, tc.args...)
		if !strings.Contains(out, tc.want) {
			t.Errorf("%s: %q not in\n%s", tc.name, tc.want, out)
		}
	}
	d := diff(c0, r.counters(t))
	for _, c := range []Counter{PassLocal, PassTTL} {
		if d[CounterNames[c]] == 0 {
			t.Errorf("%s did not move: %v", CounterNames[c], d)
		}
	}
	if d[CounterNames[PassARP]]+d[CounterNames[PassL2Multicast]] == 0 {
		t.Errorf("no ARP or neighbour solicitation reached the kernel: %v", d)
	}
	if d[CounterNames[Forwarded]] != 0 {
		t.Errorf("forwarded %d of the exception traffic", d[CounterNames[Forwarded]])
	}
}

// TestLabNeighbourResolved: a next hop the kernel has not resolved yet
// (sink0's real address, no permanent entry) gets the first packets passed
// to Linux, which resolves it; from then on XDP forwards.
func TestLabNeighbourResolved(t *testing.T) {
	r := newRig(t, SourceKernel)
	r.attach(t)
	h, err := netlink.NewHandleAt(mustNS(t, r.lab.RouterNS))
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	dst := netip.MustParsePrefix("198.19.128.0/17")
	route := &netlink.Route{LinkIndex: r.out.Index, Dst: ipNet(dst), Gw: r.lab.Egress.B.V4.Addr().AsSlice(), Protocol: lab.RouteProtocol}
	if err := h.RouteAdd(route); err != nil {
		t.Fatal(err)
	}
	sk, err := sink.Attach(r.lab.SinkNS, []string{r.lab.Egress.B.Name}, sink.DefaultPort)
	if err != nil {
		t.Fatal(err)
	}
	defer sk.Close()
	c0 := r.counters(t)
	g, err := gen.New(gen.Config{Namespace: r.lab.GenNS, Links: gen.LabLinks(r.lab)[:1],
		Src: netip.MustParsePrefix("10.0.0.0/8"), Dst: netip.MustParsePrefix("198.19.200.0/24"),
		Count: 2000, Rate: 2000, CPUs: []int{0}})
	if err != nil {
		t.Fatal(err)
	}
	defer g.Close()
	res, err := g.Run(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	got, err := sk.WaitMatched(context.Background(), res.Sent, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	d := diff(c0, r.counters(t))
	t.Logf("sent %d, sink %d, counters %v", res.Sent, got.MatchedPackets, d)
	if d[CounterNames[PassNeighbour]] == 0 {
		t.Errorf("no packet waited for the neighbour in the kernel: %v", d)
	}
	if fwd := d[CounterNames[Forwarded]]; fwd < res.Sent-20 {
		t.Errorf("XDP forwarded %d of %d after resolution", fwd, res.Sent)
	}
	if got.MatchedPackets < res.Sent-20 {
		t.Errorf("sink received %d of %d", got.MatchedPackets, res.Sent)
	}
	neighs, err := h.NeighList(r.out.Index, netlink.FAMILY_V4)
	if err != nil {
		t.Fatal(err)
	}
	resolved := false
	for _, n := range neighs {
		if n.IP.Equal(r.lab.Egress.B.V4.Addr().AsSlice()) && n.HardwareAddr.String() == r.sink.String() {
			resolved = true
		}
	}
	if !resolved {
		t.Errorf("the kernel did not resolve %s: %v", r.lab.Egress.B.V4.Addr(), neighs)
	}
}

func mustNS(t *testing.T, name string) netns.NsHandle {
	t.Helper()
	ns, err := netns.GetFromName(name)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ns.Close() })
	return ns
}

func ipNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}
