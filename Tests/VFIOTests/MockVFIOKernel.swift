import CVFIO
import Glibc
import Platform
import Synchronization
@testable import VFIO

/// Plays the kernel's part of VFIO for tests: containers, groups, devices with regions backed
/// by a memfd (so mmapped BARs and pread/pwrite see the same bytes), IRQs, and injected errors.
final class MockVFIOKernel: VFIOSyscalls, @unchecked Sendable {
    // @unchecked: all mutable state is behind `lock`.
    struct Region {
        var size: Int
        var flags: UInt32
        var sparse: [Range<Int>]? = nil
    }
    struct Device {
        var flags: UInt32 = UInt32(VFIO_DEVICE_FLAGS_PCI)
        var regions: [Int: Region] = [:]
        var irqs: [Int: (count: Int, flags: UInt32)] = [:]
        var memfd: Int32 = -1
    }
    enum Handle { case container, group(Int), device(String) }

    struct State {
        var log: [String] = []
        var failures: [String: Int32] = [:]
        var extensions: Set<UInt> = [UInt(VFIO_TYPE1_IOMMU), UInt(VFIO_TYPE1v2_IOMMU)]
        var apiVersion: Int32 = VFIO_API_VERSION
        var viable: [Int: Bool] = [:]
        var groupDevices: [Int: [String]] = [:]
        var devices: [String: Device] = [:]
        var handles: [Int32: Handle] = [:]
        var nextFD: Int32 = 1000
        var iommu: UInt? = nil
        var groupsInContainer: Set<Int> = []
        var validRanges: [(UInt64, UInt64)] = [(0, 0xFEDF_FFFF), (0xFEF0_0000, 0xFFFF_FFFF_FFFF)]
        var dmaAvailable: UInt32 = 65535
        var mappings: [(iova: UInt64, size: UInt64, vaddr: UInt64)] = []
        var irqSets: [(index: Int, flags: UInt32, start: Int, count: Int, fds: [Int32])] = []
        var resets = 0
    }
    let lock = Mutex(State())
    static let regionShift = 28

    init() {}

    deinit {
        lock.withLock { s in for d in s.devices.values where d.memfd >= 0 { Glibc.close(d.memfd) } }
    }

    // MARK: configuration

    func addGroup(_ number: Int, viable: Bool = true, devices: [String]) {
        lock.withLock { s in
            s.viable[number] = viable
            s.groupDevices[number] = devices
            for name in devices {
                var d = Device()
                d.regions[0] = Region(size: 0x4000, flags: UInt32(VFIO_REGION_INFO_FLAG_READ | VFIO_REGION_INFO_FLAG_WRITE | VFIO_REGION_INFO_FLAG_MMAP))
                d.regions[Int(VFIO_PCI_CONFIG_REGION_INDEX)] = Region(size: 256, flags: UInt32(VFIO_REGION_INFO_FLAG_READ | VFIO_REGION_INFO_FLAG_WRITE))
                d.irqs = [0: (1, UInt32(VFIO_IRQ_INFO_EVENTFD)), 1: (1, UInt32(VFIO_IRQ_INFO_EVENTFD)),
                          2: (8, UInt32(VFIO_IRQ_INFO_EVENTFD | VFIO_IRQ_INFO_NORESIZE))]
                d.memfd = cvfio_memfd_create("mock-vfio", 0)
                precondition(d.memfd >= 0)
                ftruncate(d.memfd, off_t(9 << MockVFIOKernel.regionShift))
                s.devices[name] = d
            }
        }
    }

    func configure(_ body: (inout State) -> Void) { lock.withLock { body(&$0) } }
    func fail(_ op: String, _ errno: Int32) { lock.withLock { $0.failures[op] = errno } }
    var log: [String] { lock.withLock { $0.log } }
    var state: State { lock.withLock { $0 } }

    func memfd(of device: String) -> Int32 { lock.withLock { $0.devices[device]!.memfd } }
    func regionOffset(_ index: Int) -> Int64 { Int64(index) << Int64(MockVFIOKernel.regionShift) }

    // MARK: VFIOSyscalls

    func open(_ path: String, flags: Int32) -> Int32 {
        lock.withLock { s in
            s.log.append("open \(path)")
            if let e = s.failures["open \(path)"] { return -e }
            let handle: Handle
            if path.hasSuffix("/vfio/vfio") {
                handle = .container
            } else if let n = path.split(separator: "/").last.flatMap({ Int($0) }), s.viable[n] != nil {
                handle = .group(n)
            } else {
                return -ENOENT
            }
            let fd = s.nextFD
            s.nextFD += 1
            s.handles[fd] = handle
            return fd
        }
    }

    func close(_ fd: Int32) {
        lock.withLock { s in
            s.log.append("close \(fd)")
            s.handles[fd] = nil
        }
    }

