/* The FIB as the XDP program reads it: maps written by Go through their
 * mmap'd memory (dataplane/fib, poptrie.go). Layout and hash must stay
 * bit for bit the same as there.
 *
 * Each family is a direct-pointing top level (2^FIB_TOP4 or 2^FIB_TOP6
 * entries, indexed by the address's top bits) and Poptrie nodes below it,
 * 6 bits each. A top entry with FIB_NODE set points at a node; otherwise
 * it is the result. At a node, position v (the next 6 bits) is a child if
 * bit v of vector is set: nodes[base1 + popcount(vector & mask(v)) - 1];
 * otherwise a leaf: leaves[base0 + popcount(leafvec & mask(v)) - 1],
 * where mask(v) keeps bits 0 to v. A leaf is a 16-bit index into
 * fib_results. A top entry with FIB_LEAFNODE set points at a node without
 * children stored in the leaves: its leafvec in four leaves (lowest 16
 * bits first), then its leaves. Results are 32-bit words: bits 20-22 route
 * type, bits 0-19 index.
 */
#ifndef XDPROUTER_FIB_H
#define XDPROUTER_FIB_H

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

#define FIB_NODE (1u << 31)
#define FIB_LEAFNODE (1u << 30)
#define FIB_RESULT_MASK ((1u << 23) - 1)
#define FIB_TYPE_SHIFT 20
#define FIB_INDEX_MASK ((1u << 20) - 1)
#define FIB_MAX_ECMP 16
#define FIB_STRIDE 6
#define FIB_TOP4 18
#define FIB_TOP6 18
#define FIB_LEVELS4 ((32 - FIB_TOP4 + FIB_STRIDE - 1) / FIB_STRIDE)
#define FIB_LEVELS6 ((128 - FIB_TOP6 + FIB_STRIDE - 1) / FIB_STRIDE)

enum fib_type {
	FIB_NONE,
	FIB_NEXTHOP,
	FIB_ECMP,
	FIB_BLACKHOLE,
	FIB_UNREACHABLE,
	FIB_PROHIBIT,
	FIB_LOCAL,
	FIB_KERNEL,
};

enum fib_nh_state {
	FIB_NH_UNSET,
	FIB_NH_RESOLVED,
	FIB_NH_INCOMPLETE,
	FIB_NH_FAILED,
};

struct fib_row {
	__u32 e[256];
};

struct fib_leaf_row {
	__u16 e[512];
};

struct fib_node {
	__u64 vector;  /* bit v: position v is a child */
	__u64 leafvec; /* bit v: a new leaf starts at position v */
	__u32 base0;   /* first leaf */
	__u32 base1;   /* first child */
};

struct fib_ptr {
	__u32 slot; /* slot + 1; 0 = unset */
	__u32 pad;
};

struct fib_nexthop {
	__u32 ifindex;
	__u16 mtu;
	__u8 state;
	__u8 flags;
	__u8 dmac[6];
	__u8 smac[6];
	__u32 gen; /* new on every write of the entry (0: never handed on) */
};

struct fib_ecmp {
	__u32 count;
	__u32 members[FIB_MAX_ECMP];
	__u32 pad;
};

/* max_entries of the sized maps is set by the loader to the table's. */
#define FIB_ROWS(name, n)                                 \
	struct {                                          \
		__uint(type, BPF_MAP_TYPE_ARRAY);         \
		__uint(map_flags, BPF_F_MMAPABLE);        \
		__uint(max_entries, n);                   \
		__type(key, __u32);                       \
		__type(value, struct fib_row);            \
	} name SEC(".maps")

FIB_ROWS(fib4_top, (1 << FIB_TOP4) / 256);
FIB_ROWS(fib6_top, (1 << FIB_TOP6) / 256);
FIB_ROWS(fib_results, 65536 / 256);

#define FIB_LEAVES(name)                                  \
	struct {                                          \
		__uint(type, BPF_MAP_TYPE_ARRAY);         \
		__uint(map_flags, BPF_F_MMAPABLE);        \
		__uint(max_entries, 1);                   \
		__type(key, __u32);                       \
		__type(value, struct fib_leaf_row);       \
	} name SEC(".maps")

FIB_LEAVES(fib4_leaves);
FIB_LEAVES(fib6_leaves);

