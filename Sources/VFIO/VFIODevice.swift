import CVFIO
import Platform
import Synchronization
import SystemPackage

#if canImport(Glibc)
import Glibc
#endif

/// A region of a VFIO device: a BAR, the ROM, config space or a device-specific region
/// (`VFIO_DEVICE_GET_REGION_INFO`).
public struct VFIORegionInfo: Sendable, Hashable {
    /// The region index (`VFIO_PCI_BAR0_REGION_INDEX` … `VFIO_PCI_CONFIG_REGION_INDEX`).
    public var index: Int
    /// `VFIO_REGION_INFO_FLAG_*`.
    public var flags: UInt32
    /// The region's size in bytes; 0 for an unimplemented BAR.
    public var size: Int
    /// The region's offset in the device fd (for pread/pwrite/mmap).
    public var offset: Int64
    /// The parts that may be mmapped (`VFIO_REGION_INFO_CAP_SPARSE_MMAP`); nil when the whole
    /// region may be.
    public var sparseAreas: [Range<Int>]?
    /// Whether the MSI-X table in this BAR may be mmapped (`VFIO_REGION_INFO_CAP_MSIX_MAPPABLE`).
    public var msixMappable: Bool

    public var isReadable: Bool { flags & UInt32(VFIO_REGION_INFO_FLAG_READ) != 0 }
    public var isWritable: Bool { flags & UInt32(VFIO_REGION_INFO_FLAG_WRITE) != 0 }
    public var isMappable: Bool { flags & UInt32(VFIO_REGION_INFO_FLAG_MMAP) != 0 }
    /// The parts that `mmap` will cover.
    public var mappableAreas: [Range<Int>] { isMappable ? (sparseAreas ?? [0..<size]) : [] }
}

/// The interrupt index of `VFIO_DEVICE_SET_IRQS` for a PCI device.
public enum VFIOInterruptKind: Int, Sendable, Hashable, CaseIterable, CustomStringConvertible {
    /// `VFIO_PCI_INTX_IRQ_INDEX`: the legacy line (one vector, level-triggered, masked on fire).
    case intx = 0
    /// `VFIO_PCI_MSI_IRQ_INDEX`.
    case msi = 1
    /// `VFIO_PCI_MSIX_IRQ_INDEX`.
    case msix = 2
    /// `VFIO_PCI_ERR_IRQ_INDEX`: AER error notification.
    case error = 3
    /// `VFIO_PCI_REQ_IRQ_INDEX`: the kernel asks for the device back.
    case request = 4

    public var description: String { ["INTx", "MSI", "MSI-X", "error", "request"][rawValue] }
}

/// What `VFIO_DEVICE_GET_IRQ_INFO` reports for one interrupt index.
public struct VFIOInterruptInfo: Sendable, Hashable {
    public var kind: VFIOInterruptKind
    /// `VFIO_IRQ_INFO_*` flags.
    public var flags: UInt32
    /// The number of vectors.
    public var count: Int
    /// Whether enabling more vectors needs disabling first (`VFIO_IRQ_INFO_NORESIZE`).
    public var noResize: Bool { flags & UInt32(VFIO_IRQ_INFO_NORESIZE) != 0 }
}

/// A PCI device opened through VFIO: regions and BAR mappings, config space, interrupts
/// (INTx/MSI/MSI-X eventfds) and reset.
///
/// Also the device's ``InterruptRouting``: MSI-X vectors (or MSI when the device has no
/// MSI-X) are routed to eventfds with `VFIO_DEVICE_SET_IRQS`.
///
/// The device keeps its group (and so the container) alive; closing the fd releases it.
public final class VFIODevice: InterruptRouting, Sendable {
    /// The PCI address.
    public let address: PCIAddress
    /// The device fd from `VFIO_GROUP_GET_DEVICE_FD`.
    public let fd: Int32
    /// The group the device belongs to.
    public let group: VFIOGroup
    /// `VFIO_DEVICE_FLAGS_*` from `VFIO_DEVICE_GET_INFO`.
    public let flags: UInt32
    /// The number of regions.
    public let regionCount: Int
    /// The number of interrupt indexes.
    public let interruptIndexCount: Int
    /// The config-space region's offset in the fd.
    let configOffset: Int64
    let configSize: Int
    private let routed: Mutex<(kind: VFIOInterruptKind?, fds: [Int32])>

    var system: any VFIOSyscalls { group.container.system }

