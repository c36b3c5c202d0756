import CVFIO
import Hardware
import NetDMA
import Platform
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// A NetDMA provider over QEMU's `edu` device: the whole NetDMA stack (registry, channel,
/// Start/Append, completion word, MSI interrupts, CPU affinity) on a device that the real
/// kernel VFIO and IOMMU drive, for the test VM (vm-testing.md §6).
///
/// edu has no descriptor engine: its DMA engine moves up to 4095 bytes between memory and its
/// 4 KiB on-device buffer. The provider's engine thread walks the NetDMA chain in software and
/// runs each copy descriptor as edu DMAs: memory → edu buffer, then edu buffer → memory (one
/// such pair per 4095-byte piece). It writes the completion word and, for a descriptor that
/// asks for an interrupt (or when the channel halts), raises edu's interrupt through its
/// `raise interrupt` register, so the interrupt arrives as a real MSI on the eventfd the
/// ``InterruptRouting`` (a `VFIODevice`) routed.
///
/// ```swift
/// let device = try container.openDevice(address)
/// try device.enableMemoryAndBusMaster()
/// let memory = DMAMemory(spaces: [container], policy: VFIOContainer.iovaPolicy(dmaMaskBits: 28))
/// let provider = try EduProvider(bar: device.mapBAR(0), interrupts: device, memory: memory)
/// let handle = try NetDMARegistry.shared.register(provider)
/// try NetDMARegistry.shared.start(handle, attributes: provider.attributes)
/// ```
///
/// edu cannot report a failed DMA (QEMU ignores the IOMMU's refusal), so the engine checks
/// every descriptor, source and destination range against the provider's ``DMAMemory`` (the
/// table the IOMMU mappings were made from) and edu's DMA mask before it programs a transfer.
/// An address outside them halts the channel with a ``ChannelFault`` (``EduFault``); no edu
/// DMA is issued for that descriptor.
///
/// One channel, no fill and no page break. Descriptors, completion words and data must live
/// in the provider's DMA memory.
public final class EduProvider<BAR: RegisterIO & ~Copyable>: NetDMAProvider, @unchecked Sendable {
    // @unchecked: the engine's mutable state is behind a Mutex and atomics; the rest is immutable.

    /// How to bring the provider up.
    public struct Configuration: Sendable {
        /// The NetDMA version to declare: 2.0 or 2.1 (counted chains) or 1.0/1.1 (NULL-terminated).
        public var version: NetDMAVersion
        /// The friendly name.
        public var friendlyName: String
        /// The largest descriptor (`MaximumTransferSize`); at least NetDMA's 4096. Descriptors
        /// above 4095 bytes take several edu round trips.
        public var maximumTransferSize: Int
        /// The width of edu's DMA mask (`dma_mask` property; 28 bits by default).
        public var dmaMaskBits: Int
        /// How long one edu DMA may take before the channel halts (edu's take ~100 ms).
        public var transferTimeout: Duration

        public init(version: NetDMAVersion = .v2_0, friendlyName: String = "QEMU edu",
                    maximumTransferSize: Int = 4096, dmaMaskBits: Int = 28, transferTimeout: Duration = .seconds(5)) {
            self.version = version
            self.friendlyName = friendlyName
            self.maximumTransferSize = maximumTransferSize
            self.dmaMaskBits = dmaMaskBits
            self.transferTimeout = transferTimeout
        }
    }

    /// What the provider declares at registration (`NET_DMA_PROVIDER_CHARACTERISTICS`).
    public let characteristics: ProviderCharacteristics
    /// What it reports when started (`NET_DMA_PROVIDER_ATTRIBUTES`).
    public let attributes: ProviderAttributes
    /// The DMA memory of the device's address space.
    public var dmaMemory: DMAMemory { engine.memory }
    /// The provider's only channel.
    public let channel: EduChannel<BAR>

    let engine: EduEngine<BAR>

