import CVFIO
import Hardware
import NetDMA
import Platform
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// A NetDMA provider for one Intel DSA PCI function, one NetDMA channel per dedicated WQ.
///
/// Generic over ``RegisterIO`` (BAR0) and ``PortalIO`` (BAR2): the same code drives a vfio-pci
/// device and ``MockDSADevice``. Creating the provider brings the device up as DPDK's PCI path
/// does (dsa.md §4.2), with every CMDSTS error and SWERR checked and explained: Reset Device
/// from whatever state a previous owner left, read the capabilities, one engine per group,
/// N dedicated WQs of WQCAP-total/N entries (priority 1, TC-A = TC-B = 1), Enable Device,
/// Enable WQ for each. With an interrupt router, WQ *n*'s completions arrive on MSI-X vector
/// *n + 1* (vector 0, device events, is left unrouted).
///
/// ```swift
/// let provider = try DSAProvider(bar: device.bar0, portals: device.bar2, config: config,
///                                interrupts: device, memory: memory)
/// print(provider.layout)   // what `netdma probe` shows
/// let handle = try provider.register(with: .shared)
/// ```
///
/// DSA writes completion records, not NetDMA completion words: a completion poller thread
/// (spinning while descriptors are outstanding, then sleeping on a futex) and the interrupt
/// path turn records into completion words. See ``DSAChannel`` for the descriptor mapping.
public final class DSAProvider<BAR: RegisterIO & ~Copyable, Portals: PortalIO & ~Copyable>: NetDMAProvider, @unchecked Sendable {
    // @unchecked: mutable state is in Mutexes and atomics; `device` and `channels` are
    // immutable references to thread-safe objects.

    /// The PCI function.
    public let device: DSADevice<BAR, Portals>
    /// The channels (WQs), by index.
    public let channels: [DSAChannel<BAR, Portals>]
    /// What the bring-up chose.
    public private(set) var layout: DSALayout
    /// What the provider declares at registration (`NET_DMA_PROVIDER_CHARACTERISTICS`).
    public let characteristics: ProviderCharacteristics
    /// What it reports when started (`NET_DMA_PROVIDER_ATTRIBUTES`).
    public let attributes: ProviderAttributes
    /// DMA memory mapped into the device's address space.
    public let dmaMemory: DMAMemory

    private let configuration: DSAConfiguration
    private let interrupts: (any InterruptRouting)?
    private let affinityTable: Mutex<[Int?]>
    private let allocationLock = Mutex<Void>(())
    private let registration = Mutex<(registry: NetDMARegistry, handle: ProviderHandle)?>(nil)
    private let poller: CompletionPoller

