import CBenchSupport
import NetDMAEngines

#if canImport(Glibc)
import Glibc
#endif

/// One repetition of the steady-stream workload (the peer harness's "(a) steady stream").
public struct StreamResult: Sendable {
    public var ops = 0
    public var size = 0
    public var wallNanoseconds: Int64 = 0
    /// TSC cycles inside enqueue+submit and inside non-empty `completed` calls (rdtsc cost
    /// removed, preempted intervals left out).
    public var apiCycles: UInt64 = 0
    /// Intervals left out as preempted.
    public var preempted = 0
    public var submitterCPUNanoseconds: Int64 = 0
    public var engineCPUNanoseconds: Int64 = 0
    public var polls = 0
    public var emptyPolls = 0
    /// Submits (batches) and free-slot checks made.
    public var batches = 0
    public var capacityChecks = 0
    /// CPUs used by other processes during the repetition.
    public var otherLoad = 0.0
    public var verified = false
    public var failure: String?
}

/// Samples other processes' CPU use over an interval.
public struct LoadMeter {
    var busy: UInt64 = 0, own: UInt64 = 0, start: timespec = timespec()
    public init() {
        _ = bench_cpu_ticks(&busy, &own)
        clock_gettime(CLOCK_MONOTONIC, &start)
    }
    /// CPUs' worth of time other processes used since `init`.
    public func otherCPUs() -> Double {
        var b: UInt64 = 0, o: UInt64 = 0, now = timespec()
        _ = bench_cpu_ticks(&b, &o)
        clock_gettime(CLOCK_MONOTONIC, &now)
        let seconds = Double(now.tv_sec - start.tv_sec) + Double(now.tv_nsec - start.tv_nsec) / 1e9
        let ticks = Double(b &- busy) - Double(o &- own)
        return seconds > 0 ? max(0, ticks / Double(bench_clock_ticks_per_second()) / seconds) : 0
    }
}

@inline(__always)
public func monotonicNanoseconds() -> Int64 {
    var t = timespec()
    clock_gettime(CLOCK_MONOTONIC, &t)
    return Int64(t.tv_sec) * 1_000_000_000 + Int64(t.tv_nsec)
}

@inline(__always)
public func threadCPUNanoseconds() -> Int64 {
    var t = timespec()
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t)
    return Int64(t.tv_sec) * 1_000_000_000 + Int64(t.tv_nsec)
}

/// TSC ticks per second, measured against CLOCK_MONOTONIC over about 50 ms.
public func measureTSCHz() -> Double {
    let n0 = monotonicNanoseconds(), t0 = bench_rdtsc()
    var ts = timespec(tv_sec: 0, tv_nsec: 50_000_000)
    nanosleep(&ts, nil)
    let n1 = monotonicNanoseconds(), t1 = bench_rdtsc()
    return Double(t1 &- t0) * 1e9 / Double(n1 - n0)
}

/// The cost of an rdtsc pair (minimum of many), to subtract from each timed interval.
public func measureRDTSCCost() -> UInt64 {
    var best = UInt64.max
    for _ in 0..<1000 {
        let a = bench_rdtsc()
        bench_compiler_barrier()
        let b = bench_rdtsc()
        best = min(best, b &- a)
    }
    return best
}

/// The workload: `ops` copies of `size` bytes from `source` to `destination`, slot `i % slots`
/// of each, batches of `batch` per submit whenever that many ring slots are free, one
/// `completed(max: capacity)` per loop turn; tickets and data checked.
public struct StreamWorkload {
    public var size: Int
    public var ops: Int
    public var batch: Int
    public var workingSet: Int

    public init(size: Int, ops: Int, batch: Int, workingSet: Int) {
        self.size = size
        self.ops = ops
        self.batch = batch
        self.workingSet = workingSet
    }

    public var slots: Int { max(1, workingSet / size) }

    /// Runs once; `engineCPU` reads the engine thread's CPU time (ns).
    ///
    /// With `counted`, every ``CopyQueue`` call goes through the functions of
    /// ``CountedCalls`` (never inlined), so that callgrind's inclusive cost of each is the cost
    /// of the call; otherwise the loop inlines the API as any client does.
    public func run(_ q: CopyQueue, source: BufferBox, destination: BufferBox, rdtscCost: UInt64, counted: Bool = false,
                    engineCPU: () -> Int64) -> StreamResult {
        counted ? loop(q, source: source, destination: destination, rdtscCost: rdtscCost, counted: true, engineCPU: engineCPU)
                : loop(q, source: source, destination: destination, rdtscCost: rdtscCost, counted: false, engineCPU: engineCPU)
    }

