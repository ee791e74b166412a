package xdp

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"unsafe"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"

	"github.com/xdprouter/xdprouter/dataplane/bpffs"
	"github.com/xdprouter/xdprouter/dataplane/fib"
)

// Engine is what an interface does with forwardable frames.
type Engine uint32

// Engines, as in bpf/router.c.
const (
	EnginePass  Engine = iota // everything to the Linux stack
	EngineXDP                 // forward in the kernel: rewrite and devmap redirect
	EngineAFXDP               // to the AF_XDP socket of the frame's queue
)

var engineNames = [...]string{"pass", "xdp", "afxdp"}

func (e Engine) String() string {
	if int(e) < len(engineNames) {
		return engineNames[e]
	}
	return fmt.Sprintf("engine%d", uint32(e))
}

// ParseEngine parses "pass", "xdp" or "afxdp".
func ParseEngine(s string) (Engine, error) {
	for i, n := range engineNames {
		if n == s {
			return Engine(i), nil
		}
	}
	return 0, fmt.Errorf("unknown engine %q: use pass, xdp or afxdp", s)
}

// Source is where the program looks routes up.
type Source uint32

// Sources, as in bpf/router.c.
const (
	SourceFIB    Source = iota // xdprouter's FIB (dataplane/fib)
	SourceKernel               // bpf_fib_lookup: the kernel's FIB, like xdp-forward
	SourceStatic               // no lookup: every forwardable frame to one hop (a ceiling)
)

func (s Source) String() string {
	return [...]string{"fib", "kernel", "static"}[s%3]
}

// StaticHop is where SourceStatic sends everything.
type StaticHop struct {
	Ifindex        int
	SrcMAC, DstMAC net.HardwareAddr
}

// Options configure a program.
type Options struct {
	Source Source
	Static StaticHop // for SourceStatic
	// PinPath, when set, is a directory on bpffs where the program's own
	// maps (interfaces, counters, local addresses, redirect and socket
	// maps) are pinned, so a restarted daemon keeps them. The FIB pins its
	// maps itself (fib.Config.PinPath).
	PinPath string
}

// MaxIfaces and MaxQueues bound the interfaces and queues a program serves.
const (
	MaxIfaces = 64
	MaxQueues = 64
)

// Program is the loaded router program and the interfaces it is attached to.
type Program struct {
	mu    sync.Mutex
	objs  routerObjects
	opts  Options
	links map[int]link.Link // by ifindex: attachments we made
	pins  map[int]string    // by ifindex: where each is pinned (Options.PinPath)
	slots map[int]uint32    // by ifindex
	free  []uint32
	// policies by ifindex, kept across Configure and SetPolicy.
	policies map[int]Policy
	localMu  sync.Mutex       // serialises local4 and its filter, and guards:
	locals   map[[4]byte]bool // local4's addresses
	bitRefs  map[uint32]int   // local addresses per filter bit
	bits     routerLocalBits  // the filter as written
}

// XSKMeta is what the program puts in front of each frame it steers to an
// AF_XDP socket (struct xsk_meta, as XDP metadata, which AF_XDP copies
// into the UMEM just before the frame): the FIB nexthop its lookup chose
// (Id) and that entry's generation (Gen; 0: none, such as with the
// kernel's or a static FIB, so look up again), marked by Magic.
type XSKMeta = routerXskMeta

// XSKMetaMagic marks an XSKMeta the program wrote (XSK_META_MAGIC).
const XSKMetaMagic = 0x78647231

// XSKMetaSize is the size of XSKMeta in front of a frame.
const XSKMetaSize = int(unsafe.Sizeof(XSKMeta{}))

