// Small helpers for the benchmarks: the time-stamp counter, per-thread CPU clocks by thread ID,
// and pinning another thread of this process to a CPU.
#pragma once
#include <stdint.h>

/// The time-stamp counter (rdtsc; cntvct_el0 on arm64).
static inline __attribute__((always_inline)) uint64_t bench_rdtsc(void) {
#if defined(__x86_64__)
    uint32_t lo, hi;
    __asm__ __volatile__("rdtsc" : "=a"(lo), "=d"(hi));
    return ((uint64_t)hi << 32) | lo;
#elif defined(__aarch64__)
    uint64_t v;
    __asm__ __volatile__("mrs %0, cntvct_el0" : "=r"(v));
    return v;
#else
    return 0;
#endif
}

/// A compiler barrier: keeps loads and stores from moving across it.
static inline __attribute__((always_inline)) void bench_compiler_barrier(void) { __asm__ __volatile__("" ::: "memory"); }

/// The calling thread's kernel thread ID.
int bench_gettid(void);
/// CPU time (ns) a thread of this process has used, by kernel thread ID; -1 on error.
int64_t bench_thread_cpu_ns(int tid);
/// Pins thread `tid` (0: the caller) to `cpu`; 0 or -errno.
int bench_pin_thread(int tid, int cpu);
/// Names the calling thread (at most 15 characters).
void bench_set_thread_name(const char *name);
/// Busy CPU time of the whole machine (/proc/stat: all but idle and iowait) and of this process
/// (/proc/self/stat utime + stime), both in clock ticks; 0 or -1.
int bench_cpu_ticks(uint64_t *machine_busy, uint64_t *process);
/// Clock ticks per second (sysconf _SC_CLK_TCK).
long bench_clock_ticks_per_second(void);

/// Whether this build can talk to valgrind's callgrind (it was compiled with
/// <valgrind/callgrind.h>) and the process runs under valgrind now.
int bench_under_callgrind(void);
/// Callgrind: zeroes every thread's counters (a no-op outside valgrind; the monitor command
/// `zero`, which, unlike CALLGRIND_ZERO_STATS, acts on every thread).
void bench_callgrind_zero(void);
/// Callgrind: writes every thread's counters since the last zero or dump to one file per thread
/// (with `--separate-threads=yes`), `reason` in each file's `desc: Trigger:` line, and zeroes
/// them (a no-op outside valgrind; the monitor command `dump`, which acts on every thread).
void bench_callgrind_dump(const char *reason);
