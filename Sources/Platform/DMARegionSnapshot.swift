/// A copy of a ``DMAMemory``'s whole region table, for hot paths on the CPU that turn IOVAs
/// from anywhere in the memory into CPU addresses (``DMARegionCache`` remembers one region).
///
/// A lookup costs one acquire load of ``DMAMemory/layoutVersion`` (a plain load on x86-64), a
/// check of the two regions that answered last (a copy's source and destination), then a
/// binary search of the table. It takes no lock and never allocates, whether the IOVA is in a
/// region or not. Only when a region was added or removed since the last lookup does it copy
/// the table again, under ``DMAMemory``'s lock (a cold path, which may allocate).
///
/// A translation is good until its region is removed: memory that is freed or unregistered
/// while someone still copies through an address of it is the caller's error (as it is for a
/// DMA engine, which would hit an IOMMU fault instead).
///
/// The lookups are `@inlinable`, so that a caller in another module (the `CopyQueue` of
/// `NetDMA`) does not pay a call per address.
///
/// Not thread-safe: one owner (for example a `CopyQueue` with a CPU-copy threshold) looks up
/// through it.
public struct DMARegionSnapshot: ~Copyable {
    /// The memory whose regions the snapshot copies.
    public let memory: DMAMemory

    @usableFromInline
    struct Entry {
        @usableFromInline var iova: UInt64
        /// The last IOVA of the region (its length is never 0).
        @usableFromInline var last: UInt64
        @usableFromInline var address: UInt
        @usableFromInline init(iova: UInt64, last: UInt64, address: UInt) {
            self.iova = iova
            self.last = last
            self.address = address
        }
    }

    @usableFromInline var entries: UnsafeMutablePointer<Entry>
    @usableFromInline var capacity: Int
    @usableFromInline var count = 0
    @usableFromInline var version: UInt64 = .max
    /// The entries that answered the last two lookups that had to search.
    @usableFromInline var recent0 = 0
    @usableFromInline var recent1 = 0

    /// Makes an empty snapshot; the first lookup fills it.
    public init(_ memory: DMAMemory) {
        self.memory = memory
        capacity = 8
        entries = .allocate(capacity: capacity)
    }

    deinit { entries.deallocate() }

    /// The CPU address of `length` bytes at `iova`, or nil unless one region holds all of them.
    @inlinable @inline(__always)
    public mutating func address(ofIOVA iova: UInt64, length: Int) -> UnsafeMutableRawPointer? {
        guard let (address, contiguous) = translate(iova), contiguous >= UInt64(truncatingIfNeeded: length) else { return nil }
        return address
    }

    /// The CPU address of `iova` and how many bytes of its region start there, or nil when the
    /// IOVA is in no region.
    @inlinable @inline(__always)
    public mutating func translate(_ iova: UInt64) -> (address: UnsafeMutableRawPointer, contiguous: UInt64)? {
        if memory.layoutVersion != version { refresh() }
        var i = recent0
        if !contains(i, iova) {
            i = recent1
            if !contains(i, iova) {
                guard let found = search(iova) else { return nil }
                i = found
                recent1 = recent0
                recent0 = found
            }
        }
        let e = entries[i]
        let offset = iova &- e.iova
        return (UnsafeMutableRawPointer(bitPattern: e.address &+ UInt(truncatingIfNeeded: offset))!, e.last &- iova &+ 1)
    }

    @inlinable @inline(__always)
    func contains(_ i: Int, _ iova: UInt64) -> Bool {
        i < count && iova >= entries[i].iova && iova <= entries[i].last
    }

    /// The entry that holds `iova` (entries are sorted by IOVA and do not overlap).
    @inlinable
    func search(_ iova: UInt64) -> Int? {
        var lo = 0, hi = count
        while lo < hi {
            let mid = (lo &+ hi) >> 1
            if entries[mid].last < iova { lo = mid &+ 1 } else { hi = mid }
        }
        return lo < count && iova >= entries[lo].iova ? lo : nil
    }

    /// Copies the region table again (cold: takes the memory's lock, may allocate).
    @usableFromInline @inline(never)
    mutating func refresh() {
        let (regions, v) = memory.regionTable()
        if regions.count > capacity {
            entries.deallocate()
            capacity = Swift.max(regions.count, capacity * 2)
            entries = .allocate(capacity: capacity)
        }
        var n = 0
        for r in regions.sorted(by: { $0.iova < $1.iova }) where r.length > 0 {
            entries[n] = Entry(iova: r.iova, last: r.iova &+ UInt64(r.length) &- 1, address: r.address)
            n += 1
        }
        count = n
        recent0 = 0
        recent1 = 0
        version = v
    }
}
