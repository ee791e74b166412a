// Package xsk is xdprouter's AF_XDP layer: sockets, their four rings and
// the packet memory (UMEM) a worker's sockets share, on raw system calls.
// One socket per (interface, queue), registered in the router program's
// XSKMAP; a worker's sockets share one UMEM (XDP_SHARED_UMEM, each with
// its own fill and completion rings), so forwarding moves a descriptor
// from one socket's rx ring to another's tx ring without copying the
// frame. Ring indices are shared with the kernel and read with acquire
// loads and published with release stores, as libxdp does; need_wakeup is
// honoured on the fill and tx rings. Copy mode is what veth offers;
// zero-copy is requested and used where a driver has it.
package xsk

import (
	"errors"
	"fmt"
	"time"
	"unsafe"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/xdprouter/xdprouter/internal/netnsrun"
)

// Options size a socket; zero fields take defaults that do not starve on
// veth (lab facts: rings of 2048+ and a few thousand frames). The rx ring
// is the only buffer between the kernel and a worker: 4096 slots hold
// 82 ms of a 50 kpps queue, enough for a worker that lost its CPU for a
// few scheduler slices or a sender that bursts after a stall (2048 were
// not: XDP_STATISTICS rx_ring_full counted every lost frame).
type Options struct {
	Frames    int  // UMEM frames per socket: a worker's UMEM holds this many for each of its sockets (default 8192)
	FrameSize int  // bytes, a power of two (default 2048)
	RingSize  int  // fill, completion, rx and tx rings (default 4096)
	Copy      bool // force copy mode; otherwise zero-copy where the driver has it
}

// WithDefaults returns the options with zero fields set to their
// defaults.
func (o Options) WithDefaults() Options {
	if o.Frames == 0 {
		o.Frames = 8192
	}
	if o.FrameSize == 0 {
		o.FrameSize = 2048
	}
	if o.RingSize == 0 {
		o.RingSize = 4096
	}
	return o
}

// Validate reports what is wrong with the options, nil if they are usable.
func (o Options) Validate() error {
	o = o.WithDefaults()
	var errs []error
	if o.RingSize <= 0 || o.RingSize&(o.RingSize-1) != 0 {
		errs = append(errs, fmt.Errorf("ring size %d: must be a power of two", o.RingSize))
	}
	if o.FrameSize < 2048 || o.FrameSize > 4096 || o.FrameSize&(o.FrameSize-1) != 0 {
		errs = append(errs, fmt.Errorf("frame size %d: must be 2048 or 4096", o.FrameSize))
	}
	if o.Frames < 2*o.RingSize {
		errs = append(errs, fmt.Errorf("frames %d: at least twice the ring size (%d), to fill the fill ring and the tx ring", o.Frames, 2*o.RingSize))
	}
	return errors.Join(errs...)
}

// txBudget is the most frames a copy-mode sendto sends without
// XDP_MAX_TX_SKB_BUDGET (the kernel's TX_BATCH_SIZE); txBudgetWant is
// what we ask for where the kernel lets us (Linux 6.17+).
const (
	txBudget     = 32
	txBudgetWant = 256
)

// Socket is one AF_XDP socket of an (interface, queue), bound over a
// worker's UMEM. A Socket is used by one goroutine, the UMEM's.
type Socket struct {
	Ifindex, Queue int
	// ZeroCopy tells whether the kernel bound the socket in zero-copy mode
	// (else copy mode).
	ZeroCopy bool
	// Shared tells whether the socket shares a UMEM another socket
	// registered (XDP_SHARED_UMEM), rather than registering it.
	Shared bool
	// TxBudget is the most frames one sendto sends in copy mode: 256 where
	// the kernel has XDP_MAX_TX_SKB_BUDGET, else 32.
	TxBudget int

	fd      int
	umem    *UMEM
	slot    uint8 // in the UMEM: its frames are owned by ownerSocket+slot
	bound   bool  // bound, so others can share the UMEM through it
	retired bool  // closed in zero-copy mode: frames wait for ReclaimQueue
	opts    Options
	fill    addrRing
	comp    addrRing
	rx      descRing
	tx      descRing
	maps    [4][]byte // rx, tx, fill, completion mappings
}

