/*
 * receive_copy: what the NetDMA documents describe, in userspace. UDP datagrams arrive on
 * loopback; recvmmsg places them in a ring of receive buffers in DMA memory (the NIC's receive
 * ring, here filled by the kernel); the engine copies each one into the application's own
 * buffer (registered with netdma_mem_register), and copies shorter than the CPU-copy threshold
 * are done by the CPU inside netdma_submit (Linux's copybreak). The receiving thread waits in
 * epoll on the socket and on the channel's eventfd, and a receive slot is reused only once its
 * copy completed. Every byte that reaches the application is verified.
 *
 * The same traffic (same sizes, same bytes) is then received again with a plain memcpy, and
 * both runs print the receiving thread's CPU time per received byte (verification excluded).
 * On the device model the copies are still done by a CPU (the model's engine thread, whose
 * time is printed too); on hardware they are done by the engine.
 *
 *   cc -O2 Examples/c/receive_copy.c $(pkg-config --cflags --libs netdma) -lpthread -o receive_copy
 *   ./receive_copy [--datagrams N] [--threshold BYTES] [--model ioat|dsa]
 */
#define _GNU_SOURCE
#include <netdma.h>

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <pthread.h>
#include <sched.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

enum {
    SLOTS = 256,            /* receive ring: slots of SLOT_SIZE bytes in DMA memory */
    SLOT_SIZE = 9216,       /* the largest datagram is 9000 bytes (a jumbo frame's payload) */
    BURST = 32,             /* datagrams per recvmmsg and per submit */
    APP_SIZE = 8 << 20,     /* the application's buffer: datagrams land one after another, wrapping */
    WINDOW_BYTES = 96 << 10 /* bytes the sender may have in flight (stays below the socket buffer) */
};

static void die(const char *what) {
    fprintf(stderr, "receive_copy: %s: %s\n", what, errno ? strerror(errno) : "failed");
    exit(1);
}

static void check(int result, const char *what) {
    if (result < 0) {
        fprintf(stderr, "receive_copy: %s: %s\n", what, netdma_last_error());
        exit(1);
    }
}

static uint64_t thread_cpu_ns(clockid_t clock) {
    struct timespec t;
    clock_gettime(clock, &t);
    return (uint64_t)t.tv_sec * 1000000000u + (uint64_t)t.tv_nsec;
}

/* ---- the traffic: sizes and bytes are a function of the datagram's sequence number ---- */

static uint64_t mix(uint64_t x) {
    x ^= x >> 33; x *= 0xff51afd7ed558ccdull; x ^= x >> 33; x *= 0xc4ceb9fe1a85ec53ull; x ^= x >> 33;
    return x;
}

/* Half small (64-256 B: requests, acks), 30% around the MTU (1024-1472 B), 20% jumbo (4-9 KB). */
static uint32_t datagram_size(uint32_t seq) {
    uint64_t r = mix(seq + 1);
    uint32_t kind = (uint32_t)(r % 10), v = (uint32_t)(r >> 32);
    if (kind < 5) return 64 + v % 193;
    if (kind < 8) return 1024 + v % 449;
    return 4096 + v % 4905;
}

static void fill_datagram(uint8_t *p, uint32_t seq, uint32_t size) {
    uint64_t x = mix(seq ^ 0x9e3779b97f4a7c15ull);
    memcpy(p, &seq, 4);
    for (uint32_t i = 4; i < size; i++) {
        x ^= x << 13; x ^= x >> 7; x ^= x << 17;
        p[i] = (uint8_t)x;
    }
}

/* ---- the sender thread: paced so that the socket never drops a datagram ---- */

struct flow {
    pthread_mutex_t lock;
    pthread_cond_t room;
    uint64_t sent_bytes, received_bytes;
    int fd;
    uint32_t datagrams;
};

