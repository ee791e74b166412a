/* The FIB as the XDP program reads it: maps written by Go through their
 * mmap'd memory (dataplane/fib). Layout and hash must stay bit-for-bit the
 * same as there.
 *
 * Entries are 32-bit words: bit 31 ext (the rest is a group index),
 * bits 23-30 depth (ignored here), bits 20-22 route type, bits 0-19 index.
 * IPv4: fib4_l0 holds 2^24 entries (65536 rows of 256), indexed by the top
 * 24 bits; an ext entry points at a 256-entry group for the last 8 bits.
 * IPv6: fib6_l0 holds 2^16 entries (256 rows) for the top 16 bits, then
 * one 256-entry group per further byte while the entry is ext.
 */
#ifndef XDPROUTER_FIB_H
#define XDPROUTER_FIB_H

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

#define FIB_EXT (1u << 31)
#define FIB_GROUP_MASK (FIB_EXT - 1)
#define FIB_RESULT_MASK ((1u << 23) - 1)
#define FIB_TYPE_SHIFT 20
#define FIB_INDEX_MASK ((1u << 20) - 1)
#define FIB_MAX_ECMP 16

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

FIB_ROWS(fib4_l0, 65536);
FIB_ROWS(fib4_groups, 1);
FIB_ROWS(fib6_l0, 256);
FIB_ROWS(fib6_groups, 1);

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

/* fib_lookup4 returns the result (type << 20 | index) for an IPv4
 * address in host byte order. */
static __always_inline __u32 fib_lookup4(__u32 a)
{
	__u32 row = a >> 16;
	struct fib_row *r = bpf_map_lookup_elem(&fib4_l0, &row);
	if (!r)
		return 0;
	__u32 e = fib_load(&r->e[(a >> 8) & 0xff]);
	if (e & FIB_EXT) {
		__u32 g = e & FIB_GROUP_MASK;
		struct fib_row *gr = bpf_map_lookup_elem(&fib4_groups, &g);
		if (!gr)
			return 0;
		e = fib_load(&gr->e[a & 0xff]);
	}
	return e & FIB_RESULT_MASK;
}

/* fib_lookup6 returns the result for an IPv6 address; a must point at 16
 * readable bytes (a checked packet header or the stack). */
static __always_inline __u32 fib_lookup6(const __u8 *a)
{
	__u32 row = a[0];
	struct fib_row *r = bpf_map_lookup_elem(&fib6_l0, &row);
	if (!r)
		return 0;
	__u32 e = fib_load(&r->e[a[1]]);
	for (int i = 2; i < 16; i++) {
		if (!(e & FIB_EXT))
			break;
		__u32 g = e & FIB_GROUP_MASK;
		struct fib_row *gr = bpf_map_lookup_elem(&fib6_groups, &g);
		if (!gr)
			return 0;
		e = fib_load(&gr->e[a[i]]);
	}
	if (e & FIB_EXT) /* deeper than 128 bits: cannot happen */
		return 0;
	return e & FIB_RESULT_MASK;
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
