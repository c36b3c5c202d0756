import DeviceModels
import Hardware
import IOAT
import NetDMA
import Platform
import Synchronization
import Testing

/// A provider-level channel on a stepped model with source/destination slots; descriptor `i`
/// copies slot i.
final class IOATFaultRig: @unchecked Sendable {
    let rig: IOATProviderRig
    let ch: IOATDirectChannel
    let pool: DescriptorPool
    let src: DMABuffer
    let dst: DMABuffer
    static let slot = 256

    init(_ name: String, execution: MockIOATDevice.Execution = .manual, completionIOVA: UInt64? = nil) throws {
        rig = try IOATProviderRig(name, execution: execution)
        if let completionIOVA {
            ch = try IOATDirectChannel(rig, completionIOVA: completionIOVA)
        } else {
            ch = try IOATDirectChannel(rig)
        }
        pool = try DescriptorPool(memory: rig.memory, count: 16)
        pool.linkRing()
        src = try rig.buffer(16 * Self.slot)
        dst = try rig.buffer(16 * Self.slot)
        src.ioatPattern(5)
        for i in 0..<16 { copy(i) }
    }

    func copy(_ i: Int, _ flags: ControlFlags = [.statusUpdateOnCompletion]) {
        IOATChain.copy(pool, i, from: src.iova(at: i * Self.slot), to: dst.iova(at: i * Self.slot), Self.slot, flags)
    }
    func copied(_ i: Int) -> Bool { dst.ioatEqual(i * Self.slot, src, i * Self.slot, Self.slot) }
    func untouched(_ i: Int) -> Bool { dst.ioatAllZero(i * Self.slot, Self.slot) }
    func run() {
        if rig.device.execution == .manual { rig.device.runUntilIdle() } else { _ = rig.device.waitUntilIdle() }
    }
}

/// An IOVA no mapping covers (the rig allocates from 4 GiB up).
let ioatUnmapped: UInt64 = 0x20_0000

@Suite("IOAT provider errors")
struct IOATErrorTests {
    /// One way to make descriptor 1 of a 3-descriptor chain fail, and the CHANERR bit expected.
    struct Cause: Sendable, CustomTestStringConvertible {
        let name: String
        let bit: IOAT.ChanErr
        let break1: @Sendable (IOATFaultRig) -> Void
        var testDescription: String { name }
    }

    static let causes: [Cause] = [
        // (A copy of size 0 is no error: NetDMA allows it, and the provider hands CBDMA a NULL.)
        Cause(name: "size above 2^XFERCAP", bit: .transferSize) { $0.pool[1].pointee.transferSize = UInt32.max },
        Cause(name: "unmapped source", bit: .sourceAddress) { $0.pool[1].pointee.source = ioatUnmapped },
        Cause(name: "source with bits 63:48 set", bit: .sourceAddress) { $0.pool[1].pointee.source = 0xFFFF_0000_0000_0000 },
        Cause(name: "unmapped destination", bit: .destinationAddress) { $0.pool[1].pointee.destination = ioatUnmapped },
        Cause(name: "source range leaving its mapping", bit: .readData) {
            $0.pool[1].pointee.source = $0.src.iova(at: $0.src.length - 16)
        },
        Cause(name: "destination range leaving its mapping", bit: .writeData) {
            $0.pool[1].pointee.destination = $0.dst.iova(at: $0.dst.length - 16)
        },
        Cause(name: "unknown opcode", bit: .descriptorControl) { $0.pool[1].pointee.controlFlags |= 0x5500_0000 },
        Cause(name: "misaligned next", bit: .descriptor) { $0.pool[0].pointee.next = $0.pool.iova(at: 1) + 8 },
        Cause(name: "unmapped next descriptor", bit: .nextDescriptorAddress) { $0.pool[0].pointee.next = ioatUnmapped },
    ]

    @Test("device errors halt the channel, decode into named causes and name the failing descriptor",
          arguments: causes)
    func decoded(_ cause: Cause) throws {
        let t = try IOATFaultRig("icx")
        cause.break1(t)
        try t.ch.channel.start(t.pool.chain(from: 0, count: 3))
        t.run()
        #expect(t.rig.state() == .halted)
        let fault = try #require(t.ch.channel.fault)
        #expect(fault.rawValue == UInt64(cause.bit.rawValue))
        #expect(fault.causes == cause.bit.causes)
        #expect(fault.causes.count == 1)
        // The completion word holds the last good descriptor with Halted (ERR_COMPLETION_EN).
        #expect(t.ch.completion == CompletionWord(descriptor: t.pool.iova(at: 0), status: .halted))
        if cause.bit == .nextDescriptorAddress || cause.bit == .descriptor {
            #expect(fault.descriptor != t.pool.iova(at: 2))
        } else {
            #expect(fault.descriptor == t.pool.iova(at: 1))
        }
        #expect(t.copied(0) && t.untouched(2))
    }

