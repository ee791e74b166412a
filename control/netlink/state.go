package netlink

import (
	"bytes"
	"fmt"
	"net"
	"net/netip"
	"slices"

	vnl "github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/xdprouter/xdprouter/dataplane/fib"
)

// link is what the mirror knows of an interface.
type link struct {
	name  string
	up    bool
	mtu   int
	mac   net.HardwareAddr
	serve bool
}

// neigh is a neighbour entry.
type neigh struct {
	mac   net.HardwareAddr
	state int
}

// hop is one way out of a route: an interface and, for gateway routes,
// the gateway (for a connected route, no gateway).
type hop struct {
	ifindex int
	gw      netip.Addr
}

// route is a kernel route of one (table, prefix, metric).
type route struct {
	typ      int
	protocol int
	hops     []hop
	mtu      int
}

// rkey identifies a kernel route of the mirrored table.
type rkey struct {
	prefix netip.Prefix
	metric int
}

// metricRoute is a route and its metric.
type metricRoute struct {
	metric int
	route
}

// prefixRoutes are a prefix's routes: usually one; more only when
// several metrics coexist.
type prefixRoutes struct {
	first metricRoute
	more  []metricRoute
}

func (pr *prefixRoutes) get(metric int) (route, bool) {
	if pr.first.metric == metric {
		return pr.first.route, true
	}
	for _, r := range pr.more {
		if r.metric == metric {
			return r.route, true
		}
	}
	return route{}, false
}

// put sets a metric's route; it reports whether the metric is new.
func (pr *prefixRoutes) put(metric int, r route) bool {
	if pr.first.metric == metric {
		pr.first.route = r
		return false
	}
	for i := range pr.more {
		if pr.more[i].metric == metric {
			pr.more[i].route = r
			return false
		}
	}
	pr.more = append(pr.more, metricRoute{metric, r})
	return true
}

// del removes a metric's route; it reports whether none is left.
func (pr *prefixRoutes) del(metric int) (empty bool) {
	if pr.first.metric == metric {
		if len(pr.more) == 0 {
			return true
		}
		pr.first, pr.more = pr.more[0], pr.more[1:]
		return false
	}
	pr.more = slices.DeleteFunc(pr.more, func(r metricRoute) bool { return r.metric == metric })
	return false
}

func (pr *prefixRoutes) best() route {
	b := pr.first
	for _, r := range pr.more {
		if r.metric < b.metric {
			b = r
		}
	}
	return b.route
}

// nhKey identifies a FIB nexthop: the neighbour (ifindex, address) whose
// MAC it uses.
type nhKey struct {
	ifindex int
	addr    netip.Addr
}

type nexthop struct {
	id   uint32
	refs int
	mtu  int // route MTU (0: the link's)
}

type ecmpGroup struct {
	id      uint32
	refs    int
	members []uint32
}

// usable says whether a neighbour state has a MAC worth forwarding to.
func usable(state int) bool {
	return state&(vnl.NUD_REACHABLE|vnl.NUD_STALE|vnl.NUD_DELAY|vnl.NUD_PROBE|vnl.NUD_PERMANENT|vnl.NUD_NOARP) != 0
}

// resolved reports whether a neighbour is a unicast next hop: usable and
// with a unicast MAC. The kernel keeps NOARP entries with the broadcast
// (or a multicast) MAC for a subnet's broadcast address once it has sent
// there; forwarding to them is directed broadcast, which Linux does only
// with bc_forwarding (it is the kernel's, never a host route of ours).
func (n neigh) resolved() bool {
	return usable(n.state) && len(n.mac) == 6 && n.mac[0]&1 == 0 && !bytes.Equal(n.mac, zeroMAC)
}

var zeroMAC = make(net.HardwareAddr, 6)

func addrOf(ip net.IP) netip.Addr {
	a, _ := netip.AddrFromSlice(ip)
	return a.Unmap()
}

func prefixOf(n *net.IPNet, family int) netip.Prefix {
	if n == nil {
		if family == vnl.FAMILY_V6 {
			return netip.MustParsePrefix("::/0")
		}
		return netip.MustParsePrefix("0.0.0.0/0")
	}
	a := addrOf(n.IP)
	ones, _ := n.Mask.Size()
	return netip.PrefixFrom(a, ones).Masked()
}

