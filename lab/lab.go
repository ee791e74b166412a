// Package lab builds a router test bed (generator, router, sink) in network
// namespaces joined by multi-queue veth pairs: a generator namespace with two
// links into the router namespace (eth1, eth2), and the router's egress eth3
// into a sink namespace. The destination prefix is routed via a gateway that
// does not exist but has a permanent neighbour entry whose MAC is the sink's,
// so every forwarded frame lands on the sink without any address resolution.
//
// Addressing uses the benchmarking ranges 198.18.0.0/15 (RFC 2544) and
// 2001:2::/48 (RFC 5180). Nothing is created in the caller's namespace, and
// deleting the three namespaces removes every link.
package lab

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"regexp"
	"strings"

	"github.com/safchain/ethtool"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// RouteProtocol is the rtm_protocol of routes xdprouter installs itself
// (lab and tests); no routing daemon uses 213.
const RouteProtocol netlink.RouteProtocol = 213

// NamespacePrefix starts the name of every namespace a lab creates.
const NamespacePrefix = "xdpl-"

// ErrExists means a lab of that name is already up, usually left over from
// a killed run.
var ErrExists = errors.New("lab already exists")

// Config describes a lab; zero fields take the defaults.
type Config struct {
	// Name tells labs apart: namespaces are xdpl-NAME-gen, -rtr and -sink.
	Name string
	// Queues is the number of RX and TX queues of every veth (default 2).
	Queues int
	// MTU of every link (default 1500).
	MTU int
	// RouteV4 and RouteV6 are routed via the nonexistent gateway on eth3.
	RouteV4, RouteV6 netip.Prefix
}

// Iface is one end of a lab link.
type Iface struct {
	NS    string // network namespace name
	Name  string
	Index int
	MAC   net.HardwareAddr
	V4    netip.Prefix // address and prefix length
	V6    netip.Prefix
}

// Link is a veth pair: A in the generator or router, B on the far side.
type Link struct {
	A, B Iface
}

// Lab is a lab that is up.
type Lab struct {
	Name     string
	Queues   int
	MTU      int
	GenNS    string
	RouterNS string
	SinkNS   string
	// Ingress are the generator's links into the router: A is gen1/gen2 in
	// the generator namespace, B is eth1/eth2 in the router.
	Ingress []Link
	// Egress is the router's eth3 (A) and the sink's sink0 (B).
	Egress Link
	// GatewayV4 and GatewayV6 do not exist; their permanent neighbour
	// entries carry the sink's MAC.
	GatewayV4, GatewayV6 netip.Addr
	RouteV4, RouteV6     netip.Prefix
}

var nameRE = regexp.MustCompile(`^[a-z0-9]{1,24}$`)

// Defaults returns cfg with its zero fields filled in.
func Defaults(cfg Config) Config {
	if cfg.Name == "" {
		cfg.Name = "lab"
	}
	if cfg.Queues == 0 {
		cfg.Queues = 2
	}
	if cfg.MTU == 0 {
		cfg.MTU = 1500
	}
	if !cfg.RouteV4.IsValid() {
		cfg.RouteV4 = netip.MustParsePrefix("198.19.0.0/16")
	}
	if !cfg.RouteV6.IsValid() {
		cfg.RouteV6 = netip.MustParsePrefix("2001:2:0:ff00::/56")
	}
	return cfg
}

// Validate reports every problem with cfg at once.
func (cfg Config) Validate() error {
	var errs []error
	if !nameRE.MatchString(cfg.Name) {
		errs = append(errs, fmt.Errorf("name %q: use 1-24 lowercase letters and digits", cfg.Name))
	}
	if cfg.Queues < 1 || cfg.Queues > 64 {
		errs = append(errs, fmt.Errorf("queues %d: use 1 to 64", cfg.Queues))
	}
	if cfg.MTU < 1280 || cfg.MTU > 65535 {
		errs = append(errs, fmt.Errorf("mtu %d: use 1280 to 65535 (IPv6 needs 1280)", cfg.MTU))
	}
	if !cfg.RouteV4.Addr().Is4() {
		errs = append(errs, fmt.Errorf("route-v4 %s is not IPv4", cfg.RouteV4))
	}
	if !cfg.RouteV6.Addr().Is6() || cfg.RouteV6.Addr().Is4In6() {
		errs = append(errs, fmt.Errorf("route-v6 %s is not IPv6", cfg.RouteV6))
	}
	return errors.Join(errs...)
}

// Namespaces returns the generator, router and sink namespace names of a lab.
func Namespaces(name string) (gen, router, sink string) {
	p := NamespacePrefix + name
	return p + "-gen", p + "-rtr", p + "-sink"
}

