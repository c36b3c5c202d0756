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

extension Edu {
    /// BAR0 register offsets (docs/specs/edu.rst). Accesses must be 4 or 8 bytes wide.
    public enum Register {
        /// `ID` (RO, 32-bit): reads `0x010000ed` (major 1, minor 0, 0xed).
        public static let identification = 0x00
        /// `liveness` (RW, 32-bit): reads back the bitwise inverse of the value written.
        public static let liveness = 0x04
        /// `factorial` (RW, 32-bit): computes the factorial of the value written.
        public static let factorial = 0x08
        /// `status` (RW, 32-bit): bit 0 factorial busy, bit 7 raise an interrupt after factorial.
        public static let status = 0x20
        /// `interrupt status` (RO, 32-bit): the raised causes (``Edu/dmaInterrupt`` for DMA).
        public static let interruptStatus = 0x24
        /// `raise interrupt` (WO, 32-bit): ORs the value into the interrupt status and raises the IRQ.
        public static let interruptRaise = 0x60
        /// `acknowledge interrupt` (WO, 32-bit): clears the written bits of the interrupt status.
        public static let interruptAcknowledge = 0x64
        /// `DMA source address` (RW, 64-bit).
        public static let dmaSource = 0x80
        /// `DMA destination address` (RW, 64-bit).
        public static let dmaDestination = 0x88
        /// `DMA transfer count` (RW, 64-bit), in bytes.
        public static let dmaCount = 0x90
        /// `DMA command` (RW, 64-bit): ``Edu/DMACommand`` bits.
        public static let dmaCommand = 0x98
    }

    /// Bits of the `DMA command` register.
    public struct DMACommand: OptionSet, Sendable, Hashable {
        public let rawValue: UInt64
        public init(rawValue: UInt64) { self.rawValue = rawValue }
        /// Start the transfer; reads as 1 while it runs.
        public static let start = DMACommand(rawValue: 0x1)
        /// Direction: set for edu buffer → RAM, clear for RAM → edu buffer.
        public static let toRAM = DMACommand(rawValue: 0x2)
        /// Raise ``Edu/dmaInterrupt`` when the transfer completes.
        public static let interruptOnCompletion = DMACommand(rawValue: 0x4)
    }

    /// The `interrupt status` bit of a DMA completion.
    public static let dmaInterrupt: UInt32 = 0x100
    /// The value of the `ID` register.
    public static let identification: UInt32 = 0x0100_00ED
    /// The device-side address of the 4 KiB DMA buffer (the edu end of every transfer).
    public static let bufferAddress: UInt64 = 0x40000
    /// The DMA buffer's size.
    public static let bufferSize = 4096
    /// The largest safe transfer: QEMU 7.2 aborts the whole VM on a 4096-byte transfer
    /// (an off-by-one in its bounds check, fixed in QEMU 8.2.1).
    public static let maximumTransfer = 4095
    /// The default DMA mask (`dma_mask` property): IOVAs must be below 256 MiB.
    public static let dmaMask: UInt64 = (1 << 28) - 1
}
