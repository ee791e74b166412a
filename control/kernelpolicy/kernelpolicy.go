// Package kernelpolicy reads what Linux applies to forwarded traffic
// besides the routing table (forwarding, rp_filter and send_redirects
// sysctls, policy rules, nftables and legacy iptables, tc filters and
// shaping qdiscs, the Ethernet destination check) and turns it into the
// XDP program's per-interface policy: what the fast path does natively,
// and which frames it hands to the kernel, with the reason for each.
//
// The kernel is the oracle: a setting the fast path does not implement
// sends every frame it could affect to the kernel, unless the operator
// explicitly bypasses it (Config.BypassFirewall).
package kernelpolicy

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"slices"
	"strconv"
	"strings"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/google/nftables"
	vnl "github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/xdprouter/xdprouter/dataplane/xdp"
	"github.com/xdprouter/xdprouter/internal/netnsrun"
)

// Snapshot is the kernel's policy for the served interfaces at one moment.
type Snapshot struct {
	// Policies are the XDP program's per-interface policies, by ifindex.
	Policies map[int]xdp.Policy `json:"-"`
	// Interfaces say, per served interface, what the fast path honours
	// natively and what goes to the kernel, and why.
	Interfaces []Interface `json:"interfaces"`
	// Kernel4 and Kernel6 are why every IPv4 or IPv6 frame goes to the
	// kernel (on every served interface); Bypassed what would have, but
	// the configuration bypasses it.
	Kernel4  []string `json:"kernel_ipv4,omitempty"`
	Kernel6  []string `json:"kernel_ipv6,omitempty"`
	Bypassed []string `json:"bypassed,omitempty"`
	// Rules name the policy rules whose selected frames go to the
	// kernel; Rules4 and Rules6 are their selectors, for the program.
	Rules          []string         `json:"rules,omitempty"`
	Rules4, Rules6 []xdp.PolicyRule `json:"-"`
}

// Interface is one served interface's part of a Snapshot.
type Interface struct {
	Ifindex int      `json:"ifindex"`
	Name    string   `json:"name"`
	Native  []string `json:"native"`           // settings the fast path implements here
	Kernel  []string `json:"kernel,omitempty"` // frames that go to the kernel, and why
}

// Read takes a Snapshot of the namespace ("" = ours) for the served
// interfaces. bypass keeps the fast path despite firewall, tc and policy
// rules (reported as Bypassed).
func Read(namespace string, ifindexes []int, bypass bool) (Snapshot, error) {
	var s Snapshot
	err := netnsrun.Do(namespace, func() error {
		var err error
		s, err = read(ifindexes, bypass)
		return err
	})
	return s, err
}

