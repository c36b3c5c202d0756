import ArgumentParser
import Foundation
import NetDMAEngines
import Platform

#if canImport(Glibc)
import Glibc
#endif

/// `netdma selftest [--seconds N] [--cycles N] [--json]`: a verification run in the spirit of
/// SPDK's `verify` and the VFIO "memcpy storm".
struct Selftest: ResultCommand {
    static let configuration = CommandConfiguration(
        abstract: "Verify engines: random copies, fills and NULL ops on every channel with every byte checked, error paths, and init/remove cycles.",
        discussion: """
            For --seconds per engine, every channel runs batches of random ops (sizes 1 B to 64 KiB, any \
            alignment); each destination byte and the canary bytes between ops are compared. Then, per \
            channel, a copy from an unmapped address must be reported failed exactly once, leave its \
            destination untouched and raise no completion interrupt for it, and the channel must recover. \
            Finally the engine is opened and removed --cycles times. Exit status 0 only when all passed. \
            Without engines bound to vfio-pci it runs on the built-in device model.
            """)

    @OptionGroup var engines: EngineOptions

    @Option(help: "Seconds of random ops per engine.")
    var seconds: Double = 2

    @Option(help: "Init/remove cycles per engine.")
    var cycles: Int = 3

    @Option(help: "Seed of the random ops (default: from the clock; printed so a run can be repeated).")
    var seed: UInt64?

    @Flag(help: "Print JSON instead of text.")
    var json = false

    func validate() throws {
        guard seconds > 0, seconds <= 86400 else { throw ValidationError("--seconds must be between 0 and 86400.") }
        guard cycles >= 0, cycles <= 10000 else { throw ValidationError("--cycles must be between 0 and 10000.") }
    }

    /// The random-ops phase of one engine.
    struct RandomOps: Codable, Equatable {
        var ops: Int
        var copies: Int
        var fills: Int
        var nulls: Int
        var batches: Int
        /// Destination bytes compared (op bytes and canaries).
        var bytesChecked: Int
        var seconds: Double
        /// The first problems found (at most 10).
        var errors: [String]
        var passed: Bool
    }

    /// The init/remove phase of one engine.
    struct Cycles: Codable, Equatable {
        var count: Int
        var completed: Int
        var averageMicroseconds: Double
        var errors: [String]
        var passed: Bool
    }

    /// One engine's result.
    struct EngineResult: Codable, Equatable {
        var engine: String
        var name: String?
        var channels: Int
        var randomOps: RandomOps?
        /// One "error-path" check per channel.
        var errorPath: [CheckResult]
        var cycles: Cycles?
        /// Set when the engine could not be opened.
        var openError: String?
        var passed: Bool
    }

    /// The JSON document.
    struct Document: Codable, Equatable {
        var source: String
        var headline: String
        var seed: UInt64
        var seconds: Double
        var engines: [EngineResult]
        var passed: Bool
    }

    func execute(progress: ProgressBar?) throws -> CommandResult {
        let targets = try engines.targets()
        let seed = self.seed ?? UInt64(truncatingIfNeeded: Int64(Date().timeIntervalSince1970 * 1e6))
        var results: [EngineResult] = []
        for (i, t) in targets.targets.enumerated() {
            let report: (Double, String) -> Void = { f, label in
                progress?.update((Double(i) + f) / Double(targets.targets.count), label)
            }
            results.append(try Selftest.run(t, targets, seconds: seconds, cycles: cycles, seed: seed &+ UInt64(i), progress: report))
        }
        let doc = Document(source: targets.usesModel ? "model" : "vfio", headline: targets.headline, seed: seed,
                           seconds: seconds, engines: results, passed: !results.isEmpty && results.allSatisfy(\.passed))
        return CommandResult(text: json ? try encodeJSON(doc) : Selftest.text(doc), exitCode: doc.passed ? 0 : 1)
    }

