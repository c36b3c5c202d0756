import ArgumentParser
import DeviceModels
import Foundation
import NetDMAEngines

extension EngineFamily: ExpressibleByArgument {
    /// `--model ioat|dsa`: only the families that have a device model.
    public init?(argument: String) {
        guard let f = EngineFamily(rawValue: argument), !ModelConfiguration.profileNames(f).isEmpty else { return nil }
        self = f
    }
    public static var allValueStrings: [String] { ["ioat", "dsa"] }
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
            let family = model ?? ModelConfiguration.family(ofProfile: generation)
            guard let family, ModelConfiguration.profileNames(family).contains(generation) else {
                let all = EngineFamily.allValueStrings.compactMap(EngineFamily.init(rawValue:))
                    .map { "\($0.rawValue): \(ModelConfiguration.profileNames($0).joined(separator: ", "))" }
                throw ValidationError("Unknown generation '\(generation)'. Profiles — \(all.joined(separator: "; ")).")
            }
        }
    }

    /// Resolves what to open (the library's choice: the addresses given, else every engine
    /// bound to vfio-pci, else the model).
    func targets() throws(DriverError) -> EngineTargets {
        let fault = injectFault
        let selection = try EngineSelection.resolve(addresses: addresses, model: model, generation: generation,
                                                    discovery: system.discovery) { m in
            if fault == .bringUp { m.beforeBringUp = { $0.injectBringUpFault() } }
        }
        if fault != nil && !selection.usesModel {
            throw DriverError(.invalidArgument, "--inject-fault works only on the built-in model; add --model ioat|dsa.")
        }
        return EngineTargets(selection: selection, system: system, fault: fault)
    }
}

/// A fault the model injects on purpose (hidden option, for tests of the failure paths).
enum ModelFault: String, ExpressibleByArgument, Sendable {
    /// The next copy's data arrives corrupted (CBDMA) or fails (DSA).
    case copy
    /// The device fails its bring-up (every descriptor of the NULL self-check errors).
    case bringUp = "bring-up"
}

extension EngineModel {
    /// Every channel's bring-up NULL self-check fails (CBDMA: SADDRERR on each channel's first
    /// descriptor; DSA: the device halts and needs an FLR).
    func injectBringUpFault() {
        switch self {
        case .ioat(let d):
            for c in 0..<d.channelCount { d.inject(.failDescriptor(index: 0, error: .sourceAddress), channel: c) }
        case .dsa(let d):
            d.inject(.halt(resetType: .flr))
        }
    }

    /// The next copy on every channel fails (CBDMA: RDERR; DSA: a page fault).
    func injectCopyFault() {
        switch self {
        case .ioat(let d):
            for c in 0..<d.channelCount { d.inject(.failDescriptor(index: 0, error: .readData), channel: c) }
        case .dsa(let d):
            d.inject(.failDescriptor(index: 0, status: .pageFault))
        }
    }
}

/// The engines a command will open, one at a time, and the sentence that says where they are.
struct EngineTargets {
    var selection: EngineSelection
    var system: SystemOptions
    var fault: ModelFault?

    var targets: [EngineTarget] { selection.targets }
    /// The first line of output: hardware or the model, and why.
    var headline: String { selection.headline }
    var usesModel: Bool { selection.usesModel }

    /// Opens one target through the library (``EngineSet``).
    func open(_ target: EngineTarget) throws(DriverError) -> EngineSession {
        let set = try EngineSet.open(.target(target), sysfsRoot: system.sysfsRoot, devRoot: system.devRoot)
        return EngineSession(set: set, fault: fault)
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

/// One engine a command opened: an ``EngineSet`` of one, with what the commands report about it.
final class EngineSession {
    let engineSet: EngineSet
    let engine: Engine
    private let fault: ModelFault?

    init(set: EngineSet, fault: ModelFault?) {
        engineSet = set
        engine = set.engines[0]
        self.fault = fault
    }

    deinit { close() }

    /// "0000:00:04.0" for hardware, "model:ioat/icx" for the model.
    var label: String { engine.label }
    var identity: EngineInfo { engine.info }
    var bringUpTime: Duration { engine.bringUpTime }
    var memory: DMAMemory { engineSet.memory }
    var channelCount: Int { engine.channelCount }

    /// Makes the next copy on the model go wrong: set when `--inject-fault copy` asked for it
    /// (never on hardware). Commands call it right before the copies it should hit.
    var injectCopyFault: (() -> Void)? {
        guard fault == .copy, let model = engine.model else { return nil }
        return { model.injectCopyFault() }
    }

    /// Stops the provider (drains and frees its channels), deregisters it and releases the device.
    func close() { engineSet.close() }

    /// Allocates a channel on a CPU of the device's node when there is one.
    func allocateChannel() throws(DriverError) -> NetDMAChannel { try engine.allocateChannel() }

    /// An IOVA nothing is mapped at, inside the engine's reach (for the error-path checks).
    var unmappedIOVA: UInt64 {
        let top = memory.regions.map { $0.iova + UInt64($0.length) }.max() ?? 0x1_0000_0000
        return (top + 0x1000_0000) & ~0xFFF
    }
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