    /// Checks the device (ID and liveness registers), waits for a DMA left running, routes
    /// edu's MSI to an eventfd and starts the engine thread.
    ///
    /// Bus mastering must be on (`VFIODevice.enableMemoryAndBusMaster()`): vfio-pci leaves it off.
    ///
    /// - Parameters:
    ///   - bar: BAR0 of the edu device (a `MappedBAR`, or a model's registers).
    ///   - interrupts: routes edu's MSI vector; nil for a provider without interrupts (poll
    ///     the completion word).
    ///   - memory: DMA memory mapped into the device's address space, inside the DMA mask.
    /// - Throws: ``DriverError`` `.unsupported` when BAR0 is not an edu or the configuration is
    ///   out of range; `.deviceError` when edu does not respond; `.timeout` when a DMA left
    ///   running does not finish; the interrupt router's error.
    public init(bar: consuming BAR, interrupts: (any InterruptRouting)?, memory: DMAMemory,
                configuration: Configuration = .init()) throws(DriverError) {
        let c = configuration
        guard c.version >= .v1_0, c.version <= .interface else {
            throw DriverError(.unsupported, "NetDMA \(c.version) is not a version this provider can declare; use 1.0, 1.1, 2.0 or 2.1.")
        }
        guard c.maximumTransferSize >= 4096, c.maximumTransferSize <= 1 << 24 else {
            throw DriverError(.unsupported, "The maximum transfer size must be 4096 bytes (NetDMA's minimum) to 16 MiB, got \(c.maximumTransferSize).")
        }
        guard c.dmaMaskBits >= 21, c.dmaMaskBits <= 64 else {
            throw DriverError(.unsupported, "edu's DMA mask must be 21 to 64 bits wide, got \(c.dmaMaskBits).")
        }
        let id = bar.read32(Edu.Register.identification)
        guard id == Edu.identification else {
            throw DriverError(.unsupported,
                "BAR0 is not a QEMU edu device: its ID register reads 0x\(String(id, radix: 16)), not 0x\(String(Edu.identification, radix: 16)).")
        }
        bar.write32(Edu.Register.liveness, 0x5EED_0001)
        guard bar.read32(Edu.Register.liveness) == ~UInt32(0x5EED_0001) else {
            throw DriverError(.deviceError, "The edu device does not answer its liveness register; reset the VM or the device.")
        }
        engine = try EduEngine(bar: bar, memory: memory, configuration: c)
        do throws(DriverError) {
            if let interrupts {
                guard interrupts.interruptVectorCount >= 1 else {
                    throw DriverError(.unsupported, "The edu device offers no MSI vector to route.")
                }
                try interrupts.routeInterrupts(start: 0, eventFDs: [engine.msi.rawValue])
                engine.interrupts = interrupts
            }
            try engine.startThread()
        } catch {
            engine.shutdown()
            throw error
        }
        channel = EduChannel(engine: engine)
        characteristics = ProviderCharacteristics(
            version: c.version, flags: c.version >= .v2_1 ? [.supportsProcessorGroups] : [], maxChannelCount: 1,
            callbacks: .all, friendlyName: c.friendlyName)
        attributes = ProviderAttributes(
            hardwareMajor: UInt8(truncatingIfNeeded: id >> 24), hardwareMinor: UInt8(truncatingIfNeeded: id >> 16),
            vendorID: Edu.vendorID, channelCount: 1, maximumTransferSize: c.maximumTransferSize,
            maximumAddress: engine.dmaMask)
    }

    deinit { engine.shutdown() }

    /// Stops the engine thread and detaches the MSI (device removal). The provider must be
    /// stopped in the registry first. Idempotent.
    public func shutdown() { engine.shutdown() }

    /// `ProviderSetDmaChannelCpuAffinity`: remembers the CPU the channel's interrupt targets.
    public func setChannelCPUAffinity(_ table: [ChannelCPUAffinity]) throws(DriverError) {
        if let entry = table.first(where: { $0.channel == 0 }) {
            engine.affinityCPU.store(entry.cpu, ordering: .relaxed)
        }
    }

    /// `ProviderAllocateDmaChannel`: the one channel, pointed at the completion word; its
    /// interrupt and DPC CPU is the affinity table's when acceptable, else the first of
    /// `parameters.affinity`.
    ///
    /// - Throws: `.busy` when the channel is allocated; `.unmappedAddress` when the completion
    ///   word is not in the provider's DMA memory.
    public func allocateChannel(_ parameters: ChannelParameters) throws(DriverError) -> (channel: any ProviderChannel, cpu: Int) {
        try engine.allocate(completionIOVA: parameters.completionIOVA)
        let preferred = engine.affinityCPU.load(ordering: .relaxed)
        let cpu = preferred >= 0 && parameters.affinity.contains(preferred) ? preferred : (parameters.affinity.first ?? 0)
        return (channel, cpu)
    }

