/* SPDX-License-Identifier: BSD-3-Clause
 *
 * netdma_c_peer: the stream workload of Scripts/peer-bench through libnetdma's C ABI, on the
 * same device model and with the same options as `netdma-peer run` (its Swift twin, which
 * drives CopyQueue directly): what a C networking stack pays per op for the C ABI.
 *
 * Prints the lines `netdma-peer report` reads:
 *   INFO impl=netdma-c-cbdma-icx ...
 *   RESULT impl=netdma-c-cbdma-icx size=N ops=N wall_ns=N api_cycles=N ... verified=0|1 tsc_hz=N
 *   MEMCPY impl=netdma-c-cbdma-icx size=N ops=N wall_ns=N other_load=X
 *
 * Workload (as BenchRig's StreamWorkload and dma_peer.c): W bytes of source and destination
 * (default 32 MiB each) in DMA memory, cut into W/size slots used round-robin; batches of B
 * (32) copies and one netdma_submit whenever B slots are free (netdma_burst_capacity); one
 * netdma_completed(capacity) per loop turn; every ticket and the destination bytes checked.
 * The model is opened as BenchRig's EngineRig opens it: IOVA = VA, no interrupt vectors, the
 * engine thread spinning 20,000 idle passes before it sleeps.
 *
 * Build: cc -O2 -I Benchmarks/Sources/CBenchSupport/include Scripts/peer/netdma_c_peer.c \
 *            Benchmarks/Sources/CBenchSupport/CBenchSupport.c $(pkg-config --cflags --libs netdma) -o netdma_c_peer
 * Run:   netdma_c_peer [-s SIZES] [-r REPS] [-b BATCH] [-q RING] [-w BYTES] [-t BYTES] [--profile icx|...|dsa]
 *                      [--submitter-cpu N] [--engine-cpu N] [--no-memcpy] [--warmup OPS] [-o OPS] [-c]
 * With -c (count mode, under valgrind --tool=callgrind) each repetition runs between callgrind
 * dumps and prints a WINDOW line instead (see count_window; `netdma-peer counts` reads them).
 */
#define _GNU_SOURCE
#include <getopt.h>
#include <sched.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <netdma.h>

#include "CBenchSupport.h" /* Benchmarks/Sources/CBenchSupport: rdtsc, thread CPU time, pinning, load */

