import CVFIO
import Hardware
import NetDMA
import Platform
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// Time limits of the DSA register sequences (dsa.md §3.2: ≥ 1 s for reset, disable and drain).
public struct DSATimeouts: Sendable, Hashable {
    /// Reset Device, Disable Device/WQ, Drain and Abort: they wait for in-flight descriptors.
    public var command: Duration
    /// Enable Device and Enable WQ.
    public var enable: Duration

    public init(command: Duration = .seconds(2), enable: Duration = .milliseconds(500)) {
        self.command = command
        self.enable = enable
    }
}

/// How the provider configures the device (dsa.md §4.2–§4.3).
public struct DSAConfiguration: Sendable, Hashable {
    /// The work-queue mode the provider programs.
    public enum WorkQueueMode: Sendable, Hashable {
        /// Dedicated WQs, submitted to with MOVDIR64B: the only mode usable under vfio-pci.
        case dedicated
        /// Shared WQs (ENQCMD): need PASID, which vfio-pci cannot give. Always refused.
        case shared
    }

    /// The NetDMA version to declare (2.0 by default; 1.0/1.1 for NULL-terminated chains).
    public var version: NetDMAVersion
    /// Work-queue mode; only ``WorkQueueMode/dedicated`` works.
    public var mode: WorkQueueMode
    /// How many WQs (NetDMA channels) to enable; nil: every WQ in WQCAP (DPDK's choice).
    public var workQueues: Int?
    /// Entries per WQ; nil: WQCAP's total divided evenly (DPDK's choice).
    public var workQueueSize: Int?
    /// The most NetDMA descriptors one batch descriptor carries; 1 turns batching off.
    /// Capped by GENCAP's maximum batch size.
    public var maximumBatch: Int
    /// The smallest run of ready descriptors sent as a batch; shorter runs go one by one.
    /// (GAP in dsa.md §5.3: the hardware minimum may be 2; DML refuses fewer than 4.)
    public var minimumBatch: Int
    /// log2 of the largest transfer per descriptor (WQCFG.max_xfer_shift); nil: GENCAP's.
    public var maximumTransferShift: Int?
    /// The friendly name; nil: "Intel DSA <version> (<platform>)".
    public var friendlyName: String?
    /// CPUs local to the device, preferred for the interrupt/DPC CPU.
    public var localCPUs: CPUSet?
    /// Time limits of the register sequences.
    public var timeouts: DSATimeouts
    /// Idle passes the completion poller spins before it sleeps.
    public var pollerSpins: Int

    public init(version: NetDMAVersion = .v2_0, mode: WorkQueueMode = .dedicated, workQueues: Int? = nil,
                workQueueSize: Int? = nil, maximumBatch: Int = 64, minimumBatch: Int = 2,
                maximumTransferShift: Int? = nil, friendlyName: String? = nil, localCPUs: CPUSet? = nil,
                timeouts: DSATimeouts = .init(), pollerSpins: Int = 2000) {
        self.version = version
        self.mode = mode
        self.workQueues = workQueues
        self.workQueueSize = workQueueSize
        self.maximumBatch = maximumBatch
        self.minimumBatch = minimumBatch
        self.maximumTransferShift = maximumTransferShift
        self.friendlyName = friendlyName
        self.localCPUs = localCPUs
        self.timeouts = timeouts
        self.pollerSpins = pollerSpins
    }
}

/// What the bring-up chose (printed by `netdma probe`).
public struct DSALayout: Sendable, Hashable, CustomStringConvertible {
    /// VERSION (0x100, 0x200).
    public var version: UInt32
    /// Groups used; each has exactly one engine (DPDK: "avoid reordering").
    public var groups: Int
    /// Enabled dedicated WQs (= NetDMA channels).
    public var workQueues: Int
    /// Entries per WQ: the most descriptors (batches count one) in flight per channel.
    public var workQueueSize: Int
    /// log2 of the WQ's maximum transfer (WQ `i` is in group `i % groups`).
    public var maximumTransferShift: Int
    /// log2 of the WQ's maximum batch.
    public var maximumBatchShift: Int
    /// Whether batch descriptors are used.
    public var batching: Bool
    /// Whether fill (opcode 0x04) is available.
    public var fill: Bool

