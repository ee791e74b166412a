//go:build ignore

// xdpsink: counts every frame per CPU. Frames that carry UDP to the
// configured destination port (the generator's) are counted apart, with
// their smallest and largest length, and dropped; everything else (ARP, ND,
// MLD) goes on to the kernel, so the sink's host still answers neighbour
// resolution like a real next hop.

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

// match_port is the UDP destination port of test traffic, host order.
volatile const __u16 match_port = 9;

struct sink_counters {
	__u64 packets;
	__u64 bytes;
	__u64 matched_packets;
	__u64 matched_bytes;
	__u64 matched_min_len;
	__u64 matched_max_len;
	__u64 matched_foreign_mac; // matched frames not addressed to the receiving interface's MAC
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct sink_counters);
} sink_counts SEC(".maps");

struct mac {
	__u8 a[6];
};

// macs holds each sink interface's own MAC, by ifindex.
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 64);
	__type(key, __u32);
	__type(value, struct mac);
} macs SEC(".maps");

static __always_inline int is_test_udp(void *data, void *end)
{
	if (data + 14 > end)
		return 0;
	__u16 proto = *(__u16 *)(data + 12);
	void *l3 = data + 14;
	if (proto == bpf_htons(ETH_P_8021Q)) {
		if (l3 + 4 > end)
			return 0;
		proto = *(__u16 *)(l3 + 2);
		l3 += 4;
	}
	void *l4;
	if (proto == bpf_htons(ETH_P_IP)) {
		if (l3 + 20 > end)
			return 0;
		__u8 vihl = *(__u8 *)l3;
		if ((vihl >> 4) != 4 || *(__u8 *)(l3 + 9) != IPPROTO_UDP)
			return 0;
		l4 = l3 + (vihl & 0xf) * 4;
	} else if (proto == bpf_htons(ETH_P_IPV6)) {
		if (l3 + 40 > end)
			return 0;
		if (*(__u8 *)(l3 + 6) != IPPROTO_UDP)
			return 0;
		l4 = l3 + 40;
	} else {
		return 0;
	}
	if (l4 + 8 > end)
		return 0;
	return *(__u16 *)(l4 + 2) == bpf_htons(match_port);
}

SEC("xdp")
int xdpsink(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	__u32 key = 0;
	struct sink_counters *c = bpf_map_lookup_elem(&sink_counts, &key);
	if (!c)
		return XDP_PASS;
	__u64 len = end - data;
	c->packets++;
	c->bytes += len;
	if (!is_test_udp(data, end))
		return XDP_PASS;
	c->matched_packets++;
	c->matched_bytes += len;
	if (c->matched_min_len == 0 || len < c->matched_min_len)
		c->matched_min_len = len;
	if (len > c->matched_max_len)
		c->matched_max_len = len;
	__u32 ifindex = ctx->ingress_ifindex;
	struct mac *m = bpf_map_lookup_elem(&macs, &ifindex);
	if (m) {
		__u8 *d = data;
		int diff = 0;
#pragma unroll
		for (int i = 0; i < 6; i++)
			diff |= d[i] ^ m->a[i];
		if (diff)
			c->matched_foreign_mac++;
	}
	return XDP_DROP;
}

char __license[] SEC("license") = "Dual BSD/GPL";
