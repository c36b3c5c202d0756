import CVFIO
import Hardware
import Platform
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// The descriptor engine (dsa.md §5, §6, §9.5–§9.7). Runs on the engine thread or inside
/// `step()`; never allocates, locks or makes a system call per descriptor (an interrupt the
/// descriptor asks for is an eventfd write, as on hardware).
extension DSADeviceCore {
    /// What one descriptor produced: the completion record's fields.
    struct Outcome {
        var status: UInt8 = DSA.CompletionStatus.success.rawValue
        var result: UInt8 = 0
        var bytes: UInt32 = 0
        var fault: UInt64 = 0
        var extra: UInt32 = 0

        static func error(_ s: DSA.CompletionStatus, extra: UInt32 = 0) -> Outcome {
            Outcome(status: s.rawValue, extra: extra)
        }
        static func fault(at address: UInt64, write: Bool, done: Int, descending: Bool = false) -> Outcome {
            Outcome(status: DSA.CompletionStatus.pageFault.rawValue | (write ? DSA.CompletionRecord.statusWriteFault : 0),
                    result: descending ? DSA.CompletionRecord.resultDescending : 0,
                    bytes: UInt32(truncatingIfNeeded: done), fault: address)
        }
        var code: UInt8 { status & DSA.CompletionRecord.statusCodeMask }
    }

    /// One unit of engine work. See ``step()``.
    func engineStep() -> Bool {
        if commandPending.load(ordering: .acquiring) && serviceCommand() { return true }
        engineBusy.store(true, ordering: .sequentiallyConsistent)
        defer { engineBusy.store(false, ordering: .releasing) }
        if stalledFlag.load(ordering: .sequentiallyConsistent) { return false }
        let state = dword(DSA.GENSTS) & 3
        guard state == DSA.DeviceState.enabled.rawValue || state == DSA.DeviceState.draining.rawValue else { return false }
        let start = nextWQ.load(ordering: .relaxed)
        for k in 0..<wqCount {
            let wq = (start + k) % wqCount
            if wqState[wq].load(ordering: .acquiring) == DSA.WQState.disabled.rawValue { continue }
            let cap = UInt64(wqCapacity[wq].load(ordering: .relaxed))
            let pos = wqHead[wq].load(ordering: .relaxed)
            let slot = wq * maxEntries + Int(pos % cap)
            guard slotSeq[slot].load(ordering: .acquiring) == pos &+ 1 else { continue }
            // Copy the descriptor out; the slot is free again (occupancy drops) once taken.
            scratch.copyMemory(from: slotData + slot * 64, byteCount: 64)
            let ims = slotIMS[slot] != 0
            slotSeq[slot].store(pos &+ cap, ordering: .releasing)
            wqHead[wq].store(pos &+ 1, ordering: .releasing)
            nextWQ.store(wq + 1, ordering: .relaxed)
            _ = run(UnsafeRawPointer(scratch), wq: wq, ims: ims, batchIndex: -1)
            wqCompleted[wq].add(1, ordering: .releasing)
            return true
        }
        return false
    }

    /// Validates and executes one descriptor, writes its record (or SWERR) and raises its
    /// interrupt. Returns the status code (bits 6:0).
    func run(_ d: UnsafeRawPointer, wq: Int, ims: Bool, batchIndex: Int) -> UInt8 {
        let word = d.loadUnaligned(fromByteOffset: DSA.Descriptor.flagsAndOpcode, as: UInt32.self)
        let flags = word & DSA.Flags.mask
        let op = UInt8(truncatingIfNeeded: word >> 24)
        let o = validateAndExecute(d, flags: flags, op: op, wq: wq, ims: ims, inBatch: batchIndex >= 0)
        complete(d, flags: flags, op: op, o, wq: wq, ims: ims, batchIndex: batchIndex)
        return o.code
    }