    /// Brings the device up and, with `interrupts`, routes one MSI-X vector per WQ.
    ///
    /// - Parameters:
    ///   - bar: BAR0 (VFIO region 0, or ``MockDSADevice/bar0``).
    ///   - portals: BAR2 (VFIO region 2, or ``MockDSADevice/bar2``).
    ///   - config: configuration space, to set Memory Space and Bus Master; nil skips it.
    ///   - interrupts: routes MSI-X vectors to eventfds; nil for a polled provider.
    ///   - memory: DMA memory mapped into the device's address space.
    /// - Throws: ``DriverError`` `.unsupported` (unknown VERSION, read-only configuration, no
    ///   dedicated WQs, missing opcodes, shared WQs asked for), `.invalidArgument` (a WQ count
    ///   or size the device cannot have), `.deviceError` (a command failed: CMDSTS decoded; the
    ///   device needs an FLR; SWERR logged an error), `.timeout`; the config accessor's, the
    ///   interrupt router's or DMA memory's error.
    public init(bar: consuming BAR, portals: consuming Portals, config: (any PCIConfigAccess)?,
                interrupts: (any InterruptRouting)?, memory: DMAMemory,
                configuration: DSAConfiguration = .init()) throws(DriverError) {
        let version = configuration.version
        guard version >= .v1_0, version <= .interface else {
            throw DriverError(.unsupported, "NetDMA \(version) is not a version this provider can declare; use 1.0, 1.1, 2.0 or 2.1.")
        }
        // Memory Space and Bus Master first: without them BAR0 reads all-ones and Enable Device
        // fails with 0x12.
        try DSADevice<BAR, Portals>.enableBusMaster(config, interrupts: interrupts != nil)
        let device = try DSADevice(bar: bar, portals: portals, config: config, timeouts: configuration.timeouts,
                                   mode: configuration.mode)
        let cap = device.wqCap
        let wqs = configuration.workQueues ?? cap.count
        guard wqs >= 1, wqs <= cap.count else {
            throw DriverError(.invalidArgument, "This DSA has \(cap.count) work queues; asked for \(wqs).")
        }
        let size = configuration.workQueueSize ?? cap.totalSize / wqs
        guard size >= 1, size * wqs <= cap.totalSize else {
            throw DriverError(.invalidArgument,
                "\(wqs) work queues of \(size) entries do not fit in WQCAP's \(cap.totalSize) entries; choose sizes from 1 to \(cap.totalSize / wqs).")
        }
        let transferShift = min(configuration.maximumTransferShift ?? device.genCap.maxTransferShift, device.genCap.maxTransferShift)
        let batchShift = device.genCap.maxBatchShift
        let batching = device.supports(opcode: DSA.Opcode.batch) && configuration.maximumBatch >= 2 && batchShift >= 1
        let batchLimit = batching ? min(configuration.maximumBatch, 1 << batchShift) : 1
        let fill = device.supports(opcode: DSA.Opcode.fill)

        try device.reset()
        let groups = try device.configure(wqs: wqs, size: size, transferShift: transferShift, batchShift: batchShift)

        let poller = CompletionPoller(spins: configuration.pollerSpins)
        let vectors = interrupts.map { max(0, min($0.interruptVectorCount - 1, wqs)) } ?? 0
        var channels: [DSAChannel<BAR, Portals>] = []
        var fds: [Int32] = []
        do {
            for i in 0..<wqs {
                var fd: EventFD? = nil
                if i < vectors {
                    let e = try EventFD()
                    fds.append(e.rawValue)
                    fd = consume e
                }
                channels.append(try DSAChannel(index: i, device: device, eventFD: fd, workQueueSize: size,
                                               batchLimit: batchLimit, minimumBatch: configuration.minimumBatch,
                                               countedChains: version.countedChains, memory: memory,
                                               poller: poller))
            }
            if let interrupts, !fds.isEmpty { try interrupts.routeInterrupts(start: 1, eventFDs: fds) }
        } catch {
            _ = try? device.command(.disableDevice)
            throw error
        }

        var flags: ProviderFlags = []
        if fill { flags.insert(.fill) }
        if version >= .v2_1 { flags.insert(.supportsProcessorGroups) }
        let major = UInt8(truncatingIfNeeded: device.version >> 8), minor = UInt8(truncatingIfNeeded: device.version)
        var platform = ""
        if let id = try? config?.readPCIID(),
           let known = DSA.deviceTable.first(where: { $0.id.vendor == id.vendor && $0.id.device == id.device }) {
            platform = " (\(known.platform))"
        }
        self.device = device
        self.channels = channels
        self.dmaMemory = memory
        self.configuration = configuration
        self.interrupts = fds.isEmpty ? nil : interrupts
        self.poller = poller
        self.affinityTable = Mutex(Array(repeating: nil, count: wqs))
        self.layout = DSALayout(version: device.version, groups: groups, workQueues: wqs, workQueueSize: size,
                                maximumTransferShift: transferShift, maximumBatchShift: batchShift,
                                batching: batching, fill: fill)
        self.characteristics = ProviderCharacteristics(
            version: version, flags: flags, maxChannelCount: wqs, callbacks: .all,
            friendlyName: configuration.friendlyName ?? "Intel DSA \(major).\(minor)\(platform)")
        self.attributes = ProviderAttributes(
            hardwareMajor: major, hardwareMinor: minor, vendorID: DSA.vendorID, channelCount: wqs,
            maximumTransferSize: min(1 << transferShift, Int(UInt32.max)),
            maximumAddress: UInt64.max >> 16)
        poller.start(channels, watch: { [device, channels] in
            // A halted device completes nothing: account for what is outstanding.
            guard device.state == .halted else { return }
            let reason = device.diagnostics()
            for c in channels where c.outstandingCount.load(ordering: .acquiring) > 0 { c.deviceHalted(reason) }
        })
    }

    deinit {
        poller.stop()
        if let interrupts { try? interrupts.disableInterrupts() }
        _ = try? device.command(.disableDevice)
    }

    // MARK: - NetDMAProvider

