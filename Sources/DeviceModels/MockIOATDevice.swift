import CVFIO
import Hardware
import Platform
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// A register-level model of one Intel CBDMA (I/OAT) PCI function, for machines without the engine.
///
/// The driver drives it exactly as it drives the real BAR: ``bar0`` is a ``RegisterIO`` over
/// the function's BAR0 (device registers at 0x00–0x7F, channel *n* at 0x80·(n+1), the MSI-X
/// table and PBA where the profile puts them), ``config`` a ``RegisterIO`` over its 4 KiB
/// configuration space (COMMAND, the MSI-X and PM capabilities, DMAUNCERRSTS 0x148, CHANERR_INT
/// 0x180, CHANERRMSK_INT 0x184). Every memory access the engine makes — descriptor fetch,
/// source read, destination write, completion write — goes through ``iommu``; the driver maps
/// its memory there (`DMAMemory(spaces: [iommu])`). Interrupts are MSI-X vectors, one per
/// channel, routed to eventfds through ``InterruptRouting`` as VFIO_DEVICE_SET_IRQS would.
///
/// Behaviour follows `reference/ioat.md` §2–§7 and §9:
///
/// - **Power-on**: every channel HALTED, CHANSTS address 0; COMMAND = Memory (as vfio-pci
///   leaves it), bus mastering off: nothing runs until the driver sets COMMAND.BusMaster
///   (the channel stays ACTIVE without progress, a stall, until it does).
/// - **RESET** (CHANCMD 0x20): count 0, HALTED, CHANSTS address 0; CHANCTRL, CHAINADDR,
///   CHANCMP, DMACOUNT and the interrupt arm cleared; CHANERR kept. CHANCMD bit 5 reads 1 for
///   ``Options/resetReads`` reads (or until ``Options/resetMicroseconds`` pass, whichever is
///   first). On a running channel the reset applies after the current descriptor.
/// - **CHAINADDR**: latched by a 64-bit write (3.3+) or by the high-half write of a low-then-high
///   32-bit pair; the latch sets the count to 0 and moves HALTED (after RESET), SUSPENDED, DONE
///   or ARMED to ARMED (exactly 0x4) — only with CHANERR clear. While ACTIVE it only latches.
/// - **DMACOUNT** (16-bit, cumulative): a value different from the count makes ARMED/DONE
///   ACTIVE at once; the engine follows `next` until the count equals it, then goes DONE.
/// - **Descriptors**: COPY, FILL (with DMACAPABILITY.BFILL), NULL (no memory access, size ≠ 0),
///   page-break segments at 4 KiB (with DMACAPABILITY.PB), executed in order (so `fence` holds).
///   `compl_write` stores (descriptor | state) to CHANCMP: ACTIVE if more is queued, DONE
///   otherwise (SUSPENDED or HALTED if that command is pending).
/// - **Errors** (with ANY_ERR_ABORT_EN): CHANERR bit, HALTED, CHANSTS address left at the last
///   good descriptor (0 if none since CHAINADDR), HALTED written to CHANCMP with
///   ERR_COMPLETION_EN, interrupt with ERR_INT_EN (regardless of INT_REARM). Classes: size 0 or
///   above 2^XFERCAP → DXSERR (11); misaligned `next` → DERR (3); misaligned or unmapped first
///   descriptor → CHADDERR (4); unmapped later descriptor → NDADDERR (2); unmapped source /
///   destination start, or bits 63:48 set → XSADDERR / XDADDERR (0/1); a range that leaves its
///   mapping or lacks permission → RDERR / WDERR (8/9); unmapped or misaligned completion area →
///   CMPADDERR (12); unknown opcode, FILL without BFILL, page break without PB → DCERR (10).
///   Bits masked in CHANERR_MASK are ignored (the descriptor counts as done). Without
///   ANY_ERR_ABORT_EN the error is recorded, CHANSTS.SOFT_ERR set, and the descriptor skipped.
///   Errors are copied to CHANERR_INT (config 0x180) unless masked in CHANERRMSK_INT.
/// - **Interrupts**: a descriptor with `int_en` interrupts only if the channel was armed by a
///   CHANCTRL write with INT_REARM since the last interrupt; it sets ATTNSTATUS bit *n*
///   (INTRCTRL.INT_STATUS, and INT with MASTER_INT_EN, mirror it; re-arming clears it) and
///   signals vector *n* when INTRCTRL.MSIX_VECTOR_CONTROL is set (vector 0 with only
///   MASTER_INT_EN), after INTRDELAY µs when coalescing. A masked MSI-X vector sets its PBA bit
///   and fires when unmasked; a vector whose table entry no longer holds the host's message
///   (see the 3.3 quirk) is lost.
/// - **SUSPEND** from ACTIVE (after the current descriptor), DONE or ARMED → SUSPENDED;
///   **ABORT** → HALTED without an error; **RESUME** → ACTIVE (work pending) or DONE.
/// - **Not modelled**: DCA (DCAOFFSET reads 0; leave DCA off), CRC/XOR/PQ opcodes (DCERR),
///   descriptor prefetch (DRSCTL, CHWPREFLMT and LTR are plain read-write registers).
/// - **CB 1.x**: v1 offsets (CHANSTS 0x04, CHAINADDR 0x0C, CHANCMD 0x14), no DMACOUNT; START runs
///   from CHAINADDR until a descriptor whose `next` is 0, APPEND re-reads the last `next`.
///
/// Profile quirks (``IOAT/Profile``):
///
/// - Below 3.3 a single 64-bit write to CHAINADDR or CHANCMP is **dropped** (counted in
///   ``Statistics/droppedWideWrites``): only low-then-high 32-bit halves work.
/// - Below 3.3 a single 64-bit CHANSTS read of a running (ACTIVE) channel **tears**: the low
///   half is current, the high half that of the previous completed descriptor (the state bits
///   are always current). Take addresses from the completion word.
/// - 3.3 (BWD, BDX-DE): a channel RESET wipes the MSI-X table and PBA (entries zero and
///   masked); the driver must restore them (Linux saves 0x1000, 0x1008, 0x1800) or re-route.
/// - Halt recovery: only 3.4 re-arms an error-halted channel by CHAINADDR (after CHANERR is
///   cleared) and accepts CHAINADDR while a RESET still reads back in progress (DPDK's
///   recovery). Before 3.4 an error-halted channel ignores CHAINADDR until RESET, and CHAINADDR
///   written before the RESET bit reads 0 is dropped (``Statistics/droppedChainWrites``).
/// - TBG channel 0 (0x3430): RESET sets DMAUNCERRSTS bit 4 (config 0x148).
public final class MockIOATDevice: InterruptRouting, Sendable {
    /// How the engine runs.
    public typealias Execution = ModelExecution

