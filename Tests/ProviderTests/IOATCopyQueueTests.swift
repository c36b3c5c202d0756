import DeviceModels
import Hardware
import IOAT
import NetDMA
import Platform
import Synchronization
import Testing

@Suite("IOAT provider under CopyQueue")
struct IOATCopyQueueTests {
    struct Case: Sendable, CustomTestStringConvertible {
        let profile: String
        let version: NetDMAVersion
        let seed: UInt64
        var testDescription: String { "\(profile) NetDMA \(version) seed \(seed)" }
    }

    static let cases: [Case] = [
        Case(profile: "tbg", version: .v2_0, seed: 1), Case(profile: "skx", version: .v2_0, seed: 2),
        Case(profile: "bdxde", version: .v2_0, seed: 3), Case(profile: "icx", version: .v2_0, seed: 4),
        Case(profile: "skx", version: .v1_0, seed: 5), Case(profile: "icx", version: .v1_1, seed: 6),
        Case(profile: "cb1", version: .v1_0, seed: 7),
    ]

    @Test("copies, fills and NULLs with device errors at random positions: every op accounted for exactly once",
          arguments: cases)
    func randomFaults(_ c: Case) throws {
        let r = try IOATRegistered(c.profile, version: c.version, poolSize: 2)
        let queue = try CopyQueue(channel: r.channel, ringSize: 64)
        let slot = 512
        let ops = 600
        let src = try r.rig.buffer(ops * slot)
        let dst = try r.rig.buffer(ops * slot)
        src.ioatPattern(UInt8(truncatingIfNeeded: c.seed))
        var rng = IOATSplitMix(state: c.seed)
        enum Kind { case copy, fill, null, bad }
        var kinds: [Kind] = []
        var lengths: [Int] = []
        let canFill = r.channel.providerFlags.contains(.fill)
        var statuses: [CopyStatus] = []
        var retired = 0
        var buffer = [CopyStatus](repeating: .successful, count: 64)

        func retire() {
            let got = buffer.withUnsafeMutableBufferPointer { queue.completedStatus(max: 64, into: $0) }
            statuses += buffer[0..<got.count]
            retired += got.count
        }

        var op = 0
        while op < ops {
            let batch = min(ops - op, Int(rng.next() % 9) + 1)
            for _ in 0..<batch {
                while queue.freeSlots == 0 { retire() }
                let roll = rng.next() % 20
                let n = Int(rng.next() % UInt64(slot)) + 1
                let kind: Kind = roll == 0 ? .bad : roll == 1 ? .null : (roll == 2 && canFill ? .fill : .copy)
                kinds.append(kind)
                lengths.append(n)
                switch kind {
                case .copy: _ = try queue.enqueueCopy(source: src.iova(at: op * slot), destination: dst.iova(at: op * slot), length: n)
                case .fill: _ = try queue.enqueueFill(pattern: 0xA5A5_5A5A_0FF0_F00F, destination: dst.iova(at: op * slot), length: n)
                case .null: _ = try queue.enqueueNull()
                case .bad: _ = try queue.enqueueCopy(source: ioatUnmapped, destination: dst.iova(at: op * slot), length: n)
                }
                op += 1
            }
            try queue.submit()
            if rng.next() % 3 == 0 { retire() }
        }
        #expect(ioatWait(.seconds(20)) {
            retire()
            return retired == ops
        })
        #expect(statuses.count == ops, "every op retired exactly once")
        let bad = kinds.filter { $0 == .bad }.count
        #expect(queue.failedCount == bad)
        for i in 0..<min(ops, statuses.count) {
            switch kinds[i] {
            case .bad:
                #expect(statuses[i] == .failed, "op \(i) (unmapped source) must fail")
                let clean = dst.ioatAllZero(i * slot, lengths[i])
                #expect(clean)
            case .copy:
                #expect(statuses[i] == .successful, "op \(i)")
                let same = dst.ioatEqual(i * slot, src, i * slot, lengths[i])
                #expect(same, "copy op \(i)")
            case .fill:
                #expect(statuses[i] == .successful, "op \(i)")
                let expected = (0..<lengths[i]).map { UInt8(truncatingIfNeeded: UInt64(0xA5A5_5A5A_0FF0_F00F) >> UInt64(8 * ($0 & 7))) }
                let got = dst.ioatBytes(i * slot, lengths[i])
                #expect(got == expected, "fill op \(i)")
            case .null:
                #expect(statuses[i] == .successful, "NULL op \(i)")
                let clean = dst.ioatAllZero(i * slot, slot)
                #expect(clean)
            }
        }
        if bad > 0 {
            #expect(queue.lastFault?.causes == ["source address error (XSADDERR)"])
        }
        #expect(r.rig.device.statistics.droppedWideWrites == 0)
    }
}

/// Deterministic pseudo-random numbers.
struct IOATSplitMix: RandomNumberGenerator {
    var state: UInt64
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}
