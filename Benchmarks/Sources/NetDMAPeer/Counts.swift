// `netdma-peer counts`: instructions per op from a count-mode run under callgrind.
//
// Both harnesses (Scripts/peer/dma_peer.c -c and `netdma-peer run --count`) run, per copy size,
// one repetition of the stream workload between callgrind dumps of every thread, then an idle
// window, and print a WINDOW line (ops, batches, polls, empty polls, the dump names). Run under
//
//   valgrind --tool=callgrind --fair-sched=yes --separate-threads=yes --dump-instr=yes
//            --dump-line=no --compress-strings=no --compress-pos=no --callgrind-out-file=PREFIX
//
// this reads those lines and the dumps (PREFIX.<part>-<thread>) and prints one COUNT line per
// window. What is counted (the same on both sides):
//
// Submitter (the main thread): callgrind's inclusive instruction count of each counted call
// (the `counted_*` wrappers around DPDK's inline dmadev API; `CountedCalls`' functions around
// CopyQueue's), which covers the library and driver code the call runs and the wrapper's own
// call and return. API instructions per op = (copy/enqueue + submit + completed − empty polls ×
// one empty poll) / ops, where one empty poll is measured in its own window right after the
// stream (1000 counted polls of the drained queue), and the stream's empty polls are counted
// by the loop. Empty polls and the per-loop-turn free-slot checks are
// reported separately: how many there are depends on timing, what each costs does not.
//
// Worker (the busiest other thread: DPDK's `dma_skel_0`, the model's engine thread): every
// instruction it executed in the stream window, minus its idle looping. The idle window (one
// 64-byte copy, then 100 ms with nothing queued) gives the profile of the idle worker per
// instruction: its polling loop, run thousands of times, and its naps or futex waits, run
// far fewer times. The stream window's idle passes are λ times the idle window's, λ being the
// smallest stream/idle ratio among the polling loop's instructions (the idle window's most
// executed ones: those that only idle passes run have exactly that ratio; those shared with
// work passes, more). Each polling-loop instruction contributes max(0, stream count − λ × idle
// count); nap and futex-wait paths nothing; instructions the idle worker did not run (or only
// for its one copy) their whole count. Divided by ops. So the per-descriptor work, the
// per-pass overhead of passes that found work and any spin inside the work path (e.g. waiting
// for a doorbell writer) count; idle polling, naps and futex waits do not.
#if canImport(Glibc)
import Glibc
#endif

/// One thread's costs in one callgrind dump.
struct CallgrindDump {
    var thread = 0
    var part = 0
    var trigger = ""
    var totals = 0
    /// Self instruction count per instruction (object id, address).
    var instructions: [InstructionKey: Int] = [:]
    /// Inclusive instruction count per function name (self plus calls made).
    var inclusive: [String: Int] = [:]
    /// Calls per function name (as callee).
    var calls: [String: Int] = [:]

    struct InstructionKey: Hashable {
        var object: Int
        var address: UInt64
    }
}

/// Reads callgrind output written with `--dump-instr=yes --dump-line=no --compress-strings=no
/// --compress-pos=no` (one position per cost line: the instruction address).
func readCallgrindDump(_ path: String, objects: inout [String: Int]) -> CallgrindDump? {
    guard let fp = fopen(path, "r") else { return nil }
    defer { fclose(fp) }
    var d = CallgrindDump()
    var line: UnsafeMutablePointer<CChar>? = nil
    var cap = 0
    defer { free(line) }
    var object = 0, function = "", callee = ""
    var callCost = false  // the next cost line is the inclusive cost of a call
    while getline(&line, &cap, fp) > 0 {
        let s = String(cString: line!).trimmingSuffixNewline()
        guard let first = s.first else { continue }
        if first == "0" {
            // "0xADDR COST"
            let parts = s.split(separator: " ")
            guard parts.count >= 2, let cost = Int(parts[parts.count - 1]),
                  let address = UInt64(parts[0].dropFirst(2), radix: 16) else { continue }
            d.inclusive[function, default: 0] += cost
            if callCost {
                callCost = false
            } else {
                d.instructions[.init(object: object, address: address), default: 0] += cost
            }
            continue
        }
        if s.hasPrefix("ob=") {
            let name = String(s.dropFirst(3))
            if let id = objects[name] { object = id } else { object = objects.count; objects[name] = object }
        } else if s.hasPrefix("fn=") {
            function = String(s.dropFirst(3))
        } else if s.hasPrefix("cfn=") {
            callee = String(s.dropFirst(4))
        } else if s.hasPrefix("calls=") {
            let n = Int(s.dropFirst(6).split(separator: " ").first ?? "") ?? 0
            d.calls[callee, default: 0] += n
            callCost = true
        } else if s.hasPrefix("thread: ") {
            d.thread = Int(s.dropFirst(8)) ?? 0
        } else if s.hasPrefix("part: ") {
            d.part = Int(s.dropFirst(6)) ?? 0
        } else if s.hasPrefix("desc: Trigger: ") {
            d.trigger = String(s.dropFirst(15))
        } else if s.hasPrefix("totals: ") {
            d.totals = Int(s.dropFirst(8)) ?? 0
        }
    }
    return d
}

