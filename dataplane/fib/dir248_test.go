package fib

// The DIR-24-8 layout this package used until 2026-12 (a 2^24-entry first
// level and 256-entry groups, IPv6 2^16 then 8-bit levels), kept for the
// benchmarks only: BenchmarkLookup and BenchmarkUpdate compare the
// current layout with it in the same run, over Go memory.

import (
	"fmt"
	"sync/atomic"
)

// groupSize is the number of entries of a second-level group (8 bits).
const groupSize = 256

// trie is the old multibit trie: a first level of 2^first entries, then levels
// of 256-entry groups, 8 bits each, down to the address length. IPv4 uses
// first = 24 (DIR-24-8); IPv6 uses first = 16. Each entry records the
// length of the prefix that painted it, so inserts only overwrite entries
// of shorter prefixes and deletes restore exactly the entries they own.
//
// Writers are serialised by the caller. Readers may run at any time: every
// entry changes with a single 32-bit store, a group is completely filled
// before the store that publishes it, and an unpublished group is reused
// only after grace() has waited out every reader that could still see it.
type trie struct {
	bits   int      // address length: 32 or 128
	first  int      // bits resolved by the first level
	l0     []uint32 // 1<<first entries
	groups []uint32 // ngroups*groupSize entries

	ngroups int
	next    int      // groups never used yet start here
	free    []uint32 // groups that may be reused now
	pending []uint32 // groups unpublished since the last grace period
	used    int

	routes routeSet
	grace  func() error
}

func newTrie(bits, first int, l0, groups []uint32, grace func() error) *trie {
	return &trie{
		bits: bits, first: first, l0: l0, groups: groups,
		ngroups: len(groups) / groupSize,
		routes:  routeSet{v4: bits == 32},
		grace:   grace,
	}
}

// index returns the n bits (a multiple of 8, at most 24) of a starting at
// bit off (a multiple of 8), most significant first.
func index(a *[16]byte, off, n int) int {
	i, v := off/8, 0
	for k := 0; k < n/8; k++ {
		v = v<<8 | int(a[i+k])
	}
	return v
}

// level returns the start bit and stride of the level a prefix of length
// n is painted at.
func (t *trie) level(n int) (start, stride int) {
	if n <= t.first {
		return 0, t.first
	}
	k := (n - t.first + 7) / 8
	return t.first + 8*(k-1), 8
}

// groupsNeeded counts the groups an insert of a/n would have to create.
func (t *trie) groupsNeeded(a *[16]byte, n int) int {
	tbl, base, b, s := t.l0, 0, 0, t.first
	for n > b+s {
		e := atomic.LoadUint32(&tbl[base+index(a, b, s)])
		if e&extBit == 0 {
			last, _ := t.level(n)
			return (last-b-s)/8 + 1
		}
		tbl, base = t.groups, int(e&groupMask)*groupSize
		b, s = b+s, 8
	}
	return 0
}

// reserve makes sure n groups can be allocated, reclaiming unpublished
// groups after a grace period if that is what it takes.
func (t *trie) reserve(n int) error {
	if len(t.free)+t.ngroups-t.next >= n {
		return nil
	}
	if len(t.pending) > 0 {
		if err := t.grace(); err != nil {
			return fmt.Errorf("wait for fib readers: %w", err)
		}
		t.free = append(t.free, t.pending...)
		t.pending = t.pending[:0]
	}
	if len(t.free)+t.ngroups-t.next >= n {
		return nil
	}
	return fmt.Errorf("%w: all %d second-level groups of the IPv%d table are in use", ErrCapacity, t.ngroups, map[int]int{32: 4, 128: 6}[t.bits])
}

func (t *trie) alloc() int {
	t.used++
	if k := len(t.free); k > 0 {
		g := t.free[k-1]
		t.free = t.free[:k-1]
		return int(g)
	}
	t.next++
	return t.next - 1
}

func (t *trie) release(g int) {
	t.used--
	t.pending = append(t.pending, uint32(g))
}

// insert adds or replaces a/n.
func (t *trie) insert(a [16]byte, n int, r Result) error {
	a = mask(a, n)
	if err := t.paint(a, n, r); err != nil {
		return err
	}
	t.routes.put(&a, n, r)
	return nil
}

