import CVFIO
import Platform
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// A channel's state as the NetDMA interface tracks it (netdma.md §11.2).
///
/// "Running-idle" (the engine reached the end of the chain) is not a separate state: it is
/// ``running`` with status Idle in the completion word.
public enum ChannelState: UInt8, Sendable, Hashable, CustomStringConvertible {
    /// Fresh from allocation or Reset: only Start (or Free, Reset) is allowed.
    case allocated = 0
    /// Started or resumed: Append, Start, Suspend, Abort, Reset and (when drained) Free.
    case running = 1
    /// Suspended: only Resume; the client may edit the chain.
    case suspended = 2
    /// Aborted or halted by a device error: Start (required before Append), Reset or Free.
    case halted = 3
    /// Freed: nothing is allowed.
    case freed = 4

    public var description: String {
        switch self {
        case .allocated: "allocated"
        case .running: "running"
        case .suspended: "suspended"
        case .halted: "halted"
        case .freed: "freed"
        }
    }
}

/// What one DPC (`NetDmaInterruptDpc`) told a channel's client.
public struct ChannelCompletion: Sendable, Hashable {
    /// The IOVA of the last completed descriptor, or 0 when the interrupt was not a completion.
    public var lastCompleted: UInt64
    /// Set when the channel halted with a device error.
    public var fault: ChannelFault?
    /// The channel's interrupt count after this DPC (see ``NetDMAChannel/interruptGeneration``).
    public var generation: UInt64
}

/// A DMA channel allocated to a client: the client side of `ProviderXxxDma`, with the NetDMA
/// rules enforced.
///
/// The channel owns its 64-bit completion word in DMA memory and a reserved NULL descriptor
/// used to re-seed the engine after a power cycle. Every call checks the state machine of
/// netdma.md §11.2 and throws ``DriverError`` `.invalidState` naming the call and the state.
///
/// Control calls (Start, Suspend, Resume, Abort, Reset, Free) are serialised by a lock and may
/// run on any thread. ``append(_:)`` is the hot path: it takes no lock and does not allocate
/// (one client submits to a channel at a time, as NetDMA requires).
public final class NetDMAChannel: @unchecked Sendable {
    // @unchecked: `word` and `nullDescriptor` point into `block`, which this object owns for
    // its whole life; the rest of the mutable state is in atomics and Mutexes.

    /// The provider the channel belongs to.
    public let provider: ProviderHandle
    /// The hardware channel (or work queue) index within the engine.
    public let index: Int
    /// The CPU the provider tied the channel's interrupt and DPC to (`CpuNumber`).
    public let cpu: Int
    /// The priority asked for at allocation (`ChannelPriority`).
    public let priority: Int
    /// The provider's NetDMA version, which decides the chain format.
    public let providerVersion: NetDMAVersion
    /// The provider's flags (fill, page break, …).
    public let providerFlags: ProviderFlags
    /// The optional callbacks the provider implements.
    public let callbacks: ProviderCallbacks
    /// The most bytes one descriptor may carry (`MaximumTransferSize`).
    public let maximumTransferSize: Int
    /// The highest IOVA the engine can reach (`MaximumAddressSpace`).
    public let maximumAddress: UInt64
    /// The DMA memory of the provider's address space (for pools and buffers).
    public let dmaMemory: DMAMemory
    /// The IOVA of the completion word (`CompletionPhysicalAddress`).
    public let completionIOVA: UInt64

    /// The provider's channel.
    ///
    /// Hot-path calls go through this strong `let` of a final class: the compiler borrows it
    /// in place from the guaranteed `self`, so an Append does no retain/release (checked in the
    /// release build's disassembly). An `unowned(unsafe)` copy was tried and is worse: the
    /// compiler retains an unmanaged existential around each call to keep it alive.
    let engine: any ProviderChannel
    /// ``ProviderChannel/completesByPolling``: a polling client runs the provider's completion
    /// processing first (``pollProvider()``).
    let providerPolls: Bool
    /// The provider's record (strong: a channel keeps it alive; the record drops its channels
    /// when they are freed, so there is no lasting cycle).
    let record: ProviderRecord

    private let block: DMABuffer
    /// The completion word (`CompletionVirtualAddress`), read with one acquire load.
    let word: UnsafeMutablePointer<Atomic<UInt64>>
    /// The reserved NULL descriptor (64-byte aligned, after the completion word's cache line).
    let nullDescriptor: UnsafeMutablePointer<Descriptor>
    let nullDescriptorIOVA: UInt64

