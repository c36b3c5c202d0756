import DeviceModels
import Hardware
import Platform
import Testing

#if canImport(Glibc)
import Glibc
#endif

private let rcr = DSA.Flags.completionRecordValid | DSA.Flags.requestCompletionRecord
private let src = 0x10000, dst = 0x20000, dst2 = 0x30000, list = 0x8000

private func pattern(_ h: DSAHarness, _ offset: Int, _ n: Int, seed: UInt8 = 1) {
    for i in 0..<n { h.at(offset + i).storeBytes(of: UInt8(truncatingIfNeeded: i &* 7 &+ Int(seed)), as: UInt8.self) }
}

private func same(_ h: DSAHarness, _ a: Int, _ b: Int, _ n: Int) -> Bool { memcmp(h.at(a), h.at(b), n) == 0 }

@Suite("MockDSA descriptors")
struct MockDSADescriptorTests {
    // MARK: Operations

    @Test("memmove copies and writes a success record only when RCR is set")
    func memmove() throws {
        let h = try DSAHarness()
        h.bringUp()
        pattern(h, src, 5000)
        h.submit(Desc(DSA.Opcode.memmove, completion: h.iova(0), src: h.iova(src), dst: h.iova(dst), size: 5000))
        #expect(h.waitRecord(0).code == .success)
        #expect(same(h, src, dst, 5000))
        // CRAV without RCR: nothing is written on success (DPDK relies on it).
        h.submit(Desc(DSA.Opcode.memmove, flags: DSA.Flags.completionRecordValid, completion: h.iova(32),
                      src: h.iova(src), dst: h.iova(dst2), size: 100), wq: 3)
        h.device.runUntilIdle()
        #expect(same(h, src, dst2, 100))
        #expect(h.record(32).status == 0)
        #expect(h.device.statistics.descriptorsExecuted == 2)
    }

