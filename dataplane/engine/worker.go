package engine

import (
	"fmt"
	"runtime"
	"sync/atomic"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/xdprouter/xdprouter/dataplane/fib"
	"github.com/xdprouter/xdprouter/dataplane/packet"
	"github.com/xdprouter/xdprouter/dataplane/xdp"
	"github.com/xdprouter/xdprouter/dataplane/xsk"
)

// Reason is why a worker dropped a frame. The XDP program only steers
// forwardable frames to the workers, so drops are races (a route or
// neighbour changed between the program's lookup and the worker's) or
// back-pressure; a frame is never sent with a stale or wrong header.
type Reason int

// Drop reasons.
const (
	DropMalformed Reason = iota // fails the header checks
	DropTTL                     // TTL or hop limit <= 1
	DropNoRoute                 // no nexthop or ECMP route any more
	DropNeighbour               // nexthop missing or not resolved
	DropMTU                     // larger than the egress MTU
	DropNoEgress                // no socket of this worker on the egress interface
	DropTxFull                  // no free tx ring slot
	numReasons
)

// ReasonNames name the drop reasons for metrics and --json.
var ReasonNames = [numReasons]string{"malformed", "ttl", "no_route", "neighbour", "mtu", "no_egress", "tx_full"}

func (r Reason) String() string { return ReasonNames[r] }

// port is one socket a worker owns: queue q of one interface.
type port struct {
	s          *xsk.Socket
	ifindex    int
	queue      int
	recv       atomic.Bool   // registered in the XSKMAP: frames arrive here
	pending    []xsk.Desc    // frames to send this round
	kickFailed bool          // the last sendto failed hard: no idle retries
	free       int           // tx ring slots still available this round
	rx, tx     atomic.Uint64 // received; sent (completed)
	rxBytes    atomic.Uint64
}

// counters are a worker's running totals: written by the worker once per
// round, read by anyone.
type counters struct {
	rx, rxBytes, forwarded, forwardedBytes atomic.Uint64
	drops                                  [numReasons]atomic.Uint64
	kicks, kickErrors, sleeps, rounds      atomic.Uint64
	handoff                                atomic.Uint64
	workNs, kickNs                         atomic.Uint64
}

// worker serves queue q of every interface on one CPU.
type worker struct {
	e     *Engine
	q     int
	cpu   int
	tid   atomic.Int64
	ports []*port
	umem  *xsk.UMEM // packet memory shared by the worker's sockets
	cmd   chan func(*worker)
	stop  atomic.Bool
	done  chan struct{}
	r     *fib.Reader
	batch int
	spin  time.Duration
	tick  uint64 // rounds, for sampling
	c     counters

	// per-round scratch, reused: never allocated on the hot path
	descs []xsk.Desc
	a4    []uint32
	i4    []int32
	r4    []fib.Result
	a6    [][16]byte
	i6    []int32
	r6    []fib.Result
	res   []fib.Result
	ok    []bool
	fast  []bool // forwarded by the program's handoff (nh)
	nh    []fib.NexthopEntry
	drop  [numReasons]uint64
	pfds  []unix.PollFd
	prio  int // SCHED_FIFO priority; 0: normal scheduling
}

func newWorker(e *Engine, q, cpu int, u *xsk.UMEM) *worker {
	b := e.cfg.Batch
	return &worker{e: e, q: q, cpu: cpu, umem: u, cmd: make(chan func(*worker)), done: make(chan struct{}),
		r: e.cfg.Table.NewReader(), batch: b, spin: e.cfg.Spin, prio: e.cfg.Priority,
		descs: make([]xsk.Desc, b), a4: make([]uint32, b), i4: make([]int32, b), r4: make([]fib.Result, b),
		a6: make([][16]byte, b), i6: make([]int32, b), r6: make([]fib.Result, b),
		res: make([]fib.Result, b), ok: make([]bool, b), fast: make([]bool, b), nh: make([]fib.NexthopEntry, b)}
}

