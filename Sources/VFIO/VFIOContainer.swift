import CVFIO
import Platform
import Synchronization
import SystemPackage

#if canImport(Glibc)
import Glibc
#endif

/// The IOMMU model a container uses (`VFIO_SET_IOMMU`).
public enum VFIOIOMMUType: UInt, Sendable, Hashable, CustomStringConvertible {
    /// `VFIO_TYPE1_IOMMU`: the original type1 interface.
    case type1 = 1
    /// `VFIO_TYPE1v2_IOMMU`: type1 with stricter unmap semantics (unmaps whole mappings only).
    case type1v2 = 3

    public var description: String { self == .type1v2 ? "type1v2" : "type1" }
}

/// A VFIO container (`/dev/vfio/vfio`): one IOMMU address space shared by every group attached
/// to it, so memory mapped once is seen by every engine in the container.
///
/// ```swift
/// let container = try VFIOContainer()
/// let device = try container.openDevice(PCIAddress("0000:00:04.0")!)
/// let memory = DMAMemory(spaces: [container])
/// let buffer = try memory.allocate(length: 1 << 20)
/// ```
///
/// The IOMMU (type1v2, else type1) is set when the first group is attached
/// (`VFIO_SET_IOMMU`), after which ``validIOVARanges`` reflects `VFIO_IOMMU_GET_INFO`'s
/// IOVA-range capability. Map DMA only once a device is open.
public final class VFIOContainer: DMAAddressSpace, Sendable {
    struct State {
        var groups: [Int: Weak] = [:]
        var attached: Set<Int> = []
        var iommuSet: VFIOIOMMUType? = nil
        var validRanges: [ClosedRange<UInt64>] = [0...UInt64.max]
        var pageSizes: UInt64 = 0
        var mappingsAvailable: Int? = nil
    }

    struct Weak: @unchecked Sendable {
        // @unchecked: a weak reference to a Sendable class, read only under the container's lock.
        weak var group: VFIOGroup?
    }

    /// The container's file descriptor.
    public let fd: Int32
    /// The IOMMU type this container uses (type1v2 when the kernel has it).
    public let iommuType: VFIOIOMMUType
    /// Discovery over the sysfs tree used to explain failures and find groups.
    public let discovery: PCIDiscovery
    let system: any VFIOSyscalls
    let state: Mutex<State>
    /// Serialises opening groups, so two threads asking for one group get the same object.
    private let opening = Mutex<Void>(())

    /// Opens the VFIO container and checks the API version and IOMMU support.
    ///
    /// The corresponding calls are `open("/dev/vfio/vfio")`, `VFIO_GET_API_VERSION` and
    /// `VFIO_CHECK_EXTENSION(VFIO_TYPE1v2_IOMMU / VFIO_TYPE1_IOMMU)`.
    ///
    /// - Parameters:
    ///   - sysfsRoot: the directory standing for `/sys`.
    ///   - devRoot: the directory standing for `/dev`.
    /// - Throws: ``DriverError`` `.notFound` (vfio not loaded), `.permissionDenied`,
    ///   `.unsupported` (API version), `.noIOMMU` (no type1 IOMMU).
    public convenience init(sysfsRoot: String = "/sys", devRoot: String = "/dev") throws(DriverError) {
        try self.init(system: LiveVFIOSyscalls(), discovery: PCIDiscovery(sysfsRoot: sysfsRoot, devRoot: devRoot))
    }

    init(system: any VFIOSyscalls, discovery: PCIDiscovery) throws(DriverError) {
        self.system = system
        self.discovery = discovery
        let path = discovery.devRoot + "/vfio/vfio"
        let fd = system.open(path, flags: O_RDWR)
        if fd < 0 {
            let e = Errno(rawValue: -fd)
            switch e {
            case .noSuchFileOrDirectory, .noSuchAddressOrDevice:
                throw DriverError(.notFound, errno: e,
                    "\(path) does not exist: the vfio modules are not loaded. Run `sudo modprobe vfio-pci`; if the IOMMU is off, add `intel_iommu=on iommu=pt` to the kernel command line and reboot.")
            case .permissionDenied, .notPermitted:
                throw PCIDiscovery.permissionProblem(path)
            default:
                throw DriverError.systemCall("open", e, path)
            }
        }
        let version = system.ioctl(fd, .getAPIVersion)
        guard version == VFIO_API_VERSION else {
            system.close(fd)
            if version < 0 { throw DriverError.systemCall("VFIO_GET_API_VERSION", Errno(rawValue: -version), path) }
            throw DriverError(.unsupported,
                "The kernel's VFIO API version is \(version); this driver speaks version \(VFIO_API_VERSION).")
        }
        if system.ioctl(fd, .checkExtension(UInt(VFIO_TYPE1v2_IOMMU))) > 0 {
            iommuType = .type1v2
        } else if system.ioctl(fd, .checkExtension(UInt(VFIO_TYPE1_IOMMU))) > 0 {
            iommuType = .type1
        } else {
            system.close(fd)
            throw DriverError(.noIOMMU,
                "VFIO offers no type1 IOMMU: the IOMMU is off or unsupported. Add `intel_iommu=on iommu=pt` (AMD: `amd_iommu=on iommu=pt`) to the kernel command line, enable VT-d/AMD-Vi in firmware, and reboot. (VFIO's unsafe no-IOMMU mode is not supported.)")
        }
        self.fd = fd
        state = Mutex(State())
    }

