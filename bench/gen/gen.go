package gen

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"runtime"
	"sync"
	"time"

	"github.com/cilium/ebpf"
	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/xdprouter/xdprouter/lab"
)

// FCSLen is counted in Size: a 64-byte frame is 60 bytes on the veth plus
// the 4-byte FCS, as in RFC 2544.
const FCSLen = 4

// Frame size limits, FCS included.
const (
	MinSize4 = 64   // Ethernet 14 + IPv4 20 + UDP 8 + 18 payload + FCS
	MinSize6 = 66   // Ethernet 14 + IPv6 40 + UDP 8 + FCS
	MaxSize  = 1518 // Ethernet 1514 + FCS
)

// ErrLiveFramesUnsupported means the kernel cannot send with
// BPF_F_TEST_XDP_LIVE_FRAMES (Linux 5.18 or newer is needed).
var ErrLiveFramesUnsupported = errors.New("kernel lacks BPF_PROG_RUN live frames (BPF_F_TEST_XDP_LIVE_FRAMES, Linux 5.18+)")

// Link is one interface the generator sends out of, with the MACs to write.
type Link struct {
	Iface  string
	SrcMAC net.HardwareAddr
	DstMAC net.HardwareAddr
}

// Config says what to send. Exactly one of Duration and Count ends a run
// (both zero: run until ctx ends).
type Config struct {
	// Namespace the links live in ("" = the caller's).
	Namespace string
	// Links to send on; sending thread i uses Links[i % len(Links)].
	Links []Link
	// Src and Dst are the prefixes source and destination addresses are
	// drawn from, uniformly at random per frame; both of one family.
	Src, Dst netip.Prefix
	// Size is the Ethernet frame size including the FCS.
	Size int
	// SrcPort and DstPort of the UDP header (defaults 1024 and 9).
	SrcPort, DstPort uint16
	// Rate is the total target in packets per second, 0 = as fast as possible.
	Rate float64
	// Duration of the run, or Count packets in total.
	Duration time.Duration
	Count    uint64
	// CPUs run one sending thread each (default: CPU 0).
	CPUs []int
	// MaxLag bounds how far a paced sender catches up after a stall
	// (default 50 ms).
	MaxLag time.Duration
}

// CPUResult is what one sending thread did.
type CPUResult struct {
	CPU        int
	Iface      string
	Sent       uint64
	Bytes      uint64 // without FCS
	Iterations uint64 // program runs, sent or not (pacing spins)
	Calls      int    // BPF_PROG_RUN calls
}

// Result is what a run sent.
type Result struct {
	Sent    uint64
	Bytes   uint64        // without FCS
	Elapsed time.Duration // first to last frame sent
	PerCPU  []CPUResult
}

// PPS is the achieved rate.
func (r Result) PPS() float64 {
	if r.Elapsed <= 0 {
		return 0
	}
	return float64(r.Sent) / r.Elapsed.Seconds()
}

// Mbps is the achieved rate in Mbit/s, FCS counted.
func (r Result) Mbps() float64 {
	if r.Elapsed <= 0 {
		return 0
	}
	return float64(r.Bytes+FCSLen*r.Sent) * 8 / r.Elapsed.Seconds() / 1e6
}

// Defaults returns cfg with its zero fields filled in: IPv4 sources across
// 10.0.0.0/8 and destinations across 198.19.0.0/24 (the router text's /8
// and /24), 64-byte frames, CPU 0.
func Defaults(cfg Config) Config {
	if !cfg.Src.IsValid() && !cfg.Dst.IsValid() {
		cfg.Src = netip.MustParsePrefix("10.0.0.0/8")
		cfg.Dst = netip.MustParsePrefix("198.19.0.0/24")
	}
	if cfg.Size == 0 {
		cfg.Size = MinSize4
		if cfg.Dst.Addr().Is6() {
			cfg.Size = MinSize6
		}
	}
	if cfg.SrcPort == 0 {
		cfg.SrcPort = 1024
	}
	if cfg.DstPort == 0 {
		cfg.DstPort = 9
	}
	if len(cfg.CPUs) == 0 {
		cfg.CPUs = []int{0}
	}
	if cfg.MaxLag == 0 {
		cfg.MaxLag = 50 * time.Millisecond
	}
	return cfg
}

