import NetDMA
import Platform
import Synchronization
import Testing

@Suite("CopyQueue (DESIGN.md §4)", .serialized)
struct CopyQueueTests {
    /// Polls until every submitted op is retired, collecting per-op statuses by ticket order.
    static func drainStatuses(_ q: CopyQueue, into statuses: inout [CopyStatus], timeout: Duration = .seconds(10)) -> Bool {
        var buffer = [CopyStatus](repeating: .successful, count: 64)
        return waitUntil(timeout) {
            buffer.withUnsafeMutableBufferPointer { b in
                let (n, _) = q.completedStatus(max: b.count, into: b)
                statuses.append(contentsOf: b.prefix(n))
            }
            return q.outstanding == 0
        }
    }

    @Test("copies of many sizes arrive intact; tickets count up; completed() accounts for each op once",
          arguments: TargetFactory.all)
    func copies(_ factory: TargetFactory) throws {
        let h = try Harness(factory)
        defer { h.close() }
        let q = try CopyQueue(channel: try h.channel(), ringSize: 64)
        #expect(q.capacity == 63 && q.freeSlots == 63)
        let src = try h.memory.allocate(length: 1 << 20), dst = try h.memory.allocate(length: 1 << 20)
        src.fillPattern(11)
        var rng = SplitMix(state: 42)
        var offset = 0, expectedTicket: UInt16 = 0, retired = 0, total = 0
        var spans: [(Int, Int)] = []
        while offset < (1 << 20) - 4096 {
            let batch = Int.random(in: 1...32, using: &rng)
            for _ in 0..<batch where q.freeSlots > 0 && offset < (1 << 20) - 4096 {
                let len = Int.random(in: 1...4096, using: &rng)
                let t = try q.enqueueCopy(source: src.iova(at: offset), destination: dst.iova(at: offset), length: len)
                #expect(t == expectedTicket)
                expectedTicket &+= 1
                spans.append((offset, len))
                offset += len
                total += 1
            }
            try q.submit()
            let c = q.completed(max: 16)
            #expect(!c.hadError)
            retired += c.count
            if c.count > 0 { #expect(c.lastTicket == UInt16(truncatingIfNeeded: retired - 1)) }
        }
        #expect(waitUntil {
            let c = q.completed(max: 1000)
            retired += c.count
            return retired == total
        })
        #expect(q.completed(max: 10).count == 0, "nothing is reported twice")
        for (o, l) in spans { #expect(dst.bytes(at: o, count: l) == src.bytes(at: o, count: l)) }
    }

