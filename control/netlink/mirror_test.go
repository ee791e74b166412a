package netlink

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os/exec"
	"strings"
	"testing"
	"time"

	vnl "github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/xdprouter/xdprouter/dataplane/fib"
	"github.com/xdprouter/xdprouter/dataplane/xdp"
	"github.com/xdprouter/xdprouter/internal/labtest"
	"github.com/xdprouter/xdprouter/lab"
)

// env is a lab router namespace with a running mirror.
type env struct {
	l    *lab.Lab
	tb   *fib.Table
	m    *Mirror
	prog *xdp.Program
	h    *vnl.Handle
	r    *fib.Reader
}

func newEnv(t testing.TB, cfg Config) *env {
	t.Helper()
	l := labtest.Up(t, 0)
	e := &env{l: l}
	var err error
	if e.tb, err = fib.New(fib.Config{Nexthops: 1024, ECMPGroups: 64}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.tb.Close() })
	if e.prog, err = xdp.Load(e.tb, xdp.Options{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.prog.Close() })
	ns, err := netns.GetFromName(l.RouterNS)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ns.Close() })
	if e.h, err = vnl.NewHandleAt(ns); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(e.h.Close)
	cfg.Namespace, cfg.Dataplane = l.RouterNS, e.prog
	if e.m, err = New(e.tb, cfg); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- e.m.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("mirror: %v", err)
		}
		e.m.Close()
	})
	e.r = e.tb.NewReader()
	t.Cleanup(e.r.Close)
	return e
}

// view is a forwarding decision as the FIB gives it: the route type and,
// for forwarded routes, the set of (ifindex, MAC) it may leave by.
type view struct {
	typ  fib.RouteType
	outs map[string]bool
}

func (e *env) fibView(a netip.Addr) view {
	res := e.tb.Lookup(a)
	v := view{typ: res.Type(), outs: map[string]bool{}}
	var ids []uint32
	switch res.Type() {
	case fib.RouteNexthop:
		ids = []uint32{res.Index()}
	case fib.RouteECMP:
		e.r.Begin()
		for h := uint32(0); h < 64; h++ {
			if id, ok := e.r.ECMPMember(res.Index(), h); ok {
				ids = append(ids, id)
			}
		}
		e.r.End()
	}
	e.r.Begin()
	for _, id := range ids {
		if nh, ok := e.r.Nexthop(id); ok {
			mac := "unresolved"
			if nh.State == fib.Resolved {
				mac = net.HardwareAddr(nh.DstMAC[:]).String()
			}
			v.outs[fmt.Sprintf("%d/%s", nh.Ifindex, mac)] = true
		}
	}
	e.r.End()
	return v
}

// kernelView asks the kernel (like `ip route get ADDR`) and turns its
// answer into what the FIB must say: the type, and for a gateway on a
// served interface the (ifindex, neighbour MAC) it leaves by.
func (e *env) kernelView(a netip.Addr) (fib.RouteType, string, error) {
	rs, err := e.h.RouteGet(a.AsSlice())
	switch {
	case errors.Is(err, unix.ENETUNREACH):
		return fib.RouteNone, "", nil
	case errors.Is(err, unix.EHOSTUNREACH):
		return fib.RouteUnreachable, "", nil
	case errors.Is(err, unix.EACCES):
		return fib.RouteProhibit, "", nil
	case errors.Is(err, unix.EINVAL):
		return fib.RouteBlackhole, "", nil
	case err != nil:
		return 0, "", err
	}
	r := rs[0]
	if r.Type == unix.RTN_LOCAL {
		return fib.RouteLocal, "", nil
	}
	gw := r.Gw
	if gw == nil {
		gw = a.AsSlice() // connected: the destination is the neighbour
	}
	ns, _ := e.h.NeighList(r.LinkIndex, vnl.FAMILY_ALL)
	mac := "unresolved"
	for _, n := range ns {
		if n.IP.Equal(gw) && usable(n.State) {
			mac = n.HardwareAddr.String()
		}
	}
	out := fmt.Sprintf("%d/%s", r.LinkIndex, mac)
	if r.Gw == nil && mac == "unresolved" {
		return fib.RouteKernel, out, nil // connected, nobody resolved: the kernel's
	}
	return fib.RouteNexthop, out, nil
}

