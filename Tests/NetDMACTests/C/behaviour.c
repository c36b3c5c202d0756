/* What the C ABI does on both device models: engines and their info, notifications, channel
 * CPU choice, copy/fill/NULL ops and their tickets, registered memory, the eventfd, and the
 * CPU fallback below cpu_copy_threshold, the NetDMA level (descriptor chains, the completion word, Suspend/Resume/Abort/Reset, 1.x
 * NULL-terminated chains). Run by CABITests.swift; exit status = failures. */
#define _GNU_SOURCE
#include "check.h"

#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <stdlib.h>
#include <unistd.h>

static netdma_engines *open_model(const char *model, const char *profile) {
    netdma_open_params p = NETDMA_OPEN_PARAMS_INIT;
    p.source = NETDMA_SOURCE_MODEL;
    p.model = model;
    p.profile = profile;
    netdma_engines *e = NULL;
    if (netdma_open(&p, &e) < 0) {
        fprintf(stderr, "cannot open the %s model: %s\n", model, netdma_last_error());
        exit(100);
    }
    return e;
}

struct events {
    int count[8];
    unsigned last_engine;
};

static void on_notification(void *user, int event, unsigned engine) {
    struct events *e = user;
    if (event >= 0 && event < 8) e->count[event]++;
    e->last_engine = engine;
}

