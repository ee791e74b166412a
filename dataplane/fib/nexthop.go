package fib

import (
	"fmt"
	"net"
	"sync/atomic"
	"unsafe"

	"github.com/cilium/ebpf"
)

// NexthopState is a nexthop's neighbour state as the dataplane uses it.
type NexthopState uint8

// Nexthop states: only Resolved nexthops are forwarded to; the others send
// packets to the kernel, which resolves the neighbour.
const (
	Unset      NexthopState = iota // no such nexthop
	Resolved                       // MACs known: forward
	Incomplete                     // resolution under way: to the kernel
	Failed                         // resolution failed: to the kernel
)

func (s NexthopState) String() string {
	return [...]string{"unset", "resolved", "incomplete", "failed"}[s&3]
}

// Nexthop is where a route sends packets.
type Nexthop struct {
	Ifindex int
	SrcMAC  net.HardwareAddr
	DstMAC  net.HardwareAddr
	MTU     int
	State   NexthopState
}

// NexthopEntry is a nexthop as stored in the table and read by workers
// (struct fib_nexthop in bpf/fib.h).
type NexthopEntry struct {
	Ifindex uint32
	MTU     uint16
	State   NexthopState
	Flags   uint8
	DstMAC  [6]byte
	SrcMAC  [6]byte
	// Gen is new on every write of the entry (never 0), so whoever holds
	// a nexthop ID and the Gen it saw (the XDP program hands both to the
	// AF_XDP worker) can tell that the entry has not changed since.
	Gen uint32
}

type nhEntry = NexthopEntry

// MaxECMP is the largest number of members of an ECMP group.
const MaxECMP = 16

// ecmpEntry is struct fib_ecmp in bpf/fib.h.
type ecmpEntry struct {
	Count   uint32
	Members [MaxECMP]uint32
	_       uint32
}

// slots holds values that readers must never see half-written: each ID
// points (ptr, one 32-bit word per 8-byte element) to a slot in data; a
// change fills a free slot, then repoints the ID with one store; the old
// slot is reused only after a grace period.
type slots[T any] struct {
	t       *Table
	name    string
	ptr     []uint32 // ptr[2*id] = slot+1, 0 = unset
	data    []T
	free    []uint32
	pending []uint32
	next    int
	live    int
}

func newSlots[T any](t *Table, name string, n int) (*slots[T], *ebpf.Map, *ebpf.Map, error) {
	pm, pmem, err := t.mmapArray(name+"_ptr", 8, n)
	if err != nil {
		return nil, nil, nil, err
	}
	var zero T
	size := int(unsafe.Sizeof(zero))
	if size%8 != 0 {
		return nil, nil, nil, fmt.Errorf("%s: value size %d is not a multiple of 8", name, size)
	}
	dm, dmem, err := t.mmapArray(name, size, 2*n)
	if err != nil {
		return nil, nil, nil, err
	}
	s := &slots[T]{
		t: t, name: name,
		ptr:  unsafe.Slice((*uint32)(unsafe.Pointer(&pmem[0])), 2*n),
		data: unsafe.Slice((*T)(unsafe.Pointer(&dmem[0])), 2*n),
	}
	return s, pm, dm, nil
}

func (s *slots[T]) ids() int { return len(s.ptr) / 2 }

func (s *slots[T]) set(id uint32, v T) error {
	if int(id) >= s.ids() {
		return fmt.Errorf("%s id %d: the table holds ids 0-%d", s.name, id, s.ids()-1)
	}
	if len(s.free) == 0 && s.next == len(s.data) {
		if err := s.t.grace(); err != nil {
			return fmt.Errorf("wait for fib readers: %w", err)
		}
		s.free, s.pending = append(s.free, s.pending...), s.pending[:0]
	}
	var slot uint32
	if k := len(s.free); k > 0 {
		slot, s.free = s.free[k-1], s.free[:k-1]
	} else if s.next < len(s.data) {
		slot = uint32(s.next)
		s.next++
	} else {
		return fmt.Errorf("%w: no free %s slot", ErrCapacity, s.name)
	}
	s.data[slot] = v
	old := atomic.SwapUint32(&s.ptr[2*id], slot+1) // publish
	if old != 0 {
		s.pending = append(s.pending, old-1)
	} else {
		s.live++
	}
	return nil
}

