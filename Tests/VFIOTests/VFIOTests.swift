import CVFIO
import Glibc
import Hardware
import Platform
import Testing
@testable import VFIO

let engineBDF = PCIAddress("0000:00:04.0")!
let cbdma = PCIID(vendor: 0x8086, device: 0x0B00)

/// A fake machine: sysfs with one engine in group 7 bound to vfio-pci, and the mock kernel.
struct Machine {
    let tree: FakeSysfsTree
    let kernel: MockVFIOKernel
    var discovery: PCIDiscovery {
        PCIDiscovery(sysfsRoot: tree.sysfsRoot, devRoot: tree.devRoot, stateDirectory: tree.stateDirectory)
    }

    init(driver: String = "vfio-pci", group: Int? = 7, viable: Bool = true) throws {
        tree = try FakeSysfsTree()
        try tree.addDevice(engineBDF, id: cbdma, driver: driver, iommuGroup: group, numaNode: 0, vfioNode: true)
        kernel = MockVFIOKernel()
        if let group { kernel.addGroup(group, viable: viable, devices: [engineBDF.description]) }
    }

    func container() throws(DriverError) -> VFIOContainer {
        try VFIOContainer(system: kernel, discovery: discovery)
    }
}

func expectError(_ code: DriverError.Code, mentioning words: [String] = [], _ body: () throws -> Void,
                 sourceLocation: SourceLocation = #_sourceLocation) {
    do {
        try body()
        Issue.record("expected \(code), got success", sourceLocation: sourceLocation)
    } catch let error as DriverError {
        #expect(error.code == code, "\(error)", sourceLocation: sourceLocation)
        for w in words { #expect(error.message.contains(w), "message lacks '\(w)': \(error.message)", sourceLocation: sourceLocation) }
    } catch {
        Issue.record("expected DriverError \(code), got \(error)", sourceLocation: sourceLocation)
    }
}

@Suite struct VFIOSequenceTests {
    @Test func openDeviceRunsTheKernelSequenceInOrder() throws {
        let m = try Machine()
        let container = try m.container()
        let device = try container.openDevice(engineBDF)
        let bar = try device.mapBAR(0)
        #expect(bar.length == 0x4000)
        let dev = m.tree.devRoot
        #expect(m.kernel.log.filter { !$0.hasPrefix("close") } == [
            "open \(dev)/vfio/vfio",
            "VFIO_GET_API_VERSION",
            "VFIO_CHECK_EXTENSION(3)",
            "open \(dev)/vfio/7",
            "VFIO_GROUP_GET_STATUS",
            "VFIO_GROUP_SET_CONTAINER",
            "VFIO_SET_IOMMU(3)",
            "VFIO_IOMMU_GET_INFO",
            "VFIO_IOMMU_GET_INFO",  // again with room for the capability chain
            "VFIO_GROUP_GET_DEVICE_FD(0000:00:04.0)",
            "VFIO_DEVICE_GET_INFO",
            "VFIO_DEVICE_GET_REGION_INFO(7)",
            "VFIO_DEVICE_GET_REGION_INFO(0)",
            "mmap 16384 @0",
        ])
        #expect(container.iommuType == .type1v2)
        #expect(container.attachedGroups == [7])
    }

    @Test func iommuInfoCapabilityChainGivesRangesPageSizesAndAvailability() throws {
        let m = try Machine()
        let container = try m.container()
        #expect(container.validIOVARanges == [0...UInt64.max])  // before any group
        let device = try container.openDevice(engineBDF)
        #expect(container.validIOVARanges == [0...0xFEDF_FFFF, 0xFEF0_0000...0xFFFF_FFFF_FFFF])
        #expect(container.pageSizes == 0x4020_1000)
        #expect(container.mappingsAvailable == 65535)
        _ = device
    }

    @Test func fallsBackToType1WhenType1v2IsMissing() throws {
        let m = try Machine()
        m.kernel.configure { $0.extensions = [UInt(VFIO_TYPE1_IOMMU)] }
        let container = try m.container()
        #expect(container.iommuType == .type1)
        let device = try container.openDevice(engineBDF)
        #expect(m.kernel.log.contains("VFIO_SET_IOMMU(1)"))
        _ = device
    }

    @Test func fallsBackToType1WhenSettingType1v2Fails() throws {
        let m = try Machine()
        m.kernel.fail("VFIO_SET_IOMMU(3)", EINVAL)
        let container = try m.container()
        let device = try container.openDevice(engineBDF)
        #expect(m.kernel.state.iommu == UInt(VFIO_TYPE1_IOMMU))
        _ = device
    }

    @Test func twoGroupsShareOneContainerAndOneIOMMU() throws {
        let m = try Machine()
        let second = PCIAddress("0000:00:05.0")!
        try m.tree.addDevice(second, id: PCIID(vendor: 0x8086, device: 0x0B25), driver: "vfio-pci", iommuGroup: 9, vfioNode: true)
        m.kernel.addGroup(9, devices: [second.description])
        let container = try m.container()
        let a = try container.openDevice(engineBDF)
        let b = try container.openDevice(second)
        #expect(container.attachedGroups == [7, 9])
        #expect(m.kernel.log.filter { $0.hasPrefix("VFIO_SET_IOMMU") }.count == 1)
        #expect(a.group.container === b.group.container)
        // Opening another device of an open group reuses the group.
        #expect(try container.openGroup(7) === a.group)
    }

    @Test func groupLeavesContainerWhenLastDeviceGoes() throws {
        let m = try Machine()
        let container = try m.container()
        do {
            let d = try container.openDevice(engineBDF)
            #expect(container.isIOMMUSet)
            _ = d
        }
        #expect(container.attachedGroups.isEmpty)
        #expect(!container.isIOMMUSet)
        #expect(m.kernel.log.contains("VFIO_GROUP_UNSET_CONTAINER"))
    }
}