    init(address: PCIAddress, fd: Int32, group: VFIOGroup) throws(DriverError) {
        self.address = address
        self.fd = fd
        self.group = group
        self.routed = Mutex((nil, []))
        let system = group.container.system
        var info = vfio_device_info()
        info.argsz = UInt32(MemoryLayout<vfio_device_info>.size)
        let r = withUnsafeMutablePointer(to: &info) { system.ioctl(fd, .deviceGetInfo($0)) }
        if r < 0 {
            system.close(fd)
            throw DriverError.systemCall("VFIO_DEVICE_GET_INFO", Errno(rawValue: -r), address.description)
        }
        guard info.flags & UInt32(VFIO_DEVICE_FLAGS_PCI) != 0 else {
            system.close(fd)
            throw DriverError(.unsupported, "\(address) is not a VFIO PCI device (flags 0x\(String(info.flags, radix: 16))).")
        }
        flags = info.flags
        regionCount = Int(info.num_regions)
        interruptIndexCount = Int(info.num_irqs)
        do {
            let cfg = try VFIODevice.regionInfo(system: system, fd: fd, index: Int(VFIO_PCI_CONFIG_REGION_INDEX), address: address)
            configOffset = cfg.offset
            configSize = cfg.size
        } catch {
            system.close(fd)
            throw error
        }
    }

    deinit {
        let fds = routed.withLock { $0.fds }
        if !fds.isEmpty { try? disableInterrupts() }
        system.close(fd)
    }

    /// Whether the device supports `VFIO_DEVICE_RESET` (FLR, PM or bus reset).
    public var supportsReset: Bool { flags & UInt32(VFIO_DEVICE_FLAGS_RESET) != 0 }

    // MARK: Regions

    /// Describes region `index`, including the sparse-mmap capability.
    ///
    /// The corresponding ioctl is `VFIO_DEVICE_GET_REGION_INFO`.
    public func regionInfo(_ index: Int) throws(DriverError) -> VFIORegionInfo {
        try VFIODevice.regionInfo(system: system, fd: fd, index: index, address: address)
    }

    static func regionInfo(system: any VFIOSyscalls, fd: Int32, index: Int, address: PCIAddress) throws(DriverError) -> VFIORegionInfo {
        var size = MemoryLayout<vfio_region_info>.size
        for _ in 0..<2 {
            let buffer = UnsafeMutableRawPointer.allocate(byteCount: size, alignment: 8)
            defer { buffer.deallocate() }
            memset(buffer, 0, size)
            buffer.storeBytes(of: UInt32(size), toByteOffset: 0, as: UInt32.self)   // argsz
            buffer.storeBytes(of: UInt32(index), toByteOffset: 8, as: UInt32.self)  // index
            let r = system.ioctl(fd, .deviceGetRegionInfo(buffer))
            if r < 0 {
                let e = Errno(rawValue: -r)
                if e == .invalidArgument {
                    throw DriverError(.notFound, errno: e, "\(address) has no region \(index).")
                }
                throw DriverError.systemCall("VFIO_DEVICE_GET_REGION_INFO", e, "\(address) region \(index)")
            }
            let info = buffer.load(as: vfio_region_info.self)
            if Int(info.argsz) > size && info.flags & UInt32(VFIO_REGION_INFO_FLAG_CAPS) != 0 {
                size = Int(info.argsz)
                continue
            }
            var sparse: [Range<Int>]? = nil
            var msix = false
            if info.flags & UInt32(VFIO_REGION_INFO_FLAG_CAPS) != 0 {
                let raw = UnsafeRawBufferPointer(start: buffer, count: size)
                for cap in CapabilityChain(raw, first: Int(info.cap_offset)) {
                    switch Int32(cap.id) {
                    case VFIO_REGION_INFO_CAP_SPARSE_MMAP:
                        let n = Int(raw.loadU32(cap.offset + 8))
                        var areas: [Range<Int>] = []
                        for i in 0..<n {
                            let at = cap.offset + 16 + i * 16
                            guard at + 16 <= size else { break }
                            let o = Int(raw.loadU64(at)), l = Int(raw.loadU64(at + 8))
                            if l > 0 && o >= 0 && o + l <= Int(info.size) { areas.append(o..<(o + l)) }
                        }
                        sparse = areas
                    case VFIO_REGION_INFO_CAP_MSIX_MAPPABLE:
                        msix = true
                    default: break
                    }
                }
            }
            return VFIORegionInfo(index: index, flags: info.flags, size: Int(info.size), offset: Int64(bitPattern: info.offset),
                                  sparseAreas: sparse, msixMappable: msix)
        }
        throw DriverError(.systemCallFailed, "VFIO_DEVICE_GET_REGION_INFO of \(address) region \(index) kept growing its capability chain.")
    }

