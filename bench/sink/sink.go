package sink

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/cilium/ebpf/link"
	"github.com/vishvananda/netlink"

	"github.com/xdprouter/xdprouter/lab"
)

// FCSLen is added to every frame's length in rates: sizes and Mbit/s in
// xdpbench count the Ethernet frame including its 4-byte FCS (as RFC 2544
// does), without preamble and inter-frame gap. XDP sees frames without FCS.
const FCSLen = 4

// DefaultPort is the UDP destination port of the generator's traffic.
const DefaultPort = 9

// Counters are what the sink counted; Matched are UDP frames to the test
// port, the rest is whatever else reached the link (ND, MLD).
type Counters struct {
	Packets, Bytes               uint64
	MatchedPackets, MatchedBytes uint64
	MatchedMinLen, MatchedMaxLen uint64 // frame lengths without FCS
	// MatchedForeignMAC are matched frames whose destination MAC is not
	// the receiving interface's: a router that rewrote with a stale or
	// wrong next hop.
	MatchedForeignMAC uint64
}

// Sink is the counting XDP program attached to one or more interfaces of a
// namespace.
type Sink struct {
	objs  xdpsinkObjects
	links []link.Link
}

// Attach loads the sink and attaches it in native mode to each interface
// of the namespace (like `ip -n NS link set IF xdp obj sink.o`), counting
// UDP to port as matched.
func Attach(namespace string, ifaces []string, port uint16) (*Sink, error) {
	if err := lab.RequireRoot(); err != nil {
		return nil, err
	}
	spec, err := loadXdpsink()
	if err != nil {
		return nil, fmt.Errorf("load sink spec: %w", err)
	}
	if err := spec.Variables["match_port"].Set(port); err != nil {
		return nil, fmt.Errorf("set sink port: %w", err)
	}
	s := &Sink{}
	if err := spec.LoadAndAssign(&s.objs, nil); err != nil {
		return nil, fmt.Errorf("load sink program: %w", err)
	}
	err = lab.InNamespace(namespace, func() error {
		for _, name := range ifaces {
			l, err := netlink.LinkByName(name)
			if err != nil {
				return fmt.Errorf("find %s in %s: %w", name, namespace, err)
			}
			var mac [6]byte
			copy(mac[:], l.Attrs().HardwareAddr)
			if err := s.objs.Macs.Put(uint32(l.Attrs().Index), xdpsinkMac{A: mac}); err != nil {
				return fmt.Errorf("sink: record %s's MAC: %w", name, err)
			}
			xl, err := link.AttachXDP(link.XDPOptions{
				Program: s.objs.Xdpsink, Interface: l.Attrs().Index, Flags: link.XDPDriverMode,
			})
			if err != nil {
				return fmt.Errorf("attach sink to %s in %s (native XDP): %w", name, namespace, err)
			}
			s.links = append(s.links, xl)
		}
		return nil
	})
	if err != nil {
		s.Close()
		return nil, err
	}
	return s, nil
}

// Close detaches the program from every interface and frees it.
func (s *Sink) Close() error {
	var errs []error
	for _, l := range s.links {
		errs = append(errs, l.Close())
	}
	s.links = nil
	errs = append(errs, s.objs.Close())
	return errors.Join(errs...)
}

// PerCPU returns the counters of each possible CPU.
func (s *Sink) PerCPU() ([]Counters, error) {
	var vals []xdpsinkSinkCounters
	if err := s.objs.SinkCounts.Lookup(uint32(0), &vals); err != nil {
		return nil, fmt.Errorf("read sink counters: %w", err)
	}
	out := make([]Counters, len(vals))
	for i, v := range vals {
		out[i] = Counters{
			Packets: v.Packets, Bytes: v.Bytes,
			MatchedPackets: v.MatchedPackets, MatchedBytes: v.MatchedBytes,
			MatchedMinLen: v.MatchedMinLen, MatchedMaxLen: v.MatchedMaxLen,
			MatchedForeignMAC: v.MatchedForeignMac,
		}
	}
	return out, nil
}

// Counters returns the counters summed over CPUs.
func (s *Sink) Counters() (Counters, error) {
	per, err := s.PerCPU()
	if err != nil {
		return Counters{}, err
	}
	var c Counters
	for _, p := range per {
		c.Packets += p.Packets
		c.Bytes += p.Bytes
		c.MatchedPackets += p.MatchedPackets
		c.MatchedBytes += p.MatchedBytes
		c.MatchedForeignMAC += p.MatchedForeignMAC
		if p.MatchedMinLen != 0 && (c.MatchedMinLen == 0 || p.MatchedMinLen < c.MatchedMinLen) {
			c.MatchedMinLen = p.MatchedMinLen
		}
		c.MatchedMaxLen = max(c.MatchedMaxLen, p.MatchedMaxLen)
	}
	return c, nil
}

// WaitMatched polls until at least n matched frames arrived, or until
// nothing new arrived for quiet, or ctx ends; it returns the last reading.
func (s *Sink) WaitMatched(ctx context.Context, n uint64, quiet time.Duration) (Counters, error) {
	last, err := s.Counters()
	if err != nil {
		return last, err
	}
	changed := time.Now()
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for last.MatchedPackets < n && time.Since(changed) < quiet {
		select {
		case <-ctx.Done():
			return last, ctx.Err()
		case <-tick.C:
		}
		c, err := s.Counters()
		if err != nil {
			return last, err
		}
		if c.MatchedPackets != last.MatchedPackets {
			changed = time.Now()
		}
		last = c
	}
	return last, nil
}

// Rate is one interval's reading: packets and bits per second of matched
// frames, bits counting the FCS.
type Rate struct {
	At      time.Time
	Packets uint64
	PPS     float64
	Mbps    float64
}

// RateBetween computes the matched rate between two readings dt apart.
func RateBetween(a, b Counters, dt time.Duration) Rate {
	p := b.MatchedPackets - a.MatchedPackets
	by := b.MatchedBytes - a.MatchedBytes + FCSLen*p
	sec := dt.Seconds()
	if sec <= 0 {
		return Rate{Packets: p}
	}
	return Rate{Packets: p, PPS: float64(p) / sec, Mbps: float64(by) * 8 / sec / 1e6}
}