/* Copy, fill and NULL ops through a queue: tickets in order, data right. */
static void queue_ops(netdma_engines *dma, const char *what) {
    printf("queue ops on %s\n", what);
    netdma_channel *ch;
    cpu_set_t cpus;
    CPU_ZERO(&cpus);
    int here = sched_getcpu();
    CPU_SET(here, &cpus);
    int cpu = netdma_channel_alloc(dma, -1, &cpus, sizeof cpus, &ch);
    CHECK(cpu == here, "the DPC CPU is the one asked for (%d, asked %d)", cpu, here);
    netdma_channel_info ci;
    CHECK_OK(netdma_channel_info_get(ch, &ci));
    CHECK(ci.cpu == cpu && ci.engine == 0 && ci.max_transfer_size >= 4096 && ci.completion_word != NULL, "channel info");
    netdma_queue *q;
    netdma_queue_params qp = NETDMA_QUEUE_PARAMS_INIT;
    qp.ring_size = 64;
    CHECK_OK(netdma_queue_create(ch, &qp, &q));
    CHECK(netdma_burst_capacity(q) == 63, "capacity is ring_size - 1");

    netdma_buffer src, dst;
    CHECK_OK(netdma_mem_alloc(dma, 1 << 16, -1, &src));
    CHECK_OK(netdma_mem_alloc(dma, 1 << 16, -1, &dst));
    for (size_t i = 0; i < src.length; i++) ((unsigned char *)src.addr)[i] = (unsigned char)(i * 13 + 5);
    uint64_t iova;
    CHECK_OK(netdma_mem_iova(dma, (char *)src.addr + 100, &iova));
    CHECK(iova == src.iova + 100, "netdma_mem_iova inside a buffer");

    /* Caller memory, registered: the destination of a copy. */
    unsigned char *mine = aligned_alloc(4096, 8192);
    memset(mine, 0, 8192);
    uint64_t mine_iova;
    CHECK_OK(netdma_mem_register(dma, mine, 8192, &mine_iova));

    int t0 = netdma_enqueue_copy(q, src.iova, dst.iova, 1000, 0);
    int t1 = netdma_enqueue_copy(q, src.iova + 1000, dst.iova + 1003, 3001, NETDMA_OP_FENCE);
    int t2 = netdma_enqueue_null(q, 0);
    int t3 = netdma_enqueue_copy(q, src.iova + 8192, mine_iova + 17, 4000, 0);
    CHECK(t0 >= 0 && t1 == t0 + 1 && t2 == t0 + 2 && t3 == t0 + 3, "tickets %d %d %d %d", t0, t1, t2, t3);
    bool fill = ci.flags & NETDMA_CHANNEL_FILL;
    int t4 = fill ? netdma_enqueue_fill(q, 0x0102030405060708ull, dst.iova + 20000, 777, NETDMA_OP_SUBMIT)
                  : netdma_enqueue_null(q, NETDMA_OP_SUBMIT);
    CHECK(t4 == t0 + 4, "ticket %d", t4);
    uint16_t last = 0;
    bool failed = false;
    int n = 0;
    for (long spins = 0; n < 5 && !failed && spins < 100000000L; spins++) n += netdma_completed(q, 5, &last, &failed);
    CHECK(n == 5 && !failed && last == (uint16_t)t4, "five ops complete (n %d, last %u)", n, last);
    CHECK(memcmp(dst.addr, src.addr, 1000) == 0, "copy 1");
    CHECK(memcmp((char *)dst.addr + 1003, (char *)src.addr + 1000, 3001) == 0, "copy 2 (odd offsets)");
    CHECK(memcmp(mine + 17, (char *)src.addr + 8192, 4000) == 0 && mine[16] == 0 && mine[4017] == 0,
          "copy into registered memory, nothing around it");
    if (fill) {
        const unsigned char *f = (const unsigned char *)dst.addr + 20000;
        int ok = 1;
        for (int i = 0; i < 777; i++) ok &= f[i] == (unsigned char)(8 - i % 8);
        CHECK(ok && f[777] == 0, "fill");
    }
    netdma_queue_stats s;
    CHECK_OK(netdma_queue_stats_get(q, &s));
    CHECK(s.capacity == 63 && s.free_slots == 63 && s.pending == 0 && s.outstanding == 0 && s.failed == 0 &&
              s.last_fault[0] == '\0', "stats");

    /* completed_status: every op's status, in order. */
    for (int i = 0; i < 10; i++) CHECK(netdma_enqueue_copy(q, src.iova + i * 64, dst.iova + i * 64, 64, 0) >= 0, "op %d", i);
    CHECK_OK(netdma_submit(q));
    uint8_t st[10];
    memset(st, 7, sizeof st);
    n = 0;
    for (long spins = 0; n < 10 && spins < 100000000L; spins++) n += netdma_completed_status(q, (uint16_t)(10 - n), &last, st + n);
    CHECK(n == 10 && last == (uint16_t)(t4 + 10), "ten statuses (last %u)", last);
    for (int i = 0; i < 10; i++) CHECK(st[i] == NETDMA_OP_STATUS_SUCCESSFUL, "status %d is %u", i, st[i]);

    /* Tickets wrap at 16 bits like DPDK's ring index. */
    int t = 0;
    for (int round = 0; round < 1100; round++) {
        for (int i = 0; i < 60; i++) t = netdma_enqueue_copy(q, src.iova, dst.iova, 8, 0);
        CHECK_OK(netdma_submit(q));
        failed = false;
        if (drain(q, 60, &failed) != 60 || failed) {
            CHECK(0, "round %d did not complete", round);
            break;
        }
    }
    CHECK(t == (t4 + 10 + 1100 * 60) % 65536, "the ticket wrapped to %d", t);

    CHECK_OK(netdma_mem_unregister(dma, mine));
    free(mine);
    CHECK_OK(netdma_queue_destroy(q));
    CHECK_OK(netdma_mem_free(dma, src.addr));
    CHECK_OK(netdma_mem_free(dma, dst.addr));
    CHECK_OK(netdma_channel_free(ch));
}

/* The CPU fallback (cpu_copy_threshold): ops shorter than it run on this thread inside
 * netdma_submit, share the ticket sequence, and are retired in ticket order with the engine's;
 * an op from an IOVA that is not DMA memory is reported failed, once, and writes nothing. */