    private func complete(_ d: UnsafeRawPointer, flags: UInt32, op: UInt8, _ o: Outcome, wq: Int, ims: Bool, batchIndex: Int) {
        let code = o.code
        let success = code == DSA.CompletionStatus.success.rawValue
        let address = d.loadUnaligned(fromByteOffset: DSA.Descriptor.completionAddress, as: UInt64.self)
        let crav = flags & DSA.Flags.completionRecordValid != 0
        let batch: Int? = batchIndex >= 0 ? batchIndex : nil
        if code == DSA.CompletionStatus.completionRecordAlignment.rawValue {
            reportSoftwareError(code: code, wq: wq, opcode: op, batchIndex: batch, faultAddress: address)
        } else if crav && (flags & DSA.Flags.requestCompletionRecord != 0 || !success) {
            if let r = iommu.translate(address, length: DSA.CompletionRecord.size, access: .write) {
                r.storeBytes(of: o.result, toByteOffset: 1, as: UInt8.self)
                r.storeBytes(of: UInt16(0), toByteOffset: 2, as: UInt16.self)
                r.storeBytes(of: o.bytes, toByteOffset: 4, as: UInt32.self)
                r.storeBytes(of: o.fault, toByteOffset: 8, as: UInt64.self)
                r.storeBytes(of: o.extra, toByteOffset: 16, as: UInt32.self)
                r.storeBytes(of: UInt32(0), toByteOffset: 20, as: UInt32.self)
                r.storeBytes(of: UInt64(0), toByteOffset: 24, as: UInt64.self)
                // The status byte last, after the data and the rest of the record.
                atomicMemoryFence(ordering: .releasing)
                r.assumingMemoryBound(to: Atomic<UInt8>.self).pointee.store(o.status, ordering: .releasing)
            } else {
                reportSoftwareError(code: DSA.CompletionStatus.completionRecordTranslation.rawValue, wq: wq, opcode: op,
                                    batchIndex: batch, faultAddress: address, write: true)
            }
        } else if !crav && !success {
            reportSoftwareError(code: code, wq: wq, opcode: op, batchIndex: batch, faultAddress: o.fault,
                                write: o.status & DSA.CompletionRecord.statusWriteFault != 0,
                                invalidFlags: code == DSA.CompletionStatus.invalidFlags.rawValue ? o.extra : 0)
        }
        if flags & DSA.Flags.requestCompletionInterrupt != 0 && code != DSA.CompletionStatus.invalidInterruptHandle.rawValue {
            signal(vector: Int(d.loadUnaligned(fromByteOffset: DSA.Descriptor.interruptHandle, as: UInt16.self)))
        }
    }

    /// Bytes 40–63 each opcode uses (bit i = byte 40 + i); the rest must be zero.
    private func usedOperationBytes(_ op: UInt8) -> UInt32 {
        switch op {
        case DSA.Opcode.compare, DSA.Opcode.comparePattern: return 0x1
        case DSA.Opcode.dualcast: return 0xFF
        case DSA.Opcode.crcGenerate, DSA.Opcode.copyCRC: return 0x0F | 0xFF00
        default: return 0
        }
    }

