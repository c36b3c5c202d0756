import ArgumentParser
import DSA
import DeviceModels
import Foundation
import Hardware
import IOAT
import NetDMA
import Platform
import VFIO

/// The engine family a session drives.
enum EngineFamily: String, Codable, Sendable, ExpressibleByArgument, CaseIterable {
    /// Intel CBDMA / I/OAT (QuickData).
    case ioat
    /// Intel Data Streaming Accelerator.
    case dsa
}

/// What `probe`, `selftest` and `bench` run on: engines bound to vfio-pci, or the built-in
/// device model. Shared by the three commands.
struct EngineOptions: ParsableArguments {
    @Argument(help: "PCI addresses of engines bound to vfio-pci (default: every one; none bound: the built-in model).")
    var addresses: [PCIAddress] = []

    @Option(help: "Run on the built-in device model of this engine family (ioat or dsa) instead of hardware.")
    var model: EngineFamily?

    @Option(help: ArgumentHelp("The model's generation profile, e.g. icx, skx, bdx, tbg, cb1 (ioat) or spr, dsa2 (dsa).",
                               valueName: "profile"))
    var generation: String?

    @Option(help: .hidden)
    var injectFault: ModelFault?

    @OptionGroup var system: SystemOptions

    func validate() throws {
        if model != nil && !addresses.isEmpty {
            throw ValidationError("Give PCI addresses or --model, not both.")
        }
        if let generation {
            let family = model ?? EngineTargets.family(ofProfile: generation)
            guard let family, EngineTargets.profileNames(family).contains(generation) else {
                let all = EngineFamily.allCases.map { "\($0.rawValue): \(EngineTargets.profileNames($0).joined(separator: ", "))" }
                throw ValidationError("Unknown generation '\(generation)'. Profiles — \(all.joined(separator: "; ")).")
            }
        }
    }

    /// Resolves what to open.
    func targets() throws(DriverError) -> EngineTargets {
        try EngineTargets.resolve(addresses: addresses, model: model, generation: generation, system: system, fault: injectFault)
    }
}

/// A fault the model injects on purpose (hidden option, for tests of the failure paths).
enum ModelFault: String, ExpressibleByArgument, Sendable {
    /// The next copy's data arrives corrupted (CBDMA) or fails (DSA).
    case copy
    /// The device fails its bring-up (every descriptor of the NULL self-check errors).
    case bringUp = "bring-up"
}

/// The engines a command will open, and the sentence that says where they are.
struct EngineTargets {
    enum Target {
        /// A PCI function bound to vfio-pci.
        case vfio(PCIDevice)
        /// The built-in model of `family` with generation profile `profile`.
        case model(EngineFamily, profile: String)
    }

    var targets: [Target]
    /// The first line of output: hardware or the model, and why.
    var headline: String
    var usesModel: Bool
    var system: SystemOptions
    var fault: ModelFault?

    static func profileNames(_ family: EngineFamily) -> [String] {
        switch family {
        case .ioat: IOAT.profiles.map(\.name)
        case .dsa: DSA.profiles.map(\.name)
        }
    }

    static func family(ofProfile name: String) -> EngineFamily? {
        EngineFamily.allCases.first { profileNames($0).contains(name) }
    }

    /// The newest generation of each model: CBDMA 3.4 (Ice Lake) and DSA 1.0 (Sapphire Rapids).
    static func defaultProfile(_ family: EngineFamily) -> String {
        switch family {
        case .ioat: "icx"
        case .dsa: DSA.sapphireRapids.name
        }
    }

    static func describeModel(_ family: EngineFamily, _ profile: String) -> String {
        switch family {
        case .ioat:
            let p = IOAT.profile(named: profile)!
            return "MockIOATDevice, CBDMA \(p.major).\(p.minor) '\(p.name)' (\(p.platform))"
        case .dsa:
            let p = DSA.profile(named: profile)!
            return "MockDSADevice, DSA \(p.version >> 8).\(p.version & 0xFF) '\(p.name)' (\(p.platform))"
        }
    }

