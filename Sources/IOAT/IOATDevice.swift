import CVFIO
import Hardware
import NetDMA
import Platform
import Synchronization

extension DriverError.Code {
    /// The function's identity registers (CBVER, CHANCNT, XFERCAP) describe an engine this
    /// driver cannot drive.
    public static let unsupportedHardware = Self(rawValue: "unsupportedHardware")
    /// A bring-up self-check (reset state, the NULL descriptor) failed.
    public static let selfTestFailed = Self(rawValue: "selfTestFailed")
}

/// The absolute BAR0 offsets of one CBDMA channel's registers, for the v1 or the v2/v3 layout.
@usableFromInline
struct IOATChannelRegisters: Sendable {
    @usableFromInline let chanctrl: Int
    @usableFromInline let chancmd: Int
    /// DMACOUNT; -1 on v1, which has none (CHANERR and CDAR sit at the same offsets on v1).
    @usableFromInline let dmacount: Int
    @usableFromInline let chansts: Int
    @usableFromInline let chainaddr: Int
    @usableFromInline let chancmp: Int
    @usableFromInline let cdar: Int
    @usableFromInline let chanerr: Int

    init(channel: Int, v1: Bool) {
        let base = IOAT.channelBase(channel)
        chanctrl = base + IOAT.CHANCTRL
        chancmp = base + IOAT.CHANCMP
        if v1 {
            chancmd = base + IOAT.V1.CHANCMD
            dmacount = -1
            chansts = base + IOAT.V1.CHANSTS
            chainaddr = base + IOAT.V1.CHAINADDR
            cdar = base + IOAT.CDAR
            chanerr = base + IOAT.CHANERR
        } else {
            chancmd = base + IOAT.CHANCMD
            dmacount = base + IOAT.DMACOUNT
            chansts = base + IOAT.CHANSTS
            chainaddr = base + IOAT.CHAINADDR
            cdar = base + IOAT.CDAR
            chanerr = base + IOAT.CHANERR
        }
    }
}

/// Time limits of the CBDMA register sequences (ioat.md §6.6).
public struct IOATTimeouts: Sendable, Hashable {
    /// SUSPEND until the channel leaves ACTIVE/DONE (Linux: 100 ms).
    public var quiesce: Duration
    /// CHANCMD.RESET until bit 5 reads 0 (Linux: 200 ms).
    public var reset: Duration
    /// The bring-up NULL descriptor until DONE and its completion write (ioat.md §6.8 says
    /// 10 ms; the default allows a device model on a busy machine).
    public var selfTest: Duration
    /// In-place halt recovery (CB 3.4) until CHANSTS reads ARMED (DPDK: 200 pauses).
    public var recovery: Duration

    public init(quiesce: Duration = .milliseconds(100), reset: Duration = .milliseconds(200),
                selfTest: Duration = .milliseconds(100), recovery: Duration = .milliseconds(1)) {
        self.quiesce = quiesce
        self.reset = reset
        self.selfTest = selfTest
        self.recovery = recovery
    }
}

/// One CBDMA PCI function: its BAR0, its configuration space, what its identity registers say,
/// and the register sequences (quiesce, clear errors, reset, program, recover) that the
/// provider and its channels share.
///
/// Generic over ``RegisterIO`` so the same code runs on an mmapped VFIO BAR and on a device
/// model. Shared by reference between ``IOATProvider`` and its ``IOATChannel``s; holds no
/// reference back to either.
public final class IOATDevice<BAR: RegisterIO & ~Copyable>: @unchecked Sendable {
    // @unchecked: `bar` is a register window; every access is a single volatile load or store
    // the hardware (or model) serialises. Every other property is immutable after init.

