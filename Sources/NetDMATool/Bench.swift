import ArgumentParser
import CVFIO
import Foundation
import NetDMAEngines
import Platform
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// How `bench` waits for completions.
enum BenchMode: String, Codable, ExpressibleByArgument, CaseIterable {
    /// Spin on the completion word (`CopyQueue.completed`).
    case poll
    /// Sleep until the channel's interrupt (`CopyQueue.waitForCompletion`) when there is nothing to do.
    case interrupt
}

/// `netdma bench`: throughput, submitter cycles, QD1 latency and one core's memcpy per copy size.
struct Bench: ResultCommand {
    static let configuration = CommandConfiguration(
        abstract: "Benchmark copies: ops/s, GB/s, submitter cycles per op, QD1 latency, and one core's memcpy on the same buffers.",
        discussion: """
            For each size, a steady stream of copies (batches of --batch, at most --queue-depth in flight per \
            channel, over --channels channels, slots of the working set used round-robin), then queue-depth-1 \
            latency (submit one copy, wait for it), then glibc memcpy of the same slots on this core. The copy \
            threshold is the smallest size from which the engine beats memcpy at every larger size: below it, \
            CopyQueue users should copy with the CPU. Every destination is compared with its source after the \
            stream. Without engines bound to vfio-pci it runs on the built-in device model.
            """)

    @OptionGroup var engines: EngineOptions

    @Option(help: "Copy sizes, comma-separated (64, 4K, 1M).", transform: Bench.parseSizes)
    var sizes: [Int]?

    @Option(help: "Copies enqueued per submit (doorbell).")
    var batch: Int = 32

    @Option(help: "Descriptor ring size per channel (a power of two).")
    var ring: Int = 1024

    @Option(name: .customLong("queue-depth"), help: "Most copies in flight per channel (default: ring size - 1).")
    var queueDepth: Int?

    @Option(help: "Channels to use, one submitting thread each (at most the engine's; more is an error).")
    var channels: Int = 1

    @Option(help: "poll (spin on the completion word) or interrupt (sleep on the channel's interrupt).")
    var mode: BenchMode = .poll

    @Option(name: .customLong("wait-spin"),
            help: "Interrupt mode: microseconds a waiting thread spins on the interrupt before it sleeps (0: sleep at once).")
    var waitSpin: Double = 50

    @Option(help: "Seconds of streaming per size (default 0.25; --quick 0.03).")
    var seconds: Double?

    @Option(name: .customLong("latency-samples"), help: "QD1 latency samples per size (default 2000; --quick 100).")
    var latencySamples: Int?

    @Option(name: .customLong("working-set"), help: "Bytes of source and of destination (default 8M; --quick 1M).", transform: Bench.parseSize)
    var workingSet: Int?

    @Flag(help: "A short run for tests and CI: sizes 64, 4K, 64K, 30 ms each.")
    var quick = false

    @Flag(help: "Print JSON instead of a table.")
    var json = false

    @Flag(help: "Print CSV (one row per engine and size) for plotting.")
    var csv = false

    static let defaultSizes = [64, 256, 1 << 10, 4 << 10, 16 << 10, 64 << 10, 256 << 10, 1 << 20]
    static let quickSizes = [64, 4 << 10, 64 << 10]

    static func parseSize(_ s: String) throws -> Int {
        guard let v = parseByteCount(s) else { throw ValidationError("'\(s)' is not a size (use 64, 4K, 1M).") }
        return v
    }

    static func parseSizes(_ s: String) throws -> [Int] {
        try s.split(separator: ",").map { try parseSize(String($0)) }
    }