/// The counted calls, by the names both harnesses give them (C: `counted_*`; Swift:
/// `CountedCalls`' functions, matched in their mangled names with the length prefix).
enum CountedCall: CaseIterable {
    case enqueue, submit, completed, capacity

    var needles: [String] {
        switch self {
        case .enqueue: ["counted_copy", "18countedEnqueueCopy"]
        case .submit: ["counted_submit", "13countedSubmit"]
        case .completed: ["counted_completed", "16countedCompleted"]
        case .capacity: ["counted_capacity", "16countedFreeSlots"]
        }
    }

    /// The function's inclusive cost and calls in `dump` (summed over every function whose
    /// name matches: a wrapper and its compiler clones, if any).
    func cost(in dump: CallgrindDump) -> (instructions: Int, calls: Int) {
        var ir = 0, n = 0
        for (name, c) in dump.inclusive where needles.contains(where: { name.contains($0) }) {
            ir += c
            n += dump.calls[name] ?? 0
        }
        return (ir, n)
    }
}

/// The worker's instructions in the stream window without its idle passes (see the file
/// comment). Returns (instructions, λ, instructions before the subtraction).
///
/// Per instruction k, with c the stream window's count and c′ the idle window's:
/// - c′ = 0 or c′ ≤ 2 (never idle, or only in the idle window's one copy and the tail of the
///   stream's last pass): all of c is work;
/// - c′ ≥ half the idle window's largest count (the idle loop): max(0, c − λ·c′);
/// - in between (idle paths a pass takes only sometimes: naps, futex waits): none of c.
/// λ is the smallest c/c′ among the idle loop's most executed instructions (c′ within 2 of the
/// largest): the instructions only idle passes run have c/c′ = λ exactly, those shared with
/// work passes more.
func workerInstructions(stream: CallgrindDump, idle: CallgrindDump) -> (work: Double, lambda: Double, window: Int) {
    let hottest = idle.instructions.values.max() ?? 0
    var lambda = 0.0
    if hottest > 2 {
        let loop = idle.instructions.filter { $0.value + 2 >= hottest }
        lambda = loop.map { Double(stream.instructions[$0.key] ?? 0) / Double($0.value) }.min() ?? 0
    }
    var work = 0.0
    var window = 0
    for (k, c) in stream.instructions {
        window += c
        let idleCount = idle.instructions[k] ?? 0
        if idleCount <= 2 {
            work += Double(c)
        } else if 2 * idleCount >= hottest {
            work += max(0, Double(c) - lambda * Double(idleCount))
        }
    }
    return (work, lambda, window)
}

