import Glibc
import Synchronization
import Testing
@testable import Platform

final class RecordingSpace: DMAAddressSpace, @unchecked Sendable {
    // @unchecked: tests use it from one thread.
    let validIOVARanges: [ClosedRange<UInt64>]
    var maps: [(UInt64, Int)] = []
    var unmaps: [(UInt64, Int)] = []
    init(valid: [ClosedRange<UInt64>] = [0...UInt64.max]) { validIOVARanges = valid }
    func map(_ address: UnsafeMutableRawPointer, length: Int, iova: UInt64, access: DMAAccess) throws(DriverError) {
        maps.append((iova, length))
    }
    func unmap(iova: UInt64, length: Int) throws(DriverError) { unmaps.append((iova, length)) }
}

/// Live memory calls with a counter of munmaps and an optional mlock failure.
final class CountingSyscalls: @unchecked Sendable {
    // @unchecked: only atomics and constants.
    let munmaps = Atomic<Int>(0)
    let hugeMaps = Atomic<Int>(0)
    let hugeUsed = Atomic<Int>(0)
    let mlockErrno: Int32
    let freeHuge: Int
    let hugeWorks: Bool
    init(mlockErrno: Int32 = 0, freeHugePages: Int = 0, hugeMapWorks: Bool = true) {
        self.mlockErrno = mlockErrno
        self.freeHuge = freeHugePages
        self.hugeWorks = hugeMapWorks
    }
    var table: MemorySyscalls {
        var t = MemorySyscalls.live
        t.munmap = { [self] a, l in munmaps.add(1, ordering: .relaxed); Glibc.munmap(a, l) }
        let e = mlockErrno
        if e != 0 { t.mlock = { _, _ in e } }
        t.checkLimit = { _ in nil }
        t.freeHugePages = { [self] _ in freeHuge - hugeUsed.load(ordering: .relaxed) }
        // "Huge" pages are played by normal pages aligned to 2 MiB, so no pool is needed.
        t.mmap = { [self] length, huge in
            guard huge else { return MemorySyscalls.live.mmap(length, false) }
            hugeMaps.add(1, ordering: .relaxed)
            guard hugeWorks else { return (nil, ENOMEM) }
            hugeUsed.add(length / HugePages.size, ordering: .relaxed)
            let (p, err) = MemorySyscalls.live.mmap(length + HugePages.size, false)
            guard let p else { return (nil, err) }
            let aligned = (UInt(bitPattern: p) + UInt(HugePages.size - 1)) & ~UInt(HugePages.size - 1)
            let head = Int(aligned - UInt(bitPattern: p))
            if head > 0 { Glibc.munmap(p, head) }
            let tail = HugePages.size - head
            if tail > 0 { Glibc.munmap(UnsafeMutableRawPointer(bitPattern: aligned + UInt(length))!, tail) }
            return (UnsafeMutableRawPointer(bitPattern: aligned), 0)
        }
        return t
    }
}

@Suite struct DMAMemoryTests {
    @Test func allocateMapsIntoEverySpaceAndUnmapsOnRelease() throws {
        let a = RecordingSpace(), b = RecordingSpace()
        let memory = DMAMemory(spaces: [a, b], policy: .allocate(in: 0x10_0000...0xFFFF_FFFF), preferHugePages: false)
        do {
            let buffer = try memory.allocate(length: 10_000)
            #expect(buffer.iova == 0x10_0000)
            #expect(a.maps.count == 1 && b.maps.count == 1)
            #expect(a.maps[0].1 == 12288)  // whole pages
            #expect(memory.iova(of: buffer.base + 5000) == 0x10_0000 + 5000)
            #expect(memory.address(ofIOVA: buffer.iova(at: 17)) == buffer.base + 17)
            #expect(memory.iova(of: buffer.base + 12288) == nil)
            #expect(buffer.bytes.allSatisfy { $0 == 0 })
        }
        #expect(a.unmaps.count == 1 && b.unmaps.count == 1)
        #expect(memory.regions.isEmpty)
    }

    @Test func identityPolicyUsesTheVirtualAddress() throws {
        let memory = DMAMemory(spaces: [RecordingSpace()], preferHugePages: false)
        let buffer = try memory.allocate(length: 4096)
        #expect(buffer.iova == UInt64(UInt(bitPattern: buffer.base)))
    }

    @Test func identityOutsideValidRangesIsRefusedWithAHint() throws {
        let memory = DMAMemory(spaces: [RecordingSpace(valid: [0x1000...0xFFFF_FFFF])], preferHugePages: false)
        do {
            _ = try memory.allocate(length: 4096)
            Issue.record("a 47-bit heap address should not fit a 32-bit aperture")
        } catch {
            #expect(error.code == .invalidMapping)
            #expect(error.message.contains("IOVAPolicy.allocate"))
        }
    }

