package fib

import (
	"encoding/binary"
	"fmt"
	"math/bits"
	"slices"
	"sync/atomic"
	"unsafe"
)

// The emitted layout, shared with bpf/fib.h: a direct-pointing top level
// of 2^top entries, then Poptrie nodes (Asai and Ohara, SIGCOMM 2015) of
// 6 bits each. A node's children lie next to each other in the nodes
// array, its leaves next to each other in the leaves array, and a
// position's child or leaf is found by counting the set bits below it:
//
//	bit v of vector set:  child  nodes[base1 + popcount(vector & mask(v)) - 1]
//	otherwise:            leaf   leaves[base0 + popcount(leafvec & mask(v)) - 1]
//
// where mask(v) keeps bits 0..v. A run of positions with the same result
// is one leaf, and a subtree that resolves to one result everywhere is a
// leaf of its parent, so a full Internet table fits in a few MiB. A leaf
// is a 16-bit index into the results array (results.go), which holds the
// few distinct results a table has.
//
// A top entry whose node has no children points instead at a leaf node
// in the leaves array: four leaves' worth of leafvec (lowest 16 bits
// first), then the leaves. That saves a dependent read for most IPv4
// lookups (prefixes longer than the first node level are rare).
const (
	stride = 6
	fanout = 1 << stride
	// nodeFlag marks an emitted top entry that points at a node; without
	// it the entry is a result.
	nodeFlag = 1 << 31
	// leafFlag marks an emitted top entry that points at a leaf node.
	leafFlag = 1 << 30
	// leafNodeHead is the leaf node's leafvec, in leaves.
	leafNodeHead = 4
	// maxBlock is the largest block: a leaf node of fanout leaves.
	maxBlock = fanout + leafNodeHead
	// Bits resolved by the top level of each family.
	top4 = 18
	top6 = 18
	// Node levels below the top, at most: 16 bits for IPv4, 112 for IPv6.
	levels4 = (32 - top4 + stride - 1) / stride
	levels6 = (128 - top6 + stride - 1) / stride
)

// node is one emitted node (struct fib_node in bpf/fib.h).
type node struct {
	vector  uint64 // bit v: position v has a child node
	leafvec uint64 // bit v: a new leaf starts at position v
	base0   uint32 // index in leaves of the node's first leaf
	base1   uint32 // index in nodes of the node's first child
}

// family is the table of one address family. The writer keeps an
// expanded copy (the mirror): a multibit trie with the same strides whose
// entries record the length of the prefix that painted them, so inserts
// overwrite only entries of shorter prefixes and deletes restore exactly
// what they uncover. After each change the mirror's changed nodes are
// emitted as compressed nodes into fresh blocks of the shared arrays, the
// path above them is copied, and a single 32-bit store of the top entry
// publishes the new subtree. Readers therefore see the old or the new
// subtree, never a mix; replaced blocks are reused only after a grace
// period.
type family struct {
	bits, top int

	// The mirror, in Go memory: entries as in result.go (ext: the rest
	// is a mirror node index).
	gtop   []uint32
	gnodes nodeStore
	gmeta  []gmeta
	gfree  []uint32
	gdead  []uint32 // freed by the open change; free once it commits
	gused  int

	// The emitted table, read by the XDP program and Readers.
	btop   []uint32
	nodes  []node
	leaves []uint16 // indices into res
	res    *results
	na, la blocks

	routes routeSet
	// grace waits for a grace period and reclaims the retired blocks of
	// every family sharing the results.
	grace func() error

	ch change // the open change
}

// nodeStore holds the mirror's nodes, fanout entries each, in chunks of
// 1024 nodes: growing it never copies (a full table's mirror is tens of
// MiB, and doubling one slice would leave as much garbage behind).
type nodeStore struct{ chunks [][]uint32 }

const chunkNodes = 1024

// at returns entry i (node i/fanout, position i%fanout).
func (s *nodeStore) at(i int) *uint32 {
	return &s.chunks[i/(chunkNodes*fanout)][i%(chunkNodes*fanout)]
}

// node returns node g's entries.
func (s *nodeStore) node(g int) []uint32 {
	o := g % chunkNodes * fanout
	return s.chunks[g/chunkNodes][o : o+fanout]
}

// grow makes room for n nodes.
func (s *nodeStore) grow(n int) {
	for len(s.chunks)*chunkNodes < n {
		s.chunks = append(s.chunks, make([]uint32, chunkNodes*fanout))
	}
}

// gmeta is what a mirror node was last emitted as.
type gmeta struct {
	out    node   // the emitted node, unless isLeaf
	leaf   uint32 // the result the whole subtree resolves to, if isLeaf
	isLeaf bool
	// leafNode: emitted as a leaf node at out.base0 (out.leafvec, then
	// nl leaves), for a top entry.
	leafNode bool
	dirty    bool  // changed since it was emitted
	nl, nc   uint8 // leaves and children blocks of out (0: none)
}

// blocks returns the blocks an emitted node holds.
func (m *gmeta) blocks() []blk {
	var bs []blk
	switch {
	case m.isLeaf:
	case m.leafNode:
		bs = append(bs, blk{m.out.base0, m.nl + leafNodeHead, true, true})
	default:
		if m.nl > 0 {
			bs = append(bs, blk{m.out.base0, m.nl, true, false})
		}
		if m.nc > 0 {
			bs = append(bs, blk{m.out.base1, m.nc, false, false})
		}
	}
	return bs
}

// change is the bookkeeping of one open change: enough to commit it or
// to put the mirror and the allocators back exactly as they were.
type change struct {
	log      bool       // record mirror writes (off for a load into an empty family)
	writes   []write    // mirror entries overwritten, in order
	allocs   []uint32   // mirror nodes allocated
	marked   []uint32   // mirror nodes marked dirty
	tops     []uint32   // top entries marked dirty
	topDirty []bool     // by top index
	metas    []metaSave // metas replaced by emission
	fresh    []blk      // blocks allocated by emission
	stale    []blk      // blocks replaced, retired on commit
	newTop   []uint32   // emitted top values, by position in tops
}