static void cpu_fallback(netdma_engines *dma, const char *what) {
    printf("CPU fallback on %s\n", what);
    netdma_channel *ch;
    CHECK_OK(netdma_channel_alloc(dma, -1, NULL, 0, &ch));
    netdma_queue_params qp = NETDMA_QUEUE_PARAMS_INIT;
    qp.ring_size = 64;
    qp.cpu_copy_threshold = 256;
    netdma_queue *q;
    CHECK_OK(netdma_queue_create(ch, &qp, &q));
    netdma_buffer src, dst;
    CHECK_OK(netdma_mem_alloc(dma, 1 << 16, -1, &src));
    CHECK_OK(netdma_mem_alloc(dma, 1 << 16, -1, &dst));
    for (size_t i = 0; i < src.length; i++) ((unsigned char *)src.addr)[i] = (unsigned char)(i * 29 + 3);
    memset(dst.addr, 0, dst.length);
    unsigned char *mine = aligned_alloc(4096, 8192);
    memset(mine, 0, 8192);
    uint64_t mine_iova;
    CHECK_OK(netdma_mem_register(dma, mine, 8192, &mine_iova));

    int t0 = netdma_enqueue_copy(q, src.iova, dst.iova, 64, 0);                  /* CPU */
    int t1 = netdma_enqueue_copy(q, src.iova + 4096, dst.iova + 4096, 4096, 0);  /* engine */
    int t2 = netdma_enqueue_copy(q, src.iova + 100, mine_iova + 9, 255, 0);      /* CPU, into registered memory */
    int t3 = netdma_enqueue_copy(q, 0x10000, dst.iova + 12000, 64, 0);           /* CPU, not DMA memory: fails */
    int t4 = netdma_enqueue_copy(q, src.iova + 300, dst.iova + 300, 256, 0);     /* engine (not shorter than 256) */
    CHECK(t0 >= 0 && t1 == t0 + 1 && t2 == t0 + 2 && t3 == t0 + 3 && t4 == t0 + 4, "tickets %d %d %d %d %d", t0, t1, t2, t3, t4);
    netdma_queue_stats s;
    CHECK_OK(netdma_queue_stats_get(q, &s));
    CHECK(s.pending == 5 && s.cpu_ops == 0 && ((unsigned char *)dst.addr)[0] == 0 && mine[9] == 0,
          "nothing runs before netdma_submit (pending %u, cpu_ops %llu)", s.pending, (unsigned long long)s.cpu_ops);
    CHECK_OK(netdma_submit(q));
    CHECK_OK(netdma_queue_stats_get(q, &s));
    CHECK(s.cpu_ops == 3 && s.pending == 0, "submit ran the three short ops on the CPU (cpu_ops %llu)",
          (unsigned long long)s.cpu_ops);
    uint16_t last = 0;
    bool failed = false;
    int n = 0;
    for (long spins = 0; !failed && spins < 100000000L; spins++) n += netdma_completed(q, 8, &last, &failed);
    CHECK(failed && n == 3 && last == (uint16_t)t2, "three ops, then the failed one (n %d, last %u)", n, last);
    failed = false;
    CHECK(drain(q, 1, &failed) == 1 && !failed, "the op after the failed one completes");
    CHECK(memcmp(dst.addr, src.addr, 64) == 0, "CPU copy");
    CHECK(memcmp((char *)dst.addr + 4096, (char *)src.addr + 4096, 4096) == 0, "engine copy");
    CHECK(memcmp(mine + 9, (char *)src.addr + 100, 255) == 0 && mine[8] == 0 && mine[264] == 0,
          "CPU copy into registered memory, nothing around it");
    CHECK(memcmp((char *)dst.addr + 300, (char *)src.addr + 300, 256) == 0, "engine copy of 256 B");
    unsigned char zero[64] = {0};
    CHECK(memcmp((char *)dst.addr + 12000, zero, 64) == 0, "the failed CPU op wrote nothing");
    CHECK_OK(netdma_queue_stats_get(q, &s));
    CHECK(s.failed == 1 && strstr(s.last_fault, "0x10000") != NULL && s.outstanding == 0 && s.free_slots == 63,
          "stats: failed %llu, fault '%s'", (unsigned long long)s.failed, s.last_fault);

    /* netdma_completed_status reports CPU ops too, in ticket order. */
    CHECK_OK(netdma_enqueue_copy(q, src.iova, dst.iova + 20000, 8, 0));
    CHECK_OK(netdma_enqueue_copy(q, 0x10000, dst.iova + 20100, 8, 0));
    CHECK_OK(netdma_enqueue_copy(q, src.iova, dst.iova + 24576, 4096, NETDMA_OP_SUBMIT));
    uint8_t st[3] = {9, 9, 9};
    n = 0;
    for (long spins = 0; n < 3 && spins < 100000000L; spins++) n += netdma_completed_status(q, (uint16_t)(3 - n), &last, st + n);
    CHECK(n == 3 && st[0] == NETDMA_OP_STATUS_SUCCESSFUL && st[1] == NETDMA_OP_STATUS_FAILED &&
              st[2] == NETDMA_OP_STATUS_SUCCESSFUL && last == (uint16_t)(t4 + 3),
          "statuses %u %u %u (last %u)", st[0], st[1], st[2], last);

    CHECK_OK(netdma_mem_unregister(dma, mine));
    free(mine);
    CHECK_OK(netdma_queue_destroy(q));
    CHECK_OK(netdma_mem_free(dma, src.addr));
    CHECK_OK(netdma_mem_free(dma, dst.addr));
    CHECK_OK(netdma_channel_free(ch));
}