    /// Timing knobs.
    public struct Options: Sendable, Hashable {
        /// How many CHANCMD reads return the RESET bit after a reset.
        public var resetReads: Int
        /// How long the RESET bit reads 1 at most, in µs; 0: only `resetReads` counts.
        public var resetMicroseconds: Int
        /// How many idle passes the engine thread spins (with a pause) before it sleeps.
        public var spinIterations: Int

        public init(resetReads: Int = 2, resetMicroseconds: Int = 100, spinIterations: Int = 2000) {
            self.resetReads = resetReads
            self.resetMicroseconds = resetMicroseconds
            self.spinIterations = spinIterations
        }
    }

    /// A fault the model injects on a channel.
    public enum Fault: Sendable, Hashable {
        /// The `index`-th descriptor the channel executes from now on (0: the next) fails with
        /// `error`, as if the hardware had detected it.
        case failDescriptor(index: Int, error: IOAT.ChanErr)
        /// The `index`-th descriptor that moves data (NULL descriptors are not counted) arrives
        /// with byte `byteOffset` XORed with `mask` (silent corruption; 0 means 0xFF).
        case corruptRead(index: Int, byteOffset: Int, mask: UInt8)
        /// The channel makes no progress for `microseconds` from now (it stays ACTIVE).
        case stall(microseconds: Int)
    }

    /// Counters, for tests and diagnostics.
    public struct Statistics: Sendable, Hashable {
        /// Descriptors executed (including failed ones).
        public var descriptorsExecuted: UInt64
        /// Interrupts written to an eventfd.
        public var interruptsSignalled: UInt64
        /// Interrupts that reached no eventfd (MSI-X disabled, entry not the host's, no route).
        public var interruptsLost: UInt64
        /// Single 64-bit writes dropped by a profile that needs 32-bit halves.
        public var droppedWideWrites: UInt64
        /// CHAINADDR writes dropped because a reset was still in progress (before 3.4).
        public var droppedChainWrites: UInt64
        /// IOMMU translation faults.
        public var iommuFaults: UInt64
    }

