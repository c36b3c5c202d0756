/* SPDX-License-Identifier: BSD-3-Clause
 *
 * dma_peer: the DPDK side of Scripts/peer-bench.
 *
 * Runs the stream workload on a dmadev (DPDK's software `dma_skeleton` on machines without a DMA
 * engine) through the dmadev API, and one core's glibc memcpy over the same slots, and prints
 * one line per repetition in the format `netdma-peer report` reads:
 *
 *   RESULT impl=dpdk-skeleton size=N ops=N wall_ns=N api_cycles=N ... verified=0|1 tsc_hz=N
 *   MEMCPY impl=dpdk-skeleton size=N ops=N wall_ns=N other_load=X
 *
 * With -c (count mode, run under valgrind --tool=callgrind) it instead runs each repetition
 * between two callgrind dumps and prints a WINDOW line per repetition (see count_window).
 *
 * Workload (the same on the NetDMA side): W bytes of source and destination (default 32 MiB
 * each), cut into W/size slots used round-robin; batches of B (32) copies and one submit
 * whenever B ring slots are free; one rte_dma_completed(capacity) per loop turn; the ring
 * index of every completion and the destination bytes are checked.
 *
 * Build: cc -O2 -DALLOW_EXPERIMENTAL_API -I Benchmarks/Sources/CBenchSupport/include \
 *            $(pkg-config --cflags libdpdk) dma_peer.c Benchmarks/Sources/CBenchSupport/CBenchSupport.c \
 *            -o dma_peer $(pkg-config --libs libdpdk)
 * Run:   dma_peer --no-huge -m 512 --no-pci --no-shconf -l 0 --vdev=dma_skeleton -- [options]
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <inttypes.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "CBenchSupport.h"  /* Benchmarks/Sources/CBenchSupport: CPU-time and load helpers */

#include <rte_cycles.h>
#include <rte_dmadev.h>
#include <rte_eal.h>
#include <rte_errno.h>
#include <rte_malloc.h>

