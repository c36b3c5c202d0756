import CNUMA
import CVFIO
import Synchronization
import SystemPackage

#if canImport(Glibc)
import Glibc
#endif

/// The system calls ``DMAMemory`` makes, replaceable in tests (swift-system's mocking idea):
/// each returns 0 or the mapping on success and an errno on failure.
struct MemorySyscalls: Sendable {
    var mmap: @Sendable (_ length: Int, _ huge: Bool) -> (UnsafeMutableRawPointer?, Int32)
    var munmap: @Sendable (_ address: UnsafeMutableRawPointer, _ length: Int) -> Void
    var mlock: @Sendable (_ address: UnsafeRawPointer, _ length: Int) -> Int32
    var munlock: @Sendable (_ address: UnsafeRawPointer, _ length: Int) -> Void
    /// The error for locking `length` more bytes when RLIMIT_MEMLOCK forbids it, nil when it fits.
    var checkLimit: @Sendable (_ length: Int) -> DriverError?
    /// Free 2 MiB pages on `node` (nil: on any node).
    var freeHugePages: @Sendable (_ node: Int?) -> Int

    static let live = MemorySyscalls(
        mmap: { length, huge in
            let flags = MAP_PRIVATE | MAP_ANONYMOUS | (huge ? MAP_HUGETLB : 0)
            let p = Glibc.mmap(nil, length, PROT_READ | PROT_WRITE, flags, -1, 0)
            guard let p, p != MAP_FAILED else { return (nil, Glibc.errno) }
            return (p, 0)
        },
        munmap: { a, l in _ = Glibc.munmap(a, l) },
        mlock: { a, l in Glibc.mlock(a, l) == 0 ? 0 : Glibc.errno },
        munlock: { a, l in _ = Glibc.munlock(a, l) },
        checkLimit: { length in
            MemoryLock.check(length: length, locked: MemoryLock.lockedBytes, limit: MemoryLock.limit,
                             privileged: MemoryLock.isPrivileged)
        },
        freeHugePages: { node in node.map { HugePages.free(onNode: $0) } ?? HugePages.free() })
}

/// DMA memory: pinned buffers mapped into one or more ``DMAAddressSpace``s, and the table that
/// turns any address inside them into an IOVA.
///
/// Buffers come from 2 MiB huge pages when the system has them (else normal pages), are placed
/// on a NUMA node before first touch, locked, and mapped into every address space given at
/// creation, so one buffer is seen by every engine. Caller-owned memory can be registered the
/// same way.
///
/// IOVAs follow the ``IOVAPolicy``: the virtual address itself, or first-fit allocation inside
/// the policy's range and every space's ``DMAAddressSpace/validIOVARanges``; freed IOVA space is
/// reused.
///
/// Not on any hot path: allocation, registration and lookup take a lock. Hot paths translate
/// through a ``DMARegionCache`` (one region) or a ``DMARegionSnapshot`` (every region), which
/// take the lock only when the regions changed.
public final class DMAMemory: Sendable {
    /// A mapped range: host address, IOVA and length.
    public struct Region: Sendable, Hashable {
        /// The host address of the first mapped byte (page-aligned).
        public let address: UInt
        /// The IOVA of the first mapped byte.
        public let iova: UInt64
        /// The mapped length in bytes (whole pages).
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
    }

    /// The address spaces every buffer is mapped into.
    public let spaces: [any DMAAddressSpace]
    /// The IOVA policy.
    public let policy: IOVAPolicy
    /// Whether huge pages are tried first.
    public let preferHugePages: Bool
    /// The base page size.
    public let pageSize: Int
    private let state: Mutex<State>
    private let system: MemorySyscalls
    /// Bumped whenever a region goes away; ``DMARegionCache`` checks it on every hit.
    private let removals = Atomic<UInt64>(0)
    /// Bumped whenever a region is added or goes away; ``DMARegionSnapshot`` checks it.
    @usableFromInline let changes = Atomic<UInt64>(0)

    /// How many regions have been removed since creation: a cache of a region's translation is
    /// valid only while this has not changed. One acquire load (a plain load on x86-64).
    @inline(__always)
    public var generation: UInt64 { removals.load(ordering: .acquiring) }

    /// How many times a region was added or removed since creation: a copy of the region table
    /// is complete and valid only while this has not changed. One acquire load (inlined into
    /// callers in other modules).
    @inlinable @inline(__always)
    public var layoutVersion: UInt64 { changes.load(ordering: .acquiring) }

