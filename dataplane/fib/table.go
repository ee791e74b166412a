// Package fib is xdprouter's forwarding table: longest-prefix match for
// IPv4 and IPv6 (a 2^18-entry top level, then Poptrie nodes of 6 bits with
// leaf compression, see poptrie.go: a full Internet table takes a few MiB
// and stays in cache), nexthops and ECMP groups. Everything the data plane
// reads lives in BPF array maps created with BPF_F_MMAPABLE and written by
// Go through the mapping, so the XDP program (bpf/fib.h) and the Go
// workers read the same memory.
//
// One goroutine writes (the control plane); any number read at the same
// time and only ever see the old or the new answer for an address. Memory
// a reader may still be looking at (a replaced node block, a replaced
// nexthop) is reused only after a grace period: the kernel's RCU (which
// covers every running XDP program) and every registered Go Reader.
//
// It needs Linux 5.5 or newer (mmapable array maps) and CAP_BPF.
package fib

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/xdprouter/xdprouter/dataplane/bpffs"
)

// Config sizes a table; zero fields take the defaults.
type Config struct {
	// Nodes4 and Nodes6 are the number of 24-byte nodes of each family,
	// Leaves4 and Leaves6 the number of 2-byte leaves. The defaults hold
	// today's full table twice over (a change writes new blocks before
	// the old ones are freed; a reopened table is emitted afresh).
	Nodes4, Leaves4 int
	Nodes6, Leaves6 int
	// Nexthops is the number of nexthop IDs (default 65536).
	Nexthops int
	// ECMPGroups is the number of ECMP group IDs (default 4096).
	ECMPGroups int
	// PinPath, when set, is a directory on bpffs where the table's maps
	// are pinned: a new table with the same path and sizes reopens them,
	// forwarding state and all (see Reopened).
	PinPath string
}

func (c Config) withDefaults() Config {
	for _, d := range []struct {
		v   *int
		def int
	}{{&c.Nodes4, DefaultNodes4}, {&c.Leaves4, DefaultLeaves4}, {&c.Nodes6, DefaultNodes6}, {&c.Leaves6, DefaultLeaves6}} {
		if *d.v == 0 {
			*d.v = d.def
		}
	}
	if c.Nexthops == 0 {
		c.Nexthops = 65536
	}
	if c.ECMPGroups == 0 {
		c.ECMPGroups = 4096
	}
	return c
}

// Default sizes (see Config), measured on the real table of 2024 scaled
// to today's 1.04 M IPv4 and 0.22 M IPv6 prefixes.
const (
	DefaultNodes4  = 1 << 16
	DefaultLeaves4 = 6 << 20
	DefaultNodes6  = 1 << 19
	DefaultLeaves6 = 3 << 19
)

// Layout constants shared with bpf/fib.h.
const (
	rowWords = 256 // one element of a rows map: 256 entries
	rowBytes = rowWords * 4
	maxSize  = 1 << 28
)

// Table is a forwarding table in mmap'd BPF maps.
type Table struct {
	mu   sync.Mutex // serialises writers
	cfg  Config
	maps Maps
	mem  [][]byte // mappings, unmapped on Close

	v4, v6 *family
	res    *results // shared by v4 and v6
	nh     *slots[nhEntry]
	ecmp   *slots[ecmpEntry]
	// nhGen numbers nexthop writes (NexthopEntry.Gen). It starts from the
	// clock, so a process that reopens pinned maps is unlikely to hand
	// out the generations its predecessor wrote (no frame crosses a
	// restart anyway: the sockets and UMEMs are new).
	nhGen uint32

	barrier      *ebpf.Map // ARRAY_OF_MAPS: updating it waits for RCU
	barrierInner *ebpf.Map

	readersMu sync.Mutex
	readers   map[*Reader]struct{}
	graces    atomic.Uint64

	pinned   []*ebpf.Map
	reopened int // maps found pinned
}

// Maps are the BPF maps of a table, for the XDP program loader to pass as
// MapReplacements under the names bpf/fib.h declares.
type Maps struct {
	V4Top, V4Nodes, V4Leaves *ebpf.Map
	V6Top, V6Nodes, V6Leaves *ebpf.Map
	Results                  *ebpf.Map
	NexthopPtr, Nexthops     *ebpf.Map
	ECMPPtr, ECMP            *ebpf.Map
}

