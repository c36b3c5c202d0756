import DeviceModels
import Hardware
import Platform
import Testing

#if canImport(Glibc)
import Glibc
#endif

@Suite("CBDMA model: fault injection, power, interrupt delivery")
struct IOATFaultTests {
    @Test("corruptRead flips one byte of the chosen descriptor's data, silently")
    func corruptRead() throws {
        let rig = IOATRig("icx")
        let ring = try Ring(rig, count: 8)
        let comp = try Completion(rig)
        let src = try rig.allocate(4096), dst = try rig.allocate(4096)
        fillRandom(src.base, 4096, seed: 1)
        rig.start(ring: ring.base, completion: comp.iova)
        for i in 0..<4 { ring.copy(i, 1024, src: src.iova(at: i * 1024), dst: dst.iova(at: i * 1024), CW) }
        rig.device.inject(.corruptRead(index: 2, byteOffset: 10, mask: 0x01))
        rig.doorbell(4)
        rig.device.runUntilIdle()
        #expect(comp.value == ring.iova(3) | 1)
        #expect(rig.chanerr().isEmpty)
        #expect(memcmp(src.base, dst.base, 2048 + 10) == 0)
        #expect(dst.base.load(fromByteOffset: 2048 + 10, as: UInt8.self) == src.base.load(fromByteOffset: 2048 + 10, as: UInt8.self) ^ 1)
        #expect(memcmp(src.base + 2059, dst.base + 2059, 4096 - 2059) == 0)
    }

    @Test("stall: the channel stays ACTIVE without progress for the time given (threaded)")
    func stall() throws {
        let rig = IOATRig("icx", execution: .thread)
        let ring = try Ring(rig, count: 4)
        let comp = try Completion(rig)
        rig.start(ring: ring.base, completion: comp.iova)
        ring.null(0, CW)
        let start = ContinuousClock.now
        rig.device.inject(.stall(microseconds: 30_000))
        rig.doorbell(1)
        #expect(rig.state() == .active)
        #expect(comp.value == 0)
        #expect(rig.device.waitUntilIdle(timeout: .seconds(5)))
        #expect(ContinuousClock.now - start >= .milliseconds(30))
        #expect(comp.value == ring.iova(0) | 1)
    }

    @Test("Power loss: registers back to power-on; with loseConfiguration BAR0 reads all ones until COMMAND is set",
          arguments: [MockIOATDevice.Execution.manual, .thread])
    func powerLoss(_ execution: MockIOATDevice.Execution) throws {
        let rig = IOATRig("icx", execution: execution)
        let ring = try Ring(rig, count: 4)
        let comp = try Completion(rig)
        rig.start(ring: ring.base, completion: comp.iova, control: [.anyErrAbortEnable, .intRearm])
        ring.null(0, CW)
        rig.doorbell(1)
        rig.run()
        rig.bar.write8(IOAT.INTRCTRL, 0x09)
        rig.device.inject(.stall(microseconds: 1_000_000))
        rig.doorbell(2)
        rig.device.injectPowerLoss()
        #expect(rig.chansts() == 3)
        #expect(rig.bar.read16(rig.ch + IOAT.CHANCTRL) == 0)
        #expect(rig.bar.read64(rig.ch + IOAT.CHANCMP) == 0)
        #expect(rig.bar.read8(IOAT.INTRCTRL) == 0)
        #expect(rig.bar.read16(rig.ch + IOAT.DMACOUNT) == 0)
        #expect(rig.device.config.read16(0x04) == 0x0406, "configuration survives")
        rig.device.injectPowerLoss(loseConfiguration: true)
        #expect(rig.bar.read32(IOAT.CBVER) == 0xFFFF_FFFF)
        rig.enableBusMaster()
        #expect(rig.bar.read8(IOAT.CBVER) == 0x34)
        // The driver can bring it back up.
        rig.start(ring: ring.base, completion: comp.iova)
        ring.null(1, CW)
        rig.write64(IOAT.CHAINADDR, ring.iova(1))
        rig.doorbell(1)
        rig.run()
        #expect(comp.value == ring.iova(1) | 1)
    }

