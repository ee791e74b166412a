package daemon

import (
	"bytes"
	"context"
	"encoding/hex"
	"fmt"
	"net"
	"net/netip"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/link"
	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"
	vnl "github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/xdprouter/xdprouter/bench/gen"
	"github.com/xdprouter/xdprouter/dataplane/xdp"
	"github.com/xdprouter/xdprouter/internal/labtest"
	"github.com/xdprouter/xdprouter/internal/netnsrun"
	"github.com/xdprouter/xdprouter/lab"
)

// TestDifferential: the kernel is the oracle. The same frames go through
// the router namespace with engine pass (plain Linux forwarding), engine
// xdp and engine afxdp, with each kernel setting switched on in turn; what
// arrives at the sink and what comes back to the sender (ICMP errors) is
// compared byte for byte, masking only what Linux itself varies (the IPv4
// ID and header checksum of packets the router originates). Zero
// differences.
func TestDifferential(t *testing.T) {
	l := labtest.Up(t, 2)
	in, out := l.Ingress[0], l.Egress
	// ICMP errors are rate limited per destination: off, so that the
	// three engines see the same answers to the same frames.
	shIn(t, l.RouterNS, "sysctl -qw net.ipv4.icmp_ratelimit=0 net.ipv6.icmp.ratelimit=0")
	// The router sends a subnet broadcast once: the kernel then keeps a
	// NOARP neighbour with the broadcast MAC for 198.18.3.255, which every
	// daemon below finds in its first dump (row 10).
	shIn(t, l.RouterNS, "ping -b -c 1 -W 1 198.18.3.255 >/dev/null 2>&1; ip neigh show nud noarp | grep -q '198.18.3.255 .*ff:ff:ff:ff:ff:ff'")
	// Settings are flipped while traffic flows: 20 kpps of background
	// through eth2 (to 198.19.250.0/24, left out of the comparison).
	bg, err := gen.New(gen.Config{Namespace: l.GenNS, Links: gen.LabLinks(l)[1:], CPUs: []int{1 % runtime.NumCPU()},
		Src: netip.MustParsePrefix("10.200.0.0/16"), Dst: backgroundDst, Rate: 20000})
	if err != nil {
		t.Fatal(err)
	}
	defer bg.Close()
	bgCtx, stopBG := context.WithCancel(context.Background())
	bgDone := make(chan error, 1)
	go func() { _, err := bg.Run(bgCtx); bgDone <- err }()
	defer func() {
		stopBG()
		if err := <-bgDone; err != nil {
			t.Errorf("background traffic: %v", err)
		}
	}()
	cases := differentialCases(t, l)
	results := map[string][]string{} // case -> outcome, for engine pass
	for _, engine := range []string{"pass", "xdp", "afxdp"} {
		t.Run(engine, func(t *testing.T) {
			cfg := Config{Namespace: l.RouterNS, Metrics: "off", Control: filepath.Join(t.TempDir(), "x.sock"),
				CPUs:       []int{0, 1 % runtime.NumCPU()},
				Interfaces: []Interface{{Name: in.B.Name, Engine: engine}, {Name: l.Ingress[1].B.Name, Engine: engine}, {Name: out.A.Name, Engine: engine}},
				FIB:        FIBConfig{Nodes4: 4096, Leaves4: 8192, Nodes6: 16384, Leaves6: 32768, Nexthops: 64}}
			d, err := Start(context.Background(), cfg)
			if err != nil {
				t.Fatal(err)
			}
			defer d.Stop()
			c0, _ := d.prog.SumCounters(in.B.Index)
			b0, _ := d.prog.SumCounters(l.Ingress[1].B.Index)
			for _, tc := range cases {
				before, _ := d.prog.SumCounters(in.B.Index)
				got := tc.run(t, l, d)
				after, _ := d.prog.SumCounters(in.B.Index)
				if engine != "pass" {
					for c, n := range tc.native {
						if c == xdp.Forwarded && engine == "afxdp" {
							c = xdp.ToAFXDP
						}
						if after[c]-before[c] != n {
							t.Errorf("%s: engine %s: %s moved by %d, want %d (handled natively): %v", tc.name, engine, xdp.CounterNames[c], after[c]-before[c], n, diffCounters(before, after))
						}
					}
				}
				if engine == "pass" {
					results[tc.name] = got
					if tc.wantSink >= 0 && countPrefix(got, "sink ") != tc.wantSink {
						t.Errorf("%s: Linux delivered %d frames to the sink, the case expects %d:\n%s", tc.name, countPrefix(got, "sink "), tc.wantSink, strings.Join(got, "\n"))
					}
					continue
				}
				if want := results[tc.name]; !slices.Equal(got, want) {
					t.Errorf("%s: engine %s differs from Linux\n got:\n%s\nwant:\n%s", tc.name, engine, strings.Join(got, "\n"), strings.Join(want, "\n"))
				}
			}
			c1, _ := d.prog.SumCounters(in.B.Index)
			b1, _ := d.prog.SumCounters(l.Ingress[1].B.Index)
			if rx, fast := b1[xdp.RxPackets]-b0[xdp.RxPackets], b1[xdp.Forwarded]-b0[xdp.Forwarded]+b1[xdp.ToAFXDP]-b0[xdp.ToAFXDP]; rx < 10000 || engine != "pass" && fast < 1000 {
				t.Errorf("background: eth2 received %d frames during the cases, %d by the fast path; want the 20 kpps flowing, through the fast path between settings", rx, fast)
			}
			fast := c1[xdp.Forwarded] - c0[xdp.Forwarded] + c1[xdp.ToAFXDP] - c0[xdp.ToAFXDP]
			t.Logf("engine %s: %d frames by the fast path, passed %v", engine, fast, diffCounters(c0, c1))
			if engine != "pass" && fast == 0 {
				t.Error("the fast path forwarded nothing: the comparison would prove nothing")
			}
		})
	}
}

