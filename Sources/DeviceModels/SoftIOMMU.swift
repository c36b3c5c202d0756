import Platform
import Synchronization

/// The device models' IOMMU: an in-process IOVA → host-address table.
///
/// The driver maps memory into it exactly as it maps memory into a VFIO container (it is a
/// ``DMAAddressSpace``), and every memory access a model makes goes through
/// ``translate(_:length:access:)``. An access outside a mapping, or without the permission,
/// returns nil: the model turns that into the device's error bits, never into a crash.
///
/// Lookups are lock-free and allocation-free (a sequence lock over atomic slots), so a model's
/// engine loop can translate on every access. Map and unmap take a lock.
public final class SoftIOMMU: DMAAddressSpace, @unchecked Sendable {
    // @unchecked: `slots` points at `capacity * 4` atomics this object allocates and frees.

    /// The most mappings the table holds.
    public let capacity: Int
    public let validIOVARanges: [ClosedRange<UInt64>]

    // Slot i: [iova, length, address, access (0 = free)].
    private let slots: UnsafeMutablePointer<Atomic<UInt64>>
    /// The sequence lock's word, in memory of its own so that a model can keep its address
    /// (``generationWord``).
    private let sequenceWord: UnsafeMutablePointer<Atomic<UInt64>>
    private let used = Atomic<Int>(0)
    /// One past the highest slot ever used: lookups scan only `0..<highWater`.
    private let highWater = Atomic<Int>(0)
    private let writer = Mutex<Void>(())
    /// Number of translations that failed (faults), for tests and statistics.
    private let faultCount = Atomic<UInt64>(0)
    /// Lookup hints: for each of ``hintCount`` IOVA buckets (bits 21 and up), the slot (+1) of the
    /// mapping that last satisfied a translation there. Only a hint: every use is re-checked
    /// under the sequence lock, and it is written only on a miss, so steady-state lookups from
    /// several engine threads share the line read-only.
    private let hints: UnsafeMutablePointer<Atomic<Int>>
    private static let hintCount = 16

    /// Creates an empty IOMMU.
    ///
    /// - Parameters:
    ///   - validIOVARanges: apertures a mapping must fit in (default: 48-bit space, page 0 excluded).
    ///   - capacity: the most mappings held at once.
    public init(validIOVARanges: [ClosedRange<UInt64>] = [0x1000...0xFFFF_FFFF_FFFF], capacity: Int = 512) {
        self.capacity = capacity
        self.validIOVARanges = validIOVARanges
        slots = .allocate(capacity: capacity * 4)
        for i in 0..<(capacity * 4) { (slots + i).initialize(to: Atomic(0)) }
        hints = .allocate(capacity: Self.hintCount)
        for i in 0..<Self.hintCount { (hints + i).initialize(to: Atomic(0)) }
        sequenceWord = .allocate(capacity: 1)
        sequenceWord.initialize(to: Atomic(0))
    }

    deinit {
        slots.deinitialize(count: capacity * 4)
        slots.deallocate()
        hints.deinitialize(count: Self.hintCount)
        hints.deallocate()
        sequenceWord.deinitialize(count: 1)
        sequenceWord.deallocate()
    }

    /// The highest IOVA the models' fast paths reach through a cached mapping (2^48 − 1): a
    /// mapping's part above it takes their general paths, so that the fast paths' address
    /// arithmetic cannot wrap.
    static let addressLimit: UInt64 = (1 << 48) - 1

    /// How many translations have faulted since creation.
    public var faults: UInt64 { faultCount.load(ordering: .relaxed) }

    /// The number of live mappings.
    public var mappingCount: Int { used.load(ordering: .relaxed) }