    /// `ProviderSetDmaChannelCpuAffinity`: remembers the CPU each channel's interrupt should
    /// target (the MSI-X vector's host affinity is the kernel's under VFIO; the CPU is used for
    /// the DPC and reported at allocation).
    ///
    /// - Throws: `.invalidArgument` for a channel beyond the enabled WQs.
    public func setChannelCPUAffinity(_ table: [ChannelCPUAffinity]) throws(DriverError) {
        for e in table where e.channel < 0 || e.channel >= channels.count || e.cpu < 0 {
            throw DriverError(.invalidArgument,
                "Affinity entry channel \(e.channel) → CPU \(e.cpu) is out of range (channels 0..<\(channels.count)).")
        }
        affinityTable.withLock { t in for e in table { t[e.channel] = e.cpu } }
    }

    /// `ProviderAllocateDmaChannel`: takes a free WQ, preferring one whose interrupt CPU is in
    /// `parameters.affinity`, and points it at the completion word. Does not block.
    ///
    /// - Throws: `.busy` when every WQ is allocated.
    public func allocateChannel(_ parameters: ChannelParameters) throws(DriverError) -> (channel: any ProviderChannel, cpu: Int) {
        let table = affinityTable.withLock { $0 }
        let want = parameters.affinity
        let local = configuration.localCPUs
        let picked: (DSAChannel<BAR, Portals>, Int)? = allocationLock.withLock { _ in
            let free = channels.indices.filter { !channels[$0].allocated.load(ordering: .acquiring) }
            guard let (i, cpu) = ChannelChoice.pick(free: free, interruptCPUs: table, wanted: want, localCPUs: local) else {
                return nil
            }
            channels[i].allocated.store(true, ordering: .releasing)
            return (channels[i], cpu)
        }
        guard let (channel, cpu) = picked else {
            throw DriverError(.busy, "All \(channels.count) work queues of \(characteristics.friendlyName) are allocated; free one first.")
        }
        channel.activate(parameters)
        return (channel, cpu)
    }

    // MARK: - Registry

    /// Registers with `registry` (`NetDmaRegisterProvider`) and starts (`NetDmaProviderStart`)
    /// with ``attributes``: the hardware is already up.
    @discardableResult
    public func register(with registry: NetDMARegistry) throws(DriverError) -> ProviderHandle {
        let handle = try registry.registerAndStart(self, attributes: attributes)
        registration.withLock { $0 = (registry, handle) }
        return handle
    }

    /// Stops (`NetDmaProviderStop`: drains and frees every channel) and deregisters.
    @discardableResult
    public func deregister() throws(DriverError) -> [Int] {
        guard let (registry, handle) = registration.withLock({ $0 }) else { return [] }
        let aborted = try registry.stopAndDeregister(handle)
        registration.withLock { $0 = nil }
        return aborted
    }

    // MARK: - Recovery

    /// Recovers a halted (or otherwise lost) device: every descriptor still outstanding is
    /// reported failed on its channel (``DSAChannel`` halts with a fault naming it), then
    /// Reset Device and the bring-up run again. Channels keep their clients; each must Start
    /// again (``CopyQueue`` does so by itself). Blocks.
    ///
    /// - Throws: `.deviceError` when the halt needs an FLR (call `VFIO_DEVICE_RESET`, then
    ///   this again) or a platform reset; the bring-up's errors.
    public func recover() throws(DriverError) {
        let reason = device.diagnostics()
        for c in channels where c.outstandingCount.load(ordering: .acquiring) > 0 { c.deviceHalted(reason) }
        try DSADevice<BAR, Portals>.enableBusMaster(device.config, interrupts: interrupts != nil)
        try device.reset()
        _ = try device.configure(wqs: layout.workQueues, size: layout.workQueueSize,
                                 transferShift: layout.maximumTransferShift, batchShift: layout.maximumBatchShift)
    }

    // MARK: - Power (netdma.md §10)

    /// PowerDown: tells the interface (1.1+, which drains every channel), waits until every
    /// descriptor handed to a WQ has completed and stops portal writes, then Disable Device.
    ///
    /// - Throws: the registry's error (`.timeout` when a channel does not drain); the command's.
    public func powerDown() throws(DriverError) {
        let registered = characteristics.version.powerEvents ? registration.withLock({ $0 }) : nil
        if let (registry, handle) = registered {
            try registry.notify(handle, event: .powerDown)
        }
        // Every descriptor the WQs hold completes first; then nothing reaches the portals.
        for (i, ch) in channels.enumerated() {
            do { try ch.powerDown() } catch {
                for c in channels[..<i] { c.powerUp(contextLost: false) }
                if let (registry, handle) = registered { try? registry.notify(handle, event: .powerUp) }
                throw error
            }
        }
        try device.run(.disableDevice, tolerated: [.deviceNotEnabledForDisable], context: "PowerDown")
    }

