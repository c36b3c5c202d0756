import DSA
import DeviceModels
import Hardware
import IOAT
import NetDMA
import Platform
import Synchronization
import VFIO

/// Open DMA engines sharing one DMA address space: what a client links the library for.
///
/// ``open(_:registry:)`` opens every engine of a selection (VFIO devices through one VFIO
/// container, models through one in-process IOMMU), brings a provider up on each, registers and
/// starts it, and makes one ``DMAMemory`` that is mapped into all of them: a buffer from
/// ``memory`` can be the source or destination of a copy on any engine of the set.
///
/// ```swift
/// let engines = try EngineSet.open(.model(ModelConfiguration(.ioat)))
/// defer { engines.close() }
/// let channel = try engines.allocateChannel()      // channel.cpu: where its DPC runs
/// let queue = try CopyQueue(channel: channel)
/// ```
///
/// ``close()`` stops every provider (draining and freeing its channels), deregisters it and
/// releases its device, last engine first. DMA buffers stay valid until they go away: they keep
/// the address space they are mapped into.
///
/// Thread safety: `open`, `allocateChannel` and `close` may be called from any thread; a channel
/// and the ``CopyQueue`` on it belong to one thread at a time.
public final class EngineSet: Sendable {
    /// The engines, in the selection's order.
    public let engines: [Engine]
    /// DMA memory mapped into every engine of the set.
    public let memory: DMAMemory
    /// The registry the engines' providers are registered with.
    public let registry: NetDMARegistry
    /// One line saying what the set runs on and why (``EngineSelection/headline``).
    public let headline: String

    private init(engines: [Engine], memory: DMAMemory, registry: NetDMARegistry, headline: String) {
        self.engines = engines
        self.memory = memory
        self.registry = registry
        self.headline = headline
    }

    deinit { close() }

    /// Opens the engines of `selection`.
    ///
    /// - Parameters:
    ///   - selection: what to open; ``EngineSelection/resolve(addresses:model:generation:discovery:configure:)``
    ///     makes the usual choice (the addresses given, else every engine bound to vfio-pci,
    ///     else the model).
    ///   - registry: the registry to register with; nil: a registry of the set's own.
    ///   - sysfsRoot, devRoot: where sysfs and `/dev` are (tests point them elsewhere).
    /// - Throws: the first engine's error that fails to open (every engine opened before it is
    ///   closed again): `.permissionDenied`, `.groupNotViable`, `.busy` (another process has
    ///   the device), `.noIOMMU`, `.memlockLimit`, a bring-up failure of the engine...; each
    ///   message says what to do.
    public static func open(_ selection: EngineSelection, registry: NetDMARegistry? = nil,
                            sysfsRoot: String = "/sys", devRoot: String = "/dev") throws(DriverError) -> EngineSet {
        var models: [ModelConfiguration] = []
        var devices: [PCIDevice] = []
        for t in selection.targets {
            switch t {
            case .model(let m): try m.validate(); models.append(m)
            case .vfio(let d): try EngineSelection.requireDriven(d); devices.append(d)
            }
        }
        let container = devices.isEmpty ? nil : try VFIOContainer(sysfsRoot: sysfsRoot, devRoot: devRoot)
        let iommu = models.isEmpty ? nil : SoftIOMMU()
        var spaces: [any DMAAddressSpace] = []
        if let container { spaces.append(container) }
        if let iommu { spaces.append(iommu) }
        let policy: IOVAPolicy
        if container != nil || models.first?.addressing != .identity {
            // VFIO: below 2^39, within every engine's reach (ioat.md §6.8 step 7). Models: from
            // 4 GiB up, never a host address of this process, so a stray one faults.
            policy = container != nil ? VFIOContainer.iovaPolicy(dmaMaskBits: 39) : .allocate(in: 0x1_0000_0000...0xFF_FFFF_FFFF)
        } else {
            policy = .identity
        }
        let memory = DMAMemory(spaces: spaces, policy: policy, preferHugePages: container != nil)
        let registry = registry ?? NetDMARegistry(drainTimeout: container == nil ? .seconds(2) : .seconds(5))
        var engines: [Engine] = []
        do {
            for t in selection.targets {
                switch t {
                case .model(let m): engines.append(try openModel(m, iommu: iommu!, memory: memory, registry: registry))
                case .vfio(let d): engines.append(try openVFIO(d, container: container!, memory: memory, registry: registry))
                }
            }
        } catch {
            for e in engines.reversed() { _ = try? e.stop() }
            throw error
        }
        return EngineSet(engines: engines, memory: memory, registry: registry, headline: selection.headline)
    }

    /// Stops every engine's provider (`NetDmaProviderStop`: each channel is drained and
    /// freed; one that does not drain within the registry's drain timeout is aborted) and
    /// deregisters it, last engine first. The devices are released when the set goes away.
    /// A second call does nothing.
    ///
    /// - Returns: per engine label, the channels that had to be aborted.
    /// - Throws: the first deregistration error, after every engine was stopped.
    @discardableResult
    public func stop() throws(DriverError) -> [String: [Int]] {
        var aborted: [String: [Int]] = [:]
        var first: DriverError?
        for e in engines.reversed() {
            do {
                let a = try e.stop()
                if !a.isEmpty { aborted[e.label] = a }
            } catch {
                first = first ?? error
            }
        }
        if let first { throw first }
        return aborted
    }

