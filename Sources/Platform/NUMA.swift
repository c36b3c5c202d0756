import CNUMA
import CVFIO
import SystemPackage

#if canImport(Glibc)
import Glibc
#endif

/// NUMA topology and placement (libnuma).
///
/// Every function degrades to "one node, node 0" on a machine or kernel without NUMA.
public enum NUMA {
    /// Whether the kernel supports NUMA policy (`numa_available()`).
    public static var isAvailable: Bool { numa_available() >= 0 }

    /// The highest node number (`numa_max_node()`); 0 without NUMA.
    public static var maxNode: Int { isAvailable ? Int(numa_max_node()) : 0 }

    /// The number of nodes with memory (`numa_num_configured_nodes()`); 1 without NUMA.
    public static var nodeCount: Int { isAvailable ? max(1, Int(numa_num_configured_nodes())) : 1 }

    /// The node of `cpu` (`numa_node_of_cpu`), nil if unknown.
    public static func node(ofCPU cpu: Int) -> Int? {
        guard isAvailable else { return 0 }
        let n = numa_node_of_cpu(Int32(cpu))
        return n < 0 ? nil : Int(n)
    }

    /// The CPUs of `node` (`numa_node_to_cpus`); empty for a node that does not exist.
    public static func cpus(ofNode node: Int) -> CPUSet {
        guard isAvailable, node >= 0, node <= maxNode, let mask = numa_allocate_cpumask() else {
            return node == 0 && !isAvailable ? CPUSet.allowed : []
        }
        defer { numa_free_cpumask(mask) }
        guard numa_node_to_cpus(Int32(node), mask) == 0 else { return [] }
        var set = CPUSet()
        let bits = Int(mask.pointee.size)
        for cpu in 0..<bits where numa_bitmask_isbitset(mask, UInt32(cpu)) != 0 { set.insert(cpu) }
        return set
    }

    /// The node of the page holding `address` (`move_pages` query), nil if it is not
    /// resident or NUMA is unavailable.
    public static func node(ofAddress address: UnsafeRawPointer) -> Int? {
        guard isAvailable else { return nil }
        var page: UnsafeMutableRawPointer? = UnsafeMutableRawPointer(mutating: address)
        var status: Int32 = -1
        let r = numa_move_pages(0, 1, &page, nil, &status, 0)
        return r == 0 && status >= 0 ? Int(status) : nil
    }

    /// Whether `node` is a node pages can be placed on.
    public static func isValidNode(_ node: Int) -> Bool { node >= 0 && node <= maxNode }

    /// Binds `length` bytes at `address` to `node` before they are touched (`numa_tonode_memory`).
    static func bind(_ address: UnsafeMutableRawPointer, length: Int, to node: Int) {
        guard isAvailable, isValidNode(node) else { return }
        numa_tonode_memory(address, length, Int32(node))
    }
}

/// The machine's 2 MiB huge-page pool (`/sys/kernel/mm/hugepages/hugepages-2048kB`).
public enum HugePages {
    /// The huge page size used for DMA memory.
    public static let size = 2 << 20

    /// Free 2 MiB pages in the pool, across nodes.
    public static func free(sysfs: Sysfs = Sysfs()) -> Int {
        sysfs.readInteger("kernel/mm/hugepages/hugepages-2048kB/free_hugepages") ?? 0
    }

    /// Free 2 MiB pages on `node`.
    public static func free(onNode node: Int, sysfs: Sysfs = Sysfs()) -> Int {
        sysfs.readInteger("devices/system/node/node\(node)/hugepages/hugepages-2048kB/free_hugepages") ?? 0
    }
}

/// RLIMIT_MEMLOCK: how much memory this process may pin for DMA.
public enum MemoryLock {
    /// The soft limit in bytes, nil when unlimited.
    public static var limit: UInt64? {
        let l = cvfio_memlock_limit()
        return l == UInt64.max ? nil : l
    }

    /// Bytes this process has locked now (`VmLck` in `/proc/self/status`).
    public static var lockedBytes: UInt64 {
        guard let status = Sysfs.readFile("/proc/self/status") else { return 0 }
        for line in status.split(separator: "\n") where line.hasPrefix("VmLck:") {
            let kb = line.dropFirst(6).split(separator: " ").first.flatMap { UInt64($0) } ?? 0
            return kb * 1024
        }
        return 0
    }

    /// Whether the process may lock memory beyond RLIMIT_MEMLOCK (CAP_IPC_LOCK; root has it).
    public static var isPrivileged: Bool {
        guard let status = Sysfs.readFile("/proc/self/status") else { return geteuid() == 0 }
        for line in status.split(separator: "\n") where line.hasPrefix("CapEff:") {
            let hex = line.dropFirst(7).filter { !$0.isWhitespace }
            let caps = UInt64(hex, radix: 16) ?? 0
            return caps & (1 << 14) != 0  // CAP_IPC_LOCK
        }
        return geteuid() == 0
    }

    /// The error for pinning `length` more bytes when the limit does not allow it, nil when it fits.
    ///
    /// - Parameters:
    ///   - length: bytes about to be locked.
    ///   - locked: bytes already locked.
    ///   - limit: RLIMIT_MEMLOCK, nil for unlimited.
    ///   - privileged: whether the process has CAP_IPC_LOCK.
    public static func check(length: Int, locked: UInt64, limit: UInt64?, privileged: Bool) -> DriverError? {
        guard !privileged, let limit else { return nil }
        if locked &+ UInt64(length) <= limit { return nil }
        return exceeded(length: length, limit: limit, errno: .noMemory)
    }

    /// The error that says RLIMIT_MEMLOCK is too low for `length` more bytes.
    public static func exceeded(length: Int, limit: UInt64?, errno: Errno?) -> DriverError {
        let cur = limit.map { "\($0) bytes" } ?? "unlimited"
        return DriverError(.memlockLimit, errno: errno,
            "Cannot lock \(length) bytes of DMA memory: RLIMIT_MEMLOCK is \(cur) and \(lockedBytes) bytes are locked already. Raise it (`ulimit -l unlimited`, LimitMEMLOCK=infinity in a systemd unit, or a memlock line in /etc/security/limits.conf) or run as root.")
    }
}
