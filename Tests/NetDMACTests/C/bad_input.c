/* Bad input through the C ABI: each case of README's "API arguments: C ABI" table (X1...),
 * the code it returns and what its message says. Run by CABITests.swift; exit status = failures. */
#include "check.h"

#include <stdlib.h>

static netdma_engines *open_model(const char *model, const char *profile, uint32_t flags) {
    netdma_open_params p = NETDMA_OPEN_PARAMS_INIT;
    p.source = NETDMA_SOURCE_MODEL;
    p.model = model;
    p.profile = profile;
    p.flags = flags;
    netdma_engines *e = NULL;
    if (netdma_open(&p, &e) < 0) {
        fprintf(stderr, "cannot open the %s model: %s\n", model ? model : "default", netdma_last_error());
        exit(100);
    }
    return e;
}

int main(void) {
    netdma_engines *dma = open_model("ioat", NULL, 0);
    netdma_channel *ch = NULL;
    netdma_queue *q = NULL;
    CHECK_OK(netdma_channel_alloc(dma, -1, NULL, 0, &ch));
    netdma_queue_params qp = NETDMA_QUEUE_PARAMS_INIT;
    qp.ring_size = 4; /* capacity 3 */
    CHECK_OK(netdma_queue_create(ch, &qp, &q));
    netdma_buffer a, b;
    CHECK_OK(netdma_mem_alloc(dma, 1 << 16, -1, &a));
    CHECK_OK(netdma_mem_alloc(dma, 1 << 16, -1, &b));

    CASE("X1"); /* NULL handles and out-pointers */
    CHECK_CODE(netdma_enqueue_copy(NULL, a.iova, b.iova, 64, 0), NETDMA_EINVAL, "queue is NULL");
    CHECK_CODE(netdma_enqueue_fill(NULL, 0, b.iova, 64, 0), NETDMA_EINVAL, "queue is NULL");
    CHECK_CODE(netdma_enqueue_null(NULL, 0), NETDMA_EINVAL, "queue is NULL");
    CHECK_CODE(netdma_submit(NULL), NETDMA_EINVAL, "queue is NULL");
    CHECK_CODE(netdma_completed(NULL, 1, NULL, NULL), NETDMA_EINVAL, "queue is NULL");
    CHECK_CODE(netdma_completed_status(NULL, 1, NULL, NULL), NETDMA_EINVAL, "queue is NULL");
    CHECK_CODE(netdma_burst_capacity(NULL), NETDMA_EINVAL, "queue is NULL");
    CHECK_CODE(netdma_close(NULL), NETDMA_EINVAL, "engines is NULL");
    CHECK_CODE(netdma_open(NULL, NULL), NETDMA_EINVAL, "out is NULL");
    CHECK_CODE(netdma_channel_alloc(NULL, -1, NULL, 0, &ch), NETDMA_EINVAL, "engines is NULL");
    CHECK_CODE(netdma_channel_alloc(dma, -1, NULL, 0, NULL), NETDMA_EINVAL, "out is NULL");
    CHECK_CODE(netdma_channel_free(NULL), NETDMA_EINVAL, "channel is NULL");
    CHECK_CODE(netdma_channel_start(ch, NULL, 0, 1), NETDMA_EINVAL, "first is NULL");
    CHECK_CODE(netdma_mem_alloc(dma, 64, -1, NULL), NETDMA_EINVAL, "out is NULL");
    CHECK_CODE(netdma_queue_create(NULL, NULL, &q), NETDMA_EINVAL, "channel is NULL");
    CHECK_CODE(netdma_engine_info_get(dma, 0, NULL), NETDMA_EINVAL, "info is NULL");
    CHECK(netdma_headline(NULL) == NULL, "a NULL set has no headline");
    CHECK(netdma_channel_completion_word(NULL) == 0, "a NULL channel has no word");
    /* Every other function that takes a handle. */
    {
        netdma_buffer nb;
        uint64_t iova;
        netdma_channel_info ci;
        netdma_queue_stats qs;
        netdma_descriptor d;
        memset(&d, 0, sizeof d);
        CHECK_CODE(netdma_engine_count(NULL), NETDMA_EINVAL, "engines is NULL");
        CHECK_CODE(netdma_engine_info_get(NULL, 0, NULL), NETDMA_EINVAL, "engines is NULL");
        CHECK_CODE(netdma_set_notification_callback(NULL, NULL, NULL), NETDMA_EINVAL, "engines is NULL");
        CHECK_CODE(netdma_engine_power_down(NULL, 0), NETDMA_EINVAL, "engines is NULL");
        CHECK_CODE(netdma_engine_power_up(NULL, 0), NETDMA_EINVAL, "engines is NULL");
        CHECK_CODE(netdma_mem_alloc(NULL, 64, -1, &nb), NETDMA_EINVAL, "engines is NULL");
        CHECK_CODE(netdma_mem_free(NULL, a.addr), NETDMA_EINVAL, "engines is NULL");
        CHECK_CODE(netdma_mem_register(NULL, a.addr, 64, &iova), NETDMA_EINVAL, "engines is NULL");
        CHECK_CODE(netdma_mem_unregister(NULL, a.addr), NETDMA_EINVAL, "engines is NULL");
        CHECK_CODE(netdma_mem_iova(NULL, a.addr, &iova), NETDMA_EINVAL, "engines is NULL");
        CHECK_CODE(netdma_channel_info_get(NULL, &ci), NETDMA_EINVAL, "channel is NULL");
        CHECK_CODE(netdma_channel_eventfd(NULL), NETDMA_EINVAL, "channel is NULL");
        CHECK_CODE(netdma_channel_state(NULL), NETDMA_EINVAL, "channel is NULL");
        CHECK_CODE(netdma_channel_start(NULL, &d, 0, 1), NETDMA_EINVAL, "channel is NULL");
        CHECK_CODE(netdma_channel_append(NULL, &d, 0, 1), NETDMA_EINVAL, "channel is NULL");
        CHECK_CODE(netdma_channel_suspend(NULL, NULL), NETDMA_EINVAL, "channel is NULL");
        CHECK_CODE(netdma_channel_resume(NULL), NETDMA_EINVAL, "channel is NULL");
        CHECK_CODE(netdma_channel_abort(NULL), NETDMA_EINVAL, "channel is NULL");
        CHECK_CODE(netdma_channel_reset(NULL), NETDMA_EINVAL, "channel is NULL");
        CHECK_CODE(netdma_queue_destroy(NULL), NETDMA_EINVAL, "queue is NULL");
        CHECK_CODE(netdma_queue_stats_get(NULL, &qs), NETDMA_EINVAL, "queue is NULL");
        CHECK_CODE(netdma_queue_stats_get(q, NULL), NETDMA_EINVAL, "stats is NULL");
        CHECK_CODE(netdma_channel_info_get(ch, NULL), NETDMA_EINVAL, "info is NULL");
        CHECK_CODE(netdma_queue_create(ch, NULL, NULL), NETDMA_EINVAL, "out is NULL");
    }

    CASE("X2"); /* netdma_open: what to open */
    {
        netdma_engines *e = (netdma_engines *)&e;
        netdma_open_params p = NETDMA_OPEN_PARAMS_INIT;
        p.source = NETDMA_SOURCE_MODEL;
        p.profile = "p4";
        CHECK_CODE(netdma_open(&p, &e), NETDMA_EINVAL, "use one of");
        CHECK(e == NULL, "*out is NULL after a failure");
        p.profile = NULL;
        p.model = "iaa";
        CHECK_CODE(netdma_open(&p, &e), NETDMA_EINVAL, "\"ioat\" (CBDMA) or \"dsa\"");
        p.model = "ioat";
        p.dsa_work_queues = 2;
        CHECK_CODE(netdma_open(&p, &e), NETDMA_EINVAL, "dsa_work_queues is for the DSA model");
        p.dsa_work_queues = 0;
        p.size = 8;
        CHECK_CODE(netdma_open(&p, &e), NETDMA_EINVAL, "sizeof(netdma_open_params)");
        p.size = sizeof p;
        p.source = 7;
        CHECK_CODE(netdma_open(&p, &e), NETDMA_EINVAL, "NETDMA_SOURCE_MODEL (2)");
        p.source = NETDMA_SOURCE_MODEL;
        p.flags = 0x80;
        CHECK_CODE(netdma_open(&p, &e), NETDMA_EINVAL, "NETDMA_OPEN_* flags");
        p.flags = 0;
        const char *addresses[] = {"xyz"};
        p.source = NETDMA_SOURCE_VFIO;
        p.addresses = addresses;
        p.address_count = 1;
        CHECK_CODE(netdma_open(&p, &e), NETDMA_EINVAL, "write it as 0000:00:04.0");
        p.source = NETDMA_SOURCE_MODEL;
        addresses[0] = "0000:00:04.0";
        CHECK_CODE(netdma_open(&p, &e), NETDMA_EINVAL, "give no PCI addresses");
        p.addresses = NULL;
        CHECK_CODE(netdma_open(&p, &e), NETDMA_EINVAL, "addresses is NULL");
        p.address_count = 0;
        p.netdma_version = 0x00030000; /* 3.0 */
        CHECK_CODE(netdma_open(&p, &e), NETDMA_ENOTSUP, "use 1.0, 1.1, 2.0 or 2.1");
    }

    CASE("X3"); /* op arguments */
    {
        netdma_channel_info ci;
        CHECK_OK(netdma_channel_info_get(ch, &ci));
        CHECK_CODE(netdma_enqueue_copy(q, a.iova, b.iova, (uint32_t)ci.max_transfer_size + 1, 0), NETDMA_ETOOLARGE,
                   "split it");
        CHECK_CODE(netdma_enqueue_fill(q, 0, b.iova, (uint32_t)ci.max_transfer_size + 1, 0), NETDMA_ETOOLARGE, "split it");
        CHECK_CODE(netdma_enqueue_copy(q, a.iova, ci.max_address - 8, 64, 0), NETDMA_ETOOLARGE, "maximum address");
        CHECK_CODE(netdma_enqueue_copy(q, a.iova, b.iova, 64, 0x100), NETDMA_EINVAL, "NETDMA_OP_FENCE and NETDMA_OP_SUBMIT");
        netdma_queue_stats s;
        CHECK_OK(netdma_queue_stats_get(q, &s));
        CHECK(s.pending == 0 && s.free_slots == 3, "refused ops take no slot (pending %u, free %u)", s.pending, s.free_slots);
    }

    CASE("X4"); /* a full queue */
    {
        for (int i = 0; i < 3; i++) CHECK(netdma_enqueue_copy(q, a.iova, b.iova, 64, 0) == i, "ticket %d", i);
        CHECK(netdma_burst_capacity(q) == 0, "no room left");
        CHECK_CODE(netdma_enqueue_copy(q, a.iova, b.iova, 64, 0), NETDMA_EFULL, "netdma_completed()");
        CHECK_CODE(netdma_enqueue_null(q, 0), NETDMA_EFULL, "before enqueueing more");
        CHECK_OK(netdma_submit(q));
        bool failed = false;
        CHECK(drain(q, 3, &failed) == 3 && !failed, "the three ops complete");
        CHECK(netdma_burst_capacity(q) == 3, "room again");
    }

    CASE("X5"); /* a copy from an IOVA that is not DMA memory is reported failed, once */
    {
        memset(b.addr, 0x5A, 256);
        int bad = netdma_enqueue_copy(q, 0x10000, b.iova, 256, 0); /* below every allocated IOVA */
        int good = netdma_enqueue_copy(q, a.iova, b.iova + 4096, 256, 0);
        CHECK(bad >= 0 && good == ((bad + 1) & 0xFFFF), "tickets %d, %d", bad, good);
        CHECK_OK(netdma_submit(q));
        uint16_t last = 0;
        bool failed = false;
        int n = 0;
        for (long spins = 0; !failed && spins < 100000000L; spins++) n += netdma_completed(q, 8, &last, &failed);
        CHECK(failed && n == 0 && last == (uint16_t)(bad - 1), "reported failed (n %d, last %u)", n, last);
        CHECK(drain(q, 1, &failed) == 1, "the op after it completes");
        unsigned char untouched[256];
        memset(untouched, 0x5A, sizeof untouched);
        CHECK(memcmp(b.addr, untouched, 256) == 0, "the failed copy wrote nothing");
        netdma_queue_stats s;
        CHECK_OK(netdma_queue_stats_get(q, &s));
        CHECK(s.failed == 1 && s.last_fault[0] != '\0', "stats: failed %llu, fault '%s'", (unsigned long long)s.failed,
              s.last_fault);
        /* The same through netdma_completed_status: the failed op's status, then the next op's. */
        CHECK_OK(netdma_enqueue_copy(q, 0x10000, b.iova, 64, 0));
        CHECK_OK(netdma_enqueue_copy(q, a.iova, b.iova, 64, NETDMA_OP_SUBMIT));
        uint8_t st[4] = {9, 9, 9, 9};
        n = 0;
        for (long spins = 0; n < 2 && spins < 100000000L; spins++) n += netdma_completed_status(q, (uint16_t)(2 - n), NULL, st + n);
        CHECK(n == 2 && st[0] == NETDMA_OP_STATUS_FAILED && st[1] == NETDMA_OP_STATUS_SUCCESSFUL, "statuses %u %u",
              st[0], st[1]);
        CHECK_CODE(netdma_completed_status(q, 1, NULL, NULL), NETDMA_EINVAL, "status is NULL");
    }

    CASE("X6"); /* what is still in use */
    {
        CHECK_CODE(netdma_close(dma), NETDMA_EBUSY, "netdma_channel_free");
        CHECK_CODE(netdma_channel_free(ch), NETDMA_EBUSY, "netdma_queue_destroy");
        netdma_queue *q2 = NULL;
        CHECK_CODE(netdma_queue_create(ch, NULL, &q2), NETDMA_EBUSY, "one queue per channel");
        uint64_t last;
        CHECK_CODE(netdma_channel_suspend(ch, &last), NETDMA_EBUSY, "a queue owns this channel");
    }

    CASE("X7"); /* memory */
    {
        char local[64];
        uint64_t iova;
        CHECK_CODE(netdma_mem_free(dma, local), NETDMA_ENOTFOUND, "not the addr of a buffer");
        CHECK_CODE(netdma_mem_iova(dma, local, &iova), NETDMA_EUNMAPPED, "netdma_mem_register");
        netdma_buffer scratch = {&scratch, 1, 1};
        CHECK_CODE(netdma_mem_alloc(dma, 0, -1, &scratch), NETDMA_EINVAL, "must be positive");
        CHECK(scratch.addr == NULL && scratch.iova == 0 && scratch.length == 0, "*out is zeroed on failure");
        CHECK_CODE(netdma_mem_alloc(dma, 64, -2, &scratch), NETDMA_EINVAL, "pass -1");
        void *mine = aligned_alloc(4096, 8192);
        CHECK_OK(netdma_mem_register(dma, mine, 8192, &iova));
        CHECK_CODE(netdma_mem_register(dma, mine, 100, &iova), NETDMA_EMAPPING, "overlaps");
        CHECK_OK(netdma_mem_unregister(dma, mine));
        CHECK_CODE(netdma_mem_unregister(dma, mine), NETDMA_EUNMAPPED, "not inside a registered region");
        CHECK_CODE(netdma_mem_register(dma, mine, 0, &iova), NETDMA_EINVAL, "must be positive");
        free(mine);
    }

    CASE("X8"); /* channel allocation (on the DSA model: four work queues, four channels) */
    {
        netdma_engines *dsa = open_model("dsa", NULL, 0);
        netdma_channel *c2 = NULL;
        unsigned char none[16] = {0};
        CHECK_CODE(netdma_channel_alloc(dsa, 5, NULL, 0, &c2), NETDMA_EINVAL, "engine 5 does not exist");
        CHECK_CODE(netdma_channel_alloc(dsa, -2, NULL, 0, &c2), NETDMA_EINVAL, "-1 for any");
        CHECK_CODE(netdma_channel_alloc(dsa, -1, none, sizeof none, &c2), NETDMA_EINVAL, "holds no CPU");
        unsigned char far[128] = {0};
        far[127] = 0x80; /* CPU 1023 */
        CHECK_CODE(netdma_channel_alloc(dsa, -1, far, sizeof far, &c2), NETDMA_EINVAL, "usable by this process");
        netdma_engine_info info;
        CHECK_OK(netdma_engine_info_get(dsa, 0, &info));
        netdma_channel *all[64];
        unsigned got = 0;
        while (got < info.channels && got < 64 && netdma_channel_alloc(dsa, 0, NULL, 0, &all[got]) >= 0) got++;
        CHECK(got == info.channels && got > 1, "allocated all %u channels", info.channels);
        CHECK_CODE(netdma_channel_alloc(dsa, -1, NULL, 0, &c2), NETDMA_EBUSY, "is allocated");
        CHECK_CODE(netdma_channel_alloc(dsa, 0, NULL, 0, &c2), NETDMA_EBUSY, "are allocated");
        for (unsigned i = 0; i < got; i++) CHECK_OK(netdma_channel_free(all[i]));

    CASE("X9"); /* the NetDMA level's state machine */
        CHECK_OK(netdma_channel_alloc(dsa, -1, NULL, 0, &c2));
        netdma_buffer m;
        CHECK_OK(netdma_mem_alloc(dsa, 4096, -1, &m));
        netdma_descriptor *d = (netdma_descriptor *)m.addr;
        d->control_flags = NETDMA_DESC_NULL_TRANSFER | NETDMA_DESC_STATUS_UPDATE_ON_COMPLETION;
        d->next = m.iova; /* 2.0: never NULL */
        CHECK_CODE(netdma_channel_append(c2, d, m.iova, 1), NETDMA_ESTATE, "Append is not allowed");
        CHECK_CODE(netdma_channel_resume(c2), NETDMA_ESTATE, "allowed: suspended");
        CHECK_CODE(netdma_channel_start(c2, d, m.iova, 0), NETDMA_EINVAL, "at least one descriptor");
        CHECK(netdma_channel_state(c2) == NETDMA_STATE_ALLOCATED, "still allocated");
        CHECK_OK(netdma_channel_free(c2));
        CHECK_OK(netdma_close(dsa));
    }

    CASE("X10"); /* interrupts on a model without vectors */
    {
        netdma_engines *quiet = open_model("ioat", NULL, NETDMA_OPEN_NO_INTERRUPTS);
        netdma_channel *c2 = NULL;
        CHECK_OK(netdma_channel_alloc(quiet, -1, NULL, 0, &c2));
        CHECK_CODE(netdma_channel_eventfd(c2), NETDMA_ENOTSUP, "no interrupt vector");
        netdma_queue_params p = NETDMA_QUEUE_PARAMS_INIT;
        p.flags = NETDMA_QUEUE_INTERRUPTS;
        netdma_queue *q2 = NULL;
        CHECK_CODE(netdma_queue_create(c2, &p, &q2), NETDMA_ENOTSUP, "without NETDMA_QUEUE_INTERRUPTS");
        CHECK_OK(netdma_channel_free(c2));
        CHECK_OK(netdma_close(quiet));
    }

    CASE("X11"); /* power */
    {
        CHECK_CODE(netdma_engine_power_up(dma, 0), NETDMA_ESTATE, "PowerUp is not allowed");
        CHECK_CODE(netdma_engine_power_down(dma, 3), NETDMA_EINVAL, "engine 3 does not exist");
        CHECK_OK(netdma_engine_power_down(dma, 0));
        int t = netdma_enqueue_copy(q, a.iova, b.iova, 64, 0);
        CHECK(t >= 0, "enqueue works while powered down");
        CHECK_CODE(netdma_submit(q), NETDMA_ESTATE, "powered down");
        CHECK_OK(netdma_engine_power_up(dma, 0));
        CHECK_OK(netdma_submit(q)); /* the op stayed enqueued */
        bool failed = false;
        CHECK(drain(q, 1, &failed) == 1 && !failed, "the op runs after PowerUp");
    }

    CASE("X12"); /* queue parameters */
    {
        netdma_engines *dsa = open_model("dsa", NULL, 0);
        netdma_channel *c2 = NULL;
        CHECK_OK(netdma_channel_alloc(dsa, -1, NULL, 0, &c2));
        netdma_queue_params p = NETDMA_QUEUE_PARAMS_INIT;
        netdma_queue *q2 = NULL;
        p.ring_size = 1000;
        CHECK_CODE(netdma_queue_create(c2, &p, &q2), NETDMA_EINVAL, "power of two from 2 to 65536");
        p.ring_size = 0;
        p.flags = 0x10;
        CHECK_CODE(netdma_queue_create(c2, &p, &q2), NETDMA_EINVAL, "NETDMA_QUEUE_INTERRUPTS");
        p.flags = 0;
        p.size = 4;
        CHECK_CODE(netdma_queue_create(c2, &p, &q2), NETDMA_EINVAL, "sizeof(netdma_queue_params)");
        CHECK(q2 == NULL, "no queue after a failure");
        CHECK_OK(netdma_channel_free(c2));
        CHECK_OK(netdma_close(dsa));
    }

    CASE("X13"); /* handles released already, or of another kind: an error, not a use after free */
    {
        netdma_engines *e2 = open_model("ioat", NULL, 0);
        netdma_channel *c2 = NULL;
        netdma_queue *q2 = NULL;
        CHECK_OK(netdma_channel_alloc(e2, -1, NULL, 0, &c2));
        CHECK_OK(netdma_queue_create(c2, NULL, &q2));
        /* A handle of one kind where another is expected. */
        CHECK_CODE(netdma_queue_destroy((netdma_queue *)c2), NETDMA_EINVAL, "not from netdma_queue_create");
        CHECK_CODE(netdma_channel_free((netdma_channel *)q2), NETDMA_EINVAL, "not from netdma_channel_alloc");
        CHECK_CODE(netdma_close((netdma_engines *)c2), NETDMA_EINVAL, "not from netdma_open");
        CHECK_OK(netdma_queue_destroy(q2));
        CHECK_CODE(netdma_queue_destroy(q2), NETDMA_EINVAL, "released already");
        CHECK_CODE(netdma_queue_stats_get(q2, &(netdma_queue_stats){0}), NETDMA_EINVAL, "released already");
        CHECK_OK(netdma_channel_free(c2));
        CHECK_CODE(netdma_channel_free(c2), NETDMA_EINVAL, "released already");
        CHECK_CODE(netdma_queue_create(c2, NULL, &q2), NETDMA_EINVAL, "released already");
        CHECK_CODE(netdma_channel_info_get(c2, &(netdma_channel_info){0}), NETDMA_EINVAL, "released already");
        CHECK_CODE(netdma_channel_eventfd(c2), NETDMA_EINVAL, "released already");
        CHECK_OK(netdma_close(e2));
        CHECK_CODE(netdma_close(e2), NETDMA_EINVAL, "released already");
        CHECK_CODE(netdma_channel_alloc(e2, -1, NULL, 0, &c2), NETDMA_EINVAL, "released already");
        netdma_buffer nb;
        CHECK_CODE(netdma_mem_alloc(e2, 64, -1, &nb), NETDMA_EINVAL, "released already");
        CHECK_CODE(netdma_engine_count(e2), NETDMA_EINVAL, "released already");
        CHECK(netdma_headline(e2) == NULL, "no headline for a closed set");
    }

    CHECK_OK(netdma_queue_destroy(q));
    CHECK_OK(netdma_channel_free(ch));
    CHECK_OK(netdma_close(dma));
    printf("%d failures\n", failures);
    return failures;
}
