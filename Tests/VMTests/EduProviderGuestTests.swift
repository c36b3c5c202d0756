import Edu
import Hardware
import NetDMA
import Platform
import Synchronization
import Testing
import VFIO

#if canImport(Glibc)
import Glibc
#endif

/// An ``EduProvider`` on the first isolated edu device, registered and started with its own
/// NetDMA interface: the whole NetDMA stack on the real kernel VFIO, IOMMU and MSI.
final class EduNetDMARig {
    let container: VFIOContainer
    let device: VFIODevice
    let memory: DMAMemory
    let provider: EduProvider<MappedBAR>
    let registry = NetDMARegistry(drainTimeout: .seconds(2))
    let handle: ProviderHandle

    init(version: NetDMAVersion = .v2_0) throws {
        let f = try #require(VMEnvironment.isolatedEduFunctions.first, "no isolated edu device")
        container = try VFIOContainer()
        device = try container.openDevice(try #require(PCIAddress(f.address)))
        try device.enableMemoryAndBusMaster()
        memory = DMAMemory(spaces: [container], policy: VFIOContainer.iovaPolicy(dmaMaskBits: EduRig.dmaMaskBits),
                           preferHugePages: false)
        provider = try EduProvider(bar: device.mapBAR(0), interrupts: device, memory: memory,
                                   configuration: .init(version: version))
        handle = try registry.register(provider)
        try registry.start(handle, attributes: provider.attributes)
    }

    private var closed = false

    /// Stops and deregisters the provider (freeing any channel a failed test left allocated),
    /// then stops its engine and detaches the MSI, so the next test can open the group.
    func close() throws {
        guard !closed else { return }
        closed = true
        defer { provider.shutdown() }
        if isStarted { try registry.stop(handle) }
        try registry.deregister(handle)
    }

    private var isStarted: Bool { registry.info(handle)?.state != .registered }

    /// A test that failed before ``close()`` still releases the device.
    deinit { try? close() }
}

/// NetDMA through ``EduProvider`` inside the `Scripts/vm-test` guest. Each copy is two edu DMAs
/// of ~100 ms, so the tests move few descriptors.
@Suite(.serialized, .enabled(if: VMEnvironment.isGuest, "needs the Scripts/vm-test guest (NETDMA_VM=1)"))
struct EduProviderGuestTests {
    @Test("The provider registers and starts: edu's identity, one channel, 4 KiB transfers, the 28-bit mask")
    func registersAndStarts() throws {
        let rig = try EduNetDMARig()
        let info = try #require(rig.registry.info(rig.handle))
        #expect(info.state == .started)
        #expect(info.characteristics.version == .v2_0)
        #expect(info.characteristics.maxChannelCount == 1)
        let a = try #require(info.attributes)
        #expect(a.vendorID == Edu.vendorID)
        #expect(a.hardwareMajor == 1 && a.hardwareMinor == 0)
        #expect(a.channelCount == 1)
        #expect(a.maximumTransferSize == 4096)
        #expect(a.maximumAddress == Edu.dmaMask)
        // The MSI is routed to the provider's eventfd through the VFIO device.
        #expect(rig.provider.channel.interruptEventFD != nil)
        let channel = try rig.registry.allocateChannel(provider: rig.handle)
        let busy = #expect(throws: DriverError.self) { _ = try rig.registry.allocateChannel(provider: rig.handle) }
        #expect(busy?.code == .busy)
        try channel.free()
        try rig.close()
    }

    @Test("NetDMA copies through EduProvider: Start and Append, completion word, MSI interrupt, DPC on the chosen CPU")
    func netDMACopies() async throws {
        let rig = try EduNetDMARig()
        let cpus = Array(CPUSet.allowed)
        let target = try #require(cpus.last)
        let channel = try rig.registry.allocateChannel(provider: rig.handle, affinity: [target])
        #expect(channel.cpu == target, "allowed CPUs \(cpus)")
        let dpcCPU = Atomic<Int>(-1)
        channel.setCompletionHandler { _ in dpcCPU.store(CPUAffinity.currentCPU, ordering: .relaxed) }

        let data = try rig.memory.allocate(length: 32 << 10)
        let sizes = [100, 4095, 4096]  // the last takes two edu round trips
        let sourceAt = [0, 4096, 8192], destinationAt = [16384, 20480, 24576]
        for (i, n) in sizes.enumerated() { fillPattern(data.address(at: sourceAt[i]), count: n, seed: UInt8(i + 1)) }
        let pool = try DescriptorPool(memory: channel.dmaMemory, count: 3)
        pool.linkList(0..<3)
        for (i, n) in sizes.enumerated() {
            pool[i].pointee.transferSize = UInt32(n)
            pool[i].pointee.source = data.iova(at: sourceAt[i])
            pool[i].pointee.destination = data.iova(at: destinationAt[i])
            pool[i].pointee.flags = i == 2 ? [.statusUpdateOnCompletion, .interruptOnCompletion] : [.statusUpdateOnCompletion]
        }
        let transfers = rig.provider.transfersIssued
        // The kernel IRQ vfio-pci requested for edu's MSI (named after vector and device).
        let irqName = "vfio-msi[0](\(rig.device.address))"
        let irqsBefore = try #require(kernelInterruptCounts(named: irqName), "no \(irqName) in /proc/interrupts").reduce(0, +)
        let generation = channel.interruptGeneration
        try channel.start(pool.chain(from: 0, count: 2))
        try channel.append(pool.chain(from: 2, count: 1))
        _ = try await channel.waitForInterrupt(after: generation, timeout: .seconds(10))

        let word = channel.completionWord
        #expect(word.descriptor == pool.iova(at: 2), "\(word)")
        #expect(word.status == .idle)
        #expect(channel.lastInterruptDescriptor == pool.iova(at: 2))
        #expect(channel.fault == nil)
        for (i, n) in sizes.enumerated() {
            #expect(bytesEqual(data.address(at: sourceAt[i]), data.address(at: destinationAt[i]), count: n), "copy \(i) of \(n) bytes")
        }
        #expect(rig.provider.transfersIssued - transfers == 8, "two edu DMAs per 4095-byte piece")
        #expect(rig.provider.completionInterrupts == 1, "one interrupt: only the last descriptor asked")
        let irqsAfter = (kernelInterruptCounts(named: irqName) ?? []).reduce(0, +)
        #expect(irqsAfter - irqsBefore == 1, "the MSI reached the kernel's vfio-msi handler once")
        #expect(rig.provider.errorInterrupts == 0)
        // The DPC wakes waiters before it calls the handler: wait (bounded) for the handler.
        let deadline = ContinuousClock.now + .seconds(5)
        while dpcCPU.load(ordering: .relaxed) < 0 && ContinuousClock.now < deadline { try await Task.sleep(for: .milliseconds(1)) }
        #expect(dpcCPU.load(ordering: .relaxed) == target, "the DPC ran on CPU \(dpcCPU.load(ordering: .relaxed))")
        try channel.free()
        try rig.close()
    }