    @Test("PMCSR D3hot → D0 resets BAR0 (No_Soft_Reset = 0); BAR0 is dark in D3hot")
    func d3() throws {
        let rig = IOATRig("skx")
        let ring = try Ring(rig, count: 4)
        let comp = try Completion(rig)
        rig.start(ring: ring.base, completion: comp.iova)
        #expect(rig.state() == .armed)
        rig.device.config.write16(0x94, 3)
        #expect(rig.bar.read32(rig.ch + IOAT.CHANSTS) == 0xFFFF_FFFF)
        rig.device.config.write16(0x94, 0)
        #expect(rig.chansts() == 3)
    }

    @Test("INTRDELAY coalesces: the vector fires after the delay, once")
    func coalescing() throws {
        let rig = IOATRig("icx", execution: .thread)
        let ring = try Ring(rig, count: 8)
        let comp = try Completion(rig)
        let event = try EventFD()
        try rig.device.routeInterrupts(start: 0, eventFDs: [event.rawValue])
        rig.bar.write8(IOAT.INTRCTRL, 0x09)
        rig.bar.write16(IOAT.INTRDELAY, 20_000 & 0x3FFF)  // 3616 µs after masking 14 bits
        let delay = Duration.microseconds(Int(rig.bar.read16(IOAT.INTRDELAY) & 0x3FFF))
        rig.start(ring: ring.base, completion: comp.iova, control: [.intRearm, .anyErrAbortEnable])
        ring.null(0, CW | IE)
        let start = ContinuousClock.now
        rig.doorbell(1)
        #expect(waitEvent(event) == 1)
        #expect(ContinuousClock.now - start >= delay)
        #expect(comp.value == ring.iova(0) | 1)
    }

    @Test("Delivery rules: masked vector → PBA; INTRCTRL off → ATTNSTATUS only; MASTER alone → vector 0")
    func deliveryRules() throws {
        let rig = IOATRig("icx")
        let ring = try Ring(rig, count: 8)
        let comp = try Completion(rig)
        let event = try EventFD()
        try rig.device.routeInterrupts(start: 0, eventFDs: [event.rawValue])
        let table = rig.profile.msixTableOffset
        rig.start(ring: ring.base, completion: comp.iova, control: [.intRearm, .anyErrAbortEnable])
        // INTRCTRL = 0: status only.
        ring.null(0, CW | IE)
        rig.doorbell(1)
        rig.device.runUntilIdle()
        #expect(event.consume() == 0)
        #expect(rig.bar.read32(IOAT.ATTNSTATUS) == 1)
        #expect(rig.bar.read8(IOAT.INTRCTRL) == 0x02, "INT_STATUS without master: INT clear")
        // MASTER_INT_EN alone: vector 0.
        rig.bar.write8(IOAT.INTRCTRL, 0x01)
        rig.chanctrl([.intRearm, .anyErrAbortEnable])
        ring.null(1, CW | IE)
        rig.doorbell(2)
        rig.device.runUntilIdle()
        #expect(event.consume() == 1)
        // MSI-X mode with the vector masked: pending bit, delivered on unmask.
        rig.bar.write8(IOAT.INTRCTRL, 0x08)
        rig.bar.write32(table + 12, 1)
        rig.chanctrl([.intRearm, .anyErrAbortEnable])
        ring.null(2, CW | IE)
        rig.doorbell(3)
        rig.device.runUntilIdle()
        #expect(event.consume() == 0)
        #expect(rig.bar.read64(rig.profile.msixPBAOffset) == 1)
        rig.bar.write32(table + 12, 0)
        #expect(event.consume() == 1)
        #expect(rig.bar.read64(rig.profile.msixPBAOffset) == 0)
        // Detached: lost.
        try rig.device.disableInterrupts()
        rig.chanctrl([.intRearm, .anyErrAbortEnable])
        ring.null(3, CW | IE)
        rig.doorbell(4)
        rig.device.runUntilIdle()
        #expect(event.consume() == 0)
        #expect(rig.device.statistics.interruptsLost >= 1)
        #expect(throws: DriverError.self) { try rig.device.routeInterrupts(start: 1, eventFDs: [event.rawValue]) }
    }
}
