import CPCI
import Hardware
import SystemPackage

#if canImport(Glibc)
import Glibc
#endif

/// One PCI function as discovery sees it: IDs and names (libpci), and what sysfs says about
/// its driver, IOMMU group and NUMA node.
public struct PCIDevice: Sendable, Hashable {
    /// The function's address, e.g. `0000:00:04.0`.
    public var address: PCIAddress
    /// Vendor and device ID (config offsets 0x00 and 0x02).
    public var id: PCIID
    /// Subsystem vendor and device ID (config offsets 0x2C and 0x2E), when known.
    public var subsystem: PCIID?
    /// The 24-bit class code: base class, subclass, programming interface (config 0x09–0x0B).
    public var classCode: UInt32
    /// The revision ID (config 0x08).
    public var revision: UInt8
    /// The vendor's name from the PCI ID database, when known.
    public var vendorName: String?
    /// The device's name from the PCI ID database, when known.
    public var deviceName: String?
    /// The class's name from the PCI ID database, when known.
    public var className: String?
    /// The bound driver (`driver` link), nil when none.
    public var driver: String?
    /// The `driver_override` attribute, nil when unset.
    public var driverOverride: String?
    /// The IOMMU group (`iommu_group` link), nil when the IOMMU is off or the device has none.
    public var iommuGroup: Int?
    /// The NUMA node (`numa_node`), nil when the platform reports none (-1).
    public var numaNode: Int?
    /// The engine-table row when this is a known DMA engine.
    public var engine: EngineIdentity?

    /// Whether the function is a PCI-to-PCI bridge (class 0x0604).
    public var isBridge: Bool { classCode >> 8 == 0x0604 }

    /// A display name: the database name, else the engine's generation, else the IDs.
    public var displayName: String {
        if let deviceName { return deviceName }
        if let engine { return "\(engine.generation) (\(engine.platform))" }
        return "Device \(id)"
    }

    public init(address: PCIAddress, id: PCIID, subsystem: PCIID? = nil, classCode: UInt32 = 0, revision: UInt8 = 0,
                vendorName: String? = nil, deviceName: String? = nil, className: String? = nil,
                driver: String? = nil, driverOverride: String? = nil, iommuGroup: Int? = nil, numaNode: Int? = nil) {
        self.address = address
        self.id = id
        self.subsystem = subsystem
        self.classCode = classCode
        self.revision = revision
        self.vendorName = vendorName
        self.deviceName = deviceName
        self.className = className
        self.driver = driver
        self.driverOverride = driverOverride
        self.iommuGroup = iommuGroup
        self.numaNode = numaNode
        self.engine = EngineTable.identify(id)
    }
}

/// Whether a device can be opened through VFIO now and, if not, why and what to do.
public struct VFIOReadiness: Sendable, Hashable {
    /// The error opening the device would give, nil when it is ready.
    public var problem: DriverError?
    /// Whether the device can be opened through VFIO now.
    public var isReady: Bool { problem == nil }
    /// The reason it is not ready, for tables ("ready" when it is).
    public var summary: String { problem?.message ?? "ready" }

    public static let ready = VFIOReadiness(problem: nil)
    public init(problem: DriverError?) { self.problem = problem }
}

/// What `bind` or `unbind` did.
public struct BindOutcome: Sendable, Hashable {
    /// The device.
    public var address: PCIAddress
    /// The driver bound before.
    public var previousDriver: String?
    /// The driver bound afterwards (as sysfs reports it once the request is written).
    public var currentDriver: String?
    /// False when nothing had to be done (already bound as asked).
    public var changed: Bool
}

/// Finds PCI functions and DMA engines, explains whether each is ready for VFIO, and binds
/// them to or from `vfio-pci`.
///
/// Enumeration uses libpci on the live system (`/sys`) and the sysfs tree itself under any
/// other root; names always come from libpci's ID database. Every per-device attribute comes
/// from sysfs: `driver`, `driver_override`, `iommu_group`, `numa_node`.
///
/// ```swift
/// let discovery = PCIDiscovery()
/// for engine in discovery.engines() where !discovery.readiness(of: engine).isReady { ... }
/// ```
public struct PCIDiscovery: Sendable {
    /// The sysfs tree read and written.
    public let sysfs: Sysfs
    /// The directory that stands for `/dev` (for `/dev/vfio/N`).
    public let devRoot: String
    /// Where `bind` remembers each device's previous driver so `unbind` can restore it.
    public let stateDirectory: String

