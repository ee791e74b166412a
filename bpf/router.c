//go:build ignore

// xdp_router: classifies every frame of an interface and either forwards it
// (engine "xdp": FIB lookup, MAC rewrite, TTL/hop limit decrement with an
// incremental checksum update, devmap redirect), hands it to the AF_XDP
// socket of its queue (engine "afxdp"), drops it (blackhole, malformed) or
// passes it to the Linux stack untouched (every exception, engine "pass").
// A frame is rewritten only once it is certain to be redirected.

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>
#include "fib.h"

#ifndef AF_INET
#define AF_INET 2
#endif
#ifndef AF_INET6
#define AF_INET6 10
#endif

enum engine {
	ENGINE_PASS = 0,
	ENGINE_XDP = 1,
	ENGINE_AFXDP = 2,
};

enum fib_source {
	SOURCE_FIB = 0,    // our FIB (fib.h)
	SOURCE_KERNEL = 1, // bpf_fib_lookup: the kernel's FIB and neighbours
	SOURCE_STATIC = 2, // no lookup: every forwardable frame to static_* (the ceiling)
};

// counter indexes one per-interface counter; names in dataplane/xdp.
enum counter {
	C_RX_PACKETS,
	C_RX_BYTES,
	C_FORWARDED,
	C_FORWARDED_BYTES,
	C_TO_AFXDP,
	C_REDIRECT_ERR, // egress not in the devmap: passed to the kernel
	// To the kernel, by reason.
	C_PASS_ENGINE, // the interface's engine is "pass"
	C_PASS_NON_IP,
	C_PASS_ARP,
	C_PASS_VLAN,
	C_PASS_L2_MULTICAST, // multicast or broadcast destination MAC
	C_PASS_IP_MULTICAST, // multicast or broadcast destination address
	C_PASS_MARTIAN,      // loopback, unspecified or multicast source, 0/8 ...
	C_PASS_LINK_LOCAL,
	C_PASS_LOCAL, // a local address of the router
	C_PASS_TTL,   // TTL or hop limit <= 1
	C_PASS_IP_OPTIONS,
	C_PASS_EXT_HEADER,
	C_PASS_NO_ROUTE,
	C_PASS_UNREACHABLE,
	C_PASS_PROHIBIT,
	C_PASS_KERNEL_ROUTE, // throw, broadcast and other routes for the kernel
	C_PASS_NEIGHBOUR,    // nexthop unresolved, incomplete or failed
	C_PASS_MTU,          // larger than the egress MTU
	C_PASS_NO_XSK,       // engine afxdp with no socket on this queue or for the egress
	C_PASS_NO_FORWARDING, // forwarding off for the family on the ingress interface
	C_PASS_RP_FILTER,     // rp_filter on and the FIB cannot tell (connected source): the kernel validates it
	C_PASS_REDIRECT,      // egress = ingress and the kernel would send a redirect
	C_PASS_POLICY,        // a kernel setting the fast path does not implement (firewall, tc, rules)
	C_PASS_OTHER_HOST,    // unicast to another MAC than the interface's (Linux drops it, or an upper device takes it)
	C_PASS_RULE,          // selected by a policy rule (ip rule from/to/iif) before the main table
	C_PASS_EGRESS,        // the egress interface has tc filters or a shaping qdisc the kernel must apply
	// Dropped, by reason.
	C_DROP_MALFORMED,
	C_DROP_CHECKSUM,
	C_DROP_BLACKHOLE,
	C_DROP_RP_FILTER,  // rp_filter: the source's route does not pass (Linux drops)
	C_MAX,
};

// iface_flag is the kernel's policy for an ingress interface, as the
// control plane read it (sysctls, firewall, tc, rules). Zero is the
// permissive default: forward everything forwardable.
enum iface_flag {
	IF_NO_FWD4 = 1 << 0,     // net.ipv4.conf.IF.forwarding = 0
	IF_NO_FWD6 = 1 << 1,     // net.ipv6.conf.all.forwarding = 0 (and not force_forwarding), or disable_ipv6
	IF_KERNEL4 = 1 << 2,     // every IPv4 frame to the kernel (netfilter, tc, rules)
	IF_KERNEL6 = 1 << 3,     // every IPv6 frame to the kernel
	IF_RP_FILTER = 1 << 4,   // rp_filter strict (1), or loose with IF_RP_LOOSE (2): checked on the FIB
	IF_REDIRECTS = 1 << 5,   // send_redirects: IPv4 hairpin to the kernel
	IF_MAC_CHECK = 1 << 6,   // unicast to another MAC than mac goes to the kernel
	IF_RP_LOOSE = 1 << 7,    // rp_filter=2: any usable route back will do
	IF_SRC_ROUTE = 1 << 8,   // Linux validates every source on its FIB (custom local routes or rules exist)
	IF_EGRESS_KERNEL = 1 << 9, // as an egress: frames leaving here go to the kernel (tc egress filters, shaping qdisc)
	IF_EGRESS_CHECK = 1 << 10, // as an ingress: some egress has IF_EGRESS_KERNEL, look it up
};

