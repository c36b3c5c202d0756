import DeviceModels
import Hardware
import Platform
import Testing

#if canImport(Glibc)
import Glibc
#endif

@Suite("CBDMA model: channel state machine")
struct IOATStateTests {
    @Test("RESET: HALTED, address 0; clears CHANCTRL/CHANCMP/CHAINADDR/DMACOUNT, keeps CHANERR")
    func resetClears() throws {
        let rig = IOATRig("icx")
        let ring = try Ring(rig, count: 4)
        let comp = try Completion(rig)
        rig.start(ring: ring.base, completion: comp.iova, control: [.intRearm, .anyErrAbortEnable])
        ring.null(0, CW)
        rig.doorbell(1)
        rig.device.runUntilIdle()
        #expect(rig.chansts() == ring.iova(0) | 1)
        rig.device.inject(.failDescriptor(index: 0, error: .readData))
        ring.null(1, CW)
        rig.doorbell(2)
        rig.device.runUntilIdle()
        #expect(rig.chanerr() == .readData)
        rig.command(.reset)
        #expect(rig.bar.read8(rig.ch + IOAT.CHANCMD) == 0x20)
        #expect(rig.chansts() == 3)
        #expect(rig.bar.read16(rig.ch + IOAT.CHANCTRL) == 0)
        #expect(rig.bar.read64(rig.ch + IOAT.CHANCMP) == 0)
        #expect(rig.bar.read64(rig.ch + IOAT.CHAINADDR) == 0)
        #expect(rig.bar.read16(rig.ch + IOAT.DMACOUNT) == 0)
        #expect(rig.chanerr() == .readData, "RESET does not clear CHANERR")
        // With CHANERR still set, CHAINADDR does not arm.
        rig.write64(IOAT.CHAINADDR, ring.base)
        #expect(rig.state() == .halted)
        rig.bar.write32(rig.ch + IOAT.CHANERR, rig.bar.read32(rig.ch + IOAT.CHANERR))
        rig.write64(IOAT.CHAINADDR, ring.base)
        #expect(rig.chansts() == 4)
    }

    @Test("RESET bit reads 1 for the configured time when no one polls it")
    func resetTime() {
        let rig = IOATRig("icx", options: .init(resetReads: 1_000_000, resetMicroseconds: 2000))
        let start = ContinuousClock.now
        rig.command(.reset)
        var reads = 0
        while rig.bar.read8(rig.ch + IOAT.CHANCMD) & 0x20 != 0 { reads += 1 }
        #expect(ContinuousClock.now - start >= .microseconds(2000))
        #expect(reads > 0)
    }

    @Test("DMACOUNT: running 16-bit count, ARMED stays ARMED on its own count, HALTED ignores it")
    func doorbellRules() throws {
        let rig = IOATRig("icx")
        let ring = try Ring(rig, count: 4)
        let comp = try Completion(rig)
        rig.enableBusMaster()
        rig.reset()
        rig.doorbell(5)
        #expect(rig.state() == .halted)
        #expect(!rig.device.step())
        rig.chanctrl([.anyErrAbortEnable])
        rig.write64(IOAT.CHANCMP, comp.iova)
        rig.write64(IOAT.CHAINADDR, ring.base)
        #expect(rig.state() == .armed)
        rig.doorbell(0)
        #expect(rig.state() == .armed)
        for i in 0..<4 { ring.null(i, CW) }
        // Wrap the 16-bit count: 65535 descriptors, then 3 more (DMACOUNT 2).
        rig.doorbell(0xFFFF)
        rig.device.runUntilIdle()
        #expect(rig.state() == .done)
        #expect(comp.address == ring.iova(0xFFFE % 4))
        rig.doorbell(2)
        #expect(rig.state() == .active)
        rig.device.runUntilIdle()
        #expect(comp.address == ring.iova((0xFFFF + 2) % 4))
        #expect(rig.device.statistics.descriptorsExecuted == 0xFFFF + 3)
    }