    func validate() throws {
        if json && csv { throw ValidationError("Choose one of --json and --csv.") }
        guard ring >= 2, ring <= 65536, ring & (ring - 1) == 0 else { throw ValidationError("--ring must be a power of two from 2 to 65536.") }
        guard batch >= 1, batch < ring else { throw ValidationError("--batch must be from 1 to ring size - 1 (\(ring - 1)).") }
        if let q = queueDepth, q < 1 || q > ring - 1 { throw ValidationError("--queue-depth must be from 1 to ring size - 1 (\(ring - 1)).") }
        guard channels >= 1 else { throw ValidationError("--channels must be at least 1.") }
        if let s = sizes, s.isEmpty { throw ValidationError("--sizes needs at least one size.") }
        if let s = seconds, s <= 0 || s > 3600 { throw ValidationError("--seconds must be between 0 and 3600.") }
        if let n = latencySamples, n < 1 { throw ValidationError("--latency-samples must be at least 1.") }
        guard waitSpin >= 0, waitSpin <= 1_000_000 else { throw ValidationError("--wait-spin must be from 0 to 1000000 µs.") }
    }

    /// The settings a run used (part of the JSON).
    struct Settings: Codable, Equatable {
        var sizes: [Int]
        var batch: Int
        var ring: Int
        var queueDepth: Int
        var channels: Int
        var mode: BenchMode
        /// Interrupt mode: how long a waiting thread spins before it sleeps, in microseconds.
        var waitSpinMicroseconds: Double
        var secondsPerSize: Double
        var latencySamples: Int
        var workingSet: Int
        var tscHz: Double

        var waitSpin: Duration { .nanoseconds(Int64(waitSpinMicroseconds * 1000)) }
    }

    /// One size's results (also a CSV row).
    struct Row: Codable, Equatable {
        var size: Int
        var ops: Int
        /// Ops per channel (each channel's own submitting thread), in channel order.
        var channelOps: [Int] = []
        var opsPerSecond: Double
        var gigabytesPerSecond: Double
        /// Submitter TSC cycles per op: its share of a batch's enqueues and submit, plus its
        /// share of the non-empty `completed` call that retired it (intervals where the thread
        /// was descheduled are left out).
        var cyclesPerOp: Double
        /// `completed` calls that found nothing (waiting, not work).
        var emptyPolls: Int
        /// API intervals left out of ``cyclesPerOp`` because the thread was descheduled.
        var preemptedIntervals: Int
        var latencySamples: Int
        var latencyP50Nanoseconds: Double
        var latencyP99Nanoseconds: Double
        var memcpyOpsPerSecond: Double
        var memcpyGigabytesPerSecond: Double
        /// Engine GB/s over memcpy GB/s.
        var engineOverMemcpy: Double
        var verified: Bool
    }

    /// One engine's results.
    struct EngineResult: Codable, Equatable {
        var engine: String
        var name: String
        var channels: Int
        var rows: [Row]
        /// The smallest size from which the engine beats memcpy at every larger size measured
        /// (CopyQueue's CPU-copy threshold); nil when memcpy wins at the largest size.
        var copyThreshold: Int?
        var errors: [String]
        /// Where the threads ran, when the bench placed them (on a device model).
        var placement: String?
    }

    /// The JSON document.
    struct Document: Codable, Equatable {
        var source: String
        var headline: String
        var settings: Settings
        var engines: [EngineResult]
        var passed: Bool
    }

    func settings(tscHz: Double, limit: Int) -> (Settings, note: String?) {
        let sz = (sizes ?? (quick ? Bench.quickSizes : Bench.defaultSizes)).sorted()
        var ws = workingSet ?? (quick ? 1 << 20 : 8 << 20)
        var note: String? = nil
        if ws > limit {
            ws = max(sz.last ?? 0, limit & ~4095)
            note = "working set reduced to \(approximateBytes(ws)) to fit RLIMIT_MEMLOCK (run as root or raise `ulimit -l` for more)"
        }
        // Each channel's stream gets its own slice (page-aligned) of at least the largest size.
        ws = max(ws, max(1, channels) * (((sz.last ?? 0) + 4095) & ~4095))
        return (Settings(sizes: sz, batch: batch, ring: ring, queueDepth: queueDepth ?? ring - 1, channels: channels, mode: mode,
                         waitSpinMicroseconds: waitSpin, secondsPerSize: seconds ?? (quick ? 0.03 : 0.25), latencySamples: latencySamples ?? (quick ? 100 : 2000),
                         workingSet: ws, tscHz: tscHz), note)
    }