// paint writes a/n's entries (a masked), creating groups as needed, but
// leaves the route set alone: bulk loads fill it on another goroutine.
func (t *trie) paint(a [16]byte, n int, r Result) error {
	if n < 0 || n > t.bits {
		return fmt.Errorf("prefix length %d out of range 0-%d", n, t.bits)
	}
	if r&^resultMask != 0 {
		return fmt.Errorf("result %#x has bits outside the result field", uint32(r))
	}
	if need := t.groupsNeeded(&a, n); need > 0 {
		if err := t.reserve(need); err != nil {
			return err
		}
	}
	tbl, base, b, s := t.l0, 0, 0, t.first
	for n > b+s {
		i := base + index(&a, b, s)
		e := tbl[i]
		if e&extBit == 0 {
			g := t.alloc()
			grp := t.groups[g*groupSize : (g+1)*groupSize]
			for k := range grp {
				grp[k] = e
			}
			e = extBit | uint32(g)
			atomic.StoreUint32(&tbl[i], e) // publish the filled group
		}
		tbl, base = t.groups, int(e&groupMask)*groupSize
		b, s = b+s, 8
	}
	from := base + index(&a, b, s)
	t.paintInsert(tbl, from, 1<<(b+s-n), entryOf(r, n), n)
	return nil
}

// paintInsert writes e over every entry in tbl[from:from+count], and in
// the groups they point to, that a prefix no longer than n painted.
//
// Painting uses plain stores: an aligned 32-bit store is single-copy
// atomic on every architecture Go supports, so a reader sees the old or
// the new entry, and each entry stands alone. Only publishing and
// unpublishing a group need the ordering of an atomic store.
func (t *trie) paintInsert(tbl []uint32, from, count int, e uint32, n int) {
	for i := from; i < from+count; i++ {
		old := tbl[i]
		if old&extBit != 0 {
			g := int(old & groupMask)
			t.paintInsert(t.groups, g*groupSize, groupSize, e, n)
			continue
		}
		if depthOf(old) <= n && old != e {
			tbl[i] = e
		}
	}
}

// paintDelete replaces every entry that a/n painted with the parent's.
func (t *trie) paintDelete(tbl []uint32, from, count int, n int, parent uint32) {
	for i := from; i < from+count; i++ {
		old := tbl[i]
		if old&extBit != 0 {
			g := int(old & groupMask)
			t.paintDelete(t.groups, g*groupSize, groupSize, n, parent)
			continue
		}
		if depthOf(old) == n && old != parent {
			tbl[i] = parent
		}
	}
}

// parent returns the entry of the longest prefix shorter than n that
// covers a (the entry a delete uncovers), or 0 for none.
func (t *trie) parent(a [16]byte, n int) uint32 {
	for l := n - 1; l >= 0; l-- {
		if !t.routes.has(l) {
			continue
		}
		m := mask(a, l)
		if r, ok := t.routes.get(&m, l); ok {
			return entryOf(r, l)
		}
	}
	return 0
}

// step is one level of a walk: the entry that points to a group.
type step struct {
	tbl   []uint32
	i     int // entry index in tbl
	group int
	start int // first bit the group resolves
}

// remove deletes a/n and frees the groups that become uniform.
func (t *trie) remove(a [16]byte, n int) error {
	if n < 0 || n > t.bits {
		return fmt.Errorf("prefix length %d out of range 0-%d", n, t.bits)
	}
	a = mask(a, n)
	if _, ok := t.routes.get(&a, n); !ok {
		return ErrNotFound
	}
	var path []step
	tbl, base, b, s := t.l0, 0, 0, t.first
	for n > b+s {
		i := base + index(&a, b, s)
		e := tbl[i]
		if e&extBit == 0 {
			return fmt.Errorf("fib corrupt: /%d prefix has no group at bit %d", n, b+s)
		}
		g := int(e & groupMask)
		path = append(path, step{tbl, i, g, b + s})
		tbl, base = t.groups, g*groupSize
		b, s = b+s, 8
	}
	t.routes.del(&a, n)
	from := base + index(&a, b, s)
	t.paintDelete(tbl, from, 1<<(b+s-n), n, t.parent(a, n))
	for j := len(path) - 1; j >= 0; j-- {
		st := path[j]
		v, ok := t.uniform(st.group, st.start)
		if !ok {
			break
		}
		atomic.StoreUint32(&st.tbl[st.i], v) // unpublish
		t.release(st.group)
	}
	return nil
}

