import Platform
import Synchronization

/// What ``CopyQueue/completed(max:)`` retired (DPDK's `rte_dma_completed`).
public struct CopyCompletion: Sendable, Hashable {
    /// Ops that completed successfully, in ticket order.
    public var count: Int
    /// The ticket of the last successful op returned (or of the last op retired before, when
    /// `count` is 0; 0xFFFF before any).
    public var lastTicket: UInt16
    /// Whether the op after `lastTicket` failed. That op is retired and reported only here.
    public var hadError: Bool
}

/// The outcome of one op (DPDK's `rte_dma_status_code`, reduced to what NetDMA can tell).
public enum CopyStatus: UInt8, Sendable, Hashable {
    /// The engine (or, below ``CopyQueue/cpuCopyThreshold``, the CPU) completed the op.
    case successful = 0
    /// The engine halted on this op (see ``CopyQueue/lastFault``); nothing after it was lost:
    /// the channel was re-Started at the next op. For an op the CPU ran: an address was not
    /// DMA memory of the channel, and nothing was written.
    case failed = 1
}

/// A DPDK-dmadev-shaped queue of copy, fill and NULL ops on one NetDMA channel.
///
/// The queue owns the channel's chain: a pre-linked ring of `ringSize` descriptors (a power of
/// two) in DMA memory. The last op of each ``submit()`` asks for a completion-word update, so
/// ``completed(max:)`` needs one acquire load and sees a batch's ops once its last op is done
/// (or earlier, when a later batch's update lands); with `interrupts`, that op also asks for an
/// interrupt, which ``waitForCompletion(timeout:)`` awaits. One update per batch rather than per
/// op spares the engine a completion write, and the polling CPU a cache-line transfer, per op.
///
/// - 2.0 providers: counted chains; ``submit()`` is one Append of the batch's count.
/// - 1.x providers: the batch's last descriptor ends in NULL; ``submit()`` links the previous
///   tail to the batch (one release store) and Appends, so the engine re-reads the old tail.
///
/// When the engine halts on an op, the queue reports that op failed exactly once and re-Starts
/// the channel at the next unprocessed op; every other op completes. None is lost or reported
/// twice.
///
/// ## CPU fallback
///
/// With a ``cpuCopyThreshold`` (Linux's `copybreak`: below some size, handing a copy to the
/// engine costs more than doing it), ops shorter than the threshold run on the calling CPU
/// inside ``submit()`` and never reach the descriptor ring. Their tickets come from the same
/// sequence as the engine's ops, and ``completed(max:)``/``completedStatus(max:into:)`` report
/// both in ticket order: an op is retired only once every earlier op is, so a CPU op behind a
/// slower engine op waits for it. An op whose addresses are not DMA memory of the channel
/// (no region of its ``NetDMAChannel/dmaMemory`` holds them) fails, is reported through
/// `hadError`/``CopyStatus/failed`` exactly once with a ``lastFault`` that names the address,
/// and writes nothing. The threshold is the copy threshold `netdma bench` prints (see
/// ``cpuCopyThreshold(for:)``), or any number the client measured.
///
/// How it is built, and why:
/// - Op numbers (tickets) and descriptor numbers are counted apart. Each descriptor carries its
///   op number in `userContext1`, the record the ring keeps anyway; CPU ops wait in a ring of
///   32-byte records until submit. All ops up to the first descriptor the engine has not
///   finished, and before the first CPU op not yet run, can be retired: the queue keeps that
///   number up to date where it moves, so a poll reads one number and an op costs nothing
///   more. The engine's chain stays contiguous (2.0) or linked (1.x) with no hole and no NULL
///   descriptor in place of a CPU op, and halts, restarts, Abort, Reset and power events work
///   on descriptors exactly as without the fallback.
/// - Capacity is shared: ``freeSlots`` counts ops of both kinds, at most ``capacity``
///   outstanding, so neither ring can overflow.
/// - CPU ops run in ``submit()``, not at enqueue: DPDK's contract is that an enqueued op does
///   not start before its submit, so a stack may enqueue, finish writing a source, then
///   submit. They run in ticket order, before the batch's doorbell.
/// - Fences (`NET_DMA_SERIALIZE_TRANSFER`: this op's writes finish before later ops read): an
///   op that would run on the CPU goes to the engine instead while a fenced engine op before
///   it is unfinished (the engine orders it, as without the fallback); a fenced op runs on the
///   CPU only when no engine op before it is unfinished. A fenced CPU op is thus done before
///   any later op starts (later CPU ops run after it, later engine ops are submitted after it).
///   The decision uses what the queue last saw of the engine (it reads the completion word
///   once more before routing an op to the engine), so it errs towards the engine. Ops without
///   a fence may run in any order among themselves, as an engine may overlap them. A stream
///   with many fences therefore runs fewer ops on the CPU.
/// - With the fallback off, enqueue pays one compare for it; the routing above is out of line.
/// - The same ops are accepted and refused with or without the fallback (an op too long, out
///   of the engine's reach, or a fill on an engine without fill throws either way): whether an
///   op may be enqueued never depends on the engine's progress.
/// - A zero-length copy or fill touches no memory and succeeds wherever it runs: on the CPU,
///   or on the engine, where the provider conforms it (CBDMA halts on a transfer size of 0;
///   the IOAT provider sends it as a NULL of size 1). On a NULL-terminated (1.x) chain the queue
///   writes it as a NULL of size 1 itself, as it does NULL ops: NetDMA 1.x links the old tail
///   before Append, and an engine without DMACOUNT (CB 1.x) may fetch the descriptor before
///   the provider sees it. A NULL op without a fence never needs the engine (its report still
///   proves that every earlier op finished).
/// - CPU ops translate IOVAs through a ``DMARegionSnapshot``: no lock and no allocation unless
///   the memory's regions changed.
///
/// Not thread-safe: one thread enqueues, submits and polls (as with a DPDK vchan). The hot path
/// (enqueue, submit, completed), CPU ops included, does not allocate, lock, retain/release or
/// make system calls; errors carry constant messages so that throwing does not allocate either.
public final class CopyQueue {
    /// The channel the queue runs on.
    ///
    /// The hot path calls it through this strong `let` of a final class: the compiler borrows
    /// it in place from the guaranteed `self`, so submit does no retain/release (checked in
    /// the release build's disassembly; an `unowned(unsafe)` reference is worse, as the
    /// compiler copies an unmanaged reference to keep it alive across the call).
    public let channel: NetDMAChannel
    /// The number of descriptors in the ring; ``capacity`` is one less.
    public let ringSize: Int
    /// Whether each submit's last op asks for an interrupt.
    public let interrupts: Bool
    /// Ops shorter than this many bytes run on the calling CPU (0: none do). See "CPU fallback".
    public let cpuCopyThreshold: Int

