package xdp

import (
	"bytes"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"

	"github.com/xdprouter/xdprouter/dataplane/fib"
	"github.com/xdprouter/xdprouter/internal/labtest"
	"github.com/xdprouter/xdprouter/lab"
)

// XDP actions.
const (
	actDrop     = 1
	actPass     = 2
	actRedirect = 4
)

// rig is a lab with a FIB and a loaded program, ready for BPF_PROG_RUN in
// the router namespace with eth1 as ingress.
type rig struct {
	lab  *lab.Lab
	tb   *fib.Table
	prog *Program
	in   lab.Iface // eth1
	out  lab.Iface // eth3
	sink net.HardwareAddr
	nh   map[uint32]fib.Nexthop
}

func newRig(t testing.TB, src Source) *rig {
	t.Helper()
	l := labtest.Up(t, 0)
	r := &rig{lab: l, in: l.Ingress[0].B, out: l.Egress.A, sink: l.Egress.B.MAC, nh: map[uint32]fib.Nexthop{}}
	var err error
	r.tb, err = fib.New(fib.Config{Nodes4: 1024, Leaves4: 2048, Nodes6: 1024, Leaves6: 2048, Nexthops: 16, ECMPGroups: 4})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.tb.Close() })
	opts := Options{Source: src, Static: StaticHop{Ifindex: r.out.Index, SrcMAC: r.out.MAC, DstMAC: r.sink}}
	r.prog, err = Load(r.tb, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.prog.Close() })
	mac := func(b byte) net.HardwareAddr { return net.HardwareAddr{0x02, 0xaa, 0, 0, 0, b} }
	r.setNH(t, 1, fib.Nexthop{Ifindex: r.out.Index, SrcMAC: r.out.MAC, DstMAC: r.sink, MTU: 1500, State: fib.Resolved})
	for i := uint32(2); i <= 4; i++ {
		r.setNH(t, i, fib.Nexthop{Ifindex: r.out.Index, SrcMAC: r.out.MAC, DstMAC: mac(byte(i)), MTU: 1500, State: fib.Resolved})
	}
	r.setNH(t, 5, fib.Nexthop{Ifindex: r.out.Index, SrcMAC: r.out.MAC, MTU: 1500, State: fib.Incomplete})
	r.setNH(t, 6, fib.Nexthop{Ifindex: r.out.Index, SrcMAC: r.out.MAC, DstMAC: r.sink, MTU: 1000, State: fib.Resolved})
	r.setNH(t, 7, fib.Nexthop{Ifindex: l.Ingress[1].B.Index, SrcMAC: r.out.MAC, DstMAC: r.sink, MTU: 1500, State: fib.Resolved}) // eth2: not in the devmap
	if err := r.tb.SetECMP(0, []uint32{1, 2, 3, 4}); err != nil {
		t.Fatal(err)
	}
	routes := map[string]fib.Result{
		"198.19.0.0/16":      fib.MakeResult(fib.RouteNexthop, 1),
		"2001:2:0:ff00::/56": fib.MakeResult(fib.RouteNexthop, 1),
		"198.19.1.0/24":      fib.MakeResult(fib.RouteECMP, 0),
		"2001:2:0:ff01::/64": fib.MakeResult(fib.RouteECMP, 0),
		"198.19.2.0/24":      fib.MakeResult(fib.RouteBlackhole, 0),
		"198.19.3.0/24":      fib.MakeResult(fib.RouteUnreachable, 0),
		"198.19.4.0/24":      fib.MakeResult(fib.RouteProhibit, 0),
		"198.19.5.0/24":      fib.MakeResult(fib.RouteNexthop, 5),
		"198.19.6.0/24":      fib.MakeResult(fib.RouteNexthop, 6),
		"198.19.7.1/32":      fib.MakeResult(fib.RouteLocal, 0),
		"198.19.8.0/24":      fib.MakeResult(fib.RouteKernel, 0),
		"198.19.9.0/24":      fib.MakeResult(fib.RouteNexthop, 7),
		"198.19.10.0/24":     fib.MakeResult(fib.RouteNexthop, 9), // nexthop never set
	}
	for p, res := range routes {
		if err := r.tb.Insert(netip.MustParsePrefix(p), res); err != nil {
			t.Fatal(err)
		}
	}
	err = lab.InNamespace(l.RouterNS, func() error {
		if err := r.prog.Configure(r.in.Index, EngineXDP); err != nil {
			return err
		}
		return r.prog.AddEgress(r.out.Index)
	})
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range []netip.Prefix{r.in.V4, r.in.V6} {
		if err := r.prog.AddLocal(a.Addr()); err != nil {
			t.Fatal(err)
		}
	}
	return r
}

