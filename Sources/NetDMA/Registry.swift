import Platform
import Synchronization

/// The interface's handle for a registered provider (`NetDmaProviderHandle`).
public struct ProviderHandle: Sendable, Hashable, CustomStringConvertible {
    /// A number unique within the registry.
    public let id: UInt64
    public var description: String { "provider#\(id)" }
}

/// A provider's lifecycle state (netdma.md §11.1).
public enum ProviderState: Sendable, Hashable, CustomStringConvertible {
    /// Registered, hardware not started: no channel services.
    case registered
    /// Started: channels can be allocated and used.
    case started
    /// Started but powered down (1.1+ PowerDown): clients must not submit until PowerUp.
    case poweredDown

    public var description: String {
        switch self {
        case .registered: "registered"
        case .started: "started"
        case .poweredDown: "powered down"
        }
    }
}

/// A power event a provider reports (`NET_DMA_PNP_NOTIFICATION_CODE` 5 and 6).
public enum PowerEvent: UInt32, Sendable, Hashable {
    /// `NetDmaNotificationProviderPowerDown`: before the device leaves D0.
    case powerDown = 5
    /// `NetDmaNotificationProviderPowerUp`: after the device is back in D0.
    case powerUp = 6
}

/// A notification the interface sends its clients (`NET_DMA_PNP_NOTIFICATION_CODE`).
public struct NetDMANotification: Sendable, Hashable, CustomStringConvertible {
    /// The notification code, with NetDMA's numeric values.
    public struct Code: RawRepresentable, Sendable, Hashable, CustomStringConvertible {
        public let rawValue: UInt32
        public init(rawValue: UInt32) { self.rawValue = rawValue }
        /// `NetDmaNotificationProviderRegistered`: a provider has registered.
        public static let providerRegistered = Code(rawValue: 1)
        /// `NetDmaNotificationProviderArrival`: a provider is ready for use (started).
        public static let providerArrival = Code(rawValue: 2)
        /// `NetDmaNotificationProviderRemoval`: a provider is about to stop; stop using it.
        public static let providerRemoval = Code(rawValue: 3)
        /// `NetDmaNotificationChannelArrival`: a channel has become available.
        public static let channelArrival = Code(rawValue: 4)
        /// `NetDmaNotificationProviderPowerDown`: stop submitting and let every channel drain.
        public static let providerPowerDown = Code(rawValue: 5)
        /// `NetDmaNotificationProviderPowerUp`: channels were re-Started; submit again.
        public static let providerPowerUp = Code(rawValue: 6)

        public var description: String {
            switch rawValue {
            case 1: "providerRegistered"
            case 2: "providerArrival"
            case 3: "providerRemoval"
            case 4: "channelArrival"
            case 5: "providerPowerDown"
            case 6: "providerPowerUp"
            default: "code(\(rawValue))"
            }
        }
    }
    /// What happened.
    public var code: Code
    /// The provider it happened to.
    public var provider: ProviderHandle
    public init(code: Code, provider: ProviderHandle) {
        self.code = code
        self.provider = provider
    }
    public var description: String { "\(code)(\(provider))" }
}

/// A client's registration for notifications; pass it to ``NetDMARegistry/removeClient(_:)``.
public struct ClientRegistration: Sendable, Hashable {
    let id: UInt64
}

/// What a client learns about a provider when it looks for one.
public struct ProviderInfo: Sendable {
    /// The provider's handle, for ``NetDMARegistry/allocateChannel(provider:affinity:priority:)``.
    public var handle: ProviderHandle
    /// What it declared at registration (version, flags, channels, callbacks, name).
    public var characteristics: ProviderCharacteristics
    /// Where it is in its lifecycle.
    public var state: ProviderState
    /// The attributes given at start (nil while only registered).
    public var attributes: ProviderAttributes?
    /// Channels currently allocated.
    public var allocatedChannels: Int
    /// The CPU the interface asked each channel's interrupt to target (SetDmaChannelCpuAffinity).
    public var affinityTable: [ChannelCPUAffinity]
}

