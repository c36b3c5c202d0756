/*
 * Internal to libnetdma (not installed): how the Swift implementation sets the calling
 * thread's last error. Hidden symbols with a `cnetdma_` prefix, so the linker version script
 * (which exports `netdma_*` only) never exports them.
 */
#ifndef NETDMA_INTERNAL_H
#define NETDMA_INTERNAL_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

/** Sets the calling thread's last error to code and message (length bytes, copied; truncated
 *  to 1023) and returns code. message NULL: netdma_strerror(code), not copied. Allocates
 *  nothing. */
__attribute__((visibility("hidden"))) int cnetdma_fail(int code, const char *message, size_t length);

#ifdef __cplusplus
}
#endif

#endif /* NETDMA_INTERNAL_H */