    public init(version: UInt32, groups: Int, workQueues: Int, workQueueSize: Int, maximumTransferShift: Int,
                maximumBatchShift: Int, batching: Bool, fill: Bool) {
        self.version = version
        self.groups = groups
        self.workQueues = workQueues
        self.workQueueSize = workQueueSize
        self.maximumTransferShift = maximumTransferShift
        self.maximumBatchShift = maximumBatchShift
        self.batching = batching
        self.fill = fill
    }

    public var description: String {
        "DSA 0x\(String(version, radix: 16)): \(workQueues) dedicated WQs × \(workQueueSize) entries in \(groups) groups (1 engine each), max transfer 2^\(maximumTransferShift), max batch 2^\(maximumBatchShift)\(batching ? "" : " (batching off)")\(fill ? ", fill" : "")"
    }
}

/// One DSA PCI function: BAR0 registers, BAR2 portals, the command interface and the
/// DPDK-style bring-up (dsa.md §3–§4). Shared by the provider and its channels.
public final class DSADevice<BAR: RegisterIO & ~Copyable, Portals: PortalIO & ~Copyable>: @unchecked Sendable {
    // @unchecked: BAR and portal accesses are volatile MMIO (or a model's atomics); the
    // command interface is serialised by `commandLock`; the rest is immutable after init.

    /// BAR0: the registers.
    public let bar: BAR
    /// BAR2: the portals.
    public let portals: Portals
    /// Configuration space (COMMAND), when the caller gave it.
    public let config: (any PCIConfigAccess)?
    /// Time limits.
    public let timeouts: DSATimeouts
    /// VERSION.
    public let version: UInt32
    /// GENCAP.
    public let genCap: DSA.GenCap
    /// WQCAP.
    public let wqCap: DSA.WQCap
    /// GRPCAP.
    public let grpCap: DSA.GrpCap
    /// ENGCAP bits 7:0.
    public let engineCount: Int
    /// OPCAP words 0–3.
    public let opcap: [UInt64]
    /// TABLE_OFFSET.
    public let tables: DSA.TableOffset
    private let commandLock = Mutex<Void>(())

    /// Reads the identity and capability registers and checks that this driver can run the
    /// device: a known VERSION, configurable tables, dedicated WQs, memory move and no-op.
    ///
    /// - Throws: `.unsupported` with what to do.
    init(bar: consuming BAR, portals: consuming Portals, config: (any PCIConfigAccess)?, timeouts: DSATimeouts,
         mode: DSAConfiguration.WorkQueueMode) throws(DriverError) {
        let version = bar.read32(DSA.VERSION)
        let genCap = DSA.GenCap(rawValue: bar.read64(DSA.GENCAP))
        let wqCap = DSA.WQCap(rawValue: bar.read64(DSA.WQCAP))
        let grpCap = DSA.GrpCap(rawValue: bar.read64(DSA.GRPCAP))
        let engines = Int(bar.read64(DSA.ENGCAP) & 0xFF)
        let opcap = (0..<4).map { bar.read64(DSA.OPCAP + 8 * $0) }
        let tables = DSA.TableOffset(low: bar.read64(DSA.TABLE_OFFSET), high: bar.read64(DSA.TABLE_OFFSET + 8))
        if version == 0xFFFF_FFFF {
            throw DriverError(.notFound,
                "DSA BAR0 reads all-ones: the function is not decoding memory (powered down, removed, or PCI COMMAND.Memory is 0). Give the provider config-space access so it can set COMMAND, or check the device with lspci and bind it to vfio-pci again.")
        }
        guard version == 0x100 || version == 0x200 else {
            throw DriverError(.unsupported,
                "DSA VERSION 0x\(String(version, radix: 16)) is not one this driver knows (0x100 DSA 1.0, 0x200 DSA 2.0); use the kernel idxd driver for it.")
        }
        if mode == .shared {
            throw DriverError(.unsupported,
                "Shared work queues need PASID: WQCFG.PASID-enable, the PCIe PASID capability and an SVA binding of the submitter's address space (ENQCMD), none of which vfio-pci gives a userspace driver (dsa.md §7.2). Use dedicated WQs (the default), or the kernel idxd driver for shared WQs.")
        }
        guard genCap.configurable else {
            throw DriverError(.unsupported,
                "This DSA's GRPCFG/WQCFG tables are read-only (GENCAP bit 31 = 0: preset by firmware or a VMM), and this driver configures the device itself. Use the kernel idxd driver, or a function whose configuration is writable.")
        }
        guard wqCap.dedicatedMode else {
            throw DriverError(.unsupported,
                "This DSA has no dedicated work queues (WQCAP bit 49 = 0); shared WQs need PASID, which vfio-pci cannot give. Use the kernel idxd driver.")
        }
        guard wqCap.count >= 1, wqCap.totalSize >= 1, grpCap.count >= 1, engines >= 1 else {
            throw DriverError(.unsupported,
                "This DSA reports \(wqCap.count) WQs, \(wqCap.totalSize) WQ entries, \(grpCap.count) groups and \(engines) engines; it needs at least one of each. It may be disabled by Intel On Demand.")
        }
        func has(_ op: UInt8) -> Bool { opcap[Int(op) / 64] & (1 << UInt64(op % 64)) != 0 }
        guard has(DSA.Opcode.memmove), has(DSA.Opcode.noop) else {
            throw DriverError(.unsupported,
                "This DSA's OPCAP (0x\(String(opcap[0], radix: 16))) lacks memory move (0x03) or no-op (0x00), which NetDMA copies and NULL transfers need.")
        }
        guard portals.length >= wqCap.count * DSA.portalWindowSize else {
            throw DriverError(.invalidArgument,
                "BAR2 is \(portals.length) bytes but \(wqCap.count) WQs need \(wqCap.count * DSA.portalWindowSize) (16 KiB each); map all of VFIO region 2.")
        }
        self.bar = bar
        self.portals = portals
        self.config = config
        self.timeouts = timeouts
        self.version = version
        self.genCap = genCap
        self.wqCap = wqCap
        self.grpCap = grpCap
        self.engineCount = engines
        self.opcap = opcap
        self.tables = tables
    }

