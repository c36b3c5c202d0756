import DeviceModels
import Hardware
import IOAT
import NetDMA
import Platform
import Testing

@Suite("IOAT provider bring-up")
struct IOATBringUpTests {
    @Test("brings every channel up, runs the NULL self-check and reports the hardware", arguments: ioatAllProfiles)
    func bringUp(profile name: String) throws {
        let version: NetDMAVersion = IOAT.profile(named: name)!.isV1 ? .v1_1 : .v2_0
        let rig = try IOATProviderRig(name, version: version)
        let p = rig.provider!
        let profile = rig.profile
        #expect(p.device.cbver == profile.cbver)
        #expect(p.channels.count == profile.channelsPerFunction)
        #expect(p.characteristics.version == version)
        #expect(p.characteristics.maxChannelCount == profile.channelsPerFunction)
        #expect(p.characteristics.callbacks == .all)
        #expect(p.characteristics.friendlyName.contains("CBDMA \(profile.major).\(profile.minor)"))
        #expect(p.characteristics.flags.contains(.fill) == profile.capabilities.contains(.blockFill))
        #expect(p.characteristics.flags.contains(.pageBreak) == (version >= .v2_0 && profile.capabilities.contains(.pageBreak)))
        #expect(p.attributes.hardwareMajor == profile.major && p.attributes.hardwareMinor == profile.minor)
        #expect(p.attributes.vendorID == 0x8086)
        #expect(p.attributes.channelCount == profile.channelsPerFunction)
        #expect(p.attributes.maximumTransferSize == 1 << Int(profile.xfercap))
        // Every channel ran its NULL descriptor and was reset afterwards.
        #expect(rig.device.statistics.descriptorsExecuted == UInt64(profile.channelsPerFunction))
        for c in 0..<profile.channelsPerFunction {
            #expect(rig.state(c) == .halted)
            #expect(rig.chanerr(c) == 0)
        }
        // Below 3.3 every 64-bit register write was split (the model drops whole ones).
        #expect(rig.device.statistics.droppedWideWrites == 0)
        #expect(rig.device.statistics.droppedChainWrites == 0)
        // COMMAND: memory, bus master, INTx disabled (MSI-X in use).
        #expect(rig.device.config.read16(0x04) & 0x406 == 0x406)
        // One eventfd per channel, MSI-X vector control and master enable on.
        #expect(p.channels.allSatisfy { $0.interruptEventFD != nil })
        #expect(rig.device.bar0.read8(IOAT.INTRCTRL) & 0x09 == 0x09)
    }

    @Test("bring-up follows ioat.md §6.8 in order: IN_USE, quiesce, CHANERR, reset, CHANCTRL, CHANCMP, CHAINADDR, NULL descriptor",
          arguments: ["tbg", "skx", "bdxde", "icx"])
    func sequence(profile name: String) throws {
        let iommu = SoftIOMMU()
        let memory = DMAMemory(spaces: [iommu], preferHugePages: false)
        let device = MockIOATDevice(profile: IOAT.profile(named: name)!, iommu: iommu)
        let ch = IOAT.channelBase(0)
        // A previous owner left the channel claimed and running a NULL descriptor (DONE).
        device.config.write16(0x04, 0x0006)
        let old = try memory.allocate(length: 4096)
        old.base.storeBytes(of: UInt32(1), toByteOffset: 0, as: UInt32.self)
        old.base.storeBytes(of: IOAT.DescriptorControl.null, toByteOffset: 4, as: UInt32.self)
        let split = device.profile.splitsWide64BitWrites
        if split { device.bar0.write64Split(ch + IOAT.CHAINADDR, old.iova) } else { device.bar0.write64(ch + IOAT.CHAINADDR, old.iova) }
        device.bar0.write16(ch + IOAT.DMACOUNT, 1)
        #expect(ioatWait { IOAT.ChannelState(rawValue: UInt8(device.bar0.read32(ch + IOAT.CHANSTS) & 7)) == .done })
        device.bar0.write16(ch + IOAT.CHANCTRL, IOAT.ChanCtrl.inUse.rawValue)

        let bar = IOATRecordingBAR(base: device.bar0)
        let provider = try IOATProvider(bar: bar, config: device, interrupts: device, memory: memory)
        let writes = bar.log.all
        func first(_ offset: Int, _ matching: (UInt64) -> Bool = { _ in true }) -> Int? {
            writes.firstIndex { $0.offset == offset && matching($0.value) }
        }
        let inUse = try #require(first(ch + IOAT.CHANCTRL) { $0 & UInt64(IOAT.ChanCtrl.inUse.rawValue) == 0 })
        let suspend = try #require(first(ch + IOAT.CHANCMD) { $0 == UInt64(IOAT.ChanCmd.suspend.rawValue) })
        let reset = try #require(first(ch + IOAT.CHANCMD) { $0 == UInt64(IOAT.ChanCmd.reset.rawValue) })
        let control = try #require(writes.indices.first { $0 > reset && writes[$0].offset == ch + IOAT.CHANCTRL })
        let completion = try #require(writes.indices.first { $0 > reset && writes[$0].offset == ch + IOAT.CHANCMP })
        let chain = try #require(writes.indices.first { $0 > reset && (writes[$0].offset == ch + IOAT.CHAINADDR || writes[$0].offset == ch + IOAT.CHAINADDR + 4) })
        let doorbell = try #require(first(ch + IOAT.DMACOUNT) { $0 == 1 })
        #expect(inUse < suspend && suspend < reset && reset < control && control < completion && completion < chain && chain < doorbell)
        // 64-bit registers: two 32-bit halves, low first, below 3.3; one store from 3.3.
        let wide = writes.filter { [ch + IOAT.CHAINADDR, ch + IOAT.CHAINADDR + 4, ch + IOAT.CHANCMP, ch + IOAT.CHANCMP + 4].contains($0.offset) }
        #expect(wide.allSatisfy { $0.width == (split ? 4 : 8) })
        if split {
            let a = try #require(wide.firstIndex { $0.offset == ch + IOAT.CHAINADDR })
            #expect(wide[a + 1].offset == ch + IOAT.CHAINADDR + 4)
        }
        #expect(device.statistics.droppedWideWrites == 0)
        // Config CHANERR_INT is cleared below 3.3 only (checked through the config model).
        #expect(provider.device.profile.cbver == device.profile.cbver)
        #expect(IOAT.ChannelState(rawValue: UInt8(device.bar0.read32(ch + IOAT.CHANSTS) & 7)) == .halted)
        #expect(IOAT.ChanCtrl(rawValue: device.bar0.read16(ch + IOAT.CHANCTRL)).isEmpty)
    }