func (r *rig) setNH(t testing.TB, id uint32, nh fib.Nexthop) {
	t.Helper()
	if err := r.tb.SetNexthop(id, nh); err != nil {
		t.Fatal(err)
	}
	r.nh[id] = nh
}

// run runs the program once on frame as if it arrived on eth1 queue q.
func (r *rig) run(t testing.TB, frame []byte) (uint32, []byte) {
	t.Helper()
	var ret uint32
	var out []byte
	err := lab.InNamespace(r.lab.RouterNS, func() error {
		opts := ebpf.RunOptions{
			Data: frame, DataOut: make([]byte, len(frame)+512),
			Context: xdpMd{DataEnd: uint32(len(frame)), IngressIfindex: uint32(r.in.Index)},
		}
		var err error
		ret, err = r.prog.Prog().Run(&opts)
		out = opts.DataOut
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return ret, out
}

// xdpMd is struct xdp_md.
type xdpMd struct {
	Data, DataEnd, DataMeta, IngressIfindex, RxQueueIndex, EgressIfindex uint32
}

// pkt describes a test frame; zero fields take defaults.
type pkt struct {
	src, dst   string
	ttl        uint8
	size       int // IP packet length, 0 = minimum
	dstMAC     net.HardwareAddr
	sport      uint16
	ipOptions  bool
	hopByHop   bool
	ethType    layers.EthernetType
	vlan       bool
	badCsum    bool
	mangle     func([]byte) []byte // after serialisation
	ipv6Proto  layers.IPProtocol
	dontUseUDP bool
}

func (r *rig) frame(p pkt) []byte {
	dstMAC := p.dstMAC
	if dstMAC == nil {
		dstMAC = r.in.MAC
	}
	srcMAC := r.lab.Ingress[0].A.MAC
	ttl := p.ttl
	if ttl == 0 {
		ttl = 64
	}
	eth := &layers.Ethernet{SrcMAC: srcMAC, DstMAC: dstMAC}
	var ls []gopacket.SerializableLayer
	if p.ethType != 0 {
		eth.EthernetType = p.ethType
		ls = append(ls, eth, gopacket.Payload(make([]byte, 46)))
		return serialize(ls...)
	}
	src, dst := netip.MustParseAddr(p.src), netip.MustParseAddr(p.dst)
	udp := &layers.UDP{SrcPort: layers.UDPPort(1000 + p.sport), DstPort: 9}
	if src.Is4() {
		eth.EthernetType = layers.EthernetTypeIPv4
		ip := &layers.IPv4{Version: 4, IHL: 5, TTL: ttl, Protocol: layers.IPProtocolUDP, SrcIP: src.AsSlice(), DstIP: dst.AsSlice()}
		if p.ipOptions {
			ip.Options = []layers.IPv4Option{{OptionType: 1}, {OptionType: 1}, {OptionType: 1}, {OptionType: 0}}
		}
		udp.SetNetworkLayerForChecksum(ip)
		ls = append(ls, eth, ip, udp)
	} else {
		eth.EthernetType = layers.EthernetTypeIPv6
		ip := &layers.IPv6{Version: 6, HopLimit: ttl, NextHeader: layers.IPProtocolUDP, SrcIP: src.AsSlice(), DstIP: dst.AsSlice()}
		udp.SetNetworkLayerForChecksum(ip)
		ls = append(ls, eth, ip)
		if p.hopByHop {
			ip.NextHeader = layers.IPProtocolIPv6HopByHop
			hbh := &layers.IPv6HopByHop{}
			hbh.NextHeader = layers.IPProtocolUDP
			hbh.Options = []*layers.IPv6HopByHopOption{{OptionType: 1, OptionLength: 4, OptionData: make([]byte, 4)}}
			ls = append(ls, hbh)
		}
		ls = append(ls, udp)
	}
	pay := 18
	if p.size > 0 {
		hdr := 28
		if !src.Is4() {
			hdr = 48
		}
		pay = p.size - hdr
	}
	ls = append(ls, gopacket.Payload(make([]byte, pay)))
	if p.vlan {
		eth.EthernetType = layers.EthernetTypeDot1Q
		tag := &layers.Dot1Q{VLANIdentifier: 7, Type: layers.EthernetTypeIPv4}
		if !src.Is4() {
			tag.Type = layers.EthernetTypeIPv6
		}
		ls = append([]gopacket.SerializableLayer{eth, tag}, ls[1:]...)
	}
	b := serialize(ls...)
	if p.badCsum {
		b[14+10] ^= 0x5a
	}
	if p.mangle != nil {
		b = p.mangle(b)
	}
	return b
}

func serialize(ls ...gopacket.SerializableLayer) []byte {
	buf := gopacket.NewSerializeBuffer()
	if err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true}, ls...); err != nil {
		panic(err)
	}
	return append([]byte(nil), buf.Bytes()...)
}