// write is a mirror entry overwritten: gnodes[i], or gtop[i] when i has
// writeTop set.
type write struct {
	i, old uint32
}

const writeTop = 1 << 31

type metaSave struct {
	g   uint32
	old gmeta
}

// blk is an allocated block of nodes (leaf false) or leaves (of a leaf
// node: lnode).
type blk struct {
	at    uint32
	n     uint8
	leaf  bool
	lnode bool
}

// blocks allocates blocks of 1 to fanout elements from one array: free
// lists by exact size, a bump pointer, and larger free blocks split. A
// bitmap of taken elements lets it coalesce free neighbours when nothing
// fits. Blocks retired after being published wait for a grace period.
type blocks struct {
	size    int // elements in the array
	next    int // elements never allocated start here
	free    [maxBlock + 1][]uint32
	pending []blk
	retired int      // elements in pending blocks
	used    int      // elements in live blocks
	taken   []uint64 // bit per element: live or pending
}

func (b *blocks) take(at uint32, n int, v bool) {
	for i := int(at); i < int(at)+n; i++ {
		if v {
			b.taken[i/64] |= 1 << (i % 64)
		} else {
			b.taken[i/64] &^= 1 << (i % 64)
		}
	}
}

func (b *blocks) alloc(n int) (uint32, bool) {
	at, ok := b.find(n)
	if ok {
		b.used += n
		b.take(at, n, true)
	}
	return at, ok
}

func (b *blocks) find(n int) (uint32, bool) {
	if l := b.free[n]; len(l) > 0 {
		b.free[n] = l[:len(l)-1]
		return l[len(l)-1], true
	}
	if b.next+n <= b.size {
		b.next += n
		return uint32(b.next - n), true
	}
	for s := n + 1; s <= maxBlock; s++ {
		if l := b.free[s]; len(l) > 0 {
			at := l[len(l)-1]
			b.free[s] = l[:len(l)-1]
			b.free[s-n] = append(b.free[s-n], at+uint32(n))
			return at, true
		}
	}
	return 0, false
}

// release frees a block no reader has seen.
func (b *blocks) release(at uint32, n int) {
	b.used -= n
	b.take(at, n, false)
	b.free[n] = append(b.free[n], at)
}

// retire frees a published block once a grace period has passed.
func (b *blocks) retire(x blk) {
	b.used -= int(x.n)
	b.retired += int(x.n)
	b.pending = append(b.pending, x)
}

// reclaim makes retired blocks reusable: call it after a grace period.
func (b *blocks) reclaim() {
	for _, x := range b.pending {
		b.take(x.at, int(x.n), false)
		b.free[x.n] = append(b.free[x.n], x.at)
	}
	b.pending, b.retired = b.pending[:0], 0
}

// coalesce rebuilds the free lists from the bitmap: neighbouring free
// blocks become one, cut into blocks of fanout, and a free tail goes back
// to the bump pointer.
func (b *blocks) coalesce() {
	b.free = [maxBlock + 1][]uint32{}
	next := 0
	for i := 0; i < b.next; {
		if b.taken[i/64]&(1<<(i%64)) != 0 {
			i++
			next = i
			continue
		}
		j := i
		for j < b.next && b.taken[j/64]&(1<<(j%64)) == 0 {
			j++
		}
		if j < b.next {
			for k := i; k < j; k += maxBlock {
				b.free[min(maxBlock, j-k)] = append(b.free[min(maxBlock, j-k)], uint32(k))
			}
		}
		i = j
	}
	b.next = next
}

// avail is how many elements are free or will be after a grace period.
func (b *blocks) avail() int { return b.size - b.used }

func (b *blocks) reset() {
	b.next, b.used, b.retired, b.free, b.pending = 0, 0, 0, [maxBlock + 1][]uint32{}, b.pending[:0]
	clear(b.taken)
}

// newFamily makes an empty family over the emitted arrays (all zero).
func newFamily(addrBits, top int, btop []uint32, nodes []node, leaves []uint16, res *results, grace func() error) *family {
	return &family{
		bits: addrBits, top: top,
		gtop: make([]uint32, 1<<top),
		btop: btop, nodes: nodes, leaves: leaves, res: res,
		na:     blocks{size: len(nodes), taken: make([]uint64, (len(nodes)+63)/64)},
		la:     blocks{size: len(leaves), taken: make([]uint64, (len(leaves)+63)/64)},
		routes: routeSet{v4: addrBits == 32},
		grace:  grace,
		ch:     change{log: true, topDirty: make([]bool, 1<<top)},
	}
}

// chunk returns the w bits of a starting at bit off, most significant
// first; bits past the address are zero.
func chunk(a *[16]byte, off, w int) int {
	hi, lo := binary.BigEndian.Uint64(a[:8]), binary.BigEndian.Uint64(a[8:])
	var x uint64
	if off < 64 {
		x = hi<<off | lo>>(64-off)
	} else {
		x = lo << (off - 64)
	}
	return int(x >> (64 - w))
}

// mask clears the bits of a beyond the first n.
func mask(a [16]byte, n int) [16]byte {
	for i := range a {
		switch {
		case n >= 8*(i+1):
		case n <= 8*i:
			a[i] = 0
		default:
			a[i] &= byte(0xff << (8 - (n - 8*i)))
		}
	}
	return a
}

// The mirror's writes, logged so a refused change can be undone.

func (f *family) setTop(k int, v uint32) {
	if f.ch.log {
		f.ch.writes = append(f.ch.writes, write{uint32(k) | writeTop, f.gtop[k]})
	}
	f.gtop[k] = v
	f.markTop(k)
}

func (f *family) setEntry(i int, v uint32) {
	if f.ch.log {
		f.ch.writes = append(f.ch.writes, write{uint32(i), *f.gnodes.at(i)})
	}
	*f.gnodes.at(i) = v
	f.mark(i / fanout)
}

func (f *family) markTop(k int) {
	if !f.ch.topDirty[k] {
		f.ch.topDirty[k] = true
		f.ch.tops = append(f.ch.tops, uint32(k))
	}
}

