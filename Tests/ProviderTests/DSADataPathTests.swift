import DSA
import DeviceModels
import Hardware
import NetDMA
import Platform
import Synchronization
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// The DSA provider's data path on MockDSADevice: flow control against silent drops,
/// batching, interrupts, completion statuses decoded into faults, and CopyQueue on DSA.
@Suite("DSA provider data path (dsa.md §5–§7)", .serialized)
struct DSADataPathTests {
    static func fillSource(_ b: borrowing DMABuffer, seed: UInt8) {
        for i in 0..<b.length { b.base.storeBytes(of: UInt8(truncatingIfNeeded: i &* 131 &+ Int(seed)), toByteOffset: i, as: UInt8.self) }
    }

    static func same(_ a: UnsafeRawPointer, _ b: UnsafeRawPointer, _ n: Int) -> Bool { memcmp(a, b, n) == 0 }

    @Test("a chain far longer than the WQ: never more portal writes outstanding than WQ entries, none dropped, all complete",
          arguments: [1, 64])
    func flowControl(_ batch: Int) throws {
        let rig = try DSARig(configuration: .init(maximumBatch: batch))
        let ch = try DSADirectChannel(rig)
        let wq = ch.channel.index, size = rig.provider.layout.workQueueSize
        #expect(size == 16)
        let n = batch == 1 ? 100 : 2000
        let pool = try DescriptorPool(memory: rig.memory, count: n + 1)
        let src = try rig.memory.allocate(length: n * 64), dst = try rig.memory.allocate(length: n * 64)
        Self.fillSource(src, seed: 1)
        for i in 0..<n {
            pool[i].pointee = Descriptor(transferSize: 64, controlFlags: [.statusUpdateOnCompletion],
                                         source: src.iova(at: i * 64), destination: dst.iova(at: i * 64))
        }
        rig.model.stall()
        try ch.channel.start(dsaChain(pool, 0..<n))
        #expect(waitUntil { rig.model.occupancy(wq: wq) == size }, "the provider fills the WQ")
        // Polling and appending more while the WQ is full must not overfill it.
        for _ in 0..<200 {
            try ch.channel.append(DescriptorChain(address: pool[n], iova: pool.iova(at: n), count: 0))
            #expect(ch.channel.outstandingSubmissions <= size)
        }
        #expect(ch.channel.outstandingSubmissions == size)
        #expect(rig.model.statistics.droppedDescriptors == 0)
        rig.model.resume()
        var maxSeen = 0
        #expect(waitUntil(.seconds(20)) {
            maxSeen = max(maxSeen, ch.channel.outstandingSubmissions)
            return ch.completion == CompletionWord(descriptor: pool.iova(at: n - 1), status: .idle)
        })
        #expect(maxSeen <= size)
        #expect(rig.model.statistics.droppedDescriptors == 0, "no descriptor was dropped")
        #expect(rig.provider.device.softwareError() == nil, "SWERR is clear")
        #expect(Self.same(src.base + 0, dst.base + 0, n * 64), "every NetDMA descriptor ran")
        #expect(rig.model.statistics.descriptorsExecuted == UInt64(n))
    }

    @Test("the hazard the provider avoids: a dedicated WQ written past its size drops the descriptor; SWERR names it")
    func silentDrop() throws {
        let rig = try DSARig()
        rig.model.stall()
        let zero = [UInt8](repeating: 0, count: 64)
        zero.withUnsafeBytes { z in
            for _ in 0..<17 { rig.model.bar2.submit64(7 * DSA.portalWindowSize, z.baseAddress!) }
        }
        #expect(rig.model.statistics.droppedDescriptors == 1)
        let e = try #require(rig.provider.device.softwareError())
        #expect(e.contains("dedicated WQ full (0x53)") && e.contains("WQ 7"))
        #expect(rig.provider.device.acknowledgeSoftwareError() != nil)
        #expect(rig.provider.device.softwareError() == nil, "acknowledged (RW1C)")
        rig.model.resume()
    }

    @Test("a run of ready descriptors is one batch (one WQ entry); a descriptor asking for an interrupt ends its batch")
    func batching() throws {
        let rig = try DSARig()
        let ch = try DSADirectChannel(rig)
        let wq = ch.channel.index
        let pool = try DescriptorPool(memory: rig.memory, count: 64)
        for i in 0..<40 { pool[i].pointee = Descriptor(controlFlags: [.nullTransfer]) }
        pool[9].pointee.flags.insert(.interruptOnCompletion)
        pool[39].pointee.flags.insert(.statusUpdateOnCompletion)
        rig.model.stall()
        try ch.channel.start(dsaChain(pool, 0..<40))
        #expect(waitUntil { rig.model.occupancy(wq: wq) == 2 }, "batch 0…9, then batch 10…39")
        #expect(ch.channel.outstandingSubmissions == 2)
        rig.model.resume()
        #expect(waitUntil { ch.completion == CompletionWord(descriptor: pool.iova(at: 39), status: .idle) })
        #expect(rig.model.interruptCount(vector: wq + 1) == 1, "the batch ending at descriptor 9 asked for vector \(wq + 1)")
        #expect(rig.model.statistics.descriptorsExecuted == 40)
    }

    @Test("MSI-X: channel n's interrupts arrive on vector n + 1, routed to its eventfd")
    func interruptRouting() throws {
        let rig = try DSARig(configuration: .init(workQueues: 3))
        let chs = try (0..<3).map { _ in try DSADirectChannel(rig) }
        let last = try #require(chs.first { $0.channel.index == 2 })
        let pool = try DescriptorPool(memory: rig.memory, count: 2)
        pool[0].pointee = Descriptor(controlFlags: [.nullTransfer, .interruptOnCompletion])
        try last.channel.start(dsaChain(pool, 0..<1))
        let fd = try #require(last.channel.interruptEventFD)
        var p = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
        #expect(poll(&p, 1, 5000) == 1, "channel 2's eventfd fired")
        #expect(rig.model.interruptCount(vector: 3) == 1)
        #expect(rig.model.interruptCount(vector: 1) == 0 && rig.model.interruptCount(vector: 2) == 0)
        #expect(last.channel.serviceInterrupt().lastCompleted == pool.iova(at: 0))
    }

    static let statuses: [DSA.CompletionStatus] = [
        .pageFault, .pageFaultUnresolved, .badOpcode, .invalidFlags, .nonZeroReserved, .transferSizeRange,
        .overlappingBuffers, .hardwareError, .translationFailed,
    ]

    @Test("completion statuses become ChannelFaults with the hardware name, at the failing NetDMA descriptor",
          arguments: statuses, [1, 64])
    func statusesToFaults(_ status: DSA.CompletionStatus, _ batch: Int) throws {
        let rig = try DSARig(configuration: .init(workQueues: 1, maximumBatch: batch))
        let ch = try DSADirectChannel(rig)
        let pool = try DescriptorPool(memory: rig.memory, count: 8)
        let src = try rig.memory.allocate(length: 4096), dst = try rig.memory.allocate(length: 4096)
        Self.fillSource(src, seed: 3)
        for i in 0..<4 {
            pool[i].pointee = Descriptor(transferSize: 256, controlFlags: [.statusUpdateOnCompletion],
                                         source: src.iova(at: i * 256), destination: dst.iova(at: i * 256))
        }
        rig.model.stall()
        rig.model.inject(.failDescriptor(index: 2, status: status))
        try ch.channel.start(dsaChain(pool, 0..<4))
        rig.model.resume()
        #expect(waitUntil { ch.completion.status == .halted })
        #expect(ch.completion == CompletionWord(descriptor: pool.iova(at: 1), status: .halted), "the last success, Halted")
        let f = try #require(ch.channel.fault)
        #expect(f.descriptor == pool.iova(at: 2), "the failing NetDMA descriptor")
        #expect(UInt8(f.rawValue & 0x7F) == status.rawValue)
        #expect(f.causes.first?.hasPrefix(ModelDSAChannel.statusName(status.rawValue)) == true, "\(f)")
        #expect(f.causes.first?.contains(status.description) == true)
        #expect(Self.same(src.base + 0, dst.base + 0, 512), "descriptors before the failure completed")
        #expect(ch.channel.serviceInterrupt().fault == f)
        #expect(ch.channel.softwareInterrupts == 1, "the halt raised the channel's interrupt")
        // Start recovers at the next descriptor.
        try ch.channel.start(pool.chain(from: 3, count: 1))
        #expect(waitUntil { ch.completion == CompletionWord(descriptor: pool.iova(at: 3), status: .idle) })
        #expect(ch.channel.fault == nil)
        #expect(Self.same(src.base + 768, dst.base + 768, 256))
    }

    @Test("a page fault part way through a copy: partial completion reported with direction, address and bytes done",
          arguments: [true, false])
    func partialPageFault(_ onWrite: Bool) throws {
        let rig = try DSARig(configuration: .init(workQueues: 1))
        let ch = try DSADirectChannel(rig)
        let pool = try DescriptorPool(memory: rig.memory, count: 4)
        let other = try rig.memory.allocate(length: 8192)
        Self.fillSource(other, seed: 4)
        // Allocated last: nothing is mapped after its single page.
        let edge = try rig.memory.allocate(length: 4096)
        if !onWrite { Self.fillSource(edge, seed: 5) }
        let (src, dst) = onWrite ? (other.iova, edge.iova(at: 3996)) : (edge.iova(at: 3996), other.iova)
        pool[0].pointee = Descriptor(transferSize: 300, controlFlags: [.statusUpdateOnCompletion], source: src, destination: dst)
        try ch.channel.start(dsaChain(pool, 0..<1))
        #expect(waitUntil { ch.completion.status == .halted })
        let f = try #require(ch.channel.fault)
        #expect(f.descriptor == pool.iova(at: 0))
        #expect(f.rawValue & 0x7F == 0x03)
        #expect((f.rawValue & 0x80 != 0) == onWrite, "status bit 7: the fault was a write")
        #expect(f.rawValue >> 32 == 100, "bytes completed")
        let fault = edge.iova + 4096
        #expect(f.causes.contains { $0.contains("\(onWrite ? "write" : "read") fault at IOVA 0x\(String(fault, radix: 16)) after 100 bytes (ascending)") }, "\(f)")
        if onWrite {
            #expect(Self.same(other.base + 0, edge.base + 3996, 100), "bytes before the fault were written")
        } else {
            #expect(Self.same(edge.base + 3996, other.base + 0, 100))
        }
    }

    @Test("a NextDescriptor outside DMA memory: what precedes it completes, then the channel halts naming the address",
          arguments: [true, false])
    func unreachableNext(_ counted: Bool) throws {
        let rig = try DSARig(configuration: .init(version: counted ? .v2_0 : .v1_1, workQueues: 1))
        let ch = try DSADirectChannel(rig)
        let pool = try DescriptorPool(memory: rig.memory, count: 4)
        for i in 0..<3 { pool[i].pointee = Descriptor(controlFlags: [.nullTransfer, .statusUpdateOnCompletion]) }
        let chain = dsaChain(pool, 0..<3, counted: counted)
        pool[1].pointee.next = 0xF0_0000_0000
        try ch.channel.start(chain)
        #expect(waitUntil { ch.completion.status == .halted })
        #expect(ch.completion.descriptor == pool.iova(at: 1), "descriptors 0 and 1 completed")
        let f = try #require(ch.channel.fault)
        #expect(f.descriptor == 0xF0_0000_0000 && f.causes[0].contains("not in this provider's DMA memory"))
        // Start recovers.
        try ch.channel.start(pool.chain(from: 2, count: 1))
        #expect(waitUntil { ch.completion == CompletionWord(descriptor: pool.iova(at: 2), status: .idle) })
        #expect(ch.channel.fault == nil)
    }

    @Test("status names: every DSA status code has its Linux name")
    func statusNames() {
        let codes: [UInt8] = Array(0x00...0x09) + Array(0x10...0x22)
        let names = codes.map { ModelDSAChannel.statusName($0) }
        #expect(names.allSatisfy { $0.hasPrefix("DSA_COMP_") })
        #expect(Set(names).count == codes.count)
        var bytes = [UInt8](repeating: 0, count: 32)
        bytes[0] = 0x06
        bytes[4] = 2
        bytes[8] = 0x40; bytes[9] = 0x10
        let r = bytes.withUnsafeBytes { DSA.CompletionRecordValue(loading: $0.baseAddress!) }
        let f = ModelDSAChannel.fault(r, descriptor: 0x1000, member: 2, of: 5, wq: 3)
        #expect(f.causes[0].hasPrefix("DSA_COMP_BATCH_PAGE_FAULT"))
        #expect(f.causes.contains("the batch list could not be read at IOVA 0x1040"))
        #expect(f.causes.contains("batch member 2 of 5 on WQ 3"))
        #expect(f.descriptor == 0x1000)
    }

    enum OpKind: CaseIterable { case copy, fill, null }

    /// Liveness of the submit/poller hand-off: each op is alone in flight, so a submit whose
    /// "run again" request the poller lost (the engine idle, the poller seeing nothing
    /// outstanding) would never complete; nothing else would submit after it.
    @Test("a polling client processes its own records; when it stops polling, the completion poller writes the word again, and serves an unpolled channel meanwhile")
    func clientPollsThenPollerServes() throws {
        let h = try Harness(.dsa(.v2_0))
        defer { h.close() }
        let c = try h.channel()
        let q = try CopyQueue(channel: c, ringSize: 16)
        let src = try h.memory.allocate(length: 4096), dst = try h.memory.allocate(length: 4096)
        Self.fillSource(src, seed: 5)
        // The client polls: its op is retired through its own polls.
        _ = try q.enqueueCopy(source: src.iova, destination: dst.iova, length: 64)
        try q.submit()
        var retired = 0
        #expect(waitUntil { retired += q.completed(max: 16).count; return retired == 1 })
        let first = c.completionWord
        #expect(first.status == .idle)
        // Another channel, read at the NetDMA level only (nobody polls it), while this one is
        // attended: the poller serves it.
        let other = try h.channel()
        let pool = try DescriptorPool(memory: h.memory, count: 2)
        setCopy(pool, 0, from: src.iova(at: 1024), to: dst.iova(at: 1024), length: 256)
        try other.start(link(pool, 0..<1, counted: other.countedChains))
        #expect(waitUntil { other.completionWord == CompletionWord(descriptor: pool.iova(at: 0), status: .idle) })
        // The client stops polling: its next op's completion reaches the word all the same.
        _ = try q.enqueueCopy(source: src.iova(at: 64), destination: dst.iova(at: 64), length: 64)
        try q.submit()
        #expect(waitUntil { c.completionWord.status == .idle && c.completionWord.descriptor != first.descriptor },
                "nobody wrote the word of a channel whose client stopped polling")
        #expect(q.completed(max: 16).count == 1)
        #expect(dst.bytes(at: 0, count: 128) == src.bytes(at: 0, count: 128))
        #expect(dst.bytes(at: 1024, count: 256) == src.bytes(at: 1024, count: 256))
    }

    @Test("QD1 storm on DSA: 4,000 ops submitted one at a time, each completes before the next is submitted",
          arguments: [TargetFactory.dsa(.v2_0), .dsa(.v1_1)])
    func qd1Storm(_ factory: TargetFactory) throws {
        let h = try Harness(factory)
        defer { h.close() }
        let q = try CopyQueue(channel: try h.channel(), ringSize: 16)
        let src = try h.memory.allocate(length: 4096), dst = try h.memory.allocate(length: 4096)
        Self.fillSource(src, seed: 3)
        for i in 0..<4000 {
            let o = (i % 64) * 64
            _ = try q.enqueueCopy(source: src.iova(at: o), destination: dst.iova(at: o), length: 64)
            try q.submit()
            var retired = 0
            let done = waitUntil(.seconds(10)) { retired += q.completed(max: 16).count; return retired == 1 }
            guard done else { Issue.record("op \(i) did not complete (a lost submit)"); return }
        }
        #expect(dst.bytes(at: 0, count: 4096) == src.bytes(at: 0, count: 4096))
    }

    @Test("CopyQueue on DSA: copy/fill/NULL byte-exact with faults at random ops, each op accounted for exactly once",
          arguments: [TargetFactory.dsa(.v2_0), .dsa(.v1_1), .dsa(.v2_0, maximumBatch: 1)], [UInt64(7), 8])
    func copyQueueFaults(_ factory: TargetFactory, _ seed: UInt64) throws {
        let h = try Harness(factory)
        defer { h.close() }
        let q = try CopyQueue(channel: try h.channel(), ringSize: 64)
        let total = 800
        let src = try h.memory.allocate(length: total * 512), dst = try h.memory.allocate(length: total * 512)
        Self.fillSource(src, seed: UInt8(truncatingIfNeeded: seed))
        var rng = SplitMix(state: seed)
        var ops: [(kind: OpKind, length: Int, pattern: UInt64, bad: Bool)] = []
        var statuses: [CopyStatus] = []
        var buffer = [CopyStatus](repeating: .successful, count: 16)
        while ops.count < total {
            let batch = Int.random(in: 1...24, using: &rng)
            var k = 0
            while k < batch && ops.count < total && q.freeSlots > 0 {
                let i = ops.count, o = i * 512
                let kind = OpKind.allCases.randomElement(using: &rng)!
                let bad = kind != .null && Int.random(in: 0..<100, using: &rng) < 5
                let length = Int.random(in: 1...512, using: &rng)
                let pattern = rng.next()
                let fence = Int.random(in: 0..<10, using: &rng) == 0
                switch kind {
                case .copy:
                    _ = try q.enqueueCopy(source: bad ? 0xF0_0000_0000 + UInt64(o) : src.iova(at: o),
                                          destination: dst.iova(at: o), length: length, fence: fence)
                case .fill:
                    _ = try q.enqueueFill(pattern: pattern, destination: bad ? 0xF0_0000_0000 + UInt64(o) : dst.iova(at: o),
                                          length: length, fence: fence)
                case .null:
                    _ = try q.enqueueNull(fence: fence)
                }
                ops.append((kind, length, pattern, bad))
                k += 1
            }
            try q.submit()
            buffer.withUnsafeMutableBufferPointer { b in
                let (n, _) = q.completedStatus(max: b.count, into: b)
                statuses.append(contentsOf: b.prefix(n))
            }
        }
        #expect(CopyQueueTests.drainStatuses(q, into: &statuses, timeout: .seconds(20)))
        #expect(statuses.count == total, "every op reported exactly once")
        let failed = Set(statuses.indices.filter { statuses[$0] == .failed })
        let bad = Set(ops.indices.filter { ops[$0].bad })
        #expect(failed == bad, "exactly the faulty ops failed (seed \(seed))")
        #expect(q.failedCount == bad.count)
        if !bad.isEmpty { #expect(q.lastFault?.causes.first?.hasPrefix("DSA_COMP_PAGE_FAULT_NOBOF") == true) }
        for (i, op) in ops.enumerated() {
            let o = i * 512
            let got = [UInt8](UnsafeRawBufferPointer(start: dst.base + o, count: op.length))
            switch (op.kind, op.bad) {
            case (.copy, false):
                #expect(got == [UInt8](UnsafeRawBufferPointer(start: src.base + o, count: op.length)), "copy \(i)")
            case (.fill, false):
                #expect(got == (0..<op.length).map { UInt8(truncatingIfNeeded: op.pattern >> UInt64(($0 % 8) * 8)) }, "fill \(i)")
            case (.copy, true), (.null, _):
                #expect(got.allSatisfy { $0 == 0 }, "op \(i) wrote nothing")
            case (.fill, true):
                break  // its destination was elsewhere (unmapped)
            }
        }
    }

    @Test("CopyQueue on DSA with device-injected failures (DSA_COMP_HW_ERR1): each op reported once, failures decoded")
    func copyQueueInjected() throws {
        let h = try Harness(.dsa(.v2_0))
        defer { h.close() }
        let model = (h.target as! DSATarget).rig.model
        let q = try CopyQueue(channel: try h.channel(), ringSize: 32)
        let total = 400
        let src = try h.memory.allocate(length: total * 256), dst = try h.memory.allocate(length: total * 256)
        Self.fillSource(src, seed: 9)
        var rng = SplitMix(state: 99)
        var statuses: [CopyStatus] = []
        var buffer = [CopyStatus](repeating: .successful, count: 16)
        var injections = 0
        var op = 0
        while op < total {
            if Int.random(in: 0..<4, using: &rng) == 0 {
                model.inject(.failDescriptor(index: Int.random(in: 0..<6, using: &rng), status: .hardwareError))
                injections += 1
            }
            for _ in 0..<Int.random(in: 1...10, using: &rng) where op < total && q.freeSlots > 0 {
                _ = try q.enqueueCopy(source: src.iova(at: op * 256), destination: dst.iova(at: op * 256), length: 256)
                op += 1
            }
            try q.submit()
            buffer.withUnsafeMutableBufferPointer { b in
                let (n, _) = q.completedStatus(max: b.count, into: b)
                statuses.append(contentsOf: b.prefix(n))
            }
        }
        #expect(CopyQueueTests.drainStatuses(q, into: &statuses, timeout: .seconds(20)))
        #expect(statuses.count == total, "every op reported exactly once")
        let failed = statuses.indices.filter { statuses[$0] == .failed }
        #expect(!failed.isEmpty && failed.count <= injections, "\(failed.count) failures for \(injections) injections")
        #expect(q.failedCount == failed.count)
        #expect(q.lastFault?.causes.first?.hasPrefix("DSA_COMP_HW_ERR1") == true)
        for i in 0..<total where statuses[i] == .successful {
            #expect(Self.same(src.base + i * 256, dst.base + i * 256, 256), "op \(i)")
        }
    }

    @Test("the device halts with work outstanding: the oldest op is reported failed once, Start is refused until recover(), then the rest complete",
          arguments: [DSA.ResetType.software, .flr])
    func haltAndRecover(_ type: DSA.ResetType) throws {
        let h = try Harness(.dsa(.v2_0))
        defer { h.close() }
        let rig = (h.target as! DSATarget).rig
        let q = try CopyQueue(channel: try h.channel(), ringSize: 32)
        let src = try h.memory.allocate(length: 20 * 256), dst = try h.memory.allocate(length: 20 * 256)
        Self.fillSource(src, seed: 11)
        rig.model.stall()
        for i in 0..<20 { _ = try q.enqueueCopy(source: src.iova(at: i * 256), destination: dst.iova(at: i * 256), length: 256) }
        try q.submit()
        rig.model.inject(.halt(resetType: type))
        rig.model.resume()
        var statuses: [CopyStatus] = []
        var buffer = [CopyStatus](repeating: .successful, count: 32)
        func poll() {
            buffer.withUnsafeMutableBufferPointer { b in
                let (n, _) = q.completedStatus(max: b.count, into: b)
                statuses.append(contentsOf: b.prefix(n))
            }
        }
        #expect(waitUntil { poll(); return !statuses.isEmpty }, "the halt is noticed")
        #expect(statuses == [.failed], "the op outstanding at the halt fails, once")
        #expect(q.lastFault?.causes.first == "device halted (GENSTS)")
        #expect(q.outstanding == 19)
        let spare = try DescriptorPool(memory: h.memory, count: 1)
        spare[0].pointee = Descriptor(controlFlags: [.nullTransfer])
        do { try rig.channel(q.channel.index).start(spare.chain(from: 0, count: 1)); Issue.record("Start on a halted device") } catch {
            #expect(error.code == .deviceError && error.message.contains("recover()"))
        }
        if type == .flr {
            expectDriverError(.deviceError, ["VFIO_DEVICE_RESET"]) { try rig.provider.recover() }
            rig.model.functionLevelReset()
        }
        try rig.provider.recover()
        #expect(waitUntil(.seconds(10)) { poll(); return q.outstanding == 0 })
        #expect(statuses.count == 20 && statuses.dropFirst().allSatisfy { $0 == .successful })
        #expect(Self.same(src.base + 256, dst.base + 256, 19 * 256), "the rest ran after recovery")
    }
}