@Suite struct VFIOErrorTests {
    @Test func containerPermissionPointsAtUdevRule() throws {
        let m = try Machine()
        m.kernel.fail("open \(m.tree.devRoot)/vfio/vfio", EACCES)
        expectError(.permissionDenied, mentioning: ["udev", "root"]) { _ = try m.container() }
    }

    @Test func missingContainerNodeSaysLoadVFIO() throws {
        let m = try Machine()
        m.kernel.fail("open \(m.tree.devRoot)/vfio/vfio", ENOENT)
        expectError(.notFound, mentioning: ["modprobe vfio-pci", "intel_iommu=on"]) { _ = try m.container() }
    }

    @Test func wrongAPIVersionIsUnsupported() throws {
        let m = try Machine()
        m.kernel.configure { $0.apiVersion = 1 }
        expectError(.unsupported, mentioning: ["version is 1"]) { _ = try m.container() }
    }

    @Test func noType1IOMMUPointsAtKernelCommandLine() throws {
        let m = try Machine()
        m.kernel.configure { $0.extensions = [] }
        expectError(.noIOMMU, mentioning: ["intel_iommu=on iommu=pt"]) { _ = try m.container() }
    }

    @Test func deviceWithoutIOMMUGroupPointsAtKernelCommandLine() throws {
        let m = try Machine(driver: "ioatdma", group: nil)
        let container = try m.container()
        expectError(.noIOMMU, mentioning: ["intel_iommu=on iommu=pt"]) { _ = try container.openDevice(engineBDF) }
    }

    @Test(arguments: ["ioatdma", "idxd"])
    func deviceOnKernelDriverPointsAtNetdmaBind(driver: String) throws {
        let m = try Machine(driver: driver)
        let container = try m.container()
        expectError(.wrongDriver, mentioning: [driver, "netdma bind 0000:00:04.0"]) { _ = try container.openDevice(engineBDF) }
        #expect(!m.kernel.log.contains("open \(m.tree.devRoot)/vfio/7"))
    }

    @Test func groupPermissionPointsAtUdevRule() throws {
        let m = try Machine()
        m.kernel.fail("open \(m.tree.devRoot)/vfio/7", EACCES)
        let container = try m.container()
        expectError(.permissionDenied, mentioning: ["/vfio/7", "udev/60-netdma-vfio.rules", "vfio"]) {
            _ = try container.openDevice(engineBDF)
        }
    }

    @Test func busyGroupSaysAnotherProcessOwnsIt() throws {
        let m = try Machine()
        m.kernel.fail("open \(m.tree.devRoot)/vfio/7", EBUSY)
        let container = try m.container()
        expectError(.busy, mentioning: ["another process"]) { _ = try container.openDevice(engineBDF) }
    }

