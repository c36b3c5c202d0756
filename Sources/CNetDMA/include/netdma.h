/*
 * netdma.h: the C ABI of NetDMA for Linux (libnetdma.so).
 *
 * Userspace DMA copy offload for C and C++ networking stacks: Intel CBDMA (I/OAT) and DSA
 * engines bound to vfio-pci, or the library's built-in register-level device models, behind
 * Microsoft's NetDMA provider model. Two levels:
 *
 *   - a copy queue shaped like DPDK's dmadev (netdma_enqueue_copy/fill/null return a 16-bit
 *     ticket, netdma_submit rings the doorbell, netdma_completed retires ops in order);
 *   - the NetDMA level itself: descriptor chains in DMA memory, Start/Append/Suspend/Resume/
 *     Abort/Reset, and the 64-bit completion word.
 *
 * Build:  cc $(pkg-config --cflags --libs netdma) app.c
 *         (installed by Scripts/install --prefix DIR outside the dynamic linker's path: run
 *         with LD_LIBRARY_PATH=DIR/lib, or link with -Wl,-rpath,DIR/lib; netdma.pc has no rpath)
 *
 * Conventions (every function):
 *   - Return value: 0 or a non-negative result on success, a negative NETDMA_E* code on
 *     failure. netdma_last_error() then says, for this thread, what failed and what to do.
 *     A successful call does not clear it (like errno).
 *   - Handles (netdma_engines, netdma_channel, netdma_queue) are opaque. NULL is refused
 *     with NETDMA_EINVAL. A handle is invalid once the call that releases it returns; calls
 *     off the hot path refuse a released handle (a second close, free or destroy) or one of
 *     another kind with NETDMA_EINVAL, until a later call hands out the same address again.
 *     The hot path and the NetDMA-level calls check only for NULL.
 *   - Threads: calls on a netdma_engines (open, close, memory, channel allocation, power) may
 *     be made from any thread. A channel and the queue on it belong to one thread at a time
 *     (as a DPDK vchan): enqueue, submit, completed and the NetDMA-level calls on one channel
 *     must not run concurrently. Different channels may be used from different threads.
 *   - The hot path (netdma_enqueue_*, netdma_submit, netdma_completed*, netdma_burst_capacity)
 *     does not allocate, lock or make system calls; its errors (queue full, op too large) set
 *     the thread's last error without allocating.
 *   - Addresses given to the engine are IOVAs: the iova of a netdma_buffer, of registered
 *     memory (netdma_mem_register) or netdma_mem_iova(). An IOVA outside them is not a crash:
 *     the op is reported failed.
 */
#ifndef NETDMA_H
#define NETDMA_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#define NETDMA_STATIC_ASSERT(condition, message) static_assert(condition, message)
#else
#define NETDMA_STATIC_ASSERT(condition, message) _Static_assert(condition, message)
#endif

/* ---------------------------------------------------------------------------------------
 * Version
 * ------------------------------------------------------------------------------------- */

/** The ABI this header describes: major << 16 | minor. A library with the same major and a
 *  minor at least this header's implements everything declared here. */
#define NETDMA_ABI_VERSION_MAJOR 0
#define NETDMA_ABI_VERSION_MINOR 1
#define NETDMA_ABI_VERSION ((NETDMA_ABI_VERSION_MAJOR << 16) | NETDMA_ABI_VERSION_MINOR)

/** The library's ABI version (compare with NETDMA_ABI_VERSION).
 *  [thread: any; owns: nothing] */
uint32_t netdma_abi_version(void);

/* ---------------------------------------------------------------------------------------
 * Errors: stable negative codes, and a message per thread that says what to do
 * ------------------------------------------------------------------------------------- */

