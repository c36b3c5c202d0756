import NetDMA
import Platform
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// What a soak runs: how long, how many client threads, which engines, how often things go wrong.
struct SoakOptions: Sendable {
    /// Wall-clock seconds of traffic (draining and teardown come after).
    var seconds: Double = 10
    /// Client threads; the channels of every engine are dealt out among them (one client per
    /// channel, as NetDMA requires).
    var clients: Int = 4
    /// The seed of every random choice.
    var seed: UInt64 = 1
    /// The engines: one CBDMA model function per generation named (CBDMA functions have one
    /// channel each; 3.4 recovers from a halt in place, older ones by reset), and DSA work
    /// queues (0: no DSA).
    var ioatProfiles: [String] = ["icx", "skx"]
    var dsaWorkQueues: Int = 4
    /// Descriptors per copy queue (a power of two).
    var ringSize: Int = 64
    /// On average one control event (Suspend/Resume, Abort, Reset, an injected fault, a stall,
    /// a bad op) per this many batches of a client.
    var controlEvery: Int = 12
    /// Mean milliseconds between power cycles (PowerDown, PowerUp) of a random engine; 0: none.
    var powerCycleMilliseconds: Int = 150
    /// How long the final drain may take before outstanding ops count as lost.
    var drainSeconds: Double = 15
    /// Control events left out (to narrow a failure down).
    var skip: Set<SoakEvent> = []
    /// Count the process's file descriptors and threads before and after (off in tests that
    /// share the process with other tests running in parallel).
    var processCensus = true
    /// Fault events corrupt data silently instead (CBDMA model), to prove the checks catch it.
    var silentCorruption = false
}

/// The kinds of trouble a soak makes.
enum SoakEvent: String, CaseIterable, Sendable {
    case suspend, abort, reset, fault, stall, bad, power
}

/// What a soak counted: the `netdma soak` report and its JSON document.
struct SoakTotals: Codable, Sendable, Equatable {
    var seconds: Double = 0
    var seed: UInt64 = 0
    var engines: [String] = []
    var channels = 0
    var clients = 0
    /// Ops enqueued, and how each ended: completed, failed (reported with a cause), or
    /// abandoned by a Reset of their channel before they were reported.
    var ops = 0
    var successful = 0
    var failed = 0
    var abandonedByReset = 0
    var copies = 0
    var fills = 0
    var nulls = 0
    var fences = 0
    /// Copies from an unmapped IOVA, which the engine must fail.
    var badOps = 0
    /// Device faults injected into the models, and how many of them failed an op.
    var faultsInjected = 0
    var injectedFaultsSeen = 0
    var faultClasses: [String: Int] = [:]
    var stalls = 0
    var suspends = 0
    var aborts = 0
    var resets = 0
    var powerCycles = 0
    /// PowerDowns refused because a channel did not drain in time (the device stays up).
    var powerDownsRefused = 0
    /// NetDMA calls refused, by error code (Append/Start/Suspend while powered down, …).
    var refusals: [String: Int] = [:]
    var iommuFaults: UInt64 = 0
    var droppedDescriptors: UInt64 = 0
    /// Invariant violations: any of these non-zero fails the soak.
    var lost = 0
    var duplicated = 0
    var corrupted = 0
    var unexplainedFailures = 0
    var leaks: [String] = []
    /// The first violations of each kind, described.
    var violations: [String] = []
    /// Violations by kind.
    var violationKinds: [String: Int] = [:]

    var passed: Bool {
        lost == 0 && duplicated == 0 && corrupted == 0 && unexplainedFailures == 0 && leaks.isEmpty && violations.isEmpty
    }

    mutating func add(_ o: SoakTotals) {
        ops += o.ops; successful += o.successful; failed += o.failed; abandonedByReset += o.abandonedByReset
        copies += o.copies; fills += o.fills; nulls += o.nulls; fences += o.fences; badOps += o.badOps
        faultsInjected += o.faultsInjected; injectedFaultsSeen += o.injectedFaultsSeen
        faultClasses.merge(o.faultClasses, uniquingKeysWith: +)
        stalls += o.stalls; suspends += o.suspends; aborts += o.aborts; resets += o.resets
        powerCycles += o.powerCycles; powerDownsRefused += o.powerDownsRefused
        refusals.merge(o.refusals, uniquingKeysWith: +)
        lost += o.lost; duplicated += o.duplicated; corrupted += o.corrupted; unexplainedFailures += o.unexplainedFailures
        leaks += o.leaks
        for v in o.violations { keep(v) }
        for (k, n) in o.violationKinds { violationKinds[k, default: 0] += n }
    }

