import NetDMA

// The targets the shared NetDMA conformance suite (NetDMAConformance/, a symlink to
// Tests/NetDMATests/Conformance) runs against in this test target. Each hardware provider adds
// its own list here (e.g. `dsaTargets + ioatTargets`).

extension TargetFactory {
    /// Every provider target, every NetDMA version.
    static let all: [TargetFactory] = ioatTargets + dsaTargets
    /// The target of single-version tests.
    static func primary(_ version: NetDMAVersion) -> TargetFactory { .dsa(version) }
    /// A 2.0 target whose channels have no interrupt vector.
    static var withoutInterrupts: TargetFactory { .dsa(.v2_0, interrupts: false) }
}