// plan fills in the fixed layout of a lab: names, MACs and addresses.
func plan(cfg Config) *Lab {
	gen, rtr, sink := Namespaces(cfg.Name)
	l := &Lab{
		Name: cfg.Name, Queues: cfg.Queues, MTU: cfg.MTU,
		GenNS: gen, RouterNS: rtr, SinkNS: sink,
		GatewayV4: netip.MustParseAddr("198.18.3.254"),
		GatewayV6: netip.MustParseAddr("2001:2:0:3::fe"),
		RouteV4:   cfg.RouteV4.Masked(),
		RouteV6:   cfg.RouteV6.Masked(),
	}
	end := func(ns, name string, link, host byte) Iface {
		return Iface{
			NS: ns, Name: name,
			MAC: net.HardwareAddr{0x02, 0, 0, 0, link, host},
			V4:  netip.PrefixFrom(netip.AddrFrom4([4]byte{198, 18, link, host}), 24),
			V6: netip.PrefixFrom(netip.AddrFrom16([16]byte{0x20, 0x01, 0, 2, 0, 0, 0, link,
				0, 0, 0, 0, 0, 0, 0, host}), 64),
		}
	}
	for i := byte(1); i <= 2; i++ {
		l.Ingress = append(l.Ingress, Link{
			A: end(gen, fmt.Sprintf("gen%d", i), i, 2),
			B: end(rtr, fmt.Sprintf("eth%d", i), i, 1),
		})
	}
	l.Egress = Link{A: end(rtr, "eth3", 3, 1), B: end(sink, "sink0", 3, 2)}
	return l
}

// stepHook, when set by a test, runs before each named set-up step and can
// fail it, to prove that a failure mid-setup leaves nothing behind.
var stepHook func(step string) error

func step(name string) error {
	if stepHook != nil {
		return stepHook(name)
	}
	return nil
}

// Up builds a lab (like a script of `ip netns add`, `ip link add ... type
// veth`, `ip addr add`, `ip route add`, `ip neigh add ... nud permanent`).
// On any error everything it created is removed again.
func Up(ctx context.Context, cfg Config) (*Lab, error) {
	if err := RequireRoot(); err != nil {
		return nil, err
	}
	cfg = Defaults(cfg)
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("lab config: %w", err)
	}
	l := plan(cfg)
	for _, ns := range []string{l.GenNS, l.RouterNS, l.SinkNS} {
		if namespaceExists(ns) {
			return nil, fmt.Errorf("%w: namespace %s is present (left over from a killed run?): run 'xdpbench lab down --name %s'", ErrExists, ns, cfg.Name)
		}
	}
	if err := l.build(ctx); err != nil {
		if derr := l.Down(); derr != nil {
			return nil, fmt.Errorf("lab %s: %w (and tearing down: %v)", cfg.Name, err, derr)
		}
		return nil, fmt.Errorf("lab %s: %w", cfg.Name, err)
	}
	return l, nil
}

func (l *Lab) build(ctx context.Context) error {
	for _, ns := range []string{l.GenNS, l.RouterNS, l.SinkNS} {
		if err := step("netns " + ns); err != nil {
			return err
		}
		if err := createNamespace(ns); err != nil {
			return err
		}
	}
	links := append(append([]Link{}, l.Ingress...), l.Egress)
	for _, lk := range links {
		if err := ctx.Err(); err != nil {
			return err
		}
		if err := step("veth " + lk.A.Name); err != nil {
			return err
		}
		if err := l.addVeth(lk); err != nil {
			return err
		}
	}
	for _, lk := range links {
		for _, ifc := range []*Iface{&lk.A, &lk.B} {
			if err := step("configure " + ifc.Name); err != nil {
				return err
			}
			if err := configureIface(ifc); err != nil {
				return err
			}
		}
	}
	for _, lk := range links {
		for _, ifc := range []Iface{lk.A, lk.B} {
			if err := enableGRO(ifc); err != nil {
				return err
			}
		}
	}
	// configureIface filled in the ifindexes on copies; read them back.
	if err := l.refresh(); err != nil {
		return err
	}
	if err := step("router"); err != nil {
		return err
	}
	return l.configureRouter()
}