// dcase is one setting and the frames sent with it on.
type dcase struct {
	name     string
	on, off  string // shell in the router namespace
	setup    func(t *testing.T) func()
	frames   [][]byte
	wantSink int // frames Linux delivers to the sink (-1: not checked)
	// native are counters of eth1 that must move by exactly this much
	// with the fast path engines: what the case shows handled natively
	// (forwarded counts to_afxdp with engine afxdp).
	native map[xdp.Counter]uint64
	// readNow re-reads the settings before sending and after: the kernel
	// sends no notification for this one (send_redirects, tcx).
	readNow bool
}

func (c dcase) run(t *testing.T, l *lab.Lab, d *Daemon) []string {
	t.Helper()
	if c.readNow {
		defer func() { _ = d.policy.Update() }() // after off and undo
	}
	if c.on != "" {
		defer shIn(t, l.RouterNS, c.off)
		shIn(t, l.RouterNS, c.on)
	}
	if c.setup != nil {
		defer c.setup(t)()
	}
	time.Sleep(50 * time.Millisecond) // notifications seen (the policy follows in ms)
	if c.readNow {
		// No notification (send_redirects, tcx): re-read every second; now.
		if err := d.policy.Update(); err != nil {
			t.Fatal(err)
		}
	}
	sink := capture(t, l.SinkNS, l.Egress.B.Index)
	back := capture(t, l.GenNS, l.Ingress[0].A.Index)
	send := packetSocket(t, l.GenNS, l.Ingress[0].A.Index)
	defer unix.Close(sink)
	defer unix.Close(back)
	defer unix.Close(send)
	for _, f := range c.frames {
		if err := unix.Sendto(send, f, 0, &unix.SockaddrLinklayer{Ifindex: l.Ingress[0].A.Index, Halen: 6}); err != nil {
			t.Fatalf("%s: send %d bytes: %v", c.name, len(f), err)
		}
	}
	time.Sleep(250 * time.Millisecond)
	routerMACs := map[string]bool{l.Ingress[0].B.MAC.String(): true, l.Egress.A.MAC.String(): true}
	var got []string
	for _, r := range []struct {
		fd   int
		name string
	}{{sink, "sink"}, {back, "back"}} {
		for _, f := range drain(r.fd) {
			if keep, masked := relevant(f, routerMACs); keep {
				got = append(got, r.name+" "+hex.EncodeToString(masked))
			}
		}
	}
	slices.Sort(got)
	return got
}

