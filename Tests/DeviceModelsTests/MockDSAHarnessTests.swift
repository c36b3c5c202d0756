import DeviceModels
import Hardware
import Platform
import Synchronization
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// A DSA model, 1 MiB of memory mapped at IOVA `base` in its IOMMU, and driver-side helpers
/// that speak only registers and portals.
final class DSAHarness: @unchecked Sendable {
    static let base: UInt64 = 0x4000_0000
    static let memorySize = 1 << 20
    let iommu = SoftIOMMU()
    let device: MockDSADevice
    let memory: UnsafeMutableRawPointer
    var regs: MockDSARegisters { device.bar0 }

    init(profile: DSA.Profile = DSA.sapphireRapids, execution: MockDSADevice.Execution = .manual,
         options: MockDSADevice.Options = .init(), mapped: Int = DSAHarness.memorySize) throws {
        var p: UnsafeMutableRawPointer? = nil
        precondition(posix_memalign(&p, 4096, Self.memorySize) == 0)
        memory = p!
        memset(memory, 0, Self.memorySize)
        try iommu.map(memory, length: mapped, iova: Self.base, access: .readWrite)
        device = MockDSADevice(profile: profile, iommu: iommu, execution: execution, options: options)
    }

    deinit { free(memory) }

    func iova(_ offset: Int) -> UInt64 { Self.base + UInt64(offset) }
    func at(_ offset: Int) -> UnsafeMutableRawPointer { memory + offset }

    // MARK: Commands

    /// Writes CMD and polls CMDSTS until it is no longer active (stepping a manual engine
    /// when the command waits for descriptors); returns the error byte.
    @discardableResult
    func command(_ c: DSA.Command, _ operand: UInt32 = 0, interrupt: Bool = false) -> DSA.CommandError {
        regs.write32(DSA.CMD, DSA.Cmd.encode(c, operand: operand, interrupt: interrupt))
        return waitCommand()
    }

    func waitCommand() -> DSA.CommandError {
        for _ in 0..<100_000 {
            let s = regs.read32(DSA.CMDSTS)
            if s & DSA.CmdSts.active == 0 { return DSA.CommandError(rawValue: UInt8(s & 0xFF)) }
            if device.execution == .manual { device.step() }
        }
        Issue.record("command still active after 100000 polls")
        return DSA.CommandError(rawValue: 0xFF)
    }

    // MARK: Configuration

    var tables: DSA.TableOffset { DSA.TableOffset(low: regs.read64(DSA.TABLE_OFFSET), high: regs.read64(DSA.TABLE_OFFSET + 8)) }
    var wqStride: Int { DSA.WQCap(rawValue: regs.read64(DSA.WQCAP)).configStride }
    func wqcfg(_ wq: Int, _ dword: Int) -> Int { tables.wqcfg + wq * wqStride + dword * 4 }
    func grpcfg(_ g: Int, _ field: Int) -> Int { tables.grpcfg + g * DSA.GrpCfg.stride + field }

    /// One group per engine, WQ i in group i mod groups, `size` entries each, dedicated,
    /// priority 1, the device's maximum transfer and batch (dsa.md §4.2 steps 5–8).
    func configure(wqs: Int = 8, size: Int = 16, priority: UInt32 = 1) {
        let gencap = DSA.GenCap(rawValue: regs.read64(DSA.GENCAP))
        let groups = min(Int(regs.read64(DSA.GRPCAP) & 0xFF), Int(regs.read64(DSA.ENGCAP) & 0xFF))
        let nwq = Int((regs.read64(DSA.WQCAP) >> 16) & 0xFF)
        for g in 0..<groups {
            regs.write64(grpcfg(g, DSA.GrpCfg.engines), 1 << UInt64(g))
            var bits: UInt64 = 0
            for w in 0..<wqs where w % groups == g { bits |= 1 << UInt64(w) }
            regs.write64(grpcfg(g, DSA.GrpCfg.wqs), bits)
            regs.write32(grpcfg(g, DSA.GrpCfg.flags), UInt32(DSA.GrpCfg.trafficClassOne))
        }
        for w in 0..<nwq {
            regs.write32(wqcfg(w, DSA.WQCfg.size), w < wqs ? UInt32(size) : 0)
            regs.write32(wqcfg(w, DSA.WQCfg.mode), DSA.WQCfg.dedicatedMode(priority: priority))
            regs.write32(wqcfg(w, DSA.WQCfg.limits),
                         DSA.WQCfg.limits(maxTransferShift: gencap.maxTransferShift, maxBatchShift: gencap.maxBatchShift))
        }
    }