    /// The generation modelled.
    public let profile: IOAT.Profile
    /// The address space every engine access goes through.
    public let iommu: SoftIOMMU
    /// How the engine runs.
    public let execution: Execution
    /// BAR0 (VFIO region 0).
    public let bar0: MockIOATBAR
    /// The PCI configuration space (VFIO's config region).
    public let config: MockPCIConfig
    let core: IOATDeviceCore
    private let thread: ModelEngineThread?

    /// Creates a function in its power-on state.
    ///
    /// - Parameters:
    ///   - profile: the generation (IDs, CBVER, XFERCAP, capabilities, channels, quirks).
    ///   - iommu: the address space the driver maps its memory into.
    ///   - execution: `.thread` (default) or `.manual` stepping.
    ///   - options: reset timing and idle spinning.
    public init(profile: IOAT.Profile, iommu: SoftIOMMU, execution: Execution = .thread, options: Options = Options()) {
        self.profile = profile
        self.iommu = iommu
        self.execution = execution
        core = IOATDeviceCore(profile: profile, iommu: iommu, manual: execution == .manual, options: options)
        bar0 = MockIOATBAR(core: core)
        config = MockPCIConfig(core: core)
        thread = execution == .thread ? core.startEngineThread() : nil
    }

    deinit {
        if let thread { core.stopEngineThread(thread.thread) }
    }

    /// The kernel thread ID of the engine thread (0 with manual execution).
    public var engineThreadID: Int32 { thread?.id ?? 0 }

    /// Channels behind this function (CHANCNT).
    public var channelCount: Int { core.channelCount }

    // MARK: Manual stepping

    /// Does one unit of work: applies a pending command, executes one descriptor, or lets a
    /// finished channel go DONE. Returns false when nothing could be done.
    ///
    /// - Precondition: the device was created with `execution: .manual`; no concurrent calls.
    @discardableResult
    public func step() -> Bool {
        precondition(execution == .manual, "MockIOATDevice.step() needs execution: .manual")
        precondition(!core.stepping.exchange(true, ordering: .acquiring), "MockIOATDevice.step() called concurrently")
        defer { core.stepping.store(false, ordering: .releasing) }
        return core.stepOnce()
    }

    /// Steps until no channel can make progress (waiting out injected stalls) and delivers
    /// coalesced interrupts. Returns the steps taken.
    @discardableResult
    public func runUntilIdle(maxSteps: Int = Int.max) -> Int {
        var steps = 0
        while steps < maxSteps {
            if step() { steps += 1; continue }
            let deadline = core.nextDeadline()
            if deadline == 0 { break }
            let now = monotonicNanoseconds()
            if deadline > now { usleep(UInt32(min((deadline - now) / 1000 + 1, 1_000_000))) }
        }
        return steps
    }

    /// Waits until no channel is ACTIVE (and coalesced interrupts went out), or `timeout`.
    /// In manual mode it runs the engine itself. Returns whether the device went idle.
    public func waitUntilIdle(timeout: Duration = .seconds(5)) -> Bool {
        if execution == .manual { runUntilIdle(); return !busy }
        let (s, a) = timeout.components
        let end = monotonicNanoseconds() &+ UInt64(s) &* 1_000_000_000 &+ UInt64(a / 1_000_000_000)
        while busy {
            if monotonicNanoseconds() > end { return false }
            sched_yield()
        }
        return true
    }

    private var busy: Bool {
        for c in 0..<core.channelCount {
            let v = core.channels[c].ctl.load(ordering: .acquiring)
            if Ctl.state(v) == Ctl.active || v & Ctl.busy != 0 { return true }
            if core.channels[c].deferredInterrupt.load(ordering: .relaxed) != 0 { return true }
        }
        return false
    }

    // MARK: Fault injection

