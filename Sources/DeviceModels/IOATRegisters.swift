import CVFIO
import Hardware
import Platform
import Synchronization

/// BAR0 decoding: which register an offset belongs to, and each register's read and write rules.
///
/// Any access of any width at any offset is accepted: it is split over the registers it
/// overlaps, each register sees one read or one write with a byte-enable mask (as a PCIe
/// endpoint would), undefined offsets read 0 and ignore writes, and an access outside the BAR
/// or with memory decoding disabled reads all ones and is dropped. Nothing a driver writes can
/// crash the model.
extension IOATDeviceCore {
    enum Register {
        case chancnt, xfercap, genctrl, intrctrl, attnstatus, cbver, perportoffset, intrdelay, csStatus
        case dmacapability, dcaoffset, prefetchLimit
        case chanctrl(Int), dmaComp(Int), chancmd(Int), dmacount(Int), chansts(Int), chainaddr(Int)
        case chancmp(Int), cdar(Int), chanerr(Int), chanerrMask(Int), dcactrl(Int)
        case drsctl(Int), ltrSwsel(Int), ltrActive(Int), ltrIdle(Int)
        case msix(Int)  // dword index into the table
        case pba
        case none
    }

    /// The register at `offset`: (register, its first byte, its size).
    func locate(_ offset: Int) -> (Register, Int, Int) {
        if offset < 0x80 {
            switch offset {
            case 0x00: return (.chancnt, 0, 1)
            case 0x01: return (.xfercap, 1, 1)
            case 0x02: return (.genctrl, 2, 1)
            case 0x03: return (.intrctrl, 3, 1)
            case 0x04...0x07: return (.attnstatus, 4, 4)
            case 0x08: return (.cbver, 8, 1)
            case 0x0A...0x0B: return (.perportoffset, 0x0A, 2)
            case 0x0C...0x0D: return (.intrdelay, 0x0C, 2)
            case 0x0E...0x0F: return (.csStatus, 0x0E, 2)
            case 0x10...0x13: return (.dmacapability, 0x10, 4)
            case 0x14...0x15: return (.dcaoffset, 0x14, 2)
            case 0x4C where profile.capabilities.contains(.descriptorPrefetch): return (.prefetchLimit, 0x4C, 1)
            default: return (.none, offset, 1)
            }
        }
        let tableEnd = profile.msixTableOffset + vectorCount * IOAT.msixEntrySize
        if offset >= profile.msixTableOffset && offset < tableEnd {
            let i = (offset - profile.msixTableOffset) / 4
            return (.msix(i), profile.msixTableOffset + i * 4, 4)
        }
        if offset >= profile.msixPBAOffset && offset < profile.msixPBAOffset + 8 { return (.pba, profile.msixPBAOffset, 8) }
        var c = offset / 0x80 - 1
        var rel = offset - IOAT.channelBase(c)
        if c >= channelCount {
            // The 3.4 extras of the last channel lie beyond its 0x80 stride.
            c = channelCount - 1
            rel = offset - IOAT.channelBase(c)
            guard profile.cbver >= 0x34, rel < 0xC8 else { return (.none, offset, 1) }
        }
        let base = IOAT.channelBase(c)
        if v1 {
            switch rel {
            case 0x00...0x01: return (.chanctrl(c), base, 2)
            case 0x02...0x03: return (.dmaComp(c), base + 0x02, 2)
            case 0x04...0x0B: return (.chansts(c), base + 0x04, 8)
            case 0x0C...0x13: return (.chainaddr(c), base + 0x0C, 8)
            case 0x14: return (.chancmd(c), base + 0x14, 1)
            case 0x18...0x1F: return (.chancmp(c), base + 0x18, 8)
            case 0x20...0x27: return (.cdar(c), base + 0x20, 8)
            case 0x28...0x2B: return (.chanerr(c), base + 0x28, 4)
            case 0x2C...0x2F: return (.chanerrMask(c), base + 0x2C, 4)
            default: return (.none, offset, 1)
            }
        }
        switch rel {
        case 0x00...0x01: return (.chanctrl(c), base, 2)
        case 0x02...0x03: return (.dmaComp(c), base + 0x02, 2)
        case 0x04: return (.chancmd(c), base + 0x04, 1)
        case 0x06...0x07: return (.dmacount(c), base + 0x06, 2)
        case 0x08...0x0F: return (.chansts(c), base + 0x08, 8)
        case 0x10...0x17: return (.chainaddr(c), base + 0x10, 8)
        case 0x18...0x1F: return (.chancmp(c), base + 0x18, 8)
        case 0x20...0x27: return (.cdar(c), base + 0x20, 8)
        case 0x28...0x2B: return (.chanerr(c), base + 0x28, 4)
        case 0x2C...0x2F: return (.chanerrMask(c), base + 0x2C, 4)
        case 0x30...0x33: return (.dcactrl(c), base + 0x30, 4)
        case 0xB6...0xB7 where profile.cbver >= 0x34: return (.drsctl(c), base + 0xB6, 2)
        case 0xBC where profile.cbver >= 0x34: return (.ltrSwsel(c), base + 0xBC, 1)
        case 0xC0...0xC3 where profile.cbver >= 0x34: return (.ltrActive(c), base + 0xC0, 4)
        case 0xC4...0xC7 where profile.cbver >= 0x34: return (.ltrIdle(c), base + 0xC4, 4)
        default: return (.none, offset, 1)
        }
    }