    /// Drivers that leave an IOMMU group viable for VFIO (the kernel's allow-list plus vfio-pci).
    public static let viableDrivers: Set<String> = ["vfio-pci", "pci-stub"]

    /// Creates discovery over a sysfs tree.
    ///
    /// - Parameters:
    ///   - sysfsRoot: the directory standing for `/sys` (tests use a fake tree).
    ///   - devRoot: the directory standing for `/dev`.
    ///   - stateDirectory: where bind records previous drivers (default `/run/netdma`).
    public init(sysfsRoot: String = "/sys", devRoot: String = "/dev", stateDirectory: String = "/run/netdma") {
        self.sysfs = Sysfs(root: sysfsRoot)
        self.devRoot = devRoot
        self.stateDirectory = stateDirectory
    }

    // MARK: Enumeration

    /// Every PCI function, sorted by address.
    public func devices() -> [PCIDevice] {
        var addresses: [(PCIAddress, PCIID?, UInt32?)] = []
        if sysfs.isLive, sysfs.exists("bus/pci/devices"), let scanned = PCIDiscovery.libpciScan() {
            addresses = scanned.map { ($0.0, $0.1, $0.2) }
        } else {
            addresses = sysfs.list("bus/pci/devices").compactMap { PCIAddress($0) }.map { ($0, nil, nil) }
        }
        let names = PCINames()
        return addresses.compactMap { entry in
            makeDevice(entry.0, id: entry.1, classCode: entry.2, names: names)
        }.sorted { $0.address < $1.address }
    }

    /// Checks that the sysfs tree has a PCI bus to enumerate, so that an empty listing means
    /// "no devices", never "wrong or missing sysfs".
    ///
    /// - Throws: ``DriverError`` `.notFound` when `bus/pci/devices` is missing under the root.
    public func requirePCIBus() throws(DriverError) {
        guard sysfs.exists("bus/pci/devices") else {
            throw DriverError(.notFound, errno: .noSuchFileOrDirectory,
                "\(sysfs.path("bus/pci/devices")) does not exist: sysfs is not mounted there. Mount it (`mount -t sysfs sysfs /sys`) or, in a container, bind-mount the host's /sys.")
        }
    }

    /// Known DMA engines (CBDMA, DSA, IAA and QEMU edu), sorted by address.
    public func engines() -> [PCIDevice] { devices().filter { $0.engine != nil } }

    /// The function at `address`.
    ///
    /// - Throws: ``DriverError`` `.notFound` when sysfs has no such device.
    public func device(at address: PCIAddress) throws(DriverError) -> PCIDevice {
        guard let d = makeDevice(address, id: nil, classCode: nil, names: PCINames()) else {
            throw DriverError(.notFound, errno: .noSuchFileOrDirectory,
                "No PCI device \(address): \(sysfs.path("bus/pci/devices/\(address)")) does not exist. `netdma list --all` shows the devices present.")
        }
        return d
    }

    /// The addresses of every function in IOMMU group `group` (`/sys/kernel/iommu_groups/N/devices`).
    public func groupMembers(_ group: Int) -> [PCIAddress] {
        sysfs.list("kernel/iommu_groups/\(group)/devices").compactMap { PCIAddress($0) }.sorted()
    }

    /// The other functions in `device`'s IOMMU group that make it not viable: bound to a driver
    /// other than vfio-pci/pci-stub, and not bridges.
    public func groupBlockers(of device: PCIDevice) -> [PCIDevice] {
        guard let g = device.iommuGroup else { return [] }
        return groupMembers(g).filter { $0 != device.address }.compactMap { try? self.device(at: $0) }.filter { m in
            guard let drv = m.driver else { return false }
            return !PCIDiscovery.viableDrivers.contains(drv) && !m.isBridge
        }
    }