func (f *family) mark(g int) {
	if m := &f.gmeta[g]; !m.dirty {
		m.dirty = true
		f.ch.marked = append(f.ch.marked, uint32(g))
	}
}

// newNode allocates a mirror node with every entry set to fill.
func (f *family) newNode(fill uint32) int {
	var g int
	if k := len(f.gfree); k > 0 {
		g = int(f.gfree[k-1])
		f.gfree = f.gfree[:k-1]
		f.gmeta[g] = gmeta{}
	} else {
		g = len(f.gmeta)
		f.gnodes.grow(g + 1)
		f.gmeta = append(f.gmeta, gmeta{})
	}
	grp := f.gnodes.node(g)
	for i := range grp {
		grp[i] = fill
	}
	f.gused++
	f.ch.allocs = append(f.ch.allocs, uint32(g))
	f.mark(g)
	return g
}

// level returns the first bit of the level a prefix of length n is
// painted at, and the number of bits that level resolves.
func (f *family) level(n int) (start, width int) {
	if n <= f.top {
		return 0, f.top
	}
	k := (n - f.top + stride - 1) / stride
	return f.top + stride*(k-1), stride
}

// paint writes a/n's entries (a masked) into the mirror, creating nodes
// on its path as needed.
func (f *family) paint(a [16]byte, n int, r Result) {
	e := entryOf(r, n)
	if n <= f.top {
		from := chunk(&a, 0, f.top)
		f.paintTop(from, 1<<(f.top-n), stroke{e: e, n: n})
		return
	}
	k := chunk(&a, 0, f.top)
	g := f.descendTop(k)
	for s := f.top; n > s+stride; s += stride {
		g = f.descend(g*fanout + chunk(&a, s, stride))
	}
	s, _ := f.level(n)
	if f.paintNode(g, chunk(&a, s, stride), 1<<(s+stride-n), stroke{e: e, n: n}) {
		f.markPath(&a, n)
	}
}

// descendTop returns the node under top entry k, creating it.
func (f *family) descendTop(k int) int {
	e := f.gtop[k]
	if e&extBit != 0 {
		return int(e & groupMask)
	}
	g := f.newNode(e)
	f.setTop(k, extBit|uint32(g))
	return g
}

// descend returns the node under mirror entry i, creating it.
func (f *family) descend(i int) int {
	e := *f.gnodes.at(i)
	if e&extBit != 0 {
		return int(e & groupMask)
	}
	g := f.newNode(e)
	f.setEntry(i, extBit|uint32(g))
	return g
}

// markPath marks every node on the way to the level of a/n dirty: their
// children blocks change when a node below does.
func (f *family) markPath(a *[16]byte, n int) {
	k := chunk(a, 0, f.top)
	f.markTop(k)
	g := int(f.gtop[k] & groupMask)
	for s := f.top; ; s += stride {
		f.mark(g)
		if n <= s+stride {
			return
		}
		g = int(*f.gnodes.at(g*fanout + chunk(a, s, stride)) & groupMask)
	}
}

// stroke is what painting writes: e over the entries a prefix of length
// n may own, those of depth n or less for an insert (longer prefixes keep
// theirs) and exactly n for a delete (e is then the parent's entry).
type stroke struct {
	e   uint32
	n   int
	del bool
}

func (s stroke) over(old uint32) bool {
	d := depthOf(old)
	return old != s.e && (d == s.n || !s.del && d < s.n)
}

// paintTop paints top entries [from, from+count) and what lies below them.
func (f *family) paintTop(from, count int, s stroke) {
	for k := from; k < from+count; k++ {
		old := f.gtop[k]
		if old&extBit != 0 {
			if f.paintNode(int(old&groupMask), 0, fanout, s) {
				f.markTop(k)
			}
			continue
		}
		if s.over(old) {
			f.setTop(k, s.e)
		}
	}
}

// paintNode paints the entries of node g in [from, from+count), and
// below them. It reports whether anything changed (the node is then
// marked dirty).
func (f *family) paintNode(g, from, count int, s stroke) bool {
	changed := false
	base := g * fanout
	for i := base + from; i < base+from+count; i++ {
		old := *f.gnodes.at(i)
		if old&extBit != 0 {
			if f.paintNode(int(old&groupMask), 0, fanout, s) {
				changed = true
			}
			continue
		}
		if s.over(old) {
			f.setEntry(i, s.e)
			changed = true
		}
	}
	if changed {
		f.mark(g)
	}
	return changed
}

// parent returns the entry of the longest prefix shorter than n that
// covers a (the entry a delete uncovers), or 0 for none.
func (f *family) parent(a [16]byte, n int) uint32 {
	for l := n - 1; l >= 0; l-- {
		if !f.routes.has(l) {
			continue
		}
		m := mask(a, l)
		if r, ok := f.routes.get(&m, l); ok {
			return entryOf(r, l)
		}
	}
	return 0
}

// unpaint removes a/n (a masked) from the mirror: its entries take the
// parent's, and nodes on its path that become uniform are freed.
func (f *family) unpaint(a [16]byte, n int) {
	parent := f.parent(a, n)
	if n <= f.top {
		f.paintTop(chunk(&a, 0, f.top), 1<<(f.top-n), stroke{parent, n, true})
		return
	}
	// The path: top entry, then the mirror entries pointing at each node.
	var path [levels6 + 1]int // path[j]: index of the entry pointing at level j's node (top: k)
	k := chunk(&a, 0, f.top)
	path[0] = k
	g := int(f.gtop[k] & groupMask)
	depth := 1
	s := f.top
	for ; n > s+stride; s += stride {
		i := g*fanout + chunk(&a, s, stride)
		path[depth] = i
		depth++
		g = int(*f.gnodes.at(i) & groupMask)
	}
	if !f.paintNode(g, chunk(&a, s, stride), 1<<(s+stride-n), stroke{parent, n, true}) {
		return
	}
	f.markPath(&a, n)
	// Free nodes that became uniform, deepest first.
	for j := depth - 1; j >= 0; j-- {
		var e uint32
		if j == 0 {
			e = f.gtop[path[0]]
		} else {
			e = *f.gnodes.at(path[j])
		}
		g := int(e & groupMask)
		start := f.top + stride*j
		v, ok := f.uniform(g, start)
		if !ok {
			return
		}
		if j == 0 {
			f.setTop(path[0], v)
		} else {
			f.setEntry(path[j], v)
		}
		f.gdead = append(f.gdead, uint32(g))
	}
}