// forwarded is what the frame must look like after forwarding: the same
// packet with new MACs and TTL/hop limit one less, checksums recomputed by
// gopacket (independently of the program's incremental update).
func forwarded(t *testing.T, in []byte, src, dst net.HardwareAddr) []byte {
	t.Helper()
	p := gopacket.NewPacket(in, layers.LayerTypeEthernet, gopacket.Default)
	var ls []gopacket.SerializableLayer
	var nl gopacket.NetworkLayer
	for _, l := range p.Layers() {
		switch v := l.(type) {
		case *layers.Ethernet:
			v.SrcMAC, v.DstMAC = src, dst
			ls = append(ls, v)
		case *layers.IPv4:
			v.TTL--
			nl = v
			ls = append(ls, v)
		case *layers.IPv6:
			v.HopLimit--
			nl = v
			ls = append(ls, v)
		case *layers.UDP:
			v.SetNetworkLayerForChecksum(nl)
			ls = append(ls, v, gopacket.Payload(v.Payload))
		}
	}
	return serialize(ls...)
}

func TestClassify(t *testing.T) {
	r := newRig(t, SourceFIB)
	trunc := func(n int) func([]byte) []byte { return func(b []byte) []byte { return b[:n] } }
	set := func(off int, v byte) func([]byte) []byte {
		return func(b []byte) []byte { b[off] = v; return b }
	}
	tests := []struct {
		name    string
		p       pkt
		act     uint32
		counter Counter
		fwdMAC  net.HardwareAddr // for redirects: the expected destination MAC
	}{
		{"v4 forward", pkt{src: "10.1.2.3", dst: "198.19.0.77"}, actRedirect, Forwarded, r.sink},
		{"v4 forward 1500", pkt{src: "10.1.2.3", dst: "198.19.200.1", size: 1500}, actRedirect, Forwarded, r.sink},
		{"v4 forward ttl 2", pkt{src: "10.1.2.3", dst: "198.19.0.1", ttl: 2}, actRedirect, Forwarded, r.sink},
		{"v6 forward", pkt{src: "2001:2:0:8000::5", dst: "2001:2:0:ff00::77"}, actRedirect, Forwarded, r.sink},
		{"v6 forward 1500", pkt{src: "2001:2:0:8000::5", dst: "2001:2:0:ff00::1", size: 1500}, actRedirect, Forwarded, r.sink},
		{"v4 ttl 1", pkt{src: "10.1.2.3", dst: "198.19.0.77", ttl: 1}, actPass, PassTTL, nil},
		{"v6 hop limit 1", pkt{src: "2001:2:0:8000::5", dst: "2001:2:0:ff00::77", ttl: 1}, actPass, PassTTL, nil},
		{"v4 options", pkt{src: "10.1.2.3", dst: "198.19.0.77", ipOptions: true}, actPass, PassIPOptions, nil},
		{"v6 hop-by-hop", pkt{src: "2001:2:0:8000::5", dst: "2001:2:0:ff00::77", hopByHop: true}, actPass, PassExtHeader, nil},
		{"arp", pkt{ethType: layers.EthernetTypeARP}, actPass, PassARP, nil},
		{"lldp", pkt{ethType: layers.EthernetTypeLinkLayerDiscovery}, actPass, PassNonIP, nil},
		{"broadcast mac", pkt{src: "10.1.2.3", dst: "198.19.0.77", dstMAC: layers.EthernetBroadcast}, actPass, PassL2Multicast, nil},
		{"v4 multicast", pkt{src: "10.1.2.3", dst: "224.0.0.5"}, actPass, PassIPMulticast, nil},
		{"v4 broadcast", pkt{src: "10.1.2.3", dst: "255.255.255.255"}, actPass, PassIPMulticast, nil},
		{"v6 multicast", pkt{src: "2001:2:0:8000::5", dst: "ff02::1"}, actPass, PassIPMulticast, nil},
		{"v4 local", pkt{src: "10.1.2.3", dst: "198.18.1.1"}, actPass, PassLocal, nil},
		{"v6 local", pkt{src: "2001:2:0:8000::5", dst: "2001:2:0:1::1"}, actPass, PassLocal, nil},
		{"v4 local route", pkt{src: "10.1.2.3", dst: "198.19.7.1"}, actPass, PassLocal, nil},
		{"v4 loopback source", pkt{src: "127.0.0.1", dst: "198.19.0.77"}, actPass, PassMartian, nil},
		{"v4 zero source", pkt{src: "0.0.0.0", dst: "198.19.0.77"}, actPass, PassMartian, nil},
		{"v6 loopback destination", pkt{src: "2001:2:0:8000::5", dst: "::1"}, actPass, PassMartian, nil},
		{"v6 link-local source", pkt{src: "fe80::1", dst: "2001:2:0:ff00::77"}, actPass, PassLinkLocal, nil},
		{"v4 no route", pkt{src: "10.1.2.3", dst: "203.0.113.9"}, actPass, PassNoRoute, nil},
		{"v6 no route", pkt{src: "2001:2:0:8000::5", dst: "2001:db8::9"}, actPass, PassNoRoute, nil},
		{"unreachable", pkt{src: "10.1.2.3", dst: "198.19.3.1"}, actPass, PassUnreachable, nil},
		{"prohibit", pkt{src: "10.1.2.3", dst: "198.19.4.1"}, actPass, PassProhibit, nil},
		{"kernel route", pkt{src: "10.1.2.3", dst: "198.19.8.1"}, actPass, PassKernelRoute, nil},
		{"blackhole", pkt{src: "10.1.2.3", dst: "198.19.2.1"}, actDrop, DropBlackhole, nil},
		{"neighbour incomplete", pkt{src: "10.1.2.3", dst: "198.19.5.1"}, actPass, PassNeighbour, nil},
		{"nexthop missing", pkt{src: "10.1.2.3", dst: "198.19.10.1"}, actPass, PassNeighbour, nil},
		{"over mtu", pkt{src: "10.1.2.3", dst: "198.19.6.1", size: 1001}, actPass, PassMTU, nil},
		{"at mtu", pkt{src: "10.1.2.3", dst: "198.19.6.1", size: 1000}, actRedirect, Forwarded, r.sink},
		{"egress not in devmap", pkt{src: "10.1.2.3", dst: "198.19.9.1"}, actPass, RedirectErr, nil},
		{"vlan", pkt{src: "10.1.2.3", dst: "198.19.0.77", vlan: true}, actPass, PassVLAN, nil},
		{"v4 bad checksum", pkt{src: "10.1.2.3", dst: "198.19.0.77", badCsum: true}, actDrop, DropChecksum, nil},
		{"v4 truncated", pkt{src: "10.1.2.3", dst: "198.19.0.77", size: 200, mangle: trunc(14 + 100)}, actDrop, DropMalformed, nil},
		{"v4 header cut", pkt{src: "10.1.2.3", dst: "198.19.0.77", mangle: trunc(14 + 12)}, actDrop, DropMalformed, nil},
		{"v4 ihl 4", pkt{src: "10.1.2.3", dst: "198.19.0.77", mangle: set(14, 0x44)}, actDrop, DropMalformed, nil},
		{"v4 version 5", pkt{src: "10.1.2.3", dst: "198.19.0.77", mangle: set(14, 0x55)}, actDrop, DropMalformed, nil},
		{"v4 tot_len below header", pkt{src: "10.1.2.3", dst: "198.19.0.77", mangle: func(b []byte) []byte { b[16], b[17] = 0, 10; return b }}, actDrop, DropMalformed, nil},
		{"v6 payload past frame", pkt{src: "2001:2:0:8000::5", dst: "2001:2:0:ff00::77", size: 300, mangle: trunc(14 + 200)}, actDrop, DropMalformed, nil},
		{"v6 version 4", pkt{src: "2001:2:0:8000::5", dst: "2001:2:0:ff00::77", mangle: set(14, 0x40)}, actDrop, DropMalformed, nil},
		{"ethernet only", pkt{src: "10.1.2.3", dst: "198.19.0.77", mangle: trunc(14)}, actDrop, DropMalformed, nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			before, err := r.prog.Counters(r.in.Index)
			if err != nil {
				t.Fatal(err)
			}
			in := r.frame(tc.p)
			act, out := r.run(t, in)
			after, _ := r.prog.Counters(r.in.Index)
			if act != tc.act {
				t.Fatalf("action %d, want %d (counters moved: %v)", act, tc.act, diff(before, after))
			}
			if d := diff(before, after); len(d) != 3 || d[CounterNames[tc.counter]] != 1 {
				t.Errorf("counters moved %v, want rx_packets, rx_bytes and %s", d, CounterNames[tc.counter])
			}
			switch tc.act {
			case actRedirect:
				if want := forwarded(t, in, r.out.MAC, tc.fwdMAC); !bytes.Equal(out, want) {
					t.Errorf("forwarded frame\n got %x\nwant %x", out, want)
				}
			default:
				if !bytes.Equal(out, in) {
					t.Errorf("a frame not forwarded was changed\n got %x\nwant %x", out, in)
				}
			}
		})
	}
}

