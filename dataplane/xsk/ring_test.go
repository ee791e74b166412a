package xsk

import (
	"errors"
	"fmt"
	"slices"
	"testing"
	"unsafe"
)

// These tests play the kernel's side of the rings on Go memory laid out
// as a mapping is: no root, no socket.

var fakeOff = ringOffsets{Producer: 0, Consumer: 64, Flags: 128, Desc: 192}

// fakeMem is ring memory, 8-byte aligned like a mapping.
func fakeMem(size uint32, entry uintptr) []byte {
	words := make([]uint64, (ringBytes(fakeOff, size, entry)+7)/8)
	return unsafe.Slice((*byte)(unsafe.Pointer(&words[0])), len(words)*8)
}

// setIndex sets a ring's producer and consumer as the kernel would have
// left them, before the user side is laid over it.
func setIndex(mem []byte, prod, cons uint32) {
	*(*uint32)(unsafe.Pointer(&mem[fakeOff.Producer])) = prod
	*(*uint32)(unsafe.Pointer(&mem[fakeOff.Consumer])) = cons
}

// The user side's batch operations, for these tests only (Socket moves
// entries itself, checking each frame's owner).

// Put produces up to len(addrs) addresses and publishes them; it returns
// how many fit.
func (r *addrRing) Put(addrs []uint64) int {
	idx, got := r.reserve(uint32(len(addrs)))
	for i := range got {
		r.addrs[(idx+i)&r.mask] = addrs[i]
	}
	if got > 0 {
		r.submit()
	}
	return int(got)
}

// Get consumes up to len(out) addresses into out and releases their
// slots; it returns how many.
func (r *addrRing) Get(out []uint64) int {
	idx, got := r.peek(uint32(len(out)))
	for i := range got {
		out[i] = r.addrs[(idx+i)&r.mask]
	}
	if got > 0 {
		r.release()
	}
	return int(got)
}

// Put produces up to len(descs) descriptors and publishes them; it
// returns how many fit.
func (r *descRing) Put(descs []Desc) int {
	idx, got := r.reserve(uint32(len(descs)))
	for i := range got {
		r.descs[(idx+i)&r.mask] = descs[i]
	}
	if got > 0 {
		r.submit()
	}
	return int(got)
}

// Get consumes up to len(out) descriptors into out and releases their
// slots; it returns how many.
func (r *descRing) Get(out []Desc) int {
	idx, got := r.peek(uint32(len(out)))
	for i := range got {
		out[i] = r.descs[(idx+i)&r.mask]
	}
	if got > 0 {
		r.release()
	}
	return int(got)
}

// Free is how many descriptors Put would take now.
func (r *descRing) Free() int { return int(r.free(r.size)) }

// Free is how many addresses Put would take now.
func (r *addrRing) Free() int { return int(r.free(r.size)) }

// NeedWakeup reports whether the kernel asked for a syscall before it
// looks at this ring again (need_wakeup mode).
func (r *descRing) NeedWakeup() bool { return r.needWakeup() }

// NeedWakeup reports whether the kernel asked for a syscall before it
// looks at this ring again (need_wakeup mode).
func (r *addrRing) NeedWakeup() bool { return r.needWakeup() }

// kernelSide is the other end of a fake ring.
type kernelSide struct{ r *ring }

func (k kernelSide) consume(n uint32) (idx, got uint32) {
	prod, cons := *k.r.producer, *k.r.consumer
	got = min(n, prod-cons)
	*k.r.consumer = cons + got
	return cons, got
}

func (k kernelSide) produce(n uint32) (idx, got uint32) {
	prod, cons := *k.r.producer, *k.r.consumer
	got = min(n, k.r.size-(prod-cons))
	*k.r.producer = prod + got
	return prod, got
}

func TestRingWrapAround(t *testing.T) {
	for _, start := range []uint32{0, 5, 1<<32 - 3, 1<<32 - 8} {
		mem := fakeMem(8, 16)
		setIndex(mem, start, start)
		r := newDescRing(mem, fakeOff, 8)
		k := kernelSide{&r.ring}
		next := uint64(0)
		want := uint64(0)
		for round := range 10 {
			in := make([]Desc, 5)
			for i := range in {
				in[i] = Desc{Addr: next, Len: 60}
				next++
			}
			if n := r.Put(in); n != 5 {
				t.Fatalf("start %#x round %d: put %d of 5 into a ring with room", start, round, n)
			}
			idx, got := k.consume(8)
			if got != 5 {
				t.Fatalf("start %#x round %d: kernel saw %d, want 5", start, round, got)
			}
			for i := range got {
				if d := r.descs[(idx+i)&r.mask]; d.Addr != want {
					t.Fatalf("start %#x round %d: entry %d is %d, want %d (order lost across wrap-around)", start, round, i, d.Addr, want)
				}
				want++
			}
		}
	}
}