// uniform reports whether every entry of node g holds the same value
// inherited from above (painted by a prefix no longer than start), so the
// node can be replaced by that value.
func (f *family) uniform(g, start int) (uint32, bool) {
	grp := f.gnodes.node(g)
	v := grp[0]
	if v&extBit != 0 || depthOf(v) > start {
		return 0, false
	}
	for _, e := range grp[1:] {
		if e != v {
			return 0, false
		}
	}
	return v, true
}

// check validates a prefix length and a result.
func (f *family) check(n int, r Result) error {
	if n < 0 || n > f.bits {
		return fmt.Errorf("prefix length %d out of range 0-%d", n, f.bits)
	}
	if r&^resultMask != 0 {
		return fmt.Errorf("result %#x has bits outside the result field", uint32(r))
	}
	return nil
}

// insert adds or replaces a/n.
func (f *family) insert(a [16]byte, n int, r Result) error {
	if err := f.check(n, r); err != nil {
		return err
	}
	a = mask(a, n)
	old, had := f.routes.get(&a, n)
	if had && old == r {
		return nil
	}
	f.paint(a, n, r)
	f.routes.put(&a, n, r)
	if err := f.commit(true); err != nil {
		if had {
			f.routes.put(&a, n, old)
		} else {
			f.routes.del(&a, n)
		}
		return err
	}
	return nil
}

// remove deletes a/n.
func (f *family) remove(a [16]byte, n int) error {
	if n < 0 || n > f.bits {
		return fmt.Errorf("prefix length %d out of range 0-%d", n, f.bits)
	}
	a = mask(a, n)
	old, ok := f.routes.get(&a, n)
	if !ok {
		return ErrNotFound
	}
	f.routes.del(&a, n)
	f.unpaint(a, n)
	if err := f.commit(false); err != nil {
		f.routes.put(&a, n, old)
		return err
	}
	return nil
}

// commit emits the open change and publishes it (prepare, publish).
func (f *family) commit(grow bool) error {
	if err := f.prepare(grow); err != nil {
		return err
	}
	f.publish()
	return nil
}

// prepare emits the open change into fresh blocks without publishing it.
// When the arrays are full it waits for a grace period (which reclaims
// every family's retired blocks), coalesces free blocks and tries once
// more; if that fails too, the change is undone: the mirror, the emitted
// table and the allocators are as they were, and it returns ErrCapacity.
// A change that adds routes (grow) must also leave room for a later
// delete's path copy (see reserve). A prepared change is published or
// aborted before the next one.
func (f *family) prepare(grow bool) error {
	err := f.emitChange(grow)
	if err != nil {
		f.unemit()
		if gerr := f.grace(); gerr != nil {
			f.undo()
			return fmt.Errorf("wait for fib readers: %w", gerr)
		}
		f.na.coalesce()
		f.la.coalesce()
		err = f.emitChange(grow)
	}
	if err != nil {
		f.unemit()
		f.undo()
		return err
	}
	return nil
}

// abort undoes a prepared (or only painted) change.
func (f *family) abort() {
	f.unemit()
	f.undo()
}

// reserve is the room a change that adds routes leaves free in an array
// of size elements: enough for a delete to copy a path of full nodes, at
// most a quarter of the array.
func (f *family) reserve(size int) int {
	levels := levels4
	if f.bits == 128 {
		levels = levels6
	}
	return min((levels+1)*fanout, size/4)
}

// emitChange writes every dirty node into fresh blocks, bottom up, and
// computes the new top entries; nothing is visible to readers yet.
func (f *family) emitChange(grow bool) error {
	f.ch.newTop = f.ch.newTop[:0]
	for _, k := range f.ch.tops {
		v, err := f.emitTop(int(k))
		if err != nil {
			return err
		}
		f.ch.newTop = append(f.ch.newTop, v)
	}
	if grow {
		// What this change retires comes back after a grace period.
		nodes, leaves := f.na.avail(), f.la.avail()
		for _, x := range f.ch.stale {
			if x.leaf {
				leaves += int(x.n)
			} else {
				nodes += int(x.n)
			}
		}
		if nodes < f.reserve(f.na.size) || leaves < f.reserve(f.la.size) {
			return fmt.Errorf("%w: the IPv%d table's %d nodes and %d leaves are nearly all in use (room is kept for deletes)", ErrCapacity, f.version(), f.na.size, f.la.size)
		}
	}
	return nil
}

func (f *family) emitTop(k int) (uint32, error) {
	e := f.gtop[k]
	if e&extBit == 0 {
		return e & resultMask, nil
	}
	g := int(e & groupMask)
	if f.gmeta[g].dirty {
		if err := f.emit(g, true); err != nil {
			return 0, err
		}
	}
	m := &f.gmeta[g]
	if m.isLeaf {
		return m.leaf, nil
	}
	if m.leafNode {
		return leafFlag | m.out.base0, nil
	}
	if b := f.btop[k]; b&nodeFlag != 0 && f.nodes[b&^nodeFlag] == m.out {
		return b, nil
	}
	at, err := f.alloc(false, false, 1)
	if err != nil {
		return 0, err
	}
	f.nodes[at] = m.out
	return nodeFlag | at, nil
}

func (f *family) alloc(leaf, lnode bool, n int) (uint32, error) {
	b, what := &f.na, "nodes"
	if leaf {
		b, what = &f.la, "leaves"
	}
	at, ok := b.alloc(n)
	if !ok {
		return 0, fmt.Errorf("%w: the IPv%d table's %d %s are in use (raise fib.%s%d in the config)", ErrCapacity, f.version(), b.size, what, what, f.version())
	}
	f.ch.fresh = append(f.ch.fresh, blk{at, uint8(n), leaf, lnode})
	return at, nil
}

