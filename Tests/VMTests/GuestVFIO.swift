// The VFIO operations the guest tests need, over the CVFIO shim.
//
// Phase 1: the VFIO module (Sources/VFIO) is being written, so these small test-local types
// call the ioctls directly. Every test reaches VFIO only through them; switching the tests to
// the VFIO module means re-implementing `GuestContainer`, `GuestGroup`, `GuestDevice` and
// `GuestBAR` on top of its Container/Group/Device/MappedBAR (or replacing them by typealiases),
// not touching the tests.
import CVFIO
import Platform
import SystemPackage

#if canImport(Glibc)
import Glibc
#endif

/// A VFIO container (`/dev/vfio/vfio`): one IOMMU address space.
final class GuestContainer: @unchecked Sendable {
    // @unchecked: the fd is owned by this object and used by one test at a time.
    let fd: Int32

    init() throws(DriverError) {
        let fd = open("/dev/vfio/vfio", O_RDWR | O_CLOEXEC)
        guard fd >= 0 else { throw DriverError.systemCall("open", Errno(rawValue: errno), "/dev/vfio/vfio") }
        self.fd = fd
    }

    deinit { close(fd) }

    /// `VFIO_GET_API_VERSION`.
    func apiVersion() throws(DriverError) -> Int32 {
        try check(cvfio_get_api_version(fd), "VFIO_GET_API_VERSION")
    }

    /// `VFIO_CHECK_EXTENSION`: whether the container supports an IOMMU type or extension.
    func supports(_ ext: Int32) throws(DriverError) -> Bool {
        try check(cvfio_check_extension(fd, UInt(ext)), "VFIO_CHECK_EXTENSION") > 0
    }

    /// `VFIO_SET_IOMMU`, after at least one group was added.
    func setIOMMU(_ type: Int32 = VFIO_TYPE1v2_IOMMU) throws(DriverError) {
        _ = try check(cvfio_set_iommu(fd, UInt(type)), "VFIO_SET_IOMMU")
    }

    struct IOMMUInfo {
        var flags: UInt32
        var pageSizes: UInt64
        /// The usable IOVA ranges from `VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE`, if reported.
        var iovaRanges: [ClosedRange<UInt64>]
    }

    /// `VFIO_IOMMU_GET_INFO`, with the capability chain parsed for the IOVA ranges.
    func iommuInfo() throws(DriverError) -> IOMMUInfo {
        var size = MemoryLayout<vfio_iommu_type1_info>.size
        while true {
            let raw = UnsafeMutableRawPointer.allocate(byteCount: size, alignment: 8)
            defer { raw.deallocate() }
            memset(raw, 0, size)
            let info = raw.bindMemory(to: vfio_iommu_type1_info.self, capacity: 1)
            info.pointee.argsz = UInt32(size)
            _ = try check(cvfio_iommu_get_info(fd, info), "VFIO_IOMMU_GET_INFO")
            if Int(info.pointee.argsz) > size { size = Int(info.pointee.argsz); continue }
            var ranges: [ClosedRange<UInt64>] = []
            var offset = (info.pointee.flags & UInt32(VFIO_IOMMU_INFO_CAPS)) != 0 ? Int(info.pointee.cap_offset) : 0
            while offset != 0 && offset + 8 <= size {
                let id = raw.loadUnaligned(fromByteOffset: offset, as: UInt16.self)
                if id == UInt16(VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE) {
                    let count = Int(raw.loadUnaligned(fromByteOffset: offset + 8, as: UInt32.self))
                    for i in 0..<count {
                        let start = raw.loadUnaligned(fromByteOffset: offset + 16 + 16 * i, as: UInt64.self)
                        let end = raw.loadUnaligned(fromByteOffset: offset + 24 + 16 * i, as: UInt64.self)
                        ranges.append(start...end)
                    }
                }
                offset = Int(raw.loadUnaligned(fromByteOffset: offset + 4, as: UInt32.self))
            }
            return IOMMUInfo(flags: info.pointee.flags, pageSizes: info.pointee.iova_pgsizes, iovaRanges: ranges)
        }
    }