    private let pool: DescriptorPool
    @usableFromInline let ring: UnsafeMutablePointer<Descriptor>
    @usableFromInline let ringIOVA: UInt64
    @usableFromInline let mask: UInt64
    @usableFromInline let counted: Bool
    @usableFromInline let maximumTransfer: UInt64
    @usableFromInline let maximumAddress: UInt64
    @usableFromInline let canFill: Bool
    /// Flags of each submit's last op: a completion-word update (and the interrupt).
    private let batchEndFlags: UInt32
    /// Outcome of each op not yet retired, by op number (low log2(ringSize) bits). Entries of
    /// retired ops are reset to `.successful`, so enqueue need not write them.
    private let status: UnsafeMutablePointer<CopyStatus>
    /// How many entries of ``status`` read `.failed` (ops failed and not yet retired). While 0,
    /// ``completed(max:)`` retires without reading ``status``.
    private var unretiredFailures = 0
    /// ``capacity`` as an op count.
    @usableFromInline let opCapacity: UInt64
    /// `cpuCopyThreshold`; 0 when every op goes to the engine.
    @usableFromInline let cpuLimit: UInt64
    /// Copies and fills shorter than this take ``putShort``: `cpuLimit`; on a NULL-terminated
    /// chain at least 1, so that a zero-length one takes it with the fallback off too (one
    /// compare either way) and becomes a NULL of size 1 before the old tail links to it (see
    /// "CPU fallback"). On counted chains the provider conforms a transfer size of 0.
    @usableFromInline let shortLimit: UInt64
    /// CPU ops enqueued and not yet run, by CPU op number (low log2(ringSize) bits).
    private let cpuOps: UnsafeMutablePointer<CPUOp>
    @exclusivity(unchecked) private var regions: DMARegionSnapshot

    // What the inlined enqueue path (`@inlinable`, so that a client's call is straight-line
    // code) reads is @usableFromInline; its `var`s are @exclusivity(unchecked) as well, since
    // inlined into another module each access would get a dynamic exclusivity check
    // (swift_beginAccess). One thread uses a queue, so accesses never overlap.

    // Op numbers (monotonic; the ticket is the low 16 bits), ops of both kinds.
    @exclusivity(unchecked) @usableFromInline var issued: UInt64 = 0
    /// Ops retired by the client; `retiredOps ≤ retirable ≤ issued`, `issued - retiredOps ≤ capacity`.
    @exclusivity(unchecked) @usableFromInline var retiredOps: UInt64 = 0
    /// Ops below this number can be retired: every op before the first descriptor the engine
    /// has not finished and before the first CPU op not yet run. Kept up to date where either
    /// moves (``refresh()`` seeing progress, a halt, ``submit()`` running CPU ops), so a poll
    /// reads one number; an enqueue never moves it (the new op is unfinished).
    private var retirable: UInt64 = 0
    // Descriptor numbers (monotonic; the ring slot is the low log2(ringSize) bits).
    @exclusivity(unchecked) @usableFromInline var enqueued: UInt64 = 0
    private var submitted: UInt64 = 0
    /// Descriptors the engine finished (successfully or not); `finished ≤ submitted ≤ enqueued`.
    private var finished: UInt64 = 0
    private var needsStart = true
    /// One more than the descriptor number of the last fenced engine op (0: none).
    @exclusivity(unchecked) @usableFromInline var fenceEnd: UInt64 = 0
    // CPU op numbers: recorded, and run (by submit).
    private var cpuEnqueued: UInt64 = 0
    private var cpuRun: UInt64 = 0

