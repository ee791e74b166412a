package packet

import (
	"bytes"
	"encoding/binary"
	"errors"
	"net"
	"testing"

	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"

	"github.com/xdprouter/xdprouter/dataplane/fib"
)

var (
	dstMAC = [6]byte{0x02, 0, 0, 0, 3, 2}
	srcMAC = [6]byte{0x02, 0, 0, 0, 3, 1}
)

func build(t testing.TB, v6 bool, ttl uint8, payload int, src, dst net.HardwareAddr) []byte {
	t.Helper()
	eth := &layers.Ethernet{SrcMAC: src, DstMAC: dst, EthernetType: layers.EthernetTypeIPv4}
	udp := &layers.UDP{SrcPort: 1024, DstPort: 9}
	var l3 gopacket.SerializableLayer
	if v6 {
		eth.EthernetType = layers.EthernetTypeIPv6
		ip := &layers.IPv6{Version: 6, HopLimit: ttl, NextHeader: layers.IPProtocolUDP,
			SrcIP: net.ParseIP("2001:2:0:8000::1"), DstIP: net.ParseIP("2001:2:0:ff00::7")}
		udp.SetNetworkLayerForChecksum(ip)
		l3 = ip
	} else {
		ip := &layers.IPv4{Version: 4, IHL: 5, TTL: ttl, Protocol: layers.IPProtocolUDP, Id: 0x1234,
			SrcIP: net.IPv4(10, 1, 2, 3), DstIP: net.IPv4(198, 19, 0, 77)}
		udp.SetNetworkLayerForChecksum(ip)
		l3 = ip
	}
	buf := gopacket.NewSerializeBuffer()
	if err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true},
		eth, l3, udp, gopacket.Payload(make([]byte, payload))); err != nil {
		t.Fatal(err)
	}
	return append([]byte(nil), buf.Bytes()...)
}

func TestForward(t *testing.T) {
	in := net.HardwareAddr{0x02, 0, 0, 0, 1, 2}
	out := net.HardwareAddr{0x02, 0, 0, 0, 1, 1}
	for _, tc := range []struct {
		name    string
		v6      bool
		ttl     uint8
		payload int
		err     error
	}{
		{"v4", false, 64, 18, nil},
		{"v4 ttl 2", false, 2, 18, nil},
		{"v4 ttl 255", false, 255, 1472, nil},
		{"v4 ttl 1", false, 1, 18, ErrTTL},
		{"v6", true, 64, 4, nil},
		{"v6 hop limit 1", true, 1, 4, ErrTTL},
	} {
		t.Run(tc.name, func(t *testing.T) {
			frame := build(t, tc.v6, tc.ttl, tc.payload, in, out)
			var a6 [16]byte
			fam, a4, err := Dst(frame, &a6)
			if err != nil {
				t.Fatal(err)
			}
			if tc.v6 && (fam != 6 || a6 != [16]byte(net.ParseIP("2001:2:0:ff00::7"))) || !tc.v6 && (fam != 4 || a4 != 0xc613004d) {
				t.Fatalf("Dst: %d %#x %x", fam, a4, a6)
			}
			orig := append([]byte(nil), frame...)
			err = Forward(frame, &dstMAC, &srcMAC)
			if !errors.Is(err, tc.err) {
				t.Fatalf("Forward: %v, want %v", err, tc.err)
			}
			if tc.err != nil {
				if !bytes.Equal(frame, orig) {
					t.Error("a frame not forwarded was changed")
				}
				return
			}
			// gopacket's own serialisation of the forwarded packet.
			want := build(t, tc.v6, tc.ttl-1, tc.payload, srcMAC[:], dstMAC[:])
			if !bytes.Equal(frame, want) {
				t.Errorf("forwarded\n got %x\nwant %x", frame, want)
			}
		})
	}
}

func TestMalformed(t *testing.T) {
	good := build(t, false, 64, 18, net.HardwareAddr{2, 0, 0, 0, 0, 1}, net.HardwareAddr{2, 0, 0, 0, 0, 2})
	var a6 [16]byte
	for name, f := range map[string][]byte{
		"short":     good[:10],
		"cut ip":    good[:14+12],
		"ihl 4":     append(append([]byte(nil), good[:14]...), append([]byte{0x44}, good[15:]...)...),
		"tot_len":   func() []byte { b := append([]byte(nil), good...); b[16], b[17] = 0xff, 0xff; return b }(),
		"version 6": append(append([]byte(nil), good[:14]...), append([]byte{0x65}, good[15:]...)...),
	} {
		if _, _, err := Dst(f, &a6); !errors.Is(err, ErrMalformed) {
			t.Errorf("%s: %v, want ErrMalformed", name, err)
		}
	}
	arp := append([]byte(nil), good...)
	arp[12], arp[13] = 0x08, 0x06
	if _, _, err := Dst(arp, &a6); !errors.Is(err, ErrNotIP) {
		t.Errorf("arp: %v", err)
	}
}

