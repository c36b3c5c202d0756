import Testing
@testable import Platform

final class RecordingSpace: DMAAddressSpace, @unchecked Sendable {
    let validIOVARanges: [ClosedRange<UInt64>] = [0...UInt64.max]
    var maps: [(UInt64, Int)] = []
    var unmaps: [(UInt64, Int)] = []
    func map(_ address: UnsafeMutableRawPointer, length: Int, iova: UInt64, access: DMAAccess) throws(DriverError) {
        maps.append((iova, length))
    }
    func unmap(iova: UInt64, length: Int) throws(DriverError) { unmaps.append((iova, length)) }
}

@Suite struct DMAMemoryTests {
    @Test func allocateMapsIntoEverySpaceAndUnmapsOnRelease() throws {
        let a = RecordingSpace(), b = RecordingSpace()
        let memory = DMAMemory(spaces: [a, b], policy: .allocate(in: 0x10_0000...0xFFFF_FFFF), preferHugePages: false)
        do {
            let buffer = try memory.allocate(length: 10_000)
            #expect(buffer.iova == 0x10_0000)
            #expect(a.maps.count == 1 && b.maps.count == 1)
            #expect(memory.iova(of: buffer.base + 5000) == 0x10_0000 + 5000)
            #expect(memory.address(ofIOVA: buffer.iova(at: 17)) == buffer.base + 17)
        }
        #expect(a.unmaps.count == 1 && b.unmaps.count == 1)
        #expect(memory.regions.isEmpty)
    }
}
