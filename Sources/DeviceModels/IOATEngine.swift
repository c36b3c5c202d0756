import CVFIO
import Hardware
import Platform
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// A cached IOMMU translation, valid while the IOMMU's generation is unchanged.
struct TranslationCache {
    var generation: UInt64 = 1  // odd: never a stable generation
    var iova: UInt64 = 0
    var last: UInt64 = 0
    /// The host address of `iova` (a placeholder, never used, while `generation` is odd).
    var host = UnsafeMutableRawPointer(bitPattern: 0x1000)!
    var access: UInt32 = 0
}

/// Register-map constants the engine loop uses on every descriptor, copied once per device:
/// the register map's `static let`s live in another module, and reading one from here costs an
/// accessor call each time (seen in the release build's disassembly of `execute`).
struct EngineBits {
    let sourceAddress = IOAT.ChanErr.sourceAddress.rawValue
    let destinationAddress = IOAT.ChanErr.destinationAddress.rawValue
    let readData = IOAT.ChanErr.readData.rawValue
    let writeData = IOAT.ChanErr.writeData.rawValue
    let descriptorControl = IOAT.ChanErr.descriptorControl.rawValue
    let transferSize = IOAT.ChanErr.transferSize.rawValue
    let chainAddress = IOAT.ChanErr.chainAddress.rawValue
    let descriptor = IOAT.ChanErr.descriptor.rawValue
    let nextDescriptorAddress = IOAT.ChanErr.nextDescriptorAddress.rawValue
    let read = DMAAccess.read
    let write = DMAAccess.write
    let pageBreak: Bool
    let blockFill: Bool
    /// The host CPU has AVX2 (see ``IOATDeviceCore/copy(_:_:_:)``).
    let avx2 = cvfio_cpu_avx2() != 0
    /// Control bits that keep a descriptor off the engine's fast path
    /// (``IOATDeviceCore/runCached(_:count:next:v:limit:)``): any opcode but COPY, NULL, page breaks.
    let offFastPath: UInt32 = 0xFF00_0000 | IOAT.DescriptorControl.null
        | IOAT.DescriptorControl.sourcePageBreak | IOAT.DescriptorControl.destinationPageBreak
    let completionWrite = IOAT.DescriptorControl.completionWrite
    let intEnable = IOAT.DescriptorControl.intEnable
    let completedDescriptorMask = IOAT.ChanSts.completedDescriptorMask

    init(capabilities: IOAT.DMACapability) {
        pageBreak = capabilities.contains(.pageBreak)
        blockFill = capabilities.contains(.blockFill)
    }
}

/// The engine half of the model: descriptor fetch, execution, completion writes, errors and
/// interrupts. It runs on the device's engine thread, or on the caller's thread in manual mode;
/// never on both at once.
///
/// The loop never allocates, locks, or retains: it works through raw pointers the core owns, one
/// atomic load of the channel control word per descriptor, and cached IOMMU translations.
extension IOATDeviceCore {
    static let cacheDescriptor = 0, cacheSource = 1, cacheDestination = 2, cacheCompletion = 3
    /// What a descriptor on the general path counts against a pass's budget (see ``service``).
    static let generalPathWork = 4
    /// The highest address the engine reaches (48 bits; ``resolve`` rejects any above).
    static let addressLimit: UInt64 = SoftIOMMU.addressLimit

    /// Translates `length` bytes at `iova` for `access`. Returns the host address, or nil and
    /// sets `exists` to whether any mapping contains `iova` (a data error rather than an address error).
    @inline(__always)
    func translate(_ kind: Int, _ iova: UInt64, _ length: Int, _ access: DMAAccess, exists: inout Bool) -> UnsafeMutableRawPointer? {
        let last = iova &+ UInt64(length) &- 1
        exists = false
        guard length > 0, last >= iova else { return nil }
        let generation = iommu.generation
        let c = caches + kind
        if c.pointee.generation == generation, iova >= c.pointee.iova, last <= c.pointee.last,
           c.pointee.access & access.rawValue == access.rawValue {
            return c.pointee.host + Int(truncatingIfNeeded: iova &- c.pointee.iova)
        }
        guard let m = iommu.mapping(containing: iova) else {
            _ = iommu.translate(iova, length: length, access: access)  // count the fault
            return nil
        }
        exists = true
        let mLast = m.iova &+ UInt64(m.length) &- 1
        guard last <= mLast, m.access.contains(access) else {
            _ = iommu.translate(iova, length: length, access: access)
            return nil
        }
        // Only mappings this kind of access may use are cached (each cache serves one kind), and
        // only their part below 2^48, so that a hit needs no access check and stands for
        // addresses the engine can reach (``runCached(_:count:next:v:limit:)`` relies on both).
        guard let host = UnsafeMutableRawPointer(bitPattern: m.address) else { return nil }
        fastRunState.pointee.cacheStamp &+= 1
        c.pointee = TranslationCache(generation: generation, iova: m.iova, last: min(mLast, Self.addressLimit),
                                     host: host, access: m.access.rawValue)
        return host + Int(truncatingIfNeeded: iova &- m.iova)
    }