    static func run(_ target: EngineTarget, _ targets: EngineTargets, seconds: Double, cycles: Int, seed: UInt64,
                    progress: (Double, String) -> Void) throws(DriverError) -> EngineResult {
        var result = EngineResult(engine: "", name: nil, channels: 0, randomOps: nil, errorPath: [], cycles: nil, openError: nil, passed: false)
        do throws(DriverError) {
            let session = try targets.open(target)
            result.engine = session.label
            result.name = session.identity.name
            result.channels = session.channelCount
            var rigs: [ChannelRig] = []
            do {
                for _ in 0..<session.channelCount {
                    rigs.append(try ChannelRig(session: session, length: 256 << 10, ringSize: 256))
                }
            } catch {
                for r in rigs { r.free() }
                session.close()
                throw error
            }
            session.injectCopyFault?()
            result.randomOps = randomOps(rigs, seconds: seconds, seed: seed) { f in progress(f * 0.8, "random ops") }
            progress(0.8, "error paths")
            result.errorPath = rigs.map { errorPath($0, unmapped: session.unmappedIOVA) }
            for r in rigs { r.free() }
            rigs.removeAll()
            session.close()
        } catch {
            if error.isSetupProblem { throw error }
            result.engine = result.engine.isEmpty ? target.label : result.engine
            result.openError = error.message
            return result
        }
        result.cycles = initRemoveCycles(target, targets, count: cycles) { f in progress(0.85 + f * 0.15, "init/remove cycles") }
        result.passed = (result.randomOps?.passed ?? false) && result.errorPath.allSatisfy(\.passed) && (result.cycles?.passed ?? false)
        return result
    }

    // MARK: - random ops

    enum OpKind { case copy, fill, null }

    struct PendingOp {
        var kind: OpKind
        var source: Int
        var destination: Int
        var length: Int
        var pattern: UInt64
    }

    static let canary: UInt8 = 0xA5
    static let maximumOpSize = 64 * 1024

    static func randomOps(_ rigs: [ChannelRig], seconds: Double, seed: UInt64, progress: (Double) -> Void) -> RandomOps {
        var g = SplitMix64(seed: seed)
        var r = RandomOps(ops: 0, copies: 0, fills: 0, nulls: 0, batches: 0, bytesChecked: 0, seconds: 0, errors: [], passed: false)
        func fail(_ s: String) { if r.errors.count < 10 { r.errors.append(s) } }
        for (i, rig) in rigs.enumerated() { rig.fillSource(seed: seed &+ UInt64(i) &* 0x1234_5678) }
        let start = ContinuousClock.now
        let end = start + .milliseconds(Int64(seconds * 1000))
        var pending = Array(repeating: [PendingOp](), count: rigs.count)
        while ContinuousClock.now < end && r.errors.isEmpty {
            // One batch on every channel, then drain and check them all.
            for (c, rig) in rigs.enumerated() {
                rig.clearDestination(canary)
                let canFill = rig.channel.providerFlags.contains(.fill)
                let maxSize = min(maximumOpSize, rig.channel.maximumTransferSize)
                let batch = Int.random(in: 1...32, using: &g)
                var cursor = 0
                var ops: [PendingOp] = []
                for _ in 0..<batch {
                    let roll = Int.random(in: 0..<10, using: &g)
                    let kind: OpKind = roll < 7 ? .copy : (roll < 9 && canFill ? .fill : .null)
                    let bits = Int.random(in: 0...16, using: &g)
                    var size = min(maxSize, Int.random(in: max(1, (1 << bits) / 2)...(1 << bits), using: &g))
                    var dst = cursor + Int.random(in: 1...64, using: &g)
                    if kind == .fill { dst = (dst + 7) & ~7; size = max(8, size & ~7) }
                    if kind == .null { size = 0; dst = cursor }
                    guard dst + size + 1 < rig.length else { break }
                    let src = Int.random(in: 0...(rig.length - max(size, 1)), using: &g)
                    let pattern = g.next()
                    do throws(DriverError) {
                        switch kind {
                        case .copy: _ = try rig.queue.enqueueCopy(source: rig.sourceIOVA(src), destination: rig.destinationIOVA(dst), length: size)
                        case .fill: _ = try rig.queue.enqueueFill(pattern: pattern, destination: rig.destinationIOVA(dst), length: size)
                        case .null: _ = try rig.queue.enqueueNull()
                        }
                    } catch {
                        fail("channel \(rig.channel.index): enqueue failed: \(error.message)")
                        break
                    }
                    ops.append(PendingOp(kind: kind, source: src, destination: dst, length: size, pattern: pattern))
                    cursor = dst + size
                }
                do throws(DriverError) { try rig.queue.submit() } catch { fail("channel \(rig.channel.index): submit failed: \(error.message)") }
                pending[c] = ops
            }
            for (c, rig) in rigs.enumerated() {
                let d = rig.drain(timeout: .seconds(5))
                if d.timedOut { fail("channel \(rig.channel.index): \(rig.queue.outstanding) ops did not complete within 5 s (channel \(rig.channel.state))") }
                if d.failed > 0 {
                    fail("channel \(rig.channel.index): \(d.failed) op\(d.failed == 1 ? "" : "s") failed: \(Probe.faultText(rig))")
                }
                r.batches += 1
                var cursor = 0
                for op in pending[c] {
                    r.ops += 1
                    switch op.kind {
                    case .copy: r.copies += 1
                    case .fill: r.fills += 1
                    case .null: r.nulls += 1; continue
                    }
                    if let m = rig.firstNot(canary, in: cursor..<op.destination) {
                        fail("channel \(rig.channel.index): byte \(m) between ops was overwritten (0x\(String(rig.destinationBytes[m], radix: 16)))")
                    }
                    let bad: Int? = op.kind == .copy
                        ? rig.firstMismatch(destination: op.destination, source: op.source, count: op.length)
                        : rig.firstFillMismatch(destination: op.destination, pattern: op.pattern, count: op.length)
                    if let bad {
                        fail("channel \(rig.channel.index): byte \(bad) of a \(op.length)-byte \(op.kind == .copy ? "copy" : "fill") (source +\(op.source), destination +\(op.destination)) is wrong")
                    }
                    r.bytesChecked += op.destination - cursor + op.length
                    cursor = op.destination + op.length
                }
                if let m = rig.firstNot(canary, in: cursor..<min(rig.length, cursor + 4096)) {
                    fail("channel \(rig.channel.index): byte \(m) after the last op was overwritten")
                }
                r.bytesChecked += min(rig.length, cursor + 4096) - cursor
            }
            let elapsed = ContinuousClock.now - start
            progress(min(1, microseconds(elapsed) / (seconds * 1e6)))
        }
        r.seconds = microseconds(ContinuousClock.now - start) / 1e6
        r.passed = r.errors.isEmpty && r.ops > 0
        return r
    }

