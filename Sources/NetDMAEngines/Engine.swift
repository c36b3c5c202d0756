import DSA
import DeviceModels
import Hardware
import IOAT
import NetDMA
import Platform
import Synchronization

/// A built-in device model behind an ``Engine``, for fault injection and statistics.
public enum EngineModel: Sendable {
    /// The CBDMA model.
    case ioat(MockIOATDevice)
    /// The DSA model.
    case dsa(MockDSADevice)

    /// The kernel thread ID of the model's engine thread (0 when it runs manually).
    public var engineThreadID: Int32 {
        switch self {
        case .ioat(let d): d.engineThreadID
        case .dsa(let d): d.engineThreadID
        }
    }
}

/// What an engine is: its identity and capability registers and what its provider declares.
///
/// `netdma probe` prints it; its JSON form is the `identity` object of `probe --json`.
public struct EngineInfo: Codable, Sendable, Hashable {
    /// An identity or capability register: its name, raw value and what it means.
    public struct Register: Codable, Sendable, Hashable {
        public var name: String
        public var value: String
        public var meaning: String
        public init(name: String, value: String, meaning: String) {
            self.name = name
            self.value = value
            self.meaning = meaning
        }
    }

    /// "ioat" or "dsa".
    public var family: String
    /// "CBDMA 3.4", "DSA 1.0".
    public var generation: String
    public var platform: String
    /// The provider's friendly name.
    public var name: String
    /// The NetDMA version the provider declares ("2.0").
    public var netdmaVersion: String
    /// CBVER, CHANCNT, XFERCAP, DMACAPABILITY; VERSION, GENCAP, WQCAP, GRPCAP, ENGCAP, OPCAP.
    public var registers: [Register]
    /// NetDMA channels (CBDMA channels, DSA dedicated WQs).
    public var channels: Int
    /// The largest transfer of one descriptor, in bytes.
    public var maximumTransferSize: Int
    /// Whether the provider executes fill descriptors.
    public var fill: Bool
    /// Whether the channels have interrupt vectors.
    public var interrupts: Bool
    /// DSA: the configuration the bring-up chose (groups, engines, WQs).
    public var dsaConfiguration: String?
}

/// One open DMA engine: a provider brought up on a VFIO device or a device model, registered
/// and started with its ``EngineSet``'s registry.
///
/// Engines are made by ``EngineSet/open(_:registry:)`` and closed with their set.
public final class Engine: @unchecked Sendable {
    // @unchecked: immutable after init; `device` is a VFIODevice or a model (both Sendable).

    /// "0000:00:04.0" for hardware, "model:ioat/icx" for a model.
    public let label: String
    /// `.ioat` or `.dsa`.
    public let family: EngineFamily
    /// The registry the provider is registered with (the set's).
    public let registry: NetDMARegistry
    /// The provider's registration.
    public let handle: ProviderHandle
    /// The NetDMA provider.
    public let provider: any NetDMAProvider
    /// Identity registers and what the provider declares.
    public let info: EngineInfo
    /// The NUMA node of the PCI function (nil for a model, or when sysfs does not say).
    public let numaNode: Int?
    /// How long bring-up took (reset, configuration, NULL self-checks).
    public let bringUpTime: Duration
    /// The device model, when the engine is one.
    public let model: EngineModel?

    private let power: any PowerManagedProvider
    /// The VFIO device or model the provider drives (the provider holds its BAR mappings).
    private let device: AnyObject
    private let stopped = Atomic<Bool>(false)

    init(label: String, family: EngineFamily, registry: NetDMARegistry, handle: ProviderHandle,
         provider: some PowerManagedProvider, info: EngineInfo, numaNode: Int?, bringUpTime: Duration,
         model: EngineModel?, device: AnyObject) {
        self.label = label
        self.family = family
        self.registry = registry
        self.handle = handle
        self.provider = provider
        self.power = provider
        self.info = info
        self.numaNode = numaNode
        self.bringUpTime = bringUpTime
        self.model = model
        self.device = device
    }

    /// Whether the engine is a device model.
    public var isModel: Bool { model != nil }

    /// The number of NetDMA channels.
    public var channelCount: Int { info.channels }

    /// The DMA memory of the engine's address space (its ``EngineSet``'s, shared by every engine
    /// of the set).
    public var memory: DMAMemory { provider.dmaMemory }

    /// The CPUs a channel of this engine prefers: the allowed CPUs of the device's NUMA node, or
    /// every allowed CPU when the node is unknown or has none.
    public var localCPUs: CPUSet {
        let allowed = CPUSet.allowed
        if let numaNode {
            let local = NUMA.cpus(ofNode: numaNode).intersection(allowed)
            if !local.isEmpty { return local }
        }
        return allowed
    }

    /// Allocates one of the engine's channels (`NetDmaAllocateChannel`).
    ///
    /// - Parameters:
    ///   - cpus: the CPUs the channel's interrupt and DPC may run on; nil: ``localCPUs``.
    ///     ``NetDMAChannel/cpu`` tells which one was chosen.
    ///   - priority: NetDMA's channel priority hint.
    /// - Throws: `.busy` when every channel is allocated; `.invalidArgument` when `cpus` holds
    ///   no CPU this process may use.
    public func allocateChannel(cpus: CPUSet? = nil, priority: Int = 0) throws(DriverError) -> NetDMAChannel {
        try registry.allocateChannel(provider: handle, affinity: cpus ?? localCPUs, priority: priority)
    }

    /// Channels of this engine that are not allocated.
    public var freeChannels: Int {
        registry.info(handle).map { $0.characteristics.maxChannelCount - $0.allocatedChannels } ?? 0
    }

    /// PowerDown (netdma.md §10): 1.1+ clients are notified and every channel drained, then the
    /// function goes to D3hot. Channels stay allocated.
    ///
    /// - Throws: `.timeout` when a channel does not drain (the engine stays up).
    public func powerDown() throws(DriverError) { try power.powerDown() }

    /// PowerUp: back to D0 and brought up again; 1.1+ clients are notified and running
    /// channels re-Started.
    public func powerUp() throws(DriverError) { try power.powerUp() }

    /// Stops the provider (`NetDmaProviderStop`: drains and frees its channels) and
    /// deregisters it; the device is released when the engine goes away. Called by
    /// ``EngineSet/stop()``; a second call does nothing and returns [].
    ///
    /// - Returns: the channels that had to be aborted because they did not drain.
    func stop() throws(DriverError) -> [Int] {
        guard !stopped.exchange(true, ordering: .acquiringAndReleasing) else { return [] }
        return try withExtendedLifetime(device) { () throws(DriverError) -> [Int] in try power.deregister() }
    }
}

/// A provider with power management and a registry lifecycle: what an ``Engine`` needs of its
/// provider beyond ``NetDMAProvider``.
protocol PowerManagedProvider: NetDMAProvider {
    func powerDown() throws(DriverError)
    func powerUp() throws(DriverError)
    @discardableResult func deregister() throws(DriverError) -> [Int]
}

extension IOATProvider: PowerManagedProvider where BAR: ~Copyable {}
extension DSAProvider: PowerManagedProvider where BAR: ~Copyable, Portals: ~Copyable {}
