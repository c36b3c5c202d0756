/*
 * CVFIO: the project's thin C shim.
 *
 *  - one typed static-inline wrapper per VFIO ioctl, returning the ioctl's result on success
 *    and -errno on failure (Swift never reads errno after the fact);
 *  - volatile MMIO loads and stores of 8/16/32/64 bits at base + offset;
 *  - DMA barriers with DPDK's meanings (io_wmb/io_rmb for coherent memory vs MMIO,
 *    wmb/rmb/mb for write-combining, non-temporal stores and clflush);
 *  - 64-byte portal writes for DSA (MOVDIR64B, ENQCMD);
 *  - a few syscalls Glibc's Swift overlay does not expose (eventfd, memfd_create, getcpu, futex,
 *    epoll, sched_{get,set}affinity) and RLIMIT_MEMLOCK helpers.
 *
 * Everything is prefixed cvfio_. Layout asserts at the end pin the kernel structures the
 * Swift code builds by hand.
 */
#ifndef CVFIO_H
#define CVFIO_H

#include <stdint.h>
#include <stddef.h>
#include <errno.h>
#include <unistd.h>
#include <sys/ioctl.h>
#include <sys/eventfd.h>
#include <sys/epoll.h>
#include <sys/syscall.h>
#include <sys/resource.h>
#include <linux/vfio.h>
#include <linux/pci_regs.h>

#if !defined(__x86_64__) && !defined(__aarch64__)
#error "CVFIO supports x86-64 and arm64 only"
#endif

#define CVFIO_INLINE static inline __attribute__((always_inline))

/* ---------------------------------------------------------------- ioctls: container */

CVFIO_INLINE int cvfio_result(int r) { return r < 0 ? -errno : r; }

/** VFIO_GET_API_VERSION on a container fd. Returns VFIO_API_VERSION (0) or -errno. */
CVFIO_INLINE int cvfio_get_api_version(int container) {
    return cvfio_result(ioctl(container, VFIO_GET_API_VERSION));
}
/** VFIO_CHECK_EXTENSION: returns > 0 when supported, 0 when not, -errno on failure. */
CVFIO_INLINE int cvfio_check_extension(int container, unsigned long extension) {
    return cvfio_result(ioctl(container, VFIO_CHECK_EXTENSION, extension));
}
/** VFIO_SET_IOMMU with an IOMMU type (VFIO_TYPE1v2_IOMMU, VFIO_TYPE1_IOMMU). */
CVFIO_INLINE int cvfio_set_iommu(int container, unsigned long type) {
    return cvfio_result(ioctl(container, VFIO_SET_IOMMU, type));
}
/** VFIO_IOMMU_GET_INFO; info->argsz must be set. The capability chain follows the header. */
CVFIO_INLINE int cvfio_iommu_get_info(int container, struct vfio_iommu_type1_info *info) {
    return cvfio_result(ioctl(container, VFIO_IOMMU_GET_INFO, info));
}
/** VFIO_IOMMU_MAP_DMA. */
CVFIO_INLINE int cvfio_iommu_map_dma(int container, struct vfio_iommu_type1_dma_map *map) {
    return cvfio_result(ioctl(container, VFIO_IOMMU_MAP_DMA, map));
}
/** VFIO_IOMMU_UNMAP_DMA; on success unmap->size holds the bytes unmapped. */
CVFIO_INLINE int cvfio_iommu_unmap_dma(int container, struct vfio_iommu_type1_dma_unmap *unmap) {
    return cvfio_result(ioctl(container, VFIO_IOMMU_UNMAP_DMA, unmap));
}

/* ---------------------------------------------------------------- ioctls: group */

/** VFIO_GROUP_GET_STATUS (flags: VFIO_GROUP_FLAGS_VIABLE, VFIO_GROUP_FLAGS_CONTAINER_SET). */
CVFIO_INLINE int cvfio_group_get_status(int group, struct vfio_group_status *status) {
    return cvfio_result(ioctl(group, VFIO_GROUP_GET_STATUS, status));
}
/** VFIO_GROUP_SET_CONTAINER. */
CVFIO_INLINE int cvfio_group_set_container(int group, int container) {
    return cvfio_result(ioctl(group, VFIO_GROUP_SET_CONTAINER, &container));
}
/** VFIO_GROUP_UNSET_CONTAINER. */
CVFIO_INLINE int cvfio_group_unset_container(int group) {
    return cvfio_result(ioctl(group, VFIO_GROUP_UNSET_CONTAINER));
}
/** VFIO_GROUP_GET_DEVICE_FD with a PCI address such as "0000:00:04.0"; returns the fd. */
CVFIO_INLINE int cvfio_group_get_device_fd(int group, const char *_Nonnull name) {
    return cvfio_result(ioctl(group, VFIO_GROUP_GET_DEVICE_FD, name));
}

/* ---------------------------------------------------------------- ioctls: device */