// differentialCases are the settings of the faithful-fast-path issue
// (rows in its table), each with frames that show the difference.
func differentialCases(t *testing.T, l *lab.Lab) []dcase {
	gen1, eth1, eth3 := l.Ingress[0].A, l.Ingress[0].B, l.Egress.A
	f := framer{src: gen1.MAC, dst: eth1.MAC}
	g4, g6 := gen1.V4.Addr().String(), gen1.V6.Addr().String()
	d4 := l.RouteV4.Addr().Next().String() // 198.19.0.1
	d6 := l.RouteV6.Addr().Next().String()
	other := net.HardwareAddr{0x02, 0xbb, 0, 0, 0, 9}
	return []dcase{
		{name: "forward", wantSink: 4, native: map[xdp.Counter]uint64{xdp.Forwarded: 4}, frames: [][]byte{f.v4("10.1.1.1", d4, 64, 0), f.v4("10.1.1.1", d4, 1500, 0),
			f.v6("2001:2:0:8000::1", d6, 64, 0), f.v6("2001:2:0:8000::1", d6, 1500, 0)}},
		{name: "1 padded and trailing bytes (row 12)", wantSink: 2, native: map[xdp.Counter]uint64{xdp.Forwarded: 2}, frames: [][]byte{f.v4("10.1.1.2", d4, 46, 14), f.v6("2001:2:0:8000::2", d6, 62, 100)}},
		{name: "2 another host's MAC (row 1)", wantSink: 0, frames: [][]byte{f.to(other).v4("10.1.1.3", d4, 64, 0), f.to(other).v6("2001:2:0:8000::3", d6, 64, 0)}},
		{name: "2b another router interface's MAC (row 1)", wantSink: 0, native: map[xdp.Counter]uint64{xdp.PassOtherHost: 2},
			frames: [][]byte{f.to(eth3.MAC).v4("10.1.1.4", d4, 64, 0), f.to(eth3.MAC).v6("2001:2:0:8000::4", d6, 64, 0)}},
		{name: "3 ttl 1: time exceeded", wantSink: 0, frames: [][]byte{f.ttl(1).v4(g4, d4, 64, 0), f.ttl(1).v6(g6, d6, 64, 0)}},
		{name: "4 no route: unreachable", wantSink: 0, frames: [][]byte{f.v4(g4, "203.0.113.5", 64, 0), f.v6(g6, "2001:db8::5", 64, 0)}},
		{name: "5 own address as source (row 9)", wantSink: 1, native: map[xdp.Counter]uint64{xdp.PassMartian: 1, xdp.Forwarded: 1},
			frames: [][]byte{f.v4(eth3.V4.Addr().String(), d4, 64, 0), f.v6(eth3.V6.Addr().String(), d6, 64, 0)}},
		{name: "6 ip_forward=0 (row 2)", on: "sysctl -qw net.ipv4.ip_forward=0", off: "sysctl -qw net.ipv4.ip_forward=1", wantSink: 1,
			frames: [][]byte{f.v4(g4, d4, 64, 0), f.v6(g6, d6, 64, 0)}},
		{name: "7 eth1 forwarding=0 (row 2)", on: "sysctl -qw net.ipv4.conf.eth1.forwarding=0", off: "sysctl -qw net.ipv4.conf.eth1.forwarding=1", wantSink: 0,
			frames: [][]byte{f.v4(g4, d4, 64, 0)}},
		{name: "8 ipv6 forwarding=0 (row 2)", on: "sysctl -qw net.ipv6.conf.all.forwarding=0", off: "sysctl -qw net.ipv6.conf.all.forwarding=1", wantSink: 1,
			frames: [][]byte{f.v4(g4, d4, 64, 0), f.v6(g6, d6, 64, 0)}},
		{name: "9 eth1 disable_ipv6 (row 2)", on: "sysctl -qw net.ipv6.conf.eth1.disable_ipv6=1", off: "sysctl -qw net.ipv6.conf.eth1.disable_ipv6=0 && ip -6 addr replace " + eth1.V6.String() + " dev eth1 nodad", wantSink: 1,
			frames: [][]byte{f.v4(g4, d4, 64, 0), f.v6("2001:2:0:8000::9", d6, 64, 0)}},
		{name: "10 rp_filter=1, spoofed source (row 3)", native: map[xdp.Counter]uint64{xdp.DropRPFilter: 1}, on: "sysctl -qw net.ipv4.conf.eth1.rp_filter=1", off: "sysctl -qw net.ipv4.conf.eth1.rp_filter=0", wantSink: 1,
			frames: [][]byte{f.v4("198.19.77.1", d4, 64, 0), f.v4(g4, d4, 64, 0)}},
		{name: "10b rp_filter=2 (loose)", on: "sysctl -qw net.ipv4.conf.eth1.rp_filter=2", off: "sysctl -qw net.ipv4.conf.eth1.rp_filter=0", wantSink: 2,
			frames: [][]byte{f.v4("198.19.77.2", d4, 64, 0), f.v4(g4, d4, 64, 0), f.v4("10.1.1.10", d4, 64, 0)}},
		{name: "10c rp_filter=1, blackhole route back", on: "sysctl -qw net.ipv4.conf.eth1.rp_filter=1 && ip route add blackhole 10.66.0.0/16",
			off: "ip route del blackhole 10.66.0.0/16; sysctl -qw net.ipv4.conf.eth1.rp_filter=0", wantSink: 0,
			frames: [][]byte{f.v4("10.66.1.1", d4, 64, 0)}},
		{name: "11 nftables forward drop (row 4)", wantSink: 2,
			on:     "nft add table inet t && nft 'add chain inet t f { type filter hook forward priority 0; }' && nft add rule inet t f ip daddr 198.19.0.0/24 drop && nft add rule inet t f ip6 daddr 2001:2:0:ff00::/64 drop",
			off:    "nft delete table inet t",
			frames: [][]byte{f.v4("10.1.1.11", d4, 64, 0), f.v4("10.1.1.11", "198.19.1.1", 64, 0), f.v6("2001:2:0:8000::11", d6, 64, 0), f.v6("2001:2:0:8000::11", "2001:2:0:ff01::1", 64, 0)}},
		{name: "12 nftables masquerade out of eth3 (row 5)", wantSink: 1,
			on:     "nft add table ip n && nft 'add chain ip n p { type nat hook postrouting priority 100; }' && nft add rule ip n p oifname eth3 masquerade",
			off:    "nft delete table ip n",
			frames: [][]byte{f.v4(g4, d4, 64, 0)}},
		{name: "13 tc ingress drop on eth1 (row 5b)", wantSink: 0, setup: tcDrop(t, l.RouterNS, eth1.Index),
			frames: [][]byte{f.v4("10.1.1.13", d4, 64, 0), f.v6("2001:2:0:8000::13", d6, 64, 0)}},
		{name: "13b tc egress drop on eth3 (row 5b)", wantSink: 0, setup: tcDropDir(t, l.RouterNS, eth3.Index, vnl.HANDLE_MIN_EGRESS),
			native: map[xdp.Counter]uint64{xdp.PassEgress: 2},
			frames: [][]byte{f.v4("10.1.1.13", d4, 64, 0), f.v6("2001:2:0:8000::13", d6, 64, 0)}},
		{name: "13c tcx egress drop on eth3 (row 5b)", wantSink: 0, setup: tcxDrop(l.RouterNS, eth3.Index, ebpf.AttachTCXEgress), readNow: true,
			native: map[xdp.Counter]uint64{xdp.PassEgress: 2},
			frames: [][]byte{f.v4("10.1.1.13", d4, 64, 0), f.v6("2001:2:0:8000::13", d6, 64, 0)}},
		{name: "13d tcx ingress drop on eth1 (row 5b)", wantSink: 0, setup: tcxDrop(l.RouterNS, eth1.Index, ebpf.AttachTCXIngress), readNow: true,
			native: map[xdp.Counter]uint64{xdp.PassPolicy: 2},
			frames: [][]byte{f.v4("10.1.1.13", d4, 64, 0), f.v6("2001:2:0:8000::13", d6, 64, 0)}},
		{name: "13e shaping qdisc on eth2: what leaves by eth3 stays fast", wantSink: 2,
			on:     "tc qdisc add dev " + l.Ingress[1].B.Name + " root tbf rate 10mbit burst 32kb latency 50ms",
			off:    "tc qdisc del dev " + l.Ingress[1].B.Name + " root",
			native: map[xdp.Counter]uint64{xdp.Forwarded: 2},
			frames: [][]byte{f.v4("10.1.1.13", d4, 64, 0), f.v6("2001:2:0:8000::13", d6, 64, 0)}},
		{name: "12b eth3 MTU 1400: small padded frames forwarded; over the MTU the kernel fragments (IPv4) or refuses (IPv6) (row 12)", wantSink: 4,
			on: "ip link set eth3 mtu 1400", off: "ip link set eth3 mtu 1500", native: map[xdp.Counter]uint64{xdp.Forwarded: 2, xdp.PassMTU: 2},
			frames: [][]byte{padTo(f.v4("10.1.1.12", d4, 38, 0), 1514), padTo(f.v6("2001:2:0:8000::12", d6, 62, 0), 1514),
				f.v4(g4, d4, 1401, 0), f.v6(g6, d6, 1401, 0)}},
		{name: "14 ip rule from 10/8 lookup 100 (row 6)", wantSink: 2, native: map[xdp.Counter]uint64{xdp.PassRule: 1, xdp.Forwarded: 1},
			on:     "ip neigh replace 198.18.3.253 lladdr 02:cc:00:00:00:01 dev eth3 nud permanent && ip route add 198.19.0.0/16 via 198.18.3.253 table 100 && ip rule add from 10.0.0.0/8 lookup 100",
			off:    "ip rule del from 10.0.0.0/8 lookup 100; ip route flush table 100; ip neigh del 198.18.3.253 dev eth3",
			frames: [][]byte{f.v4("10.1.1.14", d4, 64, 0), f.v4(g4, d4, 64, 0)}},
		{name: "14b ip -6 rule from 2001:2:0:8000::/64 lookup 100", wantSink: 2, native: map[xdp.Counter]uint64{xdp.PassRule: 1, xdp.Forwarded: 1},
			on:     "ip -6 neigh replace 2001:2:0:3::fd lladdr 02:cc:00:00:00:02 dev eth3 nud permanent && ip -6 route add 2001:2:0:ff00::/56 via 2001:2:0:3::fd table 100 && ip -6 rule add from 2001:2:0:8000::/64 lookup 100",
			off:    "ip -6 rule del from 2001:2:0:8000::/64 lookup 100; ip -6 route flush table 100; ip -6 neigh del 2001:2:0:3::fd dev eth3",
			frames: [][]byte{f.v6("2001:2:0:8000::14", d6, 64, 0), f.v6(g6, d6, 64, 0)}},
		{name: "14c ip rule on a mark the fast path cannot see", wantSink: 2, native: map[xdp.Counter]uint64{xdp.PassPolicy: 2},
			on: "ip rule add fwmark 0x7 lookup 100", off: "ip rule del fwmark 0x7 lookup 100",
			frames: [][]byte{f.v4("10.1.1.15", d4, 64, 0), f.v4(g4, d4, 64, 0)}},
		{name: "15 ip rule prohibit (row 7)", wantSink: 1, native: map[xdp.Counter]uint64{xdp.PassRule: 1, xdp.Forwarded: 1}, on: "ip rule add to 198.19.98.0/24 prohibit", off: "ip rule del to 198.19.98.0/24 prohibit",
			frames: [][]byte{f.v4(g4, "198.19.98.1", 64, 0), f.v4(g4, d4, 64, 0)}},
		{name: "17 AnyIP local route in table local (row 8)", wantSink: 1,
			on:     "ip link set lo up && ip route add local 198.19.99.0/24 dev lo && ip -6 route add local 2001:2:0:ff63::/64 dev lo",
			off:    "ip route del local 198.19.99.0/24 dev lo; ip -6 route del local 2001:2:0:ff63::/64 dev lo",
			native: map[xdp.Counter]uint64{xdp.PassMartian: 1},
			// ... and with a custom local route Linux validates every
			// source: one inside the AnyIP range is a martian.
			frames: [][]byte{f.v4(g4, "198.19.99.1", 64, 0), f.v6(g6, "2001:2:0:ff63::1", 64, 0), f.v4(g4, d4, 64, 0), f.v4("198.19.99.5", d4, 64, 0)}},
		{name: "18 hairpin: forwarded back and a redirect (row 11)", wantSink: 0,
			on:     "ip route add 198.19.200.0/24 via " + gen1.V4.Addr().String() + " && ip -6 route add 2001:2:0:ffc8::/64 via " + gen1.V6.Addr().String(),
			off:    "ip route del 198.19.200.0/24; ip -6 route del 2001:2:0:ffc8::/64",
			frames: [][]byte{f.v4(g4, "198.19.200.1", 64, 0), f.v6(g6, "2001:2:0:ffc8::1", 64, 0)}},
		{name: "19 hairpin without send_redirects (row 11)", wantSink: 0, native: map[xdp.Counter]uint64{xdp.Forwarded: 1}, readNow: true,
			on:     "sysctl -qw net.ipv4.conf.all.send_redirects=0 net.ipv4.conf.eth1.send_redirects=0 && ip route add 198.19.201.0/24 via " + gen1.V4.Addr().String(),
			off:    "ip route del 198.19.201.0/24; sysctl -qw net.ipv4.conf.all.send_redirects=1 net.ipv4.conf.eth1.send_redirects=1",
			frames: [][]byte{f.v4(g4, "198.19.201.1", 64, 0)}},
		{name: "20 IPv6 special sources (row 13)", wantSink: 0,
			frames: [][]byte{f.v6("fe80::99", d6, 64, 0), f.v6("ff02::1", d6, 64, 0), f.v6("::", d6, 64, 0), f.v6("::1", d6, 64, 0)}},
		{name: "21 IPv4 special sources", wantSink: 0,
			frames: [][]byte{f.v4("224.0.0.9", d4, 64, 0), f.v4("127.0.0.9", d4, 64, 0), f.v4("0.0.0.0", d4, 64, 0), f.v4("255.255.255.255", d4, 64, 0)}},
		{name: "22 malformed and truncated", wantSink: 0,
			frames: [][]byte{f.v4(g4, d4, 64, 0)[:30], f.v6(g6, d6, 64, 0)[:50], badChecksum(f.v4(g4, d4, 64, 0)), f.v4(g4, d4, 200, 0)[:120]}},
		{name: "16 directed broadcast (row 10)", wantSink: 0, frames: [][]byte{f.v4(g4, "198.18.3.255", 64, 0)}},
	}
}

