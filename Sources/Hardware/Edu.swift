/// QEMU's educational `edu` PCI device (docs/specs/edu.rst): a DMA engine between memory and
/// a 4 KiB on-device buffer, with MSI. Used to test the real VFIO path inside a VM.
public enum Edu {
    public static let vendorID: UInt16 = 0x1234
    public static let deviceID: UInt16 = 0x11E8

    public static let deviceTable: [EngineIdentity] = [
        EngineIdentity(id: PCIID(vendor: vendorID, device: deviceID), family: .edu,
                       platform: "QEMU", expectedVersion: 0x010000ED, generation: "edu", supported: true),
    ]
}