    /// Whether OPCAP advertises `opcode`.
    public func supports(opcode: UInt8) -> Bool { opcap[Int(opcode) / 64] & (1 << UInt64(opcode % 64)) != 0 }

    /// GENSTS bits 1:0.
    public var state: DSA.DeviceState { DSA.DeviceState(rawValue: bar.read32(DSA.GENSTS) & 3)! }

    /// GENSTS bits 3:2: the reset needed to leave Halt.
    public var resetType: DSA.ResetType { DSA.ResetType(rawValue: (bar.read32(DSA.GENSTS) >> 2) & 3)! }

    /// The byte offset of WQ `wq`'s WQCFG dword `d`.
    func wqcfg(_ wq: Int, _ d: Int) -> Int { tables.wqcfg + wq * wqCap.configStride + d * 4 }
    /// The byte offset of group `g`'s GRPCFG field at `field`.
    func grpcfg(_ g: Int, _ field: Int) -> Int { tables.grpcfg + g * DSA.GrpCfg.stride + field }

    /// WQCFG dword 6 bits 31:30.
    public func workQueueState(_ wq: Int) -> DSA.WQState? { DSA.WQCfg.state(bar.read32(wqcfg(wq, DSA.WQCfg.status))) }

    // MARK: - Commands (CMD/CMDSTS, dsa.md §3.2)

    /// Runs `command` through CMD/CMDSTS: waits for CMDSTS.active to clear, writes CMD as
    /// one 32-bit store, polls CMDSTS until active clears, and returns the error byte.
    /// Serialised across threads. Blocks (spins, then yields) for at most `timeout`.
    ///
    /// - Throws: `.timeout` when CMDSTS stays active (with GENSTS and SWERR decoded).
    @discardableResult
    public func command(_ command: DSA.Command, operand: UInt32 = 0, timeout: Duration? = nil) throws(DriverError) -> DSA.CommandError {
        let limit = timeout ?? timeouts.command
        return try commandLock.withLock { _ throws(DriverError) -> DSA.CommandError in
            guard spin(for: limit, { self.bar.read32(DSA.CMDSTS) & DSA.CmdSts.active == 0 }) else {
                throw DriverError(.timeout,
                    "DSA CMDSTS stayed active for \(limit) before \(command) could be written (\(diagnostics())); reset the function (VFIO_DEVICE_RESET) and bring the provider up again.")
            }
            bar.write32(DSA.CMD, DSA.Cmd.encode(command, operand: operand))
            var sts: UInt32 = 0
            guard spin(for: limit, {
                sts = self.bar.read32(DSA.CMDSTS)
                return sts & DSA.CmdSts.active == 0
            }) else {
                throw DriverError(.timeout,
                    "DSA command \(command) did not complete within \(limit) (\(diagnostics())); an engine may be stuck on a long descriptor. Reset the function (VFIO_DEVICE_RESET) and bring the provider up again.")
            }
            return DSA.CommandError(rawValue: UInt8(truncatingIfNeeded: sts & DSA.CmdSts.errorMask))
        }
    }

