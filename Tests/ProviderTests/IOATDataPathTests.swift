import DeviceModels
import Hardware
import IOAT
import NetDMA
import Platform
import Synchronization
import Testing

/// The provider registered with a registry, a channel, and a descriptor pool.
final class IOATRegistered: @unchecked Sendable {
    let rig: IOATProviderRig
    let registry = NetDMARegistry(drainTimeout: .seconds(2))
    let handle: ProviderHandle
    let channel: NetDMAChannel
    let pool: DescriptorPool
    var counted: Bool { channel.countedChains }

    init(_ name: String, version: NetDMAVersion = .v2_0, execution: MockIOATDevice.Execution = .thread,
         interrupts: Bool = true, poolSize: Int = 64) throws {
        rig = try IOATProviderRig(name, version: version, execution: execution, interrupts: interrupts)
        handle = try rig.provider.register(with: registry)
        channel = try registry.allocateChannel(provider: handle, affinity: [0])
        pool = try DescriptorPool(memory: rig.memory, count: poolSize)
    }

    deinit {
        _ = try? registry.stop(handle)
        try? registry.deregister(handle)
    }

    /// Waits (bounded) until the completion word names `iova` with a finished status.
    func waitCompleted(_ iova: UInt64, timeout: Duration = .seconds(5)) -> Bool {
        ioatWait(timeout) {
            let w = channel.completionWord
            return w.descriptor == iova && (w.status == .idle || w.status == .active)
        }
    }
}

@Suite("IOAT provider data path")
struct IOATDataPathTests {
    @Test("copies of many sizes and fills land byte-exact, through the registry and a NetDMA channel",
          arguments: ioatV3Profiles)
    func copiesAndFills(profile name: String) throws {
        let r = try IOATRegistered(name)
        let src = try r.rig.buffer(1 << 20)
        let dst = try r.rig.buffer(1 << 20)
        src.ioatPattern(7)
        let sizes = [1, 7, 64, 100, 4096, 4097, 65_536, 300_000]
        var offset = 0
        for (i, n) in sizes.enumerated() {
            IOATChain.copy(r.pool, i, from: src.iova(at: offset), to: dst.iova(at: offset + 3), n)
            offset += n + 64
        }
        var count = sizes.count
        let fills = r.rig.profile.capabilities.contains(.blockFill)
        let fillAt = offset + 5
        if fills {
            IOATChain.fill(r.pool, count, pattern: 0x0123_4567_89AB_CDEF, to: dst.iova(at: fillAt), 1000)
            count += 1
        }
        let chain = IOATChain.link(r.pool, 0..<count, counted: true)
        try r.channel.start(chain)
        #expect(r.waitCompleted(r.pool.iova(at: count - 1)))
        offset = 0
        for n in sizes {
            let same = dst.ioatEqual(offset + 3, src, offset, n)
            let clean = dst.ioatAllZero(offset + 3 + n, 8)
            #expect(same, "copy of \(n) bytes")
            #expect(clean, "copy of \(n) bytes wrote past its end")
            offset += n + 64
        }
        if fills {
            let bytes = dst.ioatBytes(fillAt, 1000)
            let pattern: UInt64 = 0x0123_4567_89AB_CDEF
            let expected = (0..<1000).map { UInt8(truncatingIfNeeded: pattern >> UInt64(8 * ($0 & 7))) }
            #expect(bytes == expected)
            let clean = dst.ioatAllZero(fillAt + 1000, 8)
            #expect(clean)
        }
        #expect(r.channel.fault == nil)
    }

    @Test("2.0 counted chains: Appends add to DMACOUNT across a ring that wraps", arguments: ["tbg", "skx", "icx"])
    func appendsAroundARing(profile name: String) throws {
        let r = try IOATRegistered(name, poolSize: 16)
        let src = try r.rig.buffer(4096)
        let dst = try r.rig.buffer(64 * 64)
        src.ioatPattern(3)
        for i in 0..<16 { r.pool[i].pointee.next = r.pool.iova(at: (i + 1) % 16) }
        var next = 0
        for batch in 0..<12 {
            let n = 1 + batch % 5
            for k in 0..<n {
                let op = next + k
                IOATChain.copy(r.pool, op % 16, from: src.iova(at: op % 64 * 64), to: dst.iova(at: op % 64 * 64), 64)
            }
            let chain = DescriptorChain(address: r.pool[next % 16], iova: r.pool.iova(at: next % 16), count: n)
            if batch == 0 { try r.channel.start(chain) } else { try r.channel.append(chain) }
            next += n
            #expect(r.waitCompleted(r.pool.iova(at: (next - 1) % 16)), "batch \(batch)")
        }
        for op in 0..<next {
            let same = dst.ioatEqual(op % 64 * 64, src, op % 64 * 64, 64)
            #expect(same, "op \(op)")
        }
    }