// iface is an ingress interface's configuration.
struct iface {
	__u32 engine;
	__u32 slot;  // counters and XSKMAP row
	__u32 flags; // enum iface_flag
	__u8 mac[6];
	__u16 pad;
};

struct counters {
	__u64 c[C_MAX];
};

#define MAX_IFACES 64
#define MAX_QUEUES 64

// n_counters lets the loader check its counter names against the enum.
volatile const __u32 n_counters = C_MAX;
volatile const __u32 fib_source = SOURCE_FIB;
volatile const __u32 static_ifindex;
volatile const __u8 static_smac[6];
volatile const __u8 static_dmac[6];

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MAX_IFACES);
	__type(key, __u32); // ifindex
	__type(value, struct iface);
} ifaces SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, MAX_IFACES);
	__type(key, __u32); // slot
	__type(value, struct counters);
} counters SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, __u32); // network order
	__type(value, __u8);
} local4 SEC(".maps");

// local4_bits is a one-bit-per-hash filter in front of local4 (8 KiB, in
// cache): a clear bit proves an address is not local without the hash
// lookup, which every frame would otherwise pay twice (destination and
// source). Bits are set before an address enters local4 and cleared
// after it left.
#define LOCAL_BITS_WORDS 1024
struct local_bits {
	__u64 w[LOCAL_BITS_WORDS];
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct local_bits);
} local4_bits SEC(".maps");

// Policy rules (ip rule) before the main table whose selectors the
// program sees: a frame one of them selects goes to the kernel, which
// evaluates the rules; the others are what the main table alone says.
#define MAX_RULES 16

struct rule4 {
	__u32 src, smask, dst, dmask; // network order
	__u32 iif;                    // 0: any
	__u32 pad;
};

struct rules4 {
	__u32 n;
	__u32 pad;
	struct rule4 r[MAX_RULES];
};

struct rule6 {
	__u8 src[16], smask[16], dst[16], dmask[16];
	__u32 iif; // 0: any
	__u32 pad;
};

struct rules6 {
	__u32 n;
	__u32 pad;
	struct rule6 r[MAX_RULES];
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct rules4);
} policy_rules4 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct rules6);
} policy_rules6 SEC(".maps");

// rules4_present reports whether any IPv4 policy rule is matched here:
// then Linux validates a source through the rules too (on the reversed
// flow), which one FIB cannot, so rp_filter is the kernel's.
static __always_inline int rules4_present(void)
{
	__u32 zero = 0;
	struct rules4 *rs = bpf_map_lookup_elem(&policy_rules4, &zero);
	return rs && rs->n > 0;
}

// rule_selects4 reports whether a policy rule selects the frame.
static __always_inline int rule_selects4(__u32 ingress, __u32 src, __u32 dst)
{
	__u32 zero = 0;
	struct rules4 *rs = bpf_map_lookup_elem(&policy_rules4, &zero);
	if (!rs || rs->n == 0)
		return 0;
	for (__u32 i = 0; i < MAX_RULES; i++) {
		if (i >= rs->n)
			break;
		struct rule4 *r = &rs->r[i];
		if ((src & r->smask) == r->src && (dst & r->dmask) == r->dst && (!r->iif || r->iif == ingress))
			return 1;
	}
	return 0;
}

static __always_inline int masked_eq6(const __u8 *a, const __u8 *mask, const __u8 *want)
{
	__u64 a0 = *(__u64 *)a, a1 = *(__u64 *)(a + 8);
	return (a0 & *(__u64 *)mask) == *(__u64 *)want && (a1 & *(__u64 *)(mask + 8)) == *(__u64 *)(want + 8);
}

