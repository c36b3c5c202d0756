import NetDMA
import Platform
import Synchronization
import Testing

/// The rules of netdma.md §5–§11 for one channel, each stated as a test, run against every
/// target (the fixture now, the IOAT/DSA providers on their models later).
@Suite("NetDMA channel conformance (netdma.md §5–§11)", .serialized)
struct ChannelConformanceTests {
    /// Every call, so the state machine can be checked exhaustively.
    enum Call: String, CaseIterable {
        case start = "Start", append = "Append", suspend = "Suspend", resume = "Resume"
        case abort = "Abort", reset = "Reset", free = "Free"
    }

    /// Runs `call`; nil when it succeeded, the error otherwise.
    static func attempt(_ call: Call, _ c: NetDMAChannel, _ chain: DescriptorChain) -> DriverError? {
        do {
            switch call {
            case .start: try c.start(chain)
            case .append: try c.append(chain)
            case .suspend: _ = try c.suspend()
            case .resume: try c.resume()
            case .abort: try c.abort()
            case .reset: try c.reset()
            case .free: try c.free()
            }
            return nil
        } catch { return error }
    }

    static func expectRefused(_ calls: [Call], _ c: NetDMAChannel, _ chain: DescriptorChain, state: ChannelState,
                              sourceLocation: SourceLocation = #_sourceLocation) {
        for call in calls {
            let e = attempt(call, c, chain)
            #expect(e?.code == .invalidState, "\(call.rawValue) in \(state) should be refused", sourceLocation: sourceLocation)
            #expect(e?.message.contains(call.rawValue) == true && e?.message.contains(state.description) == true,
                    "message should name \(call.rawValue) and \(state): \(e?.message ?? "none")", sourceLocation: sourceLocation)
            #expect(c.state == state, "a refused \(call.rawValue) must not change the state", sourceLocation: sourceLocation)
        }
    }

    @Test("every call illegal in a state is refused with .invalidState naming call and state", arguments: TargetFactory.all)
    func stateMachine(_ factory: TargetFactory) throws {
        let h = try Harness(factory)
        defer { h.close() }
        let c = try h.channel()
        let pool = try DescriptorPool(memory: h.memory, count: 8)
        setNull(pool, 0)
        let chain = link(pool, 0..<1, counted: c.countedChains)

        // Allocated: Start, Free, Reset only.
        #expect(c.state == .allocated)
        #expect(c.completionWord.status == .armed)
        Self.expectRefused([.append, .suspend, .resume, .abort], c, chain, state: .allocated)

        // Running: everything but Resume.
        h.target.hold(channel: c.index, true)
        try c.start(chain)
        #expect(c.state == .running)
        Self.expectRefused([.resume], c, chain, state: .running)

        // Suspended: only Resume.
        let suspended = Background { () throws(DriverError) in try c.suspend() }
        #expect(waitUntil { h.target.suspendRequested(channel: c.index) })
        h.target.hold(channel: c.index, false)
        _ = try suspended.value()
        #expect(c.state == .suspended)
        #expect(c.completionWord.status == .suspend)
        Self.expectRefused([.start, .append, .suspend, .abort, .reset, .free], c, chain, state: .suspended)
        try c.resume()
        #expect(c.state == .running)

        // Halted (Abort): Start, Reset, Free only.
        try c.abort()
        #expect(c.state == .halted)
        Self.expectRefused([.append, .suspend, .resume, .abort], c, chain, state: .halted)
        try c.reset()
        #expect(c.state == .allocated)
        Self.expectRefused([.append, .suspend, .resume, .abort], c, chain, state: .allocated)

        // Freed: nothing.
        try c.free()
        Self.expectRefused(Call.allCases, c, chain, state: .freed)
    }

    @Test("Start while busy: the current descriptor completes, the rest of the old chain is dropped", arguments: TargetFactory.all)
    func startWhileBusy(_ factory: TargetFactory) throws {
        let h = try Harness(factory)
        defer { h.close() }
        let c = try h.channel()
        let pool = try DescriptorPool(memory: h.memory, count: 8)
        let src = try h.memory.allocate(length: 4096), dst = try h.memory.allocate(length: 4096)
        src.fillPattern(1)
        for i in 0..<3 { setCopy(pool, i, from: src.iova(at: i * 256), to: dst.iova(at: i * 256), length: 256) }
        for i in 4..<6 { setCopy(pool, i, from: src.iova(at: i * 256), to: dst.iova(at: i * 256), length: 256) }
        let old = link(pool, 0..<3, counted: c.countedChains)
        let new = link(pool, 4..<6, counted: c.countedChains)

        h.target.hold(channel: c.index, true)
        try c.start(old)
        #expect(waitUntil { h.target.inFlight(channel: c.index) == pool.iova(at: 0) })
        try c.start(new)  // re-point while busy
        h.target.hold(channel: c.index, false)
        #expect(waitUntil { c.completionWord == CompletionWord(descriptor: pool.iova(at: 5), status: .idle) })
        #expect(dst.bytes(at: 0, count: 256) == src.bytes(at: 0, count: 256), "the current descriptor completes")
        #expect(dst.bytes(at: 256, count: 512) == [UInt8](repeating: 0, count: 512), "the rest of the old chain is dropped")
        #expect(dst.bytes(at: 1024, count: 512) == src.bytes(at: 1024, count: 512), "the new chain runs")
    }

    @Test("Append after Abort is refused until Start; Abort writes Halted", arguments: TargetFactory.all)
    func appendAfterAbort(_ factory: TargetFactory) throws {
        let h = try Harness(factory)
        defer { h.close() }
        let c = try h.channel()
        let pool = try DescriptorPool(memory: h.memory, count: 8)
        let src = try h.memory.allocate(length: 4096), dst = try h.memory.allocate(length: 4096)
        src.fillPattern(2)
        for i in 0..<4 { setCopy(pool, i, from: src.iova(at: i * 256), to: dst.iova(at: i * 256), length: 256) }
        h.target.hold(channel: c.index, true)
        try c.start(link(pool, 0..<3, counted: c.countedChains))
        #expect(waitUntil { h.target.inFlight(channel: c.index) != 0 })
        try c.abort()
        h.target.hold(channel: c.index, false)
        #expect(c.state == .halted)
        #expect(c.completionWord.status == .halted)
        let more = link(pool, 3..<4, counted: c.countedChains)
        do { try c.append(more); Issue.record("Append after Abort accepted") } catch {
            #expect(error.code == .invalidState)
            #expect(error.message.contains("Append") && error.message.contains("halted"))
        }
        #expect(waitUntil { h.target.inFlight(channel: c.index) == 0 })
        #expect(dst.bytes(at: 256, count: 512) == [UInt8](repeating: 0, count: 512), "abandoned descriptors never run")
        try c.start(more)
        #expect(waitUntil { c.completionWord == CompletionWord(descriptor: pool.iova(at: 3), status: .idle) })
        #expect(dst.bytes(at: 768, count: 256) == src.bytes(at: 768, count: 256))
    }

    @Test("Suspend returns the last completed descriptor; Resume continues after chain edits", arguments: TargetFactory.all)
    func suspendResume(_ factory: TargetFactory) throws {
        let h = try Harness(factory)
        defer { h.close() }
        let c = try h.channel()
        let pool = try DescriptorPool(memory: h.memory, count: 8)
        let src = try h.memory.allocate(length: 4096), dst = try h.memory.allocate(length: 8192)
        src.fillPattern(3)
        for i in 0..<3 { setCopy(pool, i, from: src.iova(at: i * 256), to: dst.iova(at: i * 256), length: 256) }
        h.target.hold(channel: c.index, true)
        try c.start(link(pool, 0..<3, counted: c.countedChains))
        #expect(waitUntil { h.target.inFlight(channel: c.index) == pool.iova(at: 0) })
        let suspended = Background { () throws(DriverError) in try c.suspend() }
        #expect(waitUntil { h.target.suspendRequested(channel: c.index) })
        h.target.hold(channel: c.index, false)
        let last = try suspended.value()
        #expect(last == pool.iova(at: 0), "Suspend finishes the current descriptor and returns it")
        #expect(c.completionWord.status == .suspend)
        #expect(dst.bytes(at: 256, count: 256) == [UInt8](repeating: 0, count: 256), "nothing after it ran")
        // Edit the chain while suspended: descriptor 1 now writes elsewhere.
        pool[1].pointee.destination = dst.iova(at: 4096)
        try c.resume()
        #expect(waitUntil { c.completionWord == CompletionWord(descriptor: pool.iova(at: 2), status: .idle) })
        #expect(dst.bytes(at: 4096, count: 256) == src.bytes(at: 256, count: 256), "the edit was honoured")
        #expect(dst.bytes(at: 256, count: 256) == [UInt8](repeating: 0, count: 256))
        #expect(dst.bytes(at: 512, count: 256) == src.bytes(at: 512, count: 256))
    }

    @Test("Reset: Halted, back to allocated, old descriptors never touched, Start works", arguments: TargetFactory.all)
    func reset(_ factory: TargetFactory) throws {
        let h = try Harness(factory)
        defer { h.close() }
        let c = try h.channel()
        let pool = try DescriptorPool(memory: h.memory, count: 8)
        let src = try h.memory.allocate(length: 4096), dst = try h.memory.allocate(length: 4096)
        src.fillPattern(4)
        for i in 0..<4 { setCopy(pool, i, from: src.iova(at: i * 256), to: dst.iova(at: i * 256), length: 256) }
        h.target.hold(channel: c.index, true)
        try c.start(link(pool, 0..<3, counted: c.countedChains))
        #expect(waitUntil { h.target.inFlight(channel: c.index) != 0 })
        try c.reset()
        h.target.hold(channel: c.index, false)
        #expect(c.state == .allocated)
        #expect(c.completionWord.status == .halted)
        do { try c.append(link(pool, 3..<4, counted: c.countedChains)); Issue.record("Append after Reset") } catch {
            #expect(error.code == .invalidState)
        }
        #expect(waitUntil { h.target.inFlight(channel: c.index) == 0 })
        #expect(dst.bytes(at: 256, count: 512) == [UInt8](repeating: 0, count: 512))
        try c.start(link(pool, 3..<4, counted: c.countedChains))
        #expect(waitUntil { c.completionWord == CompletionWord(descriptor: pool.iova(at: 3), status: .idle) })
        #expect(dst.bytes(at: 256, count: 512) == [UInt8](repeating: 0, count: 512), "Reset forgot the old chain")
    }

    @Test("NULL transfers complete, write status and interrupt, and prove earlier descriptors done", arguments: TargetFactory.all)
    func nullTransfer(_ factory: TargetFactory) async throws {
        let h = try Harness(factory)
        defer { h.close() }
        let c = try h.channel()
        let pool = try DescriptorPool(memory: h.memory, count: 8)
        let src = try h.memory.allocate(length: 4096), dst = try h.memory.allocate(length: 4096)
        src.fillPattern(5)
        setCopy(pool, 0, from: src.iova, to: dst.iova, length: 1024, flags: [])
        setCopy(pool, 1, from: src.iova(at: 1024), to: dst.iova(at: 1024), length: 1024, flags: [])
        setNull(pool, 2, flags: [.statusUpdateOnCompletion, .interruptOnCompletion])
        let g = c.interruptGeneration
        try c.start(link(pool, 0..<3, counted: c.countedChains))
        _ = try await c.waitForInterrupt(after: g, timeout: .seconds(5))
        #expect(c.lastInterruptDescriptor == pool.iova(at: 2))
        #expect(c.completionWord == CompletionWord(descriptor: pool.iova(at: 2), status: .idle))
        #expect(dst.bytes(at: 0, count: 2048) == src.bytes(at: 0, count: 2048))
        #expect(h.target.rearms(channel: c.index) >= 1, "the DPC re-arms the interrupt")
    }

    enum CompletionMode: String, CaseIterable, Sendable {
        case statusOnly, interruptOnly, both, neither
        var flags: ControlFlags {
            switch self {
            case .statusOnly: [.statusUpdateOnCompletion]
            case .interruptOnly: [.interruptOnCompletion]
            case .both: [.statusUpdateOnCompletion, .interruptOnCompletion]
            case .neither: []
            }
        }
    }

    @Test("the four completion modes: status only, interrupt only, both, neither",
          arguments: TargetFactory.all, CompletionMode.allCases)
    func completionModes(_ factory: TargetFactory, _ mode: CompletionMode) async throws {
        let h = try Harness(factory)
        defer { h.close() }
        let c = try h.channel()
        let pool = try DescriptorPool(memory: h.memory, count: 4)
        let src = try h.memory.allocate(length: 4096), dst = try h.memory.allocate(length: 4096)
        src.fillPattern(6)
        setCopy(pool, 0, from: src.iova, to: dst.iova, length: 4096, flags: mode.flags)
        let g = c.interruptGeneration
        try c.start(link(pool, 0..<1, counted: c.countedChains))
        if mode.flags.contains(.interruptOnCompletion) {
            _ = try await c.waitForInterrupt(after: g, timeout: .seconds(5))
            #expect(c.lastInterruptDescriptor == pool.iova(at: 0))
        }
        #expect(waitUntil { dst.bytes(at: 0, count: 4096) == src.bytes(at: 0, count: 4096) })
        #expect(waitUntil { h.target.inFlight(channel: c.index) == 0 })
        if mode.flags.contains(.statusUpdateOnCompletion) {
            #expect(waitUntil { c.completionWord == CompletionWord(descriptor: pool.iova(at: 0), status: .idle) })
        } else {
            #expect(c.completionWord.status == .armed, "without STATUS_UPDATE the word is untouched")
        }
        if !mode.flags.contains(.interruptOnCompletion) {
            #expect(h.target.interruptsRaised(channel: c.index) == 0)
            #expect(c.interruptGeneration == g)
        }
    }

    @Test("CPU affinity: the chosen CPU is in the set, reported, and the DPC runs there", arguments: TargetFactory.all)
    func cpuAffinity(_ factory: TargetFactory) async throws {
        let h = try Harness(factory)
        defer { h.close() }
        let allowed = Array(CPUSet.allowed)
        let want = try #require(allowed.last)
        let c = try h.channel(affinity: [want], priority: 3)
        #expect(c.cpu == want)
        #expect(c.priority == 3)
        let dpcCPU = Mutex<[Int]>([])
        c.setCompletionHandler { _ in dpcCPU.withLock { $0.append(CPUAffinity.currentCPU) } }
        let pool = try DescriptorPool(memory: h.memory, count: 2)
        setNull(pool, 0, flags: [.interruptOnCompletion])
        let g = c.interruptGeneration
        try c.start(link(pool, 0..<1, counted: c.countedChains))
        _ = try await c.waitForInterrupt(after: g, timeout: .seconds(5))
        #expect(waitUntil { !dpcCPU.withLock { $0 }.isEmpty })
        #expect(dpcCPU.withLock { $0 } == [want])
        // A CPU set with no usable CPU is refused.
        do { _ = try h.channel(affinity: [100_000]); Issue.record("accepted an unusable CPU set") } catch {
            #expect(error.code == .invalidArgument)
        }
    }

    @Test("blockUntilInterrupt: the DPC ends the wait, spinning or asleep; no interrupt times out; Free ends it",
          arguments: TargetFactory.all)
    func blockingWait(_ factory: TargetFactory) throws {
        let h = try Harness(factory)
        defer { h.close() }
        let c = try h.channel()
        let pool = try DescriptorPool(memory: h.memory, count: 4)
        // Nothing submitted: the spin, then the sleep, end in .timeout.
        do {
            _ = try c.blockUntilInterrupt(after: c.interruptGeneration, timeout: .milliseconds(20), spin: .milliseconds(5))
            Issue.record("a wait without an interrupt returned")
        } catch {
            #expect(error.code == .timeout)
        }
        // A waiter that sleeps at once (the DPC must wake it), and one that spins first.
        for (i, spin) in [Duration.zero, .milliseconds(200)].enumerated() {
            setNull(pool, i, flags: [.statusUpdateOnCompletion, .interruptOnCompletion])
            let g = c.interruptGeneration
            let waiter = Background { () throws(DriverError) -> UInt64 in
                try c.blockUntilInterrupt(after: g, timeout: .seconds(5), spin: spin)
            }
            h.target.hold(channel: c.index, true)
            try c.start(link(pool, i..<(i + 1), counted: c.countedChains))
            #expect(waitUntil { h.target.inFlight(channel: c.index) != 0 })
            h.target.hold(channel: c.index, false)
            let after = try waiter.value()
            #expect(after > g)
            #expect(c.lastInterruptDescriptor == pool.iova(at: i))
        }
        // Free wakes a waiter, which reports it.
        let waiter = Background { () throws(DriverError) -> UInt64 in
            try c.blockUntilInterrupt(after: c.interruptGeneration, timeout: .seconds(5), spin: .zero)
        }
        try c.free()
        do {
            _ = try waiter.value()
            Issue.record("a wait on a freed channel returned")
        } catch {
            #expect(error.code == .invalidState && error.message.contains("freed"))
        }
    }

    @Test("1.x NULL-terminated chains vs 2.0 counted chains: Append continues the chain", arguments: TargetFactory.all)
    func chainFormats(_ factory: TargetFactory) throws {
        let h = try Harness(factory)
        defer { h.close() }
        let c = try h.channel()
        #expect(c.countedChains == (factory.version >= .v2_0))
        let pool = try DescriptorPool(memory: h.memory, count: 8)
        let src = try h.memory.allocate(length: 4096), dst = try h.memory.allocate(length: 4096)
        src.fillPattern(7)
        for i in 0..<6 { setCopy(pool, i, from: src.iova(at: i * 512), to: dst.iova(at: i * 512), length: 512) }
        try c.start(link(pool, 0..<2, counted: c.countedChains))
        #expect(waitUntil { c.completionWord == CompletionWord(descriptor: pool.iova(at: 1), status: .idle) })
        if c.countedChains {
            #expect(pool[1].pointee.next == pool.iova(at: 2), "2.0: the tail already points at the next chain")
        } else {
            #expect(pool[1].pointee.next == 0, "1.x: the chain ends in NULL")
        }
        let second = link(pool, 2..<6, counted: c.countedChains)
        if !c.countedChains { pool.publishNext(of: 1, second.iova) }  // 1.x: patch the old tail first
        try c.append(second)
        #expect(waitUntil { c.completionWord == CompletionWord(descriptor: pool.iova(at: 5), status: .idle) })
        #expect(dst.bytes(at: 0, count: 3072) == src.bytes(at: 0, count: 3072))
    }

    @Test("PowerDown drains and refuses work; PowerUp re-Starts with a NULL descriptor", arguments: TargetFactory.powerEvents)
    func power(_ factory: TargetFactory) throws {
        let h = try Harness(factory)
        defer { h.close() }
        let seen = Mutex<[NetDMANotification.Code]>([])
        let client = h.registry.addClient { n in seen.withLock { $0.append(n.code) } }
        defer { h.registry.removeClient(client) }
        let c = try h.channel()
        let pool = try DescriptorPool(memory: h.memory, count: 8)
        let src = try h.memory.allocate(length: 1 << 20), dst = try h.memory.allocate(length: 1 << 20)
        src.fillPattern(8)
        for i in 0..<4 { setCopy(pool, i, from: src.iova(at: i << 18), to: dst.iova(at: i << 18), length: 1 << 18) }
        try c.start(link(pool, 0..<4, counted: c.countedChains))
        try h.registry.notify(h.handle, event: .powerDown)
        #expect(c.completionWord == CompletionWord(descriptor: pool.iova(at: 3), status: .idle), "PowerDown returns drained")
        #expect(dst.bytes(at: 0, count: 1 << 20) == src.bytes(at: 0, count: 1 << 20))
        #expect(h.registry.info(h.handle)?.state == .poweredDown)
        for i in 4..<6 { setCopy(pool, i, from: src.iova(at: (i - 4) * 4096), to: dst.iova(at: (i - 4) * 4096), length: 64) }
        let next = link(pool, 4..<6, counted: c.countedChains)
        do { try c.append(next); Issue.record("Append while powered down") } catch {
            #expect(error.code == .invalidState)
            #expect(error.message.contains("powered down"))
        }
        do { _ = try h.channel(); Issue.record("allocation while powered down") } catch { #expect(error.code == .invalidState) }
        let startsBefore = h.target.startedFlags(channel: c.index).count
        try h.registry.notify(h.handle, event: .powerUp)
        let starts = h.target.startedFlags(channel: c.index)
        #expect(starts.count == startsBefore + 1)
        #expect(starts.last?.contains(.nullTransfer) == true, "PowerUp re-Starts with a NULL descriptor")
        #expect(seen.withLock { $0 }.suffix(2) == [.providerPowerDown, .providerPowerUp])
        // The channel continues where it was: the next Append runs.
        dst.zero()
        // 2.0: descriptor 4 already follows the old tail; 1.x: link the old tail as usual.
        if !c.countedChains { pool.publishNext(of: 3, next.iova) }
        try c.append(next)
        #expect(waitUntil { c.completionWord == CompletionWord(descriptor: pool.iova(at: 5), status: .idle) })
        #expect(dst.bytes(at: 0, count: 64) == src.bytes(at: 0, count: 64))
        #expect(dst.bytes(at: 4096, count: 64) == src.bytes(at: 4096, count: 64))
    }

    @Test("NetDMA 1.0: no power notifications; lost context is re-seeded with a NULL Start on Append")
    func power10() throws {
        let h = try Harness(.primary(.v1_0))
        defer { h.close() }
        let c = try h.channel()
        do { try h.registry.notify(h.handle, event: .powerDown); Issue.record("1.0 got PowerDown") } catch {
            #expect(error.code == .unsupported)
        }
        let pool = try DescriptorPool(memory: h.memory, count: 8)
        let src = try h.memory.allocate(length: 4096), dst = try h.memory.allocate(length: 4096)
        src.fillPattern(9)
        for i in 0..<4 { setCopy(pool, i, from: src.iova(at: i * 512), to: dst.iova(at: i * 512), length: 512) }
        try c.start(link(pool, 0..<2, counted: false))
        #expect(waitUntil { c.completionWord == CompletionWord(descriptor: pool.iova(at: 1), status: .idle) })
        h.target.loseContext(channel: c.index)  // the device went through D3 and back
        let second = link(pool, 2..<4, counted: false)
        pool.publishNext(of: 1, second.iova)
        try c.append(second)
        #expect(h.target.startedFlags(channel: c.index).last?.contains(.nullTransfer) == true)
        #expect(waitUntil { c.completionWord == CompletionWord(descriptor: pool.iova(at: 3), status: .idle) })
        #expect(dst.bytes(at: 1024, count: 1024) == src.bytes(at: 1024, count: 1024))
    }

    @Test("a device error halts the channel; the DPC reports the fault; Start recovers", arguments: TargetFactory.all)
    func deviceError(_ factory: TargetFactory) async throws {
        let h = try Harness(factory)
        defer { h.close() }
        let c = try h.channel()
        let faults = Mutex<[ChannelFault]>([])
        c.setCompletionHandler { comp in if let f = comp.fault { faults.withLock { $0.append(f) } } }
        let pool = try DescriptorPool(memory: h.memory, count: 8)
        let src = try h.memory.allocate(length: 4096), dst = try h.memory.allocate(length: 4096)
        src.fillPattern(10)
        setCopy(pool, 0, from: src.iova, to: dst.iova, length: 256)
        setCopy(pool, 1, from: 0xF0_0000_0000, to: dst.iova(at: 256), length: 256)  // unmapped source
        setCopy(pool, 2, from: src.iova(at: 512), to: dst.iova(at: 512), length: 256)
        let g = c.interruptGeneration
        try c.start(link(pool, 0..<3, counted: c.countedChains))
        _ = try await c.waitForInterrupt(after: g, timeout: .seconds(5))
        #expect(c.state == .halted)
        #expect(c.completionWord == CompletionWord(descriptor: pool.iova(at: 0), status: .halted))
        #expect(c.fault?.descriptor == pool.iova(at: 1))
        #expect(waitUntil { faults.withLock { $0.count } == 1 })
        do { try c.append(link(pool, 3..<4, counted: c.countedChains)); Issue.record("Append on a halted channel") } catch {
            #expect(error.code == .invalidState)
        }
        try c.start(pool.chain(from: 2, count: 1))
        #expect(waitUntil { c.completionWord == CompletionWord(descriptor: pool.iova(at: 2), status: .idle) })
        #expect(c.fault == nil)
        #expect(dst.bytes(at: 512, count: 256) == src.bytes(at: 512, count: 256))
    }
}