    // @exclusivity(unchecked): the queue is used by one thread; without it, each submit that
    // runs CPU ops made three dynamic exclusivity checks (swift_beginAccess) for these.

    /// Why the last failed op failed (the provider's decoded error, or the CPU fallback's).
    @exclusivity(unchecked) public private(set) var lastFault: ChannelFault?
    /// How many ops failed since the queue was made.
    @exclusivity(unchecked) public private(set) var failedCount: Int = 0
    /// How many ops ran on the calling CPU (below ``cpuCopyThreshold``) since the queue was made.
    @exclusivity(unchecked) public private(set) var cpuOpCount: Int = 0

    /// Builds a queue on a freshly allocated (or reset) channel.
    ///
    /// - Parameters:
    ///   - ringSize: descriptors in the ring, a power of two from 2 to 65536.
    ///   - interrupts: ask for an interrupt at the end of every submit (needed by
    ///     ``waitForCompletion(timeout:)``).
    ///   - cpuCopyThreshold: ops shorter than this many bytes run on the calling CPU (see "CPU
    ///     fallback"); 0, the default, sends every op to the engine. Take the copy threshold
    ///     `netdma bench` prints for the engine, or ``cpuCopyThreshold(for:)`` of your own
    ///     measurements.
    /// - Throws: `.invalidArgument` for a bad ring size or a negative threshold; `.invalidState`
    ///   when the channel is not in the allocated state; `.unsupported` for interrupts on a
    ///   channel without an interrupt vector; the DMA memory's error.
    public init(channel: NetDMAChannel, ringSize: Int = 1024, interrupts: Bool = false,
                cpuCopyThreshold: Int = 0) throws(DriverError) {
        guard ringSize >= 2, ringSize <= 65536, ringSize & (ringSize - 1) == 0 else {
            throw DriverError(.invalidArgument, "The ring size must be a power of two from 2 to 65536, got \(ringSize).")
        }
        guard cpuCopyThreshold >= 0 else {
            throw DriverError(.invalidArgument,
                "The CPU-copy threshold must be 0 (off) or a number of bytes (ops shorter than it run on the CPU), got \(cpuCopyThreshold).")
        }
        guard channel.state == .allocated else {
            throw DriverError(.invalidState, "A CopyQueue needs a channel in state allocated (fresh or reset), not \(channel.state).")
        }
        if interrupts && channel.interruptEventFD == nil {
            throw DriverError(.unsupported, "Channel \(channel.index) has no interrupt vector; make the queue with interrupts: false and poll.")
        }
        self.channel = channel
        self.ringSize = ringSize
        self.interrupts = interrupts
        self.cpuCopyThreshold = cpuCopyThreshold
        pool = try DescriptorPool(memory: channel.dmaMemory, count: ringSize)
        pool.linkRing()
        ring = pool.base
        ringIOVA = pool.baseIOVA
        mask = UInt64(ringSize - 1)
        counted = channel.countedChains
        maximumTransfer = UInt64(channel.maximumTransferSize)
        maximumAddress = channel.maximumAddress
        canFill = channel.providerFlags.contains(.fill)
        batchEndFlags = ControlFlags.statusUpdateOnCompletion.rawValue
            | (interrupts ? ControlFlags.interruptOnCompletion.rawValue : 0)
        status = .allocate(capacity: ringSize)
        status.initialize(repeating: .successful, count: ringSize)
        opCapacity = UInt64(ringSize - 1)
        cpuLimit = UInt64(cpuCopyThreshold)
        shortLimit = counted ? UInt64(cpuCopyThreshold) : max(UInt64(cpuCopyThreshold), 1)
        cpuOps = .allocate(capacity: cpuCopyThreshold > 0 ? ringSize : 1)
        regions = DMARegionSnapshot(channel.dmaMemory)
    }

    deinit {
        // The ring goes away with the queue. A provider may still hold a position in it (a
        // 1.x chain's tail it re-reads on the next Append): Reset makes it forget every
        // submitted descriptor (NetDMA §5.9), Abort at least stops it. The channel stays
        // allocated for its owner, who Starts it again to use it.
        switch channel.state {
        case .running, .halted:
            if channel.callbacks.contains(.reset) {
                try? channel.reset()
            } else if channel.state == .running, channel.callbacks.contains(.abort) {
                try? channel.abort()
            }
        case .allocated, .suspended, .freed:
            break
        }
        status.deinitialize(count: ringSize)
        status.deallocate()
        cpuOps.deallocate()
    }