// framer builds test frames from the generator's side.
type framer struct {
	src, dst net.HardwareAddr
	hops     uint8
}

func (f framer) to(mac net.HardwareAddr) framer { f.dst = mac; return f }
func (f framer) ttl(n uint8) framer             { f.hops = n; return f }

// v4 builds a UDP packet of size bytes (IP length) followed by extra
// bytes of Ethernet padding or trailer.
func (f framer) v4(src, dst string, size, extra int) []byte {
	ip := &layers.IPv4{Version: 4, IHL: 5, TTL: max(f.hops, 64*b2u(f.hops == 0)), Protocol: layers.IPProtocolUDP,
		SrcIP: net.ParseIP(src).To4(), DstIP: net.ParseIP(dst).To4(), Id: 7}
	return f.build(layers.EthernetTypeIPv4, ip, size-28, extra)
}

func (f framer) v6(src, dst string, size, extra int) []byte {
	ip := &layers.IPv6{Version: 6, HopLimit: max(f.hops, 64*b2u(f.hops == 0)), NextHeader: layers.IPProtocolUDP,
		SrcIP: net.ParseIP(src), DstIP: net.ParseIP(dst)}
	return f.build(layers.EthernetTypeIPv6, ip, size-48, extra)
}

func (f framer) build(et layers.EthernetType, ip gopacket.NetworkLayer, payload, extra int) []byte {
	udp := &layers.UDP{SrcPort: 4000, DstPort: 9}
	_ = udp.SetNetworkLayerForChecksum(ip)
	buf := gopacket.NewSerializeBuffer()
	pay := bytes.Repeat([]byte{0x5a}, payload)
	if err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true},
		&layers.Ethernet{SrcMAC: f.src, DstMAC: f.dst, EthernetType: et}, ip.(gopacket.SerializableLayer), udp, gopacket.Payload(pay)); err != nil {
		panic(err)
	}
	return append(append([]byte(nil), buf.Bytes()...), bytes.Repeat([]byte{0xee}, extra)...)
}