    deinit { system.close(fd) }

    // MARK: Properties from VFIO_IOMMU_GET_INFO

    /// The IOVA ranges the IOMMU accepts (`VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE`); the whole
    /// 64-bit space until a group is attached or when the kernel does not report them.
    public var validIOVARanges: [ClosedRange<UInt64>] { state.withLock { $0.validRanges } }

    /// The IOMMU page sizes as a bit mask (`iova_pgsizes`); 0 until a group is attached.
    public var pageSizes: UInt64 { state.withLock { $0.pageSizes } }

    /// How many more DMA mappings the kernel allows (`VFIO_IOMMU_TYPE1_INFO_DMA_AVAIL`), when reported.
    public var mappingsAvailable: Int? { state.withLock { $0.mappingsAvailable } }

    /// Whether the IOMMU has been set (at least one group attached).
    public var isIOMMUSet: Bool { state.withLock { $0.iommuSet != nil } }

    /// The numbers of the groups attached now.
    public var attachedGroups: [Int] { state.withLock { $0.attached.sorted() } }

    // MARK: Groups and devices

    /// Opens IOMMU group `number` and attaches it to this container; returns the group already
    /// open when there is one.
    ///
    /// - Throws: ``DriverError`` `.notFound`, `.permissionDenied`, `.busy`, `.groupNotViable`
    ///   (naming the devices that hold the group), or an ioctl failure.
    public func openGroup(_ number: Int) throws(DriverError) -> VFIOGroup {
        let result: Result<VFIOGroup, DriverError> = opening.withLock { _ in
            if let g = state.withLock({ $0.groups[number]?.group }) { return .success(g) }
            do throws(DriverError) {
                let group = try VFIOGroup(number: number, container: self)
                state.withLock { $0.groups[number] = Weak(group: group) }
                return .success(group)
            } catch {
                return .failure(error)
            }
        }
        return try result.get()
    }

    /// Opens the PCI device at `address`: finds its IOMMU group in sysfs, opens and attaches
    /// the group (once), and gets the device fd (`VFIO_GROUP_GET_DEVICE_FD`).
    ///
    /// - Throws: ``DriverError``: `.notFound`; `.noIOMMU` (no IOMMU group); `.wrongDriver`
    ///   (bound to `ioatdma`/`idxd`/...: run `netdma bind`); `.groupNotViable`;
    ///   `.permissionDenied`; `.busy`.
    public func openDevice(_ address: PCIAddress) throws(DriverError) -> VFIODevice {
        let d = try discovery.device(at: address)
        guard let number = d.iommuGroup else { throw discovery.readiness(of: d).problem! }
        if d.driver != "vfio-pci" { throw discovery.readiness(of: d).problem! }
        let group = try openGroup(number)
        return try group.openDevice(address)
    }

    /// The IOVA policy for a device that can address `dmaMaskBits` bits: allocation from 1 MiB
    /// up to the mask (``DMAMemory`` also keeps inside ``validIOVARanges``).
    public static func iovaPolicy(dmaMaskBits: Int) -> IOVAPolicy {
        precondition(dmaMaskBits > 20 && dmaMaskBits <= 64, "DMA mask must be 21…64 bits")
        let top: UInt64 = dmaMaskBits == 64 ? .max : (1 << UInt64(dmaMaskBits)) - 1
        return .allocate(in: 0x10_0000...top)
    }

