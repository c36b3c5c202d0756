/// Intel Data Streaming Accelerator (DSA) and In-Memory Analytics Accelerator (IAA): device IDs.
/// The register map, descriptors and completion records belong here too (dsa.md §2, §5, §6).
public enum DSA {
    public static let vendorID: UInt16 = 0x8086

    /// Every DSA/IAA device ID, with its platform and expected VERSION register (dsa.md §1.1).
    public static let deviceTable: [EngineIdentity] = [
        EngineIdentity(id: PCIID(vendor: vendorID, device: 0x0B25), family: .dsa,
                       platform: "Sapphire Rapids / Emerald Rapids", expectedVersion: 0x100, generation: "DSA 1.0", supported: true),
        EngineIdentity(id: PCIID(vendor: vendorID, device: 0x11FB), family: .dsa,
                       platform: "Granite Rapids-D", expectedVersion: 0x200, generation: "DSA 2.0", supported: true),
        EngineIdentity(id: PCIID(vendor: vendorID, device: 0x1212), family: .dsa,
                       platform: "Diamond Rapids", expectedVersion: 0x300, generation: "DSA 3.0", supported: true),
        EngineIdentity(id: PCIID(vendor: vendorID, device: 0x0CFE), family: .iaa,
                       platform: "Sapphire Rapids / Emerald Rapids", expectedVersion: 0x100, generation: "IAA 1.0", supported: false),
        EngineIdentity(id: PCIID(vendor: vendorID, device: 0x1216), family: .iaa,
                       platform: "Diamond Rapids", expectedVersion: 0x300, generation: "IAA 3.0", supported: false),
        EngineIdentity(id: PCIID(vendor: vendorID, device: 0xB02D), family: .iaa,
                       platform: "Panther Lake", expectedVersion: 0x200, generation: "IAA 2.0", supported: false),
    ]
}