    /// Whether `device` can be opened through VFIO now and, if not, the error that says why.
    public func readiness(of device: PCIDevice) -> VFIOReadiness {
        let bdf = device.address.description
        guard let group = device.iommuGroup else {
            return VFIOReadiness(problem: DriverError(.noIOMMU,
                "\(bdf) has no IOMMU group: the IOMMU is off. Add `intel_iommu=on iommu=pt` (AMD: `amd_iommu=on iommu=pt`) to the kernel command line, enable VT-d in firmware, and reboot."))
        }
        if device.driver != "vfio-pci" {
            let now = device.driver.map { "is bound to \($0)" } ?? "has no driver"
            return VFIOReadiness(problem: DriverError(.wrongDriver,
                "\(bdf) \(now), not vfio-pci. Run `sudo netdma bind \(bdf)`."))
        }
        let blockers = groupBlockers(of: device)
        if !blockers.isEmpty {
            return VFIOReadiness(problem: PCIDiscovery.notViable(group: group, device: device, blockers: blockers))
        }
        let node = devRoot + "/vfio/\(group)"
        if access(node, F_OK) != 0 {
            return VFIOReadiness(problem: DriverError(.notFound, errno: .noSuchFileOrDirectory,
                "\(node) does not exist although \(bdf) is bound to vfio-pci; check `dmesg` for vfio errors."))
        }
        if access(node, R_OK | W_OK) != 0 {
            return VFIOReadiness(problem: PCIDiscovery.permissionProblem(node))
        }
        return .ready
    }

    /// The error for an IOMMU group that holds devices bound to other drivers.
    public static func notViable(group: Int, device: PCIDevice, blockers: [PCIDevice]) -> DriverError {
        let names = blockers.map { "\($0.address) (\($0.driver ?? "no driver"))" }.joined(separator: ", ")
        let bdfs = blockers.map(\.address.description).joined(separator: " ")
        return DriverError(.groupNotViable,
            "IOMMU group \(group) of \(device.address) is not viable: it also holds \(names). Every device in the group must be bound to vfio-pci or unbound: run `sudo netdma bind --force \(bdfs)`, or move the card to a slot with its own group.")
    }

    /// The error for `/dev/vfio/...` that exists but cannot be opened.
    public static func permissionProblem(_ node: String) -> DriverError {
        DriverError(.permissionDenied, errno: .permissionDenied,
            "No permission to open \(node). Run as root, or install udev/60-netdma-vfio.rules (see README), add yourself to the `vfio` group and log in again; also raise RLIMIT_MEMLOCK for DMA memory.")
    }

    // MARK: Binding

    /// Binds each device to vfio-pci: records its driver, sets `driver_override`, unbinds it and
    /// asks the kernel to probe it again (`drivers_probe`).
    ///
    /// - Parameters:
    ///   - address: the device.
    ///   - force: bind even when it is not a known DMA engine.
    /// - Throws: ``DriverError`` `.invalidArgument` for a non-engine without `force`,
    ///   `.notFound`, `.unsupported` when vfio-pci is not available, or a sysfs write error.
    public func bindToVFIO(_ address: PCIAddress, force: Bool = false) throws(DriverError) -> BindOutcome {
        let d = try device(at: address)
        guard d.engine != nil || force else {
            throw DriverError(.invalidArgument,
                "\(address) [\(d.id)] \(d.displayName) is not a known DMA engine; refusing to bind it to vfio-pci. Pass --force to bind it anyway (this takes the device away from its driver).")
        }
        if d.driver == "vfio-pci" {
            return BindOutcome(address: address, previousDriver: d.driver, currentDriver: d.driver, changed: false)
        }
        try ensureVFIOPCIDriver()
        try rememberPreviousDriver(d)
        let bdf = address.description
        try sysfs.write("bus/pci/devices/\(bdf)/driver_override", "vfio-pci")
        if d.driver != nil {
            try sysfs.write("bus/pci/devices/\(bdf)/driver/unbind", bdf)
        }
        try sysfs.write("bus/pci/drivers_probe", bdf)
        let now = sysfs.linkName("bus/pci/devices/\(bdf)/driver")
        return BindOutcome(address: address, previousDriver: d.driver, currentDriver: now, changed: true)
    }