    private let stateRaw = Atomic<UInt8>(ChannelState.allocated.rawValue)
    private let control = Mutex<Void>(())
    // The last chain given to Start or Append (for drain and power-up), relaxed stores.
    private let lastChainIOVA = Atomic<UInt64>(0)
    private let lastChainCount = Atomic<Int>(0)
    /// Set after a NULL re-Start: the engine's tail is the NULL descriptor (1.x Append patches it).
    private let reseeded = Atomic<Bool>(false)
    /// Set by the DPC when the channel halted with a fault; cleared by Start and by ``CopyQueue``.
    let faultPending = Atomic<Bool>(false)
    /// Set by the ISR when it reported a fault (the engine's error interrupt was consumed);
    /// cleared by Start and Reset. See ``consumeErrorInterrupt()``.
    private let errorInterruptSeen = Atomic<Bool>(false)
    /// Odd while an Append is between its power check and its end (single writer: the client;
    /// relaxed stores, no read-modify-write). PowerDown and PowerUp wait for it to be even.
    private let appendSequence = Atomic<UInt64>(0)
    @exclusivity(unchecked) private var appendCount: UInt64 = 0
    /// The last descriptor seen completed when PowerDown drained the channel (0: none, or
    /// nothing submitted): where the PowerUp re-Start continues.
    private var drainedTail: UInt64 = 0
    private let lastInterruptCompleted = Atomic<UInt64>(0)
    private let generation = Atomic<UInt64>(0)
    private let waiters = Mutex<Waiters>(Waiters())
    private let handler = Mutex<(@Sendable (ChannelCompletion) -> Void)?>(nil)
    /// The futex word of ``blockUntilInterrupt(after:timeout:spin:)``: the DPC bumps it after
    /// the generation (and a free bumps it too), and wakes it only when a thread sleeps there.
    private let wakeWord: UnsafeMutablePointer<Atomic<UInt32>>
    private let sleepers = Atomic<Int>(0)
    /// How long recent blocking waits took, in nanoseconds (moving average, capped at the spin
    /// asked for): the adaptive part of the spin.
    private let recentWait = Atomic<Int>(0)

    private struct Waiters {
        var nextID: UInt64 = 0
        var list: [(id: UInt64, after: UInt64, continuation: CheckedContinuation<UInt64?, Never>)] = []
        /// Waits in progress (listed or not yet).
        var waiting: Set<UInt64> = []
        /// Waits whose timer fired before they were listed.
        var expired: Set<UInt64> = []
    }

    init(record: ProviderRecord, provider: ProviderHandle, block: consuming DMABuffer, providerChannel: any ProviderChannel,
         cpu: Int, priority: Int, attributes: ProviderAttributes) {
        self.record = record
        self.provider = provider
        self.engine = providerChannel
        providerPolls = providerChannel.completesByPolling
        self.index = providerChannel.index
        self.cpu = cpu
        self.priority = priority
        let c = record.provider.characteristics
        providerVersion = c.version
        providerFlags = c.flags
        callbacks = c.callbacks
        maximumTransferSize = attributes.maximumTransferSize
        maximumAddress = attributes.maximumAddress
        dmaMemory = record.provider.dmaMemory
        word = block.base.bindMemory(to: Atomic<UInt64>.self, capacity: 1)
        nullDescriptor = (block.base + Self.nullDescriptorOffset).bindMemory(to: Descriptor.self, capacity: 1)
        nullDescriptorIOVA = block.iova + UInt64(Self.nullDescriptorOffset)
        completionIOVA = block.iova
        self.block = block
        wakeWord = .allocate(capacity: 1)
        wakeWord.initialize(to: Atomic(0))
    }

    deinit {
        wakeWord.deinitialize(count: 1)
        wakeWord.deallocate()
    }

    /// Bytes of DMA memory a channel needs: the completion word's cache line and the NULL descriptor.
    static let blockLength = 128
    static let nullDescriptorOffset = 64

    // MARK: - state

    /// The channel's state: the interface's record, refined by the completion word (a device
    /// error halts a running channel).
    public var state: ChannelState {
        let s = ChannelState(rawValue: stateRaw.load(ordering: .acquiring))!
        if s == .running && word.pointee.load(ordering: .acquiring) & CompletionWord.statusMask
            == UInt64(TransferStatus.halted.rawValue) {
            return .halted
        }
        return s
    }

    /// The completion word, read with one 64-bit acquire load.
    @inlinable
    public var completionWord: CompletionWord { CompletionWord(rawValue: loadCompletionWord()) }

    @usableFromInline
    func loadCompletionWord() -> UInt64 { word.pointee.load(ordering: .acquiring) }

    /// On a provider whose engine does not write the completion word (DSA), turns what the
    /// engine reported into the word on this thread (``ProviderChannel/pollCompletions()``);
    /// nothing otherwise. Hot path: one branch on a constant when there is nothing to do.
    @inline(__always)
    func pollProvider() {
        if providerPolls { engine.pollCompletions() }
    }

    /// Whether chains are counted (2.0 provider) rather than NULL-terminated (1.x).
    public var countedChains: Bool { providerVersion.countedChains }