    @Test func notViableGroupNamesTheOtherDevices() throws {
        let m = try Machine(viable: false)
        let nic = PCIAddress("0000:00:04.1")!
        let bridge = PCIAddress("0000:00:01.0")!
        try m.tree.addDevice(nic, id: PCIID(vendor: 0x8086, device: 0x10D3), driver: "e1000e", iommuGroup: 7)
        try m.tree.addDevice(bridge, id: PCIID(vendor: 0x8086, device: 0x2F02), driver: "pcieport", iommuGroup: 7, classCode: 0x060400)
        let container = try m.container()
        do {
            _ = try container.openDevice(engineBDF)
            Issue.record("expected groupNotViable")
        } catch {
            #expect(error.code == .groupNotViable)
            #expect(error.message.contains("0000:00:04.1 (e1000e)"))
            #expect(!error.message.contains("0000:00:01.0"), "bridges on pcieport do not block a group")
            #expect(error.message.contains("netdma bind --force 0000:00:04.1"))
        }
        #expect(!m.kernel.log.contains("VFIO_GROUP_SET_CONTAINER"))
    }

    @Test func missingGroupNodeExplainsFromSysfs() throws {
        let m = try Machine()
        m.kernel.fail("open \(m.tree.devRoot)/vfio/7", ENOENT)
        let container = try m.container()
        expectError(.notFound, mentioning: ["/vfio/7"]) { _ = try container.openDevice(engineBDF) }
    }

    @Test func deviceNotInGroupIsNotFound() throws {
        let m = try Machine()
        let container = try m.container()
        let group = try container.openGroup(7)
        expectError(.notFound, mentioning: ["group 7", "0000:00:04.0"]) { _ = try group.openDevice(PCIAddress("0000:00:09.0")!) }
    }

    @Test func unmappableBARSaysSo() throws {
        let m = try Machine()
        m.kernel.configure { $0.devices[engineBDF.description]!.regions[2] = .init(size: 0x100, flags: UInt32(VFIO_REGION_INFO_FLAG_READ)) }
        let device = try m.container().openDevice(engineBDF)
        expectError(.notMappable, mentioning: ["BAR 2", "cannot be mmapped"]) { _ = try device.mapBAR(2) }
        expectError(.notFound, mentioning: ["BAR 3"]) { _ = try device.mapBAR(3) }
    }

    @Test func unmappableRegionIsReachableThroughTheFD() throws {
        let m = try Machine()
        m.kernel.configure { $0.devices[engineBDF.description]!.regions[2] = .init(size: 0x100, flags: UInt32(VFIO_REGION_INFO_FLAG_READ | VFIO_REGION_INFO_FLAG_WRITE)) }
        let device = try m.container().openDevice(engineBDF)
        let io = try device.regionIO(2)
        io.write32(0x10, 0xA1B2_C3D4)
        io.write64(0x18, 0x1_0000_0002)
        var v: UInt32 = 0
        _ = Glibc.pread(m.kernel.memfd(of: engineBDF.description), &v, 4, off_t(m.kernel.regionOffset(2) + 0x10))
        #expect(v == 0xA1B2_C3D4)
        #expect(io.read16(0x12) == 0xA1B2 && io.read8(0x10) == 0xD4)
        #expect(io.read64Split(0x18) == 0x1_0000_0002)
        #expect(io.length == 0x100)
        expectError(.notFound) { _ = try device.regionIO(3) }
    }

    @Test func mmapRefusalIsNotMappable() throws {
        let m = try Machine()
        let device = try m.container().openDevice(engineBDF)
        m.kernel.fail("mmap", EINVAL)
        expectError(.notMappable, mentioning: ["BAR 0"]) { _ = try device.mapBAR(0) }
    }

    @Test func dmaMapBeforeAnyDeviceIsRefused() throws {
        let m = try Machine()
        let container = try m.container()
        let p = UnsafeMutableRawPointer(bitPattern: 0x10_0000)!
        expectError(.invalidMapping, mentioning: ["before a device is open"]) {
            try container.map(p, length: 4096, iova: 0x10_0000, access: .readWrite)
        }
    }

    @Test func dmaMapMemlockFailureSaysRaiseTheLimit() throws {
        let m = try Machine()
        let container = try m.container()
        let d = try container.openDevice(engineBDF)
        m.kernel.fail("VFIO_IOMMU_MAP_DMA", ENOMEM)
        let p = UnsafeMutableRawPointer(bitPattern: 0x10_0000)!
        expectError(.memlockLimit, mentioning: ["RLIMIT_MEMLOCK", "ulimit -l"]) {
            try container.map(p, length: 4096, iova: 0x10_0000, access: .readWrite)
        }
        _ = d
    }
}

