import CVFIO
import Hardware
import NetDMA
import Platform
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// The NetDMA constants ``DSAChannel``'s walk tests on every descriptor, copied once.
private struct WalkBits {
    let interruptOnCompletion = ControlFlags.interruptOnCompletion.rawValue
    let statusUpdateOnCompletion = ControlFlags.statusUpdateOnCompletion.rawValue
    let nullTransfer = ControlFlags.nullTransfer.rawValue
    let serializeTransfer = ControlFlags.serializeTransfer.rawValue
    let copy = Operation.copy.rawValue
    let fill = Operation.fill.rawValue
    let success = DSA.CompletionStatus.success.rawValue
}

/// One dedicated DSA work queue as a NetDMA channel (`ProviderChannelContext` and callbacks).
///
/// DSA does not walk NetDMA chains, so the channel does what a CBDMA engine does in hardware:
/// it walks the chain (2.0: `count` descriptors along `next`; 1.x: to NULL, re-reading the
/// tail on Append) and turns each NetDMA descriptor into a 64-byte DSA work descriptor:
///
/// | NetDMA | DSA |
/// |---|---|
/// | copy | memory move (0x03) |
/// | fill (Linux extension) | memory fill (0x04), the pattern from `SourceAddress` |
/// | NULL transfer, size 0, DCA context change | no-op (0x00) |
/// | `NET_DMA_SERIALIZE_TRANSFER` | FENCE (inside a batch) |
/// | `NET_DMA_INTERRUPT_ON_COMPLETION` | ends the batch; RCI on it, handle = MSI-X vector *WQ + 1* |
/// | `NET_DMA_STATUS_UPDATE_ON_COMPLETION` | the channel writes the completion word when the record arrives |
///
/// Runs of ready descriptors become one batch descriptor (opcode 0x01, DPDK's design): the
/// members carry error-only completion records (CRAV without RCR) in their own slots, the batch
/// its own record. A lone descriptor goes to the portal by itself with RCR. Every portal
/// write is one MOVDIR64B to the WQ's unlimited MSI-X portal, and never more are outstanding
/// than the WQ has entries: a dedicated WQ silently drops the excess (dsa.md §7.1), so the rest
/// of the chain waits in memory until records free entries.
///
/// Completion records are processed by the client's polls (``pollCompletions()``, called by
/// ``CopyQueue``), by ``serviceInterrupt()`` and, for channels whose client does not poll
/// (NetDMA-level clients that read the word), by the provider's completion poller; the
/// NetDMA completion word is written from them (Active/Idle), on a
/// failure (Halted, with ``fault`` naming the failing NetDMA descriptor), on Suspend (Suspend)
/// and on Abort/Reset (Halted). A failure also signals the channel's eventfd, so the interface's
/// DPC learns of it as from a CBDMA error interrupt.
///
/// Suspend, Abort, Reset and a Start on a busy channel use the Abort WQ command: queued
/// descriptors are discarded without records, running ones finish. The oldest outstanding
/// descriptor counts as the "current" one NetDMA lets finish: if Abort WQ discarded it before an
/// engine took it, Start and Suspend submit it again and it completes.
public final class DSAChannel<BAR: RegisterIO & ~Copyable, Portals: PortalIO & ~Copyable>: ProviderChannel, @unchecked Sendable {
    // @unchecked: the plain `var`s are touched only while `busy` is held (a try-lock between
    // the client's calls, the poller and the interrupt thread); cross-thread reads go through
    // the atomics and the `faultState` Mutex.

    /// The WQ index (= channel index).
    public let index: Int
    /// The device.
    public let device: DSADevice<BAR, Portals>
    /// The eventfd MSI-X vector `index + 1` signals, if interrupts are routed.
    public let interruptEventFD: Int32?
    /// WQ entries: the most portal writes outstanding.
    public let workQueueSize: Int
    /// The most NetDMA descriptors per batch (1: no batching).
    public let batchLimit: Int
    /// Runs shorter than this go one descriptor per portal write.
    public let minimumBatch: Int
    /// Whether chains are counted (NetDMA 2.0) rather than NULL-terminated (1.x).
    public let countedChains: Bool

    private let eventFD: EventFD?
    private let vector: UInt16
    private let descriptorFlags: UInt32
    private let portalBase: Int
    /// The provider's completion poller, woken after portal writes.
    let poller: CompletionPoller
    private let memory: DMAMemory

    // DMA area: members (slots × batchLimit × 64), member records (slots × batchLimit × 32),
    // batch records (slots × 32), staging for the batch descriptor (64).
    private let area: DMABuffer
    private let members: UnsafeMutableRawPointer
    private let membersIOVA: UInt64
    private let memberRecords: UnsafeMutableRawPointer
    private let memberRecordsIOVA: UInt64
    private let records: UnsafeMutableRawPointer
    private let recordsIOVA: UInt64
    private let staging: UnsafeMutableRawPointer
    /// Per member slot: the NetDMA descriptor's IOVA and control flags.
    private let memberIOVA: UnsafeMutablePointer<UInt64>
    private let memberFlags: UnsafeMutablePointer<UInt32>
    /// Per submission slot: how many members (1 = a lone descriptor).
    private let slotMembers: UnsafeMutablePointer<Int>

    // The try-lock and its "run again" request.
    private let busy = Atomic<Bool>(false)
    private let again = Atomic<Bool>(false)

    /// Bumped by each client poll (``pollCompletions()``); the completion poller leaves a
    /// channel whose client polls to it.
    let clientPolls = Atomic<UInt64>(0)
    /// The poller's last look at ``clientPolls`` (the poller's thread only).
    let pollerSawClientPolls = Atomic<UInt64>(0)