/* Legal corner cases: completed and submit on an empty queue, zero-length copies and fills
 * (with and without the CPU fallback), destroying a queue with ops outstanding, a new queue on
 * the same channel after it. */
static void corner_cases(netdma_engines *dma, const char *what) {
    printf("corner cases on %s\n", what);
    netdma_channel *ch;
    CHECK_OK(netdma_channel_alloc(dma, -1, NULL, 0, &ch));
    netdma_channel_info ci;
    CHECK_OK(netdma_channel_info_get(ch, &ci));
    bool fill = ci.flags & NETDMA_CHANNEL_FILL;
    netdma_buffer src, dst;
    CHECK_OK(netdma_mem_alloc(dma, 1 << 16, -1, &src));
    CHECK_OK(netdma_mem_alloc(dma, 1 << 16, -1, &dst));
    memset(src.addr, 0xA5, src.length);
    for (uint32_t threshold = 0; threshold <= 64; threshold += 64) {
        netdma_queue_params qp = NETDMA_QUEUE_PARAMS_INIT;
        qp.ring_size = 16;
        qp.cpu_copy_threshold = threshold;
        netdma_queue *q;
        CHECK_OK(netdma_queue_create(ch, &qp, &q));
        /* Nothing enqueued yet. */
        uint16_t last = 1234;
        bool failed = true;
        CHECK(netdma_completed(q, 16, &last, &failed) == 0 && last == 0xFFFF && !failed,
              "completed on a fresh queue: 0, last 0xFFFF, no error (last %u, threshold %u)", last, threshold);
        CHECK(netdma_completed(q, 0, NULL, NULL) == 0, "completed with max 0");
        CHECK(netdma_completed_status(q, 0, NULL, NULL) == 0, "completed_status with max 0 and no status array");
        CHECK(netdma_submit(q) == 0, "submit with nothing enqueued succeeds (threshold %u)", threshold);
        CHECK(netdma_burst_capacity(q) == 15, "capacity unchanged");
        /* Zero-length ops touch nothing and succeed, with or without a fence. */
        memset(dst.addr, 0, 4096);
        int t0 = netdma_enqueue_copy(q, src.iova, dst.iova, 0, 0);
        int t1 = netdma_enqueue_copy(q, src.iova, dst.iova + 64, 0, NETDMA_OP_FENCE);
        int t2 = fill ? netdma_enqueue_fill(q, ~0ull, dst.iova + 128, 0, 0) : netdma_enqueue_null(q, 0);
        int t3 = netdma_enqueue_copy(q, src.iova, dst.iova + 256, 8, NETDMA_OP_SUBMIT);
        CHECK(t0 == 0 && t1 == 1 && t2 == 2 && t3 == 3, "tickets %d %d %d %d (threshold %u)", t0, t1, t2, t3, threshold);
        uint8_t st[4] = {9, 9, 9, 9};
        int n = 0;
        for (long spins = 0; n < 4 && spins < 100000000L; spins++) n += netdma_completed_status(q, (uint16_t)(4 - n), &last, st + n);
        CHECK(n == 4 && last == 3 && st[0] == 0 && st[1] == 0 && st[2] == 0 && st[3] == 0,
              "zero-length ops succeed (n %d, statuses %u %u %u %u, threshold %u)", n, st[0], st[1], st[2], st[3], threshold);
        unsigned char zero[256] = {0};
        CHECK(memcmp(dst.addr, zero, 256) == 0 && ((unsigned char *)dst.addr)[256] == 0xA5,
              "zero-length ops wrote nothing (threshold %u)", threshold);
        /* Retired already: an empty poll says so and keeps the last ticket. */
        last = 77;
        failed = true;
        CHECK(netdma_completed(q, 16, &last, &failed) == 0 && last == 3 && !failed, "empty poll after ops (last %u)", last);
        CHECK(netdma_submit(q) == 0, "submit again with nothing enqueued");
        /* Destroying a queue with ops enqueued and submitted: abandoned, the channel reset. */
        for (int i = 0; i < 6; i++) CHECK_OK(netdma_enqueue_copy(q, src.iova + i * 4096, dst.iova + i * 4096, 4096, 0));
        CHECK_OK(netdma_submit(q));
        for (int i = 0; i < 4; i++) CHECK_OK(netdma_enqueue_copy(q, src.iova, dst.iova, 64, 0)); /* never submitted */
        CHECK_OK(netdma_queue_destroy(q));
        CHECK(netdma_channel_state(ch) == NETDMA_STATE_ALLOCATED, "destroy left the channel allocated (state %d)",
              netdma_channel_state(ch));
    }
    /* The channel takes a new queue; its tickets start again at 0. */
    netdma_queue *q;
    CHECK_OK(netdma_queue_create(ch, NULL, &q));
    CHECK(netdma_enqueue_copy(q, src.iova, dst.iova + 8192, 512, NETDMA_OP_SUBMIT) == 0, "a fresh queue's first ticket is 0");
    bool failed = false;
    CHECK(drain(q, 1, &failed) == 1 && !failed && memcmp((char *)dst.addr + 8192, src.addr, 512) == 0,
          "the new queue copies");
    CHECK_OK(netdma_queue_destroy(q));
    CHECK_OK(netdma_mem_free(dma, src.addr));
    CHECK_OK(netdma_mem_free(dma, dst.addr));
    CHECK_OK(netdma_channel_free(ch));
}

