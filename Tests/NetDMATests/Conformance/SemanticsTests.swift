import NetDMA
import Platform
import Synchronization
import Testing

#if canImport(Glibc)
import Glibc
#endif

// Regressions of NetDMA semantics found by driving the providers as a NetDMA client and as
// Linux's VFIO selftest driver does (issue 13), run against every target.
@Suite("NetDMA semantics (issue 13)", .serialized)
struct SemanticsTests {
    static let unmapped: UInt64 = 0xF0_0000_0000

    @Test("a zero-length copy (and fill) completes, writes nothing, and still does its STATUS and INTERRUPT",
          arguments: TargetFactory.all)
    func zeroLengthTransfer(_ factory: TargetFactory) async throws {
        let h = try Harness(factory)
        defer { h.close() }
        let c = try h.channel()
        let pool = try DescriptorPool(memory: h.memory, count: 8)
        let src = try h.memory.allocate(length: 4096), dst = try h.memory.allocate(length: 4096)
        src.fillPattern(41)
        memset(dst.base, 0xA5, dst.length)
        let canary = [UInt8](repeating: 0xA5, count: 64)
        setCopy(pool, 0, from: src.iova, to: dst.iova, length: 0, flags: [.statusUpdateOnCompletion, .interruptOnCompletion])
        let fills = c.providerFlags.contains(.fill)
        if fills {
            setCopy(pool, 1, from: 0x1122_3344_5566_7788, to: dst.iova(at: 64), length: 0, flags: [.statusUpdateOnCompletion])
            pool[1].pointee.flags.operation = .fill
        } else {
            setCopy(pool, 1, from: src.iova(at: 64), to: dst.iova(at: 64), length: 0, flags: [.statusUpdateOnCompletion])
        }
        setCopy(pool, 2, from: src.iova(at: 1024), to: dst.iova(at: 1024), length: 256)
        let g = c.interruptGeneration
        try c.start(link(pool, 0..<3, counted: c.countedChains))
        _ = try await c.waitForInterrupt(after: g, timeout: .seconds(5))
        #expect(waitUntil { c.completionWord == CompletionWord(descriptor: pool.iova(at: 2), status: .idle) },
                "the chain completes (word \(c.completionWord), fault \(c.fault.map(\.description) ?? "none"))")
        #expect(c.fault == nil, "a zero-length transfer is not an error")
        #expect(c.state == .running)
        #expect(c.lastInterruptDescriptor != 0, "the zero-length copy's interrupt came as a completion, not an error")
        #expect(dst.bytes(at: 0, count: 64) == canary, "a zero-length copy writes nothing")
        #expect(dst.bytes(at: 64, count: 64) == canary, "a zero-length \(fills ? "fill" : "copy") writes nothing")
        #expect(dst.bytes(at: 1024, count: 256) == src.bytes(at: 1024, count: 256))

