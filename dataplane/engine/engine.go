// Package engine is the AF_XDP forwarding engine: worker q is a goroutine
// locked to an OS thread pinned to CPU plan[q], and it alone owns queue q
// of every interface (one AF_XDP socket each, all over one UMEM of the
// worker's), so no ring has two users and nothing is locked on the hot
// path. A worker receives a batch from each of its sockets, takes each
// frame's nexthop from the program's handoff in front of it (while that
// entry is unchanged) or looks the frame up in the FIB, rewrites it in
// place (MACs, TTL or hop limit, checksum), moves its descriptor to the
// tx ring of the egress interface's socket for the same queue (no copy),
// kicks transmission, reaps completions and refills the fill rings.
package engine

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"runtime"
	"slices"
	"sync"
	"time"

	"github.com/safchain/ethtool"
	vnl "github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/xdprouter/xdprouter/dataplane/fib"
	"github.com/xdprouter/xdprouter/dataplane/xdp"
	"github.com/xdprouter/xdprouter/dataplane/xsk"
	"github.com/xdprouter/xdprouter/internal/netnsrun"
)

// Config is what an engine serves and how.
type Config struct {
	// Namespace is the network namespace of the interfaces ("" = ours).
	Namespace string
	// Program is the loaded router program: its XSKMAP steers frames of
	// interfaces attached with engine afxdp to the workers.
	Program *xdp.Program
	// Table is the FIB the workers look up (the program's).
	Table *fib.Table
	// Interfaces are the ifindexes the workers receive on (attached with
	// engine afxdp) and send on: each gets a socket per queue (up to
	// Queues), registered in the program's XSKMAP.
	Interfaces []int
	// Egress are interfaces the workers only send on (other engines).
	Egress []int
	// Queues is the number of workers, serving queues 0..Queues-1
	// (default: the fewest queues of the interfaces).
	Queues int
	// CPUs[q] is worker q's CPU (default q mod the number of CPUs; -1
	// leaves a worker unpinned).
	CPUs []int
	// Socket sizes every socket.
	Socket xsk.Options
	// Batch is the most frames a worker takes from one socket a round
	// (default 256).
	Batch int
	// Spin is how long an idle worker busy-polls before sleeping in
	// poll(2). The default, 0, sleeps as soon as every rx ring is empty:
	// a worker that spins on a CPU it shares (with the softirq that fills
	// its rings, or any other task) uses up its fair share and then waits
	// a whole scheduler slice when frames arrive, while its ring fills.
	// Negative: never sleep (100 % of its CPU; only on a CPU of its own).
	Spin time.Duration
	// Priority is the workers' SCHED_FIFO priority (default 1, the
	// lowest real-time one; negative: normal scheduling). Like the
	// softirq that fills its rings, a woken worker then runs at once
	// instead of waiting for a busy task on its CPU to use up its slice
	// while the ring fills (TestRouteChange lost frames so, 1 run in 3
	// on this VM). It sleeps when idle, so it takes only the CPU its
	// traffic needs; with a negative Spin it takes the whole CPU (less
	// the kernel's real-time throttling, 5 %), so with a negative Spin
	// the default is normal priority. Without CAP_SYS_NICE the engine
	// does not start (say -1 to run without). Each running worker adds a P to
	// GOMAXPROCS, so Go never makes a woken worker wait for one.
	Priority int
	// BusyPoll is for workers on CPUs of their own (isolated): each
	// socket polls its queue's NAPI from the worker's syscalls
	// (SO_PREFER_BUSY_POLL, SO_BUSY_POLL for BusyPollTime, up to Batch
	// frames), and the worker never sleeps, so receive work runs in the
	// worker instead of interrupts and softirq. On a shared CPU it would
	// starve whatever shares it: the default sleeps in poll(2) (Spin).
	// With BusyPoll the default priority is normal.
	BusyPoll bool
	// BusyPollTime is SO_BUSY_POLL (default 20 µs).
	BusyPollTime time.Duration
	// Logger gets the engine's events (default: discarded).
	Logger *slog.Logger
	// Discard makes the workers receive and free every frame, forwarding
	// nothing: the RX-only benchmark of the socket layer (xdpbench
	// scenario afxdp-rx), never a router.
	Discard bool
}

// Engine is a running set of workers.
type Engine struct {
	cfg     Config
	log     *slog.Logger
	mu      sync.Mutex
	workers []*worker
	ports   map[int][]*port // by ifindex, by queue (nil where none)
	stopped bool
	procs   int // Ps reserved for the workers (reserveProcs)
}