enum netdma_error_code {
    NETDMA_OK = 0,
    NETDMA_EINVAL = -1,        /* an argument is NULL or out of range: the message names it and what is allowed */
    NETDMA_ESTATE = -2,        /* not allowed in the channel's or engine's state (e.g. Append before Start, powered down) */
    NETDMA_EBUSY = -3,         /* in use: every channel allocated, a queue still on the channel, a device owned by another process */
    NETDMA_ENOTFOUND = -4,     /* no such device, engine, buffer or registration */
    NETDMA_ENOTSUP = -5,       /* the engine, provider or build cannot do this (fill, Suspend, interrupts, ...) */
    NETDMA_EFULL = -6,         /* the queue is full: retire ops with netdma_completed first */
    NETDMA_ETOOLARGE = -7,     /* the op is longer than the engine's maximum transfer, or beyond its address reach */
    NETDMA_ETIMEOUT = -8,      /* the device did not respond or drain in time */
    NETDMA_EDEVICE = -9,       /* the device reported an error or failed its bring-up self-check */
    NETDMA_EPERM = -10,        /* permission denied: root, or the udev rules and the vfio group */
    NETDMA_EWRONGDRIVER = -11, /* the engine is bound to its kernel driver: sudo netdma bind <BDF> */
    NETDMA_EGROUP = -12,       /* the IOMMU group holds devices not bound to vfio-pci */
    NETDMA_ENOIOMMU = -13,     /* no IOMMU: enable VT-d, intel_iommu=on iommu=pt */
    NETDMA_EMEMLOCK = -14,     /* RLIMIT_MEMLOCK too low to pin DMA memory: ulimit -l unlimited */
    NETDMA_ENOTMAPPABLE = -15, /* a device region cannot be mmapped */
    NETDMA_EUNMAPPED = -16,    /* the address is not inside DMA memory or a registration */
    NETDMA_EMAPPING = -17,     /* the memory overlaps a registration, or no IOVA space is left */
    NETDMA_ENOMEM = -18,       /* out of memory (or of threads) */
    NETDMA_ESYSCALL = -19,     /* a system call failed; the message names it and the errno */
    NETDMA_EUNKNOWN = -20      /* an error newer than this header; the message says what happened */
};

/** What code means and what to do about it: a constant string, never NULL (also for codes
 *  this library does not know). [thread: any; owns: static storage] */
const char *netdma_strerror(int code);

/** The calling thread's last error: what failed and what to do ("no error" before the first).
 *  Valid until this thread's next failing netdma call. [thread: per thread; owns: library] */
const char *netdma_last_error(void);

/** The code of the calling thread's last error (NETDMA_OK before the first).
 *  [thread: per thread; owns: nothing] */
int netdma_last_error_code(void);

/* ---------------------------------------------------------------------------------------
 * Opening engines (an engine set: every engine of it shares one DMA address space)
 * ------------------------------------------------------------------------------------- */

typedef struct netdma_engines netdma_engines;
typedef struct netdma_channel netdma_channel;
typedef struct netdma_queue netdma_queue;

/* netdma_open_params.source */
#define NETDMA_SOURCE_AUTO 0u  /* the addresses given, else every engine bound to vfio-pci, else the model */
#define NETDMA_SOURCE_VFIO 1u  /* the addresses given, else every engine bound to vfio-pci; none is an error */
#define NETDMA_SOURCE_MODEL 2u /* the built-in device model, even when engines are bound */

/* netdma_open_params.flags */
#define NETDMA_OPEN_IOVA_VA 0x1u       /* model: IOVA = virtual address (DPDK's IOVA-as-VA); default: allocated IOVAs from 4 GiB up */
#define NETDMA_OPEN_NO_INTERRUPTS 0x2u /* model: no interrupt vectors (poll only; netdma_channel_eventfd is NETDMA_ENOTSUP) */

/** What netdma_open opens. Start from NETDMA_OPEN_PARAMS_INIT; unknown fields stay zero. */
typedef struct netdma_open_params {
    uint32_t size;                 /* sizeof(netdma_open_params): lets later versions grow the struct */
    uint32_t source;               /* NETDMA_SOURCE_* */
    const char *const *addresses;  /* PCI addresses ("0000:00:04.0"), or NULL */
    size_t address_count;          /* entries in addresses */
    const char *model;             /* "ioat" (CBDMA) or "dsa"; NULL: the profile's family, else "ioat" */
    const char *profile;           /* model generation: cb1 tbg snb bdx skx bwd bdxde icx | spr dsa2; NULL: the newest */
    uint32_t flags;                /* NETDMA_OPEN_* */
    uint32_t netdma_version;       /* model: the provider's NetDMA version, major << 16 | minor (0: 2.0; 1.1 on cb1) */
    uint32_t dsa_work_queues;      /* DSA model: dedicated work queues, 1-8 (0: 4), one channel each */
    uint32_t model_idle_spins;     /* model: idle passes its engine thread (and the DSA provider's completion
                                      poller) spin before sleeping (0: 2000); benchmarks raise it */
} netdma_open_params;