func (l *Lab) addVeth(lk Link) error {
	nsA, err := netns.GetFromName(lk.A.NS)
	if err != nil {
		return fmt.Errorf("open netns %s: %w", lk.A.NS, err)
	}
	defer nsA.Close()
	nsB, err := netns.GetFromName(lk.B.NS)
	if err != nil {
		return fmt.Errorf("open netns %s: %w", lk.B.NS, err)
	}
	defer nsB.Close()
	veth := &netlink.Veth{
		LinkAttrs: netlink.LinkAttrs{
			Name:         lk.A.Name,
			HardwareAddr: lk.A.MAC,
			MTU:          l.MTU,
			NumTxQueues:  l.Queues,
			NumRxQueues:  l.Queues,
			TxQLen:       -1,
			Namespace:    netlink.NsFd(nsA),
		},
		PeerName:         lk.B.Name,
		PeerHardwareAddr: lk.B.MAC,
		PeerNamespace:    netlink.NsFd(nsB),
		PeerTxQLen:       -1,
	}
	// The pair is created from the caller's namespace but lands directly in
	// the lab's: no name is ever taken in the host namespace.
	if err := netlink.LinkAdd(veth); err != nil {
		return fmt.Errorf("add veth %s/%s - %s/%s: %w", lk.A.NS, lk.A.Name, lk.B.NS, lk.B.Name, err)
	}
	return nil
}

