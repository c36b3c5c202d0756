/// Volatile access to a device's registers at byte offsets.
///
/// Provider code is generic over `RegisterIO` so that the same code drives an mmapped PCI BAR
/// (`VFIO.MappedBAR`) and a register-level device model (`DeviceModels`). Specialised in a
/// release build, an access through a mapped BAR is a single `mov`.
///
/// Conformers guarantee that each call performs exactly one access of the given width, in
/// program order with every other access through the same value (no merging, no elision),
/// so read-to-clear and write-1-to-clear registers behave.
///
/// - Precondition: `offset` is aligned to the access width and inside the register window.
public protocol RegisterIO: ~Copyable {
    /// The size of the register window in bytes.
    var length: Int { get }
    func read8(_ offset: Int) -> UInt8
    func read16(_ offset: Int) -> UInt16
    func read32(_ offset: Int) -> UInt32
    func read64(_ offset: Int) -> UInt64
    func write8(_ offset: Int, _ value: UInt8)
    func write16(_ offset: Int, _ value: UInt16)
    func write32(_ offset: Int, _ value: UInt32)
    func write64(_ offset: Int, _ value: UInt64)
}

extension RegisterIO where Self: ~Copyable {
    /// Writes a 64-bit register as two 32-bit stores, low half first.
    ///
    /// Some engines (CBDMA before 3.3) drop a single 64-bit store; their drivers split it.
    @inlinable
    public func write64Split(_ offset: Int, _ value: UInt64) {
        write32(offset, UInt32(truncatingIfNeeded: value))
        write32(offset + 4, UInt32(truncatingIfNeeded: value >> 32))
    }

    /// Reads a 64-bit register as two 32-bit loads, low half first (may tear on a moving value).
    @inlinable
    public func read64Split(_ offset: Int) -> UInt64 {
        let lo = UInt64(read32(offset))
        let hi = UInt64(read32(offset + 4))
        return lo | (hi << 32)
    }
}

/// A window of 64-byte work-submission portals (DSA BAR2).
///
/// A write is one atomic 64-byte store (MOVDIR64B on hardware); the device either takes the
/// whole descriptor or, for a dedicated work queue that is full, silently drops it.
public protocol PortalIO: ~Copyable {
    /// The size of the portal window in bytes.
    var length: Int { get }
    /// Submits the 64 bytes at `descriptor` to the portal at `offset` (64-byte aligned).
    func submit64(_ offset: Int, _ descriptor: UnsafeRawPointer)
}
