import CVFIO
import Hardware
import NetDMA
import Platform
import Synchronization

/// One CBDMA channel as a NetDMA channel (`ProviderChannelContext` and its callbacks).
///
/// How each NetDMA call maps onto the channel registers (ioat.md §3):
///
/// | NetDMA | CB 2.x/3.x (DMACOUNT) | CB 1.x |
/// |---|---|---|
/// | Start | SUSPEND if ACTIVE; CHAINADDR; DMACOUNT = count | SUSPEND if ACTIVE; CHAINADDR; CHANCMD.START |
/// | Append, 2.0 chain | DMACOUNT += count | — (1.x only) |
/// | Append, 1.x chain | DMACOUNT += count, or CHAINADDR at the new chain when the engine stopped on the old tail | CHANCMD.APPEND |
/// | Suspend | CHANCMD.SUSPEND, wait for SUSPENDED, read CHANSTS | same |
/// | Resume | CHAINADDR at the last processed descriptor's `next`; DMACOUNT = what is left | same; CHANCMD.START |
/// | Abort | CHANCMD.ABORT, wait for HALTED (else RESET) | same |
/// | Reset, Free | CHANCMD.RESET, wait | same |
///
/// A halt with an error is recovered by the next Start: in place on CB 3.4 (DPDK's sequence),
/// with a full reset below.
///
/// One halt is hidden instead (``hidesFetchedZeroLength``): on CB 1.x a NetDMA 1.x client links
/// the old tail to a zero-length or NULL descriptor before Append can conform it, the engine
/// may follow that link at once and halts with DXSERR. With an interrupt vector the ISR
/// conforms the descriptor and restarts the engine on it (see ``serviceInterrupt(signals:)``),
/// so it completes as NetDMA requires.
///
/// Calls on one channel are serialised by the NetDMA interface (one client per channel);
/// ``serviceInterrupt()``, ``rearmInterrupt()`` and ``fault`` may run concurrently with them
/// on the interrupt thread and read only registers and the completion word, except for the
/// ISR's halt handling (``hidesFetchedZeroLength``), which takes the halt lock that the
/// control calls (not Append) hold around their register sequences.
public final class IOATChannel<BAR: RegisterIO & ~Copyable>: ProviderChannel, @unchecked Sendable {
    // @unchecked: the plain `var`s below are touched only by the NetDMA calls, which the
    // interface serialises per channel; what the interrupt thread reads is immutable or atomic.

    /// The channel index within the function (channel registers at BAR0 + 0x80·(index+1)).
    public let index: Int
    /// The function the channel belongs to.
    public let device: IOATDevice<BAR>
    /// The eventfd its MSI-X vector signals, if interrupts are routed.
    public let interruptEventFD: Int32?
    /// Whether chains are counted (NetDMA 2.0) rather than NULL-terminated (1.x).
    public let countedChains: Bool

    @usableFromInline let regs: IOATChannelRegisters
    private let eventFD: EventFD?

    /// CB 1.x (no DMACOUNT) with NetDMA 1.x chains and an interrupt vector: the provider hides
    /// a DXSERR halt on a descriptor that moves no data (fetched through the old tail's `next`
    /// before Append could conform it). CHANCTRL then has no ERR_COMPLETION_EN, so such a
    /// halt does not write the completion word; the provider writes the Halted word of every
    /// other error halt itself, before it reports it.
    public let hidesFetchedZeroLength: Bool
    /// Serialises the halt handling of the ISR (hidden halts, the Halted word) with the
    /// control calls (Start, Suspend, Resume, Abort, Reset, Free, power), which take it around
    /// their register sequences. Append does not take it.
    private let haltLock = Mutex<Void>(())
    /// Hidden halts a control call handled before the ISR did: their error interrupts, when
    /// the ISR takes them, are the provider's.
    private let owedErrorInterrupts = Atomic<Int>(0)

    private let rearmCount = Atomic<Int>(0)
    private let inPlaceRecoveries = Atomic<Int>(0)
    private let resetRecoveries = Atomic<Int>(0)

    /// How many error halts a Start recovered: in place (CB 3.4, DPDK's sequence) and by a
    /// full reset (older parts, or when the in-place sequence did not arm the channel).
    public var recoveries: (inPlace: Int, byReset: Int) {
        (inPlaceRecoveries.load(ordering: .relaxed), resetRecoveries.load(ordering: .relaxed))
    }

    let allocation = Atomic<Bool>(false)
    /// False from PowerDown until PowerUp reprogrammed the channel: the function may be in
    /// D3hot, where registers read all-ones, so nothing reads them (interrupt thread included).
    private let powered = Atomic<Bool>(true)
    /// The decoded CHANERR of the last error halt, kept from the moment it is first seen until
    /// the client's Start or Reset: a power cycle (whose reset clears CHANERR) or a register
    /// read in D3hot must not lose or garble the cause.
    private let latchedFault = Mutex<LatchedFault>(LatchedFault())
    private struct LatchedFault {
        var fault: ChannelFault?
        /// Bumped by every clear: a fault read from CHANERR before a clear is never kept after it.
        var epoch: UInt64 = 0
    }
    private func clearFault() { latchedFault.withLock { $0.fault = nil; $0.epoch &+= 1 } }