// Validate reports every problem of the config at once.
func (c Config) Validate() error {
	var errs []error
	if c.Program == nil {
		errs = append(errs, errors.New("engine: no router program"))
	}
	if c.Table == nil {
		errs = append(errs, errors.New("engine: no FIB table"))
	}
	if len(c.Interfaces)+len(c.Egress) == 0 {
		errs = append(errs, errors.New("engine: no interfaces"))
	}
	if c.Queues < 0 || c.Queues > xdp.MaxQueues {
		errs = append(errs, fmt.Errorf("engine: %d queues: between 1 and %d", c.Queues, xdp.MaxQueues))
	}
	for q, cpu := range c.CPUs {
		if cpu >= runtime.NumCPU() {
			errs = append(errs, fmt.Errorf("engine: worker %d on CPU %d: this machine has %d", q, cpu, runtime.NumCPU()))
		}
	}
	if c.Batch < 0 || c.Batch > 1024 {
		errs = append(errs, fmt.Errorf("engine: batch %d: between 1 and 1024", c.Batch))
	}
	if c.Priority > 99 {
		errs = append(errs, fmt.Errorf("engine: worker priority %d: SCHED_FIFO priorities are 1 to 99", c.Priority))
	}
	if err := c.Socket.Validate(); err != nil {
		errs = append(errs, fmt.Errorf("engine: %w", err))
	}
	return errors.Join(errs...)
}

