// Package packet rewrites forwarded frames in place: the AF_XDP workers'
// counterpart of what bpf/router.c does in the kernel. It validates what
// it touches, never allocates and never panics.
package packet

import (
	"encoding/binary"
	"errors"

	"github.com/xdprouter/xdprouter/dataplane/fib"
)

// Errors a worker counts by reason; the frame is then not forwarded.
var (
	ErrMalformed = errors.New("malformed frame")
	ErrTTL       = errors.New("ttl or hop limit expired")
	ErrNotIP     = errors.New("not IPv4 or IPv6")
)

// Dst reads a frame's destination: family (4 or 6), the IPv4 address in
// host order, or the IPv6 address in a6. It validates the headers as the
// XDP program does (version, header length, lengths within the frame).
func Dst(frame []byte, a6 *[16]byte) (family int, a4 uint32, err error) {
	if len(frame) < 14 {
		return 0, 0, ErrMalformed
	}
	switch binary.BigEndian.Uint16(frame[12:14]) {
	case 0x0800:
		ip := frame[14:]
		if len(ip) < 20 || ip[0]>>4 != 4 || ip[0]&0xf < 5 {
			return 0, 0, ErrMalformed
		}
		if tot := int(binary.BigEndian.Uint16(ip[2:4])); tot < int(ip[0]&0xf)*4 || tot > len(ip) {
			return 0, 0, ErrMalformed
		}
		return 4, binary.BigEndian.Uint32(ip[16:20]), nil
	case 0x86dd:
		ip := frame[14:]
		if len(ip) < 40 || ip[0]>>4 != 6 || 40+int(binary.BigEndian.Uint16(ip[4:6])) > len(ip) {
			return 0, 0, ErrMalformed
		}
		copy(a6[:], ip[24:40])
		return 6, 0, nil
	}
	return 0, 0, ErrNotIP
}

// Forward rewrites a frame for its next hop: destination and source MAC,
// TTL minus one with the IPv4 header checksum updated incrementally (RFC
// 1624), or hop limit minus one. The frame must have passed Dst. A TTL or
// hop limit of 1 or less is left alone and reported (the kernel answers
// those with ICMP).
func Forward(frame []byte, dst, src *[6]byte) error {
	if len(frame) < 14+20 {
		return ErrMalformed
	}
	switch binary.BigEndian.Uint16(frame[12:14]) {
	case 0x0800:
		ip := frame[14:]
		if ip[8] <= 1 {
			return ErrTTL
		}
		old := binary.BigEndian.Uint16(ip[8:10])
		ip[8]--
		neu := binary.BigEndian.Uint16(ip[8:10])
		// HC' = ~(~HC + ~m + m')
		sum := uint32(^binary.BigEndian.Uint16(ip[10:12])) + uint32(^old) + uint32(neu)
		sum = sum&0xffff + sum>>16
		sum = sum&0xffff + sum>>16
		binary.BigEndian.PutUint16(ip[10:12], ^uint16(sum))
	case 0x86dd:
		if len(frame) < 14+40 {
			return ErrMalformed
		}
		if frame[14+7] <= 1 {
			return ErrTTL
		}
		frame[14+7]--
	default:
		return ErrNotIP
	}
	copy(frame[0:6], dst[:])
	copy(frame[6:12], src[:])
	return nil
}

// L3Len is the IP packet's length (IPv4 total length, IPv6 40 + payload
// length) of a frame that passed Dst: what an MTU is compared with.
func L3Len(frame []byte) int {
	if binary.BigEndian.Uint16(frame[12:14]) == 0x0800 {
		return int(binary.BigEndian.Uint16(frame[16:18]))
	}
	return 40 + int(binary.BigEndian.Uint16(frame[18:20]))
}

// FlowHash is the ECMP flow hash of a frame that passed Dst, bit for bit
// the one bpf/router.c computes: addresses, protocol, and the ports of
// TCP, UDP and SCTP (zero for IPv4 fragments), so the kernel path and the
// workers pick the same member for a flow.
func FlowHash(frame []byte) uint32 {
	ip := frame[14:]
	if binary.BigEndian.Uint16(frame[12:14]) == 0x0800 {
		proto := ip[9]
		hl := int(ip[0]&0xf) * 4
		var sport, dport uint16
		if binary.BigEndian.Uint16(ip[6:8])&0x3fff == 0 && l4Ports(proto) && len(ip) >= hl+4 {
			sport, dport = binary.BigEndian.Uint16(ip[hl:]), binary.BigEndian.Uint16(ip[hl+2:])
		}
		return fib.FlowHash4(binary.BigEndian.Uint32(ip[12:16]), binary.BigEndian.Uint32(ip[16:20]), proto, sport, dport)
	}
	proto := ip[6]
	var sport, dport uint16
	if l4Ports(proto) && len(ip) >= 44 {
		sport, dport = binary.BigEndian.Uint16(ip[40:]), binary.BigEndian.Uint16(ip[42:])
	}
	return fib.FlowHash6((*[16]byte)(ip[8:24]), (*[16]byte)(ip[24:40]), proto, sport, dport)
}

func l4Ports(proto uint8) bool { return proto == 6 || proto == 17 || proto == 132 }
