import DeviceModels
import Hardware
import Platform
import Testing

@Suite("MockDSA commands and registers")
struct MockDSACommandTests {
    // MARK: Bring-up

    @Test("DPDK-style bring-up (dsa.md §4.2) touches exactly the documented registers")
    func dpdkBringUp() throws {
        let h = try DSAHarness()
        h.configure(wqs: 8, size: 16)
        #expect(h.command(.enableDevice) == .success)  // leave it enabled: bring-up starts with a reset
        let r = RecordingRegisters(h.regs)

        // 1. Registers, table offsets.
        #expect(r.read32(DSA.VERSION) == 0x100)
        let t = DSA.TableOffset(low: r.read64(DSA.TABLE_OFFSET), high: r.read64(DSA.TABLE_OFFSET + 8))
        let wqcap = DSA.WQCap(rawValue: r.read64(DSA.WQCAP))
        // 2. Reset Device.
        func cmd(_ c: DSA.Command, _ operand: UInt32 = 0) -> UInt8 {
            r.write32(DSA.CMD, DSA.Cmd.encode(c, operand: operand))
            while true {
                let s = r.read32(DSA.CMDSTS)
                if s & DSA.CmdSts.active == 0 { return UInt8(s & 0xFF) }
            }
        }
        #expect(cmd(.resetDevice) == 0)
        // 3. Sanity checks.
        #expect(r.read32(DSA.GENSTS) & 3 == DSA.DeviceState.disabled.rawValue)
        #expect(r.read32(DSA.CMDSTS) & DSA.CmdSts.active == 0)
        // 4. Capabilities.
        let groups0 = Int(r.read64(DSA.GRPCAP) & 0xFF)
        let engines0 = Int(r.read64(DSA.ENGCAP) & 0xFF)
        let nwq = Int((r.read64(DSA.WQCAP) >> 16) & 0xFF)
        let total = Int(r.read64(DSA.WQCAP) & 0xFFFF)
        let gencap = DSA.GenCap(rawValue: r.read64(DSA.GENCAP))
        // 5. Clear the old configuration; TC-A = TC-B = 1.
        for g in 0..<groups0 {
            let base = t.grpcfg + g * DSA.GrpCfg.stride
            r.write64(base + DSA.GrpCfg.engines, 0)
            r.write64(base + DSA.GrpCfg.wqs, 0)
            r.write32(base + DSA.GrpCfg.flags, r.read32(base + DSA.GrpCfg.flags) | UInt32(DSA.GrpCfg.trafficClassOne))
        }
        for w in 0..<nwq { r.write32(t.wqcfg + w * wqcap.configStride, 0) }
        // 7. One engine per group.
        let groups = min(groups0, engines0)
        for e in 0..<groups {
            let base = t.grpcfg + (e % groups) * DSA.GrpCfg.stride
            r.write64(base + DSA.GrpCfg.engines, r.read64(base + DSA.GrpCfg.engines) | 1 << UInt64(e))
        }
        // 8. WQs.
        let size = total / nwq
        for w in 0..<nwq {
            let base = t.grpcfg + (w % groups) * DSA.GrpCfg.stride
            r.write64(base + DSA.GrpCfg.wqs, r.read64(base + DSA.GrpCfg.wqs) | 1 << UInt64(w))
            let q = t.wqcfg + w * wqcap.configStride
            r.write32(q + 0, UInt32(size))
            r.write32(q + 8, DSA.WQCfg.dedicatedMode(priority: 1))
            r.write32(q + 12, DSA.WQCfg.limits(maxTransferShift: gencap.maxTransferShift, maxBatchShift: gencap.maxBatchShift))
        }
        // 10. Enable Device; 12. Enable WQ and confirm the state.
        #expect(cmd(.enableDevice) == 0)
        for w in 0..<nwq {
            #expect(cmd(.enableWQ, UInt32(w)) == 0)
            #expect((r.read32(t.wqcfg + w * wqcap.configStride + 24) >> 30) & 3 == 1)
        }

        // The registers the sequence touched: exactly those of §4.2.
        var touched = Set<Int>()
        for a in r.log { switch a { case .read(let o, _), .write(let o, _): touched.insert(o) } }
        var expected: Set<Int> = [DSA.VERSION, DSA.TABLE_OFFSET, DSA.TABLE_OFFSET + 8, DSA.WQCAP, DSA.CMD, DSA.CMDSTS,
                                  DSA.GENSTS, DSA.GRPCAP, DSA.ENGCAP, DSA.GENCAP]
        for g in 0..<groups0 {
            let base = t.grpcfg + g * DSA.GrpCfg.stride
            expected.formUnion([base + DSA.GrpCfg.engines, base + DSA.GrpCfg.wqs, base + DSA.GrpCfg.flags])
        }
        for w in 0..<nwq {
            let q = t.wqcfg + w * wqcap.configStride
            expected.formUnion([q, q + 8, q + 12, q + 24])
        }
        #expect(touched == expected)
        // Result: 8 dedicated WQs of 16, WQ i and i+4 in group i with engine i.
        #expect(h.deviceState == .enabled)
        for g in 0..<4 {
            #expect(h.regs.read64(h.grpcfg(g, DSA.GrpCfg.wqs)) == (1 << UInt64(g)) | (1 << UInt64(g + 4)))
            #expect(h.regs.read64(h.grpcfg(g, DSA.GrpCfg.engines)) == 1 << UInt64(g))
            #expect(h.regs.read64(h.grpcfg(g, DSA.GrpCfg.flags)) & 0x3F == DSA.GrpCfg.trafficClassOne)
        }
        #expect(h.swerr0 == 0)
    }

