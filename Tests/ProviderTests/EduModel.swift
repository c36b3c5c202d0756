import DeviceModels
import Hardware
import Platform
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// TEST MODEL of QEMU's `edu` device (docs/specs/edu.rst), just enough for ``EduProvider``:
/// ID and liveness, the interrupt status/raise/acknowledge registers with an MSI eventfd, and
/// the DMA engine between IOVAs (through a ``SoftIOMMU``) and the 4 KiB buffer at 0x40000.
///
/// As in QEMU: a DMA the IOMMU refuses moves nothing and still completes; the RAM address is
/// masked to the DMA mask; a transfer reaching the buffer's last byte is QEMU 7.2's fatal
/// off-by-one (recorded in ``fatalTransfers``; the VM would abort). A DMA completes at the
/// first read of `DMA command` after it started, unless ``gate`` holds it.
final class EduModel: InterruptRouting, @unchecked Sendable {
    // @unchecked: all mutable state is in the Mutex and atomics.
    struct Registers {
        var liveness: UInt32 = 0
        var interruptStatus: UInt32 = 0
        var source: UInt64 = 0
        var destination: UInt64 = 0
        var count: UInt64 = 0
        var command: UInt64 = 0
        var buffer = [UInt8](repeating: 0, count: Edu.bufferSize)
        var msiFD: Int32 = -1
    }

    let iommu: SoftIOMMU
    let identification: UInt32
    /// When false, liveness reads 0 (a dead device).
    let alive: Bool
    let dmaMask: UInt64 = Edu.dmaMask
    let regs = Mutex(Registers())
    /// While true, a started DMA stays busy.
    let gate = Atomic<Bool>(false)
    /// Transfers started, and the largest byte count seen.
    let transfers = Atomic<Int>(0)
    let largestTransfer = Atomic<Int>(0)
    /// Transfers the IOMMU refused (QEMU logs a DMAR fault and moves nothing).
    let blockedTransfers = Atomic<Int>(0)
    /// Transfers that would have made QEMU 7.2 abort the VM (buffer range off-by-one).
    let fatalTransfers = Atomic<Int>(0)
    /// MSIs sent.
    let messages = Atomic<Int>(0)

    init(iommu: SoftIOMMU, identification: UInt32 = Edu.identification, alive: Bool = true) {
        self.iommu = iommu
        self.identification = identification
        self.alive = alive
    }

    var bar: EduModelBAR { EduModelBAR(model: self) }

    // MARK: InterruptRouting (edu: one MSI vector)

    var interruptVectorCount: Int { 1 }
    func routeInterrupts(start: Int, eventFDs: [Int32]) throws(DriverError) {
        guard start == 0, eventFDs.count == 1 else {
            throw DriverError(.invalidArgument, "edu has one MSI vector; cannot route \(start)..<\(start + eventFDs.count).")
        }
        regs.withLock { $0.msiFD = eventFDs[0] }
    }
    func disableInterrupts() throws(DriverError) { regs.withLock { $0.msiFD = -1 } }
    var isRouted: Bool { regs.withLock { $0.msiFD >= 0 } }

    // MARK: registers

    func read(_ offset: Int, width: Int) -> UInt64 {
        precondition(width == 4 || width == 8, "edu registers take 4- or 8-byte accesses")
        return regs.withLock { r -> UInt64 in
            switch offset {
            case Edu.Register.identification: return UInt64(identification)
            case Edu.Register.liveness: return alive ? UInt64(~r.liveness) : 0
            case Edu.Register.interruptStatus: return UInt64(r.interruptStatus)
            case Edu.Register.dmaSource: return r.source
            case Edu.Register.dmaDestination: return r.destination
            case Edu.Register.dmaCount: return r.count
            case Edu.Register.dmaCommand:
                if r.command & 1 != 0 && !gate.load(ordering: .acquiring) { runDMA(&r) }
                return r.command
            default: return 0
            }
        }
    }

    func write(_ offset: Int, width: Int, _ value: UInt64) {
        precondition(width == 4 || width == 8, "edu registers take 4- or 8-byte accesses")
        regs.withLock { r in
            switch offset {
            case Edu.Register.liveness: r.liveness = UInt32(truncatingIfNeeded: value)
            case Edu.Register.interruptRaise: raise(&r, UInt32(truncatingIfNeeded: value))
            case Edu.Register.interruptAcknowledge: r.interruptStatus &= ~UInt32(truncatingIfNeeded: value)
            case Edu.Register.dmaSource where r.command & 1 == 0: r.source = value
            case Edu.Register.dmaDestination where r.command & 1 == 0: r.destination = value
            case Edu.Register.dmaCount where r.command & 1 == 0: r.count = value
            case Edu.Register.dmaCommand where r.command & 1 == 0:
                r.command = value
                if value & 1 != 0 { transfers.add(1, ordering: .relaxed) }
            default: break
            }
        }
    }

    private func raise(_ r: inout Registers, _ bits: UInt32) {
        r.interruptStatus |= bits
        guard r.interruptStatus != 0, r.msiFD >= 0 else { return }
        messages.add(1, ordering: .relaxed)
        var one: UInt64 = 1
        _ = Glibc.write(r.msiFD, &one, 8)
    }

    private func runDMA(_ r: inout Registers) {
        let n = Int(r.count)
        if n > largestTransfer.load(ordering: .relaxed) { largestTransfer.store(n, ordering: .relaxed) }  // under the lock
        let toRAM = r.command & 2 != 0
        let deviceSide = toRAM ? r.source : r.destination
        let ram = (toRAM ? r.destination : r.source) & dmaMask
        // QEMU 7.2's range check wants the end strictly below the buffer's end: 4096 bytes abort.
        if deviceSide < Edu.bufferAddress || deviceSide + UInt64(n) >= Edu.bufferAddress + UInt64(Edu.bufferSize) {
            fatalTransfers.add(1, ordering: .relaxed)
        } else {
            let at = Int(deviceSide - Edu.bufferAddress)
            if let p = iommu.translate(ram, length: n, access: toRAM ? .write : .read) {
                r.buffer.withUnsafeMutableBytes { b in
                    if toRAM { p.copyMemory(from: b.baseAddress! + at, byteCount: n) }
                    else { (b.baseAddress! + at).copyMemory(from: p, byteCount: n) }
                }
            } else {
                blockedTransfers.add(1, ordering: .relaxed)
            }
        }
        r.command &= ~1
        if r.command & 4 != 0 { raise(&r, Edu.dmaInterrupt) }
    }
}

/// BAR0 of an ``EduModel``.
struct EduModelBAR: RegisterIO, @unchecked Sendable {
    // @unchecked: forwards to the model, whose state is locked.
    let model: EduModel
    var length: Int { 0x10_0000 }
    func read8(_ offset: Int) -> UInt8 { UInt8(truncatingIfNeeded: model.read(offset, width: 1)) }
    func read16(_ offset: Int) -> UInt16 { UInt16(truncatingIfNeeded: model.read(offset, width: 2)) }
    func read32(_ offset: Int) -> UInt32 { UInt32(truncatingIfNeeded: model.read(offset, width: 4)) }
    func read64(_ offset: Int) -> UInt64 { model.read(offset, width: 8) }
    func write8(_ offset: Int, _ value: UInt8) { model.write(offset, width: 1, UInt64(value)) }
    func write16(_ offset: Int, _ value: UInt16) { model.write(offset, width: 2, UInt64(value)) }
    func write32(_ offset: Int, _ value: UInt32) { model.write(offset, width: 4, UInt64(value)) }
    func write64(_ offset: Int, _ value: UInt64) { model.write(offset, width: 8, value) }
}
