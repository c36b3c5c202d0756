import Platform

/// A NetDMA version: major and minor, encoded as NetDMA does (major << 16 | minor).
public struct NetDMAVersion: Sendable, Hashable, Comparable, CustomStringConvertible {
    public let major: UInt16
    public let minor: UInt16
    public init(_ major: UInt16, _ minor: UInt16) { self.major = major; self.minor = minor }
    public init(encoded: UInt32) { self.init(UInt16(encoded >> 16), UInt16(truncatingIfNeeded: encoded)) }
    /// `NetDmaGetVersion()`'s encoding.
    public var encoded: UInt32 { UInt32(major) << 16 | UInt32(minor) }
    public static func < (a: Self, b: Self) -> Bool { (a.major, a.minor) < (b.major, b.minor) }
    public var description: String { "\(major).\(minor)" }

    /// NetDMA 1.0: NULL-terminated chains, no power events.
    public static let v1_0 = NetDMAVersion(1, 0)
    /// NetDMA 1.1: adds GetVersion and PowerDown/PowerUp notifications.
    public static let v1_1 = NetDMAVersion(1, 1)
    /// NetDMA 2.0: counted chains, page break, DCA flag, a friendly name.
    public static let v2_0 = NetDMAVersion(2, 0)
    /// NetDMA 2.1: CPU sets of any size (processor groups).
    public static let v2_1 = NetDMAVersion(2, 1)
    /// The interface version this library implements.
    public static let interface = v2_1

    /// Whether chains are counted (2.0+) rather than NULL-terminated (1.x).
    public var countedChains: Bool { major >= 2 }
    /// Whether the provider sends and receives power notifications (1.1+).
    public var powerEvents: Bool { self >= .v1_1 }
}

/// `NET_DMA_PROVIDER_CHARACTERISTICS.Flags`, plus this library's capability bits.
public struct ProviderFlags: OptionSet, Sendable, Hashable {
    public let rawValue: UInt32
    public init(rawValue: UInt32) { self.rawValue = rawValue }
    /// `NET_DMA_PROVIDER_CHARACTERISTICS_DCA_SUPPORTED`. No supported engine sets it.
    public static let dcaSupported = ProviderFlags(rawValue: 0x1)
    /// `NET_DMA_PROVIDER_SUPPORTS_PROC_GROUPS`: understands CPU sets beyond 64 CPUs.
    public static let supportsProcessorGroups = ProviderFlags(rawValue: 0x2)
    /// Executes ``Operation/fill`` descriptors (Linux extension).
    public static let fill = ProviderFlags(rawValue: 0x1_0000)
    /// Honours source/destination page-break descriptors.
    public static let pageBreak = ProviderFlags(rawValue: 0x2_0000)

    /// The bits of NetDMA's own `Flags` field (the low 16); the bits above are this library's
    /// capability bits. NetDMA 1.0 and 1.1 define no flags: these bits must be 0 there.
    public static let netDMAMask: UInt32 = 0x0000_FFFF
    /// Every flag this library knows; a provider declaring another bit is refused.
    public static let known: ProviderFlags = [.dcaSupported, .supportsProcessorGroups, .fill, .pageBreak]
}

/// Which optional provider callbacks exist (NetDMA's NULL function pointers).
public struct ProviderCallbacks: OptionSet, Sendable, Hashable {
    public let rawValue: UInt32
    public init(rawValue: UInt32) { self.rawValue = rawValue }
    /// `ProviderSetDmaChannelCpuAffinity`.
    public static let setChannelCPUAffinity = ProviderCallbacks(rawValue: 0x1)
    /// `ProviderSuspendDma` and `ProviderResumeDma` (always together).
    public static let suspendResume = ProviderCallbacks(rawValue: 0x2)
    /// `ProviderAbortDma`.
    public static let abort = ProviderCallbacks(rawValue: 0x4)
    /// `ProviderResetChannel`.
    public static let reset = ProviderCallbacks(rawValue: 0x8)
    public static let all: ProviderCallbacks = [.setChannelCPUAffinity, .suspendResume, .abort, .reset]
}

