import DeviceModels
import Hardware
import IOAT
import NetDMA
import Platform
import Synchronization
import Testing

/// A manually stepped model with a registered provider, a channel, 4 KiB source and
/// destination slots, and copy descriptors: `copy(i)` moves slot i of the source to slot i of
/// the destination.
final class IOATStepped: @unchecked Sendable {
    let r: IOATRegistered
    let src: DMABuffer
    let dst: DMABuffer
    static let slot = 4096
    var rig: IOATProviderRig { r.rig }
    var channel: NetDMAChannel { r.channel }
    var pool: DescriptorPool { r.pool }

    init(_ name: String, version: NetDMAVersion = .v2_0, interrupts: Bool = false) throws {
        r = try IOATRegistered(name, version: version, execution: .manual, interrupts: interrupts, poolSize: 16)
        src = try r.rig.buffer(16 * Self.slot)
        dst = try r.rig.buffer(16 * Self.slot)
        src.ioatPattern(11)
    }

    /// Descriptor i copies source slot i to destination slot `to` (default i).
    func copy(_ i: Int, to: Int? = nil, _ flags: ControlFlags = [.statusUpdateOnCompletion]) {
        IOATChain.copy(pool, i, from: src.iova(at: i * Self.slot), to: dst.iova(at: (to ?? i) * Self.slot), Self.slot, flags)
    }
    func copied(_ i: Int, to: Int? = nil) -> Bool { dst.ioatEqual((to ?? i) * Self.slot, src, i * Self.slot, Self.slot) }
    func untouched(_ slot: Int) -> Bool { dst.ioatAllZero(slot * Self.slot, Self.slot) }

    /// Steps the engine until `n` descriptors ran since creation (the bring-up NULL included).
    func step(untilExecuted n: UInt64) {
        var guardSteps = 0
        while rig.device.statistics.descriptorsExecuted < n && guardSteps < 10_000 {
            rig.device.step()
            guardSteps += 1
        }
    }
    var executed: UInt64 { rig.device.statistics.descriptorsExecuted }

    func stepping<T>(gate: Bool = true, _ work: @escaping () throws(DriverError) -> T) throws(DriverError) -> T {
        try rig.whileStepping(gate: gate, work)
    }
}