    let allocated = Atomic<Bool>(false)
    /// Submissions outstanding (mirror of `tail - head` for the poller).
    let outstandingCount = Atomic<Int>(0)
    /// 2.0: descriptors appended and not yet turned into DSA descriptors.
    private let pending = Atomic<Int>(0)
    private let lastCompletedAtomic = Atomic<UInt64>(0)
    private let interruptsSignalled = Atomic<Int>(0)
    private let rearmCount = Atomic<Int>(0)
    private let faultState = Mutex<ChannelFault?>(nil)
    private let starts = Mutex<[ControlFlags]>([])
    /// Set once a Suspend has stopped the WQ (Abort WQ done), until Resume or Start.
    private let suspendFlag = Atomic<Bool>(false)
    /// NetDMA 1.0 after a power cycle: the next Append fails once with `.contextLost`.
    private let contextLost = Atomic<Bool>(false)

    // Guarded by `busy`.
    private var word: UnsafeMutablePointer<Atomic<UInt64>>?
    private var head = 0
    private var tail = 0
    private var portalSlot = 0
    private var cursorIOVA: UInt64 = 0
    /// 1.x: the cursor stands on a converted tail whose `next` was NULL; re-read it.
    private var atTail = false
    private var tailIOVA: UInt64 = 0
    private var chainStart: UInt64 = 0
    private var lastCompleted: UInt64 = 0
    private var processedSinceStart = false
    /// The walk met a `next` outside DMA memory (0: no).
    private var unreachableDescriptor: UInt64 = 0
    private var halted = false
    private var running = false
    /// From PowerDown until PowerUp: the device is (about to be) disabled, so nothing is
    /// written to the portal; appended descriptors wait in memory for the re-Start.
    private var poweredOff = false
    /// A one-region IOVA → CPU address cache for walking chains without a lock. (In memory of
    /// its own: a mutating call on a stored property of the class costs a dynamic exclusivity
    /// check, about 115 instructions, on every descriptor.)
    private let walkCache: UnsafeMutablePointer<DMARegionCache>
    /// The NetDMA constants the walk tests on every descriptor, copied once: read from the
    /// NetDMA module, each costs an accessor call (seen in callgrind's profile of ``fill()``).
    private let bits = WalkBits()

    init(index: Int, device: DSADevice<BAR, Portals>, eventFD: consuming EventFD?, workQueueSize: Int,
         batchLimit: Int, minimumBatch: Int, countedChains: Bool, memory: DMAMemory,
         poller: CompletionPoller) throws(DriverError) {
        self.index = index
        self.device = device
        self.workQueueSize = workQueueSize
        self.batchLimit = max(1, batchLimit)
        self.minimumBatch = max(2, minimumBatch)
        self.countedChains = countedChains
        self.poller = poller
        self.memory = memory
        vector = UInt16(index + 1)
        portalBase = index * DSA.portalWindowSize
        descriptorFlags = DSA.Flags.completionRecordValid | (device.genCap.cacheControlMemory ? DSA.Flags.cacheControl : 0)
        switch consume eventFD {
        case .some(let fd):
            interruptEventFD = fd.rawValue
            self.eventFD = consume fd
        case .none:
            interruptEventFD = nil
            self.eventFD = nil
        }
        let b = self.batchLimit, s = workQueueSize
        let membersBytes = s * b * 64, memberRecordBytes = s * b * 32, recordBytes = s * 32
        area = try memory.allocate(length: membersBytes + memberRecordBytes + recordBytes + 64)
        members = area.base
        membersIOVA = area.iova
        memberRecords = area.base + membersBytes
        memberRecordsIOVA = area.iova + UInt64(membersBytes)
        records = memberRecords + memberRecordBytes
        recordsIOVA = memberRecordsIOVA + UInt64(memberRecordBytes)
        staging = records + recordBytes
        memberIOVA = .allocate(capacity: s * b)
        memberIOVA.initialize(repeating: 0, count: s * b)
        memberFlags = .allocate(capacity: s * b)
        memberFlags.initialize(repeating: 0, count: s * b)
        slotMembers = .allocate(capacity: s)
        slotMembers.initialize(repeating: 0, count: s)
        walkCache = .allocate(capacity: 1)
        walkCache.initialize(to: DMARegionCache())
    }

    deinit {
        memberIOVA.deallocate()
        memberFlags.deallocate()
        slotMembers.deallocate()
        walkCache.deinitialize(count: 1)
        walkCache.deallocate()
    }

    // MARK: - The try-lock

    /// Takes the channel, waiting (spinning, then yielding, then sleeping) for the poller, the
    /// client or the interrupt thread to let go. Control paths and the ISR.
    ///
    /// The ISR runs on a real-time interrupt thread pinned to its CPU, which a holder preempted
    /// on that CPU cannot get back while the ISR spins or yields (`sched_yield` passes the CPU
    /// only to real-time threads): after the yields it sleeps a microsecond at a time.
    private func acquire() {
        var n = 0
        while !busy.compareExchange(expected: false, desired: true, ordering: .acquiring).exchanged {
            n += 1
            if n < 100 {
                cvfio_pause()
            } else if n < 200 {
                sched_yield()
            } else {
                var ts = timespec(tv_sec: 0, tv_nsec: 1000)
                nanosleep(&ts, nil)
            }
        }
    }

    /// Lets go, and runs the work another thread asked for meanwhile.
    private func release() {
        // Sequentially consistent, with kick's store of `again` and its compare-exchange of
        // `busy`: either this load sees the request, or kick's exchange sees the lock free.
        busy.store(false, ordering: .sequentiallyConsistent)
        if again.load(ordering: .sequentiallyConsistent) { kick() }
    }