// Replacements returns the maps keyed by their names in bpf/fib.h.
func (m Maps) Replacements() map[string]*ebpf.Map {
	return map[string]*ebpf.Map{
		"fib4_top": m.V4Top, "fib4_nodes": m.V4Nodes, "fib4_leaves": m.V4Leaves,
		"fib6_top": m.V6Top, "fib6_nodes": m.V6Nodes, "fib6_leaves": m.V6Leaves,
		"fib_results": m.Results,
		"fib_nh_ptr":  m.NexthopPtr, "fib_nh": m.Nexthops,
		"fib_ecmp_ptr": m.ECMPPtr, "fib_ecmp": m.ECMP,
	}
}

// New creates an empty table. It needs CAP_BPF (root).
func New(cfg Config) (*Table, error) {
	cfg = cfg.withDefaults()
	var errs []error
	for name, v := range map[string]int{"nodes4": cfg.Nodes4, "leaves4": cfg.Leaves4, "nodes6": cfg.Nodes6,
		"leaves6": cfg.Leaves6, "nexthops": cfg.Nexthops, "ecmp groups": cfg.ECMPGroups} {
		if v < 1 || v > maxSize {
			errs = append(errs, fmt.Errorf("%s %d: use 1 to %d", name, v, maxSize))
		}
	}
	if cfg.Nexthops > MaxIndex+1 || cfg.ECMPGroups > MaxIndex+1 {
		errs = append(errs, fmt.Errorf("nexthops and ecmp groups: at most %d", MaxIndex+1))
	}
	if err := errors.Join(errs...); err != nil {
		return nil, fmt.Errorf("fib config: %w", err)
	}
	t := &Table{cfg: cfg, readers: map[*Reader]struct{}{}, nhGen: uint32(time.Now().UnixNano())}
	if cfg.PinPath != "" {
		if err := bpffs.Ensure(cfg.PinPath); err != nil {
			return nil, err
		}
	}
	if err := t.create(); err != nil {
		t.Close()
		return nil, err
	}
	switch {
	case t.reopened == 0:
	case t.reopened == len(t.pinned):
		if err := t.rebuild(); err != nil {
			t.Close()
			return nil, err
		}
	default:
		t.Close()
		return nil, fmt.Errorf("fib pins in %s: only %d of %d maps were there: remove the directory and start again", cfg.PinPath, t.reopened, len(t.pinned))
	}
	return t, nil
}

// Reopened reports whether the table reopened pinned maps. Such a table
// forwards as before. Routes lists prefixes that forward exactly as the
// reopened table did (the emitted table keeps results, not the prefixes
// that painted them, so these may be other prefixes than those loaded):
// load the current routes again, then delete the listed routes that are
// not among them.
func (t *Table) Reopened() bool { return t.reopened > 0 }

// Unpin removes the table's pins: the maps go when the last user closes.
func (t *Table) Unpin() error {
	var errs []error
	for _, m := range t.pinned {
		errs = append(errs, m.Unpin())
	}
	return errors.Join(errs...)
}

// rebuild recovers each family and the results from reopened maps (see
// family.scan).
func (t *Table) rebuild() error {
	refs := make([]uint32, MaxResults)
	var found [2]*reopened
	for i, f := range []*family{t.v4, t.v6} {
		var err error
		if found[i], err = f.scan(refs); err != nil {
			return fmt.Errorf("reopen pinned fib in %s: %w", t.cfg.PinPath, err)
		}
	}
	t.res.rebuild(refs)
	for i, f := range []*family{t.v4, t.v6} {
		if err := f.adopt(found[i]); err != nil {
			return fmt.Errorf("reopen pinned fib in %s: %w", t.cfg.PinPath, err)
		}
	}
	t.nh.rebuild()
	t.ecmp.rebuild()
	return nil
}

