/// One copy size measured on an engine and on one CPU core: a row of `netdma bench`.
public struct CopyThroughput: Sendable, Hashable {
    /// The copy size in bytes.
    public var size: Int
    /// The engine's throughput at that size (0 when its copies were wrong or failed).
    public var engineBytesPerSecond: Double
    /// One core's `memcpy` throughput at that size, on the same buffers.
    public var cpuBytesPerSecond: Double

    public init(size: Int, engineBytesPerSecond: Double, cpuBytesPerSecond: Double) {
        self.size = size
        self.engineBytesPerSecond = engineBytesPerSecond
        self.cpuBytesPerSecond = cpuBytesPerSecond
    }
}

extension CopyQueue {
    /// The CPU-copy threshold that measurements call for: the smallest measured size from which
    /// the engine is at least as fast as the CPU at every larger measured size. Copies shorter
    /// than it are better done by the CPU (``cpuCopyThreshold``).
    ///
    /// `netdma bench` measures these rows for an engine and prints this threshold as its
    /// "copy threshold"; pass that number to ``init(channel:ringSize:interrupts:cpuCopyThreshold:)``.
    ///
    /// - Returns: nil when the CPU is faster at the largest size measured (or nothing was
    ///   measured): the engine pays off at no measured size.
    public static func cpuCopyThreshold(for measurements: [CopyThroughput]) -> Int? {
        var threshold: Int? = nil
        for m in measurements.sorted(by: { $0.size > $1.size }) {
            guard m.engineBytesPerSecond > 0, m.engineBytesPerSecond >= m.cpuBytesPerSecond else { break }
            threshold = m.size
        }
        return threshold
    }
}