// rule_selects6 reports whether a policy rule selects the frame.
static __always_inline int rule_selects6(__u32 ingress, const __u8 *src, const __u8 *dst)
{
	__u32 zero = 0;
	struct rules6 *rs = bpf_map_lookup_elem(&policy_rules6, &zero);
	if (!rs || rs->n == 0)
		return 0;
	for (__u32 i = 0; i < MAX_RULES; i++) {
		if (i >= rs->n)
			break;
		struct rule6 *r = &rs->r[i];
		if (masked_eq6(src, r->smask, r->src) && masked_eq6(dst, r->dmask, r->dst) &&
		    (!r->iif || r->iif == ingress))
			return 1;
	}
	return 0;
}

// local4_hash is the filter's bit for an address in network order; Go's
// xdp.localBit computes the same.
static __always_inline __u32 local4_hash(__u32 a)
{
	return (a * 2654435761u) >> 16;
}

// is_local4 reports whether a (network order) is one of the router's
// IPv4 addresses.
static __always_inline int is_local4(__u32 a)
{
	__u32 zero = 0;
	struct local_bits *b = bpf_map_lookup_elem(&local4_bits, &zero);
	if (b) {
		__u32 h = local4_hash(a);
		if (!((b->w[(h >> 6) & (LOCAL_BITS_WORDS - 1)] >> (h & 63)) & 1))
			return 0;
	}
	return bpf_map_lookup_elem(&local4, &a) != NULL;
}

struct addr6 {
	__u8 a[16];
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, struct addr6);
	__type(value, __u8);
} local6 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_DEVMAP_HASH);
	__uint(max_entries, 256);
	__type(key, __u32);
	__type(value, struct bpf_devmap_val);
} tx_ports SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_XSKMAP);
	__uint(max_entries, MAX_IFACES * MAX_QUEUES);
	__type(key, __u32); // slot * MAX_QUEUES + queue
	__type(value, __u32);
} xsks SEC(".maps");

// xsk_egress holds the interfaces the AF_XDP engine can transmit on (a
// socket on every worker's queue): engine afxdp steers a frame to its
// socket only when its egress is one of them, else the kernel forwards it.
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MAX_IFACES);
	__type(key, __u32); // ifindex
	__type(value, __u8);
} xsk_egress SEC(".maps");

// hop is where a forwardable frame goes.
struct hop {
	__u32 ifindex;
	__u16 mtu; // 0: checked by the lookup already
	__u8 smac[6];
	__u8 dmac[6];
	__u32 id, gen; // the FIB nexthop and its generation (0: not from the FIB)
};

// xsk_meta is what engine afxdp hands its worker in front of each frame
// (XDP metadata, which AF_XDP copies into the UMEM too): the nexthop this
// program's lookup chose and that entry's generation (0: none, look up
// again). The worker forwards by it when the entry is unchanged (same
// generation), else looks up again. Every steered frame gets one; the
// worker clears magic after reading and zeroes it in frames it takes back
// unread, so a frame that came without metadata (a driver without
// support) never reads an older frame's.
struct xsk_meta {
	__u32 id;
	__u32 gen;
	__u32 magic;
};

#define XSK_META_MAGIC 0x78647231 // "xdr1" read as a big-endian word

// xsk_meta_layout puts struct xsk_meta and its magic into the object, so
// bpf2go generates the Go twin (the variable's type) and the loader can
// check the magic; the program never reads it.
volatile const struct xsk_meta xsk_meta_layout = {.magic = XSK_META_MAGIC};


struct pkt {
	void *data;
	void *end;
	struct counters *c;
	struct iface *cfg;
	struct xdp_md *ctx;
};

static __always_inline int pass(struct pkt *p, int reason)
{
	p->c->c[reason]++;
	return XDP_PASS;
}

static __always_inline int drop(struct pkt *p, int reason)
{
	p->c->c[reason]++;
	return XDP_DROP;
}

static __always_inline __u16 csum_fold(__u32 sum)
{
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	return (__u16)sum;
}

// pass_for_type maps a FIB result that is not a nexthop to its action.
static __always_inline int pass_for_type(struct pkt *p, __u32 type)
{
	switch (type) {
	case FIB_BLACKHOLE:
		return drop(p, C_DROP_BLACKHOLE);
	case FIB_UNREACHABLE:
		return pass(p, C_PASS_UNREACHABLE);
	case FIB_PROHIBIT:
		return pass(p, C_PASS_PROHIBIT);
	case FIB_LOCAL:
		return pass(p, C_PASS_LOCAL);
	case FIB_NONE:
		return pass(p, C_PASS_NO_ROUTE);
	default:
		return pass(p, C_PASS_KERNEL_ROUTE);
	}
}

