import Platform
import Synchronization

/// A contiguous array of 64-byte-aligned ``Descriptor``s in DMA memory, for building chains
/// (1.x NULL-terminated lists) and rings (2.0 counted chains).
///
/// The pool owns its DMA buffer. It does not track which descriptors are in use: the client
/// (or ``CopyQueue``) knows which ones the engine has retired from the completion word.
public final class DescriptorPool: @unchecked Sendable {
    // @unchecked: `base` points into `buffer`, owned by this object for its whole life. The
    // descriptors are shared with the engine; writers follow the NetDMA rules (a submitted
    // descriptor is only changed through ``publishNext(of:_:)``).

    /// How many descriptors the pool holds.
    public let count: Int
    /// The CPU address of descriptor 0.
    public let base: UnsafeMutablePointer<Descriptor>
    /// The IOVA of descriptor 0; descriptor `i` is at `baseIOVA + 64 * i`.
    public let baseIOVA: UInt64
    private let buffer: DMABuffer

    /// Allocates `count` zeroed descriptors from `memory`.
    ///
    /// - Throws: ``DriverError`` `.invalidArgument` for a count below 1, or `memory`'s error.
    public init(memory: DMAMemory, count: Int) throws(DriverError) {
        guard count >= 1 else {
            throw DriverError(.invalidArgument, "A descriptor pool needs at least one descriptor, got \(count).")
        }
        let b = try memory.allocate(length: count * Descriptor.size)
        precondition(UInt(bitPattern: b.base) % UInt(Descriptor.size) == 0 && b.iova % UInt64(Descriptor.size) == 0,
                     "DMA memory must be at least 64-byte aligned")
        base = b.base.bindMemory(to: Descriptor.self, capacity: count)
        baseIOVA = b.iova
        self.count = count
        buffer = b
    }

    /// The CPU address of descriptor `i`.
    @inlinable
    public subscript(i: Int) -> UnsafeMutablePointer<Descriptor> {
        precondition(i >= 0 && i < count, "descriptor index \(i) outside pool of \(count)")
        return base + i
    }

    /// The IOVA of descriptor `i`.
    @inlinable
    public func iova(at i: Int) -> UInt64 { baseIOVA &+ UInt64(i) &* UInt64(Descriptor.size) }

    /// The index of the descriptor at `iova`, or nil when it is not in this pool.
    @inlinable
    public func index(ofIOVA iova: UInt64) -> Int? {
        guard iova >= baseIOVA else { return nil }
        let off = iova &- baseIOVA
        guard off % UInt64(Descriptor.size) == 0, off / UInt64(Descriptor.size) < UInt64(count) else { return nil }
        return Int(off / UInt64(Descriptor.size))
    }

    /// A chain of `count` descriptors starting at index `first`.
    @inlinable
    public func chain(from first: Int, count: Int) -> DescriptorChain {
        DescriptorChain(address: self[first], iova: iova(at: first), count: count)
    }

    /// Links every descriptor to the next one and the last back to the first: a 2.0
    /// "descriptor ring", where `NextDescriptor` is never NULL (netdma.md §8).
    public func linkRing() {
        for i in 0..<count { base[i].next = iova(at: (i + 1) % count) }
    }

    /// Links descriptors `range` in order and ends the list with NULL: a 1.x chain.
    public func linkList(_ range: Range<Int>) {
        precondition(range.lowerBound >= 0 && range.upperBound <= count && !range.isEmpty, "bad descriptor range \(range)")
        for i in range { base[i].next = i + 1 < range.upperBound ? iova(at: i + 1) : 0 }
    }

    /// Stores `next` into descriptor `i`'s `NextDescriptor` with one release store, as the 1.x
    /// Append rule needs (the engine may be reading the old tail at that moment).
    @inlinable
    public func publishNext(of i: Int, _ next: UInt64) {
        Self.publishNext(of: self[i], next)
    }

    /// Stores `next` into `descriptor.next` with one 64-bit release store.
    @inlinable
    public static func publishNext(of descriptor: UnsafeMutablePointer<Descriptor>, _ next: UInt64) {
        UnsafeMutableRawPointer(descriptor).advanced(by: 24)
            .assumingMemoryBound(to: Atomic<UInt64>.self).pointee.store(next, ordering: .releasing)
    }
}