    static func resolve(addresses: [PCIAddress], model: EngineFamily?, generation: String?, system: SystemOptions,
                        fault: ModelFault?) throws(DriverError) -> EngineTargets {
        func onModel(_ why: String) -> EngineTargets {
            let family = model ?? generation.flatMap(family(ofProfile:)) ?? .ioat
            let profile = generation ?? defaultProfile(family)
            return EngineTargets(targets: [.model(family, profile: profile)],
                                 headline: "Running on the built-in device model (\(describeModel(family, profile))): \(why).",
                                 usesModel: true, system: system, fault: fault)
        }
        if model != nil { return onModel("--model asked for it") }
        let hardware = try resolveHardware(addresses: addresses, generation: generation, system: system, onModel: onModel)
        if fault != nil && !hardware.usesModel {
            throw DriverError(.invalidArgument, "--inject-fault works only on the built-in model; add --model ioat|dsa.")
        }
        return hardware
    }

    private static func resolveHardware(addresses: [PCIAddress], generation: String?, system: SystemOptions,
                                        onModel: (String) -> EngineTargets) throws(DriverError) -> EngineTargets {
        let fault: ModelFault? = nil
        let discovery = system.discovery
        if !addresses.isEmpty {
            var devices: [PCIDevice] = []
            for a in addresses {
                let d = try discovery.device(at: a)
                guard let engine = d.engine else {
                    throw DriverError(.invalidArgument, "\(a) [\(d.id)] \(d.displayName) is not a known DMA engine. Run `netdma list` to see the engines.")
                }
                guard engine.supported, engine.family == .ioat || engine.family == .dsa else {
                    throw DriverError(.unsupported, "\(a) is \(engine.generation) (\(engine.platform)), which this driver does not drive.")
                }
                if let problem = discovery.readiness(of: d).problem { throw problem }
                devices.append(d)
            }
            return EngineTargets(targets: devices.map { .vfio($0) },
                                 headline: "Running on \(devices.count) engine\(devices.count == 1 ? "" : "s") through VFIO: \(devices.map(\.address.description).joined(separator: ", ")).",
                                 usesModel: false, system: system, fault: fault)
        }
        let engines = discovery.engines().filter { $0.engine?.supported == true && ($0.engine?.family == .ioat || $0.engine?.family == .dsa) }
        let bound = engines.filter { $0.driver == "vfio-pci" }
        if bound.isEmpty {
            if generation != nil { return onModel("--generation asked for it") }
            if engines.isEmpty { return onModel("this machine has no CBDMA or DSA engine") }
            let names = engines.map { "\($0.address) (\($0.driver ?? "no driver"))" }.joined(separator: ", ")
            return onModel("no engine is bound to vfio-pci (found \(names); `sudo netdma bind BDF` to use one)")
        }
        if generation != nil {
            throw DriverError(.invalidArgument, "--generation chooses a model profile; add --model ioat|dsa to run on the model while engines are bound to vfio-pci.")
        }
        for d in bound {
            if let problem = discovery.readiness(of: d).problem { throw problem }
        }
        return EngineTargets(targets: bound.map { .vfio($0) },
                             headline: "Running on \(bound.count) engine\(bound.count == 1 ? "" : "s") bound to vfio-pci: \(bound.map(\.address.description).joined(separator: ", ")).",
                             usesModel: false, system: system, fault: fault)
    }

    /// Opens one target: VFIO or the model, a provider brought up on it, registered and started
    /// with a registry of its own.
    func open(_ target: Target) throws(DriverError) -> EngineSession {
        switch target {
        case .model(let family, let profile): try EngineSession.openModel(family, profile: profile, fault: fault)
        case .vfio(let device): try EngineSession.openVFIO(device, system: system)
        }
    }
}

extension DriverError {
    /// Whether the error is about this machine's setup (root, IOMMU, driver binding, another
    /// user of the device, locked memory), not about the engine: commands stop with a one-line
    /// error and its fix instead of reporting the engine as failed.
    var isSetupProblem: Bool {
        [.permissionDenied, .noIOMMU, .wrongDriver, .groupNotViable, .busy, .notFound, .memlockLimit].contains(code)
    }
}

/// A register in the identity report: its name, raw value and what it means.
struct RegisterValue: Codable, Equatable {
    var name: String
    var value: String
    var meaning: String
}