    /// Whether DMA may run: bus master enabled and the function in D0.
    @inline(__always) var dmaAllowed: Bool { config.dmaGate.load(ordering: .acquiring) }

    // MARK: Servicing a channel

    /// Runs channel `c` for up to `budget` units of work: a descriptor on the fast path
    /// (``runCached(_:count:next:v:limit:)``, copies of at most 64 KiB) is one, one on the
    /// general path ``generalPathWork``, so that a pass of the engine thread (budget 256) is
    /// bounded in time either way. Returns the work done (plus state transitions); 0 when the
    /// channel has nothing to do or is stalled. A budget of 1 runs one descriptor (stepping).
    func service(_ c: Int, budget: Int) -> Int {
        let ch = channels + c
        var v = ch.pointee.ctl.load(ordering: .acquiring)
        guard Ctl.state(v) == Ctl.active, v & Ctl.busy == 0 else { return 0 }
        if v & Ctl.requests != 0 {
            return applyRequests(c, v, count: Ctl.count(v), next: ch.pointee.nextDescriptor.load(ordering: .relaxed)) ? 1 : 0
        }
        guard dmaAllowed else { return 0 }
        if ch.pointee.faultFlag.load(ordering: .relaxed) & IOATChannelState.faultStall != 0 {
            if monotonicNanoseconds() < ch.pointee.stallUntil.load(ordering: .relaxed) { return 0 }
            ch.pointee.faultFlag.bitwiseAnd(~IOATChannelState.faultStall, ordering: .relaxed)
        }
        var count = Ctl.count(v)
        var next = ch.pointee.nextDescriptor.load(ordering: .relaxed)
        var fresh = v & Ctl.fresh != 0
        var work = 0
        var executed: UInt64 = 0
        defer { if executed != 0 { ch.pointee.executed.wrappingAdd(executed, ordering: .relaxed) } }
        while true {
            let more = v1 ? next != 0 : count != Ctl.dmacount(v)
            // Out of budget: stop here, unless the chain is done and this is an engine-thread
            // pass (budget > 1), which goes DONE now instead of taking another pass for it.
            // (A step, budget 1, does one thing: a descriptor, or the DONE transition.)
            if work >= budget && (more || budget <= 1) { break }
            if !more {
                ch.pointee.nextDescriptor.store(next, ordering: .relaxed)
                var nv = Ctl.with(Ctl.with(v, count: count), state: Ctl.done)
                if !fresh { nv &= ~Ctl.fresh }
                if ch.pointee.ctl.compareExchange(expected: v, desired: nv, ordering: .acquiringAndReleasing).exchanged {
                    return work + 1
                }
                v = stableControl(c)
                if Ctl.state(v) != Ctl.active { return work }
                if v & Ctl.requests != 0 { return work + (applyRequests(c, v, count: count, next: next, fresh: fresh) ? 1 : 0) }
                continue
            }
            // The common case first: a run of plain copies through the cached translations.
            let run = runCached(ch, count: &count, next: &next, v: &v, limit: budget &- work)
            var address: UInt64
            var control: UInt32
            if run.executed > 0 {
                work &+= run.executed
                executed &+= UInt64(run.executed)
                fresh = false
                // Stopped after a descriptor that needs more (completion write, interrupt) or at
                // a change of the control word: handled below, `v` already re-read.
                guard run.stoppedAfter else { continue }
                address = run.address
                control = run.control
            } else {
                // Execute one descriptor on the general path.
                var following: UInt64 = 0
                control = 0
                address = next
                ch.pointee.cdar.store(address, ordering: .relaxed)
                var error = execute(c, address: address, fresh: fresh, next: &following, control: &control)
                executed &+= 1
                work += Self.generalPathWork
                if error != 0, error & Self.fetchErrors == 0, error & ~ch.pointee.chanerrMask.load(ordering: .relaxed) == 0 {
                    error = 0  // every bit masked by CHANERR_MASK: the descriptor counts as completed
                }
                if error != 0 {
                    let ctrl = ch.pointee.chanctrl.load(ordering: .relaxed)
                    let fetchFailed = error & Self.fetchErrors != 0
                    if ctrl & UInt32(IOAT.ChanCtrl.anyErrAbortEnable.rawValue) != 0 || fetchFailed {
                        halt(c, v, error: error, count: count, next: address)
                        return work
                    }
                    // Without ANY_ERR_ABORT_EN: record, flag a soft error, skip the descriptor.
                    recordError(c, error)
                    if ctrl & UInt32(IOAT.ChanCtrl.errIntEnable.rawValue) != 0 { raiseInterrupt(c, error: true) }
                    _ = ch.pointee.ctl.bitwiseOr(Ctl.softError
                        | (error & IOAT.ChanErr.unaffiliated.rawValue != 0 ? Ctl.unaffiliated : 0), ordering: .relaxed)
                    count = v1 ? count : count &+ 1
                    ch.pointee.lastDescriptor.store(address, ordering: .relaxed)
                    next = following
                    fresh = false
                    v = stableControl(c)
                    continue
                }
                count = v1 ? count : count &+ 1
                fresh = false
                next = following
                completedDescriptor(ch, address)
                v = stableControl(c)
            }
            if v & (Ctl.reqReset | Ctl.reqAbort) != 0 {
                // RESET or ABORT arrived while this descriptor ran: it is not reported.
                return work + (applyRequests(c, v, count: count, next: next, fresh: fresh) ? 1 : 0)
            }
            if control & IOAT.DescriptorControl.completionWrite != 0 {
                let pendingMore = v1 ? next != 0 : count != Ctl.dmacount(v)
                let state: UInt64 = v & Ctl.reqSuspend != 0 ? Ctl.suspended : (pendingMore ? Ctl.active : Ctl.done)
                let flags = (v & Ctl.softError != 0 ? IOAT.ChanSts.softError : 0)
                if !writeCompletion(c, (address & IOAT.ChanSts.completedDescriptorMask) | flags | state) {
                    halt(c, v, error: IOAT.ChanErr.completionAddress.rawValue, count: count, next: next)
                    return work
                }
            }
            if control & IOAT.DescriptorControl.intEnable != 0 { raiseInterrupt(c, error: false) }
            if Ctl.state(v) != Ctl.active { return work }  // power loss: nothing to hand back
            if v & Ctl.requests != 0 {
                return work + (applyRequests(c, v, count: count, next: next, fresh: fresh) ? 1 : 0)
            }
        }
        // Budget exhausted: publish progress, stay ACTIVE.
        ch.pointee.nextDescriptor.store(next, ordering: .relaxed)
        while true {
            var nv = Ctl.with(v, count: count)
            if !fresh { nv &= ~Ctl.fresh }
            if ch.pointee.ctl.compareExchange(expected: v, desired: nv, ordering: .acquiringAndReleasing).exchanged { break }
            v = ch.pointee.ctl.load(ordering: .acquiring)
            if Ctl.state(v) != Ctl.active { break }
            if v & Ctl.busy != 0 { cvfio_pause() }
        }
        return work
    }

