import CVFIO
import Hardware
import Platform
import Testing
import VFIO

#if canImport(Glibc)
import Glibc
#endif

/// The project's VFIO module (`VFIOContainer`, `VFIOGroup`, `VFIODevice`, `MappedBAR`,
/// `DMAMemory` over a container) on the real kernel VFIO stack, inside the `Scripts/vm-test`
/// guest: QEMU's emulated VT-d, two `edu` devices (DMA + MSI) and an e1000e (MSI-X) bound to
/// vfio-pci, and a third edu sharing a non-viable group with a virtio device.
///
/// Serialized: the tests share the devices, and a VFIO group can be open only once.
@Suite(.serialized, .enabled(if: VMEnvironment.isGuest, "needs the Scripts/vm-test guest (NETDMA_VM=1)"))
struct VFIOGuestTests {
    // MARK: container, groups, devices

    @Test("VFIOContainer: API version checked, type1v2 chosen, no IOMMU until a group is attached")
    func containerAPI() throws {
        let container = try VFIOContainer()
        #expect(container.iommuType == .type1v2)
        #expect(!container.isIOMMUSet)
        #expect(container.attachedGroups.isEmpty)
        #expect(container.validIOVARanges == [0...UInt64.max])
        // Mapping before any device is open is refused with an explanation, not an ioctl error.
        let page = try #require(mmap(nil, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0))
        defer { munmap(page, 4096) }
        let early = #expect(throws: DriverError.self) { try container.map(page, length: 4096, iova: 0x10_0000, access: .readWrite) }
        #expect(early?.code == .invalidMapping)
    }

    @Test("The runner's devices are bound to vfio-pci and ready; each isolated group opens and attaches")
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
        #expect(Set(isolated.compactMap(\.iommuGroup)).count == isolated.count, "groups are not distinct: \(isolated)")

        let container = try VFIOContainer()
        for f in isolated {
            let d = try container.discovery.device(at: try #require(PCIAddress(f.address)))
            #expect(d.driver == "vfio-pci")
            #expect(container.discovery.readiness(of: d).isReady, "\(f.address): \(container.discovery.readiness(of: d).summary)")
        }
        var groups: [VFIOGroup] = []
        for f in isolated {
            let number = try #require(f.iommuGroup)
            let g = try container.openGroup(number)
            #expect(g.number == number)
            #expect(g.members.map(\.description) == [f.address])
            // Asking again gives the group already open.
            #expect(try container.openGroup(number) === g)
            groups.append(g)
        }
        #expect(container.isIOMMUSet)
        #expect(container.attachedGroups == isolated.compactMap(\.iommuGroup).sorted())
        groups.removeAll()
        #expect(container.attachedGroups.isEmpty, "groups leave the container when released")
        #expect(!container.isIOMMUSet)
    }