func (f *family) version() int {
	if f.bits == 32 {
		return 4
	}
	return 6
}

// emit compresses dirty mirror node g (and its dirty children first);
// top says g hangs from a top entry, so it may become a leaf node.
func (f *family) emit(g int, top bool) error {
	var leaves [fanout]uint32
	var kids [fanout]node
	var vec, lvec uint64
	nl, nc := 0, 0
	var last uint32
	for v := range fanout {
		e := *f.gnodes.at(g*fanout + v)
		r := e & resultMask
		if e&extBit != 0 {
			c := int(e & groupMask)
			if f.gmeta[c].dirty {
				if err := f.emit(c, false); err != nil {
					return err
				}
			}
			m := &f.gmeta[c]
			if !m.isLeaf {
				vec |= 1 << v
				kids[nc] = m.out
				nc++
				continue
			}
			r = m.leaf
		}
		if nl == 0 || r != last {
			lvec |= 1 << v
			leaves[nl] = r
			nl++
			last = r
		}
	}
	old := f.gmeta[g]
	f.ch.metas = append(f.ch.metas, metaSave{uint32(g), old})
	m := gmeta{}
	switch {
	case vec == 0 && nl == 1:
		m.isLeaf, m.leaf = true, leaves[0]
	case vec == 0 && top:
		m.leafNode, m.nl = true, uint8(nl)
		m.out.leafvec = lvec
		if old.leafNode && old.out.leafvec == lvec && f.sameLeaves(old.out.base0+leafNodeHead, int(old.nl), leaves[:nl]) {
			m.out.base0 = old.out.base0
			break
		}
		at, err := f.writeLeaves(true, leaves[:nl])
		if err != nil {
			return err
		}
		for k := range leafNodeHead {
			f.leaves[at+uint32(k)] = uint16(lvec >> (16 * k))
		}
		m.out.base0 = at
	default:
		m.out = node{vector: vec, leafvec: lvec}
		m.nl, m.nc = uint8(nl), uint8(nc)
		plain := !old.isLeaf && !old.leafNode
		if nl > 0 {
			if plain && f.sameLeaves(old.out.base0, int(old.nl), leaves[:nl]) {
				m.out.base0 = old.out.base0
			} else {
				at, err := f.writeLeaves(false, leaves[:nl])
				if err != nil {
					return err
				}
				m.out.base0 = at
			}
		}
		if nc > 0 {
			if plain && int(old.nc) == nc && slices.Equal(f.nodes[old.out.base1:][:nc], kids[:nc]) {
				m.out.base1 = old.out.base1
			} else {
				at, err := f.alloc(false, false, nc)
				if err != nil {
					return err
				}
				copy(f.nodes[at:], kids[:nc])
				m.out.base1 = at
			}
		}
	}
	// The old blocks that were not kept are retired when this commits.
	kept := m.blocks()
	for _, x := range old.blocks() {
		if !slices.Contains(kept, x) {
			f.ch.stale = append(f.ch.stale, x)
		}
	}
	f.gmeta[g] = m
	return nil
}

// sameLeaves reports whether the n leaves at at hold rs.
func (f *family) sameLeaves(at uint32, n int, rs []uint32) bool {
	if n != len(rs) {
		return false
	}
	for k, r := range rs {
		if i, ok := f.res.peek(Result(r)); !ok || f.leaves[int(at)+k] != i {
			return false
		}
	}
	return true
}

// writeLeaves allocates a leaf block (of a leaf node: room for its
// leafvec first) and writes rs into it as result indices.
func (f *family) writeLeaves(lnode bool, rs []uint32) (uint32, error) {
	var idx [fanout]uint16
	for k, r := range rs {
		i, ok := f.res.ref(Result(r))
		if !ok {
			for _, j := range idx[:k] {
				f.res.unref(j)
			}
			return 0, fmt.Errorf("%w: all %d results are in use (distinct nexthops, ECMP groups and route types)", ErrCapacity, len(f.res.vals))
		}
		idx[k] = i
	}
	head := 0
	if lnode {
		head = leafNodeHead
	}
	at, err := f.alloc(true, lnode, head+len(rs))
	if err != nil {
		for _, j := range idx[:len(rs)] {
			f.res.unref(j)
		}
		return 0, err
	}
	copy(f.leaves[int(at)+head:], idx[:len(rs)])
	return at, nil
}

// unrefLeaves drops the result references of a leaf block.
func (f *family) unrefLeaves(x blk) {
	from := int(x.at)
	if x.lnode {
		from += leafNodeHead
	}
	for _, i := range f.leaves[from : int(x.at)+int(x.n)] {
		f.res.unref(i)
	}
}

// reclaim makes the blocks retired before a grace period reusable.
func (f *family) reclaim() {
	for _, x := range f.la.pending {
		f.unrefLeaves(x)
	}
	f.la.reclaim()
	f.na.reclaim()
}

// unemit takes back an emission that was not published: fresh blocks are
// free again and metas as they were (still dirty).
func (f *family) unemit() {
	for _, x := range f.ch.fresh {
		if x.leaf {
			f.unrefLeaves(x)
			f.la.release(x.at, int(x.n))
		} else {
			f.na.release(x.at, int(x.n))
		}
	}
	for i := len(f.ch.metas) - 1; i >= 0; i-- {
		s := f.ch.metas[i]
		f.gmeta[s.g] = s.old
	}
	f.ch.fresh, f.ch.metas, f.ch.stale = f.ch.fresh[:0], f.ch.metas[:0], f.ch.stale[:0]
}