// DefaultPrefixes returns the default source and destination prefixes of
// a family: 10.0.0.0/8 → 198.19.0.0/24, or 2001:2:0:8000::/104 →
// 2001:2:0:ff00::/120 (2^24 sources, 256 destinations, as in IPv4).
func DefaultPrefixes(family int) (src, dst netip.Prefix) {
	if family == 6 {
		return netip.MustParsePrefix("2001:2:0:8000::/104"), netip.MustParsePrefix("2001:2:0:ff00::/120")
	}
	return netip.MustParsePrefix("10.0.0.0/8"), netip.MustParsePrefix("198.19.0.0/24")
}

// Validate reports every problem with cfg at once.
func (cfg Config) Validate() error {
	var errs []error
	if len(cfg.Links) == 0 {
		errs = append(errs, errors.New("no link to send on"))
	}
	for _, l := range cfg.Links {
		if len(l.SrcMAC) != 6 || len(l.DstMAC) != 6 {
			errs = append(errs, fmt.Errorf("link %s: source and destination MAC needed", l.Iface))
		}
	}
	v6 := cfg.Dst.Addr().Is6()
	if !cfg.Src.IsValid() || !cfg.Dst.IsValid() || cfg.Src.Addr().Is6() != v6 {
		errs = append(errs, fmt.Errorf("src %s and dst %s: two prefixes of one family needed", cfg.Src, cfg.Dst))
	}
	minSize := MinSize4
	if v6 {
		minSize = MinSize6
	}
	if cfg.Size < minSize || cfg.Size > MaxSize {
		errs = append(errs, fmt.Errorf("size %d: use %d to %d bytes (FCS included)", cfg.Size, minSize, MaxSize))
	}
	if cfg.Rate < 0 {
		errs = append(errs, fmt.Errorf("rate %v: must not be negative", cfg.Rate))
	}
	if cfg.Duration != 0 && cfg.Count != 0 {
		errs = append(errs, errors.New("give a duration or a count, not both"))
	}
	if cfg.Count != 0 && cfg.Count < uint64(len(cfg.CPUs)) {
		errs = append(errs, fmt.Errorf("count %d is less than one packet per CPU (%d CPUs)", cfg.Count, len(cfg.CPUs)))
	}
	seen := map[int]bool{}
	ncpu := runtime.NumCPU()
	for _, c := range cfg.CPUs {
		if c < 0 || c >= ncpu {
			errs = append(errs, fmt.Errorf("cpu %d: this machine has CPUs 0-%d", c, ncpu-1))
		}
		if seen[c] {
			errs = append(errs, fmt.Errorf("cpu %d given twice: one sending thread per CPU", c))
		}
		seen[c] = true
	}
	return errors.Join(errs...)
}

// xdpMd is struct xdp_md, the context BPF_PROG_RUN takes.
type xdpMd struct {
	Data, DataEnd, DataMeta      uint32
	IngressIfindex, RxQueueIndex uint32
	EgressIfindex                uint32
}

// Generator is a loaded generator program, reusable for several runs of
// the same frames.
type Generator struct {
	cfg     Config
	objs    xdpgenObjects
	frame   []byte
	ifindex []int
}

// New validates cfg, builds the frame template and loads the program.
func New(cfg Config) (*Generator, error) {
	cfg = Defaults(cfg)
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("generator config: %w", err)
	}
	if err := lab.RequireRoot(); err != nil {
		return nil, err
	}
	tmpl, gc, err := buildTemplate(cfg)
	if err != nil {
		return nil, err
	}
	spec, err := loadXdpgen()
	if err != nil {
		return nil, fmt.Errorf("load generator spec: %w", err)
	}
	if err := spec.Variables["cfg"].Set(gc); err != nil {
		return nil, fmt.Errorf("set generator config: %w", err)
	}
	g := &Generator{cfg: cfg, frame: tmpl}
	if err := spec.LoadAndAssign(&g.objs, nil); err != nil {
		return nil, fmt.Errorf("load generator program: %w", err)
	}
	if err := g.resolveLinks(); err != nil {
		g.Close()
		return nil, err
	}
	return g, nil
}

// Close frees the program and its maps.
func (g *Generator) Close() error {
	return g.objs.Close()
}