    /// PowerUp: the full bring-up again (the device may have lost its configuration), then
    /// 1.1+ providers tell the interface, which re-Starts every channel with a NULL
    /// descriptor; a 1.0 provider fails each channel's next Append with `.contextLost`.
    public func powerUp() throws(DriverError) {
        try DSADevice<BAR, Portals>.enableBusMaster(device.config, interrupts: interrupts != nil)
        try device.reset()
        _ = try device.configure(wqs: layout.workQueues, size: layout.workQueueSize,
                                 transferShift: layout.maximumTransferShift, batchShift: layout.maximumBatchShift)
        for ch in channels { ch.powerUp(contextLost: !characteristics.version.powerEvents && ch.allocated.load(ordering: .acquiring)) }
        if let interrupts {
            let fds = channels.compactMap(\.interruptEventFD)
            try interrupts.routeInterrupts(start: 1, eventFDs: fds)
        }
        if characteristics.version.powerEvents, let (registry, handle) = registration.withLock({ $0 }) {
            try registry.notify(handle, event: .powerUp)
        }
    }
}

/// What one completion-poller pass found on a channel.
enum PollerPass {
    /// Nothing outstanding.
    case idle
    /// The channel's client polled it since the last pass (it processes its records itself).
    case attended
    /// Work outstanding that nobody else looked at: the poller processed it.
    case serviced
}

/// What the completion poller polls (a ``DSAChannel``).
protocol CompletionPollerTarget: AnyObject {
    /// One pass over the channel.
    func pollFromPoller() -> PollerPass
}

extension DSAChannel: CompletionPollerTarget where BAR: ~Copyable, Portals: ~Copyable {
    /// One poller pass over this channel: left to a client that polled it since the last pass;
    /// otherwise process records and submit when there is work.
    func pollFromPoller() -> PollerPass {
        let polls = clientPolls.load(ordering: .relaxed)
        if polls != pollerSawClientPolls.load(ordering: .relaxed) {
            pollerSawClientPolls.store(polls, ordering: .relaxed)
            return .attended
        }
        guard outstandingCount.load(ordering: .acquiring) > 0 else { return .idle }
        kick()
        return .serviced
    }
}

/// The completion poller: a thread that turns completion records into NetDMA completion words
/// (what a CBDMA engine does itself) for channels whose client does not poll them: while such a
/// channel has descriptors outstanding it keeps processing them, and otherwise it sleeps on a
/// futex that a portal write wakes (only when it sleeps).
///
/// A client that polls (``DSAChannel/pollCompletions()``, called by ``CopyQueue``) processes its
/// records itself, as DPDK's idxd driver does, and the poller leaves the channel to it: while
/// some client polled within ``attendedWindow``, the poller only looks every
/// ``attendedInterval`` (channels left alone since, a halted device) and never sleeps on the
/// futex, so the client's submits make no system call to wake it. On two CPUs a third busy
/// thread (client, engine, poller) made every small op wait for the CPU.
final class CompletionPoller: @unchecked Sendable {
    // @unchecked: `thread` and `body` are set in `start` before the thread runs; the rest is atomic.
    private let doorbell: UnsafeMutablePointer<Atomic<UInt32>>
    private let sleeping = Atomic<Bool>(false)
    private let stopping = Atomic<Bool>(false)
    private let spins: Int
    private var thread: pthread_t?
    /// The thread's loop over its targets, made by `start` (called once, on the thread).
    private var body: (() -> Void)?
    /// Busy passes between checks of the device state.
    static let watchInterval = 1024
    /// Busy passes between yields of the CPU.
    static let yieldInterval = 64
    /// How long after a client's last poll the poller keeps leaving the channels to the clients.
    static let attendedWindow: Duration = .milliseconds(100)
    /// How often the poller looks while clients poll. (Every millisecond, its timer wake-ups
    /// alone put DSA's interrupt-mode QD1 p99 at 65 µs on the 2-vCPU VM; every 10 ms, 11 µs.)
    static let attendedInterval: Duration = .milliseconds(10)