    /// `VFIO_IOMMU_MAP_DMA` for device reads and writes.
    func map(_ address: UnsafeMutableRawPointer, length: Int, iova: UInt64) throws(DriverError) {
        var m = vfio_iommu_type1_dma_map()
        m.argsz = UInt32(MemoryLayout<vfio_iommu_type1_dma_map>.size)
        m.flags = UInt32(VFIO_DMA_MAP_FLAG_READ | VFIO_DMA_MAP_FLAG_WRITE)
        m.vaddr = UInt64(UInt(bitPattern: address))
        m.iova = iova
        m.size = UInt64(length)
        _ = try check(cvfio_iommu_map_dma(fd, &m), "VFIO_IOMMU_MAP_DMA")
    }

    /// `VFIO_IOMMU_UNMAP_DMA`; returns the number of bytes the kernel unmapped.
    @discardableResult
    func unmap(iova: UInt64, length: Int) throws(DriverError) -> UInt64 {
        var u = vfio_iommu_type1_dma_unmap()
        u.argsz = UInt32(MemoryLayout<vfio_iommu_type1_dma_unmap>.size)
        u.iova = iova
        u.size = UInt64(length)
        _ = try check(cvfio_iommu_unmap_dma(fd, &u), "VFIO_IOMMU_UNMAP_DMA")
        return u.size
    }
}

/// The container as a ``DMAAddressSpace``, so ``DMAMemory`` allocates and maps through the
/// real kernel IOMMU.
final class GuestContainerSpace: DMAAddressSpace, @unchecked Sendable {
    // @unchecked: the container is used by one test at a time.
    let container: GuestContainer
    let validIOVARanges: [ClosedRange<UInt64>]

    init(_ container: GuestContainer, ranges: [ClosedRange<UInt64>]) {
        self.container = container
        self.validIOVARanges = ranges
    }

    func map(_ address: UnsafeMutableRawPointer, length: Int, iova: UInt64, access: DMAAccess) throws(DriverError) {
        try container.map(address, length: length, iova: iova)
    }

    func unmap(iova: UInt64, length: Int) throws(DriverError) {
        try container.unmap(iova: iova, length: length)
    }
}

/// A VFIO group (`/dev/vfio/<n>`).
final class GuestGroup: @unchecked Sendable {
    // @unchecked: the fd is owned by this object and used by one test at a time.
    let fd: Int32
    let number: Int

    init(_ number: Int) throws(DriverError) {
        let path = "/dev/vfio/\(number)"
        let fd = open(path, O_RDWR | O_CLOEXEC)
        guard fd >= 0 else { throw DriverError.systemCall("open", Errno(rawValue: errno), path) }
        self.fd = fd
        self.number = number
    }

    deinit { close(fd) }

    /// `VFIO_GROUP_GET_STATUS` flags (`VFIO_GROUP_FLAGS_VIABLE`, `VFIO_GROUP_FLAGS_CONTAINER_SET`).
    func status() throws(DriverError) -> UInt32 {
        var s = vfio_group_status()
        s.argsz = UInt32(MemoryLayout<vfio_group_status>.size)
        _ = try check(cvfio_group_get_status(fd, &s), "VFIO_GROUP_GET_STATUS")
        return s.flags
    }

    /// `VFIO_GROUP_SET_CONTAINER`.
    func attach(to container: GuestContainer) throws(DriverError) {
        _ = try check(cvfio_group_set_container(fd, container.fd), "VFIO_GROUP_SET_CONTAINER")
    }

    /// `VFIO_GROUP_UNSET_CONTAINER`.
    func detach() throws(DriverError) {
        _ = try check(cvfio_group_unset_container(fd), "VFIO_GROUP_UNSET_CONTAINER")
    }