// Frame returns a copy of the frame template (addresses zero).
func (g *Generator) Frame() []byte {
	return append([]byte(nil), g.frame...)
}

func (g *Generator) resolveLinks() error {
	resolve := func() error {
		for _, l := range g.cfg.Links {
			ifc, err := net.InterfaceByName(l.Iface)
			if err != nil {
				return fmt.Errorf("generator link %s: %w", l.Iface, err)
			}
			g.ifindex = append(g.ifindex, ifc.Index)
		}
		return nil
	}
	if g.cfg.Namespace == "" {
		return resolve()
	}
	return lab.InNamespace(g.cfg.Namespace, resolve)
}

// Run sends until the count is sent, the duration is over or ctx ends
// (then it stops every sender at once and returns what was sent).
func (g *Generator) Run(ctx context.Context) (Result, error) {
	cfg := g.cfg
	ncpu, err := ebpf.PossibleCPU()
	if err != nil {
		return Result{}, fmt.Errorf("possible cpus: %w", err)
	}
	if err := g.objs.Stop.Set(uint32(0)); err != nil {
		return Result{}, fmt.Errorf("reset stop flag: %w", err)
	}
	zero := make([]xdpgenGenState, ncpu)
	if err := g.objs.GenStates.Put(uint32(0), zero); err != nil {
		return Result{}, fmt.Errorf("reset generator state: %w", err)
	}
	now, err := monotonicNow()
	if err != nil {
		return Result{}, err
	}
	plans := make([]xdpgenGenPlan, ncpu)
	n := uint64(len(cfg.CPUs))
	for i, cpu := range cfg.CPUs {
		l := cfg.Links[i%len(cfg.Links)]
		p := &plans[cpu]
		copy(p.DstMac[:], l.DstMAC)
		copy(p.SrcMac[:], l.SrcMAC)
		p.MaxLagNs = uint64(cfg.MaxLag)
		if cfg.Rate > 0 {
			p.IntervalNs = uint64(float64(n) * 1e9 / cfg.Rate)
			if p.IntervalNs == 0 {
				p.IntervalNs = 1
			}
		}
		if cfg.Count > 0 {
			p.Limit = cfg.Count / n
			if uint64(i) < cfg.Count%n {
				p.Limit++
			}
		}
		if cfg.Duration > 0 {
			p.DeadlineNs = now + uint64(cfg.Duration)
		}
	}
	if err := g.objs.GenPlans.Put(uint32(0), plans); err != nil {
		return Result{}, fmt.Errorf("write generator plans: %w", err)
	}

	done := make(chan struct{})
	go func() {
		select {
		case <-ctx.Done():
			_ = g.objs.Stop.Set(uint32(1))
		case <-done:
		}
	}()
	var wg sync.WaitGroup
	results := make([]CPUResult, len(cfg.CPUs))
	errs := make([]error, len(cfg.CPUs))
	for i, cpu := range cfg.CPUs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			results[i], errs[i] = g.sender(ctx, cpu, i%len(cfg.Links), plans[cpu])
		}()
	}
	wg.Wait()
	close(done)
	if err := errors.Join(errs...); err != nil {
		return Result{}, err
	}

	var states []xdpgenGenState
	if err := g.objs.GenStates.Lookup(uint32(0), &states); err != nil {
		return Result{}, fmt.Errorf("read generator state: %w", err)
	}
	var res Result
	var first, last uint64
	for i, cpu := range cfg.CPUs {
		s := states[cpu]
		r := &results[i]
		r.Sent, r.Bytes, r.Iterations = s.Sent, s.Bytes, s.Iterations
		res.Sent += s.Sent
		res.Bytes += s.Bytes
		if s.Sent > 0 {
			if first == 0 || s.FirstNs < first {
				first = s.FirstNs
			}
			last = max(last, s.LastNs)
		}
	}
	if last > first {
		res.Elapsed = time.Duration(last - first)
	}
	res.PerCPU = results
	return res, nil
}