    /// The most ops that can be outstanding (enqueued and not retired): `ringSize - 1`, engine
    /// and CPU ops together.
    @inlinable
    public var capacity: Int { ringSize - 1 }

    /// How many more ops can be enqueued now (DPDK's `rte_dma_burst_capacity`).
    @inlinable @inline(__always)
    public var freeSlots: Int { capacity - Int(issued &- retiredOps) }

    /// Ops enqueued but not yet submitted (engine ops not handed to the engine, CPU ops not run).
    public var pendingSubmission: Int { Int(enqueued &- submitted) + Int(cpuEnqueued &- cpuRun) }

    /// Ops submitted and not yet retired by ``completed(max:)`` or ``completedStatus(max:into:)``.
    public var outstanding: Int { Int(issued &- retiredOps) - pendingSubmission }

    // MARK: - enqueue

    /// Enqueues a copy of `length` bytes from IOVA `source` to IOVA `destination`.
    ///
    /// A copy shorter than ``cpuCopyThreshold`` runs on the CPU at the next ``submit()`` (see
    /// "CPU fallback" for when it goes to the engine anyway). A zero-length copy moves nothing
    /// and succeeds.
    ///
    /// - Parameter fence: finish this op's writes before the next op reads (`NET_DMA_SERIALIZE_TRANSFER`).
    /// - Returns: the op's ticket (DPDK's ring index).
    /// - Throws: `.descriptorTooLarge` when `length` exceeds the channel's maximum transfer size
    ///   or the destination lies beyond the engine's address limit (the queue never splits an
    ///   op silently: split it yourself); `.queueFull` when ``freeSlots`` is 0.
    @inlinable @inline(__always)
    public func enqueueCopy(source: UInt64, destination: UInt64, length: Int, fence: Bool = false) throws(DriverError) -> UInt16 {
        if !fence, let ticket = enqueueCopyIfCommon(source: source, destination: destination, length: length) { return ticket }
        return try enqueueChecked(.copy, source: source, destination: destination, length: length, fence: fence)
    }

    /// The common case of ``enqueueCopy(source:destination:length:fence:)`` without a fence,
    /// inlined: an engine op of a length the engine takes, with room in the queue. Nil, with
    /// nothing enqueued, when anything else applies (enqueueCopy's full path then decides).
    /// For callers whose frame should hold no error path (the C ABI's entry points).
    @inlinable @inline(__always)
    package func enqueueCopyIfCommon(source: UInt64, destination: UInt64, length: Int) -> UInt16? {
        let n = UInt64(truncatingIfNeeded: length)
        guard n <= maximumTransfer, destination <= maximumAddress &- n, source <= maximumAddress &- n,
              n >= shortLimit, issued &- retiredOps < opCapacity else { return nil }
        return write(size: UInt32(truncatingIfNeeded: length), flags: 0, source: source, destination: destination)
    }

    /// Enqueues a fill: the 8-byte `pattern` repeated over `length` bytes at `destination`.
    ///
    /// - Throws: `.unsupported` when the provider has no fill (``ProviderFlags/fill``); as
    ///   ``enqueueCopy(source:destination:length:fence:)`` otherwise.
    @inlinable @inline(__always)
    public func enqueueFill(pattern: UInt64, destination: UInt64, length: Int, fence: Bool = false) throws(DriverError) -> UInt16 {
        if !fence, let ticket = enqueueFillIfCommon(pattern: pattern, destination: destination, length: length) { return ticket }
        return try enqueueChecked(.fill, source: pattern, destination: destination, length: length, fence: fence)
    }

    /// The common case of ``enqueueFill(pattern:destination:length:fence:)`` without a fence,
    /// as ``enqueueCopyIfCommon(source:destination:length:)`` is enqueueCopy's.
    @inlinable @inline(__always)
    package func enqueueFillIfCommon(pattern: UInt64, destination: UInt64, length: Int) -> UInt16? {
        let n = UInt64(truncatingIfNeeded: length)
        guard canFill, n <= maximumTransfer, destination <= maximumAddress &- n, n >= shortLimit,
              issued &- retiredOps < opCapacity else { return nil }
        return write(size: UInt32(truncatingIfNeeded: length), flags: Self.fillControl, source: pattern, destination: destination)
    }