    /// BAR0.
    public let bar: BAR
    /// The DMA memory descriptors and completion words live in (to read a descriptor's
    /// `next` on the control path).
    public let memory: DMAMemory
    /// Configuration space, when the caller has it (VFIO config region, model).
    public let config: (any PCIConfigAccess)?
    /// The PCI device ID, when config space was given.
    public let deviceID: UInt16?
    /// The generation as read from the identity registers, with the quirks of
    /// ``IOAT/Profile`` (SKX forced to 3.2 as Linux does).
    public let profile: IOAT.Profile
    /// CBVER as read (the profile may differ on SKX).
    public let cbver: UInt8
    /// DMACAPABILITY.
    public let capabilities: IOAT.DMACapability
    /// Channels behind the function (CHANCNT & 0x1F).
    public let channelCount: Int
    /// The largest transfer in bytes (2^XFERCAP; XFERCAP 0 = 4 GiB − 1 as in SPDK).
    public let maximumTransferSize: Int
    /// Time limits.
    public let timeouts: IOATTimeouts

    @usableFromInline let registers: [IOATChannelRegisters]

    /// Where the channels' MSI-X vectors go: set once interrupts are routed; read to restore
    /// them after a reset that clobbers the MSI-X table (CB 3.3).
    private let routes = Mutex<(routing: (any InterruptRouting)?, eventFDs: [Int32])>((nil, []))

    /// Reads and checks the identity registers (ioat.md §6.8 steps 1–2).
    ///
    /// - Throws: ``DriverError`` `.unsupportedHardware` for a vendor other than Intel, a CBVER
    ///   this driver does not know, no channels, or an XFERCAP below 4 KiB; the config
    ///   accessor's error.
    public init(bar: consuming BAR, config: (any PCIConfigAccess)?, memory: DMAMemory,
                timeouts: IOATTimeouts = .init()) throws(DriverError) {
        var deviceID: UInt16? = nil
        if let config {
            let id = try config.readPCIID()
            guard id.vendor == IOAT.vendorID else {
                throw DriverError(.unsupportedHardware,
                    "PCI vendor 0x\(String(id.vendor, radix: 16)) is not Intel (0x8086): this is not a CBDMA function. Bind the right device.")
            }
            deviceID = id.device
        }
        guard bar.length >= IOAT.channelBase(1) else {
            throw DriverError(.unsupportedHardware,
                "BAR0 is \(bar.length) bytes; a CBDMA BAR0 holds at least one channel block (0x100 bytes). Map region 0 of the device.")
        }
        let cbver = bar.read8(IOAT.CBVER)
        let major = cbver >> 4
        guard (1...3).contains(major), major < 3 || cbver & 0xF <= 4 else {
            throw DriverError(.unsupportedHardware,
                "CBVER reads 0x\(String(cbver, radix: 16)); this driver knows CBDMA 1.x, 2.x and 3.0–3.4. Check that BAR0 of a CBDMA function is mapped (a dead BAR reads 0x00 or 0xFF).")
        }
        let chancnt = Int(bar.read8(IOAT.CHANCNT) & 0x1F)
        guard chancnt > 0 else {
            throw DriverError(.unsupportedHardware,
                "CHANCNT reads 0: the function exposes no DMA channel. It may be disabled in firmware.")
        }
        let xfercap = bar.read8(IOAT.XFERCAP) & 0x1F
        guard xfercap == 0 || xfercap >= 12 else {
            throw DriverError(.unsupportedHardware,
                "XFERCAP reads \(xfercap) (2^\(xfercap) bytes); NetDMA needs at least 4 KiB per descriptor (XFERCAP ≥ 12).")
        }
        let caps = IOAT.DMACapability(rawValue: major >= 3 ? bar.read32(IOAT.DMACAPABILITY) : 0)
        let channelsFit = bar.length >= IOAT.channelBase(chancnt)
        guard channelsFit else {
            throw DriverError(.unsupportedHardware,
                "CHANCNT reads \(chancnt) but BAR0 (\(bar.length) bytes) cannot hold that many channel blocks.")
        }

        // Linux drives SKX/CLX (0x2021) as CB 3.2 whatever CBVER says (ioat.md §7.11).
        let effective: UInt8 = deviceID == 0x2021 ? 0x32 : cbver
        var p = IOAT.profiles.first { $0.deviceID == deviceID }
            ?? IOAT.profiles.first { $0.cbver == effective }
            ?? IOAT.profiles[0]
        if p.deviceID != deviceID {
            p.name = "cb\(major)\(cbver & 0xF)"
            p.platform = deviceID.flatMap { id in IOAT.deviceTable.first { $0.id.device == id }?.platform }
                ?? "CBDMA \(major).\(cbver & 0xF)"
            p.deviceID = deviceID ?? 0
        }
        p.cbver = effective
        p.xfercap = xfercap
        p.capabilities = caps
        p.channelsPerFunction = chancnt
        p.bar0Size = bar.length

        self.bar = bar
        self.memory = memory
        self.config = config
        self.deviceID = deviceID
        self.cbver = cbver
        self.profile = p
        self.capabilities = caps
        self.channelCount = chancnt
        self.maximumTransferSize = p.maximumTransferSize
        self.timeouts = timeouts
        self.registers = (0..<chancnt).map { IOATChannelRegisters(channel: $0, v1: p.isV1) }
    }