// run is the worker's goroutine: locked to its thread, the thread pinned
// to the worker's CPU. The thread is never unlocked: it exits with the
// goroutine, so no other goroutine inherits its one-CPU mask.
func (w *worker) run(started chan<- error) {
	runtime.LockOSThread()
	defer close(w.done)
	defer w.r.Close()
	w.tid.Store(int64(unix.Gettid()))
	if w.cpu >= 0 {
		var set unix.CPUSet
		set.Set(w.cpu)
		if err := unix.SchedSetaffinity(0, &set); err != nil {
			started <- err
			return
		}
	}
	if w.prio > 0 {
		// Real-time, as the softirq that fills the rings is: woken by
		// poll(2), the worker runs at once instead of waiting for a
		// busy task on its CPU (the generator, a build) to use up its
		// slice while the ring fills. It sleeps when idle, so it takes
		// only the CPU its traffic needs.
		attr := unix.SchedAttr{Size: unix.SizeofSchedAttr, Policy: unix.SCHED_FIFO, Priority: uint32(w.prio)}
		if err := unix.SchedSetAttr(0, &attr, 0); err != nil {
			started <- fmt.Errorf("SCHED_FIFO %d: %w (needs CAP_SYS_NICE; worker_priority -1 runs workers at normal priority)", w.prio, err)
			return
		}
	}
	started <- nil
	idleSince := time.Time{}
	empty := 0
	for !w.stop.Load() {
		select {
		case f := <-w.cmd:
			f(w)
			continue
		default:
		}
		if w.round() > 0 {
			empty = 0
			idleSince = time.Time{}
			continue
		}
		if w.e.cfg.BusyPoll {
			// The next round's frames come from the NAPI this polls.
			for _, p := range w.ports {
				if p.recv.Load() {
					p.s.BusyPoll()
				}
			}
			continue
		}
		if w.spin == 0 {
			w.sleep()
			continue
		}
		// Reading the clock costs more than an empty round here (kvm-clock):
		// look at it every 64 empty rounds only.
		if empty++; w.spin < 0 || empty%64 != 0 {
			continue
		}
		now := time.Now()
		if idleSince.IsZero() {
			idleSince = now
		} else if now.Sub(idleSince) >= w.spin {
			w.sleep()
		}
	}
	w.drain()
}

// round receives a batch from each socket and forwards it (descriptor
// moves within the worker's UMEM), sends, reaps completions and refills
// the fill rings; it returns the number of frames received.
func (w *worker) round() int {
	// Time one round in timeSample: the clock is not free (about 100 ns
	// under kvm-clock here), so the work and sendto times are sampled.
	w.tick++
	timed := w.tick%timeSample == 0
	var start time.Time
	if timed {
		start = time.Now()
	}
	got := 0
	for _, p := range w.ports {
		if p.recv.Load() {
			got += w.receive(p)
		}
	}
	if got == 0 {
		// Completions still come in after the last frame, and what the
		// kernel pushed back (EBUSY) is still on a tx ring.
		w.flush(false)
		w.reap()
		return 0
	}
	var kstart time.Time
	if timed {
		kstart = time.Now()
	}
	var kicks, kerr uint64
	for _, p := range w.ports {
		if len(p.pending) > 0 {
			_, k, err := p.s.Send(p.pending)
			kicks += uint64(k)
			p.kickFailed = err != nil
			if err != nil {
				kerr++
			}
			p.pending = p.pending[:0]
		}
	}
	w.reap()
	if timed {
		end := time.Now()
		w.c.workNs.Add(timeSample * uint64(kstart.Sub(start)))
		w.c.kickNs.Add(timeSample * uint64(end.Sub(kstart)))
	}
	w.c.kicks.Add(kicks)
	if kerr > 0 {
		w.c.kickErrors.Add(kerr)
	}
	w.c.rounds.Add(1)
	for i, n := range w.drop {
		if n > 0 {
			w.c.drops[i].Add(n)
			w.drop[i] = 0
		}
	}
	return got
}