/// What `probe` reports about an engine before touching its channels.
struct EngineIdentityReport: Codable, Equatable {
    /// "ioat" or "dsa".
    var family: String
    /// e.g. "CBDMA 3.4", "DSA 1.0".
    var generation: String
    var platform: String
    /// The provider's friendly name.
    var name: String
    /// The NetDMA version the provider declares.
    var netdmaVersion: String
    /// Identity and capability registers (CBVER, CHANCNT, XFERCAP, DMACAPABILITY; VERSION,
    /// GENCAP, WQCAP, GRPCAP, ENGCAP, OPCAP).
    var registers: [RegisterValue]
    /// NetDMA channels (CBDMA channels, DSA dedicated WQs).
    var channels: Int
    var maximumTransferSize: Int
    var fill: Bool
    /// Whether channels have interrupt vectors.
    var interrupts: Bool
    /// DSA: the configuration the bring-up chose (groups, engines, WQs).
    var dsaConfiguration: String?
}

/// One open engine: a provider on VFIO or on the model, registered and started with its own
/// ``NetDMARegistry``. ``close()`` stops and deregisters it and releases the device.
final class EngineSession {
    /// "0000:00:04.0" for hardware, "model:ioat/icx" for the model.
    let label: String
    let family: EngineFamily
    let isModel: Bool
    let registry: NetDMARegistry
    let handle: ProviderHandle
    let provider: any NetDMAProvider
    let identity: EngineIdentityReport
    /// The device's NUMA node (nil for the model or when sysfs does not say).
    let deviceNode: Int?
    /// How long bring-up (reset, configuration, NULL self-checks) took.
    let bringUpTime: Duration
    /// Makes the next copy on the model go wrong: set when `--inject-fault copy` asked for it
    /// (never on hardware). Commands call it right before the copies it should hit.
    let injectCopyFault: (() -> Void)?
    private var teardown: (() -> Void)?

    init(label: String, family: EngineFamily, isModel: Bool, registry: NetDMARegistry, handle: ProviderHandle,
         provider: any NetDMAProvider, identity: EngineIdentityReport, deviceNode: Int?, bringUpTime: Duration,
         injectCopyFault: (() -> Void)?, teardown: @escaping () -> Void) {
        self.label = label
        self.family = family
        self.isModel = isModel
        self.registry = registry
        self.handle = handle
        self.provider = provider
        self.identity = identity
        self.deviceNode = deviceNode
        self.bringUpTime = bringUpTime
        self.injectCopyFault = injectCopyFault
        self.teardown = teardown
    }

    deinit { close() }

    var memory: DMAMemory { provider.dmaMemory }
    var channelCount: Int { identity.channels }

    /// Stops the provider (drains and frees its channels), deregisters it and releases the device.
    func close() {
        teardown?()
        teardown = nil
    }

    /// Allocates a channel on a CPU of the device's node when there is one.
    func allocateChannel() throws(DriverError) -> NetDMAChannel {
        var affinity: CPUSet = []
        if let node = deviceNode {
            let local = NUMA.cpus(ofNode: node).intersection(CPUSet.allowed)
            if !local.isEmpty { affinity = local }
        }
        return try registry.allocateChannel(provider: handle, affinity: affinity)
    }

    /// An IOVA nothing is mapped at, inside the engine's reach (for the error-path checks).
    var unmappedIOVA: UInt64 {
        let top = memory.regions.map { $0.iova + UInt64($0.length) }.max() ?? 0x1_0000_0000
        return (top + 0x1000_0000) & ~0xFFF
    }

    // MARK: - opening

    /// Bounds for the register sequences of a model that shares two busy cores: generous, so a
    /// slow scheduler never fails a probe (they are bounds, not waits).
    static let modelIOATTimeouts = IOATTimeouts(quiesce: .seconds(2), reset: .seconds(2), selfTest: .seconds(2), recovery: .milliseconds(100))

    static func modelMemory(_ iommu: SoftIOMMU) -> DMAMemory {
        // Allocated IOVAs (not IOVA = VA) so that an unmapped address is certain to fault.
        DMAMemory(spaces: [iommu], policy: .allocate(in: 0x1_0000_0000...0xFF_FFFF_FFFF), preferHugePages: false)
    }