    /// Creates DMA memory mapped into `spaces`.
    ///
    /// - Parameters:
    ///   - spaces: address spaces (VFIO containers, the models' IOMMU) every buffer is mapped into.
    ///   - policy: how IOVAs are chosen (default: IOVA = virtual address).
    ///   - preferHugePages: use 2 MiB pages for buffers of 1 MiB and more when the pool has them.
    public convenience init(spaces: [any DMAAddressSpace], policy: IOVAPolicy = .identity, preferHugePages: Bool = true) {
        self.init(spaces: spaces, policy: policy, preferHugePages: preferHugePages, system: .live)
    }

    init(spaces: [any DMAAddressSpace], policy: IOVAPolicy, preferHugePages: Bool, system: MemorySyscalls) {
        self.spaces = spaces
        self.policy = policy
        self.preferHugePages = preferHugePages
        self.system = system
        self.pageSize = Int(sysconf(Int32(_SC_PAGESIZE)))
        state = Mutex(State())
    }

    /// Every region currently mapped, by address.
    public var regions: [Region] { state.withLock { $0.regions } }

    /// Every region and the ``layoutVersion`` they belong to, read together under the lock.
    func regionTable() -> (regions: [Region], version: UInt64) {
        state.withLock { s in (s.regions, changes.load(ordering: .relaxed)) }
    }

    /// The region that holds `length` bytes at `iova`, if one does.
    public func region(containingIOVA iova: UInt64, length: Int = 1) -> Region? {
        state.withLock { s in
            s.regions.first { iova >= $0.iova && iova &- $0.iova &+ UInt64(length) <= UInt64($0.length) }
        }
    }

    /// Allocates a pinned, zeroed buffer of at least `length` bytes, mapped for DMA.
    ///
    /// - Parameters:
    ///   - length: bytes wanted; the mapping is rounded up to whole pages.
    ///   - node: NUMA node to place the pages on before first touch (nil: the calling thread's policy).
    /// - Throws: ``DriverError`` `.invalidArgument` (bad length or node), `.outOfMemory`,
    ///   `.memlockLimit`, `.invalidMapping` (no IOVA space), or the address space's error.
    public func allocate(length: Int, node: Int? = nil) throws(DriverError) -> DMABuffer {
        guard length > 0 else {
            throw DriverError(.invalidArgument, "DMA buffer length must be positive, got \(length).")
        }
        if let node, !NUMA.isValidNode(node) {
            throw DriverError(.invalidArgument,
                "NUMA node \(node) does not exist (nodes 0…\(NUMA.maxNode)).")
        }
        let huge = HugePages.size
        var usedHuge = false
        var mapped: UnsafeMutableRawPointer? = nil
        var mappedLength = 0
        if preferHugePages && length >= huge / 2 {
            let l = (length + huge - 1) & ~(huge - 1)
            // A node without free huge pages would SIGBUS on first touch after binding: check first.
            if system.freeHugePages(node) >= l / huge {
                let (p, _) = system.mmap(l, true)
                if let p { mapped = p; mappedLength = l; usedHuge = true }
            }
        }
        if mapped == nil {
            let l = (length + pageSize - 1) & ~(pageSize - 1)
            let (p, e) = system.mmap(l, false)
            guard let p else {
                throw DriverError(.outOfMemory, errno: Errno(rawValue: e), "Cannot allocate \(length) bytes of DMA memory.")
            }
            mapped = p; mappedLength = l
        }
        let base = mapped!
        if let node { NUMA.bind(base, length: mappedLength, to: node) }
        if let problem = system.checkLimit(mappedLength) {
            system.munmap(base, mappedLength)
            throw problem
        }
        let e = system.mlock(base, mappedLength)
        if e != 0 {
            system.munmap(base, mappedLength)
            throw MemoryLock.exceeded(length: mappedLength, limit: MemoryLock.limit, errno: Errno(rawValue: e))
        }
        memset(base, 0, mappedLength)  // first touch, after placement
        do {
            let region = try insert(address: base, length: mappedLength, owned: true, mappedLength: mappedLength,
                                    node: node, hugePages: usedHuge)
            return DMABuffer(memory: self, base: base, iova: region.iova, length: length)
        } catch {
            system.munlock(base, mappedLength)
            system.munmap(base, mappedLength)
            throw error
        }
    }

