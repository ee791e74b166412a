// Package netlink mirrors the kernel's routes, neighbours, links and
// addresses into xdprouter's FIB over netlink, live, so any routing daemon
// (FRR, BIRD, `ip route`) programs the dataplane.
//
// Gateway routes out of interfaces xdprouter serves become FIB routes to
// nexthops that follow the gateway's neighbour entry; every usable
// neighbour on a served interface also gets a host route, so directly
// connected hosts take the fast path; everything else (connected
// prefixes, routes out of other interfaces, routes by kernel nexthop
// object, throw/broadcast) resolves to "kernel", and blackhole,
// unreachable, prohibit and local keep their meaning. A gateway with no
// neighbour entry is handed to the kernel as a managed neighbour (Linux
// 5.16+), so it is resolved without waiting for a packet.
package netlink

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"sync"
	"time"

	vnl "github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/xdprouter/xdprouter/dataplane/fib"
)

// Dataplane is what the mirror programs besides the FIB: the XDP
// program's local addresses (xdp.Program satisfies it).
type Dataplane interface {
	AddLocal(netip.Addr) error
	RemoveLocal(netip.Addr) error
}

// Config configures a mirror; zero fields take defaults.
type Config struct {
	// Namespace is the named network namespace to mirror ("" = the
	// caller's).
	Namespace string
	// Table is the routing table to mirror (default 254, main).
	Table int
	// Serve reports whether xdprouter forwards out of an interface (nil:
	// every interface but loopback).
	Serve func(ifindex int, name string) bool
	// ReceiveBuffer is each subscription socket's receive buffer in bytes
	// (default 64 MiB, forced past rmem_max when root).
	ReceiveBuffer int
	// Dataplane, when set, gets the local addresses.
	Dataplane Dataplane
	// NoManagedNeighbours turns off asking the kernel to resolve gateways.
	NoManagedNeighbours bool
}

// Stats count what the mirror did.
type Stats struct {
	RoutesApplied uint64 // FIB inserts, replaces and deletes
	NexthopWrites uint64
	Events        uint64 // netlink notifications handled
	Resyncs       uint64 // full dumps after an error or overflow
	Errors        uint64
	LastError     string
	Routes        int // kernel routes mirrored
	FIBEntries    int // prefixes in the FIB (routes and neighbour host routes)
	Nexthops      int
	ECMPGroups    int
	Neighbours    int
	Links         int
}

// Mirror keeps a FIB equal to the kernel's table.
type Mirror struct {
	cfg   Config
	table *fib.Table
	ns    netns.NsHandle
	h     *vnl.Handle

	mu    sync.Mutex // guards stats for readers outside the loop
	stats Stats

	// State owned by the loop.
	links      map[int]link
	addrs      map[netip.Addr]int // local address -> ifindex
	neighs     map[nhKey]neigh
	routes     map[netip.Prefix]prefixRoutes
	all        bool // after a full dump: every prefix may have changed
	nroutes    int
	hostRoutes map[netip.Prefix]nhKey
	// local are the routes of the kernel's table local (when another
	// table is mirrored): the kernel looks there first (rule 0), so an
	// address one of them covers is the kernel's, whatever the mirrored
	// table says. localN counts them by prefix; localLens are the prefix
	// lengths present, by family (0: IPv4, 1: IPv6).
	local     map[localKey]struct{}
	localN    map[netip.Prefix]int
	localLens [2]map[int]int
	installed map[netip.Prefix]fib.Result
	pruned    bool // the first sync's prune of a reopened FIB is done
	dirty     map[netip.Prefix]struct{}
	nexthops  map[nhKey]*nexthop
	nhByID    map[uint32]nhKey
	groups    map[string]*ecmpGroup
	groupByID map[uint32]string
	nhIDs     idPool
	ecmpIDs   idPool
	// staleNH and staleECMP are the IDs a reopened FIB came with, deleted
	// once the first sync has moved every route off them.
	staleNH, staleECMP []uint32
	managed            map[nhKey]bool
	resync             chan struct{}
	calls              chan func() // run on the loop between notifications (Call)
}