    @Test("a previous owner's halt is cleared: CHANERR, and CHANERR_INT (config 0x180) below 3.3",
          arguments: ["tbg", "bdx", "bwd", "icx"])
    func previousError(profile name: String) throws {
        let iommu = SoftIOMMU()
        let memory = DMAMemory(spaces: [iommu], preferHugePages: false)
        let device = MockIOATDevice(profile: IOAT.profile(named: name)!, iommu: iommu)
        let ch = IOAT.channelBase(0)
        device.config.write16(0x04, 0x0006)
        let old = try memory.allocate(length: 4096)  // a zero-size copy: DXSERR
        device.bar0.write16(ch + IOAT.CHANCTRL, IOAT.ChanCtrl.anyErrAbortEnable.rawValue)
        device.bar0.write64Split(ch + IOAT.CHAINADDR, old.iova)
        device.bar0.write16(ch + IOAT.DMACOUNT, 1)
        #expect(ioatWait { device.bar0.read32(ch + IOAT.CHANERR) != 0 })
        #expect(device.config.read32(IOAT.configCHANERR_INT) != 0)
        _ = try IOATProvider(bar: device.bar0, config: device, interrupts: nil, memory: memory)
        #expect(device.bar0.read32(ch + IOAT.CHANERR) == 0)
        if device.profile.cbver < 0x33 {
            #expect(device.config.read32(IOAT.configCHANERR_INT) == 0)
        }
        if device.profile.deviceID == 0x3430 {
            // TBG channel 0: the spurious parity error a reset leaves in DMAUNCERRSTS is cleared.
            #expect(device.config.read32(IOAT.configDMAUNCERRSTS) & 0x10 == 0)
        }
    }

    @Test("Skylake-SP/Cascade Lake (0x2021) is driven as CB 3.2 whatever CBVER says, as Linux does")
    func skxForcedTo32() throws {
        var profile = IOAT.profile(named: "skx")!
        profile.cbver = 0x33
        let iommu = SoftIOMMU()
        let memory = DMAMemory(spaces: [iommu], preferHugePages: false)
        let device = MockIOATDevice(profile: profile, iommu: iommu)
        let bar = IOATRecordingBAR(base: device.bar0)
        let provider = try IOATProvider(bar: bar, config: device, interrupts: nil, memory: memory)
        #expect(provider.device.cbver == 0x33)
        #expect(provider.device.profile.cbver == 0x32)
        #expect(provider.device.profile.splitsWide64BitWrites)
        #expect(provider.attributes.hardwareMajor == 3 && provider.attributes.hardwareMinor == 3)
        let ch = IOAT.channelBase(0)
        #expect(bar.log.all.filter { $0.offset == ch + IOAT.CHAINADDR }.allSatisfy { $0.width == 4 })
    }

    @Test("the bring-up also works with the engine stepped by hand (deterministic model)")
    func manualExecution() throws {
        let rig = try IOATProviderRig("icx", execution: .manual)
        #expect(rig.device.statistics.descriptorsExecuted == 1)
        #expect(rig.state() == .halted)
    }