    // MARK: Access entry points

    /// Reads `width` bytes at `offset`.
    func read(_ offset: Int, width: Int) -> UInt64 {
        let ones: UInt64 = width == 8 ? ~0 : (1 << UInt64(width * 8)) - 1
        guard offset >= 0, offset <= profile.bar0Size - width, config.memoryDecode else { return ones }
        var result: UInt64 = 0
        var o = offset
        let end = offset + width
        while o < end {
            let (reg, start, size) = locate(o)
            let value = readRegister(reg, fullAccess: start == offset && size == width)
            let first = o - start
            let n = min(start + size, end) - o
            let bytes = (value >> UInt64(first * 8)) & (n == 8 ? ~0 : (1 << UInt64(n * 8)) - 1)
            result |= bytes << UInt64((o - offset) * 8)
            o += n
        }
        return result
    }

    /// Writes the low `width` bytes of `value` at `offset`.
    func write(_ offset: Int, width: Int, _ value: UInt64) {
        guard offset >= 0, offset <= profile.bar0Size - width, config.memoryDecode else { return }
        var o = offset
        let end = offset + width
        while o < end {
            let (reg, start, size) = locate(o)
            let first = o - start
            let n = min(start + size, end) - o
            let bytes = (value >> UInt64((o - offset) * 8)) & (n == 8 ? ~0 : (1 << UInt64(n * 8)) - 1)
            let mask: UInt64 = (n == 8 ? ~0 : (1 << UInt64(n * 8)) - 1) << UInt64(first * 8)
            writeRegister(reg, bytes << UInt64(first * 8), mask: mask, size: size)
            o += n
        }
    }

    @inline(__always)
    static func merge<T: FixedWidthInteger>(_ old: T, _ value: UInt64, _ mask: UInt64) -> T {
        T(truncatingIfNeeded: (UInt64(truncatingIfNeeded: old) & ~mask) | (value & mask))
    }

    // MARK: Reads