// sender is one sending thread: pinned to cpu, inside the namespace, calling
// BPF_PROG_RUN with chunks sized to about chunkTime of program runs until
// its plan is done.
func (g *Generator) sender(ctx context.Context, cpu, link int, plan xdpgenGenPlan) (CPUResult, error) {
	res := CPUResult{CPU: cpu, Iface: g.cfg.Links[link].Iface}
	// Never unlocked: this thread changes affinity and namespace and must
	// die with the goroutine.
	runtime.LockOSThread()
	var set unix.CPUSet
	set.Set(cpu)
	if err := unix.SchedSetaffinity(0, &set); err != nil {
		return res, fmt.Errorf("pin sender to cpu %d: %w", cpu, err)
	}
	if g.cfg.Namespace != "" {
		ns, err := netns.GetFromName(g.cfg.Namespace)
		if err != nil {
			return res, fmt.Errorf("open netns %s: %w", g.cfg.Namespace, err)
		}
		err = netns.Set(ns)
		ns.Close()
		if err != nil {
			return res, fmt.Errorf("enter netns %s: %w", g.cfg.Namespace, err)
		}
	}
	opts := ebpf.RunOptions{
		Data:    g.frame,
		Flags:   unix.BPF_F_TEST_XDP_LIVE_FRAMES,
		Context: xdpMd{DataEnd: uint32(len(g.frame)), IngressIfindex: uint32(g.ifindex[link])},
	}
	const chunkTime = 0.3 // seconds of program runs per call
	iterRate := 2e6       // runs per second, re-estimated after every call
	for {
		st, err := g.state(cpu)
		if err != nil {
			return res, err
		}
		if ctx.Err() != nil || st.Expired != 0 || (plan.Limit > 0 && st.Sent >= plan.Limit) {
			return res, nil
		}
		if plan.DeadlineNs == 0 && plan.Limit == 0 && g.cfg.Duration == 0 && g.cfg.Count == 0 && ctx.Done() == nil {
			return res, errors.New("generator run has no end: give a duration, a count or a cancellable context")
		}
		want := iterRate * chunkTime
		if plan.Limit > 0 {
			left := float64(plan.Limit - st.Sent)
			if plan.IntervalNs > 0 {
				// Spins between packets: runs needed for the time left.
				want = min(want, iterRate*left*float64(plan.IntervalNs)/1e9+64)
			} else {
				want = min(want, left)
			}
		}
		if plan.DeadlineNs > 0 {
			now, err := monotonicNow()
			if err != nil {
				return res, err
			}
			if now >= plan.DeadlineNs {
				return res, nil
			}
			want = min(want, iterRate*float64(plan.DeadlineNs-now)/1e9+64)
		}
		opts.Repeat = uint32(max(1, min(want, float64(1<<31))))
		t0 := time.Now()
		if _, err := g.objs.Xdpgen.Run(&opts); err != nil {
			if errors.Is(err, ebpf.ErrNotSupported) || errors.Is(err, unix.EINVAL) && res.Calls == 0 {
				return res, fmt.Errorf("%w: %v", ErrLiveFramesUnsupported, err)
			}
			return res, fmt.Errorf("send on %s (cpu %d): %w", res.Iface, cpu, err)
		}
		res.Calls++
		if dt := time.Since(t0).Seconds(); dt > 0 && opts.Repeat >= 1024 {
			iterRate = float64(opts.Repeat) / dt
		}
	}
}

func (g *Generator) state(cpu int) (xdpgenGenState, error) {
	var states []xdpgenGenState
	if err := g.objs.GenStates.Lookup(uint32(0), &states); err != nil {
		return xdpgenGenState{}, fmt.Errorf("read generator state: %w", err)
	}
	return states[cpu], nil
}

// monotonicNow is CLOCK_MONOTONIC in nanoseconds, the clock of
// bpf_ktime_get_ns.
func monotonicNow() (uint64, error) {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts); err != nil {
		return 0, fmt.Errorf("clock_gettime: %w", err)
	}
	return uint64(ts.Nano()), nil
}