func (s *slots[T]) del(id uint32) error {
	if int(id) >= s.ids() {
		return fmt.Errorf("%s id %d: the table holds ids 0-%d", s.name, id, s.ids()-1)
	}
	old := atomic.SwapUint32(&s.ptr[2*id], 0)
	if old == 0 {
		return fmt.Errorf("%s id %d: %w", s.name, id, ErrNotFound)
	}
	s.pending = append(s.pending, old-1)
	s.live--
	return nil
}

// rebuild recovers the slot allocator from reopened maps.
func (s *slots[T]) rebuild() {
	used := make([]bool, len(s.data))
	s.live, s.next, s.free, s.pending = 0, 0, s.free[:0], s.pending[:0]
	for id := 0; id < s.ids(); id++ {
		if p := s.ptr[2*id]; p != 0 && int(p) <= len(s.data) {
			used[p-1] = true
			s.live++
		}
	}
	for i, u := range used {
		if u {
			s.next = i + 1
		}
	}
	for i := 0; i < s.next; i++ {
		if !used[i] {
			s.free = append(s.free, uint32(i))
		}
	}
}

// liveIDs lists the ids that are set.
func (s *slots[T]) liveIDs() []uint32 {
	var ids []uint32
	for id := 0; id < s.ids(); id++ {
		if atomic.LoadUint32(&s.ptr[2*id]) != 0 {
			ids = append(ids, uint32(id))
		}
	}
	return ids
}

// LiveIDs lists the nexthop and ECMP group IDs that are set: on a table
// reopened from pins, those the earlier process left.
func (t *Table) LiveIDs() (nexthops, ecmp []uint32) {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.nh.liveIDs(), t.ecmp.liveIDs()
}

// IDCapacity is how many nexthop and ECMP group IDs the table holds.
func (t *Table) IDCapacity() (nexthops, ecmp int) {
	return t.nh.ids(), t.ecmp.ids()
}

// get copies the value of id; readers call it between Begin and End.
func (s *slots[T]) get(id uint32) (T, bool) {
	var zero T
	if int(id) >= s.ids() {
		return zero, false
	}
	p := atomic.LoadUint32(&s.ptr[2*id])
	if p == 0 {
		return zero, false
	}
	return s.data[p-1], true
}

// SetNexthop creates or changes nexthop id; readers switch from the old to
// the new value at once.
func (t *Table) SetNexthop(id uint32, nh Nexthop) error {
	e := NexthopEntry{Ifindex: uint32(nh.Ifindex), MTU: uint16(nh.MTU), State: nh.State}
	if nh.MTU < 0 || nh.MTU > 0xffff {
		return fmt.Errorf("nexthop %d: mtu %d out of range", id, nh.MTU)
	}
	copy(e.SrcMAC[:], nh.SrcMAC)
	copy(e.DstMAC[:], nh.DstMAC)
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.nhGen++; t.nhGen == 0 {
		t.nhGen++
	}
	e.Gen = t.nhGen
	return t.nh.set(id, e)
}

// DeleteNexthop removes nexthop id. Routes still pointing at it send their
// packets to the kernel.
func (t *Table) DeleteNexthop(id uint32) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.nh.del(id)
}

// SetECMP creates or changes ECMP group id with 1 to 16 nexthop IDs.
func (t *Table) SetECMP(id uint32, members []uint32) error {
	if len(members) < 1 || len(members) > MaxECMP {
		return fmt.Errorf("ecmp group %d: %d members, want 1 to %d", id, len(members), MaxECMP)
	}
	var e ecmpEntry
	e.Count = uint32(len(members))
	copy(e.Members[:], members)
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.ecmp.set(id, e)
}

// DeleteECMP removes ECMP group id.
func (t *Table) DeleteECMP(id uint32) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.ecmp.del(id)
}

// Reader is one goroutine's read access to a table. Between Begin and End
// it may look up and read nexthops without locks; memory it could be
// reading is not reused until it calls End. Keep the section short: a
// batch of packets.
type Reader struct {
	t   *Table
	seq atomic.Uint64 // odd while inside a section
}