    /// ``enqueueCopy(source:destination:length:fence:)`` and
    /// ``enqueueFill(pattern:destination:length:fence:)`` for whatever their inlined common case
    /// (an engine op of a length the engine takes, no fence, room in the queue) leaves out: the
    /// checks in the documented order (fill supported, length, reach), then a short op's
    /// routing, a fence, or the full queue. Out of line, so that the inlined path keeps no
    /// throw of its own.
    @usableFromInline @inline(never)
    func enqueueChecked(_ kind: CPUOp.Kind, source: UInt64, destination: UInt64, length: Int,
                        fence: Bool) throws(DriverError) -> UInt16 {
        let n = UInt64(truncatingIfNeeded: length)
        guard kind != .fill || canFill else { throw Self.noFill }
        guard n <= maximumTransfer else { throw Self.tooLarge }
        guard destination <= maximumAddress &- n, kind == .fill || source <= maximumAddress &- n else { throw Self.beyondReach }
        if n < shortLimit {
            return try putShort(kind, length: length, source: source, destination: destination, fence: fence)
        }
        let flags = fenced(kind == .fill ? Self.fillControl : 0, fence)
        return try put(size: UInt32(truncatingIfNeeded: length), flags: flags, source: source, destination: destination)
    }

    /// Enqueues a NULL op (`NET_DMA_NULL_TRANSFER`): moves nothing; its completion proves that
    /// every op before it finished. With a ``cpuCopyThreshold`` it never needs the engine,
    /// unless it is fenced behind an unfinished engine op.
    @inlinable @inline(__always)
    public func enqueueNull(fence: Bool = false) throws(DriverError) -> UInt16 {
        if cpuLimit != 0 { return try putShort(.null, length: 0, source: 0, destination: 0, fence: fence) }
        let flags = fenced(ControlFlags.nullTransfer.rawValue, fence)
        return try put(size: Self.nullSize, flags: flags, source: 0, destination: 0)
    }

    /// An op shorter than the threshold: recorded to run on the CPU at the next submit, unless
    /// a fence stands in the way (a fenced engine op before it is unfinished, or it is fenced
    /// and an engine op before it is unfinished): then it goes to the engine, which orders it.
    /// Before deciding so, it looks at the completion word once more. Routed to the engine, a
    /// zero-length copy or fill becomes a NULL descriptor of size 1, like a NULL op (see "CPU
    /// fallback"). With the fallback off, only zero-length copies and fills on a 1.x chain
    /// come here, and all go to the engine that way.
    @usableFromInline @inline(never)
    func putShort(_ kind: CPUOp.Kind, length: Int, source: UInt64, destination: UInt64,
                  fence: Bool) throws(DriverError) -> UInt16 {
        guard issued &- retiredOps < opCapacity else { throw Self.full }
        // With the fallback off only zero-length ops come here: they go to the engine.
        var free = cpuLimit != 0 && fenceEnd <= finished && (!fence || enqueued == finished)
        if !free && cpuLimit != 0 && finished != submitted {
            refresh()
            free = fenceEnd <= finished && (!fence || enqueued == finished)
        }
        guard free else {
            let empty = kind == .null || length == 0
            let flags = fenced(empty ? ControlFlags.nullTransfer.rawValue : kind == .fill ? Self.fillControl : 0, fence)
            return try put(size: empty ? Self.nullSize : UInt32(truncatingIfNeeded: length), flags: flags,
                           source: empty ? 0 : source, destination: empty ? 0 : destination)
        }
        cpuOps[Int(truncatingIfNeeded: cpuEnqueued & mask)] = CPUOp(op: issued, source: source, destination: destination,
                                                                    length: UInt32(truncatingIfNeeded: length), kind: kind)
        cpuEnqueued &+= 1
        let ticket = UInt16(truncatingIfNeeded: issued)
        issued &+= 1
        return ticket
    }

    /// `flags` for the next engine op, with `NET_DMA_SERIALIZE_TRANSFER` when `fence`: then
    /// the ops after it wait for it (``fenceEnd``).
    @inlinable @inline(__always)
    func fenced(_ flags: UInt32, _ fence: Bool) -> UInt32 {
        guard fence else { return flags }
        fenceEnd = enqueued &+ 1
        return flags | ControlFlags.serializeTransfer.rawValue
    }

    /// Writes an engine op into the next descriptor, if the queue has room.
    @inlinable @inline(__always)
    func put(size: UInt32, flags: UInt32, source: UInt64, destination: UInt64) throws(DriverError) -> UInt16 {
        guard issued &- retiredOps < opCapacity else { throw Self.full }
        return write(size: size, flags: flags, source: source, destination: destination)
    }

    /// Writes an engine op into the next descriptor (the queue has room); `userContext1`
    /// records its op number.
    @inlinable @inline(__always)
    func write(size: UInt32, flags: UInt32, source: UInt64, destination: UInt64) -> UInt16 {
        let slot = Int(truncatingIfNeeded: enqueued & mask)
        let d = ring + slot
        d.pointee.transferSize = size
        d.pointee.controlFlags = flags
        d.pointee.source = source
        d.pointee.destination = destination
        if !counted {
            // 1.x: restore the ring link (a previous lap may have ended a batch here with NULL).
            d.pointee.next = ringIOVA &+ ((UInt64(truncatingIfNeeded: slot) &+ 1) & mask) &* 64
        }
        d.pointee.userContext1 = issued
        let ticket = UInt16(truncatingIfNeeded: issued)
        issued &+= 1
        enqueued &+= 1
        return ticket
    }