    /// `VFIO_GROUP_GET_DEVICE_FD`.
    func device(_ address: String) throws(DriverError) -> GuestDevice {
        let dfd = try check(cvfio_group_get_device_fd(fd, address), "VFIO_GROUP_GET_DEVICE_FD")
        return GuestDevice(fd: dfd, address: address)
    }
}

/// A VFIO device fd: regions, config space and interrupts.
final class GuestDevice: @unchecked Sendable {
    // @unchecked: the fd is owned by this object and used by one test at a time.
    let fd: Int32
    let address: String

    init(fd: Int32, address: String) {
        self.fd = fd
        self.address = address
    }

    deinit { close(fd) }

    /// `VFIO_DEVICE_GET_INFO`.
    func info() throws(DriverError) -> vfio_device_info {
        var i = vfio_device_info()
        i.argsz = UInt32(MemoryLayout<vfio_device_info>.size)
        _ = try check(cvfio_device_get_info(fd, &i), "VFIO_DEVICE_GET_INFO")
        return i
    }

    /// `VFIO_DEVICE_GET_REGION_INFO`.
    func region(_ index: Int) throws(DriverError) -> vfio_region_info {
        var r = vfio_region_info()
        r.argsz = UInt32(MemoryLayout<vfio_region_info>.size)
        r.index = UInt32(index)
        _ = try check(cvfio_device_get_region_info(fd, &r), "VFIO_DEVICE_GET_REGION_INFO")
        return r
    }

    /// `VFIO_DEVICE_GET_IRQ_INFO`.
    func irq(_ index: Int) throws(DriverError) -> vfio_irq_info {
        var i = vfio_irq_info()
        i.argsz = UInt32(MemoryLayout<vfio_irq_info>.size)
        i.index = UInt32(index)
        _ = try check(cvfio_device_get_irq_info(fd, &i), "VFIO_DEVICE_GET_IRQ_INFO")
        return i
    }

    /// mmaps a whole region (a BAR) read-write.
    func map(region index: Int) throws(DriverError) -> GuestBAR {
        let r = try region(index)
        guard r.flags & UInt32(VFIO_REGION_INFO_FLAG_MMAP) != 0 else {
            throw DriverError(.notMappable, "Region \(index) of \(address) cannot be mmapped.")
        }
        let p = mmap(nil, Int(r.size), PROT_READ | PROT_WRITE, MAP_SHARED, fd, off_t(r.offset))
        guard let p, p != MAP_FAILED else {
            throw DriverError.systemCall("mmap", Errno(rawValue: errno), "region \(index) of \(address)")
        }
        return GuestBAR(base: p, length: Int(r.size))
    }

    /// Reads `T` from PCI config space through the config region (`pread`).
    func config<T: FixedWidthInteger>(_ offset: Int, as: T.Type = T.self) throws(DriverError) -> T {
        let r = try region(VFIO_PCI_CONFIG_REGION_INDEX)
        var v: T = 0
        let n = pread(fd, &v, MemoryLayout<T>.size, off_t(r.offset) + off_t(offset))
        guard n == MemoryLayout<T>.size else { throw DriverError.systemCall("pread", Errno(rawValue: errno), "config") }
        return T(littleEndian: v)
    }

    /// Writes `T` to PCI config space through the config region (`pwrite`).
    func setConfig<T: FixedWidthInteger>(_ offset: Int, _ value: T) throws(DriverError) {
        let r = try region(VFIO_PCI_CONFIG_REGION_INDEX)
        var v = value.littleEndian
        let n = pwrite(fd, &v, MemoryLayout<T>.size, off_t(r.offset) + off_t(offset))
        guard n == MemoryLayout<T>.size else { throw DriverError.systemCall("pwrite", Errno(rawValue: errno), "config") }
    }

