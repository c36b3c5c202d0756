import DeviceModels
@testable import Edu
import Hardware
import NetDMA
import Platform
import Synchronization
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// An ``EduProvider`` on an ``EduModel`` behind a ``SoftIOMMU``, registered and started.
final class EduModelRig {
    let iommu = SoftIOMMU()
    let model: EduModel
    let memory: DMAMemory
    let provider: EduProvider<EduModelBAR>
    let registry = NetDMARegistry(drainTimeout: .seconds(2))
    let handle: ProviderHandle
    private var closed = false

    init(version: NetDMAVersion = .v2_0, interrupts: Bool = true, maximumTransferSize: Int = 4096) throws {
        model = EduModel(iommu: iommu)
        memory = DMAMemory(spaces: [iommu], policy: .allocate(in: 0x10_0000...Edu.dmaMask), preferHugePages: false)
        provider = try EduProvider(bar: model.bar, interrupts: interrupts ? model : nil, memory: memory,
                                   configuration: .init(version: version, maximumTransferSize: maximumTransferSize,
                                                        transferTimeout: .seconds(10)))
        handle = try registry.register(provider)
        try registry.start(handle, attributes: provider.attributes)
    }

    func close() throws {
        guard !closed else { return }
        closed = true
        defer { provider.shutdown() }
        if registry.info(handle)?.state != .registered { try registry.stop(handle) }
        try registry.deregister(handle)
    }

    deinit { try? close() }
}

/// Waits (bounded) until `condition` holds; false on timeout.
func eduEventually(_ timeout: Duration = .seconds(5), _ condition: () -> Bool) -> Bool {
    let deadline = ContinuousClock.now + timeout
    while !condition() {
        if ContinuousClock.now >= deadline { return false }
        sched_yield()
    }
    return true
}

@Suite struct EduProviderTests {
    // MARK: bring-up

