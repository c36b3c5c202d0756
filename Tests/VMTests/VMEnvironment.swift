import CVFIO
import Hardware
import Platform
import SystemPackage
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// The guest booted by `Scripts/vm-test`: its init sets `NETDMA_VM=1` and binds two QEMU `edu`
/// devices and one e1000e to vfio-pci. The VM tests are required there and skipped elsewhere.
enum VMEnvironment {
    /// Whether this process runs inside the test VM.
    static let isGuest: Bool = environment("NETDMA_VM") == "1"

    /// How many devices of each kind the runner put in the VM (so a missing device fails).
    static let expectedEduCount = Int(environment("NETDMA_VM_EDU_COUNT") ?? "") ?? 3
    static let expectedMSIXCount = Int(environment("NETDMA_VM_MSIX_COUNT") ?? "") ?? 1

    /// QEMU's e1000e (Intel 82574L): the MSI-X device.
    static let e1000eVendor: UInt16 = 0x8086
    static let e1000eDevice: UInt16 = 0x10D3

    /// A PCI function found in sysfs.
    struct PCIFunction: Sendable, CustomStringConvertible {
        var address: String
        var vendor: UInt16
        var device: UInt16
        var driver: String?
        var iommuGroup: Int?
        var description: String { "\(address) \(hex(vendor)):\(hex(device)) group \(iommuGroup.map(String.init) ?? "none")" }
    }

    /// Every PCI function with the given IDs, in address order.
    static func functions(vendor: UInt16, device: UInt16) -> [PCIFunction] {
        let root = "/sys/bus/pci/devices"
        guard let dir = opendir(root) else { return [] }
        defer { closedir(dir) }
        var found: [PCIFunction] = []
        while let entry = readdir(dir) {
            let name = withUnsafeBytes(of: entry.pointee.d_name) { string(Array($0.bindMemory(to: CChar.self))) }
            if name.hasPrefix(".") { continue }
            let path = "\(root)/\(name)"
            guard let v = readHex(path + "/vendor"), let d = readHex(path + "/device"), v == vendor, d == device else {
                continue
            }
            found.append(PCIFunction(address: name, vendor: v, device: d,
                                     driver: linkName(path + "/driver"),
                                     iommuGroup: linkName(path + "/iommu_group").flatMap { Int($0) }))
        }
        return found.sorted { $0.address < $1.address }
    }

    static var eduFunctions: [PCIFunction] { functions(vendor: Edu.vendorID, device: Edu.deviceID) }
    /// The edu devices alone in their IOMMU group (the runner also puts one behind a PCIe-to-PCI
    /// bridge, sharing its group with a virtio device bound to virtio-pci: a non-viable group).
    static var isolatedEduFunctions: [PCIFunction] {
        eduFunctions.filter { f in f.iommuGroup.map { groupMembers($0) == [f.address] } ?? false }
    }

    /// The PCI addresses in an IOMMU group (`/sys/kernel/iommu_groups/<n>/devices`).
    static func groupMembers(_ group: Int) -> [String] {
        guard let dir = opendir("/sys/kernel/iommu_groups/\(group)/devices") else { return [] }
        defer { closedir(dir) }
        var names: [String] = []
        while let entry = readdir(dir) {
            let name = withUnsafeBytes(of: entry.pointee.d_name) { string(Array($0.bindMemory(to: CChar.self))) }
            if !name.hasPrefix(".") { names.append(name) }
        }
        return names.sorted()
    }

    /// The driver bound to a PCI function, if any.
    static func driver(of address: String) -> String? { linkName("/sys/bus/pci/devices/\(address)/driver") }
    static var msixFunctions: [PCIFunction] { functions(vendor: e1000eVendor, device: e1000eDevice) }

    private static func environment(_ name: String) -> String? {
        getenv(name).map { String(cString: $0) }
    }

