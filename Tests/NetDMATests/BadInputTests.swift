import NetDMA
import Platform
import Testing

// One test per row of the README's "Bad input" table that concerns the NetDMA API (rows A1–A15): the bad
// input, the error code, and that the message says what to do.

/// A started fixture provider on its own registry, with one channel allocated.
private final class Started {
    let registry = NetDMARegistry(drainTimeout: .milliseconds(200))
    let provider: FixtureMemcpyProvider
    let handle: ProviderHandle
    init(version: NetDMAVersion = .v2_0, flags: ProviderFlags = [.fill], interrupts: Bool = true, channels: Int = 2) throws {
        provider = try FixtureMemcpyProvider(version: version, channelCount: channels, flags: flags, interrupts: interrupts)
        handle = try registry.register(provider)
        try registry.start(handle, attributes: provider.attributes)
    }
    deinit {
        _ = try? registry.stop(handle)
        try? registry.deregister(handle)
        provider.shutdown()
    }
    func channel() throws -> NetDMAChannel { try registry.allocateChannel(provider: handle) }
}

private func expectError(_ code: DriverError.Code, mentioning words: [String] = [],
                         _ body: () throws -> Void, sourceLocation: SourceLocation = #_sourceLocation) {
    do {
        try body()
        Issue.record("expected \(code), got success", sourceLocation: sourceLocation)
    } catch {
        guard let error = error as? DriverError else {
            Issue.record("expected a DriverError, got \(error)", sourceLocation: sourceLocation)
            return
        }
        #expect(error.code == code, "\(error)", sourceLocation: sourceLocation)
        for w in words { #expect(error.message.contains(w), "message: \(error.message)", sourceLocation: sourceLocation) }
    }
}

@Suite("Bad input: NetDMA API")
struct NetDMABadInputTests {
    @Test("A1 a provider declaring a version above the interface's is refused")
    func newerVersion() throws {
        let p = try FixtureMemcpyProvider(version: NetDMAVersion(3, 0))
        defer { p.shutdown() }
        expectError(.unsupported, mentioning: ["newer than the interface"]) { _ = try NetDMARegistry().register(p) }
    }

    @Test("A2 a 2.0 provider without a friendly name is refused")
    func noFriendlyName() throws {
        let p = try FixtureMemcpyProvider(version: .v2_0, friendlyName: "")
        defer { p.shutdown() }
        expectError(.invalidArgument, mentioning: ["friendly name"]) { _ = try NetDMARegistry().register(p) }
    }

    @Test("A3 Start with a maximum transfer below 4096 bytes or an impossible channel count is refused")
    func badAttributes() throws {
        let p = try FixtureMemcpyProvider()
        defer { p.shutdown() }
        let registry = NetDMARegistry()
        let h = try registry.register(p)
        var a = p.attributes
        a.maximumTransferSize = 512
        expectError(.invalidArgument, mentioning: ["4096"]) { try registry.start(h, attributes: a) }
        a = p.attributes
        a.channelCount = p.characteristics.maxChannelCount + 1
        expectError(.invalidArgument, mentioning: ["DmaChannelCount"]) { try registry.start(h, attributes: a) }
        try registry.deregister(h)
    }

    @Test("A4 allocating on a registered but not started provider, or beyond its channels")
    func allocation() throws {
        let p = try FixtureMemcpyProvider(channelCount: 1)
        defer { p.shutdown() }
        let registry = NetDMARegistry(drainTimeout: .milliseconds(200))
        let h = try registry.register(p)
        expectError(.invalidState, mentioning: ["arrival"]) { _ = try registry.allocateChannel(provider: h) }
        try registry.start(h, attributes: p.attributes)
        let c = try registry.allocateChannel(provider: h)
        expectError(.busy, mentioning: ["allocated"]) { _ = try registry.allocateChannel(provider: h) }
        try c.free()
        try registry.stop(h)
        try registry.deregister(h)
    }

    @Test("A5 an empty affinity, or one with no CPU this process may use")
    func unusableAffinity() throws {
        let s = try Started()
        let allowed = CPUSet.allowed.description
        expectError(.invalidArgument, mentioning: ["usable", allowed]) { _ = try s.registry.allocateChannel(provider: s.handle, affinity: [4095]) }
        expectError(.invalidArgument, mentioning: ["empty", allowed]) { _ = try s.registry.allocateChannel(provider: s.handle, affinity: [] as CPUSet) }
        #expect(s.registry.info(s.handle)?.allocatedChannels == 0, "a refused allocation holds no channel")
    }

    @Test("A6 a handle the registry does not know, and Deregister before Stop")
    func handles() throws {
        let s = try Started()
        let other = NetDMARegistry()
        expectError(.notFound, mentioning: ["not registered"]) { _ = try other.allocateChannel(provider: s.handle) }
        expectError(.invalidState, mentioning: ["stop first"]) { try s.registry.deregister(s.handle) }
    }

    @Test("A7 calls in the wrong channel state: Append before Start, Resume while running, Start or Append with no descriptors")
    func channelState() throws {
        let s = try Started()
        let c = try s.channel()
        let pool = try DescriptorPool(memory: c.dmaMemory, count: 2)
        pool[0].pointee = Descriptor(controlFlags: [.nullTransfer, .statusUpdateOnCompletion])
        expectError(.invalidState, mentioning: ["Append", "allocated"]) { try c.append(pool.chain(from: 0, count: 1)) }
        expectError(.invalidState, mentioning: ["Resume"]) { try c.resume() }
        expectError(.invalidArgument, mentioning: ["at least one descriptor"]) { try c.start(pool.chain(from: 0, count: 0)) }
        try c.start(pool.chain(from: 0, count: 1))
        expectError(.invalidArgument, mentioning: ["Append", "at least one descriptor"]) { try c.append(pool.chain(from: 1, count: 0)) }
        try c.reset()
        try c.free()
    }

    @Test("A8 Free with descriptors outstanding")
    func freeOutstanding() throws {
        let s = try Started()
        let c = try s.channel()
        let pool = try DescriptorPool(memory: c.dmaMemory, count: 2)
        pool[0].pointee = Descriptor(controlFlags: [.nullTransfer, .statusUpdateOnCompletion])
        s.provider.hold(channel: c.index, true)
        try c.start(pool.chain(from: 0, count: 1))
        expectError(.invalidState, mentioning: ["outstanding"]) { try c.free() }
        try c.abort()
        s.provider.hold(channel: c.index, false)
        try c.free()
    }

    @Test("A9 PowerDown/PowerUp on a NetDMA 1.0 provider, PowerUp without PowerDown")
    func power() throws {
        let old = try Started(version: .v1_0)
        expectError(.unsupported, mentioning: ["contextLost"]) { try old.registry.notify(old.handle, event: .powerDown) }
        let s = try Started(version: .v1_1)
        expectError(.invalidState, mentioning: ["PowerUp"]) { try s.registry.notify(s.handle, event: .powerUp) }
    }

    @Test("A10 a descriptor pool of no descriptors")
    func emptyPool() throws {
        let s = try Started()
        let c = try s.channel()
        expectError(.invalidArgument, mentioning: ["at least one descriptor"]) { _ = try DescriptorPool(memory: c.dmaMemory, count: 0) }
        try c.free()
    }

    @Test("A11 CopyQueue: a ring size that is not a power of two from 2 to 65536; a negative CPU-copy threshold; a channel already started")
    func queueShape() throws {
        let s = try Started()
        let c = try s.channel()
        for size in [0, 1, 3, 100, 131072] {
            expectError(.invalidArgument, mentioning: ["power of two"]) { _ = try CopyQueue(channel: c, ringSize: size) }
        }
        for threshold in [-1, Int.min] {
            expectError(.invalidArgument, mentioning: ["0 (off)", "\(threshold)"]) { _ = try CopyQueue(channel: c, ringSize: 8, cpuCopyThreshold: threshold) }
        }
        let pool = try DescriptorPool(memory: c.dmaMemory, count: 1)
        pool[0].pointee = Descriptor(transferSize: 1, controlFlags: [.nullTransfer, .statusUpdateOnCompletion])
        try c.start(pool.chain(from: 0, count: 1))
        expectError(.invalidState, mentioning: ["allocated"]) { _ = try CopyQueue(channel: c, ringSize: 8) }
    }

    @Test("A12 CopyQueue with interrupts on a channel without a vector; waiting on a queue without interrupts")
    func queueInterrupts() async throws {
        let s = try Started(interrupts: false)
        let c = try s.channel()
        expectError(.unsupported, mentioning: ["interrupts: false"]) { _ = try CopyQueue(channel: c, ringSize: 8, interrupts: true) }
        let q = try CopyQueue(channel: c, ringSize: 8)
        do {
            try await q.waitForCompletion(timeout: .milliseconds(10))
            Issue.record("expected unsupported")
        } catch {
            #expect(error.code == .unsupported && error.message.contains("poll"))
        }
    }

    @Test("A13 CopyQueue ops longer than the maximum transfer, beyond the engine's reach, or a fill without fill support (the CPU fallback refuses the same)",
          arguments: [0, 1 << 30])
    func queueOps(cpuCopyThreshold: Int) throws {
        let s = try Started(flags: [])
        let c = try s.channel()
        let q = try CopyQueue(channel: c, ringSize: 8, cpuCopyThreshold: cpuCopyThreshold)
        expectError(.descriptorTooLarge, mentioning: ["split"]) {
            _ = try q.enqueueCopy(source: 0x10_0000, destination: 0x20_0000, length: c.maximumTransferSize + 1)
        }
        expectError(.descriptorTooLarge, mentioning: ["maximum address"]) {
            _ = try q.enqueueCopy(source: 0x10_0000, destination: c.maximumAddress, length: 64)
        }
        expectError(.unsupported, mentioning: ["fill"]) { _ = try q.enqueueFill(pattern: 0, destination: 0x10_0000, length: 8) }
        #expect(q.pendingSubmission == 0 && q.freeSlots == q.capacity)
    }

    @Test("A14 CopyQueue enqueue when full (engine and CPU ops share the capacity)", arguments: [0, 256])
    func queueFull(cpuCopyThreshold: Int) throws {
        let s = try Started()
        let c = try s.channel()
        let q = try CopyQueue(channel: c, ringSize: 4, cpuCopyThreshold: cpuCopyThreshold)
        for _ in 0..<q.capacity { _ = try q.enqueueNull() }
        expectError(.queueFull, mentioning: ["completed(max:)"]) { _ = try q.enqueueNull() }
        expectError(.queueFull, mentioning: ["completed(max:)"]) { _ = try q.enqueueCopy(source: 0x10_0000, destination: 0x20_0000, length: 64) }
        expectError(.queueFull, mentioning: ["completed(max:)"]) { _ = try q.enqueueCopy(source: 0x10_0000, destination: 0x20_0000, length: 4096) }
    }

    @Test("A15 a NetDMA 1.0 or 1.1 provider declaring characteristic flags; unknown flag bits")
    func flagsBelow20() throws {
        for version in [NetDMAVersion.v1_0, .v1_1] {
            // Defined NetDMA flags and bits NetDMA never defined: 1.x Flags must be 0.
            for raw: UInt32 in [ProviderFlags.dcaSupported.rawValue, ProviderFlags.supportsProcessorGroups.rawValue, 0x4, 0x8000] {
                let p = try FixtureMemcpyProvider(version: version, flags: [.fill, ProviderFlags(rawValue: raw)])
                defer { p.shutdown() }
                let r = NetDMARegistry()
                expectError(.invalidArgument, mentioning: ["Flags 0x\(String(raw, radix: 16))", "define no flags"]) { _ = try r.register(p) }
                #expect(r.providers.isEmpty, "\(version) with flags 0x\(String(raw, radix: 16)) was registered")
            }
            // The library's capability bits are not NetDMA flags.
            let fill = try FixtureMemcpyProvider(version: version, flags: [.fill])
            defer { fill.shutdown() }
            let r = NetDMARegistry()
            try r.deregister(try r.register(fill))
        }
        let unknown = try FixtureMemcpyProvider(version: .v2_0, flags: ProviderFlags(rawValue: 0x4))
        defer { unknown.shutdown() }
        expectError(.invalidArgument, mentioning: ["Unknown provider flag bits 0x4"]) { _ = try NetDMARegistry().register(unknown) }
    }
}
