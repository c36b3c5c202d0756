import DSA
import Hardware
import IOAT
import NetDMA
import Platform

extension EngineInfo {
    /// The identity of a CBDMA function and its provider.
    init<B: RegisterIO & ~Copyable>(_ p: IOATProvider<B>, platform: String) {
        let d = p.device
        let caps = Self.dmaCapabilityNames.filter { d.capabilities.contains($0.0) }.map(\.1)
        let xfercap = d.maximumTransferSize.trailingZeroBitCount
        self.init(
            family: "ioat", generation: "CBDMA \(d.cbver >> 4).\(d.cbver & 0xF)", platform: platform,
            name: p.characteristics.friendlyName, netdmaVersion: p.characteristics.version.description,
            registers: [
                Register(name: "CBVER", value: hex(d.cbver, 2), meaning: "Crystal Beach \(d.cbver >> 4).\(d.cbver & 0xF)"),
                Register(name: "CHANCNT", value: hex(d.channelCount, 2), meaning: "\(d.channelCount) channel\(d.channelCount == 1 ? "" : "s")"),
                Register(name: "XFERCAP", value: hex(xfercap, 2), meaning: "\(ByteCount.format(d.maximumTransferSize)) per descriptor"),
                Register(name: "DMACAPABILITY", value: hex(d.capabilities.rawValue, 8),
                         meaning: caps.isEmpty ? "copy only" : caps.joined(separator: ", ")),
            ],
            channels: p.channels.count, maximumTransferSize: p.attributes.maximumTransferSize,
            fill: p.characteristics.flags.contains(.fill), interrupts: p.channels.contains { $0.interruptEventFD != nil },
            dsaConfiguration: nil)
    }

    /// The identity of a DSA function and its provider.
    init<B: RegisterIO & ~Copyable, P: PortalIO & ~Copyable>(_ p: DSAProvider<B, P>, platform: String) {
        let d = p.device
        let g = d.genCap, w = d.wqCap, gr = d.grpCap
        self.init(
            family: "dsa", generation: "DSA \(d.version >> 8).\(d.version & 0xFF)", platform: platform,
            name: p.characteristics.friendlyName, netdmaVersion: p.characteristics.version.description,
            registers: [
                Register(name: "VERSION", value: hex(d.version, 3), meaning: "DSA \(d.version >> 8).\(d.version & 0xFF)"),
                Register(name: "GENCAP", value: hex(g.rawValue, 16),
                         meaning: "max transfer 2^\(g.maxTransferShift), max batch 2^\(g.maxBatchShift)\(g.configurable ? ", configurable" : "")"),
                Register(name: "WQCAP", value: hex(w.rawValue, 16),
                         meaning: "\(w.count) WQs, \(w.totalSize) entries\(w.dedicatedMode ? ", dedicated" : "")\(w.sharedMode ? ", shared" : "")"),
                Register(name: "GRPCAP", value: hex(gr.rawValue, 16), meaning: "\(gr.count) groups, \(gr.totalReadBuffers) read buffers"),
                Register(name: "ENGCAP", value: hex(d.engineCount, 16), meaning: "\(d.engineCount) engines"),
                Register(name: "OPCAP", value: hex(d.opcap.first ?? 0, 16),
                         meaning: Self.dsaOpcodeNames.filter { d.supports(opcode: $0.0) }.map(\.1).joined(separator: ", ")),
            ],
            channels: p.channels.count, maximumTransferSize: p.attributes.maximumTransferSize,
            fill: p.characteristics.flags.contains(.fill), interrupts: p.channels.contains { $0.interruptEventFD != nil },
            dsaConfiguration: p.layout.description)
    }

    static let dmaCapabilityNames: [(IOAT.DMACapability, String)] = [
        (.pageBreak, "page break"), (.crc, "CRC"), (.skipMarker, "skip marker"), (.dca, "DCA"), (.crcMove, "CRC move"),
        (.blockFill, "block fill"), (.apic, "APIC"), (.xor, "XOR"), (.pq, "P/Q"), (.dif, "DIF"), (.dwbes, "DWBES"),
        (.raid16ss, "RAID16SS"), (.dmaMulticast, "multicast"), (.completionTimeout, "completion timeout"),
        (.descriptorPrefetch, "descriptor prefetch"),
    ]

    static let dsaOpcodeNames: [(UInt8, String)] = [
        (DSA.Opcode.noop, "no-op"), (DSA.Opcode.batch, "batch"), (DSA.Opcode.drain, "drain"), (DSA.Opcode.memmove, "memmove"),
        (DSA.Opcode.fill, "fill"), (DSA.Opcode.compare, "compare"), (DSA.Opcode.comparePattern, "compare pattern"),
        (DSA.Opcode.createDelta, "create delta"), (DSA.Opcode.applyDelta, "apply delta"), (DSA.Opcode.dualcast, "dualcast"),
        (DSA.Opcode.translationFetch, "translation fetch"), (DSA.Opcode.crcGenerate, "CRC"), (DSA.Opcode.copyCRC, "copy+CRC"),
        (DSA.Opcode.difCheck, "DIF check"), (DSA.Opcode.difInsert, "DIF insert"), (DSA.Opcode.difStrip, "DIF strip"),
        (DSA.Opcode.difUpdate, "DIF update"), (DSA.Opcode.dixGenerate, "DIX generate"), (DSA.Opcode.cacheFlush, "cache flush"),
    ]
}

/// "0x0034": `v` in hexadecimal with at least `digits` digits.
func hex<T: BinaryInteger>(_ v: T, _ digits: Int) -> String {
    let s = String(v, radix: 16)
    return "0x" + String(repeating: "0", count: max(0, digits - s.count)) + s
}

/// Byte counts as the tools print and parse them.
public enum ByteCount {
    /// "64 B", "4 KiB", "1 MiB", "2 GiB" (exact multiples only; else bytes).
    public static func format(_ n: Int) -> String {
        if n >= 1 << 30 && n % (1 << 30) == 0 { return "\(n >> 30) GiB" }
        if n >= 1 << 20 && n % (1 << 20) == 0 { return "\(n >> 20) MiB" }
        if n >= 1 << 10 && n % (1 << 10) == 0 { return "\(n >> 10) KiB" }
        return "\(n) B"
    }
}