    private static func readHex(_ path: String) -> UInt16? {
        guard let f = fopen(path, "r") else { return nil }
        defer { fclose(f) }
        var buf = [CChar](repeating: 0, count: 32)
        guard fgets(&buf, 32, f) != nil else { return nil }
        let s = string(buf).trimmingPrefix("0x").filter { !$0.isWhitespace }
        return UInt16(s, radix: 16)
    }

    private static func linkName(_ path: String) -> String? {
        var buf = [CChar](repeating: 0, count: 4096)
        let n = readlink(path, &buf, buf.count - 1)
        guard n > 0 else { return nil }
        let target = string(buf)
        return target.split(separator: "/").last.map(String.init)
    }
}

/// A NUL-terminated C buffer as a String.
func string(_ buffer: [CChar]) -> String {
    String(decoding: buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
}

func hex<T: BinaryInteger>(_ value: T) -> String { "0x" + String(value, radix: 16) }

/// Reads the kernel log records (`/dev/kmsg`) that appear after ``init()``, without blocking.
///
/// The tests use it to see the IOMMU's fault reports (`DMAR: [DMA Write ...] fault addr ...`).
final class KernelLog {
    private let fd: Int32

    init() throws(DriverError) {
        let fd = open("/dev/kmsg", O_RDONLY | O_NONBLOCK | O_CLOEXEC)
        guard fd >= 0 else { throw DriverError.systemCall("open", Errno(rawValue: errno), "/dev/kmsg") }
        lseek(fd, 0, SEEK_END)  // only records logged from now on
        self.fd = fd
    }

    deinit { close(fd) }

    /// The messages logged since the last call (each record's text after the `;`).
    func newMessages() -> [String] {
        var out: [String] = []
        var buf = [UInt8](repeating: 0, count: 8192)
        while true {
            let n = read(fd, &buf, buf.count)
            if n < 0 && errno == EPIPE { continue }  // overwritten records: skip ahead
            guard n > 0 else { break }
            let record = String(decoding: buf[0..<n], as: UTF8.self)
            if let semi = record.firstIndex(of: ";") {
                out.append(String(record[record.index(after: semi)...]).trimmingCharacters(in: "\n"))
            }
        }
        return out
    }

    /// Waits up to `timeoutMilliseconds` for a message containing every string in `parts`.
    func waitForMessage(containing parts: [String], timeoutMilliseconds: Int) -> String? {
        let deadline = monotonicMilliseconds() + timeoutMilliseconds
        repeat {
            if let m = newMessages().first(where: { m in parts.allSatisfy { m.contains($0) } }) { return m }
            var p = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
            _ = poll(&p, 1, 20)
        } while monotonicMilliseconds() < deadline
        return nil
    }
}

func monotonicMilliseconds() -> Int {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return ts.tv_sec * 1000 + ts.tv_nsec / 1_000_000
}

extension String {
    fileprivate func trimmingCharacters(in set: Character) -> String {
        var s = Substring(self)
        while s.last == set { s = s.dropLast() }
        return String(s)
    }
}

/// The number of open file descriptors of this process (`/proc/self/fd`).
func openFileDescriptorCount() -> Int {
    guard let dir = opendir("/proc/self/fd") else { return -1 }
    defer { closedir(dir) }
    var n = 0
    while readdir(dir) != nil { n += 1 }
    return n - 3  // ".", "..", and the directory's own fd
}

/// Per-CPU counts of the kernel interrupt whose `/proc/interrupts` name is `name` (e.g.
/// `vfio-msi[0](0000:00:02.0)`, the IRQ vfio-pci requested for an MSI vector); nil when absent.
func kernelInterruptCounts(named name: String) -> [Int]? {
    guard let f = fopen("/proc/interrupts", "r") else { return nil }
    defer { fclose(f) }
    var line = [CChar](repeating: 0, count: 4096)
    while fgets(&line, Int32(line.count), f) != nil {
        let text = string(line)
        let fields = text.split(whereSeparator: { $0 == " " || $0 == "\t" || $0 == "\n" })
        guard fields.last.map(String.init) == name else { continue }
        return fields.dropFirst().prefix { Int($0) != nil }.compactMap { Int($0) }
    }
    return nil
}
