//go:build ignore

// xdpgen: the traffic generator's XDP program, run by BPF_PROG_RUN with
// BPF_F_TEST_XDP_LIVE_FRAMES. Each run rewrites the frame's full headers
// (live frames recycle pages with whatever the path wrote into them), picks
// random source and destination addresses inside the configured prefixes,
// fixes the IPv4 and UDP checksums and transmits the frame with XDP_TX.
// Pacing, count limits and deadlines are enforced here, per CPU, so that a
// sending thread can be given a long Repeat and still stop exactly.

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <bpf/bpf_helpers.h>

#define HDR_MAX 64
#define HDR4_LEN 42 // Ethernet 14 + IPv4 20 + UDP 8
#define HDR6_LEN 62 // Ethernet 14 + IPv6 40 + UDP 8

// gen_config is fixed for one load of the program.
struct gen_config {
	__u8 hdr[HDR_MAX]; // Ethernet+IP+UDP header template, addresses and checksums zero
	__u32 family;      // 4 or 6
	__u32 src_base[4]; // network-order words; IPv4 uses word 0
	__u32 src_mask[4]; // host bits to randomise
	__u32 dst_base[4];
	__u32 dst_mask[4];
	__u32 ip_csum_base; // IPv4 header sum without addresses
	__u32 l4_csum_base; // UDP pseudo-header+header+payload sum without addresses
};

volatile const struct gen_config cfg;

// stop is set by user space to end every sender at once (Ctrl-C).
volatile __u32 stop;

// gen_plan is written by user space before the senders start; one per CPU.
struct gen_plan {
	__u8 dst_mac[6];
	__u8 src_mac[6];
	__u32 pad;
	__u64 limit;       // packets to send at most, 0 = unlimited
	__u64 interval_ns; // time between packets, 0 = as fast as possible
	__u64 max_lag_ns;  // how far pacing may fall behind before it forgets the debt
	__u64 deadline_ns; // CLOCK_MONOTONIC time to stop at, 0 = none
};

// gen_state is written only by the program; one per CPU.
struct gen_state {
	__u64 sent;
	__u64 bytes;
	__u64 iterations;
	__u64 next_ns;
	__u64 first_ns;
	__u64 last_ns;
	__u64 expired;
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct gen_plan);
} gen_plans SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct gen_state);
} gen_states SEC(".maps");

static __always_inline __u32 fold(__u32 sum)
{
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	return sum;
}

static __always_inline __u32 word_sum(__u32 w)
{
	return (w & 0xffff) + (w >> 16);
}

// copy_hdr copies n bytes (even) of the header template. The loads must stay
// volatile: a plain memcpy from the const would be folded by the compiler
// to the zero initialiser instead of reading what user space set.
static __always_inline void copy_hdr(void *data, int n)
{
	volatile const __u16 *src = (volatile const __u16 *)cfg.hdr;
	__u16 *dst = data;
#pragma unroll
	for (int i = 0; i < n / 2; i++)
		dst[i] = src[i];
}

static __always_inline __u32 pick(__u32 base, __u32 mask)
{
	if (!mask)
		return base;
	return base | (bpf_get_prandom_u32() & mask);
}

SEC("xdp")
int xdpgen(struct xdp_md *ctx)
{
	__u32 key = 0;
	struct gen_plan *p = bpf_map_lookup_elem(&gen_plans, &key);
	struct gen_state *s = bpf_map_lookup_elem(&gen_states, &key);
	if (!p || !s)
		return XDP_ABORTED;

	s->iterations++;
	if (stop || s->expired)
		return XDP_DROP;
	if (p->limit && s->sent >= p->limit)
		return XDP_DROP;

	__u64 now = 0;
	if (p->interval_ns) {
		now = bpf_ktime_get_ns();
		if (s->next_ns == 0)
			s->next_ns = now;
		if (now < s->next_ns)
			return XDP_DROP;
		if (now - s->next_ns > p->max_lag_ns)
			s->next_ns = now - p->max_lag_ns;
		s->next_ns += p->interval_ns;
	} else if (s->sent == 0 || (s->sent & 63) == 0 || (p->limit && s->sent + 1 == p->limit)) {
		now = bpf_ktime_get_ns();
	}
	if (now && p->deadline_ns && now >= p->deadline_ns) {
		s->expired = 1;
		return XDP_DROP;
	}

	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	__u32 sum = cfg.l4_csum_base;
	if (cfg.family == 4) {
		if (data + HDR4_LEN > end)
			return XDP_ABORTED;
		copy_hdr(data, HDR4_LEN);
		__builtin_memcpy(data, p->dst_mac, 6);
		__builtin_memcpy(data + 6, p->src_mac, 6);
		__u32 src = pick(cfg.src_base[0], cfg.src_mask[0]);
		__u32 dst = pick(cfg.dst_base[0], cfg.dst_mask[0]);
		__u32 *a = data + 14 + 12;
		a[0] = src;
		a[1] = dst;
		__u32 addr = word_sum(src) + word_sum(dst);
		__u16 ipc = ~fold(cfg.ip_csum_base + addr);
		*(__u16 *)(data + 14 + 10) = ipc;
		__u16 uc = ~fold(sum + addr);
		*(__u16 *)(data + 14 + 20 + 6) = uc ? uc : 0xffff;
	} else {
		if (data + HDR6_LEN > end)
			return XDP_ABORTED;
		copy_hdr(data, HDR6_LEN);
		__builtin_memcpy(data, p->dst_mac, 6);
		__builtin_memcpy(data + 6, p->src_mac, 6);
		__u32 *a = data + 14 + 8;
#pragma unroll
		for (int i = 0; i < 4; i++) {
			__u32 w = pick(cfg.src_base[i], cfg.src_mask[i]);
			a[i] = w;
			sum += word_sum(w);
		}
#pragma unroll
		for (int i = 0; i < 4; i++) {
			__u32 w = pick(cfg.dst_base[i], cfg.dst_mask[i]);
			a[4 + i] = w;
			sum += word_sum(w);
		}
		__u16 uc = ~fold(sum);
		*(__u16 *)(data + 14 + 40 + 6) = uc ? uc : 0xffff;
	}

	if (s->sent == 0)
		s->first_ns = now;
	if (now)
		s->last_ns = now;
	s->sent++;
	s->bytes += end - data;
	return XDP_TX;
}

char __license[] SEC("license") = "Dual BSD/GPL";