    @Test("fill and NULL ops; fence is accepted", arguments: TargetFactory.all)
    func fillAndNull(_ factory: TargetFactory) throws {
        let h = try Harness(factory)
        defer { h.close() }
        let channel = try h.channel()
        let q = try CopyQueue(channel: channel, ringSize: 16)
        let dst = try h.memory.allocate(length: 8192)
        guard channel.providerFlags.contains(.fill) else {
            // An engine without block fill (CB 1.x, CB 3.0) refuses fills up front, ring untouched.
            #expect(throws: DriverError.self) {
                try q.enqueueFill(pattern: 1, destination: dst.iova, length: 100)
            }
            #expect(q.pendingSubmission == 0)
            return
        }
        _ = try q.enqueueFill(pattern: 0x0102_0304_0506_0708, destination: dst.iova, length: 100, fence: true)
        _ = try q.enqueueNull()
        try q.submit()
        var statuses: [CopyStatus] = []
        #expect(Self.drainStatuses(q, into: &statuses))
        #expect(statuses == [.successful, .successful])
        let expected = (0..<100).map { UInt8(8 - $0 % 8) }
        #expect(dst.bytes(at: 0, count: 100) == expected)
        #expect(dst.bytes(at: 100, count: 8) == [UInt8](repeating: 0, count: 8))
    }

    @Test("too-large ops are refused, never split; a full ring is refused; a channel in use is refused")
    func limits() throws {
        let h = try Harness(.primary(.v2_0))
        defer { h.close() }
        let ch = try h.channel()
        let q = try CopyQueue(channel: ch, ringSize: 4)
        let buf = try h.memory.allocate(length: 2 << 20)
        do { _ = try q.enqueueCopy(source: buf.iova, destination: buf.iova(at: 1 << 20), length: ch.maximumTransferSize + 1); Issue.record("accepted an op above MaximumTransferSize") } catch {
            #expect(error.code == .descriptorTooLarge)
            #expect(error.message.contains("split"))
        }
        do { _ = try q.enqueueCopy(source: buf.iova, destination: ch.maximumAddress - 15, length: 64); Issue.record("accepted an op beyond the address limit") } catch {
            #expect(error.code == .descriptorTooLarge)
        }
        for _ in 0..<3 { _ = try q.enqueueNull() }
        #expect(q.freeSlots == 0)
        do { _ = try q.enqueueNull(); Issue.record("accepted an op into a full ring") } catch { #expect(error.code == .queueFull) }
        try q.submit()
        #expect(waitUntil { q.completed(max: 8).count > 0 || q.freeSlots > 0 })
        do { _ = try CopyQueue(channel: ch); Issue.record("two queues on one running channel") } catch { #expect(error.code == .invalidState) }
        do { _ = try CopyQueue(channel: try h.channel(), ringSize: 12); Issue.record("ring size 12") } catch { #expect(error.code == .invalidArgument) }
    }

    @Test("injected faults at random positions: each op accounted for exactly once, the rest complete",
          arguments: TargetFactory.all, [UInt64(1), 2, 3])
    func faults(_ factory: TargetFactory, _ seed: UInt64) throws {
        let h = try Harness(factory)
        defer { h.close() }
        let q = try CopyQueue(channel: try h.channel(), ringSize: 32)
        let src = try h.memory.allocate(length: 1 << 20), dst = try h.memory.allocate(length: 1 << 20)
        src.fillPattern(UInt8(truncatingIfNeeded: seed))
        var rng = SplitMix(state: seed)
        let total = 600
        var bad = Set<Int>()
        var statuses: [CopyStatus] = []
        var buffer = [CopyStatus](repeating: .successful, count: 8)
        var op = 0
        while op < total {
            let batch = Int.random(in: 1...12, using: &rng)
            var k = 0
            while k < batch && op < total && q.freeSlots > 0 {
                let faulty = Int.random(in: 0..<100, using: &rng) < 6  // about 6% of ops
                if faulty { bad.insert(op) }
                let o = op * 1024
                _ = try q.enqueueCopy(source: faulty ? 0xF0_0000_0000 + UInt64(o) : src.iova(at: o),
                                      destination: dst.iova(at: o), length: 1024, fence: op % 7 == 0)
                op += 1
                k += 1
            }
            try q.submit()
            buffer.withUnsafeMutableBufferPointer { b in
                let (n, _) = q.completedStatus(max: b.count, into: b)
                statuses.append(contentsOf: b.prefix(n))
            }
        }
        #expect(Self.drainStatuses(q, into: &statuses))
        #expect(statuses.count == total, "every op reported exactly once")
        let failed = Set(statuses.indices.filter { statuses[$0] == .failed })
        #expect(failed == bad, "exactly the faulty ops failed (seed \(seed))")
        #expect(q.failedCount == bad.count)
        for i in 0..<total where !bad.contains(i) {
            #expect(dst.bytes(at: i * 1024, count: 1024) == src.bytes(at: i * 1024, count: 1024), "op \(i)")
        }
        #expect(q.lastFault?.causes.isEmpty == false || bad.isEmpty)
    }

    @Test("completed(max:) stops at a failed op, reports it once through hadError, then continues",
          arguments: TargetFactory.all)
    func completedReportsErrorOnce(_ factory: TargetFactory) throws {
        let h = try Harness(factory)
        defer { h.close() }
        let q = try CopyQueue(channel: try h.channel(), ringSize: 16)
        let src = try h.memory.allocate(length: 65536), dst = try h.memory.allocate(length: 65536)
        for i in 0..<6 {
            _ = try q.enqueueCopy(source: i == 3 ? 0xF0_0000_0000 : src.iova(at: i * 256), destination: dst.iova(at: i * 256), length: 256)
        }
        try q.submit()
        var successes = 0, errors = 0
        var failedTicket: UInt16?
        #expect(waitUntil {
            let c = q.completed(max: 16)
            successes += c.count
            if c.hadError {
                errors += 1
                failedTicket = c.lastTicket &+ 1
            }
            return successes + errors == 6
        })
        #expect(successes == 5 && errors == 1)
        #expect(failedTicket == 3)
        #expect(q.completed(max: 16).count == 0)
        #expect(q.completed(max: 16).hadError == false, "the failure is not reported twice")
    }

    @Test("waitForCompletion wakes on the interrupt", arguments: TargetFactory.all)
    func asyncWait(_ factory: TargetFactory) async throws {
        let h = try Harness(factory)
        defer { h.close() }
        let q = try CopyQueue(channel: try h.channel(), ringSize: 64, interrupts: true)
        let src = try h.memory.allocate(length: 65536), dst = try h.memory.allocate(length: 65536)
        src.fillPattern(12)
        var retired = 0
        for round in 0..<5 {
            for i in 0..<8 {
                let o = (round * 8 + i) * 1024
                _ = try q.enqueueCopy(source: src.iova(at: o), destination: dst.iova(at: o), length: 1024)
            }
            try q.submit()
            while retired < (round + 1) * 8 {
                try await q.waitForCompletion(timeout: .seconds(5))
                retired += q.completed(max: 64).count
            }
        }
        #expect(retired == 40)
        #expect(dst.bytes(at: 0, count: 40 * 1024) == src.bytes(at: 0, count: 40 * 1024))
    }

    @Test("blockUntilCompletion returns once an op can be retired, sleeping or spinning", arguments: TargetFactory.all)
    func blockingWait(_ factory: TargetFactory) throws {
        let h = try Harness(factory)
        defer { h.close() }
        let q = try CopyQueue(channel: try h.channel(), ringSize: 64, interrupts: true)
        let src = try h.memory.allocate(length: 65536), dst = try h.memory.allocate(length: 65536)
        src.fillPattern(13)
        var retired = 0
        for round in 0..<6 {
            for i in 0..<8 {
                let o = (round * 8 + i) * 1024
                _ = try q.enqueueCopy(source: src.iova(at: o), destination: dst.iova(at: o), length: 1024)
            }
            try q.submit()
            while retired < (round + 1) * 8 {
                try q.blockUntilCompletion(timeout: .seconds(5), spin: round.isMultiple(of: 2) ? .zero : .microseconds(50))
                let n = q.completed(max: 64).count
                #expect(n > 0, "blockUntilCompletion returned with nothing to retire")
                retired += n
            }
        }
        #expect(retired == 48)
        #expect(dst.bytes(at: 0, count: 48 * 1024) == src.bytes(at: 0, count: 48 * 1024))
        // Nothing outstanding: returns at once.
        try q.blockUntilCompletion(timeout: .seconds(5))
    }

    @Test("a queue without interrupts refuses to wait; a channel without a vector refuses interrupts")
    func noInterrupts() async throws {
        let h = try Harness(.withoutInterrupts)
        defer { h.close() }
        let ch = try h.channel()
        do { _ = try CopyQueue(channel: ch, interrupts: true); Issue.record("interrupts without a vector") } catch {
            #expect(error.code == .unsupported)
        }
        let q = try CopyQueue(channel: ch, ringSize: 8)
        do { try await q.waitForCompletion(); Issue.record("waited without interrupts") } catch {
            #expect(error.code == .unsupported)
        }
        do { try q.blockUntilCompletion(); Issue.record("blocked without interrupts") } catch {
            #expect(error.code == .unsupported && error.message.contains("poll"))
        }
        do { _ = try ch.blockUntilInterrupt(after: 0, timeout: .seconds(1)); Issue.record("blocked without a vector") } catch {
            #expect(error.code == .unsupported)
        }
    }

    @Test("a CopyQueue survives PowerDown/PowerUp: drained, re-Started, every op reported once",
          arguments: TargetFactory.powerEvents)
    func powerCycle(_ factory: TargetFactory) throws {
        let h = try Harness(factory)
        defer { h.close() }
        let q = try CopyQueue(channel: try h.channel(), ringSize: 16)
        let src = try h.memory.allocate(length: 65536), dst = try h.memory.allocate(length: 65536)
        src.fillPattern(13)
        var retired = 0
        for i in 0..<10 { _ = try q.enqueueCopy(source: src.iova(at: i * 1024), destination: dst.iova(at: i * 1024), length: 1024) }
        try q.submit()
        try h.registry.notify(h.handle, event: .powerDown)
        retired += q.completed(max: 64).count
        #expect(retired == 10, "PowerDown returned with the queue drained")
        _ = try q.enqueueNull()
        do { try q.submit(); Issue.record("submitted while powered down") } catch { #expect(error.code == .invalidState) }
        try h.registry.notify(h.handle, event: .powerUp)
        for i in 10..<30 {
            if q.freeSlots == 0 { try q.submit(); #expect(waitUntil { (retired += q.completed(max: 64).count, q.freeSlots > 0).1 }) }
            _ = try q.enqueueCopy(source: src.iova(at: i * 1024), destination: dst.iova(at: i * 1024), length: 1024)
        }
        try q.submit()
        #expect(waitUntil { retired += q.completed(max: 64).count; return retired == 31 })
        #expect(q.completed(max: 64).count == 0)
        #expect(dst.bytes(at: 0, count: 30 * 1024) == src.bytes(at: 0, count: 30 * 1024))
    }
}