// routeOf converts a netlink route; ok is false for routes the mirror
// ignores (other tables, TOS routes, cached clones).
func (m *Mirror) routeOf(r vnl.Route) (rkey, route, bool) {
	if r.Tos != 0 || r.Flags&unix.RTM_F_CLONED != 0 || r.Table != m.cfg.Table {
		return rkey{}, route{}, false
	}
	k := rkey{prefix: prefixOf(r.Dst, r.Family), metric: r.Priority}
	if !k.prefix.IsValid() {
		return rkey{}, route{}, false
	}
	v := route{typ: r.Type, protocol: int(r.Protocol), mtu: r.MTU}
	if len(r.MultiPath) > 0 {
		for _, nh := range r.MultiPath {
			v.hops = append(v.hops, hop{ifindex: nh.LinkIndex, gw: addrOf(nh.Gw)})
		}
	} else if r.LinkIndex != 0 {
		v.hops = []hop{{ifindex: r.LinkIndex, gw: addrOf(r.Gw)}}
	}
	return k, v, true
}

// localKey identifies a route of table local.
type localKey struct {
	prefix netip.Prefix
	typ    int
	metric int
}

// localRoute records a route of table local being added or removed: the
// prefix, and every mirrored prefix inside it, now answers (or no longer
// answers) "the kernel's".
func (m *Mirror) localRoute(r vnl.Route, add bool) {
	p := prefixOf(r.Dst, r.Family)
	if !p.IsValid() || r.Flags&unix.RTM_F_CLONED != 0 {
		return
	}
	k := localKey{prefix: p, typ: r.Type, metric: r.Priority}
	_, had := m.local[k]
	if add == had {
		return
	}
	fam := 0
	if p.Addr().Is6() {
		fam = 1
	}
	if add {
		m.local[k] = struct{}{}
		m.localN[p]++
		m.localLens[fam][p.Bits()]++
	} else {
		delete(m.local, k)
		if m.localN[p]--; m.localN[p] == 0 {
			delete(m.localN, p)
		}
		if m.localLens[fam][p.Bits()]--; m.localLens[fam][p.Bits()] == 0 {
			delete(m.localLens[fam], p.Bits())
		}
	}
	m.markDirty(p)
	if m.all || p.IsSingleIP() {
		return
	}
	// A local route wider than a host covers more specific mirrored ones.
	for q := range m.installed {
		if q.Bits() > p.Bits() && p.Contains(q.Addr()) {
			m.markDirty(q)
		}
	}
	for q := range m.routes {
		if q.Bits() > p.Bits() && p.Contains(q.Addr()) {
			m.markDirty(q)
		}
	}
}

// localCovers reports whether a route of table local covers p (is p or
// wider): the kernel finds it before any route of the mirrored table.
func (m *Mirror) localCovers(p netip.Prefix) bool {
	fam := 0
	if p.Addr().Is6() {
		fam = 1
	}
	for l := range m.localLens[fam] {
		if l > p.Bits() {
			continue
		}
		q, _ := p.Addr().Prefix(l)
		if m.localN[q] > 0 {
			return true
		}
	}
	return false
}

// best returns the route the kernel uses for a prefix: the lowest metric.
func (m *Mirror) best(p netip.Prefix) (route, bool) {
	pr, ok := m.routes[p]
	if !ok {
		return route{}, false
	}
	return pr.best(), true
}