    /// What a completed descriptor leaves in the channel's registers: the last descriptor
    /// (v1 APPEND re-reads its `next`), CHANSTS' completed address and the one before it
    /// (torn 64-bit CHANSTS reads, < 3.3).
    @inline(__always)
    func completedDescriptor(_ ch: UnsafeMutablePointer<IOATChannelState>, _ address: UInt64) {
        ch.pointee.lastDescriptor.store(address, ordering: .relaxed)
        ch.pointee.previousCompleted.store(ch.pointee.completed.load(ordering: .relaxed), ordering: .relaxed)
        ch.pointee.completed.store(address & bits.completedDescriptorMask, ordering: .releasing)
    }

    /// The outcome of ``runCached(_:count:next:v:limit:)``.
    struct CachedRun {
        /// Descriptors executed (and completed).
        var executed = 0
        /// The run stopped after the descriptor at `address` (control word `control`): it asks
        /// for a completion write or an interrupt, or the control word changed (a request, a
        /// state other than ACTIVE, a fault armed). The caller does what its general path does
        /// after a descriptor completed.
        var stoppedAfter = false
        var address: UInt64 = 0
        var control: UInt32 = 0
    }

    /// Executes descriptors of the channel at `ch` (counted chains: DMACOUNT) while they are
    /// the common kind: a COPY (not NULL, no page break) of 1 … maximum-transfer bytes whose
    /// descriptor, source and destination lie in the translations cached for this IOMMU
    /// generation, with no fault armed (``Ctl/faultArmed``). Up to `limit`. Each is run as the
    /// general path (``execute(_:address:fresh:next:control:)``) would: CDAR before its fetch,
    /// the IOMMU generation checked before its fetch, `next` read before the copy, the count,
    /// the control word re-read after it. Stops before the first descriptor of another kind
    /// (nothing done for it: the general path takes it), when the count reaches DMACOUNT, or
    /// after a descriptor that needs more than completing (``CachedRun/stoppedAfter``).
    ///
    /// CHANSTS (the last completed descriptor, the one before it for torn reads) and the last
    /// descriptor are published once, when the run ends: before anything that reports
    /// progress (completion write, interrupt, leaving ACTIVE, a halt), which the caller does
    /// after the run. A CHANSTS read during a run sees the descriptor that completed last
    /// before it began, as it would from a slower engine.
    ///
    /// The loop is C (``cvfio_ioat_run_copies``): the Swift compiler kept too little of it in
    /// registers (about 80 instructions per 64-byte descriptor, against 50 in C). It leaves a copy
    /// whose source and destination overlap in host memory to the general path (memmove); it writes the
    /// completion status itself when all is as usual (the cached completion window, ACTIVE,
    /// nothing posted) and leaves anything else to the caller.
    func runCached(_ ch: UnsafeMutablePointer<IOATChannelState>, count: inout UInt16, next: inout UInt64,
                   v: inout UInt64, limit: Int) -> CachedRun {
        guard !v1, v & Ctl.faultArmed == 0 else { return CachedRun() }
        let generation = iommu.generation
        let state = fastRunState
        if state.pointee.builtStamp != state.pointee.cacheStamp || state.pointee.builtGeneration != generation
            || state.pointee.builtChannel != ch {
            state.pointee.usable = prepareRun(ch, generation: generation)
            state.pointee.builtStamp = state.pointee.cacheStamp
            state.pointee.builtGeneration = generation
            state.pointee.builtChannel = ch
        }
        guard state.pointee.usable else { return CachedRun() }
        let r = fastRun
        r.pointee.count = count
        r.pointee.end = count &+ UInt16(truncatingIfNeeded: min(limit, 0xFFFF))
        r.pointee.next = next
        r.pointee.ctl_value = v
        let n = Int(cvfio_ioat_run_copies(r, bits.avx2 ? 1 : 0))
        var run = CachedRun()
        if n > 0 {
            ch.pointee.fastExecuted.store(ch.pointee.fastExecuted.load(ordering: .relaxed) &+ UInt64(n), ordering: .relaxed)
            run.executed = n
            run.stoppedAfter = r.pointee.stopped_after != 0
            run.address = r.pointee.last
            run.control = r.pointee.control
            count = r.pointee.count
            next = r.pointee.next
            v = r.pointee.ctl_value
        }
        return run
    }