    /// The eventfd the channel's interrupt signals, if it has one.
    public var interruptEventFD: Int32? { engine.interruptEventFD }

    /// Why the channel halted, if it did (the provider's decoded error registers).
    public var fault: ChannelFault? { engine.fault }

    // MARK: - NetDMA calls

    /// `ProviderStartDma`: process `chain`. Allowed when allocated, running (the current
    /// descriptor finishes, the rest of the old chain is dropped) or halted. Writes Armed to the
    /// completion word first. 2.0: `chain.count` is exact; 1.x: the chain ends in NULL.
    ///
    /// - Throws: `.invalidState` in any other state or while the provider is powered down;
    ///   `.invalidArgument` for an empty chain; the provider's error.
    public func start(_ chain: DescriptorChain) throws(DriverError) {
        try control.withLock { _ throws(DriverError) in
            let s = state
            guard s == .allocated || s == .running || s == .halted else {
                throw Self.refused("Start", s, allowed: "allocated, running or halted")
            }
            try checkPowered("Start")
            guard chain.count >= 1 else { throw Self.emptyChain("Start", chain.count) }
            try startLocked(chain)
        }
    }

    private func startLocked(_ chain: DescriptorChain, keepWord: Bool = false) throws(DriverError) {
        // First, before the word is re-armed: a provider whose ISR writes the Halted word
        // (IOAT on CB 1.x with an interrupt vector) has then written it.
        consumeErrorInterrupt()
        if !keepWord {
            word.pointee.store(UInt64(TransferStatus.armed.rawValue), ordering: .releasing)
            // What an interrupt reported completing belongs to the old chain: a stale address
            // equal to the new chain's tail would make a drain end early.
            lastInterruptCompleted.store(0, ordering: .releasing)
        }
        reseeded.store(false, ordering: .relaxed)
        try engine.start(chain)
        errorInterruptSeen.store(false, ordering: .releasing)
        // After the provider cleared its fault: a DPC (which runs under the same lock) either
        // ran before and its flag is dropped here, or runs after and sees no fault.
        faultPending.store(false, ordering: .releasing)
        noteChain(chain)
        stateRaw.store(ChannelState.running.rawValue, ordering: .releasing)
    }

    /// `ProviderAppendDma`: add `chain` after the last submitted descriptor. 1.x: the old
    /// tail's `next` must already point at `chain` (use ``DescriptorPool/publishNext(of:_:)``).
    /// 2.0: the old tail's `next` already pointed at `chain`'s first descriptor.
    ///
    /// Hot path: no lock, no allocation, no retain/release (error paths excepted).
    ///
    /// - Throws: `.invalidState` unless running (Append after Allocate, Abort, Reset or a halt
    ///   needs a Start first), or while powered down; `.invalidArgument` for an empty chain;
    ///   the provider's error.
    public func append(_ chain: DescriptorChain) throws(DriverError) {
        let s = stateRaw.load(ordering: .acquiring)
        guard s == ChannelState.running.rawValue else { throw Self.refused("Append", ChannelState(rawValue: s)!, allowed: "running") }
        guard word.pointee.load(ordering: .acquiring) & CompletionWord.statusMask != UInt64(TransferStatus.halted.rawValue) else {
            throw Self.refused("Append", .halted, allowed: "running")
        }
        guard chain.count >= 1 else { throw Self.emptyChain("Append", chain.count) }
        // Announce the Append before the power check: PowerDown and PowerUp wait for an
        // Append in progress (see `waitForAppend`). Two relaxed stores, one load.
        appendCount &+= 1
        appendSequence.store(appendCount, ordering: .relaxed)
        defer {
            appendCount &+= 1
            appendSequence.store(appendCount, ordering: .releasing)
        }
        if record.poweredDown.load(ordering: .acquiring) { throw Self.poweredDownError("Append") }
        if reseeded.load(ordering: .relaxed) {
            // The engine's tail is the NULL descriptor of a power-up re-Start: link it (1.x).
            if !providerVersion.countedChains { DescriptorPool.publishNext(of: nullDescriptor, chain.iova) }
            reseeded.store(false, ordering: .relaxed)
        }
        do {
            try engine.append(chain)
        } catch {
            guard error.code == .contextLost, providerVersion == .v1_0 else { throw error }
            try reseedAfterContextLoss(chain)
        }
        noteChain(chain)
    }

    /// NetDMA 1.0 power handling (netdma.md §10): the provider lost its context and asks for a
    /// Start on a NULL descriptor; the NULL descriptor leads into the chain being appended.
    @inline(never)  // cold: keeps the lock out of the Append hot path
    private func reseedAfterContextLoss(_ chain: DescriptorChain) throws(DriverError) {
        try control.withLock { _ throws(DriverError) in
            nullDescriptor.pointee = Descriptor(controlFlags: [.nullTransfer, .statusUpdateOnCompletion],
                                                next: chain.iova)
            try startLocked(DescriptorChain(address: nullDescriptor, iova: nullDescriptorIOVA, count: chain.count + 1))
        }
    }