// desired computes the FIB result for a prefix, acquiring the nexthops
// and ECMP group it needs (the caller releases what the old result held).
// ok false means no FIB entry.
func (m *Mirror) desired(p netip.Prefix) (fib.Result, bool) {
	if m.localCovers(p) {
		return fib.MakeResult(fib.RouteLocal, 0), true
	}
	r, ok := m.best(p)
	if !ok {
		// A neighbour host route, when no kernel route has this prefix.
		if p.IsSingleIP() {
			if k, ok := m.hostRoutes[p]; ok {
				return fib.MakeResult(fib.RouteNexthop, m.acquireNH(k, 0)), true
			}
		}
		return 0, false
	}
	switch r.typ {
	case unix.RTN_BLACKHOLE:
		return fib.MakeResult(fib.RouteBlackhole, 0), true
	case unix.RTN_UNREACHABLE:
		return fib.MakeResult(fib.RouteUnreachable, 0), true
	case unix.RTN_PROHIBIT:
		return fib.MakeResult(fib.RouteProhibit, 0), true
	case unix.RTN_LOCAL:
		return fib.MakeResult(fib.RouteLocal, 0), true
	case unix.RTN_UNICAST:
	default:
		return fib.MakeResult(fib.RouteKernel, 0), true
	}
	// Unicast: forwardable only through gateways on interfaces we serve.
	if len(r.hops) == 0 {
		return fib.MakeResult(fib.RouteKernel, 0), true // nexthop objects, or no device
	}
	for _, h := range r.hops {
		if !h.gw.IsValid() || !m.links[h.ifindex].serve {
			return fib.MakeResult(fib.RouteKernel, 0), true // connected or not ours
		}
	}
	if len(r.hops) == 1 {
		return fib.MakeResult(fib.RouteNexthop, m.acquireNH(nhKey{r.hops[0].ifindex, r.hops[0].gw}, r.mtu)), true
	}
	if len(r.hops) > fib.MaxECMP {
		return fib.MakeResult(fib.RouteKernel, 0), true
	}
	ids := make([]uint32, len(r.hops))
	for i, h := range r.hops {
		ids[i] = m.acquireNH(nhKey{h.ifindex, h.gw}, r.mtu)
	}
	return fib.MakeResult(fib.RouteECMP, m.acquireECMP(ids)), true
}

// acquireNH returns the nexthop ID for a neighbour, creating and writing
// it when new; each call takes a reference.
func (m *Mirror) acquireNH(k nhKey, mtu int) uint32 {
	if nh, ok := m.nexthops[k]; ok {
		nh.refs++
		if mtu != 0 && (nh.mtu == 0 || mtu < nh.mtu) {
			nh.mtu = mtu
			m.writeNH(k, nh)
		}
		return nh.id
	}
	id := m.nhIDs.get()
	nh := &nexthop{id: id, refs: 1, mtu: mtu}
	m.nexthops[k] = nh
	m.nhByID[id] = k
	m.writeNH(k, nh)
	if _, ok := m.neighs[k]; !ok {
		m.resolve(k)
	}
	return id
}

// writeNH writes a nexthop's current state into the FIB.
func (m *Mirror) writeNH(k nhKey, nh *nexthop) {
	l := m.links[k.ifindex]
	e := fib.Nexthop{Ifindex: k.ifindex, SrcMAC: l.mac, MTU: l.mtu, State: fib.Incomplete}
	if nh.mtu != 0 && nh.mtu < e.MTU {
		e.MTU = nh.mtu
	}
	n, known := m.neighs[k]
	switch {
	case !l.up:
		e.State = fib.Failed
	case known && n.resolved():
		e.State, e.DstMAC = fib.Resolved, n.mac
	case known && n.state&vnl.NUD_FAILED != 0:
		e.State = fib.Failed
	}
	if err := m.table.SetNexthop(nh.id, e); err != nil {
		m.fail(fmt.Errorf("set nexthop %d (%s via ifindex %d): %w", nh.id, k.addr, k.ifindex, err))
		return
	}
	m.stats.NexthopWrites++
}

func (m *Mirror) releaseNH(id uint32) {
	k, ok := m.nhByID[id]
	if !ok {
		return
	}
	nh := m.nexthops[k]
	if nh.refs--; nh.refs == 0 {
		delete(m.nexthops, k)
		delete(m.nhByID, id)
		if err := m.table.DeleteNexthop(id); err != nil {
			m.fail(err)
		}
		m.nhIDs.put(id)
	}
}

func ecmpKey(ids []uint32) string {
	s := slices.Clone(ids)
	slices.Sort(s)
	return fmt.Sprint(s)
}