    @Test("bring-up works from a halted device (software reset) and needs an FLR when the reset type says so")
    func bringUpFromHalt() throws {
        let h = try DSAHarness()
        h.bringUp()
        h.device.inject(.halt(resetType: .software))
        #expect(h.deviceState == .halted)
        #expect(h.command(.enableWQ, 0) == .hardwareError)
        #expect(h.command(.resetDevice) == .success)
        #expect(h.deviceState == .disabled)
        #expect(h.regs.read32(h.wqcfg(0, DSA.WQCfg.size)) == 0)  // configuration back to reset values
        h.bringUp()

        h.device.inject(.halt(resetType: .flr))
        #expect(h.regs.read32(DSA.GENSTS) == DSA.DeviceState.halted.rawValue | DSA.ResetType.flr.rawValue << 2)
        #expect(h.command(.resetDevice) == .hardwareError)
        h.device.functionLevelReset()
        #expect(h.regs.read32(DSA.GENSTS) == 0)
        h.bringUp()
    }

    // MARK: Command errors

    @Test("invalid command codes and WQ indexes")
    func invalidCommands() throws {
        let h = try DSAHarness()
        for code: UInt32 in [0, 15, 31] {
            h.regs.write32(DSA.CMD, code << 20)
            #expect(h.waitCommand() == .invalidCommand)
        }
        // SPR has no CMDCAP: interrupt-handle commands are unknown.
        #expect(h.command(.requestInterruptHandle, 1) == .invalidCommand)
        h.bringUp(wqs: 2)
        #expect(h.command(.enableWQ, 8) == .invalidWQIndex)
        #expect(h.command(.disableWQ, 1 << 8) == .invalidWQIndex)
        #expect(h.command(.drainWQ, DSA.Cmd.wqMaskOperand(17)) == .invalidWQIndex)
    }

    @Test("reserved operand bits of device commands (strict mode)")
    func reservedOperand() throws {
        var o = MockDSADevice.Options(); o.strictReservedOperand = true
        let h = try DSAHarness(options: o)
        #expect(h.command(.resetDevice, 3) == .reservedOperand)
        #expect(h.command(.resetDevice) == .success)
        let lax = try DSAHarness()
        #expect(lax.command(.resetDevice, 3) == .success)  // DPDK's quirk is tolerated by default
    }

