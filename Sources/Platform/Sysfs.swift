import SystemPackage

#if canImport(Glibc)
import Glibc
#endif

/// Reads and writes a sysfs tree rooted at a configurable directory.
///
/// The default root is `/sys`; tests point it at a fake tree in a temporary directory, so
/// discovery and driver binding run without the machine's devices.
public struct Sysfs: Sendable, Hashable {
    /// The directory that stands for `/sys`.
    public let root: String

    /// Creates a view of the sysfs tree at `root`.
    public init(root: String = "/sys") {
        self.root = root.count > 1 && root.hasSuffix("/") ? String(root.dropLast()) : root
    }

    /// Whether this is the machine's real `/sys`.
    public var isLive: Bool { root == "/sys" }

    /// The absolute path of `relative` (e.g. `bus/pci/devices`).
    public func path(_ relative: String) -> String { root + "/" + relative }

    /// The contents of a small attribute file without the trailing newline; nil if unreadable.
    public func read(_ relative: String) -> String? {
        Sysfs.readFile(path(relative)).map { s in
            var t = Substring(s)
            while let l = t.last, l == "\n" || l == " " || l == "\0" { t = t.dropLast() }
            return String(t)
        }
    }

    /// An integer attribute, decimal or `0x` hexadecimal; nil if missing or malformed.
    public func readInteger(_ relative: String) -> Int? {
        guard let s = read(relative) else { return nil }
        if s.hasPrefix("0x") || s.hasPrefix("0X") { return Int(s.dropFirst(2), radix: 16) }
        return Int(s)
    }

    /// Writes `text` to an attribute (sysfs takes one write per open).
    ///
    /// - Throws: ``DriverError`` from `open`/`write`, with the attribute's path in the message.
    public func write(_ relative: String, _ text: String) throws(DriverError) {
        let p = path(relative)
        let fd = open(p, O_WRONLY | O_TRUNC | O_CLOEXEC)  // as the shell's `>` does
        guard fd >= 0 else { throw DriverError.systemCall("open", Errno(rawValue: errno), p) }
        defer { close(fd) }
        var bytes = Array(text.utf8)
        if bytes.isEmpty { bytes = [0x0A] }
        let n = bytes.withUnsafeBytes { Glibc.write(fd, $0.baseAddress!, $0.count) }
        if n < 0 { throw DriverError.systemCall("write", Errno(rawValue: errno), "\(text) > \(p)") }
    }

    /// Entry names of a directory, sorted, without `.` and `..`; empty if it does not exist.
    public func list(_ relative: String) -> [String] {
        guard let dir = opendir(path(relative)) else { return [] }
        defer { closedir(dir) }
        var names: [String] = []
        while let e = readdir(dir) {
            let name = withUnsafeBytes(of: e.pointee.d_name) { raw in
                String(decoding: raw.prefix(while: { $0 != 0 }), as: UTF8.self)
            }
            if name != "." && name != ".." { names.append(name) }
        }
        return names.sorted()
    }

    /// The last path component of a symbolic link's target (`driver` → `vfio-pci`); nil if absent.
    public func linkName(_ relative: String) -> String? {
        var buf = [CChar](repeating: 0, count: 4096)
        let n = readlink(path(relative), &buf, buf.count - 1)
        guard n > 0 else { return nil }
        let target = String(decoding: buf[0..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self)
        return target.split(separator: "/").last.map(String.init)
    }

    /// Whether `relative` exists.
    public func exists(_ relative: String) -> Bool { access(path(relative), F_OK) == 0 }

    /// Reads a whole (small) file; nil if it cannot be opened.
    public static func readFile(_ path: String) -> String? {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return nil }
        defer { close(fd) }
        var out: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 4096)
        while true {
            let n = chunk.withUnsafeMutableBytes { Glibc.read(fd, $0.baseAddress!, $0.count) }
            if n < 0 && errno == EINTR { continue }
            if n <= 0 { break }
            out.append(contentsOf: chunk[0..<n])
        }
        return String(decoding: out, as: UTF8.self)
    }
}