// undo puts the mirror back as it was before the open change.
func (f *family) undo() {
	if !f.ch.log {
		f.resetMirror()
		return
	}
	for i := len(f.ch.writes) - 1; i >= 0; i-- {
		w := f.ch.writes[i]
		if w.i&writeTop != 0 {
			f.gtop[w.i&^writeTop] = w.old
		} else {
			*f.gnodes.at(int(w.i)) = w.old
		}
	}
	for _, g := range f.ch.allocs {
		f.gmeta[g] = gmeta{}
		f.gfree = append(f.gfree, g)
		f.gused--
	}
	f.gdead = f.gdead[:0]
	f.endChange()
}

// publish makes the emitted change visible: one store per top entry.
// Then the blocks it replaced and the mirror nodes it freed are retired.
func (f *family) publish() {
	for j, k := range f.ch.tops {
		v, old := f.ch.newTop[j], f.btop[k]
		if v == old {
			continue
		}
		atomic.StoreUint32(&f.btop[k], v)
		if old&nodeFlag != 0 {
			f.ch.stale = append(f.ch.stale, blk{at: old &^ nodeFlag, n: 1})
		}
	}
	for _, g := range f.gdead {
		f.ch.stale = append(f.ch.stale, f.gmeta[g].blocks()...)
		f.gmeta[g] = gmeta{}
		f.gfree = append(f.gfree, g)
		f.gused--
	}
	f.gdead = f.gdead[:0]
	for _, x := range f.ch.stale {
		if x.leaf {
			f.la.retire(x)
		} else {
			f.na.retire(x)
		}
	}
	f.ch.fresh, f.ch.metas, f.ch.stale = f.ch.fresh[:0], f.ch.metas[:0], f.ch.stale[:0]
	f.endChange()
	// Reuse retired blocks before the bump pointer has walked the whole
	// array: live blocks then stay close together. At most one grace
	// period per 4096 retired elements; a failed one only delays this.
	if f.na.retired > max(f.na.size/4, 1<<12) || f.la.retired > max(f.la.size/4, 1<<12) {
		_ = f.grace()
	}
}

// endChange clears the dirty marks and logs of the open change.
func (f *family) endChange() {
	for _, g := range f.ch.marked {
		f.gmeta[g].dirty = false
	}
	for _, k := range f.ch.tops {
		f.ch.topDirty[k] = false
	}
	f.ch.writes, f.ch.allocs, f.ch.marked, f.ch.tops = f.ch.writes[:0], f.ch.allocs[:0], f.ch.marked[:0], f.ch.tops[:0]
	f.ch.log = true
	// A bulk load's logs are large: do not keep them for single changes.
	if cap(f.ch.writes)+cap(f.ch.marked)+cap(f.ch.metas)+cap(f.ch.fresh)+cap(f.ch.stale) > 1<<16 {
		f.ch = change{log: true, topDirty: f.ch.topDirty}
	}
}

// resetMirror empties the mirror and the route set: when a load into an
// empty family is refused (nothing of it was published, and its blocks
// are free again) and when the family is cleared.
func (f *family) resetMirror() {
	clear(f.gtop)
	f.gmeta, f.gfree, f.gdead, f.gused = f.gmeta[:0], f.gfree[:0], f.gdead[:0], 0
	f.routes.clear()
	f.ch.marked = f.ch.marked[:0] // their metas are gone
	f.endChange()
}

// empty reports whether the family holds nothing at all.
func (f *family) empty() bool {
	return f.routes.n == 0 && f.gused == 0 && f.na.used == 0 && f.la.used == 0
}

// lookup4 returns the result for an IPv4 address in host order.
func (f *family) lookup4(a uint32) Result {
	e := atomic.LoadUint32(&f.btop[a>>(32-top4)])
	if e&(nodeFlag|leafFlag) == 0 {
		return Result(e)
	}
	x := uint64(a) << (32 + top4)
	if e&leafFlag != 0 {
		return f.leafNode(e&^leafFlag, x>>(64-stride))
	}
	i := e &^ nodeFlag
	for range levels4 {
		n := &f.nodes[i]
		v := x >> (64 - stride)
		x <<= stride
		bit := uint64(1) << v
		m := bit | (bit - 1)
		if n.vector&bit != 0 {
			i = n.base1 + uint32(bits.OnesCount64(n.vector&m)) - 1
			continue
		}
		return f.leaf(n.base0 + uint32(bits.OnesCount64(n.leafvec&m)) - 1)
	}
	return 0
}

// lookup6 returns the result for an IPv6 address.
func (f *family) lookup6(a *[16]byte) Result {
	hi, lo := binary.BigEndian.Uint64(a[:8]), binary.BigEndian.Uint64(a[8:])
	e := atomic.LoadUint32(&f.btop[hi>>(64-top6)])
	if e&(nodeFlag|leafFlag) == 0 {
		return Result(e)
	}
	hi, lo = hi<<top6|lo>>(64-top6), lo<<top6
	if e&leafFlag != 0 {
		return f.leafNode(e&^leafFlag, hi>>(64-stride))
	}
	i := e &^ nodeFlag
	for range levels6 {
		n := &f.nodes[i]
		v := hi >> (64 - stride)
		hi, lo = hi<<stride|lo>>(64-stride), lo<<stride
		bit := uint64(1) << v
		m := bit | (bit - 1)
		if n.vector&bit != 0 {
			i = n.base1 + uint32(bits.OnesCount64(n.vector&m)) - 1
			continue
		}
		return f.leaf(n.base0 + uint32(bits.OnesCount64(n.leafvec&m)) - 1)
	}
	return 0
}

// clear empties the family: the top level first, then after a grace
// period everything else.
func (f *family) clear() error {
	saved := slices.Clone(f.btop)
	for k := range f.btop {
		if f.btop[k] != 0 {
			atomic.StoreUint32(&f.btop[k], 0)
		}
	}
	if err := f.grace(); err != nil {
		for k, e := range saved {
			atomic.StoreUint32(&f.btop[k], e) // as it was: nothing else changed
		}
		return fmt.Errorf("wait for fib readers: %w", err)
	}
	// Nothing published before is reachable now: every block is free.
	f.reclaim()
	free := make([]bool, len(f.gmeta))
	for _, g := range f.gfree {
		free[g] = true
	}
	for g := range f.gmeta {
		if free[g] {
			continue
		}
		for _, x := range f.gmeta[g].blocks() {
			if x.leaf {
				f.unrefLeaves(x)
			}
		}
	}
	f.na.reset()
	f.la.reset()
	f.resetMirror()
	return nil
}