func TestRingPartialReservation(t *testing.T) {
	mem := fakeMem(8, 8)
	r := newAddrRing(mem, fakeOff, 8)
	k := kernelSide{&r.ring}
	addrs := []uint64{1, 2, 3, 4, 5, 6, 7, 8, 9, 10}
	if n := r.Put(addrs); n != 8 {
		t.Fatalf("put %d into an empty ring of 8, want 8", n)
	}
	if n := r.Put(addrs[8:]); n != 0 {
		t.Fatalf("put %d into a full ring", n)
	}
	k.consume(3)
	if f := r.Free(); f != 3 {
		t.Errorf("free %d after the kernel took 3, want 3", f)
	}
	if n := r.Put(addrs[8:]); n != 2 {
		t.Fatalf("put %d of 2 with 3 free", n)
	}
	if n := r.Put(addrs); n != 1 {
		t.Fatalf("put %d of 10 with 1 free", n)
	}
	// The consumer side: the kernel publishes 5, we take 3 then 4 (2 left).
	cmem := fakeMem(8, 8)
	c := newAddrRing(cmem, fakeOff, 8)
	kc := kernelSide{&c.ring}
	idx, got := kc.produce(5)
	for i := range got {
		c.addrs[(idx+i)&c.mask] = uint64(100 + i)
	}
	out := make([]uint64, 3)
	if n := c.Get(out); n != 3 || !slices.Equal(out, []uint64{100, 101, 102}) {
		t.Fatalf("get %d %v, want 3 [100 101 102]", n, out)
	}
	out = make([]uint64, 4)
	if n := c.Get(out); n != 2 || !slices.Equal(out[:2], []uint64{103, 104}) {
		t.Fatalf("get %d %v, want 2 [103 104]", n, out[:n])
	}
	if *c.consumer != 5 {
		t.Errorf("consumer %d after taking 5, want 5 (released)", *c.consumer)
	}
}

func TestRingNeedWakeup(t *testing.T) {
	mem := fakeMem(8, 16)
	r := newDescRing(mem, fakeOff, 8)
	if r.NeedWakeup() {
		t.Fatal("need_wakeup without the flag")
	}
	*(*uint32)(unsafe.Pointer(&mem[fakeOff.Flags])) = ringNeedWakeup
	if !r.NeedWakeup() {
		t.Fatal("no need_wakeup with XDP_RING_NEED_WAKEUP set")
	}
}

// fakeSocket is a Socket over fake rings in u, slot by slot, with no file
// descriptor (a kick fails with EBADF).
func fakeSocket(t *testing.T, u *UMEM, size uint32) *Socket { return fakeSocketAt(t, u, size, 0) }

// fakeSocketAt is fakeSocket with every ring's indices starting at start
// (near 2^32 they wrap during the test).
func fakeSocketAt(t *testing.T, u *UMEM, size, start uint32) *Socket {
	t.Helper()
	s := &Socket{fd: -1, umem: u, TxBudget: txBudget, opts: Options{RingSize: int(size)}}
	if _, err := u.attach(s); err != nil {
		t.Fatal(err)
	}
	s.bound = true
	ring := func(entry uintptr) []byte {
		m := fakeMem(size, entry)
		setIndex(m, start, start)
		return m
	}
	s.fill = newAddrRing(ring(8), fakeOff, size)
	s.comp = newAddrRing(ring(8), fakeOff, size)
	s.rx = newDescRing(ring(16), fakeOff, size)
	s.tx = newDescRing(ring(16), fakeOff, size)
	return s
}

// fakeKernel moves n frames of s from its fill ring to its rx ring, as a
// copy-mode receive does.
func fakeReceive(s *Socket, n uint32, length uint32) uint32 {
	fi, got := kernelSide{&s.fill.ring}.consume(n)
	ri, room := kernelSide{&s.rx.ring}.produce(got)
	for i := range room {
		s.rx.descs[(ri+i)&s.rx.mask] = Desc{Addr: s.fill.addrs[(fi+i)&s.fill.mask] + 256, Len: length}
	}
	return room
}

