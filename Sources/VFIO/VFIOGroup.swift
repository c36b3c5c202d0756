import CVFIO
import Platform
import SystemPackage

#if canImport(Glibc)
import Glibc
#endif

/// An IOMMU group (`/dev/vfio/N`) attached to a ``VFIOContainer``: the unit of isolation.
///
/// Every device in a group shares the container's IOMMU mappings. A group is viable only when
/// every device in it is bound to vfio-pci (or pci-stub, or nothing); opening a non-viable
/// group fails with an error that names the devices in the way.
///
/// The group keeps its container alive; leaving (`VFIO_GROUP_UNSET_CONTAINER`) and closing
/// happen when the last device of the group goes away.
public final class VFIOGroup: Sendable {
    /// The group number (`/dev/vfio/<number>`).
    public let number: Int
    /// The group's file descriptor.
    public let fd: Int32
    /// The container the group is attached to.
    public let container: VFIOContainer

    /// Opens `/dev/vfio/<number>`, checks viability (`VFIO_GROUP_GET_STATUS`) and attaches the
    /// group to `container` (`VFIO_GROUP_SET_CONTAINER`, then `VFIO_SET_IOMMU` for the first group).
    init(number: Int, container: VFIOContainer) throws(DriverError) {
        self.number = number
        self.container = container
        let system = container.system
        let discovery = container.discovery
        let path = discovery.devRoot + "/vfio/\(number)"
        let fd = system.open(path, flags: O_RDWR)
        if fd < 0 {
            let e = Errno(rawValue: -fd)
            switch e {
            case .permissionDenied, .notPermitted:
                throw PCIDiscovery.permissionProblem(path)
            case .resourceBusy:
                throw DriverError(.busy, errno: e,
                    "\(path) is already open: another process (another netdma, a DPDK application or QEMU) owns IOMMU group \(number).")
            case .noSuchFileOrDirectory, .noSuchAddressOrDevice:
                throw VFIOGroup.missingGroupError(number, path: path, discovery: discovery, errno: e)
            default:
                throw DriverError.systemCall("open", e, path)
            }
        }
        var status = vfio_group_status()
        status.argsz = UInt32(MemoryLayout<vfio_group_status>.size)
        let r = withUnsafeMutablePointer(to: &status) { system.ioctl(fd, .groupGetStatus($0)) }
        if r < 0 {
            system.close(fd)
            throw DriverError.systemCall("VFIO_GROUP_GET_STATUS", Errno(rawValue: -r), path)
        }
        if status.flags & UInt32(VFIO_GROUP_FLAGS_VIABLE) == 0 {
            system.close(fd)
            throw VFIOGroup.notViableError(number, discovery: discovery)
        }
        let s = system.ioctl(fd, .groupSetContainer(container.fd))
        if s < 0 {
            system.close(fd)
            let e = Errno(rawValue: -s)
            if e == .resourceBusy {
                throw DriverError(.busy, errno: e, "IOMMU group \(number) is already attached to another container.")
            }
            throw DriverError.systemCall("VFIO_GROUP_SET_CONTAINER", e, path)
        }
        do {
            try container.groupAttached(number)
        } catch {
            _ = system.ioctl(fd, .groupUnsetContainer)
            system.close(fd)
            throw error
        }
        self.fd = fd
    }

    deinit {
        _ = container.system.ioctl(fd, .groupUnsetContainer)
        container.system.close(fd)
        container.groupDetached(number)
    }

    /// The PCI functions in this group, from sysfs.
    public var members: [PCIAddress] { container.discovery.groupMembers(number) }

    /// Opens a device of this group by PCI address (`VFIO_GROUP_GET_DEVICE_FD`).
    ///
    /// - Throws: ``DriverError`` `.notFound` (not in this group), `.busy` (open elsewhere).
    public func openDevice(_ address: PCIAddress) throws(DriverError) -> VFIODevice {
        let name = address.description
        let dfd = container.system.ioctl(fd, .groupGetDeviceFD(name))
        if dfd < 0 {
            let e = Errno(rawValue: -dfd)
            switch e {
            case .resourceBusy:
                throw DriverError(.busy, errno: e, "\(name) is already open through VFIO in this or another process.")
            case .invalidArgument, .operationNotSupportedByDevice, .noSuchFileOrDirectory:
                throw DriverError(.notFound, errno: e,
                    "\(name) is not a device of IOMMU group \(number) (members: \(members.map(\.description).joined(separator: ", "))).")
            default:
                throw DriverError.systemCall("VFIO_GROUP_GET_DEVICE_FD", e, name)
            }
        }
        return try VFIODevice(address: address, fd: dfd, group: self)
    }

    /// The error when `/dev/vfio/N` does not exist: explain from sysfs why.
    static func missingGroupError(_ number: Int, path: String, discovery: PCIDiscovery, errno e: Errno) -> DriverError {
        let members = discovery.groupMembers(number).compactMap { try? discovery.device(at: $0) }
        if let engine = members.first(where: { $0.driver != "vfio-pci" && $0.engine != nil }) ?? members.first(where: { $0.driver != "vfio-pci" }),
           let problem = discovery.readiness(of: engine).problem {
            return problem
        }
        if members.isEmpty && !discovery.sysfs.exists("kernel/iommu_groups") {
            return DriverError(.noIOMMU, errno: e,
                "\(path) does not exist and the kernel has no IOMMU groups: the IOMMU is off. Add `intel_iommu=on iommu=pt` to the kernel command line and reboot.")
        }
        return DriverError(.notFound, errno: e,
            "\(path) does not exist: no device of IOMMU group \(number) is bound to vfio-pci. Run `sudo netdma bind <BDF>`.")
    }

    /// The error for a group the kernel calls not viable, naming the devices in the way.
    static func notViableError(_ number: Int, discovery: PCIDiscovery) -> DriverError {
        let members = discovery.groupMembers(number).compactMap { try? discovery.device(at: $0) }
        let blockers = members.filter { m in
            guard let d = m.driver else { return false }
            return !PCIDiscovery.viableDrivers.contains(d) && !m.isBridge
        }
        if let first = members.first(where: { $0.driver == "vfio-pci" }) ?? members.first, !blockers.isEmpty {
            return PCIDiscovery.notViable(group: number, device: first, blockers: blockers)
        }
        let all = members.map { "\($0.address) (\($0.driver ?? "no driver"))" }.joined(separator: ", ")
        return DriverError(.groupNotViable,
            "IOMMU group \(number) is not viable: every device in it must be bound to vfio-pci or unbound. Members: \(all.isEmpty ? "unknown" : all).")
    }
}