// Start opens the sockets, starts the workers, then lets the program
// steer to them (egress map, then XSKMAP), so no frame is steered before
// a worker serves it.
func Start(cfg Config) (*Engine, error) {
	if cfg.Batch == 0 {
		cfg.Batch = 256
	}
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if cfg.BusyPoll && cfg.BusyPollTime == 0 {
		cfg.BusyPollTime = 20 * time.Microsecond
	}
	switch {
	case cfg.Priority == 0 && (cfg.Spin < 0 || cfg.BusyPoll):
		// A worker that never sleeps would starve the softirq
		// (ksoftirqd) that fills its rings: normal priority.
	case cfg.Priority == 0:
		cfg.Priority = 1
	case cfg.Priority < 0:
		cfg.Priority = 0 // normal scheduling
	}
	if cfg.Queues == 0 {
		for _, ifindex := range cfg.Interfaces {
			n, err := QueueCount(cfg.Namespace, ifindex)
			if err != nil {
				return nil, err
			}
			if cfg.Queues == 0 || n < cfg.Queues {
				cfg.Queues = n
			}
		}
		cfg.Queues = min(cfg.Queues, xdp.MaxQueues)
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	e := &Engine{cfg: cfg, log: cfg.Logger, ports: map[int][]*port{}}
	// Each worker's UMEM holds Frames for each socket it will have.
	so := cfg.Socket.WithDefaults()
	frames := so.Frames * len(slices.Concat(cfg.Interfaces, cfg.Egress))
	for q := range cfg.Queues {
		cpu := q % runtime.NumCPU()
		if q < len(cfg.CPUs) {
			cpu = cfg.CPUs[q]
		}
		u, err := xsk.NewUMEM(frames, so.FrameSize)
		if err != nil {
			e.closeAll()
			return nil, fmt.Errorf("worker %d: %w", q, err)
		}
		e.workers = append(e.workers, newWorker(e, q, cpu, u))
	}
	for _, ifindex := range slices.Concat(cfg.Interfaces, cfg.Egress) {
		if err := e.open(ifindex); err != nil {
			e.closeAll()
			return nil, err
		}
	}
	reserveProcs(len(e.workers))
	e.procs = len(e.workers)
	for _, w := range e.workers {
		started := make(chan error, 1)
		go w.run(started)
		if err := <-started; err != nil {
			// The workers started before this one stop first: closeAll
			// takes their sockets and UMEMs.
			for _, o := range e.workers {
				if o.tid.Load() != 0 {
					o.stop.Store(true)
					<-o.done
				}
			}
			e.closeAll()
			reserveProcs(-e.procs)
			return nil, fmt.Errorf("start worker %d on CPU %d: %w", w.q, w.cpu, err)
		}
	}
	for _, ifindex := range slices.Concat(cfg.Interfaces, cfg.Egress) {
		if err := e.publish(ifindex); err != nil {
			_ = e.Stop()
			return nil, err
		}
	}
	e.log.Info("afxdp engine started", "workers", len(e.workers), "interfaces", len(cfg.Interfaces), "zero_copy", e.zeroCopy(), "idle", e.Idle())
	return e, nil
}

// open creates ifindex's sockets (one per queue it has, up to the
// workers) and hands each to its worker (before the workers run, or
// through their command channel).
func (e *Engine) open(ifindex int) error {
	n, err := QueueCount(e.cfg.Namespace, ifindex)
	if err != nil {
		return err
	}
	ports := make([]*port, len(e.workers))
	abort := func(err error) error {
		for q, p := range ports {
			if p != nil {
				_ = e.closeSocket(e.workers[q], p.s)
			}
		}
		return err
	}
	for q := range min(n, len(e.workers)) {
		w := e.workers[q]
		s, err := xsk.Open(e.cfg.Namespace, ifindex, q, w.umem, e.cfg.Socket)
		if err != nil {
			return abort(err)
		}
		if e.cfg.BusyPoll {
			if err := s.SetBusyPoll(int(e.cfg.BusyPollTime/time.Microsecond), e.cfg.Batch); err != nil {
				_ = e.closeSocket(w, s)
				return abort(fmt.Errorf("busy poll: %w", err))
			}
		}
		// Bound again: a zero-copy socket closed here before has let go
		// of the queue, and its frames are the worker's again.
		w.do(func(w *worker) { w.umem.ReclaimQueue(ifindex, q) })
		ports[q] = &port{s: s, ifindex: ifindex, queue: q, pending: make([]xsk.Desc, 0, s.Options().RingSize)}
	}
	e.ports[ifindex] = ports
	for q, p := range ports {
		if p != nil {
			e.workers[q].do(func(w *worker) { w.ports = append(w.ports, p) })
		}
	}
	if n < len(e.workers) {
		e.log.Warn("interface has fewer queues than workers: only its own queues' workers receive there, and frames routed to it go to the kernel",
			"ifindex", ifindex, "queues", n, "workers", len(e.workers))
	}
	return nil
}

// closeSocket closes one of w's sockets and gives what the kernel held
// through it (its fill ring, the driver) back to w's UMEM, on w's
// goroutine.
func (e *Engine) closeSocket(w *worker, s *xsk.Socket) error {
	err := s.Close()
	w.do(func(w *worker) { w.umem.Reclaim(s) })
	return err
}

// do runs f on the worker's goroutine (at its next round), or directly
// when it is not running.
func (w *worker) do(f func(*worker)) {
	if w.tid.Load() == 0 {
		f(w)
		return
	}
	ran := make(chan struct{})
	select {
	case w.cmd <- func(w *worker) { f(w); close(ran) }:
		<-ran
	case <-w.done:
		f(w)
	}
}

// publish lets the program steer to ifindex's sockets: egress first (only
// when every worker has a socket there), then receive.
func (e *Engine) publish(ifindex int) error {
	ports := e.ports[ifindex]
	if !slices.Contains(ports, nil) {
		if err := e.cfg.Program.AddXSKEgress(ifindex); err != nil {
			return err
		}
	}
	slot, ok := e.cfg.Program.Slot(ifindex)
	if !ok || !slices.Contains(e.cfg.Interfaces, ifindex) {
		return nil // egress only
	}
	for q, p := range ports {
		if p != nil {
			// Frames to receive into before the first is steered here
			// (an empty fill ring drops them: rx_fill_ring_empty_descs).
			e.workers[q].do(func(w *worker) { p.s.TopUp(0) })
			p.recv.Store(true)
			if err := p.s.Register(e.cfg.Program.XSKMap(), slot*xdp.MaxQueues+uint32(q)); err != nil {
				return err
			}
		}
	}
	return nil
}

// unpublish stops steering to ifindex's sockets: frames go to the kernel.
func (e *Engine) unpublish(ifindex int) error {
	errs := []error{e.cfg.Program.RemoveXSKEgress(ifindex)}
	if slot, ok := e.cfg.Program.Slot(ifindex); ok {
		for q := range e.ports[ifindex] {
			errs = append(errs, xsk.Unregister(e.cfg.Program.XSKMap(), slot*xdp.MaxQueues+uint32(q)))
		}
	}
	return errors.Join(errs...)
}

// Rebuild recreates an interface's sockets (after it went down and up, or
// its queue count changed) while the other interfaces keep forwarding.
func (e *Engine) Rebuild(ifindex int) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.stopped {
		return errors.New("engine stopped")
	}
	if _, ok := e.ports[ifindex]; !ok {
		return fmt.Errorf("ifindex %d: not served by the engine", ifindex)
	}
	err := e.remove(ifindex)
	if err := e.open(ifindex); err != nil {
		return fmt.Errorf("rebuild ifindex %d: %w", ifindex, errors.Join(err, e.unpublish(ifindex)))
	}
	if err := e.publish(ifindex); err != nil {
		return fmt.Errorf("rebuild ifindex %d: %w", ifindex, err)
	}
	e.log.Info("afxdp sockets rebuilt", "ifindex", ifindex, "queues", served(e.ports[ifindex]))
	return err
}