    /// `ProviderSuspendDma`: finish the current descriptor and halt; returns the IOVA of the last
    /// descriptor processed (0 if none). The client may then edit the chain and ``resume()``.
    ///
    /// - Throws: `.invalidState` unless running; `.unsupported` when the provider has no Suspend.
    public func suspend() throws(DriverError) -> UInt64 {
        try control.withLock { _ throws(DriverError) in
            let s = state
            guard s == .running else { throw Self.refused("Suspend", s, allowed: "running") }
            guard callbacks.contains(.suspendResume) else { throw Self.missing("SuspendDma") }
            try checkPowered("Suspend")
            let last = try engine.suspend()
            stateRaw.store(ChannelState.suspended.rawValue, ordering: .releasing)
            return last
        }
    }

    /// `ProviderResumeDma`: the engine re-reads the last processed descriptor's `next` and continues.
    ///
    /// - Throws: `.invalidState` unless suspended.
    public func resume() throws(DriverError) {
        try control.withLock { _ throws(DriverError) in
            let s = state
            guard s == .suspended else { throw Self.refused("Resume", s, allowed: "suspended") }
            try checkDeviceOn("Resume")
            try engine.resume()
            stateRaw.store(ChannelState.running.rawValue, ordering: .releasing)
        }
    }

    /// `ProviderAbortDma`: stop at once (the current copy may be partial), abandon the rest,
    /// status Halted. The next call must be Start (or Reset, Free).
    ///
    /// - Throws: `.invalidState` unless running; `.unsupported` when the provider has no Abort.
    public func abort() throws(DriverError) {
        try control.withLock { _ throws(DriverError) in
            let s = state
            guard s == .running else { throw Self.refused("Abort", s, allowed: "running") }
            guard callbacks.contains(.abort) else { throw Self.missing("AbortDma") }
            try checkDeviceOn("Abort")
            try engine.abort()
            stateRaw.store(ChannelState.halted.rawValue, ordering: .releasing)
        }
    }

    /// `ProviderResetChannel`: as Abort, then back to the post-allocation state; the provider
    /// never touches a previously submitted descriptor again.
    ///
    /// - Throws: `.invalidState` when suspended or freed; `.unsupported` without ResetChannel.
    public func reset() throws(DriverError) {
        try control.withLock { _ throws(DriverError) in
            let s = state
            guard s == .allocated || s == .running || s == .halted else {
                throw Self.refused("Reset", s, allowed: "allocated, running or halted")
            }
            guard callbacks.contains(.reset) else { throw Self.missing("ResetChannel") }
            try checkDeviceOn("Reset")
            consumeErrorInterrupt()
            try engine.reset()
            errorInterruptSeen.store(false, ordering: .releasing)
            noteChain(nil)
            lastInterruptCompleted.store(0, ordering: .releasing)
            reseeded.store(false, ordering: .relaxed)
            stateRaw.store(ChannelState.allocated.rawValue, ordering: .releasing)
        }
    }

    /// `ProviderFreeDmaChannel`: release the channel. Nothing may be outstanding: a running
    /// channel must have completed its last submitted descriptor (seen in the completion word or
    /// an interrupt); otherwise Abort or Reset it first.
    ///
    /// - Throws: `.invalidState` when suspended, freed, or running with work outstanding.
    public func free() throws(DriverError) {
        try control.withLock { _ throws(DriverError) in
            let s = state
            guard s == .allocated || s == .running || s == .halted else {
                throw Self.refused("Free", s, allowed: "allocated, running (drained) or halted")
            }
            try checkDeviceOn("Free")
            if s == .running && hasOutstandingWork() {
                throw DriverError(.invalidState,
                    "Free is not allowed on a running channel with descriptors outstanding; wait for the last one to complete (ask for status or an interrupt on it), or Abort/Reset first.")
            }
            stateRaw.store(ChannelState.freed.rawValue, ordering: .releasing)
        }
        finishFree()
        record.channelFreed(self)
    }

    /// Frees without state checks (ProviderStop, after draining or aborting).
    func forceFree() {
        let freeing = control.withLock { _ in
            guard stateRaw.load(ordering: .acquiring) != ChannelState.freed.rawValue else { return false }
            stateRaw.store(ChannelState.freed.rawValue, ordering: .releasing)
            return true
        }
        if freeing { finishFree() }
    }

    /// The rest of Free, once the state says freed (every later call is refused and a DPC does
    /// nothing). The interrupt thread is let go of the channel first, outside the channel's
    /// lock: it runs DPCs itself, and a DPC waiting for that lock would never acknowledge.
    private func finishFree() {
        if engine.interruptEventFD != nil { record.dispatcher?.remove(self) }
        control.withLock { _ in engine.free() }
        wakeBlockedWaiters()
        wakeWaiters(generation: generation.load(ordering: .acquiring), timedOut: true)
    }

