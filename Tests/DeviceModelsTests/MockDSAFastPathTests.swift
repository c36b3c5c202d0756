import DeviceModels
import Hardware
import Platform
import Testing

#if canImport(Glibc)
import Glibc
#endif

private let crav = DSA.Flags.completionRecordValid
private let list = 0x8000, records = 0x4000

/// Deterministic bytes (xorshift), so that every copy has content of its own.
private func scramble(_ p: UnsafeMutableRawPointer, _ n: Int, seed: UInt64) {
    var x = seed | 1
    for i in 0..<n {
        x ^= x << 13; x ^= x >> 7; x ^= x << 17
        p.storeBytes(of: UInt8(truncatingIfNeeded: x), toByteOffset: i, as: UInt8.self)
    }
}

/// A seeded generator (xorshift64), so that a failing round can be replayed.
private struct Xorshift: RandomNumberGenerator {
    var state: UInt64
    mutating func next() -> UInt64 {
        state ^= state << 13; state ^= state >> 7; state ^= state << 17
        return state
    }
}

/// Writes `members` as the batch list at `list` and submits the batch (its record at 0).
private func runBatch(_ h: DSAHarness, _ members: [Desc]) -> DSAHarness.Record {
    for (i, d) in members.enumerated() { d.write(to: h.at(list + 64 * i)) }
    h.at(0).storeBytes(of: UInt8(0), as: UInt8.self)  // the batch record's status
    h.submit(Desc(DSA.Opcode.batch, completion: h.iova(0), src: h.iova(list), size: UInt32(members.count)))
    return h.waitRecord(0)
}

/// A batch member (error-only record at `records + 32 * index`).
private func member(_ h: DSAHarness, _ op: UInt8, _ index: Int, src: UInt64 = 0, dst: UInt64 = 0, size: Int,
                    flags: UInt32 = crav) -> Desc {
    Desc(op, flags: flags, completion: h.iova(records + 32 * index), src: src, dst: dst, size: UInt32(size))
}

/// The DSA engine's fast path for batch members (memory move, fill, no-op) against the general
/// path: same bytes, same records and statuses, and which members it takes.
@Suite("DSA model: the engine's fast path")
struct MockDSAFastPathTests {
    @Test("Moves of 1 B–64 KiB at odd offsets run on the fast path, byte-exact, nothing written around them; a larger one takes the general path")
    func sizes() throws {
        let h = try DSAHarness()
        h.bringUp()
        let sizes = [1, 2, 3, 7, 8, 9, 15, 16, 17, 31, 32, 33, 63, 64, 65, 127, 128, 129, 255, 4095, 65535, 65536, 65537]
        let slot = 65537 + 256, srcBase = 0x10000, dstBase = srcBase + 3 * slot  // within 1 MiB: 3 slots each side
        var members: [Desc] = []
        var placed: [(src: Int, dst: Int, n: Int)] = []
        for (i, n) in sizes.enumerated() {
            let s = srcBase + (i % 3) * slot + 3 + (i * 131) % 200, d = dstBase + (i % 3) * slot + 5
            placed.append((s, d, n))
            members.append(member(h, DSA.Opcode.memmove, i, src: h.iova(s), dst: h.iova(d), size: n))
        }
        // Three destination slots are reused: check each batch of three moves before the next.
        var executed = 0
        for start in stride(from: 0, to: sizes.count, by: 3) {
            let part = Array(start..<min(start + 3, sizes.count))
            scramble(h.at(srcBase), 3 * slot, seed: UInt64(start + 1))
            memset(h.at(dstBase), 0xA5, 3 * slot)
            let r = runBatch(h, part.map { members[$0] })
            #expect(r.code == .success && r.bytes == UInt32(part.count))
            executed += part.count
            for i in part {
                let (s, d, n) = placed[i]
                #expect(memcmp(h.at(s), h.at(d), n) == 0, "move of \(n) bytes")
                #expect((1...5).allSatisfy { h.at(d - $0).load(as: UInt8.self) == 0xA5 }, "before the move of \(n) bytes")
                #expect((0..<64).allSatisfy { h.at(d + n + $0).load(as: UInt8.self) == 0xA5 }, "after the move of \(n) bytes")
                #expect(h.record(records + 32 * i).status == 0, "no record for the move of \(n) bytes")
            }
        }
        let stats = h.device.statistics
        #expect(stats.descriptorsExecuted == UInt64(executed))
        #expect(stats.fastPathDescriptors == UInt64(sizes.count - 1), "all but the one of 65537 bytes")
    }

