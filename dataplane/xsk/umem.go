package xsk

import (
	"errors"
	"fmt"
	"sync"

	"golang.org/x/sys/unix"
)

// UMEM is the packet memory a worker's sockets share (XDP_SHARED_UMEM):
// frames of FrameSize bytes, registered with the kernel by the first
// socket bound to it and shared by the others, one socket per
// (interface, queue), each with its own fill and completion rings. A
// frame received on one socket is sent by another by moving its
// descriptor: no copy in user space.
//
// Every frame has one owner at any time, kept in a byte per frame: the
// free list, the worker (received, not yet sent or dropped), or the
// kernel through one socket (on its fill, rx, tx or completion ring, or
// held by the driver). Each move checks the owner it expects, so a frame
// used twice or given back by the wrong socket is counted (Faults), never
// silently reused; Check proves at rest that every frame has one owner
// and none is left with the worker or a closed socket (frames the kernel
// holds through an open socket are counted, not proven: the kernel does
// not say which).
//
// A UMEM, like its sockets, is used by one goroutine; only socket slots
// (Open, Close) are locked.
type UMEM struct {
	mem       []byte
	mapped    bool // mem is our mapping (else Go memory, in tests)
	frameSize int
	shift     uint     // log2(frameSize)
	free      []uint64 // frame addresses (base of each frame) on the free list
	owner     []uint8  // per frame: ownerFree, ownerWorker or ownerSocket+slot
	faults    uint64   // moves that found an unexpected owner
	scratch   []uint64 // completion addresses

	mu      sync.Mutex
	sockets [maxSockets]*Socket // by slot; nil where free
}

// Frame owners: ownerSocket+slot is the kernel through the socket in that
// slot.
const (
	ownerFree   = 0
	ownerWorker = 1
	ownerSocket = 2
	maxSockets  = 256 - ownerSocket
)

// NewUMEM maps frames*frameSize bytes of packet memory (populated, so the
// first packets take no page faults); every frame starts on the free
// list.
func NewUMEM(frames, frameSize int) (*UMEM, error) {
	if frames <= 0 || frameSize <= 0 || frameSize&(frameSize-1) != 0 {
		return nil, fmt.Errorf("UMEM of %d frames of %d bytes: frames must be positive and the size a power of two", frames, frameSize)
	}
	mem, err := unix.Mmap(-1, 0, frames*frameSize, unix.PROT_READ|unix.PROT_WRITE,
		unix.MAP_PRIVATE|unix.MAP_ANONYMOUS|unix.MAP_POPULATE)
	if err != nil {
		return nil, fmt.Errorf("map UMEM of %d frames of %d bytes: %w", frames, frameSize, err)
	}
	u := newUMEM(mem, frameSize)
	u.mapped = true
	return u, nil
}

// newUMEM lays a UMEM over mem (a mapping, or Go memory in tests).
func newUMEM(mem []byte, frameSize int) *UMEM {
	frames := len(mem) / frameSize
	u := &UMEM{mem: mem, frameSize: frameSize, owner: make([]uint8, frames),
		free: make([]uint64, 0, frames), scratch: make([]uint64, 0, 1024)}
	for u.shift = 0; 1<<u.shift < frameSize; u.shift++ {
	}
	for i := frames - 1; i >= 0; i-- {
		u.free = append(u.free, uint64(i)<<u.shift)
	}
	return u
}

// FrameSize is the size of each frame in bytes.
func (u *UMEM) FrameSize() int { return u.frameSize }

// Faults counts frame moves that found an unexpected owner (a frame used
// twice, or returned by a socket that did not have it); always 0 unless
// something is wrong.
func (u *UMEM) Faults() uint64 { return u.faults }

// Bytes returns the frame bytes a descriptor names, nil when it is not
// inside one frame (the kernel never gives such a descriptor; nil keeps a
// bad one from panicking the worker).
func (u *UMEM) Bytes(d Desc) []byte {
	end := d.Addr + uint64(d.Len)
	if d.Addr >= uint64(len(u.mem)) || end > uint64(len(u.mem)) || end <= d.Addr || d.Addr>>u.shift != (end-1)>>u.shift {
		return nil
	}
	return u.mem[d.Addr:end:end]
}

// Meta returns the n bytes in front of a received frame in its chunk
// (where XDP metadata lands), nil when the frame's offset leaves no room.
func (u *UMEM) Meta(d Desc, n int) []byte {
	off := d.Addr & uint64(u.frameSize-1)
	if off < uint64(n) || d.Addr > uint64(len(u.mem)) {
		return nil
	}
	return u.mem[d.Addr-uint64(n) : d.Addr : d.Addr]
}

// move hands the frame at addr from owner from to owner to; false (and a
// fault) when from does not own it.
func (u *UMEM) move(addr uint64, from, to uint8) bool {
	i := addr >> u.shift
	if i >= uint64(len(u.owner)) || u.owner[i] != from {
		u.faults++
		return false
	}
	u.owner[i] = to
	return true
}

// Drop puts a frame the worker holds back on the free list (a frame
// received and not sent).
func (u *UMEM) Drop(addr uint64) {
	base := addr &^ uint64(u.frameSize-1)
	if u.move(base, ownerWorker, ownerFree) {
		u.free = append(u.free, base)
	}
}

// Free is the number of frames on the free list.
func (u *UMEM) Free() int { return len(u.free) }