    init(spins: Int) {
        self.spins = spins
        doorbell = .allocate(capacity: 1)
        doorbell.initialize(to: Atomic(0))
    }

    deinit {
        doorbell.deinitialize(count: 1)
        doorbell.deallocate()
    }

    /// Starts the thread polling `targets`, and calling `watch` every ``watchInterval`` busy
    /// passes. The targets are not retained: their owner stops the poller before they go.
    func start<Target: CompletionPollerTarget>(_ targets: [Target], watch: @escaping () -> Void) {
        // The loop reads unretained references from a fixed table: no retain/release per pass.
        let table = UnsafeMutableBufferPointer<Unmanaged<Target>>.allocate(capacity: targets.count)
        _ = table.initialize(from: targets.lazy.map { Unmanaged.passUnretained($0) })
        body = { [unowned self] in
            self.loop(UnsafeBufferPointer(table), watch: watch)
            table.deallocate()
        }
        var t = pthread_t()
        let arg = Unmanaged.passRetained(self).toOpaque()
        let r = pthread_create(&t, nil, { arg in
            Unmanaged<CompletionPoller>.fromOpaque(arg!).takeRetainedValue().body?()
            return nil
        }, arg)
        precondition(r == 0, "DSA completion poller: pthread_create failed (\(r))")
        thread = t
    }

    func stop() {
        stopping.store(true, ordering: .sequentiallyConsistent)
        wakeNow()
        if let thread { pthread_join(thread, nil) }
        thread = nil
        body = nil
    }

    /// Called after each portal write: a futex wake only when the poller sleeps.
    @inline(__always)
    func wake() {
        doorbell.pointee.add(1, ordering: .sequentiallyConsistent)
        if sleeping.load(ordering: .sequentiallyConsistent) { wakeNow() }
    }

    private func wakeNow() {
        doorbell.pointee.add(1, ordering: .sequentiallyConsistent)
        _ = cvfio_futex_wake(UnsafeMutableRawPointer(doorbell).assumingMemoryBound(to: UInt32.self), 1)
    }

    /// The poller's hot loop: no allocation, lock or retain/release per pass; a busy pass
    /// yields the core now and then (`sched_yield`), an idle poller sleeps on the futex after
    /// `spins`, and one that clients leave nothing to sleeps a millisecond at a time.
    private func loop<Target: CompletionPollerTarget>(_ targets: UnsafeBufferPointer<Unmanaged<Target>>,
                                                      watch: () -> Void) {
        let word = UnsafeMutableRawPointer(doorbell).assumingMemoryBound(to: UInt32.self)
        var idle = 0
        var busyPasses = 0
        var attendedUntil: ContinuousClock.Instant? = nil
        while !stopping.load(ordering: .acquiring) {
            let seen = doorbell.pointee.load(ordering: .acquiring)
            var busy = false
            var attended = false
            for i in targets.indices {
                switch targets[i]._withUnsafeGuaranteedRef({ $0.pollFromPoller() }) {
                case .serviced: busy = true
                case .attended: attended = true
                case .idle: break
                }
            }
            if attended { attendedUntil = ContinuousClock.now + Self.attendedWindow }
            if !busy, let until = attendedUntil {
                if ContinuousClock.now < until {
                    // The clients poll: look now and then (a channel left alone since, a
                    // halted device), without the futex a portal write would have to wake.
                    watch()
                    idle = 0
                    var ts = timespec(tv_sec: 0, tv_nsec: Int(Self.attendedInterval.components.attoseconds / 1_000_000_000))
                    nanosleep(&ts, nil)
                    continue
                }
                attendedUntil = nil
            }
            if busy {
                idle = 0
                busyPasses &+= 1
                if busyPasses % Self.watchInterval == 0 { watch() }
                // Leave the core to the engines and the submitters now and then (a system
                // call: not on every pass).
                if busyPasses % Self.yieldInterval == 0 { sched_yield() } else { cvfio_pause() }
                continue
            }
            idle += 1
            if idle < spins { cvfio_pause(); continue }
            sleeping.store(true, ordering: .sequentiallyConsistent)
            if doorbell.pointee.load(ordering: .sequentiallyConsistent) == seen && !stopping.load(ordering: .acquiring) {
                _ = cvfio_futex_wait(word, seen, 100_000_000)
            }
            sleeping.store(false, ordering: .sequentiallyConsistent)
            idle = 0
        }
    }
}