// padTo appends trailer bytes up to a frame length.
func padTo(f []byte, n int) []byte { return append(f, bytes.Repeat([]byte{0xee}, n-len(f))...) }

// badChecksum flips a bit of the IPv4 header checksum.
func badChecksum(f []byte) []byte { f[24] ^= 0x10; return f }

func b2u(b bool) uint8 {
	if b {
		return 1
	}
	return 0
}

// backgroundDst is where the background traffic goes.
var backgroundDst = netip.MustParsePrefix("198.19.250.0/24")

// relevant keeps IP frames (IPv4 broadcast included: directed broadcast
// must show) and drops the links' own chatter (ARP, IPv6 neighbour
// discovery and MLD, router solicitations); in packets the
// router originates it zeroes the IPv4 ID and header checksum, which
// Linux varies.
func relevant(f []byte, routerMACs map[string]bool) (bool, []byte) {
	if len(f) < 14 {
		return false, nil
	}
	f = slices.Clone(f)
	switch et := uint16(f[12])<<8 | uint16(f[13]); et {
	case 0x0800:
		if len(f) >= 34 && backgroundDst.Contains(netip.AddrFrom4([4]byte(f[30:34]))) {
			return false, nil
		}
		if len(f) >= 34 && routerMACs[net.HardwareAddr(f[6:12]).String()] && f[23] == 1 { // ICMP from the router
			f[18], f[19], f[24], f[25] = 0, 0, 0, 0
		}
		return true, f
	case 0x86dd:
		if f[0]&1 != 0 {
			return false, nil // multicast: ND, MLD, router solicitations
		}
		if len(f) >= 62 && f[20] == 58 {
			switch f[54] {
			case 130, 131, 132, 133, 134, 135, 136, 143:
				return false, nil
			}
		}
		return true, f
	}
	return false, nil
}