// diff returns the counters that changed, by name; forwarded_bytes is
// folded into forwarded.
func diff(a, b Counters) map[string]uint64 {
	d := map[string]uint64{}
	for i := range a {
		if Counter(i) == ForwardedBytes {
			continue
		}
		if b[i] != a[i] {
			d[CounterNames[i]] = b[i] - a[i]
		}
	}
	return d
}

func TestEngines(t *testing.T) {
	r := newRig(t, SourceFIB)
	in := r.frame(pkt{src: "10.1.2.3", dst: "198.19.0.77"})
	for _, tc := range []struct {
		e       Engine
		act     uint32
		counter Counter
	}{
		{EnginePass, actPass, PassEngine},
		{EngineAFXDP, actPass, PassNoXSK}, // no socket registered: to the kernel, never dropped
		{EngineXDP, actRedirect, Forwarded},
	} {
		if err := r.prog.SetEngine(r.in.Index, tc.e); err != nil {
			t.Fatal(err)
		}
		before, _ := r.prog.Counters(r.in.Index)
		act, _ := r.run(t, in)
		after, _ := r.prog.Counters(r.in.Index)
		if act != tc.act || after[tc.counter] != before[tc.counter]+1 {
			t.Errorf("engine %s: action %d, counters %v; want %d and %s", tc.e, act, diff(before, after), tc.act, CounterNames[tc.counter])
		}
	}
}

