package xdp

// Counter indexes Counters; the order is bpf/router.c's enum counter.
type Counter int

// Counters of one interface, as in bpf/router.c.
const (
	RxPackets Counter = iota
	RxBytes
	Forwarded
	ForwardedBytes
	ToAFXDP
	RedirectErr
	PassEngine
	PassNonIP
	PassARP
	PassVLAN
	PassL2Multicast
	PassIPMulticast
	PassMartian
	PassLinkLocal
	PassLocal
	PassTTL
	PassIPOptions
	PassExtHeader
	PassNoRoute
	PassUnreachable
	PassProhibit
	PassKernelRoute
	PassNeighbour
	PassMTU
	PassNoXSK
	PassNoForwarding
	PassRPFilter
	PassRedirect
	PassPolicy
	PassOtherHost
	PassRule
	PassEgress
	DropMalformed
	DropChecksum
	DropBlackhole
	DropRPFilter
	numCounters
)

// CounterNames are the counters' names, as metrics and `--json` use them.
var CounterNames = [numCounters]string{
	"rx_packets", "rx_bytes", "forwarded", "forwarded_bytes", "to_afxdp", "redirect_errors",
	"pass_engine", "pass_non_ip", "pass_arp", "pass_vlan", "pass_l2_multicast", "pass_ip_multicast",
	"pass_martian", "pass_link_local", "pass_local", "pass_ttl", "pass_ip_options", "pass_ext_header",
	"pass_no_route", "pass_unreachable", "pass_prohibit", "pass_kernel_route", "pass_neighbour",
	"pass_mtu", "pass_no_xsk", "pass_no_forwarding", "pass_rp_filter", "pass_redirect", "pass_policy", "pass_other_host", "pass_rule",
	"pass_egress",
	"drop_malformed", "drop_checksum", "drop_blackhole", "drop_rp_filter",
}

// Counters are one interface's counters summed over CPUs.
type Counters [numCounters]uint64

// Passed is the number of frames given to the kernel, all reasons.
func (c Counters) Passed() uint64 {
	var n uint64
	for i := PassEngine; i <= PassEgress; i++ {
		n += c[i]
	}
	return n
}

// Dropped is the number of frames dropped, all reasons.
func (c Counters) Dropped() uint64 {
	return c[DropMalformed] + c[DropChecksum] + c[DropBlackhole] + c[DropRPFilter]
}

// Map returns the non-zero counters by name.
func (c Counters) Map() map[string]uint64 {
	m := map[string]uint64{}
	for i, v := range c {
		if v != 0 {
			m[CounterNames[i]] = v
		}
	}
	return m
}