    // MARK: - completions

    /// Sets the closure the DPC calls after retiring descriptors (on the channel's DPC CPU).
    /// It must not block; it may call any channel method.
    public func setCompletionHandler(_ handler: (@Sendable (ChannelCompletion) -> Void)?) {
        self.handler.withLock { $0 = handler }
    }

    /// How many DPCs have run for this channel. Read it before submitting, then wait with
    /// ``waitForInterrupt(after:timeout:)`` so no interrupt is missed.
    public var interruptGeneration: UInt64 { generation.load(ordering: .acquiring) }

    /// The last completed descriptor an interrupt reported (0 before any).
    public var lastInterruptDescriptor: UInt64 { lastInterruptCompleted.load(ordering: .acquiring) }

    /// Waits until a DPC runs after `generation` and returns the new generation.
    ///
    /// - Throws: `.unsupported` when the channel has no interrupt; `.timeout` after `timeout`;
    ///   `.invalidState` when the channel is freed while waiting.
    public func waitForInterrupt(after generation: UInt64, timeout: Duration) async throws(DriverError) -> UInt64 {
        guard engine.interruptEventFD != nil else {
            throw DriverError(.unsupported, "Channel \(index) has no interrupt vector; poll the completion word instead.")
        }
        let id = waiters.withLock { w in
            w.nextID += 1
            w.waiting.insert(w.nextID)
            return w.nextID
        }
        let timer = Task { [self] in
            guard (try? await Task.sleep(for: timeout)) != nil else { return }  // cancelled
            expire(id)
        }
        let result: UInt64? = await withCheckedContinuation { (c: CheckedContinuation<UInt64?, Never>) in
            // The generation is read under the waiters' lock: a DPC bumps it before it takes
            // that lock to wake waiters, so either this read sees the bump or the DPC sees this
            // waiter in the list (read outside the lock, a DPC running in between was lost
            // and the wait ran into its timeout).
            let (resumeNow, g): (Bool, UInt64) = waiters.withLock { w in
                let g = self.generation.load(ordering: .acquiring)
                if g > generation || self.stateRaw.load(ordering: .acquiring) == ChannelState.freed.rawValue { return (true, g) }
                // The timer fired before this waiter was listed: time is up.
                if w.expired.remove(id) != nil { return (true, generation) }
                w.list.append((id, generation, c))
                return (false, g)
            }
            if resumeNow { c.resume(returning: g > generation ? g : nil) }
        }
        timer.cancel()
        waiters.withLock { w in
            w.waiting.remove(id)
            w.expired.remove(id)
        }
        guard let result else {
            if stateRaw.load(ordering: .acquiring) == ChannelState.freed.rawValue {
                throw DriverError(.invalidState, "Channel \(index) was freed while waiting for an interrupt.")
            }
            throw DriverError(.timeout, "No interrupt on channel \(index) within \(timeout); did the last descriptor ask for one?")
        }
        return result
    }

    /// Blocks the calling thread until a DPC runs after `generation` and returns the new
    /// generation: the wait of polling code (DPDK, SPDK) that has nothing else to do, without an
    /// executor in between. The DPC wakes the thread itself.
    ///
    /// The thread first spins on the generation (waking a sleeping thread costs a scheduler
    /// round trip, tens of microseconds across CPUs in a VM): about twice as long as recent
    /// waits took, at most `spin`. Then it sleeps on a futex. Pass `spin: .zero` to sleep at once.
    ///
    /// - Throws: `.unsupported` when the channel has no interrupt; `.timeout` after `timeout`;
    ///   `.invalidState` when the channel is freed while waiting.
    public func blockUntilInterrupt(after generation: UInt64, timeout: Duration,
                                    spin: Duration = .microseconds(50)) throws(DriverError) -> UInt64 {
        guard engine.interruptEventFD != nil else {
            throw DriverError(.unsupported, "Channel \(index) has no interrupt vector; poll the completion word instead.")
        }
        let start = ContinuousClock.now
        let deadline = start + timeout
        let spinLimit = Self.nanoseconds(spin)
        let recent = recentWait.load(ordering: .relaxed)
        let budget = recent == 0 ? spinLimit : min(spinLimit, 2 * recent + 2_000)
        var g = self.generation.load(ordering: .acquiring)
        var spins = 0
        while g <= generation && budget > 0 && stateRaw.load(ordering: .relaxed) != ChannelState.freed.rawValue {
            spins &+= 1
            if spins & 31 == 0 && Self.nanoseconds(ContinuousClock.now - start) >= budget { break }
            cvfio_pause()
            g = self.generation.load(ordering: .acquiring)
        }
        while g <= generation {
            // Dekker with the DPC (runDPC): the sleeper count goes up before the generation is
            // read, and the DPC bumps the generation and the word before it reads the count.
            sleepers.add(1, ordering: .sequentiallyConsistent)
            let seen = wakeWord.pointee.load(ordering: .sequentiallyConsistent)
            g = self.generation.load(ordering: .sequentiallyConsistent)
            let freed = stateRaw.load(ordering: .sequentiallyConsistent) == ChannelState.freed.rawValue
            let left = deadline - ContinuousClock.now
            if g <= generation && !freed && left > .zero {
                _ = cvfio_futex_wait(UnsafeMutableRawPointer(wakeWord).assumingMemoryBound(to: UInt32.self), seen,
                                     Self.nanoseconds(left))
                g = self.generation.load(ordering: .acquiring)
            }
            sleepers.subtract(1, ordering: .relaxed)
            if g > generation { break }
            if freed {
                throw DriverError(.invalidState, "Channel \(index) was freed while waiting for an interrupt.")
            }
            if left <= .zero {
                throw DriverError(.timeout, "No interrupt on channel \(index) within \(timeout); did the last descriptor ask for one?")
            }
        }
        if spinLimit > 0 {
            let took = min(Self.nanoseconds(ContinuousClock.now - start), spinLimit)
            let avg = recentWait.load(ordering: .relaxed)
            recentWait.store(max(1, avg + (took - avg) / 8), ordering: .relaxed)
        }
        return g
    }

