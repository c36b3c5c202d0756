// netdma-peer: the NetDMA side of Scripts/peer-bench, and the report that puts both sides in
// one table.
//
//   netdma-peer run [options]     runs the stream workload on CopyQueue over the CBDMA (or, with
//                                 --profile dsa, the DSA) device
//                                 model and one core's memcpy; prints RESULT/MEMCPY lines
//   netdma-peer run --count ...   count mode, under valgrind --tool=callgrind: each repetition
//                                 between callgrind dumps (WINDOW lines instead of RESULT lines)
//   netdma-peer counts ...        reads a count-mode run's WINDOW lines and callgrind dumps and
//                                 prints COUNT lines (instructions per op; see Counts.swift)
//   netdma-peer report FILE...    reads RESULT/MEMCPY/COUNT lines (both sides) and prints the tables
//
// The line format is shared with Scripts/peer/dma_peer.c: `KIND key=value ...`.
import BenchRig
import CBenchSupport
import NetDMA

#if canImport(Glibc)
import Glibc
#endif

func warn(_ message: String) {
    let line = "netdma-peer: \(message)\n"
    _ = line.withCString { write(2, $0, strlen($0)) }
}

func fail(_ message: String) -> Never {
    warn(message)
    exit(2)
}

func need<T>(_ value: T?, _ message: @autoclosure () -> String) -> T {
    guard let value else { fail(message()) }
    return value
}

func parseBytes(_ s: String) -> Int? {
    let lower = s.lowercased()
    var mult = 1
    var digits = Substring(lower)
    if let last = lower.last, "kmg".contains(last) {
        mult = last == "k" ? 1 << 10 : last == "m" ? 1 << 20 : 1 << 30
        digits = digits.dropLast()
    }
    guard let v = Int(digits), v > 0 else { return nil }
    return v * mult
}

// MARK: - run