    /// ``stop()``, ignoring its errors: what a client calls when it is done (also done when the
    /// set goes away).
    public func close() { _ = try? stop() }

    /// Allocates a channel on the first engine with a free one, preferring engines local to
    /// `cpus`' NUMA nodes.
    ///
    /// - Parameter cpus: the CPUs the channel's interrupt and DPC may run on; nil: the
    ///   engine's local CPUs (``Engine/localCPUs``).
    /// - Throws: `.busy` naming the engines when every channel is allocated;
    ///   `.invalidArgument` when `cpus` holds no CPU this process may use.
    public func allocateChannel(cpus: CPUSet? = nil, priority: Int = 0) throws(DriverError) -> NetDMAChannel {
        let nodes = cpus.map { Set($0.compactMap(NUMA.node(ofCPU:))) } ?? []
        let ordered = engines.filter { $0.numaNode.map(nodes.contains) ?? false } + engines.filter { !($0.numaNode.map(nodes.contains) ?? false) }
        for e in ordered where e.freeChannels > 0 {
            return try e.allocateChannel(cpus: cpus, priority: priority)
        }
        let all = engines.map { "\($0.label) (\($0.channelCount))" }.joined(separator: ", ")
        throw DriverError(.busy, "Every channel of \(all) is allocated; free one (close its CopyQueue owner) or open more engines.")
    }

    // MARK: - opening

    static func openModel(_ m: ModelConfiguration, iommu: SoftIOMMU, memory: DMAMemory,
                          registry: NetDMARegistry) throws(DriverError) -> Engine {
        let started = ContinuousClock.now
        switch m.family {
        case .ioat:
            let p = IOAT.profile(named: m.profile)!
            let device = MockIOATDevice(profile: p, iommu: iommu, execution: m.execution, options: m.ioat)
            m.beforeBringUp?(.ioat(device))
            let provider = try IOATProvider(bar: device.bar0, config: device, interrupts: m.interrupts ? device : nil,
                                            memory: memory,
                                            configuration: .init(version: m.version ?? (p.isV1 ? .v1_1 : .v2_0),
                                                                 timeouts: m.ioatTimeouts))
            let elapsed = ContinuousClock.now - started
            let handle = try provider.register(with: registry)
            return Engine(label: EngineTarget.model(m).label, family: .ioat, registry: registry, handle: handle,
                          provider: provider, info: EngineInfo(provider, platform: p.platform), numaNode: nil,
                          bringUpTime: elapsed, model: .ioat(device), device: device)
        default:
            let p = DSA.profile(named: m.profile)!
            let device = MockDSADevice(profile: p, iommu: iommu, execution: m.execution, options: m.dsaModel)
            m.beforeBringUp?(.dsa(device))
            var c = m.dsa
            if let v = m.version { c.version = v }
            let provider = try DSAProvider(bar: device.bar0, portals: device.bar2, config: device,
                                           interrupts: m.interrupts ? device : nil, memory: memory, configuration: c)
            let elapsed = ContinuousClock.now - started
            let handle = try provider.register(with: registry)
            return Engine(label: EngineTarget.model(m).label, family: .dsa, registry: registry, handle: handle,
                          provider: provider, info: EngineInfo(provider, platform: p.platform), numaNode: nil,
                          bringUpTime: elapsed, model: .dsa(device), device: device)
        }
    }

    static func openVFIO(_ pci: PCIDevice, container: VFIOContainer, memory: DMAMemory,
                         registry: NetDMARegistry) throws(DriverError) -> Engine {
        let engine = pci.engine!
        let device: VFIODevice
        do {
            device = try container.openDevice(pci.address)
        } catch where error.code == .busy {
            let node = pci.iommuGroup.map { "/dev/vfio/\($0)" } ?? "the group's /dev/vfio node"
            throw DriverError(.busy, errno: error.errno,
                "\(error.message) Stop that user (`sudo fuser -v \(node)` names it) and try again.")
        }
        let local = pci.numaNode.map { NUMA.cpus(ofNode: $0).intersection(CPUSet.allowed) }.flatMap { $0.isEmpty ? nil : $0 }
        let started = ContinuousClock.now
        if engine.family == .ioat {
            let bar = try device.mapBAR(0)
            let provider = try IOATProvider(bar: bar, config: device, interrupts: device, memory: memory,
                                            configuration: .init(localCPUs: local))
            let elapsed = ContinuousClock.now - started
            let handle = try provider.register(with: registry)
            return Engine(label: pci.address.description, family: .ioat, registry: registry, handle: handle,
                          provider: provider, info: EngineInfo(provider, platform: engine.platform),
                          numaNode: pci.numaNode, bringUpTime: elapsed, model: nil, device: device)
        }
        let bar = try device.mapBAR(0)
        let portals = try device.mapPortals(bar: 2)
        let provider = try DSAProvider(bar: bar, portals: portals, config: device, interrupts: device, memory: memory,
                                       configuration: .init(localCPUs: local))
        let elapsed = ContinuousClock.now - started
        let handle = try provider.register(with: registry)
        return Engine(label: pci.address.description, family: .dsa, registry: registry, handle: handle,
                      provider: provider, info: EngineInfo(provider, platform: engine.platform),
                      numaNode: pci.numaNode, bringUpTime: elapsed, model: nil, device: device)
    }
}