// resolve turns a FIB result into a hop; returns -1 with the action in
// *act when the frame is not forwarded.
static __always_inline int resolve(struct pkt *p, __u32 res, __u32 hash, struct hop *h, int *act)
{
	__u32 type = fib_type(res);
	__u32 id = fib_index(res);
	if (type == FIB_ECMP) {
		if (fib_ecmp_member(id, hash, &id) < 0) {
			*act = pass(p, C_PASS_NEIGHBOUR);
			return -1;
		}
	} else if (type != FIB_NEXTHOP) {
		*act = pass_for_type(p, type);
		return -1;
	}
	struct fib_nexthop *nh = fib_nexthop(id);
	if (!nh || nh->state != FIB_NH_RESOLVED) {
		*act = pass(p, C_PASS_NEIGHBOUR);
		return -1;
	}
	h->ifindex = nh->ifindex;
	h->mtu = nh->mtu;
	__builtin_memcpy(h->smac, nh->smac, 6);
	__builtin_memcpy(h->dmac, nh->dmac, 6);
	h->id = id;
	h->gen = nh->gen;
	return 0;
}

// kernel_resolve asks the kernel's FIB (bpf_fib_lookup, like xdp-forward).
static __always_inline int kernel_resolve(struct pkt *p, struct bpf_fib_lookup *fl, struct hop *h, int *act)
{
	fl->ifindex = p->ctx->ingress_ifindex;
	long rc = bpf_fib_lookup(p->ctx, fl, sizeof(*fl), 0);
	switch (rc) {
	case BPF_FIB_LKUP_RET_SUCCESS:
		break;
	case BPF_FIB_LKUP_RET_BLACKHOLE:
		*act = drop(p, C_DROP_BLACKHOLE);
		return -1;
	case BPF_FIB_LKUP_RET_UNREACHABLE:
		*act = pass(p, C_PASS_UNREACHABLE);
		return -1;
	case BPF_FIB_LKUP_RET_PROHIBIT:
		*act = pass(p, C_PASS_PROHIBIT);
		return -1;
	case BPF_FIB_LKUP_RET_NO_NEIGH:
		*act = pass(p, C_PASS_NEIGHBOUR);
		return -1;
	case BPF_FIB_LKUP_RET_FRAG_NEEDED:
		*act = pass(p, C_PASS_MTU);
		return -1;
	case BPF_FIB_LKUP_RET_NOT_FWDED:
		*act = pass(p, C_PASS_NO_ROUTE);
		return -1;
	default:
		*act = pass(p, C_PASS_KERNEL_ROUTE);
		return -1;
	}
	h->ifindex = fl->ifindex;
	h->mtu = 0; // the helper checked it
	__builtin_memcpy(h->smac, fl->smac, 6);
	__builtin_memcpy(h->dmac, fl->dmac, 6);
	return 0;
}

static __always_inline void static_resolve(struct hop *h)
{
	h->ifindex = static_ifindex;
	h->mtu = 0;
	for (int i = 0; i < 6; i++) {
		h->smac[i] = static_smac[i];
		h->dmac[i] = static_dmac[i];
	}
}

// send decides whether a forwardable frame can leave by the fast path:
// l3len is the IP packet's length (the MTU check is on it, as Linux's).
// It returns the action, or -1 when the frame goes to its engine (engine
// afxdp: to_xsk; engine xdp: the caller rewrites MACs and TTL/hop limit,
// then calls redirect).
static __always_inline int send(struct pkt *p, struct hop *h, __u32 l3len, __u32 v6)
{
	if (h->mtu && l3len > h->mtu)
		return pass(p, C_PASS_MTU);
	if (h->ifindex == p->ctx->ingress_ifindex && (v6 || (p->cfg->flags & IF_REDIRECTS)))
		return pass(p, C_PASS_REDIRECT);
	if (p->cfg->flags & IF_EGRESS_CHECK) {
		struct iface *e = bpf_map_lookup_elem(&ifaces, &h->ifindex);
		if (e && (e->flags & IF_EGRESS_KERNEL))
			return pass(p, C_PASS_EGRESS);
	}
	if (p->cfg->engine == ENGINE_AFXDP) {
		if (p->ctx->rx_queue_index >= MAX_QUEUES || !bpf_map_lookup_elem(&xsk_egress, &h->ifindex))
			return pass(p, C_PASS_NO_XSK);
		return -1;
	}
	if (!bpf_map_lookup_elem(&tx_ports, &h->ifindex))
		return pass(p, C_REDIRECT_ERR);
	return -1;
}