@Suite("IOAT provider NetDMA semantics")
struct IOATSemanticsTests {
    @Test("Start while busy: the current descriptor finishes, the rest of the old chain is dropped",
          arguments: ["tbg", "bdx", "bdxde", "icx"])
    func startWhileBusy(profile name: String) throws {
        let t = try IOATStepped(name)
        for i in 0..<8 { t.copy(i) }
        let a = IOATChain.link(t.pool, 0..<4, counted: true)
        try t.channel.start(a)
        let base = t.executed
        t.step(untilExecuted: base + 1)  // A0 done, A1 next
        #expect(t.rig.state() == .active)
        let b = IOATChain.link(t.pool, 4..<8, counted: true)
        let channel = t.channel
        try t.stepping { () throws(DriverError) in try channel.start(b) }
        t.rig.device.runUntilIdle()
        #expect(t.copied(0))
        for i in 1..<4 { #expect(t.untouched(i), "old descriptor \(i) ran after Start") }
        for i in 4..<8 { #expect(t.copied(i)) }
        #expect(t.channel.completionWord.descriptor == t.pool.iova(at: 7))
        #expect(t.executed == base + 5)
    }

    @Test("Suspend returns the last completed descriptor; edits (an insertion, a changed descriptor) are honoured on Resume (2.0)",
          arguments: ["tbg", "skx", "bwd", "icx"])
    func suspendResumeCounted(profile name: String) throws {
        let t = try IOATStepped(name)
        for i in 0..<8 { t.copy(i) }
        try t.channel.start(IOATChain.link(t.pool, 0..<4, counted: true))
        let base = t.executed
        t.step(untilExecuted: base + 2)
        let channel = t.channel
        let last = try t.stepping { () throws(DriverError) -> UInt64 in try channel.suspend() }
        #expect(last == t.pool.iova(at: 1))
        #expect(t.channel.completionWord == CompletionWord(descriptor: t.pool.iova(at: 1), status: .suspend))
        #expect(t.channel.state == .suspended)
        #expect(t.rig.state() == .suspended)
        // Stepping a suspended engine does nothing.
        t.rig.device.runUntilIdle()
        #expect(t.executed == base + 2)
        // Edits: descriptor 3 now writes destination slot 12, and descriptor 10 is inserted
        // after the last processed one (its `next` is re-read on Resume).
        t.copy(3, to: 12)
        t.copy(10)
        t.pool[10].pointee.next = t.pool.iova(at: 2)
        DescriptorPool.publishNext(of: t.pool[1], t.pool.iova(at: 10))
        try t.channel.resume()
        #expect(t.channel.state == .running)
        t.rig.device.runUntilIdle()
        for i in [0, 1, 2, 10] { #expect(t.copied(i), "descriptor \(i)") }
        #expect(t.copied(3, to: 12))
        #expect(t.untouched(3))
        #expect(t.channel.completionWord.descriptor == t.pool.iova(at: 3))
        #expect(t.executed == base + 5)
        // Appends continue the count after the resume.
        try t.channel.append(IOATChain.link(t.pool, 4..<6, counted: true))
        t.rig.device.runUntilIdle()
        #expect(t.copied(4) && t.copied(5))
    }

    @Test("1.x: Resume re-reads the last processed descriptor's next, so a relinked chain is followed",
          arguments: [("skx", NetDMAVersion.v1_1), ("icx", .v1_0), ("cb1", .v1_1)])
    func suspendResumeNullTerminated(_ arg: (profile: String, version: NetDMAVersion)) throws {
        let t = try IOATStepped(arg.profile, version: arg.version)
        for i in 0..<5 { t.copy(i) }
        try t.channel.start(IOATChain.link(t.pool, 0..<5, counted: false))
        let base = t.executed
        t.step(untilExecuted: base + 2)
        let channel = t.channel
        let last = try t.stepping { () throws(DriverError) -> UInt64 in try channel.suspend() }
        #expect(last == t.pool.iova(at: 1))
        // Remove descriptor 2 from the chain: 1 → 3.
        DescriptorPool.publishNext(of: t.pool[1], t.pool.iova(at: 3))
        try t.channel.resume()
        t.rig.device.runUntilIdle()
        #expect(t.copied(0) && t.copied(1) && t.copied(3) && t.copied(4))
        #expect(t.untouched(2), "the unlinked descriptor ran")
        #expect(t.channel.completionWord.descriptor == t.pool.iova(at: 4))
        // A later Append on the parked tail runs too.
        t.copy(6)
        _ = IOATChain.link(t.pool, 6..<7, counted: false)
        DescriptorPool.publishNext(of: t.pool[4], t.pool.iova(at: 6))
        try t.channel.append(t.pool.chain(from: 6, count: 1))
        t.rig.device.runUntilIdle()
        #expect(t.copied(6))
    }

    @Test("Resume after the client relinked to a misaligned next: no trap; 2.0 runs on as counted, 1.x halts with a fault",
          arguments: [("icx", NetDMAVersion.v2_0), ("skx", .v1_1)])
    func resumeThroughMisalignedNext(_ arg: (profile: String, version: NetDMAVersion)) throws {
        // Found by the fuzzer: Resume counted the descriptors to the tail by walking `next`
        // and loaded through a misaligned address (a trap). Now an unaligned `next` ends the
        // walk: a 2.0 channel resumes with its count (the engine continues from the position
        // it saved), a 1.x one follows the bad link and halts with the engine's error.
        let t = try IOATStepped(arg.profile, version: arg.version)
        for i in 0..<4 { t.copy(i) }
        try t.channel.start(IOATChain.link(t.pool, 0..<4, counted: arg.version.countedChains))
        let base = t.executed
        t.step(untilExecuted: base + 1)
        let channel = t.channel
        let last = try t.stepping { () throws(DriverError) -> UInt64 in try channel.suspend() }
        #expect(last == t.pool.iova(at: 0))
        DescriptorPool.publishNext(of: t.pool[0], t.pool.iova(at: 1) + 8)
        try t.channel.resume()
        t.rig.device.runUntilIdle()
        if arg.version.countedChains {
            #expect(t.channel.state == .running)
            #expect(t.copied(1) && t.copied(2) && t.copied(3))
        } else {
            #expect(t.channel.state == .halted)
            let causes = t.channel.fault?.causes ?? []
            #expect(!causes.isEmpty, "the halt names its cause")
            #expect(t.untouched(1))
        }
    }

    @Test("Suspend after the chain ran, and before anything ran: Resume continues at the right place",
          arguments: [("icx", NetDMAVersion.v2_0), ("tbg", .v2_0), ("skx", .v1_0), ("cb1", .v1_1)])
    func suspendAtTheEnds(_ arg: (profile: String, version: NetDMAVersion)) throws {
        let t = try IOATStepped(arg.profile, version: arg.version)
        let counted = arg.version.countedChains
        for i in 0..<6 { t.copy(i) }
        // Everything ran: Suspend returns the tail, Resume parks, the next Append runs.
        try t.channel.start(IOATChain.link(t.pool, 0..<2, counted: counted))
        t.rig.device.runUntilIdle()
        let channel = t.channel
        let last = try t.stepping { () throws(DriverError) -> UInt64 in try channel.suspend() }
        #expect(last == t.pool.iova(at: 1))
        try t.channel.resume()
        t.rig.device.runUntilIdle()
        if !counted { DescriptorPool.publishNext(of: t.pool[1], t.pool.iova(at: 2)) }
        try t.channel.append(IOATChain.link(t.pool, 2..<4, counted: counted))
        t.rig.device.runUntilIdle()
        #expect(t.copied(2) && t.copied(3))
        // Nothing ran yet (the engine is held): Suspend returns 0, Resume runs the whole chain.
        try t.channel.start(IOATChain.link(t.pool, 4..<6, counted: counted))
        let none = try t.stepping { () throws(DriverError) -> UInt64 in try channel.suspend() }
        #expect(none == 0)
        #expect(t.untouched(4))
        try t.channel.resume()
        t.rig.device.runUntilIdle()
        #expect(t.copied(4) && t.copied(5))
        #expect(t.channel.completionWord.descriptor == t.pool.iova(at: 5))
    }

    @Test("Abort: Halted in the completion word with the last completed descriptor, the rest abandoned, Append refused until Start",
          arguments: ["tbg", "bdx", "bdxde", "icx"])
    func abort(profile name: String) throws {
        let t = try IOATStepped(name)
        for i in 0..<8 { t.copy(i) }
        try t.channel.start(IOATChain.link(t.pool, 0..<4, counted: true))
        let base = t.executed
        t.step(untilExecuted: base + 2)
        let channel = t.channel
        try t.stepping { () throws(DriverError) in try channel.abort() }
        #expect(t.channel.completionWord == CompletionWord(descriptor: t.pool.iova(at: 1), status: .halted))
        #expect(t.channel.state == .halted)
        #expect(t.channel.fault == nil, "an Abort is not a device error")
        t.rig.device.runUntilIdle()
        #expect(t.untouched(2) && t.untouched(3))
        #expect(t.executed == base + 2)
        // NetDMA: Append after Abort is refused by the interface; Start is required.
        #expect(throws: DriverError.self) { try channel.append(t.pool.chain(from: 4, count: 1)) }
        do { try channel.append(t.pool.chain(from: 4, count: 1)) } catch { #expect(error.code == .invalidState) }
        try t.channel.start(IOATChain.link(t.pool, 4..<6, counted: true))
        t.rig.device.runUntilIdle()
        #expect(t.copied(4) && t.copied(5))
        try t.channel.append(IOATChain.link(t.pool, 6..<8, counted: true))
        t.rig.device.runUntilIdle()
        #expect(t.copied(6) && t.copied(7))
    }

    @Test("Reset: back to the post-allocation state; nothing submitted before is ever touched again",
          arguments: ["tbg", "bdxde", "icx"])
    func reset(profile name: String) throws {
        let t = try IOATStepped(name)
        for i in 0..<8 { t.copy(i) }
        try t.channel.start(IOATChain.link(t.pool, 0..<4, counted: true))
        let base = t.executed
        t.step(untilExecuted: base + 1)
        let channel = t.channel
        try t.stepping { () throws(DriverError) in try channel.reset() }
        #expect(t.channel.state == .allocated)
        #expect(t.channel.completionWord.status == .halted)
        #expect(t.rig.state() == .halted)
        let ch = IOAT.channelBase(0)
        #expect(t.rig.device.bar0.read16(ch + IOAT.DMACOUNT) == 0)
        // Post-allocation: the completion area and the run control are programmed again.
        #expect(t.rig.device.bar0.read64Split(ch + IOAT.CHANCMP) == t.channel.completionIOVA)
        #expect(IOAT.ChanCtrl(rawValue: t.rig.device.bar0.read16(ch + IOAT.CHANCTRL)).contains(.anyErrAbortEnable))
        #expect(throws: DriverError.self) { try channel.append(t.pool.chain(from: 4, count: 1)) }
        t.rig.device.runUntilIdle()
        #expect(t.executed == base + 1)
        // A new chain runs; the old descriptors 1–3 never do.
        try t.channel.start(IOATChain.link(t.pool, 4..<8, counted: true))
        t.rig.device.runUntilIdle()
        for i in 4..<8 { #expect(t.copied(i)) }
        for i in 1..<4 { #expect(t.untouched(i)) }
        #expect(t.executed == base + 5)
    }

    @Test("1.0 vs 2.0 chains: NULL-terminated chains with tail re-read, counted chains on DMACOUNT",
          arguments: [("skx", NetDMAVersion.v1_0), ("icx", .v1_1), ("cb1", .v1_0), ("skx", .v2_0), ("icx", .v2_0)])
    func chainFormats(_ arg: (profile: String, version: NetDMAVersion)) throws {
        let t = try IOATStepped(arg.profile, version: arg.version)
        let counted = arg.version.countedChains
        #expect(t.channel.countedChains == counted)
        for i in 0..<9 { t.copy(i) }
        // First chain: 3 descriptors, run to the end (the engine stops on the tail).
        try t.channel.start(IOATChain.link(t.pool, 0..<3, counted: counted))
        t.rig.device.runUntilIdle()
        #expect(t.copied(0) && t.copied(1) && t.copied(2))
        // Append while stopped on the tail: 1.x patches the tail's NULL first.
        if !counted { DescriptorPool.publishNext(of: t.pool[2], t.pool.iova(at: 3)) }
        try t.channel.append(IOATChain.link(t.pool, 3..<5, counted: counted))
        t.rig.device.runUntilIdle()
        #expect(t.copied(3) && t.copied(4))
        // Append while the engine is still in the previous chain.
        if !counted { DescriptorPool.publishNext(of: t.pool[4], t.pool.iova(at: 5)) }
        try t.channel.append(IOATChain.link(t.pool, 5..<7, counted: counted))
        let before = t.executed
        t.step(untilExecuted: before + 1)
        if !counted { DescriptorPool.publishNext(of: t.pool[6], t.pool.iova(at: 7)) }
        let channel = t.channel
        let chain = IOATChain.link(t.pool, 7..<9, counted: counted)
        try t.stepping { () throws(DriverError) in try channel.append(chain) }
        t.rig.device.runUntilIdle()
        for i in 0..<9 { #expect(t.copied(i), "descriptor \(i)") }
        #expect(t.channel.completionWord.descriptor == t.pool.iova(at: 8))
        #expect(t.channel.fault == nil)
    }

    @Test("1.x on CB ≥ 2: an Append while the engine executes the old tail waits for it, then re-points")
    func appendOnTheTail() throws {
        let t = try IOATStepped("skx", version: .v1_0)
        for i in 0..<4 { t.copy(i) }
        try t.channel.start(IOATChain.link(t.pool, 0..<2, counted: false))
        // The engine has executed the tail (descriptor 1) with next = NULL and is still ACTIVE
        // on it (CDAR) when the client links more: bumping DMACOUNT now would follow NULL.
        let base = t.executed
        t.step(untilExecuted: base + 2)
        #expect(t.rig.state() == .active)
        DescriptorPool.publishNext(of: t.pool[1], t.pool.iova(at: 2))
        let chain = IOATChain.link(t.pool, 2..<4, counted: false)
        let channel = t.channel
        try t.stepping(gate: false) { () throws(DriverError) in try channel.append(chain) }
        t.rig.device.runUntilIdle()
        for i in 0..<4 { #expect(t.copied(i)) }
        #expect(t.channel.fault == nil)
    }

    @Test("1.x: a zero-length copy or NULL linked to a running chain completes with its STATUS and INTERRUPT, also when CB 1.x fetched it before the Append; without an interrupt vector CB 1.x halts and the fault says what to do",
          arguments: [("cb1", NetDMAVersion.v1_1, true), ("cb1", .v1_0, true), ("cb1", .v1_1, false), ("cb1", .v1_0, false),
                      ("skx", .v1_0, true), ("icx", .v1_1, false)])
    func zeroLengthLinkedWhileRunning(_ arg: (profile: String, version: NetDMAVersion, interrupts: Bool)) throws {
        // NetDMA 1.x has the client link the old tail to the new chain before Append. On CB
        // 1.x (no DMACOUNT) the engine follows that link at once, so a descriptor it reaches
        // before the Append is one the provider never saw: it halts with DXSERR, and the
        // provider's ISR completes it. With DMACOUNT the engine stops at the count, and Append
        // conforms the chain first.
        let t = try IOATStepped(arg.profile, version: arg.version, interrupts: arg.interrupts)
        let g = t.channel.interruptGeneration
        let signalled = t.rig.device.statistics.interruptsSignalled
        for i in 0..<2 { t.copy(i) }
        IOATChain.copy(t.pool, 2, from: t.src.iova(at: 2 * IOATStepped.slot), to: t.dst.iova(at: 2 * IOATStepped.slot), 0)
        try t.channel.start(IOATChain.link(t.pool, 0..<2, counted: false))
        let base = t.executed
        t.step(untilExecuted: base + 1)  // d0 done; d1 not fetched yet
        _ = IOATChain.link(t.pool, 2..<3, counted: false)
        DescriptorPool.publishNext(of: t.pool[1], t.pool.iova(at: 2))
        t.rig.device.runUntilIdle()  // the engine runs on before the Append comes
        let channel = t.channel
        let chain = t.pool.chain(from: 2, count: 1)
        let appended = Result { () throws(DriverError) in
            try t.stepping(gate: false) { () throws(DriverError) in try channel.append(chain) }
        }
        if t.rig.device.profile.isV1 && !arg.interrupts {
            try Self.expectFetchedBeforeAppend(t, appended)
            return
        }
        #expect(throws: Never.self) { try appended.get() }
        // (CB 1.x: the ISR restarts the engine on d2; step it until the word shows d2.)
        let d2Done = CompletionWord(descriptor: t.pool.iova(at: 2), status: .idle)
        #expect(ioatWait { t.rig.device.runUntilIdle(); return t.channel.completionWord == d2Done }, "word \(t.channel.completionWord)")
        #expect(t.copied(0) && t.copied(1) && t.untouched(2))
        #expect(t.channel.fault == nil, "\(t.channel.fault.map(\.description) ?? "")")
        #expect(t.channel.state == .running)

        // A NULL of TransferSize 0 with STATUS and INTERRUPT, linked after the Append of d3
        // while the engine has not reached d3's end: exactly one interrupt, for it.
        t.copy(3)
        DescriptorPool.publishNext(of: t.pool[2], t.pool.iova(at: 3))
        // (Not stepped: the engine, DONE on d2, must not reach d3's end before d4 is linked.)
        try channel.append(IOATChain.link(t.pool, 3..<4, counted: false))
        t.pool[4].pointee = Descriptor(transferSize: 0, controlFlags: [.nullTransfer, .statusUpdateOnCompletion, .interruptOnCompletion])
        DescriptorPool.publishNext(of: t.pool[3], t.pool.iova(at: 4))
        t.rig.device.runUntilIdle()
        let d4 = t.pool.chain(from: 4, count: 1)
        try t.stepping(gate: false) { () throws(DriverError) in try channel.append(d4) }
        let d4Done = CompletionWord(descriptor: t.pool.iova(at: 4), status: .idle)
        #expect(ioatWait { t.rig.device.runUntilIdle(); return t.channel.completionWord == d4Done }, "word \(t.channel.completionWord)")
        if arg.interrupts {
            #expect(ioatWait { t.channel.interruptGeneration > g })
            #expect(t.channel.lastInterruptDescriptor == t.pool.iova(at: 4))
        }
        // Later descriptors run; the DPC count is exactly one per interrupt asked for.
        t.copy(5, [.statusUpdateOnCompletion, .interruptOnCompletion])
        DescriptorPool.publishNext(of: t.pool[4], t.pool.iova(at: 5))
        let d5 = IOATChain.link(t.pool, 5..<6, counted: false)
        try t.stepping(gate: false) { () throws(DriverError) in try channel.append(d5) }
        let d5Done = CompletionWord(descriptor: t.pool.iova(at: 5), status: .idle)
        #expect(ioatWait { t.rig.device.runUntilIdle(); return t.channel.completionWord == d5Done }, "word \(t.channel.completionWord)")
        if arg.interrupts {
            #expect(ioatWait { t.channel.interruptGeneration >= g + 2 })
            #expect(t.channel.interruptGeneration == g + 2, "DPCs \(t.channel.interruptGeneration - g), asked for 2")
            #expect(t.channel.lastInterruptDescriptor == t.pool.iova(at: 5))
            // CB 1.x halted on d2 and d4: their error interrupts were the provider's.
            let raised = t.rig.device.statistics.interruptsSignalled - signalled
            #expect(raised == (t.rig.device.profile.isV1 ? 4 : 2), "the engine raised \(raised) interrupts")
        }
        #expect(t.copied(3) && t.copied(5) && t.untouched(2) && t.untouched(4))
        #expect(t.channel.fault == nil, "\(t.channel.fault.map(\.description) ?? "")")
    }

    /// CB 1.x without an interrupt vector: the halt names the descriptor and says what to do;
    /// Append is refused. The remedy (the descriptor as a NULL of size 1) completes.
    private static func expectFetchedBeforeAppend(_ t: IOATStepped, _ appended: Result<Void, DriverError>) throws {
        let channel = t.channel
        t.rig.device.runUntilIdle()
        #expect(t.copied(0) && t.copied(1) && t.untouched(2))
        #expect(throws: DriverError.self) { try appended.get() }
        let fault = t.channel.fault
        #expect(fault?.descriptor == t.pool.iova(at: 2))
        #expect(fault?.causes.contains { $0.contains("NULL_TRANSFER with TransferSize 1") } == true,
                "\(fault.map(\.description) ?? "no fault")")
        #expect(t.channel.completionWord == CompletionWord(descriptor: t.pool.iova(at: 1), status: .halted))
        t.copy(3)
        IOATChain.null(t.pool, 4)
        try t.channel.start(IOATChain.link(t.pool, 3..<4, counted: false))
        _ = IOATChain.link(t.pool, 4..<5, counted: false)
        DescriptorPool.publishNext(of: t.pool[3], t.pool.iova(at: 4))
        t.rig.device.runUntilIdle()
        let remedy = t.pool.chain(from: 4, count: 1)
        try t.stepping(gate: false) { () throws(DriverError) in try channel.append(remedy) }
        t.rig.device.runUntilIdle()
        #expect(t.channel.fault == nil)
        #expect(t.copied(3))
        #expect(t.channel.completionWord == CompletionWord(descriptor: t.pool.iova(at: 4), status: .idle),
                "word \(t.channel.completionWord)")
    }

    @Test("NET_DMA_DESTINATION_DCA_ENABLE is ignored: the engine never sees dest_dca (Start, Append, an edit while suspended)",
          arguments: [("icx", NetDMAVersion.v2_0), ("tbg", .v2_0), ("skx", .v1_0), ("cb1", .v1_1)])
    func destinationDCAIgnored(_ arg: (profile: String, version: NetDMAVersion)) throws {
        // The provider declares no DCA, so NetDMA has it ignore the flag; CBDMA's bit 9 is
        // dest_dca, which a userspace driver must never set (ioat.md §2.2).
        let t = try IOATStepped(arg.profile, version: arg.version)
        let counted = arg.version.countedChains
        for i in 0..<6 { t.copy(i, [.statusUpdateOnCompletion, .destinationDCAEnable]) }
        try t.channel.start(IOATChain.link(t.pool, 0..<3, counted: counted))
        #expect((0..<3).allSatisfy { t.pool[$0].pointee.controlFlags & IOAT.DescriptorControl.destinationDCA == 0 },
                "Start handed dest_dca to the engine")
        t.step(untilExecuted: t.executed + 1)
        let channel = t.channel
        _ = try t.stepping { () throws(DriverError) -> UInt64 in try channel.suspend() }
        t.copy(2, [.statusUpdateOnCompletion, .destinationDCAEnable])  // edited while suspended
        try t.channel.resume()
        #expect(t.pool[2].pointee.controlFlags & IOAT.DescriptorControl.destinationDCA == 0, "Resume handed dest_dca to the engine")
        t.rig.device.runUntilIdle()
        if !counted { DescriptorPool.publishNext(of: t.pool[2], t.pool.iova(at: 3)) }
        let chain = IOATChain.link(t.pool, 3..<6, counted: counted)
        try t.stepping(gate: false) { () throws(DriverError) in try channel.append(chain) }
        #expect((3..<6).allSatisfy { t.pool[$0].pointee.controlFlags & IOAT.DescriptorControl.destinationDCA == 0 },
                "Append handed dest_dca to the engine")
        t.rig.device.runUntilIdle()
        for i in 0..<6 { #expect(t.copied(i), "descriptor \(i)") }
        #expect(t.channel.fault == nil)
        #expect(t.channel.completionWord == CompletionWord(descriptor: t.pool.iova(at: 5), status: .idle))
    }
}