func (m *Mirror) acquireECMP(ids []uint32) uint32 {
	k := ecmpKey(ids)
	if g, ok := m.groups[k]; ok {
		g.refs++
		for _, id := range ids { // the group holds one reference per member
			m.releaseNH(id)
		}
		return g.id
	}
	id := m.ecmpIDs.get()
	m.groups[k] = &ecmpGroup{id: id, refs: 1, members: ids}
	m.groupByID[id] = k
	if err := m.table.SetECMP(id, ids); err != nil {
		m.fail(fmt.Errorf("set ecmp group %d: %w", id, err))
	}
	return id
}

func (m *Mirror) releaseECMP(id uint32) {
	k, ok := m.groupByID[id]
	if !ok {
		return
	}
	g := m.groups[k]
	if g.refs--; g.refs == 0 {
		delete(m.groups, k)
		delete(m.groupByID, id)
		if err := m.table.DeleteECMP(id); err != nil {
			m.fail(err)
		}
		m.ecmpIDs.put(id)
		for _, nh := range g.members {
			m.releaseNH(nh)
		}
	}
}

// release drops the references a FIB result held.
func (m *Mirror) release(r fib.Result) {
	switch r.Type() {
	case fib.RouteNexthop:
		m.releaseNH(r.Index())
	case fib.RouteECMP:
		m.releaseECMP(r.Index())
	}
}

// bulk is how many changed prefixes make reconcile load them as a batch
// (Table.Load paints in memory order and fills its route set in parallel).
const bulk = 4096

// reconcile brings the FIB entry of every dirty prefix to what the kernel
// state says: a nexthop is written before a route points to it, and
// released only after the route moved away.
func (m *Mirror) reconcile() {
	type change struct {
		old fib.Result
		had bool
	}
	var batch []fib.Route
	var changes []change
	var retry []netip.Prefix
	n := len(m.dirty)
	if m.all {
		n = len(m.routes) + len(m.installed)
	}
	m.eachDirty(func(p netip.Prefix) {
		old, had := m.installed[p]
		want, ok := m.desired(p)
		switch {
		case ok && had && want == old:
			m.release(want) // desired took a second reference
		case ok && n >= bulk:
			batch = append(batch, fib.Route{Prefix: p, Result: want})
			changes = append(changes, change{old, had})
		case ok:
			if err := m.table.Insert(p, want); err != nil {
				m.fail(fmt.Errorf("fib insert %s: %w", p, err))
				m.release(want)
				return
			}
			m.installed[p] = want
			m.stats.RoutesApplied++
			if had {
				m.release(old)
			}
		case had:
			if err := m.table.Delete(p); err != nil {
				// Refused (a delete copies nodes too: ErrCapacity while
				// retired blocks wait for readers): the route is still
				// in the FIB, with its reference; try again next round.
				m.fail(fmt.Errorf("fib delete %s: %w", p, err))
				retry = append(retry, p)
				return
			}
			delete(m.installed, p)
			m.stats.RoutesApplied++
			m.release(old)
		}
	})
	clear(m.dirty)
	for _, p := range retry {
		m.dirty[p] = struct{}{}
	}
	m.all = false
	if len(batch) == 0 {
		return
	}
	loadErr := m.table.Load(batch)
	if loadErr != nil {
		m.fail(fmt.Errorf("fib bulk load: %w", loadErr))
	}
	for i, r := range batch {
		if loadErr != nil {
			// Some went in, some did not: settle each on its own
			// (inserting one that is there already changes nothing).
			if err := m.table.Insert(r.Prefix, r.Result); err != nil {
				m.fail(fmt.Errorf("fib insert %s: %w", r.Prefix, err))
				m.release(r.Result) // the old entry, if any, stays with its references
				continue
			}
		}
		m.installed[r.Prefix] = r.Result
		m.stats.RoutesApplied++
		if changes[i].had {
			m.release(changes[i].old)
		}
	}
}

// eachDirty calls fn for every prefix that may need a change: the dirty
// set, or after a full dump every route, installed entry and host route.
func (m *Mirror) eachDirty(fn func(netip.Prefix)) {
	if !m.all {
		for p := range m.dirty {
			fn(p)
		}
		return
	}
	for p := range m.routes {
		fn(p)
	}
	for p := range m.installed {
		if _, ok := m.routes[p]; !ok {
			fn(p)
		}
	}
	for p := range m.hostRoutes {
		_, r := m.routes[p]
		_, i := m.installed[p]
		if !r && !i {
			fn(p)
		}
	}
	for p := range m.localN {
		_, r := m.routes[p]
		_, i := m.installed[p]
		_, h := m.hostRoutes[p]
		if !r && !i && !h {
			fn(p)
		}
	}
}

