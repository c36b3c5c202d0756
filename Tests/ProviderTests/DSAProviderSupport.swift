import DSA
import DeviceModels
import Hardware
import NetDMA
import Platform
import Synchronization
import Testing

#if canImport(Glibc)
import Glibc
#endif

typealias ModelDSAProvider = DSAProvider<MockDSARegisters, MockDSAPortals>
typealias ModelDSAChannel = DSAChannel<MockDSARegisters, MockDSAPortals>

/// Generous bounds: the model shares two busy cores with parallel builds and tests.
let dsaTestTimeouts = DSATimeouts(command: .seconds(5), enable: .seconds(5))

/// A model, DMA memory in its IOMMU, and a ``DSAProvider`` brought up on it.
final class DSARig: @unchecked Sendable {
    // @unchecked: test scaffolding used from one test at a time.
    let iommu = SoftIOMMU()
    let memory: DMAMemory
    let model: MockDSADevice
    let config: MockDSADevice
    let provider: ModelDSAProvider

    init(profile: DSA.Profile = DSA.sapphireRapids, configuration: DSAConfiguration = .init(),
         interrupts: Bool = true, options: MockDSADevice.Options = .init(spinIterations: 200),
         timeouts: DSATimeouts = dsaTestTimeouts, prepare: (MockDSADevice) -> Void = { _ in }) throws {
        // Allocated IOVAs (not VA = IOVA), so that an IOVA/VA mix-up faults.
        memory = DMAMemory(spaces: [iommu], policy: .allocate(in: 0x1_0000_0000...0xFF_FFFF_FFFF), preferHugePages: false)
        model = MockDSADevice(profile: profile, iommu: iommu, execution: .thread, options: options)
        config = model
        prepare(model)
        var c = configuration
        c.timeouts = timeouts
        c.pollerSpins = 200
        provider = try ModelDSAProvider(bar: model.bar0, portals: model.bar2, config: config,
                                        interrupts: interrupts ? model : nil, memory: memory, configuration: c)
    }

    func channel(_ i: Int) -> ModelDSAChannel { provider.channels[i] }
}

/// The DSA provider on the model as a target of the shared NetDMA conformance suite.
final class DSATarget: ConformanceTarget, @unchecked Sendable {
    let rig: DSARig
    init(version: NetDMAVersion, profile: DSA.Profile = DSA.sapphireRapids, interrupts: Bool = true,
         maximumTransferShift: Int? = nil, maximumBatch: Int = 64) throws {
        rig = try DSARig(profile: profile,
                         configuration: .init(version: version, workQueues: 4, maximumBatch: maximumBatch,
                                              maximumTransferShift: maximumTransferShift),
                         interrupts: interrupts)
    }
    var provider: any NetDMAProvider { rig.provider }
    var attributes: ProviderAttributes { rig.provider.attributes }
    func shutdown() {}
    /// The model's engine stops taking descriptors (they stay queued in the WQ).
    func hold(channel index: Int, _ on: Bool) { on ? rig.model.stall() : rig.model.resume() }
    func inFlight(channel index: Int) -> UInt64 { rig.channel(index).currentDescriptor }
    func suspendRequested(channel index: Int) -> Bool { rig.channel(index).suspendRequested }
    func interruptsRaised(channel index: Int) -> Int {
        Int(rig.model.interruptCount(vector: index + 1)) + rig.channel(index).softwareInterrupts
    }
    func rearms(channel index: Int) -> Int { rig.channel(index).rearms }
    func startedFlags(channel index: Int) -> [ControlFlags] { rig.channel(index).startedFlags }
    func loseContext(channel index: Int) { rig.channel(index).loseContext() }
}

extension TargetFactory {
    static func dsa(_ version: NetDMAVersion, profile: DSA.Profile = DSA.sapphireRapids, interrupts: Bool = true,
                    maximumBatch: Int = 64) -> TargetFactory {
        let name = "DSA (\(profile.name)) on MockDSADevice\(maximumBatch > 1 ? "" : ", no batches")"
        return TargetFactory(name: name, version: version) {
            try DSATarget(version: version, profile: profile, interrupts: interrupts, maximumTransferShift: 20,
                          maximumBatch: maximumBatch)
        }
    }

    /// Every DSA target: each NetDMA version with batches on SPR, 2.0 without batches, and the
    /// DSA 2.0 profile.
    static let dsaTargets: [TargetFactory] = [.dsa(.v1_0), .dsa(.v1_1), .dsa(.v2_0), .dsa(.v2_0, maximumBatch: 1),
                                              .dsa(.v2_0, profile: DSA.dsa2)]
}

