#define _GNU_SOURCE
#include "CBenchSupport.h"
#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

int bench_gettid(void) { return (int)syscall(SYS_gettid); }

int64_t bench_thread_cpu_ns(int tid) {
    // Linux encodes a per-thread CPU clock as ~tid << 3 | CPUCLOCK_PERTHREAD (4) | CPUCLOCK_SCHED (2).
    clockid_t clock = (clockid_t)((~(unsigned)tid << 3) | 6);
    struct timespec ts;
    if (clock_gettime(clock, &ts) != 0) return -1;
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

int bench_pin_thread(int tid, int cpu) {
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(cpu, &set);
    return sched_setaffinity(tid, sizeof set, &set) == 0 ? 0 : -errno;
}

void bench_set_thread_name(const char *name) { pthread_setname_np(pthread_self(), name); }

#include <stdio.h>

int bench_cpu_ticks(uint64_t *machine_busy, uint64_t *process) {
    unsigned long long v[10] = {0};
    FILE *f = fopen("/proc/stat", "r");
    if (!f) return -1;
    int n = fscanf(f, "cpu %llu %llu %llu %llu %llu %llu %llu %llu %llu %llu",
                   &v[0], &v[1], &v[2], &v[3], &v[4], &v[5], &v[6], &v[7], &v[8], &v[9]);
    fclose(f);
    if (n < 8) return -1;
    // user nice system idle iowait irq softirq steal (guest and guest_nice are inside user/nice)
    *machine_busy = v[0] + v[1] + v[2] + v[5] + v[6] + v[7];
    f = fopen("/proc/self/stat", "r");
    if (!f) return -1;
    char buf[1024];
    size_t len = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[len] = 0;
    // Fields after the command name (which may hold spaces) start after the last ')'.
    char *p = buf + len;
    while (p > buf && *p != ')') p--;
    unsigned long long utime = 0, stime = 0;
    // state(3) ppid pgrp session tty tpgid flags minflt cminflt majflt cmajflt utime(14) stime(15)
    if (sscanf(p + 1, " %*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu", &utime, &stime) != 2) return -1;
    *process = utime + stime;
    return 0;
}

long bench_clock_ticks_per_second(void) { return sysconf(_SC_CLK_TCK); }

#if defined(__has_include)
#if __has_include(<valgrind/callgrind.h>)
#include <valgrind/callgrind.h>
#define BENCH_HAVE_CALLGRIND 1
#endif
#endif

#ifdef BENCH_HAVE_CALLGRIND
// Callgrind's own client requests (CALLGRIND_ZERO_STATS, CALLGRIND_DUMP_STATS_AT) act on the
// calling thread only; its monitor commands, sent here from the program itself, act on every
// thread (callgrind's "zero" and "dump <hint>").
int bench_under_callgrind(void) { return RUNNING_ON_VALGRIND ? 1 : 0; }
void bench_callgrind_zero(void) { VALGRIND_MONITOR_COMMAND("zero"); }
void bench_callgrind_dump(const char *reason) {
    char command[256];
    snprintf(command, sizeof command, "dump %s", reason);
    VALGRIND_MONITOR_COMMAND(command);
}
#else
int bench_under_callgrind(void) { return 0; }
void bench_callgrind_zero(void) {}
void bench_callgrind_dump(const char *reason) { (void)reason; }
#endif
