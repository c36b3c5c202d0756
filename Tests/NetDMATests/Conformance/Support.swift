import NetDMA
import Platform
import Synchronization
import Testing

#if canImport(Glibc)
import Glibc
#endif

// SHARED CONFORMANCE SUITE. This directory is compiled by two test targets: NetDMATests (the
// fixture memcpy provider) and, through the symlink Tests/ProviderTests/NetDMAConformance,
// ProviderTests (the hardware providers on their device models). Each target supplies
// `TargetFactory.all`, `.primary(_:)` and `.withoutInterrupts` (see TargetFactory).

/// A provider under conformance test, with the few hooks the tests need to reach engine
/// states deterministically. The fixture and the hardware providers on their device models
/// implement it, and the same tests run against each.
protocol ConformanceTarget: AnyObject, Sendable {
    var provider: any NetDMAProvider { get }
    var attributes: ProviderAttributes { get }
    /// Stops the engine (after the registry stopped the provider).
    func shutdown()
    /// Holds (or releases) the engine of channel `index` after it fetched a descriptor,
    /// before it moves data.
    func hold(channel index: Int, _ on: Bool)
    /// The descriptor the engine of channel `index` is working on (0: none).
    func inFlight(channel index: Int) -> UInt64
    /// Whether a Suspend on channel `index` has been requested (the engine will halt after the
    /// current descriptor).
    func suspendRequested(channel index: Int) -> Bool
    /// Interrupts the engine raised on channel `index`.
    func interruptsRaised(channel index: Int) -> Int
    /// Re-arms the provider did on channel `index`.
    func rearms(channel index: Int) -> Int
    /// The first descriptor flags of every Start on channel `index`, in order.
    func startedFlags(channel index: Int) -> [ControlFlags]
    /// Simulates a power cycle that loses the engine's context (1.0 providers).
    func loseContext(channel index: Int)
}

/// Makes a fresh target for one test. Conformance tests take these as arguments.
struct TargetFactory: Sendable, CustomTestStringConvertible {
    let name: String
    let version: NetDMAVersion
    let make: @Sendable () throws -> any ConformanceTarget
    var testDescription: String { "\(name) \(version)" }

    // Each test target that compiles this suite defines, in its own file:
    //   static let all: [TargetFactory]                 every target, every NetDMA version
    //   static func primary(_: NetDMAVersion) -> TargetFactory   the target of single-version tests
    //   static var withoutInterrupts: TargetFactory     a 2.0 target whose channels have no vector

    /// Targets whose provider sends power events (1.1+).
    static var powerEvents: [TargetFactory] { all.filter { $0.version.powerEvents } }
}

/// A started provider on its own registry, a channel helper, and DMA buffers.
final class Harness {
    let registry: NetDMARegistry
    let target: any ConformanceTarget
    let handle: ProviderHandle
    var memory: DMAMemory { target.provider.dmaMemory }
    private var closed = false

    init(_ factory: TargetFactory, drainTimeout: Duration = .seconds(2)) throws {
        registry = NetDMARegistry(drainTimeout: drainTimeout)
        target = try factory.make()
        handle = try registry.register(target.provider)
        try registry.start(handle, attributes: target.attributes)
    }

    func close() {
        guard !closed else { return }
        closed = true
        _ = try? registry.stop(handle)
        try? registry.deregister(handle)
        target.shutdown()
    }

    deinit { close() }

    func channel(affinity: CPUSet = CPUSet.allowed, priority: Int = 0) throws(DriverError) -> NetDMAChannel {
        try registry.allocateChannel(provider: handle, affinity: affinity, priority: priority)
    }
}

/// Fills descriptor `i` of `pool` with a copy.
func setCopy(_ pool: DescriptorPool, _ i: Int, from source: UInt64, to destination: UInt64, length: Int,
             flags: ControlFlags = [.statusUpdateOnCompletion]) {
    let next = pool[i].pointee.next
    pool[i].pointee = Descriptor(transferSize: UInt32(length), controlFlags: flags, source: source, destination: destination, next: next)
}

/// Fills descriptor `i` of `pool` with a NULL transfer.
func setNull(_ pool: DescriptorPool, _ i: Int, flags: ControlFlags = [.statusUpdateOnCompletion]) {
    let next = pool[i].pointee.next
    pool[i].pointee = Descriptor(controlFlags: flags.union(.nullTransfer), next: next)
}

/// Links descriptors `range` as a chain in the provider's format: 2.0 links the last one to
/// the descriptor after the range (never NULL); 1.x ends it with NULL.
func link(_ pool: DescriptorPool, _ range: Range<Int>, counted: Bool) -> DescriptorChain {
    for i in range {
        let last = i + 1 == range.upperBound
        pool[i].pointee.next = last && !counted ? 0 : pool.iova(at: (i + 1) % pool.count)
    }
    return pool.chain(from: range.lowerBound, count: range.count)
}

/// Waits (bounded) until `condition` holds; false on timeout. Never sleeps a fixed time.
@discardableResult
func waitUntil(_ timeout: Duration = .seconds(5), _ condition: () -> Bool) -> Bool {
    let deadline = ContinuousClock.now + timeout
    while !condition() {
        if ContinuousClock.now >= deadline { return false }
        var ts = timespec(tv_sec: 0, tv_nsec: 20_000)  // poll the condition; leave the CPU to the engine
        nanosleep(&ts, nil)
    }
    return true
}

/// Deterministic pseudo-random numbers (the tests print the seed they use).
struct SplitMix: RandomNumberGenerator {
    var state: UInt64
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}

/// Byte `i` of the test pattern for seed `s`.
@inline(__always)
func pattern(_ i: Int, _ s: UInt8) -> UInt8 { UInt8(truncatingIfNeeded: i &* 31 &+ Int(s)) }

extension DMABuffer {
    func fillPattern(_ s: UInt8) {
        let p = base.assumingMemoryBound(to: UInt8.self)
        for i in 0..<length { p[i] = pattern(i, s) }
    }
    func bytes(at offset: Int, count: Int) -> [UInt8] {
        Array(UnsafeBufferPointer(start: (base + offset).assumingMemoryBound(to: UInt8.self), count: count))
    }
    func zero() { memset(base, 0, length) }
}

/// A joinable pthread for calls that block (the suite's own; not the test's cooperative pool).
final class ConformanceThread: @unchecked Sendable {
    private var thread = pthread_t()
    private final class Body {
        let run: @Sendable () -> Void
        init(_ run: @escaping @Sendable () -> Void) { self.run = run }
    }
    init(_ run: @escaping @Sendable () -> Void) {
        let body = Unmanaged.passRetained(Body(run)).toOpaque()
        let r = pthread_create(&thread, nil, { arg in
            Unmanaged<Body>.fromOpaque(arg!).takeRetainedValue().run()
            return nil
        }, body)
        precondition(r == 0, "pthread_create failed: \(r)")
    }
    func join() { pthread_join(thread, nil) }
}

/// A call running on its own thread (not the test's cooperative pool, which the blocking
/// test code may be holding), for calls that block until the engine moves (Suspend).
final class Background<T: Sendable>: @unchecked Sendable {
    // @unchecked: `result` is written by the thread before `join` returns and read after.
    private var result: Result<T, DriverError>?
    private var thread: ConformanceThread?
    init(_ body: @escaping @Sendable () throws(DriverError) -> T) {
        thread = ConformanceThread { [self] in
            do throws(DriverError) { result = .success(try body()) } catch { result = .failure(error) }
        }
    }
    func value() throws(DriverError) -> T {
        thread?.join()
        thread = nil
        return try result!.get()
    }
}