    /// Configure, Enable Device, Enable WQ 0..<wqs; expects success throughout.
    func bringUp(wqs: Int = 8, size: Int = 16) {
        configure(wqs: wqs, size: size)
        #expect(command(.enableDevice) == .success)
        for w in 0..<wqs { #expect(command(.enableWQ, UInt32(w)) == .success) }
    }

    func wqState(_ wq: Int) -> DSA.WQState? { DSA.WQCfg.state(regs.read32(wqcfg(wq, DSA.WQCfg.status))) }
    var deviceState: DSA.DeviceState { DSA.DeviceState(rawValue: regs.read32(DSA.GENSTS) & 3)! }

    // MARK: SWERR

    var swerr0: UInt64 { regs.read64(DSA.SWERR) }
    func clearSWERR() { regs.write64(DSA.SWERR, DSA.SWErr.valid | DSA.SWErr.overflow) }

    // MARK: Completion records

    struct Record: Equatable {
        var status: UInt8, result: UInt8, bytes: UInt32, fault: UInt64, extra: UInt32
        var code: DSA.CompletionStatus { DSA.CompletionStatus(statusByte: status) }
    }
    func record(_ offset: Int) -> Record {
        let p = at(offset)
        return Record(status: p.load(as: UInt8.self), result: p.load(fromByteOffset: 1, as: UInt8.self),
                      bytes: p.load(fromByteOffset: 4, as: UInt32.self), fault: p.load(fromByteOffset: 8, as: UInt64.self),
                      extra: p.load(fromByteOffset: 16, as: UInt32.self))
    }

    /// Waits (bounded) until the record at `offset` has a non-zero status.
    func waitRecord(_ offset: Int, timeoutNanoseconds: UInt64 = 5_000_000_000) -> Record {
        let p = at(offset).assumingMemoryBound(to: UInt8.self)
        var ts = timespec(); clock_gettime(CLOCK_MONOTONIC, &ts)
        let start = UInt64(ts.tv_sec) * 1_000_000_000 + UInt64(ts.tv_nsec)
        while true {
            if device.execution == .manual { device.step() }
            let s = UnsafeMutablePointer<UInt8>(mutating: p).withMemoryRebound(to: Atomic<UInt8>.self, capacity: 1) {
                $0.pointee.load(ordering: .acquiring)
            }
            if s != 0 { return record(offset) }
            clock_gettime(CLOCK_MONOTONIC, &ts)
            if UInt64(ts.tv_sec) * 1_000_000_000 + UInt64(ts.tv_nsec) - start > timeoutNanoseconds { return record(offset) }
            sched_yield()
        }
    }

    // MARK: Descriptors

    /// The portal offset of WQ `wq` (page 0, unlimited MSI-X portal).
    func portal(_ wq: Int) -> Int { wq * DSA.portalWindowSize }

    func submit(_ d: Desc, wq: Int = 0, page: Int = 0) {
        d.bytes.withUnsafeBytes { device.bar2.submit64(portal(wq) + page * DSA.portalPageSize, $0.baseAddress!) }
    }
}

/// A 64-byte work descriptor under construction.
struct Desc {
    var bytes = [UInt8](repeating: 0, count: 64)

    init(_ op: UInt8, flags: UInt32 = DSA.Flags.completionRecordValid | DSA.Flags.requestCompletionRecord,
         completion: UInt64 = 0, src: UInt64 = 0, dst: UInt64 = 0, size: UInt32 = 0) {
        set(DSA.Descriptor.flagsAndOpcode, flags | UInt32(op) << 24)
        set(DSA.Descriptor.completionAddress, completion)
        set(DSA.Descriptor.source, src)
        set(DSA.Descriptor.destination, dst)
        set(DSA.Descriptor.transferSize, size)
    }

    mutating func set<T: FixedWidthInteger>(_ offset: Int, _ value: T) {
        withUnsafeBytes(of: value.littleEndian) { v in
            for i in 0..<v.count { bytes[offset + i] = v[i] }
        }
    }