    private func validateAndExecute(_ d: UnsafeRawPointer, flags: UInt32, op: UInt8, wq: Int, ims: Bool,
                                    inBatch: Bool) -> Outcome {
        // 1. Reserved fields, then the opcode.
        if d.loadUnaligned(fromByteOffset: DSA.Descriptor.reserved38, as: UInt16.self) != 0 {
            return .error(.nonZeroReserved)
        }
        let used = usedOperationBytes(op)
        for i in 0..<24 where used & (1 << UInt32(i)) == 0 {
            if d.load(fromByteOffset: 40 + i, as: UInt8.self) != 0 { return .error(.nonZeroReserved) }
        }
        if !opcodeAllowed(op, wq: wq) || (inBatch && op == DSA.Opcode.batch) { return .error(.badOpcode) }

        // 2. Flags.
        let gencap = genCap
        let invalid = flags & ~allowedFlags(op, wq: wq, inBatch: inBatch, completionRecordValid: flags & DSA.Flags.completionRecordValid != 0)
        if invalid != 0 { return .error(.invalidFlags, extra: invalid) }

        // 3. Completion record alignment; 4. interrupt handle.
        if flags & DSA.Flags.completionRecordValid != 0
            && d.loadUnaligned(fromByteOffset: DSA.Descriptor.completionAddress, as: UInt64.self) & 31 != 0 {
            return .error(.completionRecordAlignment)
        }
        if flags & DSA.Flags.requestCompletionInterrupt != 0 {
            let h = Int(d.loadUnaligned(fromByteOffset: DSA.Descriptor.interruptHandle, as: UInt16.self))
            if ims || h >= interruptVectorCount { return .error(.invalidInterruptHandle) }
        }

        // Injected failure.
        if op != DSA.Opcode.batch {
            operations.add(1, ordering: .relaxed)
            var c = injectCountdown.load(ordering: .acquiring)
            while c >= 0 {
                let (done, now) = injectCountdown.compareExchange(expected: c, desired: c == 0 ? -1 : c - 1,
                                                                  ordering: .acquiringAndReleasing)
                if done {
                    if c == 0 { return Outcome(status: injectStatus.load(ordering: .relaxed)) }
                    break
                }
                c = now
            }
        }

        let src = d.loadUnaligned(fromByteOffset: DSA.Descriptor.source, as: UInt64.self)
        let dst = d.loadUnaligned(fromByteOffset: DSA.Descriptor.destination, as: UInt64.self)
        let size = Int(d.loadUnaligned(fromByteOffset: DSA.Descriptor.transferSize, as: UInt32.self))
        let limits = dword(wqcfg(wq, DSA.WQCfg.limits))
        let maxTransfer = 1 << Int(limits & DSA.WQCfg.maxTransferShiftMask)

        switch op {
        case DSA.Opcode.noop, DSA.Opcode.drain:
            // One engine, in order: every earlier descriptor of the WQ has completed.
            return Outcome()
        case DSA.Opcode.batch:
            let maxBatch = 1 << Int((limits & DSA.WQCfg.maxBatchShiftMask) >> DSA.WQCfg.maxBatchShiftShift)
            if size < options.minimumBatchCount || size > maxBatch { return .error(.descriptorCountRange) }
            if src & 63 != 0 { return .error(.descriptorListAlignment) }
            return runBatch(list: src, count: size, wq: wq, ims: ims)
        default:
            break
        }
        if size == 0 || size > maxTransfer { return .error(.transferSizeRange) }

        switch op {
        case DSA.Opcode.memmove:
            if overlaps(src, dst, size) && !gencap.overlappingMove { return .error(.overlappingBuffers) }
            return copy(from: src, to: dst, size)
        case DSA.Opcode.fill:
            return fill(dst, size, pattern: src)
        case DSA.Opcode.compare:
            var o = compare(src, size, with: dst, pattern: 0)
            checkResult(&o, d, flags)
            return o
        case DSA.Opcode.comparePattern:
            var o = compare(src, size, with: nil, pattern: dst)
            checkResult(&o, d, flags)
            return o
        case DSA.Opcode.dualcast:
            let dst2 = d.loadUnaligned(fromByteOffset: DSA.Descriptor.destination2, as: UInt64.self)
            if (dst ^ dst2) & 0xFFF != 0 { return .error(.dualcastAlignment) }
            if overlaps(src, dst, size) || overlaps(src, dst2, size) || overlaps(dst, dst2, size) {
                return .error(.overlappingBuffers)
            }
            return dualcast(src, dst, dst2, size)
        case DSA.Opcode.crcGenerate, DSA.Opcode.copyCRC:
            if op == DSA.Opcode.copyCRC && overlaps(src, dst, size) { return .error(.overlappingBuffers) }
            var seed = d.loadUnaligned(fromByteOffset: DSA.Descriptor.crcSeed, as: UInt32.self)
            if flags & DSA.Flags.crcReadSeed != 0 {
                let a = d.loadUnaligned(fromByteOffset: DSA.Descriptor.crcSeedAddress, as: UInt64.self)
                guard let p = iommu.translate(a, length: 4, access: .read) else {
                    return .fault(at: a, write: false, done: 0)
                }
                seed = p.loadUnaligned(as: UInt32.self)
            }
            return crc(src, size, seed: seed, copyTo: op == DSA.Opcode.copyCRC ? dst : nil, flags: flags)
        case DSA.Opcode.cacheFlush:
            return touch(dst, size)
        default:
            // Advertised in OPCAP by the real part but not executed by this model.
            return .error(.badOpcode)
        }
    }