    @Test("Fills of ragged sizes and no-ops run on the fast path and leave what the general path leaves")
    func fillAndNoop() throws {
        let fast = try DSAHarness(), slow = try DSAHarness()
        fast.bringUp(); slow.bringUp()
        let pattern: UInt64 = 0x0807_0605_0403_0201
        let sizes = [1, 5, 8, 13, 64, 100, 4097]
        var members: [Desc] = []
        var offset = 0x10000
        for (i, n) in sizes.enumerated() {
            members.append(member(fast, DSA.Opcode.fill, 2 * i, src: pattern &* UInt64(i + 1), dst: fast.iova(offset + i), size: n))
            members.append(member(fast, DSA.Opcode.noop, 2 * i + 1, size: 0))
            offset += n + 64
        }
        #expect(runBatch(fast, members).code == .success)
        #expect(fast.device.statistics.fastPathDescriptors == UInt64(members.count))
        // The general path: each descriptor alone (a record requested, at another address).
        for (i, var d) in members.enumerated() {
            d.set(DSA.Descriptor.flagsAndOpcode, crav | DSA.Flags.requestCompletionRecord | UInt32(d.bytes[7]) << 24)
            d.set(DSA.Descriptor.completionAddress, slow.iova(0x100 * i))
            slow.submit(d)
            #expect(slow.waitRecord(0x100 * i).code == .success)
        }
        #expect(slow.device.statistics.fastPathDescriptors == 0)
        #expect(memcmp(fast.at(0x10000), slow.at(0x10000), offset - 0x10000 + 64) == 0)
    }

    @Test("Random batches of moves, fills and no-ops leave the same memory as the general path, whatever takes which path")
    func matchesGeneralPath() throws {
        let fast = try DSAHarness(), slow = try DSAHarness()
        fast.bringUp(); slow.bringUp()
        var rng = Xorshift(state: 0x9E37_79B9_7F4A_7C15)
        for h in [fast, slow] { scramble(h.at(0x10000), 0xF0000, seed: 99) }
        for round in 0..<20 {
            var members: [Desc] = []
            for i in 0..<32 {
                let n = [1, 7, 64, 65, 300, 4096, 9000][Int.random(in: 0..<7, using: &rng)]
                let s = Int.random(in: 0x10000..<(0xF0000 - n), using: &rng)
                let d = Int.random(in: 0x10000..<(0xF0000 - n), using: &rng)
                switch Int.random(in: 0..<4, using: &rng) {
                case 0: members.append(member(fast, DSA.Opcode.fill, i, src: UInt64.random(in: 0...UInt64.max, using: &rng), dst: fast.iova(d), size: n))
                case 1: members.append(member(fast, DSA.Opcode.noop, i, size: 0))
                default: members.append(member(fast, DSA.Opcode.memmove, i, src: fast.iova(s), dst: fast.iova(d), size: n))
                }
            }
            #expect(runBatch(fast, members).code == .success, "round \(round)")
            for (i, var d) in members.enumerated() {
                d.set(DSA.Descriptor.flagsAndOpcode, crav | DSA.Flags.requestCompletionRecord | UInt32(d.bytes[7]) << 24)
                d.set(DSA.Descriptor.completionAddress, slow.iova(32 * i))
                slow.submit(d)
                #expect(slow.waitRecord(32 * i).code == .success)
                slow.at(32 * i).storeBytes(of: UInt8(0), as: UInt8.self)
            }
            #expect(memcmp(fast.at(0x10000), slow.at(0x10000), 0xF0000) == 0, "round \(round)")
        }
        // Overlapping moves (random addresses) took the general path; everything else the fast one.
        let stats = fast.device.statistics
        #expect(stats.descriptorsExecuted == 20 * 32)
        #expect(stats.fastPathDescriptors > 20 * 32 / 2)
        #expect(slow.device.statistics.fastPathDescriptors == 0)
    }

