import CNUMA
import CVFIO
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// DMA memory: pinned buffers mapped into one or more ``DMAAddressSpace``s, and the table that
/// turns any address inside them into an IOVA.
///
/// Buffers come from 2 MiB huge pages when the system has them (else normal pages), are placed
/// on a NUMA node before first touch, locked, and mapped into every address space given at
/// creation. Caller-owned memory can be registered the same way.
///
/// Not on any hot path: allocation, registration and lookup take a lock.
public final class DMAMemory: Sendable {
    /// A mapped range: host address, IOVA and length.
    public struct Region: Sendable, Hashable {
        public let address: UInt
        public let iova: UInt64
        public let length: Int
        /// Whether ``DMAMemory`` owns the pages (false for registered caller memory).
        public let owned: Bool
        /// Bytes actually mmapped (owned regions), at least `length`.
        public let mappedLength: Int
        /// The NUMA node the pages were bound to, if any.
        public let node: Int?
        /// Whether the pages are 2 MiB huge pages.
        public let hugePages: Bool
    }

    private struct State {
        var regions: [Region] = []
        var nextIOVA: UInt64
    }

    /// The address spaces every buffer is mapped into.
    public let spaces: [any DMAAddressSpace]
    /// The IOVA policy.
    public let policy: IOVAPolicy
    /// Whether huge pages are tried first.
    public let preferHugePages: Bool
    private let state: Mutex<State>

    /// Creates DMA memory mapped into `spaces`.
    public init(spaces: [any DMAAddressSpace], policy: IOVAPolicy = .identity, preferHugePages: Bool = true) {
        self.spaces = spaces
        self.policy = policy
        self.preferHugePages = preferHugePages
        switch policy {
        case .identity: state = Mutex(State(nextIOVA: 0))
        case .allocate(let range): state = Mutex(State(nextIOVA: range.lowerBound))
        }
    }

    /// Every region currently mapped.
    public var regions: [Region] { state.withLock { $0.regions } }

    /// Allocates a pinned, zeroed buffer of at least `length` bytes, mapped for DMA.
    ///
    /// - Parameters:
    ///   - length: bytes wanted; rounded up to the page size.
    ///   - node: NUMA node to place the pages on (nil: the calling thread's node policy).
    /// - Throws: ``DriverError`` `.outOfMemory`, `.memlockLimit`, or the address space's error.
    public func allocate(length: Int, node: Int? = nil) throws(DriverError) -> DMABuffer {
        guard length > 0 else {
            throw DriverError(.invalidArgument, "DMA buffer length must be positive, got \(length).")
        }
        let huge = 2 << 20
        let page = Int(sysconf(Int32(_SC_PAGESIZE)))
        var usedHuge = false
        var mapped: UnsafeMutableRawPointer? = nil
        var mappedLength = 0
        if preferHugePages && length >= huge / 2 {
            let l = (length + huge - 1) & ~(huge - 1)
            let p = mmap(nil, l, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_HUGETLB, -1, 0)
            if let p, p != MAP_FAILED { mapped = p; mappedLength = l; usedHuge = true }
        }
        if mapped == nil {
            let l = (length + page - 1) & ~(page - 1)
            let p = mmap(nil, l, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0)
            guard let p, p != MAP_FAILED else {
                throw DriverError(.outOfMemory, errno: .init(rawValue: Glibc.errno),
                                  "Cannot allocate \(length) bytes of DMA memory.")
            }
            mapped = p; mappedLength = l
        }
        let base = mapped!
        if let node, numa_available() >= 0, node >= 0, node <= numa_max_node() {
            numa_tonode_memory(base, mappedLength, Int32(node))
        }
        if mlock(base, mappedLength) != 0 {
            let e = Glibc.errno
            munmap(base, mappedLength)
            throw Self.memlockError(length: mappedLength, errno: e)
        }
        memset(base, 0, mappedLength)  // first touch, after placement
        do {
            let region = try insert(address: base, length: mappedLength, owned: true, mappedLength: mappedLength,
                                    node: node, hugePages: usedHuge)
            return DMABuffer(memory: self, base: base, iova: region.iova, length: length)
        } catch {
            munlock(base, mappedLength)
            munmap(base, mappedLength)
            throw error
        }
    }

    /// Registers caller-owned memory for DMA and returns its IOVA.
    ///
    /// The memory must stay valid until ``unregister(_:)``. It is locked while registered.
    public func register(_ address: UnsafeMutableRawPointer, length: Int) throws(DriverError) -> UInt64 {
        guard length > 0 else {
            throw DriverError(.invalidArgument, "Registered memory length must be positive, got \(length).")
        }
        if mlock(address, length) != 0 {
            throw Self.memlockError(length: length, errno: Glibc.errno)
        }
        do {
            return try insert(address: address, length: length, owned: false, mappedLength: length,
                              node: nil, hugePages: false).iova
        } catch {
            munlock(address, length)
            throw error
        }
    }

    /// Removes a registration made with ``register(_:length:)``.
    ///
    /// - Throws: ``DriverError`` `.unmappedAddress` when `address` was not registered.
    public func unregister(_ address: UnsafeMutableRawPointer) throws(DriverError) {
        let region = try remove(address: UInt(bitPattern: address), owned: false)
        munlock(address, region.length)
    }