    /// The flags a descriptor with opcode `op` may carry on WQ `wq` (others: invalid flags, 0x11).
    func allowedFlags(_ op: UInt8, wq: Int, inBatch: Bool, completionRecordValid: Bool) -> UInt32 {
        let gencap = genCap
        var allowed = DSA.Flags.generalMask
        if version < 0x200 { allowed &= ~(DSA.Flags.completionRecordSteering | DSA.Flags.destinationSteering) }
        if !gencap.cacheControlMemory { allowed &= ~DSA.Flags.cacheControl }
        if !gencap.destinationReadback { allowed &= ~DSA.Flags.destinationReadback }
        let wqBOF = dword(wqcfg(wq, DSA.WQCfg.mode)) & DSA.WQCfg.blockOnFault != 0
        if !wqBOF || op == DSA.Opcode.drain { allowed &= ~DSA.Flags.blockOnFault }
        if op != DSA.Opcode.compare && op != DSA.Opcode.comparePattern && op != DSA.Opcode.createDelta {
            allowed &= ~DSA.Flags.checkResult
        }
        if op == DSA.Opcode.crcGenerate || op == DSA.Opcode.copyCRC {
            // Bypass of data reflection (bit 18) is not modelled: refused as an invalid flag.
            allowed |= DSA.Flags.crcReadSeed | DSA.Flags.crcBypassInversion
        }
        if !completionRecordValid { allowed &= ~DSA.Flags.requestCompletionRecord }
        if options.strictFence && !inBatch { allowed &= ~DSA.Flags.fence }
        return allowed
    }

    func opcodeAllowed(_ op: UInt8, wq: Int) -> Bool {
        let w = Int(op) / 64, bit = UInt64(1) << UInt64(op % 64)
        if qword(DSA.OPCAP + 8 * w) & bit == 0 { return false }
        if wqCap.opConfig && wqStride >= 64 {
            let d = wqcfg(wq, DSA.WQCfg.opConfig + Int(op) / 32)
            if dword(d) & (1 << UInt32(op % 32)) == 0 { return false }
        }
        return true
    }

    private func checkResult(_ o: inout Outcome, _ d: UnsafeRawPointer, _ flags: UInt32) {
        guard o.code == DSA.CompletionStatus.success.rawValue, flags & DSA.Flags.checkResult != 0 else { return }
        let expected = d.load(fromByteOffset: DSA.Descriptor.expectedResult, as: UInt8.self) & 1
        if o.result != expected { o.status = DSA.CompletionStatus.successFalsePredicate.rawValue }
    }

    @inline(__always) private func overlaps(_ a: UInt64, _ b: UInt64, _ n: Int) -> Bool {
        let n = UInt64(n)
        return a < b &+ n && b < a &+ n
    }

    /// The chunk length from `a` that stays inside its 4 KiB page, at most `n`.
    @inline(__always) private func pageChunk(_ a: UInt64, _ n: Int) -> Int { min(n, 4096 - Int(a & 0xFFF)) }

    // MARK: Operations