    /// Whether the channel is allocated to a client.
    public var allocated: Bool { allocation.load(ordering: .acquiring) }
    /// The completion word's CPU address (0 while free); the interrupt thread reads it.
    private let completionAddress = Atomic<UInt>(0)
    /// The completion word's IOVA.
    private var completionIOVA: UInt64 = 0
    /// CHANCTRL while running, without the priority: error abort, error completion (unless
    /// ``hidesFetchedZeroLength``), and with an interrupt vector INT_REARM and ERR_INT_EN.
    private let baseControl: UInt16
    /// CHANCTRL while running: ``baseControl`` plus the allocation's priority (bits 15:12);
    /// atomic because the DPC writes it to re-arm.
    private let control = Atomic<UInt16>(0)
    @inline(__always) var runControl: UInt16 { control.load(ordering: .relaxed) }

    // The hot-path state below is @exclusivity(unchecked): being @usableFromInline, it would
    // otherwise get a dynamic exclusivity check (swift_beginAccess) on every Append. One client
    // submits to a channel at a time (NetDMA's rule), so accesses never overlap.

    /// The running DMACOUNT value since the last CHAINADDR write.
    @exclusivity(unchecked) @usableFromInline var count: UInt16 = 0
    /// The first descriptor of the chain given to the last CHAINADDR write (atomic: the
    /// interrupt thread reads it when it decodes a fault).
    private let head = Atomic<UInt64>(0)
    private var chainHead: UInt64 {
        get { head.load(ordering: .relaxed) }
        set { head.store(newValue, ordering: .relaxed) }
    }
    /// Set after a reset: CHANCTRL and CHANCMP must be programmed before the next CHAINADDR.
    private var needsProgramming = true
    /// The IOVA of the last submitted descriptor (the chain's tail).
    private var tail: UInt64 = 0
    /// A one-region IOVA → CPU address cache for walking chains without a lock.
    private var walkCache = DMARegionCache()
    /// NetDMA 1.0 after a power cycle: the next Append fails with `.contextLost` once.
    @exclusivity(unchecked) @usableFromInline var contextLost = false
    /// Set while the client has the channel suspended.
    @exclusivity(unchecked) @usableFromInline var suspended = false
    /// The IOVA Suspend returned (the last descriptor processed; 0 if none).
    private var suspendedAt: UInt64 = 0
    /// A Resume found nothing after the last processed descriptor; the engine is parked there
    /// and the next Append points it at the new chain.
    @exclusivity(unchecked) @usableFromInline var parked = false

    init(index: Int, device: IOATDevice<BAR>, eventFD: consuming EventFD?, countedChains: Bool) {
        self.index = index
        self.device = device
        self.regs = device.registers[index]
        self.countedChains = countedChains
        hidesFetchedZeroLength = eventFD != nil && !device.hasDMACount && !countedChains
        var control: IOAT.ChanCtrl = hidesFetchedZeroLength ? [.anyErrAbortEnable] : [.anyErrAbortEnable, .errCompletionEnable]
        switch consume eventFD {
        case .some(let fd):
            interruptEventFD = fd.rawValue
            self.eventFD = consume fd
            control.formUnion([.intRearm, .errIntEnable])
        case .none:
            interruptEventFD = nil
            self.eventFD = nil
        }
        baseControl = control.rawValue
        self.control.store(control.rawValue, ordering: .relaxed)
    }

    // MARK: - Allocation (provider)

    /// Claims the channel for a client and points it at `parameters`' completion word. The
    /// NetDMA channel priority goes to CHANCTRL bits 15:12 (clamped to 0…15, the "CB spec"
    /// field NetDMA's `ChannelPriority` names).
    func activate(_ parameters: ChannelParameters) {
        let priority = UInt16(min(max(parameters.priority, 0), 15))
        control.store(baseControl | priority << 12, ordering: .relaxed)
        completionIOVA = parameters.completionIOVA
        completionAddress.store(UInt(bitPattern: parameters.completionAddress), ordering: .releasing)
        count = 0
        chainHead = 0
        suspended = false
        program()
    }

    /// CHANCTRL = run value, then CHANCMP (ioat.md §6.8 steps 8–9).
    private func program() {
        device.bar.write16(regs.chanctrl, runControl)
        device.writeWide(regs.chancmp, completionIOVA)
        needsProgramming = false
    }

    // MARK: - NetDMA callbacks

    /// `ProviderStartDma`: makes `chain` the channel's chain.
    ///
    /// A running engine is first suspended, so the current descriptor finishes and the rest
    /// of the old chain is dropped. A channel halted by an error is recovered first (CB 3.4 in
    /// place, else a full reset). Then CHAINADDR = `chain.iova` and DMACOUNT = `chain.count`
    /// (1.x chains on CB ≥ 2: their length up to NULL; CB 1.x: CHANCMD.START). Spins (bounded
    /// by the quiesce and reset timeouts), never sleeps; the reset path of a recovery may make
    /// config-space and interrupt-routing calls.
    ///
    /// - Throws: `.invalidArgument` when a chain has more than 65535 descriptors (DMACOUNT is
    ///   16 bits); `.timeout` when the engine does not stop or reset in time.
    public func start(_ chain: DescriptorChain) throws(DriverError) {
        try haltLock.withLock { _ throws(DriverError) in
            settleHiddenHalt()
            try startHoldingLock(chain)
        }
    }