static int64_t now_ns(clockid_t clock) {
    struct timespec ts;
    clock_gettime(clock, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* The kernel thread ID of this process's thread whose name starts with `prefix`, or 0. */
static int find_thread(const char *prefix) {
    DIR *d = opendir("/proc/self/task");
    if (!d) return 0;
    struct dirent *e;
    int found = 0;
    while (!found && (e = readdir(d)) != NULL) {
        if (e->d_name[0] == '.') continue;
        char path[300], name[64] = {0};
        snprintf(path, sizeof path, "/proc/self/task/%s/comm", e->d_name);
        FILE *f = fopen(path, "r");
        if (!f) continue;
        if (fgets(name, sizeof name, f) && strncmp(name, prefix, strlen(prefix)) == 0) found = atoi(e->d_name);
        fclose(f);
    }
    closedir(d);
    return found;
}

struct load_meter { uint64_t busy, self; int64_t t0; };

static void load_start(struct load_meter *m) {
    bench_cpu_ticks(&m->busy, &m->self);
    m->t0 = now_ns(CLOCK_MONOTONIC);
}

/* CPUs' worth of time other processes used since load_start. */
static double load_other(const struct load_meter *m) {
    uint64_t b = 0, s = 0;
    bench_cpu_ticks(&b, &s);
    double secs = (double)(now_ns(CLOCK_MONOTONIC) - m->t0) / 1e9;
    double ticks = (double)(b - m->busy) - (double)(s - m->self);
    double v = secs > 0 ? ticks / (double)sysconf(_SC_CLK_TCK) / secs : 0;
    return v < 0 ? 0 : v;
}

static size_t parse_bytes(const char *s) {
    char *end;
    unsigned long long v = strtoull(s, &end, 10);
    if (*end == 'k' || *end == 'K') v <<= 10;
    else if (*end == 'm' || *end == 'M') v <<= 20;
    else if (*end == 'g' || *end == 'G') v <<= 30;
    return (size_t)v;
}

static size_t ops_for_size(size_t size, size_t total, size_t ws) {
    size_t slots = ws / size ? ws / size : 1;
    size_t ops = total / size;
    if (ops < 4096) ops = 4096;
    if (ops > 2000000) ops = 2000000;
    return ops < slots ? slots : ops;
}

/* With -o: that many ops, but no more than `total` bytes' worth, and at least 256. */
static size_t fixed_ops_for_size(size_t ops, size_t size, size_t total) {
    size_t cap = total / size < 256 ? 256 : total / size;
    return ops < cap ? ops : cap;
}

struct stream_result {
    size_t ops;
    int64_t wall_ns, sub_cpu_ns, worker_cpu_ns;
    uint64_t api_cycles;
    unsigned long preempted, polls, empty_polls, batches, capacity_checks;
    double other_load;
    int verified;
};

/* The dmadev calls of the stream, for count mode (-c, under callgrind): each goes through a
 * wrapper that is never inlined or cloned, so that callgrind's inclusive cost of the wrapper is
 * the cost of the call: the inline part of rte_dmadev.h (the fast-path object lookup and the
 * indirect call), the driver's function, and the wrapper's own call, return and argument moves.
 * Outside count mode the loop calls DPDK's inline API directly. */
#define COUNTED __attribute__((noinline, noipa, used))
static COUNTED int counted_copy(int16_t dev, rte_iova_t src, rte_iova_t dst, uint32_t length) {
    return rte_dma_copy(dev, 0, src, dst, length, 0);
}
static COUNTED int counted_submit(int16_t dev) { return rte_dma_submit(dev, 0); }
static COUNTED uint16_t counted_completed(int16_t dev, uint16_t max, uint16_t *last, bool *has_error) {
    return rte_dma_completed(dev, 0, max, last, has_error);
}
static COUNTED uint16_t counted_capacity(int16_t dev) { return rte_dma_burst_capacity(dev, 0); }

#define CALL_COPY(c, dev, s, d, n) ((c) ? counted_copy(dev, s, d, n) : rte_dma_copy(dev, 0, s, d, n, 0))
#define CALL_SUBMIT(c, dev) ((c) ? counted_submit(dev) : rte_dma_submit(dev, 0))
#define CALL_COMPLETED(c, dev, m, l, e) ((c) ? counted_completed(dev, m, l, e) : rte_dma_completed(dev, 0, m, l, e))
#define CALL_CAPACITY(c, dev) ((c) ? counted_capacity(dev) : rte_dma_burst_capacity(dev, 0))

/* One repetition of the stream workload. Returns 0, or -1 with a message on stderr. Inlined
 * twice with a constant `counting`, so the timed loop has no trace of count mode. */
static inline __attribute__((always_inline)) int
stream_loop(int16_t dev, uint16_t capacity, char *src, char *dst, rte_iova_t src_iova, rte_iova_t dst_iova,
            size_t size, size_t ws, size_t ops, unsigned batch, uint64_t tsc_cost, int worker_tid,
            struct stream_result *r, const int counting) {
    size_t slots = ws / size ? ws / size : 1;
    size_t touched = (ops < slots ? ops : slots) * size;
    memset(dst, 0, touched);
    size_t issued = 0, done = 0, slot = 0;
    uint16_t expected = 0;
    int first = 1, bad = 0;
    uint64_t api = 0;
    unsigned long preempted = 0, polls = 0, empty = 0, batches = 0, checks = 0;
    struct load_meter meter;
    load_start(&meter);
    int64_t e0 = (worker_tid > 0 ? bench_thread_cpu_ns(worker_tid) : 0);
    int64_t c0 = now_ns(CLOCK_THREAD_CPUTIME_ID);
    int64_t w0 = now_ns(CLOCK_MONOTONIC);
    while (done < ops) {
        size_t want = ops - issued < batch ? ops - issued : batch;
        if (want > 0 && (checks++, CALL_CAPACITY(counting, dev) >= want)) {
            uint64_t t0 = rte_rdtsc();
            for (size_t i = 0; i < want; i++) {
                size_t off = slot * size;
                int idx = CALL_COPY(counting, dev, src_iova + off, dst_iova + off, (uint32_t)size);
                if (idx < 0) { fprintf(stderr, "dma_peer: rte_dma_copy: %s\n", strerror(-idx)); return -1; }
                if (first) { expected = (uint16_t)idx; first = 0; }
                if (++slot == slots) slot = 0;
            }
            int rc = CALL_SUBMIT(counting, dev);
            uint64_t t1 = rte_rdtsc();
            if (rc < 0) { fprintf(stderr, "dma_peer: rte_dma_submit: %s\n", strerror(-rc)); return -1; }
            uint64_t dt = t1 - t0 - tsc_cost;
            if (dt > 20000 + 400 * want) preempted++; else api += dt;
            issued += want;
            batches++;
        }
        uint16_t last = 0;
        bool has_error = false;
        uint64_t t2 = rte_rdtsc();
        uint16_t n = CALL_COMPLETED(counting, dev, capacity, &last, &has_error);
        uint64_t t3 = rte_rdtsc();
        polls++;
        if (n == 0 && !has_error) {
            empty++;
            /* Under callgrind the threads take turns: let the worker run (the count excludes
             * empty polls, so how many there are does not matter). */
            if (counting) sched_yield();
            continue;
        }
        uint64_t dt = t3 - t2 - tsc_cost;
        if (dt > 20000 + 400 * (uint64_t)n) preempted++; else api += dt;
        if (has_error) { fprintf(stderr, "dma_peer: an op failed\n"); bad = 1; break; }
        if (last != (uint16_t)(expected + n - 1)) {
            fprintf(stderr, "dma_peer: last_idx %u, expected %u\n", last, (uint16_t)(expected + n - 1));
            bad = 1;
            break;
        }
        expected = (uint16_t)(expected + n);
        done += n;
    }
    int64_t w1 = now_ns(CLOCK_MONOTONIC);
    int64_t c1 = now_ns(CLOCK_THREAD_CPUTIME_ID);
    int64_t e1 = (worker_tid > 0 ? bench_thread_cpu_ns(worker_tid) : 0);
    r->other_load = load_other(&meter);
    r->ops = ops;
    r->wall_ns = w1 - w0;
    r->sub_cpu_ns = c1 - c0;
    r->worker_cpu_ns = e1 - e0;
    r->api_cycles = api;
    r->preempted = preempted;
    r->polls = polls;
    r->empty_polls = empty;
    r->batches = batches;
    r->capacity_checks = checks;
    if (!bad && memcmp(dst, src, touched) != 0) { fprintf(stderr, "dma_peer: destination differs from source\n"); bad = 1; }
    r->verified = !bad;
    return bad ? -1 : 0;
}

static int stream(int16_t dev, uint16_t capacity, char *src, char *dst, rte_iova_t src_iova, rte_iova_t dst_iova,
                  size_t size, size_t ws, size_t ops, unsigned batch, uint64_t tsc_cost, int worker_tid,
                  struct stream_result *r, int counting) {
    if (counting)
        return stream_loop(dev, capacity, src, dst, src_iova, dst_iova, size, ws, ops, batch, tsc_cost, worker_tid, r, 1);
    return stream_loop(dev, capacity, src, dst, src_iova, dst_iova, size, ws, ops, batch, tsc_cost, worker_tid, r, 0);
}

static void nap_ms(long ms) {
    struct timespec t = { ms / 1000, (ms % 1000) * 1000000 };
    nanosleep(&t, NULL);
}

/* Count mode: one repetition between callgrind dumps, then an idle window.
 *
 *   zero counters; the stream (counted calls; a sched_yield after each empty poll, so that the
 *   worker gets its turn); dump "stream-SIZE"; EMPTY_POLLS counted polls of the drained queue;
 *   dump "empty-SIZE" (what one empty poll costs); one 64-byte copy, polled to completion;
 *   100 ms nap (the worker polls an empty queue, then naps); dump "idle-SIZE".
 *
 * The one copy starts the idle window with a worker that has just found work: the skeleton
 * naps only after 10,000 empty polls in a row, so the window holds those polls first, and the
 * analysis (`netdma-peer counts`) tells the idle loop by its most executed instructions. */
#define EMPTY_POLLS 1000
static int count_window(int16_t dev, uint16_t capacity, char *src, char *dst, rte_iova_t src_iova, rte_iova_t dst_iova,
                        size_t size, size_t ws, size_t ops, unsigned batch, uint64_t tsc_cost, int worker_tid) {
    struct stream_result r;
    memset(&r, 0, sizeof r);
    char reason[64];
    bench_callgrind_zero();
    int rc = stream(dev, capacity, src, dst, src_iova, dst_iova, size, ws, ops, batch, tsc_cost, worker_tid, &r, 1);
    snprintf(reason, sizeof reason, "stream-%zu", size);
    bench_callgrind_dump(reason);
    unsigned long nonempty = 0;
    for (int i = 0; i < EMPTY_POLLS; i++) {
        uint16_t last = 0;
        bool has_error = false;
        if (counted_completed(dev, capacity, &last, &has_error) != 0 || has_error) nonempty++;
    }
    snprintf(reason, sizeof reason, "empty-%zu", size);
    bench_callgrind_dump(reason);
    if (rte_dma_copy(dev, 0, src_iova, dst_iova, 64, RTE_DMA_OP_FLAG_SUBMIT) < 0) rc = -1;
    for (uint16_t got = 0; rc == 0 && got == 0;) {
        uint16_t last = 0;
        bool has_error = false;
        got = rte_dma_completed(dev, 0, 1, &last, &has_error);
        if (has_error) rc = -1;
    }
    nap_ms(100);
    snprintf(reason, sizeof reason, "idle-%zu", size);
    bench_callgrind_dump(reason);
    if (nonempty) { fprintf(stderr, "dma_peer: %lu polls of a drained queue returned ops\n", nonempty); rc = -1; }
    printf("WINDOW impl=dpdk-skeleton size=%zu ops=%zu batches=%lu polls=%lu empty_polls=%lu capacity_checks=%lu"
           " empty_poll_calls=%d stream=stream-%zu empty=empty-%zu idle=idle-%zu verified=%d\n",
           size, r.ops, r.batches, r.polls, r.empty_polls, r.capacity_checks, EMPTY_POLLS, size, size, size,
           rc == 0 && r.verified);
    fflush(stdout);
    return rc;
}

int main(int argc, char **argv) {
    int consumed = rte_eal_init(argc, argv);
    if (consumed < 0) { fprintf(stderr, "dma_peer: EAL init failed: %s\n", rte_strerror(rte_errno)); return 2; }
    argc -= consumed;
    argv += consumed;

    char sizes_arg[256] = "64,256,1k,4k,64k,1m";
    unsigned reps = 1, batch = 32, ring = 1024, do_memcpy = 1, counting = 0;
    size_t ws = 32u << 20, total = (size_t)2 << 30, fixed_ops = 0;
    int opt;
    optind = 1;
    while ((opt = getopt(argc, argv, "s:r:b:q:w:t:o:nc")) != -1) {
        switch (opt) {
        case 's': snprintf(sizes_arg, sizeof sizes_arg, "%s", optarg); break;
        case 'r': reps = (unsigned)atoi(optarg); break;
        case 'b': batch = (unsigned)atoi(optarg); break;
        case 'q': ring = (unsigned)atoi(optarg); break;
        case 'w': ws = parse_bytes(optarg); break;
        case 't': total = parse_bytes(optarg); break;
        case 'o': fixed_ops = parse_bytes(optarg); break;
        case 'n': do_memcpy = 0; break;
        case 'c': counting = 1; break;
        default:
            fprintf(stderr, "usage: dma_peer EAL-ARGS -- [-s SIZES] [-r REPS] [-b BATCH] [-q RING] [-w BYTES] [-t BYTES]"
                            " [-o OPS (per repetition, at most -t bytes' worth, at least 256)] [-n (no memcpy)] [-c (count mode, under callgrind)]\n");
            return 2;
        }
    }
    if (counting && !bench_under_callgrind()) {
        fprintf(stderr, "dma_peer: -c needs valgrind --tool=callgrind (and a build with <valgrind/callgrind.h>)\n");
        return 2;
    }

    if (rte_dma_count_avail() == 0) { fprintf(stderr, "dma_peer: no dmadev (pass --vdev=dma_skeleton)\n"); return 2; }
    int16_t dev = (int16_t)rte_dma_next_dev(0);
    struct rte_dma_info info;
    if (rte_dma_info_get(dev, &info) != 0) { fprintf(stderr, "dma_peer: rte_dma_info_get failed\n"); return 2; }
    struct rte_dma_conf conf = { .nb_vchans = 1 };
    struct rte_dma_vchan_conf vconf = { .direction = RTE_DMA_DIR_MEM_TO_MEM, .nb_desc = (uint16_t)ring };
    if (rte_dma_configure(dev, &conf) != 0 || rte_dma_vchan_setup(dev, 0, &vconf) != 0 || rte_dma_start(dev) != 0) {
        fprintf(stderr, "dma_peer: cannot configure and start dmadev %s\n", info.dev_name);
        return 2;
    }
    uint16_t capacity = rte_dma_burst_capacity(dev, 0);
    int worker = find_thread("dma_skel");

    char *src = rte_malloc("peer_src", ws, 4096), *dst = rte_malloc("peer_dst", ws, 4096);
    if (!src || !dst) { fprintf(stderr, "dma_peer: cannot allocate 2 x %zu bytes (raise EAL -m)\n", ws); return 2; }
    rte_iova_t src_iova = rte_malloc_virt2iova(src), dst_iova = rte_malloc_virt2iova(dst);
    uint64_t x = 0x9E3779B97F4A7C15ull;
    for (size_t k = 0; k < ws / 8; k++) {
        x ^= x << 13; x ^= x >> 7; x ^= x << 17;
        ((uint64_t *)src)[k] = x;
    }

    /* TSC rate against CLOCK_MONOTONIC, and the cost of an rdtsc pair. */
    int64_t n0 = now_ns(CLOCK_MONOTONIC);
    uint64_t t0 = rte_rdtsc();
    struct timespec nap = { 0, 50000000 };
    nanosleep(&nap, NULL);
    uint64_t tsc_hz = (uint64_t)((double)(rte_rdtsc() - t0) * 1e9 / (double)(now_ns(CLOCK_MONOTONIC) - n0));
    uint64_t tsc_cost = UINT64_MAX;
    for (int i = 0; i < 1000; i++) {
        uint64_t a = rte_rdtsc(), b = rte_rdtsc();
        if (b - a < tsc_cost) tsc_cost = b - a;
    }

    printf("INFO impl=dpdk-skeleton dev=%s tsc_hz=%" PRIu64 " rdtsc_cost=%" PRIu64 " ring=%u capacity=%u batch=%u working_set=%zu worker_tid=%d\n",
           info.dev_name, tsc_hz, tsc_cost, ring, capacity, batch, ws, worker);
    int failed = 0;
    char *save = NULL;
    for (char *tok = strtok_r(sizes_arg, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
        size_t size = parse_bytes(tok);
        if (size == 0 || size > ws) continue;
        size_t ops = fixed_ops ? fixed_ops_for_size(fixed_ops, size, total) : ops_for_size(size, total, ws);
        struct stream_result r;
        /* Warm-up: wakes the worker from its nap mode. */
        size_t warm = ops < 20000 ? ops : 20000;
        if (stream(dev, capacity, src, dst, src_iova, dst_iova, size, ws, warm, batch, tsc_cost, worker, &r, 0) != 0) failed = 1;
        if (counting) {
            for (unsigned rep = 0; rep < reps; rep++)
                if (count_window(dev, capacity, src, dst, src_iova, dst_iova, size, ws, ops, batch, tsc_cost, worker) != 0) failed = 1;
            continue;
        }
        for (unsigned rep = 0; rep < reps; rep++) {
            memset(&r, 0, sizeof r);
            if (stream(dev, capacity, src, dst, src_iova, dst_iova, size, ws, ops, batch, tsc_cost, worker, &r, 0) != 0) failed = 1;
            printf("RESULT impl=dpdk-skeleton size=%zu ops=%zu wall_ns=%" PRId64 " api_cycles=%" PRIu64 " preempted=%lu sub_cpu_ns=%" PRId64
                   " worker_cpu_ns=%" PRId64 " polls=%lu empty_polls=%lu other_load=%.3f verified=%d tsc_hz=%" PRIu64 "\n",
                   size, r.ops, r.wall_ns, r.api_cycles, r.preempted, r.sub_cpu_ns, r.worker_cpu_ns, r.polls, r.empty_polls,
                   r.other_load, r.verified, tsc_hz);
            if (do_memcpy) {
                size_t mops = ops < 1024 ? 1024 : ops, slots = ws / size ? ws / size : 1, s = 0;
                struct load_meter m;
                load_start(&m);
                int64_t m0 = now_ns(CLOCK_MONOTONIC);
                for (size_t i = 0; i < mops; i++) {
                    memcpy(dst + s * size, src + s * size, size);
                    if (++s == slots) s = 0;
                }
                int64_t m1 = now_ns(CLOCK_MONOTONIC);
                double load = load_other(&m);
                if (memcmp(dst, src, (mops < slots ? mops : slots) * size) != 0) { fprintf(stderr, "dma_peer: memcpy check failed\n"); failed = 1; }
                printf("MEMCPY impl=dpdk-skeleton size=%zu ops=%zu wall_ns=%" PRId64 " other_load=%.3f\n", size, mops, m1 - m0, load);
            }
            fflush(stdout);
        }
    }

    struct rte_dma_stats stats;
    if (rte_dma_stats_get(dev, 0, &stats) == 0) {
        if (stats.submitted != stats.completed || stats.errors != 0) {
            fprintf(stderr, "dma_peer: stats: submitted %" PRIu64 ", completed %" PRIu64 ", errors %" PRIu64 "\n",
                    stats.submitted, stats.completed, stats.errors);
            failed = 1;
        }
    }
    rte_free(src);
    rte_free(dst);
    rte_dma_stop(dev);
    rte_dma_close(dev);
    rte_eal_cleanup();
    return failed ? 1 : 0;
}
