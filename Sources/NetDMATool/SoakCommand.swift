import ArgumentParser
import Foundation
import Hardware

/// `netdma soak --seconds N [--json]`: random traffic and faults on the device models, with
/// the NetDMA accounting invariant checked throughout.
struct SoakCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "soak",
        abstract: "Soak the driver stack on the CBDMA and DSA device models with random ops, faults, aborts, resets and power cycles.",
        discussion: """
            Every op must be reported exactly once, successful ops must be byte-exact, failed ops \
            must be explained and name their cause, and nothing (DMA memory, IOMMU mappings, file \
            descriptors, threads) may leak. Exits with status 1 on any violation. Needs no hardware.
            """)

    @Option(help: "Seconds of traffic (draining and teardown come after).")
    var seconds: Double = 10

    @Option(help: "Client threads.")
    var clients: Int = 4

    @Option(help: "Seed of every random choice (the same seed repeats the same choices).")
    var seed: UInt64 = 1

    @Option(help: "CBDMA model functions, one per generation named, comma-separated (cb1, tbg, snb, bdx, skx, bwd, bdxde, icx), or 'none'.")
    var ioat: String = "icx,skx"

    @Option(help: "DSA work queues (0: no DSA model).")
    var dsaWorkQueues: Int = 4

    @Option(help: "Mean milliseconds between power cycles; 0 turns them off.")
    var powerCycleMs: Int = 150

    @Option(help: "One control event (suspend, abort, reset, fault, stall, bad op) per this many batches.")
    var controlEvery: Int = 12

    @Option(help: "Comma-separated kinds of trouble to leave out: \(SoakEvent.allCases.map(\.rawValue).joined(separator: ", ")).")
    var skip: String = ""

    @Flag(help: "Print the totals as JSON.")
    var json = false

    func validate() throws {
        guard seconds > 0, seconds <= 86_400 else { throw ValidationError("--seconds must be more than 0 and at most 86400, got \(seconds).") }
        guard (1...64).contains(clients) else { throw ValidationError("--clients must be from 1 to 64, got \(clients).") }
        guard (0...8).contains(dsaWorkQueues) else { throw ValidationError("--dsa-work-queues must be from 0 to 8, got \(dsaWorkQueues).") }
        guard powerCycleMs >= 0 else { throw ValidationError("--power-cycle-ms must not be negative, got \(powerCycleMs).") }
        guard controlEvery >= 1 else { throw ValidationError("--control-every must be at least 1, got \(controlEvery).") }
        for p in ioatProfiles where Hardware.IOAT.profile(named: p) == nil {
            throw ValidationError("--ioat '\(p)' is not a CBDMA model generation; use \(Hardware.IOAT.profiles.map(\.name).joined(separator: ", ")) or none.")
        }
        for k in skipped where SoakEvent(rawValue: k) == nil {
            throw ValidationError("--skip '\(k)' is not a kind of trouble; use \(SoakEvent.allCases.map(\.rawValue).joined(separator: ", ")).")
        }
        guard !ioatProfiles.isEmpty || dsaWorkQueues > 0 else { throw ValidationError("Nothing to soak: --ioat none and --dsa-work-queues 0.") }
    }

    private var ioatProfiles: [String] { ioat == "none" ? [] : ioat.split(separator: ",").map { String($0) } }
    private var skipped: [String] { skip.split(separator: ",").map { String($0) } }

    var options: SoakOptions {
        var o = SoakOptions()
        o.seconds = seconds
        o.clients = clients
        o.seed = seed
        o.ioatProfiles = ioatProfiles
        o.dsaWorkQueues = dsaWorkQueues
        o.powerCycleMilliseconds = powerCycleMs
        o.controlEvery = controlEvery
        o.skip = Set(skipped.compactMap(SoakEvent.init(rawValue:)))
        return o
    }

    /// The report (text or JSON) and whether the soak passed.
    func output(processCensus: Bool = true) throws -> (text: String, passed: Bool) {
        var o = options
        o.processCensus = processCensus
        let totals = Soak(options: o).run()
        if json {
            let encoder = JSONEncoder()
            encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
            var text = String(decoding: try encoder.encode(SoakDocument(totals)), as: UTF8.self)
            text += "\n"
            return (text, totals.passed)
        }
        return (totals.report + "\n", totals.passed)
    }

    func run() throws {
        let (text, passed) = try output()
        print(text, terminator: "")
        if !passed { throw ExitCode(1) }
    }
}

/// The JSON document of `netdma soak --json`: the totals and the verdict.
struct SoakDocument: Codable, Equatable {
    var totals: SoakTotals
    var passed: Bool
    init(_ totals: SoakTotals) {
        self.totals = totals
        passed = totals.passed
    }
}