/* The eventfd: readable after the interrupt that ends a submit; then the ops can be retired. */
static void eventfd_wait(netdma_engines *dma) {
    printf("eventfd\n");
    netdma_channel *ch;
    CHECK_OK(netdma_channel_alloc(dma, -1, NULL, 0, &ch));
    int fd = netdma_channel_eventfd(ch);
    CHECK(fd >= 0 && netdma_channel_eventfd(ch) == fd, "one eventfd per channel");
    netdma_queue_params qp = NETDMA_QUEUE_PARAMS_INIT;
    qp.flags = NETDMA_QUEUE_INTERRUPTS;
    netdma_queue *q;
    CHECK_OK(netdma_queue_create(ch, &qp, &q));
    netdma_buffer b;
    CHECK_OK(netdma_mem_alloc(dma, 8192, -1, &b));
    for (int round = 0; round < 20; round++) {
        CHECK_OK(netdma_enqueue_copy(q, b.iova, b.iova + 4096, 256, 0));
        CHECK_OK(netdma_enqueue_copy(q, b.iova + 256, b.iova + 4096 + 256, 256, NETDMA_OP_SUBMIT));
        int retired = 0;
        bool failed = false;
        for (int waits = 0; retired < 2 && waits < 50; waits++) {
            struct pollfd p = {fd, POLLIN, 0};
            int r = poll(&p, 1, 10000);
            CHECK(r == 1, "the eventfd became readable (round %d)", round);
            if (r != 1) break;
            uint64_t count;
            CHECK(read(fd, &count, sizeof count) == 8 && count >= 1, "read the eventfd");
            int c;
            while ((c = netdma_completed(q, 8, NULL, &failed)) > 0) retired += c;
        }
        CHECK(retired == 2 && !failed, "round %d: both ops retired after the interrupt", round);
    }
    struct pollfd p = {fd, POLLIN, 0};
    CHECK(poll(&p, 1, 0) == 0, "no interrupt without a submit");
    CHECK_OK(netdma_queue_destroy(q));
    CHECK_OK(netdma_channel_free(ch));
    CHECK_OK(netdma_mem_free(dma, b.addr));
}

