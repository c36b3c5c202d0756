import Hardware
import Platform
import Synchronization

/// The PCI configuration space of a modelled CBDMA function (4 KiB, as VFIO's config region
/// shows it): header with COMMAND and a 64-bit BAR0, PCI Express, MSI-X and power-management
/// capabilities, and the CBDMA registers DMAUNCERRSTS (0x148), CHANERR_INT (0x180) and
/// CHANERRMSK_INT (0x184).
final class PCIConfigModel: @unchecked Sendable {
    // @unchecked: `bytes` is guarded by `lock`; everything else is atomic; `core` is set once
    // right after init, before the object is shared.

    static let pcieCapability = 0x40
    static let msixCapability = 0x80
    static let pmCapability = 0x90
    static let msixEnable: UInt32 = 0x8000
    static let msixFunctionMask: UInt32 = 0x4000
    /// COMMAND after vfio-pci opened the device: memory decoding on, bus mastering off.
    static let commandAfterOpen: UInt16 = 0x0002

    let profile: IOAT.Profile
    let vectors: Int
    unowned(unsafe) var core: IOATDeviceCore! = nil
    private let lock = Mutex<[UInt8]>([])
    private let writable: [UInt8]

    let dmaUncorrectable = Atomic<UInt32>(0)
    let chanerrInternal = Atomic<UInt32>(0)
    let chanerrInternalMask = Atomic<UInt32>(0)
    /// COMMAND.Memory and D0: BAR0 decodes.
    let memoryDecodeFlag = Atomic<Bool>(true)
    /// COMMAND.BusMaster and D0: the engine may issue memory requests (DMA and MSI-X).
    let dmaGate = Atomic<Bool>(false)
    /// MSI-X Message Control.
    let msixControl = Atomic<UInt32>(0)

    var memoryDecode: Bool { memoryDecodeFlag.load(ordering: .relaxed) }

    init(profile: IOAT.Profile, vectors: Int) {
        self.profile = profile
        self.vectors = vectors
        var w = [UInt8](repeating: 0, count: 4096)
        w[0x04] = 0x47; w[0x05] = 0x05  // COMMAND: IO, Memory, BusMaster, Parity; SERR, INTx disable
        w[0x0C] = 0xFF  // cache line size
        let barMask = ~UInt32(profile.bar0Size - 1) & ~0xF
        for i in 0..<4 { w[0x10 + i] = UInt8(truncatingIfNeeded: barMask >> UInt32(8 * i)) }
        for i in 0x14..<0x18 { w[i] = 0xFF }
        w[0x3C] = 0xFF  // interrupt line
        w[Self.pcieCapability + 8] = 0xFF; w[Self.pcieCapability + 9] = 0xFF  // DEVCTL
        w[Self.msixCapability + 3] = 0xC0  // MSI-X enable, function mask
        w[Self.pmCapability + 4] = 0x03  // PMCSR power state
        writable = w
        lock.withLock { $0 = Self.powerOnBytes(profile: profile, vectors: vectors) }
        recompute()
    }

    static func powerOnBytes(profile: IOAT.Profile, vectors: Int) -> [UInt8] {
        var b = [UInt8](repeating: 0, count: 4096)
        func put16(_ o: Int, _ v: UInt16) { b[o] = UInt8(v & 0xFF); b[o + 1] = UInt8(v >> 8) }
        func put32(_ o: Int, _ v: UInt32) { for i in 0..<4 { b[o + i] = UInt8(truncatingIfNeeded: v >> UInt32(8 * i)) } }
        put16(0x00, IOAT.vendorID)
        put16(0x02, profile.deviceID)
        put16(0x04, commandAfterOpen)
        put16(0x06, 0x0010)  // STATUS: capability list
        b[0x08] = 0x00
        b[0x09] = 0x00; b[0x0A] = 0x80; b[0x0B] = 0x08  // class 0x0880: system peripheral, other
        b[0x0E] = 0x00
        put32(0x10, 0xFBE0_0000 | 0x4)  // 64-bit, non-prefetchable memory BAR
        put16(0x2C, IOAT.vendorID)
        b[0x34] = UInt8(pcieCapability)
        b[0x3D] = 0x01
        // PCI Express capability (root-complex integrated endpoint).
        b[pcieCapability] = 0x10; b[pcieCapability + 1] = UInt8(msixCapability)
        put16(pcieCapability + 2, 0x0092)
        put16(pcieCapability + 8, 0x0010)  // DEVCTL: relaxed ordering enabled (Linux clears it)
        // MSI-X capability: table and PBA in BAR0.
        b[msixCapability] = 0x11; b[msixCapability + 1] = UInt8(pmCapability)
        put16(msixCapability + 2, UInt16(max(vectors, 1) - 1))
        put32(msixCapability + 4, UInt32(profile.msixTableOffset))
        put32(msixCapability + 8, UInt32(profile.msixPBAOffset))
        // Power management capability: PM 1.2, No_Soft_Reset = 0 (D3hot → D0 resets the function).
        b[pmCapability] = 0x01; b[pmCapability + 1] = 0x00
        put16(pmCapability + 2, 0x0003)
        return b
    }

