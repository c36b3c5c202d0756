import Foundation
import Testing
@testable import NetDMATool

@Suite("netdma soak")
struct SoakTests {
    /// A short soak on two CBDMA model functions (3.4 recovers from a halt in place, 3.2 by
    /// reset) with every kind of trouble, power cycles included.
    static func cbdmaOptions(seconds: Double = 1.5) -> SoakOptions {
        var o = SoakOptions()
        o.seconds = seconds
        o.clients = 2
        o.ioatProfiles = ["icx", "skx"]
        o.dsaWorkQueues = 0
        o.controlEvery = 6
        o.powerCycleMilliseconds = 40
        o.drainSeconds = 10
        // Other tests run in this process at the same time: fd and thread counts are theirs
        // too. DMA regions and IOMMU mappings are per engine and still checked.
        o.processCensus = false
        return o
    }

    @Test("every op accounted for exactly once, byte-exact, failures explained, nothing leaked")
    func cbdmaSoakPasses() {
        let t = Soak(options: Self.cbdmaOptions()).run()
        #expect(t.passed, "\(t.report)")
        #expect(t.ops > 1000)
        #expect(t.ops == t.successful + t.failed + t.abandonedByReset, "every op ends exactly one way")
        #expect(t.faultsInjected > 0 && t.injectedFaultsSeen > 0)
        #expect(t.aborts > 0 && t.resets > 0 && t.suspends > 0 && t.badOps > 0)
        #expect(t.powerCycles > 0)
        #expect(t.failed >= t.injectedFaultsSeen)
    }

    @Test("the DSA model with power cycles: every op accounted for, byte-exact, failures explained")
    func dsaSoakWithPowerPasses() {
        var o = Self.cbdmaOptions()
        o.ioatProfiles = []
        o.dsaWorkQueues = 2
        o.skip = []
        o.powerCycleMilliseconds = 40
        let t = Soak(options: o).run()
        #expect(t.passed, "\(t.report)")
        #expect(t.powerCycles > 0 && t.ops > 1000)
        #expect(t.ops == t.successful + t.failed + t.abandonedByReset)
    }

    @Test("silent corruption by the device is caught")
    func catchesSilentCorruption() {
        var o = Self.cbdmaOptions(seconds: 1)
        o.silentCorruption = true
        let t = Soak(options: o).run()
        #expect(!t.passed)
        #expect(t.corrupted > 0, "\(t.report)")
        #expect(t.violationKinds["corrupted"] == t.corrupted)
    }

    @Test("--json prints the totals and the verdict; a violation exits with status 1")
    func jsonDocument() throws {
        var command = try SoakCommand.parse(["--seconds", "0.5", "--ioat", "icx", "--dsa-work-queues", "0", "--skip", "power", "--json"])
        command.clients = 1
        let (text, passed) = try command.output(processCensus: false)
        let doc = try JSONDecoder().decode(SoakDocument.self, from: Data(text.utf8))
        #expect(doc.passed == passed)
        #expect(doc.passed, "\(doc.totals.report)")
        #expect(doc.totals.engines.count == 1 && doc.totals.channels == 1)
        #expect(doc.totals.lost == 0 && doc.totals.duplicated == 0)
    }
}
