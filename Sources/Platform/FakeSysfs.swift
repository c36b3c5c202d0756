import Hardware
import SystemPackage

#if canImport(Glibc)
import Glibc
#endif

/// A fake sysfs (and `/dev`) tree in a temporary directory, shaped like the kernel's, for tests
/// and dry runs of discovery, binding and VFIO error paths.
///
/// ```swift
/// let tree = try FakeSysfsTree()
/// try tree.addDevice(PCIAddress("0000:00:04.0")!, id: PCIID(vendor: 0x8086, device: 0x0b00),
///                    driver: "ioatdma", iommuGroup: 5, numaNode: 0)
/// let discovery = PCIDiscovery(sysfsRoot: tree.sysfsRoot, devRoot: tree.devRoot, stateDirectory: tree.stateDirectory)
/// ```
public final class FakeSysfsTree: Sendable {
    /// The temporary directory holding everything.
    public let directory: String
    /// The directory standing for `/sys`.
    public var sysfsRoot: String { directory + "/sys" }
    /// The directory standing for `/dev`.
    public var devRoot: String { directory + "/dev" }
    /// A state directory for bind records.
    public var stateDirectory: String { directory + "/run" }

    /// Creates an empty tree (`bus/pci/devices`, `bus/pci/drivers`, `drivers_probe`, `kernel/iommu_groups`).
    public init() throws(DriverError) {
        var template = Array("/tmp/netdma-sysfs-XXXXXX".utf8CString)
        guard let p = template.withUnsafeMutableBufferPointer({ mkdtemp($0.baseAddress!) }) else {
            throw DriverError.systemCall("mkdtemp", Errno(rawValue: errno))
        }
        directory = String(cString: p)
        for d in ["sys/bus/pci/devices", "sys/bus/pci/drivers", "sys/kernel/iommu_groups", "dev/vfio",
                  "sys/kernel/mm/hugepages/hugepages-2048kB"] {
            try makeDirectories(directory + "/" + d)
        }
        try writeFile("sys/bus/pci/drivers_probe", "")
    }

    deinit { FakeSysfsTree.removeTree(directory) }

    /// Adds a PCI function.
    ///
    /// - Parameters:
    ///   - driver: bound driver (creates `bus/pci/drivers/<driver>` with `bind`/`unbind`).
    ///   - iommuGroup: group number (creates `kernel/iommu_groups/N/devices/<bdf>`), nil for none.
    ///   - numaNode: written to `numa_node` (-1 when nil).
    ///   - classCode: 24-bit class (default 0x088000, "other system peripheral").
    ///   - vfioNode: also create `/dev/vfio/N` for the group.
    public func addDevice(_ address: PCIAddress, id: PCIID, driver: String? = nil, iommuGroup: Int? = nil,
                          numaNode: Int? = nil, classCode: UInt32 = 0x088000, vfioNode: Bool = false) throws(DriverError) {
        let rel = "sys/bus/pci/devices/\(address)"
        try makeDirectories(directory + "/" + rel)
        try writeFile(rel + "/vendor", "0x" + hex(UInt64(id.vendor), 4) + "\n")
        try writeFile(rel + "/device", "0x" + hex(UInt64(id.device), 4) + "\n")
        try writeFile(rel + "/subsystem_vendor", "0x" + hex(UInt64(id.vendor), 4) + "\n")
        try writeFile(rel + "/subsystem_device", "0x0000\n")
        try writeFile(rel + "/class", "0x" + hex(UInt64(classCode), 6) + "\n")
        try writeFile(rel + "/revision", "0x00\n")
        try writeFile(rel + "/numa_node", "\(numaNode ?? -1)\n")
        try writeFile(rel + "/driver_override", "(null)\n")
        if let driver { try setDriver(address, driver) }
        if let g = iommuGroup {
            try makeDirectories(directory + "/sys/kernel/iommu_groups/\(g)/devices")
            try symlink("../../../devices/pci0000:00/\(address)", "sys/kernel/iommu_groups/\(g)/devices/\(address)")
            try symlink("../../../../kernel/iommu_groups/\(g)", rel + "/iommu_group")
            if vfioNode { try writeFile("dev/vfio/\(g)", "") }
        }
    }

    /// Binds `address` to `driver` (nil: unbinds), as the kernel would after a probe.
    public func setDriver(_ address: PCIAddress, _ driver: String?) throws(DriverError) {
        let rel = "sys/bus/pci/devices/\(address)/driver"
        unlink(directory + "/" + rel)
        guard let driver else { return }
        let drv = "sys/bus/pci/drivers/\(driver)"
        if access(directory + "/" + drv, F_OK) != 0 {
            try makeDirectories(directory + "/" + drv)
            try writeFile(drv + "/bind", "")
            try writeFile(drv + "/unbind", "")
        }
        try symlink("../../../../bus/pci/drivers/\(driver)", rel)
    }

    /// Adds the `vfio-pci` driver directory (as `modprobe vfio-pci` would).
    public func addDriver(_ driver: String) throws(DriverError) {
        let drv = "sys/bus/pci/drivers/\(driver)"
        try makeDirectories(directory + "/" + drv)
        try writeFile(drv + "/bind", "")
        try writeFile(drv + "/unbind", "")
    }

    /// Writes a file relative to the tree (creating it).
    public func writeFile(_ relative: String, _ text: String) throws(DriverError) {
        let p = directory + "/" + relative
        let fd = open(p, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
        guard fd >= 0 else { throw DriverError.systemCall("open", Errno(rawValue: errno), p) }
        defer { close(fd) }
        let bytes = Array(text.utf8)
        if !bytes.isEmpty { _ = bytes.withUnsafeBytes { write(fd, $0.baseAddress!, $0.count) } }
    }

    /// Reads a file relative to the tree.
    public func readFile(_ relative: String) -> String? { Sysfs.readFile(directory + "/" + relative) }

    private func symlink(_ target: String, _ relative: String) throws(DriverError) {
        let p = directory + "/" + relative
        unlink(p)
        if Glibc.symlink(target, p) != 0 { throw DriverError.systemCall("symlink", Errno(rawValue: errno), p) }
    }

    private func makeDirectories(_ path: String) throws(DriverError) {
        var p = ""
        for part in path.split(separator: "/") {
            p += "/" + part
            if mkdir(p, 0o755) != 0 && errno != EEXIST { throw DriverError.systemCall("mkdir", Errno(rawValue: errno), p) }
        }
    }

    private static func removeTree(_ path: String) {
        guard let dir = opendir(path) else { unlink(path); return }
        while let e = readdir(dir) {
            let name = withUnsafeBytes(of: e.pointee.d_name) { String(decoding: $0.prefix(while: { $0 != 0 }), as: UTF8.self) }
            if name == "." || name == ".." { continue }
            let child = path + "/" + name
            var st = stat()
            if lstat(child, &st) == 0 && (st.st_mode & S_IFMT) == S_IFDIR { removeTree(child) } else { unlink(child) }
        }
        closedir(dir)
        rmdir(path)
    }
}