static int64_t now_ns(clockid_t clock) {
    struct timespec ts;
    clock_gettime(clock, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
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
    double v = secs > 0 ? ticks / (double)bench_clock_ticks_per_second() / secs : 0;
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

/* Ops per repetition as the peer harnesses pick them: total / size, clamped to [4096, 2M],
 * and at least one pass over the slots. */
static size_t ops_for_size(size_t size, size_t total, size_t ws) {
    size_t slots = ws / size ? ws / size : 1;
    size_t ops = total / size;
    if (ops < 4096) ops = 4096;
    if (ops > 2000000) ops = 2000000;
    return ops < slots ? slots : ops;
}

struct stream_result {
    size_t ops;
    int64_t wall_ns, sub_cpu_ns, worker_cpu_ns;
    uint64_t api_cycles;
    unsigned long preempted, polls, empty_polls, batches, capacity_checks;
    double other_load;
    int verified;
};

/* The C ABI calls of the stream, for count mode (-c, under callgrind): each goes through a
 * wrapper that is never inlined or cloned (the names `netdma-peer counts` looks for, as in
 * dma_peer.c), so that callgrind's inclusive cost of the wrapper is the cost of the call: the
 * PLT jump into libnetdma, the entry point, CopyQueue, the provider, and the wrapper's own call
 * and return. Outside count mode the loop calls the ABI directly. */
#define COUNTED __attribute__((noinline, noipa, used))
static COUNTED int counted_copy(netdma_queue *q, uint64_t src, uint64_t dst, uint32_t length) {
    return netdma_enqueue_copy(q, src, dst, length, 0);
}
static COUNTED int counted_submit(netdma_queue *q) { return netdma_submit(q); }
static COUNTED int counted_completed(netdma_queue *q, uint16_t max, uint16_t *last, bool *has_error) {
    return netdma_completed(q, max, last, has_error);
}
static COUNTED int counted_capacity(netdma_queue *q) { return netdma_burst_capacity(q); }

#define CALL_COPY(c, q, s, d, n) ((c) ? counted_copy(q, s, d, n) : netdma_enqueue_copy(q, s, d, n, 0))
#define CALL_SUBMIT(c, q) ((c) ? counted_submit(q) : netdma_submit(q))
#define CALL_COMPLETED(c, q, m, l, e) ((c) ? counted_completed(q, m, l, e) : netdma_completed(q, m, l, e))
#define CALL_CAPACITY(c, q) ((c) ? counted_capacity(q) : netdma_burst_capacity(q))

/* One repetition of the stream workload. Returns 0, or -1 with a message on stderr. Inlined
 * twice with a constant `counting`, so the timed loop has no trace of count mode. */
static inline __attribute__((always_inline)) int stream(netdma_queue *q, uint16_t capacity, char *src, char *dst, uint64_t src_iova, uint64_t dst_iova,
                  size_t size, size_t ws, size_t ops, unsigned batch, uint64_t tsc_cost, int worker_tid,
                  struct stream_result *r, int counting) {
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
    int64_t e0 = worker_tid > 0 ? bench_thread_cpu_ns(worker_tid) : 0;
    int64_t c0 = now_ns(CLOCK_THREAD_CPUTIME_ID);
    int64_t w0 = now_ns(CLOCK_MONOTONIC);
    while (done < ops) {
        size_t want = ops - issued < batch ? ops - issued : batch;
        if (want > 0) checks++;
        if (want > 0 && (size_t)CALL_CAPACITY(counting, q) >= want) {
            uint64_t t0 = bench_rdtsc();
            for (size_t i = 0; i < want; i++) {
                uint64_t off = (uint64_t)(slot * size);
                int ticket = CALL_COPY(counting, q, src_iova + off, dst_iova + off, (uint32_t)size);
                if (ticket < 0) { fprintf(stderr, "netdma_c_peer: enqueue: %s\n", netdma_last_error()); return -1; }
                if (first) { expected = (uint16_t)ticket; first = 0; }
                if (++slot == slots) slot = 0;
            }
            int rc = CALL_SUBMIT(counting, q);
            uint64_t t1 = bench_rdtsc();
            if (rc < 0) { fprintf(stderr, "netdma_c_peer: submit: %s\n", netdma_last_error()); return -1; }
            uint64_t dt = t1 - t0 - tsc_cost;
            if (dt > 20000 + 400 * want) preempted++; else api += dt;
            issued += want;
            batches++;
        }
        uint16_t last = 0;
        bool has_error = false;
        uint64_t t2 = bench_rdtsc();
        int n = CALL_COMPLETED(counting, q, capacity, &last, &has_error);
        uint64_t t3 = bench_rdtsc();
        polls++;
        if (n == 0 && !has_error) {
            empty++;
            /* Under callgrind the threads take turns: let the engine run (the count excludes
             * empty polls, so how many there are does not matter). */
            if (counting) sched_yield();
            continue;
        }
        uint64_t dt = t3 - t2 - tsc_cost;
        if (dt > 20000 + 400 * (uint64_t)n) preempted++; else api += dt;
        if (n < 0 || has_error) { fprintf(stderr, "netdma_c_peer: an op failed\n"); bad = 1; break; }
        if (last != (uint16_t)(expected + n - 1)) {
            fprintf(stderr, "netdma_c_peer: last ticket %u, expected %u\n", last, (uint16_t)(expected + n - 1));
            bad = 1;
            break;
        }
        expected = (uint16_t)(expected + n);
        done += (size_t)n;
    }
    int64_t w1 = now_ns(CLOCK_MONOTONIC);
    int64_t c1 = now_ns(CLOCK_THREAD_CPUTIME_ID);
    int64_t e1 = worker_tid > 0 ? bench_thread_cpu_ns(worker_tid) : 0;
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
    if (!bad && memcmp(dst, src, touched) != 0) { fprintf(stderr, "netdma_c_peer: destination differs from source\n"); bad = 1; }
    r->verified = !bad;
    return bad ? -1 : 0;
}

/* Count mode: one repetition between callgrind dumps, then an idle window, as dma_peer.c's
 * count_window and `netdma-peer run --count`: zero counters; the stream (counted calls);
 * dump "stream-SIZE"; EMPTY_POLLS counted polls of the drained queue; dump "empty-SIZE"; one
 * 64-byte copy polled to completion; 100 ms nap; dump "idle-SIZE". Prints a WINDOW line for
 * `netdma-peer counts`. */
#define EMPTY_POLLS 1000
static int count_window(netdma_queue *q, uint16_t capacity, char *src, char *dst, uint64_t src_iova, uint64_t dst_iova,
                        size_t size, size_t ws, size_t ops, unsigned batch, uint64_t tsc_cost, int worker_tid,
                        const char *impl) {
    struct stream_result r;
    memset(&r, 0, sizeof r);
    char reason[64];
    bench_callgrind_zero();
    int rc = stream(q, capacity, src, dst, src_iova, dst_iova, size, ws, ops, batch, tsc_cost, worker_tid, &r, 1);
    snprintf(reason, sizeof reason, "stream-%zu", size);
    bench_callgrind_dump(reason);
    unsigned long nonempty = 0;
    for (int i = 0; i < EMPTY_POLLS; i++) {
        uint16_t last = 0;
        bool has_error = false;
        if (counted_completed(q, capacity, &last, &has_error) != 0 || has_error) nonempty++;
    }
    snprintf(reason, sizeof reason, "empty-%zu", size);
    bench_callgrind_dump(reason);
    if (netdma_enqueue_copy(q, src_iova, dst_iova, 64, NETDMA_OP_SUBMIT) < 0) rc = -1;
    for (int got = 0; rc == 0 && got == 0;) {
        bool has_error = false;
        got = netdma_completed(q, 1, NULL, &has_error);
        if (has_error || got < 0) rc = -1;
    }
    struct timespec nap = {0, 100000000};
    nanosleep(&nap, NULL);
    snprintf(reason, sizeof reason, "idle-%zu", size);
    bench_callgrind_dump(reason);
    if (nonempty) { fprintf(stderr, "netdma_c_peer: %lu polls of a drained queue returned ops\n", nonempty); rc = -1; }
    printf("WINDOW impl=%s size=%zu ops=%zu batches=%lu polls=%lu empty_polls=%lu capacity_checks=%lu"
           " empty_poll_calls=%d stream=stream-%zu empty=empty-%zu idle=idle-%zu verified=%d\n",
           impl, size, r.ops, r.batches, r.polls, r.empty_polls, r.capacity_checks, EMPTY_POLLS, size, size, size,
           rc == 0 && r.verified);
    fflush(stdout);
    return rc;
}

int main(int argc, char **argv) {
    char sizes_arg[256] = "64,256,1k,4k,64k,1m", profile[32] = "icx";
    unsigned reps = 1, batch = 32, ring = 1024, do_memcpy = 1, counting = 0;
    size_t fixed_ops = 0;
    size_t ws = 32u << 20, total = (size_t)2 << 30, warmup = 20000;
    int submitter_cpu = 0, engine_cpu = 1;
    static const struct option longs[] = {
        {"sizes", required_argument, 0, 's'}, {"reps", required_argument, 0, 'r'},
        {"batch", required_argument, 0, 'b'}, {"ring", required_argument, 0, 'q'},
        {"working-set", required_argument, 0, 'w'}, {"bytes", required_argument, 0, 't'},
        {"profile", required_argument, 0, 'p'}, {"submitter-cpu", required_argument, 0, 'S'},
        {"engine-cpu", required_argument, 0, 'E'}, {"no-memcpy", no_argument, 0, 'n'},
        {"warmup", required_argument, 0, 'W'}, {"ops", required_argument, 0, 'o'},
        {"count", no_argument, 0, 'c'}, {0, 0, 0, 0},
    };
    int opt;
    while ((opt = getopt_long(argc, argv, "s:r:b:q:w:t:o:nc", longs, NULL)) != -1) {
        switch (opt) {
        case 's': snprintf(sizes_arg, sizeof sizes_arg, "%s", optarg); break;
        case 'r': reps = (unsigned)atoi(optarg); break;
        case 'b': batch = (unsigned)atoi(optarg); break;
        case 'q': ring = (unsigned)atoi(optarg); break;
        case 'w': ws = parse_bytes(optarg); break;
        case 't': total = parse_bytes(optarg); break;
        case 'p': snprintf(profile, sizeof profile, "%s", optarg); break;
        case 'S': submitter_cpu = atoi(optarg); break;
        case 'E': engine_cpu = atoi(optarg); break;
        case 'n': do_memcpy = 0; break;
        case 'W': warmup = (size_t)atol(optarg); break;
        case 'o': fixed_ops = parse_bytes(optarg); break;
        case 'c': counting = 1; break;
        default:
            fprintf(stderr, "usage: netdma_c_peer [-s SIZES] [-r REPS] [-b BATCH] [-q RING] [-w BYTES] [-t BYTES] "
                            "[--profile icx|...|dsa] [--submitter-cpu N] [--engine-cpu N] [--no-memcpy] [--warmup OPS] "
                            "[-o OPS] [-c (count mode, under callgrind)]\n");
            return 2;
        }
    }
    if (counting && !bench_under_callgrind()) {
        fprintf(stderr, "netdma_c_peer: -c needs valgrind --tool=callgrind (and a build with <valgrind/callgrind.h>)\n");
        return 2;
    }
    long cpus = sysconf(_SC_NPROCESSORS_ONLN);
    if (submitter_cpu >= 0 && submitter_cpu < cpus) bench_pin_thread(0, submitter_cpu);

    int dsa = strcmp(profile, "dsa") == 0;
    netdma_open_params params = NETDMA_OPEN_PARAMS_INIT;
    params.source = NETDMA_SOURCE_MODEL;
    params.model = dsa ? "dsa" : "ioat";
    params.profile = dsa ? NULL : profile;
    params.flags = NETDMA_OPEN_IOVA_VA | NETDMA_OPEN_NO_INTERRUPTS;
    params.dsa_work_queues = dsa ? 1 : 0;
    params.model_idle_spins = 20000;
    netdma_engines *dma;
    netdma_channel *channel;
    netdma_queue *q;
    netdma_queue_params qp = NETDMA_QUEUE_PARAMS_INIT;
    qp.ring_size = ring;
    netdma_buffer sb, db;
    if (netdma_open(&params, &dma) < 0 || netdma_channel_alloc(dma, -1, NULL, 0, &channel) < 0 ||
        netdma_queue_create(channel, &qp, &q) < 0 || netdma_mem_alloc(dma, ws, -1, &sb) < 0 ||
        netdma_mem_alloc(dma, ws, -1, &db) < 0) {
        fprintf(stderr, "netdma_c_peer: cannot bring up the %s model: %s\n", profile, netdma_last_error());
        return 2;
    }
    netdma_engine_info info;
    netdma_engine_info_get(dma, 0, &info);
    if (engine_cpu >= 0 && engine_cpu < cpus && info.model_thread) bench_pin_thread(info.model_thread, engine_cpu);
    uint16_t capacity = (uint16_t)netdma_burst_capacity(q);
    if (batch < 1 || batch > capacity) { fprintf(stderr, "netdma_c_peer: --batch must be 1...%u\n", capacity); return 2; }
    char *src = sb.addr, *dst = db.addr;
    uint64_t x = 0x9E3779B97F4A7C15ull;
    for (size_t k = 0; k < ws / 8; k++) {
        x ^= x << 13; x ^= x >> 7; x ^= x << 17;
        ((uint64_t *)src)[k] = x;
    }

    /* TSC rate against CLOCK_MONOTONIC, and the cost of an rdtsc pair. */
    int64_t n0 = now_ns(CLOCK_MONOTONIC);
    uint64_t t0 = bench_rdtsc();
    struct timespec nap = {0, 50000000};
    nanosleep(&nap, NULL);
    uint64_t tsc_hz = (uint64_t)((double)(bench_rdtsc() - t0) * 1e9 / (double)(now_ns(CLOCK_MONOTONIC) - n0));
    uint64_t tsc_cost = UINT64_MAX;
    for (int i = 0; i < 1000; i++) {
        uint64_t a = bench_rdtsc();
        bench_compiler_barrier();
        uint64_t b = bench_rdtsc();
        if (b - a < tsc_cost) tsc_cost = b - a;
    }

    char impl[64];
    snprintf(impl, sizeof impl, dsa ? "netdma-c-dsa-spr" : "netdma-c-cbdma-%s", profile);
    printf("INFO impl=%s tsc_hz=%" PRIu64 " rdtsc_cost=%" PRIu64 " ring=%u batch=%u working_set=%zu engine_tid=%d\n", impl,
           tsc_hz, tsc_cost, ring, batch, ws, info.model_thread);
    int failed = 0;
    char *save = NULL;
    for (char *tok = strtok_r(sizes_arg, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
        size_t size = parse_bytes(tok);
        if (size == 0 || size > ws || size > info.max_transfer_size) {
            fprintf(stderr, "netdma_c_peer: size %s skipped\n", tok);
            continue;
        }
        size_t ops = ops_for_size(size, total, ws);
        if (fixed_ops) ops = fixed_ops;
        struct stream_result r;
        if (warmup > 0) {
            size_t warm = ops < warmup ? ops : warmup;
            if (stream(q, capacity, src, dst, sb.iova, db.iova, size, ws, warm, batch, tsc_cost, info.model_thread, &r, 0) != 0) failed = 1;
        }
        if (counting) {
            for (unsigned rep = 0; rep < reps; rep++)
                if (count_window(q, capacity, src, dst, sb.iova, db.iova, size, ws, ops, batch, tsc_cost, info.model_thread, impl) != 0)
                    failed = 1;
            continue;
        }
        for (unsigned rep = 0; rep < reps; rep++) {
            memset(&r, 0, sizeof r);
            if (stream(q, capacity, src, dst, sb.iova, db.iova, size, ws, ops, batch, tsc_cost, info.model_thread, &r, 0) != 0) failed = 1;
            printf("RESULT impl=%s size=%zu ops=%zu wall_ns=%" PRId64 " api_cycles=%" PRIu64 " preempted=%lu sub_cpu_ns=%" PRId64
                   " worker_cpu_ns=%" PRId64 " polls=%lu empty_polls=%lu other_load=%.3f verified=%d tsc_hz=%" PRIu64 "\n",
                   impl, size, r.ops, r.wall_ns, r.api_cycles, r.preempted, r.sub_cpu_ns, r.worker_cpu_ns, r.polls, r.empty_polls,
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
                printf("MEMCPY impl=%s size=%zu ops=%zu wall_ns=%" PRId64 " other_load=%.3f\n", impl, size, mops, m1 - m0, load_other(&m));
            }
            fflush(stdout);
        }
    }
    netdma_queue_destroy(q);
    netdma_channel_free(channel);
    netdma_close(dma);
    return failed ? 1 : 0;
}