    private func copy(from src: UInt64, to dst: UInt64, _ size: Int) -> Outcome {
        if let s = iommu.translate(src, length: size, access: .read),
           let t = iommu.translate(dst, length: size, access: .write) {
            memmove(t, s, size)
            return Outcome()
        }
        if dst > src && overlaps(src, dst, size) {
            // Descending copy, reported with result bit 0 = 1 on a fault.
            var done = 0
            while done < size {
                let end = size - done
                let sEnd = src &+ UInt64(end), dEnd = dst &+ UInt64(end)
                var n = min(end, sEnd & 0xFFF == 0 ? 4096 : Int(sEnd & 0xFFF))
                n = min(n, dEnd & 0xFFF == 0 ? 4096 : Int(dEnd & 0xFFF))
                let s0 = sEnd &- UInt64(n), d0 = dEnd &- UInt64(n)
                guard let s = iommu.translate(s0, length: n, access: .read) else {
                    return .fault(at: s0, write: false, done: done, descending: true)
                }
                guard let t = iommu.translate(d0, length: n, access: .write) else {
                    return .fault(at: d0, write: true, done: done, descending: true)
                }
                memmove(t, s, n)
                done += n
            }
            return Outcome()
        }
        var done = 0
        while done < size {
            let s0 = src &+ UInt64(done), d0 = dst &+ UInt64(done)
            let n = min(pageChunk(s0, size - done), pageChunk(d0, size - done))
            guard let s = iommu.translate(s0, length: n, access: .read) else { return .fault(at: s0, write: false, done: done) }
            guard let t = iommu.translate(d0, length: n, access: .write) else { return .fault(at: d0, write: true, done: done) }
            memmove(t, s, n)
            done += n
        }
        return Outcome()
    }

    private func dualcast(_ src: UInt64, _ dst1: UInt64, _ dst2: UInt64, _ size: Int) -> Outcome {
        var done = 0
        while done < size {
            let s0 = src &+ UInt64(done), a = dst1 &+ UInt64(done), b = dst2 &+ UInt64(done)
            let n = min(pageChunk(s0, size - done), pageChunk(a, size - done))
            guard let s = iommu.translate(s0, length: n, access: .read) else { return .fault(at: s0, write: false, done: done) }
            guard let t1 = iommu.translate(a, length: n, access: .write) else { return .fault(at: a, write: true, done: done) }
            guard let t2 = iommu.translate(b, length: n, access: .write) else { return .fault(at: b, write: true, done: done) }
            memcpy(t1, s, n)
            memcpy(t2, s, n)
            done += n
        }
        return Outcome()
    }

    private func fill(_ dst: UInt64, _ size: Int, pattern: UInt64) -> Outcome {
        if let t = iommu.translate(dst, length: size, access: .write) {
            fillBytes(t, size, pattern)
            return Outcome()
        }
        var done = 0
        while done < size {
            let d0 = dst &+ UInt64(done)
            let n = pageChunk(d0, size - done)
            guard let t = iommu.translate(d0, length: n, access: .write) else { return .fault(at: d0, write: true, done: done) }
            let r = UInt64((done & 7) * 8)
            fillBytes(t, n, r == 0 ? pattern : (pattern >> r) | (pattern << (64 - r)))
            done += n
        }
        return Outcome()
    }

    @inline(__always) private func fillBytes(_ t: UnsafeMutableRawPointer, _ n: Int, _ pattern: UInt64) {
        var i = 0
        while i + 8 <= n { t.storeBytes(of: pattern, toByteOffset: i, as: UInt64.self); i += 8 }
        while i < n { t.storeBytes(of: UInt8(truncatingIfNeeded: pattern >> UInt64((i & 7) * 8)), toByteOffset: i, as: UInt8.self); i += 1 }
    }

    /// Compare (`other` non-nil) or compare pattern. Result 0 equal, 1 different; on a
    /// difference, bytes completed = the offset of the first differing byte (INFERRED).
    private func compare(_ src: UInt64, _ size: Int, with other: UInt64?, pattern: UInt64) -> Outcome {
        var done = 0
        while done < size {
            let s0 = src &+ UInt64(done)
            var n = pageChunk(s0, size - done)
            if let other { n = min(n, pageChunk(other &+ UInt64(done), size - done)) }
            guard let a = iommu.translate(s0, length: n, access: .read) else { return .fault(at: s0, write: false, done: done) }
            var diff = -1
            if let other {
                let o0 = other &+ UInt64(done)
                guard let b = iommu.translate(o0, length: n, access: .read) else { return .fault(at: o0, write: false, done: done) }
                if memcmp(a, b, n) != 0 {
                    for i in 0..<n where a.load(fromByteOffset: i, as: UInt8.self) != b.load(fromByteOffset: i, as: UInt8.self) {
                        diff = i; break
                    }
                }
            } else {
                for i in 0..<n {
                    let p = UInt8(truncatingIfNeeded: pattern >> UInt64(((done + i) & 7) * 8))
                    if a.load(fromByteOffset: i, as: UInt8.self) != p { diff = i; break }
                }
            }
            if diff >= 0 { return Outcome(result: 1, bytes: UInt32(done + diff)) }
            done += n
        }
        return Outcome()
    }