    /// The IOVA of `address`, which may point anywhere inside a mapped region.
    public func iova(of address: UnsafeRawPointer) -> UInt64? {
        let a = UInt(bitPattern: address)
        return state.withLock { s in
            for r in s.regions where a >= r.address && a < r.address + UInt(r.length) {
                return r.iova + UInt64(a - r.address)
            }
            return nil
        }
    }

    /// The host address of `iova`, if it lies inside a region.
    public func address(ofIOVA iova: UInt64) -> UnsafeMutableRawPointer? {
        state.withLock { s in
            for r in s.regions where iova >= r.iova && iova < r.iova + UInt64(r.length) {
                return UnsafeMutableRawPointer(bitPattern: r.address + UInt(iova - r.iova))
            }
            return nil
        }
    }

    // MARK: - internals

    fileprivate func release(base: UnsafeMutableRawPointer) {
        guard let region = try? remove(address: UInt(bitPattern: base), owned: true) else {
            preconditionFailure("DMABuffer released twice or not owned by this DMAMemory")
        }
        munlock(base, region.mappedLength)
        munmap(base, region.mappedLength)
    }

    private func insert(address: UnsafeMutableRawPointer, length: Int, owned: Bool, mappedLength: Int,
                        node: Int?, hugePages: Bool) throws(DriverError) -> Region {
        let a = UInt(bitPattern: address)
        let result: Result<Region, DriverError> = state.withLock { s in
            for r in s.regions where a < r.address + UInt(r.length) && r.address < a + UInt(length) {
                return .failure(DriverError(.invalidMapping,
                    "Memory at 0x\(String(a, radix: 16)) overlaps a region already mapped for DMA."))
            }
            let iova: UInt64
            switch policy {
            case .identity:
                iova = UInt64(a)
            case .allocate(let range):
                // Keep the offset within a 2 MiB page so huge-page IOMMU mappings stay possible.
                let align: UInt64 = hugePages ? 2 << 20 : 4096
                let start = (s.nextIOVA + align - 1) & ~(align - 1)
                guard start >= range.lowerBound, start <= range.upperBound,
                      UInt64(length) - 1 <= range.upperBound - start else {
                    return .failure(DriverError(.invalidMapping,
                        "No IOVA space left for \(length) bytes in 0x\(String(range.lowerBound, radix: 16))…0x\(String(range.upperBound, radix: 16))."))
                }
                iova = start
                s.nextIOVA = start + UInt64(length)
            }
            let region = Region(address: a, iova: iova, length: length, owned: owned, mappedLength: mappedLength,
                                node: node, hugePages: hugePages)
            s.regions.append(region)
            return .success(region)
        }
        let region = try result.get()
        var done: [any DMAAddressSpace] = []
        do {
            for space in spaces {
                try space.map(address, length: length, iova: region.iova, access: .readWrite)
                done.append(space)
            }
        } catch {
            for space in done { try? space.unmap(iova: region.iova, length: length) }
            state.withLock { s in s.regions.removeAll { $0.address == a } }
            throw error
        }
        return region
    }

    private func remove(address: UInt, owned: Bool) throws(DriverError) -> Region {
        let region: Region? = state.withLock { s in
            guard let i = s.regions.firstIndex(where: { $0.address == address && $0.owned == owned }) else {
                return nil
            }
            return s.regions.remove(at: i)
        }
        guard let region else {
            throw DriverError(.unmappedAddress,
                "0x\(String(address, radix: 16)) is not the start of a \(owned ? "DMA buffer" : "registered region").")
        }
        for space in spaces { try? space.unmap(iova: region.iova, length: region.length) }
        return region
    }

    private static func memlockError(length: Int, errno e: Int32) -> DriverError {
        let limit = cvfio_memlock_limit()
        let cur = limit == UInt64.max ? "unlimited" : "\(limit) bytes"
        return DriverError(.memlockLimit, errno: .init(rawValue: e),
            "Cannot lock \(length) bytes of DMA memory: RLIMIT_MEMLOCK is \(cur). Raise it (ulimit -l unlimited, or LimitMEMLOCK= in the service unit) or run as root.")
    }
}

/// A pinned buffer mapped for DMA, owned: it is unmapped and freed when it goes away.
///
/// `base` is the CPU's address, `iova` the devices'. Both stay valid for the buffer's lifetime.
public struct DMABuffer: ~Copyable, @unchecked Sendable {
    // @unchecked: a raw pointer to pages this value alone owns; the mapping lives until deinit.
    /// The memory that mapped this buffer.
    public let memory: DMAMemory
    /// The CPU address of the first byte.
    public let base: UnsafeMutableRawPointer
    /// The device address (IOVA) of the first byte.
    public let iova: UInt64
    /// The usable length in bytes.
    public let length: Int

    init(memory: DMAMemory, base: UnsafeMutableRawPointer, iova: UInt64, length: Int) {
        self.memory = memory
        self.base = base
        self.iova = iova
        self.length = length
    }

    /// The IOVA of the byte at `offset`.
    ///
    /// - Precondition: `0 <= offset <= length`.
    @inlinable
    public func iova(at offset: Int) -> UInt64 {
        precondition(offset >= 0 && offset <= length, "offset \(offset) outside DMA buffer of \(length) bytes")
        return iova &+ UInt64(offset)
    }

    /// The CPU address of the byte at `offset`.
    @inlinable
    public func address(at offset: Int) -> UnsafeMutableRawPointer {
        precondition(offset >= 0 && offset <= length, "offset \(offset) outside DMA buffer of \(length) bytes")
        return base + offset
    }

    deinit { memory.release(base: base) }
}
