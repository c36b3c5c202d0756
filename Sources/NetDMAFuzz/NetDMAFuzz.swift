// libFuzzer harness for the device models and the providers.
//
// Built with `-sanitize=fuzzer` and `-D NETDMA_FUZZING` (see Scripts/fuzz), `main` hands every
// input libFuzzer generates to `fuzzOne`. Built normally (`swift build`), it is
// `NetDMAFuzz FILE|DIR...`: it runs every input through the same code once, so the committed
// corpus is a regression test that needs no libFuzzer.
//
// An input's first byte picks a target:
//   0  CBDMA model: arbitrary BAR0 / config-space accesses, engine steps, injected faults, power loss
//   1  DSA model: arbitrary BAR0 / config accesses, portal writes, engine steps, faults, FLR, power loss
//   2  IOATProvider on the CBDMA model: arbitrary descriptor chains and NetDMA calls
//   3  DSAProvider on the DSA model: the same
// Every byte of memory a model can reach is a guarded arena (PROT_NONE pages on both sides) that
// is registered as DMA memory: a device access outside the mapped buffers faults at once.
// Under AddressSanitizer, heap corruption by the models or providers is reported too.

import DSA
import DeviceModels
import Hardware
import IOAT
import NetDMA
import Platform
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// Reads an input front to back; past the end every read is 0.
struct FuzzInput {
    let bytes: UnsafeRawBufferPointer
    var index = 0
    init(_ bytes: UnsafeRawBufferPointer) { self.bytes = bytes }
    var done: Bool { index >= bytes.count }
    mutating func u8() -> UInt8 {
        guard index < bytes.count else { return 0 }
        defer { index += 1 }
        return bytes[index]
    }
    mutating func u16() -> UInt16 { UInt16(u8()) | UInt16(u8()) << 8 }
    mutating func u32() -> UInt32 { UInt32(u16()) | UInt32(u16()) << 16 }
    mutating func u64() -> UInt64 { UInt64(u32()) | UInt64(u32()) << 32 }
    /// Copies up to `count` bytes to `destination`; returns how many.
    mutating func copy(to destination: UnsafeMutableRawPointer, count: Int) -> Int {
        let n = min(count, bytes.count - index)
        guard n > 0 else { return 0 }
        destination.copyMemory(from: bytes.baseAddress! + index, byteCount: n)
        index += n
        return n
    }
}

/// Caller-owned memory with an inaccessible page on each side, registered as DMA memory.
final class GuardedArena {
    static let pages = 16
    let page = Int(sysconf(Int32(_SC_PAGESIZE)))
    let mapping: UnsafeMutableRawPointer
    let base: UnsafeMutableRawPointer
    let length: Int
    let iova: UInt64
    let memory: DMAMemory

    init(memory: DMAMemory) throws(DriverError) {
        length = Self.pages * page
        let total = length + 2 * page
        guard let m = mmap(nil, total, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0), m != MAP_FAILED else {
            throw DriverError(.outOfMemory, "Cannot map the fuzz arena.")
        }
        mapping = m
        base = m + page
        precondition(mprotect(base, length, PROT_READ | PROT_WRITE) == 0, "mprotect failed")
        self.memory = memory
        iova = try memory.register(base, length: length)
    }

    deinit {
        try? memory.unregister(base)
        munmap(mapping, length + 2 * page)
    }

    func clear() { memset(base, 0, length) }

    /// An IOVA inside the arena for a fuzzer-chosen value (64-byte aligned with `align`).
    func inside(_ v: UInt64, align: Bool = false) -> UInt64 {
        let off = v % UInt64(length)
        return iova + (align ? off & ~63 : off)
    }
}

/// The models' address space and DMA memory: small IOVAs, so fuzzed pointers can hit them.
func makeMemory() -> (SoftIOMMU, DMAMemory) {
    let iommu = SoftIOMMU()
    return (iommu, DMAMemory(spaces: [iommu], policy: .allocate(in: 0x10000...0xFFFF_FFFF), preferHugePages: false))
}

// MARK: - 0: CBDMA model registers