// capture opens an AF_PACKET socket on ifindex in ns that sees every
// frame received there.
func capture(t *testing.T, ns string, ifindex int) int {
	t.Helper()
	return packetSocketFor(t, ns, ifindex, true)
}

func packetSocket(t *testing.T, ns string, ifindex int) int {
	t.Helper()
	return packetSocketFor(t, ns, ifindex, false)
}

func packetSocketFor(t *testing.T, ns string, ifindex int, rx bool) int {
	t.Helper()
	fd := -1
	err := netnsrun.Do(ns, func() error {
		proto := 0 // send only
		if rx {
			proto = int(htons(unix.ETH_P_ALL))
		}
		s, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC|unix.SOCK_NONBLOCK, proto)
		if err != nil {
			return err
		}
		if rx {
			// The background traffic never reaches the socket (a full
			// receive buffer would drop the frames compared), and room
			// for what does.
			bd := backgroundDst.Addr().As4()
			filter := []unix.SockFilter{
				{Code: unix.BPF_LD | unix.BPF_H | unix.BPF_ABS, K: 12},
				{Code: unix.BPF_JMP | unix.BPF_JEQ | unix.BPF_K, Jt: 0, Jf: 3, K: 0x0800},
				{Code: unix.BPF_LD | unix.BPF_W | unix.BPF_ABS, K: 30},
				{Code: unix.BPF_ALU | unix.BPF_AND | unix.BPF_K, K: 0xffffff00},
				{Code: unix.BPF_JMP | unix.BPF_JEQ | unix.BPF_K, Jt: 1, Jf: 0, K: uint32(bd[0])<<24 | uint32(bd[1])<<16 | uint32(bd[2])<<8},
				{Code: unix.BPF_RET | unix.BPF_K, K: 0xffff},
				{Code: unix.BPF_RET | unix.BPF_K, K: 0},
			}
			if err := unix.SetsockoptSockFprog(s, unix.SOL_SOCKET, unix.SO_ATTACH_FILTER, &unix.SockFprog{Len: uint16(len(filter)), Filter: &filter[0]}); err != nil {
				unix.Close(s)
				return fmt.Errorf("attach the capture filter: %w", err)
			}
			_ = unix.SetsockoptInt(s, unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, 4<<20)
		}
		if err := unix.Bind(s, &unix.SockaddrLinklayer{Protocol: uint16(proto), Ifindex: ifindex}); err != nil {
			unix.Close(s)
			return err
		}
		fd = s
		return nil
	})
	if err != nil {
		t.Fatalf("packet socket in %s: %v", ns, err)
	}
	return fd
}