    @Test("a chain whose first descriptor cannot be fetched: CHADDERR, completion address 0")
    func chainAddress() throws {
        let t = try IOATFaultRig("skx")
        let bogus = DescriptorChain(address: t.pool[0], iova: ioatUnmapped, count: 1)
        try t.ch.channel.start(bogus)
        t.run()
        let fault = try #require(t.ch.channel.fault)
        #expect(fault.rawValue == UInt64(IOAT.ChanErr.chainAddress.rawValue))
        #expect(fault.causes == ["chain address error (CHADDERR)"])
        #expect(fault.descriptor == ioatUnmapped)
        #expect(t.ch.completion == CompletionWord(descriptor: 0, status: .halted))
        // Start recovers (full reset below 3.4) and the next chain runs.
        try t.ch.channel.start(t.pool.chain(from: 0, count: 2))
        t.run()
        #expect(t.ch.channel.fault == nil)
        #expect(t.copied(0) && t.copied(1))
    }

    @Test("an unmapped completion area: CMPADDERR, and no status write")
    func completionAddress() throws {
        let t = try IOATFaultRig("bdxde", completionIOVA: ioatUnmapped)
        try t.ch.channel.start(t.pool.chain(from: 0, count: 1))
        t.run()
        let fault = try #require(t.ch.channel.fault)
        #expect(fault.rawValue == UInt64(IOAT.ChanErr.completionAddress.rawValue))
        #expect(fault.causes == ["completion address error (CMPADDERR)"])
        #expect(t.ch.completion.status == .armed)
    }

    @Test("every CHANERR bit decodes to its hardware name", arguments: IOAT.ChanErr.names.map(\.1))
    func everyBit(_ name: String) throws {
        let bit = IOAT.ChanErr.names.first { $0.1 == name }!.0
        let t = try IOATFaultRig("icx")
        t.rig.device.inject(.failDescriptor(index: 1, error: bit))
        try t.ch.channel.start(t.pool.chain(from: 0, count: 3))
        t.run()
        let fault = try #require(t.ch.channel.fault)
        #expect(fault.rawValue == UInt64(bit.rawValue))
        #expect(fault.causes == [name])
        #expect(fault.descriptor == t.pool.iova(at: 1))
        #expect(fault.description.contains(name))
    }

    @Test("bits no document names are reported as unknown, with their value")
    func unknownBits() throws {
        let t = try IOATFaultRig("icx")
        t.rig.device.inject(.failDescriptor(index: 0, error: IOAT.ChanErr(rawValue: 1 << 20 | 1 << 11)))
        try t.ch.channel.start(t.pool.chain(from: 0, count: 2))
        t.run()
        let fault = try #require(t.ch.channel.fault)
        #expect(fault.causes == ["descriptor transfer size error (DXSERR)", "unknown CHANERR bits 0x100000"])
        #expect(fault.descriptor == t.pool.iova(at: 0))
    }

    @Test("halt recovery per generation: in place on CB 3.4, reset and restart below; the rest of the work completes",
          arguments: ioatV3Profiles)
    func recovery(profile name: String) throws {
        let t = try IOATFaultRig(name, execution: .thread)
        t.rig.device.inject(.failDescriptor(index: 2, error: .readData))
        for i in 0..<6 { t.copy(i, i == 5 ? [.statusUpdateOnCompletion, .interruptOnCompletion] : [.statusUpdateOnCompletion]) }
        try t.ch.channel.start(t.pool.chain(from: 0, count: 6))
        #expect(ioatWait { t.ch.completion.status == .halted })
        let fault = try #require(t.ch.channel.fault)
        #expect(fault.causes == ["read data error (RDERR)"])
        #expect(fault.descriptor == t.pool.iova(at: 2))
        #expect(t.ch.completion.descriptor == t.pool.iova(at: 1))
        #expect(t.ch.waitInterrupt() >= 1, "ERR_INT_EN")
        #expect(t.ch.channel.serviceInterrupt().fault != nil)
        // The interface re-Starts at the first unprocessed descriptor.
        try t.ch.channel.start(t.pool.chain(from: 3, count: 3))
        #expect(ioatWait { t.ch.completion == CompletionWord(descriptor: t.pool.iova(at: 5), status: .idle) })
        #expect(t.ch.channel.fault == nil)
        for i in [0, 1, 3, 4, 5] { #expect(t.copied(i), "descriptor \(i)") }
        #expect(t.untouched(2))
        let recoveries = t.ch.channel.recoveries
        if t.rig.profile.recoversFromHalt {
            #expect(recoveries.inPlace == 1 && recoveries.byReset == 0)
        } else {
            #expect(recoveries.inPlace == 0 && recoveries.byReset == 1)
        }
        // Recovery re-armed the interrupt, and the reset did not lose the vector (CB 3.3 wipes
        // MSI-X; the provider re-routes): descriptor 5 interrupted, and so does the next one.
        #expect(t.ch.waitInterrupt() == 1)
        t.ch.channel.rearmInterrupt()
        t.copy(6, [.statusUpdateOnCompletion, .interruptOnCompletion])
        try t.ch.channel.append(t.pool.chain(from: 6, count: 1))
        #expect(t.ch.waitInterrupt() == 1)
        #expect(t.rig.device.statistics.interruptsLost == 0)
        #expect(t.rig.device.statistics.droppedChainWrites == 0)
        #expect(t.rig.device.statistics.droppedWideWrites == 0)
        if t.rig.profile.cbver < 0x33 {
            #expect(t.rig.device.config.read32(IOAT.configCHANERR_INT) == 0)
        }
    }
}
