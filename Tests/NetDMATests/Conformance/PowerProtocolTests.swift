import NetDMA
import Platform
import Synchronization
import Testing

// Regressions of the power-event protocol (netdma.md §10), run against every provider.
@Suite("NetDMA power protocol")
struct PowerProtocolTests {
    @Test("while powered down every channel call is refused; PowerUp keeps the completion word naming the last completed descriptor",
          arguments: TargetFactory.powerEvents)
    func refusedAndWordKept(_ factory: TargetFactory) throws {
        let h = try Harness(factory)
        defer { h.close() }
        let c = try h.channel()
        let pool = try DescriptorPool(memory: h.memory, count: 8)
        let src = try h.memory.allocate(length: 4096), dst = try h.memory.allocate(length: 4096)
        src.fillPattern(31)
        for i in 0..<4 { setCopy(pool, i, from: src.iova(at: i * 512), to: dst.iova(at: i * 512), length: 512) }
        try c.start(link(pool, 0..<2, counted: c.countedChains))
        try h.registry.notify(h.handle, event: .powerDown)
        let drained = CompletionWord(descriptor: pool.iova(at: 1), status: .idle)
        #expect(c.completionWord == drained)
        for (name, call) in [("Start", { try c.start(link(pool, 2..<4, counted: c.countedChains)) }),
                             ("Abort", { try c.abort() }), ("Reset", { try c.reset() }),
                             ("Suspend", { _ = try c.suspend() }), ("Free", { try c.free() })] as [(String, () throws -> Void)] {
            do { try call(); Issue.record("\(name) reached a powered-down provider") } catch let e as DriverError {
                #expect(e.code == .invalidState, "\(name)")
            }
        }
        let starts = h.target.startedFlags(channel: c.index).count
        try h.registry.notify(h.handle, event: .powerUp)
        let flags = h.target.startedFlags(channel: c.index)
        #expect(flags.count == starts + 1)
        #expect(flags.last?.contains(.nullTransfer) == true)
        #expect(flags.last?.contains(.statusUpdateOnCompletion) == false, "the re-Start's NULL does not overwrite the word")
        #expect(c.completionWord == drained, "a client that had not read the word yet still sees its last completion")
        // The chain continues after the drained tail.
        if !c.countedChains { pool.publishNext(of: 1, pool.iova(at: 2)) }
        try c.append(link(pool, 2..<4, counted: c.countedChains))
        #expect(waitUntil { c.completionWord == CompletionWord(descriptor: pool.iova(at: 3), status: .idle) })
        #expect(dst.bytes(at: 0, count: 2048) == src.bytes(at: 0, count: 2048))
    }

    @Test("a CopyQueue that has not polled across a power cycle still sees every completion", arguments: TargetFactory.powerEvents)
    func unpolledQueue(_ factory: TargetFactory) throws {
        let h = try Harness(factory)
        defer { h.close() }
        let q = try CopyQueue(channel: try h.channel(), ringSize: 8)
        let src = try h.memory.allocate(length: 8192), dst = try h.memory.allocate(length: 8192)
        src.fillPattern(32)
        for i in 0..<7 { _ = try q.enqueueCopy(source: src.iova(at: i * 1024), destination: dst.iova(at: i * 1024), length: 1024) }
        try q.submit()
        try h.registry.notify(h.handle, event: .powerDown)
        try h.registry.notify(h.handle, event: .powerUp)
        #expect(q.completed(max: 64).count == 7, "the re-Start hid the completions the queue had not read")
        #expect(dst.bytes(at: 0, count: 7 * 1024) == src.bytes(at: 0, count: 7 * 1024))
    }
}
