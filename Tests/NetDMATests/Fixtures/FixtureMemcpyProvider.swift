import DeviceModels
import NetDMA
import Platform
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

// TEST FIXTURE, not a product provider: a CPU memcpy "engine" that executes NetDMA descriptors
// exactly as netdma.md §5–§9 describe, reading descriptors and data through a SoftIOMMU (so an
// unmapped address is a device fault, never a crash), on its own thread, and signalling one
// eventfd per channel. It lets the NetDMA core be tested before the CBDMA provider exists.


/// TEST FIXTURE: a NetDMA provider whose engine is a CPU memcpy loop.
final class FixtureMemcpyProvider: NetDMAProvider, @unchecked Sendable {
    // @unchecked: `channels` and `thread` are set in init; engine state is behind Mutexes.
    let characteristics: ProviderCharacteristics
    let dmaMemory: DMAMemory
    let iommu: SoftIOMMU
    let attributes: ProviderAttributes
    private(set) var channels: [FixtureChannel] = []
    let doorbell: EventFD
    private let stopping = Atomic<Bool>(false)
    private var thread: ConformanceThread?
    /// The table the interface gave in SetDmaChannelCpuAffinity.
    let affinityTable = Mutex<[ChannelCPUAffinity]>([])

    init(version: NetDMAVersion = .v2_0, channelCount: Int = 4, maximumTransferSize: Int = 1 << 20,
         callbacks: ProviderCallbacks = .all, flags: ProviderFlags = [.fill], friendlyName: String = "fixture memcpy",
         interrupts: Bool = true) throws {
        characteristics = ProviderCharacteristics(version: version, flags: flags, maxChannelCount: channelCount,
                                                  callbacks: callbacks, friendlyName: friendlyName)
        iommu = SoftIOMMU()
        // Allocated IOVAs (not VA = IOVA) so that an IOVA/VA mix-up faults.
        dmaMemory = DMAMemory(spaces: [iommu], policy: .allocate(in: 0x10_0000...0xFF_FFFF_FFFF), preferHugePages: false)
        attributes = ProviderAttributes(hardwareMajor: 1, hardwareMinor: 0, vendorID: 0x8086, channelCount: channelCount,
                                        maximumTransferSize: maximumTransferSize, maximumAddress: 0xFF_FFFF_FFFF)
        doorbell = try EventFD()
        for i in 0..<channelCount { channels.append(try FixtureChannel(index: i, interrupts: interrupts)) }
        for c in channels { c.provider = self }
        thread = ConformanceThread { [self] in engineLoop() }
    }

    /// Stops the engine thread (the fixture's "device removal").
    func shutdown() {
        stopping.store(true, ordering: .releasing)
        doorbell.signal()
        thread?.join()
        thread = nil
    }

    deinit { if thread != nil { shutdown() } }

    func setChannelCPUAffinity(_ table: [ChannelCPUAffinity]) throws(DriverError) {
        affinityTable.withLock { $0 = table }
    }

    func allocateChannel(_ parameters: ChannelParameters) throws(DriverError) -> (channel: any ProviderChannel, cpu: Int) {
        let table = affinityTable.withLock { $0 }
        let free = channels.filter { !$0.isAllocated }
        // NetDMA §5.2: prefer a channel whose interrupt already targets an acceptable CPU.
        let preferred = free.first { c in table.contains { $0.channel == c.index && parameters.affinity.contains($0.cpu) } }
        guard let channel = preferred ?? free.first else {
            throw DriverError(.busy, "Every fixture channel is allocated.")
        }
        let cpu = table.first { $0.channel == channel.index && parameters.affinity.contains($0.cpu) }?.cpu
            ?? parameters.affinity.first ?? 0
        channel.allocate(completionIOVA: parameters.completionIOVA)
        return (channel, cpu)
    }

    private func engineLoop() {
        while !stopping.load(ordering: .acquiring) {
            var worked = false
            for c in channels { while c.step(iommu) { worked = true } }
            if !worked { _ = doorbell.wait(timeoutMilliseconds: 20) }
        }
    }
}

/// TEST FIXTURE: one channel of ``FixtureMemcpyProvider``.
final class FixtureChannel: ProviderChannel, @unchecked Sendable {
    // @unchecked: `provider` is set once right after init; engine state is behind `regs`.
    struct Registers {
        var allocated = false
        var status: TransferStatus = .armed
        var completionIOVA: UInt64 = 0
        /// The next descriptor to process (1.x idle: the tail to re-read).
        var next: UInt64 = 0
        /// 2.0: descriptors still to process.
        var remaining = 0
        var chainStart: UInt64 = 0
        var lastCompleted: UInt64 = 0
        var processedSinceStart = false
        var generation: UInt64 = 0
        var busy = false
        var fault: ChannelFault?
        var contextLost = false
    }

