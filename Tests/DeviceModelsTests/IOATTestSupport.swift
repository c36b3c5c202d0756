import DeviceModels
import Hardware
import Platform
import Synchronization
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// A model plus DMA memory mapped into its IOMMU, and helpers that speak registers.
final class IOATRig {
    let iommu: SoftIOMMU
    let memory: DMAMemory
    let device: MockIOATDevice
    var bar: MockIOATBAR { device.bar0 }
    let ch = IOAT.channelBase(0)

    init(_ name: String = "skx", execution: MockIOATDevice.Execution = .manual,
         options: MockIOATDevice.Options = .init(resetReads: 2, resetMicroseconds: 0, spinIterations: 200),
         policy: IOVAPolicy = .identity) {
        iommu = SoftIOMMU()
        memory = DMAMemory(spaces: [iommu], policy: policy, preferHugePages: false)
        device = MockIOATDevice(profile: IOAT.profile(named: name)!, iommu: iommu, execution: execution, options: options)
    }

    var profile: IOAT.Profile { device.profile }

    // MARK: registers

    func chansts() -> UInt64 { bar.read64(ch + IOAT.CHANSTS) }
    func state() -> IOAT.ChannelState? { IOAT.ChannelState(rawValue: UInt8(bar.read32(ch + IOAT.CHANSTS) & 7)) }
    func chanerr() -> IOAT.ChanErr { IOAT.ChanErr(rawValue: bar.read32(ch + IOAT.CHANERR)) }
    func write64(_ reg: Int, _ v: UInt64) {
        if profile.splitsWide64BitWrites { bar.write64Split(ch + reg, v) } else { bar.write64(ch + reg, v) }
    }
    func doorbell(_ n: UInt16) { bar.write16(ch + IOAT.DMACOUNT, n) }
    func chanctrl(_ c: IOAT.ChanCtrl) { bar.write16(ch + IOAT.CHANCTRL, c.rawValue) }
    func command(_ c: IOAT.ChanCmd) { bar.write8(ch + IOAT.CHANCMD, c.rawValue) }

    /// COMMAND = Memory | BusMaster (| INTx disable).
    func enableBusMaster() { device.config.write16(0x04, 0x0406) }

    /// The reset of §6.8 steps 4–6: quiesce, clear CHANERR (and CHANERR_INT below 3.3), RESET, poll.
    @discardableResult
    func reset(maxPolls: Int = 200) -> Int {
        if let s = state(), s == .active || s == .done {
            command(.suspend)
            var polls = 0
            while let s = state(), s != .suspended && s != .halted, polls < maxPolls { device.stepIfManual(); polls += 1 }
        }
        bar.write32(ch + IOAT.CHANERR, bar.read32(ch + IOAT.CHANERR))
        if profile.cbver < 0x33 { device.config.write32(IOAT.configCHANERR_INT, device.config.read32(IOAT.configCHANERR_INT)) }
        command(.reset)
        var polls = 0
        while bar.read8(ch + IOAT.CHANCMD) & IOAT.ChanCmd.reset.rawValue != 0 && polls < maxPolls { polls += 1 }
        return polls
    }

    /// §6.8 steps 1–9: bus master, reset, CHANCTRL, CHANCMP, CHAINADDR → ARMED.
    func start(ring: UInt64, completion: UInt64, control: IOAT.ChanCtrl = [.anyErrAbortEnable, .errCompletionEnable]) {
        enableBusMaster()
        reset()
        chanctrl(control)
        write64(IOAT.CHANCMP, completion)
        write64(IOAT.CHAINADDR, ring)
    }

    func run() { _ = device.waitUntilIdle(timeout: .seconds(20)) }

    func allocate(_ length: Int) throws -> DMABuffer { try memory.allocate(length: length) }
}

extension MockIOATDevice {
    func stepIfManual() { if execution == .manual { step() } }
}