    /// Maps BAR `index` (0–5) for volatile register access.
    ///
    /// With a sparse-mmap capability the BAR's address range is reserved and only the
    /// permitted areas are mapped; touching a hole (usually the MSI-X table) faults.
    ///
    /// - Throws: ``DriverError`` `.notFound` (BAR not implemented), `.notMappable` (I/O-port
    ///   BAR, smaller than a page, or refused by the kernel).
    public func mapBAR(_ index: Int) throws(DriverError) -> MappedBAR {
        let (base, length) = try mapRegion(index)
        return MappedBAR(base: base, length: length, index: index)
    }

    /// Maps a window of DSA work-submission portals in BAR `bar` for 64-byte MOVDIR64B writes.
    ///
    /// - Throws: as ``mapBAR(_:)``.
    public func mapPortals(bar: Int) throws(DriverError) -> MappedPortal {
        let (base, length) = try mapRegion(bar)
        return MappedPortal(base: base, length: length)
    }

    private func mapRegion(_ index: Int) throws(DriverError) -> (UnsafeMutableRawPointer, Int) {
        precondition(index >= 0 && index <= Int(VFIO_PCI_BAR5_REGION_INDEX), "BAR index must be 0…5")
        let info = try regionInfo(index)
        guard info.size > 0 else {
            throw DriverError(.notFound, "BAR \(index) of \(address) is not implemented (size 0).")
        }
        let areas = info.mappableAreas
        guard !areas.isEmpty else {
            throw DriverError(.notMappable,
                "BAR \(index) of \(address) (\(info.size) bytes, flags 0x\(String(info.flags, radix: 16))) cannot be mmapped: it is an I/O-port BAR, smaller than a page, or vfio-pci refuses to map it. Use region reads and writes instead.")
        }
        let prot = PROT_READ | PROT_WRITE
        if areas == [0..<info.size] {
            let (p, e) = system.mmap(nil, length: info.size, prot: prot, flags: MAP_SHARED, fd: fd, offset: info.offset)
            guard let p else { throw mmapError(index, e) }
            return (p, info.size)
        }
        // Reserve the whole BAR, then map each permitted area over the reservation.
        let (reserve, e) = system.mmap(nil, length: info.size, prot: PROT_NONE, flags: MAP_PRIVATE | MAP_ANONYMOUS, fd: -1, offset: 0)
        guard let reserve else { throw mmapError(index, e) }
        for area in areas {
            let (p, e2) = system.mmap(reserve + area.lowerBound, length: area.count, prot: prot,
                                      flags: MAP_SHARED | MAP_FIXED, fd: fd, offset: info.offset + Int64(area.lowerBound))
            if p == nil {
                munmap(reserve, info.size)
                throw mmapError(index, e2)
            }
        }
        return (reserve, info.size)
    }

    private func mmapError(_ index: Int, _ e: Int32) -> DriverError {
        let errno = Errno(rawValue: e)
        switch errno {
        case .invalidArgument, .operationNotSupportedByDevice, .permissionDenied, .notPermitted:
            return DriverError(.notMappable, errno: errno,
                "mmap of BAR \(index) of \(address) failed: the kernel refuses to map it (\(errno)). Check that the BAR is a memory BAR and that the device is enabled.")
        default:
            return DriverError.systemCall("mmap", errno, "BAR \(index) of \(address)")
        }
    }

    // MARK: Config space

    /// Reads `width` (1, 2 or 4) bytes of config space at `offset` through the VFIO config region.
    public func readConfig(_ offset: Int, width: Int) throws(DriverError) -> UInt32 {
        precondition(width == 1 || width == 2 || width == 4, "config access width must be 1, 2 or 4")
        precondition(offset >= 0 && offset % width == 0, "config offset must be aligned to the access width")
        var v: UInt32 = 0
        let n = withUnsafeMutableBytes(of: &v) { b in
            system.pread(fd, UnsafeMutableRawBufferPointer(rebasing: b[0..<width]), offset: configOffset + Int64(offset))
        }
        if n != width {
            if n < 0 { throw DriverError.systemCall("pread", Errno(rawValue: Int32(-n)), "config 0x\(String(offset, radix: 16)) of \(address)") }
            throw DriverError(.systemCallFailed, "Short config-space read at 0x\(String(offset, radix: 16)) of \(address).")
        }
        return UInt32(littleEndian: v)
    }