func (t *Table) create() error {
	var err error
	rm, err := t.rows("fib_results", MaxResults/rowWords)
	if err != nil {
		return err
	}
	t.maps.Results, t.res = rm.m, newResults(rm.words)
	if t.v4, t.maps.V4Top, t.maps.V4Nodes, t.maps.V4Leaves, err = t.family("fib4", 32, top4, t.cfg.Nodes4, t.cfg.Leaves4); err != nil {
		return err
	}
	if t.v6, t.maps.V6Top, t.maps.V6Nodes, t.maps.V6Leaves, err = t.family("fib6", 128, top6, t.cfg.Nodes6, t.cfg.Leaves6); err != nil {
		return err
	}

	if t.nh, t.maps.NexthopPtr, t.maps.Nexthops, err = newSlots[nhEntry](t, "fib_nh", t.cfg.Nexthops); err != nil {
		return err
	}
	if t.ecmp, t.maps.ECMPPtr, t.maps.ECMP, err = newSlots[ecmpEntry](t, "fib_ecmp", t.cfg.ECMPGroups); err != nil {
		return err
	}

	t.barrierInner, err = ebpf.NewMap(&ebpf.MapSpec{Name: "fib_rcu_inner", Type: ebpf.Array, KeySize: 4, ValueSize: 4, MaxEntries: 1})
	if err != nil {
		return fmt.Errorf("create fib grace-period map: %w", err)
	}
	t.barrier, err = ebpf.NewMap(&ebpf.MapSpec{Name: "fib_rcu", Type: ebpf.ArrayOfMaps, KeySize: 4, MaxEntries: 1,
		InnerMap: &ebpf.MapSpec{Type: ebpf.Array, KeySize: 4, ValueSize: 4, MaxEntries: 1}})
	if err != nil {
		return fmt.Errorf("create fib grace-period map: %w", err)
	}
	return nil
}

// mapped is a BPF array map and its mapping as 32-bit words.
type mapped struct {
	m     *ebpf.Map
	words []uint32
}

// family creates one family's maps (name_top, name_nodes, name_leaves)
// and the family over their mappings.
func (t *Table) family(name string, bits, top, nodes, leaves int) (*family, *ebpf.Map, *ebpf.Map, *ebpf.Map, error) {
	tm, err := t.rows(name+"_top", 1<<top/rowWords)
	if err != nil {
		return nil, nil, nil, nil, err
	}
	nm, mem, err := t.mmapArray(name+"_nodes", int(unsafe.Sizeof(node{})), nodes)
	if err != nil {
		return nil, nil, nil, nil, err
	}
	lm, err := t.rows(name+"_leaves", (leaves+2*rowWords-1)/(2*rowWords))
	if err != nil {
		return nil, nil, nil, nil, err
	}
	ns := unsafe.Slice((*node)(unsafe.Pointer(&mem[0])), nodes)
	ls := unsafe.Slice((*uint16)(unsafe.Pointer(&lm.words[0])), leaves)
	return newFamily(bits, top, tm.words, ns, ls, t.res, t.reclaim), tm.m, nm, lm.m, nil
}

// rows creates an mmapable array of n 1 KiB rows and maps it.
func (t *Table) rows(name string, n int) (mapped, error) {
	m, mem, err := t.mmapArray(name, rowBytes, n)
	if err != nil {
		return mapped{}, err
	}
	return mapped{m, unsafe.Slice((*uint32)(unsafe.Pointer(&mem[0])), len(mem)/4)}, nil
}

// mmapArray creates an mmapable BPF array and maps it read-write. The
// kernel lays values out with an 8-byte-aligned stride.
func (t *Table) mmapArray(name string, valueSize, n int) (*ebpf.Map, []byte, error) {
	spec := &ebpf.MapSpec{
		Name: name, Type: ebpf.Array, KeySize: 4, ValueSize: uint32(valueSize),
		MaxEntries: uint32(n), Flags: unix.BPF_F_MMAPABLE,
	}
	var opts ebpf.MapOptions
	existed := false
	if t.cfg.PinPath != "" {
		spec.Pinning = ebpf.PinByName
		opts.PinPath = t.cfg.PinPath
		_, err := os.Stat(filepath.Join(t.cfg.PinPath, name))
		existed = err == nil
	}
	m, err := ebpf.NewMapWithOptions(spec, opts)
	if err != nil && existed {
		return nil, nil, fmt.Errorf("reopen pinned fib map %s in %s (sizes changed? remove the directory): %w", name, t.cfg.PinPath, err)
	}
	if err == nil && t.cfg.PinPath != "" {
		t.pinned = append(t.pinned, m)
		if existed {
			t.reopened++
		}
	}
	if err != nil {
		if errors.Is(err, unix.EPERM) {
			return nil, nil, fmt.Errorf("create fib map %s: %w (needs CAP_BPF: run as root)", name, err)
		}
		return nil, nil, fmt.Errorf("create fib map %s (%d x %d bytes): %w", name, n, valueSize, err)
	}
	size := (valueSize + 7) &^ 7 * n
	mem, err := unix.Mmap(m.FD(), 0, size, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		m.Close()
		return nil, nil, fmt.Errorf("mmap fib map %s (%d bytes): %w", name, size, err)
	}
	t.mem = append(t.mem, mem)
	return m, mem, nil
}

