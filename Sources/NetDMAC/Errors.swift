import CNetDMA
import NetDMAEngines
import Synchronization

// Errors cross the ABI as a stable negative code (netdma.h's `netdma_error_code`) plus the
// calling thread's last-error message (kept in C thread-local storage by `cnetdma_fail`).

extension DriverError.Code {
    /// The C ABI's code for this error code.
    var netdmaCode: netdma_error_code {
        switch self {
        case .invalidArgument: NETDMA_EINVAL
        case .invalidState: NETDMA_ESTATE
        case .busy: NETDMA_EBUSY
        case .notFound: NETDMA_ENOTFOUND
        case .unsupported, .unsupportedHardware: NETDMA_ENOTSUP
        case .queueFull: NETDMA_EFULL
        case .descriptorTooLarge: NETDMA_ETOOLARGE
        case .timeout: NETDMA_ETIMEOUT
        case .deviceError, .channelHalted, .selfTestFailed, .contextLost: NETDMA_EDEVICE
        case .permissionDenied: NETDMA_EPERM
        case .wrongDriver: NETDMA_EWRONGDRIVER
        case .groupNotViable: NETDMA_EGROUP
        case .noIOMMU: NETDMA_ENOIOMMU
        case .memlockLimit: NETDMA_EMEMLOCK
        case .notMappable: NETDMA_ENOTMAPPABLE
        case .unmappedAddress: NETDMA_EUNMAPPED
        case .invalidMapping: NETDMA_EMAPPING
        case .outOfMemory: NETDMA_ENOMEM
        case .systemCallFailed: NETDMA_ESYSCALL
        default: NETDMA_EUNKNOWN
        }
    }
}

/// Records `error` as the calling thread's last error and returns its code. Copies the message
/// into thread-local storage (a Swift string's contiguous UTF-8: no allocation).
@inline(never)
func fail(_ error: consuming DriverError) -> Int32 {
    let code = error.code.netdmaCode.rawValue
    if error.code == .queueFull {
        // The C wording: netdma_strerror(NETDMA_EFULL) names the C calls to make.
        return cnetdma_fail(code, nil, 0)
    }
    var message = error.message
    if let errno = error.errno { message += " [\(errno)]" }
    return message.withCString { cnetdma_fail(code, $0, strlen($0)) }
}

/// Records `message` with `code` as the calling thread's last error and returns the code.
@inline(never)
func fail(_ code: netdma_error_code, _ message: String) -> Int32 {
    message.withCString { cnetdma_fail(code.rawValue, $0, strlen($0)) }
}

/// The error for a NULL handle or out-pointer argument.
@inline(never)
func null(_ function: StaticString, _ argument: StaticString) -> Int32 {
    fail(NETDMA_EINVAL, "\(function): \(argument) is NULL.")
}

#if canImport(Glibc)
import Glibc
#endif

// MARK: - handles

/// A Swift object behind an opaque C handle: retained while the C side holds it.
protocol CHandle: AnyObject {}

/// The handles C holds (given out and not yet released), by address, with their type: what
/// the calls that release a handle, and the other calls off the hot path, check first, so that
/// a handle released already (a second netdma_close, netdma_channel_free or
/// netdma_queue_destroy) or of the wrong type is an NETDMA_EINVAL instead of a use after free.
/// The hot path (enqueue, submit, completed, burst capacity) and the NetDMA-level calls take
/// no lock: they check for NULL only.
let liveHandles = Mutex<[UInt: ObjectIdentifier]>([:])

extension CHandle {
    /// A +1 handle for C, recorded as live; ``release(_:)`` balances it.
    var retainedHandle: OpaquePointer {
        let handle = OpaquePointer(Unmanaged.passRetained(self).toOpaque())
        liveHandles.withLock { $0[UInt(bitPattern: handle)] = ObjectIdentifier(Self.self) }
        return handle
    }

    /// Runs `body` on the object behind `handle` without retaining it (the caller's handle
    /// keeps it alive for the call): the hot path's access, no retain/release.
    @inline(__always)
    static func with<R>(_ handle: OpaquePointer, _ body: (Self) -> R) -> R {
        Unmanaged<Self>.fromOpaque(UnsafeRawPointer(handle))._withUnsafeGuaranteedRef(body)
    }

    /// nil when `handle` is a live handle of this type; else records the error (the function
    /// and the argument, and which call makes such handles) and returns its code.
    @inline(never)
    static func notLive(_ handle: OpaquePointer, _ function: StaticString, _ argument: StaticString,
                        madeBy maker: StaticString) -> Int32? {
        let live = liveHandles.withLock { $0[UInt(bitPattern: handle)] == ObjectIdentifier(Self.self) }
        if live { return nil }
        return fail(NETDMA_EINVAL,
            "\(function): \(argument) is not a live handle: released already (each handle is released once), or not from \(maker).")
    }

    /// Takes the handle's reference back (the object goes away with the last one); the handle
    /// is no longer live.
    static func release(_ handle: OpaquePointer) {
        liveHandles.withLock { _ = $0.removeValue(forKey: UInt(bitPattern: handle)) }
        Unmanaged<Self>.fromOpaque(UnsafeRawPointer(handle)).release()
    }
}

/// Writes `text` into a fixed-size C character array (imported as a tuple), NUL-terminated and
/// truncated to fit.
func copyCString<T>(_ text: String, into field: inout T) {
    withUnsafeMutableBytes(of: &field) { buffer in
        buffer.initializeMemory(as: UInt8.self, repeating: 0)
        var n = 0
        for byte in text.utf8 {
            guard n < buffer.count - 1 else { break }
            buffer[n] = byte
            n += 1
        }
    }
}