    /// Sets up ``fastRun`` for channel `ch` from the translation caches: whether runs can use
    /// them (the descriptor, source and destination caches hold translations of `generation`,
    /// of at least 64 bytes each). The loop checks that each copy lies in the source and destination mappings and, when
    /// these overlap in host memory (one mapping holds both buffers), that its two buffers do
    /// not overlap. Done again whenever a cache is refilled, the generation changes or
    /// another channel runs.
    func prepareRun(_ ch: UnsafeMutablePointer<IOATChannelState>, generation: UInt64) -> Bool {
        let dc = caches + Self.cacheDescriptor, sc = caches + Self.cacheSource, tc = caches + Self.cacheDestination
        guard dc.pointee.generation == generation, sc.pointee.generation == generation,
              tc.pointee.generation == generation, dc.pointee.last &- dc.pointee.iova >= 63 else { return false }
        let sSpan = sc.pointee.last &- sc.pointee.iova, tSpan = tc.pointee.last &- tc.pointee.iova
        guard sSpan >= 63, tSpan >= 63 else { return false }  // (mappings are pages: never)
        let sLow = UInt(bitPattern: sc.pointee.host), tLow = UInt(bitPattern: tc.pointee.host)
        let r = fastRun
        r.pointee.largest = fastLargest
        r.pointee.overlap = sLow &+ UInt(sSpan) < tLow || tLow &+ UInt(tSpan) < sLow ? 0 : 1
        r.pointee.descriptor = window(dc, size: 64)
        r.pointee.source = window(sc, size: 64)
        r.pointee.destination = window(tc, size: 64)
        let cc = caches + Self.cacheCompletion
        r.pointee.completion = cc.pointee.generation == generation ? window(cc, size: 8)
            : cvfio_window(base: ~0, reach: 0, host: r.pointee.completion.host)
        r.pointee.generation = generation
        let words = UnsafeMutableRawPointer(ch)
        let o = offsets
        r.pointee.ctl = UnsafePointer((words + o.ctl).assumingMemoryBound(to: UInt64.self))
        r.pointee.cdar = (words + o.cdar).assumingMemoryBound(to: UInt64.self)
        r.pointee.completed = (words + o.completed).assumingMemoryBound(to: UInt64.self)
        r.pointee.previous_completed = (words + o.previousCompleted).assumingMemoryBound(to: UInt64.self)
        r.pointee.last_descriptor = (words + o.lastDescriptor).assumingMemoryBound(to: UInt64.self)
        r.pointee.chancmp = UnsafePointer((words + o.chanCmpCommitted).assumingMemoryBound(to: UInt64.self))
        return true
    }

    /// A translation cache as the fast path's window, for accesses of up to `size` bytes (none
    /// when the mapping is smaller).
    @inline(__always)
    func window(_ c: UnsafeMutablePointer<TranslationCache>, size: UInt64) -> cvfio_window {
        let span = c.pointee.last &- c.pointee.iova
        let host = c.pointee.host.assumingMemoryBound(to: CChar.self)
        return span >= size &- 1 ? cvfio_window(base: c.pointee.iova, reach: span &- (size &- 1), host: host)
                                 : cvfio_window(base: ~0, reach: 0, host: host)
    }

    /// The largest copy the fast path takes: larger ones (up to the maximum transfer) take the
    /// general path, whose cost is small beside theirs (as do copies that do not lie in the
    /// cached source and destination mappings).
    var fastLargest: UInt64 { min(maximumTransfer, 64 << 10) }

    /// The channel control word once no register writer holds it (writers hold it for a few
    /// stores only, so this spins at most briefly).
    @inline(__always)
    func stableControl(_ c: Int) -> UInt64 { stableControl(channels + c) }

    @inline(__always)
    func stableControl(_ ch: UnsafeMutablePointer<IOATChannelState>) -> UInt64 {
        while true {
            let v = ch.pointee.ctl.load(ordering: .acquiring)
            if v & Ctl.busy == 0 { return v }
            cvfio_pause()
        }
    }

    /// Errors detected before the descriptor's `next` could be read.
    static let fetchErrors: UInt32 = IOAT.ChanErr.nextDescriptorAddress.rawValue | IOAT.ChanErr.descriptor.rawValue
        | IOAT.ChanErr.chainAddress.rawValue