    /// Called by a group once `VFIO_GROUP_SET_CONTAINER` succeeded: sets the IOMMU for the
    /// first group and reads its properties.
    func groupAttached(_ number: Int) throws(DriverError) {
        let needsIOMMU = state.withLock { s -> Bool in
            s.attached.insert(number)
            return s.iommuSet == nil
        }
        guard needsIOMMU else { return }
        var r = system.ioctl(fd, .setIOMMU(iommuType.rawValue))
        var used = iommuType
        if r < 0 && iommuType == .type1v2 && system.ioctl(fd, .checkExtension(UInt(VFIO_TYPE1_IOMMU))) > 0 {
            r = system.ioctl(fd, .setIOMMU(VFIOIOMMUType.type1.rawValue))
            used = .type1
        }
        if r < 0 {
            state.withLock { _ = $0.attached.remove(number) }
            let e = Errno(rawValue: -r)
            throw DriverError(.noIOMMU, errno: e,
                "VFIO_SET_IOMMU(\(used)) failed for group \(number): the IOMMU is not usable. Check that the kernel command line has `intel_iommu=on iommu=pt` and `dmesg | grep -i -e DMAR -e IOMMU`.")
        }
        let info = readIOMMUInfo()
        state.withLock { s in
            s.iommuSet = used
            s.pageSizes = info.pageSizes
            s.validRanges = info.ranges.isEmpty ? [0...UInt64.max] : info.ranges
            s.mappingsAvailable = info.available
        }
    }

    /// Called by a group when it leaves the container. The kernel drops the IOMMU with the
    /// last group, so the next attach sets it again.
    func groupDetached(_ number: Int) {
        state.withLock { s in
            s.attached.remove(number)
            s.groups[number] = nil
            if s.attached.isEmpty {
                s.iommuSet = nil
                s.validRanges = [0...UInt64.max]
            }
        }
    }

    /// `VFIO_IOMMU_GET_INFO` with its capability chain.
    func readIOMMUInfo() -> (pageSizes: UInt64, ranges: [ClosedRange<UInt64>], available: Int?) {
        var size = MemoryLayout<vfio_iommu_type1_info>.size
        for _ in 0..<2 {
            let buffer = UnsafeMutableRawPointer.allocate(byteCount: size, alignment: 8)
            defer { buffer.deallocate() }
            memset(buffer, 0, size)
            buffer.storeBytes(of: UInt32(size), as: UInt32.self)  // argsz
            guard system.ioctl(fd, .iommuGetInfo(buffer)) >= 0 else { return (0, [], nil) }
            let info = buffer.load(as: vfio_iommu_type1_info.self)
            if Int(info.argsz) > size && info.flags & UInt32(VFIO_IOMMU_INFO_CAPS) != 0 {
                size = Int(info.argsz)
                continue
            }
            var ranges: [ClosedRange<UInt64>] = []
            var available: Int? = nil
            let raw = UnsafeRawBufferPointer(start: buffer, count: size)
            if info.flags & UInt32(VFIO_IOMMU_INFO_CAPS) != 0 {
                for cap in CapabilityChain(raw, first: Int(info.cap_offset)) {
                    switch Int32(cap.id) {
                    case VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE:
                        let n = Int(raw.loadU32(cap.offset + 8))
                        for i in 0..<n {
                            let at = cap.offset + 16 + i * 16
                            guard at + 16 <= size else { break }
                            let lo = raw.loadU64(at), hi = raw.loadU64(at + 8)
                            if lo <= hi { ranges.append(lo...hi) }
                        }
                    case VFIO_IOMMU_TYPE1_INFO_DMA_AVAIL:
                        available = Int(raw.loadU32(cap.offset + 8))
                    default: break
                    }
                }
            }
            return (info.iova_pgsizes, ranges, available)
        }
        return (0, [], nil)
    }

    // MARK: DMAAddressSpace

