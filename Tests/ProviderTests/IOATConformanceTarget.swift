import DeviceModels
import Hardware
import IOAT
import NetDMA
import Platform
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// The IOAT provider on a ``MockIOATDevice`` as a conformance target.
///
/// The model runs in manual mode, stepped by a thread of this target, so that ``hold(channel:_:)``
/// can freeze it deterministically: while held, the engine executes at most one descriptor
/// (then it is "in flight": CDAR names it) and otherwise only applies the commands the provider
/// posts (one step per CHANCMD write), so a Suspend, Abort or Reset can complete while the
/// rest of the chain stays untouched. Holding freezes every channel of the function (the
/// model steps them together).
final class IOATConformanceTarget: ConformanceTarget, @unchecked Sendable {
    // @unchecked: the mutable state is in atomics and Mutexes; the rest is set in init.
    let device: MockIOATDevice
    let ioat: IOATProvider<IOATConformanceBAR>
    var provider: any NetDMAProvider { ioat }
    var attributes: ProviderAttributes { ioat.attributes }

    private let held = Atomic<Bool>(false)
    private let executedWhileHeld = Atomic<Bool>(false)
    private let commandSteps = Atomic<Int>(0)
    private let stopping = Atomic<Bool>(false)
    private let stepLock = Mutex<Void>(())
    private var stepper: ConformanceThread?
    private let events: IOATConformanceEvents

    /// A 2-channel variant of `profile` unless it already has more (the registry tests need two).
    init(profile name: String, version: NetDMAVersion, interrupts: Bool = true) throws {
        var profile = IOAT.profile(named: name)!
        profile.channelsPerFunction = max(profile.channelsPerFunction, 2)
        let iommu = SoftIOMMU()
        let memory = DMAMemory(spaces: [iommu], policy: .allocate(in: 0x1_0000_0000...0xFF_FFFF_FFFF), preferHugePages: false)
        device = MockIOATDevice(profile: profile, iommu: iommu, execution: .manual,
                                options: .init(resetReads: 2, resetMicroseconds: 0, spinIterations: 100))
        events = IOATConformanceEvents(iommu: iommu, v1: profile.isV1, split: profile.splitsWide64BitWrites)
        let bar = IOATConformanceBAR(base: device.bar0, events: events)
        let config = device
        // Bring-up needs the engine: step it from here while the provider comes up.
        let box = Mutex<Result<IOATProvider<IOATConformanceBAR>, DriverError>?>(nil)
        let device = self.device
        let thread = ConformanceThread {
            let r = Result { () throws(DriverError) -> IOATProvider<IOATConformanceBAR> in
                try IOATProvider(bar: bar, config: config, interrupts: interrupts ? device : nil, memory: memory,
                                 configuration: .init(version: version,
                                                      timeouts: .init(quiesce: .seconds(5), reset: .seconds(5),
                                                                      selfTest: .seconds(5), recovery: .milliseconds(100))))
            }
            box.withLock { $0 = r }
        }
        while box.withLock({ $0 }) == nil {
            if !device.step() { sched_yield() }
        }
        thread.join()
        ioat = try box.withLock { $0! }.get()
        events.beforeCommand = { [unowned self] c in beforeCommand(channel: c) }
        events.afterCommand = { [unowned self] c in
            // A command to a channel that is not ACTIVE applied at once; one to an ACTIVE
            // channel waits for the engine: give it a step.
            if held.load(ordering: .acquiring), isActive(c) { commandSteps.add(1, ordering: .acquiringAndReleasing) }
        }
        stepper = ConformanceThread { [self] in run() }
    }

    private func run() {
        while !stopping.load(ordering: .acquiring) {
            if held.load(ordering: .acquiring) {
                guard commandSteps.load(ordering: .acquiring) > 0 else { idle(); continue }
                commandSteps.subtract(1, ordering: .acquiringAndReleasing)
            }
            if !stepLock.withLock({ _ in device.step() }) { idle() }
        }
    }