// New creates a mirror writing into table.
func New(table *fib.Table, cfg Config) (*Mirror, error) {
	if cfg.Table == 0 {
		cfg.Table = unix.RT_TABLE_MAIN
	}
	if cfg.ReceiveBuffer == 0 {
		cfg.ReceiveBuffer = 64 << 20
	}
	m := &Mirror{cfg: cfg, table: table, resync: make(chan struct{}, 1), calls: make(chan func())}
	m.reset()
	var err error
	if cfg.Namespace != "" {
		if m.ns, err = netns.GetFromName(cfg.Namespace); err != nil {
			return nil, fmt.Errorf("open netns %s: %w", cfg.Namespace, err)
		}
	} else {
		// The caller's namespace: sockets open where we are, without the
		// setns(2) (CAP_SYS_ADMIN) an explicit handle would cost.
		m.ns = netns.None()
	}
	// Released IDs are reused only after a grace period, and only once
	// the table's IDs are all handed out.
	nhCap, ecmpCap := table.IDCapacity()
	m.nhIDs.max, m.ecmpIDs.max = uint32(nhCap-1), uint32(ecmpCap-1)
	m.nhIDs.grace, m.ecmpIDs.grace = table.Grace, table.Grace
	if table.Reopened() {
		// The earlier process's nexthops and ECMP groups stay as they are
		// while its routes still point at them: the first sync writes
		// every route over fresh IDs, and only after it are the old IDs
		// deleted (prune). Reusing one earlier would send a recovered
		// route's packets to another gateway until its own update.
		nh, ecmp := table.LiveIDs()
		// Reserving needs room for the new IDs beside the old ones; a
		// table more than half full reuses IDs in place instead (a
		// recovered route may then briefly use another's nexthop).
		if 2*len(nh) < nhCap && 2*len(ecmp) < ecmpCap {
			m.nhIDs.reserve(nh)
			m.ecmpIDs.reserve(ecmp)
			m.staleNH, m.staleECMP = nh, ecmp
		} else {
			slog.Warn("FIB reopened more than half full of nexthop IDs: reusing them in place during the first sync",
				"nexthops", len(nh), "of", nhCap, "ecmp_groups", len(ecmp), "of_ecmp", ecmpCap)
		}
	}
	if m.h, err = vnl.NewHandleAt(m.ns); err != nil {
		m.closeNS()
		return nil, fmt.Errorf("netlink handle: %w", err)
	}
	return m, nil
}

func (m *Mirror) reset() {
	m.links = map[int]link{}
	m.addrs = map[netip.Addr]int{}
	m.neighs = map[nhKey]neigh{}
	m.routes = map[netip.Prefix]prefixRoutes{}
	m.nroutes = 0
	m.hostRoutes = map[netip.Prefix]nhKey{}
	m.local, m.localN = map[localKey]struct{}{}, map[netip.Prefix]int{}
	m.localLens = [2]map[int]int{{}, {}}
	if m.installed == nil {
		m.installed = map[netip.Prefix]fib.Result{}
		m.dirty = map[netip.Prefix]struct{}{}
		m.nexthops = map[nhKey]*nexthop{}
		m.nhByID = map[uint32]nhKey{}
		m.groups = map[string]*ecmpGroup{}
		m.groupByID = map[uint32]string{}
		m.managed = map[nhKey]bool{}
	}
}

// Close releases the mirror's handles (the FIB stays as it is).
func (m *Mirror) Close() error {
	m.h.Close()
	return m.closeNS()
}

func (m *Mirror) closeNS() error {
	if !m.ns.IsOpen() {
		return nil
	}
	return m.ns.Close()
}

// Stats returns the counters.
func (m *Mirror) Stats() Stats {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.stats
}

func (m *Mirror) fail(err error) {
	slog.Warn("fib mirror", "err", err)
	m.mu.Lock()
	m.stats.Errors++
	m.stats.LastError = err.Error()
	m.mu.Unlock()
}

// Run subscribes to changes, loads the kernel's current state, and keeps
// the FIB following it until ctx ends. A subscription error or overflow
// (ENOBUFS, interrupted dump) ends that round: the mirror subscribes
// again and resyncs, converging to the kernel's state without clearing
// the FIB.
func (m *Mirror) Run(ctx context.Context) error {
	for first := true; ctx.Err() == nil; first = false {
		if !first {
			m.mu.Lock()
			m.stats.Resyncs++
			m.mu.Unlock()
			// Let the burst that overflowed settle.
			select {
			case <-ctx.Done():
				return nil
			case <-time.After(10 * time.Millisecond):
			}
		}
		if err := m.round(ctx); err != nil {
			return err
		}
	}
	return nil
}