#define NETDMA_OPEN_PARAMS_INIT \
    { sizeof(netdma_open_params), NETDMA_SOURCE_AUTO, NULL, 0, NULL, NULL, 0, 0, 0, 0 }

/** Opens the engines params selects (NULL: NETDMA_OPEN_PARAMS_INIT), brings a provider up on
 *  each, registers and starts it, and stores the set in *out. Setup problems (not root, no
 *  IOMMU, wrong driver, memlock) fail with a code and a message naming the fix.
 *  [thread: any; owns: the caller owns *out until netdma_close] */
int netdma_open(const netdma_open_params *params, netdma_engines **out);

/** Stops every engine (drains, deregisters, last engine first) and frees every DMA buffer and
 *  registration of the set. NETDMA_EBUSY (the set stays open) while channels are allocated:
 *  destroy their queues and free them first. [thread: any; owns: releases engines] */
int netdma_close(netdma_engines *engines);

/** One line saying what the set runs on and why ("Running on the built-in device model ...").
 *  NULL for a NULL set. [thread: any; owns: the set's, valid until netdma_close] */
const char *netdma_headline(const netdma_engines *engines);

/** The number of engines in the set. [thread: any; owns: nothing] */
int netdma_engine_count(const netdma_engines *engines);

/* netdma_engine_info.family */
#define NETDMA_FAMILY_IOAT 1u /* Intel CBDMA / I/OAT "Crystal Beach" */
#define NETDMA_FAMILY_DSA 2u  /* Intel Data Streaming Accelerator */

/* netdma_engine_info.flags */
#define NETDMA_ENGINE_MODEL 0x1u      /* a built-in device model */
#define NETDMA_ENGINE_FILL 0x2u       /* executes fill ops */
#define NETDMA_ENGINE_INTERRUPTS 0x4u /* channels have interrupt vectors (netdma_channel_eventfd) */

typedef struct netdma_engine_info {
    char label[32];              /* "0000:00:04.0", or "model:ioat/icx" */
    char generation[32];         /* "CBDMA 3.4", "DSA 1.0" */
    char platform[64];           /* the platform the generation shipped on */
    char name[64];               /* the provider's friendly name */
    uint32_t family;             /* NETDMA_FAMILY_* */
    uint32_t netdma_version;     /* the provider's NetDMA version, major << 16 | minor */
    uint32_t channels;           /* NetDMA channels (CBDMA channels, DSA dedicated work queues) */
    uint32_t free_channels;      /* channels not allocated now */
    uint64_t max_transfer_size;  /* the largest op, in bytes */
    int32_t numa_node;           /* the PCI function's NUMA node, -1 unknown (and for a model) */
    uint32_t flags;              /* NETDMA_ENGINE_* */
    int32_t model_thread;        /* a model's engine thread (kernel thread ID, for pinning or CPU time); 0 otherwise */
    uint32_t reserved;
} netdma_engine_info;

/** Fills *info for engine index (0 to netdma_engine_count - 1). [thread: any; owns: caller's *info] */
int netdma_engine_info_get(const netdma_engines *engines, unsigned index, netdma_engine_info *info);

/* ---------------------------------------------------------------------------------------
 * Power (NetDMA 1.1+) and notifications
 * ------------------------------------------------------------------------------------- */

/* Notification events (NET_DMA_PNP_NOTIFICATION_CODE values) */
#define NETDMA_NOTIFY_REGISTERED 1      /* an engine's provider registered */
#define NETDMA_NOTIFY_ARRIVAL 2         /* an engine is ready: channels can be allocated */
#define NETDMA_NOTIFY_REMOVAL 3         /* an engine is about to stop (netdma_close): stop using it */
#define NETDMA_NOTIFY_CHANNEL_ARRIVAL 4 /* a channel of the engine became free */
#define NETDMA_NOTIFY_POWER_DOWN 5      /* stop submitting to the engine's channels; outstanding ops drain */
#define NETDMA_NOTIFY_POWER_UP 6        /* the engine's channels were re-Started: submit again */

