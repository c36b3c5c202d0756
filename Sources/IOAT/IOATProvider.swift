import CVFIO
import Hardware
import NetDMA
import Platform
import Synchronization

/// A NetDMA provider for one Intel CBDMA (I/OAT, QuickData) PCI function.
///
/// Generic over ``RegisterIO``: the same code drives BAR0 of a VFIO device and a device
/// model. Creating the provider brings every channel up as ioat.md §6.8 recommends: identity
/// checks (CBVER, CHANCNT, XFERCAP, DMACAPABILITY), stale CHANCTRL.IN_USE, quiesce, clear
/// CHANERR (and config CHANERR_INT below CB 3.3), reset with a timeout, then a NULL
/// descriptor through CHANCMP/CHAINADDR/DMACOUNT as a self-check. With an interrupt router
/// each channel gets an eventfd on its MSI-X vector (vector *n* ↔ channel *n*).
///
/// ```swift
/// let provider = try IOATProvider(bar: device.bar0, config: device, interrupts: device, memory: memory)
/// let handle = try provider.register(with: .shared)
/// let channel = try NetDMARegistry.shared.allocateChannel(provider: handle, affinity: [2])
/// ```
///
/// The NetDMA version is 2.0 (counted chains on DMACOUNT) unless configured as 1.0 or 1.1
/// (NULL-terminated chains: CHANCMD.APPEND on CB 1.x, emulated on the count above).
public final class IOATProvider<BAR: RegisterIO & ~Copyable>: NetDMAProvider, @unchecked Sendable {
    // @unchecked: mutable state is in Mutexes and atomics; `device` and `channels` are
    // immutable and Sendable in spirit (see IOATDevice, IOATChannel).

    /// How to bring the provider up.
    public struct Configuration: Sendable {
        /// The NetDMA version to declare: 2.0 (default) or 2.1 for counted chains, 1.0/1.1 for
        /// NULL-terminated chains.
        public var version: NetDMAVersion
        /// The friendly name; nil: "Intel CBDMA <version> (<platform>)".
        public var friendlyName: String?
        /// CPUs local to the device (its NUMA node), preferred for the interrupt/DPC CPU.
        public var localCPUs: CPUSet?
        /// Time limits of the register sequences.
        public var timeouts: IOATTimeouts
        /// Run the NULL-descriptor self-check on every channel at bring-up.
        public var selfTest: Bool

        public init(version: NetDMAVersion = .v2_0, friendlyName: String? = nil, localCPUs: CPUSet? = nil,
                    timeouts: IOATTimeouts = .init(), selfTest: Bool = true) {
            self.version = version
            self.friendlyName = friendlyName
            self.localCPUs = localCPUs
            self.timeouts = timeouts
            self.selfTest = selfTest
        }
    }

    /// The PCI function.
    public let device: IOATDevice<BAR>
    /// The hardware channels, by index.
    public let channels: [IOATChannel<BAR>]
    /// What the provider declares at registration (`NET_DMA_PROVIDER_CHARACTERISTICS`).
    public let characteristics: ProviderCharacteristics
    /// What it reports when started (`NET_DMA_PROVIDER_ATTRIBUTES`).
    public let attributes: ProviderAttributes
    /// The DMA memory of the engine's address space.
    public var dmaMemory: DMAMemory { device.memory }

    private let interrupts: (any InterruptRouting)?
    private let localCPUs: CPUSet?
    /// Per channel, the CPU its interrupt should target (`ProviderSetDmaChannelCpuAffinity`).
    private let affinityTable: Mutex<[Int?]>
    private let allocationLock = Mutex<Void>(())
    private let registration = Mutex<(registry: NetDMARegistry, handle: ProviderHandle)?>(nil)