    private static func nanoseconds(_ d: Duration) -> Int {
        let c = d.components
        return max(0, Int(clamping: c.seconds) &* 1_000_000_000 &+ Int(c.attoseconds / 1_000_000_000))
    }

    /// Wakes threads in ``blockUntilInterrupt(after:timeout:spin:)`` (a system call only when
    /// one sleeps).
    private func wakeBlockedWaiters() {
        wakeWord.pointee.add(1, ordering: .sequentiallyConsistent)
        if sleepers.load(ordering: .sequentiallyConsistent) > 0 {
            _ = cvfio_futex_wake(UnsafeMutableRawPointer(wakeWord).assumingMemoryBound(to: UInt32.self), Int32.max)
        }
    }

    private func expire(_ id: UInt64) {
        let c = waiters.withLock { w -> CheckedContinuation<UInt64?, Never>? in
            guard let i = w.list.firstIndex(where: { $0.id == id }) else {
                // Not listed yet: the waiter finds its time up when it lists itself. (A wait
                // that already ended is no longer `waiting`.)
                if w.waiting.contains(id) { w.expired.insert(id) }
                return nil
            }
            return w.list.remove(at: i).continuation
        }
        c?.resume(returning: nil)
    }

    private func wakeWaiters(generation g: UInt64, timedOut: Bool) {
        let ready = waiters.withLock { w -> [(id: UInt64, after: UInt64, continuation: CheckedContinuation<UInt64?, Never>)] in
            if w.list.isEmpty { return [] }
            let ready = w.list.filter { timedOut || $0.after < g }
            w.list.removeAll { timedOut || $0.after < g }
            return ready
        }
        for r in ready { r.continuation.resume(returning: timedOut ? nil : g) }
    }

    /// The ISR half, called on the interrupt thread with the number of interrupts the eventfd
    /// counted.
    func serviceInterrupt(signals: UInt64 = 1) -> InterruptReport {
        let report = engine.serviceInterrupt(signals: signals)
        // A fault, or an error the provider handled itself: the engine's error interrupt is taken.
        if report.fault != nil || !report.queuesDPC { errorInterruptSeen.store(true, ordering: .releasing) }
        return report
    }

    /// Before a Start or Reset of a channel that halted with a fault: waits (bounded by
    /// ``errorInterruptWait``) until the interrupt thread has taken the engine's error interrupt.
    ///
    /// An engine with an interrupt vector raises one when it halts with an error (CBDMA with
    /// CHANCTRL.ERR_INT_EN; the DSA provider and the fixture signal their eventfd), and it
    /// does so after the completion word reads Halted. A client that saw the failure by
    /// polling and starts again at once would otherwise have that interrupt land on its new
    /// chain: its wait would end on an interrupt it never asked for, and the eventfd would
    /// count one more than it submitted (the VFIO selftest's `mix_and_match`). Once the ISR has
    /// taken it, the DPC that follows reports a fault this Start or Reset cleared, and
    /// ``runDPC(_:)`` drops it. Cold: only after a fault.
    private func consumeErrorInterrupt() {
        guard engine.interruptEventFD != nil, engine.fault != nil else { return }
        let deadline = ContinuousClock.now.advanced(by: Self.errorInterruptWait)
        var n = 0
        while !errorInterruptSeen.load(ordering: .acquiring) && ContinuousClock.now < deadline {
            n += 1
            if n < 64 {
                sched_yield()
            } else {
                var ts = timespec(tv_sec: 0, tv_nsec: 10_000)
                nanosleep(&ts, nil)
            }
        }
    }