func fuzzIOATModel(_ input: inout FuzzInput) {
    let profile = IOAT.profiles[Int(input.u8()) % IOAT.profiles.count]
    let (iommu, memory) = makeMemory()
    guard let arena = try? GuardedArena(memory: memory) else { return }
    _ = input.copy(to: arena.base, count: Int(input.u16()) % 2048)
    let device = MockIOATDevice(profile: profile, iommu: iommu, execution: .manual,
                                options: .init(resetReads: 1, resetMicroseconds: 0, spinIterations: 1))
    let bar = device.bar0, config = device.config
    if input.u8() & 1 == 0 { config.write16(0x04, 0x6) }  // memory decode and bus mastering on
    var ops = 0
    while !input.done && ops < 512 {
        ops += 1
        let op = input.u8()
        let width = 1 << Int(op >> 3 & 3)
        switch op & 7 {
        case 0:
            // Beyond BAR0 too: the CBDMA model reads all ones there and drops writes, as a bus does.
            let offset = (Int(input.u16()) % (bar.length + 256)) & ~(width - 1)
            let v = input.u64()
            switch width {
            case 1: bar.write8(offset, UInt8(truncatingIfNeeded: v))
            case 2: bar.write16(offset, UInt16(truncatingIfNeeded: v))
            case 4: bar.write32(offset, UInt32(truncatingIfNeeded: v))
            default: bar.write64(offset, v)
            }
        case 1:
            let offset = (Int(input.u16()) % (bar.length + 256)) & ~(width - 1)
            switch width {
            case 1: _ = bar.read8(offset)
            case 2: _ = bar.read16(offset)
            case 4: _ = bar.read32(offset)
            default: _ = bar.read64(offset)
            }
        case 2:
            let offset = (Int(input.u16()) % 4096) & ~3
            config.write32(offset, input.u32())
        case 3:
            _ = config.read32((Int(input.u16()) % 4096) & ~3)
        case 4:
            for _ in 0..<Int(input.u8() % 64) { device.step() }
        case 5:
            let channel = Int(input.u8()) % device.channelCount
            if input.u8() & 1 == 0 {
                device.inject(.failDescriptor(index: Int(input.u8() % 4), error: IOAT.ChanErr(rawValue: input.u32())), channel: channel)
            } else {
                device.inject(.corruptRead(index: Int(input.u8() % 4), byteOffset: Int(input.u16()), mask: input.u8()), channel: channel)
            }
        case 6:
            device.injectPowerLoss(loseConfiguration: input.u8() & 1 == 1)
        default:
            // A well-formed start: CHANCMP and CHAINADDR inside the arena, then the doorbell.
            let c = IOAT.channelBase(Int(input.u8()) % device.channelCount)
            bar.write16(c + IOAT.CHANCTRL, input.u16())
            bar.write64Split(c + IOAT.CHANCMP, arena.inside(input.u64()) & ~63)
            bar.write64Split(c + IOAT.CHAINADDR, arena.inside(input.u64(), align: true))
            bar.write16(c + IOAT.DMACOUNT, input.u16())
        }
    }
    device.runUntilIdle(maxSteps: 4096)
}

// MARK: - 1: DSA model registers and portals

func fuzzDSAModel(_ input: inout FuzzInput) {
    let profile = input.u8() & 1 == 0 ? DSA.sapphireRapids : DSA.dsa2
    let (iommu, memory) = makeMemory()
    guard let arena = try? GuardedArena(memory: memory) else { return }
    _ = input.copy(to: arena.base, count: Int(input.u16()) % 2048)
    let device = MockDSADevice(profile: profile, iommu: iommu, execution: .manual,
                               options: .init(commandLatency: Int(input.u8() % 3), strictReservedOperand: input.u8() & 1 == 1,
                                              strictFence: input.u8() & 1 == 1, spinIterations: 1))
    let bar = device.bar0, portals = device.bar2, config = device.config
    let descriptor = UnsafeMutableRawPointer.allocate(byteCount: 64, alignment: 64)
    defer { descriptor.deallocate() }
    var ops = 0
    while !input.done && ops < 512 {
        ops += 1
        let op = input.u8()
        switch op & 7 {
        case 0:
            // RegisterIO's precondition: inside the window (the DSA model traps otherwise).
            let offset = (Int(input.u16()) % bar.length) & ~3
            if op & 8 == 0 { bar.write32(offset, input.u32()) } else { bar.write64(offset & ~7, input.u64()) }
        case 1:
            let offset = (Int(input.u16()) % bar.length) & ~3
            if op & 8 == 0 { _ = bar.read32(offset) } else { _ = bar.read64(offset & ~7) }
        case 2:
            // A portal write: a fuzzed descriptor, its addresses moved into the arena unless bit 3 says raw.
            memset(descriptor, 0, 64)
            _ = input.copy(to: descriptor, count: 64)
            if op & 8 == 0 {
                for field in [8, 16, 24, 32] {  // completion record, source, destination, second address
                    let v = descriptor.load(fromByteOffset: field, as: UInt64.self)
                    descriptor.storeBytes(of: arena.inside(v, align: field == 8), toByteOffset: field, as: UInt64.self)
                }
                let size = descriptor.load(fromByteOffset: 40, as: UInt32.self) % 8192
                descriptor.storeBytes(of: size, toByteOffset: 40, as: UInt32.self)
            }
            let offset = (Int(input.u16()) % portals.length) & ~63
            portals.submit64(offset, descriptor)
        case 3:
            let offset = (Int(input.u16()) % 4096) & ~3
            if op & 8 == 0 { config.write32(offset, input.u32()) } else { _ = config.read32(offset) }
        case 4:
            for _ in 0..<Int(input.u8() % 64) { device.step() }
        case 5:
            if op & 8 == 0 {
                device.inject(.failDescriptor(index: Int(input.u8() % 4), status: DSA.CompletionStatus(rawValue: input.u8())))
            } else {
                device.inject(.halt(resetType: DSA.ResetType(rawValue: UInt32(input.u8() % 4)) ?? .flr))
            }
        case 6:
            switch input.u8() % 4 {
            case 0: device.functionLevelReset()
            case 1: device.injectPowerLoss(stayOff: false)
            case 2: device.injectPowerLoss(stayOff: true)
            default: device.powerOn()
            }
        default:
            device.busMasterEnabled = input.u8() & 1 == 1
        }
    }
    device.runUntilIdle(maxSteps: 4096)
}