    /// Applies commands posted while the channel was ACTIVE, at a descriptor boundary.
    /// Returns whether the control word changed.
    func applyRequests(_ c: Int, _ start: UInt64, count: UInt16, next: UInt64, fresh: Bool? = nil) -> Bool {
        let ch = channels + c
        var v = start
        while true {
            guard Ctl.state(v) == Ctl.active else { return false }
            if v & Ctl.busy != 0 { cvfio_pause(); v = ch.pointee.ctl.load(ordering: .acquiring); continue }
            var nv = Ctl.with(v, count: count) & ~Ctl.requests
            if let fresh, !fresh { nv &= ~Ctl.fresh }
            var resetting = false
            if v & Ctl.reqReset != 0 {
                nv = resetValue(v)
                resetting = true
            } else if v & Ctl.reqAbort != 0 {
                nv = Ctl.with(nv, state: Ctl.halted)
            } else if v & Ctl.reqSuspend != 0 {
                nv = Ctl.with(nv, state: Ctl.suspended)
            } else if v & Ctl.reqAppend != 0 {
                // v1 APPEND while running: re-read the last descriptor's next pointer.
                var n = next
                if n == 0 { n = readNext(of: ch.pointee.lastDescriptor.load(ordering: .relaxed)) }
                ch.pointee.nextDescriptor.store(n, ordering: .relaxed)
                if ch.pointee.ctl.compareExchange(expected: v, desired: nv, ordering: .acquiringAndReleasing).exchanged {
                    return true
                }
                v = ch.pointee.ctl.load(ordering: .acquiring)
                continue
            }
            if resetting { clearForReset(c, registers: false) } else { ch.pointee.nextDescriptor.store(next, ordering: .relaxed) }
            if ch.pointee.ctl.compareExchange(expected: v, desired: nv, ordering: .acquiringAndReleasing).exchanged {
                if resetting { afterReset(c) }
                return true
            }
            v = ch.pointee.ctl.load(ordering: .acquiring)
        }
    }

    /// The `next` field of the descriptor at `address`, or 0 if it cannot be read.
    func readNext(of address: UInt64) -> UInt64 {
        guard address != 0, address & 0x3F == 0 else { return 0 }
        var exists = false
        guard let p = translate(Self.cacheDescriptor, address, 64, bits.read, exists: &exists) else { return 0 }
        return p.load(fromByteOffset: IOAT.DescriptorField.next, as: UInt64.self)
    }

    /// Records CHANERR bits and their internal copy (config CHANERR_INT, unless masked there).
    /// The copy first: a driver that sees the CHANERR bits finds CHANERR_INT set too, as on
    /// hardware, where both are set by the same error.
    func recordError(_ c: Int, _ bits: UInt32) {
        config.recordChannelError(bits)
        channels[c].chanerr.bitwiseOr(bits, ordering: .releasing)
    }

    /// Halts channel `c` with `error`: CHANERR, HALTED, the completion address left at the last
    /// good descriptor, the HALTED status written with ERR_COMPLETION_EN, the interrupt with ERR_INT_EN.
    func halt(_ c: Int, _ start: UInt64, error: UInt32, count: UInt16, next: UInt64) {
        let ch = channels + c
        recordError(c, error)
        let ctrl = ch.pointee.chanctrl.load(ordering: .relaxed)
        let completed = ch.pointee.completed.load(ordering: .relaxed)
        ch.pointee.nextDescriptor.store(next, ordering: .relaxed)
        var v = start
        var resetting = false
        while true {
            if v & Ctl.busy != 0 { cvfio_pause(); v = ch.pointee.ctl.load(ordering: .acquiring); continue }
            guard Ctl.state(v) == Ctl.active else { return }
            var nv: UInt64
            if v & Ctl.reqReset != 0 {
                nv = resetValue(v)
                resetting = true
            } else {
                nv = Ctl.with(Ctl.with(v, count: count), state: Ctl.halted) | Ctl.errorHalt
                nv &= ~Ctl.requests
                if error & IOAT.ChanErr.unaffiliated.rawValue != 0 { nv |= Ctl.unaffiliated }
            }
            // Published with the writer bit held: CHANSTS reads HALTED from here on, and the
            // driver's register writes wait until the completion write below is done.
            if ch.pointee.ctl.compareExchange(expected: v, desired: nv | Ctl.busy, ordering: .acquiringAndReleasing).exchanged { v = nv; break }
            v = ch.pointee.ctl.load(ordering: .acquiring)
        }
        // As on hardware, a driver that sees HALTED in the completion word finds CHANSTS HALTED,
        // and a driver that restarts the channel on seeing CHANSTS HALTED cannot have its new
        // chain's completion word overwritten by this halt's (its writes wait for the bit).
        // (Written before the state, a restart could land on a channel still ACTIVE that then
        // halted under it, failing the restarted chain's first op.)
        if ctrl & UInt32(IOAT.ChanCtrl.errCompletionEnable.rawValue) != 0 && error & IOAT.ChanErr.completionAddress.rawValue == 0 {
            if !writeCompletion(c, completed | Ctl.halted) {
                recordError(c, IOAT.ChanErr.completionAddress.rawValue)
            }
        }
        ch.pointee.ctl.store(v, ordering: .releasing)
        if resetting { clearForReset(c, registers: false); afterReset(c); return }
        if ctrl & UInt32(IOAT.ChanCtrl.errIntEnable.rawValue) != 0 { raiseInterrupt(c, error: true) }
    }

