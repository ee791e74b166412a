// Package xsk is xdprouter's AF_XDP socket layer: one socket per
// (interface, queue) over github.com/asavie/xdp (sockets, UMEM and rings
// only; never its Program or Attach), registered in the router program's
// XSKMAP. Copy mode is what veth offers; zero-copy where a driver has it.
//
// Known weaknesses of the library (read in its source, at the version in
// go.mod) that this layer guards: GetDescs
// scans every frame (never called here: the socket keeps its own frame
// accounting), Transmit calls sendto every time and panics on an
// unexpected errno (Send recovers and returns an error), Complete does not
// return the completed addresses (TX frames are handed out in FIFO order,
// which is the order the kernel completes them in), ring indices are
// plain loads and stores (each ring has exactly one user goroutine), no
// need_wakeup and no shared UMEM.
package xsk

import (
	"errors"
	"fmt"
	"reflect"
	"strings"
	"sync"
	"syscall"
	"time"
	"unsafe"

	"github.com/asavie/xdp"
	"github.com/cilium/ebpf"
	"github.com/xdprouter/xdprouter/internal/netnsrun"
	"golang.org/x/sys/unix"
)

// Desc is an RX or TX descriptor: a frame's address in the UMEM and its
// length.
type Desc = xdp.Desc

// Options size a socket; zero fields take defaults that do not starve on
// veth (lab facts: rings of 2048+ and a few thousand frames). The rx ring
// is the only buffer between the kernel and a worker: 4096 slots hold
// 82 ms of a 50 kpps queue, enough for a worker that lost its CPU for a
// few scheduler slices or a sender that bursts after a stall (2048 were
// not: XDP_STATISTICS rx_ring_full counted every lost frame).
type Options struct {
	Frames    int  // UMEM frames, half for receiving and half for sending (default 8192)
	FrameSize int  // bytes, a power of two (default 2048)
	RingSize  int  // fill, completion, rx and tx rings (default 4096)
	Copy      bool // force copy mode; otherwise zero-copy where the driver has it
}

func (o Options) withDefaults() Options {
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
	o = o.withDefaults()
	var errs []error
	if o.RingSize <= 0 || o.RingSize&(o.RingSize-1) != 0 {
		errs = append(errs, fmt.Errorf("ring size %d: must be a power of two", o.RingSize))
	}
	if o.FrameSize < 2048 || o.FrameSize > 4096 || o.FrameSize&(o.FrameSize-1) != 0 {
		errs = append(errs, fmt.Errorf("frame size %d: must be 2048 or 4096", o.FrameSize))
	}
	if o.Frames < 2*o.RingSize {
		errs = append(errs, fmt.Errorf("frames %d: at least twice the ring size (%d), half of them receive and half send", o.Frames, 2*o.RingSize))
	}
	return errors.Join(errs...)
}

// Socket is one AF_XDP socket of an (interface, queue) and its UMEM: the
// first half of the frames receive (fill and rx rings), the second half
// send (tx and completion rings). A Socket is used by one goroutine.
type Socket struct {
	*xdp.Socket
	Ifindex, Queue int
	// ZeroCopy tells whether the kernel bound the socket in zero-copy mode
	// (else copy mode).
	ZeroCopy bool

	opts      Options
	rxFrames  int    // frames [0, rxFrames) receive
	spare     []Desc // receive frames in no ring
	txFrames  int    // frames [rxFrames, rxFrames+txFrames) send
	txHead    uint64 // send frames handed out
	txTail    uint64 // send frames completed
	frameMask uint64
}

// bindMu serialises xdp.DefaultSocketFlags, the library's global bind
// flags.
var bindMu sync.Mutex

