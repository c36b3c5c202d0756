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
/** Whether the CPU has fast short `rep movsb` (CPUID.(EAX=7,ECX=0):EDX[4], FSRM). */
CVFIO_INLINE int cvfio_cpu_fast_short_movsb(void) {
    unsigned a, b, c, d;
    if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return 0;
    return (int)((d >> 4) & 1);
}
/** Copies `n` bytes forward with `rep movsb`; the buffers must not overlap. */
CVFIO_INLINE void cvfio_copy_movsb(void *_Nonnull dst, const void *_Nonnull src, size_t n) {
    __asm__ __volatile__("rep movsb" : "+D"(dst), "+S"(src), "+c"(n) : : "memory");
}
#else
CVFIO_INLINE int cvfio_cpu_fast_short_movsb(void) { return 0; }
CVFIO_INLINE void cvfio_copy_movsb(void *_Nonnull dst, const void *_Nonnull src, size_t n) {
    __builtin_memcpy(dst, src, n);
}
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
