// `netdma-peer report FILE...`: the tables of Scripts/peer-bench.
//
// Reads RESULT and MEMCPY lines (wall clock; `ROUND n=N` lines before each program run say
// which alternation they belong to) and COUNT lines (instructions per op, from `netdma-peer
// counts`) of both sides, and prints:
//
// 1. Instructions per op by callgrind, per count run and how far the runs differ: the
//    headline (it does not depend on the machine's load);
// 2. Wall clock, median [min–max] over the alternations, of the ratios taken within each
//    alternation (NetDMA over DPDK run back to back; NetDMA over one core's memcpy measured in
//    the same alternation).
#if canImport(Glibc)
import Glibc
#endif

struct Row {
    var kind: String
    var round: Int
    var fields: [String: String]
    func d(_ k: String) -> Double? { fields[k].flatMap(Double.init) }
    var impl: String { fields["impl"] ?? "" }
    var size: Int? { fields["size"].flatMap { Int($0) } }
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

/// "median [min–max]" of `xs`.
func spread(_ xs: [Double], _ digits: Int = 2) -> String {
    guard let m = median(xs), let lo = xs.min(), let hi = xs.max() else { return "-" }
    return xs.count == 1 ? fmt(m, digits) : "\(fmt(m, digits)) [\(fmt(lo, digits))–\(fmt(hi, digits))]"
}

func sizeName(_ n: Int) -> String {
    n >= 1 << 20 && n % (1 << 20) == 0 ? "\(n >> 20) MiB" : n >= 1024 && n % 1024 == 0 ? "\(n >> 10) KiB" : "\(n) B"
}

func readRows(_ files: [String]) -> [Row] {
    var rows: [Row] = []
    for f in files {
        guard let fp = fopen(f, "r") else { fail("cannot read \(f)") }
        var line: UnsafeMutablePointer<CChar>? = nil
        var cap = 0
        var round = 0
        while getline(&line, &cap, fp) > 0 {
            let s = String(cString: line!).trimmingSuffixNewline()
            let parts = s.split(separator: " ")
            guard let kind = parts.first, ["RESULT", "MEMCPY", "COUNT", "ROUND"].contains(kind) else { continue }
            var fields: [String: String] = [:]
            for p in parts.dropFirst() {
                if let eq = p.firstIndex(of: "=") { fields[String(p[..<eq])] = String(p[p.index(after: eq)...]) }
            }
            if kind == "ROUND" { round = fields["n"].flatMap { Int($0) } ?? round; continue }
            rows.append(Row(kind: String(kind), round: round, fields: fields))
        }
        free(line)
        fclose(fp)
    }
    return rows
}

/// The checked ceilings of `netdma-peer report --check` (CBDMA model against DPDK's skeleton,
/// instructions per op by callgrind, every size): what was reached, with headroom. Reached:
/// submitter 0.37–0.39 (commit c832a78; issue 14's target is 0.5), worker 0.50–0.77 (b142330),
/// runs within 0.5 %. The submitter's ceiling leaves about 3 instructions per op (8 %) for
/// code elsewhere moving the counts (a change that costs more fails here); the worker's is
/// issue 14's target (0.8); the spread ceiling is issue 14's 2 %.
enum CountCeilings {
    static let submitterRatio = 0.42
    static let workerRatio = 0.80
    static let runSpreadPercent = 2.0
}

func report(_ arguments: [String]) {
    let check = arguments.contains("--check")
    let files = arguments.filter { $0 != "--check" }
    let rows = readRows(files)
    let results = rows.filter { $0.kind == "RESULT" }
    let countRows = rows.filter { $0.kind == "COUNT" }
    let impls = Array(Set((results + countRows).map(\.impl))).sorted()
    // The baseline: DPDK when it ran (Scripts/peer-bench), else the Swift API (peer-bench --c-api:
    // the C ABI, impl netdma-c-*, against CopyQueue called from Swift).
    guard let peer = impls.first(where: { $0.hasPrefix("dpdk") }) ?? impls.first(where: { !$0.hasPrefix("netdma-c-") })
            ?? impls.first else { fail("no RESULT or COUNT lines") }
    let ours = impls.filter { $0 != peer }
    var checkFailures = 0
    var bad = results.filter { $0.fields["verified"] != "1" }.count + countRows.filter { $0.fields["verified"] != "1" }.count
    let dpdk = peer.hasPrefix("dpdk")
    let names = dpdk ? Names(peer: "DPDK", ours: "NetDMA") : Names(peer: "Swift", ours: "C")

    for o in ours {
        print("")
        if dpdk {
            print("DPDK = \(peer) (DPDK dmadev API on the software dma_skeleton); NetDMA = \(o) (CopyQueue on the device model).")
        } else {
            print("Swift = \(peer) (CopyQueue called from Swift); C = \(o) (the same workload through libnetdma's C ABI).")
        }
        if !countRows.isEmpty {
            let failures = instructionTable(countRows, peer: peer, ours: o, names: names)
            if check {
                // The ceilings are ratios to DPDK's skeleton.
                let all = dpdk ? failures : ["no DPDK counts to check against (the ceilings are ratios to DPDK's)"]
                for f in all { print("CHECK FAILED: \(f)") }
                if all.isEmpty { print("CHECK OK: submitter <= \(CountCeilings.submitterRatio)x, worker <= \(CountCeilings.workerRatio)x DPDK, runs within \(CountCeilings.runSpreadPercent) % at every size") }
                checkFailures += all.count
            }
        } else if check {
            print("CHECK FAILED: no instruction counts (run without --no-count)")
            checkFailures += 1
        }
        if !results.isEmpty { wallTable(rows, peer: peer, ours: o, names: names) }
    }
    print("")
    print("\(results.count) stream repetitions, \(countRows.count) counted windows, \(bad) failed verification")
    if check { print("\(checkFailures) count check\(checkFailures == 1 ? "" : "s") failed") }
    if countRows.isEmpty && results.isEmpty { bad += 1 }
    exit(bad == 0 && checkFailures == 0 ? 0 : 1)
}

/// What the two sides are called in the tables' headings.
struct Names {
    var peer: String
    var ours: String
}

/// Table 1: instructions per op (COUNT lines), one column per count run. Returns what exceeds
/// ``CountCeilings`` (checked with `--check`).
func instructionTable(_ rows: [Row], peer: String, ours: String, names n: Names) -> [String] {
    var failures: [String] = []
    let runs = Array(Set(rows.compactMap { $0.fields["run"].flatMap { Int($0) } })).sorted()
    let sizes = Array(Set(rows.compactMap(\.size))).sorted()
    func values(_ impl: String, _ size: Int, _ key: String) -> [Double] {
        runs.compactMap { run in
            rows.first { $0.impl == impl && $0.size == size && $0.fields["run"] == String(run) }?.d(key)
        }
    }
    func cell(_ xs: [Double], _ digits: Int = 1) -> String { xs.isEmpty ? "-" : xs.map { fmt($0, digits) }.joined(separator: " / ") }
    func mean(_ xs: [Double]) -> Double? { xs.isEmpty ? nil : xs.reduce(0, +) / Double(xs.count) }
    print("")
    print("Instructions per op (callgrind; \(runs.count) run\(runs.count == 1 ? "" : "s"), shown run 1 / run 2 / …). Submitter API = copy or")
    print("enqueue + submit + non-empty completed, through never-inlined wrappers (their call and return included);")
    print("worker = the dma_skel_0 / model engine thread, its idle polling, naps and futex waits left out.")
    print("")
    let (p, o) = (n.peer, n.ours)
    print("| size | submitter API \(p) | submitter API \(o) | \(o) / \(p) | worker \(p) | worker \(o) | \(o) / \(p) | \(o) enqueue + submit + completed | \(p) copy + submit + completed | one empty poll \(p) / \(o) | runs differ by |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for size in sizes {
        let pa = values(peer, size, "api_ir"), ua = values(ours, size, "api_ir")
        let pw = values(peer, size, "worker_ir"), uw = values(ours, size, "worker_ir")
        // The largest relative spread between runs of any of the four.
        var worst: Double? = nil
        for xs in [pa, ua, pw, uw] where xs.count > 1 {
            if let lo = xs.min(), let hi = xs.max(), let m = mean(xs), m > 0 { worst = max(worst ?? 0, (hi - lo) / m * 100) }
        }
        let apiRatio = mean(ua).flatMap { u in mean(pa).map { u / $0 } }
        let workerRatio = mean(uw).flatMap { u in mean(pw).map { u / $0 } }
        func parts(_ impl: String, _ keys: [String]) -> String {
            keys.map { fmt(mean(values(impl, size, $0)), 1) }.joined(separator: " + ")
        }
        if let r = apiRatio, r > CountCeilings.submitterRatio {
            failures.append("\(sizeName(size)): submitter \(fmt(r))x DPDK's instructions per op (ceiling \(CountCeilings.submitterRatio))")
        }
        if let r = workerRatio, r > CountCeilings.workerRatio {
            failures.append("\(sizeName(size)): worker \(fmt(r))x DPDK's instructions per op (ceiling \(CountCeilings.workerRatio))")
        }
        if apiRatio == nil || workerRatio == nil { failures.append("\(sizeName(size)): a side has no counts") }
        if let w = worst, w > CountCeilings.runSpreadPercent {
            failures.append("\(sizeName(size)): count runs differ by \(fmt(w, 2)) % (ceiling \(CountCeilings.runSpreadPercent) %)")
        }
        let keys = ["enqueue_ir", "submit_ir", "completed_ir"]
        print("| \(sizeName(size)) | \(cell(pa)) | \(cell(ua)) | \(fmt(apiRatio)) | \(cell(pw)) | \(cell(uw)) | \(fmt(workerRatio)) | \(parts(ours, keys)) | \(parts(peer, keys)) | \(fmt(mean(values(peer, size, "empty_poll_ir")), 0)) / \(fmt(mean(values(ours, size, "empty_poll_ir")), 0)) | \(worst.map { fmt($0, 2) + " %" } ?? "-") |")
    }
    return failures
}

/// Table 2: wall clock over the alternations (RESULT/MEMCPY lines).
func wallTable(_ rows: [Row], peer: String, ours: String, names n: Names) {
    let results = rows.filter { $0.kind == "RESULT" }
    let memcpys = rows.filter { $0.kind == "MEMCPY" }
    let sizes = Array(Set(results.compactMap(\.size))).sorted()
    let rounds = Array(Set(results.map(\.round))).sorted()
    func mops(_ r: Row) -> Double? { r.d("ops").flatMap { o in r.d("wall_ns").map { o / $0 * 1e3 } } }
    func gbs(_ r: Row, _ size: Int) -> Double? { r.d("ops").flatMap { o in r.d("wall_ns").map { o * Double(size) / $0 } } }
    func cycles(_ r: Row, _ key: String) -> Double? {
        guard let c = r.d(key), c > 0, let hz = r.d("tsc_hz"), let o = r.d("ops") else { return nil }
        return c * hz / 1e9 / o
    }
    print("")
    print("Wall clock: median [min–max] over \(rounds.count) alternation\(rounds.count == 1 ? "" : "s"); ratios are taken within each alternation")
    let (pn, on) = (n.peer, n.ours)
    print("(\(on) over the \(pn) run next to it; \(on) over one core's memcpy in the same alternation). Cycles are TSC cycles per op;")
    print("submitter API cycles/op are median [min–max] over the repetitions, their ratio median [min–max] over the alternations.")
    print("")
    print("| size | \(pn) Mops/s | \(on) Mops/s | \(on) / \(pn) | \(on) / memcpy | memcpy GB/s (1 core) | submitter API cycles/op \(pn) | submitter API cycles/op \(on) | \(on) / \(pn) API cycles | worker CPU cycles/op \(pn) / \(on) | other load (CPUs, max) \(pn) / \(on) | reps (failed) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for size in sizes {
        let p = results.filter { $0.impl == peer && $0.size == size }
        let u = results.filter { $0.impl == ours && $0.size == size }
        let m = memcpys.filter { $0.size == size }
        var vsPeer: [Double] = [], vsMemcpy: [Double] = [], apiRatio: [Double] = []
        func api(_ r: Row) -> Double? { r.d("api_cycles").flatMap { a in r.d("ops").map { a / $0 } } }
        for round in rounds {
            let pm = median(p.filter { $0.round == round }.compactMap(mops))
            let um = median(u.filter { $0.round == round }.compactMap(mops))
            let ug = median(u.filter { $0.round == round }.compactMap { gbs($0, size) })
            let mg = median(m.filter { $0.round == round }.compactMap { gbs($0, size) })
            if let pm, let um, pm > 0 { vsPeer.append(um / pm) }
            if let ug, let mg, mg > 0 { vsMemcpy.append(ug / mg) }
            if let pa = median(p.filter { $0.round == round }.compactMap(api)),
               let ua = median(u.filter { $0.round == round }.compactMap(api)), pa > 0 { apiRatio.append(ua / pa) }
        }
        func med(_ rs: [Row], _ f: (Row) -> Double?) -> String { fmt(median(rs.compactMap(f)), 0) }
        let failed = (p + u).filter { $0.fields["verified"] != "1" }.count
        print("| \(sizeName(size)) | \(spread(p.compactMap(mops), 3)) | \(spread(u.compactMap(mops), 3)) | \(spread(vsPeer)) | \(spread(vsMemcpy)) | \(fmt(median(m.compactMap { gbs($0, size) }))) | \(spread(p.compactMap(api), 0)) | \(spread(u.compactMap(api), 0)) | \(spread(apiRatio)) | \(med(p) { cycles($0, "worker_cpu_ns") }) / \(med(u) { cycles($0, "worker_cpu_ns") }) | \(fmt(p.compactMap { $0.d("other_load") }.max())) / \(fmt(u.compactMap { $0.d("other_load") }.max())) | \(p.count)/\(u.count) (\(failed)) |")
    }
}