    /// Returns a device from vfio-pci to the driver it had before ``bindToVFIO(_:force:)``
    /// (or to whatever the kernel picks when none was recorded).
    public func unbindFromVFIO(_ address: PCIAddress) throws(DriverError) -> BindOutcome {
        let d = try device(at: address)
        let bdf = address.description
        guard d.driver == "vfio-pci" || d.driverOverride == "vfio-pci" else {
            return BindOutcome(address: address, previousDriver: d.driver, currentDriver: d.driver, changed: false)
        }
        let recorded = Sysfs.readFile(statePath(address)).map { $0.filter { !$0.isWhitespace } }
        try sysfs.write("bus/pci/devices/\(bdf)/driver_override", "\n")
        if d.driver != nil {
            try sysfs.write("bus/pci/devices/\(bdf)/driver/unbind", bdf)
        }
        if let recorded, !recorded.isEmpty, recorded != "vfio-pci", sysfs.exists("bus/pci/drivers/\(recorded)") {
            try sysfs.write("bus/pci/drivers/\(recorded)/bind", bdf)
        } else {
            try sysfs.write("bus/pci/drivers_probe", bdf)
        }
        unlink(statePath(address))
        let now = sysfs.linkName("bus/pci/devices/\(bdf)/driver")
        return BindOutcome(address: address, previousDriver: d.driver, currentDriver: now, changed: true)
    }

    /// The file that records `address`'s driver before binding.
    public func statePath(_ address: PCIAddress) -> String { stateDirectory + "/\(address).driver" }

