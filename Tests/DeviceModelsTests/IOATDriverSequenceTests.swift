import DeviceModels
import Hardware
import Platform
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// The init/submit/completion/recovery sequences of real drivers (ioat.md §6), register by register.
@Suite("CBDMA model: driver sequences")
struct IOATDriverSequenceTests {
    /// Linux ioatdma probe and channel allocation (§6.4), on every v3 profile.
    @Test("Linux ioatdma: reset_hw, CHANCTRL 0x1D, split CHANCMP/CHAINADDR, NULL + DMACOUNT 1, self-test copy",
          arguments: ["tbg", "snb", "bdx", "skx", "bwd", "bdxde", "icx"])
    func linux(_ name: String) throws {
        let rig = IOATRig(name)
        let bar = rig.bar, ch = rig.ch, config = rig.device.config
        let event = try EventFD()
        rig.enableBusMaster()
        #expect(bar.read8(IOAT.CBVER) >= 0x30)
        let version = name == "skx" ? 0x32 : bar.read8(IOAT.CBVER)  // Linux forces 3.2 on SKX
        let table = rig.profile.msixTableOffset, pba = rig.profile.msixPBAOffset
        try rig.device.routeInterrupts(start: 0, eventFDs: [event.rawValue])
        bar.write8(IOAT.INTRCTRL, 0x09)
        // reset_hw
        let sts = bar.read64Split(ch + IOAT.CHANSTS) & 7
        if sts == 0 || sts == 1 { bar.write8(ch + IOAT.CHANCMD, 0x04) }
        bar.write32(ch + IOAT.CHANERR, bar.read32(ch + IOAT.CHANERR))
        if version < 0x33 {
            config.write32(IOAT.configCHANERR_INT, config.read32(IOAT.configCHANERR_INT))
            if rig.profile.deviceID == 0x3430 { config.write32(IOAT.configDMAUNCERRSTS, 0x10) }
        }
        let saved = rig.profile.resetClobbersMSIX ? [bar.read64(table), bar.read64(table + 8), bar.read64(pba)] : []
        bar.write8(ch + IOAT.CHANCMD, 0x20)
        var polls = 0
        while bar.read8(ch + IOAT.CHANCMD) & 0x20 != 0 && polls < 200 { polls += 1 }
        #expect(polls < 200)
        if !saved.isEmpty { bar.write64(table, saved[0]); bar.write64(table + 8, saved[1]); bar.write64(pba, saved[2]) }
        if rig.profile.deviceID == 0x3430 {
            config.write32(IOAT.configDMAUNCERRSTS, 0x10)
            #expect(config.read32(IOAT.configDMAUNCERRSTS) == 0)
        }
        // alloc_chan_resources
        let comp = try Completion(rig)
        let ring = try Ring(rig, count: 64)
        bar.write16(ch + IOAT.CHANCTRL, 0x1D)
        bar.write32(ch + IOAT.CHANCMP, UInt32(truncatingIfNeeded: comp.iova))
        bar.write32(ch + IOAT.CHANCMP + 4, UInt32(truncatingIfNeeded: comp.iova >> 32))
        if rig.profile.cbver >= 0x34 {
            bar.write16(ch + IOAT.DRSCTL, 0x0309)
            bar.write32(ch + IOAT.LTR_ACTIVE, 0x8800)
            bar.write32(ch + IOAT.LTR_IDLE, 0x8A58)
            bar.write8(ch + IOAT.LTR_SWSEL, 0)
        }
        ring.set(0, size: 1, control: IOAT.DescriptorControl.null | IE | CW)
        bar.write32(ch + IOAT.CHAINADDR, UInt32(truncatingIfNeeded: ring.base))
        bar.write32(ch + IOAT.CHAINADDR + 4, UInt32(truncatingIfNeeded: ring.base >> 32))
        #expect(bar.read32(ch + IOAT.CHANSTS) & 7 == 4)
        bar.write16(ch + IOAT.DMACOUNT, 1)
        var seen = false
        for _ in 0..<20 {
            rig.device.step()
            let s = bar.read32(ch + IOAT.CHANSTS) & 7
            if s == 0 || s == 1 { seen = true; break }
        }
        #expect(seen)
        rig.device.runUntilIdle()
        #expect(comp.value == ring.iova(0) | 1)
        #expect(waitEvent(event, milliseconds: 100) == 1)
        // Self-test: a 2000-byte copy with an interrupt; cleanup re-arms with CHANCTRL = 0x1D.
        bar.write16(ch + IOAT.CHANCTRL, 0x1D)
        let src = try rig.allocate(2000), dst = try rig.allocate(2000)
        fillRandom(src.base, 2000, seed: 77)
        ring.copy(1, 2000, src: src.iova, dst: dst.iova, IE | CW | IOAT.DescriptorControl.fence)
        bar.write16(ch + IOAT.DMACOUNT, 2)
        rig.device.runUntilIdle()
        #expect(waitEvent(event, milliseconds: 100) == 1)
        #expect(comp.value == ring.iova(1) | 1)
        #expect(memcmp(src.base, dst.base, 2000) == 0)
        for c in 0..<Int(bar.read8(IOAT.CHANCNT) & 0x1F) { bar.write32(IOAT.channelBase(c) + IOAT.DCACTRL, 0xFFFF_FFFF) }
        if rig.profile.capabilities.contains(.descriptorPrefetch) { bar.write8(IOAT.CHWPREFLMT, 8) }
        // Error path (§6.4): a read-data error; complete it failed, reset, restart at the tail.
        rig.device.inject(.failDescriptor(index: 0, error: .readData))
        ring.copy(2, 100, src: src.iova, dst: dst.iova, CW)
        ring.null(3, CW)
        bar.write16(ch + IOAT.DMACOUNT, 4)
        rig.device.runUntilIdle()
        #expect(bar.read32(ch + IOAT.CHANSTS) & 7 == 3)
        let err = IOAT.ChanErr(rawValue: bar.read32(ch + IOAT.CHANERR))
        #expect(err == .readData, "recoverable in Linux (no BUG())")
        #expect(comp.address == ring.iova(1), "tail = the failing descriptor, slot 2")
        bar.write32(ch + IOAT.CHANERR, err.rawValue)
        if version < 0x33 { config.write32(IOAT.configCHANERR_INT, config.read32(IOAT.configCHANERR_INT)) }
        let saved2 = rig.profile.resetClobbersMSIX ? [bar.read64(table), bar.read64(table + 8), bar.read64(pba)] : []
        bar.write8(ch + IOAT.CHANCMD, 0x20)
        while bar.read8(ch + IOAT.CHANCMD) & 0x20 != 0 {}
        if !saved2.isEmpty { bar.write64(table, saved2[0]); bar.write64(table + 8, saved2[1]); bar.write64(pba, saved2[2]) }
        bar.write16(ch + IOAT.CHANCTRL, 0x1D)
        bar.write64Split(ch + IOAT.CHANCMP, comp.iova)
        bar.write64Split(ch + IOAT.CHAINADDR, ring.iova(3))
        bar.write16(ch + IOAT.DMACOUNT, 1)
        rig.device.runUntilIdle()
        #expect(comp.value == ring.iova(3) | 1)
        #expect(bar.read32(ch + IOAT.CHANERR) == 0)
    }