    /// Records a violation of kind `kind` (the first few of each kind are kept in full).
    mutating func violation(_ kind: String, _ text: String) {
        violationKinds[kind, default: 0] += 1
        if violationKinds[kind]! <= 4 { keep(text) }
    }

    private mutating func keep(_ text: String) {
        if violations.count < 40 { violations.append(text) }
    }

    /// The human-readable report.
    var report: String {
        var lines = [
            "soak: \(String(format: "%.1f", seconds)) s, seed \(seed), \(clients) client threads, \(channels) channels on \(engines.joined(separator: " + "))",
            "ops \(ops): successful \(successful), failed \(failed), abandoned by reset \(abandonedByReset)",
            "  copies \(copies), fills \(fills), NULLs \(nulls), fenced \(fences), bad (unmapped source) \(badOps)",
            "faults injected \(faultsInjected) (seen failing an op \(injectedFaultsSeen)), stalls \(stalls), iommu faults \(iommuFaults), dropped WQ descriptors \(droppedDescriptors)",
            "suspends \(suspends), aborts \(aborts), resets \(resets), power cycles \(powerCycles) (refused \(powerDownsRefused))",
        ]
        if !faultClasses.isEmpty {
            lines.append("fault classes: " + faultClasses.sorted { $0.key < $1.key }.map { "\($0.key) \($0.value)" }.joined(separator: ", "))
        }
        if !refusals.isEmpty {
            lines.append("refused calls: " + refusals.sorted { $0.key < $1.key }.map { "\($0.key) \($0.value)" }.joined(separator: ", "))
        }
        lines.append("lost = \(lost), duplicated = \(duplicated), corrupted = \(corrupted), unexplained failures = \(unexplainedFailures), leaks = \(leaks.count)")
        for l in leaks { lines.append("  leak: \(l)") }
        if !violationKinds.isEmpty {
            lines.append("violations: " + violationKinds.sorted { $0.key < $1.key }.map { "\($0.key) \($0.value)" }.joined(separator: ", "))
        }
        for v in violations { lines.append("  violation: \(v)") }
        lines.append(passed ? "PASS" : "FAIL")
        return lines.joined(separator: "\n")
    }
}

/// The soak: random traffic and random trouble on every channel of the device models, with the
/// NetDMA accounting invariant checked on every completion.
///
/// Client threads each own some channels. Each channel runs a ``CopyQueue``; a client enqueues
/// batches of copies, fills, NULLs and fenced ops, submits them and retires completions, and
/// now and then suspends and resumes the channel, aborts it, resets it, injects a device
/// fault (every CHANERR class on CBDMA, error statuses on DSA), stalls the engine or slips in
/// a copy from an unmapped address. A power thread cycles random engines through
/// PowerDown/PowerUp. Checked continuously: every op is reported exactly once (ticket order,
/// no op twice, none missing after the final drain), successful ops are byte-exact and write
/// nothing beyond their length, failed ops are explained (a bad op, an injected fault, an
/// Abort) and name a cause. Checked at the end: no DMA memory region, IOMMU mapping, file
/// descriptor or thread outlives the run.
final class Soak {
    let options: SoakOptions

    init(options: SoakOptions) { self.options = options }

    /// Runs the soak and returns what it counted.
    func run() -> SoakTotals {
        var totals = SoakTotals()
        totals.seed = options.seed
        totals.clients = options.clients
        let fdsBefore = ProcessCensus.openFileDescriptors()
        let threadsBefore = ProcessCensus.threads()
        let started = ContinuousClock.now
        do {
            try runEngines(&totals)
        } catch {
            totals.violation("setup", "setup failed: \(error)")
        }
        totals.seconds = Double((ContinuousClock.now - started).components.seconds)
            + Double((ContinuousClock.now - started).components.attoseconds) / 1e18
        // Threads end asynchronously after a join-less stop; give them a bounded moment.
        guard options.processCensus else { return totals }
        let deadline = ContinuousClock.now + .seconds(3)
        var threadsAfter = ProcessCensus.threads()
        while threadsAfter > threadsBefore && ContinuousClock.now < deadline {
            usleep(10_000)
            threadsAfter = ProcessCensus.threads()
        }
        let fdsAfter = ProcessCensus.openFileDescriptors()
        if fdsAfter > fdsBefore { totals.leaks.append("\(fdsAfter - fdsBefore) file descriptors (\(fdsBefore) before, \(fdsAfter) after)") }
        if threadsAfter > threadsBefore { totals.leaks.append("\(threadsAfter - threadsBefore) threads (\(threadsBefore) before, \(threadsAfter) after)") }
        return totals
    }