    func readRegister(_ reg: Register, fullAccess: Bool) -> UInt64 {
        switch reg {
        case .chancnt: return UInt64(channelCount & 0x1F)
        case .xfercap: return UInt64(profile.xfercap & 0x1F)
        case .genctrl: return UInt64(genCtrl.load(ordering: .relaxed))
        case .intrctrl:
            var v = intrCtrl.load(ordering: .relaxed)
            if attnStatus.load(ordering: .relaxed) != 0 {
                v |= UInt32(IOAT.IntrCtrl.intStatus.rawValue)
                if v & UInt32(IOAT.IntrCtrl.masterIntEnable.rawValue) != 0 { v |= UInt32(IOAT.IntrCtrl.int.rawValue) }
            }
            return UInt64(v)
        case .attnstatus: return UInt64(attnStatus.load(ordering: .acquiring))
        case .cbver: return UInt64(profile.cbver)
        case .perportoffset, .csStatus: return 0
        case .intrdelay: return UInt64(intrDelay.load(ordering: .relaxed))
        case .dmacapability: return UInt64(profile.capabilities.rawValue)
        case .dcaoffset: return 0
        case .prefetchLimit: return UInt64(prefetchLimit.load(ordering: .relaxed))
        case .chanctrl(let c):
            return UInt64(channels[c].chanctrl.load(ordering: .relaxed) | (channels[c].intArmed.load(ordering: .relaxed) ? 1 : 0))
        case .dmaComp: return v1 ? 0x1 : 0x2
        case .chancmd(let c): return UInt64(readChanCmd(c))
        case .dmacount(let c): return UInt64(Ctl.dmacount(channels[c].ctl.load(ordering: .relaxed)))
        case .chansts(let c): return readChanSts(c, fullAccess: fullAccess)
        case .chainaddr(let c): return channels[c].chainAddr.load(ordering: .relaxed)
        case .chancmp(let c): return channels[c].chanCmp.load(ordering: .relaxed)
        case .cdar(let c): return channels[c].cdar.load(ordering: .relaxed)
        case .chanerr(let c): return UInt64(channels[c].chanerr.load(ordering: .acquiring))
        case .chanerrMask(let c): return UInt64(channels[c].chanerrMask.load(ordering: .relaxed))
        case .dcactrl(let c): return UInt64(channels[c].dcactrl.load(ordering: .relaxed))
        case .drsctl(let c): return UInt64(channels[c].drsctl.load(ordering: .relaxed))
        case .ltrSwsel(let c): return UInt64(channels[c].ltrSwsel.load(ordering: .relaxed))
        case .ltrActive(let c): return UInt64(channels[c].ltrActive.load(ordering: .relaxed))
        case .ltrIdle(let c): return UInt64(channels[c].ltrIdle.load(ordering: .relaxed))
        case .msix(let i): return UInt64(msix[i].load(ordering: .relaxed))
        case .pba: return pba.load(ordering: .relaxed)
        case .none: return 0
        }
    }

    /// CHANCMD reads back the RESET bit while the reset is in progress: until the configured
    /// number of reads has seen it, or the configured time has passed, and never before a reset
    /// posted to a running channel has been applied.
    func readChanCmd(_ c: Int) -> UInt8 {
        let ch = channels + c
        let v = ch.pointee.ctl.load(ordering: .acquiring)
        if v & Ctl.reqReset != 0 { return IOAT.ChanCmd.reset.rawValue }
        guard resetInProgress(c) else { return 0 }
        _ = ch.pointee.resetReadsLeft.wrappingSubtract(1, ordering: .relaxed)
        return IOAT.ChanCmd.reset.rawValue
    }

    /// Whether channel `c`'s RESET still reads back as in progress (without consuming a read).
    func resetInProgress(_ c: Int) -> Bool {
        let ch = channels + c
        if ch.pointee.ctl.load(ordering: .acquiring) & Ctl.reqReset != 0 { return true }
        let reads = ch.pointee.resetReadsLeft.load(ordering: .relaxed)
        guard reads > 0 else { return false }
        let until = ch.pointee.resetUntil.load(ordering: .relaxed)
        if until != 0 && monotonicNanoseconds() >= until {
            ch.pointee.resetReadsLeft.store(0, ordering: .relaxed)
            return false
        }
        return true
    }

    /// CHANSTS: last completed descriptor | SOFT_ERR | UNAFFILIATED_ERR | state. Below 3.3 a
    /// single 64-bit read of a running channel tears: the low half is current, the high half
    /// is that of the previous completed address (the engine was updating it).
    func readChanSts(_ c: Int, fullAccess: Bool) -> UInt64 {
        let ch = channels + c
        let v = ch.pointee.ctl.load(ordering: .acquiring)
        var value = ch.pointee.completed.load(ordering: .acquiring) & IOAT.ChanSts.completedDescriptorMask
        value |= Ctl.state(v)
        if v & Ctl.softError != 0 { value |= IOAT.ChanSts.softError }
        if v & Ctl.unaffiliated != 0 { value |= IOAT.ChanSts.unaffiliatedError }
        if fullAccess && profile.tornChanstsReads && Ctl.state(v) == Ctl.active {
            let previous = ch.pointee.previousCompleted.load(ordering: .relaxed)
            return (value & 0xFFFF_FFFF) | (previous & 0xFFFF_FFFF_0000_0000)
        }
        return value
    }