    @Test("Enable Device errors in the documented order")
    func enableDeviceErrors() throws {
        let h = try DSAHarness()
        // 0x12 Bus Master off (checked before the configuration).
        h.device.busMasterEnabled = false
        h.regs.write32(h.wqcfg(0, 0), 200)
        #expect(h.command(.enableDevice) == .busMasterDisabled)
        h.device.busMasterEnabled = true
        // 0x14 sum of sizes > 128.
        h.configure(wqs: 8, size: 17)
        #expect(h.command(.enableDevice) == .wqSizeRange)
        // 0x15 a group with WQs and no engines.
        h.configure(wqs: 8, size: 16)
        h.regs.write64(h.grpcfg(1, DSA.GrpCfg.engines), 0)
        #expect(h.command(.enableDevice) == .groupConfig)
        // 0x16 a WQ with a size in no group.
        h.configure(wqs: 4, size: 16)
        h.regs.write32(h.wqcfg(6, 0), 8)
        #expect(h.command(.enableDevice) == .groupWQConfig)
        // 0x16 a WQ in two groups.
        h.configure(wqs: 4, size: 16)
        h.regs.write64(h.grpcfg(1, DSA.GrpCfg.wqs), 0b11)
        #expect(h.command(.enableDevice) == .groupWQConfig)
        // 0x17 an engine in two groups.
        h.configure(wqs: 4, size: 16)
        h.regs.write64(h.grpcfg(1, DSA.GrpCfg.engines), 0b11)
        #expect(h.command(.enableDevice) == .groupEngineConfig)
        // 0x17 an engine that does not exist.
        h.configure(wqs: 4, size: 16)
        h.regs.write64(h.grpcfg(3, DSA.GrpCfg.engines), 1 << 5)
        #expect(h.command(.enableDevice) == .groupEngineConfig)
        // 0x18 read buffers reserved > allowed, and allowed > total.
        h.configure(wqs: 4, size: 16)
        h.regs.write32(h.grpcfg(0, DSA.GrpCfg.flags), 10 << 8 | 5 << 20)
        #expect(h.command(.enableDevice) == .groupReadBuffers)
        h.regs.write32(h.grpcfg(0, DSA.GrpCfg.flags), 200 << 20)
        #expect(h.command(.enableDevice) == .groupReadBuffers)
        // Success, then 0x10.
        h.configure(wqs: 4, size: 16)
        #expect(h.command(.enableDevice) == .success)
        #expect(h.command(.enableDevice) == .deviceEnabled)
        #expect(h.deviceState == .enabled)
    }

    @Test("Enable WQ errors")
    func enableWQErrors() throws {
        let h = try DSAHarness()
        h.configure(wqs: 4, size: 16)
        #expect(h.command(.enableWQ, 0) == .deviceNotEnabled)
        #expect(h.command(.enableDevice) == .success)
        #expect(h.command(.enableWQ, 8) == .invalidWQIndex)
        #expect(h.command(.enableWQ, 5) == .wqSizeZero)
        func tryMode(_ mode: UInt32, limits: UInt32? = nil, occupancy: (UInt32, UInt32)? = nil) -> DSA.CommandError {
            h.regs.write32(h.wqcfg(1, DSA.WQCfg.mode), mode)
            h.regs.write32(h.wqcfg(1, DSA.WQCfg.limits), limits ?? DSA.WQCfg.limits(maxTransferShift: 31, maxBatchShift: 10))
            h.regs.write32(h.wqcfg(1, DSA.WQCfg.occupancyHandle), occupancy?.0 ?? 0)
            h.regs.write32(h.wqcfg(1, DSA.WQCfg.occupancyLimit), occupancy?.1 ?? 0)
            return h.command(.enableWQ, 1)
        }
        let ok = DSA.WQCfg.dedicatedMode(priority: 1)
        #expect(tryMode(0x10) == .wqPASIDEnable)  // shared WQ: needs PASID, which vfio-pci does not give
        #expect(tryMode(ok | DSA.WQCfg.pasidEnable) == .wqPASIDEnable)
        #expect(tryMode(ok | DSA.WQCfg.privileged) == .wqPrivileged)
        #expect(tryMode(DSA.WQCfg.dedicated) == .wqPriority)
        #expect(tryMode(ok | DSA.WQCfg.blockOnFault) == .wqBlockOnFault)
        #expect(tryMode(ok, limits: DSA.WQCfg.limits(maxTransferShift: 31, maxBatchShift: 11)) == .wqMaxBatch)
        #expect(tryMode(ok, occupancy: (20, DSA.WQCfg.occupancyInterruptEnable)) == .wqOccupancyInterrupt)
        #expect(tryMode(ok) == .success)
        #expect(h.wqState(1) == .enabled)
        #expect(h.command(.enableWQ, 1) == .wqEnabled)

        // 0x24 (mode not in WQCAP) and 0x2C (ATS disable not in WQCAP) on a variant profile.
        var p = DSA.sapphireRapids
        p.wqcap &= ~(UInt64(1) << 49 | UInt64(1) << 50)
        let v = try DSAHarness(profile: p)
        v.configure(wqs: 1, size: 16)
        #expect(v.command(.enableDevice) == .success)
        #expect(v.command(.enableWQ, 0) == .wqMode)
        var q = DSA.sapphireRapids
        q.wqcap &= ~(UInt64(1) << 50)
        let w = try DSAHarness(profile: q)
        w.configure(wqs: 1, size: 16)
        w.regs.write32(w.wqcfg(0, DSA.WQCfg.mode), ok | DSA.WQCfg.atsDisable)
        #expect(w.command(.enableDevice) == .success)
        #expect(w.command(.enableWQ, 0) == .wqATS)
        // 0x28: a transfer shift above GENCAP's (a part with a 1 MiB maximum).
        var r = DSA.sapphireRapids
        r.gencap = (r.gencap & ~(UInt64(0x1F) << 16)) | 20 << 16
        let x = try DSAHarness(profile: r)
        x.configure(wqs: 1, size: 16)
        x.regs.write32(x.wqcfg(0, DSA.WQCfg.limits), DSA.WQCfg.limits(maxTransferShift: 21, maxBatchShift: 10))
        #expect(x.command(.enableDevice) == .success)
        #expect(x.command(.enableWQ, 0) == .wqMaxTransfer)
        x.regs.write32(x.wqcfg(0, DSA.WQCfg.limits), DSA.WQCfg.limits(maxTransferShift: 20, maxBatchShift: 10))
        #expect(x.command(.enableWQ, 0) == .success)
    }

