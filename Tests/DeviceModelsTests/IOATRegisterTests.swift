import DeviceModels
import Hardware
import Platform
import Testing

@Suite("CBDMA model: register access rules")
struct IOATRegisterTests {
    @Test("CHANERR is write-1-to-clear; CHANERR_MASK and DCACTRL are read-write")
    func chanerrW1C() throws {
        let rig = IOATRig("skx")
        rig.enableBusMaster()
        rig.reset()
        rig.chanctrl([.anyErrAbortEnable])
        rig.write64(IOAT.CHAINADDR, 0x40)  // unmapped: the first descriptor fetch fails
        rig.doorbell(1)
        rig.device.runUntilIdle()
        #expect(rig.chanerr() == .chainAddress)
        rig.bar.write32(rig.ch + IOAT.CHANERR, 0)  // writing 0 clears nothing
        #expect(rig.chanerr() == .chainAddress)
        rig.bar.write32(rig.ch + IOAT.CHANERR, IOAT.ChanErr.sourceAddress.rawValue)  // other bits: nothing
        #expect(rig.chanerr() == .chainAddress)
        rig.bar.write32(rig.ch + IOAT.CHANERR, rig.bar.read32(rig.ch + IOAT.CHANERR))
        #expect(rig.chanerr().isEmpty)
        rig.bar.write32(rig.ch + IOAT.CHANERR_MASK, 0x0003_0000)
        #expect(rig.bar.read32(rig.ch + IOAT.CHANERR_MASK) == 0x0003_0000)
        rig.bar.write32(rig.ch + IOAT.DCACTRL, 0xFFFF_FFFF)
        #expect(rig.bar.read32(rig.ch + IOAT.DCACTRL) == 0xFFFF_FFFF)
    }

    @Test("Read-only registers ignore writes; RO bits of INTRCTRL, INTRDELAY, GENCTRL hold")
    func readOnly() {
        let rig = IOATRig("icx")
        let bar = rig.bar
        bar.write64(rig.ch + IOAT.CHANSTS, 0x1234_5678_9ABC_DEF1)
        #expect(rig.chansts() == 3)
        bar.write64(rig.ch + IOAT.CDAR, 0xFFFF)
        #expect(bar.read64(rig.ch + IOAT.CDAR) == 0)
        bar.write16(rig.ch + IOAT.DMA_COMP, 0)
        #expect(bar.read16(rig.ch + IOAT.DMA_COMP) == 0x2)
        bar.write32(IOAT.ATTNSTATUS, 0xFFFF_FFFF)
        #expect(bar.read32(IOAT.ATTNSTATUS) == 0)
        bar.write8(IOAT.INTRCTRL, 0xFF)
        #expect(bar.read8(IOAT.INTRCTRL) == 0x09, "only MASTER_INT_EN and MSIX_VECTOR_CONTROL are writable")
        #expect(bar.read16(IOAT.INTRDELAY) == 0x8000, "coalescing supported, delay 0")
        bar.write16(IOAT.INTRDELAY, 0xFFFF)
        #expect(bar.read16(IOAT.INTRDELAY) == 0xBFFF)
        bar.write8(IOAT.GENCTRL, 0xFF)
        #expect(bar.read8(IOAT.GENCTRL) == 0x01)
        bar.write8(IOAT.CHWPREFLMT, 8)
        #expect(bar.read8(IOAT.CHWPREFLMT) == 8)
        #expect(bar.read32(0x40) == 0, "undefined offsets read 0")
    }

    @Test("3.4 channel extras (DRSCTL, LTR) exist on Ice Lake only")
    func extras() {
        for (name, present) in [("icx", true), ("skx", false)] {
            let rig = IOATRig(name)
            rig.bar.write16(rig.ch + IOAT.DRSCTL, 0x0309)
            rig.bar.write8(rig.ch + IOAT.LTR_SWSEL, 1)
            rig.bar.write32(rig.ch + IOAT.LTR_ACTIVE, 0x8800)
            rig.bar.write32(rig.ch + IOAT.LTR_IDLE, 0x8A58)
            #expect(rig.bar.read16(rig.ch + IOAT.DRSCTL) == (present ? 0x0309 : 0))
            #expect(rig.bar.read8(rig.ch + IOAT.LTR_SWSEL) == (present ? 1 : 0))
            #expect(rig.bar.read32(rig.ch + IOAT.LTR_ACTIVE) == (present ? 0x8800 : 0))
            #expect(rig.bar.read32(rig.ch + IOAT.LTR_IDLE) == (present ? 0x8A58 : 0))
        }
    }