    /// Runs `command` and throws when CMDSTS reports an error other than the `tolerated` ones.
    func run(_ command: DSA.Command, operand: UInt32 = 0, timeout: Duration? = nil,
             tolerated: [DSA.CommandError] = [], context: String) throws(DriverError) {
        let e = try self.command(command, operand: operand, timeout: timeout)
        guard e != .success, !tolerated.contains(e) else { return }
        throw commandFailure(command, e, context: context)
    }

    /// A ``DriverError`` for a CMDSTS error, naming the code and what to do about it.
    public func commandFailure(_ command: DSA.Command, _ error: DSA.CommandError, context: String) -> DriverError {
        DriverError(.deviceError,
            "DSA \(command) failed during \(context): CMDSTS \(error). \(Self.remedy(error, wqCap: wqCap)) (\(diagnostics()))")
    }

    /// What to do about a CMDSTS error code (dsa.md §3.3).
    public static func remedy(_ e: DSA.CommandError, wqCap: DSA.WQCap) -> String {
        switch e.rawValue {
        case 0x01: return "The device does not implement this command (see CMDCAP); this driver does not support the part."
        case 0x02: return "The WQ index is beyond WQCAP's \(wqCap.count) WQs; configure fewer work queues."
        case 0x03: return "The device is halted or hit a hardware error: read GENSTS.reset_type — software: Reset Device and bring up again; FLR: VFIO_DEVICE_RESET (unbind and rebind vfio-pci); warm/cold: reboot."
        case 0x04: return "A reserved command bit was set; this is a driver bug."
        case 0x10: return "The device was already enabled (left so by a previous owner); reset it (Reset Device or VFIO_DEVICE_RESET) first."
        case 0x11: return "The device refused the configuration; reset the function and bring it up again."
        case 0x12: return "PCI Bus Master Enable is 0: set bit 2 of the COMMAND register (config 0x04), e.g. by giving the provider config-space access."
        case 0x13: return "PASID/PRS settings are inconsistent; keep PASID off under vfio-pci."
        case 0x14: return "The WQ sizes add up to more than WQCAP's \(wqCap.totalSize) entries; choose smaller work queues."
        case 0x15, 0x16, 0x17: return "Every group with WQs needs an engine, and each WQ and engine may be in one group only; this is a driver bug or stale configuration: reset the device."
        case 0x18: return "GRPFLAGS read-buffer settings exceed GRPCAP's read buffers; reset the device."
        case 0x20: return "Enable the device before its WQs."
        case 0x21: return "The WQ was already enabled (a previous owner); reset the device first."
        case 0x22: return "The WQ size is 0; give every enabled WQ at least one entry."
        case 0x23: return "The WQ priority is 0; use 1–15."
        case 0x24: return "The WQ mode is not supported (WQCAP bits 48–49); only dedicated WQs work under vfio-pci."
        case 0x25: return "Block on fault needs page requests (PRS), which vfio-pci cannot give; leave it off."
        case 0x26: return "Shared WQs and PASID need the PCIe PASID capability and SVA, which vfio-pci cannot give; use dedicated WQs with PASID off."
        case 0x27: return "WQCFG max batch shift exceeds GENCAP's; use a smaller batch limit."
        case 0x28: return "WQCFG max transfer shift exceeds GENCAP's; use a smaller transfer limit."
        case 0x2A: return "Privileged WQs need PASID privileged mode; leave it off under vfio-pci."
        case 0x2B: return "The occupancy interrupt handle is invalid; leave occupancy interrupts off."
        case 0x2C: return "The ATS setting does not match WQCAP; leave ATS as reset."
        case 0x31: return "The device was not enabled."
        case 0x32: return "The WQ is not enabled (disabled by a reset or a halt): bring the provider up again."
        case 0x41, 0x42: return "Interrupt handles are unavailable; use MSI-X vector numbers (SPR)."
        default: return "Unknown error code; reset the function."
        }
    }