@Suite struct VFIODeviceTests {
    @Test func barAccessesReachTheDeviceRegion() throws {
        let m = try Machine()
        let device = try m.container().openDevice(engineBDF)
        let bar = try device.mapBAR(0)
        bar.write32(0x80, 0xDEAD_BEEF)
        bar.write64(0x88, 0x0123_4567_89AB_CDEF)
        bar.write8(0x91, 0x5A)
        bar.write16(0x92, 0xA55A)
        var word: UInt32 = 0
        _ = Glibc.pread(m.kernel.memfd(of: engineBDF.description), &word, 4, 0x80)
        #expect(word == 0xDEAD_BEEF)
        #expect(bar.read64(0x88) == 0x0123_4567_89AB_CDEF)
        #expect(bar.read8(0x91) == 0x5A && bar.read16(0x92) == 0xA55A)
        var fromDevice: UInt32 = 0x1234_5678
        _ = Glibc.pwrite(m.kernel.memfd(of: engineBDF.description), &fromDevice, 4, 0x100)
        #expect(bar.read32(0x100) == 0x1234_5678)
    }

    @Test func sparseBARMapsOnlyThePermittedAreas() throws {
        let m = try Machine()
        m.kernel.configure {
            $0.devices[engineBDF.description]!.regions[0]!.sparse = [0..<0x1000, 0x2000..<0x4000]
        }
        let device = try m.container().openDevice(engineBDF)
        let info = try device.regionInfo(0)
        #expect(info.sparseAreas == [0..<0x1000, 0x2000..<0x4000])
        #expect(info.mappableAreas.count == 2)
        let bar = try device.mapBAR(0)
        #expect(m.kernel.log.filter { $0.hasPrefix("mmap") } == ["mmap 16384 @0", "mmap 4096 @0 fixed", "mmap 8192 @8192 fixed"])
        bar.write32(0x2004, 77)
        var v: UInt32 = 0
        _ = Glibc.pread(m.kernel.memfd(of: engineBDF.description), &v, 4, 0x2004)
        #expect(v == 77)
    }

    @Test func busMasterAndMemoryEnableAreSetInCommand() throws {
        let m = try Machine()
        let device = try m.container().openDevice(engineBDF)
        let cfg = m.kernel.regionOffset(Int(VFIO_PCI_CONFIG_REGION_INDEX))
        var command: UInt16 = 0x0400  // INTx disable already set
        _ = Glibc.pwrite(m.kernel.memfd(of: engineBDF.description), &command, 2, off_t(cfg + 4))
        let old = try device.enableMemoryAndBusMaster()
        #expect(old == 0x0400)
        #expect(try device.readConfig16(4) == 0x0406)
        try device.disableBusMaster()
        #expect(try device.readConfig16(4) == 0x0402)
        try device.writeConfig32(0x40, 0xCAFE_F00D)
        #expect(try device.readConfig32(0x40) == 0xCAFE_F00D)
        #expect(try device.readConfig8(0x41) == 0xF0)
    }

    @Test func msixVectorsAreRoutedToEventFDs() throws {
        let m = try Machine()
        let device = try m.container().openDevice(engineBDF)
        #expect(device.interruptVectorCount == 8)
        #expect(device.routedInterruptKind == .msix)
        try device.routeInterrupts(start: 0, eventFDs: [41, 42])
        try device.routeInterrupts(start: 3, eventFDs: [44])  // grows the table: NORESIZE → disable, re-enable
        try device.triggerInterrupt(.msix, vector: 1)
        try device.disableInterrupts()
        let sets = m.kernel.state.irqSets
        let eventfd = UInt32(VFIO_IRQ_SET_DATA_EVENTFD | VFIO_IRQ_SET_ACTION_TRIGGER)
        let none = UInt32(VFIO_IRQ_SET_DATA_NONE | VFIO_IRQ_SET_ACTION_TRIGGER)
        #expect(sets.count == 5)
        #expect(sets[0].index == 2 && sets[0].flags == eventfd && sets[0].start == 0 && sets[0].fds == [41, 42])
        #expect(sets[1].flags == none && sets[1].count == 0)
        #expect(sets[2].fds == [41, 42, -1, 44])
        #expect(sets[3].flags == none && sets[3].start == 1 && sets[3].count == 1)
        #expect(sets[4].flags == none && sets[4].count == 0)
        expectError(.invalidArgument, mentioning: ["8 MSI-X vectors"]) { try device.routeInterrupts(start: 7, eventFDs: [1, 2]) }
    }