    /// Called (on the provider's thread) just before a SUSPEND, ABORT or RESET reaches the
    /// model. While held, the engine first finishes the descriptor it holds in flight (the
    /// command then applies at the boundary after it, as on hardware); after the write, the
    /// stepper gets one step to apply the command.
    private func beforeCommand(channel: Int) {
        guard held.load(ordering: .acquiring), !executedWhileHeld.load(ordering: .acquiring),
              inFlight(channel: channel) != 0 else { return }
        stepLock.withLock { _ in _ = device.step() }
        executedWhileHeld.store(true, ordering: .releasing)
    }

    private func idle() {
        var ts = timespec(tv_sec: 0, tv_nsec: 20_000)
        nanosleep(&ts, nil)
    }

    func shutdown() {
        stopping.store(true, ordering: .releasing)
        stepper?.join()
        stepper = nil
    }

    deinit { shutdown() }

    func hold(channel index: Int, _ on: Bool) {
        if on { executedWhileHeld.store(false, ordering: .releasing); commandSteps.store(0, ordering: .releasing) }
        held.store(on, ordering: .releasing)
    }

    private func isActive(_ index: Int) -> Bool {
        let base = IOAT.channelBase(index)
        let sts = device.bar0.read32(base + (device.profile.isV1 ? IOAT.V1.CHANSTS : IOAT.CHANSTS))
        return sts & 7 == UInt32(IOAT.ChannelState.active.rawValue)
    }

    /// The descriptor the engine holds: CDAR once it ran one since the chain was loaded, the
    /// chain's first descriptor (CHAINADDR) before; 0 unless ACTIVE.
    func inFlight(channel index: Int) -> UInt64 {
        let v1 = device.profile.isV1
        let base = IOAT.channelBase(index)
        let sts = device.bar0.read64Split(base + (v1 ? IOAT.V1.CHANSTS : IOAT.CHANSTS))
        guard sts & 7 == UInt64(IOAT.ChannelState.active.rawValue) else { return 0 }
        let mask = IOAT.ChanSts.completedDescriptorMask
        if sts & mask == 0 && !executedWhileHeld.load(ordering: .acquiring) {
            return device.bar0.read64Split(base + (v1 ? IOAT.V1.CHAINADDR : IOAT.CHAINADDR)) & mask
        }
        return device.bar0.read64Split(base + IOAT.CDAR) & mask
    }

    func suspendRequested(channel index: Int) -> Bool { events.suspendRequested(channel: index) }
    func interruptsRaised(channel index: Int) -> Int { Int(device.statistics.interruptsSignalled) }
    func rearms(channel index: Int) -> Int { ioat.channels[index].interruptRearms }
    func startedFlags(channel index: Int) -> [ControlFlags] { events.starts(channel: index) }

    /// A trip through D3hot and back: the provider powers the function down and up (the
    /// model resets BAR0 on D3hot → D0), so the engine loses its chain position.
    func loseContext(channel index: Int) {
        do {
            try ioat.powerDown()
            try ioat.powerUp()
        } catch {
            preconditionFailure("IOAT power cycle failed: \(error)")
        }
    }
}

/// What the conformance hooks observe at the register level: commands and chain starts.
final class IOATConformanceEvents: @unchecked Sendable {
    // @unchecked: `onCommand` is set once before the provider is used; the rest is in Mutexes.
    let iommu: SoftIOMMU
    let v1: Bool
    let split: Bool
    var beforeCommand: @Sendable (Int) -> Void = { _ in }
    var afterCommand: @Sendable (Int) -> Void = { _ in }
    private let state = Mutex<(suspend: Set<Int>, starts: [Int: [ControlFlags]], low: [Int: UInt32])>(([], [:], [:]))

    init(iommu: SoftIOMMU, v1: Bool, split: Bool) {
        self.iommu = iommu
        self.v1 = v1
        self.split = split
    }

    func suspendRequested(channel: Int) -> Bool { state.withLock { $0.suspend.contains(channel) } }
    func starts(channel: Int) -> [ControlFlags] { state.withLock { $0.starts[channel] ?? [] } }