    private func runEngines(_ totals: inout SoakTotals) throws(DriverError) {
        let registry = NetDMARegistry(drainTimeout: .milliseconds(300))
        var engines: [SoakEngine] = []
        for p in options.ioatProfiles { engines.append(try SoakEngine.ioat(profile: p, registry: registry)) }
        if options.dsaWorkQueues > 0 { engines.append(try SoakEngine.dsa(workQueues: options.dsaWorkQueues, registry: registry)) }
        guard !engines.isEmpty else { throw DriverError(.invalidArgument, "The soak needs at least one engine.") }
        let iommus = engines.map(\.iommu)
        totals.engines = engines.map(\.name)
        totals.channels = engines.reduce(0) { $0 + $1.channelCount }
        let baseline = engines.map(\.memory.regions.count)

        // Channels, dealt out to clients round-robin.
        var lanes: [[SoakLane]] = Array(repeating: [], count: max(1, options.clients))
        var n = 0
        for e in engines {
            let source = try SoakSource(engine: e)
            for _ in 0..<e.channelCount {
                let channel = try registry.allocateChannel(provider: e.handle)
                lanes[n % lanes.count].append(try SoakLane(engine: e, channel: channel, source: source, ringSize: options.ringSize))
                n += 1
            }
        }
        let deadline = ContinuousClock.now + .milliseconds(Int(options.seconds * 1000))
        var clients: [SoakClient] = []
        for (i, l) in lanes.enumerated() where !l.isEmpty {
            clients.append(SoakClient(lanes: l, options: options, seed: options.seed &+ UInt64(i) &* 0x1234_5678_9ABC))
        }
        do {
            let power = SoakPowerCycler(engines: engines, options: options, seed: options.seed ^ 0xFEED)
            let threads = clients.map { c in SoakThread { c.run(until: deadline) } }
                + [SoakThread { power.run(until: deadline) }]
            for t in threads { t.join() }
            for c in clients { totals.add(c.totals) }
            totals.add(power.totals)
        }
        for e in engines {
            totals.iommuFaults &+= e.statistics.iommuFaults
            totals.droppedDescriptors &+= e.statistics.dropped
        }
        if totals.droppedDescriptors != 0 {
            totals.violation("dropped", "\(totals.droppedDescriptors) descriptors were dropped at a full dedicated WQ: the provider overfilled it")
        }
        // Teardown: free every channel, drop the queues and buffers, then check what is left.
        for c in clients { c.finish(&totals) }
        clients.removeAll()
        lanes.removeAll()
        // A DPC still running for a freed channel holds it (and its completion word) a moment.
        let settle = ContinuousClock.now + .seconds(1)
        while zip(engines, baseline).contains(where: { $0.memory.regions.count != $1 }) && ContinuousClock.now < settle {
            usleep(1000)
        }
        for (e, count) in zip(engines, baseline) where e.memory.regions.count != count {
            totals.leaks.append("\(e.memory.regions.count - count) DMA memory regions of \(e.name) after every queue was freed")
        }
        for e in engines {
            do {
                let aborted = try e.shutdown()
                if !aborted.isEmpty { totals.violation("stop", "\(e.name): channels \(aborted) had to be aborted at Stop") }
            } catch {
                totals.violation("stop", "\(e.name): Stop/Deregister failed: \(error)")
            }
        }
        engines.removeAll()
        for (i, m) in iommus.enumerated() where m.mappingCount != 0 {
            totals.leaks.append("\(m.mappingCount) IOMMU mappings of engine \(i) after the provider went away")
        }
    }
}

