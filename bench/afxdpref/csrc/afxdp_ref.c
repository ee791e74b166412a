// afxdp_ref: the reference AF_XDP forwarder of xdpbench's afxdp-ref
// scenario. What a careful C programmer writes on raw system calls, with
// what AF_XDP offers for forwarding: one thread per queue pinned to its
// CPU, one UMEM per thread shared by its sockets (XDP_SHARED_UMEM: a
// forwarded frame is a descriptor moved from an rx ring to the tx ring,
// no copy), need_wakeup, up to 256 frames per sendto
// (XDP_MAX_TX_SKB_BUDGET, Linux 6.17+; else 32), and poll() as soon as
// every rx ring is empty. Every frame goes to one next hop: MACs
// rewritten, TTL or hop limit decremented (IPv4 checksum updated
// incrementally), no route lookup and no header validation beyond the
// EtherType and the lengths the rewrite touches (the engine also checks
// the IP version, header and total lengths). With -r it only receives
// and gives the frames back (RX-only).
//
// The XDP program and its XSKMAP are the caller's: the map's fd is
// inherited (-m, default 3) and each receiving socket is put at key
// (ifindex % 64) * 64 + queue, or KEYBASE + queue with -k (one base per
// -i interface: another program's XSKMAP layout, such as xdprouter's). It prints "ready" once every socket is
// registered and, after SIGINT or SIGTERM (or when stdin closes: its
// parent is gone), one line of counters per
// thread (with its user and system CPU time since it was ready).
//
// Usage: afxdp-ref -i IFINDEX[,IFINDEX...] -o IFINDEX -q QUEUES
//        -c CPU[,CPU...] -d DSTMAC -s SRCMAC [-r] [-m MAPFD] [-n RING]
//        [-p FIFO_PRIO] [-k KEYBASE[,KEYBASE...]]
//
// -p runs the threads at that SCHED_FIFO priority, as the engine runs its
// workers (default 1), so both are scheduled alike.
#define _GNU_SOURCE
#include <errno.h>
#include <linux/bpf.h>
#include <linux/if_xdp.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

#ifndef SOL_XDP
#define SOL_XDP 283
#endif
#ifndef AF_XDP
#define AF_XDP 44
#endif
#ifndef XDP_MAX_TX_SKB_BUDGET
#define XDP_MAX_TX_SKB_BUDGET 9
#endif

#define FRAME_SIZE 2048
#define BATCH 256
#define MAX_IN 8
#define MAX_Q 64

struct ring {
	uint32_t *prod, *cons, *flags;
	void *descs;
	uint32_t size, mask, cached_prod, cached_cons;
};

struct sock {
	int fd, ifindex;
	struct ring rx, tx, fill, comp;
	void *map[4];
	size_t maplen[4];
	uint32_t budget;
};

struct worker {
	int q, cpu;
	pthread_t th;
	struct sock s[MAX_IN + 1]; // receiving sockets, then the sending one
	uint8_t *umem;
	uint64_t *free;
	uint32_t nfree;
	unsigned long long rx, tx, drop, kicks, polls, user_us, sys_us;
	int err;
};

static int n_in, n_keys, key_base[MAX_IN], out_ifindex, in_ifindex[MAX_IN], nq, cpus[MAX_Q], ncpus, rx_only, map_fd = 3, prio;
static uint32_t ring_size = 4096, frames_per_sock = 8192;
static uint8_t dst_mac[6], src_mac[6];
static volatile int stop;
static int ready_count;
static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cv = PTHREAD_COND_INITIALIZER;

static uint32_t prod_free(struct ring *r, uint32_t want)
{
	uint32_t n = r->cached_cons + r->size - r->cached_prod;
	if (n >= want)
		return n;
	r->cached_cons = __atomic_load_n(r->cons, __ATOMIC_ACQUIRE);
	return r->cached_cons + r->size - r->cached_prod;
}

static uint32_t cons_avail(struct ring *r, uint32_t want)
{
	uint32_t n = r->cached_prod - r->cached_cons;
	if (n >= want)
		return n;
	r->cached_prod = __atomic_load_n(r->prod, __ATOMIC_ACQUIRE);
	return r->cached_prod - r->cached_cons;
}