    /// Processes records and submits what is ready, unless another thread is doing it (it
    /// then sees `again` and does it). Never blocks.
    ///
    /// The request and the lock form a Dekker pair: the requester stores `again` then tries
    /// `busy`; the holder stores `busy` then loads `again`, every one sequentially consistent,
    /// so at least one of them sees the other (with weaker orderings both could miss: x86 lets
    /// a load pass an earlier store). The holder consumes requests with an exchange, never a
    /// plain store that could erase one made after its compare-exchange, and the exchange's
    /// acquire makes the requester's work (a chain appended) visible to `progress`.
    @inline(__always)
    func kick() {
        again.store(true, ordering: .sequentiallyConsistent)
        while busy.compareExchange(expected: false, desired: true, ordering: .sequentiallyConsistent).exchanged {
            _ = again.exchange(false, ordering: .acquiring)
            progress()
            busy.store(false, ordering: .sequentiallyConsistent)
            if !again.load(ordering: .sequentiallyConsistent) { return }
        }
    }

    /// DSA writes completion records, not the NetDMA completion word.
    public var completesByPolling: Bool { true }

    /// The client's poll (DPDK's idxd driver model): processes the records that arrived,
    /// writes the completion word and submits what waited for room, on the client's thread,
    /// when the poller or the interrupt thread is not doing it already. Marks the channel as
    /// polled, so the completion poller leaves it to the client. Hot path: two relaxed
    /// accesses and, with work outstanding, the try-lock.
    public func pollCompletions() {
        clientPolls.store(clientPolls.load(ordering: .relaxed) &+ 1, ordering: .relaxed)
        guard outstandingCount.load(ordering: .acquiring) > 0 else { return }
        kick()
    }

    // MARK: - Allocation

    /// Claims the channel for a client whose completion word is `parameters.completionAddress`.
    func activate(_ parameters: ChannelParameters) {
        acquire()
        word = UnsafeMutableRawPointer(parameters.completionAddress).bindMemory(to: Atomic<UInt64>.self, capacity: 1)
        forget()
        lastCompleted = 0
        lastCompletedAtomic.store(0, ordering: .relaxed)
        faultState.withLock { $0 = nil }
        release()
    }

    /// Drops every outstanding submission and the chain position (after an Abort WQ).
    private func forget() {
        head = tail
        outstandingCount.store(0, ordering: .relaxed)
        pending.store(0, ordering: .relaxed)
        atTail = false
        cursorIOVA = 0
        unreachableDescriptor = 0
        running = false
        halted = false
        processedSinceStart = false
        suspendFlag.store(false, ordering: .relaxed)
    }

    // MARK: - NetDMA callbacks

    /// `ProviderStartDma`: makes `chain` the channel's chain. If descriptors are outstanding,
    /// Abort WQ discards the queued ones; the current (oldest) descriptor completes, the rest
    /// of the old chain is dropped. A halted channel starts afresh. Blocks at most for the
    /// Abort WQ command (when busy).
    ///
    /// - Throws: `.timeout` or `.deviceError` when Abort WQ fails.
    public func start(_ chain: DescriptorChain) throws(DriverError) {
        starts.withLock { s in
            if s.count == 1024 { s.removeFirst() }
            s.append(chain.address.pointee.flags)
        }
        acquire()
        defer { release() }
        if device.state == .halted { throw device.haltedError("Start on WQ \(index)") }
        var current: UInt64? = nil
        if tail != head { current = try quiesce() }
        // The interface wrote Armed before calling; a failure this channel processed while the
        // Start waited for the channel (Halted) belongs to the chain being replaced.
        // Only a Halted word is replaced: a PowerUp re-Start keeps the word naming the
        // client's last completed descriptor on purpose.
        if let w = word, w.pointee.load(ordering: .acquiring) & CompletionWord.statusMask == UInt64(TransferStatus.halted.rawValue) {
            w.pointee.store(UInt64(TransferStatus.armed.rawValue), ordering: .releasing)
        }
        pending.store(0, ordering: .relaxed)
        halted = false
        contextLost.store(false, ordering: .relaxed)
        suspendFlag.store(false, ordering: .relaxed)
        faultState.withLock { $0 = nil }
        processedSinceStart = false
        chainStart = chain.iova
        cursorIOVA = chain.iova
        unreachableDescriptor = 0
        atTail = false
        running = true
        if let current, let p = descriptor(at: current) { submitCurrent(p, iova: current) }
        if countedChains { pending.store(chain.count, ordering: .releasing) }
        progress()
    }

    /// `ProviderAppendDma`: 2.0 adds `chain.count` to the descriptors to run; 1.x makes the
    /// walk re-read the old tail. Hot path: atomics and, when the WQ has room, the portal
    /// writes; no lock (a try-lock that never waits), no allocation.
    ///
    /// - Throws: `.contextLost` once after a power cycle (NetDMA 1.0).
    public func append(_ chain: DescriptorChain) throws(DriverError) {
        if contextLost.load(ordering: .relaxed) { throw lostContext() }
        if countedChains { pending.add(chain.count, ordering: .releasing) }
        kick()
    }