/// `NET_DMA_PROVIDER_CHARACTERISTICS`: what a provider declares when it registers.
public struct ProviderCharacteristics: Sendable, Hashable {
    /// The NetDMA version the provider implements; no higher than ``NetDMAVersion/interface``.
    public var version: NetDMAVersion
    public var flags: ProviderFlags
    /// The most channels this kind of engine can have.
    public var maxChannelCount: Int
    /// The optional callbacks implemented.
    public var callbacks: ProviderCallbacks
    /// A human-readable name (required from 2.0).
    public var friendlyName: String

    public init(version: NetDMAVersion, flags: ProviderFlags = [], maxChannelCount: Int,
                callbacks: ProviderCallbacks, friendlyName: String) {
        self.version = version
        self.flags = flags
        self.maxChannelCount = maxChannelCount
        self.callbacks = callbacks
        self.friendlyName = friendlyName
    }
}

/// `NET_DMA_PROVIDER_ATTRIBUTES`: what a started provider reports about its hardware.
public struct ProviderAttributes: Sendable, Hashable {
    public var hardwareVersion: (major: UInt8, minor: UInt8) {
        get { (hardwareMajor, hardwareMinor) }
        set { (hardwareMajor, hardwareMinor) = newValue }
    }
    public var hardwareMajor: UInt8
    public var hardwareMinor: UInt8
    /// PCI vendor ID.
    public var vendorID: UInt16
    /// Channels usable now (≤ ``ProviderCharacteristics/maxChannelCount``).
    public var channelCount: Int
    /// The largest byte count one descriptor may carry; at least 4096.
    public var maximumTransferSize: Int
    /// The highest IOVA the engine can reach.
    public var maximumAddress: UInt64

    public init(hardwareMajor: UInt8, hardwareMinor: UInt8, vendorID: UInt16, channelCount: Int,
                maximumTransferSize: Int, maximumAddress: UInt64) {
        self.hardwareMajor = hardwareMajor
        self.hardwareMinor = hardwareMinor
        self.vendorID = vendorID
        self.channelCount = channelCount
        self.maximumTransferSize = maximumTransferSize
        self.maximumAddress = maximumAddress
    }
}

/// `NET_DMA_CHANNEL_CPU_AFFINITY`: the CPU a channel's interrupt should target.
public struct ChannelCPUAffinity: Sendable, Hashable {
    public var channel: Int
    public var cpu: Int
    public init(channel: Int, cpu: Int) { self.channel = channel; self.cpu = cpu }
}

/// `NET_DMA_CHANNEL_PARAMETERS`: what the interface asks of a new channel.
public struct ChannelParameters: @unchecked Sendable {
    // @unchecked: `completionAddress` points into DMA memory the interface owns for the
    // channel's whole life.
    /// The CPU address of the channel's 64-bit completion word (8-byte aligned, own cache line).
    public var completionAddress: UnsafeMutablePointer<UInt64>
    /// The IOVA of the completion word.
    public var completionIOVA: UInt64
    /// CPUs acceptable for the channel's interrupt and DPC: never empty, and only CPUs this
    /// process may use (the interface checks both before it calls the provider).
    public var affinity: CPUSet
    /// Priority among channels of the same engine; higher is more important.
    public var priority: Int

    public init(completionAddress: UnsafeMutablePointer<UInt64>, completionIOVA: UInt64,
                affinity: CPUSet, priority: Int = 0) {
        self.completionAddress = completionAddress
        self.completionIOVA = completionIOVA
        self.affinity = affinity
        self.priority = priority
    }
}

/// The first descriptor of a chain, as the CPU and the device see it, and how many follow.
public struct DescriptorChain: @unchecked Sendable {
    // @unchecked: points into DMA memory the interface owns.
    public var address: UnsafeMutablePointer<Descriptor>
    public var iova: UInt64
    /// 2.0 providers: exactly the number of descriptors to process. 1.x: informational.
    public var count: Int
    @inlinable
    public init(address: UnsafeMutablePointer<Descriptor>, iova: UInt64, count: Int) {
        self.address = address
        self.iova = iova
        self.count = count
    }
}

/// What a provider's interrupt service routine found.
public struct InterruptReport: Sendable, Hashable {
    /// The IOVA of the last completed descriptor, or 0 when the interrupt was not a
    /// completion (an error).
    public var lastCompleted: UInt64
    /// Set when the channel halted with an error.
    public var fault: ChannelFault?
    /// False when the ISR handled the interrupt itself and it carries nothing for the client
    /// (``handled``): the interface runs no DPC for it (a provider ISR that does not call
    /// `NetDmaIsr`).
    public var queuesDPC: Bool
    public init(lastCompleted: UInt64, fault: ChannelFault? = nil) {
        self.lastCompleted = lastCompleted
        self.fault = fault
        self.queuesDPC = true
    }