/// The interface's record of one registered provider.
final class ProviderRecord: Sendable {
    let handle: ProviderHandle
    let provider: any NetDMAProvider
    let characteristics: ProviderCharacteristics
    let affinityTable: [ChannelCPUAffinity]
    /// Set from the start of PowerDown until PowerUp re-Started the channels: new work
    /// (Append, Start, Suspend) is refused.
    let poweredDown = Atomic<Bool>(false)
    /// Set once PowerDown drained every channel, until PowerUp: every channel call is refused
    /// (the device may be in D3 or disabled).
    let deviceOff = Atomic<Bool>(false)
    let channels = Mutex<[NetDMAChannel]>([])
    private let dispatcherSlot = Mutex<InterruptDispatcher?>(nil)
    /// The interrupt machinery while started (nil otherwise).
    var dispatcher: InterruptDispatcher? {
        get { dispatcherSlot.withLock { $0 } }
        set { dispatcherSlot.withLock { $0 = newValue } }
    }
    unowned let registry: NetDMARegistry

    init(handle: ProviderHandle, provider: any NetDMAProvider, affinityTable: [ChannelCPUAffinity], registry: NetDMARegistry) {
        self.handle = handle
        self.provider = provider
        self.characteristics = provider.characteristics
        self.affinityTable = affinityTable
        self.registry = registry
    }

    func channelFreed(_ channel: NetDMAChannel) {
        channels.withLock { $0.removeAll { $0 === channel } }
        registry.post(.channelArrival, handle)
    }
}

/// The NetDMA interface: providers register and start here, clients find providers and
/// allocate channels here (`NetDmaXxx` exports and the undocumented client side).
///
/// ```swift
/// let handle = try NetDMARegistry.shared.register(provider)
/// try NetDMARegistry.shared.start(handle, attributes: attributes)
/// let channel = try NetDMARegistry.shared.allocateChannel(provider: handle, affinity: [2, 3])
/// print("DPC runs on CPU \(channel.cpu)")
/// ```
///
/// Provider-level calls (register, start, stop, deregister, notify) block and run at
/// "PASSIVE_LEVEL": never call them from a completion handler.
public final class NetDMARegistry: Sendable {
    /// The process-wide interface.
    public static let shared = NetDMARegistry()

    private struct Provider {
        var record: ProviderRecord
        var state: ProviderState
        var attributes: ProviderAttributes?
        var busy = false
    }
    private struct State {
        var nextID: UInt64 = 1
        var providers: [UInt64: Provider] = [:]
        var clients: [UInt64: @Sendable (NetDMANotification) -> Void] = [:]
    }
    private let state = Mutex(State())
    /// How long Stop and PowerDown wait for outstanding descriptors.
    public let drainTimeout: Duration

    /// Creates an interface (tests make their own; products use ``shared``).
    public init(drainTimeout: Duration = .seconds(5)) {
        self.drainTimeout = drainTimeout
    }

    /// The interface version, 2.1.
    public var version: NetDMAVersion { .interface }

    /// `NetDmaGetVersion()`: major << 16 | minor (0x0002_0001).
    public var encodedVersion: UInt32 { NetDMAVersion.interface.encoded }

    // MARK: - provider side

    /// `NetDmaRegisterProvider`: validates the characteristics, hands the provider the
    /// interrupt CPU table (`ProviderSetDmaChannelCpuAffinity`, channels spread round-robin over
    /// the CPUs this process may use), and tells clients.
    ///
    /// - Throws: `.unsupported` for a version above 2.1 or below 1.0; `.invalidArgument` for a
    ///   missing 2.0 friendly name, unknown flag bits, characteristic flags on a 1.0 or 1.1
    ///   provider (those versions define none), page break below 2.0, or no channels;
    ///   `.busy` when the provider is already registered; the provider's affinity error.
    public func register(_ provider: any NetDMAProvider) throws(DriverError) -> ProviderHandle {
        let c = provider.characteristics
        try Self.validate(c)
        let cpus = Array(CPUSet.allowed)
        let table = (0..<c.maxChannelCount).map { ChannelCPUAffinity(channel: $0, cpu: cpus.isEmpty ? 0 : cpus[$0 % cpus.count]) }
        if c.callbacks.contains(.setChannelCPUAffinity) {
            try provider.setChannelCPUAffinity(table)
        }
        let handle: ProviderHandle = try state.withLock { s throws(DriverError) in
            if s.providers.values.contains(where: { $0.record.provider === provider }) {
                throw DriverError(.busy, "Provider '\(c.friendlyName)' is already registered; register each engine once.")
            }
            let h = ProviderHandle(id: s.nextID)
            s.nextID += 1
            s.providers[h.id] = Provider(record: ProviderRecord(handle: h, provider: provider, affinityTable: table, registry: self),
                                         state: .registered)
            return h
        }
        post(.providerRegistered, handle)
        return handle
    }

