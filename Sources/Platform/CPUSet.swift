import CVFIO

/// A set of CPU numbers of any size (NetDMA's ProcessorAffinityMask, without the 64-CPU limit).
public struct CPUSet: Sendable, Hashable, Sequence, ExpressibleByArrayLiteral, CustomStringConvertible {
    /// One bit per CPU, 64 CPUs a word.
    public private(set) var words: [UInt64]

    public init() { words = [] }
    public init(arrayLiteral elements: Int...) { self.init(elements) }
    public init<S: Sequence>(_ cpus: S) where S.Element == Int {
        words = []
        for c in cpus { insert(c) }
    }

    /// Every CPU this process may run on.
    public static var allowed: CPUSet {
        var mask = [UInt64](repeating: 0, count: 64)
        let n = mask.withUnsafeMutableBufferPointer { cvfio_get_thread_affinity($0.baseAddress!, 64) }
        guard n > 0 else { return [0] }
        var s = CPUSet()
        s.words = Array(mask.prefix(Int(n) / 8))
        s.trim()
        return s
    }

    public var isEmpty: Bool { words.allSatisfy { $0 == 0 } }
    public var count: Int { words.reduce(0) { $0 + $1.nonzeroBitCount } }
    public func contains(_ cpu: Int) -> Bool {
        cpu >= 0 && cpu / 64 < words.count && words[cpu / 64] & (1 << UInt64(cpu % 64)) != 0
    }
    public mutating func insert(_ cpu: Int) {
        precondition(cpu >= 0, "CPU numbers are non-negative")
        while words.count <= cpu / 64 { words.append(0) }
        words[cpu / 64] |= 1 << UInt64(cpu % 64)
    }
    public mutating func remove(_ cpu: Int) {
        guard cpu >= 0, cpu / 64 < words.count else { return }
        words[cpu / 64] &= ~(1 << UInt64(cpu % 64))
        trim()
    }
    public func intersection(_ other: CPUSet) -> CPUSet {
        var s = CPUSet()
        s.words = zip(words, other.words).map { $0 & $1 }
        s.trim()
        return s
    }
    /// The lowest CPU in the set.
    public var first: Int? { makeIterator().next() }

    public func makeIterator() -> AnyIterator<Int> {
        var w = 0, bits = words.first ?? 0
        let words = self.words
        return AnyIterator {
            while bits == 0 {
                w += 1
                guard w < words.count else { return nil }
                bits = words[w]
            }
            let b = bits.trailingZeroBitCount
            bits &= bits - 1
            return w * 64 + b
        }
    }

    public var description: String { "{" + self.map(String.init).joined(separator: ",") + "}" }

    private mutating func trim() { while let l = words.last, l == 0 { words.removeLast() } }
}

/// Thread placement.
public enum CPUAffinity {
    /// Pins the calling thread to `cpus`.
    public static func pinCurrentThread(to cpus: CPUSet) throws(DriverError) {
        guard !cpus.isEmpty else { throw DriverError(.invalidArgument, "Cannot pin a thread to an empty CPU set.") }
        let r = cpus.words.withUnsafeBufferPointer { cvfio_set_thread_affinity($0.baseAddress!, $0.count) }
        if r < 0 {
            throw DriverError(.invalidArgument, errno: .init(rawValue: -r),
                              "Cannot pin thread to CPUs \(cpus): none of them is online and allowed.")
        }
    }
    /// Pins the thread with kernel thread ID `tid` (of this process) to `cpus`.
    ///
    /// - Throws: `.invalidArgument` for an empty set, a set with no online CPU this process
    ///   may use, or a thread that does not exist.
    public static func pinThread(_ tid: Int32, to cpus: CPUSet) throws(DriverError) {
        guard !cpus.isEmpty else { throw DriverError(.invalidArgument, "Cannot pin a thread to an empty CPU set.") }
        let r = cpus.words.withUnsafeBufferPointer { cvfio_set_affinity_of(tid, $0.baseAddress!, $0.count) }
        if r < 0 {
            throw DriverError(.invalidArgument, errno: .init(rawValue: -r),
                              "Cannot pin thread \(tid) to CPUs \(cpus): no such thread, or none of the CPUs is online and allowed.")
        }
    }
    /// The CPU the calling thread runs on now.
    public static var currentCPU: Int { max(0, Int(cvfio_current_cpu())) }
}
