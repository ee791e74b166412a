package xsk

import (
	"sync/atomic"
	"unsafe"
)

// Desc is an RX or TX descriptor: a frame's address in the UMEM and its
// length (struct xdp_desc).
type Desc struct {
	Addr    uint64
	Len     uint32
	Options uint32
}

// ringNeedWakeup is XDP_RING_NEED_WAKEUP: set by the kernel in a ring's
// flags word when it wants a syscall before it looks at the ring again.
const ringNeedWakeup = 1

// ring is the index half of a single-producer single-consumer ring shared
// with the kernel: free-running 32-bit producer and consumer indices
// (their difference is the fill level, also across wrap-around), the
// kernel's flags word, and our cached copies of both indices so most
// calls touch no shared cache line. Like libxdp's xsk.h, the other side's
// index is read with an acquire load and ours published with a release
// store (Go's sync/atomic gives at least that), so descriptors written
// before a publish are seen by whoever sees the index.
type ring struct {
	producer, consumer, flags *uint32
	size, mask                uint32
	cachedProd, cachedCons    uint32
}

func newRing(producer, consumer, flags *uint32, size uint32) ring {
	r := ring{producer: producer, consumer: consumer, flags: flags, size: size, mask: size - 1}
	r.cachedProd = atomic.LoadUint32(producer)
	r.cachedCons = atomic.LoadUint32(consumer)
	return r
}

// needWakeup reports whether the kernel asked for a syscall.
func (r *ring) needWakeup() bool {
	return r.flags != nil && atomic.LoadUint32(r.flags)&ringNeedWakeup != 0
}

// free is how many slots a producer can reserve now: the consumer index
// is reloaded only when the cached one shows fewer than want.
func (r *ring) free(want uint32) uint32 {
	n := r.cachedCons + r.size - r.cachedProd
	if n >= want {
		return n
	}
	r.cachedCons = atomic.LoadUint32(r.consumer)
	return r.cachedCons + r.size - r.cachedProd
}

// reserve takes up to n free slots for the producer; it returns the first
// slot's index and how many it got (0 when the ring is full).
func (r *ring) reserve(n uint32) (idx, got uint32) {
	got = min(n, r.free(n))
	idx = r.cachedProd
	r.cachedProd += got
	return idx, got
}

// submit publishes every reserved slot to the consumer.
func (r *ring) submit() { atomic.StoreUint32(r.producer, r.cachedProd) }

// avail is how many entries a consumer can take now: the producer index
// is reloaded only when the cached one shows fewer than want.
func (r *ring) avail(want uint32) uint32 {
	n := r.cachedProd - r.cachedCons
	if n >= want {
		return n
	}
	r.cachedProd = atomic.LoadUint32(r.producer)
	return r.cachedProd - r.cachedCons
}

// peek takes up to n entries for the consumer; it returns the first
// entry's index and how many it got.
func (r *ring) peek(n uint32) (idx, got uint32) {
	got = min(n, r.avail(n))
	idx = r.cachedCons
	r.cachedCons += got
	return idx, got
}

// release gives every peeked entry back to the producer.
func (r *ring) release() { atomic.StoreUint32(r.consumer, r.cachedCons) }

// pending is the fill level as both sides last published it (for
// accounting at rest, not for the hot path).
func (r *ring) pending() uint32 {
	return atomic.LoadUint32(r.producer) - atomic.LoadUint32(r.consumer)
}

// addrRing is a fill or completion ring: frame addresses. Only Socket
// uses it, so every move goes through the UMEM's owner accounting.
type addrRing struct {
	ring
	addrs []uint64
}

// descRing is an rx or tx ring: descriptors.
type descRing struct {
	ring
	descs []Desc
}

// Ring memory layout as the kernel gives it (XDP_MMAP_OFFSETS): where in a
// mapping the producer, consumer, flags and descriptors are.
type ringOffsets struct {
	Producer, Consumer, Desc, Flags uint64
}

// newAddrRing lays an addrRing over mem (a mapping or, in tests, Go
// memory).
func newAddrRing(mem []byte, off ringOffsets, size uint32) addrRing {
	base := unsafe.Pointer(unsafe.SliceData(mem))
	return addrRing{
		ring: newRing((*uint32)(unsafe.Add(base, off.Producer)), (*uint32)(unsafe.Add(base, off.Consumer)),
			(*uint32)(unsafe.Add(base, off.Flags)), size),
		addrs: unsafe.Slice((*uint64)(unsafe.Add(base, off.Desc)), size),
	}
}

// newDescRing lays a descRing over mem.
func newDescRing(mem []byte, off ringOffsets, size uint32) descRing {
	base := unsafe.Pointer(unsafe.SliceData(mem))
	return descRing{
		ring: newRing((*uint32)(unsafe.Add(base, off.Producer)), (*uint32)(unsafe.Add(base, off.Consumer)),
			(*uint32)(unsafe.Add(base, off.Flags)), size),
		descs: unsafe.Slice((*Desc)(unsafe.Add(base, off.Desc)), size),
	}
}

// ringBytes is the size of a ring's mapping.
func ringBytes(off ringOffsets, size uint32, entry uintptr) int {
	return int(off.Desc) + int(size)*int(entry)
}

// Pending is how many entries are on the ring as both sides last
// published.
func (r *descRing) Pending() int { return int(r.pending()) }

// Pending is how many entries are on the ring as both sides last
// published.
func (r *addrRing) Pending() int { return int(r.pending()) }