static int map_ring(struct sock *s, int i, struct ring *r, struct xdp_ring_offset *o, off_t pgoff, size_t entry)
{
	size_t len = o->desc + ring_size * entry;
	void *m = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, s->fd, pgoff);
	if (m == MAP_FAILED)
		return -errno;
	s->map[i] = m;
	s->maplen[i] = len;
	r->prod = (uint32_t *)((char *)m + o->producer);
	r->cons = (uint32_t *)((char *)m + o->consumer);
	r->flags = (uint32_t *)((char *)m + o->flags);
	r->descs = (char *)m + o->desc;
	r->size = ring_size;
	r->mask = ring_size - 1;
	r->cached_prod = *r->prod;
	r->cached_cons = *r->cons;
	return 0;
}

static int open_sock(struct worker *w, struct sock *s, int ifindex, int share_fd)
{
	s->ifindex = ifindex;
	s->budget = 32;
	s->fd = socket(AF_XDP, SOCK_RAW | SOCK_CLOEXEC, 0);
	if (s->fd < 0)
		return -errno;
	if (share_fd < 0) {
		struct xdp_umem_reg reg = {.addr = (uintptr_t)w->umem,
					   .len = (uint64_t)frames_per_sock * (n_in + 1) * FRAME_SIZE,
					   .chunk_size = FRAME_SIZE};
		if (setsockopt(s->fd, SOL_XDP, XDP_UMEM_REG, &reg, sizeof(reg)))
			return -errno;
	}
	int n = ring_size;
	if (setsockopt(s->fd, SOL_XDP, XDP_UMEM_FILL_RING, &n, sizeof(n)) ||
	    setsockopt(s->fd, SOL_XDP, XDP_UMEM_COMPLETION_RING, &n, sizeof(n)) ||
	    setsockopt(s->fd, SOL_XDP, XDP_RX_RING, &n, sizeof(n)) ||
	    setsockopt(s->fd, SOL_XDP, XDP_TX_RING, &n, sizeof(n)))
		return -errno;
	struct xdp_mmap_offsets off;
	socklen_t ol = sizeof(off);
	if (getsockopt(s->fd, SOL_XDP, XDP_MMAP_OFFSETS, &off, &ol))
		return -errno;
	int err;
	if ((err = map_ring(s, 0, &s->rx, &off.rx, XDP_PGOFF_RX_RING, sizeof(struct xdp_desc))) ||
	    (err = map_ring(s, 1, &s->tx, &off.tx, XDP_PGOFF_TX_RING, sizeof(struct xdp_desc))) ||
	    (err = map_ring(s, 2, &s->fill, &off.fr, XDP_UMEM_PGOFF_FILL_RING, sizeof(uint64_t))) ||
	    (err = map_ring(s, 3, &s->comp, &off.cr, XDP_UMEM_PGOFF_COMPLETION_RING, sizeof(uint64_t))))
		return err;
	int budget = BATCH < (int)ring_size ? BATCH : (int)ring_size;
	if (setsockopt(s->fd, SOL_XDP, XDP_MAX_TX_SKB_BUDGET, &budget, sizeof(budget)) == 0)
		s->budget = budget;
	struct sockaddr_xdp sa = {.sxdp_family = AF_XDP, .sxdp_ifindex = ifindex, .sxdp_queue_id = w->q};
	if (share_fd >= 0) {
		sa.sxdp_flags = XDP_SHARED_UMEM;
		sa.sxdp_shared_umem_fd = share_fd;
	} else {
		sa.sxdp_flags = XDP_USE_NEED_WAKEUP;
	}
	for (int i = 0; i < 200; i++) { // a closed socket frees its queue in a workqueue
		if (bind(s->fd, (struct sockaddr *)&sa, sizeof(sa)) == 0)
			return 0;
		if (errno != EBUSY)
			break;
		usleep(10000);
	}
	return -errno;
}

static int xskmap_put(uint32_t key, int fd)
{
	union bpf_attr a;
	memset(&a, 0, sizeof(a));
	uint32_t v = fd;
	a.map_fd = map_fd;
	a.key = (uintptr_t)&key;
	a.value = (uintptr_t)&v;
	return syscall(__NR_bpf, BPF_MAP_UPDATE_ELEM, &a, sizeof(a)) ? -errno : 0;
}