/** VFIO_DEVICE_GET_INFO. */
CVFIO_INLINE int cvfio_device_get_info(int device, struct vfio_device_info *info) {
    return cvfio_result(ioctl(device, VFIO_DEVICE_GET_INFO, info));
}
/** VFIO_DEVICE_GET_REGION_INFO; with argsz larger than the struct the capability chain follows. */
CVFIO_INLINE int cvfio_device_get_region_info(int device, struct vfio_region_info *info) {
    return cvfio_result(ioctl(device, VFIO_DEVICE_GET_REGION_INFO, info));
}
/** VFIO_DEVICE_GET_IRQ_INFO. */
CVFIO_INLINE int cvfio_device_get_irq_info(int device, struct vfio_irq_info *info) {
    return cvfio_result(ioctl(device, VFIO_DEVICE_GET_IRQ_INFO, info));
}
/** VFIO_DEVICE_SET_IRQS; `set` is followed by its data (eventfds as int32). */
CVFIO_INLINE int cvfio_device_set_irqs(int device, struct vfio_irq_set *set) {
    return cvfio_result(ioctl(device, VFIO_DEVICE_SET_IRQS, set));
}
/** VFIO_DEVICE_RESET. */
CVFIO_INLINE int cvfio_device_reset(int device) {
    return cvfio_result(ioctl(device, VFIO_DEVICE_RESET));
}

/* ---------------------------------------------------------------- volatile MMIO */

CVFIO_INLINE uint8_t cvfio_mmio_read8(const volatile void *_Nonnull base, size_t off) {
    return *(const volatile uint8_t *)((const volatile char *)base + off);
}
CVFIO_INLINE uint16_t cvfio_mmio_read16(const volatile void *_Nonnull base, size_t off) {
    return *(const volatile uint16_t *)((const volatile char *)base + off);
}
CVFIO_INLINE uint32_t cvfio_mmio_read32(const volatile void *_Nonnull base, size_t off) {
    return *(const volatile uint32_t *)((const volatile char *)base + off);
}
CVFIO_INLINE uint64_t cvfio_mmio_read64(const volatile void *_Nonnull base, size_t off) {
    return *(const volatile uint64_t *)((const volatile char *)base + off);
}
CVFIO_INLINE void cvfio_mmio_write8(volatile void *_Nonnull base, size_t off, uint8_t v) {
    *(volatile uint8_t *)((volatile char *)base + off) = v;
}
CVFIO_INLINE void cvfio_mmio_write16(volatile void *_Nonnull base, size_t off, uint16_t v) {
    *(volatile uint16_t *)((volatile char *)base + off) = v;
}
CVFIO_INLINE void cvfio_mmio_write32(volatile void *_Nonnull base, size_t off, uint32_t v) {
    *(volatile uint32_t *)((volatile char *)base + off) = v;
}
CVFIO_INLINE void cvfio_mmio_write64(volatile void *_Nonnull base, size_t off, uint64_t v) {
    *(volatile uint64_t *)((volatile char *)base + off) = v;
}

/* ---------------------------------------------------------------- barriers (DPDK meanings) */

/** Compiler-only barrier. */
CVFIO_INLINE void cvfio_compiler_barrier(void) { __asm__ __volatile__("" ::: "memory"); }

#if defined(__x86_64__)
/** Coherent DMA memory stores before a following MMIO store (doorbell). x86: compiler barrier. */
CVFIO_INLINE void cvfio_io_wmb(void) { __asm__ __volatile__("" ::: "memory"); }
/** An MMIO load (status) before following coherent-memory loads. x86: compiler barrier. */
CVFIO_INLINE void cvfio_io_rmb(void) { __asm__ __volatile__("" ::: "memory"); }
/** Store fence for WC mappings and non-temporal stores. */
CVFIO_INLINE void cvfio_wmb(void) { __asm__ __volatile__("sfence" ::: "memory"); }
/** Load fence. */
CVFIO_INLINE void cvfio_rmb(void) { __asm__ __volatile__("lfence" ::: "memory"); }
/** Full fence. */
CVFIO_INLINE void cvfio_mb(void) { __asm__ __volatile__("mfence" ::: "memory"); }
/** Spin-wait hint. */
CVFIO_INLINE void cvfio_pause(void) { __asm__ __volatile__("pause"); }
/** Time-stamp counter. */
CVFIO_INLINE uint64_t cvfio_rdtsc(void) {
    uint32_t lo, hi;
    __asm__ __volatile__("rdtsc" : "=a"(lo), "=d"(hi));
    return ((uint64_t)hi << 32) | lo;
}
#else /* __aarch64__ */
CVFIO_INLINE void cvfio_io_wmb(void) { __asm__ __volatile__("dmb oshst" ::: "memory"); }
CVFIO_INLINE void cvfio_io_rmb(void) { __asm__ __volatile__("dmb oshld" ::: "memory"); }
CVFIO_INLINE void cvfio_wmb(void) { __asm__ __volatile__("dsb st" ::: "memory"); }
CVFIO_INLINE void cvfio_rmb(void) { __asm__ __volatile__("dsb ld" ::: "memory"); }
CVFIO_INLINE void cvfio_mb(void) { __asm__ __volatile__("dsb sy" ::: "memory"); }
CVFIO_INLINE void cvfio_pause(void) { __asm__ __volatile__("yield"); }
CVFIO_INLINE uint64_t cvfio_rdtsc(void) {
    uint64_t v;
    __asm__ __volatile__("mrs %0, cntvct_el0" : "=r"(v));
    return v;
}
#endif

/* ---------------------------------------------------------------- copies (device models) */

