import NetDMA
import Platform
import Synchronization
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// CopyQueue's CPU fallback (`cpuCopyThreshold`, DESIGN.md §4): ops below the threshold run on
/// the calling CPU and are reported with the engine's, in ticket order.
@Suite("CopyQueue CPU fallback (DESIGN.md §4)", .serialized)
struct CPUFallbackTests {
    /// The threshold the tests use: ops shorter than 256 bytes run on the CPU.
    static let threshold = 256
    /// An IOVA inside every engine's reach that no test maps.
    static let unmapped: UInt64 = 0xF0_0000_0000

    /// Retires whatever is ready, checking that completed(max:) reports tickets in order.
    static func retireInOrder(_ q: CopyQueue, next: inout UInt16, errors: inout [UInt16]) -> Int {
        let c = q.completed(max: 1000)
        if c.count > 0 { #expect(c.lastTicket == next &+ UInt16(truncatingIfNeeded: c.count) &- 1, "ticket order") }
        next &+= UInt16(truncatingIfNeeded: c.count)
        if c.hadError {
            #expect(c.lastTicket &+ 1 == next)
            errors.append(next)
            next &+= 1
            return c.count + 1
        }
        return c.count
    }

    @Test("a random mix of CPU and engine copies, fills and NULLs, some fenced: every byte arrives, tickets in order",
          arguments: TargetFactory.all, [UInt64(1), 2])
    func mixedStream(_ factory: TargetFactory, _ seed: UInt64) throws {
        let h = try Harness(factory)
        defer { h.close() }
        let channel = try h.channel()
        let q = try CopyQueue(channel: channel, ringSize: 64, cpuCopyThreshold: Self.threshold)
        #expect(q.cpuCopyThreshold == Self.threshold)
        let slot = 1024, total = 500
        let src = try h.memory.allocate(length: total * slot), dst = try h.memory.allocate(length: total * slot)
        src.fillPattern(UInt8(truncatingIfNeeded: seed))
        let canFill = channel.providerFlags.contains(.fill)
        var rng = SplitMix(state: seed)
        enum Kind { case copy, fill, null }
        var ops: [(kind: Kind, length: Int, pattern: UInt64)] = []
        var next: UInt16 = 0, errors: [UInt16] = [], retired = 0
        var expectedTicket: UInt16 = 0
        // Short ops enqueued with nothing outstanding, which the CPU must run whatever the
        // engine's timing (the stream drains now and then to have some).
        var certainlyOnCPU = 0, nextDrain = 50
        while ops.count < total {
            if ops.count >= nextDrain {
                nextDrain += 50
                #expect(waitUntil { retired += Self.retireInOrder(q, next: &next, errors: &errors); return q.outstanding == 0 })
            }
            let batch = Int.random(in: 1...16, using: &rng)
            for _ in 0..<batch where ops.count < total {
                while q.freeSlots == 0 { retired += Self.retireInOrder(q, next: &next, errors: &errors) }
                let idle = q.outstanding == 0 && q.pendingSubmission == 0
                let i = ops.count
                // About half the ops below the threshold, some exactly at it, the rest above.
                let roll = Int.random(in: 0..<10, using: &rng)
                let length = roll < 5 ? Int.random(in: 0..<Self.threshold, using: &rng)
                    : roll == 5 ? Self.threshold : Int.random(in: Self.threshold...slot, using: &rng)
                let which = Int.random(in: 0..<10, using: &rng)
                let kind: Kind = which == 0 ? .null : (which < 3 && canFill ? .fill : .copy)
                let fence = Int.random(in: 0..<16, using: &rng) == 0
                let pattern = rng.next()
                if idle && (kind == .null || length < Self.threshold) { certainlyOnCPU += 1 }
                let t: UInt16
                switch kind {
                case .copy: t = try q.enqueueCopy(source: src.iova(at: i * slot), destination: dst.iova(at: i * slot), length: length, fence: fence)
                case .fill: t = try q.enqueueFill(pattern: pattern, destination: dst.iova(at: i * slot), length: length, fence: fence)
                case .null: t = try q.enqueueNull(fence: fence)
                }
                #expect(t == expectedTicket)
                expectedTicket &+= 1
                ops.append((kind, length, pattern))
            }
            try q.submit()
            retired += Self.retireInOrder(q, next: &next, errors: &errors)
        }
        #expect(waitUntil {
            retired += Self.retireInOrder(q, next: &next, errors: &errors)
            return retired == total
        })
        #expect(errors.isEmpty, "no op failed (the last fault: \(String(describing: q.lastFault)))")
        #expect(q.outstanding == 0 && q.freeSlots == q.capacity)
        #expect(q.completed(max: 10).count == 0, "nothing is reported twice")
        #expect(certainlyOnCPU > 0 && q.cpuOpCount >= certainlyOnCPU && q.cpuOpCount < total,
                "both the CPU and the engine ran ops (\(q.cpuOpCount) on the CPU, \(certainlyOnCPU) certainly)")
        for (i, op) in ops.enumerated() {
            let got = dst.bytes(at: i * slot, count: slot)
            let n = op.kind == .null ? 0 : op.length
            let want: [UInt8]
            switch op.kind {
            case .copy: want = src.bytes(at: i * slot, count: n)
            case .fill: want = (0..<n).map { UInt8(truncatingIfNeeded: op.pattern >> (UInt64($0 % 8) * 8)) }
            case .null: want = []
            }
            #expect(Array(got[0..<n]) == want, "op \(i) (\(op.kind), \(op.length) bytes)")
            #expect(got[n...].allSatisfy { $0 == 0 }, "op \(i) wrote past its end")
        }
    }

    @Test("below the threshold: CPU; at it: the engine; zero-length ops touch nothing; unfenced NULLs skip the engine",
          arguments: TargetFactory.all)
    func threshold(_ factory: TargetFactory) throws {
        let h = try Harness(factory)
        defer { h.close() }
        let channel = try h.channel()
        let q = try CopyQueue(channel: channel, ringSize: 16, cpuCopyThreshold: Self.threshold)
        let src = try h.memory.allocate(length: 4096), dst = try h.memory.allocate(length: 4096)
        src.fillPattern(5)
        // The engine is held: what it would do stays undone, what the CPU does is done at submit.
        h.target.hold(channel: channel.index, true)
        var holding = true
        defer { if holding { h.target.hold(channel: channel.index, false) } }
        _ = try q.enqueueCopy(source: src.iova, destination: dst.iova, length: Self.threshold - 1)
        _ = try q.enqueueCopy(source: src.iova(at: 1024), destination: dst.iova(at: 1024), length: Self.threshold)
        _ = try q.enqueueCopy(source: Self.unmapped, destination: Self.unmapped, length: 0)
        _ = try q.enqueueNull()
        #expect(q.cpuOpCount == 0 && q.pendingSubmission == 4, "nothing runs before submit")
        #expect(dst.bytes(at: 0, count: 1) == [0])
        try q.submit()
        #expect(q.cpuOpCount == 3, "the short copy, the zero-length copy and the NULL ran on the CPU")
        #expect(q.pendingSubmission == 0 && q.outstanding == 4)
        #expect(dst.bytes(at: 0, count: Self.threshold - 1) == src.bytes(at: 0, count: Self.threshold - 1))
        #expect(dst.bytes(at: Self.threshold - 1, count: 1) == [0])
        #expect(q.completed(max: 16).count == 1, "the CPU op before the held engine op is retired, none after it")
        h.target.hold(channel: channel.index, false)
        holding = false
        var statuses: [CopyStatus] = []
        #expect(CopyQueueTests.drainStatuses(q, into: &statuses))
        #expect(statuses == [.successful, .successful, .successful], "the zero-length copy succeeded without touching memory")
        #expect(dst.bytes(at: 1024, count: Self.threshold) == src.bytes(at: 1024, count: Self.threshold))
        #expect(q.failedCount == 0)
    }

    @Test("without the fallback, zero-length copies and fills succeed on the engine (a NULL descriptor, not size 0)",
          arguments: TargetFactory.all)
    func zeroLengthOnTheEngine(_ factory: TargetFactory) throws {
        let h = try Harness(factory)
        defer { h.close() }
        let channel = try h.channel()
        let q = try CopyQueue(channel: channel, ringSize: 16)
        let src = try h.memory.allocate(length: 4096), dst = try h.memory.allocate(length: 4096)
        src.fillPattern(9)
        _ = try q.enqueueCopy(source: src.iova, destination: dst.iova, length: 0)
        _ = try q.enqueueCopy(source: src.iova, destination: dst.iova(at: 64), length: 0, fence: true)
        if channel.providerFlags.contains(.fill) { _ = try q.enqueueFill(pattern: ~0, destination: dst.iova(at: 128), length: 0) }
        _ = try q.enqueueCopy(source: src.iova, destination: dst.iova(at: 256), length: 8)
        try q.submit()
        var statuses: [CopyStatus] = []
        #expect(CopyQueueTests.drainStatuses(q, into: &statuses))
        #expect(statuses.allSatisfy { $0 == .successful } && q.failedCount == 0 && q.cpuOpCount == 0, "\(statuses)")
        #expect(dst.bytes(at: 0, count: 256).allSatisfy { $0 == 0 }, "zero-length ops wrote nothing")
        #expect(dst.bytes(at: 256, count: 8) == src.bytes(at: 0, count: 8))
    }

    @Test("a CPU op is never reported before an earlier engine op, however long the engine takes",
          arguments: TargetFactory.all)
    func ticketOrderBehindTheEngine(_ factory: TargetFactory) throws {
        let h = try Harness(factory)
        defer { h.close() }
        let channel = try h.channel()
        let q = try CopyQueue(channel: channel, ringSize: 16, cpuCopyThreshold: Self.threshold)
        let src = try h.memory.allocate(length: 8192), dst = try h.memory.allocate(length: 8192)
        src.fillPattern(6)
        h.target.hold(channel: channel.index, true)
        var holding = true
        defer { if holding { h.target.hold(channel: channel.index, false) } }
        let first = try q.enqueueCopy(source: src.iova, destination: dst.iova, length: 4096)
        for i in 0..<3 { _ = try q.enqueueCopy(source: src.iova(at: 4096 + i * 64), destination: dst.iova(at: 4096 + i * 64), length: 64) }
        try q.submit()
        #expect(dst.bytes(at: 4096, count: 192) == src.bytes(at: 4096, count: 192), "the CPU ops ran at submit")
        #expect(waitUntil { h.target.inFlight(channel: channel.index) != 0 })
        for _ in 0..<3 {
            #expect(q.completed(max: 16).count == 0, "the CPU ops wait for the engine op before them")
            var s = [CopyStatus](repeating: .failed, count: 4)
            #expect(s.withUnsafeMutableBufferPointer { q.completedStatus(max: 4, into: $0).count } == 0)
        }
        h.target.hold(channel: channel.index, false)
        holding = false
        var next = first, errors: [UInt16] = [], retired = 0
        #expect(waitUntil { retired += Self.retireInOrder(q, next: &next, errors: &errors); return retired == 4 })
        #expect(errors.isEmpty && next == first &+ 4)
        #expect(dst.bytes(at: 0, count: 4096) == src.bytes(at: 0, count: 4096))
    }

    @Test("fences across both: behind an unfinished fenced engine op a short op goes to the engine; without the fence it runs on the CPU",
          arguments: TargetFactory.all)
    func fenceEngineThenCPU(_ factory: TargetFactory) throws {
        let h = try Harness(factory)
        defer { h.close() }
        let channel = try h.channel()
        let q = try CopyQueue(channel: channel, ringSize: 16, cpuCopyThreshold: Self.threshold)
        let src = try h.memory.allocate(length: 8192), mid = try h.memory.allocate(length: 8192), dst = try h.memory.allocate(length: 8192)
        src.fillPattern(7)
        for fenced in [true, false] {
            mid.zero()
            dst.zero()
            let before = q.cpuOpCount
            h.target.hold(channel: channel.index, true)
            // The engine copies src → mid; the short op copies what it wrote, mid → dst.
            _ = try q.enqueueCopy(source: src.iova, destination: mid.iova, length: 1024, fence: fenced)
            _ = try q.enqueueCopy(source: mid.iova, destination: dst.iova, length: 64)
            try q.submit()
            #expect(q.cpuOpCount - before == (fenced ? 0 : 1))
            h.target.hold(channel: channel.index, false)
            var statuses: [CopyStatus] = []
            #expect(CopyQueueTests.drainStatuses(q, into: &statuses))
            #expect(statuses == [.successful, .successful])
            #expect(mid.bytes(at: 0, count: 1024) == src.bytes(at: 0, count: 1024))
            if fenced {
                #expect(dst.bytes(at: 0, count: 64) == src.bytes(at: 0, count: 64), "the short op read what the fenced op wrote")
            } else {
                #expect(dst.bytes(at: 0, count: 64) == [UInt8](repeating: 0, count: 64), "unfenced, it ran at submit, before the engine")
            }
        }
        // Once the fenced op is seen finished, short ops run on the CPU again.
        _ = try q.enqueueCopy(source: src.iova, destination: mid.iova, length: 1024, fence: true)
        try q.submit()
        var statuses: [CopyStatus] = []
        #expect(CopyQueueTests.drainStatuses(q, into: &statuses))
        let before = q.cpuOpCount
        _ = try q.enqueueCopy(source: mid.iova, destination: dst.iova, length: 64)
        try q.submit()
        #expect(q.cpuOpCount == before + 1)
        #expect(CopyQueueTests.drainStatuses(q, into: &statuses))
    }

    @Test("fences across both: a fenced CPU op is done before a later engine op reads; it waits for unfinished engine ops",
          arguments: TargetFactory.all)
    func fenceCPUThenEngine(_ factory: TargetFactory) throws {
        let h = try Harness(factory)
        defer { h.close() }
        let channel = try h.channel()
        let q = try CopyQueue(channel: channel, ringSize: 16, cpuCopyThreshold: Self.threshold)
        let src = try h.memory.allocate(length: 8192), mid = try h.memory.allocate(length: 8192), dst = try h.memory.allocate(length: 8192)
        src.fillPattern(8)
        // Nothing unfinished: the fenced short op runs on the CPU, before the engine op that
        // reads what it wrote.
        _ = try q.enqueueCopy(source: src.iova, destination: mid.iova, length: 100, fence: true)
        _ = try q.enqueueCopy(source: mid.iova, destination: dst.iova, length: 1024)
        try q.submit()
        #expect(q.cpuOpCount == 1)
        var statuses: [CopyStatus] = []
        #expect(CopyQueueTests.drainStatuses(q, into: &statuses))
        #expect(statuses == [.successful, .successful])
        #expect(dst.bytes(at: 0, count: 100) == src.bytes(at: 0, count: 100))
        #expect(dst.bytes(at: 100, count: 924) == [UInt8](repeating: 0, count: 924))
        // An engine op unfinished: a fenced short op (and a fenced NULL) go to the engine.
        h.target.hold(channel: channel.index, true)
        _ = try q.enqueueCopy(source: src.iova(at: 4096), destination: mid.iova(at: 4096), length: 1024)
        _ = try q.enqueueCopy(source: src.iova(at: 6000), destination: mid.iova(at: 6000), length: 100, fence: true)
        _ = try q.enqueueNull(fence: true)
        _ = try q.enqueueNull()
        try q.submit()
        #expect(q.cpuOpCount == 1, "only the engine could order them")
        h.target.hold(channel: channel.index, false)
        statuses = []
        #expect(CopyQueueTests.drainStatuses(q, into: &statuses))
        #expect(statuses == [.successful, .successful, .successful, .successful])
        #expect(mid.bytes(at: 6000, count: 100) == src.bytes(at: 6000, count: 100))
    }

    @Test("an op on memory that is not DMA memory fails once with a fault that names it, writes nothing, and the rest complete",
          arguments: TargetFactory.all)
    func notDMAMemory(_ factory: TargetFactory) throws {
        let h = try Harness(factory)
        defer { h.close() }
        let channel = try h.channel()
        let q = try CopyQueue(channel: channel, ringSize: 32, cpuCopyThreshold: Self.threshold)
        let src = try h.memory.allocate(length: 16384), dst = try h.memory.allocate(length: 16384)
        src.fillPattern(9)
        let canFill = channel.providerFlags.contains(.fill)
        // A registered page with no DMA memory after it (the next page is not registered).
        let pages = UnsafeMutableRawPointer.allocate(byteCount: 2 * 4096, alignment: 4096)
        defer { pages.deallocate() }
        memset(pages, 0, 2 * 4096)
        let edge = try h.memory.register(pages, length: 4096)
        try #require(h.memory.region(containingIOVA: edge + 4096) == nil)
        // (source, destination, length, fill?) of each op; nil source: the good buffer.
        struct Op { var source: UInt64?; var destination: UInt64?; var length: Int; var fill = false; var bad: Bool }
        var ops = [
            Op(source: nil, destination: nil, length: 1024, bad: false),                    // engine
            Op(source: Self.unmapped, destination: nil, length: 64, bad: true),             // CPU: source
            Op(source: nil, destination: nil, length: 64, bad: false),                      // CPU
            Op(source: nil, destination: Self.unmapped, length: 200, bad: true),            // CPU: destination
            Op(source: nil, destination: edge + 4096 - 32, length: 64, bad: true),          // CPU: runs off the region's end
            Op(source: nil, destination: nil, length: 2048, bad: false),                    // engine
        ]
        if canFill { ops.append(Op(source: nil, destination: Self.unmapped &+ 64, length: 128, fill: true, bad: true)) }
        ops.append(Op(source: nil, destination: nil, length: 100, bad: false))
        for (i, op) in ops.enumerated() {
            let d = op.destination ?? dst.iova(at: i * 2048)
            if op.fill {
                _ = try q.enqueueFill(pattern: 0x55, destination: d, length: op.length)
            } else {
                _ = try q.enqueueCopy(source: op.source ?? src.iova(at: i * 2048), destination: d, length: op.length)
            }
        }
        try q.submit()
        var statuses: [CopyStatus] = []
        #expect(CopyQueueTests.drainStatuses(q, into: &statuses))
        #expect(statuses == ops.map { $0.bad ? .failed : .successful }, "each bad op failed, exactly once")
        #expect(q.failedCount == ops.filter(\.bad).count)
        for (i, op) in ops.enumerated() where !op.bad {
            #expect(dst.bytes(at: i * 2048, count: op.length) == src.bytes(at: i * 2048, count: op.length), "op \(i)")
        }
        #expect(dst.bytes(at: 1 * 2048, count: 64) == [UInt8](repeating: 0, count: 64), "a failed copy writes nothing")
        #expect(UnsafeRawBufferPointer(start: pages + 4096 - 32, count: 32).allSatisfy { $0 == 0 }, "nor does one that runs off its region")
        let fault = try #require(q.lastFault)
        #expect(fault.causes.count == 1)
        #expect(fault.causes[0].contains("not DMA memory") && fault.causes[0].contains("DMAMemory"))
        #expect(fault.causes[0].contains("0x\(String(canFill ? Self.unmapped + 64 : edge + 4096 - 32, radix: 16))"))
        // completed(max:) reports it through hadError, once.
        _ = try q.enqueueCopy(source: src.iova, destination: dst.iova(at: 12288), length: 64)
        let bad = try q.enqueueCopy(source: Self.unmapped, destination: dst.iova(at: 12288 + 64), length: 64)
        _ = try q.enqueueCopy(source: src.iova(at: 128), destination: dst.iova(at: 12288 + 128), length: 64)
        try q.submit()
        let c = q.completed(max: 16)
        #expect(c.count == 1 && c.hadError && c.lastTicket &+ 1 == bad)
        let rest = q.completed(max: 16)
        #expect(rest.count == 1 && !rest.hadError && rest.lastTicket == bad &+ 1)
        #expect(q.completed(max: 16).count == 0)
        try h.memory.unregister(pages)
    }

    @Test("a CPU op whose range spans two adjacent regions is copied piece by piece", arguments: TargetFactory.all)
    func spansRegions(_ factory: TargetFactory) throws {
        let h = try Harness(factory)
        defer { h.close() }
        let channel = try h.channel()
        let q = try CopyQueue(channel: channel, ringSize: 8, cpuCopyThreshold: Self.threshold)
        // Two registrations of adjacent pages: adjacent IOVAs, one region each.
        let pages = UnsafeMutableRawPointer.allocate(byteCount: 4 * 4096, alignment: 4096)
        defer { pages.deallocate() }
        memset(pages, 0, 4 * 4096)
        let a = try h.memory.register(pages, length: 4096)
        let b = try h.memory.register(pages + 4096, length: 4096)
        try #require(b == a + 4096, "adjacent IOVAs")
        let src = try h.memory.allocate(length: 4096)
        src.fillPattern(10)
        _ = try q.enqueueCopy(source: src.iova, destination: a + 4000, length: 200)
        if channel.providerFlags.contains(.fill) {
            _ = try q.enqueueFill(pattern: 0x0807_0605_0403_0201, destination: a + 4096 - 13, length: 30)
        } else {
            _ = try q.enqueueNull()
        }
        try q.submit()
        #expect(q.cpuOpCount == 2)
        var statuses: [CopyStatus] = []
        #expect(CopyQueueTests.drainStatuses(q, into: &statuses))
        #expect(statuses == [.successful, .successful])
        let bytes = UnsafeBufferPointer(start: pages.assumingMemoryBound(to: UInt8.self), count: 2 * 4096)
        if channel.providerFlags.contains(.fill) {
            #expect(Array(bytes[(4000)..<(4096 - 13)]) == src.bytes(at: 0, count: 96 - 13))
            let filled: [UInt8] = (0..<30).map { (k: Int) -> UInt8 in UInt8(k % 8 + 1) }
            #expect(Array(bytes[(4096 - 13)..<(4096 + 17)]) == filled)
            #expect(Array(bytes[(4096 + 17)..<(4200)]) == src.bytes(at: 96 + 17, count: 104 - 17))
        } else {
            #expect(Array(bytes[4000..<4200]) == src.bytes(at: 0, count: 200))
        }
        #expect(bytes[3999] == 0 && bytes[4200] == 0)
        try h.memory.unregister(pages)
        try h.memory.unregister(pages + 4096)
    }

    @Test("injected engine faults among CPU ops, fenced ops and bad CPU ops: each op accounted for exactly once",
          arguments: TargetFactory.all, [UInt64(1), 2, 3])
    func faults(_ factory: TargetFactory, _ seed: UInt64) throws {
        let h = try Harness(factory)
        defer { h.close() }
        let q = try CopyQueue(channel: try h.channel(), ringSize: 32, cpuCopyThreshold: Self.threshold)
        let slot = 1024, total = 600
        let src = try h.memory.allocate(length: total * slot), dst = try h.memory.allocate(length: total * slot)
        src.fillPattern(UInt8(truncatingIfNeeded: seed))
        var rng = SplitMix(state: seed)
        var bad = Set<Int>(), badOnCPU = 0
        var lengths: [Int] = []
        var statuses: [CopyStatus] = []
        var buffer = [CopyStatus](repeating: .successful, count: 8)
        while lengths.count < total {
            let batch = Int.random(in: 1...12, using: &rng)
            var k = 0
            while k < batch && lengths.count < total && q.freeSlots > 0 {
                let op = lengths.count
                var length = Int.random(in: 1...slot, using: &rng)
                var faulty = Int.random(in: 0..<100, using: &rng) < 6
                if op % 60 == 59 {
                    // Drained, a short bad op certainly runs on the CPU.
                    try q.submit()
                    #expect(waitUntil {
                        buffer.withUnsafeMutableBufferPointer { b in
                            let (n, _) = q.completedStatus(max: b.count, into: b)
                            statuses.append(contentsOf: b.prefix(n))
                        }
                        return q.outstanding == 0
                    })
                    (length, faulty) = (Int.random(in: 1..<Self.threshold, using: &rng), true)
                    badOnCPU += 1
                }
                if faulty { bad.insert(op) }
                _ = try q.enqueueCopy(source: faulty ? Self.unmapped + UInt64(op * slot) : src.iova(at: op * slot),
                                      destination: dst.iova(at: op * slot), length: length, fence: op % 7 == 0)
                lengths.append(length)
                k += 1
            }
            try q.submit()
            buffer.withUnsafeMutableBufferPointer { b in
                let (n, _) = q.completedStatus(max: b.count, into: b)
                statuses.append(contentsOf: b.prefix(n))
            }
        }
        #expect(CopyQueueTests.drainStatuses(q, into: &statuses))
        #expect(statuses.count == total, "every op reported exactly once")
        let failed = Set(statuses.indices.filter { statuses[$0] == .failed })
        #expect(failed == bad, "exactly the faulty ops failed (seed \(seed))")
        #expect(q.failedCount == bad.count)
        #expect(q.cpuOpCount >= badOnCPU && badOnCPU == 10 && bad.count > badOnCPU, "faults on the CPU and on the engine (seed \(seed))")
        for i in 0..<total where !bad.contains(i) {
            #expect(dst.bytes(at: i * slot, count: lengths[i]) == src.bytes(at: i * slot, count: lengths[i]), "op \(i)")
        }
    }

    @Test("capacity is shared: CPU ops waiting behind an engine op fill the queue; all retire once it finishes",
          arguments: TargetFactory.all)
    func queueFull(_ factory: TargetFactory) throws {
        let h = try Harness(factory)
        defer { h.close() }
        let channel = try h.channel()
        let q = try CopyQueue(channel: channel, ringSize: 16, cpuCopyThreshold: Self.threshold)
        let src = try h.memory.allocate(length: 65536), dst = try h.memory.allocate(length: 65536)
        src.fillPattern(11)
        for round in 0..<3 {
            h.target.hold(channel: channel.index, true)
            let base = round * 16384
            _ = try q.enqueueCopy(source: src.iova(at: base), destination: dst.iova(at: base), length: 4096)
            for i in 0..<(q.capacity - 1) {
                _ = try q.enqueueCopy(source: src.iova(at: base + 4096 + i * 64), destination: dst.iova(at: base + 4096 + i * 64), length: 64)
            }
            #expect(q.freeSlots == 0)
            do { _ = try q.enqueueCopy(source: src.iova, destination: dst.iova, length: 64); Issue.record("accepted a CPU op into a full queue") } catch {
                #expect(error.code == .queueFull)
            }
            do { _ = try q.enqueueCopy(source: src.iova, destination: dst.iova, length: 4096); Issue.record("accepted an engine op into a full queue") } catch {
                #expect(error.code == .queueFull)
            }
            try q.submit()
            #expect(q.completed(max: 64).count == 0 && q.freeSlots == 0, "held: nothing retires, nothing frees")
            h.target.hold(channel: channel.index, false)
            var statuses: [CopyStatus] = []
            #expect(CopyQueueTests.drainStatuses(q, into: &statuses))
            #expect(statuses == [CopyStatus](repeating: .successful, count: q.capacity))
            #expect(q.freeSlots == q.capacity)
            #expect(dst.bytes(at: base, count: 4096 + (q.capacity - 1) * 64) == src.bytes(at: base, count: 4096 + (q.capacity - 1) * 64))
        }
        // The descriptor ring is whole: a full queue of engine ops still runs.
        for i in 0..<q.capacity { _ = try q.enqueueCopy(source: src.iova(at: 49152 + i * 1024), destination: dst.iova(at: 49152 + i * 1024), length: 1024) }
        try q.submit()
        var statuses: [CopyStatus] = []
        #expect(CopyQueueTests.drainStatuses(q, into: &statuses))
        #expect(statuses.count == q.capacity && !statuses.contains(.failed))
        #expect(dst.bytes(at: 49152, count: q.capacity * 1024) == src.bytes(at: 49152, count: q.capacity * 1024))
    }

    @Test("an Abort by someone else while CPU ops wait behind engine ops: each op reported exactly once, the queue recovers",
          arguments: TargetFactory.all)
    func abortByAnotherThread(_ factory: TargetFactory) throws {
        let h = try Harness(factory)
        defer { h.close() }
        let channel = try h.channel()
        guard channel.callbacks.contains(.abort) else { return }
        let q = try CopyQueue(channel: channel, ringSize: 16, cpuCopyThreshold: Self.threshold)
        let src = try h.memory.allocate(length: 16384), dst = try h.memory.allocate(length: 16384)
        src.fillPattern(12)
        h.target.hold(channel: channel.index, true)
        _ = try q.enqueueCopy(source: src.iova, destination: dst.iova, length: 1024)
        _ = try q.enqueueCopy(source: src.iova(at: 1024), destination: dst.iova(at: 1024), length: 64)
        _ = try q.enqueueCopy(source: src.iova(at: 2048), destination: dst.iova(at: 2048), length: 1024)
        _ = try q.enqueueCopy(source: src.iova(at: 3072), destination: dst.iova(at: 3072), length: 64)
        try q.submit()
        #expect(waitUntil { h.target.inFlight(channel: channel.index) != 0 })
        try channel.abort()
        h.target.hold(channel: channel.index, false)
        var statuses: [CopyStatus] = []
        #expect(CopyQueueTests.drainStatuses(q, into: &statuses))
        #expect(statuses.count == 4, "every op reported exactly once")
        // The engine ops may fail (the one in flight, or the one after the last completed that
        // the halted word names); the CPU ops cannot.
        #expect(statuses[1] == .successful && statuses[3] == .successful)
        for (i, s) in statuses.enumerated() where s == .successful {
            let n = i % 2 == 0 ? 1024 : 64
            #expect(dst.bytes(at: i * 1024, count: n) == src.bytes(at: i * 1024, count: n), "op \(i)")
        }
        _ = try q.enqueueCopy(source: src.iova(at: 8192), destination: dst.iova(at: 8192), length: 2048)
        _ = try q.enqueueCopy(source: src.iova(at: 12288), destination: dst.iova(at: 12288), length: 64)
        try q.submit()
        statuses = []
        #expect(CopyQueueTests.drainStatuses(q, into: &statuses))
        #expect(statuses == [.successful, .successful])
        #expect(dst.bytes(at: 8192, count: 2048) == src.bytes(at: 8192, count: 2048))
    }

    @Test("PowerDown/PowerUp: CPU ops run while the engine is off and are reported in ticket order with the engine's",
          arguments: TargetFactory.powerEvents)
    func powerCycle(_ factory: TargetFactory) throws {
        let h = try Harness(factory)
        defer { h.close() }
        let q = try CopyQueue(channel: try h.channel(), ringSize: 16, cpuCopyThreshold: Self.threshold)
        let src = try h.memory.allocate(length: 65536), dst = try h.memory.allocate(length: 65536)
        src.fillPattern(13)
        var next: UInt16 = 0, errors: [UInt16] = [], retired = 0
        for i in 0..<6 {
            _ = try q.enqueueCopy(source: src.iova(at: i * 1024), destination: dst.iova(at: i * 1024), length: i % 2 == 0 ? 1024 : 64)
        }
        try q.submit()
        try h.registry.notify(h.handle, event: .powerDown)
        retired += Self.retireInOrder(q, next: &next, errors: &errors)
        #expect(retired == 6, "PowerDown returned with the queue drained")
        // Powered down: CPU ops still run and retire; an engine op waits for PowerUp, and the
        // CPU op after it waits with it.
        _ = try q.enqueueCopy(source: src.iova(at: 6 * 1024), destination: dst.iova(at: 6 * 1024), length: 64)
        try q.submit()
        #expect(q.cpuOpCount == 4)
        retired += Self.retireInOrder(q, next: &next, errors: &errors)
        #expect(retired == 7)
        _ = try q.enqueueCopy(source: src.iova(at: 7 * 1024), destination: dst.iova(at: 7 * 1024), length: 1024)
        _ = try q.enqueueCopy(source: src.iova(at: 8 * 1024), destination: dst.iova(at: 8 * 1024), length: 64)
        do { try q.submit(); Issue.record("submitted an engine op while powered down") } catch { #expect(error.code == .invalidState) }
        #expect(q.cpuOpCount == 5, "the CPU op ran all the same")
        #expect(q.pendingSubmission == 1 && q.outstanding == 1)
        retired += Self.retireInOrder(q, next: &next, errors: &errors)
        #expect(retired == 7, "the CPU op waits behind the engine op before it")
        try h.registry.notify(h.handle, event: .powerUp)
        try q.submit()
        #expect(waitUntil { retired += Self.retireInOrder(q, next: &next, errors: &errors); return retired == 9 })
        #expect(errors.isEmpty && q.completed(max: 16).count == 0)
        #expect(dst.bytes(at: 0, count: 9 * 1024).enumerated().allSatisfy { i, b in
            let op = i / 1024, n = (op < 6 && op % 2 == 0) || op == 7 ? 1024 : 64
            return i % 1024 < n ? b == pattern(i, 13) : b == 0
        })
    }

    @Test("waitForCompletion returns at once for CPU ops and waits for the engine op they follow",
          arguments: TargetFactory.all)
    func asyncWait(_ factory: TargetFactory) async throws {
        let h = try Harness(factory)
        defer { h.close() }
        let q = try CopyQueue(channel: try h.channel(), ringSize: 16, interrupts: true, cpuCopyThreshold: Self.threshold)
        let src = try h.memory.allocate(length: 8192), dst = try h.memory.allocate(length: 8192)
        src.fillPattern(14)
        _ = try q.enqueueCopy(source: src.iova, destination: dst.iova, length: 64)
        try q.submit()
        try await q.waitForCompletion(timeout: .seconds(5))  // no engine op: no interrupt needed
        #expect(q.completed(max: 16).count == 1)
        var retired = 0
        for round in 0..<4 {
            _ = try q.enqueueCopy(source: src.iova(at: round * 2048), destination: dst.iova(at: round * 2048), length: 1024)
            _ = try q.enqueueCopy(source: src.iova(at: round * 2048 + 1024), destination: dst.iova(at: round * 2048 + 1024), length: 64)
            try q.submit()
            while retired < (round + 1) * 2 {
                try await q.waitForCompletion(timeout: .seconds(5))
                retired += q.completed(max: 16).count
            }
        }
        #expect(retired == 8)
    }
}
