import Foundation
import Hardware
import NetDMAEngines
import Platform
import Testing
@testable import NetDMATool

/// Runs a `probe`/`selftest`/`bench` command line in process: its text and exit status.
func execute(_ arguments: [String]) throws -> CommandResult {
    let command = try NetDMATool.parseAsRoot(arguments)
    let c = try #require(command as? any ResultCommand, "\(arguments.first ?? "") is not a ResultCommand")
    return try c.execute(progress: nil)
}

/// A fake sysfs tree with no DMA engine: the commands fall back to the built-in model.
func emptyMachine() throws -> FakeSysfsTree {
    let tree = try FakeSysfsTree()
    try tree.addDevice(PCIAddress("0000:00:03.0")!, id: PCIID(vendor: 0x1af4, device: 0x1041), driver: "virtio-pci")
    return tree
}

func decode<T: Decodable>(_ type: T.Type, _ text: String) throws -> T {
    try JSONDecoder().decode(type, from: Data(text.utf8))
}

func jsonObject(_ text: String) throws -> [String: Any] {
    try #require(try JSONSerialization.jsonObject(with: Data(text.utf8)) as? [String: Any])
}

@Suite struct ProbeTests {
    @Test func runsOnTheModelWhenNoEngineIsBoundAndSaysSoFirst() throws {
        let tree = try emptyMachine()
        let r = try execute(["probe"] + roots(tree))
        #expect(r.exitCode == 0, "\(r.text)")
        let lines = r.text.split(separator: "\n", omittingEmptySubsequences: false)
        #expect(lines.first?.hasPrefix("Running on the built-in device model (MockIOATDevice, CBDMA 3.4 'icx'") == true)
        #expect(lines.first?.contains("this machine has no CBDMA or DSA engine") == true)
        for register in ["CBVER", "CHANCNT", "XFERCAP", "DMACAPABILITY"] {
            #expect(r.text.contains(register), "identity register \(register) missing")
        }
        let channel = try #require(lines.first { $0.hasPrefix("  channel 0 (CPU ") })
        #expect(channel.hasSuffix("null ok, copy ok, fill ok, interrupt ok"))
        #expect(r.text.contains("bring-up ok"))
        #expect(lines.last == "All 1 engine (1 channel) passed.")
    }

    @Test func jsonSchemaOnTheCBDMAModel() throws {
        let tree = try emptyMachine()
        let r = try execute(["probe", "--json"] + roots(tree))
        #expect(r.exitCode == 0)
        let object = try jsonObject(r.text)
        #expect(Set(object.keys) == ["source", "headline", "engines", "passed"])
        #expect(object["source"] as? String == "model")
        #expect(object["passed"] as? Bool == true)
        let engine = try #require((object["engines"] as? [[String: Any]])?.first)
        #expect(Set(engine.keys) == ["engine", "identity", "bringUp", "channels", "passed"])
        let doc = try decode(Probe.Document.self, r.text)
        let e = try #require(doc.engines.first)
        #expect(e.engine == "model:ioat/icx")
        let id = try #require(e.identity)
        #expect(id.family == "ioat" && id.generation == "CBDMA 3.4")
        #expect(id.registers.map(\.name) == ["CBVER", "CHANCNT", "XFERCAP", "DMACAPABILITY"])
        #expect(id.registers[0].value == "0x34")
        #expect(id.registers[3].meaning.contains("block fill"))
        #expect(id.maximumTransferSize == 1 << 30)
        #expect(id.fill && id.interrupts)
        #expect(id.dsaConfiguration == nil)
        #expect(e.bringUp.passed && e.bringUp.name == "bring-up")
        #expect(e.channels.count == id.channels)
        for c in e.channels {
            #expect(c.checks.map(\.name) == ["null", "copy", "fill", "interrupt"])
            #expect(c.checks.allSatisfy { $0.passed && !$0.skipped })
            let cpu = try #require(c.cpu)
            #expect(CPUSet.allowed.contains(cpu))
            #expect(c.numaNode == NUMA.node(ofCPU: cpu))
        }
    }