// served is the number of queues of an interface that have a socket.
func served(ports []*port) int {
	n := 0
	for _, p := range ports {
		if p != nil {
			n++
		}
	}
	return n
}

// remove unpublishes ifindex, takes its sockets from the workers and
// closes them; frames still on their rings are not sent (the interface
// is going down or being rebuilt) and go back to the workers' UMEMs.
func (e *Engine) remove(ifindex int) error {
	err := e.unpublish(ifindex)
	for q, p := range e.ports[ifindex] {
		if p == nil {
			continue
		}
		w := e.workers[q]
		w.do(func(w *worker) {
			w.ports = slices.DeleteFunc(w.ports, func(p *port) bool { return p.ifindex == ifindex })
		})
		if cerr := e.closeSocket(w, p.s); cerr != nil {
			err = errors.Join(err, cerr)
		}
	}
	delete(e.ports, ifindex)
	return err
}

// Stop stops steering, lets the workers drain (forward what they hold,
// wait for their sends to complete), then closes every socket.
func (e *Engine) Stop() error {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.stopped {
		return nil
	}
	e.stopped = true
	var errs []error
	for ifindex := range e.ports {
		errs = append(errs, e.unpublish(ifindex))
	}
	for _, w := range e.workers {
		w.stop.Store(true)
	}
	for _, w := range e.workers {
		if w.tid.Load() != 0 {
			<-w.done
		}
	}
	errs = append(errs, e.leaks())
	e.closeAll()
	reserveProcs(-e.procs)
	e.procs = 0
	e.log.Info("afxdp engine stopped")
	return errors.Join(errs...)
}

// ErrLeak is returned by Stop when a worker's frames are not all where
// they belong after draining: a frame lost, used twice, still in flight
// or on a ring twice.
var ErrLeak = errors.New("AF_XDP engine stopped with frames astray")

// leaks checks every worker's UMEM at rest: its own accounting (free list,
// owners, faults), nothing in flight on a tx or rx ring, and each socket
// owning at least the frames on its rings (fewer would mean a frame on a
// ring it does not own). Frames a socket owns beyond its rings are held
// by the kernel's receive path (copy mode keeps a few after a full rx
// ring) and come back when it closes.
func (e *Engine) leaks() error {
	var errs []error
	for _, w := range e.workers {
		if err := w.umem.Check(); err != nil {
			errs = append(errs, fmt.Errorf("%w: worker %d: %w", ErrLeak, w.q, err))
		}
		a := w.umem.Account()
		for _, p := range w.ports {
			r := p.s.Rings()
			held := a.Kernel[p.s.Slot()]
			if r.Rx != 0 || r.Tx != 0 || r.Completion != 0 || held < r.Fill {
				errs = append(errs, fmt.Errorf("%w: ifindex %d queue %d: rings %+v, %d frames owned", ErrLeak, p.ifindex, p.queue, r, held))
			}
		}
	}
	return errors.Join(errs...)
}

// closeAll closes every socket, gives their frames back to the workers'
// UMEMs, and unmaps the UMEMs of workers that do not run.
func (e *Engine) closeAll() {
	for ifindex, ports := range e.ports {
		for q, p := range ports {
			if p != nil {
				if err := e.closeSocket(e.workers[q], p.s); err != nil {
					e.log.Warn("close AF_XDP socket", "ifindex", ifindex, "queue", q, "err", err)
				}
			}
		}
	}
	e.ports = map[int][]*port{}
	for _, w := range e.workers {
		if w.tid.Load() == 0 {
			w.r.Close()
		}
		if err := w.umem.Close(); err != nil {
			e.log.Warn("unmap UMEM", "worker", w.q, "err", err)
		}
	}
}

func (e *Engine) zeroCopy() bool {
	for _, ports := range e.ports {
		for _, p := range ports {
			if p != nil && !p.s.ZeroCopy {
				return false
			}
		}
	}
	return len(e.ports) > 0
}

