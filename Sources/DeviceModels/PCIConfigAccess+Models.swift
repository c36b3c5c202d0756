import Platform

/// The CBDMA model's configuration space, reached as a provider reaches a VFIO device's.
extension MockIOATDevice: PCIConfigAccess {
    public func readConfig32(_ offset: Int) throws(DriverError) -> UInt32 { config.read32(offset) }
    public func writeConfig32(_ offset: Int, _ value: UInt32) throws(DriverError) { config.write32(offset, value) }
}

/// The DSA model's configuration space, reached as a provider reaches a VFIO device's.
extension MockDSADevice: PCIConfigAccess {
    public func readConfig32(_ offset: Int) throws(DriverError) -> UInt32 { config.read32(offset) }
    public func writeConfig32(_ offset: Int, _ value: UInt32) throws(DriverError) { config.write32(offset, value) }
}