    // MARK: Writes

    func writeRegister(_ reg: Register, _ value: UInt64, mask: UInt64, size: Int) {
        switch reg {
        case .genctrl: genCtrl.store(UInt32(value & mask & 1) | (genCtrl.load(ordering: .relaxed) & ~UInt32(mask & 1)), ordering: .relaxed)
        case .intrctrl:
            let writable: UInt64 = UInt64(IOAT.IntrCtrl.masterIntEnable.rawValue | IOAT.IntrCtrl.msixVectorControl.rawValue)
            let m = mask & writable
            intrCtrl.store(Self.merge(intrCtrl.load(ordering: .relaxed), value, m), ordering: .relaxed)
        case .intrdelay:
            let m = mask & UInt64(IOAT.intrDelayMask)
            guard profile.major >= 3 else { return }
            intrDelay.store(Self.merge(intrDelay.load(ordering: .relaxed), value, m), ordering: .relaxed)
        case .prefetchLimit: prefetchLimit.store(Self.merge(prefetchLimit.load(ordering: .relaxed), value, mask & 0xFF), ordering: .relaxed)
        case .chanctrl(let c): writeChanCtrl(c, value, mask: mask)
        case .chancmd(let c): if mask & 0xFF != 0 { writeChanCmd(c, UInt8(truncatingIfNeeded: value)) }
        case .dmacount(let c):
            let old = UInt64(Ctl.dmacount(channels[c].ctl.load(ordering: .relaxed)))
            doorbell(c, UInt16(truncatingIfNeeded: (old & ~mask) | (value & mask)))
        case .chainaddr(let c): writeChainAddr(c, value, mask: mask)
        case .chancmp(let c):
            let ch = channels + c
            if mask == ~0 && profile.splitsWide64BitWrites {
                droppedWideWrites.add(1, ordering: .relaxed)
                return
            }
            let new = Self.merge(ch.pointee.chanCmp.load(ordering: .relaxed), value, mask)
            ch.pointee.chanCmp.store(new, ordering: .relaxed)
            if mask & 0xFFFF_FFFF_0000_0000 != 0 { ch.pointee.chanCmpCommitted.store(new, ordering: .releasing) }
        case .chanerr(let c):
            let bits = UInt32(truncatingIfNeeded: value & mask)
            channels[c].chanerr.bitwiseAnd(~bits, ordering: .acquiringAndReleasing)
        case .chanerrMask(let c):
            channels[c].chanerrMask.store(Self.merge(channels[c].chanerrMask.load(ordering: .relaxed), value, mask), ordering: .relaxed)
        case .dcactrl(let c):
            channels[c].dcactrl.store(Self.merge(channels[c].dcactrl.load(ordering: .relaxed), value, mask), ordering: .relaxed)
        case .drsctl(let c):
            channels[c].drsctl.store(Self.merge(channels[c].drsctl.load(ordering: .relaxed), value, mask & 0x030F), ordering: .relaxed)
        case .ltrSwsel(let c):
            channels[c].ltrSwsel.store(Self.merge(channels[c].ltrSwsel.load(ordering: .relaxed), value, mask & 1), ordering: .relaxed)
        case .ltrActive(let c):
            channels[c].ltrActive.store(Self.merge(channels[c].ltrActive.load(ordering: .relaxed), value, mask), ordering: .relaxed)
        case .ltrIdle(let c):
            channels[c].ltrIdle.store(Self.merge(channels[c].ltrIdle.load(ordering: .relaxed), value, mask), ordering: .relaxed)
        case .msix(let i):
            msix[i].store(Self.merge(msix[i].load(ordering: .relaxed), value, mask), ordering: .releasing)
            if i % 4 == 3 { deliverPending() }
        case .chancnt, .xfercap, .attnstatus, .cbver, .perportoffset, .csStatus, .dmacapability, .dcaoffset,
             .dmaComp, .chansts, .cdar, .pba, .none:
            return  // read-only or undefined
        }
    }