/* Polls the completion word until it names `iova` with a completed status. */
static int wait_word(const netdma_channel_info *ci, uint64_t iova) {
    for (long spins = 0; spins < 200000000L; spins++) {
        uint64_t w = netdma_completion_word_load(ci->completion_word);
        uint64_t st = w & NETDMA_COMPLETION_STATUS_MASK;
        if ((w & NETDMA_COMPLETION_ADDRESS_MASK) == iova && (st == NETDMA_TRANSFER_ACTIVE || st == NETDMA_TRANSFER_IDLE))
            return 1;
        if (st == NETDMA_TRANSFER_HALTED) return 0;
    }
    return 0;
}

/* The NetDMA level: a chain of descriptors in DMA memory, Start, Append, Suspend/Resume,
 * Abort, Reset. 2.0 providers: counted chains in a linked ring; 1.x: NULL-terminated. */
static void netdma_level(netdma_engines *dma, const char *what) {
    printf("NetDMA level on %s\n", what);
    netdma_channel *ch;
    CHECK_OK(netdma_channel_alloc(dma, -1, NULL, 0, &ch));
    netdma_channel_info ci;
    CHECK_OK(netdma_channel_info_get(ch, &ci));
    bool counted = ci.flags & NETDMA_CHANNEL_COUNTED_CHAINS;
    CHECK(counted == (ci.netdma_version >= 0x20000), "counted chains from 2.0 (version %x)", ci.netdma_version);
    CHECK(netdma_channel_state(ch) == NETDMA_STATE_ALLOCATED, "fresh");
    CHECK((netdma_completion_word_load(ci.completion_word) & NETDMA_COMPLETION_STATUS_MASK) == NETDMA_TRANSFER_ARMED,
          "ARMED before any descriptor");

    netdma_buffer ring, data;
    CHECK_OK(netdma_mem_alloc(dma, 16 * sizeof(netdma_descriptor), -1, &ring));
    CHECK_OK(netdma_mem_alloc(dma, 1 << 16, -1, &data));
    for (int i = 0; i < 4096; i++) ((unsigned char *)data.addr)[i] = (unsigned char)(i ^ 0xA5);
    netdma_descriptor *d = ring.addr;
    for (int i = 0; i < 16; i++) {
        d[i].transfer_size = 256;
        d[i].control_flags = NETDMA_DESC_OP_COPY;
        d[i].source = data.iova + (uint64_t)i * 256;
        d[i].destination = data.iova + 8192 + (uint64_t)i * 256;
        d[i].next = counted ? ring.iova + (uint64_t)((i + 1) % 16) * 64 : 0;
    }
    if (!counted) d[0].next = ring.iova + 64; /* a 1.x chain of two */
    d[1].control_flags |= NETDMA_DESC_STATUS_UPDATE_ON_COMPLETION;
    CHECK_OK(netdma_channel_start(ch, d, ring.iova, 2));
    CHECK(netdma_channel_state(ch) == NETDMA_STATE_RUNNING, "running after Start");
    CHECK(wait_word(&ci, ring.iova + 64), "the word names descriptor 1");
    CHECK(netdma_channel_completion_word(ch) == netdma_completion_word_load(ci.completion_word), "same word both ways");

    /* Append two more (1.x: link the old tail first, with a release store). */
    d[3].control_flags |= NETDMA_DESC_STATUS_UPDATE_ON_COMPLETION;
    if (!counted) {
        d[2].next = ring.iova + 3 * 64;
        netdma_descriptor_publish_next(&d[1], ring.iova + 2 * 64);
    }
    CHECK_OK(netdma_channel_append(ch, &d[2], ring.iova + 2 * 64, 2));
    CHECK(wait_word(&ci, ring.iova + 3 * 64), "the word names descriptor 3");
    CHECK(memcmp((char *)data.addr + 8192, data.addr, 4 * 256) == 0, "four copies");

    if (ci.flags & NETDMA_CHANNEL_SUSPEND_RESUME) {
        uint64_t lastIOVA = 1;
        CHECK_OK(netdma_channel_suspend(ch, &lastIOVA));
        CHECK(netdma_channel_state(ch) == NETDMA_STATE_SUSPENDED, "suspended");
        CHECK(lastIOVA == 0 || lastIOVA == ring.iova + 3 * 64, "the last processed descriptor (0x%llx)",
              (unsigned long long)lastIOVA);
        CHECK_OK(netdma_channel_resume(ch));
        CHECK(netdma_channel_state(ch) == NETDMA_STATE_RUNNING, "running after Resume");
    }
    if (ci.flags & NETDMA_CHANNEL_ABORT) {
        CHECK_OK(netdma_channel_abort(ch));
        CHECK(netdma_channel_state(ch) == NETDMA_STATE_HALTED, "halted after Abort");
    }
    if (ci.flags & NETDMA_CHANNEL_RESET) {
        CHECK_OK(netdma_channel_reset(ch));
        CHECK(netdma_channel_state(ch) == NETDMA_STATE_ALLOCATED, "allocated after Reset");
        /* A queue may use the reset channel. */
        netdma_queue *q;
        CHECK_OK(netdma_queue_create(ch, NULL, &q));
        CHECK_OK(netdma_queue_destroy(q));
    }
    /* A NULL descriptor that asks for the word: its completion proves the rest finished. */
    netdma_descriptor *null = &d[8];
    memset(null, 0, sizeof *null);
    null->control_flags = NETDMA_DESC_NULL_TRANSFER | NETDMA_DESC_STATUS_UPDATE_ON_COMPLETION;
    null->next = counted ? ring.iova + 9 * 64 : 0;
    CHECK_OK(netdma_channel_start(ch, null, ring.iova + 8 * 64, 1));
    CHECK(wait_word(&ci, ring.iova + 8 * 64), "the NULL descriptor completes");
    CHECK_OK(netdma_channel_free(ch));
    CHECK_OK(netdma_mem_free(dma, ring.addr));
    CHECK_OK(netdma_mem_free(dma, data.addr));
}