// flush makes the kernel send what an idle worker still has on its tx
// rings: on the ports whose last sendto was pushed back (EBUSY, ENOBUFS),
// or, with failed, on those whose last sendto failed hard (a link down),
// which are retried only that slowly. A hard failure is counted once.
func (w *worker) flush(failed bool) {
	for _, p := range w.ports {
		if p.kickFailed != failed || p.s.TxPending() == 0 {
			continue
		}
		k, err := p.s.Flush()
		w.c.kicks.Add(uint64(k))
		if err != nil && !p.kickFailed {
			w.c.kickErrors.Add(1)
		}
		p.kickFailed = err != nil
	}
}

// reap frees completed sends and refills the receiving sockets' fill
// rings from the free list.
func (w *worker) reap() {
	for _, p := range w.ports {
		if n := p.s.Reap(); n > 0 {
			p.tx.Add(uint64(n))
		}
	}
	for _, p := range w.ports {
		if p.recv.Load() {
			p.s.TopUp(0)
			// A zero-copy driver that found the fill ring empty waits for
			// a wakeup (a flag load when it does not).
			p.s.Wakeup()
		}
	}
}

// timeSample is one in how many rounds is timed.
const timeSample = 16

// receive forwards one batch from p: each frame is rewritten in place
// and its descriptor queued on the egress socket's tx ring (same UMEM),
// or dropped back to the free list.
func (w *worker) receive(p *port) int {
	descs := w.descs[:p.s.Receive(w.descs)]
	n := len(descs)
	if n == 0 {
		return 0
	}
	u := w.umem
	if w.e.cfg.Discard {
		for i := range descs {
			u.Drop(descs[i].Addr) // nothing reads metadata in this mode
		}
		p.rx.Add(uint64(n))
		w.c.rx.Add(uint64(n))
		return n
	}
	var bytes uint64
	n4, n6 := 0, 0
	// Frames the program handed a nexthop with (unchanged since) skip
	// the parse and the second lookup.
	w.r.Begin()
	for i := range descs {
		f := u.Bytes(descs[i])
		bytes += uint64(len(f))
		w.fast[i] = false
		if f != nil && w.handoff(descs[i], &w.nh[i]) {
			w.fast[i], w.ok[i] = true, true
			continue
		}
		fam, a4, err := packet.Dst(f, &w.a6[n6])
		w.ok[i] = err == nil
		switch {
		case err != nil:
			w.drop[DropMalformed]++
			u.Drop(descs[i].Addr)
		case fam == 4:
			w.a4[n4], w.i4[n4] = a4, int32(i)
			n4++
		default:
			w.i6[n6] = int32(i)
			n6++
		}
	}
	w.r.End()
	p.rx.Add(uint64(n))
	p.rxBytes.Add(bytes)
	w.c.rx.Add(uint64(n))
	w.c.rxBytes.Add(bytes)
	if n4 > 0 {
		w.r.LookupBatch4(w.a4[:n4], w.r4[:n4])
		for j := range n4 {
			w.res[w.i4[j]] = w.r4[j]
		}
	}
	if n6 > 0 {
		w.r.LookupBatch6(w.a6[:n6], w.r6[:n6])
		for j := range n6 {
			w.res[w.i6[j]] = w.r6[j]
		}
	}
	for _, eg := range w.ports {
		eg.free = eg.s.TxFree() - len(eg.pending)
	}
	var fwd, fwdBytes, fast uint64
	// A second read section: the results name nexthops by ID, and an ID
	// removed in between reads as missing (dropped, never misrouted).
	w.r.Begin()
	for i := range descs {
		if !w.ok[i] {
			continue
		}
		f := u.Bytes(descs[i])
		var r Reason
		if w.fast[i] {
			r = w.send(f, descs[i], &w.nh[i])
		} else {
			r = w.forward(f, descs[i], w.res[i])
		}
		if r >= 0 {
			w.drop[r]++
			u.Drop(descs[i].Addr)
			continue
		}
		if w.fast[i] {
			fast++
		}
		fwd++
		fwdBytes += uint64(len(f))
	}
	w.r.End()
	w.c.forwarded.Add(fwd)
	w.c.forwardedBytes.Add(fwdBytes)
	w.c.handoff.Add(fast)
	return n
}