// to_xsk steers a frame to the AF_XDP socket of its queue, without the
// excess bytes that follow the IP packet (Ethernet padding, trailers:
// Linux trims them, and so do we).
static __always_inline int to_xsk(struct pkt *p, struct hop *h, __u32 excess)
{
	__u32 key = p->cfg->slot * MAX_QUEUES + p->ctx->rx_queue_index;
	if (excess && bpf_xdp_adjust_tail(p->ctx, -(int)excess))
		return drop(p, C_DROP_MALFORMED);
	if (bpf_redirect_map(&xsks, key, XDP_PASS) == XDP_REDIRECT) {
		// Hand the worker this lookup's nexthop (the redirect happens
		// after the program returns; a frame passed to the kernel carries
		// no metadata). Every steered frame gets it, gen 0 meaning "look
		// up again", so a UMEM chunk never keeps an older frame's; without
		// metadata support the worker looks up again.
		if (bpf_xdp_adjust_meta(p->ctx, -(int)sizeof(struct xsk_meta)) == 0) {
			struct xsk_meta *m = (void *)(long)p->ctx->data_meta;
			if ((void *)(m + 1) <= (void *)(long)p->ctx->data) {
				m->id = h->id;
				m->gen = h->gen;
				m->magic = XSK_META_MAGIC;
			}
		}
		p->c->c[C_TO_AFXDP]++;
		return XDP_REDIRECT;
	}
	p->c->c[C_PASS_NO_XSK]++;
	return XDP_PASS;
}

// redirect writes the MACs, trims what follows the IP packet and sends
// the frame out of its egress.
static __always_inline int redirect(struct pkt *p, struct hop *h, __u32 excess)
{
	struct ethhdr *eth = p->data;
	__builtin_memcpy(eth->h_dest, h->dmac, 6);
	__builtin_memcpy(eth->h_source, h->smac, 6);
	__u64 len = p->end - p->data;
	if (excess) {
		if (bpf_xdp_adjust_tail(p->ctx, -(int)excess))
			return drop(p, C_DROP_MALFORMED);
		len -= excess;
	}
	p->c->c[C_FORWARDED]++;
	p->c->c[C_FORWARDED_BYTES] += len;
	return bpf_redirect_map(&tx_ports, h->ifindex, 0);
}

// ecmp_uses reports 0 when a member of ECMP group id leaves by ifindex, 1
// when none does, -1 when the group is not readable.
static __always_inline int ecmp_uses(__u32 id, __u32 ifindex)
{
	struct fib_ecmp *g = fib_ecmp_group(id);
	if (!g)
		return -1;
	for (__u32 i = 0; i < FIB_MAX_ECMP; i++) {
		if (i >= g->count)
			break;
		struct fib_nexthop *nh = fib_nexthop(g->members[i]);
		if (!nh)
			return -1;
		if (nh->ifindex == ifindex)
			return 0;
	}
	return 1;
}

// rp_check is Linux's rp_filter (fib_validate_source, without policy
// rules: with them the caller leaves it to the kernel) on our FIB: strict wants the route
// back to the source to leave by the ingress interface (any member of an
// ECMP route), loose any unicast route. It returns 0 when the source
// passes, 1 when Linux drops the frame (a blackhole, unreachable or
// prohibit route back, or strict and another interface), -1 when the FIB
// cannot tell (no route of ours, a connected or other kernel route): then
// the kernel decides.
static __always_inline int rp_check(struct pkt *p, __u32 saddr)
{
	__u32 res = fib_lookup4(saddr);
	int strict = !(p->cfg->flags & IF_RP_LOOSE);
	switch (fib_type(res)) {
	case FIB_BLACKHOLE:
	case FIB_UNREACHABLE:
	case FIB_PROHIBIT:
		return 1;
	case FIB_NEXTHOP: {
		if (!strict)
			return 0;
		struct fib_nexthop *nh = fib_nexthop(fib_index(res));
		if (!nh)
			return -1;
		return nh->ifindex == p->ctx->ingress_ifindex ? 0 : 1;
	}
	case FIB_ECMP:
		if (!strict)
			return 0;
		return ecmp_uses(fib_index(res), p->ctx->ingress_ifindex);
	default:
		return -1;
	}
}