    /// Writes the 8-byte completion status to CHANCMP. False on a completion address error.
    @inline(__always)
    func writeCompletion(_ c: Int, _ value: UInt64) -> Bool {
        let address = channels[c].chanCmpCommitted.load(ordering: .relaxed)
        guard address & 7 == 0 else { return false }
        var exists = false
        guard let p = translate(Self.cacheCompletion, address, 8, bits.write, exists: &exists) else { return false }
        p.assumingMemoryBound(to: Atomic<UInt64>.self).pointee.store(value, ordering: .releasing)
        return true
    }

    // MARK: Executing one descriptor

    /// Executes the descriptor at `address` on channel `c`. Returns the CHANERR bits of its
    /// failure, 0 on success; `next` and `control` receive its fields.
    func execute(_ c: Int, address: UInt64, fresh: Bool, next: inout UInt64, control: inout UInt32) -> UInt32 {
        if address & 0x3F != 0 {
            return fresh ? bits.chainAddress : bits.descriptor
        }
        var exists = false
        guard let d = translate(Self.cacheDescriptor, address, 64, bits.read, exists: &exists) else {
            return fresh ? bits.chainAddress : bits.nextDescriptorAddress
        }
        let size = Int(d.load(fromByteOffset: IOAT.DescriptorField.size, as: UInt32.self))
        let ctrl = d.load(fromByteOffset: IOAT.DescriptorField.control, as: UInt32.self)
        let src = d.load(fromByteOffset: IOAT.DescriptorField.source, as: UInt64.self)
        let dst = d.load(fromByteOffset: IOAT.DescriptorField.destination, as: UInt64.self)
        next = d.load(fromByteOffset: IOAT.DescriptorField.next, as: UInt64.self)
        control = ctrl
        let ch = channels + c

        var corrupt = -1
        var corruptMask: UInt8 = 0
        let flags = ch.pointee.faultFlag.load(ordering: .relaxed)
        if flags & (IOATChannelState.faultFail | IOATChannelState.faultCorrupt) != 0 {
            if flags & IOATChannelState.faultFail != 0 {
                let n = ch.pointee.failCountdown.load(ordering: .relaxed)
                if n == 0 {
                    ch.pointee.failCountdown.store(-1, ordering: .relaxed)
                    ch.pointee.faultFlag.bitwiseAnd(~IOATChannelState.faultFail, ordering: .relaxed)
                    let bits = ch.pointee.failBits.load(ordering: .relaxed)
                    if bits != 0 { return bits }
                } else if n > 0 {
                    ch.pointee.failCountdown.store(n - 1, ordering: .relaxed)
                }
            }
            // Corruption counts only descriptors that move data (a NULL reads nothing to corrupt).
            if flags & IOATChannelState.faultCorrupt != 0 && ctrl & IOAT.DescriptorControl.null == 0 {
                let n = ch.pointee.corruptCountdown.load(ordering: .relaxed)
                if n == 0 {
                    ch.pointee.corruptCountdown.store(-1, ordering: .relaxed)
                    ch.pointee.faultFlag.bitwiseAnd(~IOATChannelState.faultCorrupt, ordering: .relaxed)
                    corrupt = ch.pointee.corruptOffset.load(ordering: .relaxed)
                    corruptMask = UInt8(truncatingIfNeeded: ch.pointee.corruptMask.load(ordering: .relaxed))
                } else if n > 0 {
                    ch.pointee.corruptCountdown.store(n - 1, ordering: .relaxed)
                }
            }
        }

        let op = UInt8(truncatingIfNeeded: ctrl >> IOAT.DescriptorControl.opShift)
        let srcBreak = ctrl & IOAT.DescriptorControl.sourcePageBreak != 0
        let dstBreak = ctrl & IOAT.DescriptorControl.destinationPageBreak != 0
        if (srcBreak || dstBreak) && !bits.pageBreak {
            return bits.descriptorControl
        }
        guard size != 0, size <= maximumTransferSize else { return bits.transferSize }
        switch op {
        case IOAT.Opcode.copy:
            if ctrl & IOAT.DescriptorControl.null != 0 { return 0 }
            let nextSrc = srcBreak ? d.load(fromByteOffset: IOAT.DescriptorField.nextSource, as: UInt64.self) : 0
            let nextDst = dstBreak ? d.load(fromByteOffset: IOAT.DescriptorField.nextDestination, as: UInt64.self) : 0
            var s0: UnsafeMutableRawPointer? = nil, s1: UnsafeMutableRawPointer? = nil
            var d0: UnsafeMutableRawPointer? = nil, d1: UnsafeMutableRawPointer? = nil
            let sLen0 = srcBreak ? min(size, IOAT.pageBreakSize - Int(src & 0xFFF)) : size
            let dLen0 = dstBreak ? min(size, IOAT.pageBreakSize - Int(dst & 0xFFF)) : size
            var e = resolve(Self.cacheSource, src, sLen0, nextSrc, size - sLen0, bits.read, &s0, &s1,
                            address: bits.sourceAddress, data: bits.readData)
            if e != 0 { return e }
            e = resolve(Self.cacheDestination, dst, dLen0, nextDst, size - dLen0, bits.write, &d0, &d1,
                        address: bits.destinationAddress, data: bits.writeData)
            if e != 0 { return e }
            if sLen0 == size && dLen0 == size {
                copy(d0!, s0!, size)
            } else {
                copySegments(s0!, sLen0, s1, d0!, dLen0, d1, size)
            }
            if corrupt >= 0 && corrupt < size { xorByte(corrupt, corruptMask, d0!, dLen0, d1) }
            return 0
        case IOAT.Opcode.fill:
            guard bits.blockFill, !srcBreak else { return bits.descriptorControl }
            if ctrl & IOAT.DescriptorControl.null != 0 { return 0 }
            let nextDst = dstBreak ? d.load(fromByteOffset: IOAT.DescriptorField.nextDestination, as: UInt64.self) : 0
            var d0: UnsafeMutableRawPointer? = nil, d1: UnsafeMutableRawPointer? = nil
            let dLen0 = dstBreak ? min(size, IOAT.pageBreakSize - Int(dst & 0xFFF)) : size
            let e = resolve(Self.cacheDestination, dst, dLen0, nextDst, size - dLen0, bits.write, &d0, &d1,
                            address: bits.destinationAddress, data: bits.writeData)
            if e != 0 { return e }
            patternFill(d0!, dLen0, pattern: src, phase: 0)
            if let d1, size > dLen0 { patternFill(d1, size - dLen0, pattern: src, phase: dLen0 & 7) }
            if corrupt >= 0 && corrupt < size { xorByte(corrupt, corruptMask, d0!, dLen0, d1) }
            return 0
        default:
            return bits.descriptorControl
        }
    }