    @Test func bringUpChecksTheDeviceAndDeclaresEdusLimits() throws {
        let rig = try EduModelRig()
        let c = rig.provider.characteristics
        #expect(c.version == .v2_0 && c.maxChannelCount == 1 && c.flags.isEmpty)
        let a = rig.provider.attributes
        #expect(a.vendorID == Edu.vendorID && a.hardwareMajor == 1 && a.hardwareMinor == 0)
        #expect(a.maximumTransferSize == 4096, "NetDMA's floor; edu moves 4095 bytes per DMA")
        #expect(a.maximumAddress == Edu.dmaMask)
        #expect(rig.model.isRouted, "the MSI is routed at bring-up")
        try rig.close()
        #expect(!rig.model.isRouted, "and detached at shutdown")

        let iommu = SoftIOMMU()
        let memory = DMAMemory(spaces: [iommu], preferHugePages: false)
        let notEdu = #expect(throws: DriverError.self) {
            _ = try EduProvider(bar: EduModel(iommu: iommu, identification: 0x0100_00EE).bar, interrupts: nil, memory: memory)
        }
        #expect(notEdu?.code == .unsupported)
        let dead = #expect(throws: DriverError.self) {
            _ = try EduProvider(bar: EduModel(iommu: iommu, alive: false).bar, interrupts: nil, memory: memory)
        }
        #expect(dead?.code == .deviceError)
        let small = #expect(throws: DriverError.self) {
            _ = try EduProvider(bar: EduModel(iommu: iommu).bar, interrupts: nil, memory: memory,
                                configuration: .init(maximumTransferSize: 4095))
        }
        #expect(small?.code == .unsupported)
    }

    // MARK: data path

    @Test func copiesRunAsEduRoundTripsOfAtMost4095Bytes() async throws {
        let rig = try EduModelRig(maximumTransferSize: 16384)
        let channel = try rig.registry.allocateChannel(provider: rig.handle)
        let sizes = [1, 4095, 4096, 10000]
        let data = try rig.memory.allocate(length: 64 << 10)
        let pool = try DescriptorPool(memory: channel.dmaMemory, count: sizes.count)
        pool.linkList(0..<sizes.count)
        let out = try rig.memory.allocate(length: 64 << 10)
        for (i, n) in sizes.enumerated() {
            eduFillPattern(data.address(at: i * 16384), count: n, seed: UInt8(i + 3))
            pool[i].pointee.transferSize = UInt32(n)
            pool[i].pointee.source = data.iova(at: i * 16384)
            pool[i].pointee.destination = out.iova(at: i * 16384)
            pool[i].pointee.flags = i == sizes.count - 1 ? [.statusUpdateOnCompletion, .interruptOnCompletion] : [.statusUpdateOnCompletion]
        }
        let g = channel.interruptGeneration
        try channel.start(pool.chain(from: 0, count: 2))
        try channel.append(pool.chain(from: 2, count: 2))
        _ = try await channel.waitForInterrupt(after: g, timeout: .seconds(10))
        #expect(channel.completionWord == CompletionWord(descriptor: pool.iova(at: 3), status: .idle))
        for (i, n) in sizes.enumerated() {
            #expect(memcmp(data.address(at: i * 16384), out.address(at: i * 16384), n) == 0, "copy of \(n) bytes")
        }
        #expect(rig.model.transfers.load(ordering: .relaxed) == 2 * (1 + 1 + 2 + 3))
        #expect(rig.model.largestTransfer.load(ordering: .relaxed) == 4095)
        #expect(rig.model.fatalTransfers.load(ordering: .relaxed) == 0)
        #expect(rig.provider.completionInterrupts == 1)
        #expect(rig.provider.errorInterrupts == 0)
        try channel.free()
        try rig.close()
    }

    @Test(arguments: [NetDMAVersion.v1_0, .v1_1, .v2_0])
    func copyQueueRoundTripsOverSeveralSubmits(version: NetDMAVersion) async throws {
        let rig = try EduModelRig(version: version)
        let channel = try rig.registry.allocateChannel(provider: rig.handle)
        #expect(channel.countedChains == version.countedChains)
        let queue = try CopyQueue(channel: channel, ringSize: 4, interrupts: true)
        let data = try rig.memory.allocate(length: 32 << 10)
        eduFillPattern(data.base, count: 8192, seed: 9)
        var done = 0
        for batch in 0..<3 {
            for k in 0..<2 {
                let at = (batch * 2 + k) * 1024
                _ = try queue.enqueueCopy(source: data.iova(at: at), destination: data.iova(at: 16384 + at), length: 1024)
            }
            try queue.submit()
            while done < (batch + 1) * 2 {
                try await queue.waitForCompletion(timeout: .seconds(10))
                let c = queue.completed(max: 4)
                #expect(!c.hadError)
                done += c.count
            }
        }
        #expect(done == 6)
        #expect(memcmp(data.base, data.address(at: 16384), 6 * 1024) == 0)
        try channel.free()
        try rig.close()
    }

    @Test func pollsTheCompletionWordWithoutInterrupts() throws {
        let rig = try EduModelRig(interrupts: false)
        let channel = try rig.registry.allocateChannel(provider: rig.handle)
        #expect(channel.interruptEventFD == nil)
        let queue = try CopyQueue(channel: channel, ringSize: 4, interrupts: false)
        let data = try rig.memory.allocate(length: 8192)
        eduFillPattern(data.base, count: 300, seed: 1)
        _ = try queue.enqueueCopy(source: data.iova, destination: data.iova(at: 4096), length: 300)
        try queue.submit()
        var done = 0
        #expect(eduEventually { done += queue.completed(max: 4).count; return done == 1 })
        #expect(memcmp(data.base, data.address(at: 4096), 300) == 0)
        #expect(rig.model.messages.load(ordering: .relaxed) == 0, "no MSI without a route")
        try channel.free()
        try rig.close()
    }

    // MARK: faults

    enum BadDescriptor: String, CaseIterable, Sendable {
        case unmappedSource, unmappedDestination, beyondMask, tooLarge, fill
    }

    @Test(arguments: BadDescriptor.allCases)
    func aBadDescriptorHaltsWithAFaultAndNoEduDMA(_ bad: BadDescriptor) async throws {
        let rig = try EduModelRig()
        let channel = try rig.registry.allocateChannel(provider: rig.handle)
        let data = try rig.memory.allocate(length: 8192)
        let pool = try DescriptorPool(memory: channel.dmaMemory, count: 1)
        var d = Descriptor(transferSize: 512, controlFlags: [.statusUpdateOnCompletion, .interruptOnCompletion],
                           source: data.iova, destination: data.iova(at: 4096))
        let expected: EduFault
        switch bad {
        case .unmappedSource: d.source = 0x0E00_0000; expected = .sourceAddress
        case .unmappedDestination: d.destination = 0x0E00_0000; expected = .destinationAddress
        case .beyondMask: d.destination = Edu.dmaMask + 1 + data.iova(at: 4096); expected = .destinationAddress
        case .tooLarge: d.transferSize = 4097; expected = .transferSize
        case .fill: d.flags.operation = .fill; expected = .operation
        }
        pool[0].pointee = d
        let g = channel.interruptGeneration
        try channel.start(pool.chain(from: 0, count: 1))
        _ = try await channel.waitForInterrupt(after: g, timeout: .seconds(10))
        #expect(channel.state == .halted)
        #expect(channel.completionWord.status == .halted)
        let fault = try #require(channel.fault)
        #expect(fault.rawValue == expected.rawValue, "\(fault)")
        #expect(fault.descriptor == pool.iova(at: 0))
        #expect(rig.model.transfers.load(ordering: .relaxed) == 0, "no edu DMA for a bad descriptor")
        #expect(rig.provider.errorInterrupts == 1)
        #expect(rig.provider.completionInterrupts == 0)
        // Start recovers the channel.
        pool[0].pointee = Descriptor(transferSize: 64, controlFlags: [.statusUpdateOnCompletion], source: data.iova,
                                     destination: data.iova(at: 4096))
        try channel.start(pool.chain(from: 0, count: 1))
        #expect(eduEventually { channel.completionWord == CompletionWord(descriptor: pool.iova(at: 0), status: .idle) })
        #expect(channel.fault == nil)
        try channel.free()
        try rig.close()
    }

    @Test func anUnmappedDescriptorHalts() async throws {
        let rig = try EduModelRig()
        let channel = try rig.registry.allocateChannel(provider: rig.handle)
        let pool = try DescriptorPool(memory: channel.dmaMemory, count: 1)
        let g = channel.interruptGeneration
        try channel.start(DescriptorChain(address: pool[0], iova: 0x0D00_0000, count: 1))
        _ = try await channel.waitForInterrupt(after: g, timeout: .seconds(10))
        #expect(channel.fault?.rawValue == EduFault.descriptorAddress.rawValue)
        #expect(channel.state == .halted)
        try channel.free()
        try rig.close()
    }

    // MARK: Abort, Reset, Suspend, Resume

    @Test func abortAbandonsTheDescriptorAfterTheEduDMAInProgress() throws {
        let rig = try EduModelRig()
        let channel = try rig.registry.allocateChannel(provider: rig.handle)
        let data = try rig.memory.allocate(length: 16384)
        eduFillPattern(data.base, count: 1000, seed: 5)
        memset(data.address(at: 8192), 0x77, 1000)
        let pool = try DescriptorPool(memory: channel.dmaMemory, count: 2)
        pool.linkList(0..<2)
        for i in 0..<2 {
            pool[i].pointee.transferSize = 1000
            pool[i].pointee.source = data.iova
            pool[i].pointee.destination = data.iova(at: 8192)
            pool[i].pointee.flags = [.statusUpdateOnCompletion]
        }
        rig.model.gate.store(true, ordering: .releasing)
        try channel.start(pool.chain(from: 0, count: 2))
        try #require(eduEventually { rig.model.transfers.load(ordering: .relaxed) == 1 }, "the first edu DMA started")
        let aborted = EduFlag()
        // On its own thread: Abort blocks, and the test's waits must not starve it.
        let thread = EduBackground { try channel.abort(); aborted.value.store(true, ordering: .releasing) }
        // Abort writes Halted at once, then waits for the DMA that edu cannot cancel.
        try #require(eduEventually { channel.completionWord.status == .halted })
        let returnedEarly = aborted.value.load(ordering: .acquiring)
        #expect(!returnedEarly, "Abort returned while the edu DMA was still running")
        rig.model.gate.store(false, ordering: .releasing)
        try thread.join()
        #expect(channel.state == .halted)
        #expect(rig.model.transfers.load(ordering: .relaxed) == 1, "the second half was never issued")
        let p = data.address(at: 8192).assumingMemoryBound(to: UInt8.self)
        #expect((0..<1000).allSatisfy { p[$0] == 0x77 })

        try channel.reset()
        #expect(channel.state == .allocated)
        try channel.start(pool.chain(from: 1, count: 1))
        #expect(eduEventually { channel.completionWord == CompletionWord(descriptor: pool.iova(at: 1), status: .idle) })
        #expect(memcmp(data.base, data.address(at: 8192), 1000) == 0)
        try channel.free()
        try rig.close()
    }

    @Test func suspendFinishesTheCurrentDescriptorAndResumeContinues() throws {
        let rig = try EduModelRig()
        let channel = try rig.registry.allocateChannel(provider: rig.handle)
        let data = try rig.memory.allocate(length: 16384)
        eduFillPattern(data.base, count: 2000, seed: 8)
        let pool = try DescriptorPool(memory: channel.dmaMemory, count: 2)
        pool.linkList(0..<2)
        for i in 0..<2 {
            pool[i].pointee.transferSize = 1000
            pool[i].pointee.source = data.iova(at: i * 1000)
            pool[i].pointee.destination = data.iova(at: 8192 + i * 1000)
            pool[i].pointee.flags = [.statusUpdateOnCompletion]
        }
        rig.model.gate.store(true, ordering: .releasing)
        try channel.start(pool.chain(from: 0, count: 2))
        try #require(eduEventually { rig.model.transfers.load(ordering: .relaxed) == 1 })
        let suspend = EduBackground { try channel.suspend() }
        try #require(eduEventually { rig.provider.engine.state.withLock { $0.status == .suspend } })
        rig.model.gate.store(false, ordering: .releasing)
        let last = try suspend.join()
        #expect(last == pool.iova(at: 0))
        #expect(channel.state == .suspended)
        #expect(channel.completionWord == CompletionWord(descriptor: pool.iova(at: 0), status: .suspend))
        #expect(rig.model.transfers.load(ordering: .relaxed) == 2, "descriptor 1 did not start")
        try channel.resume()
        #expect(eduEventually { channel.completionWord == CompletionWord(descriptor: pool.iova(at: 1), status: .idle) })
        #expect(memcmp(data.base, data.address(at: 8192), 2000) == 0)
        try channel.free()
        try rig.close()
    }
}