    // MARK: - error path

    /// A copy from an unmapped IOVA must fail exactly once, leave its destination alone and
    /// raise no completion interrupt naming it; the next copies must work.
    static func errorPath(_ rig: ChannelRig, unmapped: UInt64) -> CheckResult {
        Probe.timed("error-path") {
            rig.clearDestination(canary)
            _ = rig.drain(timeout: .seconds(1))
            let failedBefore = rig.queue.failedCount
            do throws(DriverError) {
                _ = try rig.queue.enqueueCopy(source: unmapped, destination: rig.destinationIOVA(0), length: 4096)
                try rig.queue.submit()
            } catch { return (false, "enqueue of the bad copy failed: \(error.message)") }
            let bad = rig.drain(timeout: .seconds(5))
            if bad.timedOut { return (false, "the copy from unmapped IOVA 0x\(String(unmapped, radix: 16)) neither completed nor failed within 5 s: the channel hangs (\(rig.channel.state))") }
            guard bad.failed == 1, bad.completed == 0, rig.queue.failedCount == failedBefore + 1 else {
                return (false, "the copy from unmapped IOVA 0x\(String(unmapped, radix: 16)) was reported \(bad.failed) times failed and \(bad.completed) times completed; expected failed once")
            }
            let fault = rig.queue.lastFault
            if let m = rig.firstNot(canary, in: 0..<4097) {
                return (false, "the failed copy wrote its destination (byte \(m))")
            }
            if let d = fault?.descriptor, d != 0, rig.channel.lastInterruptDescriptor == d {
                return (false, "a completion interrupt reported the failed descriptor 0x\(String(d, radix: 16)) as completed")
            }
            // Recovery: two good copies, checked.
            rig.fillSource(seed: 77)
            do throws(DriverError) {
                _ = try rig.queue.enqueueCopy(source: rig.sourceIOVA(0), destination: rig.destinationIOVA(8192), length: 4096)
                try rig.queue.submit()
                _ = try rig.queue.enqueueCopy(source: rig.sourceIOVA(4096), destination: rig.destinationIOVA(16384), length: 4096)
                try rig.queue.submit()
            } catch { return (false, "the channel did not recover: \(error.message)") }
            let good = rig.drain(timeout: .seconds(5))
            guard !good.timedOut, good.failed == 0, good.completed == 2 else {
                return (false, "the channel did not recover: after the error \(good.completed) of 2 copies completed, \(good.failed) failed")
            }
            if rig.firstMismatch(destination: 8192, source: 0, count: 4096) != nil
                || rig.firstMismatch(destination: 16384, source: 4096, count: 4096) != nil {
                return (false, "the channel recovered but copied wrong data")
            }
            let cause = fault.map { $0.causes.joined(separator: ", ") } ?? "no cause decoded"
            return (true, "channel \(rig.channel.index): reported once (\(cause)), destination untouched, no completion interrupt for it, recovered")
        }
    }

