import CVFIO
import Platform
import SystemPackage

/// Register access to a device region through `pread`/`pwrite` on the device fd, for regions
/// that cannot be mmapped (I/O-port BARs, BARs smaller than a page, sparse holes).
///
/// One system call per access: for setup and slow paths, never for a hot path.
public final class VFIORegionIO: RegisterIO, Sendable {
    /// The device.
    public let device: VFIODevice
    /// The region.
    public let info: VFIORegionInfo
    /// The region's size in bytes.
    public var length: Int { info.size }

    init(device: VFIODevice, info: VFIORegionInfo) {
        self.device = device
        self.info = info
    }

    private func read<T: FixedWidthInteger>(_ offset: Int, as: T.Type) -> T {
        let w = MemoryLayout<T>.size
        precondition(offset >= 0 && offset % w == 0 && offset + w <= info.size, "register offset out of range or misaligned")
        var v = T.zero
        let n = withUnsafeMutableBytes(of: &v) { device.system.pread(device.fd, $0, offset: info.offset + Int64(offset)) }
        precondition(n == w, "pread of region \(info.index) at 0x\(String(offset, radix: 16)) of \(device.address) failed (\(n))")
        return T(littleEndian: v)
    }

    private func write<T: FixedWidthInteger>(_ offset: Int, _ value: T) {
        let w = MemoryLayout<T>.size
        precondition(offset >= 0 && offset % w == 0 && offset + w <= info.size, "register offset out of range or misaligned")
        var v = value.littleEndian
        let n = withUnsafeBytes(of: &v) { device.system.pwrite(device.fd, $0, offset: info.offset + Int64(offset)) }
        precondition(n == w, "pwrite of region \(info.index) at 0x\(String(offset, radix: 16)) of \(device.address) failed (\(n))")
    }

    public func read8(_ offset: Int) -> UInt8 { read(offset, as: UInt8.self) }
    public func read16(_ offset: Int) -> UInt16 { read(offset, as: UInt16.self) }
    public func read32(_ offset: Int) -> UInt32 { read(offset, as: UInt32.self) }
    public func read64(_ offset: Int) -> UInt64 { read(offset, as: UInt64.self) }
    public func write8(_ offset: Int, _ value: UInt8) { write(offset, value) }
    public func write16(_ offset: Int, _ value: UInt16) { write(offset, value) }
    public func write32(_ offset: Int, _ value: UInt32) { write(offset, value) }
    public func write64(_ offset: Int, _ value: UInt64) { write(offset, value) }
}

extension VFIODevice {
    /// Register access to region `index` through the device fd (no mmap needed).
    ///
    /// - Throws: ``DriverError`` `.notFound` when the region is empty, `.unsupported` when it is
    ///   neither readable nor writable.
    public func regionIO(_ index: Int) throws(DriverError) -> VFIORegionIO {
        let info = try regionInfo(index)
        guard info.size > 0 else { throw DriverError(.notFound, "Region \(index) of \(address) is not implemented (size 0).") }
        guard info.isReadable || info.isWritable else {
            throw DriverError(.unsupported, "Region \(index) of \(address) is neither readable nor writable.")
        }
        return VFIORegionIO(device: self, info: info)
    }
}
