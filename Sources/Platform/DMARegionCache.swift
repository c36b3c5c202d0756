/// A one-region cache of a ``DMAMemory``'s IOVA → CPU address table, for code that walks
/// descriptor chains on a hot path (a software engine, a provider re-reading a chain tail).
///
/// A hit costs a range check and one atomic load of ``DMAMemory/generation``; it takes no
/// lock and never allocates. Any region removed since the cache was filled invalidates it, so
/// a translation never outlives the memory it points at (the IOVA may since belong to
/// another buffer, or to none).
public struct DMARegionCache: Sendable {
    // Internal, for the inlinable hit path (a call per descriptor otherwise, from other modules).
    @usableFromInline var address: UInt = 0
    @usableFromInline var iova: UInt64 = 0
    @usableFromInline var length: UInt64 = 0
    @usableFromInline var generation: UInt64 = .max

    public init() {}

    /// The CPU address of `length` bytes at `iova` in `memory`, or nil when they are not
    /// inside one region.
    @inlinable @inline(__always)
    public mutating func address(ofIOVA iova: UInt64, length: Int, in memory: DMAMemory) -> UnsafeMutableRawPointer? {
        if iova >= self.iova, iova &- self.iova &+ UInt64(length) <= self.length, memory.generation == generation {
            return UnsafeMutableRawPointer(bitPattern: address &+ UInt(iova &- self.iova))
        }
        return refill(iova, length: length, in: memory)
    }

    /// Forgets the cached region.
    public mutating func invalidate() { generation = .max; length = 0 }

    @usableFromInline @inline(never)
    mutating func refill(_ iova: UInt64, length: Int, in memory: DMAMemory) -> UnsafeMutableRawPointer? {
        let g = memory.generation
        guard let r = memory.region(containingIOVA: iova, length: length) else { return nil }
        (address, self.iova, self.length, generation) = (r.address, r.iova, UInt64(r.length), g)
        return UnsafeMutableRawPointer(bitPattern: r.address &+ UInt(iova &- r.iova))
    }
}