    private func startHoldingLock(_ chain: DescriptorChain) throws(DriverError) {
        guard chain.count >= 0, chain.count <= Int(UInt16.max) else {
            throw DriverError(.invalidArgument,
                "A CBDMA chain holds at most 65535 descriptors (DMACOUNT is 16 bits); got \(chain.count).")
        }
        contextLost = false
        parked = false
        try device.quiesceForStart(regs, channel: index)
        let n = prepare(chain)
        if device.state(regs) == .halted && device.chanErr(regs) != 0 {
            if device.profile.recoversFromHalt,
               device.recoverInPlace(regs, chainAddress: chain.iova, control: runControl, completion: completionIOVA) {
                chainHead = chain.iova
                needsProgramming = false
                inPlaceRecoveries.add(1, ordering: .relaxed)
                clearFault()
                ring(n, restarted: true)
                return
            }
            try device.fullReset(regs, channel: index)
            needsProgramming = true
            resetRecoveries.add(1, ordering: .relaxed)
        }
        if needsProgramming { program() }
        // The old chain's fault is history now (a fault of this chain, latched after this,
        // is read from CHANERR again).
        clearFault()
        point(at: chain.iova)
        ring(n, restarted: true)
    }

    /// Walks `chain` before the engine may fetch it, remembers its last descriptor (``tail``)
    /// and returns how many descriptors to put on DMACOUNT: `chain.count` for counted chains;
    /// for a NULL-terminated chain on CB ≥ 2 (where `chain.count` is only informational) the
    /// length up to NULL.
    ///
    /// On the way it makes every descriptor that NetDMA allows but the engine would halt on
    /// into one the engine accepts (see ``conformNoData(_:size:control:)``): zero-length
    /// transfers, NULL transfers whose size or flags CBDMA checks, and dest_dca. One 8-byte load per
    /// descriptor, cached.
    @inline(__always)
    private func prepare(_ chain: DescriptorChain) -> Int {
        if countedChains {
            tail = countedTail(chain)
            return chain.count
        }
        let w = walk(from: chain.iova, first: UnsafeMutableRawPointer(chain.address), limit: nil)
        tail = w.tail
        return device.hasDMACount ? w.count : chain.count
    }

    /// A counted chain's last descriptor (``walk(from:first:limit:)`` with `limit: chain.count`,
    /// conforming on the way), for the common layout: descriptors one after the other (a
    /// ring or a pool), followed with two loads and three compares each. At the first `next`
    /// that leads elsewhere the rest of the chain is left to the general walk.
    @inline(__always)
    private func countedTail(_ chain: DescriptorChain) -> UInt64 {
        var p = UnsafeMutableRawPointer(chain.address)
        var iova = chain.iova
        guard chain.count > 0 else { return iova }
        // Where the chain ends if it is contiguous (while it is, the IOVA counts descriptors).
        let last = chain.iova &+ UInt64(truncatingIfNeeded: chain.count &- 1) &* 64
        while true {
            conformIfNeeded(p)
            if iova == last { return iova }
            let next = p.load(fromByteOffset: IOAT.DescriptorField.next, as: UInt64.self)
            iova &+= 64
            p += 64
            if _slowPath(next != iova) {
                return tail(after: iova &- 64, next: next, left: Int(truncatingIfNeeded: (last &- iova) >> 6) &+ 1)
            }
        }
    }

    /// ``countedTail(_:)`` at a `next` that is not the adjacent descriptor: NULL ends the
    /// chain early (as in the walk); anything else is walked (translated, a misaligned one
    /// counted and never read).
    @inline(never)
    private func tail(after iova: UInt64, next: UInt64, left: Int) -> UInt64 {
        next == 0 ? iova : walk(from: next, first: nil, limit: left).tail
    }

    /// Follows `next` from the descriptor at `iova` (CPU address `first`, or translated):
    /// `limit` descriptors, or until NULL (at most 65535) without one. Fixes zero-size NULL
    /// descriptors (see ``prepare(_:)``). Returns how many it saw and the last one.
    private func walk(from iova: UInt64, first: UnsafeMutableRawPointer?, limit: Int?) -> (count: Int, tail: UInt64) {
        var iova = iova
        var d = first ?? hostAddress(ofDescriptor: iova)
        let max = limit ?? Int(UInt16.max)
        var n = 0
        while n < max, let p = d {
            n += 1
            conformIfNeeded(p)
            if n == max { break }
            let next = p.load(fromByteOffset: IOAT.DescriptorField.next, as: UInt64.self)
            if next == 0 { break }
            if next & 63 != 0 {
                // A misaligned `next` (a client bug): never read through it; count it, so the
                // engine fetches it and halts with DERR, and the client learns of it.
                n += 1
                iova = next
                break
            }
            d = next == iova &+ 64 ? p + 64 : hostAddress(ofDescriptor: next)
            iova = next
        }
        return (Swift.max(n, 1), iova)
    }

    /// Control bits that make a descriptor one ``conformNoData(_:size:control:)`` rewrites: the
    /// NULL bit, and dest_dca, which NetDMA's DESTINATION_DCA_ENABLE (the same bit) sets but a
    /// provider without DCA must ignore (ioat.md §2.2: never set it).
    static var conformedControl: UInt32 { IOAT.DescriptorControl.null | IOAT.DescriptorControl.destinationDCA }

    /// Conforms the descriptor at `p` if it needs it (TransferSize 0, or a bit of
    /// ``conformedControl``): see ``conformNoData(_:size:control:)``. One 8-byte load
    /// (TransferSize, bits 31:0, and ControlFlags, 63:32) and one branch; the rewrite itself is
    /// out of line.
    @inline(__always)
    private func conformIfNeeded(_ p: UnsafeMutableRawPointer) {
        let head = p.load(fromByteOffset: IOAT.DescriptorField.size, as: UInt64.self)
        // TransferSize with the conformed control bits above it: 1…2^32−1 for a descriptor left
        // as it is. Less one, that is below 2^32; a size of 0 wraps and any of those bits stays
        // above, so one shift tells both cases apart from the common one.
        let sizeAndConformed = head & (UInt64(Self.conformedControl) << 32 | 0xFFFF_FFFF)
        if _slowPath((sizeAndConformed &- 1) >> 32 != 0) {
            conformNoData(p, size: UInt32(truncatingIfNeeded: head), control: UInt32(truncatingIfNeeded: head >> 32))
        }
    }