/// The source data of one engine: random bytes, none of them 0 (the poison of destinations).
final class SoakSource: @unchecked Sendable {
    // @unchecked: written once at init, then only read (by clients and the engine).
    static let length = 64 * 1024
    let buffer: DMABuffer
    init(engine: SoakEngine) throws(DriverError) {
        buffer = try engine.memory.allocate(length: Self.length)
        var rng = SplitMix64(seed: 0x5EED)
        let p = buffer.base.assumingMemoryBound(to: UInt8.self)
        for i in 0..<Self.length { p[i] = UInt8(truncatingIfNeeded: rng.next() % 255) &+ 1 }
    }
}

/// One op as the client remembers it until it is retired.
struct SoakOp {
    enum Kind: UInt8 { case copy, fill, null, bad }
    var kind: Kind = .null
    var length = 0
    var sourceOffset = 0
    var pattern: UInt64 = 0
    /// Outstanding when the client aborted the channel: may fail (or be cut short and fail).
    var aborted = false
}

/// One channel of one client: the channel, its copy queue and the destination slots.
final class SoakLane {
    static let slotBytes = 4096
    static let guardBytes = 64
    let engine: SoakEngine
    let channel: NetDMAChannel
    let source: SoakSource
    let ringSize: Int
    var queue: CopyQueue
    let destination: DMABuffer
    var records: [SoakOp]
    /// Ops enqueued and retired on the current queue (a Reset starts a new queue).
    var enqueued: UInt64 = 0
    var retired: UInt64 = 0

    init(engine: SoakEngine, channel: NetDMAChannel, source: SoakSource, ringSize: Int) throws(DriverError) {
        self.engine = engine
        self.channel = channel
        self.source = source
        self.ringSize = ringSize
        queue = try CopyQueue(channel: channel, ringSize: ringSize)
        destination = try channel.dmaMemory.allocate(length: ringSize * Self.slotBytes)
        records = Array(repeating: SoakOp(), count: ringSize)
    }

    var name: String { "\(engine.family.rawValue) channel \(channel.index)" }
    var mask: UInt64 { UInt64(ringSize - 1) }
    func slotAddress(_ op: UInt64) -> UnsafeMutablePointer<UInt8> {
        (destination.base + Int(op & mask) * Self.slotBytes).assumingMemoryBound(to: UInt8.self)
    }
    func slotIOVA(_ op: UInt64) -> UInt64 { destination.iova(at: Int(op & mask) * Self.slotBytes) }
}

/// A client thread: owns some lanes and drives them until the deadline.
final class SoakClient: @unchecked Sendable {
    // @unchecked: used by its own thread only, then read after that thread was joined.
    let lanes: [SoakLane]
    let options: SoakOptions
    var rng: SplitMix64
    var totals = SoakTotals()
    private var statuses = [CopyStatus](repeating: .successful, count: 64)

    init(lanes: [SoakLane], options: SoakOptions, seed: UInt64) {
        self.lanes = lanes
        self.options = options
        rng = SplitMix64(seed: seed)
    }

    func run(until deadline: ContinuousClock.Instant) {
        var iteration = 0
        while true {
            if iteration & 15 == 0 && ContinuousClock.now >= deadline { break }
            iteration += 1
            let lane = lanes[rng.below(lanes.count)]
            if rng.oneIn(options.controlEvery) {
                control(lane)
            } else {
                batch(lane, bad: false)
            }
            retire(lane)
        }
        // Final drain: submit what is pending and retire until nothing is outstanding.
        let end = ContinuousClock.now + .milliseconds(Int(options.drainSeconds * 1000))
        for lane in lanes {
            while lane.enqueued != lane.retired && ContinuousClock.now < end {
                submit(lane)
                retire(lane)
                if lane.enqueued != lane.retired { sched_yield() }
            }
            let left = Int(lane.enqueued &- lane.retired)
            if left > 0 {
                totals.lost += left
                totals.violation("lost", "\(lane.name): \(left) ops never reported within \(options.drainSeconds) s (channel \(lane.channel.state), completion word 0x\(String(lane.channel.completionWord.rawValue, radix: 16)), fault \(lane.channel.fault.map(\.description) ?? "none"))")
            }
        }
    }