#if defined(__x86_64__)
#include <cpuid.h>
#include <immintrin.h>
/** Whether the CPU and the OS support AVX2 (CPUID leaf 7 EBX[5], OSXSAVE with YMM state on). */
CVFIO_INLINE int cvfio_cpu_avx2(void) {
    unsigned a, b, c, d;
    if (!__get_cpuid(1, &a, &b, &c, &d) || !(c & (1u << 27)) || !(c & (1u << 28))) return 0;
    unsigned lo, hi;
    __asm__ __volatile__("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    if ((lo & 6) != 6) return 0;
    if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return 0;
    return (int)((b >> 5) & 1);
}
/** Copies `n` > 64 bytes with 32-byte AVX2 loads and stores, 128 bytes per loop turn (stores
 *  32-byte aligned; the first and last 128 bytes loaded before the loop); the buffers must not
 *  overlap. For callers compiled for AVX2 (cvfio_copy_avx2 for the others). */
static inline __attribute__((target("avx2"), always_inline, unused))
void cvfio_copy_avx2_inline(void *_Nonnull dst, const void *_Nonnull src, size_t n) {
    char *d = (char *)dst;
    const char *s = (const char *)src;
    __m256i h0 = _mm256_loadu_si256((const __m256i *)s), h1 = _mm256_loadu_si256((const __m256i *)(s + 32));
    __m256i t0 = _mm256_loadu_si256((const __m256i *)(s + n - 32)), t1 = _mm256_loadu_si256((const __m256i *)(s + n - 64));
    if (n <= 128) {
        _mm256_storeu_si256((__m256i *)d, h0);
        _mm256_storeu_si256((__m256i *)(d + 32), h1);
        _mm256_storeu_si256((__m256i *)(d + n - 64), t1);
        _mm256_storeu_si256((__m256i *)(d + n - 32), t0);
        return;
    }
    __m256i t2 = _mm256_loadu_si256((const __m256i *)(s + n - 96)), t3 = _mm256_loadu_si256((const __m256i *)(s + n - 128));
    char *end = d + n;
    _mm256_storeu_si256((__m256i *)d, h0);
    size_t skip = 32 - ((uintptr_t)d & 31);
    d += skip;
    s += skip;
    n -= skip;
    while (n > 128) {
        __m256i a = _mm256_loadu_si256((const __m256i *)s), b = _mm256_loadu_si256((const __m256i *)(s + 32));
        __m256i c = _mm256_loadu_si256((const __m256i *)(s + 64)), e = _mm256_loadu_si256((const __m256i *)(s + 96));
        _mm256_store_si256((__m256i *)d, a);
        _mm256_store_si256((__m256i *)(d + 32), b);
        _mm256_store_si256((__m256i *)(d + 64), c);
        _mm256_store_si256((__m256i *)(d + 96), e);
        s += 128;
        d += 128;
        n -= 128;
    }
    _mm256_storeu_si256((__m256i *)(end - 128), t3);
    _mm256_storeu_si256((__m256i *)(end - 96), t2);
    _mm256_storeu_si256((__m256i *)(end - 64), t1);
    _mm256_storeu_si256((__m256i *)(end - 32), t0);
}
/** cvfio_copy_avx2_inline out of line: only called when cvfio_cpu_avx2() said so. */
static __attribute__((target("avx2"), noinline, unused))
void cvfio_copy_avx2(void *_Nonnull dst, const void *_Nonnull src, size_t n) { cvfio_copy_avx2_inline(dst, src, n); }
/** Copies `n` bytes between buffers that do not overlap: up to 64 bytes inline with
 *  overlapping 1-, 4-, 8- and 16-byte moves, more with cvfio_copy_avx2 when `avx2`, else memcpy. */
CVFIO_INLINE void cvfio_copy(void *_Nonnull dst, const void *_Nonnull src, size_t n, int avx2) {
    char *d = (char *)dst;
    const char *s = (const char *)src;
    if (n > 64) {
        if (avx2) cvfio_copy_avx2(dst, src, n); else __builtin_memcpy(dst, src, n);
    } else if (n > 32) {
        __m128i a = _mm_loadu_si128((const __m128i *)s), b = _mm_loadu_si128((const __m128i *)(s + 16));
        __m128i c = _mm_loadu_si128((const __m128i *)(s + n - 32)), e = _mm_loadu_si128((const __m128i *)(s + n - 16));
        _mm_storeu_si128((__m128i *)d, a);
        _mm_storeu_si128((__m128i *)(d + 16), b);
        _mm_storeu_si128((__m128i *)(d + n - 32), c);
        _mm_storeu_si128((__m128i *)(d + n - 16), e);
    } else if (n >= 16) {
        __m128i a = _mm_loadu_si128((const __m128i *)s), b = _mm_loadu_si128((const __m128i *)(s + n - 16));
        _mm_storeu_si128((__m128i *)d, a);
        _mm_storeu_si128((__m128i *)(d + n - 16), b);
    } else if (n >= 8) {
        uint64_t a, b;
        __builtin_memcpy(&a, s, 8);
        __builtin_memcpy(&b, s + n - 8, 8);
        __builtin_memcpy(d, &a, 8);
        __builtin_memcpy(d + n - 8, &b, 8);
    } else if (n >= 4) {
        uint32_t a, b;
        __builtin_memcpy(&a, s, 4);
        __builtin_memcpy(&b, s + n - 4, 4);
        __builtin_memcpy(d, &a, 4);
        __builtin_memcpy(d + n - 4, &b, 4);
    } else {
        for (size_t i = 0; i < n; i++) d[i] = s[i];
    }
}
#else
CVFIO_INLINE int cvfio_cpu_avx2(void) { return 0; }
CVFIO_INLINE void cvfio_copy(void *_Nonnull dst, const void *_Nonnull src, size_t n, int avx2) {
    (void)avx2;
    __builtin_memcpy(dst, src, n);
}
#endif

/* ---------------------------------------------------------------- device models: CBDMA fast path */

/* The loop of the CBDMA model's engine for its most common descriptors (DeviceModels'
 * IOATDeviceCore.runCached says what it runs and why that is what the general path, in Swift,
 * does). It is C so that the compiler keeps the loop's state in registers and, for AVX2, the
 * copy inline: it calls nothing. */

/* The model's control-word bits the loop tests (Swift's Ctl; the model checks they agree). */
static const uint64_t CVFIO_IOAT_CTL_BUSY __attribute__((unused)) = 1ull << 35;
/* Stop after a descriptor when any of these is set: a state other than ACTIVE (0), the writer
 * bit, a posted command, an armed fault. */
static const uint64_t CVFIO_IOAT_CTL_WATCH __attribute__((unused)) = (7ull << 32) | (1ull << 35) | (0xFFull << 40) | (1ull << 48);
static const uint64_t CVFIO_IOAT_CTL_SOFT_ERROR __attribute__((unused)) = 1ull << 38;
/* Descriptor control bits: off the fast path (any opcode but COPY, NULL, page breaks), and
 * those that ask for a completion write or an interrupt. */
static const uint32_t CVFIO_IOAT_DESC_OFF_PATH __attribute__((unused)) = 0xFF0000E0u;
static const uint32_t CVFIO_IOAT_DESC_COMPLETION_WRITE __attribute__((unused)) = 0x8u;
static const uint32_t CVFIO_IOAT_DESC_INT_ENABLE __attribute__((unused)) = 0x1u;

/** A cached IOMMU translation: accesses of the window's size (a descriptor, a copy's source
 *  or destination: 64 bytes; the completion word: 8) may start at IOVA base … base + reach
 *  (none when base is ~0); host address of base at `host`. (A copy of more than 64 bytes is
 *  checked against the window's whole span, reach + 63.) */
typedef struct {
    uint64_t base;
    uint64_t reach;
    char *_Nonnull host;
} cvfio_window;

/** One run of the fast path: what it reads, and where it leaves its state. `ctl`, `cdar`,
 *  `completed`, `previous_completed`, `last_descriptor`, `chancmp` and `generation_word` are
 *  the Swift model's atomics (one 64-bit word each). When the source and destination windows
 *  overlap in host memory (`overlap`: one mapping holds both buffers), each copy is checked
 *  and one whose buffers overlap is left to the general path (memmove). */
typedef struct {
    cvfio_window descriptor;
    cvfio_window source;
    cvfio_window destination;
    cvfio_window completion;
    const uint64_t *_Nonnull generation_word;
    uint64_t generation;
    const uint64_t *_Nonnull ctl;
    uint64_t *_Nonnull cdar;
    uint64_t *_Nonnull completed;
    uint64_t *_Nonnull previous_completed;
    uint64_t *_Nonnull last_descriptor;
    const uint64_t *_Nonnull chancmp;
    uint64_t largest;          /* the largest copy the run takes (larger: the general path) */
    uint64_t overlap;          /* nonzero: the source and destination windows overlap */
    uint64_t state_active, state_done, status_soft_error;  /* completion-status encodings */
    /* In and out: the channel's descriptor count, the next descriptor, the control word. */
    uint16_t count;
    uint16_t end;              /* stop when count reaches it (the pass's budget) */
    uint64_t next;
    uint64_t ctl_value;
    /* Out. */
    uint64_t last;             /* the last descriptor executed (CDAR) */
    uint32_t control;          /* its control word, when stopped_after */
    int stopped_after;         /* stopped after it: it needs more than completing */
} cvfio_ioat_run;

#if defined(__x86_64__)
/* One run; COPY_LARGE copies n > 64 bytes from sp to tp; OVERLAP (a constant) says whether the
 * source and destination windows overlap, so that each copy is checked. The descriptor window's base is
 * 64-byte aligned (IOVA mappings are page aligned), so one compare of the offset rotated right
 * by 6 checks both the alignment and the window. */
#define CVFIO_IOAT_RUN_BODY(COPY_LARGE, OVERLAP)                                                \
    uint16_t cnt = r->count;                                                                 \
    const uint16_t end = r->end;                                                             \
    uint64_t nx = r->next, cv = r->ctl_value;                                                \
    const uint64_t generation = r->generation;                                               \
    const uint64_t *const gword = r->generation_word, *const ctl = r->ctl;                   \
    uint64_t *const cdar = r->cdar;                                                          \
    const uint64_t dbase = r->descriptor.base, dreach = r->descriptor.reach >> 6;            \
    char *const dbias = r->descriptor.host - dbase;                                          \
    const uint64_t sbase = r->source.base, sreach = r->source.reach;                         \
    const uint64_t tbase = r->destination.base, treach = r->destination.reach;               \
    char *const sbias = r->source.host - sbase, *const tbias = r->destination.host - tbase;  \
    int stopped = 0;                                                                         \
    uint64_t published = ~0ull; /* the descriptor a completion write published, if any */      \
    while (cnt != end && cnt != (uint16_t)cv) {                                              \
        const uint64_t address = nx, off = address - dbase;                                  \
        if (((off >> 6) | (off << 58)) > dreach                                              \
            || __atomic_load_n(gword, __ATOMIC_ACQUIRE) != generation) break;                \
        const char *const d = dbias + address;                                               \
        uint32_t c, size;                                                                    \
        uint64_t src, dst;                                                                   \
        __builtin_memcpy(&c, d + 4, 4);                                                      \
        __builtin_memcpy(&size, d, 4);                                                       \
        const uint64_t size1 = (uint64_t)size - 1;                                           \
        if (c & CVFIO_IOAT_DESC_OFF_PATH) break;                                             \
        __builtin_memcpy(&src, d + 8, 8);                                                    \
        __builtin_memcpy(&dst, d + 16, 8);                                                   \
        char *const sp = sbias + src, *const tp = tbias + dst;                               \
        const size_t n = (size_t)size;                                                       \
        uint64_t following;                                                                  \
        if (size1 >= 64) {                                                                   \
            /* Sizes 0 and > largest: the general path; the copy's last bytes in the windows. */ \
            uint64_t send, tend;                                                             \
            if (size1 >= r->largest                                                          \
                || __builtin_add_overflow(src - sbase, size1, &send) || send > sreach + 63    \
                || __builtin_add_overflow(dst - tbase, size1, &tend) || tend > treach + 63) break; \
            if (OVERLAP && !(sp + n <= tp || tp + n <= sp)) break;                           \
            __atomic_store_n(cdar, address, __ATOMIC_RELAXED);                               \
            __builtin_memcpy(&following, d + 24, 8);                                         \
            COPY_LARGE;                                                                      \
        } else {                                                                             \
            if (src - sbase > sreach || dst - tbase > treach) break;                         \
            if (OVERLAP && !(sp + n <= tp || tp + n <= sp)) break;                           \
            __atomic_store_n(cdar, address, __ATOMIC_RELAXED);                               \
            __builtin_memcpy(&following, d + 24, 8);                                         \
            if (size1 >= 32) {                                                               \
            __m128i a = _mm_loadu_si128((const __m128i *)sp), b = _mm_loadu_si128((const __m128i *)(sp + 16)); \
            __m128i e = _mm_loadu_si128((const __m128i *)(sp + n - 32)), f = _mm_loadu_si128((const __m128i *)(sp + n - 16)); \
            _mm_storeu_si128((__m128i *)tp, a); _mm_storeu_si128((__m128i *)(tp + 16), b);   \
            _mm_storeu_si128((__m128i *)(tp + n - 32), e); _mm_storeu_si128((__m128i *)(tp + n - 16), f); \
            } else cvfio_copy(tp, sp, n, 0);                                                 \
        }                                                                                    \
        nx = following;                                                                      \
        cnt++;                                                                               \
        cv = __atomic_load_n(ctl, __ATOMIC_ACQUIRE);                                         \
        if (__builtin_expect((cv & CVFIO_IOAT_CTL_WATCH) != 0, 0)) {                         \
            while (cv & CVFIO_IOAT_CTL_BUSY) { cvfio_pause(); cv = __atomic_load_n(ctl, __ATOMIC_ACQUIRE); } \
            if (cv & CVFIO_IOAT_CTL_WATCH) { r->control = c; stopped = 1; break; }            \
        }                                                                                    \
        if (__builtin_expect((c & (CVFIO_IOAT_DESC_INT_ENABLE | CVFIO_IOAT_DESC_COMPLETION_WRITE)) != 0, 0)) { \
            /* CHANSTS first, then the completion status; anything unusual: the caller. */   \
            const uint64_t at = __atomic_load_n(r->chancmp, __ATOMIC_RELAXED);               \
            const uint64_t coff = at - r->completion.base;                                   \
            if ((c & CVFIO_IOAT_DESC_INT_ENABLE) || (at & 7) || coff > r->completion.reach   \
                || __atomic_load_n(gword, __ATOMIC_ACQUIRE) != generation) {                 \
                r->control = c; stopped = 1; break;                                           \
            }                                                                                \
            const uint64_t done = address & ~0x3Full;                                        \
            published = address;                                                             \
            __atomic_store_n(r->last_descriptor, address, __ATOMIC_RELAXED);                 \
            __atomic_store_n(r->previous_completed, __atomic_load_n(r->completed, __ATOMIC_RELAXED), __ATOMIC_RELAXED); \
            __atomic_store_n(r->completed, done, __ATOMIC_RELEASE);                          \
            const uint64_t status = done | ((cv & CVFIO_IOAT_CTL_SOFT_ERROR) ? r->status_soft_error : 0) \
                | (cnt != (uint16_t)cv ? r->state_active : r->state_done);                   \
            __atomic_store_n((uint64_t *)(r->completion.host + coff), status, __ATOMIC_RELEASE); \
        }                                                                                    \
    }                                                                                        \
    const int executed = (uint16_t)(cnt - r->count);                                         \
    const uint64_t last = __atomic_load_n(cdar, __ATOMIC_RELAXED);                           \
    /* (A completion write may have published the last descriptor already: then CHANSTS's    \
     * previous address, for torn reads, stays the one before it.) */                        \
    if (executed && published != last) {                                                     \
        __atomic_store_n(r->last_descriptor, last, __ATOMIC_RELAXED);                        \
        __atomic_store_n(r->previous_completed, __atomic_load_n(r->completed, __ATOMIC_RELAXED), __ATOMIC_RELAXED); \
        __atomic_store_n(r->completed, last & ~0x3Full, __ATOMIC_RELEASE);                   \
    }                                                                                        \
    r->count = cnt;                                                                          \
    r->next = nx;                                                                            \
    r->ctl_value = cv;                                                                       \
    r->last = last;                                                                          \
    r->stopped_after = stopped;                                                              \
    return executed;

/** The runs with AVX2 copies inline (only when cvfio_cpu_avx2()) and with baseline copies
 *  (memcpy above 64 bytes), for windows apart and overlapping. Return descriptors executed. */
static __attribute__((target("avx2"), noinline, unused))
int cvfio_ioat_run_avx2(cvfio_ioat_run *_Nonnull r) {
    CVFIO_IOAT_RUN_BODY(cvfio_copy_avx2_inline(tp, sp, n), 0)
}
static __attribute__((target("avx2"), noinline, unused))
int cvfio_ioat_run_avx2_overlap(cvfio_ioat_run *_Nonnull r) {
    CVFIO_IOAT_RUN_BODY(cvfio_copy_avx2_inline(tp, sp, n), 1)
}
static __attribute__((noinline, unused))
int cvfio_ioat_run_baseline(cvfio_ioat_run *_Nonnull r) {
    CVFIO_IOAT_RUN_BODY(__builtin_memcpy(tp, sp, n), 0)
}
static __attribute__((noinline, unused))
int cvfio_ioat_run_baseline_overlap(cvfio_ioat_run *_Nonnull r) {
    CVFIO_IOAT_RUN_BODY(__builtin_memcpy(tp, sp, n), 1)
}
#undef CVFIO_IOAT_RUN_BODY
/** Runs the fast path (see cvfio_ioat_run). Returns how many descriptors it executed. */
CVFIO_INLINE int cvfio_ioat_run_copies(cvfio_ioat_run *_Nonnull r, int avx2) {
    if (r->overlap) return avx2 ? cvfio_ioat_run_avx2_overlap(r) : cvfio_ioat_run_baseline_overlap(r);
    return avx2 ? cvfio_ioat_run_avx2(r) : cvfio_ioat_run_baseline(r);
}
#else
CVFIO_INLINE int cvfio_ioat_run_copies(cvfio_ioat_run *_Nonnull r, int avx2) { (void)r; (void)avx2; return 0; }
#endif

/* ---------------------------------------------------------------- device models: DSA fast path */

/* The DSA model's batch members of the common kinds: memory move, fill and no-op that succeed
 * and write no completion record (DeviceModels' DSADeviceCore.runFast says what it runs and
 * why that is what the general path, in Swift, does). Like the CBDMA loop, C so that the loop
 * keeps its state in registers. */

/* Descriptor fields the loop reads (dsa.md §5.1) and the completion-record-valid flag. */
static const uint32_t CVFIO_DSA_CRAV __attribute__((unused)) = 1u << 2;

/** One run over the members of a batch. The windows are cached IOMMU translations (see
 *  cvfio_window; here `reach` is the window's last byte offset for the source and
 *  destination, the last 64-byte descriptor's offset for the list). */
typedef struct {
    cvfio_window list;
    cvfio_window source;       /* a mapping the device may read */
    cvfio_window destination;  /* a mapping the device may write */
    const uint64_t *_Nonnull generation_word;
    uint64_t generation;
    uint64_t largest;          /* sizes 1 … largest run here (the WQ's maximum transfer, capped) */
    /* Flags (bits 23:0) a member may carry here, by opcode 0 … 4 (0: the opcode does not run
     * here): what the general path accepts, without completion record or interrupt requests. */
    uint32_t allowed[5];
    int avx2;
    /* In and out: the next member's IOVA, the members left. */
    uint64_t address;
    uint32_t remaining;
} cvfio_dsa_run;

#if defined(__x86_64__)
/** Runs members from r->address while they are a no-op, a memory move or a fill whose flags
 *  `allowed` permits, with zero reserved bytes (38–63), an aligned completion record address
 *  when one is valid, a size of 1 … largest, and buffers inside the windows (a move's source
 *  and destination apart, as IOVAs and in host memory); the IOMMU generation is checked
 *  before each. Stops before the first member of another kind (nothing done for it). Returns
 *  the members executed. */
static __attribute__((noinline, unused))
uint32_t cvfio_dsa_run_members_loop(cvfio_dsa_run *_Nonnull r) {
    const uint64_t generation = r->generation, lbase = r->list.base, lreach = r->list.reach;
    const uint64_t sbase = r->source.base, sreach = r->source.reach;
    const uint64_t tbase = r->destination.base, treach = r->destination.reach;
    char *const lbias = r->list.host - lbase;
    char *const sbias = r->source.host - sbase, *const tbias = r->destination.host - tbase;
    const uint64_t largest = r->largest;
    uint64_t address = r->address;
    uint32_t left = r->remaining, done = 0;
    while (left != 0) {
        if (address - lbase > lreach || __atomic_load_n(r->generation_word, __ATOMIC_ACQUIRE) != generation) break;
        const char *const d = lbias + address;
        uint32_t word, size;
        uint16_t reserved;
        uint64_t record, src, dst, o0, o1, o2;
        __builtin_memcpy(&word, d + 4, 4);
        const uint32_t op = word >> 24, flags = word & 0xFFFFFFu;
        if (op > 4 || r->allowed[op] == 0 || (flags & ~r->allowed[op]) != 0) break;
        __builtin_memcpy(&reserved, d + 38, 2);
        __builtin_memcpy(&o0, d + 40, 8);
        __builtin_memcpy(&o1, d + 48, 8);
        __builtin_memcpy(&o2, d + 56, 8);
        __builtin_memcpy(&record, d + 8, 8);
        if ((reserved | o0 | o1 | o2) != 0 || ((flags & CVFIO_DSA_CRAV) && (record & 31))) break;
        if (op != 0) {
            __builtin_memcpy(&src, d + 16, 8);
            __builtin_memcpy(&dst, d + 24, 8);
            __builtin_memcpy(&size, d + 32, 4);
            const uint64_t n = size, n1 = n - 1;
            /* Size 0 or above largest; the destination's first and last bytes in its window. */
            const uint64_t toff = dst - tbase;
            if (n1 >= largest || toff > treach || n1 > treach - toff) break;
            char *const tp = tbias + dst;
            if (op == 3) {
                const uint64_t soff = src - sbase;
                if (soff > sreach || n1 > sreach - soff) break;
                char *const sp = sbias + src;
                /* Overlapping buffers (as IOVAs, or in host memory: |a - b| < n): the general path. */
                if (src - dst + n1 < 2 * n - 1 || (uint64_t)((uintptr_t)sp - (uintptr_t)tp) + n1 < 2 * n - 1) break;
                cvfio_copy(tp, sp, (size_t)n, r->avx2);
            } else { /* fill: the 8-byte pattern repeated, the last bytes its first bytes */
                size_t i = 0;
                for (; i + 8 <= n; i += 8) __builtin_memcpy(tp + i, &src, 8);
                for (; i < n; i++) tp[i] = (char)(src >> ((i & 7) * 8));
            }
        }
        address += 64;
        left--;
        done++;
    }
    r->address = address;
    r->remaining = left;
    return done;
}
/* (Out of line: inlined into its Swift caller, the loop's state no longer fit in registers.) */
CVFIO_INLINE uint32_t cvfio_dsa_run_members(cvfio_dsa_run *_Nonnull r) { return cvfio_dsa_run_members_loop(r); }
#else
CVFIO_INLINE uint32_t cvfio_dsa_run_members(cvfio_dsa_run *_Nonnull r) { (void)r; return 0; }
#endif

/* ---------------------------------------------------------------- DSA portal writes */

#if defined(__x86_64__)
/** MOVDIR64B: one 64-byte direct store of `src` to the portal `dst` (both 64-byte aligned).
 *  The caller issues cvfio_wmb() first when the descriptor points at data written just before. */
CVFIO_INLINE void cvfio_movdir64b(volatile void *_Nonnull dst, const void *_Nonnull src) {
    __asm__ __volatile__(".byte 0x66, 0x0f, 0x38, 0xf8, 0x02" : : "a"(dst), "d"(src) : "memory");
}
/** ENQCMD: returns 0 when the shared WQ accepted the descriptor, 1 when it asked for a retry. */
CVFIO_INLINE int cvfio_enqcmd(volatile void *_Nonnull dst, const void *_Nonnull src) {
    uint8_t retry;
    __asm__ __volatile__(".byte 0xf2, 0x0f, 0x38, 0xf8, 0x02\n\tsetz %0"
                         : "=r"(retry) : "a"(dst), "d"(src) : "cc", "memory");
    return retry;
}
#endif

/* ---------------------------------------------------------------- syscalls */

/** eventfd(2); returns the fd or -errno. */
CVFIO_INLINE int cvfio_eventfd(unsigned int initval, int flags) {
    return cvfio_result(eventfd(initval, flags));
}
/** memfd_create(2) through syscall(2) (glibc's wrapper needs _GNU_SOURCE). */
CVFIO_INLINE int cvfio_memfd_create(const char *_Nonnull name, unsigned int flags) {
    return cvfio_result((int)syscall(SYS_memfd_create, name, flags));
}
/** The calling thread's id. */
CVFIO_INLINE int cvfio_gettid(void) { return (int)syscall(SYS_gettid); }
/** sched_setaffinity(2) of the calling thread from a bit mask of `words` 64-bit words. */
CVFIO_INLINE int cvfio_set_thread_affinity(const uint64_t *_Nonnull mask, size_t words) {
    return cvfio_result((int)syscall(SYS_sched_setaffinity, 0, words * 8, mask));
}
/** sched_setaffinity(2) of thread `tid` (0: the caller) from a bit mask of `words` 64-bit words. */
CVFIO_INLINE int cvfio_set_affinity_of(int tid, const uint64_t *_Nonnull mask, size_t words) {
    return cvfio_result((int)syscall(SYS_sched_setaffinity, tid, words * 8, mask));
}
/** sched_getaffinity(2) of the calling thread; returns bytes written or -errno. */
CVFIO_INLINE int cvfio_get_thread_affinity(uint64_t *_Nonnull mask, size_t words) {
    return cvfio_result((int)syscall(SYS_sched_getaffinity, 0, words * 8, mask));
}
/** getcpu(2): the CPU the caller runs on, or -errno. */
CVFIO_INLINE int cvfio_current_cpu(void) {
    unsigned cpu = 0, node = 0;
    int r = (int)syscall(SYS_getcpu, &cpu, &node, NULL);
    return r < 0 ? -errno : (int)cpu;
}
/** futex wait on a 32-bit word while it equals `expected` (private futex); 0, or -errno. */
CVFIO_INLINE int cvfio_futex_wait(uint32_t *_Nonnull addr, uint32_t expected, long timeout_ns) {
    struct { long tv_sec; long tv_nsec; } ts = { timeout_ns / 1000000000L, timeout_ns % 1000000000L };
    return cvfio_result((int)syscall(SYS_futex, addr, 128 /* FUTEX_WAIT_PRIVATE */, expected,
                                     timeout_ns >= 0 ? (void *)&ts : NULL, NULL, 0));
}
/** futex wake of up to `count` waiters. */
CVFIO_INLINE int cvfio_futex_wake(uint32_t *_Nonnull addr, int count) {
    return cvfio_result((int)syscall(SYS_futex, addr, 129 /* FUTEX_WAKE_PRIVATE */, count, NULL, NULL, 0));
}

/** epoll_create1(EPOLL_CLOEXEC): a new epoll instance, or -errno. */
CVFIO_INLINE int cvfio_epoll_create(void) { return cvfio_result(epoll_create1(EPOLL_CLOEXEC)); }
/** Adds `fd` to epoll instance `ep` for input (level-triggered), reported with `token`; 0 or -errno. */
CVFIO_INLINE int cvfio_epoll_add(int ep, int fd, uint64_t token) {
    struct epoll_event e = { .events = EPOLLIN, .data = { .u64 = token } };
    return cvfio_result(epoll_ctl(ep, EPOLL_CTL_ADD, fd, &e));
}
/** Removes `fd` from epoll instance `ep`; 0 or -errno. */
CVFIO_INLINE int cvfio_epoll_remove(int ep, int fd) {
    struct epoll_event e = { 0 };
    return cvfio_result(epoll_ctl(ep, EPOLL_CTL_DEL, fd, &e));
}
/** epoll_wait(2) for up to `max` (at most 16) events; writes their tokens to `tokens` and returns
 *  how many, or -errno (-EINTR when a signal came first). (epoll_event is a packed struct on
 *  x86-64, which Swift does not import; the tokens are all the callers need.) */
CVFIO_INLINE int cvfio_epoll_wait(int ep, uint64_t *_Nonnull tokens, int max, int timeout_ms) {
    struct epoll_event e[16];
    if (max > 16) max = 16;
    int n = epoll_wait(ep, e, max, timeout_ms);
    if (n < 0) return -errno;
    for (int i = 0; i < n; i++) tokens[i] = e[i].data.u64;
    return n;
}

/** The soft RLIMIT_MEMLOCK in bytes; UINT64_MAX when unlimited. */
CVFIO_INLINE uint64_t cvfio_memlock_limit(void) {
    struct rlimit r;
    if (getrlimit(RLIMIT_MEMLOCK, &r) != 0) return 0;
    return r.rlim_cur == RLIM_INFINITY ? UINT64_MAX : (uint64_t)r.rlim_cur;
}
/** Sets the soft RLIMIT_MEMLOCK (tests use it to provoke memlock failures); 0 or -errno. */
CVFIO_INLINE int cvfio_set_memlock_limit(uint64_t bytes) {
    struct rlimit r;
    if (getrlimit(RLIMIT_MEMLOCK, &r) != 0) return -errno;
    r.rlim_cur = bytes == UINT64_MAX ? RLIM_INFINITY : (rlim_t)bytes;
    return cvfio_result(setrlimit(RLIMIT_MEMLOCK, &r));
}

/* ---------------------------------------------------------------- layout asserts */

_Static_assert(sizeof(struct vfio_region_info) == 32, "vfio_region_info layout");
_Static_assert(sizeof(struct vfio_iommu_type1_dma_map) == 32, "vfio_iommu_type1_dma_map layout");
_Static_assert(sizeof(struct vfio_iommu_type1_dma_unmap) == 24, "vfio_iommu_type1_dma_unmap layout");
_Static_assert(sizeof(struct vfio_irq_set) == 20, "vfio_irq_set layout");
_Static_assert(sizeof(struct vfio_irq_info) == 16, "vfio_irq_info layout");
_Static_assert(sizeof(struct vfio_group_status) == 8, "vfio_group_status layout");
_Static_assert(sizeof(struct vfio_device_info) >= 16, "vfio_device_info layout");
_Static_assert(sizeof(struct vfio_info_cap_header) == 8, "vfio_info_cap_header layout");
_Static_assert(sizeof(struct vfio_iommu_type1_info) == 24, "vfio_iommu_type1_info layout");
_Static_assert(offsetof(struct vfio_iommu_type1_info, cap_offset) == 16, "vfio_iommu_type1_info.cap_offset");
_Static_assert(offsetof(struct vfio_region_info, cap_offset) == 12, "vfio_region_info.cap_offset");
_Static_assert(sizeof(struct vfio_iova_range) == 16, "vfio_iova_range layout");
_Static_assert(offsetof(struct vfio_iommu_type1_info_cap_iova_range, iova_ranges) == 16, "iova range cap layout");
_Static_assert(sizeof(struct vfio_region_sparse_mmap_area) == 16, "sparse mmap area layout");
_Static_assert(offsetof(struct vfio_region_info_cap_sparse_mmap, areas) == 16, "sparse mmap cap layout");
_Static_assert(offsetof(struct vfio_iommu_type1_info_dma_avail, avail) == 8, "dma avail cap layout");

#endif /* CVFIO_H */