    let index: Int
    weak var provider: FixtureMemcpyProvider?
    let regs = Mutex(Registers())
    private let eventFD: EventFD
    private let hasInterrupt: Bool
    /// When set, the engine waits after fetching a descriptor (before moving data).
    let hold = Atomic<Bool>(false)
    /// The descriptor the engine is working on (0: none).
    let inFlight = Atomic<UInt64>(0)
    let processed = Atomic<Int>(0)
    let rearms = Atomic<Int>(0)
    let interruptsRaised = Atomic<Int>(0)
    /// The thread of every ISR call (`pthread_self`), in order.
    let isrThreads = Mutex<[pthread_t]>([])
    /// Every chain given to Start, with its first descriptor's flags (for power-up checks).
    let startLog = Mutex<[(iova: UInt64, count: Int, flags: ControlFlags)]>([])

    init(index: Int, interrupts: Bool) throws {
        self.index = index
        eventFD = try EventFD()
        hasInterrupt = interrupts
    }

    var isAllocated: Bool { regs.withLock { $0.allocated } }
    var interruptEventFD: Int32? { hasInterrupt ? eventFD.rawValue : nil }
    var fault: ChannelFault? { regs.withLock { $0.fault } }

    func allocate(completionIOVA: UInt64) {
        regs.withLock { r in
            r = Registers()
            r.allocated = true
            r.completionIOVA = completionIOVA
        }
    }

    /// Simulates a power cycle of a 1.0 engine: the channel forgets its position.
    func loseContext() { regs.withLock { $0.contextLost = true } }

    func start(_ chain: DescriptorChain) throws(DriverError) {
        startLog.withLock { $0.append((chain.iova, chain.count, chain.address.pointee.flags)) }
        regs.withLock { r in
            r.generation += 1
            r.fault = nil
            r.contextLost = false
            r.next = chain.iova
            r.chainStart = chain.iova
            r.remaining = chain.count
            r.processedSinceStart = false
            r.status = .active
        }
        provider?.doorbell.signal()
    }

    func append(_ chain: DescriptorChain) throws(DriverError) {
        let counted = provider?.characteristics.version.countedChains ?? true
        try regs.withLock { r throws(DriverError) in
            if r.contextLost {
                r.contextLost = false
                r.status = .armed
                throw DriverError(.contextLost, "Fixture channel \(index) lost its context; Start with a NULL descriptor.")
            }
            guard r.status != .armed && r.status != .halted else {
                throw DriverError(.invalidState, "Fixture channel \(index): Append while \(r.status).")
            }
            if counted {
                r.remaining += chain.count
                if r.status == .idle { r.status = .active }
            } else if r.status == .idle {
                // 1.x: re-read the tail the engine stopped on.
                if let d = provider?.readDescriptor(r.next), d.next != 0 {
                    r.next = d.next
                    r.status = .active
                }
            }
        }
        provider?.doorbell.signal()
    }

    func suspend() throws(DriverError) -> UInt64 {
        regs.withLock { r in if r.status == .active || r.status == .idle { r.status = .suspend } }
        // Finish the current descriptor, then halt before returning (bounded).
        let deadline = ContinuousClock.now + .seconds(5)
        while regs.withLock({ $0.busy }) && ContinuousClock.now < deadline { sched_yield() }
        return regs.withLock { r in
            writeCompletion(r, r.lastCompleted, .suspend)
            return r.processedSinceStart ? r.lastCompleted : 0
        }
    }

    func resume() throws(DriverError) {
        regs.withLock { r in
            let counted = provider?.characteristics.version.countedChains ?? true
            var more = true
            if r.processedSinceStart, let d = provider?.readDescriptor(r.lastCompleted) {
                // 1.x with nothing after the last processed descriptor: stay on it (the tail),
                // which the next Append re-reads.
                more = d.next != 0
                r.next = counted || more ? d.next : r.lastCompleted
            } else {
                r.next = r.chainStart
            }
            r.status = (counted ? r.remaining > 0 : more) ? .active : .idle
        }
        provider?.doorbell.signal()
    }

    func abort() throws(DriverError) {
        regs.withLock { r in
            r.generation += 1
            r.status = .halted
            r.remaining = 0
            writeCompletion(r, r.lastCompleted, .halted)
        }
    }

    func reset() throws(DriverError) {
        regs.withLock { r in
            writeCompletion(r, r.lastCompleted, .halted)
            let iova = r.completionIOVA, g = r.generation
            r = Registers()
            r.allocated = true
            r.completionIOVA = iova
            r.generation = g + 1
        }
    }

    func free() {
        regs.withLock { r in
            r.generation += 1
            r.allocated = false
            r.status = .armed
        }
    }

    func serviceInterrupt() -> InterruptReport {
        isrThreads.withLock { $0.append(pthread_self()) }
        return regs.withLock { InterruptReport(lastCompleted: $0.lastCompleted, fault: $0.fault) }
    }