// read runs inside the namespace: /proc/sys/net and netlink are its own.
func read(ifindexes []int, bypass bool) (Snapshot, error) {
	s := Snapshot{Policies: map[int]xdp.Policy{}}
	links, err := vnl.LinkList()
	if err != nil {
		return s, fmt.Errorf("list links: %w", err)
	}
	byIndex := map[int]vnl.Link{}
	for _, l := range links {
		byIndex[l.Attrs().Index] = l
	}
	var k4, k6 []string // every frame of the family to the kernel
	kernelBoth := func(why string) { k4, k6 = append(k4, why), append(k6, why) }

	// Policy rules: the kernel's defaults are what one FIB does. A rule
	// ahead of main whose selectors the program sees (from, to, iif)
	// sends the frames it selects to the kernel; any other sends the
	// whole family; rules after main are only reached when main has no
	// route, and such frames go to the kernel anyway.
	var rules4, rules6, ruleWhy []string
	custom4 := 0 // IPv4 rules other than the defaults
	var sel4, sel6 []xdp.PolicyRule
	for _, fam := range []struct {
		f    int
		name string
		out  *[]string
		sel  *[]xdp.PolicyRule
		why  *[]string
	}{{vnl.FAMILY_V4, "ip", &rules4, &sel4, &ruleWhy}, {vnl.FAMILY_V6, "ip -6", &rules6, &sel6, &ruleWhy}} {
		rules, err := vnl.RuleList(fam.f)
		if err != nil {
			return s, fmt.Errorf("list %s rules: %w", fam.name, err)
		}
		seen := map[int]bool{}
		for _, r := range rules {
			if defaultRule(fam.f, r) {
				seen[r.Priority] = true
				continue
			}
			if fam.f == vnl.FAMILY_V4 {
				custom4++
			}
			if r.Priority > 32766 {
				continue // after main: only for destinations main has no route to
			}
			sel, ok, active := selector(r, byIndex)
			switch {
			case !active:
				// iif names no interface here: the rule selects nothing.
			case ok && len(*fam.sel) < xdp.MaxPolicyRules:
				*fam.sel = append(*fam.sel, sel)
				*fam.why = append(*fam.why, fmt.Sprintf("%s rule %s: the frames it selects", fam.name, ruleString(r)))
			default:
				*fam.out = append(*fam.out, fmt.Sprintf("%s rule %s (selects on what the fast path does not see, or more than %d rules)", fam.name, ruleString(r), xdp.MaxPolicyRules))
			}
		}
		// Without a default rule (ip rule del pref 32766), Linux no longer
		// looks in main: the FIB alone cannot say what it does.
		for _, pref := range defaultPrefs(fam.f) {
			if !seen[pref] {
				*fam.out = append(*fam.out, fmt.Sprintf("%s rule %d (a default rule) is missing", fam.name, pref))
			}
		}
	}
	k4, k6 = append(k4, rules4...), append(k6, rules6...)
	// Linux validates every IPv4 source on its FIB once custom rules or
	// local routes were added (fib_has_custom_rules and
	// fib_has_custom_local_routes, never cleared: what happened before
	// the daemon started cannot be seen, only what is there now).
	srcRoute := custom4 > 0
	if !srcRoute {
		locals, err := vnl.RouteListFiltered(vnl.FAMILY_V4, &vnl.Route{Table: unix.RT_TABLE_LOCAL, Type: unix.RTN_LOCAL},
			vnl.RT_FILTER_TABLE|vnl.RT_FILTER_TYPE)
		if err != nil {
			return s, fmt.Errorf("list table local: %w", err)
		}
		for _, r := range locals {
			if r.Protocol != unix.RTPROT_KERNEL {
				srcRoute = true
			}
		}
	}
	// nftables: any base chain on a hook forwarded traffic crosses.
	nft, err := nftablesHooks(byIndex)
	if err != nil {
		return s, err
	}
	for _, h := range nft {
		switch h.family {
		case 4:
			k4 = append(k4, h.why)
		case 6:
			k6 = append(k6, h.why)
		default:
			kernelBoth(h.why)
		}
	}
	// Legacy iptables: a loaded table sees every forwarded packet.
	for _, t := range []struct {
		file string
		out  *[]string
	}{{"ip_tables_names", &k4}, {"ip6_tables_names", &k6}} {
		b, err := os.ReadFile("/proc/thread-self/net/" + t.file)
		if err != nil {
			continue // module not loaded
		}
		for _, name := range strings.Fields(string(b)) {
			*t.out = append(*t.out, fmt.Sprintf("legacy %s table %s", strings.TrimSuffix(t.file, "_names"), name))
		}
	}

	all4 := sysctl("ipv4/conf/all")
	all6 := sysctl("ipv6/conf/all")
	perIface := map[int][]string{}  // ingress reasons to the kernel, per interface
	perEgress := map[int][]string{} // egress reasons: frames routed out of the interface
	for _, ifindex := range ifindexes {
		l, ok := byIndex[ifindex]
		if !ok {
			continue // gone: no frames arrive there
		}
		tcIn, tcOut, err := tcOf(l)
		if err != nil {
			return s, err
		}
		perIface[ifindex] = append(perIface[ifindex], tcIn...)
		perEgress[ifindex] = append(perEgress[ifindex], tcOut...)
	}
	if bypass {
		s.Bypassed = slices.Concat(k4, k6, ruleWhy)
		for _, ifindex := range ifindexes {
			s.Bypassed = append(s.Bypassed, perIface[ifindex]...)
			s.Bypassed = append(s.Bypassed, perEgress[ifindex]...)
		}
		k4, k6, perIface, perEgress = nil, nil, map[int][]string{}, map[int][]string{}
		sel4, sel6, ruleWhy = nil, nil, nil
	}
	egressCheck := false
	for _, why := range perEgress {
		egressCheck = egressCheck || len(why) > 0
	}
	s.Rules4, s.Rules6, s.Rules = sel4, sel6, ruleWhy
	// Not a firewall: never bypassed.
	for _, ifindex := range ifindexes {
		if l, ok := byIndex[ifindex]; ok && sysctl("ipv6/conf/"+l.Attrs().Name).int("disable_ipv6") > 0 {
			k6 = append(k6, "IPv6 disabled on "+l.Attrs().Name+" (disable_ipv6): nothing may leave there")
		}
	}
	s.Kernel4, s.Kernel6 = dedupe(k4), dedupe(k6)

	for _, ifindex := range ifindexes {
		l, ok := byIndex[ifindex]
		if !ok {
			continue
		}
		name := l.Attrs().Name
		c4, c6 := sysctl("ipv4/conf/"+name), sysctl("ipv6/conf/"+name)
		var pol xdp.Policy
		ifc := Interface{Ifindex: ifindex, Name: name}
		if mac := l.Attrs().HardwareAddr; len(mac) == 6 {
			pol.Flags |= xdp.MACCheck
			pol.MAC = mac
			ifc.Kernel = append(ifc.Kernel, "unicast to other MACs (Linux drops it, or an upper device, maybe in another namespace, owns the MAC)")
		}
		if c4.int("forwarding") <= 0 { // missing (-1): unknown, the kernel's
			pol.Flags |= xdp.NoForward4
			ifc.Kernel = append(ifc.Kernel, "IPv4: forwarding off (net.ipv4.conf."+name+".forwarding=0)")
		} else {
			ifc.Native = append(ifc.Native, "IPv4 forwarding switch")
		}
		if all6.int("forwarding") == 0 && c6.int("force_forwarding") <= 0 || c6.int("disable_ipv6") != 0 {
			pol.Flags |= xdp.NoForward6
			ifc.Kernel = append(ifc.Kernel, "IPv6: forwarding off (net.ipv6.conf.all.forwarding=0 or disable_ipv6)")
		} else {
			ifc.Native = append(ifc.Native, "IPv6 forwarding switch")
		}
		// Loose mode on an interface without an IPv4 address is strict in
		// Linux (no_addr: a route back by another device fails).
		addrs4, err := vnl.AddrList(l, vnl.FAMILY_V4)
		if err != nil {
			return s, fmt.Errorf("list IPv4 addresses of %s: %w", name, err)
		}
		switch rp := max(all4.int("rp_filter"), c4.int("rp_filter")); {
		case rp == 1 || rp >= 2 && len(addrs4) == 0:
			pol.Flags |= xdp.RPFilter
			ifc.Native = append(ifc.Native, fmt.Sprintf("rp_filter=%d (strict, on the FIB; connected sources to the kernel)", rp))
		case rp >= 2:
			pol.Flags |= xdp.RPFilter | xdp.RPLoose
			ifc.Native = append(ifc.Native, "rp_filter=2 (loose, on the FIB; connected sources to the kernel)")
		}
		if all4.int("send_redirects") > 0 || c4.int("send_redirects") > 0 {
			pol.Flags |= xdp.Redirects
			ifc.Kernel = append(ifc.Kernel, "IPv4 hairpin (send_redirects: the kernel sends a redirect)")
		}
		ifc.Kernel = append(ifc.Kernel, "IPv6 hairpin (the kernel sends a redirect)")
		ifc.Native = append(ifc.Native, "own-address and martian sources to the kernel", "trim to the IP length")
		if len(perIface[ifindex]) > 0 {
			pol.Flags |= xdp.Kernel4 | xdp.Kernel6
			for _, why := range perIface[ifindex] {
				ifc.Kernel = append(ifc.Kernel, "all: "+why)
			}
		}
		if len(perEgress[ifindex]) > 0 {
			pol.Flags |= xdp.EgressKernel
			for _, why := range perEgress[ifindex] {
				ifc.Kernel = append(ifc.Kernel, "routed out of "+name+": "+why)
			}
		}
		if egressCheck {
			pol.Flags |= xdp.EgressCheck
		}
		if srcRoute {
			pol.Flags |= xdp.SourceRoute
			ifc.Kernel = append(ifc.Kernel, "IPv4 sources routed in table local (custom rules or local routes: Linux validates every source)")
		}
		if l.Attrs().MasterIndex != 0 {
			// A bridge or bond port: Linux routes what arrives here as
			// its master's, with the master's settings.
			pol.Flags |= xdp.Kernel4 | xdp.Kernel6
			ifc.Kernel = append(ifc.Kernel, "all: enslaved to another device (a bridge or bond routes for it)")
		}
		if len(s.Kernel4) > 0 {
			pol.Flags |= xdp.Kernel4
		}
		if len(s.Kernel6) > 0 {
			pol.Flags |= xdp.Kernel6
		}
		s.Policies[ifindex] = pol
		s.Interfaces = append(s.Interfaces, ifc)
	}
	return s, nil
}