// NewReader registers a reader; Close it when done.
func (t *Table) NewReader() *Reader {
	r := &Reader{t: t}
	t.readersMu.Lock()
	t.readers[r] = struct{}{}
	t.readersMu.Unlock()
	return r
}

// Close unregisters the reader.
func (r *Reader) Close() {
	r.t.readersMu.Lock()
	delete(r.t.readers, r)
	r.t.readersMu.Unlock()
}

// Begin starts a read section.
func (r *Reader) Begin() { r.seq.Add(1) }

// End ends a read section.
func (r *Reader) End() { r.seq.Add(1) }

// Lookup4 returns the result for an IPv4 address (host order: 10.0.0.1 is
// 0x0a000001). Call it between Begin and End.
func (r *Reader) Lookup4(a uint32) Result { return r.t.v4.lookup4(a) }

// Lookup6 returns the result for an IPv6 address. Call it between Begin
// and End.
func (r *Reader) Lookup6(a *[16]byte) Result { return r.t.v6.lookup6(a) }

// LookupBatch4 looks up every address of dst into out (which must be at
// least as long), in one read section. It goes level by level over 64
// addresses at a time, so the cache misses of different addresses
// overlap instead of forming one chain per address.
func (r *Reader) LookupBatch4(dst []uint32, out []Result) {
	r.Begin()
	r.t.v4.lookupBatch4(dst, out[:len(dst)])
	r.End()
}

// LookupBatch6 looks up every address of dst into out, in one read
// section.
func (r *Reader) LookupBatch6(dst [][16]byte, out []Result) {
	r.Begin()
	r.t.v6.lookupBatch6(dst, out[:len(dst)])
	r.End()
}

// Nexthop copies nexthop id. Call it between Begin and End.
func (r *Reader) Nexthop(id uint32) (NexthopEntry, bool) { return r.t.nh.get(id) }

// ECMPMember returns the nexthop ID an ECMP group picks for a flow hash
// (member hash % count, as bpf/fib.h does). Call it between Begin and End.
func (r *Reader) ECMPMember(group, hash uint32) (uint32, bool) {
	e, ok := r.t.ecmp.get(group)
	if !ok || e.Count == 0 || e.Count > MaxECMP {
		return 0, false
	}
	return e.Members[hash%e.Count], true
}

// Flow hash, bit-for-bit the same as fib_hash_* in bpf/fib.h. Words are
// mixed in order: IPv4 source, destination, ports (source << 16 |
// destination), protocol; IPv6 the four words of the source, the four of
// the destination, ports, protocol. Address words are read big-endian.
const hashSeed = 0x9e3779b9

// HashWord mixes one 32-bit word into h.
func HashWord(h, w uint32) uint32 {
	h ^= w
	h *= 0x85ebca6b
	h ^= h >> 13
	return h
}

// HashFinal finishes a hash.
func HashFinal(h uint32) uint32 {
	h ^= h >> 16
	h *= 0xc2b2ae35
	h ^= h >> 16
	return h
}

// FlowHash4 is the ECMP hash of an IPv4 flow (addresses in host order).
func FlowHash4(src, dst uint32, proto uint8, sport, dport uint16) uint32 {
	h := HashWord(hashSeed, src)
	h = HashWord(h, dst)
	h = HashWord(h, uint32(sport)<<16|uint32(dport))
	return HashFinal(HashWord(h, uint32(proto)))
}

// FlowHash6 is the ECMP hash of an IPv6 flow.
func FlowHash6(src, dst *[16]byte, proto uint8, sport, dport uint16) uint32 {
	h := uint32(hashSeed)
	for _, a := range []*[16]byte{src, dst} {
		for i := 0; i < 16; i += 4 {
			h = HashWord(h, uint32(a[i])<<24|uint32(a[i+1])<<16|uint32(a[i+2])<<8|uint32(a[i+3]))
		}
	}
	h = HashWord(h, uint32(sport)<<16|uint32(dport))
	return HashFinal(HashWord(h, uint32(proto)))
}