    /// Rewrites a descriptor that moves no data into the NULL descriptor CBDMA accepts, keeping
    /// what NetDMA asks of it (status update, interrupt, fence, snoop hints); of one that moves
    /// data, only clears dest_dca (the provider declares no DCA, so the flag is ignored).
    ///
    /// NetDMA allows a transfer of TransferSize 0 (it completes, writes nothing and still
    /// does its STATUS and INTERRUPT; netdma.md §9.1) and lets the engine ignore the size and
    /// addresses of a NULL transfer. CBDMA checks them: size 0 or above 2^XFERCAP halts the
    /// channel with DXSERR on every generation (the CB 3.0 NULL erratum, ioat.md §4.4, §7.1),
    /// page-break bits on a part without page break and a fill on a part without block fill
    /// halt it with DCERR. So such a descriptor becomes op COPY with the null bit, size 1 (what
    /// Linux writes) and no page break, as SPDK turns zero-length copies into NULL descriptors.
    /// The engine then moves nothing and reads no address. A descriptor that moves data is
    /// never rewritten: the engine reports what it cannot execute (DCERR, DXSERR) as a fault.
    /// Cold: a few descriptors of a chain at most.
    @inline(never)
    private func conformNoData(_ p: UnsafeMutableRawPointer, size: UInt32, control: UInt32) {
        if size != 0 && control & IOAT.DescriptorControl.null == 0 {
            p.storeBytes(of: control & ~IOAT.DescriptorControl.destinationDCA, toByteOffset: IOAT.DescriptorField.control, as: UInt32.self)
            return
        }
        let kept = IOAT.DescriptorControl.intEnable | IOAT.DescriptorControl.sourceSnoopDisable
            | IOAT.DescriptorControl.destinationSnoopDisable | IOAT.DescriptorControl.completionWrite
            | IOAT.DescriptorControl.fence
        let nullControl = control & kept | IOAT.DescriptorControl.null
        let nullSize: UInt32 = size == 0 || Int(size) > device.maximumTransferSize ? 1 : size
        if nullControl != control {
            p.storeBytes(of: nullControl, toByteOffset: IOAT.DescriptorField.control, as: UInt32.self)
        }
        if nullSize != size {
            p.storeBytes(of: nullSize, toByteOffset: IOAT.DescriptorField.size, as: UInt32.self)
        }
    }

    /// CHAINADDR = `iova`: the engine's count restarts at 0 (ARMED).
    private func point(at iova: UInt64) {
        device.writeWide(regs.chainaddr, iova)
        chainHead = iova
    }

    /// Sets the doorbell after a CHAINADDR write (`restarted`) or adds `n` descriptors.
    @inline(__always)
    private func ring(_ n: Int, restarted: Bool) {
        suspended = false
        parked = false
        if device.hasDMACount {
            count = restarted ? UInt16(truncatingIfNeeded: n) : count &+ UInt16(truncatingIfNeeded: n)
            guard n > 0 else { return }
            cvfio_io_wmb()
            device.bar.write16(regs.dmacount, count)
        } else {
            cvfio_io_wmb()
            device.command(regs, restarted ? .start : .append)
        }
    }

    /// `ProviderAppendDma`: adds `chain` after the last submitted descriptor.
    ///
    /// 2.0: DMACOUNT += `chain.count`. 1.x: the old tail's `next` already points at `chain`;
    /// CB 1.x gets CHANCMD.APPEND (the engine re-reads the tail); CB ≥ 2 adds the count, or,
    /// when the engine already stopped on the tail (DONE), points CHAINADDR at `chain`, which
    /// is what re-reading the tail yields. When the engine is executing the old tail (CDAR)
    /// it may hold the `next` it read before the client linked `chain`: Append waits for that
    /// one descriptor, then re-points. While suspended only the count grows; Resume
    /// continues through it. Hot path: one pass over the new descriptors (see ``prepare(_:)``)
    /// and one register write; no lock, no allocation, no system call.
    ///
    /// - Throws: `.invalidArgument` for more than 65535 descriptors; `.contextLost` (NetDMA 1.0,
    ///   once after a power cycle); `.timeout` when a 1.x engine stays on the old tail.
    public func append(_ chain: DescriptorChain) throws(DriverError) {
        guard chain.count >= 0, chain.count <= Int(UInt16.max) else { throw Self.tooMany(chain.count) }
        if contextLost { throw lostContext() }
        if suspended {
            let n = prepare(chain)
            if device.hasDMACount && countedChains { count &+= UInt16(truncatingIfNeeded: n) }
            return
        }
        if parked {
            // Resume found nothing after the last processed descriptor; this chain follows it.
            let n = prepare(chain)
            point(at: chain.iova)
            ring(n, restarted: true)
            return
        }
        if countedChains {
            ring(prepare(chain), restarted: false)
            return
        }
        // NULL-terminated (1.x) chains: tail re-read semantics.
        guard device.hasDMACount else {
            ring(prepare(chain), restarted: false)  // CHANCMD.APPEND: the engine re-reads the tail
            return
        }
        let oldTail = tail
        let n = prepare(chain)
        var state = device.state(regs)
        if state == .active && device.readWide(regs.cdar) & IOAT.ChanSts.completedDescriptorMask == oldTail {
            // The engine is on the old tail and may have read its `next` before the client
            // linked this chain: let it finish (it stops there: the count ends with it).
            guard device.spin(for: device.timeouts.quiesce, { self.device.state(self.regs) != .active }) else {
                throw DriverError(.timeout,
                    "CBDMA channel \(index) stayed on descriptor 0x\(String(oldTail, radix: 16)) for \(device.timeouts.quiesce); Abort it and Start again.")
            }
            state = device.state(regs)
        }
        if state == .done {
            // Stopped on the old tail: what re-reading it yields is this chain.
            point(at: chain.iova)
            ring(n, restarted: true)
        } else {
            ring(n, restarted: false)
        }
    }