    @Test("An overlapping move takes the general path: a memmove, or status 0x16 where GENCAP has no overlapping moves")
    func overlap() throws {
        for overlapping in [true, false] {
            var p = DSA.sapphireRapids
            if !overlapping { p.gencap &= ~UInt64(0b10) }
            let h = try DSAHarness(profile: p)
            h.bringUp()
            scramble(h.at(0x10000), 0x10000, seed: 5)
            let expected = UnsafeMutableRawPointer.allocate(byteCount: 0x10000, alignment: 64)
            defer { expected.deallocate() }
            memcpy(expected, h.at(0x10000), 0x10000)
            // Apart, overlapping upwards by 40 bytes, apart again.
            let moves = [(0x10000, 0x18000, 256), (0x11000, 0x11028, 3000), (0x12000, 0x1A000, 64)]
            for (i, m) in moves.enumerated() where overlapping || i != 1 {
                memmove(expected + (m.1 - 0x10000), expected + (m.0 - 0x10000), m.2)
            }
            let r = runBatch(h, moves.enumerated().map { i, m in member(h, DSA.Opcode.memmove, i, src: h.iova(m.0), dst: h.iova(m.1), size: m.2) })
            #expect(memcmp(expected, h.at(0x10000), 0x10000) == 0, "overlapping moves supported: \(overlapping)")
            if overlapping {
                #expect(r.code == .success)
            } else {
                #expect(r.code == .batchFail && r.bytes == 3)
                #expect(h.record(records + 32).code == .overlappingBuffers)
            }
            // After a failure (status 0x16) the rest of the batch takes the general path.
        #expect(h.device.statistics.fastPathDescriptors == (overlapping ? 2 : 1))
        }
    }

    @Test("Two IOVAs of the same host memory: a move whose buffers overlap in host memory takes the general path (memmove)")
    func aliasedMappings() throws {
        let h = try DSAHarness()
        let alias: UInt64 = 0x8000_0000
        try h.iommu.map(h.at(0x80000), length: 0x10000, iova: alias, access: .readWrite)
        h.bringUp()
        scramble(h.at(0x80000), 0x10000, seed: 8)
        let expected = UnsafeMutableRawPointer.allocate(byteCount: 0x10000, alignment: 64)
        defer { expected.deallocate() }
        memcpy(expected, h.at(0x80000), 0x10000)
        // Source through the main mapping, destination 16 bytes further through the alias.
        memmove(expected + 16, expected, 1000)
        let r = runBatch(h, [member(h, DSA.Opcode.memmove, 0, src: h.iova(0x80000), dst: alias + 16, size: 1000),
                             member(h, DSA.Opcode.noop, 1, size: 0)])
        #expect(r.code == .success)
        #expect(memcmp(expected, h.at(0x80000), 0x10000) == 0)
        #expect(h.device.statistics.fastPathDescriptors == 1, "the no-op only")
    }

    @Test("Buffers ending exactly at a mapping's end run on the fast path; one byte more is a page fault with the bytes before it written")
    func bounds() throws {
        let mapped = 0x20000
        let h = try DSAHarness(mapped: mapped)
        h.bringUp()
        scramble(h.at(0x10000), 0x1000, seed: 3)
        let end = mapped  // the first unmapped offset
        let ok = member(h, DSA.Opcode.memmove, 0, src: h.iova(0x10000), dst: h.iova(end - 100), size: 100)
        let fillOK = member(h, DSA.Opcode.fill, 1, src: 0x1122_3344_5566_7788, dst: h.iova(end - 8), size: 8)
        let over = member(h, DSA.Opcode.memmove, 0, src: h.iova(0x10000), dst: h.iova(end - 99), size: 100)
        let srcOver = member(h, DSA.Opcode.memmove, 1, src: h.iova(end - 50), dst: h.iova(0x11000), size: 51)
        #expect(runBatch(h, [ok, fillOK]).code == .success)
        #expect(memcmp(h.at(0x10000), h.at(end - 100), 92) == 0)
        #expect(h.at(end - 8).load(as: UInt64.self) == 0x1122_3344_5566_7788)
        #expect(h.device.statistics.fastPathDescriptors == 2)
        let r = runBatch(h, [over, srcOver])
        #expect(r.code == .batchFail && r.bytes == 2)
        #expect(memcmp(h.at(0x10000), h.at(end - 99), 99) == 0)
        let w = h.record(records)
        #expect(w.code == .pageFault && w.status & DSA.CompletionRecord.statusWriteFault != 0)
        #expect(w.bytes == UInt32(4096 - (end - 99) % 4096) && w.fault == h.iova(end))
        let rd = h.record(records + 32)
        #expect(rd.code == .pageFault && rd.status & DSA.CompletionRecord.statusWriteFault == 0 && rd.fault == h.iova(end))
        #expect(rd.bytes == 50)
        #expect(memcmp(h.at(end - 50), h.at(0x11000), 50) == 0)
        #expect(h.device.statistics.fastPathDescriptors == 2)
    }