    /// Translates a range of up to two segments (page break). Returns CHANERR bits or 0.
    @inline(__always)
    func resolve(_ kind: Int, _ a0: UInt64, _ l0: Int, _ a1: UInt64, _ l1: Int, _ access: DMAAccess,
                 _ p0: inout UnsafeMutableRawPointer?, _ p1: inout UnsafeMutableRawPointer?,
                 address: UInt32, data: UInt32) -> UInt32 {
        var exists = false
        if a0 >> 48 != 0 { return address }
        p0 = translate(kind, a0, l0, access, exists: &exists)
        if p0 == nil { return exists ? data : address }
        if l1 > 0 {
            if a1 >> 48 != 0 { return address }
            p1 = translate(kind, a1, l1, access, exists: &exists)
            if p1 == nil { return exists ? data : address }
        }
        return 0
    }

    /// One copy of `size` bytes: ``cvfio_copy`` (inline moves up to 64 bytes, 32-byte AVX2
    /// loads and stores above when the CPU has AVX2) between buffers that do not overlap,
    /// `memmove` otherwise. The same code runs natively and under valgrind (which has AVX2),
    /// so the instructions callgrind counts are the ones the model runs. The engine's speed is
    /// the model's business only; the bytes are the same.
    @inline(__always)
    func copy(_ d: UnsafeMutableRawPointer, _ s: UnsafeMutableRawPointer, _ size: Int) {
        if UInt(bitPattern: d) &+ UInt(size) <= UInt(bitPattern: s) || UInt(bitPattern: s) &+ UInt(size) <= UInt(bitPattern: d) {
            cvfio_copy(d, s, size, bits.avx2 ? 1 : 0)
        } else {
            memmove(d, s, size)
        }
    }

    func copySegments(_ s0: UnsafeMutableRawPointer, _ sl0: Int, _ s1: UnsafeMutableRawPointer?,
                      _ d0: UnsafeMutableRawPointer, _ dl0: Int, _ d1: UnsafeMutableRawPointer?, _ size: Int) {
        var done = 0
        while done < size {
            let sp = done < sl0 ? s0 + done : s1! + (done - sl0)
            let sRun = done < sl0 ? sl0 - done : size - done
            let dp = done < dl0 ? d0 + done : d1! + (done - dl0)
            let dRun = done < dl0 ? dl0 - done : size - done
            let n = min(sRun, dRun)
            memmove(dp, sp, n)
            done += n
        }
    }

    func xorByte(_ offset: Int, _ mask: UInt8, _ d0: UnsafeMutableRawPointer, _ dl0: Int, _ d1: UnsafeMutableRawPointer?) {
        let p = offset < dl0 ? d0 + offset : d1! + (offset - dl0)
        p.storeBytes(of: p.load(as: UInt8.self) ^ (mask == 0 ? 0xFF : mask), as: UInt8.self)
    }

    /// Fills `count` bytes with the 8-byte little-endian `pattern`, starting at pattern byte `phase`.
    func patternFill(_ p: UnsafeMutableRawPointer, _ count: Int, pattern: UInt64, phase: Int) {
        let first = min(count, 64)
        for i in 0..<first {
            p.storeBytes(of: UInt8(truncatingIfNeeded: pattern >> UInt64(8 * ((phase + i) & 7))), toByteOffset: i, as: UInt8.self)
        }
        var done = first
        while done < count {
            let n = min(done, count - done)
            memcpy(p + done, p, n)
            done += n
        }
    }