    private func recompute() {
        let (command, msix, pm) = lock.withLock { b in
            (UInt16(b[0x04]) | UInt16(b[0x05]) << 8,
             UInt32(b[Self.msixCapability + 2]) | UInt32(b[Self.msixCapability + 3]) << 8,
             b[Self.pmCapability + 4] & 3)
        }
        memoryDecodeFlag.store(command & 0x2 != 0 && pm == 0, ordering: .relaxed)
        dmaGate.store(command & 0x4 != 0 && pm == 0, ordering: .releasing)
        msixControl.store(msix, ordering: .releasing)
    }

    var powerState: UInt8 { lock.withLock { $0[Self.pmCapability + 4] & 3 } }

    /// Back to power-on values (a power loss nothing restores).
    func powerOnReset() {
        lock.withLock { $0 = Self.powerOnBytes(profile: profile, vectors: vectors); $0[0x04] = 0 }
        dmaUncorrectable.store(0, ordering: .relaxed)
        chanerrInternal.store(0, ordering: .relaxed)
        chanerrInternalMask.store(0, ordering: .relaxed)
        recompute()
    }

    func recordChannelError(_ bits: UInt32) {
        chanerrInternal.bitwiseOr(bits & ~chanerrInternalMask.load(ordering: .relaxed), ordering: .relaxed)
    }

    func setDMAUncorrectable(_ bits: UInt32) { dmaUncorrectable.bitwiseOr(bits, ordering: .relaxed) }

    /// Programs MSI-X the way VFIO_DEVICE_SET_IRQS does: enable (or disable) the capability.
    func setMSIXEnabled(_ on: Bool) {
        lock.withLock { b in
            b[Self.msixCapability + 3] = on ? (b[Self.msixCapability + 3] | 0x80) & ~0x40 : b[Self.msixCapability + 3] & ~0x80
        }
        recompute()
    }

    // MARK: Access

    func read(_ offset: Int, width: Int) -> UInt64 {
        guard offset >= 0, offset + width <= 4096 else { return width == 8 ? ~0 : (1 << UInt64(width * 8)) - 1 }
        var r: UInt64 = 0
        lock.withLock { b in
            for i in 0..<width {
                let o = offset + i
                let byte: UInt8
                switch o {
                case IOAT.configDMAUNCERRSTS..<(IOAT.configDMAUNCERRSTS + 4):
                    byte = UInt8(truncatingIfNeeded: dmaUncorrectable.load(ordering: .relaxed) >> UInt32(8 * (o - IOAT.configDMAUNCERRSTS)))
                case IOAT.configCHANERR_INT..<(IOAT.configCHANERR_INT + 4):
                    byte = UInt8(truncatingIfNeeded: chanerrInternal.load(ordering: .relaxed) >> UInt32(8 * (o - IOAT.configCHANERR_INT)))
                case IOAT.configCHANERRMSK_INT..<(IOAT.configCHANERRMSK_INT + 4):
                    byte = UInt8(truncatingIfNeeded: chanerrInternalMask.load(ordering: .relaxed) >> UInt32(8 * (o - IOAT.configCHANERRMSK_INT)))
                default:
                    byte = b[o]
                }
                r |= UInt64(byte) << UInt64(8 * i)
            }
        }
        return r
    }

    func write(_ offset: Int, width: Int, _ value: UInt64) {
        guard offset >= 0, offset + width <= 4096 else { return }
        let before = powerState
        let msixBefore = msixControl.load(ordering: .relaxed)
        lock.withLock { b in
            for i in 0..<width {
                let o = offset + i
                let byte = UInt8(truncatingIfNeeded: value >> UInt64(8 * i))
                switch o {
                case IOAT.configDMAUNCERRSTS..<(IOAT.configDMAUNCERRSTS + 4):
                    dmaUncorrectable.bitwiseAnd(~(UInt32(byte) << UInt32(8 * (o - IOAT.configDMAUNCERRSTS))), ordering: .relaxed)
                case IOAT.configCHANERR_INT..<(IOAT.configCHANERR_INT + 4):
                    chanerrInternal.bitwiseAnd(~(UInt32(byte) << UInt32(8 * (o - IOAT.configCHANERR_INT))), ordering: .relaxed)
                case IOAT.configCHANERRMSK_INT..<(IOAT.configCHANERRMSK_INT + 4):
                    let shift = UInt32(8 * (o - IOAT.configCHANERRMSK_INT))
                    let old = chanerrInternalMask.load(ordering: .relaxed)
                    chanerrInternalMask.store((old & ~(0xFF << shift)) | UInt32(byte) << shift, ordering: .relaxed)
                default:
                    b[o] = (b[o] & ~writable[o]) | (byte & writable[o])
                }
            }
        }
        recompute()
        let after = powerState
        if before != 0 && after == 0 {
            // D3hot → D0 with No_Soft_Reset = 0: an internal reset; vfio-pci restores config and MSI-X.
            core?.requestPowerLoss(kind: 1)
        }
        let msixAfter = msixControl.load(ordering: .relaxed)
        if msixAfter != msixBefore { core?.deliverPending() }
        core?.wake()  // bus mastering may have been enabled under a waiting channel
    }
}