/// A ring of 64-byte descriptors in DMA memory, linked in a circle.
struct Ring: ~Copyable {
    let buffer: DMABuffer
    let count: Int
    init(_ rig: IOATRig, count: Int) throws {
        buffer = try rig.allocate(count * 64)
        self.count = count
        for i in 0..<count { setNext(i, iova(i == count - 1 ? 0 : i + 1)) }
    }
    func iova(_ i: Int) -> UInt64 { buffer.iova + UInt64((i % count) * 64) }
    var base: UInt64 { buffer.iova }
    func setNext(_ i: Int, _ next: UInt64) {
        buffer.base.storeBytes(of: next, toByteOffset: (i % count) * 64 + IOAT.DescriptorField.next, as: UInt64.self)
    }
    /// Writes slot `i`: size, control (op in bits 31:24), src, dst; keeps `next`.
    func set(_ i: Int, size: UInt32, control: UInt32, src: UInt64 = 0, dst: UInt64 = 0,
             nextSrc: UInt64 = 0, nextDst: UInt64 = 0) {
        let p = buffer.base + (i % count) * 64
        p.storeBytes(of: size, toByteOffset: IOAT.DescriptorField.size, as: UInt32.self)
        p.storeBytes(of: control, toByteOffset: IOAT.DescriptorField.control, as: UInt32.self)
        p.storeBytes(of: src, toByteOffset: IOAT.DescriptorField.source, as: UInt64.self)
        p.storeBytes(of: dst, toByteOffset: IOAT.DescriptorField.destination, as: UInt64.self)
        p.storeBytes(of: nextSrc, toByteOffset: IOAT.DescriptorField.nextSource, as: UInt64.self)
        p.storeBytes(of: nextDst, toByteOffset: IOAT.DescriptorField.nextDestination, as: UInt64.self)
    }
    func null(_ i: Int, _ extra: UInt32 = 0) { set(i, size: 8, control: IOAT.DescriptorControl.null | extra) }
    func copy(_ i: Int, _ size: Int, src: UInt64, dst: UInt64, _ extra: UInt32 = 0) {
        set(i, size: UInt32(size), control: extra, src: src, dst: dst)
    }
    func fill(_ i: Int, _ size: Int, pattern: UInt64, dst: UInt64, _ extra: UInt32 = 0) {
        set(i, size: UInt32(size), control: UInt32(IOAT.Opcode.fill) << 24 | extra, src: pattern, dst: dst)
    }
}

/// The 8-byte completion word in its own buffer.
struct Completion: ~Copyable {
    let buffer: DMABuffer
    init(_ rig: IOATRig) throws { buffer = try rig.allocate(64) }
    var iova: UInt64 { buffer.iova }
    var value: UInt64 { buffer.base.assumingMemoryBound(to: Atomic<UInt64>.self).pointee.load(ordering: .acquiring) }
    func clear() { buffer.base.storeBytes(of: 0, as: UInt64.self) }
    var state: IOAT.ChannelState? { IOAT.ChannelState(rawValue: UInt8(value & 7)) }
    var address: UInt64 { value & IOAT.ChanSts.completedDescriptorMask }
}

let CW = IOAT.DescriptorControl.completionWrite
let IE = IOAT.DescriptorControl.intEnable

func fillRandom(_ p: UnsafeMutableRawPointer, _ n: Int, seed: UInt64) {
    var x = seed | 1
    var i = 0
    while i + 8 <= n {
        x ^= x << 13; x ^= x >> 7; x ^= x << 17
        p.storeBytes(of: x, toByteOffset: i, as: UInt64.self)
        i += 8
    }
    while i < n { x ^= x << 13; x ^= x >> 7; x ^= x << 17; p.storeBytes(of: UInt8(truncatingIfNeeded: x), toByteOffset: i, as: UInt8.self); i += 1 }
}

/// Waits (bounded) for an eventfd to be signalled; returns the count read (0 on timeout).
func waitEvent(_ fd: borrowing EventFD, milliseconds: Int32 = 2000) -> UInt64 { fd.wait(timeoutMilliseconds: milliseconds) }

/// A flag one thread sets and another polls.
final class StopFlag: Sendable {
    private let flag = Atomic<Bool>(false)
    var stopped: Bool { flag.load(ordering: .acquiring) }
    func stop() { flag.store(true, ordering: .releasing) }
}

/// A plain POSIX thread for tests that need real concurrency (not the cooperative pool).
final class TestThread: @unchecked Sendable {
    // @unchecked: `thread` is written once in init before anyone else sees the object.
    private var thread = pthread_t()
    private let body: @Sendable () -> Void

    init(_ body: @escaping @Sendable () -> Void) {
        self.body = body
        let context = Unmanaged.passRetained(self).toOpaque()
        let r = pthread_create(&thread, nil, { context in
            let me = Unmanaged<TestThread>.fromOpaque(context!).takeRetainedValue()
            me.body()
            return nil
        }, context)
        precondition(r == 0)
    }

    func join() { pthread_join(thread, nil) }
}