    /// An interrupt the provider raised for itself and handled in its ISR (an engine error it
    /// hides from the client): no DPC, no completion handler, no interrupt generation.
    public static var handled: InterruptReport {
        var r = InterruptReport(lastCompleted: 0)
        r.queuesDPC = false
        return r
    }
}

/// Why a channel halted, decoded from the engine's error registers or completion records.
public struct ChannelFault: Sendable, Hashable, CustomStringConvertible {
    /// The engine's raw error value (CBDMA CHANERR bits, DSA status code).
    public var rawValue: UInt64
    /// The decoded causes, named after the hardware documentation.
    public var causes: [String]
    /// The IOVA of the descriptor that failed, when known.
    public var descriptor: UInt64?
    public init(rawValue: UInt64, causes: [String], descriptor: UInt64? = nil) {
        self.rawValue = rawValue
        self.causes = causes
        self.descriptor = descriptor
    }
    public var description: String {
        let d = descriptor.map { " at descriptor 0x\(String($0, radix: 16))" } ?? ""
        return causes.joined(separator: ", ") + d + " (0x\(String(rawValue, radix: 16)))"
    }
}

/// A NetDMA provider: the software for one DMA engine (`ProviderXxx` callbacks at engine level).
///
/// A provider registers with ``NetDMARegistry`` and, once its hardware is ready, starts. Its
/// callbacks are called from any thread and must not block, sleep or allocate beyond what
/// each callback's documentation allows (NetDMA runs them at IRQL ≤ DISPATCH_LEVEL).
public protocol NetDMAProvider: AnyObject, Sendable {
    /// What the provider declares at registration.
    var characteristics: ProviderCharacteristics { get }

    /// DMA memory mapped into this engine's address space (the VFIO container or the model's
    /// IOMMU). The interface allocates each channel's completion word and its reserved NULL
    /// descriptor here, and clients allocate descriptor pools and data buffers from it.
    var dmaMemory: DMAMemory { get }

    /// `ProviderSetDmaChannelCpuAffinity`: the CPU each channel's interrupt should target, one
    /// entry per channel up to ``ProviderCharacteristics/maxChannelCount``. Called during
    /// registration; may block (PASSIVE_LEVEL). Optional.
    func setChannelCPUAffinity(_ table: [ChannelCPUAffinity]) throws(DriverError)

    /// `ProviderAllocateDmaChannel`: picks a free channel, points it at the completion word and
    /// returns it with the CPU its interrupt and DPC will use (preferring a CPU in
    /// `parameters.affinity`, on its NUMA node). The channel is ready for ``ProviderChannel/start(_:)``.
    ///
    /// - Throws: `.busy` when every channel is allocated.
    func allocateChannel(_ parameters: ChannelParameters) throws(DriverError) -> (channel: any ProviderChannel, cpu: Int)
}

extension NetDMAProvider {
    public func setChannelCPUAffinity(_ table: [ChannelCPUAffinity]) throws(DriverError) {}
}

/// One allocated channel of a provider (`ProviderChannelContext` and its callbacks).
///
/// None of these may block or sleep, except ``suspend()``, which returns once the engine has
/// halted (NetDMA: "halt before returning"), bounded by a hardware timeout.
public protocol ProviderChannel: AnyObject, Sendable {
    /// The hardware channel (or work queue) index within the engine.
    var index: Int { get }

    /// `ProviderStartDma`: process `chain`. If the channel is busy, the current descriptor
    /// finishes and the rest of the old chain is dropped. Mandatory; the first call after
    /// allocation, Abort and Reset; also how the channel recovers after a halt.
    func start(_ chain: DescriptorChain) throws(DriverError)

    /// `ProviderAppendDma`: add `chain` after the last submitted descriptor. 2.0: add
    /// `chain.count` to the outstanding count. 1.x: the old tail's `next` already points at
    /// `chain`; make the engine re-read it if it stopped there. Mandatory. Hot path.
    func append(_ chain: DescriptorChain) throws(DriverError)

