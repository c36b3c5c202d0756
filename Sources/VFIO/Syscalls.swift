import CVFIO

#if canImport(Glibc)
import Glibc
#endif

/// One VFIO ioctl with its argument. The live table calls the typed `cvfio_*` wrapper for each;
/// a test table interprets them to play the kernel's part.
enum VFIOIoctl {
    /// `VFIO_GET_API_VERSION` (container).
    case getAPIVersion
    /// `VFIO_CHECK_EXTENSION` (container).
    case checkExtension(UInt)
    /// `VFIO_SET_IOMMU` (container).
    case setIOMMU(UInt)
    /// `VFIO_IOMMU_GET_INFO` (container); the buffer starts with `vfio_iommu_type1_info`.
    case iommuGetInfo(UnsafeMutableRawPointer)
    /// `VFIO_IOMMU_MAP_DMA` (container).
    case mapDMA(UnsafeMutablePointer<vfio_iommu_type1_dma_map>)
    /// `VFIO_IOMMU_UNMAP_DMA` (container).
    case unmapDMA(UnsafeMutablePointer<vfio_iommu_type1_dma_unmap>)
    /// `VFIO_GROUP_GET_STATUS` (group).
    case groupGetStatus(UnsafeMutablePointer<vfio_group_status>)
    /// `VFIO_GROUP_SET_CONTAINER` (group) with the container fd.
    case groupSetContainer(Int32)
    /// `VFIO_GROUP_UNSET_CONTAINER` (group).
    case groupUnsetContainer
    /// `VFIO_GROUP_GET_DEVICE_FD` (group) with the device's name; returns the fd.
    case groupGetDeviceFD(String)
    /// `VFIO_DEVICE_GET_INFO` (device).
    case deviceGetInfo(UnsafeMutablePointer<vfio_device_info>)
    /// `VFIO_DEVICE_GET_REGION_INFO` (device); the buffer starts with `vfio_region_info`.
    case deviceGetRegionInfo(UnsafeMutableRawPointer)
    /// `VFIO_DEVICE_GET_IRQ_INFO` (device).
    case deviceGetIRQInfo(UnsafeMutablePointer<vfio_irq_info>)
    /// `VFIO_DEVICE_SET_IRQS` (device); the buffer starts with `vfio_irq_set`, data follows.
    case deviceSetIRQs(UnsafeMutableRawPointer)
    /// `VFIO_DEVICE_RESET` (device).
    case deviceReset

    /// The ioctl's name, for messages.
    var name: String {
        switch self {
        case .getAPIVersion: "VFIO_GET_API_VERSION"
        case .checkExtension: "VFIO_CHECK_EXTENSION"
        case .setIOMMU: "VFIO_SET_IOMMU"
        case .iommuGetInfo: "VFIO_IOMMU_GET_INFO"
        case .mapDMA: "VFIO_IOMMU_MAP_DMA"
        case .unmapDMA: "VFIO_IOMMU_UNMAP_DMA"
        case .groupGetStatus: "VFIO_GROUP_GET_STATUS"
        case .groupSetContainer: "VFIO_GROUP_SET_CONTAINER"
        case .groupUnsetContainer: "VFIO_GROUP_UNSET_CONTAINER"
        case .groupGetDeviceFD: "VFIO_GROUP_GET_DEVICE_FD"
        case .deviceGetInfo: "VFIO_DEVICE_GET_INFO"
        case .deviceGetRegionInfo: "VFIO_DEVICE_GET_REGION_INFO"
        case .deviceGetIRQInfo: "VFIO_DEVICE_GET_IRQ_INFO"
        case .deviceSetIRQs: "VFIO_DEVICE_SET_IRQS"
        case .deviceReset: "VFIO_DEVICE_RESET"
        }
    }
}