    private func crc(_ src: UInt64, _ size: Int, seed: UInt32, copyTo dst: UInt64?, flags: UInt32) -> Outcome {
        // Default: CRC-32C, seed and result inverted (standard CRC-32C for seed 0, chainable:
        // the CRC of A‖B is the CRC of B with the CRC of A as its seed). With bit 17 (INFERRED
        // from DML's description) the seed and result are taken as the raw MSB-first register.
        let bypass = flags & DSA.Flags.crcBypassInversion != 0
        var reg = bypass ? CRC32C.reversed(seed) : ~seed
        let table = CRC32C.table
        var done = 0
        while done < size {
            let s0 = src &+ UInt64(done)
            var n = pageChunk(s0, size - done)
            if let dst { n = min(n, pageChunk(dst &+ UInt64(done), size - done)) }
            guard let s = iommu.translate(s0, length: n, access: .read) else {
                var o = Outcome.fault(at: s0, write: false, done: done)
                o.extra = bypass ? CRC32C.reversed(reg) : ~reg
                return o
            }
            if let dst {
                let d0 = dst &+ UInt64(done)
                guard let t = iommu.translate(d0, length: n, access: .write) else {
                    var o = Outcome.fault(at: d0, write: true, done: done)
                    o.extra = bypass ? CRC32C.reversed(reg) : ~reg
                    return o
                }
                memcpy(t, s, n)
            }
            for i in 0..<n {
                reg = table[Int((reg ^ UInt32(s.load(fromByteOffset: i, as: UInt8.self))) & 0xFF)] ^ (reg >> 8)
            }
            done += n
        }
        return Outcome(extra: bypass ? CRC32C.reversed(reg) : ~reg)
    }

    private func touch(_ dst: UInt64, _ size: Int) -> Outcome {
        var done = 0
        while done < size {
            let d0 = dst &+ UInt64(done)
            let n = pageChunk(d0, size - done)
            guard iommu.translate(d0, length: n, access: .write) != nil else { return .fault(at: d0, write: true, done: done) }
            done += n
        }
        return Outcome()
    }

    /// Runs a batch: members in order; a FENCEd member after a failure abandons the rest.
    /// Until a member fails, runs of the common members take the fast path (``runFast(list:from:count:wq:)``).
    private func runBatch(list: UInt64, count: Int, wq: Int, ims: Bool) -> Outcome {
        let member = UnsafeMutableRawPointer(scratch + 64)
        var failed = false
        var i = 0
        while i < count {
            if !failed {
                i += runFast(list: list, from: i, count: count, wq: wq)
                if i == count { break }
            }
            defer { i += 1 }
            let a = list &+ UInt64(i * 64)
            guard let p = iommu.translate(a, length: 64, access: .read) else {
                return Outcome(status: DSA.CompletionStatus.batchPageFault.rawValue, bytes: UInt32(i), fault: a)
            }
            member.copyMemory(from: p, byteCount: 64)
            let mflags = member.loadUnaligned(fromByteOffset: DSA.Descriptor.flagsAndOpcode, as: UInt32.self)
            if failed && mflags & DSA.Flags.fence != 0 {
                return Outcome(status: DSA.CompletionStatus.batchFail.rawValue, bytes: UInt32(i))
            }
            if run(UnsafeRawPointer(member), wq: wq, ims: ims, batchIndex: i) != DSA.CompletionStatus.success.rawValue {
                failed = true
            }
        }
        return Outcome(status: failed ? DSA.CompletionStatus.batchFail.rawValue : DSA.CompletionStatus.success.rawValue,
                       bytes: UInt32(count))
    }