/// A provider channel allocated directly (no registry), with its own completion word.
final class DSADirectChannel: @unchecked Sendable {
    let word: DMABuffer
    let channel: ModelDSAChannel
    let cpu: Int

    init(_ rig: DSARig) throws {
        word = try rig.memory.allocate(length: 64)
        word.base.storeBytes(of: UInt64(TransferStatus.armed.rawValue), as: UInt64.self)
        let p = ChannelParameters(completionAddress: word.base.assumingMemoryBound(to: UInt64.self),
                                  completionIOVA: word.iova, affinity: CPUSet.allowed)
        let (ch, cpu) = try rig.provider.allocateChannel(p)
        channel = ch as! ModelDSAChannel
        self.cpu = cpu
    }

    var completion: CompletionWord {
        CompletionWord(rawValue: word.base.assumingMemoryBound(to: Atomic<UInt64>.self).pointee.load(ordering: .acquiring))
    }
}

/// A BAR0 that passes every access to the model's, letting a test change what the provider
/// writes (to reach configuration errors the provider itself never makes).
struct FilteredBAR: RegisterIO {
    let base: MockDSARegisters
    /// Called for each write: (offset, value, width) → the value to write, or nil to drop it.
    let filter: @Sendable (Int, UInt64, Int) -> UInt64?
    /// Called after each write went through.
    let after: @Sendable (Int, UInt64) -> Void
    init(_ base: MockDSARegisters, filter: @escaping @Sendable (Int, UInt64, Int) -> UInt64?,
         after: @escaping @Sendable (Int, UInt64) -> Void = { _, _ in }) {
        self.base = base
        self.filter = filter
        self.after = after
    }
    var length: Int { base.length }
    func read8(_ o: Int) -> UInt8 { base.read8(o) }
    func read16(_ o: Int) -> UInt16 { base.read16(o) }
    func read32(_ o: Int) -> UInt32 { base.read32(o) }
    func read64(_ o: Int) -> UInt64 { base.read64(o) }
    func write8(_ o: Int, _ v: UInt8) { if let w = filter(o, UInt64(v), 1) { base.write8(o, UInt8(truncatingIfNeeded: w)); after(o, w) } }
    func write16(_ o: Int, _ v: UInt16) { if let w = filter(o, UInt64(v), 2) { base.write16(o, UInt16(truncatingIfNeeded: w)); after(o, w) } }
    func write32(_ o: Int, _ v: UInt32) { if let w = filter(o, UInt64(v), 4) { base.write32(o, UInt32(truncatingIfNeeded: w)); after(o, w) } }
    func write64(_ o: Int, _ v: UInt64) { if let w = filter(o, v, 8) { base.write64(o, w); after(o, w) } }
}

/// Brings a provider up on `model` through a filtered BAR0.
func filteredProvider(_ model: MockDSADevice, memory: DMAMemory, configuration: DSAConfiguration = .init(),
                      filter: @escaping @Sendable (Int, UInt64, Int) -> UInt64?,
                      after: @escaping @Sendable (Int, UInt64) -> Void = { _, _ in }) throws(DriverError) -> DSAProvider<FilteredBAR, MockDSAPortals> {
    var c = configuration
    c.timeouts = dsaTestTimeouts
    return try DSAProvider(bar: FilteredBAR(model.bar0, filter: filter, after: after), portals: model.bar2,
                           config: model, interrupts: nil, memory: memory, configuration: c)
}

/// Expects `body` to throw a ``DriverError`` with `code` whose message contains every string.
func expectDriverError<T>(_ code: DriverError.Code, _ fragments: [String], sourceLocation: SourceLocation = #_sourceLocation,
                          _ body: () throws -> T) {
    do {
        _ = try body()
        Issue.record("expected \(code) error", sourceLocation: sourceLocation)
    } catch let e as DriverError {
        #expect(e.code == code, "\(e)", sourceLocation: sourceLocation)
        for f in fragments { #expect(e.message.contains(f), "message lacks '\(f)': \(e.message)", sourceLocation: sourceLocation) }
    } catch {
        Issue.record("unexpected error \(error)", sourceLocation: sourceLocation)
    }
}

/// Descriptors `range` of `pool` as a chain (2.0: the last links on; 1.x: NULL-terminated).
func dsaChain(_ pool: DescriptorPool, _ range: Range<Int>, counted: Bool = true) -> DescriptorChain {
    for i in range {
        let last = i + 1 == range.upperBound
        pool[i].pointee.next = last && !counted ? 0 : pool.iova(at: (i + 1) % pool.count)
    }
    return pool.chain(from: range.lowerBound, count: range.count)
}
