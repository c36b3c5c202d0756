/// A PCI vendor and device ID pair.
public struct PCIID: Sendable, Hashable, CustomStringConvertible {
    public var vendor: UInt16
    public var device: UInt16
    public init(vendor: UInt16, device: UInt16) { self.vendor = vendor; self.device = device }
    public var description: String {
        String(format4(vendor)) + ":" + String(format4(device))
    }
}

@inline(__always) func format4(_ v: UInt16) -> String {
    let s = String(v, radix: 16)
    return String(repeating: "0", count: 4 - s.count) + s
}

/// The kind of DMA engine a PCI function is.
public enum EngineFamily: String, Sendable, Hashable, CaseIterable, Codable {
    /// Intel Crystal Beach DMA (CBDMA, QuickData, I/OAT).
    case ioat
    /// Intel Data Streaming Accelerator.
    case dsa
    /// Intel In-Memory Analytics Accelerator: recognised, not driven (it compresses, it does not copy).
    case iaa
    /// QEMU's educational `edu` device, used to test the VFIO path in a VM.
    case edu
}

/// One row of the device-ID table: a PCI ID, what it is and what the driver expects of it.
public struct EngineIdentity: Sendable, Hashable {
    public var id: PCIID
    public var family: EngineFamily
    /// Platform code name, e.g. "Skylake-SP (SKX)".
    public var platform: String
    /// The hardware version the driver expects (CBVER for CBDMA: 0x32 = 3.2; VERSION for DSA: 0x100).
    public var expectedVersion: UInt32
    /// Human-readable generation, e.g. "CBDMA 3.2" or "DSA 1.0".
    public var generation: String
    /// Whether this project drives it.
    public var supported: Bool
}

/// Every DMA engine this project knows, by PCI ID.
public enum EngineTable {
    /// All rows: every CBDMA generation, DSA, IAA and QEMU edu.
    public static let all: [EngineIdentity] = IOAT.deviceTable + DSA.deviceTable + Edu.deviceTable

    /// The row for `id`, if it is a known engine.
    public static func identify(_ id: PCIID) -> EngineIdentity? {
        all.first { $0.id == id }
    }
}