// Idle says what an idle worker does: "busy-poll" (BusyPoll), "spin"
// (a negative Spin: never sleeps), "spin-then-poll" (a positive Spin)
// or "poll" (sleeps in poll(2) as soon as its rx rings are empty).
func (e *Engine) Idle() string {
	switch {
	case e.cfg.BusyPoll:
		return "busy-poll"
	case e.cfg.Spin < 0:
		return "spin"
	case e.cfg.Spin > 0:
		return "spin-then-poll"
	}
	return "poll"
}

// Workers is the number of workers.
func (e *Engine) Workers() int { return len(e.workers) }

// QueueCount is the number of receive queues the driver uses on an
// interface (ethtool channels: combined + rx), 1 when it does not say.
func QueueCount(namespace string, ifindex int) (int, error) {
	n := 1
	err := netnsrun.Do(namespace, func() error {
		l, err := vnl.LinkByIndex(ifindex)
		if err != nil {
			return fmt.Errorf("ifindex %d: %w", ifindex, err)
		}
		et, err := ethtool.NewEthtool()
		if err != nil {
			return fmt.Errorf("ethtool: %w", err)
		}
		defer et.Close()
		ch, err := et.GetChannels(l.Attrs().Name)
		if err != nil {
			// No channels API: as many queues as the device was created with.
			n = max(1, l.Attrs().NumRxQueues)
			return nil
		}
		n = max(1, int(ch.CombinedCount+ch.RxCount))
		return nil
	})
	return n, err
}

// Watch rebuilds an interface's sockets when it comes back up or its
// queue count changes, until ctx ends.
func (e *Engine) Watch(ctx context.Context) error {
	ch := make(chan vnl.LinkUpdate, 64)
	done := make(chan struct{})
	defer close(done)
	ns := netns.None()
	if e.cfg.Namespace != "" {
		var err error
		if ns, err = netns.GetFromName(e.cfg.Namespace); err != nil {
			return fmt.Errorf("open netns %s: %w", e.cfg.Namespace, err)
		}
		defer ns.Close()
	}
	if err := vnl.LinkSubscribeWithOptions(ch, done, vnl.LinkSubscribeOptions{Namespace: &ns}); err != nil {
		return fmt.Errorf("subscribe to link updates: %w", err)
	}
	up := map[int]bool{}
	queues := map[int]int{}
	e.mu.Lock()
	for ifindex, ports := range e.ports {
		up[ifindex] = true
		queues[ifindex] = served(ports)
	}
	e.mu.Unlock()
	for {
		select {
		case <-ctx.Done():
			return nil
		case u, ok := <-ch:
			if !ok {
				return errors.New("link updates closed")
			}
			ifindex := int(u.Index)
			if _, ours := queues[ifindex]; !ours {
				continue
			}
			isUp := u.Attrs().OperState == vnl.OperUp || u.Attrs().OperState == vnl.OperUnknown
			rebuild := isUp && !up[ifindex]
			up[ifindex] = isUp
			if isUp {
				if n, err := QueueCount(e.cfg.Namespace, ifindex); err == nil && min(n, len(e.workers)) != queues[ifindex] {
					rebuild = true
				}
			}
			if !rebuild {
				continue
			}
			if err := e.Rebuild(ifindex); err != nil {
				e.log.Error("rebuild afxdp sockets", "ifindex", ifindex, "err", err)
				continue
			}
			e.mu.Lock()
			queues[ifindex] = served(e.ports[ifindex])
			e.mu.Unlock()
		}
	}
}

// Go's scheduler runs a goroutine only on one of GOMAXPROCS Ps. A worker
// returning from poll(2) needs one: with every P taken (by the
// generator's pacing threads in the lab, by a burst of route updates in
// the daemon), the woken worker's goroutine waited in the run queue for
// a Go preemption (10 ms and more) while its ring filled, whatever its
// real-time priority. So each running worker reserves a P of its own, on
// top of the process's GOMAXPROCS: the kernel alone then decides when a
// worker runs.
var (
	procsMu    sync.Mutex
	procsBase  int // GOMAXPROCS before the first reservation
	procsExtra int // Ps reserved for running workers
)

// reserveProcs adds n Ps for workers (negative: gives them back).
func reserveProcs(n int) {
	procsMu.Lock()
	defer procsMu.Unlock()
	if n == 0 {
		return
	}
	if procsExtra == 0 {
		procsBase = runtime.GOMAXPROCS(0)
	}
	procsExtra += n
	runtime.GOMAXPROCS(procsBase + procsExtra)
}