/** A notification: event is NETDMA_NOTIFY_*, engine the engine's index. It runs on the thread
 *  that caused the event (netdma_engine_power_down/up, netdma_close, netdma_channel_free, or a
 *  library thread): it must not block, and must not call netdma_close or netdma_engine_power_*. */
typedef void (*netdma_notify_fn)(void *user, int event, unsigned engine);

/** Calls fn(user, ...) for every later notification of the set, and at once REGISTERED and
 *  ARRIVAL for each engine already started. Replaces the previous callback; NULL removes it.
 *  [thread: any; owns: user stays the caller's and must stay valid until replaced or closed] */
int netdma_set_notification_callback(netdma_engines *engines, netdma_notify_fn fn, void *user);

/** PowerDown: notifies POWER_DOWN, waits for every channel of the engine to drain, then puts
 *  the function in D3hot. Channels stay allocated; submits fail with NETDMA_ESTATE until
 *  PowerUp (the ops stay enqueued). NETDMA_ETIMEOUT when a channel does not drain (the engine
 *  stays up). [thread: any; owns: nothing] */
int netdma_engine_power_down(netdma_engines *engines, unsigned index);

/** PowerUp: back to D0, brought up again, running channels re-Started, then POWER_UP.
 *  [thread: any; owns: nothing] */
int netdma_engine_power_up(netdma_engines *engines, unsigned index);

/* ---------------------------------------------------------------------------------------
 * DMA memory: owned buffers, and registration of caller memory
 * ------------------------------------------------------------------------------------- */

/** A pinned buffer mapped into every engine of the set: addr for the CPU, iova for the engine. */
typedef struct netdma_buffer {
    void *addr;       /* page-aligned (64-byte alignment for descriptors is given) */
    uint64_t iova;    /* the engine's address of addr */
    size_t length;    /* the length asked for */
} netdma_buffer;

/** Allocates a zeroed, pinned buffer of length bytes (2 MiB pages when available) on NUMA node
 *  numa_node (-1: the calling thread's policy) and maps it into every engine (*out is zeroed
 *  on failure).
 *  [thread: any; owns: the set owns the memory; free with netdma_mem_free or netdma_close] */
int netdma_mem_alloc(netdma_engines *engines, size_t length, int numa_node, netdma_buffer *out);

/** Frees a buffer from netdma_mem_alloc (addr as returned). No op may still use it.
 *  [thread: any; owns: releases the buffer] */
int netdma_mem_free(netdma_engines *engines, void *addr);

/** Pins and maps caller memory [addr, addr + length) (whole pages around it) into every
 *  engine and stores the IOVA of addr in *iova. [thread: any; owns: the memory stays the
 *  caller's and must stay valid until netdma_mem_unregister or netdma_close] */
int netdma_mem_register(netdma_engines *engines, void *addr, size_t length, uint64_t *iova);

/** Removes the registration containing addr. No op may still use it. [thread: any; owns: nothing] */
int netdma_mem_unregister(netdma_engines *engines, void *addr);

/** Stores the IOVA of addr (anywhere inside a buffer or registration) in *iova;
 *  NETDMA_EUNMAPPED outside them. Takes a lock: not for the hot path. [thread: any; owns: nothing] */
int netdma_mem_iova(const netdma_engines *engines, const void *addr, uint64_t *iova);

/* ---------------------------------------------------------------------------------------
 * Channels
 * ------------------------------------------------------------------------------------- */

/** Allocates a channel on engine (-1: the first engine with a free channel, preferring
 *  engines local to cpus' NUMA nodes) whose interrupt and DPC run on one of cpus: a CPU mask
 *  of cpus_size bytes in cpu_set_t's layout (CPU n is bit n % 8 of byte n / 8; pass &set,
 *  sizeof set), or NULL for the engine's local CPUs. Returns the DPC CPU chosen.
 *  [thread: any; owns: the caller owns *out until netdma_channel_free] */
int netdma_channel_alloc(netdma_engines *engines, int engine, const void *cpus, size_t cpus_size,
                         netdma_channel **out);

/** Frees a channel (ProviderFreeDmaChannel). NETDMA_EBUSY while a queue is on it;
 *  NETDMA_ESTATE while descriptors are outstanding (wait, or abort/reset first).
 *  [thread: the channel's; owns: releases channel and its eventfd] */