    /// Whether this function has the v2+ DMACOUNT doorbell (counted chains in hardware).
    public var hasDMACount: Bool { !profile.isV1 }

    // MARK: - Register access with the generation's quirks

    /// Writes a 64-bit channel register (CHAINADDR, CHANCMP): one store on CB ≥ 3.3, two
    /// 32-bit stores low half first below (ioat.md §7.4).
    @inlinable
    func writeWide(_ offset: Int, _ value: UInt64) {
        if profile.splitsWide64BitWrites || offset & 7 != 0 {
            bar.write64Split(offset, value)
        } else {
            bar.write64(offset, value)
        }
    }

    /// A 64-bit register (CHANSTS, CDAR) as one value. From CB 3.3 one 64-bit load. Below
    /// 3.3 (and on the v1 layout, where CHANSTS is not 8-byte aligned) a single 64-bit load
    /// may tear (ioat.md §7.4), so two 32-bit loads made tear-safe: high, low, high again,
    /// repeated while the high half moved.
    func readWide(_ offset: Int) -> UInt64 {
        guard profile.tornChanstsReads || offset & 7 != 0 else { return bar.read64(offset) }
        var high = bar.read32(offset + 4)
        var low = bar.read32(offset)
        for _ in 0..<8 {
            let again = bar.read32(offset + 4)
            if again == high { break }
            high = again
            low = bar.read32(offset)
        }
        return UInt64(high) << 32 | UInt64(low)
    }

    /// CHANSTS as one value (see ``readWide(_:)``).
    func readChanSts(_ r: IOATChannelRegisters) -> UInt64 { readWide(r.chansts) }

    /// The channel state (CHANSTS bits 2:0), from one 32-bit load: the low half never tears.
    @inlinable
    func state(_ r: IOATChannelRegisters) -> IOAT.ChannelState? {
        IOAT.ChannelState(rawValue: UInt8(bar.read32(r.chansts) & 0x7))
    }

    /// CHANERR.
    @inlinable
    func chanErr(_ r: IOATChannelRegisters) -> UInt32 { bar.read32(r.chanerr) }

    @inlinable
    func command(_ r: IOATChannelRegisters, _ cmd: IOAT.ChanCmd) {
        bar.write8(r.chancmd, cmd.rawValue)
    }

    /// Spins (no sleeping) until `condition` holds or `timeout` passes; true when it held.
    func spin(for timeout: Duration, _ condition: () -> Bool) -> Bool {
        if condition() { return true }
        let deadline = ContinuousClock.now.advanced(by: timeout)
        while ContinuousClock.now < deadline {
            cvfio_pause()
            if condition() { return true }
        }
        return condition()
    }