    /// edu DMA transfers issued since the provider was made (two per copy of up to 4095 bytes).
    public var transfersIssued: Int { engine.transfers.load(ordering: .relaxed) }
    /// Completion interrupts the interrupt service routine acknowledged.
    public var completionInterrupts: Int { engine.completionInterrupts.load(ordering: .relaxed) }
    /// Halt (error) interrupts the interrupt service routine acknowledged.
    public var errorInterrupts: Int { engine.errorInterrupts.load(ordering: .relaxed) }
}

/// Why the edu engine halted a channel: the bits of ``ChannelFault/rawValue``.
public struct EduFault: OptionSet, Sendable, Hashable, CustomStringConvertible {
    public let rawValue: UInt64
    public init(rawValue: UInt64) { self.rawValue = rawValue }
    /// The descriptor's IOVA is misaligned or not in the provider's DMA memory.
    public static let descriptorAddress = EduFault(rawValue: 0x1)
    /// The source range is not mapped, or lies beyond the DMA mask.
    public static let sourceAddress = EduFault(rawValue: 0x2)
    /// The destination range is not mapped, or lies beyond the DMA mask.
    public static let destinationAddress = EduFault(rawValue: 0x4)
    /// The transfer is longer than the maximum transfer size.
    public static let transferSize = EduFault(rawValue: 0x8)
    /// The operation (fill, page break, context change) is not supported.
    public static let operation = EduFault(rawValue: 0x10)
    /// An edu DMA did not finish within the transfer timeout.
    public static let timeout = EduFault(rawValue: 0x20)

    public var causes: [String] {
        var c: [String] = []
        if contains(.descriptorAddress) { c.append("descriptor address not mapped") }
        if contains(.sourceAddress) { c.append("source address not mapped") }
        if contains(.destinationAddress) { c.append("destination address not mapped") }
        if contains(.transferSize) { c.append("transfer size too large") }
        if contains(.operation) { c.append("unsupported operation") }
        if contains(.timeout) { c.append("edu DMA timed out") }
        return c
    }
    public var description: String { causes.joined(separator: ", ") }
}

/// The channel of an ``EduProvider``: NetDMA's provider callbacks, run by the engine thread.
public final class EduChannel<BAR: RegisterIO & ~Copyable>: ProviderChannel, @unchecked Sendable {
    // @unchecked: immutable; the engine's state is behind a Mutex.
    let engine: EduEngine<BAR>

    init(engine: EduEngine<BAR>) { self.engine = engine }

    /// Always 0: edu has one DMA engine.
    public var index: Int { 0 }
    public var interruptEventFD: Int32? { engine.interrupts == nil ? nil : engine.msi.rawValue }
    public var fault: ChannelFault? { engine.state.withLock { $0.fault } }

    /// `ProviderStartDma`: the engine starts on `chain`; a descriptor in progress finishes first.
    public func start(_ chain: DescriptorChain) throws(DriverError) { engine.start(chain) }
    /// `ProviderAppendDma`: 2.0 adds the count; 1.x makes the engine re-read the tail it
    /// stopped on. No lock and no allocation; a system call (the engine's doorbell) only when
    /// the engine thread sleeps.
    public func append(_ chain: DescriptorChain) throws(DriverError) { engine.append(chain) }
    /// `ProviderSuspendDma`: waits (bounded) for the descriptor in progress, then halts.
    public func suspend() throws(DriverError) -> UInt64 { try engine.suspend() }
    /// `ProviderResumeDma`.
    public func resume() throws(DriverError) { engine.resume() }
    /// `ProviderAbortDma`: abandons the chain after the edu DMA in progress (which cannot be
    /// cancelled) and writes Halted.
    public func abort() throws(DriverError) { try engine.abort(reset: false) }
    /// `ProviderResetChannel`.
    public func reset() throws(DriverError) { try engine.abort(reset: true) }
    /// `ProviderFreeDmaChannel`.
    public func free() { engine.free() }