/// Fills `count` bytes at `address` with a pattern that depends on `seed` and the offset.
func eduFillPattern(_ address: UnsafeMutableRawPointer, count: Int, seed: UInt8) {
    let p = address.assumingMemoryBound(to: UInt8.self)
    for i in 0..<count { p[i] = UInt8(truncatingIfNeeded: i &* 31 &+ Int(seed)) }
}

final class EduFlag: Sendable {
    let value = Atomic<Bool>(false)
}

/// A blocking call run on its own POSIX thread (never on the test's cooperative pool).
final class EduBackground<T: Sendable>: @unchecked Sendable {
    // @unchecked: `result` is written by the thread before it exits and read after the join.
    private var thread = pthread_t()
    private var result: Result<T, any Error>?

    init(_ body: @escaping @Sendable () throws -> T) {
        let box = Unmanaged.passRetained(EduThreadBox { [self] in result = Result { try body() } }).toOpaque()
        let r = pthread_create(&thread, nil, { arg in
            Unmanaged<EduThreadBox>.fromOpaque(arg!).takeRetainedValue().run()
            return nil
        }, box)
        precondition(r == 0, "pthread_create failed: \(r)")
    }

    func join() throws -> T {
        pthread_join(thread, nil)
        return try result!.get()
    }
}

private final class EduThreadBox {
    let run: () -> Void
    init(_ run: @escaping () -> Void) { self.run = run }
}