int netdma_channel_free(netdma_channel *channel);

/* netdma_channel_info.flags */
#define NETDMA_CHANNEL_COUNTED_CHAINS 0x1u  /* NetDMA 2.0+: counted chains; else 1.x NULL-terminated */
#define NETDMA_CHANNEL_FILL 0x2u            /* executes fill descriptors */
#define NETDMA_CHANNEL_SUSPEND_RESUME 0x4u  /* netdma_channel_suspend/resume */
#define NETDMA_CHANNEL_ABORT 0x8u           /* netdma_channel_abort */
#define NETDMA_CHANNEL_RESET 0x10u          /* netdma_channel_reset */
#define NETDMA_CHANNEL_INTERRUPT 0x20u      /* has an interrupt vector (netdma_channel_eventfd) */

typedef struct netdma_channel_info {
    uint32_t engine;                 /* the engine's index in the set */
    uint32_t index;                  /* the channel (DSA: work queue) within the engine */
    int32_t cpu;                     /* the CPU its interrupt's DPC runs on */
    uint32_t netdma_version;         /* the provider's NetDMA version, major << 16 | minor */
    uint32_t flags;                  /* NETDMA_CHANNEL_* */
    uint32_t reserved;
    uint64_t max_transfer_size;      /* MaximumTransferSize */
    uint64_t max_address;            /* MaximumAddressSpace: the highest IOVA the engine reaches */
    const uint64_t *completion_word; /* read it with netdma_completion_word_load */
    uint64_t completion_iova;        /* CompletionPhysicalAddress */
} netdma_channel_info;

/** Fills *info. [thread: any; owns: caller's *info; completion_word lives as long as the channel] */
int netdma_channel_info_get(const netdma_channel *channel, netdma_channel_info *info);

/** An eventfd (non-blocking) that becomes readable after each interrupt of the channel, for
 *  epoll-driven stacks: after epoll reports it, read(fd, &u64, 8) first, then call
 *  netdma_completed until it returns 0 (or read the completion word); a wake-up with nothing
 *  new is harmless. Interrupts come from ops that ask for one: a queue made with
 *  NETDMA_QUEUE_INTERRUPTS (the last op of each submit), or NETDMA_DESC_INTERRUPT_ON_COMPLETION.
 *  Created on the first call; the same fd after. NETDMA_ENOTSUP without an interrupt vector.
 *  [thread: any; owns: the channel's; do not close it; valid until netdma_channel_free] */
int netdma_channel_eventfd(netdma_channel *channel);

/* ---------------------------------------------------------------------------------------
 * The NetDMA level: descriptor chains in DMA memory and the completion word
 * ------------------------------------------------------------------------------------- */

/** NET_DMA_DESCRIPTOR: 64 bytes, placed 64-byte aligned in DMA memory (a netdma_buffer). */
typedef struct netdma_descriptor {
    uint32_t transfer_size;     /* bytes to move (TransferSize) */
    uint32_t control_flags;     /* NETDMA_DESC_* | an op type (ControlFlags) */
    uint64_t source;            /* source IOVA, or the 8-byte fill pattern (SourceAddress) */
    uint64_t destination;       /* destination IOVA (DestinationAddress) */
    uint64_t next;              /* IOVA of the next descriptor; 0 ends a 1.x chain (NextDescriptor) */
    uint64_t next_source;       /* second source page with NETDMA_DESC_SOURCE_PAGE_BREAK (2.0) */
    uint64_t next_destination;  /* second destination page with NETDMA_DESC_DESTINATION_PAGE_BREAK (2.0) */
    uint64_t user_context1;     /* the client's; engines never touch it (UserContext1) */
    uint64_t user_context2;     /* the client's (UserContext2) */
} netdma_descriptor;

