import NetDMA
import Platform
import Synchronization

// The fixture as a target of the shared conformance suite (Conformance/).

extension FixtureMemcpyProvider: ConformanceTarget {
    var provider: any NetDMAProvider { self }
    func hold(channel index: Int, _ on: Bool) { channels[index].hold.store(on, ordering: .releasing) }
    func inFlight(channel index: Int) -> UInt64 { channels[index].inFlight.load(ordering: .acquiring) }
    func suspendRequested(channel index: Int) -> Bool { channels[index].regs.withLock { $0.status == .suspend } }
    func interruptsRaised(channel index: Int) -> Int { channels[index].interruptsRaised.load(ordering: .acquiring) }
    func rearms(channel index: Int) -> Int { channels[index].rearms.load(ordering: .acquiring) }
    func startedFlags(channel index: Int) -> [ControlFlags] { channels[index].startLog.withLock { $0.map(\.flags) } }
    func loseContext(channel index: Int) { channels[index].loseContext() }
}

extension TargetFactory {
    static func fixture(_ version: NetDMAVersion, interrupts: Bool = true) -> TargetFactory {
        TargetFactory(name: "fixture memcpy", version: version) {
            try FixtureMemcpyProvider(version: version, interrupts: interrupts)
        }
    }

    /// Every target, every NetDMA version.
    static let all: [TargetFactory] = [.fixture(.v1_0), .fixture(.v1_1), .fixture(.v2_0)]
    /// The target of single-version tests.
    static func primary(_ version: NetDMAVersion) -> TargetFactory { .fixture(version) }
    /// A 2.0 target whose channels have no interrupt vector.
    static var withoutInterrupts: TargetFactory { .fixture(.v2_0, interrupts: false) }
}