func run(_ args: [String]) {
    var sizes = [64, 256, 1024, 4096, 65536, 1 << 20]
    var reps = 1
    var batch = 32
    var ring = 1024
    var workingSet = 32 << 20
    var totalBytes = 2 << 30
    var profile = "icx"
    var submitterCPU: Int? = 0
    var engineCPU: Int? = 1
    var doMemcpy = true
    var warmup = 20_000
    var cpuCopyThreshold = 0
    var fixedOps: Int? = nil
    var counting = false
    var i = 0
    func value() -> String {
        i += 1
        guard i < args.count else { fail("\(args[i - 1]) needs a value") }
        return args[i]
    }
    while i < args.count {
        switch args[i] {
        case "-s", "--sizes": sizes = value().split(separator: ",").map { need(parseBytes(String($0)), "bad size \($0)") }
        case "-r", "--reps": reps = need(Int(value()), "bad --reps")
        case "-b", "--batch": batch = need(Int(value()), "bad --batch")
        case "-q", "--ring": ring = need(Int(value()), "bad --ring")
        case "-w", "--working-set": workingSet = need(parseBytes(value()), "bad --working-set")
        case "-t", "--bytes": totalBytes = need(parseBytes(value()), "bad --bytes")
        case "--profile": profile = value()
        case "--submitter-cpu": submitterCPU = Int(value())
        case "--engine-cpu": engineCPU = Int(value())
        case "--no-memcpy": doMemcpy = false
        case "--warmup": warmup = need(Int(value()), "bad --warmup")
        case "--cpu-copy-threshold": cpuCopyThreshold = need(Int(value()).flatMap { $0 >= 0 ? $0 : nil }, "bad --cpu-copy-threshold")
        case "-o", "--ops": fixedOps = need(parseBytes(value()), "bad --ops")
        case "-c", "--count": counting = true
        default: fail("unknown option \(args[i])")
        }
        i += 1
    }
    if counting && bench_under_callgrind() == 0 {
        fail("--count needs valgrind --tool=callgrind (and a build with <valgrind/callgrind.h>)")
    }
    let cpus = Int(sysconf(Int32(_SC_NPROCESSORS_ONLN)))
    if let c = submitterCPU, c < cpus { _ = bench_pin_thread(0, Int32(c)) }
    let rig: any ModelRig
    do {
        let pin = engineCPU.flatMap { $0 < cpus ? $0 : nil }
        rig = profile == "dsa" ? try DSAModelRig(ringSize: ring, engineCPU: pin, cpuCopyThreshold: cpuCopyThreshold)
                               : try IOATModelRig(profile: profile, ringSize: ring, engineCPU: pin, cpuCopyThreshold: cpuCopyThreshold)
    } catch {
        fail("cannot bring up the \(profile) model: \(error)")
    }
    guard batch >= 1, batch <= rig.queue.capacity else { fail("--batch must be 1…\(rig.queue.capacity)") }
    let src: BufferBox, dst: BufferBox
    do {
        src = try rig.buffer(workingSet)
        dst = try rig.buffer(workingSet)
    } catch {
        fail("cannot allocate 2 × \(workingSet) bytes of DMA memory: \(error)")
    }
    // A xorshift pattern in the source.
    var x: UInt64 = 0x9E37_79B9_7F4A_7C15
    let words = src.base.assumingMemoryBound(to: UInt64.self)
    for k in 0..<(workingSet / 8) {
        x ^= x << 13; x ^= x >> 7; x ^= x << 17
        words[k] = x
    }
    let hz = measureTSCHz()
    let cost = measureRDTSCCost()
    let impl = profile == "dsa" ? "netdma-dsa-spr" : "netdma-cbdma-\(profile)"
    print("INFO impl=\(impl) tsc_hz=\(Int(hz)) rdtsc_cost=\(cost) ring=\(ring) batch=\(batch) working_set=\(workingSet) engine_tid=\(rig.engineThread)")
    var failed = false
    for size in sizes {
        guard size <= rig.channel.maximumTransferSize, size <= workingSet else {
            warn("size \(size) skipped (maximum transfer \(rig.channel.maximumTransferSize), working set \(workingSet))")
            continue
        }
        // --ops: that many, but no more than --bytes' worth, and at least 256.
        let ops = fixedOps.map { min($0, max(256, totalBytes / size)) }
            ?? opsForSize(size, totalBytes: totalBytes, workingSet: workingSet)
        // Warm-up: wake the engine thread and fault in the translations.
        if warmup > 0 {
            let warm = StreamWorkload(size: size, ops: min(ops, warmup), batch: batch, workingSet: workingSet)
            _ = warm.run(rig.queue, source: src, destination: dst, rdtscCost: cost) { rig.engineCPUNanoseconds }
        }
        let w = StreamWorkload(size: size, ops: ops, batch: batch, workingSet: workingSet)
        if counting {
            for _ in 0..<reps where !countWindow(w, rig: rig, impl: impl, source: src, destination: dst, rdtscCost: cost) {
                failed = true
            }
            continue
        }
        for _ in 0..<reps {
            let r = w.run(rig.queue, source: src, destination: dst, rdtscCost: cost) { rig.engineCPUNanoseconds }
            if let f = r.failure {
                warn("size \(size): \(f)")
                failed = true
            }
            print("RESULT impl=\(impl) size=\(size) ops=\(r.ops) wall_ns=\(r.wallNanoseconds) api_cycles=\(r.apiCycles) preempted=\(r.preempted) sub_cpu_ns=\(r.submitterCPUNanoseconds) worker_cpu_ns=\(r.engineCPUNanoseconds) polls=\(r.polls) empty_polls=\(r.emptyPolls) other_load=\(r.otherLoad) verified=\(r.verified ? 1 : 0) tsc_hz=\(Int(hz))")
            if doMemcpy {
                let mops = max(1024, ops)
                let m = memcpyRate(source: src.base, destination: dst.base, size: size, workingSet: workingSet, ops: mops)
                print("MEMCPY impl=\(impl) size=\(size) ops=\(mops) wall_ns=\(m.wallNanoseconds) other_load=\(m.otherLoad)")
            }
        }
    }
    exit(failed ? 1 : 0)
}

