/// What a device may do with a mapping.
public struct DMAAccess: OptionSet, Sendable, Hashable {
    public let rawValue: UInt32
    public init(rawValue: UInt32) { self.rawValue = rawValue }
    /// The device may read (DMA from memory).
    public static let read = DMAAccess(rawValue: 1)
    /// The device may write (DMA to memory).
    public static let write = DMAAccess(rawValue: 2)
    public static let readWrite: DMAAccess = [.read, .write]
}

/// An I/O address space that devices reach memory through: the kernel IOMMU behind a VFIO
/// container, or the device models' in-process IOMMU.
///
/// Every DMA address the driver hands a device is an IOVA in such a space. ``DMAMemory``
/// maps each buffer once into every space it was given, so one buffer is seen by every engine.
public protocol DMAAddressSpace: AnyObject, Sendable {
    /// The IOVA ranges a mapping may use (the IOMMU's apertures, clipped to the device's DMA mask).
    var validIOVARanges: [ClosedRange<UInt64>] { get }

    /// Maps `length` bytes at `address` to `iova`.
    ///
    /// - Throws: ``DriverError`` `.invalidMapping` for an overlap or an IOVA outside
    ///   ``validIOVARanges``, `.memlockLimit` when pinning exceeds RLIMIT_MEMLOCK.
    func map(_ address: UnsafeMutableRawPointer, length: Int, iova: UInt64, access: DMAAccess) throws(DriverError)

    /// Removes the mapping that starts at `iova`.
    ///
    /// - Throws: ``DriverError`` `.unmappedAddress` when nothing is mapped there.
    func unmap(iova: UInt64, length: Int) throws(DriverError)
}

/// How ``DMAMemory`` chooses the IOVA of a new mapping.
public enum IOVAPolicy: Sendable, Hashable {
    /// IOVA = virtual address (DPDK's `--iova-mode=va`).
    case identity
    /// IOVAs handed out from `range` (page-aligned, first fit), for devices whose DMA mask is
    /// narrower than the process's addresses and for catching IOVA/VA mix-ups in tests.
    case allocate(in: ClosedRange<UInt64>)
}