    /// `ProviderSuspendDma`: Abort WQ discards queued descriptors; running ones finish (and the
    /// current one, if discarded, runs again and finishes). Writes Suspend status and returns
    /// the last NetDMA descriptor processed (0 if none since Start). Blocks until then.
    ///
    /// - Throws: `.timeout` or `.deviceError` when Abort WQ fails or the current descriptor
    ///   does not complete.
    public func suspend() throws(DriverError) -> UInt64 {
        acquire()
        defer { release() }
        if tail != head, let current = try quiesce(), let p = descriptor(at: current) {
            suspendFlag.store(true, ordering: .releasing)  // Abort WQ is done: only the current one runs
            submitCurrent(p, iova: current)
            guard device.spin(for: device.timeouts.command, { reapOne() || tail == head }) || tail == head else {
                throw DriverError(.timeout, "DSA WQ \(index): the current descriptor did not complete within \(device.timeouts.command) during Suspend (\(device.diagnostics())).")
            }
            while tail != head && reapOne() {}
        }
        suspendFlag.store(true, ordering: .releasing)
        running = false
        if !halted { writeWord(lastCompleted, .suspend) }
        return processedSinceStart ? lastCompleted : 0
    }

    /// `ProviderResumeDma`: re-reads the last processed descriptor's `next` (the client may have
    /// edited the chain) and continues with the descriptors not yet processed.
    public func resume() throws(DriverError) {
        acquire()
        defer { release() }
        suspendFlag.store(false, ordering: .relaxed)
        guard !halted else { return }
        unreachableDescriptor = 0
        if processedSinceStart, let p = descriptor(at: lastCompleted) {
            let next = Self.loadNext(p)
            if !countedChains && next == 0 {
                atTail = true
                tailIOVA = lastCompleted
            } else {
                cursorIOVA = next
                atTail = false
            }
        } else {
            cursorIOVA = chainStart
            atTail = false
        }
        running = true
        progress()
    }

    /// `ProviderAbortDma`: Abort WQ (queued descriptors are discarded, running ones finish),
    /// everything else is abandoned, Halted status. Blocks for the command.
    public func abort() throws(DriverError) {
        acquire()
        defer { release() }
        if tail != head { _ = try quiesce() }
        // Only a descriptor of the current chain: one completed before the last Start would
        // make the client count the chain's unprocessed descriptors as done (found by the soak).
        let last = processedSinceStart ? lastCompleted : 0
        forget()
        halted = true
        writeWord(last, .halted)
    }

    /// `ProviderResetChannel`: as Abort, then the post-allocation state; no previously
    /// submitted descriptor is touched again.
    ///
    /// Uses Abort WQ, not Reset WQ: Reset WQ also clears the WQ's WQCFG, and the WQ size can be
    /// written only while the whole device is disabled (dsa.md §9.2), so the WQ could not be
    /// enabled again without stopping every other channel.
    public func reset() throws(DriverError) {
        acquire()
        defer { release() }
        if tail != head { _ = try quiesce() }
        writeWord(processedSinceStart ? lastCompleted : 0, .halted)
        forget()
        lastCompleted = 0
        lastCompletedAtomic.store(0, ordering: .relaxed)
        contextLost.store(false, ordering: .relaxed)
        faultState.withLock { $0 = nil }
    }

    /// `ProviderFreeDmaChannel`: releases the channel (nothing is outstanding; anything left
    /// is aborted).
    public func free() {
        acquire()
        if tail != head { _ = try? quiesce() }
        forget()
        word = nil
        allocated.store(false, ordering: .releasing)
        release()
    }

    /// The ISR: processes the records that arrived and reports the last completed descriptor
    /// and a fault, if the channel halted.
    public func serviceInterrupt() -> InterruptReport {
        acquire()
        progress()
        let report = InterruptReport(lastCompleted: lastCompleted, fault: halted ? faultState.withLock { $0 } : nil)
        release()
        return report
    }

    /// DSA has nothing to re-arm (each descriptor asks for its interrupt); counted for tests.
    public func rearmInterrupt() { rearmCount.add(1, ordering: .relaxed) }

    /// Why the channel halted: the DSA completion status of the failing descriptor, named as
    /// in the hardware documentation, with the NetDMA descriptor that failed.
    public var fault: ChannelFault? { faultState.withLock { $0 } }

    // MARK: - Diagnostics

    /// The NetDMA descriptor the engine is working on: the oldest one handed to the device and
    /// not completed (0: none).
    public var currentDescriptor: UInt64 {
        acquire()
        defer { release() }
        return tail != head ? memberIOVA[(head % workQueueSize) * batchLimit] : 0
    }

    /// Whether a Suspend was requested and has not been resumed.
    public var suspendRequested: Bool { suspendFlag.load(ordering: .acquiring) }
    /// Interrupts the channel signalled itself (on failures).
    public var softwareInterrupts: Int { interruptsSignalled.load(ordering: .relaxed) }
    /// Calls of ``rearmInterrupt()``.
    public var rearms: Int { rearmCount.load(ordering: .relaxed) }
    /// The first descriptor flags of each Start (the last 1024).
    public var startedFlags: [ControlFlags] { starts.withLock { $0 } }
    /// Submissions (portal writes) outstanding now; never above ``workQueueSize``.
    public var outstandingSubmissions: Int { outstandingCount.load(ordering: .acquiring) }

    /// Before the device is disabled (PowerDown): waits (spinning, bounded by the command
    /// timeout) until every descriptor handed to the WQ has its completion record, processes
    /// the records, and from then on writes nothing to the portal: a disabled WQ drops
    /// descriptors, and work must never be discarded silently. Descriptors appended meanwhile
    /// stay in memory and run after PowerUp's re-Start.
    ///
    /// - Throws: `.timeout` when the WQ does not finish its descriptors (the device must stay up).
    func powerDown() throws(DriverError) {
        acquire()
        defer { release() }
        while tail != head && reapOne() {}
        if tail != head {
            guard device.spin(for: device.timeouts.command, { reapOne() || tail == head }) || tail == head else {
                throw DriverError(.timeout, "DSA WQ \(index): \(tail - head) submissions did not complete within \(device.timeouts.command) before PowerDown; the device stays up (\(device.diagnostics())).")
            }
            while tail != head && reapOne() {}
            guard tail == head else {
                throw DriverError(.timeout, "DSA WQ \(index): \(tail - head) submissions did not complete before PowerDown; the device stays up.")
            }
        }
        poweredOff = true
    }