    /// How long a Start or Reset after a fault waits for the interrupt thread to take the
    /// engine's error interrupt (an engine that raises none costs this once per recovery).
    static let errorInterruptWait: Duration = .milliseconds(100)

    /// `NetDmaInterruptDpc`: re-arm, retire descriptors up to the last completed one, note a
    /// halt, then tell the client. Runs on the interrupt thread pinned to ``cpu``.
    func runDPC(_ report: InterruptReport) {
        let g: UInt64? = control.withLock { _ in
            guard stateRaw.load(ordering: .acquiring) != ChannelState.freed.rawValue else { return nil }
            engine.rearmInterrupt()
            // The error interrupt of a fault that a Start or Reset already cleared (see
            // consumeErrorInterrupt): consumed, it is no event of the current chain.
            if report.fault != nil && engine.fault == nil { return nil }
            if report.lastCompleted != 0 { lastInterruptCompleted.store(report.lastCompleted, ordering: .releasing) }
            // A fault that a Start or Reset already cleared is stale.
            if report.fault != nil, engine.fault != nil {
                if stateRaw.load(ordering: .acquiring) == ChannelState.running.rawValue {
                    stateRaw.store(ChannelState.halted.rawValue, ordering: .releasing)
                }
                faultPending.store(true, ordering: .releasing)
            }
            return generation.add(1, ordering: .sequentiallyConsistent).newValue
        }
        guard let g else { return }
        wakeBlockedWaiters()
        wakeWaiters(generation: g, timedOut: false)
        if let h = handler.withLock({ $0 }) {
            h(ChannelCompletion(lastCompleted: report.lastCompleted, fault: report.fault, generation: g))
        }
    }

    // MARK: - drain and power

    private func noteChain(_ chain: DescriptorChain?) {
        lastChainIOVA.store(chain?.iova ?? 0, ordering: .relaxed)
        lastChainCount.store(chain?.count ?? 0, ordering: .relaxed)
    }

    /// The last descriptor submitted and its `next`: the tail of the last chain, found by
    /// walking it through the DMA memory table, each `next` read under the table's lock (never
    /// through a stored pointer: the client may release the descriptors at any moment, on
    /// another thread, and then nothing of them can be outstanding).
    private func submittedTail() -> (iova: UInt64, next: UInt64)? {
        let count = lastChainCount.load(ordering: .relaxed)
        var iova = lastChainIOVA.load(ordering: .relaxed)
        guard count > 0, var next = nextField(ofDescriptorAt: iova) else { return nil }
        var steps = 1
        while !(providerVersion.countedChains && steps >= count) && steps <= 1 << 20 && next != 0 {
            guard let after = nextField(ofDescriptorAt: next) else { break }
            iova = next
            next = after
            steps += 1
        }
        return (iova, next)
    }

    /// The `next` of the descriptor at `iova`; nil when `iova` is not a descriptor's address
    /// (not 64-byte aligned) or not mapped now.
    private func nextField(ofDescriptorAt iova: UInt64) -> UInt64? {
        guard iova & 63 == 0 else { return nil }
        return dmaMemory.loadUInt64(atIOVA: iova &+ UInt64(MemoryLayout<Descriptor>.offset(of: \.next)!))
    }

    /// Whether the last submitted descriptor has not been seen completing (control path).
    func hasOutstandingWork() -> Bool {
        // A suspended channel is not drained: PowerDown must wait for its Resume (the engine
        // loses the suspended chain in D3, and a Resume there fails).
        if state == .suspended { return true }
        guard state == .running, let tail = submittedTail() else { return false }
        let w = completionWord
        if w.status != .armed && w.descriptor == tail.iova { return false }
        return lastInterruptCompleted.load(ordering: .acquiring) != tail.iova
    }

    /// Waits (bounded) until nothing is outstanding; true when drained.
    func waitUntilDrained(deadline: ContinuousClock.Instant) -> Bool {
        while hasOutstandingWork() {
            if ContinuousClock.now >= deadline { return false }
            var ts = timespec(tv_sec: 0, tv_nsec: 50_000)
            nanosleep(&ts, nil)
        }
        return true
    }

    /// Waits (bounded) until no Append is between its power check and its end; true when none
    /// is. PowerDown calls it after raising the power flag (an Append that read the flag
    /// before is let finish, so its chain drains too), PowerUp before re-Starting.
    func waitForAppend(deadline: ContinuousClock.Instant) -> Bool {
        while appendSequence.load(ordering: .acquiring) & 1 != 0 {
            if ContinuousClock.now >= deadline { return false }
            sched_yield()
        }
        return true
    }