// defaultRule tells the rules every namespace starts with (lookup local,
// main and, for IPv4, default) from the operator's.
func defaultRule(family int, r vnl.Rule) bool {
	plain := r.Src == nil && r.Dst == nil && r.Mark == 0 && r.IifName == "" && r.OifName == "" &&
		r.Goto < 0 && (r.Type == 0 || r.Type == unix.RTN_UNICAST) && !r.Invert && r.SuppressPrefixlen < 0 && r.Tos == 0 &&
		r.IPProto <= 0 && r.Dport == nil && r.Sport == nil && r.UIDRange == nil
	if !plain {
		return false
	}
	switch {
	case r.Priority == 0 && r.Table == unix.RT_TABLE_LOCAL:
		return true
	case r.Priority == 32766 && r.Table == unix.RT_TABLE_MAIN:
		return true
	case r.Priority == 32767 && r.Table == unix.RT_TABLE_DEFAULT && family == vnl.FAMILY_V4:
		return true
	}
	return false
}

// selector returns a rule's selector when the program can match it
// (from, to and iif only, not inverted); active is false when its iif
// names no interface of the namespace (the kernel keeps such a rule
// detached: it selects nothing).
func selector(r vnl.Rule, byIndex map[int]vnl.Link) (sel xdp.PolicyRule, ok, active bool) {
	if r.IifName != "" {
		active = false
		for _, l := range byIndex {
			if l.Attrs().Name == r.IifName {
				sel.Iif, active = l.Attrs().Index, true
			}
		}
		if !active {
			return sel, false, false
		}
	}
	if r.Mark != 0 || r.Mask != nil || r.OifName != "" || r.Invert || r.Tos != 0 || r.IPProto > 0 ||
		r.Dport != nil || r.Sport != nil || r.UIDRange != nil || r.SuppressIfgroup >= 0 {
		return sel, false, true
	}
	if r.Src != nil {
		sel.Src = prefixOf(r.Src)
	}
	if r.Dst != nil {
		sel.Dst = prefixOf(r.Dst)
	}
	return sel, true, true
}

