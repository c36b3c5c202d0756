import Glibc
import Synchronization
import Testing
@testable import Platform

/// An address space whose `map` runs a probe (while the new region is already in the table)
/// and then fails, as a VFIO map refused by the kernel would.
final class FailingSpace: DMAAddressSpace, @unchecked Sendable {
    // @unchecked: tests use it from one thread.
    let validIOVARanges: [ClosedRange<UInt64>] = [0...UInt64.max]
    var probe: (UInt64) -> Void = { _ in }
    func map(_ address: UnsafeMutableRawPointer, length: Int, iova: UInt64, access: DMAAccess) throws(DriverError) {
        probe(iova)
        throw DriverError(.invalidMapping, "refused by the test")
    }
    func unmap(iova: UInt64, length: Int) throws(DriverError) {}
}

/// Owns a DMA buffer (``DMABuffer`` is non-copyable), so that buffers fit in an array.
private final class Owned {
    let buffer: DMABuffer
    init(_ buffer: consuming DMABuffer) { self.buffer = buffer }
}

// DMARegionSnapshot is non-copyable: the expectation macros cannot call it, so every lookup
// goes through a local first.
@Suite struct DMARegionSnapshotTests {
    @Test func translatesEveryRegionAndSaysHowManyBytesFollow() throws {
        let memory = DMAMemory(spaces: [RecordingSpace()], policy: .allocate(in: 0x10_0000...0xFFFF_FFFF), preferHugePages: false)
        var snapshot = DMARegionSnapshot(memory)
        // More regions than the snapshot's first table holds, so it grows on a refresh.
        let owned = try (0..<20).map { i in Owned(try memory.allocate(length: 4096 * (i % 3 + 1))) }
        for o in owned {
            let t = try #require(snapshot.translate(o.buffer.iova(at: 100)) as (address: UnsafeMutableRawPointer, contiguous: UInt64)?)
            #expect(t.address == o.buffer.base + 100)
            #expect(t.contiguous == UInt64(memory.region(containingIOVA: o.buffer.iova)!.length - 100))
            let whole = snapshot.address(ofIOVA: o.buffer.iova, length: o.buffer.length)
            #expect(whole == o.buffer.base)
        }
        // Source and destination alternating between two regions (the two recent entries).
        for _ in 0..<3 {
            let s = snapshot.address(ofIOVA: owned[3].buffer.iova(at: 8), length: 8)
            let d = snapshot.address(ofIOVA: owned[17].buffer.iova(at: 16), length: 8)
            #expect(s == owned[3].buffer.base + 8 && d == owned[17].buffer.base + 16)
        }
        let length = memory.region(containingIOVA: owned[5].buffer.iova)!.length
        let inside = snapshot.address(ofIOVA: owned[5].buffer.iova, length: length)
        let beyond = snapshot.address(ofIOVA: owned[5].buffer.iova, length: length + 1)
        #expect(inside == owned[5].buffer.base)
        #expect(beyond == nil, "a range past the region's end is not in it")
        let below = snapshot.translate(0x1000), above = snapshot.translate(0xF0_0000_0000)
        #expect(below == nil && above == nil)
    }

    @Test func seesRegionsAddedAndForgetsRegionsRemoved() throws {
        let memory = DMAMemory(spaces: [RecordingSpace()], policy: .allocate(in: 0x10_0000...0xFFFF_FFFF), preferHugePages: false)
        var snapshot = DMARegionSnapshot(memory)
        let first = try memory.allocate(length: 4096)
        var found = snapshot.address(ofIOVA: first.iova, length: 1)
        #expect(found == first.base)
        var iova: UInt64 = 0
        do {
            let second = try memory.allocate(length: 8192)
            iova = second.iova
            found = snapshot.address(ofIOVA: iova, length: 8192)
            #expect(found == second.base, "a region added after the last lookup")
        }
        var gone = snapshot.translate(iova) == nil
        #expect(gone, "a freed buffer's IOVA is no longer DMA memory")
        let page = UnsafeMutableRawPointer.allocate(byteCount: 8192, alignment: 4096)
        defer { page.deallocate() }
        let registered = try memory.register(page, length: 4096)
        found = snapshot.address(ofIOVA: registered, length: 4096)
        #expect(found == page)
        try memory.unregister(page)
        gone = snapshot.translate(registered) == nil
        #expect(gone, "an unregistered region's IOVA is no longer DMA memory")
        found = snapshot.address(ofIOVA: first.iova, length: 4096)
        #expect(found == first.base)
    }

    @Test func aFailedMappingLeavesNoTranslationBehind() throws {
        // The region is in the table while it is being mapped: a lookup made then must not
        // survive the failure (the pages are unmapped right after).
        let space = FailingSpace()
        let memory = DMAMemory(spaces: [space], policy: .allocate(in: 0x10_0000...0xFFFF_FFFF), preferHugePages: false)
        nonisolated(unsafe) var snapshot = DMARegionSnapshot(memory)
        nonisolated(unsafe) var cache = DMARegionCache()
        var seen: UInt64 = 0
        var seenBySnapshot = false, seenByCache = false
        space.probe = { iova in
            seen = iova
            seenBySnapshot = snapshot.translate(iova) != nil
            seenByCache = cache.address(ofIOVA: iova, length: 1, in: memory) != nil
        }
        #expect(throws: DriverError.self) { _ = try memory.allocate(length: 4096) }
        #expect(seen != 0 && seenBySnapshot && seenByCache)
        let stale = snapshot.translate(seen) != nil
        let staleCache = cache.address(ofIOVA: seen, length: 1, in: memory) != nil
        #expect(!stale, "the snapshot forgot the region that was rolled back")
        #expect(!staleCache, "the cache forgot the region that was rolled back")
    }
}