    /// PowerDown, once the channel drained: waits for control calls in progress (they hold
    /// the lock; later ones see the power flag and are refused) and notes where the chain
    /// stands, so that PowerUp continues after the last descriptor that completed.
    func noteDrained() {
        control.withLock { _ in
            drainedTail = state == .running ? (submittedTail()?.iova ?? 0) : 0
        }
    }

    /// Takes and drops the control lock: every control call that started before has ended.
    func controlBarrier() {
        control.withLock { _ in }
    }

    /// PowerUp (1.1+): re-Start a running channel with a NULL descriptor that leads to the
    /// first descriptor not yet processed: the one after the tail that PowerDown saw complete.
    /// An Append whose power check raced with PowerDown (its chain reached a provider being
    /// powered down) is thus run, never skipped. A channel that halted (a device fault, an
    /// Abort) stays halted with its fault: the client's Start recovers it.
    func reseedAfterPowerUp() throws(DriverError) {
        try control.withLock { _ throws(DriverError) in
            defer { drainedTail = 0 }
            guard state == .running, !faultPending.load(ordering: .acquiring) else { return }
            var next: UInt64 = 0
            var count = 1
            let tail = submittedTail()
            if drainedTail != 0, let n = nextField(ofDescriptorAt: drainedTail) {
                next = n
                if providerVersion.countedChains, let tail, tail.iova != drainedTail {
                    count += steps(from: next, to: tail.iova)
                }
            } else if providerVersion.countedChains, let tail {
                next = tail.next
            }
            // No status update: the completion word keeps naming the client's last completed
            // descriptor, which the client may not have read yet (overwriting it with the NULL
            // descriptor's address would hide those completions for good).
            nullDescriptor.pointee = Descriptor(controlFlags: [.nullTransfer], next: next)
            let chain = DescriptorChain(address: nullDescriptor, iova: nullDescriptorIOVA, count: count)
            let noted = (lastChainIOVA.load(ordering: .relaxed), lastChainCount.load(ordering: .relaxed))
            try startLocked(chain, keepWord: true)
            if count == 1 {
                // Nothing but the NULL descriptor: the submitted tail (what a drain waits for)
                // is still the client's.
                lastChainIOVA.store(noted.0, ordering: .relaxed)
                lastChainCount.store(noted.1, ordering: .relaxed)
            }
            // 1.x: a NULL descriptor that ends the chain is the tail the next Append links.
            reseeded.store(providerVersion.countedChains || next == 0, ordering: .relaxed)
        }
    }

    /// Descriptors from `first` up to and including `last`, following `next` (counted chains).
    private func steps(from first: UInt64, to last: UInt64) -> Int {
        var iova = first
        var n = 1
        while iova != last && n <= 1 << 16 {
            guard let following = nextField(ofDescriptorAt: iova) else { break }
            iova = following
            n += 1
        }
        return n
    }

    /// Aborts or resets a channel that did not drain (ProviderStop); true when it stopped.
    func stopForcibly() -> Bool {
        control.withLock { _ in
            if callbacks.contains(.abort), (try? engine.abort()) != nil { return true }
            if callbacks.contains(.reset), (try? engine.reset()) != nil { return true }
            return false
        }
    }

    // MARK: - errors (cold)

    @inline(never)
    static func refused(_ call: String, _ state: ChannelState, allowed: String) -> DriverError {
        DriverError(.invalidState, "\(call) is not allowed on a channel in state \(state) (allowed: \(allowed)).")
    }

    /// A chain of `count` < 1 descriptors (2.0: nothing to add to the count, and providers
    /// would take the chain's first descriptor for its tail; 1.x: Start requires one too).
    @inline(never)
    static func emptyChain(_ call: String, _ count: Int) -> DriverError {
        DriverError(.invalidArgument, "\(call) needs a chain of at least one descriptor, got count \(count); pass the number of descriptors in the chain (a NULL descriptor if there is nothing to do).")
    }

    @inline(never)
    static func missing(_ callback: String) -> DriverError {
        DriverError(.unsupported, "The provider does not implement \(callback); the channel cannot do this.")
    }

    @inline(never)
    static func poweredDownError(_ call: String) -> DriverError {
        DriverError(.invalidState, "\(call) is not allowed while the provider is powered down; wait for the PowerUp notification.")
    }

    /// New work (Start, Suspend) is refused from the start of PowerDown until PowerUp.
    private func checkPowered(_ call: String) throws(DriverError) {
        if record.poweredDown.load(ordering: .acquiring) { throw Self.poweredDownError(call) }
    }

    /// Calls that only stop or continue work already submitted (Resume, Abort, Reset, Free)
    /// are allowed while PowerDown drains, and refused once the device may be off.
    private func checkDeviceOn(_ call: String) throws(DriverError) {
        if record.deviceOff.load(ordering: .acquiring) { throw Self.poweredDownError(call) }
    }
}