    func ioctl(_ fd: Int32, _ request: VFIOIoctl) -> Int32 {
        lock.withLock { s in
            var entry = request.name
            switch request {
            case .checkExtension(let e), .setIOMMU(let e): entry += "(\(e))"
            case .groupGetDeviceFD(let n): entry += "(\(n))"
            case .deviceGetRegionInfo(let p): entry += "(\(p.load(fromByteOffset: 8, as: UInt32.self)))"
            default: break
            }
            s.log.append(entry)
            if let e = s.failures[entry] ?? s.failures[request.name] { return -e }
            guard let handle = s.handles[fd] else { return -EBADF }
            switch (handle, request) {
            case (.container, .getAPIVersion):
                return s.apiVersion
            case (.container, .checkExtension(let e)):
                return s.extensions.contains(e) ? 1 : 0
            case (.container, .setIOMMU(let t)):
                guard !s.groupsInContainer.isEmpty else { return -EINVAL }
                guard s.extensions.contains(t) else { return -EINVAL }
                s.iommu = t
                return 0
            case (.container, .iommuGetInfo(let p)):
                return Self.iommuInfo(p, s)
            case (.container, .mapDMA(let m)):
                guard s.iommu != nil else { return -EINVAL }
                let map = m.pointee
                if map.iova & 0xFFF != 0 || map.size & 0xFFF != 0 || map.size == 0 { return -EINVAL }
                let end = map.iova + map.size - 1
                if s.mappings.contains(where: { map.iova <= $0.iova + $0.size - 1 && $0.iova <= end }) { return -EEXIST }
                s.mappings.append((map.iova, map.size, map.vaddr))
                return 0
            case (.container, .unmapDMA(let u)):
                let iova = u.pointee.iova
                if let i = s.mappings.firstIndex(where: { $0.iova == iova }) {
                    u.pointee.size = s.mappings[i].size
                    s.mappings.remove(at: i)
                } else {
                    u.pointee.size = 0
                }
                return 0
            case (.group(let n), .groupGetStatus(let st)):
                st.pointee.flags = (s.viable[n] == true ? UInt32(VFIO_GROUP_FLAGS_VIABLE) : 0)
                    | (s.groupsInContainer.contains(n) ? UInt32(VFIO_GROUP_FLAGS_CONTAINER_SET) : 0)
                return 0
            case (.group(let n), .groupSetContainer(let c)):
                guard case .container = s.handles[c] else { return -EBADF }
                if s.groupsInContainer.contains(n) { return -EBUSY }
                s.groupsInContainer.insert(n)
                return 0
            case (.group(let n), .groupUnsetContainer):
                s.groupsInContainer.remove(n)
                if s.groupsInContainer.isEmpty { s.iommu = nil; s.mappings = [] }
                return 0
            case (.group(let n), .groupGetDeviceFD(let name)):
                guard s.groupDevices[n]?.contains(name) == true else { return -EINVAL }
                let dfd = s.nextFD
                s.nextFD += 1
                s.handles[dfd] = .device(name)
                return dfd
            case (.device(let name), .deviceGetInfo(let i)):
                let d = s.devices[name]!
                i.pointee.flags = d.flags
                i.pointee.num_regions = 9
                i.pointee.num_irqs = 5
                return 0
            case (.device(let name), .deviceGetRegionInfo(let p)):
                return Self.regionInfo(p, s.devices[name]!)
            case (.device(let name), .deviceGetIRQInfo(let i)):
                let irq = s.devices[name]!.irqs[Int(i.pointee.index)] ?? (0, 0)
                i.pointee.count = UInt32(irq.count)
                i.pointee.flags = irq.flags
                return 0
            case (.device(let name), .deviceSetIRQs(let p)):
                let set = p.load(as: vfio_irq_set.self)
                let irq = s.devices[name]!.irqs[Int(set.index)] ?? (0, 0)
                if Int(set.start) + Int(set.count) > irq.count { return -EINVAL }
                var fds: [Int32] = []
                if set.flags & UInt32(VFIO_IRQ_SET_DATA_EVENTFD) != 0 {
                    for i in 0..<Int(set.count) {
                        fds.append(p.load(fromByteOffset: MemoryLayout<vfio_irq_set>.size + 4 * i, as: Int32.self))
                    }
                }
                s.irqSets.append((Int(set.index), set.flags, Int(set.start), Int(set.count), fds))
                return 0
            case (.device(let name), .deviceReset):
                guard s.devices[name]!.flags & UInt32(VFIO_DEVICE_FLAGS_RESET) != 0 else { return -EINVAL }
                s.resets += 1
                return 0
            default:
                return -ENOTTY
            }
        }
    }

    func pread(_ fd: Int32, _ buffer: UnsafeMutableRawBufferPointer, offset: Int64) -> Int {
        guard let memfd = deviceMemfd(fd) else { return -Int(EBADF) }
        let n = Glibc.pread(memfd, buffer.baseAddress, buffer.count, off_t(offset))
        return n < 0 ? -Int(errno) : n
    }

    func pwrite(_ fd: Int32, _ buffer: UnsafeRawBufferPointer, offset: Int64) -> Int {
        guard let memfd = deviceMemfd(fd) else { return -Int(EBADF) }
        let n = Glibc.pwrite(memfd, buffer.baseAddress, buffer.count, off_t(offset))
        return n < 0 ? -Int(errno) : n
    }