// Open creates a socket bound to queue q of ifindex inside the named
// network namespace ("" = the caller's), and fills its fill ring.
func Open(namespace string, ifindex, q int, o Options) (*Socket, error) {
	if err := o.Validate(); err != nil {
		return nil, fmt.Errorf("AF_XDP socket options: %w", err)
	}
	o = o.withDefaults()
	opts := &xdp.SocketOptions{NumFrames: o.Frames, FrameSize: o.FrameSize,
		FillRingNumDescs: o.RingSize, CompletionRingNumDescs: o.RingSize, RxRingNumDescs: o.RingSize, TxRingNumDescs: o.RingSize}
	var xs *xdp.Socket
	err := netnsrun.Do(namespace, func() error {
		bindMu.Lock()
		defer bindMu.Unlock()
		// 0 lets the kernel try zero-copy and fall back to copy mode.
		xdp.DefaultSocketFlags = 0
		if o.Copy {
			xdp.DefaultSocketFlags = unix.XDP_COPY
		}
		// The kernel frees a closed socket's hold on its queue in a
		// workqueue, so binding right after closing the previous socket of
		// the queue can fail with EBUSY for a moment: retry briefly. (The
		// library formats the errno with %v, so only its text is left.)
		deadline := time.Now().Add(2 * time.Second)
		for {
			var err error
			xs, err = xdp.NewSocket(ifindex, q, opts)
			if err == nil || !strings.Contains(err.Error(), unix.EBUSY.Error()) || time.Now().After(deadline) {
				return err
			}
			time.Sleep(10 * time.Millisecond)
		}
	})
	if err != nil {
		return nil, fmt.Errorf("AF_XDP socket on ifindex %d queue %d: %w", ifindex, q, err)
	}
	s := &Socket{Socket: xs, Ifindex: ifindex, Queue: q, opts: o,
		rxFrames: o.Frames / 2, txFrames: o.Frames - o.Frames/2, frameMask: ^uint64(o.FrameSize - 1)}
	var xo struct{ Flags uint32 }
	l := uint32(unsafe.Sizeof(xo))
	if _, _, e := unix.Syscall6(unix.SYS_GETSOCKOPT, uintptr(s.FD()), unix.SOL_XDP, unix.XDP_OPTIONS,
		uintptr(unsafe.Pointer(&xo)), uintptr(unsafe.Pointer(&l)), 0); e == 0 {
		s.ZeroCopy = xo.Flags&unix.XDP_OPTIONS_ZEROCOPY != 0
	}
	s.spare = make([]Desc, 0, s.rxFrames)
	for i := s.rxFrames - 1; i >= 0; i-- {
		s.spare = append(s.spare, Desc{Addr: uint64(i) * uint64(o.FrameSize)})
	}
	s.TopUp()
	return s, nil
}

// Options returns the socket's options with defaults applied.
func (s *Socket) Options() Options { return s.opts }

// TopUp moves spare receive frames to the fill ring, as many as fit.
func (s *Socket) TopUp() {
	m := min(len(s.spare), s.NumFreeFillSlots())
	if m == 0 {
		return
	}
	s.Fill(s.spare[len(s.spare)-m:])
	s.spare = s.spare[:len(s.spare)-m]
}

// Recycle gives received frames back (to the fill ring, or spare when it
// is full). Every descriptor Receive returned must be recycled once.
func (s *Socket) Recycle(descs []Desc) {
	for _, d := range descs {
		s.spare = append(s.spare, Desc{Addr: d.Addr & s.frameMask})
	}
	s.TopUp()
}

// TxFree is the number of send frames that can be handed out now: free
// frames, bounded by free tx ring slots.
func (s *Socket) TxFree() int {
	return min(s.txFrames-int(s.txHead-s.txTail), s.NumFreeTxSlots())
}

// TxFrame hands out the next send frame (full size); check TxFree first.
// Frames must be sent in the order they were handed out.
func (s *Socket) TxFrame() (addr uint64, buf []byte) {
	addr = uint64(s.rxFrames+int(s.txHead%uint64(s.txFrames))) * uint64(s.opts.FrameSize)
	s.txHead++
	return addr, s.GetFrame(Desc{Addr: addr, Len: uint32(s.opts.FrameSize)})
}

// ErrKick is wrapped by Send errors from the sendto that starts
// transmission.
var ErrKick = errors.New("AF_XDP tx kick")

// Send puts frames handed out by TxFrame on the tx ring and makes the
// kernel send them (in copy mode sendto sends at most 32 frames a call:
// Send calls it until the ring is drained, the kernel pushes back, or an
// error). It returns the number of sendto calls. A frame that did not fit
// the ring is given back (the caller checked TxFree, so only after an
// error). Send never panics.
func (s *Socket) Send(descs []Desc) (kicks int, err error) {
	put := min(len(descs), s.NumFreeTxSlots())
	if put < len(descs) {
		// Give back the frames that do not fit: the last ones handed out.
		s.txHead -= uint64(len(descs) - put)
		descs = descs[:put]
	}
	if put == 0 {
		return 0, nil
	}
	if err := s.transmit(descs); err != nil {
		return 1, err
	}
	kicks = 1
	for s.NumFreeTxSlots() < s.opts.RingSize && kicks < put/32+2 {
		kicks++
		switch e := s.kick(); e {
		case 0, unix.EAGAIN: // EAGAIN: the kernel's batch limit, more to send
		case unix.EBUSY, unix.ENOBUFS:
			return kicks, nil // the kernel pushes back: the next round sends them
		default:
			return kicks, fmt.Errorf("%w: ifindex %d queue %d: %w", ErrKick, s.Ifindex, s.Queue, e)
		}
	}
	return kicks, nil
}

// transmit is the library's Transmit (ring write and one sendto) with its
// panic turned into an error; the descriptors are on the ring either way.
func (s *Socket) transmit(descs []Desc) (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("%w: ifindex %d queue %d: %v", ErrKick, s.Ifindex, s.Queue, r)
		}
	}()
	s.Transmit(descs)
	return nil
}