// agree waits until the FIB answers every probe as the kernel does.
func (e *env) agree(t *testing.T, when string, probes ...string) {
	t.Helper()
	var last string
	for deadline := time.Now().Add(3 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		last = ""
		for _, s := range probes {
			a := netip.MustParseAddr(s)
			kt, kout, err := e.kernelView(a)
			if err != nil {
				t.Fatalf("%s: route get %s: %v", when, a, err)
			}
			fv := e.fibView(a)
			ok := false
			switch kt {
			case fib.RouteNexthop:
				ok = (fv.typ == fib.RouteNexthop || fv.typ == fib.RouteECMP) && fv.outs[kout]
			case fib.RouteLocal:
				ok = fv.typ == fib.RouteLocal || fv.typ == fib.RouteKernel
			default:
				ok = fv.typ == kt
			}
			if !ok {
				last += fmt.Sprintf("\n  %s: kernel %v %s, fib %v %v", a, kt, kout, fv.typ, fv.outs)
			}
		}
		if last == "" {
			return
		}
	}
	t.Fatalf("%s: the FIB disagrees with the kernel:%s\nmirror stats %+v", when, last, e.m.Stats())
}

func (e *env) ip(t *testing.T, args ...string) {
	t.Helper()
	out, err := exec.Command("ip", append([]string{"-n", e.l.RouterNS}, args...)...).CombinedOutput()
	if err != nil {
		t.Fatalf("ip %s: %v %s", strings.Join(args, " "), err, out)
	}
}

func TestMirrorFollowsKernel(t *testing.T) {
	e := newEnv(t, Config{})
	probes := []string{"198.19.0.1", "198.19.255.254", "203.0.113.5", "203.0.114.9", "203.0.115.1", "203.0.116.1",
		"203.0.117.1", "203.0.118.1", "203.0.119.1", "198.18.3.2", "198.18.1.2", "198.18.1.1", "10.255.0.1",
		"2001:2:0:ff00::1", "2001:db8:5::1", "2001:db8:6::1", "2001:db8:7::1", "203.0.120.1", "203.0.121.1", "203.0.122.1"}
	e.agree(t, "initial dump", probes...)

	steps := []struct {
		name string
		cmds [][]string
	}{
		{"add via the lab gateway", [][]string{{"route", "add", "203.0.113.0/24", "via", "198.18.3.254", "proto", "213"}}},
		{"replace via an unresolved gateway", [][]string{{"route", "replace", "203.0.113.0/24", "via", "198.18.2.2", "proto", "213"}}},
		{"ecmp", [][]string{{"route", "add", "203.0.114.0/24", "proto", "213", "nexthop", "via", "198.18.3.254", "nexthop", "via", "198.18.2.2"}}},
		{"blackhole, unreachable, prohibit", [][]string{
			{"route", "add", "blackhole", "203.0.115.0/24", "proto", "213"},
			{"route", "add", "unreachable", "203.0.116.0/24", "proto", "213"},
			{"route", "add", "prohibit", "203.0.117.0/24", "proto", "213"}}},
		{"metrics: lowest wins", [][]string{
			{"route", "add", "203.0.118.0/24", "via", "198.18.3.254", "metric", "100", "proto", "213"},
			{"route", "add", "203.0.118.0/24", "via", "198.18.2.2", "metric", "50", "proto", "213"}}},
		{"metrics: delete the best", [][]string{{"route", "del", "203.0.118.0/24", "via", "198.18.2.2", "metric", "50"}}},
		{"other table is not mirrored", [][]string{{"route", "add", "203.0.119.0/24", "via", "198.18.3.254", "table", "100", "proto", "213"}}},
		{"ipv6 routes", [][]string{
			{"-6", "route", "add", "2001:db8:5::/48", "via", "2001:2:0:3::fe", "proto", "213"},
			{"-6", "route", "add", "blackhole", "2001:db8:6::/48", "proto", "213"}}},
		{"ipv6 multipath", [][]string{
			{"-6", "route", "add", "2001:db8:7::/48", "proto", "213", "nexthop", "via", "2001:2:0:3::fe", "nexthop", "via", "2001:2:0:2::2"}}},
		{"onlink gateway", [][]string{{"route", "add", "203.0.120.0/24", "via", "198.18.3.254", "dev", "eth3", "onlink", "proto", "213"}}},
		{"connected neighbour gets a host route", [][]string{{"neigh", "replace", "198.18.1.2", "lladdr", "02:00:00:00:01:02", "dev", "eth1", "nud", "reachable"}}},
		// FRR's zebra installs routes over kernel nexthop objects; with
		// net.ipv4.nexthop_compat_mode=1 (the default) the kernel reports
		// their gateways in the route and re-announces the routes when a
		// nexthop object changes.
		{"nexthop object (as FRR installs)", [][]string{
			{"nexthop", "add", "id", "10", "via", "198.18.3.254", "dev", "eth3"},
			{"route", "add", "203.0.121.0/24", "nhid", "10", "proto", "186"}}},
		{"nexthop object replaced: its routes follow", [][]string{{"nexthop", "replace", "id", "10", "via", "198.18.2.2", "dev", "eth2"}}},
		{"nexthop group object", [][]string{
			{"nexthop", "add", "id", "11", "via", "198.18.3.254", "dev", "eth3"},
			{"nexthop", "add", "id", "12", "group", "10/11"},
			{"route", "add", "203.0.122.0/24", "nhid", "12", "proto", "186"}}},
		{"nexthop group loses a member", [][]string{{"nexthop", "replace", "id", "12", "group", "11"}}},
		{"delete", [][]string{{"route", "del", "203.0.113.0/24"}, {"-6", "route", "del", "2001:db8:5::/48"}}},
	}
	for _, s := range steps {
		for _, c := range s.cmds {
			e.ip(t, c...)
		}
		e.agree(t, s.name, probes...)
	}
	// The route in table 100 must not be in the FIB (the kernel's main
	// table has no route for it).
	if v := e.fibView(netip.MustParseAddr("203.0.119.1")); v.typ != fib.RouteNone {
		t.Errorf("table 100 route mirrored from main: %v", v)
	}
	// A gateway nobody had resolved was resolved by the kernel on the
	// mirror's request.
	v := e.fibView(netip.MustParseAddr("203.0.114.9"))
	if !v.outs[fmt.Sprintf("%d/%s", e.l.Ingress[1].B.Index, e.l.Ingress[1].A.MAC)] {
		t.Errorf("ECMP member via 198.18.2.2 not resolved to gen2's MAC: %v", v.outs)
	}
}

