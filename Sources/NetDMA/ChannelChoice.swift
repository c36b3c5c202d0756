import Platform

/// NetDMA's channel and CPU choice for `ProviderAllocateDmaChannel` (netdma.md §5.2), shared by
/// every provider.
public enum ChannelChoice {
    /// Picks a free channel and the CPU its interrupt and DPC use.
    ///
    /// 1. Prefer a free channel whose interrupt CPU (from `SetDmaChannelCpuAffinity`,
    ///    `interruptCPUs[index]`) is in `wanted`; else take the first free channel.
    /// 2. The CPU is that interrupt CPU when it is acceptable; else the first CPU of `wanted` on
    ///    the device's NUMA node (`localCPUs`), else the first of `wanted`; with no wish, the
    ///    first local CPU, else 0.
    ///
    /// - Parameters:
    ///   - free: the indexes of the free channels, in preference order.
    ///   - interruptCPUs: the affinity table, one entry per channel index (nil: none given).
    /// - Returns: nil when no channel is free.
    public static func pick(free: [Int], interruptCPUs: [Int?], wanted: CPUSet,
                            localCPUs: CPUSet?) -> (index: Int, cpu: Int)? {
        guard let first = free.first else { return nil }
        let index = free.first { interruptCPUs[$0].map(wanted.contains) ?? false } ?? first
        if let c = interruptCPUs[index], wanted.isEmpty || wanted.contains(c) { return (index, c) }
        if let w = wanted.first { return (index, localCPUs.flatMap { wanted.intersection($0).first } ?? w) }
        return (index, localCPUs?.first ?? 0)
    }
}