    @Test("A CopyQueue round trip through EduProvider, completions awaited on the MSI (1.0 NULL-terminated and 2.0 counted chains)",
          arguments: [NetDMAVersion.v1_0, .v2_0])
    func copyQueueRoundTrip(version: NetDMAVersion) async throws {
        let rig = try EduNetDMARig(version: version)
        let channel = try rig.registry.allocateChannel(provider: rig.handle)
        #expect(channel.countedChains == version.countedChains)
        let queue = try CopyQueue(channel: channel, ringSize: 8, interrupts: true)
        let data = try rig.memory.allocate(length: 16 << 10)
        let n = 1500
        fillPattern(data.base, count: n, seed: 0x42)
        // data[0] → data[4096] → data[8192], fenced: the second reads what the first wrote.
        let t0 = try queue.enqueueCopy(source: data.iova, destination: data.iova(at: 4096), length: n)
        let t1 = try queue.enqueueCopy(source: data.iova(at: 4096), destination: data.iova(at: 8192), length: n, fence: true)
        #expect(t1 == t0 &+ 1)
        #expect(queue.pendingSubmission == 2)
        try queue.submit()
        var done = 0
        var lastTicket: UInt16 = 0
        while done < 2 {
            try await queue.waitForCompletion(timeout: .seconds(10))
            let c = queue.completed(max: 8)
            #expect(!c.hadError)
            done += c.count
            lastTicket = c.lastTicket
        }
        #expect(done == 2)
        #expect(lastTicket == t1)
        #expect(queue.outstanding == 0)
        #expect(bytesEqual(data.base, data.address(at: 8192), count: n))
        #expect(channel.completionWord.status == .idle)
        try channel.free()
        try rig.close()
    }

    @Test("A copy from an unmapped IOVA is a failed op, not a hang; no edu DMA and no completion interrupt for it")
    func unmappedSourceFails() async throws {
        let rig = try EduNetDMARig()
        let channel = try rig.registry.allocateChannel(provider: rig.handle)
        let queue = try CopyQueue(channel: channel, ringSize: 8, interrupts: true)
        let data = try rig.memory.allocate(length: 16 << 10)
        let n = 512
        fillPattern(data.base, count: n, seed: 0x11)
        memset(data.address(at: 8192), 0xC3, n)
        // Inside edu's DMA mask, and not mapped: nothing of the provider's memory is up there.
        let unmapped: UInt64 = 0x0E00_0000
        #expect(rig.memory.address(ofIOVA: unmapped) == nil)
        let transfers = rig.provider.transfersIssued

        _ = try queue.enqueueCopy(source: data.iova, destination: data.iova(at: 4096), length: n)
        let bad = try queue.enqueueCopy(source: unmapped, destination: data.iova(at: 8192), length: n)
        _ = try queue.enqueueCopy(source: data.iova, destination: data.iova(at: 12288), length: n)
        try queue.submit()

        var statuses: [CopyStatus] = []
        let buffer = UnsafeMutableBufferPointer<CopyStatus>.allocate(capacity: 8)
        defer { buffer.deallocate() }
        while statuses.count < 3 {
            try await queue.waitForCompletion(timeout: .seconds(10))
            let (count, _) = queue.completedStatus(max: 8, into: buffer)
            statuses += buffer.prefix(count)
        }
        #expect(statuses == [.successful, .failed, .successful])
        #expect(queue.failedCount == 1)
        let fault = try #require(queue.lastFault)
        #expect(fault.rawValue & EduFault.sourceAddress.rawValue != 0, "\(fault)")
        #expect(fault.causes.contains("source address not mapped"))
        #expect(fault.descriptor != nil)
        _ = bad
        // The ops around the failed one moved their data; the failed one moved nothing.
        #expect(bytesEqual(data.base, data.address(at: 4096), count: n))
        #expect(bytesEqual(data.base, data.address(at: 12288), count: n))
        let p = data.address(at: 8192).assumingMemoryBound(to: UInt8.self)
        #expect((0..<n).allSatisfy { p[$0] == 0xC3 }, "the failed op's destination changed")
        #expect(rig.provider.transfersIssued - transfers == 4, "no edu DMA for the failed op")
        #expect(rig.provider.errorInterrupts == 1, "the halt interrupted once")
        #expect(rig.provider.completionInterrupts == 1, "only the batch's last op raised a completion interrupt")
        try channel.free()
        try rig.close()
    }
}