func TestMirrorLinksAndAddresses(t *testing.T) {
	e := newEnv(t, Config{})
	e.ip(t, "route", "add", "203.0.113.0/24", "via", "198.18.2.2", "proto", "213")
	probes := []string{"203.0.113.1", "198.19.0.1"}
	e.agree(t, "route via eth2", probes...)

	e.ip(t, "link", "set", "eth2", "down")
	e.agree(t, "eth2 down", probes...)
	if v := e.fibView(netip.MustParseAddr("203.0.113.1")); v.typ == fib.RouteNexthop && !v.outs[fmt.Sprintf("%d/unresolved", e.l.Ingress[1].B.Index)] {
		t.Errorf("route via a down link still forwards: %v", v)
	}
	e.ip(t, "link", "set", "eth2", "up")
	e.ip(t, "route", "replace", "203.0.113.0/24", "via", "198.18.2.2", "proto", "213")
	e.agree(t, "eth2 up again", probes...)

	e.ip(t, "link", "set", "eth3", "mtu", "1400")
	var mtu uint16
	for deadline := time.Now().Add(3 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		res := e.tb.Lookup(netip.MustParseAddr("198.19.0.1"))
		e.r.Begin()
		nh, _ := e.r.Nexthop(res.Index())
		e.r.End()
		if mtu = nh.MTU; mtu == 1400 {
			break
		}
	}
	if mtu != 1400 {
		t.Errorf("nexthop MTU %d after eth3 mtu 1400", mtu)
	}

	local := netip.MustParseAddr("198.18.3.77")
	e.ip(t, "addr", "add", "198.18.3.77/24", "dev", "eth3")
	waitFor(t, "address added to the local map", func() bool { return e.prog.IsLocal(local) })
	e.ip(t, "addr", "del", "198.18.3.77/24", "dev", "eth3")
	waitFor(t, "address removed from the local map", func() bool { return !e.prog.IsLocal(local) })
	if !e.prog.IsLocal(netip.MustParseAddr("198.18.1.1")) || !e.prog.IsLocal(netip.MustParseAddr("2001:2:0:1::1")) {
		t.Error("the router's own addresses are not in the local map")
	}
}

