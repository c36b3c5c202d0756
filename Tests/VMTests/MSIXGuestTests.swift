import CVFIO
import Platform
import Testing
import VFIO

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
    @Test("MSI-X through the VFIO IRQ API: vectors routed one by one, each e1000e cause fires its own eventfd")
    func msixEventFDs() throws {
        let f = try #require(VMEnvironment.msixFunctions.first, "no e1000e in the VM")
        let container = try VFIOContainer()
        let device = try container.openDevice(try #require(PCIAddress(f.address)))

        let info = try device.interruptInfo(.msix)
        #expect(info.count >= E1000E.causes.count, "MSI-X vectors: \(info.count)")
        #expect(info.flags & UInt32(VFIO_IRQ_INFO_EVENTFD) != 0)
        #expect(device.routedInterruptKind == .msix)
        #expect(device.interruptVectorCount == info.count)

        let bar = try device.mapBAR(0)
        try device.enableMemoryAndBusMaster()  // an MSI-X message is a DMA write
        let v0 = try EventFD(), v1 = try EventFD(), v2 = try EventFD()
        let vectors = [v0.rawValue, v1.rawValue, v2.rawValue]
        // Vector 0 first, then 1 and 2 added: the VFIO module keeps the earlier route (and
        // re-enables the table when the kernel cannot grow it in place).
        try device.routeInterrupts(start: 0, eventFDs: [v0.rawValue])
        try device.routeInterrupts(start: 1, eventFDs: [v1.rawValue, v2.rawValue])

        var ivar: UInt32 = 0
        for (vector, cause) in E1000E.causes.enumerated() { ivar |= (0x8 | UInt32(vector)) << cause.ivarShift }
        bar.write32(E1000E.interruptVectorAllocation, ivar)
        #expect(bar.read32(E1000E.interruptVectorAllocation) & 0xF_FFFF == ivar)
        bar.write32(E1000E.interruptCauseRead, ~0)
        bar.write32(E1000E.interruptMaskSet, E1000E.causes.reduce(UInt32(0)) { $0 | $1.icr })

        for round in 1...2 {
            for (vector, cause) in E1000E.causes.enumerated() {
                bar.write32(E1000E.interruptCauseSet, cause.icr)
                let fired = pollCount(vectors[vector], timeoutMilliseconds: EduDevice.interruptTimeoutMilliseconds)
                try #require(fired > 0, "\(cause.name) (round \(round)) did not fire vector \(vector)")
                for other in vectors.indices where other != vector {
                    #expect(pollCount(vectors[other]) == 0, "\(cause.name) also fired vector \(other)")
                }
                #expect(bar.read32(E1000E.interruptCauseRead) & cause.icr != 0)
                bar.write32(E1000E.interruptCauseRead, ~0)
            }
        }
        // The loopback trigger of the VFIO module reaches the right vector too.
        try device.triggerInterrupt(.msix, vector: 2)
        #expect(pollCount(v2.rawValue, timeoutMilliseconds: EduDevice.interruptTimeoutMilliseconds) > 0)
        #expect(pollCount(v0.rawValue) == 0)

        bar.write32(E1000E.interruptMaskClear, ~0)
        try device.disableInterrupts()
        // With MSI-X off, a cause reaches no eventfd.
        bar.write32(E1000E.interruptMaskSet, E1000E.causes[0].icr)
        bar.write32(E1000E.interruptCauseSet, E1000E.causes[0].icr)
        #expect(pollCount(v0.rawValue, timeoutMilliseconds: 100) == 0)
        bar.write32(E1000E.interruptMaskClear, ~0)
        bar.write32(E1000E.interruptCauseRead, ~0)
    }
}