    static func openModel(_ family: EngineFamily, profile: String, fault: ModelFault?) throws(DriverError) -> EngineSession {
        let iommu = SoftIOMMU()
        let memory = modelMemory(iommu)
        let registry = NetDMARegistry(drainTimeout: .seconds(2))
        let started = ContinuousClock.now
        switch family {
        case .ioat:
            let p = IOAT.profile(named: profile)!
            let device = MockIOATDevice(profile: p, iommu: iommu, execution: .thread,
                                        options: .init(resetReads: 2, resetMicroseconds: 20, spinIterations: 2000))
            if fault == .bringUp {
                for c in 0..<device.channelCount { device.inject(.failDescriptor(index: 0, error: .sourceAddress), channel: c) }
            }
            let config = device
            let provider = try IOATProvider(bar: device.bar0, config: config, interrupts: device, memory: memory,
                                            configuration: .init(version: p.isV1 ? .v1_1 : .v2_0, timeouts: modelIOATTimeouts))
            let elapsed = ContinuousClock.now - started
            let handle = try provider.register(with: registry)
            let inject: () -> Void = {
                for c in 0..<device.channelCount { device.inject(.failDescriptor(index: 0, error: .readData), channel: c) }
            }
            return EngineSession(
                label: "model:ioat/\(p.name)", family: .ioat, isModel: true, registry: registry, handle: handle,
                provider: provider, identity: ioatIdentity(provider.device, provider, platform: p.platform),
                deviceNode: nil, bringUpTime: elapsed, injectCopyFault: fault == .copy ? inject : nil,
                teardown: { _ = try? provider.deregister(); withExtendedLifetime(device) {} })
        case .dsa:
            let p = DSA.profile(named: profile)!
            let device = MockDSADevice(profile: p, iommu: iommu, execution: .thread, options: .init(spinIterations: 2000))
            if fault == .bringUp { device.inject(.halt(resetType: .flr)) }
            let config = device
            let provider = try DSAProvider(bar: device.bar0, portals: device.bar2, config: config, interrupts: device,
                                           memory: memory,
                                           configuration: .init(workQueues: 4, timeouts: DSATimeouts(command: .seconds(2), enable: .seconds(2))))
            let elapsed = ContinuousClock.now - started
            let handle = try provider.register(with: registry)
            let inject: () -> Void = { device.inject(.failDescriptor(index: 0, status: .pageFault)) }
            return EngineSession(
                label: "model:dsa/\(p.name)", family: .dsa, isModel: true, registry: registry, handle: handle,
                provider: provider, identity: dsaIdentity(provider.device, provider, platform: p.platform),
                deviceNode: nil, bringUpTime: elapsed, injectCopyFault: fault == .copy ? inject : nil,
                teardown: { _ = try? provider.deregister(); withExtendedLifetime(device) {} })
        }
    }

    static func openVFIO(_ pci: PCIDevice, system: SystemOptions) throws(DriverError) -> EngineSession {
        guard let engine = pci.engine, engine.supported else {
            throw DriverError(.unsupported, "\(pci.address) is not an engine this driver drives.")
        }
        let container = try VFIOContainer(sysfsRoot: system.sysfsRoot, devRoot: system.devRoot)
        let device: VFIODevice
        do {
            device = try container.openDevice(pci.address)
        } catch where error.code == .busy {
            let node = pci.iommuGroup.map { "\(system.devRoot)/vfio/\($0)" } ?? "the group's /dev/vfio node"
            throw DriverError(.busy, errno: error.errno,
                "\(error.message) Stop that user (`sudo fuser -v \(node)` names it) and run netdma again.")
        }
        // Allocated IOVAs below 2^39: within every engine's reach (ioat.md §6.8 step 7).
        let memory = DMAMemory(spaces: [container], policy: VFIOContainer.iovaPolicy(dmaMaskBits: 39))
        let local = pci.numaNode.map { NUMA.cpus(ofNode: $0).intersection(CPUSet.allowed) }.flatMap { $0.isEmpty ? nil : $0 }
        let registry = NetDMARegistry()
        let config = device
        let started = ContinuousClock.now
        switch engine.family {
        case .ioat:
            let bar = try device.mapBAR(0)
            let provider = try IOATProvider(bar: bar, config: config, interrupts: device, memory: memory,
                                            configuration: .init(localCPUs: local))
            let elapsed = ContinuousClock.now - started
            let handle = try provider.register(with: registry)
            return EngineSession(
                label: pci.address.description, family: .ioat, isModel: false, registry: registry, handle: handle,
                provider: provider, identity: ioatIdentity(provider.device, provider, platform: engine.platform),
                deviceNode: pci.numaNode, bringUpTime: elapsed, injectCopyFault: nil,
                teardown: { _ = try? provider.deregister(); withExtendedLifetime((device, container)) {} })
        case .dsa:
            let bar = try device.mapBAR(0)
            let portals = try device.mapPortals(bar: 2)
            let provider = try DSAProvider(bar: bar, portals: portals, config: config, interrupts: device, memory: memory,
                                           configuration: .init(localCPUs: local))
            let elapsed = ContinuousClock.now - started
            let handle = try provider.register(with: registry)
            return EngineSession(
                label: pci.address.description, family: .dsa, isModel: false, registry: registry, handle: handle,
                provider: provider, identity: dsaIdentity(provider.device, provider, platform: engine.platform),
                deviceNode: pci.numaNode, bringUpTime: elapsed, injectCopyFault: nil,
                teardown: { _ = try? provider.deregister(); withExtendedLifetime((device, container)) {} })
        default:
            throw DriverError(.unsupported, "\(pci.address) is \(engine.generation), which this driver does not drive.")
        }
    }