/// Power events and concurrency on the DSA provider.
@Suite("DSA provider power and concurrency", .serialized)
struct DSAPowerTests {
    @Test("powerDown drains (1.1+), disables the device; power loss; powerUp re-runs the bring-up and the queue continues",
          arguments: [NetDMAVersion.v1_0, .v1_1, .v2_0])
    func powerCycle(_ version: NetDMAVersion) throws {
        let rig = try DSARig(configuration: .init(version: version, workQueues: 2))
        let registry = NetDMARegistry(drainTimeout: .seconds(5))
        let handle = try rig.provider.register(with: registry)
        defer { _ = try? rig.provider.deregister() }
        #expect(registry.info(handle)?.state == .started)
        let q = try CopyQueue(channel: try registry.allocateChannel(provider: handle), ringSize: 64)
        let src = try rig.memory.allocate(length: 64 * 1024), dst = try rig.memory.allocate(length: 64 * 1024)
        DSADataPathTests.fillSource(src, seed: 21)
        var retired = 0
        for i in 0..<20 { _ = try q.enqueueCopy(source: src.iova(at: i * 1024), destination: dst.iova(at: i * 1024), length: 1024) }
        try q.submit()
        #expect(waitUntil { retired += q.completed(max: 64).count; return retired == 20 }, "1.0 has no drain notification: wait")
        try rig.provider.powerDown()
        #expect(rig.provider.device.state == .disabled)
        rig.model.injectPowerLoss()  // D3: the configuration is gone
        try rig.provider.powerUp()
        #expect(rig.provider.device.state == .enabled && rig.provider.device.workQueueState(1) == .enabled)
        for i in 20..<50 { _ = try q.enqueueCopy(source: src.iova(at: i * 1024), destination: dst.iova(at: i * 1024), length: 1024) }
        try q.submit()
        #expect(waitUntil { retired += q.completed(max: 64).count; return retired == 50 })
        #expect(q.failedCount == 0)
        #expect(DSADataPathTests.same(src.base, dst.base, 50 * 1024))
        let starts = rig.channel(q.channel.index).startedFlags
        #expect(starts.last?.contains(ControlFlags.nullTransfer) == true, "re-seeded with a NULL Start after power-up")
    }

