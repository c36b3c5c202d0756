// LD_PRELOAD shim for ThreadSanitizer runs (Scripts/sanitize).
//
// Swift's Synchronization.Mutex inlines its fast paths into the caller (instrumented by TSan),
// but its slow paths, _MutexHandle._lockSlow and _unlockSlow, live in libswiftSynchronization,
// which is not: when a thread takes a contended lock there (a spin that wins, or the kernel's
// priority-inheritance futex handing the lock over), TSan misses the acquire, and every access
// under that Mutex looks like a race. This shim interposes both slow paths with trampolines that
// tell TSan: an acquire on the lock word after _lockSlow returns, a release before _unlockSlow.
// The lock word's address is `self`, which Swift passes in r13 (x86-64 only). In a process
// without TSan the trampolines only forward.
#define _GNU_SOURCE
#include <dlfcn.h>

#define LOCK_SLOW "$s15Synchronization12_MutexHandleV9_lockSlowyys6UInt32VF"
#define UNLOCK_SLOW "$s15Synchronization12_MutexHandleV11_unlockSlowyyF"

__attribute__((visibility("hidden"))) void *netdma_real_lock_slow, *netdma_real_unlock_slow, *netdma_tsan_acquire, *netdma_tsan_release;

__attribute__((constructor)) static void resolve(void) {
    netdma_real_lock_slow = dlsym(RTLD_NEXT, LOCK_SLOW);
    netdma_real_unlock_slow = dlsym(RTLD_NEXT, UNLOCK_SLOW);
    netdma_tsan_acquire = dlsym(RTLD_DEFAULT, "__tsan_acquire");
    netdma_tsan_release = dlsym(RTLD_DEFAULT, "__tsan_release");
}

#if defined(__x86_64__)
__asm__(
    ".text\n"
    ".globl \"" LOCK_SLOW "\"\n"
    ".type \"" LOCK_SLOW "\", @function\n"
    "\"" LOCK_SLOW "\":\n"
    "    pushq %r13\n"                              // self: the lock word
    "    subq $16, %rsp\n"                          // 16-byte aligned for the calls
    "    callq *netdma_real_lock_slow(%rip)\n"      // rdi (the thread id) and r13 as given
    "    movq netdma_tsan_acquire(%rip), %rax\n"
    "    testq %rax, %rax\n"
    "    jz 1f\n"
    "    movq 16(%rsp), %rdi\n"
    "    callq *%rax\n"
    "1:  addq $16, %rsp\n"
    "    popq %r13\n"
    "    retq\n"
    ".globl \"" UNLOCK_SLOW "\"\n"
    ".type \"" UNLOCK_SLOW "\", @function\n"
    "\"" UNLOCK_SLOW "\":\n"
    "    pushq %r13\n"
    "    subq $16, %rsp\n"
    "    movq netdma_tsan_release(%rip), %rax\n"
    "    testq %rax, %rax\n"
    "    jz 2f\n"
    "    movq %r13, %rdi\n"
    "    callq *%rax\n"
    "    movq 16(%rsp), %r13\n"
    "2:  callq *netdma_real_unlock_slow(%rip)\n"
    "    addq $16, %rsp\n"
    "    popq %r13\n"
    "    retq\n");
#endif