    // MARK: - init/remove

    static func initRemoveCycles(_ target: EngineTarget, _ targets: EngineTargets, count: Int,
                                 progress: (Double) -> Void) -> Cycles {
        var errors: [String] = []
        var done = 0
        let start = ContinuousClock.now
        for i in 0..<count {
            progress(Double(i) / Double(max(1, count)))
            do throws(DriverError) {
                let session = try targets.open(target)
                defer { session.close() }
                var rigs: [ChannelRig] = []
                defer { for r in rigs { r.free() } }
                for _ in 0..<session.channelCount { rigs.append(try ChannelRig(session: session, length: 8192, ringSize: 16)) }
                for rig in rigs {
                    rig.fillSource(seed: UInt64(i))
                    rig.clearDestination(canary)
                    _ = try rig.queue.enqueueCopy(source: rig.sourceIOVA(0), destination: rig.destinationIOVA(0), length: 4096)
                    try rig.queue.submit()
                    let d = rig.drain(timeout: .seconds(5))
                    guard !d.timedOut, d.failed == 0, rig.firstMismatch(destination: 0, source: 0, count: 4096) == nil else {
                        throw DriverError(.selfTestFailed, "cycle \(i + 1): the copy on channel \(rig.channel.index) failed")
                    }
                }
                done += 1
            } catch {
                if errors.count < 10 { errors.append(error.message) }
            }
        }
        let total = microseconds(ContinuousClock.now - start)
        return Cycles(count: count, completed: done, averageMicroseconds: count == 0 ? 0 : total / Double(count),
                      errors: errors, passed: errors.isEmpty && done == count)
    }

    // MARK: - text

    static func text(_ doc: Document) -> String {
        var out = [doc.headline, "seed \(doc.seed), \(doc.seconds) s of random ops per engine", ""]
        for e in doc.engines {
            out.append("\(e.engine)\(e.name.map { ": \($0)" } ?? ""), \(e.channels) channel\(e.channels == 1 ? "" : "s")")
            if let err = e.openError { out.append("  open FAILED: \(err)") }
            if let r = e.randomOps {
                out.append("  random ops: \(r.ops) ops (\(r.copies) copies, \(r.fills) fills, \(r.nulls) NULL) in \(r.batches) batches, \(String(format: "%.1f", r.seconds)) s, \(approximateBytes(r.bytesChecked)) checked byte by byte: \(r.passed ? "ok" : "FAILED")")
                for err in r.errors { out.append("    \(err)") }
            }
            for c in e.errorPath {
                out.append("  error path: \(c.passed ? "ok, " + c.detail : "FAILED: " + c.detail)")
            }
            if let c = e.cycles {
                out.append("  init/remove: \(c.completed) of \(c.count) cycles, \(formatDuration(.microseconds(Int64(c.averageMicroseconds)))) each: \(c.passed ? "ok" : "FAILED")")
                for err in c.errors { out.append("    \(err)") }
            }
            out.append("  \(e.passed ? "PASS" : "FAIL")")
            out.append("")
        }
        let failed = doc.engines.filter { !$0.passed }.count
        out.append(doc.passed ? "Self-test passed on \(doc.engines.count) engine\(doc.engines.count == 1 ? "" : "s")."
                              : "Self-test FAILED on \(failed) of \(doc.engines.count) engine\(doc.engines.count == 1 ? "" : "s").")
        return out.joined(separator: "\n")
    }
}