    // MARK: The fast path

    /// Executes members `from…` of the batch list at `list` (`count` members) while they are
    /// the common kind, and returns how many it executed: a no-op, memory move or fill that
    /// the general path (``run(_:wq:ims:batchIndex:)``) would run to success without writing a
    /// record or raising an interrupt, so that skipping it changes nothing but the time taken.
    /// That is a member whose opcode the WQ accepts, whose flags are those the general path
    /// allows (``allowedFlags(_:wq:inBatch:completionRecordValid:)``) less RCR and RCI, whose
    /// reserved bytes are zero, whose completion record address (when valid) is 32-byte
    /// aligned, whose size is 1 … the WQ's maximum transfer (at most 64 KiB) and whose buffers
    /// lie in one mapping each, with the access they need (a move's source and destination
    /// apart, as IOVAs and in host memory: an overlapping move takes the general path, which
    /// may refuse it). The IOMMU generation is checked before each member, as it is read on
    /// each access of the general path. No injected failure may be armed
    /// (``MockDSADevice/Fault/failDescriptor(index:status:)``): with one, every member takes
    /// the general path, which counts them.
    ///
    /// The loop is C (``cvfio_dsa_run_members``). When it stops at a member whose list entry
    /// or buffers lie outside the cached mappings, the mappings that hold them are looked up
    /// once and the loop goes on; a member it still cannot take is the general path's
    /// (faults, overlaps, records, interrupts, other opcodes and anything invalid).
    func runFast(list: UInt64, from: Int, count: Int, wq: Int) -> Int {
        guard from < count, injectCountdown.load(ordering: .acquiring) < 0 else { return 0 }
        let r = fastRun
        let generation = iommu.generation
        if r.pointee.generation != generation {
            r.pointee.list = Self.noWindow
            r.pointee.source = Self.noWindow
            r.pointee.destination = Self.noWindow
            r.pointee.generation = generation
        }
        let limits = dword(wqcfg(wq, DSA.WQCfg.limits))
        r.pointee.largest = UInt64(min(1 << Int(limits & DSA.WQCfg.maxTransferShiftMask), 64 << 10))
        r.pointee.allowed = (fastFlags(DSA.Opcode.noop, wq: wq), 0, 0, fastFlags(DSA.Opcode.memmove, wq: wq),
                             fastFlags(DSA.Opcode.fill, wq: wq))
        r.pointee.address = list &+ UInt64(from) &* 64
        r.pointee.remaining = UInt32(truncatingIfNeeded: count - from)
        var done = 0
        while true {
            let n = Int(cvfio_dsa_run_members(r))
            done += n
            // Stopped at a member: once per member, look up the mappings it needs.
            guard r.pointee.remaining != 0, refillWindows(r) else { break }
        }
        if done > 0 {
            operations.add(UInt64(done), ordering: .relaxed)
            fastOperations.add(UInt64(done), ordering: .relaxed)
        }
        return done
    }

    /// The flags the fast path lets a member with opcode `op` carry (0: it does not take `op`).
    private func fastFlags(_ op: UInt8, wq: Int) -> UInt32 {
        guard opcodeAllowed(op, wq: wq) else { return 0 }
        let allowed = allowedFlags(op, wq: wq, inBatch: true, completionRecordValid: true)
        return allowed & ~(DSA.Flags.requestCompletionRecord | DSA.Flags.requestCompletionInterrupt) | Self.fastTakes
    }

    /// A bit outside the flags (bits 23:0) that marks an opcode the fast path takes.
    private static let fastTakes: UInt32 = 1 << 31

    /// A window no access lies in.
    static var noWindow: cvfio_window { cvfio_window(base: ~0, reach: 0, host: UnsafeMutablePointer(bitPattern: 0x1000)!) }

