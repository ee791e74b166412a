//go:build ignore

// xsk_redirect: the AF_XDP reference forwarder's program (xdpbench
// scenario afxdp-ref). Every IPv4 and IPv6 frame goes to the AF_XDP
// socket of its (interface, queue), key (ifindex % 64) * 64 + queue;
// everything else, and frames of a queue without a socket, go on to the
// kernel. No parsing beyond the EtherType, no lookup: the least an
// AF_XDP forwarder's program can do.

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

struct {
	__uint(type, BPF_MAP_TYPE_XSKMAP);
	__uint(max_entries, 64 * 64);
	__type(key, __u32);
	__type(value, __u32);
} xsks SEC(".maps");

SEC("xdp")
int xsk_redirect(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;

	if ((void *)(eth + 1) > data_end)
		return XDP_PASS;
	if (eth->h_proto != bpf_htons(ETH_P_IP) && eth->h_proto != bpf_htons(ETH_P_IPV6))
		return XDP_PASS;
	if (ctx->rx_queue_index >= 64)
		return XDP_PASS;
	return bpf_redirect_map(&xsks, (ctx->ingress_ifindex % 64) * 64 + ctx->rx_queue_index, XDP_PASS);
}

char __license[] SEC("license") = "Dual BSD/GPL";