    // MARK: - submit

    /// Hands every enqueued op to the engine (the doorbell): one Append of the batch (the
    /// first submit, and the first after a halt with nothing left to run, is a Start). CPU ops
    /// run first, in ticket order, on the calling thread.
    ///
    /// - Throws: the channel's error (e.g. `.invalidState` while the provider is powered
    ///   down); the engine ops stay enqueued and a later submit retries them. The CPU ops ran
    ///   all the same (they do not need the engine, powered down or not).
    @inline(__always)
    public func submit() throws(DriverError) {
        if cpuRun != cpuEnqueued { runCPUOps() }
        let n = enqueued &- submitted
        guard n > 0 else { return }
        let first = Int(truncatingIfNeeded: submitted & mask)
        let last = Int(truncatingIfNeeded: (enqueued &- 1) & mask)
        ring[last].controlFlags |= batchEndFlags
        if !counted { ring[last].next = 0 }
        let chain = DescriptorChain(address: ring + first, iova: ringIOVA &+ UInt64(truncatingIfNeeded: first) &* 64,
                                    count: Int(truncatingIfNeeded: n))
        do {
            if needsStart {
                try startAfterRefusal(chain)
            } else {
                let oldTail = ring + Int(truncatingIfNeeded: (submitted &- 1) & mask)
                if !counted { DescriptorPool.publishNext(of: oldTail, chain.iova) }
                do {
                    try channel.append(chain)
                } catch {
                    if !counted { DescriptorPool.publishNext(of: oldTail, 0) }
                    try submitAfterHalt(chain, oldTail: oldTail, error)
                }
            }
        } catch {
            // Not submitted: restore the 1.x ring link, so that the batch can grow and be
            // submitted later as one chain.
            if !counted { ring[last].next = ringIOVA &+ ((UInt64(truncatingIfNeeded: last) &+ 1) & mask) &* 64 }
            throw error
        }
        submitted = enqueued
    }

    /// Append found the channel halted by an op the queue has not accounted for yet: account
    /// for it (re-Starting the unprocessed ops), then hand the batch over. The restarted ops
    /// may halt again; each round retires at least one failed op, so this ends. Cold path.
    @inline(never)
    private func submitAfterHalt(_ chain: DescriptorChain, oldTail: UnsafeMutablePointer<Descriptor>,
                                 _ error: DriverError) throws(DriverError) {
        var last = error
        for _ in 0...ringSize {
            guard channel.state == .halted || channel.faultPending.load(ordering: .acquiring) else { throw last }
            handleHalt()
            do {
                if needsStart {
                    try startAfterRefusal(chain)
                } else {
                    if !counted { DescriptorPool.publishNext(of: oldTail, chain.iova) }
                    try channel.append(chain)
                }
                return
            } catch {
                if !counted && !needsStart { DescriptorPool.publishNext(of: oldTail, 0) }
                last = error
            }
        }
        throw last
    }

    /// A Start is due (first submit, or a recovery Start that was refused, e.g. while the
    /// provider was powered down): it must include the ops submitted before and not yet
    /// finished, or they would never run while later completions named ops after them.
    @inline(never)
    private func startAfterRefusal(_ chain: DescriptorChain) throws(DriverError) {
        guard finished != submitted else { return try startAt(chain) }
        let oldTail = ring + Int(truncatingIfNeeded: (submitted &- 1) & mask)
        if !counted { DescriptorPool.publishNext(of: oldTail, chain.iova) }
        let first = Int(truncatingIfNeeded: finished & mask)
        do {
            try startAt(DescriptorChain(address: ring + first, iova: ringIOVA &+ UInt64(truncatingIfNeeded: first) &* 64,
                                        count: Int(truncatingIfNeeded: enqueued &- finished)))
        } catch {
            if !counted { DescriptorPool.publishNext(of: oldTail, 0) }
            throw error
        }
    }

    @inline(never)  // cold: the first submit and recovery (takes the channel lock)
    private func startAt(_ chain: DescriptorChain) throws(DriverError) {
        try channel.start(chain)
        needsStart = false
    }

    /// Runs the CPU ops recorded since the last submit, in order. One that fails is marked
    /// failed (nothing written); it is retired in ticket order like any op.
    @inline(never)
    private func runCPUOps() {
        repeat {
            let c = cpuOps[Int(truncatingIfNeeded: cpuRun & mask)]
            if let fault = c.run(&regions) {
                status[Int(truncatingIfNeeded: c.op & mask)] = .failed
                unretiredFailures += 1
                failedCount += 1
                lastFault = fault
            }
            cpuRun &+= 1
            cpuOpCount &+= 1
        } while cpuRun != cpuEnqueued
        updateRetirable()
    }