    @Test func realEventFDIsSignalledThroughTheRoute() throws {
        // The mock does not signal; this checks the eventfd plumbing the route hands to the kernel.
        let m = try Machine()
        let device = try m.container().openDevice(engineBDF)
        let efd = try EventFD()
        try device.enableInterrupts(.msi, eventFDs: [efd.rawValue])
        #expect(m.kernel.state.irqSets.last?.fds == [efd.rawValue])
        #expect(m.kernel.state.irqSets.last?.index == VFIOInterruptKind.msi.rawValue)
    }

    @Test func resetOnlyWhenTheDeviceSupportsIt() throws {
        let m = try Machine()
        let device = try m.container().openDevice(engineBDF)
        #expect(!device.supportsReset)
        expectError(.unsupported, mentioning: ["no reset"]) { try device.reset() }
        #expect(m.kernel.state.resets == 0)

        let m2 = try Machine()
        m2.kernel.configure { $0.devices[engineBDF.description]!.flags |= UInt32(VFIO_DEVICE_FLAGS_RESET) }
        let d2 = try m2.container().openDevice(engineBDF)
        try d2.reset()
        #expect(m2.kernel.state.resets == 1)
    }

    @Test func dmaMemoryIsMappedOnceIntoTheContainerAndUnmappedOnRelease() throws {
        let m = try Machine()
        let container = try m.container()
        let device = try container.openDevice(engineBDF)
        let memory = DMAMemory(spaces: [container], policy: VFIOContainer.iovaPolicy(dmaMaskBits: 39), preferHugePages: false)
        do {
            let buffer = try memory.allocate(length: 8192)
            #expect(buffer.iova == 0x10_0000)
            let maps = m.kernel.state.mappings
            #expect(maps.count == 1 && maps[0].iova == 0x10_0000 && maps[0].size == 8192)
            #expect(maps[0].vaddr == UInt64(UInt(bitPattern: buffer.base)))
        }
        #expect(m.kernel.state.mappings.isEmpty)
        // A second unmap of the same IOVA finds nothing.
        expectError(.unmappedAddress) { try container.unmap(iova: 0x10_0000, length: 8192) }
        _ = device
    }

    @Test func overlappingMapIsInvalid() throws {
        let m = try Machine()
        let container = try m.container()
        let device = try container.openDevice(engineBDF)
        let p = UnsafeMutableRawPointer(bitPattern: 0x20_0000)!
        try container.map(p, length: 8192, iova: 0x20_0000, access: .readWrite)
        expectError(.invalidMapping, mentioning: ["overlaps"]) { try container.map(p, length: 4096, iova: 0x20_1000, access: .read) }
        expectError(.invalidMapping, mentioning: ["page-aligned"]) { try container.map(p, length: 100, iova: 0x30_0000, access: .read) }
        _ = device
    }
}

@Suite struct CapabilityChainTests {
    @Test func stopsOnLoopsAndOutOfBoundsOffsets() {
        var bytes = [UInt8](repeating: 0, count: 64)
        // cap at 16 → next 32; cap at 32 → next 16 (a loop backwards); must stop after two.
        bytes.withUnsafeMutableBytes { b in
            b.storeBytes(of: UInt16(1), toByteOffset: 16, as: UInt16.self)
            b.storeBytes(of: UInt32(32), toByteOffset: 20, as: UInt32.self)
            b.storeBytes(of: UInt16(3), toByteOffset: 32, as: UInt16.self)
            b.storeBytes(of: UInt32(16), toByteOffset: 36, as: UInt32.self)
        }
        let ids = bytes.withUnsafeBytes { Array(CapabilityChain($0, first: 16)).map(\.id) }
        #expect(ids == [1, 3])
        let none = bytes.withUnsafeBytes { Array(CapabilityChain($0, first: 60)) }
        #expect(none.isEmpty)
    }
}

/// Real VFIO: runs only where `/dev/vfio/vfio` exists (a VM with an emulated IOMMU, or hardware).
@Suite struct RealVFIOTests {
    static let hasVFIO = access("/dev/vfio/vfio", R_OK | W_OK) == 0