func prefixOf(n *net.IPNet) netip.Prefix {
	a, _ := netip.AddrFromSlice(n.IP)
	ones, _ := n.Mask.Size()
	return netip.PrefixFrom(a.Unmap(), ones).Masked()
}

// defaultPrefs are the priorities of the rules a namespace starts with.
func defaultPrefs(family int) []int {
	if family == vnl.FAMILY_V4 {
		return []int{0, 32766, 32767}
	}
	return []int{0, 32766}
}

func ruleString(r vnl.Rule) string {
	var b strings.Builder
	fmt.Fprintf(&b, "%d:", r.Priority)
	if r.Src != nil {
		fmt.Fprintf(&b, " from %s", r.Src)
	}
	if r.Dst != nil {
		fmt.Fprintf(&b, " to %s", r.Dst)
	}
	if r.IifName != "" {
		fmt.Fprintf(&b, " iif %s", r.IifName)
	}
	if r.OifName != "" {
		fmt.Fprintf(&b, " oif %s", r.OifName)
	}
	if r.Mark != 0 {
		fmt.Fprintf(&b, " fwmark %#x", r.Mark)
	}
	// The netlink library does not report the rule's action (rtm_type):
	// a rule with neither table nor goto is blackhole, unreachable or
	// prohibit.
	switch {
	case r.Goto >= 0:
		fmt.Fprintf(&b, " goto %d", r.Goto)
	case r.Table == 0:
		b.WriteString(" blackhole/unreachable/prohibit")
	default:
		fmt.Fprintf(&b, " lookup %d", r.Table)
	}
	return b.String()
}