// Call runs fn on the goroutine that runs the mirror, between two
// notifications, so fn may use Entries and Check while Run follows the
// kernel. It fails when Run does not take fn before ctx ends.
func (m *Mirror) Call(ctx context.Context, fn func()) error {
	done := make(chan struct{})
	select {
	case m.calls <- func() { fn(); close(done) }:
	case <-ctx.Done():
		return fmt.Errorf("netlink mirror busy or not running: %w", ctx.Err())
	}
	<-done
	return nil
}

// round subscribes, dumps, and follows notifications until ctx ends (nil)
// or a subscription fails (nil too: Run starts another round). It returns
// an error only when it cannot subscribe or dump at all.
func (m *Mirror) round(ctx context.Context) error {
	done := make(chan struct{})
	defer close(done)
	routes := make(chan vnl.RouteUpdate, 65536)
	neighs := make(chan vnl.NeighUpdate, 4096)
	links := make(chan vnl.LinkUpdate, 256)
	addrs := make(chan vnl.AddrUpdate, 256)
	failed := make(chan struct{})
	var once sync.Once
	onErr := func(err error) {
		select {
		case <-done:
			return // the sockets are closing
		default:
		}
		m.fail(fmt.Errorf("netlink subscription: %w", err))
		once.Do(func() { close(failed) })
	}
	ns := m.ns
	buf := m.cfg.ReceiveBuffer
	err := errors.Join(
		vnl.RouteSubscribeWithOptions(routes, done, vnl.RouteSubscribeOptions{Namespace: &ns, ErrorCallback: onErr,
			ReceiveBufferSize: buf, ReceiveBufferForceSize: true}),
		vnl.NeighSubscribeWithOptions(neighs, done, vnl.NeighSubscribeOptions{Namespace: &ns, ErrorCallback: onErr,
			ReceiveBufferSize: buf, ReceiveBufferForceSize: true}),
		vnl.LinkSubscribeWithOptions(links, done, vnl.LinkSubscribeOptions{Namespace: &ns, ErrorCallback: onErr,
			ReceiveBufferSize: buf, ReceiveBufferForceSize: true}),
		vnl.AddrSubscribeWithOptions(addrs, done, vnl.AddrSubscribeOptions{Namespace: &ns, ErrorCallback: onErr,
			ReceiveBufferSize: buf, ReceiveBufferForceSize: true}),
	)
	if err != nil {
		return fmt.Errorf("subscribe to netlink: %w", err)
	}
	if err := m.Sync(); err != nil {
		return err
	}
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-failed:
			return nil
		case fn := <-m.calls:
			fn()
		case <-m.resync:
			if err := m.Sync(); err != nil {
				return err
			}
			m.mu.Lock()
			m.stats.Resyncs++
			m.mu.Unlock()
			continue
		case u, ok := <-routes:
			if !ok {
				return nil
			}
			m.onRoute(u)
		case u, ok := <-neighs:
			if !ok {
				return nil
			}
			m.onNeigh(u)
		case u, ok := <-links:
			if !ok {
				return nil
			}
			m.onLink(u)
		case u, ok := <-addrs:
			if !ok {
				return nil
			}
			m.onAddr(u)
		}
		// Drain the burst, then apply it as one batch.
		n := 1
	drain:
		for ; n < 8192; n++ {
			select {
			case u, ok := <-routes:
				if !ok {
					break drain
				}
				m.onRoute(u)
			case u, ok := <-neighs:
				if !ok {
					break drain
				}
				m.onNeigh(u)
			default:
				break drain
			}
		}
		m.reconcile()
		m.count(uint64(n))
	}
}

func (m *Mirror) count(events uint64) {
	m.mu.Lock()
	m.stats.Events += events
	m.stats.Routes, m.stats.FIBEntries = m.nroutes, len(m.installed)
	m.stats.Nexthops, m.stats.ECMPGroups = len(m.nexthops), len(m.groups)
	m.stats.Neighbours, m.stats.Links = len(m.neighs), len(m.links)
	m.mu.Unlock()
}