    @Test func dsaModelShowsCapabilitiesAndTheConfigurationChosen() throws {
        let tree = try emptyMachine()
        let r = try execute(["probe", "--model", "dsa", "--json"] + roots(tree))
        #expect(r.exitCode == 0)
        let doc = try decode(Probe.Document.self, r.text)
        #expect(doc.headline.contains("MockDSADevice") && doc.headline.contains("--model"))
        let e = try #require(doc.engines.first)
        let id = try #require(e.identity)
        #expect(id.registers.map(\.name) == ["VERSION", "GENCAP", "WQCAP", "GRPCAP", "ENGCAP", "OPCAP"])
        #expect(id.registers[0].value == "0x100")
        let opcap = id.registers[5].meaning
        #expect(opcap.contains("memmove") && opcap.contains("fill") && opcap.contains("batch") && !opcap.contains("translation fetch"))
        let layout = try #require(id.dsaConfiguration)
        #expect(layout.contains("4 dedicated WQs"))
        // Every WQ is checked once.
        #expect(e.channels.map(\.index) == [0, 1, 2, 3])
        #expect(e.channels.allSatisfy { $0.passed })
        let text = try execute(["probe", "--model", "dsa"] + roots(tree)).text
        #expect(text.contains("configuration: DSA 0x100: 4 dedicated WQs"))
    }

    @Test(arguments: IOAT.profiles.map(\.name))
    func everyCBDMAGenerationPasses(_ profile: String) throws {
        let tree = try emptyMachine()
        let r = try execute(["probe", "--generation", profile, "--json"] + roots(tree))
        let doc = try decode(Probe.Document.self, r.text)
        #expect(r.exitCode == 0 && doc.passed, "\(profile): \(r.text)")
        let p = IOAT.profile(named: profile)!
        let e = try #require(doc.engines.first)
        #expect(e.channels.count == p.channelsPerFunction)
        let fill = try #require(e.channels.first?.checks.first { $0.name == "fill" })
        #expect(fill.skipped == !p.capabilities.contains(.blockFill))
    }

    @Test func injectedCopyFaultFailsWithNonZeroExit() throws {
        let tree = try emptyMachine()
        let r = try execute(["probe", "--inject-fault", "copy", "--json"] + roots(tree))
        #expect(r.exitCode != 0)
        let doc = try decode(Probe.Document.self, r.text)
        #expect(!doc.passed)
        let copy = try #require(doc.engines.first?.channels.first?.checks.first { $0.name == "copy" })
        #expect(!copy.passed && copy.detail.contains("read data error (RDERR)"))
        let text = try execute(["probe", "--inject-fault", "copy"] + roots(tree)).text
        #expect(text.contains("copy FAILED") && text.hasSuffix("1 of 1 engine failed."))
    }

    @Test func injectedDSACopyFaultIsReportedWithItsStatus() throws {
        let tree = try emptyMachine()
        let r = try execute(["probe", "--model", "dsa", "--inject-fault", "copy", "--json"] + roots(tree))
        #expect(r.exitCode == 1)
        let doc = try decode(Probe.Document.self, r.text)
        let failed = doc.engines[0].channels.flatMap(\.checks).filter { !$0.passed }
        #expect(!failed.isEmpty && failed.allSatisfy { $0.name == "copy" })
        #expect(failed[0].detail.contains("PAGE_FAULT"))
    }

    @Test(arguments: ["ioat", "dsa"])
    func bringUpFailureIsAnEngineFailure(_ model: String) throws {
        let tree = try emptyMachine()
        let r = try execute(["probe", "--model", model, "--inject-fault", "bring-up", "--json"] + roots(tree))
        #expect(r.exitCode == 1)
        let e = try #require(try decode(Probe.Document.self, r.text).engines.first)
        #expect(!e.passed && !e.bringUp.passed && e.identity == nil && e.channels.isEmpty)
        #expect(e.bringUp.detail.contains(model == "ioat" ? "self-check" : "function-level reset"))
    }

    @Test func enginesOnOtherDriversAreNamedInTheHeadline() throws {
        let tree = try FakeSysfsTree()
        try tree.addDevice(PCIAddress("0000:00:04.0")!, id: PCIID(vendor: 0x8086, device: 0x0B00), driver: "ioatdma", iommuGroup: 5, numaNode: 0)
        let r = try execute(["probe"] + roots(tree))
        let first = try #require(r.text.split(separator: "\n").first)
        #expect(first.contains("built-in device model"))
        #expect(first.contains("no engine is bound to vfio-pci (found 0000:00:04.0 (ioatdma); `sudo netdma bind BDF` to use one)"))
        #expect(r.exitCode == 0)
    }