    @Test("Completion word: ACTIVE while more is queued, DONE at the end; CHANSTS follows")
    func activeVersusDone() throws {
        let rig = IOATRig("icx")
        let ring = try Ring(rig, count: 8)
        let comp = try Completion(rig)
        rig.start(ring: ring.base, completion: comp.iova)
        for i in 0..<3 { ring.null(i, CW) }
        rig.doorbell(3)
        rig.device.step()
        #expect(comp.value == ring.iova(0) | 0)
        #expect(rig.chansts() == ring.iova(0) | 0)
        #expect(rig.bar.read64(rig.ch + IOAT.CDAR) == ring.iova(0))
        rig.device.step()
        rig.device.step()
        #expect(comp.value == ring.iova(2) | 1)
        rig.device.step()
        #expect(rig.chansts() == ring.iova(2) | 1)
        // Descriptors without compl_write move CHANSTS but not the completion word.
        ring.null(3)
        rig.doorbell(4)
        rig.device.runUntilIdle()
        #expect(comp.value == ring.iova(2) | 1)
        #expect(rig.chansts() == ring.iova(3) | 1)
    }

    @Test("SUSPEND after the current descriptor; RESUME continues; CHAINADDR from SUSPENDED re-arms")
    func suspendResume() throws {
        let rig = IOATRig("icx")
        let ring = try Ring(rig, count: 8)
        let comp = try Completion(rig)
        rig.start(ring: ring.base, completion: comp.iova)
        for i in 0..<6 { ring.null(i, CW) }
        rig.doorbell(6)
        rig.device.step()
        rig.device.step()
        rig.command(.suspend)
        #expect(rig.state() == .active, "takes effect at the descriptor boundary")
        rig.device.step()
        #expect(rig.state() == .suspended)
        #expect(rig.chansts() == ring.iova(1) | 2)
        #expect(!rig.device.step())
        rig.doorbell(6)
        #expect(rig.state() == .suspended)
        rig.command(.resume)
        #expect(rig.state() == .active)
        rig.device.runUntilIdle()
        #expect(comp.value == ring.iova(5) | 1)
        // DONE → SUSPEND → SUSPENDED; CHAINADDR → ARMED with count 0 ([V]'s loop).
        rig.command(.suspend)
        #expect(rig.state() == .suspended)
        rig.write64(IOAT.CHAINADDR, ring.iova(6))
        #expect(rig.chansts() == 4)
        ring.null(6, CW)
        rig.doorbell(1)
        rig.device.runUntilIdle()
        #expect(comp.value == ring.iova(6) | 1)
    }

    @Test("ABORT halts without an error; CHAINADDR while ACTIVE only latches")
    func abort() throws {
        let rig = IOATRig("icx")
        let ring = try Ring(rig, count: 8)
        let comp = try Completion(rig)
        rig.start(ring: ring.base, completion: comp.iova)
        for i in 0..<6 { ring.null(i, CW) }
        rig.doorbell(6)
        rig.device.step()
        rig.write64(IOAT.CHAINADDR, ring.iova(4))
        #expect(rig.state() == .active)
        rig.command(.abort)
        rig.device.runUntilIdle()
        #expect(rig.state() == .halted)
        #expect(rig.chanerr().isEmpty)
        #expect(rig.chansts() == ring.iova(0) | 3)
        #expect(rig.device.statistics.descriptorsExecuted == 1)
    }