func TestNoAllocs(t *testing.T) {
	frame := build(t, false, 255, 18, net.HardwareAddr{2, 0, 0, 0, 0, 1}, net.HardwareAddr{2, 0, 0, 0, 0, 2})
	var a6 [16]byte
	allocs := testing.AllocsPerRun(1000, func() {
		frame[14+8] = 64
		if _, _, err := Dst(frame, &a6); err != nil {
			t.Fatal(err)
		}
		_ = Forward(frame, &dstMAC, &srcMAC)
	})
	if allocs != 0 {
		t.Errorf("%v allocations per packet", allocs)
	}
}

// FuzzForward: whatever the bytes, Dst and Forward never panic, and a
// frame Dst accepts is forwarded with a valid IPv4 header checksum.
func FuzzForward(f *testing.F) {
	f.Add(build(f, false, 64, 18, net.HardwareAddr{2, 0, 0, 0, 0, 1}, net.HardwareAddr{2, 0, 0, 0, 0, 2}))
	f.Add(build(f, true, 64, 4, net.HardwareAddr{2, 0, 0, 0, 0, 1}, net.HardwareAddr{2, 0, 0, 0, 0, 2}))
	f.Fuzz(func(t *testing.T, frame []byte) {
		var a6 [16]byte
		fam, _, err := Dst(frame, &a6)
		if err != nil {
			return
		}
		if fam == 4 {
			// Make the header checksum valid first, as the kernel would
			// have dropped the frame otherwise.
			ip := frame[14:]
			ip[10], ip[11] = 0, 0
			var s uint32
			for i := 0; i < int(ip[0]&0xf)*4; i += 2 {
				s += uint32(ip[i])<<8 | uint32(ip[i+1])
			}
			for s > 0xffff {
				s = s&0xffff + s>>16
			}
			ip[10], ip[11] = byte(^s>>8), byte(^s)
		}
		if err := Forward(frame, &dstMAC, &srcMAC); err != nil || fam != 4 {
			return
		}
		ip := frame[14:]
		var s uint32
		for i := 0; i < int(ip[0]&0xf)*4; i += 2 {
			s += uint32(ip[i])<<8 | uint32(ip[i+1])
		}
		for s > 0xffff {
			s = s&0xffff + s>>16
		}
		if s != 0xffff {
			t.Fatalf("checksum invalid after Forward (sum %#x)", s)
		}
	})
}

// TestFlowHashAndL3Len: the ECMP hash is fib's FlowHash over the fields
// gopacket decodes (ports zero for IPv4 fragments and for protocols
// without ports), and L3Len is the IP length gopacket reads.
func TestFlowHashAndL3Len(t *testing.T) {
	for _, tc := range []struct {
		name string
		v6   bool
		frag bool
		icmp bool
	}{{"udp4", false, false, false}, {"udp6", true, false, false}, {"fragment4", false, true, false}, {"icmp4", false, false, true}} {
		t.Run(tc.name, func(t *testing.T) {
			f := build(t, tc.v6, 64, 100, srcMAC[:], dstMAC[:])
			if tc.frag {
				f[14+6] |= 0x20 // more fragments (the checksum does not matter here)
			}
			if tc.icmp {
				f[14+9] = 1
			}
			p := gopacket.NewPacket(f, layers.LayerTypeEthernet, gopacket.Default)
			var want uint32
			var l3 int
			if tc.v6 {
				ip := p.Layer(layers.LayerTypeIPv6).(*layers.IPv6)
				u := p.Layer(layers.LayerTypeUDP).(*layers.UDP)
				want = fib.FlowHash6((*[16]byte)(ip.SrcIP.To16()), (*[16]byte)(ip.DstIP.To16()), uint8(ip.NextHeader), uint16(u.SrcPort), uint16(u.DstPort))
				l3 = 40 + int(ip.Length)
			} else {
				ip := p.Layer(layers.LayerTypeIPv4).(*layers.IPv4)
				var sp, dp uint16
				if !tc.frag && !tc.icmp {
					u := p.Layer(layers.LayerTypeUDP).(*layers.UDP)
					sp, dp = uint16(u.SrcPort), uint16(u.DstPort)
				}
				want = fib.FlowHash4(binary.BigEndian.Uint32(ip.SrcIP.To4()), binary.BigEndian.Uint32(ip.DstIP.To4()), uint8(ip.Protocol), sp, dp)
				l3 = int(ip.Length)
			}
			if got := FlowHash(f); got != want {
				t.Errorf("FlowHash %#x, want %#x", got, want)
			}
			if got := L3Len(f); got != l3 {
				t.Errorf("L3Len %d, want %d", got, l3)
			}
		})
	}
}
