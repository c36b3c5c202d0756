import DeviceModels
import Hardware
import Platform
import Testing

#if canImport(Glibc)
import Glibc
#endif

@Suite("CBDMA model: identity, reset, arming, doorbell")
struct IOATBasicTests {
    @Test("Identity registers per profile", arguments: IOAT.profiles)
    func identity(_ profile: IOAT.Profile) {
        let device = MockIOATDevice(profile: profile, iommu: SoftIOMMU(), execution: .manual)
        let bar = device.bar0
        #expect(bar.read8(IOAT.CBVER) == profile.cbver)
        #expect(Int(bar.read8(IOAT.CHANCNT) & 0x1F) == profile.channelsPerFunction)
        #expect(bar.read8(IOAT.XFERCAP) & 0x1F == profile.xfercap)
        #expect(bar.read32(IOAT.DMACAPABILITY) == profile.capabilities.rawValue)
        #expect(device.config.read16(0) == 0x8086)
        #expect(device.config.read16(2) == profile.deviceID)
        #expect(device.config.read32(0x08) >> 8 == 0x088000)
        // Power-on: HALTED with address 0.
        let sts = profile.isV1 ? bar.read64Split(IOAT.channelBase(0) + IOAT.V1.CHANSTS) : bar.read64(IOAT.channelBase(0) + IOAT.CHANSTS)
        #expect(sts == UInt64(IOAT.ChannelState.halted.rawValue))
        // Read-only identity registers ignore writes.
        bar.write8(IOAT.CBVER, 0x99)
        bar.write32(IOAT.DMACAPABILITY, 0xFFFF_FFFF)
        #expect(bar.read8(IOAT.CBVER) == profile.cbver)
        #expect(bar.read32(IOAT.DMACAPABILITY) == profile.capabilities.rawValue)
    }

    @Test("SPDK attach: reset, CHANCTRL 0x08, CHANCMP, CHAINADDR → ARMED, NULL → IDLE")
    func spdkInit() throws {
        let rig = IOATRig("skx")
        let ring = try Ring(rig, count: 32)
        let comp = try Completion(rig)
        rig.enableBusMaster()
        #expect(rig.bar.read8(IOAT.CBVER) >= 0x30)
        // Reset: CHANSTS is HALTED at power-on, so no suspend.
        #expect(rig.state() == .halted)
        rig.bar.write32(rig.ch + IOAT.CHANERR, rig.bar.read32(rig.ch + IOAT.CHANERR))
        rig.device.config.write32(IOAT.configCHANERR_INT, rig.device.config.read32(IOAT.configCHANERR_INT))
        rig.command(.reset)
        // Bit 5 reads 1 for exactly resetReads (2) reads.
        #expect(rig.bar.read8(rig.ch + IOAT.CHANCMD) == 0x20)
        #expect(rig.bar.read8(rig.ch + IOAT.CHANCMD) == 0x20)
        #expect(rig.bar.read8(rig.ch + IOAT.CHANCMD) == 0x00)
        #expect(rig.chansts() == 3)
        rig.bar.write16(rig.ch + IOAT.CHANCTRL, 0x08)
        rig.bar.write64Split(rig.ch + IOAT.CHANCMP, comp.iova)
        rig.bar.write64Split(rig.ch + IOAT.CHAINADDR, ring.base)
        #expect(rig.chansts() == 4, "ARMED is exactly 0x4")
        ring.null(0, CW)
        rig.doorbell(1)
        #expect(rig.state() == .active, "the doorbell makes the channel ACTIVE at once")
        #expect(rig.device.step())
        #expect(rig.device.step())  // ACTIVE → DONE
        #expect(!rig.device.step())
        #expect(rig.chansts() == ring.iova(0) | 1)
        #expect(comp.value == ring.iova(0) | 1)
        #expect(rig.chanerr().isEmpty)
    }

    @Test("DPDK probe/start: IN_USE cleared, suspend, reset, CHAINADDR/CHANCMP/0x0C, ARMED exactly")
    func dpdkStart() throws {
        let rig = IOATRig("icx", options: .init(resetReads: 3, resetMicroseconds: 0))
        let ring = try Ring(rig, count: 64)
        let comp = try Completion(rig)
        rig.enableBusMaster()
        rig.bar.write16(rig.ch + IOAT.CHANCTRL, IOAT.ChanCtrl.inUse.rawValue)
        #expect(rig.bar.read16(rig.ch + IOAT.CHANCTRL) & IOAT.ChanCtrl.inUse.rawValue != 0)
        rig.bar.write16(rig.ch + IOAT.CHANCTRL, 0)
        #expect(rig.bar.read8(IOAT.CHANCNT) == 1)
        rig.command(.suspend)
        #expect(rig.state() == .halted, "SUSPEND does nothing to a HALTED channel")
        rig.command(.reset)
        var tries = 0
        while rig.bar.read8(rig.ch + IOAT.CHANCMD) & 0x20 != 0 {
            rig.bar.write64(rig.ch + IOAT.CHAINADDR, 0)
            tries += 1
            if tries > 200 { break }
        }
        #expect(tries == 3)
        rig.bar.write64(rig.ch + IOAT.CHAINADDR, ring.base)
        rig.bar.write64(rig.ch + IOAT.CHANCMP, comp.iova)
        rig.bar.write16(rig.ch + IOAT.CHANCTRL, 0x0C)
        #expect(rig.chansts() == 4)
        // Every descriptor with compl_write; 10 copies.
        let src = try rig.allocate(4096), dst = try rig.allocate(4096)
        fillRandom(src.base, 4096, seed: 7)
        for i in 0..<10 { ring.copy(i, 100 + i, src: src.iova(at: i * 200), dst: dst.iova(at: i * 200), CW) }
        rig.doorbell(10)
        rig.run()
        #expect(comp.value == ring.iova(9) | 1)
        #expect(rig.state() == .done)
        for i in 0..<10 { #expect(memcmp(src.base + i * 200, dst.base + i * 200, 100 + i) == 0) }
    }
}