static void top_up(struct worker *w, struct sock *s)
{
	uint32_t n = prod_free(&s->fill, s->fill.size);
	if (n > w->nfree)
		n = w->nfree;
	if (!n)
		return;
	uint64_t *a = s->fill.descs;
	for (uint32_t i = 0; i < n; i++)
		a[(s->fill.cached_prod + i) & s->fill.mask] = w->free[--w->nfree];
	s->fill.cached_prod += n;
	__atomic_store_n(s->fill.prod, s->fill.cached_prod, __ATOMIC_RELEASE);
}

static void reap(struct worker *w, struct sock *s)
{
	uint32_t n = cons_avail(&s->comp, s->comp.size);
	if (!n)
		return;
	uint64_t *a = s->comp.descs;
	for (uint32_t i = 0; i < n; i++)
		w->free[w->nfree++] = a[(s->comp.cached_cons + i) & s->comp.mask] & ~(uint64_t)(FRAME_SIZE - 1);
	s->comp.cached_cons += n;
	__atomic_store_n(s->comp.cons, s->comp.cached_cons, __ATOMIC_RELEASE);
}

// rewrite4 decrements an IPv4 TTL, updates the checksum (RFC 1624) and
// the MACs; 0 drops the frame.
static int rewrite4(uint8_t *p)
{
	uint8_t *ip = p + 14;
	if (ip[8] <= 1)
		return 0;
	uint16_t old = (uint16_t)(ip[8] << 8 | ip[9]);
	ip[8]--;
	uint16_t neu = (uint16_t)(ip[8] << 8 | ip[9]);
	uint32_t sum = (uint16_t) ~(ip[10] << 8 | ip[11]);
	sum += (uint16_t)~old;
	sum += neu;
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	sum = ~sum & 0xffff;
	ip[10] = sum >> 8;
	ip[11] = sum & 0xff;
	memcpy(p, dst_mac, 6);
	memcpy(p + 6, src_mac, 6);
	return 1;
}

// rewrite readies a frame for the next hop; 0 drops it.
static int rewrite(uint8_t *p, uint32_t len)
{
	if (len >= 14 + 20 && p[12] == 0x08 && p[13] == 0x00)
		return rewrite4(p);
	if (len >= 14 + 40 && p[12] == 0x86 && p[13] == 0xdd) {
		if (p[14 + 7] <= 1)
			return 0;
		p[14 + 7]--;
		memcpy(p, dst_mac, 6);
		memcpy(p + 6, src_mac, 6);
		return 1;
	}
	return 0;
}

static void kick(struct worker *w, struct sock *s, uint32_t queued)
{
	if (!(__atomic_load_n(s->tx.flags, __ATOMIC_ACQUIRE) & XDP_RING_NEED_WAKEUP))
		return;
	uint32_t limit = queued / s->budget + 2;
	for (uint32_t k = 0; k < limit; k++) {
		w->kicks++;
		if (sendto(s->fd, NULL, 0, MSG_DONTWAIT, NULL, 0) < 0 && errno != EAGAIN)
			return; // EBUSY, ENOBUFS: the kernel pushes back, the next round sends
		if (__atomic_load_n(s->tx.cons, __ATOMIC_ACQUIRE) == s->tx.cached_prod)
			return;
	}
}

// watch_stdin ends the program when its parent goes away (stdin closes),
// so no forwarder outlives the benchmark that started it.
static void *watch_stdin(void *arg)
{
	(void)arg;
	char buf[64];
	while (read(0, buf, sizeof(buf)) > 0)
		;
	kill(getpid(), SIGTERM);
	return NULL;
}