    /// Copies the descriptor into memory (a batch list).
    func write(to p: UnsafeMutableRawPointer) { bytes.withUnsafeBytes { p.copyMemory(from: $0.baseAddress!, byteCount: 64) } }
}

/// A RegisterIO that logs every access of the one it wraps.
final class RecordingRegisters<Base: RegisterIO>: RegisterIO, @unchecked Sendable {
    enum Access: Hashable { case read(Int, Int), write(Int, Int) }
    let base: Base
    var log: [Access] = []
    init(_ base: Base) { self.base = base }
    var length: Int { base.length }
    func read8(_ o: Int) -> UInt8 { log.append(.read(o, 1)); return base.read8(o) }
    func read16(_ o: Int) -> UInt16 { log.append(.read(o, 2)); return base.read16(o) }
    func read32(_ o: Int) -> UInt32 { log.append(.read(o, 4)); return base.read32(o) }
    func read64(_ o: Int) -> UInt64 { log.append(.read(o, 8)); return base.read64(o) }
    func write8(_ o: Int, _ v: UInt8) { log.append(.write(o, 1)); base.write8(o, v) }
    func write16(_ o: Int, _ v: UInt16) { log.append(.write(o, 2)); base.write16(o, v) }
    func write32(_ o: Int, _ v: UInt32) { log.append(.write(o, 4)); base.write32(o, v) }
    func write64(_ o: Int, _ v: UInt64) { log.append(.write(o, 8)); base.write64(o, v) }
}

@Suite("MockDSA harness")
struct MockDSAHarnessTests {
    @Test("profiles expose the documented capability values")
    func profiles() throws {
        let h = try DSAHarness()
        #expect(h.regs.read32(DSA.VERSION) == 0x100)
        #expect(h.regs.read64(DSA.GENCAP) == 0x40_915F_0107)
        let wqcap = DSA.WQCap(rawValue: h.regs.read64(DSA.WQCAP))
        #expect(wqcap.totalSize == 128 && wqcap.count == 8 && wqcap.configStride == 32 && wqcap.dedicatedMode)
        let grp = DSA.GrpCap(rawValue: h.regs.read64(DSA.GRPCAP))
        #expect(grp.count == 4 && grp.totalReadBuffers == 96)
        #expect(h.regs.read64(DSA.ENGCAP) & 0xFF == 4)
        #expect(h.regs.read64(DSA.OPCAP) == 0x0000_0001_003F_03FF)
        let gencap = DSA.GenCap(rawValue: h.regs.read64(DSA.GENCAP))
        #expect(gencap.maxTransferShift == 31 && gencap.maxBatchShift == 10 && !gencap.commandCapabilities)

        let h2 = try DSAHarness(profile: DSA.dsa2)
        #expect(h2.regs.read32(DSA.VERSION) == 0x200)
        #expect(h2.wqStride == 64)
        #expect(DSA.GenCap(rawValue: h2.regs.read64(DSA.GENCAP)).commandCapabilities)
        #expect(h2.regs.read32(DSA.CMDCAP) & (1 << 13) != 0)
    }

    @Test("WorkDescriptor and CompletionRecordValue match the byte layout of §5.1 and §6.1")
    func layouts() throws {
        var d = Desc(DSA.Opcode.dualcast, flags: 0x0102_0C, completion: 0x1111_2222_3333_4440, src: 0xAA, dst: 0xBB, size: 77)
        d.set(DSA.Descriptor.interruptHandle, UInt16(5))
        d.set(40, UInt64(0xCC)); d.set(48, UInt64(0xDD)); d.set(56, UInt64(0xEE))
        let w = DSA.WorkDescriptor(opcode: DSA.Opcode.dualcast, flags: 0x0102_0C, completionAddress: 0x1111_2222_3333_4440,
                                   source: 0xAA, destination: 0xBB, transferSize: 77, interruptHandle: 5,
                                   operation0: 0xCC, operation1: 0xDD, operation2: 0xEE)
        var out = [UInt8](repeating: 0xFF, count: 64)
        out.withUnsafeMutableBytes { w.store(to: $0.baseAddress!) }
        #expect(out == d.bytes)
        #expect(out.withUnsafeBytes { DSA.WorkDescriptor(loading: $0.baseAddress!) } == w)
        var rec = [UInt8](repeating: 0, count: 32)
        rec[0] = 0x83; rec[1] = 1; rec[4] = 0x10; rec[8] = 0x20; rec[16] = 0x30
        let r = rec.withUnsafeBytes { DSA.CompletionRecordValue(loading: $0.baseAddress!) }
        #expect(r.status == .pageFault && r.faultWasWrite && r.result == 1)
        #expect(r.bytesCompleted == 0x10 && r.faultAddress == 0x20 && r.operationSpecific == 0x30)
    }

    @Test("TABLE_OFFSET places non-overlapping tables inside BAR0")
    func tables() throws {
        for profile in DSA.profiles {
            let h = try DSAHarness(profile: profile)
            let t = h.tables
            let grpEnd = t.grpcfg + 4 * DSA.GrpCfg.stride
            let wqEnd = t.wqcfg + 8 * h.wqStride
            let permEnd = t.msixPerm + h.device.interruptVectorCount * 8
            #expect(t.grpcfg >= 0x100 && grpEnd <= t.wqcfg && wqEnd <= t.msixPerm && permEnd <= t.ims)
            #expect(t.ims < h.regs.length)
        }
    }
}