    @Test("a provider without an interrupt router polls: no eventfds, INTRCTRL off")
    func polled() throws {
        let rig = try IOATProviderRig("bdx", interrupts: false)
        #expect(rig.provider.channels.allSatisfy { $0.interruptEventFD == nil })
        #expect(rig.device.bar0.read8(IOAT.INTRCTRL) == 0)
    }

    @Test("NetDMA 2.0 counted chains are refused on CB 1.x, which has no DMACOUNT")
    func countedChainsNeedDMACount() {
        #expect(throws: DriverError.self) { try IOATProviderRig("cb1", version: .v2_0) }
        do {
            _ = try IOATProviderRig("cb1", version: .v2_0)
        } catch let e as DriverError {
            #expect(e.code == .unsupported)
        } catch {}
    }

    @Test("identity registers a CBDMA driver cannot use give clear errors",
          arguments: [(cbver: UInt8(0x00), chancnt: UInt8(1), xfercap: UInt8(20)),
                      (0xFF, 1, 20), (0x35, 1, 20), (0x40, 1, 20),
                      (0x32, 0, 20), (0x32, 1, 5), (0x32, 1, 11)])
    func identity(_ id: (cbver: UInt8, chancnt: UInt8, xfercap: UInt8)) throws {
        let iommu = SoftIOMMU()
        let memory = DMAMemory(spaces: [iommu], preferHugePages: false)
        let bar = IOATFakeIdentityBAR(cbver: id.cbver, chancnt: id.chancnt, xfercap: id.xfercap)
        do {
            _ = try IOATProvider(bar: bar, config: nil, interrupts: nil, memory: memory)
            Issue.record("bring-up accepted CBVER 0x\(String(id.cbver, radix: 16)) CHANCNT \(id.chancnt) XFERCAP \(id.xfercap)")
        } catch {
            #expect(error.code == .unsupportedHardware)
            #expect(!error.message.isEmpty)
        }
    }

    @Test("a PCI function that is not Intel's is refused before BAR0 is touched")
    func vendor() throws {
        let rig = IOATFakeConfig(vendor: 0x10DE, device: 0x1234)
        let memory = DMAMemory(spaces: [SoftIOMMU()], preferHugePages: false)
        do {
            _ = try IOATProvider(bar: IOATFakeIdentityBAR(cbver: 0x32, chancnt: 1, xfercap: 20), config: rig,
                                 interrupts: nil, memory: memory)
            Issue.record("bring-up accepted vendor 0x10DE")
        } catch {
            #expect(error.code == .unsupportedHardware)
        }
    }

    @Test("a channel whose reset never completes times out with a clear error")
    func resetTimeout() throws {
        let memory = DMAMemory(spaces: [SoftIOMMU()], preferHugePages: false)
        let bar = IOATFakeIdentityBAR(cbver: 0x34, chancnt: 1, xfercap: 20, resetStuck: true)
        do {
            _ = try IOATProvider(bar: bar, config: nil, interrupts: nil, memory: memory,
                                 configuration: .init(timeouts: .init(reset: .milliseconds(5))))
            Issue.record("bring-up did not notice the stuck reset")
        } catch {
            #expect(error.code == .timeout)
        }
    }
}

/// A BAR with chosen identity registers and otherwise inert registers (for error paths).
struct IOATFakeIdentityBAR: RegisterIO {
    let cbver: UInt8, chancnt: UInt8, xfercap: UInt8
    var resetStuck = false
    var length: Int { 0x4000 }
    func read8(_ offset: Int) -> UInt8 {
        switch offset {
        case IOAT.CHANCNT: chancnt
        case IOAT.XFERCAP: xfercap
        case IOAT.CBVER: cbver
        case IOAT.channelBase(0) + IOAT.CHANCMD: resetStuck ? IOAT.ChanCmd.reset.rawValue : 0
        default: 0
        }
    }
    func read16(_ offset: Int) -> UInt16 { 0 }
    func read32(_ offset: Int) -> UInt32 {
        offset == IOAT.channelBase(0) + IOAT.CHANSTS ? UInt32(IOAT.ChannelState.halted.rawValue) : 0
    }
    func read64(_ offset: Int) -> UInt64 { UInt64(read32(offset)) }
    func write8(_ offset: Int, _ value: UInt8) {}
    func write16(_ offset: Int, _ value: UInt16) {}
    func write32(_ offset: Int, _ value: UInt32) {}
    func write64(_ offset: Int, _ value: UInt64) {}
}

final class IOATFakeConfig: PCIConfigAccess {
    let id: UInt32
    init(vendor: UInt16, device: UInt16) { id = UInt32(device) << 16 | UInt32(vendor) }
    func readConfig32(_ offset: Int) throws(DriverError) -> UInt32 { offset == 0 ? id : 0 }
    func writeConfig32(_ offset: Int, _ value: UInt32) throws(DriverError) {}
}
