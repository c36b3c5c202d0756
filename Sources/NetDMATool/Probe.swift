import ArgumentParser
import Foundation
import NetDMAEngines
import Platform

#if canImport(Glibc)
import Glibc
#endif

/// One check's outcome (also the JSON schema).
struct CheckResult: Codable, Equatable {
    /// "bring-up", "null", "copy", "fill", "interrupt".
    var name: String
    var passed: Bool
    /// True when the check did not apply (no fill, no interrupt vector); `passed` is then true.
    var skipped: Bool = false
    /// What was done, or what went wrong and what to do.
    var detail: String
    var microseconds: Double

    var summary: String {
        if skipped { return "\(name) skipped (\(detail))" }
        return passed ? "\(name) ok" : "\(name) FAILED: \(detail)"
    }
}

/// `netdma probe [BDF...] [--json]`: bring every engine up and check each channel.
struct Probe: ResultCommand {
    static let configuration = CommandConfiguration(
        abstract: "Open each engine bound to vfio-pci (or the built-in model), show its identity and capabilities, and check every channel.",
        discussion: """
            Per engine: identity and capability registers (CBDMA: CBVER, CHANCNT, XFERCAP, DMACAPABILITY; \
            DSA: VERSION, GENCAP, WQCAP, GRPCAP, ENGCAP, OPCAP, and the group/engine/WQ configuration chosen), \
            bring-up (reset and a NULL-descriptor self-check on every channel). Per channel: a NULL descriptor, \
            copy and fill self-checks (every byte compared), an interrupt check, and the CPU and NUMA node used. \
            The exit status is 0 only when every engine passed. Without engines bound to vfio-pci it runs on \
            the built-in device model and says so in the first line.
            """)

    @OptionGroup var engines: EngineOptions

    @Flag(help: "Print JSON instead of text.")
    var json = false

    /// One channel's checks.
    struct ChannelReport: Codable, Equatable {
        var index: Int
        var cpu: Int?
        var numaNode: Int?
        var checks: [CheckResult]
        var passed: Bool
    }

    /// One engine's report.
    struct EngineReport: Codable, Equatable {
        /// The PCI address, or "model:<family>/<profile>".
        var engine: String
        var identity: EngineInfo?
        var bringUp: CheckResult
        var channels: [ChannelReport]
        var passed: Bool
    }

    /// The JSON document.
    struct Document: Codable, Equatable {
        /// "model" or "vfio".
        var source: String
        /// The first line of the text output.
        var headline: String
        var engines: [EngineReport]
        var passed: Bool
    }

    func execute(progress: ProgressBar?) throws -> CommandResult {
        let targets = try engines.targets()
        var reports: [EngineReport] = []
        for (i, t) in targets.targets.enumerated() {
            progress?.update(Double(i) / Double(targets.targets.count), "probing engine \(i + 1) of \(targets.targets.count)")
            reports.append(try Probe.probe(t, targets))
        }
        let doc = Document(source: targets.usesModel ? "model" : "vfio", headline: targets.headline, engines: reports,
                           passed: !reports.isEmpty && reports.allSatisfy(\.passed))
        return CommandResult(text: json ? try encodeJSON(doc) : Probe.text(doc), exitCode: doc.passed ? 0 : 1)
    }

