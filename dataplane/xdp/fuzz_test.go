package xdp

import (
	"bytes"
	"testing"

	"github.com/google/gopacket/layers"
)

// FuzzClassify runs random and mutated frames through the program. It must
// only ever pass, drop or redirect; a frame it does not redirect must leave
// untouched; and a redirected frame must be a well-formed IPv4 or IPv6
// packet (valid header, length within the frame, IPv4 checksum correct)
// with its TTL or hop limit one less than it came in with.
func FuzzClassify(f *testing.F) {
	r := newRig(f, SourceFIB)
	for _, p := range []pkt{
		{src: "10.1.2.3", dst: "198.19.0.77"},
		{src: "2001:2:0:8000::5", dst: "2001:2:0:ff00::77"},
		{src: "10.1.2.3", dst: "198.19.1.7", sport: 5},
		{src: "10.1.2.3", dst: "198.19.0.77", ipOptions: true},
		{src: "2001:2:0:8000::5", dst: "2001:2:0:ff00::77", hopByHop: true},
		{src: "10.1.2.3", dst: "198.19.0.77", vlan: true},
		{ethType: layers.EthernetTypeARP},
	} {
		f.Add(r.frame(p))
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		if len(in) < 14 || len(in) > 3000 {
			return
		}
		act, out := r.run(t, append([]byte(nil), in...))
		switch act {
		case actPass, actDrop:
			if !bytes.Equal(in, out) {
				t.Fatalf("action %d changed the frame", act)
			}
		case actRedirect:
			checkForwarded(t, in, out)
		default:
			t.Fatalf("action %d is outside the spec", act)
		}
	})
}

func checkForwarded(t *testing.T, in, out []byte) {
	t.Helper()
	if len(in) != len(out) || len(out) < 14 {
		t.Fatalf("forwarded frame changed length %d -> %d", len(in), len(out))
	}
	ip := out[14:]
	switch {
	case out[12] == 0x08 && out[13] == 0x00:
		if len(ip) < 20 || ip[0] != 0x45 {
			t.Fatalf("forwarded a bad IPv4 header: %x", ip[:min(len(ip), 20)])
		}
		if tot := int(ip[2])<<8 | int(ip[3]); tot < 20 || tot > len(ip) {
			t.Fatalf("forwarded IPv4 with total length %d in %d bytes", tot, len(ip))
		}
		var sum uint32
		for i := 0; i < 20; i += 2 {
			sum += uint32(ip[i])<<8 | uint32(ip[i+1])
		}
		for sum > 0xffff {
			sum = sum&0xffff + sum>>16
		}
		if sum != 0xffff {
			t.Fatalf("forwarded IPv4 with a bad checksum (sum %#x)", sum)
		}
		if ip[8] != in[14+8]-1 || in[14+8] <= 1 {
			t.Fatalf("TTL %d -> %d", in[14+8], ip[8])
		}
	case out[12] == 0x86 && out[13] == 0xdd:
		if len(ip) < 40 || ip[0]>>4 != 6 {
			t.Fatalf("forwarded a bad IPv6 header")
		}
		if plen := int(ip[4])<<8 | int(ip[5]); 40+plen > len(ip) {
			t.Fatalf("forwarded IPv6 with payload length %d in %d bytes", plen, len(ip))
		}
		if ip[7] != in[14+7]-1 || in[14+7] <= 1 {
			t.Fatalf("hop limit %d -> %d", in[14+7], ip[7])
		}
	default:
		t.Fatalf("forwarded ethertype %x", out[12:14])
	}
}