    /// `ProviderSuspendDma`: finish the current descriptor, halt, write Suspend status, and
    /// return the IOVA of the last descriptor processed (0 if none). Optional.
    func suspend() throws(DriverError) -> UInt64

    /// `ProviderResumeDma`: re-read the last processed descriptor's `next` and continue. Optional.
    func resume() throws(DriverError)

    /// `ProviderAbortDma`: stop at once (the current copy may be partial), abandon the rest,
    /// write Halted status. Optional.
    func abort() throws(DriverError)

    /// `ProviderResetChannel`: as Abort, then back to the post-allocation state; previously
    /// submitted descriptors are never touched again. Optional.
    func reset() throws(DriverError)

    /// `ProviderFreeDmaChannel`: release the channel. Nothing is outstanding.
    func free()

    /// The eventfd the channel's interrupt vector signals, or nil when the channel has none.
    var interruptEventFD: Int32? { get }

    /// The interrupt service routine: acknowledge the interrupt and report what completed.
    /// Called by the interface's interrupt thread after the eventfd fired.
    func serviceInterrupt() -> InterruptReport

    /// The interrupt service routine with the number of interrupts the eventfd counted since
    /// the last one (several coalesce into one read). A provider that handles some of its
    /// interrupts itself (``InterruptReport/handled``) needs the count to tell whether the
    /// client's interrupts came with them. By default ``serviceInterrupt()``.
    func serviceInterrupt(signals: UInt64) -> InterruptReport

    /// The provider's DPC work before the interface retires descriptors: re-arm the channel's
    /// interrupt (CBDMA INT_REARM) so the next completion can interrupt again.
    func rearmInterrupt()

    /// Whether a polling client must call ``pollCompletions()`` before it reads the completion
    /// word: true for an engine that does not write the word itself (DSA writes completion
    /// records, which the provider turns into the word). Constant for the channel's life.
    var completesByPolling: Bool { get }

    /// Turns what the engine has reported since the last call into the completion word (and
    /// hands the engine more of the chain if it waited for room), on the client's thread: what
    /// DPDK's idxd driver does in `rte_dma_completed`. ``CopyQueue`` calls it on each poll
    /// when ``completesByPolling`` is true. Hot path: no lock, allocation, retain/release or
    /// system call; never blocks (another thread doing the same work is left to finish it).
    func pollCompletions()

    /// Why the channel halted, if it did (decoded error registers). Cleared by Start/Reset.
    ///
    /// Contract on an error halt: the completion word (when the engine writes it) holds the
    /// last descriptor that completed successfully with status Halted, and
    /// ``ChannelFault/descriptor`` names the descriptor that failed, so the interface can
    /// Start again at the first unprocessed descriptor after it.
    var fault: ChannelFault? { get }
}

extension ProviderChannel {
    public func serviceInterrupt(signals: UInt64) -> InterruptReport { serviceInterrupt() }
    /// The engine writes the completion word itself (CBDMA).
    public var completesByPolling: Bool { false }
    public func pollCompletions() {}
    public func suspend() throws(DriverError) -> UInt64 {
        throw DriverError(.unsupported, "This provider does not implement SuspendDma.")
    }
    public func resume() throws(DriverError) {
        throw DriverError(.unsupported, "This provider does not implement ResumeDma.")
    }
    public func abort() throws(DriverError) {
        throw DriverError(.unsupported, "This provider does not implement AbortDma.")
    }
    public func reset() throws(DriverError) {
        throw DriverError(.unsupported, "This provider does not implement ResetChannel.")
    }
}

extension DriverError.Code {
    /// A NetDMA call made in a channel or provider state that does not allow it.
    public static let invalidState = Self(rawValue: "invalidState")
    /// The channel halted with a device error.
    public static let channelHalted = Self(rawValue: "channelHalted")
    /// A descriptor asks for more than the engine can do (size, address width, operation).
    public static let descriptorTooLarge = Self(rawValue: "descriptorTooLarge")
    /// The ring or queue has no room.
    public static let queueFull = Self(rawValue: "queueFull")
    /// A NetDMA 1.0 provider lost its hardware context (power cycle) and asks the interface to
    /// re-seed the channel with a Start on a NULL descriptor. Thrown by
    /// ``ProviderChannel/append(_:)``; the interface handles it (netdma.md §10).
    public static let contextLost = Self(rawValue: "contextLost")
}