    /// Brings the function up and, with `interrupts`, routes one MSI-X vector per channel.
    ///
    /// - Parameters:
    ///   - bar: BAR0 (VFIO region 0, or a model's BAR).
    ///   - config: configuration space (COMMAND, CHANERR_INT); nil skips those steps.
    ///   - interrupts: routes the MSI-X vectors to eventfds; nil for a polled provider.
    ///   - memory: DMA memory mapped into the engine's address space.
    /// - Throws: ``DriverError`` `.unsupportedHardware` for identity registers this driver
    ///   cannot drive; `.unsupported` for a NetDMA version the hardware cannot honour;
    ///   `.timeout` or `.selfTestFailed` when a channel does not reset or run its NULL
    ///   descriptor; the config accessor's, the interrupt router's or DMA memory's error.
    public init(bar: consuming BAR, config: (any PCIConfigAccess)?, interrupts: (any InterruptRouting)?,
                memory: DMAMemory, configuration: Configuration = .init()) throws(DriverError) {
        let device = try IOATDevice(bar: bar, config: config, memory: memory, timeouts: configuration.timeouts)
        let version = configuration.version
        guard version >= .v1_0, version <= .interface else {
            throw DriverError(.unsupported, "NetDMA \(version) is not a version this provider can declare; use 1.0, 1.1, 2.0 or 2.1.")
        }
        if version.countedChains && !device.hasDMACount {
            throw DriverError(.unsupported,
                "CBDMA \(device.profile.major).\(device.profile.minor) has no DMACOUNT register, so it cannot run NetDMA \(version) counted chains; declare NetDMA 1.0 or 1.1.")
        }

        if let config {
            // COMMAND (config 0x04, low 16 bits): memory space, bus master, and INTx off with MSI-X.
            let cmd = try config.readConfig32(0x04) & 0xFFFF
            var want: UInt32 = 0x6
            if interrupts != nil { want |= 0x400 }
            if cmd & want != want { try config.writeConfig32(0x04, cmd | want) }
        }

        let scratch = try memory.allocate(length: 4096)
        for i in 0..<device.channelCount {
            let r = device.registers[i]
            try device.fullReset(r, channel: i)
            if configuration.selfTest {
                try Self.selfTest(device, r, channel: i, scratch: scratch)
            }
        }
        _ = consume scratch

        var channels: [IOATChannel<BAR>] = []
        var fds: [Int32] = []
        let vectors = interrupts.map { min($0.interruptVectorCount, device.channelCount) } ?? 0
        for i in 0..<device.channelCount {
            let ch: IOATChannel<BAR>
            if i < vectors {
                let fd = try EventFD()
                fds.append(fd.rawValue)
                ch = IOATChannel(index: i, device: device, eventFD: fd, countedChains: version.countedChains)
            } else {
                ch = IOATChannel(index: i, device: device, eventFD: nil, countedChains: version.countedChains)
            }
            channels.append(ch)
        }
        if let interrupts, !fds.isEmpty {
            try interrupts.routeInterrupts(start: 0, eventFDs: fds)
            device.setInterruptRoutes(interrupts, eventFDs: fds)
            device.bar.write8(IOAT.INTRCTRL, IOAT.IntrCtrl([.msixVectorControl, .masterIntEnable]).rawValue)
        }

        var flags: ProviderFlags = []
        if device.capabilities.contains(.blockFill) { flags.insert(.fill) }
        if version >= .v2_0 && device.capabilities.contains(.pageBreak) { flags.insert(.pageBreak) }
        if version >= .v2_1 { flags.insert(.supportsProcessorGroups) }
        let hwMajor = device.cbver >> 4, hwMinor = device.cbver & 0xF
        let name = configuration.friendlyName
            ?? "Intel CBDMA \(hwMajor).\(hwMinor) (\(device.profile.platform))"

        self.device = device
        self.channels = channels
        self.interrupts = fds.isEmpty ? nil : interrupts
        self.localCPUs = configuration.localCPUs
        self.affinityTable = Mutex(Array(repeating: nil, count: device.channelCount))
        self.characteristics = ProviderCharacteristics(
            version: version, flags: flags, maxChannelCount: device.channelCount,
            callbacks: .all, friendlyName: name)
        self.attributes = ProviderAttributes(
            hardwareMajor: hwMajor, hardwareMinor: hwMinor, vendorID: IOAT.vendorID,
            channelCount: device.channelCount,
            maximumTransferSize: min(device.maximumTransferSize, Int(UInt32.max)),
            maximumAddress: (1 << 48) - 1)
    }