    /// Reads edu's `interrupt status`, acknowledges it, and reports the last completed descriptor.
    public func serviceInterrupt() -> InterruptReport { engine.serviceInterrupt() }
    /// Nothing to re-arm: every raise is a new MSI.
    public func rearmInterrupt() {}
}

/// The software engine: the chain walker driving edu's DMA registers on its own thread.
final class EduEngine<BAR: RegisterIO & ~Copyable>: @unchecked Sendable {
    // @unchecked: `bar` accesses are single MMIO loads/stores; `interrupts` and `thread` are
    // set before the engine is shared; everything else is in the Mutex or atomics.

    struct State {
        var allocated = false
        var status: TransferStatus = .armed
        /// The completion word's CPU address (as an integer: the Mutex's state stays Sendable).
        var word: UInt = 0
        /// The next descriptor to process (1.x idle: the tail to re-read).
        var next: UInt64 = 0
        /// 2.0: descriptors still to process.
        var remaining = 0
        /// 2.0: the value of ``EduEngine/appended`` already added to `remaining`.
        var appendedSeen: UInt64 = 0
        var chainStart: UInt64 = 0
        var lastCompleted: UInt64 = 0
        var processedSinceStart = false
        /// Bumped by Start, Abort, Reset and Free: the descriptor in progress is from an old chain.
        var generation: UInt64 = 0
        /// Bumped by Abort, Reset and Free: the descriptor in progress is abandoned.
        var stopGeneration: UInt64 = 0
        var busy = false
        var fault: ChannelFault?
    }

    /// Interrupt-status bits the engine raises (edu's own DMA bit is 0x100; these are free).
    static var completionBit: UInt32 { 0x1 }
    static var errorBit: UInt32 { 0x2 }

    let bar: BAR
    let memory: DMAMemory
    let counted: Bool
    let maximumTransferSize: Int
    let dmaMask: UInt64
    let transferTimeout: Duration
    let msi: EventFD
    let doorbell: EventFD
    var interrupts: (any InterruptRouting)?
    let state = Mutex(State())
    let affinityCPU = Atomic<Int>(-1)
    /// 2.0: descriptors appended since allocation (Append's lock-free side of `remaining`).
    let appended = Atomic<UInt64>(0)
    /// Set while the engine thread may be about to wait on the doorbell.
    let sleeping = Atomic<Bool>(false)
    let transfers = Atomic<Int>(0)
    let completionInterrupts = Atomic<Int>(0)
    let errorInterrupts = Atomic<Int>(0)
    private let stopping = Atomic<Bool>(false)
    private let stopped = Atomic<Bool>(false)
    private var thread = pthread_t()
    private var threadStarted = false

    init(bar: consuming BAR, memory: DMAMemory, configuration c: EduProvider<BAR>.Configuration) throws(DriverError) {
        self.bar = bar
        self.memory = memory
        counted = c.version.countedChains
        maximumTransferSize = c.maximumTransferSize
        dmaMask = c.dmaMaskBits == 64 ? .max : (1 << UInt64(c.dmaMaskBits)) - 1
        transferTimeout = c.transferTimeout
        msi = try EventFD()
        doorbell = try EventFD()
        // A DMA left running by a previous user must finish before the buffer is reused.
        guard waitIdle() else {
            throw DriverError(.timeout, "The edu device's DMA engine stays busy; reset the VM.")
        }
        let stale = self.bar.read32(Edu.Register.interruptStatus)
        if stale != 0 { self.bar.write32(Edu.Register.interruptAcknowledge, stale) }
    }

    func startThread() throws(DriverError) {
        let body = Unmanaged.passRetained(EduThreadBody { [self] in run() }).toOpaque()
        let r = pthread_create(&thread, nil, { arg in
            Unmanaged<EduThreadBody>.fromOpaque(arg!).takeRetainedValue().run()
            return nil
        }, body)
        guard r == 0 else {
            Unmanaged<EduThreadBody>.fromOpaque(body).release()
            throw DriverError(.outOfMemory, "Cannot create the edu engine thread (pthread_create returned \(r)).")
        }
        threadStarted = true
    }

    func shutdown() {
        guard !stopped.exchange(true, ordering: .acquiringAndReleasing) else { return }
        stopping.store(true, ordering: .releasing)
        doorbell.signal()
        if threadStarted { pthread_join(thread, nil) }
        if let interrupts { try? interrupts.disableInterrupts() }
    }