    @Test func namedEngineOnTheWrongDriverIsAOneLineErrorWithTheFix() throws {
        let tree = try FakeSysfsTree()
        try tree.addDevice(PCIAddress("0000:00:04.0")!, id: PCIID(vendor: 0x8086, device: 0x0B00), driver: "ioatdma", iommuGroup: 5)
        for command in ["probe", "selftest", "bench"] {
            do {
                _ = try execute([command, "0000:00:04.0"] + roots(tree))
                Issue.record("\(command) on an engine bound to ioatdma must fail")
            } catch let e as DriverError {
                #expect(e.code == .wrongDriver)
                #expect(e.message.contains("Run `sudo netdma bind 0000:00:04.0`"))
                #expect(!e.description.contains("\n"))
            }
        }
    }

    @Test func noIOMMUGroupIsAOneLineErrorWithTheFix() throws {
        let tree = try FakeSysfsTree()
        try tree.addDevice(PCIAddress("0000:00:04.0")!, id: PCIID(vendor: 0x8086, device: 0x0B00), driver: "vfio-pci")
        do {
            _ = try execute(["probe", "0000:00:04.0"] + roots(tree))
            Issue.record("probe without an IOMMU group must fail")
        } catch let e as DriverError {
            #expect(e.code == .noIOMMU && e.message.contains("intel_iommu=on"))
        }
    }

    @Test func boundEngineWithoutVFIOModulesStopsWithTheFix() throws {
        // An engine bound to vfio-pci is used by default (no model); here /dev/vfio/vfio is missing.
        let tree = try FakeSysfsTree()
        try tree.addDevice(PCIAddress("0000:00:04.0")!, id: PCIID(vendor: 0x8086, device: 0x0B00), driver: "vfio-pci",
                           iommuGroup: 5, vfioNode: true)
        do {
            _ = try execute(["probe"] + roots(tree))
            Issue.record("probe must not fall back to the model while an engine is bound")
        } catch let e as DriverError {
            #expect(e.code == .notFound && e.message.contains("modprobe vfio-pci"))
        }
        // --model still runs on the model.
        #expect(try execute(["probe", "--model", "ioat"] + roots(tree)).exitCode == 0)
    }

    @Test func faultInjectionIsRefusedOnHardware() throws {
        let tree = try FakeSysfsTree()
        try tree.addDevice(PCIAddress("0000:00:04.0")!, id: PCIID(vendor: 0x8086, device: 0x0B00), driver: "vfio-pci",
                           iommuGroup: 5, vfioNode: true)
        do {
            _ = try execute(["probe", "--inject-fault", "copy"] + roots(tree))
            Issue.record("--inject-fault must not reach a real engine")
        } catch let e as DriverError {
            #expect(e.code == .invalidArgument && e.message.contains("--model"))
        }
    }

    // The real machine, as `Scripts/run` sees it: without an engine bound to vfio-pci the
    // commands run on the model.
    @Test(.enabled(if: !PCIDiscovery().engines().contains { $0.driver == "vfio-pci" }, "an engine is bound to vfio-pci here"))
    func thisMachineFallsBackToTheModel() throws {
        let r = try execute(["probe"])
        #expect(r.exitCode == 0)
        #expect(r.text.hasPrefix("Running on the built-in device model"))
    }

    @Test func badCombinationsAreRejectedAtParsing() throws {
        #expect(throws: (any Error).self) { try NetDMATool.parseAsRoot(["probe", "--model", "dsa", "--generation", "icx"]) }
        #expect(throws: (any Error).self) { try NetDMATool.parseAsRoot(["probe", "--generation", "nosuch"]) }
        #expect(throws: (any Error).self) { try NetDMATool.parseAsRoot(["probe", "0000:00:04.0", "--model", "ioat"]) }
        #expect(throws: (any Error).self) { try NetDMATool.parseAsRoot(["probe", "--model", "edu"]) }
        #expect(try NetDMATool.parseAsRoot(["probe", "--generation", "dsa2"]) is Probe)
    }
}