/// Count mode: one repetition between callgrind dumps, then an idle window (the same sequence
/// as `count_window` in Scripts/peer/dma_peer.c):
///
///   zero counters; the stream (``CountedCalls``; a `sched_yield` after each empty poll, so that
///   the engine gets its turn); dump `stream-SIZE`; `emptyPollCalls` counted polls of the
///   drained queue; dump `empty-SIZE` (what one empty poll costs); one 64-byte copy, polled to
///   completion; 100 ms nap (the engine polls an empty channel, then sleeps); dump `idle-SIZE`.
///
/// Prints a WINDOW line; `netdma-peer counts` reads it with the dumps. Returns whether it verified.
func countWindow(_ w: StreamWorkload, rig: any ModelRig, impl: String, source: BufferBox, destination: BufferBox,
                 rdtscCost: UInt64) -> Bool {
    let emptyPollCalls = 1000
    bench_callgrind_zero()
    let r = w.run(rig.queue, source: source, destination: destination, rdtscCost: rdtscCost, counted: true) { 0 }
    bench_callgrind_dump("stream-\(w.size)")
    var nonEmpty = 0
    for _ in 0..<emptyPollCalls {
        let c = CountedCalls.countedCompleted(rig.queue, max: rig.queue.capacity)
        if c.count != 0 || c.hadError { nonEmpty += 1 }
    }
    bench_callgrind_dump("empty-\(w.size)")
    var primed = false
    do {
        _ = try rig.queue.enqueueCopy(source: source.iova, destination: destination.iova, length: 64)
        try rig.queue.submit()
        while true {
            let c = rig.queue.completed(max: 1)
            if c.hadError { break }
            if c.count == 1 { primed = true; break }
        }
    } catch {
        warn("size \(w.size): the idle window's copy failed: \(error)")
    }
    napMilliseconds(100)
    bench_callgrind_dump("idle-\(w.size)")
    if let f = r.failure { warn("size \(w.size): \(f)") }
    if nonEmpty > 0 { warn("size \(w.size): \(nonEmpty) polls of a drained queue returned ops") }
    let ok = r.verified && nonEmpty == 0 && primed
    print("WINDOW impl=\(impl) size=\(w.size) ops=\(r.ops) batches=\(r.batches) polls=\(r.polls) empty_polls=\(r.emptyPolls) capacity_checks=\(r.capacityChecks) empty_poll_calls=\(emptyPollCalls) stream=stream-\(w.size) empty=empty-\(w.size) idle=idle-\(w.size) verified=\(ok ? 1 : 0)")
    fflush(nil)
    return ok
}

func napMilliseconds(_ ms: Int) {
    var t = timespec(tv_sec: ms / 1000, tv_nsec: (ms % 1000) * 1_000_000)
    nanosleep(&t, nil)
}

extension String {
    func trimmingSuffixNewline() -> String {
        var s = self
        while s.last == "\n" || s.last == "\r" { s.removeLast() }
        return s
    }
}

let arguments = Array(CommandLine.arguments.dropFirst())
switch arguments.first {
case "run": run(Array(arguments.dropFirst()))
case "report": report(Array(arguments.dropFirst()))
case "counts": counts(Array(arguments.dropFirst()))
default:
    warn("usage: netdma-peer run [-s SIZES] [-r REPS] [-b BATCH] [-q RING] [-w BYTES] [-t BYTES] [--profile icx|skx|...|dsa] [--submitter-cpu N] [--engine-cpu N] [--no-memcpy] [--warmup OPS] [--cpu-copy-threshold BYTES] [--ops N] [--count] | netdma-peer counts --run N OUTPUT CALLGRIND-PREFIX | netdma-peer report FILE...")
    exit(2)
}