// TestECMP sends many flows to an ECMP route: every member is used, a flow
// always takes the same member, and the member is the one Go computes.
func TestECMP(t *testing.T) {
	r := newRig(t, SourceFIB)
	rd := r.tb.NewReader()
	defer rd.Close()
	for _, fam := range []struct{ src, dst string }{{"10.9.0.%d", "198.19.1.%d"}, {"2001:2:0:8000::%x", "2001:2:0:ff01::%x"}} {
		used := map[string]int{}
		for i := range 64 {
			p := pkt{src: fmt.Sprintf(fam.src, i+1), dst: fmt.Sprintf(fam.dst, 200-i), sport: uint16(i)}
			in := r.frame(p)
			var first []byte
			for range 3 {
				act, out := r.run(t, in)
				if act != actRedirect {
					t.Fatalf("flow %d: action %d", i, act)
				}
				if first == nil {
					first = out
				} else if !bytes.Equal(first, out) {
					t.Fatalf("flow %d took two paths", i)
				}
			}
			mac := net.HardwareAddr(first[0:6])
			used[mac.String()]++
			// Go's choice for the same flow.
			src, dst := netip.MustParseAddr(p.src), netip.MustParseAddr(p.dst)
			var h uint32
			if src.Is4() {
				s, d := src.As4(), dst.As4()
				h = fib.FlowHash4(be32(s[:]), be32(d[:]), 17, 1000+p.sport, 9)
			} else {
				s, d := src.As16(), dst.As16()
				h = fib.FlowHash6(&s, &d, 17, 1000+p.sport, 9)
			}
			rd.Begin()
			id, ok := rd.ECMPMember(0, h)
			rd.End()
			if !ok || r.nh[id].DstMAC.String() != mac.String() {
				t.Fatalf("flow %d: kernel chose %s, Go chooses nexthop %d (%s)", i, mac, id, r.nh[id].DstMAC)
			}
		}
		if len(used) != 4 {
			t.Errorf("64 flows used %d of 4 members: %v", len(used), used)
		}
	}
}

func be32(b []byte) uint32 {
	return uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3])
}

// TestSources checks the kernel-FIB and static variants forward the same
// frame to the same place as our FIB does (the lab's kernel routes
// 198.19.0.0/16 via a neighbour with the sink's MAC).
func TestSources(t *testing.T) {
	for _, src := range []Source{SourceKernel, SourceStatic} {
		t.Run(src.String(), func(t *testing.T) {
			r := newRig(t, src)
			for _, p := range []pkt{
				{src: "10.1.2.3", dst: "198.19.0.77"},
				{src: "2001:2:0:8000::5", dst: "2001:2:0:ff00::77"},
			} {
				in := r.frame(p)
				act, out := r.run(t, in)
				if act != actRedirect {
					t.Fatalf("%s: action %d", p.dst, act)
				}
				if want := forwarded(t, in, r.out.MAC, r.sink); !bytes.Equal(out, want) {
					t.Errorf("%s: got %x\nwant %x", p.dst, out, want)
				}
			}
			// Exceptions do not depend on the source.
			if act, _ := r.run(t, r.frame(pkt{src: "10.1.2.3", dst: "198.19.0.77", ttl: 1})); act != actPass {
				t.Errorf("ttl 1: action %d", act)
			}
			if src == SourceKernel {
				if act, _ := r.run(t, r.frame(pkt{src: "10.1.2.3", dst: "203.0.113.1"})); act != actPass {
					t.Errorf("no kernel route: action %d", act)
				}
			}
		})
	}
}