        // The same through a CopyQueue: every op reported successful, exactly once.
        try c.reset()
        let q = try CopyQueue(channel: c, ringSize: 16)
        _ = try q.enqueueCopy(source: src.iova, destination: dst.iova(at: 2048), length: 0)
        if fills { _ = try q.enqueueFill(pattern: 7, destination: dst.iova(at: 2048), length: 0) }
        _ = try q.enqueueCopy(source: src.iova, destination: dst.iova(at: 3072), length: 100)
        try q.submit()
        var statuses: [CopyStatus] = []
        #expect(CopyQueueTests.drainStatuses(q, into: &statuses))
        #expect(statuses == [CopyStatus](repeating: .successful, count: fills ? 3 : 2))
        #expect(dst.bytes(at: 2048, count: 64) == canary)
        #expect(dst.bytes(at: 3072, count: 100) == src.bytes(at: 0, count: 100))
    }

    @Test("a NULL transfer's size, addresses, operation and page-break bits are not looked at",
          arguments: TargetFactory.all)
    func nullIgnoresFields(_ factory: TargetFactory) async throws {
        let h = try Harness(factory)
        defer { h.close() }
        let c = try h.channel()
        let pool = try DescriptorPool(memory: h.memory, count: 8)
        let src = try h.memory.allocate(length: 4096), dst = try h.memory.allocate(length: 4096)
        src.fillPattern(45)
        let next0 = pool[0].pointee.next
        pool[0].pointee = Descriptor(transferSize: .max, controlFlags: [.nullTransfer, .statusUpdateOnCompletion],
                                     source: Self.unmapped, destination: Self.unmapped, next: next0)
        setNull(pool, 1, flags: [.sourcePageBreak, .destinationPageBreak, .statusUpdateOnCompletion])
        pool[1].pointee.nextSource = Self.unmapped
        pool[1].pointee.nextDestination = Self.unmapped
        setNull(pool, 2, flags: [.statusUpdateOnCompletion])
        pool[2].pointee.flags.operation = .fill
        pool[2].pointee.transferSize = 64
        pool[2].pointee.destination = Self.unmapped
        setCopy(pool, 3, from: src.iova, to: dst.iova, length: 256, flags: [.statusUpdateOnCompletion, .interruptOnCompletion])
        let g = c.interruptGeneration
        try c.start(link(pool, 0..<4, counted: c.countedChains))
        _ = try await c.waitForInterrupt(after: g, timeout: .seconds(5))
        #expect(waitUntil { c.completionWord == CompletionWord(descriptor: pool.iova(at: 3), status: .idle) },
                "word \(c.completionWord), fault \(c.fault.map(\.description) ?? "none")")
        #expect(c.fault == nil)
        #expect(dst.bytes(at: 0, count: 256) == src.bytes(at: 0, count: 256))
    }

    @Test("a zero-length copy put into the chain while suspended completes after Resume", arguments: TargetFactory.all)
    func zeroLengthEditedWhileSuspended(_ factory: TargetFactory) throws {
        let h = try Harness(factory)
        defer { h.close() }
        let c = try h.channel()
        let pool = try DescriptorPool(memory: h.memory, count: 8)
        let src = try h.memory.allocate(length: 4096), dst = try h.memory.allocate(length: 4096)
        src.fillPattern(46)
        for i in 0..<3 { setCopy(pool, i, from: src.iova(at: i * 256), to: dst.iova(at: i * 256), length: 256) }
        h.target.hold(channel: c.index, true)
        try c.start(link(pool, 0..<3, counted: c.countedChains))
        #expect(waitUntil { h.target.inFlight(channel: c.index) == pool.iova(at: 0) })
        let suspended = Background { () throws(DriverError) in try c.suspend() }
        #expect(waitUntil { h.target.suspendRequested(channel: c.index) })
        h.target.hold(channel: c.index, false)
        #expect(try suspended.value() == pool.iova(at: 0))
        pool[1].pointee.transferSize = 0  // the client edits the chain: descriptor 1 moves nothing now
        try c.resume()
        #expect(waitUntil { c.completionWord == CompletionWord(descriptor: pool.iova(at: 2), status: .idle) },
                "word \(c.completionWord), fault \(c.fault.map(\.description) ?? "none")")
        #expect(c.fault == nil)
        #expect(dst.bytes(at: 256, count: 256) == [UInt8](repeating: 0, count: 256))
        #expect(dst.bytes(at: 512, count: 256) == src.bytes(at: 512, count: 256))
    }

    @Test("Resume writes nothing to the completion word (it keeps Suspend's); the next STATUS descriptor does",
          arguments: TargetFactory.all)
    func resumeLeavesTheWord(_ factory: TargetFactory) throws {
        // NetDMA §7.1: the word is written by STATUS descriptors (Active/Idle), Suspend,
        // Abort and Reset; a Resume is none of them.
        let h = try Harness(factory)
        defer { h.close() }
        let c = try h.channel()
        let pool = try DescriptorPool(memory: h.memory, count: 8)
        let src = try h.memory.allocate(length: 4096), dst = try h.memory.allocate(length: 4096)
        src.fillPattern(49)
        for i in 0..<3 { setCopy(pool, i, from: src.iova(at: i * 256), to: dst.iova(at: i * 256), length: 256, flags: []) }
        setCopy(pool, 3, from: src.iova(at: 768), to: dst.iova(at: 768), length: 256)
        h.target.hold(channel: c.index, true)
        try c.start(link(pool, 0..<4, counted: c.countedChains))
        #expect(waitUntil { h.target.inFlight(channel: c.index) == pool.iova(at: 0) })
        let suspended = Background { () throws(DriverError) in try c.suspend() }
        #expect(waitUntil { h.target.suspendRequested(channel: c.index) })
        h.target.hold(channel: c.index, false)
        #expect(try suspended.value() == pool.iova(at: 0))
        let word = CompletionWord(descriptor: pool.iova(at: 0), status: .suspend)
        #expect(c.completionWord == word)
        // Held, so that no STATUS descriptor completes meanwhile (d1 and d2 have none).
        h.target.hold(channel: c.index, true)
        try c.resume()
        #expect(c.completionWord == word, "Resume wrote \(c.completionWord)")
        h.target.hold(channel: c.index, false)
        #expect(waitUntil { c.completionWord == CompletionWord(descriptor: pool.iova(at: 3), status: .idle) },
                "word \(c.completionWord), fault \(c.fault.map(\.description) ?? "none")")
        #expect(dst.bytes(at: 0, count: 1024) == src.bytes(at: 0, count: 1024))
    }

    @Test("corners: calls in the wrong state, empty chains, NULL-only chains, Suspend/Abort/Reset on an idle channel, Reset twice",
          arguments: TargetFactory.all)
    func corners(_ factory: TargetFactory) async throws {
        let h = try Harness(factory)
        defer { h.close() }
        let c = try h.channel()
        let pool = try DescriptorPool(memory: h.memory, count: 8)
        let src = try h.memory.allocate(length: 4096), dst = try h.memory.allocate(length: 4096)
        src.fillPattern(50)
        func refused(_ what: String, _ code: DriverError.Code, _ body: () throws(DriverError) -> Void) {
            do throws(DriverError) { try body(); Issue.record("\(what) was accepted") } catch {
                #expect(error.code == code, "\(what): \(error)")
                #expect(!error.message.isEmpty)
            }
        }
        // A fresh channel: only Start (of at least one descriptor), Reset and Free.
        setNull(pool, 0)
        refused("Suspend on a fresh channel", .invalidState) { () throws(DriverError) in _ = try c.suspend() }
        refused("Resume on a fresh channel", .invalidState) { () throws(DriverError) in try c.resume() }
        refused("Abort on a fresh channel", .invalidState) { () throws(DriverError) in try c.abort() }
        refused("Append on a fresh channel", .invalidState) { () throws(DriverError) in try c.append(pool.chain(from: 0, count: 1)) }
        refused("Start of 0 descriptors", .invalidArgument) { () throws(DriverError) in try c.start(pool.chain(from: 0, count: 0)) }
        try c.reset()
        try c.reset()
        #expect(c.state == .allocated)
        let raised = h.target.interruptsRaised(channel: c.index)

        // A NULL-only chain, STATUS and INTERRUPT on its last descriptor only.
        for i in 0..<3 { setNull(pool, i, flags: i == 2 ? [.statusUpdateOnCompletion, .interruptOnCompletion] : []) }
        var g = c.interruptGeneration
        try c.start(link(pool, 0..<3, counted: c.countedChains))
        g = try await c.waitForInterrupt(after: g, timeout: .seconds(5))
        #expect(waitUntil { c.completionWord == CompletionWord(descriptor: pool.iova(at: 2), status: .idle) }, "word \(c.completionWord)")
        refused("Resume while running", .invalidState) { () throws(DriverError) in try c.resume() }
        refused("Append of 0 descriptors", .invalidArgument) { () throws(DriverError) in
            try c.append(pool.chain(from: 3, count: 0))
        }

        // Suspend on a channel that has run its chain: the last descriptor, Resume parks it,
        // and an Append runs on.
        let last = try c.suspend()
        #expect(last == pool.iova(at: 2))
        #expect(c.completionWord == CompletionWord(descriptor: pool.iova(at: 2), status: .suspend))
        try c.resume()
        setCopy(pool, 3, from: src.iova, to: dst.iova, length: 512)
        let more = link(pool, 3..<4, counted: c.countedChains)
        if !c.countedChains { pool.publishNext(of: 2, more.iova) }
        try c.append(more)
        #expect(waitUntil { c.completionWord == CompletionWord(descriptor: pool.iova(at: 3), status: .idle) }, "word \(c.completionWord)")
        #expect(dst.bytes(at: 0, count: 512) == src.bytes(at: 0, count: 512))

        // Abort on a channel with nothing left: Halted naming the last; Append refused, Start runs.
        try c.abort()
        #expect(c.completionWord == CompletionWord(descriptor: pool.iova(at: 3), status: .halted))
        #expect(c.fault == nil)
        refused("Append after Abort", .invalidState) { () throws(DriverError) in try c.append(pool.chain(from: 4, count: 1)) }
        refused("Abort twice", .invalidState) { () throws(DriverError) in try c.abort() }
        setCopy(pool, 4, from: src.iova(at: 1024), to: dst.iova(at: 1024), length: 512)
        try c.start(link(pool, 4..<5, counted: c.countedChains))
        #expect(waitUntil { c.completionWord == CompletionWord(descriptor: pool.iova(at: 4), status: .idle) }, "word \(c.completionWord)")
        #expect(dst.bytes(at: 1024, count: 512) == src.bytes(at: 1024, count: 512))
        try c.reset()
        try c.reset()
        #expect(c.state == .allocated && c.fault == nil)
        // Only the one interrupt asked for was raised.
        #expect(h.target.interruptsRaised(channel: c.index) - raised == 1,
                "\(h.target.interruptsRaised(channel: c.index) - raised) interrupts for one asked for")
        #expect(c.interruptGeneration == g)
    }

    @Test("a chain whose descriptors are not one after the other: those after a jump are conformed too, and Resume runs it to its tail",
          arguments: TargetFactory.all)
    func scatteredChain(_ factory: TargetFactory) throws {
        let h = try Harness(factory)
        defer { h.close() }
        let c = try h.channel()
        let pool = try DescriptorPool(memory: h.memory, count: 8)
        let src = try h.memory.allocate(length: 4096), dst = try h.memory.allocate(length: 4096)
        src.fillPattern(47)
        let copied = { (i: Int) in dst.bytes(at: i * 256, count: 256) == src.bytes(at: i * 256, count: 256) }
        // 0 → 1 → 4 → 5 → 2: two jumps; after the first, a zero-length copy and a NULL of size 0.
        for i in [0, 1, 2] { setCopy(pool, i, from: src.iova(at: i * 256), to: dst.iova(at: i * 256), length: 256) }
        setCopy(pool, 4, from: src.iova(at: 1024), to: dst.iova(at: 1024), length: 0)
        setNull(pool, 5)
        for (from, to) in [(0, 1), (1, 4), (4, 5), (5, 2)] { pool[from].pointee.next = pool.iova(at: to) }
        pool[2].pointee.next = c.countedChains ? pool.iova(at: 6) : 0
        // Suspended after descriptor 0: Resume counts (2.0) from descriptor 1 to the chain's tail.
        h.target.hold(channel: c.index, true)
        try c.start(DescriptorChain(address: pool[0], iova: pool.iova(at: 0), count: 5))
        #expect(waitUntil { h.target.inFlight(channel: c.index) == pool.iova(at: 0) })
        let suspended = Background { () throws(DriverError) in try c.suspend() }
        #expect(waitUntil { h.target.suspendRequested(channel: c.index) })
        h.target.hold(channel: c.index, false)
        #expect(try suspended.value() == pool.iova(at: 0))
        try c.resume()
        #expect(waitUntil { c.completionWord == CompletionWord(descriptor: pool.iova(at: 2), status: .idle) },
                "the chain completes (word \(c.completionWord), fault \(c.fault.map(\.description) ?? "none"))")
        #expect(c.fault == nil, "the zero-length and NULL descriptors after the jump were conformed")
        for i in [0, 1, 2] { #expect(copied(i), "descriptor \(i)") }
        #expect(dst.bytes(at: 1024, count: 64) == [UInt8](repeating: 0, count: 64))

        // The next Append follows the tail (descriptor 2); nothing before it runs again.
        memset(dst.base, 0, 1024)
        for i in [6, 7] { setCopy(pool, i, from: src.iova(at: i * 256), to: dst.iova(at: i * 256), length: 256) }
        let b = link(pool, 6..<8, counted: c.countedChains)
        if !c.countedChains { DescriptorPool.publishNext(of: pool[2], b.iova) }
        try c.append(b)
        #expect(waitUntil { c.completionWord == CompletionWord(descriptor: pool.iova(at: 7), status: .idle) },
                "the appended chain completes (word \(c.completionWord), fault \(c.fault.map(\.description) ?? "none"))")
        #expect(c.fault == nil)
        for i in [6, 7] { #expect(copied(i), "descriptor \(i)") }
        #expect(dst.bytes(at: 0, count: 1024).allSatisfy { $0 == 0 }, "no descriptor of the first chain ran again")
    }

    @Test("mix and match (the VFIO selftest's loop): after a failed copy is reported, one interrupt asked for is counted once",
          arguments: TargetFactory.all)
    func mixAndMatch(_ factory: TargetFactory) async throws {
        let h = try Harness(factory)
        defer { h.close() }
        let c = try h.channel()
        let pool = try DescriptorPool(memory: h.memory, count: 4)
        let src = try h.memory.allocate(length: 4096), dst = try h.memory.allocate(length: 4096)
        src.fillPattern(47)
        for round in 0..<10 {
            // A good copy (no interrupt asked for).
            dst.zero()
            setCopy(pool, 0, from: src.iova, to: dst.iova, length: 512)
            try c.start(link(pool, 0..<1, counted: c.countedChains))
            #expect(waitUntil { c.completionWord == CompletionWord(descriptor: pool.iova(at: 0), status: .idle) },
                    "round \(round): good copy, word \(c.completionWord)")
            #expect(dst.bytes(at: 0, count: 512) == src.bytes(at: 0, count: 512))
            // A bad copy: it fails, and the client sees it by polling, as the selftest does
            // (the completion word reads Halted, the channel names the fault).
            setCopy(pool, 1, from: Self.unmapped, to: dst.iova(at: 1024), length: 512)
            try c.start(link(pool, 1..<2, counted: c.countedChains))
            #expect(waitUntil { c.completionWord.status == .halted && c.fault != nil },
                    "round \(round): the failure is reported (word \(c.completionWord))")
            // The selftest driver resets a channel it finds halted; so does this client.
            try c.reset()
            // send_msi: one copy that asks for an interrupt.
            let raised = h.target.interruptsRaised(channel: c.index)
            let g = c.interruptGeneration
            setCopy(pool, 2, from: src.iova, to: dst.iova(at: 2048), length: 8, flags: [.statusUpdateOnCompletion, .interruptOnCompletion])
            try c.start(link(pool, 2..<3, counted: c.countedChains))
            let after = try await c.waitForInterrupt(after: g, timeout: .seconds(5))
            #expect(waitUntil { c.completionWord == CompletionWord(descriptor: pool.iova(at: 2), status: .idle) })
            #expect(waitUntil { c.lastInterruptDescriptor == pool.iova(at: 2) })
            #expect(c.interruptGeneration == g + 1, "round \(round): \(c.interruptGeneration - g) DPCs in all")
            #expect(h.target.interruptsRaised(channel: c.index) - raised == 1,
                    "round \(round): \(h.target.interruptsRaised(channel: c.index) - raised) interrupts for one asked for")
            #expect(after == g + 1, "round \(round): \(after - g) DPCs for one interrupt asked for")
            #expect(c.fault == nil)
        }
    }

    @Test("the completion word names only completed STATUS descriptors: Active while work is outstanding, unchanged by descriptors without STATUS",
          arguments: TargetFactory.all)
    func wordFollowsStatusDescriptors(_ factory: TargetFactory) async throws {
        let h = try Harness(factory)
        defer { h.close() }
        let c = try h.channel()
        let pool = try DescriptorPool(memory: h.memory, count: 8)
        let src = try h.memory.allocate(length: 8192), dst = try h.memory.allocate(length: 8192)
        src.fillPattern(48)
        // A chain without STATUS: the word stays as Start left it (Armed), also once it ran.
        for i in 0..<2 { setCopy(pool, i, from: src.iova(at: i * 512), to: dst.iova(at: i * 512), length: 512, flags: []) }
        setNull(pool, 2, flags: [.interruptOnCompletion])
        var g = c.interruptGeneration
        try c.start(link(pool, 0..<3, counted: c.countedChains))
        g = try await c.waitForInterrupt(after: g, timeout: .seconds(5))
        #expect(c.lastInterruptDescriptor == pool.iova(at: 2))
        #expect(c.completionWord.status == .armed, "no STATUS descriptor ran: word \(c.completionWord)")
        #expect(dst.bytes(at: 0, count: 1024) == src.bytes(at: 0, count: 1024))

        // d0 STATUS, d1 INTERRUPT; then d2 STATUS|INTERRUPT, d3 none, while the engine is held.
        dst.zero()
        let flags: [ControlFlags] = [[.statusUpdateOnCompletion], [.interruptOnCompletion],
                                     [.statusUpdateOnCompletion, .interruptOnCompletion], []]
        for i in 0..<4 { setCopy(pool, i, from: src.iova(at: i * 1024), to: dst.iova(at: i * 1024), length: 1024, flags: flags[i]) }
        try c.start(link(pool, 0..<2, counted: c.countedChains))
        g = try await c.waitForInterrupt(after: g, timeout: .seconds(5))
        #expect(waitUntil { c.lastInterruptDescriptor == pool.iova(at: 1) })
        // d1 carried no STATUS: the word still names d0, the last STATUS descriptor completed,
        // Active (d1 was outstanding when d0 completed).
        #expect(c.completionWord == CompletionWord(descriptor: pool.iova(at: 0), status: .active),
                "after d1: word \(c.completionWord)")
        // The engine has left d1 (a 1.x Append on CB >= 2 waits for an engine still on the
        // old tail, which a held engine never leaves).
        #expect(waitUntil { h.target.inFlight(channel: c.index) == 0 })
        h.target.hold(channel: c.index, true)
        let second = link(pool, 2..<4, counted: c.countedChains)
        if !c.countedChains { pool.publishNext(of: 1, second.iova) }
        try c.append(second)
        #expect(c.completionWord == CompletionWord(descriptor: pool.iova(at: 0), status: .active),
                "d2 has not run: word \(c.completionWord)")
        h.target.hold(channel: c.index, false)
        _ = try await c.waitForInterrupt(after: g, timeout: .seconds(5))
        // d2 names itself Active (d3 was outstanding); d3, without STATUS, leaves it so.
        #expect(waitUntil { c.completionWord == CompletionWord(descriptor: pool.iova(at: 2), status: .active) },
                "word \(c.completionWord)")
        #expect(dst.bytes(at: 2048, count: 1024) == src.bytes(at: 2048, count: 1024), "the word named d2 before its data was written")
        #expect(c.fault == nil)
    }

    @Test("allocation with an empty CPU set, or only CPUs the process may not use, is refused naming the allowed CPUs",
          arguments: TargetFactory.all)
    func emptyAffinity(_ factory: TargetFactory) throws {
        let h = try Harness(factory)
        defer { h.close() }
        let allowed = CPUSet.allowed
        for set in [CPUSet(), CPUSet([100_000]), CPUSet([65_535, 70_000])] {
            do { _ = try h.channel(affinity: set); Issue.record("allocated with CPU set \(set)") } catch {
                #expect(error.code == .invalidArgument)
                #expect(error.message.contains(allowed.description), "the message names the CPUs allowed: \(error.message)")
            }
        }
        #expect(h.registry.info(h.handle)?.allocatedChannels == 0)
        let c = try h.channel(affinity: CPUSet(Array(allowed) + [100_000]))
        #expect(allowed.contains(c.cpu))
    }

    @Test("a NetDMA 1.0 or 1.1 provider declaring characteristic flags is refused", arguments: TargetFactory.all)
    func flagsBelow20(_ factory: TargetFactory) throws {
        let target = try factory.make()
        defer { target.shutdown() }
        let registry = NetDMARegistry()
        let c = target.provider.characteristics
        #expect(c.flags.rawValue & ProviderFlags.netDMAMask == 0 || c.version >= .v2_0,
                "the target itself declares flags 0x\(String(c.flags.rawValue, radix: 16)) at \(c.version)")
        for raw: UInt32 in [0x1, 0x2, 0x4, 0x8000] {
            let declared = FlagsDeclaringProvider(target.provider, adding: ProviderFlags(rawValue: raw))
            do {
                let h = try registry.register(declared)
                #expect(c.version >= .v2_0 && raw <= 0x2, "\(c.version) registered with flags 0x\(String(raw, radix: 16))")
                try registry.deregister(h)
            } catch {
                #expect(c.version < .v2_0 || raw > 0x2, "\(c.version) refused flags 0x\(String(raw, radix: 16)): \(error)")
                #expect(error.code == .invalidArgument)
            }
        }
        #expect(registry.providers.isEmpty)
    }
}

/// A provider that declares `adding` on top of another provider's characteristics (and is
/// that provider otherwise): to register a target with flags it does not declare itself.
private final class FlagsDeclaringProvider: NetDMAProvider, @unchecked Sendable {
    let base: any NetDMAProvider
    let characteristics: ProviderCharacteristics
    init(_ base: any NetDMAProvider, adding flags: ProviderFlags) {
        self.base = base
        var c = base.characteristics
        c.flags.formUnion(flags)
        characteristics = c
    }
    var dmaMemory: DMAMemory { base.dmaMemory }
    func setChannelCPUAffinity(_ table: [ChannelCPUAffinity]) throws(DriverError) { try base.setChannelCPUAffinity(table) }
    func allocateChannel(_ parameters: ChannelParameters) throws(DriverError) -> (channel: any ProviderChannel, cpu: Int) {
        try base.allocateChannel(parameters)
    }
}