// updateHostRoute recomputes whether a neighbour gets a host route: a
// usable neighbour on a served interface, inside a connected prefix of
// that interface, not link-local.
func (m *Mirror) updateHostRoute(k nhKey) {
	p := netip.PrefixFrom(k.addr, k.addr.BitLen())
	n, ok := m.neighs[k]
	want := ok && n.resolved() && m.links[k.ifindex].serve && !k.addr.IsLinkLocalUnicast() && m.connectedVia(k)
	_, have := m.hostRoutes[p]
	if want != have || want && m.hostRoutes[p] != k {
		if want {
			m.hostRoutes[p] = k
		} else {
			delete(m.hostRoutes, p)
		}
		m.markDirty(p)
	}
}

// connectedVia reports whether the kernel's longest match for k.addr is a
// connected route out of k.ifindex.
func (m *Mirror) connectedVia(k nhKey) bool {
	for l := k.addr.BitLen(); l >= 0; l-- {
		p, _ := k.addr.Prefix(l)
		if r, ok := m.best(p); ok {
			return r.typ == unix.RTN_UNICAST && len(r.hops) == 1 && !r.hops[0].gw.IsValid() && r.hops[0].ifindex == k.ifindex
		}
	}
	return false
}

// idPool hands out IDs from 1 (0 stays unused), never one it holds
// reserved while there is room below max (0: no limit); without room it
// takes a reserved one back (reuse in place) and marks it taken.
//
// A released ID is pending until a grace period has passed: an XDP
// program or worker that looked a route up just before the release may
// still read the nexthop or group by that ID, and must not find another
// route's there. Fresh IDs are handed out first; only when there is no
// room left does the pool wait for one grace period (amortised over every
// ID released since the last) and reuse the pending IDs.
type idPool struct {
	next, max uint32
	free      []uint32 // released and past a grace period
	pending   []uint32 // released, readers may still use them
	reserved  map[uint32]bool
	taken     map[uint32]bool // reserved IDs handed out for lack of room
	// grace waits until no reader can still hold an ID released before
	// the call (fib.Table.Grace).
	grace func() error
}

func (p *idPool) get() uint32 {
	if n := len(p.free); n > 0 {
		id := p.free[n-1]
		p.free = p.free[:n-1]
		return id
	}
	next := p.next + 1
	for p.reserved[next] {
		next++
	}
	if p.max > 0 && next > p.max && len(p.pending) > 0 && p.grace != nil {
		if err := p.grace(); err == nil {
			p.free, p.pending = append(p.free, p.pending...), p.pending[:0]
			return p.get()
		}
	}
	if p.max > 0 && next > p.max {
		for id := range p.reserved {
			delete(p.reserved, id)
			if p.taken == nil {
				p.taken = map[uint32]bool{}
			}
			p.taken[id] = true
			return id
		}
	}
	p.next = next
	return next
}

// put releases an ID: it is reused only after a grace period.
func (p *idPool) put(id uint32) { p.pending = append(p.pending, id) }

// reserve keeps ids from being handed out until unreserve.
func (p *idPool) reserve(ids []uint32) {
	if p.reserved == nil {
		p.reserved = map[uint32]bool{}
	}
	for _, id := range ids {
		p.reserved[id] = true
	}
}

// unreserve makes every reserved id available again. They were an
// earlier process's, just deleted from the FIB: a reader may still hold
// one, so they are handed out again only after a grace period (one, for
// all of them; a pool without grace has no readers).
func (p *idPool) unreserve() {
	safe := len(p.reserved) == 0 || p.grace == nil || p.grace() == nil
	for id := range p.reserved {
		switch {
		case !safe && id <= p.next: // above next: left out, as in the safe case
			p.pending = append(p.pending, id)
		case id <= p.next:
			p.free = append(p.free, id)
		}
	}
	p.reserved, p.taken = nil, nil
}
