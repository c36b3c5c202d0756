// netdma-peer: the NetDMA side of Scripts/peer-bench, and the report that puts both sides in
// one table.
//
//   netdma-peer run [options]     runs the stream workload on CopyQueue over the CBDMA (or, with
//                                 --profile dsa, the DSA) device
//                                 model and one core's memcpy; prints RESULT/MEMCPY lines
//   netdma-peer report FILE...    reads RESULT/MEMCPY lines (both sides) and prints the table
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
        default: fail("unknown option \(args[i])")
        }
        i += 1
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
        let ops = opsForSize(size, totalBytes: totalBytes, workingSet: workingSet)
        // Warm-up: wake the engine thread and fault in the translations.
        if warmup > 0 {
            let warm = StreamWorkload(size: size, ops: min(ops, warmup), batch: batch, workingSet: workingSet)
            _ = warm.run(rig.queue, source: src, destination: dst, rdtscCost: cost) { rig.engineCPUNanoseconds }
        }
        let w = StreamWorkload(size: size, ops: ops, batch: batch, workingSet: workingSet)
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

// MARK: - report

struct Row {
    var kind: String
    var fields: [String: String]
    func d(_ k: String) -> Double? { fields[k].flatMap(Double.init) }
}

func median(_ xs: [Double]) -> Double? {
    guard !xs.isEmpty else { return nil }
    let s = xs.sorted()
    return s.count % 2 == 1 ? s[s.count / 2] : (s[s.count / 2 - 1] + s[s.count / 2]) / 2
}

func fmt(_ v: Double?, _ digits: Int = 2) -> String {
    guard let v, v.isFinite else { return "-" }
    var p = 1.0
    for _ in 0..<digits { p *= 10 }
    let r = (v * p).rounded() / p
    var s = String(r)
    if digits == 0, s.hasSuffix(".0") { s.removeLast(2) }
    if let dot = s.firstIndex(of: "."), digits > 0 {
        let decimals = s.distance(from: dot, to: s.endIndex) - 1
        if decimals < digits { s += String(repeating: "0", count: digits - decimals) }
    }
    return s
}

func sizeName(_ n: Int) -> String {
    n >= 1 << 20 && n % (1 << 20) == 0 ? "\(n >> 20) MiB" : n >= 1024 && n % 1024 == 0 ? "\(n >> 10) KiB" : "\(n) B"
}

func report(_ files: [String]) {
    var rows: [Row] = []
    for f in files {
        guard let fp = fopen(f, "r") else { fail("cannot read \(f)") }
        var line: UnsafeMutablePointer<CChar>? = nil
        var cap = 0
        while getline(&line, &cap, fp) > 0 {
            let s = String(cString: line!).trimmingSuffixNewline()
            let parts = s.split(separator: " ")
            guard let kind = parts.first, kind == "RESULT" || kind == "MEMCPY" else { continue }
            var fields: [String: String] = [:]
            for p in parts.dropFirst() {
                if let eq = p.firstIndex(of: "=") { fields[String(p[..<eq])] = String(p[p.index(after: eq)...]) }
            }
            rows.append(Row(kind: String(kind), fields: fields))
        }
        free(line)
        fclose(fp)
    }
    let results = rows.filter { $0.kind == "RESULT" }
    let impls = Array(Set(results.compactMap { $0.fields["impl"] })).sorted()
    guard let peer = impls.first(where: { $0.hasPrefix("dpdk") }) ?? impls.first else { fail("no RESULT lines") }
    let ours = impls.filter { $0 != peer }
    let sizes = Array(Set(results.compactMap { $0.fields["size"].flatMap { Int($0) } })).sorted()

    struct Stat { var mops: Double?; var gbs: Double?; var api: Double?; var sub: Double?; var worker: Double?; var load: Double?; var n: Int; var bad: Int }
    func stat(_ impl: String, _ size: Int) -> Stat {
        let rs = results.filter { $0.fields["impl"] == impl && $0.fields["size"] == String(size) }
        func per(_ f: (Row) -> Double?) -> Double? { median(rs.compactMap(f)) }
        return Stat(
            mops: per { r in r.d("ops").flatMap { o in r.d("wall_ns").map { o / $0 * 1e3 } } },
            gbs: per { r in r.d("ops").flatMap { o in r.d("wall_ns").map { o * Double(size) / $0 } } },
            api: per { r in r.d("api_cycles").flatMap { a in r.d("ops").map { a / $0 } } },
            sub: per { r in
                guard let c = r.d("sub_cpu_ns"), let hz = r.d("tsc_hz"), let o = r.d("ops") else { return nil }
                return c * hz / 1e9 / o
            },
            worker: per { r in
                guard let c = r.d("worker_cpu_ns"), c > 0, let hz = r.d("tsc_hz"), let o = r.d("ops") else { return nil }
                return c * hz / 1e9 / o
            },
            load: per { $0.d("other_load") },
            n: rs.count,
            bad: rs.filter { $0.fields["verified"] != "1" }.count)
    }
    func memcpyGBs(_ size: Int) -> Double? {
        median(rows.filter { $0.kind == "MEMCPY" && $0.fields["size"] == String(size) }.compactMap { r in
            r.d("ops").flatMap { o in r.d("wall_ns").map { o * Double(size) / $0 } }
        })
    }

    for o in ours {
        print("")
        print("DPDK = \(peer) (DPDK dmadev API on the software dma_skeleton); NetDMA = \(o) (CopyQueue on the device model).")
        print("Medians over repetitions; cycles are TSC cycles per op; ratios are NetDMA over DPDK and NetDMA over memcpy.")
        print("")
        print("| size | DPDK Mops/s | NetDMA Mops/s | NetDMA / DPDK | DPDK GB/s | NetDMA GB/s | memcpy GB/s (1 core) | NetDMA / memcpy | submitter API cycles/op DPDK / NetDMA | submitter CPU cycles/op DPDK / NetDMA | worker CPU cycles/op DPDK / NetDMA | other load (CPUs) DPDK / NetDMA | reps (failed) |")
        print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
        for size in sizes {
            let p = stat(peer, size), u = stat(o, size)
            let m = memcpyGBs(size)
            let ratio = (p.mops != nil && u.mops != nil && p.mops! > 0) ? u.mops! / p.mops! : nil
            let vsMemcpy = (m != nil && u.gbs != nil && m! > 0) ? u.gbs! / m! : nil
            print("| \(sizeName(size)) | \(fmt(p.mops, 3)) | \(fmt(u.mops, 3)) | \(fmt(ratio)) | \(fmt(p.gbs)) | \(fmt(u.gbs)) | \(fmt(m)) | \(fmt(vsMemcpy)) | \(fmt(p.api, 0)) / \(fmt(u.api, 0)) | \(fmt(p.sub, 0)) / \(fmt(u.sub, 0)) | \(fmt(p.worker, 0)) / \(fmt(u.worker, 0)) | \(fmt(p.load)) / \(fmt(u.load)) | \(p.n)/\(u.n) (\(p.bad + u.bad)) |")
        }
    }
    let bad = results.filter { $0.fields["verified"] != "1" }.count
    print("")
    print("\(results.count) stream repetitions, \(bad) failed verification")
    exit(bad == 0 ? 0 : 1)
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
default:
    warn("usage: netdma-peer run [-s SIZES] [-r REPS] [-b BATCH] [-q RING] [-w BYTES] [-t BYTES] [--profile icx|skx|...|dsa] [--submitter-cpu N] [--engine-cpu N] [--no-memcpy] [--warmup OPS] [--cpu-copy-threshold BYTES] | netdma-peer report FILE...")
    exit(2)
}