    func mmap(_ address: UnsafeMutableRawPointer?, length: Int, prot: Int32, flags: Int32, fd: Int32,
              offset: Int64) -> (UnsafeMutableRawPointer?, Int32) {
        let failure: Int32? = lock.withLock { s in
            s.log.append("mmap \(length) @\(offset)\(flags & MAP_FIXED != 0 ? " fixed" : "")")
            return s.failures["mmap"]
        }
        if let failure { return (nil, failure) }
        let realFD = fd < 0 ? Int32(-1) : (deviceMemfd(fd) ?? -2)
        if realFD == -2 { return (nil, EBADF) }
        let p = Glibc.mmap(address, length, prot, flags, realFD, off_t(offset))
        guard let p, p != MAP_FAILED else { return (nil, errno) }
        return (p, 0)
    }

    private func deviceMemfd(_ fd: Int32) -> Int32? {
        lock.withLock { s in
            guard case .device(let name) = s.handles[fd] else { return nil }
            return s.devices[name]?.memfd
        }
    }

    // MARK: info buffers with capability chains

    private static func iommuInfo(_ p: UnsafeMutableRawPointer, _ s: State) -> Int32 {
        let argsz = Int(p.load(as: UInt32.self))
        let base = MemoryLayout<vfio_iommu_type1_info>.size
        let rangeCap = 16 + 16 * s.validRanges.count
        let availCap = 12
        let needed = base + rangeCap + 4 + availCap
        var info = vfio_iommu_type1_info()
        info.argsz = UInt32(needed)
        info.flags = UInt32(VFIO_IOMMU_INFO_PGSIZES | VFIO_IOMMU_INFO_CAPS)
        info.iova_pgsizes = 0x4020_1000
        info.cap_offset = 0
        if argsz >= needed {
            info.cap_offset = UInt32(base)
            // IOVA range capability, then the DMA-available one (4-byte aligned).
            p.storeBytes(of: UInt16(VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE), toByteOffset: base, as: UInt16.self)
            p.storeBytes(of: UInt16(1), toByteOffset: base + 2, as: UInt16.self)
            p.storeBytes(of: UInt32(base + rangeCap + 4), toByteOffset: base + 4, as: UInt32.self)
            p.storeBytes(of: UInt32(s.validRanges.count), toByteOffset: base + 8, as: UInt32.self)
            for (i, r) in s.validRanges.enumerated() {
                p.storeBytes(of: r.0, toByteOffset: base + 16 + 16 * i, as: UInt64.self)
                p.storeBytes(of: r.1, toByteOffset: base + 24 + 16 * i, as: UInt64.self)
            }
            let a = base + rangeCap + 4
            p.storeBytes(of: UInt16(VFIO_IOMMU_TYPE1_INFO_DMA_AVAIL), toByteOffset: a, as: UInt16.self)
            p.storeBytes(of: UInt16(1), toByteOffset: a + 2, as: UInt16.self)
            p.storeBytes(of: UInt32(0), toByteOffset: a + 4, as: UInt32.self)
            p.storeBytes(of: s.dmaAvailable, toByteOffset: a + 8, as: UInt32.self)
        }
        p.storeBytes(of: info, as: vfio_iommu_type1_info.self)
        return 0
    }

    private static func regionInfo(_ p: UnsafeMutableRawPointer, _ d: Device) -> Int32 {
        let argsz = Int(p.load(as: UInt32.self))
        let index = Int(p.load(fromByteOffset: 8, as: UInt32.self))
        guard index < 9 else { return -EINVAL }
        let r = d.regions[index] ?? Region(size: 0, flags: 0)
        var info = vfio_region_info()
        info.index = UInt32(index)
        info.size = UInt64(r.size)
        info.offset = UInt64(index) << UInt64(regionShift)
        info.flags = r.flags
        let base = MemoryLayout<vfio_region_info>.size
        var needed = base
        if let sparse = r.sparse {
            info.flags |= UInt32(VFIO_REGION_INFO_FLAG_CAPS)
            needed = base + 16 + 16 * sparse.count
            if argsz >= needed {
                info.cap_offset = UInt32(base)
                p.storeBytes(of: UInt16(VFIO_REGION_INFO_CAP_SPARSE_MMAP), toByteOffset: base, as: UInt16.self)
                p.storeBytes(of: UInt16(1), toByteOffset: base + 2, as: UInt16.self)
                p.storeBytes(of: UInt32(0), toByteOffset: base + 4, as: UInt32.self)
                p.storeBytes(of: UInt32(sparse.count), toByteOffset: base + 8, as: UInt32.self)
                for (i, a) in sparse.enumerated() {
                    p.storeBytes(of: UInt64(a.lowerBound), toByteOffset: base + 16 + 16 * i, as: UInt64.self)
                    p.storeBytes(of: UInt64(a.count), toByteOffset: base + 24 + 16 * i, as: UInt64.self)
                }
            }
        }
        info.argsz = UInt32(needed)
        p.storeBytes(of: info, as: vfio_region_info.self)
        return 0
    }
}