@Suite struct SelftestTests {
    @Test(arguments: ["ioat", "dsa"])
    func shortRunPassesAndChecksEverything(_ model: String) throws {
        let tree = try emptyMachine()
        let r = try execute(["selftest", "--model", model, "--seconds", "0.2", "--cycles", "2", "--seed", "42", "--json"] + roots(tree))
        #expect(r.exitCode == 0, "\(r.text)")
        let object = try jsonObject(r.text)
        #expect(Set(object.keys) == ["source", "headline", "seed", "seconds", "engines", "passed"])
        let doc = try decode(Selftest.Document.self, r.text)
        #expect(doc.seed == 42 && doc.passed && doc.source == "model")
        let e = try #require(doc.engines.first)
        let ops = try #require(e.randomOps)
        #expect(ops.passed && ops.errors.isEmpty)
        #expect(ops.ops == ops.copies + ops.fills + ops.nulls)
        #expect(ops.copies > 0 && ops.fills > 0 && ops.nulls > 0)
        #expect(ops.bytesChecked > 0 && ops.batches >= e.channels)
        #expect(e.errorPath.count == e.channels)
        for c in e.errorPath {
            #expect(c.passed && c.name == "error-path")
            #expect(c.detail.contains("reported once") && c.detail.contains("destination untouched") && c.detail.contains("recovered"))
        }
        let cycles = try #require(e.cycles)
        #expect(cycles.count == 2 && cycles.completed == 2 && cycles.passed)
    }

    @Test func cb1WithoutFillStillPasses() throws {
        let tree = try emptyMachine()
        let r = try execute(["selftest", "--generation", "cb1", "--seconds", "0.1", "--cycles", "1", "--json"] + roots(tree))
        let doc = try decode(Selftest.Document.self, r.text)
        #expect(r.exitCode == 0 && doc.passed)
        #expect(doc.engines[0].randomOps?.fills == 0)
        #expect(doc.engines[0].errorPath.count == 4)
    }

    @Test(arguments: ["ioat", "dsa"])
    func injectedCopyFaultFails(_ model: String) throws {
        let tree = try emptyMachine()
        let r = try execute(["selftest", "--model", model, "--seconds", "0.2", "--cycles", "1", "--inject-fault", "copy", "--json"] + roots(tree))
        #expect(r.exitCode == 1)
        let doc = try decode(Selftest.Document.self, r.text)
        let ops = try #require(doc.engines.first?.randomOps)
        #expect(!ops.passed && !ops.errors.isEmpty)
        let text = try execute(["selftest", "--model", model, "--seconds", "0.1", "--cycles", "0", "--inject-fault", "copy"] + roots(tree)).text
        #expect(text.contains("FAILED") && text.hasSuffix("Self-test FAILED on 1 of 1 engine."))
    }

    @Test func textNamesEachPhase() throws {
        let tree = try emptyMachine()
        let r = try execute(["selftest", "--seconds", "0.1", "--cycles", "1", "--seed", "7"] + roots(tree))
        #expect(r.exitCode == 0)
        let lines = r.text.split(separator: "\n").map(String.init)
        #expect(lines[0].hasPrefix("Running on the built-in device model"))
        #expect(lines[1] == "seed 7, 0.1 s of random ops per engine")
        #expect(lines.contains { $0.hasPrefix("  random ops: ") && $0.hasSuffix("checked byte by byte: ok") })
        #expect(lines.contains { $0.hasPrefix("  error path: ok, channel 0: reported once") })
        #expect(lines.contains { $0.hasPrefix("  init/remove: 1 of 1 cycles") })
        #expect(lines.last == "Self-test passed on 1 engine.")
    }

    @Test func badArgumentsAreRejected() {
        #expect(throws: (any Error).self) { try NetDMATool.parseAsRoot(["selftest", "--seconds", "0"]) }
        #expect(throws: (any Error).self) { try NetDMATool.parseAsRoot(["selftest", "--cycles", "-1"]) }
    }
}