static __always_inline int v4_martian(__u32 a)
{
	__u8 top = a >> 24;
	return top == 0 || top == 127 || (top & 0xf0) == 0xe0 || a == 0xffffffff;
}

static __always_inline int handle_v4(struct pkt *p, void *l3)
{
	__u8 *ip = l3;
	if (p->cfg->flags & IF_KERNEL4)
		return pass(p, C_PASS_POLICY);
	if ((void *)(ip + 20) > p->end)
		return drop(p, C_DROP_MALFORMED);
	__u8 vihl = ip[0];
	if ((vihl >> 4) != 4 || (vihl & 0xf) < 5)
		return drop(p, C_DROP_MALFORMED);
	__u32 tot = bpf_ntohs(*(__u16 *)(ip + 2));
	if (tot < (vihl & 0xf) * 4u || (void *)ip + tot > p->end)
		return drop(p, C_DROP_MALFORMED);
	if ((vihl & 0xf) > 5)
		return pass(p, C_PASS_IP_OPTIONS);
	__u32 sum = 0;
#pragma unroll
	for (int i = 0; i < 10; i++)
		sum += ((__u16 *)ip)[i];
	if (csum_fold(sum) != 0xffff)
		return drop(p, C_DROP_CHECKSUM);

	__u32 saddr = bpf_ntohl(*(__u32 *)(ip + 12));
	__u32 daddr = bpf_ntohl(*(__u32 *)(ip + 16));
	if ((daddr >> 28) == 0xe || daddr == 0xffffffff)
		return pass(p, C_PASS_IP_MULTICAST);
	if (v4_martian(saddr) || (daddr >> 24) == 0 || (daddr >> 24) == 127)
		return pass(p, C_PASS_MARTIAN);
	__u32 dkey = bpf_htonl(daddr);
	if (is_local4(dkey))
		return pass(p, C_PASS_LOCAL);
	// The kernel forwards nothing from an interface with forwarding off
	// and takes a source that is one of its own addresses for a martian.
	if (p->cfg->flags & IF_NO_FWD4)
		return pass(p, C_PASS_NO_FORWARDING);
	if (is_local4(bpf_htonl(saddr)))
		return pass(p, C_PASS_MARTIAN);
	// Once custom local routes or rules exist, Linux looks every source
	// up and drops one whose route is local, broadcast, anycast or
	// multicast (table local in our FIB): the kernel decides those.
	if ((p->cfg->flags & IF_SRC_ROUTE) && fib_source == SOURCE_FIB && fib_type(fib_lookup4(saddr)) == FIB_LOCAL)
		return pass(p, C_PASS_MARTIAN);
	if (rule_selects4(p->ctx->ingress_ifindex, bpf_htonl(saddr), dkey))
		return pass(p, C_PASS_RULE);
	if ((p->cfg->flags & IF_RP_FILTER) && fib_source != SOURCE_FIB)
		return pass(p, C_PASS_RP_FILTER);
	if (ip[8] <= 1)
		return pass(p, C_PASS_TTL);

	struct hop h = {};
	int act = XDP_PASS;
	if (fib_source == SOURCE_STATIC) {
		static_resolve(&h);
	} else if (fib_source == SOURCE_KERNEL) {
		struct bpf_fib_lookup fl = {};
		fl.family = AF_INET;
		fl.tos = ip[1];
		fl.l4_protocol = ip[9];
		fl.tot_len = tot;
		fl.ipv4_src = bpf_htonl(saddr);
		fl.ipv4_dst = dkey;
		if (kernel_resolve(p, &fl, &h, &act) < 0)
			return act;
	} else {
		__u32 res = fib_lookup4(daddr);
		__u32 hash = 0;
		if (fib_type(res) == FIB_ECMP) {
			__u32 ports = 0;
			__u8 proto = ip[9];
			__u16 frag = bpf_ntohs(*(__u16 *)(ip + 6));
			if ((frag & 0x3fff) == 0 && (proto == IPPROTO_TCP || proto == IPPROTO_UDP || proto == IPPROTO_SCTP) &&
			    (void *)(ip + 24) <= p->end)
				ports = bpf_ntohl(*(__u32 *)(ip + 20));
			hash = fib_hash_word(FIB_HASH_SEED, saddr);
			hash = fib_hash_word(hash, daddr);
			hash = fib_hash_word(hash, ports);
			hash = fib_hash_final(fib_hash_word(hash, proto));
		}
		if (resolve(p, res, hash, &h, &act) < 0)
			return act;
		// Linux validates the source only for a destination it forwards
		// to, and before the TTL; our TTL check only passes.
		if (p->cfg->flags & IF_RP_FILTER) {
			int rp = rules4_present() ? -1 : rp_check(p, saddr);
			if (rp > 0)
				return drop(p, C_DROP_RP_FILTER);
			if (rp < 0)
				return pass(p, C_PASS_RP_FILTER);
		}
	}
	__u32 excess = p->end - ((void *)ip + tot);
	act = send(p, &h, tot, 0);
	if (act >= 0)
		return act;
	if (p->cfg->engine == ENGINE_AFXDP)
		return to_xsk(p, &h, excess);
	// RFC 1624: HC' = ~(~HC + ~m + m'), m the 16-bit word holding the TTL.
	__u16 old = *(__u16 *)(ip + 8);
	ip[8]--;
	__u16 new = *(__u16 *)(ip + 8);
	__u16 *check = (__u16 *)(ip + 10);
	*check = ~csum_fold((__u16)~*check + (__u32)(__u16)~old + new);
	return redirect(p, &h, excess);
}