static void *run(void *arg)
{
	struct worker *w = arg;
	cpu_set_t set;
	CPU_ZERO(&set);
	CPU_SET(w->cpu, &set);
	if ((w->err = -pthread_setaffinity_np(pthread_self(), sizeof(set), &set)))
		goto ready;
	if (prio > 0) {
		struct sched_param sp = {.sched_priority = prio};
		if ((w->err = -pthread_setschedparam(pthread_self(), SCHED_FIFO, &sp))) {
			fprintf(stderr, "afxdp-ref: queue %d: SCHED_FIFO %d: %s\n", w->q, prio, strerror(-w->err));
			goto ready;
		}
	}
	size_t nframes = (size_t)frames_per_sock * (n_in + 1);
	w->umem = mmap(NULL, nframes * FRAME_SIZE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
	w->free = calloc(nframes, sizeof(uint64_t));
	if (w->umem == MAP_FAILED || !w->free) {
		w->err = -ENOMEM;
		goto ready;
	}
	for (size_t i = 0; i < nframes; i++)
		w->free[w->nfree++] = (nframes - 1 - i) * FRAME_SIZE;
	for (int i = 0; i <= n_in; i++) {
		int ifindex = i < n_in ? in_ifindex[i] : out_ifindex;
		if ((w->err = open_sock(w, &w->s[i], ifindex, i == 0 ? -1 : w->s[0].fd))) {
			fprintf(stderr, "afxdp-ref: queue %d ifindex %d: socket: %s\n", w->q, ifindex, strerror(-w->err));
			goto ready;
		}
	}
	for (int i = 0; i < n_in; i++) {
		top_up(w, &w->s[i]);
		uint32_t base = i < n_keys ? (uint32_t)key_base[i] : (uint32_t)(w->s[i].ifindex % 64) * 64;
		if ((w->err = xskmap_put(base + w->q, w->s[i].fd))) {
			fprintf(stderr, "afxdp-ref: queue %d: XSKMAP: %s\n", w->q, strerror(-w->err));
			goto ready;
		}
	}
ready:
	pthread_mutex_lock(&mu);
	ready_count++;
	pthread_cond_broadcast(&cv);
	pthread_mutex_unlock(&mu);
	if (w->err)
		return NULL;

	struct sock *out = &w->s[n_in];
	uint64_t umem_len = (uint64_t)frames_per_sock * (n_in + 1) * FRAME_SIZE;
	// CPU time is counted from here: setup (mapping and populating the
	// UMEM) is not forwarding.
	struct rusage ru0 = {0}, ru;
	getrusage(RUSAGE_THREAD, &ru0);
	struct pollfd pfd[MAX_IN];
	for (int i = 0; i < n_in; i++)
		pfd[i] = (struct pollfd){.fd = w->s[i].fd, .events = POLLIN};
	while (!stop) {
		uint32_t got = 0, queued = 0;
		for (int i = 0; i < n_in; i++) {
			struct sock *s = &w->s[i];
			uint32_t n = cons_avail(&s->rx, BATCH);
			if (n > BATCH)
				n = BATCH;
			if (!n)
				continue;
			struct xdp_desc *rd = s->rx.descs;
			uint32_t room = rx_only ? 0 : prod_free(&out->tx, queued + n);
			struct xdp_desc *td = out->tx.descs;
			for (uint32_t j = 0; j < n; j++) {
				struct xdp_desc d = rd[(s->rx.cached_cons + j) & s->rx.mask];
				if (d.addr >= umem_len || d.len > FRAME_SIZE || (d.addr & (FRAME_SIZE - 1)) + d.len > FRAME_SIZE) {
					w->drop++; // not a frame of ours: never from this kernel
					continue;
				}
				if (!rx_only && queued < room && rewrite(w->umem + d.addr, d.len)) {
					td[(out->tx.cached_prod + queued) & out->tx.mask] = d;
					queued++;
				} else {
					w->free[w->nfree++] = d.addr & ~(uint64_t)(FRAME_SIZE - 1);
					if (!rx_only)
						w->drop++;
				}
			}
			s->rx.cached_cons += n;
			__atomic_store_n(s->rx.cons, s->rx.cached_cons, __ATOMIC_RELEASE);
			got += n;
		}
		w->rx += got;
		if (queued) {
			out->tx.cached_prod += queued;
			__atomic_store_n(out->tx.prod, out->tx.cached_prod, __ATOMIC_RELEASE);
			w->tx += queued;
			kick(w, out, queued);
		}
		int left = __atomic_load_n(out->tx.cons, __ATOMIC_ACQUIRE) != out->tx.cached_prod;
		if (!queued && left)
			kick(w, out, out->tx.cached_prod - *out->tx.cons); // what the kernel pushed back
		reap(w, out);
		for (int i = 0; i < n_in; i++)
			top_up(w, &w->s[i]);
		if (!got) {
			w->polls++;
			poll(pfd, n_in, left ? 1 : 100);
		}
	}
	if (getrusage(RUSAGE_THREAD, &ru) == 0) {
		w->user_us = (ru.ru_utime.tv_sec - ru0.ru_utime.tv_sec) * 1000000LL + (ru.ru_utime.tv_usec - ru0.ru_utime.tv_usec);
		w->sys_us = (ru.ru_stime.tv_sec - ru0.ru_stime.tv_sec) * 1000000LL + (ru.ru_stime.tv_usec - ru0.ru_stime.tv_usec);
	}
	return NULL;
}

static int parse_mac(const char *s, uint8_t *m)
{
	return sscanf(s, "%hhx:%hhx:%hhx:%hhx:%hhx:%hhx", &m[0], &m[1], &m[2], &m[3], &m[4], &m[5]) == 6 ? 0 : -1;
}

static int parse_list(char *s, int *out, int max)
{
	int n = 0;
	for (char *t = strtok(s, ","); t && n < max; t = strtok(NULL, ","))
		out[n++] = atoi(t);
	return n;
}

static void usage(void)
{
	fprintf(stderr, "usage: afxdp-ref -i IFINDEX[,IFINDEX...] -o IFINDEX -q QUEUES -c CPU[,CPU...] -d DSTMAC -s SRCMAC [-r] [-m MAPFD] [-n RING] [-p FIFO_PRIO] [-k KEYBASE[,KEYBASE...]]\n");
	exit(2);
}

int main(int argc, char **argv)
{
	int opt;
	while ((opt = getopt(argc, argv, "i:o:q:c:d:s:rm:n:p:k:")) != -1) {
		switch (opt) {
		case 'i': n_in = parse_list(optarg, in_ifindex, MAX_IN); break;
		case 'o': out_ifindex = atoi(optarg); break;
		case 'q': nq = atoi(optarg); break;
		case 'c': ncpus = parse_list(optarg, cpus, MAX_Q); break;
		case 'd': if (parse_mac(optarg, dst_mac)) usage(); break;
		case 's': if (parse_mac(optarg, src_mac)) usage(); break;
		case 'r': rx_only = 1; break;
		case 'm': map_fd = atoi(optarg); break;
		case 'n': ring_size = atoi(optarg); break;
		case 'p': prio = atoi(optarg); break;
		case 'k': n_keys = parse_list(optarg, key_base, MAX_IN); break;
		default: usage();
		}
	}
	if (!n_in || !out_ifindex || nq <= 0 || nq > MAX_Q || !ncpus || !ring_size || ring_size & (ring_size - 1))
		usage();
	if (frames_per_sock < 2 * ring_size)
		frames_per_sock = 2 * ring_size;
	sigset_t sigs;
	sigemptyset(&sigs);
	sigaddset(&sigs, SIGINT);
	sigaddset(&sigs, SIGTERM);
	pthread_sigmask(SIG_BLOCK, &sigs, NULL);
	struct worker *ws = calloc(nq, sizeof(*ws));
	for (int q = 0; q < nq; q++) {
		ws[q].q = q;
		ws[q].cpu = cpus[q % ncpus];
		pthread_create(&ws[q].th, NULL, run, &ws[q]);
	}
	pthread_t watcher;
	pthread_create(&watcher, NULL, watch_stdin, NULL);
	pthread_mutex_lock(&mu);
	while (ready_count < nq)
		pthread_cond_wait(&cv, &mu);
	pthread_mutex_unlock(&mu);
	int failed = 0;
	for (int q = 0; q < nq; q++)
		failed |= ws[q].err != 0;
	if (!failed) {
		printf("ready\n");
		fflush(stdout);
		int sig;
		sigwait(&sigs, &sig);
	}
	stop = 1;
	for (int q = 0; q < nq; q++)
		pthread_join(ws[q].th, NULL);
	for (int q = 0; q < nq; q++) {
		struct worker *w = &ws[q];
		struct xdp_statistics st = {0}, sum = {0};
		for (int i = 0; i < n_in && !w->err; i++) {
			socklen_t l = sizeof(st);
			if (getsockopt(w->s[i].fd, SOL_XDP, XDP_STATISTICS, &st, &l) == 0) {
				sum.rx_ring_full += st.rx_ring_full;
				sum.rx_fill_ring_empty_descs += st.rx_fill_ring_empty_descs;
			}
		}
		printf("queue=%d cpu=%d rx=%llu tx=%llu drop=%llu kicks=%llu polls=%llu user_us=%llu sys_us=%llu budget=%u rx_ring_full=%llu fill_ring_empty=%llu\n",
		       w->q, w->cpu, w->rx, w->tx, w->drop, w->kicks, w->polls, w->user_us, w->sys_us, w->err ? 0 : w->s[n_in].budget,
		       (unsigned long long)sum.rx_ring_full, (unsigned long long)sum.rx_fill_ring_empty_descs);
	}
	return failed;
}
