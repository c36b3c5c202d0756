import CBenchSupport
import DSA
import DeviceModels
import Hardware
import IOAT
import NetDMA
import Platform

#if canImport(Glibc)
import Glibc
#endif

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

/// A CBDMA device model on its own engine thread, an ``IOATProvider`` on it, registered with a
/// private ``NetDMARegistry``, one channel and a ``CopyQueue`` over it.
///
/// The engine thread is found (it is the thread the model starts) and can be pinned, and its CPU
/// time read, like DPDK's `dma_skel_0` worker on the peer side.
public final class IOATModelRig: ModelRig {
    public let iommu = SoftIOMMU()
    public let memory: DMAMemory
    public let device: MockIOATDevice
    public let provider: IOATProvider<MockIOATBAR>
    public let registry = NetDMARegistry(drainTimeout: .seconds(2))
    public let handle: ProviderHandle
    public let channel: NetDMAChannel
    public let queue: CopyQueue
    /// The kernel thread ID of the model's engine thread (0 if it could not be found).
    public let engineThread: Int32

    /// - Parameters:
    ///   - profile: the CBDMA generation (`IOAT.profiles`), default Ice Lake (CB 3.4).
    ///   - ringSize: descriptors in the queue's ring.
    ///   - engineCPU: pin the engine thread to this CPU (nil: leave it to the scheduler).
    ///   - version: the NetDMA version the provider declares (2.0: counted chains; 1.x:
    ///     NULL-terminated chains).
    public init(profile: String = "icx", version: NetDMAVersion = .v2_0, ringSize: Int = 1024, engineCPU: Int? = nil) throws {
        memory = DMAMemory(spaces: [iommu], policy: .identity, preferHugePages: false)
        (device, engineThread) = findingEngineThread(pinnedTo: engineCPU) { [iommu] in
            MockIOATDevice(profile: IOAT.profile(named: profile)!, iommu: iommu, execution: .thread,
                           options: .init(resetReads: 2, resetMicroseconds: 0, spinIterations: 20_000))
        }
        provider = try IOATProvider(bar: device.bar0, config: device, interrupts: nil, memory: memory,
                                    configuration: .init(version: version))
        handle = try provider.register(with: registry)
        channel = try registry.allocateChannel(provider: handle)
        queue = try CopyQueue(channel: channel, ringSize: ringSize)
    }

    deinit {
        _ = try? registry.stop(handle)
        try? registry.deregister(handle)
    }

    /// Allocates a zeroed DMA buffer in the model's address space.
    public func buffer(_ length: Int) throws -> BufferBox { BufferBox(try memory.allocate(length: length)) }
}

/// A DSA device model (Sapphire Rapids profile) on its own engine thread, a ``DSAProvider`` on
/// it (one dedicated work queue; the provider's completion poller turns completion records into
/// the NetDMA completion word), registered with a private ``NetDMARegistry``, one channel and a
/// ``CopyQueue`` over it.
public final class DSAModelRig: ModelRig {
    public let iommu = SoftIOMMU()
    public let memory: DMAMemory
    public let device: MockDSADevice
    public let provider: DSAProvider<MockDSARegisters, MockDSAPortals>
    public let registry = NetDMARegistry(drainTimeout: .seconds(2))
    public let handle: ProviderHandle
    public let channel: NetDMAChannel
    public let queue: CopyQueue
    /// The kernel thread ID of the model's engine thread (0 if it could not be found). The
    /// provider's completion poller is a third busy thread, not counted here.
    public let engineThread: Int32

    /// - Parameters:
    ///   - version: the NetDMA version the provider declares.
    ///   - ringSize: descriptors in the queue's ring.
    ///   - engineCPU: pin the engine thread to this CPU (nil: leave it to the scheduler).
    public init(version: NetDMAVersion = .v2_0, ringSize: Int = 1024, engineCPU: Int? = nil) throws {
        memory = DMAMemory(spaces: [iommu], policy: .identity, preferHugePages: false)
        (device, engineThread) = findingEngineThread(pinnedTo: engineCPU) { [iommu] in
            MockDSADevice(profile: DSA.sapphireRapids, iommu: iommu, execution: .thread,
                          options: .init(spinIterations: 20_000))
        }
        var c = DSAConfiguration(version: version, workQueues: 1)
        c.pollerSpins = 20_000
        provider = try DSAProvider(bar: device.bar0, portals: device.bar2, config: device, interrupts: nil,
                                   memory: memory, configuration: c)
        handle = try provider.register(with: registry)
        channel = try registry.allocateChannel(provider: handle)
        queue = try CopyQueue(channel: channel, ringSize: ringSize)
    }

    deinit {
        _ = try? registry.stop(handle)
        try? registry.deregister(handle)
    }

    public func buffer(_ length: Int) throws -> BufferBox { BufferBox(try memory.allocate(length: length)) }
}

/// Makes a device model that starts its engine thread, and finds that thread (the one that
/// appeared meanwhile; 0 if none did), pinned to `cpu` when given.
private func findingEngineThread<Device>(pinnedTo cpu: Int?, _ make: () -> Device) -> (Device, Int32) {
    let before = Set(threadIDs())
    let device = make()
    let engine = threadIDs().first { !before.contains($0) } ?? 0
    if let cpu, engine != 0 { _ = bench_pin_thread(engine, Int32(cpu)) }
    return (device, engine)
}

private func threadIDs() -> [Int32] {
    guard let d = opendir("/proc/self/task") else { return [] }
    defer { closedir(d) }
    var ids: [Int32] = []
    while let e = readdir(d) {
        let name = withUnsafeBytes(of: e.pointee.d_name) { raw in
            String(decoding: raw.prefix { $0 != 0 }, as: UTF8.self)
        }
        if let id = Int32(name) { ids.append(id) }
    }
    return ids
}

