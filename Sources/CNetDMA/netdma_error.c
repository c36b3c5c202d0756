// The C half of libnetdma: the per-thread last error and the message of each error code.
// Everything else is Swift (Sources/NetDMAC), over NetDMAEngines.
#include "netdma.h"
#include "netdma_internal.h"

#include <string.h>

/// The calling thread's last error. Static TLS: setting it never allocates.
static _Thread_local struct {
    int code;
    const char *message;  // NULL: no error yet; else `text` or a constant string
    char text[1024];
} last_error;

int cnetdma_fail(int code, const char *message, size_t length) {
    last_error.code = code;
    if (message == NULL) {
        last_error.message = netdma_strerror(code);
        return code;
    }
    size_t n = length < sizeof last_error.text - 1 ? length : sizeof last_error.text - 1;
    memcpy(last_error.text, message, n);
    last_error.text[n] = '\0';
    last_error.message = last_error.text;
    return code;
}

const char *netdma_last_error(void) { return last_error.message ? last_error.message : "no error"; }

int netdma_last_error_code(void) { return last_error.code; }

uint32_t netdma_abi_version(void) { return NETDMA_ABI_VERSION; }

const char *netdma_strerror(int code) {
    switch (code) {
    case NETDMA_OK: return "Success.";
    case NETDMA_EINVAL:
        return "An argument is NULL or out of range; netdma_last_error() names it and the values allowed.";
    case NETDMA_ESTATE:
        return "The call is not allowed in the channel's or engine's state; netdma_last_error() names the state and the calls it allows (after a POWER_DOWN notification, wait for POWER_UP).";
    case NETDMA_EBUSY:
        return "The resource is in use: free a channel (or destroy its queue) first, open more engines, or stop the other process that owns the device (sudo fuser -v /dev/vfio/N names it).";
    case NETDMA_ENOTFOUND:
        return "No such device, engine, buffer or registration; `netdma list --all` shows the PCI devices present.";
    case NETDMA_ENOTSUP:
        return "The engine, its provider or this build cannot do this; netdma_engine_info_get() and netdma_channel_info_get() say what it can.";
    case NETDMA_EFULL:
        return "The queue is full; retire finished ops with netdma_completed() or netdma_completed_status() before enqueueing more (netdma_burst_capacity() says how many fit).";
    case NETDMA_ETOOLARGE:
        return "The op is longer than the channel's max_transfer_size or reaches beyond its max_address; split it into several ops, in DMA memory the engine reaches.";
    case NETDMA_ETIMEOUT:
        return "The device did not respond or drain in time; retry, and if it persists check the engine with `sudo netdma selftest`.";
    case NETDMA_EDEVICE:
        return "The device reported an error or failed its bring-up self-check; run `sudo netdma probe` on it, and reset or rebind it.";
    case NETDMA_EPERM:
        return "Permission denied; run as root, or install udev/60-netdma-vfio.rules and join the 'vfio' group.";
    case NETDMA_EWRONGDRIVER:
        return "The engine is bound to its kernel driver (ioatdma, idxd); run `sudo netdma bind <BDF>` to give it to vfio-pci.";
    case NETDMA_EGROUP:
        return "The engine's IOMMU group holds devices not bound to vfio-pci; bind them too (`netdma bind --force`) or move the card.";
    case NETDMA_ENOIOMMU:
        return "The IOMMU is off; enable VT-d in firmware, add intel_iommu=on iommu=pt to the kernel command line and reboot.";
    case NETDMA_EMEMLOCK:
        return "RLIMIT_MEMLOCK is too low to pin the DMA memory; run `ulimit -l unlimited`, set LimitMEMLOCK=infinity or a memlock line in limits.conf, or run as root.";
    case NETDMA_ENOTMAPPABLE:
        return "A device region cannot be mmapped; check that the kernel's vfio-pci allows mmap of the BAR (no other user has it).";
    case NETDMA_EUNMAPPED:
        return "The address is not inside DMA memory or a registration of this engine set; allocate it with netdma_mem_alloc() or register it with netdma_mem_register().";
    case NETDMA_EMAPPING:
        return "The memory overlaps a registration, or the IOVA space is exhausted; unregister the old region first, or use fewer or smaller buffers.";
    case NETDMA_ENOMEM:
        return "Out of memory (or threads); free memory or raise the process limits, then retry.";
    case NETDMA_ESYSCALL:
        return "A system call failed; netdma_last_error() names it and its errno.";
    case NETDMA_EUNKNOWN:
        return "An error this version of netdma.h has no code for; netdma_last_error() says what happened and what to do.";
    default:
        return "Not a netdma error code; netdma functions return 0 or more on success and a NETDMA_E* code below 0.";
    }
}