// tableBytes is the memory lookups touch: the top level and the nodes
// and leaves in use.
func (f *family) tableBytes() int {
	return len(f.btop)*4 + f.na.used*int(unsafe.Sizeof(node{})) + f.la.used*2
}

// reopened is what scan found in a reopened family.
type reopened struct {
	old    []blk // every live block, retired once adopt has replaced them
	routes []found
}

type found struct {
	a [16]byte
	n int
	r Result
}

// scan reads a family from reopened maps that a previous process
// emitted: it takes the blocks in use, counts in refs the result indices
// their leaves use, and recovers the routes. The emitted table keeps
// results, not the prefixes that painted them, so for every run of
// positions with one result it recovers the aligned prefixes that cover
// it: they forward exactly as the table does.
func (f *family) scan(refs []uint32) (*reopened, error) {
	nodeUsed := make([]bool, len(f.nodes))
	leafUsed := make([]bool, len(f.leaves))
	var old []blk
	mark := func(used []bool, at uint32, n int, leaf, lnode bool) error {
		if n == 0 {
			return nil
		}
		if int(at)+n > len(used) {
			return fmt.Errorf("IPv%d block %d+%d beyond the array's %d entries: the pins are not this version's (remove the directory)", f.version(), at, n, len(used))
		}
		for i := int(at); i < int(at)+n; i++ {
			if used[i] {
				return fmt.Errorf("IPv%d entry %d in two blocks: the pins are corrupt (remove the directory)", f.version(), i)
			}
			used[i] = true
		}
		x := blk{at, uint8(n), leaf, lnode}
		old = append(old, x)
		if leaf {
			from := int(at)
			if lnode {
				from += leafNodeHead
			}
			for _, i := range f.leaves[from : int(at)+n] {
				refs[i]++
			}
		}
		return nil
	}
	var routes []found
	// cover adds the prefixes of every aligned run of positions
	// [lo, lo+size) of one result (child positions hold nodeFlag).
	var cover func(vals []uint32, lo, size int, a [16]byte, off, width int)
	cover = func(vals []uint32, lo, size int, a [16]byte, off, width int) {
		r := vals[lo]
		same := r&nodeFlag == 0
		for i := lo + 1; same && i < lo+size; i++ {
			same = vals[i] == r
		}
		if !same {
			if size > 1 {
				cover(vals, lo, size/2, a, off, width)
				cover(vals, lo+size/2, size/2, a, off, width)
			}
			return
		}
		n := off + width - bits.Len(uint(size)) + 1
		if r == 0 || n > f.bits {
			return // no route, or positions past the address
		}
		setChunk(&a, off, width, lo)
		routes = append(routes, found{mask(a, n), n, Result(r)})
	}
	var walk func(i uint32, a [16]byte, off int) error
	walk = func(i uint32, a [16]byte, off int) error {
		if int(i) >= len(f.nodes) {
			return fmt.Errorf("IPv%d node %d beyond the array: the pins are corrupt (remove the directory)", f.version(), i)
		}
		if off >= f.bits {
			return fmt.Errorf("IPv%d nodes deeper than the address: the pins are corrupt (remove the directory)", f.version())
		}
		nd := f.nodes[i]
		nc, nl := bits.OnesCount64(nd.vector), bits.OnesCount64(nd.leafvec)
		if err := mark(nodeUsed, nd.base1, nc, false, false); err != nil {
			return err
		}
		if err := mark(leafUsed, nd.base0, nl, true, false); err != nil {
			return err
		}
		var vals [fanout]uint32
		for v := range fanout {
			bit := uint64(1) << v
			m := bit | (bit - 1)
			if nd.vector&bit != 0 {
				c := nd.base1 + uint32(bits.OnesCount64(nd.vector&m)) - 1
				b := a
				setChunk(&b, off, stride, v)
				if err := walk(c, b, off+stride); err != nil {
					return err
				}
				vals[v] = nodeFlag
				continue
			}
			if nd.leafvec&m == 0 {
				return fmt.Errorf("IPv%d node without a leaf at position %d: the pins are corrupt (remove the directory)", f.version(), v)
			}
			vals[v] = uint32(f.leaf(nd.base0+uint32(bits.OnesCount64(nd.leafvec&m))-1)) & resultMask
		}
		cover(vals[:], 0, fanout, a, off, stride)
		return nil
	}
	vals := make([]uint32, len(f.btop))
	for k, e := range f.btop {
		vals[k] = e
		if e&leafFlag != 0 {
			vals[k] = nodeFlag // not one result: cover below it
			at := e &^ leafFlag
			if int(at)+leafNodeHead > len(f.leaves) {
				return nil, fmt.Errorf("IPv%d top entry %d points at leaf node %d: the pins are corrupt (remove the directory)", f.version(), k, at)
			}
			lv := f.leafVec(at)
			if lv&1 == 0 {
				return nil, fmt.Errorf("IPv%d leaf node %d without a first leaf: the pins are corrupt (remove the directory)", f.version(), at)
			}
			if err := mark(leafUsed, at, bits.OnesCount64(lv)+leafNodeHead, true, true); err != nil {
				return nil, err
			}
			var a [16]byte
			setChunk(&a, 0, f.top, k)
			var lvals [fanout]uint32
			for v := range fanout {
				lvals[v] = uint32(f.leafNode(at, uint64(v))) & resultMask
			}
			cover(lvals[:], 0, fanout, a, f.top, stride)
			continue
		}
		if e&nodeFlag == 0 {
			vals[k] = e & resultMask
			continue
		}
		at := e &^ nodeFlag
		if int(at) >= len(f.nodes) || nodeUsed[at] {
			return nil, fmt.Errorf("IPv%d top entry %d points at node %d: the pins are corrupt (remove the directory)", f.version(), k, at)
		}
		nodeUsed[at] = true // retired by publish when the entry changes
		var a [16]byte
		setChunk(&a, 0, f.top, k)
		if err := walk(at, a, f.top); err != nil {
			return nil, err
		}
	}
	cover(vals, 0, len(vals), [16]byte{}, 0, f.top)

	// The allocators: everything used is taken, the gaps are free.
	for _, x := range []struct {
		b    *blocks
		used []bool
	}{{&f.na, nodeUsed}, {&f.la, leafUsed}} {
		x.b.reset()
		for i, u := range x.used {
			if u {
				x.b.used++
				x.b.next = i + 1
				x.b.taken[i/64] |= 1 << (i % 64)
			}
		}
		for i := 0; i < x.b.next; {
			if x.used[i] {
				i++
				continue
			}
			n := 0
			for i+n < x.b.next && !x.used[i+n] && n < maxBlock {
				n++
			}
			x.b.free[n] = append(x.b.free[n], uint32(i))
			i += n
		}
	}
	return &reopened{old, routes}, nil
}