    /// Frees the channels (after the drain), reporting a channel that refuses.
    func finish(_ t: inout SoakTotals) {
        for lane in lanes {
            if lane.enqueued != lane.retired {
                // Lost ops were counted; stop the engine touching them before the queue goes.
                try? lane.channel.reset()
            }
            do { try lane.channel.free() } catch {
                t.violation("free", "\(lane.name): Free after the drain failed: \(error)")
            }
        }
    }

    // MARK: - traffic

    private func batch(_ lane: SoakLane, bad: Bool) {
        let n = 1 + rng.below(16)
        let badAt = bad ? rng.below(n) : -1
        for i in 0..<n {
            if lane.queue.freeSlots == 0 { retire(lane) }
            if lane.queue.freeSlots == 0 { break }
            enqueue(lane, bad: i == badAt)
        }
        submit(lane)
    }

    private func enqueue(_ lane: SoakLane, bad: Bool) {
        let op = lane.enqueued
        var r = SoakOp()
        let roll = rng.below(20)
        let canFill = lane.channel.providerFlags.contains(.fill)
        r.kind = bad ? .bad : roll < 2 ? .null : (roll < 5 && canFill ? .fill : .copy)
        let maxLength = SoakLane.slotBytes - SoakLane.guardBytes
        r.length = rng.oneIn(8) ? 1 + rng.below(maxLength) : 1 + rng.below(256)
        r.sourceOffset = rng.below(SoakSource.length - r.length)
        r.pattern = rng.next() | 0x0101_0101_0101_0101  // no zero byte
        let fence = rng.oneIn(8)
        // Poison the slot (and its guard) so that stale data cannot pass for a copy.
        memset(lane.slotAddress(op), 0, min(r.length + SoakLane.guardBytes, SoakLane.slotBytes))
        let ticket: UInt16
        do {
            switch r.kind {
            case .copy:
                ticket = try lane.queue.enqueueCopy(source: lane.source.buffer.iova(at: r.sourceOffset),
                                                    destination: lane.slotIOVA(op), length: r.length, fence: fence)
                totals.copies += 1
            case .fill:
                ticket = try lane.queue.enqueueFill(pattern: r.pattern, destination: lane.slotIOVA(op), length: r.length, fence: fence)
                totals.fills += 1
            case .null:
                ticket = try lane.queue.enqueueNull(fence: fence)
                totals.nulls += 1
            case .bad:
                ticket = try lane.queue.enqueueCopy(source: soakUnmappedIOVA, destination: lane.slotIOVA(op), length: r.length)
                totals.badOps += 1
            }
        } catch {
            totals.violation("enqueue", "\(lane.name): enqueue refused with free slots: \(error)")
            return
        }
        if fence { totals.fences += 1 }
        if ticket != UInt16(truncatingIfNeeded: op) {
            totals.duplicated += 1
            totals.violation("ticket", "\(lane.name): enqueue returned ticket \(ticket), expected \(UInt16(truncatingIfNeeded: op))")
        }
        lane.records[Int(op & lane.mask)] = r
        lane.enqueued = op &+ 1
        totals.ops += 1
    }

    private func submit(_ lane: SoakLane) {
        do { try lane.queue.submit() } catch { refused("submit", error) }
    }

    private func refused(_ call: String, _ error: DriverError) {
        totals.refusals["\(call): \(error.code)", default: 0] += 1
    }

    /// Retires whatever completed and checks each op.
    private func retire(_ lane: SoakLane) {
        let (count, last) = statuses.withUnsafeMutableBufferPointer { lane.queue.completedStatus(max: 64, into: $0) }
        guard count > 0 else { return }
        if count > Int(lane.enqueued &- lane.retired) {
            totals.duplicated += count - Int(lane.enqueued &- lane.retired)
            totals.violation("duplicated", "\(lane.name): \(count) ops retired with only \(lane.enqueued &- lane.retired) outstanding")
            lane.retired = lane.enqueued
            return
        }
        let expected = UInt16(truncatingIfNeeded: lane.retired &+ UInt64(count) &- 1)
        if last != expected {
            totals.duplicated += 1
            totals.violation("ticket", "\(lane.name): completions ended at ticket \(last), expected \(expected)")
        }
        // The queue keeps the cause of its last failure only: it belongs to the last failed op
        // of this retirement (earlier ones can only be checked for an explanation).
        let fault = lane.queue.lastFault
        let lastFailed = statuses[0..<count].lastIndex(of: .failed)
        for i in 0..<count {
            let op = lane.retired &+ UInt64(i)
            check(lane, op: op, lane.records[Int(op & lane.mask)], statuses[i], fault: i == lastFailed ? fault : nil,
                  causeKnown: i == lastFailed)
        }
        lane.retired &+= UInt64(count)
    }