static void *sender(void *arg) {
    struct flow *f = arg;
    uint8_t buf[SLOT_SIZE];
    for (uint32_t seq = 0; seq < f->datagrams; seq++) {
        uint32_t size = datagram_size(seq);
        fill_datagram(buf, seq, size);
        pthread_mutex_lock(&f->lock);
        while (f->sent_bytes + size - f->received_bytes > WINDOW_BYTES) pthread_cond_wait(&f->room, &f->lock);
        f->sent_bytes += size;
        pthread_mutex_unlock(&f->lock);
        if (send(f->fd, buf, size, 0) != (ssize_t)size) die("send");
    }
    return NULL;
}

static void received(struct flow *f, uint64_t bytes) {
    pthread_mutex_lock(&f->lock);
    f->received_bytes += bytes;
    pthread_cond_signal(&f->room);
    pthread_mutex_unlock(&f->lock);
}

/* ---- one run ---- */

struct run {
    uint64_t bytes, cpu_ns, verify_ns, engine_cpu_ns, cpu_ops;
};

/* A loopback UDP socket pair: rx bound to a free port, tx connected to it. */
static void sockets(int *rx, int *tx) {
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof a;
    *rx = socket(AF_INET, SOCK_DGRAM | SOCK_NONBLOCK, 0);
    *tx = socket(AF_INET, SOCK_DGRAM, 0);
    int size = 1 << 20;
    setsockopt(*rx, SOL_SOCKET, SO_RCVBUF, &size, sizeof size);
    if (*rx < 0 || *tx < 0 || bind(*rx, (struct sockaddr *)&a, sizeof a) < 0 ||
        getsockname(*rx, (struct sockaddr *)&a, &len) < 0 || connect(*tx, (struct sockaddr *)&a, sizeof a) < 0)
        die("loopback UDP sockets");
}

/* Checks what reached the application: datagram seq of size bytes at app + offset (wrapping). */
static void verify(const uint8_t *app, uint64_t offset, uint32_t seq, uint32_t size) {
    uint8_t expect[SLOT_SIZE];
    fill_datagram(expect, seq, size);
    uint64_t at = offset % APP_SIZE;
    if (memcmp(app + at, expect, size) != 0) {
        fprintf(stderr, "receive_copy: datagram %u (%u bytes) arrived wrong in the application buffer\n", seq, size);
        exit(1);
    }
}

/* Receives `datagrams` datagrams into the ring and copies each into the application buffer:
 * through queue (engine, CPU below the threshold), or with memcpy when queue is NULL. */