NETDMA_STATIC_ASSERT(sizeof(netdma_descriptor) == 64, "NET_DMA_DESCRIPTOR is 64 bytes");
NETDMA_STATIC_ASSERT(offsetof(netdma_descriptor, transfer_size) == 0, "TransferSize at 0");
NETDMA_STATIC_ASSERT(offsetof(netdma_descriptor, control_flags) == 4, "ControlFlags at 4");
NETDMA_STATIC_ASSERT(offsetof(netdma_descriptor, source) == 8, "SourceAddress at 8");
NETDMA_STATIC_ASSERT(offsetof(netdma_descriptor, destination) == 16, "DestinationAddress at 16");
NETDMA_STATIC_ASSERT(offsetof(netdma_descriptor, next) == 24, "NextDescriptor at 24");
NETDMA_STATIC_ASSERT(offsetof(netdma_descriptor, next_source) == 32, "NextSourceAddress at 32");
NETDMA_STATIC_ASSERT(offsetof(netdma_descriptor, next_destination) == 40, "NextDestinationAddress at 40");
NETDMA_STATIC_ASSERT(offsetof(netdma_descriptor, user_context1) == 48, "UserContext1 at 48");
NETDMA_STATIC_ASSERT(offsetof(netdma_descriptor, user_context2) == 56, "UserContext2 at 56");

/* netdma_descriptor.control_flags (NET_DMA_* values) */
#define NETDMA_DESC_INTERRUPT_ON_COMPLETION 0x1u     /* raise the channel's interrupt after this descriptor */
#define NETDMA_DESC_SOURCE_NO_SNOOP 0x2u             /* do not snoop CPU caches on source reads */
#define NETDMA_DESC_DESTINATION_NO_SNOOP 0x4u        /* do not snoop CPU caches on destination writes */
#define NETDMA_DESC_STATUS_UPDATE_ON_COMPLETION 0x8u /* write the completion word after this descriptor */
#define NETDMA_DESC_SERIALIZE_TRANSFER 0x10u         /* fence: this descriptor's writes finish before the next one's reads */
#define NETDMA_DESC_NULL_TRANSFER 0x20u              /* move no data (its completion proves the earlier ones finished) */
#define NETDMA_DESC_SOURCE_PAGE_BREAK 0x40u          /* 2.0: the source continues at next_source after its 4 KiB page */
#define NETDMA_DESC_DESTINATION_PAGE_BREAK 0x80u     /* 2.0: the destination continues at next_destination */
#define NETDMA_DESC_DESTINATION_DCA_ENABLE 0x200u    /* 2.0 DCA hint: accepted and ignored (no engine has DCA) */
#define NETDMA_DESC_OP_MASK 0xFF000000u              /* the op type byte */
#define NETDMA_DESC_OP_COPY 0x00000000u              /* NET_DMA_OP_TYPE_STANDARD_DMA */
#define NETDMA_DESC_OP_FILL 0x01000000u              /* fill: the pattern in source over transfer_size bytes (NETDMA_CHANNEL_FILL) */

/* The completion word: the IOVA of the last processed descriptor (bits 63:6) | a status (bits 2:0). */
#define NETDMA_COMPLETION_STATUS_MASK 0x7u
#define NETDMA_COMPLETION_ADDRESS_MASK 0xFFFFFFFFFFFFFFC0ull
#define NETDMA_TRANSFER_ACTIVE 0u /* the descriptor finished, more are pending */
#define NETDMA_TRANSFER_IDLE 1u   /* the descriptor finished and was the last one pending */
#define NETDMA_TRANSFER_SUSPEND 2u /* a Suspend finished; waiting for Resume */
#define NETDMA_TRANSFER_HALTED 3u /* stopped by an error, Abort or Reset */
#define NETDMA_TRANSFER_ARMED 4u  /* nothing completed since Start; the address is not valid */

/** One 64-bit acquire load of a completion word (netdma_channel_info.completion_word). */
static inline uint64_t netdma_completion_word_load(const uint64_t *word) {
    return __atomic_load_n(word, __ATOMIC_ACQUIRE);
}

/** Stores next into d->next with one release store: the 1.x Append rule (the engine may be
 *  reading the old tail at that moment). */
static inline void netdma_descriptor_publish_next(netdma_descriptor *d, uint64_t next) {
    __atomic_store_n(&d->next, next, __ATOMIC_RELEASE);
}

/* Channel states (netdma_channel_state) */
#define NETDMA_STATE_ALLOCATED 0 /* fresh or Reset: only Start (or Free, Reset) */
#define NETDMA_STATE_RUNNING 1   /* Append, Start, Suspend, Abort, Reset, Free when drained */
#define NETDMA_STATE_SUSPENDED 2 /* only Resume; the chain may be edited */
#define NETDMA_STATE_HALTED 3    /* aborted or halted by a device error: Start, Reset or Free */