    @Test("A group that holds a device bound to another driver: groupNotViable, naming that device")
    func nonViableGroup() throws {
        let shared = try #require(
            VMEnvironment.eduFunctions.first { f in f.iommuGroup.map { VMEnvironment.groupMembers($0).count > 1 } ?? false },
            "the runner puts one edu behind a PCIe-to-PCI bridge with a virtio device")
        let number = try #require(shared.iommuGroup)
        let virtio = try #require(VMEnvironment.groupMembers(number).first { VMEnvironment.driver(of: $0) == "virtio-pci" },
                                  "group \(number): \(VMEnvironment.groupMembers(number))")

        let container = try VFIOContainer()
        let viaDevice = #expect(throws: DriverError.self) { _ = try container.openDevice(try #require(PCIAddress(shared.address))) }
        #expect(viaDevice?.code == .groupNotViable)
        #expect(viaDevice?.message.contains(virtio) == true, "\(String(describing: viaDevice))")
        #expect(viaDevice?.message.contains("virtio-pci") == true)
        let viaGroup = #expect(throws: DriverError.self) { _ = try container.openGroup(number) }
        #expect(viaGroup?.code == .groupNotViable)
        #expect(viaGroup?.message.contains(virtio) == true, "\(String(describing: viaGroup))")
        #expect(container.attachedGroups.isEmpty)
        #expect(!container.isIOMMUSet)
    }

    @Test("A device bound to another driver (virtio-pci): wrongDriver, saying how to bind it")
    func wrongDriver() throws {
        let virtio = try #require(
            VMEnvironment.eduFunctions.compactMap(\.iommuGroup).flatMap(VMEnvironment.groupMembers)
                .first { VMEnvironment.driver(of: $0) == "virtio-pci" })
        let container = try VFIOContainer()
        let error = #expect(throws: DriverError.self) { _ = try container.openDevice(try #require(PCIAddress(virtio))) }
        #expect(error?.code == .wrongDriver, "\(String(describing: error))")
        #expect(error?.message.contains("virtio-pci") == true)
        #expect(error?.message.contains("netdma bind \(virtio)") == true)
    }

    @Test("A group can be open in one container at a time: the second reports busy, and reopens once released")
    func groupOpenIsExclusive() throws {
        let f = try #require(VMEnvironment.isolatedEduFunctions.first)
        let number = try #require(f.iommuGroup)
        let second = try VFIOContainer()
        do {
            let first = try VFIOContainer()
            let group = try first.openGroup(number)
            let error = #expect(throws: DriverError.self) { _ = try second.openGroup(number) }
            #expect(error?.code == .busy)
            #expect(error?.errno == .resourceBusy)
            withExtendedLifetime(group) {}
        }
        let again = try second.openGroup(number)
        #expect(again.number == number)
    }

    @Test("A device that is not in the group: notFound, listing the group's members")
    func deviceNotInGroup() throws {
        let f = try #require(VMEnvironment.isolatedEduFunctions.first)
        let container = try VFIOContainer()
        let group = try container.openGroup(try #require(f.iommuGroup))
        let error = #expect(throws: DriverError.self) { _ = try group.openDevice(try #require(PCIAddress("0000:00:1f.7"))) }
        #expect(error?.code == .notFound)
        #expect(error?.message.contains(f.address) == true, "\(String(describing: error))")
        let device = try group.openDevice(try #require(PCIAddress(f.address)))
        #expect(device.address.description == f.address)
        #expect(device.group === group)
    }

    // MARK: regions and config space

    @Test("Region info, BAR0 mmap (MappedBAR) and region reads (VFIORegionIO) agree on the edu registers")
    func regionInfoAndBARMap() throws {
        let rig = try EduRig()
        let device = rig.edus[0].device
        #expect(device.regionCount > Int(VFIO_PCI_CONFIG_REGION_INDEX))
        #expect(device.interruptIndexCount > VFIOInterruptKind.msix.rawValue)
        let bar0 = try device.regionInfo(0)
        #expect(bar0.size == 0x10_0000)
        #expect(bar0.isReadable && bar0.isWritable && bar0.isMappable)
        #expect(bar0.mappableAreas == [0..<0x10_0000])
        let config = try device.regionInfo(Int(VFIO_PCI_CONFIG_REGION_INDEX))
        #expect(config.size == 256)
        #expect(!config.isMappable)
        // BAR1 is not implemented.
        #expect(try device.regionInfo(1).size == 0)
        let missing = #expect(throws: DriverError.self) { _ = try device.mapBAR(1) }
        #expect(missing?.code == .notFound)

        let bar = try device.mapBAR(0)
        #expect(bar.length == 0x10_0000)
        #expect(bar.read32(Edu.Register.identification) == Edu.identification)
        bar.write32(Edu.Register.liveness, 0x1234_5678)
        #expect(bar.read32(Edu.Register.liveness) == ~UInt32(0x1234_5678))
        let io = try device.regionIO(0)
        #expect(io.read32(Edu.Register.identification) == Edu.identification)
        io.write32(Edu.Register.liveness, 0x0F0F_0F0F)
        #expect(bar.read32(Edu.Register.liveness) == ~UInt32(0x0F0F_0F0F))
        try bar.unmap()
    }

    @Test("Config space through the VFIO config region: IDs, the MSI capability, bus mastering on and off, no reset")
    func configSpaceBusMaster() throws {
        let rig = try EduRig()
        let device = rig.edus[0].device
        #expect(try device.readConfig16(Int(PCI_VENDOR_ID)) == Edu.vendorID)
        #expect(try device.readConfig16(Int(PCI_DEVICE_ID)) == Edu.deviceID)
        #expect(try device.capabilityOffset(UInt8(PCI_CAP_ID_MSI)) != nil)
        let both = UInt16(PCI_COMMAND_MEMORY | PCI_COMMAND_MASTER)
        #expect(try device.readConfig16(Int(PCI_COMMAND)) & both == both)
        try device.disableBusMaster()
        #expect(try device.readConfig16(Int(PCI_COMMAND)) & UInt16(PCI_COMMAND_MASTER) == 0)
        let before = try device.enableMemoryAndBusMaster()
        #expect(before & UInt16(PCI_COMMAND_MASTER) == 0)
        #expect(try device.readConfig16(Int(PCI_COMMAND)) & both == both)
        // edu has no FLR or PM reset: the kernel does not offer VFIO_DEVICE_RESET.
        #expect(!device.supportsReset)
        let reset = #expect(throws: DriverError.self) { try device.reset() }
        #expect(reset?.code == .unsupported)
    }

    // MARK: DMA mapping and the IOVA policy

    @Test("IOMMU info, and map/unmap errors: overlap, outside the IOVA ranges, nothing to unmap")
    func iommuInfoAndMapping() throws {
        let rig = try EduRig()
        let container = rig.container
        #expect(container.pageSizes & 0x1000 != 0, "4 KiB pages: \(hex(container.pageSizes))")
        let ranges = container.validIOVARanges
        // The interrupt window is reserved: no usable range contains the MSI address.
        #expect(!ranges.contains { $0.contains(0xFEE0_0000) }, "\(ranges)")
        #expect(ranges.contains { $0.contains(0x10_0000) })

        let length = 64 << 10
        let page = try #require(mmap(nil, length, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0))
        try #require(page != MAP_FAILED)
        defer { munmap(page, length) }
        let iova: UInt64 = 0x20_0000
        try container.map(page, length: length, iova: iova, access: .readWrite)
        let overlap = #expect(throws: DriverError.self) {
            try container.map(page, length: 4096, iova: iova + 0x8000, access: .readWrite)
        }
        #expect(overlap?.code == .invalidMapping)
        #expect(overlap?.errno == .fileExists)
        let outside = #expect(throws: DriverError.self) {
            try container.map(page, length: 4096, iova: 0xFEE0_0000, access: .readWrite)
        }
        #expect(outside?.code == .invalidMapping)
        #expect(outside?.errno == .invalidArgument)
        try container.unmap(iova: iova, length: length)
        let twice = #expect(throws: DriverError.self) { try container.unmap(iova: iova, length: length) }
        #expect(twice?.code == .unmappedAddress)
    }

    @Test("IOVA policy: DMAMemory allocates inside edu's 28-bit mask and the IOMMU's ranges, and reuses freed space")
    func iovaPolicy() throws {
        let rig = try EduRig()
        #expect(VFIOContainer.iovaPolicy(dmaMaskBits: 28) == .allocate(in: 0x10_0000...0x0FFF_FFFF))
        var seen: [ClosedRange<UInt64>] = []
        do {
            let a = try rig.memory.allocate(length: 8192)
            let b = try rig.memory.allocate(length: 3 << 20)
            let c = try rig.memory.allocate(length: 4096)
            for buffer in [(a.iova, a.length), (b.iova, b.length), (c.iova, c.length)] {
                let r = buffer.0...(buffer.0 + UInt64(buffer.1) - 1)
                #expect(EduRig.iovaWindow.contains(r.lowerBound) && EduRig.iovaWindow.contains(r.upperBound), "\(r)")
                #expect(rig.container.validIOVARanges.contains { $0.contains(r.lowerBound) && $0.contains(r.upperBound) })
                #expect(!seen.contains { $0.overlaps(r) }, "\(r) overlaps \(seen)")
                seen.append(r)
            }
            #expect(rig.memory.iova(of: b.address(at: 4096)) == b.iova + 4096)
            #expect(rig.memory.address(ofIOVA: c.iova) == c.base)
            #expect(rig.memory.regions.count == 3, "buffers at \(hex(a.iova)), \(hex(b.iova)), \(hex(c.iova))")
        }
        #expect(rig.memory.regions.isEmpty, "buffers unmap when they go away")
        let again = try rig.memory.allocate(length: 4096)
        #expect(again.iova == seen[0].lowerBound, "freed IOVA space is reused first-fit")

        // IOVA = VA works only when the process's addresses fit the IOMMU's aperture.
        let identity = DMAMemory(spaces: [rig.container], policy: .identity, preferHugePages: false)
        let top = rig.container.validIOVARanges.map(\.upperBound).max() ?? 0
        do throws(DriverError) {
            let buffer = try identity.allocate(length: 4096)
            #expect(buffer.iova == UInt64(UInt(bitPattern: buffer.base)))
            #expect(buffer.iova <= top)
        } catch {
            #expect(error.code == .invalidMapping, "\(error)")
            #expect(error.message.contains("IOVAPolicy.allocate"))
        }
    }

    // MARK: interrupts and DMA

    @Test("MSI through the VFIO IRQ API: routed by InterruptRouting, fires on an edu raise, on a loopback trigger, and not when disabled")
    func msiEventFD() throws {
        let rig = try EduRig()
        let edu = rig.edus[0]
        let device = edu.device
        let msi = try device.interruptInfo(.msi)
        #expect(msi.count == 1)
        #expect(msi.flags & UInt32(VFIO_IRQ_INFO_EVENTFD) != 0)
        #expect(try device.interruptInfo(.msix).count == 0)
        #expect(device.routedInterruptKind == .msi)
        #expect(device.interruptVectorCount == 1)

        let fd = try EventFD()
        try device.routeInterrupts(start: 0, eventFDs: [fd.rawValue])
        #expect(edu.msi.consume() == 0)
        for round in 1...3 {
            edu.bar.write32(Edu.Register.interruptRaise, 0x1)
            try #require(fd.wait(timeoutMilliseconds: EduDevice.interruptTimeoutMilliseconds) > 0, "round \(round)")
            #expect(edu.bar.read32(Edu.Register.interruptStatus) & 0x1 != 0)
            edu.bar.write32(Edu.Register.interruptAcknowledge, 0x1)
            #expect(edu.bar.read32(Edu.Register.interruptStatus) & 0x1 == 0)
        }
        #expect(fd.wait(timeoutMilliseconds: 50) == 0, "no interrupt without a cause")
        #expect(edu.msi.consume() == 0, "the re-route replaced the first eventfd")
        try device.triggerInterrupt(.msi, vector: 0)
        #expect(fd.wait(timeoutMilliseconds: EduDevice.interruptTimeoutMilliseconds) > 0, "loopback trigger")

        try device.disableInterrupts()
        edu.bar.write32(Edu.Register.interruptRaise, 0x1)
        #expect(fd.wait(timeoutMilliseconds: 100) == 0, "MSI disabled: nothing reaches the eventfd")
        edu.bar.write32(Edu.Register.interruptAcknowledge, 0x1)
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
        try rig.container.map(page, length: length, iova: iova, access: .readWrite)
        try rig.container.unmap(iova: iova, length: length)

        let completion = edu.dma(iova: iova, count: 2048, toRAM: true)
        #expect(completion.interrupted, "the device still completes; the IOMMU dropped the write")
        let p = page.assumingMemoryBound(to: UInt8.self)
        #expect((0..<length).allSatisfy { p[$0] == 0x5A }, "memory behind an unmapped IOVA changed")
        let fault = log.waitForMessage(containing: ["DMAR", "fault addr 0x\(String(iova, radix: 16))"],
                                       timeoutMilliseconds: 3000)
        #expect(fault != nil, "no DMAR fault logged for IOVA \(hex(iova))")
        if let fault { #expect(fault.contains(edu.function.address.dropFirst(5))) }  // "[00:02.0]"
    }

    @Test("Two edu devices in separate groups share one container: DMAMemory maps a buffer once, both see it")
    func twoDevicesShareContainer() throws {
        let rig = try EduRig(eduCount: 2)
        let (a, b) = (rig.edus[0], rig.edus[1])
        #expect(a.device.group.number != b.device.group.number)
        #expect(a.device.group.container === b.device.group.container)
        #expect(rig.container.attachedGroups == [a.device.group.number, b.device.group.number].sorted())
        let buffer = try rig.memory.allocate(length: 16 << 10)
        #expect(rig.memory.regions.count == 1, "one mapping for both devices")
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
            #expect(rig.container.isIOMMUSet, "round \(round)")
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