    /// A write is about to reach the model: SUSPEND, ABORT and RESET let the target finish the
    /// descriptor in flight first.
    func willWrite(_ offset: Int, width: Int, _ value: UInt64) {
        guard offset >= 0x80, width == 1 else { return }
        let c = offset / 0x80 - 1
        guard offset - IOAT.channelBase(c) == (v1 ? IOAT.V1.CHANCMD : IOAT.CHANCMD) else { return }
        if !IOAT.ChanCmd(rawValue: UInt8(truncatingIfNeeded: value)).isDisjoint(with: [.suspend, .abort, .reset]) {
            beforeCommand(c)
        }
    }

    func wrote(_ offset: Int, width: Int, _ value: UInt64) {
        guard offset >= 0x80 else { return }
        let c = offset / 0x80 - 1
        let rel = offset - IOAT.channelBase(c)
        let chancmd = v1 ? IOAT.V1.CHANCMD : IOAT.CHANCMD
        let chainaddr = v1 ? IOAT.V1.CHAINADDR : IOAT.CHAINADDR
        if rel == chancmd && width == 1 {
            let cmd = IOAT.ChanCmd(rawValue: UInt8(truncatingIfNeeded: value))
            state.withLock { s in
                if cmd.contains(.suspend) { s.suspend.insert(c) } else { s.suspend.remove(c) }
            }
            if !cmd.isDisjoint(with: [.suspend, .abort, .reset]) { afterCommand(c) }
        } else if rel == chainaddr && width == 8 {
            started(c, value)
        } else if rel == chainaddr && width == 4 {
            state.withLock { $0.low[c] = UInt32(truncatingIfNeeded: value) }
        } else if rel == chainaddr + 4 && width == 4 {
            let low = state.withLock { $0.low[c] ?? 0 }
            started(c, UInt64(value) << 32 | UInt64(low))
        } else if rel == IOAT.CHANCTRL {
            state.withLock { _ = $0.suspend.remove(c) }
        }
    }

    private func started(_ c: Int, _ iova: UInt64) {
        let flags = iommu.translate(iova, length: 64, access: .read)
            .map { ControlFlags(rawValue: $0.load(fromByteOffset: IOAT.DescriptorField.control, as: UInt32.self)) } ?? []
        state.withLock { s in
            s.starts[c, default: []].append(flags)
            s.suspend.remove(c)
        }
    }
}

/// The model's BAR0, reporting writes to ``IOATConformanceEvents``.
struct IOATConformanceBAR: RegisterIO, Sendable {
    let base: MockIOATBAR
    let events: IOATConformanceEvents
    var length: Int { base.length }
    func read8(_ offset: Int) -> UInt8 { base.read8(offset) }
    func read16(_ offset: Int) -> UInt16 { base.read16(offset) }
    func read32(_ offset: Int) -> UInt32 { base.read32(offset) }
    func read64(_ offset: Int) -> UInt64 { base.read64(offset) }
    func write8(_ offset: Int, _ value: UInt8) {
        events.willWrite(offset, width: 1, UInt64(value))
        base.write8(offset, value)
        events.wrote(offset, width: 1, UInt64(value))
    }
    func write16(_ offset: Int, _ value: UInt16) { base.write16(offset, value); events.wrote(offset, width: 2, UInt64(value)) }
    func write32(_ offset: Int, _ value: UInt32) { base.write32(offset, value); events.wrote(offset, width: 4, UInt64(value)) }
    func write64(_ offset: Int, _ value: UInt64) { base.write64(offset, value); events.wrote(offset, width: 8, value) }
}

extension TargetFactory {
    /// The IOAT provider on the CBDMA model of `profile`.
    static func ioat(_ profile: String, _ version: NetDMAVersion) -> TargetFactory {
        TargetFactory(name: "IOAT on model \(profile)", version: version) {
            try IOATConformanceTarget(profile: profile, version: version)
        }
    }

    /// The IOAT targets: CB 3.4 and 3.2 with counted chains, and 1.x chains emulated on
    /// DMACOUNT. (CB 1.2, `.ioat("cb1", .v1_1)`, passes the channel conformance tests but has
    /// no block fill, which the CopyQueue fill test assumes.)
    static let ioatTargets: [TargetFactory] = [.ioat("icx", .v2_0), .ioat("bdx", .v2_0), .ioat("skx", .v1_0), .ioat("bdxde", .v1_1), .ioat("tbg", .v2_0), .ioat("cb1", .v1_0)]
}