    @Test("Disable Device, WQ commands on disabled WQs, halted device")
    func disableErrors() throws {
        let h = try DSAHarness()
        #expect(h.command(.disableDevice) == .deviceNotEnabledForDisable)
        h.bringUp(wqs: 2)
        #expect(h.command(.disableWQ, 1 << 3) == .wqNotEnabled)
        #expect(h.command(.drainWQ, 1 << 3) == .wqNotEnabled)
        #expect(h.command(.abortWQ, 1 << 3) == .wqNotEnabled)
        #expect(h.command(.resetWQ, 1 << 3) == .wqNotEnabled)
        #expect(h.command(.disableWQ, 1 << 1) == .success)
        #expect(h.wqState(1) == .disabled)
        #expect(h.command(.disableWQ, 1 << 1) == .wqNotEnabled)
        #expect(h.command(.resetWQ, 1 << 0) == .success)
        #expect(h.regs.read32(h.wqcfg(0, DSA.WQCfg.size)) == 0)  // Reset WQ clears its WQCFG
        #expect(h.command(.disableDevice) == .success)
        #expect(h.deviceState == .disabled)
        #expect(h.regs.read32(h.wqcfg(1, DSA.WQCfg.size)) == 16)  // Disable Device keeps the configuration
        #expect(h.command(.disableDevice) == .deviceNotEnabledForDisable)
    }

    @Test("interrupt-handle commands on DSA 2.0")
    func interruptHandles() throws {
        let h = try DSAHarness(profile: DSA.dsa2)
        #expect(h.command(.requestInterruptHandle, 3) == .success)
        #expect((h.regs.read32(DSA.CMDSTS) >> 8) & 0xFFFF == 3)
        #expect(h.command(.requestInterruptHandle, 0) == .invalidInterruptIndex)
        #expect(h.command(.requestInterruptHandle, 1 << 16 | 1) == .invalidInterruptIndex)
        #expect(h.command(.requestInterruptHandle, 200) == .invalidInterruptIndex)
        #expect(h.command(.releaseInterruptHandle, 3) == .success)
    }

    @Test("CMD written while a command is active is dropped and logged as SWERR 0x52")
    func commandWhileActive() throws {
        var o = MockDSADevice.Options(); o.commandLatency = 3
        let h = try DSAHarness(options: o)
        h.configure(wqs: 1, size: 16)
        h.regs.write32(DSA.CMD, DSA.Cmd.encode(.enableDevice))
        #expect(h.regs.read32(DSA.CMDSTS) & DSA.CmdSts.active != 0)
        h.regs.write32(DSA.CMD, DSA.Cmd.encode(.resetDevice))
        #expect(h.regs.read32(DSA.CMDSTS) & DSA.CmdSts.active != 0)
        #expect(h.waitCommand() == .success)
        #expect(h.deviceState == .enabled)  // the dropped Reset Device never ran
        #expect(h.swerr0 & DSA.SWErr.valid != 0)
        #expect(DSA.SWErr.error(h.swerr0) == DSA.SoftwareErrorCode.commandWhileActive)
    }