    public func map(_ address: UnsafeMutableRawPointer, length: Int, iova: UInt64, access: DMAAccess) throws(DriverError) {
        guard length > 0, iova & 0xFFF == 0 else {
            throw DriverError(.invalidMapping, "IOVA 0x\(String(iova, radix: 16)) must be page-aligned and the length positive.")
        }
        let end = iova &+ UInt64(length) &- 1
        guard end >= iova, validIOVARanges.contains(where: { $0.contains(iova) && $0.contains(end) }) else {
            throw DriverError(.invalidMapping,
                "IOVA range 0x\(String(iova, radix: 16))…0x\(String(end, radix: 16)) lies outside the IOMMU's valid ranges.")
        }
        let result: DriverError? = writer.withLock { _ in
            var free = -1
            for i in 0..<capacity {
                let a = slot(i, 3).pointee.load(ordering: .relaxed)
                if a == 0 { if free < 0 { free = i }; continue }
                let s = slot(i, 0).pointee.load(ordering: .relaxed), l = slot(i, 1).pointee.load(ordering: .relaxed)
                if iova <= s &+ l &- 1 && s <= end {
                    return DriverError(.invalidMapping, errno: .fileExists,
                        "IOVA 0x\(String(iova, radix: 16)) overlaps an existing mapping at 0x\(String(s, radix: 16)).")
                }
            }
            guard free >= 0 else {
                return DriverError(.outOfMemory, errno: .noSpace, "The IOMMU table is full (\(capacity) mappings).")
            }
            beginWrite()
            slot(free, 0).pointee.store(iova, ordering: .relaxed)
            slot(free, 1).pointee.store(UInt64(length), ordering: .relaxed)
            slot(free, 2).pointee.store(UInt64(UInt(bitPattern: address)), ordering: .relaxed)
            slot(free, 3).pointee.store(UInt64(access.rawValue), ordering: .relaxed)
            if free >= highWater.load(ordering: .relaxed) { highWater.store(free + 1, ordering: .relaxed) }
            endWrite()
            used.add(1, ordering: .relaxed)
            return nil
        }
        if let result { throw result }
    }

    public func unmap(iova: UInt64, length: Int) throws(DriverError) {
        let found: Bool = writer.withLock { _ in
            for i in 0..<capacity where slot(i, 3).pointee.load(ordering: .relaxed) != 0 {
                if slot(i, 0).pointee.load(ordering: .relaxed) == iova {
                    beginWrite()
                    slot(i, 3).pointee.store(0, ordering: .relaxed)
                    endWrite()
                    used.subtract(1, ordering: .relaxed)
                    return true
                }
            }
            return false
        }
        if !found {
            throw DriverError(.unmappedAddress, errno: .noSuchFileOrDirectory,
                              "Nothing is mapped at IOVA 0x\(String(iova, radix: 16)).")
        }
    }