    /// GENSTS and SWERR, decoded, for error messages.
    public func diagnostics() -> String {
        let sts = bar.read32(DSA.GENSTS)
        let state = ["disabled", "enabled", "draining", "halted"][Int(sts & 3)]
        var s = "GENSTS 0x\(String(sts, radix: 16)) \(state)"
        if sts & 3 == 3 { s += " (reset type \(resetType))" }
        if let e = softwareError() { s += "; \(e)" }
        return s
    }

    // MARK: - SWERR (dsa.md §2.9)

    /// SWERR decoded, or nil when its Valid bit is clear.
    public func softwareError() -> String? {
        let w0 = bar.read64(DSA.SWERR)
        guard w0 & DSA.SWErr.valid != 0 else { return nil }
        let code = DSA.SWErr.error(w0)
        var s = "SWERR: \(Self.softwareErrorName(code))"
        if w0 & DSA.SWErr.wqIndexValid != 0 { s += " on WQ \(DSA.SWErr.wqIndex(w0))" }
        if w0 & DSA.SWErr.descriptorValid != 0 { s += ", opcode 0x\(String(DSA.SWErr.opcode(w0), radix: 16))" }
        if w0 & DSA.SWErr.batch != 0 { s += ", batch member \(bar.read64(DSA.SWERR + 8) & 0xFFFF)" }
        let fault = bar.read64(DSA.SWERR + 16)
        if fault != 0 { s += ", address 0x\(String(fault, radix: 16))" }
        if w0 & DSA.SWErr.overflow != 0 { s += " (and more errors: overflow)" }
        return s
    }

    /// The name of a SWERR error code: a completion status or one of the non-descriptor codes.
    public static func softwareErrorName(_ code: UInt8) -> String {
        switch code {
        case DSA.SoftwareErrorCode.pciConfig: return "PCI configuration error (0x51, e.g. Bus Master cleared while enabled)"
        case DSA.SoftwareErrorCode.commandWhileActive: return "CMD written while a command was active (0x52)"
        case DSA.SoftwareErrorCode.wqFull: return "descriptor dropped: dedicated WQ full (0x53)"
        case DSA.SoftwareErrorCode.wqNotEnabled: return "descriptor dropped: WQ not enabled (0x54)"
        default: return DSA.CompletionStatus(rawValue: code).description
        }
    }

    /// Acknowledges SWERR (writes Valid|Overflow, as Linux does) and returns what it held.
    @discardableResult
    public func acknowledgeSoftwareError() -> String? {
        let e = softwareError()
        if e != nil { bar.write32(DSA.SWERR, UInt32(DSA.SWErr.valid | DSA.SWErr.overflow)) }
        return e
    }

    // MARK: - Bring-up (dsa.md §4)

    /// Sets PCI COMMAND Memory Space and Bus Master (and INTx disable with MSI-X).
    static func enableBusMaster(_ config: (any PCIConfigAccess)?, interrupts: Bool) throws(DriverError) {
        guard let config else { return }
        let cmd = try config.readConfig32(0x04) & 0xFFFF
        var want: UInt32 = 0x6
        if interrupts { want |= 0x400 }
        if cmd & want != want { try config.writeConfig32(0x04, cmd | want) }
    }