    /// The loop, inlined twice with a constant `counted`, so the timed loop has no trace of
    /// count mode.
    @inline(__always)
    private func loop(_ q: CopyQueue, source: BufferBox, destination: BufferBox, rdtscCost: UInt64, counted: Bool,
                      engineCPU: () -> Int64) -> StreamResult {
        var r = StreamResult()
        r.ops = ops
        r.size = size
        let slots = self.slots
        let touched = min(ops, slots) * size
        memset(destination.base, 0, touched)
        let srcIOVA = source.iova, dstIOVA = destination.iova
        let maxRetire = q.capacity
        let batch = self.batch
        let ops = self.ops
        let size = self.size
        var issued = 0, done = 0, slot = 0
        var expected: UInt16 = 0
        var first = true
        var api: UInt64 = 0
        var preempted = 0, polls = 0, empty = 0, batches = 0, checks = 0
        var failure: String? = nil

        let meter = LoadMeter()
        let e0 = engineCPU()
        let c0 = threadCPUNanoseconds()
        let w0 = monotonicNanoseconds()
        while done < ops {
            let want = min(batch, ops - issued)
            if want > 0 {
                checks += 1
            }
            if want > 0 && (counted ? CountedCalls.freeSlots(q) : q.freeSlots) >= want {
                let t0 = bench_rdtsc()
                for _ in 0..<want {
                    let off = UInt64(truncatingIfNeeded: slot &* size)
                    let ticket: UInt16
                    do {
                        ticket = counted
                            ? try CountedCalls.enqueueCopy(q, source: srcIOVA &+ off, destination: dstIOVA &+ off, length: size)
                            : try q.enqueueCopy(source: srcIOVA &+ off, destination: dstIOVA &+ off, length: size)
                    } catch {
                        failure = "enqueue: \(error)"
                        break
                    }
                    if first { expected = ticket; first = false }
                    slot &+= 1
                    if slot == slots { slot = 0 }
                }
                do {
                    if counted { try CountedCalls.submit(q) } else { try q.submit() }
                } catch { failure = "submit: \(error)" }
                let t1 = bench_rdtsc()
                if failure != nil { break }
                let dt = t1 &- t0 &- rdtscCost
                if dt > 20_000 + 400 * UInt64(want) { preempted += 1 } else { api &+= dt }
                issued += want
                batches += 1
            }
            let t2 = bench_rdtsc()
            let c = counted ? CountedCalls.completed(q, max: maxRetire) : q.completed(max: maxRetire)
            let t3 = bench_rdtsc()
            polls += 1
            if c.count == 0 && !c.hadError {
                empty += 1
                // Under callgrind the threads take turns: let the engine run (the count
                // excludes empty polls, so how many there are does not matter).
                if counted { sched_yield() }
                continue
            }
            let dt = t3 &- t2 &- rdtscCost
            if dt > 20_000 + 400 * UInt64(c.count) { preempted += 1 } else { api &+= dt }
            if c.hadError { failure = "an op failed: \(String(describing: q.lastFault))"; break }
            if c.lastTicket != expected &+ UInt16(truncatingIfNeeded: c.count) &- 1 {
                failure = "completed(max:) returned last ticket \(c.lastTicket), expected \(expected &+ UInt16(truncatingIfNeeded: c.count) &- 1)"
                break
            }
            expected &+= UInt16(truncatingIfNeeded: c.count)
            done += c.count
        }
        let w1 = monotonicNanoseconds()
        let c1 = threadCPUNanoseconds()
        let e1 = engineCPU()
        r.otherLoad = meter.otherCPUs()
        r.wallNanoseconds = w1 - w0
        r.submitterCPUNanoseconds = c1 - c0
        r.engineCPUNanoseconds = e1 - e0
        r.apiCycles = api
        r.preempted = preempted
        r.polls = polls
        r.emptyPolls = empty
        r.batches = batches
        r.capacityChecks = checks
        if failure == nil {
            if memcmp(destination.base, source.base, touched) != 0 { failure = "destination differs from source" }
        }
        r.failure = failure
        r.verified = failure == nil
        return r
    }
}

/// The ``CopyQueue`` calls of the stream loop in count mode, one function each, never inlined:
/// callgrind's inclusive cost of each is what the call costs (the queue's code, the provider's
/// and the model's register writes it makes, and the function's own call and return), the
/// counterpart of `Scripts/peer/dma_peer.c`'s `counted_*` wrappers around DPDK's inline API.
/// The names are what `netdma-peer counts` looks for in callgrind's output.
public enum CountedCalls {
    @inline(never)
    public static func countedFreeSlots(_ q: CopyQueue) -> Int { q.freeSlots }

    @inline(never)
    public static func countedEnqueueCopy(_ q: CopyQueue, source: UInt64, destination: UInt64,
                                          length: Int) throws(DriverError) -> UInt16 {
        try q.enqueueCopy(source: source, destination: destination, length: length)
    }

    @inline(never)
    public static func countedSubmit(_ q: CopyQueue) throws(DriverError) { try q.submit() }

    @inline(never)
    public static func countedCompleted(_ q: CopyQueue, max: Int) -> CopyCompletion { q.completed(max: max) }

    @inline(__always) static func freeSlots(_ q: CopyQueue) -> Int { countedFreeSlots(q) }
    @inline(__always) static func enqueueCopy(_ q: CopyQueue, source: UInt64, destination: UInt64,
                                              length: Int) throws(DriverError) -> UInt16 {
        try countedEnqueueCopy(q, source: source, destination: destination, length: length)
    }
    @inline(__always) static func submit(_ q: CopyQueue) throws(DriverError) { try countedSubmit(q) }
    @inline(__always) static func completed(_ q: CopyQueue, max: Int) -> CopyCompletion { countedCompleted(q, max: max) }
}

/// One core's memcpy over the same slots (the "memcpy" column).
public func memcpyRate(source: UnsafeRawPointer, destination: UnsafeMutableRawPointer, size: Int, workingSet: Int,
                       ops: Int) -> (wallNanoseconds: Int64, otherLoad: Double) {
    let slots = max(1, workingSet / size)
    let meter = LoadMeter()
    let w0 = monotonicNanoseconds()
    var slot = 0
    for _ in 0..<ops {
        memcpy(destination + slot &* size, source + slot &* size, size)
        slot &+= 1
        if slot == slots { slot = 0 }
    }
    let w1 = monotonicNanoseconds()
    return (w1 - w0, meter.otherCPUs())
}

/// Ops per repetition as the peer harness picks them: `totalBytes / size`, clamped to
/// [4096, 2,000,000], and at least one pass over the slots.
public func opsForSize(_ size: Int, totalBytes: Int, workingSet: Int) -> Int {
    let slots = max(1, workingSet / size)
    return max(slots, min(2_000_000, max(4096, totalBytes / size)))
}