    @Test("Memory decoding off, or outside the BAR: reads all ones, writes dropped")
    func decoding() {
        let rig = IOATRig("skx")
        #expect(rig.bar.read8(IOAT.CBVER) == 0x32)
        #expect(rig.bar.read32(rig.bar.length) == 0xFFFF_FFFF)
        #expect(rig.bar.read64(-8) == ~0)
        rig.bar.write32(rig.bar.length + 4, 1)
        rig.device.config.write16(0x04, 0)
        #expect(rig.bar.read8(IOAT.CBVER) == 0xFF)
        rig.bar.write16(rig.ch + IOAT.CHANCTRL, 0x08)
        rig.device.config.write16(0x04, 0x0002)
        #expect(rig.bar.read16(rig.ch + IOAT.CHANCTRL) == 0)
    }

    @Test("Config space: COMMAND, BAR0 sizing, MSI-X capability, CHANERR_INT write-1-to-clear")
    func configSpace() {
        let rig = IOATRig("bdxde")
        let config = rig.device.config
        #expect(config.read16(0x04) == 0x0002)
        config.write16(0x04, 0xFFFF)
        #expect(config.read16(0x04) == 0x0547)
        config.write32(0x10, 0xFFFF_FFFF)
        #expect(config.read32(0x10) == ~UInt32(rig.bar.length - 1) & ~0xF | 0x4, "size 16 KiB, 64-bit non-prefetchable")
        // Walk the capability list to MSI-X.
        var cap = Int(config.read8(0x34))
        var msix = 0
        while cap != 0 {
            if config.read8(cap) == 0x11 { msix = cap }
            cap = Int(config.read8(cap + 1))
        }
        #expect(msix != 0)
        #expect(config.read16(msix + 2) & 0x7FF == 0, "one vector")
        #expect(Int(config.read32(msix + 4)) == rig.profile.msixTableOffset)
        #expect(Int(config.read32(msix + 8)) == rig.profile.msixPBAOffset)
        config.write32(IOAT.configCHANERRMSK_INT, 0x3E07)
        #expect(config.read32(IOAT.configCHANERRMSK_INT) == 0x3E07)
        config.write32(IOAT.configCHANERR_INT, 0xFFFF_FFFF)
        #expect(config.read32(IOAT.configCHANERR_INT) == 0)
    }

    @Test("Random register and config writes never crash the model", arguments: IOAT.profiles)
    func fuzz(_ profile: IOAT.Profile) throws {
        let rig = IOATRig(profile.name)
        let garbage = try rig.allocate(1 << 16)
        fillRandom(garbage.base, 1 << 16, seed: UInt64(profile.deviceID))
        var x: UInt64 = 0x9E37_79B9_7F4A_7C15 ^ UInt64(profile.cbver)
        func next() -> UInt64 { x ^= x << 13; x ^= x >> 7; x ^= x << 17; return x }
        rig.enableBusMaster()
        for i in 0..<20_000 {
            let r = next()
            var offset = Int(r % UInt64(0x400))
            if r & 0x8000_0000 != 0 { offset = Int(r % UInt64(rig.bar.length + 64)) - 32 }
            var value = next()
            if value & 3 == 0 { value = garbage.iova + (value >> 8) % UInt64(1 << 16) }  // sometimes a mapped address
            switch (r >> 40) % 9 {
            case 0: rig.bar.write8(offset, UInt8(truncatingIfNeeded: value))
            case 1: rig.bar.write16(offset, UInt16(truncatingIfNeeded: value))
            case 2: rig.bar.write32(offset, UInt32(truncatingIfNeeded: value))
            case 3: rig.bar.write64(offset, value)
            case 4: _ = rig.bar.read64(offset)
            case 5: _ = rig.bar.read8(offset)
            case 6: if offset & 0xF00 != 0x900 { rig.device.config.write32(offset & 0xFFC, UInt32(truncatingIfNeeded: value)) }
            default: rig.device.step()
            }
            if i % 1000 == 0 { rig.enableBusMaster(); rig.device.config.write16(0x94, 0) }
        }
        rig.device.runUntilIdle(maxSteps: 100_000)
        #expect(rig.bar.read8(IOAT.CBVER) == profile.cbver || rig.bar.read8(IOAT.CBVER) == 0xFF)
    }
}