    func execute(progress: ProgressBar?) throws -> CommandResult {
        let targets = try engines.targets()
        let tsc = Bench.calibrateTSC()
        let limit: Int
        if MemoryLock.isPrivileged { limit = .max } else if let l = MemoryLock.limit {
            // Two buffers of the working set, plus rings and completion words.
            limit = max(0, (Int(clamping: l) - Int(clamping: MemoryLock.lockedBytes)) / 2 - (1 << 20))
        } else { limit = .max }
        let (settings, note) = settings(tscHz: tsc, limit: limit)
        var results: [EngineResult] = []
        for (i, t) in targets.targets.enumerated() {
            let session = try targets.open(t)
            defer { session.close() }
            let result = try Bench.run(session, settings) { f, label in
                progress?.update((Double(i) + f) / Double(targets.targets.count), label)
            }
            results.append(result)
        }
        let doc = Document(source: targets.usesModel ? "model" : "vfio", headline: targets.headline, settings: settings,
                           engines: results, passed: results.allSatisfy { $0.errors.isEmpty && $0.rows.allSatisfy(\.verified) })
        let text: String
        if json { text = try encodeJSON(doc) } else if csv { text = Bench.csv(doc) } else { text = Bench.table(doc, note: note) }
        return CommandResult(text: text, exitCode: doc.passed ? 0 : 1)
    }

    // MARK: - measurement

    /// TSC ticks per second, measured against the monotonic clock over 20 ms.
    static func calibrateTSC() -> Double {
        let c0 = ContinuousClock.now
        let t0 = cvfio_rdtsc()
        var c1 = ContinuousClock.now
        while c1 - c0 < .milliseconds(20) { c1 = ContinuousClock.now }
        let t1 = cvfio_rdtsc()
        return Double(t1 &- t0) / (microseconds(c1 - c0) / 1e6)
    }