    /// Translates a descriptor IOVA through a one-region cache, so walking chains inside one
    /// DMA buffer takes no lock (a miss looks the region up in ``IOATDevice/memory``). Nil for
    /// an address that is not 64-byte aligned (a client's bad `next`: never read through it).
    private func hostAddress(ofDescriptor iova: UInt64) -> UnsafeMutableRawPointer? {
        guard iova & 63 == 0 else { return nil }
        return walkCache.address(ofIOVA: iova, length: 64, in: device.memory)
    }

    @inline(never)
    private func lostContext() -> DriverError {
        contextLost = false
        return DriverError(.contextLost,
            "CBDMA channel \(index) lost its chain position in a power cycle; Start it again (a NULL descriptor re-seeds it).")
    }

    @inline(never)
    static func tooMany(_ n: Int) -> DriverError {
        DriverError(.invalidArgument, "A CBDMA chain holds at most 65535 descriptors (DMACOUNT is 16 bits); got \(n).")
    }

    /// `ProviderSuspendDma`: CHANCMD.SUSPEND; waits (spinning, bounded by the quiesce timeout)
    /// until the engine has finished its current descriptor and reads SUSPENDED, writes
    /// Suspend status to the completion word and returns the IOVA of the last descriptor
    /// processed (CHANSTS bits 63:6; 0 if none since the chain was loaded).
    ///
    /// - Throws: `.timeout` when the engine does not stop; `.channelHalted` when it halted
    ///   with an error instead.
    public func suspend() throws(DriverError) -> UInt64 {
        try haltLock.withLock { _ throws(DriverError) -> UInt64 in
            settleHiddenHalt()
            return try suspendHoldingLock()
        }
    }

    private func suspendHoldingLock() throws(DriverError) -> UInt64 {
        var stopped = false
        // Twice at most: a hidden halt that came before SUSPEND took effect is handled (the
        // engine runs the conformed descriptor), then SUSPEND again.
        for _ in 0..<2 {
            device.command(regs, .suspend)
            stopped = device.spin(for: device.timeouts.quiesce) {
                let s = self.device.state(self.regs)
                return s == .suspended || s == .halted
            }
            guard stopped, settleHiddenHalt() else { break }
        }
        let sts = device.readChanSts(regs)
        guard stopped else {
            throw DriverError(.timeout,
                "CBDMA channel \(index) did not suspend within \(device.timeouts.quiesce) (CHANSTS 0x\(String(sts, radix: 16))); Abort or Reset it.")
        }
        if sts & IOAT.ChanSts.stateMask == UInt64(IOAT.ChannelState.halted.rawValue), let f = fault {
            writeHaltWord()
            throw DriverError(.channelHalted, "CBDMA channel \(index) halted before it could suspend: \(f). Start it again.")
        }
        let last = sts & IOAT.ChanSts.completedDescriptorMask
        storeCompletion(CompletionWord(descriptor: last, status: .suspend))
        suspended = true
        suspendedAt = last
        return last
    }

    /// `ProviderResumeDma`: continue at the first unprocessed descriptor, re-reading the last
    /// processed descriptor's `next` (which the client may have edited while suspended).
    ///
    /// The provider reads that `next` itself and points CHAINADDR there, with DMACOUNT = the
    /// descriptors from it up to the last one submitted (2.0: found by walking to the chain's
    /// tail, so inserted or removed descriptors count; 1.x: up to NULL; CB 1.x: CHANCMD.START).
    /// Only documented register behaviour is used (CHAINADDR from SUSPENDED, as the Linux VFIO
    /// selftest driver does after every suspend). The completion word is not written. When nothing is left the channel stays
    /// parked and the next Append points it at its chain. If an edited 2.0 chain no longer
    /// reaches its tail, the engine is told CHANCMD.RESUME with its own count instead.
    ///
    /// - Throws: `.channelHalted` when the channel halted with an error while suspended;
    ///   `.unmappedAddress` when the last processed descriptor is not in the provider's DMA memory.
    public func resume() throws(DriverError) {
        try haltLock.withLock { _ throws(DriverError) in
            settleHiddenHalt()
            try resumeHoldingLock()
        }
    }

    private func resumeHoldingLock() throws(DriverError) {
        if let f = fault {
            writeHaltWord()
            throw DriverError(.channelHalted, "CBDMA channel \(index) is halted (\(f)); Start it instead of resuming.")
        }
        // The completion word keeps Suspend's status until a STATUS descriptor completes
        // (NetDMA §7.1 names its writers: STATUS descriptors, Suspend, Abort, Reset).
        let last = suspendedAt
        suspended = false
        var first = chainHead
        if last != 0 {
            guard let d = hostAddress(ofDescriptor: last) else {
                throw DriverError(.unmappedAddress,
                    "Descriptor 0x\(String(last, radix: 16)) is not in the provider's DMA memory; allocate chains from the provider's dmaMemory.")
            }
            first = d.load(fromByteOffset: IOAT.DescriptorField.next, as: UInt64.self)
        }
        if countedChains {
            if last != 0 && last == tail {
                parked = true  // everything submitted ran; `first` heads the next Append
                return
            }
            guard let n = stepsToTail(from: first) else {
                cvfio_io_wmb()
                device.bar.write16(regs.dmacount, count)
                device.command(regs, .resume)
                return
            }
            point(at: first)
            ring(n, restarted: true)
            return
        }
        guard first != 0 else {
            parked = true
            return
        }
        let w = walk(from: first, first: nil, limit: nil)
        tail = w.tail
        point(at: first)
        ring(device.hasDMACount ? w.count : 0, restarted: true)
    }

