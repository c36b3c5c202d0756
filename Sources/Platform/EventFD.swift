import CVFIO
import SystemPackage

#if canImport(Glibc)
import Glibc
#endif

/// An owned Linux eventfd: the interrupt line of this project.
///
/// VFIO signals an MSI/MSI-X vector by adding 1 to an eventfd; the device models do the same,
/// so interrupt code is the same for hardware and models.
public struct EventFD: ~Copyable, Sendable {
    /// The file descriptor.
    public let rawValue: Int32

    /// Creates a non-blocking, close-on-exec eventfd with a zero counter.
    public init() throws(DriverError) {
        let fd = cvfio_eventfd(0, Int32(EFD_CLOEXEC | EFD_NONBLOCK))
        guard fd >= 0 else { throw DriverError.systemCall("eventfd", Errno(rawValue: -fd)) }
        rawValue = fd
    }

    /// Adds `count` to the counter, waking any waiter. Never blocks.
    public func signal(_ count: UInt64 = 1) {
        var v = count
        _ = Glibc.write(rawValue, &v, 8)
    }

    /// Reads and clears the counter; returns 0 when it was 0. Never blocks.
    public func consume() -> UInt64 {
        var v: UInt64 = 0
        return Glibc.read(rawValue, &v, 8) == 8 ? v : 0
    }

    /// Waits until the counter is non-zero or `timeoutMilliseconds` pass (-1: forever),
    /// then reads and clears it. Returns 0 on timeout.
    public func wait(timeoutMilliseconds: Int32 = -1) -> UInt64 {
        var p = pollfd(fd: rawValue, events: Int16(POLLIN), revents: 0)
        while true {
            let r = poll(&p, 1, timeoutMilliseconds)
            if r < 0 && Glibc.errno == EINTR { continue }
            if r <= 0 { return 0 }
            let v = consume()
            if v != 0 || timeoutMilliseconds >= 0 { return v }
        }
    }

    deinit { close(rawValue) }
}

/// Something that routes a device's interrupt vectors to eventfds: a VFIO device
/// (`VFIO_DEVICE_SET_IRQS`) or a device model.
public protocol InterruptRouting: AnyObject, Sendable {
    /// How many MSI-X (or MSI) vectors the device has.
    var interruptVectorCount: Int { get }
    /// Routes vector `start + i` to `eventFDs[i]`; -1 detaches a vector.
    func routeInterrupts(start: Int, eventFDs: [Int32]) throws(DriverError)
    /// Detaches every vector.
    func disableInterrupts() throws(DriverError)
}
