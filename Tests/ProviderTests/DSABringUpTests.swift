import DSA
import DeviceModels
import Hardware
import NetDMA
import Platform
import Synchronization
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// The DSA provider's bring-up (dsa.md §4) on MockDSADevice, and every error it can hit.
@Suite("DSA provider bring-up (dsa.md §3–§4)", .serialized)
struct DSABringUpTests {
    @Test("SPR: DPDK's layout — 8 dedicated WQs × 16 entries, one engine per group, WQ i in group i mod 4, all enabled")
    func sprLayout() throws {
        let rig = try DSARig()
        let m = rig.model, bar = m.bar0, t = m.tableOffset
        #expect(rig.provider.layout == DSALayout(version: 0x100, groups: 4, workQueues: 8, workQueueSize: 16,
                                                 maximumTransferShift: 31, maximumBatchShift: 10, batching: true, fill: true))
        #expect(bar.read32(DSA.GENSTS) & 3 == DSA.DeviceState.enabled.rawValue)
        #expect(bar.read64(DSA.SWERR) & DSA.SWErr.valid == 0, "no software error")
        #expect(m.busMasterEnabled && m.memorySpaceEnabled, "the provider set COMMAND Memory and Bus Master")
        let stride = DSA.WQCap(rawValue: DSA.sapphireRapids.wqcap).configStride
        for wq in 0..<8 {
            let base = t.wqcfg + wq * stride
            #expect(bar.read32(base) & 0xFFFF == 16)
            #expect(bar.read32(base + 8) == DSA.WQCfg.dedicatedMode(priority: 1), "dedicated, priority 1, PASID/BOF/priv off")
            #expect(bar.read32(base + 12) == DSA.WQCfg.limits(maxTransferShift: 31, maxBatchShift: 10))
            #expect(DSA.WQCfg.state(bar.read32(base + 24)) == .enabled)
        }
        for g in 0..<4 {
            let base = t.grpcfg + g * DSA.GrpCfg.stride
            #expect(bar.read64(base) == (1 << UInt64(g)) | (1 << UInt64(g + 4)), "WQs \(g) and \(g + 4)")
            #expect(bar.read64(base + DSA.GrpCfg.engines) == 1 << UInt64(g), "engine \(g) alone")
            #expect(bar.read64(base + DSA.GrpCfg.flags) == DSA.GrpCfg.trafficClassOne, "TC-A = TC-B = 1")
        }
        let c = rig.provider.characteristics, a = rig.provider.attributes
        #expect(c.maxChannelCount == 8 && c.version == .v2_0 && c.callbacks == .all)
        #expect(c.flags.contains(.fill))
        #expect(c.friendlyName == "Intel DSA 1.0 (Sapphire Rapids / Emerald Rapids)")
        #expect(a.channelCount == 8 && a.vendorID == 0x8086 && a.maximumTransferSize == 1 << 31)
        #expect(a.hardwareMajor == 1 && a.hardwareMinor == 0)
        #expect(rig.provider.layout.description.contains("8 dedicated WQs × 16 entries"))
    }

    @Test("DSA 2.0 profile (64-byte WQCFG, op_config): brought up and copies")
    func dsa2() throws {
        let rig = try DSARig(profile: DSA.dsa2, configuration: .init(workQueues: 2))
        #expect(rig.provider.layout.version == 0x200 && rig.provider.layout.workQueueSize == 64)
        #expect(rig.provider.attributes.hardwareMajor == 2)
        try Self.copyThrough(rig)
    }

    @Test("SPDK's layout: one WQ of all 128 entries")
    func oneQueue() throws {
        let rig = try DSARig(configuration: .init(workQueues: 1))
        #expect(rig.provider.layout.workQueues == 1 && rig.provider.layout.workQueueSize == 128 && rig.provider.layout.groups == 4)
        #expect(DSA.WQCfg.state(rig.model.bar0.read32(rig.model.tableOffset.wqcfg + 32 + 24)) == .disabled, "WQ 1 unused")
        try Self.copyThrough(rig)
    }

    /// A 4 KiB copy through channel 0, checked byte for byte.
    static func copyThrough(_ rig: DSARig) throws {
        let ch = try DSADirectChannel(rig)
        let pool = try DescriptorPool(memory: rig.memory, count: 2)
        let src = try rig.memory.allocate(length: 4096), dst = try rig.memory.allocate(length: 4096)
        for i in 0..<4096 { src.base.storeBytes(of: UInt8(truncatingIfNeeded: i * 7), toByteOffset: i, as: UInt8.self) }
        pool[0].pointee = Descriptor(transferSize: 4096, controlFlags: [.statusUpdateOnCompletion], source: src.iova, destination: dst.iova)
        try ch.channel.start(dsaChain(pool, 0..<1))
        #expect(waitUntil { ch.completion == CompletionWord(descriptor: pool.iova(at: 0), status: .idle) })
        #expect(memcmp(src.base, dst.base, 4096) == 0)
    }

    @Test("a previous owner's state: enabled with WQs running, or halted needing a software reset")
    func previousOwner() throws {
        let first = try DSARig(configuration: .init(workQueues: 2))
        // A second driver instance on the same (still enabled) device resets it and takes over.
        let second = try ModelDSAProvider(bar: first.model.bar0, portals: first.model.bar2, config: first.config,
                                          interrupts: nil, memory: first.memory,
                                          configuration: .init(workQueues: 3, timeouts: dsaTestTimeouts))
        #expect(second.layout.workQueues == 3)
        #expect(second.device.workQueueState(2) == .enabled)
        // Halted with reset type "software": Reset Device brings it back.
        let rig = try DSARig(configuration: .init(workQueues: 1)) { $0.inject(.halt(resetType: .software)) }
        #expect(rig.provider.device.state == .enabled)
        try Self.copyThrough(rig)
    }

    @Test("halted with reset type FLR: refused with what to do; after VFIO_DEVICE_RESET it comes up")
    func haltedNeedsFLR() throws {
        let iommu = SoftIOMMU()
        let memory = DMAMemory(spaces: [iommu], policy: .allocate(in: 0x1_0000_0000...0xFF_FFFF_FFFF), preferHugePages: false)
        let model = MockDSADevice(iommu: iommu)
        model.inject(.halt(resetType: .flr))
        let config = model
        expectDriverError(.deviceError, ["function-level reset", "VFIO_DEVICE_RESET", "halted"]) {
            try ModelDSAProvider(bar: model.bar0, portals: model.bar2, config: config, interrupts: nil, memory: memory,
                                 configuration: .init(timeouts: dsaTestTimeouts))
        }
        model.functionLevelReset()
        let p = try ModelDSAProvider(bar: model.bar0, portals: model.bar2, config: config, interrupts: nil, memory: memory,
                                     configuration: .init(timeouts: dsaTestTimeouts))
        #expect(p.device.state == .enabled)
    }

    @Test("shared WQs are refused: they need PASID, which vfio-pci cannot give")
    func sharedRefused() {
        expectDriverError(.unsupported, ["PASID", "vfio-pci", "dedicated"]) {
            try DSARig(configuration: .init(mode: .shared))
        }
    }

    @Test("capabilities this driver cannot use are refused with the reason")
    func capabilities() {
        var p = DSA.sapphireRapids
        p.version = 0x300
        expectDriverError(.unsupported, ["VERSION 0x300", "idxd"]) { try DSARig(profile: p) }
        p = DSA.sapphireRapids
        p.gencap &= ~(1 << 31)
        expectDriverError(.unsupported, ["read-only", "GENCAP bit 31"]) { try DSARig(profile: p) }
        p = DSA.sapphireRapids
        p.wqcap &= ~(1 << 49)
        expectDriverError(.unsupported, ["no dedicated work queues", "PASID"]) { try DSARig(profile: p) }
        p = DSA.sapphireRapids
        p.opcap[0] &= ~(1 << 3)
        expectDriverError(.unsupported, ["memory move (0x03)"]) { try DSARig(profile: p) }
        expectDriverError(.invalidArgument, ["8 work queues", "asked for 9"]) { try DSARig(configuration: .init(workQueues: 9)) }
        expectDriverError(.invalidArgument, ["do not fit", "128 entries"]) {
            try DSARig(configuration: .init(workQueues: 2, workQueueSize: 65))
        }
    }

    @Test("optional opcodes: without batch the provider submits one by one; without fill it does not advertise fill")
    func optionalOpcodes() throws {
        var p = DSA.sapphireRapids
        p.opcap[0] &= ~(UInt64(1) << 1 | UInt64(1) << 4)
        let rig = try DSARig(profile: p, configuration: .init(workQueues: 1))
        #expect(!rig.provider.layout.batching && !rig.provider.layout.fill)
        #expect(!rig.provider.characteristics.flags.contains(.fill))
        try Self.copyThrough(rig)
    }

    @Test("Bus Master: without config access Enable Device fails with CMDSTS 0x12, explained")
    func busMaster() throws {
        let iommu = SoftIOMMU()
        let memory = DMAMemory(spaces: [iommu], policy: .allocate(in: 0x1_0000_0000...0xFF_FFFF_FFFF), preferHugePages: false)
        let model = MockDSADevice(iommu: iommu)
        model.busMasterEnabled = false
        expectDriverError(.deviceError, ["Enable Device", "0x12", "Bus Master", "config"]) {
            try ModelDSAProvider(bar: model.bar0, portals: model.bar2, config: nil, interrupts: nil, memory: memory,
                                 configuration: .init(timeouts: dsaTestTimeouts))
        }
        // With config access the provider sets it.
        _ = try ModelDSAProvider(bar: model.bar0, portals: model.bar2, config: model, interrupts: nil,
                                 memory: memory, configuration: .init(timeouts: dsaTestTimeouts))
        #expect(model.busMasterEnabled)
    }

    @Test("Memory Space off: BAR0 reads all-ones without config access; the provider sets COMMAND with it")
    func memorySpace() throws {
        let iommu = SoftIOMMU()
        let memory = DMAMemory(spaces: [iommu], policy: .allocate(in: 0x1_0000_0000...0xFF_FFFF_FFFF), preferHugePages: false)
        let model = MockDSADevice(iommu: iommu)
        model.memorySpaceEnabled = false
        expectDriverError(.notFound, ["all-ones", "COMMAND"]) {
            try ModelDSAProvider(bar: model.bar0, portals: model.bar2, config: nil, interrupts: nil, memory: memory,
                                 configuration: .init(timeouts: dsaTestTimeouts))
        }
        _ = try ModelDSAProvider(bar: model.bar0, portals: model.bar2, config: model, interrupts: nil,
                                 memory: memory, configuration: .init(timeouts: dsaTestTimeouts))
        #expect(model.memorySpaceEnabled)
    }

    @Test("a command that never completes: a timeout naming the command and GENSTS")
    func commandTimeout() {
        expectDriverError(.timeout, ["resetDevice", "did not complete", "GENSTS"]) {
            try DSARig(options: .init(commandLatency: Int.max, spinIterations: 200),
                       timeouts: DSATimeouts(command: .milliseconds(50), enable: .milliseconds(50)))
        }
    }

    /// Configuration errors the provider never makes, reached by changing its writes.
    enum Corruption: String, CaseIterable, Sendable {
        case groupWithoutEngine, engineInTwoGroups, sizesTooLarge, priorityZero, pasidEnabled, blockOnFault
    }

    @Test("Enable Device and Enable WQ failures: CMDSTS decoded, with the remedy", arguments: Corruption.allCases)
    func enableFailures(_ corruption: Corruption) throws {
        let iommu = SoftIOMMU()
        let memory = DMAMemory(spaces: [iommu], policy: .allocate(in: 0x1_0000_0000...0xFF_FFFF_FFFF), preferHugePages: false)
        let model = MockDSADevice(iommu: iommu)
        let t = model.tableOffset
        let stride = DSA.WQCap(rawValue: model.profile.wqcap).configStride
        let grpEnd = t.grpcfg + 4 * DSA.GrpCfg.stride, wqEnd = t.wqcfg + 8 * stride
        @Sendable func isEngines(_ o: Int) -> Bool { o >= t.grpcfg && o < grpEnd && (o - t.grpcfg) % DSA.GrpCfg.stride == DSA.GrpCfg.engines }
        @Sendable func wqDword(_ o: Int) -> Int? { o >= t.wqcfg && o < wqEnd ? ((o - t.wqcfg) % stride) / 4 : nil }
        let expected: (String, [String])
        let filter: @Sendable (Int, UInt64, Int) -> UInt64?
        switch corruption {
        case .groupWithoutEngine:
            expected = ("0x15", ["Enable Device", "engine"])
            filter = { o, v, _ in isEngines(o) ? 0 : v }
        case .engineInTwoGroups:
            expected = ("0x17", ["Enable Device", "one group"])
            filter = { o, v, _ in isEngines(o) ? 1 : v }
        case .sizesTooLarge:
            expected = ("0x14", ["Enable Device", "128 entries"])
            filter = { o, v, _ in wqDword(o) == DSA.WQCfg.size && v != 0 ? v * 4 : v }
        case .priorityZero:
            expected = ("0x23", ["Enable WQ 0", "priority"])
            filter = { o, v, _ in wqDword(o) == DSA.WQCfg.mode ? v & ~UInt64(DSA.WQCfg.priorityMask) : v }
        case .pasidEnabled:
            expected = ("0x26", ["Enable WQ 0", "PASID", "vfio-pci"])
            filter = { o, v, _ in wqDword(o) == DSA.WQCfg.mode ? v | UInt64(DSA.WQCfg.pasidEnable) : v }
        case .blockOnFault:
            expected = ("0x25", ["Enable WQ 0", "PRS"])
            filter = { o, v, _ in wqDword(o) == DSA.WQCfg.mode ? v | UInt64(DSA.WQCfg.blockOnFault) : v }
        }
        expectDriverError(.deviceError, [expected.0] + expected.1) {
            try filteredProvider(model, memory: memory, filter: filter)
        }
    }

    @Test("SWERR logged during bring-up is reported (here: a descriptor written to a disabled WQ)")
    func softwareErrorAtBringUp() throws {
        let iommu = SoftIOMMU()
        let memory = DMAMemory(spaces: [iommu], policy: .allocate(in: 0x1_0000_0000...0xFF_FFFF_FFFF), preferHugePages: false)
        let model = MockDSADevice(iommu: iommu)
        let portals = model.bar2
        expectDriverError(.deviceError, ["software error during bring-up", "WQ not enabled (0x54)", "WQ 7"]) {
            try filteredProvider(model, memory: memory, configuration: .init(workQueues: 7), filter: { _, v, _ in v }) { o, v in
                // Right after Enable WQ 6, someone writes a descriptor to WQ 7's portal.
                if o == DSA.CMD && v == UInt64(DSA.Cmd.encode(.enableWQ, operand: 6)) {
                    let zero = [UInt8](repeating: 0, count: 64)
                    zero.withUnsafeBytes { portals.submit64(7 * DSA.portalWindowSize, $0.baseAddress!) }
                }
            }
        }
    }

    @Test("every CMDSTS code has a remedy and is named in the error")
    func commandErrorTable() throws {
        let codes: [UInt8] = [0x01, 0x02, 0x03, 0x04, 0x10, 0x11, 0x12, 0x13, 0x14, 0x15, 0x16, 0x17, 0x18,
                              0x20, 0x21, 0x22, 0x23, 0x24, 0x25, 0x26, 0x27, 0x28, 0x2A, 0x2B, 0x2C, 0x31, 0x32, 0x41, 0x42]
        let cap = DSA.WQCap(rawValue: DSA.sapphireRapids.wqcap)
        var remedies = Set<String>()
        for c in codes {
            let r = DSADevice<MockDSARegisters, MockDSAPortals>.remedy(DSA.CommandError(rawValue: c), wqCap: cap)
            #expect(!r.hasPrefix("Unknown"), "0x\(String(c, radix: 16)) has no remedy")
            remedies.insert(r)
        }
        #expect(remedies.count >= 20, "remedies are specific")
        let rig = try DSARig(configuration: .init(workQueues: 1))
        let e = rig.provider.device.commandFailure(.enableWQ, DSA.CommandError(rawValue: 0x26), context: "test")
        #expect(e.code == .deviceError && e.message.contains("invalid PASID enable (0x26)") && e.message.contains("GENSTS"))
    }
}