static __always_inline int is_ext_header(__u8 nh)
{
	switch (nh) {
	case 0:   // hop-by-hop
	case 43:  // routing
	case 44:  // fragment
	case 51:  // AH
	case 60:  // destination options
	case 135: // mobility
	case 139: // HIP
	case 140: // shim6
	case 253:
	case 254:
		return 1;
	}
	return 0;
}

static __always_inline int handle_v6(struct pkt *p, void *l3)
{
	__u8 *ip = l3;
	if (p->cfg->flags & IF_KERNEL6)
		return pass(p, C_PASS_POLICY);
	if ((void *)(ip + 40) > p->end)
		return drop(p, C_DROP_MALFORMED);
	if ((ip[0] >> 4) != 6)
		return drop(p, C_DROP_MALFORMED);
	__u32 plen = bpf_ntohs(*(__u16 *)(ip + 4));
	if ((void *)(ip + 40) + plen > p->end)
		return drop(p, C_DROP_MALFORMED);
	__u8 *src = ip + 8, *dst = ip + 24;
	if (dst[0] == 0xff)
		return pass(p, C_PASS_IP_MULTICAST);
	if ((dst[0] == 0xfe && (dst[1] & 0xc0) == 0x80) || (src[0] == 0xfe && (src[1] & 0xc0) == 0x80))
		return pass(p, C_PASS_LINK_LOCAL);
	__u64 shi = *(__u64 *)src, slo = *(__u64 *)(src + 8);
	__u64 dhi = *(__u64 *)dst, dlo = *(__u64 *)(dst + 8);
	// Multicast, unspecified (::) or loopback (::1) source; :: or ::1 destination.
	if (src[0] == 0xff || (shi == 0 && (slo == 0 || slo == bpf_cpu_to_be64(1))) ||
	    (dhi == 0 && (dlo == 0 || dlo == bpf_cpu_to_be64(1))))
		return pass(p, C_PASS_MARTIAN);
	struct addr6 key;
	__builtin_memcpy(key.a, dst, 16);
	if (bpf_map_lookup_elem(&local6, &key))
		return pass(p, C_PASS_LOCAL);
	if (p->cfg->flags & IF_NO_FWD6)
		return pass(p, C_PASS_NO_FORWARDING);
	if (rule_selects6(p->ctx->ingress_ifindex, src, dst))
		return pass(p, C_PASS_RULE);
	__u8 nexthdr = ip[6];
	if (is_ext_header(nexthdr))
		return pass(p, C_PASS_EXT_HEADER);
	if (ip[7] <= 1)
		return pass(p, C_PASS_TTL);

	struct hop h = {};
	int act = XDP_PASS;
	if (fib_source == SOURCE_STATIC) {
		static_resolve(&h);
	} else if (fib_source == SOURCE_KERNEL) {
		struct bpf_fib_lookup fl = {};
		fl.family = AF_INET6;
		fl.flowinfo = *(__u32 *)ip & bpf_htonl(0x0fffffff);
		fl.l4_protocol = nexthdr;
		fl.tot_len = 40 + plen;
		__builtin_memcpy(fl.ipv6_src, src, 16);
		__builtin_memcpy(fl.ipv6_dst, dst, 16);
		if (kernel_resolve(p, &fl, &h, &act) < 0)
			return act;
	} else {
		__u32 res = fib_lookup6(dst);
		__u32 hash = 0;
		if (fib_type(res) == FIB_ECMP) {
			__u32 ports = 0;
			if ((nexthdr == IPPROTO_TCP || nexthdr == IPPROTO_UDP || nexthdr == IPPROTO_SCTP) &&
			    (void *)(ip + 44) <= p->end)
				ports = bpf_ntohl(*(__u32 *)(ip + 40));
			hash = FIB_HASH_SEED;
			for (int i = 0; i < 16; i += 4)
				hash = fib_hash_word(hash, bpf_ntohl(*(__u32 *)(src + i)));
			for (int i = 0; i < 16; i += 4)
				hash = fib_hash_word(hash, bpf_ntohl(*(__u32 *)(dst + i)));
			hash = fib_hash_word(hash, ports);
			hash = fib_hash_final(fib_hash_word(hash, nexthdr));
		}
		if (resolve(p, res, hash, &h, &act) < 0)
			return act;
	}
	__u32 excess = p->end - ((void *)ip + 40 + plen);
	act = send(p, &h, 40 + plen, 1);
	if (act >= 0)
		return act;
	if (p->cfg->engine == ENGINE_AFXDP)
		return to_xsk(p, &h, excess);
	ip[7]--;
	return redirect(p, &h, excess);
}

