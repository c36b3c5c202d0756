import CVFIO
import Platform

/// A PCI power state (PMCSR bits 1:0).
public enum PCIPowerState: UInt16, Sendable, Hashable, CustomStringConvertible {
    case d0 = 0, d1 = 1, d2 = 2, d3hot = 3
    public var description: String { ["D0", "D1", "D2", "D3hot"][Int(rawValue)] }
}

extension VFIODevice {
    /// The config-space offset of standard capability `id` (e.g. 0x01 power management,
    /// 0x05 MSI, 0x10 PCI Express, 0x11 MSI-X), walking the list from `Capabilities Pointer`
    /// (config 0x34) when Status (0x06) bit 4 says there is one; nil when absent.
    public func capabilityOffset(_ id: UInt8) throws(DriverError) -> Int? {
        guard try readConfig16(0x06) & 0x10 != 0 else { return nil }
        var at = Int(try readConfig8(Int(PCI_CAPABILITY_LIST)) & 0xFC)
        var steps = 0
        while at >= 0x40 && at < 0x100 && steps < 48 {
            let header = try readConfig16(at)
            if UInt8(truncatingIfNeeded: header) == id { return at }
            at = Int(header >> 8) & 0xFC
            steps += 1
        }
        return nil
    }

    /// The config-space offset of PCI Express extended capability `id` (list from 0x100), nil
    /// when absent or when config space is only 256 bytes.
    public func extendedCapabilityOffset(_ id: UInt16) throws(DriverError) -> Int? {
        guard configSize > 0x100 else { return nil }
        var at = 0x100
        var steps = 0
        while at >= 0x100 && at + 4 <= configSize && steps < 512 {
            let header = try readConfig32(at)
            if header == 0 || header == 0xFFFF_FFFF { return nil }
            if UInt16(truncatingIfNeeded: header) == id { return at }
            at = Int(header >> 20) & 0xFFC
            steps += 1
        }
        return nil
    }

    /// The device's power state from the PM capability's PMCSR; nil without a PM capability.
    public func powerState() throws(DriverError) -> PCIPowerState? {
        guard let pm = try capabilityOffset(0x01) else { return nil }
        return PCIPowerState(rawValue: try readConfig16(pm + Int(PCI_PM_CTRL)) & UInt16(PCI_PM_CTRL_STATE_MASK))
    }

    /// Moves the device to `state` through PMCSR (D3hot for NetDMA's PowerDown, D0 for PowerUp).
    ///
    /// The caller waits the PCI-mandated 10 ms after leaving D3hot before touching the BARs.
    ///
    /// - Throws: ``DriverError`` `.unsupported` without a PM capability.
    public func setPowerState(_ state: PCIPowerState) throws(DriverError) {
        guard let pm = try capabilityOffset(0x01) else {
            throw DriverError(.unsupported, "\(address) has no PCI power-management capability.")
        }
        let csr = try readConfig16(pm + Int(PCI_PM_CTRL))
        try writeConfig16(pm + Int(PCI_PM_CTRL), (csr & ~UInt16(PCI_PM_CTRL_STATE_MASK)) | state.rawValue)
    }
}
