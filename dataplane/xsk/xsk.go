// Package xsk is xdprouter's AF_XDP socket layer: one socket per
// (interface, queue) over github.com/asavie/xdp (sockets, UMEM and rings
// only; never its Program or Attach), registered in the router program's
// XSKMAP. Copy mode is what veth offers; zero-copy where a driver has it.
//
// Known weaknesses of the library this layer has to guard (DESIGN.md):
// ring indices are plain loads and stores, Transmit calls sendto every
// time, GetDescs scans every frame, no need_wakeup, no shared UMEM.
package xsk

import (
	"errors"
	"fmt"
	"runtime"

	"github.com/asavie/xdp"
	"github.com/cilium/ebpf"
	"github.com/vishvananda/netns"
)

// Options size a socket; zero fields take defaults that do not starve on
// veth (lab facts: rings of 2048+ and a few thousand frames).
type Options struct {
	Frames    int // UMEM frames (default 8192)
	FrameSize int // bytes (default 2048)
	RingSize  int // fill, completion, rx and tx rings (default 2048)
}

func (o Options) withDefaults() Options {
	if o.Frames == 0 {
		o.Frames = 8192
	}
	if o.FrameSize == 0 {
		o.FrameSize = 2048
	}
	if o.RingSize == 0 {
		o.RingSize = 2048
	}
	return o
}

// Socket is one AF_XDP socket of an (interface, queue).
type Socket struct {
	*xdp.Socket
	Ifindex, Queue int
}

// Open creates a socket bound to queue q of ifindex inside the named
// network namespace ("" = the caller's), and fills its fill ring.
func Open(namespace string, ifindex, q int, o Options) (*Socket, error) {
	o = o.withDefaults()
	if o.RingSize&(o.RingSize-1) != 0 || o.Frames < 2*o.RingSize {
		return nil, fmt.Errorf("xsk options: ring size %d must be a power of two and frames (%d) at least twice it", o.RingSize, o.Frames)
	}
	opts := &xdp.SocketOptions{NumFrames: o.Frames, FrameSize: o.FrameSize,
		FillRingNumDescs: o.RingSize, CompletionRingNumDescs: o.RingSize, RxRingNumDescs: o.RingSize, TxRingNumDescs: o.RingSize}
	type result struct {
		s   *xdp.Socket
		err error
	}
	res := make(chan result, 1)
	go func() {
		// Never unlocked: the thread may have changed namespace.
		runtime.LockOSThread()
		if namespace != "" {
			ns, err := netns.GetFromName(namespace)
			if err != nil {
				res <- result{nil, fmt.Errorf("open netns %s: %w", namespace, err)}
				return
			}
			err = netns.Set(ns)
			ns.Close()
			if err != nil {
				res <- result{nil, fmt.Errorf("enter netns %s: %w", namespace, err)}
				return
			}
		}
		s, err := xdp.NewSocket(ifindex, q, opts)
		res <- result{s, err}
	}()
	r := <-res
	if r.err != nil {
		return nil, fmt.Errorf("AF_XDP socket on ifindex %d queue %d: %w", ifindex, q, r.err)
	}
	s := &Socket{Socket: r.s, Ifindex: ifindex, Queue: q}
	s.Fill(s.GetDescs(s.NumFreeFillSlots()))
	return s, nil
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
