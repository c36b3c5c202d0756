import Hardware
import Platform
import Testing
import VFIO

#if canImport(Glibc)
import Glibc
#endif

/// One QEMU `edu` device opened through the VFIO module: its `VFIODevice`, BAR0 mapped, bus
/// mastering on and its single MSI vector routed to an eventfd.
final class EduDevice {
    let function: VMEnvironment.PCIFunction
    let device: VFIODevice
    let bar: MappedBAR
    let msi: EventFD

    /// How long a test waits for an interrupt: an edu DMA takes ~100 ms of virtual time, so
    /// 2 s is ample even on a loaded 2-core host, and keeps a broken run short.
    static let interruptTimeoutMilliseconds: Int32 = 2000

    init(_ function: VMEnvironment.PCIFunction, container: VFIOContainer) throws {
        self.function = function
        device = try container.openDevice(try #require(PCIAddress(function.address)))
        bar = try device.mapBAR(0)
        try device.enableMemoryAndBusMaster()
        msi = try EventFD()
        try device.enableInterrupts(.msi, eventFDs: [msi.rawValue])
    }

    /// What one DMA did.
    struct Completion: Equatable {
        /// Whether the MSI eventfd fired before the timeout.
        var interrupted: Bool
        /// The `interrupt status` register when the interrupt arrived.
        var status: UInt32
        /// Whether `DMA command` bit 0 (busy) was clear afterwards.
        var idle: Bool
    }

    /// Runs one transfer with an interrupt on completion and acknowledges it.
    ///
    /// - Parameters:
    ///   - iova: the RAM side of the transfer.
    ///   - bufferOffset: offset into the edu's 4 KiB buffer.
    ///   - toRAM: the direction (edu → RAM when true).
    func dma(iova: UInt64, bufferOffset: UInt64 = 0, count: Int, toRAM: Bool) -> Completion {
        precondition(count > 0 && count <= Edu.maximumTransfer, "edu transfers must be 1...4095 bytes")
        precondition(Int(bufferOffset) + count <= Edu.bufferSize, "transfer outside the edu buffer")
        let device = Edu.bufferAddress + bufferOffset
        bar.write64(Edu.Register.dmaSource, toRAM ? device : iova)
        bar.write64(Edu.Register.dmaDestination, toRAM ? iova : device)
        bar.write64(Edu.Register.dmaCount, UInt64(count))
        var command: Edu.DMACommand = [.start, .interruptOnCompletion]
        if toRAM { command.insert(.toRAM) }
        bar.write64(Edu.Register.dmaCommand, command.rawValue)
        let fired = msi.wait(timeoutMilliseconds: Self.interruptTimeoutMilliseconds) > 0
        let status = bar.read32(Edu.Register.interruptStatus)
        bar.write32(Edu.Register.interruptAcknowledge, status)
        let idle = bar.read64(Edu.Register.dmaCommand) & Edu.DMACommand.start.rawValue == 0
        return Completion(interrupted: fired, status: status, idle: idle)
    }
}

/// A `VFIOContainer` with the given edu devices open (their groups attached, type1v2 IOMMU
/// set by the first), and ``DMAMemory`` allocating IOVAs below edu's 28-bit DMA mask
/// (`VFIOContainer.iovaPolicy(dmaMaskBits:)`) through the real IOMMU.
final class EduRig {
    let container: VFIOContainer
    let edus: [EduDevice]
    let memory: DMAMemory

    /// edu's DMA mask width (`dma_mask` property default).
    static let dmaMaskBits = 28
    /// The IOVA window the rig's memory hands out: above the first MiB, inside edu's DMA mask.
    static let iovaWindow: ClosedRange<UInt64> = 0x10_0000...Edu.dmaMask

    init(eduCount: Int = 1) throws {
        let functions = VMEnvironment.isolatedEduFunctions
        try #require(functions.count >= eduCount, "expected \(eduCount) isolated edu devices, found \(functions)")
        container = try VFIOContainer()
        var edus: [EduDevice] = []
        for f in functions.prefix(eduCount) { edus.append(try EduDevice(f, container: container)) }
        self.edus = edus
        memory = DMAMemory(spaces: [container], policy: VFIOContainer.iovaPolicy(dmaMaskBits: Self.dmaMaskBits),
                           preferHugePages: false)
    }
}

/// Fills `count` bytes at `address` with a pattern that depends on `seed` and the offset.
func fillPattern(_ address: UnsafeMutableRawPointer, count: Int, seed: UInt8) {
    let p = address.assumingMemoryBound(to: UInt8.self)
    for i in 0..<count { p[i] = UInt8(truncatingIfNeeded: i &* 31 &+ Int(seed)) }
}

/// Whether two byte ranges are equal.
func bytesEqual(_ a: UnsafeRawPointer, _ b: UnsafeRawPointer, count: Int) -> Bool {
    memcmp(a, b, count) == 0
}

/// Polls an eventfd for `timeoutMilliseconds` and returns (and clears) its counter; 0 on timeout.
func pollCount(_ fd: Int32, timeoutMilliseconds: Int32 = 50) -> UInt64 {
    var p = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
    guard poll(&p, 1, timeoutMilliseconds) > 0 else { return 0 }
    var v: UInt64 = 0
    return read(fd, &v, 8) == 8 ? v : 0
}