// Kick calls sendto once so the kernel sends what is on the tx ring.
func (s *Socket) Kick() error {
	if e := s.kick(); e != 0 {
		return fmt.Errorf("%w: ifindex %d queue %d: %w", ErrKick, s.Ifindex, s.Queue, e)
	}
	return nil
}

// kick is Kick without allocating: the errno, 0 on success.
func (s *Socket) kick() unix.Errno {
	for {
		_, _, e := unix.Syscall6(unix.SYS_SENDTO, uintptr(s.FD()), 0, 0, unix.MSG_DONTWAIT, 0, 0)
		if e != unix.EINTR {
			return e
		}
	}
}

// Reap consumes the completion ring and frees those send frames; it
// returns how many completed.
func (s *Socket) Reap() int {
	n := s.NumCompleted()
	if n > 0 {
		s.Complete(n)
		s.txTail += uint64(n)
	}
	return n
}

// Frames is where a socket's UMEM frames are.
type Frames struct {
	Fill, RxRing, Spare int // receive frames in the fill ring, the rx ring, ours
	TxInFlight          int // send frames handed out and not completed
	RxTotal, TxTotal    int // receive and send frames in the UMEM
}

// Frames reports where the frames are. At rest (no traffic, every
// received frame recycled, completions reaped), Fill+RxRing+Spare ==
// RxTotal and TxInFlight == 0: anything else is a leak.
func (s *Socket) Frames() Frames {
	return Frames{Fill: s.opts.RingSize - s.NumFreeFillSlots(), RxRing: s.NumReceived(), Spare: len(s.spare),
		TxInFlight: int(s.txHead - s.txTail), RxTotal: s.rxFrames, TxTotal: s.txFrames}
}

// KernelStats reads the socket's XDP_STATISTICS: frames the kernel
// dropped and why. It is safe to call from any goroutine.
func (s *Socket) KernelStats() (unix.XDPStatistics, error) {
	var st unix.XDPStatistics
	l := uint32(unsafe.Sizeof(st))
	if _, _, e := unix.Syscall6(unix.SYS_GETSOCKOPT, uintptr(s.FD()), unix.SOL_XDP, unix.XDP_STATISTICS,
		uintptr(unsafe.Pointer(&st)), uintptr(unsafe.Pointer(&l)), 0); e != 0 {
		return st, fmt.Errorf("XDP_STATISTICS of ifindex %d queue %d: %w", s.Ifindex, s.Queue, syscall.Errno(e))
	}
	return st, nil
}

// Register puts the socket in an XSKMAP at key.
func (s *Socket) Register(m *ebpf.Map, key uint32) error {
	if err := m.Put(key, uint32(s.FD())); err != nil {
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

// Close unmaps the socket's four rings, then lets the library close the
// socket and unmap the UMEM. The library alone leaves the ring mappings
// in place (it only clears its slices): each mapping holds a reference to
// the socket, so the kernel never releases it and the queue stays bound
// (a new socket on it fails with EBUSY) for the life of the process.
func (s *Socket) Close() error {
	if s.Socket == nil || s.FD() < 0 {
		return nil
	}
	var off unix.XDPMmapOffsets
	l := uint32(unsafe.Sizeof(off))
	var errs []error
	if _, _, e := unix.Syscall6(unix.SYS_GETSOCKOPT, uintptr(s.FD()), unix.SOL_XDP, unix.XDP_MMAP_OFFSETS,
		uintptr(unsafe.Pointer(&off)), uintptr(unsafe.Pointer(&l)), 0); e != 0 {
		errs = append(errs, fmt.Errorf("XDP_MMAP_OFFSETS: %w", syscall.Errno(e)))
	} else {
		n := uint64(s.opts.RingSize)
		v := reflect.ValueOf(s.Socket).Elem()
		for _, r := range []struct {
			field      string
			prod, size uint64
		}{
			{"fillRing", off.Fr.Producer, off.Fr.Desc + n*8},
			{"completionRing", off.Cr.Producer, off.Cr.Desc + n*8},
			{"rxRing", off.Rx.Producer, off.Rx.Desc + n*uint64(unsafe.Sizeof(Desc{}))},
			{"txRing", off.Tx.Producer, off.Tx.Desc + n*uint64(unsafe.Sizeof(Desc{}))},
		} {
			p := v.FieldByName(r.field).FieldByName("Producer").Pointer()
			if p == 0 {
				continue
			}
			if _, _, e := unix.Syscall(unix.SYS_MUNMAP, p-uintptr(r.prod), uintptr(r.size), 0); e != 0 {
				errs = append(errs, fmt.Errorf("unmap %s: %w", r.field, syscall.Errno(e)))
			}
		}
	}
	if err := s.Socket.Close(); err != nil {
		errs = append(errs, err)
	}
	if len(errs) > 0 {
		return fmt.Errorf("close AF_XDP socket ifindex %d queue %d: %w", s.Ifindex, s.Queue, errors.Join(errs...))
	}
	return nil
}