// MARK: - 2, 3: descriptor chains through the providers

/// A provider on a model with an engine thread, kept for the whole fuzzing process (bring-up
/// is too slow to repeat per input); each input allocates a channel, runs, resets and frees it.
final class ProviderRig: @unchecked Sendable {
    // @unchecked: used by the fuzzing thread only.
    let registry = NetDMARegistry(drainTimeout: .milliseconds(50))
    let memory: DMAMemory
    let arena: GuardedArena
    let handle: ProviderHandle
    let keep: [AnyObject]
    let idle: () -> Bool

    init(dsa: Bool) throws(DriverError) {
        let (iommu, memory) = makeMemory()
        self.memory = memory
        arena = try GuardedArena(memory: memory)
        if dsa {
            let device = MockDSADevice(profile: DSA.sapphireRapids, iommu: iommu, execution: .thread, options: .init(spinIterations: 50))
            var c = DSAConfiguration(version: .v2_0, workQueues: 2)
            c.pollerSpins = 50
            let provider = try DSAProvider(bar: device.bar0, portals: device.bar2, config: device, interrupts: nil,
                                           memory: memory, configuration: c)
            handle = try provider.register(with: registry)
            keep = [device, provider]
            idle = { device.waitUntilIdle(timeout: .milliseconds(200)) }
        } else {
            let device = MockIOATDevice(profile: IOAT.profile(named: "icx")!, iommu: iommu, execution: .thread,
                                        options: .init(resetReads: 1, resetMicroseconds: 0, spinIterations: 50))
            let provider = try IOATProvider(bar: device.bar0, config: device, interrupts: nil, memory: memory)
            handle = try provider.register(with: registry)
            keep = [device, provider]
            idle = { device.waitUntilIdle(timeout: .milliseconds(200)) }
        }
    }

    static let ioat = Result { () throws(DriverError) in try ProviderRig(dsa: false) }
    static let dsa = Result { () throws(DriverError) in try ProviderRig(dsa: true) }
}