    /// Registers caller-owned memory for DMA and returns the IOVA of `address`.
    ///
    /// The whole pages around the range are locked and mapped. The memory must stay valid
    /// until ``unregister(_:)``.
    ///
    /// - Throws: ``DriverError`` `.invalidArgument`, `.memlockLimit`, `.invalidMapping` (overlaps
    ///   a mapped region, or no IOVA space), or the address space's error.
    public func register(_ address: UnsafeMutableRawPointer, length: Int) throws(DriverError) -> UInt64 {
        guard length > 0 else {
            throw DriverError(.invalidArgument, "Registered memory length must be positive, got \(length).")
        }
        let a = UInt(bitPattern: address)
        let start = a & ~UInt(pageSize - 1)
        let end = (a + UInt(length) + UInt(pageSize - 1)) & ~UInt(pageSize - 1)
        let base = UnsafeMutableRawPointer(bitPattern: start)!
        let span = Int(end - start)
        if let problem = system.checkLimit(span) { throw problem }
        let e = system.mlock(base, span)
        if e != 0 { throw MemoryLock.exceeded(length: span, limit: MemoryLock.limit, errno: Errno(rawValue: e)) }
        do {
            let region = try insert(address: base, length: span, owned: false, mappedLength: span, node: nil, hugePages: false)
            return region.iova + UInt64(a - start)
        } catch {
            system.munlock(base, span)
            throw error
        }
    }

    /// Removes a registration made with ``register(_:length:)``; `address` may be any address
    /// inside it.
    ///
    /// - Throws: ``DriverError`` `.unmappedAddress` when `address` is not registered (for
    ///   instance, unregistered twice).
    public func unregister(_ address: UnsafeMutableRawPointer) throws(DriverError) {
        let region = try remove(containing: UInt(bitPattern: address), owned: false)
        system.munlock(UnsafeRawPointer(bitPattern: region.address)!, region.length)
    }

    /// The IOVA of `address`, which may point anywhere inside a mapped region; nil outside.
    public func iova(of address: UnsafeRawPointer) -> UInt64? {
        let a = UInt(bitPattern: address)
        return state.withLock { s in
            for r in s.regions where a >= r.address && a - r.address < UInt(r.length) {
                return r.iova + UInt64(a - r.address)
            }
            return nil
        }
    }

    /// The host address of `iova`, if it lies inside a region.
    public func address(ofIOVA iova: UInt64) -> UnsafeMutableRawPointer? {
        state.withLock { s in
            for r in s.regions where iova >= r.iova && iova - r.iova < UInt64(r.length) {
                return UnsafeMutableRawPointer(bitPattern: r.address + UInt(iova - r.iova))
            }
            return nil
        }
    }

    /// Reads the 64-bit value at `iova` while no region can be released.
    ///
    /// For cold paths that follow a client's descriptors after the fact (a drain check, a
    /// fault report): the client may free them at any moment, and a region leaves the table
    /// before its pages are unmapped, so a value read under the table's lock is never read
    /// from unmapped memory. Returns nil when `iova` is not 8-byte aligned or the 8 bytes do
    /// not lie inside one region.
    public func loadUInt64(atIOVA iova: UInt64) -> UInt64? {
        guard iova & 7 == 0 else { return nil }
        return state.withLock { s in
            for r in s.regions where r.length >= 8 && iova >= r.iova && iova - r.iova <= UInt64(r.length - 8) {
                return UnsafeRawPointer(bitPattern: r.address + UInt(iova - r.iova))!.load(as: UInt64.self)
            }
            return nil
        }
    }

    // MARK: - internals

    fileprivate func release(base: UnsafeMutableRawPointer) {
        guard let region = try? remove(containing: UInt(bitPattern: base), owned: true) else {
            preconditionFailure("DMABuffer released twice or not owned by this DMAMemory")
        }
        system.munlock(base, region.mappedLength)
        system.munmap(base, region.mappedLength)
    }

    /// The IOVA ranges a new mapping may use: the policy's range intersected with every space's.
    var usableIOVARanges: [ClosedRange<UInt64>] {
        var ranges: [ClosedRange<UInt64>]
        switch policy {
        case .identity: ranges = [0...UInt64.max]
        case .allocate(let r): ranges = [r]
        }
        for space in spaces { ranges = Self.intersect(ranges, space.validIOVARanges) }
        return ranges
    }

    static func intersect(_ a: [ClosedRange<UInt64>], _ b: [ClosedRange<UInt64>]) -> [ClosedRange<UInt64>] {
        var out: [ClosedRange<UInt64>] = []
        for x in a {
            for y in b {
                let lo = max(x.lowerBound, y.lowerBound), hi = min(x.upperBound, y.upperBound)
                if lo <= hi { out.append(lo...hi) }
            }
        }
        return out.sorted { $0.lowerBound < $1.lowerBound }
    }