/// The system calls the VFIO layer makes, as a table tests can replace (the interposition
/// idea of swift-system's `Mocking.swift`, passed explicitly instead of a global switch).
///
/// Every call returns its result or `-errno`, the shim's convention; nothing reads `errno`.
protocol VFIOSyscalls: Sendable {
    /// open(2); the fd or -errno.
    func open(_ path: String, flags: Int32) -> Int32
    /// close(2).
    func close(_ fd: Int32)
    /// One VFIO ioctl; its result or -errno.
    func ioctl(_ fd: Int32, _ request: VFIOIoctl) -> Int32
    /// pread(2); bytes read or -errno.
    func pread(_ fd: Int32, _ buffer: UnsafeMutableRawBufferPointer, offset: Int64) -> Int
    /// pwrite(2); bytes written or -errno.
    func pwrite(_ fd: Int32, _ buffer: UnsafeRawBufferPointer, offset: Int64) -> Int
    /// mmap(2); the mapping, or nil and the errno.
    func mmap(_ address: UnsafeMutableRawPointer?, length: Int, prot: Int32, flags: Int32, fd: Int32,
              offset: Int64) -> (UnsafeMutableRawPointer?, Int32)
}

/// The real system calls.
struct LiveVFIOSyscalls: VFIOSyscalls {
    func open(_ path: String, flags: Int32) -> Int32 {
        while true {
            let fd = Glibc.open(path, flags | O_CLOEXEC)
            if fd >= 0 { return fd }
            if errno != EINTR { return -errno }
        }
    }

    func close(_ fd: Int32) { _ = Glibc.close(fd) }

    func ioctl(_ fd: Int32, _ request: VFIOIoctl) -> Int32 {
        switch request {
        case .getAPIVersion: cvfio_get_api_version(fd)
        case .checkExtension(let e): cvfio_check_extension(fd, e)
        case .setIOMMU(let t): cvfio_set_iommu(fd, t)
        case .iommuGetInfo(let p): cvfio_iommu_get_info(fd, p.assumingMemoryBound(to: vfio_iommu_type1_info.self))
        case .mapDMA(let m): cvfio_iommu_map_dma(fd, m)
        case .unmapDMA(let u): cvfio_iommu_unmap_dma(fd, u)
        case .groupGetStatus(let s): cvfio_group_get_status(fd, s)
        case .groupSetContainer(let c): cvfio_group_set_container(fd, c)
        case .groupUnsetContainer: cvfio_group_unset_container(fd)
        case .groupGetDeviceFD(let name): name.withCString { cvfio_group_get_device_fd(fd, $0) }
        case .deviceGetInfo(let i): cvfio_device_get_info(fd, i)
        case .deviceGetRegionInfo(let p): cvfio_device_get_region_info(fd, p.assumingMemoryBound(to: vfio_region_info.self))
        case .deviceGetIRQInfo(let i): cvfio_device_get_irq_info(fd, i)
        case .deviceSetIRQs(let p): cvfio_device_set_irqs(fd, p.assumingMemoryBound(to: vfio_irq_set.self))
        case .deviceReset: cvfio_device_reset(fd)
        }
    }

    func pread(_ fd: Int32, _ buffer: UnsafeMutableRawBufferPointer, offset: Int64) -> Int {
        while true {
            let n = Glibc.pread(fd, buffer.baseAddress, buffer.count, off_t(offset))
            if n >= 0 { return n }
            if errno != EINTR { return -Int(errno) }
        }
    }

    func pwrite(_ fd: Int32, _ buffer: UnsafeRawBufferPointer, offset: Int64) -> Int {
        while true {
            let n = Glibc.pwrite(fd, buffer.baseAddress, buffer.count, off_t(offset))
            if n >= 0 { return n }
            if errno != EINTR { return -Int(errno) }
        }
    }

    func mmap(_ address: UnsafeMutableRawPointer?, length: Int, prot: Int32, flags: Int32, fd: Int32,
              offset: Int64) -> (UnsafeMutableRawPointer?, Int32) {
        let p = Glibc.mmap(address, length, prot, flags, fd, off_t(offset))
        guard let p, p != MAP_FAILED else { return (nil, errno) }
        return (p, 0)
    }
}
