import DeviceModels
import Hardware
import Platform
import Testing

#if canImport(Glibc)
import Glibc
#endif

@Suite("CBDMA model: profile quirks and recovery")
struct IOATQuirkTests {
    @Test("A single 64-bit CHAINADDR/CHANCMP write is dropped below 3.3 and works from 3.3",
          arguments: ["tbg", "bdx", "skx", "bwd", "bdxde", "icx"])
    func wideWrites(_ name: String) throws {
        let rig = IOATRig(name)
        let ring = try Ring(rig, count: 4)
        let comp = try Completion(rig)
        rig.enableBusMaster()
        rig.reset()
        rig.bar.write64(rig.ch + IOAT.CHANCMP, comp.iova)
        rig.bar.write64(rig.ch + IOAT.CHAINADDR, ring.base)
        if rig.profile.cbver < 0x33 {
            #expect(rig.state() == .halted)
            #expect(rig.bar.read64Split(rig.ch + IOAT.CHAINADDR) == 0)
            #expect(rig.device.statistics.droppedWideWrites == 2)
            // Low-then-high halves: the high half latches and arms.
            rig.bar.write32(rig.ch + IOAT.CHAINADDR, UInt32(truncatingIfNeeded: ring.base))
            #expect(rig.state() == .halted, "the low half alone does not latch")
            rig.bar.write32(rig.ch + IOAT.CHAINADDR + 4, UInt32(truncatingIfNeeded: ring.base >> 32))
            rig.bar.write64Split(rig.ch + IOAT.CHANCMP, comp.iova)
        } else {
            #expect(rig.device.statistics.droppedWideWrites == 0)
        }
        #expect(rig.chansts() == 4)
        ring.null(0, CW)
        rig.doorbell(1)
        rig.device.runUntilIdle()
        #expect(comp.value == ring.iova(0) | 1)
    }

    @Test("A 64-bit CHANSTS read of a running channel tears below 3.3 when the high half moves",
          arguments: ["skx", "icx"])
    func tornChansts(_ name: String) throws {
        // The ring straddles 4 GiB: slot 0 at 0xFFFF_FFC0, slot 1 at 0x1_0000_0000.
        let rig = IOATRig(name, policy: .allocate(in: 0xFFFF_F000...0x1_FFFF_FFFF))
        let ringMem = try rig.allocate(8192)
        #expect(ringMem.iova == 0xFFFF_F000)
        let comp = try Completion(rig)
        let a = ringMem.iova + 0xFC0, b = ringMem.iova + 0x1000
        for (slot, next) in [(a, b), (b, b + 64), (b + 64, a)] {
            let p = ringMem.base + Int(slot - ringMem.iova)
            p.storeBytes(of: UInt32(8), toByteOffset: 0, as: UInt32.self)
            p.storeBytes(of: IOAT.DescriptorControl.null | CW, toByteOffset: 4, as: UInt32.self)
            p.storeBytes(of: next, toByteOffset: 24, as: UInt64.self)
        }
        rig.start(ring: a, completion: comp.iova)
        rig.doorbell(3)
        rig.device.step()
        rig.device.step()  // slot b done, still ACTIVE
        let wide = rig.bar.read64(rig.ch + IOAT.CHANSTS)
        let halves = rig.bar.read64Split(rig.ch + IOAT.CHANSTS)
        #expect(halves == b | 0)
        #expect(comp.value == b | 0)
        if rig.profile.tornChanstsReads {
            #expect(wide == (b & 0xFFFF_FFFF), "high half of the previous address (0)")
        } else {
            #expect(wide == b)
        }
        rig.device.runUntilIdle()
        #expect(rig.bar.read64(rig.ch + IOAT.CHANSTS) == (b + 64) | 1, "a DONE channel reads consistently")
    }