    /// Writes `width` (1, 2 or 4) bytes of config space at `offset`.
    public func writeConfig(_ offset: Int, width: Int, _ value: UInt32) throws(DriverError) {
        precondition(width == 1 || width == 2 || width == 4, "config access width must be 1, 2 or 4")
        precondition(offset >= 0 && offset % width == 0, "config offset must be aligned to the access width")
        var v = value.littleEndian
        let n = withUnsafeBytes(of: &v) { b in
            system.pwrite(fd, UnsafeRawBufferPointer(rebasing: b[0..<width]), offset: configOffset + Int64(offset))
        }
        if n != width {
            if n < 0 { throw DriverError.systemCall("pwrite", Errno(rawValue: Int32(-n)), "config 0x\(String(offset, radix: 16)) of \(address)") }
            throw DriverError(.systemCallFailed, "Short config-space write at 0x\(String(offset, radix: 16)) of \(address).")
        }
    }

    public func readConfig8(_ offset: Int) throws(DriverError) -> UInt8 { UInt8(try readConfig(offset, width: 1)) }
    public func readConfig16(_ offset: Int) throws(DriverError) -> UInt16 { UInt16(try readConfig(offset, width: 2)) }
    public func readConfig32(_ offset: Int) throws(DriverError) -> UInt32 { try readConfig(offset, width: 4) }
    public func writeConfig8(_ offset: Int, _ v: UInt8) throws(DriverError) { try writeConfig(offset, width: 1, UInt32(v)) }
    public func writeConfig16(_ offset: Int, _ v: UInt16) throws(DriverError) { try writeConfig(offset, width: 2, UInt32(v)) }
    public func writeConfig32(_ offset: Int, _ v: UInt32) throws(DriverError) { try writeConfig(offset, width: 4, v) }

    /// Sets Memory Space Enable and Bus Master Enable in the PCI COMMAND register (config
    /// 0x04, bits 1 and 2), which vfio-pci leaves to the user; returns the previous value.
    @discardableResult
    public func enableMemoryAndBusMaster() throws(DriverError) -> UInt16 {
        let old = try readConfig16(Int(PCI_COMMAND))
        let new = old | UInt16(PCI_COMMAND_MEMORY) | UInt16(PCI_COMMAND_MASTER)
        if new != old { try writeConfig16(Int(PCI_COMMAND), new) }
        return old
    }

    /// Clears Bus Master Enable in COMMAND so the device stops issuing DMA.
    public func disableBusMaster() throws(DriverError) {
        let old = try readConfig16(Int(PCI_COMMAND))
        try writeConfig16(Int(PCI_COMMAND), old & ~UInt16(PCI_COMMAND_MASTER))
    }

    // MARK: Interrupts

    /// Describes interrupt index `kind` (`VFIO_DEVICE_GET_IRQ_INFO`).
    public func interruptInfo(_ kind: VFIOInterruptKind) throws(DriverError) -> VFIOInterruptInfo {
        guard kind.rawValue < interruptIndexCount else { return VFIOInterruptInfo(kind: kind, flags: 0, count: 0) }
        var info = vfio_irq_info()
        info.argsz = UInt32(MemoryLayout<vfio_irq_info>.size)
        info.index = UInt32(kind.rawValue)
        let r = withUnsafeMutablePointer(to: &info) { system.ioctl(fd, .deviceGetIRQInfo($0)) }
        if r < 0 { throw DriverError.systemCall("VFIO_DEVICE_GET_IRQ_INFO", Errno(rawValue: -r), "\(address) \(kind)") }
        return VFIOInterruptInfo(kind: kind, flags: info.flags, count: Int(info.count))
    }

    /// One `VFIO_DEVICE_SET_IRQS` call: `flags` (data type | action), vectors `start..<start+count`,
    /// and eventfds as data when given.
    func setIRQs(_ kind: VFIOInterruptKind, flags: UInt32, start: Int, count: Int, eventFDs: [Int32]?) throws(DriverError) {
        let header = MemoryLayout<vfio_irq_set>.size
        let total = header + (eventFDs?.count ?? 0) * 4
        let buffer = UnsafeMutableRawPointer.allocate(byteCount: total, alignment: 8)
        defer { buffer.deallocate() }
        var set = vfio_irq_set()
        set.argsz = UInt32(total)
        set.flags = flags
        set.index = UInt32(kind.rawValue)
        set.start = UInt32(start)
        set.count = UInt32(count)
        buffer.storeBytes(of: set, as: vfio_irq_set.self)
        for (i, efd) in (eventFDs ?? []).enumerated() { buffer.storeBytes(of: efd, toByteOffset: header + i * 4, as: Int32.self) }
        let r = system.ioctl(fd, .deviceSetIRQs(buffer))
        if r < 0 {
            let e = Errno(rawValue: -r)
            if e == .invalidArgument {
                throw DriverError(.invalidArgument, errno: e,
                    "VFIO_DEVICE_SET_IRQS for \(kind) vectors \(start)..<\(start + count) of \(address) was refused: the device has \((try? interruptInfo(kind).count) ?? 0) \(kind) vectors.")
            }
            throw DriverError.systemCall("VFIO_DEVICE_SET_IRQS", e, "\(address) \(kind)")
        }
    }

