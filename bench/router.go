package bench

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"runtime"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/xdprouter/xdprouter/bench/afxdpref"
	"github.com/xdprouter/xdprouter/control/kernelpolicy"
	"github.com/xdprouter/xdprouter/dataplane/engine"
	"github.com/xdprouter/xdprouter/dataplane/fib"
	"github.com/xdprouter/xdprouter/dataplane/fib/tablegen"
	"github.com/xdprouter/xdprouter/dataplane/xdp"
	"github.com/xdprouter/xdprouter/lab"
)

// router is the forwarding state of a run in the router namespace:
// xdprouter's FIB and, with full routes, the same table in the kernel. The
// FIB is filled from what the lab installed (its route and its permanent
// neighbour) until the control plane mirrors the kernel.
type router struct {
	l      *lab.Lab
	table  *fib.Table
	full   bool
	n4, n6 int
	source string
	kernel time.Duration // time to install the full table into the kernel
	load   time.Duration // time to load it into the FIB
}

// gatewayNexthop is the FIB's nexthop for the lab's gateway.
const gatewayNexthop = 1

// DefaultFullNexthops is how many nexthop IDs a full table's prefixes
// are spread over, round robin, unless Options.FullNexthops says: all lead
// to the gateway, but neighbouring prefixes have different results, so
// the FIB cannot merge their leaves (its worst case; a real router's
// prefixes cluster on a few upstreams, closer to 1).
const DefaultFullNexthops = 8

func newRouter(ctx context.Context, l *lab.Lab, o Options, progress func(string)) (*router, error) {
	r := &router{l: l, full: o.Routes == "full"}
	cfg := fib.Config{Nodes4: 16384, Leaves4: 32768, Nodes6: 16384, Leaves6: 32768, Nexthops: 16, ECMPGroups: 4}
	nhs := uint32(o.FullNexthops)
	if nhs == 0 {
		nhs = DefaultFullNexthops
	}
	if r.full {
		// The defaults hold a full table.
		cfg = fib.Config{Nexthops: int(max(16, nhs+gatewayNexthop)), ECMPGroups: 4}
	} else {
		nhs = 1 // the lab's one route
	}
	var err error
	if r.table, err = fib.New(cfg); err != nil {
		return nil, err
	}
	nh := fib.Nexthop{Ifindex: l.Egress.A.Index, SrcMAC: l.Egress.A.MAC, DstMAC: l.Egress.B.MAC, MTU: l.MTU, State: fib.Resolved}
	for id := range nhs {
		if err := r.table.SetNexthop(gatewayNexthop+id, nh); err != nil {
			r.close()
			return nil, err
		}
	}
	res := fib.MakeResult(fib.RouteNexthop, gatewayNexthop)
	routes := []fib.Route{{Prefix: l.RouteV4, Result: res}, {Prefix: l.RouteV6, Result: res}}
	if !r.full {
		if err := r.table.Load(routes); err != nil {
			r.close()
			return nil, err
		}
		return r, nil
	}
	tb, err := tablegen.Load(o.FullV4, o.FullV6, 1)
	if err != nil {
		r.close()
		return nil, err
	}
	r.n4, r.n6, r.source = len(tb.V4), len(tb.V6), tb.Source
	defaults := []netip.Prefix{netip.MustParsePrefix("0.0.0.0/0"), netip.MustParsePrefix("::/0")}
	all := append(append(append([]netip.Prefix{}, defaults...), tb.V4...), tb.V6...)
	for i, p := range all {
		routes = append(routes, fib.Route{Prefix: p, Result: fib.MakeResult(fib.RouteNexthop, gatewayNexthop+uint32(i)%nhs)})
	}
	t0 := time.Now()
	if err := r.table.Load(routes); err != nil {
		r.close()
		return nil, err
	}
	r.load = time.Since(t0)
	if progress != nil {
		st := r.table.Stats()
		progress(fmt.Sprintf("full table: %d IPv4 + %d IPv6 prefixes (%s) over %d nexthop IDs loaded into the FIB in %v (%.1f MiB); installing them into the kernel",
			r.n4, r.n6, r.source, nhs, r.load.Round(time.Millisecond), float64(st.TableBytes)/(1<<20)))
	}
	t0 = time.Now()
	if err := r.installKernel(ctx, all); err != nil {
		r.close()
		return nil, err
	}
	r.kernel = time.Since(t0)
	if progress != nil {
		progress(fmt.Sprintf("full table installed into the kernel in %v", r.kernel.Round(time.Millisecond)))
	}
	return r, nil
}

// installKernel adds every prefix to the router's kernel table via the
// lab's gateway (like `ip route add P via GW dev eth3 proto 213` each).
func (r *router) installKernel(ctx context.Context, ps []netip.Prefix) error {
	ns, err := netns.GetFromName(r.l.RouterNS)
	if err != nil {
		return fmt.Errorf("open netns %s: %w", r.l.RouterNS, err)
	}
	defer ns.Close()
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		return fmt.Errorf("netlink in %s: %w", r.l.RouterNS, err)
	}
	defer h.Close()
	eth3 := r.l.Egress.A.Index
	gw4, gw6 := net.IP(r.l.GatewayV4.AsSlice()), net.IP(r.l.GatewayV6.AsSlice())
	for i, p := range ps {
		if i%4096 == 0 && ctx.Err() != nil {
			return ctx.Err()
		}
		gw := gw4
		if p.Addr().Is6() {
			gw = gw6
		}
		bits := p.Addr().BitLen()
		route := &netlink.Route{LinkIndex: eth3, Gw: gw, Protocol: lab.RouteProtocol,
			Dst: &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), bits)}}
		if err := h.RouteAdd(route); err != nil && !errors.Is(err, unix.EEXIST) {
			return fmt.Errorf("ip route add %s via %s: %w", p, gw, err)
		}
	}
	return nil
}