    @Test(.enabled(if: hasVFIO, "needs /dev/vfio/vfio (vfio-pci loaded, IOMMU on)"))
    func opensTheRealContainer() throws {
        let container = try VFIOContainer()
        #expect(container.fd >= 0)
        #expect(!container.isIOMMUSet)
    }

    /// Set by the VM stage (Scripts/vm-test): real VFIO must be there, so skipping is a failure.
    static let required = getenv("NETDMA_REQUIRE_VFIO").map { String(cString: $0) == "1" } ?? false

    @Test(.enabled(if: required, "only where NETDMA_REQUIRE_VFIO=1 (inside the test VM)"))
    func vfioIsPresentWhereRequired() {
        #expect(RealVFIOTests.hasVFIO, "/dev/vfio/vfio is missing or not accessible")
        #expect(RealVFIOTests.readyEngine != nil, "no engine or edu device is ready for VFIO")
    }

    static let readyEngine: PCIAddress? = hasVFIO ? PCIDiscovery().engines().first { PCIDiscovery().readiness(of: $0).isReady }?.address : nil

    @Test(.enabled(if: readyEngine != nil, "needs a DMA engine (or QEMU edu) bound to vfio-pci"))
    func opensARealEngineAndReadsItsConfigSpace() throws {
        let container = try VFIOContainer()
        let device = try container.openDevice(RealVFIOTests.readyEngine!)
        let vendor = try device.readConfig16(0)
        #expect(vendor == (try PCIDiscovery().device(at: RealVFIOTests.readyEngine!)).id.vendor)
        #expect(!container.validIOVARanges.isEmpty)
    }
}

@Suite struct ConfigCapabilityTests {
    /// Writes bytes into the mock device's config region.
    func poke(_ m: Machine, _ offset: Int, _ bytes: [UInt8]) {
        let cfg = m.kernel.regionOffset(Int(VFIO_PCI_CONFIG_REGION_INDEX))
        _ = bytes.withUnsafeBytes { Glibc.pwrite(m.kernel.memfd(of: engineBDF.description), $0.baseAddress, $0.count, off_t(cfg + Int64(offset))) }
    }

    @Test func findsCapabilitiesAndSetsThePowerState() throws {
        let m = try Machine()
        m.kernel.configure { $0.devices[engineBDF.description]!.regions[Int(VFIO_PCI_CONFIG_REGION_INDEX)]!.size = 4096 }
        let device = try m.container().openDevice(engineBDF)
        #expect(try device.capabilityOffset(0x01) == nil, "no capability list yet")
        poke(m, 0x06, [0x10, 0x00])        // Status: capability list
        poke(m, 0x34, [0x40])              // first capability at 0x40
        poke(m, 0x40, [0x11, 0x50])        // MSI-X → 0x50
        poke(m, 0x50, [0x01, 0x00])        // PM, end of list
        poke(m, 0x54, [0x03, 0x00])        // PMCSR: D3hot
        poke(m, 0x100, [0x01, 0x00, 0x01, 0x14])  // AER (id 1, v1) → 0x140
        poke(m, 0x140, [0x0E, 0x00, 0x01, 0x00])  // ARI, end
        #expect(try device.capabilityOffset(0x11) == 0x40)
        #expect(try device.capabilityOffset(0x01) == 0x50)
        #expect(try device.capabilityOffset(0x05) == nil)
        #expect(try device.extendedCapabilityOffset(0x0001) == 0x100)
        #expect(try device.extendedCapabilityOffset(0x000E) == 0x140)
        #expect(try device.extendedCapabilityOffset(0x0010) == nil)
        #expect(try device.powerState() == .d3hot)
        try device.setPowerState(.d0)
        #expect(try device.powerState() == .d0)
        #expect(try device.readConfig16(0x54) == 0)
    }

    @Test func loopingCapabilityListEnds() throws {
        let m = try Machine()
        let device = try m.container().openDevice(engineBDF)
        poke(m, 0x06, [0x10, 0x00])
        poke(m, 0x34, [0x40])
        poke(m, 0x40, [0x09, 0x40])  // points at itself
        #expect(try device.capabilityOffset(0x01) == nil)
        #expect(try device.extendedCapabilityOffset(0x0001) == nil, "256-byte config space has no extended list")
        do {
            try device.setPowerState(.d3hot)
            Issue.record("no PM capability")
        } catch { #expect(error.code == .unsupported) }
    }
}