SEC("xdp")
int xdp_router(struct xdp_md *ctx)
{
	struct pkt p = {
		.data = (void *)(long)ctx->data,
		.end = (void *)(long)ctx->data_end,
		.ctx = ctx,
	};
	__u32 ifindex = ctx->ingress_ifindex;
	p.cfg = bpf_map_lookup_elem(&ifaces, &ifindex);
	if (!p.cfg)
		return XDP_PASS; // not an interface of ours
	__u32 slot = p.cfg->slot;
	p.c = bpf_map_lookup_elem(&counters, &slot);
	if (!p.c)
		return XDP_PASS;
	p.c->c[C_RX_PACKETS]++;
	p.c->c[C_RX_BYTES] += p.end - p.data;

	struct ethhdr *eth = p.data;
	if ((void *)(eth + 1) > p.end)
		return drop(&p, C_DROP_MALFORMED);
	if (p.cfg->engine == ENGINE_PASS)
		return pass(&p, C_PASS_ENGINE);
	if (eth->h_dest[0] & 1)
		return pass(&p, C_PASS_L2_MULTICAST);
	// Unicast to another MAC: Linux drops it (PACKET_OTHERHOST) unless an
	// upper device (a macvlan, maybe in another namespace, where we
	// cannot see it) owns that MAC. The kernel decides.
	if ((p.cfg->flags & IF_MAC_CHECK) &&
	    (*(__u32 *)eth->h_dest != *(__u32 *)p.cfg->mac || *(__u16 *)(eth->h_dest + 4) != *(__u16 *)(p.cfg->mac + 4)))
		return pass(&p, C_PASS_OTHER_HOST);
	__u16 proto = eth->h_proto;
	if (proto == bpf_htons(ETH_P_8021Q) || proto == bpf_htons(ETH_P_8021AD)) {
		// VLAN subinterfaces are the kernel's: validate the tag, pass it.
		if ((void *)(eth + 1) + 4 > p.end)
			return drop(&p, C_DROP_MALFORMED);
		return pass(&p, C_PASS_VLAN);
	}
	if (proto == bpf_htons(ETH_P_IP))
		return handle_v4(&p, eth + 1);
	if (proto == bpf_htons(ETH_P_IPV6))
		return handle_v6(&p, eth + 1);
	if (proto == bpf_htons(ETH_P_ARP))
		return pass(&p, C_PASS_ARP);
	return pass(&p, C_PASS_NON_IP);
}

char __license[] SEC("license") = "Dual BSD/GPL";