static struct run receive(netdma_queue *queue, int eventfd, const netdma_buffer *ring, uint8_t *app, uint64_t app_iova,
                          uint32_t datagrams, clockid_t engine_clock) {
    struct flow f = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, 0, 0, -1, datagrams};
    int rx;
    sockets(&rx, &f.fd);
    int ep = epoll_create1(EPOLL_CLOEXEC);
    struct epoll_event ev = {.events = EPOLLIN, .data.u32 = 0};
    if (ep < 0 || epoll_ctl(ep, EPOLL_CTL_ADD, rx, &ev) < 0) die("epoll");
    if (queue) {
        ev.data.u32 = 1;
        if (epoll_ctl(ep, EPOLL_CTL_ADD, eventfd, &ev) < 0) die("epoll (eventfd)");
    }
    pthread_t t;
    if (pthread_create(&t, NULL, sender, &f) != 0) die("pthread_create");

    /* Slot k of the ring holds datagram k's bytes (k mod SLOTS) until its copy is retired;
     * datagram k lands at app_offset[k % SLOTS] in the application buffer. */
    static uint64_t app_offset[SLOTS];
    static uint32_t slot_size[SLOTS];
    uint32_t next = 0, retired = 0;
    uint64_t app_next = 0;
    struct mmsghdr msgs[BURST];
    struct iovec iov[BURST];
    struct run r = {0, 0, 0, 0, 0};
    uint64_t engine0 = engine_clock ? thread_cpu_ns(engine_clock) : 0;
    uint64_t cpu0 = thread_cpu_ns(CLOCK_THREAD_CPUTIME_ID);

    while (retired < datagrams) {
        int progress = 0;
        /* Receive into free slots. */
        uint32_t room = SLOTS - (next - retired);
        if (queue) {
            int cap = netdma_burst_capacity(queue);
            if ((uint32_t)cap < room) room = (uint32_t)cap;
        }
        if (room > BURST) room = BURST;
        if (room > 0 && next < datagrams) {
            for (uint32_t i = 0; i < room; i++) {
                iov[i].iov_base = (uint8_t *)ring->addr + (size_t)((next + i) % SLOTS) * SLOT_SIZE;
                iov[i].iov_len = SLOT_SIZE;
                memset(&msgs[i].msg_hdr, 0, sizeof msgs[i].msg_hdr);
                msgs[i].msg_hdr.msg_iov = &iov[i];
                msgs[i].msg_hdr.msg_iovlen = 1;
            }
            int n = recvmmsg(rx, msgs, room, MSG_DONTWAIT, NULL);
            if (n < 0 && errno != EAGAIN) die("recvmmsg");
            for (int i = 0; i < n; i++) {
                uint32_t slot = next % SLOTS, size = msgs[i].msg_len;
                if (msgs[i].msg_hdr.msg_flags & MSG_TRUNC) die("a datagram larger than a receive slot");
                if (app_next % APP_SIZE + size > APP_SIZE) app_next += APP_SIZE - app_next % APP_SIZE; /* wrap */
                app_offset[slot] = app_next;
                slot_size[slot] = size;
                if (queue) {
                    check(netdma_enqueue_copy(queue, ring->iova + (uint64_t)slot * SLOT_SIZE, app_iova + app_next % APP_SIZE,
                                              size, 0), "enqueue");
                } else {
                    memcpy(app + app_next % APP_SIZE, iov[i].iov_base, size);
                }
                app_next += size;
                r.bytes += size;
                next++;
            }
            if (n > 0) {
                if (queue) check(netdma_submit(queue), "submit");
                progress = 1;
            }
        }
        /* Retire finished copies, in order, and verify them. */
        uint32_t done = 0;
        if (queue) {
            bool failed = false;
            int c = netdma_completed(queue, BURST * 2, NULL, &failed);
            check(c, "completed");
            if (failed) {
                netdma_queue_stats s;
                netdma_queue_stats_get(queue, &s);
                fprintf(stderr, "receive_copy: a copy failed: %s\n", s.last_fault);
                exit(1);
            }
            done = (uint32_t)c;
        } else {
            done = next - retired;
        }
        if (done) {
            uint64_t v0 = thread_cpu_ns(CLOCK_THREAD_CPUTIME_ID);
            uint64_t bytes = 0;
            for (uint32_t k = retired; k < retired + done; k++) {
                verify(app, app_offset[k % SLOTS], k, slot_size[k % SLOTS]);
                bytes += slot_size[k % SLOTS];
            }
            r.verify_ns += thread_cpu_ns(CLOCK_THREAD_CPUTIME_ID) - v0;
            retired += done;
            received(&f, bytes);
            progress = 1;
        }
        if (progress) continue;
        /* Nothing to do: wait for a datagram or for the engine's interrupt. */
        struct epoll_event got[2];
        int n = epoll_wait(ep, got, 2, 5000);
        if (n == 0) {
            fprintf(stderr, "receive_copy: stalled for 5 s with %u of %u datagrams retired (a datagram was lost?)\n",
                    retired, datagrams);
            exit(1);
        }
        for (int i = 0; i < n; i++) {
            if (got[i].data.u32 == 1) {
                uint64_t count;
                if (read(eventfd, &count, sizeof count) < 0 && errno != EAGAIN) die("read(eventfd)");
                /* then poll netdma_completed (the loop's next turn) */
            }
        }
    }
    r.cpu_ns = thread_cpu_ns(CLOCK_THREAD_CPUTIME_ID) - cpu0 - r.verify_ns;
    r.engine_cpu_ns = engine_clock ? thread_cpu_ns(engine_clock) - engine0 : 0;
    pthread_join(t, NULL);
    close(ep);
    close(rx);
    close(f.fd);
    if (queue) {
        netdma_queue_stats s;
        check(netdma_queue_stats_get(queue, &s), "stats");
        r.cpu_ops = s.cpu_ops;
    }
    return r;
}