// Load loads the router program bound to the table's maps (table may be
// nil for SourceKernel and SourceStatic: an empty FIB is created then).
func Load(table *fib.Table, opts Options) (*Program, error) {
	spec, err := loadRouter()
	if err != nil {
		return nil, fmt.Errorf("load router spec: %w", err)
	}
	var n uint32
	if err := spec.Variables["n_counters"].Get(&n); err != nil || int(n) != len(CounterNames) {
		return nil, fmt.Errorf("router program has %d counters, this build names %d (bpf/router.c and counters.go disagree)", n, len(CounterNames))
	}
	var meta XSKMeta
	if v := spec.Variables["xsk_meta_layout"]; v == nil {
		return nil, errors.New("router program has no xsk_meta_layout (bpf/router.c and program.go disagree)")
	} else if err := v.Get(&meta); err != nil {
		return nil, fmt.Errorf("router program's xsk_meta_layout: %w", err)
	} else if meta.Magic != XSKMetaMagic {
		return nil, fmt.Errorf("router program's xsk_meta magic %#x, this build expects %#x", meta.Magic, XSKMetaMagic)
	}
	if err := spec.Variables["fib_source"].Set(uint32(opts.Source)); err != nil {
		return nil, fmt.Errorf("set fib source: %w", err)
	}
	if opts.Source == SourceStatic {
		var s, d [6]byte
		copy(s[:], opts.Static.SrcMAC)
		copy(d[:], opts.Static.DstMAC)
		for name, v := range map[string]any{"static_ifindex": uint32(opts.Static.Ifindex), "static_smac": s, "static_dmac": d} {
			if err := spec.Variables[name].Set(v); err != nil {
				return nil, fmt.Errorf("set %s: %w", name, err)
			}
		}
	}
	var repl map[string]*ebpf.Map
	if table != nil {
		if repl, err = table.Maps().Bind(spec); err != nil {
			return nil, err
		}
	} else {
		// The FIB maps must still exist for the verifier; keep them tiny.
		for _, name := range []string{"fib4_top", "fib4_nodes", "fib4_leaves", "fib6_top", "fib6_nodes", "fib6_leaves", "fib_nh_ptr", "fib_nh", "fib_ecmp_ptr", "fib_ecmp"} {
			spec.Maps[name].MaxEntries = 1
		}
	}
	p := &Program{opts: opts, links: map[int]link.Link{}, pins: map[int]string{}, slots: map[int]uint32{}, policies: map[int]Policy{}}
	copts := &ebpf.CollectionOptions{MapReplacements: repl}
	if opts.PinPath != "" {
		if err := bpffs.Ensure(opts.PinPath); err != nil {
			return nil, err
		}
		for _, name := range pinnedMaps {
			spec.Maps[name].Pinning = ebpf.PinByName
		}
		copts.Maps.PinPath = opts.PinPath
	}
	// Pins this load creates; a failed load removes them again (the maps
	// are pinned before the verifier sees the program).
	var fresh []string
	for _, name := range pinnedMaps {
		if path := filepath.Join(opts.PinPath, name); opts.PinPath != "" {
			if _, err := os.Stat(path); os.IsNotExist(err) {
				fresh = append(fresh, path)
			}
		}
	}
	if err := spec.LoadAndAssign(&p.objs, copts); err != nil {
		for _, path := range fresh {
			_ = os.Remove(path)
		}
		var ve *ebpf.VerifierError
		if errors.As(err, &ve) {
			return nil, fmt.Errorf("load router program: verifier: %+v", ve)
		}
		return nil, fmt.Errorf("load router program: %w", err)
	}
	// A reopened local4 (pins of an earlier process) gets its filter.
	if err := p.setLocalBits(); err != nil {
		p.objs.Close()
		return nil, err
	}
	// Slots of interfaces configured before a restart stay theirs.
	used := map[uint32]bool{}
	var ifindex uint32
	var cfg routerIface
	for it := p.objs.Ifaces.Iterate(); it.Next(&ifindex, &cfg); {
		p.slots[int(ifindex)] = cfg.Slot
		p.policies[int(ifindex)] = Policy{Flags: PolicyFlag(cfg.Flags), MAC: slices.Clone(net.HardwareAddr(cfg.Mac[:]))}
		used[cfg.Slot] = true
	}
	for i := MaxIfaces - 1; i >= 0; i-- {
		if !used[uint32(i)] {
			p.free = append(p.free, uint32(i))
		}
	}
	return p, nil
}