    private func check(_ lane: SoakLane, op: UInt64, _ r: SoakOp, _ status: CopyStatus, fault: ChannelFault?, causeKnown: Bool) {
        let dst = lane.slotAddress(op)
        if status == .failed {
            totals.failed += 1
            let named = !causeKnown || (fault.map { !$0.causes.isEmpty } ?? false)
            if r.kind == .bad {
                // An Abort may halt the channel on it first: then the Abort is its cause.
                if !named && !r.aborted { totals.violation("nameless", "\(lane.name): op \(op) (unmapped source) failed without a cause") }
                if !isPoison(dst, 0, min(r.length, SoakLane.slotBytes)) {
                    totals.corrupted += 1
                    totals.violation("corrupted", "\(lane.name): op \(op) copying from an unmapped IOVA wrote its destination")
                }
                return
            }
            if let fault, lane.engine.consumeInjected(channel: lane.channel.index, raw: fault.rawValue, strict: true) {
                totals.injectedFaultsSeen += 1
                if !named { totals.violation("nameless", "\(lane.name): op \(op) failed by an injected fault without a cause") }
                return
            }
            if r.aborted { return }
            if lane.engine.consumeInjected(channel: lane.channel.index, raw: fault?.rawValue, strict: false) {
                totals.injectedFaultsSeen += 1
                if !named { totals.violation("nameless", "\(lane.name): op \(op) failed by an injected fault without a cause (last fault: none)") }
                return
            }
            totals.unexplainedFailures += 1
            totals.violation("unexplained", "\(lane.name): op \(op) (\(r.kind)) failed with no injected fault, bad address or Abort to explain it (last fault: \(fault.map(\.description) ?? "none"))")
            return
        }
        totals.successful += 1
        var ok = true
        switch r.kind {
        case .bad:
            totals.violation("corrupted", "\(lane.name): op \(op) copying from an unmapped IOVA reported success")
            ok = false
        case .copy:
            ok = memcmp(dst, lane.source.buffer.base + r.sourceOffset, r.length) == 0
        case .fill:
            for j in 0..<r.length where dst[j] != UInt8(truncatingIfNeeded: r.pattern >> UInt64(8 * (j & 7))) { ok = false; break }
        case .null:
            ok = isPoison(dst, 0, min(r.length + SoakLane.guardBytes, SoakLane.slotBytes))
        }
        if ok && r.kind != .null && !isPoison(dst, r.length, min(r.length + SoakLane.guardBytes, SoakLane.slotBytes)) {
            ok = false
        }
        if !ok {
            totals.corrupted += 1
            let untouched = isPoison(dst, 0, r.length)
            totals.violation("corrupted", "\(lane.name): op \(op) (\(r.kind), \(r.length) bytes\(r.aborted ? ", outstanding at an Abort" : "")) reported successful but its destination is \(untouched ? "untouched" : "wrong")")
        }
    }

    private func isPoison(_ p: UnsafeMutablePointer<UInt8>, _ from: Int, _ to: Int) -> Bool {
        var i = from
        while i < to { if p[i] != 0 { return false }; i += 1 }
        return true
    }

    // MARK: - trouble

