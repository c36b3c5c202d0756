import DSA
import DeviceModels
import Hardware
import IOAT
import NetDMA
import Platform

/// How to build one of the built-in device models ("mock BAR") and bring a provider up on it.
///
/// The defaults are the `netdma` tool's: the newest generation of the family, allocated IOVAs
/// (so that an address outside every buffer is certain to fault), interrupts on, the model's
/// engine on its own thread, and register-sequence time limits generous enough for a model that
/// shares two busy cores.
///
/// ```swift
/// var model = ModelConfiguration(.dsa)
/// model.dsa.workQueues = 1
/// let engines = try EngineSet.open(.model(model))
/// ```
public struct ModelConfiguration: Sendable {
    /// How the model's addresses relate to host addresses.
    public enum Addressing: Sendable, Hashable {
        /// IOVAs allocated from 4 GiB up (the default): a host address is never a valid IOVA,
        /// so a buffer the client forgot to allocate from DMA memory faults like on hardware.
        case allocated
        /// IOVA = host virtual address (what DPDK's IOVA-as-VA mode does).
        case identity
    }

    /// `.ioat` (CBDMA) or `.dsa`; the other families have no model.
    public var family: EngineFamily
    /// The generation profile (`IOAT.profiles`, `DSA.profiles` by name).
    public var profile: String
    /// The NetDMA version the provider declares; nil: 1.1 on CB 1.x profiles (NULL-terminated
    /// chains), 2.0 otherwise (counted chains). DSA takes it from ``dsa`` when nil.
    public var version: NetDMAVersion?
    /// Address translation of the model's in-process IOMMU.
    public var addressing: Addressing
    /// Route the channels' interrupt vectors to eventfds (off: channels have no vector and
    /// clients poll).
    public var interrupts: Bool
    /// On its own thread (the default) or stepped by the caller.
    public var execution: ModelExecution
    /// The CBDMA model's reset timing and idle spinning.
    public var ioat: MockIOATDevice.Options
    /// The CBDMA provider's register-sequence time limits.
    public var ioatTimeouts: IOATTimeouts
    /// The DSA model's command latency, strictness and idle spinning.
    public var dsaModel: MockDSADevice.Options
    /// How the DSA provider configures the model (work queues, batching, time limits).
    public var dsa: DSAConfiguration
    /// Called with the model before the provider brings it up: inject bring-up faults here.
    public var beforeBringUp: (@Sendable (EngineModel) -> Void)?

    /// The newest generation's profile name of `family`: CBDMA 3.4 "icx", DSA 1.0 "spr".
    public static func defaultProfile(_ family: EngineFamily) -> String {
        family == .dsa ? DSA.sapphireRapids.name : "icx"
    }

    /// The profile names of `family` (empty for a family without a model).
    public static func profileNames(_ family: EngineFamily) -> [String] {
        switch family {
        case .ioat: IOAT.profiles.map(\.name)
        case .dsa: DSA.profiles.map(\.name)
        case .iaa, .edu: []
        }
    }

    /// The family whose profile is called `name`.
    public static func family(ofProfile name: String) -> EngineFamily? {
        [EngineFamily.ioat, .dsa].first { profileNames($0).contains(name) }
    }

    /// A model of `family`, generation `profile` (nil: the newest).
    public init(_ family: EngineFamily, profile: String? = nil) {
        self.family = family
        self.profile = profile ?? Self.defaultProfile(family)
        version = nil
        addressing = .allocated
        interrupts = true
        execution = .thread
        ioat = .init(resetReads: 2, resetMicroseconds: 20, spinIterations: 2000)
        ioatTimeouts = IOATTimeouts(quiesce: .seconds(2), reset: .seconds(2), selfTest: .seconds(2), recovery: .milliseconds(100))
        dsaModel = .init(spinIterations: 2000)
        dsa = DSAConfiguration(workQueues: 4, timeouts: DSATimeouts(command: .seconds(2), enable: .seconds(2)))
        beforeBringUp = nil
    }