// pinnedMaps are the program's own maps, pinned with Options.PinPath.
var pinnedMaps = []string{"ifaces", "counters", "local4", "local4_bits", "local6", "tx_ports", "xsks", "xsk_egress", "policy_rules4", "policy_rules6"}

// Unpin removes the program's pins.
func (p *Program) Unpin() error {
	var errs []error
	for _, m := range []*ebpf.Map{p.objs.Ifaces, p.objs.Counters, p.objs.Local4, p.objs.Local4Bits, p.objs.Local6, p.objs.PolicyRules4, p.objs.PolicyRules6, p.objs.TxPorts, p.objs.Xsks, p.objs.XskEgress} {
		if m.IsPinned() {
			errs = append(errs, m.Unpin())
		}
	}
	return errors.Join(errs...)
}

// Close detaches the program from every interface it attached to (pinned
// attachments too: only a killed process leaves them) and frees it;
// attachments made by others are not touched.
func (p *Program) Close() error { return p.close(true) }

// Release closes the program's descriptors but leaves its pins, so pinned
// attachments keep forwarding as after a crash and the next process can
// take them over.
func (p *Program) Release() error { return p.close(false) }

func (p *Program) close(unpin bool) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	var errs []error
	for ifindex, l := range p.links {
		var err error
		if unpin {
			err = l.Unpin()
		}
		if err := errors.Join(err, l.Close()); err != nil {
			errs = append(errs, fmt.Errorf("close attachment of ifindex %d: %w", ifindex, err))
		}
		delete(p.links, ifindex)
		delete(p.pins, ifindex)
	}
	errs = append(errs, p.objs.Close())
	return errors.Join(errs...)
}

// Source returns where the program looks routes up.
func (p *Program) Source() Source { return p.opts.Source }

// Prog returns the XDP program, for BPF_PROG_RUN tests and benchmarks.
func (p *Program) Prog() *ebpf.Program { return p.objs.XdpRouter }

// Configure registers an ingress interface with an engine without
// attaching (tests and BPF_PROG_RUN use it; Attach calls it).
func (p *Program) Configure(ifindex int, e Engine) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.configure(ifindex, e)
}

func (p *Program) configure(ifindex int, e Engine) error {
	if e > EngineAFXDP {
		return fmt.Errorf("ifindex %d: unknown engine %d", ifindex, e)
	}
	slot, ok := p.slots[ifindex]
	if !ok {
		if len(p.free) == 0 {
			return fmt.Errorf("ifindex %d: already serving %d interfaces", ifindex, MaxIfaces)
		}
		slot, p.free = p.free[len(p.free)-1], p.free[:len(p.free)-1]
		// A reused slot starts from zero counters.
		if err := p.objs.Counters.Put(slot, make([]routerCounters, ebpf.MustPossibleCPU())); err != nil {
			return fmt.Errorf("reset counters of slot %d: %w", slot, err)
		}
		p.slots[ifindex] = slot
	}
	if err := p.objs.Ifaces.Put(uint32(ifindex), ifaceEntry(e, slot, p.policies[ifindex])); err != nil {
		return fmt.Errorf("configure ifindex %d: %w", ifindex, err)
	}
	return nil
}

// AttachOptions control one attachment.
type AttachOptions struct {
	// Generic attaches in generic (SKB) mode instead of native: slower,
	// only for drivers without native XDP. Logged.
	Generic bool
}