    @Test("NULL transfers move nothing, update the completion word and interrupt", arguments: ["tbg", "bdxde", "icx"])
    func nullTransfers(profile name: String) async throws {
        let r = try IOATRegistered(name)
        let dst = try r.rig.buffer(4096)
        IOATChain.null(r.pool, 0, [.statusUpdateOnCompletion])
        IOATChain.null(r.pool, 1, [])
        IOATChain.null(r.pool, 2, [.statusUpdateOnCompletion, .interruptOnCompletion])
        r.pool[2].pointee.destination = dst.iova  // NULL: never written even with an address
        r.pool[2].pointee.transferSize = 4096
        let generation = r.channel.interruptGeneration
        try r.channel.start(IOATChain.link(r.pool, 0..<3, counted: true))
        let g = try await r.channel.waitForInterrupt(after: generation, timeout: .seconds(5))
        #expect(g > generation)
        #expect(r.channel.completionWord.descriptor == r.pool.iova(at: 2))
        #expect(r.channel.lastInterruptDescriptor == r.pool.iova(at: 2))
        let untouched = dst.ioatAllZero(0, 4096)
        #expect(untouched)
        #expect(r.rig.device.statistics.interruptsLost == 0)
    }

    @Test("status-only, interrupt-only, both and neither: each does exactly what it asks", arguments: ["skx", "icx"])
    func completionKinds(profile name: String) async throws {
        let r = try IOATRegistered(name)
        for i in 0..<4 { r.pool[i].pointee.next = r.pool.iova(at: i + 1) }
        // Status only: the word moves, no interrupt.
        IOATChain.null(r.pool, 0, [.statusUpdateOnCompletion])
        var g = r.channel.interruptGeneration
        try r.channel.start(IOATChain.link(r.pool, 0..<1, counted: true))
        #expect(r.waitCompleted(r.pool.iova(at: 0)))
        #expect(r.channel.interruptGeneration == g, "status-only must not interrupt")
        // Neither: nothing visible but the engine's CHANSTS; then interrupt-only.
        IOATChain.null(r.pool, 1, [])
        IOATChain.null(r.pool, 2, [.interruptOnCompletion])
        try r.channel.append(r.pool.chain(from: 1, count: 2))
        g = try await r.channel.waitForInterrupt(after: g, timeout: .seconds(5))
        #expect(r.channel.completionWord.descriptor == r.pool.iova(at: 0), "interrupt-only must not write status")
        // The ISR names the last completed descriptor (CHANSTS), even one that wrote no status.
        #expect(r.channel.lastInterruptDescriptor == r.pool.iova(at: 2))
        // Both.
        IOATChain.null(r.pool, 3, [.interruptOnCompletion, .statusUpdateOnCompletion])
        try r.channel.append(r.pool.chain(from: 3, count: 1))
        g = try await r.channel.waitForInterrupt(after: g, timeout: .seconds(5))
        #expect(r.waitCompleted(r.pool.iova(at: 3)))
        #expect(r.channel.lastInterruptDescriptor == r.pool.iova(at: 3))
    }

    @Test("the DPC re-arms (INT_REARM) so every interrupt-asking batch interrupts", arguments: ["tbg", "bdxde", "icx"])
    func rearmEveryBatch(profile name: String) async throws {
        let r = try IOATRegistered(name)
        var g = r.channel.interruptGeneration
        for i in 0..<8 {
            IOATChain.null(r.pool, i, [.interruptOnCompletion, .statusUpdateOnCompletion])
            r.pool[i].pointee.next = r.pool.iova(at: i + 1)
            let chain = r.pool.chain(from: i, count: 1)
            if i == 0 { try r.channel.start(chain) } else { try r.channel.append(chain) }
            g = try await r.channel.waitForInterrupt(after: g, timeout: .seconds(5))
            #expect(r.channel.lastInterruptDescriptor == r.pool.iova(at: i))
        }
        // The model counts a signal just after writing the eventfd.
        #expect(ioatWait { r.rig.device.statistics.interruptsSignalled == 8 })
        #expect(r.rig.device.statistics.interruptsLost == 0)
    }
}