    /// "MockIOATDevice, CBDMA 3.4 'icx' (Xeon Scalable gen 3 (Ice Lake-SP))".
    public var description: String {
        switch family {
        case .ioat:
            guard let p = IOAT.profile(named: profile) else { return "MockIOATDevice '\(profile)'" }
            return "MockIOATDevice, CBDMA \(p.major).\(p.minor) '\(p.name)' (\(p.platform))"
        case .dsa:
            guard let p = DSA.profile(named: profile) else { return "MockDSADevice '\(profile)'" }
            return "MockDSADevice, DSA \(p.version >> 8).\(p.version & 0xFF) '\(p.name)' (\(p.platform))"
        case .iaa, .edu:
            return "no model of \(family.rawValue)"
        }
    }

    /// Checks the family and profile.
    ///
    /// - Throws: `.unsupported` for a family without a model; `.invalidArgument` naming the
    ///   profiles for an unknown profile.
    public func validate() throws(DriverError) {
        let names = Self.profileNames(family)
        guard !names.isEmpty else {
            throw DriverError(.unsupported, "There is no device model of \(family.rawValue); models exist for ioat (CBDMA) and dsa.")
        }
        guard names.contains(profile) else {
            throw DriverError(.invalidArgument,
                "Unknown \(family.rawValue) profile '\(profile)'; use one of \(names.joined(separator: ", ")).")
        }
    }
}

/// One engine to open: a PCI function bound to vfio-pci, or a built-in device model.
public enum EngineTarget: Sendable {
    /// A CBDMA or DSA PCI function bound to vfio-pci.
    case vfio(PCIDevice)
    /// A device model.
    case model(ModelConfiguration)

    /// "0000:00:04.0", or "model:ioat/icx".
    public var label: String {
        switch self {
        case .vfio(let d): d.address.description
        case .model(let m): "model:\(m.family.rawValue)/\(m.profile)"
        }
    }
}

/// Which engines to open, and the sentence that says which and why.
///
/// ``resolve(addresses:model:generation:discovery:)`` is the choice `netdma probe`, `selftest`
/// and `bench` make: the PCI addresses given, else every supported engine bound to vfio-pci,
/// else the built-in model.
public struct EngineSelection: Sendable {
    /// What to open, in order.
    public var targets: [EngineTarget]
    /// One line: hardware or the model, and why ("Running on the built-in device model (…):
    /// this machine has no CBDMA or DSA engine.").
    public var headline: String
    /// Whether the targets are device models.
    public var usesModel: Bool

    public init(targets: [EngineTarget], headline: String, usesModel: Bool) {
        self.targets = targets
        self.headline = headline
        self.usesModel = usesModel
    }

    /// The built-in model described by `model`.
    public static func model(_ model: ModelConfiguration, because why: String = "asked for") -> EngineSelection {
        EngineSelection(targets: [.model(model)],
                        headline: "Running on the built-in device model (\(model.description)): \(why).", usesModel: true)
    }

    /// The built-in model of `family` with its defaults (``ModelConfiguration``), generation
    /// `profile` (nil: the newest).
    public static func model(_ family: EngineFamily, profile: String? = nil) -> EngineSelection {
        model(ModelConfiguration(family, profile: profile))
    }

    /// One engine.
    public static func target(_ target: EngineTarget) -> EngineSelection {
        switch target {
        case .model(let m): return model(m)
        case .vfio(let d): return vfio([d])
        }
    }

    /// PCI functions bound to vfio-pci (``resolve(addresses:model:generation:discovery:configure:)``
    /// checks that each is a supported engine, ready for VFIO).
    public static func vfio(_ devices: [PCIDevice]) -> EngineSelection {
        EngineSelection(targets: devices.map { .vfio($0) },
                        headline: "Running on \(plural(devices.count, "engine")) through VFIO: \(list(devices)).",
                        usesModel: false)
    }