// Attach attaches the program to an interface (like `ip link set IF xdp
// obj router.o`, but as a bpf_link) with the given engine, and adds the
// interface to the redirect map. It must be called in the interface's
// network namespace.
func (p *Program) Attach(ifindex int, e Engine, o AttachOptions) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if _, ok := p.links[ifindex]; ok {
		return p.configure(ifindex, e)
	}
	if err := p.configure(ifindex, e); err != nil {
		return err
	}
	if err := p.addEgress(ifindex); err != nil {
		return err
	}
	flags := link.XDPDriverMode
	if o.Generic {
		flags = link.XDPGenericMode
		slog.Warn("attaching XDP in generic mode: slower than native", "ifindex", ifindex)
	}
	pin := p.linkPin(ifindex)
	if pin != "" {
		// A pinned attachment of an earlier process (one killed before it
		// could detach) keeps forwarding: take it over by swapping in this
		// program, atomically, instead of detaching it.
		if l, err := link.LoadPinnedLink(pin, nil); err == nil {
			err := l.Update(p.objs.XdpRouter)
			if err == nil {
				p.links[ifindex], p.pins[ifindex] = l, pin
				slog.Info("took over the XDP attachment of an earlier process", "ifindex", ifindex)
				return nil
			}
			slog.Warn("stale XDP attachment pin, replacing it", "pin", pin, "err", err)
			_ = l.Unpin()
			l.Close()
		}
	}
	l, err := link.AttachXDP(link.XDPOptions{Program: p.objs.XdpRouter, Interface: ifindex, Flags: flags})
	if err != nil {
		return fmt.Errorf("attach xdp to ifindex %d (%s mode): %w", ifindex, map[bool]string{false: "native", true: "generic"}[o.Generic], err)
	}
	if pin != "" {
		// Pinned, the attachment outlives this process if it is killed.
		if err := l.Pin(pin); err != nil {
			l.Close()
			return fmt.Errorf("pin the XDP attachment of ifindex %d: %w", ifindex, err)
		}
	}
	p.links[ifindex], p.pins[ifindex] = l, pin
	return nil
}

// linkPin is where an interface's attachment is pinned ("" without
// Options.PinPath): named by the calling thread's network namespace and
// the ifindex, since ifindexes repeat across namespaces.
func (p *Program) linkPin(ifindex int) string {
	if p.opts.PinPath == "" {
		return ""
	}
	var st unix.Stat_t
	if err := unix.Stat("/proc/thread-self/ns/net", &st); err != nil {
		return filepath.Join(p.opts.PinPath, fmt.Sprintf("link-%d", ifindex))
	}
	return filepath.Join(p.opts.PinPath, fmt.Sprintf("link-%d-%d", st.Ino, ifindex))
}

// DetachStale detaches every attachment pinned under Options.PinPath that
// this program did not attach or take over: those an earlier process left
// on interfaces no longer configured, which would otherwise forward with
// a FIB nobody updates. It returns how many it detached.
func (p *Program) DetachStale() (int, error) {
	if p.opts.PinPath == "" {
		return 0, nil
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	paths, err := filepath.Glob(filepath.Join(p.opts.PinPath, "link-*"))
	if err != nil {
		return 0, err
	}
	ours := map[string]bool{}
	for _, pin := range p.pins {
		ours[pin] = true
	}
	n := 0
	var errs []error
	for _, path := range paths {
		if ours[path] {
			continue
		}
		l, err := link.LoadPinnedLink(path, nil)
		if err != nil {
			errs = append(errs, fmt.Errorf("stale attachment %s: %w", path, err))
			continue
		}
		if err := errors.Join(l.Unpin(), l.Close()); err != nil {
			errs = append(errs, fmt.Errorf("detach stale attachment %s: %w", path, err))
			continue
		}
		slog.Info("detached a stale XDP attachment of an earlier process", "pin", path)
		n++
	}
	return n, errors.Join(errs...)
}

// Detach removes the program from an interface it attached to.
func (p *Program) Detach(ifindex int) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	l, ok := p.links[ifindex]
	if !ok {
		return fmt.Errorf("ifindex %d: not attached by this program", ifindex)
	}
	delete(p.links, ifindex)
	delete(p.pins, ifindex)
	var errs []error
	errs = append(errs, l.Unpin()) // nothing to do when not pinned
	errs = append(errs, l.Close())
	if err := p.objs.Ifaces.Delete(uint32(ifindex)); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		errs = append(errs, err)
	}
	if slot, ok := p.slots[ifindex]; ok {
		delete(p.slots, ifindex)
		p.free = append(p.free, slot)
	}
	return errors.Join(errs...)
}