    @Test("The engine follows next pointers anywhere, in order (fence holds)")
    func chainWalkAndFence() throws {
        let rig = IOATRig("icx")
        let descs = try rig.allocate(64 * 64)
        let comp = try Completion(rig)
        let a = try rig.allocate(4096), b = try rig.allocate(4096), c = try rig.allocate(4096)
        fillRandom(a.base, 4096, seed: 11)
        // Three descriptors scattered in the buffer: slot 40 → 3 → 17.
        let slots = [40, 3, 17]
        func at(_ s: Int) -> UInt64 { descs.iova + UInt64(s * 64) }
        func put(_ s: Int, _ size: Int, _ ctl: UInt32, _ src: UInt64, _ dst: UInt64, _ next: UInt64) {
            let p = descs.base + s * 64
            p.storeBytes(of: UInt32(size), toByteOffset: 0, as: UInt32.self)
            p.storeBytes(of: ctl, toByteOffset: 4, as: UInt32.self)
            p.storeBytes(of: src, toByteOffset: 8, as: UInt64.self)
            p.storeBytes(of: dst, toByteOffset: 16, as: UInt64.self)
            p.storeBytes(of: next, toByteOffset: 24, as: UInt64.self)
        }
        put(slots[0], 4096, IOAT.DescriptorControl.fence, a.iova, b.iova, at(slots[1]))
        put(slots[1], 4096, IOAT.DescriptorControl.fence, b.iova, c.iova, at(slots[2]))
        put(slots[2], 8, IOAT.DescriptorControl.null | CW, 0, 0, 0)
        rig.start(ring: at(slots[0]), completion: comp.iova)
        rig.doorbell(3)
        rig.device.runUntilIdle()
        #expect(comp.value == at(slots[2]) | 1)
        #expect(memcmp(a.base, c.base, 4096) == 0)
    }

    @Test("CB 1.x: v1 offsets, START runs to next = 0, APPEND continues; four channels")
    func v1StartAppend() throws {
        let rig = IOATRig("cb1")
        let comp = try Completion(rig)
        let ring = try Ring(rig, count: 8)
        let src = try rig.allocate(4096), dst = try rig.allocate(4096)
        fillRandom(src.base, 4096, seed: 5)
        rig.enableBusMaster()
        #expect(rig.bar.read8(IOAT.CHANCNT) == 4)
        let ch = IOAT.channelBase(2)
        let bar = rig.bar
        bar.write16(ch + IOAT.CHANCTRL, IOAT.ChanCtrl.anyErrAbortEnable.rawValue)
        bar.write64Split(ch + IOAT.CHANCMP, comp.iova)
        bar.write64Split(ch + IOAT.V1.CHAINADDR, ring.base)
        ring.copy(0, 1000, src: src.iova, dst: dst.iova, CW)
        ring.copy(1, 1000, src: src.iova(at: 1000), dst: dst.iova(at: 1000), CW)
        ring.setNext(1, 0)
        bar.write8(ch + IOAT.V1.CHANCMD, IOAT.ChanCmd.start.rawValue)
        rig.device.runUntilIdle()
        #expect(comp.value == ring.iova(1) | 1)
        #expect(bar.read64Split(ch + IOAT.V1.CHANSTS) & 7 == 1)
        // Link two more and APPEND.
        ring.copy(2, 1000, src: src.iova(at: 2000), dst: dst.iova(at: 2000))
        ring.copy(3, 96, src: src.iova(at: 3000), dst: dst.iova(at: 3000), CW)
        ring.setNext(3, 0)
        ring.setNext(1, ring.iova(2))
        bar.write8(ch + IOAT.V1.CHANCMD, IOAT.ChanCmd.append.rawValue)
        rig.device.runUntilIdle()
        #expect(comp.value == ring.iova(3) | 1)
        #expect(memcmp(src.base, dst.base, 3096) == 0)
        // The other channels stayed HALTED.
        for c in [0, 1, 3] { #expect(bar.read32(IOAT.channelBase(c) + IOAT.V1.CHANSTS) & 7 == 3) }
    }

    @Test("Bus mastering off: the channel stays ACTIVE without touching memory until it is on")
    func busMaster() throws {
        let rig = IOATRig("icx")
        let ring = try Ring(rig, count: 4)
        let comp = try Completion(rig)
        rig.start(ring: ring.base, completion: comp.iova)
        rig.device.config.write16(0x04, 0x0002)
        ring.null(0, CW)
        rig.doorbell(1)
        #expect(!rig.device.step())
        #expect(rig.state() == .active)
        #expect(comp.value == 0)
        rig.enableBusMaster()
        rig.device.runUntilIdle()
        #expect(comp.value == ring.iova(0) | 1)
    }
}