    /// The Linux VFIO selftest driver (§6.5): one descriptor whose next is itself, CHANSTS polling.
    @Test("VFIO selftest: self-linked descriptor run n times, poll CHANSTS DONE, SUSPEND, rewrite CHAINADDR")
    func vfioSelftest() throws {
        let rig = IOATRig("skx")
        let bar = rig.bar, ch = rig.ch
        let desc = try rig.allocate(4096)
        let src = try rig.allocate(4096), dst = try rig.allocate(4096)
        fillRandom(src.base, 4096, seed: 3)
        rig.device.config.write16(0x04, 0x0406)
        let cbver = bar.read8(IOAT.CBVER)
        #expect(cbver == 0x32 || cbver == 0x33)
        rig.device.config.write32(IOAT.configCHANERR_INT, rig.device.config.read32(IOAT.configCHANERR_INT))
        bar.write32(ch + IOAT.CHANERR, bar.read32(ch + IOAT.CHANERR))
        bar.write8(ch + IOAT.CHANCMD, 0x20)
        while bar.read8(ch + IOAT.CHANCMD) & 0x20 != 0 {}
        #expect(bar.read64(ch + IOAT.CHANSTS) & 7 == 3)
        bar.write8(IOAT.INTRCTRL, 0x08)
        for round in 0..<3 {
            let p = desc.base
            p.storeBytes(of: UInt32(4096), toByteOffset: 0, as: UInt32.self)
            p.storeBytes(of: UInt32(0), toByteOffset: 4, as: UInt32.self)
            p.storeBytes(of: src.iova, toByteOffset: 8, as: UInt64.self)
            p.storeBytes(of: dst.iova, toByteOffset: 16, as: UInt64.self)
            p.storeBytes(of: desc.iova, toByteOffset: 24, as: UInt64.self)
            bar.write64Split(ch + IOAT.CHAINADDR, desc.iova)
            bar.write16(ch + IOAT.CHANCTRL, 0x09)
            #expect(bar.read64(ch + IOAT.CHANSTS) & 7 == 4, "round \(round)")
            bar.write16(ch + IOAT.DMACOUNT, 5)
            var spins = 0
            while bar.read64(ch + IOAT.CHANSTS) & 7 != 1 && spins < 100 { rig.device.step(); spins += 1 }
            #expect(bar.read64(ch + IOAT.CHANSTS) & 7 == 1)
            #expect(memcmp(src.base, dst.base, 4096) == 0)
            bar.write8(ch + IOAT.CHANCMD, 0x04)
            #expect(bar.read64(ch + IOAT.CHANSTS) & 7 == 2)
        }
        #expect(rig.device.statistics.descriptorsExecuted == 15)
    }