// drain reads every frame the socket holds that was received (not sent)
// on its interface.
func drain(fd int) [][]byte {
	var out [][]byte
	buf := make([]byte, 4096)
	for {
		n, from, err := unix.Recvfrom(fd, buf, unix.MSG_DONTWAIT)
		if err != nil {
			return out
		}
		if ll, ok := from.(*unix.SockaddrLinklayer); ok && ll.Pkttype == unix.PACKET_OUTGOING {
			continue
		}
		out = append(out, slices.Clone(buf[:n]))
	}
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }

// tcDrop returns a setup that puts a tc ingress filter on ifindex that
// drops every frame (a direct-action cls_bpf program returning
// TC_ACT_SHOT: gact is not in this kernel), and its undo.
func tcDrop(t *testing.T, ns string, ifindex int) func(t *testing.T) func() {
	return tcDropDir(t, ns, ifindex, vnl.HANDLE_MIN_INGRESS)
}

// tcDropDir is tcDrop on the ingress (vnl.HANDLE_MIN_INGRESS) or egress
// (vnl.HANDLE_MIN_EGRESS) hook.
func tcDropDir(t *testing.T, ns string, ifindex int, parent uint32) func(t *testing.T) func() {
	return func(t *testing.T) func() {
		prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{Type: ebpf.SchedCLS, License: "GPL",
			Instructions: asm.Instructions{asm.Mov.Imm(asm.R0, 2), asm.Return()}})
		if err != nil {
			t.Fatal(err)
		}
		err = netnsrun.Do(ns, func() error {
			q := &vnl.GenericQdisc{QdiscAttrs: vnl.QdiscAttrs{LinkIndex: ifindex, Handle: vnl.MakeHandle(0xffff, 0), Parent: vnl.HANDLE_CLSACT}, QdiscType: "clsact"}
			if err := vnl.QdiscAdd(q); err != nil {
				return fmt.Errorf("tc qdisc add clsact: %w", err)
			}
			return vnl.FilterAdd(&vnl.BpfFilter{FilterAttrs: vnl.FilterAttrs{LinkIndex: ifindex, Parent: parent,
				Handle: 1, Protocol: unix.ETH_P_ALL, Priority: 1}, Fd: prog.FD(), Name: "drop", DirectAction: true})
		})
		prog.Close()
		undo := func() {
			_ = netnsrun.Do(ns, func() error {
				return vnl.QdiscDel(&vnl.GenericQdisc{QdiscAttrs: vnl.QdiscAttrs{LinkIndex: ifindex, Handle: vnl.MakeHandle(0xffff, 0), Parent: vnl.HANDLE_CLSACT}, QdiscType: "clsact"})
			})
		}
		if err != nil {
			undo()
			t.Fatal(err)
		}
		return undo
	}
}