@Suite struct BenchTests {
    @Test func quickJSONHasEveryFigureAndTheThreshold() throws {
        let tree = try emptyMachine()
        let r = try execute(["bench", "--quick", "--json"] + roots(tree))
        #expect(r.exitCode == 0, "\(r.text)")
        let object = try jsonObject(r.text)
        #expect(Set(object.keys) == ["source", "headline", "settings", "engines", "passed"])
        let doc = try decode(Bench.Document.self, r.text)
        #expect(doc.settings.sizes == Bench.quickSizes)
        #expect(doc.settings.batch == 32 && doc.settings.ring == 1024 && doc.settings.queueDepth == 1023)
        #expect(doc.settings.mode == .poll && doc.settings.tscHz > 0)
        let e = try #require(doc.engines.first)
        #expect(e.errors.isEmpty)
        #expect(e.rows.map(\.size) == Bench.quickSizes)
        for row in e.rows {
            #expect(row.verified)
            #expect(row.ops > 0 && row.opsPerSecond > 0 && row.gigabytesPerSecond > 0)
            #expect(row.cyclesPerOp > 0)
            #expect(row.latencySamples > 0 && row.latencyP50Nanoseconds > 0 && row.latencyP50Nanoseconds <= row.latencyP99Nanoseconds)
            #expect(row.memcpyGigabytesPerSecond > 0 && row.memcpyOpsPerSecond > 0)
            #expect(abs(row.engineOverMemcpy - row.gigabytesPerSecond / row.memcpyGigabytesPerSecond) < 1e-9)
            #expect(abs(row.gigabytesPerSecond - row.opsPerSecond * Double(row.size) / 1e9) < 1e-6 * max(1, row.gigabytesPerSecond))
        }
        #expect(e.copyThreshold == Bench.copyThreshold(e.rows))
    }

    @Test func tableStartsWithTheHeadlineAndEndsWithTheThreshold() throws {
        let tree = try emptyMachine()
        let r = try execute(["bench", "--quick", "--sizes", "64,4K"] + roots(tree))
        #expect(r.exitCode == 0)
        let lines = r.text.split(separator: "\n").map(String.init)
        #expect(lines[0].hasPrefix("Running on the built-in device model"))
        #expect(lines[1].hasPrefix("batch 32, ring 1024, queue depth 1023, poll mode"))
        let header = try #require(lines.firstIndex { $0.contains("SIZE") && $0.contains("OPS/S") })
        #expect(lines[header].contains("CYC/OP") && lines[header].contains("QD1 P50") && lines[header].contains("MEMCPY GB/S"))
        #expect(lines[header + 1].hasSuffix("ok") && lines[header + 1].trimmingCharacters(in: .whitespaces).hasPrefix("64 B"))
        #expect(lines[header + 2].trimmingCharacters(in: .whitespaces).hasPrefix("4 KiB"))
        #expect(lines[header + 3].hasPrefix("  copy threshold: "))
    }

    @Test func csvHasOneRowPerSize() throws {
        let tree = try emptyMachine()
        let r = try execute(["bench", "--quick", "--csv", "--model", "dsa", "--channels", "2", "--batch", "8", "--ring", "64"] + roots(tree))
        #expect(r.exitCode == 0)
        let lines = r.text.split(separator: "\n").map(String.init)
        #expect(lines[0] == Bench.csvHeader)
        #expect(lines.count == 1 + Bench.quickSizes.count)
        let columns = Bench.csvHeader.split(separator: ",").count
        for (line, size) in zip(lines.dropFirst(), Bench.quickSizes) {
            let f = line.split(separator: ",", omittingEmptySubsequences: false)
            #expect(f.count == columns)
            #expect(f[0] == "model:dsa/spr" && f[1] == "\(size)" && f[14] == "1")
            #expect((Double(f[3]) ?? 0) > 0)
        }
    }

    @Test(arguments: ["ioat", "dsa"])
    func interruptModeCompletesAndVerifies(_ model: String) throws {
        let tree = try emptyMachine()
        let r = try execute(["bench", "--model", model, "--quick", "--mode", "interrupt", "--sizes", "4K", "--latency-samples", "20", "--json"] + roots(tree))
        #expect(r.exitCode == 0, "\(r.text)")
        let doc = try decode(Bench.Document.self, r.text)
        #expect(doc.settings.mode == .interrupt)
        let row = try #require(doc.engines.first?.rows.first)
        #expect(row.verified && row.ops > 0 && row.latencySamples == 20)
    }