#define FIB_NODES(name)                                   \
	struct {                                          \
		__uint(type, BPF_MAP_TYPE_ARRAY);         \
		__uint(map_flags, BPF_F_MMAPABLE);        \
		__uint(max_entries, 1);                   \
		__type(key, __u32);                       \
		__type(value, struct fib_node);           \
	} name SEC(".maps")

FIB_NODES(fib4_nodes);
FIB_NODES(fib6_nodes);

#define FIB_ARRAY(name, type_)                            \
	struct {                                          \
		__uint(type, BPF_MAP_TYPE_ARRAY);         \
		__uint(map_flags, BPF_F_MMAPABLE);        \
		__uint(max_entries, 1);                   \
		__type(key, __u32);                       \
		__type(value, type_);                     \
	} name SEC(".maps")

FIB_ARRAY(fib_nh_ptr, struct fib_ptr);
FIB_ARRAY(fib_nh, struct fib_nexthop);
FIB_ARRAY(fib_ecmp_ptr, struct fib_ptr);
FIB_ARRAY(fib_ecmp, struct fib_ecmp);

static __always_inline __u32 fib_load(const __u32 *p)
{
	return *(volatile const __u32 *)p;
}

/* fib_word returns word i of a rows map (0 when out of range). */
static __always_inline __u32 fib_word(void *rows, __u32 i)
{
	__u32 row = i >> 8;
	struct fib_row *r = bpf_map_lookup_elem(rows, &row);
	if (!r)
		return 0;
	return fib_load(&r->e[i & 0xff]);
}

/* fib_leaf returns the result leaf i of a leaves map holds (0 when out
 * of range). */
static __always_inline __u32 fib_leaf(void *leaves, __u32 i)
{
	__u32 row = i >> 9;
	struct fib_leaf_row *r = bpf_map_lookup_elem(leaves, &row);
	if (!r)
		return 0;
	return fib_word(&fib_results, *(volatile const __u16 *)&r->e[i & 0x1ff]);
}

/* fib_leafvec returns the leafvec of the leaf node at leaf at. */
static __always_inline __u64 fib_leafvec(void *leaves, __u32 at)
{
	__u64 lv = 0;
	for (int k = 0; k < 4; k++) {
		__u32 i = at + k, row = i >> 9;
		struct fib_leaf_row *r = bpf_map_lookup_elem(leaves, &row);
		if (!r)
			return 0;
		lv |= (__u64)r->e[i & 0x1ff] << (16 * k);
	}
	return lv;
}

/* fib_step resolves position v of node *i: for a child it stores the
 * child's index in *i and returns 1; for a leaf it stores the leaf in
 * *res and returns 0. */
static __always_inline int fib_step(void *nodes, void *leaves, __u32 *i, __u32 v, __u32 *res)
{
	struct fib_node *n = bpf_map_lookup_elem(nodes, i);
	if (!n) {
		*res = 0;
		return 0;
	}
	__u64 bit = 1ULL << (v & 63);
	__u64 m = bit | (bit - 1);
	__u64 vec = n->vector;
	if (vec & bit) {
		*i = n->base1 + __builtin_popcountll(vec & m) - 1;
		return 1;
	}
	*res = fib_leaf(leaves, n->base0 + __builtin_popcountll(n->leafvec & m) - 1);
	return 0;
}

/* fib_leafnode returns the result at position v of the leaf node at at. */
static __always_inline __u32 fib_leafnode(void *leaves, __u32 at, __u32 v)
{
	__u64 lv = fib_leafvec(leaves, at);
	__u64 bit = 1ULL << (v & 63);
	return fib_leaf(leaves, at + 3 + __builtin_popcountll(lv & (bit | (bit - 1))));
}

/* fib_lookup4 returns the result (type << 20 | index) for an IPv4
 * address in host byte order. */
static __always_inline __u32 fib_lookup4(__u32 a)
{
	__u32 e = fib_word(&fib4_top, a >> (32 - FIB_TOP4));
	if (!(e & (FIB_NODE | FIB_LEAFNODE)))
		return e & FIB_RESULT_MASK;
	__u64 x = (__u64)a << (32 + FIB_TOP4);
	if (e & FIB_LEAFNODE)
		return fib_leafnode(&fib4_leaves, e & ~FIB_LEAFNODE, x >> (64 - FIB_STRIDE)) & FIB_RESULT_MASK;
	__u32 i = e & ~FIB_NODE, res = 0;
	for (int l = 0; l < FIB_LEVELS4; l++) {
		if (!fib_step(&fib4_nodes, &fib4_leaves, &i, x >> (64 - FIB_STRIDE), &res))
			return res & FIB_RESULT_MASK;
		x <<= FIB_STRIDE;
	}
	return 0; /* deeper than the address: cannot happen */
}

