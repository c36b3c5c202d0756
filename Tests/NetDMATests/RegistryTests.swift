@testable import NetDMA
import Platform
import Synchronization
import Testing

#if canImport(Glibc)
import Glibc
#endif

@Suite("NetDMA registry (netdma.md §2, §4.4–4.5, §6, §11.1)", .serialized)
struct RegistryTests {
    @Test("version is 2.1, encoded major << 16 | minor")
    func version() {
        let r = NetDMARegistry()
        #expect(r.version == NetDMAVersion(2, 1))
        #expect(r.encodedVersion == 0x0002_0001)
        #expect(NetDMAVersion(encoded: r.encodedVersion) == .interface)
    }

    @Test("providers above the interface version or below 1.0 are refused")
    func versionRules() throws {
        let r = NetDMARegistry()
        for v in [NetDMAVersion(2, 2), NetDMAVersion(3, 0), NetDMAVersion(0, 9)] {
            let p = try FixtureMemcpyProvider(version: v)
            defer { p.shutdown() }
            #expect(throws: DriverError.self) { try r.register(p) }
            do { _ = try r.register(p) } catch { #expect(error.code == .unsupported) }
        }
        for v in [NetDMAVersion.v1_0, .v1_1, .v2_0, .v2_1] {
            let p = try FixtureMemcpyProvider(version: v)
            defer { p.shutdown() }
            let h = try r.register(p)
            try r.deregister(h)
        }
    }

    @Test("2.0 requires a friendly name; 1.x may not set 2.0 flags; zero channels refused")
    func characteristicsRules() throws {
        let r = NetDMARegistry()
        let unnamed = try FixtureMemcpyProvider(version: .v2_0, friendlyName: "")
        defer { unnamed.shutdown() }
        do { _ = try r.register(unnamed); Issue.record("registered a 2.0 provider without a name") } catch {
            #expect(error.code == .invalidArgument)
            #expect(error.message.contains("friendly name"))
        }
        let unnamed1 = try FixtureMemcpyProvider(version: .v1_1, friendlyName: "")
        defer { unnamed1.shutdown() }
        let h = try r.register(unnamed1)  // a 1.x name is optional
        try r.deregister(h)
        let dca = try FixtureMemcpyProvider(version: .v1_0, flags: [.dcaSupported])
        defer { dca.shutdown() }
        do { _ = try r.register(dca); Issue.record("1.0 provider with DCA flag registered") } catch {
            #expect(error.code == .invalidArgument)
        }
    }

    @Test("register hands the provider an affinity table spreading channels over CPUs")
    func affinityTable() throws {
        let r = NetDMARegistry()
        let p = try FixtureMemcpyProvider(channelCount: 5)
        defer { p.shutdown() }
        let h = try r.register(p)
        let table = p.affinityTable.withLock { $0 }
        let allowed = CPUSet.allowed
        #expect(table.map(\.channel) == Array(0..<5))
        #expect(table.allSatisfy { allowed.contains($0.cpu) })
        #expect(Set(table.map(\.cpu)).count == min(5, allowed.count))
        #expect(r.info(h)?.affinityTable == table)
        try r.deregister(h)
    }

    @Test("lifecycle: register, start, stop, start again, stop, deregister; wrong-order calls refused")
    func lifecycle() throws {
        let r = NetDMARegistry()
        let p = try FixtureMemcpyProvider()
        defer { p.shutdown() }
        let h = try r.register(p)
        #expect(throws: DriverError.self) { try r.register(p) }  // once per engine
        #expect(r.info(h)?.state == .registered)
        do { _ = try r.allocateChannel(provider: h); Issue.record("allocated before start") } catch {
            #expect(error.code == .invalidState)
        }
        do { try r.stop(h); Issue.record("stopped before start") } catch { #expect(error.code == .invalidState) }
        try r.start(h, attributes: p.attributes)
        #expect(r.info(h)?.state == .started)
        do { try r.start(h, attributes: p.attributes); Issue.record("started twice") } catch { #expect(error.code == .invalidState) }
        do { try r.deregister(h); Issue.record("deregistered while started") } catch {
            #expect(error.code == .invalidState)
            #expect(error.message.contains("stop"))
        }
        let c = try r.allocateChannel(provider: h)
        #expect(c.state == .allocated)
        try r.stop(h)
        #expect(c.state == .freed)
        #expect(r.info(h)?.allocatedChannels == 0)
        try r.start(h, attributes: p.attributes)  // Start/Stop may cycle
        try r.stop(h)
        try r.deregister(h)
        #expect(r.info(h) == nil)
    }

    @Test("start validates attributes: max transfer ≥ 4096, 1 ≤ channels ≤ max")
    func attributes() throws {
        let r = NetDMARegistry()
        let p = try FixtureMemcpyProvider(channelCount: 2)
        defer { p.shutdown() }
        let h = try r.register(p)
        var a = p.attributes
        a.maximumTransferSize = 4095
        do { try r.start(h, attributes: a); Issue.record("accepted 4095") } catch { #expect(error.code == .invalidArgument) }
        a = p.attributes
        a.channelCount = 3
        do { try r.start(h, attributes: a); Issue.record("accepted 3 of 2 channels") } catch { #expect(error.code == .invalidArgument) }
        a.channelCount = 0
        do { try r.start(h, attributes: a); Issue.record("accepted 0 channels") } catch { #expect(error.code == .invalidArgument) }
        a = p.attributes
        a.maximumTransferSize = 4096
        a.channelCount = 1
        try r.start(h, attributes: a)
        let c = try r.allocateChannel(provider: h)
        #expect(c.maximumTransferSize == 4096)
        do { _ = try r.allocateChannel(provider: h); Issue.record("allocated beyond channel count") } catch { #expect(error.code == .busy) }
        try c.free()
        _ = try r.allocateChannel(provider: h)
        try r.stop(h)
        try r.deregister(h)
    }

    @Test("clients are told about registration, arrival, channel arrival and removal")
    func notifications() throws {
        let r = NetDMARegistry()
        let seen = Mutex<[NetDMANotification]>([])
        let early = try FixtureMemcpyProvider()
        defer { early.shutdown() }
        let h0 = try r.register(early)
        let client = r.addClient { n in seen.withLock { $0.append(n) } }
        #expect(seen.withLock { $0 } == [NetDMANotification(code: .providerRegistered, provider: h0)])
        let p = try FixtureMemcpyProvider()
        defer { p.shutdown() }
        let h = try r.register(p)
        try r.start(h, attributes: p.attributes)
        #expect(r.findProviders().map(\.handle) == [h])
        let c = try r.allocateChannel(provider: h)
        try c.free()
        try r.stop(h)
        r.removeClient(client)
        try r.deregister(h)
        try r.deregister(h0)
        let codes = seen.withLock { $0 }.filter { $0.provider == h }.map(\.code)
        #expect(codes == [.providerRegistered, .providerArrival, .channelArrival, .providerRemoval])
    }

    @Test("stop drains, aborts a channel that does not drain, and frees every channel", arguments: TargetFactory.all)
    func stopDrainsAndFrees(_ factory: TargetFactory) throws {
        let h = try Harness(factory, drainTimeout: .milliseconds(200))
        defer { h.close() }
        let a = try h.channel(), b = try h.channel()
        let pool = try DescriptorPool(memory: h.memory, count: 4)
        let buf = try h.memory.allocate(length: 8192)
        setCopy(pool, 0, from: buf.iova, to: buf.iova(at: 4096), length: 64)
        h.target.hold(channel: b.index, true)
        try b.start(link(pool, 0..<1, counted: b.countedChains))
        #expect(waitUntil { h.target.inFlight(channel: b.index) != 0 })
        let aborted = try h.registry.stop(h.handle)
        h.target.hold(channel: b.index, false)
        #expect(aborted == [b.index])
        #expect(a.state == .freed && b.state == .freed)
        do { try a.free(); Issue.record("freed twice") } catch {
            #expect(error.code == .invalidState)
            #expect(error.message.contains("Free") && error.message.contains("freed"))
        }
    }

    @Test("one interrupt thread per DPC CPU runs while started and is joined by stop")
    func threadsShutDown() async throws {
        let h = try Harness(.fixture(.v2_0))
        defer { h.close() }
        let counter = try #require(h.registry.interruptThreads(h.handle))
        let cpus = Array(CPUSet.allowed)
        let a = try h.channel(affinity: [cpus.first!]), b = try h.channel(affinity: [cpus.last!])
        let pool = try DescriptorPool(memory: h.memory, count: 4)
        for c in [a, b] {
            setNull(pool, c.index, flags: [.interruptOnCompletion])
            let g = c.interruptGeneration
            try c.start(pool.chain(from: c.index, count: 1))
            _ = try await c.waitForInterrupt(after: g, timeout: .seconds(5))
        }
        // One interrupt thread per DPC CPU: it runs the DPCs of its CPU itself.
        #expect(counter.count.load(ordering: .acquiring) == Set([a.cpu, b.cpu]).count)
        try h.registry.stop(h.handle)
        #expect(counter.count.load(ordering: .acquiring) == 0, "stop joins every thread")
        #expect(h.registry.interruptThreads(h.handle) == nil)
    }

    @Test("the DPC runs right after the ISR on the same interrupt thread, on the channel's CPU, real-time when allowed")
    func dpcInlineOnInterruptThread() throws {
        let h = try Harness(.fixture(.v2_0))
        defer { h.close() }
        let fixture = try #require(h.target as? FixtureMemcpyProvider)
        let cpus = Array(CPUSet.allowed)
        let c = try h.channel(affinity: [cpus.last!])
        struct DPCSeen: Sendable { var thread: pthread_t; var cpu: Int; var policy: Int32 }
        let seen = Mutex<[DPCSeen]>([])
        c.setCompletionHandler { _ in
            var policy: Int32 = 0
            var param = sched_param()
            _ = pthread_getschedparam(pthread_self(), &policy, &param)
            seen.withLock { $0.append(DPCSeen(thread: pthread_self(), cpu: CPUAffinity.currentCPU, policy: policy)) }
        }
        let pool = try DescriptorPool(memory: h.memory, count: 4)
        for i in 0..<3 {
            setNull(pool, i, flags: [.interruptOnCompletion])
            let g = c.interruptGeneration
            try c.start(pool.chain(from: i, count: 1))
            _ = try c.blockUntilInterrupt(after: g, timeout: .seconds(5))
        }
        #expect(waitUntil { seen.withLock { $0.count } == 3 })
        let isr = fixture.channels[c.index].isrThreads.withLock { $0 }
        let dpc = seen.withLock { $0 }
        #expect(isr.count == 3 && dpc.count == 3)
        // No hand-off to another thread: the ISR's thread ran each DPC.
        for (a, b) in zip(isr, dpc) { #expect(pthread_equal(a, b.thread) != 0, "the DPC ran on another thread than its ISR") }
        #expect(dpc.allSatisfy { $0.cpu == c.cpu })
        // Real-time (SCHED_FIFO) when this process may set it: ask a scratch thread.
        let mayUseRealtime = Background { () throws(DriverError) -> Bool in
            var param = sched_param(sched_priority: 1)
            return pthread_setschedparam(pthread_self(), SCHED_FIFO, &param) == 0
        }
        let expected = try mayUseRealtime.value() ? SCHED_FIFO : SCHED_OTHER
        #expect(dpc.allSatisfy { $0.policy == expected })
    }

    @Test("Free is refused while descriptors are outstanding, allowed once they completed", arguments: TargetFactory.all)
    func freeOnlyWhenDrained(_ factory: TargetFactory) throws {
        let h = try Harness(factory)
        defer { h.close() }
        let c = try h.channel()
        let pool = try DescriptorPool(memory: h.memory, count: 4)
        setNull(pool, 0)
        setNull(pool, 1)
        h.target.hold(channel: c.index, true)
        try c.start(link(pool, 0..<2, counted: c.countedChains))
        #expect(waitUntil { h.target.inFlight(channel: c.index) != 0 })
        do { try c.free(); Issue.record("freed with work outstanding") } catch {
            #expect(error.code == .invalidState)
            #expect(error.message.contains("outstanding"))
        }
        h.target.hold(channel: c.index, false)
        #expect(waitUntil { c.completionWord == CompletionWord(descriptor: pool.iova(at: 1), status: .idle) })
        try c.free()
        #expect(c.state == .freed)
    }
}