/** The channel's state (NETDMA_STATE_*), or a negative code. [thread: any; owns: nothing] */
int netdma_channel_state(const netdma_channel *channel);

/** The completion word's value (one acquire load); 0 for a NULL channel.
 *  [thread: any; owns: nothing] */
uint64_t netdma_channel_completion_word(const netdma_channel *channel);

/** ProviderStartDma: process count descriptors from first (CPU address) / first_iova (its
 *  IOVA). 2.0: count is exact; 1.x: the chain ends in next = 0. Writes ARMED to the word first.
 *  [thread: the channel's; owns: the descriptors stay the caller's, untouched until completed] */
int netdma_channel_start(netdma_channel *channel, netdma_descriptor *first, uint64_t first_iova, uint32_t count);

/** ProviderAppendDma: add a chain after the last submitted descriptor (1.x: publish the old
 *  tail's next first with netdma_descriptor_publish_next). Running channels only.
 *  [thread: the channel's; owns: as netdma_channel_start] */
int netdma_channel_append(netdma_channel *channel, netdma_descriptor *first, uint64_t first_iova, uint32_t count);

/** ProviderSuspendDma: finish the current descriptor and stop; *last_iova (may be NULL) gets
 *  the last processed descriptor (0: none). [thread: the channel's; owns: nothing] */
int netdma_channel_suspend(netdma_channel *channel, uint64_t *last_iova);

/** ProviderResumeDma: continue at the last processed descriptor's next. [thread: the channel's; owns: nothing] */
int netdma_channel_resume(netdma_channel *channel);

/** ProviderAbortDma: stop at once (the current copy may be partial), status HALTED; Start next.
 *  [thread: the channel's; owns: nothing] */
int netdma_channel_abort(netdma_channel *channel);

/** ProviderResetChannel: Abort, then back to ALLOCATED; no submitted descriptor is touched
 *  again. [thread: the channel's; owns: the descriptors are the caller's again] */
int netdma_channel_reset(netdma_channel *channel);

/* ---------------------------------------------------------------------------------------
 * Copy queue (DPDK dmadev semantics) on a channel
 * ------------------------------------------------------------------------------------- */

/* netdma_queue_params.flags */
#define NETDMA_QUEUE_INTERRUPTS 0x1u /* the last op of each submit asks for an interrupt (netdma_channel_eventfd) */

typedef struct netdma_queue_params {
    uint32_t size;               /* sizeof(netdma_queue_params) */
    uint32_t ring_size;          /* descriptors in the ring, a power of two from 2 to 65536 (0: 1024); capacity is one less */
    uint32_t flags;              /* NETDMA_QUEUE_* */
    uint32_t cpu_copy_threshold; /* CPU fallback (Linux's copybreak): copies and fills shorter than this many
                                    bytes run on the calling CPU inside netdma_submit, with tickets from the
                                    same sequence, retired in ticket order with the engine's ops, sharing the
                                    capacity, fences honoured; one whose IOVAs are not DMA memory is reported
                                    failed (nothing written). Use the copy threshold `netdma bench` prints for
                                    the engine; 0: every op goes to the engine */
} netdma_queue_params;

#define NETDMA_QUEUE_PARAMS_INIT { sizeof(netdma_queue_params), 0, 0, 0 }

/** Makes a copy queue on a fresh (or reset) channel, with its descriptor ring in DMA memory
 *  (params NULL: NETDMA_QUEUE_PARAMS_INIT). One queue per channel.
 *  [thread: the channel's; owns: the caller owns *out until netdma_queue_destroy] */
int netdma_queue_create(netdma_channel *channel, const netdma_queue_params *params, netdma_queue **out);

/** Destroys a queue: ops not yet completed are abandoned (the channel is Reset) and the
 *  channel is free for another queue or the NetDMA level. [thread: the channel's; owns: releases queue] */
int netdma_queue_destroy(netdma_queue *queue);

/* Op flags (netdma_enqueue_*) */
#define NETDMA_OP_FENCE 0x1ull  /* this op's writes finish before any later op reads (NetDMA's
                                   NET_DMA_SERIALIZE_TRANSFER, on the EARLIER op). DPDK's
                                   RTE_DMA_OP_FLAG_FENCE is set on the LATER op: to port, move the
                                   flag to the op before it. */
