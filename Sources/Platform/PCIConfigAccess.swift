/// Access to a PCI function's configuration space, for the few registers a driver touches
/// outside its BARs (CBDMA's CHANERR_INT at 0x180, DMAUNCERRSTS at 0x148, the COMMAND word).
///
/// A VFIO device reaches it through the config region (`pread`/`pwrite` on the device fd); a
/// device model through its own config array. Never on a hot path: implementations may make
/// system calls and take locks.
public protocol PCIConfigAccess: AnyObject, Sendable {
    /// Reads the 32-bit configuration register at `offset` (4-byte aligned, < 4096).
    ///
    /// - Throws: ``DriverError`` when the access fails (a VFIO `pread` error).
    func readConfig32(_ offset: Int) throws(DriverError) -> UInt32

    /// Writes the 32-bit configuration register at `offset` (4-byte aligned, < 4096).
    ///
    /// - Throws: ``DriverError`` when the access fails (a VFIO `pwrite` error).
    func writeConfig32(_ offset: Int, _ value: UInt32) throws(DriverError)
}

extension PCIConfigAccess {
    /// The function's vendor and device ID (config offset 0x00).
    public func readPCIID() throws(DriverError) -> (vendor: UInt16, device: UInt16) {
        let v = try readConfig32(0x00)
        return (UInt16(truncatingIfNeeded: v), UInt16(truncatingIfNeeded: v >> 16))
    }
}