    // MARK: - Sequences (ioat.md §6.8)

    /// Step 3: clears a stale CHANCTRL.IN_USE left by a previous owner (and everything else in
    /// CHANCTRL with it, as DPDK does). Returns whether it was set.
    @discardableResult
    func clearStaleOwnership(_ r: IOATChannelRegisters) -> Bool {
        let ctrl = IOAT.ChanCtrl(rawValue: bar.read16(r.chanctrl))
        guard ctrl.contains(.inUse) else { return false }
        bar.write16(r.chanctrl, 0)
        return true
    }

    /// Step 4: SUSPEND an ACTIVE or DONE channel and wait until it is neither.
    ///
    /// - Throws: `.timeout` when the channel keeps running past ``IOATTimeouts/quiesce``.
    func quiesce(_ r: IOATChannelRegisters, channel: Int) throws(DriverError) {
        let s = state(r)
        guard s == .active || s == .done else { return }
        command(r, .suspend)
        let stopped = spin(for: timeouts.quiesce) {
            let s = self.state(r)
            return s != .active && s != .done
        }
        guard stopped else {
            throw DriverError(.timeout,
                "CBDMA channel \(channel) did not suspend within \(timeouts.quiesce) (CHANSTS 0x\(String(readChanSts(r), radix: 16))). Reset the function (VFIO_DEVICE_RESET) and retry.")
        }
    }

    /// Before a Start: SUSPEND an ACTIVE channel so its current descriptor finishes and the
    /// rest of its chain is dropped; wait until it is no longer ACTIVE.
    ///
    /// - Throws: `.timeout` when the channel stays ACTIVE past ``IOATTimeouts/quiesce``.
    func quiesceForStart(_ r: IOATChannelRegisters, channel: Int) throws(DriverError) {
        guard state(r) == .active else { return }
        command(r, .suspend)
        guard spin(for: timeouts.quiesce, { self.state(r) != .active }) else {
            throw DriverError(.timeout,
                "CBDMA channel \(channel) kept running for \(timeouts.quiesce) after SUSPEND (a very long descriptor?); Abort it, then Start.")
        }
    }

    /// Step 5: write CHANERR back (write-1-to-clear) and, below CB 3.3, config CHANERR_INT
    /// (0x180); on Tylersburg channel 0 (0x3430) also write 0x10 to DMAUNCERRSTS (0x148).
    func clearErrors(_ r: IOATChannelRegisters) throws(DriverError) {
        let e = bar.read32(r.chanerr)
        if e != 0 { bar.write32(r.chanerr, e) }
        guard let config, profile.cbver < 0x33 else { return }
        let copy = try config.readConfig32(IOAT.configCHANERR_INT)
        if copy != 0 { try config.writeConfig32(IOAT.configCHANERR_INT, copy) }
        if deviceID == 0x3430 { try config.writeConfig32(IOAT.configDMAUNCERRSTS, 0x10) }
    }

    /// Step 6: CHANCMD.RESET, then wait for bit 5 to clear; the channel must read HALTED
    /// with CHANERR = 0. Restores MSI-X on CB 3.3 and clears TBG channel 0's spurious
    /// DMAUNCERRSTS parity error.
    ///
    /// - Throws: `.timeout` when the reset bit stays set past ``IOATTimeouts/reset``;
    ///   `.selfTestFailed` when the channel is not HALTED or CHANERR is set afterwards.
    func resetAndWait(_ r: IOATChannelRegisters, channel: Int) throws(DriverError) {
        command(r, .reset)
        let done = spin(for: timeouts.reset) { self.bar.read8(r.chancmd) & IOAT.ChanCmd.reset.rawValue == 0 }
        guard done else {
            throw DriverError(.timeout,
                "CBDMA channel \(channel) did not finish its reset within \(timeouts.reset) (CHANCMD bit 5 still set). Reset the function (VFIO_DEVICE_RESET) or power-cycle the host.")
        }
        try restoreInterruptsAfterReset()
        if deviceID == 0x3430, let config {
            // TBG channel 0 reports a spurious config parity error after a restart (ioat.md §7.2).
            try config.writeConfig32(IOAT.configDMAUNCERRSTS, 0x10)
        }
        let s = state(r)
        let e = chanErr(r)
        guard s == .halted, e == 0 else {
            throw DriverError(.selfTestFailed,
                "CBDMA channel \(channel) reads \(s.map(\.description) ?? "an invalid state") with CHANERR 0x\(String(e, radix: 16)) after reset; expected HALTED with no error (\(IOAT.ChanErr(rawValue: e))).")
        }
    }