    @Test("a command with CMD bit 31 sets INTCAUSE bit 1 and fires vector 0")
    func commandInterrupt() throws {
        let h = try DSAHarness()
        let fd = try EventFD()
        try h.device.routeInterrupts(start: 0, eventFDs: [fd.rawValue])
        #expect(h.command(.resetDevice) == .success)
        #expect(fd.consume() == 0)
        #expect(h.command(.resetDevice, interrupt: true) == .success)
        #expect(h.regs.read32(DSA.INTCAUSE) & DSA.IntCause.commandCompleted != 0)
        #expect(fd.wait(timeoutMilliseconds: 1000) == 1)
        h.regs.write32(DSA.INTCAUSE, DSA.IntCause.commandCompleted)
        #expect(h.regs.read32(DSA.INTCAUSE) == 0)
    }

    // MARK: Register rules (§9.2)

    @Test("capability registers, GENSTS and CMDSTS are read-only")
    func readOnly() throws {
        let h = try DSAHarness()
        for off in [DSA.VERSION, DSA.GENCAP, DSA.WQCAP, DSA.GRPCAP, DSA.ENGCAP, DSA.OPCAP, DSA.TABLE_OFFSET,
                    DSA.GENSTS, DSA.CMDSTS] {
            let before = h.regs.read64(off)
            h.regs.write64(off, ~before)
            #expect(h.regs.read64(off) == before)
        }
    }

    @Test("GENCFG and GRPCFG are writable only while the device is disabled; WQCFG per its rules")
    func configurationLocks() throws {
        let h = try DSAHarness()
        h.regs.write32(DSA.GENCFG, 0x10)
        #expect(h.regs.read32(DSA.GENCFG) == 0x10)
        h.bringUp(wqs: 2)
        h.regs.write32(DSA.GENCFG, 0x20)
        #expect(h.regs.read32(DSA.GENCFG) == 0x10)
        let engines = h.regs.read64(h.grpcfg(0, DSA.GrpCfg.engines))
        h.regs.write64(h.grpcfg(0, DSA.GrpCfg.engines), 0xF)
        #expect(h.regs.read64(h.grpcfg(0, DSA.GrpCfg.engines)) == engines)
        // WQCFG size: only while the device is disabled; mode and limits: only while the WQ is.
        h.regs.write32(h.wqcfg(4, DSA.WQCfg.size), 8)
        #expect(h.regs.read32(h.wqcfg(4, DSA.WQCfg.size)) == 0)
        h.regs.write32(h.wqcfg(0, DSA.WQCfg.mode), DSA.WQCfg.dedicatedMode(priority: 5))
        #expect(h.regs.read32(h.wqcfg(0, DSA.WQCfg.mode)) == DSA.WQCfg.dedicatedMode(priority: 1))
        h.regs.write32(h.wqcfg(4, DSA.WQCfg.mode), DSA.WQCfg.dedicatedMode(priority: 5))
        #expect(h.regs.read32(h.wqcfg(4, DSA.WQCfg.mode)) == DSA.WQCfg.dedicatedMode(priority: 5))
        // Dword 6 is read-only.
        let d6 = h.regs.read32(h.wqcfg(0, DSA.WQCfg.status))
        h.regs.write32(h.wqcfg(0, DSA.WQCfg.status), 0)
        #expect(h.regs.read32(h.wqcfg(0, DSA.WQCfg.status)) == d6)
        #expect(d6 & DSA.WQCfg.modeSupport != 0)
    }

