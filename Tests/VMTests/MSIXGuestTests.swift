import CVFIO
import Platform
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// The registers of QEMU's e1000e (Intel 82574L) that raise an interrupt on demand. The NIC is
/// only an MSI-X source for the tests; nothing else of it is driven.
enum E1000E {
    /// `ICR`, Interrupt Cause Read (write 1 to clear).
    static let interruptCauseRead = 0xC0
    /// `ICS`, Interrupt Cause Set: sets causes as if the hardware had raised them.
    static let interruptCauseSet = 0xC8
    /// `IMS`, Interrupt Mask Set/Read.
    static let interruptMaskSet = 0xD0
    /// `IMC`, Interrupt Mask Clear.
    static let interruptMaskClear = 0xD8
    /// `IVAR`, Interrupt Vector Allocation: 4 bits per cause (vector in bits 0-2, bit 3 valid);
    /// RxQ0 in bits 0-3, RxQ1 4-7, TxQ0 8-11, TxQ1 12-15, Other 16-19.
    static let interruptVectorAllocation = 0xE4

    /// The MSI-X causes of `ICR` and their IVAR field positions.
    static let causes: [(name: String, icr: UInt32, ivarShift: UInt32)] = [
        ("RxQ0", 1 << 20, 0), ("TxQ0", 1 << 22, 8), ("Other", 1 << 24, 16),
    ]
}

extension VFIOGuestTests {
    @Test("MSI-X: each e1000e cause fires the eventfd of the vector IVAR routes it to, and no other")
    func msixEventFDs() throws {
        let f = try #require(VMEnvironment.msixFunctions.first, "no e1000e in the VM")
        let container = try GuestContainer()
        let group = try GuestGroup(try #require(f.iommuGroup))
        try group.attach(to: container)
        try container.setIOMMU()
        let device = try group.device(f.address)

        let index = VFIO_PCI_MSIX_IRQ_INDEX
        let info = try device.irq(index)
        #expect(Int(info.count) >= E1000E.causes.count, "MSI-X vectors: \(info.count)")
        #expect(info.flags & UInt32(VFIO_IRQ_INFO_EVENTFD) != 0)

        let bar = try device.map(region: VFIO_PCI_BAR0_REGION_INDEX)
        try device.enableBusMaster()  // an MSI-X message is a DMA write
        let v0 = try EventFD(), v1 = try EventFD(), v2 = try EventFD()
        let vectors = [v0.rawValue, v1.rawValue, v2.rawValue]
        try device.routeInterrupts(index: index, eventFDs: vectors)

        var ivar: UInt32 = 0
        for (vector, cause) in E1000E.causes.enumerated() { ivar |= (0x8 | UInt32(vector)) << cause.ivarShift }
        bar.write32(E1000E.interruptVectorAllocation, ivar)
        #expect(bar.read32(E1000E.interruptVectorAllocation) & 0xF_FFFF == ivar)
        bar.write32(E1000E.interruptCauseRead, ~0)
        bar.write32(E1000E.interruptMaskSet, E1000E.causes.reduce(UInt32(0)) { $0 | $1.icr })

        for round in 1...2 {
            for (vector, cause) in E1000E.causes.enumerated() {
                bar.write32(E1000E.interruptCauseSet, cause.icr)
                let fired = waitOne(vectors[vector])
                try #require(fired > 0, "\(cause.name) (round \(round)) did not fire vector \(vector)")
                for other in vectors.indices where other != vector {
                    #expect(pollCount(vectors[other]) == 0, "\(cause.name) also fired vector \(other)")
                }
                #expect(bar.read32(E1000E.interruptCauseRead) & cause.icr != 0)
                bar.write32(E1000E.interruptCauseRead, ~0)
            }
        }
        bar.write32(E1000E.interruptMaskClear, ~0)
        try device.disableInterrupts(index: index)
        // With MSI-X off, a cause reaches no eventfd.
        bar.write32(E1000E.interruptMaskSet, E1000E.causes[0].icr)
        bar.write32(E1000E.interruptCauseSet, E1000E.causes[0].icr)
        #expect(pollCount(v0.rawValue, timeoutMilliseconds: 100) == 0)
        bar.write32(E1000E.interruptMaskClear, ~0)
        bar.write32(E1000E.interruptCauseRead, ~0)
    }
}

/// Waits up to 2 s for an eventfd and returns (and clears) its counter; 0 on timeout.
private func waitOne(_ fd: Int32) -> UInt64 { pollCount(fd, timeoutMilliseconds: EduDevice.interruptTimeoutMilliseconds) }

/// Polls an eventfd for `timeoutMilliseconds` and returns (and clears) its counter.
private func pollCount(_ fd: Int32, timeoutMilliseconds: Int32 = 50) -> UInt64 {
    var p = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
    guard poll(&p, 1, timeoutMilliseconds) > 0 else { return 0 }
    var v: UInt64 = 0
    return read(fd, &v, 8) == 8 ? v : 0
}
