package gen

import (
	"crypto/rand"
	"net"
	"net/netip"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"

	"github.com/xdprouter/xdprouter/internal/testutil"
)

// TestFramesRewritten runs the program once per frame on a frame whose
// headers are garbage (as a recycled live-frame page may hold after a router
// rewrote MACs, TTL and checksums) and checks every header field and both
// checksums against gopacket's own serialisation of the same packet. The
// payload is the template's: no forwarding path writes into it.
func TestFramesRewritten(t *testing.T) {
	testutil.Privileged(t)
	src := net.HardwareAddr{0x02, 0, 0, 0, 1, 2}
	dst := net.HardwareAddr{0x02, 0, 0, 0, 1, 1}
	tests := []struct {
		name     string
		src, dst string
		size     int
	}{
		{"v4-64", "10.0.0.0/8", "198.19.0.0/24", 64},
		{"v4-1518", "10.0.0.0/8", "198.19.0.0/24", 1518},
		{"v4-odd", "10.1.2.0/23", "198.19.7.9/32", 333},
		{"v6-66", "2001:2:0:8000::/104", "2001:2:0:ff00::/120", 66},
		{"v6-1518", "2001:2:0:8000::/104", "2001:2:0:ff00::/120", 1518},
		{"v6-wide", "2001:2::/32", "2001:2:0:ff00::/56", 129},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			g, err := New(Config{
				Links: []Link{{Iface: "lo", SrcMAC: src, DstMAC: dst}},
				Src:   netip.MustParsePrefix(tc.src), Dst: netip.MustParsePrefix(tc.dst),
				Size: tc.size, Count: 1,
			})
			if err != nil {
				t.Fatal(err)
			}
			defer g.Close()
			ncpu, _ := ebpf.PossibleCPU()
			plans := make([]xdpgenGenPlan, ncpu)
			for i := range plans {
				copy(plans[i].DstMac[:], dst)
				copy(plans[i].SrcMac[:], src)
			}
			if err := g.objs.GenPlans.Put(uint32(0), plans); err != nil {
				t.Fatal(err)
			}
			srcP, dstP := netip.MustParsePrefix(tc.src), netip.MustParsePrefix(tc.dst)
			seen := map[netip.Addr]bool{}
			for range 32 {
				in := g.Frame()
				hdr := 42
				if srcP.Addr().Is6() {
					hdr = 62
				}
				rand.Read(in[:hdr])
				out := make([]byte, len(in)+256)
				opts := ebpf.RunOptions{Data: in, DataOut: out}
				ret, err := g.objs.Xdpgen.Run(&opts)
				out = opts.DataOut
				if err != nil {
					t.Fatal(err)
				}
				if ret != 3 { // XDP_TX
					t.Fatalf("action %d, want XDP_TX", ret)
				}
				if len(out) != tc.size-FCSLen {
					t.Fatalf("frame length %d, want %d", len(out), tc.size-FCSLen)
				}
				s, d := checkFrame(t, out, src, dst, tc.size)
				if !srcP.Contains(s) || !dstP.Contains(d) {
					t.Fatalf("addresses %s -> %s outside %s -> %s", s, d, srcP, dstP)
				}
				seen[s] = true
			}
			if srcP.Bits() < 120 && len(seen) < 16 {
				t.Errorf("only %d distinct sources in 32 frames from %s", len(seen), srcP)
			}
		})
	}
}

// checkFrame decodes the frame, re-serialises the same packet with
// gopacket computing lengths and checksums, and requires identical bytes.
func checkFrame(t *testing.T, frame []byte, src, dst net.HardwareAddr, size int) (netip.Addr, netip.Addr) {
	t.Helper()
	p := gopacket.NewPacket(frame, layers.LayerTypeEthernet, gopacket.Default)
	if el := p.ErrorLayer(); el != nil {
		t.Fatalf("decode: %v", el.Error())
	}
	eth := p.Layer(layers.LayerTypeEthernet).(*layers.Ethernet)
	if eth.SrcMAC.String() != src.String() || eth.DstMAC.String() != dst.String() {
		t.Fatalf("MACs %s -> %s", eth.SrcMAC, eth.DstMAC)
	}
	udp, ok := p.Layer(layers.LayerTypeUDP).(*layers.UDP)
	if !ok || udp.DstPort != 9 || udp.SrcPort != 1024 {
		t.Fatalf("udp layer %+v", udp)
	}
	payload := make([]byte, len(udp.Payload))
	want := gopacket.NewSerializeBuffer()
	opts := gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true}
	var s, d netip.Addr
	var err error
	wantUDP := &layers.UDP{SrcPort: 1024, DstPort: 9}
	wantEth := &layers.Ethernet{SrcMAC: src, DstMAC: dst}
	if ip4, ok := p.Layer(layers.LayerTypeIPv4).(*layers.IPv4); ok {
		wantEth.EthernetType = layers.EthernetTypeIPv4
		w := &layers.IPv4{Version: 4, IHL: 5, TTL: 64, Protocol: layers.IPProtocolUDP, SrcIP: ip4.SrcIP, DstIP: ip4.DstIP}
		wantUDP.SetNetworkLayerForChecksum(w)
		err = gopacket.SerializeLayers(want, opts, wantEth, w, wantUDP, gopacket.Payload(payload))
		s, _ = netip.AddrFromSlice(ip4.SrcIP)
		d, _ = netip.AddrFromSlice(ip4.DstIP)
	} else {
		ip6 := p.Layer(layers.LayerTypeIPv6).(*layers.IPv6)
		wantEth.EthernetType = layers.EthernetTypeIPv6
		w := &layers.IPv6{Version: 6, HopLimit: 64, NextHeader: layers.IPProtocolUDP, SrcIP: ip6.SrcIP, DstIP: ip6.DstIP}
		wantUDP.SetNetworkLayerForChecksum(w)
		err = gopacket.SerializeLayers(want, opts, wantEth, w, wantUDP, gopacket.Payload(payload))
		s, _ = netip.AddrFromSlice(ip6.SrcIP)
		d, _ = netip.AddrFromSlice(ip6.DstIP)
	}
	if err != nil {
		t.Fatal(err)
	}
	if string(want.Bytes()) != string(frame) {
		t.Fatalf("frame differs from gopacket's:\n got %x\nwant %x", frame, want.Bytes())
	}
	return s.Unmap(), d.Unmap()
}