// fakeComplete moves frames from s's tx ring to its completion ring, in
// the order given by perm (a permutation of the batch: drivers may
// complete out of order).
func fakeComplete(s *Socket, n uint32, perm func([]uint64)) uint32 {
	ti, got := kernelSide{&s.tx.ring}.consume(n)
	addrs := make([]uint64, got)
	for i := range got {
		addrs[i] = s.tx.descs[(ti+i)&s.tx.mask].Addr // as sent: base + offset
	}
	if perm != nil {
		perm(addrs)
	}
	ci, room := kernelSide{&s.comp.ring}.produce(got)
	for i := range room {
		s.comp.addrs[(ci+i)&s.comp.mask] = addrs[i]
	}
	return room
}

func TestUMEMForwardAccounting(t *testing.T) {
	for _, tc := range []struct {
		name string
		perm func([]uint64)
	}{
		{"in order", nil},
		{"reversed", slices.Reverse[[]uint64]},
		{"odd first", func(a []uint64) {
			slices.SortStableFunc(a, func(x, y uint64) int { return int((y>>11)&1) - int((x>>11)&1) })
		}},
	} {
		for _, start := range []uint32{0, 1<<32 - 50} {
			t.Run(fmt.Sprintf("%s/start %#x", tc.name, start), func(t *testing.T) {
				forwardAccounting(t, start, tc.perm)
			})
		}
	}
}

// forwardAccounting forwards 40 rounds between two fake sockets whose
// rings start at start, completing in perm's order, and checks that every
// frame is accounted for at every step and back at the end.
func forwardAccounting(t *testing.T, start uint32, perm func([]uint64)) {
	{
		{
			const frames, size = 64, 16
			u := newUMEM(make([]byte, frames*2048), 2048)
			in, out := fakeSocketAt(t, u, size, start), fakeSocketAt(t, u, size, start)
			descs := make([]Desc, 32)
			forwarded := 0
			for round := range 40 {
				in.TopUp(0)
				fakeReceive(in, 7, 60)
				n := in.Receive(descs)
				// Drop one frame in three, forward the rest to out.
				fwd := descs[:0]
				for i, d := range descs[:n] {
					if b := u.Bytes(d); len(b) != 60 {
						t.Fatalf("round %d: frame of %d bytes, want 60", round, len(b))
					}
					if i%3 == 2 {
						u.Drop(d.Addr)
						continue
					}
					fwd = append(fwd, d)
				}
				sent, kicks, err := out.Send(fwd)
				if err != nil || sent != len(fwd) || kicks != 0 {
					t.Fatalf("round %d: send %d of %d, %d kicks, %v (no need_wakeup: no kick)", round, sent, len(fwd), kicks, err)
				}
				forwarded += sent
				fakeComplete(out, 5, perm)
				out.Reap()
				if a := u.Account(); a.Free+a.Worker+a.Kernel[int(in.slot)]+a.Kernel[int(out.slot)] != frames {
					t.Fatalf("round %d: %+v does not add up to %d frames", round, a, frames)
				}
			}
			for out.TxInFlight() > 0 {
				fakeComplete(out, size, perm)
				out.Reap()
			}
			if forwarded < 100 {
				t.Fatalf("forwarded %d frames in 40 rounds", forwarded)
			}
			if err := u.Check(); err != nil {
				t.Fatal(err)
			}
			a := u.Account()
			if a.Kernel[int(out.slot)] != 0 || a.Kernel[int(in.slot)] != in.Rings().Fill+in.Rings().Rx {
				t.Errorf("at rest: %+v; in's rings %+v", a, in.Rings())
			}
			// Closing in: its fill ring's frames come back.
			if n := u.Reclaim(in); n != in.Rings().Fill+in.Rings().Rx {
				t.Errorf("reclaimed %d, in held %+v", n, in.Rings())
			}
			u.Reclaim(out)
			if err := u.Check(); err != nil {
				t.Fatal(err)
			}
			if u.Free() != frames {
				t.Errorf("free %d after closing every socket, want %d", u.Free(), frames)
			}
		}
	}
}