/* fib_lookup6 returns the result for an IPv6 address; a must point at 16
 * readable bytes (a checked packet header or the stack). */
static __always_inline __u32 fib_lookup6(const __u8 *a)
{
	__u64 hi = 0, lo = 0;
	for (int k = 0; k < 8; k++) {
		hi = hi << 8 | a[k];
		lo = lo << 8 | a[8 + k];
	}
	__u32 e = fib_word(&fib6_top, hi >> (64 - FIB_TOP6));
	if (!(e & (FIB_NODE | FIB_LEAFNODE)))
		return e & FIB_RESULT_MASK;
	hi = hi << FIB_TOP6 | lo >> (64 - FIB_TOP6);
	lo <<= FIB_TOP6;
	if (e & FIB_LEAFNODE)
		return fib_leafnode(&fib6_leaves, e & ~FIB_LEAFNODE, hi >> (64 - FIB_STRIDE)) & FIB_RESULT_MASK;
	__u32 i = e & ~FIB_NODE, res = 0;
	for (int l = 0; l < FIB_LEVELS6; l++) {
		if (!fib_step(&fib6_nodes, &fib6_leaves, &i, hi >> (64 - FIB_STRIDE), &res))
			return res & FIB_RESULT_MASK;
		hi = hi << FIB_STRIDE | lo >> (64 - FIB_STRIDE);
		lo <<= FIB_STRIDE;
	}
	return 0;
}

static __always_inline __u32 fib_type(__u32 res) { return res >> FIB_TYPE_SHIFT; }
static __always_inline __u32 fib_index(__u32 res) { return res & FIB_INDEX_MASK; }

/* fib_nexthop returns nexthop id, or NULL when it is not set. The entry
 * does not change while it is published. */
static __always_inline struct fib_nexthop *fib_nexthop(__u32 id)
{
	struct fib_ptr *p = bpf_map_lookup_elem(&fib_nh_ptr, &id);
	if (!p)
		return NULL;
	__u32 slot = fib_load(&p->slot);
	if (!slot)
		return NULL;
	slot -= 1;
	return bpf_map_lookup_elem(&fib_nh, &slot);
}

/* fib_ecmp_group returns ECMP group id, or NULL when it is not set (or
 * its count is out of range). The entry does not change while it is
 * published. */
static __always_inline struct fib_ecmp *fib_ecmp_group(__u32 id)
{
	struct fib_ptr *p = bpf_map_lookup_elem(&fib_ecmp_ptr, &id);
	if (!p)
		return NULL;
	__u32 slot = fib_load(&p->slot);
	if (!slot)
		return NULL;
	slot -= 1;
	struct fib_ecmp *g = bpf_map_lookup_elem(&fib_ecmp, &slot);
	if (!g || g->count == 0 || g->count > FIB_MAX_ECMP)
		return NULL;
	return g;
}

/* fib_ecmp_member stores in *nh the member of ECMP group id that hash
 * picks (hash % count); returns 0, or -1 when the group is not set. */
static __always_inline int fib_ecmp_member(__u32 id, __u32 hash, __u32 *nh)
{
	struct fib_ecmp *g = fib_ecmp_group(id);
	if (!g)
		return -1;
	__u32 i = hash % g->count;
	/* The compiler knows i < count <= 16 and would drop the check the
	 * verifier needs; hide what it knows. */
	asm volatile("" : "+r"(i));
	if (i >= FIB_MAX_ECMP)
		return -1;
	*nh = g->members[i];
	return 0;
}

/* The flow hash: words mixed in order (IPv4 source, destination, ports,
 * protocol; IPv6 the four words of each address, ports, protocol), address
 * words in host order. Same as fib.FlowHash4/6. */
#define FIB_HASH_SEED 0x9e3779b9u

static __always_inline __u32 fib_hash_word(__u32 h, __u32 w)
{
	h ^= w;
	h *= 0x85ebca6bu;
	h ^= h >> 13;
	return h;
}

static __always_inline __u32 fib_hash_final(__u32 h)
{
	h ^= h >> 16;
	h *= 0xc2b2ae35u;
	h ^= h >> 16;
	return h;
}

#endif
