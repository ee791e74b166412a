//go:build ignore

// fib_probe: lets tests and benchmarks ask the kernel what it reads in the
// FIB maps. Input and output travel in the test packet (struct probe_io).

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>
#include "fib.h"

enum probe_mode {
	PROBE_LOOKUP, // look up addr, resolve nexthop / ECMP member with hash
	PROBE_HASH,   // flow hash of src, dst, proto, ports
	PROBE_BENCH,  // look up count IPv4 addresses of probe_addrs
};

struct probe_io {
	__u32 mode;
	__u32 family;
	__u8 addr[16]; // destination (IPv4 in the first 4 bytes)
	__u8 src[16];
	__u32 proto;
	__u32 ports; // sport << 16 | dport
	__u32 hash;  // in: for the ECMP choice; out: PROBE_HASH's result
	__u32 count; // PROBE_BENCH: addresses to look up
	__u32 chain; // PROBE_BENCH: each address depends on the last result
	// Outputs.
	__u32 result;
	__u32 nh_id;
	__u32 nh_ok;
	struct fib_nexthop nh;
	__u64 sum;
};

#define PROBE_ADDRS (1 << 20)

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, PROBE_ADDRS);
	__type(key, __u32);
	__type(value, __u32);
} probe_addrs SEC(".maps");

struct bench_ctx {
	__u32 chain;
	__u32 last;
	__u64 sum;
};

static long bench_one(__u64 i, void *c)
{
	struct bench_ctx *b = c;
	__u32 k = ((__u32)i + (b->chain ? (b->last & 1) : 0)) & (PROBE_ADDRS - 1);
	__u32 *a = bpf_map_lookup_elem(&probe_addrs, &k);
	if (!a)
		return 1;
	b->last = fib_lookup4(*a);
	b->sum += b->last;
	return 0;
}

static __always_inline __u32 word(const __u8 *p)
{
	return (__u32)p[0] << 24 | (__u32)p[1] << 16 | (__u32)p[2] << 8 | p[3];
}

SEC("xdp")
int fib_probe(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	struct probe_io *io = data;
	if ((void *)(io + 1) > end)
		return XDP_ABORTED;

	if (io->mode == PROBE_HASH) {
		__u32 h = FIB_HASH_SEED;
		if (io->family == 4) {
			h = fib_hash_word(h, word(io->src));
			h = fib_hash_word(h, word(io->addr));
		} else {
			for (int i = 0; i < 16; i += 4)
				h = fib_hash_word(h, word(io->src + i));
			for (int i = 0; i < 16; i += 4)
				h = fib_hash_word(h, word(io->addr + i));
		}
		h = fib_hash_word(h, io->ports);
		io->hash = fib_hash_final(fib_hash_word(h, io->proto));
		return XDP_TX;
	}
	if (io->mode == PROBE_BENCH) {
		struct bench_ctx b = {.chain = io->chain};
		bpf_loop(io->count, bench_one, &b, 0);
		io->sum = b.sum;
		return XDP_TX;
	}

	__u32 res = io->family == 4 ? fib_lookup4(word(io->addr)) : fib_lookup6(io->addr);
	io->result = res;
	io->nh_ok = 0;
	__u32 id = fib_index(res);
	if (fib_type(res) == FIB_ECMP) {
		if (fib_ecmp_member(id, io->hash, &id) < 0)
			return XDP_TX;
	} else if (fib_type(res) != FIB_NEXTHOP) {
		return XDP_TX;
	}
	io->nh_id = id;
	struct fib_nexthop *nh = fib_nexthop(id);
	if (nh) {
		io->nh = *nh;
		io->nh_ok = 1;
	}
	return XDP_TX;
}

char __license[] SEC("license") = "Dual BSD/GPL";
