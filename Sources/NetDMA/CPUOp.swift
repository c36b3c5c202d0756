import Platform

#if canImport(Glibc)
import Glibc
#endif

/// An op that a ``CopyQueue`` runs on the calling CPU (shorter than its
/// ``CopyQueue/cpuCopyThreshold``): recorded at enqueue, run at submit.
///
/// 32 bytes; the queue keeps a ring of them beside the descriptor ring.
@usableFromInline
struct CPUOp {
    @usableFromInline
    enum Kind: UInt8 {
        case copy, fill, null
    }

    /// The op number (its ticket is the low 16 bits).
    var op: UInt64
    /// Copy: the source IOVA. Fill: the 8-byte pattern.
    var source: UInt64
    var destination: UInt64
    var length: UInt32
    var kind: Kind

    /// Runs the op through `regions`; nil when it is done, else why it could not run (then
    /// nothing was written). A zero-length op touches no memory and always succeeds.
    @inline(__always)
    func run(_ regions: inout DMARegionSnapshot) -> ChannelFault? {
        let n = Int(truncatingIfNeeded: length)
        switch kind {
        case .null:
            return nil
        case .copy:
            guard n > 0 else { return nil }
            guard let s = regions.address(ofIOVA: source, length: n),
                  let d = regions.address(ofIOVA: destination, length: n) else { return copyAcrossRegions(&regions) }
            memmove(d, s, n)
        case .fill:
            guard n > 0 else { return nil }
            guard let d = regions.address(ofIOVA: destination, length: n) else { return fillAcrossRegions(&regions) }
            Self.fill(d, n, pattern: source, phase: 0)
        }
        return nil
    }

    /// Stores the little-endian 8-byte `pattern` over `count` bytes, starting with pattern byte
    /// `phase` (as the engines fill: byte `k` of the op gets pattern byte `k % 8`).
    static func fill(_ p: UnsafeMutableRawPointer, _ count: Int, pattern: UInt64, phase: Int) {
        let r = UInt64(phase & 7) &* 8
        var word = r == 0 ? pattern : (pattern >> r) | (pattern << (64 &- r))
        var i = 0
        while i &+ 8 <= count {
            p.storeBytes(of: word.littleEndian, toByteOffset: i, as: UInt64.self)
            i &+= 8
        }
        while i < count {
            p.storeBytes(of: UInt8(truncatingIfNeeded: word), toByteOffset: i, as: UInt8.self)
            word >>= 8
            i &+= 1
        }
    }

    // MARK: - cold: ranges that cross regions, and faults

    /// A copy whose source or destination is not inside one region: either it spans adjacent
    /// regions (copied piece by piece) or part of it is not DMA memory (a fault, nothing written).
    @inline(never)
    private func copyAcrossRegions(_ regions: inout DMARegionSnapshot) -> ChannelFault? {
        let n = UInt64(length)
        if let bad = Self.firstUnmapped(source, n, &regions) { return Self.fault(.copy, "source", source, n, bad) }
        if let bad = Self.firstUnmapped(destination, n, &regions) { return Self.fault(.copy, "destination", destination, n, bad) }
        var done: UInt64 = 0
        while done < n {
            let (s, sn) = regions.translate(source &+ done)!
            let (d, dn) = regions.translate(destination &+ done)!
            let k = Swift.min(sn, dn, n &- done)
            memmove(d, s, Int(k))
            done &+= k
        }
        return nil
    }

    @inline(never)
    private func fillAcrossRegions(_ regions: inout DMARegionSnapshot) -> ChannelFault? {
        let n = UInt64(length)
        if let bad = Self.firstUnmapped(destination, n, &regions) { return Self.fault(.fill, "destination", destination, n, bad) }
        var done: UInt64 = 0
        while done < n {
            let (d, dn) = regions.translate(destination &+ done)!
            let k = Swift.min(dn, n &- done)
            Self.fill(d, Int(k), pattern: source, phase: Int(done & 7))
            done &+= k
        }
        return nil
    }

    /// The first IOVA of `length` bytes at `iova` that no region holds, nil when all are held.
    private static func firstUnmapped(_ iova: UInt64, _ length: UInt64, _ regions: inout DMARegionSnapshot) -> UInt64? {
        var at = iova, left = length
        while left > 0 {
            guard let (_, n) = regions.translate(at) else { return at }
            if n >= left { return nil }
            at &+= n
            left &-= n
        }
        return nil
    }

    private static func fault(_ kind: Kind, _ side: String, _ iova: UInt64, _ length: UInt64, _ bad: UInt64) -> ChannelFault {
        let what = kind == .copy ? "copy" : "fill"
        let start = "0x\(String(iova, radix: 16))"
        let at = bad == iova ? "" : " (from 0x\(String(bad, radix: 16)))"
        return ChannelFault(rawValue: 0, causes: [
            "CPU \(what) below the CPU-copy threshold: the \(side) \(start), \(length) bytes, is not DMA memory of this channel\(at); use memory allocated from or registered with the channel's DMAMemory",
        ])
    }
}
