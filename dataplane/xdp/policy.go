package xdp

import (
	"fmt"
	"net"
)

// PolicyFlag is one restriction the kernel puts on what an ingress
// interface forwards, as bpf/router.c's enum iface_flag.
type PolicyFlag uint32

// Policy flags. The zero Policy forwards everything forwardable.
const (
	NoForward4 PolicyFlag = 1 << iota // net.ipv4.conf.IF.forwarding = 0: IPv4 to the kernel
	NoForward6                        // IPv6 forwarding off, or disable_ipv6: IPv6 to the kernel
	Kernel4                           // every IPv4 frame to the kernel (firewall, tc, rules)
	Kernel6                           // every IPv6 frame to the kernel
	RPFilter                          // rp_filter strict (or loose with RPLoose): the source is checked on the FIB
	Redirects                         // send_redirects on: IPv4 hairpin to the kernel (it sends the redirect)
	MACCheck                          // unicast to another MAC than Policy.MAC goes to the kernel (Linux drops it, or an upper device takes it)
	RPLoose                           // rp_filter=2: any usable route back to the source will do
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