    @Test("A destination in a read-only mapping, an unmapped source and an unmap between batches are faults, never fast-path copies")
    func faults() throws {
        let h = try DSAHarness()
        let ro: UInt64 = 0x9000_0000
        let roMemory = UnsafeMutableRawPointer.allocate(byteCount: 0x1000, alignment: 4096)
        defer { roMemory.deallocate() }
        memset(roMemory, 0x5A, 0x1000)
        try h.iommu.map(roMemory, length: 0x1000, iova: ro, access: .read)
        h.bringUp()
        scramble(h.at(0x10000), 0x1000, seed: 4)
        // Warm the caches, then a write to the read-only mapping and a read from an unmapped IOVA.
        let r = runBatch(h, [member(h, DSA.Opcode.memmove, 0, src: h.iova(0x10000), dst: h.iova(0x20000), size: 64),
                             member(h, DSA.Opcode.memmove, 1, src: h.iova(0x10000), dst: ro, size: 64),
                             member(h, DSA.Opcode.fill, 2, src: 7, dst: ro + 64, size: 64),
                             member(h, DSA.Opcode.memmove, 3, src: 0xA000_0000, dst: h.iova(0x20000), size: 64)])
        #expect(r.code == .batchFail && r.bytes == 4)
        #expect(h.record(records + 32).code == .pageFault && h.record(records + 32).fault == ro)
        #expect(h.record(records + 64).code == .pageFault && h.record(records + 64).fault == ro + 64)
        #expect(h.record(records + 96).code == .pageFault && h.record(records + 96).fault == 0xA000_0000)
        #expect((0..<0x1000).allSatisfy { roMemory.load(fromByteOffset: $0, as: UInt8.self) == 0x5A })
        #expect(h.device.statistics.fastPathDescriptors == 1)

        // The cached mapping of the read-only page goes away: the next batch faults on it.
        try h.iommu.map(h.at(0xF0000), length: 0x1000, iova: 0xB000_0000, access: .readWrite)
        #expect(runBatch(h, [member(h, DSA.Opcode.memmove, 0, src: 0xB000_0000, dst: h.iova(0x20000), size: 64),
                             member(h, DSA.Opcode.memmove, 1, src: 0xB000_0000, dst: h.iova(0x21000), size: 64)]).code == .success)
        #expect(h.device.statistics.fastPathDescriptors == 3)
        try h.iommu.unmap(iova: 0xB000_0000, length: 0x1000)
        memset(h.at(0x22000), 0x33, 64)
        let gone = runBatch(h, [member(h, DSA.Opcode.memmove, 0, src: 0xB000_0000, dst: h.iova(0x22000), size: 64)] +
                               [member(h, DSA.Opcode.noop, 1, size: 0)])
        #expect(gone.code == .batchFail)
        #expect(h.record(records).code == .pageFault && h.record(records).fault == 0xB000_0000)
        #expect((0..<64).allSatisfy { h.at(0x22000 + $0).load(as: UInt8.self) == 0x33 })
        #expect(h.device.statistics.fastPathDescriptors == 3, "after the fault, the no-op takes the general path")
    }

    @Test("Members the fast path leaves alone get the general path's statuses: reserved bytes, RCR, misaligned record, zero size, a batch, drain")
    func leftToGeneralPath() throws {
        let h = try DSAHarness()
        h.bringUp()
        var reserved = member(h, DSA.Opcode.memmove, 0, src: h.iova(0x10000), dst: h.iova(0x20000), size: 64)
        reserved.set(40, UInt64(1))
        var reserved38 = member(h, DSA.Opcode.noop, 1, size: 0)
        reserved38.set(DSA.Descriptor.reserved38, UInt16(1))
        let withRecord = member(h, DSA.Opcode.memmove, 2, src: h.iova(0x10000), dst: h.iova(0x20100), size: 64,
                                flags: crav | DSA.Flags.requestCompletionRecord)
        var misaligned = member(h, DSA.Opcode.fill, 3, src: 1, dst: h.iova(0x20200), size: 8)
        misaligned.set(DSA.Descriptor.completionAddress, h.iova(records + 32 * 3 + 8))
        let zero = member(h, DSA.Opcode.memmove, 4, src: h.iova(0x10000), dst: h.iova(0x20300), size: 0)
        let drain = member(h, DSA.Opcode.drain, 5, size: 0)
        let nested = member(h, DSA.Opcode.batch, 6, src: h.iova(list), size: 2)
        let badFlag = member(h, DSA.Opcode.memmove, 7, src: h.iova(0x10000), dst: h.iova(0x20400), size: 64,
                             flags: crav | DSA.Flags.checkResult)
        // Each after a plain move (which the fast path takes), in a batch of its own.
        let plain = member(h, DSA.Opcode.memmove, 8, src: h.iova(0x10000), dst: h.iova(0x21000), size: 64)
        func run(_ d: Desc, _ batch: DSA.CompletionStatus, sourceLocation: SourceLocation = #_sourceLocation) {
            let before = h.device.statistics.fastPathDescriptors
            #expect(runBatch(h, [plain, d]).code == batch, sourceLocation: sourceLocation)
            #expect(h.device.statistics.fastPathDescriptors == before + 1, sourceLocation: sourceLocation)
        }
        run(reserved, .batchFail)
        #expect(h.record(records).code == .nonZeroReserved)
        run(reserved38, .batchFail)
        #expect(h.record(records + 32).code == .nonZeroReserved)
        run(withRecord, .success)
        #expect(h.record(records + 64).code == .success && memcmp(h.at(0x10000), h.at(0x20100), 64) == 0)
        h.clearSWERR()
        run(misaligned, .batchFail)
        #expect(DSA.SWErr.error(h.swerr0) == DSA.CompletionStatus.completionRecordAlignment.rawValue)
        #expect(h.at(0x20200).load(as: UInt8.self) == 0, "the fill did not run")
        run(zero, .batchFail)
        #expect(h.record(records + 128).code == .transferSizeRange)
        run(drain, .success)
        #expect(h.record(records + 160).status == 0, "drain succeeds without a record")
        run(nested, .batchFail)
        #expect(h.record(records + 192).code == .badOpcode)
        run(badFlag, .batchFail)
        #expect(h.record(records + 224).code == .invalidFlags)
        // The eight plain moves, and the three that passed validation (the others fail before
        // the operation count, as in the general path).
        #expect(h.device.statistics.descriptorsExecuted == 11)
    }

    @Test("An injected failure keeps every member on the general path, which counts it: the named member fails")
    func injectedFailure() throws {
        let h = try DSAHarness()
        h.bringUp()
        let moves = (0..<4).map { member(h, DSA.Opcode.memmove, $0, src: h.iova(0x10000), dst: h.iova(0x20000 + 0x100 * $0), size: 64) }
        #expect(runBatch(h, moves).code == .success)
        #expect(h.device.statistics.fastPathDescriptors == 4)
        h.device.inject(.failDescriptor(index: 2, status: .hardwareError))
        let r = runBatch(h, moves)
        #expect(r.code == .batchFail && r.bytes == 4)
        #expect(h.record(records + 64).code == .hardwareError)
        #expect(h.device.statistics.fastPathDescriptors == 4, "armed, then after the failure: the general path")
        #expect(h.device.statistics.descriptorsExecuted == 8)
    }
}
