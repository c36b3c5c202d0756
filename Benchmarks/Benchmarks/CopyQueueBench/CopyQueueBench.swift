// CopyQueue's hot path (enqueue + submit + poll) on the device models, per provider (CBDMA, DSA).
//
// Each sample runs `batchesPerSample` batches of 32 copies: enqueue 32, submit (one doorbell),
// poll completed(max:) until all 32 are retired. The "fallback" workload alternates 64-byte
// copies, which the queue's CPU fallback (cpuCopyThreshold 256) runs on the submitting thread,
// with 4 KiB copies for the engine, so CPU ops wait behind engine ops. Reported per op:
//   - mallocs (must be 0: checked against Thresholds/ with no tolerance),
//   - submitter API cycles (TSC cycles inside enqueue/submit/non-empty completed, per op),
//   - wall cycles (TSC cycles per op, the engine's time included).
// Retain/release counts are not measured here (ordo-one's runtime interposer is not available
// on this toolchain): Scripts/hotpath-counts counts them with valgrind.
//
//   cd Benchmarks && swift package benchmark --target CopyQueueBench
//   swift package benchmark thresholds check --target CopyQueueBench   (fails on a regression)
import Benchmark
import BenchRig
import CBenchSupport
import NetDMA

#if canImport(Glibc)
import Glibc
#endif

let batch = 32
let batchesPerSample = 64
let opsPerSample = batch * batchesPerSample

/// The rig of the benchmark that is running (benchmarks run one at a time).
nonisolated(unsafe) var rig: (any ModelRig)?
nonisolated(unsafe) var source: BufferBox?
nonisolated(unsafe) var destination: BufferBox?

// Metric and benchmark names have no spaces or slashes: the thresholds reader looks the files up
// by the raw name while the writer replaces those characters.
let apiCycles = BenchmarkMetric.custom("submitterAPICyclesPerOp")
let wallCycles = BenchmarkMetric.custom("wallCyclesPerOp")

/// The engines benchmarked: the CBDMA model (Ice Lake, CB 3.4) and the DSA model (Sapphire
/// Rapids, one dedicated WQ), each under a NetDMA 2.0 (counted chains) and 1.1 (NULL-terminated)
/// provider.
enum Engine: String, CaseIterable {
    case cbdma = "CBDMA", dsa = "DSA"
}

func setUp(_ engine: Engine, version: NetDMAVersion, cpuCopyThreshold: Int = 0) throws {
    let r: any ModelRig
    switch engine {
    case .cbdma: r = try IOATModelRig(profile: "icx", version: version, ringSize: 1024, engineCPU: 1, cpuCopyThreshold: cpuCopyThreshold)
    case .dsa: r = try DSAModelRig(version: version, ringSize: 1024, cpuCopyThreshold: cpuCopyThreshold)
    }
    _ = bench_pin_thread(0, 0)
    source = try r.buffer(1 << 20)
    destination = try r.buffer(1 << 20)
    rig = r
}

func tearDown() {
    source = nil
    destination = nil
    rig = nil
}

/// An API interval, or 0 when it is too long to be the call itself (the thread was preempted:
/// the same filter as Scripts/peer-bench's harnesses).
@inline(__always)
func apiInterval(_ cycles: UInt64, ops: Int) -> UInt64 {
    cycles > 20_000 + 400 * UInt64(ops) ? 0 : cycles
}

/// One sample: `batchesPerSample` × (32 enqueues, submit, poll until retired); with
/// `alternate`, every other copy has that size instead. Returns (API cycles, wall cycles) for
/// the sample.
func sample(size: Int, alternate: Int? = nil) -> (api: UInt64, wall: UInt64) {
    let q = rig!.queue
    let src = source!.iova, dst = destination!.iova
    let stride = max(size, alternate ?? 0)
    let slots = (1 << 20) / stride
    let other = alternate ?? size
    var slot = 0
    var api: UInt64 = 0
    let w0 = bench_rdtsc()
    for _ in 0..<batchesPerSample {
        let t0 = bench_rdtsc()
        for _ in 0..<batch {
            let off = UInt64(truncatingIfNeeded: slot &* stride)
            _ = try? q.enqueueCopy(source: src &+ off, destination: dst &+ off, length: slot & 1 == 0 ? size : other)
            slot &+= 1
            if slot == slots { slot = 0 }
        }
        try? q.submit()
        api &+= apiInterval(bench_rdtsc() &- t0, ops: batch)
        var left = batch
        while left > 0 {
            let t1 = bench_rdtsc()
            let c = q.completed(max: 1023)
            let t2 = bench_rdtsc()
            if c.count > 0 || c.hadError { api &+= apiInterval(t2 &- t1, ops: c.count) }
            left -= c.count
            if c.hadError { fatalError("an op failed: \(String(describing: q.lastFault))") }
        }
    }
    return (api, bench_rdtsc() &- w0)
}

let benchmarks: @Sendable () -> Void = {
    let thresholds: [BenchmarkMetric: BenchmarkThresholds] = [
        // No tolerance: one malloc in a sample of 2048 ops is a regression.
        .mallocCountTotal: .init(absolute: [.p90: 0, .p100: 0]),
        // Cycles are noisy on a shared 2-core machine: the checked-in p90 is a ceiling for a
        // quiet machine, and only twice that fails (an improvement never does).
        apiCycles: .init(relative: [.p90: 100.0]),
    ]
    let configuration = Benchmark.Configuration(
        metrics: [.wallClock, .mallocCountTotal, .throughput, apiCycles, wallCycles],
        warmupIterations: 5,
        scalingFactor: .one,
        maxDuration: .seconds(3),
        maxIterations: 2_000,
        thresholds: thresholds)

    for engine in Engine.allCases {
        for (versionName, version) in [("NetDMA2.0", NetDMAVersion.v2_0), ("NetDMA1.1", NetDMAVersion.v1_1)] {
            for size in [64, 4096] {
                Benchmark("\(engine.rawValue)-\(versionName)-copy\(size)B-enqueue+submit+poll", configuration: configuration) { benchmark in
                    for _ in benchmark.scaledIterations {
                        let s = sample(size: size)
                        benchmark.measurement(apiCycles, Int(s.api) / opsPerSample)
                        benchmark.measurement(wallCycles, Int(s.wall) / opsPerSample)
                    }
                } setup: {
                    try setUp(engine, version: version)
                } teardown: {
                    tearDown()
                }
            }
        }
        Benchmark("\(engine.rawValue)-NetDMA2.0-fallback-copy64B+4096B-enqueue+submit+poll", configuration: configuration) { benchmark in
            for _ in benchmark.scaledIterations {
                let s = sample(size: 64, alternate: 4096)
                benchmark.measurement(apiCycles, Int(s.api) / opsPerSample)
                benchmark.measurement(wallCycles, Int(s.wall) / opsPerSample)
            }
            precondition(rig!.queue.cpuOpCount > 0, "the fallback ran no op on the CPU")
        } setup: {
            try setUp(engine, version: .v2_0, cpuCopyThreshold: 256)
        } teardown: {
            tearDown()
        }
    }
}