// SetEngine changes an interface's engine at once.
func (p *Program) SetEngine(ifindex int, e Engine) error {
	return p.Configure(ifindex, e)
}

// AddEgress lets the program redirect to an interface (a devmap entry). It
// must be called in the interface's network namespace.
func (p *Program) AddEgress(ifindex int) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.addEgress(ifindex)
}

func (p *Program) addEgress(ifindex int) error {
	v := routerBpfDevmapVal{Ifindex: uint32(ifindex)}
	if err := p.objs.TxPorts.Put(uint32(ifindex), v); err != nil {
		return fmt.Errorf("add ifindex %d to the redirect map: %w", ifindex, err)
	}
	return nil
}

// RemoveEgress stops redirects to an interface; frames routed there go to
// the kernel.
func (p *Program) RemoveEgress(ifindex int) error {
	if err := p.objs.TxPorts.Delete(uint32(ifindex)); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return fmt.Errorf("remove ifindex %d from the redirect map: %w", ifindex, err)
	}
	return nil
}

// AddLocal marks an address as the router's own: frames to it go to the
// kernel.
func (p *Program) AddLocal(a netip.Addr) error {
	a = a.Unmap()
	var err error
	if a.Is4() {
		p.localMu.Lock()
		defer p.localMu.Unlock()
		b := a.As4()
		// The filter bit first: the program must never see the address
		// in local4 behind a clear bit.
		if !p.locals[b] {
			h := localBit(b)
			if p.bitRefs[h]++; p.bitRefs[h] == 1 {
				p.bits.W[(h>>6)&(localBitsWords-1)] |= 1 << (h & 63)
				err = p.objs.Local4Bits.Put(uint32(0), &p.bits)
			}
			p.locals[b] = true
		}
		if err == nil {
			err = p.objs.Local4.Put(b, uint8(1))
		}
	} else {
		err = p.objs.Local6.Put(a.As16(), uint8(1))
	}
	if err != nil {
		return fmt.Errorf("add local address %s: %w", a, err)
	}
	return nil
}

// RemoveLocal forgets a local address.
func (p *Program) RemoveLocal(a netip.Addr) error {
	a = a.Unmap()
	var err error
	if a.Is4() {
		p.localMu.Lock()
		defer p.localMu.Unlock()
		b := a.As4()
		err = p.objs.Local4.Delete(b)
		if (err == nil || errors.Is(err, ebpf.ErrKeyNotExist)) && p.locals[b] {
			// After the delete: the bit goes when no other address has it.
			delete(p.locals, b)
			h := localBit(b)
			if p.bitRefs[h]--; p.bitRefs[h] == 0 {
				delete(p.bitRefs, h)
				p.bits.W[(h>>6)&(localBitsWords-1)] &^= 1 << (h & 63)
				if perr := p.objs.Local4Bits.Put(uint32(0), &p.bits); perr != nil {
					err = perr
				}
			}
		}
	} else {
		err = p.objs.Local6.Delete(a.As16())
	}
	if err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return fmt.Errorf("remove local address %s: %w", a, err)
	}
	return nil
}

// XSKMap returns the AF_XDP socket map; socket (slot, queue) goes at key
// slot*MaxQueues + queue.
func (p *Program) XSKMap() *ebpf.Map { return p.objs.Xsks }

// AddXSKEgress lets engine afxdp steer frames routed to ifindex to the
// AF_XDP workers: call it once the interface has a socket on every
// worker's queue. Frames routed elsewhere go to the kernel.
func (p *Program) AddXSKEgress(ifindex int) error {
	if err := p.objs.XskEgress.Put(uint32(ifindex), uint8(1)); err != nil {
		return fmt.Errorf("add ifindex %d to the AF_XDP egress map: %w", ifindex, err)
	}
	return nil
}

