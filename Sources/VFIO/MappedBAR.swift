import CVFIO
import Platform
import SystemPackage

#if canImport(Glibc)
import Glibc
#endif

/// A PCI BAR mmapped from a VFIO device: volatile register access at byte offsets.
///
/// Each access is one `cvfio_mmio_*` load or store of its width, never merged or elided, in
/// program order with the others. Unmapped when the value goes away.
///
/// - Warning: accesses in a sparse-mmap hole (usually the MSI-X table) fault.
public struct MappedBAR: ~Copyable, RegisterIO, @unchecked Sendable {
    // @unchecked: a raw pointer into a mapping this value alone owns until deinit.
    /// The CPU address of the BAR's first byte.
    public let base: UnsafeMutableRawPointer
    /// The BAR's size in bytes.
    public let length: Int
    /// The BAR index (0–5).
    public let index: Int

    /// Takes ownership of a mapping of `length` bytes at `base`.
    public init(base: UnsafeMutableRawPointer, length: Int, index: Int) {
        self.base = base
        self.length = length
        self.index = index
    }

    @inlinable @inline(__always)
    func check(_ offset: Int, _ width: Int) {
        precondition(offset >= 0 && offset & (width - 1) == 0 && offset <= length - width,
                     "register offset out of range or misaligned")
    }

    @inlinable @inline(__always) public func read8(_ offset: Int) -> UInt8 { check(offset, 1); return cvfio_mmio_read8(base, offset) }
    @inlinable @inline(__always) public func read16(_ offset: Int) -> UInt16 { check(offset, 2); return cvfio_mmio_read16(base, offset) }
    @inlinable @inline(__always) public func read32(_ offset: Int) -> UInt32 { check(offset, 4); return cvfio_mmio_read32(base, offset) }
    @inlinable @inline(__always) public func read64(_ offset: Int) -> UInt64 { check(offset, 8); return cvfio_mmio_read64(base, offset) }
    @inlinable @inline(__always) public func write8(_ offset: Int, _ value: UInt8) { check(offset, 1); cvfio_mmio_write8(base, offset, value) }
    @inlinable @inline(__always) public func write16(_ offset: Int, _ value: UInt16) { check(offset, 2); cvfio_mmio_write16(base, offset, value) }
    @inlinable @inline(__always) public func write32(_ offset: Int, _ value: UInt32) { check(offset, 4); cvfio_mmio_write32(base, offset, value) }
    @inlinable @inline(__always) public func write64(_ offset: Int, _ value: UInt64) { check(offset, 8); cvfio_mmio_write64(base, offset, value) }

    /// Unmaps now, reporting failure (the deinit cannot).
    public consuming func unmap() throws(DriverError) {
        let (b, l) = (base, length)
        discard self
        if munmap(b, l) != 0 { throw DriverError.systemCall("munmap", Errno(rawValue: errno)) }
    }

    deinit { munmap(base, length) }
}

/// A window of DSA work-submission portals mmapped from a VFIO device (BAR2).
///
/// ``submit64(_:_:)`` is one MOVDIR64B: a single 64-byte non-torn store.
public struct MappedPortal: ~Copyable, PortalIO, @unchecked Sendable {
    // @unchecked: a raw pointer into a mapping this value alone owns until deinit.
    /// The CPU address of the first portal.
    public let base: UnsafeMutableRawPointer
    /// The window's size in bytes.
    public let length: Int

    public init(base: UnsafeMutableRawPointer, length: Int) {
        self.base = base
        self.length = length
    }

    /// Submits the 64-byte descriptor at `descriptor` (64-byte aligned) to the portal at `offset`.
    ///
    /// Issues `cvfio_wmb()` first so the descriptor's data is globally visible before the
    /// weakly-ordered direct store.
    @inlinable @inline(__always)
    public func submit64(_ offset: Int, _ descriptor: UnsafeRawPointer) {
        precondition(offset >= 0 && offset & 63 == 0 && offset <= length - 64, "portal offset out of range or misaligned")
        #if arch(x86_64)
        cvfio_wmb()
        cvfio_movdir64b(base + offset, descriptor)
        #else
        preconditionFailure("MOVDIR64B portals exist on x86-64 only")
        #endif
    }

    public consuming func unmap() throws(DriverError) {
        let (b, l) = (base, length)
        discard self
        if munmap(b, l) != 0 { throw DriverError.systemCall("munmap", Errno(rawValue: errno)) }
    }

    deinit { munmap(base, length) }
}
