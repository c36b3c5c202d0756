import DeviceModels
import Hardware
import IOAT
import NetDMA
import Platform
import Synchronization
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// Bounds for the register sequences on a model whose engine thread shares two busy cores with
/// parallel tests: generous, so a slow scheduler never fails a test (they are bounds, not waits).
let ioatTestTimeouts = IOATTimeouts(quiesce: .seconds(5), reset: .seconds(5), selfTest: .seconds(5), recovery: .milliseconds(100))

/// Every CBDMA generation the model has, oldest first, except CB 1.x (tested on its own).
let ioatV3Profiles = IOAT.profiles.filter { !$0.isV1 }.map(\.name)
/// All profiles, including CB 1.2.
let ioatAllProfiles = IOAT.profiles.map(\.name)

/// A model, DMA memory in its IOMMU, and an ``IOATProvider`` brought up on it.
///
/// With `execution: .manual` the engine only runs when the test steps it; provider calls that
/// wait for the engine (bring-up, Suspend, a Start that stops a busy engine) then run through
/// ``whileStepping(_:)``.
final class IOATProviderRig: @unchecked Sendable {
    // @unchecked: test scaffolding used from one test at a time.
    let iommu = SoftIOMMU()
    let memory: DMAMemory
    let device: MockIOATDevice
    let config: MockIOATDevice
    var provider: IOATProvider<IOATCountingBAR>!
    /// The BAR the provider drives: the model's, counting writes.
    let bar: IOATCountingBAR
    var profile: IOAT.Profile { device.profile }

    init(_ name: String, version: NetDMAVersion = .v2_0, execution: MockIOATDevice.Execution = .thread,
         interrupts: Bool = true, prepare: (MockIOATDevice) -> Void = { _ in }) throws {
        memory = DMAMemory(spaces: [iommu], policy: .allocate(in: 0x1_0000_0000...0xFF_FFFF_FFFF), preferHugePages: false)
        device = MockIOATDevice(profile: IOAT.profile(named: name)!, iommu: iommu, execution: execution,
                                options: .init(resetReads: 3, resetMicroseconds: 0, spinIterations: 500))
        config = device
        bar = IOATCountingBAR(base: device.bar0)
        prepare(device)
        let make = { [self] () throws(DriverError) -> IOATProvider<IOATCountingBAR> in
            try IOATProvider(bar: bar, config: config, interrupts: interrupts ? device : nil, memory: memory,
                             configuration: .init(version: version, timeouts: ioatTestTimeouts))
        }
        provider = execution == .manual ? try whileStepping(make) : try make()
    }

    /// Runs `work` on a helper thread while this thread steps the (manual) engine, until
    /// `work` returns. Deterministic: stepping starts only once `work` has written its first
    /// register (its command is posted before the engine moves on).
    /// With `gate: false` stepping starts at once (for calls that wait before they write).
    func whileStepping<T>(gate: Bool = true, _ work: @escaping () throws(DriverError) -> T) throws(DriverError) -> T {
        let box = IOATResultBox<T>()
        let writes = bar.writes
        let thread = IOATThread { box.set(Result { () throws(DriverError) -> T in try work() }) }
        while gate && !box.done && bar.writes == writes { sched_yield() }
        while !box.done {
            if !device.step() { sched_yield() }
        }
        thread.join()
        return try box.result!.get()
    }

    /// Allocates a zeroed DMA buffer.
    func buffer(_ length: Int) throws -> DMABuffer { try memory.allocate(length: length) }

    /// The model's channel registers.
    func chansts(_ c: Int = 0) -> UInt64 {
        let off = IOAT.channelBase(c) + (profile.isV1 ? IOAT.V1.CHANSTS : IOAT.CHANSTS)
        return device.bar0.read64Split(off)
    }
    func state(_ c: Int = 0) -> IOAT.ChannelState? { IOAT.ChannelState(rawValue: UInt8(chansts(c) & 7)) }
    func chanerr(_ c: Int = 0) -> UInt32 { device.bar0.read32(IOAT.channelBase(c) + IOAT.CHANERR) }
}

/// A provider channel allocated directly (no registry), with its own completion word.
final class IOATDirectChannel: @unchecked Sendable {
    let word: DMABuffer
    let channel: IOATChannel<IOATCountingBAR>
    let cpu: Int