// Open creates a socket bound to queue q of ifindex inside the named
// network namespace ("" = the caller's) over u: the first socket of u
// registers it, later ones share it. Its fill ring starts empty: TopUp
// fills it from u's free list.
func Open(namespace string, ifindex, q int, u *UMEM, o Options) (*Socket, error) {
	if err := o.Validate(); err != nil {
		return nil, fmt.Errorf("AF_XDP socket options: %w", err)
	}
	o = o.WithDefaults()
	if u.FrameSize() != o.FrameSize {
		return nil, fmt.Errorf("AF_XDP socket on ifindex %d queue %d: UMEM frames of %d bytes, options say %d", ifindex, q, u.FrameSize(), o.FrameSize)
	}
	s := &Socket{Ifindex: ifindex, Queue: q, fd: -1, umem: u, opts: o, TxBudget: txBudget}
	if err := netnsrun.Do(namespace, s.open); err != nil {
		s.release()
		u.detach(s)
		return nil, fmt.Errorf("AF_XDP socket on ifindex %d queue %d: %w", ifindex, q, err)
	}
	return s, nil
}

// open does Open's system calls, in the interface's namespace.
func (s *Socket) open() error {
	fd, err := unix.Socket(unix.AF_XDP, unix.SOCK_RAW|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("socket: %w", err)
	}
	s.fd = fd
	shareFD, err := s.umem.attach(s)
	if err != nil {
		return err
	}
	if shareFD < 0 {
		u := s.umem
		reg := unix.XDPUmemReg{Addr: uint64(uintptr(unsafe.Pointer(unsafe.SliceData(u.mem)))), Len: uint64(len(u.mem)), Size: uint32(u.frameSize)}
		if err := setsockopt(fd, unix.XDP_UMEM_REG, unsafe.Pointer(&reg), unsafe.Sizeof(reg)); err != nil {
			if errors.Is(err, unix.ENOBUFS) {
				return fmt.Errorf("register UMEM of %d MiB (XDP_UMEM_REG): %w (locked memory beyond RLIMIT_MEMLOCK needs CAP_IPC_LOCK)", len(u.mem)>>20, err)
			}
			return fmt.Errorf("register UMEM of %d MiB (XDP_UMEM_REG): %w", len(u.mem)>>20, err)
		}
	}
	n := s.opts.RingSize
	for _, r := range []struct {
		opt  int
		name string
	}{{unix.XDP_UMEM_FILL_RING, "fill"}, {unix.XDP_UMEM_COMPLETION_RING, "completion"}, {unix.XDP_RX_RING, "rx"}, {unix.XDP_TX_RING, "tx"}} {
		if err := unix.SetsockoptInt(fd, unix.SOL_XDP, r.opt, n); err != nil {
			return fmt.Errorf("%s ring of %d: %w", r.name, n, err)
		}
	}
	var off unix.XDPMmapOffsets
	if err := getsockopt(fd, unix.XDP_MMAP_OFFSETS, unsafe.Pointer(&off), unsafe.Sizeof(off)); err != nil {
		return fmt.Errorf("XDP_MMAP_OFFSETS: %w", err)
	}
	ro := func(o unix.XDPRingOffset) ringOffsets {
		return ringOffsets{Producer: o.Producer, Consumer: o.Consumer, Desc: o.Desc, Flags: o.Flags}
	}
	size := uint32(n)
	for i, m := range []struct {
		pgoff int64
		off   ringOffsets
		entry uintptr
	}{
		{unix.XDP_PGOFF_RX_RING, ro(off.Rx), unsafe.Sizeof(Desc{})},
		{unix.XDP_PGOFF_TX_RING, ro(off.Tx), unsafe.Sizeof(Desc{})},
		{unix.XDP_UMEM_PGOFF_FILL_RING, ro(off.Fr), 8},
		{unix.XDP_UMEM_PGOFF_COMPLETION_RING, ro(off.Cr), 8},
	} {
		mem, err := unix.Mmap(fd, m.pgoff, ringBytes(m.off, size, m.entry), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED|unix.MAP_POPULATE)
		if err != nil {
			return fmt.Errorf("map ring %d: %w", i, err)
		}
		s.maps[i] = mem
	}
	s.rx = newDescRing(s.maps[0], ro(off.Rx), size)
	s.tx = newDescRing(s.maps[1], ro(off.Tx), size)
	s.fill = newAddrRing(s.maps[2], ro(off.Fr), size)
	s.comp = newAddrRing(s.maps[3], ro(off.Cr), size)
	// Linux 6.17+ lets one sendto send more than 32 frames in copy mode;
	// older kernels refuse the option: keep 32.
	if err := unix.SetsockoptInt(fd, unix.SOL_XDP, unix.XDP_MAX_TX_SKB_BUDGET, min(txBudgetWant, n)); err == nil {
		s.TxBudget = min(txBudgetWant, n)
	}
	sa := &unix.SockaddrXDP{Ifindex: uint32(s.Ifindex), QueueID: uint32(s.Queue)}
	if shareFD >= 0 {
		// The shared socket inherits copy or zero-copy and need_wakeup
		// from the socket that registered the UMEM.
		sa.Flags, sa.SharedUmemFD, s.Shared = unix.XDP_SHARED_UMEM, uint32(shareFD), true
	} else {
		// Without XDP_COPY the kernel tries zero-copy and falls back to
		// copy mode; ZeroCopy says which it chose.
		sa.Flags = unix.XDP_USE_NEED_WAKEUP
		if s.opts.Copy {
			sa.Flags |= unix.XDP_COPY
		}
	}
	// The kernel frees a closed socket's hold on its queue in a workqueue,
	// so binding right after closing the previous socket of the queue can
	// fail with EBUSY for a moment: retry briefly.
	deadline := time.Now().Add(2 * time.Second)
	for {
		err = unix.Bind(fd, sa)
		if !errors.Is(err, unix.EBUSY) || time.Now().After(deadline) {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	if err != nil {
		if shareFD >= 0 && (errors.Is(err, unix.EOPNOTSUPP) || errors.Is(err, unix.EINVAL)) {
			// A shared socket takes the mode of the one that registered
			// the UMEM: zero-copy there, a device without it here.
			return fmt.Errorf("bind sharing the worker's UMEM: %w (every interface of a worker shares one UMEM and its copy or zero-copy mode: with mixed hardware set socket copy)", err)
		}
		return fmt.Errorf("bind (flags %#x): %w", sa.Flags, err)
	}
	var xo struct{ Flags uint32 }
	if getsockopt(fd, unix.XDP_OPTIONS, unsafe.Pointer(&xo), unsafe.Sizeof(xo)) == nil {
		s.ZeroCopy = xo.Flags&unix.XDP_OPTIONS_ZEROCOPY != 0
	}
	s.umem.mu.Lock()
	s.bound = true
	s.umem.mu.Unlock()
	return nil
}

// getsockopt reads an SOL_XDP option of size bytes into p.
func getsockopt(fd, opt int, p unsafe.Pointer, size uintptr) error {
	l := uint32(size)
	if _, _, e := unix.Syscall6(unix.SYS_GETSOCKOPT, uintptr(fd), unix.SOL_XDP, uintptr(opt), uintptr(p), uintptr(unsafe.Pointer(&l)), 0); e != 0 {
		return e
	}
	return nil
}

// setsockopt sets an SOL_XDP option from size bytes at p.
func setsockopt(fd, opt int, p unsafe.Pointer, size uintptr) error {
	if _, _, e := unix.Syscall6(unix.SYS_SETSOCKOPT, uintptr(fd), unix.SOL_XDP, uintptr(opt), uintptr(p), size, 0); e != 0 {
		return e
	}
	return nil
}

// FD is the socket's file descriptor (for poll and the XSKMAP).
func (s *Socket) FD() int { return s.fd }

// Slot is the socket's slot in its UMEM (UMEM.Account's Kernel key).
func (s *Socket) Slot() int { return int(s.slot) }

// Options returns the socket's options with defaults applied.
func (s *Socket) Options() Options { return s.opts }

// TopUp moves frames from the UMEM's free list to the fill ring, as many
// as fit (at most max; 0: no limit); it returns how many.
func (s *Socket) TopUp(max int) int {
	u := s.umem
	want := uint32(len(u.free))
	if max > 0 {
		want = min(want, uint32(max))
	}
	idx, got := s.fill.reserve(want)
	if got == 0 {
		return 0
	}
	own := ownerSocket + s.slot
	for i := range got {
		addr := u.free[len(u.free)-1-int(i)]
		u.owner[addr>>u.shift] = own
		s.fill.addrs[(idx+i)&s.fill.mask] = addr
	}
	u.free = u.free[:len(u.free)-int(got)]
	s.fill.submit()
	return int(got)
}

// Receive takes up to len(out) received descriptors; the worker then
// holds their frames until it sends (Send) or drops (UMEM.Drop) each. A
// descriptor whose frame this socket did not have is counted as a UMEM
// fault and left out.
func (s *Socket) Receive(out []Desc) int {
	idx, got := s.rx.peek(uint32(len(out)))
	if got == 0 {
		return 0
	}
	u, own, n := s.umem, ownerSocket+s.slot, 0
	for i := range got {
		d := s.rx.descs[(idx+i)&s.rx.mask]
		if u.move(d.Addr&^uint64(u.frameSize-1), own, ownerWorker) {
			out[n] = d
			n++
		}
	}
	s.rx.release()
	return n
}

// TxFree is how many descriptors Send can put on the tx ring now.
func (s *Socket) TxFree() int { return int(s.tx.free(s.tx.size)) }

// ErrKick is returned by Send and Flush when the sendto that starts
// transmission fails with something else than back-pressure (no error is
// allocated on the hot path).
var ErrKick = errors.New("AF_XDP tx kick")

// Send puts descriptors of frames the worker holds on the tx ring and
// kicks transmission (Flush). Frames that do not fit the ring are dropped
// (the caller checked TxFree, so only after an error). It returns how
// many frames went on the ring and the number of sendto calls.
func (s *Socket) Send(descs []Desc) (sent, kicks int, err error) {
	u, own := s.umem, ownerSocket+s.slot
	idx, got := s.tx.reserve(uint32(len(descs)))
	k := uint32(0)
	for _, d := range descs[:got] {
		// A frame the worker does not hold is a fault (counted) and is
		// not sent.
		if u.move(d.Addr&^uint64(u.frameSize-1), ownerWorker, own) {
			s.tx.descs[(idx+k)&s.tx.mask] = d
			k++
		}
	}
	s.tx.cachedProd -= got - k // unpublished: give back the unused slots
	for _, d := range descs[got:] {
		u.Drop(d.Addr)
	}
	if k == 0 {
		return 0, 0, nil
	}
	s.tx.submit()
	kicks, err = s.Flush()
	return int(k), kicks, err
}

// Flush makes the kernel send what is on the tx ring, when it asks for it
// (need_wakeup; always in copy mode): each sendto sends at most TxBudget
// frames, so Flush calls it until the ring is drained, the kernel pushes
// back (EBUSY, ENOBUFS: a later Flush sends the rest), or an error
// (ErrKick). It returns the number of sendto calls.
func (s *Socket) Flush() (kicks int, err error) {
	pending := s.tx.pending()
	if pending == 0 || !s.tx.needWakeup() {
		return 0, nil
	}
	limit := int(pending)/s.TxBudget + 2
	for kicks < limit {
		kicks++
		switch e := s.kick(); e {
		case 0, unix.EAGAIN: // EAGAIN: the budget is used up, more to send
		case unix.EBUSY, unix.ENOBUFS:
			return kicks, nil
		default:
			return kicks, ErrKick
		}
		if s.tx.pending() == 0 {
			break
		}
	}
	return kicks, nil
}

// TxPending is how many frames are on the tx ring, not yet taken by the
// kernel.
func (s *Socket) TxPending() int { return int(s.tx.pending()) }

// kick calls sendto once so the kernel sends what is on the tx ring; it
// returns the errno, 0 on success. A non-blocking sendto does not sleep,
// so it is a raw system call: the Go scheduler does not hand the worker's
// P off around it.
func (s *Socket) kick() unix.Errno {
	for {
		_, _, e := unix.RawSyscall6(unix.SYS_SENDTO, uintptr(s.fd), 0, 0, unix.MSG_DONTWAIT, 0, 0)
		if e != unix.EINTR {
			return e
		}
	}
}

// Wakeup asks the driver to look at the fill ring again when the kernel
// said it needs that (need_wakeup, zero-copy drivers); it reports whether
// it made the call.
func (s *Socket) Wakeup() bool {
	if !s.fill.needWakeup() {
		return false
	}
	_, _, _ = unix.RawSyscall6(unix.SYS_RECVFROM, uintptr(s.fd), 0, 0, unix.MSG_DONTWAIT, 0, 0)
	return true
}

// SetBusyPoll makes the socket's syscalls poll the driver's NAPI
// themselves (SO_PREFER_BUSY_POLL, SO_BUSY_POLL for usecs, up to budget
// frames a poll): the worker, spinning on a CPU of its own, does the
// receive work instead of interrupts and softirq.
func (s *Socket) SetBusyPoll(usecs, budget int) error {
	for _, o := range []struct {
		opt  int
		v    int
		name string
	}{{unix.SO_PREFER_BUSY_POLL, 1, "SO_PREFER_BUSY_POLL"}, {unix.SO_BUSY_POLL, usecs, "SO_BUSY_POLL"},
		{unix.SO_BUSY_POLL_BUDGET, budget, "SO_BUSY_POLL_BUDGET"}} {
		if err := unix.SetsockoptInt(s.fd, unix.SOL_SOCKET, o.opt, o.v); err != nil {
			return fmt.Errorf("ifindex %d queue %d: %s %d: %w", s.Ifindex, s.Queue, o.name, o.v, err)
		}
	}
	return nil
}

// BusyPoll asks the kernel to poll the queue's NAPI now (a non-blocking
// recvfrom, raw: it does not sleep); with SetBusyPoll this is the
// receive path of a worker that never sleeps.
func (s *Socket) BusyPoll() {
	_, _, _ = unix.RawSyscall6(unix.SYS_RECVFROM, uintptr(s.fd), 0, 0, unix.MSG_DONTWAIT, 0, 0)
}

// Reap consumes the completion ring and puts those frames on the UMEM's
// free list; it returns how many completed.
func (s *Socket) Reap() int {
	u, own := s.umem, ownerSocket+s.slot
	total := 0
	for {
		idx, got := s.comp.peek(uint32(cap(u.scratch)))
		if got == 0 {
			return total
		}
		for i := range got {
			addr := s.comp.addrs[(idx+i)&s.comp.mask] &^ uint64(u.frameSize-1)
			if u.move(addr, own, ownerFree) {
				u.free = append(u.free, addr)
			}
		}
		s.comp.release()
		total += int(got)
	}
}

// TxInFlight is how many frames are on the tx ring or completed and not
// reaped.
func (s *Socket) TxInFlight() int { return s.tx.Pending() + s.comp.Pending() }

// Rings is how many entries are on each of the socket's rings.
type Rings struct {
	Fill, Rx, Tx, Completion int
}

// Rings reports the fill level of the four rings.
func (s *Socket) Rings() Rings {
	return Rings{Fill: s.fill.Pending(), Rx: s.rx.Pending(), Tx: s.tx.Pending(), Completion: s.comp.Pending()}
}

// KernelStats reads the socket's XDP_STATISTICS: frames the kernel
// dropped and why. It is safe to call from any goroutine.
func (s *Socket) KernelStats() (unix.XDPStatistics, error) {
	var st unix.XDPStatistics
	if err := getsockopt(s.fd, unix.XDP_STATISTICS, unsafe.Pointer(&st), unsafe.Sizeof(st)); err != nil {
		return st, fmt.Errorf("XDP_STATISTICS of ifindex %d queue %d: %w", s.Ifindex, s.Queue, err)
	}
	return st, nil
}

// Register puts the socket in an XSKMAP at key.
func (s *Socket) Register(m *ebpf.Map, key uint32) error {
	if err := m.Put(key, uint32(s.fd)); err != nil {
		return fmt.Errorf("register AF_XDP socket (ifindex %d queue %d) at XSKMAP %d: %w", s.Ifindex, s.Queue, key, err)
	}
	return nil
}

// Unregister removes the socket's key from an XSKMAP.
func Unregister(m *ebpf.Map, key uint32) error {
	if err := m.Delete(key); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return fmt.Errorf("unregister XSKMAP %d: %w", key, err)
	}
	return nil
}

// Close unmaps the socket's rings and closes it (each mapping holds a
// reference to the socket: unmapped, the kernel releases it and its
// queue). The frames the kernel held through it are still owned by the
// socket's slot: give them back with UMEM.Reclaim.
func (s *Socket) Close() error {
	if s.fd < 0 {
		return nil
	}
	s.umem.mu.Lock()
	s.bound = false
	s.umem.mu.Unlock()
	err := s.release()
	if err != nil {
		return fmt.Errorf("close AF_XDP socket ifindex %d queue %d: %w", s.Ifindex, s.Queue, err)
	}
	return nil
}

// release unmaps what is mapped and closes the fd.
func (s *Socket) release() error {
	var errs []error
	for i, m := range s.maps {
		if m != nil {
			if err := unix.Munmap(m); err != nil {
				errs = append(errs, fmt.Errorf("unmap ring %d: %w", i, err))
			}
			s.maps[i] = nil
		}
	}
	s.fill, s.comp, s.rx, s.tx = addrRing{}, addrRing{}, descRing{}, descRing{}
	if s.fd >= 0 {
		if err := unix.Close(s.fd); err != nil {
			errs = append(errs, err)
		}
		s.fd = -1
	}
	return errors.Join(errs...)
}