@Suite("IOAT provider interrupts")
struct IOATInterruptTests {
    @Test("a completion interrupts once; without INT_REARM the next is silent; rearmInterrupt arms it again")
    func intRearm() throws {
        let rig = try IOATProviderRig("skx", execution: .manual)
        let ch = try IOATDirectChannel(rig)
        let pool = try DescriptorPool(memory: rig.memory, count: 8)
        for i in 0..<3 { IOATChain.null(pool, i, [.interruptOnCompletion, .statusUpdateOnCompletion]) }
        _ = IOATChain.link(pool, 0..<8, counted: true)
        try ch.channel.start(pool.chain(from: 0, count: 1))
        rig.device.runUntilIdle()
        #expect(ch.consumeInterrupts() == 1)
        var report = ch.channel.serviceInterrupt()
        #expect(report.lastCompleted == pool.iova(at: 0) && report.fault == nil)
        // Not re-armed: the second completion does not interrupt.
        try ch.channel.append(pool.chain(from: 1, count: 1))
        rig.device.runUntilIdle()
        #expect(ch.completion.descriptor == pool.iova(at: 1))
        #expect(ch.consumeInterrupts() == 0)
        // Re-armed: the third does.
        ch.channel.rearmInterrupt()
        try ch.channel.append(pool.chain(from: 2, count: 1))
        rig.device.runUntilIdle()
        #expect(ch.consumeInterrupts() == 1)
        report = ch.channel.serviceInterrupt()
        #expect(report.lastCompleted == pool.iova(at: 2))
    }

    @Test("an error interrupts even when not re-armed, and the ISR reports the decoded fault")
    func errorInterrupt() throws {
        let rig = try IOATProviderRig("icx", execution: .manual)
        let ch = try IOATDirectChannel(rig)
        let pool = try DescriptorPool(memory: rig.memory, count: 4)
        IOATChain.null(pool, 0, [.interruptOnCompletion, .statusUpdateOnCompletion])
        pool[1].pointee = Descriptor(transferSize: .max, controlFlags: [.statusUpdateOnCompletion])  // DXSERR: above 2^XFERCAP
        _ = IOATChain.link(pool, 0..<4, counted: true)
        try ch.channel.start(pool.chain(from: 0, count: 2))
        rig.device.runUntilIdle()
        #expect(ch.consumeInterrupts() == 2)  // the completion, then the error (ERR_INT_EN)
        let report = ch.channel.serviceInterrupt()
        #expect(report.lastCompleted == 0)
        let fault = try #require(report.fault)
        #expect(fault.rawValue == UInt64(IOAT.ChanErr.transferSize.rawValue))
        #expect(fault.causes == ["descriptor transfer size error (DXSERR)"])
        #expect(fault.descriptor == pool.iova(at: 1))
        #expect(ch.completion.status == .halted && ch.completion.descriptor == pool.iova(at: 0))
    }

    @Test("below 3.3 the ISR reads CHANSTS as tear-safe halves: exact even while the engine runs and the high half moves",
          arguments: ["tbg", "bdx", "bwd", "icx"])
    func tornChansts(profile name: String) throws {
        let rig = try IOATProviderRig(name, execution: .manual)
        let ch = try IOATDirectChannel(rig)
        // The rig's IOVAs lie above 4 GiB: CHANSTS's high half is 0 after CHAINADDR, then 1.
        let pool = try DescriptorPool(memory: rig.memory, count: 4)
        for i in 0..<4 { IOATChain.null(pool, i, []) }
        _ = IOATChain.link(pool, 0..<4, counted: true)
        try ch.channel.start(pool.chain(from: 0, count: 3))
        rig.device.step()
        // ACTIVE after the first descriptor, whose predecessor address is 0 (CHAINADDR): a
        // single 64-bit CHANSTS read of the model tears below 3.3 (high half 0).
        #expect(ch.channel.serviceInterrupt().lastCompleted == pool.iova(at: 0))
        #expect(rig.state() == .active)
        rig.device.runUntilIdle()
        #expect(ch.channel.serviceInterrupt().lastCompleted == pool.iova(at: 2), "a descriptor without a status write counts")
    }
}