    private func control(_ lane: SoakLane) {
        let roll = rng.below(7)
        let event: SoakEvent = [.suspend, .abort, .reset, .fault, .fault, .stall, .bad][roll]
        if options.skip.contains(event) { return batch(lane, bad: false) }
        switch roll {
        case 0:
            // Suspend a running channel, leave it a moment, resume.
            guard lane.channel.state == .running else { return batch(lane, bad: false) }
            do {
                _ = try lane.channel.suspend()
                totals.suspends += 1
                for _ in 0..<rng.below(200) { sched_yield() }
                do { try lane.channel.resume() } catch {
                    totals.violation("resume", "\(lane.name): Resume after Suspend failed: \(error)")
                }
            } catch {
                refused("suspend", error)
            }
        case 1:
            // Abort: every op outstanding may now fail.
            batch(lane, bad: false)
            guard lane.channel.state == .running else { return }
            var op = lane.retired
            while op != lane.enqueued { lane.records[Int(op & lane.mask)].aborted = true; op &+= 1 }
            do { try lane.channel.abort(); totals.aborts += 1 } catch { refused("abort", error) }
        case 2:
            // Reset: the provider forgets every submitted op; the client reports the ones not
            // yet retired as abandoned and starts a new queue.
            batch(lane, bad: false)
            retire(lane)
            do {
                try lane.channel.reset()
            } catch {
                refused("reset", error)
                return
            }
            totals.resets += 1
            totals.abandonedByReset += Int(lane.enqueued &- lane.retired)
            do {
                lane.queue = try CopyQueue(channel: lane.channel, ringSize: lane.ringSize)
                lane.enqueued = 0
                lane.retired = 0
            } catch {
                totals.violation("reset", "\(lane.name): no new CopyQueue after Reset: \(error)")
            }
        case 3, 4:
            if options.silentCorruption, lane.engine.corrupt(channel: lane.channel.index) {
                return batch(lane, bad: false)
            }
            let name = lane.engine.injectFault(channel: lane.channel.index, &rng)
            totals.faultsInjected += 1
            totals.faultClasses["\(lane.engine.family.rawValue) \(name)", default: 0] += 1
            batch(lane, bad: false)
        case 5:
            lane.engine.stall(channel: lane.channel.index, microseconds: 100 + rng.below(2000))
            totals.stalls += 1
            batch(lane, bad: false)
        default:
            batch(lane, bad: true)
        }
    }
}

/// Cycles random engines through PowerDown and PowerUp while the clients run.
final class SoakPowerCycler: @unchecked Sendable {
    // @unchecked: used by its own thread only, then read after that thread was joined.
    let engines: [SoakEngine]
    let options: SoakOptions
    var rng: SplitMix64
    var totals = SoakTotals()

    init(engines: [SoakEngine], options: SoakOptions, seed: UInt64) {
        self.engines = engines
        self.options = options
        rng = SplitMix64(seed: seed)
    }

    func run(until deadline: ContinuousClock.Instant) {
        guard options.powerCycleMilliseconds > 0, !options.skip.contains(.power) else { return }
        while ContinuousClock.now < deadline {
            let wait = options.powerCycleMilliseconds / 2 + rng.below(options.powerCycleMilliseconds + 1)
            usleep(UInt32(wait * 1000))
            guard ContinuousClock.now < deadline else { break }
            let e = engines[rng.below(engines.count)]
            do {
                try e.powerDown()
            } catch {
                if error.code == .timeout { totals.powerDownsRefused += 1 } else {
                    totals.violation("power", "\(e.name): PowerDown failed: \(error)")
                }
                continue
            }
            usleep(UInt32(500 + rng.below(3000)))
            do {
                try e.powerUp()
                totals.powerCycles += 1
            } catch {
                totals.violation("power", "\(e.name): PowerUp failed: \(error)")
            }
        }
    }
}

/// A joinable POSIX thread running a closure.
final class SoakThread {
    private final class Body {
        let run: () -> Void
        init(_ run: @escaping () -> Void) { self.run = run }
    }
    private var thread = pthread_t()

    init(_ body: @escaping @Sendable () -> Void) {
        let box = Unmanaged.passRetained(Body(body)).toOpaque()
        let r = pthread_create(&thread, nil, { p in
            Unmanaged<Body>.fromOpaque(p!).takeRetainedValue().run()
            return nil
        }, box)
        precondition(r == 0, "pthread_create failed (\(r))")
    }

    func join() { pthread_join(thread, nil) }
}

/// Counts of the process's resources, for leak checks.
enum ProcessCensus {
    /// Open file descriptors (entries of /proc/self/fd, minus the directory's own).
    static func openFileDescriptors() -> Int { max(0, entries("/proc/self/fd") - 1) }
    /// Threads (entries of /proc/self/task).
    static func threads() -> Int { entries("/proc/self/task") }

    private static func entries(_ path: String) -> Int {
        guard let d = opendir(path) else { return 0 }
        defer { closedir(d) }
        var n = 0
        while let e = readdir(d) {
            let name = withUnsafeBytes(of: e.pointee.d_name) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
            if name != "." && name != ".." { n += 1 }
        }
        return n
    }
}