    /// After the device is enabled again (PowerUp): the portal may be written again. NetDMA
    /// 1.1+: the interface re-Starts the channel at the first descriptor not yet processed.
    /// NetDMA 1.0 (`contextLost`): the channel forgets its chain and the next Append fails
    /// once with `.contextLost`, so the interface re-seeds it.
    func powerUp(contextLost lose: Bool) {
        acquire()
        poweredOff = false
        release()
        if lose { loseContext() }
    }

    /// After a power cycle (NetDMA 1.0): the next Append fails once with `.contextLost`.
    public func loseContext() {
        acquire()
        if tail != head { _ = try? quiesce() }
        let last = lastCompleted
        let wasRunning = running
        forget()
        lastCompleted = last
        contextLost.store(wasRunning, ordering: .releasing)
        release()
    }

    /// The device halted (GENSTS): the descriptors outstanding on this WQ will never complete.
    /// Records that did arrive are processed; the oldest descriptor still outstanding is
    /// reported as the failing one, the rest are abandoned, and the channel halts with an
    /// interrupt, as on a descriptor failure. Called by the completion poller and by
    /// ``DSAProvider/recover()``.
    func deviceHalted(_ reason: String) {
        acquire()
        defer { release() }
        while tail != head && !halted && reapOne() {}
        guard tail != head, !halted else { return }
        let failing = memberIOVA[(head % workQueueSize) * batchLimit]
        faultState.withLock {
            $0 = ChannelFault(rawValue: UInt64(device.bar.read32(DSA.GENSTS)),
                              causes: ["device halted (GENSTS)", reason], descriptor: failing)
        }
        let last = lastCompleted
        forget()
        halted = true
        running = false
        writeWord(last, .halted)
        raiseInterrupt()
    }

    // MARK: - The engine work (under `busy`)

    /// Processes arrived records, then submits what is ready.
    private func progress() {
        guard word != nil else { return }
        while tail != head && reapOne() {}
        if running && !halted && !poweredOff { fill() }
        if unreachableDescriptor != 0 && tail == head && !halted { haltUnreachable() }
    }

    /// Whether NetDMA descriptors wait to be submitted.
    @inline(__always)
    private func hasReadyWork() -> Bool {
        guard running && !halted else { return false }
        if countedChains { return pending.load(ordering: .acquiring) > 0 }
        if !atTail { return cursorIOVA != 0 }
        guard let p = descriptor(at: tailIOVA) else { return false }
        return Self.loadNext(p) != 0
    }

    /// The next NetDMA descriptor of the walk, consumed. Counted chains: one of `available`
    /// (read from `pending`, to which the caller's one subtraction returns what it consumed:
    /// an atomic read-modify-write per batch, not per descriptor).
    @inline(__always)
    private func nextDescriptor(available: inout Int) -> (iova: UInt64, pointer: UnsafeMutablePointer<Descriptor>)? {
        if countedChains {
            guard available > 0 else { return nil }
            guard let p = descriptor(at: cursorIOVA) else { return unreachable(cursorIOVA) }
            available -= 1
            let iova = cursorIOVA
            cursorIOVA = p.pointee.next
            return (iova, p)
        }
        if atTail {
            guard let t = descriptor(at: tailIOVA) else { return nil }
            let n = Self.loadNext(t)
            guard n != 0 else { return nil }
            cursorIOVA = n
            atTail = false
        }
        guard cursorIOVA != 0 else { return nil }
        guard let p = descriptor(at: cursorIOVA) else { return unreachable(cursorIOVA) }
        let iova = cursorIOVA
        let n = Self.loadNext(p)
        if n == 0 {
            atTail = true
            tailIOVA = iova
        } else {
            cursorIOVA = n
        }
        return (iova, p)
    }

    /// The walk reached a `next` that is not in DMA memory (what a CBDMA engine reports as a
    /// chain address error): the walk stops there, and once everything before it completed the
    /// channel halts with a fault naming that address.
    @inline(never)
    private func unreachable(_ iova: UInt64) -> (iova: UInt64, pointer: UnsafeMutablePointer<Descriptor>)? {
        if unreachableDescriptor == 0 { unreachableDescriptor = iova }
        return nil
    }

    /// Halts for ``unreachable(_:)`` once nothing is outstanding.
    @inline(never)
    private func haltUnreachable() {
        let iova = unreachableDescriptor
        unreachableDescriptor = 0
        faultState.withLock {
            $0 = ChannelFault(rawValue: iova, causes: [
                iova & 63 != 0
                    ? "NetDMA descriptor address 0x\(String(iova, radix: 16)) is not 64-byte aligned (a bad NextDescriptor); descriptors are 64-byte aligned"
                    : "NetDMA descriptor address 0x\(String(iova, radix: 16)) is not in this provider's DMA memory (a bad NextDescriptor); allocate descriptors from the provider's DMA memory"],
                descriptor: iova)
        }
        let last = lastCompleted
        forget()
        halted = true
        writeWord(last, .halted)
        raiseInterrupt()
    }