    deinit {
        if let interrupts {
            device.bar.write8(IOAT.INTRCTRL, 0)
            try? interrupts.disableInterrupts()
        }
    }

    /// The bring-up self-check (ioat.md §6.8 steps 8–11): a NULL descriptor with compl_write
    /// through CHANCMP, CHAINADDR and DMACOUNT (CB 1.x: CHANCMD.START); the channel must arm,
    /// finish it and write its address to the completion word. Leaves the channel reset.
    static func selfTest(_ device: IOATDevice<BAR>, _ r: IOATChannelRegisters, channel: Int,
                         scratch: borrowing DMABuffer) throws(DriverError) {
        let descriptorIOVA = scratch.iova
        let wordIOVA = scratch.iova(at: 64)
        let word = scratch.address(at: 64).bindMemory(to: Atomic<UInt64>.self, capacity: 1)
        word.pointee.store(0, ordering: .relaxed)
        scratch.address(at: 0).bindMemory(to: Descriptor.self, capacity: 1).pointee = Descriptor(
            transferSize: 1, controlFlags: [.nullTransfer, .statusUpdateOnCompletion],
            next: device.hasDMACount ? descriptorIOVA : 0)

        func failure(_ what: String) -> DriverError {
            let sts = device.readChanSts(r)
            let err = IOAT.ChanErr(rawValue: device.chanErr(r))
            let state = IOAT.ChannelState(rawValue: UInt8(sts & 7)).map(\.description) ?? "invalid"
            return DriverError(.selfTestFailed,
                "CBDMA channel \(channel) failed its bring-up self-check: \(what) (CHANSTS 0x\(String(sts, radix: 16)) \(state), CHANERR 0x\(String(err.rawValue, radix: 16))\(err.rawValue == 0 ? "" : ": \(err)"), completion word 0x\(String(word.pointee.load(ordering: .acquiring), radix: 16))). Check that the IOMMU maps the DMA memory, then reset the function.")
        }

        device.bar.write16(r.chanctrl, IOAT.ChanCtrl([.anyErrAbortEnable, .errCompletionEnable]).rawValue)
        device.writeWide(r.chancmp, wordIOVA)
        device.writeWide(r.chainaddr, descriptorIOVA)
        if device.hasDMACount {
            guard device.spin(for: device.timeouts.selfTest, { device.state(r) == .armed }) else {
                throw failure("the channel did not arm after CHAINADDR")
            }
        }
        cvfio_io_wmb()
        if device.hasDMACount {
            device.bar.write16(r.dmacount, 1)
        } else {
            device.command(r, .start)
        }
        let ok = device.spin(for: device.timeouts.selfTest) {
            let w = CompletionWord(rawValue: word.pointee.load(ordering: .acquiring))
            return device.state(r) == .done && w.descriptor == descriptorIOVA
                && (w.status == .idle || w.status == .active)
        }
        guard ok else { throw failure("the NULL descriptor did not complete within \(device.timeouts.selfTest)") }
        try device.resetAndWait(r, channel: channel)
        device.writeWide(r.chancmp, 0)
    }

    // MARK: - NetDMAProvider

    /// `ProviderSetDmaChannelCpuAffinity`: remembers the CPU each channel's interrupt should
    /// target. With VFIO the MSI-X vector's host affinity is the kernel's; the CPU is used
    /// for the channel's DPC and reported at allocation.
    ///
    /// - Throws: `.invalidArgument` for a channel index beyond the function's channels.
    public func setChannelCPUAffinity(_ table: [ChannelCPUAffinity]) throws(DriverError) {
        for e in table where e.channel < 0 || e.channel >= characteristics.maxChannelCount || e.cpu < 0 {
            throw DriverError(.invalidArgument,
                "Affinity entry channel \(e.channel) → CPU \(e.cpu) is out of range (channels 0..<\(characteristics.maxChannelCount)).")
        }
        affinityTable.withLock { t in
            for e in table { t[e.channel] = e.cpu }
        }
    }