    init(_ rig: IOATProviderRig, affinity: CPUSet = [0], completionIOVA: UInt64? = nil) throws {
        word = try rig.buffer(64)
        word.base.storeBytes(of: UInt64(TransferStatus.armed.rawValue), as: UInt64.self)
        let p = ChannelParameters(completionAddress: word.base.assumingMemoryBound(to: UInt64.self),
                                  completionIOVA: completionIOVA ?? word.iova, affinity: affinity)
        let (ch, cpu) = try rig.provider.allocateChannel(p)
        channel = ch as! IOATChannel<IOATCountingBAR>
        self.cpu = cpu
    }

    var completion: CompletionWord {
        CompletionWord(rawValue: word.base.assumingMemoryBound(to: Atomic<UInt64>.self).pointee.load(ordering: .acquiring))
    }

    /// Reads the channel's eventfd without blocking (0: not signalled).
    func consumeInterrupts() -> UInt64 {
        guard let fd = channel.interruptEventFD else { return 0 }
        var v: UInt64 = 0
        return read(fd, &v, 8) == 8 ? v : 0
    }

    /// Waits (bounded) for the channel's eventfd; returns the count (0 on timeout).
    func waitInterrupt(milliseconds: Int32 = 2000) -> UInt64 {
        guard let fd = channel.interruptEventFD else { return 0 }
        var p = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
        guard poll(&p, 1, milliseconds) == 1 else { return 0 }
        return consumeInterrupts()
    }
}

/// Builds descriptors in a pool.
enum IOATChain {
    /// A copy descriptor (keeps `next`).
    static func copy(_ pool: DescriptorPool, _ i: Int, from s: UInt64, to d: UInt64, _ n: Int,
                     _ flags: ControlFlags = [.statusUpdateOnCompletion]) {
        let next = pool[i].pointee.next
        pool[i].pointee = Descriptor(transferSize: UInt32(n), controlFlags: flags, source: s, destination: d, next: next)
    }
    /// A fill descriptor (keeps `next`).
    static func fill(_ pool: DescriptorPool, _ i: Int, pattern: UInt64, to d: UInt64, _ n: Int,
                     _ flags: ControlFlags = [.statusUpdateOnCompletion]) {
        let next = pool[i].pointee.next
        var f = flags
        f.operation = .fill
        pool[i].pointee = Descriptor(transferSize: UInt32(n), controlFlags: f, source: pattern, destination: d, next: next)
    }
    /// A NULL descriptor of size 1 (CB 3.0 erratum), keeps `next`.
    static func null(_ pool: DescriptorPool, _ i: Int, _ flags: ControlFlags = [.statusUpdateOnCompletion]) {
        let next = pool[i].pointee.next
        pool[i].pointee = Descriptor(transferSize: 1, controlFlags: flags.union(.nullTransfer), next: next)
    }
    /// Links `range`: counted chains point the last at the next slot, 1.x chains end in NULL.
    static func link(_ pool: DescriptorPool, _ range: Range<Int>, counted: Bool) -> DescriptorChain {
        for i in range {
            let last = i + 1 == range.upperBound
            pool[i].pointee.next = last && !counted ? 0 : pool.iova(at: (i + 1) % pool.count)
        }
        return pool.chain(from: range.lowerBound, count: range.count)
    }
}

extension DMABuffer {
    /// Fills with a position- and seed-dependent pattern.
    func ioatPattern(_ seed: UInt8) {
        let p = base.assumingMemoryBound(to: UInt8.self)
        for i in 0..<length { p[i] = UInt8(truncatingIfNeeded: i &* 31 &+ Int(seed) &+ i >> 8) }
    }
    func ioatBytes(_ offset: Int, _ count: Int) -> [UInt8] {
        Array(UnsafeBufferPointer(start: (base + offset).assumingMemoryBound(to: UInt8.self), count: count))
    }
    func ioatEqual(_ offset: Int, _ other: borrowing DMABuffer, _ otherOffset: Int, _ count: Int) -> Bool {
        memcmp(base + offset, other.base + otherOffset, count) == 0
    }
    func ioatAllZero(_ offset: Int, _ count: Int) -> Bool {
        ioatBytes(offset, count).allSatisfy { $0 == 0 }
    }
}

/// Waits (bounded) until `condition` holds; false on timeout. Never sleeps a fixed time.
@discardableResult
func ioatWait(_ timeout: Duration = .seconds(5), _ condition: () -> Bool) -> Bool {
    let deadline = ContinuousClock.now + timeout
    while !condition() {
        if ContinuousClock.now >= deadline { return false }
        sched_yield()
    }
    return true
}