// uniform reports whether every entry of group g holds the same value
// inherited from above (painted by a prefix no longer than start), so the
// group can be replaced by that value.
func (t *trie) uniform(g, start int) (uint32, bool) {
	grp := t.groups[g*groupSize : (g+1)*groupSize]
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

// lookup returns the result for address a.
func (t *trie) lookup(a *[16]byte) Result {
	e := atomic.LoadUint32(&t.l0[index(a, 0, t.first)])
	for b := t.first; e&extBit != 0; b += 8 {
		e = atomic.LoadUint32(&t.groups[int(e&groupMask)*groupSize+int(a[b/8])])
	}
	return Result(e & resultMask)
}

// clear empties the trie (like a fresh one) without reallocating memory.
// Readers may see the table empty out progressively.
func (t *trie) clear() error {
	for i := range t.l0 {
		if t.l0[i] != 0 {
			atomic.StoreUint32(&t.l0[i], 0)
		}
	}
	if err := t.grace(); err != nil {
		return fmt.Errorf("wait for fib readers: %w", err)
	}
	t.routes.clear()
	t.free, t.pending, t.next, t.used = t.free[:0], t.pending[:0], 0, 0
	return nil
}

// rebuild recovers next, free and used from the tables after reopening
// pinned maps: every group reachable from the first level is in use.
func (t *trie) rebuild() {
	inUse := make([]bool, t.ngroups)
	var walk func(tbl []uint32)
	walk = func(tbl []uint32) {
		for _, e := range tbl {
			if e&extBit == 0 {
				continue
			}
			g := int(e & groupMask)
			if g < t.ngroups && !inUse[g] {
				inUse[g] = true
				walk(t.groups[g*groupSize : (g+1)*groupSize])
			}
		}
	}
	walk(t.l0)
	t.next, t.used, t.free, t.pending = 0, 0, t.free[:0], t.pending[:0]
	for g, u := range inUse {
		if u {
			t.used++
			t.next = g + 1
		}
	}
	for g := 0; g < t.next; g++ {
		if !inUse[g] {
			t.free = append(t.free, uint32(g))
		}
	}
	t.recoverRoutes()
}

// recoverRoutes rebuilds the route set from the entries of reopened maps:
// every prefix that paints at least one entry, with its result. A prefix
// hidden entirely under longer ones paints nothing, so it is not
// recovered; it forwards nothing either, and a later delete of what hides
// it restores the parent from the routes loaded since.
func (t *trie) recoverRoutes() {
	var last uint32
	var lastP [16]byte
	var walk func(tbl []uint32, base int, a [16]byte, off, stride int)
	walk = func(tbl []uint32, base int, a [16]byte, off, stride int) {
		for i := range 1 << stride {
			for k := range stride / 8 {
				a[off/8+k] = byte(i >> (8 * (stride/8 - 1 - k)))
			}
			e := tbl[base+i]
			if e&extBit != 0 {
				walk(t.groups, int(e&groupMask)*groupSize, a, off+stride, 8)
				continue
			}
			if e == 0 {
				continue
			}
			d := depthOf(e)
			p := mask(a, d)
			if e == last && p == lastP {
				continue // the same prefix's next entry
			}
			last, lastP = e, p
			if _, ok := t.routes.get(&p, d); !ok {
				t.routes.put(&p, d, Result(e&resultMask))
			}
		}
	}
	walk(t.l0, 0, [16]byte{}, 0, t.first)
}

// lookup4 is the DIR-24-8 lookup: one read, two for prefixes past /24.
func (t *trie) lookup4(a uint32) Result {
	e := atomic.LoadUint32(&t.l0[a>>8])
	if e&extBit != 0 {
		e = atomic.LoadUint32(&t.groups[int(e&groupMask)*groupSize+int(a&0xff)])
	}
	return Result(e & resultMask)
}

// lookupBatch4 looks up each address in turn: with at most two loads per
// address, out-of-order execution already overlaps the misses of
// neighbouring lookups (a level-by-level pass measured slower: 13.6 vs
// 9.2 ns on random addresses).
func (t *trie) lookupBatch4(dst []uint32, out []Result) {
	for i, a := range dst {
		out[i] = t.lookup4(a)
	}
}

// lookupBatch resolves every address one level at a time.
func (t *trie) lookupBatch(dst [][16]byte, out []Result) {
	ext := false
	for i := range dst {
		e := atomic.LoadUint32(&t.l0[index(&dst[i], 0, t.first)])
		out[i] = Result(e)
		ext = ext || e&extBit != 0
	}
	for b := t.first; ext && b < t.bits; b += 8 {
		ext = false
		for i := range dst {
			if e := uint32(out[i]); e&extBit != 0 {
				e = atomic.LoadUint32(&t.groups[int(e&groupMask)*groupSize+int(dst[i][b/8])])
				out[i] = Result(e)
				ext = ext || e&extBit != 0
			}
		}
	}
	for i := range out {
		out[i] &= resultMask
	}
}