    func rearmInterrupt() { rearms.add(1, ordering: .relaxed) }

    private func writeCompletion(_ r: Registers, _ descriptor: UInt64, _ status: TransferStatus) {
        guard let p = provider?.iommu.translate(r.completionIOVA, length: 8, access: .write) else { return }
        p.assumingMemoryBound(to: Atomic<UInt64>.self).pointee
            .store(CompletionWord(descriptor: descriptor, status: status).rawValue, ordering: .releasing)
    }

    private func raiseInterrupt() {
        interruptsRaised.add(1, ordering: .relaxed)
        if hasInterrupt { eventFD.signal() }
    }

    /// Processes one descriptor; false when there was nothing to do.
    func step(_ iommu: SoftIOMMU) -> Bool {
        let counted = provider?.characteristics.version.countedChains ?? true
        let picked: (iova: UInt64, generation: UInt64)? = regs.withLock { r in
            guard r.allocated, r.status == .active else { return nil }
            if counted && r.remaining == 0 { r.status = .idle; return nil }
            r.busy = true
            return (r.next, r.generation)
        }
        guard let picked else { return false }
        inFlight.store(picked.iova, ordering: .releasing)
        while hold.load(ordering: .acquiring) { sched_yield() }
        let descriptor = provider?.readDescriptor(picked.iova)
        var faultCause: String? = descriptor == nil ? "descriptor address not mapped" : nil
        if let d = descriptor { faultCause = execute(d, iommu) }
        inFlight.store(0, ordering: .releasing)
        processed.add(1, ordering: .relaxed)
        regs.withLock { r in
            r.busy = false
            if r.generation != picked.generation {
                // Start while busy: the current descriptor completes, the old chain is dropped.
                // Abort/Reset/Free: its completion is not reported.
                if r.status == .active || r.status == .idle, faultCause == nil, let d = descriptor {
                    r.lastCompleted = picked.iova
                    r.processedSinceStart = true
                    if d.flags.contains(.statusUpdateOnCompletion) { writeCompletion(r, picked.iova, .active) }
                    if d.flags.contains(.interruptOnCompletion) { raiseInterrupt() }
                }
                return
            }
            if let faultCause {
                r.status = .halted
                r.fault = ChannelFault(rawValue: 1, causes: [faultCause], descriptor: picked.iova)
                writeCompletion(r, r.lastCompleted, .halted)
                raiseInterrupt()
                return
            }
            let d = descriptor!
            r.lastCompleted = picked.iova
            r.processedSinceStart = true
            var last: Bool
            if counted {
                r.remaining -= 1
                r.next = d.next
                last = r.remaining == 0
            } else if d.next == 0 {
                // 1.x: the copy read `next` before moving data; an Append may have linked the
                // tail since (its `next` is published before Append takes this lock). Re-read
                // it, as CB 1.x hardware re-reads the tail on APPEND; else `next` stays on the
                // tail, to be re-read by the next Append.
                if let fresh = provider?.readDescriptor(picked.iova), fresh.next != 0 {
                    r.next = fresh.next
                    last = false
                } else {
                    last = true
                }
            } else {
                r.next = d.next
                last = false
            }
            if r.status == .suspend { last = false } else if last { r.status = .idle }
            if d.flags.contains(.statusUpdateOnCompletion) { writeCompletion(r, picked.iova, last ? .idle : .active) }
            if d.flags.contains(.interruptOnCompletion) { raiseInterrupt() }
        }
        return true
    }

    /// Moves the data; returns a fault cause or nil.
    private func execute(_ d: Descriptor, _ iommu: SoftIOMMU) -> String? {
        let flags = d.flags
        if flags.contains(.nullTransfer) || d.transferSize == 0 { return nil }
        let n = Int(d.transferSize)
        guard let dst = iommu.translate(d.destination, length: n, access: .write) else { return "destination address not mapped" }
        switch flags.operation {
        case .copy:
            guard let src = iommu.translate(d.source, length: n, access: .read) else { return "source address not mapped" }
            memmove(dst, src, n)
        case .fill:
            var i = 0
            while i < n {
                withUnsafeBytes(of: d.source.littleEndian) { p in
                    let k = Swift.min(8, n - i)
                    (dst + i).copyMemory(from: p.baseAddress!, byteCount: k)
                }
                i += 8
            }
        default:
            return "unsupported operation \(flags.operation.rawValue)"
        }
        return nil
    }
}

extension FixtureMemcpyProvider {
    /// Reads the descriptor at `iova` through the IOMMU (nil: not mapped).
    func readDescriptor(_ iova: UInt64) -> Descriptor? {
        guard iova & 0x3F == 0, let p = iommu.translate(iova, length: 64, access: .read) else { return nil }
        return p.load(as: Descriptor.self)
    }
}
