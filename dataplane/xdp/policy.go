package xdp

import (
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
)

// PolicyFlag is one restriction the kernel puts on what an ingress
// interface forwards, as bpf/router.c's enum iface_flag.
type PolicyFlag uint32

// Policy flags. The zero Policy forwards everything forwardable.
const (
	NoForward4   PolicyFlag = 1 << iota // net.ipv4.conf.IF.forwarding = 0: IPv4 to the kernel
	NoForward6                          // IPv6 forwarding off, or disable_ipv6: IPv6 to the kernel
	Kernel4                             // every IPv4 frame to the kernel (firewall, tc, rules)
	Kernel6                             // every IPv6 frame to the kernel
	RPFilter                            // rp_filter strict (or loose with RPLoose): the source is checked on the FIB
	Redirects                           // send_redirects on: IPv4 hairpin to the kernel (it sends the redirect)
	MACCheck                            // unicast to another MAC than Policy.MAC goes to the kernel (Linux drops it, or an upper device takes it)
	RPLoose                             // rp_filter=2: any usable route back to the source will do
	SourceRoute                         // Linux looks every IPv4 source up (custom local routes or rules exist): sources in table local to the kernel
	EgressKernel                        // as an egress: frames routed out of this interface go to the kernel (tc egress filters, shaping qdisc)
	EgressCheck                         // as an ingress: some egress has EgressKernel, so the program looks the egress up
)

// Policy is what the kernel's settings allow the fast path to do with an
// ingress interface's frames; the control plane computes it.
type Policy struct {
	Flags PolicyFlag
	MAC   net.HardwareAddr // the interface's own MAC, for MACCheck
}

// SetPolicy sets an interface's policy. It may come before Configure or
// Attach: the policy is kept and written when the interface is.
func (p *Program) SetPolicy(ifindex int, pol Policy) error {
	if pol.Flags&MACCheck != 0 && len(pol.MAC) != 6 {
		return fmt.Errorf("ifindex %d: MAC check without a 6-byte MAC (%v)", ifindex, pol.MAC)
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	p.policies[ifindex] = pol
	slot, ok := p.slots[ifindex]
	if !ok {
		return nil
	}
	var cur routerIface
	if err := p.objs.Ifaces.Lookup(uint32(ifindex), &cur); err != nil {
		return nil // not configured yet: configure writes it
	}
	if err := p.objs.Ifaces.Put(uint32(ifindex), ifaceEntry(Engine(cur.Engine), slot, pol)); err != nil {
		return fmt.Errorf("set policy of ifindex %d: %w", ifindex, err)
	}
	return nil
}

// PolicyOf returns the policy set for an interface.
func (p *Program) PolicyOf(ifindex int) Policy {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.policies[ifindex]
}

func ifaceEntry(e Engine, slot uint32, pol Policy) routerIface {
	v := routerIface{Engine: uint32(e), Slot: slot, Flags: uint32(pol.Flags)}
	copy(v.Mac[:], pol.MAC)
	return v
}

// MaxPolicyRules is how many policy rules of a family the program matches
// (bpf/router.c MAX_RULES); with more, the family goes to the kernel.
const MaxPolicyRules = 16

// PolicyRule is the selector of a policy rule (`ip rule`) ahead of the
// main table: a frame it selects goes to the kernel, which evaluates the
// rules. Invalid prefixes and a zero Iif match anything.
type PolicyRule struct {
	Src, Dst netip.Prefix
	Iif      int
}

// SetPolicyRules replaces the policy rules of both families.
func (p *Program) SetPolicyRules(v4, v6 []PolicyRule) error {
	if len(v4) > MaxPolicyRules || len(v6) > MaxPolicyRules {
		return fmt.Errorf("%d IPv4 and %d IPv6 policy rules: at most %d each", len(v4), len(v6), MaxPolicyRules)
	}
	var r4 routerRules4
	r4.N = uint32(len(v4))
	for i, r := range v4 {
		e := &r4.R[i]
		e.Src, e.Smask = word4(r.Src)
		e.Dst, e.Dmask = word4(r.Dst)
		e.Iif = uint32(r.Iif)
	}
	var r6 routerRules6
	r6.N = uint32(len(v6))
	for i, r := range v6 {
		e := &r6.R[i]
		e.Src, e.Smask = bytes16(r.Src)
		e.Dst, e.Dmask = bytes16(r.Dst)
		e.Iif = uint32(r.Iif)
	}
	if err := p.objs.PolicyRules4.Put(uint32(0), &r4); err != nil {
		return fmt.Errorf("write IPv4 policy rules: %w", err)
	}
	if err := p.objs.PolicyRules6.Put(uint32(0), &r6); err != nil {
		return fmt.Errorf("write IPv6 policy rules: %w", err)
	}
	return nil
}

// word4 is an IPv4 prefix's address and mask as the program reads them
// from a packet: network-order bytes loaded as a native word.
func word4(p netip.Prefix) (addr, mask uint32) {
	if !p.IsValid() {
		return 0, 0
	}
	m := net.CIDRMask(p.Bits(), 32)
	a := p.Masked().Addr().As4()
	return binary.NativeEndian.Uint32(a[:]), binary.NativeEndian.Uint32(m)
}

func bytes16(p netip.Prefix) (addr, mask [16]uint8) {
	if !p.IsValid() {
		return addr, mask
	}
	copy(mask[:], net.CIDRMask(p.Bits(), 128))
	return p.Masked().Addr().As16(), mask
}