    /// `ProviderAllocateDmaChannel`: takes a free channel, preferring one whose interrupt CPU
    /// (from ``setChannelCPUAffinity(_:)``) is in `parameters.affinity`; otherwise the DPC CPU
    /// is the first CPU of `parameters.affinity` local to the device, or of the set. Points the
    /// channel's CHANCMP at the completion word and programs CHANCTRL. Does not block.
    ///
    /// - Throws: `.busy` when every channel is allocated.
    public func allocateChannel(_ parameters: ChannelParameters) throws(DriverError) -> (channel: any ProviderChannel, cpu: Int) {
        let table = affinityTable.withLock { $0 }
        let want = parameters.affinity
        let picked: (IOATChannel<BAR>, Int)? = allocationLock.withLock { _ in
            let free = channels.indices.filter { !channels[$0].allocated }
            guard let (i, cpu) = ChannelChoice.pick(free: free, interruptCPUs: table, wanted: want, localCPUs: localCPUs) else {
                return nil
            }
            channels[i].allocation.store(true, ordering: .releasing)
            return (channels[i], cpu)
        }
        guard let (channel, cpu) = picked else {
            throw DriverError(.busy,
                "All \(channels.count) channels of \(characteristics.friendlyName) are allocated; free one first.")
        }
        channel.activate(parameters)
        return (channel, cpu)
    }

    // MARK: - Registry

    /// Registers with `registry` (`NetDmaRegisterProvider`) and starts
    /// (`NetDmaProviderStart`) with ``attributes``: the hardware is already up.
    ///
    /// - Throws: the registry's error (`.busy` when already registered).
    @discardableResult
    public func register(with registry: NetDMARegistry) throws(DriverError) -> ProviderHandle {
        let handle = try registry.registerAndStart(self, attributes: attributes)
        registration.withLock { $0 = (registry, handle) }
        return handle
    }

    /// Stops (`NetDmaProviderStop`: drains and frees every channel) and deregisters.
    ///
    /// - Returns: the channels that had to be aborted because they did not drain.
    @discardableResult
    public func deregister() throws(DriverError) -> [Int] {
        guard let (registry, handle) = registration.withLock({ $0 }) else { return [] }
        let aborted = try registry.stopAndDeregister(handle)
        registration.withLock { $0 = nil }
        return aborted
    }

    // MARK: - Power (netdma.md §10)

    /// PowerDown: tells the interface (1.1+: `NetDmaPnPEventNotify(PowerDown)`, which drains
    /// every channel), then stops every channel (quiesce and reset), turns interrupts off and,
    /// when config space has a PCI power-management capability, puts the function in D3hot.
    ///
    /// - Throws: the registry's error (`.timeout` when a channel does not drain: the device
    ///   stays up); `.timeout` when a channel does not reset.
    public func powerDown() throws(DriverError) {
        if characteristics.version.powerEvents, let (registry, handle) = registration.withLock({ $0 }) {
            try registry.notify(handle, event: .powerDown)
        }
        for ch in channels { try ch.powerDown() }
        device.bar.write8(IOAT.INTRCTRL, 0)
        try device.setPowerState(d3hot: true)
    }

    /// PowerUp: back to D0, every channel reset and its allocated client's completion word and
    /// interrupt programmed again, MSI-X routed again; then 1.1+ providers tell the interface
    /// (`NetDmaPnPEventNotify(PowerUp)`), which re-Starts every running channel with a NULL
    /// descriptor. A 1.0 provider instead fails the next Append of each channel with
    /// `.contextLost`, and the interface re-seeds it with a NULL Start.
    ///
    /// - Throws: the reset, routing or registry error.
    public func powerUp() throws(DriverError) {
        try device.setPowerState(d3hot: false)
        for ch in channels { try ch.powerUp(contextLost: !characteristics.version.powerEvents) }
        if let interrupts {
            let fds = channels.compactMap(\.interruptEventFD)
            try interrupts.disableInterrupts()
            try interrupts.routeInterrupts(start: 0, eventFDs: fds)
            device.bar.write8(IOAT.INTRCTRL, IOAT.IntrCtrl([.msixVectorControl, .masterIntEnable]).rawValue)
        }
        if characteristics.version.powerEvents, let (registry, handle) = registration.withLock({ $0 }) {
            try registry.notify(handle, event: .powerUp)
        }
    }
}