// buildTemplate builds the frame with gopacket (addresses and checksums
// zero) and the program's constants: header, address bases and masks, and
// the partial checksums without addresses.
func buildTemplate(cfg Config) ([]byte, xdpgenGenConfig, error) {
	var gc xdpgenGenConfig
	v6 := cfg.Dst.Addr().Is6()
	eth := &layers.Ethernet{
		SrcMAC: make(net.HardwareAddr, 6), DstMAC: make(net.HardwareAddr, 6),
		EthernetType: layers.EthernetTypeIPv4,
	}
	udp := &layers.UDP{SrcPort: layers.UDPPort(cfg.SrcPort), DstPort: layers.UDPPort(cfg.DstPort)}
	hdrLen := 14 + 20 + 8
	payload := make([]byte, cfg.Size-FCSLen-hdrLen)
	var l3 gopacket.SerializableLayer
	if v6 {
		hdrLen = 14 + 40 + 8
		payload = make([]byte, cfg.Size-FCSLen-hdrLen)
		eth.EthernetType = layers.EthernetTypeIPv6
		l3 = &layers.IPv6{Version: 6, HopLimit: 64, NextHeader: layers.IPProtocolUDP,
			SrcIP: net.IPv6zero, DstIP: net.IPv6zero}
	} else {
		l3 = &layers.IPv4{Version: 4, IHL: 5, TTL: 64, Protocol: layers.IPProtocolUDP,
			SrcIP: net.IPv4zero.To4(), DstIP: net.IPv4zero.To4()}
	}
	buf := gopacket.NewSerializeBuffer()
	err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{FixLengths: true},
		eth, l3, udp, gopacket.Payload(payload))
	if err != nil {
		return nil, gc, fmt.Errorf("build frame: %w", err)
	}
	frame := buf.Bytes()
	if len(frame) != cfg.Size-FCSLen {
		return nil, gc, fmt.Errorf("built a %d-byte frame, want %d", len(frame), cfg.Size-FCSLen)
	}
	copy(gc.Hdr[:], frame[:hdrLen])
	gc.Family = 4
	udpLen := len(frame) - hdrLen + 8
	var pseudo []byte
	if v6 {
		gc.Family = 6
		pseudo = []byte{0, 0, byte(udpLen >> 8), byte(udpLen), 0, 0, 0, 17}
	} else {
		gc.IpCsumBase = sum16(frame[14:34])
		pseudo = []byte{0, 17, byte(udpLen >> 8), byte(udpLen)}
	}
	gc.L4CsumBase = sum16(pseudo) + sum16(frame[hdrLen-8:])
	gc.SrcBase, gc.SrcMask = baseMask(cfg.Src)
	gc.DstBase, gc.DstMask = baseMask(cfg.Dst)
	return frame, gc, nil
}

// sum16 adds the bytes as 16-bit words in the CPU's byte order, as the
// program does; the ones' complement sum is byte-order independent once
// stored back the same way (RFC 1071).
func sum16(b []byte) uint32 {
	var s uint32
	for len(b) >= 2 {
		s += uint32(binary.NativeEndian.Uint16(b))
		b = b[2:]
	}
	if len(b) == 1 {
		s += uint32(binary.NativeEndian.Uint16([]byte{b[0], 0}))
	}
	return s
}

// baseMask turns a prefix into the program's address words: the masked
// address and the host bits, both as raw network-order words.
func baseMask(p netip.Prefix) (base, mask [4]uint32) {
	p = p.Masked()
	a := p.Addr().As16()
	bits := p.Bits()
	if p.Addr().Is4() {
		a4 := p.Addr().As4()
		copy(a[:4], a4[:])
		clear(a[4:])
		bits += 96 // treat as the last 32 of 128 bits, stored in word 0
	}
	var m [16]byte
	for i := range 16 {
		for b := range 8 {
			if i*8+b >= bits {
				m[i] |= 0x80 >> b
			}
		}
	}
	if p.Addr().Is4() {
		copy(m[:4], m[12:])
		clear(m[4:])
	}
	for i := range 4 {
		base[i] = binary.NativeEndian.Uint32(a[4*i:])
		mask[i] = binary.NativeEndian.Uint32(m[4*i:])
	}
	return base, mask
}

// LabLinks returns the generator's links into a lab's router: gen1 and
// gen2, addressed to eth1 and eth2.
func LabLinks(l *lab.Lab) []Link {
	var out []Link
	for _, lk := range l.Ingress {
		out = append(out, Link{Iface: lk.A.Name, SrcMAC: lk.A.MAC, DstMAC: lk.B.MAC})
	}
	return out
}