    /// The fast path stopped at the member at `r.address`: replaces the cached list, source or
    /// destination mapping that does not hold what the member needs by the mapping that does.
    /// Returns whether one changed (false: the member is the general path's). Never allocates.
    private func refillWindows(_ r: UnsafeMutablePointer<cvfio_dsa_run>) -> Bool {
        let a = r.pointee.address
        guard iommu.generation == r.pointee.generation else { return false }
        if !Self.holds(r.pointee.list, a, 64, span: 64) {
            guard let w = window(containing: a, access: .read, span: 64), Self.holds(w, a, 64, span: 64) else { return false }
            r.pointee.list = w
            return iommu.generation == r.pointee.generation
        }
        let d = UnsafeRawPointer(r.pointee.list.host) + Int(truncatingIfNeeded: a &- r.pointee.list.base)
        let op = d.load(fromByteOffset: DSA.Descriptor.opcode, as: UInt8.self)
        guard op == DSA.Opcode.memmove || op == DSA.Opcode.fill else { return false }
        let size = UInt64(d.loadUnaligned(fromByteOffset: DSA.Descriptor.transferSize, as: UInt32.self))
        let src = d.loadUnaligned(fromByteOffset: DSA.Descriptor.source, as: UInt64.self)
        let dst = d.loadUnaligned(fromByteOffset: DSA.Descriptor.destination, as: UInt64.self)
        var changed = false
        if !Self.holds(r.pointee.destination, dst, size, span: 1) {
            guard let w = window(containing: dst, access: .write, span: 1), Self.holds(w, dst, size, span: 1) else { return false }
            r.pointee.destination = w
            changed = true
        }
        if op == DSA.Opcode.memmove && !Self.holds(r.pointee.source, src, size, span: 1) {
            guard let w = window(containing: src, access: .read, span: 1), Self.holds(w, src, size, span: 1) else { return false }
            r.pointee.source = w
            changed = true
        }
        return changed && iommu.generation == r.pointee.generation
    }

    /// Whether an access of `size` bytes at `a` lies in window `w`, whose reach counts
    /// accesses of `span` bytes from its base (`size` ≥ `span`).
    @inline(__always)
    private static func holds(_ w: cvfio_window, _ a: UInt64, _ size: UInt64, span: UInt64) -> Bool {
        let off = a &- w.base
        return size >= span && off <= w.reach && size &- span <= w.reach &- off
    }

    /// The window of the mapping that contains `iova`, for accesses of `span` bytes (1: any
    /// size up to the mapping's end, checked by the loop; 64: a descriptor), when the device
    /// may make `access`es there; only its part below 2^48 (``SoftIOMMU/addressLimit``).
    private func window(containing iova: UInt64, access: DMAAccess, span: UInt64) -> cvfio_window? {
        guard let m = iommu.mapping(containing: iova), m.access.contains(access),
              let host = UnsafeMutablePointer<CChar>(bitPattern: m.address) else { return nil }
        let last = min(m.iova &+ UInt64(m.length) &- 1, SoftIOMMU.addressLimit)
        guard last >= m.iova &+ (span &- 1) else { return nil }
        return cvfio_window(base: m.iova, reach: last &- m.iova &- (span &- 1), host: host)
    }
}

/// CRC-32C (Castagnoli, reflected polynomial 0x82F63B78), the CRC DSA computes.
enum CRC32C {
    /// The byte-wise lookup table, built once.
    nonisolated(unsafe) static let table: UnsafeMutablePointer<UInt32> = {
        let t = UnsafeMutablePointer<UInt32>.allocate(capacity: 256)
        for i in 0..<256 {
            var c = UInt32(i)
            for _ in 0..<8 { c = c & 1 != 0 ? (c >> 1) ^ 0x82F6_3B78 : c >> 1 }
            t[i] = c
        }
        return t
    }()

    /// `v` with its bits in reverse order.
    static func reversed(_ v: UInt32) -> UInt32 {
        var v = v, r: UInt32 = 0
        for _ in 0..<32 { r = (r << 1) | (v & 1); v >>= 1 }
        return r
    }
}