// dumpRoutes streams the table's routes into the mirror's state: one
// goroutine parses the dump into compact batches while this one applies
// them (a full table of vnl.Route values would be gigabytes of copying).
func (m *Mirror) dumpRoutes() error {
	type kr struct {
		k rkey
		r route
	}
	batches := make(chan []kr, 64)
	errc := make(chan error, 1)
	go func() {
		defer close(batches)
		batch := make([]kr, 0, 1024)
		errc <- m.h.RouteListFilteredIter(vnl.FAMILY_ALL, &vnl.Route{Table: m.cfg.Table}, vnl.RT_FILTER_TABLE,
			func(r vnl.Route) bool {
				if k, v, ok := m.routeOf(r); ok {
					if batch = append(batch, kr{k, v}); len(batch) == cap(batch) {
						batches <- batch
						batch = make([]kr, 0, 1024)
					}
				}
				return true
			})
		batches <- batch
	}()
	for b := range batches {
		for _, x := range b {
			m.putRoute(x.k, x.r)
		}
	}
	if err := <-errc; err != nil {
		return err
	}
	if m.cfg.Table == unix.RT_TABLE_LOCAL {
		return nil
	}
	return m.h.RouteListFilteredIter(vnl.FAMILY_ALL, &vnl.Route{Table: unix.RT_TABLE_LOCAL}, vnl.RT_FILTER_TABLE,
		func(r vnl.Route) bool {
			m.localRoute(r, true)
			return true
		})
}

// Sync dumps links, addresses, neighbours and routes (retrying an
// interrupted dump) and brings the FIB to match, applying only the
// differences: nothing is cleared, so forwarding continues throughout.
// Run calls it; call it directly only when Run is not running.
func (m *Mirror) Sync() error {
	var links []vnl.Link
	var addrs []vnl.Addr
	var neighs []vnl.Neigh
	oldAddrs := m.addrs
	for try := 0; ; try++ {
		var err error
		links, err = m.h.LinkList()
		if err == nil {
			addrs, err = m.h.AddrList(nil, vnl.FAMILY_ALL)
		}
		if err == nil {
			neighs, err = m.h.NeighList(0, vnl.FAMILY_ALL)
		}
		if err == nil {
			m.reset()
			m.all = true
			for _, l := range links {
				m.setLink(l)
			}
			err = m.dumpRoutes()
		}
		if err == nil {
			break
		}
		if !errors.Is(err, vnl.ErrDumpInterrupted) || try == 10 {
			return fmt.Errorf("netlink dump: %w", err)
		}
	}
	for _, a := range addrs {
		m.setAddr(a.IPNet.IP, a.LinkIndex, true)
	}
	for a := range oldAddrs {
		if _, ok := m.addrs[a]; !ok && m.cfg.Dataplane != nil {
			if err := m.cfg.Dataplane.RemoveLocal(a); err != nil {
				m.fail(err)
			}
		}
	}
	for _, n := range neighs {
		m.setNeigh(n, true)
	}
	for k, nh := range m.nexthops {
		m.writeNH(k, nh)
	}
	m.reconcile()
	if !m.pruned && m.table.Reopened() {
		m.pruned = m.prune() // a failed prune is tried again at the next sync
	} else {
		m.pruned = true
	}
	m.count(0)
	return nil
}

// prune deletes, after the first full sync of a FIB reopened from pins,
// the routes an earlier process installed that the kernel no longer has
// (routes deleted while no daemon ran): they would forward forever.
func (m *Mirror) prune() bool {
	var stale []netip.Prefix
	m.table.Routes(func(r fib.Route) bool {
		if _, ok := m.installed[r.Prefix]; !ok {
			stale = append(stale, r.Prefix)
		}
		return true
	})
	failed := false
	for _, p := range stale {
		if err := m.table.Delete(p); err != nil {
			m.fail(fmt.Errorf("fib delete stale %s: %w", p, err))
			failed = true
			continue
		}
		m.stats.RoutesApplied++
	}
	if len(stale) > 0 {
		slog.Info("FIB reopened from pins: removed routes the kernel no longer has", "routes", len(stale))
	}
	if failed {
		return false // a stale route still points at the old IDs: keep them reserved
	}
	// No route points at the earlier process's IDs any more; those taken
	// back for lack of room (idPool.get) are ours now.
	for _, id := range m.staleECMP {
		if m.ecmpIDs.taken[id] {
			continue
		}
		if err := m.table.DeleteECMP(id); err != nil {
			m.fail(fmt.Errorf("fib delete stale ecmp group %d: %w", id, err))
		}
	}
	for _, id := range m.staleNH {
		if m.nhIDs.taken[id] {
			continue
		}
		if err := m.table.DeleteNexthop(id); err != nil {
			m.fail(fmt.Errorf("fib delete stale nexthop %d: %w", id, err))
		}
	}
	m.nhIDs.unreserve()
	m.ecmpIDs.unreserve()
	m.staleNH, m.staleECMP = nil, nil
	return true
}