    private func run() {
        while !stopping.load(ordering: .acquiring) {
            if step() { continue }
            // Announce the sleep, then look once more (Dekker with Append's fence), so an
            // Append either sees `sleeping` and rings, or its work is found here. The timeout
            // is a safety net only.
            sleeping.store(true, ordering: .relaxed)
            atomicMemoryFence(ordering: .sequentiallyConsistent)
            if step() {
                sleeping.store(false, ordering: .relaxed)
                continue
            }
            _ = doorbell.wait(timeoutMilliseconds: 100)
            sleeping.store(false, ordering: .relaxed)
        }
    }

    // MARK: channel calls

    func allocate(completionIOVA: UInt64) throws(DriverError) {
        guard completionIOVA & 7 == 0, completionIOVA <= dmaMask - 7,
              let word = memory.address(ofIOVA: completionIOVA), memory.address(ofIOVA: completionIOVA + 7) == word + 7 else {
            throw DriverError(.unmappedAddress,
                "The completion word at IOVA 0x\(String(completionIOVA, radix: 16)) is not 8-byte aligned DMA memory of this edu provider below its DMA mask.")
        }
        try state.withLock { s throws(DriverError) in
            guard !s.allocated else { throw DriverError(.busy, "The edu provider's only channel is allocated.") }
            let g = s.generation, sg = s.stopGeneration, busy = s.busy
            s = State()
            s.generation = g + 1
            s.stopGeneration = sg + 1
            s.busy = busy
            s.allocated = true
            s.word = UInt(bitPattern: word)
        }
    }

    func start(_ chain: DescriptorChain) {
        state.withLock { s in
            s.generation += 1
            s.fault = nil
            s.next = chain.iova
            s.chainStart = chain.iova
            s.remaining = chain.count
            s.appendedSeen = appended.load(ordering: .acquiring)
            s.processedSinceStart = false
            s.status = .active
        }
        doorbell.signal()
    }

    /// Hot path. 2.0: adds the count for the engine to take; 1.x: the client already linked
    /// the old tail, which the engine re-reads. Rings the doorbell only for a sleeping engine.
    @inline(__always)
    func append(_ chain: DescriptorChain) {
        if counted { appended.add(UInt64(truncatingIfNeeded: chain.count), ordering: .releasing) }
        atomicMemoryFence(ordering: .sequentiallyConsistent)
        if sleeping.load(ordering: .relaxed) { doorbell.signal() }
    }

    func suspend() throws(DriverError) -> UInt64 {
        state.withLock { s in if s.status == .active || s.status == .idle { s.status = .suspend } }
        guard waitNotBusy() else {
            throw DriverError(.timeout, "The edu engine did not finish its descriptor within \(transferTimeout * 2).")
        }
        return state.withLock { s in
            writeCompletion(s, s.lastCompleted, .suspend)
            return s.processedSinceStart ? s.lastCompleted : 0
        }
    }

    func resume() {
        state.withLock { s in
            if s.processedSinceStart, let d = descriptor(at: s.lastCompleted) {
                // 1.x at the end of the chain: stay on the tail, for Append to extend.
                s.next = counted || d.next != 0 ? d.next : s.lastCompleted
                s.status = counted ? (s.remaining > 0 ? .active : .idle) : (d.next != 0 ? .active : .idle)
            } else {
                s.next = s.chainStart
                s.status = .active
            }
        }
        doorbell.signal()
    }

    func abort(reset: Bool) throws(DriverError) {
        state.withLock { s in
            s.generation += 1
            s.stopGeneration += 1
            s.remaining = 0
            s.status = .halted
            writeCompletion(s, s.lastCompleted, .halted)
            if reset {
                let (word, g, sg, busy) = (s.word, s.generation, s.stopGeneration, s.busy)
                s = State()
                s.allocated = true
                s.word = word
                s.generation = g
                s.stopGeneration = sg
                s.busy = busy  // the engine clears it when its edu DMA is over
            }
        }
        // edu cannot cancel a DMA: return once the one in progress is over, so no device write
        // lands after Abort returns.
        guard waitNotBusy() else {
            throw DriverError(.timeout, "The edu DMA in progress did not finish within \(transferTimeout * 2).")
        }
    }