func waitFor(t testing.TB, what string, ok func() bool) {
	t.Helper()
	for deadline := time.Now().Add(3 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		if ok() {
			return
		}
	}
	t.Fatalf("timed out waiting: %s", what)
}

// addRoutes installs n disjoint /25s under 100.64.0.0/10 via the lab's
// gateway (like `ip route add` each) and returns them.
func (e *env) addRoutes(t testing.TB, n int) []netip.Prefix {
	t.Helper()
	var ps []netip.Prefix
	gw := e.l.GatewayV4.AsSlice()
	for i := range n {
		p := netip.PrefixFrom(netip.AddrFrom4([4]byte{100, byte(64 + i>>9), byte(i >> 1), byte(i&1) * 128}), 25)
		r := &vnl.Route{LinkIndex: e.l.Egress.A.Index, Gw: gw, Protocol: lab.RouteProtocol,
			Dst: &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), 32)}}
		if n > 1<<17 {
			t.Fatalf("addRoutes: at most %d routes", 1<<17)
		}
		if err := e.h.RouteAdd(r); err != nil {
			t.Fatalf("route add %s: %v", p, err)
		}
		ps = append(ps, p)
	}
	return ps
}

// TestMirrorOverflowResyncs floods route updates at a mirror with a tiny
// receive buffer: notifications are lost (ENOBUFS), and the resync still
// brings the FIB to every route.
func TestMirrorOverflowResyncs(t *testing.T) {
	e := newEnv(t, Config{ReceiveBuffer: 4096})
	ps := e.addRoutes(t, 20000)
	waitFor(t, "FIB holds all 20000 flooded routes", func() bool {
		for _, p := range ps {
			if e.tb.Lookup(p.Addr()).Type() != fib.RouteNexthop {
				return false
			}
		}
		return true
	})
	st := e.m.Stats()
	t.Logf("mirror after the flood: %+v", st)
	if st.Resyncs == 0 {
		t.Error("no resync: the flood did not overflow the 4 KiB buffer, so this proved nothing")
	}
	waitFor(t, "mirror holds every kernel route", func() bool { return e.m.Stats().FIBEntries >= 20000 })
	// And deletes after a resync are followed too.
	for _, p := range ps[:100] {
		if err := e.h.RouteDel(&vnl.Route{Dst: &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), 32)}}); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, "deleted routes gone", func() bool {
		for _, p := range ps[:100] {
			if e.tb.Lookup(p.Addr()).Type() != fib.RouteNone {
				return false
			}
		}
		return true
	})
}

// TestCheckFindsDifferences: Check agrees with a freshly synced FIB and
// reports an entry changed behind the mirror's back.
func TestCheckFindsDifferences(t *testing.T) {
	e := newEnv(t, Config{})
	tb, err := fib.New(fib.Config{Nodes4: 1024, Leaves4: 2048, Nodes6: 1024, Leaves6: 2048, Nexthops: 64, ECMPGroups: 4})
	if err != nil {
		t.Fatal(err)
	}
	defer tb.Close()
	m, err := New(tb, Config{Namespace: e.l.RouterNS})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	if err := m.Sync(); err != nil {
		t.Fatal(err)
	}
	if d, err := m.Check(nil); err != nil || len(d) != 0 {
		t.Fatalf("fresh FIB: %v differences %+v", err, d)
	}
	bad := netip.MustParsePrefix("198.19.0.0/16")
	if err := tb.Insert(bad, fib.MakeResult(fib.RouteBlackhole, 0)); err != nil {
		t.Fatal(err)
	}
	d, err := m.Check(nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(d) != 1 || d[0].Addr != bad.Addr() {
		t.Fatalf("tampered FIB: differences %+v, want exactly %s", d, bad.Addr())
	}
	entries := m.Entries()
	found := false
	for _, en := range entries {
		if en.Prefix == bad && en.Type == "nexthop" && len(en.Nexthops) == 1 && en.Nexthops[0].State == "resolved" &&
			en.Nexthops[0].Dev == "eth3" && en.Nexthops[0].MAC == e.l.Egress.B.MAC.String() {
			found = true
		}
	}
	if !found {
		t.Errorf("entries do not show %s via eth3 resolved: %+v", bad, entries)
	}
}