func (m *Mirror) setLink(l vnl.Link) {
	a := l.Attrs()
	serve := a.Flags&net.FlagLoopback == 0
	if m.cfg.Serve != nil {
		serve = m.cfg.Serve(a.Index, a.Name)
	}
	up := a.Flags&net.FlagUp != 0 && (a.OperState == vnl.OperUp || a.OperState == vnl.OperUnknown)
	nl := link{name: a.Name, up: up, mtu: a.MTU, mac: a.HardwareAddr, serve: serve}
	old, had := m.links[a.Index]
	m.links[a.Index] = nl
	if had && (old.up != nl.up || old.mtu != nl.mtu || old.mac.String() != nl.mac.String() || old.serve != nl.serve) {
		m.linkChanged(a.Index)
		if old.up != nl.up {
			// IPv4 flushes the routes of a device going down without a
			// notification each: only a dump tells what is left.
			m.requestResync()
		}
	}
}

func (m *Mirror) requestResync() {
	select {
	case m.resync <- struct{}{}:
	default:
	}
}

// linkChanged rewrites the nexthops out of an interface and re-evaluates
// its routes (serve changes which ones the FIB forwards).
func (m *Mirror) linkChanged(ifindex int) {
	for k, nh := range m.nexthops {
		if k.ifindex == ifindex {
			m.writeNH(k, nh)
		}
	}
	for p, pr := range m.routes {
		for _, h := range pr.best().hops {
			if h.ifindex == ifindex {
				m.markDirty(p)
			}
		}
	}
	for k := range m.neighs {
		if k.ifindex == ifindex {
			m.updateHostRoute(k)
		}
	}
}

func (m *Mirror) onLink(u vnl.LinkUpdate) {
	a := u.Link.Attrs()
	if a.Index == 0 {
		return
	}
	if u.Header.Type == unix.RTM_DELLINK {
		m.removeLink(a.Index)
		m.requestResync()
		return
	}
	m.setLink(u.Link)
}

// removeLink forgets an interface: its routes are gone from the kernel
// already (each with its own notification); its neighbours go here.
func (m *Mirror) removeLink(ifindex int) {
	delete(m.links, ifindex)
	for k := range m.neighs {
		if k.ifindex == ifindex {
			delete(m.neighs, k)
			m.updateHostRoute(k)
		}
	}
	m.linkChanged(ifindex)
}

func (m *Mirror) setAddr(ip []byte, ifindex int, add bool) {
	a, ok := netip.AddrFromSlice(ip)
	if !ok {
		return
	}
	a = a.Unmap()
	if add {
		m.addrs[a] = ifindex
	} else {
		delete(m.addrs, a)
	}
	if m.cfg.Dataplane == nil {
		return
	}
	var err error
	if add {
		err = m.cfg.Dataplane.AddLocal(a)
	} else {
		err = m.cfg.Dataplane.RemoveLocal(a)
	}
	if err != nil {
		m.fail(err)
	}
}

func (m *Mirror) onAddr(u vnl.AddrUpdate) {
	m.setAddr(u.LinkAddress.IP, u.LinkIndex, u.NewAddr)
}