    static func validate(_ c: ProviderCharacteristics) throws(DriverError) {
        guard c.version.major >= 1 else {
            throw DriverError(.unsupported, "Provider version \(c.version) is not a NetDMA version; declare 1.0, 1.1, 2.0 or 2.1.")
        }
        guard c.version <= .interface else {
            throw DriverError(.unsupported, "Provider version \(c.version) is newer than the interface (\(NetDMAVersion.interface)); declare \(NetDMAVersion.interface) or lower.")
        }
        if c.version >= .v2_0 && c.friendlyName.isEmpty {
            throw DriverError(.invalidArgument, "A NetDMA \(c.version) provider must have a friendly name.")
        }
        if c.version < .v2_0 {
            // NetDMA 1.0 and 1.1 define no characteristic flags (netdma.md §2, §4.4): Flags is 0.
            let netDMA = c.flags.rawValue & ProviderFlags.netDMAMask
            guard netDMA == 0 else {
                throw DriverError(.invalidArgument,
                    "A NetDMA \(c.version) provider declared characteristic Flags 0x\(String(netDMA, radix: 16)); NetDMA 1.0 and 1.1 define no flags (Flags must be 0). Declare NetDMA 2.0 or later for DCA or processor groups.")
            }
            guard !c.flags.contains(.pageBreak) else {
                throw DriverError(.invalidArgument,
                    "A NetDMA \(c.version) provider declared page break, a NetDMA 2.0 feature; declare NetDMA 2.0 or later, or drop the flag.")
            }
        }
        guard c.flags.subtracting(ProviderFlags.known).isEmpty else {
            throw DriverError(.invalidArgument,
                "Unknown provider flag bits 0x\(String(c.flags.subtracting(ProviderFlags.known).rawValue, radix: 16)); declare only the ProviderFlags this interface defines.")
        }
        guard c.maxChannelCount >= 1 else {
            throw DriverError(.invalidArgument, "A provider must have at least one channel, declared \(c.maxChannelCount).")
        }
        guard c.callbacks.subtracting(.all).isEmpty else {
            throw DriverError(.invalidArgument, "Unknown callback bits 0x\(String(c.callbacks.rawValue, radix: 16)).")
        }
    }

    /// `NetDmaProviderStart`: the hardware is ready. Validates the attributes, sets up the
    /// provider's interrupt machinery (a thread per DPC CPU, made with the first channel whose
    /// interrupt goes there), and tells clients the provider arrived.
    ///
    /// - Throws: `.invalidState` unless registered (not started); `.invalidArgument` when the
    ///   maximum transfer is below 4096, or the channel count is 0 or above the maximum.
    public func start(_ handle: ProviderHandle, attributes: ProviderAttributes) throws(DriverError) {
        let record = try lookup(handle)
        let c = record.characteristics
        guard attributes.maximumTransferSize >= 4096 else {
            throw DriverError(.invalidArgument, "MaximumTransferSize must be at least 4096 bytes, got \(attributes.maximumTransferSize).")
        }
        guard attributes.channelCount >= 1 && attributes.channelCount <= c.maxChannelCount else {
            throw DriverError(.invalidArgument, "DmaChannelCount \(attributes.channelCount) must be between 1 and MaxDmaChannelCount \(c.maxChannelCount).")
        }
        guard attributes.maximumAddress > 0 else {
            throw DriverError(.invalidArgument, "MaximumAddressSpace must be non-zero.")
        }
        try transition(handle, "Start", from: [.registered])
        // Its threads (one per DPC CPU) start with the first channel that has a vector.
        let dispatcher = InterruptDispatcher { [unowned self] channel, report in
            self.dpcCPU(for: channel, lastCompleted: report.lastCompleted)
        }
        state.withLock { s in
            s.providers[handle.id]?.record.dispatcher = dispatcher
            s.providers[handle.id]?.attributes = attributes
            s.providers[handle.id]?.state = .started
            s.providers[handle.id]?.busy = false
        }
        record.poweredDown.store(false, ordering: .releasing)
        record.deviceOff.store(false, ordering: .releasing)
        post(.providerArrival, handle)
    }