int main(int argc, char **argv) {
    uint32_t datagrams = 20000, threshold = 512;
    const char *model = NULL;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--datagrams") && i + 1 < argc) datagrams = (uint32_t)strtoul(argv[++i], NULL, 0);
        else if (!strcmp(argv[i], "--threshold") && i + 1 < argc) threshold = (uint32_t)strtoul(argv[++i], NULL, 0);
        else if (!strcmp(argv[i], "--model") && i + 1 < argc) model = argv[++i];
        else {
            fprintf(stderr, "usage: receive_copy [--datagrams N] [--threshold BYTES] [--model ioat|dsa]\n");
            return 2;
        }
    }

    netdma_open_params params = NETDMA_OPEN_PARAMS_INIT;
    if (model) {
        params.source = NETDMA_SOURCE_MODEL;
        params.model = model;
    }
    netdma_engines *dma;
    check(netdma_open(&params, &dma), "open");
    printf("receive_copy: %s\n", netdma_headline(dma));

    /* A channel whose interrupt's DPC runs on this thread's CPU (the DPC signals the eventfd). */
    cpu_set_t cpus;
    CPU_ZERO(&cpus);
    CPU_SET(sched_getcpu(), &cpus);
    netdma_channel *channel;
    int dpc_cpu = netdma_channel_alloc(dma, -1, &cpus, sizeof cpus, &channel);
    check(dpc_cpu, "channel");
    netdma_queue_params qp = NETDMA_QUEUE_PARAMS_INIT;
    qp.ring_size = 1024;
    qp.flags = NETDMA_QUEUE_INTERRUPTS;
    qp.cpu_copy_threshold = threshold;
    netdma_queue *queue;
    check(netdma_queue_create(channel, &qp, &queue), "queue");
    int eventfd = netdma_channel_eventfd(channel);
    check(eventfd, "eventfd");

    netdma_buffer ring;
    check(netdma_mem_alloc(dma, (size_t)SLOTS * SLOT_SIZE, -1, &ring), "receive ring");
    uint8_t *app = aligned_alloc(4096, APP_SIZE);
    if (!app) die("aligned_alloc");
    memset(app, 0, APP_SIZE);
    uint64_t app_iova;
    check(netdma_mem_register(dma, app, APP_SIZE, &app_iova), "register the application buffer");

    netdma_engine_info info;
    check(netdma_engine_info_get(dma, 0, &info), "engine info");
    clockid_t engine_clock = 0;
    if (info.model_thread) engine_clock = (clockid_t)((~(unsigned)info.model_thread << 3) | 6); /* the thread's CPU clock */

    struct run e = receive(queue, eventfd, &ring, app, app_iova, datagrams, engine_clock);
    memset(app, 0, APP_SIZE);
    struct run m = receive(NULL, -1, &ring, app, app_iova, datagrams, 0);

    printf("receive_copy: %u datagrams (%.1f MB, 64 B to 9000 B) over loopback UDP, recvmmsg into %d DMA receive slots, "
           "DPC on CPU %d, CPU-copy threshold %u B\n",
           datagrams, (double)e.bytes / 1e6, SLOTS, dpc_cpu, threshold);
    printf("  engine: every byte verified; %llu datagrams copied by the engine, %llu by the CPU; "
           "receiving thread %.3f ns CPU per byte", (unsigned long long)(datagrams - e.cpu_ops),
           (unsigned long long)e.cpu_ops, (double)e.cpu_ns / (double)e.bytes);
    if (engine_clock) printf(" (the model's engine thread %.3f ns per byte)", (double)e.engine_cpu_ns / (double)e.bytes);
    printf("\n  memcpy: every byte verified; receiving thread %.3f ns CPU per byte\n", (double)m.cpu_ns / (double)m.bytes);

    check(netdma_mem_unregister(dma, app), "unregister");
    free(app);
    check(netdma_queue_destroy(queue), "destroy the queue");
    check(netdma_channel_free(channel), "free the channel");
    check(netdma_close(dma), "close");
    return 0;
}