    /// How many descriptors from `first` up to and including ``tail`` (nil when `next` never
    /// reaches it within 65535).
    private func stepsToTail(from first: UInt64) -> Int? {
        var iova = first
        var n = 1
        while true {
            guard let d = hostAddress(ofDescriptor: iova) else { return nil }
            conformIfNeeded(d)  // the client may have edited the chain while suspended
            if iova == tail { return n }
            guard n < Int(UInt16.max) else { return nil }
            iova = d.load(fromByteOffset: IOAT.DescriptorField.next, as: UInt64.self)
            n += 1
        }
    }

    /// `ProviderAbortDma`: CHANCMD.ABORT stops the engine (the current copy may be partial)
    /// and abandons the rest; the completion word then reads Halted with the last descriptor
    /// processed (CHANSTS). An engine that does not halt within the quiesce timeout is reset
    /// (CHANCMD.RESET). A device error already latched in CHANERR stays visible in ``fault``
    /// until the next Start. Spins, never sleeps.
    ///
    /// - Throws: `.timeout` when the reset does not complete.
    public func abort() throws(DriverError) {
        try haltLock.withLock { _ throws(DriverError) in
            settleHiddenHalt()
            try abortHoldingLock()
        }
    }

    private func abortHoldingLock() throws(DriverError) {
        suspended = false
        parked = false
        device.command(regs, .abort)
        let halted = device.spin(for: device.timeouts.quiesce) { self.device.state(self.regs) == .halted }
        let last: UInt64
        if halted {
            last = device.readChanSts(regs) & IOAT.ChanSts.completedDescriptorMask
            if hiddenHalt() != nil {
                // The engine halted on a descriptor that moves no data before ABORT took effect:
                // that is no fault of the client's (its error interrupt is the provider's).
                try device.clearErrors(regs)
                clearFault()
                owedErrorInterrupts.add(1, ordering: .relaxed)
            }
        } else {
            try device.clearErrors(regs)
            try device.resetAndWait(regs, channel: index)
            needsProgramming = true
            let w = loadCompletion()
            last = w.status == .armed ? 0 : w.descriptor
        }
        storeCompletion(CompletionWord(descriptor: last, status: .halted))
    }

    /// `ProviderResetChannel`: Abort, then forget every submitted descriptor: the channel is
    /// as it was after allocation (HALTED, pointed at the completion word, count 0).
    public func reset() throws(DriverError) {
        try haltLock.withLock { _ throws(DriverError) in
            settleHiddenHalt()
            try resetHoldingLock()
        }
    }

    private func resetHoldingLock() throws(DriverError) {
        try abortHoldingLock()
        try device.clearErrors(regs)
        try device.resetAndWait(regs, channel: index)
        count = 0
        chainHead = 0
        tail = 0
        suspendedAt = 0
        clearFault()
        program()
    }

    /// `ProviderFreeDmaChannel`: resets the channel, turns its interrupt and completion
    /// writes off, and returns it to the provider.
    public func free() {
        haltLock.withLock { _ in freeHoldingLock() }
    }

    private func freeHoldingLock() {
        owedErrorInterrupts.store(0, ordering: .relaxed)
        suspended = false
        parked = false
        try? device.fullReset(regs, channel: index)
        device.bar.write16(regs.chanctrl, 0)
        device.writeWide(regs.chancmp, 0)
        needsProgramming = true
        completionAddress.store(0, ordering: .releasing)
        completionIOVA = 0
        count = 0
        chainHead = 0
        clearFault()
        allocation.store(false, ordering: .releasing)
    }

    // MARK: - Power

    /// Before D3: latch an error halt's cause (the reset clears CHANERR), stop register reads
    /// by other threads, then stop the engine (quiesce, reset).
    func powerDown() throws(DriverError) {
        try haltLock.withLock { _ throws(DriverError) in
            settleHiddenHalt()
            try powerDownHoldingLock()
        }
    }

    private func powerDownHoldingLock() throws(DriverError) {
        _ = fault
        powered.store(false, ordering: .sequentiallyConsistent)
        suspended = false
        try device.fullReset(regs, channel: index)
        needsProgramming = true
    }

    /// After D0: reset again and, when allocated, point the channel at its client's completion
    /// word; `contextLost` makes a 1.0 client's next Append fail so it re-Starts.
    func powerUp(contextLost: Bool) throws(DriverError) {
        try haltLock.withLock { _ throws(DriverError) in
            try powerUpHoldingLock(contextLost: contextLost)
        }
    }

    private func powerUpHoldingLock(contextLost: Bool) throws(DriverError) {
        try device.fullReset(regs, channel: index)
        count = 0
        if allocated {
            program()
            self.contextLost = contextLost
        }
        powered.store(true, ordering: .releasing)
    }

    // MARK: - Interrupts