    /// The recommended sequence of §6.8, steady state with a ring that wraps, on every v3 profile.
    @Test("§6.8: probe, quiesce, reset, ring, ARMED, NULL, steady state across ring wrap, halt handling",
          arguments: ["tbg", "bdx", "skx", "bwd", "bdxde", "icx"])
    func recommended(_ name: String) throws {
        let rig = IOATRig(name, execution: .thread)
        let bar = rig.bar, ch = rig.ch
        let xfercap = bar.read8(IOAT.XFERCAP) & 0x1F
        #expect(xfercap >= 12)
        let ring = try Ring(rig, count: 64)
        let comp = try Completion(rig)
        rig.start(ring: ring.base, completion: comp.iova)
        #expect(rig.chansts() & 7 == 4)
        ring.null(0, CW)
        rig.doorbell(1)
        rig.run()
        #expect(comp.value == ring.iova(0) | 1)
        // Steady state: 10 batches of 16 copies, the ring wraps twice; completion address walks.
        let src = try rig.allocate(1 << 16), dst = try rig.allocate(1 << 16)
        fillRandom(src.base, 1 << 16, seed: 8)
        var head = 1
        for batch in 0..<10 {
            memset(dst.base, 0, 1 << 16)
            for i in 0..<16 {
                let size = 64 + batch * 100 + i * 31
                ring.copy(head, size, src: src.iova(at: i * 4096), dst: dst.iova(at: i * 4096), i == 15 ? CW : 0)
                head += 1
            }
            bar.write16(ch + IOAT.DMACOUNT, UInt16(head & 0xFFFF))
            let last = ring.iova(head - 1)
            let deadline = ContinuousClock.now + .seconds(5)
            while comp.address != last && ContinuousClock.now < deadline { sched_yield() }
            #expect(comp.address == last)
            for i in 0..<16 { #expect(memcmp(src.base + i * 4096, dst.base + i * 4096, 64 + batch * 100 + i * 31) == 0) }
        }
        // A halt: completion word says HALTED at the last good descriptor.
        ring.copy(head, 64, src: 0xFFFF_0000_0000_0000, dst: dst.iova, CW)
        head += 1
        bar.write16(ch + IOAT.DMACOUNT, UInt16(head & 0xFFFF))
        rig.run()
        #expect(comp.value == ring.iova(head - 2) | 3)
        #expect(rig.chanerr() == .sourceAddress)
        // Recover the way this generation allows, restart at the descriptor after the failure.
        rig.reset()
        rig.chanctrl([.anyErrAbortEnable, .errCompletionEnable])
        rig.write64(IOAT.CHANCMP, comp.iova)
        rig.write64(IOAT.CHAINADDR, ring.iova(head))
        #expect(rig.chansts() == 4)
        ring.null(head, CW)
        bar.write16(ch + IOAT.DMACOUNT, 1)
        rig.run()
        #expect(comp.value == ring.iova(head) | 1)
    }
}