    /// Injects `fault` on `channel`.
    public func inject(_ fault: Fault, channel: Int = 0) {
        guard channel >= 0, channel < core.channelCount else { return }
        let ch = core.channels + channel
        switch fault {
        case .failDescriptor(let index, let error):
            ch.pointee.failBits.store(error.rawValue, ordering: .relaxed)
            ch.pointee.failCountdown.store(max(0, index), ordering: .relaxed)
            ch.pointee.faultFlag.bitwiseOr(IOATChannelState.faultFail, ordering: .releasing)
        case .corruptRead(let index, let offset, let mask):
            ch.pointee.corruptOffset.store(offset, ordering: .relaxed)
            ch.pointee.corruptMask.store(UInt32(mask), ordering: .relaxed)
            ch.pointee.corruptCountdown.store(max(0, index), ordering: .relaxed)
            ch.pointee.faultFlag.bitwiseOr(IOATChannelState.faultCorrupt, ordering: .releasing)
        case .stall(let microseconds):
            ch.pointee.stallUntil.store(monotonicNanoseconds() &+ UInt64(max(0, microseconds)) &* 1000, ordering: .relaxed)
            ch.pointee.faultFlag.bitwiseOr(IOATChannelState.faultStall, ordering: .releasing)
            core.wake()
        }
    }

    /// Power loss: every BAR0 register returns to its power-on value (channels HALTED, CHANERR
    /// and the interrupt state cleared) and work in flight is dropped. With
    /// `loseConfiguration`, the configuration space (COMMAND = 0: BAR0 reads all ones) and
    /// the MSI-X table are lost too; otherwise they survive, as when vfio-pci restores them.
    /// Returns once the engine has stopped touching memory.
    public func injectPowerLoss(loseConfiguration: Bool = false) {
        core.requestPowerLoss(kind: loseConfiguration ? 2 : 1)
    }

    /// Counters since creation.
    public var statistics: Statistics {
        var executed: UInt64 = 0
        for c in 0..<core.channelCount { executed &+= core.channels[c].executed.load(ordering: .relaxed) }
        return Statistics(descriptorsExecuted: executed,
                          interruptsSignalled: core.interruptsSignalled.load(ordering: .relaxed),
                          interruptsLost: core.interruptsLost.load(ordering: .relaxed),
                          droppedWideWrites: core.droppedWideWrites.load(ordering: .relaxed),
                          droppedChainWrites: core.droppedChainWrites.load(ordering: .relaxed),
                          iommuFaults: iommu.faults)
    }

    // MARK: InterruptRouting (VFIO_DEVICE_SET_IRQS, MSI-X)

    /// One MSI-X vector per channel.
    public var interruptVectorCount: Int { core.vectorCount }

    /// Routes vector `start + i` to `eventFDs[i]` (-1 detaches it), enabling MSI-X and
    /// programming the vectors' table entries as the host kernel does. The model keeps its own
    /// duplicate of each eventfd, as VFIO keeps a reference.
    ///
    /// - Throws: `.invalidArgument` for vectors beyond ``interruptVectorCount`` or a bad fd.
    public func routeInterrupts(start: Int, eventFDs: [Int32]) throws(DriverError) {
        guard start >= 0, start + eventFDs.count <= core.vectorCount else {
            throw DriverError(.invalidArgument,
                "Vectors \(start)..<\(start + eventFDs.count) do not exist: this CBDMA function has \(core.vectorCount) MSI-X vector(s).")
        }
        var dups: [Int32] = []
        for fd in eventFDs {
            if fd < 0 { dups.append(-1); continue }
            let d = fcntl(fd, F_DUPFD_CLOEXEC, 0)
            guard d >= 0 else {
                for x in dups where x >= 0 { close(x) }
                throw DriverError(.invalidArgument, errno: .init(rawValue: errno), "Eventfd \(fd) is not an open file descriptor.")
            }
            dups.append(d)
        }
        core.config.setMSIXEnabled(true)
        for (i, d) in dups.enumerated() {
            let vector = start + i
            let old = core.interruptFDs[vector].exchange(d, ordering: .acquiringAndReleasing)
            if old >= 0 { core.retire(old) }
            if d >= 0 {
                let message = core.programmedMessage(vector)
                core.msix[vector * 4].store(message.addressLow, ordering: .relaxed)
                core.msix[vector * 4 + 1].store(0, ordering: .relaxed)
                core.msix[vector * 4 + 2].store(message.data, ordering: .relaxed)
                core.msix[vector * 4 + 3].store(0, ordering: .releasing)
            }
        }
        core.deliverPending()
    }

    /// Detaches every vector and disables MSI-X.
    public func disableInterrupts() throws(DriverError) {
        for vector in 0..<core.vectorCount {
            let old = core.interruptFDs[vector].exchange(-1, ordering: .acquiringAndReleasing)
            if old >= 0 { core.retire(old) }
            core.msix[vector * 4 + 3].store(IOAT.msixVectorMasked, ordering: .relaxed)
        }
        core.config.setMSIXEnabled(false)
    }
}

