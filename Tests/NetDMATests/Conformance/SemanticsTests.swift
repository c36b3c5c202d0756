import NetDMA
import Platform
import Synchronization
import Testing

#if canImport(Glibc)
import Glibc
#endif

// Regressions of NetDMA semantics found by driving the providers as a NetDMA client and as
// Linux's VFIO selftest driver does (issue 13), run against every target.
@Suite("NetDMA semantics (issue 13)", .serialized)
struct SemanticsTests {
    static let unmapped: UInt64 = 0xF0_0000_0000

    @Test("allocation with an empty CPU set, or only CPUs the process may not use, is refused naming the allowed CPUs",
          arguments: TargetFactory.all)
    func emptyAffinity(_ factory: TargetFactory) throws {
        let h = try Harness(factory)
        defer { h.close() }
        let allowed = CPUSet.allowed
        for set in [CPUSet(), CPUSet([100_000]), CPUSet([65_535, 70_000])] {
            do { _ = try h.channel(affinity: set); Issue.record("allocated with CPU set \(set)") } catch {
                #expect(error.code == .invalidArgument)
                #expect(error.message.contains(allowed.description), "the message names the CPUs allowed: \(error.message)")
            }
        }
        #expect(h.registry.info(h.handle)?.allocatedChannels == 0)
        let c = try h.channel(affinity: CPUSet(Array(allowed) + [100_000]))
        #expect(allowed.contains(c.cpu))
    }

    @Test("a NetDMA 1.0 or 1.1 provider declaring characteristic flags is refused", arguments: TargetFactory.all)
    func flagsBelow20(_ factory: TargetFactory) throws {
        let target = try factory.make()
        defer { target.shutdown() }
        let registry = NetDMARegistry()
        let c = target.provider.characteristics
        #expect(c.flags.rawValue & ProviderFlags.netDMAMask == 0 || c.version >= .v2_0,
                "the target itself declares flags 0x\(String(c.flags.rawValue, radix: 16)) at \(c.version)")
        for raw: UInt32 in [0x1, 0x2, 0x4, 0x8000] {
            let declared = FlagsDeclaringProvider(target.provider, adding: ProviderFlags(rawValue: raw))
            do {
                let h = try registry.register(declared)
                #expect(c.version >= .v2_0 && raw <= 0x2, "\(c.version) registered with flags 0x\(String(raw, radix: 16))")
                try registry.deregister(h)
            } catch {
                #expect(c.version < .v2_0 || raw > 0x2, "\(c.version) refused flags 0x\(String(raw, radix: 16)): \(error)")
                #expect(error.code == .invalidArgument)
            }
        }
        #expect(registry.providers.isEmpty)
    }
}

/// A provider that declares `adding` on top of another provider's characteristics (and is
/// that provider otherwise): to register a target with flags it does not declare itself.
private final class FlagsDeclaringProvider: NetDMAProvider, @unchecked Sendable {
    let base: any NetDMAProvider
    let characteristics: ProviderCharacteristics
    init(_ base: any NetDMAProvider, adding flags: ProviderFlags) {
        self.base = base
        var c = base.characteristics
        c.flags.formUnion(flags)
        characteristics = c
    }
    var dmaMemory: DMAMemory { base.dmaMemory }
    func setChannelCPUAffinity(_ table: [ChannelCPUAffinity]) throws(DriverError) { try base.setChannelCPUAffinity(table) }
    func allocateChannel(_ parameters: ChannelParameters) throws(DriverError) -> (channel: any ProviderChannel, cpu: Int) {
        try base.allocateChannel(parameters)
    }
}