// ErrReadersOpen means Close was called while Readers are registered:
// unmapping would pull the memory from under them.
var ErrReadersOpen = errors.New("fib readers still open: close them first")

// Close unmaps and releases the table's maps (programs still holding them
// keep them alive). It refuses while Readers are open.
func (t *Table) Close() error {
	t.readersMu.Lock()
	n := len(t.readers)
	t.readersMu.Unlock()
	if n > 0 {
		return fmt.Errorf("%w (%d open)", ErrReadersOpen, n)
	}
	var errs []error
	for _, mem := range t.mem {
		errs = append(errs, unix.Munmap(mem))
	}
	t.mem = nil
	for _, m := range []*ebpf.Map{t.maps.Results, t.maps.V4Top, t.maps.V4Nodes, t.maps.V4Leaves, t.maps.V6Top, t.maps.V6Nodes, t.maps.V6Leaves,
		t.maps.NexthopPtr, t.maps.Nexthops, t.maps.ECMPPtr, t.maps.ECMP, t.barrier, t.barrierInner} {
		if m != nil {
			errs = append(errs, m.Close())
		}
	}
	return errors.Join(errs...)
}

// Maps returns the table's BPF maps.
func (t *Table) Maps() Maps { return t.maps }

// Grace returns once no reader can still hold anything it read before
// the call (an ID, a result): every XDP program running now has finished
// and every Go Reader has left its read section. Callers that recycle
// their own IDs (the mirror's nexthop and ECMP IDs) wait for it first.
func (t *Table) Grace() error { return t.grace() }

// grace returns once no reader can still see memory unpublished before
// the call: it waits for an RCU grace period in the kernel (every XDP
// program running now has finished) and for every Go Reader inside a
// lookup to leave it.
func (t *Table) grace() error {
	if err := t.barrier.Update(uint32(0), t.barrierInner, ebpf.UpdateAny); err != nil {
		return fmt.Errorf("kernel grace period: %w", err)
	}
	t.readersMu.Lock()
	defer t.readersMu.Unlock()
	for r := range t.readers {
		if s := r.seq.Load(); s&1 == 1 {
			for r.seq.Load() == s {
				runtime.Gosched()
			}
		}
	}
	t.graces.Add(1)
	return nil
}

// reclaim waits for a grace period and then makes every family's retired
// blocks reusable (they share the results, so one family's retired leaves
// can hold the other's indices).
func (t *Table) reclaim() error {
	if err := t.grace(); err != nil {
		return err
	}
	t.v4.reclaim()
	t.v6.reclaim()
	return nil
}

// Route is a prefix and what it resolves to.
type Route struct {
	Prefix netip.Prefix
	Result Result
}

func (t *Table) familyKey(p netip.Prefix) (*family, [16]byte, error) {
	if !p.IsValid() {
		return nil, [16]byte{}, fmt.Errorf("invalid prefix %v", p)
	}
	a := p.Addr()
	if a.Is4() {
		var k [16]byte
		b := a.As4()
		copy(k[:], b[:])
		return t.v4, k, nil
	}
	if a.Is4In6() {
		return nil, [16]byte{}, fmt.Errorf("prefix %s: use plain IPv4, not IPv4-mapped IPv6", p)
	}
	return t.v6, a.As16(), nil
}

// Insert adds a route or replaces the one with the same prefix.
func (t *Table) Insert(p netip.Prefix, r Result) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	f, a, err := t.familyKey(p)
	if err != nil {
		return err
	}
	if err := f.insert(a, p.Bits(), r); err != nil {
		return fmt.Errorf("insert %s: %w", p, err)
	}
	return nil
}

// Delete removes a route; the addresses it covered fall back to the next
// shorter prefix. Like an insert it writes new nodes before the old ones
// are freed, so it can be refused with ErrCapacity (the table unchanged):
// a short prefix (a default route) shows through most of the table and
// needs room for all of it again.
func (t *Table) Delete(p netip.Prefix) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	f, a, err := t.familyKey(p)
	if err != nil {
		return err
	}
	if err := f.remove(a, p.Bits()); err != nil {
		return fmt.Errorf("delete %s: %w", p, err)
	}
	return nil
}