    /// First fit of `length` bytes aligned to `align` in `ranges`, avoiding `used` IOVA ranges.
    static func firstFit(length: Int, align: UInt64, in ranges: [ClosedRange<UInt64>],
                         avoiding used: [(UInt64, UInt64)]) -> UInt64? {
        let len = UInt64(length)
        let taken = used.sorted { $0.0 < $1.0 }
        for r in ranges {
            var start = r.lowerBound
            while true {
                let (aligned, o) = start.addingReportingOverflow(align - 1)
                if o { break }
                start = aligned & ~(align - 1)
                guard start >= r.lowerBound, start <= r.upperBound, len - 1 <= r.upperBound - start else { break }
                let end = start + len - 1
                if let clash = taken.first(where: { start <= $0.1 && $0.0 <= end }) {
                    let (next, o2) = clash.1.addingReportingOverflow(1)
                    if o2 { break }
                    start = next
                    continue
                }
                return start
            }
        }
        return nil
    }

    private func insert(address: UnsafeMutableRawPointer, length: Int, owned: Bool, mappedLength: Int,
                        node: Int?, hugePages: Bool) throws(DriverError) -> Region {
        let a = UInt(bitPattern: address)
        let usable = usableIOVARanges
        let result: Result<Region, DriverError> = state.withLock { s in
            for r in s.regions where a < r.address + UInt(r.length) && r.address < a + UInt(length) {
                return .failure(DriverError(.invalidMapping,
                    "Memory at 0x\(String(a, radix: 16)) overlaps a region already mapped for DMA at 0x\(String(r.address, radix: 16))."))
            }
            let iova: UInt64
            switch policy {
            case .identity:
                iova = UInt64(a)
                let last = iova + UInt64(length) - 1
                guard usable.contains(where: { $0.contains(iova) && $0.contains(last) }) else {
                    return .failure(DriverError(.invalidMapping,
                        "Address 0x\(String(a, radix: 16)) cannot be its own IOVA: it lies outside the IOMMU's valid IOVA ranges. Use IOVAPolicy.allocate(in:) instead of .identity."))
                }
            case .allocate:
                // Align to 2 MiB for huge pages so the IOMMU can use large page-table entries.
                let align: UInt64 = hugePages ? UInt64(HugePages.size) : UInt64(pageSize)
                guard let found = Self.firstFit(length: length, align: align, in: usable,
                                                avoiding: s.regions.map { ($0.iova, $0.iova + UInt64($0.length) - 1) }) else {
                    let where_ = usable.map { "0x\(String($0.lowerBound, radix: 16))…0x\(String($0.upperBound, radix: 16))" }
                    return .failure(DriverError(.invalidMapping,
                        "No IOVA space left for \(length) bytes in \(where_.joined(separator: ", "))."))
                }
                iova = found
            }
            let region = Region(address: a, iova: iova, length: length, owned: owned, mappedLength: mappedLength,
                                node: node, hugePages: hugePages)
            s.regions.append(region)
            changes.add(1, ordering: .releasing)
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
            // The region was visible meanwhile: caches and snapshots of it must not outlive it
            // (the caller unmaps the pages next).
            state.withLock { s in
                removals.add(1, ordering: .releasing)
                changes.add(1, ordering: .releasing)
                s.regions.removeAll { $0.address == a }
            }
            throw error
        }
        return region
    }

    private func remove(containing address: UInt, owned: Bool) throws(DriverError) -> Region {
        // Unmapped before the IOVA range is released, under the lock: otherwise another thread
        // could allocate the same IOVA and map it while the old mapping still exists.
        let region: Region? = state.withLock { s in
            guard let i = s.regions.firstIndex(where: {
                address >= $0.address && address - $0.address < UInt($0.length) && $0.owned == owned
            }) else { return nil }
            removals.add(1, ordering: .releasing)
            changes.add(1, ordering: .releasing)
            let r = s.regions.remove(at: i)
            for space in spaces { try? space.unmap(iova: r.iova, length: r.length) }
            return r
        }
        guard let region else {
            throw DriverError(.unmappedAddress,
                "0x\(String(address, radix: 16)) is not inside a \(owned ? "DMA buffer" : "registered region").")
        }
        return region
    }
}

/// A pinned buffer mapped for DMA, owned: it is unmapped and freed when it goes away.
///
/// `base` is the CPU's address, `iova` the devices'. Both stay valid for the buffer's lifetime.
/// A buffer must go away before the address spaces it is mapped into.
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
    ///
    /// - Precondition: `0 <= offset <= length`.
    @inlinable
    public func address(at offset: Int) -> UnsafeMutableRawPointer {
        precondition(offset >= 0 && offset <= length, "offset \(offset) outside DMA buffer of \(length) bytes")
        return base + offset
    }

    /// The buffer's bytes.
    public var bytes: UnsafeMutableRawBufferPointer { UnsafeMutableRawBufferPointer(start: base, count: length) }

    deinit { memory.release(base: base) }
}