// adopt paints the routes scan recovered into the mirror, emits them into
// free blocks, publishes (readers see the same answers) and retires the
// old blocks. The arrays need room for the table twice.
func (f *family) adopt(r *reopened) error {
	f.ch.log = false
	for _, x := range r.routes {
		f.routes.put(&x.a, x.n, x.r)
		f.paint(x.a, x.n, x.r)
	}
	if err := f.commit(false); err != nil {
		return fmt.Errorf("emit the recovered IPv%d table beside the pinned one: %w", f.version(), err)
	}
	for _, x := range r.old {
		if x.leaf {
			f.la.retire(x)
		} else {
			f.na.retire(x)
		}
	}
	return nil
}

// setChunk sets the w bits of a starting at bit off to v.
func setChunk(a *[16]byte, off, w, v int) {
	for i := range w {
		b := off + i
		if b >= 128 {
			return
		}
		if v>>(w-1-i)&1 == 1 {
			a[b/8] |= 0x80 >> (b % 8)
		} else {
			a[b/8] &^= 0x80 >> (b % 8)
		}
	}
}

// batch is how many addresses a batch lookup resolves level by level.
const batch = 64

// lookupBatch4 resolves IPv4 addresses level by level, batch at a time,
// so the cache misses of different addresses overlap instead of each
// address waiting for its own.
func (f *family) lookupBatch4(dst []uint32, out []Result) {
	for len(dst) > 0 {
		n := min(len(dst), batch)
		var hi, lo [batch]uint64
		more := false
		for i, a := range dst[:n] {
			e := atomic.LoadUint32(&f.btop[a>>(32-top4)])
			out[i] = Result(e)
			hi[i] = uint64(a) << (32 + top4)
			more = more || e&(nodeFlag|leafFlag) != 0
		}
		if more {
			f.descendBatch(out[:n], &hi, &lo, levels4)
		}
		dst, out = dst[n:], out[n:]
	}
}

// lookupBatch6 is lookupBatch4 for IPv6.
func (f *family) lookupBatch6(dst [][16]byte, out []Result) {
	for len(dst) > 0 {
		n := min(len(dst), batch)
		var hi, lo [batch]uint64
		more := false
		for i := range n {
			h, l := binary.BigEndian.Uint64(dst[i][:8]), binary.BigEndian.Uint64(dst[i][8:])
			e := atomic.LoadUint32(&f.btop[h>>(64-top6)])
			out[i] = Result(e)
			hi[i], lo[i] = h<<top6|l>>(64-top6), l<<top6
			more = more || e&(nodeFlag|leafFlag) != 0
		}
		if more {
			f.descendBatch(out[:n], &hi, &lo, levels6)
		}
		dst, out = dst[n:], out[n:]
	}
}

// descendBatch takes a batch from its top entries (in out) down the
// nodes, one level for every address at a time; hi and lo hold each
// address's remaining bits, most significant first.
func (f *family) descendBatch(out []Result, hi, lo *[batch]uint64, levels int) {
	more := true
	for l := 0; more && l < levels; l++ {
		more = false
		for i := range out {
			e := uint32(out[i])
			switch {
			case e&leafFlag != 0 && l == 0:
				out[i] = f.leafNode(e&^leafFlag, hi[i]>>(64-stride))
				continue
			case e&nodeFlag == 0:
				continue
			}
			out[i] = f.step(e&^nodeFlag, hi[i]>>(64-stride))
			hi[i], lo[i] = hi[i]<<stride|lo[i]>>(64-stride), lo[i]<<stride
			more = more || uint32(out[i])&nodeFlag != 0
		}
	}
	for i := range out {
		if uint32(out[i])&nodeFlag != 0 {
			out[i] = 0 // deeper than the address: cannot happen
		}
	}
}

// leaf returns the result leaf i holds.
func (f *family) leaf(i uint32) Result { return Result(f.res.vals[f.leaves[i]]) }

// leafVec returns the leafvec of the leaf node at at.
func (f *family) leafVec(at uint32) uint64 {
	l := f.leaves[at : at+leafNodeHead]
	return uint64(l[0]) | uint64(l[1])<<16 | uint64(l[2])<<32 | uint64(l[3])<<48
}

// leafNode returns the leaf at position v of the leaf node at at.
func (f *family) leafNode(at uint32, v uint64) Result {
	bit := uint64(1) << v
	return f.leaf(at + leafNodeHead - 1 + uint32(bits.OnesCount64(f.leafVec(at)&(bit|(bit-1)))))
}

// step resolves position v of node i: a child as nodeFlag|index, or the
// leaf's result.
func (f *family) step(i uint32, v uint64) Result {
	n := &f.nodes[i]
	bit := uint64(1) << v
	m := bit | (bit - 1)
	if n.vector&bit != 0 {
		return Result(nodeFlag | (n.base1 + uint32(bits.OnesCount64(n.vector&m)) - 1))
	}
	return f.leaf(n.base0 + uint32(bits.OnesCount64(n.leafvec&m)) - 1)
}