// Load inserts many routes at once (a later duplicate replaces an earlier
// one). It paints shortest prefixes first, so each entry is written as few
// times as possible, and neighbouring prefixes together, so painting walks
// memory in order, then emits and publishes the whole change; the route
// set is filled on a second goroutine meanwhile. A load that does not fit
// changes nothing.
func (t *Table) Load(routes []Route) error {
	order, err := loadOrder(routes)
	if err != nil {
		return err
	}
	for i, r := range routes {
		if err := t.familyOf(r.Prefix).check(r.Prefix.Bits(), r.Result); err != nil {
			return fmt.Errorf("route %d (%s): %w", i, r.Prefix, err)
		}
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	keys := make([][16]byte, len(routes))
	for i, r := range routes {
		_, keys[i], _ = t.familyKey(r.Prefix)
		keys[i] = mask(keys[i], r.Prefix.Bits())
	}
	// Into an empty family the undo is to empty it again: paint without
	// the write log.
	wasEmpty := [2]bool{t.v4.empty(), t.v6.empty()}
	t.v4.ch.log, t.v6.ch.log = !wasEmpty[0], !wasEmpty[1]
	t.growRoutes(routes)
	type prev struct {
		i   int32
		old Result
	}
	var prevs []prev // the routes this load replaced, in order, for the undo
	filled := make(chan struct{})
	go func() {
		defer close(filled)
		for _, i := range order {
			r := routes[i]
			f := t.familyOf(r.Prefix)
			if old, had := f.routes.get(&keys[i], r.Prefix.Bits()); had {
				prevs = append(prevs, prev{i, old})
			}
			f.routes.put(&keys[i], r.Prefix.Bits(), r.Result)
		}
	}()
	for _, i := range order {
		r := routes[i]
		t.familyOf(r.Prefix).paint(keys[i], r.Prefix.Bits(), r.Result)
	}
	<-filled
	// Both families are emitted before either is published: a load that
	// does not fit is never seen by readers, not even in part.
	err = t.v4.prepare(true)
	if err == nil {
		if err = t.v6.prepare(true); err != nil {
			t.v4.abort()
		}
	} else {
		t.v6.abort() // painted only
	}
	if err != nil {
		// Both families are back as they were (mirror, emitted table,
		// allocators); put the route sets back too.
		k := len(prevs) - 1
		for j := len(order) - 1; j >= 0; j-- {
			i := order[j]
			had := k >= 0 && prevs[k].i == i
			r := routes[i]
			f := t.familyOf(r.Prefix)
			switch {
			case f == t.v4 && wasEmpty[0] || f == t.v6 && wasEmpty[1]:
				// emptied with its route set
			case had:
				f.routes.put(&keys[i], r.Prefix.Bits(), prevs[k].old)
			default:
				f.routes.del(&keys[i], r.Prefix.Bits())
			}
			if had {
				k--
			}
		}
		return fmt.Errorf("load %d routes: %w", len(routes), err)
	}
	t.v4.publish()
	t.v6.publish()
	return nil
}

// loadOrder sorts route indices by prefix length, then by the prefix's
// top 16 bits (the neighbourhood it lands in) (counting sorts: no comparisons), keeping input
// order among equals so that later duplicates still win.
func loadOrder(routes []Route) ([]int32, error) {
	var byLen [129][]int32
	for i, r := range routes {
		if !r.Prefix.IsValid() {
			return nil, fmt.Errorf("route %d: invalid prefix", i)
		}
		if a := r.Prefix.Addr(); a.Is4In6() {
			return nil, fmt.Errorf("route %d: prefix %s: use plain IPv4, not IPv4-mapped IPv6", i, r.Prefix)
		}
		byLen[r.Prefix.Bits()] = append(byLen[r.Prefix.Bits()], int32(i))
	}
	row := func(p netip.Prefix) int {
		a := p.Addr().AsSlice()
		if len(a) == 4 {
			return int(a[0])<<8 | int(a[1])
		}
		return int(a[2])<<8 | int(a[3]) // IPv6 prefixes share their top 16 bits
	}
	order := make([]int32, 0, len(routes))
	count := make([]int32, 1<<16+1)
	for _, idx := range byLen {
		if len(idx) < 1024 {
			order = append(order, idx...)
			continue
		}
		clear(count)
		for _, i := range idx {
			count[row(routes[i].Prefix)+1]++
		}
		for j := 1; j < len(count); j++ {
			count[j] += count[j-1]
		}
		base := len(order)
		order = order[:base+len(idx)]
		for _, i := range idx {
			r := row(routes[i].Prefix)
			order[base+int(count[r])] = i
			count[r]++
		}
	}
	return order, nil
}

// growRoutes sizes the route maps for a bulk load into empty lengths.
func (t *Table) growRoutes(routes []Route) {
	var n4, n6 [129]int
	for _, r := range routes {
		if r.Prefix.Addr().Is4() {
			n4[r.Prefix.Bits()]++
		} else {
			n6[r.Prefix.Bits()]++
		}
	}
	for l := range n4 {
		if n4[l] > 0 {
			t.v4.routes.grow(l, n4[l])
		}
		if n6[l] > 0 {
			t.v6.routes.grow(l, n6[l])
		}
	}
}

func (t *Table) familyOf(p netip.Prefix) *family {
	if p.Addr().Is4() {
		return t.v4
	}
	return t.v6
}

// Clear removes every route (nexthops and ECMP groups stay).
func (t *Table) Clear() error {
	t.mu.Lock()
	defer t.mu.Unlock()
	return errors.Join(t.v4.clear(), t.v6.clear())
}

// Lookup returns the result for one address. It is for the control plane
// and diagnostics; workers use a Reader.
func (t *Table) Lookup(a netip.Addr) Result {
	t.mu.Lock()
	defer t.mu.Unlock()
	if a.Is4() || a.Is4In6() {
		return t.v4.lookup4(addr4(a.Unmap()))
	}
	b := a.As16()
	return t.v6.lookup6(&b)
}

// Routes calls fn for every route of the table, in no particular order.
func (t *Table) Routes(fn func(Route) bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	for _, f := range []*family{t.v4, t.v6} {
		ok := f.routes.each(func(k [16]byte, l int, r Result) bool {
			a := netip.AddrFrom16(k)
			if f.bits == 32 {
				a = netip.AddrFrom4([4]byte(k[:4]))
			}
			return fn(Route{netip.PrefixFrom(a, l), r})
		})
		if !ok {
			return
		}
	}
}

// Stats describe a table's size and use.
type Stats struct {
	Routes4, Routes6 int
	// Nodes and leaves of the emitted tables in use, and available.
	Nodes4, Nodes4Of, Leaves4, Leaves4Of int
	Nodes6, Nodes6Of, Leaves6, Leaves6Of int
	Nexthops                             int
	ECMPGroups                           int
	Results                              int // distinct results leaves index (at most MaxResults)
	Bytes                                int // memory of all mappings
	// TableBytes is the memory of the nodes and leaves in use and the
	// top levels: what lookups touch.
	TableBytes   int
	GracePeriods uint64
}

// Stats returns the table's counts.
func (t *Table) Stats() Stats {
	t.mu.Lock()
	defer t.mu.Unlock()
	s := Stats{
		Routes4: t.v4.routes.n, Routes6: t.v6.routes.n,
		Nodes4: t.v4.na.used, Nodes4Of: t.v4.na.size, Leaves4: t.v4.la.used, Leaves4Of: t.v4.la.size,
		Nodes6: t.v6.na.used, Nodes6Of: t.v6.na.size, Leaves6: t.v6.la.used, Leaves6Of: t.v6.la.size,
		Nexthops: t.nh.live, ECMPGroups: t.ecmp.live, GracePeriods: t.graces.Load(),
	}
	for _, f := range []*family{t.v4, t.v6} {
		s.TableBytes += f.tableBytes()
	}
	s.Results = t.res.used()
	s.TableBytes += s.Results * 4
	for _, m := range t.mem {
		s.Bytes += len(m)
	}
	return s
}

func addr4(a netip.Addr) uint32 {
	b := a.As4()
	return uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3])
}

// Bind sets the sizes of the FIB maps a program declares (bpf/fib.h) to
// this table's and returns the table's maps to pass as MapReplacements.
func (m Maps) Bind(spec *ebpf.CollectionSpec) (map[string]*ebpf.Map, error) {
	repl := m.Replacements()
	for name, mp := range repl {
		ms, ok := spec.Maps[name]
		if !ok {
			delete(repl, name) // the program does not use it
			continue
		}
		info, err := mp.Info()
		if err != nil {
			return nil, fmt.Errorf("fib map %s: %w", name, err)
		}
		if ms.ValueSize != info.ValueSize {
			return nil, fmt.Errorf("fib map %s: program has %d-byte values, table %d (bpf/fib.h and dataplane/fib disagree)", name, ms.ValueSize, info.ValueSize)
		}
		ms.MaxEntries = info.MaxEntries
	}
	return repl, nil
}