    @Test("fill repeats the 8-byte pattern, including a ragged tail")
    func fill() throws {
        let h = try DSAHarness()
        h.bringUp()
        let p: UInt64 = 0x0807_0605_0403_0201
        h.submit(Desc(DSA.Opcode.fill, completion: h.iova(0), src: p, dst: h.iova(dst + 3), size: 21))
        #expect(h.waitRecord(0).code == .success)
        for i in 0..<21 { #expect(h.at(dst + 3 + i).load(as: UInt8.self) == UInt8(i % 8 + 1)) }
        #expect(h.at(dst + 24).load(as: UInt8.self) == 0)
    }

    @Test("compare and compare pattern: result, first difference, check-result predicate")
    func compare() throws {
        let h = try DSAHarness()
        h.bringUp()
        pattern(h, src, 256); pattern(h, dst, 256)
        h.submit(Desc(DSA.Opcode.compare, completion: h.iova(0), src: h.iova(src), dst: h.iova(dst), size: 256))
        let eq = h.waitRecord(0)
        #expect(eq.code == .success && eq.result == 0)
        h.at(dst + 77).storeBytes(of: 0xEE, as: UInt8.self)
        h.submit(Desc(DSA.Opcode.compare, completion: h.iova(32), src: h.iova(src), dst: h.iova(dst), size: 256))
        let ne = h.waitRecord(32)
        #expect(ne.code == .success && ne.result == 1 && ne.bytes == 77)
        // Check result: expected "equal" but different ⇒ 0x02.
        h.submit(Desc(DSA.Opcode.compare, flags: rcr | DSA.Flags.checkResult, completion: h.iova(64),
                      src: h.iova(src), dst: h.iova(dst), size: 256))
        #expect(h.waitRecord(64).code == .successFalsePredicate)
        // Compare pattern.
        for i in 0..<64 { h.at(dst2 + i).storeBytes(of: 0xAB, as: UInt8.self) }
        h.submit(Desc(DSA.Opcode.comparePattern, completion: h.iova(96), src: h.iova(dst2), dst: 0xABAB_ABAB_ABAB_ABAB, size: 64))
        #expect(h.waitRecord(96) == .init(status: 1, result: 0, bytes: 0, fault: 0, extra: 0))
        h.submit(Desc(DSA.Opcode.comparePattern, completion: h.iova(128), src: h.iova(dst2), dst: 0xABAB_ABAB_AB00_ABAB, size: 64))
        let pr = h.waitRecord(128)
        #expect(pr.result == 1 && pr.bytes == 2)
    }

    @Test("dualcast writes both destinations; bits 11:0 must match")
    func dualcast() throws {
        let h = try DSAHarness()
        h.bringUp()
        pattern(h, src, 3000)
        var d = Desc(DSA.Opcode.dualcast, completion: h.iova(0), src: h.iova(src), dst: h.iova(dst), size: 3000)
        d.set(DSA.Descriptor.destination2, h.iova(dst2))
        h.submit(d)
        #expect(h.waitRecord(0).code == .success)
        #expect(same(h, src, dst, 3000) && same(h, src, dst2, 3000))
        d.set(DSA.Descriptor.completionAddress, h.iova(32))
        d.set(DSA.Descriptor.destination2, h.iova(dst2 + 64))
        h.submit(d)
        #expect(h.waitRecord(32).code == .dualcastAlignment)
    }

    @Test("CRC generation is CRC-32C, chainable through the seed; copy with CRC copies too")
    func crc() throws {
        let h = try DSAHarness()
        h.bringUp()
        let text = Array("123456789".utf8)
        for (i, b) in text.enumerated() { h.at(src + i).storeBytes(of: b, as: UInt8.self) }
        h.submit(Desc(DSA.Opcode.crcGenerate, completion: h.iova(0), src: h.iova(src), size: 9))
        #expect(h.waitRecord(0).extra == 0xE306_9283)  // the CRC-32C check value
        h.submit(Desc(DSA.Opcode.crcGenerate, completion: h.iova(32), src: h.iova(src), size: 4))
        let first = h.waitRecord(32).extra
        var rest = Desc(DSA.Opcode.crcGenerate, completion: h.iova(64), src: h.iova(src + 4), size: 5)
        rest.set(DSA.Descriptor.crcSeed, first)
        h.submit(rest)
        #expect(h.waitRecord(64).extra == 0xE306_9283)
        h.submit(Desc(DSA.Opcode.copyCRC, completion: h.iova(96), src: h.iova(src), dst: h.iova(dst), size: 9))
        #expect(h.waitRecord(96).extra == 0xE306_9283)
        #expect(same(h, src, dst, 9))
        h.submit(Desc(DSA.Opcode.copyCRC, completion: h.iova(128), src: h.iova(src), dst: h.iova(src + 4), size: 9))
        #expect(h.waitRecord(128).code == .overlappingBuffers)
    }

    @Test("NOP and drain write records; cache flush succeeds on mapped memory")
    func noopDrain() throws {
        let h = try DSAHarness()
        h.bringUp()
        h.submit(Desc(DSA.Opcode.noop, completion: h.iova(0)))
        h.submit(Desc(DSA.Opcode.memmove, completion: h.iova(32), src: h.iova(src), dst: h.iova(dst), size: 64))
        h.submit(Desc(DSA.Opcode.drain, completion: h.iova(64)))
        h.submit(Desc(DSA.Opcode.cacheFlush, completion: h.iova(96), dst: h.iova(dst), size: 4096))
        h.device.runUntilIdle()
        for r in [0, 32, 64, 96] { #expect(h.record(r).code == .success) }
    }

    // MARK: Descriptor errors

    @Test("descriptor errors: opcode, flags, reserved, size, handle, alignment")
    func descriptorErrors() throws {
        var p = DSA.sapphireRapids
        p.opcap[0] &= ~(UInt64(1) << 4)  // no fill
        p.gencap &= ~UInt64(0b110)       // no overlap, no cache control
        let h = try DSAHarness(profile: p)
        h.bringUp()
        var r = 0
        func expect(_ d: Desc, _ status: DSA.CompletionStatus, extra: UInt32? = nil,
                    sourceLocation: SourceLocation = #_sourceLocation) {
            var d = d
            d.set(DSA.Descriptor.completionAddress, h.iova(r))
            h.submit(d)
            let rec = h.waitRecord(r)
            #expect(rec.code == status, sourceLocation: sourceLocation)
            if let extra { #expect(rec.extra == extra, sourceLocation: sourceLocation) }
            r += 32
        }
        expect(Desc(DSA.Opcode.fill, dst: h.iova(dst), size: 8), .badOpcode)
        expect(Desc(0x3F), .badOpcode)
        expect(Desc(DSA.Opcode.memmove, flags: rcr | 1 << 6, src: h.iova(src), dst: h.iova(dst), size: 8),
               .invalidFlags, extra: 1 << 6)
        expect(Desc(DSA.Opcode.memmove, flags: rcr | DSA.Flags.cacheControl, src: h.iova(src), dst: h.iova(dst), size: 8),
               .invalidFlags, extra: DSA.Flags.cacheControl)
        expect(Desc(DSA.Opcode.memmove, flags: rcr | DSA.Flags.blockOnFault, src: h.iova(src), dst: h.iova(dst), size: 8),
               .invalidFlags, extra: DSA.Flags.blockOnFault)
        var reserved = Desc(DSA.Opcode.memmove, src: h.iova(src), dst: h.iova(dst), size: 8)
        reserved.set(38, UInt16(1))
        expect(reserved, .nonZeroReserved)
        var reserved2 = Desc(DSA.Opcode.memmove, src: h.iova(src), dst: h.iova(dst), size: 8)
        reserved2.set(56, UInt8(1))
        expect(reserved2, .nonZeroReserved)
        expect(Desc(DSA.Opcode.memmove, src: h.iova(src), dst: h.iova(dst), size: 0), .transferSizeRange)
        expect(Desc(DSA.Opcode.memmove, src: h.iova(src), dst: h.iova(src + 8), size: 64), .overlappingBuffers)
        var handle = Desc(DSA.Opcode.noop, flags: rcr | DSA.Flags.requestCompletionInterrupt)
        handle.set(DSA.Descriptor.interruptHandle, UInt16(200))
        expect(handle, .invalidInterruptHandle)
        expect(Desc(DSA.Opcode.batch, src: h.iova(list), size: 1), .descriptorCountRange)
        expect(Desc(DSA.Opcode.batch, src: h.iova(list), size: 1025), .descriptorCountRange)
        expect(Desc(DSA.Opcode.batch, src: h.iova(list + 32), size: 2), .descriptorListAlignment)
        #expect(h.swerr0 == 0)
    }

    @Test("transfer size above the WQ's maximum is 0x13")
    func transferSizeLimit() throws {
        let h = try DSAHarness()
        h.configure(wqs: 1, size: 16)
        h.regs.write32(h.wqcfg(0, DSA.WQCfg.limits), DSA.WQCfg.limits(maxTransferShift: 12, maxBatchShift: 5))
        #expect(h.command(.enableDevice) == .success)
        #expect(h.command(.enableWQ, 0) == .success)
        h.submit(Desc(DSA.Opcode.memmove, completion: h.iova(0), src: h.iova(src), dst: h.iova(dst), size: 4097))
        #expect(h.waitRecord(0).code == .transferSizeRange)
        h.submit(Desc(DSA.Opcode.memmove, completion: h.iova(32), src: h.iova(src), dst: h.iova(dst), size: 4096))
        #expect(h.waitRecord(32).code == .success)
        h.submit(Desc(DSA.Opcode.batch, completion: h.iova(64), src: h.iova(list), size: 33))
        #expect(h.waitRecord(64).code == .descriptorCountRange)
    }

    @Test("errors that cannot reach a record go to SWERR")
    func softwareErrors() throws {
        let h = try DSAHarness()
        h.bringUp()
        // Misaligned completion record: 0x1B in SWERR.
        h.submit(Desc(DSA.Opcode.noop, completion: h.iova(8)), wq: 2)
        h.device.runUntilIdle()
        #expect(DSA.SWErr.error(h.swerr0) == 0x1B)
        #expect(DSA.SWErr.wqIndex(h.swerr0) == 2)
        #expect(h.regs.read64(DSA.SWERR + 16) == h.iova(8))
        h.clearSWERR()
        // Unmapped completion record: 0x1A.
        h.submit(Desc(DSA.Opcode.noop, completion: 0x7000_0000))
        h.device.runUntilIdle()
        #expect(DSA.SWErr.error(h.swerr0) == 0x1A)
        #expect(h.regs.read64(DSA.SWERR + 16) == 0x7000_0000)
        h.clearSWERR()
        // A failure without CRAV: its status goes to SWERR, with the opcode.
        h.submit(Desc(DSA.Opcode.memmove, flags: 0, src: h.iova(src), dst: h.iova(dst), size: 0))
        h.device.runUntilIdle()
        #expect(DSA.SWErr.error(h.swerr0) == 0x13)
        #expect(DSA.SWErr.opcode(h.swerr0) == DSA.Opcode.memmove)
        #expect(h.swerr0 & DSA.SWErr.descriptorValid != 0)
        h.clearSWERR()
        // A success without CRAV: nothing anywhere.
        h.submit(Desc(DSA.Opcode.memmove, flags: 0, src: h.iova(src), dst: h.iova(dst), size: 8))
        h.device.runUntilIdle()
        #expect(h.swerr0 & DSA.SWErr.valid == 0)
        #expect(same(h, src, dst, 8))
    }

    @Test("DSA 2.0: a WQ's op_config refuses opcodes it does not allow")
    func opConfig() throws {
        let h = try DSAHarness(profile: DSA.dsa2)
        h.configure(wqs: 2, size: 16)
        // op_config resets to OPCAP; take memmove away from WQ 1 only.
        let d = h.wqcfg(1, DSA.WQCfg.opConfig)
        #expect(h.regs.read32(d) == UInt32(truncatingIfNeeded: DSA.sprOPCAP0))
        h.regs.write32(d, h.regs.read32(d) & ~(1 << UInt32(DSA.Opcode.memmove)))
        #expect(h.command(.enableDevice) == .success)
        #expect(h.command(.enableWQ, 0) == .success && h.command(.enableWQ, 1) == .success)
        h.submit(Desc(DSA.Opcode.memmove, completion: h.iova(0), src: h.iova(src), dst: h.iova(dst), size: 8), wq: 0)
        h.submit(Desc(DSA.Opcode.memmove, completion: h.iova(32), src: h.iova(src), dst: h.iova(dst), size: 8), wq: 1)
        #expect(h.waitRecord(0).code == .success)
        #expect(h.waitRecord(32).code == .badOpcode)
        // op_config is locked while the WQ is enabled.
        h.regs.write32(d, 0xFFFF_FFFF)
        #expect(h.regs.read32(d) & (1 << UInt32(DSA.Opcode.memmove)) == 0)
    }

    @Test("FENCE outside a batch is accepted, or refused with 0x11 in strict mode")
    func fenceOutsideBatch() throws {
        let lax = try DSAHarness()
        lax.bringUp(wqs: 1)
        lax.submit(Desc(DSA.Opcode.noop, flags: rcr | DSA.Flags.fence, completion: lax.iova(0)))
        #expect(lax.waitRecord(0).code == .success)
        var o = MockDSADevice.Options(); o.strictFence = true
        let strict = try DSAHarness(options: o)
        strict.bringUp(wqs: 1)
        strict.submit(Desc(DSA.Opcode.noop, flags: rcr | DSA.Flags.fence, completion: strict.iova(0)))
        let r = strict.waitRecord(0)
        #expect(r.code == .invalidFlags && r.extra == DSA.Flags.fence)
    }

    @Test("CRC seed from memory; an unmapped seed address is a read fault")
    func crcSeedAddress() throws {
        let h = try DSAHarness(mapped: 0x40000)
        h.bringUp(wqs: 1)
        for (i, b) in Array("123456789".utf8).enumerated() { h.at(src + i).storeBytes(of: b, as: UInt8.self) }
        h.submit(Desc(DSA.Opcode.crcGenerate, completion: h.iova(0), src: h.iova(src), size: 4))
        let first = h.waitRecord(0).extra
        h.at(0x3000).storeBytes(of: first, as: UInt32.self)
        var d = Desc(DSA.Opcode.crcGenerate, flags: rcr | DSA.Flags.crcReadSeed, completion: h.iova(32), src: h.iova(src + 4), size: 5)
        d.set(DSA.Descriptor.crcSeedAddress, h.iova(0x3000))
        h.submit(d)
        #expect(h.waitRecord(32).extra == 0xE306_9283)
        d.set(DSA.Descriptor.completionAddress, h.iova(64))
        d.set(DSA.Descriptor.crcSeedAddress, h.iova(0x50000))
        h.submit(d)
        let f = h.waitRecord(64)
        #expect(f.status == DSA.CompletionStatus.pageFault.rawValue && f.fault == h.iova(0x50000))
    }

    @Test("a completion record reused without zeroing keeps its stale status until rewritten")
    func staleRecord() throws {
        let h = try DSAHarness()
        h.bringUp(wqs: 1)
        h.device.stall()
        h.at(0).storeBytes(of: DSA.CompletionStatus.success.rawValue, as: UInt8.self)
        h.submit(Desc(DSA.Opcode.memmove, completion: h.iova(0), src: h.iova(src), dst: h.iova(dst), size: 0))
        // The driver would see "success" here although the descriptor has not run.
        #expect(h.record(0).code == .success)
        h.device.resume()
        h.device.runUntilIdle()
        #expect(h.record(0).code == .transferSizeRange)
    }

    // MARK: Partial completion

    @Test("a write fault part way through a copy: status 0x83, bytes done, fault address; the driver resumes")
    func partialWrite() throws {
        let h = try DSAHarness(mapped: 0x22000)  // dst + 0x2000 is the first unmapped byte
        h.bringUp()
        pattern(h, src, 0x3000)
        h.submit(Desc(DSA.Opcode.memmove, completion: h.iova(0), src: h.iova(src), dst: h.iova(dst + 0x800), size: 0x3000))
        let r = h.waitRecord(0)
        #expect(r.status == DSA.CompletionStatus.pageFault.rawValue | DSA.CompletionRecord.statusWriteFault)
        #expect(r.bytes == 0x1800)
        #expect(r.fault == h.iova(0x22000))
        #expect(r.result & 1 == 0)
        #expect(same(h, src, dst + 0x800, 0x1800))
        // Map the rest and resubmit the remainder (ascending: advance both addresses).
        try h.iommu.map(h.at(0x22000), length: DSAHarness.memorySize - 0x22000, iova: h.iova(0x22000), access: .readWrite)
        let done = Int(r.bytes)
        h.submit(Desc(DSA.Opcode.memmove, completion: h.iova(32), src: h.iova(src + done),
                      dst: h.iova(dst + 0x800 + done), size: UInt32(0x3000 - done)))
        #expect(h.waitRecord(32).code == .success)
        #expect(same(h, src, dst + 0x800, 0x3000))
    }

    @Test("a read fault gives status 0x03 without the write bit; a fill faults on write")
    func partialRead() throws {
        let h = try DSAHarness(mapped: 0x40000)
        h.bringUp()
        h.submit(Desc(DSA.Opcode.memmove, completion: h.iova(0), src: h.iova(0x3F000), dst: h.iova(dst), size: 0x2000))
        let r = h.waitRecord(0)
        #expect(r.status == DSA.CompletionStatus.pageFault.rawValue)
        #expect(r.bytes == 0x1000 && r.fault == h.iova(0x40000))
        h.submit(Desc(DSA.Opcode.fill, completion: h.iova(32), src: 0x55, dst: h.iova(0x3FFF0), size: 0x20))
        let f = h.waitRecord(32)
        #expect(f.status == 0x83 && f.bytes == 0x10)
    }

    @Test("an overlapping copy with dst > src runs descending; a fault reports direction 1")
    func descendingFault() throws {
        let h = try DSAHarness(mapped: 0x21000)
        h.bringUp()
        // src at 0x1F800…0x217FF overlaps dst 0x20000…; the top page of both is unmapped.
        h.submit(Desc(DSA.Opcode.memmove, completion: h.iova(0), src: h.iova(0x1F800), dst: h.iova(0x20000), size: 0x2000))
        let r = h.waitRecord(0)
        #expect(r.code == .pageFault)
        #expect(r.result & DSA.CompletionRecord.resultDescending != 0)
        // Descending overlap copy without a fault is correct.
        pattern(h, 0x10000, 0x1000)
        memcpy(h.at(0x18000), h.at(0x10000), 0x1000)  // keep a reference
        h.submit(Desc(DSA.Opcode.memmove, completion: h.iova(32), src: h.iova(0x10000), dst: h.iova(0x10100), size: 0x1000))
        #expect(h.waitRecord(32).code == .success)
        #expect(same(h, 0x10100, 0x18000, 0x1000))
    }

    // MARK: Batches and fences

    private func member(_ h: DSAHarness, _ i: Int, _ d: Desc) { d.write(to: h.at(list + 64 * i)) }

    @Test("a batch of successful members: status 1, descriptors completed = count")
    func batchSuccess() throws {
        let h = try DSAHarness()
        h.bringUp()
        pattern(h, src, 4 * 256)
        for i in 0..<4 {
            member(h, i, Desc(DSA.Opcode.memmove, flags: DSA.Flags.completionRecordValid, completion: h.iova(0x400 + 32 * i),
                              src: h.iova(src + 256 * i), dst: h.iova(dst + 256 * i), size: 256))
        }
        h.submit(Desc(DSA.Opcode.batch, completion: h.iova(0), src: h.iova(list), size: 4))
        #expect(h.device.occupancy(wq: 0) == 1)  // a batch takes one WQ slot
        let r = h.waitRecord(0)
        #expect(r.code == .success && r.bytes == 4)
        #expect(same(h, src, dst, 4 * 256))
        for i in 0..<4 { #expect(h.record(0x400 + 32 * i).status == 0) }
    }

    @Test("a failing member without a fence: the rest still run, batch status 0x05, count = all")
    func batchFailureNoFence() throws {
        let h = try DSAHarness()
        h.bringUp()
        for i in 0..<4 {
            member(h, i, Desc(DSA.Opcode.memmove, flags: DSA.Flags.completionRecordValid, completion: h.iova(0x400 + 32 * i),
                              src: h.iova(src), dst: h.iova(dst + 256 * i), size: i == 1 ? 0 : 16))
        }
        h.submit(Desc(DSA.Opcode.batch, completion: h.iova(0), src: h.iova(list), size: 4))
        let r = h.waitRecord(0)
        #expect(r.code == .batchFail && r.bytes == 4)
        #expect(h.record(0x400 + 32).code == .transferSizeRange)
        #expect(h.record(0x400 + 64).status == 0)
        #expect(h.device.statistics.descriptorsExecuted == 4)
    }

    @Test("a fenced member after a failure abandons it and every later member")
    func batchFence() throws {
        let h = try DSAHarness()
        h.bringUp()
        h.at(dst + 0x300).storeBytes(of: UInt64(0x1111), as: UInt64.self)
        for i in 0..<5 {
            let flags = DSA.Flags.completionRecordValid | (i == 2 ? DSA.Flags.fence : 0)
            member(h, i, Desc(DSA.Opcode.memmove, flags: flags, completion: h.iova(0x400 + 32 * i),
                              src: h.iova(src), dst: h.iova(dst + 0x100 * i), size: i == 1 ? 0 : 8))
        }
        h.submit(Desc(DSA.Opcode.batch, completion: h.iova(0), src: h.iova(list), size: 5))
        let r = h.waitRecord(0)
        #expect(r.code == .batchFail && r.bytes == 2)
        #expect(h.at(dst + 0x300).load(as: UInt64.self) == 0x1111)  // member 3 never ran
        #expect(h.record(0x400 + 64).status == 0)  // the fenced member has no record
        #expect(h.device.statistics.descriptorsExecuted == 2)
    }

    @Test("a fence after successful members waits and runs")
    func batchFenceSuccess() throws {
        let h = try DSAHarness()
        h.bringUp()
        pattern(h, src, 64)
        member(h, 0, Desc(DSA.Opcode.memmove, flags: DSA.Flags.completionRecordValid, completion: h.iova(0x400),
                          src: h.iova(src), dst: h.iova(dst), size: 64))
        member(h, 1, Desc(DSA.Opcode.memmove, flags: DSA.Flags.completionRecordValid | DSA.Flags.fence,
                          completion: h.iova(0x420), src: h.iova(dst), dst: h.iova(dst2), size: 64))
        h.submit(Desc(DSA.Opcode.batch, completion: h.iova(0), src: h.iova(list), size: 2))
        #expect(h.waitRecord(0).code == .success)
        #expect(same(h, src, dst2, 64))
    }

    @Test("an unmapped descriptor-list page: batch status 0x06, members read and done")
    func batchListFault() throws {
        let h = try DSAHarness(mapped: 0x9000)
        h.bringUp()
        // The list starts 2 descriptors before the end of the mapping.
        let start = 0x9000 - 128
        for i in 0..<2 {
            Desc(DSA.Opcode.noop, flags: DSA.Flags.completionRecordValid, completion: h.iova(0x400 + 32 * i))
                .write(to: h.at(start + 64 * i))
        }
        h.submit(Desc(DSA.Opcode.batch, completion: h.iova(0), src: h.iova(start), size: 4))
        let r = h.waitRecord(0)
        #expect(r.code == .batchPageFault && r.bytes == 2 && r.fault == h.iova(0x9000))
    }

    @Test("a batch inside a batch is refused as a bad opcode")
    func nestedBatch() throws {
        let h = try DSAHarness()
        h.bringUp()
        member(h, 0, Desc(DSA.Opcode.batch, completion: h.iova(0x400), src: h.iova(list), size: 2))
        member(h, 1, Desc(DSA.Opcode.noop, completion: h.iova(0x420)))
        h.submit(Desc(DSA.Opcode.batch, completion: h.iova(0), src: h.iova(list), size: 2))
        #expect(h.waitRecord(0).code == .batchFail)
        #expect(h.record(0x400).code == .badOpcode)
        #expect(h.record(0x420).code == .success)
    }

    // MARK: Submission: drops, occupancy

    @Test("a dedicated WQ full by one: the extra descriptor is lost, only SWERR tells")
    func droppedDescriptor() throws {
        let h = try DSAHarness()
        h.bringUp(wqs: 8, size: 16)
        for i in 0..<17 {
            h.submit(Desc(DSA.Opcode.noop, completion: h.iova(32 * i)), wq: 5)
        }
        #expect(h.device.occupancy(wq: 5) == 16)
        #expect(h.regs.read32(h.wqcfg(5, DSA.WQCfg.status)) & 0xFFFF == 16)
        #expect(h.device.statistics.droppedDescriptors == 1)
        #expect(h.swerr0 & DSA.SWErr.valid != 0)
        #expect(DSA.SWErr.error(h.swerr0) == DSA.SoftwareErrorCode.wqFull)
        #expect(DSA.SWErr.wqIndex(h.swerr0) == 5 && h.swerr0 & DSA.SWErr.wqIndexValid != 0)
        #expect(h.device.runUntilIdle() == 16)
        for i in 0..<16 { #expect(h.record(32 * i).code == .success) }
        #expect(h.record(32 * 16).status == 0)  // never completes
        #expect(h.device.occupancy(wq: 5) == 0)
    }

    @Test("a descriptor to a disabled WQ is dropped with SWERR; misaligned portal writes are ignored")
    func disabledWQ() throws {
        let h = try DSAHarness()
        h.bringUp(wqs: 2)
        h.submit(Desc(DSA.Opcode.noop, completion: h.iova(0)), wq: 4)
        #expect(DSA.SWErr.error(h.swerr0) == DSA.SoftwareErrorCode.wqNotEnabled)
        #expect(DSA.SWErr.opcode(h.swerr0) == DSA.Opcode.noop)
        h.clearSWERR()
        Desc(DSA.Opcode.noop, completion: h.iova(32)).bytes.withUnsafeBytes {
            h.device.bar2.submit64(h.portal(0) + 32, $0.baseAddress!)
        }
        #expect(h.device.occupancy(wq: 0) == 0 && h.swerr0 & DSA.SWErr.valid == 0)
        // Any 64-byte slot of the page works.
        Desc(DSA.Opcode.noop, completion: h.iova(64)).bytes.withUnsafeBytes {
            h.device.bar2.submit64(h.portal(1) + 0x1FC0, $0.baseAddress!)
        }
        #expect(h.waitRecord(64).code == .success)
    }

    // MARK: Drain, abort, disable

    @Test("Drain WQ and Disable WQ wait for queued descriptors; Abort WQ discards them without records")
    func drainAbort() throws {
        let h = try DSAHarness()
        h.bringUp(wqs: 2)
        for i in 0..<3 { h.submit(Desc(DSA.Opcode.noop, completion: h.iova(32 * i))) }
        h.regs.write32(DSA.CMD, DSA.Cmd.encode(.drainWQ, operand: 1))
        #expect(h.regs.read32(DSA.CMDSTS) & DSA.CmdSts.active != 0)
        h.device.step(); h.device.step()
        #expect(h.regs.read32(DSA.CMDSTS) & DSA.CmdSts.active != 0)
        #expect(h.waitCommand() == .success)
        for i in 0..<3 { #expect(h.record(32 * i).code == .success) }
        // Abort.
        for i in 3..<6 { h.submit(Desc(DSA.Opcode.noop, completion: h.iova(32 * i))) }
        #expect(h.command(.abortWQ, 1) == .success)
        #expect(h.device.occupancy(wq: 0) == 0)
        h.device.runUntilIdle()
        for i in 3..<6 { #expect(h.record(32 * i).status == 0) }
        // Disable WQ: busy (state 2) while it drains, then disabled.
        for i in 6..<8 { h.submit(Desc(DSA.Opcode.noop, completion: h.iova(32 * i))) }
        h.regs.write32(DSA.CMD, DSA.Cmd.encode(.disableWQ, operand: 1))
        #expect(h.wqState(0) == .busy)
        h.submit(Desc(DSA.Opcode.noop, completion: h.iova(32 * 9)))  // refused while disabling
        #expect(h.waitCommand() == .success)
        #expect(h.wqState(0) == .disabled)
        for i in 6..<8 { #expect(h.record(32 * i).code == .success) }
        #expect(h.record(32 * 9).status == 0)
    }

    @Test("a stalled engine keeps Drain All active; Reset Device aborts everything")
    func stalledDrain() throws {
        let h = try DSAHarness()
        h.bringUp(wqs: 1)
        h.device.stall()
        h.submit(Desc(DSA.Opcode.noop, completion: h.iova(0)))
        h.regs.write32(DSA.CMD, DSA.Cmd.encode(.drainAll))
        for _ in 0..<100 { _ = h.regs.read32(DSA.CMDSTS); h.device.step() }
        #expect(h.regs.read32(DSA.CMDSTS) & DSA.CmdSts.active != 0)
        h.device.resume()
        #expect(h.waitCommand() == .success)
        #expect(h.record(0).code == .success)
        h.submit(Desc(DSA.Opcode.noop, completion: h.iova(32)))
        #expect(h.command(.resetDevice) == .success)
        h.device.runUntilIdle()
        #expect(h.record(32).status == 0)
        #expect(h.deviceState == .disabled && h.wqState(0) == .disabled)
    }

    // MARK: Interrupts

    @Test("RCI signals the descriptor's vector through its eventfd; the permission entry can suppress it")
    func completionInterrupts() throws {
        let h = try DSAHarness()
        h.bringUp()
        let fd0 = try EventFD(), fd1 = try EventFD(), fd2 = try EventFD()
        try h.device.routeInterrupts(start: 0, eventFDs: [fd0.rawValue, fd1.rawValue, fd2.rawValue])
        var d = Desc(DSA.Opcode.noop, flags: rcr | DSA.Flags.requestCompletionInterrupt, completion: h.iova(0))
        d.set(DSA.Descriptor.interruptHandle, UInt16(2))
        h.submit(d)
        h.device.runUntilIdle()
        #expect(fd2.wait(timeoutMilliseconds: 1000) == 1)
        #expect(h.device.statistics.interruptsSignalled == 1 && h.device.interruptCount(vector: 2) == 1)
        #expect(fd1.consume() == 0 && fd0.consume() == 0)
        // Ignore bit in the MSI-X permission entry.
        h.regs.write32(h.tables.msixPerm + 2 * 8, DSA.MSIXPerm.ignore)
        d.set(DSA.Descriptor.completionAddress, h.iova(32))
        h.submit(d)
        h.device.runUntilIdle()
        #expect(h.record(32).code == .success)
        #expect(fd2.consume() == 0)
        #expect(h.device.statistics.interruptsLost == 1)
        // IMS portals: no IMS table is modelled, so an interrupt handle is invalid there.
        d.set(DSA.Descriptor.completionAddress, h.iova(64))
        h.submit(d, page: 2)
        #expect(h.waitRecord(64).code == .invalidInterruptHandle)
    }

    @Test("errors raise vector 0 with INTCAUSE bit 0 when GENCTRL enables it; halts with bit 4")
    func errorInterrupts() throws {
        let h = try DSAHarness()
        let fd = try EventFD()
        try h.device.routeInterrupts(start: 0, eventFDs: [fd.rawValue])
        h.bringUp(wqs: 1)
        h.submit(Desc(DSA.Opcode.noop), wq: 3)
        #expect(fd.consume() == 0)  // GENCTRL off: SWERR only
        h.clearSWERR()
        h.regs.write32(DSA.GENCTRL, DSA.GenCtrl.softwareErrorInterruptEnable | DSA.GenCtrl.haltInterruptEnable)
        h.submit(Desc(DSA.Opcode.noop), wq: 3)
        #expect(fd.wait(timeoutMilliseconds: 1000) == 1)
        #expect(h.regs.read32(DSA.INTCAUSE) & DSA.IntCause.softwareError != 0)
        h.device.inject(.halt(resetType: .software))
        #expect(fd.wait(timeoutMilliseconds: 1000) == 1)
        #expect(h.regs.read32(DSA.INTCAUSE) & DSA.IntCause.halted != 0)
    }

    // MARK: Fault injection

    @Test("an injected failure hits exactly the chosen operation")
    func injectedFailure() throws {
        let h = try DSAHarness()
        h.bringUp()
        h.device.inject(.failDescriptor(index: 2, status: .hardwareError))
        for i in 0..<4 {
            h.submit(Desc(DSA.Opcode.memmove, completion: h.iova(32 * i), src: h.iova(src), dst: h.iova(dst), size: 8))
        }
        h.device.runUntilIdle()
        #expect(h.record(0).code == .success && h.record(32).code == .success)
        #expect(h.record(64).code == .hardwareError)
        #expect(h.record(96).code == .success)
    }

    // MARK: Engine thread

    @Test("the engine thread runs copies of every size, in order per WQ")
    func threaded() throws {
        let h = try DSAHarness(execution: .thread)
        h.bringUp(wqs: 2, size: 64)
        pattern(h, src, 0x40000)
        let sizes = [1, 63, 64, 4096, 65536, 0x40000]
        for (i, n) in sizes.enumerated() {
            h.submit(Desc(DSA.Opcode.memmove, completion: h.iova(32 * i), src: h.iova(src), dst: h.iova(0x80000), size: UInt32(n)),
                     wq: i % 2)
            #expect(h.waitRecord(32 * i).code == .success)
            #expect(same(h, src, 0x80000, n))
        }
        // Many small ones without waiting in between: every record arrives.
        for i in 0..<64 {
            h.submit(Desc(DSA.Opcode.memmove, completion: h.iova(0x1000 + 32 * i), src: h.iova(src + i),
                          dst: h.iova(0x60000 + i * 64), size: 64), wq: 1)
        }
        for i in 0..<64 { #expect(h.waitRecord(0x1000 + 32 * i).code == .success) }
        #expect(h.command(.drainAll) == .success)
        #expect(h.device.waitUntilIdle())
        #expect(h.device.statistics.descriptorsExecuted == UInt64(sizes.count + 64))
        #expect(h.command(.disableDevice) == .success)
        #expect(h.device.statistics.droppedDescriptors == 0)
    }

    @Test("Abort All on a running engine discards queued work and completes")
    func threadedAbort() throws {
        let h = try DSAHarness(execution: .thread)
        h.bringUp(wqs: 1, size: 16)
        h.device.stall()
        for i in 0..<8 { h.submit(Desc(DSA.Opcode.noop, completion: h.iova(32 * i))) }
        h.device.resume()
        #expect(h.command(.abortAll) == .success)
        #expect(h.device.occupancy(wq: 0) == 0)
        #expect(h.command(.resetDevice) == .success)
    }
}