    // MARK: - completion

    /// Reads the completion word once (after the provider's completion processing, on DSA) and
    /// advances ``finished``; handles a halt (cold).
    @inline(__always)
    private func refresh() {
        channel.pollProvider()
        let w = channel.loadCompletionWord()
        let st = w & CompletionWord.statusMask
        if st == UInt64(TransferStatus.halted.rawValue) || channel.faultPending.load(ordering: .relaxed) {
            if finished != submitted { handleHalt() }
            return
        }
        guard st != UInt64(TransferStatus.armed.rawValue), let slot = slot(ofIOVA: w & ~0x3F) else { return }
        // The op with this slot among the outstanding ones; a slot of an op already finished
        // (a stale word) maps beyond `submitted`.
        let op = finished &+ ((slot &- finished) & mask)
        if op < submitted {
            finished = op &+ 1
            updateRetirable()
        }
    }

    /// Recomputes ``retirable`` after ``finished`` or ``cpuRun`` moved.
    @inline(__always)
    private func updateRetirable() {
        var bound = finished == enqueued ? issued : ring[Int(truncatingIfNeeded: finished & mask)].userContext1
        if cpuRun != cpuEnqueued { bound = Swift.min(bound, cpuOps[Int(truncatingIfNeeded: cpuRun & mask)].op) }
        retirable = bound
    }

    @inline(__always)
    private func slot(ofIOVA iova: UInt64) -> UInt64? {
        let off = iova &- ringIOVA
        guard iova >= ringIOVA, off >> 6 <= mask else { return nil }
        return off >> 6
    }

    /// The engine halted: ops up to the last completed one finished, the next one failed, and
    /// the rest are re-Started. Cold path (reads the provider's fault, may take the channel lock).
    @inline(never)
    private func handleHalt() {
        let fault = channel.fault
        channel.faultPending.store(false, ordering: .relaxed)
        let w = channel.completionWord
        var failing = finished
        if let d = fault?.descriptor, let s = slot(ofIOVA: d) {
            failing = finished &+ ((s &- finished) & mask)
        } else if w.status == .halted, let s = slot(ofIOVA: w.descriptor) {
            let done = finished &+ ((s &- finished) & mask)
            failing = done < submitted ? done &+ 1 : finished
        }
        guard failing < submitted else {
            // Nothing of ours failed (the word names an op already accounted for, e.g. an
            // Abort by someone else): re-Start whatever is left.
            needsStart = true
            restartRemaining()
            return
        }
        status[Int(truncatingIfNeeded: ring[Int(truncatingIfNeeded: failing & mask)].userContext1 & mask)] = .failed
        unretiredFailures += 1
        failedCount += 1
        lastFault = fault
        finished = failing &+ 1
        updateRetirable()
        needsStart = true
        restartRemaining()
    }

    private func restartRemaining() {
        let remaining = submitted &- finished
        guard remaining > 0 else { return }
        let first = Int(truncatingIfNeeded: finished & mask)
        let chain = DescriptorChain(address: ring + first, iova: ringIOVA &+ UInt64(truncatingIfNeeded: first) &* 64,
                                    count: Int(truncatingIfNeeded: remaining))
        // If the Start fails (e.g. powered down), the next submit or poll tries again.
        if (try? startAt(chain)) == nil { needsStart = true }
    }

    /// Retires up to `max` ops that completed successfully, in order (DPDK's
    /// `rte_dma_completed`). Stops at a failed op: it is retired, reported through `hadError`
    /// (its ticket is `lastTicket &+ 1`), and never reported again.
    @inline(__always)
    public func completed(max: Int) -> CopyCompletion {
        refresh()
        if needsStart && submitted != finished { restartRemaining() }
        let bound = retirable
        guard unretiredFailures == 0 else { return completedPastFailures(max: max, bound: bound) }
        // No op below `bound` failed: retire them in one step.
        let n = Swift.min(bound &- retiredOps, UInt64(truncatingIfNeeded: Swift.max(max, 0)))
        retiredOps &+= n
        return CopyCompletion(count: Int(truncatingIfNeeded: n), lastTicket: UInt16(truncatingIfNeeded: retiredOps &- 1),
                              hadError: false)
    }

    /// ``completed(max:)`` while a failed op is not yet retired: op by op up to the first
    /// failed one. Cold (an op failed).
    @inline(never)
    private func completedPastFailures(max: Int, bound: UInt64) -> CopyCompletion {
        var n = 0
        while n < max && retiredOps < bound {
            let slot = Int(truncatingIfNeeded: retiredOps & mask)
            if status[slot] == .failed {
                status[slot] = .successful
                unretiredFailures -= 1
                retiredOps &+= 1
                return CopyCompletion(count: n, lastTicket: UInt16(truncatingIfNeeded: retiredOps &- 2), hadError: true)
            }
            retiredOps &+= 1
            n += 1
        }
        return CopyCompletion(count: n, lastTicket: UInt16(truncatingIfNeeded: retiredOps &- 1), hadError: false)
    }

