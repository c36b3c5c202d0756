import DSA
import DeviceModels
import Hardware
import IOAT
import NetDMAEngines
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// An IOVA no DMA memory of the soak ever uses: ops that copy from it must fail.
let soakUnmappedIOVA: UInt64 = 0x7E00_0000_0000

/// One engine under soak: a device model, its provider registered with the soak's registry, and
/// the model's fault-injection knobs, behind one interface for both engine families.
///
/// The soak opens each model through the library (``EngineSet``) with its own timing, and
/// reaches the model (``EngineModel``) for fault injection and stalls.
final class SoakEngine: @unchecked Sendable {
    // @unchecked: immutable after init except `pending`, which is behind a Mutex; the closures
    // capture thread-safe objects (models, providers).
    enum Family: String, Sendable { case ioat, dsa }

    let family: Family
    let name: String
    let handle: ProviderHandle
    let memory: DMAMemory
    let iommu: SoftIOMMU
    let channelCount: Int
    /// Injected faults not yet seen failing an op: per channel (CBDMA, per-channel injection)
    /// or in slot 0 (DSA, device-wide injection).
    let pending: Mutex<[[UInt64]]>

    private let powerDownCall: () throws(DriverError) -> Void
    private let powerUpCall: () throws(DriverError) -> Void
    private let injectCall: (Int, inout SplitMix64) -> (raw: UInt64, name: String)
    private let stallCall: (Int, Int) -> Void
    private let corruptCall: ((Int) -> Void)?
    private let statisticsCall: () -> (iommuFaults: UInt64, dropped: UInt64)
    private let deregisterCall: () throws(DriverError) -> [Int]
    /// The engine set (also captured by the closures).
    private let keepAlive: [AnyObject]

    private init(family: Family, name: String, handle: ProviderHandle, memory: DMAMemory, iommu: SoftIOMMU,
                 channelCount: Int, keepAlive: [AnyObject],
                 powerDown: @escaping () throws(DriverError) -> Void, powerUp: @escaping () throws(DriverError) -> Void,
                 inject: @escaping (Int, inout SplitMix64) -> (raw: UInt64, name: String),
                 stall: @escaping (Int, Int) -> Void, corrupt: ((Int) -> Void)? = nil,
                 statistics: @escaping () -> (iommuFaults: UInt64, dropped: UInt64),
                 deregister: @escaping () throws(DriverError) -> [Int]) {
        self.family = family
        self.name = name
        self.handle = handle
        self.memory = memory
        self.iommu = iommu
        self.channelCount = channelCount
        self.keepAlive = keepAlive
        self.pending = Mutex(Array(repeating: [], count: family == .ioat ? channelCount : 1))
        powerDownCall = powerDown
        powerUpCall = powerUp
        injectCall = inject
        stallCall = stall
        corruptCall = corrupt
        statisticsCall = statistics
        deregisterCall = deregister
    }

    /// Every CHANERR class the CBDMA model can inject (every bit the hardware defines).
    static let chanErrClasses: [IOAT.ChanErr] = IOAT.ChanErr.names.map(\.0)

    /// The DSA completion statuses a memory move can end with other than success.
    static let dsaStatuses: [DSA.CompletionStatus] = [
        .pageFault, .pageFaultUnresolved, .badOpcode, .invalidFlags, .nonZeroReserved, .transferSizeRange,
        .overlappingBuffers, DSA.CompletionStatus(rawValue: 0x1C), DSA.CompletionStatus(rawValue: 0x20),
        DSA.CompletionStatus(rawValue: 0x22),
    ]

    /// A CBDMA model of generation `profile` with an ``IOATProvider`` on it, registered and started.
    static func ioat(profile name: String, registry: NetDMARegistry) throws(DriverError) -> SoakEngine {
        var m = ModelConfiguration(.ioat, profile: name)
        m.ioat = .init(resetReads: 3, resetMicroseconds: 0, spinIterations: 500)
        m.ioatTimeouts = IOATTimeouts(quiesce: .seconds(5), reset: .seconds(5), selfTest: .seconds(5), recovery: .milliseconds(100))
        let set = try EngineSet.open(.model(m), registry: registry)
        let engine = set.engines[0]
        guard case .ioat(let device) = engine.model else { preconditionFailure("an ioat model") }
        return SoakEngine(
            family: .ioat, name: engine.info.name, handle: engine.handle, memory: set.memory, iommu: device.iommu,
            channelCount: engine.channelCount, keepAlive: [set],
            powerDown: { () throws(DriverError) in try engine.powerDown() },
            powerUp: { () throws(DriverError) in try engine.powerUp() },
            inject: { channel, rng in
                let err = chanErrClasses[Int(rng.next() % UInt64(chanErrClasses.count))]
                device.inject(.failDescriptor(index: Int(rng.next() % 4), error: err), channel: channel)
                return (UInt64(err.rawValue), "\(err)")
            },
            stall: { channel, us in device.inject(.stall(microseconds: us), channel: channel) },
            corrupt: { channel in device.inject(.corruptRead(index: 0, byteOffset: 0, mask: 0xFF), channel: channel) },
            statistics: { (device.statistics.iommuFaults, 0) },
            deregister: { () throws(DriverError) in try set.stop().values.flatMap { $0 } })
    }