func TestUMEMFaults(t *testing.T) {
	u := newUMEM(make([]byte, 16*2048), 2048)
	a, b := fakeSocket(t, u, 8), fakeSocket(t, u, 8)
	a.TopUp(4)
	fakeReceive(a, 4, 60)
	descs := make([]Desc, 8)
	n := a.Receive(descs)
	if n != 4 {
		t.Fatalf("received %d, want 4", n)
	}
	// Sending the same frame twice: the second is refused and counted.
	sent, _, _ := b.Send([]Desc{descs[0], descs[0]})
	if sent != 1 || u.Faults() != 1 || b.TxPending() != 1 || b.tx.descs[0] != descs[0] {
		t.Errorf("sent %d (want 1), faults %d (want 1), %d on the tx ring (want 1: %+v, got %+v) for a frame sent twice",
			sent, u.Faults(), b.TxPending(), descs[0], b.tx.descs[0])
	}
	// Dropping a frame the worker no longer holds.
	u.Drop(descs[0].Addr)
	if u.Faults() != 2 {
		t.Errorf("faults %d after dropping a frame on a tx ring, want 2", u.Faults())
	}
	// The kernel hands b a frame b never had: left out.
	ri, _ := kernelSide{&b.rx.ring}.produce(1)
	b.rx.descs[ri&b.rx.mask] = descs[1]
	if got := b.Receive(make([]Desc, 4)); got != 0 || u.Faults() != 3 {
		t.Errorf("received %d foreign frames (want 0), faults %d (want 3)", got, u.Faults())
	}
	for _, d := range descs[1:n] {
		u.Drop(d.Addr)
	}
	if err := u.Check(); !errors.Is(err, ErrAccount) {
		t.Errorf("Check after faults: %v, want ErrAccount", err)
	}
}

func TestSendNeedWakeup(t *testing.T) {
	u := newUMEM(make([]byte, 16*2048), 2048)
	s := fakeSocket(t, u, 8)
	s.TopUp(2)
	fakeReceive(s, 2, 60)
	descs := make([]Desc, 2)
	s.Receive(descs)
	// The kernel asks for a wakeup: Send kicks (here sendto on no socket
	// fails, which Send reports).
	*s.tx.flags = ringNeedWakeup
	sent, kicks, err := s.Send(descs[:1])
	if sent != 1 || kicks != 1 || !errors.Is(err, ErrKick) {
		t.Errorf("with need_wakeup: sent %d, kicks %d, err %v; want 1, 1, ErrKick", sent, kicks, err)
	}
	*s.tx.flags = 0
	sent, kicks, err = s.Send(descs[1:])
	if sent != 1 || kicks != 0 || err != nil {
		t.Errorf("without need_wakeup: sent %d, kicks %d, err %v; want 1, 0, nil", sent, kicks, err)
	}
}

func TestBytesBounds(t *testing.T) {
	u := newUMEM(make([]byte, 4*2048), 2048)
	for _, tc := range []struct {
		d    Desc
		want int
	}{
		{Desc{Addr: 256, Len: 60}, 60},
		{Desc{Addr: 2048*3 + 2000, Len: 48}, 48},
		{Desc{Addr: 2048*3 + 2000, Len: 49}, 0}, // past the frame's end
		{Desc{Addr: 2000, Len: 100}, 0},         // across two frames
		{Desc{Addr: 4 * 2048, Len: 1}, 0},       // past the UMEM
		{Desc{Addr: 1<<64 - 8, Len: 60}, 0},     // wraps
		{Desc{Addr: 1<<64 - 100, Len: 100}, 0},  // ends exactly at 2^64
		{Desc{Addr: 0, Len: 0}, 0},
	} {
		if got := len(u.Bytes(tc.d)); got != tc.want {
			t.Errorf("Bytes(%+v) is %d bytes, want %d", tc.d, got, tc.want)
		}
	}
}

func TestTopUpLimits(t *testing.T) {
	u := newUMEM(make([]byte, 16*2048), 2048)
	s := fakeSocket(t, u, 8)
	if n := s.TopUp(3); n != 3 {
		t.Fatalf("TopUp(3) = %d", n)
	}
	if n := s.TopUp(0); n != 5 {
		t.Fatalf("TopUp(0) = %d, want the 5 free slots", n)
	}
	if u.Free() != 8 || s.Rings().Fill != 8 {
		t.Fatalf("free %d fill %d, want 8 and 8", u.Free(), s.Rings().Fill)
	}
	seen := map[uint64]bool{}
	for _, a := range s.fill.addrs {
		if seen[a] || a%2048 != 0 {
			t.Fatalf("fill ring holds %#x twice or unaligned: %v", a, s.fill.addrs)
		}
		seen[a] = true
	}
}

