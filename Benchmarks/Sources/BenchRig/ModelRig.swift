import CBenchSupport
import DSA
import NetDMAEngines

/// Owns a DMA buffer (``DMABuffer`` is non-copyable).
public final class BufferBox {
    public let buffer: DMABuffer
    public init(_ buffer: consuming DMABuffer) { self.buffer = buffer }
    public var base: UnsafeMutableRawPointer { buffer.base }
    public var iova: UInt64 { buffer.iova }
    public var length: Int { buffer.length }
}

/// A device model, its provider and a ``CopyQueue`` on one of its channels.
public protocol ModelRig: AnyObject {
    /// The queue the benchmark drives.
    var queue: CopyQueue { get }
    /// The queue's channel.
    var channel: NetDMAChannel { get }
    /// The kernel thread ID of the model's engine thread (0 if it could not be found).
    var engineThread: Int32 { get }
    /// Allocates a zeroed DMA buffer in the model's address space.
    func buffer(_ length: Int) throws -> BufferBox
}

extension ModelRig {
    /// CPU time the engine thread has used, in ns.
    public var engineCPUNanoseconds: Int64 { engineThread == 0 ? 0 : bench_thread_cpu_ns(engineThread) }
}

/// A device model on its own engine thread, its provider registered with a private
/// ``NetDMARegistry`` (the library's ``EngineSet``), one channel and a ``CopyQueue`` over it.
///
/// IOVA = VA and no interrupt vectors (the benchmarks poll). The engine thread can be pinned,
/// and its CPU time read, like DPDK's `dma_skel_0` worker on the peer side.
public class EngineRig: ModelRig {
    public let engines: EngineSet
    public let channel: NetDMAChannel
    public let queue: CopyQueue
    public let engineThread: Int32
    public var memory: DMAMemory { engines.memory }

    init(_ model: ModelConfiguration, ringSize: Int, engineCPU: Int?, cpuCopyThreshold: Int) throws {
        var m = model
        m.addressing = .identity
        m.interrupts = false
        engines = try EngineSet.open(.model(m))
        engineThread = engines.engines[0].model?.engineThreadID ?? 0
        if let engineCPU, engineThread != 0 { _ = bench_pin_thread(engineThread, Int32(engineCPU)) }
        channel = try engines.allocateChannel()
        queue = try CopyQueue(channel: channel, ringSize: ringSize, cpuCopyThreshold: cpuCopyThreshold)
    }

    deinit { engines.close() }

    /// Allocates a zeroed DMA buffer in the model's address space.
    public func buffer(_ length: Int) throws -> BufferBox { BufferBox(try memory.allocate(length: length)) }
}

/// The CBDMA model (``MockIOATDevice``) with an ``IOATProvider`` on it.
public final class IOATModelRig: EngineRig {
    /// - Parameters:
    ///   - profile: the CBDMA generation (`IOAT.profiles`), default Ice Lake (CB 3.4).
    ///   - ringSize: descriptors in the queue's ring.
    ///   - engineCPU: pin the engine thread to this CPU (nil: leave it to the scheduler).
    ///   - version: the NetDMA version the provider declares (2.0: counted chains; 1.x:
    ///     NULL-terminated chains).
    ///   - cpuCopyThreshold: the queue's CPU fallback (0: off).
    public init(profile: String = "icx", version: NetDMAVersion = .v2_0, ringSize: Int = 1024, engineCPU: Int? = nil,
                cpuCopyThreshold: Int = 0) throws {
        var m = ModelConfiguration(.ioat, profile: profile)
        m.version = version
        m.ioat = .init(resetReads: 2, resetMicroseconds: 0, spinIterations: 20_000)
        try super.init(m, ringSize: ringSize, engineCPU: engineCPU, cpuCopyThreshold: cpuCopyThreshold)
    }
}

/// The DSA model (Sapphire Rapids profile) with a ``DSAProvider`` on it: one dedicated work
/// queue. The queue's polls turn completion records into the NetDMA completion word on the
/// submitter's thread; the provider's completion poller then only looks every millisecond.
public final class DSAModelRig: EngineRig {
    /// - Parameters:
    ///   - version: the NetDMA version the provider declares.
    ///   - ringSize: descriptors in the queue's ring.
    ///   - engineCPU: pin the engine thread to this CPU (nil: leave it to the scheduler).
    ///   - cpuCopyThreshold: the queue's CPU fallback (0: off).
    public init(version: NetDMAVersion = .v2_0, ringSize: Int = 1024, engineCPU: Int? = nil, cpuCopyThreshold: Int = 0) throws {
        var m = ModelConfiguration(.dsa)
        m.version = version
        m.dsaModel = .init(spinIterations: 20_000)
        m.dsa = DSAConfiguration(version: version, workQueues: 1, pollerSpins: 20_000)
        try super.init(m, ringSize: ringSize, engineCPU: engineCPU, cpuCopyThreshold: cpuCopyThreshold)
    }
}