func (m *Mirror) onRoute(u vnl.RouteUpdate) {
	if u.Table == unix.RT_TABLE_LOCAL && m.cfg.Table != unix.RT_TABLE_LOCAL {
		m.localRoute(u.Route, u.Type == unix.RTM_NEWROUTE)
		return
	}
	k, v, ok := m.routeOf(u.Route)
	if !ok {
		return
	}
	switch {
	case u.Type == unix.RTM_NEWROUTE && u.NlFlags&unix.NLM_F_APPEND != 0:
		// IPv6 adds a nexthop to a multipath route.
		pr := m.routes[k.prefix]
		old, _ := pr.get(k.metric)
		for _, h := range v.hops {
			if !slices.Contains(old.hops, h) {
				old.hops = append(old.hops, h)
			}
		}
		old.typ, old.protocol = v.typ, v.protocol
		m.putRoute(k, old)
	case u.Type == unix.RTM_NEWROUTE:
		m.putRoute(k, v)
	case u.Type == unix.RTM_DELROUTE:
		pr, ok := m.routes[k.prefix]
		if !ok {
			return
		}
		old, had := pr.get(k.metric)
		if !had {
			return
		}
		// IPv6 deletes multipath nexthops one by one.
		if len(old.hops) > 1 && len(v.hops) == 1 {
			old.hops = slices.DeleteFunc(old.hops, func(h hop) bool { return h == v.hops[0] })
			if len(old.hops) > 0 {
				m.putRoute(k, old)
				return
			}
		}
		m.delRoute(k)
	}
}

func (m *Mirror) putRoute(k rkey, v route) {
	pr, ok := m.routes[k.prefix]
	if !ok {
		pr = prefixRoutes{first: metricRoute{k.metric, v}}
		m.nroutes++
	} else if pr.put(k.metric, v) {
		m.nroutes++
	}
	m.routes[k.prefix] = pr
	m.markDirty(k.prefix)
	m.connectedChanged(k.prefix, v)
}

func (m *Mirror) delRoute(k rkey) {
	pr := m.routes[k.prefix]
	old, had := pr.get(k.metric)
	if !had {
		return
	}
	m.nroutes--
	if pr.del(k.metric) {
		delete(m.routes, k.prefix)
	} else {
		m.routes[k.prefix] = pr
	}
	m.markDirty(k.prefix)
	m.connectedChanged(k.prefix, old)
}

// markDirty queues a prefix for reconcile (after a full dump everything
// is reconciled anyway).
func (m *Mirror) markDirty(p netip.Prefix) {
	if !m.all {
		m.dirty[p] = struct{}{}
	}
}

// connectedChanged re-evaluates neighbour host routes under a connected
// prefix that appeared or went away.
func (m *Mirror) connectedChanged(p netip.Prefix, r route) {
	if len(r.hops) != 1 || r.hops[0].gw.IsValid() {
		return
	}
	for k := range m.neighs {
		if p.Contains(k.addr) {
			m.updateHostRoute(k)
		}
	}
}

func (m *Mirror) setNeigh(n vnl.Neigh, present bool) {
	if n.IP == nil || n.Flags&vnl.NTF_PROXY != 0 {
		return
	}
	k := nhKey{ifindex: n.LinkIndex, addr: addrOf(n.IP)}
	if present {
		m.neighs[k] = neigh{mac: n.HardwareAddr, state: n.State}
	} else {
		delete(m.neighs, k)
	}
	if nh, ok := m.nexthops[k]; ok {
		m.writeNH(k, nh)
	}
	m.updateHostRoute(k)
}

func (m *Mirror) onNeigh(u vnl.NeighUpdate) {
	m.setNeigh(u.Neigh, u.Type == unix.RTM_NEWNEIGH)
	if u.Type == unix.RTM_DELNEIGH {
		k := nhKey{ifindex: u.LinkIndex, addr: addrOf(u.IP)}
		if _, used := m.nexthops[k]; used {
			delete(m.managed, k)
			m.resolve(k) // a gateway still in use: have it resolved again
		}
	}
}

// resolve asks the kernel to resolve a gateway now (like `ip neigh add
// ADDR dev IF managed`): the kernel keeps a managed neighbour resolved.
func (m *Mirror) resolve(k nhKey) {
	if m.cfg.NoManagedNeighbours || m.managed[k] || !m.links[k.ifindex].serve {
		return
	}
	m.managed[k] = true
	family := vnl.FAMILY_V4
	if k.addr.Is6() {
		family = vnl.FAMILY_V6
	}
	n := &vnl.Neigh{LinkIndex: k.ifindex, Family: family, IP: k.addr.AsSlice(), FlagsExt: vnl.NTF_EXT_MANAGED}
	if err := m.h.NeighAdd(n); err != nil && !errors.Is(err, unix.EEXIST) {
		m.fail(fmt.Errorf("ask the kernel to resolve %s on ifindex %d (managed neighbour, Linux 5.16+): %w", k.addr, k.ifindex, err))
	}
}