    /// Resolves what to open.
    ///
    /// - Parameters:
    ///   - addresses: PCI functions to open; each must be a supported engine, ready for VFIO.
    ///   - model: open the model of this family even when engines are bound.
    ///   - generation: the model's profile; without `model`, it also picks the model when no
    ///     engine is bound (and is an error when one is).
    ///   - configure: adjusts the model's configuration (the family and profile are set).
    /// - Throws: `.invalidArgument` for an address that is not a DMA engine or an unknown
    ///   profile; `.unsupported` for an engine this driver does not drive; the readiness
    ///   problem of an engine that is not ready for VFIO (wrong driver, group not viable, no
    ///   permission), with its fix.
    public static func resolve(addresses: [PCIAddress] = [], model: EngineFamily? = nil, generation: String? = nil,
                               discovery: PCIDiscovery = PCIDiscovery(),
                               configure: (inout ModelConfiguration) -> Void = { _ in }) throws(DriverError) -> EngineSelection {
        func onModel(_ why: String) throws(DriverError) -> EngineSelection {
            let family = model ?? generation.flatMap(ModelConfiguration.family(ofProfile:)) ?? .ioat
            var m = ModelConfiguration(family, profile: generation)
            try m.validate()
            configure(&m)
            return .model(m, because: why)
        }
        if model != nil {
            guard addresses.isEmpty else {
                throw DriverError(.invalidArgument, "Give PCI addresses or a model, not both.")
            }
            return try onModel("--model asked for it")
        }
        if !addresses.isEmpty {
            var devices: [PCIDevice] = []
            for a in addresses {
                let d = try discovery.device(at: a)
                try requireDriven(d)
                if let problem = discovery.readiness(of: d).problem { throw problem }
                devices.append(d)
            }
            return vfio(devices)
        }
        let engines = discovery.engines().filter(isDriven)
        let bound = engines.filter { $0.driver == "vfio-pci" }
        if bound.isEmpty {
            if generation != nil { return try onModel("--generation asked for it") }
            if engines.isEmpty { return try onModel("this machine has no CBDMA or DSA engine") }
            let names = engines.map { "\($0.address) (\($0.driver ?? "no driver"))" }.joined(separator: ", ")
            return try onModel("no engine is bound to vfio-pci (found \(names); `sudo netdma bind BDF` to use one)")
        }
        if generation != nil {
            throw DriverError(.invalidArgument,
                "--generation chooses a model profile; add --model ioat|dsa to run on the model while engines are bound to vfio-pci.")
        }
        for d in bound {
            if let problem = discovery.readiness(of: d).problem { throw problem }
        }
        return EngineSelection(targets: bound.map { .vfio($0) },
                               headline: "Running on \(plural(bound.count, "engine")) bound to vfio-pci: \(list(bound)).",
                               usesModel: false)
    }

    /// Whether this driver drives `device` (a supported CBDMA or DSA function).
    static func isDriven(_ device: PCIDevice) -> Bool {
        guard let e = device.engine else { return false }
        return e.supported && (e.family == .ioat || e.family == .dsa)
    }

    static func requireDriven(_ d: PCIDevice) throws(DriverError) {
        guard let engine = d.engine else {
            throw DriverError(.invalidArgument,
                "\(d.address) [\(d.id)] \(d.displayName) is not a known DMA engine. Run `netdma list` to see the engines.")
        }
        guard isDriven(d) else {
            throw DriverError(.unsupported, "\(d.address) is \(engine.generation) (\(engine.platform)), which this driver does not drive.")
        }
    }

    private static func plural(_ n: Int, _ word: String) -> String { "\(n) \(word)\(n == 1 ? "" : "s")" }
    private static func list(_ devices: [PCIDevice]) -> String { devices.map(\.address.description).joined(separator: ", ") }
}