// attach loads xdprouter's program with a FIB source and attaches it to
// the router's eth1 and eth2 with an engine.
func (r *router) attach(src xdp.Source, e xdp.Engine) (*xdp.Program, error) {
	eg := r.l.Egress
	prog, err := xdp.Load(r.table, xdp.Options{Source: src,
		Static: xdp.StaticHop{Ifindex: eg.A.Index, SrcMAC: eg.A.MAC, DstMAC: eg.B.MAC}})
	if err != nil {
		return nil, err
	}
	err = lab.InNamespace(r.l.RouterNS, func() error {
		for _, lk := range r.l.Ingress {
			if err := prog.Attach(lk.B.Index, e, xdp.AttachOptions{}); err != nil {
				return err
			}
		}
		return prog.AddEgress(eg.A.Index)
	})
	if err == nil {
		// The kernel's policy, as the daemon applies it: the fast path is
		// measured with the checks it runs in production.
		var s kernelpolicy.Snapshot
		s, err = kernelpolicy.Read(r.l.RouterNS, []int{r.l.Ingress[0].B.Index, r.l.Ingress[1].B.Index}, false)
		for ifindex, pol := range s.Policies {
			if err == nil {
				err = prog.SetPolicy(ifindex, pol)
			}
		}
	}
	if err == nil {
		for _, ifc := range []lab.Iface{r.l.Ingress[0].B, r.l.Ingress[1].B, eg.A} {
			for _, a := range []netip.Prefix{ifc.V4, ifc.V6} {
				if err = prog.AddLocal(a.Addr()); err != nil {
					break
				}
			}
		}
	}
	if err != nil {
		prog.Close()
		return nil, err
	}
	return prog, nil
}

// startEngine runs the AF_XDP workers for a program attached with engine
// afxdp: one per queue, worker q on CPU q.
func (r *router) startEngine(prog *xdp.Program, discard bool) (*engine.Engine, error) {
	return engine.Start(engine.Config{Namespace: r.l.RouterNS, Program: prog, Table: r.table,
		Interfaces: []int{r.l.Ingress[0].B.Index, r.l.Ingress[1].B.Index}, Egress: []int{r.l.Egress.A.Index},
		Queues: r.l.Queues, CPUs: r.workerCPUs(), Discard: discard})
}

// workerCPUs puts AF_XDP worker (or thread) q on CPU q.
func (r *router) workerCPUs() []int {
	var cpus []int
	for q := range r.l.Queues {
		cpus = append(cpus, q%runtime.NumCPU())
	}
	return cpus
}

// startRef runs the reference AF_XDP forwarder in the router's namespace
// with the same layout as the engine: eth1 and eth2 in, eth3 out to the
// sink, thread q on CPU q at SCHED_FIFO 1 (the engine's default).
// With prog (attached with engine afxdp) its sockets go into prog's
// XSKMAP where the engine's would, and prog steers to them.
func (r *router) startRef(ctx context.Context, prog *xdp.Program, rxOnly bool) (*afxdpref.Ref, error) {
	cfg := afxdpref.Config{Namespace: r.l.RouterNS,
		In: []int{r.l.Ingress[0].B.Index, r.l.Ingress[1].B.Index}, Out: r.l.Egress.A.Index,
		DstMAC: r.l.Egress.B.MAC, SrcMAC: r.l.Egress.A.MAC, Queues: r.l.Queues, CPUs: r.workerCPUs(), RxOnly: rxOnly, Priority: 1}
	if prog != nil {
		cfg.XSKMap = prog.XSKMap()
		for _, ifindex := range cfg.In {
			slot, ok := prog.Slot(ifindex)
			if !ok {
				return nil, fmt.Errorf("afxdp-ref: ifindex %d has no slot in the router program", ifindex)
			}
			cfg.KeyBase = append(cfg.KeyBase, slot*xdp.MaxQueues)
		}
		if err := prog.AddXSKEgress(cfg.Out); err != nil {
			return nil, err
		}
	}
	return afxdpref.Start(ctx, cfg)
}

func (r *router) close() {
	if r.table != nil {
		r.table.Close()
	}
}

func (r *router) describe() string {
	if !r.full {
		return fmt.Sprintf("1 route per family (%s, %s via the lab's gateway)", r.l.RouteV4, r.l.RouteV6)
	}
	return fmt.Sprintf("full table: %d IPv4 + %d IPv6 prefixes (%s) plus default routes, in the kernel (installed in %v) and the FIB (loaded in %v)",
		r.n4, r.n6, r.source, r.kernel.Round(time.Millisecond), r.load.Round(time.Millisecond))
}
