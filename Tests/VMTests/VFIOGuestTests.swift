import CVFIO
import Hardware
import Platform
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// The real kernel VFIO stack, exercised inside the `Scripts/vm-test` guest: QEMU's emulated
/// VT-d, two `edu` devices (DMA + MSI) and an e1000e (MSI-X), all bound to vfio-pci.
///
/// Serialized: the tests share the devices, and a VFIO group can be open only once.
@Suite(.serialized, .enabled(if: VMEnvironment.isGuest, "needs the Scripts/vm-test guest (NETDMA_VM=1)"))
struct VFIOGuestTests {
    // MARK: container, groups, devices

    @Test("VFIO_GET_API_VERSION and the type1 IOMMU extensions")
    func containerAPI() throws {
        let container = try GuestContainer()
        #expect(try container.apiVersion() == VFIO_API_VERSION)
        #expect(try container.supports(VFIO_TYPE1v2_IOMMU))
        #expect(try container.supports(VFIO_TYPE1_IOMMU))
    }

    @Test("The runner's devices are bound to vfio-pci; the isolated ones each in their own viable group")
    func devicesBound() throws {
        let edus = VMEnvironment.eduFunctions
        let nics = VMEnvironment.msixFunctions
        #expect(edus.count == VMEnvironment.expectedEduCount, "edu devices: \(edus)")
        #expect(nics.count == VMEnvironment.expectedMSIXCount, "MSI-X devices: \(nics)")
        for f in edus + nics {
            #expect(f.driver == "vfio-pci", "\(f) is bound to \(f.driver ?? "no driver")")
            #expect(f.iommuGroup != nil, "\(f.address) has no IOMMU group")
        }
        let isolated = VMEnvironment.isolatedEduFunctions + nics
        #expect(VMEnvironment.isolatedEduFunctions.count >= 2, "isolated edu devices: \(edus)")
        for f in isolated {
            let group = try GuestGroup(try #require(f.iommuGroup))
            let status = try group.status()
            #expect(status & UInt32(VFIO_GROUP_FLAGS_VIABLE) != 0, "group \(group.number) not viable")
            #expect(status & UInt32(VFIO_GROUP_FLAGS_CONTAINER_SET) == 0)
        }
        #expect(Set(isolated.compactMap(\.iommuGroup)).count == isolated.count, "groups are not distinct: \(isolated)")
    }

    @Test("A group holding a device bound to another driver is not viable and cannot join a container")
    func nonViableGroup() throws {
        let shared = try #require(
            VMEnvironment.eduFunctions.first { f in f.iommuGroup.map { VMEnvironment.groupMembers($0).count > 1 } ?? false },
            "the runner puts one edu behind a PCIe-to-PCI bridge with a virtio device")
        let number = try #require(shared.iommuGroup)
        let others = VMEnvironment.groupMembers(number).filter { $0 != shared.address }
        let foreign = others.filter { a in
            guard let d = VMEnvironment.driver(of: a) else { return false }
            return d != "vfio-pci" && d != "pcieport" && d != "shpchp"
        }
        #expect(foreign.map { VMEnvironment.driver(of: $0) }.contains("virtio-pci"), "group \(number): \(others)")

        let group = try GuestGroup(number)
        #expect(try group.status() & UInt32(VFIO_GROUP_FLAGS_VIABLE) == 0)
        let container = try GuestContainer()
        let attach = #expect(throws: DriverError.self) { try group.attach(to: container) }
        #expect(attach?.errno != nil, "\(String(describing: attach))")
        #expect(try group.status() & UInt32(VFIO_GROUP_FLAGS_CONTAINER_SET) == 0)
        // Neither the vfio-pci device nor the one bound to virtio-pci can be opened.
        #expect(throws: DriverError.self) { _ = try group.device(shared.address) }
        for a in foreign { #expect(throws: DriverError.self) { _ = try group.device(a) } }
    }

    @Test("A group can be opened only once at a time: the second open reports busy")
    func groupOpenIsExclusive() throws {
        let f = try #require(VMEnvironment.isolatedEduFunctions.first)
        let group = try #require(f.iommuGroup)
        do {
            let first = try GuestGroup(group)
            let error = #expect(throws: DriverError.self) { _ = try GuestGroup(group) }
            #expect(error?.code == .busy)
            #expect(error?.errno == .resourceBusy)
            withExtendedLifetime(first) {}
        }
        // Released on close: it opens again.
        _ = try GuestGroup(group)
    }

    @Test("A device fd is refused before the container has an IOMMU, and for a name not in the group")
    func deviceOpenErrors() throws {
        let f = try #require(VMEnvironment.isolatedEduFunctions.first)
        let container = try GuestContainer()
        let group = try GuestGroup(try #require(f.iommuGroup))
        try group.attach(to: container)
        let early = #expect(throws: DriverError.self) { _ = try group.device(f.address) }
        #expect(early?.errno == .invalidArgument)
        try container.setIOMMU()
        let wrongName = #expect(throws: DriverError.self) { _ = try group.device("0000:00:1f.7") }
        #expect(wrongName?.code == .notFound || wrongName?.errno == .invalidArgument,
                "got \(String(describing: wrongName))")
        _ = try group.device(f.address)
    }

    // MARK: regions and config space

    @Test("Region info, BAR0 mmap and pread agree on the edu registers")
    func regionInfoAndBARMap() throws {
        let rig = try EduRig()
        let edu = rig.edus[0]
        let info = try edu.device.info()
        #expect(info.num_regions > UInt32(VFIO_PCI_CONFIG_REGION_INDEX))
        #expect(info.num_irqs > UInt32(VFIO_PCI_MSIX_IRQ_INDEX))
        let bar0 = try edu.device.region(VFIO_PCI_BAR0_REGION_INDEX)
        #expect(bar0.size == 0x10_0000)
        let wanted = UInt32(VFIO_REGION_INFO_FLAG_READ | VFIO_REGION_INFO_FLAG_WRITE | VFIO_REGION_INFO_FLAG_MMAP)
        #expect(bar0.flags & wanted == wanted)
        let config = try edu.device.region(VFIO_PCI_CONFIG_REGION_INDEX)
        #expect(config.size == 256)
        #expect(config.flags & UInt32(VFIO_REGION_INFO_FLAG_MMAP) == 0)

        #expect(edu.bar.length == 0x10_0000)
        #expect(edu.bar.read32(Edu.Register.identification) == Edu.identification)
        edu.bar.write32(Edu.Register.liveness, 0x1234_5678)
        #expect(edu.bar.read32(Edu.Register.liveness) == ~UInt32(0x1234_5678))

        var viaRead: UInt32 = 0
        let n = pread(edu.device.fd, &viaRead, 4, off_t(bar0.offset) + off_t(Edu.Register.identification))
        #expect(n == 4)
        #expect(viaRead == Edu.identification)
    }

    @Test("Config space through the VFIO config region: IDs, and bus mastering on and off")
    func configSpaceBusMaster() throws {
        let rig = try EduRig()
        let device = rig.edus[0].device
        #expect(try device.config(Int(PCI_VENDOR_ID), as: UInt16.self) == Edu.vendorID)
        #expect(try device.config(Int(PCI_DEVICE_ID), as: UInt16.self) == Edu.deviceID)
        let both = UInt16(PCI_COMMAND_MEMORY | PCI_COMMAND_MASTER)
        #expect(try device.config(Int(PCI_COMMAND), as: UInt16.self) & both == both)
        let on: UInt16 = try device.config(Int(PCI_COMMAND))
        try device.setConfig(Int(PCI_COMMAND), on & ~UInt16(PCI_COMMAND_MASTER))
        #expect(try device.config(Int(PCI_COMMAND), as: UInt16.self) & UInt16(PCI_COMMAND_MASTER) == 0)
        try device.enableBusMaster()
        #expect(try device.config(Int(PCI_COMMAND), as: UInt16.self) & both == both)
        // edu has no FLR or PM reset: the kernel does not offer VFIO_DEVICE_RESET.
        #expect(try device.info().flags & UInt32(VFIO_DEVICE_FLAGS_RESET) == 0)
        #expect(throws: DriverError.self) { try device.reset() }
    }

    // MARK: DMA mapping

    @Test("IOMMU info, and the kernel's map/unmap rules: overlap refused, unmap reports its size")
    func iommuInfoAndMapping() throws {
        let rig = try EduRig()
        let info = try rig.container.iommuInfo()
        #expect(info.flags & UInt32(VFIO_IOMMU_INFO_PGSIZES) != 0)
        #expect(info.pageSizes & 0x1000 != 0, "4 KiB pages: \(hex(info.pageSizes))")
        #expect(!info.iovaRanges.isEmpty)
        // The interrupt window is reserved: no usable range contains the MSI address.
        #expect(!info.iovaRanges.contains { $0.contains(0xFEE0_0000) }, "\(info.iovaRanges)")
        #expect(info.iovaRanges.contains { $0.contains(0x10_0000) })

        let length = 64 << 10
        let page = try #require(mmap(nil, length, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0))
        try #require(page != MAP_FAILED)
        defer { munmap(page, length) }
        let iova: UInt64 = 0x20_0000
        try rig.container.map(page, length: length, iova: iova)
        let overlap = #expect(throws: DriverError.self) {
            try rig.container.map(page, length: 4096, iova: iova + 0x8000)
        }
        #expect(overlap?.errno == .fileExists)
        let outside = #expect(throws: DriverError.self) {
            try rig.container.map(page, length: 4096, iova: 0xFEE0_0000)
        }
        #expect(outside?.errno == .invalidArgument)
        #expect(try rig.container.unmap(iova: iova, length: length) == UInt64(length))
        #expect(try rig.container.unmap(iova: iova, length: length) == 0)
    }

    // MARK: interrupts and DMA

    @Test("The MSI eventfd fires when edu raises an interrupt, and only then")
    func msiEventFD() throws {
        let rig = try EduRig()
        let edu = rig.edus[0]
        #expect(edu.msi.consume() == 0)
        let msi = try edu.device.irq(VFIO_PCI_MSI_IRQ_INDEX)
        #expect(msi.count == 1)
        #expect(msi.flags & UInt32(VFIO_IRQ_INFO_EVENTFD) != 0)
        for round in 1...3 {
            edu.bar.write32(Edu.Register.interruptRaise, 0x1)
            try #require(edu.msi.wait(timeoutMilliseconds: EduDevice.interruptTimeoutMilliseconds) > 0, "round \(round)")
            #expect(edu.bar.read32(Edu.Register.interruptStatus) & 0x1 != 0)
            edu.bar.write32(Edu.Register.interruptAcknowledge, 0x1)
            #expect(edu.bar.read32(Edu.Register.interruptStatus) & 0x1 == 0)
        }
        #expect(edu.msi.wait(timeoutMilliseconds: 50) == 0, "no interrupt without a cause")
        try edu.device.disableInterrupts(index: VFIO_PCI_MSI_IRQ_INDEX)
    }

    @Test("A DMA round trip RAM → edu → RAM through the IOMMU, completion by MSI")
    func eduDMARoundTrip() throws {
        let rig = try EduRig()
        let edu = rig.edus[0]
        let buffer = try rig.memory.allocate(length: 16 << 10)
        #expect(EduRig.iovaWindow.contains(buffer.iova))
        let count = 4000
        fillPattern(buffer.base, count: count, seed: 7)
        let toDevice = edu.dma(iova: buffer.iova, count: count, toRAM: false)
        try #require(toDevice == .init(interrupted: true, status: Edu.dmaInterrupt, idle: true))
        let back = edu.dma(iova: buffer.iova(at: 8192), count: count, toRAM: true)
        #expect(back == .init(interrupted: true, status: Edu.dmaInterrupt, idle: true))
        #expect(bytesEqual(buffer.base, buffer.address(at: 8192), count: count))
        // A partial transfer at an offset inside the edu buffer moves exactly those bytes.
        memset(buffer.address(at: 12288), 0xEE, 64)
        _ = edu.dma(iova: buffer.iova(at: 12288 + 8), bufferOffset: 100, count: 48, toRAM: true)
        let p = buffer.address(at: 12288).assumingMemoryBound(to: UInt8.self)
        #expect(p[7] == 0xEE && p[56] == 0xEE)
        #expect(bytesEqual(buffer.address(at: 12288 + 8), buffer.address(at: 100), count: 48))
    }

    @Test("A DMA to an unmapped IOVA is blocked by the IOMMU and reported as a DMAR fault, not a hang")
    func unmappedIOVABlocked() throws {
        let rig = try EduRig()
        let edu = rig.edus[0]
        let log = try KernelLog()
        let source = try rig.memory.allocate(length: 4096)
        fillPattern(source.base, count: 2048, seed: 0x33)
        try #require(edu.dma(iova: source.iova, count: 2048, toRAM: false).interrupted)

        // A page that was mapped and then unmapped: the device's write must not reach it.
        let length = 4096
        let page = try #require(mmap(nil, length, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0))
        try #require(page != MAP_FAILED)
        defer { munmap(page, length) }
        memset(page, 0x5A, length)
        let iova: UInt64 = 0x0F00_0000
        try rig.container.map(page, length: length, iova: iova)
        #expect(try rig.container.unmap(iova: iova, length: length) == UInt64(length))

        let completion = edu.dma(iova: iova, count: 2048, toRAM: true)
        #expect(completion.interrupted, "the device still completes; the IOMMU dropped the write")
        let p = page.assumingMemoryBound(to: UInt8.self)
        #expect((0..<length).allSatisfy { p[$0] == 0x5A }, "memory behind an unmapped IOVA changed")
        let fault = log.waitForMessage(containing: ["DMAR", "fault addr 0x\(String(iova, radix: 16))"],
                                       timeoutMilliseconds: 3000)
        #expect(fault != nil, "no DMAR fault logged for IOVA \(hex(iova))")
        if let fault { #expect(fault.contains(edu.function.address.dropFirst(5))) }  // "[00:02.0]"
    }

    @Test("Two edu devices in separate groups share one container and one mapping")
    func twoDevicesShareContainer() throws {
        let rig = try EduRig(eduCount: 2)
        #expect(rig.groups[0].number != rig.groups[1].number)
        for g in rig.groups { #expect(try g.status() & UInt32(VFIO_GROUP_FLAGS_CONTAINER_SET) != 0) }
        let (a, b) = (rig.edus[0], rig.edus[1])
        let buffer = try rig.memory.allocate(length: 16 << 10)
        let count = 3000
        fillPattern(buffer.base, count: count, seed: 0xA5)
        // source → A → middle → B → end, all through the same IOVAs.
        try #require(a.dma(iova: buffer.iova, count: count, toRAM: false).interrupted)
        #expect(a.dma(iova: buffer.iova(at: 4096), count: count, toRAM: true).interrupted)
        #expect(b.dma(iova: buffer.iova(at: 4096), count: count, toRAM: false).interrupted)
        #expect(b.dma(iova: buffer.iova(at: 8192), count: count, toRAM: true).interrupted)
        #expect(bytesEqual(buffer.base, buffer.address(at: 8192), count: count))
        // Each device's interrupt reaches only its own eventfd.
        #expect(a.msi.consume() == 0 && b.msi.consume() == 0)
        a.bar.write32(Edu.Register.interruptRaise, 0x1)
        #expect(a.msi.wait(timeoutMilliseconds: EduDevice.interruptTimeoutMilliseconds) > 0)
        #expect(b.msi.wait(timeoutMilliseconds: 50) == 0)
        a.bar.write32(Edu.Register.interruptAcknowledge, 0x1)
    }

    // MARK: lifecycle

    @Test("Container, group and device lifecycle ×10: open, map, DMA, close, reopen, no fd leak")
    func lifecycleTenTimes() throws {
        let before = openFileDescriptorCount()
        for round in 1...10 {
            let rig = try EduRig()
            let buffer = try rig.memory.allocate(length: 4096)
            fillPattern(buffer.base, count: 256, seed: UInt8(round))
            let edu = rig.edus[0]
            #expect(edu.bar.read32(Edu.Register.identification) == Edu.identification, "round \(round)")
            edu.bar.write32(Edu.Register.liveness, UInt32(round))
            #expect(edu.bar.read32(Edu.Register.liveness) == ~UInt32(round))
            if round == 1 || round == 10 {
                try #require(edu.dma(iova: buffer.iova, count: 256, toRAM: false).interrupted, "round \(round)")
                #expect(edu.dma(iova: buffer.iova(at: 1024), count: 256, toRAM: true).interrupted)
                #expect(bytesEqual(buffer.base, buffer.address(at: 1024), count: 256), "round \(round)")
            }
        }
        #expect(openFileDescriptorCount() == before)
    }
}