    /// Submits the "current" descriptor that Abort WQ discarded again, alone (the WQ is empty).
    private func submitCurrent(_ p: UnsafeMutablePointer<Descriptor>, iova: UInt64) {
        let s = tail % workQueueSize
        build(p, iova: iova, member: s * batchLimit, inBatch: false)
        submitSingle(slot: s)
        tail += 1
        outstandingCount.store(tail - head, ordering: .releasing)
        // Wake the poller only after the count it checks is published (else it may sleep on it).
        poller.wake()
    }

    /// Submits ready descriptors while the WQ has room: batches of up to ``batchLimit``, each
    /// ending at a descriptor that asks for an interrupt.
    private func fill() {
        while tail - head < workQueueSize {
            let s = tail % workQueueSize
            let base = s &* batchLimit
            var n = 0
            // Only this thread (holding `busy`) takes from `pending`; appends only add to it.
            var available = countedChains ? min(pending.load(ordering: .acquiring), batchLimit) : 0
            while n < batchLimit, let (iova, p) = nextDescriptor(available: &available) {
                build(p, iova: iova, member: base &+ n, inBatch: n > 0)
                n &+= 1
                if p.pointee.controlFlags & bits.interruptOnCompletion != 0 { break }
            }
            if countedChains && n > 0 { pending.subtract(n, ordering: .relaxed) }
            guard n > 0 else { return }
            if n >= minimumBatch {
                submitBatch(slot: s, count: n)
                tail += 1
            } else {
                // Too short for a batch: each member alone, each its own WQ entry.
                for k in 0..<n {
                    if k > 0 {
                        guard tail - head < workQueueSize else {
                            // No room: put the rest back (they were consumed from the walk).
                            rewind(from: base + k, count: n - k)
                            outstandingCount.store(tail - head, ordering: .releasing)
                            poller.wake()
                            return
                        }
                    }
                    let t = tail % workQueueSize
                    if t != s || k > 0 { moveMember(from: base + k, to: t * batchLimit) }
                    submitSingle(slot: t)
                    tail += 1
                }
            }
            outstandingCount.store(tail - head, ordering: .releasing)
            // Wake the poller only after the count it checks is published (else it may sleep on it).
            poller.wake()
        }
    }

    /// Puts `count` consumed members back at the head of the walk.
    private func rewind(from member: Int, count: Int) {
        cursorIOVA = memberIOVA[member]
        atTail = false
        if countedChains { pending.add(count, ordering: .relaxed) }
    }

    private func moveMember(from a: Int, to b: Int) {
        guard a != b else { return }
        (members + b * 64).copyMemory(from: members + a * 64, byteCount: 64)
        memberIOVA[b] = memberIOVA[a]
        memberFlags[b] = memberFlags[a]
    }

    /// Writes the DSA descriptor for NetDMA descriptor `d` into member slot `m`.
    @inline(__always)
    private func build(_ d: UnsafeMutablePointer<Descriptor>, iova: UInt64, member m: Int, inBatch: Bool) {
        let c = d.pointee.controlFlags
        let size = d.pointee.transferSize
        var op = DSA.Opcode.noop
        var src: UInt64 = 0, dst: UInt64 = 0, len: UInt32 = 0
        let operation = UInt8(truncatingIfNeeded: c >> 24)
        if c & bits.nullTransfer == 0 && size != 0 {
            if operation == bits.copy {
                op = DSA.Opcode.memmove
                src = d.pointee.source; dst = d.pointee.destination; len = size
            } else if operation == bits.fill {
                op = DSA.Opcode.fill
                src = d.pointee.source; dst = d.pointee.destination; len = size
            }
            // A DCA context change (and anything else) moves no data: a no-op.
        }
        var flags = descriptorFlags
        if op == DSA.Opcode.noop { flags &= ~DSA.Flags.cacheControl }
        if inBatch && c & bits.serializeTransfer != 0 { flags |= DSA.Flags.fence }
        // (m < slots × batchLimit, sizes the init allocated: wrapping arithmetic, no overflow traps.)
        let p = members + m &* 64
        DSA.WorkDescriptor(opcode: op, flags: flags,
                           completionAddress: memberRecordsIOVA &+ UInt64(truncatingIfNeeded: m) &* 32,
                           source: src, destination: dst, transferSize: len).store(to: p)
        memberIOVA[m] = iova
        memberFlags[m] = c
        // Zero the record's status byte before the device can write it.
        (memberRecords + m &* 32).storeBytes(of: UInt8(0), as: UInt8.self)
    }

    /// A lone descriptor: its record is the slot's record (RCR), with RCI if asked.
    @inline(__always)
    private func submitSingle(slot s: Int) {
        let m = s * batchLimit
        let p = members + m * 64
        var flags = p.loadUnaligned(fromByteOffset: DSA.Descriptor.flagsAndOpcode, as: UInt32.self)
        flags |= DSA.Flags.requestCompletionRecord
        flags &= ~DSA.Flags.fence  // FENCE outside a batch is undefined (dsa.md §5.2)
        if memberFlags[m] & bits.interruptOnCompletion != 0 && interruptEventFD != nil {
            flags |= DSA.Flags.requestCompletionInterrupt
            p.storeBytes(of: vector, toByteOffset: DSA.Descriptor.interruptHandle, as: UInt16.self)
        }
        p.storeBytes(of: flags, toByteOffset: DSA.Descriptor.flagsAndOpcode, as: UInt32.self)
        p.storeBytes(of: recordsIOVA &+ UInt64(s) &* 32, toByteOffset: DSA.Descriptor.completionAddress, as: UInt64.self)
        slotMembers[s] = 1
        records.storeBytes(of: UInt8(0), toByteOffset: s * 32, as: UInt8.self)
        portalWrite(p)
    }