func counts(_ args: [String]) {
    var run = 1
    var rest: [String] = []
    var i = 0
    while i < args.count {
        if args[i] == "--run", i + 1 < args.count { run = need(Int(args[i + 1]), "bad --run"); i += 2; continue }
        rest.append(args[i])
        i += 1
    }
    guard rest.count == 2 else { fail("usage: netdma-peer counts [--run N] PROGRAM-OUTPUT CALLGRIND-PREFIX") }
    let output = rest[0], prefix = rest[1]

    // WINDOW lines of the program.
    var windows: [[String: String]] = []
    guard let fp = fopen(output, "r") else { fail("cannot read \(output)") }
    var line: UnsafeMutablePointer<CChar>? = nil
    var cap = 0
    while getline(&line, &cap, fp) > 0 {
        let s = String(cString: line!).trimmingSuffixNewline()
        guard s.hasPrefix("WINDOW ") else { continue }
        var fields: [String: String] = [:]
        for p in s.split(separator: " ").dropFirst() {
            if let eq = p.firstIndex(of: "=") { fields[String(p[..<eq])] = String(p[p.index(after: eq)...]) }
        }
        windows.append(fields)
    }
    free(line)
    fclose(fp)
    guard !windows.isEmpty else { fail("no WINDOW lines in \(output) (was it run with --count / -c?)") }

    // Every dump file of the run: PREFIX.<part>-<thread>.
    let directory = prefix.contains("/") ? String(prefix[..<prefix.lastIndex(of: "/")!]) : "."
    let base = prefix.contains("/") ? String(prefix[prefix.index(after: prefix.lastIndex(of: "/")!)...]) : prefix
    var byTrigger: [String: [CallgrindDump]] = [:]
    var objects: [String: Int] = [:]
    guard let dir = opendir(directory) else { fail("cannot list \(directory)") }
    var names: [String] = []
    while let e = readdir(dir) {
        let name = withUnsafeBytes(of: e.pointee.d_name) { raw in
            String(decoding: raw.prefix { $0 != 0 }, as: UTF8.self)
        }
        if name.hasPrefix(base + ".") { names.append(name) }
    }
    closedir(dir)
    for name in names {
        guard let d = readCallgrindDump(directory + "/" + name, objects: &objects) else { continue }
        // Monitor-command dumps: "dump stream-64".
        let trigger = d.trigger.hasPrefix("dump ") ? String(d.trigger.dropFirst(5)) : d.trigger
        byTrigger[trigger, default: []].append(d)
    }

    var bad = false
    for w in windows {
        guard let impl = w["impl"], let size = w["size"], let ops = w["ops"].flatMap({ Int($0) }), ops > 0,
              let streamName = w["stream"], let idleName = w["idle"], let emptyName = w["empty"],
              let stream = byTrigger[streamName], let idle = byTrigger[idleName],
              let emptyWindow = byTrigger[emptyName]?.first(where: { $0.thread == 1 }) else {
            warn("window \(w): dumps missing")
            bad = true
            continue
        }
        let emptyPolls = w["empty_polls"].flatMap { Int($0) } ?? 0
        let emptyCalls = w["empty_poll_calls"].flatMap { Int($0) } ?? 0
        let checks = w["capacity_checks"].flatMap { Int($0) } ?? 0
        guard let submitter = stream.first(where: { $0.thread == 1 }),
              let worker = stream.filter({ $0.thread != 1 }).max(by: { $0.totals < $1.totals }),
              let workerIdle = idle.first(where: { $0.thread == worker.thread }) else {
            warn("window \(streamName) of \(impl): no submitter or worker thread in the dumps")
            bad = true
            continue
        }
        let enqueue = CountedCall.enqueue.cost(in: submitter)
        let submit = CountedCall.submit.cost(in: submitter)
        let completed = CountedCall.completed.cost(in: submitter)
        let empty = CountedCall.completed.cost(in: emptyWindow)
        let capacity = CountedCall.capacity.cost(in: submitter)
        guard enqueue.instructions > 0, submit.instructions > 0, completed.instructions > 0, empty.instructions > 0 else {
            warn("window \(streamName) of \(impl): counted calls not found in the submitter's dump")
            bad = true
            continue
        }
        let emptyEach = Double(empty.instructions) / Double(max(1, emptyCalls))
        let nonEmpty = Double(completed.instructions) - Double(emptyPolls) * emptyEach
        let api = (Double(enqueue.instructions) + Double(submit.instructions) + nonEmpty) / Double(ops)
        let wk = workerInstructions(stream: worker, idle: workerIdle)
        let d = Double(ops)
        print("COUNT impl=\(impl) size=\(size) run=\(run) ops=\(ops) batches=\(w["batches"] ?? "0") polls=\(w["polls"] ?? "0") empty_polls=\(emptyPolls)"
              + " enqueue_ir=\(fmt(Double(enqueue.instructions) / d, 2)) submit_ir=\(fmt(Double(submit.instructions) / d, 2))"
              + " completed_ir=\(fmt(nonEmpty / d, 2)) api_ir=\(fmt(api, 2)) empty_poll_ir=\(fmt(emptyEach, 2))"
              + " capacity_ir=\(fmt(Double(capacity.instructions) / Double(max(1, checks)), 2))"
              + " worker_ir=\(fmt(wk.work / d, 2)) worker_window_ir=\(fmt(Double(wk.window) / d, 2)) worker_idle_scale=\(fmt(wk.lambda, 3))"
              + " worker_thread=\(worker.thread) verified=\(w["verified"] ?? "0")")
        if w["verified"] != "1" { bad = true }
    }
    exit(bad ? 1 : 0)
}