// TestPolicy: each kernel setting the control plane reads makes the
// program do what Linux does with the frame: pass it to the kernel (with
// the setting's reason), drop it, or forward it trimmed to the IP length.
func TestPolicy(t *testing.T) {
	r := newRig(t, SourceFIB)
	other := net.HardwareAddr{0x02, 0xbb, 0, 0, 0, 1}
	v4 := pkt{src: "10.1.2.3", dst: "198.19.0.77"}
	v6 := pkt{src: "2001:2:0:8000::5", dst: "2001:2:0:ff00::77"}
	pad := func(n int) func([]byte) []byte {
		return func(b []byte) []byte { return append(b, bytes.Repeat([]byte{0xee}, n)...) }
	}
	with := func(p pkt, f func(*pkt)) pkt { f(&p); return p }
	tests := []struct {
		name    string
		flags   PolicyFlag
		p       pkt
		act     uint32
		counter Counter
		trimmed int // bytes the forwarded frame loses
	}{
		{"v4 no policy", 0, v4, actRedirect, Forwarded, 0},
		{"v4 forwarding off", NoForward4, v4, actPass, PassNoForwarding, 0},
		{"v4 forwarding off, v6 still forwarded", NoForward4, v6, actRedirect, Forwarded, 0},
		{"v6 forwarding off", NoForward6, v6, actPass, PassNoForwarding, 0},
		{"v6 forwarding off, local still delivered", NoForward6, with(v6, func(p *pkt) { p.dst = "2001:2:0:1::1" }), actPass, PassLocal, 0},
		{"v4 to the kernel", Kernel4, v4, actPass, PassPolicy, 0},
		{"v4 to the kernel, even malformed", Kernel4, with(v4, func(p *pkt) { p.badCsum = true }), actPass, PassPolicy, 0},
		{"v6 to the kernel", Kernel6, v6, actPass, PassPolicy, 0},
		{"rp_filter strict, no route back: the kernel decides", RPFilter, v4, actPass, PassRPFilter, 0},
		{"rp_filter strict, route back by the ingress", RPFilter, with(v4, func(p *pkt) { p.src = "198.19.11.9" }), actRedirect, Forwarded, 0},
		{"rp_filter strict, route back by another interface", RPFilter, with(v4, func(p *pkt) { p.src = "198.19.0.9" }), actDrop, DropRPFilter, 0},
		{"rp_filter loose, route back by another interface", RPFilter | RPLoose, with(v4, func(p *pkt) { p.src = "198.19.0.9" }), actRedirect, Forwarded, 0},
		{"rp_filter strict, ECMP back by other interfaces", RPFilter, with(v4, func(p *pkt) { p.src = "198.19.1.9" }), actDrop, DropRPFilter, 0},
		{"rp_filter loose, ECMP back", RPFilter | RPLoose, with(v4, func(p *pkt) { p.src = "198.19.1.9" }), actRedirect, Forwarded, 0},
		{"rp_filter loose, blackhole back", RPFilter | RPLoose, with(v4, func(p *pkt) { p.src = "198.19.2.9" }), actDrop, DropRPFilter, 0},
		{"rp_filter loose, prohibit back", RPFilter | RPLoose, with(v4, func(p *pkt) { p.src = "198.19.4.9" }), actDrop, DropRPFilter, 0},
		{"rp_filter loose, kernel route back", RPFilter | RPLoose, with(v4, func(p *pkt) { p.src = "198.19.8.9" }), actPass, PassRPFilter, 0},
		{"rp_filter strict, unreachable destination: no source check", RPFilter, with(v4, func(p *pkt) { p.src = "198.19.0.9"; p.dst = "198.19.3.1" }), actPass, PassUnreachable, 0},
		{"v4 own source", 0, with(v4, func(p *pkt) { p.src = "198.18.1.1" }), actPass, PassMartian, 0},
		{"v4 source in table local, custom routes: Linux validates it", SourceRoute, with(v4, func(p *pkt) { p.src = "198.19.7.1" }), actPass, PassMartian, 0},
		{"v4 source in table local, no custom routes: Linux does not look", 0, with(v4, func(p *pkt) { p.src = "198.19.7.1" }), actRedirect, Forwarded, 0},
		{"v4 unicast source, custom routes", SourceRoute, v4, actRedirect, Forwarded, 0},
		{"other host's MAC", MACCheck, with(v4, func(p *pkt) { p.dstMAC = other }), actPass, PassOtherHost, 0},
		{"other host's MAC, IPv6", MACCheck, with(v6, func(p *pkt) { p.dstMAC = other }), actPass, PassOtherHost, 0},
		{"v6 own source: Linux forwards it", 0, with(v6, func(p *pkt) { p.src = "2001:2:0:1::1" }), actRedirect, Forwarded, 0},
		{"own MAC", MACCheck, v4, actRedirect, Forwarded, 0},
		{"v4 padded", 0, with(v4, func(p *pkt) { p.mangle = pad(7) }), actRedirect, Forwarded, 7},
		{"v6 trailer", 0, with(v6, func(p *pkt) { p.mangle = pad(100) }), actRedirect, Forwarded, 100},
		{"v4 hairpin, send_redirects", Redirects, with(v4, func(p *pkt) { p.dst = "198.19.11.1" }), actPass, PassRedirect, 0},
		{"v4 hairpin, no redirects", 0, with(v4, func(p *pkt) { p.dst = "198.19.11.1" }), actRedirect, Forwarded, 0},
		{"v6 hairpin", 0, with(v6, func(p *pkt) { p.dst = "2001:2:0:ff0b::1" }), actPass, PassRedirect, 0},
	}
	// Routes back out of the ingress interface, for the hairpin cases.
	r.setNH(t, 8, fib.Nexthop{Ifindex: r.in.Index, SrcMAC: r.in.MAC, DstMAC: r.sink, MTU: 1500, State: fib.Resolved})
	for _, p := range []string{"198.19.11.0/24", "2001:2:0:ff0b::/64"} {
		if err := r.tb.Insert(netip.MustParsePrefix(p), fib.MakeResult(fib.RouteNexthop, 8)); err != nil {
			t.Fatal(err)
		}
	}
	if err := lab.InNamespace(r.lab.RouterNS, func() error { return r.prog.AddEgress(r.in.Index) }); err != nil {
		t.Fatal(err)
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if err := r.prog.SetPolicy(r.in.Index, Policy{Flags: tc.flags, MAC: r.in.MAC}); err != nil {
				t.Fatal(err)
			}
			before, _ := r.prog.Counters(r.in.Index)
			in := r.frame(tc.p)
			act, out := r.run(t, in)
			after, _ := r.prog.Counters(r.in.Index)
			if act != tc.act || after[tc.counter] != before[tc.counter]+1 {
				t.Fatalf("action %d, counters moved %v; want %d and %s", act, diff(before, after), tc.act, CounterNames[tc.counter])
			}
			if tc.act != actRedirect {
				return
			}
			egress := r.out.MAC
			if strings.HasPrefix(tc.name, "v4 hairpin") {
				egress = r.in.MAC
			}
			want := forwarded(t, in[:len(in)-tc.trimmed], egress, r.sink)
			if !bytes.Equal(out, want) {
				t.Errorf("forwarded frame\n got %x\nwant %x", out, want)
			}
			if got := after[ForwardedBytes] - before[ForwardedBytes]; got != uint64(len(want)) {
				t.Errorf("forwarded_bytes moved by %d, want %d (the trimmed length)", got, len(want))
			}
		})
	}
	if err := r.prog.SetPolicy(r.in.Index, Policy{Flags: MACCheck}); err == nil {
		t.Error("a MAC check without a MAC was accepted")
	}
	// Egress policy: frames routed out of an interface with tc egress
	// filters or a shaping qdisc (EgressKernel) go to the kernel, when
	// the ingress is told to look (EgressCheck); other egresses stay fast.
	if err := lab.InNamespace(r.lab.RouterNS, func() error { return r.prog.Configure(r.out.Index, EngineXDP) }); err != nil {
		t.Fatal(err)
	}
	if err := r.prog.SetPolicy(r.out.Index, Policy{Flags: EgressKernel}); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name    string
		flags   PolicyFlag
		p       pkt
		act     uint32
		counter Counter
	}{
		{"egress with tc egress", EgressCheck, v4, actPass, PassEgress},
		{"egress with tc egress, IPv6", EgressCheck, v6, actPass, PassEgress},
		{"egress with tc egress, ingress not told to look", 0, v4, actRedirect, Forwarded},
		{"another egress stays fast", EgressCheck, with(v4, func(p *pkt) { p.dst = "198.19.11.1" }), actRedirect, Forwarded},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if err := r.prog.SetPolicy(r.in.Index, Policy{Flags: tc.flags}); err != nil {
				t.Fatal(err)
			}
			before, _ := r.prog.Counters(r.in.Index)
			act, _ := r.run(t, r.frame(tc.p))
			after, _ := r.prog.Counters(r.in.Index)
			if act != tc.act || after[tc.counter] != before[tc.counter]+1 {
				t.Fatalf("action %d, counters moved %v; want %d and %s", act, diff(before, after), tc.act, CounterNames[tc.counter])
			}
		})
	}
}