    /// Retires up to `min(max, statuses.count)` ops, failed ones included, writing each op's
    /// status in order (DPDK's `rte_dma_completed_status`).
    ///
    /// - Returns: how many ops were retired and the ticket of the last one.
    @inline(__always)
    public func completedStatus(max: Int, into statuses: UnsafeMutableBufferPointer<CopyStatus>) -> (count: Int, lastTicket: UInt16) {
        refresh()
        if needsStart && submitted != finished { restartRemaining() }
        let limit = Swift.min(max, statuses.count)
        let bound = retirable
        var n = 0
        while n < limit && retiredOps < bound {
            let slot = Int(truncatingIfNeeded: retiredOps & mask)
            statuses[n] = status[slot]
            if status[slot] == .failed { unretiredFailures -= 1 }
            status[slot] = .successful
            retiredOps &+= 1
            n += 1
        }
        return (n, UInt16(truncatingIfNeeded: retiredOps &- 1))
    }

    /// Waits for the channel's interrupt until at least one submitted op can be retired (or
    /// nothing is outstanding). Needs `interrupts: true`.
    ///
    /// - Throws: `.unsupported` without interrupts; `.timeout` when no interrupt came within
    ///   `timeout`.
    public func waitForCompletion(timeout: Duration = .seconds(5)) async throws(DriverError) {
        guard interrupts else { throw Self.noInterrupts }
        while true {
            let g = channel.interruptGeneration
            refresh()
            if needsStart && submitted != finished { restartRemaining() }
            if waitIsOver { return }
            _ = try await channel.waitForInterrupt(after: g, timeout: timeout)
        }
    }

    /// Blocks the calling thread until at least one submitted op can be retired (or nothing is
    /// outstanding): the wait of DPDK- or SPDK-style code that polls on its own thread. The
    /// thread spins on the channel's interrupt for up to `spin` (about twice as long as recent
    /// waits took), then sleeps until the DPC wakes it
    /// (``NetDMAChannel/blockUntilInterrupt(after:timeout:spin:)``). Unlike
    /// ``waitForCompletion(timeout:)``, no executor hop follows the DPC. Needs `interrupts: true`.
    ///
    /// - Throws: `.unsupported` without interrupts; `.timeout` when no interrupt came within
    ///   `timeout`; `.invalidState` when the channel is freed meanwhile.
    public func blockUntilCompletion(timeout: Duration = .seconds(5), spin: Duration = .microseconds(50)) throws(DriverError) {
        guard interrupts else { throw Self.noInterrupts }
        while true {
            let g = channel.interruptGeneration
            refresh()
            if needsStart && submitted != finished { restartRemaining() }
            if waitIsOver { return }
            _ = try channel.blockUntilInterrupt(after: g, timeout: timeout, spin: spin)
        }
    }

    /// Whether a wait for completions can end: an op can be retired, or none is outstanding.
    /// (Op numbers and descriptor numbers differ once CPU ops exist: compare op numbers only.)
    private var waitIsOver: Bool { retirable != retiredOps || outstanding == 0 }

    /// The TransferSize of a NULL descriptor. NetDMA lets the engine ignore it, but some CBDMA
    /// generations fail a NULL of size 0 with DXSERR (the CB 3.0 erratum), and on a 1.x chain a
    /// running engine may fetch a descriptor as soon as the old tail links to it, before the
    /// provider's Append could conform it: so the queue writes 1 itself and depends on no fix-up.
    @inlinable static var nullSize: UInt32 { 1 }
    /// ControlFlags of a fill descriptor: the operation in bits 31:24.
    @inlinable static var fillControl: UInt32 { UInt32(Operation.fill.rawValue) << 24 }

    // Constant errors: throwing them does not allocate.
    @usableFromInline static let tooLarge = DriverError(.descriptorTooLarge,
        "The op is longer than the channel's maximum transfer size; split it into several ops (CopyQueue never splits silently).")
    @usableFromInline static let beyondReach = DriverError(.descriptorTooLarge,
        "The op's addresses reach beyond the engine's maximum address; use DMA memory the engine can reach.")
    @usableFromInline static let full = DriverError(.queueFull,
        "The copy queue is full; retire finished ops with completed(max:) before enqueueing more.")
    private static let noInterrupts = DriverError(.unsupported,
        "This CopyQueue was made with interrupts: false; poll completed(max:) instead.")
    @usableFromInline static let noFill = DriverError(.unsupported,
        "This provider does not execute fill descriptors; use a copy from a pattern buffer.")
}