// RemoveXSKEgress stops steering frames routed to ifindex to the AF_XDP
// workers; the kernel forwards them.
func (p *Program) RemoveXSKEgress(ifindex int) error {
	if err := p.objs.XskEgress.Delete(uint32(ifindex)); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return fmt.Errorf("remove ifindex %d from the AF_XDP egress map: %w", ifindex, err)
	}
	return nil
}

// Slot returns an interface's counter and XSKMAP slot.
func (p *Program) Slot(ifindex int) (uint32, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	s, ok := p.slots[ifindex]
	return s, ok
}

// Counters returns an interface's counters summed over CPUs.
func (p *Program) Counters(ifindex int) (Counters, error) {
	per, err := p.CountersPerCPU(ifindex)
	var c Counters
	for _, v := range per {
		for i := range c {
			c[i] += v[i]
		}
	}
	return c, err
}

// CountersPerCPU returns an interface's counters on each CPU (index =
// CPU): which CPUs did its work, one per queue under the affinity plan.
func (p *Program) CountersPerCPU(ifindex int) ([]Counters, error) {
	slot, ok := p.Slot(ifindex)
	if !ok {
		return nil, fmt.Errorf("ifindex %d: not served by this program", ifindex)
	}
	var per []routerCounters
	if err := p.objs.Counters.Lookup(slot, &per); err != nil {
		return nil, fmt.Errorf("read counters of ifindex %d: %w", ifindex, err)
	}
	out := make([]Counters, len(per))
	for cpu, v := range per {
		out[cpu] = v.C
	}
	return out, nil
}

// SumCounters returns the counters of several interfaces added up.
func (p *Program) SumCounters(ifindexes ...int) (Counters, error) {
	var sum Counters
	for _, ifindex := range ifindexes {
		c, err := p.Counters(ifindex)
		if err != nil {
			return sum, err
		}
		for i := range sum {
			sum[i] += c[i]
		}
	}
	return sum, nil
}

// IsLocal reports whether an address is in the program's local map.
func (p *Program) IsLocal(a netip.Addr) bool {
	a = a.Unmap()
	var v uint8
	if a.Is4() {
		return p.objs.Local4.Lookup(a.As4(), &v) == nil
	}
	return p.objs.Local6.Lookup(a.As16(), &v) == nil
}

// localBitsWords is bpf/router.c's LOCAL_BITS_WORDS.
const localBitsWords = 1024

// localBit is the filter bit of an IPv4 address, as local4_hash in
// bpf/router.c (the address in network order, read as the host's
// little-endian word).
func localBit(a [4]byte) uint32 {
	w := uint32(a[0]) | uint32(a[1])<<8 | uint32(a[2])<<16 | uint32(a[3])<<24
	return (w * 2654435761) >> 16
}

// setLocalBits builds the local4 filter from the addresses in local4 (a
// reopened map) and writes it: every local address has its bit, counted
// per bit so a removal clears a bit only when no other address has it.
func (p *Program) setLocalBits() error {
	p.locals, p.bitRefs, p.bits = map[[4]byte]bool{}, map[uint32]int{}, routerLocalBits{}
	var a [4]byte
	var v uint8
	it := p.objs.Local4.Iterate()
	for it.Next(&a, &v) {
		p.locals[a] = true
		h := localBit(a)
		p.bitRefs[h]++
		p.bits.W[(h>>6)&(localBitsWords-1)] |= 1 << (h & 63)
	}
	if err := it.Err(); err != nil {
		return fmt.Errorf("read local4: %w", err)
	}
	if err := p.objs.Local4Bits.Put(uint32(0), &p.bits); err != nil {
		return fmt.Errorf("write the local address filter: %w", err)
	}
	return nil
}