// tcxDrop returns a setup that attaches a tcx program dropping every
// frame (TC_ACT_SHOT) to ifindex's ingress or egress, and its undo.
func tcxDrop(ns string, ifindex int, attach ebpf.AttachType) func(t *testing.T) func() {
	return func(t *testing.T) func() {
		prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{Type: ebpf.SchedCLS, License: "GPL",
			Instructions: asm.Instructions{asm.Mov.Imm(asm.R0, 2), asm.Return()}})
		if err != nil {
			t.Fatal(err)
		}
		defer prog.Close()
		var l link.Link
		if err := netnsrun.Do(ns, func() error {
			var err error
			l, err = link.AttachTCX(link.TCXOptions{Interface: ifindex, Program: prog, Attach: attach})
			return err
		}); err != nil {
			t.Fatalf("attach tcx: %v", err)
		}
		return func() { l.Close() }
	}
}

func shIn(t *testing.T, ns, cmd string) {
	t.Helper()
	if out, err := exec.Command("ip", "netns", "exec", ns, "sh", "-c", cmd).CombinedOutput(); err != nil {
		t.Fatalf("%s: %v\n%s", cmd, err, out)
	}
}

func countPrefix(s []string, p string) int {
	n := 0
	for _, x := range s {
		if strings.HasPrefix(x, p) {
			n++
		}
	}
	return n
}

func diffCounters(a, b xdp.Counters) map[string]uint64 {
	d := map[string]uint64{}
	for i := range a {
		if b[i] != a[i] && xdp.Counter(i) != xdp.RxBytes && xdp.Counter(i) != xdp.ForwardedBytes {
			d[xdp.CounterNames[i]] = b[i] - a[i]
		}
	}
	return d
}