    @Test("four channels on four threads, copies with faults: WQs independent, every op accounted once on each")
    func concurrentChannels() throws {
        let h = try Harness(.dsa(.v2_0))
        defer { h.close() }
        let results = Mutex<[(failed: Set<Int>, bad: Set<Int>, ok: Bool)]>([])
        var threads: [ConformanceThread] = []
        let memory = h.memory
        for t in 0..<4 {
            let channel = try h.channel()
            let q = try CopyQueue(channel: channel, ringSize: 128)
            let src = try memory.allocate(length: 1000 * 256), dst = try memory.allocate(length: 1000 * 256)
            DSADataPathTests.fillSource(src, seed: UInt8(t))
            let box = QueueBox(q, src, dst)
            threads.append(ConformanceThread {
                let q = box.queue
                let srcBase = box.src.base, dstBase = box.dst.base, srcIOVA = box.src.iova, dstIOVA = box.dst.iova
                var rng = SplitMix(state: UInt64(t) &+ 100)
                var statuses: [CopyStatus] = []
                var bad = Set<Int>()
                var refusals = 0  // enqueue or submit refused: never, with free slots
                var buffer = [CopyStatus](repeating: .successful, count: 32)
                func drain() {
                    buffer.withUnsafeMutableBufferPointer { b in
                        let (n, _) = q.completedStatus(max: b.count, into: b)
                        statuses.append(contentsOf: b.prefix(n))
                    }
                }
                var op = 0
                while op < 1000 {
                    while q.freeSlots > 0 && op < 1000 {
                        let faulty = Int.random(in: 0..<100, using: &rng) < 3
                        if faulty { bad.insert(op) }
                        do {
                            _ = try q.enqueueCopy(source: faulty ? 0xF0_0000_0000 : srcIOVA + UInt64(op * 256),
                                                  destination: dstIOVA + UInt64(op * 256), length: 256)
                        } catch { refusals += 1 }
                        op += 1
                        if op % 16 == 0 { break }
                    }
                    do { try q.submit() } catch { refusals += 1 }
                    drain()
                }
                let done = waitUntil(.seconds(20)) { drain(); return q.outstanding == 0 }
                let failed = Set(statuses.indices.filter { statuses[$0] == .failed })
                var ok = done && statuses.count == 1000 && refusals == 0
                for i in 0..<1000 where !bad.contains(i) && memcmp(srcBase + i * 256, dstBase + i * 256, 256) != 0 { ok = false }
                results.withLock { $0.append((failed, bad, ok)) }
            })
        }
        for t in threads { t.join() }
        let r = results.withLock { $0 }
        #expect(r.count == 4)
        for x in r {
            #expect(x.ok, "every op reported once and every good op copied")
            #expect(x.failed == x.bad)
        }
    }
}

/// A queue and its buffers, handed to the one test thread that uses them.
final class QueueBox: @unchecked Sendable {
    let queue: CopyQueue
    let src: DMABuffer
    let dst: DMABuffer
    init(_ queue: CopyQueue, _ src: consuming DMABuffer, _ dst: consuming DMABuffer) {
        self.queue = queue
        self.src = src
        self.dst = dst
    }
}