    /// `NetDmaProviderStop`: tells clients the provider is going, waits (up to
    /// ``drainTimeout`` per channel) for outstanding descriptors, aborts or resets a channel that
    /// does not drain, frees every channel and stops the interrupt threads. Blocks.
    ///
    /// - Returns: the channels that had to be aborted (empty when all drained).
    /// - Throws: `.invalidState` unless started.
    @discardableResult
    public func stop(_ handle: ProviderHandle) throws(DriverError) -> [Int] {
        let record = try lookup(handle)
        try transition(handle, "Stop", from: [.started, .poweredDown])
        post(.providerRemoval, handle)
        let deadline = ContinuousClock.now + drainTimeout
        var aborted: [Int] = []
        let channels = record.channels.withLock { $0 }
        for ch in channels {
            if !ch.waitUntilDrained(deadline: deadline) {
                aborted.append(ch.index)
                _ = ch.stopForcibly()
            }
            ch.forceFree()
        }
        record.channels.withLock { $0.removeAll() }
        let dispatcher = state.withLock { s in
            let d = s.providers[handle.id]?.record.dispatcher
            s.providers[handle.id]?.record.dispatcher = nil
            return d
        }
        dispatcher?.shutdown()
        state.withLock { s in
            s.providers[handle.id]?.state = .registered
            s.providers[handle.id]?.attributes = nil
            s.providers[handle.id]?.busy = false
        }
        return aborted
    }

    /// `NetDmaDeregisterProvider`: removes a stopped provider.
    ///
    /// - Throws: `.invalidState` when the provider is still started (Stop first).
    public func deregister(_ handle: ProviderHandle) throws(DriverError) {
        try state.withLock { s throws(DriverError) in
            guard let p = s.providers[handle.id] else { throw Self.unknown(handle) }
            guard p.state == .registered, !p.busy else {
                throw DriverError(.invalidState, "Deregister is not allowed while \(handle) is \(p.state); call stop first.")
            }
            s.providers[handle.id] = nil
        }
    }

    /// `NetDmaPnPEventNotify` (1.1+): PowerDown tells clients, then waits for every channel of
    /// the provider to drain and refuses new work; PowerUp re-Starts every running channel with
    /// a NULL descriptor and tells clients.
    ///
    /// NetDMA 1.0 providers have no such call: after a power cycle they fail Append with
    /// `.contextLost`, and the channel re-seeds itself with a NULL Start (netdma.md §10).
    ///
    /// - Throws: `.unsupported` for a 1.0 provider; `.invalidState` for PowerDown when not
    ///   started or PowerUp when not powered down; `.timeout` when a channel does not drain.
    public func notify(_ handle: ProviderHandle, event: PowerEvent) throws(DriverError) {
        let record = try lookup(handle)
        guard record.characteristics.version.powerEvents else {
            throw DriverError(.unsupported, "NetDMA \(record.characteristics.version) providers have no NetDmaPnPEventNotify; after power-up, fail Append with .contextLost to get a NULL re-Start.")
        }
        switch event {
        case .powerDown:
            try transition(handle, "PowerDown", from: [.started])
            post(.providerPowerDown, handle)
            // Refuse new work first, then wait for calls in progress: control calls hold the
            // channel lock (taken and dropped here; later ones see the flag and are refused),
            // an Append announces itself before its power check. Then drain.
            record.poweredDown.store(true, ordering: .sequentiallyConsistent)
            atomicMemoryFence(ordering: .sequentiallyConsistent)
            let deadline = ContinuousClock.now + drainTimeout
            let channels = record.channels.withLock { $0 }
            var stuck: [Int] = []
            for ch in channels {
                ch.controlBarrier()
                if !ch.waitForAppend(deadline: deadline) || !ch.waitUntilDrained(deadline: deadline)
                    || !ch.waitForAppend(deadline: deadline) || !ch.waitUntilDrained(deadline: deadline) {
                    stuck.append(ch.index)
                }
            }
            if stuck.isEmpty {
                // From here on nothing reaches the device: the lock waits for a Resume, Abort
                // or Reset in progress; later ones see `deviceOff`.
                record.deviceOff.store(true, ordering: .sequentiallyConsistent)
                for ch in channels { ch.noteDrained() }
            }
            state.withLock { s in
                s.providers[handle.id]?.state = stuck.isEmpty ? .poweredDown : .started
                s.providers[handle.id]?.busy = false
            }
            if !stuck.isEmpty {
                record.poweredDown.store(false, ordering: .releasing)
                throw DriverError(.timeout, "Channels \(stuck) did not drain within \(drainTimeout); do not power the device down.")
            }
        case .powerUp:
            try transition(handle, "PowerUp", from: [.poweredDown])
            // Re-Start every running channel while new calls are still refused, then let
            // clients in: no Append reaches a channel before its re-Start.
            var failure: DriverError?
            let deadline = ContinuousClock.now + drainTimeout
            for ch in record.channels.withLock({ $0 }) {
                _ = ch.waitForAppend(deadline: deadline)
                do { try ch.reseedAfterPowerUp() } catch { failure = failure ?? error }
            }
            record.deviceOff.store(false, ordering: .releasing)
            record.poweredDown.store(false, ordering: .releasing)
            state.withLock { s in
                s.providers[handle.id]?.state = .started
                s.providers[handle.id]?.busy = false
            }
            if let failure { throw failure }
            post(.providerPowerUp, handle)
        }
    }