    func free() {
        state.withLock { s in
            s.generation += 1
            s.stopGeneration += 1
            s.allocated = false
            s.status = .armed
        }
        _ = waitNotBusy()
    }

    func serviceInterrupt() -> InterruptReport {
        let status = bar.read32(Edu.Register.interruptStatus)
        if status != 0 { bar.write32(Edu.Register.interruptAcknowledge, status) }
        if status & Self.completionBit != 0 { completionInterrupts.add(1, ordering: .relaxed) }
        if status & Self.errorBit != 0 { errorInterrupts.add(1, ordering: .relaxed) }
        return state.withLock { InterruptReport(lastCompleted: $0.lastCompleted, fault: $0.fault) }
    }

    // MARK: the engine

    /// Processes one descriptor; false when there was nothing to do.
    func step() -> Bool {
        let picked: (iova: UInt64, generation: UInt64, stop: UInt64)? = state.withLock { s in
            guard s.allocated else { return nil }
            if counted {
                // Take what Append added since the last look.
                let a = appended.load(ordering: .acquiring)
                s.remaining += Int(truncatingIfNeeded: a &- s.appendedSeen)
                s.appendedSeen = a
                if s.status == .idle && s.remaining > 0 { s.status = .active }
            } else if s.status == .idle, let n = tailNext(s.next), n != 0 {
                // 1.x: the engine stopped on the tail; Append linked more after it.
                s.next = n
                s.status = .active
            }
            guard s.status == .active else { return nil }
            if counted && s.remaining == 0 { s.status = .idle; return nil }
            s.busy = true
            return (s.next, s.generation, s.stopGeneration)
        }
        guard let picked else { return false }
        let d = descriptor(at: picked.iova)
        let error: EduFault = d.map { execute($0, stop: picked.stop) } ?? .descriptorAddress
        state.withLock { s in
            s.busy = false
            if s.generation != picked.generation {
                // Start while busy: the descriptor completed, the old chain is dropped.
                // Abort/Reset/Free: it is not reported.
                if s.stopGeneration == picked.stop, s.status == .active || s.status == .idle, error.isEmpty, let d {
                    s.lastCompleted = picked.iova
                    s.processedSinceStart = true
                    if d.flags.contains(.statusUpdateOnCompletion) { writeCompletion(s, picked.iova, .active) }
                    if d.flags.contains(.interruptOnCompletion) { raise(Self.completionBit) }
                }
                return
            }
            if !error.isEmpty {
                s.status = .halted
                s.fault = ChannelFault(rawValue: error.rawValue, causes: error.causes, descriptor: picked.iova)
                writeCompletion(s, s.lastCompleted, .halted)
                raise(Self.errorBit)
                return
            }
            let d = d!
            s.lastCompleted = picked.iova
            s.processedSinceStart = true
            var last: Bool
            if counted {
                s.remaining -= 1
                s.next = d.next
                last = s.remaining == 0
            } else if d.next == 0 {
                last = true  // `next` stays on the tail, for Append to re-read
            } else {
                s.next = d.next
                last = false
            }
            if s.status == .suspend { last = false } else if last { s.status = .idle }
            if d.flags.contains(.statusUpdateOnCompletion) { writeCompletion(s, picked.iova, last ? .idle : .active) }
            if d.flags.contains(.interruptOnCompletion) { raise(Self.completionBit) }
        }
        return true
    }

    /// Runs one descriptor's data movement; returns why it failed (empty: it did not).
    private func execute(_ d: Descriptor, stop: UInt64) -> EduFault {
        let flags = d.flags
        if flags.contains(.nullTransfer) || d.transferSize == 0 { return [] }
        guard flags.operation == .copy, !flags.contains(.sourcePageBreak), !flags.contains(.destinationPageBreak) else {
            return .operation
        }
        let n = Int(d.transferSize)
        guard n <= maximumTransferSize else { return .transferSize }
        var fault: EduFault = []
        if !isMapped(d.source, n) { fault.insert(.sourceAddress) }
        if !isMapped(d.destination, n) { fault.insert(.destinationAddress) }
        guard fault.isEmpty else { return fault }
        var offset = 0
        while offset < n {
            let piece = min(Edu.maximumTransfer, n - offset)
            guard transfer(from: d.source + UInt64(offset), to: Edu.bufferAddress, count: piece, toRAM: false),
                  !abandoned(stop),
                  transfer(from: Edu.bufferAddress, to: d.destination + UInt64(offset), count: piece, toRAM: true) else {
                return abandoned(stop) ? [] : .timeout
            }
            offset += piece
            if abandoned(stop) { return [] }
        }
        return []
    }