// nftHook is a base chain forwarded traffic crosses; family 4, 6 or 0
// (both).
type nftHook struct {
	family int
	why    string
}

// nftablesHooks lists the base chains that see forwarded traffic and can
// change it: prerouting, forward and postrouting of the ip, ip6 and inet
// families, and ingress/egress of netdev (and inet ingress). A chain with
// no rule and an accept policy changes nothing and is left out.
func nftablesHooks(byIndex map[int]vnl.Link) ([]nftHook, error) {
	c, err := nftables.New()
	if err != nil {
		return nil, fmt.Errorf("nftables: %w", err)
	}
	defer c.CloseLasting()
	chains, err := c.ListChains()
	if err != nil {
		if errors.Is(err, unix.EPROTONOSUPPORT) || errors.Is(err, unix.ENOENT) {
			return nil, nil // no nf_tables in this kernel
		}
		return nil, fmt.Errorf("list nftables chains: %w", err)
	}
	var out []nftHook
	for _, ch := range chains {
		if ch.Hooknum == nil || ch.Table == nil {
			continue
		}
		fam := 0
		switch ch.Table.Family {
		case nftables.TableFamilyIPv4:
			fam = 4
		case nftables.TableFamilyIPv6:
			fam = 6
		case nftables.TableFamilyINet, nftables.TableFamilyNetdev:
		default:
			continue // arp, bridge: not forwarded IP
		}
		hook := *ch.Hooknum
		var hookName string
		if ch.Table.Family == nftables.TableFamilyNetdev {
			switch hook {
			case unix.NF_NETDEV_INGRESS:
				hookName = "ingress"
			case unix.NF_NETDEV_EGRESS:
				hookName = "egress"
			default:
				continue
			}
		} else {
			switch hook {
			case unix.NF_INET_PRE_ROUTING:
				hookName = "prerouting"
			case unix.NF_INET_FORWARD:
				hookName = "forward"
			case unix.NF_INET_POST_ROUTING:
				hookName = "postrouting"
			case nfInetIngress:
				hookName = "ingress"
			default:
				continue // input, output: local traffic only
			}
		}
		rules, err := c.GetRules(ch.Table, ch)
		if err != nil {
			return nil, fmt.Errorf("list rules of nftables chain %s %s: %w", ch.Table.Name, ch.Name, err)
		}
		drops := ch.Policy != nil && *ch.Policy == nftables.ChainPolicyDrop
		if len(rules) == 0 && !drops {
			continue
		}
		famName := map[nftables.TableFamily]string{nftables.TableFamilyIPv4: "ip", nftables.TableFamilyIPv6: "ip6",
			nftables.TableFamilyINet: "inet", nftables.TableFamilyNetdev: "netdev"}[ch.Table.Family]
		plural := "s"
		if len(rules) == 1 {
			plural = ""
		}
		why := fmt.Sprintf("nftables table %s %s chain %s (hook %s, %d rule%s", famName, ch.Table.Name, ch.Name, hookName, len(rules), plural)
		if drops {
			why += ", policy drop"
		}
		why += ")"
		out = append(out, nftHook{family: fam, why: why})
	}
	return out, nil
}