    @Test func allocatorSkipsHolesInValidRangesAndReusesFreedSpace() throws {
        // Aperture: 1 MiB … 1 MiB+8 KiB, then a hole, then 2 MiB … 4 MiB.
        let space = RecordingSpace(valid: [0x10_0000...0x10_1FFF, 0x20_0000...0x3F_FFFF])
        let memory = DMAMemory(spaces: [space], policy: .allocate(in: 0...0xFFFF_FFFF), preferHugePages: false)
        let a = try memory.allocate(length: 8192)
        #expect(a.iova == 0x10_0000)
        do {
            let b = try memory.allocate(length: 4096)
            #expect(b.iova == 0x20_0000, "the first range is full; the hole is skipped")
            let c = try memory.allocate(length: 16384)
            #expect(c.iova == 0x20_1000)
        }
        let d = try memory.allocate(length: 4096)
        #expect(d.iova == 0x20_0000, "freed IOVA space is reused")
        #expect(DMAMemory.firstFit(length: 0x40_0000, align: 4096, in: space.validIOVARanges, avoiding: []) == nil)
    }

    @Test func registrationCoversWholePagesAndUnregisteringTwiceFails() throws {
        let space = RecordingSpace()
        let memory = DMAMemory(spaces: [space], policy: .allocate(in: 0x10_0000...0xFFFF_FFFF), preferHugePages: false)
        let raw = UnsafeMutableRawPointer.allocate(byteCount: 3 * 4096, alignment: 4096)
        defer { raw.deallocate() }
        let inner = raw + 100
        let iova = try memory.register(inner, length: 5000)
        #expect(iova == 0x10_0000 + 100)
        #expect(space.maps[0].1 == 8192)
        #expect(memory.iova(of: inner + 4000) == iova + 4000)
        do {
            _ = try memory.register(raw + 200, length: 10)
            Issue.record("overlapping registration must fail")
        } catch { #expect(error.code == .invalidMapping) }
        try memory.unregister(inner)
        #expect(space.unmaps.count == 1)
        do {
            try memory.unregister(inner)
            Issue.record("second unregister must fail")
        } catch { #expect(error.code == .unmappedAddress) }
    }

    @Test func memlockFailureIsReportedAndNothingLeaks() throws {
        let calls = CountingSyscalls(mlockErrno: ENOMEM)
        let space = RecordingSpace()
        let memory = DMAMemory(spaces: [space], policy: .identity, preferHugePages: false, system: calls.table)
        do {
            _ = try memory.allocate(length: 4096)
            Issue.record("mlock failure must surface")
        } catch {
            #expect(error.code == .memlockLimit)
            #expect(error.errno == .noMemory)
            #expect(error.message.contains("RLIMIT_MEMLOCK"))
            #expect(error.message.contains("ulimit -l"))
        }
        #expect(calls.munmaps.load(ordering: .relaxed) == 1, "the pages are unmapped again")
        #expect(space.maps.isEmpty && memory.regions.isEmpty)
    }

    @Test func memlockCheckBeforeLocking() {
        #expect(MemoryLock.check(length: 4096, locked: 0, limit: nil, privileged: false) == nil)
        #expect(MemoryLock.check(length: 1 << 30, locked: 0, limit: 65536, privileged: true) == nil)
        #expect(MemoryLock.check(length: 4096, locked: 62000, limit: 65536, privileged: false)?.code == .memlockLimit)
        #expect(MemoryLock.check(length: 4096, locked: 0, limit: 65536, privileged: false) == nil)
    }

    @Test func placementOnANodeBeforeFirstTouch() throws {
        let memory = DMAMemory(spaces: [RecordingSpace()], preferHugePages: false)
        let node = NUMA.maxNode
        let buffer = try memory.allocate(length: 64 << 10, node: node)
        #expect(memory.regions.first?.node == node)
        if NUMA.isAvailable {
            #expect(NUMA.node(ofAddress: buffer.base) == node)
            #expect(NUMA.node(ofAddress: buffer.address(at: 60 << 10)) == node)
        }
        do {
            _ = try memory.allocate(length: 4096, node: NUMA.maxNode + 1)
            Issue.record("a node that does not exist must be refused")
        } catch { #expect(error.code == .invalidArgument) }
    }

    @Test(.enabled(if: HugePages.free() >= 1, "needs a free 2 MiB huge page (vm.nr_hugepages)"))
    func hugePagesWhenThePoolHasThem() throws {
        let memory = DMAMemory(spaces: [RecordingSpace()], policy: .allocate(in: 0x10_0000...0xFFFF_FFFF_FFFF))
        let buffer = try memory.allocate(length: 2 << 20)
        #expect(memory.regions.first?.hugePages == true)
        #expect(buffer.iova % UInt64(HugePages.size) == 0)
    }

    @Test func hugePagesAreUsedWhenThePoolHasEnoughAndAlignTheIOVA() throws {
        let calls = CountingSyscalls(freeHugePages: 2)
        let memory = DMAMemory(spaces: [RecordingSpace()], policy: .allocate(in: 0x1000...0xFFFF_FFFF),
                               preferHugePages: true, system: calls.table)
        let small = try memory.allocate(length: 4096)  // below 1 MiB: normal pages
        #expect(small.iova == 0x1000)
        let big = try memory.allocate(length: 3 << 20)  // two 2 MiB pages
        #expect(calls.hugeMaps.load(ordering: .relaxed) == 1)
        let region = try #require(memory.regions.first { $0.hugePages })
        #expect(region.mappedLength == 4 << 20)
        #expect(big.iova == 0x20_0000, "huge-page IOVAs are 2 MiB aligned")
        #expect(UInt(bitPattern: big.base) % UInt(HugePages.size) == 0)
        // Not enough free pages for another 4 MiB: normal pages, no huge mmap attempted.
        let third = try memory.allocate(length: 4 << 20)
        #expect(calls.hugeMaps.load(ordering: .relaxed) == 1)
        #expect(memory.regions.filter(\.hugePages).count == 1)
        _ = third
    }

    @Test func fallsBackToNormalPagesWhenHugeMappingFails() throws {
        let calls = CountingSyscalls(freeHugePages: 100, hugeMapWorks: false)
        let memory = DMAMemory(spaces: [RecordingSpace()], policy: .identity, preferHugePages: true, system: calls.table)
        let buffer = try memory.allocate(length: 2 << 20)
        #expect(calls.hugeMaps.load(ordering: .relaxed) == 1)
        #expect(memory.regions.first?.hugePages == false)
        #expect(buffer.length == 2 << 20)
    }

    @Test func boundsAreChecked() async {
        await #expect(processExitsWith: .failure) {
            let memory = DMAMemory(spaces: [RecordingSpace()], preferHugePages: false)
            let buffer = try memory.allocate(length: 100)
            _ = buffer.iova(at: 101)
        }
    }

    @Test func zeroLengthIsRefused() {
        let memory = DMAMemory(spaces: [RecordingSpace()], preferHugePages: false)
        do {
            _ = try memory.allocate(length: 0)
            Issue.record("zero length must fail")
        } catch { #expect(error.code == .invalidArgument) }
    }

    @Test func loadUInt64ReadsOnlyWholeAlignedWordsInsideARegion() throws {
        let memory = DMAMemory(spaces: [RecordingSpace()], policy: .allocate(in: 0x10_0000...0xFFFF_FFFF), preferHugePages: false)
        let buffer = try memory.allocate(length: 4096)
        buffer.base.storeBytes(of: 0x1122_3344_5566_7788, toByteOffset: 64, as: UInt64.self)
        buffer.base.storeBytes(of: 0xA5A5, toByteOffset: 4088, as: UInt64.self)
        #expect(memory.loadUInt64(atIOVA: buffer.iova + 64) == 0x1122_3344_5566_7788)
        #expect(memory.loadUInt64(atIOVA: buffer.iova + 4088) == 0xA5A5)  // the region's last word
        #expect(memory.loadUInt64(atIOVA: buffer.iova + 66) == nil)  // misaligned
        #expect(memory.loadUInt64(atIOVA: buffer.iova + 4096) == nil)  // past the end
        #expect(memory.loadUInt64(atIOVA: buffer.iova - 8) == nil)
    }

    /// A cold path that follows a client's descriptors (a drain check on the power thread) may
    /// race the client freeing them: the region must leave the table before its pages are
    /// unmapped, so a read under the table's lock sees either the value or nil, never a fault.
    @Test func loadUInt64SeesNothingOnceReleaseHasBegun() throws {
        let seenDuringUnmap = Mutex<[UInt64?]>([])
        let target = Atomic<UInt64>(0)
        let box = Mutex<DMAMemory?>(nil)
        var system = MemorySyscalls.live
        system.checkLimit = { _ in nil }
        system.munmap = { a, l in
            if let m = box.withLock({ $0 }) {
                let v = m.loadUInt64(atIOVA: target.load(ordering: .relaxed))
                seenDuringUnmap.withLock { $0.append(v) }
            }
            Glibc.munmap(a, l)
        }
        let memory = DMAMemory(spaces: [RecordingSpace()], policy: .allocate(in: 0x10_0000...0xFFFF_FFFF),
                               preferHugePages: false, system: system)
        box.withLock { $0 = memory }
        do {
            let buffer = try memory.allocate(length: 4096)
            buffer.base.storeBytes(of: 42, toByteOffset: 24, as: UInt64.self)
            target.store(buffer.iova + 24, ordering: .relaxed)
            #expect(memory.loadUInt64(atIOVA: buffer.iova + 24) == 42)
        }
        box.withLock { $0 = nil }
        #expect(seenDuringUnmap.withLock { $0 } == [nil])
    }
}