    private func rememberPreviousDriver(_ d: PCIDevice) throws(DriverError) {
        var path = ""
        for part in stateDirectory.split(separator: "/") {
            path += "/" + part
            if mkdir(path, 0o755) != 0 && errno != EEXIST {
                throw DriverError.systemCall("mkdir", Errno(rawValue: errno), path)
            }
        }
        let file = statePath(d.address)
        let fd = open(file, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
        guard fd >= 0 else { throw DriverError.systemCall("open", Errno(rawValue: errno), file) }
        defer { close(fd) }
        let text = Array(((d.driver ?? "") + "\n").utf8)
        _ = text.withUnsafeBytes { Glibc.write(fd, $0.baseAddress!, $0.count) }
    }

    private func ensureVFIOPCIDriver() throws(DriverError) {
        if sysfs.exists("bus/pci/drivers/vfio-pci") { return }
        if sysfs.isLive { PCIDiscovery.runModprobe("vfio-pci") }
        guard sysfs.exists("bus/pci/drivers/vfio-pci") else {
            throw DriverError(.unsupported, errno: .noSuchFileOrDirectory,
                "The vfio-pci driver is not loaded and `modprobe vfio-pci` did not load it. Install a kernel with CONFIG_VFIO_PCI and run `sudo modprobe vfio-pci`.")
        }
    }

    /// Runs `modprobe <module>` and waits for it; failures show up as the module still missing.
    static func runModprobe(_ module: String) {
        var pid: pid_t = 0
        let argv = ["modprobe", module]
        var cargs: [UnsafeMutablePointer<CChar>?] = argv.map { strdup($0) } + [nil]
        defer { for p in cargs { free(p) } }
        guard posix_spawnp(&pid, "modprobe", nil, nil, &cargs, environ) == 0 else { return }
        var status: Int32 = 0
        while waitpid(pid, &status, 0) < 0 && errno == EINTR {}
    }

    // MARK: Internals

    private func makeDevice(_ address: PCIAddress, id known: PCIID?, classCode knownClass: UInt32?,
                            names: PCINames) -> PCIDevice? {
        let dir = "bus/pci/devices/\(address)"
        guard sysfs.exists(dir) else { return nil }
        let id: PCIID
        if let known {
            id = known
        } else {
            guard let v = sysfs.readInteger(dir + "/vendor"), let dv = sysfs.readInteger(dir + "/device") else { return nil }
            id = PCIID(vendor: UInt16(truncatingIfNeeded: v), device: UInt16(truncatingIfNeeded: dv))
        }
        let cls = knownClass ?? sysfs.readInteger(dir + "/class").map { UInt32(truncatingIfNeeded: $0) } ?? 0
        var subsystem: PCIID? = nil
        if let sv = sysfs.readInteger(dir + "/subsystem_vendor"), let sd = sysfs.readInteger(dir + "/subsystem_device") {
            subsystem = PCIID(vendor: UInt16(truncatingIfNeeded: sv), device: UInt16(truncatingIfNeeded: sd))
        }
        let override = sysfs.read(dir + "/driver_override").flatMap { $0.isEmpty || $0 == "(null)" ? nil : $0 }
        let node = sysfs.readInteger(dir + "/numa_node").flatMap { $0 < 0 ? nil : $0 }
        return PCIDevice(
            address: address, id: id, subsystem: subsystem, classCode: cls,
            revision: UInt8(truncatingIfNeeded: sysfs.readInteger(dir + "/revision") ?? 0),
            vendorName: names.vendor(id.vendor), deviceName: names.device(id),
            className: names.className(cls >> 8),
            driver: sysfs.linkName(dir + "/driver"), driverOverride: override,
            iommuGroup: sysfs.linkName(dir + "/iommu_group").flatMap { Int($0) }, numaNode: node)
    }

    /// Scans the bus with libpci: address, IDs and class of every function; nil if libpci
    /// cannot be initialised.
    static func libpciScan() -> [(PCIAddress, PCIID, UInt32)]? {
        guard let acc = pci_alloc() else { return nil }
        defer { pci_cleanup(acc) }
        pci_init(acc)
        pci_scan_bus(acc)
        var out: [(PCIAddress, PCIID, UInt32)] = []
        var d = acc.pointee.devices
        while let dev = d {
            pci_fill_info(dev, Int32(PCI_FILL_IDENT | PCI_FILL_CLASS))
            let p = dev.pointee
            if p.dev < 32 && p.func < 8 {
                let a = PCIAddress(domain: UInt16(truncatingIfNeeded: p.domain_16), bus: p.bus, device: p.dev, function: p.func)
                // libpci's device_class is base+sub (16 bits); the programming interface is config 0x09.
                let progIf = UInt32(pci_read_byte(dev, Int32(PCI_CLASS_PROG)))
                out.append((a, PCIID(vendor: p.vendor_id, device: p.device_id), UInt32(p.device_class) << 8 | progIf))
            }
            d = p.next
        }
        return out
    }
}

/// Name lookups in libpci's PCI ID database (`pci.ids`); works without scanning the bus.
final class PCINames {
    private let acc: UnsafeMutablePointer<pci_access>?

    init() {
        acc = pci_alloc()
        if let acc { cpci_set_hooks(acc) }
    }
    deinit { if let acc { pci_cleanup(acc) } }

    private func lookup(_ body: (UnsafeMutablePointer<pci_access>, UnsafeMutablePointer<CChar>, Int32) -> UnsafeMutablePointer<CChar>?) -> String? {
        guard let acc else { return nil }
        var buf = [CChar](repeating: 0, count: 256)
        return buf.withUnsafeMutableBufferPointer { b -> String? in
            guard let r = body(acc, b.baseAddress!, Int32(b.count)) else { return nil }
            return String(cString: r)
        }
    }

    func vendor(_ v: UInt16) -> String? {
        lookup { a, b, n in cpci_lookup_vendor_name(a, b, n, v) }.flatMap(Self.known)
    }
    func device(_ id: PCIID) -> String? {
        lookup { a, b, n in cpci_lookup_device_name(a, b, n, id.vendor, id.device) }.flatMap(Self.known)
    }
    func className(_ cls: UInt32) -> String? {
        lookup { a, b, n in cpci_lookup_class_name(a, b, n, cls) }.flatMap(Self.known)
    }
    /// libpci answers "Device 1234" or "Class 0880" for unknown IDs; treat those as unknown.
    private static func known(_ s: String) -> String? {
        s.hasPrefix("Device ") || s.hasPrefix("Class ") || s.hasPrefix("Vendor ") || s.hasPrefix("<") ? nil : s
    }
}