    @Test("on the model, the engine thread runs on the DPC CPU and the submitter elsewhere, and gets its CPUs back",
          arguments: ["ioat", "dsa"])
    func modelThreadPlacement(_ model: String) throws {
        let tree = try emptyMachine()
        let before = CPUSet.allowed
        let r = try execute(["bench", "--model", model, "--quick", "--mode", "interrupt", "--wait-spin", "0", "--sizes", "64",
                             "--latency-samples", "20", "--json"] + roots(tree))
        #expect(r.exitCode == 0, "\(r.text)")
        #expect(CPUSet.allowed == before, "the submitting thread's CPUs are restored")
        let doc = try decode(Bench.Document.self, r.text)
        #expect(doc.settings.waitSpinMicroseconds == 0)
        let e = try #require(doc.engines.first)
        #expect(e.rows.first?.verified == true)
        if before.count >= 2 {
            let p = try #require(e.placement)
            #expect(p.hasPrefix("model engine thread on CPU ") && p.contains("(the DPC CPU), submitter on CPUs"))
        } else {
            #expect(e.placement == nil)
        }
    }

    @Test("--channels N: N submitting threads, one per channel, each retires ops; the row is their sum",
          arguments: [(["--generation", "cb1"], 4), (["--model", "dsa"], 3)])
    func channelsEachDoWork(_ engine: [String], _ n: Int) throws {
        let tree = try emptyMachine()
        let r = try execute(["bench", "--quick", "--channels", "\(n)", "--json"] + engine + roots(tree))
        #expect(r.exitCode == 0, "\(r.text)")
        let doc = try decode(Bench.Document.self, r.text)
        let e = try #require(doc.engines.first)
        #expect(e.channels == n)
        for row in e.rows {
            #expect(row.verified)
            #expect(row.channelOps.count == n && row.channelOps.allSatisfy { $0 > 0 }, "\(row.channelOps)")
            #expect(row.channelOps.reduce(0, +) == row.ops)
        }
    }

    @Test func queueDepthOneAndSmallRingsWork() throws {
        let tree = try emptyMachine()
        let r = try execute(["bench", "--quick", "--sizes", "256", "--batch", "1", "--queue-depth", "1", "--ring", "2", "--json"] + roots(tree))
        #expect(r.exitCode == 0, "\(r.text)")
        let doc = try decode(Bench.Document.self, r.text)
        #expect(doc.settings.queueDepth == 1 && doc.engines[0].rows[0].verified)
    }

    @Test(arguments: ["ioat", "dsa"])
    func injectedFaultFailsTheRun(_ model: String) throws {
        let tree = try emptyMachine()
        let r = try execute(["bench", "--model", model, "--quick", "--sizes", "64", "--inject-fault", "copy", "--json"] + roots(tree))
        #expect(r.exitCode == 1)
        let doc = try decode(Bench.Document.self, r.text)
        #expect(!doc.passed && !(doc.engines[0].rows.first?.verified ?? true) && !doc.engines[0].errors.isEmpty)
    }

    @Test func copyThresholdIsTheSmallestSizeFromWhichTheEngineAlwaysWins() {
        func row(_ size: Int, _ engine: Double, _ cpu: Double) -> Bench.Row {
            Bench.Row(size: size, ops: 1, opsPerSecond: 1, gigabytesPerSecond: engine, cyclesPerOp: 1, emptyPolls: 0, preemptedIntervals: 0,
                      latencySamples: 1, latencyP50Nanoseconds: 1, latencyP99Nanoseconds: 1, memcpyOpsPerSecond: 1,
                      memcpyGigabytesPerSecond: cpu, engineOverMemcpy: engine / cpu, verified: true)
        }
        #expect(Bench.copyThreshold([row(64, 1, 5), row(4096, 6, 5), row(65536, 9, 5)]) == 4096)
        // A win at a small size does not count when a larger size loses.
        #expect(Bench.copyThreshold([row(64, 9, 5), row(4096, 4, 5), row(65536, 9, 5)]) == 65536)
        #expect(Bench.copyThreshold([row(64, 1, 5), row(65536, 4, 5)]) == nil)
        #expect(Bench.copyThreshold([]) == nil)
        // A row whose copies were not verified counts as a loss (CopyQueue.cpuCopyThreshold(for:) makes the decision).
        var unverified = row(65536, 9, 5)
        unverified.verified = false
        #expect(Bench.copyThreshold([row(4096, 6, 5), unverified]) == nil)
    }