    /// Probes one engine. Setup problems (permissions, IOMMU, binding, busy) are thrown; engine
    /// failures are reported.
    static func probe(_ target: EngineTarget, _ targets: EngineTargets) throws(DriverError) -> EngineReport {
        let name = target.label
        let started = ContinuousClock.now
        let session: EngineSession
        do {
            session = try targets.open(target)
        } catch {
            if error.isSetupProblem { throw error }
            let bringUp = CheckResult(name: "bring-up", passed: false, detail: error.message,
                                      microseconds: microseconds(ContinuousClock.now - started))
            return EngineReport(engine: name, identity: nil, bringUp: bringUp, channels: [], passed: false)
        }
        defer { session.close() }
        let bringUp = CheckResult(
            name: "bring-up", passed: true,
            detail: "reset and NULL self-check on \(session.channelCount) channel\(session.channelCount == 1 ? "" : "s") in \(formatDuration(session.bringUpTime))",
            microseconds: microseconds(session.bringUpTime))
        // Allocate every channel first, so that each hardware channel is checked once.
        var rigs: [ChannelRig] = []
        var channels: [ChannelReport] = []
        for _ in 0..<session.channelCount {
            do {
                rigs.append(try ChannelRig(session: session, length: 160 * 1024))
            } catch {
                channels.append(ChannelReport(index: -1, cpu: nil, numaNode: nil,
                                              checks: [CheckResult(name: "allocate", passed: false, detail: error.message, microseconds: 0)],
                                              passed: false))
            }
        }
        for rig in rigs {
            channels.append(probeChannel(rig, session))
            rig.free()
        }
        channels.sort { $0.index < $1.index }
        return EngineReport(engine: session.label, identity: session.identity, bringUp: bringUp, channels: channels,
                            passed: channels.allSatisfy(\.passed) && !channels.isEmpty)
    }

    /// Copies of these sizes at these (source, destination) offsets: odd sizes and misaligned
    /// addresses on purpose.
    static let copies: [(size: Int, source: Int, destination: Int)] = [(1, 0, 0), (64, 64, 128), (4093, 4099, 8195), (65536, 16384, 81920)]
    static let fillPattern: UInt64 = 0x0123_4567_89AB_CDEF
    static let timeout: Duration = .seconds(5)

    static func probeChannel(_ rig: ChannelRig, _ session: EngineSession) -> ChannelReport {
        var checks: [CheckResult] = []
        checks.append(nullCheck(rig))
        session.injectCopyFault?()
        checks.append(copyCheck(rig))
        checks.append(fillCheck(rig))
        checks.append(interruptCheck(rig))
        let cpu = rig.channel.cpu
        return ChannelReport(index: rig.channel.index, cpu: cpu, numaNode: NUMA.node(ofCPU: cpu), checks: checks,
                             passed: checks.allSatisfy(\.passed))
    }

    static func timed(_ name: String, _ body: () -> (Bool, String)) -> CheckResult {
        let t0 = ContinuousClock.now
        let (ok, detail) = body()
        return CheckResult(name: name, passed: ok, detail: detail, microseconds: microseconds(ContinuousClock.now - t0))
    }

    static func faultText(_ rig: ChannelRig) -> String {
        let f = rig.queue.lastFault ?? rig.channel.fault
        return f.map { "the engine reported \($0)" } ?? "the engine reported an error"
    }

    static func nullCheck(_ rig: ChannelRig) -> CheckResult {
        timed("null") {
            do throws(DriverError) {
                _ = try rig.queue.enqueueNull()
                try rig.queue.submit()
            } catch { return (false, error.message) }
            let r = rig.drain(timeout: timeout)
            if r.timedOut { return (false, "the NULL descriptor did not complete within \(timeout) (channel \(rig.channel.state))") }
            if r.failed > 0 { return (false, faultText(rig)) }
            return (true, "completed")
        }
    }

    static func copyCheck(_ rig: ChannelRig) -> CheckResult {
        timed("copy") {
            rig.fillSource(seed: 0x5EED)
            rig.clearDestination(0xA5)
            do throws(DriverError) {
                for c in copies {
                    _ = try rig.queue.enqueueCopy(source: rig.sourceIOVA(c.source), destination: rig.destinationIOVA(c.destination), length: c.size)
                }
                try rig.queue.submit()
            } catch { return (false, error.message) }
            let r = rig.drain(timeout: timeout)
            if r.timedOut { return (false, "\(copies.count) copies did not complete within \(timeout) (channel \(rig.channel.state))") }
            if r.failed > 0 { return (false, faultText(rig)) }
            var bytes = 0
            for c in copies {
                if let m = rig.firstMismatch(destination: c.destination, source: c.source, count: c.size) {
                    return (false, "byte \(m) of the \(ByteCount.format(c.size)) copy is 0x\(String(rig.destinationBytes[c.destination + m], radix: 16)), expected 0x\(String(rig.sourceBytes[c.source + m], radix: 16)): the engine corrupts data")
                }
                for g in [c.destination - 1, c.destination + c.size] where g >= 0 && g < rig.length {
                    if rig.destinationBytes[g] != 0xA5 {
                        return (false, "the \(ByteCount.format(c.size)) copy wrote outside its destination (byte \(g - c.destination))")
                    }
                }
                bytes += c.size
            }
            return (true, "\(copies.count) copies, \(bytes) bytes checked")
        }
    }