    // MARK: - identity

    static func hex<T: BinaryInteger>(_ v: T, _ digits: Int) -> String {
        let s = String(v, radix: 16)
        return "0x" + String(repeating: "0", count: max(0, digits - s.count)) + s
    }

    static let dmaCapabilityNames: [(IOAT.DMACapability, String)] = [
        (.pageBreak, "page break"), (.crc, "CRC"), (.skipMarker, "skip marker"), (.dca, "DCA"), (.crcMove, "CRC move"),
        (.blockFill, "block fill"), (.apic, "APIC"), (.xor, "XOR"), (.pq, "P/Q"), (.dif, "DIF"), (.dwbes, "DWBES"),
        (.raid16ss, "RAID16SS"), (.dmaMulticast, "multicast"), (.completionTimeout, "completion timeout"),
        (.descriptorPrefetch, "descriptor prefetch"),
    ]

    static let dsaOpcodeNames: [(UInt8, String)] = [
        (DSA.Opcode.noop, "no-op"), (DSA.Opcode.batch, "batch"), (DSA.Opcode.drain, "drain"), (DSA.Opcode.memmove, "memmove"),
        (DSA.Opcode.fill, "fill"), (DSA.Opcode.compare, "compare"), (DSA.Opcode.comparePattern, "compare pattern"),
        (DSA.Opcode.createDelta, "create delta"), (DSA.Opcode.applyDelta, "apply delta"), (DSA.Opcode.dualcast, "dualcast"),
        (DSA.Opcode.translationFetch, "translation fetch"), (DSA.Opcode.crcGenerate, "CRC"), (DSA.Opcode.copyCRC, "copy+CRC"),
        (DSA.Opcode.difCheck, "DIF check"), (DSA.Opcode.difInsert, "DIF insert"), (DSA.Opcode.difStrip, "DIF strip"),
        (DSA.Opcode.difUpdate, "DIF update"), (DSA.Opcode.dixGenerate, "DIX generate"), (DSA.Opcode.cacheFlush, "cache flush"),
    ]

    static func ioatIdentity<B: RegisterIO & ~Copyable>(_ d: IOATDevice<B>, _ p: IOATProvider<B>, platform: String) -> EngineIdentityReport {
        let caps = dmaCapabilityNames.filter { d.capabilities.contains($0.0) }.map(\.1)
        let xfercap = d.maximumTransferSize.trailingZeroBitCount
        return EngineIdentityReport(
            family: "ioat", generation: "CBDMA \(d.cbver >> 4).\(d.cbver & 0xF)", platform: platform,
            name: p.characteristics.friendlyName, netdmaVersion: p.characteristics.version.description,
            registers: [
                RegisterValue(name: "CBVER", value: hex(d.cbver, 2), meaning: "Crystal Beach \(d.cbver >> 4).\(d.cbver & 0xF)"),
                RegisterValue(name: "CHANCNT", value: hex(d.channelCount, 2), meaning: "\(d.channelCount) channel\(d.channelCount == 1 ? "" : "s")"),
                RegisterValue(name: "XFERCAP", value: hex(xfercap, 2), meaning: "\(byteCount(d.maximumTransferSize)) per descriptor"),
                RegisterValue(name: "DMACAPABILITY", value: hex(d.capabilities.rawValue, 8), meaning: caps.isEmpty ? "copy only" : caps.joined(separator: ", ")),
            ],
            channels: p.channels.count, maximumTransferSize: p.attributes.maximumTransferSize,
            fill: p.characteristics.flags.contains(.fill), interrupts: p.channels.contains { $0.interruptEventFD != nil },
            dsaConfiguration: nil)
    }