    // MARK: Interrupts

    /// A channel interrupt event: a completed `int_en` descriptor on an armed channel, or an
    /// error with ERR_INT_EN. Sets ATTNSTATUS, disarms, and signals the vector INTRCTRL selects
    /// (after INTRDELAY when coalescing).
    func raiseInterrupt(_ c: Int, error: Bool) {
        let ch = channels + c
        if error {
            ch.pointee.intArmed.store(false, ordering: .relaxed)
        } else {
            guard ch.pointee.intArmed.exchange(false, ordering: .acquiringAndReleasing) else { return }
        }
        attnStatus.bitwiseOr(1 << UInt32(c), ordering: .releasing)
        let delay = UInt64(intrDelay.load(ordering: .relaxed) & IOAT.intrDelayMask)
        if delay != 0 {
            let due = monotonicNanoseconds() &+ delay &* 1000
            _ = ch.pointee.deferredInterrupt.compareExchange(expected: 0, desired: due, ordering: .relaxed)
            deferredPending.store(true, ordering: .releasing)
            return
        }
        signalChannel(c)
    }

    /// Signals the vector for channel `c` as INTRCTRL routes it.
    func signalChannel(_ c: Int) {
        let ic = UInt8(truncatingIfNeeded: intrCtrl.load(ordering: .relaxed))
        if ic & IOAT.IntrCtrl.msixVectorControl.rawValue != 0 {
            deliver(vector: c)
        } else if ic & IOAT.IntrCtrl.masterIntEnable.rawValue != 0 {
            deliver(vector: 0)
        }
    }

    /// Delivers interrupts whose coalescing delay has passed (all of them with `force`).
    /// Returns the nearest deadline still pending, or 0.
    func deliverDeferred(force: Bool = false) -> UInt64 {
        guard deferredPending.load(ordering: .acquiring) else { return 0 }
        deferredPending.store(false, ordering: .relaxed)
        let now = monotonicNanoseconds()
        var nearest: UInt64 = 0
        for c in 0..<channelCount {
            let due = channels[c].deferredInterrupt.load(ordering: .relaxed)
            if due == 0 { continue }
            if force || due <= now {
                if channels[c].deferredInterrupt.compareExchange(expected: due, desired: 0, ordering: .relaxed).exchanged {
                    signalChannel(c)
                }
            } else {
                nearest = nearest == 0 ? due : min(nearest, due)
                deferredPending.store(true, ordering: .relaxed)
            }
        }
        return nearest
    }

    /// Sends MSI-X vector `vector`: to its eventfd if the vector is enabled, unmasked and holds
    /// the message the host programmed; to the PBA if masked; lost otherwise.
    func deliver(vector: Int) {
        guard vector < vectorCount else { return }
        let control = config.msixControl.load(ordering: .acquiring)
        guard control & PCIConfigModel.msixEnable != 0, dmaAllowed else {
            interruptsLost.add(1, ordering: .relaxed)
            return
        }
        let e = msix + vector * 4
        if control & PCIConfigModel.msixFunctionMask != 0 || e[3].load(ordering: .acquiring) & IOAT.msixVectorMasked != 0 {
            pba.bitwiseOr(1 << UInt64(vector), ordering: .relaxed)
            return
        }
        let programmed = programmedMessage(vector)
        guard e[0].load(ordering: .relaxed) == programmed.addressLow, e[1].load(ordering: .relaxed) == 0,
              e[2].load(ordering: .relaxed) == programmed.data else {
            interruptsLost.add(1, ordering: .relaxed)
            return
        }
        let fd = interruptFDs[vector].load(ordering: .acquiring)
        guard fd >= 0 else { interruptsLost.add(1, ordering: .relaxed); return }
        // Counted before the write: whoever sees the eventfd's value sees the count include it.
        interruptsSignalled.add(1, ordering: .releasing)
        var one: UInt64 = 1
        _ = Glibc.write(fd, &one, 8)
    }

    /// Delivers vectors pending in the PBA that are now unmasked.
    func deliverPending() {
        let pending = pba.load(ordering: .relaxed)
        guard pending != 0 else { return }
        for vector in 0..<vectorCount where pending & (1 << UInt64(vector)) != 0 {
            let control = config.msixControl.load(ordering: .acquiring)
            if control & PCIConfigModel.msixFunctionMask != 0 { return }
            if msix[vector * 4 + 3].load(ordering: .acquiring) & IOAT.msixVectorMasked != 0 { continue }
            pba.bitwiseAnd(~(1 << UInt64(vector)), ordering: .relaxed)
            deliver(vector: vector)
        }
    }

    /// The MSI message the host (VFIO) programs for `vector`: x86 LAPIC address, data = vector.
    func programmedMessage(_ vector: Int) -> (addressLow: UInt32, data: UInt32) {
        (0xFEE0_0000 | UInt32(vector & 0xFF) << 12, 0x4000 | UInt32(vector & 0xFF))
    }
}