    /// A DSA model with a ``DSAProvider`` on it (`workQueues` dedicated WQs), registered and started.
    static func dsa(workQueues: Int, registry: NetDMARegistry) throws(DriverError) -> SoakEngine {
        var m = ModelConfiguration(.dsa)
        m.dsaModel = .init(spinIterations: 200)
        m.dsa = DSAConfiguration(version: .v2_0, workQueues: workQueues,
                                 timeouts: DSATimeouts(command: .seconds(5), enable: .seconds(5)), pollerSpins: 200)
        let set = try EngineSet.open(.model(m), registry: registry)
        let engine = set.engines[0]
        guard case .dsa(let device) = engine.model else { preconditionFailure("a dsa model") }
        return SoakEngine(
            family: .dsa, name: engine.info.name, handle: engine.handle, memory: set.memory, iommu: device.iommu,
            channelCount: engine.channelCount, keepAlive: [set],
            powerDown: { () throws(DriverError) in try engine.powerDown() },
            powerUp: { () throws(DriverError) in try engine.powerUp() },
            inject: { _, rng in
                let status = dsaStatuses[Int(rng.next() % UInt64(dsaStatuses.count))]
                device.inject(.failDescriptor(index: Int(rng.next() % 4), status: status))
                return (UInt64(status.rawValue), DSAChannel<MockDSARegisters, MockDSAPortals>.statusName(status.rawValue))
            },
            stall: { _, us in
                // The whole engine stops taking descriptors: they pile up in the WQs.
                device.stall()
                usleep(UInt32(us))
                device.resume()
            },
            statistics: { (device.statistics.iommuFaults, device.statistics.droppedDescriptors) },
            deregister: { () throws(DriverError) in try set.stop().values.flatMap { $0 } })
    }

    /// Injects a device fault on `channel` and records it as pending; returns its name.
    func injectFault(channel: Int, _ rng: inout SplitMix64) -> String {
        // Record first: the engine may fail an op before inject returns.
        let slot = family == .ioat ? channel : 0
        var name = ""
        pending.withLock { p in
            let (raw, n) = injectCall(channel, &rng)
            p[slot].append(raw)
            name = n
        }
        return name
    }

    /// Consumes a pending injected fault that explains a failure on `channel` whose decoded
    /// error is `raw` (nil: unknown); returns whether one did.
    /// With `strict`, only a pending fault that matches `raw` counts.
    func consumeInjected(channel: Int, raw: UInt64?, strict: Bool) -> Bool {
        let slot = family == .ioat ? channel : 0
        return pending.withLock { p in
            if let raw, let i = p[slot].firstIndex(where: { matches(injected: $0, raw: raw) }) {
                p[slot].remove(at: i)
                return true
            }
            guard !strict, !p[slot].isEmpty else { return false }
            p[slot].removeFirst()
            return true
        }
    }

    /// Whether a decoded fault `raw` is the injected fault `injected` (CHANERR bits, DSA status).
    func matches(injected: UInt64, raw: UInt64) -> Bool {
        switch family {
        case .ioat: raw & injected != 0
        case .dsa: raw & 0x7F == injected
        }
    }

    /// Whether any injected fault on `channel`'s device is still pending.
    func hasPending(channel: Int) -> Bool {
        let slot = family == .ioat ? channel : 0
        return pending.withLock { !$0[slot].isEmpty }
    }

    func stall(channel: Int, microseconds: Int) { stallCall(channel, microseconds) }
    /// Silent data corruption of the next descriptor's source read (CBDMA model only): the
    /// soak must catch it. Returns false when the model cannot do it.
    func corrupt(channel: Int) -> Bool {
        guard let corruptCall else { return false }
        corruptCall(channel)
        return true
    }
    func powerDown() throws(DriverError) { try powerDownCall() }
    func powerUp() throws(DriverError) { try powerUpCall() }
    var statistics: (iommuFaults: UInt64, dropped: UInt64) { statisticsCall() }

    /// Stops and deregisters the provider (draining or aborting every channel). The model's
    /// engine thread ends and its eventfds close when this object goes away.
    func shutdown() throws(DriverError) -> [Int] { try deregisterCall() }
}
