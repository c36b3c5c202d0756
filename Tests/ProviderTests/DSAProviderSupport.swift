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

/// The model's configuration space as a ``PCIConfigAccess`` (what VFIO's config region gives).
final class DSAModelConfig: PCIConfigAccess {
    let config: MockDSAConfig
    init(_ config: MockDSAConfig) { self.config = config }
    func readConfig32(_ offset: Int) throws(DriverError) -> UInt32 { config.read32(offset) }
    func writeConfig32(_ offset: Int, _ value: UInt32) throws(DriverError) { config.write32(offset, value) }
}

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
    let config: DSAModelConfig
    let provider: ModelDSAProvider

    init(profile: DSA.Profile = DSA.sapphireRapids, configuration: DSAConfiguration = .init(),
         interrupts: Bool = true, options: MockDSADevice.Options = .init(spinIterations: 200),
         prepare: (MockDSADevice) -> Void = { _ in }) throws {
        // Allocated IOVAs (not VA = IOVA), so that an IOVA/VA mix-up faults.
        memory = DMAMemory(spaces: [iommu], policy: .allocate(in: 0x1_0000_0000...0xFF_FFFF_FFFF), preferHugePages: false)
        model = MockDSADevice(profile: profile, iommu: iommu, execution: .thread, options: options)
        config = DSAModelConfig(model.config)
        prepare(model)
        var c = configuration
        c.timeouts = dsaTestTimeouts
        c.pollerSpins = 200
        provider = try ModelDSAProvider(bar: model.bar0, portals: model.bar2, config: config,
                                        interrupts: interrupts ? model : nil, memory: memory, configuration: c)
    }

    func channel(_ i: Int) -> ModelDSAChannel { provider.channels[i] }
}

/// The DSA provider on the model as a target of the shared NetDMA conformance suite.
final class DSATarget: ConformanceTarget, @unchecked Sendable {
    let rig: DSARig
    init(version: NetDMAVersion, interrupts: Bool = true, maximumTransferShift: Int? = nil, maximumBatch: Int = 64) throws {
        rig = try DSARig(configuration: .init(version: version, workQueues: 4, maximumBatch: maximumBatch,
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
    static func dsa(_ version: NetDMAVersion, interrupts: Bool = true, maximumBatch: Int = 64) -> TargetFactory {
        TargetFactory(name: maximumBatch > 1 ? "DSA on MockDSADevice" : "DSA on MockDSADevice, no batches", version: version) {
            try DSATarget(version: version, interrupts: interrupts, maximumTransferShift: 20, maximumBatch: maximumBatch)
        }
    }

    /// Every DSA target: each NetDMA version with batches, and 2.0 without.
    static let all: [TargetFactory] = [.dsa(.v1_0), .dsa(.v1_1), .dsa(.v2_0), .dsa(.v2_0, maximumBatch: 1)]
    /// The target of single-version tests.
    static func primary(_ version: NetDMAVersion) -> TargetFactory { .dsa(version) }
    /// A 2.0 target whose channels have no interrupt vector.
    static var withoutInterrupts: TargetFactory { .dsa(.v2_0, interrupts: false) }
}