final class IOATResultBox<T>: @unchecked Sendable {
    private let lock = Mutex<Void>(())
    private var value: Result<T, DriverError>?
    private let finished = Atomic<Bool>(false)
    var done: Bool { finished.load(ordering: .acquiring) }
    var result: Result<T, DriverError>? { lock.withLock { _ in value } }
    func set(_ r: Result<T, DriverError>) {
        lock.withLock { _ in value = r }
        finished.store(true, ordering: .releasing)
    }
}

/// A joinable native thread for tests.
final class IOATThread: @unchecked Sendable {
    private var thread: pthread_t
    private final class Body { let run: () -> Void; init(_ r: @escaping () -> Void) { run = r } }

    init(_ body: @escaping () -> Void) {
        let ctx = Unmanaged.passRetained(Body(body)).toOpaque()
        var t = pthread_t()
        let r = pthread_create(&t, nil, { raw in
            let b = Unmanaged<Body>.fromOpaque(raw!).takeRetainedValue()
            b.run()
            return nil
        }, ctx)
        precondition(r == 0, "pthread_create failed: \(r)")
        thread = t
    }
    func join() { pthread_join(thread, nil) }
}

/// A ``RegisterIO`` that forwards to another and records every write (offset, width, value),
/// to check the order of a register sequence.
struct IOATRecordingBAR<Base: RegisterIO & Sendable>: RegisterIO, Sendable {
    struct Write: Sendable, Hashable { let offset: Int; let width: Int; let value: UInt64 }
    let base: Base
    let log = IOATLog<Write>()
    var length: Int { base.length }
    func read8(_ offset: Int) -> UInt8 { base.read8(offset) }
    func read16(_ offset: Int) -> UInt16 { base.read16(offset) }
    func read32(_ offset: Int) -> UInt32 { base.read32(offset) }
    func read64(_ offset: Int) -> UInt64 { base.read64(offset) }
    func write8(_ offset: Int, _ value: UInt8) { log.append(Write(offset: offset, width: 1, value: UInt64(value))); base.write8(offset, value) }
    func write16(_ offset: Int, _ value: UInt16) { log.append(Write(offset: offset, width: 2, value: UInt64(value))); base.write16(offset, value) }
    func write32(_ offset: Int, _ value: UInt32) { log.append(Write(offset: offset, width: 4, value: UInt64(value))); base.write32(offset, value) }
    func write64(_ offset: Int, _ value: UInt64) { log.append(Write(offset: offset, width: 8, value: value)); base.write64(offset, value) }
}

final class IOATLog<T: Sendable>: Sendable {
    private let items = Mutex<[T]>([])
    func append(_ x: T) { items.withLock { $0.append(x) } }
    var all: [T] { items.withLock { $0 } }
    func clear() { items.withLock { $0.removeAll() } }
}

/// The model's BAR, counting register writes (to know when a provider call has posted its
/// first command).
struct IOATCountingBAR: RegisterIO, Sendable {
    let base: MockIOATBAR
    private let count = IOATCounter()
    private let readHook = IOATReadHook()
    init(base: MockIOATBAR) { self.base = base }
    var writes: Int { count.value }
    var length: Int { base.length }
    func read8(_ offset: Int) -> UInt8 { base.read8(offset) }
    func read16(_ offset: Int) -> UInt16 { base.read16(offset) }
    func read32(_ offset: Int) -> UInt32 {
        if let hook = readHook.slot.withLock({ h -> (@Sendable () -> Void)? in
            guard let e = h, e.offset == offset else { return nil }
            h = nil  // once: the hook may read the register itself
            return e.run
        }) { hook() }
        return base.read32(offset)
    }
    func read64(_ offset: Int) -> UInt64 { base.read64(offset) }
    /// Runs `run` once, just before the next 32-bit read of `offset` reaches the model: a
    /// deterministic way to put another thread's work between a driver's checks and its read.
    func beforeNextRead32(of offset: Int, _ run: @escaping @Sendable () -> Void) {
        readHook.slot.withLock { $0 = (offset, run) }
    }
    func write8(_ offset: Int, _ value: UInt8) { base.write8(offset, value); count.bump() }
    func write16(_ offset: Int, _ value: UInt16) { base.write16(offset, value); count.bump() }
    func write32(_ offset: Int, _ value: UInt32) { base.write32(offset, value); count.bump() }
    func write64(_ offset: Int, _ value: UInt64) { base.write64(offset, value); count.bump() }
}

final class IOATReadHook: Sendable {
    let slot = Mutex<(offset: Int, run: @Sendable () -> Void)?>(nil)
}

final class IOATCounter: Sendable {
    private let n = Atomic<Int>(0)
    var value: Int { n.load(ordering: .acquiring) }
    func bump() { n.add(1, ordering: .releasing) }
}