    static func dsaIdentity<B: RegisterIO & ~Copyable, P: PortalIO & ~Copyable>(_ d: DSADevice<B, P>, _ p: DSAProvider<B, P>,
                                                                               platform: String) -> EngineIdentityReport {
        let g = d.genCap, w = d.wqCap, gr = d.grpCap
        return EngineIdentityReport(
            family: "dsa", generation: "DSA \(d.version >> 8).\(d.version & 0xFF)", platform: platform,
            name: p.characteristics.friendlyName, netdmaVersion: p.characteristics.version.description,
            registers: [
                RegisterValue(name: "VERSION", value: hex(d.version, 3), meaning: "DSA \(d.version >> 8).\(d.version & 0xFF)"),
                RegisterValue(name: "GENCAP", value: hex(g.rawValue, 16),
                              meaning: "max transfer 2^\(g.maxTransferShift), max batch 2^\(g.maxBatchShift)\(g.configurable ? ", configurable" : "")"),
                RegisterValue(name: "WQCAP", value: hex(w.rawValue, 16),
                              meaning: "\(w.count) WQs, \(w.totalSize) entries\(w.dedicatedMode ? ", dedicated" : "")\(w.sharedMode ? ", shared" : "")"),
                RegisterValue(name: "GRPCAP", value: hex(gr.rawValue, 16), meaning: "\(gr.count) groups, \(gr.totalReadBuffers) read buffers"),
                RegisterValue(name: "ENGCAP", value: hex(d.engineCount, 16), meaning: "\(d.engineCount) engines"),
                RegisterValue(name: "OPCAP", value: hex(d.opcap.first ?? 0, 16),
                              meaning: dsaOpcodeNames.filter { d.supports(opcode: $0.0) }.map(\.1).joined(separator: ", ")),
            ],
            channels: p.channels.count, maximumTransferSize: p.attributes.maximumTransferSize,
            fill: p.characteristics.flags.contains(.fill), interrupts: p.channels.contains { $0.interruptEventFD != nil },
            dsaConfiguration: p.layout.description)
    }
}

/// "64 B", "4 KiB", "1 MiB".
func byteCount(_ n: Int) -> String {
    if n >= 1 << 30 && n % (1 << 30) == 0 { return "\(n >> 30) GiB" }
    if n >= 1 << 20 && n % (1 << 20) == 0 { return "\(n >> 20) MiB" }
    if n >= 1 << 10 && n % (1 << 10) == 0 { return "\(n >> 10) KiB" }
    return "\(n) B"
}

/// "512 B", "12.3 KiB", "4.5 MiB", "1.2 GiB".
func approximateBytes(_ n: Int) -> String {
    let d = Double(n)
    if n >= 1 << 30 { return String(format: "%.1f GiB", d / Double(1 << 30)) }
    if n >= 1 << 20 { return String(format: "%.1f MiB", d / Double(1 << 20)) }
    if n >= 1 << 10 { return String(format: "%.1f KiB", d / Double(1 << 10)) }
    return "\(n) B"
}

/// Parses "64", "4K", "4KiB", "1M", "1MiB".
func parseByteCount(_ s: String) -> Int? {
    var t = s.trimmingCharacters(in: .whitespaces).uppercased()
    for suffix in ["IB", "B"] where t.hasSuffix(suffix) { t.removeLast(suffix.count); break }
    var shift = 0
    if t.hasSuffix("K") { shift = 10 } else if t.hasSuffix("M") { shift = 20 } else if t.hasSuffix("G") { shift = 30 }
    if shift > 0 { t.removeLast() }
    guard let v = Int(t), v > 0 else { return nil }
    return v << shift
}