    /// Remembers how the vectors are routed, so a reset that wipes the MSI-X table can
    /// restore them.
    func setInterruptRoutes(_ routing: (any InterruptRouting)?, eventFDs: [Int32]) {
        routes.withLock { $0 = (routing, eventFDs) }
    }

    /// On CB 3.3 parts (Atom C2000, Xeon D-1500) a channel reset wipes the MSI-X table
    /// (ioat.md §7.5): disable and re-enable the vectors so the host rewrites it. Elsewhere
    /// nothing.
    func restoreInterruptsAfterReset() throws(DriverError) {
        guard profile.resetClobbersMSIX else { return }
        let (routing, fds) = routes.withLock { $0 }
        guard let routing, !fds.isEmpty else { return }
        try routing.disableInterrupts()
        try routing.routeInterrupts(start: 0, eventFDs: fds)
    }

    /// Steps 3–6 for one channel: stale ownership, quiesce, clear errors, reset.
    func fullReset(_ r: IOATChannelRegisters, channel: Int) throws(DriverError) {
        clearStaleOwnership(r)
        try quiesce(r, channel: channel)
        try clearErrors(r)
        try resetAndWait(r, channel: channel)
    }

    /// DPDK's in-place recovery of a halted channel (CB 3.4, ioat.md §6.3): clear CHANERR,
    /// RESET without waiting, point the channel at `chainAddress`, program CHANCTRL and
    /// CHANCMP, and wait for CHANSTS to read exactly ARMED. False when it did not arm.
    func recoverInPlace(_ r: IOATChannelRegisters, chainAddress: UInt64, control: UInt16, completion: UInt64) -> Bool {
        let e = chanErr(r)
        if e != 0 { bar.write32(r.chanerr, e) }
        command(r, .reset)
        writeWide(r.chainaddr, chainAddress)
        bar.write16(r.chanctrl, control)
        writeWide(r.chancmp, completion)
        return spin(for: timeouts.recovery) { self.readChanSts(r) == UInt64(IOAT.ChannelState.armed.rawValue) }
    }

    /// Puts the function in D3hot or back in D0 through the PCI power-management capability
    /// (PMCSR bits 1:0). Nothing without config space or without the capability.
    func setPowerState(d3hot: Bool) throws(DriverError) {
        guard let config else { return }
        guard try config.readConfig32(0x04) >> 16 & 0x10 != 0 else { return }  // STATUS.CAP_LIST
        var pointer = Int(try config.readConfig32(0x34) & 0xFC)
        var hops = 0
        while pointer >= 0x40, hops < 48 {
            let header = try config.readConfig32(pointer)
            if header & 0xFF == 0x01 {  // PCI_CAP_ID_PM
                let pmcsr = try config.readConfig32(pointer + 4)
                // Keep PME_Status (bit 15, write-1-to-clear) at 0 so writing does not clear it.
                let value = (pmcsr & ~0x8003) | (d3hot ? 0x3 : 0x0)
                try config.writeConfig32(pointer + 4, value)
                return
            }
            pointer = Int(header >> 8 & 0xFC)
            hops += 1
        }
    }
}