func fuzzProvider(_ input: inout FuzzInput, _ rig: ProviderRig) {
    let arena = rig.arena
    arena.clear()
    let descriptors = 32
    let dataOffset = descriptors * 64
    let dataLength = arena.length - dataOffset
    // The descriptors: fuzzed; unless the mode byte says raw, sizes are bounded and addresses
    // point into the arena (sources anywhere in it, destinations in the data area, `next` at
    // one of the descriptors or NULL), so chains run deep rather than fail at once.
    let raw = input.u8() & 1 == 1
    _ = input.copy(to: arena.base, count: dataOffset)
    if !raw {
        for i in 0..<descriptors {
            let d = (arena.base + i * 64).assumingMemoryBound(to: Descriptor.self)
            d.pointee.transferSize %= 6000
            d.pointee.source = d.pointee.controlFlags >> 24 == 1 ? d.pointee.source : arena.inside(d.pointee.source)
            d.pointee.destination = arena.iova + UInt64(dataOffset) + d.pointee.destination % UInt64(dataLength)
            d.pointee.next = d.pointee.next & 0x100 == 0 ? 0 : arena.iova + 64 * (d.pointee.next % UInt64(descriptors))
            d.pointee.nextSource = arena.inside(d.pointee.nextSource) & ~0xFFF
            d.pointee.nextDestination = arena.inside(d.pointee.nextDestination) & ~0xFFF
        }
    }
    guard let channel = try? rig.registry.allocateChannel(provider: rig.handle) else {
        fatalError("A channel could not be allocated: the previous input leaked one.")
    }
    func chain() -> DescriptorChain {
        let first = Int(input.u8()) % descriptors
        let count = Int(input.u8() % 40) + (input.u8() & 1 == 0 ? 1 : 0)
        return DescriptorChain(address: (arena.base + first * 64).assumingMemoryBound(to: Descriptor.self),
                               iova: arena.iova + UInt64(first * 64), count: count)
    }
    var calls = 0
    while !input.done && calls < 24 {
        calls += 1
        switch input.u8() % 8 {
        case 0, 1: try? channel.start(chain())
        case 2, 3: try? channel.append(chain())
        case 4: _ = try? channel.suspend()
        case 5: try? channel.resume()
        case 6: try? channel.abort()
        default:
            for _ in 0..<Int(input.u8() % 64) { sched_yield() }
        }
    }
    // Back to a state Free accepts: resume, reset, and the engine idle.
    if channel.state == .suspended { try? channel.resume() }
    if channel.state != .allocated {
        do { try channel.reset() } catch { fatalError("Reset after the fuzzed calls failed: \(error)") }
    }
    if !rig.idle() { fatalError("The engine did not go idle within 200 ms after a reset.") }
    do { try channel.free() } catch { fatalError("Free after a reset failed: \(error)") }
}

// MARK: - entry points

/// Runs one input. Never throws: any failure is a crash libFuzzer reports.
func fuzzOne(_ data: UnsafeRawBufferPointer) {
    var input = FuzzInput(data)
    switch input.u8() % 4 {
    case 0: fuzzIOATModel(&input)
    case 1: fuzzDSAModel(&input)
    case 2:
        switch ProviderRig.ioat {
        case .success(let rig): fuzzProvider(&input, rig)
        case .failure(let e): fatalError("IOAT provider bring-up failed: \(e)")
        }
    default:
        switch ProviderRig.dsa {
        case .success(let rig): fuzzProvider(&input, rig)
        case .failure(let e): fatalError("DSA provider bring-up failed: \(e)")
        }
    }
}

#if NETDMA_FUZZING
/// libFuzzer's driver (`LLVMFuzzerRunDriver`, LLVM 12+): SwiftPM names an executable's entry
/// point itself, so the harness calls the driver from its own `main`.
@_silgen_name("LLVMFuzzerRunDriver")
func LLVMFuzzerRunDriver(_ argc: UnsafeMutablePointer<CInt>,
                         _ argv: UnsafeMutablePointer<UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>>,
                         _ callback: @convention(c) (UnsafePointer<UInt8>?, Int) -> CInt) -> CInt

@main
struct Fuzz {
    static func main() {
        var argc = CommandLine.argc
        var argv = CommandLine.unsafeArgv
        exit(LLVMFuzzerRunDriver(&argc, &argv) { data, size in
            fuzzOne(UnsafeRawBufferPointer(start: data, count: data == nil ? 0 : size))
            return 0
        })
    }
}
#else
/// `NetDMAFuzz FILE|DIR...`: runs each input (each file of a directory) once.
@main
struct Replay {
    static func main() {
        var files: [String] = []
        for path in CommandLine.arguments.dropFirst() {
            if let d = opendir(path) {
                while let e = readdir(d) {
                    let name = withUnsafeBytes(of: e.pointee.d_name) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
                    if !name.hasPrefix(".") { files.append(path + "/" + name) }
                }
                closedir(d)
            } else {
                files.append(path)
            }
        }
        files.sort()
        guard !files.isEmpty else {
            print("usage: NetDMAFuzz FILE|DIR...  (runs each input through the fuzz harness once)")
            exit(2)
        }
        for f in files {
            guard let fp = fopen(f, "rb") else { print("cannot open \(f)"); exit(2) }
            var bytes: [UInt8] = []
            var buf = [UInt8](repeating: 0, count: 65536)
            while true {
                let n = fread(&buf, 1, buf.count, fp)
                if n <= 0 { break }
                bytes += buf[0..<n]
            }
            fclose(fp)
            bytes.withUnsafeBytes { fuzzOne($0) }
        }
        print("replayed \(files.count) inputs without a failure")
    }
}
#endif