// TestLocalFilter: the bit filter in front of local4 (filled by Go,
// read by the program) never hides a local address, as addresses come
// and go, and a removed address is forwarded again.
func TestLocalFilter(t *testing.T) {
	r := newRig(t, SourceFIB)
	var addrs []netip.Addr
	for i := range 200 {
		addrs = append(addrs, netip.AddrFrom4([4]byte{198, 19, 50 + byte(i/100), byte(i%100 + 1)}))
	}
	for _, a := range addrs {
		if err := r.prog.AddLocal(a); err != nil {
			t.Fatal(err)
		}
	}
	check := func(a netip.Addr, want Counter) {
		t.Helper()
		before, _ := r.prog.Counters(r.in.Index)
		r.run(t, r.frame(pkt{src: "10.1.2.3", dst: a.String()}))
		after, _ := r.prog.Counters(r.in.Index)
		if after[want] != before[want]+1 {
			t.Errorf("%s: counters moved %v, want %s", a, diff(before, after), CounterNames[want])
		}
	}
	for _, a := range addrs {
		check(a, PassLocal)
	}
	for _, a := range addrs[:100] {
		if err := r.prog.RemoveLocal(a); err != nil {
			t.Fatal(err)
		}
	}
	for i, a := range addrs {
		if i < 100 {
			check(a, Forwarded)
		} else {
			check(a, PassLocal)
		}
	}
}