    /// A batch of `count` members of slot `s`: one batch descriptor (CRAV|RCR, RCI if its last
    /// member asks for an interrupt), one WQ entry.
    @inline(__always)
    private func submitBatch(slot s: Int, count: Int) {
        let m = s * batchLimit
        var flags = DSA.Flags.completionRecordValid | DSA.Flags.requestCompletionRecord
        var handle: UInt16 = 0
        if memberFlags[m + count - 1] & bits.interruptOnCompletion != 0 && interruptEventFD != nil {
            flags |= DSA.Flags.requestCompletionInterrupt
            handle = vector
        }
        DSA.WorkDescriptor(opcode: DSA.Opcode.batch, flags: flags, completionAddress: recordsIOVA &+ UInt64(s) &* 32,
                           source: membersIOVA &+ UInt64(m) &* 64, transferSize: UInt32(count),
                           interruptHandle: handle).store(to: staging)
        slotMembers[s] = count
        records.storeBytes(of: UInt8(0), toByteOffset: s * 32, as: UInt8.self)
        portalWrite(staging)
    }

    /// SFENCE, then MOVDIR64B to the next 64-byte slot of the WQ's unlimited MSI-X portal
    /// (stepping through the page, as dsa-perf-micros does).
    @inline(__always)
    private func portalWrite(_ p: UnsafeMutableRawPointer) {
        cvfio_wmb()
        device.portals.submit64(portalBase + (portalSlot & 63) * 64, UnsafeRawPointer(p))
        portalSlot &+= 1
    }

    /// Processes the oldest outstanding submission if its record has arrived; false when not.
    @inline(__always)
    private func reapOne() -> Bool {
        guard tail != head else { return false }
        let s = head % workQueueSize
        let r = records + s * 32
        let status = r.assumingMemoryBound(to: Atomic<UInt8>.self).pointee.load(ordering: .acquiring)
        guard status != 0 else { return false }
        let n = slotMembers[s]
        let base = s * batchLimit
        if status == bits.success {
            complete(base, count: n)
            head += 1
            outstandingCount.store(tail - head, ordering: .releasing)
            return true
        }
        fail(slot: s, status: status)
        return true
    }

    /// Members `base..<base+count` completed: the completion word for the last that asked.
    @inline(__always)
    private func complete(_ base: Int, count: Int) {
        // The last member that asked (searched from the end: CopyQueue asks on the last).
        var statusMember = count - 1
        while statusMember >= 0 && memberFlags[base + statusMember] & bits.statusUpdateOnCompletion == 0 {
            statusMember -= 1
        }
        let last = memberIOVA[base + count - 1]
        lastCompleted = last
        processedSinceStart = true
        lastCompletedAtomic.store(last, ordering: .releasing)
        guard statusMember >= 0 else { return }
        let idle = statusMember == count - 1 && tail - head == 1 && !hasReadyWork()
        writeWord(memberIOVA[base + statusMember], idle ? .idle : .active)
    }

    /// The submission in slot `s` failed: members before the failing one completed; the channel
    /// halts with the failing NetDMA descriptor in ``fault``; everything after is abandoned.
    private func fail(slot s: Int, status: UInt8) {
        let n = slotMembers[s]
        let base = s * batchLimit
        let batchRecord = DSA.CompletionRecordValue(loading: records + s * 32)
        var failing = 0
        var record = batchRecord
        if n > 1 {
            let code = batchRecord.status
            if code == .batchFail {
                failing = min(Int(batchRecord.bytesCompleted), n - 1)
                for k in 0..<n {
                    let st = (memberRecords + (base + k) * 32).assumingMemoryBound(to: Atomic<UInt8>.self).pointee.load(ordering: .acquiring)
                    if st != 0 && st != bits.success {
                        failing = k
                        record = DSA.CompletionRecordValue(loading: memberRecords + (base + k) * 32)
                        break
                    }
                }
            } else if code == .batchPageFault {
                failing = min(Int(batchRecord.bytesCompleted), n - 1)
            }
        }
        if failing > 0 { complete(base, count: failing) }
        let descriptor = memberIOVA[base + failing]
        let f = Self.fault(record, descriptor: descriptor, member: failing, of: n, wq: index)
        faultState.withLock { $0 = f }
        halted = true
        head += 1
        // Abandon the rest: Abort WQ discards what is queued behind it.
        if tail != head { _ = try? device.command(.abortWQ, operand: DSA.Cmd.wqMaskOperand(index)) }
        let last = lastCompleted
        forget()
        halted = true
        running = false
        writeWord(last, .halted)
        raiseInterrupt()
    }

    /// Abort WQ, then accounts for what finished: returns the oldest outstanding NetDMA
    /// descriptor when Abort WQ discarded it before an engine took it (the "current" one).
    /// Everything after the first discarded submission is dropped.
    private func quiesce() throws(DriverError) -> UInt64? {
        let oldest = memberIOVA[(head % workQueueSize) * batchLimit]
        try device.run(.abortWQ, operand: DSA.Cmd.wqMaskOperand(index), tolerated: [.wqNotEnabled],
                       context: "abort of WQ \(index)")
        let firstStatus = records.load(fromByteOffset: (head % workQueueSize) * 32, as: UInt8.self)
        while tail != head && !halted && reapOne() {}
        let discardedOldest = firstStatus == 0
        // Discarded submissions: their descriptors are handed back by the caller's rewind.
        if tail != head, countedChains, !halted {
            var members = 0
            var h = head
            while h != tail { members += slotMembers[h % workQueueSize]; h += 1 }
            pending.add(members - (discardedOldest ? 1 : 0), ordering: .relaxed)
        }
        head = tail
        outstandingCount.store(0, ordering: .relaxed)
        return discardedOldest && !halted ? oldest : nil
    }