    /// CHANCTRL: bit 0 (INT_REARM) arms the channel interrupt once and clears its ATTNSTATUS bit.
    func writeChanCtrl(_ c: Int, _ value: UInt64, mask: UInt64) {
        let ch = channels + c
        let new = Self.merge(ch.pointee.chanctrl.load(ordering: .relaxed), value, mask & 0xFFFF)
        ch.pointee.chanctrl.store(new & ~1, ordering: .releasing)
        if mask & 1 != 0 && new & 1 != 0 {
            attnStatus.bitwiseAnd(~(1 << UInt32(c)), ordering: .relaxed)
            ch.pointee.intArmed.store(true, ordering: .releasing)
        }
    }

    // MARK: State-changing writes

    /// Takes the channel's writer bit; returns the control word it held.
    @inline(__always)
    func lockChannel(_ c: Int) -> UInt64 {
        let ch = channels + c
        while true {
            let v = ch.pointee.ctl.load(ordering: .relaxed)
            if v & Ctl.busy != 0 { cvfio_pause(); continue }
            if ch.pointee.ctl.compareExchange(expected: v, desired: v | Ctl.busy, ordering: .acquiring).exchanged { return v }
        }
    }

    @inline(__always)
    func unlockChannel(_ c: Int, _ v: UInt64) {
        channels[c].ctl.store(v & ~Ctl.busy, ordering: .releasing)
    }

    /// DMACOUNT: the doorbell. From ARMED or DONE, a value different from the engine's count
    /// makes the channel ACTIVE at once (one compare-and-swap); the engine runs until they match.
    func doorbell(_ c: Int, _ value: UInt16) {
        let ch = channels + c
        var v = ch.pointee.ctl.load(ordering: .relaxed)
        while true {
            if v & Ctl.busy != 0 { cvfio_pause(); v = ch.pointee.ctl.load(ordering: .relaxed); continue }
            var nv = Ctl.with(v, dmacount: value)
            let state = Ctl.state(v)
            var start = false
            if !v1, state == Ctl.armed || state == Ctl.done, value != Ctl.count(v) {
                nv = Ctl.with(nv, state: Ctl.active)
                start = true
            }
            let r = ch.pointee.ctl.compareExchange(expected: v, desired: nv, ordering: .sequentiallyConsistent)
            if r.exchanged {
                if start || state == Ctl.active { wake() }
                return
            }
            v = r.original
        }
    }

    /// CHAINADDR: latched on a 64-bit write (3.3 and later) or on the high-half write of a
    /// 32-bit pair. Latching resets the count and, from HALTED (after RESET), SUSPENDED, DONE
    /// or ARMED, arms the channel. See ``MockIOATDevice`` for the halt-recovery rules.
    func writeChainAddr(_ c: Int, _ value: UInt64, mask: UInt64) {
        let ch = channels + c
        if mask == ~0 && profile.splitsWide64BitWrites {
            droppedWideWrites.add(1, ordering: .relaxed)
            return
        }
        if !profile.recoversFromHalt && resetInProgress(c) {
            // Before 3.4 the channel ignores CHAINADDR until its reset has completed.
            droppedChainWrites.add(1, ordering: .relaxed)
            return
        }
        let v = lockChannel(c)
        let new = Self.merge(ch.pointee.chainAddr.load(ordering: .relaxed), value, mask)
        ch.pointee.chainAddr.store(new, ordering: .relaxed)
        var nv = v
        if mask & 0xFFFF_FFFF_0000_0000 != 0 && !v1 {
            let state = Ctl.state(v)
            let errorHalted = v & Ctl.errorHalt != 0
            let canArm: Bool
            switch state {
            case Ctl.active: canArm = false
            case Ctl.halted:
                canArm = ch.pointee.chanerr.load(ordering: .acquiring) == 0 && (!errorHalted || profile.recoversFromHalt)
            default: canArm = true
            }
            if canArm {
                ch.pointee.nextDescriptor.store(new, ordering: .relaxed)
                ch.pointee.lastDescriptor.store(0, ordering: .relaxed)
                ch.pointee.completed.store(0, ordering: .relaxed)
                ch.pointee.previousCompleted.store(0, ordering: .relaxed)
                nv = Ctl.with(Ctl.with(v, count: 0), state: Ctl.armed) | Ctl.fresh
                nv &= ~(Ctl.errorHalt | Ctl.softError | Ctl.unaffiliated)
            }
        }
        unlockChannel(c, nv)
    }