    // MARK: - client side

    /// Registers a client for notifications. The client is told at once about providers that
    /// are already registered (and started).
    public func addClient(_ handler: @escaping @Sendable (NetDMANotification) -> Void) -> ClientRegistration {
        let (id, existing) = state.withLock { s in
            let id = s.nextID
            s.nextID += 1
            s.clients[id] = handler
            return (id, s.providers.values.sorted { $0.record.handle.id < $1.record.handle.id }.map { ($0.record.handle, $0.state) })
        }
        for (h, st) in existing {
            handler(NetDMANotification(code: .providerRegistered, provider: h))
            if st != .registered { handler(NetDMANotification(code: .providerArrival, provider: h)) }
        }
        return ClientRegistration(id: id)
    }

    /// Stops notifications to a client.
    public func removeClient(_ registration: ClientRegistration) {
        _ = state.withLock { s in s.clients.removeValue(forKey: registration.id) }
    }

    /// Every registered provider, oldest first.
    public var providers: [ProviderInfo] {
        let ps = state.withLock { s in s.providers.values.sorted { $0.record.handle.id < $1.record.handle.id } }
        return ps.map { p in
            ProviderInfo(handle: p.record.handle, characteristics: p.record.characteristics, state: p.state,
                         attributes: p.attributes, allocatedChannels: p.record.channels.withLock { $0.count },
                         affinityTable: p.record.affinityTable)
        }
    }

    /// The provider behind `handle`, if registered.
    public func info(_ handle: ProviderHandle) -> ProviderInfo? {
        providers.first { $0.handle == handle }
    }

    /// Started providers that satisfy `predicate` (e.g. a version, the fill capability).
    public func findProviders(where predicate: (ProviderInfo) -> Bool = { _ in true }) -> [ProviderInfo] {
        providers.filter { $0.state == .started && predicate($0) }
    }