    static func run(_ session: EngineSession, _ s: Settings, progress: (Double, String) -> Void) throws(DriverError) -> EngineResult {
        guard s.channels <= session.channelCount else {
            let has = session.channelCount
            throw DriverError(.invalidArgument,
                "--channels \(s.channels): \(session.label) has \(has) channel\(has == 1 ? "" : "s"); ask for 1 to \(has)\(session.engine.isModel ? " (the model's profile sets how many: e.g. --generation cb1 has 4 channels, --model dsa 4 work queues)" : "").")
        }
        let n = s.channels
        var rigs: [ChannelRig] = []
        defer { for r in rigs { r.free() } }
        let memory = session.memory
        let source = try memory.allocate(length: s.workingSet)
        let destination = try memory.allocate(length: s.workingSet)
        for _ in 0..<n {
            rigs.append(try ChannelRig(session: session, length: 64, ringSize: s.ring, interrupts: s.mode == .interrupt))
        }
        if s.mode == .interrupt, let r = rigs.first(where: { !$0.hasInterrupts }) {
            throw DriverError(.unsupported, "Channel \(r.channel.index) of \(session.label) has no interrupt vector; use --mode poll.")
        }
        // Source: a pattern; every slot differs.
        var g = SplitMix64(seed: 0xBE7C)
        var i = 0
        while i + 8 <= s.workingSet { source.base.storeBytes(of: g.next(), toByteOffset: i, as: UInt64.self); i += 8 }

        var pendingFault = session.injectCopyFault
        let placement = Placement(session, dpcCPU: rigs[0].channel.cpu)
        defer { placement.restore() }
        var result = EngineResult(engine: session.label, name: session.identity.name, channels: n, rows: [], copyThreshold: nil,
                                  errors: [], placement: placement.description)
        let buffers = BenchBuffers(source: source.base, sourceIOVA: source.iova, destination: destination.base,
                                   destinationIOVA: destination.iova, length: s.workingSet)
        for (k, size) in s.sizes.enumerated() {
            let f = Double(k) / Double(s.sizes.count)
            if size > session.identity.maximumTransferSize {
                result.errors.append("\(ByteCount.format(size)) is above the engine's maximum transfer size (\(ByteCount.format(session.identity.maximumTransferSize))); skipped")
                continue
            }
            progress(f, "\(ByteCount.format(size)): stream")
            memset(destination.base, 0, s.workingSet)
            // Warm-up: wakes an engine (or a model's thread) from its idle state.
            _ = Bench.streams(rigs, buffers, size: size, s, seconds: min(0.02, s.secondsPerSize / 4))
            memset(destination.base, 0, s.workingSet)
            pendingFault?()
            pendingFault = nil
            let (run, slices) = Bench.streams(rigs, buffers, size: size, s, seconds: s.secondsPerSize)
            if let e = run.error { result.errors.append("\(ByteCount.format(size)): \(e)") }
            let verified = run.error == nil && slices.allSatisfy { memcmp(source.base + $0.offset, destination.base + $0.offset, $0.bytes) == 0 }
            if run.error == nil && !verified { result.errors.append("\(ByteCount.format(size)): a destination differs from its source after the stream") }
            progress(f + 0.5 / Double(s.sizes.count), "\(ByteCount.format(size)): latency")
            let lat = Bench.latency(rigs[0], buffers, size: size, samples: s.latencySamples, mode: s.mode, spin: s.waitSpin, tscHz: s.tscHz)
            if let e = lat.error { result.errors.append("\(ByteCount.format(size)) QD1: \(e)") }
            progress(f + 0.8 / Double(s.sizes.count), "\(ByteCount.format(size)): memcpy")
            let cpu = Bench.memcpyRun(buffers, size: size, seconds: s.secondsPerSize / 2, tscHz: s.tscHz)
            let gbps = run.seconds > 0 ? Double(run.ops * size) / run.seconds / 1e9 : 0
            result.rows.append(Row(
                size: size, ops: run.ops, channelOps: slices.map(\.ops), opsPerSecond: run.seconds > 0 ? Double(run.ops) / run.seconds : 0,
                gigabytesPerSecond: gbps, cyclesPerOp: run.cyclesPerOp,
                emptyPolls: run.emptyPolls, preemptedIntervals: run.preempted, latencySamples: lat.samples.count,
                latencyP50Nanoseconds: percentile(lat.samples, 0.50), latencyP99Nanoseconds: percentile(lat.samples, 0.99),
                memcpyOpsPerSecond: cpu.opsPerSecond, memcpyGigabytesPerSecond: cpu.gbps,
                engineOverMemcpy: cpu.gbps > 0 ? gbps / cpu.gbps : 0, verified: verified))
        }
        result.copyThreshold = copyThreshold(result.rows)
        progress(1, "done")
        _ = consume source
        _ = consume destination
        return result
    }

    /// Thread placement on a device model: the model's engine thread (the device) on the first
    /// channel's DPC CPU, where a real engine's MSI-X interrupt would arrive, and the submitting
    /// thread on the other CPUs. Then no wake-up crosses CPUs: the engine's interrupt wakes the
    /// interrupt thread on its own CPU, and the submitter sees the DPC's work by spinning or is
    /// woken once. Left to the scheduler, the two busy threads sometimes share a CPU, and each
    /// op then waits for a time slice. On hardware nothing is placed.
    struct Placement {
        /// "model engine thread on CPU 1 (the DPC CPU), submitter on CPUs {0}"; nil when nothing was placed.
        let description: String?
        private let saved: CPUSet?

        init(_ session: EngineSession, dpcCPU: Int) {
            let allowed = CPUSet.allowed
            var others = allowed
            others.remove(dpcCPU)
            guard let tid = session.engine.model?.engineThreadID, tid != 0, !others.isEmpty,
                  (try? CPUAffinity.pinThread(tid, to: [dpcCPU])) != nil,
                  (try? CPUAffinity.pinCurrentThread(to: others)) != nil else {
                description = nil
                saved = nil
                return
            }
            description = "model engine thread on CPU \(dpcCPU) (the DPC CPU), submitter on CPUs \(others)"
            saved = allowed
        }

        /// Gives the submitting thread back the CPUs it had.
        func restore() {
            if let saved { try? CPUAffinity.pinCurrentThread(to: saved) }
        }
    }

    /// The smallest measured size from which the engine's GB/s is at least memcpy's at every
    /// larger measured size (``CopyQueue/cpuCopyThreshold(for:)``; a row whose copies were not
    /// verified counts as an engine that does not win).
    static func copyThreshold(_ rows: [Row]) -> Int? {
        CopyQueue.cpuCopyThreshold(for: rows.map {
            CopyThroughput(size: $0.size, engineBytesPerSecond: $0.verified ? $0.gigabytesPerSecond * 1e9 : 0,
                           cpuBytesPerSecond: $0.memcpyGigabytesPerSecond * 1e9)
        })
    }

    static func percentile(_ sorted: [Double], _ p: Double) -> Double {
        guard !sorted.isEmpty else { return 0 }
        let i = min(sorted.count - 1, Int((Double(sorted.count - 1) * p).rounded()))
        return sorted[i]
    }

    struct BenchBuffers {
        var source: UnsafeMutableRawPointer
        var sourceIOVA: UInt64
        var destination: UnsafeMutableRawPointer
        var destinationIOVA: UInt64
        var length: Int
    }

    struct StreamResult {
        var ops = 0
        var seconds = 0.0
        var submitCycles: UInt64 = 0
        var submitOps = 0
        var pollCycles: UInt64 = 0
        var pollOps = 0
        var emptyPolls = 0
        var preempted = 0
        /// Every interval, preempted or not (the fallback when all of them looked preempted).
        var allCycles: UInt64 = 0
        var allOps = 0
        var error: String?

        /// Adds one API interval of `ops` ops. An interval longer than 20,000 + 400 × ops
        /// cycles cannot be the call itself (the thread was descheduled): it is left out of the
        /// cycles per op and counted as preempted (peer-benchmark.md §3).
        @inline(__always)
        mutating func account(_ cycles: UInt64, ops: Int, submit: Bool) {
            allCycles &+= cycles
            allOps += ops
            if cycles > 20_000 &+ 400 &* UInt64(ops) {
                preempted += 1
            } else if submit {
                submitCycles &+= cycles
                submitOps += ops
            } else {
                pollCycles &+= cycles
                pollOps += ops
            }
        }

        /// Adds another channel's stream (run at the same time): counts add up, the seconds
        /// are the longer ones, the first error is kept.
        mutating func merge(_ o: StreamResult) {
            ops += o.ops
            seconds = max(seconds, o.seconds)
            submitCycles &+= o.submitCycles
            submitOps += o.submitOps
            pollCycles &+= o.pollCycles
            pollOps += o.pollOps
            emptyPolls += o.emptyPolls
            preempted += o.preempted
            allCycles &+= o.allCycles
            allOps += o.allOps
            error = error ?? o.error
        }

        /// Enqueue+submit cycles per op plus completed cycles per op. When every interval
        /// looked preempted (a build instrumented by a sanitizer runs that slowly), the mean
        /// over all intervals instead: a figure, not 0.
        var cyclesPerOp: Double {
            if submitOps == 0 && pollOps == 0 { return allOps > 0 ? Double(allCycles) / Double(allOps) : 0 }
            return (submitOps > 0 ? Double(submitCycles) / Double(submitOps) : 0) + (pollOps > 0 ? Double(pollCycles) / Double(pollOps) : 0)
        }
    }

    /// The steady stream on every channel at once: one submitting thread per channel (this
    /// thread drives the first), each on its own slice of the working set, all started together.
    /// Returns the sum over the channels (the longest thread's seconds) and, per channel, its
    /// slice's offset, the bytes written there and its ops.
    static func streams(_ rigs: [ChannelRig], _ b: BenchBuffers, size: Int, _ s: Settings,
                        seconds: Double) -> (StreamResult, slices: [(offset: Int, bytes: Int, ops: Int)]) {
        let n = rigs.count
        let sliceLength = n == 1 ? b.length : max(size, (b.length / n) & ~4095)
        let parts = (0..<n).map { k in
            BenchBuffers(source: b.source + k * sliceLength, sourceIOVA: b.sourceIOVA + UInt64(k * sliceLength),
                         destination: b.destination + k * sliceLength, destinationIOVA: b.destinationIOVA + UInt64(k * sliceLength),
                         length: sliceLength)
        }
        let jobs = (0..<n).map { StreamJob(rig: rigs[$0], buffers: parts[$0]) }
        let go = StartSignal()
        let done = DispatchSemaphore(value: 0)
        for job in jobs.dropFirst() {
            let t = Thread {
                go.wait()
                job.result = Bench.stream([job.rig], job.buffers, size: size, s, seconds: seconds)
                done.signal()
            }
            t.start()
        }
        go.release()
        jobs[0].result = Bench.stream([jobs[0].rig], jobs[0].buffers, size: size, s, seconds: seconds)
        for _ in 1..<n { done.wait() }
        var total = StreamResult()
        var slices: [(offset: Int, bytes: Int, ops: Int)] = []
        for (k, job) in jobs.enumerated() {
            total.merge(job.result)
            slices.append((k * sliceLength, min(job.result.ops, max(1, sliceLength / size)) * size, job.result.ops))
        }
        return (total, slices)
    }

    /// One channel's stream on its own thread.
    final class StreamJob: @unchecked Sendable {
        // @unchecked: `rig` and `buffers` are used by one thread at a time (handed over when
        // the thread starts); `result` is written by that thread before it signals.
        let rig: ChannelRig
        let buffers: BenchBuffers
        var result = StreamResult()
        init(rig: ChannelRig, buffers: BenchBuffers) {
            self.rig = rig
            self.buffers = buffers
        }
    }

    /// Lets the streams' threads start at once.
    final class StartSignal: Sendable {
        private let started = Atomic<Bool>(false)
        func release() { started.store(true, ordering: .releasing) }
        func wait() { while !started.load(ordering: .acquiring) { sched_yield() } }
    }

    /// The steady stream: batches while there is room, one `completed` per channel per pass.
    static func stream(_ rigs: [ChannelRig], _ b: BenchBuffers, size: Int, _ s: Settings, seconds: Double) -> StreamResult {
        var r = StreamResult()
        let queues = ContiguousArray(rigs.map(\.queue))
        let slots = max(1, b.length / size)
        var slot = 0
        let depth = min(s.queueDepth, queues[0].capacity)
        let tscPerCheck = UInt64(s.tscHz / 1000)  // look at the clock every millisecond's worth of TSC
        let endTSC = cvfio_rdtsc() &+ UInt64(seconds * s.tscHz)
        var completed = 0
        var nextCheck = cvfio_rdtsc() &+ tscPerCheck
        var stop = false
        let start = ContinuousClock.now
        let length = size
        while true {
            var progressed = false
            for q in queues {
                if !stop && q.freeSlots >= s.batch && q.outstanding + s.batch <= depth {
                    let t0 = cvfio_rdtsc()
                    do throws(DriverError) {
                        for _ in 0..<s.batch {
                            let off = UInt64(slot &* length)
                            _ = try q.enqueueCopy(source: b.sourceIOVA &+ off, destination: b.destinationIOVA &+ off, length: length)
                            slot += 1
                            if slot == slots { slot = 0 }
                        }
                        try q.submit()
                    } catch {
                        r.error = error.message
                        stop = true
                    }
                    r.account(cvfio_rdtsc() &- t0, ops: s.batch, submit: true)
                    progressed = true
                }
                let t0 = cvfio_rdtsc()
                let c = q.completed(max: s.ring)
                let t1 = cvfio_rdtsc()
                if c.count > 0 {
                    r.account(t1 &- t0, ops: c.count, submit: false)
                    completed += c.count
                    progressed = true
                } else if !c.hadError {
                    r.emptyPolls += 1
                }
                if c.hadError {
                    r.error = r.error ?? "a copy failed: \(q.lastFault.map { "\($0)" } ?? "device error")"
                    stop = true
                }
            }
            let now = cvfio_rdtsc()
            if now >= nextCheck {
                nextCheck = now &+ tscPerCheck
                if now >= endTSC { stop = true }
                if stop && queues.allSatisfy({ $0.outstanding == 0 }) { break }
                if stop && ContinuousClock.now - start > .seconds(Int64(seconds) + 10) {
                    r.error = r.error ?? "copies did not complete within 10 s of the end of the run"
                    break
                }
            }
            if !progressed && s.mode == .interrupt {
                // Nothing to do until an engine finishes: sleep on the first busy channel's
                // interrupt (generation read before one more poll, so none is missed).
                if let i = queues.firstIndex(where: { $0.outstanding > 0 }) {
                    let g = rigs[i].channel.interruptGeneration
                    let c = queues[i].completed(max: s.ring)
                    completed += c.count
                    if c.hadError {
                        r.error = r.error ?? "a copy failed: \(queues[i].lastFault.map { "\($0)" } ?? "device error")"
                        stop = true
                    } else if c.count == 0 {
                        do throws(DriverError) { try rigs[i].waitForInterrupt(after: g, timeout: .seconds(5), spin: s.waitSpin) } catch {
                            r.error = r.error ?? error.message
                            stop = true
                        }
                    }
                }
            }
        }
        r.seconds = microseconds(ContinuousClock.now - start) / 1e6
        r.ops = completed
        return r
    }

    struct LatencyResult {
        var samples: [Double]
        var error: String?
    }

    /// Queue depth 1: enqueue one copy with a submit, then wait for it (spin or interrupt).
    static func latency(_ rig: ChannelRig, _ b: BenchBuffers, size: Int, samples: Int, mode: BenchMode, spin: Duration,
                        tscHz: Double) -> LatencyResult {
        var out: [Double] = []
        out.reserveCapacity(samples)
        let q = rig.queue
        let slots = max(1, b.length / size)
        let nsPerTick = 1e9 / tscHz
        let deadline = ContinuousClock.now + .seconds(1)
        for i in 0..<samples {
            if i % 16 == 0 && ContinuousClock.now > deadline && out.count >= 20 { break }
            let off = UInt64((i % slots) * size)
            let g = rig.channel.interruptGeneration
            let t0 = cvfio_rdtsc()
            do throws(DriverError) {
                _ = try q.enqueueCopy(source: b.sourceIOVA &+ off, destination: b.destinationIOVA &+ off, length: size)
                try q.submit()
                if mode == .interrupt { try rig.waitForInterrupt(after: g, timeout: .seconds(5), spin: spin) }
            } catch {
                return LatencyResult(samples: out.sorted(), error: error.message)
            }
            var spins = 0
            while true {
                let c = q.completed(max: 1)
                if c.count == 1 { break }
                if c.hadError { return LatencyResult(samples: out.sorted(), error: "a copy failed: \(q.lastFault.map { "\($0)" } ?? "device error")") }
                spins += 1
                if spins & 0xFFFF == 0 && ContinuousClock.now > deadline + .seconds(5) {
                    return LatencyResult(samples: out.sorted(), error: "a copy did not complete within 5 s")
                }
            }
            let t1 = cvfio_rdtsc()
            out.append(Double(t1 &- t0) * nsPerTick)
        }
        return LatencyResult(samples: out.sorted(), error: nil)
    }

    /// One core's glibc memcpy over the same slots.
    static func memcpyRun(_ b: BenchBuffers, size: Int, seconds: Double, tscHz: Double) -> (opsPerSecond: Double, gbps: Double) {
        let slots = max(1, b.length / size)
        var slot = 0
        var ops = 0
        let t0 = cvfio_rdtsc()
        let end = t0 &+ UInt64(seconds * tscHz)
        var now = t0
        repeat {
            for _ in 0..<32 {
                let off = slot &* size
                memcpy(b.destination + off, b.source + off, size)
                slot += 1
                if slot == slots { slot = 0 }
            }
            ops += 32
            now = cvfio_rdtsc()
        } while now < end
        let secs = Double(now &- t0) / tscHz
        return (Double(ops) / secs, Double(ops * size) / secs / 1e9)
    }

    // MARK: - output

    static func rate(_ v: Double) -> String {
        if v >= 1e6 { return String(format: "%.2f M", v / 1e6) }
        if v >= 1e3 { return String(format: "%.1f k", v / 1e3) }
        return String(format: "%.0f", v)
    }

    static func nanoseconds(_ ns: Double) -> String {
        ns >= 1e6 ? String(format: "%.2f ms", ns / 1e6) : (ns >= 1e3 ? String(format: "%.1f µs", ns / 1e3) : String(format: "%.0f ns", ns))
    }

    static func table(_ doc: Document, note: String?) -> String {
        let s = doc.settings
        var out = [doc.headline]
        out.append("batch \(s.batch), ring \(s.ring), queue depth \(s.queueDepth), \(s.mode.rawValue) mode\(s.mode == .interrupt ? " (spin \(String(format: "%.0f", s.waitSpinMicroseconds)) µs)" : ""), working set \(approximateBytes(s.workingSet)), \(String(format: "%.2f", s.secondsPerSize)) s per size, TSC \(String(format: "%.2f", s.tscHz / 1e9)) GHz")
        if let note { out.append("note: \(note)") }
        for e in doc.engines {
            out.append("")
            out.append("\(e.engine): \(e.name), \(e.channels) channel\(e.channels == 1 ? "" : "s")")
            if let p = e.placement { out.append("  \(p)") }
            var rows = [["SIZE", "OPS/S", "GB/S", "CYC/OP", "QD1 P50", "QD1 P99", "MEMCPY GB/S", "ENGINE/CPU", "CHECK"]]
            for r in e.rows {
                rows.append([ByteCount.format(r.size), rate(r.opsPerSecond), String(format: "%.2f", r.gigabytesPerSecond),
                             String(format: "%.0f", r.cyclesPerOp), nanoseconds(r.latencyP50Nanoseconds), nanoseconds(r.latencyP99Nanoseconds),
                             String(format: "%.2f", r.memcpyGigabytesPerSecond), String(format: "%.2f", r.engineOverMemcpy),
                             r.verified ? "ok" : "FAILED"])
            }
            out += columns(rows, rightAligned: Set(0...7)).map { "  " + $0 }
            if let t = e.copyThreshold {
                out.append("  copy threshold: \(ByteCount.format(t)): from this size up the engine beats one core's memcpy (copy smaller ones with the CPU)")
            } else {
                out.append("  copy threshold: none: one core's memcpy is faster at every size measured")
            }
            for err in e.errors { out.append("  error: \(err)") }
        }
        return out.joined(separator: "\n")
    }

    static let csvHeader = "engine,size,ops,ops_per_second,gb_per_second,cycles_per_op,empty_polls,preempted_intervals,qd1_samples,qd1_p50_ns,qd1_p99_ns,memcpy_ops_per_second,memcpy_gb_per_second,engine_over_memcpy,verified,copy_threshold"

    static func csv(_ doc: Document) -> String {
        var lines = [csvHeader]
        for e in doc.engines {
            for r in e.rows {
                let fields: [String] = [
                    e.engine, "\(r.size)", "\(r.ops)", String(format: "%.1f", r.opsPerSecond), String(format: "%.4f", r.gigabytesPerSecond),
                    String(format: "%.1f", r.cyclesPerOp), "\(r.emptyPolls)", "\(r.preemptedIntervals)", "\(r.latencySamples)", String(format: "%.1f", r.latencyP50Nanoseconds),
                    String(format: "%.1f", r.latencyP99Nanoseconds), String(format: "%.1f", r.memcpyOpsPerSecond),
                    String(format: "%.4f", r.memcpyGigabytesPerSecond), String(format: "%.4f", r.engineOverMemcpy), r.verified ? "1" : "0",
                    e.copyThreshold.map(String.init) ?? "",
                ]
                lines.append(fields.joined(separator: ","))
            }
        }
        return lines.joined(separator: "\n")
    }
}