    @Test("3.3 (BWD, BDX-DE): RESET wipes the MSI-X table; restoring 0x1000/0x1008/0x1800 brings the interrupt back",
          arguments: ["bwd", "bdxde", "skx", "icx"])
    func msixWipe(_ name: String) throws {
        let rig = IOATRig(name)
        let ring = try Ring(rig, count: 8)
        let comp = try Completion(rig)
        let event = try EventFD()
        try rig.device.routeInterrupts(start: 0, eventFDs: [event.rawValue])
        let table = rig.profile.msixTableOffset, pba = rig.profile.msixPBAOffset
        let saved = (rig.bar.read64(table), rig.bar.read64(table + 8), rig.bar.read64(pba))
        rig.bar.write8(IOAT.INTRCTRL, 0x09)
        rig.start(ring: ring.base, completion: comp.iova, control: [.intRearm, .anyErrAbortEnable, .errCompletionEnable])
        let wiped = rig.bar.read64(table) != saved.0
        #expect(wiped == rig.profile.resetClobbersMSIX)
        ring.null(0, CW | IE)
        rig.doorbell(1)
        rig.device.runUntilIdle()
        if wiped {
            #expect(event.consume() == 0, "masked by the wipe: pending in the PBA")
            #expect(rig.bar.read64(pba) & 1 == 1)
            // Linux's restore (address, then data + vector control, then PBA).
            rig.bar.write64(table, saved.0)
            rig.bar.write64(table + 8, saved.1)
            rig.bar.write64(pba, saved.2)
            #expect(event.consume() == 1)
            // The other mitigation: reset again, then re-route the vector through VFIO.
            rig.reset()
            #expect(rig.bar.read32(table + 12) == IOAT.msixVectorMasked)
            try rig.device.routeInterrupts(start: 0, eventFDs: [event.rawValue])
            rig.chanctrl([.intRearm, .anyErrAbortEnable])
            rig.write64(IOAT.CHANCMP, comp.iova)
            rig.write64(IOAT.CHAINADDR, ring.iova(1))
            ring.null(1, CW | IE)
            rig.doorbell(1)
            rig.device.runUntilIdle()
            #expect(event.consume() == 1)
        } else {
            #expect(event.consume() == 1)
        }
    }

    @Test("Halt recovery: DPDK's (RESET, CHAINADDR at once, expect ARMED) works only on 3.4",
          arguments: ["bdx", "skx", "bdxde", "icx"])
    func dpdkRecovery(_ name: String) throws {
        let rig = IOATRig(name, options: .init(resetReads: 2, resetMicroseconds: 0))
        let ring = try Ring(rig, count: 16)
        let comp = try Completion(rig)
        rig.start(ring: ring.base, completion: comp.iova, control: [.anyErrAbortEnable, .errCompletionEnable])
        for i in 0..<8 { ring.null(i, CW) }
        rig.device.inject(.failDescriptor(index: 3, error: .writeData))
        rig.doorbell(8)
        rig.device.runUntilIdle()
        #expect(comp.value == ring.iova(2) | 3)
        // DPDK: failing op = slot 3; restart at its next.
        let err = rig.bar.read32(rig.ch + IOAT.CHANERR)
        rig.bar.write32(rig.ch + IOAT.CHANERR, err)
        rig.command(.reset)
        rig.write64(IOAT.CHAINADDR, ring.iova(4))
        rig.chanctrl([.anyErrAbortEnable, .errCompletionEnable])
        rig.write64(IOAT.CHANCMP, comp.iova)
        var armed = false
        for _ in 0..<200 where rig.chansts() == 4 { armed = true; break }
        #expect(armed == rig.profile.recoversFromHalt)
        if armed {
            rig.doorbell(4)  // next_write − offset
            rig.device.runUntilIdle()
            #expect(comp.value == ring.iova(7) | 1)
        } else {
            #expect(rig.device.statistics.droppedChainWrites >= 1)
            // Linux/FreeBSD style works everywhere: reset, wait for the bit, restart.
            rig.reset()
            rig.chanctrl([.anyErrAbortEnable, .errCompletionEnable])
            rig.write64(IOAT.CHANCMP, comp.iova)
            rig.write64(IOAT.CHAINADDR, ring.iova(4))
            #expect(rig.chansts() == 4)
            rig.doorbell(4)
            rig.device.runUntilIdle()
            #expect(comp.value == ring.iova(7) | 1)
        }
    }

    @Test("An error-halted channel re-arms by CHAINADDR alone only on 3.4", arguments: ["skx", "icx"])
    func haltedRearm(_ name: String) throws {
        let rig = IOATRig(name)
        let ring = try Ring(rig, count: 4)
        let comp = try Completion(rig)
        rig.start(ring: ring.base, completion: comp.iova)
        ring.null(0, CW)
        rig.device.inject(.failDescriptor(index: 0, error: .readData))
        rig.doorbell(1)
        rig.device.runUntilIdle()
        rig.bar.write32(rig.ch + IOAT.CHANERR, rig.bar.read32(rig.ch + IOAT.CHANERR))
        rig.write64(IOAT.CHANCMP, comp.iova)
        rig.write64(IOAT.CHAINADDR, ring.base)
        #expect((rig.state() == .armed) == rig.profile.recoversFromHalt)
        #expect((rig.state() == .halted) == !rig.profile.recoversFromHalt)
    }

    @Test("TBG channel 0: RESET leaves DMAUNCERRSTS bit 4; writing 0x10 clears it")
    func tbgParity() {
        for (name, quirk) in [("tbg", true), ("skx", false)] {
            let rig = IOATRig(name)
            rig.reset()
            #expect((rig.device.config.read32(IOAT.configDMAUNCERRSTS) == 0x10) == quirk)
            rig.device.config.write32(IOAT.configDMAUNCERRSTS, 0x10)
            #expect(rig.device.config.read32(IOAT.configDMAUNCERRSTS) == 0)
        }
    }
}