/// BAR0 of a ``MockIOATDevice``: a ``RegisterIO`` the provider drives exactly as a mapped BAR.
///
/// Each call is one access of its width at a byte offset; see ``MockIOATDevice`` for what the
/// registers do. Accesses outside the BAR, or with COMMAND.Memory off, read all ones and are
/// dropped, as on a PCIe bus; misaligned accesses are split over the registers they touch.
public struct MockIOATBAR: RegisterIO, Sendable {
    let core: IOATDeviceCore
    /// BAR0's size (16 KiB).
    public var length: Int { core.profile.bar0Size }
    public func read8(_ offset: Int) -> UInt8 { UInt8(truncatingIfNeeded: core.read(offset, width: 1)) }
    public func read16(_ offset: Int) -> UInt16 { UInt16(truncatingIfNeeded: core.read(offset, width: 2)) }
    public func read32(_ offset: Int) -> UInt32 { UInt32(truncatingIfNeeded: core.read(offset, width: 4)) }
    public func read64(_ offset: Int) -> UInt64 { core.read(offset, width: 8) }
    public func write8(_ offset: Int, _ value: UInt8) { core.write(offset, width: 1, UInt64(value)) }
    public func write16(_ offset: Int, _ value: UInt16) {
        // The doorbell: DMACOUNT at channel + 0x06.
        let c = (offset >> 7) - 1
        if !core.v1, offset & 0x7F == IOAT.DMACOUNT, c >= 0, c < core.channelCount, core.config.memoryDecode {
            core.doorbell(c, value)
            return
        }
        core.write(offset, width: 2, UInt64(value))
    }
    public func write32(_ offset: Int, _ value: UInt32) { core.write(offset, width: 4, UInt64(value)) }
    public func write64(_ offset: Int, _ value: UInt64) { core.write(offset, width: 8, value) }
}

/// The configuration space of a ``MockIOATDevice`` (4 KiB), as VFIO's config region.
///
/// Vendor/device ID, COMMAND (Memory, BusMaster, INTx-disable), a 64-bit BAR0, capabilities at
/// 0x40 (PCI Express), 0x80 (MSI-X: table size, table and PBA in BAR0) and 0x90 (power
/// management: PMCSR D0/D3hot; D3hot → D0 resets BAR0), DMAUNCERRSTS (0x148, write-1-to-clear),
/// CHANERR_INT (0x180, write-1-to-clear) and CHANERRMSK_INT (0x184).
public struct MockPCIConfig: RegisterIO, Sendable {
    let core: IOATDeviceCore
    public var length: Int { 4096 }
    public func read8(_ offset: Int) -> UInt8 { UInt8(truncatingIfNeeded: core.config.read(offset, width: 1)) }
    public func read16(_ offset: Int) -> UInt16 { UInt16(truncatingIfNeeded: core.config.read(offset, width: 2)) }
    public func read32(_ offset: Int) -> UInt32 { UInt32(truncatingIfNeeded: core.config.read(offset, width: 4)) }
    public func read64(_ offset: Int) -> UInt64 { core.config.read(offset, width: 8) }
    public func write8(_ offset: Int, _ value: UInt8) { core.config.write(offset, width: 1, UInt64(value)) }
    public func write16(_ offset: Int, _ value: UInt16) { core.config.write(offset, width: 2, UInt64(value)) }
    public func write32(_ offset: Int, _ value: UInt32) { core.config.write(offset, width: 4, UInt64(value)) }
    public func write64(_ offset: Int, _ value: UInt64) { core.config.write(offset, width: 8, value) }
}

extension IOATDeviceCore {
    /// Keeps a replaced eventfd dup open until the device goes away (the engine may still be
    /// writing to it).
    func retire(_ fd: Int32) { routing.withLock { $0.append(fd) } }

    /// Applies a power loss: on the engine thread (waiting for it), or at once in manual mode.
    func requestPowerLoss(kind: UInt32) {
        powerRequest.store(kind, ordering: .releasing)
        if manual { applyPowerLoss(); return }
        let seen = powerAck.load(ordering: .acquiring)
        wake()
        while powerAck.load(ordering: .acquiring) == seen && powerRequest.load(ordering: .acquiring) != 0 {
            _ = cvfio_futex_wake(futexAddress, 1)
            sched_yield()
        }
    }
}
