import DeviceModels
import Hardware
import Platform
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// The CBDMA engine's fast path (plain copies through its cached translations) against the
/// general path: same bytes, same completion, and which descriptors it takes.
@Suite("CBDMA model: the engine's fast path")
struct IOATFastPathTests {
    @Test("Copies of 1 B–64 KiB at odd offsets run on the fast path, byte-exact, nothing written around them; larger ones take the general path")
    func sizes() throws {
        let rig = IOATRig("skx", execution: .thread)
        let ring = try Ring(rig, count: 64)
        let comp = try Completion(rig)
        let sizes = [1, 2, 3, 4, 7, 8, 9, 15, 16, 17, 31, 32, 33, 63, 64, 65, 127, 128, 129, 160, 255, 4095, 65535, 65536]
        let large = [65537, 1 << 20]
        let slot = (1 << 20) + 256
        let all = sizes + large
        let src = try rig.allocate(all.count * slot), dst = try rig.allocate(all.count * slot)
        fillRandom(src.base, all.count * slot, seed: 7)
        memset(dst.base, 0xA5, all.count * slot)
        rig.start(ring: ring.base, completion: comp.iova)
        for (i, n) in all.enumerated() {
            ring.copy(i, n, src: src.iova(at: i * slot + 3), dst: dst.iova(at: i * slot + 5), i == all.count - 1 ? CW : 0)
        }
        rig.doorbell(UInt16(all.count))
        rig.run()
        #expect(comp.value == ring.iova(all.count - 1) | 1)
        for (i, n) in all.enumerated() {
            let d = dst.base + i * slot
            #expect(memcmp(src.base + i * slot + 3, d + 5, n) == 0, "copy of \(n) bytes")
            #expect((0..<5).allSatisfy { d.load(fromByteOffset: $0, as: UInt8.self) == 0xA5 }, "before the copy of \(n) bytes")
            #expect((0..<64).allSatisfy { d.load(fromByteOffset: 5 + n + $0, as: UInt8.self) == 0xA5 }, "after the copy of \(n) bytes")
        }
        let stats = rig.device.statistics
        #expect(stats.descriptorsExecuted == UInt64(all.count))
        // The first descriptor fills the translation caches on the general path.
        #expect(stats.fastPathDescriptors == UInt64(sizes.count - 1))
        #expect(rig.chanerr().isEmpty)
    }

    @Test("One mapping holding source and destination: copies that do not overlap run on the fast path, an overlapping one is a memmove on the general path")
    func oneMapping() throws {
        let rig = IOATRig("skx", execution: .thread)
        let ring = try Ring(rig, count: 64)
        let comp = try Completion(rig)
        let buffer = try rig.allocate(1 << 20)
        fillRandom(buffer.base, 1 << 20, seed: 11)
        let expected = UnsafeMutableRawPointer.allocate(byteCount: 1 << 20, alignment: 64)
        defer { expected.deallocate() }
        memcpy(expected, buffer.base, 1 << 20)
        // Eight 4 KiB copies from the first half into the second, then one that overlaps itself.
        var copies: [(src: Int, dst: Int, n: Int)] = (0..<8).map { (src: $0 * 4096, dst: (1 << 19) + $0 * 8192, n: 4096) }
        copies.append((src: 100_000, dst: 100_040, n: 3000))
        for c in copies { memmove(expected + c.dst, expected + c.src, c.n) }
        rig.start(ring: ring.base, completion: comp.iova)
        for (i, c) in copies.enumerated() {
            ring.copy(i, c.n, src: buffer.iova(at: c.src), dst: buffer.iova(at: c.dst), i == copies.count - 1 ? CW : 0)
        }
        rig.doorbell(UInt16(copies.count))
        rig.run()
        #expect(comp.value == ring.iova(copies.count - 1) | 1)
        #expect(memcmp(expected, buffer.base, 1 << 20) == 0)
        let stats = rig.device.statistics
        #expect(stats.descriptorsExecuted == UInt64(copies.count))
        #expect(stats.fastPathDescriptors == 7, "all but the first (cache fill) and the overlapping one")
    }

    @Test("A fault injected once the fast path runs fails the descriptor it names, and the channel stays on the general path")
    func faultAfterFastRuns() throws {
        let rig = IOATRig("skx", execution: .thread)
        let ring = try Ring(rig, count: 64)
        let comp = try Completion(rig)
        let src = try rig.allocate(64 * 64), dst = try rig.allocate(64 * 64)
        fillRandom(src.base, 64 * 64, seed: 3)
        rig.start(ring: ring.base, completion: comp.iova)
        for i in 0..<16 { ring.copy(i, 64, src: src.iova(at: i * 64), dst: dst.iova(at: i * 64), i == 15 ? CW : 0) }
        rig.doorbell(16)
        rig.run()
        #expect(comp.value == ring.iova(15) | 1)
        #expect(rig.device.statistics.fastPathDescriptors == 15)
        rig.device.inject(.failDescriptor(index: 3, error: .readData))
        for i in 16..<32 { ring.copy(i, 64, src: src.iova(at: i * 64), dst: dst.iova(at: i * 64), CW) }
        rig.doorbell(32)
        rig.run()
        #expect(rig.state() == .halted)
        #expect(rig.chanerr().contains(.readData))
        #expect(comp.value == ring.iova(18) | 3, "HALTED at the last good descriptor, 16 + 2")
        #expect(memcmp(src.base, dst.base, 19 * 64) == 0)
        #expect(rig.device.statistics.fastPathDescriptors == 15, "an armed fault keeps the channel on the general path")
    }
}