// attach gives s a slot; the first socket of an idle UMEM registers it.
// It returns the fd of a bound socket to share the UMEM with (-1: none,
// s registers it).
func (u *UMEM) attach(s *Socket) (shareFD int, err error) {
	u.mu.Lock()
	defer u.mu.Unlock()
	shareFD = -1
	slot := -1
	for i, o := range u.sockets {
		if o == nil {
			if slot < 0 {
				slot = i
			}
		} else if shareFD < 0 && o.bound {
			shareFD = o.fd
		}
	}
	if slot < 0 {
		return -1, fmt.Errorf("UMEM already has %d sockets", maxSockets)
	}
	u.sockets[slot] = s
	s.slot = uint8(slot)
	return shareFD, nil
}

// detach frees s's slot.
func (u *UMEM) detach(s *Socket) {
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.sockets[s.slot] == s {
		u.sockets[s.slot] = nil
	}
}

// Reclaim returns to the free list every frame the kernel held through a
// socket that is closed: what was on its rings, or held by its driver,
// went with it. Call it from the UMEM's goroutine after the socket's
// Close. A zero-copy driver may still write into its frames until the
// kernel's deferred release detaches the queue, so a zero-copy socket's
// frames stay retired (owned by its closed slot) until ReclaimQueue sees a
// new socket bound to the same queue; it returns 0 then.
func (u *UMEM) Reclaim(s *Socket) int {
	if s.ZeroCopy {
		u.mu.Lock()
		s.retired = true
		u.mu.Unlock()
		return 0
	}
	n := u.reclaimSlot(s.slot)
	u.detach(s)
	return n
}

// ReclaimQueue returns the frames of retired zero-copy sockets of
// (ifindex, queue): a socket bound there again means the kernel released
// the old one's hold on the queue. Call it from the UMEM's goroutine.
func (u *UMEM) ReclaimQueue(ifindex, queue int) int {
	var old []*Socket
	u.mu.Lock()
	for _, o := range u.sockets {
		if o != nil && o.retired && o.Ifindex == ifindex && o.Queue == queue {
			old = append(old, o)
		}
	}
	u.mu.Unlock()
	n := 0
	for _, o := range old {
		n += u.reclaimSlot(o.slot)
		u.detach(o)
	}
	return n
}

// reclaimSlot frees every frame owned through slot. What the kernel put
// in them was never read, so their headroom is cleared (metadata a later
// frame without any must not find).
func (u *UMEM) reclaimSlot(slot uint8) int {
	n := 0
	for i, o := range u.owner {
		if o == ownerSocket+slot {
			u.owner[i] = ownerFree
			base := uint64(i) << u.shift
			clear(u.mem[base : base+uint64(u.headroom())])
			u.free = append(u.free, base)
			n++
		}
	}
	return n
}

// headroom is how much of a chunk's start can hold metadata in front of
// the frame: the kernel's XDP_PACKET_HEADROOM, as the UMEM is registered
// with no headroom of its own (Socket.open).
func (u *UMEM) headroom() int { return min(256, u.frameSize) }

// Account is where a UMEM's frames are.
type Account struct {
	Frames int // in the UMEM
	Free   int // on the free list
	Worker int // held by the worker
	// Kernel is held by the kernel through each open socket (by slot):
	// on its rings or in the driver.
	Kernel map[int]int
	Faults uint64 // moves that found an unexpected owner
}

// ErrAccount is wrapped by Check errors: a frame lost or used twice.
var ErrAccount = errors.New("AF_XDP frame accounting")

// Account counts the owners of every frame.
func (u *UMEM) Account() Account {
	a := Account{Frames: len(u.owner), Kernel: map[int]int{}, Faults: u.faults}
	for _, o := range u.owner {
		switch o {
		case ownerFree:
			a.Free++
		case ownerWorker:
			a.Worker++
		default:
			a.Kernel[int(o-ownerSocket)]++
		}
	}
	return a
}

// Check proves the accounting at rest (no traffic, every round done):
// each frame on the free list once and owned by it, none held by the
// worker, none held through a socket slot that is not open, no fault.
func (u *UMEM) Check() error {
	var errs []error
	seen := make([]bool, len(u.owner))
	for _, addr := range u.free {
		i := addr >> u.shift
		switch {
		case addr&uint64(u.frameSize-1) != 0 || i >= uint64(len(u.owner)):
			errs = append(errs, fmt.Errorf("free list holds %#x, not a frame", addr))
		case seen[i]:
			errs = append(errs, fmt.Errorf("frame %#x on the free list twice", addr))
		case u.owner[i] != ownerFree:
			errs = append(errs, fmt.Errorf("frame %#x on the free list but owned by %d", addr, u.owner[i]))
		default:
			seen[i] = true
		}
	}
	a := u.Account()
	if a.Free != len(u.free) {
		errs = append(errs, fmt.Errorf("%d frames owned by the free list, %d on it", a.Free, len(u.free)))
	}
	if a.Worker != 0 {
		errs = append(errs, fmt.Errorf("%d frames still held by the worker", a.Worker))
	}
	u.mu.Lock()
	for slot, n := range a.Kernel {
		if o := u.sockets[slot]; o == nil || (!o.bound && !o.retired) {
			errs = append(errs, fmt.Errorf("%d frames held through closed socket slot %d", n, slot))
		}
	}
	u.mu.Unlock()
	if a.Faults != 0 {
		errs = append(errs, fmt.Errorf("%d frame moves found an unexpected owner", a.Faults))
	}
	if len(errs) > 0 {
		return fmt.Errorf("%w: %w", ErrAccount, errors.Join(errs...))
	}
	return nil
}

// Close unmaps the packet memory. Every socket must be closed first.
func (u *UMEM) Close() error {
	if u.mem == nil || !u.mapped {
		return nil
	}
	err := unix.Munmap(u.mem)
	u.mem, u.mapped = nil, false
	if err != nil {
		return fmt.Errorf("unmap UMEM: %w", err)
	}
	return nil
}