// handoff reads the nexthop the program handed over in front of frame d
// (xdp.XSKMeta) into nh, and reports whether it is still the entry the
// program saw (same generation, resolved). It clears the mark, so a later
// frame in this chunk that came without metadata never reads it. Call it
// between Begin and End.
func (w *worker) handoff(d xsk.Desc, nh *fib.NexthopEntry) bool {
	b := w.umem.Meta(d, xdp.XSKMetaSize)
	if b == nil {
		return false
	}
	m := (*xdp.XSKMeta)(unsafe.Pointer(unsafe.SliceData(b)))
	if m.Magic != xdp.XSKMetaMagic {
		return false
	}
	m.Magic = 0
	e, ok := w.r.Nexthop(m.Id)
	if !ok || e.Gen != m.Gen || e.State != fib.Resolved {
		return false
	}
	*nh = e
	return true
}

// forward rewrites frame f (descriptor d) for its route and queues d on
// the egress socket; it returns the drop reason, or -1 when the frame was
// queued.
func (w *worker) forward(f []byte, d xsk.Desc, res fib.Result) Reason {
	id := res.Index()
	switch res.Type() {
	case fib.RouteNexthop:
	case fib.RouteECMP:
		m, ok := w.r.ECMPMember(id, packet.FlowHash(f))
		if !ok {
			return DropNeighbour
		}
		id = m
	default:
		return DropNoRoute
	}
	nh, ok := w.r.Nexthop(id)
	if !ok || nh.State != fib.Resolved {
		return DropNeighbour
	}
	return w.send(f, d, &nh)
}

// send rewrites f (descriptor d) for a resolved nexthop and queues d on
// the egress socket; it returns the drop reason, or -1 when queued.
func (w *worker) send(f []byte, d xsk.Desc, nh *fib.NexthopEntry) Reason {
	if len(f) < 14+20 { // a handed-over frame skipped Dst's checks
		return DropMalformed
	}
	if nh.MTU != 0 && packet.L3Len(f) > int(nh.MTU) {
		return DropMTU
	}
	var eg *port
	for _, p := range w.ports {
		if p.ifindex == int(nh.Ifindex) {
			eg = p
			break
		}
	}
	if eg == nil {
		return DropNoEgress
	}
	if eg.free <= 0 {
		return DropTxFull
	}
	if err := packet.Forward(f, &nh.DstMAC, &nh.SrcMAC); err != nil {
		if err == packet.ErrTTL {
			return DropTTL
		}
		return DropMalformed
	}
	eg.pending = append(eg.pending, d)
	eg.free--
	return -1
}

// sleep waits in poll(2) for frames on any socket (bounded, so commands
// and stop are seen).
func (w *worker) sleep() {
	w.pfds = w.pfds[:0]
	for _, p := range w.ports {
		if !p.recv.Load() {
			continue
		}
		w.pfds = append(w.pfds, unix.PollFd{Fd: int32(p.s.FD()), Events: unix.POLLIN})
	}
	w.c.sleeps.Add(1)
	// Ports whose last sendto failed hard are retried once a sleep (at
	// most every pollTimeout), not every idle round.
	w.flush(true)
	timeout := pollTimeout
	for _, p := range w.ports {
		if !p.kickFailed && p.s.TxPending() > 0 {
			timeout = time.Millisecond // the kernel pushed back: retry soon
			break
		}
	}
	if len(w.pfds) == 0 {
		time.Sleep(timeout)
		return
	}
	_, _ = unix.Poll(w.pfds, int(timeout/time.Millisecond))
}

// pollTimeout bounds a sleeping worker's wait, so it sees commands and
// stop within it.
const pollTimeout = 20 * time.Millisecond

// drain forwards what is left on the rx rings and waits for the sends
// to complete (bounded).
func (w *worker) drain() {
	deadline := time.Now().Add(time.Second)
	for time.Now().Before(deadline) {
		got := w.round()
		inflight := 0
		for _, p := range w.ports {
			inflight += p.s.TxInFlight()
			if p.s.TxPending() > 0 {
				_, _ = p.s.Flush()
			}
		}
		if got == 0 && inflight == 0 {
			return
		}
		if got == 0 {
			time.Sleep(time.Millisecond)
		}
	}
}