    /// The host address of `length` bytes at `iova` if they lie inside one mapping that grants
    /// `access`; nil (a fault) otherwise. Lock-free; never allocates. A hint per 2 MiB IOVA
    /// bucket finds the mapping without a scan when the bucket's last mapping still covers it.
    @inline(__always)
    public func translate(_ iova: UInt64, length: Int, access: DMAAccess) -> UnsafeMutableRawPointer? {
        let last = iova &+ UInt64(max(length, 1)) &- 1
        guard last >= iova else { faultCount.add(1, ordering: .relaxed); return nil }
        while true {
            let seq = sequenceWord.pointee.load(ordering: .acquiring)
            if seq & 1 != 0 { continue }
            var hit: UInt = 0
            let bucket = hints + Int(truncatingIfNeeded: (iova >> 21) & UInt64(Self.hintCount - 1))
            let h = bucket.pointee.load(ordering: .relaxed) &- 1
            var found = false
            if h >= 0 && h < capacity {
                // The last mapping that served this bucket (the common case: one buffer per bucket).
                let a = slot(h, 3).pointee.load(ordering: .relaxed)
                let s = slot(h, 0).pointee.load(ordering: .relaxed)
                let l = slot(h, 1).pointee.load(ordering: .relaxed)
                if a != 0 && iova >= s && last <= s &+ l &- 1 {
                    found = true
                    if UInt32(truncatingIfNeeded: a) & access.rawValue == access.rawValue {
                        hit = UInt(slot(h, 2).pointee.load(ordering: .relaxed)) &+ UInt(iova &- s)
                    }
                }
            }
            if !found {
                for i in 0..<highWater.load(ordering: .relaxed) {
                    let a = slot(i, 3).pointee.load(ordering: .relaxed)
                    if a == 0 { continue }
                    let s = slot(i, 0).pointee.load(ordering: .relaxed)
                    let l = slot(i, 1).pointee.load(ordering: .relaxed)
                    if iova >= s && last <= s &+ l &- 1 {
                        if UInt32(truncatingIfNeeded: a) & access.rawValue == access.rawValue {
                            hit = UInt(slot(i, 2).pointee.load(ordering: .relaxed)) &+ UInt(iova &- s)
                        }
                        bucket.pointee.store(i &+ 1, ordering: .relaxed)
                        break
                    }
                }
            }
            atomicMemoryFence(ordering: .acquiring)
            if sequenceWord.pointee.load(ordering: .relaxed) == seq {
                if hit == 0 { faultCount.add(1, ordering: .relaxed) }
                return UnsafeMutableRawPointer(bitPattern: hit)
            }
        }
    }

    /// A live mapping, as ``mapping(containing:)`` reports it.
    public struct Mapping: Sendable, Hashable {
        /// The first IOVA of the mapping.
        public var iova: UInt64
        /// Its length in bytes.
        public var length: Int
        /// The host address `iova` maps to.
        public var address: UInt
        /// What the device may do with it.
        public var access: DMAAccess
    }

    /// A number that changes whenever a mapping is added or removed (even while the table is
    /// stable).
    ///
    /// A model may cache a ``Mapping`` and reuse it without a lookup while the generation is
    /// unchanged. Lock-free.
    @inline(__always)
    public var generation: UInt64 { sequenceWord.pointee.load(ordering: .acquiring) }

    /// The word ``generation`` reads, valid while the IOMMU lives: a model's engine loop reads
    /// it through this address without going through the object.
    var generationWord: UnsafePointer<Atomic<UInt64>> { UnsafePointer(sequenceWord) }

    /// The mapping that contains `iova`, whatever its access rights; nil when none does.
    ///
    /// Lock-free and allocation-free; does not count as a fault. Pair it with ``generation``
    /// to cache translations.
    public func mapping(containing iova: UInt64) -> Mapping? {
        while true {
            let seq = sequenceWord.pointee.load(ordering: .acquiring)
            if seq & 1 != 0 { continue }
            var found: Mapping? = nil
            for i in 0..<highWater.load(ordering: .relaxed) {
                let a = slot(i, 3).pointee.load(ordering: .relaxed)
                if a == 0 { continue }
                let s = slot(i, 0).pointee.load(ordering: .relaxed)
                let l = slot(i, 1).pointee.load(ordering: .relaxed)
                if iova >= s && iova <= s &+ l &- 1 {
                    found = Mapping(iova: s, length: Int(l), address: UInt(slot(i, 2).pointee.load(ordering: .relaxed)),
                                    access: DMAAccess(rawValue: UInt32(truncatingIfNeeded: a)))
                    break
                }
            }
            atomicMemoryFence(ordering: .acquiring)
            if sequenceWord.pointee.load(ordering: .relaxed) == seq { return found }
        }
    }

    @inline(__always)
    private func slot(_ i: Int, _ field: Int) -> UnsafeMutablePointer<Atomic<UInt64>> { slots + (i * 4 + field) }
    private func beginWrite() {
        sequenceWord.pointee.add(1, ordering: .relaxed)
        atomicMemoryFence(ordering: .releasing)
    }
    private func endWrite() { sequenceWord.pointee.add(1, ordering: .releasing) }
}