    /// Routes vectors `start..<start+eventFDs.count` of `kind` to eventfds (-1 detaches a vector).
    ///
    /// The corresponding ioctl is `VFIO_DEVICE_SET_IRQS` with `DATA_EVENTFD | ACTION_TRIGGER`.
    public func enableInterrupts(_ kind: VFIOInterruptKind, start: Int = 0, eventFDs: [Int32]) throws(DriverError) {
        try setIRQs(kind, flags: UInt32(VFIO_IRQ_SET_DATA_EVENTFD | VFIO_IRQ_SET_ACTION_TRIGGER),
                    start: start, count: eventFDs.count, eventFDs: eventFDs)
    }

    /// Disables every vector of `kind` (`DATA_NONE | ACTION_TRIGGER` with count 0).
    public func disableInterrupts(_ kind: VFIOInterruptKind) throws(DriverError) {
        try setIRQs(kind, flags: UInt32(VFIO_IRQ_SET_DATA_NONE | VFIO_IRQ_SET_ACTION_TRIGGER), start: 0, count: 0, eventFDs: nil)
    }

    /// Fires vector `vector` of `kind` from software, as if the device had (loop-back test).
    public func triggerInterrupt(_ kind: VFIOInterruptKind, vector: Int) throws(DriverError) {
        try setIRQs(kind, flags: UInt32(VFIO_IRQ_SET_DATA_NONE | VFIO_IRQ_SET_ACTION_TRIGGER), start: vector, count: 1, eventFDs: nil)
    }

    /// Unmasks INTx after it fired (`ACTION_UNMASK`).
    public func unmaskINTx() throws(DriverError) {
        try setIRQs(.intx, flags: UInt32(VFIO_IRQ_SET_DATA_NONE | VFIO_IRQ_SET_ACTION_UNMASK), start: 0, count: 1, eventFDs: nil)
    }

    // MARK: InterruptRouting

    /// The kind ``routeInterrupts(start:eventFDs:)`` uses: MSI-X when the device has it, else MSI.
    public var routedInterruptKind: VFIOInterruptKind {
        ((try? interruptInfo(.msix).count) ?? 0) > 0 ? .msix : .msi
    }

    public var interruptVectorCount: Int { (try? interruptInfo(routedInterruptKind).count) ?? 0 }

    /// Routes MSI-X (else MSI) vectors to eventfds, keeping earlier routes; re-enables the
    /// whole table when the kernel cannot grow it in place (`VFIO_IRQ_INFO_NORESIZE`).
    public func routeInterrupts(start: Int, eventFDs: [Int32]) throws(DriverError) {
        let kind = routedInterruptKind
        let info = try interruptInfo(kind)
        guard start >= 0, start + eventFDs.count <= info.count else {
            throw DriverError(.invalidArgument,
                "\(address) has \(info.count) \(kind) vectors; cannot route vectors \(start)..<\(start + eventFDs.count).")
        }
        let (old, new) = routed.withLock { r -> ([Int32], [Int32]) in
            var t = r.fds
            if t.count < start + eventFDs.count { t += Array(repeating: -1, count: start + eventFDs.count - t.count) }
            for (i, f) in eventFDs.enumerated() { t[start + i] = f }
            return (r.fds, t)
        }
        if !old.isEmpty && new.count > old.count && info.noResize {
            try disableInterrupts(kind)
        }
        try enableInterrupts(kind, start: 0, eventFDs: new)
        routed.withLock { $0 = (kind, new) }
    }

    public func disableInterrupts() throws(DriverError) {
        let kind = routed.withLock { $0.kind } ?? routedInterruptKind
        try disableInterrupts(kind)
        routed.withLock { $0 = (nil, []) }
    }

    // MARK: Reset

    /// Resets the device (`VFIO_DEVICE_RESET`: FLR, PM or bus reset, as the kernel chooses).
    ///
    /// - Throws: ``DriverError`` `.unsupported` when the device has no reset method.
    public func reset() throws(DriverError) {
        guard supportsReset else {
            throw DriverError(.unsupported, "\(address) has no reset method VFIO can use (no FLR, PM or bus reset).")
        }
        let r = system.ioctl(fd, .deviceReset)
        if r < 0 { throw DriverError.systemCall("VFIO_DEVICE_RESET", Errno(rawValue: -r), address.description) }
    }
}