    @Test("INTCAUSE and SWERR word 0 bits 1:0 are write-1-to-clear")
    func writeOneToClear() throws {
        let h = try DSAHarness()
        h.regs.write32(DSA.GENCTRL, DSA.GenCtrl.softwareErrorInterruptEnable)
        // Two errors: the second sets Overflow.
        h.regs.write32(DSA.CMD, 0)
        _ = h.waitCommand()
        h.submit(Desc(DSA.Opcode.noop))  // WQ not enabled: dropped, SWERR
        h.submit(Desc(DSA.Opcode.noop))
        #expect(h.swerr0 & (DSA.SWErr.valid | DSA.SWErr.overflow) == DSA.SWErr.valid | DSA.SWErr.overflow)
        #expect(h.regs.read32(DSA.INTCAUSE) & DSA.IntCause.softwareError != 0)
        h.regs.write64(DSA.SWERR, DSA.SWErr.overflow)
        #expect(h.swerr0 & (DSA.SWErr.valid | DSA.SWErr.overflow) == DSA.SWErr.valid)
        h.clearSWERR()
        #expect(h.swerr0 & 3 == 0)
        h.regs.write32(DSA.INTCAUSE, 0)
        #expect(h.regs.read32(DSA.INTCAUSE) & DSA.IntCause.softwareError != 0)
        h.regs.write32(DSA.INTCAUSE, DSA.IntCause.softwareError)
        #expect(h.regs.read32(DSA.INTCAUSE) == 0)
    }

    @Test("clearing Bus Master while enabled halts with reset type FLR and SWERR 0x51")
    func busMasterCleared() throws {
        let h = try DSAHarness()
        h.bringUp(wqs: 1)
        h.device.busMasterEnabled = false
        #expect(h.regs.read32(DSA.GENSTS) == DSA.DeviceState.halted.rawValue | DSA.ResetType.flr.rawValue << 2)
        #expect(DSA.SWErr.error(h.swerr0) == DSA.SoftwareErrorCode.pciConfig)
        #expect(h.regs.read32(DSA.INTCAUSE) & DSA.IntCause.halted != 0)
        h.device.busMasterEnabled = true
        h.device.functionLevelReset()
        h.bringUp(wqs: 1)
    }

    @Test("config space: IDs and COMMAND; Bus Master through config gates Enable Device; Memory off hides BAR0")
    func configSpace() throws {
        let h = try DSAHarness()
        let c = h.device.config
        #expect(c.read16(0) == 0x8086 && c.read16(2) == 0x0B25)
        #expect(c.read32(8) >> 8 == 0x088000)
        #expect(c.read16(MockDSAConfig.COMMAND) == MockDSAConfig.commandMemorySpace | MockDSAConfig.commandBusMaster)
        c.write16(MockDSAConfig.COMMAND, MockDSAConfig.commandMemorySpace)
        h.configure(wqs: 1, size: 16)
        #expect(h.command(.enableDevice) == .busMasterDisabled)
        c.write16(MockDSAConfig.COMMAND, MockDSAConfig.commandMemorySpace | MockDSAConfig.commandBusMaster)
        #expect(h.command(.enableDevice) == .success)
        c.write16(MockDSAConfig.COMMAND, MockDSAConfig.commandBusMaster)
        #expect(h.regs.read32(DSA.VERSION) == 0xFFFF_FFFF)
        h.regs.write32(DSA.GENCTRL, 1)
        c.write16(MockDSAConfig.COMMAND, MockDSAConfig.commandMemorySpace | MockDSAConfig.commandBusMaster)
        #expect(h.regs.read32(DSA.VERSION) == 0x100 && h.regs.read32(DSA.GENCTRL) == 0)
        #expect(h.deviceState == .enabled)
    }

    @Test("power loss: all-ones reads, ignored writes; power on: reset values")
    func powerLoss() throws {
        let h = try DSAHarness()
        h.bringUp(wqs: 1)
        h.submit(Desc(DSA.Opcode.noop, completion: h.iova(0)))
        h.device.injectPowerLoss(stayOff: true)
        #expect(h.regs.read32(DSA.VERSION) == 0xFFFF_FFFF)
        #expect(h.regs.read64(DSA.GENSTS) == UInt64.max)
        h.submit(Desc(DSA.Opcode.noop, completion: h.iova(32)))
        h.device.powerOn()
        h.device.runUntilIdle()
        #expect(h.record(0).status == 0 && h.record(32).status == 0)  // lost without records
        #expect(h.regs.read32(DSA.VERSION) == 0x100)
        #expect(h.deviceState == .disabled)
        #expect(h.regs.read32(h.wqcfg(0, DSA.WQCfg.size)) == 0)
        // A power loss without staying off: back at reset values at once.
        h.bringUp(wqs: 1)
        h.device.injectPowerLoss()
        #expect(h.deviceState == .disabled && h.regs.read32(DSA.VERSION) == 0x100)
    }
}