    static func fillCheck(_ rig: ChannelRig) -> CheckResult {
        guard rig.channel.providerFlags.contains(.fill) else {
            return CheckResult(name: "fill", passed: true, skipped: true, detail: "the engine has no fill operation", microseconds: 0)
        }
        return timed("fill") {
            rig.clearDestination(0xA5)
            let at = 4096, count = 3000
            do throws(DriverError) {
                _ = try rig.queue.enqueueFill(pattern: fillPattern, destination: rig.destinationIOVA(at), length: count)
                try rig.queue.submit()
            } catch { return (false, error.message) }
            let r = rig.drain(timeout: timeout)
            if r.timedOut { return (false, "the fill did not complete within \(timeout)") }
            if r.failed > 0 { return (false, faultText(rig)) }
            if let m = rig.firstFillMismatch(destination: at, pattern: fillPattern, count: count) {
                return (false, "byte \(m) of the fill is 0x\(String(rig.destinationBytes[at + m], radix: 16))")
            }
            if rig.destinationBytes[at - 1] != 0xA5 || rig.destinationBytes[at + count] != 0xA5 {
                return (false, "the fill wrote outside its destination")
            }
            return (true, "\(count) bytes checked")
        }
    }

    static func interruptCheck(_ rig: ChannelRig) -> CheckResult {
        guard rig.hasInterrupts else {
            return CheckResult(name: "interrupt", passed: true, skipped: true, detail: "the channel has no interrupt vector; it is polled", microseconds: 0)
        }
        return timed("interrupt") {
            let before = rig.channel.interruptGeneration
            do throws(DriverError) {
                _ = try rig.queue.enqueueCopy(source: rig.sourceIOVA(0), destination: rig.destinationIOVA(0), length: 64)
                try rig.queue.submit()
                try rig.waitForInterrupt(after: before, timeout: timeout)
            } catch {
                _ = rig.drain(timeout: timeout)
                return (false, error.message)
            }
            let r = rig.drain(timeout: timeout)
            if r.failed > 0 || r.timedOut { return (false, faultText(rig)) }

            return (true, "delivered to the DPC on CPU \(rig.channel.cpu)")
        }
    }

    static func text(_ doc: Document) -> String {
        var out = [doc.headline, ""]
        for e in doc.engines {
            if let id = e.identity {
                out.append("\(e.engine): \(id.name), NetDMA \(id.netdmaVersion), \(id.channels) channel\(id.channels == 1 ? "" : "s"), max transfer \(ByteCount.format(id.maximumTransferSize))")
                out += columns(id.registers.map { ["  " + $0.name, $0.value, $0.meaning] }).map { "  " + $0 }
                if let c = id.dsaConfiguration { out.append("  configuration: \(c)") }
            } else {
                out.append("\(e.engine):")
            }
            out.append("  \(e.bringUp.summary)\(e.bringUp.passed ? " (\(e.bringUp.detail))" : "")")
            for c in e.channels {
                let place = c.cpu.map { cpu in "CPU \(cpu)" + (c.numaNode.map { ", node \($0)" } ?? "") } ?? "not allocated"
                out.append("  channel \(c.index) (\(place)): " + c.checks.map(\.summary).joined(separator: ", "))
            }
            out.append("  \(e.passed ? "PASS" : "FAIL")")
            out.append("")
        }
        let failed = doc.engines.filter { !$0.passed }.count
        let channels = doc.engines.reduce(0) { $0 + $1.channels.count }
        out.append(doc.passed
            ? "All \(doc.engines.count) engine\(doc.engines.count == 1 ? "" : "s") (\(channels) channel\(channels == 1 ? "" : "s")) passed."
            : "\(failed) of \(doc.engines.count) engine\(doc.engines.count == 1 ? "" : "s") failed.")
        return out.joined(separator: "\n")
    }
}