/* The last error is the calling thread's: another thread's failure does not change it. */
static void *fail_elsewhere(void *arg) {
    (void)arg;
    netdma_submit(NULL);
    return netdma_last_error_code() == NETDMA_EINVAL ? arg : (void *)1;
}

static void per_thread_error(void) {
    printf("per-thread last error\n");
    netdma_engines *none = NULL;
    CHECK(netdma_engine_power_up(none, 0) == NETDMA_EINVAL, "NULL set");
    const char *mine = netdma_last_error();
    CHECK(strstr(mine, "netdma_engine_power_up") != NULL, "this thread's message: %s", mine);
    pthread_t t;
    void *result = (void *)2;
    CHECK(pthread_create(&t, NULL, fail_elsewhere, NULL) == 0 && pthread_join(t, &result) == 0 && result == NULL,
          "the other thread saw its own error");
    CHECK(strstr(netdma_last_error(), "netdma_engine_power_up") != NULL, "unchanged here: %s", netdma_last_error());
    CHECK(strstr(netdma_strerror(12345), "Not a netdma error code") != NULL, "unknown codes have a message too");
}

int main(void) {
    per_thread_error();
    /* The CBDMA model: info, notifications and power. */
    netdma_engines *dma = open_model("ioat", NULL);
    CHECK(netdma_engine_count(dma) == 1, "one engine");
    CHECK(strstr(netdma_headline(dma), "built-in device model") != NULL, "headline: %s", netdma_headline(dma));
    CHECK(netdma_abi_version() == NETDMA_ABI_VERSION, "the library's ABI is the header's");
    netdma_engine_info info;
    CHECK_OK(netdma_engine_info_get(dma, 0, &info));
    CHECK(!strcmp(info.label, "model:ioat/icx") && info.family == NETDMA_FAMILY_IOAT && info.channels >= 1 &&
              info.free_channels == info.channels && (info.flags & NETDMA_ENGINE_MODEL) && info.model_thread > 0 &&
              info.numa_node == -1 && info.netdma_version == 0x20000 && strstr(info.generation, "CBDMA 3.4"),
          "engine info: %s %s %s", info.label, info.generation, info.name);

    struct events ev;
    memset(&ev, 0, sizeof ev);
    CHECK_OK(netdma_set_notification_callback(dma, on_notification, &ev));
    CHECK(ev.count[NETDMA_NOTIFY_REGISTERED] == 1 && ev.count[NETDMA_NOTIFY_ARRIVAL] == 1,
          "told at once about the engine already started");
    CHECK_OK(netdma_engine_power_down(dma, 0));
    CHECK(ev.count[NETDMA_NOTIFY_POWER_DOWN] == 1 && ev.count[NETDMA_NOTIFY_POWER_UP] == 0, "POWER_DOWN");
    CHECK_OK(netdma_engine_power_up(dma, 0));
    CHECK(ev.count[NETDMA_NOTIFY_POWER_UP] == 1 && ev.last_engine == 0, "POWER_UP");
    netdma_channel *ch;
    CHECK_OK(netdma_channel_alloc(dma, 0, NULL, 0, &ch));
    CHECK_OK(netdma_channel_free(ch));
    CHECK(ev.count[NETDMA_NOTIFY_CHANNEL_ARRIVAL] == 1, "CHANNEL_ARRIVAL when a channel is freed");

    queue_ops(dma, "the CBDMA model");
    cpu_fallback(dma, "the CBDMA model");
    corner_cases(dma, "the CBDMA model");
    eventfd_wait(dma);
    netdma_level(dma, "the CBDMA model (NetDMA 2.0)");
    CHECK_OK(netdma_close(dma));
    CHECK(ev.count[NETDMA_NOTIFY_REMOVAL] == 1, "REMOVAL at close");

    /* Removing the callback: no more calls. */
    dma = open_model("ioat", "skx");
    memset(&ev, 0, sizeof ev);
    CHECK_OK(netdma_set_notification_callback(dma, on_notification, &ev));
    CHECK_OK(netdma_set_notification_callback(dma, NULL, NULL));
    CHECK_OK(netdma_engine_power_down(dma, 0));
    CHECK_OK(netdma_engine_power_up(dma, 0));
    CHECK(ev.count[NETDMA_NOTIFY_POWER_DOWN] == 0, "no call after removal");
    CHECK_OK(netdma_close(dma));

    dma = open_model("ioat", "cb1");
    netdma_level(dma, "the CBDMA 1.2 model (NetDMA 1.1: NULL-terminated chains)");
    queue_ops(dma, "the CBDMA 1.2 model");
    corner_cases(dma, "the CBDMA 1.2 model");
    CHECK_OK(netdma_close(dma));

    dma = open_model("dsa", NULL);
    queue_ops(dma, "the DSA model");
    cpu_fallback(dma, "the DSA model");
    corner_cases(dma, "the DSA model");
    eventfd_wait(dma);
    netdma_level(dma, "the DSA model");
    CHECK_OK(netdma_close(dma));

    printf("%d failures\n", failures);
    return failures;
}