    /// The ISR for one interrupt: ``serviceInterrupt(signals:)`` with a count of 1.
    public func serviceInterrupt() -> InterruptReport { serviceInterrupt(signals: 1) }

    /// The ISR: reads CHANSTS and CHANERR and reports the last completed descriptor (CHANSTS
    /// bits 63:6, whether or not it asked for a status write; 0 when nothing completed since
    /// the chain was loaded), or a decoded fault when the channel halted with an error. Below
    /// CB 3.3 CHANSTS is read as two tear-safe halves (high, low, high again).
    /// Reading the eventfd is the interface's job (`signals` is what it counted). No allocation
    /// unless there is a fault.
    ///
    /// With ``hidesFetchedZeroLength``, a halt is first handled here (cold, under the halt
    /// lock): a hidden one (see ``handleHiddenHalt(at:)``) takes one of the `signals`, its
    /// error interrupt, and when that was all, the report is ``InterruptReport/handled`` (no
    /// DPC); any other error halt gets its Halted word (what ERR_COMPLETION_EN would write)
    /// before it is reported. The reset of a hidden halt may make config-space and
    /// interrupt-routing calls.
    public func serviceInterrupt(signals: UInt64) -> InterruptReport {
        guard powered.load(ordering: .acquiring) else {
            return InterruptReport(lastCompleted: 0, fault: latchedFault.withLock { $0.fault })
        }
        let sts = device.readChanSts(regs)
        let state = sts & IOAT.ChanSts.stateMask
        if hidesFetchedZeroLength,
           state == UInt64(IOAT.ChannelState.halted.rawValue) || owedErrorInterrupts.load(ordering: .relaxed) > 0,
           serviceOwnInterrupt(signals: signals) {
            return .handled
        }
        if state == UInt64(IOAT.ChannelState.halted.rawValue), let f = fault {
            return InterruptReport(lastCompleted: 0, fault: f)
        }
        return InterruptReport(lastCompleted: sts & IOAT.ChanSts.completedDescriptorMask)
    }

    /// The halt handling of the ISR (``hidesFetchedZeroLength``): true when every one of
    /// `signals` was the error interrupt of a hidden halt. Otherwise the caller reports from
    /// the CHANSTS it read before (what completed up to the halt, or the fault).
    @inline(never)
    private func serviceOwnInterrupt(signals: UInt64) -> Bool {
        haltLock.withLock { _ in
            guard powered.load(ordering: .acquiring) else { return false }
            var own: UInt64 = 0
            if settleHiddenHalt() || owedErrorInterrupts.load(ordering: .relaxed) > 0 {
                owedErrorInterrupts.subtract(1, ordering: .relaxed)
                own = 1
            }
            if own >= max(signals, 1) { return true }
            writeHaltWord()
            return false
        }
    }

    /// The descriptor of a halt the provider hides, if the channel is in one: HALTED with
    /// CHANERR exactly DXSERR on a descriptor that moves no data (zero-length copy or fill,
    /// NULL), on a channel that ``hidesFetchedZeroLength``.
    private func hiddenHalt() -> UInt64? {
        guard hidesFetchedZeroLength, device.state(regs) == .halted,
              device.chanErr(regs) == IOAT.ChanErr.transferSize.rawValue,
              let failing = failingDescriptor(), movesNoData(failing) else { return nil }
        return failing
    }

    /// Handles a hidden halt if the channel is in one (caller holds the halt lock); true when
    /// it did, and then one error interrupt is owed to the provider (the ISR takes it).
    @discardableResult
    private func settleHiddenHalt() -> Bool {
        guard let failing = hiddenHalt() else { return false }
        handleHiddenHalt(at: failing)
        owedErrorInterrupts.add(1, ordering: .relaxed)
        return true
    }

    /// Completes the descriptor a hidden halt stopped on as NetDMA requires (netdma.md §9.1):
    /// makes it the NULL of TransferSize 1 that Append would have made it (see
    /// ``conformNoData(_:size:control:)``), resets the channel the way a Start recovers a
    /// halted CB 1.x channel (clear CHANERR, RESET, CHANCTRL with INT_REARM, CHANCMP), and
    /// STARTs it at that descriptor. The engine then writes its STATUS (Active or Idle, as
    /// for any descriptor), raises its INTERRUPT, and follows its `next`, or stops on it, so
    /// that the client's APPEND re-reads it. A reset that fails leaves the channel halted with
    /// that cause as its fault.
    private func handleHiddenHalt(at failing: UInt64) {
        if let d = device.memory.address(ofIOVA: failing) {
            let head = d.load(fromByteOffset: IOAT.DescriptorField.size, as: UInt64.self)
            conformNoData(d, size: UInt32(truncatingIfNeeded: head), control: UInt32(truncatingIfNeeded: head >> 32))
        }
        do {
            try device.fullReset(regs, channel: index)
        } catch {
            needsProgramming = true
            let f = ChannelFault(rawValue: UInt64(IOAT.ChanErr.transferSize.rawValue),
                                 causes: ["the reset after a zero-length descriptor's DXSERR failed: \(error.message)"],
                                 descriptor: failing)
            latchedFault.withLock { $0.fault = f }
            storeCompletion(CompletionWord(descriptor: device.readChanSts(regs) & IOAT.ChanSts.completedDescriptorMask, status: .halted))
            return
        }
        program()
        clearFault()
        cvfio_io_wmb()
        point(at: failing)
        device.command(regs, .start)
    }