    /// Maps `length` bytes at `address` to `iova` for every device in the container.
    ///
    /// The corresponding ioctl is `VFIO_IOMMU_MAP_DMA`.
    ///
    /// - Throws: ``DriverError`` `.invalidMapping` (no device open yet, overlap, misalignment,
    ///   IOVA outside the valid ranges), `.memlockLimit` (RLIMIT_MEMLOCK), `.outOfMemory`
    ///   (the kernel's mapping limit).
    public func map(_ address: UnsafeMutableRawPointer, length: Int, iova: UInt64, access: DMAAccess) throws(DriverError) {
        guard isIOMMUSet else {
            throw DriverError(.invalidMapping,
                "Cannot map DMA memory before a device is open: VFIO sets the IOMMU when the first group is attached.")
        }
        var m = vfio_iommu_type1_dma_map()
        m.argsz = UInt32(MemoryLayout<vfio_iommu_type1_dma_map>.size)
        m.flags = (access.contains(.read) ? UInt32(VFIO_DMA_MAP_FLAG_READ) : 0)
            | (access.contains(.write) ? UInt32(VFIO_DMA_MAP_FLAG_WRITE) : 0)
        m.vaddr = UInt64(UInt(bitPattern: address))
        m.iova = iova
        m.size = UInt64(length)
        let r = withUnsafeMutablePointer(to: &m) { system.ioctl(fd, .mapDMA($0)) }
        guard r < 0 else { return }
        let e = Errno(rawValue: -r)
        let what = "\(length) bytes at 0x\(String(UInt(bitPattern: address), radix: 16)) to IOVA 0x\(String(iova, radix: 16))"
        switch e {
        case .noMemory:
            throw MemoryLock.exceeded(length: length, limit: MemoryLock.limit, errno: e)
        case .fileExists:
            throw DriverError(.invalidMapping, errno: e, "VFIO_IOMMU_MAP_DMA of \(what): overlaps an existing mapping.")
        case .invalidArgument:
            throw DriverError(.invalidMapping, errno: e,
                "VFIO_IOMMU_MAP_DMA of \(what) was refused: address, IOVA and length must be page-aligned and inside the valid IOVA ranges \(describe(validIOVARanges)).")
        case .noSpace:
            throw DriverError(.outOfMemory, errno: e,
                "VFIO_IOMMU_MAP_DMA of \(what): the kernel's DMA mapping limit is reached (vfio_iommu_type1 dma_entry_limit). Use fewer, larger buffers.")
        default:
            throw DriverError.systemCall("VFIO_IOMMU_MAP_DMA", e, what)
        }
    }

    /// Removes the mapping at `iova` (`VFIO_IOMMU_UNMAP_DMA`).
    ///
    /// - Throws: ``DriverError`` `.unmappedAddress` when nothing was mapped there (the kernel
    ///   unmapped 0 bytes), `.invalidMapping` when the range splits a mapping.
    public func unmap(iova: UInt64, length: Int) throws(DriverError) {
        var u = vfio_iommu_type1_dma_unmap()
        u.argsz = UInt32(MemoryLayout<vfio_iommu_type1_dma_unmap>.size)
        u.iova = iova
        u.size = UInt64(length)
        let r = withUnsafeMutablePointer(to: &u) { system.ioctl(fd, .unmapDMA($0)) }
        if r < 0 {
            let e = Errno(rawValue: -r)
            if e == .invalidArgument {
                throw DriverError(.invalidMapping, errno: e,
                    "VFIO_IOMMU_UNMAP_DMA of IOVA 0x\(String(iova, radix: 16)) (\(length) bytes): must cover whole mappings.")
            }
            throw DriverError.systemCall("VFIO_IOMMU_UNMAP_DMA", e)
        }
        if u.size == 0 {
            throw DriverError(.unmappedAddress, "Nothing is mapped at IOVA 0x\(String(iova, radix: 16)).")
        }
    }
}

func describe(_ ranges: [ClosedRange<UInt64>]) -> String {
    ranges.map { "0x\(String($0.lowerBound, radix: 16))…0x\(String($0.upperBound, radix: 16))" }.joined(separator: ", ")
}

/// A walk over a VFIO capability chain (`struct vfio_info_cap_header`: id, version, next),
/// where `next` is an offset from the start of the info buffer and 0 ends the chain.
struct CapabilityChain: Sequence, IteratorProtocol {
    struct Capability { var id: UInt16; var version: UInt16; var offset: Int }
    let buffer: UnsafeRawBufferPointer
    var cursor: Int
    var steps = 0

    init(_ buffer: UnsafeRawBufferPointer, first: Int) {
        self.buffer = buffer
        self.cursor = first
    }

    mutating func next() -> Capability? {
        // The header is 8 bytes; guard against loops and offsets outside the buffer.
        guard cursor != 0, cursor + 8 <= buffer.count, cursor % 4 == 0, steps < 64 else { return nil }
        steps += 1
        let at = cursor
        let id = buffer.loadUnaligned(fromByteOffset: at, as: UInt16.self)
        let version = buffer.loadUnaligned(fromByteOffset: at + 2, as: UInt16.self)
        let n = Int(buffer.loadUnaligned(fromByteOffset: at + 4, as: UInt32.self))
        cursor = n > at ? n : 0
        return Capability(id: id, version: version, offset: at)
    }
}

extension UnsafeRawBufferPointer {
    func loadU32(_ at: Int) -> UInt32 { at + 4 <= count ? loadUnaligned(fromByteOffset: at, as: UInt32.self) : 0 }
    func loadU64(_ at: Int) -> UInt64 { at + 8 <= count ? loadUnaligned(fromByteOffset: at, as: UInt64.self) : 0 }
}