func TestSendMoreThanFits(t *testing.T) {
	u := newUMEM(make([]byte, 32*2048), 2048)
	in, out := fakeSocket(t, u, 16), fakeSocket(t, u, 4)
	in.TopUp(6)
	fakeReceive(in, 6, 60)
	descs := make([]Desc, 6)
	if n := in.Receive(descs); n != 6 {
		t.Fatalf("received %d, want 6", n)
	}
	// A tx ring of 4: two frames do not fit and go back to the free list.
	sent, _, err := out.Send(descs)
	if sent != 4 || err != nil || out.TxPending() != 4 {
		t.Fatalf("sent %d (%v), %d on the ring; want 4, nil, 4", sent, err, out.TxPending())
	}
	if a := u.Account(); a.Worker != 0 || a.Free != 32-6+2 || a.Kernel[out.Slot()] != 4 {
		t.Errorf("after an overfull send: %+v", a)
	}
}

func TestTopUpShortFreeList(t *testing.T) {
	u := newUMEM(make([]byte, 4*2048), 2048)
	s := fakeSocket(t, u, 8)
	if n := s.TopUp(0); n != 4 || u.Free() != 0 || s.Rings().Fill != 4 {
		t.Fatalf("TopUp with 4 free frames and 8 slots: %d, free %d, fill %d", n, u.Free(), s.Rings().Fill)
	}
	if n := s.TopUp(0); n != 0 {
		t.Fatalf("TopUp with an empty free list: %d", n)
	}
}

func TestReclaim(t *testing.T) {
	u := newUMEM(make([]byte, 16*2048), 2048)
	a := fakeSocket(t, u, 8)
	a.TopUp(6)
	fakeReceive(a, 2, 60)
	descs := make([]Desc, 2)
	a.Receive(descs) // the worker holds 2, the kernel 4 (fill ring)
	// A frame the kernel filled and never handed over leaves metadata in
	// its headroom: Reclaim must not pass it on to a later frame.
	stale := a.fill.addrs[(a.fill.cachedProd-1)&a.fill.mask]
	copy(u.mem[stale+244:stale+256], []byte{1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12})
	a.bound = false // closed
	if n := u.Reclaim(a); n != 4 {
		t.Errorf("reclaimed %d, want the 4 on the fill ring", n)
	}
	if acc := u.Account(); acc.Worker != 2 || acc.Free != 14 {
		t.Errorf("after Reclaim: %+v, want the worker's 2 untouched", acc)
	}
	if m := u.Meta(Desc{Addr: stale + 256}, 12); !slices.Equal(m, make([]byte, 12)) {
		t.Errorf("reclaimed frame's headroom %v, want cleared", m)
	}
	u.Drop(descs[0].Addr)
	u.Drop(descs[1].Addr)

	// Zero-copy: the driver may still write into the frames until a new
	// socket binds the queue, so they wait.
	z := fakeSocket(t, u, 8)
	z.Ifindex, z.Queue, z.ZeroCopy = 7, 1, true
	z.TopUp(5)
	z.bound = false
	if n := u.Reclaim(z); n != 0 {
		t.Errorf("zero-copy Reclaim gave back %d at once, want 0", n)
	}
	if err := u.Check(); err != nil {
		t.Errorf("retired frames are accounted: %v", err)
	}
	if n := u.ReclaimQueue(7, 0); n != 0 {
		t.Errorf("ReclaimQueue of another queue gave back %d", n)
	}
	if n := u.ReclaimQueue(7, 1); n != 5 || u.Free() != 16 {
		t.Errorf("ReclaimQueue gave back %d (want 5), free %d (want 16)", n, u.Free())
	}
	if err := u.Check(); err != nil {
		t.Error(err)
	}
}

func TestFlushAndWakeup(t *testing.T) {
	u := newUMEM(make([]byte, 16*2048), 2048)
	s := fakeSocket(t, u, 8)
	if s.Wakeup() {
		t.Error("Wakeup without the fill ring's flag")
	}
	*s.fill.flags = ringNeedWakeup
	if !s.Wakeup() {
		t.Error("no Wakeup with the fill ring's flag")
	}
	if k, err := s.Flush(); k != 0 || err != nil {
		t.Errorf("Flush of an empty tx ring: %d kicks, %v", k, err)
	}
	s.TopUp(2)
	fakeReceive(s, 2, 60)
	descs := make([]Desc, 2)
	s.Receive(descs)
	s.Send(descs) // no need_wakeup: stays on the ring, no kick
	if s.TxPending() != 2 {
		t.Fatalf("%d on the tx ring, want 2", s.TxPending())
	}
	*s.tx.flags = ringNeedWakeup
	if k, err := s.Flush(); k != 1 || !errors.Is(err, ErrKick) {
		t.Errorf("Flush with need_wakeup on no socket: %d kicks, %v; want 1, ErrKick", k, err)
	}
}
