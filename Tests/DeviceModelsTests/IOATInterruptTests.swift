import DeviceModels
import Hardware
import Platform
import Testing

#if canImport(Glibc)
import Glibc
#endif

@Suite("CBDMA model: interrupts")
struct IOATInterruptTests {
    /// Linux MSI-X mode: INTRCTRL 0x09, CHANCTRL 0x1D, int_en descriptors.
    @Test("int_en interrupts only while armed by INT_REARM; ATTNSTATUS and INTRCTRL mirror it")
    func rearmRule() throws {
        let rig = IOATRig("skx")
        let ring = try Ring(rig, count: 16)
        let comp = try Completion(rig)
        let event = try EventFD()
        try rig.device.routeInterrupts(start: 0, eventFDs: [event.rawValue])
        rig.bar.write8(IOAT.INTRCTRL, 0x09)
        rig.start(ring: ring.base, completion: comp.iova, control: [.intRearm, .errCompletionEnable, .anyErrAbortEnable, .errIntEnable])
        ring.null(0, CW | IE)
        ring.null(1, CW | IE)
        rig.doorbell(1)
        rig.device.runUntilIdle()
        #expect(event.consume() == 1)
        #expect(rig.bar.read32(IOAT.ATTNSTATUS) == 1)
        #expect(rig.bar.read8(IOAT.INTRCTRL) == 0x09 | 0x02 | 0x04)
        // Not re-armed: the second int_en descriptor completes silently.
        rig.doorbell(2)
        rig.device.runUntilIdle()
        #expect(comp.address == ring.iova(1))
        #expect(event.consume() == 0)
        // Re-arm (Linux: CHANCTRL = 0x1D at the end of cleanup): clears ATTNSTATUS, next one fires.
        rig.bar.write16(rig.ch + IOAT.CHANCTRL, 0x1D)
        #expect(rig.bar.read32(IOAT.ATTNSTATUS) == 0)
        #expect(rig.bar.read8(IOAT.INTRCTRL) == 0x09)
        ring.null(2, CW | IE)
        rig.doorbell(3)
        rig.device.runUntilIdle()
        #expect(event.consume() == 1)
    }

    @Test("Threaded engine: an interrupt wakes a waiter")
    func threadedInterrupt() throws {
        let rig = IOATRig("icx", execution: .thread)
        let ring = try Ring(rig, count: 16)
        let comp = try Completion(rig)
        let src = try rig.allocate(4096), dst = try rig.allocate(4096)
        fillRandom(src.base, 8, seed: 3)
        let event = try EventFD()
        try rig.device.routeInterrupts(start: 0, eventFDs: [event.rawValue])
        rig.bar.write8(IOAT.INTRCTRL, 0x09)
        rig.start(ring: ring.base, completion: comp.iova, control: [.intRearm, .anyErrAbortEnable])
        ring.copy(0, 8, src: src.iova, dst: dst.iova, CW | IE)
        rig.doorbell(1)
        #expect(waitEvent(event) == 1)
        #expect(comp.address == ring.iova(0))
        #expect(memcmp(src.base, dst.base, 8) == 0)
    }
}