    /// CHANCMD: RESET, SUSPEND, ABORT, RESUME, and on 1.x START and APPEND. Applied at once
    /// unless the channel is ACTIVE, in which case the engine applies it after the current descriptor.
    func writeChanCmd(_ c: Int, _ command: UInt8) {
        let ch = channels + c
        let cmd = IOAT.ChanCmd(rawValue: command)
        guard !cmd.isEmpty else { return }
        let v = lockChannel(c)
        let state = Ctl.state(v)
        var nv = v
        var resetNow = false
        if cmd.contains(.reset) {
            ch.pointee.resetReadsLeft.store(max(0, options.resetReads), ordering: .relaxed)
            ch.pointee.resetUntil.store(options.resetMicroseconds > 0
                ? monotonicNanoseconds() &+ UInt64(options.resetMicroseconds) &* 1000 : 0, ordering: .relaxed)
            if state == Ctl.active {
                // The registers reset now; the engine stops after the current descriptor.
                clearForReset(c, engine: false, registers: true)
                nv = (v & ~Ctl.requests) | Ctl.reqReset
            } else {
                clearForReset(c)
                nv = resetValue(v)
                resetNow = true
            }
        } else if cmd.contains(.abort) {
            if state == Ctl.active { nv |= Ctl.reqAbort } else if state != Ctl.halted { nv = Ctl.with(v, state: Ctl.halted) }
        } else if cmd.contains(.suspend) {
            switch state {
            case Ctl.active: nv |= Ctl.reqSuspend
            case Ctl.done, Ctl.armed: nv = Ctl.with(v, state: Ctl.suspended)
            default: break
            }
        } else if cmd.contains(.resume) {
            if state == Ctl.suspended {
                let pending = v1 ? ch.pointee.nextDescriptor.load(ordering: .relaxed) != 0 : Ctl.count(v) != Ctl.dmacount(v)
                nv = Ctl.with(v, state: pending ? Ctl.active : Ctl.done)
            }
        } else if v1 && cmd.contains(.start) {
            if state != Ctl.active {
                let chain = ch.pointee.chainAddr.load(ordering: .relaxed)
                ch.pointee.nextDescriptor.store(chain, ordering: .relaxed)
                ch.pointee.lastDescriptor.store(0, ordering: .relaxed)
                ch.pointee.completed.store(0, ordering: .relaxed)
                nv = Ctl.with(Ctl.with(v, count: 0), state: Ctl.active) | Ctl.fresh
                nv &= ~(Ctl.errorHalt | Ctl.softError | Ctl.unaffiliated)
            }
        } else if v1 && cmd.contains(.append) {
            if state == Ctl.active {
                nv |= Ctl.reqAppend
            } else if state == Ctl.done {
                let last = ch.pointee.lastDescriptor.load(ordering: .relaxed)
                let n = readNextForWriter(last)
                if n != 0 {
                    ch.pointee.nextDescriptor.store(n, ordering: .relaxed)
                    nv = Ctl.with(v, state: Ctl.active)
                }
            }
        }
        unlockChannel(c, nv)
        if resetNow { afterReset(c) }
        if Ctl.state(nv) == Ctl.active { wake() }
    }

    /// Reads a descriptor's `next` from a register-writer thread (no translation cache).
    func readNextForWriter(_ address: UInt64) -> UInt64 {
        guard address != 0, address & 0x3F == 0,
              let p = iommu.translate(address, length: 64, access: .read) else { return 0 }
        return p.load(fromByteOffset: IOAT.DescriptorField.next, as: UInt64.self)
    }
}