// configureIface brings an interface up with its addresses.
func configureIface(ifc *Iface) error {
	h, err := handleAt(ifc.NS)
	if err != nil {
		return err
	}
	defer h.Close()
	link, err := h.LinkByName(ifc.Name)
	if err != nil {
		return fmt.Errorf("find %s in %s: %w", ifc.Name, ifc.NS, err)
	}
	err = InNamespace(ifc.NS, func() error {
		// No DAD, router solicitations or temporary addresses: the lab's
		// links carry only what tests send.
		for key, val := range map[string]string{
			"accept_dad": "0", "dad_transmits": "0", "router_solicitations": "0", "use_tempaddr": "0",
		} {
			if err := writeSysctl("net/ipv6/conf/"+ifc.Name+"/"+key, val); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return err
	}
	for _, p := range []netip.Prefix{ifc.V4, ifc.V6} {
		addr := &netlink.Addr{IPNet: prefixNet(p), Flags: unix.IFA_F_NODAD}
		if err := h.AddrAdd(link, addr); err != nil {
			return fmt.Errorf("ip addr add %s dev %s (netns %s): %w", p, ifc.Name, ifc.NS, err)
		}
	}
	if err := h.LinkSetUp(link); err != nil {
		return fmt.Errorf("ip link set %s up (netns %s): %w", ifc.Name, ifc.NS, err)
	}
	ifc.Index = link.Attrs().Index
	return nil
}

// enableGRO turns GRO on (like `ethtool -K IF gro on`). GRO gives a veth end
// NAPI, and only then does its peer accept XDP redirects (NDO_XMIT): without
// it, frames redirected into the veth are silently dropped. The veth must be
// up already, or its peer never learns that it may redirect.
func enableGRO(ifc Iface) error {
	return InNamespace(ifc.NS, func() error {
		e, err := ethtool.NewEthtool()
		if err != nil {
			return fmt.Errorf("ethtool: %w", err)
		}
		defer e.Close()
		if err := e.Change(ifc.Name, map[string]bool{"rx-gro": true}); err != nil {
			return fmt.Errorf("enable gro on %s (like `ethtool -K %s gro on`): %w", ifc.Name, ifc.Name, err)
		}
		return nil
	})
}

// configureRouter turns on forwarding, turns off reverse-path filtering (the
// generator's sources are random) and installs the route via the
// nonexistent gateway with its permanent neighbour entries.
func (l *Lab) configureRouter() error {
	err := InNamespace(l.RouterNS, func() error {
		keys := []string{"net/ipv4/ip_forward", "net/ipv6/conf/all/forwarding"}
		for _, k := range keys {
			if err := writeSysctl(k, "1"); err != nil {
				return err
			}
		}
		for _, dev := range []string{"all", "default", "eth1", "eth2", "eth3"} {
			if err := writeSysctl("net/ipv4/conf/"+dev+"/rp_filter", "0"); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return err
	}
	h, err := handleAt(l.RouterNS)
	if err != nil {
		return err
	}
	defer h.Close()
	eth3 := l.Egress.A.Index
	for _, gw := range []netip.Addr{l.GatewayV4, l.GatewayV6} {
		family := netlink.FAMILY_V4
		if gw.Is6() {
			family = netlink.FAMILY_V6
		}
		n := &netlink.Neigh{
			LinkIndex: eth3, Family: family, State: netlink.NUD_PERMANENT,
			IP: gw.AsSlice(), HardwareAddr: l.Egress.B.MAC,
		}
		if err := h.NeighAdd(n); err != nil {
			return fmt.Errorf("ip neigh add %s lladdr %s dev eth3 nud permanent: %w", gw, l.Egress.B.MAC, err)
		}
	}
	for _, r := range []struct {
		dst netip.Prefix
		gw  netip.Addr
	}{{l.RouteV4, l.GatewayV4}, {l.RouteV6, l.GatewayV6}} {
		route := &netlink.Route{
			LinkIndex: eth3, Dst: prefixNet(r.dst), Gw: r.gw.AsSlice(),
			Protocol: RouteProtocol,
		}
		if err := h.RouteAdd(route); err != nil {
			return fmt.Errorf("ip route add %s via %s dev eth3: %w", r.dst, r.gw, err)
		}
	}
	return nil
}

// Open returns the lab of that name, which must be up.
func Open(name string) (*Lab, error) {
	l := plan(Defaults(Config{Name: name}))
	for _, ns := range []string{l.GenNS, l.RouterNS, l.SinkNS} {
		if !namespaceExists(ns) {
			return nil, fmt.Errorf("lab %s is not up (no namespace %s): run 'xdpbench lab up --name %s'", name, ns, name)
		}
	}
	if err := l.refresh(); err != nil {
		return nil, err
	}
	return l, nil
}

// refresh reads ifindexes, queue counts, MTU and routes of a lab that is up.
func (l *Lab) refresh() error {
	set := func(ifc *Iface) error {
		h, err := handleAt(ifc.NS)
		if err != nil {
			return err
		}
		defer h.Close()
		link, err := h.LinkByName(ifc.Name)
		if err != nil {
			return fmt.Errorf("find %s in %s: %w", ifc.Name, ifc.NS, err)
		}
		a := link.Attrs()
		ifc.Index, ifc.MAC = a.Index, a.HardwareAddr
		l.Queues, l.MTU = a.NumRxQueues, a.MTU
		return nil
	}
	for i := range l.Ingress {
		if err := set(&l.Ingress[i].A); err != nil {
			return err
		}
		if err := set(&l.Ingress[i].B); err != nil {
			return err
		}
	}
	if err := set(&l.Egress.A); err != nil {
		return err
	}
	if err := set(&l.Egress.B); err != nil {
		return err
	}
	h, err := handleAt(l.RouterNS)
	if err != nil {
		return err
	}
	defer h.Close()
	routes, err := h.RouteListFiltered(netlink.FAMILY_ALL, &netlink.Route{Protocol: RouteProtocol}, netlink.RT_FILTER_PROTOCOL)
	if err != nil {
		return fmt.Errorf("list routes in %s: %w", l.RouterNS, err)
	}
	for _, r := range routes {
		if p, ok := netipPrefix(r.Dst); ok {
			if p.Addr().Is4() {
				l.RouteV4 = p
			} else {
				l.RouteV6 = p
			}
		}
	}
	return nil
}

// Down removes the lab's namespaces, and with them every link and XDP
// attachment inside. Removing a lab that is not there is not an error.
func (l *Lab) Down() error {
	return Down(l.Name)
}

// Down removes the lab of that name (like `ip netns del` of its three
// namespaces); a missing lab is not an error.
func Down(name string) error {
	gen, rtr, sink := Namespaces(name)
	var errs []error
	for _, ns := range []string{gen, rtr, sink} {
		errs = append(errs, deleteNamespace(ns))
	}
	return errors.Join(errs...)
}

// List returns the names of the labs whose namespaces exist.
func List() ([]string, error) {
	entries, err := os.ReadDir("/run/netns")
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("list /run/netns: %w", err)
	}
	seen := map[string]bool{}
	var names []string
	for _, e := range entries {
		n, ok := strings.CutPrefix(e.Name(), NamespacePrefix)
		if !ok {
			continue
		}
		for _, suffix := range []string{"-gen", "-rtr", "-sink"} {
			if base, ok := strings.CutSuffix(n, suffix); ok && !seen[base] {
				seen[base] = true
				names = append(names, base)
			}
		}
	}
	return names, nil
}

// prefixNet converts an address-with-length to the netlink form.
func prefixNet(p netip.Prefix) *net.IPNet {
	bits := 32
	if p.Addr().Is6() {
		bits = 128
	}
	return &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), bits)}
}

func netipPrefix(n *net.IPNet) (netip.Prefix, bool) {
	if n == nil {
		return netip.Prefix{}, false
	}
	a, ok := netip.AddrFromSlice(n.IP)
	if !ok {
		return netip.Prefix{}, false
	}
	ones, _ := n.Mask.Size()
	return netip.PrefixFrom(a.Unmap(), ones), true
}