// TestPolicyRules: a policy rule's selector (from, to, iif) sends exactly
// the frames it selects to the kernel; the others are forwarded.
func TestPolicyRules(t *testing.T) {
	r := newRig(t, SourceFIB)
	pfx := netip.MustParsePrefix
	v4 := []PolicyRule{{Src: pfx("10.0.0.0/8")}, {Dst: pfx("198.19.98.0/24"), Iif: r.in.Index}, {Dst: pfx("198.19.97.0/24"), Iif: r.out.Index}}
	v6 := []PolicyRule{{Src: pfx("2001:2::/32"), Dst: pfx("2001:2:0:ff00::/64")}}
	if err := r.prog.SetPolicyRules(v4, v6); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		p    pkt
		want Counter
	}{
		{pkt{src: "10.1.2.3", dst: "198.19.0.77"}, PassRule},
		{pkt{src: "11.1.2.3", dst: "198.19.0.77"}, Forwarded},
		{pkt{src: "11.1.2.3", dst: "198.19.98.1"}, PassRule},  // iif is the ingress
		{pkt{src: "11.1.2.3", dst: "198.19.97.1"}, Forwarded}, // another iif
		{pkt{src: "2001:2:0:8000::5", dst: "2001:2:0:ff00::77"}, PassRule},
		{pkt{src: "2001:3::5", dst: "2001:2:0:ff00::77"}, Forwarded},
		{pkt{src: "2001:2:0:8000::5", dst: "2001:2:0:ff01::77"}, Forwarded}, // outside the /64
	} {
		before, _ := r.prog.Counters(r.in.Index)
		r.run(t, r.frame(tc.p))
		after, _ := r.prog.Counters(r.in.Index)
		if after[tc.want] != before[tc.want]+1 {
			t.Errorf("%s -> %s: counters moved %v, want %s", tc.p.src, tc.p.dst, diff(before, after), CounterNames[tc.want])
		}
	}
	// With rules, Linux validates a source through them (the reversed
	// flow): rp_filter goes to the kernel rather than judging on one FIB.
	if err := r.prog.SetPolicy(r.in.Index, Policy{Flags: RPFilter}); err != nil {
		t.Fatal(err)
	}
	before, _ := r.prog.Counters(r.in.Index)
	r.run(t, r.frame(pkt{src: "198.19.0.9", dst: "198.19.0.77"})) // main's route back leaves by another interface
	if after, _ := r.prog.Counters(r.in.Index); after[PassRPFilter] != before[PassRPFilter]+1 {
		t.Errorf("rp_filter with policy rules: counters moved %v, want pass_rp_filter", diff(before, after))
	}
	if err := r.prog.SetPolicy(r.in.Index, Policy{}); err != nil {
		t.Fatal(err)
	}
	if err := r.prog.SetPolicyRules(nil, nil); err != nil {
		t.Fatal(err)
	}
	before, _ = r.prog.Counters(r.in.Index)
	r.run(t, r.frame(pkt{src: "10.1.2.3", dst: "198.19.0.77"}))
	if after, _ := r.prog.Counters(r.in.Index); after[Forwarded] != before[Forwarded]+1 {
		t.Errorf("rules removed: counters moved %v, want forwarded", diff(before, after))
	}
	if err := r.prog.SetPolicyRules(make([]PolicyRule, MaxPolicyRules+1), nil); err == nil {
		t.Error("more rules than the program matches were accepted")
	}
}