    /// Sets `PCI_COMMAND_MEMORY | PCI_COMMAND_MASTER`: vfio-pci leaves bus mastering off.
    func enableBusMaster() throws(DriverError) {
        let command: UInt16 = try config(Int(PCI_COMMAND))
        try setConfig(Int(PCI_COMMAND), command | UInt16(PCI_COMMAND_MEMORY | PCI_COMMAND_MASTER))
    }

    /// `VFIO_DEVICE_SET_IRQS` with `DATA_EVENTFD | ACTION_TRIGGER`: routes vectors
    /// `0..<eventFDs.count` of IRQ index `index` (MSI, MSI-X) to the eventfds.
    func routeInterrupts(index: Int, eventFDs: [Int32]) throws(DriverError) {
        let header = MemoryLayout<vfio_irq_set>.size
        let size = header + 4 * eventFDs.count
        let raw = UnsafeMutableRawPointer.allocate(byteCount: size, alignment: 8)
        defer { raw.deallocate() }
        let set = raw.bindMemory(to: vfio_irq_set.self, capacity: 1)
        set.pointee = vfio_irq_set()
        set.pointee.argsz = UInt32(size)
        set.pointee.flags = UInt32(VFIO_IRQ_SET_DATA_EVENTFD | VFIO_IRQ_SET_ACTION_TRIGGER)
        set.pointee.index = UInt32(index)
        set.pointee.start = 0
        set.pointee.count = UInt32(eventFDs.count)
        for (i, efd) in eventFDs.enumerated() { raw.storeBytes(of: efd, toByteOffset: header + 4 * i, as: Int32.self) }
        _ = try check(cvfio_device_set_irqs(fd, set), "VFIO_DEVICE_SET_IRQS")
    }

    /// `VFIO_DEVICE_SET_IRQS` with `DATA_NONE | ACTION_TRIGGER` and count 0: disables the index.
    func disableInterrupts(index: Int) throws(DriverError) {
        var set = vfio_irq_set()
        set.argsz = UInt32(MemoryLayout<vfio_irq_set>.size)
        set.flags = UInt32(VFIO_IRQ_SET_DATA_NONE | VFIO_IRQ_SET_ACTION_TRIGGER)
        set.index = UInt32(index)
        _ = try check(cvfio_device_set_irqs(fd, &set), "VFIO_DEVICE_SET_IRQS")
    }

    /// `VFIO_DEVICE_RESET`.
    func reset() throws(DriverError) {
        _ = try check(cvfio_device_reset(fd), "VFIO_DEVICE_RESET")
    }
}

/// An mmapped BAR as ``RegisterIO`` (volatile accesses through the shim).
struct GuestBAR: RegisterIO, ~Copyable, @unchecked Sendable {
    // @unchecked: a raw pointer to a mapping this value alone owns until deinit.
    let base: UnsafeMutableRawPointer
    let length: Int

    func read8(_ offset: Int) -> UInt8 { cvfio_mmio_read8(base, offset) }
    func read16(_ offset: Int) -> UInt16 { cvfio_mmio_read16(base, offset) }
    func read32(_ offset: Int) -> UInt32 { cvfio_mmio_read32(base, offset) }
    func read64(_ offset: Int) -> UInt64 { cvfio_mmio_read64(base, offset) }
    func write8(_ offset: Int, _ value: UInt8) { cvfio_mmio_write8(base, offset, value) }
    func write16(_ offset: Int, _ value: UInt16) { cvfio_mmio_write16(base, offset, value) }
    func write32(_ offset: Int, _ value: UInt32) { cvfio_mmio_write32(base, offset, value) }
    func write64(_ offset: Int, _ value: UInt64) { cvfio_mmio_write64(base, offset, value) }

    deinit { munmap(base, length) }
}

/// Turns a shim result (`-errno` on failure) into a ``DriverError`` naming the ioctl.
@discardableResult
func check(_ result: Int32, _ operation: String) throws(DriverError) -> Int32 {
    if result < 0 { throw DriverError.systemCall(operation, Errno(rawValue: -result)) }
    return result
}