    /// What ERR_COMPLETION_EN does, for a channel whose CHANCTRL lacks it
    /// (``hidesFetchedZeroLength``): while the channel is halted with an error, writes the
    /// Halted word naming the last good descriptor (CHANSTS; 0 when none since the chain was
    /// loaded). Not on a completion address error (the engine could not write it either).
    /// Caller holds the halt lock, so a Start that cleared the error comes before or after.
    private func writeHaltWord() {
        guard hidesFetchedZeroLength else { return }
        let sts = device.readChanSts(regs)
        let e = device.chanErr(regs)
        guard sts & IOAT.ChanSts.stateMask == UInt64(IOAT.ChannelState.halted.rawValue), e != 0,
              e & IOAT.ChanErr.completionAddress.rawValue == 0 else { return }
        storeCompletion(CompletionWord(descriptor: sts & IOAT.ChanSts.completedDescriptorMask, status: .halted))
    }

    /// Re-arms the channel interrupt: CHANCTRL with INT_REARM (the run value).
    public func rearmInterrupt() {
        guard powered.load(ordering: .acquiring) else { return }
        device.bar.write16(regs.chanctrl, runControl)
        rearmCount.add(1, ordering: .relaxed)
    }

    /// How many times ``rearmInterrupt()`` re-armed the channel (the DPC does, once per interrupt).
    public var interruptRearms: Int { rearmCount.load(ordering: .relaxed) }

    /// The decoded CHANERR when the channel is HALTED with an error, with the failing
    /// descriptor (the one after the last completed, or the chain head when none completed).
    ///
    /// Once seen, the fault is kept until the client's Start or Reset, also across a power
    /// cycle; while the function is powered down only the kept fault is reported.
    public var fault: ChannelFault? {
        let (kept, epoch) = latchedFault.withLock { ($0.fault, $0.epoch) }
        if let kept { return kept }
        guard powered.load(ordering: .acquiring) else { return latchedFault.withLock { $0.fault } }
        let e = device.bar.read32(regs.chanerr)
        guard e != 0 else {
            // CHANERR may read 0 because PowerDown's reset cleared it after this thread saw
            // the function powered: PowerDown latched the fault before that reset.
            return latchedFault.withLock { $0.epoch == epoch ? $0.fault : nil }
        }
        let err = IOAT.ChanErr(rawValue: e)
        let failing = failingDescriptor()
        var causes = err.causes
        if err.contains(.transferSize), let failing, movesNoData(failing) {
            causes.append(Self.fetchedBeforeAppend)
        }
        let f = ChannelFault(rawValue: UInt64(e), causes: causes, descriptor: failing)
        // Only a fault read while still powered is kept (a read racing PowerDown's D3 entry
        // would see all-ones).
        // (PowerDown kept the fault before it stopped register reads: report that one.)
        guard powered.load(ordering: .acquiring) else { return latchedFault.withLock { $0.fault } }
        latchedFault.withLock { if $0.epoch == epoch && $0.fault == nil { $0.fault = f } }
        return f
    }

    /// Whether the descriptor at `iova` is a zero-length or NULL transfer (``prepare(_:)``
    /// conforms these, so one that halted with DXSERR was fetched before the provider saw it).
    /// Read under the DMA memory table's lock, as ``failingDescriptor()`` reads: the fault
    /// report may run on another thread while the client frees the chain.
    private func movesNoData(_ iova: UInt64) -> Bool {
        guard iova & 63 == 0,
              let head = device.memory.loadUInt64(atIOVA: iova &+ UInt64(IOAT.DescriptorField.size)) else { return false }
        return UInt32(truncatingIfNeeded: head) == 0 || UInt32(truncatingIfNeeded: head >> 32) & IOAT.DescriptorControl.null != 0
    }

    /// The cause a DXSERR on a descriptor that moves no data adds: the one case the provider
    /// cannot conform it. CB 1.x (no DMACOUNT) follows `next` as soon as the client links the
    /// old tail, which NetDMA 1.x has it do before Append.
    static var fetchedBeforeAppend: String {
        "the descriptor moves no data: the engine fetched it through the old tail's next before Append could make it a NULL of TransferSize 1 (CB 1.x follows next at once); link zero-length and NULL descriptors to a running chain as NULL_TRANSFER with TransferSize 1, then Start at it"
    }

    /// The descriptor a halt stopped on: CDAR when the engine reports it, else the `next` of
    /// the last completed descriptor (CHANSTS, which a halt leaves there; or the chain head
    /// when nothing completed).
    private func failingDescriptor() -> UInt64? {
        let cdar = device.readWide(regs.cdar) & IOAT.ChanSts.completedDescriptorMask
        if cdar != 0 { return cdar }
        let last = device.readChanSts(regs) & IOAT.ChanSts.completedDescriptorMask
        if last == 0 { return chainHead == 0 ? nil : chainHead }
        // Read under the DMA memory table's lock: the client may be freeing the descriptors.
        guard last & 63 == 0 else { return nil }
        return device.memory.loadUInt64(atIOVA: last &+ UInt64(IOAT.DescriptorField.next))
    }

    // MARK: - Completion word

    @inline(__always)
    private func loadCompletion() -> CompletionWord {
        let a = completionAddress.load(ordering: .acquiring)
        guard let p = UnsafeMutablePointer<Atomic<UInt64>>(bitPattern: a) else { return CompletionWord(rawValue: 0) }
        return CompletionWord(rawValue: p.pointee.load(ordering: .acquiring))
    }

    private func storeCompletion(_ w: CompletionWord) {
        let a = completionAddress.load(ordering: .acquiring)
        guard let p = UnsafeMutablePointer<Atomic<UInt64>>(bitPattern: a) else { return }
        p.pointee.store(w.rawValue, ordering: .releasing)
    }
}