    private func abandoned(_ stop: UInt64) -> Bool { state.withLock { $0.stopGeneration != stop } }

    /// One edu DMA, polled to completion (its interrupt is left for NetDMA's completions).
    private func transfer(from source: UInt64, to destination: UInt64, count: Int, toRAM: Bool) -> Bool {
        transfers.add(1, ordering: .relaxed)
        bar.write64(Edu.Register.dmaSource, source)
        bar.write64(Edu.Register.dmaDestination, destination)
        bar.write64(Edu.Register.dmaCount, UInt64(count))
        let command: Edu.DMACommand = toRAM ? [.start, .toRAM] : [.start]
        bar.write64(Edu.Register.dmaCommand, command.rawValue)
        return waitIdle()
    }

    /// Polls `DMA command` bit 0 until the engine is idle, every 2 ms, up to the transfer timeout.
    private func waitIdle() -> Bool {
        let deadline = ContinuousClock.now + transferTimeout
        while bar.read64(Edu.Register.dmaCommand) & Edu.DMACommand.start.rawValue != 0 {
            if ContinuousClock.now >= deadline { return false }
            var ts = timespec(tv_sec: 0, tv_nsec: 2_000_000)
            nanosleep(&ts, nil)
        }
        return true
    }

    /// Waits until the engine thread is between descriptors (bounded by two transfer timeouts).
    private func waitNotBusy() -> Bool {
        let deadline = ContinuousClock.now + transferTimeout * 2
        while state.withLock({ $0.busy }) {
            if ContinuousClock.now >= deadline { return false }
            var ts = timespec(tv_sec: 0, tv_nsec: 1_000_000)
            nanosleep(&ts, nil)
        }
        return true
    }

    /// Whether `[iova, iova + length)` is inside the DMA mask and one mapped region of the
    /// provider's DMA memory (edu would silently truncate an address beyond its mask).
    private func isMapped(_ iova: UInt64, _ length: Int) -> Bool {
        let last = iova &+ UInt64(length - 1)
        guard last >= iova, last <= dmaMask, let first = memory.address(ofIOVA: iova),
              let end = memory.address(ofIOVA: last) else { return false }
        return end == first + (length - 1)
    }

    /// The `next` field of the descriptor at `iova`, read with one acquire load (the client
    /// publishes it with a release store while the engine may be looking).
    private func tailNext(_ iova: UInt64) -> UInt64? {
        guard iova != 0, iova & 0x3F == 0, let p = memory.address(ofIOVA: iova), memory.address(ofIOVA: iova + 63) == p + 63 else {
            return nil
        }
        return (p + 24).assumingMemoryBound(to: Atomic<UInt64>.self).pointee.load(ordering: .acquiring)
    }

    /// The descriptor at `iova`, read by the CPU through the DMA memory table (nil: not mapped).
    func descriptor(at iova: UInt64) -> Descriptor? {
        guard iova & 0x3F == 0, iova <= dmaMask, let p = memory.address(ofIOVA: iova),
              memory.address(ofIOVA: iova + 63) == p + 63 else { return nil }
        return p.load(as: Descriptor.self)
    }

    private func writeCompletion(_ s: State, _ descriptor: UInt64, _ status: TransferStatus) {
        guard let p = UnsafeMutableRawPointer(bitPattern: s.word) else { return }
        p.assumingMemoryBound(to: Atomic<UInt64>.self).pointee
            .store(CompletionWord(descriptor: descriptor, status: status).rawValue, ordering: .releasing)
    }

    /// Raises edu's interrupt with `bit` in its status: an MSI on the routed eventfd.
    private func raise(_ bit: UInt32) {
        if interrupts != nil { bar.write32(Edu.Register.interruptRaise, bit) }
    }
}

/// The closure a pthread runs (a C entry point cannot capture the engine's generic parameter).
private final class EduThreadBody {
    let run: () -> Void
    init(_ run: @escaping () -> Void) { self.run = run }
}