    // MARK: - Helpers

    private func writeWord(_ descriptor: UInt64, _ status: TransferStatus) {
        word?.pointee.store(CompletionWord(descriptor: descriptor, status: status).rawValue, ordering: .releasing)
    }

    private func raiseInterrupt() {
        guard let fd = interruptEventFD else { return }
        interruptsSignalled.add(1, ordering: .releasing)
        var one: UInt64 = 1
        _ = Glibc.write(fd, &one, 8)
    }

    @inline(__always)
    private static func loadNext(_ p: UnsafeMutablePointer<Descriptor>) -> UInt64 {
        UnsafeMutableRawPointer(p).advanced(by: 24).assumingMemoryBound(to: Atomic<UInt64>.self).pointee.load(ordering: .acquiring)
    }

    /// The CPU address of the NetDMA descriptor at `iova`, through a one-region cache; nil
    /// when `iova` is not 64-byte aligned (a client's bad `next`: never read through it) or not
    /// in the provider's DMA memory.
    @inline(__always)
    private func descriptor(at iova: UInt64) -> UnsafeMutablePointer<Descriptor>? {
        guard iova & 63 == 0 else { return nil }
        return walkCache.pointee.address(ofIOVA: iova, length: 64, in: memory)?.assumingMemoryBound(to: Descriptor.self)
    }

    @inline(never)
    private func lostContext() -> DriverError {
        contextLost.store(false, ordering: .relaxed)
        return DriverError(.contextLost, "DSA WQ \(index) lost its context in a power cycle; Start again with a NULL descriptor.")
    }

    // MARK: - Status decoding (dsa.md §6.2)

    /// The hardware name of a DSA completion status (Linux's `DSA_COMP_*`).
    public static func statusName(_ code: UInt8) -> String {
        switch code {
        case 0x00: "DSA_COMP_NONE"
        case 0x01: "DSA_COMP_SUCCESS"
        case 0x02: "DSA_COMP_SUCCESS_PRED"
        case 0x03: "DSA_COMP_PAGE_FAULT_NOBOF"
        case 0x04: "DSA_COMP_PAGE_FAULT_IR"
        case 0x05: "DSA_COMP_BATCH_FAIL"
        case 0x06: "DSA_COMP_BATCH_PAGE_FAULT"
        case 0x07: "DSA_COMP_DR_OFFSET_NOINC"
        case 0x08: "DSA_COMP_DR_OFFSET_ERANGE"
        case 0x09: "DSA_COMP_DIF_ERR"
        case 0x10: "DSA_COMP_BAD_OPCODE"
        case 0x11: "DSA_COMP_INVALID_FLAGS"
        case 0x12: "DSA_COMP_NOZERO_RESERVE"
        case 0x13: "DSA_COMP_XFER_ERANGE"
        case 0x14: "DSA_COMP_DESC_CNT_ERANGE"
        case 0x15: "DSA_COMP_DR_ERANGE"
        case 0x16: "DSA_COMP_OVERLAP_BUFFERS"
        case 0x17: "DSA_COMP_DCAST_ERR"
        case 0x18: "DSA_COMP_DESCLIST_ALIGN"
        case 0x19: "DSA_COMP_INT_HANDLE_INVAL"
        case 0x1A: "DSA_COMP_CRA_XLAT"
        case 0x1B: "DSA_COMP_CRA_ALIGN"
        case 0x1C: "DSA_COMP_ADDR_ALIGN"
        case 0x1D: "DSA_COMP_PRIV_BAD"
        case 0x1E: "DSA_COMP_TRAFFIC_CLASS_CONF"
        case 0x1F: "DSA_COMP_PFAULT_RDBA"
        case 0x20: "DSA_COMP_HW_ERR1"
        case 0x21: "DSA_COMP_HW_ERR_DRB"
        case 0x22: "DSA_COMP_TRANSLATION_FAIL"
        default: "DSA completion status 0x\(String(code, radix: 16))"
        }
    }

    /// A ``ChannelFault`` from a completion record: `rawValue` is the status byte (bit 7: the
    /// fault was a write) | result << 8 | bytes completed << 32; the causes name the status
    /// and its details; `descriptor` is the NetDMA descriptor that failed.
    public static func fault(_ r: DSA.CompletionRecordValue, descriptor: UInt64, member: Int, of count: Int, wq: Int) -> ChannelFault {
        let code = r.status.rawValue
        var causes = ["\(statusName(code)): \(r.status)"]
        switch r.status {
        case .pageFault, .pageFaultUnresolved:
            causes.append("\(r.faultWasWrite ? "write" : "read") fault at IOVA 0x\(String(r.faultAddress, radix: 16)) after \(r.bytesCompleted) bytes (\(r.result & 1 == 0 ? "ascending" : "descending")); map the buffer for DMA")
        case .batchPageFault:
            causes.append("the batch list could not be read at IOVA 0x\(String(r.faultAddress, radix: 16))")
        case .invalidFlags:
            causes.append("invalid flags 0x\(String(r.operationSpecific, radix: 16))")
        case .transferSizeRange:
            causes.append("the transfer size is 0 or above the WQ's maximum transfer")
        default:
            break
        }
        if count > 1 { causes.append("batch member \(member) of \(count) on WQ \(wq)") }
        let raw = UInt64(r.statusByte) | UInt64(r.result) << 8 | UInt64(r.bytesCompleted) << 32
        return ChannelFault(rawValue: raw, causes: causes, descriptor: descriptor)
    }
}