    @Test func sizesParse() throws {
        #expect(parseByteCount("64") == 64)
        #expect(parseByteCount("4K") == 4096 && parseByteCount("4KiB") == 4096 && parseByteCount("4kb") == 4096)
        #expect(parseByteCount("1M") == 1 << 20 && parseByteCount("2MiB") == 2 << 20)
        #expect(parseByteCount("0") == nil && parseByteCount("x") == nil && parseByteCount("-4") == nil)
        let b = try #require(try NetDMATool.parseAsRoot(["bench", "--sizes", "1M,64,4K"]) as? Bench)
        #expect(b.sizes == [1 << 20, 64, 4096])
        #expect(ByteCount.format(65536) == "64 KiB" && ByteCount.format(100) == "100 B")
    }

    @Test func badArgumentsAreRejected() {
        for args in [["--json", "--csv"], ["--ring", "1000"], ["--batch", "0"], ["--batch", "1024"], ["--queue-depth", "1024"],
                     ["--channels", "0"], ["--sizes", "4Q"], ["--mode", "spin"], ["--seconds", "0"], ["--wait-spin", "-1"]] {
            #expect(throws: (any Error).self, "\(args)") { try NetDMATool.parseAsRoot(["bench"] + args) }
        }
    }
}

/// The built binary, next to the test bundle (nil when it was not built).
let netdmaBinary: String? = {
    let dir = URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent()
    for candidate in [dir.appendingPathComponent("netdma"), dir.deletingLastPathComponent().appendingPathComponent("netdma")]
        where FileManager.default.isExecutableFile(atPath: candidate.path) {
        return candidate.path
    }
    return nil
}()

/// The binary's exit status, standard output and standard error.
func runBinary(_ arguments: [String]) throws -> (status: Int32, out: String, err: String) {
    let p = Process()
    p.executableURL = URL(fileURLWithPath: netdmaBinary!)
    p.arguments = arguments
    let out = Pipe(), err = Pipe()
    p.standardOutput = out
    p.standardError = err
    try p.run()
    let o = out.fileHandleForReading.readDataToEndOfFile()
    let e = err.fileHandleForReading.readDataToEndOfFile()
    p.waitUntilExit()
    return (p.terminationStatus, String(decoding: o, as: UTF8.self), String(decoding: e, as: UTF8.self))
}

// Needs the `netdma` product built next to the tests (swift build --build-tests builds it).
@Suite(.enabled(if: netdmaBinary != nil, "the netdma binary is not built next to the test bundle"))
struct BinaryExitStatusTests {
    @Test func probeOnTheModelExitsZero() throws {
        let tree = try emptyMachine()
        let r = try runBinary(["probe"] + roots(tree))
        #expect(r.status == 0, "\(r.err)")
        #expect(r.out.hasPrefix("Running on the built-in device model"))
        #expect(r.err.isEmpty, "no progress bar without a terminal")
    }

    @Test func failuresExitNonZero() throws {
        let tree = try emptyMachine()
        #expect(try runBinary(["probe", "--inject-fault", "copy"] + roots(tree)).status == 1)
        #expect(try runBinary(["selftest", "--seconds", "0.1", "--cycles", "0", "--inject-fault", "copy"] + roots(tree)).status == 1)
        let wrong = try FakeSysfsTree()
        try wrong.addDevice(PCIAddress("0000:00:04.0")!, id: PCIID(vendor: 0x8086, device: 0x0B00), driver: "ioatdma", iommuGroup: 5)
        let r = try runBinary(["probe", "0000:00:04.0"] + roots(wrong))
        #expect(r.status != 0)
        let lines = r.err.split(separator: "\n")
        #expect(lines.count == 1 && lines[0].hasPrefix("Error: ") && lines[0].contains("sudo netdma bind 0000:00:04.0"))
    }
}