#define NETDMA_OP_SUBMIT 0x2ull /* submit after enqueueing (RTE_DMA_OP_FLAG_SUBMIT). If that submit fails the
                                   op stays enqueued and its ticket is returned: netdma_submit retries */

/** Enqueues a copy of length bytes from IOVA src to IOVA dst. Returns its ticket (0-65535,
 *  wrapping: DPDK's ring index) or NETDMA_EFULL, NETDMA_ETOOLARGE, NETDMA_EINVAL (unknown flag).
 *  Nothing moves before netdma_submit. Length 0 moves nothing and succeeds (as fills do). [thread: the channel's; hot path; owns: nothing] */
int netdma_enqueue_copy(netdma_queue *queue, uint64_t src, uint64_t dst, uint32_t length, uint64_t flags);

/** Enqueues a fill: the 8-byte pattern repeated over length bytes at IOVA dst. Returns its
 *  ticket, or as netdma_enqueue_copy, or NETDMA_ENOTSUP without fill (copy from a pattern
 *  buffer instead). [thread: the channel's; hot path; owns: nothing] */
int netdma_enqueue_fill(netdma_queue *queue, uint64_t pattern, uint64_t dst, uint32_t length, uint64_t flags);

/** Enqueues a NULL op: moves nothing; its completion proves every earlier op finished.
 *  [thread: the channel's; hot path; owns: nothing] */
int netdma_enqueue_null(netdma_queue *queue, uint64_t flags);

/** Hands every enqueued op to the engine: one doorbell (Append) for the batch; ops below the
 *  CPU-copy threshold run here. On failure (NETDMA_ESTATE while powered down) the ops stay
 *  enqueued and a later submit retries them. [thread: the channel's; hot path; owns: nothing] */
int netdma_submit(netdma_queue *queue);

/** Retires up to max ops that completed, in ticket order (rte_dma_completed). Returns how
 *  many succeeded; *last_ticket (may be NULL) gets the last one's ticket (of the last op
 *  retired before when 0; 0xFFFF before any). When an op failed, *has_error (may be NULL) is
 *  set: that op (ticket *last_ticket + 1) is retired and reported only this once.
 *  [thread: the channel's; hot path; owns: nothing] */
int netdma_completed(netdma_queue *queue, uint16_t max, uint16_t *last_ticket, bool *has_error);

/* Op outcomes (netdma_completed_status) */
#define NETDMA_OP_STATUS_SUCCESSFUL 0 /* the engine (or the CPU) completed the op */
#define NETDMA_OP_STATUS_FAILED 1     /* the engine halted on it (e.g. an unmapped IOVA) or, for a CPU op, an
                                         address was not DMA memory; nothing after it was lost */

/** Retires up to max ops, failed ones included, writing each op's NETDMA_OP_STATUS_* into
 *  status[0..] in order (rte_dma_completed_status). Returns how many; *last_ticket (may be
 *  NULL) gets the last one's ticket. [thread: the channel's; hot path; owns: caller's status] */
int netdma_completed_status(netdma_queue *queue, uint16_t max, uint16_t *last_ticket, uint8_t *status);

/** How many more ops can be enqueued now (rte_dma_burst_capacity).
 *  [thread: the channel's; hot path; owns: nothing] */
int netdma_burst_capacity(const netdma_queue *queue);

typedef struct netdma_queue_stats {
    uint32_t capacity;       /* ring_size - 1: the most ops outstanding */
    uint32_t free_slots;     /* as netdma_burst_capacity */
    uint32_t pending;        /* enqueued, not yet submitted */
    uint32_t outstanding;    /* submitted, not yet retired */
    uint64_t failed;         /* ops reported failed since the queue was made */
    uint64_t cpu_ops;        /* ops the CPU ran (shorter than cpu_copy_threshold) */
    char last_fault[128];    /* why the last failed op failed ("" before any) */
} netdma_queue_stats;

/** Fills *stats. Not for the hot path (copies the fault text). [thread: the channel's; owns: caller's *stats] */
int netdma_queue_stats_get(const netdma_queue *queue, netdma_queue_stats *stats);

#ifdef __cplusplus
}
#endif

#endif /* NETDMA_H */