// tcOf lists what tc does on an interface: filters on its ingress (the
// interface's frames to the kernel) and filters or shaping qdiscs on its
// egress (the frames routed out of it to the kernel).
func tcOf(l vnl.Link) (ingress, egress []string, err error) {
	name := l.Attrs().Name
	qdiscs, err := vnl.QdiscList(l)
	if err != nil {
		return nil, nil, fmt.Errorf("list qdiscs of %s: %w", name, err)
	}
	for _, q := range qdiscs {
		kind := q.Type()
		switch kind {
		case "mq", "fq_codel", "noqueue", "pfifo_fast", "pfifo", "clsact", "ingress":
		case "fq":
			// fq only paces unless it caps a flow's rate (maxrate).
			if fq, ok := q.(*vnl.Fq); ok && (fq.FlowMaxRate == 0 || fq.FlowMaxRate == ^uint32(0)) {
				continue
			}
			egress = append(egress, fmt.Sprintf("qdisc fq with maxrate on %s (devmap redirect skips the qdisc)", name))
		default:
			egress = append(egress, fmt.Sprintf("qdisc %s on %s (devmap redirect skips the qdisc)", kind, name))
		}
	}
	for _, dir := range []struct {
		parent uint32
		out    *[]string
		what   string
	}{{vnl.HANDLE_MIN_INGRESS, &ingress, "ingress"}, {vnl.HANDLE_MIN_EGRESS, &egress, "egress"}, {vnl.HANDLE_INGRESS, &ingress, "ingress"}} {
		fs, err := vnl.FilterList(l, dir.parent)
		if err != nil {
			if errors.Is(err, unix.EINVAL) || errors.Is(err, unix.ENOENT) {
				continue // no such qdisc
			}
			return nil, nil, fmt.Errorf("list tc %s filters of %s: %w", dir.what, name, err)
		}
		if len(fs) > 0 {
			*dir.out = append(*dir.out, fmt.Sprintf("tc %s filters on %s (%d)", dir.what, name, len(fs)))
		}
	}
	// tcx (Linux 6.6): BPF programs on the same hooks, without a qdisc.
	for _, dir := range []struct {
		attach ebpf.AttachType
		out    *[]string
		what   string
	}{{ebpf.AttachTCXIngress, &ingress, "ingress"}, {ebpf.AttachTCXEgress, &egress, "egress"}} {
		r, err := link.QueryPrograms(link.QueryOptions{Target: l.Attrs().Index, Attach: dir.attach})
		if err != nil {
			if errors.Is(err, ebpf.ErrNotSupported) || errors.Is(err, unix.EINVAL) {
				continue // no tcx in this kernel
			}
			return nil, nil, fmt.Errorf("query tcx %s programs of %s: %w", dir.what, name, err)
		}
		if len(r.Programs) > 0 {
			*dir.out = append(*dir.out, fmt.Sprintf("tcx %s programs on %s (%d)", dir.what, name, len(r.Programs)))
		}
	}
	return dedupe(ingress), dedupe(egress), nil
}

// conf reads one sysctl directory of /proc/sys/net.
type conf string

func sysctl(dir string) conf { return conf("/proc/sys/net/" + dir + "/") }

// int reads a number; -1 when the file is missing (an older kernel).
func (c conf) int(key string) int {
	b, err := os.ReadFile(string(c) + key)
	if err != nil {
		return -1
	}
	n, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		return -1
	}
	return n
}

func dedupe(s []string) []string {
	out := slices.Clone(s)
	slices.Sort(out)
	return slices.Compact(out)
}

// nfInetIngress is NF_INET_INGRESS (the inet family's ingress hook, Linux
// 5.10), which golang.org/x/sys does not name.
const nfInetIngress = 5
