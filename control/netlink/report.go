package netlink

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"

	vnl "github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/xdprouter/xdprouter/dataplane/fib"
)

// NexthopInfo describes a FIB nexthop for display.
type NexthopInfo struct {
	ID      uint32 `json:"id"`
	Gateway string `json:"gateway"`
	Dev     string `json:"dev"`
	Ifindex int    `json:"ifindex"`
	MAC     string `json:"mac,omitempty"`
	State   string `json:"state"` // resolved, incomplete, failed
	MTU     int    `json:"mtu"`
}

// Entry is one FIB prefix as the mirror installed it.
type Entry struct {
	Prefix   netip.Prefix  `json:"prefix"`
	Type     string        `json:"type"`
	Protocol int           `json:"protocol,omitempty"` // of the kernel route; 0 for neighbour host routes
	Metric   int           `json:"metric"`
	Host     bool          `json:"neighbour_host_route,omitempty"`
	Nexthops []NexthopInfo `json:"nexthops,omitempty"`
}

// Entries returns the FIB as the mirror installed it, sorted by prefix.
// Call it when Run is not running (after Sync), or from the goroutine
// that runs the mirror.
func (m *Mirror) Entries() []Entry {
	var out []Entry
	for p, res := range m.installed {
		e := Entry{Prefix: p, Type: res.Type().String()}
		if pr, ok := m.routes[p]; ok {
			b := pr.first
			for _, r := range pr.more {
				if r.metric < b.metric {
					b = r
				}
			}
			e.Protocol, e.Metric = b.protocol, b.metric
		} else {
			e.Host = true
		}
		var ids []uint32
		switch res.Type() {
		case fib.RouteNexthop:
			ids = []uint32{res.Index()}
		case fib.RouteECMP:
			if g, ok := m.groups[m.groupByID[res.Index()]]; ok {
				ids = g.members
			}
		}
		for _, id := range ids {
			e.Nexthops = append(e.Nexthops, m.nexthopInfo(id))
		}
		out = append(out, e)
	}
	slices.SortFunc(out, func(a, b Entry) int {
		if c := a.Prefix.Addr().Compare(b.Prefix.Addr()); c != 0 {
			return c
		}
		return a.Prefix.Bits() - b.Prefix.Bits()
	})
	return out
}

func (m *Mirror) nexthopInfo(id uint32) NexthopInfo {
	k := m.nhByID[id]
	l := m.links[k.ifindex]
	info := NexthopInfo{ID: id, Gateway: k.addr.String(), Dev: l.name, Ifindex: k.ifindex, MTU: l.mtu, State: "incomplete"}
	if nh := m.nexthops[k]; nh != nil && nh.mtu != 0 && nh.mtu < info.MTU {
		info.MTU = nh.mtu
	}
	n, known := m.neighs[k]
	switch {
	case !l.up:
		info.State = "failed (link down)"
	case known && n.resolved():
		info.State, info.MAC = "resolved", n.mac.String()
	case known && n.state&vnl.NUD_FAILED != 0:
		info.State = "failed"
	}
	return info
}

// Difference is a prefix where the FIB does not answer as the kernel.
type Difference struct {
	Addr   netip.Addr `json:"addr"`
	Kernel string     `json:"kernel"`
	FIB    string     `json:"fib"`
}

// Check compares, for the first address of each given prefix (every
// mirrored prefix when ps is nil), the FIB's answer with the kernel's own
// route lookup (like `ip route get`): the route type, and for forwarded
// routes the interface and neighbour MAC. It returns the differences.
func (m *Mirror) Check(ps []netip.Prefix) ([]Difference, error) {
	if ps == nil {
		for p := range m.installed {
			ps = append(ps, p)
		}
	}
	r := m.table.NewReader()
	defer r.Close()
	var diffs []Difference
	for _, p := range ps {
		a := p.Addr()
		kt, kout, err := m.kernelAnswer(a)
		if err != nil {
			return diffs, err
		}
		res := m.table.Lookup(a)
		outs := m.outs(r, res)
		ok := false
		switch kt {
		case fib.RouteNexthop:
			ok = (res.Type() == fib.RouteNexthop || res.Type() == fib.RouteECMP) && slices.Contains(outs, kout)
		case fib.RouteLocal:
			ok = res.Type() == fib.RouteLocal || res.Type() == fib.RouteKernel
		default:
			ok = res.Type() == kt
		}
		if !ok {
			diffs = append(diffs, Difference{Addr: a, Kernel: fmt.Sprintf("%s %s", kt, kout), FIB: fmt.Sprintf("%s %v", res.Type(), outs)})
		}
	}
	return diffs, nil
}

// outs lists "dev/mac" of every nexthop a FIB result may use.
func (m *Mirror) outs(r *fib.Reader, res fib.Result) []string {
	var ids []uint32
	switch res.Type() {
	case fib.RouteNexthop:
		ids = []uint32{res.Index()}
	case fib.RouteECMP:
		r.Begin()
		for h := uint32(0); h < 64; h++ {
			if id, ok := r.ECMPMember(res.Index(), h); ok && !slices.Contains(ids, id) {
				ids = append(ids, id)
			}
		}
		r.End()
	}
	var out []string
	r.Begin()
	defer r.End()
	for _, id := range ids {
		nh, ok := r.Nexthop(id)
		if !ok {
			continue
		}
		mac := "unresolved"
		if nh.State == fib.Resolved {
			mac = net.HardwareAddr(nh.DstMAC[:]).String()
		}
		out = append(out, fmt.Sprintf("%s/%s", m.links[int(nh.Ifindex)].name, mac))
	}
	return out
}

// kernelAnswer asks the kernel where it sends a (like `ip route get`).
func (m *Mirror) kernelAnswer(a netip.Addr) (fib.RouteType, string, error) {
	rs, err := m.h.RouteGet(a.AsSlice())
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
		return 0, "", fmt.Errorf("route get %s: %w", a, err)
	}
	k := rs[0]
	switch k.Type {
	case unix.RTN_LOCAL, unix.RTN_BROADCAST, unix.RTN_ANYCAST, unix.RTN_MULTICAST:
		return fib.RouteLocal, "", nil // the kernel's own, as table local says
	}
	gw := addrOf(k.Gw)
	if !gw.IsValid() {
		gw = a
	}
	mac := "unresolved"
	if n, ok := m.neighs[nhKey{k.LinkIndex, gw}]; ok && n.resolved() {
		mac = n.mac.String()
	}
	out := fmt.Sprintf("%s/%s", m.links[k.LinkIndex].name, mac)
	if k.Gw == nil && mac == "unresolved" || !m.links[k.LinkIndex].serve {
		return fib.RouteKernel, out, nil
	}
	return fib.RouteNexthop, out, nil
}