    /// Reset Device from any state a previous owner left (enabled, halted with a software
    /// reset type), then checks that the device is Disabled and idle, and clears SWERR and
    /// INTCAUSE.
    ///
    /// - Throws: `.deviceError` when the device is halted and needs an FLR or a platform
    ///   reset, or the reset fails; `.timeout`.
    func reset() throws(DriverError) {
        if state == .halted && resetType != .software {
            throw DriverError(.deviceError,
                "The DSA is halted and needs \(resetType == .flr ? "a function-level reset: VFIO_DEVICE_RESET (or unbind and rebind vfio-pci)" : "a \(resetType) reset of the platform") before Reset Device can work (\(diagnostics())).")
        }
        try run(.resetDevice, context: "bring-up")
        guard state == .disabled else {
            throw DriverError(.deviceError,
                "After Reset Device the DSA is not disabled (\(diagnostics())); it needs an FLR (VFIO_DEVICE_RESET).")
        }
        acknowledgeSoftwareError()
        let cause = bar.read32(DSA.INTCAUSE)
        if cause != 0 { bar.write32(DSA.INTCAUSE, cause) }
    }

    /// DPDK's configuration (dsa.md §4.2 steps 5–8): every group and WQ cleared, one engine
    /// per group (TC-A = TC-B = 1), `wqs` dedicated WQs of `size` entries, priority 1, WQ *i* in
    /// group *i* mod groups; then Enable Device and Enable WQ for each, SWERR checked.
    func configure(wqs: Int, size: Int, transferShift: Int, batchShift: Int) throws(DriverError) -> Int {
        let groups = min(grpCap.count, engineCount)
        for g in 0..<grpCap.count {
            for w in 0..<4 { bar.write64(grpcfg(g, DSA.GrpCfg.wqs + 8 * w), 0) }
            bar.write64(grpcfg(g, DSA.GrpCfg.engines), g < groups ? 1 << UInt64(g) : 0)
            bar.write64(grpcfg(g, DSA.GrpCfg.flags), version <= 0x200 ? DSA.GrpCfg.trafficClassOne : 0)
        }
        var members = [UInt64](repeating: 0, count: groups)
        for wq in 0..<wqCap.count {
            bar.write32(wqcfg(wq, DSA.WQCfg.size), wq < wqs ? UInt32(size) : 0)
            guard wq < wqs else { continue }
            bar.write32(wqcfg(wq, DSA.WQCfg.mode), DSA.WQCfg.dedicatedMode(priority: 1))
            bar.write32(wqcfg(wq, DSA.WQCfg.limits), DSA.WQCfg.limits(maxTransferShift: transferShift, maxBatchShift: batchShift))
            members[wq % groups] |= 1 << UInt64(wq % 64)
        }
        for g in 0..<groups where members[g] != 0 { bar.write64(grpcfg(g, DSA.GrpCfg.wqs), members[g]) }

        try run(.enableDevice, timeout: timeouts.enable, context: "bring-up (Enable Device)")
        guard state == .enabled else {
            throw DriverError(.deviceError, "Enable Device reported success but the DSA is not enabled (\(diagnostics())); reset the function.")
        }
        for wq in 0..<wqs {
            try run(.enableWQ, operand: UInt32(wq), timeout: timeouts.enable, context: "bring-up (Enable WQ \(wq))")
            guard workQueueState(wq) == .enabled else {
                throw DriverError(.deviceError, "Enable WQ \(wq) reported success but WQCFG shows it not enabled (\(diagnostics())); reset the function.")
            }
        }
        if let e = acknowledgeSoftwareError() {
            throw DriverError(.deviceError, "The DSA logged a software error during bring-up: \(e). Reset the function and try again.")
        }
        return groups
    }

    /// The error for `call` on a halted device, saying how to recover.
    func haltedError(_ call: String) -> DriverError {
        DriverError(.deviceError,
            "\(call) refused: the DSA is halted (\(diagnostics())). \(resetType == .software ? "Call recover() on the provider (Reset Device and bring-up)" : resetType == .flr ? "Reset the function (VFIO_DEVICE_RESET), then call recover() on the provider" : "The platform needs a \(resetType) reset"), then Start the channel again.")
    }

    /// Spins, then yields, until `condition` holds or `limit` passes.
    func spin(for limit: Duration, _ condition: () -> Bool) -> Bool {
        for _ in 0..<1000 {
            if condition() { return true }
            cvfio_pause()
        }
        let deadline = ContinuousClock.now + limit
        while true {
            if condition() { return true }
            if ContinuousClock.now >= deadline { return condition() }
            sched_yield()
        }
    }
}