    /// Allocates a channel of a started provider (`ProviderAllocateDmaChannel`), with its
    /// completion word in the provider's DMA memory.
    ///
    /// - Parameters:
    ///   - affinity: CPUs acceptable for the channel's interrupt and DPC (NetDMA's
    ///     `ProcessorAffinityMask`, which must not be empty); by default every CPU this process
    ///     may use. CPUs that do not exist or that the process may not use are ignored.
    ///   - priority: priority among the engine's channels.
    /// - Returns: the channel; ``NetDMAChannel/cpu`` is the CPU chosen (always in `affinity`).
    /// - Throws: `.invalidState` when the provider is not started or is powered down; `.busy`
    ///   when every usable channel is allocated; `.invalidArgument` when `affinity` is empty or
    ///   holds no CPU this process may use (the message names the CPUs allowed); the
    ///   provider's error.
    public func allocateChannel(provider handle: ProviderHandle, affinity: CPUSet = CPUSet.allowed,
                                priority: Int = 0) throws(DriverError) -> NetDMAChannel {
        let (record, attributes) = try state.withLock { s throws(DriverError) in
            guard let p = s.providers[handle.id] else { throw Self.unknown(handle) }
            guard p.state == .started, !p.busy, let a = p.attributes else {
                throw DriverError(.invalidState, "Cannot allocate a channel while \(handle) is \(p.state); wait for its arrival notification.")
            }
            return (p.record, a)
        }
        let allowed = CPUSet.allowed
        guard !affinity.isEmpty else {
            throw DriverError(.invalidArgument,
                "The CPU set for the channel's interrupt and DPC is empty; NetDMA needs at least one acceptable CPU. Pass some of the CPUs this process may use: \(allowed).")
        }
        let cpus = affinity.intersection(allowed)
        guard !cpus.isEmpty else {
            throw DriverError(.invalidArgument,
                "None of CPUs \(affinity) is usable by this process (they do not exist or the process may not run there); pass some of the CPUs allowed: \(allowed).")
        }
        let inUse = record.channels.withLock { $0.count }
        guard inUse < attributes.channelCount else {
            throw DriverError(.busy, "All \(attributes.channelCount) channels of '\(record.characteristics.friendlyName)' are allocated.")
        }
        let block = try record.provider.dmaMemory.allocate(length: NetDMAChannel.blockLength)
        let word = block.base.bindMemory(to: UInt64.self, capacity: 1)
        word.pointee = UInt64(TransferStatus.armed.rawValue)
        let parameters = ChannelParameters(completionAddress: word, completionIOVA: block.iova, affinity: cpus, priority: priority)
        let (pc, cpu) = try record.provider.allocateChannel(parameters)
        guard cpus.contains(cpu) else {
            pc.free()
            throw DriverError(.deviceError, "Provider '\(record.characteristics.friendlyName)' chose CPU \(cpu), outside the acceptable set \(cpus); this is a provider bug.")
        }
        let channel = NetDMAChannel(record: record, provider: handle, block: block, providerChannel: pc, cpu: cpu,
                                    priority: priority, attributes: attributes)
        if let fd = pc.interruptEventFD, let dispatcher = record.dispatcher {
            do { try dispatcher.add(channel, fd: fd) } catch {
                pc.free()
                throw error
            }
        }
        record.channels.withLock { $0.append(channel) }
        return channel
    }

    /// The thread counter of a started provider's interrupt machinery (tests).
    func interruptThreads(_ handle: ProviderHandle) -> ThreadCounter? {
        state.withLock { $0.providers[handle.id]?.record.dispatcher?.threads }
    }

    /// `NetDmaIsr`: the CPU on which a channel's DPC must run (the CPU reported at allocation).
    func dpcCPU(for channel: NetDMAChannel, lastCompleted: UInt64) -> Int { channel.cpu }

    // MARK: - internals

    func post(_ code: NetDMANotification.Code, _ handle: ProviderHandle) {
        let clients = state.withLock { Array($0.clients.values) }
        let n = NetDMANotification(code: code, provider: handle)
        for c in clients { c(n) }
    }

    private func lookup(_ handle: ProviderHandle) throws(DriverError) -> ProviderRecord {
        try state.withLock { s throws(DriverError) in
            guard let p = s.providers[handle.id] else { throw Self.unknown(handle) }
            return p.record
        }
    }

    /// Moves a provider into a long operation (marks it busy) if it is in one of `from`.
    private func transition(_ handle: ProviderHandle, _ call: String, from: [ProviderState]) throws(DriverError) {
        try state.withLock { s throws(DriverError) in
            guard let p = s.providers[handle.id] else { throw Self.unknown(handle) }
            guard from.contains(p.state), !p.busy else {
                throw DriverError(.invalidState, "\(call) is not allowed while \(handle) is \(p.busy ? "busy with another call" : p.state.description) (allowed: \(from.map(\.description).joined(separator: ", "))).")
            }
            s.providers[handle.id]?.busy = true
        }
    }

    private static func unknown(_ handle: ProviderHandle) -> DriverError {
        DriverError(.notFound, "\(handle) is not registered with this NetDMA interface.")
    }
}
